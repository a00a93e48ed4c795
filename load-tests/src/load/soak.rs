//! The soak: mixed load against a running gateway for a set time (streams, whole answers,
//! client cancels, slow request bodies, slow readers, stalled bodies) while an OTLP/HTTP
//! collector of its own goes down and up; samples the gateway's memory, descriptors and span
//! counters, then checks every call is accounted for (exported, spooled or counted dropped) and
//! writes a markdown report. Loopback only; every loop ends by its deadline and a count bound.

use std::{
    collections::{BTreeMap, HashSet},
    convert::Infallible,
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use clap::Args;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinSet,
};

use crate::counters::{Page, Reader};

#[derive(Args)]
pub struct SoakArgs {
    /// The gateway's proxy listener, e.g. http://127.0.0.1:4000 (loopback only).
    #[arg(long)]
    url: String,
    /// The gateway's metrics page, e.g. http://127.0.0.1:4001/metrics.
    #[arg(long)]
    metrics: String,
    /// The gateway's PID, for its memory and open descriptors from /proc.
    #[arg(long)]
    pid: u32,
    /// Loopback port of the flapping OTLP/HTTP collector (the gateway's export endpoint). Take
    /// it below the ephemeral range (`bench-load ports --restartable`): it is bound again after
    /// each outage.
    #[arg(long)]
    sink_port: u16,
    /// Length of the load, in minutes.
    #[arg(long, default_value_t = 20.0)]
    minutes: f64,
    /// The collector is up this long, then down for --down-secs, in turn (it starts up).
    #[arg(long, default_value_t = 50)]
    up_secs: u64,
    #[arg(long, default_value_t = 25)]
    down_secs: u64,
    /// Concurrent clients per kind of call.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Pause between two calls of one client, in ms (keeps the 2-core machine usable).
    #[arg(long, default_value_t = 20)]
    pause_ms: u64,
    /// Seconds between samples of memory, descriptors and counters.
    #[arg(long, default_value_t = 10)]
    sample_secs: u64,
    /// After the load, with the collector up for good: longest wait for the spool to drain.
    #[arg(long, default_value_t = 180)]
    drain_secs: u64,
    /// The markdown report.
    #[arg(long)]
    out: PathBuf,
}

/// The kinds of calls, in report order.
const KINDS: [&str; 7] = [
    "stream",
    "anthropic_stream",
    "whole",
    "cancel",
    "slow_body",
    "slow_reader",
    "stalled_body",
];

/// Each client stops after this many calls even if time is left (a bound for tiny pauses).
const MAX_CALLS_PER_CLIENT: u64 = 2_000_000;

#[derive(Default)]
struct KindCount {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    /// Failures by reason ("status 503", "io: ...", "timeout"), first words only.
    reasons: Mutex<BTreeMap<String, u64>>,
}

impl KindCount {
    fn fail(&self, reason: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let reason: String = reason.chars().take(60).collect();
        *self
            .reasons
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_default() += 1;
    }
}

/// What the collector received: unique spans by (trace id, span id), and repeats (a batch
/// whose answer was lost when the collector went down is sent again from the spool).
#[derive(Default)]
struct Sink {
    spans: Mutex<HashSet<[u8; 24]>>,
    duplicates: AtomicU64,
    requests: AtomicU64,
    undecodable: AtomicU64,
    outages: AtomicU64,
}

impl Sink {
    fn unique(&self) -> u64 {
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).len() as u64
    }
}

struct Sample {
    at_secs: u64,
    rss_kib: u64,
    fds: u64,
    sink_unique: u64,
    received: f64,
    exported: f64,
    spool_items: f64,
    dropped: f64,
    active: f64,
}

pub fn main(args: SoakArgs) -> Result<std::process::ExitCode, String> {
    let base = crate::loopback_uri(&args.url)?;
    let metrics = crate::loopback_uri(&args.metrics)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(soak(args, base, metrics))
}

