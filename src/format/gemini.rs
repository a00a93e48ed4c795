//! Google Gemini `generateContent`: SSE chunks, one JSON response, or a JSON array of chunks;
//! and what its requests say.
//!
//! The array is what `streamGenerateContent` sends without `alt=sse`. Vertex AI uses the same
//! body format.

use std::fmt;

use serde::{
    Deserialize, Deserializer,
    de::{SeqAccess, Visitor},
};

use serde_json::Value;

use super::{
    EventKind, Extractor, Progress, Usage,
    json::{
        Count, ErrorField, Filled, FinishReasons, Flag, Needle, Obj, Objs, Text, set_error,
        set_first, sum,
    },
    output::{JsonArg, OutputBuilder, synthetic_tool_call_id},
    request::{
        Input, RequestApi, RequestFields, ToolResult, message, model_before_verb, result_text,
        text_part,
    },
};
use super::{request::text_of, tree::Json};

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Chunk<'a> {
    #[serde(borrow)]
    candidates: Objs<Candidate<'a>>,
    usage_metadata: Obj<RawUsage>,
    #[serde(borrow)]
    model_version: Text<'a>,
    #[serde(borrow)]
    response_id: Text<'a>,
    #[serde(borrow)]
    error: ErrorField<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Candidate<'a> {
    index: Count,
    #[serde(borrow)]
    finish_reason: Text<'a>,
    #[serde(borrow)]
    content: Obj<Content<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Content<'a> {
    #[serde(borrow)]
    parts: Objs<Part<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Part<'a> {
    #[serde(borrow)]
    text: Text<'a>,
    /// A thought summary, not output text.
    thought: Flag,
    #[serde(borrow)]
    function_call: Obj<FunctionCall<'a>>,
    inline_data: Filled,
    executable_code: Filled,
    code_execution_result: Filled,
}

impl Part<'_> {
    fn has_output(&self) -> bool {
        self.text.non_empty().is_some()
            || self.function_call.0.is_some()
            || self.inline_data.0
            || self.executable_code.0
            || self.code_execution_result.0
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FunctionCall<'a> {
    /// Set by the Gemini API when it sends one (Vertex and the Live API); often absent.
    #[serde(borrow)]
    id: Text<'a>,
    #[serde(borrow)]
    name: Text<'a>,
    #[serde(borrow)]
    args: JsonArg<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct RawUsage {
    prompt_token_count: Count,
    candidates_token_count: Count,
    cached_content_token_count: Count,
    thoughts_token_count: Count,
    tool_use_prompt_token_count: Count,
}

impl RawUsage {
    /// `candidatesTokenCount` excludes thinking and `promptTokenCount` excludes the results of
    /// built-in tools, so both sums are needed for the OpenTelemetry totals.
    fn normalise(&self) -> Usage {
        Usage {
            input_tokens: Some(sum(&[
                self.prompt_token_count.0,
                self.tool_use_prompt_token_count.0,
            ])),
            output_tokens: Some(sum(&[
                self.candidates_token_count.0,
                self.thoughts_token_count.0,
            ])),
            cached_input_tokens: self.cached_content_token_count.0,
            cache_creation_input_tokens: None,
            cache_creation_1h_input_tokens: None,
            reasoning_tokens: self.thoughts_token_count.0,
        }
    }
}

/// A chunk read only for its running usage: once output, model and id are known, a chunk
/// without a finish reason or an error has nothing else to say, and skipping its candidates
/// halves the cost of the most common Gemini chunk.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct UsageOnly {
    usage_metadata: Obj<RawUsage>,
}

