//! Local cost accounting: every priced call adds to an hourly aggregate keyed by provider,
//! model, feature, user and prompt version, kept in memory and written to sled every few
//! seconds. It stays small under millions of calls (one row per hour and distinct key), answers
//! the cost query API, and gives budgets their spend after a restart.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::call::CallRecord;

pub const HOUR_SECS: u64 = 3600;

/// The dimensions a row is kept by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    pub hour: u64,
    pub provider: String,
    pub model: String,
    pub feature: String,
    pub user: String,
    pub prompt_version: String,
}

/// Sums for one key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub calls: u64,
    pub priced_calls: u64,
    pub unpriced_calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub reasoning_tokens: u64,
    /// Exact, in pico-USD.
    pub cost_pico_usd: u128,
}

impl Totals {
    pub fn add(&mut self, o: &Totals) {
        self.calls += o.calls;
        self.priced_calls += o.priced_calls;
        self.unpriced_calls += o.unpriced_calls;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cached_input_tokens += o.cached_input_tokens;
        self.cache_creation_input_tokens += o.cache_creation_input_tokens;
        self.reasoning_tokens += o.reasoning_tokens;
        self.cost_pico_usd = self.cost_pico_usd.saturating_add(o.cost_pico_usd);
    }
}

/// What a query groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Provider,
    Model,
    Feature,
    User,
    PromptVersion,
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<GroupBy> {
        Some(match s {
            "provider" => GroupBy::Provider,
            "model" => GroupBy::Model,
            "feature" => GroupBy::Feature,
            "user" => GroupBy::User,
            "prompt_version" | "prompt" => GroupBy::PromptVersion,
            _ => return None,
        })
    }

    fn of(self, k: &Key) -> &str {
        match self {
            GroupBy::Provider => &k.provider,
            GroupBy::Model => &k.model,
            GroupBy::Feature => &k.feature,
            GroupBy::User => &k.user,
            GroupBy::PromptVersion => &k.prompt_version,
        }
    }
}

/// Only rows matching every given value count (budgets filter by feature and user).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub feature: Option<String>,
    pub user: Option<String>,
}

