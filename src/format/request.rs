//! The request side of the wire APIs: what every API's JSON request shares (the typed read of
//! its fields, generation parameters, metadata, tools, the OpenTelemetry GenAI shapes of its
//! input), and the [`RequestApi`] each API implements beside its response extractor. Pure code.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{anthropic, bedrock, gemini, ollama, openai_chat, openai_responses, tree::Json};
use crate::provider::WireFormat;

/// One API's request side: what it says beyond the fields all APIs share.
pub(crate) trait RequestApi: Sync {
    /// Whether the request streams, from its path and its body's `stream` flag (`flag`).
    fn streams(&self, path: &str, flag: Option<bool>) -> bool {
        let _ = path;
        flag.unwrap_or(false)
    }

    /// The model the path names, for APIs that put it there (a `model` in the body wins).
    fn model_from_path(&self, path: &str) -> Option<String> {
        let _ = path;
        None
    }

    /// The system instructions and input messages, in the OpenTelemetry GenAI shapes.
    fn input<'a>(&self, body: &Json<'a>) -> Input<'a>;

    /// Input messages, system instructions left out, counted from the typed read.
    fn input_message_count(&self, fields: &RequestFields) -> Option<u64>;

    /// Whether a later request can continue a response of this API by naming its id
    /// (`previous_response_id`): only then is the id worth remembering.
    fn continued_by_response_id(&self) -> bool {
        false
    }

    /// The tool results the request carries (answers to tool calls an earlier response asked
    /// for), in the order they appear.
    fn tool_results(&self, body: &Value) -> Vec<ToolResult> {
        let _ = body;
        Vec::new()
    }

    /// The body asking for the stream's usage too, for APIs that have an option for it
    /// (`has_stream_options`: the body has a `stream_options` member already).
    fn ask_stream_usage(&self, body: &[u8], has_stream_options: bool) -> Option<Bytes> {
        let _ = (body, has_stream_options);
        None
    }
}

/// The request side of a wire format; `None` for the formats the gateway does not read.
fn api(format: WireFormat) -> Option<&'static dyn RequestApi> {
    Some(match format {
        WireFormat::ChatCompletions => &openai_chat::ChatRequest,
        WireFormat::Completions => &openai_chat::CompletionsRequest,
        WireFormat::Embeddings => &openai_chat::EmbeddingsRequest,
        WireFormat::Responses => &openai_responses::ResponsesRequest,
        WireFormat::Messages => &anthropic::MessagesRequest,
        WireFormat::GenerateContent => &gemini::GenerateContentRequest,
        WireFormat::OllamaChat => &ollama::OllamaChatRequest,
        WireFormat::OllamaGenerate => &ollama::OllamaGenerateRequest,
        WireFormat::Converse | WireFormat::InvokeModel => {
            &bedrock::BedrockRequest { stream_path: false }
        }
        WireFormat::ConverseStream | WireFormat::InvokeModelWithResponseStream => {
            &bedrock::BedrockRequest { stream_path: true }
        }
        WireFormat::Passthrough => return None,
    })
}

/// One tool result a request carries: the answer to a tool call an earlier response asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolResult {
    /// The id of the call it answers (`tool_call_id`, `call_id`, `tool_use_id`, `toolUseId`,
    /// Gemini's `functionResponse.id` or the synthetic `<name>#<n>`).
    pub call_id: String,
    /// The tool's name, when the API repeats it (Gemini).
    pub name: Option<String>,
    /// The result as text: a string as it is, text parts joined, anything else as JSON.
    pub content: String,
    /// The result says the tool failed (Anthropic `is_error`, Bedrock `status: error`).
    pub is_error: bool,
}

/// Keys whose presence in a body means it may carry tool results (or name a previous
/// response); a body without any is not parsed a second time.
static TOOL_RESULT_KEYS: [super::json::Needle; 6] = [
    super::json::Needle::new("\"tool_call_id\""),
    super::json::Needle::new("\"function_call_output\""),
    super::json::Needle::new("\"tool_result\""),
    super::json::Needle::new("\"functionResponse\""),
    super::json::Needle::new("\"toolResult\""),
    super::json::Needle::new("\"tool_use_id\""),
];

