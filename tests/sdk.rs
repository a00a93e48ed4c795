//! The official `openai` and `anthropic` Python SDKs, unchanged but for their base URL, against
//! the gateway and a mock provider that replays fixture bodies. Needs the venv that
//! `tests/setup-python.sh` makes (the README's test command runs it).

mod common;

use std::{path::PathBuf, process::Command, time::Duration};

use bytes::Bytes;
use common::*;

/// Splits an SSE body into its events (each with its blank line), to replay them one by one.
fn sse_events(body: &[u8]) -> Vec<Bytes> {
    let mut events = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < body.len() {
        if body[i] == b'\n' && body[i + 1] == b'\n' {
            events.push(Bytes::copy_from_slice(&body[start..i + 2]));
            start = i + 2;
            i += 2;
        } else {
            i += 1;
        }
    }
    if start < body.len() {
        events.push(Bytes::copy_from_slice(&body[start..]));
    }
    events
}

fn replay_sse(fixture_path: &str) -> Reply {
    let mut reply = Reply::sse(&[], Duration::ZERO);
    for event in sse_events(&fixture(fixture_path)) {
        reply = reply
            .then(Step::Send(event))
            .then(Step::Pause(Duration::from_millis(2)));
    }
    reply
}

/// A provider that answers like OpenAI and Anthropic, from the fixtures.
fn provider(seen: &Seen) -> Reply {
    let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap_or_default();
    let stream = body["stream"] == true;
    let model = body["model"].as_str().unwrap_or("");
    let path = seen.uri.split('?').next().unwrap_or("");
    let json = |p: &str| String::from_utf8(fixture(p)).unwrap();
    match path {
        "/v1/chat/completions" if model == "rate-limited" => {
            Reply::json(429, &json("openai/error_rate_limit_429.json")).header("retry-after", "7")
        }
        // The upstream sends `[DONE]` but holds the body open: the SDK stops at `[DONE]`.
        "/v1/chat/completions" if stream && model == "held-open" => {
            replay_sse("openai/chat_stream_include_usage.sse").then(Step::Stall)
        }
        "/v1/chat/completions" if stream => replay_sse("openai/chat_stream_include_usage.sse"),
        "/v1/chat/completions" => Reply::json(200, &json("openai/chat_nonstream.json")),
        "/v1/messages" if model == "overloaded" => Reply::json(
            529,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        ),
        "/v1/messages" if stream => replay_sse("anthropic/stream_cache_tokens.sse"),
        "/v1/messages" => Reply::json(200, &json("anthropic/nonstream.json")),
        _ => Reply::json(
            404,
            r#"{"error":{"type":"not_found","message":"mock: no such path"}}"#,
        ),
    }
}

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("SIDETRACE_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run `bash tests/setup-python.sh` (the README's test command does)",
        venv.display()
    );
    venv
}

async fn sdk_case(case: &str) -> Mock {
    sdk_case_with_spans(case).await.0
}

/// Runs one case; returns the mock, the gateway's spans and the script's output.
async fn sdk_case_with_spans(
    case: &str,
) -> (Mock, Vec<sidetrace::trace::span::SpanRecord>, String) {
    let mock = Mock::start(provider).await;
    let dead = closed_port().await;
    let gw = gateway_for(
        &mock,
        &format!("[providers.deadprovider]\nbase_url = \"http://{dead}\"\n"),
    )
    .await;
    let stdout = run_python(case, &gw).await;
    let spans = gw.recent_spans();
    gw.shutdown().await;
    (mock, spans, stdout)
}

/// Runs one case of sdk_check.py against a running gateway; returns its stdout.
async fn run_python(case: &str, gw: &TestGateway) -> String {
    run_python_with(case, gw, &[]).await
}

