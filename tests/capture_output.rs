//! The output (text and tool calls) the body parser assembles when capture is on.
//!
//! The expected text and tool calls are computed here, independently, by a plain scan of each
//! fixture with `serde_json::Value`; every body is fed whole and one byte at a time.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use base64::Engine;
use serde_json::Value;
use sidetrace::{
    format::{
        BodyParser, CapturedOutput, ParserLimits, ResponseRecord, ToolCallOutput,
        eventstream::encode_frame,
    },
    provider::{WireFormat, builtin_quirks},
};

const SSE: &str = "text/event-stream";
const NDJSON: &str = "application/x-ndjson";
const EVENTSTREAM: &str = "application/vnd.amazon.eventstream";
const JSON: &str = "application/json";

/// Large enough never to cut a fixture.
const CAP: usize = 1 << 20;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/providers")
}

fn body(name: &str) -> Vec<u8> {
    let path = fixtures_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn limits(cap: usize) -> ParserLimits {
    ParserLimits {
        capture_output_bytes: cap,
        ..ParserLimits::default()
    }
}

fn parse(format: WireFormat, provider: &str, ct: &str, body: &[u8], cap: usize) -> ResponseRecord {
    let mut p = BodyParser::for_response(format, builtin_quirks(provider), Some(ct), limits(cap))
        .expect("parser");
    p.feed(body);
    p.finish(true)
}

fn parse_bytewise(
    format: WireFormat,
    provider: &str,
    ct: &str,
    body: &[u8],
    cap: usize,
) -> ResponseRecord {
    let mut p = BodyParser::for_response(format, builtin_quirks(provider), Some(ct), limits(cap))
        .expect("parser");
    for b in body.chunks(1) {
        p.feed(b);
    }
    p.finish(true)
}

/// The output, fed whole and one byte at a time: both must agree.
fn output(format: WireFormat, provider: &str, ct: &str, body: &[u8]) -> CapturedOutput {
    let whole = parse(format, provider, ct, body, CAP);
    let bytewise = parse_bytewise(format, provider, ct, body, CAP);
    assert_eq!(whole, bytewise, "fed whole and byte by byte");
    whole.output.expect("capture was on")
}

fn calls(triples: &[(&str, &str, &str)]) -> Vec<ToolCallOutput> {
    triples
        .iter()
        .map(|(id, name, arguments)| ToolCallOutput {
            id: (*id).to_owned(),
            name: (*name).to_owned(),
            arguments: (*arguments).to_owned(),
        })
        .collect()
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// The JSON payloads of an SSE body's `data:` lines (the fixtures used here have one data line
/// per event), without `[DONE]`.
fn sse_payloads(body: &[u8]) -> Vec<Value> {
    std::str::from_utf8(body)
        .expect("utf-8")
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("json data"))
        .collect()
}

fn ndjson_payloads(body: &[u8]) -> Vec<Value> {
    body.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("json line"))
        .collect()
}

/// The payloads of an AWS event-stream body: each frame is a 12-byte prelude (total length,
/// headers length, CRC), the headers, the payload and a 4-byte CRC.
fn eventstream_payloads(body: &[u8]) -> Vec<Value> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 12 <= body.len() {
        let u32_at = |i: usize| u32::from_be_bytes(body[i..i + 4].try_into().expect("4 bytes"));
        let total = u32_at(at) as usize;
        let headers = u32_at(at + 4) as usize;
        let payload = &body[at + 12 + headers..at + total - 4];
        out.push(serde_json::from_slice(payload).expect("json payload"));
        at += total;
    }
    out
}

