//! The request path end to end: gateway in-process on port 0, scripted mock providers.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode, Version};

const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test]
async fn non_streamed_body_status_and_end_to_end_headers_are_identical_to_the_upstream() {
    let body = String::from_utf8(fixture("openai/chat_nonstream.json")).unwrap();
    let reply_body = body.clone();
    let mock = Mock::start(move |_| {
        Reply::json(200, &reply_body)
            .header("x-request-id", "req_abc123")
            .header("openai-processing-ms", "412")
            .header("x-ratelimit-remaining-tokens", "149984")
            .header("set-cookie", "__cf_bm=x; path=/")
            .header("set-cookie", "_cfuvid=y; path=/")
    })
    .await;
    let gw = gateway_for(&mock, "").await;
    let a = post(
        &gw,
        "/openai/v1/chat/completions",
        &[("content-type", "application/json")],
        CHAT,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, body.as_bytes());
    for (name, value) in [
        ("content-type", "application/json"),
        ("x-request-id", "req_abc123"),
        ("openai-processing-ms", "412"),
        ("x-ratelimit-remaining-tokens", "149984"),
    ] {
        assert_eq!(a.headers.get(name).unwrap(), value, "{name}");
    }
    let cookies: Vec<_> = a.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["__cf_bm=x; path=/", "_cfuvid=y; path=/"]);
    assert!(a.headers.contains_key("x-sidetrace-request-id"));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_paused_stream_reaches_the_client_event_by_event() {
    let events = [
        "data: {\"n\":1}\n\n",
        "data: {\"n\":2}\n\n",
        "data: {\"n\":3}\n\n",
        "data: {\"n\":4}\n\n",
        "data: [DONE]\n\n",
    ];
    let pause = Duration::from_millis(150);
    let mock = Mock::start(move |_| Reply::sse(&events, pause)).await;
    let gw = gateway_for(&mock, "").await;
    let req = Request::post(format!("http://{}/openai/v1/chat/completions", gw.addr))
        .body(full_body(CHAT))
        .unwrap();
    let response = client().request(req).await.unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let (frames, end) = frames(response.into_body()).await;
    end.unwrap();
    assert_eq!(concat(&frames), events.concat().as_bytes());
    // Each event must arrive on its own, about one pause after the one before: a proxy that
    // buffered would deliver them together at the end.
    assert_eq!(frames.len(), events.len(), "events were merged: {frames:?}");
    for pair in frames.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= Duration::from_millis(100),
            "events arrived {gap:?} apart"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_request_body_on_an_uninspected_route_streams_to_the_upstream_before_the_client_finishes_it()
 {
    // Uploads (files, audio) are not read by the gateway: they stream through frame by frame.
    let mock = Mock::start(|_| Reply::json(200, "{}")).await;
    let gw = gateway_for(&mock, "").await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let req = Request::post(format!("http://{}/openai/v1/files", gw.addr))
        .body(http_body_util::BodyExt::boxed_unsync(ChannelBody { rx }))
        .unwrap();
    let call = tokio::spawn(client().request(req));
    let first_arrived = mock.body_frame_seen.notified();
    tx.send(Ok(Bytes::from_static(b"{\"model\":\"gpt-4o-mini\",")))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), first_arrived)
        .await
        .expect("the first request chunk must reach the upstream while the client still sends");
    tx.send(Ok(Bytes::from_static(b"\"messages\":[]}")))
        .await
        .unwrap();
    drop(tx);
    let response = call.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        mock.last().body,
        &b"{\"model\":\"gpt-4o-mini\",\"messages\":[]}"[..]
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn sidetrace_and_hop_by_hop_headers_are_stripped_and_credentials_kept() {
    let mock = Mock::start(|_| Reply::json(200, "{}")).await;
    let gw = gateway_for(&mock, "").await;
    let a = post(
        &gw,
        "/openai/v1/chat/completions?trace=1",
        &[
            ("authorization", "Bearer sk-client-key"),
            ("openai-organization", "org-1"),
            ("x-sidetrace-feature", "support"),
            ("x-sidetrace-user-id", "u_1"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("te", "trailers"),
            ("x-custom", "kept"),
            ("host", "gateway.example"),
        ],
        CHAT,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let seen = mock.last();
    assert_eq!(seen.uri, "/v1/chat/completions?trace=1");
    assert_eq!(seen.headers["authorization"], "Bearer sk-client-key");
    assert_eq!(seen.headers["openai-organization"], "org-1");
    assert_eq!(seen.headers["x-custom"], "kept");
    assert_eq!(seen.headers["host"], mock.addr.to_string());
    for gone in [
        "x-sidetrace-feature",
        "x-sidetrace-user-id",
        "x-hop",
        "te",
        "x-sidetrace-request-id",
    ] {
        assert!(
            !seen.headers.contains_key(gone),
            "{gone} reached the upstream"
        );
    }
    assert_eq!(seen.body, CHAT.as_bytes());
    gw.shutdown().await;
}

#[tokio::test]
async fn bare_v1_paths_go_to_the_default_provider_and_anthropic_to_its_prefix() {
    let mock = Mock::start(|_| Reply::json(200, "{}")).await;
    let gw = gateway_for(&mock, "").await;
    post(&gw, "/v1/embeddings", &[], "{}").await;
    assert_eq!(mock.last().uri, "/v1/embeddings");
    post(
        &gw,
        "/anthropic/v1/messages",
        &[("x-api-key", "sk-ant-1")],
        "{}",
    )
    .await;
    let seen = mock.last();
    assert_eq!(seen.uri, "/v1/messages");
    assert_eq!(seen.headers["x-api-key"], "sk-ant-1");
    gw.shutdown().await;
}

/// The upstream's own `x-sidetrace-*` headers (another sidetrace behind this one, or any
/// server) never reach the client: for a call this gateway cannot price, the upstream's
/// `x-sidetrace-cost-usd` went through as if it were this gateway's.
#[tokio::test]
async fn an_upstreams_sidetrace_headers_do_not_reach_the_client() {
    let mock = Mock::start(|_| {
        Reply::json(
            200,
            r#"{"id":"c1","object":"chat.completion","model":"no-such-model","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#,
        )
        .header("x-sidetrace-cost-usd", "9.99")
        .header("x-sidetrace-input-tokens", "1")
    })
    .await;
    let gw = gateway_for(&mock, "").await;
    let a = post(
        &gw,
        "/v1/chat/completions",
        &[],
        r#"{"model":"no-such-model","messages":[]}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.headers.get("x-sidetrace-cost-usd").is_none());
    // The gateway's own reading of the answer.
    assert_eq!(a.headers["x-sidetrace-input-tokens"], "1");
    gw.shutdown().await;
}

#[tokio::test]
async fn an_unknown_route_is_a_404_that_lists_the_valid_prefixes() {
    let mock = Mock::start(|_| Reply::json(200, "{}")).await;
    let gw = gateway_for(&mock, "").await;
    let a = post(&gw, "/nope/v1/chat/completions", &[], CHAT).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let json = a.json();
    assert_eq!(json["error"]["code"], "unknown_route");
    // Refused before routing: no record, so no trace id to look up.
    assert!(a.headers.get("x-sidetrace-trace-id").is_none());
    let message = json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("/openai") && message.contains("/anthropic"),
        "{message}"
    );
    assert!(mock.requests().is_empty());
    gw.shutdown().await;
}

#[tokio::test]
async fn a_declared_oversize_body_is_refused_with_413_before_it_is_sent() {
    let mock = Mock::start(|_| Reply::json(200, "{}")).await;
    let gw = gateway_for(&mock, "max_request_body_bytes = 64\n").await;
    let a = post(&gw, "/openai/v1/chat/completions", &[], &"x".repeat(65)).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.json()["error"]["code"], "request_too_large");
    assert!(mock.requests().is_empty());
    let ok = post(&gw, "/openai/v1/chat/completions", &[], &"x".repeat(64)).await;
    assert_eq!(ok.status, StatusCode::OK);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_streamed_body_growing_past_the_limit_is_refused_with_413() {
    let mock = Mock::start(|_| Reply::json(200, "{}")).await;
    let gw = gateway_for(&mock, "max_request_body_bytes = 64\n").await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let req = Request::post(format!("http://{}/openai/v1/chat/completions", gw.addr))
        .body(http_body_util::BodyExt::boxed_unsync(ChannelBody { rx }))
        .unwrap();
    let call = tokio::spawn(client().request(req));
    tx.send(Ok(Bytes::from(vec![b'x'; 40]))).await.unwrap();
    tx.send(Ok(Bytes::from(vec![b'x'; 40]))).await.unwrap();
    drop(tx);
    let response = call.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    gw.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_fast_502() {
    let dead = closed_port().await;
    // A connect timeout far beyond the test's patience: only the refusal itself can answer.
    let gw = gateway(&format!(
        "[upstream]\nconnect_timeout_ms = 600000\n[providers.openai]\nbase_url = \"http://{dead}\"\n"
    ))
    .await;
    let a = post(
        &gw,
        "/openai/v1/chat/completions",
        &[("authorization", "Bearer sk-secret-1")],
        CHAT,
    );
    let a = tokio::time::timeout(Duration::from_secs(60), a)
        .await
        .expect("the refused connection is answered at once, not after the connect timeout");
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    let json = a.json();
    assert_eq!(json["error"]["code"], "upstream_unreachable");
    assert_eq!(a.headers["x-sidetrace-error-source"], "upstream");
    assert!(!String::from_utf8_lossy(&a.body).contains("sk-secret-1"));
    gw.shutdown().await;
}

#[tokio::test]
async fn no_response_headers_in_time_is_a_504() {
    let mock = Mock::start(|_| Reply::json(200, "{}").delay_headers(Duration::from_secs(3))).await;
    let gw = gateway_for(
        &mock,
        "[providers.openai.timeouts]\nresponse_headers_ms = 200\n",
    )
    .await;
    // The upstream would answer 200 after 3 s: a 504 can only come from the timeout.
    let a = post(&gw, "/openai/v1/chat/completions", &[], CHAT).await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(a.json()["error"]["code"], "upstream_timeout");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_stream_that_goes_quiet_is_cut_after_the_idle_timeout() {
    let mock =
        Mock::start(|_| Reply::sse(&["data: {\"n\":1}\n\n"], Duration::ZERO).then(Step::Stall))
            .await;
    let gw = gateway_for(&mock, "[providers.openai.timeouts]\nidle_ms = 300\n").await;
    let req = Request::post(format!("http://{}/openai/v1/chat/completions", gw.addr))
        .body(full_body(CHAT))
        .unwrap();
    let started = Instant::now();
    let response = client().request(req).await.unwrap();
    let (frames, end) = frames(response.into_body()).await;
    assert_eq!(concat(&frames), b"data: {\"n\":1}\n\n");
    assert!(
        end.is_err(),
        "a cut stream must not look complete to the client"
    );
    // The upstream never sends again: only the idle timeout can end the stream, not earlier.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250), "{took:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_stream_past_its_total_deadline_is_cut() {
    let mut reply = Reply::sse(&["data: {}\n\n"], Duration::ZERO);
    for _ in 0..100 {
        reply = reply
            .then(Step::Pause(Duration::from_millis(50)))
            .then(Step::Send(Bytes::from_static(b"data: {}\n\n")));
    }
    let mock = Mock::start(move |_| reply.clone()).await;
    let gw = gateway_for(
        &mock,
        "[providers.openai.timeouts]\ntotal_ms = 400\nidle_ms = 10000\n",
    )
    .await;
    let req = Request::post(format!("http://{}/openai/v1/chat/completions", gw.addr))
        .body(full_body(CHAT))
        .unwrap();
    let response = client().request(req).await.unwrap();
    let (frames, end) = frames(response.into_body()).await;
    // 101 events over 5 s, a 0.4 s deadline: cut early, and no frame is an idle gap.
    assert!(end.is_err());
    assert!(
        frames.len() >= 3 && frames.len() < 50,
        "{} frames",
        frames.len()
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn an_upstream_reset_mid_stream_reaches_the_client_as_a_broken_stream() {
    let mock = Mock::start(|_| {
        Reply::sse(&["data: {\"n\":1}\n\n"], Duration::ZERO)
            .then(Step::Pause(Duration::from_millis(100)))
            .then(Step::Abort)
    })
    .await;
    let gw = gateway_for(&mock, "").await;
    let req = Request::post(format!("http://{}/openai/v1/chat/completions", gw.addr))
        .body(full_body(CHAT))
        .unwrap();
    let response = client().request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (frames, end) = frames(response.into_body()).await;
    assert_eq!(concat(&frames), b"data: {\"n\":1}\n\n");
    assert!(end.is_err());
    gw.shutdown().await;
}

#[tokio::test]
async fn upstream_error_responses_pass_through_unchanged() {
    let body = String::from_utf8(fixture("openai/error_rate_limit_429.json")).unwrap();
    let reply_body = body.clone();
    let mock = Mock::start(move |_| Reply::json(429, &reply_body).header("retry-after", "7")).await;
    let gw = gateway_for(&mock, "").await;
    let a = post(&gw, "/openai/v1/chat/completions", &[], CHAT).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.headers["retry-after"], "7");
    assert_eq!(a.body, body.as_bytes());
    assert!(!a.headers.contains_key("x-sidetrace-error-source"));
    gw.shutdown().await;
}

#[tokio::test]
async fn content_encoding_passes_through_untouched() {
    let gz: &[u8] = &[
        0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xab, 0xae, 0x05, 0x00, 0x43,
        0xbf, 0xa6, 0xa3, 0x02, 0x00, 0x00, 0x00,
    ];
    let mock = Mock::start(move |_| Reply {
        status: 200,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("content-encoding".into(), "gzip".into()),
        ],
        headers_delay: Duration::ZERO,
        steps: vec![Step::Send(Bytes::from_static(gz))],
    })
    .await;
    let gw = gateway_for(&mock, "").await;
    let a = post(
        &gw,
        "/openai/v1/files",
        &[("accept-encoding", "gzip")],
        CHAT,
    )
    .await;
    assert_eq!(a.headers["content-encoding"], "gzip");
    assert_eq!(a.body, gz);
    assert_eq!(mock.last().headers["accept-encoding"], "gzip");
    let uninspected = r#"sidetrace_calls_uninspected_total{reason="content_encoding"}"#;
    let metrics = String::from_utf8(admin_get(&gw, "/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains(&format!("{uninspected} 0")),
        "a pass-through route is not counted: {metrics}"
    );
    // On inspected routes the gateway asks for an uncompressed response, so it can read usage;
    // whatever the upstream sends anyway still passes through untouched.
    let a = post(
        &gw,
        "/openai/v1/chat/completions",
        &[("accept-encoding", "gzip")],
        CHAT,
    )
    .await;
    assert_eq!(a.headers["content-encoding"], "gzip");
    assert_eq!(a.body, gz);
    assert!(!mock.last().headers.contains_key("accept-encoding"));
    let call = gw.recent_calls().pop().unwrap();
    assert!(call.response.is_none(), "a compressed body is not parsed");
    // ...and the lost usage is counted, not hidden.
    let metrics = String::from_utf8(admin_get(&gw, "/metrics").await.body.to_vec()).unwrap();
    assert!(metrics.contains(&format!("{uninspected} 1")), "{metrics}");
    gw.shutdown().await;
}

#[tokio::test]
async fn past_the_concurrency_limit_calls_are_shed_with_503_and_open_streams_count() {
    let mock = Mock::start(|seen| {
        if seen.uri.contains("hold") {
            Reply::sse(&["data: {}\n\n"], Duration::ZERO).then(Step::Stall)
        } else {
            Reply::json(200, "{}")
        }
    })
    .await;
    let gw = gateway_for(&mock, "max_concurrent_requests = 2\n").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let req = Request::post(format!(
            "http://{}/openai/v1/chat/completions?hold",
            gw.addr
        ))
        .body(full_body(CHAT))
        .unwrap();
        let mut response = client().request(req).await.unwrap();
        // Headers are in; the body stays open.
        http_body_util::BodyExt::frame(response.body_mut())
            .await
            .unwrap()
            .unwrap();
        held.push(response);
    }
    let a = post(&gw, "/openai/v1/chat/completions", &[], CHAT).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.json()["error"]["code"], "gateway_overloaded");
    assert_eq!(a.headers["retry-after"], "1");
    let metrics = String::from_utf8(admin_get(&gw, "/metrics").await.body.to_vec()).unwrap();
    assert!(metrics.contains("sidetrace_active_calls 2"), "{metrics}");
    drop(held);
    // The permits come back once the streams are gone.
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..50 {
        status = post(&gw, "/openai/v1/chat/completions", &[], CHAT)
            .await
            .status;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, StatusCode::OK);
    gw.shutdown().await;
}

#[tokio::test]
async fn admin_serves_health_readiness_and_metrics() {
    let mock = Mock::start(|_| Reply::json(200, "{}")).await;
    let gw = gateway_for(&mock, "").await;
    post(&gw, "/openai/v1/chat/completions", &[], CHAT).await;
    post(&gw, "/nowhere", &[], CHAT).await;
    assert_eq!(admin_get(&gw, "/healthz").await.status, StatusCode::OK);
    assert_eq!(admin_get(&gw, "/readyz").await.status, StatusCode::OK);
    let metrics = String::from_utf8(admin_get(&gw, "/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains(r#"sidetrace_requests_total{provider="openai",status="200"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"sidetrace_requests_rejected_total{reason="unknown_route"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("sidetrace_upstream_response_headers_seconds_count{provider=\"openai\"} 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("# EOF"),
        "classic text unless OpenMetrics is asked for"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_an_open_stream_finish_and_refuses_new_connections() {
    let events = [
        "data: {\"n\":1}\n\n",
        "data: {\"n\":2}\n\n",
        "data: [DONE]\n\n",
    ];
    let mock = Mock::start(move |_| Reply::sse(&events, Duration::from_millis(300))).await;
    let gw = gateway_for(&mock, "").await;
    let addr = gw.addr;
    let admin = gw.admin_addr;
    let req = Request::post(format!("http://{addr}/openai/v1/chat/completions"))
        .body(full_body(CHAT))
        .unwrap();
    let response = client().request(req).await.unwrap();
    gw.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Not ready any more, and no new connections.
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "new connections must be refused"
    );
    let ready = client()
        .request(
            Request::get(format!("http://{admin}/readyz"))
                .body(full_body(""))
                .unwrap(),
        )
        .await;
    if let Ok(r) = ready {
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let (frames, end) = frames(response.into_body()).await;
    end.unwrap();
    assert_eq!(concat(&frames), events.concat().as_bytes());
    let report = tokio::time::timeout(Duration::from_secs(5), gw.wait())
        .await
        .unwrap();
    assert!(report.drained);
}

#[tokio::test]
async fn shutdown_cuts_streams_still_open_when_the_grace_period_ends() {
    let mock =
        Mock::start(|_| Reply::sse(&["data: {}\n\n"], Duration::ZERO).then(Step::Stall)).await;
    let gw = gateway_for(&mock, "shutdown_grace_ms = 300\n").await;
    let req = Request::post(format!("http://{}/openai/v1/chat/completions", gw.addr))
        .body(full_body(CHAT))
        .unwrap();
    let response = client().request(req).await.unwrap();
    let started = Instant::now();
    let report = tokio::time::timeout(Duration::from_secs(5), gw.shutdown())
        .await
        .unwrap();
    assert!(!report.drained);
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(response);
}

#[tokio::test]
async fn a_tls_upstream_with_an_extra_ca_speaks_http2_by_alpn() {
    let (cert, key) = self_signed_localhost();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &cert).unwrap();
    let mock = Mock::start_with(
        MockOptions {
            tls: Some((cert, key)),
            h2_max_streams: None,
        },
        |_| {
            Reply::sse(
                &["data: {\"n\":1}\n\n", "data: [DONE]\n\n"],
                Duration::from_millis(20),
            )
        },
    )
    .await;
    let gw = gateway_for(
        &mock,
        &format!(
            "[upstream]\nextra_ca_file = {:?}\n",
            ca.display().to_string()
        ),
    )
    .await;
    let a = post(&gw, "/openai/v1/chat/completions", &[], CHAT).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.body, &b"data: {\"n\":1}\n\ndata: [DONE]\n\n"[..]);
    assert_eq!(mock.last().version, Version::HTTP_2);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_tls_upstream_with_an_unknown_ca_is_a_502() {
    let (cert, key) = self_signed_localhost();
    let mock = Mock::start_with(
        MockOptions {
            tls: Some((cert, key)),
            h2_max_streams: None,
        },
        |_| Reply::json(200, "{}"),
    )
    .await;
    let gw = gateway_for(&mock, "").await;
    let a = post(&gw, "/openai/v1/chat/completions", &[], CHAT).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    let message = a.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.to_lowercase().contains("certificate"), "{message}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_client_speaking_http2_is_served() {
    let mock = Mock::start(|_| Reply::json(200, "{\"ok\":true}")).await;
    let gw = gateway_for(&mock, "").await;
    let req = Request::post(format!("http://{}/openai/v1/chat/completions", gw.addr))
        .body(full_body(CHAT))
        .unwrap();
    let response = h2_client().request(req).await.unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    let (frames, end) = frames(response.into_body()).await;
    end.unwrap();
    assert_eq!(concat(&frames), b"{\"ok\":true}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_streamed_request_answered_without_a_content_type_still_streams() {
    let mock = Mock::start(|_| Reply {
        status: 200,
        headers: vec![],
        headers_delay: Duration::ZERO,
        steps: vec![
            Step::Send(Bytes::from_static(b"data: {\"n\":1}\n\n")),
            Step::Pause(Duration::from_millis(300)),
            Step::Send(Bytes::from_static(b"data: [DONE]\n\n")),
        ],
    })
    .await;
    let gw = gateway_for(&mock, "").await;
    let req = Request::post(format!("http://{}/openai/v1/chat/completions", gw.addr))
        .body(full_body(r#"{"model":"m","stream":true}"#))
        .unwrap();
    let started = Instant::now();
    let response = client().request(req).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "headers must not wait for the body"
    );
    let (frames, end) = frames(response.into_body()).await;
    end.unwrap();
    assert_eq!(frames.len(), 2);
    gw.shutdown().await;
}

/// A non-streamed answer larger than `cost.response_headers_max_body_bytes` is passed on as it
/// comes; the client must still get every byte, framed with the upstream's full length.
#[tokio::test]
async fn a_non_streamed_response_over_the_cost_buffer_arrives_whole_with_its_length() {
    // An embeddings answer of about 1.4 MB, sent in pieces so the buffer fills mid-body.
    let vector: Vec<String> = (0..150_000).map(|i| format!("0.{i:06}")).collect();
    let body = format!(
        r#"{{"object":"list","data":[{{"object":"embedding","index":0,"embedding":[{}]}}],"model":"text-embedding-3-small","usage":{{"prompt_tokens":8,"total_tokens":8}}}}"#,
        vector.join(",")
    );
    assert!(body.len() > 1024 * 1024 + 100_000);
    let steps: Vec<Step> = body
        .as_bytes()
        .chunks(64 * 1024)
        .map(|c| Step::Send(Bytes::copy_from_slice(c)))
        .collect();
    let len = body.len().to_string();
    let mock = Mock::start(move |_| Reply {
        status: 200,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("content-length".into(), len.clone()),
        ],
        headers_delay: Duration::ZERO,
        steps: steps.clone(),
    })
    .await;
    let gw = gateway_for(&mock, "").await;
    let a = post(
        &gw,
        "/openai/v1/embeddings",
        &[("content-type", "application/json")],
        r#"{"model":"text-embedding-3-small","input":"hello"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body.len(), body.len(), "the client got a cut body");
    assert_eq!(a.body, body.as_bytes());
    assert_eq!(
        a.headers.get("content-length").map(|v| v.as_bytes()),
        Some(body.len().to_string().as_bytes()),
        "framed by the whole length"
    );
    a.json();
    // The side parser saw every byte too: the usage at the end of the body is recorded.
    let deadline = Instant::now() + Duration::from_secs(10);
    let call = loop {
        if let Some(call) = gw.recent_calls().pop() {
            break call;
        }
        assert!(Instant::now() < deadline, "the call was never recorded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(call.response.unwrap().usage.input_tokens, Some(8));
    gw.shutdown().await;
}

/// A provider with a base path must never be reached outside it: dot segments, plain or
/// percent-encoded, are refused with 400 and nothing reaches the upstream.
#[tokio::test]
async fn dot_segments_never_let_a_call_leave_the_providers_base_path() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = Mock::start(|_| Reply::json(200, "{}")).await;
    let gw = gateway_for(
        &mock,
        &format!(
            "[providers.mylab]\nbase_url = \"{}/tenant-a\"\n",
            mock.url()
        ),
    )
    .await;
    for path in [
        "/mylab/../tenant-b/v1/chat/completions",
        "/mylab/%2e%2e/tenant-b/v1/chat/completions",
        "/mylab/.%2E/tenant-b/v1/chat/completions",
        "/mylab/v1/..%2f..%2ftenant-b/chat/completions",
    ] {
        // Raw bytes on the wire, so no client library normalizes the path first.
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let req = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{CHAT}",
            CHAT.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains("invalid_path"), "{path}: {answer}");
    }
    assert!(mock.requests().is_empty(), "{:?}", mock.requests());
    // The same provider still works within its base path.
    let a = post(&gw, "/mylab/v1/chat/completions", &[], CHAT).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(mock.last().uri, "/tenant-a/v1/chat/completions");
    gw.shutdown().await;
}
