//! The local trace store: every finished span, in sled, with a summary row per trace and per
//! session and indexes by time, feature, user and session, so that the JSON API and the web UI
//! list, filter and open traces by index scans.
//!
//! Spans come from the recorder (and, later, from spans received over OTLP) through a bounded
//! queue: [`TraceStore::submit`] never waits; a full queue drops the span from the store only,
//! counted in `sidetrace_store_spans_dropped_total{reason="queue_full"}` (the export has its own
//! copy). One writer thread applies the queue in batches and evicts whole traces, oldest first,
//! past `[store] max_bytes` or `max_age`, counting each eviction.
//!
//! A store whose files are damaged is moved aside and a fresh one used; a disk that fails a
//! write turns the store off for the rest of the run (logged, `sidetrace_store_up` 0, every span
//! after it counted as dropped) and the proxy keeps serving.
//!
//! Layout (all keys big-endian, so byte order is time order):
//! - `spans`: trace id (16) + span id (8) -> where the span's [`StoredSpan`] (JSON) is in the
//!   segment files under `spans/` (see `log.rs`: sled keeps only this 16-byte pointer)
//! - `segments`: segment id (4) -> how many stored spans it holds (deleted at zero)
//! - `traces`: trace id -> [`TraceSummary`] (JSON)
//! - `by_time`: start nanos (8) + trace id -> ()
//! - `by_feature`, `by_user`, `by_session`: value length (2) + value + start + trace id -> ()
//! - `sessions`: session id -> [`SessionSummary`]; `sessions_by_time`: last nanos + id -> ()
//! - `resources`: resource key (8) -> resource attributes; `meta`: `bytes` -> stored bytes

mod log;
mod query;
mod summary;

use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

pub use query::{Page, SessionQuery, TraceQuery, TraceTree, TreeNode};
pub use summary::{SessionSummary, Totals, TraceSummary};

use log::{Pointer, SpanLog};

use super::sled_db::{Damage, Detached, is_damage, move_aside, open_waiting_for_lock};
use crate::{
    call::{record::CallRecord, sink::Sink},
    metrics::{Metrics, ReasonLabels},
    trace::{
        capture::CapturedContent,
        span::{SpanRecord, Telemetry, with_content},
    },
};

/// Spans waiting for the writer at most; past it they are dropped from the store (counted).
const QUEUE_SPANS: usize = 16 * 1024;
/// Spans the writer applies at once.
const BATCH_SPANS: usize = 1024;
/// How often the writer evicts traces past `max_age` (also once at open).
const AGE_CHECK: Duration = Duration::from_secs(30);
/// sled's page cache: reads of recent traces hit it; the rest come from the OS page cache.
const CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// Where a span came from (defined beside the span, which carries it through the export).
pub use crate::trace::span::Origin;

impl Origin {
    pub fn of(telemetry: &Telemetry) -> Origin {
        Origin {
            resource: telemetry.resource.clone(),
            scope_name: telemetry.scope_name.clone(),
            scope_version: telemetry.scope_version.clone(),
        }
    }

    /// `service.name`, for display.
    pub fn service(&self) -> &str {
        self.resource
            .iter()
            .find(|(k, _)| k == "service.name")
            .map_or("", |(_, v)| v.as_str())
    }

    /// The key its resource is stored under: a hash of the attributes.
    fn key(&self) -> u64 {
        let mut text = String::new();
        for (k, v) in &self.resource {
            text.push_str(k);
            text.push('\u{1}');
            text.push_str(v);
            text.push('\u{2}');
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        let mut key = [0u8; 8];
        key.copy_from_slice(&digest.as_ref()[..8]);
        u64::from_be_bytes(key)
    }
}

/// A span as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSpan {
    pub span: SpanRecord,
    /// The key of its resource in the `resources` tree.
    pub resource: u64,
    pub scope_name: String,
    pub scope_version: String,
    /// The exact cost when the gateway priced it (the span's `cost.usd` is rounded).
    pub cost_pico_usd: Option<u128>,
}

impl StoredSpan {
    pub fn totals(&self) -> Totals {
        Totals::of_span(&self.span, self.cost_pico_usd)
    }
}

