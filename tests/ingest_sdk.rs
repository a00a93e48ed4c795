//! An app instrumented with the official OpenTelemetry Python SDK (tests/sdk/otlp_app.py)
//! exports its spans to the gateway's OTLP receiver over HTTP and over gRPC, and calls its LLM
//! through the gateway with the propagated context: the trace store shows one tree with the
//! right parents, and the upstream collector gets every span, the app's and the gateway's,
//! exactly once with the app's resource on the app's spans, also across a collector outage and
//! a gateway restart. Needs the venv that `tests/setup-python.sh` makes.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{
    otlp::{Collector, Mode, Transport},
    *,
};
use http::StatusCode;

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("SIDETRACE_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run `bash tests/setup-python.sh` (the README's test command does)",
        venv.display()
    );
    venv
}

fn provider(_: &Seen) -> Reply {
    Reply::json(
        200,
        &String::from_utf8(fixture("openai/chat_nonstream.json")).unwrap(),
    )
}

/// What the app reports: its trace id and (name, span id, parent id) per span.
struct AppRun {
    trace_id: String,
    spans: Vec<(String, String, Option<String>)>,
}

impl AppRun {
    fn id(&self, name: &str) -> &str {
        &self
            .spans
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("the app made no {name} span"))
            .1
    }
}