impl Filter {
    fn matches(&self, k: &Key) -> bool {
        self.feature.as_ref().is_none_or(|f| *f == k.feature)
            && self.user.as_ref().is_none_or(|u| *u == k.user)
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The aggregate store: pending increments in memory, merged rows in sled.
pub struct CostStore {
    pending: Mutex<BTreeMap<Key, Totals>>,
    tree: Option<sled::Tree>,
    /// Rows kept when there is no disk (or it failed): the same answers, lost on restart.
    memory: Mutex<BTreeMap<Key, Totals>>,
}

impl CostStore {
    /// Opens the store in `dir`; without a usable directory it keeps everything in memory.
    pub fn open(dir: &Path) -> (CostStore, Option<String>) {
        let opened = sled::Config::new()
            .path(dir)
            .cache_capacity(8 * 1024 * 1024)
            .flush_every_ms(Some(1000))
            .open()
            .and_then(|db| db.open_tree("hourly"));
        match opened {
            Ok(tree) => (
                CostStore {
                    pending: Mutex::new(BTreeMap::new()),
                    tree: Some(tree),
                    memory: Mutex::new(BTreeMap::new()),
                },
                None,
            ),
            Err(e) => {
                let reason = format!("cannot open the cost store in {}: {e}", dir.display());
                tracing::error!(%reason, "cost totals will be kept in memory only");
                (CostStore::in_memory(), Some(reason))
            }
        }
    }

    pub fn in_memory() -> CostStore {
        CostStore {
            pending: Mutex::new(BTreeMap::new()),
            tree: None,
            memory: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds one finished call (cheap: an in-memory map update).
    pub fn add(&self, call: &CallRecord, model: &str, at_secs: u64) {
        let key = Key {
            hour: at_secs - at_secs % HOUR_SECS,
            provider: call.provider.clone(),
            model: model.to_string(),
            feature: call.metadata.feature.clone().unwrap_or_default(),
            user: call.metadata.user_id.clone().unwrap_or_default(),
            prompt_version: call.metadata.prompt_version.clone().unwrap_or_default(),
        };
        let mut t = Totals {
            calls: 1,
            ..Totals::default()
        };
        if let Some(r) = &call.response {
            let u = &r.usage;
            t.input_tokens = u.input_tokens.unwrap_or(0);
            t.output_tokens = u.output_tokens.unwrap_or(0);
            t.cached_input_tokens = u.cached_input_tokens.unwrap_or(0);
            t.cache_creation_input_tokens = u.cache_creation_input_tokens.unwrap_or(0);
            t.reasoning_tokens = u.reasoning_tokens.unwrap_or(0);
        }
        match call.cost_pico_usd {
            Some(c) => {
                t.priced_calls = 1;
                t.cost_pico_usd = c;
            }
            None => t.unpriced_calls = 1,
        }
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .add(&t);
    }

    /// Merges pending increments into the stored rows (call from a background task).
    pub fn flush(&self) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if pending.is_empty() {
            return;
        }
        let Some(tree) = &self.tree else {
            let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
            for (k, t) in pending {
                memory.entry(k).or_default().add(&t);
            }
            return;
        };
        for (k, t) in pending {
            let Ok(key) = serde_json::to_vec(&k) else {
                continue;
            };
            let merged = tree.fetch_and_update(&key, |old| {
                let mut total = old
                    .and_then(|o| serde_json::from_slice::<Totals>(o).ok())
                    .unwrap_or_default();
                total.add(&t);
                serde_json::to_vec(&total).ok()
            });
            if let Err(e) = merged {
                tracing::error!(error = %e, "cost store write failed; keeping the row in memory");
                self.memory
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(k)
                    .or_default()
                    .add(&t);
            }
        }
    }

    /// Every row whose hour overlaps `[from, to)`, stored and pending.
    fn rows(&self, from: u64, to: u64, filter: &Filter, mut each: impl FnMut(&Key, &Totals)) {
        let from_hour = from - from % HOUR_SECS;
        let keep = |k: &Key| k.hour >= from_hour && k.hour < to && filter.matches(k);
        if let Some(tree) = &self.tree {
            for (k, v) in tree.iter().flatten() {
                if let (Ok(k), Ok(t)) = (
                    serde_json::from_slice::<Key>(&k),
                    serde_json::from_slice::<Totals>(&v),
                ) && keep(&k)
                {
                    each(&k, &t);
                }
            }
        }
        for map in [&self.memory, &self.pending] {
            for (k, t) in map.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                if keep(k) {
                    each(k, t);
                }
            }
        }
    }

    /// Totals grouped by one dimension over `[from, to)` (hour granularity), largest cost first.
    pub fn query(
        &self,
        from: u64,
        to: u64,
        group_by: GroupBy,
        filter: &Filter,
    ) -> Vec<(String, Totals)> {
        let mut groups: BTreeMap<String, Totals> = BTreeMap::new();
        self.rows(from, to, filter, |k, t| {
            groups.entry(group_by.of(k).to_string()).or_default().add(t)
        });
        let mut out: Vec<(String, Totals)> = groups.into_iter().collect();
        out.sort_by(|a, b| {
            b.1.cost_pico_usd
                .cmp(&a.1.cost_pico_usd)
                .then(a.0.cmp(&b.0))
        });
        out
    }

    /// Sums of the calls matching `filter` since `from`.
    pub fn totals(&self, from: u64, filter: &Filter) -> Totals {
        let mut total = Totals::default();
        self.rows(from, u64::MAX, filter, |_, t| total.add(t));
        total
    }
}

/// Flushes the store every `every` until the returned handle is dropped... by aborting it.
pub fn spawn_flusher(
    store: std::sync::Arc<CostStore>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let s = store.clone();
            let _ = tokio::task::spawn_blocking(move || s.flush()).await;
        }
    })
}
