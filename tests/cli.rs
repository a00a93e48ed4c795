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
