//! The response's output (text and tool calls) assembled on the side, only when content capture
//! asks for it, and never more than a byte budget: memory stays bounded however long the stream.

use std::{borrow::Cow, fmt, marker::PhantomData};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::json::{Count, Obj, Text};

/// One tool call the model asked for: its id, its name and its arguments as JSON text (as the
/// provider sent them, fragments joined).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallOutput {
    /// The provider's id for the call (`call_…`, `toolu_…`, `tooluse_…`); for a Gemini call
    /// without one, a stable synthetic id (see [`synthetic_tool_call_id`]). Empty when unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// A tool call as metadata: id and name, read whatever the capture level (arguments are
/// content and only in [`CapturedOutput`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallRef {
    pub id: String,
    pub name: String,
}

/// The id given to a call whose provider sends none (Gemini's `functionCall` without `id`):
/// `<name>#<n>`, `n` counting the calls of that name in the same response from 0. A
/// `functionResponse` without `id` is matched by the same rule: `<name>#<n>`, `n` counting the
/// responses of that name in the same message.
pub fn synthetic_tool_call_id(name: &str, nth: usize) -> String {
    format!("{name}#{nth}")
}

/// Whether `id` is one that [`synthetic_tool_call_id`] made (`<name>#<n>`): such ids repeat
/// across calls and apps, so they never link requests on their own.
pub fn is_synthetic_tool_call_id(id: &str) -> bool {
    id.rsplit_once('#')
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The output of a response as far as content capture keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedOutput {
    /// The output text, deltas joined (the first choice/candidate only).
    pub text: String,
    pub tool_calls: Vec<ToolCallOutput>,
    /// Something was left out to stay within the budget.
    pub truncated: bool,
}

/// Most tool calls kept (OpenAI allows 128 tools per request).
const MAX_TOOL_CALLS: usize = 128;
/// Longest tool name (and tool call id) kept.
const MAX_TOOL_NAME_BYTES: usize = 256;

/// Per tool call: the provider's key for it, and whether arguments were fed.
#[derive(Debug)]
struct CallState {
    key: Option<u64>,
    args_fed: bool,
}

/// Assembles the output within a budget of `max` bytes. Text, tool names and arguments all
/// count against it (so text + arguments never exceed it). Past the budget nothing more is
/// appended and `truncated` is set; from then on the builder is inactive, so extractors go back
/// to skipping content.
///
/// Tool calls' ids and names are metadata: they are tracked always (bounded by the call limit
/// and the name limit, not by the budget), whether or not content is captured.
#[derive(Debug, Default)]
pub(crate) struct OutputBuilder {
    max: usize,
    left: usize,
    out: CapturedOutput,
    calls: Vec<CallState>,
    /// Every call's id and name, with the provider's key, captured or not.
    refs: Vec<(Option<u64>, ToolCallRef)>,
}

/// `s` cut to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    &s[..s.floor_char_boundary(max)]
}

impl OutputBuilder {
    /// A builder keeping at most `max_bytes`; 0 turns capture off.
    pub fn new(max_bytes: usize) -> Self {
        OutputBuilder {
            max: max_bytes,
            left: max_bytes,
            ..OutputBuilder::default()
        }
    }

    /// Whether output should still be decoded and fed: capture is on and nothing was cut yet.
    pub fn active(&self) -> bool {
        self.max > 0 && !self.out.truncated
    }

    /// Whether any text or tool call was kept (or any tool call tracked).
    pub fn has_any(&self) -> bool {
        !self.out.text.is_empty() || !self.out.tool_calls.is_empty() || !self.refs.is_empty()
    }