/// OpenAI chat chunks: choice 0's content deltas, and its tool calls by index.
fn openai_chat_expected(body: &[u8]) -> (String, Vec<ToolCallOutput>) {
    let mut text = String::new();
    let mut tools: BTreeMap<u64, ToolCallOutput> = BTreeMap::new();
    for chunk in sse_payloads(body) {
        for choice in chunk["choices"].as_array().into_iter().flatten() {
            if choice["index"].as_u64().unwrap_or(0) != 0 {
                continue;
            }
            let delta = &choice["delta"];
            text.push_str(str_of(&delta["content"]));
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                let entry = tools
                    .entry(call["index"].as_u64().expect("index"))
                    .or_default();
                if let Some(name) = call["function"]["name"].as_str() {
                    entry.name = name.to_owned();
                }
                if let Some(id) = call["id"].as_str() {
                    entry.id = id.to_owned();
                }
                entry
                    .arguments
                    .push_str(str_of(&call["function"]["arguments"]));
            }
        }
    }
    (text, tools.into_values().collect())
}

/// Anthropic events: text deltas, and tool_use blocks with their input fragments by index.
fn anthropic_expected(body: &[u8]) -> (String, Vec<ToolCallOutput>) {
    let mut text = String::new();
    let mut tools: BTreeMap<u64, ToolCallOutput> = BTreeMap::new();
    for event in sse_payloads(body) {
        let index = event["index"].as_u64().unwrap_or(0);
        match str_of(&event["type"]) {
            "content_block_start" if event["content_block"]["type"] == "tool_use" => {
                let entry = tools.entry(index).or_default();
                entry.name = str_of(&event["content_block"]["name"]).to_owned();
                entry.id = str_of(&event["content_block"]["id"]).to_owned();
            }
            "content_block_delta" => match str_of(&event["delta"]["type"]) {
                "text_delta" => text.push_str(str_of(&event["delta"]["text"])),
                "input_json_delta" => tools
                    .entry(index)
                    .or_default()
                    .arguments
                    .push_str(str_of(&event["delta"]["partial_json"])),
                _ => {}
            },
            _ => {}
        }
    }
    (text, tools.into_values().collect())
}

#[test]
fn openai_chat_stream_text_is_the_concatenation_of_choice_0_content_deltas() {
    let body = body("openai/chat_stream_include_usage.sse");
    let (text, tools) = openai_chat_expected(&body);
    assert!(!text.is_empty());
    let out = output(WireFormat::ChatCompletions, "openai", SSE, &body);
    assert_eq!(out.text, text);
    assert_eq!(out.tool_calls, tools);
    assert!(!out.truncated);
}

#[test]
fn openai_parallel_tool_calls_are_reassembled_by_index_with_their_exact_arguments() {
    let body = body("openai/chat_stream_tool_calls.sse");
    let (text, tools) = openai_chat_expected(&body);
    let out = output(WireFormat::ChatCompletions, "openai", SSE, &body);
    assert_eq!(out.text, text);
    assert_eq!(out.tool_calls, tools);
    assert_eq!(
        out.tool_calls,
        calls(&[
            (
                "call_Xk29RbW7Lm3QpTf8vNd2YhGs",
                "get_weather",
                r#"{"city":"Paris","unit":"celsius"}"#
            ),
            (
                "call_Pq7ZmV2cKt9HwJx4sRb6NeLa",
                "get_weather",
                r#"{"city":"Tokyo","unit":"celsius"}"#
            ),
        ])
    );
    for call in &out.tool_calls {
        serde_json::from_str::<Value>(&call.arguments).expect("arguments are whole JSON");
    }
    assert!(!out.truncated);
}

#[test]
fn anthropic_tool_use_input_fragments_are_joined_and_the_text_comes_before() {
    let body = body("anthropic/stream_tool_use.sse");
    let (text, tools) = anthropic_expected(&body);
    let out = output(WireFormat::Messages, "anthropic", SSE, &body);
    assert_eq!(out.text, text);
    assert_eq!(
        out.text,
        "I'll look up the current status of that order for you."
    );
    assert_eq!(out.tool_calls, tools);
    assert_eq!(
        out.tool_calls,
        calls(&[(
            "toolu_01Bx8RnQ5wVt3LyKd7HsZm2P",
            "get_order_status",
            r#"{"order_id": "A-104472", "include_history": true}"#
        )])
    );
}

