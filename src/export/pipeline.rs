//! The export pipeline: finished spans go into a bounded queue (the request path never waits:
//! `try_send`; when the queue is full, spans go to an overflow buffer that a background task
//! writes to the spool, so the request path never touches the disk); one task batches them
//! by count, size and time and exports each batch once; a failed batch goes to the spool; a
//! replayer sends spooled batches oldest first, with jittered exponential backoff while the
//! collector is down, and deletes a batch only after it was exported. Every span that leaves
//! without being exported is counted in `sidetrace_spans_dropped_total{reason}`.

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::trace::SpanExporter as _;
use tokio::{
    sync::{Notify, mpsc, watch},
    task::JoinHandle,
};

use super::sampling::TailSampler;
use super::{
    conventions::Conventions,
    otlp::{self, Exporter},
    spool::{MemorySpool, Spool, SpoolError, SpoolLimits, unix_time_ms},
};
use crate::{
    config::ExportConfig,
    metrics::Metrics,
    trace::span::{Origin, SpanRecord, Telemetry},
};

/// The exporter and what spans go out under: the gateway's own resource and scope, or a
/// received span's origin (its app's). The resource is the exporter's state, so one export
/// runs at a time and sets it first.
struct Out {
    exporter: tokio::sync::Mutex<Exporter>,
    own_resource: opentelemetry_sdk::Resource,
    own_scope: InstrumentationScope,
    /// The names the gateway's own spans leave with.
    conventions: Conventions,
}

/// What the request path holds: a sender into the queue.
#[derive(Clone)]
pub struct ExportHandle {
    tx: mpsc::Sender<SpanRecord>,
    shared: Arc<Shared>,
    sampler: Option<Arc<TailSampler>>,
}

/// How long shutdown waits for the export tasks beyond the export deadline before it abandons
/// them (and counts what they held as dropped).
pub const SHUTDOWN_MARGIN: Duration = Duration::from_secs(2);

struct Shared {
    spool: RwLock<Arc<dyn Spool>>,
    /// Spools replaced by a memory spool after a storage failure. They are parked here, never
    /// dropped by a task: dropping the last handle of a sled database on a failed disk can
    /// block forever, so shutdown drops them on a thread of its own.
    retired: std::sync::Mutex<Vec<Arc<dyn Spool>>>,
    /// Shutdown is over: a span that still comes (a call finished after it) is counted as
    /// dropped at once, never left in a buffer nobody reads. A span's whole intake (its count,
    /// its send, its push to the overflow buffer) holds the read lock: once shutdown has set it,
    /// no intake is half done, and every later one sees it set.
    closed: RwLock<bool>,
    limits: SpoolLimits,
    /// The last export (live or replay) worked; while false, live batches go straight to the
    /// spool and only the replayer probes the collector.
    healthy: AtomicBool,
    replay: Notify,
    metrics: Arc<Metrics>,
    /// Spans that found the queue full, waiting for the spiller to write them to the spool.
    overflow: std::sync::Mutex<Vec<SpanRecord>>,
    overflow_max: usize,
    spill_wakeup: Notify,
    /// Spans are waiting in the queue for the batcher. It sleeps through a batch's delay
    /// instead of waking for every span: a span costs the request path one `try_send` and no
    /// task wake-up; every [`WAKE_EVERY_SPANS`] spans (or a batch's count, if fewer) wake it to
    /// take them, so that a batch full by bytes leaves without waiting for its delay.
    batch_ready: Notify,
    wake_every: usize,
}

/// How many queued spans wake the batcher before a batch's delay is over: few enough that
/// large spans (a batch full by `batch_max_bytes` long before `batch_max_spans`) do not pile
/// up for a whole delay, many enough that the batcher runs once per dozens of calls.
const WAKE_EVERY_SPANS: usize = 64;

/// The running tasks; `shutdown` exports what it can within the deadline and spools the rest.
pub struct ExportTasks {
    stop: watch::Sender<bool>,
    sampler: Option<(watch::Sender<bool>, JoinHandle<()>)>,
    batcher: JoinHandle<()>,
    replayer: JoinHandle<()>,
    spiller: JoinHandle<()>,
    shared: Arc<Shared>,
    /// The thread the tasks run on; it ends when this is dropped.
    thread: ExportThread,
}

