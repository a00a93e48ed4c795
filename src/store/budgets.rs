//! Spend budgets per feature and/or user over a calendar window (UTC-aligned hour, day, week or
//! 30-day month). The spend is kept per budget in memory, updated as calls are recorded and
//! seeded from the cost store at startup.
//!
//! # What a budget promises
//!
//! - **Admission.** A call is admitted while the budget's spend plus the reservations of the
//!   calls under way is below the limit; it then reserves the budget's *estimate* of a call:
//!   the largest cost among the last [`RECENT_COSTS`] priced calls it counted (at startup, the
//!   average priced call of the window in the cost store), or `unpriced_call_usd` before any.
//!   The reservation is released when the call is recorded. A call already under way
//!   (streaming) is never cut.
//! - **Overshoot.** A burst of concurrent calls can take the spend past the limit by at most
//!   one estimate plus, for each call admitted together, what it cost above the estimate. A
//!   budget with no estimate yet (new, empty store, no `unpriced_call_usd`) reserves nothing,
//!   so its very first burst is bounded only by concurrency: set `unpriced_call_usd` to close it.
//! - **What counts.** A priced call that completed counts its exact cost. A call the provider
//!   may have billed (it answered 2xx) but that could not be priced (a model without a price,
//!   or usage that never arrived because the client left or the stream broke) counts
//!   `unpriced_call_usd` when set, else the estimate, or its partial cost when that is larger.
//!   A call the provider refused (no 2xx), and a call on a route the gateway does not inspect
//!   (files, model lists), counts only what it reported (usually nothing).
//! - **Matching.** Features are compared in their canonical form (trimmed, lowercased, stray
//!   separators dropped: `Support_Agent` and `support_agent,` are one feature); users exactly.
//! - **Restarts.** The spend is re-read from the cost store, which holds priced costs: what
//!   unpriced calls were counted at, and reservations, start again from zero.
//! - **Refusals** are 429 with `retry-after` (seconds until the window turns) and
//!   `x-should-retry: false`, so the official SDKs do not retry them.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use super::costs::{CostStore, Filter, now_secs};
pub use crate::config::{BudgetConfig, Window};
use crate::{
    call::{record::CallRecord, sink::Sink},
    trace::{metadata::canonical_feature, span::SpanRecord},
};

/// How many recent priced calls a budget's estimate looks at.
pub const RECENT_COSTS: usize = 32;

/// Parses a decimal USD amount into pico-USD, exactly.
pub fn parse_usd(text: &str) -> Result<u128, String> {
    let t = text.trim();
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    if whole.is_empty() && frac.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 12
    {
        return Err(format!("{text:?} is not a USD amount like \"25.00\""));
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|e| format!("{text:?}: {e}"))?
    };
    let frac_pico: u128 = format!("{frac:0<12}")
        .parse()
        .map_err(|e| format!("{text:?}: {e}"))?;
    Ok(whole * 1_000_000_000_000 + frac_pico)
}

struct Budget {
    config: BudgetConfig,
    /// The configured feature in canonical form; `None`: any feature.
    feature: Option<String>,
    limit_pico: u128,
    unpriced_pico: Option<u128>,
    window_start: u64,
    spent_pico: u128,
    /// Reservations of the admitted calls still under way.
    reserved_pico: u128,
    /// Costs of the last priced calls counted, newest last.
    recent_costs: VecDeque<u128>,
    /// The average priced call of the window in the cost store at startup.
    seeded_estimate: Option<u128>,
}

impl Budget {
    fn matches(&self, feature: Option<&str>, user: Option<&str>, key: Option<&str>) -> bool {
        let u = self.config.user.as_deref().filter(|u| !u.is_empty());
        let k = self.config.key.as_deref().filter(|k| !k.is_empty());
        // Call metadata holds features in canonical form already (see `canonical_feature`).
        self.feature.as_deref().is_none_or(|f| feature == Some(f))
            && u.is_none_or(|u| user == Some(u))
            && k.is_none_or(|k| key == Some(k))
    }

