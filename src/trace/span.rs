//! The span record: one per call, kind CLIENT, with the OpenTelemetry GenAI v1.41 attributes
//! and sidetrace's analytics attributes. This is the one format the exporter, the spool and the
//! local store use. Resource and scope are per process (`Telemetry`), not per span.

use std::{sync::Arc, time::UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{
    call::{CallRecord, Outcome},
    provider::WireFormat,
    trace::{
        capture::{self, CapturedContent},
        metadata::{CaptureLevel, percent_decode},
    },
};

pub const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.41.0";

/// An attribute value. Untagged in JSON (the spool and the store), so the first variant that
/// fits decodes: a string array is a `StrList`, any other array a `List`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AttrValue {
    Bool(bool),
    Int(i64),
    /// Finite only: JSON has no NaN or infinity (a received one is kept as a `Str`).
    Double(f64),
    Str(String),
    StrList(Vec<String>),
    /// An array that is not all strings (OTLP arrays may mix types), received over OTLP.
    List(Vec<AttrValue>),
    /// An OTLP key-value list, in order.
    Map {
        kvlist: Vec<(String, AttrValue)>,
    },
    /// OTLP bytes, base64 (standard alphabet, padded).
    Bytes {
        bytes: String,
    },
}

/// An attribute key of a span: a `&'static str` for the names the gateway sets, a `String` for
/// the ones a received span or an old record brings.
pub type AttrKey = std::borrow::Cow<'static, str>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SpanStatus {
    Unset,
    Error(String),
    /// Set explicitly by the span's maker (received spans; the gateway never sets it).
    Ok,
}

/// A span event (received over OTLP; the gateway's own spans have none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanEvent {
    pub name: String,
    pub time_unix_nanos: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<(String, AttrValue)>,
}

/// A link to another span (received over OTLP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanLink {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_state: Option<String>,
    #[serde(default)]
    pub flags: u8,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<(String, AttrValue)>,
}

/// Where a span came from: its resource (service) and instrumentation scope. A span received
/// over OTLP carries its app's; `None` on a span means this gateway's own ([`Telemetry`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Origin {
    pub resource: Vec<(String, String)>,
    pub scope_name: String,
    pub scope_version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub parent_is_remote: bool,
    pub flags: u8,
    pub trace_state: Option<String>,
    pub name: String,
    /// `client` for the gateway's calls (the model runs in another process).
    pub kind: String,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub status: SpanStatus,
    /// Keys are mostly the conventions' names: borrowed, not allocated per span.
    pub attributes: Vec<(AttrKey, AttrValue)>,
    /// Events and links: received spans may have them; old spool entries have none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<SpanEvent>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<SpanLink>,
    /// The resource and scope it is exported under when not this gateway's (a span received
    /// over OTLP); it travels through the export queue and the spool with the span. The trace
    /// store keeps origins apart (its `resources` tree), so its copy has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Arc<Origin>>,
}

impl SpanRecord {
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

/// Resource attributes and instrumentation scope of this process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    pub resource: Vec<(String, String)>,
    pub scope_name: String,
    pub scope_version: String,
    pub schema_url: String,
}

