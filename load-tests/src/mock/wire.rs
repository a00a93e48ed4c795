//! Wire shapes of the mock's answers, rendered with `format!` (no serde round trip on the hot
//! path), with the fields real OpenAI and Anthropic responses carry.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;

use crate::body::Piece;

const CHAT_MODEL: &str = "gpt-4o-mini-2024-07-18";
const CLAUDE_MODEL: &str = "claude-sonnet-4-20250514";
/// Tokens handed out in turn; plain ASCII, so they need no JSON escaping.
const WORDS: [&str; 16] = [
    "Hello",
    " there",
    "!",
    " This",
    " is",
    " a",
    " mock",
    " answer",
    " from",
    " the",
    " bench",
    " upstream",
    ",",
    " token",
    " by",
    " token",
];

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn piece(text: String, delayed: bool) -> Piece {
    Piece {
        bytes: Bytes::from(text),
        delayed,
    }
}

fn chat_usage(prompt: u64, completion: u64) -> String {
    format!(
        concat!(
            r#"{{"prompt_tokens":{p},"completion_tokens":{c},"total_tokens":{t},"#,
            r#""prompt_tokens_details":{{"cached_tokens":0,"audio_tokens":0}},"#,
            r#""completion_tokens_details":{{"reasoning_tokens":0,"audio_tokens":0,"#,
            r#""accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}}"#
        ),
        p = prompt,
        c = completion,
        t = prompt + completion
    )
}

/// A non-streamed chat completion whose answer has `words` tokens.
pub fn chat_completion(words: usize, prompt_tokens: u64) -> Bytes {
    let content: String = (0..words).map(|i| WORDS[i % WORDS.len()]).collect();
    Bytes::from(format!(
        concat!(
            r#"{{"id":"chatcmpl-bench{id:016x}","object":"chat.completion","created":{created},"#,
            r#""model":"{model}","choices":[{{"index":0,"message":{{"role":"assistant","#,
            r#""content":"{content}","refusal":null,"annotations":[]}},"logprobs":null,"#,
            r#""finish_reason":"stop"}}],"usage":{usage},"service_tier":"default","#,
            r#""system_fingerprint":"fp_560af6e559"}}"#
        ),
        id = next_id(),
        created = now_secs(),
        model = CHAT_MODEL,
        content = content,
        usage = chat_usage(prompt_tokens, words as u64),
    ))
}

