//! Local spool for OTLP export batches the collector could not take yet, replayed oldest-first.
//!
//! # What the spool promises
//!
//! - **Order.** Ids come from sled's `Db::generate_id` (monotonic across restarts, not contiguous)
//!   and are stored as big-endian keys, so key order is append order and `peek_oldest` returns the
//!   oldest batch first.
//! - **Deleted only on success or counted.** A batch leaves the spool through `ack` (after a
//!   successful export) or as a drop with a reason: `spool_full` (an append needed room under
//!   `max_bytes`; the oldest batches go first), `expired` (older than `max_age_ms`, checked on
//!   `append` and `trim`), `max_attempts` (`fail` was called `max_attempts` times: a poison batch
//!   cannot block the rest) or `corrupt` (a stored value that does not decode; its span count is
//!   unknown and counted as 0 unless the spool still had it in its index). Drops are tallied in
//!   batches and spans and handed out by `take_dropped`, which feeds
//!   `sidetrace_spans_dropped_total{reason}`. A batch larger than `max_bytes` is refused with
//!   `SpoolError::TooLarge` and never stored: the caller counts that one.
//! - **Durability window.** sled writes in the background every [`SLED_FLUSH_EVERY_MS`] ms. A hard
//!   kill (SIGKILL, OOM kill, power loss) loses at most the appends, acks and attempt counts of
//!   that window, unless `flush()` was called after them. A clean shutdown calls `flush()`
//!   (dropping the spool flushes too, on a thread nobody waits for). A lost ack means the batch is sent again; a lost append means the batch is gone.
//! - **At-least-once.** A crash between the collector's success answer and the flushed `ack`
//!   re-sends the batch on the next replay, so the backend may see duplicates. Acking promptly
//!   keeps that window small.
//! - **Bytes are payload bytes.** `max_bytes` is enforced with our own counter of payload bytes,
//!   rebuilt by a scan on open. sled's files are log-structured and larger than that (headers,
//!   old versions not yet reclaimed), so budget disk space with headroom.
//! - **Storage failures surface, they do not panic.** Any sled error on open or write (disk full,
//!   I/O error, permission, corrupt database) is returned as `SpoolError::Io` and leaves the
//!   spool's contents and counters as they were. The caller then switches to a [`MemorySpool`]
//!   and sets `sidetrace_spool_degraded`: [`open_or_degrade`] does this at startup. A
//!   `MemorySpool` keeps the same bounds, but nothing in it survives a restart. sled 0.34
//!   flushes when its last handle is dropped and can wait forever (or panic) on a failed disk,
//!   so [`SledSpool`] closes its database on a thread of its own (`store::sled_db::Detached`).
//! - **Damage is reported, counted and kept aside.** A tally of batches and spans is rewritten
//!   beside the tree after every change. On open, a database sled calls corrupt, or one holding
//!   fewer batches or spans than the tally (sled silently cuts a damaged log short), is moved to
//!   `<dir>.corrupt-<unix time>`; the batches that still read go to a fresh spool, and the spans
//!   known lost are dropped as `corrupt`.
//! - **Blocking.** Every method does synchronous disk I/O (`flush` waits for an fsync). Call it
//!   from `spawn_blocking` or a dedicated thread, never from the request path.
//!
//! sled 0.34 is effectively unmaintained (reference/rust-stack.md section 6), which is why it
//! stays behind the small [`Spool`] trait.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{SystemTime, UNIX_EPOCH},
};

use crate::store::sled_db::{
    Damage, Detached, Tally, is_damage, move_aside, open_waiting_for_lock,
};

/// sled's page cache; its default is 1 GiB, far more than a spool that is mostly written and
/// read once needs.
pub const SLED_CACHE_CAPACITY_BYTES: u64 = 16 * 1024 * 1024;

/// How often sled's background thread makes writes durable: the loss window of a hard kill.
pub const SLED_FLUSH_EVERY_MS: u64 = 500;

/// The tree holding the batches; a name of our own keeps sled's default tree free for later use.
const BATCHES_TREE: &str = "export_batches";

/// Bumped when the stored value layout changes; values of another version read as corrupt.
const VALUE_FORMAT_VERSION: u8 = 1;
/// version u8, created_at_ms u64, attempts u32, spans u32, all big-endian.
const VALUE_HEADER_BYTES: usize = 1 + 8 + 4 + 4;
const ATTEMPTS_OFFSET: usize = 1 + 8;

