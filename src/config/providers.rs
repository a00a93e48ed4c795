//! The shape of a provider file, and of a `[providers.<name>]` override in the config.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::prices::ModelPrice;

/// How a response body on a path is framed and which extractor reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireFormat {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    Messages,
    GenerateContent,
    OllamaChat,
    OllamaGenerate,
    Converse,
    ConverseStream,
    InvokeModel,
    InvokeModelWithResponseStream,
    /// Forwarded, not inspected.
    Passthrough,
}

impl WireFormat {
    /// Every format, in declaration order.
    pub const ALL: [WireFormat; 13] = [
        WireFormat::ChatCompletions,
        WireFormat::Completions,
        WireFormat::Embeddings,
        WireFormat::Responses,
        WireFormat::Messages,
        WireFormat::GenerateContent,
        WireFormat::OllamaChat,
        WireFormat::OllamaGenerate,
        WireFormat::Converse,
        WireFormat::ConverseStream,
        WireFormat::InvokeModel,
        WireFormat::InvokeModelWithResponseStream,
        WireFormat::Passthrough,
    ];

    /// The format's name in a provider file (`chat_completions`, ...).
    pub fn name(self) -> &'static str {
        match self {
            WireFormat::ChatCompletions => "chat_completions",
            WireFormat::Completions => "completions",
            WireFormat::Embeddings => "embeddings",
            WireFormat::Responses => "responses",
            WireFormat::Messages => "messages",
            WireFormat::GenerateContent => "generate_content",
            WireFormat::OllamaChat => "ollama_chat",
            WireFormat::OllamaGenerate => "ollama_generate",
            WireFormat::Converse => "converse",
            WireFormat::ConverseStream => "converse_stream",
            WireFormat::InvokeModel => "invoke_model",
            WireFormat::InvokeModelWithResponseStream => "invoke_model_with_response_stream",
            WireFormat::Passthrough => "passthrough",
        }
    }
}

/// A format by its name (see [`WireFormat::name`]).
impl std::str::FromStr for WireFormat {
    type Err = String;

    fn from_str(name: &str) -> Result<WireFormat, String> {
        WireFormat::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| format!("no wire format is named {name:?}"))
    }
}

/// Which headers carry the client's credentials, and optionally a key the gateway holds itself.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSpec {
    /// Headers that carry a credential. They pass through untouched and are never logged,
    /// stored or exported.
    #[serde(default)]
    pub credential_headers: Vec<String>,
    /// Header the gateway sets when it holds the provider key itself.
    pub key_header: Option<String>,
    /// Prefix of the header value, e.g. `"Bearer "`.
    #[serde(default)]
    pub key_prefix: String,
    /// Environment variable holding a gateway-held key. It is used only when the client sent
    /// none of the credential headers.
    pub key_env: Option<String>,
    /// The AWS service to sign requests for with SigV4 (`bedrock`), when the gateway holds AWS
    /// credentials (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`): a
    /// client's own signature names the gateway's host and cannot reach the upstream intact.
    /// The region is the `{region}` host parameter, else `AWS_REGION`.
    pub sigv4_service: Option<String>,
}

/// A path pattern on the upstream side (after the route prefix) and the wire format it speaks.
/// `*` matches any run of characters other than `/`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathSpec {
    pub pattern: String,
    pub format: WireFormat,
}

/// Per-provider timeout overrides, in milliseconds.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutOverrides {
    pub connect_ms: Option<u64>,
    pub response_headers_ms: Option<u64>,
    pub idle_ms: Option<u64>,
    pub total_ms: Option<u64>,
}

fn yes() -> bool {
    true
}

/// One provider file in `providers/`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    pub name: String,
    /// The OpenTelemetry `gen_ai.provider.name` value.
    pub gen_ai_provider: String,
    /// The provider's origin, optionally with a path prefix. `{param}` placeholders in the host
    /// take their value from the leading path segments after the route prefix.
    pub base_url: String,
    /// Defaults to `/<name>`.
    pub route_prefix: Option<String>,
    /// The provider forwards to this host or its local network (a model server on a local
    /// port): off unless `[providers.<name>] enabled = true`, so a gateway reachable beyond
    /// localhost is not a way into the host's other services.
    #[serde(default)]
    pub local_network: bool,
    /// Speak HTTP/2 without TLS to a plain `http://` upstream (h2c prior knowledge).
    #[serde(default)]
    pub http2_prior_knowledge: bool,
    /// The provider accepts `stream_options.include_usage`, so the gateway may add it to
    /// streamed chat and completions calls that lack it.
    #[serde(default)]
    pub stream_usage_injection: bool,
    /// Send `traceparent` (the call span as parent) and the caller's `tracestate` upstream.
    #[serde(default = "yes")]
    pub propagate_trace_context: bool,
    #[serde(default)]
    pub auth: AuthSpec,
    #[serde(default)]
    pub paths: Vec<PathSpec>,
    #[serde(default)]
    pub timeouts: TimeoutOverrides,
    /// Free text for humans: where the provider documents its API.
    pub docs: Option<String>,
    /// Prices per model family (`[[models]]`), in USD per million tokens.
    #[serde(default)]
    pub models: Vec<ModelPrice>,
    /// Models not priced here are looked up in this provider's table (Azure bills OpenAI's
    /// models).
    pub prices_from: Option<String>,
    /// Deployment name (as the request names it) -> the priced model it serves, for Azure-style
    /// providers where the customer names deployments.
    #[serde(default)]
    pub deployments: BTreeMap<String, String>,
    /// How this provider departs from the wire format it copies.
    #[serde(default)]
    pub quirks: Quirks,
}