#[test]
fn tool_call_ids_and_names_are_read_with_capture_off() {
    for (file, format, want) in [
        (
            "openai/chat_stream_tool_calls.sse",
            WireFormat::ChatCompletions,
            vec![
                ("call_Xk29RbW7Lm3QpTf8vNd2YhGs", "get_weather"),
                ("call_Pq7ZmV2cKt9HwJx4sRb6NeLa", "get_weather"),
            ],
        ),
        (
            "anthropic/stream_tool_use.sse",
            WireFormat::Messages,
            vec![("toolu_01Bx8RnQ5wVt3LyKd7HsZm2P", "get_order_status")],
        ),
    ] {
        let body = body(file);
        for record in [
            parse(format, "openai", SSE, &body, 0),
            parse_bytewise(format, "openai", SSE, &body, 0),
        ] {
            assert_eq!(record.output, None, "capture is off");
            let got: Vec<(&str, &str)> = record
                .tool_calls
                .iter()
                .map(|t| (t.id.as_str(), t.name.as_str()))
                .collect();
            assert_eq!(got, want, "{file}");
        }
    }
}

#[test]
fn anthropic_stream_text_is_the_concatenation_of_its_text_deltas() {
    let body = body("anthropic/stream_cache_tokens.sse");
    let (text, tools) = anthropic_expected(&body);
    assert!(!text.is_empty());
    let out = output(WireFormat::Messages, "anthropic", SSE, &body);
    assert_eq!(out.text, text);
    assert_eq!(out.tool_calls, tools);
}

#[test]
fn responses_output_text_deltas_are_joined_and_match_the_done_text() {
    let body = body("openai/responses_stream_completed.sse");
    let events = sse_payloads(&body);
    let text: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| str_of(&e["delta"]))
        .collect();
    let done = events
        .iter()
        .find(|e| e["type"] == "response.output_text.done")
        .map(|e| str_of(&e["text"]).to_owned());
    assert_eq!(Some(&text), done.as_ref(), "the fixture agrees with itself");
    let out = output(WireFormat::Responses, "openai", SSE, &body);
    assert_eq!(out.text, text);
    assert!(out.tool_calls.is_empty());
}

#[test]
fn gemini_stream_text_is_the_concatenation_of_candidate_0_text_parts() {
    let body = body("gemini/stream_sse.sse");
    let text: String = sse_payloads(&body)
        .iter()
        .flat_map(|c| c["candidates"][0]["content"]["parts"].as_array().cloned())
        .flatten()
        .filter(|p| p["thought"] != true)
        .map(|p| str_of(&p["text"]).to_owned())
        .collect();
    assert!(!text.is_empty());
    let out = output(WireFormat::GenerateContent, "gemini", SSE, &body);
    assert_eq!(out.text, text);
}

#[test]
fn ollama_native_text_is_the_concatenation_of_message_content() {
    let body = body("ollama/native_chat_stream.ndjson");
    let text: String = ndjson_payloads(&body)
        .iter()
        .map(|l| str_of(&l["message"]["content"]).to_owned())
        .collect();
    assert!(!text.is_empty());
    let out = output(WireFormat::OllamaChat, "ollama", NDJSON, &body);
    assert_eq!(out.text, text);
}

#[test]
fn bedrock_converse_stream_text_is_the_concatenation_of_its_text_deltas() {
    let body = body("bedrock/converse_stream.eventstream");
    let text: String = eventstream_payloads(&body)
        .iter()
        .map(|p| str_of(&p["delta"]["text"]).to_owned())
        .collect();
    assert!(!text.is_empty());
    let out = output(WireFormat::ConverseStream, "bedrock", EVENTSTREAM, &body);
    assert_eq!(out.text, text);
}

