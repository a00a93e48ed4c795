//! The tap through the real gateway: every fixture replayed by a mock provider in arbitrary
//! chunking gives the expected record while the client gets the upstream's bytes; broken,
//! cut and abandoned streams are recorded for what they were.

mod common;

use std::{path::PathBuf, time::Duration};

use bytes::Bytes;
use common::*;
use http::Request;
use serde_json::Value;
use sidetrace::{
    call::{CallRecord, Outcome},
    trace::span::{AttrValue, SpanRecord, SpanStatus},
};

const PROVIDERS: [(&str, &str); 9] = [
    ("openai", "openai"),
    ("azure_openai", "azure"),
    ("anthropic", "anthropic"),
    ("gemini", "gemini"),
    ("ollama", "ollama"),
    ("deepseek", "deepseek"),
    ("bedrock", "bedrock"),
    ("openai_compatible", "vllm"),
    ("groq", "groq"),
];

fn gateway_provider(fixture_provider: &str) -> String {
    PROVIDERS
        .iter()
        .find(|(f, _)| *f == fixture_provider)
        .map_or(fixture_provider.to_string(), |(_, g)| g.to_string())
}

/// Every provider pointed at the mock; no include_usage injection, so bytes compare 1:1.
async fn gateway_to(mock: &Mock, extra: &str) -> TestGateway {
    let mut text = format!("{extra}\n");
    for p in [
        "openai",
        "azure",
        "anthropic",
        "gemini",
        "ollama",
        "deepseek",
        "bedrock",
        "vllm",
        "groq",
        "mistral",
        "together",
        "openrouter",
        "xai",
    ] {
        text.push_str(&format!("[providers.{p}]\nbase_url = \"{}\"\n", mock.url()));
        // Local-network providers are opt-in.
        if p == "ollama" || p == "vllm" {
            text.push_str("enabled = true\n");
        }
    }
    gateway(&text).await
}

struct Case {
    name: String,
    expect: Value,
    body: Vec<u8>,
}

fn cases() -> Vec<Case> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/providers");
    let mut out = Vec::new();
    for dir in std::fs::read_dir(&root).unwrap() {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            if let Some(case) = name.strip_suffix(".expect.json") {
                let expect: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
                let body = std::fs::read(dir.join(expect["body_file"].as_str().unwrap())).unwrap();
                out.push(Case {
                    name: format!("{}/{case}", dir.file_name().unwrap().to_string_lossy()),
                    expect,
                    body,
                });
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(out.len() >= 25, "only {} fixtures found", out.len());
    out
}

/// Cuts `body` at pseudo-random points (deterministic per seed).
fn chunks(body: &[u8], seed: u64) -> Vec<Bytes> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = Vec::new();
    let mut start = 0;
    while start < body.len() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = 1 + (state >> 33) as usize % 97;
        let end = (start + len).min(body.len());
        out.push(Bytes::copy_from_slice(&body[start..end]));
        start = end;
    }
    out
}

fn replay(case: &Case, seed: u64) -> Reply {
    let mut reply = Reply {
        status: case.expect["http_status"].as_u64().unwrap() as u16,
        headers: vec![(
            "content-type".to_string(),
            case.expect["content_type"].as_str().unwrap().to_string(),
        )],
        headers_delay: Duration::ZERO,
        steps: Vec::new(),
    };
    for (i, c) in chunks(&case.body, seed).into_iter().enumerate() {
        if i % 7 == 3 {
            reply.steps.push(Step::Pause(Duration::from_millis(1)));
        }
        reply.steps.push(Step::Send(c));
    }
    reply
}

fn gateway_path(case: &Case) -> String {
    let provider = gateway_provider(case.expect["provider"].as_str().unwrap());
    let path = case.expect["request"]["path"].as_str().unwrap();
    format!("/{provider}{path}")
}

fn request_body(case: &Case) -> String {
    case.expect["request"]["body"].to_string()
}

fn opt_u64(v: &Value) -> Option<u64> {
    v.as_u64()
}