/// Ways a provider departs from the wire format it copies, read by the response extractors.
/// Flags in the spec, not checks of a provider's name, so a user's own provider can have them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quirks {
    /// `completion_tokens` leaves out `reasoning_tokens` (xAI), so the extractor adds them
    /// back: GenAI output tokens include reasoning.
    pub reasoning_tokens_outside_completion: bool,
}

/// A `[providers.<name>]` table in the config: every field optional. On a provider that exists
/// it overrides the given fields; with a new name it defines an OpenAI-compatible provider.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderOverride {
    pub gen_ai_provider: Option<String>,
    pub base_url: Option<String>,
    pub route_prefix: Option<String>,
    pub http2_prior_knowledge: Option<bool>,
    pub stream_usage_injection: Option<bool>,
    pub propagate_trace_context: Option<bool>,
    pub auth: Option<AuthSpec>,
    pub paths: Option<Vec<PathSpec>>,
    pub timeouts: Option<TimeoutOverrides>,
    /// `false` removes a built-in provider; `true` turns on one marked `local_network`.
    pub enabled: Option<bool>,
    /// Added to the provider's prices; an entry with the name of an existing one replaces it
    /// (negotiated prices, private models).
    pub models: Option<Vec<ModelPrice>>,
    pub prices_from: Option<String>,
    /// Added to the provider's deployments, replacing any of the same name.
    pub deployments: Option<BTreeMap<String, String>>,
    pub quirks: Option<Quirks>,
}

impl ProviderSpec {
    /// The spec of a new OpenAI-compatible provider defined only in the config.
    pub fn openai_compatible(name: &str) -> ProviderSpec {
        let paths = [
            ("/v1/chat/completions", WireFormat::ChatCompletions),
            ("/v1/completions", WireFormat::Completions),
            ("/v1/embeddings", WireFormat::Embeddings),
            ("/v1/responses", WireFormat::Responses),
            ("/chat/completions", WireFormat::ChatCompletions),
            ("/completions", WireFormat::Completions),
            ("/embeddings", WireFormat::Embeddings),
        ]
        .into_iter()
        .map(|(pattern, format)| PathSpec {
            pattern: pattern.to_string(),
            format,
        })
        .collect();
        ProviderSpec {
            name: name.to_string(),
            gen_ai_provider: name.to_string(),
            base_url: String::new(),
            route_prefix: None,
            local_network: false,
            http2_prior_knowledge: false,
            stream_usage_injection: false,
            propagate_trace_context: true,
            auth: AuthSpec {
                credential_headers: vec!["authorization".to_string()],
                key_header: Some("authorization".to_string()),
                key_prefix: "Bearer ".to_string(),
                key_env: None,
                sigv4_service: None,
            },
            paths,
            timeouts: TimeoutOverrides::default(),
            docs: None,
            models: Vec::new(),
            prices_from: None,
            deployments: BTreeMap::new(),
            quirks: Quirks::default(),
        }
    }

    pub fn apply(&mut self, o: &ProviderOverride) {
        if let Some(v) = &o.gen_ai_provider {
            self.gen_ai_provider = v.clone();
        }
        if let Some(v) = &o.base_url {
            self.base_url = v.clone();
        }
        if let Some(v) = &o.route_prefix {
            self.route_prefix = Some(v.clone());
        }
        if let Some(v) = o.http2_prior_knowledge {
            self.http2_prior_knowledge = v;
        }
        if let Some(v) = o.stream_usage_injection {
            self.stream_usage_injection = v;
        }
        if let Some(v) = o.propagate_trace_context {
            self.propagate_trace_context = v;
        }
        if let Some(v) = o.quirks {
            self.quirks = v;
        }
        if let Some(v) = &o.auth {
            self.auth = v.clone();
        }
        if let Some(v) = &o.paths {
            self.paths = v.clone();
        }
        if let Some(t) = &o.timeouts {
            let own = &mut self.timeouts;
            own.connect_ms = t.connect_ms.or(own.connect_ms);
            own.response_headers_ms = t.response_headers_ms.or(own.response_headers_ms);
            own.idle_ms = t.idle_ms.or(own.idle_ms);
            own.total_ms = t.total_ms.or(own.total_ms);
        }
        for m in o.models.iter().flatten() {
            match self
                .models
                .iter_mut()
                .find(|own| own.name.eq_ignore_ascii_case(&m.name))
            {
                Some(own) => *own = m.clone(),
                None => {
                    // A price for what was an alias takes that name over.
                    for own in &mut self.models {
                        own.aliases.retain(|a| !a.eq_ignore_ascii_case(&m.name));
                    }
                    self.models.push(m.clone());
                }
            }
        }
        if let Some(v) = &o.prices_from {
            self.prices_from = Some(v.clone());
        }
        if let Some(d) = &o.deployments {
            self.deployments
                .extend(d.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
}

/// The provider files in `providers/`, compiled into the binary so it runs with no files at all.
/// `build.rs` lists the directory, so adding a provider is adding a file.
pub fn builtin_specs() -> &'static [(&'static str, &'static str)] {
    include!(concat!(env!("OUT_DIR"), "/builtin_providers.rs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_format_s_name_is_the_one_provider_files_use() {
        for format in WireFormat::ALL {
            let serde_name = serde_json::to_value(format).unwrap();
            assert_eq!(serde_name, format.name(), "{format:?}");
            assert_eq!(format.name().parse(), Ok(format));
        }
        assert!("chat".parse::<WireFormat>().is_err());
    }
}