/// Identifies a spooled batch; larger ids were appended later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId(u64);

impl EntryId {
    pub fn as_u64(self) -> u64 {
        self.0
    }

    fn to_key(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    fn from_key(key: &[u8]) -> Option<EntryId> {
        let bytes: [u8; 8] = key.try_into().ok()?;
        Some(EntryId(u64::from_be_bytes(bytes)))
    }
}

/// A spooled batch as `peek_oldest` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: EntryId,
    pub created_at_ms: u64,
    /// Failed export attempts so far.
    pub attempts: u32,
    pub spans: u32,
    /// The encoded export request, exactly as it will be sent.
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolLimits {
    /// Payload bytes the spool may hold; appending past it drops the oldest batches.
    pub max_bytes: u64,
    /// Batches older than this are dropped on `append` and `trim`.
    pub max_age_ms: u64,
    /// A batch is tried at most this many times: the failure that reaches it drops the batch.
    pub max_attempts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpoolStats {
    pub items: u64,
    pub bytes: u64,
    pub spans: u64,
    /// Created-at time of the batch replay will send next; `None` when the spool is empty.
    pub oldest_created_at_ms: Option<u64>,
}

/// Why a batch left the spool without being exported; `as_label` is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    SpoolFull,
    Expired,
    MaxAttempts,
    Corrupt,
}

impl DropReason {
    pub const ALL: [DropReason; 4] = [
        DropReason::SpoolFull,
        DropReason::Expired,
        DropReason::MaxAttempts,
        DropReason::Corrupt,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            DropReason::SpoolFull => "spool_full",
            DropReason::Expired => "expired",
            DropReason::MaxAttempts => "max_attempts",
            DropReason::Corrupt => "corrupt",
        }
    }