    fn filter(&self) -> Filter {
        Filter {
            feature: self.feature.clone(),
            user: self.config.user.clone().filter(|u| !u.is_empty()),
            key: self.config.key.clone().filter(|k| !k.is_empty()),
        }
    }

    /// What an admitted call reserves.
    fn estimate(&self) -> u128 {
        self.recent_costs
            .iter()
            .max()
            .copied()
            .or(self.seeded_estimate)
            .or(self.unpriced_pico)
            .unwrap_or(0)
    }

    /// What a finished call counts as; see the module docs.
    fn charge_for(&self, call: &CallRecord) -> u128 {
        let cost = call.cost_pico_usd.unwrap_or(0);
        let billed = call.status.is_some_and(|s| (200..300).contains(&s));
        let whole =
            call.outcome == crate::call::record::Outcome::Completed && call.cost_pico_usd.is_some();
        // Routes the gateway does not inspect (files, model lists, ...) are not generations.
        let generation = call.format != crate::provider::WireFormat::Passthrough;
        if !billed || whole || !generation {
            return cost;
        }
        cost.max(self.unpriced_pico.unwrap_or_else(|| self.estimate()))
    }
}

/// A budget that refused a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    pub name: String,
    pub limit_usd: String,
    pub window: &'static str,
    /// Seconds until the window turns and calls are admitted again.
    pub retry_after_secs: u64,
}

pub struct Budgets {
    budgets: Mutex<Vec<Budget>>,
}

/// What an admitted call holds in the budgets that admitted it; released when dropped (after
/// the call is recorded).
pub struct Reservation {
    budgets: Arc<Budgets>,
    /// (budget index, window start, amount)
    held: Vec<(usize, u64, u128)>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let mut budgets = self.budgets.lock();
        for &(i, window_start, amount) in &self.held {
            if let Some(b) = budgets.get_mut(i)
                && b.window_start == window_start
            {
                b.reserved_pico = b.reserved_pico.saturating_sub(amount);
            }
        }
    }
}

fn window_start(now: u64, w: Window) -> u64 {
    now - now % w.secs()
}

