//! Span records through the real gateway: trace grouping rules, propagation upstream, metadata
//! headers and their aliases, capture levels and redaction, and the GenAI attributes.

mod common;

use std::time::Duration;

use common::*;
use sidetrace::trace::span::{AttrValue, SpanRecord, SpanStatus};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

async fn spans(gw: &TestGateway, n: usize) -> Vec<SpanRecord> {
    for _ in 0..200 {
        let s = gw.recent_spans();
        if s.len() >= n {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("expected {n} spans, got {}", gw.recent_spans().len());
}

fn str_attr<'a>(span: &'a SpanRecord, key: &str) -> Option<&'a str> {
    match span.attr(key) {
        Some(AttrValue::Str(s)) => Some(s),
        _ => None,
    }
}

fn hex(b: &[u8]) -> String {
    sidetrace::trace::context::hex(b)
}

fn nonstream_mock_reply() -> Reply {
    Reply::json(
        200,
        &String::from_utf8(fixture("openai/chat_nonstream.json")).unwrap(),
    )
}

#[tokio::test]
async fn a_valid_traceparent_makes_the_call_span_its_child_and_propagates_upstream() {
    let mock = Mock::start(|_| nonstream_mock_reply()).await;
    let gw = gateway_for(&mock, "").await;
    let a = post(
        &gw,
        "/openai/v1/chat/completions",
        &[("traceparent", TRACEPARENT), ("tracestate", "vendor=abc")],
        r#"{"model":"o4-mini","messages":[]}"#,
    )
    .await;
    let span = spans(&gw, 1).await.remove(0);
    assert_eq!(hex(&span.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        span.parent_span_id.map(|p| hex(&p)).as_deref(),
        Some("00f067aa0ba902b7")
    );
    assert!(span.parent_is_remote);
    assert_eq!(span.kind, "client");
    assert_eq!(
        a.headers["x-sidetrace-trace-id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(a.headers["x-sidetrace-span-id"], hex(&span.span_id));
    let seen = mock.last();
    assert_eq!(
        seen.headers["traceparent"],
        format!(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
            hex(&span.span_id)
        ),
        "upstream sees the call span as its parent"
    );
    assert_eq!(seen.headers["tracestate"], "vendor=abc");
    gw.shutdown().await;
}

#[tokio::test]
async fn two_traceparent_headers_start_a_new_trace_and_an_invalid_tracestate_never_reaches_the_upstream()
 {
    let mock = Mock::start(|_| nonstream_mock_reply()).await;
    let gw = gateway_for(&mock, "").await;
    let other = "00-12345678901234567890123456789012-1234567890123456-01";
    post(
        &gw,
        "/openai/v1/chat/completions",
        &[
            ("traceparent", TRACEPARENT),
            ("traceparent", other),
            ("tracestate", "vendor=abc"),
        ],
        r#"{"model":"o4-mini","messages":[]}"#,
    )
    .await;
    let span = spans(&gw, 1).await.remove(0);
    let trace = hex(&span.trace_id);
    assert!(trace != "4bf92f3577b34da6a3ce929d0e0e4736" && trace != other[3..35]);
    assert!(span.parent_span_id.is_none());
    let seen = mock.last();
    assert_eq!(seen.headers.get_all("traceparent").iter().count(), 1);
    assert!(
        seen.headers["traceparent"]
            .to_str()
            .unwrap()
            .contains(&trace)
    );
    assert!(!seen.headers.contains_key("tracestate"));
    // A valid traceparent with a tracestate that breaks the grammar: the trace is kept, the
    // tracestate is dropped whole (not forwarded as received) and counted.
    post(
        &gw,
        "/openai/v1/chat/completions",
        &[
            ("traceparent", TRACEPARENT),
            ("tracestate", "congo=t61rcWkgMzE,Rojo=00f067aa0ba902b7"),
        ],
        r#"{"model":"o4-mini","messages":[]}"#,
    )
    .await;
    let span = spans(&gw, 2).await.remove(1);
    assert_eq!(hex(&span.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(span.trace_state, None);
    assert!(!mock.last().headers.contains_key("tracestate"));
    // Valid entries from several fields are combined in order, whitespace and empty members gone.
    post(
        &gw,
        "/openai/v1/chat/completions",
        &[
            ("traceparent", TRACEPARENT),
            ("tracestate", "rojo=00f067aa0ba902b7 , "),
            ("tracestate", "acme@congo=t61rcWkgMzE"),
        ],
        r#"{"model":"o4-mini","messages":[]}"#,
    )
    .await;
    assert_eq!(
        mock.last().headers["tracestate"],
        "rojo=00f067aa0ba902b7,acme@congo=t61rcWkgMzE"
    );
    let metrics = metrics_of(&gw).await;
    assert_eq!(
        metric_in(
            &metrics,
            r#"sidetrace_trace_context_invalid_total{header="traceparent"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_in(
            &metrics,
            r#"sidetrace_trace_context_invalid_total{header="tracestate"}"#
        ),
        1.0
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn an_invalid_traceparent_starts_a_new_trace_and_is_counted() {
    let mock = Mock::start(|_| nonstream_mock_reply()).await;
    let gw = gateway_for(&mock, "").await;
    let upper = TRACEPARENT.to_uppercase();
    post(
        &gw,
        "/openai/v1/chat/completions",
        &[("traceparent", &upper)],
        "{}",
    )
    .await;
    let span = spans(&gw, 1).await.remove(0);
    assert_ne!(hex(&span.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(span.parent_span_id.is_none());
    let metrics = String::from_utf8(admin_get(&gw, "/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains(r#"sidetrace_trace_context_invalid_total{header="traceparent"} 1"#),
        "{metrics}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn header_derived_trace_ids_are_equal_across_two_gateway_instances() {
    let mock = Mock::start(|_| nonstream_mock_reply()).await;
    let one = gateway_for(&mock, "").await;
    let two = gateway_for(&mock, "").await;
    for gw in [&one, &two] {
        post(
            gw,
            "/openai/v1/chat/completions",
            &[
                ("x-sidetrace-trace-id", "agent-run-7"),
                ("x-sidetrace-parent-span-id", "1111111111111111"),
            ],
            "{}",
        )
        .await;
    }
    let (a, b) = (
        spans(&one, 1).await.remove(0),
        spans(&two, 1).await.remove(0),
    );
    assert_eq!(a.trace_id, b.trace_id);
    assert_ne!(a.span_id, b.span_id);
    assert_eq!(
        a.parent_span_id.map(|p| hex(&p)).as_deref(),
        Some("1111111111111111")
    );
    one.shutdown().await;
    two.shutdown().await;
}

#[tokio::test]
async fn without_trace_headers_each_call_is_a_new_root_span() {
    let mock = Mock::start(|_| nonstream_mock_reply()).await;
    let gw = gateway_for(&mock, "").await;
    post(&gw, "/openai/v1/chat/completions", &[], "{}").await;
    post(&gw, "/openai/v1/chat/completions", &[], "{}").await;
    let s = spans(&gw, 2).await;
    assert_ne!(s[0].trace_id, s[1].trace_id);
    assert!(s[0].parent_span_id.is_none());
    assert!(
        mock.last().headers.contains_key("traceparent"),
        "a new trace is still propagated"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn metadata_headers_and_aliases_become_attributes_and_never_reach_the_upstream() {
    let mock = Mock::start(|_| nonstream_mock_reply()).await;
    let gw = gateway_for(&mock, "").await;
    post(
        &gw,
        "/openai/v1/chat/completions",
        &[
            ("x-sidetrace-feature", "support_agent"),
            ("x-sidetrace-prompt-template", "support.v3"),
            ("x-sidetrace-prompt-version", "12"),
            ("x-sidetrace-span-name", "triage call"),
            ("x-sidetrace-tags", "beta,eu"),
            ("x-sidetrace-meta-tenant", "acme"),
            ("helicone-session-id", "sess-1"),
            ("helicone-session-name", "Refund flow"),
            ("helicone-property-environment", "prod"),
            ("x-portkey-metadata", r#"{"team":"ml"}"#),
            ("x-litellm-tags", "from-litellm"),
            ("baggage", "user.id=u_42"),
        ],
        r#"{"model":"o4-mini","messages":[],"metadata":{"ticket":"T-1"}}"#,
    )
    .await;
    let span = spans(&gw, 1).await.remove(0);
    assert_eq!(span.name, "triage call");
    for (k, v) in [
        ("feature.id", "support_agent"),
        ("user.id", "u_42"),
        ("session.id", "sess-1"),
        ("gen_ai.conversation.id", "sess-1"),
        ("sidetrace.session.name", "Refund flow"),
        ("prompt.template_id", "support.v3"),
        ("prompt.version", "12"),
        ("sidetrace.meta.tenant", "acme"),
        ("sidetrace.meta.environment", "prod"),
        ("sidetrace.meta.team", "ml"),
        ("sidetrace.meta.ticket", "T-1"),
    ] {
        assert_eq!(str_attr(&span, k), Some(v), "{k}");
    }
    assert_eq!(
        span.attr("tag.tags"),
        Some(&AttrValue::StrList(vec![
            "from-litellm".into(),
            "beta".into(),
            "eu".into()
        ]))
    );
    let seen = mock.last();
    for (name, _) in seen.headers.iter() {
        let n = name.as_str();
        assert!(
            !(n.starts_with("x-sidetrace")
                || n.starts_with("helicone")
                || n.starts_with("x-portkey")
                || n == "x-litellm-tags"
                || n == "baggage"),
            "{n} reached the upstream"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_non_streamed_call_carries_every_genai_attribute_of_the_design() {
    let mock = Mock::start(|_| nonstream_mock_reply()).await;
    let gw = gateway_for(&mock, "").await;
    post(
        &gw,
        "/openai/v1/chat/completions",
        &[("x-sidetrace-user-id", "u_1")],
        r#"{"model":"o4-mini","temperature":0.5,"max_completion_tokens":900,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    let span = spans(&gw, 1).await.remove(0);
    assert_eq!(span.name, "chat o4-mini");
    assert_eq!(span.status, SpanStatus::Unset);
    assert_eq!(str_attr(&span, "gen_ai.operation.name"), Some("chat"));
    assert_eq!(str_attr(&span, "gen_ai.provider.name"), Some("openai"));
    assert_eq!(str_attr(&span, "gen_ai.request.model"), Some("o4-mini"));
    assert_eq!(
        str_attr(&span, "gen_ai.response.model"),
        Some("o4-mini-2025-04-16")
    );
    assert_eq!(
        str_attr(&span, "gen_ai.response.id"),
        Some("chatcmpl-CJCk1PzR4vXb7NmQe2WtY9sLu5HaJ")
    );
    assert_eq!(
        span.attr("gen_ai.response.finish_reasons"),
        Some(&AttrValue::StrList(vec!["stop".into()]))
    );
    assert_eq!(
        span.attr("gen_ai.request.temperature"),
        Some(&AttrValue::Double(0.5))
    );
    assert_eq!(
        span.attr("gen_ai.request.max_tokens"),
        Some(&AttrValue::Int(900))
    );
    assert_eq!(
        span.attr("gen_ai.usage.input_tokens"),
        Some(&AttrValue::Int(1310))
    );
    assert_eq!(
        span.attr("gen_ai.usage.output_tokens"),
        Some(&AttrValue::Int(615))
    );
    assert_eq!(
        span.attr("gen_ai.usage.cache_read.input_tokens"),
        Some(&AttrValue::Int(1152))
    );
    assert_eq!(
        span.attr("gen_ai.usage.reasoning.output_tokens"),
        Some(&AttrValue::Int(448))
    );
    assert_eq!(str_attr(&span, "server.address"), Some("127.0.0.1"));
    assert_eq!(
        span.attr("server.port"),
        Some(&AttrValue::Int(i64::from(mock.addr.port())))
    );
    assert_eq!(
        span.attr("http.response.status_code"),
        Some(&AttrValue::Int(200))
    );
    assert_eq!(str_attr(&span, "user.id"), Some("u_1"));
    for deprecated in [
        "gen_ai.system",
        "gen_ai.usage.prompt_tokens",
        "gen_ai.usage.completion_tokens",
    ] {
        assert!(span.attr(deprecated).is_none(), "{deprecated}");
    }
    assert!(span.end_unix_nanos > span.start_unix_nanos);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_streamed_call_has_time_to_first_chunk_and_the_stream_flag() {
    let body = fixture("anthropic/stream_cache_tokens.sse");
    let mock =
        Mock::start(move |_| Reply::sse(&[std::str::from_utf8(&body).unwrap()], Duration::ZERO))
            .await;
    let gw = gateway_for(&mock, "").await;
    post(
        &gw,
        "/anthropic/v1/messages",
        &[],
        r#"{"model":"claude-sonnet-4-5","stream":true,"max_tokens":64,"messages":[]}"#,
    )
    .await;
    let span = spans(&gw, 1).await.remove(0);
    assert_eq!(
        span.attr("gen_ai.request.stream"),
        Some(&AttrValue::Bool(true))
    );
    assert!(
        matches!(span.attr("gen_ai.response.time_to_first_chunk"), Some(AttrValue::Double(t)) if *t > 0.0)
    );
    assert_eq!(str_attr(&span, "gen_ai.provider.name"), Some("anthropic"));
    assert_eq!(
        span.attr("gen_ai.usage.input_tokens"),
        Some(&AttrValue::Int(12147))
    );
    assert_eq!(
        span.attr("gen_ai.usage.cache_creation.input_tokens"),
        Some(&AttrValue::Int(1895))
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn an_upstream_error_sets_error_type_and_status() {
    let mock = Mock::start(|_| {
        Reply::json(
            429,
            &String::from_utf8(fixture("openai/error_rate_limit_429.json")).unwrap(),
        )
    })
    .await;
    let gw = gateway_for(&mock, "").await;
    post(
        &gw,
        "/openai/v1/chat/completions",
        &[],
        r#"{"model":"gpt-4o"}"#,
    )
    .await;
    let span = spans(&gw, 1).await.remove(0);
    // The provider's own words are the status: what a reader of the failed call wants first.
    let SpanStatus::Error(message) = &span.status else {
        panic!("{:?}", span.status)
    };
    assert!(
        message.starts_with("Rate limit reached for gpt-4o in organization org-Qx7Lm2"),
        "{message}"
    );
    assert!(str_attr(&span, "error.type").is_some());
    assert_eq!(
        span.attr("http.response.status_code"),
        Some(&AttrValue::Int(429))
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_provider_error_message_is_redacted_in_the_status_and_a_bare_error_says_what_failed() {
    let mock = Mock::start(|req| {
        if req.body.windows(4).any(|w| w == b"bare") {
            Reply::json(502, r#"{"error":{"type":"server_error"}}"#)
        } else {
            Reply::json(
                400,
                r#"{"error":{"message":"Invalid 'messages[0].content': 'mail jane@example.com' is not allowed.","type":"invalid_request_error","code":null}}"#,
            )
        }
    })
    .await;
    let gw = gateway_for(&mock, "").await;
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    post(&gw, "/openai/v1/chat/completions", &[], body).await;
    post(
        &gw,
        "/openai/v1/chat/completions",
        &[],
        r#"{"model":"bare"}"#,
    )
    .await;
    let spans = spans(&gw, 2).await;
    let status = |model: &str| {
        let span = spans
            .iter()
            .find(|s| str_attr(s, "gen_ai.request.model") == Some(model))
            .unwrap();
        match &span.status {
            SpanStatus::Error(m) => m.clone(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        status("gpt-4o"),
        "Invalid 'messages[0].content': 'mail [EMAIL]' is not allowed."
    );
    assert_eq!(status("bare"), "upstream answered 502");
    gw.shutdown().await;
}

const PII: &str = r#"{"model":"gpt-4o","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"I am jane@example.com, card 4111 1111 1111 1111, key sk-proj-abcdefghijklmnopqrstuvwxyz0123"}],"tools":[{"type":"function","function":{"name":"lookup_order","parameters":{"type":"object"}}}]}"#;

#[tokio::test]
async fn redacted_capture_keeps_the_content_without_personal_data() {
    let mock = Mock::start(|_| nonstream_mock_reply()).await;
    let gw = gateway_for(&mock, "[capture]\nlevel = \"redacted\"\n").await;
    post(&gw, "/openai/v1/chat/completions", &[], PII).await;
    let span = spans(&gw, 1).await.remove(0);
    let input = str_attr(&span, "gen_ai.input.messages").unwrap();
    assert!(
        input.contains("[EMAIL]") && input.contains("[CARD]") && input.contains("[API_KEY]"),
        "{input}"
    );
    assert!(
        !input.contains("jane@example.com") && !input.contains("4111"),
        "{input}"
    );
    assert!(
        str_attr(&span, "gen_ai.system_instructions")
            .unwrap()
            .contains("Be brief.")
    );
    assert!(
        str_attr(&span, "gen_ai.tool.definitions")
            .unwrap()
            .contains("lookup_order")
    );
    let output: serde_json::Value =
        serde_json::from_str(str_attr(&span, "gen_ai.output.messages").expect("output captured"))
            .unwrap();
    assert_eq!(output[0]["role"], "assistant");
    assert_eq!(output[0]["finish_reason"], "stop");
    let text = output[0]["parts"][0]["content"].as_str().unwrap();
    let fixture_text: serde_json::Value =
        serde_json::from_slice(&fixture("openai/chat_nonstream.json")).unwrap();
    assert_eq!(
        text,
        fixture_text["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
    );
    assert_eq!(
        mock.last().body,
        PII.as_bytes(),
        "the upstream gets the request as sent"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_caller_can_lower_the_capture_level_but_not_raise_it() {
    let mock = Mock::start(|_| nonstream_mock_reply()).await;
    let gw = gateway_for(&mock, "[capture]\nlevel = \"metadata\"\n").await;
    post(
        &gw,
        "/openai/v1/chat/completions",
        &[("x-sidetrace-capture", "full")],
        PII,
    )
    .await;
    post(
        &gw,
        "/openai/v1/chat/completions",
        &[("x-sidetrace-capture", "none")],
        PII,
    )
    .await;
    let s = spans(&gw, 2).await;
    assert!(
        str_attr(&s[0], "gen_ai.input.messages").is_none(),
        "metadata level has no text"
    );
    assert!(
        str_attr(&s[0], "gen_ai.tool.definitions")
            .unwrap()
            .contains("lookup_order"),
        "tool names are metadata"
    );
    assert!(
        !str_attr(&s[0], "gen_ai.tool.definitions")
            .unwrap()
            .contains("object")
    );
    assert!(str_attr(&s[1], "gen_ai.tool.definitions").is_none());
    gw.shutdown().await;
}

#[tokio::test]
async fn the_clients_api_key_appears_in_no_record_span_or_error_body() {
    let secret = "sk-proj-THISISASECRETKEY0123456789abcdef";
    let auth = format!("Bearer {secret}");
    let mock = Mock::start(|_| nonstream_mock_reply()).await;
    let dead = closed_port().await;
    let gw = gateway_for(
        &mock,
        &format!(
            "[capture]\nlevel = \"full\"\n[providers.deadprovider]\nbase_url = \"http://{dead}\"\n"
        ),
    )
    .await;
    let ok = post(
        &gw,
        "/openai/v1/chat/completions?key=other-secret",
        &[("authorization", &auth)],
        "{}",
    )
    .await;
    let bad = post(
        &gw,
        "/deadprovider/v1/chat/completions",
        &[("authorization", &auth)],
        "{}",
    )
    .await;
    let _ = spans(&gw, 2).await;
    let everything = format!(
        "{:?}{:?}{}{}{}",
        gw.recent_calls(),
        gw.recent_spans(),
        String::from_utf8_lossy(&ok.body),
        String::from_utf8_lossy(&bad.body),
        String::from_utf8_lossy(&admin_get(&gw, "/metrics").await.body),
    );
    assert!(!everything.contains(secret));
    assert!(
        !everything.contains("other-secret"),
        "query strings are not recorded"
    );
    assert_eq!(
        mock.last().headers["authorization"],
        auth.as_str(),
        "the key still reaches the provider"
    );
    gw.shutdown().await;
}