/// One span on its way to the writer.
pub struct Ingest {
    pub span: SpanRecord,
    pub origin: Arc<Origin>,
    pub cost_pico_usd: Option<u128>,
}

enum Message {
    Span(Box<Ingest>),
    /// Everything sent before is written and flushed: answer on the channel.
    Flush(std::sync::mpsc::Sender<()>),
}

/// The store's settings.
#[derive(Debug, Clone)]
pub struct StoreLimits {
    pub max_bytes: u64,
    pub max_age: Duration,
}

struct Trees {
    db: sled::Db,
    spans: sled::Tree,
    traces: sled::Tree,
    by_time: sled::Tree,
    by_feature: sled::Tree,
    by_user: sled::Tree,
    by_session: sled::Tree,
    sessions: sled::Tree,
    sessions_by_time: sled::Tree,
    resources: sled::Tree,
    segments: sled::Tree,
    meta: sled::Tree,
}

impl Trees {
    fn open(dir: &Path) -> Result<Trees, sled::Error> {
        let db = open_waiting_for_lock(
            &sled::Config::new()
                .path(dir)
                .cache_capacity(CACHE_BYTES)
                .flush_every_ms(Some(1000)),
        )?;
        let tree = |name: &str| db.open_tree(name);
        Ok(Trees {
            spans: tree("spans")?,
            traces: tree("traces")?,
            by_time: tree("by_time")?,
            by_feature: tree("by_feature")?,
            by_user: tree("by_user")?,
            by_session: tree("by_session")?,
            sessions: tree("sessions")?,
            sessions_by_time: tree("sessions_by_time")?,
            resources: tree("resources")?,
            segments: tree("segments")?,
            meta: tree("meta")?,
            db,
        })
    }
}

/// The trace store (cheap to share: the writer and the readers hold an `Arc`).
pub struct TraceStore {
    // Detached: sled's drop flushes and can block forever on a failed disk.
    trees: Detached<Trees>,
    limits: StoreLimits,
    metrics: Arc<Metrics>,
    /// A write failed: the store keeps no more spans this run.
    failed: AtomicBool,
    /// Stored bytes and traces, kept in memory and saved in `meta` with each batch.
    counts: Mutex<Counts>,
    /// The span bodies.
    log: SpanLog,
    /// Live spans per segment, as saved in `segments`.
    live: Mutex<BTreeMap<u32, u64>>,
    queue: Mutex<Option<SyncSender<Message>>>,
}

/// What opening the store found.
pub struct Opened {
    pub store: Option<Arc<TraceStore>>,
    /// Why there is no store (logged already).
    pub unavailable: Option<String>,
    pub damage: Option<Damage>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    bytes: u64,
    traces: u64,
}

impl Counts {
    /// As saved in `meta`; counted afresh when missing (a store from before the counts).
    fn load(trees: &Trees) -> Result<Counts, sled::Error> {
        let read = |key: &str| -> Result<Option<u64>, sled::Error> {
            Ok(trees
                .meta
                .get(key)?
                .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes)))
        };
        match (read("bytes")?, read("traces")?) {
            (Some(bytes), Some(traces)) => Ok(Counts { bytes, traces }),
            _ => {
                let mut counts = Counts::default();
                for row in trees.traces.iter().values() {
                    counts.traces += 1;
                    counts.bytes += decode::<TraceSummary>(&row?).map_or(0, |s| s.bytes);
                }
                Ok(counts)
            }
        }
    }

    fn save(&self, trees: &Trees) -> Result<(), sled::Error> {
        trees.meta.insert("bytes", &self.bytes.to_be_bytes())?;
        trees.meta.insert("traces", &self.traces.to_be_bytes())?;
        Ok(())
    }
}

impl Opened {
    /// No store, for `reason` (logged here): the API answers 503 with it, the proxy serves on.
    fn unavailable(reason: String, damage: Option<Damage>) -> Opened {
        tracing::error!(%reason, "traces are not kept: /api/traces and /ui answer 503; the proxy serves as usual");
        Opened {
            store: None,
            unavailable: Some(reason),
            damage,
        }
    }
}

