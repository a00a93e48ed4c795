//! Price lookup and exact cost arithmetic: which model a call was, and what its usage cost.
//!
//! # Units
//!
//! Prices are written in the provider files as decimal strings of USD per million tokens
//! (`input = "2.50"`) and held as integer micro-USD per million tokens ([`UsdPerMillion`],
//! `2.50` → 2_500_000), which is the same number as pico-USD (10^-12 USD) per token. A cost is
//! then `tokens × rate`, an integer count of pico-USD ([`Cost`]), with no division, no remainder
//! and no floating point anywhere. Nano-USD per token would be too coarse: the cheapest list
//! price, $0.005/M, is 0.005 nano-USD per token. `u128` pico-USD holds 3.4 × 10^14 billion
//! dollars, so sums over any history cannot overflow either. [`Cost::as_f64`] exists only for
//! metrics and span attributes; the exact value is [`Cost`]'s `Display` (`0.0031966`).
//!
//! # What is priced
//!
//! Input (uncached), cache reads, cache writes (5-minute and 1-hour), output, reasoning where a
//! model prices it apart from output, and one long-context tier per model (the whole request at
//! the higher rates once its input passes the threshold). Not modelled: batch, flex and priority
//! tiers (the usage does not say which served a call), audio and image tokens, per-request fees
//! (web search), cache storage per hour, time-of-day discounts.
//!
//! # Lookup
//!
//! [`PriceBook::price`] resolves the model per provider: a configured Azure-style deployment
//! name first (explicit config wins), then the response model, then the request model; each
//! against the provider's own table, then the table of the provider named by its
//! `prices_from` (Azure uses OpenAI's). Within a table: exact name or alias, then the longest
//! family the name is a snapshot of (see [`matching`]). An unknown provider or model gives no
//! cost, never 0: the caller counts it as unpriced.

use std::{
    collections::{BTreeMap, HashMap, hash_map::DefaultHasher},
    fmt,
    hash::{Hash, Hasher},
    iter::Sum,
    ops::{Add, AddAssign},
    sync::{Arc, RwLock},
};

use crate::{
    call::record::CallRecord,
    config::{Config, ConfigError},
    format::Usage,
    provider::ProviderSpec,
};

pub mod matching;
mod price;

pub use price::{LongContextPrice, ModelPrice, Rates, UsdPerMillion};

/// An exact amount of money in pico-USD (10^-12 USD).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cost(u128);

impl Cost {
    pub const ZERO: Cost = Cost(0);
    /// Decimal places of the unit: 1 pico-USD is 10^-12 USD.
    pub const DIGITS: u32 = 12;

    pub const fn from_pico_usd(pico: u128) -> Cost {
        Cost(pico)
    }

    pub const fn pico_usd(self) -> u128 {
        self.0
    }

    /// An approximation in USD for metrics and attributes; never add these up.
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / 1e12
    }
}

impl fmt::Display for Cost {
    /// USD as an exact decimal, trailing zeros trimmed: `0.000123`, `12.5`, `0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::config::prices::write_decimal(f, self.0, Self::DIGITS)
    }
}

impl Add for Cost {
    type Output = Cost;
    fn add(self, rhs: Cost) -> Cost {
        Cost(self.0.saturating_add(rhs.0))
    }
}

impl AddAssign for Cost {
    fn add_assign(&mut self, rhs: Cost) {
        *self = *self + rhs;
    }
}

impl Sum for Cost {
    fn sum<I: Iterator<Item = Cost>>(iter: I) -> Cost {
        iter.fold(Cost::ZERO, Add::add)
    }
}

/// The outcome of pricing one call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Priced {
    /// `None` when the model has no price (then `matched_model` is `None` too) or the call
    /// reported no token counts (then `matched_model` says which price would have applied).
    pub cost: Option<Cost>,
    /// The input part of `cost` (uncached input, cache reads and writes); the rest is output.
    pub input_cost: Option<Cost>,
    /// The price-table entry used (`gpt-4o` for `gpt-4o-2024-08-06`).
    pub matched_model: Option<String>,
}

/// One provider's table: entries, and every lowercased name and alias pointing at one.
#[derive(Debug, Default)]
struct Table {
    models: Vec<ModelPrice>,
    index: BTreeMap<String, usize>,
}

