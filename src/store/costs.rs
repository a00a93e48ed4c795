//! Local cost accounting: every priced call adds to an hourly aggregate keyed by provider,
//! model, feature, user and prompt version, kept in memory and written to sled every few
//! seconds. It stays small under millions of calls (one row per hour and distinct key), answers
//! the cost query API, and gives budgets their spend after a restart.

use std::{
    borrow::Borrow,
    cmp::Ordering,
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::sled_db::{Damage, Detached, Tally, is_damage, move_aside, open_waiting_for_lock};
use crate::{
    call::{
        record::{CallRecord, Outcome},
        sink::Sink,
    },
    trace::span::SpanRecord,
};

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
    /// The gateway key's name (`[[keys]]`); empty without one. Left out of the encoding when
    /// empty, so rows written before keys existed read and merge as they were.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
}

/// A key's fields, owned ([`Key`]) or borrowed from a call ([`KeyRef`]): the pending map is
/// looked up without copying the call's strings, which it only does for a key it has not seen.
trait KeyFields {
    fn fields(&self) -> KeyRef<'_>;
}

impl KeyFields for Key {
    fn fields(&self) -> KeyRef<'_> {
        KeyRef {
            hour: self.hour,
            provider: &self.provider,
            model: &self.model,
            feature: &self.feature,
            user: &self.user,
            prompt_version: &self.prompt_version,
            key: &self.key,
        }
    }
}

/// A call's key, borrowed. Its fields are `Key`'s, in the same order, so the derived orders
/// agree.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct KeyRef<'a> {
    hour: u64,
    provider: &'a str,
    model: &'a str,
    feature: &'a str,
    user: &'a str,
    prompt_version: &'a str,
    key: &'a str,
}

impl KeyFields for KeyRef<'_> {
    fn fields(&self) -> KeyRef<'_> {
        *self
    }
}

impl KeyRef<'_> {
    fn to_key(self) -> Key {
        Key {
            hour: self.hour,
            provider: self.provider.to_string(),
            model: self.model.to_string(),
            feature: self.feature.to_string(),
            user: self.user.to_string(),
            prompt_version: self.prompt_version.to_string(),
            key: self.key.to_string(),
        }
    }
}

// Both compare as their `KeyRef` (what `Borrow` asks: the same order as `Key`'s own).
impl PartialEq for dyn KeyFields + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.fields() == other.fields()
    }
}

impl Eq for dyn KeyFields + '_ {}

impl PartialOrd for dyn KeyFields + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for dyn KeyFields + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        self.fields().cmp(&other.fields())
    }
}

impl<'a> Borrow<dyn KeyFields + 'a> for Key {
    fn borrow(&self) -> &(dyn KeyFields + 'a) {
        self
    }
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
    /// The gateway key's name.
    Key,
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<GroupBy> {
        Some(match s {
            "provider" => GroupBy::Provider,
            "model" => GroupBy::Model,
            "feature" => GroupBy::Feature,
            "user" => GroupBy::User,
            "prompt_version" | "prompt" => GroupBy::PromptVersion,
            "key" => GroupBy::Key,
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
            GroupBy::Key => &k.key,
        }
    }
}

/// Only rows matching every given value count (budgets filter by feature, user and key).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub feature: Option<String>,
    pub user: Option<String>,
    pub key: Option<String>,
}

impl Filter {
    fn matches(&self, k: &Key) -> bool {
        self.feature.as_ref().is_none_or(|f| *f == k.feature)
            && self.user.as_ref().is_none_or(|u| *u == k.user)
            && self.key.as_ref().is_none_or(|key| *key == k.key)
    }
}

