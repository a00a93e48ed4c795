//! Agent loops through the real gateway with mock providers and no SDK: tool calls a response
//! asked for, answered by a later request, become `execute_tool` spans under the call that
//! asked, and requests without trace headers join the loop's trace.

mod common;

use std::time::{Duration, Instant};

use common::{
    otlp::{AttrValue as Otlp, Collector, Transport},
    *,
};
use serde_json::{Value, json};

/// Full capture everywhere, so arguments and results can be checked.
const FULL: &str = "[capture]\nlevel = \"full\"\n[store]\ncapture = \"full\"\n";

fn header(a: &Answer, name: &str) -> String {
    a.headers[name].to_str().unwrap().to_string()
}

/// Polls `/api/traces/{id}` until it holds `n` spans; panics after 30 s.
async fn trace_with(gw: &TestGateway, trace_id: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = admin_get(gw, &format!("/api/traces/{trace_id}")).await;
        if a.status == 200 {
            let spans = a.json()["spans"].as_array().unwrap().clone();
            if spans.len() >= n {
                return spans;
            }
        }
        assert!(
            Instant::now() < deadline,
            "trace {trace_id} never had {n} spans: {}",
            String::from_utf8_lossy(&a.body)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn by_name<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no span {name} in {spans:#?}"))
}

fn nanos(s: &Value, key: &str) -> u64 {
    s[key].as_str().unwrap().parse().unwrap()
}

fn chat_tool_calls() -> Reply {
    Reply::json(
        200,
        &json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_weather", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_time", "type": "function",
                     "function": {"name": "get_time", "arguments": "{\"tz\":\"CET\"}"}}
                ]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5}
        })
        .to_string(),
    )
}

fn chat_answer() -> Reply {
    Reply::json(
        200,
        r#"{"id":"chatcmpl-2","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"Sunny, 14:00"}}],"usage":{"prompt_tokens":30,"completion_tokens":4}}"#,
    )
}

/// The OpenAI mock: tool calls first, an answer once the request carries tool results.
fn openai(seen: &Seen) -> Reply {
    if String::from_utf8_lossy(&seen.body).contains("\"role\":\"tool\"") {
        chat_answer()
    } else {
        chat_tool_calls()
    }
}

const CHAT_1: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Weather and time in Paris?"}],"tools":[{"type":"function","function":{"name":"get_weather"}},{"type":"function","function":{"name":"get_time"}}]}"#;

fn chat_2() -> String {
    json!({"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": "Weather and time in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_weather", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
            {"id": "call_time", "type": "function",
             "function": {"name": "get_time", "arguments": "{\"tz\":\"CET\"}"}}]},
        {"role": "tool", "tool_call_id": "call_weather", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_time", "content": "14:00"}
    ]})
    .to_string()
}

