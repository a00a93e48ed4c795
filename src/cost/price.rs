//! One model's prices as a provider file writes them, and the exact cost of one call's usage.

use std::fmt;

use serde::{Deserialize, Deserializer, de};

use super::Cost;
use crate::format::Usage;

/// A price in USD per million tokens, held as an integer count of micro-USD per million tokens,
/// which is the same number as pico-USD per token: `"2.50"` is 2_500_000. Six decimal places
/// cover every list price we know of (the cheapest, $0.005/M, is 5_000), and a token count times
/// this unit is an exact pico-USD amount, so no division and no rounding ever happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct UsdPerMillion(u64);

impl UsdPerMillion {
    /// Decimal places a price may have.
    pub const SCALE_DIGITS: u32 = 6;
    const SCALE: u64 = 1_000_000;

    /// A price from its micro-USD-per-million-tokens count (= pico-USD per token).
    pub const fn from_micros(micros: u64) -> UsdPerMillion {
        UsdPerMillion(micros)
    }

    /// Micro-USD per million tokens, which is also pico-USD per token.
    pub const fn micros(self) -> u64 {
        self.0
    }

    /// Parses a plain decimal (`"2.50"`, `"0.0375"`, `"15"`): digits, at most one point, at most
    /// six decimal places; no sign, exponent or spaces.
    pub fn parse(text: &str) -> Result<UsdPerMillion, String> {
        let bad = |why: &str| Err(format!("price {text:?}: {why}"));
        let (whole, frac) = match text.split_once('.') {
            Some((w, f)) => (w, f),
            None => (text, ""),
        };
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return bad("expected a decimal number of USD per million tokens, like \"2.50\"");
        }
        if text.contains('.') && (frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit())) {
            return bad("expected digits after the decimal point");
        }
        if frac.len() > Self::SCALE_DIGITS as usize {
            return bad("at most 6 decimal places (a millionth of a dollar per million tokens)");
        }
        let too_big = || format!("price {text:?}: too large");
        let whole: u64 = whole.parse().map_err(|_| too_big())?;
        let mut frac_micros: u64 = 0;
        for (i, b) in frac.bytes().enumerate() {
            frac_micros += u64::from(b - b'0') * 10u64.pow(Self::SCALE_DIGITS - 1 - i as u32);
        }
        whole
            .checked_mul(Self::SCALE)
            .and_then(|w| w.checked_add(frac_micros))
            .map(UsdPerMillion)
            .ok_or_else(too_big)
    }
}

impl fmt::Display for UsdPerMillion {
    /// The decimal it was written as, trailing zeros trimmed (`2.5`, `0.075`, `15`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_decimal(f, u128::from(self.0), Self::SCALE_DIGITS)
    }
}

/// Writes `value / 10^digits` as a decimal with trailing zeros trimmed.
pub(super) fn write_decimal(f: &mut fmt::Formatter<'_>, value: u128, digits: u32) -> fmt::Result {
    let scale = 10u128.pow(digits);
    let (whole, frac) = (value / scale, value % scale);
    if frac == 0 {
        return write!(f, "{whole}");
    }
    let frac = format!("{frac:0width$}", width = digits as usize);
    write!(f, "{whole}.{}", frac.trim_end_matches('0'))
}