impl Table {
    fn new(provider: &str, models: &[ModelPrice]) -> Result<Table, String> {
        let mut index = BTreeMap::new();
        for (i, m) in models.iter().enumerate() {
            check_model(provider, m)?;
            for name in m.names() {
                let key = name.trim().to_ascii_lowercase();
                if key.is_empty() {
                    return Err(format!(
                        "provider {provider}: model {:?} has an empty alias",
                        m.name
                    ));
                }
                if index.insert(key, i).is_some() {
                    return Err(format!(
                        "provider {provider}: model name {name:?} is priced twice"
                    ));
                }
            }
        }
        Ok(Table {
            models: models.to_vec(),
            index,
        })
    }

    fn find(&self, model: &str) -> Option<&ModelPrice> {
        matching::find(&self.index, model).map(|(_, &i)| &self.models[i])
    }
}

fn check_model(provider: &str, m: &ModelPrice) -> Result<(), String> {
    let what = format!("provider {provider}: model {:?}", m.name);
    if m.name.trim().is_empty() {
        return Err(format!("provider {provider}: a model has an empty name"));
    }
    if let Some(t) = &m.long_context
        && t.above_input_tokens == 0
    {
        return Err(format!(
            "{what}: long_context.above_input_tokens must be above 0"
        ));
    }
    if let Some(d) = &m.as_of
        && !is_date(d)
    {
        return Err(format!("{what}: as_of {d:?} is not a YYYY-MM-DD date"));
    }
    Ok(())
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
}

#[derive(Debug, Default)]
struct ProviderPrices {
    table: Table,
    /// Lowercased deployment name → priced model name.
    deployments: BTreeMap<String, String>,
    prices_from: Option<String>,
}

/// Every provider's prices, built from the provider specs in force (built-in files plus config
/// overrides, as [`crate::Config::provider_specs`] merges them). Immutable: a reload builds a new
/// book and swaps it in a [`PriceBookCell`].
#[derive(Debug, Default)]
pub struct PriceBook {
    providers: BTreeMap<String, ProviderPrices>,
    /// The entry each (provider, response model, request model) resolved to. Resolving tries
    /// deployment names, lowercases, and cuts snapshot suffixes longest first: about 5,000
    /// instructions, the same answer for every call of a model. Keyed by the three names'
    /// hash, whose few collisions share a slot; at most [`MEMO_MAX`] slots (clients name
    /// models freely), the rest resolved each time; a reload starts a new book.
    memo: RwLock<HashMap<u64, Vec<Memo>>>,
}

/// Answers the book remembers at most.
const MEMO_MAX: usize = 1024;

#[derive(Debug)]
struct Memo {
    provider: String,
    response_model: Option<String>,
    request_model: Option<String>,
    entry: Option<Arc<ModelPrice>>,
}

impl Memo {
    fn is(
        &self,
        provider: &str,
        response_model: Option<&str>,
        request_model: Option<&str>,
    ) -> bool {
        self.provider == provider
            && self.response_model.as_deref() == response_model
            && self.request_model.as_deref() == request_model
    }
}

impl PriceBook {
    /// The prices in force: built-in `[[models]]` tables plus `[providers.<name>]` `models`
    /// and `deployments`. Call again on reload and swap the result into a `PriceBookCell`.
    pub fn from_config(config: &Config) -> Result<PriceBook, ConfigError> {
        PriceBook::from_specs(&config.provider_specs()?).map_err(ConfigError::Invalid)
    }

    /// Builds and checks the book: names unique per provider, dates well-formed, every
    /// deployment mapped to a model that has a price.
    pub fn from_specs(specs: &[ProviderSpec]) -> Result<PriceBook, String> {
        let mut providers = BTreeMap::new();
        for spec in specs {
            let prices = ProviderPrices {
                table: Table::new(&spec.name, &spec.models)?,
                deployments: spec
                    .deployments
                    .iter()
                    .map(|(d, m)| (d.trim().to_ascii_lowercase(), m.clone()))
                    .collect(),
                prices_from: spec.prices_from.clone().filter(|p| *p != spec.name),
            };
            providers.insert(spec.name.clone(), prices);
        }
        let book = PriceBook {
            providers,
            memo: RwLock::default(),
        };
        for (name, p) in &book.providers {
            for (deployment, model) in &p.deployments {
                if book.find(p, model).is_none() {
                    return Err(format!(
                        "provider {name}: deployment {deployment:?} maps to {model:?}, which has no price"
                    ));
                }
            }
        }
        Ok(book)
    }