    fn index(self) -> usize {
        match self {
            DropReason::SpoolFull => 0,
            DropReason::Expired => 1,
            DropReason::MaxAttempts => 2,
            DropReason::Corrupt => 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DropCount {
    pub batches: u64,
    pub spans: u64,
}

/// Drops by reason since the last `take_dropped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DropCounts {
    by_reason: [DropCount; 4],
}

impl DropCounts {
    pub fn record(&mut self, reason: DropReason, spans: u32) {
        let count = &mut self.by_reason[reason.index()];
        count.batches += 1;
        count.spans += u64::from(spans);
    }

    /// Records `batches` dropped batches holding `spans` spans in all.
    pub fn record_many(&mut self, reason: DropReason, batches: u64, spans: u64) {
        let count = &mut self.by_reason[reason.index()];
        count.batches += batches;
        count.spans += spans;
    }

    pub fn get(&self, reason: DropReason) -> DropCount {
        self.by_reason[reason.index()]
    }

    pub fn is_empty(&self) -> bool {
        self.by_reason.iter().all(|count| count.batches == 0)
    }

    /// The reasons that dropped anything, for turning into metric increments.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, DropCount)> + '_ {
        DropReason::ALL
            .into_iter()
            .map(|reason| (reason, self.get(reason)))
            .filter(|(_, count)| count.batches > 0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// Still spooled; `attempts` failures so far.
    WillRetry { attempts: u32 },
    /// That was the last allowed attempt: the batch is gone and counted as `max_attempts` (or as
    /// `corrupt` if its stored value no longer decodes).
    Dropped,
    /// No such batch (already acked or dropped).
    NotFound,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool storage failed: {0}")]
    Io(#[from] io::Error),
    #[error("batch of {bytes} bytes is larger than the whole spool (max_bytes {max_bytes})")]
    TooLarge { bytes: u64, max_bytes: u64 },
}

impl From<sled::Error> for SpoolError {
    fn from(error: sled::Error) -> Self {
        SpoolError::Io(error.into())
    }
}

/// Storage for export batches waiting for the collector. Implementations enforce
/// [`SpoolLimits`] and tally what they drop; see the module docs for what is promised.
pub trait Spool: Send + Sync {
    /// Stores a batch created at `now_ms`, first dropping expired batches and then the oldest
    /// ones until it fits under `max_bytes`.
    fn append(&self, payload: &[u8], spans: u32, now_ms: u64) -> Result<EntryId, SpoolError>;
    /// Up to `max_entries` batches, oldest first, without removing them.
    fn peek_oldest(&self, max_entries: usize) -> Result<Vec<Entry>, SpoolError>;
    /// Deletes a batch after a successful export; an id that is already gone is fine.
    fn ack(&self, id: EntryId) -> Result<(), SpoolError>;
    /// Records a failed export attempt; drops the batch once it reaches `max_attempts`.
    fn fail(&self, id: EntryId) -> Result<FailOutcome, SpoolError>;
    /// Drops batches older than `max_age_ms`, then the oldest while over `max_bytes`.
    fn trim(&self, now_ms: u64) -> Result<(), SpoolError>;
    fn stats(&self) -> SpoolStats;
    /// Drops since the last call, by reason. One owner (the exporter) should read them.
    fn take_dropped(&self) -> DropCounts;
    /// Makes everything written so far durable.
    fn flush(&self) -> Result<(), SpoolError>;
    /// Whether what is stored survives a restart (false for the in-memory spool).
    fn durable(&self) -> bool;
}

/// Wall-clock time for `append` and `trim`; tests pass their own clock instead.
pub fn unix_time_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since_epoch| {
            u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
        })
}

/// What [`open_or_degrade`] opened.
pub struct OpenedSpool {
    pub spool: Arc<dyn Spool>,
    /// Why the spool is in memory instead of on disk, for `sidetrace_spool_degraded`.
    pub degraded: Option<String>,
    /// Damage found on disk and set aside (already logged; its spans are in the spool's drops).
    pub damage: Option<Damage>,
}

/// Opens the sled spool in `dir` (setting damaged files aside, see [`SledSpool::open`]); when
/// that fails, logs loudly and returns a [`MemorySpool`] and the reason.
pub fn open_or_degrade(dir: &Path, limits: SpoolLimits) -> OpenedSpool {
    match SledSpool::open(dir, limits) {
        Ok(spool) => OpenedSpool {
            damage: spool.damage().cloned(),
            spool: Arc::new(spool),
            degraded: None,
        },
        Err(error) => {
            let reason = format!("cannot open the spool in {}: {error}", dir.display());
            tracing::error!(
                dir = %dir.display(),
                %error,
                "spool degraded to memory: spooled export batches will not survive a restart"
            );
            OpenedSpool {
                spool: Arc::new(MemorySpool::new(limits)),
                degraded: Some(reason),
                damage: None,
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct EntryMeta {
    created_at_ms: u64,
    attempts: u32,
    spans: u32,
    payload_bytes: u64,
}

impl EntryMeta {
    fn is_expired(&self, now_ms: u64, max_age_ms: u64) -> bool {
        now_ms.saturating_sub(self.created_at_ms) > max_age_ms
    }
}

/// The bookkeeping both spools share: what is stored (without payloads), the totals the bounds
/// are checked against, and the drop tally.
#[derive(Debug, Default)]
struct Ledger {
    entries: BTreeMap<EntryId, EntryMeta>,
    bytes: u64,
    spans: u64,
    dropped: DropCounts,
    /// Batches and spans appended since the last `flush` (sled spool): left out of the tally,
    /// so a hard kill that loses them is not taken for damage.
    unflushed: (u64, u64),
    /// The tally last written (sled spool), so an unchanged one is not written again.
    saved: Option<Tally>,
}

impl Ledger {
    fn insert(&mut self, id: EntryId, meta: EntryMeta) {
        self.bytes += meta.payload_bytes;
        self.spans += u64::from(meta.spans);
        if let Some(replaced) = self.entries.insert(id, meta) {
            self.bytes -= replaced.payload_bytes;
            self.spans -= u64::from(replaced.spans);
        }
    }

    fn remove(&mut self, id: EntryId) -> Option<EntryMeta> {
        let meta = self.entries.remove(&id)?;
        self.bytes -= meta.payload_bytes;
        self.spans -= u64::from(meta.spans);
        Some(meta)
    }

    fn drop_entry(&mut self, id: EntryId, reason: DropReason) {
        let spans = self.remove(id).map_or(0, |meta| meta.spans);
        self.dropped.record(reason, spans);
    }

    fn stats(&self) -> SpoolStats {
        SpoolStats {
            items: self.entries.len() as u64,
            bytes: self.bytes,
            spans: self.spans,
            oldest_created_at_ms: self
                .entries
                .first_key_value()
                .map(|(_, meta)| meta.created_at_ms),
        }
    }

    /// What must go before `incoming_bytes` more fit: every expired batch, then the oldest
    /// batches until the rest fits under `max_bytes`. `trim` is the same with nothing incoming.
    fn evictions_for(
        &self,
        incoming_bytes: u64,
        now_ms: u64,
        limits: &SpoolLimits,
    ) -> Vec<(EntryId, DropReason)> {
        let mut evictions = Vec::new();
        let mut bytes_left = self.bytes;
        for (&id, meta) in &self.entries {
            if meta.is_expired(now_ms, limits.max_age_ms) {
                evictions.push((id, DropReason::Expired));
                bytes_left -= meta.payload_bytes;
            }
        }
        for (&id, meta) in &self.entries {
            if bytes_left + incoming_bytes <= limits.max_bytes {
                break;
            }
            if !meta.is_expired(now_ms, limits.max_age_ms) {
                evictions.push((id, DropReason::SpoolFull));
                bytes_left -= meta.payload_bytes;
            }
        }
        evictions
    }
}

fn check_fits(payload_bytes: u64, limits: &SpoolLimits) -> Result<(), SpoolError> {
    if payload_bytes > limits.max_bytes {
        return Err(SpoolError::TooLarge {
            bytes: payload_bytes,
            max_bytes: limits.max_bytes,
        });
    }
    Ok(())
}

// Nothing inside the critical sections panics by design, so a poisoned lock still guards
// consistent data and refusing service would only lose batches.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The in-memory spool: the fallback when sled cannot be used, and the reference in tests.
#[derive(Debug)]
pub struct MemorySpool {
    limits: SpoolLimits,
    state: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    ledger: Ledger,
    payloads: HashMap<EntryId, Vec<u8>>,
    next_id: u64,
}

impl MemorySpool {
    pub fn new(limits: SpoolLimits) -> Self {
        MemorySpool {
            limits,
            state: Mutex::new(MemoryState::default()),
        }
    }
}

impl Spool for MemorySpool {
    fn append(&self, payload: &[u8], spans: u32, now_ms: u64) -> Result<EntryId, SpoolError> {
        let payload_bytes = payload.len() as u64;
        check_fits(payload_bytes, &self.limits)?;
        let mut state = lock(&self.state);
        for (old_id, reason) in state
            .ledger
            .evictions_for(payload_bytes, now_ms, &self.limits)
        {
            state.payloads.remove(&old_id);
            state.ledger.drop_entry(old_id, reason);
        }
        let id = EntryId(state.next_id);
        state.next_id += 1;
        state.payloads.insert(id, payload.to_vec());
        state.ledger.insert(
            id,
            EntryMeta {
                created_at_ms: now_ms,
                attempts: 0,
                spans,
                payload_bytes,
            },
        );
        Ok(id)
    }

    fn peek_oldest(&self, max_entries: usize) -> Result<Vec<Entry>, SpoolError> {
        let state = lock(&self.state);
        Ok(state
            .ledger
            .entries
            .iter()
            .take(max_entries)
            .map(|(&id, meta)| Entry {
                id,
                created_at_ms: meta.created_at_ms,
                attempts: meta.attempts,
                spans: meta.spans,
                payload: state.payloads.get(&id).cloned().unwrap_or_default(),
            })
            .collect())
    }

    fn ack(&self, id: EntryId) -> Result<(), SpoolError> {
        let mut state = lock(&self.state);
        state.payloads.remove(&id);
        state.ledger.remove(id);
        Ok(())
    }

    fn fail(&self, id: EntryId) -> Result<FailOutcome, SpoolError> {
        let mut state = lock(&self.state);
        let Some(meta) = state.ledger.entries.get_mut(&id) else {
            return Ok(FailOutcome::NotFound);
        };
        meta.attempts = meta.attempts.saturating_add(1);
        if meta.attempts >= self.limits.max_attempts {
            state.payloads.remove(&id);
            state.ledger.drop_entry(id, DropReason::MaxAttempts);
            return Ok(FailOutcome::Dropped);
        }
        Ok(FailOutcome::WillRetry {
            attempts: meta.attempts,
        })
    }

    fn trim(&self, now_ms: u64) -> Result<(), SpoolError> {
        let mut state = lock(&self.state);
        for (old_id, reason) in state.ledger.evictions_for(0, now_ms, &self.limits) {
            state.payloads.remove(&old_id);
            state.ledger.drop_entry(old_id, reason);
        }
        Ok(())
    }

    fn stats(&self) -> SpoolStats {
        lock(&self.state).ledger.stats()
    }

    fn take_dropped(&self) -> DropCounts {
        std::mem::take(&mut lock(&self.state).ledger.dropped)
    }

    fn flush(&self) -> Result<(), SpoolError> {
        Ok(())
    }

    fn durable(&self) -> bool {
        false
    }
}

/// The durable spool: one sled tree of `big-endian id -> header + payload`, with an in-memory
/// [`Ledger`] so bounds and stats never read payloads back.
pub struct SledSpool {
    // Detached: sled's drop flushes and can block forever on a failed disk, so the last handle
    // is closed on a thread of its own, never on a runtime worker.
    db: Detached<sled::Db>,
    batches: Detached<sled::Tree>,
    dir: PathBuf,
    limits: SpoolLimits,
    /// Damage found (and set aside) when this spool was opened.
    damage: Option<Damage>,
    // Every sled write happens under this lock, so the ledger always matches what is stored.
    ledger: Mutex<Ledger>,
    #[cfg(test)]
    fail_writes: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for SledSpool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledSpool")
            .field("limits", &self.limits)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl SledSpool {
    /// Opens (or creates) the spool in `dir` and rebuilds the counters by scanning it; values
    /// that do not decode are deleted and counted as `corrupt`.
    ///
    /// Damage is reported, counted and set aside: when sled finds its files corrupt, or finds
    /// fewer batches or spans than the tally kept beside the tree (sled silently truncates a
    /// damaged log), the directory is moved to `<dir>.corrupt-<unix time>`, a fresh spool is
    /// opened in `dir` holding the batches that could still be read, and the spans known lost
    /// are counted as `corrupt` drops. [`SledSpool::damage`] says what happened.
    pub fn open(dir: &Path, limits: SpoolLimits) -> Result<SledSpool, SpoolError> {
        let expected = match Tally::read(dir) {
            Ok(tally) => tally,
            Err(error) => {
                tracing::warn!(%error, "the spool's tally is unreadable; losses since the last run cannot be counted");
                None
            }
        };
        let (db, batches) = match open_db(dir).and_then(|db| {
            let tree = db.open_tree(BATCHES_TREE)?;
            Ok((db, tree))
        }) {
            Ok(opened) => opened,
            Err(error) if is_damage(&error) => {
                let lost = expected.unwrap_or_default();
                return Self::replace_damaged(dir, limits, error.to_string(), lost, Vec::new());
            }
            Err(error) => return Err(error.into()),
        };
        let (ledger, corrupt_keys) = scan(&batches)?;
        let found = Tally {
            items: ledger.entries.len() as u64,
            units: ledger.spans,
        };
        // Values that are there but do not decode are deleted and counted below; damage is
        // batches (or spans) that sled lost without a word.
        let unreadable = corrupt_keys
            .iter()
            .filter(|(key, _)| EntryId::from_key(key).is_some())
            .count() as u64;
        let silently_lost = expected.is_some_and(|tally| {
            tally.items > found.items + unreadable
                || (corrupt_keys.is_empty() && tally.units > found.units)
        });
        if let Some(lost) = expected
            .filter(|_| silently_lost)
            .and_then(|tally| tally.missing_from(found))
        {
            let reason = format!(
                "{} of {} spooled batches ({} spans) are missing",
                lost.items,
                expected.unwrap_or_default().items,
                lost.units
            );
            let mut survivors = Vec::with_capacity(ledger.entries.len());
            for stored in batches.iter() {
                let (key, value) = stored?;
                if EntryId::from_key(&key).is_some() && decode_header(&value).is_some() {
                    survivors.push(value.to_vec());
                }
            }
            // Closed here, before the move: sled writes by path while closing, which must
            // not land in the fresh directory. The disk reads fine.
            drop((batches, db));
            return Self::replace_damaged(dir, limits, reason, lost, survivors);
        }
        let spool = SledSpool::new(db, batches, dir, limits, ledger, None);
        {
            let mut ledger = lock(&spool.ledger);
            for (key, spans) in corrupt_keys {
                tracing::warn!(key = ?key, "deleting a spooled export batch that does not decode");
                spool.batches.remove(&key)?;
                ledger.dropped.record(DropReason::Corrupt, spans);
            }
            spool.save_tally(&mut ledger);
        }
        Ok(spool)
    }

    fn new(
        db: sled::Db,
        batches: sled::Tree,
        dir: &Path,
        limits: SpoolLimits,
        ledger: Ledger,
        damage: Option<Damage>,
    ) -> SledSpool {
        SledSpool {
            db: Detached::new(db),
            batches: Detached::new(batches),
            dir: dir.to_path_buf(),
            limits,
            damage,
            ledger: Mutex::new(ledger),
            #[cfg(test)]
            fail_writes: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Moves the damaged `dir` aside, opens a fresh spool there with the `survivors` (stored
    /// values, oldest first, under new ids in the same order) and counts `lost` as corrupt.
    fn replace_damaged(
        dir: &Path,
        limits: SpoolLimits,
        reason: String,
        lost: Tally,
        survivors: Vec<Vec<u8>>,
    ) -> Result<SledSpool, SpoolError> {
        let moved_to = move_aside(dir)?;
        let damage = Damage {
            path: dir.to_path_buf(),
            reason,
            lost,
            moved_to: Some(moved_to),
        };
        tracing::error!(
            path = %dir.display(),
            moved_to = %damage.moved_to.as_deref().unwrap_or(dir).display(),
            reason = %damage.reason,
            lost_batches = lost.items,
            lost_spans = lost.units,
            kept_batches = survivors.len(),
            "the spool is damaged: spooled spans were lost; the damaged files are kept aside and a fresh spool is used"
        );
        let db = open_db(dir)?;
        let batches = db.open_tree(BATCHES_TREE)?;
        let mut ledger = Ledger::default();
        for value in survivors {
            let Some(header) = decode_header(&value) else {
                continue;
            };
            let id = EntryId(db.generate_id()?);
            batches.insert(id.to_key(), value.as_slice())?;
            ledger.insert(id, header.meta(&value));
        }
        if lost != Tally::default() {
            // A batch count of 0 would hide the spans from `DropCounts::iter`.
            let batches = lost.items.max(1);
            ledger
                .dropped
                .record_many(DropReason::Corrupt, batches, lost.units);
        }
        db.flush()?;
        let spool = SledSpool::new(db, batches, dir, limits, ledger, Some(damage));
        spool.save_tally(&mut lock(&spool.ledger));
        Ok(spool)
    }

    /// Damage found when the spool was opened (already logged and counted).
    pub fn damage(&self) -> Option<&Damage> {
        self.damage.as_ref()
    }

    /// Records what the tree holds now, for the next open to compare with. A failure only
    /// weakens that check, so it is logged, not returned.
    fn save_tally(&self, ledger: &mut Ledger) {
        // Only what is durable: appends count once `flush` made them so. Removals count at
        // once, which can only make the tally lower than the disk, never higher.
        let tally = Tally {
            items: (ledger.entries.len() as u64).saturating_sub(ledger.unflushed.0),
            units: ledger.spans.saturating_sub(ledger.unflushed.1),
        };
        if ledger.saved == Some(tally) {
            return;
        }
        match tally.write(&self.dir) {
            Ok(()) => ledger.saved = Some(tally),
            Err(error) => {
                tracing::debug!(%error, dir = %self.dir.display(), "cannot update the spool's tally")
            }
        }
    }

    /// Test hook: makes every later write fail as a full disk would.
    #[cfg(test)]
    pub(crate) fn fail_writes_for_test(&self, fail: bool) {
        self.fail_writes
            .store(fail, std::sync::atomic::Ordering::SeqCst);
    }

    /// Test hook: the raw tree, to plant garbage the way a damaged disk would.
    #[cfg(test)]
    pub(crate) fn batches_tree_for_test(&self) -> &sled::Tree {
        &self.batches
    }

    fn check_writable(&self) -> Result<(), SpoolError> {
        #[cfg(test)]
        if self.fail_writes.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(SpoolError::Io(io::Error::new(
                io::ErrorKind::StorageFull,
                "injected write failure",
            )));
        }
        Ok(())
    }

    /// Removes `evictions` and inserts `new_entry` in one atomic sled batch, then mirrors that
    /// in the ledger; on error neither changes.
    fn apply(
        &self,
        ledger: &mut Ledger,
        evictions: Vec<(EntryId, DropReason)>,
        new_entry: Option<(EntryId, EntryMeta, Vec<u8>)>,
    ) -> Result<(), SpoolError> {
        if evictions.is_empty() && new_entry.is_none() {
            return Ok(());
        }
        self.check_writable()?;
        let mut batch = sled::Batch::default();
        for (id, _) in &evictions {
            batch.remove(&id.to_key());
        }
        if let Some((id, _, value)) = &new_entry {
            batch.insert(&id.to_key(), value.as_slice());
        }
        self.batches.apply_batch(batch)?;
        for (id, reason) in evictions {
            ledger.drop_entry(id, reason);
        }
        if let Some((id, meta, _)) = new_entry {
            ledger.insert(id, meta);
        }
        self.save_tally(ledger);
        Ok(())
    }
}

impl Spool for SledSpool {
    fn append(&self, payload: &[u8], spans: u32, now_ms: u64) -> Result<EntryId, SpoolError> {
        let payload_bytes = payload.len() as u64;
        check_fits(payload_bytes, &self.limits)?;
        let mut ledger = lock(&self.ledger);
        self.check_writable()?;
        let evictions = ledger.evictions_for(payload_bytes, now_ms, &self.limits);
        let id = EntryId(self.db.generate_id()?);
        let meta = EntryMeta {
            created_at_ms: now_ms,
            attempts: 0,
            spans,
            payload_bytes,
        };
        let value = encode_value(&meta, payload);
        ledger.unflushed.0 += 1;
        ledger.unflushed.1 += u64::from(spans);
        if let Err(e) = self.apply(&mut ledger, evictions, Some((id, meta, value))) {
            ledger.unflushed.0 -= 1;
            ledger.unflushed.1 -= u64::from(spans);
            return Err(e);
        }
        Ok(id)
    }

    fn peek_oldest(&self, max_entries: usize) -> Result<Vec<Entry>, SpoolError> {
        let mut ledger = lock(&self.ledger);
        let mut entries = Vec::with_capacity(max_entries.min(ledger.entries.len()));
        let mut corrupt_keys = Vec::new();
        for stored in self.batches.iter() {
            if entries.len() >= max_entries {
                break;
            }
            let (key, value) = stored?;
            match decode_entry(&key, &value) {
                Some(entry) => entries.push(entry),
                None => corrupt_keys.push(key),
            }
        }
        // Only reachable if something other than this spool wrote to the tree; deleting keeps
        // one bad value from blocking replay forever.
        let changed = !corrupt_keys.is_empty();
        for key in corrupt_keys {
            tracing::warn!(key = ?key, "deleting a spooled export batch that does not decode");
            self.check_writable()?;
            self.batches.remove(&key)?;
            match EntryId::from_key(&key) {
                Some(id) => ledger.drop_entry(id, DropReason::Corrupt),
                None => ledger.dropped.record(DropReason::Corrupt, 0),
            }
        }
        if changed {
            self.save_tally(&mut ledger);
        }
        Ok(entries)
    }

    fn ack(&self, id: EntryId) -> Result<(), SpoolError> {
        let mut ledger = lock(&self.ledger);
        if !ledger.entries.contains_key(&id) {
            return Ok(());
        }
        self.check_writable()?;
        self.batches.remove(id.to_key())?;
        ledger.remove(id);
        self.save_tally(&mut ledger);
        Ok(())
    }

    fn fail(&self, id: EntryId) -> Result<FailOutcome, SpoolError> {
        let mut ledger = lock(&self.ledger);
        let Some(meta) = ledger.entries.get(&id).copied() else {
            return Ok(FailOutcome::NotFound);
        };
        let attempts = meta.attempts.saturating_add(1);
        self.check_writable()?;
        if attempts >= self.limits.max_attempts {
            self.batches.remove(id.to_key())?;
            ledger.drop_entry(id, DropReason::MaxAttempts);
            self.save_tally(&mut ledger);
            return Ok(FailOutcome::Dropped);
        }
        let stored = self.batches.get(id.to_key())?;
        let Some(mut value) = stored.map(|value| value.to_vec()) else {
            // The ledger mirrors the tree under the same lock, so this means outside
            // interference; forget the entry rather than count attempts for nothing.
            ledger.drop_entry(id, DropReason::Corrupt);
            self.save_tally(&mut ledger);
            return Ok(FailOutcome::NotFound);
        };
        if decode_header(&value).is_none() {
            self.batches.remove(id.to_key())?;
            ledger.drop_entry(id, DropReason::Corrupt);
            self.save_tally(&mut ledger);
            return Ok(FailOutcome::Dropped);
        }
        value[ATTEMPTS_OFFSET..ATTEMPTS_OFFSET + 4].copy_from_slice(&attempts.to_be_bytes());
        self.batches.insert(id.to_key(), value)?;
        ledger.insert(id, EntryMeta { attempts, ..meta });
        Ok(FailOutcome::WillRetry { attempts })
    }

    fn trim(&self, now_ms: u64) -> Result<(), SpoolError> {
        let mut ledger = lock(&self.ledger);
        let evictions = ledger.evictions_for(0, now_ms, &self.limits);
        self.apply(&mut ledger, evictions, None)
    }

    fn stats(&self) -> SpoolStats {
        lock(&self.ledger).stats()
    }

    fn take_dropped(&self) -> DropCounts {
        std::mem::take(&mut lock(&self.ledger).dropped)
    }

    fn flush(&self) -> Result<(), SpoolError> {
        // No ledger lock across the fsync: it can take a while and appends need not wait.
        let pending = lock(&self.ledger).unflushed;
        self.check_writable()?;
        self.db.flush()?;
        let mut ledger = lock(&self.ledger);
        ledger.unflushed.0 = ledger.unflushed.0.saturating_sub(pending.0);
        ledger.unflushed.1 = ledger.unflushed.1.saturating_sub(pending.1);
        self.save_tally(&mut ledger);
        Ok(())
    }

    fn durable(&self) -> bool {
        true
    }
}

/// Rebuilds the ledger from the tree; keys or values that do not decode are returned (with the
/// span count their header still gives) for the caller to delete.
#[allow(clippy::type_complexity)]
fn scan(batches: &sled::Tree) -> Result<(Ledger, Vec<(sled::IVec, u32)>), SpoolError> {
    let mut ledger = Ledger::default();
    let mut corrupt_keys = Vec::new();
    for stored in batches.iter() {
        let (key, value) = stored?;
        let header = decode_header(&value);
        match (EntryId::from_key(&key), header) {
            (Some(id), Some(header)) => ledger.insert(id, header.meta(&value)),
            _ => corrupt_keys.push((key, header.map_or(0, |header| header.spans))),
        }
    }
    Ok((ledger, corrupt_keys))
}

fn open_db(dir: &Path) -> Result<sled::Db, sled::Error> {
    open_waiting_for_lock(
        &sled::Config::new()
            .path(dir)
            .cache_capacity(SLED_CACHE_CAPACITY_BYTES)
            .flush_every_ms(Some(SLED_FLUSH_EVERY_MS)),
    )
}

#[derive(Clone, Copy)]
struct ValueHeader {
    created_at_ms: u64,
    attempts: u32,
    spans: u32,
}

impl ValueHeader {
    fn meta(&self, value: &[u8]) -> EntryMeta {
        EntryMeta {
            created_at_ms: self.created_at_ms,
            attempts: self.attempts,
            spans: self.spans,
            payload_bytes: (value.len() - VALUE_HEADER_BYTES) as u64,
        }
    }
}

fn encode_value(meta: &EntryMeta, payload: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(VALUE_HEADER_BYTES + payload.len());
    value.push(VALUE_FORMAT_VERSION);
    value.extend_from_slice(&meta.created_at_ms.to_be_bytes());
    value.extend_from_slice(&meta.attempts.to_be_bytes());
    value.extend_from_slice(&meta.spans.to_be_bytes());
    value.extend_from_slice(payload);
    value
}

fn decode_header(value: &[u8]) -> Option<ValueHeader> {
    if value.len() < VALUE_HEADER_BYTES || value[0] != VALUE_FORMAT_VERSION {
        return None;
    }
    let created_at_ms = u64::from_be_bytes(value[1..9].try_into().ok()?);
    let attempts = u32::from_be_bytes(value[9..13].try_into().ok()?);
    let spans = u32::from_be_bytes(value[13..17].try_into().ok()?);
    Some(ValueHeader {
        created_at_ms,
        attempts,
        spans,
    })
}

fn decode_entry(key: &[u8], value: &[u8]) -> Option<Entry> {
    let id = EntryId::from_key(key)?;
    let header = decode_header(value)?;
    Some(Entry {
        id,
        created_at_ms: header.created_at_ms,
        attempts: header.attempts,
        spans: header.spans,
        payload: value[VALUE_HEADER_BYTES..].to_vec(),
    })
}
