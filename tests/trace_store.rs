//! The trace store through the running gateway: calls with feature, user and session headers
//! appear in `/api/traces` with exact tokens and cost, the trace id from a response header
//! opens the whole trace, content is kept at the store's level (redacted) while the export keeps
//! its own (metadata), and bad input gets a JSON error.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use serde_json::Value;
use sidetrace::{cost::Cost, trace::span::AttrValue};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn provider(seen: &Seen) -> Reply {
    let body: Value = serde_json::from_slice(&seen.body).unwrap_or_default();
    let json = |p: &str| String::from_utf8(fixture(p)).unwrap();
    if body["model"] == "rate-limited" {
        return Reply::json(429, &json("openai/error_rate_limit_429.json"));
    }
    if body["model"] == "mail-me" {
        let mut answer: Value = serde_json::from_str(&json("openai/chat_nonstream.json")).unwrap();
        answer["choices"][0]["message"]["content"] = MAIL_ME.into();
        return Reply::json(200, &answer.to_string());
    }
    Reply::json(200, &json("openai/chat_nonstream.json"))
}

const CHAT: &str = r#"{"model":"o4-mini","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Why is my query slow? Mail me at jane@example.com"}]}"#;

/// An answer with an address where a small size limit falls.
const MAIL_ME: &str = "Please send the full report to jane@example.com";