async fn soak(args: SoakArgs, base: Uri, metrics: Uri) -> Result<std::process::ExitCode, String> {
    let started = Instant::now();
    let load_for = Duration::from_secs_f64((args.minutes * 60.0).clamp(1.0, 24.0 * 3600.0));
    let deadline = started + load_for;
    let counts: Arc<BTreeMap<&'static str, KindCount>> =
        Arc::new(KINDS.iter().map(|k| (*k, KindCount::default())).collect());
    let sink = Arc::new(Sink::default());
    let collector_up_for_good = Arc::new(AtomicBool::new(false));
    let sink_addr = SocketAddr::from(([127, 0, 0, 1], args.sink_port));
    let flap = tokio::spawn(flapping_collector(
        sink_addr,
        sink.clone(),
        Duration::from_secs(args.up_secs.max(1)),
        Duration::from_secs(args.down_secs),
        deadline,
        collector_up_for_good.clone(),
    ));

    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build(HttpConnector::new());
    let addr = authority_addr(&base)?;
    let mut load = JoinSet::new();
    for kind in KINDS {
        for worker in 0..args.workers.max(1) {
            let client = client.clone();
            let base = base.clone();
            let counts = counts.clone();
            let pause = Duration::from_millis(args.pause_ms);
            load.spawn(async move {
                // Spread the clients' first calls over a second.
                tokio::time::sleep(Duration::from_millis(137 * worker as u64 % 1000)).await;
                let count = &counts[kind];
                let mut n = 0u64;
                while Instant::now() < deadline && n < MAX_CALLS_PER_CLIENT {
                    n += 1;
                    count.sent.fetch_add(1, Ordering::Relaxed);
                    let outcome = tokio::time::timeout(
                        Duration::from_secs(60),
                        one_call(kind, &client, &base, addr),
                    )
                    .await
                    .unwrap_or_else(|_| Err("timeout (60 s)".to_owned()));
                    match outcome {
                        Ok(()) => {
                            count.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(reason) => count.fail(reason),
                    }
                    tokio::time::sleep(pause).await;
                }
            });
        }
    }

    // Samples while the load runs.
    let reader = Reader::new();
    let mut samples = Vec::new();
    let every = Duration::from_secs(args.sample_secs.max(1));
    loop {
        samples.push(sample(args.pid, started, &sink, &reader, &metrics).await);
        print_progress(samples.last().expect("just pushed"), &counts);
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep(every.min(deadline - now)).await;
    }
    while load.join_next().await.is_some() {}
    let load_secs = started.elapsed().as_secs_f64();

    // The collector stays up now; wait for the spool to drain and the counts to settle.
    collector_up_for_good.store(true, Ordering::Release);
    let drain_start = Instant::now();
    let drain_deadline = drain_start + Duration::from_secs(args.drain_secs);
    let mut last_unique = u64::MAX;
    let mut stable_since = Instant::now();
    let drained = loop {
        let s = sample(args.pid, started, &sink, &reader, &metrics).await;
        if s.sink_unique != last_unique {
            last_unique = s.sink_unique;
            stable_since = Instant::now();
        }
        let settled = s.spool_items == 0.0
            && s.active == 0.0
            && stable_since.elapsed() >= Duration::from_secs(5);
        samples.push(s);
        if settled {
            break true;
        }
        if Instant::now() >= drain_deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let drain_secs = drain_start.elapsed().as_secs_f64();
    let final_page = reader.read(&metrics).await.ok();
    let report = render(
        &args,
        &counts,
        &sink,
        &samples,
        final_page.as_ref(),
        load_secs,
        drained,
        drain_secs,
    );
    flap.abort();
    std::fs::write(&args.out, &report)
        .map_err(|e| format!("cannot write {}: {e}", args.out.display()))?;
    println!("{report}");
    Ok(std::process::ExitCode::SUCCESS)
}

fn authority_addr(base: &Uri) -> Result<SocketAddr, String> {
    let host = base.host().unwrap_or("").trim_matches(['[', ']']);
    let port = base.port_u16().unwrap_or(80);
    let ip = host
        .parse()
        .map_err(|_| format!("{base}: host must be an IP"))?;
    Ok(SocketAddr::new(ip, port))
}

fn chat_body(stream: bool) -> String {
    format!(
        r#"{{"model":"gpt-4o-mini","stream":{stream},"stream_options":{{"include_usage":true}},"messages":[{{"role":"user","content":"Say hello for the soak test, please."}}]}}"#
    )
}

const ANTHROPIC_BODY: &str = r#"{"model":"claude-sonnet-4-20250514","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Say hello for the soak test, please."}]}"#;

/// One call of the given kind; `Err` says what went wrong.
async fn one_call(
    kind: &str,
    client: &Client<HttpConnector, Full<Bytes>>,
    base: &Uri,
    addr: SocketAddr,
) -> Result<(), String> {
    match kind {
        "stream" => {
            hyper_call(
                client,
                base,
                "/v1/chat/completions",
                chat_body(true),
                20,
                2,
                None,
            )
            .await
        }
        "anthropic_stream" => {
            hyper_call(
                client,
                base,
                "/anthropic/v1/messages",
                ANTHROPIC_BODY.to_owned(),
                20,
                2,
                None,
            )
            .await
        }
        "whole" => {
            hyper_call(
                client,
                base,
                "/v1/chat/completions",
                chat_body(false),
                20,
                0,
                None,
            )
            .await
        }
        // Leaves after two frames of a 2-second stream.
        "cancel" => {
            hyper_call(
                client,
                base,
                "/v1/chat/completions",
                chat_body(true),
                40,
                50,
                Some(2),
            )
            .await
        }
        "slow_body" => raw_call(addr, &chat_body(true), Trickle::Body, 20).await,
        "slow_reader" => raw_call(addr, &chat_body(true), Trickle::Reader, 60).await,
        "stalled_body" => raw_call(addr, &chat_body(true), Trickle::Stall, 20).await,
        other => Err(format!("unknown kind {other}")),
    }
}

fn post(base: &Uri, path: &str, body: String, chunks: u64, delay_ms: u64) -> Request<Full<Bytes>> {
    let uri = format!(
        "http://{}{path}",
        base.authority().map_or("127.0.0.1", |a| a.as_str())
    );
    Request::post(uri)
        .header("content-type", "application/json")
        .header("authorization", "Bearer soak-test-key")
        .header("x-api-key", "soak-test-key")
        .header("anthropic-version", "2023-06-01")
        .header("x-mock-chunks", chunks.to_string())
        .header("x-mock-delay-ms", delay_ms.to_string())
        .header("x-sidetrace-feature", "soak")
        .body(Full::new(Bytes::from(body)))
        .expect("valid request")
}

/// A call through a pooled HTTP/1.1 client; with `leave_after`, the client drops the response
/// after that many body frames (a cancel).
async fn hyper_call(
    client: &Client<HttpConnector, Full<Bytes>>,
    base: &Uri,
    path: &str,
    body: String,
    chunks: u64,
    delay_ms: u64,
    leave_after: Option<usize>,
) -> Result<(), String> {
    let resp = client
        .request(post(base, path, body, chunks, delay_ms))
        .await
        .map_err(|e| format!("io: {e}"))?;
    let status = resp.status();
    if status != StatusCode::OK {
        return Err(format!("status {}", status.as_u16()));
    }
    let mut body = resp.into_body();
    let mut frames = 0;
    let mut last = Bytes::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("io: body: {e}"))?;
        if let Ok(data) = frame.into_data() {
            frames += 1;
            last = data;
            if leave_after.is_some_and(|n| frames >= n) {
                return Ok(());
            }
        }
    }
    if leave_after.is_some() {
        return Err("stream ended before the cancel".to_owned());
    }
    let streamed = path.ends_with("messages") || delay_ms > 0;
    let complete = !streamed || memchr_any(&last, b"[DONE]") || memchr_any(&last, b"message_stop");
    if complete {
        Ok(())
    } else {
        Err("stream ended without its last event".to_owned())
    }
}

