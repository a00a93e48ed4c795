//! Request inspection: on routes whose wire format the gateway reads, the JSON request body is
//! read (it is small, and bounded by the body limit) to learn the model, the stream flag and the
//! generation parameters, and `stream_options.include_usage` is added to OpenAI-style streams
//! that lack it. Other routes (uploads, files) keep streaming untouched. The bytes held at once
//! over all calls are bounded (`max_buffered_request_bytes`): past it a call gets 503.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, Response, header};
use http_body_util::BodyExt;
use serde::Deserialize;
use tower::{Layer, Service};

use super::{
    body::{Holding, ProxyBody, RequestBody},
    record::CallSlot,
};
use crate::{
    call::{RequestInfo, RequestParams},
    error::ProxyError,
    metrics::Metrics,
    provider::{Route, WireFormat},
    trace::{
        capture::Capturer,
        metadata::{CallMetadata, CaptureLevel, percent_decode},
    },
};

/// The request bytes all inspected calls may hold in memory at once.
pub struct RequestBuffers {
    max: u64,
    used: AtomicU64,
    metrics: Arc<Metrics>,
}

impl RequestBuffers {
    pub fn new(max: u64, metrics: Arc<Metrics>) -> Arc<RequestBuffers> {
        Arc::new(RequestBuffers {
            max,
            used: AtomicU64::new(0),
            metrics,
        })
    }

    fn hold(self: &Arc<Self>) -> Held {
        Held {
            buffers: self.clone(),
            bytes: 0,
        }
    }
}

/// Bytes one call holds; given back when it is dropped (once the body has been sent upstream).
struct Held {
    buffers: Arc<RequestBuffers>,
    bytes: u64,
}

impl Held {
    /// Holds `total` bytes in all, or refuses (and counts the refusal) when that would pass the
    /// limit.
    fn grow_to(&mut self, total: u64) -> Result<(), ProxyError> {
        let Some(more) = total.checked_sub(self.bytes).filter(|&n| n > 0) else {
            return Ok(());
        };
        let b = &self.buffers;
        b.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(more).filter(|&n| n <= b.max)
            })
            .map_err(|_| {
                b.metrics.rejected("buffer_full");
                ProxyError::BufferFull { limit: b.max }
            })?;
        b.metrics.request_buffered_bytes.inc_by(more as i64);
        self.bytes = total;
        Ok(())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.buffers.used.fetch_sub(self.bytes, Ordering::AcqRel);
        self.buffers
            .metrics
            .request_buffered_bytes
            .dec_by(self.bytes as i64);
    }
}

#[derive(Clone)]
pub struct InspectLayer {
    inject_include_usage: bool,
    capturer: Arc<Capturer>,
    buffers: Arc<RequestBuffers>,
}

impl InspectLayer {
    pub fn new(
        inject_include_usage: bool,
        capturer: Arc<Capturer>,
        buffers: Arc<RequestBuffers>,
    ) -> Self {
        InspectLayer {
            inject_include_usage,
            capturer,
            buffers,
        }
    }
}

impl<S> Layer<S> for InspectLayer {
    type Service = Inspect<S>;
    fn layer(&self, inner: S) -> Inspect<S> {
        Inspect {
            inner,
            inject_include_usage: self.inject_include_usage,
            capturer: self.capturer.clone(),
            buffers: self.buffers.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Inspect<S> {
    inner: S,
    inject_include_usage: bool,
    capturer: Arc<Capturer>,
    buffers: Arc<RequestBuffers>,
}

impl<S> Service<Request<RequestBody>> for Inspect<S>
where
    S: Service<Request<RequestBody>, Response = Response<ProxyBody>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = super::BoxFuture<Result<Response<ProxyBody>, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        let Some(route) = req.extensions().get::<Route>().cloned() else {
            return Box::pin(self.inner.call(req));
        };
        if route.format == WireFormat::Passthrough {
            return Box::pin(self.inner.call(req));
        }
        let inject = self.inject_include_usage && route.provider.stream_usage_injection;
        let capturer = self.capturer.clone();
        let held = self.buffers.hold();
        // The service was polled ready; hand that instance to the future and keep a fresh clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let (bytes, held) = read_whole(body, &parts.headers, held).await?;
            let path = parts.uri.path().to_string();
            let (info, rewritten, fields) = inspect(&route, &path, &bytes, inject);
            let mut content = None;
            if let Some(metadata) = parts.extensions.get_mut::<CallMetadata>() {
                if let Some(f) = &fields {
                    metadata.add_body_fields(f.user.as_deref(), &f.metadata_pairs());
                }
                let level = capturer.capture_level(metadata.capture);
                content = match (level, &fields) {
                    (CaptureLevel::None, _) | (_, None) => None,
                    // Counts and tool names come from the typed parse already done.
                    (CaptureLevel::Metadata, Some(f)) => {
                        Some(capturer.metadata(f.input_message_count(), f.tool_names()))
                    }
                    (_, Some(_)) => Some(
                        serde_json::from_slice::<serde_json::Value>(&bytes)
                            .map(|body| capturer.request(level, route.format, &body))
                            .unwrap_or_default(),
                    ),
                };
            }
            let body = match rewritten {
                Some(new_body) => {
                    parts
                        .headers
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(new_body.len()));
                    new_body
                }
                None => bytes,
            };
            // The side parser reads the response, so ask for it uncompressed; the client still
            // gets exactly what the upstream sends.
            parts.headers.remove(header::ACCEPT_ENCODING);
            // For the call's record; the metadata stays in the extensions for the budgets.
            if let Some(slot) = parts.extensions.get::<CallSlot>() {
                let metadata = parts.extensions.get::<CallMetadata>().cloned();
                slot.fill_request(info, metadata, content);
            }
            let body: RequestBody = Holding::boxed(
                http_body_util::Full::new(body)
                    .map_err(|never| match never {})
                    .boxed_unsync(),
                held,
            );
            let request: Request<RequestBody> = Request::from_parts(parts, body);
            // Boxed here so the async block does not hold `S::Future` itself, whose `Send` the
            // compiler cannot prove across the await (rust-lang/rust#64552).
            let response: super::BoxFuture<Result<Response<ProxyBody>, ProxyError>> =
                Box::pin(inner.call(request));
            response.await
        })
    }
}

