//! Content capture: the request's messages, system instructions and tools (and later the
//! output), which each API's request side in `format` reads into the OpenTelemetry GenAI JSON
//! shapes, kept at the capture level in force, redacted and truncated at ingest so nothing
//! unredacted is ever stored.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::{metadata::CaptureLevel, redact::Redactor};
use crate::{
    config::{CaptureConfig, ConfigError},
    format::{
        ToolCallOutput,
        request::{self, Input},
        tree::Json,
    },
    provider::WireFormat,
};

/// What a call's span carries of its content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedContent {
    pub level: Option<CaptureLevel>,
    /// `gen_ai.input.messages` (JSON), at `redacted` and `full`.
    pub input_messages: Option<String>,
    /// `gen_ai.system_instructions` (JSON), at `redacted` and `full`.
    pub system_instructions: Option<String>,
    /// `gen_ai.tool.definitions` (JSON): names only at `metadata`, full at `full`/`redacted`.
    pub tool_definitions: Option<String>,
    pub input_message_count: Option<u64>,
    pub tool_names: Vec<String>,
    /// `gen_ai.output.messages` (JSON), filled from the response at `redacted` and `full`.
    pub output_messages: Option<String>,
    /// Some text was cut to fit the size limit.
    pub truncated: bool,
    /// Input messages left out of `input_messages` to fit the size limit: the ones after the
    /// first, before the latest that fit (see [`Capturer::request`]).
    #[serde(default)]
    pub omitted_input_messages: Option<u64>,
    /// The store's copy of the request side when it is kept as the body came, redacted (see
    /// [`Capturer::request_body`]): read into `input_messages`, `system_instructions` and
    /// `tool_definitions` when the store reads the span ([`expand_request_body`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body: Option<String>,
}

/// Text kept past `max_bytes` before it is redacted (and cut to `max_bytes` after), where it
/// arrives already cut (a response's output, a tool's arguments): a finding across the limit
/// is then seen whole and replaced, not kept in part (`jane@exa…`). Longer than any built-in
/// finding but the rarest keys.
pub const REDACTION_MARGIN: usize = 256;

/// Text that arrived cut short (past `max_bytes` plus [`REDACTION_MARGIN`]), redacted, without
/// its last `REDACTION_MARGIN` bytes: what the cut left of a finding is in them. Every whole
/// finding before it was replaced, so what follows the last replacement is the text as it
/// came, and no finding is longer than the margin; keeping the margin's worth of text would
/// keep the part (`jane@exa`) whenever redaction shrank what came before by more than that.
pub fn redacted_cut_short(redactor: &Redactor, text: &str) -> String {
    let redacted = redactor.redact(text);
    let end = redacted.floor_char_boundary(redacted.len().saturating_sub(REDACTION_MARGIN));
    redacted[..end].to_string()
}

/// Settings for capture.
pub struct Capturer {
    pub default_level: CaptureLevel,
    pub max_bytes: usize,
    pub redactor: Redactor,
    /// The local trace store's level (`[store] capture`); `None` when there is no store.
    pub store_level: Option<CaptureLevel>,
}

impl Capturer {
    /// The capturer for `[capture]` (compiles the redaction patterns).
    pub fn from_config(config: &CaptureConfig) -> Result<Capturer, ConfigError> {
        let custom: Vec<(String, String)> = config
            .redact_patterns
            .iter()
            .map(|p| (p.name.clone(), p.pattern.clone()))
            .collect();
        Ok(Capturer {
            default_level: config.level,
            max_bytes: config.max_bytes,
            redactor: Redactor::new(&custom).map_err(ConfigError::Invalid)?,
            store_level: None,
        })
    }

    /// The same capturer, also capturing for a local store at `level`.
    pub fn with_store_level(self, level: Option<CaptureLevel>) -> Capturer {
        Capturer {
            store_level: level,
            ..self
        }
    }

    /// The level one call's content is captured at: the higher of the export's and the
    /// store's, each lowered by what the caller asked. [`Capturer::lower`] then gives each its
    /// own.
    pub fn capture_level(&self, asked: Option<CaptureLevel>) -> CaptureLevel {
        self.level(asked)
            .max(self.store_level(asked).unwrap_or(CaptureLevel::None))
    }

    /// The store's level for one call (the caller may lower it too); `None` without a store.
    pub fn store_level(&self, asked: Option<CaptureLevel>) -> Option<CaptureLevel> {
        self.store_level
            .map(|level| asked.map_or(level, |a| a.min(level)))
    }

    /// The export's copy and the store's of a request's content, each captured from the
    /// body at its own level, when one keeps `full` text and the other `redacted`; `None`
    /// otherwise (one capture at the higher level is lowered for the other, see
    /// [`Capturer::lower`]). Redacting the `full` copy afterwards would miss what the size
    /// limit cut in half: `jane@exa…[truncated]` is no address to the patterns, nor the first
    /// twelve digits of a card a card, and both would be kept.
    pub fn request_apart(
        &self,
        asked: Option<CaptureLevel>,
        format: WireFormat,
        body: &Json,
    ) -> Option<(CapturedContent, CapturedContent)> {
        let export = self.level(asked);
        let store = self.store_level(asked)?;
        if export == store || export.min(store) < CaptureLevel::Redacted {
            return None;
        }
        Some((
            self.request(export, format, body),
            self.request(store, format, body),
        ))
    }

    /// A copy of `content`, captured at its own level, as `level` keeps it (never more than
    /// it has): `metadata` drops the text, `redacted` replaces personal data in text captured
    /// `full`.
    pub fn lower(&self, content: &CapturedContent, level: CaptureLevel) -> Option<CapturedContent> {
        let have = content.level.unwrap_or(CaptureLevel::None);
        if level >= have {
            return Some(content.clone());
        }
        match level {
            CaptureLevel::None => None,
            CaptureLevel::Metadata => {
                Some(self.metadata(content.input_message_count, content.tool_names.clone()))
            }
            CaptureLevel::Redacted | CaptureLevel::Full => {
                let mut budget = Budget {
                    left: usize::MAX,
                    truncated: false,
                    redactor: Some(&self.redactor),
                };
                let mut redact = |text: &Option<String>| {
                    text.as_deref()
                        .map(|t| match serde_json::from_str::<Json>(t) {
                            Ok(v) => budget.text(&v),
                            Err(_) => self.redactor.redact(t).into_owned(),
                        })
                };
                Some(CapturedContent {
                    level: Some(level),
                    input_messages: redact(&content.input_messages),
                    system_instructions: redact(&content.system_instructions),
                    tool_definitions: redact(&content.tool_definitions),
                    output_messages: redact(&content.output_messages),
                    input_message_count: content.input_message_count,
                    tool_names: content.tool_names.clone(),
                    truncated: content.truncated,
                    omitted_input_messages: content.omitted_input_messages,
                    // Redacted already.
                    request_body: content.request_body.clone(),
                })
            }
        }
    }

    /// Whether the request side of a call whose body is `body_len` bytes is kept for the
    /// store as the body came ([`Capturer::request_body`]): the store alone keeps its text
    /// (`redacted`, with the export at `metadata` or `none`: the defaults), and the body fits
    /// in `max_bytes`, so none of its text would be cut or left out.
    pub fn body_for_store(&self, asked: Option<CaptureLevel>, body_len: usize) -> bool {
        body_len <= self.max_bytes
            && self.level(asked) < CaptureLevel::Redacted
            && self.store_level(asked) == Some(CaptureLevel::Redacted)
    }

