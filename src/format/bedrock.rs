//! AWS Bedrock: Converse and ConverseStream, and InvokeModel (streamed or not) for Claude; and
//! what their requests say.
//!
//! InvokeModelWithResponseStream chunks carry base64 Anthropic stream events, which go through
//! the Anthropic extractor.

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

use super::tree::Json;
use super::{
    EventKind, Extractor, Progress, ResponseRecord, Usage,
    anthropic::AnthropicMessages,
    json::{Count, Filled, FinishReasons, Obj, Objs, Text, set_error, sum},
    output::{JsonArg, OutputBuilder},
    request::{Input, RequestApi, RequestFields, ToolResult, path_segment_after, result_text},
};
use crate::trace::metadata::percent_decode;

/// A ConverseStream event payload (the frame's `:event-type` says which), or a whole Converse
/// body, or a Bedrock error body (`{"message": …}`).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ConverseEvent<'a> {
    #[serde(borrow)]
    stop_reason: Text<'a>,
    usage: Obj<RawUsage>,
    /// The content block a `contentBlockStart` or `contentBlockDelta` is about.
    content_block_index: Count,
    /// `contentBlockDelta`.
    #[serde(borrow)]
    delta: Obj<Block<'a>>,
    /// `contentBlockStart`.
    #[serde(borrow)]
    start: Obj<Block<'a>>,
    /// Non-streamed body.
    #[serde(borrow)]
    output: Obj<Output<'a>>,
    /// Error bodies: `message` (or `Message`), and sometimes `__type`.
    #[serde(borrow)]
    message: Text<'a>,
    #[serde(borrow, rename = "Message")]
    message_upper: Text<'a>,
    #[serde(borrow, rename = "__type")]
    error_type: Text<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct RawUsage {
    input_tokens: Count,
    output_tokens: Count,
    cache_read_input_tokens: Count,
    cache_write_input_tokens: Count,
    /// Duplicates seen in live traffic; used only when the documented names are missing.
    cache_read_input_token_count: Count,
    cache_write_input_token_count: Count,
}