/// Reads the request body whole, holding its bytes against the gateway-wide limit as they come.
async fn read_whole(
    mut body: RequestBody,
    headers: &http::HeaderMap,
    mut held: Held,
) -> Result<(Bytes, Held), ProxyError> {
    // The body limit layer has refused a declared length over its limit already. Only bytes
    // that arrived are held: a client that declares a large body and sends nothing holds
    // (next to) nothing.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    // At most 64 KiB up front, held or not: the usual small body fits in one allocation.
    let mut buf = BytesMut::with_capacity(declared.min(64 * 1024));
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(body_error)?.into_data() {
            held.grow_to((buf.len() + data.len()) as u64)?;
            buf.extend_from_slice(&data);
        }
    }
    Ok((buf.freeze(), held))
}

fn body_error(e: super::body::BoxError) -> ProxyError {
    super::limit::refusal(&*e).unwrap_or_else(|| ProxyError::ClientBody(e.to_string()))
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

/// The request fields the gateway reads; everything else is ignored.
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
    options: Option<serde_json::Map<String, serde_json::Value>>,
    /// OpenAI's end-user id.
    user: Option<String>,
    /// OpenAI's string map; Anthropic's `{user_id}`.
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Chat, Anthropic, Ollama and Bedrock messages (only their roles are read).
    messages: Option<Vec<MessageRole>>,
    /// Gemini's messages.
    contents: Option<Vec<serde::de::IgnoredAny>>,
    /// Responses API input (a string or a list) and legacy completion prompts.
    input: Option<serde_json::Value>,
    tools: Option<Vec<ToolFields>>,
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
    /// Input messages, system instructions excluded (as the content capture counts them).
    fn input_message_count(&self) -> Option<u64> {
        if let Some(m) = &self.messages {
            let n = m
                .iter()
                .filter(|m| !matches!(m.role.as_deref(), Some("system") | Some("developer")))
                .count();
            return Some(n as u64);
        }
        if let Some(c) = &self.contents {
            return Some(c.len() as u64);
        }
        match &self.input {
            Some(serde_json::Value::Array(items)) => Some(items.len() as u64),
            Some(_) => Some(1),
            None => None,
        }
    }

    fn tool_names(&self) -> Vec<String> {
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

    fn metadata_pairs(&self) -> Vec<(String, String)> {
        self.metadata
            .iter()
            .flatten()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => (k.clone(), s.clone()),
                other => (k.clone(), other.to_string()),
            })
            .collect()
    }
}

