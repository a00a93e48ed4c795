//! OpenAI chat completions, legacy completions and embeddings, and the servers that copy them:
//! their responses, and what their requests say.
//!
//! Those are Azure, DeepSeek, Groq, vLLM, Mistral, OpenRouter, Together, xAI and Ollama's `/v1`;
//! their quirks are listed in the fixtures' README.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::provider::Quirks;

use super::tree::Json;
use super::{
    EventKind, Extractor, Progress, ResponseRecord, Usage,
    json::{
        Count, ErrorField, Filled, FinishReasons, Needle, Obj, Objs, Text, set_error, set_first,
    },
    output::{Function, OutputBuilder, TextParts, ToolCall},
    request::{
        Input, RequestApi, RequestFields, ToolResult, message, parts, path_segment_after,
        result_text, text_part,
    },
};

/// One chunk, or a whole non-streamed body: the two share their shape.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Chunk<'a> {
    #[serde(borrow)]
    id: Text<'a>,
    #[serde(borrow)]
    model: Text<'a>,
    #[serde(borrow)]
    choices: Objs<Choice<'a>>,
    usage: Obj<RawUsage>,
    x_groq: Obj<XGroq>,
    #[serde(borrow)]
    error: ErrorField<'a>,
    /// vLLM's older error body is flat: `{"object":"error","type":…,"code":…,"message":…}`.
    #[serde(borrow)]
    object: Text<'a>,
    #[serde(borrow, rename = "type")]
    kind: Text<'a>,
    #[serde(borrow)]
    code: Text<'a>,
    #[serde(borrow)]
    message: Text<'a>,
    /// FastAPI-style servers answer errors with `{"detail": …}`.
    detail: Filled,
    /// Embeddings bodies keep their vectors here; only its presence matters.
    data: Filled,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Choice<'a> {
    index: Count,
    #[serde(borrow)]
    finish_reason: Text<'a>,
    /// Streamed chunks.
    #[serde(borrow)]
    delta: Obj<Message<'a>>,
    /// Non-streamed bodies.
    #[serde(borrow)]
    message: Obj<Message<'a>>,
    /// Legacy completions (and Together, next to `delta`) stream the text here.
    #[serde(borrow)]
    text: Text<'a>,
}

/// A delta or a whole message: what counts as output, and what capture keeps of it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Message<'a> {
    #[serde(borrow)]
    content: TextParts<'a>,
    refusal: Filled,
    /// DeepSeek and vLLM.
    reasoning_content: Filled,
    /// Newer vLLM, Ollama `/v1`, OpenRouter.
    reasoning: Filled,
    #[serde(borrow)]
    tool_calls: Objs<ToolCall<'a>>,
    /// The deprecated `functions` API: one call.
    #[serde(borrow)]
    function_call: Obj<Function<'a>>,
    audio: Filled,
}

