//! Reading a provider response on the side: framing (SSE, NDJSON, AWS event-stream, whole JSON)
//! feeds one extractor per wire format, which fills a `ResponseRecord`. Each API's file also
//! says what its requests say (`request::RequestApi`). Pure code, no I/O.

use serde::{Deserialize, Serialize};

use crate::{
    provider::{Quirks, WireFormat},
    sse::SseParser,
};
use output::OutputBuilder;

pub mod anthropic;
pub mod bedrock;
pub mod eventstream;
pub mod gemini;
pub(crate) mod json;
pub mod ndjson;
pub mod ollama;
pub mod openai_chat;
pub mod openai_responses;
mod output;
pub mod request;
pub mod tree;

pub use output::{
    CapturedOutput, ToolCallOutput, ToolCallRef, is_synthetic_tool_call_id, synthetic_tool_call_id,
};

/// Token counts as the OpenTelemetry GenAI conventions define them: `input_tokens` includes
/// cache reads and writes, `output_tokens` includes reasoning. `None` when the provider did not
/// report the field, `Some(0)` when it reported 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cached_input_tokens: Option<u64>,
    pub cache_creation_input_tokens: Option<u64>,
    /// The part of `cache_creation_input_tokens` written with a 1-hour TTL (Anthropic), which is
    /// priced higher than the 5-minute default.
    pub cache_creation_1h_input_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
}

/// An error the provider signalled inside the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InbandError {
    /// `error.type` (or the provider's equivalent); `None` when the provider gives none.
    pub kind: Option<String>,
    pub message: Option<String>,
}

/// What a response told us.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseRecord {
    /// The model as the response names it (often a dated snapshot); first non-empty value.
    pub model: Option<String>,
    pub response_id: Option<String>,
    /// Raw provider values, one per choice/candidate that reported one, by index.
    pub finish_reasons: Vec<String>,
    pub usage: Usage,
    /// The provider's normal end-of-stream signal arrived and no error was signalled (for a
    /// JSON body: a success body).
    pub stream_completed: bool,
    pub error: Option<InbandError>,
    /// `incomplete_details.reason` of an OpenAI Responses API response.
    pub incomplete_reason: Option<String>,
    /// Events (SSE events, NDJSON lines, event-stream frames; 1 for a JSON body) seen.
    pub events: u64,
    pub bytes: u64,
    /// Events skipped because they were larger than the per-event limit.
    pub oversize_events: u64,
    /// Events whose payload could not be decoded (malformed JSON, bad CRC, bad base64).
    pub malformed_events: u64,
    /// The body ended inside an event (truncated stream).
    pub truncated: bool,
    /// The output text and tool calls, assembled only when `ParserLimits::capture_output_bytes`
    /// is above 0 (`None` otherwise).
    #[serde(default)]
    pub output: Option<CapturedOutput>,
    /// The tool calls the response asked for, id and name, read whatever the capture level
    /// (their arguments are content: in `output`, when captured).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallRef>,
}

/// What an extractor says of one event, for the tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Other,
    /// An OpenAI-style chunk with `choices: []` and a usage object: the chunk that
    /// `stream_options.include_usage` adds.
    UsageOnly,
}

/// What every extractor tracks the same way, kept once by the [`BodyParser`] and lent to the
/// extractor with each event: the record, whether output started, whether the stream's own end
/// arrived, the verdict on a whole JSON body, and the output capture.
#[derive(Default)]
pub(crate) struct Progress {
    pub record: ResponseRecord,
    /// Output (a content, reasoning or tool-call delta) has been seen.
    pub started: bool,
    /// The stream's own last event arrived (`[DONE]`, `message_stop`, `response.completed`,
    /// Gemini's chunk with a finish reason, ...): a client that leaves after it has the whole
    /// answer, even if the upstream's end of body has not come yet.
    pub ended: bool,
    /// `Some(success)` once a whole JSON body was read: whether it was a success body.
    pub json_body: Option<bool>,
    /// Assembles the output (text and tool calls) when capture is on; inactive otherwise.
    pub output: OutputBuilder,
}

impl Progress {
    /// Output has started and the model and response id are known: from here on most events
    /// of a long stream carry only content, which matters only when capture is on.
    pub fn settled(&self) -> bool {
        self.started && self.record.model.is_some() && self.record.response_id.is_some()
    }

    /// Whether events must be decoded for their content (output capture is on).
    pub fn capturing(&self) -> bool {
        self.output.active()
    }

    /// Counts an event (or body) that could not be decoded.
    pub fn malformed(&mut self) {
        self.record.malformed_events += 1;
    }

