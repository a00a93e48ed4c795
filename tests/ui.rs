//! The web UI in a real headless Chromium (Debian's `chromium`, driven by `playwright-core`;
//! `tests/setup-ui.sh` installs both, and the README's test command runs it): the gateway
//! records a small agent run (a call that asks for a tool, then the call that answers it, as its
//! child), a refused call and a 1,000-call trace; `tests/ui/ui_check.mjs` then opens the list,
//! filters by feature, opens the trace, collapses and expands the tree, opens a span's messages
//! and cost, follows the deep link, the session view and the cost chart, failing on any console
//! error. Screenshots go to `target/ui-screenshots/`.

mod common;

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use common::*;
use http::StatusCode;
use serde_json::{Value, json};

const AGENT_TRACE: &str = "5b8aa5a2d2c872e8321cf37308d69df2";
const BIG_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

fn usage(input: u64, output: u64) -> Value {
    json!({"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output})
}

/// Answers like OpenAI: a tool call when the conversation has no tool result yet, else text.
fn provider(seen: &Seen) -> Reply {
    let body: Value = serde_json::from_slice(&seen.body).unwrap_or_default();
    if body["model"] == "rate-limited" {
        return Reply::json(
            429,
            &json!({"error": {"message": "Rate limit reached", "type": "requests"}}).to_string(),
        );
    }
    let answered = body["messages"]
        .as_array()
        .is_some_and(|m| m.iter().any(|m| m["role"] == "tool"));
    let message = if answered {
        json!({"role": "assistant", "content": "It is 18°C and sunny in Paris: pack a light jacket."})
    } else {
        json!({"role": "assistant", "content": null, "tool_calls": [{
            "id": "call_7Hq2", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]})
    };
    let finish = if answered { "stop" } else { "tool_calls" };
    Reply::json(
        200,
        &json!({
            "id": "chatcmpl-ui", "object": "chat.completion", "created": 1767317050,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage(182, 17),
        })
        .to_string(),
    )
}

const TOOLS: &str = r#"[{"type":"function","function":{"name":"get_weather","description":"Current weather in a city","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}]"#;

fn first_request() -> String {
    format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"system","content":"You are a helpful travel agent. Be brief."}},{{"role":"user","content":"What is the weather in Paris? I fly there tomorrow."}}],"tools":{TOOLS}}}"#
    )
}

fn second_request() -> String {
    format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"system","content":"You are a helpful travel agent. Be brief."}},{{"role":"user","content":"What is the weather in Paris? I fly there tomorrow."}},{{"role":"assistant","content":null,"tool_calls":[{{"id":"call_7Hq2","type":"function","function":{{"name":"get_weather","arguments":"{{\"city\":\"Paris\"}}"}}}}]}},{{"role":"tool","tool_call_id":"call_7Hq2","content":"{{\"temp_c\":18,\"sky\":\"sunny\"}}"}}],"tools":{TOOLS}}}"#
    )
}

async fn wait_spans(gw: &TestGateway, trace: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = admin_get(gw, &format!("/api/traces/{trace}")).await;
        if a.status == StatusCode::OK && a.json()["spans"].as_array().map(Vec::len) == Some(n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "trace {trace} never had {n} spans"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_explorer_works_in_a_real_browser() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    assert!(
        root.join("tests/ui/node_modules/playwright-core").exists()
            && PathBuf::from("/usr/bin/chromium").exists(),
        "chromium or playwright-core is missing: run `bash tests/setup-ui.sh` (the README's test command does)"
    );
    let mock = Mock::start(provider).await;
    let gw = gateway_for(&mock, "").await;
    let session = [
        ("x-sidetrace-feature", "support_agent"),
        ("x-sidetrace-user-id", "u_123"),
        ("x-sidetrace-session-id", "s_9"),
        ("x-sidetrace-prompt-template", "travel.answer"),
        ("x-sidetrace-prompt-version", "3"),
    ];

    // The agent run: the first call asks for a tool; the second answers with its result, as
    // the first call's child (its traceparent names the first call's span).
    let parent = format!("00-{AGENT_TRACE}-b7ad6b7169203331-01");
    let mut headers = session.to_vec();
    headers.push(("traceparent", &parent));
    let a = post(&gw, "/v1/chat/completions", &headers, &first_request()).await;
    assert_eq!(a.status, StatusCode::OK);
    wait_spans(&gw, AGENT_TRACE, 1).await;
    let first_span = gw
        .recent_spans()
        .iter()
        .find(|s| sidetrace::trace::context::hex(&s.trace_id) == AGENT_TRACE)
        .map(|s| sidetrace::trace::context::hex(&s.span_id))
        .unwrap();
    let child = format!("00-{AGENT_TRACE}-{first_span}-01");
    let mut headers = session.to_vec();
    headers.push(("traceparent", &child));
    let b = post(&gw, "/v1/chat/completions", &headers, &second_request()).await;
    assert_eq!(b.status, StatusCode::OK);

    // A refused call of another feature, and a trace of 1,000 calls.
    let refused = post(
        &gw,
        "/v1/chat/completions",
        &[
            ("x-sidetrace-feature", "search"),
            ("x-sidetrace-user-id", "u_7"),
        ],
        r#"{"model":"rate-limited","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    let big = format!("00-{BIG_TRACE}-00f067aa0ba902b7-01");
    for _ in 0..1000 {
        let r = post(
            &gw,
            "/v1/chat/completions",
            &[
                ("traceparent", big.as_str()),
                ("x-sidetrace-feature", "batch"),
            ],
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"lookup_account 42"}]}"#,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    wait_spans(&gw, AGENT_TRACE, 2).await;
    wait_spans(&gw, BIG_TRACE, 1000).await;

    let out = root.join("target/ui-screenshots");
    let base = format!("http://{}", gw.admin_addr);
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(root.join("tests/ui/ui_check.mjs"))
            .args(["--base", &base, "--trace", AGENT_TRACE, "--session", "s_9"])
            .args(["--feature", "support_agent", "--big-trace", BIG_TRACE])
            .arg("--out")
            .arg(&out)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser check failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
