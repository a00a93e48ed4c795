//! bench-load: the benchmark's load driver (open loop, closed loop, slow held streams) against
//! one loopback URL, with the CPU and memory of the processes under test and counters read from
//! their metrics pages; probes one call's headers, watches a span spool drain; prints JSON
//! reports and turns a directory of them into the markdown results page.

mod counters;
mod drive;
mod features;
mod procfs;
mod report;
mod soak;
mod stats;

use std::{
    net::{IpAddr, TcpListener},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use clap::{ArgGroup, Args, Parser, Subcommand};
use http::Uri;
use serde_json::{Map, Value, json};

use drive::{Driver, Mode, Target};
use procfs::{RssSampler, Watched};

#[derive(Parser)]
#[command(
    name = "bench-load",
    about = "Load driver for the sidetrace benchmark (loopback targets only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send load to one URL and print a JSON report.
    Run(RunArgs),
    /// Record the watched processes' memory and CPU time now, without load.
    Snapshot(SnapshotArgs),
    /// Print N free loopback TCP ports, one a line.
    Ports {
        #[arg(default_value_t = 1)]
        n: usize,
        /// Take them below the ephemeral range (20000-32767), for a server that is stopped and
        /// bound again on the same port: the kernel never hands those out as source ports.
        #[arg(long)]
        restartable: bool,
    },
    /// Turn a directory of JSON reports into the markdown results tables.
    Report(report::ReportArgs),
    /// Print a long chat conversation (a request body for `run --body`): what an agent resends
    /// with each call, each message with an e-mail address and a phone number in it.
    Conversation(ConversationArgs),
    /// Send one request and record its status and `x-sidetrace-*` response headers.
    Probe(ProbeArgs),
    /// Watch a gateway's span spool drain once the collector is back: the wait before the
    /// replay starts and the replay rate (spans/s).
    ReplayWatch(counters::ReplayArgs),
    /// The soak: mixed load for minutes against a running gateway, a collector that flaps, and
    /// a markdown report of calls, spans, memory and descriptors (see load-tests/soak.sh).
    Soak(soak::SoakArgs),
}

