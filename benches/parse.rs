//! Parser throughput on long realistic streams, fed through `BodyParser` in 4 KiB reads.
//!
//! The `bytes` group reports MB/s per stream, the `events` group time per event.

use std::hint::black_box;

use criterion::{
    BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main, measurement::WallTime,
};
use sidetrace::{
    format::{BodyParser, ParserLimits, eventstream::encode_frame},
    provider::WireFormat,
};

const CHUNKS: usize = 2_000;
const READ: usize = 4 * 1024;

/// Words to cycle through as content, some of them multi-byte.
const WORDS: &[&str] = &[
    " The",
    " capital",
    " of",
    " France",
    " is",
    " Paris",
    ".",
    " 你好",
    " naïve",
    " →",
    " \\\"quoted\\\"",
];

struct Stream {
    name: &'static str,
    format: WireFormat,
    provider: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    events: u64,
}

/// OpenAI chat: the shape of `openai/chat_stream_include_usage.sse`, 2,000 content chunks.
fn openai_chat(continuous_usage: bool) -> Stream {
    let head = r#"{"id":"chatcmpl-CJ7xQ2mVtR8bNwE4kLpY1sZ9aHdFg","object":"chat.completion.chunk","created":1767312345,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_560af6e559","choices":"#;
    let mut body = String::new();
    let usage = |n: usize| {
        if continuous_usage {
            format!(
                r#"{{"prompt_tokens":24,"completion_tokens":{n},"total_tokens":{}}}"#,
                24 + n
            )
        } else {
            "null".to_owned()
        }
    };
    body.push_str(&format!(
        "data: {head}[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":{},\"obfuscation\":\"2M69i7WdDqg\"}}\n\n",
        usage(0)
    ));
    for i in 0..CHUNKS {
        let word = WORDS[i % WORDS.len()];
        body.push_str(&format!(
            "data: {head}[{{\"index\":0,\"delta\":{{\"content\":\"{word}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":{},\"obfuscation\":\"{}\"}}\n\n",
            usage(i + 1),
            &"mO6SfyNVcEQMKFcxiX"[..(i % 15) + 3]
        ));
    }
    body.push_str(&format!(
        "data: {head}[{{\"index\":0,\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}],\"usage\":{},\"obfuscation\":\"qMrqr0XgqojNIdi\"}}\n\n",
        usage(CHUNKS)
    ));
    body.push_str(&format!(
        "data: {head}[],\"usage\":{{\"prompt_tokens\":24,\"completion_tokens\":{CHUNKS},\"total_tokens\":{},\"prompt_tokens_details\":{{\"cached_tokens\":0,\"audio_tokens\":0}},\"completion_tokens_details\":{{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}},\"obfuscation\":\"UTrTvQP4bN\"}}\n\n",
        CHUNKS + 24
    ));
    body.push_str("data: [DONE]\n\n");
    Stream {
        name: if continuous_usage {
            "openai_chat_usage_on_every_chunk"
        } else {
            "openai_chat"
        },
        format: WireFormat::ChatCompletions,
        provider: if continuous_usage { "vllm" } else { "openai" },
        content_type: "text/event-stream; charset=utf-8",
        body: body.into_bytes(),
        events: CHUNKS as u64 + 4,
    }
}