/// The tool results a request of `format` carries; empty for a body without any (checked by
/// a byte scan first, so most requests are not parsed again).
/// Whether a request can name a response of this wire format as the one it continues
/// (`previous_response_id`, the Responses API).
pub fn continued_by_response_id(format: WireFormat) -> bool {
    api(format).is_some_and(|api| api.continued_by_response_id())
}

pub fn tool_results(format: WireFormat, body: &[u8]) -> Vec<ToolResult> {
    let Some(api) = api(format) else {
        return Vec::new();
    };
    if !TOOL_RESULT_KEYS.iter().any(|k| k.any(body, |_| true)) {
        return Vec::new();
    }
    match super::json::from_bytes::<Value>(body) {
        Ok(v) => api.tool_results(&v),
        Err(_) => Vec::new(),
    }
}

/// The most of a tool result's text kept from a request: the span keeps at most 64 KiB of it
/// (`call/tools.rs`); the margin lets redaction see a secret that straddles that cut.
pub const MAX_RESULT_BYTES: usize = 64 * 1024 + 256;

/// A tool result's content as text, at most [`MAX_RESULT_BYTES`]: a string as it is, a list of
/// parts with `text` joined by newlines (other parts as JSON), anything else as JSON text.
pub(crate) fn result_text(v: &Value) -> String {
    let mut text = match v {
        Value::Null => String::new(),
        Value::String(s) => s[..s.floor_char_boundary(MAX_RESULT_BYTES)].to_owned(),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p.get("text").and_then(Value::as_str) {
                Some(t) => t[..t.floor_char_boundary(MAX_RESULT_BYTES)].to_owned(),
                None => match p.get("json") {
                    Some(j) => j.to_string(),
                    None => p.to_string(),
                },
            })
            .collect::<Vec<_>>()
            .join("\n"),
        other => other.to_string(),
    };
    text.truncate(text.floor_char_boundary(MAX_RESULT_BYTES));
    text
}

/// What a request says, read by its API's rules from its path and JSON body.
pub struct Request {
    /// The body's `model`, else the one the path names.
    pub model: Option<String>,
    pub stream: bool,
    /// The client asked for `stream_options.include_usage` itself.
    pub include_usage_requested: bool,
    pub params: RequestParams,
    /// `None` when the body is empty, not JSON, or a field has an unexpected type.
    pub fields: Option<RequestFields>,
    api: &'static dyn RequestApi,
}

impl Request {
    /// Reads a request of `format`; `None` for a format the gateway does not read.
    pub fn read(format: WireFormat, path: &str, body: &[u8]) -> Option<Request> {
        let fields = if body.is_empty() {
            None
        } else {
            super::json::from_bytes(body).ok()
        };
        Request::of_fields(format, path, fields)
    }

    /// [`Request::read`] of a body already read into a tree (to capture its content).
    pub fn read_tree(format: WireFormat, path: &str, body: &Json<'_>) -> Option<Request> {
        Request::of_fields(format, path, RequestFields::deserialize(body).ok())
    }

    fn of_fields(
        format: WireFormat,
        path: &str,
        mut fields: Option<RequestFields>,
    ) -> Option<Request> {
        let api = api(format)?;
        if let Some(f) = &mut fields {
            f.input_message_count = api.input_message_count(f);
        }
        let f = fields.as_ref();
        let model = f
            .and_then(|f| f.model.clone())
            .or_else(|| api.model_from_path(path));
        let stream = api.streams(path, f.and_then(|f| f.stream));
        let include_usage_requested = f
            .and_then(|f| f.stream_options.as_ref())
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        let params = f.map(RequestFields::params).unwrap_or_default();
        Some(Request {
            model,
            stream,
            include_usage_requested,
            params,
            fields,
            api,
        })
    }

    /// The body with `stream_options.include_usage` added, when the API has that option and the
    /// request streams without asking for it; `None` leaves the body as it is.
    pub fn with_stream_usage(&self, body: &[u8]) -> Option<Bytes> {
        if !self.stream || self.include_usage_requested {
            return None;
        }
        let has_stream_options = self
            .fields
            .as_ref()
            .is_some_and(|f| f.stream_options.is_some());
        self.api.ask_stream_usage(body, has_stream_options)
    }
}

