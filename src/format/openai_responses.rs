//! OpenAI Responses API (`/v1/responses`): streamed events, or the non-streamed response; and
//! what its requests say.

use serde::Deserialize;
use serde_json::Value;

use super::{
    EventKind, Extractor, Progress, Usage,
    json::{Count, ErrorField, FinishReasons, Needle, Obj, Objs, Text, set_error, set_first},
    output::{JsonArg, OutputBuilder},
    request::{
        Input, RequestApi, RequestFields, ToolResult, message, parts, result_text, text_part,
    },
};
use super::{request::text_of, tree::Json};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Event<'a> {
    #[serde(borrow, rename = "type")]
    kind: Text<'a>,
    #[serde(borrow)]
    response: Obj<Response<'a>>,
    /// `response.output_text.delta`, `response.function_call_arguments.delta`, ...
    #[serde(borrow)]
    delta: Text<'a>,
    /// Which output item an item or delta event is about.
    output_index: Count,
    /// `response.output_item.added` / `.done`.
    #[serde(borrow)]
    item: Obj<Item<'a>>,
    /// `response.function_call_arguments.done`.
    #[serde(borrow)]
    name: Text<'a>,
    #[serde(borrow)]
    arguments: JsonArg<'a>,
    /// `error` events carry `code` and `message` at the top level.
    #[serde(borrow)]
    code: Text<'a>,
    #[serde(borrow)]
    message: Text<'a>,
    /// Some servers nest them instead: `{"type":"error","error":{…}}`.
    #[serde(borrow)]
    error: ErrorField<'a>,
}

