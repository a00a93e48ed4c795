//! One proxied call, as the gateway saw it: the request it read, the response record the tap
//! built, timings and how it ended. Every routed call yields exactly one `CallRecord`.
//!
//! Data only: cost, the stores, metrics and spans read these types and this file imports none
//! of them.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub use crate::format::request::RequestParams;
use crate::{
    format::ResponseRecord,
    provider::WireFormat,
    trace::{capture::CapturedContent, context::TraceContext, metadata::CallMetadata},
};

/// What the gateway read from the request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestInfo {
    /// The model as requested (body, or path for Gemini, Bedrock and Azure deployments).
    pub model: Option<String>,
    pub stream: bool,
    /// The client asked for `stream_options.include_usage` itself.
    pub include_usage_requested: bool,
    /// The gateway added `stream_options.include_usage` and strips the usage-only chunk.
    pub include_usage_injected: bool,
    pub params: RequestParams,
    /// The body was read and understood as JSON. False for non-JSON, malformed, too large or
    /// not-inspected bodies; the call goes through all the same.
    pub parsed: bool,
    pub body_bytes: u64,
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The response body ended normally (the upstream status may still be an error status).
    Completed,
    /// The upstream could not be reached, or broke the stream.
    UpstreamError,
    /// Time to headers, idle or total deadline exceeded.
    Timeout,
    /// The client went away before the response ended.
    Cancelled,
    /// The gateway refused or failed the call after routing it (e.g. a body over the limit).
    GatewayError,
}

impl Outcome {
    /// How many outcomes there are: every [`Outcome::index`] is below it.
    pub const COUNT: usize = 5;

    /// The outcome's place in a table of [`Outcome::COUNT`] entries.
    pub const fn index(self) -> usize {
        match self {
            Outcome::Completed => 0,
            Outcome::UpstreamError => 1,
            Outcome::Timeout => 2,
            Outcome::Cancelled => 3,
            Outcome::GatewayError => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Timeout => "timeout",
            Outcome::Cancelled => "cancelled",
            Outcome::GatewayError => "gateway_error",
        }
    }
}

/// One proxied call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    /// The gateway's provider name (`openai`, `groq`, ...).
    pub provider: String,
    /// `gen_ai.provider.name`.
    pub gen_ai_provider: String,
    pub format: WireFormat,
    pub method: String,
    /// Path as received, without the query string (it can carry keys).
    pub path: String,
    pub server_address: String,
    pub server_port: u16,
    pub request: RequestInfo,
    /// Upstream HTTP status; `None` when no response came.
    pub status: Option<u16>,
    /// What the response told us; `None` when it was not inspected (passthrough route,
    /// compressed body, or no response).
    pub response: Option<ResponseRecord>,
    pub outcome: Outcome,
    /// `error.type`: the provider's in-band error type, the HTTP status, or the gateway's cause.
    pub error_type: Option<String>,
    pub started_at: SystemTime,
    pub duration: Duration,
    pub time_to_headers: Option<Duration>,
    /// First body frame after the headers.
    pub time_to_first_chunk: Option<Duration>,
    pub time_to_first_token: Option<Duration>,
    pub trace: TraceContext,
    pub metadata: CallMetadata,
    /// The content the span carries: at `[capture] level` once recorded (until then, at the
    /// higher of that and the store's level, unless the store's copy was captured apart
    /// into `kept_content`).
    pub content: Option<CapturedContent>,
    /// The content at the local trace store's level (`[store] capture`), when it keeps any.
    #[serde(default)]
    pub kept_content: Option<CapturedContent>,
    /// Exact cost in pico-USD (10^-12); `None` when the model has no price or no usage came.
    pub cost_pico_usd: Option<u128>,
    /// The input part of that cost (uncached input, cache reads and writes), in pico-USD.
    #[serde(default)]
    pub input_cost_pico_usd: Option<u128>,
    /// The price-table entry used (`gpt-4o` for `gpt-4o-2024-08-06`).
    pub priced_model: Option<String>,
}

impl CallRecord {
    /// The model to attribute the call to: the response's (a dated snapshot) over the request's.
    pub fn model(&self) -> Option<&str> {
        self.response
            .as_ref()
            .and_then(|r| r.model.as_deref())
            .filter(|m| !m.is_empty())
            .or(self.request.model.as_deref())
    }
}

#[cfg(test)]
impl CallRecord {
    /// A completed OpenAI chat call (status 200, sampled, nothing read from its request or
    /// response): what unit tests build their calls from.
    pub(crate) fn test_chat() -> CallRecord {
        CallRecord {
            provider: "openai".into(),
            gen_ai_provider: "openai".into(),
            format: WireFormat::ChatCompletions,
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            server_address: "localhost".into(),
            server_port: 443,
            request: RequestInfo::default(),
            status: Some(200),
            response: None,
            outcome: Outcome::Completed,
            error_type: None,
            started_at: SystemTime::UNIX_EPOCH,
            duration: Duration::ZERO,
            time_to_headers: None,
            time_to_first_chunk: None,
            time_to_first_token: None,
            trace: TraceContext {
                trace_id: [1; 16],
                span_id: [1; 8],
                parent_span_id: None,
                parent_is_remote: false,
                flags: crate::trace::context::FLAG_SAMPLED,
                trace_state: None,
                source: crate::trace::context::TraceSource::New,
            },
            metadata: CallMetadata::default(),
            content: None,
            kept_content: None,
            cost_pico_usd: None,
            input_cost_pico_usd: None,
            priced_model: None,
        }
    }
}