    /// The price entry `model` resolves to on `provider` (own table, then `prices_from`).
    pub fn lookup(&self, provider: &str, model: &str) -> Option<&ModelPrice> {
        self.find(self.providers.get(provider)?, model)
    }

    fn find<'a>(&'a self, p: &'a ProviderPrices, model: &str) -> Option<&'a ModelPrice> {
        p.table.find(model).or_else(|| {
            let other = self.providers.get(p.prices_from.as_deref()?)?;
            other.table.find(model)
        })
    }

    /// Prices one call. `response_model` wins over `request_model` (a response names the dated
    /// snapshot that ran), except that a configured deployment name in either maps first.
    pub fn price(
        &self,
        provider: &str,
        response_model: Option<&str>,
        request_model: Option<&str>,
        usage: &Usage,
    ) -> Priced {
        match self.entry(provider, response_model, request_model) {
            Some(m) => {
                let split = m.cost_split(usage);
                Priced {
                    cost: split.map(|(input, output)| input + output),
                    input_cost: split.map(|(input, _)| input),
                    matched_model: Some(m.name.clone()),
                }
            }
            None => Priced::default(),
        }
    }

    /// The entry a call's models resolve to, remembered (see [`PriceBook::memo`]).
    fn entry(
        &self,
        provider: &str,
        response_model: Option<&str>,
        request_model: Option<&str>,
    ) -> Option<Arc<ModelPrice>> {
        let hash = {
            let mut h = DefaultHasher::new();
            (provider, response_model, request_model).hash(&mut h);
            h.finish()
        };
        let remembered = |memo: &HashMap<u64, Vec<Memo>>| {
            memo.get(&hash)?
                .iter()
                .find(|m| m.is(provider, response_model, request_model))
                .map(|m| m.entry.clone())
        };
        let full = {
            let memo = self.memo.read().unwrap_or_else(|e| e.into_inner());
            if let Some(entry) = remembered(&memo) {
                return entry;
            }
            memo.len() >= MEMO_MAX
        };
        let entry = self
            .resolve(provider, response_model, request_model)
            .map(|m| Arc::new(m.clone()));
        if full {
            return entry;
        }
        let mut memo = self.memo.write().unwrap_or_else(|e| e.into_inner());
        // Another call may have remembered it, or filled the memo, meanwhile.
        if memo.len() < MEMO_MAX && remembered(&memo).is_none() {
            memo.entry(hash).or_default().push(Memo {
                provider: provider.to_string(),
                response_model: response_model.map(str::to_string),
                request_model: request_model.map(str::to_string),
                entry: entry.clone(),
            });
        }
        entry
    }

    /// The entry a call's models resolve to: a configured deployment name in either model
    /// first, then the response model, then the request model.
    fn resolve(
        &self,
        provider: &str,
        response_model: Option<&str>,
        request_model: Option<&str>,
    ) -> Option<&ModelPrice> {
        let p = self.providers.get(provider)?;
        let names = |first, second| {
            [first, second]
                .into_iter()
                .flatten()
                .filter(|m: &&str| !m.trim().is_empty())
        };
        let deployed = names(request_model, response_model).find_map(|m| {
            let target = p.deployments.get(&m.trim().to_ascii_lowercase())?;
            self.find(p, target)
        });
        deployed.or_else(|| names(response_model, request_model).find_map(|m| self.find(p, m)))
    }

    /// Prices a recorded call: its provider, response and request models (the request model
    /// includes the one named in the path: Azure deployment, Bedrock model id), and usage.
    pub fn price_call(&self, call: &CallRecord) -> Priced {
        let Some(response) = &call.response else {
            return Priced::default();
        };
        self.price(
            &call.provider,
            response.model.as_deref(),
            call.request.model.as_deref(),
            &response.usage,
        )
    }

    /// The entries of one provider's own table.
    pub fn models(&self, provider: &str) -> &[ModelPrice] {
        self.providers
            .get(provider)
            .map(|p| p.table.models.as_slice())
            .unwrap_or_default()
    }

    /// Providers that have a table of their own, by name.
    pub fn providers(&self) -> impl Iterator<Item = &str> {
        self.providers
            .iter()
            .filter(|(_, p)| !p.table.models.is_empty())
            .map(|(n, _)| n.as_str())
    }
}

