//! The OTLP receiver: the sidecar as the app's local collector. OTLP/HTTP (`POST /v1/traces`,
//! protobuf or JSON, gzip or not) and OTLP/gRPC (`TraceService/Export`) on listeners of their
//! own (`[ingest]`). Each received span keeps its resource and scope (its [`Origin`]) and goes
//! to [`Recorder::record_span`], so it reaches the trace store and the export queue, spool and
//! replay like the gateway's own spans. Every answer is the OTLP spec's: a partial success
//! naming rejected spans (bad ids), 400 / INVALID_ARGUMENT for what does not decode, 413 /
//! RESOURCE_EXHAUSTED past the limits, 415 for a content type or encoding it does not speak,
//! 503 with `Retry-After` / UNAVAILABLE with `RetryInfo` while the export queue is crowded.
//! What each bad input gets is written in docs/ingest.md.

pub mod json;

use std::{convert::Infallible, io::Read as _, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, combinators::UnsyncBoxBody};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value},
    trace::v1::Span,
};
use prost::Message as _;
use tokio::sync::Semaphore;
use tonic::codec::CompressionEncoding;
use tonic_types::{ErrorDetails, StatusExt as _};
use tower::ServiceExt as _;

use crate::{
    call::recorder::Recorder,
    config::IngestConfig,
    metrics::Metrics,
    trace::span::{
        AttrKey, AttrValue, Origin, REQUEST_BODY, SpanEvent, SpanLink, SpanRecord, SpanStatus,
    },
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The response body type of the listeners (the proxy's).
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// How long a client may take to send one request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// What a crowded gateway asks the client to wait before it retries.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// Rejection messages kept in a partial success (the count covers all).
const MAX_MESSAGES: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Http,
    Grpc,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Grpc => "grpc",
        }
    }
}

/// Why a whole request was refused (nothing of it was taken).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 400 / INVALID_ARGUMENT: does not decode.
    Malformed(String),
    /// 413 / RESOURCE_EXHAUSTED: past `max_request_bytes` or `max_spans_per_request`.
    TooLarge(String),
    /// 415: a content type or content encoding this receiver does not speak (HTTP only).
    Unsupported(String),
    /// 503 + `Retry-After` / UNAVAILABLE + `RetryInfo`: the export queue is crowded.
    Overloaded,
}

impl Refusal {
    fn label(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed",
            Refusal::TooLarge(_) => "too_large",
            Refusal::Unsupported(_) => "unsupported",
            Refusal::Overloaded => "overloaded",
        }
    }

    fn message(&self) -> String {
        match self {
            Refusal::Malformed(m) | Refusal::TooLarge(m) | Refusal::Unsupported(m) => m.clone(),
            Refusal::Overloaded => format!(
                "the gateway's export queue or trace store queue is crowded; retry after {}s",
                RETRY_AFTER.as_secs()
            ),
        }
    }
}

/// What an accepted request got: the spans rejected one by one, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    pub accepted: u64,
    pub rejected: u64,
    pub message: String,
}

impl Accepted {
    fn response(&self) -> ExportTraceServiceResponse {
        ExportTraceServiceResponse {
            partial_success: (self.rejected > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: self.rejected as i64,
                error_message: self.message.clone(),
            }),
        }
    }
}

/// Why one span was rejected (a metric label: a fixed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    TraceId,
    SpanId,
    ParentSpanId,
    /// Ends before it starts.
    Times,
    /// Started longer ago than the trace store keeps traces: it would end its trace's life
    /// at once (the store evicts a trace by its first span's start), the gateway's own spans in
    /// it too.
    TooOld,
}

impl Invalid {
    pub fn label(self) -> &'static str {
        match self {
            Invalid::TraceId => "invalid_trace_id",
            Invalid::SpanId => "invalid_span_id",
            Invalid::ParentSpanId => "invalid_parent_span_id",
            Invalid::Times => "end_before_start",
            Invalid::TooOld => "older_than_store_max_age",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Invalid::TraceId => "trace_id must be 16 bytes, not all zero",
            Invalid::SpanId => "span_id must be 8 bytes, not all zero",
            Invalid::ParentSpanId => "parent_span_id must be empty or 8 bytes",
            Invalid::Times => "end_time_unix_nano is before start_time_unix_nano",
            Invalid::TooOld => {
                "start_time_unix_nano is further back than the trace store keeps traces \
                 ([store] max_age)"
            }
        }
    }
}

