//! Who may call: gateway keys. Missing, unknown, expired and disallowed keys are refused in the
//! error shape the SDKs surface, each recorded exactly once; the key's name is on the span and
//! the metrics, it stands for its feature and user, carries a budget, and never reaches the
//! provider. The real binary with a gateway-held provider key: the provider gets that key and
//! no key material reaches a log line, the spool or the trace store.

mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use http::{Request, StatusCode};
use sidetrace::trace::span::AttrValue;

const APP: &str = "sk-st-app-key-aaaaaaaaaaaaaaaaaaaaaaaa";
const OLD: &str = "sk-st-old-key-bbbbbbbbbbbbbbbbbbbbbbbb";
const BUDGETED: &str = "sk-st-budgeted-key-cccccccccccccccccc";
const WRONG: &str = "sk-st-wrong-key-dddddddddddddddddddddd";

fn digest(key: &str) -> String {
    sidetrace::digest::hex(&sidetrace::digest::sha256(key.as_bytes()))
}

fn keys_config() -> String {
    format!(
        "[[keys]]\nname = \"app\"\nsha256 = \"{}\"\nfeature = \"support_agent\"\nuser = \"svc-app\"\n\
         providers = [\"openai\"]\nmodels = [\"gpt-4o-mini\", \"o4-*\"]\n\
         [[keys]]\nname = \"old\"\nsha256 = \"{}\"\nexpires = 2020-01-01T00:00:00Z\n\
         [[keys]]\nname = \"budgeted\"\nsha256 = \"{}\"\n\
         [[budgets]]\nname = \"budgeted-daily\"\nkey = \"budgeted\"\nlimit_usd = \"0.0001\"\nwindow = \"day\"\n",
        digest(APP),
        digest(OLD),
        digest(BUDGETED)
    )
}

fn answer(_: &Seen) -> Reply {
    Reply::json(
        200,
        r#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1000,"completion_tokens":1000,"total_tokens":2000}}"#,
    )
}

async fn call(gw: &TestGateway, path: &str, headers: &[(&str, &str)], model: &str) -> Answer {
    post(
        gw,
        path,
        headers,
        &format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#),
    )
    .await
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

fn attr<'a>(span: &'a sidetrace::trace::span::SpanRecord, key: &str) -> Option<&'a str> {
    span.attributes.iter().find_map(|(k, v)| match v {
        AttrValue::Str(s) if k == key => Some(s.as_str()),
        _ => None,
    })
}

/// Path, headers, model; status, `error.code`, key name on the span.
type Refusal<'a> = (
    &'a str,
    Vec<(&'a str, &'a str)>,
    &'a str,
    StatusCode,
    &'a str,
    Option<&'a str>,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_valid_key_are_refused_in_the_sdk_error_shape_and_each_is_recorded_once() {
    let mock = Mock::start(answer).await;
    let gw = gateway_for(&mock, &keys_config()).await;
    let app = bearer(APP);
    let cases: Vec<Refusal> = vec![
        (
            "/openai/v1/chat/completions",
            vec![],
            "gpt-4o-mini",
            StatusCode::UNAUTHORIZED,
            "missing_gateway_key",
            None,
        ),
        (
            "/openai/v1/chat/completions",
            vec![("authorization", "Bearer sk-st-nope")],
            "gpt-4o-mini",
            StatusCode::UNAUTHORIZED,
            "invalid_gateway_key",
            None,
        ),
        (
            "/openai/v1/chat/completions",
            vec![("x-sidetrace-key", OLD)],
            "gpt-4o-mini",
            StatusCode::UNAUTHORIZED,
            "expired_gateway_key",
            Some("old"),
        ),
        (
            "/anthropic/v1/messages",
            vec![("x-api-key", APP)],
            "claude-3-5-haiku",
            StatusCode::FORBIDDEN,
            "gateway_key_not_allowed",
            Some("app"),
        ),
        (
            "/openai/v1/chat/completions",
            vec![("authorization", app.as_str())],
            "gpt-4o",
            StatusCode::FORBIDDEN,
            "gateway_key_not_allowed",
            Some("app"),
        ),
    ];
    for (path, headers, model, status, code, _) in &cases {
        let a = call(&gw, path, headers, model).await;
        assert_eq!(a.status, *status, "{code}");
        let body = a.json();
        assert_eq!(body["error"]["code"], *code);
        let kind = if *status == StatusCode::UNAUTHORIZED {
            "authentication_error"
        } else {
            "permission_error"
        };
        assert_eq!(body["error"]["type"], kind);
        assert_eq!(a.headers["x-should-retry"], "false");
        let text = String::from_utf8_lossy(&a.body);
        for key in [APP, OLD, "sk-st-nope"] {
            assert!(!text.contains(key), "{text}");
        }
    }
    // Nothing refused reached the provider; the key's name is on each span that knew it.
    assert!(mock.requests().is_empty());
    let spans = gw.recent_spans();
    assert_eq!(spans.len(), cases.len(), "one span per refused call");
    for (span, (_, _, _, _, code, name)) in spans.iter().zip(&cases) {
        assert_eq!(attr(span, "error.type"), Some(*code));
        assert_eq!(attr(span, "sidetrace.key.name"), *name, "{code}");
        // Only the name: no key bytes anywhere in the span.
        let whole = format!("{span:?}");
        for key in [APP, OLD, "sk-st-nope"] {
            assert!(!whole.contains(key), "{key} in the span of {code}");
        }
    }

    // The right key on an allowed model goes through, and the key stays at the gateway.
    let ok = call(
        &gw,
        "/openai/v1/chat/completions",
        &[
            ("authorization", &app),
            ("x-sidetrace-user-id", "someone-else"),
        ],
        "o4-mini-2025-04-16",
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    let seen = mock.last();
    assert!(
        seen.headers.get("authorization").is_none(),
        "{:?}",
        seen.headers
    );
    let calls = gw.recent_calls();
    assert_eq!(calls.len(), cases.len() + 1);
    let last = calls.last().unwrap();
    assert_eq!(last.metadata.key.as_deref(), Some("app"));
    // The key stands for its feature and user, whatever the headers claim.
    assert_eq!(last.metadata.user_id.as_deref(), Some("svc-app"));
    assert_eq!(last.metadata.feature.as_deref(), Some("support_agent"));
    let metrics = metrics_of(&gw).await;
    assert_eq!(
        metric_in(
            &metrics,
            "sidetrace_calls_total{provider=\"openai\",outcome=\"completed\",key=\"app\"}"
        ),
        1.0,
        "{metrics}"
    );
    gw.shutdown().await;
}