    /// The store's copy of a request's content, `redacted`, kept as the body came: its
    /// strings and numbers redacted ([`redact_strings`]), behind a line naming its format and
    /// `max_bytes`. Reading it into the GenAI shapes ([`expand_request_body`]) gives what
    /// [`Capturer::request`] gives from the body at `redacted`, but is done when the store
    /// reads the span (a trace opened, a search), not on the request path for every call.
    /// `None` when the body is not UTF-8 or is not a plain chat ([`redact_strings`] says
    /// when): the caller then captures it from a tree.
    pub fn request_body(&self, format: WireFormat, body: &[u8]) -> Option<CapturedContent> {
        let body = simdutf8::basic::from_utf8(body).ok()?;
        let mut kept = String::with_capacity(body.len() + 64);
        kept.push_str(format.name());
        kept.push(' ');
        kept.push_str(itoa::Buffer::new().format(self.max_bytes));
        kept.push('\n');
        redact_strings(&self.redactor, body, self.max_bytes, &mut kept)?;
        Some(CapturedContent {
            level: Some(CaptureLevel::Redacted),
            request_body: Some(kept),
            ..CapturedContent::default()
        })
    }

    /// The level for one call: the caller may only lower the configured one.
    pub fn level(&self, asked: Option<CaptureLevel>) -> CaptureLevel {
        asked.map_or(self.default_level, |a| a.min(self.default_level))
    }

    /// The `metadata` level without a second parse of the body: counts and tool names only.
    pub fn metadata(
        &self,
        input_message_count: Option<u64>,
        tool_names: Vec<String>,
    ) -> CapturedContent {
        let tool_definitions = (!tool_names.is_empty())
            .then(|| Json::Array(tool_names.iter().map(|n| function_name(n)).collect()).to_json());
        CapturedContent {
            level: Some(CaptureLevel::Metadata),
            input_message_count,
            tool_names,
            tool_definitions,
            ..CapturedContent::default()
        }
    }

    /// Captures the request side from its JSON body, read into a tree. When the messages do
    /// not fit in `max_bytes`, the first one (the task, as a rule) and the latest that fit are
    /// kept and those between them left out, counted: an agent resends its whole conversation
    /// with each call, and what a call was asked is at its end. Cutting in order, as before,
    /// kept the first turns of a long conversation in every call of it and none of the latest.
    pub fn request(&self, level: CaptureLevel, format: WireFormat, body: &Json) -> CapturedContent {
        let mut out = CapturedContent {
            level: Some(level),
            ..CapturedContent::default()
        };
        if level == CaptureLevel::None {
            return out;
        }
        let redactor = (level == CaptureLevel::Redacted).then_some(&self.redactor);
        capture_tree(&mut out, format, body, self.max_bytes, redactor, false);
        out
    }

    /// Captures the output text and tool calls of a response.
    /// `cut_short`: the body parser cut the output at its limit (`max_bytes` plus
    /// [`REDACTION_MARGIN`]); its last string (the text, or the last tool call's arguments) is
    /// then kept as [`redacted_cut_short`] keeps it at `redacted`.
    pub fn output(
        &self,
        content: &mut CapturedContent,
        text: &str,
        tool_calls: &[ToolCallOutput],
        finish: Option<&str>,
        cut_short: bool,
    ) {
        let Some(level) = content.level else { return };
        if level < CaptureLevel::Redacted {
            return;
        }
        let (short_text, mut short_calls);
        let (text, tool_calls) = if !cut_short || level != CaptureLevel::Redacted {
            (text, tool_calls)
        } else if let Some(last) = tool_calls.last() {
            short_calls = tool_calls.to_vec();
            short_calls[tool_calls.len() - 1].arguments =
                redacted_cut_short(&self.redactor, &last.arguments);
            (text, &short_calls[..])
        } else {
            short_text = redacted_cut_short(&self.redactor, text);
            (short_text.as_str(), tool_calls)
        };
        let mut budget = Budget {
            left: self.max_bytes,
            truncated: false,
            redactor: (level == CaptureLevel::Redacted).then_some(&self.redactor),
        };
        content.output_messages = Some(output_messages(&mut budget, text, tool_calls, finish));
        content.truncated |= budget.truncated;
    }
}

/// The request side of `out` (at its level, `metadata` or more) from a body read into a tree:
/// each text attribute within `max_bytes` of its own, with `redactor` at `redacted`. `fits`:
/// the body's text is known to fit in `max_bytes` (a body no longer than that, kept by
/// [`Capturer::request_body`]), so every message is kept, as from the body as it came: its
/// strings were redacted since, and a placeholder may be longer than what it replaced.
fn capture_tree(
    out: &mut CapturedContent,
    format: WireFormat,
    body: &Json,
    max_bytes: usize,
    redactor: Option<&Redactor>,
    fits: bool,
) {
    let Input { system, messages } = request::input(format, body);
    out.input_message_count = Some(messages.len() as u64);
    let tools = request::tool_definitions(body);
    out.tool_names = tools
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_string))
        .collect();
    if out.level == Some(CaptureLevel::Metadata) {
        if !out.tool_names.is_empty() {
            let names = out.tool_names.iter().map(|n| function_name(n)).collect();
            out.tool_definitions = Some(Json::Array(names).to_json());
        }
        return;
    }
    // Each attribute has `max_bytes` of its own, as the setting says: a long conversation
    // must not leave its system instructions cut to nothing.
    let budget = || Budget {
        left: max_bytes,
        truncated: false,
        redactor,
    };
    let mut input = budget();
    let (input_messages, omitted) = first_and_latest(&mut input, messages, fits);
    out.input_messages = Some(input_messages);
    out.omitted_input_messages = omitted;
    out.truncated = input.truncated;
    if !system.is_empty() {
        let mut budget = budget();
        out.system_instructions = Some(budget.text(&Json::Array(system)));
        out.truncated |= budget.truncated;
    }
    if !tools.is_empty() {
        let mut budget = budget();
        out.tool_definitions = Some(budget.text(&Json::Array(tools)));
        out.truncated |= budget.truncated;
    }
}

/// The request side a store keeps as [`Capturer::request_body`] kept it, read into the GenAI
/// shapes: what [`Capturer::request`] captured from the body at `redacted`. `None` when it
/// cannot be read (not written by `request_body`).
pub fn expand_request_body(kept: &str) -> Option<CapturedContent> {
    let (head, body) = kept.split_once('\n')?;
    let (format, max_bytes) = head.split_once(' ')?;
    let format: WireFormat = format.parse().ok()?;
    let max_bytes = max_bytes.parse().ok()?;
    let tree: Json = serde_json::from_str(body).ok()?;
    let mut out = CapturedContent {
        level: Some(CaptureLevel::Redacted),
        ..CapturedContent::default()
    };
    capture_tree(&mut out, format, &tree, max_bytes, None, true);
    Some(out)
}