#[tokio::test]
async fn an_openai_chat_loop_without_trace_headers_is_one_trace_with_a_tool_span_per_call() {
    let mock = Mock::start(openai).await;
    let gw = gateway_for(&mock, FULL).await;
    let first = post(&gw, "/openai/v1/chat/completions", &[], CHAT_1).await;
    assert_eq!(first.status, 200);
    let (trace, span1) = (
        header(&first, "x-sidetrace-trace-id"),
        header(&first, "x-sidetrace-span-id"),
    );
    let second = post(&gw, "/openai/v1/chat/completions", &[], &chat_2()).await;
    assert_eq!(second.status, 200);
    assert_eq!(header(&second, "x-sidetrace-trace-id"), trace, "joined");
    let span2 = header(&second, "x-sidetrace-span-id");
    // Decided before the request went upstream: the provider saw the joined trace.
    let upstream = mock.requests()[1].headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(upstream, format!("00-{trace}-{span2}-03"));

    let spans = trace_with(&gw, &trace, 4).await;
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let call1 = spans
        .iter()
        .find(|s| s["span_id"] == span1.as_str())
        .unwrap();
    let call2 = spans
        .iter()
        .find(|s| s["span_id"] == span2.as_str())
        .unwrap();
    assert_eq!(call1["parent_span_id"], Value::Null);
    assert_eq!(
        call2["parent_span_id"],
        span1.as_str(),
        "the first call is the root"
    );
    // The output message names each tool call by its id, as the next input's results do.
    let output: Value = serde_json::from_str(
        call1["attributes"]["gen_ai.output.messages"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let ids: Vec<&str> = output[0]["parts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "tool_call")
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["call_weather", "call_time"]);
    for (name, id, args, result) in [
        (
            "get_weather",
            "call_weather",
            "{\"city\":\"Paris\"}",
            "sunny",
        ),
        ("get_time", "call_time", "{\"tz\":\"CET\"}", "14:00"),
    ] {
        let tool = by_name(&spans, &format!("execute_tool {name}"));
        assert_eq!(tool["kind"], "INTERNAL");
        assert_eq!(
            tool["parent_span_id"],
            span1.as_str(),
            "under the call that asked"
        );
        let a = &tool["attributes"];
        assert_eq!(a["gen_ai.operation.name"], "execute_tool");
        assert_eq!(a["gen_ai.tool.name"], name);
        assert_eq!(a["gen_ai.tool.call.id"], id);
        assert_eq!(a["gen_ai.tool.type"], "function");
        assert_eq!(a["gen_ai.tool.call.arguments"], args);
        assert_eq!(a["gen_ai.tool.call.result"], result);
        assert_eq!(tool["status"]["code"], "ok");
        // From the end of the call that asked to the arrival of the answer.
        let start = nanos(tool, "start_unix_nanos");
        let end = nanos(tool, "end_unix_nanos");
        assert!(start.abs_diff(nanos(call1, "end_unix_nanos")) < 1_000_000);
        assert!(end >= start && end <= nanos(call2, "end_unix_nanos"));
    }
    // Asked together, listed in the order the call asked for them.
    let weather = by_name(&spans, "execute_tool get_weather");
    let time = by_name(&spans, "execute_tool get_time");
    assert!(nanos(time, "start_unix_nanos") > nanos(weather, "start_unix_nanos"));
    let at = |name: &str| spans.iter().position(|s| s["name"] == name).unwrap();
    assert!(at("execute_tool get_weather") < at("execute_tool get_time"));
    let text = metrics_of(&gw).await;
    assert_eq!(metric_in(&text, "sidetrace_tool_spans_emitted_total"), 2.0);
    assert_eq!(
        metric_in(
            &text,
            "sidetrace_traces_joined_total{reason=\"tool_result\"}"
        ),
        1.0
    );
    assert_eq!(metric_in(&text, "sidetrace_tool_calls_answered_total"), 2.0);
}

fn anthropic_sse() -> Reply {
    let events = [
        r#"{"type":"message_start","message":{"id":"msg_1","model":"claude-sonnet-4-5","usage":{"input_tokens":12,"output_tokens":1}}}"#,
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_search","name":"search","input":{}}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"q\":\"rust\"}"}}"#,
        r#"{"type":"content_block_stop","index":0}"#,
        r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_fetch","name":"fetch","input":{}}}"#,
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"url\":\"x\"}"}}"#,
        r#"{"type":"content_block_stop","index":1}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":20}}"#,
        r#"{"type":"message_stop"}"#,
    ];
    let framed: Vec<String> = events
        .iter()
        .map(|e| {
            let name = serde_json::from_str::<Value>(e).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string();
            format!("event: {name}\ndata: {e}\n\n")
        })
        .collect();
    let refs: Vec<&str> = framed.iter().map(String::as_str).collect();
    Reply::sse(&refs, Duration::ZERO)
}