/// Runs the app against the gateway's receiver over `transport`.
async fn run_app(gw: &TestGateway, transport: Transport) -> AppRun {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/otlp_app.py");
    let (arg, endpoint) = match transport {
        Transport::Http => ("http", gw.ingest_http_addr.unwrap()),
        Transport::Grpc => ("grpc", gw.ingest_grpc_addr.unwrap()),
    };
    let gateway = format!("http://{}", gw.addr);
    let output = tokio::task::spawn_blocking(move || {
        let mut c = Command::new(python());
        for (k, _) in std::env::vars() {
            if k.starts_with("OTEL_") || k.starts_with("OPENAI_") {
                c.env_remove(k);
            }
        }
        c.arg(script)
            .arg(arg)
            .env("GATEWAY", gateway)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{endpoint}"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains(&format!("ok {arg}")),
        "otlp_app.py {arg} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // An export the receiver refused shows as an SDK error on stderr.
    assert!(
        !stderr.contains("Failed to export"),
        "the SDK could not export:\n{stderr}"
    );
    let mut run = AppRun {
        trace_id: String::new(),
        spans: Vec::new(),
    };
    for line in stdout.lines() {
        if let Some(id) = line.strip_prefix("trace ") {
            run.trace_id = id.to_string();
        }
        if let ["span", name, id, parent] = line.split('\t').collect::<Vec<_>>().as_slice() {
            run.spans.push((
                name.to_string(),
                id.to_string(),
                (*parent != "-").then(|| parent.to_string()),
            ));
        }
    }
    assert_eq!(run.spans.len(), 3, "{stdout}");
    run
}

fn config(collector: &Collector, data_dir: &Path) -> String {
    format!(
        "data_dir = {:?}\n[export]\nendpoint = {:?}\nprotocol = \"grpc\"\ntimeout_ms = 300\nbatch_delay_ms = 20\nreplay_backoff_max_ms = 400\n",
        data_dir.display().to_string(),
        collector.endpoint(),
    )
}

/// Waits until the gateway has delivered `n` spans and holds none in its spool.
async fn wait_settled(gw: &TestGateway, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
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

/// The stored trace is one tree: the run at the root, retrieval, the gateway's LLM call and the
/// tool call under it, each under its own service.
async fn assert_stored_tree(gw: &TestGateway, app: &AppRun) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let stored = loop {
        let a = admin_get(gw, &format!("/api/traces/{}", app.trace_id)).await;
        if a.status == StatusCode::OK && a.json()["spans"].as_array().unwrap().len() == 4 {
            break a.json();
        }
        assert!(
            Instant::now() < deadline,
            "the stored trace is not complete: {} {:?}",
            a.status,
            String::from_utf8_lossy(&a.body)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let spans = stored["spans"].as_array().unwrap();
    let by_id: BTreeMap<&str, &serde_json::Value> = spans
        .iter()
        .map(|s| (s["span_id"].as_str().unwrap(), s))
        .collect();
    let root = by_id[app.id("support_agent.run")];
    assert_eq!(root["name"], "support_agent.run");
    assert_eq!(root["parent_span_id"], serde_json::Value::Null);
    assert_eq!(root["service"], "support-agent");
    assert_eq!(root["scope"], "support_agent");
    for name in ["retrieve", "execute_tool lookup_order"] {
        let s = by_id[app.id(name)];
        assert_eq!(s["parent_span_id"], root["span_id"], "{name}");
        assert_eq!(s["service"], "support-agent", "{name}");
    }
    let tool = by_id[app.id("execute_tool lookup_order")];
    assert_eq!(tool["name"], "execute_tool lookup_order");
    assert_eq!(tool["kind"], "INTERNAL");
    assert_eq!(tool["attributes"]["gen_ai.tool.call.id"], "call_lookup_42");
    let retrieve = by_id[app.id("retrieve")];
    assert_eq!(
        retrieve["attributes"]["retrieval.documents"],
        serde_json::json!(["order-policy.md", "faq.md"])
    );
    let llm: Vec<_> = spans
        .iter()
        .filter(|s| s["service"] == "sidetrace")
        .collect();
    assert_eq!(llm.len(), 1, "{stored:#}");
    assert_eq!(llm[0]["parent_span_id"], root["span_id"]);
    assert_eq!(llm[0]["kind"], "CLIENT");
}

/// The collector got every span of the run exactly once, the app's under the app's resource and
/// scope, the gateway's under its own.
fn assert_collected_once(collector: &Collector, apps: &[AppRun]) {
    let received = collector.spans();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &received {
        *counts.entry(s.span_id.as_str()).or_default() += 1;
    }
    let dupes: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dupes.is_empty(), "spans received more than once: {dupes:?}");
    let traces: BTreeSet<&str> = apps.iter().map(|a| a.trace_id.as_str()).collect();
    assert_eq!(received.len(), 4 * apps.len(), "{received:#?}");
    for app in apps {
        for (name, id, parent) in &app.spans {
            let s = received
                .iter()
                .find(|s| &s.span_id == id)
                .unwrap_or_else(|| panic!("{name} never reached the collector"));
            assert_eq!(s.resource["service.name"], "support-agent", "{name}");
            assert_eq!(s.resource["deployment.environment"], "test", "{name}");
            assert_eq!(s.scope_name, "support_agent", "{name}");
            assert_eq!(s.scope_version, "0.3.0", "{name}");
            assert_eq!(s.trace_id, app.trace_id);
            assert_eq!(
                Some(&s.parent_span_id).filter(|p| !p.is_empty()),
                parent.as_ref()
            );
        }
    }
    let own: Vec<_> = received
        .iter()
        .filter(|s| s.resource["service.name"] == "sidetrace")
        .collect();
    assert_eq!(own.len(), apps.len());
    for s in own {
        assert!(traces.contains(s.trace_id.as_str()));
        let app = apps.iter().find(|a| a.trace_id == s.trace_id).unwrap();
        assert_eq!(s.parent_span_id, app.id("support_agent.run"));
        assert_eq!(s.scope_name, "sidetrace");
    }
}

async fn app_spans_reach_the_store_and_the_collector(transport: Transport) {
    let collector = Collector::start(Transport::Grpc).await;
    let mock = Mock::start(provider).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_for(&mock, &config(&collector, dir.path())).await;
    let app = run_app(&gw, transport).await;
    assert_stored_tree(&gw, &app).await;
    collector.wait_for_spans(4, Duration::from_secs(20)).await;
    wait_settled(&gw, 4).await;
    assert_collected_once(&collector, &[app]);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_app_exporting_over_otlp_http_makes_one_tree_and_reaches_the_collector_once() {
    app_spans_reach_the_store_and_the_collector(Transport::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_app_exporting_over_otlp_grpc_makes_one_tree_and_reaches_the_collector_once() {
    app_spans_reach_the_store_and_the_collector(Transport::Grpc).await;
}

/// The collector fails while the app runs (HTTP), then recovers; then it fails again while the
/// app runs (gRPC) and the gateway restarts on the same data dir before it recovers: every
/// span of both runs arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_a_collector_outage_and_a_gateway_restart_every_span_arrives_once() {
    let collector = Collector::start(Transport::Grpc).await;
    let mock = Mock::start(provider).await;
    let dir = tempfile::tempdir().unwrap();
    let text = config(&collector, dir.path());

    collector.set_mode(Mode::Status {
        code: 503,
        retry_after_s: None,
    });
    let gw = gateway_for(&mock, &text).await;
    let first = run_app(&gw, Transport::Http).await;
    assert_stored_tree(&gw, &first).await;
    wait_metric(&gw, "sidetrace_spans_spooled_total", 4.0).await;
    assert!(collector.spans().is_empty());
    collector.set_mode(Mode::Accept);
    collector.wait_for_spans(4, Duration::from_secs(20)).await;
    wait_settled(&gw, 4).await;

    collector.set_mode(Mode::Status {
        code: 503,
        retry_after_s: None,
    });
    let second = run_app(&gw, Transport::Grpc).await;
    wait_metric(&gw, "sidetrace_spans_spooled_total", 8.0).await;
    gw.shutdown().await;

    collector.set_mode(Mode::Accept);
    let gw = gateway_for(&mock, &text).await;
    collector.wait_for_spans(8, Duration::from_secs(20)).await;
    wait_settled(&gw, 4).await;
    // The restarted gateway still serves the first run's tree from its store.
    assert_stored_tree(&gw, &first).await;
    assert_stored_tree(&gw, &second).await;
    assert_collected_once(&collector, &[first, second]);
    gw.shutdown().await;
}
