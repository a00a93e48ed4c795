//! The export pipeline when the disk fails: a fault-injecting spool (writes fail as on a full
//! disk; dropping or flushing it blocks, as sled's does on a failed disk) driven through
//! `ExportHandle` with a real OTLP exporter and the in-process collector; and the real binary
//! with its data dir on a tiny tmpfs, SIGTERM included.

mod common;

use std::{
    io,
    process::{Command, Stdio},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    otlp::{Collector, Mode, Transport},
    *,
};
use sidetrace::{
    Config,
    export::{
        otlp,
        pipeline::ExportHandle,
        spool::{
            DropCounts, Entry, EntryId, FailOutcome, MemorySpool, Spool, SpoolError, SpoolLimits,
            SpoolStats,
        },
    },
    metrics::Metrics,
    trace::span::{SpanRecord, SpanStatus, Telemetry},
};

/// A gate that blocked threads wait on until the test opens it (also when the test fails, so
/// a stuck runtime worker can finish and the test process can end).
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn wait(&self) {
        let (open, cv) = &*self.0;
        let mut open = open.lock().unwrap_or_else(|e| e.into_inner());
        while !*open {
            open = cv.wait(open).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Opens the gate after `after` at the latest: with a bug that blocks every runtime worker,
    /// even the test's own deadlines cannot fire, so this turns such a hang into a failure.
    fn open_at_the_latest_after(&self, after: Duration) {
        let gate = self.clone();
        std::thread::spawn(move || {
            let (open, cv) = &*gate.0;
            let guard = open.lock().unwrap_or_else(|e| e.into_inner());
            let (mut guard, _) = cv
                .wait_timeout_while(guard, after, |open| !*open)
                .unwrap_or_else(|e| e.into_inner());
            *guard = true;
            cv.notify_all();
        });
    }

    fn open(&self) {
        let (open, cv) = &*self.0;
        *open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
    }
}

/// Opens the gate when the test ends, passed or failed.
struct OpenOnDrop(Gate);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// A spool on a disk that fails: once `full` is set, writes fail as on a full disk; once
/// `stuck` is set, `flush` blocks until the gate opens; dropping it always blocks until the gate
/// opens, as sled's last handle does when its final flush cannot complete.
struct FailingDiskSpool {
    inner: MemorySpool,
    full: Arc<AtomicBool>,
    stuck: Arc<AtomicBool>,
    gate: Gate,
}

impl FailingDiskSpool {
    fn check(&self) -> Result<(), SpoolError> {
        if self.full.load(Ordering::SeqCst) {
            return Err(SpoolError::Io(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device (injected)",
            )));
        }
        Ok(())
    }
}

impl Drop for FailingDiskSpool {
    fn drop(&mut self) {
        self.gate.wait();
    }
}

impl Spool for FailingDiskSpool {
    fn append(&self, payload: &[u8], spans: u32, now_ms: u64) -> Result<EntryId, SpoolError> {
        self.check()?;
        self.inner.append(payload, spans, now_ms)
    }
    fn peek_oldest(&self, max_entries: usize) -> Result<Vec<Entry>, SpoolError> {
        self.inner.peek_oldest(max_entries)
    }
    fn ack(&self, id: EntryId) -> Result<(), SpoolError> {
        self.check()?;
        self.inner.ack(id)
    }
    fn fail(&self, id: EntryId) -> Result<FailOutcome, SpoolError> {
        self.check()?;
        self.inner.fail(id)
    }
    fn trim(&self, now_ms: u64) -> Result<(), SpoolError> {
        self.inner.trim(now_ms)
    }
    fn stats(&self) -> SpoolStats {
        self.inner.stats()
    }
    fn take_dropped(&self) -> DropCounts {
        self.inner.take_dropped()
    }
    fn flush(&self) -> Result<(), SpoolError> {
        if self.stuck.load(Ordering::SeqCst) {
            self.gate.wait();
        }
        self.check()
    }
    fn durable(&self) -> bool {
        true
    }
}