/// The receiver both transports hand their decoded requests to.
pub struct Receiver {
    recorder: Arc<Recorder>,
    metrics: Arc<Metrics>,
    max_request_bytes: usize,
    max_spans: usize,
    slots: Semaphore,
    /// The trace store's `max_age`, when there is a store: spans that started before it are
    /// rejected.
    max_age: Option<Duration>,
    /// Held while a request's spans are checked against the queues and queued.
    queueing: std::sync::Mutex<()>,
}

impl Receiver {
    /// `max_age`: the trace store's, when there is one.
    pub fn new(
        cfg: &IngestConfig,
        max_age: Option<Duration>,
        recorder: Arc<Recorder>,
        metrics: Arc<Metrics>,
    ) -> Receiver {
        Receiver {
            recorder,
            metrics,
            max_request_bytes: usize::try_from(cfg.max_request_bytes).unwrap_or(usize::MAX),
            max_spans: cfg.max_spans_per_request,
            slots: Semaphore::new(cfg.max_concurrent_requests.max(1)),
            max_age,
            queueing: std::sync::Mutex::new(()),
        }
    }

    /// Waits for one of `max_concurrent_requests` slots; held from before the body is read
    /// until the spans are handed on, so it bounds the memory requests take.
    async fn slot(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.slots
            .acquire()
            .await
            .expect("the receiver's semaphore is never closed")
    }

    /// Takes one decoded export request: every valid span is recorded, invalid ones are
    /// rejected one by one; a request past the limits, or one the crowded export queue cannot
    /// take, is refused whole.
    pub fn export(
        &self,
        request: ExportTraceServiceRequest,
        transport: Transport,
    ) -> Result<Accepted, Refusal> {
        let result = self.take(request);
        self.count(transport, &result);
        result
    }

