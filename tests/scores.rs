//! Scores after the fact through the running gateway: `POST /api/scores` for a trace and for one
//! of its spans is stored with the trace (a zero-duration `evaluation {name}` span under the
//! scored span), exported to the collector with the GenAI evaluation attributes, and counted by
//! name and feature; bad input gets a 4xx saying what was wrong.

mod common;

use std::time::{Duration, Instant};

use common::otlp::{AttrValue as Received, Collector, Transport};
use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};

fn provider(_: &Seen) -> Reply {
    Reply::json(
        200,
        &String::from_utf8(fixture("openai/chat_nonstream.json")).unwrap(),
    )
}

const CHAT: &str = r#"{"model":"o4-mini","messages":[{"role":"user","content":"hi"}]}"#;

async fn admin_send(
    gw: &TestGateway,
    method: &str,
    path: &str,
    body: impl Into<bytes::Bytes>,
) -> Answer {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", gw.admin_addr))
        .header("content-type", "application/json")
        .body(full_body(body))
        .unwrap();
    let response = client().request(req).await.unwrap();
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

async fn score(gw: &TestGateway, body: Value) -> Answer {
    admin_send(gw, "POST", "/api/scores", body.to_string()).await
}

/// GETs a trace until it has `spans` spans; panics after 20 s.
async fn trace_with(gw: &TestGateway, id: &str, spans: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = admin_get(gw, &format!("/api/traces/{id}")).await;
        if a.status == StatusCode::OK && a.json()["spans"].as_array().map(Vec::len) == Some(spans) {
            return a.json();
        }
        assert!(
            Instant::now() < deadline,
            "trace {id} never had {spans} spans"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn scores_are_stored_under_the_scored_span_exported_and_counted() {
    let mock = Mock::start(provider).await;
    let collector = Collector::start(Transport::Http).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "data_dir = {:?}\n[export]\nendpoint = {:?}\nprotocol = \"http/protobuf\"\nbatch_delay_ms = 50\n",
        dir.path().display().to_string(),
        collector.endpoint()
    );
    let gw = gateway_for(&mock, &config).await;
    let call = post(
        &gw,
        "/v1/chat/completions",
        &[("x-sidetrace-feature", "support_agent")],
        CHAT,
    )
    .await;
    assert_eq!(call.status, StatusCode::OK);
    let trace_id = call.headers["x-sidetrace-trace-id"]
        .to_str()
        .unwrap()
        .to_string();

    // Right after the call: the store may not have written it yet, the score waits for it.
    let on_trace = score(
        &gw,
        json!({"trace_id": trace_id, "name": "user_feedback", "label": "thumbs_down", "explanation": "wrong answer"}),
    )
    .await;
    assert_eq!(on_trace.status, StatusCode::CREATED, "{:?}", on_trace.body);
    let tree = trace_with(&gw, &trace_id, 2).await;
    let call_span = tree["spans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"].as_str().unwrap().starts_with("chat"))
        .expect("the call's span")
        .clone();
    let call_span_id = call_span["span_id"].as_str().unwrap().to_string();
    assert_eq!(
        on_trace.json()["parent_span_id"],
        call_span_id.as_str(),
        "the root is scored"
    );

    let on_span = score(
        &gw,
        json!({"trace_id": trace_id, "span_id": call_span_id, "name": "helpfulness", "score": 0.25}),
    )
    .await;
    assert_eq!(on_span.status, StatusCode::CREATED);
    let score_span_id = on_span.json()["span_id"].as_str().unwrap().to_string();
    let tree = trace_with(&gw, &trace_id, 3).await;
    let stored = tree["spans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["span_id"] == score_span_id.as_str())
        .expect("the score is in the trace")
        .clone();
    assert_eq!(stored["name"], "evaluation helpfulness");
    assert_eq!(stored["parent_span_id"], call_span_id.as_str());
    // At the scored span's end, however later it was posted: the trace keeps its duration.
    assert_eq!(stored["start_unix_nanos"], call_span["end_unix_nanos"]);
    assert_eq!(stored["end_unix_nanos"], call_span["end_unix_nanos"]);
    let nanos = |v: &serde_json::Value| v.as_str().unwrap().parse::<u64>().unwrap();
    assert!(
        nanos(&stored["events"][0]["time_unix_nanos"]) > nanos(&call_span["end_unix_nanos"]),
        "the evaluation event keeps the time it was posted"
    );
    assert_eq!(stored["attributes"]["gen_ai.evaluation.score.value"], 0.25);
    assert_eq!(
        stored["attributes"]["gen_ai.evaluation.name"],
        "helpfulness"
    );

    // Exported with the evaluation attributes, parented to the scored span, zero duration.
    let spans = collector.wait_for_spans(3, Duration::from_secs(20)).await;
    let exported = spans
        .iter()
        .find(|s| s.span_id == score_span_id)
        .expect("the score's span is exported");
    assert_eq!(exported.parent_span_id, call_span_id);
    assert_eq!(exported.trace_id, trace_id);
    assert_eq!(exported.start_unix_nanos, exported.end_unix_nanos);
    assert_eq!(exported.kind, 1, "INTERNAL");
    assert_eq!(
        exported.attributes["gen_ai.evaluation.score.value"],
        Received::Double(0.25)
    );
    let feedback = spans
        .iter()
        .find(|s| s.name == "evaluation user_feedback")
        .expect("the trace's score is exported");
    assert_eq!(
        feedback.attributes["gen_ai.evaluation.score.label"],
        Received::Str("thumbs_down".into())
    );
    assert_eq!(
        feedback.attributes["gen_ai.evaluation.explanation"],
        Received::Str("wrong answer".into())
    );
    assert!(feedback.attributes.contains_key("gen_ai.response.id"));

    let text = metrics_of(&gw).await;
    assert_eq!(
        metric_in(
            &text,
            "sidetrace_scores_total{name=\"helpfulness\",feature=\"support_agent\",label=\"\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_in(
            &text,
            "sidetrace_scores_total{name=\"user_feedback\",feature=\"support_agent\",label=\"thumbs_down\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_in(
            &text,
            "sidetrace_score_value_sum{name=\"helpfulness\",feature=\"support_agent\"}"
        ),
        0.25
    );
    gw.shutdown().await;
    collector.stop().await;
}

#[tokio::test]
async fn bad_scores_get_a_4xx_saying_what_was_wrong_and_record_nothing() {
    let mock = Mock::start(provider).await;
    let gw = gateway_for(&mock, "").await;
    let call = post(&gw, "/v1/chat/completions", &[], CHAT).await;
    let trace_id = call.headers["x-sidetrace-trace-id"]
        .to_str()
        .unwrap()
        .to_string();
    trace_with(&gw, &trace_id, 1).await;

    let error = |a: &Answer| {
        a.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let a = admin_send(&gw, "POST", "/api/scores", "{not json").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(error(&a).contains("not JSON"), "{}", error(&a));
    let a = score(&gw, json!({"trace_id": trace_id, "name": "x"})).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(error(&a).contains("a score has"));
    let a = score(&gw, json!({"trace_id": "ab", "name": "x", "score": 1})).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = score(
        &gw,
        json!({"trace_id": "0af7651916cd43dd8448eb211c80319c", "name": "x", "score": 1}),
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(error(&a).contains("no trace"));
    let a = score(
        &gw,
        json!({"trace_id": trace_id, "span_id": "00f067aa0ba902b7", "name": "x", "score": 1}),
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(error(&a).contains("has no span"));
    let a = admin_send(&gw, "POST", "/api/scores", vec![b' '; 100 * 1024]).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    let a = admin_send(&gw, "GET", "/api/scores", "").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);

    // Nothing was recorded: the trace still has its one span, no score was counted.
    assert_eq!(
        trace_with(&gw, &trace_id, 1).await["spans"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(!metrics_of(&gw).await.contains("sidetrace_scores_total{"));
    gw.shutdown().await;
}
