//! The local trace store: every finished span, with a summary row per trace and per session and
//! indexes by time, feature, user and session, so that the JSON API and the web UI list, filter
//! and open traces by index scans.
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
//! - span bodies: [`StoredSpan`]s in a binary encoding (`codec.rs`; JSON before it, still read)
//!   appended to the segment files under `spans/` (`log.rs`)
//! - rows: start nanos (8) + trace id -> the trace's [`TraceSummary`] and where each of its
//!   spans is ([`TraceRow`]), appended to the segment files under `rows/` (`rows.rs`), whose
//!   index is the time index (its newest entries in memory, the rest in files under
//!   `rows/index`); written once the trace has been quiet for a while (until then it is
//!   open, in memory, and the readers see it there)
//! - the time index's entries also hold each trace's feature, user and session as 32-bit
//!   hashes (`tags.rs`): the lists filter by them before reading a row
//! - session rows ([`SessionSummary`]): in memory (`sessions.rs`), summed from the trace rows
//!   at open
//! - sled trees: `resources`: resource key (8) -> resource attributes; `meta`: the replay
//!   marks
//! - stored bytes and traces: in memory, counted from the rows at open
//! - live spans per span segment: in memory, counted from the rows at open
//!
//! Stores of earlier layouts (a sled `traces` row per id and a `spans` row per span; or a sled
//! `rows` tree) are moved into the row files at open.

mod codec;
mod id_filter;
mod id_hash;
mod log;
mod open;
mod query;
mod rows;
mod sessions;
mod summary;
mod tags;
mod time_index;

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap, HashSet},
    io,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, sync_channel},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

pub use query::{Page, SessionQuery, TraceQuery, TraceTree, TreeNode};
pub use summary::{SessionSummary, SpanFacts, Totals, TraceSummary};

use log::{Pointer, SpanLog};
use open::{OPEN_MAX, OpenTrace, OpenTraces, TraceRow};
use rows::{Change, Rows};
use sessions::Sessions;
use tags::Tags;

use super::sled_db::{Damage, Detached, is_damage, move_aside, open_waiting_for_lock};
use crate::{
    metrics::{Metrics, ReasonLabels},
    trace::{
        capture::CapturedContent,
        span::{AttrValue, SpanRecord, Telemetry, content_attributes, is_content},
    },
};

/// Spans waiting for the writer at most; past it they are dropped from the store (counted).
/// An OTLP export request of the most spans it may hold fits (the receiver refuses one that
/// would not, to be retried: `StoreSink::crowded`).
const QUEUE_SPANS: usize = crate::config::MAX_SPANS_PER_REQUEST;
/// Spans the writer applies at once.
const BATCH_SPANS: usize = 1024;
/// How many of the oldest traces the writer evicts at a time past `max_bytes` (at most: it
/// stops once the stored bytes are within it).
const EVICT_BATCH: usize = 256;
/// How often the writer evicts traces past `max_age` (also once at open), at most: a tenth of
/// `max_age` when that is shorter, so a trace outlives it by a tenth at most.
const AGE_CHECK: Duration = Duration::from_secs(30);
/// While spans keep coming, the writer takes them this often.
const GATHER: Duration = Duration::from_millis(10);
/// How often the writer looks for open traces to write.
const SEAL_CHECK: Duration = Duration::from_secs(1);
/// What a span adds to the stored bytes besides its JSON: its entry in its trace's row.
const TRACE_ROW_SPAN_BYTES: u32 = 24;
/// sled's page cache (sled holds only the resources and the replay marks now).
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

/// The writer's memo of resource keys: by origin (the gateway's own spans share one, a batch
/// received over OTLP shares one), so a key is hashed once per origin, not once per span; and
/// the keys known to be in the `resources` tree.
#[derive(Default)]
struct ResourceKeys {
    /// By the origin's address; the `Arc` is held, so the address is not reused meanwhile.
    by_origin: HashMap<usize, (Arc<Origin>, u64)>,
    stored: HashSet<u64>,
    /// The last one stored: nearly every span has the one before's (the gateway's own).
    last: Option<u64>,
}

impl ResourceKeys {
    /// Origins remembered at most (then forgotten all at once).
    const MAX: usize = 1024;

