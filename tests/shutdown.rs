//! Shutdown with calls still open when the grace ends: every cut call is finished, recorded as
//! `error.type=shutdown` and exported before the gateway stops; none is lost.

mod common;

use std::{
    collections::BTreeSet,
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    otlp::{AttrValue, Collector, ReceivedSpan, Transport},
    *,
};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

const STREAM: &str =
    r#"{"model":"o4-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const FIRST_EVENT: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"o4-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n";

/// A stream that sends one event and then nothing, until the connection goes away.
fn endless_stream() -> Reply {
    Reply::sse(&[FIRST_EVENT], Duration::ZERO).then(Step::Stall)
}

/// Starts a streamed call and returns its body once the first event has arrived.
async fn open_stream(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        TestBody,
    >,
    addr: std::net::SocketAddr,
) -> Incoming {
    let req = Request::post(format!("http://{addr}/openai/v1/chat/completions"))
        .body(full_body(STREAM))
        .unwrap();
    let response = client.request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
    body
}

fn error_type(span: &ReceivedSpan) -> Option<&str> {
    match span.attributes.get("error.type") {
        Some(AttrValue::Str(s)) => Some(s),
        _ => None,
    }
}

fn assert_all_cut(spans: &[ReceivedSpan], n: usize) {
    assert_eq!(spans.len(), n, "one span per call: {spans:?}");
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    assert_eq!(ids.len(), n, "no span twice");
    for span in spans {
        assert_eq!(error_type(span), Some("shutdown"), "{span:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_cut_when_the_grace_ends_are_exported_as_shutdown_before_the_gateway_stops() {
    let mock = Mock::start(|_| endless_stream()).await;
    let collector = Collector::start(Transport::Grpc).await;
    let dir = tempfile::tempdir().unwrap();
    // "finish" would read a cut stream's rest in the background: nothing may outlive shutdown.
    let config = format!(
        "shutdown_grace_ms = 200\ndata_dir = {:?}\n[inspect]\non_client_disconnect = \"finish\"\n\
         [export]\nendpoint = {:?}\nbatch_delay_ms = 50\n",
        dir.path().display().to_string(),
        collector.endpoint()
    );
    let gw = gateway_for(&mock, &config).await;
    let (h1, h2) = (client(), h2_client());
    let mut open = Vec::new();
    for i in 0..10 {
        let client = if i % 2 == 0 { &h1 } else { &h2 };
        open.push(open_stream(client, gw.addr).await);
    }
    let report = tokio::time::timeout(Duration::from_secs(30), gw.shutdown())
        .await
        .expect("shutdown returns");
    assert!(!report.drained);
    // Shutdown exported the queue before returning; nothing arrives later.
    assert_all_cut(&collector.spans(), 10);
    // The clients see their streams end (cut), not hang.
    for body in open {
        let (_, end) = tokio::time::timeout(Duration::from_secs(10), frames(body))
            .await
            .expect("the cut stream ends");
        assert!(end.is_err(), "a cut stream ends with an error");
    }
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_on_sigterm_exports_the_calls_it_cuts_and_exits_0() {
    let mock = Mock::start(|_| endless_stream()).await;
    let collector = Collector::start(Transport::Http).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidetrace.toml");
    let (port, admin) = (restartable_port(), restartable_port());
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
             shutdown_grace_ms = 300\ndata_dir = {:?}\n\
             [providers.openai]\nbase_url = \"{}\"\n\
             [export]\nendpoint = {:?}\nprotocol = \"http/protobuf\"\nbatch_delay_ms = 50\n",
            dir.path().display().to_string(),
            mock.url(),
            collector.endpoint()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sidetrace"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .env("SIDETRACE_INGEST_HTTP_LISTEN", "127.0.0.1:0")
        .env("SIDETRACE_INGEST_GRPC_LISTEN", "127.0.0.1:0")
        .env_remove("RUST_LOG")
        .env_remove("SIDETRACE_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "gateway did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = client();
    let mut open = Vec::new();
    for _ in 0..5 {
        open.push(open_stream(&client, addr).await);
    }
    let status = sigterm_and_wait(&mut child, Duration::from_secs(30)).await;
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{logs}");
    assert_all_cut(&collector.spans(), 5);
    assert!(logs.contains("grace period over"), "{logs}");
    drop(open);
    collector.stop().await;
}