/// Feeds candidate 0 of a chunk to the output builder; each `functionCall` part is a whole
/// call. Only candidate 0 is assembled: the captured output is one model message, and other
/// candidates are alternatives to it.
///
/// A call without an `id` gets a synthetic one, `<name>#<n>` (see `synthetic_tool_call_id`):
/// `names` counts the calls of each name seen so far in this response.
fn capture(out: &mut OutputBuilder, chunk: &Chunk<'_>, names: &mut Vec<(String, usize)>) {
    for cand in &chunk.candidates.0 {
        if cand.index.0.unwrap_or(0) != 0 {
            continue;
        }
        let Some(content) = &cand.content.0 else {
            continue;
        };
        for part in &content.parts.0 {
            if let Some(call) = &part.function_call.0 {
                let name = call.name.as_str().unwrap_or("");
                let seen = names.iter().position(|(n, _)| n == name);
                let nth = match seen {
                    Some(at) => {
                        names[at].1 += 1;
                        names[at].1 - 1
                    }
                    None if names.len() < 128 => {
                        names.push((name.to_owned(), 1));
                        0
                    }
                    None => continue,
                };
                let id = match call.id.non_empty() {
                    Some(id) => id.to_owned(),
                    None => synthetic_tool_call_id(name, nth),
                };
                out.tool_call(Some(&id), name, call.args.as_str());
            } else if !part.thought.0 {
                out.text(part.text.as_str().unwrap_or(""));
            }
        }
    }
}

static USAGE: Needle = Needle::new("\"usageMetadata\"");
static FINISH_REASON: Needle = Needle::new("\"finishReason\"");
static ERROR: Needle = Needle::new("\"error\"");
static FUNCTION_CALL: Needle = Needle::new("\"functionCall\"");

#[derive(Default)]
pub struct Gemini {
    finish: FinishReasons,
    /// Calls seen per tool name, for synthetic call ids.
    call_names: Vec<(String, usize)>,
}

impl Gemini {
    fn apply(&mut self, c: &Chunk<'_>, p: &mut Progress) {
        // Text only when capture is on; tool call ids and names always.
        capture(&mut p.output, c, &mut self.call_names);
        let record = &mut p.record;
        set_first(&mut record.model, &c.model_version);
        set_first(&mut record.response_id, &c.response_id);
        for cand in &c.candidates.0 {
            if let Some(reason) = cand.finish_reason.as_str() {
                self.finish.set(cand.index.0.unwrap_or(0), reason, record);
                // Gemini has no end marker: its final chunk is the one with a finish reason.
                p.ended = true;
            }
            if !p.started
                && let Some(content) = &cand.content.0
            {
                p.started = content.parts.0.iter().any(Part::has_output);
            }
        }
        // Running totals: the last object wins, and a chunk without one keeps the previous.
        if let Some(u) = &c.usage_metadata.0 {
            record.usage = u.normalise();
        }
        if let Some(e) = &c.error.0 {
            set_error(record, e.status.non_empty(), e.message.as_str());
        }
    }
}

/// Applies each element of a JSON array of chunks as it is read, so the chunks before a
/// syntax error still count.
struct ChunkArray<'s> {
    gemini: &'s mut Gemini,
    progress: &'s mut Progress,
}

impl<'de> Visitor<'de> for ChunkArray<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of response chunks")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(Obj(chunk)) = seq.next_element::<Obj<Chunk<'de>>>()? {
            if let Some(chunk) = chunk {
                self.gemini.apply(&chunk, self.progress);
            }
        }
        Ok(())
    }
}

