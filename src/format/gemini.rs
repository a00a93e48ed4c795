//! Google Gemini `generateContent`: SSE chunks, one JSON response, or a JSON array of chunks.
//!
//! The array is what `streamGenerateContent` sends without `alt=sse`. Vertex AI uses the same
//! body format.

use std::fmt;

use serde::{
    Deserialize, Deserializer,
    de::{SeqAccess, Visitor},
};

use super::{
    EventKind, Extractor, ResponseRecord, Usage,
    json::{
        Count, ErrorField, Filled, FinishReasons, Flag, Needle, Obj, Objs, Text, set_error,
        set_first, sum,
    },
    output::{JsonArg, OutputBuilder},
};

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
    content: Obj<Content>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Content {
    parts: Objs<Part>,
}

/// The parts of a part that count as output, seen without being kept.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Part {
    text: Filled,
    function_call: Filled,
    inline_data: Filled,
    executable_code: Filled,
    code_execution_result: Filled,
}

impl Part {
    fn has_output(&self) -> bool {
        self.text.0
            || self.function_call.0
            || self.inline_data.0
            || self.executable_code.0
            || self.code_execution_result.0
    }
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

/// What capture reads of a chunk. Only candidate 0 is assembled: the captured output is one
/// model message, and other candidates are alternatives to it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OutChunk<'a> {
    #[serde(borrow)]
    candidates: Objs<OutCandidate<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OutCandidate<'a> {
    index: Count,
    #[serde(borrow)]
    content: Obj<OutContent<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OutContent<'a> {
    #[serde(borrow)]
    parts: Objs<OutPart<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct OutPart<'a> {
    #[serde(borrow)]
    text: Text<'a>,
    /// A thought summary, not output text.
    thought: Flag,
    #[serde(borrow)]
    function_call: Obj<OutFunctionCall<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OutFunctionCall<'a> {
    #[serde(borrow)]
    name: Text<'a>,
    #[serde(borrow)]
    args: JsonArg<'a>,
}

/// Feeds candidate 0 of a chunk to the output builder. Each `functionCall` part is a whole call.
fn capture_chunk(out: &mut OutputBuilder, chunk: &OutChunk<'_>) {
    for cand in &chunk.candidates.0 {
        if cand.index.0.unwrap_or(0) != 0 {
            continue;
        }
        let Some(content) = &cand.content.0 else {
            continue;
        };
        for part in &content.parts.0 {
            if let Some(call) = &part.function_call.0 {
                out.tool_call(call.name.as_str().unwrap_or(""), call.args.as_str());
            } else if !part.thought.0 {
                out.text(part.text.as_str().unwrap_or(""));
            }
        }
    }
}

/// Captures each element of a JSON array of chunks as it is read, like `ChunkArray`.
struct OutChunkArray<'s>(&'s mut OutputBuilder);

impl<'de> Visitor<'de> for OutChunkArray<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of response chunks")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(Obj(chunk)) = seq.next_element::<Obj<OutChunk<'de>>>()? {
            if let Some(chunk) = chunk {
                capture_chunk(self.0, &chunk);
            }
        }
        Ok(())
    }
}

static USAGE: Needle = Needle::new("\"usageMetadata\"");
static FINISH_REASON: Needle = Needle::new("\"finishReason\"");
static ERROR: Needle = Needle::new("\"error\"");

#[derive(Default)]
pub struct Gemini {
    finish: FinishReasons,
    started: bool,
    json_body: Option<bool>,
    output: OutputBuilder,
}

impl Gemini {
    fn apply(&mut self, c: Chunk<'_>, record: &mut ResponseRecord) {
        set_first(&mut record.model, &c.model_version);
        set_first(&mut record.response_id, &c.response_id);
        for cand in &c.candidates.0 {
            if let Some(reason) = cand.finish_reason.as_str() {
                self.finish.set(cand.index.0.unwrap_or(0), reason, record);
            }
            if !self.started
                && let Some(content) = &cand.content.0
            {
                self.started = content.parts.0.iter().any(Part::has_output);
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
    record: &'s mut ResponseRecord,
}

impl<'de> Visitor<'de> for ChunkArray<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of response chunks")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(Obj(chunk)) = seq.next_element::<Obj<Chunk<'de>>>()? {
            if let Some(chunk) = chunk {
                self.gemini.apply(chunk, self.record);
            }
        }
        Ok(())
    }
}