/// The export's own thread: a single-threaded runtime at a raised nice value
/// ([`crate::background`]) running the batcher, the replayer, the spiller and the sampler's
/// decisions. Turning a batch into OTLP protobuf (tens of thousands of instructions a span in
/// the OTLP crate) never holds up the calls on the runtime's workers: on a second core it runs
/// beside them, and on a busy core the calls come first.
struct ExportThread {
    handle: tokio::runtime::Handle,
    /// Dropped to stop the thread: its runtime then shuts down without waiting for a blocking
    /// task (a spool write on a failed disk may never return).
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl ExportThread {
    /// The runtime is built on the new thread and only ever dropped there: a runtime dropped
    /// on the caller's (an async context) would panic.
    fn spawn() -> std::io::Result<ExportThread> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (started, handle) = std::sync::mpsc::channel();
        // Linux cuts thread names to 15 bytes.
        std::thread::Builder::new()
            .name("sidetrace-otlp".into())
            .spawn(move || {
                crate::background::yield_to_calls("span export");
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .thread_name("sidetrace-otlp")
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = started.send(Err(e));
                        return;
                    }
                };
                let _ = started.send(Ok(runtime.handle().clone()));
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                runtime.shutdown_background();
            })?;
        // Building a runtime takes well under a millisecond; this waits for nothing else.
        let handle = handle.recv().map_err(|_| {
            std::io::Error::other("the export thread ended before its runtime started")
        })??;
        Ok(ExportThread {
            handle,
            _stop: stop,
        })
    }
}

impl ExportHandle {
    /// Starts the pipeline on a thread of its own ([`ExportThread`]). `make_exporter` runs there
    /// (inside its runtime: a gRPC channel starts its tasks where it is built); `spool` comes
    /// from `spool::open_or_degrade`. Fails when the exporter cannot be built or the thread
    /// cannot start.
    pub fn start(
        cfg: &ExportConfig,
        make_exporter: impl FnOnce() -> Result<Exporter, String>,
        spool: Arc<dyn Spool>,
        limits: SpoolLimits,
        telemetry: &Telemetry,
        metrics: Arc<Metrics>,
        sampler: Option<TailSampler>,
    ) -> Result<(ExportHandle, ExportTasks), String> {
        let thread = ExportThread::spawn()
            .map_err(|e| format!("cannot start the span export's thread: {e}"))?;
        let runtime = thread.handle.clone();
        let exporter = {
            let _inside = runtime.enter();
            make_exporter()?
        };
        let (tx, rx) = mpsc::channel(cfg.queue_spans);
        let shared = Arc::new(Shared {
            spool: RwLock::new(spool),
            retired: std::sync::Mutex::new(Vec::new()),
            closed: RwLock::new(false),
            limits,
            healthy: AtomicBool::new(true),
            replay: Notify::new(),
            metrics,
            overflow: std::sync::Mutex::new(Vec::new()),
            overflow_max: cfg.queue_spans,
            spill_wakeup: Notify::new(),
            batch_ready: Notify::new(),
            wake_every: cfg.batch_max_spans.clamp(1, WAKE_EVERY_SPANS),
        });
        shared.update_gauges();
        let conventions = Conventions::from_config(cfg);
        let out = Arc::new(Out {
            exporter: tokio::sync::Mutex::new(exporter),
            own_resource: otlp::resource(telemetry),
            own_scope: otlp::scope(telemetry, &conventions),
            conventions,
        });
        let (stop, stopped) = watch::channel(false);
        let batcher = runtime.spawn(batcher(
            rx,
            out.clone(),
            shared.clone(),
            cfg.clone(),
            stopped.clone(),
        ));
        let replayer = runtime.spawn(replayer(out, shared.clone(), cfg.clone(), stopped.clone()));
        let spiller = runtime.spawn(spiller(shared.clone(), stopped));
        let sampler = sampler.map(Arc::new);
        let handle = ExportHandle {
            tx,
            shared: shared.clone(),
            sampler: sampler.clone(),
        };
        let sampler_task = sampler.map(|s| {
            let (stop, stopped) = watch::channel(false);
            (
                stop,
                runtime.spawn(decide_traces(s, handle.clone(), stopped)),
            )
        });
        Ok((
            handle,
            ExportTasks {
                stop,
                sampler: sampler_task,
                batcher,
                replayer,
                spiller,
                shared,
                thread,
            },
        ))
    }