/// A streamed chat completion: `chunks` content chunks (the first also carries the role), a
/// finish chunk, the usage chunk when asked for, then `[DONE]`. The delay comes before every
/// content chunk but the first and before the finish chunk, so `chunks` chunks at a delay of
/// 1 s take `chunks` seconds.
pub fn chat_stream(chunks: usize, include_usage: bool, prompt_tokens: u64) -> Vec<Piece> {
    let head = format!(
        concat!(
            r#"data: {{"id":"chatcmpl-bench{id:016x}","object":"chat.completion.chunk","#,
            r#""created":{created},"model":"{model}","service_tier":"default","#,
            r#""system_fingerprint":"fp_560af6e559","choices":["#
        ),
        id = next_id(),
        created = now_secs(),
        model = CHAT_MODEL,
    );
    // With include_usage, OpenAI puts "usage":null on every chunk but the last.
    let tail = if include_usage {
        "],\"usage\":null}\n\n"
    } else {
        "]}\n\n"
    };
    let mut pieces = Vec::with_capacity(chunks + 3);
    for i in 0..chunks {
        let role = if i == 0 { r#""role":"assistant","# } else { "" };
        let word = WORDS[i % WORDS.len()];
        pieces.push(piece(
            format!(
                r#"{head}{{"index":0,"delta":{{{role}"content":"{word}"}},"logprobs":null,"finish_reason":null}}{tail}"#
            ),
            i > 0,
        ));
    }
    pieces.push(piece(
        format!(r#"{head}{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"stop"}}{tail}"#),
        true,
    ));
    if include_usage {
        let usage = chat_usage(prompt_tokens, chunks as u64);
        pieces.push(piece(format!("{head}],\"usage\":{usage}}}\n\n"), false));
    }
    pieces.push(piece("data: [DONE]\n\n".to_string(), false));
    pieces
}

fn event(name: &str, data: &str, delayed: bool) -> Piece {
    piece(format!("event: {name}\ndata: {data}\n\n"), delayed)
}

/// A non-streamed Anthropic message whose answer has `words` tokens.
pub fn message(words: usize, prompt_tokens: u64) -> Bytes {
    let text: String = (0..words).map(|i| WORDS[i % WORDS.len()]).collect();
    Bytes::from(format!(
        concat!(
            r#"{{"id":"msg_01Bench{id:016x}","type":"message","role":"assistant","#,
            r#""model":"{model}","content":[{{"type":"text","text":"{text}"}}],"#,
            r#""stop_reason":"end_turn","stop_sequence":null,"usage":{{"input_tokens":{input},"#,
            r#""cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":{output},"#,
            r#""service_tier":"standard"}}}}"#
        ),
        id = next_id(),
        model = CLAUDE_MODEL,
        text = text,
        input = prompt_tokens,
        output = words,
    ))
}

/// An Anthropic Messages stream: message_start, one text block of `chunks` deltas, then
/// message_delta with the cumulative usage and message_stop. Delays as in [`chat_stream`].
pub fn messages_stream(chunks: usize, prompt_tokens: u64) -> Vec<Piece> {
    let mut pieces = Vec::with_capacity(chunks + 6);
    pieces.push(event(
        "message_start",
        &format!(
            concat!(
                r#"{{"type":"message_start","message":{{"id":"msg_01Bench{id:016x}","#,
                r#""type":"message","role":"assistant","model":"{model}","content":[],"#,
                r#""stop_reason":null,"stop_sequence":null,"usage":{{"input_tokens":{input},"#,
                r#""cache_creation_input_tokens":0,"cache_read_input_tokens":0,"#,
                r#""output_tokens":1,"service_tier":"standard"}}}}}}"#
            ),
            id = next_id(),
            model = CLAUDE_MODEL,
            input = prompt_tokens,
        ),
        false,
    ));
    pieces.push(event(
        "content_block_start",
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        false,
    ));
    pieces.push(event("ping", r#"{"type": "ping"}"#, false));
    for i in 0..chunks {
        let word = WORDS[i % WORDS.len()];
        pieces.push(event(
            "content_block_delta",
            &format!(
                r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"{word}"}}}}"#
            ),
            i > 0,
        ));
    }
    pieces.push(event(
        "content_block_stop",
        r#"{"type":"content_block_stop","index":0}"#,
        true,
    ));
    pieces.push(event(
        "message_delta",
        &format!(
            concat!(
                r#"{{"type":"message_delta","delta":{{"stop_reason":"end_turn","stop_sequence":null}},"#,
                r#""usage":{{"input_tokens":{input},"cache_creation_input_tokens":0,"#,
                r#""cache_read_input_tokens":0,"output_tokens":{output}}}}}"#
            ),
            input = prompt_tokens,
            output = chunks,
        ),
        false,
    ));
    pieces.push(event("message_stop", r#"{"type":"message_stop"}"#, false));
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(pieces: &[Piece]) -> String {
        pieces
            .iter()
            .map(|p| std::str::from_utf8(&p.bytes).unwrap())
            .collect()
    }

    fn data_lines(s: &str) -> Vec<serde_json::Value> {
        s.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    #[test]
    fn chat_stream_is_valid_json_chunks_with_usage_last() {
        let pieces = chat_stream(3, true, 10);
        let s = text(&pieces);
        assert!(s.ends_with("data: [DONE]\n\n"));
        let chunks = data_lines(&s);
        assert_eq!(chunks.len(), 5);
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[4]["choices"].as_array().unwrap().len(), 0);
        assert_eq!(chunks[4]["usage"]["completion_tokens"], 3);
        // chunks - 1 content delays plus the one before the finish chunk
        assert_eq!(pieces.iter().filter(|p| p.delayed).count(), 3);
    }

    #[test]
    fn chat_stream_without_include_usage_has_no_usage_chunk() {
        let chunks = data_lines(&text(&chat_stream(2, false, 10)));
        assert_eq!(chunks.len(), 3);
        assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    }

    #[test]
    fn whole_answers_are_valid_json() {
        let c: serde_json::Value = serde_json::from_slice(&chat_completion(4, 7)).unwrap();
        assert_eq!(c["usage"]["total_tokens"], 11);
        let m: serde_json::Value = serde_json::from_slice(&message(4, 7)).unwrap();
        assert_eq!(m["usage"]["output_tokens"], 4);
    }

    #[test]
    fn messages_stream_has_every_event_in_order() {
        let pieces = messages_stream(2, 9);
        let s = text(&pieces);
        let events: Vec<&str> = s
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            events,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let data = data_lines(&s);
        assert_eq!(data[6]["usage"]["output_tokens"], 2);
        assert_eq!(pieces.iter().filter(|p| p.delayed).count(), 2);
    }
}