fn memchr_any(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[derive(Clone, Copy)]
enum Trickle {
    /// The request body arrives in 8 pieces, 150 ms apart.
    Body,
    /// The answer is read 256 bytes every 25 ms.
    Reader,
    /// Half the body is sent, then nothing: the client waits up to 5 s for an answer and leaves.
    Stall,
}

/// A call over a raw connection (`connection: close`), for clients hyper would not imitate.
async fn raw_call(addr: SocketAddr, body: &str, how: Trickle, chunks: u64) -> Result<(), String> {
    let mut conn = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("io: connect: {e}"))?;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         authorization: Bearer soak-test-key\r\nx-mock-chunks: {chunks}\r\nx-mock-delay-ms: 2\r\n\
         x-sidetrace-feature: soak\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let io = |e: std::io::Error| format!("io: {}", e.kind());
    conn.write_all(head.as_bytes()).await.map_err(io)?;
    match how {
        Trickle::Body => {
            let piece = body.len().div_ceil(8);
            for part in body.as_bytes().chunks(piece) {
                conn.write_all(part).await.map_err(io)?;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
        Trickle::Reader => conn.write_all(body.as_bytes()).await.map_err(io)?,
        Trickle::Stall => {
            conn.write_all(&body.as_bytes()[..body.len() / 2])
                .await
                .map_err(io)?;
            let mut answer = Vec::new();
            // Either the gateway answers (a timeout status) or closes, or the client gives up.
            return match tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer))
                .await
            {
                Ok(_) => Ok(()),
                Err(_) => Err("client gave up after 5 s (no answer)".to_owned()),
            };
        }
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        let n = conn.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if matches!(how, Trickle::Reader) {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    let status = answer
        .split(|&b| b == b' ')
        .nth(1)
        .and_then(|s| std::str::from_utf8(s).ok())
        .unwrap_or("none")
        .to_owned();
    if status != "200" {
        return Err(format!("status {status}"));
    }
    if !memchr_any(&answer, b"[DONE]") {
        return Err("stream ended without its last event".to_owned());
    }
    Ok(())
}

/// The collector: up for `up`, then gone (port closed, connections cut) for `down`, in turn,
/// until the load ends; then up for good.
async fn flapping_collector(
    addr: SocketAddr,
    sink: Arc<Sink>,
    up: Duration,
    down: Duration,
    load_deadline: Instant,
    up_for_good: Arc<AtomicBool>,
) {
    loop {
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) => {
                    eprintln!("soak: collector cannot bind {addr} yet: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let mut conns = JoinSet::new();
        let up_until = Instant::now() + up;
        loop {
            let forever = up_for_good.load(Ordering::Acquire) || Instant::now() >= load_deadline;
            let now = Instant::now();
            if !forever && now >= up_until {
                break;
            }
            let wait = if forever {
                Duration::from_secs(1)
            } else {
                up_until - now
            };
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let sink = sink.clone();
                    conns.spawn(async move {
                        let mut builder = http1::Builder::new();
                        builder.timer(TokioTimer::new());
                        let service = service_fn(move |req| collect(req, sink.clone()));
                        let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                    });
                }
                _ = tokio::time::sleep(wait) => {}
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        // Down: the port refuses connections and the open ones are cut mid-request.
        drop(listener);
        conns.abort_all();
        sink.outages.fetch_add(1, Ordering::Relaxed);
        let until = Instant::now() + down;
        while Instant::now() < until && !up_for_good.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn collect(
    req: Request<Incoming>,
    sink: Arc<Sink>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let encoded = req
        .headers()
        .get("content-encoding")
        .is_some_and(|v| v != "identity");
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(answer(StatusCode::BAD_REQUEST)),
    };
    sink.requests.fetch_add(1, Ordering::Relaxed);
    let mut ids = Vec::new();
    if encoded || spans_of(&body, &mut ids).is_none() {
        sink.undecodable.fetch_add(1, Ordering::Relaxed);
        return Ok(answer(StatusCode::BAD_REQUEST));
    }
    let mut seen = sink.spans.lock().unwrap_or_else(|e| e.into_inner());
    for id in ids {
        if !seen.insert(id) {
            sink.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(answer(StatusCode::OK))
}

fn answer(status: StatusCode) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-protobuf"),
    );
    resp
}

/// The length-delimited fields `field` of a protobuf message, skipping every other field.
fn fields(mut msg: &[u8], field: u64) -> Option<Vec<&[u8]>> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut out = Vec::new();
    while !msg.is_empty() {
        let key = varint(&mut msg)?;
        match key & 7 {
            0 => {
                varint(&mut msg)?;
            }
            1 => msg = msg.get(8..)?,
            5 => msg = msg.get(4..)?,
            2 => {
                let len = usize::try_from(varint(&mut msg)?).ok()?;
                let (value, rest) = msg.split_at_checked(len)?;
                msg = rest;
                if key >> 3 == field {
                    out.push(value);
                }
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Trace and span ids of every span in an `ExportTraceServiceRequest`
/// (resource_spans = 1 / scope_spans = 2 / spans = 2 / trace_id = 1, span_id = 2).
fn spans_of(body: &[u8], out: &mut Vec<[u8; 24]>) -> Option<()> {
    for resource in fields(body, 1)? {
        for scope in fields(resource, 2)? {
            for span in fields(scope, 2)? {
                let trace = fields(span, 1)?;
                let id = fields(span, 2)?;
                let mut key = [0u8; 24];
                key[..16].copy_from_slice(trace.first().filter(|t| t.len() == 16)?);
                key[16..].copy_from_slice(id.first().filter(|s| s.len() == 8)?);
                out.push(key);
            }
        }
    }
    Some(())
}

fn get(p: Option<&Page>, name: &str) -> f64 {
    p.and_then(|p| p.get(name)).copied().unwrap_or(0.0)
}

async fn sample(pid: u32, started: Instant, sink: &Sink, reader: &Reader, metrics: &Uri) -> Sample {
    let page = reader.read(metrics).await.ok();
    let page = page.as_ref();
    Sample {
        at_secs: started.elapsed().as_secs(),
        rss_kib: crate::procfs::group_rss_kib(&crate::procfs::Watched {
            name: "gateway".into(),
            pids: vec![pid],
        }),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64),
        sink_unique: sink.unique(),
        received: get(page, "sidetrace_spans_received_total"),
        exported: get(page, "sidetrace_spans_exported_total"),
        spool_items: get(page, "sidetrace_spool_items"),
        dropped: get(page, "sidetrace_spans_dropped_total"),
        active: get(page, "sidetrace_active_calls"),
    }
}

fn print_progress(s: &Sample, counts: &BTreeMap<&'static str, KindCount>) {
    let sent: u64 = counts
        .values()
        .map(|c| c.sent.load(Ordering::Relaxed))
        .sum();
    eprintln!(
        "soak: {:>5} s  calls {sent:>7}  rss {:>7} KiB  fds {:>5}  collector {:>7}  spooled {:>6}  dropped {:>4}",
        s.at_secs, s.rss_kib, s.fds, s.sink_unique, s.spool_items, s.dropped
    );
}

#[allow(clippy::too_many_arguments)]
fn render(
    args: &SoakArgs,
    counts: &BTreeMap<&'static str, KindCount>,
    sink: &Sink,
    samples: &[Sample],
    page: Option<&Page>,
    load_secs: f64,
    drained: bool,
    drain_secs: f64,
) -> String {
    let mut md = String::new();
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let _ = writeln!(md, "# Soak run\n");
    let _ = writeln!(
        md,
        "Load for {load_secs:.0} s ({} min asked), {} clients per kind, {} ms between a client's calls; \
         collector up {} s / down {} s in turn ({} outages); then {drain_secs:.0} s with the collector \
         up for the spool to drain ({}).\n",
        args.minutes,
        args.workers,
        args.pause_ms,
        args.up_secs,
        args.down_secs,
        load(&sink.outages),
        if drained {
            "drained"
        } else {
            "NOT drained within --drain-secs"
        }
    );
    let _ = writeln!(md, "## Calls\n");
    let _ = writeln!(md, "| kind | sent | ok | failed | failures |");
    let _ = writeln!(md, "|---|---:|---:|---:|---|");
    for (kind, c) in counts {
        let reasons = c.reasons.lock().unwrap_or_else(|e| e.into_inner());
        let reasons: Vec<String> = reasons.iter().map(|(r, n)| format!("{r}: {n}")).collect();
        let _ = writeln!(
            md,
            "| {kind} | {} | {} | {} | {} |",
            load(&c.sent),
            load(&c.ok),
            load(&c.failed),
            reasons.join("; ")
        );
    }
    let total: u64 = counts.values().map(|c| load(&c.sent)).sum();
    let stalled = load(&counts["stalled_body"].sent);
    let _ = writeln!(md, "| all | {total} | | | |\n");

    let unique = sink.unique();
    let spooled = get(page, "sidetrace_spool_items");
    let dropped = get(page, "sidetrace_spans_dropped_total");
    let received = get(page, "sidetrace_spans_received_total");
    let _ = writeln!(md, "## Spans\n");
    let _ = writeln!(md, "| | spans |");
    let _ = writeln!(md, "|---|---:|");
    let rows = [
        ("calls made (all kinds)", total as f64),
        (
            "of which stalled bodies (recorded as cancelled when the client gives up)",
            stalled as f64,
        ),
        (
            "spans received by the gateway's exporter (sidetrace_spans_received_total)",
            received,
        ),
        ("unique spans at the collector", unique as f64),
        (
            "repeated spans at the collector (answer lost in an outage, sent again)",
            load(&sink.duplicates) as f64,
        ),
        ("batches still spooled (sidetrace_spool_items)", spooled),
        (
            "spans counted dropped (sidetrace_spans_dropped_total, all reasons)",
            dropped,
        ),
        (
            "sidetrace_spans_exported_total",
            get(page, "sidetrace_spans_exported_total"),
        ),
        (
            "sidetrace_spans_spooled_total",
            get(page, "sidetrace_spans_spooled_total"),
        ),
        (
            "sidetrace_spans_replayed_total",
            get(page, "sidetrace_spans_replayed_total"),
        ),
        (
            "export requests at the collector",
            load(&sink.requests) as f64,
        ),
        (
            "export requests the collector could not decode",
            load(&sink.undecodable) as f64,
        ),
    ];
    for (name, v) in rows {
        let _ = writeln!(md, "| {name} | {v:.0} |");
    }
    let accounted = unique as f64 + dropped;
    let _ = writeln!(
        md,
        "\nAccounted for (at the collector + counted dropped): {accounted:.0} of the {received:.0} \
         spans the gateway made ({:+.0}), with {spooled:.0} batches still spooled. The gateway made \
         {received:.0} spans for {total} calls sent ({:+.0}): every routed call makes one span.\n",
        accounted - received,
        received - total as f64,
    );

    let _ = writeln!(md, "## Gateway process\n");
    let rss: Vec<u64> = samples.iter().map(|s| s.rss_kib).collect();
    let fds: Vec<u64> = samples.iter().map(|s| s.fds).collect();
    let first_last_peak = |v: &[u64]| {
        (
            v.first().copied().unwrap_or(0),
            v.last().copied().unwrap_or(0),
            v.iter().copied().max().unwrap_or(0),
        )
    };
    let (r0, r1, rp) = first_last_peak(&rss);
    let (f0, f1, fp) = first_last_peak(&fds);
    let _ = writeln!(md, "| | first | last | peak |");
    let _ = writeln!(md, "|---|---:|---:|---:|");
    let _ = writeln!(
        md,
        "| RSS (MiB) | {:.1} | {:.1} | {:.1} |",
        r0 as f64 / 1024.0,
        r1 as f64 / 1024.0,
        rp as f64 / 1024.0
    );
    let _ = writeln!(md, "| open fds | {f0} | {f1} | {fp} |\n");

    let _ = writeln!(md, "## Over time\n");
    let _ = writeln!(
        md,
        "| s | RSS MiB | fds | received | exported | at collector | spooled | dropped | active calls |"
    );
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    // About 30 rows whatever the length, and always the last one.
    let step = samples.len().div_ceil(30).max(1);
    for (i, s) in samples.iter().enumerate() {
        if i % step == 0 || i + 1 == samples.len() {
            let _ = writeln!(
                md,
                "| {} | {:.1} | {} | {:.0} | {:.0} | {} | {:.0} | {:.0} | {:.0} |",
                s.at_secs,
                s.rss_kib as f64 / 1024.0,
                s.fds,
                s.received,
                s.exported,
                s.sink_unique,
                s.spool_items,
                s.dropped,
                s.active
            );
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_ids_are_read_from_an_export_request() {
        // Hand-encoded: request { resource_spans { scope_spans { spans { trace_id, span_id,
        // name } spans { ... } } } }, with an unknown varint field thrown in.
        fn ld(field: u8, body: &[u8]) -> Vec<u8> {
            let mut v = vec![field << 3 | 2, body.len() as u8];
            v.extend_from_slice(body);
            v
        }
        let span = |n: u8| {
            let mut s = ld(1, &[n; 16]);
            s.extend(ld(2, &[n; 8]));
            s.extend([5 << 3, 1]); // a varint field
            s.extend(ld(5, b"chat"));
            s
        };
        let mut scope = ld(2, &span(1));
        scope.extend(ld(2, &span(2)));
        let body = ld(1, &ld(2, &scope));
        let mut ids = Vec::new();
        assert!(spans_of(&body, &mut ids).is_some());
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[1][..16], [2; 16]);
        assert!(spans_of(&[0x0a, 0x05, 1], &mut Vec::new()).is_none());
    }
}