#[tokio::test]
async fn an_anthropic_tool_use_loop_marks_the_error_result_and_reads_ids_without_capture() {
    let mock = Mock::start(|seen: &Seen| {
        if String::from_utf8_lossy(&seen.body).contains("tool_result") {
            Reply::json(
                200,
                r#"{"id":"msg_2","type":"message","model":"claude-sonnet-4-5","stop_reason":"end_turn","content":[{"type":"text","text":"done"}],"usage":{"input_tokens":40,"output_tokens":2}}"#,
            )
        } else {
            anthropic_sse()
        }
    })
    .await;
    // No content captured anywhere: ids and names are metadata and still read.
    let gw = gateway_for(
        &mock,
        "[capture]\nlevel = \"none\"\n[store]\ncapture = \"metadata\"\n",
    )
    .await;
    let first = post(
        &gw,
        "/anthropic/v1/messages",
        &[("x-claude-code-session-id", "cc-session-1")],
        r#"{"model":"claude-sonnet-4-5","max_tokens":100,"stream":true,"messages":[{"role":"user","content":"go"}]}"#,
    )
    .await;
    assert_eq!(first.status, 200);
    let (trace, span1) = (
        header(&first, "x-sidetrace-trace-id"),
        header(&first, "x-sidetrace-span-id"),
    );
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_search", "name": "search", "input": {"q": "rust"}},
            {"type": "tool_use", "id": "toolu_fetch", "name": "fetch", "input": {"url": "x"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_search", "content": [{"type": "text", "text": "3 hits"}]},
            {"type": "tool_result", "tool_use_id": "toolu_fetch", "content": "404", "is_error": true}]}
    ]});
    let second = post(
        &gw,
        "/anthropic/v1/messages",
        &[("x-claude-code-session-id", "cc-session-1")],
        &body.to_string(),
    )
    .await;
    assert_eq!(second.status, 200);
    assert_eq!(header(&second, "x-sidetrace-trace-id"), trace);

    let spans = trace_with(&gw, &trace, 4).await;
    let search = by_name(&spans, "execute_tool search");
    let fetch = by_name(&spans, "execute_tool fetch");
    for (tool, id) in [(search, "toolu_search"), (fetch, "toolu_fetch")] {
        assert_eq!(tool["parent_span_id"], span1.as_str());
        assert_eq!(tool["attributes"]["gen_ai.tool.call.id"], id);
        assert_eq!(tool["attributes"]["session.id"], "cc-session-1");
        assert!(
            tool["attributes"]["gen_ai.tool.call.arguments"].is_null()
                && tool["attributes"]["gen_ai.tool.call.result"].is_null(),
            "no content at metadata level: {tool}"
        );
    }
    assert_eq!(search["status"]["code"], "ok");
    assert_eq!(fetch["status"]["code"], "error");
    assert_eq!(fetch["attributes"]["error.type"], "tool_error");
    assert_eq!(
        metric(&gw, "sidetrace_tool_calls_answered_total{result=\"error\"}").await,
        1.0
    );
}

/// The Responses mock: a function call first, then answers that chain by id.
fn responses(seen: &Seen) -> Reply {
    let body: Value = serde_json::from_slice(&seen.body).unwrap();
    let (id, output) = match body["previous_response_id"].as_str() {
        None => (
            "resp_1",
            json!([{"type": "function_call", "id": "fc_item_1", "call_id": "call_lookup",
                    "name": "lookup", "arguments": "{\"sku\":42}"}]),
        ),
        Some(prev) => (
            if prev == "resp_1" { "resp_2" } else { "resp_3" },
            json!([{"type": "message", "role": "assistant",
                    "content": [{"type": "output_text", "text": "in stock"}]}]),
        ),
    };
    Reply::json(
        200,
        &json!({"id": id, "object": "response", "model": "gpt-4.1", "status": "completed",
                "output": output, "usage": {"input_tokens": 5, "output_tokens": 3}})
        .to_string(),
    )
}

