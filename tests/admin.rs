//! Who may look: the admin listener with a token. Every route with no token, a wrong token and
//! the right one; `/metrics` opened by its own switch; a non-loopback listener without a token
//! refused at start; and no token in any log line of the real binary.

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use sidetrace::Config;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// The admin routes that serve data, and the ones that are open whatever the token.
const GUARDED: &[(&str, &str)] = &[
    ("GET", "/api/traces"),
    ("GET", "/api/sessions"),
    ("GET", "/api/sessions/s_1"),
    ("GET", "/api/costs?group_by=user"),
    ("GET", "/api/traces/4bf92f3577b34da6a3ce929d0e0e4736"),
    ("GET", "/api/traces/4bf92f3577b34da6a3ce929d0e0e4736/otlp"),
    ("POST", "/api/scores"),
    ("GET", "/metrics"),
    ("GET", "/no/such/route"),
];
const OPEN: &[&str] = &[
    "/healthz",
    "/readyz",
    "/ui",
    "/ui/traces",
    "/ui/assets/app.js",
];

async fn request(gw: &TestGateway, method: &str, path: &str, token: Option<&str>) -> Answer {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", gw.admin_addr));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = if method == "POST" {
        format!(r#"{{"trace_id":"{TRACE}","name":"helpfulness","value":1}}"#)
    } else {
        String::new()
    };
    let response = client()
        .request(req.body(full_body(body)).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

async fn with_token(extra: &str) -> (Mock, TestGateway) {
    let mock = Mock::start(|_| {
        Reply::json(
            200,
            r#"{"id":"c1","model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
        )
    })
    .await;
    let gw = gateway_for(
        &mock,
        &format!("[admin]\ntoken = \"{TEST_ADMIN_TOKEN}\"\n{extra}"),
    )
    .await;
    // One call with a user, so the cost API has a user to leak.
    let r = post(
        &gw,
        "/v1/chat/completions",
        &[
            ("x-sidetrace-user-id", "u_secret_user"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ],
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    (mock, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_route_but_the_probes_needs_the_right_token() {
    let (_mock, gw) = with_token("").await;
    for &(method, path) in GUARDED {
        for token in [None, Some("wrong-token"), Some("test-admin-token-7f3")] {
            let a = request(&gw, method, path, token).await;
            assert_eq!(
                a.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {token:?}"
            );
            assert!(
                a.headers.contains_key("www-authenticate"),
                "{method} {path}"
            );
            assert_eq!(a.json()["error"]["type"], "unauthorized");
            let text = String::from_utf8_lossy(&a.body);
            assert!(!text.contains("u_secret_user"), "{method} {path}: {text}");
        }
        let a = request(&gw, method, path, Some(TEST_ADMIN_TOKEN)).await;
        assert_ne!(a.status, StatusCode::UNAUTHORIZED, "{method} {path}");
    }
    let costs = request(
        &gw,
        "GET",
        "/api/costs?group_by=user",
        Some(TEST_ADMIN_TOKEN),
    )
    .await;
    assert_eq!(costs.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&costs.body).contains("u_secret_user"));
    for path in OPEN {
        let a = request(&gw, "GET", path, None).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
    }
    // The refusals are counted, by reason (read with the token).
    let metrics = admin_get(&gw, "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        metric_in(&text, "sidetrace_admin_refused_total{reason=\"missing\"}") >= 9.0,
        "{text}"
    );
    assert!(metric_in(&text, "sidetrace_admin_refused_total{reason=\"wrong\"}") >= 18.0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_opened_for_scrapers_while_the_api_stays_closed() {
    let (_mock, gw) = with_token("open_metrics = true\n").await;
    let metrics = request(&gw, "GET", "/metrics", None).await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&metrics.body).contains("sidetrace_requests_total"));
    let api = request(&gw, "GET", "/api/traces", None).await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_non_loopback_admin_listener_without_a_token_refuses_to_start() {
    let exposed = "listen = \"127.0.0.1:0\"\nadmin_listen = \"0.0.0.0:0\"\n";
    let config = Config::from_toml(exposed, "t.toml").unwrap();
    let err = TestGateway::start(config).await.err().expect("refused");
    let message = err.to_string();
    assert!(
        message.contains("admin_listen 0.0.0.0:0") && message.contains("no token"),
        "{message}"
    );
    assert!(message.contains("allow_unauthenticated_admin"), "{message}");
    // A token, or the explicit override, lets it start (checked without binding 0.0.0.0).
    for extra in [
        "[admin]\ntoken = \"t0ken\"\n",
        "[admin]\nallow_unauthenticated_admin = true\n",
    ] {
        let config = Config::from_toml(&format!("{exposed}{extra}"), "t.toml").unwrap();
        sidetrace::server::check_config(&config).unwrap();
    }
    // A token file works as well; an empty one is refused.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "from-a-file\n").unwrap();
    let config = Config::from_toml(
        &format!(
            "{exposed}[admin]\ntoken_file = {:?}\n",
            file.display().to_string()
        ),
        "t.toml",
    )
    .unwrap();
    assert_eq!(
        config.admin.resolved_token().unwrap().unwrap().expose(),
        "from-a-file"
    );
    sidetrace::server::check_config(&config).unwrap();
    std::fs::write(&file, "\n").unwrap();
    assert!(
        sidetrace::server::check_config(&config)
            .unwrap_err()
            .to_string()
            .contains("is empty")
    );
    // Loopback needs none (the default).
    sidetrace::server::check_config(&Config::default()).unwrap();
}

#[tokio::test]
async fn the_token_file_reaches_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{TEST_ADMIN_TOKEN}\n")).unwrap();
    let gw = gateway(&format!(
        "[admin]\ntoken_file = {:?}\n",
        file.display().to_string()
    ))
    .await;
    assert_eq!(
        request(&gw, "GET", "/api/traces", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        request(&gw, "GET", "/api/traces", Some(TEST_ADMIN_TOKEN))
            .await
            .status,
        StatusCode::OK
    );
    gw.shutdown().await;
}

fn free_port() -> u16 {
    restartable_port()
}

/// The real binary with the token in its environment and debug logs: neither the token nor a
/// wrong one a client sent appears in any log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_admin_token_reaches_a_log_line() {
    let (port, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    // Logs to a file: at trace level they would fill a pipe nobody reads until the end.
    let log_path = dir.path().join("stderr.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidetrace"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SIDETRACE_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .arg("serve")
        .env("SIDETRACE_LISTEN", format!("127.0.0.1:{port}"))
        .env("SIDETRACE_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("SIDETRACE_INGEST_HTTP_LISTEN", "127.0.0.1:0")
        .env("SIDETRACE_INGEST_GRPC_LISTEN", "127.0.0.1:0")
        .env("SIDETRACE_DATA_DIR", dir.path())
        .env("SIDETRACE_ADMIN_TOKEN", "admin-token-in-env-91c2")
        .env("SIDETRACE_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while admin_text(admin, "/healthz").await.as_deref() != Some("ok\n") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for token in ["admin-token-in-env-91c2", "a-wrong-token-55e1"] {
        let req = Request::get(format!("http://127.0.0.1:{admin}/api/traces"))
            .header("authorization", format!("Bearer {token}"))
            .body(full_body(""))
            .unwrap();
        client().request(req).await.unwrap();
    }
    let status = sigterm_and_wait(&mut child, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(logs.contains("sidetrace listening"), "{logs}");
    assert!(
        !logs.contains("admin-token-in-env-91c2") && !logs.contains("a-wrong-token-55e1"),
        "{logs}"
    );
}

/// A wrong method, or a path under /api/ that is no endpoint, answers a JSON error like every
/// API answer (it was plain text); a 405 names the methods its route takes.
#[tokio::test]
async fn wrong_methods_and_unknown_api_paths_get_json_errors() {
    let (_mock, gw) = with_token("").await;
    for (method, path, status, allow) in [
        (
            "POST",
            "/api/traces",
            StatusCode::METHOD_NOT_ALLOWED,
            Some("GET, HEAD"),
        ),
        (
            "GET",
            "/api/scores",
            StatusCode::METHOD_NOT_ALLOWED,
            Some("POST"),
        ),
        ("GET", "/api/nope", StatusCode::NOT_FOUND, None),
    ] {
        let a = request(&gw, method, path, Some(TEST_ADMIN_TOKEN)).await;
        assert_eq!(a.status, status, "{method} {path}");
        assert_eq!(
            a.headers["content-type"], "application/json",
            "{method} {path}"
        );
        assert!(a.json()["error"]["message"].is_string(), "{method} {path}");
        let allowed = a.headers.get("allow").map(|v| v.to_str().unwrap());
        assert_eq!(allowed, allow, "{method} {path}");
    }
}
