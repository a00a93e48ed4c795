//! The web UI in a real headless Chromium (Debian's `chromium`, driven by `playwright-core`;
//! `tests/setup-ui.sh` installs both, and the README's test command runs it): the gateway
//! records the seed's agent run twice (with the app's own spans received over OTLP, and with no
//! SDK at all: tool spans read from the wire, the loop grouped by its tool call ids), a score, a
//! refused call, a 1,000-call trace and a trace with a span damaged on disk;
//! `tests/ui/ui_check.mjs` then opens the list, filters by
//! feature, opens the trace, checks both agent trees row by row, collapses and expands the tree,
//! opens a span's messages and cost, follows the deep link, the session view and the cost chart,
//! failing on any console error. The gateway wants an admin token: the check first signs in through
//! the UI's form (a wrong token refused, the right one kept in sessionStorage). Screenshots go to
//! `target/ui-screenshots/`.

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
const LONG_TRACE: &str = "6e0c63257de34c92bf9efcd03927272e";
/// Spans whose durations round up into the next unit, and names that are and are not a search.
const DURATIONS_TRACE: &str = "7f1c63257de34c92bf9efcd03927273a";
/// Traces loaded into the list at once, and sorted.
const MANY_TRACES: usize = 2000;
/// An app's job of two spans, one of them damaged in its span file while the gateway runs.
const DAMAGED_TRACE: &str = "8a2d63257de34c92bf9efcd03927273b";
const APP_ROOT: &str = "b7ad6b7169203331";
const APP_RETRIEVE: &str = "c7ad6b7169203332";
/// The agent run's tree as the UI must show it, row by row: name and depth.
const AGENT_TREE: &str = "support_agent.run:0,retrieve:1,chat gpt-4o-mini:1,execute_tool get_weather:2,chat gpt-4o-mini:1,evaluation helpfulness:2";
const LOOP_TREE: &str = "chat gpt-4o-mini:0,execute_tool get_weather:1,chat gpt-4o-mini:1";

/// One span of the app's own SDK, as OTLP/JSON.
fn app_span(id: &str, parent: Option<&str>, name: &str, start: u64, end: u64) -> Value {
    json!({
        "traceId": AGENT_TRACE, "spanId": id, "parentSpanId": parent.unwrap_or(""),
        "name": name, "kind": 1,
        "startTimeUnixNano": start.to_string(), "endTimeUnixNano": end.to_string(),
    })
}

/// Sends the app's spans to the gateway's OTLP receiver, as the app's SDK exporter would.
async fn send_app_spans(gw: &TestGateway, spans: &[Value]) {
    let body = json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "support-agent"}}]},
        "scopeSpans": [{"scope": {"name": "support_agent"}, "spans": spans}]}]});
    let addr = gw.ingest_http_addr.expect("the OTLP receiver is on");
    let req = http::Request::post(format!("http://{addr}/v1/traces"))
        .header("content-type", "application/json")
        .body(full_body(body.to_string()))
        .unwrap();
    assert_eq!(
        client().request(req).await.unwrap().status(),
        StatusCode::OK
    );
}

async fn admin_post(gw: &TestGateway, path: &str, body: &str) -> StatusCode {
    let req = http::Request::post(format!("http://{}{path}", gw.admin_addr))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {TEST_ADMIN_TOKEN}"))
        .body(full_body(body.to_string()))
        .unwrap();
    client().request(req).await.unwrap().status()
}

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

