//! Slow and silent clients: request bodies that trickle or stop, bodies that fill memory,
//! connections that never send a byte or sit idle, and more sockets than file descriptors. Raw
//! TCP clients play the hostile side; normal callers must keep being served.

mod common;

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use http::{Request, StatusCode};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const CHAT: &str = r#"{"model":"o4-mini","messages":[{"role":"user","content":"hi"}]}"#;

fn ok_reply() -> Reply {
    Reply::json(
        200,
        &String::from_utf8(fixture("openai/chat_nonstream.json")).unwrap(),
    )
}

/// Request head of a POST with the given framing header.
fn head(path: &str, framing: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n{framing}\r\n\r\n"
    )
}

/// Reads one HTTP/1.1 response (head and a content-length body); panics after `within`.
async fn read_response(
    stream: &mut (impl AsyncRead + Unpin),
    within: Duration,
) -> (u16, String, String) {
    let mut buf = Vec::new();
    let read = async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len || n == 0 {
                    let body = String::from_utf8_lossy(&buf[end + 4..]).into_owned();
                    let status = head[9..12].parse().unwrap();
                    return (status, head, body);
                }
            }
            assert!(n > 0, "connection closed before a response: {buf:?}");
        }
    };
    tokio::time::timeout(within, read)
        .await
        .expect("a response in time")
}