impl Extractor for Gemini {
    fn on_event(&mut self, _name: &str, data: &str, p: &mut Progress) -> EventKind {
        let bytes = data.as_bytes();
        if p.settled()
            && !p.capturing()
            && !FINISH_REASON.non_null(bytes)
            && !ERROR.present(bytes)
            && !FUNCTION_CALL.present(bytes)
        {
            if USAGE.object(bytes) {
                match serde_json::from_str::<UsageOnly>(data) {
                    Ok(UsageOnly {
                        usage_metadata: Obj(Some(u)),
                    }) => p.record.usage = u.normalise(),
                    Ok(_) => {}
                    Err(_) => p.malformed(),
                }
            }
            return EventKind::Other;
        }
        match serde_json::from_str::<Chunk<'_>>(data) {
            Ok(chunk) => self.apply(&chunk, p),
            Err(_) => p.malformed(),
        }
        EventKind::Other
    }

    fn on_json(&mut self, body: &[u8], p: &mut Progress) {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        let parsed = if first == Some(&b'[') {
            let mut de = serde_json::Deserializer::from_slice(body);
            let visitor = ChunkArray {
                gemini: self,
                progress: p,
            };
            (&mut de).deserialize_seq(visitor).and_then(|()| de.end())
        } else {
            super::json::from_bytes::<Chunk<'_>>(body).map(|chunk| self.apply(&chunk, p))
        };
        if parsed.is_err() {
            p.malformed();
        }
        p.json_body = Some(parsed.is_ok() && p.record.error.is_none());
    }

    fn finish(&mut self, clean: bool, p: &mut Progress) {
        // With no end marker, a finish reason and a clean end of body are the signal.
        p.ended &= clean;
    }
}

// The request side.

/// `generateContent` requests: the model is in the path (`/models/<m>:generateContent`), which
/// streams when its verb is `streamGenerateContent`; `systemInstruction` and `contents` hold
/// the input.
pub(crate) struct GenerateContentRequest;

impl RequestApi for GenerateContentRequest {
    /// `functionResponse` parts of the last content that has any (the answers to the model's
    /// last turn; earlier ones are history, and their synthetic ids repeat), by `id`, else by
    /// the synthetic `<name>#<n>` (`n` counting the responses of that name in the same
    /// message, as the calls were counted in the response).
    fn tool_results(&self, body: &Value) -> Vec<ToolResult> {
        let Some(contents) = body.get("contents").and_then(Value::as_array) else {
            return Vec::new();
        };
        let has_responses = |c: &&Value| {
            c.get("parts")
                .and_then(Value::as_array)
                .is_some_and(|parts| parts.iter().any(|p| p.get("functionResponse").is_some()))
        };
        let mut out = Vec::new();
        if let Some(content) = contents.iter().rev().find(has_responses) {
            let mut names: Vec<(&str, usize)> = Vec::new();
            let parts = content.get("parts").and_then(Value::as_array);
            for part in parts.into_iter().flatten() {
                let Some(r) = part.get("functionResponse") else {
                    continue;
                };
                let name = r.get("name").and_then(Value::as_str).unwrap_or("");
                let nth = match names.iter().position(|(n, _)| *n == name) {
                    Some(at) => {
                        names[at].1 += 1;
                        names[at].1 - 1
                    }
                    None => {
                        names.push((name, 1));
                        0
                    }
                };
                let call_id = match r.get("id").and_then(Value::as_str) {
                    Some(id) if !id.is_empty() => id.to_owned(),
                    _ => synthetic_tool_call_id(name, nth),
                };
                let response = r.get("response").unwrap_or(&Value::Null);
                out.push(ToolResult {
                    call_id,
                    name: Some(name.to_owned()),
                    content: result_text(response),
                    is_error: response.get("error").is_some_and(|e| !e.is_null()),
                });
            }
        }
        out
    }

    fn streams(&self, path: &str, _: Option<bool>) -> bool {
        path.contains(":streamGenerateContent")
    }

    fn model_from_path(&self, path: &str) -> Option<String> {
        model_before_verb(path)
    }