    fn take(&self, request: ExportTraceServiceRequest) -> Result<Accepted, Refusal> {
        let n: usize = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        if n > self.max_spans {
            return Err(Refusal::TooLarge(format!(
                "{n} spans in one request; the limit is {} (ingest.max_spans_per_request)",
                self.max_spans
            )));
        }
        let oldest = self.max_age.map(|age| {
            let now = crate::store::traces::now_unix_nanos();
            now.saturating_sub(u64::try_from(age.as_nanos()).unwrap_or(u64::MAX))
        });
        let mut out = Accepted::default();
        let mut messages: Vec<String> = Vec::new();
        let mut taken = Vec::with_capacity(n);
        for resource_spans in request.resource_spans {
            let resource: Vec<(String, String)> = resource_spans
                .resource
                .map(|r| {
                    r.attributes
                        .into_iter()
                        .filter_map(|kv| Some((kv.key, resource_value(attr_value(kv.value?)?))))
                        .collect()
                })
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                let scope = scope_spans.scope.unwrap_or_default();
                let origin = Arc::new(Origin {
                    resource: resource.clone(),
                    scope_name: scope.name,
                    scope_version: scope.version,
                });
                for span in scope_spans.spans {
                    let span = span_record(span).and_then(|r| match oldest {
                        Some(oldest) if r.start_unix_nanos < oldest => {
                            Err((Invalid::TooOld, r.name))
                        }
                        _ => Ok(r),
                    });
                    match span {
                        Ok(record) => {
                            out.accepted += 1;
                            taken.push((record, origin.clone()));
                        }
                        Err((why, name)) => {
                            out.rejected += 1;
                            self.metrics.ingest.rejected(why.label());
                            if messages.len() < MAX_MESSAGES {
                                messages.push(format!("span {name:?}: {}", why.message()));
                            }
                        }
                    }
                }
            }
        }
        {
            // Checked and queued under one lock: two requests that each fit in the queues must
            // not both be let in when together they do not (the store would drop what did not
            // fit, after the request was answered 200).
            let _queueing = self.queueing.lock().unwrap_or_else(|e| e.into_inner());
            let k = taken.len();
            if k > 0 && (self.recorder.export_crowded(k) || self.recorder.store_crowded(k)) {
                return Err(Refusal::Overloaded);
            }
            for (record, origin) in taken {
                self.received(record, origin);
            }
        }
        if out.rejected > 0 {
            out.message = format!(
                "{} of {} spans rejected: {}",
                out.rejected,
                n,
                messages.join("; ")
            );
        }
        Ok(out)
    }

    /// The one place every received span passes through, on its way to the trace store and
    /// the export (never waits). What else wants to see the app's own spans (e.g. which tool
    /// call ids the app reported itself) hooks in here.
    fn received(&self, span: SpanRecord, origin: Arc<Origin>) {
        // The app reports its own tool calls: the gateway's span for the same call id gives
        // way to the app's (see call/tools.rs), and from now on waits a moment for it.
        if let Some(tools) = self.recorder.tools() {
            if !tools.app_sends_spans() {
                tools.set_app_sends_spans(true);
            }
            if let Some(AttrValue::Str(call_id)) = span.attr("gen_ai.tool.call.id") {
                tools.app_reported(span.trace_id, call_id);
            }
        }
        self.recorder.record_span(span, None, Some(origin));
    }

    fn count(&self, transport: Transport, result: &Result<Accepted, Refusal>) {
        let m = &self.metrics.ingest;
        match result {
            Ok(a) => {
                m.request(
                    transport.as_str(),
                    if a.rejected > 0 { "partial" } else { "ok" },
                );
                m.spans(transport.as_str(), "accepted", a.accepted);
                m.spans(transport.as_str(), "rejected", a.rejected);
            }
            Err(r) => m.request(transport.as_str(), r.label()),
        }
    }
}

/// A resource attribute as text (the trace store and the export keep resources as strings).
fn resource_value(v: AttrValue) -> String {
    match v {
        AttrValue::Str(s) => s,
        AttrValue::Bool(b) => b.to_string(),
        AttrValue::Int(i) => i.to_string(),
        AttrValue::Double(d) => d.to_string(),
        other => serde_json::to_string(&other).unwrap_or_default(),
    }
}

/// An OTLP attribute value; `None` for an empty one (no value set), which is left out.
pub fn attr_value(v: AnyValue) -> Option<AttrValue> {
    use any_value::Value as V;
    Some(match v.value? {
        V::StringValue(s) => AttrValue::Str(s),
        V::BoolValue(b) => AttrValue::Bool(b),
        V::IntValue(i) => AttrValue::Int(i),
        V::DoubleValue(d) if d.is_finite() => AttrValue::Double(d),
        // JSON (the spool, the store) has no NaN or infinity.
        V::DoubleValue(d) => AttrValue::Str(d.to_string()),
        V::ArrayValue(a) => {
            let values: Vec<AttrValue> = a.values.into_iter().filter_map(attr_value).collect();
            if values.iter().all(|v| matches!(v, AttrValue::Str(_))) && !values.is_empty() {
                AttrValue::StrList(
                    values
                        .into_iter()
                        .map(|v| match v {
                            AttrValue::Str(s) => s,
                            _ => String::new(),
                        })
                        .collect(),
                )
            } else {
                AttrValue::List(values)
            }
        }
        V::KvlistValue(m) => AttrValue::Map {
            kvlist: attributes(m.values),
        },
        V::BytesValue(b) => {
            use base64::Engine as _;
            AttrValue::Bytes {
                bytes: base64::engine::general_purpose::STANDARD.encode(b),
            }
        }
        // A string table index: profiles only, meaningless in a trace request.
        V::StringValueStrindex(_) => return None,
    })
}