/// OpenAI Responses: created, in_progress, 2,000 text deltas, completed.
fn openai_responses() -> Stream {
    let response = |status: &str, usage: &str| {
        format!(
            r#"{{"id":"resp_06b2d7c1a4e5f8091a2b3c4d5e6f708192a3b4c5d6e7f80910","object":"response","created_at":1767320000,"status":"{status}","error":null,"incomplete_details":null,"model":"gpt-5-mini-2025-08-07","output":[],"parallel_tool_calls":true,"reasoning":{{"effort":"medium","summary":null}},"service_tier":"auto","store":true,"temperature":1.0,"text":{{"format":{{"type":"text"}},"verbosity":"medium"}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":{usage},"user":null,"metadata":{{}}}}"#
        )
    };
    let mut body = String::new();
    for (i, kind) in ["response.created", "response.in_progress"]
        .iter()
        .enumerate()
    {
        body.push_str(&format!(
            "event: {kind}\ndata: {{\"type\":\"{kind}\",\"response\":{},\"sequence_number\":{i}}}\n\n",
            response("in_progress", "null")
        ));
    }
    for i in 0..CHUNKS {
        let word = WORDS[i % WORDS.len()];
        body.push_str(&format!(
            "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"item_id\":\"msg_06b2d7c1a4e5f80900695f1e3f4a5b6c7d8e9f0a1b2c3d4e5f\",\"output_index\":1,\"content_index\":0,\"delta\":\"{word}\",\"logprobs\":[],\"obfuscation\":\"5eBj8h0eD9zQz\",\"sequence_number\":{}}}\n\n",
            i + 2
        ));
    }
    body.push_str(&format!(
        "event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{},\"sequence_number\":{}}}\n\n",
        response(
            "completed",
            r#"{"input_tokens":86,"input_tokens_details":{"cached_tokens":0},"output_tokens":2000,"output_tokens_details":{"reasoning_tokens":320},"total_tokens":2086}"#
        ),
        CHUNKS + 2
    ));
    Stream {
        name: "openai_responses",
        format: WireFormat::Responses,
        provider: "openai",
        content_type: "text/event-stream; charset=utf-8",
        body: body.into_bytes(),
        events: CHUNKS as u64 + 3,
    }
}

/// Anthropic Messages: the shape of `anthropic/stream_cache_tokens.sse`, 2,000 text deltas.
fn anthropic() -> Stream {
    let mut body = String::new();
    body.push_str("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01KfR7wZ3nXyQ2vT8pLmB4sD\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":1895,\"cache_read_input_tokens\":10240,\"cache_creation\":{\"ephemeral_5m_input_tokens\":1895,\"ephemeral_1h_input_tokens\":0},\"output_tokens\":2,\"service_tier\":\"standard\"}}}\n\n");
    body.push_str("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
    body.push_str("event: ping\ndata: {\"type\": \"ping\"}\n\n");
    for i in 0..CHUNKS {
        let word = WORDS[i % WORDS.len()];
        body.push_str(&format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{word}\"}}}}\n\n"
        ));
    }
    body.push_str(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    );
    body.push_str("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":1895,\"cache_read_input_tokens\":10240,\"output_tokens\":2000}}\n\n");
    body.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    Stream {
        name: "anthropic_messages",
        format: WireFormat::Messages,
        provider: "anthropic",
        content_type: "text/event-stream; charset=utf-8",
        body: body.into_bytes(),
        events: CHUNKS as u64 + 6,
    }
}

/// Gemini `alt=sse`: the shape of `gemini/stream_sse.sse` (CRLF, running usage on every chunk).
fn gemini() -> Stream {
    let mut body = String::new();
    for i in 0..CHUNKS {
        let word = WORDS[i % WORDS.len()];
        let finish = if i + 1 == CHUNKS {
            "\"finishReason\": \"STOP\","
        } else {
            ""
        };
        body.push_str(&format!(
            "data: {{\"candidates\": [{{\"content\": {{\"parts\": [{{\"text\": \"{word}\"}}],\"role\": \"model\"}},{finish}\"index\": 0}}],\"usageMetadata\": {{\"promptTokenCount\": 23,\"candidatesTokenCount\": {},\"totalTokenCount\": {},\"promptTokensDetails\": [{{\"modality\": \"TEXT\",\"tokenCount\": 23}}],\"thoughtsTokenCount\": 611}},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"Zq1TaeWBJ8OnvdIPqLXYiAk\"}}\r\n\r\n",
            i + 1,
            i + 1 + 23 + 611
        ));
    }
    Stream {
        name: "gemini_sse",
        format: WireFormat::GenerateContent,
        provider: "gemini",
        content_type: "text/event-stream",
        body: body.into_bytes(),
        events: CHUNKS as u64,
    }
}

/// Ollama `/api/chat`: 2,000 NDJSON lines and the `done` object.
fn ollama() -> Stream {
    let mut body = String::new();
    for i in 0..CHUNKS {
        let word = WORDS[i % WORDS.len()];
        body.push_str(&format!(
            "{{\"model\":\"llama3.2:3b\",\"created_at\":\"2026-01-02T09:14:21.118240Z\",\"message\":{{\"role\":\"assistant\",\"content\":\"{word}\"}},\"done\":false}}\n"
        ));
    }
    body.push_str("{\"model\":\"llama3.2:3b\",\"created_at\":\"2026-01-02T09:14:21.742983Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"total_duration\":1287390250,\"load_duration\":612844708,\"prompt_eval_count\":36,\"prompt_eval_duration\":88310541,\"eval_count\":2000,\"eval_duration\":563112083}\n");
    Stream {
        name: "ollama_ndjson",
        format: WireFormat::OllamaChat,
        provider: "ollama",
        content_type: "application/x-ndjson",
        body: body.into_bytes(),
        events: CHUNKS as u64 + 1,
    }
}