fn time_key(start: u64, trace_id: &[u8; 16]) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&start.to_be_bytes());
    k[8..].copy_from_slice(trace_id);
    k
}

/// `value`'s prefix in a `by_feature`/`by_user`/`by_session` index.
fn value_prefix(value: &str) -> Vec<u8> {
    let bytes = value.as_bytes();
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    let mut k = Vec::with_capacity(2 + bytes.len() + 24);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(&bytes[..usize::from(len)]);
    k
}

fn value_key(value: &str, start: u64, trace_id: &[u8; 16]) -> Vec<u8> {
    let mut k = value_prefix(value);
    k.extend_from_slice(&time_key(start, trace_id));
    k
}

fn session_time_key(last: u64, session: &str) -> Vec<u8> {
    let mut k = last.to_be_bytes().to_vec();
    k.extend_from_slice(session.as_bytes());
    k
}

fn span_key(trace_id: &[u8; 16], span_id: &[u8; 8]) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(trace_id);
    k[16..].copy_from_slice(span_id);
    k
}

/// The last 16 bytes of an index key: the trace id.
fn trace_id_of(key: &[u8]) -> Option<[u8; 16]> {
    key.len()
        .checked_sub(16)
        .and_then(|at| key[at..].try_into().ok())
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<T> {
    serde_json::from_slice(bytes).ok()
}

fn io_error(e: sled::Error) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// The `segments` tree: live spans per segment.
fn load_live(trees: &Trees) -> Result<BTreeMap<u32, u64>, sled::Error> {
    let mut live = BTreeMap::new();
    for row in trees.segments.iter() {
        let (k, v) = row?;
        if let (Ok(k), Ok(v)) = (
            <[u8; 4]>::try_from(k.as_ref()),
            <[u8; 8]>::try_from(v.as_ref()),
        ) {
            live.insert(u32::from_be_bytes(k), u64::from_be_bytes(v));
        }
    }
    Ok(live)
}

/// Now, in unix nanoseconds.
pub fn now_unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl TraceStore {
    /// Opens the store in `dir` and starts its writer thread. Damaged files are moved aside and
    /// a fresh store used; any other failure leaves the gateway without a store (logged).
    pub fn open(dir: &Path, limits: StoreLimits, metrics: Arc<Metrics>) -> Opened {
        let (trees, damage) = match Trees::open(dir) {
            Ok(trees) => (Ok(trees), None),
            Err(e) if is_damage(&e) => match move_aside(dir) {
                Ok(moved_to) => {
                    tracing::error!(path = %dir.display(), moved_to = %moved_to.display(), error = %e,
                        "the trace store is damaged: its traces are kept aside and a fresh store is used");
                    let damage = Damage {
                        path: dir.to_path_buf(),
                        reason: e.to_string(),
                        lost: Default::default(),
                        moved_to: Some(moved_to),
                    };
                    (Trees::open(dir), Some(damage))
                }
                Err(io) => (Err(sled::Error::Io(io)), None),
            },
            Err(e) => (Err(e), None),
        };
        let trees = match trees {
            Ok(trees) => trees,
            Err(e) => {
                return Opened::unavailable(
                    format!("cannot open the trace store in {}: {e}", dir.display()),
                    damage,
                );
            }
        };
        let counts = match Counts::load(&trees) {
            Ok(counts) => counts,
            Err(e) => {
                return Opened::unavailable(
                    format!("cannot read the trace store in {}: {e}", dir.display()),
                    damage,
                );
            }
        };
        let opened_log = load_live(&trees).map_err(io_error).and_then(|live| {
            let segment_bytes = (limits.max_bytes / 16).clamp(64 << 10, 64 << 20);
            SpanLog::open(&dir.join("spans"), segment_bytes, &live).map(|log| (log, live))
        });
        let (log, live) = match opened_log {
            Ok(opened) => opened,
            Err(e) => {
                return Opened::unavailable(
                    format!("cannot open the span files in {}: {e}", dir.display()),
                    damage,
                );
            }
        };
        let (sender, receiver) = sync_channel(QUEUE_SPANS);
        let store = Arc::new(TraceStore {
            counts: Mutex::new(counts),
            log,
            live: Mutex::new(live),
            trees: Detached::new(trees),
            limits,
            metrics,
            failed: AtomicBool::new(false),
            queue: Mutex::new(Some(sender)),
        });
        store.refresh_gauges();
        let writer = store.clone();
        let spawned = std::thread::Builder::new()
            .name("sidetrace-trace-store".into())
            .spawn(move || writer.run(receiver));
        if let Err(e) = spawned {
            return Opened::unavailable(
                format!("cannot start the trace store's writer thread: {e}"),
                damage,
            );
        }
        store.metrics.store.up.set(1);
        Opened {
            store: Some(store),
            unavailable: None,
            damage,
        }
    }

    /// Queues a span for the store; never waits. A full queue or a failed store drops it from
    /// the store (counted).
    pub fn submit(&self, ingest: Ingest) {
        if self.failed.load(Ordering::Relaxed) {
            self.dropped("off", 1);
            return;
        }
        // The lock is released before counting: the counter is not the queue's.
        let reason = match self
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|sender| sender.try_send(Message::Span(Box::new(ingest))))
        {
            Some(Ok(())) => return,
            Some(Err(TrySendError::Full(_))) => "queue_full",
            Some(Err(TrySendError::Disconnected(_))) | None => "off",
        };
        self.dropped(reason, 1);
    }

    /// Waits (at most `timeout`) until every span queued before is written and flushed to disk.
    /// Returns false when that did not happen in time.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (done, wait) = std::sync::mpsc::channel();
        let sender = self.queue.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(sender) = sender else { return true };
        let deadline = Instant::now() + timeout;
        // The queue may be full: wait for room, but not past the deadline.
        let mut message = Message::Flush(done);
        loop {
            match sender.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    message = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        wait.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }

    /// Stops taking spans: what is queued is written, then the writer ends.
    pub fn close(&self) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn dropped(&self, reason: &'static str, n: u64) {
        self.metrics
            .store
            .spans_dropped
            .get_or_create(&ReasonLabels { reason })
            .inc_by(n);
    }

    fn run(self: Arc<Self>, receiver: Receiver<Message>) {
        let mut known_resources = HashSet::new();
        // Reused for every batch's encoded spans.
        let mut buf = Vec::with_capacity(1 << 20);
        let mut last_age_check = Instant::now();
        self.evict_expired();
        loop {
            let first = match receiver.recv_timeout(AGE_CHECK) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut spans = Vec::new();
            let mut flushes = Vec::new();
            let mut next = first;
            while let Some(message) = next {
                match message {
                    Message::Span(s) => spans.push(*s),
                    Message::Flush(done) => flushes.push(done),
                }
                next = if spans.len() < BATCH_SPANS {
                    receiver.try_recv().ok()
                } else {
                    None
                };
            }
            let spans_written = !spans.is_empty();
            if spans_written {
                self.write(spans, &mut known_resources, &mut buf);
            }
            // Cheap when nothing expired (one look at the oldest trace), so after every batch.
            if spans_written || last_age_check.elapsed() >= AGE_CHECK {
                last_age_check = Instant::now();
                self.evict_expired();
            }
            if !flushes.is_empty() {
                if let Err(e) = self.log.sync().map_err(sled::Error::Io) {
                    self.fail(&e);
                } else if let Err(e) = self.trees.db.flush() {
                    self.fail(&e);
                }
                for done in flushes {
                    let _ = done.send(());
                }
            }
        }
        if let Err(e) = self.log.sync() {
            tracing::warn!(error = %e, "the trace store's span files did not sync at shutdown");
        }
        if let Err(e) = self.trees.db.flush() {
            tracing::warn!(error = %e, "the trace store did not flush at shutdown");
        }
    }

    fn fail(&self, error: &sled::Error) {
        if !self.failed.swap(true, Ordering::AcqRel) {
            tracing::error!(%error, "the trace store cannot write: it keeps no more traces this run (the proxy and the export go on)");
            self.metrics.store.up.set(0);
        }
    }

    /// Applies a batch of spans; on a failed write the store turns off.
    fn write(&self, spans: Vec<Ingest>, known_resources: &mut HashSet<u64>, buf: &mut Vec<u8>) {
        let n = spans.len() as u64;
        if self.failed.load(Ordering::Relaxed) {
            self.dropped("off", n);
            return;
        }
        match self.try_write(spans, known_resources, buf) {
            Ok(()) => {
                self.metrics.store.spans_written.inc_by(n);
                if let Err(e) = self.enforce_size() {
                    self.fail(&e);
                }
            }
            Err(e) => {
                self.dropped("write_error", n);
                self.fail(&e);
            }
        }
        self.refresh_gauges();
    }

    fn try_write(
        &self,
        spans: Vec<Ingest>,
        known_resources: &mut HashSet<u64>,
        buf: &mut Vec<u8>,
    ) -> Result<(), sled::Error> {
        let t = &*self.trees;
        // Encode the batch into one buffer, grouped by trace; each span's place in it.
        buf.clear();
        let mut by_trace: BTreeMap<[u8; 16], Vec<(StoredSpan, u64, u32)>> = BTreeMap::new();
        for ingest in spans {
            let resource = ingest.origin.key();
            if known_resources.insert(resource)
                && !t.resources.contains_key(resource.to_be_bytes())?
            {
                let value = serde_json::to_vec(&ingest.origin.resource).unwrap_or_default();
                t.resources.insert(resource.to_be_bytes(), value)?;
            }
            let stored = StoredSpan {
                resource,
                scope_name: ingest.origin.scope_name.clone(),
                scope_version: ingest.origin.scope_version.clone(),
                cost_pico_usd: ingest.cost_pico_usd,
                span: ingest.span,
            };
            let at = buf.len();
            if let Err(e) = serde_json::to_writer(&mut *buf, &stored) {
                tracing::warn!(error = %e, "a span could not be encoded for the trace store");
                self.dropped("write_error", 1);
                buf.truncate(at);
                continue;
            }
            let len = u32::try_from(buf.len() - at).unwrap_or(u32::MAX);
            by_trace
                .entry(stored.span.trace_id)
                .or_default()
                .push((stored, at as u64, len));
        }
        if buf.is_empty() {
            return Ok(());
        }
        let (segment, base) = self.log.append(buf).map_err(sled::Error::Io)?;
        // Counted before any pointer names the segment (and taken back for duplicates after),
        // so a crash between the two never leaves a pointer into a segment counted empty.
        let batch_spans: usize = by_trace.values().map(Vec::len).sum();
        self.change_live(&[(segment, batch_spans as i64)])?;
        let mut added_bytes = 0u64;
        let mut added_spans = 0u64;
        for (trace_id, spans) in by_trace {
            let before: Option<TraceSummary> = t.traces.get(trace_id)?.and_then(|v| decode(&v));
            let mut after = before
                .clone()
                .unwrap_or_else(|| TraceSummary::new(trace_id));
            for (stored, at, len) in spans {
                let key = span_key(&trace_id, &stored.span.span_id);
                let pointer = Pointer {
                    segment,
                    offset: base + at,
                    len,
                };
                // A span sent twice (a client retrying an export) is kept once, as it came first.
                if t.spans
                    .compare_and_swap(key, None as Option<&[u8]>, Some(&pointer.encode()[..]))?
                    .is_err()
                {
                    continue;
                }
                let bytes = key.len() as u64 + u64::from(len);
                after.add(&stored.span, &stored.totals(), bytes);
                added_bytes += bytes;
                added_spans += 1;
            }
            self.reindex(before.as_ref(), &after)?;
            t.traces
                .insert(trace_id, serde_json::to_vec(&after).unwrap_or_default())?;
            if before.is_none() {
                self.counts().traces += 1;
            }
        }
        let duplicates = batch_spans as u64 - added_spans;
        if duplicates > 0 {
            self.change_live(&[(segment, -(duplicates as i64))])?;
        }
        let mut counts = self.counts();
        counts.bytes += added_bytes;
        counts.save(t)
    }

    /// Adds to (or takes from) segments' live span counts; a segment left with none is deleted
    /// once it is no longer the one being appended to.
    fn change_live(&self, changes: &[(u32, i64)]) -> Result<(), sled::Error> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        for &(segment, change) in changes {
            let count = live.entry(segment).or_default();
            *count = count.saturating_add_signed(change);
            self.trees
                .segments
                .insert(segment.to_be_bytes(), &count.to_be_bytes())?;
        }
        let current = self.log.current_segment();
        let empty: Vec<u32> = live
            .iter()
            .filter(|&(&segment, &count)| count == 0 && segment != current)
            .map(|(&segment, _)| segment)
            .collect();
        for segment in empty {
            live.remove(&segment);
            self.trees.segments.remove(segment.to_be_bytes())?;
            self.log.remove(segment).map_err(sled::Error::Io)?;
        }
        Ok(())
    }

    /// One stored span from its `spans` row: read from its segment (or, from a store written
    /// by an earlier version, the row itself). `None` when it cannot be read or decoded.
    fn load_span(&self, row: &[u8]) -> Option<StoredSpan> {
        match Pointer::decode(row) {
            Some(p) => self.log.read(p).ok().and_then(|bytes| decode(&bytes)),
            None => decode(row),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves a trace's index entries from its old row to its new one (`None`: removed).
    fn reindex(
        &self,
        before: Option<&TraceSummary>,
        after: &TraceSummary,
    ) -> Result<(), sled::Error> {
        let t = &*self.trees;
        let id = &after.trace_id;
        let start_moved = before.is_none_or(|b| b.start_unix_nanos != after.start_unix_nanos);
        if start_moved {
            if let Some(b) = before {
                t.by_time.remove(time_key(b.start_unix_nanos, id))?;
            }
            t.by_time
                .insert(time_key(after.start_unix_nanos, id), &[])?;
        }
        for (tree, old, new) in [
            (
                &t.by_feature,
                before.and_then(|b| b.feature.as_deref()),
                after.feature.as_deref(),
            ),
            (
                &t.by_user,
                before.and_then(|b| b.user.as_deref()),
                after.user.as_deref(),
            ),
            (
                &t.by_session,
                before.and_then(|b| b.session.as_deref()),
                after.session.as_deref(),
            ),
        ] {
            if old == new && !start_moved {
                continue;
            }
            if let (Some(old), Some(b)) = (old, before) {
                tree.remove(value_key(old, b.start_unix_nanos, id))?;
            }
            if let Some(new) = new {
                tree.insert(value_key(new, after.start_unix_nanos, id), &[])?;
            }
        }
        if let Some(session) = after.session.as_deref() {
            let counted = before.filter(|b| b.session.as_deref() == Some(session));
            self.update_session(session, |s| s.update(counted, after))?;
        }
        Ok(())
    }

    /// Changes a session's row (and its place in `sessions_by_time`); a session left with no
    /// trace is removed.
    fn update_session(
        &self,
        session: &str,
        change: impl FnOnce(&mut SessionSummary),
    ) -> Result<(), sled::Error> {
        let t = &*self.trees;
        let before: Option<SessionSummary> = t.sessions.get(session)?.and_then(|v| decode(&v));
        let mut after = before
            .clone()
            .unwrap_or_else(|| SessionSummary::new(session));
        change(&mut after);
        if let Some(b) = &before
            && (b.last_unix_nanos != after.last_unix_nanos || after.traces == 0)
        {
            t.sessions_by_time
                .remove(session_time_key(b.last_unix_nanos, session))?;
        }
        if after.traces == 0 {
            t.sessions.remove(session)?;
            return Ok(());
        }
        if before
            .as_ref()
            .is_none_or(|b| b.last_unix_nanos != after.last_unix_nanos)
        {
            t.sessions_by_time
                .insert(session_time_key(after.last_unix_nanos, session), &[])?;
        }
        t.sessions
            .insert(session, serde_json::to_vec(&after).unwrap_or_default())?;
        Ok(())
    }

    fn stored_bytes(&self) -> u64 {
        self.counts().bytes
    }

    fn refresh_gauges(&self) {
        let counts = *self.counts();
        let m = &self.metrics.store;
        m.bytes.set(counts.bytes as i64);
        m.traces.set(counts.traces as i64);
    }

    /// Evicts whole traces, oldest first, until the stored bytes fit `max_bytes`.
    fn enforce_size(&self) -> Result<(), sled::Error> {
        while self.stored_bytes() > self.limits.max_bytes {
            let Some((key, _)) = self.trees.by_time.first()? else {
                break;
            };
            let Some(id) = trace_id_of(&key) else { break };
            if !self.evict(&id, "size")? {
                // An index entry without its row: drop it so the loop ends.
                self.trees.by_time.remove(key)?;
            }
        }
        Ok(())
    }

    /// Evicts the traces that started before `max_age` ago.
    fn evict_expired(&self) {
        let cutoff = now_unix_nanos().saturating_sub(self.limits.max_age.as_nanos() as u64);
        let result = (|| -> Result<(), sled::Error> {
            while let Some((key, _)) = self.trees.by_time.first()? {
                let start = u64::from_be_bytes(key[..8].try_into().unwrap_or_default());
                if start >= cutoff {
                    break;
                }
                let Some(id) = trace_id_of(&key) else { break };
                if !self.evict(&id, "age")? {
                    self.trees.by_time.remove(key)?;
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            self.fail(&e);
        }
        self.refresh_gauges();
    }

    /// Removes one trace whole: its spans, row and index entries. False when it had no row.
    fn evict(&self, trace_id: &[u8; 16], reason: &'static str) -> Result<bool, sled::Error> {
        let t = &*self.trees;
        let Some(summary) = t
            .traces
            .get(trace_id)?
            .and_then(|v| decode::<TraceSummary>(&v))
        else {
            return Ok(false);
        };
        let mut freed: BTreeMap<u32, i64> = BTreeMap::new();
        for row in t.spans.scan_prefix(trace_id) {
            let (key, value) = row?;
            if let Some(p) = Pointer::decode(&value) {
                *freed.entry(p.segment).or_default() -= 1;
            }
            t.spans.remove(key)?;
        }
        t.traces.remove(trace_id)?;
        self.change_live(&freed.into_iter().collect::<Vec<_>>())?;
        t.by_time
            .remove(time_key(summary.start_unix_nanos, trace_id))?;
        for (tree, value) in [
            (&t.by_feature, &summary.feature),
            (&t.by_user, &summary.user),
            (&t.by_session, &summary.session),
        ] {
            if let Some(v) = value {
                tree.remove(value_key(v, summary.start_unix_nanos, trace_id))?;
            }
        }
        if let Some(session) = &summary.session {
            self.update_session(session, |s| s.remove(&summary))?;
        }
        let mut counts = self.counts();
        counts.bytes = counts.bytes.saturating_sub(summary.bytes);
        counts.traces = counts.traces.saturating_sub(1);
        counts.save(t)?;
        drop(counts);
        self.metrics
            .store
            .traces_evicted
            .get_or_create(&ReasonLabels { reason })
            .inc();
        Ok(true)
    }
}

/// The store as a recorder sink: each call's span goes to the store with the content at the
/// store's own capture level (`[store] capture`), which may keep more than the export.
pub struct StoreSink {
    store: Arc<TraceStore>,
    origin: Arc<Origin>,
}

impl StoreSink {
    pub fn new(store: Arc<TraceStore>, telemetry: &Telemetry) -> StoreSink {
        StoreSink {
            store,
            origin: Arc::new(Origin::of(telemetry)),
        }
    }
}

impl StoreSink {
    /// Queues one span; `origin` is this gateway's when not given.
    pub fn span(&self, span: SpanRecord, origin: Option<Arc<Origin>>, cost_pico_usd: Option<u128>) {
        self.store.submit(Ingest {
            span,
            origin: origin.unwrap_or_else(|| self.origin.clone()),
            cost_pico_usd,
        });
    }
}

impl Sink for StoreSink {
    fn record(&self, call: &CallRecord, span: &SpanRecord) {
        let span = with_content(
            span.clone(),
            call.kept_content
                .as_ref()
                .unwrap_or(&CapturedContent::default()),
        );
        self.span(span, None, call.cost_pico_usd);
    }
}