impl Extractor for Gemini {
    fn on_event(&mut self, _name: &str, data: &str, record: &mut ResponseRecord) -> EventKind {
        // Some relays end Gemini streams with an OpenAI-style `[DONE]`; it carries nothing.
        if data.trim_start().starts_with("[DONE]") {
            return EventKind::Other;
        }
        if self.output.active()
            && let Ok(chunk) = serde_json::from_str::<OutChunk<'_>>(data)
        {
            capture_chunk(&mut self.output, &chunk);
        }
        let settled = self.started && record.model.is_some() && record.response_id.is_some();
        let bytes = data.as_bytes();
        if settled && !FINISH_REASON.non_null(bytes) && !ERROR.present(bytes) {
            if USAGE.object(bytes) {
                match serde_json::from_str::<UsageOnly>(data) {
                    Ok(UsageOnly {
                        usage_metadata: Obj(Some(u)),
                    }) => record.usage = u.normalise(),
                    Ok(_) => {}
                    Err(_) => record.malformed_events += 1,
                }
            }
            return EventKind::Other;
        }
        match serde_json::from_str::<Chunk<'_>>(data) {
            Ok(chunk) => self.apply(chunk, record),
            Err(_) => record.malformed_events += 1,
        }
        EventKind::Other
    }

    fn on_json(&mut self, body: &[u8], record: &mut ResponseRecord) {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if self.output.active() {
            if first == Some(&b'[') {
                let mut de = serde_json::Deserializer::from_slice(body);
                // A cut array still gives the chunks before the cut; the error counts below.
                let _ = (&mut de).deserialize_seq(OutChunkArray(&mut self.output));
            } else if let Ok(chunk) = serde_json::from_slice::<OutChunk<'_>>(body) {
                capture_chunk(&mut self.output, &chunk);
            }
        }
        let parsed = if first == Some(&b'[') {
            let mut de = serde_json::Deserializer::from_slice(body);
            let visitor = ChunkArray {
                gemini: self,
                record,
            };
            (&mut de).deserialize_seq(visitor).and_then(|()| de.end())
        } else {
            serde_json::from_slice::<Chunk<'_>>(body).map(|chunk| self.apply(chunk, record))
        };
        if parsed.is_err() {
            record.malformed_events += 1;
        }
        self.json_body = Some(parsed.is_ok() && record.error.is_none());
    }

    fn output_started(&self) -> bool {
        self.started
    }

    fn set_capture(&mut self, max_bytes: usize) {
        self.output = OutputBuilder::new(max_bytes);
    }

    /// Gemini has no end marker: its final chunk is the one with a finish reason.
    fn end_seen(&self, record: &ResponseRecord) -> bool {
        !record.finish_reasons.is_empty()
    }

    fn finish(&mut self, clean: bool, record: &mut ResponseRecord) {
        record.output = self.output.finish();
        // Gemini has no end marker: a finish reason and a clean end of body are the signal.
        let ended = self
            .json_body
            .unwrap_or(clean && !record.finish_reasons.is_empty());
        record.stream_completed = ended && record.error.is_none();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C1: &str = r#"{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":1,"thoughtsTokenCount":10,"toolUsePromptTokenCount":3},"modelVersion":"gemini-2.5-flash","responseId":"r1"}"#;
    const C2: &str = r#"{"candidates":[{"content":{"parts":[{"text":"!"}],"role":"model"},"index":0}],"modelVersion":"gemini-2.5-flash","responseId":"r1"}"#;
    const C3: &str = r#"{"candidates":[{"content":{"parts":[{"text":""}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":4,"thoughtsTokenCount":10,"toolUsePromptTokenCount":3},"modelVersion":"gemini-2.5-flash","responseId":"r1"}"#;

    fn run(events: &[&str], clean: bool) -> ResponseRecord {
        let mut x = Gemini::default();
        let mut r = ResponseRecord::default();
        for data in events {
            x.on_event("", data, &mut r);
        }
        x.finish(clean, &mut r);
        r
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
        let mut r = ResponseRecord::default();
        x.on_json(format!("[{C1},\n{C2},\n{C3}]").as_bytes(), &mut r);
        x.finish(true, &mut r);
        assert_eq!(r.finish_reasons, ["STOP"]);
        assert_eq!(r.usage.output_tokens, Some(14));
        assert!(r.stream_completed);

        // Cut short: the chunks before the cut still count, but it is not a success body.
        let mut x = Gemini::default();
        let mut r = ResponseRecord::default();
        x.on_json(format!("[{C1},\n{C2},\n{{\"cand").as_bytes(), &mut r);
        x.finish(true, &mut r);
        assert_eq!(r.usage.output_tokens, Some(11));
        assert_eq!(r.malformed_events, 1);
        assert!(!r.stream_completed);
    }
}