impl<'de> Deserialize<'de> for UsdPerMillion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = UsdPerMillion;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a price in USD per million tokens as a decimal string, like \"2.50\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<UsdPerMillion, E> {
                UsdPerMillion::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<UsdPerMillion, E> {
                v.checked_mul(UsdPerMillion::SCALE)
                    .map(UsdPerMillion)
                    .ok_or_else(|| E::custom(format!("price {v}: too large")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<UsdPerMillion, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("price {v}: must not be negative"))),
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<UsdPerMillion, E> {
                // A float has already lost the exact decimal the operator wrote.
                Err(E::custom(format!(
                    "price {v}: write prices as decimal strings (\"{v}\"), not floats"
                )))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Higher rates for the whole request once its input passes a threshold (Gemini 2.5 Pro above
/// 200k tokens, GPT-5.4 above 272k). Missing cache prices fall back to this tier's input price,
/// a missing reasoning price to this tier's output price.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongContextPrice {
    /// The tier applies when the input tokens (cached and cache writes included) exceed this.
    pub above_input_tokens: u64,
    pub input: UsdPerMillion,
    pub output: UsdPerMillion,
    pub cached_input: Option<UsdPerMillion>,
    pub cache_write: Option<UsdPerMillion>,
    pub cache_write_1h: Option<UsdPerMillion>,
    pub reasoning: Option<UsdPerMillion>,
}

/// One `[[models]]` entry of a provider file or of a `[providers.<name>]` override. All prices
/// are USD per million tokens.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// The family id (`gpt-4o`, `claude-sonnet-4-5`). Dated snapshots and suffixed versions of
    /// it (`gpt-4o-2024-08-06`) get its price unless they have an entry of their own.
    pub name: String,
    /// Other names that get this price, matched like `name` (`claude-sonnet-4-0`).
    #[serde(default)]
    pub aliases: Vec<String>,
    pub input: UsdPerMillion,
    pub output: UsdPerMillion,
    /// Cache reads. Defaults to `input`.
    pub cached_input: Option<UsdPerMillion>,
    /// Cache writes with the default (5-minute) lifetime. Defaults to `input`.
    pub cache_write: Option<UsdPerMillion>,
    /// Cache writes with a 1-hour lifetime (Anthropic). Defaults to `cache_write`.
    pub cache_write_1h: Option<UsdPerMillion>,
    /// Reasoning tokens, only where the vendor prices them apart from output. Defaults to
    /// `output`.
    pub reasoning: Option<UsdPerMillion>,
    pub long_context: Option<LongContextPrice>,
    /// The vendor page the price was read from.
    pub source: Option<String>,
    /// The date the price was known to hold, `YYYY-MM-DD`.
    pub as_of: Option<String>,
    /// Caveats for humans: where a price came from when unsure, what is not modelled.
    pub note: Option<String>,
}

/// The six rates in force for one call, fallbacks applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    pub input: UsdPerMillion,
    pub output: UsdPerMillion,
    pub cached_input: UsdPerMillion,
    pub cache_write: UsdPerMillion,
    pub cache_write_1h: UsdPerMillion,
    pub reasoning: UsdPerMillion,
}

impl Rates {
    #[allow(clippy::too_many_arguments)]
    fn resolve(
        input: UsdPerMillion,
        output: UsdPerMillion,
        cached_input: Option<UsdPerMillion>,
        cache_write: Option<UsdPerMillion>,
        cache_write_1h: Option<UsdPerMillion>,
        reasoning: Option<UsdPerMillion>,
    ) -> Rates {
        let cache_write = cache_write.unwrap_or(input);
        Rates {
            input,
            output,
            cached_input: cached_input.unwrap_or(input),
            cache_write,
            cache_write_1h: cache_write_1h.unwrap_or(cache_write),
            reasoning: reasoning.unwrap_or(output),
        }
    }
}

impl ModelPrice {
    /// The rates for a call with this many input tokens: the long-context tier above its
    /// threshold, else the base prices.
    pub fn rates_for(&self, input_tokens: u64) -> Rates {
        match &self.long_context {
            Some(t) if input_tokens > t.above_input_tokens => Rates::resolve(
                t.input,
                t.output,
                t.cached_input,
                t.cache_write,
                t.cache_write_1h,
                t.reasoning,
            ),
            _ => Rates::resolve(
                self.input,
                self.output,
                self.cached_input,
                self.cache_write,
                self.cache_write_1h,
                self.reasoning,
            ),
        }
    }

