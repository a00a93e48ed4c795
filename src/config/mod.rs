//! The gateway's configuration: TOML with embedded defaults, unknown keys refused, environment
//! variables on top.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

pub mod prices;
pub mod providers;

use providers::{ProviderOverride, ProviderSpec, builtin_specs};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `sidetrace=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_string(),
        }
    }
}

/// Default timeouts for every provider; a provider file or `[providers.<name>.timeouts]` can
/// override each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutConfig {
    /// From sending the request to receiving the response headers. Non-streamed calls to
    /// reasoning models can think for minutes before the headers come.
    pub response_headers_ms: u64,
    /// Longest silence between two body frames of a response.
    pub idle_ms: u64,
    /// Whole call, from request to last byte.
    pub total_ms: u64,
    /// Client side, not per provider: a new connection must send its first request's headers
    /// within this long, and a kept-alive HTTP/1.1 connection its next request's.
    pub request_headers_ms: u64,
    /// Client side: longest silence between two frames of a request body (408 when exceeded).
    pub request_body_idle_ms: u64,
    /// Client side: the whole request body must arrive within this long (408 when exceeded).
    pub request_body_total_ms: u64,
    /// Client side: a connection with no request in flight for this long is closed gracefully.
    pub idle_connection_ms: u64,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            response_headers_ms: 600_000,
            idle_ms: 300_000,
            total_ms: 1_800_000,
            request_headers_ms: 30_000,
            request_body_idle_ms: 30_000,
            request_body_total_ms: 120_000,
            idle_connection_ms: 90_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsRoots {
    /// Mozilla's roots, bundled in the binary: the same in every container.
    Webpki,
    /// The operating system's store (corporate TLS-inspecting proxies).
    Native,
    Both,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub connect_timeout_ms: u64,
    pub tls_roots: TlsRoots,
    /// An extra PEM file of CA certificates to trust (private upstreams, test servers).
    pub extra_ca_file: Option<PathBuf>,
    /// Streams the gateway puts on one HTTP/2 connection before it opens another. Most servers
    /// allow 100; above their limit, requests would queue inside one connection.
    pub http2_max_streams_per_connection: usize,
    /// Upper bound on HTTP/2 connections per upstream host.
    pub http2_max_connections: usize,
    pub pool_idle_timeout_ms: u64,
    pub pool_max_idle_per_host: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout_ms: 5_000,
            tls_roots: TlsRoots::Webpki,
            extra_ca_file: None,
            http2_max_streams_per_connection: 100,
            http2_max_connections: 64,
            pool_idle_timeout_ms: 90_000,
            pool_max_idle_per_host: 512,
        }
    }
}

/// Reading responses on the side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InspectConfig {
    /// Add `stream_options.include_usage` to OpenAI-style streams that lack it (on providers that
    /// accept it), and remove the extra usage chunk from what the client receives.
    pub inject_include_usage: bool,
    /// Largest single event (or non-streamed JSON body) the parser keeps; larger ones pass
    /// through unread and are counted.
    pub max_event_bytes: usize,
    /// When the client hangs up mid-stream: `cancel` the upstream call, or `finish` reading it
    /// in the background to record the full usage (the provider bills it either way).
    pub on_client_disconnect: OnDisconnect,
}

impl Default for InspectConfig {
    fn default() -> Self {
        InspectConfig {
            inject_include_usage: true,
            max_event_bytes: 4 * 1024 * 1024,
            on_client_disconnect: OnDisconnect::Cancel,
        }
    }
}

/// A configured redaction pattern: matches are replaced with `[NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactPattern {
    pub name: String,
    pub pattern: String,
}

/// How much of each call's content reaches its span.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// none, metadata (counts, sizes, tool names), redacted or full. A caller can lower it per
    /// call with `x-sidetrace-capture`, never raise it.
    pub level: CaptureLevel,
    /// Captured text per attribute, in bytes; longer text is cut (the JSON stays valid).
    pub max_bytes: usize,
    /// Extra patterns replaced at the `redacted` level.
    pub redact_patterns: Vec<RedactPattern>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            level: CaptureLevel::Metadata,
            max_bytes: 16 * 1024,
            redact_patterns: Vec::new(),
        }
    }
}

/// Trace grouping, tool spans read from the wire, and agent loops grouped without an SDK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraceConfig {
    /// Key for deriving trace ids from `x-sidetrace-trace-id` values that are not 32 hex
    /// digits (HMAC-SHA256). Every replica must share it; empty means a plain SHA-256.
    pub grouping_key: String,
    /// Emit `execute_tool` spans for tool calls a response asked for and a later request
    /// answered, and join agent loops that send no trace header into one trace.
    pub tool_spans: bool,
    /// Tool calls awaiting their result (and finished tool spans held for the app's own), at
    /// most; the oldest is evicted (and counted) past it.
    pub tool_pending_max_entries: usize,
    /// Bytes those entries may hold (ids, names, captured arguments and results).
    pub tool_pending_max_bytes: usize,
    /// A tool call not answered within this long ends as a span marked unanswered.
    pub tool_unanswered_ms: u64,
    /// Once an app sends its own spans over OTLP, a finished tool span waits this long for the
    /// app's `execute_tool` span of the same call id (which wins) before it is emitted. Longer
    /// than the OpenTelemetry SDK batch processor's 5 s delay.
    pub tool_app_span_grace_ms: u64,
    /// Responses API response ids remembered (for `previous_response_id`), at most; as many
    /// answered tool call ids are kept, so a client's retry of an answer still joins its loop.
    pub response_ids_max_entries: usize,
}

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig {
            grouping_key: String::new(),
            tool_spans: true,
            tool_pending_max_entries: 10_000,
            tool_pending_max_bytes: 16 * 1024 * 1024,
            tool_unanswered_ms: 10 * 60 * 1000,
            tool_app_span_grace_ms: 10_000,
            response_ids_max_entries: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExportProtocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "http/json")]
    HttpJson,
}

impl ExportProtocol {
    /// The protocol for an `OTEL_EXPORTER_OTLP_PROTOCOL` value.
    pub fn parse(value: &str) -> Option<ExportProtocol> {
        match value.trim() {
            "grpc" => Some(ExportProtocol::Grpc),
            "http/protobuf" => Some(ExportProtocol::HttpProtobuf),
            "http/json" => Some(ExportProtocol::HttpJson),
            _ => None,
        }
    }
}

/// The value of `OTEL_SEMCONV_STABILITY_OPT_IN` that asks for the latest GenAI names.
pub const OPT_IN_GEN_AI_LATEST: &str = "gen_ai_latest_experimental";

/// The values `[export] conventions` may list.
pub const EXPORT_CONVENTIONS: [&str; 2] = ["gen_ai", "openinference"];

