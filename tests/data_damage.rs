//! A damaged data dir: spool blobs with flipped bytes and a truncated cost store. What cannot be
//! read is reported (a log line naming the path), counted (metrics) and kept aside for
//! inspection (`<name>.corrupt-<unix time>`), and the gateway keeps proxying.

mod common;

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    otlp::{Collector, Transport},
    *,
};
use http::{Request, StatusCode};

const CHAT: &str = r#"{"model":"o4-mini","messages":[{"role":"user","content":"hi"}]}"#;

fn reply() -> Reply {
    Reply::json(
        200,
        &String::from_utf8(fixture("openai/chat_nonstream.json")).unwrap(),
    )
}

/// Directories next to `dir` named `<name>.corrupt-*`.
fn set_aside(dir: &Path) -> Vec<PathBuf> {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{name}.corrupt-"))
        })
        .collect()
}

/// Flips every 97th byte of `path` past its first 16.
fn flip_bytes(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    for i in (16..bytes.len()).step_by(97) {
        bytes[i] ^= 0xff;
    }
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_in_spool_blobs_are_reported_counted_and_kept_aside() {
    let mock = Mock::start(|_| reply()).await;
    let collector = Collector::start(Transport::Grpc).await;
    let addr = collector.addr;
    let endpoint = collector.endpoint();
    collector.stop().await;
    let dir = tempfile::tempdir().unwrap();
    // One slow batch collects all the spans: a batch that large is stored as a sled blob.
    let config = format!(
        "data_dir = {:?}\n[export]\nendpoint = {endpoint:?}\nprotocol = \"grpc\"\ntimeout_ms = 300\nbatch_delay_ms = 3000\nreplay_backoff_max_ms = 400\n",
        dir.path().display().to_string()
    );
    let gw = gateway_for(&mock, &config).await;
    let n = 300;
    for _ in 0..n {
        assert_eq!(
            post(&gw, "/openai/v1/chat/completions", &[], CHAT)
                .await
                .status,
            StatusCode::OK
        );
    }
    wait_metric(&gw, "sidetrace_spans_spooled_total", n as f64).await;
    gw.shutdown().await;

    // Large batches are sled blobs: damage every one of them.
    let spool = dir.path().join("spool");
    let blobs: Vec<PathBuf> = std::fs::read_dir(spool.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!blobs.is_empty(), "expected sled blobs in {spool:?}");
    for blob in &blobs {
        flip_bytes(blob);
    }

    let collector = Collector::start_on(Transport::Grpc, addr).await;
    let gw = gateway_for(&mock, &config).await;
    assert_eq!(
        metric(&gw, "sidetrace_store_damaged_total{store=\"spool\"}").await,
        1.0
    );
    wait_metric(
        &gw,
        "sidetrace_spans_dropped_total{reason=\"corrupt\"}",
        1.0,
    )
    .await;
    let aside = set_aside(&spool);
    assert_eq!(aside.len(), 1, "the damaged spool is kept aside: {aside:?}");
    assert!(aside[0].join("blobs").exists());
    assert!(spool.exists(), "a fresh spool replaces it");
    // The gateway keeps proxying and exporting.
    assert_eq!(
        post(&gw, "/openai/v1/chat/completions", &[], CHAT)
            .await
            .status,
        StatusCode::OK
    );
    // Every spooled span is either replayed or counted as lost; nothing vanishes silently.
    let corrupt = metric(&gw, "sidetrace_spans_dropped_total{reason=\"corrupt\"}").await as usize;
    let received = collector
        .wait_for_spans(n - corrupt + 1, Duration::from_secs(30))
        .await;
    assert_eq!(received.len() + corrupt, n + 1);
    gw.shutdown().await;
    collector.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The cost store, through the real binary (to read its log).

fn serve(config: &Path) -> std::process::Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sidetrace"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SIDETRACE_") || k.starts_with("OTEL_") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c.args(["serve", "--config", config.to_str().unwrap()])
        .env("SIDETRACE_INGEST_HTTP_LISTEN", "127.0.0.1:0")
        .env("SIDETRACE_INGEST_GRPC_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn call(port: u16, feature: &str) -> Option<StatusCode> {
    let req = Request::post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .header("x-sidetrace-feature", feature)
        .body(full_body(CHAT))
        .unwrap();
    client().request(req).await.ok().map(|r| r.status())
}

async fn wait_up(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while call(port, "warmup").await.is_none() {
        assert!(Instant::now() < deadline, "gateway did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sigterm(child: &mut std::process::Child) -> String {
    let status = sigterm_and_wait(child, Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0));
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    logs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_cost_store_is_reported_counted_and_kept_aside_and_budgets_say_so() {
    let mock = Mock::start(|_| reply()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidetrace.toml");
    let (port, admin) = (restartable_port(), restartable_port());
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\ndata_dir = {:?}\n\
             [providers.openai]\nbase_url = \"{}\"\n\
             [[budgets]]\nname = \"all\"\nlimit_usd = \"1000.00\"\nwindow = \"month\"\n",
            dir.path().display().to_string(),
            mock.url()
        ),
    )
    .unwrap();
    let mut child = serve(&path);
    wait_up(port).await;
    // One row per feature, so the store is large enough for a truncation to cut rows off.
    let n = 400;
    for i in 0..n {
        assert_eq!(
            call(port, &format!("feature-{i:04}")).await,
            Some(StatusCode::OK)
        );
    }
    let logs = sigterm(&mut child).await;
    assert!(!logs.contains("damaged"), "{logs}");

    let costs = dir.path().join("costs");
    let db = costs.join("db");
    let len = std::fs::metadata(&db).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    file.set_len(len / 3).unwrap();
    drop(file);

    let mut child = serve(&path);
    wait_up(port).await;
    let metrics = admin_text(admin, "/metrics").await.unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(
        value("sidetrace_store_damaged_total{store=\"costs\"}"),
        1.0,
        "{metrics}"
    );
    assert!(value("sidetrace_cost_calls_lost_total") >= 1.0, "{metrics}");
    let aside = set_aside(&costs);
    assert_eq!(aside.len(), 1, "the damaged store is kept aside: {aside:?}");
    assert!(aside[0].join("db").exists());
    // Still proxying, and the cost API answers from the fresh store.
    assert_eq!(call(port, "after").await, Some(StatusCode::OK));
    assert!(admin_text(admin, "/api/costs").await.is_some());
    let logs = sigterm(&mut child).await;
    assert!(
        logs.contains("the cost store is damaged") && logs.contains(&costs.display().to_string()),
        "an error naming the path is expected:\n{logs}"
    );
    assert!(
        logs.contains("budgets could not be seeded"),
        "budgets say they could not be seeded:\n{logs}"
    );
}