    /// End of body: lets the extractor settle, then fills in the output and whether the
    /// response completed (a success JSON body, or a stream whose own end arrived, with no
    /// error either way).
    pub fn finish(mut self, extractor: &mut dyn Extractor, clean: bool) -> ResponseRecord {
        extractor.finish(clean, &mut self);
        let mut record = self.record;
        record.tool_calls = self.output.tool_refs();
        record.output = self.output.finish();
        let ended = self.json_body.unwrap_or(self.ended);
        record.stream_completed = ended && record.error.is_none();
        record
    }
}

/// One wire format's rules: turns decoded events (or a whole JSON body) into the call's
/// [`Progress`]. Each event is decoded once, for usage, ids, finish reasons and errors and, when
/// capture is on, for the output too.
pub(crate) trait Extractor: Send {
    /// One event: an SSE event (`name` is its `event:` field, often empty), an NDJSON line, or
    /// an event-stream frame (`name` is its `:event-type`). `data` is the event's payload.
    fn on_event(&mut self, name: &str, data: &str, p: &mut Progress) -> EventKind;

    /// A whole JSON body (non-streamed response, or an error body answering a streamed
    /// request). Sets `p.json_body`.
    fn on_json(&mut self, body: &[u8], p: &mut Progress);

    /// An event-stream frame whose `:message-type` is `exception` (or `error`): `kind` is its
    /// `:exception-type` (or `:error-code`), `payload` usually `{"message": …}`.
    fn on_exception(&mut self, kind: &str, payload: &str, p: &mut Progress) {
        #[derive(Deserialize)]
        struct Payload<'a> {
            #[serde(borrow, default)]
            message: Option<std::borrow::Cow<'a, str>>,
            #[serde(borrow, default, rename = "Message")]
            message_upper: Option<std::borrow::Cow<'a, str>>,
        }
        let parsed = serde_json::from_str::<Payload<'_>>(payload).ok();
        let message = parsed
            .as_ref()
            .and_then(|p| p.message.as_deref().or(p.message_upper.as_deref()));
        json::set_error(&mut p.record, Some(kind), message);
    }

    /// An OpenAI-style `[DONE]` event: the end marker of chat completions, which relays of
    /// other formats sometimes add too (it carries nothing then).
    fn on_done(&mut self, p: &mut Progress) {
        let _ = p;
    }

    /// End of body, for a format with more to settle (`clean` is false when it was cut).
    fn finish(&mut self, clean: bool, p: &mut Progress) {
        let _ = (clean, p);
    }
}

/// Hands one SSE event to the extractor: an OpenAI-style `[DONE]` to `on_done`, any other to
/// `on_event`.
pub(crate) fn sse_event(
    extractor: &mut dyn Extractor,
    name: &str,
    data: &str,
    p: &mut Progress,
) -> EventKind {
    if data.trim_start().starts_with("[DONE]") {
        extractor.on_done(p);
        EventKind::Other
    } else {
        extractor.on_event(name, data, p)
    }
}

/// How the bytes of a body are framed.
enum Framing {
    Sse(SseParser),
    Ndjson(ndjson::LineSplitter),
    EventStream(eventstream::FrameDecoder),
    /// Whole body, kept up to `max_event_bytes`.
    Json(Vec<u8>),
}

/// Limits for one body parser.
#[derive(Debug, Clone, Copy)]
pub struct ParserLimits {
    /// Largest event (or JSON body) kept for decoding; larger ones are skipped and counted.
    pub max_event_bytes: usize,
    /// Most bytes of output (text, tool names and arguments) assembled into
    /// `ResponseRecord::output`; 0 (the default) turns that off, and content events are then
    /// skipped undecoded.
    pub capture_output_bytes: usize,
}

impl Default for ParserLimits {
    fn default() -> Self {
        ParserLimits {
            max_event_bytes: 4 * 1024 * 1024,
            capture_output_bytes: 0,
        }
    }
}

/// Framing plus extractor for one response body.
pub struct BodyParser {
    framing: Framing,
    extractor: Box<dyn Extractor>,
    progress: Progress,
    json_oversize: bool,
    limits: ParserLimits,
}