    /// The part of `s` that fits the budget, which it uses up; sets `truncated` when cut.
    fn fit<'s>(&mut self, s: &'s str) -> &'s str {
        let kept = cut(s, self.left);
        self.left -= kept.len();
        if kept.len() < s.len() {
            self.out.truncated = true;
        }
        kept
    }

    /// Appends output text.
    pub fn text(&mut self, s: &str) {
        if !self.active() || s.is_empty() {
            return;
        }
        let kept = self.fit(s);
        self.out.text.push_str(kept);
    }

    /// The call for `key`: the last one with that key, or the last call for `None`.
    fn find(&self, key: Option<u64>) -> Option<usize> {
        match key {
            None => self.calls.len().checked_sub(1),
            Some(_) => self.calls.iter().rposition(|c| c.key == key),
        }
    }

    /// Opens a new call; `None` when the budget or the call limit leaves no room.
    fn open(&mut self, key: Option<u64>, name: &str) -> Option<usize> {
        let name = cut(name, MAX_TOOL_NAME_BYTES);
        if self.calls.len() >= MAX_TOOL_CALLS || name.len() > self.left {
            self.out.truncated = true;
            return None;
        }
        self.left -= name.len();
        self.out.tool_calls.push(ToolCallOutput {
            id: String::new(),
            name: name.to_owned(),
            arguments: String::new(),
        });
        self.calls.push(CallState {
            key,
            args_fed: false,
        });
        Some(self.calls.len() - 1)
    }

    /// Names the call at `at` if it has no name yet.
    fn name(&mut self, at: usize, name: &str) {
        if !self.out.tool_calls[at].name.is_empty() || name.is_empty() {
            return;
        }
        let name = cut(name, MAX_TOOL_NAME_BYTES);
        if name.len() > self.left {
            self.out.truncated = true;
            return;
        }
        self.left -= name.len();
        self.out.tool_calls[at].name = name.to_owned();
    }

    fn append_args(&mut self, at: usize, fragment: &str) {
        if fragment.is_empty() {
            return;
        }
        let kept = self.fit(fragment);
        self.out.tool_calls[at].arguments.push_str(kept);
        self.calls[at].args_fed = true;
    }

    /// The tracked call for `key`, like [`OutputBuilder::find`].
    fn find_ref(&self, key: Option<u64>) -> Option<usize> {
        match key {
            None => self.refs.len().checked_sub(1),
            Some(_) => self.refs.iter().rposition(|(k, _)| *k == key),
        }
    }

    /// Tracks a call's id and name (metadata, kept whatever the capture): the call for `key`
    /// when there is one and `new` is false, else a new one (within the call limit).
    fn track(&mut self, key: Option<u64>, id: Option<&str>, name: &str, new: bool) {
        let at = match (new, key.and_then(|_| self.find_ref(key))) {
            (false, Some(at)) => at,
            _ if self.refs.len() >= MAX_TOOL_CALLS => return,
            _ => {
                self.refs.push((key, ToolCallRef::default()));
                self.refs.len() - 1
            }
        };
        let r = &mut self.refs[at].1;
        if r.id.is_empty()
            && let Some(id) = id
        {
            r.id = cut(id, MAX_TOOL_NAME_BYTES).to_owned();
        }
        if r.name.is_empty() {
            r.name = cut(name, MAX_TOOL_NAME_BYTES).to_owned();
        }
    }

    /// Gives the captured call at `at` the tracked id of `key`'s call.
    fn set_id(&mut self, at: usize, key: Option<u64>) {
        if self.out.tool_calls[at].id.is_empty()
            && let Some(r) = self.find_ref(key)
        {
            self.out.tool_calls[at].id = self.refs[r].1.id.clone();
        }
    }

    /// A streamed call starts (or is named again): `key` is the provider's index for it. With
    /// `None` a new call is always opened. `id` is the provider's id for it, when it says one.
    pub fn tool_start(&mut self, key: Option<u64>, id: Option<&str>, name: &str) {
        self.track(key, id, name, key.is_none());
        if !self.active() {
            return;
        }
        let at = match key.and_then(|_| self.find(key)) {
            Some(at) => {
                self.name(at, name);
                Some(at)
            }
            None => self.open(key, name),
        };
        if let Some(at) = at {
            self.set_id(at, key);
        }
    }

    /// A fragment of a streamed call's arguments; `None` means the last call.
    pub fn tool_args(&mut self, key: Option<u64>, fragment: &str) {
        if self.find_ref(key).is_none() {
            self.track(key, None, "", true);
        }
        if !self.active() || fragment.is_empty() {
            return;
        }
        let at = match self.find(key) {
            Some(at) => Some(at),
            None => self.open(key, ""),
        };
        if let Some(at) = at {
            self.set_id(at, key);
            self.append_args(at, fragment);
        }
    }

    /// A streamed call's final form: its whole arguments are used only if no fragment was fed.
    pub fn tool_done(&mut self, key: Option<u64>, id: Option<&str>, name: &str, arguments: &str) {
        self.track(key, id, name, key.is_none());
        if !self.active() {
            return;
        }
        let at = match key.and_then(|_| self.find(key)) {
            Some(at) => {
                self.name(at, name);
                Some(at)
            }
            None => self.open(key, name),
        };
        if let Some(at) = at {
            self.set_id(at, key);
            if !self.calls[at].args_fed {
                self.append_args(at, arguments);
            }
        }
    }

    /// A whole call (non-streamed bodies, and providers that send each call in one piece).
    pub fn tool_call(&mut self, id: Option<&str>, name: &str, arguments: &str) {
        self.track(None, id, name, true);
        if !self.active() {
            return;
        }
        if let Some(at) = self.open(None, name) {
            self.set_id(at, None);
            self.append_args(at, arguments);
        }
    }

    /// Every tool call's id and name (tracked whatever the capture).
    pub fn tool_refs(&mut self) -> Vec<ToolCallRef> {
        std::mem::take(&mut self.refs)
            .into_iter()
            .map(|(_, r)| r)
            .collect()
    }

    /// The assembled output, `None` when capture is off.
    pub fn finish(&mut self) -> Option<CapturedOutput> {
        (self.max > 0).then(|| std::mem::take(&mut self.out))
    }
}