/// The response object: carried by lifecycle events, or the whole non-streamed body.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Response<'a> {
    #[serde(borrow)]
    id: Text<'a>,
    #[serde(borrow)]
    model: Text<'a>,
    #[serde(borrow)]
    status: Text<'a>,
    usage: Obj<RawUsage>,
    #[serde(borrow)]
    incomplete_details: Obj<IncompleteDetails<'a>>,
    #[serde(borrow)]
    error: ErrorField<'a>,
    #[serde(borrow)]
    output: Objs<Item<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct IncompleteDetails<'a> {
    #[serde(borrow)]
    reason: Text<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawUsage {
    input_tokens: Count,
    output_tokens: Count,
    input_tokens_details: Obj<InputDetails>,
    output_tokens_details: Obj<OutputDetails>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct InputDetails {
    cached_tokens: Count,
    cache_write_tokens: Count,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OutputDetails {
    reasoning_tokens: Count,
}

impl RawUsage {
    fn normalise(&self) -> Usage {
        let input = self.input_tokens_details.0.as_ref();
        Usage {
            input_tokens: self.input_tokens.0,
            output_tokens: self.output_tokens.0,
            cached_input_tokens: input.and_then(|d| d.cached_tokens.0),
            cache_creation_input_tokens: input.and_then(|d| d.cache_write_tokens.0),
            cache_creation_1h_input_tokens: None,
            reasoning_tokens: self
                .output_tokens_details
                .0
                .as_ref()
                .and_then(|d| d.reasoning_tokens.0),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Item<'a> {
    #[serde(borrow, rename = "type")]
    kind: Text<'a>,
    /// `function_call` items.
    #[serde(borrow)]
    name: Text<'a>,
    #[serde(borrow)]
    call_id: Text<'a>,
    #[serde(borrow)]
    arguments: JsonArg<'a>,
    /// `message` items.
    #[serde(borrow)]
    content: Objs<Part<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Part<'a> {
    #[serde(borrow, rename = "type")]
    kind: Text<'a>,
    #[serde(borrow)]
    text: Text<'a>,
}

/// Feeds the output items of a whole response: `output_text` parts of messages, and function
/// calls. Reasoning, refusals and other item types are not output text.
fn capture_items(out: &mut OutputBuilder, items: &[Item<'_>]) {
    for item in items {
        match item.kind.as_str() {
            Some("message") => {
                for part in &item.content.0 {
                    if part.kind.as_str() == Some("output_text") {
                        out.text(part.text.as_str().unwrap_or(""));
                    }
                }
            }
            Some("function_call") => {
                out.tool_call(
                    item.call_id.non_empty(),
                    item.name.as_str().unwrap_or(""),
                    item.arguments.as_str(),
                );
            }
            _ => {}
        }
    }
}

/// Feeds one stream event (its type already resolved) to the output builder.
fn capture_event(out: &mut OutputBuilder, kind: &str, e: &Event<'_>) {
    let key = e.output_index.0;
    let function_item = e
        .item
        .0
        .as_ref()
        .filter(|i| i.kind.as_str() == Some("function_call"));
    match kind {
        "response.output_text.delta" => out.text(e.delta.as_str().unwrap_or("")),
        "response.output_item.added" => {
            if let Some(item) = function_item {
                out.tool_start(
                    key,
                    item.call_id.non_empty(),
                    item.name.as_str().unwrap_or(""),
                );
                out.tool_args(key, item.arguments.as_str());
            }
        }
        "response.function_call_arguments.delta" => {
            out.tool_args(key, e.delta.as_str().unwrap_or(""));
        }
        "response.function_call_arguments.done" => {
            out.tool_done(
                key,
                None,
                e.name.as_str().unwrap_or(""),
                e.arguments.as_str(),
            );
        }
        "response.output_item.done" => {
            if let Some(item) = function_item {
                let name = item.name.as_str().unwrap_or("");
                out.tool_done(key, item.call_id.non_empty(), name, item.arguments.as_str());
            }
        }
        // A stream that carried no deltas (some compatible servers send only the lifecycle
        // events): the terminal response holds the whole output.
        "response.completed" | "response.incomplete" | "response.failed" if !out.has_any() => {
            if let Some(r) = &e.response.0 {
                capture_items(out, &r.output.0);
            }
        }
        _ => {}
    }
}

static RESPONSE: Needle = Needle::new("\"response\"");
static ERROR: Needle = Needle::new("\"error\"");
static FUNCTION_CALL: Needle = Needle::new("\"function_call\"");

/// Whether an event may carry a response object, an error or a function call item (whose id
/// and name are read whatever the capture). Delta events (the bulk of a stream) carry none:
/// their `type` value is `"response.…"`, never the bare `"response"`.
fn may_matter(data: &[u8]) -> bool {
    RESPONSE.non_null(data) || ERROR.present(data) || FUNCTION_CALL.any(data, |_| true)
}

#[derive(Default)]
pub struct OpenAiResponses {
    finish: FinishReasons,
}

impl OpenAiResponses {
    /// Takes what a response object says; `terminal` for the final one (or a whole body).
    fn apply_response(&mut self, r: &Response<'_>, terminal: Option<&str>, p: &mut Progress) {
        let record = &mut p.record;
        set_first(&mut record.model, &r.model);
        set_first(&mut record.response_id, &r.id);
        let Some(event_status) = terminal else {
            return;
        };
        let status = r.status.non_empty().unwrap_or(event_status);
        self.finish.set(0, status, record);
        if let Some(u) = &r.usage.0 {
            record.usage = u.normalise();
        }
        if let Some(reason) = r
            .incomplete_details
            .0
            .as_ref()
            .and_then(|d| d.reason.non_empty())
        {
            record.incomplete_reason = Some(reason.to_owned());
        }
        if status == "failed" || r.error.0.is_some() {
            let e = r.error.0.as_ref();
            let kind = e.and_then(|e| e.code.non_empty().or(e.kind.non_empty()));
            set_error(record, kind, e.and_then(|e| e.message.as_str()));
        }
        // The terminal event (or body) with status `completed` or `incomplete` is the end.
        p.ended = matches!(status, "completed" | "incomplete");
    }

    fn apply(&mut self, event: &Event<'_>, name: &str, p: &mut Progress) {
        let kind = event.kind.non_empty().unwrap_or(name);
        // Text only when capture is on; tool call ids and names always.
        capture_event(&mut p.output, kind, event);
        match kind {
            "error" => {
                let nested = event.error.0.as_ref();
                let code = event
                    .code
                    .non_empty()
                    .or_else(|| nested.and_then(|e| e.code.non_empty().or(e.kind.non_empty())));
                let message = event
                    .message
                    .as_str()
                    .or_else(|| nested.and_then(|e| e.message.as_str()));
                set_error(&mut p.record, code, message);
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                let status = &kind["response.".len()..];
                match &event.response.0 {
                    Some(response) => self.apply_response(response, Some(status), p),
                    None => self.apply_response(&Response::default(), Some(status), p),
                }
            }
            _ => {
                if let Some(r) = &event.response.0 {
                    self.apply_response(r, None, p);
                }
                if kind.ends_with(".delta") && event.delta.non_empty().is_some() {
                    p.started = true;
                }
            }
        }
    }
}

impl Extractor for OpenAiResponses {
    fn on_event(&mut self, name: &str, data: &str, p: &mut Progress) -> EventKind {
        // The `event:` name is only a fallback for the type, but an event named like a
        // lifecycle or error event is always decoded.
        let named = name == "error" || (name.starts_with("response.") && !name.ends_with(".delta"));
        if p.settled() && !p.capturing() && !named && !may_matter(data.as_bytes()) {
            return EventKind::Other;
        }
        match serde_json::from_str::<Event<'_>>(data) {
            Ok(event) => self.apply(&event, name, p),
            Err(_) => p.malformed(),
        }
        EventKind::Other
    }

    fn on_json(&mut self, body: &[u8], p: &mut Progress) {
        let Ok(r) = super::json::from_bytes::<Response<'_>>(body) else {
            p.malformed();
            p.json_body = Some(false);
            return;
        };
        capture_items(&mut p.output, &r.output.0);
        if let Some(status) = r.status.non_empty() {
            self.apply_response(&r, Some(status), p);
            // A background request answers `queued`/`in_progress`: a success body too.
            p.json_body = Some(status != "failed" && p.record.error.is_none());
        } else {
            // `{"error":{…}}`: the request failed before a response existed.
            let e = r.error.0.as_ref();
            set_error(
                &mut p.record,
                e.and_then(|e| e.kind.non_empty().or(e.code.non_empty())),
                e.and_then(|e| e.message.as_str()),
            );
            p.json_body = Some(false);
        }
    }
}

// The request side.

/// Responses API requests: `instructions`, and `input` as a text or a list of items; streamed
/// on the body's flag.
pub(crate) struct ResponsesRequest;

impl RequestApi for ResponsesRequest {
    /// `previous_response_id` names the response a request continues.
    fn continued_by_response_id(&self) -> bool {
        true
    }

    /// `function_call_output` items of `input` with their `call_id`.
    fn tool_results(&self, body: &Value) -> Vec<ToolResult> {
        let Some(items) = body.get("input").and_then(Value::as_array) else {
            return Vec::new();
        };
        items
            .iter()
            .filter(|i| i.get("type").and_then(Value::as_str) == Some("function_call_output"))
            .filter_map(|i| {
                Some(ToolResult {
                    call_id: i.get("call_id")?.as_str()?.to_owned(),
                    name: None,
                    content: result_text(i.get("output").unwrap_or(&Value::Null)),
                    is_error: false,
                })
            })
            .collect()
    }

    fn input<'a>(&self, body: &Json<'a>) -> Input<'a> {
        let mut input = Input::default();
        if let Some(i) = text_of(&body["instructions"]) {
            input.system.push(text_part(i));
        }
        match &body["input"] {
            Json::String(s) => input
                .messages
                .push(message(&Json::Null, vec![text_part(s.clone())])),
            Json::Array(items) => {
                for m in items {
                    input
                        .messages
                        .push(message(&m["role"], parts(&m["content"])));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::ResponseRecord;
    use crate::{format::request::Request, provider::WireFormat};

    fn run(events: &[(&str, &str)]) -> ResponseRecord {
        let mut x = OpenAiResponses::default();
        let mut p = Progress::default();
        for (name, data) in events {
            crate::format::sse_event(&mut x, name, data, &mut p);
        }
        p.finish(&mut x, true)
    }

    const CREATED: &str = r#"{"type":"response.created","response":{"id":"resp_1","model":"gpt-5","status":"in_progress","usage":null,"error":null},"sequence_number":0}"#;
    const DELTA: &str = r#"{"type":"response.output_text.delta","delta":"Hi","sequence_number":1}"#;

    #[test]
    fn data_only_events_dispatch_on_the_json_type() {
        let done = r#"{"type":"response.completed","response":{"id":"resp_1","model":"gpt-5","status":"completed","usage":{"input_tokens":5,"output_tokens":9,"input_tokens_details":{"cached_tokens":0,"cache_write_tokens":2},"output_tokens_details":{"reasoning_tokens":4}}}}"#;
        let r = run(&[("", CREATED), ("", DELTA), ("", done)]);
        assert_eq!(r.finish_reasons, ["completed"]);
        assert_eq!(r.usage.cache_creation_input_tokens, Some(2));
        assert_eq!(r.usage.reasoning_tokens, Some(4));
        assert!(r.stream_completed);
    }

    #[test]
    fn a_failed_response_sets_the_error_and_keeps_its_usage() {
        let failed = r#"{"type":"response.failed","response":{"id":"resp_1","status":"failed","error":{"code":"server_error","message":"boom"},"usage":{"input_tokens":5,"output_tokens":1}}}"#;
        let r = run(&[("", CREATED), ("", DELTA), ("", failed)]);
        assert_eq!(
            r.error.as_ref().and_then(|e| e.kind.as_deref()),
            Some("server_error")
        );
        assert_eq!(r.finish_reasons, ["failed"]);
        assert_eq!(r.usage.output_tokens, Some(1));
        assert!(!r.stream_completed);
    }

    #[test]
    fn an_error_event_ends_the_stream_without_a_terminal_response() {
        let err = r#"{"type":"error","code":"rate_limit_exceeded","message":"slow down","param":null,"sequence_number":2}"#;
        let r = run(&[
            ("response.created", CREATED),
            ("response.output_text.delta", DELTA),
            ("error", err),
        ]);
        assert_eq!(
            r.error.as_ref().and_then(|e| e.kind.as_deref()),
            Some("rate_limit_exceeded")
        );
        assert!(r.finish_reasons.is_empty());
        assert!(!r.stream_completed);
    }

    #[test]
    fn a_stream_without_a_terminal_event_is_not_completed() {
        let r = run(&[("", CREATED), ("", DELTA)]);
        assert!(!r.stream_completed);
        assert_eq!(r.model.as_deref(), Some("gpt-5"));
    }

    #[test]
    fn non_streamed_bodies_and_error_bodies() {
        let mut x = OpenAiResponses::default();
        let mut p = Progress::default();
        x.on_json(br#"{"id":"resp_2","object":"response","model":"gpt-4.1","status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"usage":{"input_tokens":3,"output_tokens":2},"error":null}"#, &mut p);
        let r = p.finish(&mut x, true);
        assert_eq!(r.incomplete_reason.as_deref(), Some("max_output_tokens"));
        assert!(r.stream_completed);

        let mut x = OpenAiResponses::default();
        let mut p = Progress::default();
        x.on_json(
            br#"{"error":{"message":"no","type":"invalid_request_error","code":null}}"#,
            &mut p,
        );
        let r = p.finish(&mut x, true);
        assert_eq!(
            r.error.as_ref().and_then(|e| e.kind.as_deref()),
            Some("invalid_request_error")
        );
        assert!(!r.stream_completed);
    }

    #[test]
    fn output_starts_with_any_non_empty_delta() {
        let mut x = OpenAiResponses::default();
        let mut p = Progress::default();
        crate::format::sse_event(&mut x, "", CREATED, &mut p);
        assert!(!p.started);
        crate::format::sse_event(
            &mut x,
            "",
            r#"{"type":"response.reasoning_summary_text.delta","delta":"Thinking"}"#,
            &mut p,
        );
        assert!(p.started);
    }

    #[test]
    fn requests_stream_on_their_flag_and_count_input_items() {
        let read = |body: &str| {
            Request::read(WireFormat::Responses, "/v1/responses", body.as_bytes()).unwrap()
        };
        let r = read(
            r#"{"model":"gpt-5","stream":true,"instructions":"i","input":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}"#,
        );
        assert!(r.stream);
        assert_eq!(r.model.as_deref(), Some("gpt-5"));
        assert_eq!(r.fields.unwrap().input_message_count(), Some(2));
        let r = read(r#"{"input":"just text"}"#);
        assert!(!r.stream);
        assert_eq!(r.fields.unwrap().input_message_count(), Some(1));
        assert_eq!(read("{}").fields.unwrap().input_message_count(), None);
    }
}