    fn key(&mut self, origin: &Arc<Origin>) -> u64 {
        let at = Arc::as_ptr(origin) as usize;
        if let Some((_, key)) = self.by_origin.get(&at) {
            return *key;
        }
        if self.by_origin.len() >= Self::MAX {
            self.by_origin.clear();
        }
        let key = origin.key();
        self.by_origin.insert(at, (origin.clone(), key));
        key
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

/// A call's span, encoded on the request's worker ([`StoreSink::call`]): the writer appends its
/// bytes and adds its facts to its trace's row.
struct Encoded {
    bytes: Vec<u8>,
    facts: SpanFacts<'static>,
    origin: Arc<Origin>,
    /// The key of `origin`'s resource.
    resource: u64,
}

/// What a span may change in which calls of its trace are reported twice
/// (`query::counted_twice`).
#[derive(Clone, Copy, PartialEq)]
enum Twice {
    /// A gateway span without a parent.
    No,
    /// A span not the gateway's, with usage: the app's own span of an LLM call.
    AppUsage,
    /// A span not the gateway's, without usage: it may be the link (an HTTP client's span)
    /// between the app's span of a call and the gateway's.
    AppOther,
    /// The gateway's span, with a parent.
    GatewayUnder,
}

impl Twice {
    fn of(facts: &SpanFacts<'_>, gateway: bool) -> Twice {
        match (gateway, facts.has_usage(), facts.has_parent()) {
            (false, true, _) => Twice::AppUsage,
            (false, false, _) => Twice::AppOther,
            (true, _, true) => Twice::GatewayUnder,
            (true, _, false) => Twice::No,
        }
    }

    /// The flag of `TraceSummary::same_call` it sets.
    fn flag(self) -> u8 {
        match self {
            Twice::AppUsage => summary::SAME_CALL_APP,
            Twice::GatewayUnder => summary::SAME_CALL_GATEWAY,
            Twice::AppOther | Twice::No => 0,
        }
    }
}

/// Both kinds of span that may report one call twice.
const SAME_CALL_BOTH: u8 = summary::SAME_CALL_APP | summary::SAME_CALL_GATEWAY;

/// A span as the writer takes it.
enum Incoming {
    Span(Box<Ingest>),
    Encoded(Box<Encoded>),
}

impl Incoming {
    fn trace_id(&self) -> [u8; 16] {
        match self {
            Incoming::Span(i) => i.span.trace_id,
            Incoming::Encoded(e) => e.facts.trace_id,
        }
    }

    fn start_unix_nanos(&self) -> u64 {
        match self {
            Incoming::Span(i) => i.span.start_unix_nanos,
            Incoming::Encoded(e) => e.facts.start_unix_nanos,
        }
    }
}

enum Message {
    Span(Incoming),
    /// Everything sent before is written and flushed: answer on the channel.
    Flush(std::sync::mpsc::Sender<()>),
    /// Everything sent before is applied (readers see it): answer on the channel.
    CaughtUp(std::sync::mpsc::Sender<()>),
}

/// The store's settings.
#[derive(Debug, Clone)]
pub struct StoreLimits {
    pub max_bytes: u64,
    pub max_age: Duration,
    /// Traces one page of a text search reads at most (`[store] search_scan_traces`).
    pub search_scan_traces: usize,
}

struct Trees {
    db: sled::Db,
    resources: sled::Tree,
    meta: sled::Tree,
}

impl Trees {
    fn open(dir: &Path) -> Result<Trees, sled::Error> {
        let db = open_waiting_for_lock(
            &sled::Config::new()
                .path(dir)
                .cache_capacity(CACHE_BYTES)
                // The writer flushes, once a second while spans come (see `run`).
                .flush_every_ms(None),
        )?;
        let tree = |name: &str| db.open_tree(name);
        Ok(Trees {
            resources: tree("resources")?,
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
    /// Stopped as a killed process stops (for tests): the open traces are not written.
    killed: AtomicBool,
    /// Stored bytes and traces, counted from the rows at open and kept current in memory.
    counts: Mutex<Counts>,
    /// The span bodies.
    log: SpanLog,
    /// The written traces' rows, and the time index.
    rows: Rows,
    /// Session rows, rebuilt from the trace rows at open.
    sessions: Mutex<Sessions>,
    /// Live spans per segment, counted from the rows at open.
    live: Mutex<BTreeMap<u32, u64>>,
    /// Traces still taking spans (readers look here first). Only the writer changes it; a
    /// trace leaves it only once its row is written.
    open: Mutex<OpenTraces>,
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

/// The span segments to keep at open: every one a row points into, every one a replay after a
/// crash reads (from the replay's first mark on), and, for stores of earlier layouts, every one
/// the old `segments` tree counted. The rest are left over (their traces were evicted, or a
/// crash came between an append and the rows) and deleted.
fn span_segments_to_keep(
    trees: &Trees,
    scanned: &Scanned,
    spans_dir: &Path,
) -> io::Result<BTreeMap<u32, u64>> {
    let mut keep: BTreeMap<u32, u64> = scanned.live.keys().map(|&s| (s, 0)).collect();
    let replay_from = trees.meta.get("replay").map_err(io_error)?.and_then(|m| {
        m.get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
    });
    if let Some(from) = replay_from
        && spans_dir.is_dir()
    {
        keep.extend(
            log::segment_ids(spans_dir)?
                .into_iter()
                .filter(|&s| s >= from)
                .map(|s| (s, 0)),
        );
    }
    if trees.db.tree_names().iter().any(|n| n == b"segments") {
        for entry in trees
            .db
            .open_tree("segments")
            .map_err(io_error)?
            .iter()
            .keys()
        {
            if let Ok(k) = <[u8; 4]>::try_from(entry.map_err(io_error)?.as_ref()) {
                keep.insert(u32::from_be_bytes(k), 0);
            }
        }
    }
    Ok(keep)
}

/// What the rows say, read once at open: the live spans per span segment, the stored bytes
/// and traces, and the session rows (summed from the traces; a replay adds the open traces'
/// spans to all of them).
struct Scanned {
    live: BTreeMap<u32, u64>,
    counts: Counts,
    sessions: Sessions,
}

fn scan_rows(rows: &Rows) -> io::Result<Scanned> {
    let mut live = BTreeMap::new();
    let mut counts = Counts::default();
    let mut sessions = Sessions::default();
    rows.for_each(|_, entry| {
        let Some(row) = rows.read(entry.pointer())? else {
            return Ok(());
        };
        counts.traces += 1;
        for p in TraceRow::span_pointers(&row) {
            *live.entry(p.segment).or_default() += 1;
            counts.bytes += u64::from(TRACE_ROW_SPAN_BYTES + p.len);
        }
        if entry.tags.session != 0
            && let Some(trace) = TraceRow::decode_summary(&row)
            && let Some(session) = trace.session.as_deref()
        {
            sessions.update(session, |s| s.update(None, &trace));
        }
        Ok(())
    })?;
    Ok(Scanned {
        live,
        counts,
        sessions,
    })
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
        #[allow(clippy::type_complexity)]
        let opened_log = (|| -> io::Result<(SpanLog, Rows, Scanned, BTreeMap<u32, u64>)> {
            let row_bytes = (limits.max_bytes / 64).clamp(64 << 10, 16 << 20);
            let rows = Rows::open(&dir.join("rows"), row_bytes, TraceRow::decode_tags)?;
            let scanned = scan_rows(&rows)?;
            let keep = span_segments_to_keep(&trees, &scanned, &dir.join("spans"))?;
            let segment_bytes = (limits.max_bytes / 16).clamp(64 << 10, 64 << 20);
            let log = SpanLog::open(&dir.join("spans"), segment_bytes, &keep)?;
            Ok((log, rows, scanned, keep))
        })();
        let (log, rows, scanned, keep) = match opened_log {
            Ok(opened) => opened,
            Err(e) => {
                return Opened::unavailable(
                    format!(
                        "cannot open the trace store's row and span files in {} (rows/, spans/): {e}",
                        dir.display()
                    ),
                    damage,
                );
            }
        };
        let read = migrate_legacy(&trees, &log, &rows).and_then(|migrated| {
            // Rows moved in from an earlier layout are read again.
            let scanned = if migrated {
                scan_rows(&rows).map_err(sled::Error::Io)?
            } else {
                scanned
            };
            Ok(scanned)
        });
        let Scanned {
            live,
            counts,
            sessions,
        } = match read {
            Ok(read) => read,
            Err(e) => {
                return Opened::unavailable(
                    format!("cannot read the trace store in {}: {e}", dir.display()),
                    damage,
                );
            }
        };
        let (sender, receiver) = sync_channel(QUEUE_SPANS);
        let store = Arc::new(TraceStore {
            counts: Mutex::new(counts),
            log,
            rows,
            sessions: Mutex::new(sessions),
            live: Mutex::new(live),
            open: Mutex::new(OpenTraces::default()),
            trees: Detached::new(trees),
            limits,
            metrics,
            failed: AtomicBool::new(false),
            killed: AtomicBool::new(false),
            queue: Mutex::new(Some(sender)),
        });
        match store.replay() {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                spans = n,
                "the gateway stopped without writing its open traces: their spans are back from the span files"
            ),
            Err(e) => {
                return Opened::unavailable(
                    format!("cannot read the trace store in {}: {e}", dir.display()),
                    damage,
                );
            }
        }
        // Span files kept for the replay that it found nothing live in go now (and the ones
        // that empty later go as their traces are evicted).
        let kept: Vec<(u32, i64)> = keep.keys().map(|&s| (s, 0)).collect();
        if let Err(e) = store.change_live(&kept) {
            return Opened::unavailable(
                format!("cannot read the trace store in {}: {e}", dir.display()),
                damage,
            );
        }
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
        self.send(Incoming::Span(Box::new(ingest)));
    }

    fn send(&self, span: Incoming) {
        if self.failed.load(Ordering::Relaxed) {
            self.dropped("off", 1);
            return;
        }
        // Counted as queued before it is sent: the writer may take it (and count it out)
        // before `try_send` returns. The lock is released before counting a drop.
        let queued = &self.metrics.store.queued_spans;
        queued.inc();
        let reason = match self
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|sender| sender.try_send(Message::Span(span)))
        {
            Some(Ok(())) => return,
            Some(Err(TrySendError::Full(_))) => "queue_full",
            Some(Err(TrySendError::Disconnected(_))) | None => "off",
        };
        queued.dec();
        self.dropped(reason, 1);
    }

    /// Waits (at most `timeout`) until every span queued before is written and flushed to disk
    /// (open traces included). Returns false when that did not happen in time.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.wait_for_writer(timeout, Message::Flush)
    }

    /// Waits (at most `timeout`) until every span queued before is applied: the readers see
    /// it, though its trace may still be open (in memory). Returns false when not in time.
    pub fn caught_up(&self, timeout: Duration) -> bool {
        self.wait_for_writer(timeout, Message::CaughtUp)
    }

    fn wait_for_writer(
        &self,
        timeout: Duration,
        message: fn(std::sync::mpsc::Sender<()>) -> Message,
    ) -> bool {
        let (done, wait) = std::sync::mpsc::channel();
        let sender = self.queue.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(sender) = sender else { return true };
        let deadline = Instant::now() + timeout;
        // The queue may be full: wait for room, but not past the deadline.
        let mut message = message(done);
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

    /// For tests: stops as the gateway killed right after a flush leaves the store. What is
    /// queued is applied and flushed, but the open traces are not written: the next open puts
    /// them back from the span files.
    #[doc(hidden)]
    pub fn stop_as_if_killed(&self) {
        self.killed.store(true, Ordering::Relaxed);
        self.close();
    }

    fn dropped(&self, reason: &'static str, n: u64) {
        self.metrics
            .store
            .spans_dropped
            .get_or_create(&ReasonLabels { reason })
            .inc_by(n);
    }

    fn run(self: Arc<Self>, receiver: Receiver<Message>) {
        crate::background::yield_to_calls("trace store's writer");
        let mut known_resources = ResourceKeys::default();
        // Reused for every batch's encoded spans.
        let mut buf = Vec::with_capacity(1 << 20);
        let mut last_age_check = Instant::now();
        let mut last_seal_check = Instant::now();
        let mut busy = false;
        let mut full = false;
        let mut last_flush = Instant::now();
        // Spans written since the last flush of sled.
        let mut unflushed = 0u64;
        // Rows written or traces evicted since the last flush.
        let mut sealed = false;
        self.evict_expired(0);
        loop {
            // While spans keep coming, let them gather for a moment instead of being woken by
            // each one (a wake-up is a system call on the request path); when they stop,
            // sleep until the next.
            let first = if busy {
                if !full {
                    std::thread::sleep(GATHER);
                }
                match receiver.try_recv() {
                    Ok(m) => Some(m),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => break,
                }
            } else {
                match receiver.recv_timeout(SEAL_CHECK) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            };
            busy = first.is_some();
            let mut spans = Vec::new();
            let mut flushes = Vec::new();
            let mut caught_up = Vec::new();
            let mut next = first;
            while let Some(message) = next {
                match message {
                    Message::Span(s) => spans.push(s),
                    Message::Flush(done) => flushes.push(done),
                    Message::CaughtUp(done) => caught_up.push(done),
                }
                next = if spans.len() < BATCH_SPANS {
                    receiver.try_recv().ok()
                } else {
                    None
                };
            }
            full = spans.len() >= BATCH_SPANS;
            self.metrics.store.queued_spans.dec_by(spans.len() as i64);
            let spans_written = !spans.is_empty();
            let earliest = spans.iter().map(Incoming::start_unix_nanos).min();
            if spans_written {
                unflushed += spans.len() as u64;
                self.write(spans, &mut known_resources, &mut buf);
            }
            for done in caught_up {
                let _ = done.send(());
            }
            let crowded = self.open_traces().len() > OPEN_MAX;
            if !flushes.is_empty() || crowded || last_seal_check.elapsed() >= SEAL_CHECK {
                last_seal_check = Instant::now();
                if self.seal(!flushes.is_empty()) {
                    sealed = true;
                    // The open traces just written are open no more.
                    self.refresh_gauges();
                }
            }
            // Cheap when nothing expired (one look at the oldest row; the open traces only for
            // a batch with an old span), so after every batch.
            let periodic = last_age_check.elapsed() >= AGE_CHECK.min(self.limits.max_age / 10);
            if spans_written || periodic {
                let open_from = if periodic {
                    last_age_check = Instant::now();
                    0
                } else {
                    earliest.unwrap_or(u64::MAX)
                };
                let traces = self.counts().traces;
                self.evict_expired(open_from);
                sealed |= self.counts().traces != traces;
            }
            if !flushes.is_empty() {
                if let Err(e) = self.log.sync().map_err(sled::Error::Io) {
                    self.fail(&e);
                } else {
                    self.flush_sled(&mut unflushed);
                }
                last_flush = Instant::now();
                sealed = false;
                for done in flushes {
                    let _ = done.send(());
                }
            } else if (unflushed > 0 || sealed) && last_flush.elapsed() >= SEAL_CHECK {
                // What a crash may lose from the store: at most about a second.
                self.flush_sled(&mut unflushed);
                last_flush = Instant::now();
                sealed = false;
            }
        }
        if !self.killed.load(Ordering::Relaxed) {
            self.seal(true);
        }
        if let Err(e) = self.log.sync() {
            tracing::warn!(error = %e, "the trace store's span files did not sync at shutdown");
        }
        self.flush_sled(&mut unflushed);
    }

    /// Syncs the row files, saves the replay marks, then flushes sled: the
    /// marks sled keeps never get ahead of the rows they count on. About once a second: what
    /// a crash may lose from the store.
    fn flush_sled(&self, unflushed: &mut u64) {
        let saved = self
            .rows
            .sync()
            .map_err(sled::Error::Io)
            .and_then(|()| self.save_replay_marks());
        if let Err(e) = saved {
            self.fail(&e);
            return;
        }
        match self.trees.db.flush() {
            Ok(_) => {
                self.metrics
                    .store
                    .spans_durable
                    .inc_by(std::mem::take(unflushed));
            }
            Err(e) => self.fail(&e),
        }
    }

    fn fail(&self, error: &sled::Error) {
        if !self.failed.swap(true, Ordering::AcqRel) {
            tracing::error!(%error, "the trace store cannot write: it keeps no more traces this run (the proxy and the export go on)");
            self.metrics.store.up.set(0);
        }
    }

    fn open_traces(&self) -> std::sync::MutexGuard<'_, OpenTraces> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a batch of spans; on a failed write the store turns off.
    fn write(&self, spans: Vec<Incoming>, known_resources: &mut ResourceKeys, buf: &mut Vec<u8>) {
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

    /// Appends the batch's spans to the span files and adds them to their open traces (a
    /// trace written already is opened again from its row).
    fn try_write(
        &self,
        mut spans: Vec<Incoming>,
        known_resources: &mut ResourceKeys,
        buf: &mut Vec<u8>,
    ) -> Result<(), sled::Error> {
        // Grouped by trace, each trace's spans in arrival order (the sort is stable), then
        // encoded into one buffer (a call's span came encoded); each span's place in it.
        spans.sort_by_key(Incoming::trace_id);
        buf.clear();
        let mut placed = Vec::with_capacity(spans.len());
        for incoming in &mut spans {
            let at = buf.len();
            // May this span report a call another span of its trace reports too
            // (`query::counted_twice`): an app's span with usage, or a gateway call under some
            // other span.
            let gateway = match incoming {
                Incoming::Span(ingest) => ingest.origin.scope_name == query::GATEWAY_SCOPE,
                Incoming::Encoded(_) => true,
            };
            let facts = match incoming {
                Incoming::Span(ingest) => {
                    let resource = known_resources.key(&ingest.origin);
                    self.store_resource(known_resources, resource, &ingest.origin)?;
                    codec::encode_span_parts(
                        &ingest.span,
                        ingest.span.attributes.iter(),
                        resource,
                        &ingest.origin.scope_name,
                        &ingest.origin.scope_version,
                        ingest.cost_pico_usd,
                        buf,
                    );
                    Cow::Owned(SpanFacts::of(&ingest.span, ingest.cost_pico_usd))
                }
                Incoming::Encoded(e) => {
                    self.store_resource(known_resources, e.resource, &e.origin)?;
                    buf.extend_from_slice(&e.bytes);
                    // Taken, so that the summary takes its text rather than a copy.
                    Cow::Owned(std::mem::take(&mut e.facts))
                }
            };
            let twice = Twice::of(&facts, gateway);
            let len = u32::try_from(buf.len() - at).unwrap_or(u32::MAX);
            placed.push((facts, at as u64, len, twice));
        }
        if buf.is_empty() {
            return Ok(());
        }
        let (segment, base) = self.log.append(buf).map_err(sled::Error::Io)?;
        // Counted before the spans join their traces, and taken back for duplicates after.
        let batch_spans = placed.len();
        self.change_live(&[(segment, batch_spans as i64)])?;
        let mut added_bytes = 0u64;
        let mut added_spans = 0u64;
        let now = Instant::now();
        for spans in placed.chunk_by_mut(|a, b| a.0.trace_id == b.0.trace_id) {
            let trace_id = spans[0].0.trace_id;
            let row = self.row_to_reopen(&trace_id)?;
            let mut open = self.open_traces();
            let trace = self.touch(&mut open, trace_id, row, now);
            // The trace as its session counted it so far (sessions are kept current per batch).
            let before = trace
                .summary
                .session
                .is_some()
                .then_some(trace.summary.totals);
            let mut recount = false;
            for &mut (ref mut facts, at, len, twice) in spans {
                // A span sent twice (a client retrying an export) is kept once, as it came first.
                let pointer = Pointer {
                    segment,
                    offset: base + at,
                    len,
                };
                if !trace.add_span(facts.span_id, pointer) {
                    continue;
                }
                // Counted again from its spans once it holds both an app span with usage and a
                // gateway call under some span, when a span that may change which call is
                // reported twice joins it. Most traces never hold both.
                trace.summary.same_call |= twice.flag();
                recount |= twice != Twice::No;
                let bytes = (TRACE_ROW_SPAN_BYTES + len) as u64;
                trace.summary.add_facts(facts.to_mut(), bytes);
                added_bytes += bytes;
                added_spans += 1;
            }
            if recount && trace.summary.same_call == SAME_CALL_BOTH {
                self.recount(trace);
            }
            if let Some(session) = trace.summary.session.as_deref() {
                self.session_rows()
                    .update(session, |s| s.update(before.as_ref(), &trace.summary));
            }
            drop(open);
        }
        let duplicates = batch_spans as u64 - added_spans;
        if duplicates > 0 {
            self.change_live(&[(segment, -(duplicates as i64))])?;
        }
        self.counts().bytes += added_bytes;
        Ok(())
    }

    /// Puts a resource in the `resources` tree the first time the writer meets its key.
    fn store_resource(
        &self,
        known: &mut ResourceKeys,
        resource: u64,
        origin: &Origin,
    ) -> Result<(), sled::Error> {
        if known.last == Some(resource) {
            return Ok(());
        }
        let t = &*self.trees;
        if known.stored.insert(resource) && !t.resources.contains_key(resource.to_be_bytes())? {
            let value = serde_json::to_vec(&origin.resource).unwrap_or_default();
            t.resources.insert(resource.to_be_bytes(), value)?;
        }
        known.last = Some(resource);
        Ok(())
    }

    /// Saves where a replay after a crash begins (the first span of any open trace that is
    /// not in its row yet) and ends (the span files' end now). Saved just before sled is flushed
    /// and after the rows are synced, so when sled has the marks, the rows of every trace that
    /// is not open are on disk: the spans between the two marks are the ones to put back into
    /// their open traces.
    fn save_replay_marks(&self) -> Result<(), sled::Error> {
        let end = self.log.end();
        let open = self.open_traces();
        let from = open
            .values()
            .filter_map(|t| t.first_new)
            .map(|p| (p.segment, p.offset))
            .min()
            .unwrap_or(end);
        let mut value = Vec::with_capacity(24 + 16 * open.len());
        value.extend_from_slice(&from.0.to_be_bytes());
        value.extend_from_slice(&from.1.to_be_bytes());
        value.extend_from_slice(&end.0.to_be_bytes());
        value.extend_from_slice(&end.1.to_be_bytes());
        // The traces whose spans the replay puts back: the open ones with spans not in a row
        // yet. Between the marks there are spans of other traces too, written or evicted since:
        // an evicted trace must not come back (at most 4,096 ids, 64 kB, once a second).
        for (id, trace) in open.iter() {
            if trace.first_new.is_some() {
                value.extend_from_slice(id);
            }
        }
        drop(open);
        self.trees.meta.insert("replay", value)?;
        Ok(())
    }

    /// Puts the spans of traces that were open at a crash back into their open traces (their
    /// bodies are in the span files; only the rows were still to be written), counts them as
    /// live in their segments and in the stored bytes and traces, and adds them to their
    /// sessions.
    fn replay(&self) -> Result<u64, sled::Error> {
        let Some(saved) = self.trees.meta.get("replay")? else {
            return Ok(0);
        };
        let Some((marks, ids)) = saved.split_first_chunk::<24>() else {
            return Ok(0);
        };
        // The traces open at the marks; none saved (marks from an earlier version): every
        // trace without its spans in a row.
        let open_then: Option<HashSet<[u8; 16]>> = (!ids.is_empty()).then(|| {
            ids.chunks_exact(16)
                .filter_map(|id| id.try_into().ok())
                .collect()
        });
        let segment_at = |at: usize| u32::from_be_bytes(marks[at..at + 4].try_into().expect("4"));
        let offset_at = |at: usize| u64::from_be_bytes(marks[at..at + 8].try_into().expect("8"));
        let (from, end) = (
            (segment_at(0), offset_at(4)),
            (segment_at(12), offset_at(16)),
        );
        if from >= end {
            return Ok(0);
        }
        let now = Instant::now();
        let mut replayed = 0;
        let mut replayed_traces = HashSet::new();
        // One segment in memory at a time; traces are written at least every minute
        // (`open::OPEN_LONGEST`), so the marks are about a minute apart at most.
        for segment in self.log.segments_from(from.0) {
            if segment > end.0 {
                break;
            }
            let base = if segment == from.0 { from.1 } else { 0 };
            let Some(bytes) = self.log.read_segment(segment, base) else {
                continue;
            };
            let mut at = 0;
            while (segment, base + at as u64) < end {
                let Some((stored, len)) = codec::next_span(&bytes[at..]) else {
                    break;
                };
                let Some(stored) = stored else {
                    // Damaged, its length whole: the spans after it are read on.
                    at += len;
                    tracing::warn!(
                        segment,
                        offset = base + (at - len) as u64,
                        "a span to put back after a crash is damaged in its span file: left out"
                    );
                    continue;
                };
                let pointer = Pointer {
                    segment,
                    offset: base + at as u64,
                    len: u32::try_from(len).unwrap_or(u32::MAX),
                };
                at += len;
                let id = stored.span.trace_id;
                if open_then.as_ref().is_some_and(|open| !open.contains(&id)) {
                    // Written before the marks, or evicted: not to be put back.
                    continue;
                }
                let row = self.row_to_reopen(&id)?;
                if row
                    .as_ref()
                    .is_some_and(|r| r.spans.iter().any(|(s, _)| *s == stored.span.span_id))
                {
                    continue;
                }
                let mut open = self.open_traces();
                let trace = self.touch(&mut open, id, row, now);
                if trace.add_span(stored.span.span_id, pointer) {
                    let bytes = u64::from(TRACE_ROW_SPAN_BYTES + pointer.len);
                    let gateway = stored.scope_name == query::GATEWAY_SCOPE;
                    trace.summary.same_call |=
                        Twice::of(&SpanFacts::of(&stored.span, stored.cost_pico_usd), gateway)
                            .flag();
                    trace.summary.add(&stored.span, stored.cost_pico_usd, bytes);
                    self.counts().bytes += bytes;
                    replayed += 1;
                    replayed_traces.insert(id);
                    drop(open);
                    self.change_live(&[(segment, 1)])?;
                }
            }
        }
        // Counted again from their spans, as the writer counts a trace a call may be reported
        // in twice (`query::counted_twice`): the replay added each span's usage.
        let mut open = self.open_traces();
        for id in &replayed_traces {
            if let Some(trace) = open
                .get_mut(id)
                .filter(|t| t.summary.same_call == SAME_CALL_BOTH)
            {
                self.recount(trace);
            }
        }
        // The sessions were rebuilt from the rows: they take the replayed spans too.
        let mut sessions = self.session_rows();
        for trace in open.values() {
            if let Some(session) = trace.summary.session.as_deref() {
                sessions.update(session, |s| {
                    // The session counted the written row only if it named the session.
                    let counted = trace.written.as_ref().filter(|w| w.session.is_some());
                    s.update(counted.map(|w| &w.totals), &trace.summary)
                });
            }
        }
        Ok(replayed)
    }

    /// Writes the open traces that have been quiet for [`open::SEAL_IDLE`] (and, past
    /// [`OPEN_MAX`], the ones quiet the longest), or every one when `all`. The open traces
    /// stay locked meanwhile, so a reader finds each trace open or written.
    /// Returns whether it wrote any.
    fn seal(&self, all: bool) -> bool {
        if self.failed.load(Ordering::Relaxed) {
            return false;
        }
        let mut open = self.open_traces();
        let due = if all {
            open.take_all()
        } else {
            open.take_due(Instant::now(), OPEN_MAX * 3 / 4)
        };
        if due.is_empty() {
            return false;
        }
        // In start order: the time index then grows at its end, its chunks filled whole.
        let mut due = due;
        due.sort_unstable_by_key(|t| (t.summary.start_unix_nanos, t.summary.trace_id));
        if let Err(e) = self.write_rows(&due) {
            due.into_iter().for_each(|t| open.put_back(t));
            drop(open);
            self.fail(&e);
            return false;
        }
        true
    }

    /// Counts a trace's totals again from its spans, without the usage a gateway call under
    /// the app's own span of the same call reports twice ([`query::counted_twice`], as a read
    /// of the trace counts it). Left as it is when a span cannot be read back.
    fn recount(&self, trace: &mut OpenTrace) {
        let spans: Vec<StoredSpan> = trace
            .spans
            .iter()
            .filter_map(|&(_, p)| self.load_span_as_written(p))
            .collect();
        if spans.len() != trace.spans.len() {
            return;
        }
        let parent_of = query::parent_indexes(&spans, &query::span_index(&spans));
        let mut totals = Totals::default();
        for t in &query::own_totals(&spans, &parent_of) {
            totals.add(t);
        }
        trace.summary.totals = totals;
    }

    /// Writes traces' rows (replacing their earlier rows) with one append, and their index
    /// entries.
    fn write_rows(&self, traces: &[Box<OpenTrace>]) -> Result<(), sled::Error> {
        let mut changes: Vec<Change> = Vec::with_capacity(traces.len());
        for trace in traces {
            let id = &trace.summary.trace_id;
            let start = trace.summary.start_unix_nanos;
            if let Some(old) = &trace.written
                && old.start_unix_nanos != start
            {
                changes.push((time_key(old.start_unix_nanos, id), None));
            }
            let row = TraceRow::encode_parts(&trace.summary, &trace.spans);
            let tags = Tags::of_summary(&trace.summary);
            changes.push((time_key(start, id), Some((row, tags))));
        }
        let mut buf = Vec::new();
        self.rows.write(&changes, &mut buf).map_err(sled::Error::Io)
    }

    /// The open trace `id`, marked as given spans `now`; opened again from `row` (its written
    /// row) when not open, or new (and counted) when it has none.
    fn touch<'a>(
        &self,
        open: &'a mut OpenTraces,
        id: [u8; 16],
        row: Option<TraceRow>,
        now: Instant,
    ) -> &'a mut OpenTrace {
        open.touch(id, now, || match row {
            Some(row) => OpenTrace::reopened(row, now),
            None => {
                self.counts().traces += 1;
                OpenTrace::new(id, now)
            }
        })
    }

    /// The row of a written trace that is not open: what a new span opens it again from.
    fn row_to_reopen(&self, id: &[u8; 16]) -> Result<Option<TraceRow>, sled::Error> {
        if self.open_traces().contains_key(id) {
            return Ok(None);
        }
        Ok(self.written_row(id)?.map(|(_, row)| row))
    }

    /// A written trace's row key and row.
    fn written_row(&self, id: &[u8; 16]) -> Result<Option<([u8; 24], TraceRow)>, sled::Error> {
        let Some(key) = self.rows.find(id).map_err(sled::Error::Io)? else {
            return Ok(None);
        };
        Ok(self
            .rows
            .get(&key)
            .map_err(sled::Error::Io)?
            .and_then(|v| TraceRow::decode(&v))
            .filter(|row| &row.summary.trace_id == id)
            .map(|row| (key, row)))
    }

    /// Adds to (or takes from) segments' live span counts; a segment left with none is deleted
    /// once it is no longer the one being appended to.
    fn change_live(&self, changes: &[(u32, i64)]) -> Result<(), sled::Error> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        for &(segment, change) in changes {
            let count = live.entry(segment).or_default();
            *count = count.saturating_add_signed(change);
        }
        let current = self.log.current_segment();
        let empty: Vec<u32> = live
            .iter()
            .filter(|&(&segment, &count)| count == 0 && segment != current)
            .map(|(&segment, _)| segment)
            .collect();
        for segment in empty {
            live.remove(&segment);
            self.log.remove(segment).map_err(sled::Error::Io)?;
        }
        Ok(())
    }

    /// One stored span, read from its segment. `None` when it cannot be read or decoded.
    fn load_span(&self, p: Pointer) -> Option<StoredSpan> {
        self.log
            .read(p)
            .ok()
            .and_then(|bytes| codec::decode_span(&bytes))
    }

    /// [`TraceStore::load_span`] as written, to count it (`codec::decode_span_as_written`).
    fn load_span_as_written(&self, p: Pointer) -> Option<StoredSpan> {
        self.log
            .read(p)
            .ok()
            .and_then(|bytes| codec::decode_span_as_written(&bytes))
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn session_rows(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stored_bytes(&self) -> u64 {
        self.counts().bytes
    }

    fn refresh_gauges(&self) {
        let counts = *self.counts();
        let m = &self.metrics.store;
        m.bytes.set(counts.bytes as i64);
        m.traces.set(counts.traces as i64);
        m.open_traces.set(self.open_traces().len() as i64);
    }

    /// The open trace that started first.
    fn oldest_open(&self) -> Option<[u8; 16]> {
        self.open_traces()
            .values()
            .min_by_key(|t| (t.summary.start_unix_nanos, t.summary.trace_id))
            .map(|t| t.summary.trace_id)
    }

    /// Evicts whole traces, oldest written first, until the stored bytes fit `max_bytes`.
    /// Evicts the oldest traces until the stored bytes are within `max_bytes`. The written
    /// ones go a batch at a time: their rows are read, then removed with one append.
    fn enforce_size(&self) -> Result<(), sled::Error> {
        while self.stored_bytes() > self.limits.max_bytes {
            let oldest = self
                .rows
                .oldest(EVICT_BATCH, |_| true)
                .map_err(sled::Error::Io)?;
            if oldest.is_empty() {
                // Nothing written yet: the open traces, oldest first.
                match self.oldest_open() {
                    Some(id) if self.evict(&id, "size")? => continue,
                    _ => break,
                }
            }
            let mut removed = Vec::new();
            for key in oldest {
                if self.stored_bytes() <= self.limits.max_bytes {
                    break;
                }
                let Some(id) = trace_id_of(&key) else {
                    continue;
                };
                // An index entry without its row is removed too, so the loop ends.
                self.evict_taking_row(&id, "size", key)?;
                removed.push((key, None));
            }
            self.rows
                .write(&removed, &mut Vec::new())
                .map_err(sled::Error::Io)?;
        }
        Ok(())
    }

    fn remove_row(&self, key: [u8; 24]) -> Result<(), sled::Error> {
        self.rows
            .write(&[(key, None)], &mut Vec::new())
            .map_err(sled::Error::Io)
    }

    /// Evicts the traces that started before `max_age` ago.
    ///
    /// The open traces are looked through only when `open_from` (the earliest start among the
    /// traces a batch touched, or 0 for all) is past the cutoff: a trace is open for a minute
    /// at most, so between the periodic checks only a span that came already old can make one
    /// expire.
    fn evict_expired(&self, open_from: u64) {
        // A store that failed a write writes nothing more (its removals could land after a
        // torn record, where the next open does not read).
        if self.failed.load(Ordering::Relaxed) {
            return;
        }
        let cutoff = now_unix_nanos().saturating_sub(self.limits.max_age.as_nanos() as u64);
        let result = (|| -> Result<(), sled::Error> {
            while let Some(key) = self.rows.first_key() {
                let start = u64::from_be_bytes(key[..8].try_into().unwrap_or_default());
                if start >= cutoff {
                    break;
                }
                let Some(id) = trace_id_of(&key) else { break };
                if !self.evict(&id, "age")? {
                    self.remove_row(key)?;
                }
            }
            if open_from >= cutoff {
                return Ok(());
            }
            let expired: Vec<[u8; 16]> = self
                .open_traces()
                .values()
                .filter(|t| t.summary.start_unix_nanos < cutoff)
                .map(|t| t.summary.trace_id)
                .collect();
            for id in expired {
                self.evict(&id, "age")?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            self.fail(&e);
        }
        self.refresh_gauges();
    }

    /// Removes one trace whole, open or written: its spans, row and index entries. False when
    /// the store does not have it.
    fn evict(&self, trace_id: &[u8; 16], reason: &'static str) -> Result<bool, sled::Error> {
        let open = self.open_traces().remove(trace_id);
        let row = self.written_row(trace_id)?;
        if let Some((key, _)) = &row {
            self.remove_row(*key)?;
        }
        self.forget_trace(open, row.map(|(_, row)| row), reason)
    }

    /// [`TraceStore::evict`] for the trace of the row at `key`, whose removal the caller
    /// writes (with others, in one append).
    fn evict_taking_row(
        &self,
        trace_id: &[u8; 16],
        reason: &'static str,
        key: [u8; 24],
    ) -> Result<(), sled::Error> {
        let open = self.open_traces().remove(trace_id);
        let row = self
            .written_row(trace_id)?
            .filter(|(at, _)| *at == key)
            .map(|(_, row)| row);
        self.forget_trace(open, row, reason)?;
        Ok(())
    }

    /// Takes an evicted trace (open, written, or both: the open trace holds the written spans
    /// too) out of the live span counts, its session and the stored totals, and counts the
    /// eviction. Returns false when there was no such trace.
    fn forget_trace(
        &self,
        open: Option<OpenTrace>,
        row: Option<TraceRow>,
        reason: &'static str,
    ) -> Result<bool, sled::Error> {
        let (summary, spans) = match (open, row) {
            (Some(open), _) => (open.summary, open.spans),
            (None, Some(row)) => (row.summary, row.spans),
            (None, None) => return Ok(false),
        };
        let mut freed: BTreeMap<u32, i64> = BTreeMap::new();
        for (_, p) in &spans {
            *freed.entry(p.segment).or_default() -= 1;
        }
        self.change_live(&freed.into_iter().collect::<Vec<_>>())?;
        if let Some(session) = &summary.session {
            self.session_rows().update(session, |s| s.remove(&summary));
        }
        let mut counts = self.counts();
        counts.bytes = counts.bytes.saturating_sub(summary.bytes);
        counts.traces = counts.traces.saturating_sub(1);
        drop(counts);
        self.metrics
            .store
            .traces_evicted
            .get_or_create(&ReasonLabels { reason })
            .inc();
        Ok(true)
    }
}

/// Moves a store of an earlier layout into the row files: a sled `rows` tree (rows as they are
/// now, kept in sled) is copied as it is; a `traces` row per trace id and its `spans` rows
/// (pointers, or the span's JSON inline, which is appended to the span files) become one row.
/// The old trees are dropped once the rows are durable (the index and session trees too: the
/// time index and the sessions are rebuilt from the rows).
fn migrate_legacy(trees: &Trees, log: &SpanLog, rows: &Rows) -> Result<bool, sled::Error> {
    let names = trees.db.tree_names();
    let has = |name: &[u8]| names.iter().any(|n| n == name);
    if has(b"by_time") {
        // A time index beside the rows, from before their keys were it.
        trees.db.drop_tree("by_time")?;
    }
    let mut buf = Vec::new();
    let mut changes: Vec<Change> = Vec::new();
    let mut write = |changes: &mut Vec<Change>| -> Result<(), sled::Error> {
        rows.write(changes, &mut buf).map_err(sled::Error::Io)?;
        changes.clear();
        Ok(())
    };
    if has(b"rows") {
        for entry in trees.db.open_tree("rows")?.iter() {
            let (key, row) = entry?;
            if let Ok(key) = <[u8; 24]>::try_from(key.as_ref()) {
                let tags = TraceRow::decode_tags(&row);
                changes.push((key, Some((row.to_vec(), tags))));
            }
            if changes.len() >= 1024 {
                write(&mut changes)?;
            }
        }
    }
    if has(b"traces") {
        let traces = trees.db.open_tree("traces")?;
        let spans = trees.db.open_tree("spans")?;
        for row in traces.iter().values() {
            let Some(summary) = decode::<TraceSummary>(&row?) else {
                continue;
            };
            let id = summary.trace_id;
            let mut pointers = Vec::new();
            for span in spans.scan_prefix(id) {
                let (key, value) = span?;
                let Some(span_id) = key.get(16..24).and_then(|b| <[u8; 8]>::try_from(b).ok())
                else {
                    continue;
                };
                let pointer = match Pointer::decode(&value) {
                    Some(p) => p,
                    None => {
                        let (segment, offset) = log.append(&value).map_err(sled::Error::Io)?;
                        Pointer {
                            segment,
                            offset,
                            len: u32::try_from(value.len()).unwrap_or(u32::MAX),
                        }
                    }
                };
                pointers.push((span_id, pointer));
            }
            let key = time_key(summary.start_unix_nanos, &id);
            let tags = Tags::of_summary(&summary);
            let row = TraceRow {
                spans: pointers,
                summary,
            };
            changes.push((key, Some((row.encode(), tags))));
            if changes.len() >= 1024 {
                write(&mut changes)?;
            }
        }
    }
    // Live span counts, from before they were counted from the rows at open; indexes by
    // value, from before the time index kept the values' ids; session rows, from before they
    // were summed from the trace rows at open.
    let dropped = [
        "segments",
        "by_feature",
        "by_user",
        "by_session",
        "sessions",
        "sessions_by_time",
    ];
    if !has(b"rows") && !has(b"traces") {
        for old in dropped {
            if has(old.as_bytes()) {
                trees.db.drop_tree(old)?;
            }
        }
        return Ok(false);
    }
    write(&mut changes)?;
    log.sync()
        .and_then(|()| rows.sync())
        .map_err(sled::Error::Io)?;
    trees.db.flush()?;
    for old in ["rows", "traces", "spans"].into_iter().chain(dropped) {
        if has(old.as_bytes()) {
            trees.db.drop_tree(old)?;
        }
    }
    tracing::info!("the trace store was moved to its new layout");
    Ok(true)
}

/// Where the recorder hands the store each call's span, with the content at the store's own
/// capture level (`[store] capture`), which may keep more than the export.
pub struct StoreSink {
    store: Arc<TraceStore>,
    origin: Arc<Origin>,
    /// The key of `origin`'s resource.
    resource: u64,
}

impl StoreSink {
    /// The queue has no room for `n` more spans.
    pub fn crowded(&self, n: usize) -> bool {
        let queued = self.store.metrics.store.queued_spans.get().max(0) as usize;
        queued + n > QUEUE_SPANS
    }

    pub fn new(store: Arc<TraceStore>, telemetry: &Telemetry) -> StoreSink {
        let origin = Origin::of(telemetry);
        StoreSink {
            store,
            resource: origin.key(),
            origin: Arc::new(origin),
        }
    }

    /// Queues one span; `origin` is this gateway's when not given.
    pub fn span(&self, span: SpanRecord, origin: Option<Arc<Origin>>, cost_pico_usd: Option<u128>) {
        self.store.submit(Ingest {
            span,
            origin: origin.unwrap_or_else(|| self.origin.clone()),
            cost_pico_usd,
        });
    }

    /// Queues a call's span with the content the store keeps (`kept`) in place of the content
    /// it carries. It is encoded here, from the span as exported, into exactly the record the
    /// writer would make of that span with the store's content: no copy of the span is made,
    /// sent and freed on the writer's thread.
    pub fn call(
        &self,
        span: &SpanRecord,
        kept: Option<CapturedContent>,
        cost_pico_usd: Option<u128>,
    ) {
        if self.store.failed.load(Ordering::Relaxed) {
            self.store.dropped("off", 1);
            return;
        }
        let content = content_attributes(kept.unwrap_or_default());
        // A call's span of the benchmark takes about 1,100 bytes besides its content's text
        // (1,495 in all with about 400 of text); sized up front, as growing the buffer copied
        // the whole record once more.
        let text: usize = content
            .iter()
            .map(|(_, v)| match v {
                AttrValue::Str(s) => s.len(),
                _ => 0,
            })
            .sum();
        let attributes = span
            .attributes
            .iter()
            .filter(|(k, _)| !is_content(k))
            .chain(&content);
        let mut bytes = Vec::with_capacity(1536 + text);
        codec::encode_span_parts(
            span,
            attributes,
            self.resource,
            &self.origin.scope_name,
            &self.origin.scope_version,
            cost_pico_usd,
            &mut bytes,
        );
        self.store.send(Incoming::Encoded(Box::new(Encoded {
            bytes,
            facts: SpanFacts::of(span, cost_pico_usd).into_owned(),
            origin: self.origin.clone(),
            resource: self.resource,
        })));
    }
}