impl Telemetry {
    /// From `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` (`k=v,k=v`, percent-encoded
    /// values); the service name defaults to `sidetrace`.
    pub fn from_env(
        vars: impl IntoIterator<Item = (String, String)>,
        instance_id: &str,
    ) -> Telemetry {
        let mut service_name = None;
        let mut resource: Vec<(String, String)> = Vec::new();
        for (k, v) in vars {
            match k.as_str() {
                "OTEL_SERVICE_NAME" if !v.trim().is_empty() => {
                    service_name = Some(v.trim().to_string())
                }
                "OTEL_RESOURCE_ATTRIBUTES" => {
                    for pair in v.split(',') {
                        if let Some((key, value)) = pair.split_once('=') {
                            let key = key.trim();
                            if !key.is_empty() {
                                resource.retain(|(k, _)| k != key);
                                resource.push((key.to_string(), percent_decode(value.trim())));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        // OTEL_SERVICE_NAME wins over service.name in OTEL_RESOURCE_ATTRIBUTES.
        let from_attrs = resource
            .iter()
            .find(|(k, _)| k == "service.name")
            .map(|(_, v)| v.clone());
        resource.retain(|(k, _)| k != "service.name");
        resource.insert(
            0,
            (
                "service.name".into(),
                service_name
                    .or(from_attrs)
                    .unwrap_or_else(|| "sidetrace".into()),
            ),
        );
        for (k, v) in [
            ("service.version", env!("CARGO_PKG_VERSION").to_string()),
            ("service.instance.id", instance_id.to_string()),
            ("telemetry.sdk.name", "sidetrace".to_string()),
            ("telemetry.sdk.language", "rust".to_string()),
        ] {
            if !resource.iter().any(|(key, _)| key == k) {
                resource.push((k.to_string(), v));
            }
        }
        Telemetry {
            resource,
            scope_name: "sidetrace".into(),
            scope_version: env!("CARGO_PKG_VERSION").into(),
            schema_url: SCHEMA_URL.into(),
        }
    }
}

/// `gen_ai.operation.name` for a wire format.
pub fn operation(format: WireFormat) -> &'static str {
    match format {
        WireFormat::Completions | WireFormat::OllamaGenerate => "text_completion",
        WireFormat::Embeddings => "embeddings",
        WireFormat::GenerateContent => "generate_content",
        WireFormat::Passthrough => "proxy",
        _ => "chat",
    }
}

fn nanos(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The store's own attribute for the request body it keeps in place of the request side's
/// content (`CapturedContent::request_body`); never exported, read into the GenAI attributes
/// whenever the store reads the span ([`expand_content`]), and dropped from received spans.
pub const REQUEST_BODY: &str = "sidetrace.content.request_body";

fn push_content(a: &mut Vec<(AttrKey, AttrValue)>, c: CapturedContent) {
    for (k, v) in [
        (REQUEST_BODY, c.request_body),
        ("gen_ai.input.messages", c.input_messages),
        ("gen_ai.system_instructions", c.system_instructions),
        ("gen_ai.tool.definitions", c.tool_definitions),
        ("gen_ai.output.messages", c.output_messages),
    ] {
        if let Some(v) = v {
            a.push((k.into(), AttrValue::Str(v)));
        }
    }
    if let Some(n) = c.input_message_count.and_then(|n| i64::try_from(n).ok()) {
        a.push(("sidetrace.input.message_count".into(), AttrValue::Int(n)));
    }
    if let Some(n) = c.omitted_input_messages.and_then(|n| i64::try_from(n).ok()) {
        a.push(("sidetrace.input.messages_omitted".into(), AttrValue::Int(n)));
    }
    if c.truncated {
        a.push(("sidetrace.content.truncated".into(), AttrValue::Bool(true)));
    }
}

/// Whether `key` is one of the attributes that carry a span's content (what the local store
/// replaces with its own, see [`content_attributes`]).
pub fn is_content(key: &str) -> bool {
    // A `match`: the store asks it of every attribute of every call's span.
    matches!(
        key,
        REQUEST_BODY
            | "gen_ai.input.messages"
            | "gen_ai.system_instructions"
            | "gen_ai.tool.definitions"
            | "gen_ai.output.messages"
            | "sidetrace.input.message_count"
            | "sidetrace.input.messages_omitted"
            | "sidetrace.content.truncated"
            | "sidetrace.content.level"
    )
}

/// The attributes the local store keeps in place of a span's content: `content`, and the
/// level it was kept at (`sidetrace.content.level`). The store keeps content at its own level.
pub fn content_attributes(content: CapturedContent) -> Vec<(AttrKey, AttrValue)> {
    // Room for every content attribute.
    let mut attributes = Vec::with_capacity(9);
    let level = content.level.unwrap_or(CaptureLevel::None);
    push_content(&mut attributes, content);
    attributes.push((
        "sidetrace.content.level".into(),
        AttrValue::Str(level.as_str().into()),
    ));
    attributes
}

/// A stored span's content as the store serves it: a request body kept as it came
/// ([`REQUEST_BODY`]) is read into `gen_ai.input.messages`, `gen_ai.system_instructions` and
/// `gen_ai.tool.definitions`, with the message counts, beside the output kept with it. A body
/// that cannot be read is left out (the span keeps its output).
pub fn expand_content(attributes: &mut Vec<(AttrKey, AttrValue)>) {
    let Some(at) = attributes.iter().position(|(k, _)| k == REQUEST_BODY) else {
        return;
    };
    let (_, body) = attributes.remove(at);
    let request = match &body {
        AttrValue::Str(kept) => capture::expand_request_body(kept),
        _ => None,
    };
    let Some(mut content) = request else {
        tracing::warn!("a stored span's request body cannot be read: its input is left out");
        return;
    };
    // The content attributes are written again, last (as the store wrote them), with the
    // request's beside what was kept with it.
    let mut others = Vec::with_capacity(attributes.len() + 4);
    for (k, v) in attributes.drain(..) {
        if !is_content(&k) {
            others.push((k, v));
            continue;
        }
        match (k.as_ref(), v) {
            ("gen_ai.output.messages", AttrValue::Str(s)) => content.output_messages = Some(s),
            ("sidetrace.content.truncated", AttrValue::Bool(b)) => content.truncated |= b,
            _ => {}
        }
    }
    *attributes = others;
    attributes.extend(content_attributes(content));
}

/// Builds the span of a finished call.
pub fn span_for(call: &CallRecord) -> SpanRecord {
    let mut a: Vec<(AttrKey, AttrValue)> = Vec::with_capacity(40);
    let mut s = |k: &'static str, v: &str| a.push((k.into(), AttrValue::Str(v.to_string())));
    let op = operation(call.format);
    s("gen_ai.operation.name", op);
    s("gen_ai.provider.name", &call.gen_ai_provider);
    if let Some(m) = &call.request.model {
        s("gen_ai.request.model", m);
    }
    s("server.address", &call.server_address);
    let _ = s;
    a.push((
        "server.port".into(),
        AttrValue::Int(i64::from(call.server_port)),
    ));
    let p = &call.request.params;
    let int = |a: &mut Vec<(AttrKey, AttrValue)>, k: &'static str, v: Option<u64>| {
        if let Some(v) = v.and_then(|v| i64::try_from(v).ok()) {
            a.push((k.into(), AttrValue::Int(v)));
        }
    };
    let dbl = |a: &mut Vec<(AttrKey, AttrValue)>, k: &'static str, v: Option<f64>| {
        if let Some(v) = v {
            a.push((k.into(), AttrValue::Double(v)));
        }
    };
    int(&mut a, "gen_ai.request.max_tokens", p.max_tokens);
    dbl(&mut a, "gen_ai.request.temperature", p.temperature);
    dbl(&mut a, "gen_ai.request.top_p", p.top_p);
    dbl(&mut a, "gen_ai.request.top_k", p.top_k);
    dbl(
        &mut a,
        "gen_ai.request.frequency_penalty",
        p.frequency_penalty,
    );
    dbl(
        &mut a,
        "gen_ai.request.presence_penalty",
        p.presence_penalty,
    );
    if !p.stop_sequences.is_empty() {
        a.push((
            "gen_ai.request.stop_sequences".into(),
            AttrValue::StrList(p.stop_sequences.clone()),
        ));
    }
    if let Some(seed) = p.seed.as_ref().and_then(|s| s.parse::<i64>().ok()) {
        a.push(("gen_ai.request.seed".into(), AttrValue::Int(seed)));
    }
    if let Some(n) = p.choice_count.filter(|n| *n != 1) {
        int(&mut a, "gen_ai.request.choice.count", Some(n));
    }
    if call.request.stream {
        a.push(("gen_ai.request.stream".into(), AttrValue::Bool(true)));
    }
    if call.gen_ai_provider == "openai" {
        match call.format {
            WireFormat::ChatCompletions => a.push((
                "openai.api.type".into(),
                AttrValue::Str("chat_completions".into()),
            )),
            WireFormat::Responses => {
                a.push(("openai.api.type".into(), AttrValue::Str("responses".into())))
            }
            _ => {}
        }
    }
    if let Some(r) = &call.response {
        if let Some(id) = &r.response_id {
            a.push(("gen_ai.response.id".into(), AttrValue::Str(id.clone())));
        }
        if let Some(m) = &r.model {
            a.push(("gen_ai.response.model".into(), AttrValue::Str(m.clone())));
        }
        if !r.finish_reasons.is_empty() {
            a.push((
                "gen_ai.response.finish_reasons".into(),
                AttrValue::StrList(r.finish_reasons.clone()),
            ));
        }
        let u = &r.usage;
        int(&mut a, "gen_ai.usage.input_tokens", u.input_tokens);
        int(&mut a, "gen_ai.usage.output_tokens", u.output_tokens);
        int(
            &mut a,
            "gen_ai.usage.cache_read.input_tokens",
            u.cached_input_tokens,
        );
        int(
            &mut a,
            "gen_ai.usage.cache_creation.input_tokens",
            u.cache_creation_input_tokens,
        );
        int(
            &mut a,
            "gen_ai.usage.reasoning.output_tokens",
            u.reasoning_tokens,
        );
    }
    if let Some(pico) = call.cost_pico_usd {
        a.push(("cost.usd".into(), AttrValue::Double(pico as f64 / 1e12)));
        // The split, for readers that show input and output cost apart (OpenInference).
        if let Some(input) = call.input_cost_pico_usd.filter(|i| *i <= pico) {
            a.push((
                "sidetrace.cost.input_usd".into(),
                AttrValue::Double(input as f64 / 1e12),
            ));
            a.push((
                "sidetrace.cost.output_usd".into(),
                AttrValue::Double((pico - input) as f64 / 1e12),
            ));
        }
    }
    if let Some(m) = &call.priced_model {
        a.push(("sidetrace.price.model".into(), AttrValue::Str(m.clone())));
    }
    if let Some(t) = call.time_to_first_chunk.filter(|_| call.request.stream) {
        dbl(
            &mut a,
            "gen_ai.response.time_to_first_chunk",
            Some(t.as_secs_f64()),
        );
    }
    if let Some(status) = call.status {
        a.push((
            "http.response.status_code".into(),
            AttrValue::Int(i64::from(status)),
        ));
    }
    if let Some(e) = &call.error_type {
        a.push(("error.type".into(), AttrValue::Str(e.clone())));
    }
    let m = &call.metadata;
    let mut opt = |k: &'static str, v: &Option<String>| {
        if let Some(v) = v {
            a.push((k.into(), AttrValue::Str(v.clone())));
        }
    };
    opt("feature.id", &m.feature);
    opt("user.id", &m.user_id);
    opt("session.id", &m.session_id);
    opt("gen_ai.conversation.id", &m.session_id);
    opt("session.path", &m.session_path);
    opt("sidetrace.session.name", &m.session_name);
    opt("prompt.template_id", &m.prompt_template);
    opt("prompt.version", &m.prompt_version);
    opt("sidetrace.key.name", &m.key);
    if !m.tags.is_empty() {
        a.push(("tag.tags".into(), AttrValue::StrList(m.tags.clone())));
    }
    for (k, v) in &m.meta {
        a.push((
            format!("sidetrace.meta.{k}").into(),
            AttrValue::Str(v.clone()),
        ));
    }
    if let Some(c) = &call.content {
        push_content(&mut a, c.clone());
    }
    int(
        &mut a,
        "sidetrace.request.body_bytes",
        Some(call.request.body_bytes),
    );
    a.push((
        "sidetrace.provider".into(),
        AttrValue::Str(call.provider.clone()),
    ));
    a.push((
        "sidetrace.outcome".into(),
        AttrValue::Str(call.outcome.as_str().into()),
    ));

    let failed = call.outcome != Outcome::Completed || call.error_type.is_some();
    // What the provider said went wrong (a 429's "Rate limit reached for ..."), when it said
    // anything: what a reader of a failed call wants first. The recorder has redacted it.
    let provider_says = matches!(call.outcome, Outcome::Completed | Outcome::UpstreamError)
        .then(|| call.response.as_ref()?.error.as_ref()?.message.as_deref())
        .flatten()
        .map(str::trim)
        .filter(|m| !m.is_empty());
    let status = if failed {
        SpanStatus::Error(match provider_says {
            Some(message) => message.to_string(),
            None => match call.outcome {
                Outcome::Timeout => "upstream timed out".to_string(),
                Outcome::Cancelled => "client cancelled the call".to_string(),
                Outcome::UpstreamError => "upstream failed".to_string(),
                Outcome::GatewayError => "gateway refused the call".to_string(),
                Outcome::Completed => match call.status {
                    Some(s) if s >= 400 => format!("upstream answered {s}"),
                    _ => "provider signalled an error".to_string(),
                },
            },
        })
    } else {
        SpanStatus::Unset
    };
    let name = match (&m.span_name, &call.request.model) {
        (Some(n), _) => n.clone(),
        // Joined by hand: `format!` goes through the formatting machinery, a cost that showed
        // for every call.
        (None, Some(model)) => [op, model].join(" "),
        (None, None) => op.to_string(),
    };
    let start = nanos(call.started_at);
    let t = &call.trace;
    SpanRecord {
        trace_id: t.trace_id,
        span_id: t.span_id,
        parent_span_id: t.parent_span_id,
        parent_is_remote: t.parent_is_remote,
        flags: t.flags,
        trace_state: t.trace_state.clone(),
        name,
        kind: "client".into(),
        start_unix_nanos: start,
        end_unix_nanos: start + call.duration.as_nanos() as u64,
        status,
        attributes: a,
        events: Vec::new(),
        links: Vec::new(),
        origin: None,
    }
}

#[cfg(test)]
impl SpanRecord {
    /// For tests: a root client span `chat m` of trace `01…` with these attributes.
    pub(crate) fn with_attributes(attributes: Vec<(&str, AttrValue)>) -> SpanRecord {
        SpanRecord {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            parent_is_remote: false,
            flags: 1,
            trace_state: None,
            name: "chat m".into(),
            kind: "client".into(),
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            status: SpanStatus::Unset,
            attributes: attributes
                .into_iter()
                .map(|(k, v)| (k.to_string().into(), v))
                .collect(),
            events: Vec::new(),
            links: Vec::new(),
            origin: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_content_attributes_are_the_ones_is_content_names() {
        let content = content_attributes(CapturedContent {
            level: Some(CaptureLevel::Redacted),
            input_messages: Some("[]".into()),
            system_instructions: Some("[]".into()),
            tool_definitions: Some("[]".into()),
            output_messages: Some("[]".into()),
            input_message_count: Some(1),
            truncated: true,
            omitted_input_messages: Some(3),
            request_body: Some("chat_completions 16384\n{}".into()),
            ..CapturedContent::default()
        });
        // Every one there is, each named by `is_content`.
        assert_eq!(content.len(), 9);
        assert!(content.iter().all(|(k, _)| is_content(k)));
        for other in [
            "gen_ai.request.model",
            "gen_ai.input",
            "sidetrace.content",
            "",
            "cost.usd",
        ] {
            assert!(!is_content(other), "{other}");
        }
    }

    #[test]
    fn a_kept_request_body_reads_as_the_request_s_content_beside_the_rest() {
        let s = |v: &str| AttrValue::Str(v.into());
        let body = r#"chat_completions 16384
{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi [EMAIL]"}]}"#;
        let mut attributes: Vec<(AttrKey, AttrValue)> = vec![
            ("gen_ai.request.model".into(), s("m")),
            (REQUEST_BODY.into(), s(body)),
            ("gen_ai.output.messages".into(), s("[]")),
            ("sidetrace.content.truncated".into(), AttrValue::Bool(true)),
            ("sidetrace.content.level".into(), s("redacted")),
            ("sidetrace.outcome".into(), s("completed")),
        ];
        expand_content(&mut attributes);
        let keys: Vec<&str> = attributes.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(
            keys,
            [
                "gen_ai.request.model",
                "sidetrace.outcome",
                "gen_ai.input.messages",
                "gen_ai.system_instructions",
                "gen_ai.output.messages",
                "sidetrace.input.message_count",
                "sidetrace.content.truncated",
                "sidetrace.content.level",
            ]
        );
        let value = |k: &str| &attributes.iter().find(|(key, _)| key == k).unwrap().1;
        assert_eq!(
            value("gen_ai.input.messages"),
            &s(r#"[{"parts":[{"content":"hi [EMAIL]","type":"text"}],"role":"user"}]"#)
        );
        assert_eq!(value("gen_ai.output.messages"), &s("[]"));
        assert_eq!(value("sidetrace.input.message_count"), &AttrValue::Int(1));

        // A body that cannot be read is left out; the rest stays as it was.
        let mut attributes: Vec<(AttrKey, AttrValue)> = vec![
            (REQUEST_BODY.into(), s("chat_completions 16384\n{")),
            ("gen_ai.output.messages".into(), s("[]")),
            ("sidetrace.outcome".into(), s("completed")),
        ];
        expand_content(&mut attributes);
        assert_eq!(
            attributes,
            vec![
                ("gen_ai.output.messages".into(), s("[]")),
                ("sidetrace.outcome".into(), s("completed")),
            ]
        );
    }

    #[test]
    fn received_values_events_links_and_origin_survive_json_and_old_records_still_decode() {
        let old = r#"{"trace_id":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],"span_id":[2,2,2,2,2,2,2,2],
            "parent_span_id":null,"parent_is_remote":false,"flags":1,"trace_state":null,
            "name":"chat m","kind":"client","start_unix_nanos":1,"end_unix_nanos":2,
            "status":"Unset","attributes":[["a",["x","y"]],["n",3],["d",1.5]]}"#;
        let mut span: SpanRecord = serde_json::from_str(old).unwrap();
        assert!(span.events.is_empty() && span.links.is_empty() && span.origin.is_none());
        assert_eq!(
            span.attr("a"),
            Some(&AttrValue::StrList(vec!["x".into(), "y".into()]))
        );
        assert_eq!(span.attr("d"), Some(&AttrValue::Double(1.5)));
        span.attributes.extend([
            (
                "mixed".into(),
                AttrValue::List(vec![AttrValue::Int(1), AttrValue::Str("x".into())]),
            ),
            ("ints".into(), AttrValue::List(vec![AttrValue::Int(1)])),
            (
                "map".into(),
                AttrValue::Map {
                    kvlist: vec![("k".into(), AttrValue::Bool(true))],
                },
            ),
            (
                "bytes".into(),
                AttrValue::Bytes {
                    bytes: "AQI=".into(),
                },
            ),
            ("whole double".into(), AttrValue::Double(2.0)),
        ]);
        span.status = SpanStatus::Ok;
        span.events.push(SpanEvent {
            name: "e".into(),
            time_unix_nanos: 5,
            attributes: vec![("x".into(), AttrValue::Int(1))],
        });
        span.links.push(SpanLink {
            trace_id: [3; 16],
            span_id: [4; 8],
            trace_state: None,
            flags: 1,
            attributes: Vec::new(),
        });
        span.origin = Some(Arc::new(Origin {
            resource: vec![("service.name".into(), "app".into())],
            scope_name: "lib".into(),
            scope_version: "1".into(),
        }));
        let text = serde_json::to_string(&span).unwrap();
        let back: SpanRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, span);
    }

    #[test]
    fn resource_comes_from_the_standard_variables() {
        let t = Telemetry::from_env(
            [
                ("OTEL_SERVICE_NAME".to_string(), "gw-eu".to_string()),
                (
                    "OTEL_RESOURCE_ATTRIBUTES".to_string(),
                    "deployment.environment.name=prod,team=ml%20ops,service.name=ignored"
                        .to_string(),
                ),
            ],
            "i-1",
        );
        let get = |k: &'static str| {
            t.resource
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("service.name"), Some("gw-eu"));
        assert_eq!(get("deployment.environment.name"), Some("prod"));
        assert_eq!(get("team"), Some("ml ops"));
        assert_eq!(get("service.instance.id"), Some("i-1"));
        assert_eq!(t.schema_url, SCHEMA_URL);
        assert_eq!(t.scope_name, "sidetrace");
    }

    #[test]
    fn service_name_defaults_to_sidetrace() {
        let t = Telemetry::from_env(Vec::new(), "x");
        assert_eq!(
            t.resource[0],
            ("service.name".to_string(), "sidetrace".to_string())
        );
    }
}