impl BodyParser {
    /// The parser for a response, chosen from the route's format and the response
    /// `Content-Type`; `None` for formats the gateway does not inspect.
    pub fn for_response(
        format: WireFormat,
        quirks: Quirks,
        content_type: Option<&str>,
        limits: ParserLimits,
    ) -> Option<BodyParser> {
        let extractor: Box<dyn Extractor> = match format {
            WireFormat::ChatCompletions | WireFormat::Completions | WireFormat::Embeddings => {
                Box::new(openai_chat::OpenAiChat::new(quirks))
            }
            WireFormat::Responses => Box::new(openai_responses::OpenAiResponses::default()),
            WireFormat::Messages => Box::new(anthropic::AnthropicMessages::default()),
            WireFormat::GenerateContent => Box::new(gemini::Gemini::default()),
            WireFormat::OllamaChat | WireFormat::OllamaGenerate => {
                Box::new(ollama::OllamaNative::default())
            }
            WireFormat::Converse | WireFormat::ConverseStream => {
                Box::new(bedrock::Converse::default())
            }
            WireFormat::InvokeModel | WireFormat::InvokeModelWithResponseStream => {
                Box::new(bedrock::InvokeModel::default())
            }
            WireFormat::Passthrough => return None,
        };
        let mime = content_type
            .and_then(|c| c.split(';').next())
            .map(|c| c.trim().to_ascii_lowercase())
            .unwrap_or_default();
        let framing = match mime.as_str() {
            "text/event-stream" => Framing::Sse(SseParser::new(limits.max_event_bytes)),
            "application/x-ndjson" | "application/jsonl" | "application/ndjson" => {
                Framing::Ndjson(ndjson::LineSplitter::new(limits.max_event_bytes))
            }
            "application/vnd.amazon.eventstream" => {
                Framing::EventStream(eventstream::FrameDecoder::new(limits.max_event_bytes))
            }
            _ => Framing::Json(Vec::new()),
        };
        Some(BodyParser {
            framing,
            extractor,
            progress: Progress {
                output: OutputBuilder::new(limits.capture_output_bytes),
                ..Progress::default()
            },
            json_oversize: false,
            limits,
        })
    }

    /// Whether the body is an event stream (as opposed to one JSON document).
    pub fn is_stream(&self) -> bool {
        !matches!(self.framing, Framing::Json(_))
    }

    pub fn output_started(&self) -> bool {
        self.progress.started
    }

    /// True when the body is a stream whose own last event arrived without an error signalled
    /// (see [`Progress::ended`]).
    pub fn end_seen(&self) -> bool {
        self.is_stream() && self.progress.record.error.is_none() && self.progress.ended
    }