#[tokio::test]
async fn responses_calls_chained_by_previous_response_id_are_one_flat_trace() {
    let mock = Mock::start(responses).await;
    let gw = gateway_for(&mock, FULL).await;
    let first = post(
        &gw,
        "/openai/v1/responses",
        &[],
        r#"{"model":"gpt-4.1","input":"Is SKU 42 in stock?"}"#,
    )
    .await;
    let (trace, span1) = (
        header(&first, "x-sidetrace-trace-id"),
        header(&first, "x-sidetrace-span-id"),
    );
    let second = post(
        &gw,
        "/openai/v1/responses",
        &[],
        r#"{"model":"gpt-4.1","previous_response_id":"resp_1","input":[{"type":"function_call_output","call_id":"call_lookup","output":"{\"stock\":3}"}]}"#,
    )
    .await;
    let third = post(
        &gw,
        "/openai/v1/responses",
        &[],
        r#"{"model":"gpt-4.1","previous_response_id":"resp_2","input":"Thanks, and SKU 43?"}"#,
    )
    .await;
    assert_eq!(header(&second, "x-sidetrace-trace-id"), trace);
    assert_eq!(header(&third, "x-sidetrace-trace-id"), trace);
    let spans = trace_with(&gw, &trace, 4).await;
    assert_eq!(spans.len(), 4, "{spans:#?}");
    for later in [&second, &third] {
        let id = header(later, "x-sidetrace-span-id");
        let s = spans.iter().find(|s| s["span_id"] == id.as_str()).unwrap();
        assert_eq!(
            s["parent_span_id"],
            span1.as_str(),
            "flat under the first call"
        );
    }
    let tool = by_name(&spans, "execute_tool lookup");
    assert_eq!(tool["parent_span_id"], span1.as_str());
    assert_eq!(tool["attributes"]["gen_ai.tool.call.id"], "call_lookup");
    assert_eq!(
        tool["attributes"]["gen_ai.tool.call.arguments"],
        "{\"sku\":42}"
    );
    assert_eq!(
        tool["attributes"]["gen_ai.tool.call.result"],
        "{\"stock\":3}"
    );
    let text = metrics_of(&gw).await;
    assert_eq!(
        metric_in(
            &text,
            "sidetrace_traces_joined_total{reason=\"tool_result\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_in(
            &text,
            "sidetrace_traces_joined_total{reason=\"previous_response_id\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn a_tool_call_never_answered_ends_after_the_wait_marked_unanswered() {
    let mock = Mock::start(openai).await;
    let gw = gateway_for(&mock, "[trace]\ntool_unanswered_ms = 50\n").await;
    let first = post(&gw, "/openai/v1/chat/completions", &[], CHAT_1).await;
    let trace = header(&first, "x-sidetrace-trace-id");
    wait_metric(&gw, "sidetrace_tool_calls_unanswered_total", 2.0).await;
    let spans = trace_with(&gw, &trace, 3).await;
    let tool = by_name(&spans, "execute_tool get_weather");
    assert_eq!(tool["attributes"]["sidetrace.tool.unanswered"], true);
    let waited = nanos(tool, "end_unix_nanos") - nanos(tool, "start_unix_nanos");
    assert_eq!(waited, 50_000_000);
    // Answered too late: nothing more is emitted and nothing joins.
    let late = post(&gw, "/openai/v1/chat/completions", &[], &chat_2()).await;
    assert_ne!(header(&late, "x-sidetrace-trace-id"), trace);
    assert_eq!(metric(&gw, "sidetrace_tool_spans_emitted_total").await, 2.0);
}

#[tokio::test]
async fn the_pending_table_is_bounded_and_evictions_are_counted() {
    let mock = Mock::start(openai).await;
    let gw = gateway_for(&mock, "[trace]\ntool_pending_max_entries = 1\n").await;
    post(&gw, "/openai/v1/chat/completions", &[], CHAT_1).await;
    wait_metric(
        &gw,
        "sidetrace_tool_pending_evicted_total{reason=\"count\"}",
        1.0,
    )
    .await;
    assert_eq!(gw.tools.as_ref().unwrap().len(), (1, 0));
    // The evicted call (the oldest, call_weather) is forgotten; the other still joins.
    let second = post(&gw, "/openai/v1/chat/completions", &[], &chat_2()).await;
    assert_eq!(
        header(&second, "x-sidetrace-trace-id"),
        mock.requests()[0].headers["traceparent"].to_str().unwrap()[3..35]
    );
    wait_metric(&gw, "sidetrace_tool_spans_emitted_total", 1.0).await;
    assert_eq!(metric(&gw, "sidetrace_tool_spans_emitted_total").await, 1.0);
}

#[tokio::test]
async fn explicit_trace_and_session_headers_win_over_joining() {
    let mock = Mock::start(openai).await;
    let gw = gateway_for(&mock, "").await;
    // A traceparent keeps its own trace; the tool spans still go under the call that asked.
    let first = post(&gw, "/openai/v1/chat/completions", &[], CHAT_1).await;
    let (trace, span1) = (
        header(&first, "x-sidetrace-trace-id"),
        header(&first, "x-sidetrace-span-id"),
    );
    let own = "4bf92f3577b34da6a3ce929d0e0e4736";
    let second = post(
        &gw,
        "/openai/v1/chat/completions",
        &[("traceparent", &format!("00-{own}-00f067aa0ba902b7-01"))],
        &chat_2(),
    )
    .await;
    assert_eq!(header(&second, "x-sidetrace-trace-id"), own);
    let spans = trace_with(&gw, &trace, 3).await;
    assert_eq!(
        by_name(&spans, "execute_tool get_time")["parent_span_id"],
        span1.as_str()
    );

    // A session header set on purpose, even the asking call's own: not joined, its session
    // kept. A coding agent's own session header other than the asking call's: not joined.
    for (name, asking, answering) in [
        ("x-sidetrace-session-id", "alice", "bob"),
        ("x-sidetrace-session-id", "alice", "alice"),
        ("x-claude-code-session-id", "cc-1", "cc-2"),
    ] {
        post(
            &gw,
            "/openai/v1/chat/completions",
            &[(name, asking)],
            CHAT_1,
        )
        .await;
        let other = post(
            &gw,
            "/openai/v1/chat/completions",
            &[(name, answering)],
            &chat_2(),
        )
        .await;
        let other_trace = header(&other, "x-sidetrace-trace-id");
        let calls = gw.recent_calls();
        let call = calls
            .iter()
            .find(|c| c.trace.trace_id_hex() == other_trace)
            .unwrap();
        assert_eq!(call.metadata.session_id.as_deref(), Some(answering));
        assert_eq!(
            call.trace.parent_span_id, None,
            "{name}: a new trace of its own"
        );
    }
    assert_eq!(
        metric(&gw, "sidetrace_traces_joined_total").await,
        0.0,
        "nothing joined"
    );
}

#[tokio::test]
async fn a_tool_span_the_app_reported_itself_is_dropped_after_the_hold() {
    let mock = Mock::start(openai).await;
    let gw = gateway_for(&mock, "[trace]\ntool_app_span_grace_ms = 200\n").await;
    let tools = gw.tools.clone().unwrap();
    // The OTLP receiver saw an app's spans: tool spans wait for the app's own.
    tools.set_app_sends_spans(true);
    let first = post(&gw, "/openai/v1/chat/completions", &[], CHAT_1).await;
    let trace = header(&first, "x-sidetrace-trace-id");
    post(&gw, "/openai/v1/chat/completions", &[], &chat_2()).await;
    assert_eq!(tools.len(), (0, 2), "both finished spans are held");
    let mut trace_id = [0u8; 16];
    for (i, b) in trace_id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&trace[i * 2..i * 2 + 2], 16).unwrap();
    }
    // The app's execute_tool span for call_weather arrives within the grace: it wins.
    tools.app_reported(trace_id, "call_weather");
    assert_eq!(
        metric(
            &gw,
            "sidetrace_tool_spans_dropped_total{reason=\"app_reported\"}"
        )
        .await,
        1.0
    );
    // The other one goes out once the grace is over.
    wait_metric(&gw, "sidetrace_tool_spans_emitted_total", 1.0).await;
    let spans = trace_with(&gw, &trace, 3).await;
    let tools_in_trace: Vec<_> = spans
        .iter()
        .filter(|s| s["attributes"]["gen_ai.operation.name"] == "execute_tool")
        .collect();
    assert_eq!(tools_in_trace.len(), 1);
    assert_eq!(tools_in_trace[0]["name"], "execute_tool get_time");
    assert_eq!(tools.len(), (0, 0));
    // Reported before the answer arrives: that span is never made, the other is held.
    let again = post(&gw, "/openai/v1/chat/completions", &[], CHAT_1).await;
    let trace2 = header(&again, "x-sidetrace-trace-id");
    let mut trace2_id = [0u8; 16];
    for (i, b) in trace2_id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&trace2[i * 2..i * 2 + 2], 16).unwrap();
    }
    tools.app_reported(trace2_id, "call_time");
    post(&gw, "/openai/v1/chat/completions", &[], &chat_2()).await;
    assert_eq!(tools.len(), (0, 1));
    assert_eq!(
        metric(
            &gw,
            "sidetrace_tool_spans_dropped_total{reason=\"app_reported\"}"
        )
        .await,
        2.0
    );
    wait_metric(&gw, "sidetrace_tool_spans_emitted_total", 2.0).await;
}