#[test]
fn non_streamed_openai_and_anthropic_bodies_give_the_message_text() {
    let openai = body("openai/chat_nonstream.json");
    let v: Value = serde_json::from_slice(&openai).expect("json");
    let out = output(WireFormat::ChatCompletions, "openai", JSON, &openai);
    assert_eq!(out.text, str_of(&v["choices"][0]["message"]["content"]));
    assert!(!out.text.is_empty());

    let anthropic = body("anthropic/nonstream.json");
    let v: Value = serde_json::from_slice(&anthropic).expect("json");
    let text: String = v["content"]
        .as_array()
        .expect("content")
        .iter()
        .filter(|b| b["type"] == "text")
        .map(|b| str_of(&b["text"]).to_owned())
        .collect();
    let out = output(WireFormat::Messages, "anthropic", JSON, &anthropic);
    assert_eq!(out.text, text);
    assert!(!out.text.is_empty());

    let legacy = body("openai/completions_nonstream.json");
    let v: Value = serde_json::from_slice(&legacy).expect("json");
    let out = output(WireFormat::Completions, "openai", JSON, &legacy);
    assert_eq!(out.text, str_of(&v["choices"][0]["text"]));
}

#[test]
fn a_tiny_cap_keeps_exactly_that_many_bytes_and_marks_the_output_truncated() {
    let body = body("openai/chat_stream_include_usage.sse");
    let (text, _) = openai_chat_expected(&body);
    for record in [
        parse(WireFormat::ChatCompletions, "openai", SSE, &body, 10),
        parse_bytewise(WireFormat::ChatCompletions, "openai", SSE, &body, 10),
    ] {
        let out = record.output.expect("capture was on");
        assert_eq!(out.text, text[..10]);
        assert!(out.truncated);
    }
    // Text and arguments together stay within the cap.
    let body = self::body("openai/chat_stream_tool_calls.sse");
    let out = parse(WireFormat::ChatCompletions, "openai", SSE, &body, 40)
        .output
        .expect("on");
    let kept: usize = out.text.len()
        + out
            .tool_calls
            .iter()
            .map(|c| c.arguments.len())
            .sum::<usize>();
    assert!(kept <= 40, "{out:?}");
    assert!(out.truncated);
    assert_eq!(out.tool_calls[0].name, "get_weather");
}

#[test]
fn the_cap_cuts_on_a_character_boundary() {
    let chunk = |s: &str| {
        format!(
            "data: {{\"id\":\"c\",\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{s}\"}}}}]}}\n\n"
        )
    };
    let body = format!("{}{}data: [DONE]\n\n", chunk("ab"), chunk("é€"));
    let out = parse(
        WireFormat::ChatCompletions,
        "openai",
        SSE,
        body.as_bytes(),
        5,
    )
    .output
    .expect("on");
    assert_eq!(out.text, "abé");
    assert!(out.truncated);
}

#[test]
fn a_long_stream_keeps_no_more_than_the_cap() {
    let chunk = "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"0123456789\"}}]}\n\n";
    let mut p = BodyParser::for_response(
        WireFormat::ChatCompletions,
        builtin_quirks("openai"),
        Some(SSE),
        limits(1000),
    )
    .expect("parser");
    for _ in 0..50_000 {
        p.feed(chunk.as_bytes());
    }
    p.feed(b"data: [DONE]\n\n");
    let r = p.finish(true);
    let out = r.output.expect("on");
    assert_eq!(out.text.len(), 1000);
    assert!(
        out.text.capacity() < 4096,
        "the text did not grow past the cap"
    );
    assert!(out.truncated);
    assert!(r.stream_completed);
}