    /// Feeds the next bytes of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.feed_marking(chunk, |_, _| {});
    }

    /// Feeds the next bytes; for SSE bodies `on_boundary(end, kind)` is called at the end of
    /// each event block with its end offset in `chunk`, so a caller can drop one event's bytes.
    pub fn feed_marking(&mut self, chunk: &[u8], mut on_boundary: impl FnMut(usize, EventKind)) {
        let p = &mut self.progress;
        let extractor = &mut self.extractor;
        match &mut self.framing {
            Framing::Sse(parser) => {
                parser.feed(chunk, |b| {
                    let kind = match b.event {
                        Some(e) => {
                            p.record.events += 1;
                            sse_event(extractor.as_mut(), e.event, e.data, p)
                        }
                        None => EventKind::Other,
                    };
                    on_boundary(b.end, kind);
                });
            }
            Framing::Ndjson(lines) => {
                p.record.bytes += chunk.len() as u64;
                lines.feed(chunk, |line| {
                    p.record.events += 1;
                    extractor.on_event("", line, p);
                });
            }
            Framing::EventStream(frames) => {
                p.record.bytes += chunk.len() as u64;
                frames.feed(chunk, |frame| match frame {
                    Ok(f) => {
                        p.record.events += 1;
                        // An exception without `:exception-type` is still named by its event type.
                        let kind = match f.exception_type {
                            "" => f.event_type,
                            kind => kind,
                        };
                        match std::str::from_utf8(f.payload) {
                            Ok(payload) if f.is_exception() => {
                                extractor.on_exception(kind, payload, p)
                            }
                            Ok(payload) => {
                                extractor.on_event(f.event_type, payload, p);
                            }
                            Err(_) if f.is_exception() => extractor.on_exception(kind, "", p),
                            Err(_) => p.malformed(),
                        }
                    }
                    Err(_) => p.malformed(),
                });
            }
            Framing::Json(buf) => {
                p.record.bytes += chunk.len() as u64;
                if buf.len() + chunk.len() > self.limits.max_event_bytes {
                    self.json_oversize = true;
                    *buf = Vec::new();
                } else if !self.json_oversize {
                    buf.extend_from_slice(chunk);
                }
            }
        }
    }

    /// End of body. `clean` is false when the body was cut (upstream error, timeout, client gone).
    pub fn finish(mut self, clean: bool) -> ResponseRecord {
        let p = &mut self.progress;
        match &mut self.framing {
            Framing::Sse(parser) => {
                p.record.bytes = parser.bytes();
                p.record.oversize_events += parser.oversize_events();
                p.record.truncated |= parser.finish();
            }
            Framing::Ndjson(lines) => {
                p.record.oversize_events += lines.oversize_lines();
                // A last line without its newline is still a whole JSON object when the body
                // ended cleanly; Ollama always ends lines, others may not.
                if let Some(line) = lines.finish() {
                    if clean {
                        p.record.events += 1;
                        self.extractor.on_event("", &line, p);
                    } else {
                        p.record.truncated = true;
                    }
                }
            }
            Framing::EventStream(frames) => {
                p.record.oversize_events += frames.oversize_frames();
                p.record.truncated |= frames.finish();
            }
            Framing::Json(buf) => {
                if self.json_oversize {
                    p.record.oversize_events += 1;
                } else if !buf.is_empty() {
                    p.record.events += 1;
                    let body = std::mem::take(buf);
                    self.extractor.on_json(&body, p);
                }
            }
        }
        self.progress.finish(self.extractor.as_mut(), clean)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser(format: WireFormat, content_type: &str, max: usize) -> BodyParser {
        BodyParser::for_response(
            format,
            Quirks::default(),
            Some(content_type),
            ParserLimits {
                max_event_bytes: max,
                ..ParserLimits::default()
            },
        )
        .expect("inspected format")
    }

    const SSE: &str = "text/event-stream";

    #[test]
    fn an_oversize_sse_event_is_skipped_and_counted_and_later_events_still_parse() {
        let mut p = parser(WireFormat::ChatCompletions, SSE, 256);
        let big = format!(
            r#"{{"id":"c1","model":"m","choices":[{{"index":0,"delta":{{"content":"{}"}}}}]}}"#,
            "x".repeat(1000)
        );
        let body = format!(
            "data: {big}\n\ndata: {{\"id\":\"c1\",\"model\":\"m\",\"choices\":[],\"usage\":{{\"prompt_tokens\":1,\"completion_tokens\":2}}}}\n\ndata: [DONE]\n\n"
        );
        for piece in body.as_bytes().chunks(100) {
            p.feed(piece);
        }
        let r = p.finish(true);
        assert_eq!(r.oversize_events, 1);
        assert_eq!(r.usage.output_tokens, Some(2));
        assert!(r.stream_completed);
    }

    #[test]
    fn a_truncated_final_event_marks_the_record_truncated_and_not_completed() {
        let mut p = parser(WireFormat::Messages, SSE, 1 << 20);
        p.feed(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n");
        p.feed(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":9}}\n\n");
        p.feed(b"event: message_stop\ndata: {\"type\":\"message_st");
        let r = p.finish(false);
        assert!(r.truncated);
        assert!(!r.stream_completed);
        assert_eq!(
            r.usage.output_tokens,
            Some(9),
            "the last reported values stay"
        );
        assert_eq!(
            r.malformed_events, 0,
            "a cut event is discarded, not parsed"
        );
    }

    #[test]
    fn the_include_usage_chunk_is_marked_at_its_boundary_for_the_tap() {
        let mut p = parser(WireFormat::ChatCompletions, SSE, 1 << 20);
        let content = "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\n";
        let usage = "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n";
        let body = format!("{content}{usage}data: [DONE]\n\n");
        let mut marks = Vec::new();
        p.feed_marking(body.as_bytes(), |end, kind| marks.push((end, kind)));
        assert_eq!(
            marks,
            [
                (content.len(), EventKind::Other),
                (content.len() + usage.len(), EventKind::UsageOnly),
                (body.len(), EventKind::Other),
            ]
        );
    }

    #[test]
    fn an_ndjson_tail_without_newline_counts_only_when_the_body_ended_cleanly() {
        let done = br#"{"model":"llama3","message":{"content":""},"done":true,"done_reason":"stop","prompt_eval_count":3,"eval_count":4}"#;
        let mut p = parser(WireFormat::OllamaChat, "application/x-ndjson", 1 << 20);
        p.feed(done);
        let r = p.finish(true);
        assert!(r.stream_completed);
        assert_eq!(r.usage.output_tokens, Some(4));

        let mut p = parser(WireFormat::OllamaChat, "application/x-ndjson", 1 << 20);
        p.feed(done);
        let r = p.finish(false);
        assert!(r.truncated);
        assert!(!r.stream_completed);
    }

    #[test]
    fn an_oversize_json_body_is_counted_and_not_completed() {
        let mut p = parser(WireFormat::ChatCompletions, "application/json", 64);
        p.feed(br#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o","choices":[{"index":0,"message":{"content":"hello"},"finish_reason":"stop"}]}"#);
        let r = p.finish(true);
        assert_eq!(r.oversize_events, 1);
        assert!(!r.stream_completed);
    }

    #[test]
    fn an_event_stream_oversize_frame_is_counted_in_the_record() {
        let frame = |name: &str, payload: &str| {
            eventstream::encode_frame(
                &[(":event-type", name), (":message-type", "event")],
                payload.as_bytes(),
            )
        };
        let mut body = frame(
            "contentBlockDelta",
            &format!(r#"{{"delta":{{"text":"{}"}}}}"#, "x".repeat(300)),
        );
        body.extend(frame("messageStop", r#"{"stopReason":"end_turn"}"#));
        let mut p = parser(
            WireFormat::ConverseStream,
            "application/vnd.amazon.eventstream",
            128,
        );
        p.feed(&body);
        let r = p.finish(true);
        assert_eq!(r.oversize_events, 1);
        assert_eq!(r.finish_reasons, ["end_turn"]);
    }

    fn refs(r: &ResponseRecord) -> Vec<(&str, &str)> {
        r.tool_calls
            .iter()
            .map(|t| (t.id.as_str(), t.name.as_str()))
            .collect()
    }

    #[test]
    fn tool_call_ids_are_read_from_every_format_with_capture_off() {
        // Responses, streamed: the call id comes with the item, later events only name it.
        let mut p = parser(WireFormat::Responses, SSE, 1 << 20);
        for e in [
            r#"{"type":"response.created","response":{"id":"resp_1","model":"gpt-5","status":"in_progress"}}"#,
            r#"{"type":"response.output_text.delta","output_index":0,"delta":"Checking"}"#,
            r#"{"type":"response.output_item.added","output_index":1,"item":{"type":"function_call","id":"fc_1","call_id":"call_1","name":"lookup","arguments":""}}"#,
            r#"{"type":"response.function_call_arguments.delta","output_index":1,"item_id":"fc_1","delta":"{}"}"#,
            r#"{"type":"response.output_item.done","output_index":1,"item":{"type":"function_call","id":"fc_1","call_id":"call_1","name":"lookup","arguments":"{}"}}"#,
            r#"{"type":"response.completed","response":{"id":"resp_1","model":"gpt-5","status":"completed","output":[{"type":"function_call","call_id":"call_1","name":"lookup","arguments":"{}"}]}}"#,
        ] {
            p.feed(format!("data: {e}\n\n").as_bytes());
        }
        let r = p.finish(true);
        assert_eq!(r.output, None);
        assert_eq!(refs(&r), [("call_1", "lookup")]);

        // Gemini: whole calls, a synthetic id when the API sends none.
        let mut p = parser(WireFormat::GenerateContent, SSE, 1 << 20);
        p.feed(br#"data: {"candidates":[{"content":{"parts":[{"text":"ok"}]},"index":0}],"modelVersion":"g","responseId":"r"}

"#);
        p.feed(br#"data: {"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{}}},{"functionCall":{"id":"fc_2","name":"g","args":{}}},{"functionCall":{"name":"f","args":{}}}]},"finishReason":"STOP","index":0}],"modelVersion":"g","responseId":"r"}

"#);
        let r = p.finish(true);
        assert_eq!(refs(&r), [("f#0", "f"), ("fc_2", "g"), ("f#1", "f")]);

        // Bedrock ConverseStream: the id is in the block start, after output started.
        let frame = |name: &str, payload: &str| {
            eventstream::encode_frame(
                &[(":event-type", name), (":message-type", "event")],
                payload.as_bytes(),
            )
        };
        let mut body = frame(
            "contentBlockDelta",
            r#"{"contentBlockIndex":0,"delta":{"text":"Sure"}}"#,
        );
        body.extend(frame(
            "contentBlockStart",
            r#"{"contentBlockIndex":1,"start":{"toolUse":{"toolUseId":"tooluse_1","name":"search"}}}"#,
        ));
        body.extend(frame(
            "contentBlockDelta",
            r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"{}"}}}"#,
        ));
        body.extend(frame("messageStop", r#"{"stopReason":"tool_use"}"#));
        let mut p = parser(
            WireFormat::ConverseStream,
            "application/vnd.amazon.eventstream",
            1 << 20,
        );
        p.feed(&body);
        let r = p.finish(true);
        assert_eq!(refs(&r), [("tooluse_1", "search")]);
    }
}