/// The cost store as a recorder sink: each call is added to its hour's aggregate, under the
/// price-table model it was priced as (else the model it named).
impl Sink for CostStore {
    fn record(&self, call: &CallRecord, _span: &SpanRecord) {
        let model = call
            .priced_model
            .as_deref()
            .or(call.model())
            .unwrap_or("unknown");
        self.add(call, model, now_secs());
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The aggregate store: pending increments in memory, merged rows in sled.
///
/// Damage is reported, counted and set aside: beside the tree a tally of rows and calls is
/// written after each durable flush; when sled finds its files corrupt, or a scan on open finds
/// fewer rows or calls than the tally (sled silently truncates a damaged log), the directory is
/// moved to `<dir>.corrupt-<unix time>` and a fresh store holds the rows that could be read.
pub struct CostStore {
    pending: Mutex<BTreeMap<Key, Totals>>,
    // Detached: sled's drop flushes and can block forever on a failed disk.
    tree: Option<Detached<sled::Tree>>,
    dir: PathBuf,
    /// Rows and calls stored in `tree`, kept up to date by `flush` for the tally file.
    stored: Mutex<Tally>,
    /// Rows kept when there is no disk (or it failed): the same answers, lost on restart.
    memory: Mutex<BTreeMap<Key, Totals>>,
    damage: Option<Damage>,
}

fn open_tree(dir: &Path) -> Result<sled::Tree, sled::Error> {
    open_waiting_for_lock(
        &sled::Config::new()
            .path(dir)
            .cache_capacity(8 * 1024 * 1024)
            .flush_every_ms(Some(1000)),
    )
    .and_then(|db| db.open_tree("hourly"))
}

/// The rows of `tree` that decode, and their tally.
#[allow(clippy::type_complexity)]
fn scan(tree: &sled::Tree) -> Result<(Vec<(sled::IVec, sled::IVec)>, Tally), sled::Error> {
    let mut rows = Vec::new();
    let mut tally = Tally::default();
    for stored in tree.iter() {
        let (k, v) = stored?;
        if let (Ok(_), Ok(t)) = (
            serde_json::from_slice::<Key>(&k),
            serde_json::from_slice::<Totals>(&v),
        ) {
            tally.items += 1;
            tally.units += t.calls;
            rows.push((k, v));
        }
    }
    Ok((rows, tally))
}

impl CostStore {
    /// Opens the store in `dir`; without a usable directory it keeps everything in memory.
    /// Damaged files are set aside (see the type's docs) and reported by [`CostStore::damage`].
    pub fn open(dir: &Path) -> (CostStore, Option<String>) {
        match Self::open_checked(dir) {
            Ok(store) => (store, None),
            Err(e) => {
                let reason = format!("cannot open the cost store in {}: {e}", dir.display());
                tracing::error!(%reason, "cost totals will be kept in memory only");
                (CostStore::in_memory(), Some(reason))
            }
        }
    }

    fn open_checked(dir: &Path) -> Result<CostStore, sled::Error> {
        let expected = match Tally::read(dir) {
            Ok(tally) => tally,
            Err(error) => {
                tracing::warn!(%error, "the cost store's tally is unreadable; lost rows cannot be detected this time");
                None
            }
        };
        let (tree, damage, found) = match open_tree(dir) {
            Ok(tree) => {
                let (rows, found) = scan(&tree)?;
                match expected.and_then(|tally| tally.missing_from(found)) {
                    None => (tree, None, found),
                    Some(lost) => {
                        let reason = format!(
                            "{} of {} rows ({} calls) are missing",
                            lost.items,
                            expected.unwrap_or_default().items,
                            lost.units
                        );
                        // Closed here, before the move: sled writes by path while closing,
                        // which must not land in the fresh directory. The disk reads fine.
                        drop(tree);
                        Self::replace_damaged(dir, reason, lost, rows)?
                    }
                }
            }
            Err(e) if is_damage(&e) => {
                let lost = expected.unwrap_or_default();
                Self::replace_damaged(dir, e.to_string(), lost, Vec::new())?
            }
            Err(e) => return Err(e),
        };
        let store = CostStore {
            pending: Mutex::new(BTreeMap::new()),
            tree: Some(Detached::new(tree)),
            dir: dir.to_path_buf(),
            stored: Mutex::new(found),
            memory: Mutex::new(BTreeMap::new()),
            damage,
        };
        if expected != Some(found) {
            store.save_tally(found);
        }
        Ok(store)
    }

    /// Moves the damaged `dir` aside and opens a fresh tree there holding `rows`.
    fn replace_damaged(
        dir: &Path,
        reason: String,
        lost: Tally,
        rows: Vec<(sled::IVec, sled::IVec)>,
    ) -> Result<(sled::Tree, Option<Damage>, Tally), sled::Error> {
        let moved_to = move_aside(dir)?;
        tracing::error!(
            path = %dir.display(),
            moved_to = %moved_to.display(),
            %reason,
            lost_rows = lost.items,
            lost_calls = lost.units,
            kept_rows = rows.len(),
            "the cost store is damaged: cost history was lost; the damaged files are kept aside and a fresh store is used"
        );
        let tree = open_tree(dir)?;
        let mut kept = Tally::default();
        for (k, v) in rows {
            kept.items += 1;
            kept.units += serde_json::from_slice::<Totals>(&v).map_or(0, |t| t.calls);
            tree.insert(k, v)?;
        }
        tree.flush()?;
        let damage = Damage {
            path: dir.to_path_buf(),
            reason,
            lost,
            moved_to: Some(moved_to),
        };
        Ok((tree, Some(damage), kept))
    }

    pub fn in_memory() -> CostStore {
        CostStore {
            pending: Mutex::new(BTreeMap::new()),
            tree: None,
            dir: PathBuf::new(),
            stored: Mutex::new(Tally::default()),
            memory: Mutex::new(BTreeMap::new()),
            damage: None,
        }
    }

    /// Damage found when the store was opened (already logged).
    pub fn damage(&self) -> Option<&Damage> {
        self.damage.as_ref()
    }

    /// Whether stored rows survive a restart.
    pub fn is_durable(&self) -> bool {
        self.tree.is_some()
    }

    fn save_tally(&self, tally: Tally) {
        if let Err(error) = tally.write(&self.dir) {
            tracing::debug!(%error, dir = %self.dir.display(), "cannot update the cost store's tally");
        }
    }

    /// Adds one finished call (cheap: an in-memory map update).
    pub fn add(&self, call: &CallRecord, model: &str, at_secs: u64) {
        let meta = &call.metadata;
        let key = KeyRef {
            hour: at_secs - at_secs % HOUR_SECS,
            provider: &call.provider,
            model,
            feature: meta.feature.as_deref().unwrap_or_default(),
            user: meta.user_id.as_deref().unwrap_or_default(),
            prompt_version: meta.prompt_version.as_deref().unwrap_or_default(),
            key: meta.key.as_deref().unwrap_or_default(),
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
            // An error answer is not billed, nor a call the gateway refused before sending it:
            // each cost nothing, which is known (budgets count them so too).
            None if !billed(call) => t.priced_calls = 1,
            None => t.unpriced_calls = 1,
        }
        self.add_totals(&key, &t);
    }

    /// Adds `t` to the pending row of `key`.
    fn add_totals(&self, key: &KeyRef, t: &Totals) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match pending.get_mut(key as &dyn KeyFields) {
            Some(totals) => totals.add(t),
            None => {
                pending.insert(key.to_key(), *t);
            }
        }
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
        let mut stored = self.stored.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed = false;
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
            if let Ok(old) = &merged {
                changed = true;
                stored.items += u64::from(old.is_none());
                stored.units += t.calls;
            }
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
        // The tally only ever claims rows that are on disk, so a crash cannot look like damage.
        if changed {
            match tree.flush() {
                Ok(_) => self.save_tally(*stored),
                Err(e) => tracing::warn!(error = %e, "cost store flush failed"),
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

    /// Totals per group and per bucket of `bucket_secs` (a multiple of an hour) over
    /// `[from, to)`, for the groups in `groups`; and per bucket, every other group's summed.
    pub fn series(
        &self,
        from: u64,
        to: u64,
        group_by: GroupBy,
        filter: &Filter,
        bucket_secs: u64,
        groups: &[String],
    ) -> (
        BTreeMap<String, BTreeMap<u64, Totals>>,
        BTreeMap<u64, Totals>,
    ) {
        let mut out: BTreeMap<String, BTreeMap<u64, Totals>> = BTreeMap::new();
        let mut rest: BTreeMap<u64, Totals> = BTreeMap::new();
        self.rows(from, to, filter, |k, t| {
            let group = group_by.of(k);
            let bucket = k.hour - k.hour % bucket_secs;
            if groups.iter().any(|g| g == group) {
                out.entry(group.to_string())
                    .or_default()
                    .entry(bucket)
                    .or_default()
                    .add(t);
            } else {
                rest.entry(bucket).or_default().add(t);
            }
        });
        (out, rest)
    }

    /// Drops the rows of hours that ended before `before` (unix seconds): the aggregates are
    /// kept as long as the traces, and as long as the longest budget window needs.
    pub fn expire(&self, before: u64) -> u64 {
        let old = |k: &Key| k.hour + HOUR_SECS <= before;
        let mut dropped = 0;
        for map in [&self.memory, &self.pending] {
            map.lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|k, _| !old(k));
        }
        let Some(tree) = &self.tree else { return 0 };
        let mut stored = self.stored.lock().unwrap_or_else(|e| e.into_inner());
        for (k, v) in tree.iter().flatten() {
            let Ok(key) = serde_json::from_slice::<Key>(&k) else {
                continue;
            };
            if old(&key) && tree.remove(&k).is_ok() {
                dropped += 1;
                stored.items = stored.items.saturating_sub(1);
                let calls = serde_json::from_slice::<Totals>(&v).map_or(0, |t| t.calls);
                stored.units = stored.units.saturating_sub(calls);
            }
        }
        if dropped > 0 {
            match tree.flush() {
                Ok(_) => self.save_tally(*stored),
                Err(e) => tracing::warn!(error = %e, "cost store flush failed"),
            }
        }
        dropped
    }

    /// Sums of the calls matching `filter` since `from`.
    pub fn totals(&self, from: u64, filter: &Filter) -> Totals {
        let mut total = Totals::default();
        self.rows(from, u64::MAX, filter, |_, t| total.add(t));
        total
    }
}

/// Flushes the store every `every`, and drops rows older than `keep_secs` once an hour, until
/// the returned task is aborted.
pub fn spawn_flusher(
    store: std::sync::Arc<CostStore>,
    every: Duration,
    keep_secs: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_expiry: Option<tokio::time::Instant> = None;
        loop {
            let s = store.clone();
            let expire = last_expiry.is_none_or(|t| t.elapsed() >= Duration::from_secs(HOUR_SECS));
            if expire {
                last_expiry = Some(tokio::time::Instant::now());
            }
            let _ = tokio::task::spawn_blocking(move || {
                s.flush();
                if expire {
                    s.expire(now_secs().saturating_sub(keep_secs));
                }
            })
            .await;
            tokio::time::sleep(every).await;
        }
    })
}

/// Whether a call may have been billed: the provider answered with success, or it did not
/// answer at all (a timeout or a client that left may still be charged); not an error answer,
/// nor a call the gateway refused and never sent.
fn billed(call: &CallRecord) -> bool {
    match call.status {
        Some(status) => (200..300).contains(&status),
        None => call.outcome != Outcome::GatewayError,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Rows added through borrowed keys sum as a map of owned keys would, and the queries
        /// see them in the same order.
        #[test]
        fn pending_rows_sum_by_key_as_owned_keys_would(
            adds in proptest::collection::vec((0u64..3, 0usize..2, 0usize..2, 0usize..3, 0usize..3, 1u64..50), 1..60)
        ) {
            let names = ["", "a", "ab"];
            let store = CostStore::in_memory();
            let mut model: BTreeMap<Key, Totals> = BTreeMap::new();
            for (hour, provider, m, feature, user, tokens) in adds {
                let key = KeyRef {
                    hour: hour * HOUR_SECS,
                    provider: ["openai", "anthropic"][provider],
                    model: ["gpt-4o", "gpt-4o-mini"][m],
                    feature: names[feature],
                    user: names[user],
                    prompt_version: "",
                    key: names[(feature + user) % 3],
                };
                let t = Totals { calls: 1, input_tokens: tokens, ..Totals::default() };
                store.add_totals(&key, &t);
                model.entry(key.to_key()).or_default().add(&t);
            }
            let mut seen = Vec::new();
            store.rows(0, 10 * HOUR_SECS, &Filter::default(), |k, t| seen.push((k.clone(), *t)));
            prop_assert_eq!(seen, model.into_iter().collect::<Vec<_>>());
        }
    }
}