/// A key's model list held only for requests whose model the gateway read: a body it could
/// not parse, a route it does not inspect (images, audio) or a path with a percent-encoded
/// letter (`completion%73`, which the provider reads as `completions`) went through with any
/// model. Now the encoded path is the plain one (routed, inspected, checked and forwarded as
/// that), and a request whose model cannot be read is refused; reads (GET) still pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_model_list_holds_for_requests_whose_model_cannot_be_read() {
    let mock = Mock::start(answer).await;
    let gw = gateway_for(&mock, &keys_config()).await;
    let key = [("x-sidetrace-key", APP)];
    let refused = [
        (
            "/openai/v1/chat/completion%73",
            r#"{"model":"gpt-4o","messages":[]}"#,
        ),
        (
            "/openai/v1/chat/completions",
            "\u{feff}{\"model\":\"gpt-4o\",\"messages\":[]}",
        ),
        (
            "/openai/v1/images/generations",
            r#"{"model":"gpt-image-1","prompt":"a cat"}"#,
        ),
        (
            "/openai/v1/audio/speech",
            r#"{"model":"tts-1-hd","input":"hi"}"#,
        ),
    ];
    for (path, body) in refused {
        let a = post(&gw, path, &key, body).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(
            a.json()["error"]["code"],
            "gateway_key_not_allowed",
            "{path}"
        );
    }
    assert!(mock.requests().is_empty());
    // An allowed model on the encoded path reaches the provider on the plain one.
    let ok = post(
        &gw,
        "/openai/v1/chat/completion%73",
        &key,
        r#"{"model":"gpt-4o-mini","messages":[]}"#,
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(mock.last().uri, "/v1/chat/completions");
    // Reads use no model.
    let req = Request::get(format!("http://{}/openai/v1/models", gw.addr))
        .header("x-sidetrace-key", APP)
        .body(full_body(""))
        .unwrap();
    assert_eq!(
        client().request(req).await.unwrap().status(),
        StatusCode::OK
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_sidetrace_key_rides_beside_the_clients_own_provider_key() {
    let mock = Mock::start(answer).await;
    let gw = gateway_for(&mock, &keys_config()).await;
    let a = call(
        &gw,
        "/openai/v1/chat/completions",
        &[
            ("authorization", "Bearer sk-client-own-provider-key"),
            ("x-sidetrace-key", APP),
        ],
        "gpt-4o-mini",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let seen = mock.last();
    assert_eq!(
        seen.headers["authorization"],
        "Bearer sk-client-own-provider-key"
    );
    assert!(seen.headers.get("x-sidetrace-key").is_none());
    // A gateway key in a credential header beside x-sidetrace-key never goes upstream either.
    let both = call(
        &gw,
        "/openai/v1/chat/completions",
        &[("authorization", &bearer(OLD)), ("x-sidetrace-key", APP)],
        "gpt-4o-mini",
    )
    .await;
    assert_eq!(both.status, StatusCode::OK);
    assert!(mock.last().headers.get("authorization").is_none());
    // A provider key alone is not a gateway key.
    let refused = call(
        &gw,
        "/openai/v1/chat/completions",
        &[("authorization", "Bearer sk-client-own-provider-key")],
        "gpt-4o-mini",
    )
    .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_budget_refuses_its_calls_once_spent_and_no_other_keys() {
    let mock = Mock::start(answer).await;
    let gw = gateway_for(&mock, &keys_config()).await;
    let budgeted = bearer(BUDGETED);
    // 1000 + 1000 tokens of gpt-4o-mini cost far more than the 0.0001 USD budget.
    let first = call(
        &gw,
        "/v1/chat/completions",
        &[("authorization", &budgeted)],
        "gpt-4o-mini",
    )
    .await;
    assert_eq!(first.status, StatusCode::OK);
    let second = call(
        &gw,
        "/v1/chat/completions",
        &[("authorization", &budgeted)],
        "gpt-4o-mini",
    )
    .await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(second.json()["error"]["code"], "budget_exceeded");
    assert!(String::from_utf8_lossy(&second.body).contains("budgeted-daily"));
    let other = call(
        &gw,
        "/v1/chat/completions",
        &[("authorization", &bearer(APP))],
        "gpt-4o-mini",
    )
    .await;
    assert_eq!(other.status, StatusCode::OK);
    let refused = gw
        .recent_calls()
        .into_iter()
        .filter(|c| c.error_type.as_deref() == Some("budget_exceeded"))
        .collect::<Vec<_>>();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].metadata.key.as_deref(), Some("budgeted"));
    gw.shutdown().await;
}

/// The cost store keeps the key as a dimension: spend per key is in the cost API, and a key's
/// spent budget is still spent after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_spend_is_in_the_cost_api_and_its_budget_survives_a_restart() {
    let mock = Mock::start(answer).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "data_dir = {:?}\n{}",
        dir.path().display().to_string(),
        keys_config()
    );
    let budgeted = bearer(BUDGETED);
    let gw = gateway_for(&mock, &extra).await;
    let first = call(
        &gw,
        "/v1/chat/completions",
        &[("authorization", &budgeted)],
        "gpt-4o-mini",
    )
    .await;
    assert_eq!(first.status, StatusCode::OK);
    let app = call(
        &gw,
        "/v1/chat/completions",
        &[("authorization", &bearer(APP))],
        "gpt-4o-mini",
    )
    .await;
    assert_eq!(app.status, StatusCode::OK);
    let costs = admin_get(&gw, "/api/costs?group_by=key").await.json();
    let keys: Vec<&str> = costs["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 2, "{costs}");
    assert!(
        keys.contains(&"budgeted") && keys.contains(&"app"),
        "{costs}"
    );
    let one = admin_get(&gw, "/api/costs?group_by=model&key=app")
        .await
        .json();
    assert_eq!(one["total"]["calls"], 1, "{one}");
    gw.shutdown().await;

    let gw = gateway_for(&mock, &extra).await;
    let after = call(
        &gw,
        "/v1/chat/completions",
        &[("authorization", &budgeted)],
        "gpt-4o-mini",
    )
    .await;
    assert_eq!(
        after.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the spend was forgotten"
    );
    assert_eq!(mock.requests().len(), 2);
    gw.shutdown().await;
}

#[test]
fn keys_that_cannot_work_are_refused_by_the_config_check() {
    let check = |text: &str| {
        let config = sidetrace::Config::from_toml(text, "c.toml").unwrap();
        sidetrace::server::check_config(&config)
            .map(drop)
            .map_err(|e| e.to_string())
    };
    let hash = digest(APP);
    assert!(check(&format!("[[keys]]\nname = \"a\"\nsha256 = \"{hash}\"\n")).is_ok());
    let short = check("[[keys]]\nname = \"a\"\nsha256 = \"abc\"\n").unwrap_err();
    assert!(short.contains("64 hex digits"), "{short}");
    let twice = check(&format!(
        "[[keys]]\nname = \"a\"\nsha256 = \"{hash}\"\n[[keys]]\nname = \"b\"\nsha256 = \"{hash}\"\n"
    ))
    .unwrap_err();
    assert!(twice.contains("twice"), "{twice}");
    let provider = check(&format!(
        "[[keys]]\nname = \"a\"\nsha256 = \"{hash}\"\nproviders = [\"nosuch\"]\n"
    ))
    .unwrap_err();
    assert!(provider.contains("nosuch"), "{provider}");
    let local = check("[[keys]]\nname = \"a\"\nsha256 = \"abc\"\nexpires = 2027-01-01T00:00:00\n");
    assert!(local.is_err());
    let budget =
        check("[[budgets]]\nname = \"b\"\nkey = \"ghost\"\nlimit_usd = \"1\"\nwindow = \"day\"\n")
            .unwrap_err();
    assert!(budget.contains("ghost"), "{budget}");
}

fn sidetrace_bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sidetrace"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SIDETRACE_") || k.ends_with("_API_KEY") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c.env("SIDETRACE_INGEST_HTTP_LISTEN", "127.0.0.1:0")
        .env("SIDETRACE_INGEST_GRPC_LISTEN", "127.0.0.1:0");
    c
}

