//! Reading a provider response on the side: framing (SSE, NDJSON, AWS event-stream, whole JSON)
//! feeds one extractor per wire format, which fills a `ResponseRecord`. Pure code, no I/O.

use serde::{Deserialize, Serialize};

use crate::{
    provider::{Quirks, WireFormat},
    sse::SseParser,
};

pub mod anthropic;
pub mod bedrock;
pub mod eventstream;
pub mod gemini;
mod json;
pub mod ndjson;
pub mod ollama;
pub mod openai_chat;
pub mod openai_responses;
mod output;

pub use output::{CapturedOutput, ToolCallOutput};

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
}

/// What an extractor says of one event, for the tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Other,
    /// An OpenAI-style chunk with `choices: []` and a usage object: the chunk that
    /// `stream_options.include_usage` adds.
    UsageOnly,
}

/// One wire format's rules: turns decoded events (or a whole JSON body) into a record.
pub trait Extractor: Send {
    /// One event: an SSE event (`name` is its `event:` field, often empty), an NDJSON line, or
    /// an event-stream frame (`name` is its `:event-type`). `data` is the event's payload.
    fn on_event(&mut self, name: &str, data: &str, record: &mut ResponseRecord) -> EventKind;

    /// A whole JSON body (non-streamed response, or an error body answering a streamed request).
    fn on_json(&mut self, body: &[u8], record: &mut ResponseRecord);

    /// An event-stream frame whose `:message-type` is `exception` (or `error`): `kind` is its
    /// `:exception-type` (or `:error-code`), `payload` usually `{"message": …}`.
    fn on_exception(&mut self, kind: &str, payload: &str, record: &mut ResponseRecord) {
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
        json::set_error(record, Some(kind), message);
    }

    /// True once output (a content, reasoning or tool-call delta) has been seen.
    fn output_started(&self) -> bool;

    /// Turns on assembling the output (text and tool calls) into `ResponseRecord::output`,
    /// keeping at most `max_bytes`; called before the first byte. Extractors that cannot
    /// capture ignore it.
    fn set_capture(&mut self, max_bytes: usize) {
        let _ = max_bytes;
    }

    /// True once a stream's own last event arrived (`[DONE]`, `message_stop`,
    /// `response.completed`, Gemini's chunk with a finish reason, ...): a client that leaves
    /// after it has the whole answer, even if the upstream's end of body has not come yet.
    fn end_seen(&self, record: &ResponseRecord) -> bool;

    /// End of body; `clean` is false when it was cut. Sets `stream_completed`, and `output`
    /// when capture is on.
    fn finish(&mut self, clean: bool, record: &mut ResponseRecord);
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
    record: ResponseRecord,
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
        let mut extractor: Box<dyn Extractor> = match format {
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
        if limits.capture_output_bytes > 0 {
            extractor.set_capture(limits.capture_output_bytes);
        }
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
            record: ResponseRecord::default(),
            json_oversize: false,
            limits,
        })
    }

    /// Whether the body is an event stream (as opposed to one JSON document).
    pub fn is_stream(&self) -> bool {
        !matches!(self.framing, Framing::Json(_))
    }

    pub fn output_started(&self) -> bool {
        self.extractor.output_started()
    }

    /// True when the body is a stream whose last event arrived without an error signalled:
    /// see [`Extractor::end_seen`].
    pub fn end_seen(&self) -> bool {
        self.is_stream() && self.record.error.is_none() && self.extractor.end_seen(&self.record)
    }

    /// Feeds the next bytes of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.feed_marking(chunk, |_, _| {});
    }

    /// Feeds the next bytes; for SSE bodies `on_boundary(end, kind)` is called at the end of
    /// each event block with its end offset in `chunk`, so a caller can drop one event's bytes.
    pub fn feed_marking(&mut self, chunk: &[u8], mut on_boundary: impl FnMut(usize, EventKind)) {
        let record = &mut self.record;
        let extractor = &mut self.extractor;
        match &mut self.framing {
            Framing::Sse(parser) => {
                parser.feed(chunk, |b| {
                    let kind = match b.event {
                        Some(e) => {
                            record.events += 1;
                            extractor.on_event(e.event, e.data, record)
                        }
                        None => EventKind::Other,
                    };
                    on_boundary(b.end, kind);
                });
            }
            Framing::Ndjson(lines) => {
                record.bytes += chunk.len() as u64;
                lines.feed(chunk, |line| {
                    record.events += 1;
                    extractor.on_event("", line, record);
                });
            }
            Framing::EventStream(frames) => {
                record.bytes += chunk.len() as u64;
                frames.feed(chunk, |frame| match frame {
                    Ok(f) => {
                        record.events += 1;
                        // An exception without `:exception-type` is still named by its event type.
                        let kind = match f.exception_type {
                            "" => f.event_type,
                            kind => kind,
                        };
                        match std::str::from_utf8(f.payload) {
                            Ok(payload) if f.is_exception() => {
                                extractor.on_exception(kind, payload, record)
                            }
                            Ok(payload) => {
                                extractor.on_event(f.event_type, payload, record);
                            }
                            Err(_) if f.is_exception() => extractor.on_exception(kind, "", record),
                            Err(_) => record.malformed_events += 1,
                        }
                    }
                    Err(_) => record.malformed_events += 1,
                });
            }
            Framing::Json(buf) => {
                record.bytes += chunk.len() as u64;
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
        match &mut self.framing {
            Framing::Sse(parser) => {
                self.record.bytes = parser.bytes();
                self.record.oversize_events += parser.oversize_events();
                self.record.truncated |= parser.finish();
            }
            Framing::Ndjson(lines) => {
                self.record.oversize_events += lines.oversize_lines();
                // A last line without its newline is still a whole JSON object when the body
                // ended cleanly; Ollama always ends lines, others may not.
                let extractor = &mut self.extractor;
                let record = &mut self.record;
                let tail = lines.finish();
                if let Some(line) = tail {
                    if clean {
                        record.events += 1;
                        extractor.on_event("", &line, record);
                    } else {
                        record.truncated = true;
                    }
                }
            }
            Framing::EventStream(frames) => {
                self.record.oversize_events += frames.oversize_frames();
                self.record.truncated |= frames.finish();
            }
            Framing::Json(buf) => {
                if self.json_oversize {
                    self.record.oversize_events += 1;
                } else if !buf.is_empty() {
                    self.record.events += 1;
                    let body = std::mem::take(buf);
                    self.extractor.on_json(&body, &mut self.record);
                }
            }
        }
        self.extractor.finish(clean, &mut self.record);
        self.record
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
}