#[tokio::test]
async fn tool_spans_are_exported_at_the_export_level_and_shutdown_ends_the_waiting_calls() {
    let collector = Collector::start(Transport::Http).await;
    let mock = Mock::start(openai).await;
    let extra = format!(
        "[capture]\nlevel = \"metadata\"\n[store]\ncapture = \"full\"\n[export]\nendpoint = {:?}\nprotocol = \"http/protobuf\"\nbatch_delay_ms = 20\n",
        collector.endpoint()
    );
    let gw = gateway_for(&mock, &extra).await;
    let first = post(&gw, "/openai/v1/chat/completions", &[], CHAT_1).await;
    let trace = header(&first, "x-sidetrace-trace-id");
    post(&gw, "/openai/v1/chat/completions", &[], &chat_2()).await;
    // The store keeps its own level (full): arguments and result.
    let spans = trace_with(&gw, &trace, 4).await;
    let stored = by_name(&spans, "execute_tool get_weather");
    assert_eq!(stored["attributes"]["gen_ai.tool.call.result"], "sunny");
    // The export keeps its level (metadata): ids and names, no content.
    let exported = collector.wait_for_spans(4, Duration::from_secs(20)).await;
    let tools: Vec<_> = exported
        .iter()
        .filter(|s| s.name.starts_with("execute_tool "))
        .collect();
    assert_eq!(tools.len(), 2);
    for t in &tools {
        assert_eq!(t.trace_id, trace);
        assert_eq!(t.kind, 1, "INTERNAL");
        assert!(t.attributes.contains_key("gen_ai.tool.call.id"));
        assert!(!t.attributes.contains_key("gen_ai.tool.call.arguments"));
        assert!(!t.attributes.contains_key("gen_ai.tool.call.result"));
    }
    // A loop left waiting at shutdown: its calls end as unanswered, exported before exit.
    let again = post(&gw, "/openai/v1/chat/completions", &[], CHAT_1).await;
    let waiting = header(&again, "x-sidetrace-trace-id");
    gw.shutdown().await;
    let exported = collector.wait_for_spans(7, Duration::from_secs(20)).await;
    let ended: Vec<_> = exported
        .iter()
        .filter(|s| s.trace_id == waiting && s.name.starts_with("execute_tool "))
        .collect();
    assert_eq!(ended.len(), 2, "{exported:#?}");
    for t in ended {
        assert_eq!(
            t.attributes.get("sidetrace.tool.unanswered"),
            Some(&Otlp::Bool(true))
        );
        assert_eq!(
            t.attributes.get("sidetrace.tool.unanswered_reason"),
            Some(&Otlp::Str("shutdown".into()))
        );
    }
    collector.stop().await;
}

