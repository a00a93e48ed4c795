//! Ollama's native API (`/api/chat`, `/api/generate`): NDJSON lines, or one JSON object; and
//! what its requests say.

use serde::Deserialize;

use super::tree::Json;
use super::{
    EventKind, Extractor, Progress, Usage,
    json::{
        Count, ErrorField, Filled, FinishReasons, Flag, Needle, Obj, Objs, Text, set_error,
        set_first,
    },
    output::{OutputBuilder, ToolCall},
    request::{Input, RequestApi, RequestFields},
};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Line<'a> {
    #[serde(borrow)]
    model: Text<'a>,
    /// `/api/chat`.
    #[serde(borrow)]
    message: Obj<Message<'a>>,
    /// `/api/generate`.
    #[serde(borrow)]
    response: Text<'a>,
    thinking: Filled,
    done: Flag,
    #[serde(borrow)]
    done_reason: Text<'a>,
    prompt_eval_count: Count,
    eval_count: Count,
    #[serde(borrow)]
    error: ErrorField<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Message<'a> {
    #[serde(borrow)]
    content: Text<'a>,
    thinking: Filled,
    #[serde(borrow)]
    tool_calls: Objs<ToolCall<'a>>,
}

/// Feeds one line (or a whole body) to the output builder; Ollama sends each tool call whole.
fn capture(out: &mut OutputBuilder, line: &Line<'_>) {
    if let Some(m) = &line.message.0 {
        out.text(m.content.as_str().unwrap_or(""));
        for call in &m.tool_calls.0 {
            if let Some(f) = &call.function.0 {
                out.tool_call(
                    call.id.non_empty(),
                    f.name.as_str().unwrap_or(""),
                    f.arguments.as_str(),
                );
            }
        }
    }
    out.text(line.response.as_str().unwrap_or(""));
}

static DONE: Needle = Needle::new("\"done\"");
static ERROR: Needle = Needle::new("\"error\"");

/// Whether a line may be the final `done: true` object or an error; every other line is
/// `"done": false` with content.
fn may_matter(data: &[u8]) -> bool {
    DONE.any(data, |h| h == super::json::Hit::Value(b't')) || ERROR.present(data)
}

#[derive(Default)]
pub struct OllamaNative {
    finish: FinishReasons,
}

impl OllamaNative {
    fn apply(&mut self, line: &Line<'_>, p: &mut Progress) {
        if p.capturing() {
            capture(&mut p.output, line);
        }
        let record = &mut p.record;
        set_first(&mut record.model, &line.model);
        let message = line.message.0.as_ref().is_some_and(|m| {
            m.content.non_empty().is_some() || m.thinking.0 || !m.tool_calls.0.is_empty()
        });
        p.started = p.started || message || line.response.non_empty().is_some() || line.thinking.0;
        if line.done.0 {
            p.ended = true;
            if let Some(reason) = line.done_reason.as_str() {
                self.finish.set(0, reason, record);
            }
            // The counts are `omitempty`: a prompt served wholly from the KV cache has no
            // `prompt_eval_count`, which means 0, not unknown.
            record.usage = Usage {
                input_tokens: Some(line.prompt_eval_count.0.unwrap_or(0)),
                output_tokens: Some(line.eval_count.0.unwrap_or(0)),
                ..Usage::default()
            };
        }
        if let Some(e) = &line.error.0 {
            set_error(record, e.kind.non_empty(), e.message.as_str());
        }
    }
}

impl Extractor for OllamaNative {
    fn on_event(&mut self, _name: &str, data: &str, p: &mut Progress) -> EventKind {
        // Lines carry no id: once output started and the model is known, only the final line
        // or an error matters, unless capture wants the content.
        let settled = p.started && p.record.model.is_some();
        if settled && !p.capturing() && !may_matter(data.as_bytes()) {
            return EventKind::Other;
        }
        match serde_json::from_str::<Line<'_>>(data) {
            Ok(line) => self.apply(&line, p),
            Err(_) => p.malformed(),
        }
        EventKind::Other
    }

    fn on_json(&mut self, body: &[u8], p: &mut Progress) {
        match super::json::from_bytes::<Line<'_>>(body) {
            Ok(line) => {
                self.apply(&line, p);
                p.json_body = Some(line.done.0 && p.record.error.is_none());
            }
            Err(_) => {
                p.malformed();
                p.json_body = Some(false);
            }
        }
    }
}