/// Span export over OTLP. Off unless an endpoint is set here or in `OTEL_EXPORTER_OTLP_ENDPOINT`
/// / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// gRPC: `http://collector:4317`. HTTP: `http://collector:4318` (`/v1/traces` is added).
    pub endpoint: String,
    /// `grpc`, `http/protobuf` or `http/json`; `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` overrides it.
    pub protocol: ExportProtocol,
    /// Per export attempt.
    pub timeout_ms: u64,
    /// `gzip` or `none`; empty: `OTEL_EXPORTER_OTLP_(TRACES_)COMPRESSION`.
    pub compression: String,
    /// Extra headers (or gRPC metadata), e.g. an API key of a tracing backend; empty:
    /// `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS`.
    pub headers: BTreeMap<String, String>,
    /// Finished spans waiting for the exporter; past it, spans spill to the spool at once.
    pub queue_spans: usize,
    pub batch_max_spans: usize,
    /// Estimated encoded size per batch; keep it under the collector's 4 MiB gRPC default.
    pub batch_max_bytes: usize,
    /// A batch leaves at most this long after its first span arrived.
    pub batch_delay_ms: u64,
    /// On shutdown, time left to export what is queued; the rest is spooled.
    pub shutdown_export_ms: u64,
    /// Longest wait between replay attempts while the collector is down (jittered backoff).
    pub replay_backoff_max_ms: u64,
    /// Set from the environment: an endpoint variable was present.
    #[serde(skip)]
    pub endpoint_from_env: bool,
    /// Attribute conventions of the gateway's spans: `gen_ai` (always), and `openinference` to
    /// add the OpenInference attributes Phoenix reads first (exact cost, metadata, prompt).
    pub conventions: Vec<String>,
    /// Set from the environment: `OTEL_SEMCONV_STABILITY_OPT_IN` lists
    /// `gen_ai_latest_experimental`, so the gateway's spans leave with the latest GenAI names.
    #[serde(skip)]
    pub gen_ai_latest: bool,
    /// Set from the environment: the variable that turned export off (`OTEL_SDK_DISABLED=true`,
    /// `OTEL_TRACES_EXPORTER=none`); it wins over any endpoint.
    #[serde(skip)]
    pub disabled_by_env: Option<String>,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            endpoint: String::new(),
            protocol: ExportProtocol::Grpc,
            timeout_ms: 5_000,
            compression: String::new(),
            headers: BTreeMap::new(),
            queue_spans: 65_536,
            batch_max_spans: 64,
            batch_max_bytes: 3 * 1024 * 1024,
            batch_delay_ms: 1_000,
            shutdown_export_ms: 5_000,
            replay_backoff_max_ms: 30_000,
            conventions: vec!["gen_ai".into()],
            endpoint_from_env: false,
            gen_ai_latest: false,
            disabled_by_env: None,
        }
    }
}

impl ExportConfig {
    pub fn enabled(&self) -> bool {
        self.disabled_by_env.is_none() && (!self.endpoint.is_empty() || self.endpoint_from_env)
    }

    /// Why export is off, for the log line; `None` when it is on.
    pub fn off_reason(&self) -> Option<String> {
        match &self.disabled_by_env {
            Some(var) => Some(format!("span export off ({var}): spans stay local")),
            None if !self.enabled() => Some("no OTLP endpoint configured: spans stay local".into()),
            None => None,
        }
    }
}

/// The local spool that keeps spans the collector could not take yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Encoded span batches kept at most; past it the oldest are dropped (and counted).
    pub max_bytes: u64,
    /// Batches older than this are dropped (and counted).
    pub max_age_ms: u64,
    /// A batch that failed this many exports is dropped (and counted), so it cannot block the rest.
    pub max_attempts: u32,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            max_bytes: 1024 * 1024 * 1024,
            max_age_ms: 7 * 24 * 3600 * 1000,
            max_attempts: 100,
        }
    }
}

/// The local trace store behind the JSON API and the web UI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Keep every finished span in `<data_dir>/traces` and serve `/api/traces` and `/ui`.
    pub enabled: bool,
    /// Stored span bytes kept at most; past it the oldest traces are evicted whole (counted).
    pub max_bytes: u64,
    /// Traces older than this are evicted (counted): a number with `m`, `h` or `d`, e.g. `7d`.
    /// The cost aggregates are kept as long.
    pub max_age: String,
    /// The content the store keeps: none, metadata, redacted or full. It stays on this machine;
    /// `[capture] level` is what leaves it with the export.
    pub capture: CaptureLevel,
    /// Traces one page of a text search (`/api/traces?q=`) reads at most before it answers
    /// with what it found and where it stopped.
    pub search_scan_traces: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            enabled: true,
            max_bytes: 1024 * 1024 * 1024,
            max_age: "7d".into(),
            capture: CaptureLevel::Redacted,
            search_scan_traces: 5_000,
        }
    }
}

impl StoreConfig {
    /// `max_age` in seconds.
    pub fn max_age_secs(&self) -> Result<u64, ConfigError> {
        parse_duration_secs(&self.max_age).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "store.max_age must be a number with m, h or d (e.g. 7d), not {:?}",
                self.max_age
            ))
        })
    }
}

/// The most `ingest.max_spans_per_request` may be: the trace store's queue holds as many.
pub const MAX_SPANS_PER_REQUEST: usize = 32 * 1024;

/// `[ingest]`: the OTLP receiver, so an app's OpenTelemetry SDK can use the sidecar as its local
/// collector (`OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    pub enabled: bool,
    /// OTLP/HTTP (`POST /v1/traces`, protobuf or JSON).
    pub http_listen: String,
    /// OTLP/gRPC (`TraceService/Export`).
    pub grpc_listen: String,
    /// Largest export request, in bytes, before and after gzip (413 / RESOURCE_EXHAUSTED).
    pub max_request_bytes: u64,
    /// Most spans in one request (413 / RESOURCE_EXHAUSTED above it; nothing of it is taken).
    pub max_spans_per_request: usize,
    /// Export requests read and handled at once (their bodies are in memory: at most this many
    /// times `max_request_bytes`, plus their decoded spans); more wait for a slot.
    pub max_concurrent_requests: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            enabled: true,
            http_listen: "127.0.0.1:4318".into(),
            grpc_listen: "127.0.0.1:4317".into(),
            max_request_bytes: 8 * 1024 * 1024,
            max_spans_per_request: 20_000,
            max_concurrent_requests: 16,
        }
    }
}

impl IngestConfig {
    pub fn http_addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_addr("ingest.http_listen", &self.http_listen)
    }

    pub fn grpc_addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_addr("ingest.grpc_listen", &self.grpc_listen)
    }
}

/// A secret from the config (a token): compared and used, never printed. `Debug` shows whether
/// it is set, so a config dumped into a log line cannot leak it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Secret(unset)"
        } else {
            "Secret(set)"
        })
    }
}

/// `[admin]`: who may use the admin listener (the trace and cost API, the UI's data, scores).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token every admin route but `/healthz` and `/readyz` requires; empty: none.
    /// `SIDETRACE_ADMIN_TOKEN` overrides it.
    pub token: Secret,
    /// A file holding the token (a mounted Secret); `SIDETRACE_ADMIN_TOKEN_FILE`.
    pub token_file: Option<PathBuf>,
    /// Serve `/metrics` without the token (Prometheus scrapers rarely send one).
    pub open_metrics: bool,
    /// Start with no token on a non-loopback `admin_listen` anyway (logged as a warning).
    pub allow_unauthenticated_admin: bool,
}