const LIMITS: SpoolLimits = SpoolLimits {
    max_bytes: 64 << 20,
    max_age_ms: 3_600_000,
    max_attempts: 1_000,
};

/// Calls that finish while the export shuts down: each span is exported or counted as dropped,
/// none is left in a buffer no one reads (the queued-spans gauge would stay above 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_that_finish_during_shutdown_are_each_exported_or_counted() {
    let gate = Gate::default();
    gate.open_at_the_latest_after(Duration::from_secs(45));
    let collector = Collector::start(Transport::Grpc).await;
    // The batcher's drain ends well within shutdown's deadline: no task is abandoned.
    let p = start_pipeline(&collector, &gate, "shutdown_export_ms = 300\n");
    let _open_at_end = OpenOnDrop(gate.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let submitters: Vec<_> = (0..2u64)
        .map(|t| {
            let (handle, stop) = (p.handle.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut n, mut after) = (0, 0);
                // Until shutdown is over, then ten more: calls that finish after it.
                while after < 10 {
                    after += u64::from(stop.load(Ordering::SeqCst));
                    handle.submit(span(t << 32 | n));
                    n += 1;
                    // Paced like calls, not a flood.
                    std::thread::sleep(Duration::from_micros(20));
                }
                n
            })
        })
        .collect();
    wait_metric(&p.metrics, "sidetrace_spans_exported_total", 100.0).await;
    let shutdown = tokio::time::timeout(
        Duration::from_secs(30),
        p.tasks.shutdown(Duration::from_millis(500)),
    );
    assert!(shutdown.await.is_ok(), "export shutdown hung");
    stop.store(true, Ordering::SeqCst);
    let submitted: u64 = submitters.into_iter().map(|s| s.join().unwrap()).sum();
    let m = |name| metric(&p.metrics, name);
    assert_eq!(m("sidetrace_spans_received_total"), submitted as f64);
    assert_eq!(m("sidetrace_export_queued_spans"), 0.0);
    // Spans that came after the batcher stopped went to the (test's, durable) spool, where a
    // restart would replay them; a replayed span counts as spooled and as replayed.
    assert_eq!(
        m("sidetrace_spans_exported_total")
            + m("sidetrace_spans_spooled_total")
            + m("sidetrace_spans_dropped_total"),
        submitted as f64
    );
    assert!(
        m("sidetrace_spans_dropped_total{reason=\"shutdown\"}") >= 20.0,
        "the spans that came after shutdown were not counted"
    );
    collector.stop().await;
}

struct Pipeline {
    handle: ExportHandle,
    tasks: sidetrace::export::pipeline::ExportTasks,
    metrics: Arc<Metrics>,
    full: Arc<AtomicBool>,
    stuck: Arc<AtomicBool>,
}

fn start_pipeline(collector: &Collector, gate: &Gate, extra: &str) -> Pipeline {
    let text = format!(
        "[export]\nendpoint = {:?}\nprotocol = \"grpc\"\ntimeout_ms = 300\nbatch_delay_ms = 20\nreplay_backoff_max_ms = 400\n{extra}",
        collector.endpoint()
    );
    let config = Config::from_toml(&text, "test.toml").unwrap();
    let telemetry = Telemetry::from_env(Vec::new(), "test-instance");
    let tls = sidetrace::tls::client_config(&config.upstream).unwrap();
    let (full, stuck) = (Arc::new(AtomicBool::new(false)), Arc::default());
    let spool = FailingDiskSpool {
        inner: MemorySpool::new(LIMITS),
        full: full.clone(),
        stuck: Arc::clone(&stuck),
        gate: gate.clone(),
    };
    let metrics = Arc::new(Metrics::new());
    // The test keeps no handle on the spool: the pipeline holds the only ones.
    let (handle, tasks) = ExportHandle::start(
        &config.export,
        || otlp::build(&config.export, &telemetry, tls),
        Arc::new(spool),
        LIMITS,
        &telemetry,
        metrics.clone(),
        None,
    )
    .unwrap();
    Pipeline {
        handle,
        tasks,
        metrics,
        full,
        stuck,
    }
}

