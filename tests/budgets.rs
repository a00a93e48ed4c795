//! Budgets through the gateway: what a burst can overshoot, what counts (unpriced calls, streams
//! the client left), how features match, and how a refusal tells clients not to retry. The
//! promise itself is written in `src/store/budgets.rs` and docs/telemetry-guarantees.md.

mod common;

use std::time::Duration;

use common::*;
use http::{Request, StatusCode};
use serde_json::Value;

// One o4-mini call of the fixture costs 0.0031966 USD (see tests/cost_gateway.rs).
const O4_MINI_COST_PICO: u128 = 3_196_600_000;

fn provider(seen: &Seen) -> Reply {
    let body: Value = serde_json::from_slice(&seen.body).unwrap_or_default();
    let model = body["model"].as_str().unwrap_or("");
    let stream = body["stream"] == true;
    match (model, stream) {
        ("rate-limited", _) => Reply::json(
            429,
            std::str::from_utf8(&fixture("openai/error_rate_limit_429.json")).unwrap(),
        ),
        // Held long enough for a burst to be in flight together.
        ("o4-mini", false) => Reply::json(
            200,
            std::str::from_utf8(&fixture("openai/chat_nonstream.json")).unwrap(),
        )
        .delay_headers(Duration::from_millis(300)),
        // A stream that sends its first chunk, then stalls: the usage never comes.
        (_, true) => Reply::sse(
            &["data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"o4-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n"],
            Duration::ZERO,
        )
        .then(Step::Stall),
        // A model no price table knows.
        _ => Reply::json(
            200,
            r#"{"id":"x1","object":"chat.completion","model":"house-model-7","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":5}}"#,
        ),
    }
}

async fn gw(mock: &Mock, budgets: &str) -> (TestGateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_for(
        mock,
        &format!(
            "data_dir = {:?}\n{budgets}",
            dir.path().display().to_string()
        ),
    )
    .await;
    (gw, dir)
}

async fn chat(gw: &TestGateway, feature: &str, model: &str) -> Answer {
    post(
        gw,
        "/openai/v1/chat/completions",
        &[("x-sidetrace-feature", feature)],
        &format!(r#"{{"model":"{model}","messages":[]}}"#),
    )
    .await
}

async fn wait_for_calls(gw: &TestGateway, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gw.recent_calls().len() < n {
        assert!(std::time::Instant::now() < deadline, "calls not recorded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_concurrent_calls_overshoots_a_budget_by_at_most_one_call() {
    let mock = Mock::start(provider).await;
    let (gw, _dir) = gw(
        &mock,
        "[[budgets]]\nname = \"burst\"\nfeature = \"search\"\nlimit_usd = \"0.02\"\nwindow = \"day\"\n",
    )
    .await;
    // One call teaches the budget what a call costs.
    assert_eq!(chat(&gw, "search", "o4-mini").await.status, StatusCode::OK);
    // 100 at once: with 0.0031966 spent and each call reserving 0.0031966, a call is admitted
    // while spend + reservations < 0.02: 6 of them (1 + 5 = 6 × 0.0031966 = 0.0192 < 0.02).
    let answers = futures_join_all((0..100).map(|_| chat(&gw, "search", "o4-mini"))).await;
    let admitted = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .count();
    let refused = answers
        .iter()
        .filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(admitted + refused, 100);
    assert_eq!(admitted, 6, "admitted {admitted} of the burst");
    let spent = (admitted as u128 + 1) * O4_MINI_COST_PICO;
    let limit = 20_000_000_000u128;
    assert!(
        spent <= limit + O4_MINI_COST_PICO,
        "spent {spent} pico-USD against a limit of {limit}"
    );
    assert_eq!(mock.requests().len(), admitted + 1);
    gw.shutdown().await;
}

/// Runs the futures concurrently on this task and returns their outputs in order.
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

#[tokio::test]
async fn a_stream_whose_client_left_before_the_usage_still_counts() {
    let mock = Mock::start(provider).await;
    let (gw, _dir) = gw(
        &mock,
        "[[budgets]]\nname = \"b\"\nlimit_usd = \"0.003\"\nunpriced_call_usd = \"0.004\"\nwindow = \"day\"\n",
    )
    .await;
    let req = Request::post(format!("http://{}/openai/v1/chat/completions", gw.addr))
        .body(full_body(
            r#"{"model":"o4-mini","stream":true,"messages":[]}"#,
        ))
        .unwrap();
    let mut response = client().request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    http_body_util::BodyExt::frame(response.body_mut())
        .await
        .unwrap()
        .unwrap();
    drop(response);
    wait_for_calls(&gw, 1).await;
    assert_eq!(gw.recent_calls()[0].cost_pico_usd, None, "never priced");
    let next = chat(&gw, "any", "house-model-7").await;
    assert_eq!(
        next.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the abandoned stream counted as unpriced_call_usd"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn calls_to_an_unpriced_model_count_against_the_budget() {
    let mock = Mock::start(provider).await;
    let (gw, _dir) = gw(
        &mock,
        "[[budgets]]\nname = \"b\"\nlimit_usd = \"0.01\"\nunpriced_call_usd = \"0.004\"\nwindow = \"day\"\n",
    )
    .await;
    // 0.004 each: the third takes the spend to 0.012, the fourth is refused.
    for i in 0..3 {
        let a = chat(&gw, "f", "house-model-7").await;
        assert_eq!(a.status, StatusCode::OK, "call {i}");
        assert!(!a.headers.contains_key("x-sidetrace-cost-usd"), "unpriced");
        wait_for_calls(&gw, i + 1).await;
    }
    assert_eq!(
        chat(&gw, "f", "house-model-7").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn feature_names_that_differ_in_case_or_stray_separators_share_a_budget() {
    let mock = Mock::start(provider).await;
    let (gw, _dir) = gw(
        &mock,
        "[[budgets]]\nname = \"agent\"\nfeature = \"Support_Agent\"\nlimit_usd = \"0.005\"\nunpriced_call_usd = \"0.003\"\nwindow = \"day\"\n",
    )
    .await;
    assert_eq!(
        chat(&gw, "support_agent,", "house-model-7").await.status,
        StatusCode::OK
    );
    wait_for_calls(&gw, 1).await;
    assert_eq!(
        gw.recent_calls()[0].metadata.feature.as_deref(),
        Some("support_agent"),
        "recorded in canonical form"
    );
    assert_eq!(
        chat(&gw, " SUPPORT_AGENT ", "house-model-7").await.status,
        StatusCode::OK
    );
    wait_for_calls(&gw, 2).await;
    assert_eq!(
        chat(&gw, "Support_Agent", "house-model-7").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        chat(&gw, "support_agent_v2", "house-model-7").await.status,
        StatusCode::OK,
        "another feature"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_budget_refusal_says_when_the_window_turns_and_not_to_retry_now() {
    let mock = Mock::start(provider).await;
    let (gw, _dir) = gw(
        &mock,
        "[[budgets]]\nname = \"tiny\"\nlimit_usd = \"0.000001\"\nunpriced_call_usd = \"0.001\"\nwindow = \"hour\"\n",
    )
    .await;
    assert_eq!(chat(&gw, "f", "house-model-7").await.status, StatusCode::OK);
    wait_for_calls(&gw, 1).await;
    let refused = chat(&gw, "f", "house-model-7").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers["x-should-retry"], "false");
    let retry_after: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&retry_after), "{retry_after}");
    assert_eq!(refused.json()["error"]["code"], "budget_exceeded");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_call_the_provider_refused_counts_nothing() {
    let mock = Mock::start(provider).await;
    let (gw, _dir) = gw(
        &mock,
        "[[budgets]]\nname = \"b\"\nlimit_usd = \"0.5\"\nunpriced_call_usd = \"1\"\nwindow = \"day\"\n",
    )
    .await;
    for i in 0..3 {
        let a = chat(&gw, "f", "rate-limited").await;
        assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            a.json()["error"]["code"],
            "rate_limit_exceeded",
            "the provider's 429"
        );
        wait_for_calls(&gw, i + 1).await;
    }
    // Had any counted as unpriced (1 USD), this one would be refused by the budget.
    assert_eq!(chat(&gw, "f", "house-model-7").await.status, StatusCode::OK);
    gw.shutdown().await;
}

#[tokio::test]
async fn calls_on_routes_the_gateway_does_not_inspect_count_nothing() {
    let mock = Mock::start(provider).await;
    let (gw, _dir) = gw(
        &mock,
        "[[budgets]]\nname = \"b\"\nlimit_usd = \"0.5\"\nunpriced_call_usd = \"1\"\nwindow = \"day\"\n",
    )
    .await;
    // Files, model lists and the like are not generations: no unpriced charge.
    for i in 0..3 {
        let a = post(&gw, "/openai/v1/files", &[], "{}").await;
        assert_eq!(a.status, StatusCode::OK);
        wait_for_calls(&gw, i + 1).await;
    }
    assert_eq!(chat(&gw, "f", "house-model-7").await.status, StatusCode::OK);
    gw.shutdown().await;
}