/// Span attributes take `AttrKey`s, events' and links' `String`s.
fn attributes<K: From<String>>(kvs: Vec<KeyValue>) -> Vec<(K, AttrValue)> {
    kvs.into_iter()
        .filter_map(|kv| Some((kv.key.into(), attr_value(kv.value?)?)))
        .collect()
}

fn id<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
    let id: [u8; N] = bytes.try_into().ok()?;
    (id != [0; N]).then_some(id)
}

/// `SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK` and `SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK`.
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

/// One OTLP span as a span record, or why it is invalid (with its name, for the message).
pub fn span_record(s: Span) -> Result<SpanRecord, (Invalid, String)> {
    let Some(trace_id) = id::<16>(&s.trace_id) else {
        return Err((Invalid::TraceId, s.name));
    };
    let Some(span_id) = id::<8>(&s.span_id) else {
        return Err((Invalid::SpanId, s.name));
    };
    // Empty (or all zero, which some SDKs send) means a root span.
    let parent_span_id = match s.parent_span_id.len() {
        0 => None,
        8 => id::<8>(&s.parent_span_id),
        _ => return Err((Invalid::ParentSpanId, s.name)),
    };
    if s.end_time_unix_nano < s.start_time_unix_nano {
        return Err((Invalid::Times, s.name));
    }
    let kind = match s.kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    };
    let status = match s.status {
        Some(st) if st.code == 2 => SpanStatus::Error(st.message),
        Some(st) if st.code == 1 => SpanStatus::Ok,
        _ => SpanStatus::Unset,
    };
    Ok(SpanRecord {
        trace_id,
        span_id,
        parent_span_id,
        parent_is_remote: s.flags & (HAS_IS_REMOTE | IS_REMOTE) == HAS_IS_REMOTE | IS_REMOTE,
        flags: (s.flags & 0xff) as u8,
        trace_state: (!s.trace_state.is_empty()).then_some(s.trace_state),
        name: s.name,
        kind: kind.into(),
        start_unix_nanos: s.start_time_unix_nano,
        end_unix_nanos: s.end_time_unix_nano,
        status,
        // The store's own attribute is never taken from a sender (see `span::REQUEST_BODY`).
        attributes: attributes(s.attributes)
            .into_iter()
            .filter(|(k, _): &(AttrKey, AttrValue)| k != REQUEST_BODY)
            .collect(),
        events: s
            .events
            .into_iter()
            .map(|e| SpanEvent {
                name: e.name,
                time_unix_nanos: e.time_unix_nano,
                attributes: attributes(e.attributes),
            })
            .collect(),
        // A link to an invalid span context says nothing: it is left out.
        links: s
            .links
            .into_iter()
            .filter_map(|l| {
                Some(SpanLink {
                    trace_id: id::<16>(&l.trace_id)?,
                    span_id: id::<8>(&l.span_id)?,
                    trace_state: (!l.trace_state.is_empty()).then_some(l.trace_state),
                    flags: (l.flags & 0xff) as u8,
                    attributes: attributes(l.attributes),
                })
            })
            .collect(),
        origin: None,
    })
}

// ---- OTLP/HTTP ----

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

/// `google.rpc.Status`, the body of every OTLP/HTTP error answer.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

fn body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn answer(status: StatusCode, encoding: Encoding, code: i32, message: &str) -> Response<Body> {
    let (content_type, bytes) = match encoding {
        Encoding::Protobuf => (
            "application/x-protobuf",
            RpcStatus {
                code,
                message: message.to_string(),
            }
            .encode_to_vec(),
        ),
        Encoding::Json => (
            "application/json",
            serde_json::to_vec(&serde_json::json!({"code": code, "message": message}))
                .unwrap_or_default(),
        ),
    };
    let mut response = Response::new(body(bytes));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn refused(refusal: &Refusal, encoding: Encoding) -> Response<Body> {
    // gRPC codes in the Status body: INVALID_ARGUMENT 3, RESOURCE_EXHAUSTED 8, UNAVAILABLE 14.
    let (status, code) = match refusal {
        Refusal::Malformed(_) => (StatusCode::BAD_REQUEST, 3),
        Refusal::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, 8),
        Refusal::Unsupported(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, 3),
        Refusal::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, 14),
    };
    let mut response = answer(status, encoding, code, &refusal.message());
    if *refusal == Refusal::Overloaded {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(RETRY_AFTER.as_secs()),
        );
    }
    response
}