impl AdminConfig {
    /// The token in force: `token`, or the first line of `token_file`; `None` when neither.
    pub fn resolved_token(&self) -> Result<Option<Secret>, ConfigError> {
        match (&self.token_file, self.token.is_empty()) {
            (Some(_), false) => Err(ConfigError::Invalid(
                "admin.token and admin.token_file are both set; keep one".into(),
            )),
            (Some(path), true) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                let token = text.lines().next().unwrap_or("").trim();
                if token.is_empty() {
                    return Err(ConfigError::Invalid(format!(
                        "admin.token_file {} is empty",
                        path.display()
                    )));
                }
                Ok(Some(Secret::new(token)))
            }
            (None, false) => Ok(Some(self.token.clone())),
            (None, true) => Ok(None),
        }
    }
}

/// `[tls]`: HTTPS on the gateway's own listeners (the proxy, and the admin one unless
/// `admin = false`), HTTP/2 or HTTP/1.1 by ALPN. The files are read again on SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM: the certificate chain, leaf first.
    pub cert_file: Option<PathBuf>,
    /// PEM: its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// Serve the admin listener over TLS too (its probes then need `scheme: HTTPS`).
    pub admin: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert_file: None,
            key_file: None,
            admin: true,
        }
    }
}

/// `15m`, `24h`, `7d` in seconds; `None` for anything else (or 0).
pub fn parse_duration_secs(text: &str) -> Option<u64> {
    let text = text.trim();
    let (n, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    let secs = match unit {
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    (secs > 0).then_some(secs)
}

/// Cost reporting back to the app and on metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CostConfig {
    /// Price calls at all. Off: no cost on spans, headers, metrics or the cost API (tokens are
    /// still counted), and non-streamed responses are not held to add cost headers.
    pub enabled: bool,
    /// Non-streamed responses up to this size are read whole before the headers go out, so
    /// they can carry `x-sidetrace-cost-usd` and token counts; larger ones stream without them.
    pub response_headers_max_body_bytes: usize,
    /// Feature values used as metric labels; empty: the first `max_metric_features` seen, the
    /// rest as `other` (bounds cardinality).
    pub metric_features: Vec<String>,
    pub max_metric_features: usize,
    /// Distinct label sets each metric labelled by model, feature or score name may hold (the
    /// product of the per-label bounds can be large); past it new ones count under `other`
    /// (`sidetrace_metric_series_overflow_total`).
    pub max_metric_series: usize,
}

impl Default for CostConfig {
    fn default() -> Self {
        CostConfig {
            enabled: true,
            response_headers_max_body_bytes: 1024 * 1024,
            metric_features: Vec::new(),
            max_metric_features: 100,
            max_metric_series: 2_000,
        }
    }
}

/// The whole configuration file. Every key has a default, so an empty file is valid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: String,
    pub admin_listen: String,
    /// Provider that serves bare `/v1/...` paths; empty for none.
    pub default_provider: String,
    /// Extra provider files (`*.toml`), added to or replacing the built-in ones by name.
    pub providers_dir: Option<PathBuf>,
    /// Calls in flight at once, streams included; above it the gateway answers 503 at once.
    pub max_concurrent_requests: usize,
    pub max_request_body_bytes: u64,
    /// On SIGTERM, how long open calls may take to finish before they are cut.
    pub shutdown_grace_ms: u64,
    /// Request bytes held in memory at once by inspected routes, over all calls (503 above it).
    pub max_buffered_request_bytes: u64,
    /// Open client connections; 0: derived from the open-file limit. At the cap the gateway
    /// stops accepting until a connection closes.
    pub max_connections: usize,
    pub log: LogConfig,
    pub timeouts: TimeoutConfig,
    pub upstream: UpstreamConfig,
    pub inspect: InspectConfig,
    pub capture: CaptureConfig,
    pub trace: TraceConfig,
    /// Where the spool (and later the local trace store) lives. Empty: `$XDG_STATE_HOME/sidetrace`,
    /// else `$HOME/.local/state/sidetrace`, else `/var/lib/sidetrace`.
    pub data_dir: String,
    pub export: ExportConfig,
    pub spool: SpoolConfig,
    pub sampling: SamplingConfig,
    pub cost: CostConfig,
    pub budgets: Vec<BudgetConfig>,
    /// Gateway keys for clients; when any is set, every call must present one.
    pub keys: Vec<KeyConfig>,
    pub store: StoreConfig,
    pub ingest: IngestConfig,
    pub admin: AdminConfig,
    pub tls: TlsConfig,
    /// Documented by example (commented) in config/sidetrace.toml, so not compared there.
    #[serde(skip_serializing)]
    pub providers: BTreeMap<String, ProviderOverride>,
    /// Environment values that were ignored, as the OpenTelemetry spec asks of unknown values
    /// (an exporter the gateway does not have, a boolean that is not one): logged at start.
    #[serde(skip)]
    pub env_warnings: Vec<String>,
}

/// What to do with the upstream call when the client goes away mid-stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDisconnect {
    /// Drop the upstream request at once (stops generation and its cost).
    Cancel,
    /// Read the rest of the upstream response in the background to record full usage.
    Finish,
}

/// How much of a call's content reaches its span.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureLevel {
    None,
    /// Tool names, message counts and sizes; no text.
    Metadata,
    /// Content with personal data and secrets replaced by typed placeholders.
    Redacted,
    Full,
}

impl CaptureLevel {
    pub fn parse(s: &str) -> Option<CaptureLevel> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Some(CaptureLevel::None),
            "metadata" => Some(CaptureLevel::Metadata),
            "redacted" => Some(CaptureLevel::Redacted),
            "full" => Some(CaptureLevel::Full),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CaptureLevel::None => "none",
            CaptureLevel::Metadata => "metadata",
            CaptureLevel::Redacted => "redacted",
            CaptureLevel::Full => "full",
        }
    }
}

/// `[sampling]`: tail sampling of whole traces before export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    pub enabled: bool,
    /// A trace is decided once no span of it arrived for this long.
    pub decision_wait_ms: u64,
    pub keep_errors: bool,
    /// Keep traces with a span at least this slow; 0 turns the rule off.
    pub latency_threshold_ms: u64,
    /// Keep traces with a span costing at least this much (USD, `cost.usd`); 0 turns it off.
    pub cost_threshold_usd: f64,
    /// Share of the other traces kept, 0.0 to 1.0.
    pub keep_fraction: f64,
    /// Traces held at once; past it, new spans are kept without waiting (memory stays bounded).
    pub max_traces: usize,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            enabled: false,
            decision_wait_ms: 10_000,
            keep_errors: true,
            latency_threshold_ms: 0,
            cost_threshold_usd: 0.0,
            keep_fraction: 0.1,
            max_traces: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    Hour,
    Day,
    Week,
    Month,
}

impl Window {
    pub fn secs(self) -> u64 {
        match self {
            Window::Hour => 3600,
            Window::Day => 86_400,
            Window::Week => 7 * 86_400,
            Window::Month => 30 * 86_400,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Week => "week",
            Window::Month => "month",
        }
    }
}