#[test]
fn with_capture_off_output_is_none_and_with_it_on_the_rest_of_the_record_is_unchanged() {
    let mut checked = 0;
    for (file, format, provider, ct) in [
        (
            "openai/chat_stream_include_usage.sse",
            WireFormat::ChatCompletions,
            "openai",
            SSE,
        ),
        (
            "openai/chat_stream_tool_calls.sse",
            WireFormat::ChatCompletions,
            "openai",
            SSE,
        ),
        (
            "openai/chat_stream_n2.sse",
            WireFormat::ChatCompletions,
            "openai",
            SSE,
        ),
        (
            "openai/chat_stream_midstream_error.sse",
            WireFormat::ChatCompletions,
            "openai",
            SSE,
        ),
        (
            "openai/chat_nonstream.json",
            WireFormat::ChatCompletions,
            "openai",
            JSON,
        ),
        (
            "openai/completions_nonstream.json",
            WireFormat::Completions,
            "openai",
            JSON,
        ),
        (
            "openai/embeddings.json",
            WireFormat::Embeddings,
            "openai",
            JSON,
        ),
        (
            "openai/responses_stream_completed.sse",
            WireFormat::Responses,
            "openai",
            SSE,
        ),
        (
            "openai/responses_stream_incomplete.sse",
            WireFormat::Responses,
            "openai",
            SSE,
        ),
        (
            "anthropic/stream_tool_use.sse",
            WireFormat::Messages,
            "anthropic",
            SSE,
        ),
        (
            "anthropic/stream_thinking.sse",
            WireFormat::Messages,
            "anthropic",
            SSE,
        ),
        (
            "anthropic/stream_overloaded_error.sse",
            WireFormat::Messages,
            "anthropic",
            SSE,
        ),
        (
            "anthropic/nonstream.json",
            WireFormat::Messages,
            "anthropic",
            JSON,
        ),
        (
            "gemini/stream_sse.sse",
            WireFormat::GenerateContent,
            "gemini",
            SSE,
        ),
        (
            "gemini/nonstream.json",
            WireFormat::GenerateContent,
            "gemini",
            JSON,
        ),
        (
            "ollama/native_chat_stream.ndjson",
            WireFormat::OllamaChat,
            "ollama",
            NDJSON,
        ),
        (
            "bedrock/converse_stream.eventstream",
            WireFormat::ConverseStream,
            "bedrock",
            EVENTSTREAM,
        ),
    ] {
        let body = body(file);
        let off = parse(format, provider, ct, &body, 0);
        assert_eq!(off.output, None, "{file}");
        for cap in [1, 10, CAP] {
            let mut on = parse_bytewise(format, provider, ct, &body, cap);
            assert!(on.output.is_some(), "{file}");
            on.output = None;
            assert_eq!(on, off, "{file} with a cap of {cap}");
        }
        checked += 1;
    }
    assert_eq!(checked, 17);
    assert_eq!(ParserLimits::default().capture_output_bytes, 0);
}

#[test]
fn only_choice_0_is_captured_when_n_is_above_1() {
    let body = body("openai/chat_stream_n2.sse");
    let (text, _) = openai_chat_expected(&body);
    let out = output(WireFormat::ChatCompletions, "openai", SSE, &body);
    assert_eq!(out.text, text);
}

#[test]
fn anthropic_thinking_is_not_output_text() {
    let body = body("anthropic/stream_thinking.sse");
    let (text, _) = anthropic_expected(&body);
    let out = output(WireFormat::Messages, "anthropic", SSE, &body);
    assert_eq!(out.text, text);
}