impl Message<'_> {
    fn has_output(&self) -> bool {
        self.content.0.iter().any(|piece| !piece.is_empty())
            || self.refusal.0
            || self.reasoning_content.0
            || self.reasoning.0
            || !self.tool_calls.0.is_empty()
            || self.function_call.0.is_some()
            || self.audio.0
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawUsage {
    prompt_tokens: Count,
    completion_tokens: Count,
    prompt_tokens_details: Obj<PromptDetails>,
    completion_tokens_details: Obj<CompletionDetails>,
    /// DeepSeek.
    prompt_cache_hit_tokens: Count,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PromptDetails {
    cached_tokens: Count,
    cache_write_tokens: Count,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CompletionDetails {
    reasoning_tokens: Count,
}

/// Groq's own envelope; its `usage` is used only when the stream has no top-level one.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct XGroq {
    usage: Obj<RawUsage>,
}

/// A chunk read only for its usage: once output, model and id are known, a chunk without a
/// finish reason or an error matters only for its usage (running totals on every chunk with
/// vLLM `continuous_usage_stats` and xAI), so its choices need not be decoded.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct UsageOnly {
    choices: Filled,
    usage: Obj<RawUsage>,
    x_groq: Obj<XGroq>,
}

/// The key of the deprecated `function_call`, apart from any `tool_calls` index.
const FUNCTION_CALL_KEY: u64 = u64::MAX;

/// Feeds choice 0 of a chunk (or whole body) to the output builder. Only choice 0 is
/// assembled: the captured output is one assistant message, and with `n > 1` the other choices
/// are alternatives to it.
fn capture(out: &mut OutputBuilder, chunk: &Chunk<'_>) {
    for choice in &chunk.choices.0 {
        if choice.index.0.unwrap_or(0) != 0 {
            continue;
        }
        // Together streams the text both in `text` and in `delta.content`: the message wins.
        let mut had_content = false;
        if let Some(m) = &choice.delta.0 {
            for piece in &m.content.0 {
                had_content |= !piece.is_empty();
                out.text(piece);
            }
            for call in &m.tool_calls.0 {
                let Some(f) = &call.function.0 else { continue };
                // Servers that send each call whole have no index.
                if let Some(name) = f.name.non_empty() {
                    out.tool_start(call.index.0, call.id.non_empty(), name);
                }
                out.tool_args(call.index.0, f.arguments.as_str());
            }
            if let Some(f) = &m.function_call.0 {
                if let Some(name) = f.name.non_empty() {
                    out.tool_start(Some(FUNCTION_CALL_KEY), None, name);
                }
                out.tool_args(Some(FUNCTION_CALL_KEY), f.arguments.as_str());
            }
        }
        if let Some(m) = &choice.message.0 {
            for piece in &m.content.0 {
                had_content |= !piece.is_empty();
                out.text(piece);
            }
            for call in &m.tool_calls.0 {
                if let Some(f) = &call.function.0 {
                    out.tool_call(
                        call.id.non_empty(),
                        f.name.as_str().unwrap_or(""),
                        f.arguments.as_str(),
                    );
                }
            }
            if let Some(f) = &m.function_call.0 {
                out.tool_call(None, f.name.as_str().unwrap_or(""), f.arguments.as_str());
            }
        }
        if !had_content && let Some(text) = choice.text.as_str() {
            out.text(text);
        }
    }
}

static FINISH_REASON: Needle = Needle::new("\"finish_reason\"");
static USAGE: Needle = Needle::new("\"usage\"");
static ERROR: Needle = Needle::new("\"error\"");
static TOOL_CALLS: Needle = Needle::new("\"tool_calls\"");

pub struct OpenAiChat {
    /// xAI leaves reasoning out of `completion_tokens`; everyone else includes it.
    reasoning_outside_completion: bool,
    finish: FinishReasons,
    top_level_usage_seen: bool,
}

impl OpenAiChat {
    pub fn new(quirks: Quirks) -> Self {
        OpenAiChat {
            reasoning_outside_completion: quirks.reasoning_tokens_outside_completion,
            finish: FinishReasons::default(),
            top_level_usage_seen: false,
        }
    }

    fn usage(&self, u: &RawUsage) -> Usage {
        let prompt = u.prompt_tokens_details.0.as_ref();
        let completion = u.completion_tokens_details.0.as_ref();
        let reasoning = completion.and_then(|c| c.reasoning_tokens.0);
        let output = if self.reasoning_outside_completion {
            match (u.completion_tokens.0, reasoning) {
                (None, None) => None,
                (c, r) => Some(c.unwrap_or(0).saturating_add(r.unwrap_or(0))),
            }
        } else {
            u.completion_tokens.0
        };
        Usage {
            input_tokens: u.prompt_tokens.0,
            output_tokens: output,
            cached_input_tokens: prompt
                .and_then(|p| p.cached_tokens.0)
                .or(u.prompt_cache_hit_tokens.0),
            cache_creation_input_tokens: prompt.and_then(|p| p.cache_write_tokens.0),
            cache_creation_1h_input_tokens: None,
            reasoning_tokens: reasoning,
        }
    }

    fn apply_usage(
        &mut self,
        usage: &Obj<RawUsage>,
        x_groq: &Obj<XGroq>,
        no_choices: bool,
        record: &mut ResponseRecord,
    ) -> EventKind {
        if let Some(u) = &usage.0 {
            // Running totals (vLLM continuous usage, xAI) and the final usage chunk alike:
            // the last object wins, whole.
            self.top_level_usage_seen = true;
            record.usage = self.usage(u);
            if no_choices {
                return EventKind::UsageOnly;
            }
        } else if !self.top_level_usage_seen
            && let Some(u) = x_groq.0.as_ref().and_then(|x| x.usage.0.as_ref())
        {
            record.usage = self.usage(u);
        }
        EventKind::Other
    }

    fn apply(&mut self, c: &Chunk<'_>, p: &mut Progress) -> EventKind {
        // Text only when capture is on; tool call ids and names always.
        capture(&mut p.output, c);
        let record = &mut p.record;
        set_first(&mut record.model, &c.model);
        set_first(&mut record.response_id, &c.id);
        let no_choices = c.choices.0.is_empty();
        for choice in &c.choices.0 {
            if let Some(reason) = choice.finish_reason.as_str() {
                self.finish.set(choice.index.0.unwrap_or(0), reason, record);
            }
            p.started = p.started
                || choice.text.non_empty().is_some()
                || choice.delta.0.as_ref().is_some_and(Message::has_output);
        }
        let kind = self.apply_usage(&c.usage, &c.x_groq, no_choices, record);
        if let Some(e) = &c.error.0 {
            let kind = e.kind.non_empty().or(e.code.non_empty());
            set_error(record, kind, e.message.as_str());
        } else if c.object.as_str() == Some("error") {
            let kind = c.kind.non_empty().or(c.code.non_empty());
            set_error(record, kind, c.message.as_str());
        }
        kind
    }
}

impl Extractor for OpenAiChat {
    fn on_event(&mut self, _name: &str, data: &str, p: &mut Progress) -> EventKind {
        // Most chunks of a long stream carry only content: unless capture wants it, once
        // output has started and the id and model are known, a byte scan tells which chunks
        // can matter at all.
        let bytes = data.as_bytes();
        if p.settled()
            && !p.capturing()
            && !FINISH_REASON.non_null(bytes)
            && !ERROR.present(bytes)
            && !TOOL_CALLS.non_null(bytes)
        {
            // `"usage"` with an object value, top level or Groq's.
            if !USAGE.object(bytes) {
                return EventKind::Other;
            }
            return match serde_json::from_str::<UsageOnly>(data) {
                Ok(u) => self.apply_usage(&u.usage, &u.x_groq, !u.choices.0, &mut p.record),
                Err(_) => {
                    p.malformed();
                    EventKind::Other
                }
            };
        }
        match serde_json::from_str::<Chunk<'_>>(data) {
            Ok(chunk) => self.apply(&chunk, p),
            Err(_) => {
                p.malformed();
                EventKind::Other
            }
        }
    }

    /// The provider's own end marker: once it arrived, a cut afterwards loses nothing.
    fn on_done(&mut self, p: &mut Progress) {
        p.ended = true;
    }

    fn on_json(&mut self, body: &[u8], p: &mut Progress) {
        match super::json::from_bytes::<Chunk<'_>>(body) {
            Ok(chunk) => {
                let recognised = chunk.id.as_str().is_some()
                    || chunk.model.as_str().is_some()
                    || !chunk.choices.0.is_empty()
                    || chunk.usage.0.is_some()
                    || chunk.data.0;
                if !recognised && chunk.detail.0 {
                    set_error(&mut p.record, None, None);
                }
                self.apply(&chunk, p);
                p.json_body = Some(recognised && p.record.error.is_none());
            }
            Err(_) => {
                p.malformed();
                p.json_body = Some(false);
            }
        }
    }
}

