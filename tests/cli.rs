//! The real binary: `check-config` on good and bad files, and `serve` with environment overrides,
//! a gateway-held key and SIGTERM.

mod common;

use std::{
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use http::{Request, StatusCode};

fn sidetrace() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sidetrace"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SIDETRACE_") || k.ends_with("_API_KEY") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    // Tests run at once: the OTLP receiver's default ports would clash.
    c.env("SIDETRACE_INGEST_HTTP_LISTEN", "127.0.0.1:0")
        .env("SIDETRACE_INGEST_GRPC_LISTEN", "127.0.0.1:0");
    c
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = sidetrace().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `sidetrace check-config | head -1`: a reader gone before the output is no error (the
/// output was written with `println!`, which panicked on the broken pipe).
#[test]
fn output_to_a_reader_that_left_is_no_panic() {
    for args in [&["check-config"][..], &["new-key", "--name", "x"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = sidetrace()
            .args(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn check_config_accepts_no_file_and_the_example_file() {
    let (code, out, err) = run(&["check-config"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("config ok") && out.contains("/openai"),
        "{out}"
    );
    // Each route names the upstream it goes to, host parameters as placeholders.
    let line = |prefix: &str| {
        out.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(prefix))
            .unwrap_or_else(|| panic!("no route {prefix}: {out}"))
            .to_string()
    };
    assert!(
        line("/openai").contains("-> https://api.openai.com "),
        "{out}"
    );
    assert!(
        line("/azure").contains("-> https://{resource}.openai.azure.com "),
        "{out}"
    );
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/sidetrace.toml");
    let (code, _, err) = run(&["check-config", "--config", example]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn check_config_prints_the_upstream_an_override_sends_a_route_to_and_warns_on_ignored_otel_values()
{
    let out = sidetrace()
        .args(["check-config"])
        .env("SIDETRACE_OPENAI_BASE_URL", "http://10.0.0.5:8000/proxy")
        .env("OTEL_TRACES_EXPORTER", "zipkin")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains(" /openai ") && l.contains("-> http://10.0.0.5:8000/proxy ")),
        "{stdout}"
    );
    assert!(
        stderr.contains("warning: OTEL_TRACES_EXPORTER") && stderr.contains("zipkin"),
        "{stderr}"
    );
}

#[test]
fn check_config_names_the_file_line_and_key_of_an_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:4000\"\n\n[upstream]\nconect_timeout_ms = 5\n",
    )
    .unwrap();
    let (code, _, err) = run(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("bad.toml"), "{err}");
    assert!(err.contains("line 4"), "{err}");
    assert!(err.contains("conect_timeout_ms"), "{err}");
}

#[test]
fn check_config_refuses_invalid_values() {
    let dir = tempfile::tempdir().unwrap();
    for (text, expect) in [
        ("listen = \"localhost\"\n", "listen"),
        (
            "[providers.openai]\nbase_url = \"ftp://x\"\n",
            "http:// or https://",
        ),
        (
            "[providers.mine]\nroute_prefix = \"/m\"\n",
            "needs base_url",
        ),
        ("default_provider = \"nobody\"\n", "nobody"),
        (
            "[upstream]\nextra_ca_file = \"/does/not/exist.pem\"\n",
            "extra_ca_file",
        ),
        ("[log]\nformat = \"xml\"\n", "xml"),
        // Checked as `serve` reads them, before any port is bound.
        (
            "[[budgets]]\nname = \"team\"\nlimit_usd = \"ten\"\nwindow = \"day\"\n",
            "budget team: limit_usd",
        ),
        (
            "[[budgets]]\nname = \"b\"\nlimit_usd = \"1\"\nwindow = \"day\"\nunpriced_call_usd = \"-1\"\n",
            "budget b: unpriced_call_usd",
        ),
        (
            "[capture]\nredact_patterns = [{ name = \"x\", pattern = \"(\" }]\n",
            "x",
        ),
        ("this is not toml", "line 1"),
    ] {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let (code, _, err) = run(&["check-config", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 2, "{text}");
        assert!(err.contains(expect), "{text}: {err}");
    }
    let (code, _, err) = run(&["check-config", "--config", "/does/not/exist.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("/does/not/exist.toml"), "{err}");
}

/// The names of a process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_string())
        .collect()
}

fn free_port() -> u16 {
    // The binary is killed and started again on the same ports.
    restartable_port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_env_overrides_uses_a_gateway_held_key_and_exits_0_on_sigterm() {
    let mock = Mock::start(|_| Reply::json(200, "{\"ok\":true}")).await;
    let (port, admin) = (free_port(), free_port());
    let mut child = sidetrace()
        .arg("serve")
        .env("SIDETRACE_LISTEN", format!("127.0.0.1:{port}"))
        .env("SIDETRACE_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("SIDETRACE_OPENAI_BASE_URL", mock.url())
        .env("OPENAI_API_KEY", "sk-gateway-held-0001")
        .env("SIDETRACE_LOG", "debug")
        .env("SIDETRACE_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = client();
    let started = Instant::now();
    loop {
        let req = Request::get(format!("http://127.0.0.1:{admin}/healthz"))
            .body(full_body(""))
            .unwrap();
        if let Ok(r) = client.request(req).await
            && r.status() == StatusCode::OK
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "gateway did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let send = |auth: Option<&'static str>| {
        let client = client.clone();
        async move {
            let mut req = Request::post(format!("http://127.0.0.1:{port}/v1/chat/completions"));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            client
                .request(req.body(full_body("{}")).unwrap())
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(send(None).await, StatusCode::OK);
    assert_eq!(
        mock.last().headers["authorization"],
        "Bearer sk-gateway-held-0001"
    );
    // The allocator gives freed memory back by itself, from a background thread (the
    // `background_threads` feature in Cargo.toml; .cargo/config.toml, read when cargo runs in
    // this repository, limits it to one and sets its pace).
    assert!(
        thread_names(child.id())
            .iter()
            .any(|n| n == "jemalloc_bg_thd"),
        "{:?}",
        thread_names(child.id())
    );
    assert_eq!(
        send(Some("Bearer sk-client-secret-0002")).await,
        StatusCode::OK
    );
    assert_eq!(
        mock.last().headers["authorization"],
        "Bearer sk-client-secret-0002"
    );

    let status = sigterm_and_wait(&mut child, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(
        logs.lines().all(|l| l.starts_with('{')),
        "JSON logs expected:\n{logs}"
    );
    assert!(
        logs.contains("\"message\":\"call\""),
        "a debug line per call expected:\n{logs}"
    );
    assert!(
        !logs.contains("sk-gateway-held-0001") && !logs.contains("sk-client-secret-0002"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_prices_from_the_config_file_without_a_restart() {
    let body = String::from_utf8(fixture("openai/chat_nonstream.json")).unwrap();
    let mock = Mock::start(move |_| Reply::json(200, &body)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidetrace.toml");
    let (port, admin) = (free_port(), free_port());
    // A negotiated price for o4-mini: everything at 1.00 USD per million tokens, so a call of
    // 1310 input and 615 output tokens costs 1925 micro-USD; then 2.00: 3850.
    let write = |price: &str| {
        std::fs::write(
            &path,
            format!(
                "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\ndata_dir = {:?}\n\
                 [providers.openai]\nbase_url = \"{}\"\n\
                 models = [{{ name = \"o4-mini\", input = \"{price}\", output = \"{price}\", cached_input = \"{price}\" }}]\n",
                dir.path().display().to_string(),
                mock.url()
            ),
        )
        .unwrap();
    };
    write("1.00");
    let mut child = sidetrace()
        .args(["serve", "--config", path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = client();
    let started = Instant::now();
    let cost = |client: hyper_util::client::legacy::Client<_, TestBody>| async move {
        let req = Request::post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
            .body(full_body(r#"{"model":"o4-mini"}"#))
            .unwrap();
        client.request(req).await.ok().and_then(|r| {
            r.headers()
                .get("x-sidetrace-cost-usd")
                .map(|v| v.to_str().unwrap().to_string())
        })
    };
    let first = loop {
        if let Some(c) = cost(client.clone()).await {
            break c;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "gateway did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(first, "0.001925");
    write("2.00");
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if cost(client.clone()).await.as_deref() == Some("0.00385") {
            break;
        }
        assert!(Instant::now() < deadline, "prices were not reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// `YYYYMMDDTHHMMSSZ` (`x-amz-date`) as a time.
fn amz_date(text: &str) -> std::time::SystemTime {
    let n = |r: std::ops::Range<usize>| text[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(4..6), n(6..8));
    // Days from 1970-01-01 to the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + n(9..11) * 3600 + n(11..13) * 60 + n(13..15);
    std::time::UNIX_EPOCH + Duration::from_secs(secs as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_calls_are_signed_again_with_the_gateways_aws_credentials() {
    let mock = Mock::start(|_| {
        Reply::json(
            200,
            r#"{"output":{"message":{"role":"assistant","content":[{"text":"hi"}]}},"stopReason":"end_turn","usage":{"inputTokens":3,"outputTokens":1,"totalTokens":4}}"#,
        )
    })
    .await;
    let (port, admin) = (free_port(), free_port());
    let mut child = sidetrace()
        .arg("serve")
        .env("SIDETRACE_LISTEN", format!("127.0.0.1:{port}"))
        .env("SIDETRACE_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        // A base_url without {region}: the region comes from AWS_REGION.
        .env("SIDETRACE_BEDROCK_BASE_URL", mock.url())
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env(
            "AWS_SECRET_ACCESS_KEY",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        )
        .env("AWS_SESSION_TOKEN", "session-token-1")
        .env("AWS_REGION", "us-west-2")
        .env_remove("AWS_DEFAULT_REGION")
        .env_remove("AWS_BEARER_TOKEN_BEDROCK")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = client();
    let started = Instant::now();
    loop {
        let req = Request::get(format!("http://127.0.0.1:{admin}/healthz"))
            .body(full_body(""))
            .unwrap();
        if let Ok(r) = client.request(req).await
            && r.status() == StatusCode::OK
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "gateway did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let path = "/model/anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse";
    let body = r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#;
    let send = |auth: &'static str| {
        let client = client.clone();
        async move {
            let req = Request::post(format!("http://127.0.0.1:{port}/bedrock{path}"))
                .header("authorization", auth)
                .header("x-amz-date", "20260101T000000Z")
                .header("content-type", "application/json")
                .body(full_body(body))
                .unwrap();
            client.request(req).await.unwrap().status()
        }
    };
    // A client's own SigV4 signature (for the gateway's host) is replaced by the gateway's.
    let client_signature = "AWS4-HMAC-SHA256 Credential=AKIACLIENT/20260101/us-west-2/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=0000";
    assert_eq!(send(client_signature).await, StatusCode::OK);
    let seen = mock.last();
    assert_eq!(
        seen.uri, path,
        "the path as the client sent it, encoding kept"
    );
    let auth = seen.headers["authorization"].to_str().unwrap().to_string();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
            && auth.contains("/us-west-2/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature="),
        "{auth}"
    );
    assert_eq!(seen.headers["x-amz-security-token"], "session-token-1");
    let date = seen.headers["x-amz-date"].to_str().unwrap().to_string();
    assert_ne!(
        date, "20260101T000000Z",
        "the client's date went with its signature"
    );
    // The signature covers exactly what reached the upstream: signing the received request again
    // (its host, path, content type and body, at its date) gives the same header.
    let signer = sidetrace::provider::sigv4::AwsSigner::from_env(
        "bedrock",
        [
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            (
                "AWS_SECRET_ACCESS_KEY",
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            ),
            ("AWS_SESSION_TOKEN", "session-token-1"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .unwrap();
    let host = seen.headers["host"].to_str().unwrap();
    let uri: http::Uri = format!("http://{host}{}", seen.uri).parse().unwrap();
    let mut again = http::HeaderMap::new();
    again.insert("content-type", seen.headers["content-type"].clone());
    signer
        .sign(
            &http::Method::POST,
            &uri,
            &mut again,
            Some("us-west-2"),
            &seen.body,
            amz_date(&date),
        )
        .unwrap();
    assert_eq!(again["authorization"].to_str().unwrap(), auth);
    assert_eq!(&seen.body[..], body.as_bytes());

    // A Bedrock API key is no signature: it passes as it is, and nothing is signed.
    assert_eq!(send("Bearer bedrock-api-key-1").await, StatusCode::OK);
    let seen = mock.last();
    assert_eq!(seen.headers["authorization"], "Bearer bedrock-api-key-1");
    assert_eq!(seen.headers["x-amz-date"], "20260101T000000Z");
    assert!(!seen.headers.contains_key("x-amz-security-token"));

    let status = sigterm_and_wait(&mut child, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
}