/// Labels that tie a JSON report to its place in the results page.
#[derive(Args)]
struct Labels {
    /// Scenario id, e.g. a1k.
    #[arg(long, default_value = "adhoc")]
    scenario: String,
    /// Scenario title for the results page.
    #[arg(long, default_value = "")]
    title: String,
    /// What is under test: direct, nginx or sidetrace.
    #[arg(long, default_value = "target")]
    target: String,
    /// Processes to measure, `NAME=PID[,PID...]`, repeatable; `proxy` is the one compared.
    #[arg(long = "watch")]
    watch: Vec<Watched>,
    /// Write the JSON report here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
#[command(group(ArgGroup::new("load").required(true).args(["rate", "connections", "slow_streams"])))]
struct RunArgs {
    /// Full URL, e.g. http://127.0.0.1:4100/v1/chat/completions (loopback only).
    #[arg(long)]
    url: String,
    #[arg(long, value_enum, default_value = "chat")]
    mode: Mode,
    /// Send this file as each request's body instead of the mode's own (the mode still says
    /// how an answer ends), e.g. a long conversation from `bench-load conversation`.
    #[arg(long)]
    body: Option<PathBuf>,
    /// Open loop: requests per second, sent at fixed intervals.
    #[arg(long)]
    rate: Option<f64>,
    /// Closed loop: concurrent connections, each sending as fast as answers come.
    #[arg(long)]
    connections: Option<usize>,
    /// Open this many streams of one chunk per second and hold them for --hold-secs.
    #[arg(long)]
    slow_streams: Option<usize>,
    /// Length of the run (open and closed loop), in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// How long each slow stream lasts, in seconds (one chunk per second).
    #[arg(long, default_value_t = 30)]
    hold_secs: u64,
    /// Slow streams are opened at this rate, per second, not all in the same instant.
    #[arg(long, default_value_t = 500.0)]
    ramp_rate: f64,
    /// Content chunks per answer (x-mock-chunks).
    #[arg(long, default_value_t = 20)]
    chunks: u64,
    /// Delay between chunks (x-mock-delay-ms).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Open loop: past this many requests in flight, due requests count as errors.
    #[arg(long, default_value_t = 2000)]
    max_in_flight: usize,
    /// Upper bound on requests sent, whatever the duration.
    #[arg(long, default_value_t = 2_000_000)]
    max_requests: u64,
    /// Per-request timeout, in seconds (slow streams add their hold time).
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Counter pages to read before and after the run, `NAME=URL`, repeatable (the gateway's
    /// /metrics, the OTLP sink's /stats).
    #[arg(long = "counters")]
    counters: Vec<counters::Source>,
    /// After the load, wait this long before the final CPU and counter readings, so that work
    /// the run left behind (the last export batch, spool writes) is counted in it.
    #[arg(long, default_value_t = 0)]
    settle_ms: u64,
    /// Closed loop only: end the run early once the gateway at this metrics URL has nothing
    /// left in its span spool (`sidetrace_spool_items` 0), to measure throughput during replay.
    #[arg(long)]
    until_drained: Option<String>,
    #[command(flatten)]
    labels: Labels,
}

#[derive(Args)]
struct ConversationArgs {
    /// Messages after the system prompt.
    #[arg(long, default_value_t = 60)]
    messages: usize,
    /// The messages' language: English (ASCII), French (accents, curly quotes) or Arabic
    /// (Arabic script and digits).
    #[arg(long, value_enum, default_value = "english")]
    language: Language,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Language {
    English,
    French,
    Arabic,
}

impl Language {
    /// One paragraph (a message holds twelve).
    fn paragraph(self) -> &'static str {
        match self {
            Language::English => {
                "The quarterly report shows steady growth across all regions; the team plans \
                 three launches next year and a review of supplier contracts in spring. Write \
                 to jane.doe@example.com or call +1 415-555-0132. "
            }
            Language::French => {
                "Le rapport trimestriel montre une croissance régulière — l’équipe prévoit \
                 trois lancements l’an prochain et une revue des contrats « fournisseurs » au \
                 printemps. Écrivez à jane.doe@example.com ou appelez le +33 6 12 34 56 78. "
            }
            Language::Arabic => {
                "يُظهر التقرير الفصلي نموًا ثابتًا في جميع المناطق، ويخطط الفريق لثلاثة إطلاقات \
                 في العام المقبل. راسلونا على jane.doe@example.com أو اتصلوا على ٤١٥-٥٥٥-٠١٣٢. "
            }
        }
    }
}

fn conversation(args: ConversationArgs) -> Result<ExitCode, String> {
    println!("{}", conversation_body(args.messages, args.language));
    Ok(ExitCode::SUCCESS)
}

/// A chat completions body: the system prompt, then `messages` turns of twelve paragraphs.
fn conversation_body(messages: usize, language: Language) -> Value {
    let text = language.paragraph().repeat(12);
    let turns = (0..messages).map(|i| {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        json!({"role": role, "content": text})
    });
    let system = json!({"role": "system", "content": "You are a helpful assistant."});
    json!({"model": "gpt-4o-mini", "messages": std::iter::once(system).chain(turns).collect::<Vec<_>>()})
}

#[derive(Args)]
struct ProbeArgs {
    /// Full URL (loopback only).
    #[arg(long)]
    url: String,
    #[arg(long, value_enum, default_value = "chat")]
    mode: Mode,
    /// Count the probe as an error unless the answer has this header (repeatable).
    #[arg(long = "expect-header")]
    expect_header: Vec<String>,
    /// Count the probe as an error if the answer has this header (repeatable).
    #[arg(long = "expect-no-header")]
    expect_no_header: Vec<String>,
    #[command(flatten)]
    labels: Labels,
}

#[derive(Args)]
struct SnapshotArgs {
    #[command(flatten)]
    labels: Labels,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Conversation(args) => conversation(args),
        Command::Snapshot(args) => snapshot(args),
        Command::Ports { n, restartable } => ports(n, restartable),
        Command::Report(args) => report::main(args),
        Command::Probe(args) => probe(args),
        Command::ReplayWatch(args) => counters::replay_watch(args),
        Command::Soak(args) => soak::main(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bench-load: {e}");
            ExitCode::from(2)
        }
    }
}

fn ports(n: usize, restartable: bool) -> Result<ExitCode, String> {
    // All bound at once so that they differ; released on return, for the caller to bind.
    let listeners = if restartable {
        // A start that differs per call, so that two scripts rarely race for the same port.
        let start = 20_000 + (std::process::id() as usize * 7919) % 12_768;
        (0..12_768)
            .map(|i| 20_000 + (start - 20_000 + i) % 12_768)
            .filter_map(|port| TcpListener::bind(("127.0.0.1", port as u16)).ok())
            .take(n.min(100))
            .collect::<Vec<_>>()
    } else {
        (0..n.min(100))
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot bind a loopback port: {e}"))?
    };
    if listeners.len() < n.min(100) {
        return Err("not enough free loopback ports below the ephemeral range".to_owned());
    }
    for l in &listeners {
        let port = l.local_addr().map_err(|e| e.to_string())?.port();
        println!("{port}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Refuses anything but plain HTTP to a loopback IP: this tool must never load a real host.
fn loopback_uri(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad --url {url:?}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("--url {url:?}: only http:// is supported"));
    }
    let host = uri.host().unwrap_or("").trim_matches(['[', ']']);
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => Ok(uri),
        _ => Err(format!(
            "--url {url:?}: the host must be a loopback IP such as 127.0.0.1"
        )),
    }
}

fn write(labels: &Labels, report: Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    match &labels.out {
        Some(path) => std::fs::write(path, text + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display())),
        None => {
            println!("{text}");
            Ok(())
        }
    }
}