    fn input<'a>(&self, body: &Json<'a>) -> Input<'a> {
        let mut input = Input::default();
        if let Some(si) = body
            .get("systemInstruction")
            .or(body.get("system_instruction"))
        {
            for p in si["parts"].as_array().into_iter().flatten() {
                input
                    .system
                    .push(text_part(text_of(&p["text"]).unwrap_or_default()));
            }
        }
        for c in body["contents"].as_array().into_iter().flatten() {
            let parts = c["parts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| text_part(text_of(&p["text"]).unwrap_or_default()))
                .collect();
            input.messages.push(message(&c["role"], parts));
        }
        input
    }

    fn input_message_count(&self, fields: &RequestFields) -> Option<u64> {
        fields.count_contents()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::ResponseRecord;
    use crate::{format::request::Request, provider::WireFormat};

    const C1: &str = r#"{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":1,"thoughtsTokenCount":10,"toolUsePromptTokenCount":3},"modelVersion":"gemini-2.5-flash","responseId":"r1"}"#;
    const C2: &str = r#"{"candidates":[{"content":{"parts":[{"text":"!"}],"role":"model"},"index":0}],"modelVersion":"gemini-2.5-flash","responseId":"r1"}"#;
    const C3: &str = r#"{"candidates":[{"content":{"parts":[{"text":""}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":4,"thoughtsTokenCount":10,"toolUsePromptTokenCount":3},"modelVersion":"gemini-2.5-flash","responseId":"r1"}"#;

    fn run(events: &[&str], clean: bool) -> ResponseRecord {
        let mut x = Gemini::default();
        let mut p = Progress::default();
        for data in events {
            crate::format::sse_event(&mut x, "", data, &mut p);
        }
        p.finish(&mut x, clean)
    }

    #[test]
    fn last_usage_metadata_wins_and_sums_thoughts_and_tool_prompts() {
        let r = run(&[C1, C2, C3], true);
        assert_eq!(r.usage.input_tokens, Some(8));
        assert_eq!(r.usage.output_tokens, Some(14));
        assert_eq!(r.usage.reasoning_tokens, Some(10));
        assert_eq!(r.usage.cached_input_tokens, None);
        assert!(r.stream_completed);
    }

    #[test]
    fn a_chunk_without_usage_metadata_keeps_the_previous_totals() {
        let r = run(&[C1, C2], false);
        assert_eq!(r.usage.output_tokens, Some(11));
        assert!(!r.stream_completed, "no finish reason and a cut body");
    }

    #[test]
    fn a_finish_reason_without_a_clean_end_is_not_completed() {
        assert!(!run(&[C1, C3], false).stream_completed);
    }

    #[test]
    fn a_mid_stream_error_object_names_its_status() {
        let err =
            r#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#;
        let r = run(&[C1, err], true);
        assert_eq!(
            r.error.as_ref().and_then(|e| e.kind.as_deref()),
            Some("UNAVAILABLE")
        );
        assert!(!r.stream_completed);
    }

    #[test]
    fn a_json_array_of_chunks_is_read_element_by_element() {
        let mut x = Gemini::default();
        let mut p = Progress::default();
        x.on_json(format!("[{C1},\n{C2},\n{C3}]").as_bytes(), &mut p);
        let r = p.finish(&mut x, true);
        assert_eq!(r.finish_reasons, ["STOP"]);
        assert_eq!(r.usage.output_tokens, Some(14));
        assert!(r.stream_completed);

        // Cut short: the chunks before the cut still count, but it is not a success body.
        let mut x = Gemini::default();
        let mut p = Progress::default();
        x.on_json(format!("[{C1},\n{C2},\n{{\"cand").as_bytes(), &mut p);
        let r = p.finish(&mut x, true);
        assert_eq!(r.usage.output_tokens, Some(11));
        assert_eq!(r.malformed_events, 1);
        assert!(!r.stream_completed);
    }

    #[test]
    fn requests_stream_by_their_path_and_count_contents() {
        let body = br#"{"stream":false,"contents":[{"role":"user","parts":[{"text":"a"}]},{"role":"model","parts":[]}]}"#;
        let path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent";
        let r = Request::read(WireFormat::GenerateContent, path, body).unwrap();
        assert!(r.stream);
        assert_eq!(r.model.as_deref(), Some("gemini-2.5-flash"));
        assert_eq!(r.fields.unwrap().input_message_count(), Some(2));
        let path = "/v1beta/models/gemini-2.5-flash:generateContent";
        let r = Request::read(WireFormat::GenerateContent, path, br#"{"stream":true}"#).unwrap();
        assert!(!r.stream);
        assert_eq!(r.fields.unwrap().input_message_count(), None);
    }
}