/// Generation parameters read from the request body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestParams {
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub stop_sequences: Vec<String>,
    /// Kept as text: seeds can exceed 2^53.
    pub seed: Option<String>,
    pub choice_count: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct GeminiGeneration {
    max_output_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<f64>,
    stop_sequences: Option<Vec<String>>,
    seed: Option<serde_json::Number>,
    candidate_count: Option<u64>,
    frequency_penalty: Option<f64>,
    presence_penalty: Option<f64>,
}

/// The request fields the gateway reads, of every API at once (a field of the wrong type makes
/// the whole read fail, whichever API it belongs to); everything else is ignored.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct RequestFields {
    model: Option<String>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    max_output_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<f64>,
    frequency_penalty: Option<f64>,
    presence_penalty: Option<f64>,
    stop: Option<Stop>,
    stop_sequences: Option<Vec<String>>,
    seed: Option<serde_json::Number>,
    n: Option<u64>,
    #[serde(rename = "generationConfig")]
    generation_config: Option<GeminiGeneration>,
    /// Ollama native puts parameters here.
    options: Option<serde_json::Map<String, Value>>,
    /// OpenAI's end-user id.
    pub user: Option<String>,
    /// OpenAI's string map; Anthropic's `{user_id}`.
    metadata: Option<serde_json::Map<String, Value>>,
    /// Chat, Anthropic, Ollama and Bedrock messages (only their roles are read).
    messages: Option<Vec<MessageRole>>,
    /// Gemini's messages.
    contents: Option<Vec<serde::de::IgnoredAny>>,
    /// Responses API input (a string or a list) and embeddings input.
    input: Option<Value>,
    tools: Option<Vec<ToolFields>>,
    /// Responses API: the response this one continues.
    pub previous_response_id: Option<String>,
    /// Counted by the request's API once the fields are read.
    #[serde(skip)]
    input_message_count: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct MessageRole {
    role: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct FunctionName {
    name: Option<String>,
}

/// OpenAI `{function: {name}}`, Anthropic `{name}` and Gemini `{functionDeclarations: [...]}`.
#[derive(Deserialize, Default)]
#[serde(default)]
struct ToolFields {
    name: Option<String>,
    function: Option<FunctionName>,
    #[serde(rename = "functionDeclarations")]
    function_declarations: Option<Vec<FunctionName>>,
}

impl RequestFields {
    /// Input messages, system instructions left out, as the request's API counts them (and as
    /// the content capture does).
    pub fn input_message_count(&self) -> Option<u64> {
        self.input_message_count
    }

    /// `messages`, those with a `system` or `developer` role left out.
    pub(crate) fn count_messages(&self) -> Option<u64> {
        let m = self.messages.as_ref()?;
        let n = m
            .iter()
            .filter(|m| !matches!(m.role.as_deref(), Some("system") | Some("developer")))
            .count();
        Some(n as u64)
    }

    /// Gemini's `contents`.
    pub(crate) fn count_contents(&self) -> Option<u64> {
        self.contents.as_ref().map(|c| c.len() as u64)
    }

    /// `input`: the items of a list, or one.
    pub(crate) fn count_input(&self) -> Option<u64> {
        match self.input.as_ref()? {
            Value::Array(items) => Some(items.len() as u64),
            _ => Some(1),
        }
    }

    /// The names of the tools offered to the model.
    pub fn tool_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for t in self.tools.iter().flatten() {
            if let Some(n) = t
                .function
                .as_ref()
                .and_then(|f| f.name.clone())
                .or_else(|| t.name.clone())
            {
                names.push(n);
            }
            for d in t.function_declarations.iter().flatten() {
                names.extend(d.name.clone());
            }
        }
        names
    }

    /// The body's `metadata` map, values that are not strings as JSON text.
    pub fn metadata_pairs(&self) -> Vec<(String, String)> {
        self.metadata
            .iter()
            .flatten()
            .map(|(k, v)| match v {
                Value::String(s) => (k.clone(), s.clone()),
                other => (k.clone(), other.to_string()),
            })
            .collect()
    }

    /// Generation parameters, wherever the API puts them: top level, Gemini's
    /// `generationConfig` or Ollama's `options`.
    fn params(&self) -> RequestParams {
        let g = self.generation_config.as_ref();
        let opt_f64 = |k: &str| {
            self.options
                .as_ref()
                .and_then(|o| o.get(k))
                .and_then(|v| v.as_f64())
        };
        RequestParams {
            max_tokens: self
                .max_tokens
                .or(self.max_completion_tokens)
                .or(self.max_output_tokens)
                .or(g.and_then(|g| g.max_output_tokens))
                .or(opt_f64("num_predict").map(|v| v as u64)),
            temperature: self
                .temperature
                .or(g.and_then(|g| g.temperature))
                .or(opt_f64("temperature")),
            top_p: self.top_p.or(g.and_then(|g| g.top_p)).or(opt_f64("top_p")),
            top_k: self.top_k.or(g.and_then(|g| g.top_k)).or(opt_f64("top_k")),
            frequency_penalty: self
                .frequency_penalty
                .or(g.and_then(|g| g.frequency_penalty)),
            presence_penalty: self.presence_penalty.or(g.and_then(|g| g.presence_penalty)),
            stop_sequences: match (
                &self.stop,
                &self.stop_sequences,
                g.and_then(|g| g.stop_sequences.as_ref()),
            ) {
                (Some(Stop::One(s)), _, _) => vec![s.clone()],
                (Some(Stop::Many(v)), _, _) | (None, Some(v), _) | (None, None, Some(v)) => {
                    v.clone()
                }
                _ => Vec::new(),
            },
            seed: self
                .seed
                .as_ref()
                .or(g.and_then(|g| g.seed.as_ref()))
                .map(|n| n.to_string()),
            choice_count: self.n.or(g.and_then(|g| g.candidate_count)),
        }
    }
}