impl RawUsage {
    /// `inputTokens` excludes cache reads and writes (Anthropic semantics).
    fn normalise(&self) -> Usage {
        let read = self
            .cache_read_input_tokens
            .0
            .or(self.cache_read_input_token_count.0);
        let write = self
            .cache_write_input_tokens
            .0
            .or(self.cache_write_input_token_count.0);
        Usage {
            input_tokens: Some(sum(&[self.input_tokens.0, read, write])),
            output_tokens: Some(self.output_tokens.0.unwrap_or(0)),
            cached_input_tokens: read,
            cache_creation_input_tokens: write,
            cache_creation_1h_input_tokens: None,
            reasoning_tokens: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Output<'a> {
    #[serde(borrow)]
    message: Obj<Message<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Message<'a> {
    #[serde(borrow)]
    content: Objs<Block<'a>>,
}

/// A content block, a block delta or a block start: `text`, `toolUse` or reasoning.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Block<'a> {
    #[serde(borrow)]
    text: Text<'a>,
    #[serde(borrow)]
    tool_use: Obj<ToolUse<'a>>,
    reasoning_content: Filled,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
struct ToolUse<'a> {
    #[serde(borrow)]
    tool_use_id: Text<'a>,
    #[serde(borrow)]
    name: Text<'a>,
    /// A string fragment in a delta, an object in a whole body.
    #[serde(borrow)]
    input: JsonArg<'a>,
}

/// An AWS error type such as `com.amazon.coral.validate#ValidationException`, without its
/// namespace.
fn short_error_type(t: &str) -> &str {
    t.rsplit_once('#').map_or(t, |(_, name)| name)
}

/// Records a Bedrock JSON error body if `e` is one; returns whether it was.
fn bedrock_error_body(e: &ConverseEvent<'_>, record: &mut ResponseRecord) -> bool {
    let message = e.message.as_str().or(e.message_upper.as_str());
    if message.is_none() && e.error_type.as_str().is_none() {
        return false;
    }
    let kind = e.error_type.non_empty().map(short_error_type);
    set_error(record, kind, message);
    true
}

#[derive(Default)]
pub struct Converse {
    finish: FinishReasons,
    stopped: bool,
    metadata: bool,
}

/// Feeds a `contentBlockStart` or `contentBlockDelta` event to the output builder; tool calls
/// are keyed by their content block index.
fn capture_event(out: &mut OutputBuilder, name: &str, e: &ConverseEvent<'_>) {
    let key = e.content_block_index.0;
    if name == "contentBlockStart" {
        if let Some(t) = e.start.0.as_ref().and_then(|s| s.tool_use.0.as_ref()) {
            out.tool_start(
                key,
                t.tool_use_id.non_empty(),
                t.name.as_str().unwrap_or(""),
            );
        }
    } else if let Some(d) = &e.delta.0 {
        out.text(d.text.as_str().unwrap_or(""));
        if let Some(t) = &d.tool_use.0 {
            out.tool_args(key, t.input.as_str());
        }
    }
}

/// Feeds the content blocks of a whole Converse body.
fn capture_body(out: &mut OutputBuilder, e: &ConverseEvent<'_>) {
    let Some(m) = e.output.0.as_ref().and_then(|o| o.message.0.as_ref()) else {
        return;
    };
    for block in &m.content.0 {
        out.text(block.text.as_str().unwrap_or(""));
        if let Some(t) = &block.tool_use.0 {
            out.tool_call(
                t.tool_use_id.non_empty(),
                t.name.as_str().unwrap_or(""),
                t.input.as_str(),
            );
        }
    }
}

impl Extractor for Converse {
    fn on_event(&mut self, name: &str, data: &str, p: &mut Progress) -> EventKind {
        // Frame headers name the event, so content deltas need no decoding once output started
        // (unless capture wants them).
        let wanted = match name {
            "messageStop" | "metadata" => true,
            "contentBlockDelta" => !p.started || p.capturing(),
            // A tool call's id and name are read whatever the capture.
            "contentBlockStart" => true,
            _ => name.ends_with("Exception"),
        };
        if !wanted {
            return EventKind::Other;
        }
        let Ok(e) = serde_json::from_str::<ConverseEvent<'_>>(data) else {
            p.malformed();
            return EventKind::Other;
        };
        match name {
            "messageStop" => {
                self.stopped = true;
                if let Some(reason) = e.stop_reason.as_str() {
                    self.finish.set(0, reason, &mut p.record);
                }
            }
            "metadata" => {
                self.metadata = true;
                if let Some(u) = &e.usage.0 {
                    p.record.usage = u.normalise();
                }
            }
            "contentBlockDelta" => {
                if p.capturing() {
                    capture_event(&mut p.output, name, &e);
                }
                p.started |= e.delta.0.as_ref().is_some_and(|d| {
                    d.text.non_empty().is_some() || d.tool_use.0.is_some() || d.reasoning_content.0
                });
            }
            "contentBlockStart" => {
                capture_event(&mut p.output, name, &e);
                p.started |= e.start.0.as_ref().is_some_and(|s| s.tool_use.0.is_some());
            }
            // An exception sent as an ordinary event.
            _ => self.on_exception(name, data, p),
        }
        // `messageStop` ends the message, and `metadata` (the usage) follows it as the last
        // event: a stream is whole only with both.
        p.ended = self.stopped && self.metadata;
        EventKind::Other
    }

    fn on_json(&mut self, body: &[u8], p: &mut Progress) {
        let Ok(e) = super::json::from_bytes::<ConverseEvent<'_>>(body) else {
            p.malformed();
            p.json_body = Some(false);
            return;
        };
        // Text only when capture is on; tool call ids and names always.
        capture_body(&mut p.output, &e);
        let success =
            e.output.0.is_some() || e.stop_reason.as_str().is_some() || e.usage.0.is_some();
        if success {
            if let Some(reason) = e.stop_reason.as_str() {
                self.finish.set(0, reason, &mut p.record);
            }
            if let Some(u) = &e.usage.0 {
                p.record.usage = u.normalise();
            }
        } else {
            bedrock_error_body(&e, &mut p.record);
        }
        p.json_body = Some(success && p.record.error.is_none());
    }
}