/// GETs an admin path until `done` holds for its JSON; panics after 30 s.
async fn wait_json(gw: &TestGateway, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = admin_get(gw, path).await;
        let v = a.json();
        if a.status == StatusCode::OK && done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{path} never got there: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn error_of(gw: &TestGateway, path: &str, status: StatusCode) -> String {
    let a = admin_get(gw, path).await;
    assert_eq!(
        a.status,
        status,
        "{path}: {}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.headers["content-type"], "application/json");
    a.json()["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{path}: no error message"))
        .to_string()
}

#[tokio::test]
async fn calls_appear_as_traces_with_exact_tokens_cost_content_and_sessions() {
    let mock = Mock::start(provider).await;
    let gw = gateway_for(&mock, "").await;
    let headers = [
        ("traceparent", TRACEPARENT),
        ("x-sidetrace-feature", "Support_Agent"),
        ("x-sidetrace-user-id", "u_123"),
        ("x-sidetrace-session-id", "s_9"),
    ];
    let first = post(&gw, "/v1/chat/completions", &headers, CHAT).await;
    assert_eq!(first.status, StatusCode::OK);
    let from_header = first.headers["x-sidetrace-trace-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(from_header, TRACE_ID);
    assert_eq!(
        post(&gw, "/v1/chat/completions", &headers, CHAT)
            .await
            .status,
        StatusCode::OK
    );
    let refused = post(
        &gw,
        "/v1/chat/completions",
        &[("x-sidetrace-feature", "search")],
        r#"{"model":"rate-limited","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);

    let list = wait_json(&gw, "/api/traces", |v| {
        let rows = v["traces"].as_array().unwrap();
        rows.len() == 2
            && rows
                .iter()
                .map(|r| r["spans"].as_u64().unwrap())
                .sum::<u64>()
                == 3
    })
    .await;
    assert_eq!(list["next_cursor"], Value::Null);

    // Exact tokens and cost: the sums of what the calls themselves recorded.
    let calls: Vec<_> = gw
        .recent_calls()
        .into_iter()
        .filter(|c| c.trace.trace_id_hex() == TRACE_ID)
        .collect();
    assert_eq!(calls.len(), 2);
    let usage = |f: fn(&sidetrace::format::Usage) -> Option<u64>| -> u64 {
        calls
            .iter()
            .map(|c| f(&c.response.as_ref().unwrap().usage).unwrap())
            .sum()
    };
    let cost: u128 = calls.iter().map(|c| c.cost_pico_usd.unwrap()).sum();
    let by_feature = admin_get(&gw, "/api/traces?feature=support_agent")
        .await
        .json();
    let rows = by_feature["traces"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{by_feature}");
    let row = &rows[0];
    assert_eq!(row["trace_id"], TRACE_ID);
    assert_eq!(row["spans"], 2);
    assert_eq!(row["errors"], 0);
    assert_eq!(row["input_tokens"], usage(|u| u.input_tokens));
    assert_eq!(row["output_tokens"], usage(|u| u.output_tokens));
    assert_eq!(row["cached_input_tokens"], usage(|u| u.cached_input_tokens));
    assert_eq!(row["reasoning_tokens"], usage(|u| u.reasoning_tokens));
    assert_eq!(row["cost_usd"], Cost::from_pico_usd(cost).to_string());
    assert_eq!(row["feature"], "support_agent");
    assert_eq!(row["user"], "u_123");
    assert_eq!(row["session"], "s_9");
    // As answered, and as requested: either name finds the trace.
    assert_eq!(
        row["models"],
        serde_json::json!(["o4-mini-2025-04-16", "o4-mini"])
    );
    assert_eq!(row["providers"], serde_json::json!(["openai"]));
    for model in ["o4-mini", "o4-mini-2025-04-16"] {
        let found = admin_get(&gw, &format!("/api/traces?model={model}"))
            .await
            .json();
        let ids: Vec<&Value> = found["traces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| &r["trace_id"])
            .collect();
        assert!(ids.contains(&&Value::from(TRACE_ID)), "{model}: {found}");
    }

    // status=error finds the refused call's trace only.
    let errors = admin_get(&gw, "/api/traces?status=error").await.json();
    let errors = errors["traces"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["feature"], "search");
    assert_eq!(errors[0]["errors"], 1);

    // Paging: one per page, the cursor leads to the other, then the end.
    let page1 = admin_get(&gw, "/api/traces?limit=1").await.json();
    let cursor = page1["next_cursor"].as_str().unwrap().to_string();
    let page2 = admin_get(&gw, &format!("/api/traces?limit=1&cursor={cursor}"))
        .await
        .json();
    assert_ne!(
        page1["traces"][0]["trace_id"],
        page2["traces"][0]["trace_id"]
    );
    assert_eq!(page2["next_cursor"], Value::Null);

    // The trace id from the response header opens the whole trace.
    let trace = admin_get(&gw, &format!("/api/traces/{from_header}"))
        .await
        .json();
    let spans = trace["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 2);
    for s in spans {
        assert_eq!(s["parent_span_id"], "00f067aa0ba902b7");
        assert_eq!(s["parent_missing"], true);
        assert_eq!(s["depth"], 0);
        assert_eq!(s["service"], "sidetrace");
        let a = &s["attributes"];
        assert_eq!(a["sidetrace.content.level"], "redacted");
        let input = a["gen_ai.input.messages"].as_str().unwrap();
        assert!(
            input.contains("[EMAIL]") && !input.contains("jane@example.com"),
            "{input}"
        );
        assert!(
            a["gen_ai.system_instructions"]
                .as_str()
                .unwrap()
                .contains("Be brief.")
        );
        let output = a["gen_ai.output.messages"].as_str().unwrap();
        assert!(output.contains("composite index"), "{output}");
        assert_eq!(s["rollup"]["spans"], 1);
        assert_eq!(s["self"]["cost_usd"], s["rollup"]["cost_usd"]);
    }
    // The export keeps its own level: no text left the machine.
    for span in gw.recent_spans() {
        assert!(span.attr("gen_ai.input.messages").is_none());
        assert!(span.attr("gen_ai.output.messages").is_none());
        assert_eq!(
            span.attr("sidetrace.input.message_count"),
            Some(&AttrValue::Int(1))
        );
    }

    // The trace as OTLP JSON.
    let otlp = admin_get(&gw, &format!("/api/traces/{TRACE_ID}/otlp"))
        .await
        .json();
    let rs = &otlp["resourceSpans"][0];
    assert!(
        rs["resource"]["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["key"] == "service.name" && a["value"]["stringValue"] == "sidetrace")
    );
    let otlp_spans = rs["scopeSpans"][0]["spans"].as_array().unwrap();
    assert_eq!(otlp_spans.len(), 2);
    assert_eq!(otlp_spans[0]["traceId"], TRACE_ID);
    assert_eq!(otlp_spans[0]["kind"], 3);
    assert!(otlp_spans[0]["startTimeUnixNano"].is_string());

    // Sessions.
    let sessions = admin_get(&gw, "/api/sessions").await.json();
    let s9: Vec<&Value> = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["session_id"] == "s_9")
        .collect();
    assert_eq!(s9.len(), 1);
    assert_eq!(s9[0]["traces"], 1);
    assert_eq!(s9[0]["spans"], 2);
    assert_eq!(s9[0]["cost_usd"], Cost::from_pico_usd(cost).to_string());
    let one = admin_get(&gw, "/api/sessions/s_9").await.json();
    assert_eq!(one["traces"][0]["trace_id"], TRACE_ID);
    assert_eq!(one["truncated"], false);

    // The cost page's series.
    let costs = admin_get(&gw, "/api/costs?group_by=feature&window=7d&bucket=1h")
        .await
        .json();
    let series = costs["series"].as_array().unwrap();
    let support = series.iter().find(|s| s["key"] == "support_agent").unwrap();
    assert_eq!(support["points"][0]["calls"], 2);
    assert_eq!(
        support["points"][0]["cost_usd"],
        Cost::from_pico_usd(cost).to_string()
    );

    // Every span written, none dropped.
    assert_eq!(
        metric(&gw, "sidetrace_store_spans_written_total").await,
        3.0
    );
    assert_eq!(
        metric(&gw, "sidetrace_store_spans_dropped_total").await,
        0.0
    );
    assert_eq!(metric(&gw, "sidetrace_store_up ").await, 1.0);
}

#[tokio::test]
async fn bad_input_gets_a_json_error_saying_what_was_wrong() {
    let gw = gateway("").await;
    for (path, status, says) in [
        ("/api/traces?limit=0", StatusCode::BAD_REQUEST, "limit"),
        ("/api/traces?limit=abc", StatusCode::BAD_REQUEST, "limit"),
        (
            "/api/traces?cursor=nonsense",
            StatusCode::BAD_REQUEST,
            "cursor",
        ),
        (
            "/api/traces?cursor=12-zz",
            StatusCode::BAD_REQUEST,
            "cursor",
        ),
        ("/api/traces?window=5x", StatusCode::BAD_REQUEST, "window"),
        ("/api/traces?from=10&to=5", StatusCode::BAD_REQUEST, "from"),
        ("/api/traces?status=fine", StatusCode::BAD_REQUEST, "status"),
        (
            "/api/traces?min_cost_usd=-1",
            StatusCode::BAD_REQUEST,
            "min_cost_usd",
        ),
        (
            "/api/traces?min_duration_ms=x",
            StatusCode::BAD_REQUEST,
            "min_duration_ms",
        ),
        (
            "/api/traces/not-a-trace-id",
            StatusCode::BAD_REQUEST,
            "32 hex",
        ),
        (
            "/api/traces/0000000000000000000000000000abcd",
            StatusCode::NOT_FOUND,
            "no trace",
        ),
        (
            "/api/traces/0000000000000000000000000000abcd/spans",
            StatusCode::NOT_FOUND,
            "no such endpoint",
        ),
        ("/api/sessions/nobody", StatusCode::NOT_FOUND, "no session"),
        (
            "/api/sessions?cursor=1-zz",
            StatusCode::BAD_REQUEST,
            "cursor",
        ),
        ("/api/costs?bucket=1w", StatusCode::BAD_REQUEST, "bucket"),
        // A misspelt filter would answer unfiltered; a window given twice, one of them unread.
        (
            "/api/traces?feture=x",
            StatusCode::BAD_REQUEST,
            "\"feture\"",
        ),
        (
            "/api/sessions?bogus=1",
            StatusCode::BAD_REQUEST,
            "\"bogus\"",
        ),
        (
            "/api/costs?colour=red",
            StatusCode::BAD_REQUEST,
            "\"colour\"",
        ),
        (
            "/api/traces?window=1h&from=0",
            StatusCode::BAD_REQUEST,
            "not both",
        ),
        (
            "/api/costs?window=1h&to=5",
            StatusCode::BAD_REQUEST,
            "not both",
        ),
        // The costs take unix seconds, the traces milliseconds.
        (
            "/api/costs?from=1796462700000&to=1796462800000",
            StatusCode::BAD_REQUEST,
            "milliseconds",
        ),
        ("/api/costs?to=1", StatusCode::BAD_REQUEST, "to needs from"),
        (
            "/api/costs?group_by=colour",
            StatusCode::BAD_REQUEST,
            "group_by",
        ),
    ] {
        let message = error_of(&gw, path, status).await;
        assert!(message.contains(says), "{path}: {message}");
    }
    // An empty store answers empty pages.
    let empty = admin_get(&gw, "/api/traces").await.json();
    assert_eq!(
        empty,
        serde_json::json!({"traces": [], "next_cursor": null})
    );
}

#[tokio::test]
async fn with_the_store_off_the_api_says_so_and_the_proxy_serves() {
    let mock = Mock::start(provider).await;
    let gw = gateway_for(&mock, "[store]\nenabled = false\n").await;
    assert_eq!(
        post(&gw, "/v1/chat/completions", &[], CHAT).await.status,
        StatusCode::OK
    );
    let message = error_of(&gw, "/api/traces", StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(message.contains("enabled = false"), "{message}");
    error_of(&gw, "/api/sessions", StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(metric(&gw, "sidetrace_store_up ").await, 0.0);
    // Without a store, the export's level is the only one: metadata, no text.
    let span = &gw.recent_spans()[0];
    assert!(span.attr("gen_ai.input.messages").is_none());
}

/// One of the export and the store keeps `full` text, the other `redacted`: each copy is
/// captured from the request at its own level. The redacted copy used to be the `full` one
/// redacted afterwards, after the size limit had cut the address in the message in half, and
/// kept the half (`jane@exa…`) that no pattern matches. The answer's address, across the
/// limit too, is redacted whole: the output was cut at the limit before it was redacted.
#[tokio::test]
async fn full_and_redacted_copies_are_each_captured_from_the_request() {
    let mock = Mock::start(provider).await;
    let chat = CHAT.replace("o4-mini", "mail-me");
    for (export, store) in [("full", "redacted"), ("redacted", "full")] {
        // The limit falls in the address: the message's text up to "jane@exa" is 41 bytes.
        let gw = gateway_for(
            &mock,
            &format!(
                "[capture]\nlevel = \"{export}\"\nmax_bytes = 41\n[store]\ncapture = \"{store}\"\n"
            ),
        )
        .await;
        let answer = post(&gw, "/v1/chat/completions", &[], &chat).await;
        assert_eq!(answer.status, StatusCode::OK);
        let id = answer.headers["x-sidetrace-trace-id"].to_str().unwrap();
        let trace = wait_json(&gw, &format!("/api/traces/{id}"), |v| {
            v["spans"].as_array().is_some_and(|s| s.len() == 1)
        })
        .await;
        let stored = &trace["spans"][0]["attributes"];
        assert_eq!(stored["sidetrace.content.level"], store);
        let exported = gw.recent_spans().remove(0);
        // An attribute's (full, redacted) copies, whichever side keeps which.
        let copies = |name: &str| {
            let exported = match exported.attr(name) {
                Some(AttrValue::Str(s)) => s.clone(),
                other => panic!("{export} export, {name}: {other:?}"),
            };
            let stored = stored[name].as_str().unwrap().to_string();
            if export == "full" {
                (exported, stored)
            } else {
                (stored, exported)
            }
        };
        let (full, redacted) = copies("gen_ai.input.messages");
        assert!(full.contains("Mail me at jane@exa…[truncated]"), "{full}");
        assert!(
            redacted.contains("Mail me at [EMAIL]") && !redacted.contains("jane"),
            "{export} export, {store} store: {redacted}"
        );
        // The answer, in each copy at its own level.
        let (full, redacted) = copies("gen_ai.output.messages");
        assert!(full.contains("report to jane@e…[truncated]"), "{full}");
        assert!(
            redacted.contains("report to [EMAIL") && !redacted.contains("jane"),
            "{export} export, {store} store: {redacted}"
        );
    }
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_store_writer_gives_way_to_calls_on_a_busy_core() {
    let mock = Mock::start(provider).await;
    let gw = gateway_for(&mock, "").await;
    assert_eq!(
        post(&gw, "/v1/chat/completions", &[], CHAT).await.status,
        StatusCode::OK
    );
    // Linux cuts thread names to 15 bytes: "sidetrace-trace-store".
    let (own, nices) = wait_for_background_threads("sidetrace-trace");
    // Only the writer: the threads that serve calls keep the process's priority.
    assert!(
        nices
            .iter()
            .any(|(name, nice)| name != "sidetrace-trace" && *nice == own),
        "{nices:?}"
    );
}

/// A gateway on `extra`'s data dir makes one call (trace `TRACE_ID`), sees it stored, and stops.
async fn one_stored_call(mock: &Mock, extra: &str) {
    let gw = gateway_for(mock, extra).await;
    let a = post(
        &gw,
        "/v1/chat/completions",
        &[("traceparent", TRACEPARENT)],
        CHAT,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    wait_json(&gw, &format!("/api/traces/{TRACE_ID}"), |v| {
        v["spans"].as_array().is_some_and(|s| s.len() == 1)
    })
    .await;
    gw.shutdown().await;
}

/// Every file under `dir`, read whole.
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    files
}

/// The restarted gateway serves the call's content from disk as it served it before: the
/// request kept as it came (redacted) is read into the GenAI messages; no file holds the
/// address the call sent, and a search finds words of the request.
#[tokio::test]
async fn traces_survive_a_restart_of_the_gateway() {
    let mock = Mock::start(provider).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("data_dir = {:?}\n", dir.path().display().to_string());
    one_stored_call(&mock, &extra).await;
    for (path, bytes) in files_under(dir.path()) {
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("jane@example.com"), "{}", path.display());
    }

    let gw = gateway_for(&mock, &extra).await;
    let trace = admin_get(&gw, &format!("/api/traces/{TRACE_ID}")).await;
    assert_eq!(trace.status, StatusCode::OK);
    let trace = trace.json();
    assert_eq!(trace["trace"]["spans"], 1);
    let a = &trace["spans"][0]["attributes"];
    assert_eq!(
        a["gen_ai.input.messages"],
        r#"[{"parts":[{"content":"Why is my query slow? Mail me at [EMAIL]","type":"text"}],"role":"user"}]"#
    );
    assert_eq!(
        a["gen_ai.system_instructions"],
        r#"[{"content":"Be brief.","type":"text"}]"#
    );
    assert_eq!(a["sidetrace.input.message_count"], 1);
    assert_eq!(a["sidetrace.content.level"], "redacted");
    assert!(a.get("sidetrace.content.request_body").is_none(), "{a}");
    assert!(
        a["gen_ai.output.messages"]
            .as_str()
            .unwrap_or_else(|| panic!("{a}"))
            .contains("composite index")
    );
    let found = admin_get(&gw, "/api/traces?q=query%20slow").await.json();
    assert_eq!(found["traces"][0]["trace_id"], TRACE_ID, "{found}");
}

/// A span file lost while the gateway was down: the trace still opens, says how many of its
/// spans could not be read back, and counts them.
#[tokio::test]
async fn a_trace_whose_spans_cannot_be_read_back_says_so() {
    let mock = Mock::start(provider).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("data_dir = {:?}\n", dir.path().display().to_string());
    one_stored_call(&mock, &extra).await;
    for entry in std::fs::read_dir(dir.path().join("traces/spans")).unwrap() {
        std::fs::write(entry.unwrap().path(), b"").unwrap();
    }

    let gw = gateway_for(&mock, &extra).await;
    let trace = admin_get(&gw, &format!("/api/traces/{TRACE_ID}")).await;
    assert_eq!(trace.status, StatusCode::OK);
    let trace = trace.json();
    assert_eq!(trace["spans"].as_array().map(Vec::len), Some(0), "{trace}");
    assert_eq!(trace["spans_unreadable"], 1, "{trace}");
    let metrics = String::from_utf8(admin_get(&gw, "/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains("sidetrace_store_spans_unreadable_total 1"),
        "{metrics}"
    );
}

/// A request holding an image is captured from its tree, as before the store kept bodies as
/// they came: the image is `[image]`, its URL (a signed one here) is in no file, the text beside
/// it is redacted.
#[tokio::test]
async fn a_request_with_an_image_keeps_no_part_of_it() {
    let mock = Mock::start(provider).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("data_dir = {:?}\n", dir.path().display().to_string());
    let gw = gateway_for(&mock, &extra).await;
    let body = r#"{"model":"o4-mini","messages":[{"role":"user","content":[
        {"type":"text","text":"What is in it? Mail me at jane@example.com"},
        {"type":"image_url","image_url":{"url":"https://img.test/a.png?X-Amz-Signature=f00dcafe"}}]}]}"#;
    let a = post(
        &gw,
        "/v1/chat/completions",
        &[("traceparent", TRACEPARENT)],
        body,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let trace = wait_json(&gw, &format!("/api/traces/{TRACE_ID}"), |v| {
        v["spans"].as_array().is_some_and(|s| s.len() == 1)
    })
    .await;
    let input = trace["spans"][0]["attributes"]["gen_ai.input.messages"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        input.contains("Mail me at [EMAIL]") && input.contains(r#""uri":"[image]""#),
        "{input}"
    );
    gw.shutdown().await;
    for (path, bytes) in files_under(dir.path()) {
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("f00dcafe") && !text.contains("jane@example.com"),
            "{}",
            path.display()
        );
    }
}