/// Flips a byte of `name` where it is in a span file under `dir`: the span's record no longer
/// matches its CRC, and the store leaves it out of its trace.
fn damage_span_named(dir: &std::path::Path, name: &[u8]) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        if let Some(at) = bytes.windows(name.len()).position(|w| w == name) {
            bytes[at] ^= 0x20;
            std::fs::write(&path, bytes).unwrap();
            return;
        }
    }
    panic!("no span file under {} holds the span", dir.display());
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
    // Tool spans wait a moment for an app's own (see call/tools.rs); a short wait here.
    // Admin authentication on: the browser signs in with the token through the UI's form.
    // A data directory of the test's own, whose span files it damages.
    let data = tempfile::tempdir().unwrap();
    let gw = gateway_for(
        &mock,
        &format!(
            "data_dir = {:?}\n\
             [trace]\ntool_app_span_grace_ms = 100\n[admin]\ntoken = \"{TEST_ADMIN_TOKEN}\"\n\
             [store]\nsearch_scan_traces = 3\n",
            data.path().display().to_string()
        ),
    )
    .await;
    let session = [
        ("x-sidetrace-feature", "support_agent"),
        ("x-sidetrace-user-id", "u_123"),
        ("x-sidetrace-session-id", "s_9"),
        ("x-sidetrace-prompt-template", "travel.answer"),
        ("x-sidetrace-prompt-version", "3"),
    ];

    // The seed's agent run, with the app's own OpenTelemetry spans: its `retrieve` span and
    // (at the end, as an SDK exports it) its root `support_agent.run` arrive over OTLP; both LLM
    // calls are children of the root (traceparent); the gateway reads the tool call and its
    // result from the wire and puts `execute_tool get_weather` under the call that asked.
    let t0 = now_nanos();
    send_app_spans(
        &gw,
        &[app_span(
            APP_RETRIEVE,
            Some(APP_ROOT),
            "retrieve",
            t0,
            t0 + 2_000_000,
        )],
    )
    .await;
    let parent = format!("00-{AGENT_TRACE}-{APP_ROOT}-01");
    let mut headers = session.to_vec();
    headers.push(("traceparent", &parent));
    let a = post(&gw, "/v1/chat/completions", &headers, &first_request()).await;
    assert_eq!(a.status, StatusCode::OK);
    let b = post(&gw, "/v1/chat/completions", &headers, &second_request()).await;
    assert_eq!(b.status, StatusCode::OK);
    send_app_spans(
        &gw,
        &[app_span(
            APP_ROOT,
            None,
            "support_agent.run",
            t0 - 1_000_000,
            now_nanos(),
        )],
    )
    .await;
    wait_spans(&gw, AGENT_TRACE, 5).await;
    // A user's verdict on the answer, scored after the fact on the second call.
    let tree = admin_get(&gw, &format!("/api/traces/{AGENT_TRACE}"))
        .await
        .json();
    let answer_span = tree["spans"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] == "chat gpt-4o-mini")
        .max_by_key(|s| {
            s["start_unix_nanos"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .unwrap()["span_id"]
        .as_str()
        .unwrap()
        .to_string();
    let scored = admin_post(
        &gw,
        "/api/scores",
        &json!({"trace_id": AGENT_TRACE, "span_id": answer_span, "name": "helpfulness", "score": 0.9, "label": "pass"}).to_string(),
    )
    .await;
    assert_eq!(scored, StatusCode::CREATED);
    wait_spans(&gw, AGENT_TRACE, 6).await;

    // The same run with no SDK and no trace header at all: the second call answers the first
    // one's tool call, so it joins the first call's trace.
    let feature = [("x-sidetrace-feature", "support_agent")];
    let a = post(&gw, "/v1/chat/completions", &feature, &first_request()).await;
    assert_eq!(a.status, StatusCode::OK);
    let loop_trace = a.headers["x-sidetrace-trace-id"]
        .to_str()
        .unwrap()
        .to_string();
    let b = post(&gw, "/v1/chat/completions", &feature, &second_request()).await;
    assert_eq!(
        b.headers["x-sidetrace-trace-id"].to_str().unwrap(),
        loop_trace
    );
    wait_spans(&gw, &loop_trace, 3).await;

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
    wait_spans(&gw, BIG_TRACE, 1000).await;

    // Two hours ago, so that it is not among the newest traces the text search reads first.
    let at = now_nanos() - 7_200_000_000_000;
    let span = |id: &str, parent: &str, name: &str, nanos: u64| {
        json!({
            "traceId": DURATIONS_TRACE, "spanId": id, "parentSpanId": parent, "name": name,
            "kind": 1, "startTimeUnixNano": at.to_string(),
            "endTimeUnixNano": (at + nanos).to_string(),
        })
    };
    send_app_spans(
        &gw,
        &[
            span(
                "a1a1a1a1a1a1a1a1",
                "",
                "agent.run research_task",
                179_600_000_000,
            ),
            span(
                "b2b2b2b2b2b2b2b2",
                "a1a1a1a1a1a1a1a1",
                "vector_search docs",
                59_999_700_000,
            ),
            span(
                "c3c3c3c3c3c3c3c3",
                "a1a1a1a1a1a1a1a1",
                "summarize",
                999_700_000,
            ),
        ],
    )
    .await;
    wait_spans(&gw, DURATIONS_TRACE, 3).await;

    // Three hours ago, for the same reason; one span's bytes flipped in its span file.
    let at = now_nanos() - 10_800_000_000_000;
    let span = |id: &str, parent: &str, name: &str| {
        json!({
            "traceId": DAMAGED_TRACE, "spanId": id, "parentSpanId": parent, "name": name,
            "kind": 1, "startTimeUnixNano": at.to_string(),
            "endTimeUnixNano": (at + 5_000_000).to_string(),
        })
    };
    send_app_spans(
        &gw,
        &[
            span("d1d1d1d1d1d1d1d1", "", "ingest.job"),
            span(
                "e2e2e2e2e2e2e2e2",
                "d1d1d1d1d1d1d1d1",
                "parse_file damaged-on-disk",
            ),
        ],
    )
    .await;
    wait_spans(&gw, DAMAGED_TRACE, 2).await;
    damage_span_named(&data.path().join("traces/spans"), b"damaged-on-disk");

    // Many traces to load into the list and sort, four hours ago (under all the above): one
    // app span each, from one OTLP request.
    let at = now_nanos() - 14_400_000_000_000;
    let many: Vec<Value> = (0..MANY_TRACES as u64)
        .map(|i| {
            let start = at + i * 1_000_000;
            json!({
                "traceId": format!("{:032x}", 0xabc0_0000_u64 + i), "spanId": format!("{:016x}", i + 1),
                "name": format!("batch.item {i}"), "kind": 1,
                "startTimeUnixNano": start.to_string(),
                "endTimeUnixNano": (start + (i % 97 + 1) * 1_000_000).to_string(),
            })
        })
        .collect();
    send_app_spans(&gw, &many).await;
    for i in [0, MANY_TRACES as u64 - 1] {
        wait_spans(&gw, &format!("{:032x}", 0xabc0_0000_u64 + i), 1).await;
    }

    // A long conversation, over the capture's size limit (16 kB): the first message and the
    // latest are kept, and the span says how many between them were left out.
    let turns: Vec<Value> = (0..40)
        .map(|i| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            json!({"role": role, "content": format!("Turn {} of the conversation. {}", i + 1, "All quiet. ".repeat(90))})
        })
        .collect();
    let long = format!("00-{LONG_TRACE}-00f067aa0ba902b8-01");
    let r = post(
        &gw,
        "/v1/chat/completions",
        &[("traceparent", long.as_str())],
        &json!({"model": "gpt-4o-mini", "messages": turns}).to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    wait_spans(&gw, LONG_TRACE, 1).await;
    let long_trace = admin_get(&gw, &format!("/api/traces/{LONG_TRACE}"))
        .await
        .json();
    let omitted = long_trace["spans"][0]["attributes"]["sidetrace.input.messages_omitted"]
        .as_i64()
        .expect("the long conversation's span counts the messages left out");
    assert!((20..39).contains(&omitted), "{omitted}");

    let out = root.join("target/ui-screenshots");
    let base = format!("http://{}", gw.admin_addr);
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(root.join("tests/ui/ui_check.mjs"))
            .args(["--base", &base, "--trace", AGENT_TRACE, "--session", "s_9"])
            .args(["--feature", "support_agent", "--big-trace", BIG_TRACE])
            .args(["--token", TEST_ADMIN_TOKEN])
            .args([
                "--long-trace",
                LONG_TRACE,
                "--long-omitted",
                &omitted.to_string(),
            ])
            // Only the agent runs hold it, and the three newest traces (the long conversation,
            // the big trace, the refused call) do not: the first page of the search reads
            // those three (`search_scan_traces = 3`) and says so.
            .args(["--search", "weather in Paris"])
            .args(["--durations-trace", DURATIONS_TRACE])
            .args(["--unreadable-trace", DAMAGED_TRACE])
            .args(["--many", &MANY_TRACES.to_string()])
            .args([
                "--tree",
                AGENT_TREE,
                "--loop-trace",
                &loop_trace,
                "--loop-tree",
                LOOP_TREE,
            ])
            .arg("--out")
            .arg(&out)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The steps and the timings the check reports (`--nocapture` shows them).
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the browser check failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