// The request side.

/// Azure names the deployment, which stands for the model, in the path:
/// `/openai/deployments/<d>/chat/completions`.
fn azure_deployment(path: &str) -> Option<String> {
    path_segment_after(path, "/deployments/")
        .filter(|d| !d.is_empty())
        .map(str::to_string)
}

/// Chat completions: `messages` (system and developer ones are instructions), streamed on the
/// body's flag; a stream's usage is asked for with `stream_options.include_usage`.
pub(crate) struct ChatRequest;

impl RequestApi for ChatRequest {
    /// `role: tool` messages with their `tool_call_id`.
    fn tool_results(&self, body: &Value) -> Vec<ToolResult> {
        let Some(messages) = body.get("messages").and_then(Value::as_array) else {
            return Vec::new();
        };
        messages
            .iter()
            .filter(|m| m.get("role").and_then(Value::as_str) == Some("tool"))
            .filter_map(|m| {
                Some(ToolResult {
                    call_id: m.get("tool_call_id")?.as_str()?.to_owned(),
                    name: None,
                    content: result_text(m.get("content").unwrap_or(&Value::Null)),
                    is_error: false,
                })
            })
            .collect()
    }

    fn model_from_path(&self, path: &str) -> Option<String> {
        azure_deployment(path)
    }

