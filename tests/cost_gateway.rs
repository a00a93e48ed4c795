//! Cost through the gateway: exact prices on spans and headers, trailers and the SSE comment
//! for streams, the cost query API, and budgets.

mod common;

use std::time::Duration;

use common::*;
use http::{Request, StatusCode};
use serde_json::Value;
use sidetrace::trace::span::AttrValue;

fn provider(seen: &Seen) -> Reply {
    let body: Value = serde_json::from_slice(&seen.body).unwrap_or_default();
    let stream = body["stream"] == true;
    let path = seen.uri.split('?').next().unwrap_or("");
    match (path, stream) {
        ("/v1/chat/completions", true) => Reply::sse(
            &[std::str::from_utf8(&fixture("openai/chat_stream_include_usage.sse")).unwrap()],
            Duration::ZERO,
        ),
        ("/v1/chat/completions", false) => Reply::json(
            200,
            std::str::from_utf8(&fixture("openai/chat_nonstream.json")).unwrap(),
        ),
        ("/v1/messages", true) => Reply::sse(
            &[std::str::from_utf8(&fixture("anthropic/stream_cache_tokens.sse")).unwrap()],
            Duration::ZERO,
        ),
        _ => Reply::json(404, "{}"),
    }
}

async fn gw(mock: &Mock, extra: &str) -> (TestGateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_for(
        mock,
        &format!("data_dir = {:?}\n{extra}", dir.path().display().to_string()),
    )
    .await;
    (gw, dir)
}

// o4-mini: input 1.10, cached 0.275, output 4.40 USD per million. The fixture reports 1310
// input of which 1152 cached, 615 output (448 of them reasoning, priced as output):
// 158 × 1.10 + 1152 × 0.275 + 615 × 4.40 = 173.8 + 316.8 + 2706 = 3196.6 µUSD.
const O4_MINI_COST: &str = "0.0031966";
// gpt-4o-mini: 0.15 in, 0.60 out: 24 × 0.15 + 26 × 0.60 = 19.2 µUSD.
const GPT_4O_MINI_COST: &str = "0.0000192";
// claude-sonnet-4-5: 3.00 in, 0.30 cache read, 3.75 cache write (5 min), 15.00 out. 12147 input
// = 12 plain + 10240 read + 1895 written; 90 output:
// 12 × 3 + 10240 × 0.30 + 1895 × 3.75 + 90 × 15 = 36 + 3072 + 7106.25 + 1350 = 11564.25 µUSD.
const SONNET_COST: &str = "0.01156425";