fn check_record(case: &Case, call: &CallRecord) {
    let e = &case.expect;
    let name = &case.name;
    let r = call
        .response
        .as_ref()
        .unwrap_or_else(|| panic!("{name}: no response record"));
    assert_eq!(r.model.as_deref(), e["model"].as_str(), "{name}: model");
    assert_eq!(
        r.response_id.as_deref(),
        e["response_id"].as_str(),
        "{name}: response_id"
    );
    let finish: Vec<&str> = e["finish_reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(r.finish_reasons, finish, "{name}: finish_reasons");
    let u = &r.usage;
    assert_eq!(
        u.input_tokens,
        opt_u64(&e["input_tokens"]),
        "{name}: input_tokens"
    );
    assert_eq!(
        u.output_tokens,
        opt_u64(&e["output_tokens"]),
        "{name}: output_tokens"
    );
    assert_eq!(
        u.cached_input_tokens,
        opt_u64(&e["cached_input_tokens"]),
        "{name}: cached"
    );
    assert_eq!(
        u.cache_creation_input_tokens,
        opt_u64(&e["cache_creation_input_tokens"]),
        "{name}: cache_creation"
    );
    assert_eq!(
        u.reasoning_tokens,
        opt_u64(&e["reasoning_tokens"]),
        "{name}: reasoning"
    );
    assert_eq!(
        r.stream_completed,
        e["stream_completed"].as_bool().unwrap(),
        "{name}: stream_completed"
    );
    assert_eq!(
        r.error.is_some(),
        !e["error"].is_null(),
        "{name}: error presence"
    );
    if let (Some(got), Some(want)) = (r.error.as_ref(), e["error"]["type"].as_str()) {
        assert_eq!(got.kind.as_deref(), Some(want), "{name}: error type");
    }
    assert_eq!(call.outcome, Outcome::Completed, "{name}");
}

/// The span of a fixture's call carries the GenAI attributes with the record's values.
fn check_span(case: &Case, span: &SpanRecord) {
    let e = &case.expect;
    let name = &case.name;
    let s = |k: &str| match span.attr(k) {
        Some(AttrValue::Str(v)) => Some(v.as_str()),
        _ => None,
    };
    let i = |k: &str| match span.attr(k) {
        Some(AttrValue::Int(v)) => Some(*v as u64),
        _ => None,
    };
    let op = match e["api"].as_str().unwrap() {
        "completions" => "text_completion",
        "embeddings" => "embeddings",
        "generate_content" => "generate_content",
        _ => "chat",
    };
    assert_eq!(s("gen_ai.operation.name"), Some(op), "{name}");
    assert!(
        s("gen_ai.provider.name").is_some_and(|p| !p.is_empty()),
        "{name}"
    );
    assert_eq!(s("server.address"), Some("127.0.0.1"), "{name}");
    assert!(i("server.port").is_some(), "{name}");
    assert_eq!(
        i("http.response.status_code"),
        e["http_status"].as_u64(),
        "{name}"
    );
    assert_eq!(s("gen_ai.response.id"), e["response_id"].as_str(), "{name}");
    assert_eq!(s("gen_ai.response.model"), e["model"].as_str(), "{name}");
    assert_eq!(
        i("gen_ai.usage.input_tokens"),
        e["input_tokens"].as_u64(),
        "{name}"
    );
    assert_eq!(
        i("gen_ai.usage.output_tokens"),
        e["output_tokens"].as_u64(),
        "{name}"
    );
    assert_eq!(
        i("gen_ai.usage.cache_read.input_tokens"),
        e["cached_input_tokens"].as_u64(),
        "{name}"
    );
    assert_eq!(
        i("gen_ai.usage.cache_creation.input_tokens"),
        e["cache_creation_input_tokens"].as_u64(),
        "{name}"
    );
    assert_eq!(
        i("gen_ai.usage.reasoning.output_tokens"),
        e["reasoning_tokens"].as_u64(),
        "{name}"
    );
    let finish: Vec<String> = e["finish_reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    if finish.is_empty() {
        assert!(
            span.attr("gen_ai.response.finish_reasons").is_none(),
            "{name}"
        );
    } else {
        assert_eq!(
            span.attr("gen_ai.response.finish_reasons"),
            Some(&AttrValue::StrList(finish)),
            "{name}"
        );
    }
    let failed = e["http_status"].as_u64() != Some(200) || !e["error"].is_null();
    assert_eq!(
        matches!(span.status, SpanStatus::Error(_)),
        failed,
        "{name}: status"
    );
    assert_eq!(
        span.attr("error.type").is_some(),
        failed,
        "{name}: error.type"
    );
    assert_eq!(span.kind, "client");
    for deprecated in [
        "gen_ai.system",
        "gen_ai.usage.prompt_tokens",
        "gen_ai.usage.completion_tokens",
    ] {
        assert!(span.attr(deprecated).is_none(), "{name}: {deprecated}");
    }
}

async fn wait_for_calls(gw: &TestGateway, n: usize) -> Vec<CallRecord> {
    for _ in 0..200 {
        let calls = gw.recent_calls();
        if calls.len() >= n {
            return calls;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("expected {n} call records, got {}", gw.recent_calls().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_through_the_gateway_gives_its_record_and_the_upstreams_bytes() {
    for case in cases() {
        for seed in [1u64, 2, 3] {
            let reply = replay(&case, seed);
            let mock = Mock::start(move |_| reply.clone()).await;
            let gw = gateway_to(&mock, "[inspect]\ninject_include_usage = false\n").await;
            let a = post(
                &gw,
                &gateway_path(&case),
                &[("content-type", "application/json")],
                &request_body(&case),
            )
            .await;
            assert_eq!(
                a.status.as_u16() as u64,
                case.expect["http_status"].as_u64().unwrap(),
                "{}",
                case.name
            );
            assert_eq!(
                a.body, case.body,
                "{}: the client must get the upstream's bytes",
                case.name
            );
            let calls = wait_for_calls(&gw, 1).await;
            check_record(&case, &calls[0]);
            check_span(&case, &gw.recent_spans()[0]);
            gw.shutdown().await;
        }
    }
}

fn openai_events(with_usage: bool) -> Vec<&'static str> {
    let mut events = vec![
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
    ];
    if with_usage {
        events.push("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":2,\"total_tokens\":13,\"prompt_tokens_details\":{\"cached_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n");
    }
    events.push("data: [DONE]\n\n");
    events
}

/// Answers like OpenAI: the usage chunk only when the request asks for it.
fn openai_like(seen: &Seen) -> Reply {
    let body: Value = serde_json::from_slice(&seen.body).unwrap_or_default();
    let with_usage = body["stream_options"]["include_usage"] == true;
    let mut reply = Reply::sse(&[], Duration::ZERO);
    for (i, event) in openai_events(with_usage)
        .concat()
        .as_bytes()
        .chunks(23)
        .enumerate()
    {
        if i % 3 == 0 {
            reply = reply.then(Step::Pause(Duration::from_millis(1)));
        }
        reply = reply.then(Step::Send(Bytes::copy_from_slice(event)));
    }
    reply
}

#[tokio::test]
async fn injected_include_usage_records_usage_and_the_client_gets_the_stream_it_asked_for() {
    let mock = Mock::start(openai_like).await;
    let gw = gateway_for(&mock, "").await;
    let a = post(
        &gw,
        "/openai/v1/chat/completions",
        &[],
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(a.body, openai_events(false).concat().as_bytes());
    let sent: Value = serde_json::from_slice(&mock.last().body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert_eq!(sent["model"], "gpt-4o-mini");
    let call = wait_for_calls(&gw, 1).await.remove(0);
    assert!(call.request.include_usage_injected);
    let usage = &call.response.as_ref().unwrap().usage;
    assert_eq!(
        (usage.input_tokens, usage.output_tokens),
        (Some(11), Some(2))
    );
    assert!(call.response.as_ref().unwrap().stream_completed);
    gw.shutdown().await;
}

/// With CRLF line ends, the injected usage chunk is left out whatever the split of the TCP
/// writes around it: a write ending between the CR and the LF of the blank line before it
/// used to send that LF out with the dropped chunk (`…}\r\n\rdata: [DONE]`).
#[tokio::test]
async fn the_injected_usage_chunk_is_left_out_of_a_crlf_stream_at_every_split() {
    let crlf = |events: Vec<&str>| events.concat().replace('\n', "\r\n");
    let mock = Mock::start(move |seen: &Seen| {
        let body = crlf(openai_events(true));
        let at: usize = seen.headers["x-split"].to_str().unwrap().parse().unwrap();
        Reply::sse(&[], Duration::ZERO)
            .then(Step::Send(Bytes::copy_from_slice(&body.as_bytes()[..at])))
            .then(Step::Pause(Duration::from_millis(2)))
            .then(Step::Send(Bytes::copy_from_slice(&body.as_bytes()[at..])))
    })
    .await;
    let gw = gateway_for(&mock, "").await;
    let full = crlf(openai_events(true));
    let usage_at = full.find("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],").unwrap();
    let done_at = full.find("data: [DONE]").unwrap();
    let want = crlf(openai_events(false));
    // Every split within a few bytes of the usage chunk's two ends.
    for at in (usage_at - 5..usage_at + 5).chain(done_at - 5..done_at + 5) {
        let split = at.to_string();
        let a = post(
            &gw,
            "/openai/v1/chat/completions",
            &[("x-split", split.as_str())],
            r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .await;
        assert_eq!(
            String::from_utf8_lossy(&a.body),
            want,
            "split at {at} ({:?} | {:?})",
            &full[at - 3..at],
            &full[at..at + 3]
        );
    }
    gw.shutdown().await;
}

/// A stream that ends cleanly before its end marker and before any finish reason was cut
/// short upstream: an upstream error (`stream_incomplete`), not a completed call with no
/// tokens. With its finish reason but no `[DONE]` it is an answer, recorded as completed.
#[tokio::test]
async fn a_stream_ended_before_its_end_is_an_upstream_error() {
    let mock = Mock::start(|seen: &Seen| {
        let events = openai_events(true);
        let events: Vec<&str> = if seen.headers.contains_key("x-finished") {
            events[..4].to_vec()
        } else {
            events[..2].to_vec()
        };
        Reply::sse(&events, Duration::ZERO)
    })
    .await;
    let gw = gateway_for(&mock, "").await;
    let body = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;
    post(&gw, "/openai/v1/chat/completions", &[], body).await;
    let cut = wait_for_calls(&gw, 1).await.remove(0);
    assert_eq!(cut.outcome, sidetrace::call::record::Outcome::UpstreamError);
    assert_eq!(cut.error_type.as_deref(), Some("stream_incomplete"));
    post(
        &gw,
        "/openai/v1/chat/completions",
        &[("x-finished", "1")],
        body,
    )
    .await;
    let finished = wait_for_calls(&gw, 2).await.remove(1);
    assert_eq!(
        finished.outcome,
        sidetrace::call::record::Outcome::Completed
    );
    assert_eq!(finished.error_type, None);
    assert_eq!(finished.response.unwrap().usage.input_tokens, Some(11));
    gw.shutdown().await;
}

/// Gemini's `streamGenerateContent` without `alt=sse` streams a JSON array as
/// application/json: the client gets each part as it comes. It was held back whole (up to the
/// cost headers' limit), so the first token came only with the last. The mock sends the rest
/// only once the test has seen the first part and made a second request.
#[tokio::test]
async fn a_gemini_json_array_stream_reaches_the_client_as_it_comes() {
    use http_body_util::BodyExt;
    const FIRST: &str = r#"[{"candidates":[{"content":{"parts":[{"text":"Hel"}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":4,"totalTokenCount":4},"modelVersion":"gemini-2.5-flash"}"#;
    const REST: &str = r#",{"candidates":[{"content":{"parts":[{"text":"lo"}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":2,"totalTokenCount":6},"modelVersion":"gemini-2.5-flash"}]"#;
    let mock = Mock::start(|seen: &Seen| {
        if !seen.uri.contains("streamGenerateContent") {
            return Reply::json(200, "{}");
        }
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            headers_delay: Duration::ZERO,
            steps: vec![
                Step::Send(Bytes::from_static(FIRST.as_bytes())),
                Step::WaitForRequests(2),
                Step::Send(Bytes::from_static(REST.as_bytes())),
            ],
        }
    })
    .await;
    let gw = gateway_to(&mock, "").await;
    let req = Request::post(format!(
        "http://{}/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        gw.addr
    ))
    .header("content-type", "application/json")
    .body(full_body(
        r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#,
    ))
    .unwrap();
    let mut body = client().request(req).await.unwrap().into_body();
    let mut got = Vec::new();
    while got.len() < FIRST.len() {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the first part arrives before the upstream sends the rest")
            .unwrap()
            .unwrap();
        got.extend_from_slice(frame.data_ref().unwrap());
    }
    assert_eq!(got, FIRST.as_bytes());
    let release = Request::get(format!("{}/release", mock.url()))
        .body(full_body(""))
        .unwrap();
    client().request(release).await.unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    got.extend_from_slice(&rest);
    assert_eq!(got, [FIRST, REST].concat().as_bytes());
    let call = wait_for_calls(&gw, 1).await.remove(0);
    let usage = call.response.unwrap().usage;
    assert_eq!(
        (usage.input_tokens, usage.output_tokens),
        (Some(4), Some(2))
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_client_that_asked_for_usage_gets_the_usage_chunk() {
    let mock = Mock::start(openai_like).await;
    let gw = gateway_for(&mock, "").await;
    let a = post(
        &gw,
        "/openai/v1/chat/completions",
        &[],
        r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
    )
    .await;
    assert_eq!(a.body, openai_events(true).concat().as_bytes());
    let call = wait_for_calls(&gw, 1).await.remove(0);
    assert!(!call.request.include_usage_injected && call.request.include_usage_requested);
    assert_eq!(call.response.unwrap().usage.input_tokens, Some(11));
    gw.shutdown().await;
}

#[tokio::test]
async fn request_model_stream_flag_and_parameters_are_read_and_a_non_json_body_still_goes_through()
{
    let mock = Mock::start(|_| {
        Reply::json(
            200,
            &String::from_utf8(fixture("openai/chat_nonstream.json")).unwrap(),
        )
    })
    .await;
    let gw = gateway_for(&mock, "").await;
    post(
        &gw,
        "/openai/v1/chat/completions",
        &[],
        r#"{"model":"o4-mini","temperature":0.2,"top_p":0.9,"max_completion_tokens":300,"stop":["END"],"seed":12345678901234567890,"n":2,"messages":[]}"#,
    )
    .await;
    let a = post(
        &gw,
        "/openai/v1/chat/completions",
        &[],
        "this is { not json",
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(mock.last().body, &b"this is { not json"[..]);
    let calls = wait_for_calls(&gw, 2).await;
    let r = &calls[0].request;
    assert!(r.parsed && !r.stream);
    assert_eq!(r.model.as_deref(), Some("o4-mini"));
    assert_eq!(r.params.temperature, Some(0.2));
    assert_eq!(r.params.top_p, Some(0.9));
    assert_eq!(r.params.max_tokens, Some(300));
    assert_eq!(r.params.stop_sequences, ["END"]);
    assert_eq!(r.params.seed.as_deref(), Some("12345678901234567890"));
    assert_eq!(r.params.choice_count, Some(2));
    assert_eq!(
        calls[0].model(),
        Some("o4-mini-2025-04-16"),
        "the response model wins"
    );
    assert!(!calls[1].request.parsed);
    // Both calls were answered with the same fixture body: the tokens add up.
    let metrics = String::from_utf8(admin_get(&gw, "/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains("sidetrace_requests_unparsed_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"sidetrace_tokens_total{provider="openai",model="o4-mini-2025-04-16",feature="",kind="input"} 2620"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"sidetrace_tokens_total{provider="openai",model="o4-mini-2025-04-16",feature="",kind="reasoning"} 896"#),
        "{metrics}"
    );
    gw.shutdown().await;
}

const ANTHROPIC_START: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n";
const ANTHROPIC_DELTA: &str = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n";

#[tokio::test]
async fn a_client_disconnect_mid_stream_is_recorded_as_cancelled_with_the_usage_seen_so_far() {
    let mock = Mock::start(|_| {
        Reply::sse(&[ANTHROPIC_START, ANTHROPIC_DELTA], Duration::ZERO).then(Step::Stall)
    })
    .await;
    let gw = gateway_for(&mock, "").await;
    let req = Request::post(format!("http://{}/anthropic/v1/messages", gw.addr))
        .body(full_body(
            r#"{"model":"claude-sonnet-4-5","stream":true,"max_tokens":10,"messages":[]}"#,
        ))
        .unwrap();
    let mut response = client().request(req).await.unwrap();
    http_body_util::BodyExt::frame(response.body_mut())
        .await
        .unwrap()
        .unwrap();
    drop(response);
    let call = wait_for_calls(&gw, 1).await.remove(0);
    assert_eq!(call.outcome, Outcome::Cancelled);
    assert_eq!(call.error_type.as_deref(), Some("cancelled"));
    let r = call.response.unwrap();
    assert_eq!(r.response_id.as_deref(), Some("msg_1"));
    assert_eq!(
        (r.usage.input_tokens, r.usage.output_tokens),
        (Some(25), Some(1))
    );
    assert!(!r.stream_completed);
    gw.shutdown().await;
}

#[tokio::test]
async fn with_finish_on_disconnect_the_rest_of_the_stream_is_read_for_full_usage() {
    let done = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":42}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    let mock = Mock::start(move |_| {
        Reply::sse(&[ANTHROPIC_START, ANTHROPIC_DELTA], Duration::ZERO)
            .then(Step::Pause(Duration::from_millis(300)))
            .then(Step::Send(Bytes::from_static(done.as_bytes())))
    })
    .await;
    let gw = gateway_for(&mock, "[inspect]\non_client_disconnect = \"finish\"\n").await;
    let req = Request::post(format!("http://{}/anthropic/v1/messages", gw.addr))
        .body(full_body(
            r#"{"model":"claude-sonnet-4-5","stream":true,"max_tokens":10,"messages":[]}"#,
        ))
        .unwrap();
    let mut response = client().request(req).await.unwrap();
    http_body_util::BodyExt::frame(response.body_mut())
        .await
        .unwrap()
        .unwrap();
    drop(response);
    let call = wait_for_calls(&gw, 1).await.remove(0);
    assert_eq!(call.outcome, Outcome::Cancelled);
    let r = call.response.unwrap();
    assert_eq!(r.usage.output_tokens, Some(42));
    assert_eq!(r.finish_reasons, ["end_turn"]);
    gw.shutdown().await;
}

#[tokio::test]
async fn an_upstream_reset_mid_stream_is_recorded_as_an_upstream_error_with_partial_usage() {
    let mock = Mock::start(|_| {
        Reply::sse(&[ANTHROPIC_START, ANTHROPIC_DELTA], Duration::ZERO)
            .then(Step::Pause(Duration::from_millis(50)))
            .then(Step::Abort)
    })
    .await;
    let gw = gateway_for(&mock, "").await;
    let a = Request::post(format!("http://{}/anthropic/v1/messages", gw.addr))
        .body(full_body(
            r#"{"model":"claude-sonnet-4-5","stream":true,"messages":[]}"#,
        ))
        .unwrap();
    let response = client().request(a).await.unwrap();
    let (_, end) = frames(response.into_body()).await;
    assert!(end.is_err());
    let call = wait_for_calls(&gw, 1).await.remove(0);
    assert_eq!(call.outcome, Outcome::UpstreamError);
    assert_eq!(call.error_type.as_deref(), Some("upstream_reset"));
    assert_eq!(call.response.unwrap().usage.input_tokens, Some(25));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_truncated_final_event_and_a_malformed_event_are_recorded_and_the_stream_still_flows() {
    let mut events = openai_events(true);
    // A broken usage event in the middle (the parser must decode it, and cannot), and the
    // stream cut inside the last event.
    events.insert(
        2,
        "data: {\"id\":\"chatcmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":\n\n",
    );
    let mut body = events[..events.len() - 1].concat();
    body.push_str("data: {\"id\":\"chatcmpl-1\",\"cho");
    let upstream = body.clone();
    let mock = Mock::start(move |_| Reply::sse(&[upstream.as_str()], Duration::ZERO)).await;
    let gw = gateway_for(&mock, "").await;
    let a = post(
        &gw,
        "/openai/v1/chat/completions",
        &[],
        r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
    )
    .await;
    assert_eq!(a.body, body.as_bytes());
    let call = wait_for_calls(&gw, 1).await.remove(0);
    let r = call.response.unwrap();
    assert_eq!(r.malformed_events, 1);
    assert!(r.truncated);
    assert!(!r.stream_completed, "no [DONE]: not completed");
    assert_eq!(
        r.usage.input_tokens,
        Some(11),
        "events after the broken one are still read"
    );
    assert_eq!(r.finish_reasons, ["stop"]);
    gw.shutdown().await;
}

#[tokio::test]
async fn an_upstream_timeout_before_headers_is_recorded_as_a_timeout() {
    let mock = Mock::start(|_| Reply::json(200, "{}").delay_headers(Duration::from_secs(3))).await;
    let gw = gateway_for(
        &mock,
        "[providers.openai.timeouts]\nresponse_headers_ms = 100\n",
    )
    .await;
    let a = post(
        &gw,
        "/openai/v1/chat/completions",
        &[],
        r#"{"model":"gpt-4o"}"#,
    )
    .await;
    assert_eq!(a.status, 504);
    let call = wait_for_calls(&gw, 1).await.remove(0);
    assert_eq!(call.outcome, Outcome::Timeout);
    assert_eq!(call.error_type.as_deref(), Some("timeout"));
    assert_eq!(call.request.model.as_deref(), Some("gpt-4o"));
    assert!(call.status.is_none());
    gw.shutdown().await;
}

#[tokio::test]
async fn time_to_first_token_is_measured_on_streams() {
    let events = openai_events(true);
    let mock = Mock::start(move |_| Reply::sse(&events, Duration::from_millis(60))).await;
    let gw = gateway_for(&mock, "").await;
    post(
        &gw,
        "/openai/v1/chat/completions",
        &[],
        r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
    )
    .await;
    let call = wait_for_calls(&gw, 1).await.remove(0);
    let ttft = call.time_to_first_token.expect("ttft");
    // The first content delta is the second event, one pause in.
    assert!(
        ttft >= Duration::from_millis(50) && ttft < call.duration,
        "{ttft:?} of {:?}",
        call.duration
    );
    gw.shutdown().await;
}

/// Official SDKs stop reading at the stream's last event (`[DONE]`, `message_stop`, ...) and
/// close the response, often before the upstream's end of body arrives. Such a call completed;
/// a client that leaves before the last event cancelled its call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_after_the_last_event_completed_its_call_for_every_stream_fixture() {
    let mut checked = 0;
    for case in cases() {
        let content_type = case.expect["content_type"].as_str().unwrap().to_string();
        if content_type.starts_with("application/json") {
            continue;
        }
        let completed = case.expect["stream_completed"].as_bool().unwrap();
        // The whole body, then the upstream holds the stream open: no end of body.
        let mut reply = replay(&case, 7);
        reply.steps.push(Step::Stall);
        let mock = Mock::start(move |_| reply.clone()).await;
        let gw = gateway_to(&mock, "[inspect]\ninject_include_usage = false\n").await;
        let req = Request::post(format!("http://{}{}", gw.addr, gateway_path(&case)))
            .header("content-type", "application/json")
            .body(full_body(request_body(&case)))
            .unwrap();
        let mut response = client().request(req).await.unwrap();
        let mut got = Vec::new();
        while got.len() < case.body.len() {
            let frame = http_body_util::BodyExt::frame(response.body_mut())
                .await
                .unwrap_or_else(|| panic!("{}: the stream ended early", case.name))
                .unwrap();
            if let Some(data) = frame.data_ref() {
                got.extend_from_slice(data);
            }
        }
        assert_eq!(got, case.body, "{}", case.name);
        drop(response);
        let call = wait_for_calls(&gw, 1).await.remove(0);
        if completed {
            assert_eq!(call.outcome, Outcome::Completed, "{}", case.name);
            assert_eq!(call.error_type, None, "{}", case.name);
            assert!(call.response.unwrap().stream_completed, "{}", case.name);
            let span = &gw.recent_spans()[0];
            assert_eq!(span.status, SpanStatus::Unset, "{}", case.name);
            checked += 1;
        } else {
            assert_ne!(call.outcome, Outcome::Completed, "{}", case.name);
        }
        gw.shutdown().await;
    }
    assert!(checked >= 10, "only {checked} completed stream fixtures");
}

#[tokio::test]
async fn a_client_leaving_before_the_last_event_still_cancelled_its_call() {
    // Everything but `[DONE]`: the finish reason and the usage arrived, the end did not.
    let events = openai_events(true);
    let (last, rest) = events.split_last().unwrap();
    assert!(last.contains("[DONE]"));
    let mock = Mock::start({
        let rest: Vec<String> = rest.iter().map(|e| e.to_string()).collect();
        move |_| {
            let refs: Vec<&str> = rest.iter().map(String::as_str).collect();
            Reply::sse(&refs, Duration::ZERO).then(Step::Stall)
        }
    })
    .await;
    let gw = gateway_for(&mock, "[inspect]\ninject_include_usage = false\n").await;
    let req = Request::post(format!("http://{}/openai/v1/chat/completions", gw.addr))
        .body(full_body(
            r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#,
        ))
        .unwrap();
    let mut response = client().request(req).await.unwrap();
    let want: usize = rest.iter().map(|e| e.len()).sum();
    let mut got = 0;
    while got < want {
        let frame = http_body_util::BodyExt::frame(response.body_mut())
            .await
            .unwrap()
            .unwrap();
        got += frame.data_ref().map_or(0, |d| d.len());
    }
    drop(response);
    let call = wait_for_calls(&gw, 1).await.remove(0);
    assert_eq!(call.outcome, Outcome::Cancelled);
    assert_eq!(call.error_type.as_deref(), Some("cancelled"));
    gw.shutdown().await;
}

/// Provider quirks are flags in the spec, so a provider the user defines gets them too: an
/// xAI-compatible `[providers.grok]` whose completion tokens leave out reasoning.
#[tokio::test]
async fn a_users_own_provider_gets_a_quirk_by_its_spec_flag_not_its_name() {
    let body = r#"{"id":"u","object":"chat.completion","model":"grok-4","choices":[{"index":0,"message":{"role":"assistant","content":"x"},"finish_reason":"stop"}],"usage":{"prompt_tokens":30,"completion_tokens":12,"completion_tokens_details":{"reasoning_tokens":200}}}"#;
    let mock = Mock::start(move |_| Reply::json(200, body)).await;
    let gw = gateway(&format!(
        "[providers.grok]\nbase_url = \"{url}\"\nquirks = {{ reasoning_tokens_outside_completion = true }}\n\
         [providers.plain]\nbase_url = \"{url}\"\n\
         [providers.xai]\nbase_url = \"{url}\"\n",
        url = mock.url()
    ))
    .await;
    for (provider, output) in [("grok", 212), ("xai", 212), ("plain", 12)] {
        post(
            &gw,
            &format!("/{provider}/v1/chat/completions"),
            &[],
            r#"{"model":"grok-4","messages":[]}"#,
        )
        .await;
        let call = gw.recent_calls().pop().unwrap();
        assert_eq!(call.provider, provider);
        assert_eq!(
            call.response.unwrap().usage.output_tokens,
            Some(output),
            "{provider}"
        );
    }
    gw.shutdown().await;
}
