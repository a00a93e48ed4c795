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
    otlp::{self, Exporter},
    spool::{MemorySpool, Spool, SpoolError, SpoolLimits, unix_time_ms},
};
use crate::{config::ExportConfig, metrics::Metrics, trace::span::SpanRecord};

/// What the request path holds: a sender into the queue.
#[derive(Clone)]
pub struct ExportHandle {
    tx: mpsc::Sender<SpanRecord>,
    shared: Arc<Shared>,
    sampler: Option<Arc<TailSampler>>,
}

struct Shared {
    spool: RwLock<Arc<dyn Spool>>,
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
}

/// The running tasks; `shutdown` exports what it can within the deadline and spools the rest.
pub struct ExportTasks {
    stop: watch::Sender<bool>,
    sampler: Option<(watch::Sender<bool>, JoinHandle<()>)>,
    batcher: JoinHandle<()>,
    replayer: JoinHandle<()>,
    spiller: JoinHandle<()>,
}

impl ExportHandle {
    /// Starts the pipeline. `spool` comes from `spool::open_or_degrade`.
    pub fn start(
        cfg: &ExportConfig,
        exporter: Exporter,
        spool: Arc<dyn Spool>,
        limits: SpoolLimits,
        scope: InstrumentationScope,
        metrics: Arc<Metrics>,
        sampler: Option<TailSampler>,
    ) -> (ExportHandle, ExportTasks) {
        let (tx, rx) = mpsc::channel(cfg.queue_spans);
        let shared = Arc::new(Shared {
            spool: RwLock::new(spool),
            limits,
            healthy: AtomicBool::new(true),
            replay: Notify::new(),
            metrics,
            overflow: std::sync::Mutex::new(Vec::new()),
            overflow_max: cfg.queue_spans,
            spill_wakeup: Notify::new(),
        });
        shared.update_gauges();
        let exporter = Arc::new(exporter);
        let (stop, stopped) = watch::channel(false);
        let batcher = tokio::spawn(batcher(
            rx,
            exporter.clone(),
            shared.clone(),
            scope.clone(),
            cfg.clone(),
            stopped.clone(),
        ));
        let replayer = tokio::spawn(replayer(
            exporter,
            shared.clone(),
            scope,
            cfg.clone(),
            stopped.clone(),
        ));
        let spiller = tokio::spawn(spiller(shared.clone(), stopped));
        let sampler = sampler.map(Arc::new);
        let handle = ExportHandle {
            tx,
            shared,
            sampler: sampler.clone(),
        };
        let sampler_task = sampler.map(|s| {
            let (stop, stopped) = watch::channel(false);
            (
                stop,
                tokio::spawn(decide_traces(s, handle.clone(), stopped)),
            )
        });
        (
            handle,
            ExportTasks {
                stop,
                sampler: sampler_task,
                batcher,
                replayer,
                spiller,
            },
        )
    }

    /// Hands a finished span to the exporter. Never waits and never touches the disk: a full
    /// queue sends the span to the overflow buffer, which the spiller writes to the spool.
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

    fn enqueue(&self, span: SpanRecord) {
        match self.tx.try_send(span) {
            Ok(()) => {}
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
                    self.shared.metrics.spans_dropped("queue_full", 1);
                }
            }
        }
    }
}

impl ExportTasks {
    /// Stops intake, exports the queue within `deadline` (or spools it), flushes the spool.
    pub async fn shutdown(self, deadline: Duration) {
        // Traces still waiting for a sampling decision are decided now, before the queue drains.
        if let Some((stop, task)) = self.sampler {
            let _ = stop.send(true);
            let _ = task.await;
        }
        let _ = self.stop.send(true);
        if tokio::time::timeout(deadline + Duration::from_secs(2), self.batcher)
            .await
            .is_err()
        {
            tracing::error!("export did not finish within the shutdown deadline");
        }
        let _ = self.replayer.await;
        let _ = self.spiller.await;
    }
}

impl Shared {
    fn spool(&self) -> Arc<dyn Spool> {
        self.spool.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Writes spans to the spool. A storage failure (full disk, broken database) degrades the
    /// spool to memory, loudly, rather than losing the spans or stopping the proxy.
    fn spill(&self, spans: &[SpanRecord]) {
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
                let memory: Arc<dyn Spool> = Arc::new(MemorySpool::new(self.limits));
                *self.spool.write().unwrap_or_else(|e| e.into_inner()) = memory.clone();
                self.metrics.spool_degraded.set(1);
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
                    _ => 9,
                }
                + 6
        })
        .sum();
    s.name.len() + attrs + 96
}

async fn export(
    exporter: &Exporter,
    spans: &[SpanRecord],
    scope: &InstrumentationScope,
    metrics: &Metrics,
    timeout: Duration,
) -> Result<(), String> {
    let batch = spans.iter().map(|s| otlp::span_data(s, scope)).collect();
    let started = Instant::now();
    // The exporter has its own timeout; ours is the backstop if it does not fire.
    let result =
        tokio::time::timeout(timeout + Duration::from_secs(1), exporter.export(batch)).await;
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
    exporter: Arc<Exporter>,
    shared: Arc<Shared>,
    scope: InstrumentationScope,
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
        while batch.len() < cfg.batch_max_spans && bytes < cfg.batch_max_bytes {
            tokio::select! {
                span = rx.recv() => match span {
                    Some(s) => {
                        bytes += estimated_bytes(&s);
                        batch.push(s);
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        send_or_spool(&exporter, &shared, &scope, batch, timeout).await;
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
            shared.spill(chunk);
            continue;
        }
        send_or_spool(
            &exporter,
            &shared,
            &scope,
            chunk.to_vec(),
            timeout.min(left),
        )
        .await;
    }
    let spool = shared.spool();
    if let Err(e) = tokio::task::spawn_blocking(move || spool.flush())
        .await
        .unwrap_or(Ok(()))
    {
        tracing::error!(error = %e, "spool flush at shutdown failed");
    }
}

async fn send_or_spool(
    exporter: &Exporter,
    shared: &Arc<Shared>,
    scope: &InstrumentationScope,
    batch: Vec<SpanRecord>,
    timeout: Duration,
) {
    let n = batch.len() as u64;
    if shared.healthy.load(Ordering::Acquire) {
        match export(exporter, &batch, scope, &shared.metrics, timeout).await {
            Ok(()) => {
                shared.metrics.spans_exported.inc_by(n);
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
        let decided = sampler.decide(Instant::now(), stopping);
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
    exporter: Arc<Exporter>,
    shared: Arc<Shared>,
    scope: InstrumentationScope,
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
        let waiting = spool.stats().items > 0;
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
        match export(&exporter, &spans, &scope, &shared.metrics, timeout).await {
            Ok(()) => {
                let s = spool.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || s.ack(id)).await {
                    tracing::error!(error = %e, "cannot delete an exported batch; it may be sent again");
                }
                shared.metrics.spans_replayed.inc_by(spans.len() as u64);
                shared.healthy.store(true, Ordering::Release);
                backoff = initial;
                next_try = tokio::time::Instant::now();
            }
            Err(e) => {
                tracing::debug!(error = %e, attempts = entry.attempts + 1, "replay failed; backing off");
                shared.healthy.store(false, Ordering::Release);
                let s = spool.clone();
                let _ = tokio::task::spawn_blocking(move || s.fail(id)).await;
                shared.count_drops(spool.as_ref());
                next_try = tokio::time::Instant::now() + jittered(backoff);
                backoff = (backoff * 2).min(max);
            }
        }
        shared.update_gauges();
    }
}
