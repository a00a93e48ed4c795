//! Inbound TLS: the proxy and admin listeners over HTTPS with a test CA, HTTP/2 or HTTP/1.1 by
//! ALPN, and the certificate reloaded from its files (in process, and by SIGHUP to the binary).

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::net::TcpStream;

fn answer(_: &Seen) -> Reply {
    Reply::json(
        200,
        r#"{"id":"c1","object":"chat.completion","model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
    )
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn handshake(pki: &TestPki, port: u16, alpn: &[&[u8]]) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("localhost").unwrap();
    pki.connector(alpn).connect(name, tcp).await
}

/// The DER of the leaf certificate the server presented.
fn served(stream: &Tls) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn leaf_der(pki: &TestPki) -> Vec<u8> {
    CertificateDer::pem_slice_iter(pki.cert_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_listeners_speak_https_with_http2_or_http1_chosen_by_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new("alpn");
    let tls = pki.write(dir.path());
    let mock = Mock::start(answer).await;
    let gw = gateway_for(&mock, &tls).await;

    // HTTP/2 on the proxy, chosen by ALPN.
    let stream = handshake(&pki, gw.addr.port(), &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::post("https://localhost/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"gpt-4o-mini","messages":[]}"#,
        )))
        .unwrap();
    let response = send.send_request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(body.starts_with(b"{\"id\":\"c1\""));

    // HTTP/1.1 on the admin listener.
    let stream = handshake(&pki, gw.admin_addr.port(), &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/healthz")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        send.send_request(req).await.unwrap().status(),
        StatusCode::OK
    );

    // Plain HTTP to a TLS port gets no answer; a client that does not trust the CA no handshake.
    let plain = client()
        .request(
            Request::get(format!("http://{}/healthz", gw.admin_addr))
                .body(full_body(""))
                .unwrap(),
        )
        .await;
    assert!(plain.is_err(), "plain HTTP was answered");
    let stranger = TestPki::new("stranger");
    assert!(
        handshake(&stranger, gw.addr.port(), &[b"h2"])
            .await
            .is_err()
    );
    let calls = gw.recent_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(mock.requests().len(), 1);
    gw.shutdown().await;
}

/// A slow client's handshake does not eat into its first request's time: each has
/// `request_headers_ms` (400 ms here), so a handshake begun 250 ms after connecting and a request
/// sent 250 ms after the handshake are both in time, though 500 ms passed since the connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_request_has_its_own_time_after_a_slow_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new("slow");
    let tls = pki.write(dir.path());
    let mock = Mock::start(answer).await;
    let gw = gateway_for(
        &mock,
        &format!("{tls}\n[timeouts]\nrequest_headers_ms = 400\nidle_connection_ms = 400\n"),
    )
    .await;

    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let name = ServerName::try_from("localhost").unwrap();
    let stream = pki
        .connector(&[b"http/1.1"])
        .connect(name, tcp)
        .await
        .expect("the handshake is within request_headers_ms");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let req = Request::post("/v1/chat/completions")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"gpt-4o-mini","messages":[]}"#,
        )))
        .unwrap();
    let response = send
        .send_request(req)
        .await
        .expect("the connection is still open for its first request");
    assert_eq!(response.status(), StatusCode::OK);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_can_stay_plain_while_the_proxy_speaks_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new("split");
    let tls = format!("{}admin = false\n", pki.write(dir.path()));
    let gw = gateway(&tls).await;
    assert_eq!(admin_get(&gw, "/healthz").await.status, StatusCode::OK);
    assert!(
        handshake(&pki, gw.addr.port(), &[b"http/1.1"])
            .await
            .is_ok()
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_the_new_certificate_and_a_bad_one_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let first = TestPki::new("first");
    let tls = first.write(dir.path());
    let gw = gateway(&tls).await;
    let port = gw.addr.port();
    let open = handshake(&first, port, &[b"http/1.1"]).await.unwrap();
    assert_eq!(served(&open), leaf_der(&first));

    let second = TestPki::new("second");
    second.write(dir.path());
    gw.reload_tls().unwrap();
    let renewed = handshake(&second, port, &[b"http/1.1"]).await.unwrap();
    assert_eq!(served(&renewed), leaf_der(&second));
    assert!(
        handshake(&first, port, &[b"http/1.1"]).await.is_err(),
        "the old certificate is still served"
    );
    // A connection opened before the reload keeps its certificate.
    assert_eq!(served(&open), leaf_der(&first));

    // A key that does not belong to the certificate: refused, the second one stays.
    std::fs::write(dir.path().join("tls.key"), TestPki::new("third").key_pem).unwrap();
    let err = gw.reload_tls().unwrap_err().to_string();
    assert!(err.contains("does not belong"), "{err}");
    let still = handshake(&second, port, &[b"http/1.1"]).await.unwrap();
    assert_eq!(served(&still), leaf_der(&second));
    gw.shutdown().await;
}

#[test]
fn half_a_tls_config_and_unreadable_files_are_refused_at_start() {
    let check = |text: &str| {
        let config = sidetrace::Config::from_toml(text, "c.toml").unwrap();
        sidetrace::server::check_config(&config)
            .map(drop)
            .map_err(|e| e.to_string())
    };
    let half = check("[tls]\ncert_file = \"/nonexistent/tls.crt\"\n").unwrap_err();
    assert!(half.contains("go together"), "{half}");
    let missing =
        check("[tls]\ncert_file = \"/nonexistent/tls.crt\"\nkey_file = \"/nonexistent/tls.key\"\n")
            .unwrap_err();
    assert!(missing.contains("/nonexistent/tls.crt"), "{missing}");
}

/// SIGHUP to the real binary reads the certificate files again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_of_the_running_binary() {
    let dir = tempfile::tempdir().unwrap();
    let first = TestPki::new("hup-first");
    let tls = first.write(dir.path());
    let (port, admin) = (restartable_port(), restartable_port());
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\ndata_dir = {:?}\n{tls}admin = false\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidetrace"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SIDETRACE_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("SIDETRACE_INGEST_HTTP_LISTEN", "127.0.0.1:0")
        .env("SIDETRACE_INGEST_GRPC_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
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
    let served_now = handshake(&first, port, &[b"h2"]).await.unwrap();
    assert_eq!(served(&served_now), leaf_der(&first));

    let second = TestPki::new("hup-second");
    second.write(dir.path());
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(stream) = handshake(&second, port, &[b"h2"]).await
            && served(&stream) == leaf_der(&second)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the certificate was not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = sigterm_and_wait(&mut child, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
}