    /// Hands a finished span to the exporter. Never waits on the export and never touches the
    /// disk: a full queue sends the span to the overflow buffer, which the spiller writes to
    /// the spool. (At shutdown it may wait the few instructions another span's intake takes.)
    /// A span the tail sampler no longer takes (it closed at shutdown) goes on unsampled.
    pub fn submit(&self, span: SpanRecord) {
        self.shared.metrics.spans_received.inc();
        let span = match &self.sampler {
            Some(sampler) => match sampler.offer(span) {
                None => return,
                Some(span) => span,
            },
            None => span,
        };
        self.enqueue(span);
    }

    /// Whether `n` more spans from outside the gateway (received over OTLP) would crowd the
    /// queue: spans already wait in the overflow buffer for the disk, or fewer slots are free
    /// than `n` (counted up to half the queue) plus a quarter of the queue, which is kept for
    /// the gateway's own calls. The receiver answers "retry later" then.
    pub fn crowded(&self, n: usize) -> bool {
        let capacity = self.tx.max_capacity();
        let overflowing = !self
            .shared
            .overflow
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        overflowing || self.tx.capacity() < n.min(capacity / 2) + capacity / 4
    }

    fn enqueue(&self, span: SpanRecord) {
        let closed = self.shared.closed.read().unwrap_or_else(|e| e.into_inner());
        if *closed {
            drop(closed);
            self.shared.metrics.spans_dropped("shutdown", 1);
            tracing::warn!("a span finished after the export shut down; dropped");
            return;
        }
        // Counted before it is sent: the batcher, on its own thread, may export it and settle
        // it before `try_send` returns.
        self.shared.unsettled().inc();
        match self.tx.try_send(span) {
            Ok(()) => {
                let queued = self.tx.max_capacity() - self.tx.capacity();
                if queued >= self.shared.wake_every {
                    self.shared.batch_ready.notify_one();
                }
            }
            Err(mpsc::error::TrySendError::Full(span))
            | Err(mpsc::error::TrySendError::Closed(span)) => {
                let mut overflow = self
                    .shared
                    .overflow
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if overflow.len() < self.shared.overflow_max {
                    overflow.push(span);
                    drop(overflow);
                    self.shared.spill_wakeup.notify_one();
                } else {
                    drop(overflow);
                    self.shared.settle(1);
                    self.shared.metrics.spans_dropped("queue_full", 1);
                }
            }
        }
    }
}

impl ExportTasks {
    /// Stops intake, exports the queue within `deadline` (or spools it), flushes the spool.
    ///
    /// Bounded: every task gets until `deadline` plus [`SHUTDOWN_MARGIN`]; a task still running
    /// then is abandoned and logged, and the spans it held are counted as dropped
    /// (`reason="shutdown"`), as are spans left in an in-memory spool, which cannot outlive the
    /// process.
    pub async fn shutdown(self, deadline: Duration) {
        let give_up = tokio::time::Instant::now() + deadline + SHUTDOWN_MARGIN;
        let mut abandoned = Vec::new();
        // Traces still waiting for a sampling decision are decided now, before the queue drains.
        if let Some((stop, task)) = self.sampler {
            let _ = stop.send(true);
            if !finish_by(task, give_up).await {
                abandoned.push("sampler");
            }
        }
        let _ = self.stop.send(true);
        for (name, task) in [
            ("batcher", self.batcher),
            ("spiller", self.spiller),
            ("replayer", self.replayer),
        ] {
            if !finish_by(task, give_up).await {
                abandoned.push(name);
            }
        }
        let shared = self.shared;
        // Spans that came in after the batcher stopped are still in the overflow buffer: they go
        // to the spool like any other. From now on a span that comes is counted at once.
        let late = {
            *shared.closed.write().unwrap_or_else(|e| e.into_inner()) = true;
            std::mem::take(&mut *shared.overflow.lock().unwrap_or_else(|e| e.into_inner()))
        };
        let late_spans = late.len();
        // Every call on the spool may block on a failed disk (sled holds its lock across the
        // write): none of them runs on this task, and each is bounded.
        let s = shared.clone();
        let settled = tokio::time::timeout(
            SHUTDOWN_MARGIN,
            tokio::task::spawn_blocking(move || {
                s.spill(&late);
                let spool = s.spool();
                if let Err(e) = spool.flush() {
                    tracing::error!(error = %e, "spool flush at shutdown failed");
                }
                s.count_drops(spool.as_ref());
                if spool.durable() {
                    0
                } else {
                    spool.stats().spans
                }
            }),
        )
        .await;
        let in_memory = match settled {
            Ok(Ok(spans)) => spans,
            _ => {
                abandoned.push("final spool write");
                0
            }
        };
        let left_behind = shared.unsettled().set(0).max(0) as u64;
        if !abandoned.is_empty() {
            tracing::error!(
                tasks = ?abandoned,
                deadline_ms = (deadline + SHUTDOWN_MARGIN).as_millis() as u64,
                "export tasks did not finish in time and were abandoned"
            );
        }
        if left_behind > 0 {
            tracing::error!(
                spans = left_behind,
                late_spans,
                "spans neither exported nor spooled at shutdown were dropped"
            );
            shared.metrics.spans_dropped("shutdown", left_behind);
        }
        if in_memory > 0 {
            tracing::error!(
                spans = in_memory,
                "the spool is in memory (the disk failed): its spans are dropped at shutdown"
            );
            shared.metrics.spans_dropped("shutdown", in_memory);
        }
        // The tasks are over or abandoned: the export's thread and its runtime end.
        drop(self.thread);
        let retired =
            std::mem::take(&mut *shared.retired.lock().unwrap_or_else(|e| e.into_inner()));
        if !retired.is_empty() {
            // Never waited on: a sled database on a failed disk may never finish closing.
            let _ = std::thread::Builder::new()
                .name("sidetrace-spool-retire".to_string())
                .spawn(move || drop(retired));
        }
    }
}

