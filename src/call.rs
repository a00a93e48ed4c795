//! One proxied call, as the gateway saw it: the request it read, the response record the tap
//! built, timings and how it ended. Every routed call yields exactly one `CallRecord`.

use std::{
    collections::{HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::{
    cost::PriceBookCell,
    export::pipeline::ExportHandle,
    format::ResponseRecord,
    metrics::Metrics,
    provider::WireFormat,
    store::{budgets::Budgets, costs::CostStore},
    trace::capture::Capturer,
    trace::{
        capture::CapturedContent,
        context::TraceContext,
        metadata::{CallMetadata, canonical_feature},
        span::{SpanRecord, span_for},
    },
};

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
    pub content: Option<CapturedContent>,
    /// Exact cost in pico-USD (10^-12); `None` when the model has no price or no usage came.
    pub cost_pico_usd: Option<u128>,
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

/// Keeps label values of one metric bounded: past `max` distinct values, new ones become
/// `other`, so a client cannot blow up the metrics' cardinality.
pub struct LabelCap {
    seen: Mutex<HashSet<String>>,
    max: usize,
    /// When not empty, only these values are labels; the rest are `other`.
    allowed: HashSet<String>,
}

impl LabelCap {
    pub fn new(max: usize) -> Self {
        LabelCap {
            seen: Mutex::new(HashSet::new()),
            max,
            allowed: HashSet::new(),
        }
    }

    /// Labels from an allow-list (empty: the first `max` distinct values).
    pub fn allowing(allowed: &[String], max: usize) -> Self {
        LabelCap {
            allowed: allowed.iter().cloned().collect(),
            ..LabelCap::new(max)
        }
    }

    pub fn label(&self, value: &str) -> String {
        if !self.allowed.is_empty() {
            return if self.allowed.contains(value) {
                value.to_string()
            } else {
                "other".to_string()
            };
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = seen.get(value) {
            return known.clone();
        }
        let value: String = value.chars().take(100).collect();
        if seen.contains(&value) {
            return value;
        }
        if seen.len() < self.max {
            seen.insert(value.clone());
            return value;
        }
        "other".to_string()
    }
}

fn push_bounded<T>(list: &Mutex<VecDeque<T>>, item: T, keep: usize) {
    let mut list = list.lock().unwrap_or_else(|e| e.into_inner());
    if list.len() == keep {
        list.pop_front();
    }
    list.push_back(item);
}

/// What a recorder is built from.
pub struct RecorderParts {
    pub metrics: Arc<Metrics>,
    /// Recent calls and spans kept in memory.
    pub keep: usize,
    pub export: Option<ExportHandle>,
    pub prices: Arc<PriceBookCell>,
    pub costs: Arc<CostStore>,
    pub budgets: Arc<Budgets>,
    pub capturer: Arc<Capturer>,
    /// Price calls (`cost.enabled`).
    pub pricing: bool,
    /// Feature label values allowed on metrics (empty: the first `max_feature_labels` seen).
    pub feature_labels: Vec<String>,
    pub max_feature_labels: usize,
}

/// Where finished calls go: pricing, metrics, the cost store and budgets, export, a debug log
/// line, and a bounded list of recent calls and spans that tests read.
pub struct Recorder {
    metrics: Arc<Metrics>,
    models: LabelCap,
    features: LabelCap,
    prices: Arc<PriceBookCell>,
    costs: Arc<CostStore>,
    budgets: Arc<Budgets>,
    capturer: Arc<Capturer>,
    pricing: bool,
    recent: Mutex<VecDeque<CallRecord>>,
    spans: Mutex<VecDeque<SpanRecord>>,
    keep: usize,
    export: Option<ExportHandle>,
    /// Shutdown's grace is over and open calls are being cut.
    cutting: AtomicBool,
}

impl Recorder {
    pub fn new(parts: RecorderParts) -> Recorder {
        let RecorderParts {
            metrics,
            keep,
            export,
            prices,
            costs,
            budgets,
            capturer,
            pricing,
            feature_labels,
            max_feature_labels,
        } = parts;
        Recorder {
            metrics,
            models: LabelCap::new(200),
            // Calls carry canonical feature names, so the allow-list is made canonical too.
            features: LabelCap::allowing(
                &feature_labels
                    .iter()
                    .map(|f| canonical_feature(f))
                    .collect::<Vec<_>>(),
                max_feature_labels,
            ),
            prices,
            costs,
            budgets,
            capturer,
            pricing,
            recent: Mutex::new(VecDeque::with_capacity(keep.min(1024))),
            spans: Mutex::new(VecDeque::with_capacity(keep.min(1024))),
            keep,
            export,
            cutting: AtomicBool::new(false),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Marks that shutdown is cutting the calls still open: they end as `error.type=shutdown`
    /// rather than `cancelled`, and nothing is left to read in the background.
    pub fn begin_cut(&self) {
        self.cutting.store(true, Ordering::Release);
    }

    /// Whether shutdown is cutting open calls (see [`Recorder::begin_cut`]).
    pub fn cutting(&self) -> bool {
        self.cutting.load(Ordering::Acquire)
    }

    /// Prices a finished call in place (exact, from the reported usage).
    pub fn price(&self, call: &mut CallRecord) {
        if !self.pricing {
            return;
        }
        let priced = self.prices.load().price_call(call);
        call.cost_pico_usd = priced.cost.map(|c| c.pico_usd());
        call.priced_model = priced.matched_model;
    }

    pub fn record(&self, mut call: CallRecord) {
        if let (Some(content), Some(response)) = (&mut call.content, &call.response)
            && let Some(output) = &response.output
        {
            let tool_calls: Vec<(String, String)> = output
                .tool_calls
                .iter()
                .map(|t| (t.name.clone(), t.arguments.clone()))
                .collect();
            self.capturer.output(
                content,
                &output.text,
                &tool_calls,
                response.finish_reasons.first().map(String::as_str),
            );
            content.truncated |= output.truncated;
        }
        let model = self.models.label(call.model().unwrap_or("unknown"));
        let feature = self
            .features
            .label(call.metadata.feature.as_deref().unwrap_or(""));
        self.metrics
            .call_recorded(&call, &model, &feature, self.pricing);
        let model_name = call
            .priced_model
            .as_deref()
            .or(call.model())
            .unwrap_or("unknown");
        self.costs
            .add(&call, model_name, crate::store::costs::now_secs());
        self.budgets.record(&call);
        if tracing::enabled!(tracing::Level::DEBUG) {
            let usage = call.response.as_ref().map(|r| &r.usage);
            tracing::debug!(
                provider = %call.provider,
                model = %model,
                path = %call.path,
                status = call.status,
                outcome = call.outcome.as_str(),
                error_type = call.error_type.as_deref(),
                stream = call.request.stream,
                input_tokens = usage.and_then(|u| u.input_tokens),
                output_tokens = usage.and_then(|u| u.output_tokens),
                cached_input_tokens = usage.and_then(|u| u.cached_input_tokens),
                reasoning_tokens = usage.and_then(|u| u.reasoning_tokens),
                duration_ms = call.duration.as_secs_f64() * 1e3,
                ttft_ms = call.time_to_first_token.map(|d| d.as_secs_f64() * 1e3),
                "call"
            );
        }
        let span = span_for(&call);
        tracing::debug!(
            trace_id = %call.trace.trace_id_hex(),
            span_id = %call.trace.span_id_hex(),
            name = %span.name,
            attributes = span.attributes.len(),
            "span"
        );
        if self.keep > 0 {
            push_bounded(&self.recent, call, self.keep);
            if let Some(export) = &self.export {
                export.submit(span.clone());
            }
            push_bounded(&self.spans, span, self.keep);
        } else if let Some(export) = &self.export {
            export.submit(span);
        }
    }

    /// The most recent span records, oldest first.
    pub fn recent_spans(&self) -> Vec<SpanRecord> {
        self.spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// The most recent calls, oldest first.
    pub fn recent(&self) -> Vec<CallRecord> {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}