impl Budgets {
    pub fn new(configs: &[BudgetConfig], store: &CostStore) -> Result<Budgets, String> {
        let now = now_secs();
        let mut budgets = Vec::new();
        if !configs.is_empty() {
            if let Some(damage) = store.damage() {
                tracing::error!(
                    %damage,
                    lost_calls = damage.lost.units,
                    "budgets could not be seeded with the spend lost from the damaged cost store: they may admit more than their limit this window"
                );
            } else if !store.is_durable() {
                tracing::error!(
                    "budgets could not be seeded: the cost store is in memory, so spend before this start is unknown"
                );
            }
        }
        for c in configs {
            let (limit_pico, unpriced_pico) = amounts(c)?;
            let mut b = Budget {
                feature: c
                    .feature
                    .as_deref()
                    .map(canonical_feature)
                    .filter(|f| !f.is_empty()),
                config: c.clone(),
                limit_pico,
                unpriced_pico,
                window_start: window_start(now, c.window),
                spent_pico: 0,
                reserved_pico: 0,
                recent_costs: VecDeque::with_capacity(RECENT_COSTS),
                seeded_estimate: None,
            };
            let totals = store.totals(b.window_start, &b.filter());
            b.spent_pico = totals.cost_pico_usd;
            b.seeded_estimate = (totals.priced_calls > 0)
                .then(|| totals.cost_pico_usd / u128::from(totals.priced_calls));
            budgets.push(b);
        }
        Ok(Budgets {
            budgets: Mutex::new(budgets),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Budget>> {
        self.budgets.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The longest window of any budget, in seconds (0 without budgets): the cost store keeps
    /// at least that much history.
    pub fn longest_window_secs(&self) -> u64 {
        self.lock()
            .iter()
            .map(|b| b.config.window.secs())
            .max()
            .unwrap_or(0)
    }

    /// Admits a new call, reserving its estimate in every budget that covers it, or names the
    /// first covering budget that is spent (counting the reservations of calls under way).
    pub fn admit(
        self: &Arc<Self>,
        feature: Option<&str>,
        user: Option<&str>,
        key: Option<&str>,
    ) -> Result<Reservation, Exceeded> {
        let now = now_secs();
        let mut budgets = self.lock();
        for b in budgets.iter_mut() {
            roll(b, now);
        }
        if let Some(b) = budgets.iter().find(|b| {
            b.matches(feature, user, key)
                && b.spent_pico.saturating_add(b.reserved_pico) >= b.limit_pico
        }) {
            return Err(Exceeded {
                name: b.config.name.clone(),
                limit_usd: b.config.limit_usd.clone(),
                window: b.config.window.as_str(),
                retry_after_secs: (b.window_start + b.config.window.secs())
                    .saturating_sub(now)
                    .max(1),
            });
        }
        let mut held = Vec::new();
        for (i, b) in budgets.iter_mut().enumerate() {
            if b.matches(feature, user, key) {
                let amount = b.estimate();
                b.reserved_pico = b.reserved_pico.saturating_add(amount);
                held.push((i, b.window_start, amount));
            }
        }
        drop(budgets);
        Ok(Reservation {
            budgets: self.clone(),
            held,
        })
    }

    /// Counts a finished call in every budget it falls under (see the module docs for what a
    /// call counts as).
    fn charge(&self, call: &CallRecord) {
        let now = now_secs();
        let mut budgets = self.lock();
        for b in budgets.iter_mut() {
            roll(b, now);
            if !b.matches(
                call.metadata.feature.as_deref(),
                call.metadata.user_id.as_deref(),
                call.metadata.key.as_deref(),
            ) {
                continue;
            }
            let charge = b.charge_for(call);
            b.spent_pico = b.spent_pico.saturating_add(charge);
            if let Some(cost) = call.cost_pico_usd
                && call.outcome == crate::call::record::Outcome::Completed
            {
                if b.recent_costs.len() == RECENT_COSTS {
                    b.recent_costs.pop_front();
                }
                b.recent_costs.push_back(cost);
            }
        }
    }
}

/// Checks the `[[budgets]]` amounts as [`Budgets::new`] reads them, without a cost store: what
/// `check-config` runs.
pub fn check(configs: &[BudgetConfig]) -> Result<(), String> {
    configs.iter().try_for_each(|c| amounts(c).map(drop))
}

/// A budget's limit and its unpriced-call amount, in pico-USD.
fn amounts(c: &BudgetConfig) -> Result<(u128, Option<u128>), String> {
    let limit = parse_usd(&c.limit_usd).map_err(|e| format!("budget {}: limit_usd {e}", c.name))?;
    let unpriced = c
        .unpriced_call_usd
        .as_deref()
        .map(parse_usd)
        .transpose()
        .map_err(|e| format!("budget {}: unpriced_call_usd {e}", c.name))?;
    Ok((limit, unpriced))
}

/// Budgets as a recorder sink: every finished call is charged to the budgets it falls under.
impl Sink for Budgets {
    fn record(&self, call: &CallRecord, _span: &SpanRecord) {
        self.charge(call);
    }
}

fn roll(b: &mut Budget, now: u64) {
    let start = window_start(now, b.config.window);
    if start != b.window_start {
        b.window_start = start;
        b.spent_pico = 0;
        // Reservations of the old window are released against it, and so ignored.
        b.reserved_pico = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usd_amounts_parse_exactly() {
        assert_eq!(parse_usd("25.00").unwrap(), 25_000_000_000_000);
        assert_eq!(parse_usd("0.000001").unwrap(), 1_000_000);
        assert_eq!(parse_usd("3").unwrap(), 3_000_000_000_000);
        assert!(parse_usd("-1").is_err() && parse_usd("1.2.3").is_err() && parse_usd("").is_err());
    }
}