#[tokio::test]
async fn a_non_streamed_response_carries_its_exact_cost_and_token_headers() {
    let mock = Mock::start(provider).await;
    let (gw, _dir) = gw(&mock, "").await;
    let a = post(
        &gw,
        "/openai/v1/chat/completions",
        &[],
        r#"{"model":"o4-mini","messages":[]}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["x-sidetrace-cost-usd"], O4_MINI_COST);
    assert_eq!(a.headers["x-sidetrace-input-tokens"], "1310");
    assert_eq!(a.headers["x-sidetrace-output-tokens"], "615");
    assert_eq!(a.headers["x-sidetrace-cached-input-tokens"], "1152");
    assert_eq!(a.headers["x-sidetrace-reasoning-tokens"], "448");
    assert_eq!(
        a.body,
        fixture("openai/chat_nonstream.json"),
        "the body is the upstream's"
    );
    let span = gw.recent_spans().pop().unwrap();
    assert_eq!(span.attr("cost.usd"), Some(&AttrValue::Double(0.0031966)));
    assert_eq!(
        span.attr("sidetrace.price.model"),
        Some(&AttrValue::Str("o4-mini".into()))
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn an_unknown_model_gets_no_cost_header_and_counts_as_unpriced() {
    let mock = Mock::start(|_| {
        Reply::json(
            200,
            r#"{"id":"x","object":"chat.completion","model":"my-private-model","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#,
        )
    })
    .await;
    let (gw, _dir) = gw(&mock, "").await;
    let a = post(
        &gw,
        "/openai/v1/chat/completions",
        &[],
        r#"{"model":"my-private-model"}"#,
    )
    .await;
    assert!(
        !a.headers.contains_key("x-sidetrace-cost-usd"),
        "never a silent 0"
    );
    assert_eq!(a.headers["x-sidetrace-input-tokens"], "5");
    let metrics = String::from_utf8(admin_get(&gw, "/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains(
            "sidetrace_calls_unpriced_total{provider=\"openai\",model=\"my-private-model\""
        ),
        "{metrics}"
    );
    assert!(gw.recent_spans().pop().unwrap().attr("cost.usd").is_none());
    // Nor a "0" in the cost API: its group's cost is null, its call unpriced.
    let costs = costs_api(&gw, "group_by=model&bucket=1h").await;
    let row = &costs["rows"][0];
    assert_eq!(row["key"], "my-private-model", "{costs}");
    assert_eq!(row["cost_usd"], Value::Null, "{costs}");
    assert_eq!(row["unpriced_calls"], 1);
    assert_eq!(costs["total"]["cost_usd"], Value::Null, "{costs}");
    assert_eq!(
        costs["series"][0]["points"][0]["cost_usd"],
        Value::Null,
        "{costs}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_stream_gets_its_cost_as_trailers_when_the_client_sent_te_trailers() {
    let mock = Mock::start(provider).await;
    let (gw, _dir) = gw(&mock, "").await;
    let req = Request::post(format!("http://{}/openai/v1/chat/completions", gw.addr))
        .header("te", "trailers")
        .body(full_body(
            r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true}}"#,
        ))
        .unwrap();
    let response = client().request(req).await.unwrap();
    assert!(
        response.headers()["trailer"]
            .to_str()
            .unwrap()
            .contains("x-sidetrace-cost-usd")
    );
    let collected = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["x-sidetrace-cost-usd"], GPT_4O_MINI_COST);
    assert_eq!(trailers["x-sidetrace-output-tokens"], "26");
    assert_eq!(
        collected.to_bytes(),
        fixture("openai/chat_stream_include_usage.sse")
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_stream_ends_with_a_cost_comment_when_asked() {
    let mock = Mock::start(provider).await;
    let (gw, _dir) = gw(&mock, "").await;
    let a = post(
        &gw,
        "/anthropic/v1/messages",
        &[("x-sidetrace-cost-comment", "true")],
        r#"{"model":"claude-sonnet-4-5","stream":true,"max_tokens":100,"messages":[]}"#,
    )
    .await;
    let body = String::from_utf8(a.body.to_vec()).unwrap();
    let upstream = String::from_utf8(fixture("anthropic/stream_cache_tokens.sse")).unwrap();
    assert!(body.starts_with(&upstream));
    let comment = &body[upstream.len()..];
    assert_eq!(
        comment,
        format!(
            ": sidetrace cost_usd={SONNET_COST} input_tokens=12147 output_tokens=90 cached_input_tokens=10240\n\n"
        )
    );
    gw.shutdown().await;
}

/// An error answer is not billed, nor a call the gateway refused before sending it: each is
/// known to cost nothing, so the cost page does not call the totals incomplete for them.
#[tokio::test]
async fn error_answers_and_refused_calls_cost_nothing_and_are_not_unpriced() {
    let mock = Mock::start(|_| {
        Reply::json(
            429,
            std::str::from_utf8(&fixture("openai/error_rate_limit_429.json")).unwrap(),
        )
    })
    .await;
    let (gw, _dir) = gw(&mock, "max_request_body_bytes = 200\n").await;
    let feature = [("x-sidetrace-feature", "f")];
    let limited = post(
        &gw,
        "/openai/v1/chat/completions",
        &feature,
        r#"{"model":"gpt-4o-mini"}"#,
    )
    .await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    let big = format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(300)
    );
    let refused = post(&gw, "/openai/v1/chat/completions", &feature, &big).await;
    assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE);
    let mut costs = Value::Null;
    for _ in 0..200 {
        costs = costs_api(&gw, "group_by=feature").await;
        if costs["total"]["calls"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(costs["total"]["calls"], 2, "{costs}");
    assert_eq!(costs["total"]["unpriced_calls"], 0, "{costs}");
    assert_eq!(costs["total"]["priced_calls"], 2, "{costs}");
    assert_ne!(costs["total"]["cost_usd"], Value::Null, "{costs}");
    gw.shutdown().await;
}

async fn costs_api(gw: &TestGateway, query: &str) -> Value {
    let a = admin_get(gw, &format!("/api/costs?{query}")).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    a.json()
}

/// The series cover the ten costliest groups; `series_other` sums the rest per bucket, so a
/// chart's "other" is all of it (it counted only what the ten left after the chart's own top).
#[tokio::test]
async fn the_cost_series_sum_the_groups_past_the_charted_ones() {
    let mock = Mock::start(provider).await;
    let (gw, _dir) = gw(&mock, "").await;
    for i in 0..13 {
        let feature = format!("f{i:02}");
        post(
            &gw,
            "/openai/v1/chat/completions",
            &[("x-sidetrace-feature", feature.as_str())],
            r#"{"model":"o4-mini"}"#,
        )
        .await;
    }
    let costs = costs_api(&gw, "group_by=feature&window=1h&bucket=1h").await;
    let calls = |points: &Value| -> u64 {
        points
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["calls"].as_u64().unwrap())
            .sum()
    };
    let series = costs["series"].as_array().unwrap();
    assert_eq!(series.len(), 10, "{costs}");
    let charted: u64 = series.iter().map(|s| calls(&s["points"])).sum();
    assert_eq!(charted, 10);
    assert_eq!(calls(&costs["series_other"]["points"]), 3, "{costs}");
    assert_eq!(costs["total"]["calls"], 13);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_cost_query_api_returns_the_sums_of_the_spans_by_feature_user_and_model() {
    let mock = Mock::start(provider).await;
    let (gw, _dir) = gw(&mock, "").await;
    let calls = [
        (
            "search",
            "u1",
            "/openai/v1/chat/completions",
            r#"{"model":"o4-mini"}"#,
        ),
        (
            "search",
            "u2",
            "/openai/v1/chat/completions",
            r#"{"model":"o4-mini"}"#,
        ),
        (
            "support",
            "u1",
            "/anthropic/v1/messages",
            r#"{"model":"claude-sonnet-4-5","stream":true,"max_tokens":9}"#,
        ),
        (
            "support",
            "u1",
            "/openai/v1/chat/completions",
            r#"{"model":"gpt-4o-mini","stream":true}"#,
        ),
    ];
    for (feature, user, path, body) in calls {
        post(
            &gw,
            path,
            &[
                ("x-sidetrace-feature", feature),
                ("x-sidetrace-user-id", user),
            ],
            body,
        )
        .await;
    }
    let by_feature = costs_api(&gw, "group_by=feature&window=1h").await;
    let rows = by_feature["rows"].as_array().unwrap();
    let find = |rows: &[Value], key: &str| rows.iter().find(|r| r["key"] == key).cloned().unwrap();
    // search: 2 × 0.0031966; support: 0.01156425 + 0.0000192.
    assert_eq!(find(rows, "search")["cost_usd"], "0.0063932");
    assert_eq!(find(rows, "search")["calls"], 2);
    assert_eq!(find(rows, "support")["cost_usd"], "0.01158345");
    assert_eq!(by_feature["total"]["cost_usd"], "0.01797665");
    let by_user = costs_api(&gw, "group_by=user&window=1h").await;
    assert_eq!(
        find(by_user["rows"].as_array().unwrap(), "u2")["cost_usd"],
        "0.0031966"
    );
    let by_model = costs_api(&gw, "group_by=model&window=24h&feature=support").await;
    let models: Vec<&str> = by_model["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["claude-sonnet-4-5", "gpt-4o-mini"]);
    // The API's sums equal the spans' costs.
    let span_total: f64 = gw
        .recent_spans()
        .iter()
        .filter_map(|s| match s.attr("cost.usd") {
            Some(AttrValue::Double(c)) => Some(*c),
            _ => None,
        })
        .sum();
    assert!((span_total - 0.01797665).abs() < 1e-12, "{span_total}");
    let bad = admin_get(&gw, "/api/costs?group_by=colour").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_call_that_crosses_a_budget_completes_and_the_next_is_refused_with_429() {
    let mock = Mock::start(provider).await;
    // One o4-mini call costs 0.0031966: the second crosses 0.005, the third is refused.
    let (gw, _dir) = gw(
        &mock,
        "[[budgets]]\nname = \"search-hourly\"\nfeature = \"search\"\nlimit_usd = \"0.005\"\nwindow = \"hour\"\n",
    )
    .await;
    let call = |feature: &'static str| {
        let gw = &gw;
        async move {
            post(
                gw,
                "/openai/v1/chat/completions",
                &[("x-sidetrace-feature", feature)],
                r#"{"model":"o4-mini"}"#,
            )
            .await
        }
    };
    assert_eq!(call("search").await.status, StatusCode::OK);
    assert_eq!(
        call("search").await.status,
        StatusCode::OK,
        "the crossing call completes"
    );
    let refused = call("search").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    let json = refused.json();
    assert_eq!(json["error"]["code"], "budget_exceeded");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("search-hourly")
    );
    assert_eq!(
        call("other").await.status,
        StatusCode::OK,
        "other features are not limited"
    );
    assert_eq!(
        mock.requests().len(),
        3,
        "the refused call never reached the provider"
    );
    let metrics = String::from_utf8(admin_get(&gw, "/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains("sidetrace_budget_refused_total{budget=\"search-hourly\"} 1"),
        "{metrics}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn cost_totals_survive_a_restart_and_seed_the_budgets() {
    let mock = Mock::start(provider).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "data_dir = {:?}\n[[budgets]]\nname = \"b\"\nlimit_usd = \"0.003\"\nwindow = \"day\"\n",
        dir.path().display().to_string()
    );
    let gw = gateway_for(&mock, &config).await;
    post(
        &gw,
        "/openai/v1/chat/completions",
        &[],
        r#"{"model":"o4-mini"}"#,
    )
    .await;
    gw.shutdown().await;
    let gw = gateway_for(&mock, &config).await;
    let totals = costs_api(&gw, "group_by=provider&window=24h").await;
    assert_eq!(totals["total"]["cost_usd"], O4_MINI_COST);
    let a = post(
        &gw,
        "/openai/v1/chat/completions",
        &[],
        r#"{"model":"o4-mini"}"#,
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the spend before the restart counts"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn with_pricing_off_there_is_no_cost_anywhere_and_tokens_are_still_counted() {
    let mock = Mock::start(provider).await;
    let (gw, _dir) = gw(&mock, "[cost]\nenabled = false\n").await;
    let a = post(
        &gw,
        "/openai/v1/chat/completions",
        &[],
        r#"{"model":"o4-mini"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        !a.headers.contains_key("x-sidetrace-cost-usd")
            && !a.headers.contains_key("x-sidetrace-input-tokens")
    );
    let span = gw.recent_spans().pop().unwrap();
    assert!(span.attr("cost.usd").is_none());
    assert_eq!(
        span.attr("gen_ai.usage.input_tokens"),
        Some(&AttrValue::Int(1310))
    );
    let metrics = String::from_utf8(admin_get(&gw, "/metrics").await.body.to_vec()).unwrap();
    assert!(
        !metrics.contains("sidetrace_calls_unpriced_total{"),
        "{metrics}"
    );
    gw.shutdown().await;
}