/// Bedrock ConverseStream: the frames of `bedrock/converse_stream.eventstream`, 2,000 deltas.
fn bedrock_converse() -> Stream {
    let frame = |name: &str, payload: &str| {
        encode_frame(
            &[
                (":event-type", name),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            payload.as_bytes(),
        )
    };
    let mut body = frame(
        "messageStart",
        r#"{"p":"abcdefghijklmnopqrstuvw","role":"assistant"}"#,
    );
    for i in 0..CHUNKS {
        let word = WORDS[i % WORDS.len()];
        body.extend(frame(
            "contentBlockDelta",
            &format!(
                r#"{{"contentBlockIndex":0,"delta":{{"text":"{word}"}},"p":"{}"}}"#,
                &"abcdefghijklmnopqrstuvwxyzAB"[..(i % 20) + 8]
            ),
        ));
    }
    body.extend(frame(
        "contentBlockStop",
        r#"{"contentBlockIndex":0,"p":"abcdefghijklmnopqrs"}"#,
    ));
    body.extend(frame(
        "messageStop",
        r#"{"p":"abcdefghijklmn","stopReason":"end_turn"}"#,
    ));
    body.extend(frame(
        "metadata",
        r#"{"metrics":{"latencyMs":1534},"p":"abcdefgh","usage":{"cacheReadInputTokens":1824,"cacheWriteInputTokens":0,"inputTokens":23,"outputTokens":2000,"totalTokens":3847}}"#,
    ));
    Stream {
        name: "bedrock_converse_stream",
        format: WireFormat::ConverseStream,
        provider: "bedrock",
        content_type: "application/vnd.amazon.eventstream",
        body,
        events: CHUNKS as u64 + 4,
    }
}

/// Parses a whole stream; `capture_output_bytes` > 0 also assembles the output, as with
/// `[capture] level = "redacted"` or `"full"`.
fn run(s: &Stream, capture_output_bytes: usize) -> u64 {
    let limits = ParserLimits {
        capture_output_bytes,
        ..ParserLimits::default()
    };
    let mut p = BodyParser::for_response(
        s.format,
        sidetrace::provider::builtin_quirks(s.provider),
        Some(s.content_type),
        limits,
    )
    .expect("inspected format");
    for read in s.body.chunks(READ) {
        p.feed(black_box(read));
    }
    let record = p.finish(true);
    assert!(record.stream_completed, "{}: {record:?}", s.name);
    assert_eq!(record.events, s.events, "{}", s.name);
    record.events
}

fn streams() -> Vec<Stream> {
    vec![
        openai_chat(false),
        openai_chat(true),
        openai_responses(),
        anthropic(),
        gemini(),
        ollama(),
        bedrock_converse(),
    ]
}

fn bench_group(
    g: &mut BenchmarkGroup<'_, WallTime>,
    streams: &[Stream],
    per_event: bool,
    capture: usize,
) {
    for s in streams {
        g.throughput(if per_event {
            Throughput::Elements(s.events)
        } else {
            Throughput::Bytes(s.body.len() as u64)
        });
        g.bench_function(s.name, |b| b.iter(|| run(s, capture)));
    }
}

fn parse(c: &mut Criterion) {
    let streams = streams();
    for s in &streams {
        run(s, 0);
        println!(
            "{}: {} bytes, {} events, {:.0} bytes/event",
            s.name,
            s.body.len(),
            s.events,
            s.body.len() as f64 / s.events as f64
        );
    }
    bench_group(&mut c.benchmark_group("bytes"), &streams, false, 0);
    bench_group(&mut c.benchmark_group("events"), &streams, true, 0);
    // Output capture on: every content event is decoded for its text.
    bench_group(&mut c.benchmark_group("captured"), &streams, false, 1 << 20);
}

criterion_group!(benches, parse);
criterion_main!(benches);
