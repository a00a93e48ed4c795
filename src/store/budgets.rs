//! Spend budgets per feature and/or user over a calendar window (UTC-aligned hour, day, week or
//! 30-day month). The spend is kept per budget in memory, updated as calls are recorded and
//! seeded from the cost store at startup. A call is checked when it arrives: once a budget is
//! spent, the next matching call gets 429; a call already under way (streaming) is never cut.

use std::sync::Mutex;

use serde::Deserialize;

use super::costs::{CostStore, Filter, now_secs};
use crate::call::CallRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    Hour,
    Day,
    Week,
    Month,
}

impl Window {
    pub fn secs(self) -> u64 {
        match self {
            Window::Hour => 3600,
            Window::Day => 86_400,
            Window::Week => 7 * 86_400,
            Window::Month => 30 * 86_400,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Week => "week",
            Window::Month => "month",
        }
    }
}

/// One `[[budgets]]` entry of the config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    pub name: String,
    /// Calls with this `x-sidetrace-feature` count; empty or absent: any feature.
    #[serde(default)]
    pub feature: Option<String>,
    /// Calls with this user id count; absent: any user.
    #[serde(default)]
    pub user: Option<String>,
    /// USD as a decimal string, e.g. "25.00".
    pub limit_usd: String,
    pub window: Window,
}

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
    limit_pico: u128,
    window_start: u64,
    spent_pico: u128,
}

impl Budget {
    fn matches(&self, feature: Option<&str>, user: Option<&str>) -> bool {
        let f = self.config.feature.as_deref().filter(|f| !f.is_empty());
        let u = self.config.user.as_deref().filter(|u| !u.is_empty());
        f.is_none_or(|f| feature == Some(f)) && u.is_none_or(|u| user == Some(u))
    }

    fn filter(&self) -> Filter {
        Filter {
            feature: self.config.feature.clone().filter(|f| !f.is_empty()),
            user: self.config.user.clone().filter(|u| !u.is_empty()),
        }
    }
}

/// A budget that refused a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    pub name: String,
    pub limit_usd: String,
    pub window: &'static str,
}

pub struct Budgets {
    budgets: Mutex<Vec<Budget>>,
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
            let limit_pico =
                parse_usd(&c.limit_usd).map_err(|e| format!("budget {}: limit_usd {e}", c.name))?;
            let mut b = Budget {
                config: c.clone(),
                limit_pico,
                window_start: window_start(now, c.window),
                spent_pico: 0,
            };
            b.spent_pico = store.spent(b.window_start, &b.filter());
            budgets.push(b);
        }
        Ok(Budgets {
            budgets: Mutex::new(budgets),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.budgets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// The first spent budget that covers a new call, if any.
    pub fn check(&self, feature: Option<&str>, user: Option<&str>) -> Option<Exceeded> {
        let now = now_secs();
        let mut budgets = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        for b in budgets.iter_mut() {
            roll(b, now);
            if b.matches(feature, user) && b.spent_pico >= b.limit_pico {
                return Some(Exceeded {
                    name: b.config.name.clone(),
                    limit_usd: b.config.limit_usd.clone(),
                    window: b.config.window.as_str(),
                });
            }
        }
        None
    }

    /// Adds a finished call's cost to every budget it falls under.
    pub fn record(&self, call: &CallRecord) {
        let Some(cost) = call.cost_pico_usd else {
            return;
        };
        let now = now_secs();
        let mut budgets = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        for b in budgets.iter_mut() {
            roll(b, now);
            if b.matches(
                call.metadata.feature.as_deref(),
                call.metadata.user_id.as_deref(),
            ) {
                b.spent_pico = b.spent_pico.saturating_add(cost);
            }
        }
    }
}

fn roll(b: &mut Budget, now: u64) {
    let start = window_start(now, b.config.window);
    if start != b.window_start {
        b.window_start = start;
        b.spent_pico = 0;
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
