//! Span export under faults: an in-process OTLP collector (gRPC and HTTP) that is down, answers
//! 429/503, stalls or refuses; the gateway must keep serving at full speed and every span must
//! arrive later, once.

mod common;

use std::{
    collections::HashMap,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    otlp::{Collector, Mode, ReceivedSpan, Transport},
    *,
};
use http::StatusCode;

const CHAT: &str = r#"{"model":"o4-mini","messages":[{"role":"user","content":"hi"}]}"#;

fn reply() -> Reply {
    Reply::json(
        200,
        &String::from_utf8(fixture("openai/chat_nonstream.json")).unwrap(),
    )
}

fn export_config(endpoint: &str, transport: Transport, data_dir: &Path, extra: &str) -> String {
    let protocol = match transport {
        Transport::Grpc => "grpc",
        Transport::Http => "http/protobuf",
    };
    format!(
        "data_dir = {:?}\n{extra}\n[export]\nendpoint = {endpoint:?}\nprotocol = {protocol:?}\ntimeout_ms = 300\nbatch_delay_ms = 50\nreplay_backoff_max_ms = 400\n",
        data_dir.display().to_string()
    )
}

/// Waits until the gateway has delivered `n` spans (exported or replayed) and holds none in its
/// spool: from then on it sends nothing more, so what the collector has is final, duplicates
/// included.
async fn wait_settled(gw: &TestGateway, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let delivered = metric(gw, "sidetrace_spans_exported_total").await
            + metric(gw, "sidetrace_spans_replayed_total").await;
        let spooled = metric(gw, "sidetrace_spool_items ").await;
        if delivered >= n as f64 && spooled == 0.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{delivered} of {n} spans delivered, {spooled} batches still spooled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every span id once, and the set equal to what the gateway recorded.
fn assert_each_once(received: &[ReceivedSpan], expected: &[String]) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for s in received {
        *counts.entry(s.span_id.as_str()).or_default() += 1;
    }
    for id in expected {
        assert_eq!(
            counts.get(id.as_str()),
            Some(&1),
            "span {id} arrived {:?} times",
            counts.get(id.as_str())
        );
    }
    assert_eq!(received.len(), expected.len(), "unexpected extra spans");
}

fn recorded_span_ids(gw: &TestGateway) -> Vec<String> {
    gw.recent_spans()
        .iter()
        .map(|s| sidetrace::trace::context::hex(&s.span_id))
        .collect()
}

async fn calls(gw: &TestGateway, n: usize) {
    for _ in 0..n {
        let a = post(gw, "/openai/v1/chat/completions", &[], CHAT).await;
        assert_eq!(a.status, StatusCode::OK);
    }
}