    /// The exact cost of one call's usage; `None` when the call reported no token counts.
    ///
    /// Counts follow [`Usage`]: input includes cache reads and writes, the 1-hour writes are part
    /// of the writes, output includes reasoning. A count that is missing while another is present
    /// counts as 0 (embeddings report no output). Inconsistent counts (more cached than input)
    /// never underflow: the uncached part stops at 0.
    pub fn cost(&self, usage: &Usage) -> Option<Cost> {
        if usage.input_tokens.is_none() && usage.output_tokens.is_none() {
            return None;
        }
        let input = usage.input_tokens.unwrap_or(0);
        let cached = usage.cached_input_tokens.unwrap_or(0);
        let write_1h = usage.cache_creation_1h_input_tokens.unwrap_or(0);
        let writes = usage.cache_creation_input_tokens.unwrap_or(0).max(write_1h);
        let write_5m = writes - write_1h;
        let uncached = input.saturating_sub(cached).saturating_sub(writes);
        let output = usage.output_tokens.unwrap_or(0);
        let reasoning = usage.reasoning_tokens.unwrap_or(0).min(output);

        let r = self.rates_for(input);
        let terms = [
            (uncached, r.input),
            (cached, r.cached_input),
            (write_5m, r.cache_write),
            (write_1h, r.cache_write_1h),
            (output - reasoning, r.output),
            (reasoning, r.reasoning),
        ];
        // tokens × pico-USD per token is pico-USD. u128 holds 10^38: saturation is
        // unreachable below 10^18 tokens at any price, and keeps this total anyway.
        let pico = terms.iter().fold(0u128, |sum, &(tokens, rate)| {
            sum.saturating_add(u128::from(tokens).saturating_mul(u128::from(rate.micros())))
        });
        Some(Cost::from_pico_usd(pico))
    }