/// Waits for `task` until `give_up`; aborts it and returns false if it is still running then.
async fn finish_by(task: JoinHandle<()>, give_up: tokio::time::Instant) -> bool {
    let abort = task.abort_handle();
    match tokio::time::timeout_at(give_up, task).await {
        Ok(_) => true,
        Err(_) => {
            abort.abort();
            false
        }
    }
}

impl Shared {
    fn spool(&self) -> Arc<dyn Spool> {
        self.spool.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Writes spans to the spool (or counts them dropped) and settles them: they are no longer
    /// the export's to lose at shutdown.
    fn spill(&self, spans: &[SpanRecord]) {
        self.write_to_spool(spans);
        self.settle(spans.len() as u64);
    }

    /// Spans of different origins go to separate entries: a replayed entry is exported in one
    /// request under one resource, so it succeeds or fails whole (exactly once).
    fn write_to_spool(&self, spans: &[SpanRecord]) {
        let groups = by_origin(spans.iter());
        for group in groups {
            self.write_group(&group);
        }
    }

    /// A storage failure (full disk, broken database) degrades the spool to memory, loudly,
    /// rather than losing the spans or stopping the proxy.
    fn write_group(&self, spans: &[&SpanRecord]) {
        if spans.is_empty() {
            return;
        }
        let n = spans.len() as u32;
        let payload = match serde_json::to_vec(spans) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode spans for the spool");
                self.metrics.spans_dropped("encode_error", u64::from(n));
                return;
            }
        };
        let spool = self.spool();
        let result = match spool.append(&payload, n, unix_time_ms()) {
            Err(SpoolError::Io(e)) => {
                tracing::error!(
                    error = %e,
                    "spool write failed; degrading to an in-memory spool: spooled spans will not survive a restart"
                );
                let memory = self.degrade(&spool);
                memory.append(&payload, n, unix_time_ms())
            }
            other => other,
        };
        match result {
            Ok(_) => {
                self.metrics.spans_spooled.inc_by(u64::from(n));
                self.replay.notify_one();
            }
            Err(e) => {
                tracing::error!(error = %e, spans = n, "spans dropped: the spool refused them");
                self.metrics.spans_dropped("spool_error", u64::from(n));
            }
        }
        self.count_drops(spool.as_ref());
        self.update_gauges();
    }

    /// Replaces `failed` with a memory spool (unless another thread already did) and parks
    /// `failed`; returns the spool to use now.
    fn degrade(&self, failed: &Arc<dyn Spool>) -> Arc<dyn Spool> {
        let mut current = self.spool.write().unwrap_or_else(|e| e.into_inner());
        if Arc::ptr_eq(&current, failed) {
            let memory: Arc<dyn Spool> = Arc::new(MemorySpool::new(self.limits));
            let old = std::mem::replace(&mut *current, memory);
            self.retired
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(old);
            self.metrics.spool_degraded.set(1);
        }
        current.clone()
    }

    /// Spans taken into the queue or the overflow buffer and not yet exported, spooled or
    /// counted as dropped: what an abandoned shutdown leaves behind. Kept in the
    /// `sidetrace_export_queued_spans` gauge itself.
    fn unsettled(&self) -> &prometheus_client::metrics::gauge::Gauge {
        &self.metrics.export_queued_spans
    }

    /// `n` spans were exported, spooled or counted as dropped.
    fn settle(&self, n: u64) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let _ = self
            .unsettled()
            .inner()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n).max(0))
            });
    }

    fn count_drops(&self, spool: &dyn Spool) {
        for (reason, count) in spool.take_dropped().iter() {
            self.metrics.spans_dropped(reason.as_label(), count.spans);
        }
    }

    fn update_gauges(&self) {
        let stats = self.spool().stats();
        let m = &self.metrics;
        m.spool_items.set(stats.items as i64);
        m.spool_bytes.set(stats.bytes as i64);
        let age_s = stats
            .oldest_created_at_ms
            .map_or(0, |t| unix_time_ms().saturating_sub(t) / 1000);
        m.spool_oldest_age_seconds.set(age_s as i64);
    }
}