/// The path segment right after `marker` (`/deployments/`), possibly empty.
pub(crate) fn path_segment_after<'p>(path: &'p str, marker: &str) -> Option<&'p str> {
    let i = path.find(marker)?;
    path[i + marker.len()..].split('/').next()
}

/// The model of a Google-style path, `.../models/<m>:verb` (Gemini; Anthropic on Vertex AI).
pub(crate) fn model_before_verb(path: &str) -> Option<String> {
    let segment = path_segment_after(path, "/models/")?;
    Some(segment.split(':').next().unwrap_or("").to_string()).filter(|m| !m.is_empty())
}

/// A request's input in the OpenTelemetry GenAI shapes, borrowing the body's strings.
#[derive(Debug, Default)]
pub struct Input<'a> {
    /// `gen_ai.system_instructions` parts.
    pub system: Vec<Json<'a>>,
    /// `gen_ai.input.messages`: `{role, parts}` objects.
    pub messages: Vec<Json<'a>>,
}

impl<'a> Input<'a> {
    /// One user message holding `text`, when there is text (a completion prompt).
    pub(crate) fn prompt(text: &Json<'a>) -> Input<'a> {
        Input {
            system: Vec::new(),
            messages: text_of(text)
                .map(|t| message(&Json::from("user"), vec![text_part(t)]))
                .into_iter()
                .collect(),
        }
    }

    /// The shape chat completions, Anthropic, Ollama chat and Bedrock share: a top-level
    /// `system` (text or blocks) and `messages`, where `system` and `developer` roles are
    /// instructions too and `tool_calls` become tool call parts.
    pub(crate) fn chat(body: &Json<'a>) -> Input<'a> {
        let mut input = Input::default();
        match &body["system"] {
            Json::String(s) => input.system.push(text_part(s.clone())),
            system @ Json::Array(_) => input.system.extend(parts(system)),
            _ => {}
        }
        for m in body["messages"].as_array().into_iter().flatten() {
            let role = &m["role"];
            if matches!(role.as_str(), Some("system" | "developer")) {
                input.system.extend(parts(&m["content"]));
                continue;
            }
            // An OpenAI tool result: `{role: tool, tool_call_id, content}`.
            if let id @ Json::String(_) = &m["tool_call_id"] {
                let part = tool_call_response(id, &m["content"]);
                input.messages.push(message(role, vec![part]));
                continue;
            }
            let mut p = parts(&m["content"]);
            for call in m["tool_calls"].as_array().into_iter().flatten() {
                let f = &call["function"];
                p.push(tool_call(&call["id"], &f["name"], &f["arguments"]));
            }
            input.messages.push(message(role, p));
        }
        input
    }
}

/// The input of a request of `format`; empty for a format the gateway does not read.
pub fn input<'a>(format: WireFormat, body: &Json<'a>) -> Input<'a> {
    api(format).map(|a| a.input(body)).unwrap_or_default()
}

