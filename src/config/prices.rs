//! One model's prices as a provider file writes them (`[[models]]`): exact decimals, never
//! floats. What a call costs at these prices is computed in `cost`.

use std::fmt;

use serde::{Deserialize, Deserializer, de};

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

/// Writes `value / 10^digits` (`digits` at most 38) as a decimal with trailing zeros trimmed.
/// Every call's cost is written so (span attribute, response header): the fraction's digits
/// go through a buffer on the stack, not a formatted `String`.
pub fn write_decimal(f: &mut fmt::Formatter<'_>, value: u128, digits: u32) -> fmt::Result {
    let scale = 10u128.pow(digits);
    let (whole, mut frac) = (value / scale, value % scale);
    if frac == 0 {
        return write!(f, "{whole}");
    }
    let mut buf = [b'0'; 38];
    let width = digits as usize;
    // The fraction's digits, last first (the rest of `buf` stays '0'): in u128 only while the
    // fraction needs it (never for a cost's 12 digits), then in u64, whose division is a few
    // instructions, not a call.
    let mut at = width;
    while frac > u128::from(u64::MAX) {
        at -= 1;
        buf[at] = b'0' + (frac % 10) as u8;
        frac /= 10;
    }
    // Below 2^64 now (the loop above), so the cast keeps every bit.
    let mut small = frac as u64;
    while small > 0 {
        at -= 1;
        buf[at] = b'0' + (small % 10) as u8;
        small /= 10;
    }
    let end = buf[..width]
        .iter()
        .rposition(|&d| d != b'0')
        .map_or(0, |i| i + 1);
    // Only ASCII digits were written.
    let text = std::str::from_utf8(&buf[..end]).unwrap_or_default();
    write!(f, "{whole}.{text}")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_of_more_digits_than_a_u64_holds_are_written_exactly() {
        struct D(u128, u32);
        impl fmt::Display for D {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_decimal(f, self.0, self.1)
            }
        }
        assert_eq!(
            D(u128::MAX, 38).to_string(),
            "3.40282366920938463463374607431768211455"
        );
        assert_eq!(
            D(10u128.pow(37) + 5, 38).to_string(),
            "0.10000000000000000000000000000000000005"
        );
        assert_eq!(
            D(u128::from(u64::MAX) + 1, 30).to_string(),
            "0.000000000018446744073709551616"
        );
        assert_eq!(D(7, 20).to_string(), "0.00000000000000000007");
    }
}