    fn input<'a>(&self, body: &Json<'a>) -> Input<'a> {
        Input::chat(body)
    }

    fn input_message_count(&self, fields: &RequestFields) -> Option<u64> {
        fields.count_messages()
    }

    fn ask_stream_usage(&self, body: &[u8], has_stream_options: bool) -> Option<Bytes> {
        add_include_usage(body, has_stream_options)
    }
}

/// Legacy completions: one `prompt`, streamed on the body's flag, stream usage asked for as in
/// chat. The typed read counts no messages (it does not read the prompt).
pub(crate) struct CompletionsRequest;

impl RequestApi for CompletionsRequest {
    fn model_from_path(&self, path: &str) -> Option<String> {
        azure_deployment(path)
    }

    fn input<'a>(&self, body: &Json<'a>) -> Input<'a> {
        Input::prompt(&body["prompt"])
    }

    fn input_message_count(&self, _: &RequestFields) -> Option<u64> {
        None
    }

    fn ask_stream_usage(&self, body: &[u8], has_stream_options: bool) -> Option<Bytes> {
        add_include_usage(body, has_stream_options)
    }
}

/// Embeddings: `input`, a text or a list of them, each one user message.
pub(crate) struct EmbeddingsRequest;

impl RequestApi for EmbeddingsRequest {
    fn model_from_path(&self, path: &str) -> Option<String> {
        azure_deployment(path)
    }

    fn input<'a>(&self, body: &Json<'a>) -> Input<'a> {
        let mut input = Input::default();
        match &body["input"] {
            Json::String(s) => input
                .messages
                .push(message(&Json::Null, vec![text_part(s.clone())])),
            Json::Array(items) => {
                for i in items {
                    input.messages.push(message(&Json::Null, parts(i)));
                }
            }
            _ => {}
        }
        input
    }

    fn input_message_count(&self, fields: &RequestFields) -> Option<u64> {
        fields.count_input()
    }
}