fn accepted(a: &Accepted, encoding: Encoding) -> Response<Body> {
    let message = a.response();
    let (content_type, bytes) = match encoding {
        Encoding::Protobuf => ("application/x-protobuf", message.encode_to_vec()),
        Encoding::Json => {
            let value = match &message.partial_success {
                // int64 is a decimal string in the protobuf JSON mapping.
                Some(p) => serde_json::json!({"partialSuccess": {
                    "rejectedSpans": p.rejected_spans.to_string(),
                    "errorMessage": p.error_message,
                }}),
                None => serde_json::json!({}),
            };
            (
                "application/json",
                serde_json::to_vec(&value).unwrap_or_default(),
            )
        }
    };
    let mut response = Response::new(body(bytes));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The OTLP/HTTP listener's service: `POST /v1/traces`.
pub async fn handle_http<B>(
    receiver: Arc<Receiver>,
    req: Request<B>,
) -> Result<Response<Body>, Infallible>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let encoding = match media_type(req.headers()).as_deref() {
        Some("application/json") => Some(Encoding::Json),
        Some("application/x-protobuf") | Some("application/protobuf") => Some(Encoding::Protobuf),
        _ => None,
    };
    if req.uri().path() != "/v1/traces" {
        return Ok(answer(
            StatusCode::NOT_FOUND,
            encoding.unwrap_or(Encoding::Protobuf),
            5,
            "only /v1/traces is served here",
        ));
    }
    if req.method() != Method::POST {
        let mut r = answer(
            StatusCode::METHOD_NOT_ALLOWED,
            encoding.unwrap_or(Encoding::Protobuf),
            12,
            "use POST",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return Ok(r);
    }
    let _slot = receiver.slot().await;
    let result = match encoding {
        None => Err(Refusal::Unsupported(
            "content-type must be application/x-protobuf (or application/protobuf) or application/json".into(),
        )),
        Some(encoding) => read(&receiver, req, encoding).await,
    };
    let encoding = encoding.unwrap_or(Encoding::Protobuf);
    let request = match result {
        Ok(request) => request,
        Err(refusal) => {
            receiver.count(Transport::Http, &Err(refusal.clone()));
            tracing::debug!(reason = refusal.label(), message = %refusal.message(), "OTLP/HTTP request refused");
            return Ok(refused(&refusal, encoding));
        }
    };
    Ok(match receiver.export(request, Transport::Http) {
        Ok(a) => accepted(&a, encoding),
        Err(refusal) => refused(&refusal, encoding),
    })
}

fn media_type(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(
        value
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

/// Reads, unzips and decodes the body, each step bounded.
async fn read<B>(
    receiver: &Receiver,
    req: Request<B>,
    encoding: Encoding,
) -> Result<ExportTraceServiceRequest, Refusal>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let limit = receiver.max_request_bytes;
    let too_large = || {
        Refusal::TooLarge(format!(
            "the request is larger than {limit} bytes (ingest.max_request_bytes)"
        ))
    };
    let gzip = match req
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("identity") => false,
        Some("gzip") => true,
        Some(other) => {
            return Err(Refusal::Unsupported(format!(
                "content-encoding {other:?}: gzip or none"
            )));
        }
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let read = tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), limit).collect());
    let bytes = match read.await {
        Err(_) => return Err(Refusal::Malformed("the request body took too long".into())),
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return Err(too_large());
            }
            return Err(Refusal::Malformed(format!("reading the request body: {e}")));
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let bytes = if gzip {
        // Bounded: a gzip bomb stops at the limit.
        let mut out = Vec::new();
        let mut decoder = flate2::read::GzDecoder::new(&bytes[..]).take(limit as u64 + 1);
        if let Err(e) = decoder.read_to_end(&mut out) {
            return Err(Refusal::Malformed(format!("invalid gzip: {e}")));
        }
        if out.len() > limit {
            return Err(too_large());
        }
        Bytes::from(out)
    } else {
        bytes
    };
    match encoding {
        Encoding::Protobuf => ExportTraceServiceRequest::decode(bytes)
            .map_err(|e| Refusal::Malformed(format!("invalid protobuf: {e}"))),
        Encoding::Json => json::decode(&bytes).map_err(Refusal::Malformed),
    }
}