/// Estimated encoded size of a span, to keep batches under the collector's receive limit.
fn estimated_bytes(s: &SpanRecord) -> usize {
    let attrs: usize = s
        .attributes
        .iter()
        .map(|(k, v)| {
            k.len()
                + match v {
                    crate::trace::span::AttrValue::Str(s) => s.len(),
                    crate::trace::span::AttrValue::StrList(l) => {
                        l.iter().map(|s| s.len() + 2).sum()
                    }
                    v @ (crate::trace::span::AttrValue::List(_)
                    | crate::trace::span::AttrValue::Map { .. }
                    | crate::trace::span::AttrValue::Bytes { .. }) => {
                        serde_json::to_string(v).map_or(0, |t| t.len())
                    }
                    _ => 9,
                }
                + 6
        })
        .sum();
    let extras: usize =
        s.events.iter().map(|e| e.name.len() + 64).sum::<usize>() + s.links.len() * 64;
    s.name.len() + attrs + extras + 96
}

fn same_origin(a: &Option<Arc<Origin>>, b: &Option<Arc<Origin>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
        _ => false,
    }
}

/// Splits a batch by origin, keeping the order within each.
fn by_origin<T: std::borrow::Borrow<SpanRecord>>(
    spans: impl IntoIterator<Item = T>,
) -> Vec<Vec<T>> {
    let mut groups: Vec<Vec<T>> = Vec::new();
    for span in spans {
        match groups
            .iter_mut()
            .find(|g| same_origin(&g[0].borrow().origin, &span.borrow().origin))
        {
            Some(g) => g.push(span),
            None => groups.push(vec![span]),
        }
    }
    groups
}

/// Exports spans of one origin in one request, under that origin's resource and scope (the
/// gateway's own when none).
async fn export(
    out: &Out,
    spans: &[SpanRecord],
    metrics: &Metrics,
    timeout: Duration,
) -> Result<(), String> {
    let origin = spans.first().and_then(|s| s.origin.as_deref());
    let (resource, scope, conventions) = match origin {
        Some(o) => {
            let (resource, scope) = otlp::origin_parts(o);
            (resource, scope, None)
        }
        None => (
            out.own_resource.clone(),
            out.own_scope.clone(),
            Some(&out.conventions),
        ),
    };
    let batch = spans
        .iter()
        .map(|s| otlp::span_data(s, &scope, conventions))
        .collect();
    // The batcher and the replayer share the exporter: waiting for it is not part of the
    // export's time (a backstop fired while waiting would spool a batch that may be in flight
    // and so send it twice).
    let mut exporter = out.exporter.lock().await;
    exporter.set_resource(&resource);
    let started = Instant::now();
    // The exporter has its own timeout; ours is the backstop if it does not fire.
    let result =
        tokio::time::timeout(timeout + Duration::from_secs(1), exporter.export(batch)).await;
    drop(exporter);
    metrics
        .export_duration
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(Ok(())) => {
            metrics.export_attempt("ok");
            Ok(())
        }
        Ok(Err(e)) => {
            metrics.export_attempt("error");
            Err(e.to_string())
        }
        Err(_) => {
            metrics.export_attempt("timeout");
            Err("export timed out".to_string())
        }
    }
}