/// Adds `"stream_options":{"include_usage":true}`. When the request has no `stream_options`, the
/// member is inserted right after the opening brace, leaving every other byte as it was. One
/// that is `null` (read as none) is replaced: a second member of the same name, after it or
/// before, would leave the provider to pick one (a stream sent without its usage, or a body
/// it refuses). So a body with the name anywhere in it is read whole.
fn add_include_usage(body: &[u8], has_stream_options: bool) -> Option<Bytes> {
    if !has_stream_options && memchr::memmem::find(body, b"\"stream_options\"").is_none() {
        let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
        if body[start] != b'{' {
            return None;
        }
        let rest = &body[start + 1..];
        let empty = rest.iter().all(|b| b.is_ascii_whitespace() || *b == b'}');
        let mut out = BytesMut::with_capacity(body.len() + 48);
        out.extend_from_slice(&body[..=start]);
        out.extend_from_slice(br#""stream_options":{"include_usage":true}"#);
        if !empty {
            out.extend_from_slice(b",");
        }
        out.extend_from_slice(rest);
        return Some(out.freeze());
    }
    let mut value: Value = super::json::from_bytes(body).ok()?;
    let options = value
        .as_object_mut()?
        .entry("stream_options")
        .or_insert(Value::Null);
    if options.is_null() {
        *options = json!({});
    }
    options
        .as_object_mut()?
        .insert("include_usage".into(), Value::Bool(true));
    serde_json::to_vec(&value).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{format::request::Request, provider::WireFormat};

    fn run(provider: &str, events: &[&str]) -> (ResponseRecord, Vec<EventKind>) {
        let mut x = OpenAiChat::new(crate::provider::builtin_quirks(provider));
        let mut p = Progress::default();
        let kinds = events
            .iter()
            .map(|e| crate::format::sse_event(&mut x, "", e, &mut p))
            .collect();
        let r = p.finish(&mut x, true);
        (r, kinds)
    }

    const ROLE: &str = r#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}"#;
    const TOKEN: &str = r#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}],"usage":null}"#;
    const FINISH: &str = r#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#;

    #[test]
    fn groq_usage_comes_from_x_groq_when_there_is_no_top_level_usage() {
        let finish = r#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"x_groq":{"id":"req_1","usage":{"queue_time":0.01,"prompt_tokens":18,"prompt_time":0.001,"completion_tokens":7,"completion_time":0.02,"total_tokens":25,"total_time":0.03}}}"#;
        let (r, _) = run("groq", &[ROLE, TOKEN, finish, "[DONE]"]);
        assert_eq!(r.usage.input_tokens, Some(18));
        assert_eq!(r.usage.output_tokens, Some(7));
        assert!(r.stream_completed);
    }

    #[test]
    fn groq_top_level_usage_wins_over_x_groq_usage() {
        let finish = r#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"x_groq":{"usage":{"prompt_tokens":1,"completion_tokens":1}}}"#;
        let usage = r#"{"id":"c1","model":"m","choices":[],"usage":{"prompt_tokens":18,"completion_tokens":7},"x_groq":{"usage":{"prompt_tokens":2,"completion_tokens":2}}}"#;
        let (r, kinds) = run("groq", &[ROLE, TOKEN, finish, usage, "[DONE]"]);
        assert_eq!(
            (r.usage.input_tokens, r.usage.output_tokens),
            (Some(18), Some(7))
        );
        assert_eq!(kinds[3], EventKind::UsageOnly);
    }

    #[test]
    fn xai_output_adds_reasoning_to_completion_tokens() {
        let usage = r#"{"id":"u","model":"grok-4","choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}],"usage":{"prompt_tokens":30,"completion_tokens":12,"completion_tokens_details":{"reasoning_tokens":200},"prompt_tokens_details":{"cached_tokens":6}}}"#;
        let (r, _) = run("xai", &[usage, "[DONE]"]);
        assert_eq!(r.usage.output_tokens, Some(212));
        assert_eq!(r.usage.reasoning_tokens, Some(200));
        assert_eq!(r.usage.cached_input_tokens, Some(6));
        // The same body from any other provider: completion tokens already include reasoning.
        let (r, _) = run("openai", &[usage, "[DONE]"]);
        assert_eq!(r.usage.output_tokens, Some(12));
    }

    #[test]
    fn vllm_continuous_usage_takes_the_last_object_never_a_sum() {
        let chunk = |n: u32| {
            format!(
                r#"{{"id":"c1","model":"m","choices":[{{"index":0,"delta":{{"content":"t"}},"finish_reason":null}}],"usage":{{"prompt_tokens":10,"completion_tokens":{n},"total_tokens":{}}}}}"#,
                10 + n
            )
        };
        let events: Vec<String> = (1..=5).map(chunk).collect();
        let mut all: Vec<&str> = events.iter().map(String::as_str).collect();
        // A later chunk with `usage: null` must not clear the running total.
        all.push(FINISH);
        all.push("[DONE]");
        let (r, kinds) = run("vllm", &all);
        assert_eq!(
            (r.usage.input_tokens, r.usage.output_tokens),
            (Some(10), Some(5))
        );
        assert!(
            kinds.iter().all(|k| *k == EventKind::Other),
            "content chunks are not usage-only"
        );
    }

    #[test]
    fn azure_annotation_chunk_after_the_finish_chunk_overwrites_nothing() {
        let first = r#"{"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[]}"#;
        let annotation = r#"{"choices":[{"content_filter_offsets":{"check_offset":0,"start_offset":0,"end_offset":20},"content_filter_results":{"hate":{"filtered":false,"severity":"safe"}},"finish_reason":null,"index":0}],"created":0,"id":"","model":"","object":""}"#;
        let (r, kinds) = run("azure", &[first, ROLE, TOKEN, FINISH, annotation, "[DONE]"]);
        assert_eq!(
            kinds[0],
            EventKind::Other,
            "Azure's first chunk has no usage object"
        );
        assert_eq!(r.model.as_deref(), Some("m"));
        assert_eq!(r.response_id.as_deref(), Some("c1"));
        assert_eq!(r.finish_reasons, ["stop"]);
        assert!(r.stream_completed);
    }

    #[test]
    fn choices_null_or_missing_with_a_usage_object_is_the_usage_only_chunk() {
        for usage in [
            r#"{"id":"c1","model":"m","choices":null,"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
            r#"{"id":"c1","model":"m","usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
            r#"{"id":"c1","model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
        ] {
            let (r, kinds) = run("vllm", &[ROLE, TOKEN, FINISH, usage, "[DONE]"]);
            assert_eq!(kinds[3], EventKind::UsageOnly, "{usage}");
            assert_eq!(r.usage.output_tokens, Some(4));
            assert_eq!(r.finish_reasons, ["stop"]);
        }
        // `choices: []` without usage (Azure's first chunk) is not.
        let (_, kinds) = run("azure", &[r#"{"choices":[],"id":"","usage":null}"#]);
        assert_eq!(kinds[0], EventKind::Other);
    }

    #[test]
    fn deepseek_cache_hits_count_as_cached_input_when_details_are_absent() {
        let finish = r#"{"id":"d","model":"deepseek-chat","choices":[{"index":0,"delta":{"content":""},"finish_reason":"stop"}],"usage":{"prompt_tokens":100,"completion_tokens":5,"prompt_cache_hit_tokens":64,"prompt_cache_miss_tokens":36}}"#;
        let (r, _) = run("deepseek", &[finish, "[DONE]"]);
        assert_eq!(r.usage.cached_input_tokens, Some(64));
        assert_eq!(r.usage.cache_creation_input_tokens, None);
    }

    #[test]
    fn malformed_json_in_one_event_is_counted_and_later_events_still_parse() {
        let usage = r#"{"id":"c1","model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
        let (r, _) = run(
            "openai",
            &[
                ROLE,
                r#"{"id":"c1","choices":[{"#,
                TOKEN,
                FINISH,
                usage,
                "[DONE]",
            ],
        );
        assert_eq!(r.malformed_events, 1);
        assert_eq!(r.usage.output_tokens, Some(4));
        assert_eq!(r.finish_reasons, ["stop"]);
        assert!(r.stream_completed);
    }

    #[test]
    fn openrouter_mid_stream_error_chunk_keeps_its_finish_reason_and_sets_the_error() {
        let err = r#"{"id":"gen-1","model":"m","error":{"code":"server_error","message":"upstream died"},"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}"#;
        let (r, _) = run("openrouter", &[ROLE, TOKEN, err, "[DONE]"]);
        assert_eq!(
            r.error.as_ref().and_then(|e| e.kind.as_deref()),
            Some("server_error")
        );
        assert_eq!(r.finish_reasons, ["error"]);
        assert!(!r.stream_completed);
    }

    #[test]
    fn mistral_spaced_json_is_not_skipped_by_the_pre_check() {
        let finish = r#"{"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}"#;
        let (r, _) = run("mistral", &[ROLE, TOKEN, TOKEN, finish, "[DONE]"]);
        assert_eq!(r.finish_reasons, ["stop"]);
        assert_eq!(r.usage.input_tokens, Some(9));
    }

    #[test]
    fn together_seeds_above_two_to_the_53_do_not_fail_the_event() {
        let finish = r#"{"id":"8f3c-SJC","model":"m","choices":[{"index":0,"text":"","seed":18446744073709551615,"delta":{"token_id":2,"content":""},"finish_reason":"eos"}],"usage":{"prompt_tokens":5,"completion_tokens":6}}"#;
        let (r, _) = run("together", &[finish, "[DONE]"]);
        assert_eq!(r.malformed_events, 0);
        assert_eq!(r.finish_reasons, ["eos"]);
        assert_eq!(r.usage.output_tokens, Some(6));
    }

    #[test]
    fn output_starts_with_the_first_content_reasoning_or_tool_delta() {
        let mut x = OpenAiChat::new(Quirks::default());
        let mut p = Progress::default();
        crate::format::sse_event(&mut x, "", ROLE, &mut p);
        assert!(!p.started, "the role chunk carries no output");
        crate::format::sse_event(
            &mut x,
            "",
            r#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"reasoning_content":"hm"}}]}"#,
            &mut p,
        );
        assert!(p.started);
        let mut x = OpenAiChat::new(Quirks::default());
        crate::format::sse_event(
            &mut x,
            "",
            r#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":null,"tool_calls":[{"index":0,"id":"call_1","function":{"name":"f","arguments":""}}]}}]}"#,
            &mut p,
        );
        assert!(p.started);
    }

    #[test]
    fn json_error_bodies_are_not_completed_and_name_the_error() {
        let mut x = OpenAiChat::new(Quirks::default());
        let mut p = Progress::default();
        x.on_json(br#"{"object":"error","message":"too long","type":"BadRequestError","param":null,"code":400}"#, &mut p);
        let r = p.finish(&mut x, true);
        assert_eq!(
            r.error.as_ref().and_then(|e| e.kind.as_deref()),
            Some("BadRequestError")
        );
        assert!(!r.stream_completed);
    }

    #[test]
    fn a_stream_cut_before_done_is_not_completed() {
        let (r, _) = run("openai", &[ROLE, TOKEN, FINISH]);
        assert!(!r.stream_completed);
        assert_eq!(r.finish_reasons, ["stop"]);
    }

    fn request(format: WireFormat, path: &str, body: &str) -> Request {
        Request::read(format, path, body.as_bytes()).unwrap()
    }

    #[test]
    fn chat_streams_on_its_flag_and_counts_messages_without_instructions() {
        let body = r#"{"model":"gpt-4o","stream":true,"messages":[
            {"role":"system","content":"s"},{"role":"developer","content":"d"},
            {"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]}"#;
        let r = request(WireFormat::ChatCompletions, "/v1/chat/completions", body);
        assert!(r.stream);
        assert_eq!(r.model.as_deref(), Some("gpt-4o"));
        assert_eq!(r.fields.unwrap().input_message_count(), Some(2));
        let r = request(WireFormat::ChatCompletions, "/v1/chat/completions", "{}");
        assert!(!r.stream);
        assert_eq!(r.fields.unwrap().input_message_count(), None);
    }

    #[test]
    fn completions_and_embeddings_stream_on_their_flag_and_count_as_they_always_did() {
        let r = request(
            WireFormat::Completions,
            "/v1/completions",
            r#"{"prompt":"p","stream":true}"#,
        );
        assert!(r.stream);
        assert_eq!(r.fields.unwrap().input_message_count(), None);
        let r = request(
            WireFormat::Embeddings,
            "/v1/embeddings",
            r#"{"input":["a","b","c"]}"#,
        );
        assert!(!r.stream);
        assert_eq!(r.fields.unwrap().input_message_count(), Some(3));
        let r = request(WireFormat::Embeddings, "/v1/embeddings", r#"{"input":"a"}"#);
        assert_eq!(r.fields.unwrap().input_message_count(), Some(1));
    }

    #[test]
    fn the_azure_deployment_in_the_path_is_the_model_unless_the_body_names_one() {
        let path = "/openai/deployments/gpt4o-prod/chat/completions";
        let r = request(WireFormat::ChatCompletions, path, "{}");
        assert_eq!(r.model.as_deref(), Some("gpt4o-prod"));
        let r = request(WireFormat::ChatCompletions, path, r#"{"model":"m"}"#);
        assert_eq!(r.model.as_deref(), Some("m"));
        let r = request(WireFormat::ChatCompletions, "/v1/chat/completions", "{}");
        assert_eq!(r.model, None);
    }

    #[test]
    fn stream_usage_is_asked_for_on_chat_and_completion_streams_only() {
        let ask =
            |format, body: &str| request(format, "/", body).with_stream_usage(body.as_bytes());
        let stream = r#"{"stream":true}"#;
        assert!(ask(WireFormat::ChatCompletions, stream).is_some());
        assert!(ask(WireFormat::Completions, stream).is_some());
        assert!(ask(WireFormat::Embeddings, stream).is_none());
        assert!(ask(WireFormat::Responses, stream).is_none());
        assert!(ask(WireFormat::ChatCompletions, r#"{"stream":false}"#).is_none());
        let asked = r#"{"stream":true,"stream_options":{"include_usage":true}}"#;
        assert!(ask(WireFormat::ChatCompletions, asked).is_none());
    }

    #[test]
    fn include_usage_is_inserted_after_the_opening_brace_leaving_the_rest_alone() {
        let body = br#" {"model":"gpt-4o","stream":true}"#;
        let out = add_include_usage(body, false).unwrap();
        assert_eq!(
            &out[..],
            br#" {"stream_options":{"include_usage":true},"model":"gpt-4o","stream":true}"#
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
    }

    /// `"stream_options": null` is replaced, not joined by a second member; the name elsewhere
    /// in the body does not stop the usage being asked for.
    #[test]
    fn null_stream_options_are_replaced_not_doubled() {
        let ask = |body: &str| {
            let out = request(WireFormat::ChatCompletions, "/", body)
                .with_stream_usage(body.as_bytes())
                .unwrap();
            String::from_utf8(out.to_vec()).unwrap()
        };
        let out = ask(r#"{"model":"m","stream":true,"stream_options":null}"#);
        assert_eq!(out.matches("stream_options").count(), 1, "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["stream_options"], json!({"include_usage": true}));
        let out = ask(r#"{"model":"m","stream":true,"metadata":{"stream_options":"x"}}"#);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true, "{out}");
        assert_eq!(v["metadata"]["stream_options"], "x");
    }

    #[test]
    fn existing_stream_options_keep_their_other_fields() {
        let body = br#"{"model":"m","stream":true,"stream_options":{"include_obfuscation":false}}"#;
        let out = add_include_usage(body, true).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["include_obfuscation"], false);
    }
}
