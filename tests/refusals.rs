//! Every routed call is recorded exactly once, the ones the gateway refuses too: a spent budget,
//! a body too large (declared or streamed), too slow, or over the gateway's buffers, an
//! unreachable upstream. Each gives one call record and one span, with its `error.type` and
//! what inspection had learned of the request by then.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use sidetrace::{
    call::{CallRecord, Outcome},
    trace::span::{AttrValue, SpanStatus},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const CHAT: &str = r#"{"model":"o4-mini","messages":[{"role":"user","content":"hi"}]}"#;

fn ok_reply(_: &Seen) -> Reply {
    Reply::json(
        200,
        &String::from_utf8(fixture("openai/chat_nonstream.json")).unwrap(),
    )
}

/// Waits until the gateway has recorded `n` calls; returns the last.
async fn nth_call(gw: &TestGateway, n: usize) -> CallRecord {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let calls = gw.recent_calls();
        assert!(calls.len() <= n, "recorded more than once: {calls:#?}");
        if calls.len() == n {
            assert_eq!(gw.recent_spans().len(), n, "one span per call");
            return calls.into_iter().last().unwrap();
        }
        assert!(Instant::now() < deadline, "call {n} was never recorded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sends raw bytes and reads the status of the answer.
async fn raw(gw: &TestGateway, bytes: &[u8], then_wait: bool) -> u16 {
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if !then_wait {
        s.shutdown().await.unwrap();
    }
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&buf[..n])[9..12].parse().unwrap()
}

fn refused(call: &CallRecord, error_type: &str) {
    assert_eq!(call.outcome, Outcome::GatewayError, "{call:#?}");
    assert_eq!(call.error_type.as_deref(), Some(error_type), "{call:#?}");
    assert_eq!(call.status, None, "nothing reached the upstream");
}

#[tokio::test]
async fn every_refusal_after_routing_is_recorded_once_with_its_cause() {
    let mock = Mock::start(ok_reply).await;
    // A data dir of its own: the budget is seeded from the cost store.
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_for(
        &mock,
        &format!(
            "data_dir = {:?}\n{}",
            dir.path().display().to_string(),
            "max_request_body_bytes = 2000\nmax_buffered_request_bytes = 2000\n\
         [timeouts]\nrequest_body_idle_ms = 2000\nrequest_body_total_ms = 3000\n\
         [[budgets]]\nname = \"spent\"\nfeature = \"capped\"\nlimit_usd = \"0.000001\"\nwindow = \"day\"\n"
        ),
    )
    .await;
    let mut n = 0;

    // A budget: the first call spends it, the second is refused, with the model and the user
    // that inspection read from the body.
    let capped = [("x-sidetrace-feature", "capped")];
    let body = r#"{"model":"o4-mini","user":"u-42","messages":[]}"#;
    assert_eq!(
        post(&gw, "/openai/v1/chat/completions", &capped, body)
            .await
            .status,
        StatusCode::OK
    );
    n += 1;
    nth_call(&gw, n).await;
    let a = post(&gw, "/openai/v1/chat/completions", &capped, body).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    n += 1;
    let call = nth_call(&gw, n).await;
    refused(&call, "budget_exceeded");
    assert_eq!(call.request.model.as_deref(), Some("o4-mini"));
    assert_eq!(call.metadata.user_id.as_deref(), Some("u-42"));
    assert_eq!(call.metadata.feature.as_deref(), Some("capped"));
    let span = gw.recent_spans().pop().unwrap();
    assert_eq!(
        span.attr("error.type"),
        Some(&AttrValue::Str("budget_exceeded".into()))
    );
    assert!(matches!(span.status, SpanStatus::Error(_)));

    // A declared length over the limit: refused before a byte of the body is read.
    let big = format!(r#"{{"model":"o4-mini","pad":"{}"}}"#, "x".repeat(3000));
    let a = post(&gw, "/openai/v1/chat/completions", &[], &big).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    n += 1;
    refused(&nth_call(&gw, n).await, "request_too_large");

    // A chunked body that grows past the limit.
    let chunked = format!(
        "POST /openai/v1/chat/completions HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    assert_eq!(raw(&gw, chunked.as_bytes(), true).await, 413);
    n += 1;
    refused(&nth_call(&gw, n).await, "request_too_large");

    // More than the gateway may hold for all bodies at once (2000 bytes): one body has sent
    // 1500 bytes and waits; another of 1000 does not fit beside it. The first is then cut by
    // the idle timeout: two refusals, two records.
    let mut holder = TcpStream::connect(gw.addr).await.unwrap();
    holder
        .write_all(
            format!(
                "POST /openai/v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-length: 1900\r\n\r\n{{\"model\":\"{}",
                "x".repeat(1490)
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let held_bytes = |text: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix("sidetrace_request_buffered_bytes "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    while held_bytes(&String::from_utf8_lossy(
        &admin_get(&gw, "/metrics").await.body,
    )) < 1500
    {
        assert!(Instant::now() < deadline, "the holder's bytes are not held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let held = format!(r#"{{"model":"o4-mini","pad":"{}"}}"#, "x".repeat(1000));
    let a = post(&gw, "/openai/v1/chat/completions", &[], &held).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    n += 1;
    refused(&nth_call(&gw, n).await, "gateway_buffer_full");
    let mut answer = vec![0u8; 1024];
    let got = holder.read(&mut answer).await.unwrap();
    assert!(String::from_utf8_lossy(&answer[..got]).starts_with("HTTP/1.1 408"));
    n += 1;
    refused(&nth_call(&gw, n).await, "request_body_timeout");

    // A body that stops coming.
    let slow = format!(
        "POST /openai/v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-length: {}\r\n\r\n{}",
        CHAT.len(),
        &CHAT[..10]
    );
    assert_eq!(raw(&gw, slow.as_bytes(), true).await, 408);
    n += 1;
    refused(&nth_call(&gw, n).await, "request_body_timeout");

    // And an ordinary call after all of them is still recorded once.
    assert_eq!(
        post(&gw, "/openai/v1/chat/completions", &[], CHAT)
            .await
            .status,
        StatusCode::OK
    );
    n += 1;
    let call = nth_call(&gw, n).await;
    assert_eq!(call.outcome, Outcome::Completed);
    assert_eq!(
        mock.requests().len(),
        2,
        "no refused call reached the upstream"
    );
    // Refused calls were not forwarded unread: they are not counted as unparsed requests.
    let metrics = String::from_utf8_lossy(&admin_get(&gw, "/metrics").await.body).into_owned();
    assert!(
        metrics.contains("sidetrace_requests_unparsed_total 0"),
        "{metrics}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_upstream_is_recorded_once_as_an_upstream_error() {
    let dead = closed_port().await;
    let gw = gateway(&format!(
        "[providers.openai]\nbase_url = \"http://{dead}\"\n"
    ))
    .await;
    let a = post(&gw, "/openai/v1/chat/completions", &[], CHAT).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    let call = nth_call(&gw, 1).await;
    assert_eq!(call.outcome, Outcome::UpstreamError);
    assert_eq!(call.error_type.as_deref(), Some("upstream_unreachable"));
    assert_eq!(call.request.model.as_deref(), Some("o4-mini"));
    gw.shutdown().await;
}