fn span(n: u64) -> SpanRecord {
    let mut trace_id = [0u8; 16];
    trace_id[8..].copy_from_slice(&(n + 1).to_be_bytes());
    SpanRecord {
        trace_id,
        span_id: (n + 1).to_be_bytes(),
        parent_span_id: None,
        parent_is_remote: false,
        flags: 1,
        trace_state: None,
        name: format!("chat test-{n}"),
        kind: "client".into(),
        start_unix_nanos: 1_700_000_000_000_000_000,
        end_unix_nanos: 1_700_000_000_100_000_000,
        status: SpanStatus::Unset,
        attributes: Vec::new(),
        events: Vec::new(),
        links: Vec::new(),
        origin: None,
    }
}

fn metric(metrics: &Metrics, name: &str) -> f64 {
    metric_in(&metrics.encode(), name)
}

async fn wait_metric(metrics: &Metrics, name: &str, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = metric(metrics, name);
        if v >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed at {v}, wanted {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn span_hex(n: u64) -> String {
    (n + 1)
        .to_be_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_spool_degrades_to_memory_export_resumes_once_the_collector_is_back() {
    let gate = Gate::default();
    gate.open_at_the_latest_after(Duration::from_secs(45));
    let collector = Collector::start(Transport::Grpc).await;
    collector.set_mode(Mode::Status {
        code: 503,
        retry_after_s: None,
    });
    let p = start_pipeline(&collector, &gate, "");
    // Declared after the pipeline, so it opens the gate before the pipeline is dropped.
    let _open_at_end = OpenOnDrop(gate.clone());
    // The collector is down: the first spans go to the (still working) disk spool and the
    // replayer starts probing it, holding the spool while it backs off.
    for n in 0..10 {
        p.handle.submit(span(n));
    }
    wait_metric(&p.metrics, "sidetrace_spans_spooled_total", 10.0).await;
    wait_metric(&p.metrics, "sidetrace_export_attempts_total", 2.0).await;
    // The disk fills up: the next spans degrade the spool to memory.
    p.full.store(true, Ordering::SeqCst);
    for n in 10..20 {
        p.handle.submit(span(n));
    }
    wait_metric(&p.metrics, "sidetrace_spool_degraded", 1.0).await;
    wait_metric(&p.metrics, "sidetrace_spans_spooled_total", 20.0).await;

    // The collector is back: what the memory spool holds is replayed, later spans exported.
    collector.set_mode(Mode::Accept);
    let received = collector.wait_for_spans(10, Duration::from_secs(20)).await;
    let got: Vec<&str> = received.iter().map(|s| s.span_id.as_str()).collect();
    for n in 10..20 {
        assert!(
            got.contains(&span_hex(n).as_str()),
            "spooled span {n} was not replayed"
        );
    }
    wait_metric(&p.metrics, "sidetrace_spans_replayed_total", 10.0).await;
    for n in 20..25 {
        p.handle.submit(span(n));
    }
    let received = collector.wait_for_spans(15, Duration::from_secs(20)).await;
    let got: Vec<&str> = received.iter().map(|s| s.span_id.as_str()).collect();
    for n in 20..25 {
        assert!(
            got.contains(&span_hex(n).as_str()),
            "span {n}, submitted after the collector came back, was not exported"
        );
    }

    // Everything the collector got was also acknowledged (nothing left in the memory spool).
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&p.metrics, "sidetrace_spans_exported_total")
        + metric(&p.metrics, "sidetrace_spans_replayed_total")
        < 15.0
    {
        assert!(Instant::now() < deadline, "exports were not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Shutdown ends although the retired disk spool can never be closed.
    let shutdown = tokio::time::timeout(
        Duration::from_secs(30),
        p.tasks.shutdown(Duration::from_millis(500)),
    );
    assert!(shutdown.await.is_ok(), "export shutdown hung");
    assert_eq!(metric(&p.metrics, "sidetrace_spans_dropped_total"), 0.0);
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_stuck_on_the_disk_is_bounded_and_counts_the_spans_it_leaves_behind() {
    let gate = Gate::default();
    gate.open_at_the_latest_after(Duration::from_secs(45));
    let collector = Collector::start(Transport::Grpc).await;
    collector.set_mode(Mode::Refuse);
    let p = start_pipeline(&collector, &gate, "batch_max_spans = 5\n");
    let _open_at_end = OpenOnDrop(gate.clone());
    // The export fails, the batch goes to the spool, and the flush after it hangs on the disk:
    // the batcher is stuck, and what comes next waits in the queue.
    p.stuck.store(true, Ordering::SeqCst);
    for n in 0..5 {
        p.handle.submit(span(n));
    }
    wait_metric(&p.metrics, "sidetrace_spans_spooled_total", 1.0).await;
    for n in 5..12 {
        p.handle.submit(span(n));
    }
    let spooled = metric(&p.metrics, "sidetrace_spans_spooled_total");
    let shutdown = tokio::time::timeout(
        Duration::from_secs(30),
        p.tasks.shutdown(Duration::from_millis(200)),
    );
    assert!(shutdown.await.is_ok(), "export shutdown hung");
    // The spooled spans are on disk; the queued ones are lost, and say so.
    assert_eq!(
        metric(
            &p.metrics,
            "sidetrace_spans_dropped_total{reason=\"shutdown\"}"
        ),
        12.0 - spooled
    );
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_batch_that_cannot_be_deleted_is_not_sent_again_and_again() {
    let gate = Gate::default();
    gate.open_at_the_latest_after(Duration::from_secs(45));
    let collector = Collector::start(Transport::Grpc).await;
    collector.set_mode(Mode::Status {
        code: 503,
        retry_after_s: None,
    });
    let p = start_pipeline(&collector, &gate, "");
    let _open_at_end = OpenOnDrop(gate.clone());
    for n in 0..5 {
        p.handle.submit(span(n));
    }
    wait_metric(&p.metrics, "sidetrace_spans_spooled_total", 5.0).await;
    // The disk fills up while the batches wait; then the collector is back. Replay works, but
    // no exported batch can be deleted.
    p.full.store(true, Ordering::SeqCst);
    collector.set_mode(Mode::Accept);
    wait_metric(&p.metrics, "sidetrace_spool_degraded", 1.0).await;
    let replayed = collector.spans().len();
    assert!(replayed >= 1, "nothing was replayed");
    // The pipeline moved on: a later span is exported, and the replayed ones came once.
    p.handle.submit(span(5));
    let received = collector
        .wait_for_spans(replayed + 1, Duration::from_secs(20))
        .await;
    for n in 0..6 {
        let times = received.iter().filter(|s| s.span_id == span_hex(n)).count();
        assert!(times <= 1, "span {n} arrived {times} times");
    }
    assert!(received.iter().any(|s| s.span_id == span_hex(5)));
    let shutdown = tokio::time::timeout(
        Duration::from_secs(30),
        p.tasks.shutdown(Duration::from_millis(500)),
    );
    assert!(shutdown.await.is_ok(), "export shutdown hung");
    collector.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The real binary, its data dir on a 512 KiB tmpfs.

/// A tmpfs mounted for the test and unmounted when it ends.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(out) if out.status.success() => Tmpfs { dir },
            Ok(out) => panic!(
                "this test needs a small tmpfs (run as root, or where mount -t tmpfs is allowed): mount failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => panic!("this test needs a small tmpfs: cannot run mount: {e}"),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a gateway killed a moment ago may still hold files open.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

async fn wait_for(admin: u16, what: &str, deadline: Duration, ok: impl Fn(&str) -> bool) {
    let until = Instant::now() + deadline;
    loop {
        if let Some(text) = admin_text(admin, "/metrics").await
            && ok(&text)
        {
            return;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_data_dir_on_a_full_tmpfs_export_resumes_and_sigterm_exits() {
    let tmpfs = Tmpfs::mount("512k");
    let body = String::from_utf8(fixture("openai/chat_nonstream.json")).unwrap();
    let mock = Mock::start(move |_| Reply::json(200, &body)).await;
    let collector = Collector::start(Transport::Grpc).await;
    collector.set_mode(Mode::Status {
        code: 503,
        retry_after_s: None,
    });
    let (port, admin) = (restartable_port(), restartable_port());
    let mut c = Command::new(env!("CARGO_BIN_EXE_sidetrace"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SIDETRACE_") || k.starts_with("OTEL_") {
            c.env_remove(k);
        }
    }
    let mut child = c
        .env("SIDETRACE_INGEST_HTTP_LISTEN", "127.0.0.1:0")
        .env("SIDETRACE_INGEST_GRPC_LISTEN", "127.0.0.1:0")
        .arg("serve")
        .env("SIDETRACE_LISTEN", format!("127.0.0.1:{port}"))
        .env("SIDETRACE_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("SIDETRACE_DATA_DIR", tmpfs.dir.path())
        .env("SIDETRACE_OPENAI_BASE_URL", mock.url())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "300")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill the child if an assertion fails, so a hung gateway does not outlive the test.
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
    let _kill = KillOnDrop(child.id());
    wait_for(
        admin,
        "the gateway to come up",
        Duration::from_secs(15),
        |_| true,
    )
    .await;

    let calls = 1_200;
    let client = client();
    for _ in 0..calls {
        let req = http::Request::post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
            .body(full_body(
                r#"{"model":"o4-mini","messages":[{"role":"user","content":"hi"}]}"#,
            ))
            .unwrap();
        let r = client.request(req).await.unwrap();
        assert_eq!(r.status(), http::StatusCode::OK);
    }
    wait_for(
        admin,
        "the spool to degrade to memory",
        Duration::from_secs(30),
        |t| metric_in(t, "sidetrace_spool_degraded") == 1.0,
    )
    .await;

    collector.set_mode(Mode::Accept);
    // What the memory spool holds is replayed once the collector is back.
    wait_for(
        admin,
        "spooled spans to be replayed",
        Duration::from_secs(60),
        |t| metric_in(t, "sidetrace_spans_replayed_total") >= 1.0,
    )
    .await;
    wait_for(
        admin,
        "the memory spool to drain",
        Duration::from_secs(60),
        |t| metric_in(t, "sidetrace_spool_items") == 0.0,
    )
    .await;
    let before = collector.spans().len();
    assert!(before > 0, "no span reached the collector");
    // Later calls are exported too.
    for _ in 0..10 {
        let req = http::Request::post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
            .body(full_body(
                r#"{"model":"o4-mini","messages":[{"role":"user","content":"hi"}]}"#,
            ))
            .unwrap();
        client.request(req).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while collector.spans().len() < before + 10 {
        assert!(
            Instant::now() < deadline,
            "calls made after the collector came back were not exported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let status = sigterm_and_wait(&mut child, Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0));
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_span_that_comes_after_the_export_shut_down_is_counted_not_left_in_a_buffer() {
    let gate = Gate::default();
    gate.open_at_the_latest_after(Duration::from_secs(45));
    let collector = Collector::start(Transport::Grpc).await;
    let p = start_pipeline(&collector, &gate, "");
    // The test's spool blocks when dropped until the gate opens.
    let _open_at_end = OpenOnDrop(gate.clone());
    p.handle.submit(span(0));
    wait_metric(&p.metrics, "sidetrace_spans_exported_total", 1.0).await;
    let shutdown = tokio::time::timeout(
        Duration::from_secs(30),
        p.tasks.shutdown(Duration::from_millis(500)),
    );
    assert!(shutdown.await.is_ok(), "export shutdown hung");
    // A call that finished late (a background read of a stream its client left).
    p.handle.submit(span(1));
    assert_eq!(
        metric(
            &p.metrics,
            "sidetrace_spans_dropped_total{reason=\"shutdown\"}"
        ),
        1.0
    );
    collector.stop().await;
}