/// One `[[keys]]` entry: a gateway key a client presents. Only the key's SHA-256 is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Shown on spans (`sidetrace.key.name`) and metrics (`key`), and named by budgets.
    pub name: String,
    /// The SHA-256 of the key, 64 hex digits (`sidetrace new-key` prints a key and this).
    pub sha256: String,
    /// The feature the key's calls are recorded under, whatever their headers say.
    #[serde(default)]
    pub feature: Option<String>,
    /// The user the key's calls are recorded under, whatever their headers or body say.
    #[serde(default)]
    pub user: Option<String>,
    /// Providers (names, as in providers/) the key may call; empty: all.
    #[serde(default)]
    pub providers: Vec<String>,
    /// Models the key may ask for: exact names, or prefixes ending in `*`; empty: all.
    #[serde(default)]
    pub models: Vec<String>,
    /// From then on the key is refused: a TOML date (`2027-01-31`, midnight UTC) or date-time
    /// with an offset (`2027-01-31T12:00:00Z`).
    #[serde(default)]
    pub expires: Option<toml::value::Datetime>,
}

/// Seconds since the Unix epoch of a TOML date (midnight UTC) or offset date-time; `None` for a
/// local date-time or a bare time, which name no instant.
pub fn datetime_unix_secs(d: &toml::value::Datetime) -> Option<u64> {
    let date = d.date?;
    let (time, offset_minutes) = match (d.time, d.offset) {
        (None, None) => (None, 0),
        (Some(t), Some(toml::value::Offset::Z)) => (Some(t), 0),
        (Some(t), Some(toml::value::Offset::Custom { minutes })) => (Some(t), i64::from(minutes)),
        _ => return None,
    };
    // Days from 1970-01-01 to the civil date (Howard Hinnant's days_from_civil).
    let (y, m, day) = (
        i64::from(date.year) - i64::from(date.month <= 2),
        i64::from(date.month),
        i64::from(date.day),
    );
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs_of_day = time.map_or(0, |t| {
        i64::from(t.hour) * 3600 + i64::from(t.minute) * 60 + i64::from(t.second.unwrap_or(0))
    });
    u64::try_from(days * 86_400 + secs_of_day - offset_minutes * 60).ok()
}

/// One `[[budgets]]` entry of the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    pub name: String,
    /// Calls with this `x-sidetrace-feature` count; empty or absent: any feature.
    #[serde(default)]
    pub feature: Option<String>,
    /// Calls with this user id count; absent: any user.
    #[serde(default)]
    pub user: Option<String>,
    /// Calls made with this gateway key (`[[keys]]` name) count; absent: any key or none.
    #[serde(default)]
    pub key: Option<String>,
    /// USD as a decimal string, e.g. "25.00".
    pub limit_usd: String,
    pub window: Window,
    /// What a call that cannot be priced counts as (and what a call reserves before the budget
    /// has seen a priced call), in USD; absent: the budget's estimate.
    #[serde(default)]
    pub unpriced_call_usd: Option<String>,
}

impl PartialEq for ProviderOverride {
    fn eq(&self, other: &Self) -> bool {
        format!("{self:?}") == format!("{other:?}")
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:4000".to_string(),
            admin_listen: "127.0.0.1:4001".to_string(),
            default_provider: "openai".to_string(),
            providers_dir: None,
            max_concurrent_requests: 10_000,
            max_request_body_bytes: 32 * 1024 * 1024,
            shutdown_grace_ms: 30_000,
            max_buffered_request_bytes: 256 * 1024 * 1024,
            max_connections: 0,
            log: LogConfig::default(),
            timeouts: TimeoutConfig::default(),
            upstream: UpstreamConfig::default(),
            inspect: InspectConfig::default(),
            capture: CaptureConfig::default(),
            trace: TraceConfig::default(),
            data_dir: String::new(),
            export: ExportConfig::default(),
            spool: SpoolConfig::default(),
            sampling: SamplingConfig::default(),
            cost: CostConfig::default(),
            budgets: Vec::new(),
            keys: Vec::new(),
            store: StoreConfig::default(),
            ingest: IngestConfig::default(),
            admin: AdminConfig::default(),
            tls: TlsConfig::default(),
            providers: BTreeMap::new(),
            env_warnings: Vec::new(),
        }
    }
}

/// Environment variables read by [`Config::apply_env`], for the docs and `--help`.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("SIDETRACE_CONFIG", "config file path (same as --config)"),
    ("SIDETRACE_LISTEN", "proxy listen address (listen)"),
    (
        "SIDETRACE_ADMIN_LISTEN",
        "admin listen address (admin_listen)",
    ),
    (
        "SIDETRACE_DEFAULT_PROVIDER",
        "provider for bare /v1 paths (default_provider)",
    ),
    (
        "SIDETRACE_PROVIDERS_DIR",
        "extra provider files (providers_dir)",
    ),
    (
        "SIDETRACE_LOG",
        "log filter, e.g. debug (log.level); RUST_LOG is read when unset",
    ),
    ("SIDETRACE_LOG_FORMAT", "text or json (log.format)"),
    (
        "SIDETRACE_CAPTURE_LEVEL",
        "none, metadata, redacted or full (capture.level)",
    ),
    ("SIDETRACE_DATA_DIR", "spool directory (data_dir)"),
    (
        "SIDETRACE_ADMIN_TOKEN, SIDETRACE_ADMIN_TOKEN_FILE",
        "bearer token of the admin listener, or a file holding it (admin.token, admin.token_file)",
    ),
    (
        "SIDETRACE_INGEST_HTTP_LISTEN, SIDETRACE_INGEST_GRPC_LISTEN",
        "OTLP receiver addresses (ingest.http_listen, ingest.grpc_listen)",
    ),
    (
        "SIDETRACE_INGEST_ENABLED",
        "true or false: the OTLP receiver (ingest.enabled)",
    ),
    (
        "OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT",
        "turns span export on (export.endpoint)",
    ),
    (
        "OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL",
        "grpc, http/protobuf or http/json (export.protocol)",
    ),
    (
        "OTEL_SEMCONV_STABILITY_OPT_IN",
        "gen_ai_latest_experimental: export the latest GenAI names, not v1.41's (docs/conventions.md)",
    ),
    (
        "OTEL_SDK_DISABLED",
        "true turns span export off (the local trace store stays)",
    ),
    (
        "OTEL_TRACES_EXPORTER",
        "otlp (default) or none; a list without otlp turns span export off",
    ),
    (
        "OTEL_EXPORTER_OTLP_[TRACES_]HEADERS, _TIMEOUT, _COMPRESSION",
        "read by the exporter when the config leaves them empty",
    ),
    (
        "SIDETRACE_TRACE_GROUPING_KEY",
        "key for trace ids derived from grouping headers (trace.grouping_key)",
    ),
    (
        "SIDETRACE_<PROVIDER>_BASE_URL",
        "upstream of one provider, e.g. SIDETRACE_OPENAI_BASE_URL",
    ),
    (
        "SIDETRACE_<PROVIDER>_ENABLED",
        "true or false: turn a provider on (local-network ones, e.g. SIDETRACE_OLLAMA_ENABLED) or off",
    ),
];