/// Tools offered to the model, as `{type: function, name, description?, parameters?}`.
pub fn tool_definitions<'a>(body: &Json<'a>) -> Vec<Json<'a>> {
    let mut out = Vec::new();
    for t in body["tools"].as_array().into_iter().flatten() {
        if let Some(f) = t.get("function") {
            out.push(function(f, &f["parameters"]));
        } else if let Some(decls) = t.get("functionDeclarations").and_then(Json::as_array) {
            out.extend(decls.iter().map(|d| function(d, &d["parameters"])));
        } else if t.get("name").is_some() {
            let parameters = t.get("input_schema").or(t.get("parameters"));
            out.push(function(t, parameters.unwrap_or(&Json::Null)));
        }
    }
    out
}

/// The text of a string value, as the tree holds it (borrowed from the body or not).
pub(crate) fn text_of<'a>(v: &Json<'a>) -> Option<Cow<'a, str>> {
    match v {
        Json::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// A text part.
pub(crate) fn text_part<'a>(s: impl Into<Cow<'a, str>>) -> Json<'a> {
    Json::Object(vec![
        ("content".into(), Json::String(s.into())),
        ("type".into(), "text".into()),
    ])
}

/// A role that is not a string reads as `user`.
fn role<'a>(role: &Json<'a>) -> Json<'a> {
    match role {
        Json::String(_) => role.clone(),
        _ => "user".into(),
    }
}

/// A message in the GenAI shape: its role (`user` when not a string) and its parts.
pub(crate) fn message<'a>(r: &Json<'a>, parts: Vec<Json<'a>>) -> Json<'a> {
    Json::Object(vec![
        ("parts".into(), Json::Array(parts)),
        ("role".into(), role(r)),
    ])
}

/// A tool call part of a message.
fn tool_call<'a>(id: &Json<'a>, name: &Json<'a>, arguments: &Json<'a>) -> Json<'a> {
    Json::Object(vec![
        ("arguments".into(), arguments.clone()),
        ("id".into(), id.clone()),
        ("name".into(), name.clone()),
        ("type".into(), "tool_call".into()),
    ])
}

/// A tool result part of a message: the response to the call `id`.
fn tool_call_response<'a>(id: &Json<'a>, response: &Json<'a>) -> Json<'a> {
    Json::Object(vec![
        ("id".into(), id.clone()),
        ("response".into(), response.clone()),
        ("type".into(), "tool_call_response".into()),
    ])
}

/// A function tool definition from an object with `name` and `description`.
fn function<'a>(f: &Json<'a>, parameters: &Json<'a>) -> Json<'a> {
    Json::Object(vec![
        ("description".into(), f["description"].clone()),
        ("name".into(), f["name"].clone()),
        ("parameters".into(), parameters.clone()),
        ("type".into(), "function".into()),
    ])
}