/// [`run_python`] with more environment for the script.
async fn run_python_with(case: &str, gw: &TestGateway, env: &[(&str, &str)]) -> String {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/sdk_check.py");
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/providers");
    let scheme = if env.iter().any(|(k, _)| k == "CA_FILE") {
        "https"
    } else {
        "http"
    };
    let gateway = format!("{scheme}://{}", gw.addr);
    let case_name = case.to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script)
            .arg(&case_name)
            .env("GATEWAY", gateway)
            .env("FIXTURES", fixtures)
            .env_remove("OPENAI_BASE_URL")
            .env_remove("ANTHROPIC_BASE_URL")
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains(&format!("ok {case}")),
        "{case} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout.into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_chat_completion_through_the_gateway() {
    let mock = sdk_case("openai_chat").await;
    let seen = mock.last();
    assert_eq!(seen.uri, "/v1/chat/completions");
    assert_eq!(seen.headers["authorization"], "Bearer sk-test-openai-0001");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_with_base_url_ending_in_bare_v1_reaches_the_default_provider() {
    sdk_case("openai_chat_default_base").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_streaming_chat_through_the_gateway() {
    let mock = sdk_case("openai_chat_stream").await;
    let body: serde_json::Value = serde_json::from_slice(&mock.last().body).unwrap();
    assert_eq!(body["stream"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_streaming_without_include_usage_gets_its_stream_while_the_gateway_records_usage()
 {
    let (mock, spans, _) = sdk_case_with_spans("openai_chat_stream_without_usage").await;
    let sent: serde_json::Value = serde_json::from_slice(&mock.last().body).unwrap();
    assert_eq!(
        sent["stream_options"]["include_usage"], true,
        "the gateway asked for usage"
    );
    let span = &spans[0];
    assert_eq!(
        span.attr("gen_ai.usage.input_tokens"),
        Some(&sidetrace::trace::span::AttrValue::Int(24))
    );
    assert_eq!(
        span.attr("gen_ai.usage.output_tokens"),
        Some(&sidetrace::trace::span::AttrValue::Int(26))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_surfaces_an_upstream_429_as_rate_limit_error() {
    sdk_case("openai_rate_limited").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_surfaces_an_unknown_route_as_not_found_with_the_valid_prefixes() {
    sdk_case("openai_unknown_route").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_surfaces_an_unreachable_upstream_as_502() {
    sdk_case("openai_upstream_down").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_sdk_streaming_messages_through_the_gateway() {
    let mock = sdk_case("anthropic_stream").await;
    let seen = mock.last();
    assert_eq!(seen.uri, "/v1/messages");
    // The SDK sends its key as x-api-key or as a bearer token, depending on version and options.
    let credential = seen
        .headers
        .get("x-api-key")
        .or(seen.headers.get("authorization"))
        .map(|v| v.to_str().unwrap().to_string());
    assert!(
        credential.is_some_and(|c| c.ends_with("sk-ant-test-0001")),
        "{:?}",
        seen.headers
    );
    assert!(seen.headers.contains_key("anthropic-version"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_sdk_message_through_the_gateway() {
    sdk_case("anthropic_message").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_sdk_surfaces_an_upstream_529() {
    sdk_case("anthropic_overloaded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opentelemetry_sdk_parent_span_is_the_parent_of_the_gateways_span() {
    let (mock, spans, stdout) = sdk_case_with_spans("otel_parent_span").await;
    let line = stdout
        .lines()
        .find(|l| l.starts_with("TRACE "))
        .expect("the script prints its span");
    let mut parts = line.split_whitespace().skip(1);
    let (trace_id, parent_id) = (parts.next().unwrap(), parts.next().unwrap());
    assert_eq!(spans.len(), 1);
    let span = &spans[0];
    assert_eq!(sidetrace::trace::context::hex(&span.trace_id), trace_id);
    assert_eq!(
        span.parent_span_id
            .map(|p| sidetrace::trace::context::hex(&p))
            .as_deref(),
        Some(parent_id)
    );
    assert!(span.parent_is_remote);
    let upstream = mock.last().headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        upstream.contains(trace_id) && !upstream.contains(parent_id),
        "{upstream}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_calls_streamed_and_not_arrive_at_the_collector_with_the_design_attributes() {
    use common::otlp::{AttrValue, Collector, Transport};
    let collector = Collector::start(Transport::Http).await;
    let mock = Mock::start(provider).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_for(
        &mock,
        &format!(
            "data_dir = {:?}\n[export]\nendpoint = {:?}\nprotocol = \"http/protobuf\"\nbatch_delay_ms = 50\n",
            dir.path().display().to_string(),
            collector.endpoint()
        ),
    )
    .await;
    run_python("openai_chat", &gw).await;
    run_python("openai_chat_stream", &gw).await;
    let spans = collector
        .wait_for_spans(2, std::time::Duration::from_secs(20))
        .await;
    let by_stream = |stream: bool| {
        spans
            .iter()
            .find(|s| {
                (s.attributes.get("gen_ai.request.stream") == Some(&AttrValue::Bool(true)))
                    == stream
            })
            .unwrap_or_else(|| panic!("no span with stream={stream}"))
    };
    for (span, model, response_model, input, output) in [
        (by_stream(false), "o4-mini", "o4-mini-2025-04-16", 1310, 615),
        (
            by_stream(true),
            "gpt-4o-mini",
            "gpt-4o-mini-2024-07-18",
            24,
            26,
        ),
    ] {
        let a = &span.attributes;
        let s = |k: &str| match a.get(k) {
            Some(AttrValue::Str(v)) => v.clone(),
            other => panic!("{k}: {other:?}"),
        };
        let i = |k: &str| match a.get(k) {
            Some(AttrValue::Int(v)) => *v,
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(span.name, format!("chat {model}"));
        assert_eq!(span.kind, 3);
        assert_eq!(s("gen_ai.operation.name"), "chat");
        assert_eq!(s("gen_ai.provider.name"), "openai");
        assert_eq!(s("gen_ai.request.model"), model);
        assert_eq!(s("gen_ai.response.model"), response_model);
        assert!(s("gen_ai.response.id").starts_with("chatcmpl-"));
        assert_eq!(
            a.get("gen_ai.response.finish_reasons"),
            Some(&AttrValue::StrList(vec!["stop".into()]))
        );
        assert_eq!(i("gen_ai.usage.input_tokens"), input);
        assert_eq!(i("gen_ai.usage.output_tokens"), output);
        assert!(a.contains_key("gen_ai.usage.cache_read.input_tokens"));
        assert!(a.contains_key("gen_ai.usage.reasoning.output_tokens"));
        assert_eq!(s("server.address"), "127.0.0.1");
        assert_eq!(i("server.port"), i64::from(mock.addr.port()));
        assert_eq!(i("http.response.status_code"), 200);
        assert!(!a.contains_key("gen_ai.system") && !a.contains_key("gen_ai.usage.prompt_tokens"));
    }
    assert!(matches!(
        by_stream(true).attributes.get("gen_ai.response.time_to_first_chunk"),
        Some(AttrValue::Double(t)) if *t > 0.0
    ));
    gw.shutdown().await;
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_reads_cost_headers_on_a_raw_response_and_still_parses_it() {
    sdk_case("openai_cost_headers").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_sdk_reads_cost_headers_on_a_raw_response_and_still_parses_it() {
    sdk_case("anthropic_cost_headers").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_streams_are_unaffected_by_the_cost_comment_and_trailers() {
    sdk_case("openai_stream_with_cost_comment_and_trailers").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_sdk_streams_are_unaffected_by_the_cost_comment() {
    sdk_case("anthropic_stream_with_cost_comment").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_closing_a_stream_at_done_before_the_upstream_ends_completes_the_call() {
    let mock = Mock::start(provider).await;
    let gw = gateway_for(&mock, "").await;
    run_python("openai_chat_stream_held_open", &gw).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let call = loop {
        if let Some(call) = gw.recent_calls().pop() {
            break call;
        }
        assert!(std::time::Instant::now() < deadline, "no call recorded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(call.outcome, sidetrace::call::Outcome::Completed);
    assert_eq!(call.error_type, None);
    let span = gw.recent_spans().pop().unwrap();
    assert_eq!(span.status, sidetrace::trace::span::SpanStatus::Unset);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_does_not_retry_a_budget_refusal() {
    let mock = Mock::start(provider).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_for(
        &mock,
        &format!(
            "data_dir = {:?}\n[[budgets]]\nname = \"spent\"\nlimit_usd = \"0.000001\"\nunpriced_call_usd = \"1\"\nwindow = \"day\"\n",
            dir.path().display().to_string()
        ),
    )
    .await;
    // One call spends the budget; the SDK's call is refused.
    let first = post(
        &gw,
        "/openai/v1/chat/completions",
        &[],
        r#"{"model":"o4-mini"}"#,
    )
    .await;
    assert_eq!(first.status, http::StatusCode::OK);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gw.recent_calls().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no call recorded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    run_python("openai_budget_refused_is_not_retried", &gw).await;
    let metrics = String::from_utf8(admin_get(&gw, "/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains("sidetrace_budget_refused_total{budget=\"spent\"} 1"),
        "the SDK retried a budget refusal: {metrics}"
    );
    assert_eq!(mock.requests().len(), 1);
    gw.shutdown().await;
}

/// A provider for agent loops: tool calls first, an answer once the request carries their
/// results (OpenAI chat, Anthropic messages, Responses chained by `previous_response_id`).
fn agent_provider(seen: &Seen) -> Reply {
    let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap_or_default();
    let text = String::from_utf8_lossy(&seen.body);
    let path = seen.uri.split('?').next().unwrap_or("");
    let reply = match path {
        "/v1/chat/completions" if text.contains("\"role\":\"tool\"") => serde_json::json!({
            "id": "chatcmpl-2", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "Sunny, 14:00"}}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 4, "total_tokens": 34}}),
        "/v1/chat/completions" => serde_json::json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_weather", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_time", "type": "function",
                     "function": {"name": "get_time", "arguments": "{}"}}]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}),
        "/v1/messages" if text.contains("tool_result") => serde_json::json!({
            "id": "msg_2", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "done"}], "stop_reason": "end_turn",
            "stop_sequence": null, "usage": {"input_tokens": 40, "output_tokens": 2}}),
        "/v1/messages" => serde_json::json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [
                {"type": "tool_use", "id": "toolu_search", "name": "search", "input": {"q": "rust"}},
                {"type": "tool_use", "id": "toolu_fetch", "name": "fetch", "input": {"url": "x"}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": 20}}),
        "/v1/responses" => {
            let (id, output) = match body["previous_response_id"].as_str() {
                None => (
                    "resp_1",
                    serde_json::json!([{
                    "type": "function_call", "id": "fc_1", "call_id": "call_lookup",
                    "name": "lookup", "arguments": "{\"sku\":42}", "status": "completed"}]),
                ),
                Some(_) => (
                    "resp_2",
                    serde_json::json!([{
                    "type": "message", "id": "msg_r2", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": "in stock", "annotations": []}]}]),
                ),
            };
            serde_json::json!({
                "id": id, "object": "response", "created_at": 1, "model": "gpt-4.1",
                "status": "completed", "output": output, "parallel_tool_calls": true,
                "tool_choice": "auto", "tools": [],
                "usage": {"input_tokens": 5, "output_tokens": 3, "total_tokens": 8,
                          "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens_details": {"reasoning_tokens": 0}}})
        }
        _ => return Reply::json(404, r#"{"error":{"message":"mock: no such path"}}"#),
    };
    Reply::json(200, &reply.to_string())
}

/// One agent loop case with no trace headers: every call in one trace, the later calls'
/// parent the first call, and one `execute_tool` span per tool call (name, id, parent, from
/// the end of the call that asked to the arrival of the result), read back through
/// `/api/traces/{id}`. Returns the trace's spans.
async fn agent_loop(case: &str, calls: usize, tools: &[(&str, &str)]) -> Vec<serde_json::Value> {
    let mock = Mock::start(agent_provider).await;
    let gw = gateway_for(&mock, "").await;
    run_python(case, &gw).await;
    let recorded = gw.recent_calls();
    assert_eq!(recorded.len(), calls, "{case}");
    let first = &recorded[0].trace;
    let trace_id = first.trace_id_hex();
    for (i, later) in recorded.iter().enumerate().skip(1) {
        assert_eq!(
            later.trace.trace_id_hex(),
            trace_id,
            "{case}: call {i} joined"
        );
        assert_eq!(
            later.trace.parent_span_id,
            Some(first.span_id),
            "{case}: call {i} under the first"
        );
        let upstream = mock.requests()[i].headers["traceparent"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            upstream.contains(&trace_id),
            "{case}: propagated {upstream}"
        );
    }
    let want = calls + tools.len();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let a = admin_get(&gw, &format!("/api/traces/{trace_id}")).await;
        if a.status == 200 {
            let spans = a.json()["spans"].as_array().unwrap().clone();
            if spans.len() >= want {
                break spans;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{case}: spans never stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(spans.len(), want, "{case}: {spans:#?}");
    let nanos = |s: &serde_json::Value, k: &str| s[k].as_str().unwrap().parse::<u64>().unwrap();
    let first_span = first.span_id_hex();
    let asker = spans
        .iter()
        .find(|s| s["span_id"] == first_span.as_str())
        .unwrap();
    let second = spans
        .iter()
        .find(|s| s["span_id"] == recorded[1].trace.span_id_hex().as_str())
        .unwrap();
    for (name, id) in tools {
        let tool = spans
            .iter()
            .find(|s| s["name"] == format!("execute_tool {name}").as_str())
            .unwrap_or_else(|| panic!("{case}: no tool span {name}: {spans:#?}"));
        assert_eq!(tool["kind"], "INTERNAL");
        assert_eq!(
            tool["parent_span_id"],
            first_span.as_str(),
            "{case}: {name}"
        );
        assert_eq!(tool["attributes"]["gen_ai.tool.call.id"], *id);
        assert_eq!(tool["attributes"]["gen_ai.operation.name"], "execute_tool");
        let (start, end) = (
            nanos(tool, "start_unix_nanos"),
            nanos(tool, "end_unix_nanos"),
        );
        assert!(
            start.abs_diff(nanos(asker, "end_unix_nanos")) < 1_000_000,
            "{case}"
        );
        assert!(
            start <= end && end <= nanos(second, "end_unix_nanos"),
            "{case}"
        );
    }
    gw.shutdown().await;
    spans
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_tool_loop_without_trace_headers_is_one_trace_with_its_tool_spans() {
    agent_loop(
        "loop_openai_chat",
        2,
        &[("get_weather", "call_weather"), ("get_time", "call_time")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_sdk_tool_use_loop_without_trace_headers_marks_the_error_result() {
    let spans = agent_loop(
        "loop_anthropic_tool_use",
        2,
        &[("search", "toolu_search"), ("fetch", "toolu_fetch")],
    )
    .await;
    let status = |name: &str| {
        spans
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["status"]["code"].clone())
            .unwrap()
    };
    assert_eq!(status("execute_tool search"), "ok");
    assert_eq!(status("execute_tool fetch"), "error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_responses_loop_with_previous_response_id_is_one_trace() {
    agent_loop("loop_openai_responses", 2, &[("lookup", "call_lookup")]).await;
}

/// The official SDK with gateway keys: the right key works (and never reaches the provider), a
/// wrong or expired one is an AuthenticationError, a model the key may not use a
/// PermissionDeniedError; every refusal is recorded as a span, once, without a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_with_gateway_keys() {
    let (good, expired) = ("sk-st-sdk-good-key-0001", "sk-st-sdk-expired-key-0002");
    let digest = |k: &str| sidetrace::digest::hex(&sidetrace::digest::sha256(k.as_bytes()));
    let mock = Mock::start(provider).await;
    let gw = gateway_for(
        &mock,
        &format!(
            "[[keys]]\nname = \"sdk-app\"\nsha256 = \"{}\"\nproviders = [\"openai\"]\nmodels = [\"gpt-4o-mini\", \"o4-*\"]\n\
             [[keys]]\nname = \"sdk-old\"\nsha256 = \"{}\"\nexpires = 2020-01-01\n",
            digest(good),
            digest(expired)
        ),
    )
    .await;
    run_python_with(
        "keys_openai",
        &gw,
        &[("GATEWAY_KEY", good), ("EXPIRED_KEY", expired)],
    )
    .await;
    let calls = gw.recent_calls();
    let seen: Vec<(Option<&str>, Option<&str>)> = calls
        .iter()
        .map(|c| (c.metadata.key.as_deref(), c.error_type.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            (Some("sdk-app"), None),
            (None, Some("invalid_gateway_key")),
            (Some("sdk-old"), Some("expired_gateway_key")),
            (Some("sdk-app"), Some("gateway_key_not_allowed")),
        ]
    );
    // Only the admitted call reached the provider, without the gateway key.
    let requests = mock.requests();
    assert_eq!(requests.len(), 1);
    let auth = requests[0].headers.get("authorization");
    assert!(auth.is_none(), "{auth:?}");
    gw.shutdown().await;
}

/// Anthropic's SDK with a gateway key as its api_key (sent in x-api-key): accepted, and a wrong
/// one is an AuthenticationError, not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_sdk_with_a_gateway_key() {
    let good = "sk-st-sdk-anthropic-key-0003";
    let digest = sidetrace::digest::hex(&sidetrace::digest::sha256(good.as_bytes()));
    let mock = Mock::start(provider).await;
    let gw = gateway_for(
        &mock,
        &format!("[[keys]]\nname = \"sdk-claude\"\nsha256 = \"{digest}\"\n"),
    )
    .await;
    run_python_with("keys_anthropic", &gw, &[("GATEWAY_KEY", good)]).await;
    let errors: Vec<Option<String>> = gw
        .recent_calls()
        .into_iter()
        .map(|c| c.error_type)
        .collect();
    assert_eq!(errors, [None, Some("invalid_gateway_key".to_string())]);
    let requests = mock.requests();
    assert_eq!(requests.len(), 1);
    assert!(requests[0].headers.get("x-api-key").is_none());
    gw.shutdown().await;
}

/// The official SDK over HTTPS to the gateway, trusting only a test CA: a call and a stream go
/// through; a client that does not trust the CA is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_over_https_with_a_test_ca() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TestPki::new("sdk").write(dir.path());
    let mock = Mock::start(provider).await;
    let gw = gateway_for(&mock, &tls).await;
    let ca = dir.path().join("ca.pem").display().to_string();
    run_python_with("tls_openai", &gw, &[("CA_FILE", ca.as_str())]).await;
    assert_eq!(
        mock.requests().len(),
        2,
        "the untrusted call never reached the provider"
    );
    gw.shutdown().await;
}