/// Counted text the GenAI conversion may add for each object, array or element of a body (a
/// part's type, a role, `[image]`), at most: [`Capturer::request_body`] keeps a body as it came
/// only when its bytes and this much for each `{`, `[` and `,` fit in `max_bytes`, so the
/// messages read from it fit too, as from the body as it came (none is cut or left out there
/// that the capture from the tree would keep). 2,000 token ids to embed are 4 kB of body and
/// 18 kB of messages.
const ADDED_PER_ELEMENT: usize = 32;

/// Appends `json` (valid JSON text) to `out` with every string in it redacted, and every
/// number in its objects and arrays (a number a format reads as text, `content: 4111…`, is
/// written as the string redaction makes of it): copied as it is up to what holds a finding,
/// which is written redacted (as serde_json writes a string). The top-level `model` is left as
/// it is: the span keeps it as `gen_ai.request.model`, and its digits sent the redaction's
/// regex over it, as much work as the rest of a short chat; so are the top-level numbers
/// (`temperature`, `max_tokens`), which no format reads as text. So are the keys, each one
/// of [`request::PLAIN_KEYS`], in which no built-in pattern finds anything; they are redacted
/// only by a redactor with patterns of the user's own.
///
/// `None`, and the body is captured from its tree, when keeping it as it came could keep what
/// that capture leaves out or shows otherwise:
/// - a key that is not one of [`request::PLAIN_KEYS`] (tools, images, files, audio, MCP
///   servers, metadata: the conversion may leave out what is under it);
/// - a number in its objects and arrays that is not a plain integer of at most 19 digits
///   (the conversion writes `4111111111111111e0` as `4111111111111111.0`, which the pattern
///   redacts there and not here);
/// - messages that may not fit in `max_bytes` ([`ADDED_PER_ELEMENT`]);
/// - a string whose escapes cannot be read (not JSON).
fn redact_strings(
    redactor: &Redactor,
    json: &str,
    max_bytes: usize,
    out: &mut String,
) -> Option<()> {
    let bytes = json.as_bytes();
    let mut copied = 0;
    let mut depth = 0u32;
    let mut elements = 0usize;
    // The value that follows is the top-level `model`'s.
    let mut model = false;
    let redact = |out: &mut String, copied: &mut usize, from: usize, to: usize, text: &str| {
        if let Cow::Owned(redacted) = redactor.redact(text) {
            out.push_str(&json[*copied..from]);
            out.push_str(&serde_json::to_string(&*redacted).ok()?);
            *copied = to;
        }
        Some(())
    };
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'{' | b'[' => {
                depth += 1;
                elements += 1;
                model = false;
            }
            b',' => elements += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'"' => {
                let open = at;
                let (end, escaped) = string_end(bytes, open + 1)?;
                at = end + 1;
                let raw = &json[open + 1..end];
                let text: Cow<str> = if escaped {
                    Cow::Owned(serde_json::from_str(&json[open..=end]).ok()?)
                } else {
                    Cow::Borrowed(raw)
                };
                let key = bytes[at..]
                    .iter()
                    .find(|b| !b.is_ascii_whitespace())
                    .is_some_and(|&b| b == b':');
                if key {
                    if !request::is_plain_key(&text) {
                        return None;
                    }
                    model = depth == 1 && text == "model";
                    // No built-in pattern finds anything in a plain chat's key.
                    if !redactor.has_custom() {
                        continue;
                    }
                } else if std::mem::take(&mut model) {
                    continue;
                }
                redact(out, &mut copied, open, at, &text)?;
                continue;
            }
            b'-' | b'0'..=b'9' => {
                let start = at;
                while at < bytes.len()
                    && matches!(bytes[at], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    at += 1;
                }
                model = false;
                if depth >= 2 {
                    let number = &json[start..at];
                    let digits = number.strip_prefix('-').unwrap_or(number);
                    if digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                        return None;
                    }
                    redact(out, &mut copied, start, at, number)?;
                }
                continue;
            }
            _ => {}
        }
        at += 1;
    }
    if bytes
        .len()
        .saturating_add(elements.saturating_mul(ADDED_PER_ELEMENT))
        > max_bytes
    {
        return None;
    }
    out.push_str(&json[copied..]);
    Some(())
}

/// Where the JSON string whose text begins at `from` ends (its closing quote), and whether it
/// holds an escape; `None` when it does not end. Eight bytes at a time while none of them is
/// a quote or a backslash (most text), then byte by byte.
fn string_end(bytes: &[u8], mut from: usize) -> Option<(usize, bool)> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // Whether a byte of `w` is `b`: the classic test for a zero byte, on `w ^ b…b`.
    let has = |w: u64, b: u8| {
        let x = w ^ (ONES * u64::from(b));
        x.wrapping_sub(ONES) & !x & HIGHS != 0
    };
    let mut escaped = false;
    loop {
        while let Some(chunk) = bytes.get(from..from + 8) {
            let w = u64::from_ne_bytes(chunk.try_into().ok()?);
            if has(w, b'"') || has(w, b'\\') {
                break;
            }
            from += 8;
        }
        match *bytes.get(from)? {
            b'"' => return Some((from, escaped)),
            b'\\' => {
                escaped = true;
                from += 2;
            }
            _ => from += 1,
        }
    }
}