/// A gateway-held key goes only to its provider's fixed host: a host taken from the client's
/// path (Azure's `{resource}`) with a held key set is refused.
#[test]
fn a_gateway_held_key_with_a_host_from_the_path_is_refused() {
    let out = sidetrace_bin()
        .arg("check-config")
        .env("AZURE_OPENAI_API_KEY", "held-azure-key-0003")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("provider azure") && err.contains("fixed base_url"),
        "{err}"
    );
    assert!(!err.contains("held-azure-key-0003"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[providers.azure]\nbase_url = \"https://myres.openai.azure.com\"\n",
    )
    .unwrap();
    let out = sidetrace_bin()
        .args(["check-config", "--config", path.to_str().unwrap()])
        .env("AZURE_OPENAI_API_KEY", "held-azure-key-0003")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file under `dir`, as bytes.
fn every_file(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            every_file(&path, out);
        } else {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The real binary holding the provider key: the provider gets it, never the gateway key; and
/// no key (gateway keys, right or wrong, and the provider key) is in any byte written: logs at
/// trace level, the spool (the collector is down) and the trace store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_material_reaches_logs_spool_or_store() {
    let mock = Mock::start(answer).await;
    let dead = closed_port().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log_path = dir.path().join("stderr.log");
    let (port, admin) = (restartable_port(), restartable_port());
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\ndata_dir = {:?}\n\
             [export]\nendpoint = \"http://{dead}\"\n[store]\ncapture = \"full\"\n\
             [providers.openai]\nbase_url = \"{}\"\n{}",
            data.display().to_string(),
            mock.url(),
            keys_config()
        ),
    )
    .unwrap();
    let mut child = sidetrace_bin()
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("OPENAI_API_KEY", "sk-provider-held-key-0004")
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
    let send = |headers: Vec<(&'static str, String)>| async move {
        let mut req = Request::post(format!("http://127.0.0.1:{port}/v1/chat/completions"));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
        client()
            .request(req.body(full_body(body)).unwrap())
            .await
            .unwrap()
            .status()
    };
    assert_eq!(
        send(vec![("authorization", bearer(APP))]).await,
        StatusCode::OK
    );
    assert_eq!(
        mock.last().headers["authorization"],
        "Bearer sk-provider-held-key-0004"
    );
    assert_eq!(
        send(vec![("authorization", bearer(WRONG))]).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(vec![("x-sidetrace-key", OLD.to_string())]).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(vec![("authorization", bearer(APP))]).await,
        StatusCode::OK
    );
    assert_eq!(mock.requests().len(), 2);
    let status = sigterm_and_wait(&mut child, Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0));

    let mut files = vec![(
        log_path.display().to_string(),
        std::fs::read(&log_path).unwrap(),
    )];
    every_file(&data, &mut files);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.iter().any(|n| n.contains("spool")), "{names:?}");
    assert!(names.iter().any(|n| n.contains("traces")), "{names:?}");
    // The calls are there (so the check looks where they went) ...
    assert!(
        files
            .iter()
            .any(|(n, b)| n.contains("traces") && contains(b, "svc-app"))
    );
    // ... and no key is.
    for (name, bytes) in &files {
        for secret in [APP, WRONG, OLD, "sk-st-", "sk-provider-held-key-0004"] {
            assert!(!contains(bytes, secret), "{secret} found in {name}");
        }
    }
}