impl Config {
    /// Parses a config file's text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// Reads the file if one is given, else the embedded defaults, then applies the process
    /// environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                Config::from_toml(&text, &path.display().to_string())?
            }
            None => Config::default(),
        };
        config.apply_env(std::env::vars())?;
        Ok(config)
    }

    /// Environment overrides the file: deployments set addresses and upstreams per pod.
    pub fn apply_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        let mut rust_log = None;
        let mut protocol_env: Option<String> = None;
        let mut sdk_disabled = false;
        let mut traces_exporter: Option<String> = None;
        let mut level_set = false;
        for (key, value) in vars {
            match key.as_str() {
                "SIDETRACE_LISTEN" => self.listen = value,
                "SIDETRACE_ADMIN_LISTEN" => self.admin_listen = value,
                "SIDETRACE_DEFAULT_PROVIDER" => self.default_provider = value,
                "SIDETRACE_PROVIDERS_DIR" => self.providers_dir = Some(PathBuf::from(value)),
                "SIDETRACE_LOG" => {
                    self.log.level = value;
                    level_set = true;
                }
                "RUST_LOG" => rust_log = Some(value),
                "SIDETRACE_TRACE_GROUPING_KEY" => self.trace.grouping_key = value,
                "SIDETRACE_DATA_DIR" => self.data_dir = value,
                // Either replaces both of the file's settings: one source of the token.
                "SIDETRACE_ADMIN_TOKEN" => {
                    self.admin.token = Secret::new(value);
                    self.admin.token_file = None;
                }
                "SIDETRACE_ADMIN_TOKEN_FILE" => {
                    self.admin.token_file = Some(PathBuf::from(value));
                    self.admin.token = Secret::default();
                }
                "SIDETRACE_INGEST_HTTP_LISTEN" => self.ingest.http_listen = value,
                "SIDETRACE_INGEST_GRPC_LISTEN" => self.ingest.grpc_listen = value,
                "SIDETRACE_INGEST_ENABLED" => {
                    self.ingest.enabled = match value.trim() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        other => {
                            return Err(ConfigError::Invalid(format!(
                                "SIDETRACE_INGEST_ENABLED={other:?}: expected true or false"
                            )));
                        }
                    }
                }
                "OTEL_EXPORTER_OTLP_ENDPOINT" | "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
                    if !value.is_empty() =>
                {
                    self.export.endpoint_from_env = true;
                }
                "OTEL_SDK_DISABLED" => match value.trim().to_ascii_lowercase().as_str() {
                    "true" => sdk_disabled = true,
                    "false" | "" => {}
                    _ => self.env_warnings.push(format!(
                        "OTEL_SDK_DISABLED={value:?} is not a boolean; read as false"
                    )),
                },
                "OTEL_TRACES_EXPORTER" => traces_exporter = Some(value),
                "OTEL_SEMCONV_STABILITY_OPT_IN" => {
                    self.export.gen_ai_latest =
                        value.split(',').any(|v| v.trim() == OPT_IN_GEN_AI_LATEST);
                }
                "OTEL_EXPORTER_OTLP_PROTOCOL" | "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" => {
                    // The traces-specific variable wins; the loop sees both in any order.
                    if key.ends_with("TRACES_PROTOCOL") || protocol_env.is_none() {
                        protocol_env = Some(value);
                    }
                }
                "SIDETRACE_CAPTURE_LEVEL" => {
                    self.capture.level = CaptureLevel::parse(&value).ok_or_else(|| {
                        ConfigError::Invalid(format!(
                            "SIDETRACE_CAPTURE_LEVEL={value:?}: expected none, metadata, redacted or full"
                        ))
                    })?;
                }
                "SIDETRACE_LOG_FORMAT" => {
                    self.log.format = match value.as_str() {
                        "text" => LogFormat::Text,
                        "json" => LogFormat::Json,
                        other => {
                            return Err(ConfigError::Invalid(format!(
                                "SIDETRACE_LOG_FORMAT={other:?}: expected text or json"
                            )));
                        }
                    }
                }
                _ => {
                    if let Some(name) = key
                        .strip_prefix("SIDETRACE_")
                        .and_then(|k| k.strip_suffix("_BASE_URL"))
                        .filter(|n| !n.is_empty())
                    {
                        let name = name.to_ascii_lowercase();
                        self.providers.entry(name).or_default().base_url = Some(value);
                    } else if let Some(name) = key
                        .strip_prefix("SIDETRACE_")
                        .and_then(|k| k.strip_suffix("_ENABLED"))
                        .filter(|n| !n.is_empty())
                    {
                        let enabled = match value.trim() {
                            "true" | "1" => true,
                            "false" | "0" => false,
                            other => {
                                return Err(ConfigError::Invalid(format!(
                                    "{key}={other:?}: expected true or false"
                                )));
                            }
                        };
                        let name = name.to_ascii_lowercase();
                        self.providers.entry(name).or_default().enabled = Some(enabled);
                    }
                }
            }
        }
        if let (Some(filter), false) = (rust_log, level_set) {
            self.log.level = filter;
        }
        if let Some(p) = protocol_env {
            self.export.protocol = ExportProtocol::parse(&p).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL={p:?}: expected grpc, http/protobuf or http/json"
                ))
            })?;
        }
        if sdk_disabled {
            self.export.disabled_by_env = Some("OTEL_SDK_DISABLED=true".into());
        } else if let Some(list) = traces_exporter {
            // A comma-separated list (spec): `none` alone means no exporter; of the others the
            // gateway has only `otlp`, so a list without it exports nothing.
            let names: Vec<String> = list
                .split(',')
                .map(|n| n.trim().to_ascii_lowercase())
                .filter(|n| !n.is_empty())
                .collect();
            for unknown in names
                .iter()
                .filter(|n| !matches!(n.as_str(), "otlp" | "none"))
            {
                self.env_warnings.push(format!(
                    "OTEL_TRACES_EXPORTER: sidetrace has no {unknown:?} exporter (only otlp and none); ignored"
                ));
            }
            if !names.is_empty() && !names.iter().any(|n| n == "otlp") {
                self.export.disabled_by_env = Some(format!("OTEL_TRACES_EXPORTER={list}"));
            }
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_addr("listen", &self.listen)
    }

    pub fn admin_addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_addr("admin_listen", &self.admin_listen)
    }

    /// An admin listener others can reach needs a token: it serves captured content, user ids
    /// and their spend. `allow_unauthenticated_admin` overrides (the server warns at start).
    pub fn check_admin_exposure(&self) -> Result<(), ConfigError> {
        let addr = self.admin_addr()?;
        let token = self.admin.resolved_token()?;
        if token.is_none() && !addr.ip().is_loopback() && !self.admin.allow_unauthenticated_admin {
            return Err(ConfigError::Invalid(format!(
                "admin_listen {addr} is reachable beyond this host and the admin listener has no \
                 token: anyone who reaches it could read traces, captured content and spend per \
                 user. Set [admin] token or token_file (SIDETRACE_ADMIN_TOKEN, \
                 SIDETRACE_ADMIN_TOKEN_FILE), bind admin_listen to 127.0.0.1, or set [admin] \
                 allow_unauthenticated_admin = true to accept the risk"
            )));
        }
        Ok(())
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// The provider specs in force: built-in files, then `providers_dir`, then config tables.
    pub fn provider_specs(&self) -> Result<Vec<ProviderSpec>, ConfigError> {
        let mut specs: BTreeMap<String, ProviderSpec> = BTreeMap::new();
        for (file, text) in builtin_specs() {
            let spec = parse_spec(text, &format!("providers/{file}"))?;
            specs.insert(spec.name.clone(), spec);
        }
        if let Some(dir) = &self.providers_dir {
            let entries = std::fs::read_dir(dir).map_err(|source| ConfigError::Read {
                path: dir.clone(),
                source,
            })?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            for path in files {
                let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                let spec = parse_spec(&text, &path.display().to_string())?;
                specs.insert(spec.name.clone(), spec);
            }
        }
        // Providers that forward to this host or its network are off unless turned on here.
        // An override of one that stays off (a base_url alone) does not define a new provider.
        let mut off = Vec::new();
        specs.retain(|name, spec| {
            let on = !spec.local_network
                || self.providers.get(name).and_then(|o| o.enabled) == Some(true);
            if !on {
                off.push(name.clone());
            }
            on
        });
        for (name, o) in &self.providers {
            if o.enabled == Some(false) || off.contains(name) {
                specs.remove(name);
                continue;
            }
            let spec = match specs.get_mut(name) {
                Some(spec) => spec,
                None => {
                    if o.base_url.is_none() {
                        return Err(ConfigError::Invalid(format!(
                            "[providers.{name}] is not a built-in provider; a new provider needs base_url"
                        )));
                    }
                    specs
                        .entry(name.clone())
                        .or_insert_with(|| ProviderSpec::openai_compatible(name))
                }
            };
            spec.apply(o);
        }
        Ok(specs.into_values().collect())
    }

    /// The data directory, resolved.
    pub fn data_dir(&self) -> PathBuf {
        if !self.data_dir.is_empty() {
            return PathBuf::from(&self.data_dir);
        }
        if let Ok(state) = std::env::var("XDG_STATE_HOME")
            && !state.is_empty()
        {
            return PathBuf::from(state).join("sidetrace");
        }
        if let Ok(home) = std::env::var("HOME")
            && !home.is_empty()
        {
            return PathBuf::from(home).join(".local/state/sidetrace");
        }
        PathBuf::from("/var/lib/sidetrace")
    }

    /// Checks the values of the config itself (addresses, limits, timeouts, provider files).
    /// What is built from it (TLS roots, redaction patterns, prices, budgets, routes) is checked
    /// where it is built: `server::check_config` runs both, as `serve` and `check-config` do.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        self.store.max_age_secs()?;
        // Below this a store holds a few hundred spans and evicts the rest as they come.
        if self.store.max_bytes < 1024 * 1024 {
            return Err(ConfigError::Invalid(format!(
                "store.max_bytes must be at least 1048576 (1 MiB), not {}: to keep no traces, set store.enabled = false",
                self.store.max_bytes
            )));
        }
        if self.store.search_scan_traces == 0 {
            return Err(ConfigError::Invalid(
                "store.search_scan_traces must be at least 1".into(),
            ));
        }
        self.check_admin_exposure()?;
        if self.ingest.enabled {
            self.ingest.http_addr()?;
            self.ingest.grpc_addr()?;
            // The gateway exporting to its own receiver would send every span round for ever.
            for (key, listen) in [
                ("http_listen", &self.ingest.http_listen),
                ("grpc_listen", &self.ingest.grpc_listen),
            ] {
                if self.export.endpoint.contains(&format!("//{listen}")) {
                    return Err(ConfigError::Invalid(format!(
                        "export.endpoint {:?} is this gateway's own OTLP receiver (ingest.{key}): spans would loop",
                        self.export.endpoint
                    )));
                }
            }
            if self.ingest.max_request_bytes == 0
                || self.ingest.max_spans_per_request == 0
                || self.ingest.max_concurrent_requests == 0
            {
                return Err(ConfigError::Invalid(
                    "ingest.max_request_bytes, max_spans_per_request and max_concurrent_requests must be at least 1".into(),
                ));
            }
            if self.ingest.max_spans_per_request > MAX_SPANS_PER_REQUEST {
                return Err(ConfigError::Invalid(format!(
                    "ingest.max_spans_per_request must be at most {MAX_SPANS_PER_REQUEST} (the trace store's queue holds that many spans, and a request must fit in it whole)"
                )));
            }
        }
        if self.max_concurrent_requests == 0 {
            return Err(ConfigError::Invalid(
                "max_concurrent_requests must be at least 1".into(),
            ));
        }
        if self.max_buffered_request_bytes < self.max_request_body_bytes {
            // Else a body the limit allows would be refused with 503 "retry shortly" for ever.
            return Err(ConfigError::Invalid(format!(
                "max_buffered_request_bytes ({}) must be at least max_request_body_bytes ({})",
                self.max_buffered_request_bytes, self.max_request_body_bytes
            )));
        }
        if self.upstream.http2_max_streams_per_connection == 0
            || self.upstream.http2_max_connections == 0
        {
            return Err(ConfigError::Invalid(
                "upstream.http2_max_streams_per_connection and http2_max_connections must be at least 1".into(),
            ));
        }
        for (name, ms) in [
            (
                "timeouts.response_headers_ms",
                self.timeouts.response_headers_ms,
            ),
            ("timeouts.idle_ms", self.timeouts.idle_ms),
            ("timeouts.total_ms", self.timeouts.total_ms),
            (
                "timeouts.request_headers_ms",
                self.timeouts.request_headers_ms,
            ),
            (
                "timeouts.request_body_idle_ms",
                self.timeouts.request_body_idle_ms,
            ),
            (
                "timeouts.request_body_total_ms",
                self.timeouts.request_body_total_ms,
            ),
            (
                "timeouts.idle_connection_ms",
                self.timeouts.idle_connection_ms,
            ),
            (
                "upstream.connect_timeout_ms",
                self.upstream.connect_timeout_ms,
            ),
            ("trace.tool_unanswered_ms", self.trace.tool_unanswered_ms),
        ] {
            if ms == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
            }
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| ConfigError::Invalid(format!("log.level {:?}: {e}", self.log.level)))?;
        if !matches!(self.export.compression.as_str(), "" | "gzip" | "none") {
            return Err(ConfigError::Invalid(format!(
                "export.compression {:?}: expected gzip or none",
                self.export.compression
            )));
        }
        if let Some(bad) = self
            .export
            .conventions
            .iter()
            .find(|c| !EXPORT_CONVENTIONS.contains(&c.as_str()))
        {
            return Err(ConfigError::Invalid(format!(
                "export.conventions: {bad:?} is not one of gen_ai, openinference"
            )));
        }
        if !self.export.conventions.iter().any(|c| c == "gen_ai") {
            return Err(ConfigError::Invalid(
                "export.conventions must list gen_ai (openinference adds to it)".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.sampling.keep_fraction) {
            return Err(ConfigError::Invalid(
                "sampling.keep_fraction must be between 0 and 1".into(),
            ));
        }
        if self.export.queue_spans == 0 || self.export.batch_max_spans == 0 {
            return Err(ConfigError::Invalid(
                "export.queue_spans and export.batch_max_spans must be at least 1".into(),
            ));
        }
        self.provider_specs().map(drop)
    }
}

