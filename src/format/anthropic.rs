//! Anthropic Messages (`/v1/messages`), streamed or not, and inside Bedrock InvokeModel chunks;
//! and what its requests say.

use serde::Deserialize;
use serde_json::Value;

use super::tree::Json;
use super::{
    EventKind, Extractor, Progress, ResponseRecord, Usage,
    json::{
        Count, ErrorField, Filled, FinishReasons, Needle, Obj, Objs, Text, set_error, set_first,
        sum,
    },
    output::{JsonArg, OutputBuilder},
    request::{Input, RequestApi, RequestFields, ToolResult, model_before_verb, result_text},
};

/// A stream event, or a whole non-streamed body (`type: "message"` or `type: "error"`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Event<'a> {
    #[serde(borrow, rename = "type")]
    kind: Text<'a>,
    /// The content block a `content_block_*` event is about.
    index: Count,
    /// `message_start`.
    #[serde(borrow)]
    message: Obj<Message<'a>>,
    /// `message_delta` (stop reason) and `content_block_delta` (output).
    #[serde(borrow)]
    delta: Obj<Delta<'a>>,
    /// `message_delta`, and a non-streamed body.
    usage: Obj<RawUsage>,
    #[serde(borrow)]
    content_block: Obj<Block<'a>>,
    /// A non-streamed body's blocks.
    #[serde(borrow)]
    content: Objs<Block<'a>>,
    #[serde(borrow)]
    error: ErrorField<'a>,
    // A non-streamed body is the message itself.
    #[serde(borrow)]
    id: Text<'a>,
    #[serde(borrow)]
    model: Text<'a>,
    #[serde(borrow)]
    stop_reason: Text<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Message<'a> {
    #[serde(borrow)]
    id: Text<'a>,
    #[serde(borrow)]
    model: Text<'a>,
    usage: Obj<RawUsage>,
    #[serde(borrow)]
    stop_reason: Text<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Delta<'a> {
    #[serde(borrow, rename = "type")]
    kind: Text<'a>,
    #[serde(borrow)]
    stop_reason: Text<'a>,
    #[serde(borrow)]
    text: Text<'a>,
    thinking: Filled,
    #[serde(borrow)]
    partial_json: Text<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Block<'a> {
    #[serde(borrow, rename = "type")]
    kind: Text<'a>,
    #[serde(borrow)]
    text: Text<'a>,
    thinking: Filled,
    /// `tool_use` blocks.
    #[serde(borrow)]
    id: Text<'a>,
    #[serde(borrow)]
    name: Text<'a>,
    #[serde(borrow)]
    input: JsonArg<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawUsage {
    input_tokens: Count,
    output_tokens: Count,
    cache_creation_input_tokens: Count,
    cache_read_input_tokens: Count,
    cache_creation: Obj<CacheCreation>,
    output_tokens_details: Obj<OutputDetails>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CacheCreation {
    ephemeral_1h_input_tokens: Count,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OutputDetails {
    thinking_tokens: Count,
}

/// The raw counts as last reported. `message_delta` usage holds cumulative totals, so each
/// field present replaces the earlier value; adding would count the placeholder twice.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    seen: bool,
    input: Option<u64>,
    output: Option<u64>,
    cache_creation: Option<u64>,
    cache_read: Option<u64>,
    cache_creation_1h: Option<u64>,
    thinking: Option<u64>,
}

impl Counts {
    fn update(&mut self, u: &RawUsage) {
        fn set(slot: &mut Option<u64>, v: Count) {
            if v.0.is_some() {
                *slot = v.0;
            }
        }
        self.seen = true;
        set(&mut self.input, u.input_tokens);
        set(&mut self.output, u.output_tokens);
        set(&mut self.cache_creation, u.cache_creation_input_tokens);
        set(&mut self.cache_read, u.cache_read_input_tokens);
        if let Some(c) = &u.cache_creation.0 {
            set(&mut self.cache_creation_1h, c.ephemeral_1h_input_tokens);
        }
        if let Some(d) = &u.output_tokens_details.0 {
            set(&mut self.thinking, d.thinking_tokens);
        }
    }

    fn normalise(&self) -> Usage {
        Usage {
            input_tokens: Some(sum(&[self.input, self.cache_creation, self.cache_read])),
            output_tokens: Some(self.output.unwrap_or(0)),
            cached_input_tokens: self.cache_read,
            cache_creation_input_tokens: self.cache_creation,
            cache_creation_1h_input_tokens: self.cache_creation_1h,
            reasoning_tokens: self.thinking,
        }
    }
}

/// Feeds one stream event (its type already resolved) to the output builder. Text blocks and
/// `tool_use` blocks are output; thinking and server tool blocks are not.
fn capture_event(out: &mut OutputBuilder, kind: &str, e: &Event<'_>) {
    let key = e.index.0;
    match kind {
        "content_block_start" => match &e.content_block.0 {
            Some(b) if b.kind.as_str() == Some("text") => out.text(b.text.as_str().unwrap_or("")),
            Some(b) if b.kind.as_str() == Some("tool_use") => {
                out.tool_start(key, b.id.non_empty(), b.name.as_str().unwrap_or(""));
                // The input arrives as `input_json_delta` fragments after an empty `{}`; a
                // relay that sends it whole in the start event is taken as it is.
                if b.input.as_str() != "{}" {
                    out.tool_args(key, b.input.as_str());
                }
            }
            _ => {}
        },
        "content_block_delta" => {
            if let Some(d) = &e.delta.0 {
                match d.kind.as_str() {
                    Some("text_delta") => out.text(d.text.as_str().unwrap_or("")),
                    Some("input_json_delta") => {
                        out.tool_args(key, d.partial_json.as_str().unwrap_or(""));
                    }
                    _ => {}
                }
            }
        }
        // A non-streamed body.
        "message" => {
            for b in &e.content.0 {
                match b.kind.as_str() {
                    Some("text") => out.text(b.text.as_str().unwrap_or("")),
                    Some("tool_use") => {
                        out.tool_call(
                            b.id.non_empty(),
                            b.name.as_str().unwrap_or(""),
                            b.input.as_str(),
                        );
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

static MESSAGE_EVENT: Needle = Needle::new("\"message_");
static ERROR: Needle = Needle::new("\"error\"");
static TOOL_USE: Needle = Needle::new("\"tool_use\"");

/// Whether an event may be `message_start`/`_delta`/`_stop`, an error, or the start of a
/// `tool_use` block (whose id and name are read whatever the capture). Content deltas (the
/// bulk of a stream) are none of these; `"message_` only occurs as the start of such a type
/// value.
fn may_matter(data: &[u8]) -> bool {
    MESSAGE_EVENT.any(data, |_| true) || ERROR.present(data) || TOOL_USE.any(data, |_| true)
}

#[derive(Default)]
pub struct AnthropicMessages {
    counts: Counts,
    finish: FinishReasons,
}

impl AnthropicMessages {
    /// One decoded stream event as JSON bytes: an SSE event's data, or the decoded `bytes` of a
    /// Bedrock InvokeModel chunk.
    pub(crate) fn on_message_event(&mut self, name: &str, data: &[u8], p: &mut Progress) {
        let named = name.starts_with("message_") || name == "error";
        if p.settled() && !p.capturing() && !named && !may_matter(data) {
            return;
        }
        match super::json::from_bytes::<Event<'_>>(data) {
            Ok(event) => self.apply(&event, name, p),
            Err(_) => p.malformed(),
        }
    }

    fn take_usage(&mut self, u: &RawUsage, record: &mut ResponseRecord) {
        self.counts.update(u);
        record.usage = self.counts.normalise();
    }

    fn apply(&mut self, e: &Event<'_>, name: &str, p: &mut Progress) {
        let kind = e.kind.non_empty().unwrap_or(name);
        // Text only when capture is on; tool call ids and names always.
        capture_event(&mut p.output, kind, e);
        let record = &mut p.record;
        match kind {
            "message_start" => {
                if let Some(m) = &e.message.0 {
                    set_first(&mut record.model, &m.model);
                    set_first(&mut record.response_id, &m.id);
                    if let Some(u) = &m.usage.0 {
                        self.take_usage(u, record);
                    }
                    if let Some(reason) = m.stop_reason.as_str() {
                        self.finish.set(0, reason, record);
                    }
                }
            }
            "message_delta" => {
                if let Some(reason) = e.delta.0.as_ref().and_then(|d| d.stop_reason.as_str()) {
                    self.finish.set(0, reason, record);
                }
                if let Some(u) = &e.usage.0 {
                    self.take_usage(u, record);
                }
            }
            "content_block_start" => {
                if let Some(b) = &e.content_block.0 {
                    // A tool call or redacted thinking is output from its first event; a text
                    // or thinking block starts empty.
                    let empty_kind = matches!(b.kind.as_str(), Some("text" | "thinking") | None);
                    p.started |= !empty_kind || b.text.non_empty().is_some() || b.thinking.0;
                }
            }
            "content_block_delta" => {
                if let Some(d) = &e.delta.0 {
                    let output = match d.kind.as_str() {
                        Some("text_delta") => d.text.non_empty().is_some(),
                        Some("thinking_delta") => d.thinking.0,
                        Some("input_json_delta") => d.partial_json.non_empty().is_some(),
                        _ => false,
                    };
                    p.started |= output;
                }
            }
            "message_stop" => p.ended = true,
            "error" => {
                let err = e.error.0.as_ref();
                set_error(
                    record,
                    err.and_then(|e| e.kind.non_empty()),
                    err.and_then(|e| e.message.as_str()),
                );
            }
            // A non-streamed body.
            "message" => {
                set_first(&mut record.model, &e.model);
                set_first(&mut record.response_id, &e.id);
                if let Some(reason) = e.stop_reason.as_str() {
                    self.finish.set(0, reason, record);
                }
                if let Some(u) = &e.usage.0 {
                    self.take_usage(u, record);
                }
            }
            // `ping` and event types added later.
            _ => {}
        }
    }

    /// A whole JSON body: a message, or `{"type":"error","error":{…}}`.
    pub(crate) fn on_message_json(&mut self, body: &[u8], p: &mut Progress) {
        let Ok(mut e) = super::json::from_bytes::<Event<'_>>(body) else {
            p.malformed();
            p.json_body = Some(false);
            return;
        };
        if e.kind.as_str().is_none() {
            // Bodies relayed by other gateways may drop `type`; tell them apart by content.
            let kind = if e.error.0.is_some() {
                "error"
            } else {
                "message"
            };
            e.kind = Text(Some(kind.into()));
        }
        let is_message = e.kind.as_str() == Some("message");
        let recognised = is_message && (e.id.as_str().is_some() || e.usage.0.is_some());
        self.apply(&e, "", p);
        p.json_body = Some(recognised && p.record.error.is_none());
    }
}

impl Extractor for AnthropicMessages {
    fn on_event(&mut self, name: &str, data: &str, p: &mut Progress) -> EventKind {
        self.on_message_event(name, data.as_bytes(), p);
        EventKind::Other
    }

    fn on_json(&mut self, body: &[u8], p: &mut Progress) {
        self.on_message_json(body, p);
    }
}

// The request side.

/// Messages requests: a top-level `system` (text or blocks) and `messages` of content blocks,
/// streamed on the body's flag. On Vertex AI the model is in the path
/// (`.../publishers/anthropic/models/<m>:rawPredict`) and not in the body.
pub(crate) struct MessagesRequest;

impl RequestApi for MessagesRequest {
    /// `tool_result` blocks in the messages' content, with `tool_use_id` and `is_error`.
    fn tool_results(&self, body: &Value) -> Vec<ToolResult> {
        let Some(messages) = body.get("messages").and_then(Value::as_array) else {
            return Vec::new();
        };
        messages
            .iter()
            .filter_map(|m| m.get("content").and_then(Value::as_array))
            .flatten()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
            .filter_map(|b| {
                Some(ToolResult {
                    call_id: b.get("tool_use_id")?.as_str()?.to_owned(),
                    name: None,
                    content: result_text(b.get("content").unwrap_or(&Value::Null)),
                    is_error: b.get("is_error").and_then(Value::as_bool) == Some(true),
                })
            })
            .collect()
    }

    fn model_from_path(&self, path: &str) -> Option<String> {
        model_before_verb(path)
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
    use crate::{format::request::Request, provider::WireFormat};

    fn run(events: &[&str]) -> ResponseRecord {
        let mut x = AnthropicMessages::default();
        let mut p = Progress::default();
        for data in events {
            crate::format::sse_event(&mut x, "", data, &mut p);
        }
        p.finish(&mut x, true)
    }

    const START: &str = r#"{"type":"message_start","message":{"id":"msg_1","model":"claude-sonnet-4-5","usage":{"input_tokens":12,"cache_creation_input_tokens":1000,"cache_read_input_tokens":500,"cache_creation":{"ephemeral_5m_input_tokens":400,"ephemeral_1h_input_tokens":600},"output_tokens":2}}}"#;
    const TEXT: &str =
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#;

    #[test]
    fn the_1h_cache_write_is_split_out_of_the_cache_creation_total() {
        let delta = r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":40}}"#;
        let r = run(&[START, TEXT, delta, r#"{"type":"message_stop"}"#]);
        assert_eq!(r.usage.cache_creation_input_tokens, Some(1000));
        assert_eq!(r.usage.cache_creation_1h_input_tokens, Some(600));
        assert_eq!(r.usage.input_tokens, Some(1512));
        assert_eq!(r.usage.cached_input_tokens, Some(500));
        assert!(r.stream_completed);
    }

    #[test]
    fn message_delta_usage_replaces_never_adds() {
        let d1 =
            r#"{"type":"message_delta","delta":{"stop_reason":null},"usage":{"output_tokens":10}}"#;
        let d2 = r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"input_tokens":20,"output_tokens":30,"output_tokens_details":{"thinking_tokens":7}}}"#;
        let r = run(&[START, TEXT, d1, d2, r#"{"type":"message_stop"}"#]);
        assert_eq!(r.usage.output_tokens, Some(30));
        assert_eq!(r.usage.input_tokens, Some(20 + 1000 + 500));
        assert_eq!(r.usage.reasoning_tokens, Some(7));
        assert_eq!(r.finish_reasons, ["max_tokens"]);
    }

    #[test]
    fn an_error_event_keeps_the_last_reported_usage() {
        let err = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let r = run(&[START, TEXT, err]);
        assert_eq!(
            r.usage.output_tokens,
            Some(2),
            "message_start's placeholder is the last value"
        );
        assert_eq!(
            r.error.as_ref().and_then(|e| e.kind.as_deref()),
            Some("overloaded_error")
        );
        assert!(!r.stream_completed);
    }

    #[test]
    fn padded_json_and_unknown_events_are_fine() {
        // Anthropic pads payloads with spaces before the final brace.
        let padded = r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":61}              }"#;
        let r = run(&[
            START,
            r#"{"type":"ping"}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"compaction_delta","x":1}}"#,
            r#"{"type":"brand_new_event","data":{}}"#,
            padded,
            r#"{"type":"message_stop"}"#,
            // OpenRouter's Anthropic-compatible endpoint adds this.
            "[DONE]",
        ]);
        assert_eq!(r.malformed_events, 0);
        assert_eq!(r.usage.output_tokens, Some(61));
        assert!(r.stream_completed);
    }

    #[test]
    fn output_starts_with_a_tool_use_block_or_a_non_empty_delta() {
        let mut x = AnthropicMessages::default();
        let mut p = Progress::default();
        crate::format::sse_event(&mut x, "", START, &mut p);
        crate::format::sse_event(
            &mut x,
            "",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            &mut p,
        );
        assert!(!p.started);
        crate::format::sse_event(
            &mut x,
            "",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"abc"}}"#,
            &mut p,
        );
        assert!(!p.started);
        crate::format::sse_event(
            &mut x,
            "",
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"f","input":{}}}"#,
            &mut p,
        );
        assert!(p.started);
    }

    #[test]
    fn json_error_bodies_set_the_error() {
        let mut x = AnthropicMessages::default();
        let mut p = Progress::default();
        x.on_json(br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow"},"request_id":"req_1"}"#, &mut p);
        let r = p.finish(&mut x, true);
        assert_eq!(
            r.error.as_ref().and_then(|e| e.kind.as_deref()),
            Some("rate_limit_error")
        );
        assert!(!r.stream_completed);
        assert_eq!(r.usage, Usage::default());
    }

    #[test]
    fn requests_stream_on_their_flag_and_count_messages() {
        let body = r#"{"model":"claude-sonnet-4-5","stream":true,"system":"s","messages":[{"role":"user","content":"hi"}]}"#;
        let r = Request::read(WireFormat::Messages, "/v1/messages", body.as_bytes()).unwrap();
        assert!(r.stream);
        assert_eq!(r.model.as_deref(), Some("claude-sonnet-4-5"));
        assert_eq!(r.fields.unwrap().input_message_count(), Some(1));
        let vertex =
            "/v1/projects/p/locations/l/publishers/anthropic/models/claude-sonnet-4-5:rawPredict";
        let r = Request::read(WireFormat::Messages, vertex, br#"{"messages":[]}"#).unwrap();
        assert!(!r.stream);
        assert_eq!(r.model.as_deref(), Some("claude-sonnet-4-5"));
        assert_eq!(r.fields.unwrap().input_message_count(), Some(0));
    }
}