/// An InvokeModelWithResponseStream `chunk` payload.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Chunk<'a> {
    #[serde(borrow)]
    bytes: Text<'a>,
}

#[derive(Default)]
pub struct InvokeModel {
    inner: AnthropicMessages,
    /// Decoded event bytes, reused across chunks.
    decoded: Vec<u8>,
}

impl Extractor for InvokeModel {
    fn on_event(&mut self, name: &str, data: &str, p: &mut Progress) -> EventKind {
        if name.ends_with("Exception") {
            self.on_exception(name, data, p);
            return EventKind::Other;
        }
        if name != "chunk" && !name.is_empty() {
            return EventKind::Other;
        }
        let Some(b64) = serde_json::from_str::<Chunk<'_>>(data)
            .ok()
            .and_then(|c| c.bytes.0)
        else {
            p.malformed();
            return EventKind::Other;
        };
        self.decoded.clear();
        if base64::engine::general_purpose::STANDARD
            .decode_vec(b64.as_bytes(), &mut self.decoded)
            .is_err()
        {
            p.malformed();
            return EventKind::Other;
        }
        self.inner.on_message_event("", &self.decoded, p);
        EventKind::Other
    }

    fn on_json(&mut self, body: &[u8], p: &mut Progress) {
        // A Bedrock error body has no `type`; an Anthropic body (message or error) has one.
        if let Ok(e) = super::json::from_bytes::<ConverseEvent<'_>>(body)
            && !has_type(body)
            && bedrock_error_body(&e, &mut p.record)
        {
            p.json_body = Some(false);
            return;
        }
        self.inner.on_message_json(body, p);
    }
}

fn has_type(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Typed<'a> {
        #[serde(borrow, default, rename = "type")]
        kind: Text<'a>,
    }
    super::json::from_bytes::<Typed<'_>>(body).is_ok_and(|t| t.kind.as_str().is_some())
}

// The request side.

/// Converse and InvokeModel requests: the model is in the path, percent-encoded
/// (`/model/<m>/converse`); `system` and `messages` hold the input (Converse's, or the
/// Anthropic body InvokeModel carries for Claude).
pub(crate) struct BedrockRequest {
    /// The path streams whatever the body says (`converse-stream`,
    /// `invoke-with-response-stream`).
    pub stream_path: bool,
}

impl RequestApi for BedrockRequest {
    /// Converse `toolResult` blocks in the messages' content, with `toolUseId` and
    /// `status: error`; InvokeModel bodies are Anthropic's (`tool_result` blocks).
    fn tool_results(&self, body: &Value) -> Vec<ToolResult> {
        let Some(messages) = body.get("messages").and_then(Value::as_array) else {
            return Vec::new();
        };
        let blocks = messages
            .iter()
            .filter_map(|m| m.get("content").and_then(Value::as_array))
            .flatten();
        let mut out = Vec::new();
        for b in blocks {
            if let Some(r) = b.get("toolResult") {
                if let Some(id) = r.get("toolUseId").and_then(Value::as_str) {
                    out.push(ToolResult {
                        call_id: id.to_owned(),
                        name: None,
                        content: result_text(r.get("content").unwrap_or(&Value::Null)),
                        is_error: r.get("status").and_then(Value::as_str) == Some("error"),
                    });
                }
            } else if b.get("type").and_then(Value::as_str) == Some("tool_result")
                && let Some(id) = b.get("tool_use_id").and_then(Value::as_str)
            {
                out.push(ToolResult {
                    call_id: id.to_owned(),
                    name: None,
                    content: result_text(b.get("content").unwrap_or(&Value::Null)),
                    is_error: b.get("is_error").and_then(Value::as_bool) == Some(true),
                });
            }
        }
        out
    }