/// Reads the request and, when asked, returns a rewritten body with include_usage added.
pub fn inspect(
    route: &Route,
    path: &str,
    body: &[u8],
    inject: bool,
) -> (RequestInfo, Option<Bytes>, Option<RequestFields>) {
    let mut info = RequestInfo {
        body_bytes: body.len() as u64,
        model: model_from_path(path),
        ..RequestInfo::default()
    };
    let fields: Option<RequestFields> = if body.is_empty() {
        None
    } else {
        serde_json::from_slice(body).ok()
    };
    if let Some(f) = &fields {
        info.parsed = true;
        if f.model.is_some() {
            info.model = f.model.clone();
        }
        let g = f.generation_config.as_ref();
        let opt_f64 = |k: &str| {
            f.options
                .as_ref()
                .and_then(|o| o.get(k))
                .and_then(|v| v.as_f64())
        };
        info.params = RequestParams {
            max_tokens: f
                .max_tokens
                .or(f.max_completion_tokens)
                .or(f.max_output_tokens)
                .or(g.and_then(|g| g.max_output_tokens))
                .or(opt_f64("num_predict").map(|v| v as u64)),
            temperature: f
                .temperature
                .or(g.and_then(|g| g.temperature))
                .or(opt_f64("temperature")),
            top_p: f.top_p.or(g.and_then(|g| g.top_p)).or(opt_f64("top_p")),
            top_k: f.top_k.or(g.and_then(|g| g.top_k)).or(opt_f64("top_k")),
            frequency_penalty: f.frequency_penalty.or(g.and_then(|g| g.frequency_penalty)),
            presence_penalty: f.presence_penalty.or(g.and_then(|g| g.presence_penalty)),
            stop_sequences: match (
                &f.stop,
                &f.stop_sequences,
                g.and_then(|g| g.stop_sequences.as_ref()),
            ) {
                (Some(Stop::One(s)), _, _) => vec![s.clone()],
                (Some(Stop::Many(v)), _, _) | (None, Some(v), _) | (None, None, Some(v)) => {
                    v.clone()
                }
                _ => Vec::new(),
            },
            seed: f
                .seed
                .as_ref()
                .or(g.and_then(|g| g.seed.as_ref()))
                .map(|n| n.to_string()),
            choice_count: f.n.or(g.and_then(|g| g.candidate_count)),
        };
        info.include_usage_requested = f
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
    }
    info.stream = match route.format {
        WireFormat::GenerateContent => path.contains(":streamGenerateContent"),
        WireFormat::ConverseStream | WireFormat::InvokeModelWithResponseStream => true,
        // Ollama's native API streams unless told not to.
        WireFormat::OllamaChat | WireFormat::OllamaGenerate => {
            fields.as_ref().and_then(|f| f.stream).unwrap_or(true)
        }
        _ => fields.as_ref().and_then(|f| f.stream).unwrap_or(false),
    };
    let mut rewritten = None;
    if inject
        && info.stream
        && !info.include_usage_requested
        && matches!(
            route.format,
            WireFormat::ChatCompletions | WireFormat::Completions
        )
    {
        rewritten = add_include_usage(
            body,
            fields.as_ref().is_some_and(|f| f.stream_options.is_some()),
        );
        info.include_usage_injected = rewritten.is_some();
    }
    (info, rewritten, fields)
}

/// Adds `"stream_options":{"include_usage":true}`. When the request has no `stream_options`, the
/// member is inserted right after the opening brace, leaving every other byte as it was.
fn add_include_usage(body: &[u8], has_stream_options: bool) -> Option<Bytes> {
    if !has_stream_options {
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
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let options = value.get_mut("stream_options")?;
    if options.is_null() {
        *options = serde_json::json!({});
    }
    options
        .as_object_mut()?
        .insert("include_usage".into(), serde_json::Value::Bool(true));
    serde_json::to_vec(&value).ok().map(Bytes::from)
}

/// The model named in the path: Gemini `models/<m>:verb`, Bedrock `/model/<m>/...`, Azure
/// `/deployments/<d>/...`.
fn model_from_path(path: &str) -> Option<String> {
    let segment_after = |marker: &str| {
        path.find(marker).map(|i| {
            let rest = &path[i + marker.len()..];
            rest.split('/').next().unwrap_or("").to_string()
        })
    };
    if let Some(m) = segment_after("/models/") {
        return Some(m.split(':').next().unwrap_or("").to_string()).filter(|m| !m.is_empty());
    }
    if let Some(m) = segment_after("/model/") {
        return Some(percent_decode(&m)).filter(|m| !m.is_empty());
    }
    segment_after("/deployments/").filter(|m| !m.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn existing_stream_options_keep_their_other_fields() {
        let body = br#"{"model":"m","stream":true,"stream_options":{"include_obfuscation":false}}"#;
        let out = add_include_usage(body, true).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["include_obfuscation"], false);
    }

    #[test]
    fn models_are_read_from_gemini_bedrock_and_azure_paths() {
        assert_eq!(
            model_from_path("/v1beta/models/gemini-2.5-flash:streamGenerateContent").as_deref(),
            Some("gemini-2.5-flash")
        );
        assert_eq!(
            model_from_path("/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream")
                .as_deref(),
            Some("anthropic.claude-3-5-sonnet-20240620-v1:0")
        );
        assert_eq!(
            model_from_path("/openai/deployments/gpt4o-prod/chat/completions").as_deref(),
            Some("gpt4o-prod")
        );
        assert_eq!(model_from_path("/v1/chat/completions"), None);
    }
}