/// `gen_ai.output.messages` of one response: its assistant message, with a text part and a
/// part per tool call, written straight to JSON text. It is exactly the text the message
/// would be as a `Value` walked by the budget and serialized (the test keeps that version):
/// keys in the order serde_json's maps keep them (sorted), each string redacted and cut in
/// that order. Building the `Value` copied the whole output once more and was most of the
/// cost of keeping it.
fn output_messages(
    budget: &mut Budget,
    text: &str,
    tool_calls: &[ToolCallOutput],
    finish: Option<&str>,
) -> String {
    let mut out = Vec::with_capacity(text.len() + 96);
    out.extend_from_slice(br#"[{"finish_reason":"#);
    budget.write(&mut out, finish.unwrap_or(""));
    out.extend_from_slice(br#","parts":["#);
    if !text.is_empty() {
        out.extend_from_slice(br#"{"content":"#);
        budget.write(&mut out, text);
        out.extend_from_slice(br#","type":"#);
        budget.write_word(&mut out, "text");
        out.push(b'}');
    }
    for (i, call) in tool_calls.iter().enumerate() {
        if i > 0 || !text.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"arguments":"#);
        budget.write(&mut out, &call.arguments);
        if !call.id.is_empty() {
            out.extend_from_slice(br#","id":"#);
            budget.write(&mut out, &call.id);
        }
        out.extend_from_slice(br#","name":"#);
        budget.write(&mut out, &call.name);
        out.extend_from_slice(br#","type":"#);
        budget.write_word(&mut out, "tool_call");
        out.push(b'}');
    }
    out.extend_from_slice(br#"],"role":"#);
    budget.write_word(&mut out, "assistant");
    out.extend_from_slice(b"}]");
    // Only UTF-8 was written (JSON punctuation and escaped `str`s).
    String::from_utf8(out).unwrap_or_default()
}

/// `gen_ai.input.messages` within the budget: every message when their text fits, else the
/// first and the latest that fit in what the first leaves (it takes at most half when the
/// latest need the rest), with the number left out between them. The last message is always
/// kept, cut if it alone is over the budget.
fn first_and_latest(
    budget: &mut Budget,
    messages: Vec<Json<'_>>,
    fits: bool,
) -> (String, Option<u64>) {
    let n = messages.len();
    // Most calls fit: only their total is counted (no per-message sizes kept).
    let total: usize = if fits || n < 2 {
        0
    } else {
        messages.iter().map(text_bytes).sum()
    };
    if total <= budget.left {
        return (budget.text(&Json::Array(messages)), None);
    }
    let sizes: Vec<usize> = messages.iter().map(text_bytes).collect();
    let first = sizes[0].min(budget.left / 2);
    let room = budget.left - first;
    let mut from = n - 1;
    let mut latest = sizes[n - 1];
    while from > 1 && latest + sizes[from - 1] <= room {
        from -= 1;
        latest += sizes[from];
    }
    let omitted = from - 1;
    // The first message gets what the latest leave, and they get it back after it.
    let latest = latest.min(room);
    let mut out = Vec::with_capacity(budget.left.min(total) + 64);
    out.push(b'[');
    budget.left -= latest;
    budget.write_json(&mut out, &messages[0]);
    budget.left += latest;
    for message in &messages[from..] {
        out.push(b',');
        budget.write_json(&mut out, message);
    }
    out.push(b']');
    // Something was left out or cut: the first message or the last is over its share.
    budget.truncated = true;
    // Only UTF-8 was written (JSON punctuation, numbers and escaped `str`s).
    let text = String::from_utf8(out).unwrap_or_default();
    (text, (omitted > 0).then_some(omitted as u64))
}

/// The bytes of text (string values) in a JSON value: what a budget counts.
fn text_bytes(v: &Json<'_>) -> usize {
    match v {
        Json::String(s) => s.len(),
        Json::Array(items) => items.iter().map(text_bytes).sum(),
        Json::Object(entries) => entries.iter().map(|(_, v)| text_bytes(v)).sum(),
        _ => 0,
    }
}

/// A tool definition that keeps only the name.
fn function_name(name: &str) -> Json<'_> {
    Json::Object(vec![
        ("name".into(), name.into()),
        ("type".into(), "function".into()),
    ])
}

/// Writes `s` as a JSON string, exactly as serde_json writes it. Most text has nothing to
/// escape (no `"`, `\` or control character): it is then copied whole after one pass over its
/// bytes that the compiler vectorizes, where serde_json looks each byte up in its escape table.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    let plain = s.bytes().fold(true, |plain, b| {
        plain & (b >= 0x20 && b != b'"' && b != b'\\')
    });
    if plain {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a `str` to a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// The longest role or part type written as a word of the shape, never cut (longer ones are
/// text like any other).
const MAX_SHAPE_WORD: usize = 32;

/// Redacts and truncates every string in a JSON value, keeping the JSON valid.
struct Budget<'a> {
    left: usize,
    truncated: bool,
    redactor: Option<&'a Redactor>,
}

impl Budget<'_> {
    /// A string as kept: redacted, then cut to what is left of the budget (and counted). Once
    /// the budget is spent nothing of a string is kept but the cut's mark, so it is not
    /// redacted: in a long conversation most of the text comes after that point (a 200 kB
    /// agent context against 16 kB kept), and redacting it cost up to a few milliseconds a call.
    fn keep<'s>(&mut self, s: &'s str) -> Cow<'s, str> {
        let kept = match self.redactor {
            Some(r) if self.left > 0 => r.redact(s),
            _ => Cow::Borrowed(s),
        };
        self.cut(kept)
    }

    /// A string cut to what is left of the budget (and counted).
    fn cut<'s>(&mut self, mut kept: Cow<'s, str>) -> Cow<'s, str> {
        if kept.len() > self.left {
            let mut cut = self.left;
            while !kept.is_char_boundary(cut) {
                cut -= 1;
            }
            let mut short = kept[..cut].to_string();
            short.push_str("…[truncated]");
            kept = Cow::Owned(short);
            self.truncated = true;
            self.left = 0;
        } else {
            self.left -= kept.len();
        }
        kept
    }

    /// Writes a string as kept, as a JSON string.
    fn write(&mut self, out: &mut Vec<u8>, s: &str) {
        let kept = self.keep(s);
        write_json_str(out, &kept);
    }

    /// Writes one of the shape's own words (a part type, a role): counted, but never cut, so
    /// that a message cut short keeps its role and its parts their types; not given to the
    /// redactor, which has nothing to find in it.
    fn write_word(&mut self, out: &mut Vec<u8>, word: &str) {
        self.left = self.left.saturating_sub(word.len());
        write_json_str(out, word);
    }

    /// A role or a part type read from the request: a word of the shape (see
    /// [`Budget::write_word`]) when short, redacted all the same since the caller wrote it.
    fn write_shape_word(&mut self, out: &mut Vec<u8>, word: &str) {
        match self.redactor {
            Some(r) => self.write_word(out, &r.redact(word)),
            None => self.write_word(out, word),
        }
    }

    /// The JSON text of a value with every string value kept (keys as they are), in the
    /// order the value holds them: exactly `Json::to_json` of the value with its strings
    /// replaced by what [`Budget::keep`] keeps, written in one pass.
    fn text(&mut self, v: &Json<'_>) -> String {
        let mut out = Vec::with_capacity(256);
        self.write_json(&mut out, v);
        // Only UTF-8 was written (JSON punctuation, numbers and escaped `str`s).
        String::from_utf8(out).unwrap_or_default()
    }

    fn write_json(&mut self, out: &mut Vec<u8>, v: &Json<'_>) {
        match v {
            Json::Null => out.extend_from_slice(b"null"),
            Json::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Json::Number(n) => {
                // A number holds digits like any text (a card number as a tool's argument):
                // written as the string redaction makes of it when it holds a finding.
                if let Some(r) = self.redactor.filter(|_| self.left > 0) {
                    let text = n.to_string();
                    if let Cow::Owned(redacted) = r.redact(&text) {
                        write_json_str(out, &redacted);
                        return;
                    }
                }
                let _ = serde_json::to_writer(&mut *out, n);
            }
            Json::String(s) => self.write(out, s),
            Json::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    self.write_json(out, item);
                }
                out.push(b']');
            }
            Json::Object(entries) => {
                out.push(b'{');
                for (i, (key, value)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    // A key is the shape as a rule, but may be what was said (an object's keys
                    // as a tool's argument): redacted too, while the budget lasts.
                    match self.redactor.filter(|_| self.left > 0) {
                        Some(r) => write_json_str(out, &r.redact(key)),
                        None => write_json_str(out, key),
                    }
                    out.push(b':');
                    match value {
                        Json::String(word)
                            if matches!(key.as_ref(), "role" | "type")
                                && word.len() <= MAX_SHAPE_WORD =>
                        {
                            self.write_shape_word(out, word)
                        }
                        _ => self.write_json(out, value),
                    }
                }
                out.push(b'}');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    /// The output message as it was built before `output_messages`: a `Value`, walked by the
    /// budget, serialized.
    fn output_as_value(
        budget: &mut Budget,
        text: &str,
        tool_calls: &[ToolCallOutput],
        finish: Option<&str>,
    ) -> String {
        let mut parts = Vec::new();
        if !text.is_empty() {
            parts.push(request::text_part(text));
        }
        for call in tool_calls {
            let mut entries = vec![
                ("type".into(), "tool_call".into()),
                ("name".into(), call.name.as_str().into()),
                ("arguments".into(), call.arguments.as_str().into()),
            ];
            if !call.id.is_empty() {
                entries.push(("id".into(), call.id.as_str().into()));
            }
            parts.push(Json::object(entries));
        }
        let message = Json::Array(vec![Json::object(vec![
            ("role".into(), "assistant".into()),
            ("parts".into(), Json::Array(parts)),
            ("finish_reason".into(), finish.unwrap_or("").into()),
        ])]);
        budget.text(&message)
    }

    /// Texts with what needs escaping, personal data, custom matches and multi-byte
    /// characters (cut at the budget).
    fn text() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("plain words ".to_string()),
                Just("jane@example.com".to_string()),
                Just("\"quoted\"\n\t\\".to_string()),
                Just("é漢🙂".to_string()),
                Just("SECRET-42".to_string()),
                Just("\u{1}".to_string()),
                Just("stop".to_string()),
            ],
            0..6,
        )
        .prop_map(|p| p.concat())
    }

    proptest! {
        /// Any string, plain or with quotes, backslashes and control characters to escape.
        #[test]
        fn a_string_is_written_as_serde_json_writes_it(
            s in prop_oneof![any::<String>(), "[a-z\"\\\\\u{0}-\u{1f}\u{7f}é ]{0,40}"],
        ) {
            let mut out = b"[".to_vec();
            write_json_str(&mut out, &s);
            let expected = serde_json::to_string(&s).unwrap();
            prop_assert_eq!(&out[1..], expected.as_bytes());
        }

        /// With nothing to redact and room for all, a budget writes what serde_json writes.
        #[test]
        fn a_budget_with_room_writes_a_tree_as_serde_json_does(
            v in crate::format::tree::tests::value(),
        ) {
            let text = v.to_string();
            let tree: Json = serde_json::from_str(&text).unwrap();
            let mut budget = Budget { left: usize::MAX, truncated: false, redactor: None };
            prop_assert_eq!(budget.text(&tree), tree.to_json());
        }

        #[test]
        fn output_messages_are_the_text_the_walked_value_was(
            text in text(),
            calls in proptest::collection::vec((text(), text(), text()), 0..3),
            finish in proptest::option::of(text()),
            max_bytes in 0usize..120,
            redacted in any::<bool>(),
        ) {
            let redactor = Redactor::new(&[("secret".into(), "SECRET-[0-9]+".into())]).unwrap();
            let calls: Vec<ToolCallOutput> = calls
                .into_iter()
                .map(|(id, name, arguments)| ToolCallOutput { id, name, arguments })
                .collect();
            let budget = || Budget {
                left: max_bytes,
                truncated: false,
                redactor: redacted.then_some(&redactor),
            };
            let (mut a, mut b) = (budget(), budget());
            let direct = output_messages(&mut a, &text, &calls, finish.as_deref());
            let walked = output_as_value(&mut b, &text, &calls, finish.as_deref());
            prop_assert_eq!(&direct, &walked);
            prop_assert_eq!(a.truncated, b.truncated);
            prop_assert!(serde_json::from_str::<Value>(&direct).is_ok());
        }
    }

    fn capturer(level: CaptureLevel, max_bytes: usize) -> Capturer {
        Capturer {
            default_level: level,
            max_bytes,
            redactor: Redactor::new(&[]).unwrap(),
            store_level: None,
        }
    }

    /// An output the parser cut short, whose findings redaction shrank by more than the
    /// margin: the part of an address the cut left (`jane@exa`) now falls within the limit,
    /// and is dropped with the rest of the margin.
    #[test]
    fn output_cut_short_keeps_no_part_of_a_finding() {
        let c = capturer(CaptureLevel::Redacted, 300);
        let mut text = "Here is the list. ".repeat(7);
        text.push_str(&"abcdefgh@example.com ".repeat(20));
        text.push_str("x jane@exa");
        assert!(text.len() <= 300 + REDACTION_MARGIN);
        let output = |text: &str, calls: &[ToolCallOutput], cut_short| {
            let mut content = CapturedContent {
                level: Some(CaptureLevel::Redacted),
                ..CapturedContent::default()
            };
            c.output(&mut content, text, calls, Some("length"), cut_short);
            content.output_messages.unwrap()
        };
        let kept = output(&text, &[], true);
        assert!(kept.contains("Here is") && !kept.contains("jane"), "{kept}");
        // An output that was not cut keeps its end.
        assert!(output("mail x@example.org", &[], false).contains("mail [EMAIL]"));
        // Cut in a tool call's arguments: the last call's.
        let call = ToolCallOutput {
            id: "call_1".into(),
            name: "send".into(),
            arguments: text.clone(),
        };
        let kept = output("", &[call], true);
        assert!(kept.contains("Here is") && !kept.contains("jane"), "{kept}");
    }

    fn chat() -> String {
        let body = json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "My email is jane@example.com"}
            ],
            "tools": [{"type": "function", "function": {"name": "lookup", "description": "find", "parameters": {"type": "object"}}}]
        });
        body.to_string()
    }

    #[test]
    fn metadata_level_keeps_counts_and_tool_names_but_no_text() {
        let c = capturer(CaptureLevel::Metadata, 1000).request(
            CaptureLevel::Metadata,
            WireFormat::ChatCompletions,
            &serde_json::from_str(&chat()).unwrap(),
        );
        assert_eq!(c.input_message_count, Some(1));
        assert_eq!(c.tool_names, ["lookup"]);
        assert!(c.input_messages.is_none() && c.system_instructions.is_none());
        assert!(!c.tool_definitions.unwrap().contains("find"));
    }

    #[test]
    fn redacted_level_keeps_structure_and_replaces_personal_data() {
        let c = capturer(CaptureLevel::Redacted, 1000).request(
            CaptureLevel::Redacted,
            WireFormat::ChatCompletions,
            &serde_json::from_str(&chat()).unwrap(),
        );
        let input: Value = serde_json::from_str(c.input_messages.as_deref().unwrap()).unwrap();
        assert_eq!(input[0]["role"], "user");
        assert_eq!(input[0]["parts"][0]["content"], "My email is [EMAIL]");
        let system: Value =
            serde_json::from_str(c.system_instructions.as_deref().unwrap()).unwrap();
        assert_eq!(system[0]["content"], "You are terse.");
    }

    /// A conversation of `n` turns, turn `i` saying `turn i` padded to `len` bytes.
    fn conversation(n: usize, len: usize) -> Value {
        let messages: Vec<Value> = (0..n)
            .map(|i| {
                let role = if i % 2 == 0 { "user" } else { "assistant" };
                json!({"role": role, "content": format!("{:<len$}", format!("turn {i}"))})
            })
            .collect();
        json!({"model": "gpt-4o", "messages": messages})
    }

    /// The input messages' texts kept at `full` within `max_bytes`, and the content.
    fn captured(max_bytes: usize, body: &Value) -> (Vec<String>, CapturedContent) {
        let c = capturer(CaptureLevel::Full, max_bytes).request(
            CaptureLevel::Full,
            WireFormat::ChatCompletions,
            &serde_json::from_str(&body.to_string()).unwrap(),
        );
        let input: Value = serde_json::from_str(c.input_messages.as_deref().unwrap()).unwrap();
        let texts = input
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                m["parts"][0]["content"]
                    .as_str()
                    .unwrap()
                    .trim_end()
                    .to_string()
            })
            .collect();
        (texts, c)
    }

    #[test]
    fn a_long_conversation_keeps_its_first_and_latest_messages() {
        // Ten turns of 100 bytes of text (and a role and a part type each: 108 to 113 bytes).
        let body = conversation(10, 100);
        let (texts, c) = captured(500, &body);
        assert_eq!(texts, ["turn 0", "turn 7", "turn 8", "turn 9"]);
        assert_eq!(c.omitted_input_messages, Some(6));
        assert_eq!(c.input_message_count, Some(10));
        assert!(c.truncated);
        // Room for all: all, in order, none left out.
        let (texts, c) = captured(5000, &body);
        assert_eq!(texts.len(), 10);
        assert_eq!(c.omitted_input_messages, None);
        assert!(!c.truncated);
    }

    #[test]
    fn a_long_conversation_leaves_the_system_instructions_whole() {
        let mut body = conversation(10, 100);
        body["messages"]
            .as_array_mut()
            .unwrap()
            .insert(0, json!({"role": "system", "content": "You are terse."}));
        let (_, c) = captured(500, &body);
        assert_eq!(c.omitted_input_messages, Some(6));
        let system: Value =
            serde_json::from_str(c.system_instructions.as_deref().unwrap()).unwrap();
        assert_eq!(system[0]["content"], "You are terse.");
    }

    #[test]
    fn a_long_first_message_leaves_room_for_the_latest() {
        let mut body = conversation(6, 50);
        body["messages"][0]["content"] = json!("x".repeat(5000));
        let (texts, c) = captured(400, &body);
        // The first is cut to what the latest leave (at least half), the latest are whole.
        assert!(texts[0].ends_with("…[truncated]"), "{}", texts[0]);
        assert!(texts[0].len() >= 200, "{}", texts[0].len());
        assert_eq!(texts[1..], ["turn 3", "turn 4", "turn 5"]);
        assert_eq!(c.omitted_input_messages, Some(2));
        // A message cut short keeps its role and its part's type.
        let input: Value = serde_json::from_str(c.input_messages.as_deref().unwrap()).unwrap();
        assert_eq!(input[0]["role"], "user");
        assert_eq!(input[0]["parts"][0]["type"], "text");
    }

    #[test]
    fn a_long_first_message_does_not_crowd_out_the_question_after_it() {
        // A document, an answer, the question: none left out, but the document gets only what
        // the latest two leave (it took the whole limit before, and they were cut to nothing).
        for n in [2, 3] {
            let mut body = conversation(n, 40);
            body["messages"][0]["content"] = json!("d".repeat(5000));
            let (texts, c) = captured(1000, &body);
            assert_eq!(texts.len(), n);
            assert!(texts[0].ends_with("…[truncated]"));
            assert_eq!(texts[n - 1], format!("turn {}", n - 1));
            assert_eq!(c.omitted_input_messages, None);
            assert!(c.truncated);
        }
    }

    #[test]
    fn a_last_message_over_the_limit_is_kept_cut() {
        let mut body = conversation(5, 20);
        body["messages"][4]["content"] = json!("y".repeat(5000));
        let (texts, c) = captured(1000, &body);
        assert_eq!(texts[0], "turn 0");
        assert_eq!(texts.len(), 2);
        assert!(texts[1].starts_with("yyy") && texts[1].ends_with("…[truncated]"));
        assert_eq!(c.omitted_input_messages, Some(3));
    }

    #[test]
    fn past_a_spent_budget_no_text_is_kept_and_none_is_redacted() {
        let redactor = Redactor::new(&[]).unwrap();
        let mut budget = Budget {
            left: 10,
            truncated: false,
            redactor: Some(&redactor),
        };
        assert_eq!(
            budget.keep("mail jane@example.com"),
            "mail [EMAI…[truncated]"
        );
        assert!(budget.truncated);
        for text in ["jane@example.com", "4111 1111 1111 1111", "plain words"] {
            assert_eq!(budget.keep(text), "…[truncated]");
        }
        assert_eq!(budget.keep(""), "");
    }

    #[test]
    fn full_level_is_truncated_to_the_size_limit_as_valid_json() {
        let c = capturer(CaptureLevel::Full, 20).request(
            CaptureLevel::Full,
            WireFormat::ChatCompletions,
            &serde_json::from_str(&chat()).unwrap(),
        );
        let input: Value = serde_json::from_str(c.input_messages.as_deref().unwrap()).unwrap();
        assert!(
            input[0]["parts"][0]["content"]
                .as_str()
                .unwrap()
                .ends_with("…[truncated]")
        );
        assert!(c.truncated);
    }

    #[test]
    fn a_caller_can_only_lower_the_level() {
        let c = capturer(CaptureLevel::Redacted, 10);
        assert_eq!(c.level(Some(CaptureLevel::Full)), CaptureLevel::Redacted);
        assert_eq!(c.level(Some(CaptureLevel::None)), CaptureLevel::None);
        assert_eq!(c.level(None), CaptureLevel::Redacted);
    }

    #[test]
    fn anthropic_system_and_gemini_contents_are_read() {
        let c = capturer(CaptureLevel::Full, 1000);
        let a = c.request(
            CaptureLevel::Full,
            WireFormat::Messages,
            &serde_json::from_str(r#"{"system": "sys", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}"#).unwrap(),
        );
        assert!(a.system_instructions.unwrap().contains("sys"));
        assert!(a.input_messages.unwrap().contains("hi"));
        let g = c.request(
            CaptureLevel::Full,
            WireFormat::GenerateContent,
            &serde_json::from_str(r#"{"contents": [{"role": "user", "parts": [{"text": "yo"}]}]}"#)
                .unwrap(),
        );
        assert!(g.input_messages.unwrap().contains("yo"));
    }

    /// A request body as any of the formats may have it: chat messages (string or block
    /// content, tool calls and results), Anthropic's `system`, Gemini's `contents` and
    /// `systemInstruction`, the Responses API's `input` and `instructions`, a prompt, tools.
    fn any_body() -> impl Strategy<Value = Value> {
        use proptest::collection::vec;
        // A control character is followed by a space: where a format reads a whole object as
        // text (`{"note": …}`), the tree's capture redacts its JSON text, in which `\u0001`
        // followed by an address reads as `u0001jane@…` to the pattern, and the escape is
        // replaced with the address. The body kept as it came redacts the string itself.
        let body_text = || text().prop_map(|t| t.replace('\u{1}', "\u{1} "));
        let block = prop_oneof![
            body_text().prop_map(|t| json!({"type": "text", "text": t})),
            body_text().prop_map(|t| json!({"type": "input_text", "text": t})),
            (body_text(), body_text()).prop_map(
                |(id, q)| json!({"type": "tool_use", "id": id, "name": "lookup", "input": {"q": q}})
            ),
            (body_text(), body_text()).prop_map(
                |(id, r)| json!({"type": "tool_result", "tool_use_id": id, "content": r})
            ),
            Just(json!({"type": "text"})),
            body_text().prop_map(|t| json!({"text": t})),
            Just(json!({"type": "refusal"})),
        ]
        .boxed();
        let content = prop_oneof![
            body_text().prop_map(Value::from),
            vec(block.clone(), 0..3).prop_map(Value::from),
            Just(Value::Null),
            (0u32..100_000).prop_map(Value::from),
            body_text().prop_map(|t| json!({"note": t})),
        ];
        let role = prop_oneof![
            Just("system"),
            Just("developer"),
            Just("user"),
            Just("assistant"),
            Just("tool"),
        ];
        let message = (
            role,
            content,
            proptest::option::of((body_text(), body_text())),
            any::<bool>(),
        )
            .prop_map(|(role, content, call, answers)| {
                let mut m = json!({"role": role, "content": content});
                if let Some((id, arguments)) = call {
                    if answers {
                        m["tool_call_id"] = id.into();
                    } else {
                        m["tool_calls"] = json!([{"id": id, "type": "function",
                            "function": {"name": "lookup", "arguments": arguments}}]);
                    }
                }
                m
            })
            .boxed();
        let gemini = (body_text(), vec(block, 0..3))
            .prop_map(|(role, parts)| json!({"role": role, "parts": parts}));
        let tool = (body_text(), body_text()).prop_map(|(name, description)| {
            json!({"type": "function", "function": {"name": name, "description": description,
                "parameters": {"type": "object", "properties": {"q": {"description": description}}}}})
        });
        (
            vec(message.clone(), 0..4),
            proptest::option::of(body_text()),
            vec(gemini, 0..3),
            vec(message, 0..3),
            vec(tool, 0..2),
            body_text(),
        )
            .prop_map(|(messages, system, contents, input, tools, prompt)| {
                let mut body = json!({"model": "gpt-4o", "temperature": 0.2, "messages": messages,
                    "contents": contents, "input": input, "prompt": prompt,
                    "instructions": prompt, "systemInstruction": {"parts": [{"text": prompt}]}});
                if let Some(system) = system {
                    body["system"] = system.into();
                }
                if !tools.is_empty() {
                    body["tools"] = tools.into();
                }
                body
            })
    }

    /// Whether every key in `v` is one of a plain chat's.
    fn plain_keys_only(v: &Value) -> bool {
        match v {
            Value::Object(m) => m
                .iter()
                .all(|(k, v)| request::is_plain_key(k) && plain_keys_only(v)),
            Value::Array(items) => items.iter().all(plain_keys_only),
            _ => true,
        }
    }

    proptest! {
        /// The end of a string found eight bytes at a time is the one found byte by byte.
        #[test]
        fn a_string_ends_where_its_first_unescaped_quote_is(
            s in "[a-z\"\\\\é ]{0,40}",
            from in 0usize..4,
        ) {
            let bytes = s.as_bytes();
            let from = from.min(bytes.len());
            let mut at = from;
            let mut escaped = false;
            let expected = loop {
                match bytes.get(at) {
                    None => break None,
                    Some(b'"') => break Some((at, escaped)),
                    Some(b'\\') => {
                        escaped = true;
                        at += 2;
                    }
                    Some(_) => at += 1,
                }
            };
            prop_assert_eq!(string_end(bytes, from), expected);
        }

        /// The store's copy of a body kept as it came reads as the body captured at
        /// `redacted`, in every format, with redaction lengthening text up to the limit, and
        /// keeps none of what redaction replaces.
        #[test]
        fn a_body_kept_for_the_store_reads_as_the_request_captured_from_it(
            body in any_body(),
            room in prop_oneof![Just(0usize), Just(1 << 20)],
        ) {
            let text = body.to_string();
            let tree: Json = serde_json::from_str(&text).unwrap();
            // The least room a body is kept in as it came (or a little more: the count takes
            // the commas and brackets within strings too).
            let elements = text.bytes().filter(|b| matches!(b, b'{' | b'[' | b',')).count();
            let c = Capturer {
                redactor: Redactor::new(&[("secret".into(), r"SECRET-\d+".into())]).unwrap(),
                ..capturer(CaptureLevel::Metadata, text.len() + elements * ADDED_PER_ELEMENT + room)
            }
            .with_store_level(Some(CaptureLevel::Redacted));
            prop_assert!(c.body_for_store(None, text.len()));
            let plain = plain_keys_only(&body);
            for format in WireFormat::ALL {
                let Some(kept) = c.request_body(format, text.as_bytes()) else {
                    // Tools, a tool's input, an object as content: captured from the tree.
                    prop_assert!(!plain, "a plain chat not kept as it came: {}", text);
                    continue;
                };
                prop_assert!(plain, "kept as it came: {}", text);
                let kept = kept.request_body.unwrap();
                prop_assert!(!kept.contains("jane@") && !kept.contains("SECRET-4"), "{}", kept);
                let mut read = expand_request_body(&kept).unwrap();
                let mut captured = c.request(CaptureLevel::Redacted, format, &tree);
                // Tool names, as the request named them, are for the export's `metadata`:
                // the store keeps the definitions.
                read.tool_names.clear();
                captured.tool_names.clear();
                prop_assert_eq!(read, captured, "{:?}", format);
            }
        }
    }

    #[test]
    fn a_body_kept_for_the_store_has_every_string_value_redacted_escaped_or_not() {
        let c = capturer(CaptureLevel::Redacted, 1000);
        let body = r#"{"user": "jane@example.com", "messages": [{"role": "user", "content": "mail jane\u0040example.com \"now\""}]}"#;
        let kept = c
            .request_body(WireFormat::ChatCompletions, body.as_bytes())
            .unwrap();
        let kept = kept.request_body.unwrap();
        assert_eq!(
            kept,
            r#"chat_completions 1000
{"user": "[EMAIL]", "messages": [{"role": "user", "content": "mail [EMAIL] \"now\""}]}"#
        );
        let read = expand_request_body(&kept).unwrap();
        assert_eq!(
            read.input_messages.unwrap(),
            r#"[{"parts":[{"content":"mail [EMAIL] \"now\"","type":"text"}],"role":"user"}]"#
        );
        assert_eq!(read.input_message_count, Some(1));
        // The top-level model is the span's `gen_ai.request.model` (not redacted); a `model`
        // anywhere else, or after a model that is not a string, is text like any other.
        let body = r#"{"model": "jane@example.com", "messages": [{"model": "jane@example.com", "content": ["jane@example.com"]}], "input": {"model": ["jane@example.com"]}}"#;
        let kept = c
            .request_body(WireFormat::ChatCompletions, body.as_bytes())
            .unwrap();
        assert_eq!(
            kept.request_body.unwrap(),
            r#"chat_completions 1000
{"model": "jane@example.com", "messages": [{"model": "[EMAIL]", "content": ["[EMAIL]"]}], "input": {"model": ["[EMAIL]"]}}"#
        );
        let body =
            r#"{"model": null, "messages": ["jane@example.com"], "model":["jane@example.com"]}"#;
        let kept = c
            .request_body(WireFormat::ChatCompletions, body.as_bytes())
            .unwrap();
        assert!(!kept.request_body.unwrap().contains("jane"));
        // A number a format reads as text is redacted too, and read back as the capture from
        // the tree reads it; top-level settings are left as they are.
        for body in [
            r#"{"model":"m","temperature":0.2,"messages":[{"role":"user","content":4111111111111111}]}"#,
            r#"{"model":"m","input":[4111111111111111, "jane@example.com"]}"#,
        ] {
            for format in [WireFormat::ChatCompletions, WireFormat::Embeddings] {
                let kept = c.request_body(format, body.as_bytes()).unwrap();
                let kept = kept.request_body.unwrap();
                assert!(
                    !kept.contains("4111111111111111") && !kept.contains("jane"),
                    "{kept}"
                );
                assert!(kept.contains(r#""temperature":0.2"#) || !body.contains("temperature"));
                let read = expand_request_body(&kept).unwrap();
                let tree: Json = serde_json::from_str(body).unwrap();
                let captured = c.request(CaptureLevel::Redacted, format, &tree);
                assert_eq!(read.input_messages, captured.input_messages, "{body}");
            }
        }
        // Not UTF-8: no tree could be read from it either.
        assert!(
            c.request_body(WireFormat::ChatCompletions, b"{\"a\": \"\xff\"}")
                .is_none()
        );
        // A body the store cannot read back.
        for damaged in [
            "",
            "chat_completions 1000",
            "nope 10\n{}",
            "messages x\n{}",
            "messages 10\n{",
        ] {
            assert!(expand_request_body(damaged).is_none(), "{damaged}");
        }
    }

    /// Only a plain chat is kept as it came. Any other key may hold what the GenAI conversion
    /// leaves out (an image's data or signed URL, a file, audio, an MCP server's token, tools
    /// kept as definitions); a number the conversion writes otherwise than the body
    /// (`4111111111111111e0` as `4111111111111111.0`); messages that may not fit (the capture
    /// from the tree takes the first and latest of those). Each is captured from its tree.
    #[test]
    fn a_body_that_is_not_a_plain_chat_is_captured_from_its_tree() {
        let c = capturer(CaptureLevel::Redacted, 16 * 1024);
        for body in [
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x.test/a.png?sig=abc"}}]}]}"#,
            r#"{"contents":[{"parts":[{"inlineData":{"mimeType":"image/png","data":"QUFB"}}]}]}"#,
            r#"{"messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","data":"QUFB"}}]}]}"#,
            r#"{"input":[{"role":"user","content":[{"type":"input_file","file_url":"https://b.test/a.pdf?X-Amz-Signature=abc"}]}]}"#,
            r#"{"messages":[{"role":"user","content":"hi"}],"mcp_servers":[{"url":"https://m.test","authorization_token":"tok"}]}"#,
            r#"{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}"#,
            r#"{"messages":[{"role":"user","content":{"jane@example.com":1}}]}"#,
            r#"{"messages":[{"role":"user","content":4111111111111111e0}]}"#,
            r#"{"messages":[{"role":"user","content":[1.5]}]}"#,
            r#"{"messages":[{"role":"user","content":[41111111111111111111]}]}"#,
        ] {
            assert!(
                c.request_body(WireFormat::ChatCompletions, body.as_bytes())
                    .is_none(),
                "{body}"
            );
        }
        // 2,000 token ids to embed: 4 kB of body, 18 kB of messages.
        let ids = vec!["1"; 2000].join(",");
        let body = format!(r#"{{"model":"e","input":[{ids}]}}"#);
        assert!(body.len() < 16 * 1024);
        assert!(
            c.request_body(WireFormat::Embeddings, body.as_bytes())
                .is_none()
        );
        let fits = r#"{"model":"e","input":[1,2,3]}"#;
        assert!(
            c.request_body(WireFormat::Embeddings, fits.as_bytes())
                .is_some()
        );
        let chat = r#"{"model":"m","temperature":0.2,"max_tokens":9,"stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"hi"}]},{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c1","content":"ok"}]}"#;
        assert!(
            c.request_body(WireFormat::ChatCompletions, chat.as_bytes())
                .is_some()
        );
    }

    /// Numbers and keys in what the capture from a tree keeps whole (a tool call's input, an
    /// object as a message's content) are redacted like its strings.
    #[test]
    fn numbers_and_keys_in_a_tool_s_input_are_redacted() {
        let c = capturer(CaptureLevel::Redacted, 16 * 1024);
        let body = r#"{"messages":[{"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"pay","input":{"card":4111111111111111,"jane@example.com":{"n":42}}}]}]}"#;
        let tree: Json = serde_json::from_str(body).unwrap();
        let captured = c.request(CaptureLevel::Redacted, WireFormat::Messages, &tree);
        let input = captured.input_messages.unwrap();
        assert!(
            input.contains(r#""card":"[CARD]""#) && input.contains(r#""[EMAIL]":{"n":42}"#),
            "{input}"
        );
        // At `full`, as it came.
        let full = capturer(CaptureLevel::Full, 16 * 1024).request(
            CaptureLevel::Full,
            WireFormat::Messages,
            &tree,
        );
        assert!(full.input_messages.unwrap().contains("4111111111111111"));
    }

    #[test]
    fn only_a_body_the_store_alone_keeps_redacted_and_that_fits_is_kept_as_it_came() {
        let c = |export, store| capturer(export, 100).with_store_level(store);
        let redacted = Some(CaptureLevel::Redacted);
        assert!(c(CaptureLevel::Metadata, redacted).body_for_store(None, 100));
        assert!(c(CaptureLevel::None, redacted).body_for_store(None, 100));
        assert!(!c(CaptureLevel::Metadata, redacted).body_for_store(None, 101));
        // The export keeps text too: captured from the tree, each at its level.
        assert!(!c(CaptureLevel::Redacted, redacted).body_for_store(None, 10));
        assert!(!c(CaptureLevel::Full, redacted).body_for_store(None, 10));
        assert!(!c(CaptureLevel::Metadata, Some(CaptureLevel::Full)).body_for_store(None, 10));
        assert!(!c(CaptureLevel::Metadata, None).body_for_store(None, 10));
        // The caller asked for metadata only.
        let asked = Some(CaptureLevel::Metadata);
        assert!(!c(CaptureLevel::Metadata, redacted).body_for_store(asked, 10));
    }

    #[test]
    fn a_body_kept_as_it_came_has_its_keys_redacted_only_by_the_user_s_own_patterns() {
        let body = r#"{"messages":[{"role":"user","content":"hi"}],"temperature":0.2}"#;
        let kept = |c: &Capturer| {
            c.request_body(WireFormat::ChatCompletions, body.as_bytes())
                .unwrap()
                .request_body
                .unwrap()
        };
        let built_in = kept(&capturer(CaptureLevel::Redacted, 1000));
        assert_eq!(built_in, format!("chat_completions 1000\n{body}"));
        let own = Capturer {
            redactor: Redactor::new(&[("word".into(), "^role$".into())]).unwrap(),
            ..capturer(CaptureLevel::Redacted, 1000)
        };
        let kept = kept(&own);
        assert!(kept.contains(r#"[{"[WORD]":"user","content""#), "{kept}");
    }

    /// The body kept as it came keeps its keys as they are: none of them holds anything a
    /// built-in pattern finds.
    #[test]
    fn no_built_in_pattern_finds_anything_in_a_plain_chat_s_keys() {
        let r = Redactor::new(&[]).unwrap();
        for key in request::PLAIN_KEYS {
            assert!(matches!(r.redact(key), Cow::Borrowed(_)), "{key}");
            assert!(request::is_plain_key(key), "{key}");
        }
        for other in ["tools", "image_url", "", "Content", "contents ", "metadata"] {
            assert!(!request::is_plain_key(other), "{other}");
        }
    }
}