async fn batcher(
    mut rx: mpsc::Receiver<SpanRecord>,
    out: Arc<Out>,
    shared: Arc<Shared>,
    cfg: ExportConfig,
    mut stop: watch::Receiver<bool>,
) {
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let delay = Duration::from_millis(cfg.batch_delay_ms);
    loop {
        let first = tokio::select! {
            span = rx.recv() => span,
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(first) = first else { break };
        let mut bytes = estimated_bytes(&first);
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + delay;
        // Takes what is queued, up to the batch's limits; true when the batch is full.
        let mut take = |batch: &mut Vec<SpanRecord>, rx: &mut mpsc::Receiver<SpanRecord>| {
            while batch.len() < cfg.batch_max_spans && bytes < cfg.batch_max_bytes {
                match rx.try_recv() {
                    Ok(s) => {
                        bytes += estimated_bytes(&s);
                        batch.push(s);
                    }
                    Err(_) => return false,
                }
            }
            true
        };
        // Not woken per span: the batch's delay, spans queued (`batch_ready`) or stop.
        while !take(&mut batch, &mut rx) {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    take(&mut batch, &mut rx);
                    break;
                }
                _ = shared.batch_ready.notified() => {}
                _ = stop.wait_for(|s| *s) => {
                    take(&mut batch, &mut rx);
                    break;
                }
            }
        }
        for group in by_origin(batch) {
            send_or_spool(&out, &shared, group, timeout).await;
        }
        if *stop.borrow() {
            break;
        }
    }
    // Shutdown: no more intake; export what is queued within the deadline, spool the rest.
    rx.close();
    let deadline = Instant::now() + Duration::from_millis(cfg.shutdown_export_ms);
    let mut rest = Vec::new();
    while let Ok(span) = rx.try_recv() {
        rest.push(span);
    }
    for chunk in rest.chunks(cfg.batch_max_spans) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !shared.healthy.load(Ordering::Acquire) {
            let (s, chunk) = (shared.clone(), chunk.to_vec());
            let _ = tokio::task::spawn_blocking(move || {
                s.spill(&chunk);
            })
            .await;
            continue;
        }
        for group in by_origin(chunk.to_vec()) {
            send_or_spool(&out, &shared, group, timeout.min(left)).await;
        }
    }
    let spool = shared.spool();
    if let Err(e) = tokio::task::spawn_blocking(move || spool.flush())
        .await
        .unwrap_or(Ok(()))
    {
        tracing::error!(error = %e, "spool flush at shutdown failed");
    }
}

async fn send_or_spool(out: &Out, shared: &Arc<Shared>, batch: Vec<SpanRecord>, timeout: Duration) {
    let n = batch.len() as u64;
    if shared.healthy.load(Ordering::Acquire) {
        match export(out, &batch, &shared.metrics, timeout).await {
            Ok(()) => {
                shared.metrics.spans_exported.inc_by(n);
                shared.settle(n);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, spans = n, "export failed; spooling the batch and backing off");
                shared.healthy.store(false, Ordering::Release);
            }
        }
    }
    let shared = shared.clone();
    let _ = tokio::task::spawn_blocking(move || {
        shared.spill(&batch);
        if let Err(e) = shared.spool().flush() {
            tracing::warn!(error = %e, "spool flush failed");
        }
    })
    .await;
}

/// Decides idle traces for the tail sampler and sends the kept ones on.
async fn decide_traces(
    sampler: Arc<TailSampler>,
    handle: ExportHandle,
    mut stop: watch::Receiver<bool>,
) {
    let tick =
        (sampler.decision_wait() / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(tick) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        let decided = if stopping {
            sampler.close()
        } else {
            sampler.decide(Instant::now(), false)
        };
        let m = &handle.shared.metrics;
        m.traces_sampled("keep", decided.kept_traces);
        m.traces_sampled("drop", decided.dropped_traces);
        m.spans_sampled_out.inc_by(decided.dropped_spans);
        for span in decided.kept {
            handle.enqueue(span);
        }
        if stopping {
            break;
        }
    }
}

/// Writes overflowed spans to the spool, off the request path; on shutdown, whatever is left.
async fn spiller(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let stopping = tokio::select! {
            _ = shared.spill_wakeup.notified() => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        let spans = std::mem::take(&mut *shared.overflow.lock().unwrap_or_else(|e| e.into_inner()));
        if !spans.is_empty() {
            let s = shared.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for chunk in spans.chunks(512) {
                    s.spill(chunk);
                }
                if let Err(e) = s.spool().flush() {
                    tracing::warn!(error = %e, "spool flush failed");
                }
            })
            .await;
        }
        if stopping {
            break;
        }
    }
}

