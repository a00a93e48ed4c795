//! Prometheus metrics of the gateway itself, served as text on the admin listener.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

use crate::{
    call::{record::CallRecord, sink::Sink},
    trace::{metadata::canonical_feature, span::SpanRecord},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    provider: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    provider: String,
    model: String,
    feature: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CostLabels {
    provider: String,
    model: String,
    feature: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BudgetLabels {
    budget: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    provider: String,
    outcome: &'static str,
    /// The gateway key's name (`[[keys]]`, bounded by the config); empty without keys.
    key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HeaderLabels {
    header: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    store: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeOnly {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionCloseLabels {
    pub listener: &'static str,
    pub reason: &'static str,
}

/// The listeners that count connections (`server.rs` names them so).
const LISTENERS: [&str; 3] = ["proxy", "admin", "ingest"];

/// Client connections of each listener.
pub struct ConnectionMetrics {
    pub open: Family<ListenerLabels, Gauge>,
    /// Closed by the gateway: `idle` (no request for a while), `shutdown_cut` (grace over).
    pub closed: Family<ConnectionCloseLabels, Counter>,
    pub accept_errors: Family<ListenerLabels, Counter>,
    /// Times the listener reached its connection cap and stopped accepting for a while.
    pub cap_reached: Family<ListenerLabels, Counter>,
}

impl ConnectionMetrics {
    fn register(registry: &mut Registry) -> ConnectionMetrics {
        let m = ConnectionMetrics {
            open: Family::default(),
            closed: Family::default(),
            accept_errors: Family::default(),
            cap_reached: Family::default(),
        };
        // Present at 0 from the start, so an alert on them sees data.
        for listener in LISTENERS {
            let _ = m.accept_errors.get_or_create(&ListenerLabels { listener });
            let _ = m.cap_reached.get_or_create(&ListenerLabels { listener });
            for reason in ["idle", "shutdown_cut"] {
                let _ = m
                    .closed
                    .get_or_create(&ConnectionCloseLabels { listener, reason });
            }
        }
        registry.register(
            "sidetrace_connections_open",
            "Client connections open, by listener",
            m.open.clone(),
        );
        registry.register(
            "sidetrace_connections_closed",
            "Client connections the gateway closed, by listener and reason (idle, shutdown_cut)",
            m.closed.clone(),
        );
        registry.register(
            "sidetrace_accept_errors",
            "Failed accepts (out of file descriptors and the like), by listener",
            m.accept_errors.clone(),
        );
        registry.register(
            "sidetrace_connection_cap_reached",
            "Times a listener reached max_connections and paused accepting until one closed",
            m.cap_reached.clone(),
        );
        m
    }
}

/// The local trace store.
pub struct StoreMetrics {
    pub spans_written: Counter,
    /// Spans written and flushed to disk: a crash does not lose them.
    pub spans_durable: Counter,
    /// Traces still taking spans, held in memory until quiet.
    pub open_traces: Gauge,
    /// Spans queued for the writer, not yet applied.
    pub queued_spans: Gauge,
    /// Spans the store did not keep: `queue_full`, `write_error`, `off` (store degraded).
    pub spans_dropped: Family<ReasonLabels, Counter>,
    /// Whole traces evicted: `size`, `age`.
    pub traces_evicted: Family<ReasonLabels, Counter>,
    /// Spans a trace read could not read back (span file gone, cut short, damaged).
    pub spans_unreadable: Counter,
    pub bytes: Gauge,
    pub traces: Gauge,
    /// 1 while the store keeps spans; 0 when it is off or failed.
    pub up: Gauge,
}

impl StoreMetrics {
    fn register(registry: &mut Registry) -> StoreMetrics {
        let m = StoreMetrics {
            spans_written: Counter::default(),
            spans_durable: Counter::default(),
            open_traces: Gauge::default(),
            queued_spans: Gauge::default(),
            spans_dropped: Family::default(),
            traces_evicted: Family::default(),
            spans_unreadable: Counter::default(),
            bytes: Gauge::default(),
            traces: Gauge::default(),
            up: Gauge::default(),
        };
        for reason in ["queue_full", "write_error", "off"] {
            let _ = m.spans_dropped.get_or_create(&ReasonLabels { reason });
        }
        for reason in ["size", "age"] {
            let _ = m.traces_evicted.get_or_create(&ReasonLabels { reason });
        }
        registry.register(
            "sidetrace_store_spans_written",
            "Spans written to the local trace store",
            m.spans_written.clone(),
        );
        registry.register(
            "sidetrace_store_spans_durable",
            "Spans of the local trace store flushed to disk (a crash loses none of them)",
            m.spans_durable.clone(),
        );
        registry.register(
            "sidetrace_store_open_traces",
            "Traces in the local trace store still taking spans, held in memory until quiet for 5 s",
            m.open_traces.clone(),
        );
        registry.register(
            "sidetrace_store_queued_spans",
            "Spans waiting for the local trace store's writer (at most 32,768; past it they are dropped, counted as queue_full)",
            m.queued_spans.clone(),
        );
        registry.register(
            "sidetrace_store_spans_dropped",
            "Spans the local trace store did not keep, by reason (queue_full, write_error, off); the export is not affected",
            m.spans_dropped.clone(),
        );
        registry.register(
            "sidetrace_store_traces_evicted",
            "Whole traces evicted from the local trace store, by reason (size, age)",
            m.traces_evicted.clone(),
        );
        registry.register(
            "sidetrace_store_spans_unreadable",
            "Stored spans a read of their trace could not read back (span file gone, cut short or damaged: each record has a CRC); counted at each read",
            m.spans_unreadable.clone(),
        );
        registry.register_with_unit(
            "sidetrace_store",
            "Span bytes kept in the local trace store ([store] max_bytes bounds it)",
            Unit::Bytes,
            m.bytes.clone(),
        );
        registry.register(
            "sidetrace_store_traces",
            "Traces kept in the local trace store",
            m.traces.clone(),
        );
        registry.register(
            "sidetrace_store_up",
            "1 while the local trace store keeps spans, 0 when it is off or failed",
            m.up.clone(),
        );
        m
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IngestLabels {
    pub transport: &'static str,
    pub result: &'static str,
}

/// The OTLP receiver (`[ingest]`). Labels are fixed sets: transport `http`/`grpc`; request
/// result `ok`, `partial`, `malformed`, `too_large`, `unsupported`, `overloaded`; span result
/// `accepted`/`rejected`; rejection reason `invalid_trace_id`, `invalid_span_id`,
/// `invalid_parent_span_id`.
pub struct IngestMetrics {
    pub requests: Family<IngestLabels, Counter>,
    pub spans: Family<IngestLabels, Counter>,
    pub rejected: Family<ReasonLabels, Counter>,
}

impl IngestMetrics {
    fn register(registry: &mut Registry) -> IngestMetrics {
        let m = IngestMetrics {
            requests: Family::default(),
            spans: Family::default(),
            rejected: Family::default(),
        };
        for transport in ["http", "grpc"] {
            for result in ["accepted", "rejected"] {
                let _ = m.spans.get_or_create(&IngestLabels { transport, result });
            }
            for result in [
                "ok",
                "partial",
                "malformed",
                "too_large",
                "unsupported",
                "overloaded",
            ] {
                let _ = m
                    .requests
                    .get_or_create(&IngestLabels { transport, result });
            }
        }
        for reason in [
            "invalid_trace_id",
            "invalid_span_id",
            "invalid_parent_span_id",
        ] {
            let _ = m.rejected.get_or_create(&ReasonLabels { reason });
        }
        registry.register(
            "sidetrace_ingest_requests",
            "OTLP export requests received, by transport (http, grpc) and result (ok, partial, malformed, too_large, unsupported, overloaded)",
            m.requests.clone(),
        );
        registry.register(
            "sidetrace_ingest_spans",
            "Spans received over OTLP, by transport and result (accepted: recorded; rejected: invalid, named in the partial success)",
            m.spans.clone(),
        );
        registry.register(
            "sidetrace_ingest_spans_rejected",
            "Received spans rejected, by reason (invalid_trace_id, invalid_span_id, invalid_parent_span_id)",
            m.rejected.clone(),
        );
        m
    }

    pub fn request(&self, transport: &'static str, result: &'static str) {
        self.requests
            .get_or_create(&IngestLabels { transport, result })
            .inc();
    }

    pub fn spans(&self, transport: &'static str, result: &'static str, n: u64) {
        if n > 0 {
            self.spans
                .get_or_create(&IngestLabels { transport, result })
                .inc_by(n);
        }
    }

    pub fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }
}

/// Tool spans read from the wire and agent loops joined (`call::tools`).
pub struct ToolMetrics {
    /// Tool spans emitted (answered, unanswered, released after the dedupe hold).
    pub emitted: Counter,
    /// Tool calls answered, by result (`ok`, `error`).
    answered: Family<ResultLabels, Counter>,
    /// Tool calls never answered within the wait (their span is emitted, marked).
    pub unanswered: Counter,
    /// Tool spans not emitted: `app_reported` (the app sent its own).
    dropped: Family<ReasonLabels, Counter>,
    /// Entries pushed out of the bounded tables: `count`, `bytes`, `response_ids`, `answered`.
    evicted: Family<ReasonLabels, Counter>,
    /// Requests without a trace header that joined an earlier call's trace, by what linked
    /// them (`tool_result`, `previous_response_id`).
    joined: Family<ReasonLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

impl ToolMetrics {
    fn register(registry: &mut Registry) -> ToolMetrics {
        let m = ToolMetrics {
            emitted: Counter::default(),
            answered: Family::default(),
            unanswered: Counter::default(),
            dropped: Family::default(),
            evicted: Family::default(),
            joined: Family::default(),
        };
        for result in ["ok", "error"] {
            let _ = m.answered.get_or_create(&ResultLabels { result });
        }
        let _ = m.dropped.get_or_create(&ReasonLabels {
            reason: "app_reported",
        });
        for reason in ["count", "bytes", "response_ids", "answered"] {
            let _ = m.evicted.get_or_create(&ReasonLabels { reason });
        }
        for reason in ["tool_result", "previous_response_id"] {
            let _ = m.joined.get_or_create(&ReasonLabels { reason });
        }
        registry.register(
            "sidetrace_tool_spans_emitted",
            "execute_tool spans the gateway made from tool calls and results read from the wire",
            m.emitted.clone(),
        );
        registry.register(
            "sidetrace_tool_calls_answered",
            "Tool calls a later request answered, by result (ok, error)",
            m.answered.clone(),
        );
        registry.register(
            "sidetrace_tool_calls_unanswered",
            "Tool calls never answered within trace.tool_unanswered_ms (their span is marked)",
            m.unanswered.clone(),
        );
        registry.register(
            "sidetrace_tool_spans_dropped",
            "Tool spans not emitted because the app sent its own for the same call id (app_reported)",
            m.dropped.clone(),
        );
        registry.register(
            "sidetrace_tool_pending_evicted",
            "Entries pushed out of the bounded tool tables, by reason (count, bytes, response_ids, answered)",
            m.evicted.clone(),
        );
        registry.register(
            "sidetrace_traces_joined",
            "Requests without trace headers joined to an earlier call's trace, by link (tool_result, previous_response_id)",
            m.joined.clone(),
        );
        m
    }

    pub fn answered(&self, result: &'static str) {
        self.answered.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn dropped(&self, reason: &'static str) {
        self.dropped.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn evicted(&self, reason: &'static str) {
        self.evicted.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn joined(&self, reason: &'static str) {
        self.joined.get_or_create(&ReasonLabels { reason }).inc();
    }
}

type HistogramFamily = Family<ProviderLabels, Histogram, fn() -> Histogram>;

fn overhead_histogram() -> Histogram {
    // 10 µs .. 0.3 s
    Histogram::new(exponential_buckets(0.00001, 2.0, 15))
}

fn latency_histogram() -> Histogram {
    // 1 ms .. 33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<CallLabels, Counter>,
    rejected: Family<ReasonLabels, Counter>,
    upstream_headers: HistogramFamily,
    time_to_first_token: HistogramFamily,
    tokens: Family<TokenLabels, Counter>,
    cost: Family<CostLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    unpriced: Family<CostLabels, Counter>,
    budget_refused: Family<BudgetLabels, Counter>,
    admin_refused: Family<ReasonLabels, Counter>,
    gateway_overhead: HistogramFamily,
    calls: Family<OutcomeLabels, Counter>,
    events_skipped: Family<ReasonLabels, Counter>,
    calls_uninspected: Family<ReasonLabels, Counter>,
    requests_unparsed: Counter,
    trace_context_invalid: Family<HeaderLabels, Counter>,
    metadata_truncated: Counter,
    pub spans_received: Counter,
    pub spans_exported: Counter,
    pub spans_spooled: Counter,
    pub spans_replayed: Counter,
    pub spans_sampled_out: Counter,
    traces_sampled: Family<DecisionLabels, Counter>,
    spans_dropped: Family<DropLabels, Counter>,
    export_attempts: Family<OutcomeOnly, Counter>,
    pub export_duration: Histogram,
    /// Spans the export holds in memory: queued, in the overflow buffer or in the batch being
    /// sent (not yet exported, spooled or dropped).
    pub export_queued_spans: Gauge,
    pub spool_items: Gauge,
    pub spool_bytes: Gauge,
    pub spool_oldest_age_seconds: Gauge,
    pub spool_degraded: Gauge,
    /// Calls in flight, open response streams included.
    pub active_calls: Gauge,
    /// Request body bytes held by inspected routes.
    pub request_buffered_bytes: Gauge,
    pub connections: ConnectionMetrics,
    pub store: StoreMetrics,
    pub ingest: IngestMetrics,
    pub tools: ToolMetrics,
    store_damaged: Family<StoreLabels, Counter>,
    pub cost_calls_lost: Counter,
    scores: ScoreMetrics,
    /// Label sets each client-labelled family may hold (see [`SeriesCap`]).
    series: SeriesCaps,
    series_overflow: Family<FamilyLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FamilyLabels {
    family: &'static str,
}

/// The families whose label values come from clients (model, feature, score names), each with
/// its own cap on distinct label sets.
struct SeriesCaps {
    tokens: SeriesCap,
    cost: SeriesCap,
    unpriced: SeriesCap,
    scores: SeriesCap,
    score_values: SeriesCap,
}

/// Default cap on the distinct label sets of one client-labelled family: model and feature are
/// each bounded (200 models, `max_metric_features` features), but their product is not: 100
/// features over 60 models made 18,794 series and a 2 MB page.
pub const DEFAULT_MAX_SERIES_PER_FAMILY: usize = 2_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScoreLabels {
    name: String,
    feature: String,
    label: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScoreValueLabels {
    name: String,
    feature: String,
}

/// Scores posted to `/api/scores`.
struct ScoreMetrics {
    scores: Family<ScoreLabels, Counter>,
    values: Family<ScoreValueLabels, Histogram, fn() -> Histogram>,
}

impl ScoreMetrics {
    fn register(registry: &mut Registry) -> ScoreMetrics {
        let m = ScoreMetrics {
            scores: Family::default(),
            values: Family::new_with_constructor(|| {
                Histogram::new([
                    0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0,
                ])
            }),
        };
        registry.register(
            "sidetrace_scores",
            "Scores posted to /api/scores, by name, the scored trace's feature and label (each bounded; past the bound, other)",
            m.scores.clone(),
        );
        registry.register(
            "sidetrace_score_value",
            "The values of scores posted with a number, by name and feature",
            m.values.clone(),
        );
        m
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::with_series_cap(DEFAULT_MAX_SERIES_PER_FAMILY)
    }

    /// `max_series`: distinct label sets each family labelled by model, feature or score name
    /// may hold; past it a new set is counted under `other` (and in
    /// `sidetrace_metric_series_overflow_total{family}`).
    pub fn with_series_cap(max_series: usize) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<CallLabels, Counter>::default();
        registry.register(
            "sidetrace_requests",
            "Routed calls by provider and response status (upstream status, or the gateway's error status)",
            requests.clone(),
        );
        let rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "sidetrace_requests_rejected",
            "Calls refused before reaching a provider, by reason (unknown_route, bad_route_param, invalid_path, overloaded, buffer_full)",
            rejected.clone(),
        );
        // Every drop and error counter is present at 0 from the start, so an alert on it sees
        // data before the first drop.
        for reason in [
            "unknown_route",
            "bad_route_param",
            "invalid_path",
            "overloaded",
            "buffer_full",
        ] {
            let _ = rejected.get_or_create(&ReasonLabels { reason });
        }
        let upstream_headers: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "sidetrace_upstream_response_headers",
            "Time from sending a call upstream to receiving its response headers",
            Unit::Seconds,
            upstream_headers.clone(),
        );
        let time_to_first_token: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "sidetrace_time_to_first_token",
            "Time from receiving a streamed call to its first output token",
            Unit::Seconds,
            time_to_first_token.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "sidetrace_tokens",
            "Tokens reported by providers, by kind: input and output (totals), cached_input, cache_creation and reasoning (parts of them)",
            tokens.clone(),
        );
        let cost = Family::<CostLabels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "sidetrace_cost_usd",
            "Cost of calls in USD by provider, model and feature (exact sums: the cost query API)",
            cost.clone(),
        );
        let unpriced = Family::<CostLabels, Counter>::default();
        registry.register(
            "sidetrace_calls_unpriced",
            "Calls with usage but no known price for their model (never counted as 0 USD)",
            unpriced.clone(),
        );
        let budget_refused = Family::<BudgetLabels, Counter>::default();
        registry.register(
            "sidetrace_budget_refused",
            "Calls refused because their budget was spent",
            budget_refused.clone(),
        );
        let admin_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "sidetrace_admin_refused",
            "Admin requests refused for a missing or wrong token",
            admin_refused.clone(),
        );
        let gateway_overhead: HistogramFamily = Family::new_with_constructor(overhead_histogram);
        registry.register_with_unit(
            "sidetrace_gateway_overhead",
            "Time the gateway adds before the response headers: time to headers minus the upstream's",
            Unit::Seconds,
            gateway_overhead.clone(),
        );
        let calls = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "sidetrace_calls",
            "Finished calls by how they ended",
            calls.clone(),
        );
        let events_skipped = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "sidetrace_response_events_skipped",
            "Response events the side parser could not read (oversize, malformed) and bodies it saw cut (truncated)",
            events_skipped.clone(),
        );
        for reason in ["oversize", "malformed", "truncated"] {
            let _ = events_skipped.get_or_create(&ReasonLabels { reason });
        }
        let calls_uninspected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "sidetrace_calls_uninspected",
            "Calls on inspected routes whose response the side parser could not read (content_encoding: compressed by the upstream), so no usage, cost or finish reason was recorded",
            calls_uninspected.clone(),
        );
        // Present at 0 from the start, so an alert on it sees data.
        let _ = calls_uninspected.get_or_create(&ReasonLabels {
            reason: "content_encoding",
        });
        let requests_unparsed = Counter::default();
        registry.register(
            "sidetrace_requests_unparsed",
            "Calls on inspected routes whose request body was not readable JSON (forwarded all the same)",
            requests_unparsed.clone(),
        );
        let trace_context_invalid = Family::<HeaderLabels, Counter>::default();
        registry.register(
            "sidetrace_trace_context_invalid",
            "Calls whose trace header was present but invalid, by header (traceparent and the grouping headers: a new trace was started; tracestate: dropped)",
            trace_context_invalid.clone(),
        );
        for header in [
            "traceparent",
            "tracestate",
            "x-sidetrace-trace-id",
            "x-sidetrace-parent-span-id",
        ] {
            let _ = trace_context_invalid.get_or_create(&HeaderLabels { header });
        }
        let metadata_truncated = Counter::default();
        registry.register(
            "sidetrace_metadata_truncated",
            "Metadata values or keys cut to the length and count bounds",
            metadata_truncated.clone(),
        );
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let spans_received = counter(
            &mut registry,
            "sidetrace_spans_received",
            "Finished call spans handed to the exporter",
        );
        let spans_exported = counter(
            &mut registry,
            "sidetrace_spans_exported",
            "Spans the collector accepted on first try",
        );
        let spans_spooled = counter(
            &mut registry,
            "sidetrace_spans_spooled",
            "Spans written to the spool (queue full or export failed)",
        );
        let spans_replayed = counter(
            &mut registry,
            "sidetrace_spans_replayed",
            "Spooled spans the collector accepted later",
        );
        let spans_sampled_out = counter(
            &mut registry,
            "sidetrace_spans_sampled_out",
            "Spans not exported because tail sampling dropped their trace (sampling is off by default)",
        );
        let traces_sampled = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "sidetrace_traces_sampled",
            "Tail sampling decisions by outcome (keep, drop)",
            traces_sampled.clone(),
        );
        for decision in ["keep", "drop"] {
            let _ = traces_sampled.get_or_create(&DecisionLabels { decision });
        }
        let spans_dropped = Family::<DropLabels, Counter>::default();
        registry.register(
            "sidetrace_spans_dropped",
            "Spans lost, by reason (queue_full, spool_full, expired, max_attempts, corrupt, spool_error, encode_error, shutdown)",
            spans_dropped.clone(),
        );
        for reason in SPAN_DROP_REASONS {
            let _ = spans_dropped.get_or_create(&DropLabels {
                reason: reason.to_string(),
            });
        }
        let export_attempts = Family::<OutcomeOnly, Counter>::default();
        registry.register(
            "sidetrace_export_attempts",
            "OTLP export attempts by outcome (ok, error, timeout)",
            export_attempts.clone(),
        );
        for outcome in ["ok", "error", "timeout"] {
            let _ = export_attempts.get_or_create(&OutcomeOnly { outcome });
        }
        let export_duration = latency_histogram();
        registry.register_with_unit(
            "sidetrace_export_duration",
            "Time one OTLP export attempt took",
            Unit::Seconds,
            export_duration.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let export_queued_spans = gauge(
            &mut registry,
            "sidetrace_export_queued_spans",
            "Spans the export holds in memory: queued, waiting for the spool or in the batch being sent",
        );
        let spool_items = gauge(
            &mut registry,
            "sidetrace_spool_items",
            "Batches waiting in the spool",
        );
        let spool_bytes = gauge(
            &mut registry,
            "sidetrace_spool_bytes",
            "Encoded bytes waiting in the spool",
        );
        let spool_oldest_age_seconds = gauge(
            &mut registry,
            "sidetrace_spool_oldest_age_seconds",
            "Age of the oldest spooled batch (replay lag)",
        );
        let spool_degraded = gauge(
            &mut registry,
            "sidetrace_spool_degraded",
            "1 when the disk spool failed and an in-memory spool took its place",
        );
        let active_calls = Gauge::default();
        registry.register(
            "sidetrace_active_calls",
            "Calls in flight, open response streams included",
            active_calls.clone(),
        );
        let request_buffered_bytes = Gauge::default();
        registry.register_with_unit(
            "sidetrace_request_buffered",
            "Request body bytes held in memory by inspected routes (max_buffered_request_bytes)",
            Unit::Bytes,
            request_buffered_bytes.clone(),
        );
        let connections = ConnectionMetrics::register(&mut registry);
        let store = StoreMetrics::register(&mut registry);
        let scores = ScoreMetrics::register(&mut registry);
        let ingest = IngestMetrics::register(&mut registry);
        let tools = ToolMetrics::register(&mut registry);
        let store_damaged = Family::<StoreLabels, Counter>::default();
        registry.register(
            "sidetrace_store_damaged",
            "Damaged data directories found on open (store: spool, costs), moved aside for inspection",
            store_damaged.clone(),
        );
        for store in ["spool", "costs", "traces"] {
            let _ = store_damaged.get_or_create(&StoreLabels { store });
        }
        let series_overflow = Family::<FamilyLabels, Counter>::default();
        registry.register(
            "sidetrace_metric_series_overflow",
            "Samples counted under model, feature or score name \"other\" because their family reached its cap on distinct label sets ([cost] max_metric_series), by family",
            series_overflow.clone(),
        );
        for family in SERIES_CAPPED_FAMILIES {
            let _ = series_overflow.get_or_create(&FamilyLabels { family });
        }
        let series = SeriesCaps {
            tokens: SeriesCap::new(max_series),
            cost: SeriesCap::new(max_series),
            unpriced: SeriesCap::new(max_series),
            scores: SeriesCap::new(max_series),
            score_values: SeriesCap::new(max_series),
        };
        let cost_calls_lost = counter(
            &mut registry,
            "sidetrace_cost_calls_lost",
            "Calls whose cost aggregates were lost to a damaged cost store, as far as its tally knows",
        );
        Metrics {
            registry,
            requests,
            rejected,
            upstream_headers,
            time_to_first_token,
            tokens,
            cost,
            unpriced,
            budget_refused,
            admin_refused,
            gateway_overhead,
            calls,
            events_skipped,
            calls_uninspected,
            requests_unparsed,
            trace_context_invalid,
            metadata_truncated,
            spans_received,
            spans_exported,
            spans_spooled,
            spans_replayed,
            spans_sampled_out,
            traces_sampled,
            spans_dropped,
            export_attempts,
            export_duration,
            export_queued_spans,
            spool_items,
            spool_bytes,
            spool_oldest_age_seconds,
            spool_degraded,
            active_calls,
            request_buffered_bytes,
            connections,
            store,
            ingest,
            tools,
            store_damaged,
            cost_calls_lost,
            scores,
            series,
            series_overflow,
        }
    }

    /// One score posted to `/api/scores` (labels already bounded by the caller).
    pub fn score_recorded(&self, name: &str, feature: &str, label: &str, value: Option<f64>) {
        let scores = self.capped_series(
            &self.scores.scores,
            &self.series.scores,
            ScoreLabels {
                name: name.to_string(),
                feature: feature.to_string(),
                label: label.to_string(),
            },
            |_| ScoreLabels {
                name: OTHER.into(),
                feature: OTHER.into(),
                label: OTHER.into(),
            },
        );
        self.count_fold(&scores, "sidetrace_scores").inc();
        if let Some(value) = value {
            let values = self.capped_series(
                &self.scores.values,
                &self.series.score_values,
                ScoreValueLabels {
                    name: name.to_string(),
                    feature: feature.to_string(),
                },
                |_| ScoreValueLabels {
                    name: OTHER.into(),
                    feature: OTHER.into(),
                },
            );
            self.count_fold(&values, "sidetrace_score_value")
                .observe(value);
        }
    }

    pub fn store_damaged(&self, store: &'static str) {
        self.store_damaged
            .get_or_create(&StoreLabels { store })
            .inc();
    }

    pub fn trace_context_invalid(&self, header: &'static str) {
        self.trace_context_invalid
            .get_or_create(&HeaderLabels { header })
            .inc();
    }

    pub fn spans_dropped(&self, reason: &str, n: u64) {
        self.spans_dropped
            .get_or_create(&DropLabels {
                reason: reason.to_string(),
            })
            .inc_by(n);
    }

    pub fn traces_sampled(&self, decision: &'static str, n: u64) {
        if n > 0 {
            self.traces_sampled
                .get_or_create(&DecisionLabels { decision })
                .inc_by(n);
        }
    }

    pub fn export_attempt(&self, outcome: &'static str) {
        self.export_attempts
            .get_or_create(&OutcomeOnly { outcome })
            .inc();
    }

    pub fn metadata_truncated(&self, n: u32) {
        self.metadata_truncated.inc_by(u64::from(n));
    }

    pub fn budget_refused(&self, budget: &str) {
        self.budget_refused
            .get_or_create(&BudgetLabels {
                budget: budget.to_string(),
            })
            .inc();
    }

    /// An admin request refused: `missing` or `wrong` token.
    pub fn admin_refused(&self, reason: &'static str) {
        self.admin_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn observe_overhead(&self, provider: &str, overhead: Duration) {
        self.gateway_overhead
            .get_or_create(&ProviderLabels {
                provider: provider.to_string(),
            })
            .observe(overhead.as_secs_f64());
    }

    /// Counts a finished call: outcome, tokens by kind, cost, time to first token, parser
    /// trouble, in the series of its provider, key, model and feature (`series`).
    pub(crate) fn call_recorded(&self, call: &CallRecord, series: &CallSeries, pricing: bool) {
        series.calls[call.outcome.index()]
            .get_or_init(|| {
                self.calls
                    .get_or_create(&OutcomeLabels {
                        provider: series.provider.clone(),
                        outcome: call.outcome.as_str(),
                        key: series.key.clone(),
                    })
                    .clone()
            })
            .inc();
        // Unparsed means forwarded unread: a call the gateway refused (body too large or too
        // slow, budget, buffers full) was not forwarded, and its body may never have been read.
        if call.format != crate::provider::WireFormat::Passthrough
            && !call.request.parsed
            && call.outcome != crate::call::record::Outcome::GatewayError
        {
            self.requests_unparsed.inc();
        }
        if let Some(ttft) = call.time_to_first_token {
            series
                .time_to_first_token
                .get_or_init(|| {
                    self.time_to_first_token
                        .get_or_create(&ProviderLabels {
                            provider: series.provider.clone(),
                        })
                        .clone()
                })
                .observe(ttft.as_secs_f64());
        }
        let Some(response) = &call.response else {
            return;
        };
        let cost_labels = || CostLabels {
            provider: series.provider.clone(),
            model: series.model.clone(),
            feature: series.feature.clone(),
        };
        let fold = |l: CostLabels| CostLabels {
            provider: l.provider,
            model: OTHER.into(),
            feature: OTHER.into(),
        };
        match call.cost_pico_usd {
            Some(pico) => {
                let cost = series.cost.get_or_init(|| {
                    self.capped_series(&self.cost, &self.series.cost, cost_labels(), fold)
                });
                self.count_fold(cost, "sidetrace_cost_usd")
                    .inc_by(pico as f64 / 1e12);
            }
            None if pricing
                && (response.usage.input_tokens.is_some()
                    || response.usage.output_tokens.is_some()) =>
            {
                let unpriced = series.unpriced.get_or_init(|| {
                    self.capped_series(&self.unpriced, &self.series.unpriced, cost_labels(), fold)
                });
                self.count_fold(unpriced, "sidetrace_calls_unpriced").inc();
            }
            None => {}
        }
        let u = &response.usage;
        for (slot, (kind, value)) in series.tokens.iter().zip([
            ("input", u.input_tokens),
            ("output", u.output_tokens),
            ("cached_input", u.cached_input_tokens),
            ("cache_creation", u.cache_creation_input_tokens),
            ("reasoning", u.reasoning_tokens),
        ]) {
            if let Some(n) = value.filter(|n| *n > 0) {
                let tokens = slot.get_or_init(|| {
                    self.capped_series(
                        &self.tokens,
                        &self.series.tokens,
                        TokenLabels {
                            provider: series.provider.clone(),
                            model: series.model.clone(),
                            feature: series.feature.clone(),
                            kind,
                        },
                        |l| TokenLabels {
                            provider: l.provider,
                            model: OTHER.into(),
                            feature: OTHER.into(),
                            kind: l.kind,
                        },
                    )
                });
                self.count_fold(tokens, "sidetrace_tokens").inc_by(n);
            }
        }
        for (reason, n) in [
            ("oversize", response.oversize_events),
            ("malformed", response.malformed_events),
            ("truncated", u64::from(response.truncated)),
        ] {
            if n > 0 {
                self.events_skipped
                    .get_or_create(&ReasonLabels { reason })
                    .inc_by(n);
            }
        }
    }

    /// The series of `labels` in `family`, or of `fold(labels)` (the client-chosen values put
    /// to `other`) when the family's cap has no room for them.
    fn capped_series<L, M, C>(
        &self,
        family: &Family<L, M, C>,
        cap: &SeriesCap,
        labels: L,
        fold: impl FnOnce(L) -> L,
    ) -> Capped<M>
    where
        L: Clone + std::hash::Hash + Eq,
        M: Clone,
        C: prometheus_client::metrics::family::MetricConstructor<M>,
    {
        let folded = !cap.admit(&labels);
        let labels = if folded { fold(labels) } else { labels };
        Capped {
            metric: family.get_or_create(&labels).clone(),
            folded,
        }
    }

    /// The series' metric, a sample of a folded series counted in the overflow family (each
    /// sample, not each series).
    fn count_fold<'a, M>(&self, capped: &'a Capped<M>, family: &'static str) -> &'a M {
        if capped.folded {
            self.series_overflow
                .get_or_create(&FamilyLabels { family })
                .inc();
        }
        &capped.metric
    }

    pub fn call_finished_headers(&self, provider: &str, status: u16) {
        self.requests
            .get_or_create(&CallLabels {
                provider: provider.to_string(),
                status,
            })
            .inc();
    }

    /// A call on an inspected route whose response could not be read on the side.
    pub fn call_uninspected(&self, reason: &'static str) {
        self.calls_uninspected
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn observe_upstream_headers(&self, provider: &str, elapsed: Duration) {
        self.upstream_headers
            .get_or_create(&ProviderLabels {
                provider: provider.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Every metric in the OpenMetrics text format 1.0.0.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// Every metric in the format the client asked for with `accept`: OpenMetrics when it
    /// prefers it, else the classic Prometheus text format 0.0.4 (what `promtool check
    /// metrics` and older scrapers read). Returns the content type and the body.
    pub fn encode_for(&self, accept: Option<&str>) -> (&'static str, String) {
        if accept.is_some_and(prefers_openmetrics) {
            (OPENMETRICS_CONTENT_TYPE, self.encode())
        } else {
            (CLASSIC_CONTENT_TYPE, classic_text(&self.encode()))
        }
    }
}

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The label value client-labelled series fold into past a cap.
const OTHER: &str = "other";

/// Every reason a span can be lost for (`sidetrace_spans_dropped_total{reason}`).
const SPAN_DROP_REASONS: [&str; 8] = [
    "queue_full",
    "spool_full",
    "expired",
    "max_attempts",
    "corrupt",
    "spool_error",
    "encode_error",
    "shutdown",
];

/// The families with a cap on label sets, as `sidetrace_metric_series_overflow_total` names
/// them.
const SERIES_CAPPED_FAMILIES: [&str; 5] = [
    "sidetrace_tokens",
    "sidetrace_cost_usd",
    "sidetrace_calls_unpriced",
    "sidetrace_scores",
    "sidetrace_score_value",
];

/// Whether an `Accept` header asks for OpenMetrics at least as much as for the classic text
/// (`text/plain`, `text/*`, `*/*`): the highest `q` of each decides; a range with `q=0` is
/// refused, and OpenMetrics wins a tie only when it was named.
fn prefers_openmetrics(accept: &str) -> bool {
    let mut openmetrics: Option<f32> = None;
    let mut classic: Option<f32> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .and_then(|(_, v)| v.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let slot = match media.as_str() {
            "application/openmetrics-text" => &mut openmetrics,
            "text/plain" | "text/*" | "*/*" => &mut classic,
            _ => continue,
        };
        *slot = Some(slot.map_or(q, |old: f32| old.max(q)));
    }
    match (openmetrics, classic) {
        (Some(om), Some(text)) => om > 0.0 && om >= text,
        (Some(om), None) => om > 0.0,
        _ => false,
    }
}

/// The classic Prometheus text format 0.0.4 of an OpenMetrics text: a counter family's HELP
/// and TYPE name its `_total` samples (OpenMetrics names the family without the suffix, which
/// the classic parser reads as a family with no samples and a sample with no help), `# UNIT`
/// and `# EOF` go (the classic format has neither), and HELP text loses OpenMetrics' `\"`
/// escape, which the classic format does not have.
pub fn classic_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len() + 1024);
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, text)) = help.take() {
                push_help(&mut out, name, text);
            }
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "gauge" | "histogram" | "summary" => (name.to_string(), kind),
                "info" | "stateset" => (format!("{name}_info"), "gauge"),
                _ => (name.to_string(), "untyped"),
            };
            if let Some((_, text)) = help.take() {
                push_help(&mut out, &name, text);
            }
            out.push_str("# TYPE ");
            out.push_str(&name);
            out.push(' ');
            out.push_str(kind);
            out.push('\n');
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
        } else {
            if let Some((name, text)) = help.take() {
                push_help(&mut out, name, text);
            }
            out.push_str(line);
            out.push('\n');
        }
    }
    if let Some((name, text)) = help {
        push_help(&mut out, name, text);
    }
    out
}

fn push_help(out: &mut String, name: &str, text: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    out.push_str(&text.replace("\\\"", "\""));
    out.push('\n');
}

/// Distinct label sets one family has given a series of their own, at most `max`.
struct SeriesCap {
    seen: Mutex<HashSet<u64>>,
    max: usize,
}

impl SeriesCap {
    fn new(max: usize) -> SeriesCap {
        SeriesCap {
            seen: Mutex::new(HashSet::new()),
            max,
        }
    }

    /// Whether `labels` has (or may now get) a series of its own. Keyed by a 64-bit hash: a
    /// collision only lets one extra label set share a slot, never grows the family past the
    /// cap.
    fn admit<L: std::hash::Hash>(&self, labels: &L) -> bool {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let key = BuildHasherDefault::<DefaultHasher>::default().hash_one(labels);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(&key) {
            return true;
        }
        if seen.len() < self.max {
            seen.insert(key);
            return true;
        }
        false
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

/// A series found under its family's cap, and whether it is the family's `other` one.
struct Capped<M> {
    metric: M,
    folded: bool,
}

/// The metric series that calls of one provider, gateway key, model and feature update, each
/// found (and admitted under its family's cap) on first use and then kept: a call updates its
/// counters without building, hashing and looking up a label set in each of five families
/// (about 5,000 instructions a call).
pub(crate) struct CallSeries {
    provider: String,
    key: String,
    /// The model and feature as calls name them, and as labels (bounded: see [`LabelCap`]).
    called: (String, String),
    model: String,
    feature: String,
    /// By [`crate::call::record::Outcome`].
    calls: [OnceLock<Counter>; crate::call::record::Outcome::COUNT],
    time_to_first_token: OnceLock<Histogram>,
    cost: OnceLock<Capped<Counter<f64, std::sync::atomic::AtomicU64>>>,
    unpriced: OnceLock<Capped<Counter>>,
    /// Input, output, cached input, cache creation, reasoning.
    tokens: [OnceLock<Capped<Counter>>; 5],
}

impl CallSeries {
    fn names(&self, provider: &str, key: &str, model: &str, feature: &str) -> bool {
        self.provider == provider
            && self.key == key
            && self.called.0 == model
            && self.called.1 == feature
    }
}

/// Kinds of calls whose series [`CallMetrics`] keeps; a kind past it is looked up each time
/// (its labels are bounded all the same, only the lookup is not saved).
const MAX_CALL_SERIES: usize = 4096;
/// The longest model or feature name a kept series is found by (as [`LabelCap`] cuts label
/// values at 100 characters): a client's longer name is looked up each time, never kept.
const MAX_KEPT_NAME_BYTES: usize = 256;

/// The metrics a finished call updates, as a recorder sink. Model and feature label values are
/// bounded (see [`LabelCap`]).
pub struct CallMetrics {
    metrics: Arc<Metrics>,
    models: LabelCap,
    features: LabelCap,
    pricing: bool,
    /// By a hash of provider, key, model and feature (checked against the series' own names).
    series: Mutex<HashMap<u64, Arc<CallSeries>>>,
}

impl CallMetrics {
    /// `feature_labels`: the features allowed as label values (empty: the first
    /// `max_feature_labels` seen). `pricing`: calls are priced, so a missing price is counted.
    pub fn new(
        metrics: Arc<Metrics>,
        feature_labels: &[String],
        max_feature_labels: usize,
        pricing: bool,
    ) -> Self {
        CallMetrics {
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
            pricing,
            series: Mutex::new(HashMap::new()),
        }
    }

    /// The series of calls like `call`, kept from an earlier call when there was one.
    fn series_of(&self, call: &CallRecord) -> Arc<CallSeries> {
        let provider = call.provider.as_str();
        let key = call.metadata.key.as_deref().unwrap_or_default();
        let model = call.model().unwrap_or("unknown");
        let feature = call.metadata.feature.as_deref().unwrap_or("");
        if model.len() > MAX_KEPT_NAME_BYTES || feature.len() > MAX_KEPT_NAME_BYTES {
            return Arc::new(self.new_series(provider, key, model, feature));
        }
        let hash = series_hash(provider, key, model, feature);
        let mut kept = self.series.lock().unwrap_or_else(|e| e.into_inner());
        match kept.get(&hash) {
            Some(s) if s.names(provider, key, model, feature) => return s.clone(),
            // Another kind of call with the same hash: its series stays, this one is not kept.
            Some(_) => return Arc::new(self.new_series(provider, key, model, feature)),
            None => {}
        }
        let series = Arc::new(self.new_series(provider, key, model, feature));
        if kept.len() < MAX_CALL_SERIES {
            kept.insert(hash, series.clone());
        }
        series
    }

    fn new_series(&self, provider: &str, key: &str, model: &str, feature: &str) -> CallSeries {
        CallSeries {
            provider: provider.to_string(),
            key: key.to_string(),
            called: (model.to_string(), feature.to_string()),
            model: self.models.label(model),
            feature: self.features.label(feature),
            calls: Default::default(),
            time_to_first_token: OnceLock::new(),
            cost: OnceLock::new(),
            unpriced: OnceLock::new(),
            tokens: Default::default(),
        }
    }
}

fn series_hash(provider: &str, key: &str, model: &str, feature: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one((provider, key, model, feature))
}

impl Sink for CallMetrics {
    fn record(&self, call: &CallRecord, _span: &SpanRecord) {
        let series = self.series_of(call);
        self.metrics.call_recorded(call, &series, self.pricing);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        call::record::{Outcome, RequestInfo},
        format::{ResponseRecord, Usage},
    };

    /// A finished chat call of `model` that used `tokens` input tokens.
    fn call(model: &str, tokens: u64) -> CallRecord {
        CallRecord {
            request: RequestInfo {
                model: Some(model.into()),
                parsed: true,
                ..RequestInfo::default()
            },
            response: Some(ResponseRecord {
                usage: Usage {
                    input_tokens: Some(tokens),
                    ..Usage::default()
                },
                ..ResponseRecord::default()
            }),
            ..CallRecord::test_chat()
        }
    }

    fn record(m: &CallMetrics, call: &CallRecord) {
        m.metrics.call_recorded(call, &m.series_of(call), m.pricing);
    }

    fn input_tokens(metrics: &Metrics, model: &str) -> Option<String> {
        let prefix = format!(
            r#"sidetrace_tokens_total{{provider="openai",model="{model}",feature="",kind="input"}} "#
        );
        let page = metrics.encode();
        page.lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
    }

    fn call_metrics() -> CallMetrics {
        CallMetrics::new(Arc::new(Metrics::with_series_cap(100)), &[], 100, false)
    }

    #[test]
    fn scores_past_the_cap_go_to_other_and_each_is_counted() {
        let metrics = Metrics::with_series_cap(1);
        metrics.score_recorded("helpfulness", "support", "", Some(0.5));
        metrics.score_recorded("tone", "support", "", Some(1.0));
        metrics.score_recorded("tone", "support", "", None);
        let page = metrics.encode();
        let value = |prefix: &str| {
            page.lines()
                .find_map(|l| l.strip_prefix(prefix).map(str::to_string))
                .unwrap_or_else(|| panic!("{prefix} in {page}"))
        };
        assert_eq!(
            value(r#"sidetrace_scores_total{name="helpfulness",feature="support",label=""} "#),
            "1"
        );
        assert_eq!(
            value(r#"sidetrace_scores_total{name="other",feature="other",label="other"} "#),
            "2"
        );
        assert_eq!(
            value(r#"sidetrace_metric_series_overflow_total{family="sidetrace_scores"} "#),
            "2"
        );
        assert_eq!(
            value(r#"sidetrace_metric_series_overflow_total{family="sidetrace_score_value"} "#),
            "1"
        );
    }

    #[test]
    fn outcomes_index_a_table_of_their_count() {
        let all = [
            Outcome::Completed,
            Outcome::UpstreamError,
            Outcome::Timeout,
            Outcome::Cancelled,
            Outcome::GatewayError,
        ];
        let mut seen: Vec<usize> = all.iter().map(|o| o.index()).collect();
        seen.sort();
        assert_eq!(seen, (0..Outcome::COUNT).collect::<Vec<_>>());
    }

    #[test]
    fn a_kind_of_call_is_counted_in_its_kept_series() {
        let m = call_metrics();
        record(&m, &call("gpt-4o", 3));
        record(&m, &call("gpt-4o", 4));
        assert_eq!(input_tokens(&m.metrics, "gpt-4o").as_deref(), Some("7"));
        assert_eq!(m.series.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_kept_series_under_the_same_hash_is_never_taken_for_another_kind() {
        let m = call_metrics();
        // The series of `gpt-4o-mini`, filed under the hash of `gpt-4o` (a collision).
        let other = Arc::new(m.new_series("openai", "", "gpt-4o-mini", ""));
        let hash = series_hash("openai", "", "gpt-4o", "");
        m.series.lock().unwrap().insert(hash, other);
        record(&m, &call("gpt-4o", 5));
        assert_eq!(input_tokens(&m.metrics, "gpt-4o").as_deref(), Some("5"));
        assert_eq!(input_tokens(&m.metrics, "gpt-4o-mini"), None);
        assert_eq!(m.series.lock().unwrap().len(), 1);
    }

    #[test]
    fn past_the_cap_or_with_a_long_name_a_kind_is_counted_but_not_kept() {
        let m = call_metrics();
        let long = "m".repeat(MAX_KEPT_NAME_BYTES + 1);
        record(&m, &call(&long, 2));
        assert_eq!(
            input_tokens(&m.metrics, &"m".repeat(100)).as_deref(),
            Some("2")
        );
        assert!(m.series.lock().unwrap().is_empty());
        {
            let mut kept = m.series.lock().unwrap();
            let filler = Arc::new(m.new_series("openai", "", "filler", ""));
            let hash = series_hash("openai", "", "gpt-4o", "");
            for n in (0..).filter(|&n| n != hash).take(MAX_CALL_SERIES) {
                kept.insert(n, filler.clone());
            }
        }
        record(&m, &call("gpt-4o", 6));
        record(&m, &call("gpt-4o", 1));
        assert_eq!(input_tokens(&m.metrics, "gpt-4o").as_deref(), Some("7"));
        assert_eq!(m.series.lock().unwrap().len(), MAX_CALL_SERIES);
    }
}