/// Waits until the peer closes the connection; panics after `within`.
async fn wait_closed(stream: &mut (impl AsyncRead + Unpin), within: Duration) {
    let closed = async {
        let mut chunk = [0u8; 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, closed)
        .await
        .expect("the gateway closes the connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_at_one_byte_per_tick_is_cut_by_the_total_deadline_with_408() {
    let mock = Mock::start(|_| ok_reply()).await;
    let gw = gateway_for(
        &mock,
        "[timeouts]\nrequest_body_idle_ms = 5000\nrequest_body_total_ms = 400\n",
    )
    .await;
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    write
        .write_all(head("/openai/v1/chat/completions", "content-length: 1000").as_bytes())
        .await
        .unwrap();
    // Each byte comes well within the idle timeout; only the total deadline can cut it.
    let trickle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for _ in 0..1000 {
            tick.tick().await;
            if write.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let (status, head, body) = read_response(&mut read, Duration::from_secs(20)).await;
    trickle.abort();
    assert_eq!(status, 408, "{head}\n{body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"]["code"], "request_body_timeout");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not arrive whole"),
        "{json}"
    );
    assert!(mock.requests().is_empty(), "nothing reached the upstream");
    let text = metrics_of(&gw).await;
    assert_eq!(metric_in(&text, "sidetrace_active_calls "), 0.0, "{text}");
    assert_eq!(
        metric_in(
            &text,
            "sidetrace_requests_total{provider=\"openai\",status=\"408\"}"
        ),
        1.0,
        "{text}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_that_stops_is_cut_by_the_idle_timeout_on_a_streamed_route() {
    let mock = Mock::start(|_| Reply::json(200, "{}")).await;
    let gw = gateway_for(&mock, "[timeouts]\nrequest_body_idle_ms = 300\n").await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    // An upload route: the body streams to the upstream as it comes.
    stream
        .write_all(head("/openai/v1/files", "transfer-encoding: chunked").as_bytes())
        .await
        .unwrap();
    stream.write_all(b"5\r\nhello\r\n").await.unwrap();
    let (status, head, body) = read_response(&mut stream, Duration::from_secs(20)).await;
    assert_eq!(status, 408, "{head}\n{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"]["code"], "request_body_timeout");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sent nothing"),
        "{json}"
    );
    // The call was routed and recorded, with the cause as its error type.
    let deadline = Instant::now() + Duration::from_secs(10);
    let call = loop {
        if let Some(call) = gw.recent_calls().pop() {
            break call;
        }
        assert!(Instant::now() < deadline, "the call was not recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(call.error_type.as_deref(), Some("request_body_timeout"));
    wait_metric(&gw, "sidetrace_active_calls ", 0.0).await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_stalled_bodies_no_longer_starve_a_normal_caller_once_their_timeout_passes() {
    let mock = Mock::start(|_| ok_reply()).await;
    let gw = gateway_for(
        &mock,
        "max_concurrent_requests = 20\n[timeouts]\nrequest_body_idle_ms = 8000\n",
    )
    .await;
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(head("/openai/v1/chat/completions", "content-length: 100").as_bytes())
            .await
            .unwrap();
        s.write_all(b"{\"model\":").await.unwrap();
        stalled.push(s);
    }
    wait_metric(&gw, "sidetrace_active_calls ", 20.0).await;
    // While they hold every permit, a normal caller is shed.
    let shed = post(&gw, "/openai/v1/chat/completions", &[], CHAT).await;
    assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE);
    // Once their idle timeout passes, the permits are free again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = post(&gw, "/openai/v1/chat/completions", &[], CHAT).await;
        if a.status == StatusCode::OK {
            break;
        }
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(Instant::now() < deadline, "still starved");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for mut s in stalled {
        let (status, _, _) = read_response(&mut s, Duration::from_secs(10)).await;
        assert_eq!(status, 408);
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bytes_held_in_memory_are_bounded_across_calls_with_503_past_the_limit() {
    let mock = Mock::start(|_| ok_reply()).await;
    let gw = gateway_for(
        &mock,
        "max_request_body_bytes = 1000\nmax_buffered_request_bytes = 1000\n",
    )
    .await;
    // Bodies that declare a length but send nothing hold nothing: they cannot block others.
    let mut declarers = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(head("/openai/v1/chat/completions", "content-length: 1000").as_bytes())
            .await
            .unwrap();
        declarers.push(s);
    }
    // One unfinished body has sent 800 bytes: they are held for it.
    let mut holder = TcpStream::connect(gw.addr).await.unwrap();
    holder
        .write_all(head("/openai/v1/chat/completions", "content-length: 900").as_bytes())
        .await
        .unwrap();
    holder
        .write_all(format!("{{\"model\":\"{}", "x".repeat(790)).as_bytes())
        .await
        .unwrap();
    wait_metric(&gw, "sidetrace_request_buffered_bytes ", 800.0).await;
    assert_eq!(
        metric_in(&metrics_of(&gw).await, "sidetrace_request_buffered_bytes "),
        800.0,
        "only the bytes that arrived are held"
    );
    // A chunked body that grows past what is left is refused with 503 and retry-after.
    let big = format!(
        r#"{{"model":"o4-mini","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(300)
    );
    let mut req = Request::post(format!("http://{}/openai/v1/chat/completions", gw.addr));
    req = req.header("content-type", "application/json");
    // Sent in frames without a content-length: only the growing count can refuse it.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for chunk in big.as_bytes().chunks(100) {
        tx.send(Ok(bytes::Bytes::copy_from_slice(chunk)))
            .await
            .unwrap();
    }
    drop(tx);
    let body = http_body_util::BodyExt::boxed_unsync(ChannelBody { rx });
    let response = client().request(req.body(body).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["error"]["code"], "gateway_buffer_full");
    let text = metrics_of(&gw).await;
    assert_eq!(
        metric_in(
            &text,
            "sidetrace_requests_rejected_total{reason=\"buffer_full\"}"
        ),
        1.0,
        "{text}"
    );
    // Small calls still fit; once the holder leaves, its bytes are given back.
    assert_eq!(
        post(&gw, "/openai/v1/chat/completions", &[], CHAT)
            .await
            .status,
        StatusCode::OK
    );
    drop(holder);
    drop(declarers);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric_in(&metrics_of(&gw).await, "sidetrace_request_buffered_bytes ") != 0.0 {
        assert!(Instant::now() < deadline, "held bytes were not given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = post(&gw, "/openai/v1/chat/completions", &[], &big).await;
    assert_eq!(a.status, StatusCode::OK);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_send_nothing_or_go_idle_are_closed() {
    let mock = Mock::start(|_| ok_reply()).await;
    let gw = gateway_for(
        &mock,
        "[timeouts]\nrequest_headers_ms = 300\nidle_connection_ms = 300\n",
    )
    .await;
    // Never a byte: closed after request_headers_ms (hyper's header timeout cannot see these:
    // the HTTP version is not even known yet).
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    wait_closed(&mut silent, Duration::from_secs(10)).await;
    // Half a request head: closed by the header read timeout.
    let mut partial = TcpStream::connect(gw.addr).await.unwrap();
    partial.write_all(b"POST /openai/v1/chat").await.unwrap();
    wait_closed(&mut partial, Duration::from_secs(10)).await;
    // HTTP/1.1 kept alive after a call, then idle: closed.
    let mut kept = TcpStream::connect(gw.addr).await.unwrap();
    kept.write_all(
        format!(
            "{}{CHAT}",
            head(
                "/openai/v1/chat/completions",
                &format!("content-length: {}", CHAT.len())
            )
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (status, _, _) = read_response(&mut kept, Duration::from_secs(10)).await;
    assert_eq!(status, 200);
    wait_closed(&mut kept, Duration::from_secs(10)).await;
    // h2c after a call, with no stream open: closed gracefully (GOAWAY), so the client's
    // connection task ends.
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::post("http://gw/openai/v1/chat/completions")
        .body(full_body(CHAT))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    drop(response);
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the idle h2c connection is closed")
        .unwrap()
        .unwrap();
    let text = metrics_of(&gw).await;
    assert!(
        metric_in(
            &text,
            "sidetrace_connections_closed_total{listener=\"proxy\",reason=\"idle\"}"
        ) >= 2.0,
        "{text}"
    );
    gw.shutdown().await;
}

/// More idle sockets than file descriptors: at the connection cap the gateway stops accepting
/// instead of failing accepts, closes the silent ones, and normal calls get through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_300_file_descriptors_400_silent_sockets_do_not_stop_normal_calls() {
    let mock = Mock::start(|_| ok_reply()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidetrace.toml");
    let (port, admin) = (restartable_port(), restartable_port());
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
             data_dir = {:?}\n[timeouts]\nrequest_headers_ms = 300\n\
             [providers.openai]\nbase_url = \"{}\"\n",
            dir.path().display().to_string(),
            mock.url(),
        ),
    )
    .unwrap();
    let binary = env!("CARGO_BIN_EXE_sidetrace");
    let mut child = Command::new("sh")
        .args([
            "-c",
            &format!(
                "ulimit -n 300 && exec {binary} serve --config {}",
                path.display()
            ),
        ])
        .env_remove("RUST_LOG")
        .env("SIDETRACE_INGEST_HTTP_LISTEN", "127.0.0.1:0")
        .env("SIDETRACE_INGEST_GRPC_LISTEN", "127.0.0.1:0")
        .env_remove("SIDETRACE_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let call = || async {
        let req = Request::post(format!("http://{addr}/openai/v1/chat/completions"))
            .body(full_body(CHAT))
            .unwrap();
        client().request(req).await.map(|r| r.status())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while call().await.is_err() {
        assert!(Instant::now() < deadline, "gateway did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut silent = Vec::new();
    for _ in 0..400 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    // Every normal call is answered once the silent sockets ahead of it are closed.
    for _ in 0..5 {
        let status = tokio::time::timeout(Duration::from_secs(30), call())
            .await
            .expect("a normal call is answered");
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut logs).unwrap();
    assert_eq!(status.code(), Some(0), "{logs}");
    assert!(!logs.contains("accept failed"), "{logs}");
    assert!(logs.contains("connection cap reached"), "{logs}");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_longer_than_the_idle_connection_timeout_is_not_cut() {
    let event = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"o4-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n";
    let mock = Mock::start(move |_| {
        Reply::sse(
            &[event, event, event, "data: [DONE]\n\n"],
            Duration::from_millis(200),
        )
        .delay_headers(Duration::from_millis(300))
    })
    .await;
    let gw = gateway_for(
        &mock,
        "[timeouts]\nrequest_headers_ms = 100\nidle_connection_ms = 100\n",
    )
    .await;
    let stream = r#"{"model":"o4-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    for client in [client(), h2_client()] {
        let req = Request::post(format!("http://{}/openai/v1/chat/completions", gw.addr))
            .body(full_body(stream))
            .unwrap();
        let response = client.request(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let (got, end) = frames(response.into_body()).await;
        assert_eq!(end, Ok(()), "the stream ends cleanly");
        assert!(
            String::from_utf8(concat(&got))
                .unwrap()
                .ends_with("data: [DONE]\n\n")
        );
    }
    gw.shutdown().await;
}