// ---- OTLP/gRPC ----

struct Grpc(Arc<Receiver>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        match self.0.export(request.into_inner(), Transport::Grpc) {
            Ok(a) => Ok(tonic::Response::new(a.response())),
            Err(Refusal::Overloaded) => Err(tonic::Status::with_error_details(
                tonic::Code::Unavailable,
                Refusal::Overloaded.message(),
                ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
            )),
            Err(r @ Refusal::TooLarge(_)) => Err(tonic::Status::resource_exhausted(r.message())),
            Err(r) => Err(tonic::Status::invalid_argument(r.message())),
        }
    }
}

/// The OTLP/gRPC listener's service. tonic decodes (gzip too) within `max_request_bytes` and
/// answers what does not decode itself; its codes are mapped to the OTLP spec's:
/// INTERNAL (undecodable protobuf) becomes INVALID_ARGUMENT and OUT_OF_RANGE (too large)
/// RESOURCE_EXHAUSTED, and such refusals are counted here.
pub fn grpc_service(
    receiver: Arc<Receiver>,
) -> impl tower::Service<
    Request<hyper::body::Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    let limit = receiver.max_request_bytes;
    let server = TraceServiceServer::new(Grpc(receiver.clone()))
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(limit);
    tower::service_fn(move |req: Request<hyper::body::Incoming>| {
        let server = server.clone();
        let receiver = receiver.clone();
        async move {
            // Held while tonic reads and decodes the body and the handler runs; a client that
            // does not send its body in time gives it back (DEADLINE_EXCEEDED).
            let slot = receiver.slot().await;
            let response = match tokio::time::timeout(BODY_TIMEOUT, server.oneshot(req)).await {
                Ok(Ok(r)) => r,
                Ok(Err(never)) => match never {},
                Err(_) => {
                    receiver.count(
                        Transport::Grpc,
                        &Err(Refusal::Malformed("the request body took too long".into())),
                    );
                    let mut r = Response::new(body(Bytes::new()));
                    let h = r.headers_mut();
                    h.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/grpc"),
                    );
                    h.insert("grpc-status", HeaderValue::from_static("4"));
                    h.insert(
                        "grpc-message",
                        HeaderValue::from_static("the%20request%20body%20took%20too%20long"),
                    );
                    return Ok(r);
                }
            };
            drop(slot);
            let (mut parts, body) = response.into_parts();
            // Refusals of tonic's decoder (the handler never answers INTERNAL or OUT_OF_RANGE,
            // and its own RESOURCE_EXHAUSTED is counted where it is made).
            let status = parts.headers.get("grpc-status").map(|v| v.as_bytes());
            // "Error decompressing: size limit ...", percent-encoded.
            let unpacked_too_large = parts
                .headers
                .get("grpc-message")
                .is_some_and(|m| m.as_bytes().starts_with(b"Error%20decompressing"));
            let decoder = match status {
                Some(b"13") => Some(("3", Refusal::Malformed(String::new()))),
                Some(b"11") => Some(("8", Refusal::TooLarge(String::new()))),
                Some(b"8") if unpacked_too_large => Some(("8", Refusal::TooLarge(String::new()))),
                _ => None,
            };
            if let Some((code, refusal)) = decoder {
                parts
                    .headers
                    .insert("grpc-status", HeaderValue::from_static(code));
                receiver.count(Transport::Grpc, &Err(refusal));
            }
            let body = body.map_err(|e| Box::new(e) as BoxError).boxed_unsync();
            Ok::<_, Infallible>(Response::from_parts(parts, body))
        }
    })
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        common::v1::{ArrayValue, KeyValueList},
        trace::v1::{Status, span},
    };

    use super::*;

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn valid() -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: "op".into(),
            start_time_unix_nano: 10,
            end_time_unix_nano: 20,
            ..Default::default()
        }
    }

    /// A sender cannot hand the store a request body to read as the gateway's own.
    #[test]
    fn the_store_s_own_attribute_is_not_taken_from_a_sender() {
        use any_value::Value as V;
        let mut s = valid();
        s.attributes = vec![
            kv(
                REQUEST_BODY,
                V::StringValue("chat_completions 9\n{}".into()),
            ),
            kv("gen_ai.input.messages", V::StringValue("[]".into())),
        ];
        let r = span_record(s).unwrap();
        assert_eq!(r.attr(REQUEST_BODY), None);
        assert_eq!(
            r.attr("gen_ai.input.messages"),
            Some(&AttrValue::Str("[]".into()))
        );
    }

    #[test]
    fn a_span_converts_with_kind_status_flags_values_events_and_links() {
        use any_value::Value as V;
        let mut s = valid();
        s.parent_span_id = vec![3; 8];
        s.kind = 3;
        s.flags = 0x301;
        s.trace_state = "k=v".into();
        s.status = Some(Status {
            code: 2,
            message: "boom".into(),
        });
        s.attributes = vec![
            kv("nan", V::DoubleValue(f64::NAN)),
            kv(
                "strs",
                V::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(V::StringValue("a".into())),
                    }],
                }),
            ),
            kv(
                "map",
                V::KvlistValue(KeyValueList {
                    values: vec![kv("n", V::IntValue(1))],
                }),
            ),
            KeyValue {
                key: "empty".into(),
                value: Some(AnyValue { value: None }),
                ..Default::default()
            },
        ];
        s.events = vec![span::Event {
            time_unix_nano: 15,
            name: "e".into(),
            ..Default::default()
        }];
        s.links = vec![
            span::Link {
                trace_id: vec![4; 16],
                span_id: vec![5; 8],
                ..Default::default()
            },
            span::Link::default(),
        ];
        let r = span_record(s).unwrap();
        assert_eq!(r.parent_span_id, Some([3; 8]));
        assert!(r.parent_is_remote);
        assert_eq!(r.flags, 1);
        assert_eq!(r.kind, "client");
        assert_eq!(r.trace_state.as_deref(), Some("k=v"));
        assert_eq!(r.status, SpanStatus::Error("boom".into()));
        assert_eq!(r.attr("nan"), Some(&AttrValue::Str("NaN".into())));
        assert_eq!(r.attr("strs"), Some(&AttrValue::StrList(vec!["a".into()])));
        assert_eq!(
            r.attr("map"),
            Some(&AttrValue::Map {
                kvlist: vec![("n".into(), AttrValue::Int(1))]
            })
        );
        assert_eq!(r.attr("empty"), None);
        assert_eq!(r.events.len(), 1);
        assert_eq!(r.links.len(), 1, "a link to an invalid context is left out");
        assert!(r.origin.is_none());
    }

    #[test]
    fn invalid_ids_are_named_and_an_all_zero_parent_is_a_root() {
        let mut s = valid();
        s.parent_span_id = vec![0; 8];
        assert_eq!(span_record(s).unwrap().parent_span_id, None);
        for (change, why) in [
            (
                (|s: &mut Span| s.trace_id = vec![0; 16]) as fn(&mut Span),
                Invalid::TraceId,
            ),
            (|s: &mut Span| s.trace_id = vec![1; 17], Invalid::TraceId),
            (|s: &mut Span| s.span_id = Vec::new(), Invalid::SpanId),
            (|s: &mut Span| s.span_id = vec![0; 8], Invalid::SpanId),
            (
                |s: &mut Span| s.parent_span_id = vec![1; 4],
                Invalid::ParentSpanId,
            ),
        ] {
            let mut s = valid();
            change(&mut s);
            assert_eq!(span_record(s).unwrap_err(), (why, "op".to_string()));
        }
    }
}