async fn collector_down_then_up(transport: Transport) {
    let mock = Mock::start(|_| reply()).await;
    let collector = Collector::start(transport).await;
    let addr = collector.addr;
    let endpoint = collector.endpoint();
    collector.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_for(&mock, &export_config(&endpoint, transport, dir.path(), "")).await;
    let n = 30;
    // Every call is answered while no span could be exported: none waited on the export.
    calls(&gw, n).await;
    assert_eq!(metric(&gw, "sidetrace_spans_exported_total").await, 0.0);
    wait_metric(&gw, "sidetrace_spans_spooled_total", n as f64).await;
    assert_eq!(metric(&gw, "sidetrace_spans_exported_total").await, 0.0);
    let collector = Collector::start_on(transport, addr).await;
    collector.wait_for_spans(n, Duration::from_secs(20)).await;
    wait_settled(&gw, n).await;
    assert_each_once(&collector.spans(), &recorded_span_ids(&gw));
    wait_metric(&gw, "sidetrace_spans_replayed_total", n as f64).await;
    assert_eq!(metric(&gw, "sidetrace_spans_dropped_total").await, 0.0);
    gw.shutdown().await;
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_grpc_collector_down_for_the_whole_run_every_span_arrives_once_when_it_is_back() {
    collector_down_then_up(Transport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_http_collector_down_for_the_whole_run_every_span_arrives_once_when_it_is_back() {
    collector_down_then_up(Transport::Http).await;
}

async fn degraded_collector(transport: Transport, mode: Mode) {
    let mock = Mock::start(|_| reply()).await;
    let collector = Collector::start(transport).await;
    collector.set_mode(mode);
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_for(
        &mock,
        &export_config(&collector.endpoint(), transport, dir.path(), ""),
    )
    .await;
    let n = 20;
    // Every call is answered while the collector takes nothing: none waited on the export.
    calls(&gw, n).await;
    assert_eq!(metric(&gw, "sidetrace_spans_exported_total").await, 0.0);
    wait_metric(&gw, "sidetrace_spans_spooled_total", 1.0).await;
    collector.set_mode(Mode::Accept);
    collector.wait_for_spans(n, Duration::from_secs(20)).await;
    wait_settled(&gw, n).await;
    assert_each_once(&collector.spans(), &recorded_span_ids(&gw));
    gw.shutdown().await;
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_answering_503_with_retry_after_delays_spans_but_not_calls() {
    degraded_collector(
        Transport::Http,
        Mode::Status {
            code: 503,
            retry_after_s: Some(1),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_answering_429_delays_spans_but_not_calls() {
    degraded_collector(
        Transport::Grpc,
        Mode::Status {
            code: 429,
            retry_after_s: None,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_collector_delays_spans_but_not_calls() {
    degraded_collector(Transport::Grpc, Mode::Stall).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_collector_gets_each_span_once_with_resource_and_scope() {
    let mock = Mock::start(|_| reply()).await;
    let collector = Collector::start(Transport::Grpc).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_for(
        &mock,
        &export_config(&collector.endpoint(), Transport::Grpc, dir.path(), ""),
    )
    .await;
    calls(&gw, 5).await;
    let spans = collector.wait_for_spans(5, Duration::from_secs(10)).await;
    let s = &spans[0];
    assert_eq!(s.kind, 3, "CLIENT");
    assert_eq!(s.scope_name, "sidetrace");
    assert_eq!(s.schema_url, "https://opentelemetry.io/schemas/1.41.0");
    assert!(s.resource.contains_key("service.name"));
    assert_eq!(s.name, "chat o4-mini");
    wait_metric(&gw, "sidetrace_spans_exported_total", 5.0).await;
    assert_eq!(metric(&gw, "sidetrace_spans_spooled_total").await, 0.0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_drops_the_oldest_counts_them_and_the_proxy_keeps_serving() {
    let mock = Mock::start(|_| reply()).await;
    let collector = Collector::start(Transport::Grpc).await;
    let addr = collector.addr;
    let endpoint = collector.endpoint();
    collector.stop().await;
    let dir = tempfile::tempdir().unwrap();
    // One span per batch; a span record is about 2 KB as spooled: room for about three.
    let extra = "[spool]\nmax_bytes = 7000\n";
    let mut config = export_config(&endpoint, Transport::Grpc, dir.path(), extra);
    config.push_str("batch_max_spans = 1\n");
    let gw = gateway_for(&mock, &config).await;
    let n = 12;
    calls(&gw, n).await;
    wait_metric(&gw, "sidetrace_spans_spooled_total", n as f64).await;
    wait_metric(
        &gw,
        "sidetrace_spans_dropped_total{reason=\"spool_full\"}",
        1.0,
    )
    .await;
    let dropped =
        metric(&gw, "sidetrace_spans_dropped_total{reason=\"spool_full\"}").await as usize;
    let kept = metric(&gw, "sidetrace_spool_items").await as usize;
    assert!(kept >= 1 && kept < n, "kept {kept}");
    assert_eq!(
        dropped + kept,
        n,
        "every span is either kept or counted as dropped"
    );
    let collector = Collector::start_on(Transport::Grpc, addr).await;
    let received = collector
        .wait_for_spans(kept, Duration::from_secs(20))
        .await;
    // The newest survived.
    let all = recorded_span_ids(&gw);
    let newest: Vec<String> = all[n - kept..].to_vec();
    let got: Vec<String> = received.iter().map(|s| s.span_id.clone()).collect();
    for id in &newest {
        assert!(got.contains(id), "newest span {id} was lost");
    }
    gw.shutdown().await;
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_spools_what_the_collector_did_not_take_and_a_restart_exports_it() {
    let mock = Mock::start(|_| reply()).await;
    let collector = Collector::start(Transport::Grpc).await;
    let addr = collector.addr;
    let endpoint = collector.endpoint();
    collector.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let config = export_config(&endpoint, Transport::Grpc, dir.path(), "");
    let gw = gateway_for(&mock, &config).await;
    calls(&gw, 8).await;
    let ids = recorded_span_ids(&gw);
    gw.shutdown().await;
    // The same data dir, the collector back.
    let collector = Collector::start_on(Transport::Grpc, addr).await;
    let gw = gateway_for(&mock, &config).await;
    collector.wait_for_spans(8, Duration::from_secs(20)).await;
    wait_settled(&gw, 8).await;
    assert_each_once(&collector.spans(), &ids);
    gw.shutdown().await;
    collector.stop().await;
}

fn free_port() -> u16 {
    // The binary is killed and started again on the same ports.
    restartable_port()
}

fn serve_binary(
    data_dir: &Path,
    collector: &str,
    upstream: &str,
    port: u16,
    admin: u16,
) -> std::process::Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sidetrace"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SIDETRACE_") || k.starts_with("OTEL_") {
            c.env_remove(k);
        }
    }
    c.arg("serve")
        .env("SIDETRACE_INGEST_HTTP_LISTEN", "127.0.0.1:0")
        .env("SIDETRACE_INGEST_GRPC_LISTEN", "127.0.0.1:0")
        .env("SIDETRACE_LISTEN", format!("127.0.0.1:{port}"))
        .env("SIDETRACE_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("SIDETRACE_DATA_DIR", data_dir)
        .env("SIDETRACE_OPENAI_BASE_URL", upstream)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "300")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_up(admin: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while admin_text(admin, "/metrics").await.is_none() {
        assert!(Instant::now() < deadline, "gateway did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Also the trace store: its traces are still open (in memory, rows not written) when the
/// gateway is killed, and come back from the span files at the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_spooled_before_a_sigkill_are_exported_after_a_restart() {
    let mock = Mock::start(|_| reply()).await;
    let collector = Collector::start(Transport::Grpc).await;
    let addr = collector.addr;
    let endpoint = collector.endpoint();
    collector.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let mut child = serve_binary(dir.path(), &endpoint, &mock.url(), port, admin);
    wait_up(admin).await;
    let n = 10;
    let mut trace_ids = Vec::new();
    for _ in 0..n {
        let req = http::Request::post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
            .body(full_body(CHAT))
            .unwrap();
        let r = client().request(req).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        trace_ids.push(
            r.headers()["x-sidetrace-trace-id"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    // Wait until all of them are spooled and flushed (a failed batch is flushed at once): the
    // spool's tally is written after each flush and counts only what it made durable. A kill
    // before the flush may lose the last batch, as docs/telemetry-guarantees.md says.
    let spool_dir = dir.path().join("spool");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = admin_text(admin, "/metrics").await.unwrap_or_default();
        let spooled: f64 = text
            .lines()
            .filter(|l| l.starts_with("sidetrace_spans_spooled_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        let flushed = sidetrace::store::sled_db::Tally::read(&spool_dir)
            .ok()
            .flatten()
            .map_or(0, |t| t.units);
        let stored = metric_in(&text, "sidetrace_store_spans_durable_total");
        let open = metric_in(&text, "sidetrace_store_open_traces");
        if spooled >= n as f64 && flushed >= n as u64 && stored >= n as f64 {
            assert_eq!(open, n as f64, "the traces are still open at the kill");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "spans were not spooled and flushed: {spooled} spooled, {flushed} flushed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let collector = Collector::start_on(Transport::Grpc, addr).await;
    let mut child = serve_binary(dir.path(), &endpoint, &mock.url(), port, admin);
    let received = collector.wait_for_spans(n, Duration::from_secs(30)).await;
    let mut got: Vec<String> = received.iter().map(|s| s.trace_id.clone()).collect();
    got.sort();
    trace_ids.sort();
    assert_eq!(got, trace_ids);
    for id in &trace_ids {
        let tree = admin_text(admin, &format!("/api/traces/{id}"))
            .await
            .expect("the gateway is up");
        let tree: serde_json::Value = serde_json::from_str(&tree).expect(&tree);
        assert_eq!(tree["spans"].as_array().map(Vec::len), Some(1), "{tree}");
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_sampling_keeps_failed_and_slow_traces_and_drops_the_rest_when_the_fraction_is_zero() {
    let mock = Mock::start(|seen| {
        if seen.uri.contains("fail") {
            Reply::json(500, r#"{"error":{"type":"server_error","message":"boom"}}"#)
        } else if seen.uri.contains("slow") {
            reply().delay_headers(Duration::from_millis(300))
        } else {
            reply()
        }
    })
    .await;
    let collector = Collector::start(Transport::Grpc).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = "[sampling]\nenabled = true\ndecision_wait_ms = 100\nkeep_fraction = 0.0\nlatency_threshold_ms = 250\n";
    let gw = gateway_for(
        &mock,
        &export_config(&collector.endpoint(), Transport::Grpc, dir.path(), extra),
    )
    .await;
    for path in ["fail", "slow", "fast", "fast"] {
        post(
            &gw,
            &format!("/openai/v1/chat/completions?{path}"),
            &[],
            CHAT,
        )
        .await;
    }
    let spans = collector.wait_for_spans(2, Duration::from_secs(10)).await;
    wait_metric(&gw, "sidetrace_spans_sampled_out_total", 2.0).await;
    // Every trace decided: two sent, two sampled out; nothing more will come.
    wait_settled(&gw, 2).await;
    assert_eq!(
        collector.spans().len(),
        2,
        "only the failed and the slow trace are kept"
    );
    assert!(
        spans.iter().any(|s| s.status_code == 2),
        "the failed call is kept"
    );
    gw.shutdown().await;
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_exporter_otlp_protocol_http_json_exports_every_span_as_otlp_json() {
    let mock = Mock::start(|_| reply()).await;
    let collector = Collector::start(Transport::Http).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = sidetrace::config::Config::from_toml(
        &format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[providers.openai]\nbase_url = {:?}\n",
            mock.url()
        ),
        "test.toml",
    )
    .unwrap();
    config.data_dir = dir.path().display().to_string();
    // As an operator sets it: the standard variables alone, no [export] table.
    config
        .apply_env([
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
                collector.endpoint(),
            ),
            (
                "OTEL_EXPORTER_OTLP_PROTOCOL".to_string(),
                "http/json".to_string(),
            ),
        ])
        .unwrap();
    config.export.endpoint = collector.endpoint();
    config.export.batch_delay_ms = 50;
    let gw = TestGateway::start(config).await.unwrap();
    calls(&gw, 3).await;
    // The collector reads the JSON with the gateway's receiver decoder, which follows the
    // OTLP/JSON rules (hex ids, integer enums), not with the exporter's own serde.
    let spans = collector.wait_for_spans(3, Duration::from_secs(10)).await;
    wait_settled(&gw, 3).await;
    assert_each_once(&collector.spans(), &recorded_span_ids(&gw));
    assert!(
        collector
            .content_types()
            .iter()
            .all(|t| t.starts_with("application/json")),
        "{:?}",
        collector.content_types()
    );
    let recorded = gw.recent_spans();
    let s = spans
        .iter()
        .find(|s| s.span_id == sidetrace::trace::context::hex(&recorded[0].span_id))
        .unwrap();
    assert_eq!(
        s.trace_id,
        sidetrace::trace::context::hex(&recorded[0].trace_id)
    );
    assert_eq!(s.kind, 3, "CLIENT");
    assert_eq!(s.name, "chat o4-mini");
    assert_eq!(
        s.attributes.get("gen_ai.usage.input_tokens"),
        Some(&common::otlp::AttrValue::Int(1310))
    );
    gw.shutdown().await;
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_sdk_disabled_or_traces_exporter_none_keep_every_span_local() {
    for var in [
        ("OTEL_SDK_DISABLED", "true"),
        ("OTEL_TRACES_EXPORTER", "none"),
    ] {
        let mock = Mock::start(|_| reply()).await;
        let collector = Collector::start(Transport::Http).await;
        let dir = tempfile::tempdir().unwrap();
        let mut config = sidetrace::config::Config::from_toml(
            &format!(
                "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{}\n[providers.openai]\nbase_url = {:?}\n",
                export_config(&collector.endpoint(), Transport::Http, dir.path(), ""),
                mock.url()
            ),
            "test.toml",
        )
        .unwrap();
        config
            .apply_env([(var.0.to_string(), var.1.to_string())])
            .unwrap();
        let gw = TestGateway::start(config).await.unwrap();
        calls(&gw, 3).await;
        // Shutdown exports whatever is queued: had export been on, the spans would be at the
        // collector once it returns.
        let recorded = gw.recent_spans().len();
        gw.shutdown().await;
        assert_eq!(recorded, 3, "{var:?}: the calls are still recorded");
        assert_eq!(collector.export_requests(), 0, "{var:?}");
        assert!(
            !dir.path().join("spool").exists(),
            "{var:?}: no spool either"
        );
        collector.stop().await;
    }
}

/// Spans leave from the export's own thread, at a lower priority than the calls: with the
/// runtime that serves calls not running at all, a finished call's span still reaches the
/// collector, and the thread that sent it runs at the background nice value.
#[cfg(target_os = "linux")]
#[test]
fn spans_leave_from_a_thread_of_their_own_that_gives_way_to_calls() {
    // The collector on a runtime of its own, so that it answers while the gateway's is idle.
    let collector_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let collector = collector_rt.block_on(Collector::start(Transport::Grpc));
    let calls_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = export_config(&collector.endpoint(), Transport::Grpc, dir.path(), "");
    let (mock, gw) = calls_rt.block_on(async {
        let mock = Mock::start(|_| reply()).await;
        let gw = gateway_for(&mock, &config).await;
        calls(&gw, 1).await;
        wait_metric(&gw, "sidetrace_spans_received_total", 1.0).await;
        (mock, gw)
    });
    // From here on nothing drives the gateway's runtime: no call is served, no task of it runs.
    let deadline = Instant::now() + Duration::from_secs(20);
    while collector.spans().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no span exported while the calls' runtime was idle"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_each_once(&collector.spans(), &recorded_span_ids(&gw));
    wait_for_background_threads("sidetrace-otlp");
    calls_rt.block_on(async {
        gw.shutdown().await;
        drop(mock);
    });
    collector_rt.block_on(collector.stop());
}

/// `sidetrace_export_queued_spans` shows the spans the export holds in memory: the calls'
/// spans while the collector has not answered, none once the batch has gone to the spool and
/// been replayed.
#[tokio::test]
async fn the_queued_spans_gauge_shows_what_the_export_holds() {
    let mock = Mock::start(|_| reply()).await;
    let collector = Collector::start(Transport::Grpc).await;
    collector.set_mode(Mode::Stall);
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "data_dir = {:?}\n[export]\nendpoint = {:?}\nprotocol = \"grpc\"\ntimeout_ms = 1500\nbatch_delay_ms = 20\nreplay_backoff_max_ms = 400\n",
        dir.path().display().to_string(),
        collector.endpoint()
    );
    let gw = gateway_for(&mock, &config).await;
    assert_eq!(metric(&gw, "sidetrace_export_queued_spans").await, 0.0);
    calls(&gw, 3).await;
    // Queued, then in the batch the stalled collector holds: 3 until the export times out.
    wait_metric(&gw, "sidetrace_export_queued_spans", 3.0).await;
    assert_eq!(metric(&gw, "sidetrace_spans_exported_total").await, 0.0);
    collector.set_mode(Mode::Accept);
    wait_settled(&gw, 3).await;
    assert_eq!(metric(&gw, "sidetrace_export_queued_spans").await, 0.0);
    assert_each_once(&collector.spans(), &recorded_span_ids(&gw));
    gw.shutdown().await;
    collector.stop().await;
}