fn parse_spec(text: &str, origin: &str) -> Result<ProviderSpec, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        origin: origin.to_string(),
        message: e.to_string().trim_end().to_string(),
    })
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::Invalid(format!(
            "{key} = {value:?} is not an address like 127.0.0.1:4000"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receiver_is_checked_and_may_not_be_the_export_target() {
        let ok = Config::from_toml("[ingest]\nhttp_listen = \"127.0.0.1:0\"\n", "t").unwrap();
        ok.validate().unwrap();
        let looped =
            Config::from_toml("[export]\nendpoint = \"http://127.0.0.1:4317\"\n", "t").unwrap();
        let err = looped.validate().unwrap_err().to_string();
        assert!(err.contains("ingest.grpc_listen"), "{err}");
        let bad = Config::from_toml("[ingest]\ngrpc_listen = \"localhost\"\n", "t").unwrap();
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("ingest.grpc_listen")
        );
        let off = Config::from_toml(
            "[ingest]\nenabled = false\ngrpc_listen = \"localhost\"\n[export]\nendpoint = \"http://127.0.0.1:4317\"\n",
            "t",
        )
        .unwrap();
        off.validate().unwrap();
        let mut env = Config::default();
        env.apply_env([
            ("SIDETRACE_INGEST_ENABLED".to_string(), "false".to_string()),
            (
                "SIDETRACE_INGEST_HTTP_LISTEN".to_string(),
                "127.0.0.1:9".to_string(),
            ),
        ])
        .unwrap();
        assert!(!env.ingest.enabled);
        assert_eq!(env.ingest.http_listen, "127.0.0.1:9");
    }

    #[test]
    fn the_documented_example_config_equals_the_built_in_defaults() {
        let text = include_str!("../../config/sidetrace.toml");
        let parsed = Config::from_toml(text, "config/sidetrace.toml").unwrap();
        assert_eq!(parsed, Config::default());
    }

    /// Parsing alone cannot see a key missing from the documented file (its default fills it
    /// in), so every key of the serialized defaults must be written there. Keys whose default
    /// is empty (`[[budgets]]`, `[providers.*]`, unset paths) are documented by commented
    /// examples instead, and must appear in a comment.
    #[test]
    fn every_config_key_is_written_in_the_documented_file() {
        fn missing(want: &toml::Table, have: &toml::Table, path: &str, out: &mut Vec<String>) {
            for (key, value) in want {
                let full = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match (value, have.get(key)) {
                    (toml::Value::Table(w), Some(toml::Value::Table(h))) => {
                        missing(w, h, &full, out)
                    }
                    (_, Some(_)) => {}
                    (toml::Value::Array(a), None) if a.is_empty() => {}
                    (_, None) => out.push(full),
                }
            }
        }
        let text = include_str!("../../config/sidetrace.toml");
        let documented: toml::Table = toml::from_str(text).unwrap();
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        let mut out = Vec::new();
        missing(&defaults, &documented, "", &mut out);
        assert!(
            out.is_empty(),
            "keys missing from config/sidetrace.toml: {out:?}"
        );
        for example in [
            "# [[budgets]]",
            "# [providers.",
            "# providers_dir",
            "# extra_ca_file",
            "# token_file",
            "# [[keys]]",
            "# cert_file",
            "# key_file",
        ] {
            assert!(text.contains(example), "{example} is not documented");
        }
    }

    fn with_env(toml: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut c = Config::from_toml(toml, "t").unwrap();
        c.apply_env(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))?;
        Ok(c)
    }

    #[test]
    fn otel_sdk_disabled_and_traces_exporter_none_turn_export_off_whatever_the_endpoint() {
        let file = "[export]\nendpoint = \"http://collector:4317\"\n";
        assert!(with_env(file, &[]).unwrap().export.enabled());
        for vars in [
            &[("OTEL_SDK_DISABLED", "true")][..],
            &[("OTEL_SDK_DISABLED", "TRUE")],
            &[("OTEL_TRACES_EXPORTER", "none")],
            &[("OTEL_TRACES_EXPORTER", "console")],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_SDK_DISABLED", "true"),
            ],
        ] {
            let c = with_env(file, vars).unwrap();
            assert!(!c.export.enabled(), "{vars:?}");
            assert!(c.export.off_reason().unwrap().contains("OTEL_"), "{vars:?}");
        }
        for vars in [
            &[("OTEL_SDK_DISABLED", "false")][..],
            &[("OTEL_TRACES_EXPORTER", "otlp")],
            &[("OTEL_TRACES_EXPORTER", "otlp,console")],
            &[("OTEL_TRACES_EXPORTER", "")],
        ] {
            assert!(with_env(file, vars).unwrap().export.enabled(), "{vars:?}");
        }
        // The spec: an unknown value is a warning and is ignored, never a refusal to start.
        let c = with_env(file, &[("OTEL_SDK_DISABLED", "yes")]).unwrap();
        assert!(c.export.enabled());
        assert!(c.env_warnings[0].contains("OTEL_SDK_DISABLED"), "{c:?}");
        let c = with_env(file, &[("OTEL_TRACES_EXPORTER", "otlp,zipkin")]).unwrap();
        assert!(c.export.enabled());
        assert!(c.env_warnings[0].contains("zipkin"));
    }

    #[test]
    fn export_conventions_must_name_known_sets_and_keep_gen_ai() {
        for ok in ["[\"gen_ai\"]", "[\"gen_ai\", \"openinference\"]"] {
            let c = with_env(&format!("[export]\nconventions = {ok}\n"), &[]).unwrap();
            c.validate().unwrap();
        }
        for (bad, says) in [
            ("[\"gen_ai\", \"phoenix\"]", "phoenix"),
            ("[\"openinference\"]", "must list gen_ai"),
            ("[]", "must list gen_ai"),
        ] {
            let c = with_env(&format!("[export]\nconventions = {bad}\n"), &[]).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn a_text_search_must_read_at_least_one_trace_a_page() {
        for (bad, says) in [
            ("max_bytes = 0", "at least 1048576"),
            ("max_bytes = 1000", "store.enabled = false"),
            ("max_age = \"0m\"", "number with m, h or d"),
        ] {
            let c = with_env(&format!("[store]\n{bad}\n"), &[]).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
        assert!(
            with_env("[store]\nmax_bytes = 1048576\n", &[])
                .unwrap()
                .validate()
                .is_ok()
        );
        let c = with_env("[store]\nsearch_scan_traces = 0\n", &[]).unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("search_scan_traces"), "{err}");
        let c = with_env("[store]\nsearch_scan_traces = 1\n", &[]).unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn every_otlp_protocol_of_the_spec_is_accepted_from_file_and_environment() {
        for (name, want) in [
            ("grpc", ExportProtocol::Grpc),
            ("http/protobuf", ExportProtocol::HttpProtobuf),
            ("http/json", ExportProtocol::HttpJson),
        ] {
            let file = format!("[export]\nprotocol = {name:?}\n");
            assert_eq!(with_env(&file, &[]).unwrap().export.protocol, want);
            let c = with_env("", &[("OTEL_EXPORTER_OTLP_PROTOCOL", name)]).unwrap();
            assert_eq!(c.export.protocol, want);
        }
        let c = with_env(
            "",
            &[
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ],
        )
        .unwrap();
        assert_eq!(c.export.protocol, ExportProtocol::HttpJson, "traces wins");
        let err = with_env("", &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/xml")]).unwrap_err();
        assert!(err.to_string().contains("http/json"), "{err}");
    }

    #[test]
    fn key_expiry_dates_are_instants_in_utc() {
        let at = |text: &str| {
            let d: toml::value::Datetime = text.parse().unwrap();
            datetime_unix_secs(&d)
        };
        assert_eq!(at("1970-01-01"), Some(0));
        assert_eq!(at("2000-03-01"), Some(951_868_800));
        assert_eq!(at("2026-12-03T07:00:00Z"), Some(1_796_281_200));
        assert_eq!(at("2026-12-03T09:00:00+02:00"), Some(1_796_281_200));
        assert_eq!(at("2026-12-03T07:00:00"), None);
    }

    #[test]
    fn buffers_smaller_than_the_body_limit_are_refused() {
        let config = Config::from_toml(
            "max_request_body_bytes = 2000\nmax_buffered_request_bytes = 1000\n",
            "c.toml",
        )
        .unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("max_buffered_request_bytes"), "{err}");
    }

    #[test]
    fn unknown_keys_are_reported_with_file_line_and_key() {
        let err = Config::from_toml(
            "listen = \"127.0.0.1:1\"\n\n[timeouts]\nidle_msec = 5\n",
            "my.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("my.toml: "), "{err}");
        assert!(err.contains("line 4"), "{err}");
        assert!(err.contains("idle_msec"), "{err}");
    }

    #[test]
    fn unknown_provider_keys_are_refused() {
        let err = Config::from_toml("[providers.openai]\nbase_uri = \"http://x\"\n", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("base_uri") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn local_network_providers_are_off_until_the_config_turns_them_on() {
        let names = |c: &Config| -> Vec<String> {
            crate::provider::Registry::from_config(c)
                .unwrap()
                .providers()
                .map(|p| p.name.clone())
                .collect()
        };
        let default = names(&Config::default());
        assert!(
            !default.iter().any(|n| n == "ollama" || n == "vllm"),
            "{default:?}"
        );
        assert!(
            crate::provider::Registry::from_config(&Config::default())
                .unwrap()
                .route("/ollama/api/chat")
                .is_err()
        );
        // A base_url alone does not turn one on: only `enabled = true` does.
        let moved = Config::from_toml(
            "[providers.ollama]\nbase_url = \"http://127.0.0.1:1\"\n",
            "c.toml",
        )
        .unwrap();
        assert!(!names(&moved).contains(&"ollama".to_string()));
        let on = Config::from_toml("[providers.ollama]\nenabled = true\n", "c.toml").unwrap();
        assert!(names(&on).contains(&"ollama".to_string()));
        assert!(!names(&on).contains(&"vllm".to_string()));
        let mut env = Config::default();
        env.apply_env([("SIDETRACE_VLLM_ENABLED".to_string(), "true".to_string())])
            .unwrap();
        assert!(names(&env).contains(&"vllm".to_string()));
        assert!(
            env.apply_env([("SIDETRACE_VLLM_ENABLED".to_string(), "yes".to_string())])
                .is_err()
        );
    }

    /// A built-in provider whose upstream is this host or a private network must be opt-in.
    #[test]
    fn every_built_in_provider_on_a_local_address_is_marked_local_network() {
        for (file, text) in builtin_specs() {
            let spec = parse_spec(text, file).unwrap();
            let host = spec
                .base_url
                .split("://")
                .nth(1)
                .and_then(|rest| rest.split(['/', ':']).next())
                .unwrap_or("");
            let local = host == "localhost"
                || host.parse::<std::net::IpAddr>().is_ok_and(|ip| match ip {
                    std::net::IpAddr::V4(v4) => {
                        v4.is_loopback() || v4.is_private() || v4.is_link_local()
                    }
                    std::net::IpAddr::V6(v6) => v6.is_loopback(),
                });
            assert_eq!(spec.local_network, local, "providers/{file}: {host}");
        }
    }

    #[test]
    fn every_built_in_provider_file_is_valid() {
        let mut config = Config::default();
        for local in ["ollama", "vllm"] {
            config.providers.entry(local.into()).or_default().enabled = Some(true);
        }
        let registry = crate::server::check_config(&config).unwrap();
        let names: Vec<&str> = registry.providers().map(|p| p.name.as_str()).collect();
        for want in [
            "openai",
            "anthropic",
            "gemini",
            "azure",
            "groq",
            "mistral",
            "deepseek",
            "together",
            "openrouter",
            "xai",
            "ollama",
            "vllm",
            "bedrock",
        ] {
            assert!(names.contains(&want), "missing provider {want}: {names:?}");
        }
    }

    #[test]
    fn env_overrides_addresses_and_provider_base_urls() {
        let mut c = Config::default();
        c.apply_env([
            ("SIDETRACE_LISTEN".to_string(), "0.0.0.0:9000".to_string()),
            (
                "SIDETRACE_OPENAI_BASE_URL".to_string(),
                "http://127.0.0.1:9".to_string(),
            ),
            ("RUST_LOG".to_string(), "debug".to_string()),
        ])
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000");
        assert_eq!(c.log.level, "debug");
        let registry = crate::provider::Registry::from_config(&c).unwrap();
        let route = registry.route("/v1/chat/completions").unwrap();
        assert_eq!(route.uri, "http://127.0.0.1:9/v1/chat/completions");
    }

    #[test]
    fn a_new_provider_in_the_config_is_openai_compatible() {
        let c = Config::from_toml(
            "[providers.mylab]\nbase_url = \"http://10.0.0.5:8000\"\n",
            "c.toml",
        )
        .unwrap();
        let route = crate::provider::Registry::from_config(&c)
            .unwrap()
            .route("/mylab/v1/chat/completions")
            .unwrap();
        assert_eq!(route.uri, "http://10.0.0.5:8000/v1/chat/completions");
        assert_eq!(route.format, crate::provider::WireFormat::ChatCompletions);
    }

    #[test]
    fn a_new_provider_without_base_url_is_refused() {
        let c =
            Config::from_toml("[providers.mylab]\nroute_prefix = \"/lab\"\n", "c.toml").unwrap();
        assert!(
            crate::provider::Registry::from_config(&c)
                .unwrap_err()
                .to_string()
                .contains("needs base_url")
        );
    }
}