fn head(labels: &Labels, kind: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("scenario".into(), json!(labels.scenario));
    m.insert("title".into(), json!(labels.title));
    m.insert("target".into(), json!(labels.target));
    m.insert("kind".into(), json!(kind));
    m
}

fn snapshot(args: SnapshotArgs) -> Result<ExitCode, String> {
    let mut report = head(&args.labels, "snapshot");
    let processes: Map<String, Value> = args
        .labels
        .watch
        .iter()
        .map(|w| {
            let v = json!({
                "pids": w.pids,
                "cpu_ms": procfs::group_cpu_ms(w),
                "rss_kib": procfs::group_rss_kib(w),
                "pss_kib": procfs::group_pss_kib(w),
                "hwm_kib": procfs::group_hwm_kib(w),
            });
            (w.name.clone(), v)
        })
        .collect();
    report.insert("processes".into(), Value::Object(processes));
    write(&args.labels, Value::Object(report))?;
    Ok(ExitCode::SUCCESS)
}

fn run(args: RunArgs) -> Result<ExitCode, String> {
    let uri = loopback_uri(&args.url)?;
    if !(args.duration > 0.0 && args.duration <= 3600.0) {
        return Err("--duration must be in (0, 3600] seconds".into());
    }
    let slow = args.slow_streams.is_some();
    let (mode, chunks, delay_ms, timeout) = if slow {
        // One chunk a second for the hold time; the timeout must outlast the stream.
        (
            Mode::Stream,
            args.hold_secs.max(1),
            1000,
            args.hold_secs as f64 + args.timeout,
        )
    } else {
        (args.mode, args.chunks, args.delay_ms, args.timeout)
    };
    let body = match &args.body {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| format!("cannot read --body {}: {e}", path.display()))?
                .into(),
        ),
        None => None,
    };
    let driver = Driver::new(Target {
        uri,
        mode,
        body,
        chunks,
        delay_ms,
        timeout: Duration::from_secs_f64(timeout.clamp(0.001, 7200.0)),
    });
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;

    let reader = counters::Reader::new();
    let counters_before = rt.block_on(reader.read_all(&args.counters));
    let watch = args.labels.watch.clone();
    let cpu_before: Vec<u64> = watch.iter().map(procfs::group_cpu_ms).collect();
    let started_unix_ms = counters::unix_ms();
    let sampler = RssSampler::start(watch.clone(), Duration::from_millis(100), 100_000);
    let duration = Duration::from_secs_f64(args.duration);

    let mut drained_at: Option<std::sync::Arc<std::sync::Mutex<Option<u64>>>> = None;
    if let Some(url) = &args.until_drained {
        if args.connections.is_none() {
            return Err("--until-drained needs --connections".into());
        }
        let uri = loopback_uri(url)?;
        let d = driver.clone();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        drained_at = Some(seen.clone());
        rt.spawn(async move {
            let reader = counters::Reader::new();
            // Bounded by the run: the task is dropped with the runtime.
            loop {
                if let Ok(p) = reader.read(&uri).await
                    && p.get("sidetrace_spool_items").copied().unwrap_or(0.0) == 0.0
                {
                    *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(counters::unix_ms());
                    d.stop.store(true, std::sync::atomic::Ordering::Release);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }

    let (kind, sent, wall) = if let Some(rate) = args.rate {
        if !(rate > 0.0 && rate <= 1_000_000.0) {
            return Err("--rate must be in (0, 1000000]".into());
        }
        let count = ((rate * args.duration).round() as u64).min(args.max_requests);
        let wall = drive::open_loop(&rt, &driver, rate, count, args.max_in_flight);
        ("open", count, wall)
    } else if let Some(c) = args.connections {
        let c = c.clamp(1, 10_000);
        let wall = drive::closed_loop(&rt, &driver, c, duration, args.max_requests);
        ("closed", 0, wall)
    } else {
        let n = args.slow_streams.unwrap_or(0).min(100_000) as u64;
        let wall = drive::open_loop(&rt, &driver, args.ramp_rate.max(1.0), n, usize::MAX);
        ("slow", n, wall)
    };

    let ended_unix_ms = counters::unix_ms();
    let counters_end = rt.block_on(reader.read_all(&args.counters));
    if args.settle_ms > 0 {
        std::thread::sleep(Duration::from_millis(args.settle_ms.min(60_000)));
    }
    let counters_settled = rt.block_on(reader.read_all(&args.counters));
    let peaks = sampler.finish();
    let outcomes = driver.take_outcomes();
    let ok = outcomes.samples.len() as u64;
    let errors = outcomes.errors.total();
    let sent = if kind == "closed" { ok + errors } else { sent };
    let processes: Map<String, Value> = watch
        .iter()
        .zip(cpu_before)
        .zip(peaks)
        .map(|((w, before), peak)| {
            let cpu = procfs::group_cpu_ms(w).saturating_sub(before);
            let v = json!({
                "pids": w.pids,
                "cpu_ms": cpu,
                "cpu_us_per_req": if ok > 0 { Some(cpu as f64 * 1000.0 / ok as f64) } else { None },
                "peak_rss_kib": peak,
                "rss_end_kib": procfs::group_rss_kib(w),
                "pss_end_kib": procfs::group_pss_kib(w),
                "hwm_kib": procfs::group_hwm_kib(w),
            });
            (w.name.clone(), v)
        })
        .collect();

    let counters: Map<String, Value> = args
        .counters
        .iter()
        .enumerate()
        .map(|(i, src)| {
            let v = json!({
                "url": src.uri.to_string(),
                "before": counters::page_json(&counters_before[i]),
                "end": counters::page_json(&counters_end[i]),
                "settled": counters::page_json(&counters_settled[i]),
                // During the load only, and with what the run left behind after the settle time.
                "delta_end": counters::delta(&counters_before[i], &counters_end[i]),
                "delta": counters::delta(&counters_before[i], &counters_settled[i]),
            });
            (src.name.clone(), v)
        })
        .collect();

    let e = &outcomes.errors;
    let pick = |f: fn(&drive::Sample) -> u64| outcomes.samples.iter().map(f).collect::<Vec<_>>();
    let mut report = head(&args.labels, kind);
    let wall_s = wall.as_secs_f64();
    let fields = json!({
        "url": args.url,
        "mode": format!("{mode:?}").to_lowercase(),
        "body": args.body.as_ref().map(|p| p.display().to_string()),
        "rate": args.rate,
        "connections": args.connections,
        "streams": args.slow_streams,
        "duration_s": if slow { args.hold_secs as f64 } else { args.duration },
        "chunks": chunks,
        "delay_ms": delay_ms,
        "sent": sent,
        "ok": ok,
        "errors": errors,
        "error_kinds": {
            "status": e.status, "io": e.io, "timeout": e.timeout,
            "truncated": e.truncated, "overload": e.overload,
        },
        "first_error": outcomes.first_error,
        "wall_s": (wall_s * 1000.0).round() / 1000.0,
        "started_unix_ms": started_unix_ms,
        "ended_unix_ms": ended_unix_ms,
        "settle_ms": args.settle_ms,
        "drained_unix_ms": drained_at.and_then(|d| *d.lock().unwrap_or_else(|e| e.into_inner())),
        "achieved_rps": if wall_s > 0.0 { (ok as f64 / wall_s).round() } else { 0.0 },
        "total_ms": stats::summary(pick(|s| s.total_ns)),
        "ttfb_ms": if mode.streams() { stats::summary(pick(|s| s.ttfb_ns)) } else { Value::Null },
        "send_lag_ms": stats::summary(pick(|s| s.lag_ns)),
        // From the actual send: what a closed-loop tool would report; shows how much of the
        // figures above is the driver's own lateness.
        "from_send_ms": stats::summary(pick(|s| s.total_ns.saturating_sub(s.lag_ns))),
        "processes": processes,
        "counters": counters,
    });
    if let Value::Object(f) = fields {
        report.extend(f);
    }
    write(&args.labels, Value::Object(report))?;
    // Do not wait for idle pooled connections: the runtime's tasks are dropped with it.
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(ExitCode::SUCCESS)
}

fn probe(args: ProbeArgs) -> Result<ExitCode, String> {
    let uri = loopback_uri(&args.url)?;
    let driver = Driver::new(Target {
        uri,
        mode: args.mode,
        body: None,
        chunks: 20,
        delay_ms: 0,
        timeout: Duration::from_secs(30),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let answer = rt.block_on(driver.probe());
    let mut report = head(&args.labels, "probe");
    let (status, headers, body_bytes, mut error) = match answer {
        Ok((status, headers, len)) => (Some(status.as_u16()), headers, Some(len), None),
        Err(e) => (None, http::HeaderMap::new(), None, Some(e)),
    };
    if error.is_none() && !status.is_some_and(|s| (200..300).contains(&s)) {
        error = Some(format!("status {status:?}"));
    }
    for h in &args.expect_header {
        if error.is_none() && !headers.contains_key(h.as_str()) {
            error = Some(format!("the answer has no {h} header"));
        }
    }
    for h in &args.expect_no_header {
        if error.is_none() && headers.contains_key(h.as_str()) {
            error = Some(format!("the answer has a {h} header"));
        }
    }
    // The gateway's own headers; request and trace ids differ on every call and say nothing.
    let own: Map<String, Value> = headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-sidetrace-"))
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "x-sidetrace-trace-id" | "x-sidetrace-span-id" | "x-sidetrace-request-id"
            )
        })
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("(not text)"))))
        .collect();
    let fields = json!({
        "url": args.url,
        "mode": format!("{:?}", args.mode).to_lowercase(),
        "status": status,
        "body_bytes": body_bytes,
        "headers": own,
        "expect_header": args.expect_header,
        "expect_no_header": args.expect_no_header,
        "ok": if error.is_none() { 1 } else { 0 },
        "errors": if error.is_none() { 0 } else { 1 },
        "first_error": error,
    });
    if let Value::Object(f) = fields {
        report.extend(f);
    }
    write(&args.labels, Value::Object(report))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_http_urls_are_accepted() {
        assert!(loopback_uri("http://127.0.0.1:4000/v1/chat/completions").is_ok());
        assert!(loopback_uri("http://[::1]:4000/v1/messages").is_ok());
        assert!(loopback_uri("http://localhost:4000/").is_err());
        assert!(loopback_uri("http://10.0.0.1:4000/").is_err());
        assert!(loopback_uri("https://127.0.0.1:4000/").is_err());
    }

    #[test]
    fn a_conversation_is_a_chat_body_with_findings_in_each_message() {
        for language in [Language::English, Language::French, Language::Arabic] {
            let body = conversation_body(4, language);
            let messages = body["messages"].as_array().unwrap();
            assert_eq!(messages.len(), 5);
            assert_eq!(messages[1]["role"], "user");
            assert_eq!(messages[2]["role"], "assistant");
            let text = messages[4]["content"].as_str().unwrap();
            assert_eq!(text.matches("jane.doe@example.com").count(), 12);
        }
        let arabic = conversation_body(1, Language::Arabic).to_string();
        assert!(arabic.contains("٤١٥-٥٥٥-٠١٣٢"));
    }
}