#[test]
fn non_streamed_tool_calls_keep_their_arguments_as_json_text_in_key_order() {
    let openai = r#"{"id":"c","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"b\":1,\"a\":2}"}}]},"finish_reason":"tool_calls"}]}"#;
    let out = output(
        WireFormat::ChatCompletions,
        "openai",
        JSON,
        openai.as_bytes(),
    );
    assert_eq!(
        out.tool_calls,
        calls(&[("call_1", "f", r#"{"b":1,"a":2}"#)])
    );

    let anthropic = r#"{"id":"msg_1","type":"message","model":"claude","content":[{"type":"text","text":"Let me check."},{"type":"tool_use","id":"toolu_1","name":"lookup","input":{"zeta":"z","alpha":[1,2]}}],"stop_reason":"tool_use","usage":{"input_tokens":1,"output_tokens":2}}"#;
    let out = output(
        WireFormat::Messages,
        "anthropic",
        JSON,
        anthropic.as_bytes(),
    );
    assert_eq!(out.text, "Let me check.");
    assert_eq!(
        out.tool_calls,
        calls(&[("toolu_1", "lookup", r#"{"zeta":"z","alpha":[1,2]}"#)])
    );

    let responses = r#"{"id":"resp_1","object":"response","model":"gpt-5","status":"completed","output":[{"type":"reasoning","summary":[]},{"type":"message","content":[{"type":"output_text","text":"Calling."}]},{"type":"function_call","call_id":"call_1","name":"get_weather","arguments":"{\"city\":\"Oslo\"}"}],"usage":{"input_tokens":1,"output_tokens":2}}"#;
    let out = output(WireFormat::Responses, "openai", JSON, responses.as_bytes());
    assert_eq!(out.text, "Calling.");
    assert_eq!(
        out.tool_calls,
        calls(&[("call_1", "get_weather", r#"{"city":"Oslo"}"#)])
    );

    let converse = r#"{"output":{"message":{"role":"assistant","content":[{"text":"Sure."},{"toolUse":{"toolUseId":"t1","name":"search","input":{"q":"s3"}}}]}},"stopReason":"tool_use","usage":{"inputTokens":1,"outputTokens":2}}"#;
    let out = output(WireFormat::Converse, "bedrock", JSON, converse.as_bytes());
    assert_eq!(out.text, "Sure.");
    assert_eq!(out.tool_calls, calls(&[("t1", "search", r#"{"q":"s3"}"#)]));
}

#[test]
fn responses_function_call_arguments_stream_in_fragments() {
    let events = [
        r#"{"type":"response.created","response":{"id":"resp_1","model":"gpt-5","status":"in_progress"}}"#,
        r#"{"type":"response.output_item.added","output_index":0,"item":{"type":"function_call","id":"fc_1","call_id":"call_1","name":"get_weather","arguments":""}}"#,
        r#"{"type":"response.function_call_arguments.delta","output_index":0,"item_id":"fc_1","delta":"{\"city\":"}"#,
        r#"{"type":"response.function_call_arguments.delta","output_index":0,"item_id":"fc_1","delta":"\"Oslo\"}"}"#,
        r#"{"type":"response.function_call_arguments.done","output_index":0,"item_id":"fc_1","arguments":"{\"city\":\"Oslo\"}"}"#,
        r#"{"type":"response.output_item.done","output_index":0,"item":{"type":"function_call","id":"fc_1","name":"get_weather","arguments":"{\"city\":\"Oslo\"}"}}"#,
        r#"{"type":"response.output_item.added","output_index":1,"item":{"type":"function_call","id":"fc_2","name":"get_time","arguments":""}}"#,
        r#"{"type":"response.function_call_arguments.done","output_index":1,"item_id":"fc_2","arguments":"{}"}"#,
        r#"{"type":"response.completed","response":{"id":"resp_1","model":"gpt-5","status":"completed","output":[{"type":"function_call","name":"get_weather","arguments":"{\"city\":\"Oslo\"}"}],"usage":{"input_tokens":1,"output_tokens":2}}}"#,
    ];
    let body: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    let out = output(WireFormat::Responses, "openai", SSE, body.as_bytes());
    assert_eq!(
        out.tool_calls,
        calls(&[
            ("call_1", "get_weather", r#"{"city":"Oslo"}"#),
            ("", "get_time", "{}")
        ])
    );
    assert_eq!(out.text, "");
}

#[test]
fn gemini_function_calls_are_whole_and_thought_parts_are_not_text() {
    let chunks = [
        r#"{"candidates":[{"content":{"parts":[{"text":"planning","thought":true},{"text":"Checking "}],"role":"model"},"index":0}],"modelVersion":"gemini-2.5-flash","responseId":"r1"}"#,
        r#"{"candidates":[{"content":{"parts":[{"text":"other candidate"}],"role":"model"},"index":1}],"modelVersion":"gemini-2.5-flash","responseId":"r1"}"#,
        r#"{"candidates":[{"content":{"parts":[{"text":"now."},{"functionCall":{"name":"get_weather","args":{"city":"Oslo","days":3}}}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":4},"modelVersion":"gemini-2.5-flash","responseId":"r1"}"#,
    ];
    let sse: String = chunks
        .iter()
        .map(|c| format!("data: {c}\r\n\r\n"))
        .collect();
    let out = output(WireFormat::GenerateContent, "gemini", SSE, sse.as_bytes());
    assert_eq!(out.text, "Checking now.");
    assert_eq!(
        out.tool_calls,
        calls(&[(
            "get_weather#0",
            "get_weather",
            r#"{"city":"Oslo","days":3}"#
        )]),
        "a call without an id gets the synthetic <name>#<n>"
    );
    // The same chunks as a JSON array (`streamGenerateContent` without `alt=sse`).
    let array = format!("[{}]", chunks.join(",\n"));
    let same = output(
        WireFormat::GenerateContent,
        "gemini",
        JSON,
        array.as_bytes(),
    );
    assert_eq!(same, out);
}

#[test]
fn ollama_tool_calls_and_generate_responses_are_captured() {
    let chat = concat!(
        r#"{"model":"llama3.2","message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"get_weather","arguments":{"city":"Oslo"}}}]},"done":false}"#,
        "\n",
        r#"{"model":"llama3.2","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","prompt_eval_count":3,"eval_count":4}"#,
        "\n",
    );
    let out = output(WireFormat::OllamaChat, "ollama", NDJSON, chat.as_bytes());
    assert_eq!(
        out.tool_calls,
        calls(&[("", "get_weather", r#"{"city":"Oslo"}"#)])
    );

    let generate = concat!(
        r#"{"model":"llama3.2","response":"Hel","done":false}"#,
        "\n",
        r#"{"model":"llama3.2","response":"lo","done":false}"#,
        "\n",
        r#"{"model":"llama3.2","response":"","done":true,"done_reason":"stop","eval_count":2}"#,
        "\n",
    );
    let out = output(
        WireFormat::OllamaGenerate,
        "ollama",
        NDJSON,
        generate.as_bytes(),
    );
    assert_eq!(out.text, "Hello");
}

fn frame(name: &str, payload: &str) -> Vec<u8> {
    encode_frame(
        &[
            (":event-type", name),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.as_bytes(),
    )
}

#[test]
fn bedrock_converse_tool_use_input_fragments_are_joined_by_block_index() {
    let mut body = frame("messageStart", r#"{"role":"assistant"}"#);
    for (name, payload) in [
        (
            "contentBlockDelta",
            r#"{"contentBlockIndex":0,"delta":{"text":"Looking."}}"#,
        ),
        ("contentBlockStop", r#"{"contentBlockIndex":0}"#),
        (
            "contentBlockStart",
            r#"{"contentBlockIndex":1,"start":{"toolUse":{"toolUseId":"t1","name":"search"}}}"#,
        ),
        (
            "contentBlockDelta",
            r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"{\"q\":"}}}"#,
        ),
        (
            "contentBlockDelta",
            r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"\"s3\"}"}}}"#,
        ),
        ("contentBlockStop", r#"{"contentBlockIndex":1}"#),
        ("messageStop", r#"{"stopReason":"tool_use"}"#),
        (
            "metadata",
            r#"{"usage":{"inputTokens":1,"outputTokens":2}}"#,
        ),
    ] {
        body.extend(frame(name, payload));
    }
    let out = output(WireFormat::ConverseStream, "bedrock", EVENTSTREAM, &body);
    assert_eq!(out.text, "Looking.");
    assert_eq!(out.tool_calls, calls(&[("t1", "search", r#"{"q":"s3"}"#)]));
}

#[test]
fn bedrock_invoke_model_streams_capture_the_anthropic_events_inside() {
    let chunk = |event: &str| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(event);
        frame("chunk", &format!(r#"{{"bytes":"{b64}"}}"#))
    };
    let mut body = chunk(
        r#"{"type":"message_start","message":{"id":"msg_bdrk_1","model":"claude","usage":{"input_tokens":1,"output_tokens":1}}}"#,
    );
    for event in [
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" there"}}"#,
        r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"f","input":{}}}"#,
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"x\":"}}"#,
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"1}"}}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":5}}"#,
        r#"{"type":"message_stop"}"#,
    ] {
        body.extend(chunk(event));
    }
    let out = output(
        WireFormat::InvokeModelWithResponseStream,
        "bedrock",
        EVENTSTREAM,
        &body,
    );
    assert_eq!(out.text, "Hi there");
    assert_eq!(out.tool_calls, calls(&[("toolu_1", "f", r#"{"x":1}"#)]));
}