/// The book in force, swapped whole on reload; readers keep the `Arc` they took for as long as
/// one call's pricing takes.
#[derive(Debug, Default)]
pub struct PriceBookCell(RwLock<Arc<PriceBook>>);

impl PriceBookCell {
    pub fn new(book: PriceBook) -> PriceBookCell {
        PriceBookCell(RwLock::new(Arc::new(book)))
    }

    pub fn load(&self) -> Arc<PriceBook> {
        // A panic while holding the lock cannot leave a half-swapped Arc: reading on is safe.
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn store(&self, book: PriceBook) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(book);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::provider::builtin_specs;

    #[test]
    fn cost_displays_as_an_exact_trimmed_decimal() {
        let cases: &[(u128, &str)] = &[
            (0, "0"),
            (1, "0.000000000001"),
            (123_000_000, "0.000123"),
            (3_196_600_000, "0.0031966"),
            (1_000_000_000_000, "1"),
            (12_500_000_000_000, "12.5"),
            (u128::MAX, "340282366920938463463374607.431768211455"),
        ];
        for (pico, text) in cases {
            assert_eq!(Cost::from_pico_usd(*pico).to_string(), *text);
        }
        assert_eq!(Cost::from_pico_usd(3_196_600_000).as_f64(), 0.0031966);
        let total: Cost = [1, 2, 3].into_iter().map(Cost::from_pico_usd).sum();
        assert_eq!(total, Cost::from_pico_usd(6));
    }

    fn builtin_book() -> PriceBook {
        let specs: Vec<ProviderSpec> = builtin_specs()
            .iter()
            .map(|(file, text)| {
                toml::from_str(text).unwrap_or_else(|e| panic!("providers/{file}: {e}"))
            })
            .collect();
        PriceBook::from_specs(&specs).unwrap()
    }

    fn spec(name: &str, extra: &str) -> ProviderSpec {
        toml::from_str(&format!(
            "name = \"{name}\"\ngen_ai_provider = \"{name}\"\nbase_url = \"https://x\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn duplicate_names_and_bad_dates_are_rejected() {
        let twice = spec(
            "p",
            "[[models]]\nname = \"m\"\ninput = \"1\"\noutput = \"1\"\n\
             [[models]]\nname = \"x\"\naliases = [\"M\"]\ninput = \"1\"\noutput = \"1\"\n",
        );
        let err = PriceBook::from_specs(&[twice]).unwrap_err();
        assert!(err.contains("priced twice"), "{err}");
        let date = spec(
            "p",
            "[[models]]\nname = \"m\"\ninput = \"1\"\noutput = \"1\"\nas_of = \"Nov 2026\"\n",
        );
        let err = PriceBook::from_specs(&[date]).unwrap_err();
        assert!(err.contains("YYYY-MM-DD"), "{err}");
    }

    #[test]
    fn unknown_provider_or_model_is_unpriced_not_free() {
        let book = builtin_book();
        let usage = Usage {
            input_tokens: Some(10),
            output_tokens: Some(10),
            ..Usage::default()
        };
        assert_eq!(
            book.price("nonesuch", Some("gpt-4o"), None, &usage),
            Priced::default()
        );
        assert_eq!(
            book.price("openai", Some("my-finetune"), Some("whatever"), &usage),
            Priced::default()
        );
        // Self-hosted providers have no built-in prices at all.
        assert_eq!(
            book.price("vllm", Some("gpt-4o"), None, &usage),
            Priced::default()
        );
    }

    #[test]
    fn response_model_wins_over_request_model_and_empty_names_are_skipped() {
        let book = builtin_book();
        let usage = Usage {
            input_tokens: Some(1_000_000),
            output_tokens: Some(0),
            ..Usage::default()
        };
        let p = book.price(
            "openai",
            Some("gpt-4o-mini-2024-07-18"),
            Some("gpt-4o"),
            &usage,
        );
        assert_eq!(p.matched_model.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(p.cost.unwrap().to_string(), "0.15");
        // Azure's first chunk has `model: ""`: fall through to the request model.
        let p = book.price("openai", Some(""), Some("gpt-4o"), &usage);
        assert_eq!(p.matched_model.as_deref(), Some("gpt-4o"));
        // A response model without a price falls back to the request model's.
        let p = book.price("openai", Some("gpt-4o-mystery"), Some("gpt-4o"), &usage);
        assert_eq!(p.matched_model.as_deref(), Some("gpt-4o"));
    }

    #[test]
    fn the_cell_swaps_the_whole_book() {
        let cell = PriceBookCell::new(PriceBook::default());
        let before = cell.load();
        cell.store(builtin_book());
        assert!(before.lookup("openai", "gpt-4o").is_none());
        assert!(cell.load().lookup("openai", "gpt-4o").is_some());
    }

    /// Usage from independent parts: uncached, cached, 5m writes, 1h writes, plain output,
    /// reasoning.
    fn usage_of(parts: [u64; 6]) -> Usage {
        let [uncached, cached, w5m, w1h, plain, reasoning] = parts;
        Usage {
            input_tokens: Some(uncached + cached + w5m + w1h),
            output_tokens: Some(plain + reasoning),
            cached_input_tokens: Some(cached),
            cache_creation_input_tokens: Some(w5m + w1h),
            cache_creation_1h_input_tokens: Some(w1h),
            reasoning_tokens: Some(reasoning),
        }
    }

    proptest! {
        #[test]
        fn cost_is_monotonic_in_each_token_count_and_never_overflows(
            parts in prop::array::uniform6(0u64..=1_000_000_000_000),
            which in 0usize..6,
            extra in 0u64..=1_000_000_000_000,
            pick in any::<prop::sample::Index>(),
        ) {
            static BOOK: std::sync::OnceLock<PriceBook> = std::sync::OnceLock::new();
            let book = BOOK.get_or_init(builtin_book);
            let all: Vec<&ModelPrice> = book
                .providers
                .values()
                .flat_map(|p| p.table.models.iter())
                .collect();
            let model = all[pick.index(all.len())];
            let base = model.cost(&usage_of(parts)).unwrap();
            let mut more = parts;
            more[which] += extra;
            let bigger = model.cost(&usage_of(more)).unwrap();
            prop_assert!(
                bigger >= base,
                "{}: {parts:?} costs {base}, adding {extra} to part {which} costs {bigger}",
                model.name
            );
            // 6 × 2·10^12 tokens at under $1000/M is far below saturation: the sum is exact.
            prop_assert!(bigger.pico_usd() < u128::MAX / 2);
        }

        /// The remembered answer is the one resolving gives, for names that match, names that
        /// match by snapshot suffix or case, and names that match nothing, asked in any order
        /// and more than once.
        #[test]
        fn a_remembered_price_is_the_resolved_one(
            asks in prop::collection::vec((
                prop::sample::select(vec!["openai", "anthropic", "azure", "nobody"]),
                prop::option::of(prop::sample::select(vec![
                    "gpt-4o", "GPT-4o-2024-08-06", "gpt-4o-mini-2024-07-18", "claude-sonnet-4-5",
                    "claude-sonnet-4-5-20250929", "no-such-model", " ", "gpt-5.4",
                ])),
                prop::option::of(prop::sample::select(vec!["gpt-4o-mini", "o3", "claude-opus-4", ""])),
            ), 1..40),
        ) {
            let book = builtin_book();
            let usage = usage_of([1000, 200, 300, 0, 50, 7]);
            for (provider, response, request) in asks {
                let fresh = book.resolve(provider, response, request).map(|m| m.name.clone());
                let priced = book.price(provider, response, request, &usage);
                prop_assert_eq!(&priced.matched_model, &fresh);
                let again = book.price(provider, response, request, &usage);
                prop_assert_eq!(again.matched_model, fresh);
                prop_assert_eq!(again.cost, priced.cost);
            }
        }
    }

    #[test]
    fn the_memo_is_bounded_and_what_it_does_not_keep_is_still_priced() {
        let book = builtin_book();
        let usage = usage_of([1000, 200, 0, 0, 0, 0]);
        for i in 0..MEMO_MAX + 100 {
            let model = format!("gpt-4o-2024-08-{i:04}");
            let priced = book.price("openai", Some(&model), None, &usage);
            assert_eq!(priced.matched_model.as_deref(), Some("gpt-4o"), "{model}");
        }
        let kept: usize = book.memo.read().unwrap().values().map(Vec::len).sum();
        assert_eq!(kept, MEMO_MAX);
    }
}