fn jittered(d: Duration) -> Duration {
    let r = u64::from_be_bytes(crate::trace::context::random_span_id());
    // 50% to 100% of the backoff.
    let ms = d.as_millis() as u64;
    Duration::from_millis(ms / 2 + r % (ms / 2 + 1))
}

async fn replayer(
    out: Arc<Out>,
    shared: Arc<Shared>,
    cfg: ExportConfig,
    mut stop: watch::Receiver<bool>,
) {
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let initial = Duration::from_millis(200);
    let max = Duration::from_millis(cfg.replay_backoff_max_ms.max(200));
    let mut backoff = initial;
    let mut next_try = tokio::time::Instant::now();
    let mut next_maintenance = tokio::time::Instant::now();
    loop {
        if *stop.borrow() {
            break;
        }
        let now = tokio::time::Instant::now();
        if now >= next_maintenance {
            let s = shared.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let spool = s.spool();
                if let Err(e) = spool.trim(unix_time_ms()) {
                    tracing::warn!(error = %e, "spool trim failed");
                }
                s.count_drops(spool.as_ref());
                s.update_gauges();
            })
            .await;
            next_maintenance = now + Duration::from_secs(5);
        }
        let spool = shared.spool();
        // Every call on the spool is made off this thread: on a failed disk one may block
        // (sled holds its lock across a write), and the batcher shares the thread.
        let look = spool.clone();
        let waiting = match tokio::task::spawn_blocking(move || look.stats().items > 0).await {
            Ok(waiting) => waiting,
            Err(_) => break,
        };
        if !waiting {
            // Nothing spooled: the live path may try the collector again.
            shared.healthy.store(true, Ordering::Release);
            backoff = initial;
        }
        if !waiting || now < next_try {
            let wake = if waiting {
                next_try
            } else {
                now + Duration::from_secs(1)
            };
            tokio::select! {
                _ = shared.replay.notified(), if !waiting => {}
                _ = tokio::time::sleep_until(wake.min(next_maintenance)) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            continue;
        }
        let peek = spool.clone();
        let entries = match tokio::task::spawn_blocking(move || peek.peek_oldest(1)).await {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "spool read failed");
                next_try = now + jittered(backoff);
                continue;
            }
            Err(_) => break,
        };
        let Some(entry) = entries.into_iter().next() else {
            continue;
        };
        let spans: Vec<SpanRecord> = match serde_json::from_slice(&entry.payload) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "a spooled batch does not decode; dropping it");
                shared
                    .metrics
                    .spans_dropped("corrupt", u64::from(entry.spans));
                let s = spool.clone();
                let _ = tokio::task::spawn_blocking(move || s.ack(entry.id)).await;
                continue;
            }
        };
        let id = entry.id;
        // Entries are written one origin each (`write_to_spool`); one from before origins
        // existed has only the gateway's spans.
        match export(&out, &spans, &shared.metrics, timeout).await {
            Ok(()) => {
                let s = spool.clone();
                match tokio::task::spawn_blocking(move || s.ack(id)).await {
                    Ok(Err(SpoolError::Io(e))) => {
                        // Replaying a batch that cannot be deleted would send it again and
                        // again: the disk spool is parked (its batches replay after a restart)
                        // and a memory spool takes over, as when an append fails.
                        tracing::error!(
                            error = %e,
                            "cannot delete an exported batch (it will be sent again after a restart); degrading to an in-memory spool"
                        );
                        shared.degrade(&spool);
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "cannot delete an exported batch; it may be sent again");
                    }
                    _ => {}
                }
                shared.metrics.spans_replayed.inc_by(spans.len() as u64);
                shared.healthy.store(true, Ordering::Release);
                backoff = initial;
                next_try = tokio::time::Instant::now();
            }
            Err(e) => {
                tracing::debug!(error = %e, attempts = entry.attempts + 1, "replay failed; backing off");
                shared.healthy.store(false, Ordering::Release);
                let (s, sh) = (spool.clone(), shared.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    let _ = s.fail(id);
                    sh.count_drops(s.as_ref());
                })
                .await;
                next_try = tokio::time::Instant::now() + jittered(backoff);
                backoff = (backoff * 2).min(max);
            }
        }
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || s.update_gauges()).await;
    }
}
