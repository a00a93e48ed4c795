//! The exact cost of one call's usage at one model's prices (the prices as a provider file
//! writes them are in `config::prices`).

use super::Cost;
pub use crate::config::prices::{LongContextPrice, ModelPrice, UsdPerMillion};
use crate::format::Usage;

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
        self.cost_split(usage).map(|(input, output)| input + output)
    }

    /// [`ModelPrice::cost`] as its input part (uncached input, cache reads and writes) and its
    /// output part (output, reasoning included), each exact: they add up to the cost.
    pub fn cost_split(&self, usage: &Usage) -> Option<(Cost, Cost)> {
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
        let input_terms = [
            (uncached, r.input),
            (cached, r.cached_input),
            (write_5m, r.cache_write),
            (write_1h, r.cache_write_1h),
        ];
        let output_terms = [(output - reasoning, r.output), (reasoning, r.reasoning)];
        // tokens × pico-USD per token is pico-USD. u128 holds 10^38: saturation is
        // unreachable below 10^18 tokens at any price, and keeps this total anyway.
        let sum = |terms: &[(u64, UsdPerMillion)]| {
            Cost::from_pico_usd(terms.iter().fold(0u128, |sum, &(tokens, rate)| {
                sum.saturating_add(u128::from(tokens).saturating_mul(u128::from(rate.micros())))
            }))
        };
        Some((sum(&input_terms), sum(&output_terms)))
    }

    /// Every name this entry answers to, `name` first.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_str()).chain(self.aliases.iter().map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

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
    fn the_split_is_input_with_cache_and_output_with_reasoning_and_adds_up_exactly() {
        let m = model(
            "name = \"m\"\ninput = \"3\"\noutput = \"15\"\ncached_input = \"0.30\"\ncache_write = \"3.75\"\nreasoning = \"20\"",
        );
        // Input: 12 plain × 3 + 10240 read × 0.30 + 1895 written × 3.75 = 10214.25 µ$.
        // Output: 60 plain × 15 + 30 reasoning × 20 = 1500 µ$.
        let u = usage(12147, 10240, 1895, 0, 90, 30);
        let (input, output) = m.cost_split(&u).unwrap();
        assert_eq!(input.to_string(), "0.01021425");
        assert_eq!(output.to_string(), "0.0015");
        assert_eq!(input + output, m.cost(&u).unwrap());
        assert_eq!(m.cost_split(&Usage::default()), None);
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