/// The app's `execute_tool get_weather` span of `call_weather`, sent to the gateway's OTLP
/// receiver as an OpenTelemetry SDK sends it (service `weather-agent`), under `parent`.
async fn send_app_tool_span(gw: &TestGateway, trace: &str, span_id: &str, parent: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let app_span = json!({"resourceSpans": [{
    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "weather-agent"}}]},
    "scopeSpans": [{"scope": {"name": "weather-agent"}, "spans": [{
        "traceId": trace, "spanId": span_id, "parentSpanId": parent,
        "name": "execute_tool get_weather", "kind": 1,
        "startTimeUnixNano": (now - 1_000_000).to_string(), "endTimeUnixNano": now.to_string(),
        "attributes": [
            {"key": "gen_ai.operation.name", "value": {"stringValue": "execute_tool"}},
            {"key": "gen_ai.tool.call.id", "value": {"stringValue": "call_weather"}}
        ]}]}]}]});
    let addr = gw.ingest_http_addr.expect("the receiver is on");
    let req = http::Request::post(format!("http://{addr}/v1/traces"))
        .header("content-type", "application/json")
        .body(full_body(app_span.to_string()))
        .unwrap();
    assert_eq!(client().request(req).await.unwrap().status(), 200);
}

#[tokio::test]
async fn an_execute_tool_span_the_app_sends_over_otlp_replaces_the_gateways() {
    let mock = Mock::start(openai).await;
    let gw = gateway_for(&mock, "[trace]\ntool_app_span_grace_ms = 200\n").await;
    let first = post(&gw, "/openai/v1/chat/completions", &[], CHAT_1).await;
    let trace = header(&first, "x-sidetrace-trace-id");
    let call_span = trace_with(&gw, &trace, 1).await[0]["span_id"]
        .as_str()
        .unwrap()
        .to_string();
    // The app's own SDK reports its tool call to the gateway's OTLP receiver.
    send_app_tool_span(&gw, &trace, "a1a2a3a4a5a6a7a8", &call_span).await;
    // The loop goes on: the gateway makes no span for call_weather (the app's wins) and one
    // for call_time, after the grace.
    post(&gw, "/openai/v1/chat/completions", &[], &chat_2()).await;
    wait_metric(&gw, "sidetrace_tool_spans_emitted_total", 1.0).await;
    assert_eq!(
        metric(
            &gw,
            "sidetrace_tool_spans_dropped_total{reason=\"app_reported\"}"
        )
        .await,
        1.0
    );
    let spans = trace_with(&gw, &trace, 4).await;
    let weather: Vec<_> = spans
        .iter()
        .filter(|s| s["attributes"]["gen_ai.tool.call.id"] == "call_weather")
        .collect();
    assert_eq!(weather.len(), 1, "one span for the call: {spans:#?}");
    assert_eq!(weather[0]["span_id"], "a1a2a3a4a5a6a7a8", "the app's");
    assert_eq!(weather[0]["service"], "weather-agent");
    assert_eq!(
        by_name(&spans, "execute_tool get_time")["parent_span_id"],
        call_span.as_str()
    );
}