/// Tool arguments: a JSON string is taken as is (OpenAI, streamed fragments); any other value
/// (Anthropic `input`, Gemini `args`, Ollama `arguments`) is written back as compact JSON text
/// with its keys in their original order. `null` or absent reads as `None`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct JsonArg<'a>(pub Option<Cow<'a, str>>);

impl JsonArg<'_> {
    pub fn as_str(&self) -> &str {
        self.0.as_deref().unwrap_or("")
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for JsonArg<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = JsonArg<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<JsonArg<'a>, E> {
                Ok(JsonArg(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<JsonArg<'a>, E> {
                Ok(JsonArg(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<JsonArg<'a>, E> {
                Ok(JsonArg(Some(Cow::Owned(v))))
            }
            fn visit_unit<E: de::Error>(self) -> Result<JsonArg<'a>, E> {
                Ok(JsonArg(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<JsonArg<'a>, E> {
                Ok(JsonArg(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<JsonArg<'a>, D::Error> {
                JsonArg::deserialize(d)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<JsonArg<'a>, E> {
                Ok(written(|w| w.bool(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<JsonArg<'a>, E> {
                Ok(written(|w| w.0.push_str(&v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<JsonArg<'a>, E> {
                Ok(written(|w| w.0.push_str(&v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<JsonArg<'a>, E> {
                Ok(written(|w| w.f64(v)))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<JsonArg<'a>, A::Error> {
                let mut out = String::new();
                JsonWriter(&mut out).visit_map(map)?;
                Ok(JsonArg(Some(Cow::Owned(out))))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<JsonArg<'a>, A::Error> {
                let mut out = String::new();
                JsonWriter(&mut out).visit_seq(seq)?;
                Ok(JsonArg(Some(Cow::Owned(out))))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// A scalar written as JSON text.
fn written<'a>(write: impl FnOnce(&mut JsonWriter<'_>)) -> JsonArg<'a> {
    let mut out = String::new();
    write(&mut JsonWriter(&mut out));
    JsonArg(Some(Cow::Owned(out)))
}

/// Writes the value it visits as compact JSON, keeping the order of object keys.
struct JsonWriter<'s>(&'s mut String);

impl JsonWriter<'_> {
    fn bool(&mut self, v: bool) {
        self.0.push_str(if v { "true" } else { "false" });
    }

    fn f64(&mut self, v: f64) {
        match serde_json::Number::from_f64(v) {
            Some(n) => self.0.push_str(&n.to_string()),
            None => self.0.push_str("null"),
        }
    }

    fn string(&mut self, v: &str) {
        // Serialising a `str` cannot fail.
        self.0
            .push_str(&serde_json::to_string(v).unwrap_or_default());
    }
}

impl<'de> DeserializeSeed<'de> for JsonWriter<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for JsonWriter<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(mut self, v: bool) -> Result<(), E> {
        self.bool(v);
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.0.push_str(&v.to_string());
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.0.push_str(&v.to_string());
        Ok(())
    }
    fn visit_f64<E: de::Error>(mut self, v: f64) -> Result<(), E> {
        self.f64(v);
        Ok(())
    }
    fn visit_str<E: de::Error>(mut self, v: &str) -> Result<(), E> {
        self.string(v);
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.push_str("null");
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.push('[');
        let mut first = true;
        loop {
            let len = self.0.len();
            if !first {
                self.0.push(',');
            }
            if seq.next_element_seed(JsonWriter(&mut *self.0))?.is_none() {
                self.0.truncate(len);
                break;
            }
            first = false;
        }
        self.0.push(']');
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.0.push('{');
        let mut first = true;
        loop {
            let len = self.0.len();
            if !first {
                self.0.push(',');
            }
            if map.next_key_seed(JsonWriter(&mut *self.0))?.is_none() {
                self.0.truncate(len);
                break;
            }
            self.0.push(':');
            map.next_value_seed(JsonWriter(&mut *self.0))?;
            first = false;
        }
        self.0.push('}');
        Ok(())
    }
}

/// An OpenAI-style tool call, `{"index": …, "function": {"name": …, "arguments": …}}`: in a
/// streamed delta (fragments by `index`) or whole in a message (OpenAI, and Ollama's
/// `/api/chat`, whose arguments are an object).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ToolCall<'a> {
    /// Which call a streamed fragment belongs to; absent when each call comes whole.
    pub index: Count,
    /// The call's id (`call_…`): in the first fragment of a streamed call, or with a whole one.
    #[serde(borrow)]
    pub id: Text<'a>,
    #[serde(borrow)]
    pub function: Obj<Function<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Function<'a> {
    #[serde(borrow)]
    pub name: Text<'a>,
    #[serde(borrow)]
    pub arguments: JsonArg<'a>,
}

/// Message content that is either a string or a list of parts, of which those of type `text`
/// (or without a type) carry text (Mistral's `content` arrays, and others that copy them).
#[derive(Debug, Default)]
pub(crate) struct TextParts<'a>(pub Vec<Cow<'a, str>>);

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TextPart<'a> {
    #[serde(borrow, rename = "type")]
    kind: Text<'a>,
    #[serde(borrow)]
    text: Text<'a>,
}

impl<'de: 'a, 'a> Deserialize<'de> for TextParts<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = TextParts<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of parts")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<TextParts<'a>, E> {
                Ok(TextParts(vec![Cow::Borrowed(v)]))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TextParts<'a>, E> {
                Ok(TextParts(vec![Cow::Owned(v.to_owned())]))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<TextParts<'a>, E> {
                Ok(TextParts(vec![Cow::Owned(v)]))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<TextParts<'a>, D::Error> {
                TextParts::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TextParts<'a>, A::Error> {
                let mut out = Vec::new();
                while let Some(Obj(part)) = seq.next_element::<Obj<TextPart<'a>>>()? {
                    if let Some(TextPart {
                        kind,
                        text: Text(Some(text)),
                    }) = part
                        && matches!(kind.as_str(), None | Some("text"))
                    {
                        out.push(text);
                    }
                }
                Ok(TextParts(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TextParts<'a>, A::Error> {
                while map
                    .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(TextParts::default())
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<TextParts<'a>, E> {
                Ok(TextParts::default())
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<TextParts<'a>, E> {
                Ok(TextParts::default())
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<TextParts<'a>, E> {
                Ok(TextParts::default())
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<TextParts<'a>, E> {
                Ok(TextParts::default())
            }
            fn visit_unit<E: de::Error>(self) -> Result<TextParts<'a>, E> {
                Ok(TextParts::default())
            }
            fn visit_none<E: de::Error>(self) -> Result<TextParts<'a>, E> {
                Ok(TextParts::default())
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_past_the_budget_is_cut_on_a_character_boundary_and_marked() {
        let mut b = OutputBuilder::new(5);
        b.text("ab");
        b.text("cdé");
        assert!(!b.active());
        let out = b.finish().expect("capture on");
        assert_eq!(out.text, "abcd");
        assert!(out.truncated);
    }

    #[test]
    fn a_budget_met_exactly_is_not_truncated_until_more_output_arrives() {
        let mut b = OutputBuilder::new(4);
        b.text("abcd");
        b.text("");
        b.tool_args(None, "");
        assert!(b.active());
        b.text("e");
        assert!(!b.active());
        assert_eq!(
            b.finish().map(|o| (o.text, o.truncated)),
            Some(("abcd".into(), true))
        );
    }

    #[test]
    fn capture_off_gives_no_output_at_all() {
        let mut b = OutputBuilder::new(0);
        assert!(!b.active());
        b.text("x");
        b.tool_call(Some("call_1"), "f", "{}");
        assert_eq!(
            b.tool_refs(),
            [ToolCallRef {
                id: "call_1".into(),
                name: "f".into()
            }],
            "ids and names are metadata, kept whatever the capture"
        );
        assert_eq!(b.finish(), None);
    }

    #[test]
    fn streamed_ids_stay_with_their_call_captured_or_not() {
        for max in [0, 1000] {
            let mut b = OutputBuilder::new(max);
            b.tool_start(Some(0), Some("call_a"), "a");
            b.tool_start(Some(1), Some("call_b"), "b");
            b.tool_args(Some(0), "{}");
            b.tool_args(Some(1), "{\"q\":1}");
            b.tool_done(Some(1), None, "b", "");
            b.tool_call(Some("call_c"), "c", "[]");
            let refs: Vec<(String, String)> =
                b.tool_refs().into_iter().map(|r| (r.id, r.name)).collect();
            let want = [("call_a", "a"), ("call_b", "b"), ("call_c", "c")]
                .map(|(i, n)| (i.to_string(), n.to_string()));
            assert_eq!(refs, want);
            if let Some(out) = b.finish() {
                let calls: Vec<(&str, &str)> = out
                    .tool_calls
                    .iter()
                    .map(|c| (c.id.as_str(), c.arguments.as_str()))
                    .collect();
                assert_eq!(
                    calls,
                    [("call_a", "{}"), ("call_b", "{\"q\":1}"), ("call_c", "[]")]
                );
            }
        }
    }

    #[test]
    fn keyed_fragments_join_per_call_and_names_are_not_repeated() {
        let mut b = OutputBuilder::new(1000);
        b.tool_start(Some(0), None, "a");
        b.tool_start(Some(1), None, "b");
        b.tool_args(Some(0), "{\"x\"");
        b.tool_args(Some(1), "{}");
        b.tool_start(Some(0), None, "a");
        b.tool_args(Some(0), ":1}");
        b.tool_done(Some(0), None, "a", "{\"ignored\":true}");
        b.tool_done(Some(2), None, "c", "{\"y\":2}");
        let out = b.finish().expect("on");
        let calls: Vec<(&str, &str)> = out
            .tool_calls
            .iter()
            .map(|c| (c.name.as_str(), c.arguments.as_str()))
            .collect();
        assert_eq!(calls, [("a", "{\"x\":1}"), ("b", "{}"), ("c", "{\"y\":2}")]);
    }

    #[test]
    fn names_and_arguments_count_against_the_budget() {
        let mut b = OutputBuilder::new(8);
        b.tool_call(None, "fn", "{\"a\":1}");
        b.tool_call(None, "g", "{}");
        let out = b.finish().expect("on");
        assert_eq!(out.tool_calls.len(), 1);
        assert_eq!(out.tool_calls[0].arguments, "{\"a\":1");
        assert!(out.truncated);
    }

    #[test]
    fn the_number_of_tool_calls_is_bounded() {
        let mut b = OutputBuilder::new(1 << 20);
        for _ in 0..1000 {
            b.tool_call(None, "", "");
        }
        let out = b.finish().expect("on");
        assert_eq!(out.tool_calls.len(), MAX_TOOL_CALLS);
        assert!(out.truncated);
    }

    #[test]
    fn json_arguments_keep_their_key_order_and_strings_stay_verbatim() {
        #[derive(Deserialize)]
        struct P<'a> {
            #[serde(borrow)]
            a: JsonArg<'a>,
        }
        let p: P = serde_json::from_str(
            r#"{"a": {"zeta": [1, -2, 2.5, true, null, "q\"\u00e9"], "alpha": {}}}"#,
        )
        .expect("json");
        assert_eq!(
            p.a.as_str(),
            r#"{"zeta":[1,-2,2.5,true,null,"q\"é"],"alpha":{}}"#
        );
        let p: P = serde_json::from_str(r#"{"a": "{\"x\": 1"}"#).expect("json");
        assert_eq!(p.a.as_str(), r#"{"x": 1"#);
        let p: P = serde_json::from_str(r#"{"a": []}"#).expect("json");
        assert_eq!(p.a.as_str(), "[]");
        let p: P = serde_json::from_str(r#"{"a": null}"#).expect("json");
        assert_eq!(p.a.0, None);
    }

    #[test]
    fn content_may_be_a_string_or_a_list_of_text_parts() {
        #[derive(Deserialize)]
        struct P<'a> {
            #[serde(borrow)]
            c: TextParts<'a>,
        }
        let p: P = serde_json::from_str(r#"{"c":"hi"}"#).expect("json");
        assert_eq!(p.c.0, ["hi"]);
        let p: P = serde_json::from_str(
            r#"{"c":[{"type":"thinking","thinking":[{"type":"text","text":"hm"}]},{"type":"text","text":"a"},{"text":"b"},3]}"#,
        )
        .expect("json");
        assert_eq!(p.c.0, ["a", "b"]);
        let p: P = serde_json::from_str(r#"{"c":null}"#).expect("json");
        assert!(p.c.0.is_empty());
    }
}
