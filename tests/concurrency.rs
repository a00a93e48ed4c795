//! Many concurrent streams through one upstream, over HTTP/1.1 and HTTP/2.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode, Version};

const CHAT: &str = r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#;

/// Each stream sends one event, then waits until `all` requests reached the mock, then ends:
/// the calls only finish if all of them are open at the same time.
fn held_stream(all: usize) -> Reply {
    Reply::sse(&["data: {\"n\":1}\n\n"], Duration::ZERO)
        .then(Step::WaitForRequests(all))
        .then(Step::Send(Bytes::from_static(b"data: [DONE]\n\n")))
}

/// The tests here each open up to a thousand connections; one at a time keeps them within the
/// machine's means (2 cores) and their timing meaningful.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run_streams(gw: &TestGateway, n: usize, deadline: Duration) -> Result<(), String> {
    let client = client();
    let mut calls = Vec::with_capacity(n);
    for i in 0..n {
        let client = client.clone();
        let uri = format!("http://{}/openai/v1/chat/completions?i={i}", gw.addr);
        calls.push(tokio::spawn(async move {
            let req = Request::post(uri).body(full_body(CHAT)).unwrap();
            let response = client.request(req).await.map_err(|e| e.to_string())?;
            if response.status() != StatusCode::OK {
                let status = response.status();
                let (frames, _) = frames(response.into_body()).await;
                return Err(format!(
                    "status {status}: {}",
                    String::from_utf8_lossy(&concat(&frames))
                ));
            }
            let (frames, end) = frames(response.into_body()).await;
            end?;
            if concat(&frames) != b"data: {\"n\":1}\n\ndata: [DONE]\n\n" {
                return Err("body differs".to_string());
            }
            Ok(())
        }));
    }
    let all = async {
        for call in calls {
            call.await.map_err(|e| e.to_string())??;
        }
        Ok::<(), String>(())
    };
    tokio::time::timeout(deadline, all)
        .await
        .map_err(|_| "streams did not all complete in time".to_string())?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_streams_complete_over_http1() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mock = Mock::start(|_| held_stream(1000)).await;
    let gw = gateway_for(&mock, "").await;
    run_streams(&gw, 1000, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        mock.requests()
            .iter()
            .all(|s| s.version == Version::HTTP_11)
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_streams_complete_over_http2() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mock = Mock::start_with(
        MockOptions {
            tls: None,
            h2_max_streams: Some(100),
        },
        |_| held_stream(1000),
    )
    .await;
    let gw = gateway_for(&mock, "[providers.openai]\nhttp2_prior_knowledge = true\n").await;
    run_streams(&gw, 1000, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(mock.requests().iter().all(|s| s.version == Version::HTTP_2));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_calls_past_the_servers_stream_limit_open_another_connection() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mock = Mock::start_with(
        MockOptions {
            tls: None,
            h2_max_streams: Some(10),
        },
        |_| held_stream(50),
    )
    .await;
    let gw = gateway_for(
        &mock,
        "[upstream]\nhttp2_max_streams_per_connection = 10\n[providers.openai]\nhttp2_prior_knowledge = true\n",
    )
    .await;
    run_streams(&gw, 50, Duration::from_secs(20)).await.unwrap();
    gw.shutdown().await;
}

/// The control for the test above: with everything on one HTTP/2 connection, calls past the
/// server's limit queue behind the open ones and the same load never completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_calls_on_a_single_connection_stall_at_the_servers_stream_limit() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mock = Mock::start_with(
        MockOptions {
            tls: None,
            h2_max_streams: Some(10),
        },
        |_| held_stream(50),
    )
    .await;
    let gw = gateway_for(
        &mock,
                "shutdown_grace_ms = 100\n[upstream]\nhttp2_max_connections = 1\n[providers.openai]\nhttp2_prior_knowledge = true\n",
    )
    .await;
    let result = run_streams(&gw, 50, Duration::from_secs(2)).await;
    assert!(result.is_err(), "expected the single connection to stall");
    assert!(
        mock.requests().len() <= 10,
        "{} requests got through",
        mock.requests().len()
    );
    gw.shutdown().await;
}