/// Before any app has sent spans, the gateway's tool spans go out at once; an app span of the
/// same call that arrives later replaces the gateway's in the stored trace.
#[tokio::test]
async fn an_app_tool_span_arriving_after_the_gateway_s_replaces_it_in_the_store() {
    let mock = Mock::start(openai).await;
    let gw = gateway_for(&mock, "").await;
    let first = post(&gw, "/openai/v1/chat/completions", &[], CHAT_1).await;
    let trace = header(&first, "x-sidetrace-trace-id");
    post(&gw, "/openai/v1/chat/completions", &[], &chat_2()).await;
    // Both calls and the gateway's two tool spans are stored.
    let spans = trace_with(&gw, &trace, 4).await;
    let call_span = by_name(&spans, "execute_tool get_weather")["parent_span_id"]
        .as_str()
        .unwrap()
        .to_string();
    send_app_tool_span(&gw, &trace, "b1b2b3b4b5b6b7b8", &call_span).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let trace_json = loop {
        let t = admin_get(&gw, &format!("/api/traces/{trace}")).await.json();
        if t["spans"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["span_id"] == "b1b2b3b4b5b6b7b8")
        {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "the app's span never came: {t:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let spans = trace_json["spans"].as_array().unwrap();
    let weather: Vec<_> = spans
        .iter()
        .filter(|s| s["attributes"]["gen_ai.tool.call.id"] == "call_weather")
        .collect();
    assert_eq!(weather.len(), 1, "one span for the call: {spans:#?}");
    assert_eq!(weather[0]["service"], "weather-agent", "the app's");
    assert_eq!(trace_json["tool_spans_replaced"], 1);
    assert_eq!(trace_json["trace"]["spans"], 4, "{trace_json:#}");
    // The other call's tool span is the gateway's still; the download leaves the replaced out.
    assert_eq!(
        by_name(spans, "execute_tool get_time")["parent_span_id"],
        call_span.as_str()
    );
    let otlp = admin_get(&gw, &format!("/api/traces/{trace}/otlp"))
        .await
        .json();
    let weather_spans = otlp["resourceSpans"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["scopeSpans"].as_array().unwrap())
        .flat_map(|s| s["spans"].as_array().unwrap())
        .filter(|s| {
            s["attributes"].as_array().unwrap().iter().any(|a| {
                a["key"] == "gen_ai.tool.call.id" && a["value"]["stringValue"] == "call_weather"
            })
        })
        .count();
    assert_eq!(weather_spans, 1, "{otlp:#}");
}

#[tokio::test]
async fn a_retried_answer_joins_the_same_trace_and_makes_no_second_tool_span() {
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = attempts.clone();
    let mock = Mock::start(move |s: &Seen| {
        if String::from_utf8_lossy(&s.body).contains("\"role\":\"tool\"")
            && seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0
        {
            // The first attempt at the answer is rate limited; the client retries it.
            return Reply::json(
                429,
                r#"{"error":{"message":"slow down","type":"requests"}}"#,
            );
        }
        openai(s)
    })
    .await;
    let gw = gateway_for(&mock, "").await;
    let first = post(&gw, "/openai/v1/chat/completions", &[], CHAT_1).await;
    let trace = header(&first, "x-sidetrace-trace-id");
    let refused = post(&gw, "/openai/v1/chat/completions", &[], &chat_2()).await;
    assert_eq!(refused.status, 429);
    assert_eq!(header(&refused, "x-sidetrace-trace-id"), trace);
    let retried = post(&gw, "/openai/v1/chat/completions", &[], &chat_2()).await;
    assert_eq!(retried.status, 200);
    assert_eq!(
        header(&retried, "x-sidetrace-trace-id"),
        trace,
        "the retry joins the loop too"
    );
    let spans = trace_with(&gw, &trace, 5).await;
    let tools: Vec<_> = spans
        .iter()
        .filter(|s| s["attributes"]["gen_ai.operation.name"] == "execute_tool")
        .collect();
    assert_eq!(
        tools.len(),
        2,
        "one span per tool call, made by the first answer: {spans:#?}"
    );
    assert_eq!(metric(&gw, "sidetrace_tool_spans_emitted_total").await, 2.0);
    assert_eq!(
        metric(&gw, "sidetrace_traces_joined_total{reason=\"tool_result\"}").await,
        2.0
    );
}