// The request side: Ollama's native API streams unless the body says `"stream": false`.

/// `/api/chat` requests: `messages`, system ones as instructions.
pub(crate) struct OllamaChatRequest;

impl RequestApi for OllamaChatRequest {
    fn streams(&self, _: &str, flag: Option<bool>) -> bool {
        flag.unwrap_or(true)
    }

    fn input<'a>(&self, body: &Json<'a>) -> Input<'a> {
        Input::chat(body)
    }

    fn input_message_count(&self, fields: &RequestFields) -> Option<u64> {
        fields.count_messages()
    }
}

/// `/api/generate` requests: one `prompt`. The typed read counts no messages (it does not read
/// the prompt).
pub(crate) struct OllamaGenerateRequest;

impl RequestApi for OllamaGenerateRequest {
    fn streams(&self, _: &str, flag: Option<bool>) -> bool {
        flag.unwrap_or(true)
    }

    fn input<'a>(&self, body: &Json<'a>) -> Input<'a> {
        Input::prompt(&body["prompt"])
    }

    fn input_message_count(&self, _: &RequestFields) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::ResponseRecord;
    use crate::{format::request::Request, provider::WireFormat};

    fn run(lines: &[&str]) -> ResponseRecord {
        let mut x = OllamaNative::default();
        let mut p = Progress::default();
        for l in lines {
            x.on_event("", l, &mut p);
        }
        p.finish(&mut x, true)
    }

    const TOKEN: &str =
        r#"{"model":"llama3.2:3b","message":{"role":"assistant","content":"Hi"},"done":false}"#;

    #[test]
    fn a_missing_count_on_the_done_object_means_zero() {
        let done = r#"{"model":"llama3.2:3b","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","eval_count":4}"#;
        let r = run(&[TOKEN, TOKEN, done]);
        assert_eq!(r.usage.input_tokens, Some(0));
        assert_eq!(r.usage.output_tokens, Some(4));
        assert_eq!(r.finish_reasons, ["stop"]);
        assert!(r.stream_completed);
    }

    #[test]
    fn an_error_line_sets_an_error_without_a_type() {
        let r = run(&[
            TOKEN,
            r#"{"error":"model runner has unexpectedly stopped"}"#,
        ]);
        let e = r.error.expect("error");
        assert_eq!(e.kind, None);
        assert!(e.message.is_some());
        assert!(!r.stream_completed);
        assert_eq!(r.usage.input_tokens, None);
    }

    #[test]
    fn generate_lines_use_response_for_output() {
        let mut x = OllamaNative::default();
        let mut p = Progress::default();
        x.on_event("", r#"{"model":"m","response":"","done":false}"#, &mut p);
        assert!(!p.started);
        x.on_event("", r#"{"model":"m","response":"Hi","done":false}"#, &mut p);
        assert!(p.started);
        x.on_event("", r#"{"model":"m","response":"","done": true,"done_reason":"length","context":[1,2,3],"prompt_eval_count":3,"eval_count":2}"#, &mut p);
        let r = p.finish(&mut x, true);
        assert_eq!(r.finish_reasons, ["length"]);
        assert!(r.stream_completed);
    }

    #[test]
    fn requests_stream_unless_told_not_to_and_count_chat_messages() {
        let read =
            |format, body: &str| Request::read(format, "/api/chat", body.as_bytes()).unwrap();
        let r = read(
            WireFormat::OllamaChat,
            r#"{"model":"llama3","messages":[{"role":"system","content":"s"},{"role":"user","content":"hi"}]}"#,
        );
        assert!(r.stream);
        assert_eq!(r.model.as_deref(), Some("llama3"));
        assert_eq!(r.fields.unwrap().input_message_count(), Some(1));
        assert!(!read(WireFormat::OllamaChat, r#"{"stream":false}"#).stream);
        let r = read(WireFormat::OllamaGenerate, r#"{"prompt":"p"}"#);
        assert!(r.stream);
        assert_eq!(r.fields.unwrap().input_message_count(), None);
        assert!(!read(WireFormat::OllamaGenerate, r#"{"stream":false}"#).stream);
        // An empty body is not read, and still streams.
        assert!(
            Request::read(WireFormat::OllamaChat, "/api/chat", b"")
                .unwrap()
                .stream
        );
    }
}