    /// Every name this entry answers to, `name` first.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_str()).chain(self.aliases.iter().map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> u64 {
        UsdPerMillion::parse(s).unwrap().micros()
    }

    #[test]
    fn prices_parse_from_decimal_strings_exactly() {
        assert_eq!(p("2.50"), 2_500_000);
        assert_eq!(p("2.5"), 2_500_000);
        assert_eq!(p("15"), 15_000_000);
        assert_eq!(p("0.075"), 75_000);
        assert_eq!(p("0.0375"), 37_500);
        assert_eq!(p("0.005"), 5_000);
        assert_eq!(p("0.000001"), 1);
        assert_eq!(p("0"), 0);
        assert_eq!(p("120.00"), 120_000_000);
    }

    #[test]
    fn malformed_prices_are_rejected() {
        for bad in [
            "",
            ".5",
            "5.",
            "-1",
            "+1",
            "1e3",
            "1,5",
            " 1",
            "1 ",
            "0.0000001",
            "1.2.3",
            "abc",
            "99999999999999999999",
        ] {
            assert!(UsdPerMillion::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn prices_display_as_the_trimmed_decimal() {
        for (text, shown) in [
            ("2.50", "2.5"),
            ("15.00", "15"),
            ("0.0375", "0.0375"),
            ("0", "0"),
        ] {
            assert_eq!(UsdPerMillion::parse(text).unwrap().to_string(), shown);
        }
    }

    #[derive(Deserialize)]
    struct One {
        price: UsdPerMillion,
    }

    #[test]
    fn toml_prices_may_be_strings_or_integers_but_not_floats() {
        let one: One = toml::from_str("price = \"1.25\"").unwrap();
        assert_eq!(one.price.micros(), 1_250_000);
        let one: One = toml::from_str("price = 3").unwrap();
        assert_eq!(one.price.micros(), 3_000_000);
        let err = toml::from_str::<One>("price = 1.25")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("decimal strings"), "{err}");
        assert!(toml::from_str::<One>("price = -3").is_err());
    }

    fn model(toml_text: &str) -> ModelPrice {
        toml::from_str(toml_text).unwrap()
    }

    fn usage(
        input: u64,
        cached: u64,
        write: u64,
        write_1h: u64,
        out: u64,
        reasoning: u64,
    ) -> Usage {
        Usage {
            input_tokens: Some(input),
            output_tokens: Some(out),
            cached_input_tokens: Some(cached),
            cache_creation_input_tokens: Some(write),
            cache_creation_1h_input_tokens: Some(write_1h),
            reasoning_tokens: Some(reasoning),
        }
    }

    #[test]
    fn a_call_without_token_counts_has_no_cost() {
        let m = model("name = \"m\"\ninput = \"1\"\noutput = \"2\"");
        assert_eq!(m.cost(&Usage::default()), None);
        // Reported zeros are a real (free) call.
        let zero = usage(0, 0, 0, 0, 0, 0);
        assert_eq!(m.cost(&zero).unwrap().to_string(), "0");
    }

    #[test]
    fn missing_cache_prices_fall_back_to_the_input_price() {
        let m = model("name = \"m\"\ninput = \"2.00\"\noutput = \"8.00\"");
        // 100 uncached + 300 cached + 200 writes (50 of them 1h) = 600 input, all at $2/M:
        // 600 × 2 = 1200 µ$; 10 output × 8 = 80 µ$; total 1280 µ$ = $0.00128.
        let c = m.cost(&usage(600, 300, 200, 50, 10, 0)).unwrap();
        assert_eq!(c.to_string(), "0.00128");
    }

    #[test]
    fn one_hour_writes_fall_back_to_the_five_minute_write_price() {
        let m = model("name = \"m\"\ninput = \"1\"\noutput = \"1\"\ncache_write = \"4\"");
        // 100 writes at $4/M, 60 of them 1h with no price of their own: 400 µ$ = $0.0004.
        let c = m.cost(&usage(100, 0, 100, 60, 0, 0)).unwrap();
        assert_eq!(c.to_string(), "0.0004");
    }

    #[test]
    fn reasoning_price_applies_only_to_reasoning_tokens() {
        let m =
            model("name = \"thinker\"\ninput = \"1.00\"\noutput = \"2.00\"\nreasoning = \"8.00\"");
        // 1000 in × 1 = 1000; (500 − 300) plain out × 2 = 400; 300 reasoning × 8 = 2400;
        // 3800 µ$ = $0.0038.
        let c = m.cost(&usage(1000, 0, 0, 0, 500, 300)).unwrap();
        assert_eq!(c.to_string(), "0.0038");
        // Without a reasoning price the same call is 1000 + 500 × 2 = 2000 µ$.
        let plain = model("name = \"m\"\ninput = \"1.00\"\noutput = \"2.00\"");
        assert_eq!(
            plain
                .cost(&usage(1000, 0, 0, 0, 500, 300))
                .unwrap()
                .to_string(),
            "0.002"
        );
    }

    #[test]
    fn inconsistent_counts_never_underflow() {
        let m = model("name = \"m\"\ninput = \"1\"\noutput = \"1\"\ncached_input = \"0.5\"");
        // 50 cached of 10 input: uncached 0, cached 50 × 0.5 = 25 µ$; reasoning capped at
        // output: 5 × 1 = 5 µ$. Total 30 µ$.
        let c = m.cost(&usage(10, 50, 0, 0, 5, 9)).unwrap();
        assert_eq!(c.to_string(), "0.00003");
        // A 1h count larger than the write total: the writes are at least the 1h part.
        let c = m.cost(&usage(10, 0, 2, 10, 0, 0)).unwrap();
        assert_eq!(c.to_string(), "0.00001");
    }

    #[test]
    fn long_context_tier_prices_the_whole_request_above_the_threshold_only() {
        let m = model(
            "name = \"m\"\ninput = \"1\"\noutput = \"10\"\ncached_input = \"0.1\"\n\
             long_context = { above_input_tokens = 1000, input = \"2\", output = \"15\" }",
        );
        // At the threshold: base rates. 1000 × 1 + 10 × 10 = 1100 µ$.
        assert_eq!(
            m.cost(&usage(1000, 0, 0, 0, 10, 0)).unwrap().to_string(),
            "0.0011"
        );
        // One above: tier rates for everything; the tier has no cached price, so cached input
        // costs the tier's input price: 1001 × 2 + 10 × 15 = 2152 µ$.
        assert_eq!(
            m.cost(&usage(1001, 500, 0, 0, 10, 0)).unwrap().to_string(),
            "0.002152"
        );
    }
}