    fn streams(&self, _: &str, flag: Option<bool>) -> bool {
        self.stream_path || flag.unwrap_or(false)
    }

    fn model_from_path(&self, path: &str) -> Option<String> {
        let m = path_segment_after(path, "/model/")?;
        Some(percent_decode(m)).filter(|m| !m.is_empty())
    }

    fn input<'a>(&self, body: &Json<'a>) -> Input<'a> {
        Input::chat(body)
    }

    fn input_message_count(&self, fields: &RequestFields) -> Option<u64> {
        fields.count_messages()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{BodyParser, ParserLimits, eventstream::encode_frame, request::Request};
    use crate::provider::WireFormat;

    const EVENTSTREAM: &str = "application/vnd.amazon.eventstream";

    fn event(name: &str, payload: &str) -> Vec<u8> {
        encode_frame(
            &[
                (":event-type", name),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            payload.as_bytes(),
        )
    }

    fn parse(format: WireFormat, body: &[u8]) -> ResponseRecord {
        let mut p = BodyParser::for_response(
            format,
            crate::provider::Quirks::default(),
            Some(EVENTSTREAM),
            ParserLimits::default(),
        )
        .expect("parser");
        p.feed(body);
        p.finish(true)
    }

    fn chunk(anthropic_event: &str) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(anthropic_event);
        event("chunk", &format!(r#"{{"bytes":"{b64}","p":"abc"}}"#))
    }

    #[test]
    fn an_exception_frame_sets_the_error_and_keeps_earlier_values() {
        let mut body = event("messageStart", r#"{"role":"assistant"}"#);
        body.extend(event(
            "contentBlockDelta",
            r#"{"contentBlockIndex":0,"delta":{"text":"Hi"}}"#,
        ));
        body.extend(encode_frame(
            &[
                (":exception-type", "modelStreamErrorException"),
                (":content-type", "application/json"),
                (":message-type", "exception"),
            ],
            br#"{"message":"Model stream error"}"#,
        ));
        let r = parse(WireFormat::ConverseStream, &body);
        assert_eq!(
            r.error.as_ref().and_then(|e| e.kind.as_deref()),
            Some("modelStreamErrorException")
        );
        assert_eq!(
            r.error.as_ref().and_then(|e| e.message.as_deref()),
            Some("Model stream error")
        );
        assert!(!r.stream_completed);
    }

    #[test]
    fn a_bad_crc_frame_is_counted_as_malformed() {
        let mut bad = event(
            "metadata",
            r#"{"usage":{"inputTokens":1,"outputTokens":2}}"#,
        );
        let last = bad.len() - 1;
        bad[last] ^= 0x55;
        let mut body = event("messageStop", r#"{"stopReason":"end_turn"}"#);
        body.extend(bad);
        let r = parse(WireFormat::ConverseStream, &body);
        assert_eq!(r.malformed_events, 1);
        assert_eq!(r.finish_reasons, ["end_turn"]);
        assert_eq!(r.usage.input_tokens, None);
        assert!(!r.stream_completed, "the usage never arrived");
    }

    #[test]
    fn a_truncated_final_frame_marks_the_record_truncated_and_not_completed() {
        let mut body = event("messageStop", r#"{"stopReason":"end_turn"}"#);
        let meta = event(
            "metadata",
            r#"{"usage":{"inputTokens":1,"outputTokens":2}}"#,
        );
        body.extend_from_slice(&meta[..meta.len() - 3]);
        let r = parse(WireFormat::ConverseStream, &body);
        assert!(r.truncated);
        assert!(!r.stream_completed);
    }

    #[test]
    fn invoke_model_chunks_follow_the_anthropic_rules() {
        let mut body = chunk(
            r#"{"type":"message_start","message":{"id":"msg_bdrk_1","model":"claude-sonnet-4-5-20250929","usage":{"input_tokens":10,"cache_read_input_tokens":90,"output_tokens":1}}}"#,
        );
        body.extend(chunk(
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
        ));
        body.extend(chunk(r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":5}}"#));
        body.extend(chunk(r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":10,"outputTokenCount":5}}"#));
        let r = parse(WireFormat::InvokeModelWithResponseStream, &body);
        assert_eq!(r.response_id.as_deref(), Some("msg_bdrk_1"));
        assert_eq!(
            (r.usage.input_tokens, r.usage.output_tokens),
            (Some(100), Some(5))
        );
        assert_eq!(r.usage.cached_input_tokens, Some(90));
        assert_eq!(r.finish_reasons, ["end_turn"]);
        assert!(r.stream_completed);
    }

    #[test]
    fn bad_base64_in_a_chunk_is_malformed() {
        let body = event("chunk", r#"{"bytes":"!!not base64!!"}"#);
        let r = parse(WireFormat::InvokeModelWithResponseStream, &body);
        assert_eq!(r.malformed_events, 1);
    }

    #[test]
    fn non_streamed_converse_and_error_bodies() {
        let json = |format, body: &str| {
            let mut p = BodyParser::for_response(
                format,
                crate::provider::Quirks::default(),
                Some("application/json"),
                ParserLimits::default(),
            )
            .expect("parser");
            p.feed(body.as_bytes());
            p.finish(true)
        };
        let r = json(
            WireFormat::Converse,
            r#"{"output":{"message":{"role":"assistant","content":[{"text":"Hi"}]}},"stopReason":"max_tokens","usage":{"inputTokens":3,"outputTokens":4,"totalTokens":7,"cacheWriteInputTokens":8},"metrics":{"latencyMs":10}}"#,
        );
        assert_eq!(r.finish_reasons, ["max_tokens"]);
        assert_eq!(r.usage.input_tokens, Some(11));
        assert_eq!(r.usage.cache_creation_input_tokens, Some(8));
        assert!(r.stream_completed);

        let r = json(
            WireFormat::Converse,
            r#"{"message":"Malformed input request"}"#,
        );
        assert!(r.error.is_some());
        assert!(!r.stream_completed);

        let r = json(
            WireFormat::InvokeModel,
            r#"{"__type":"com.amazon#ThrottlingException","message":"Too many"}"#,
        );
        assert_eq!(
            r.error.as_ref().and_then(|e| e.kind.as_deref()),
            Some("ThrottlingException")
        );
        assert!(!r.stream_completed);

        let r = json(
            WireFormat::InvokeModel,
            r#"{"id":"msg_bdrk_2","type":"message","model":"claude","stop_reason":"end_turn","usage":{"input_tokens":1,"output_tokens":2}}"#,
        );
        assert_eq!(r.usage.output_tokens, Some(2));
        assert!(r.stream_completed);
    }

    #[test]
    fn requests_stream_on_the_stream_paths_and_count_messages() {
        let path = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream";
        let body =
            br#"{"system":[{"text":"s"}],"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#;
        let r = Request::read(WireFormat::ConverseStream, path, body).unwrap();
        assert!(r.stream);
        assert_eq!(
            r.model.as_deref(),
            Some("anthropic.claude-3-5-sonnet-20240620-v1:0")
        );
        assert_eq!(r.fields.unwrap().input_message_count(), Some(1));
        let r = Request::read(
            WireFormat::InvokeModelWithResponseStream,
            "/model/m/invoke-with-response-stream",
            b"",
        )
        .unwrap();
        assert!(r.stream);
        let r = Request::read(WireFormat::Converse, "/model/m/converse", body).unwrap();
        assert!(!r.stream);
        assert_eq!(r.model.as_deref(), Some("m"));
        let r = Request::read(
            WireFormat::InvokeModel,
            "/model/m/invoke",
            br#"{"stream":true}"#,
        )
        .unwrap();
        assert!(r.stream);
    }
}