/// [`PLAIN_KEYS`] and [`is_plain_key`] from one list.
macro_rules! plain_keys {
    ($(#[$doc:meta])* $($key:literal),* $(,)?) => {
        $(#[$doc])*
        pub const PLAIN_KEYS: &[&str] = &[$($key),*];

        /// Whether `key` is one of [`PLAIN_KEYS`]: a `match`, which the compiler makes a test
        /// of the length and a comparison or two, not one for each key.
        pub fn is_plain_key(key: &str) -> bool {
            matches!(key, $($key)|*)
        }
    };
}

plain_keys! {
    /// The keys of a plain chat request, in any of the APIs: its messages and their text, tool
    /// calls and results as they are exchanged, and the sampling settings. The GenAI
    /// conversion reads every string under them ([`parts`], [`Input::chat`], each format's
    /// `input`) or none that is content. A body with any other key (tools and their schemas,
    /// images, files, audio, MCP servers and their credentials, metadata, a field an API adds)
    /// holds something the conversion may leave out, so it is not kept as it came (see
    /// `Capturer::request_body`). No built-in redaction pattern finds anything in one of them
    /// (a test checks).
    // The messages and their parts.
    "messages",
    "role",
    "content",
    "type",
    "text",
    "name",
    "system",
    "instructions",
    "prompt",
    "input",
    "contents",
    "parts",
    "systemInstruction",
    "system_instruction",
    // Tool calls and results in the conversation.
    "tool_calls",
    "tool_call_id",
    "id",
    "function",
    "arguments",
    // Settings.
    "model",
    "stream",
    "stream_options",
    "include_usage",
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "n",
    "seed",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "user",
}

/// Converts one provider content value (string, or list of typed blocks) to OTel parts.
pub(crate) fn parts<'a>(content: &Json<'a>) -> Vec<Json<'a>> {
    match content {
        Json::String(s) => vec![text_part(s.clone())],
        Json::Array(blocks) => blocks
            .iter()
            .map(|b| match b["type"].as_str() {
                Some("text") | Some("input_text") | Some("output_text") => {
                    text_part(text_of(&b["text"]).unwrap_or_default())
                }
                Some("tool_use") => tool_call(&b["id"], &b["name"], &b["input"]),
                Some("tool_result") => tool_call_response(&b["tool_use_id"], &b["content"]),
                Some("image_url") | Some("image") | Some("input_image") => Json::Object(vec![
                    ("modality".into(), "image".into()),
                    ("type".into(), "uri".into()),
                    ("uri".into(), "[image]".into()),
                ]),
                _ if b.get("text").is_some() => text_part(text_of(&b["text"]).unwrap_or_default()),
                Some(_) => Json::Object(vec![("type".into(), b["type"].clone())]),
                None => Json::Object(vec![("type".into(), "unknown".into())]),
            })
            .collect(),
        Json::Null => Vec::new(),
        other => vec![text_part(other.to_json())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_chat_tool_result_is_a_tool_call_response_with_its_call_id() {
        let body = serde_json::json!({"messages": [
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        ]});
        let body = body.to_string();
        let input = Input::chat(&serde_json::from_str(&body).unwrap());
        let messages = serde_json::to_value(&input.messages).unwrap();
        assert_eq!(messages[0]["parts"][0]["id"], "call_1");
        assert_eq!(
            messages[1],
            serde_json::json!({"role": "tool", "parts": [
                {"type": "tool_call_response", "id": "call_1", "response": "18C"}]})
        );
    }

    #[test]
    fn generation_parameters_are_read_wherever_the_api_puts_them() {
        let read = |format, body: &str| Request::read(format, "/", body.as_bytes()).unwrap();
        let chat = read(
            WireFormat::ChatCompletions,
            r#"{"max_completion_tokens":9,"temperature":0.5,"stop":"x","seed":12345678901234567890,"n":2}"#,
        );
        assert_eq!(chat.params.max_tokens, Some(9));
        assert_eq!(chat.params.temperature, Some(0.5));
        assert_eq!(chat.params.stop_sequences, ["x"]);
        assert_eq!(chat.params.seed.as_deref(), Some("12345678901234567890"));
        assert_eq!(chat.params.choice_count, Some(2));
        let gemini = read(
            WireFormat::GenerateContent,
            r#"{"generationConfig":{"maxOutputTokens":7,"topK":3,"stopSequences":["a","b"],"candidateCount":1}}"#,
        );
        assert_eq!(gemini.params.max_tokens, Some(7));
        assert_eq!(gemini.params.top_k, Some(3.0));
        assert_eq!(gemini.params.stop_sequences, ["a", "b"]);
        assert_eq!(gemini.params.choice_count, Some(1));
        let ollama = read(
            WireFormat::OllamaChat,
            r#"{"options":{"num_predict":5,"temperature":0.1}}"#,
        );
        assert_eq!(ollama.params.max_tokens, Some(5));
        assert_eq!(ollama.params.temperature, Some(0.1));
    }

    #[test]
    fn a_field_of_the_wrong_type_leaves_the_request_unread_but_its_path_still_counts() {
        let r = Request::read(
            WireFormat::ConverseStream,
            "/model/m/converse-stream",
            br#"{"messages":"not a list"}"#,
        )
        .unwrap();
        assert!(r.fields.is_none());
        assert!(r.stream);
        assert_eq!(r.model.as_deref(), Some("m"));
        assert!(Request::read(WireFormat::Passthrough, "/", b"{}").is_none());
    }

    #[test]
    fn tool_names_and_metadata_are_read_from_every_api_shape() {
        let r = Request::read(
            WireFormat::ChatCompletions,
            "/",
            br#"{"tools":[{"function":{"name":"a"}},{"name":"b"},{"functionDeclarations":[{"name":"c"}]}],
                "metadata":{"k":"v","n":1}}"#,
        )
        .unwrap();
        let f = r.fields.unwrap();
        assert_eq!(f.tool_names(), ["a", "b", "c"]);
        assert_eq!(
            f.metadata_pairs(),
            [("k".into(), "v".into()), ("n".into(), "1".into())]
        );
    }

    #[test]
    fn tool_results_are_read_from_every_api_shape() {
        let read = |format, body: Value| {
            let r = tool_results(format, body.to_string().as_bytes());
            r.into_iter()
                .map(|r| (r.call_id, r.content, r.is_error))
                .collect::<Vec<_>>()
        };
        let owned = |v: &[(&str, &str, bool)]| {
            v.iter()
                .map(|(i, c, e)| (i.to_string(), c.to_string(), *e))
                .collect::<Vec<_>>()
        };
        let chat = json!({"messages": [
            {"role": "user", "content": "hi"},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]});
        assert_eq!(
            read(WireFormat::ChatCompletions, chat),
            owned(&[("call_1", "18C", false), ("call_2", "a\nb", false)])
        );
        let responses = json!({"previous_response_id": "resp_1", "input": [
            {"type": "function_call_output", "call_id": "call_9", "output": "{\"ok\":true}"}]});
        assert_eq!(
            read(WireFormat::Responses, responses),
            owned(&[("call_9", "{\"ok\":true}", false)])
        );
        let anthropic = json!({"messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "fine"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "boom"}], "is_error": true}]}]});
        assert_eq!(
            read(WireFormat::Messages, anthropic.clone()),
            owned(&[("toolu_1", "fine", false), ("toolu_2", "boom", true)])
        );
        // Anthropic bodies through Bedrock InvokeModel read the same.
        assert_eq!(read(WireFormat::InvokeModel, anthropic).len(), 2);
        let converse = json!({"messages": [{"role": "user", "content": [
            {"toolResult": {"toolUseId": "tooluse_1", "content": [{"json": {"n": 1}}]}},
            {"toolResult": {"toolUseId": "tooluse_2", "content": [{"text": "denied"}], "status": "error"}}]}]});
        assert_eq!(
            read(WireFormat::Converse, converse),
            owned(&[
                ("tooluse_1", "{\"n\":1}", false),
                ("tooluse_2", "denied", true)
            ])
        );
        let gemini = json!({"contents": [{"role": "user", "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"t": 18}}},
            {"functionResponse": {"name": "get_weather", "response": {"t": 9}}},
            {"functionResponse": {"id": "fc_7", "name": "lookup", "response": {"error": "no such sku"}}}]}]});
        assert_eq!(
            read(WireFormat::GenerateContent, gemini),
            owned(&[
                ("get_weather#0", "{\"t\":18}", false),
                ("get_weather#1", "{\"t\":9}", false),
                ("fc_7", "{\"error\":\"no such sku\"}", true),
            ])
        );
        // Only the last turn's answers: earlier ones are history with the same synthetic ids.
        let history = json!({"contents": [
            {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"t": 1}}}]},
            {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"t": 2}}}]}]});
        assert_eq!(
            read(WireFormat::GenerateContent, history),
            owned(&[("get_weather#0", "{\"t\":2}", false)])
        );
        // A body without any tool result is not parsed again.
        assert!(tool_results(WireFormat::ChatCompletions, b"{\"messages\":[]}").is_empty());
        assert!(tool_results(WireFormat::Passthrough, b"{\"tool_call_id\":1}").is_empty());
    }
}
