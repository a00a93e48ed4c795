//! An in-process OTLP trace collector for the export tests: OTLP/gRPC (tonic service, gzip
//! accepted) or OTLP/HTTP, protobuf or JSON (`POST /v1/traces`, gzip accepted; JSON read by the
//! gateway's own receiver decoder, written to the spec, not by the exporter's), on port 0 or on a
//! known port, with a switchable answer (accept, error status, stall, refuse) and a `stop`
//! that closes the listener and every open connection.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    convert::Infallible,
    fmt::Write as _,
    io::Read as _,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, any_value},
};
use prost::Message;
use tokio::{
    net::{TcpListener, TcpSocket},
    sync::{Notify, oneshot, watch},
    task::{JoinHandle, JoinSet},
};
use tonic::{Code, codec::CompressionEncoding};
use tonic_types::{ErrorDetails, StatusExt};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    Http,
}

/// How the collector answers export requests. Every request is counted, whatever the mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Store the spans and answer success.
    Accept,
    /// HTTP: this status, with `Retry-After: N` when given. gRPC: the matching status code
    /// (429 → RESOURCE_EXHAUSTED, 503 → UNAVAILABLE, see [`grpc_code`]), with a
    /// `google.rpc.RetryInfo` detail and `grpc-retry-pushback-ms` when `retry_after_s` is given.
    Status {
        code: u16,
        retry_after_s: Option<u64>,
    },
    /// Take the request and never answer (until `stop`).
    Stall,
    /// Answer a non-retryable error at once: HTTP 400 / gRPC INVALID_ARGUMENT.
    Refuse,
}

/// An attribute value as received.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
    StrList(Vec<String>),
    /// Anything else (bytes, key-value lists, non-string arrays), as its debug form.
    Other(String),
}

impl AttrValue {
    fn from_proto(value: Option<&AnyValue>) -> AttrValue {
        use any_value::Value;
        match value.and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => AttrValue::Str(s.clone()),
            Some(Value::IntValue(i)) => AttrValue::Int(*i),
            Some(Value::DoubleValue(d)) => AttrValue::Double(*d),
            Some(Value::BoolValue(b)) => AttrValue::Bool(*b),
            Some(Value::ArrayValue(array)) => {
                let strings: Option<Vec<String>> = array
                    .values
                    .iter()
                    .map(|v| match &v.value {
                        Some(Value::StringValue(s)) => Some(s.clone()),
                        _ => None,
                    })
                    .collect();
                match strings {
                    Some(list) => AttrValue::StrList(list),
                    None => AttrValue::Other(format!("{array:?}")),
                }
            }
            other => AttrValue::Other(format!("{other:?}")),
        }
    }

    /// The value as a plain string (resource attributes).
    pub fn to_plain(&self) -> String {
        match self {
            AttrValue::Str(s) | AttrValue::Other(s) => s.clone(),
            AttrValue::Int(i) => i.to_string(),
            AttrValue::Double(d) => d.to_string(),
            AttrValue::Bool(b) => b.to_string(),
            AttrValue::StrList(list) => list.join(","),
        }
    }
}

/// One span as the collector received it, flattened with its resource and scope.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedSpan {
    /// Lowercase hex; "" when absent.
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    pub kind: i32,
    pub flags: u32,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub status_code: i32,
    pub status_message: String,
    pub attributes: BTreeMap<String, AttrValue>,
    /// Resource attributes as strings.
    pub resource: BTreeMap<String, String>,
    pub scope_name: String,
    pub scope_version: String,
    /// The ScopeSpans schema URL, or the ResourceSpans one when the scope has none.
    pub schema_url: String,
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn flatten(request: &ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for rs in &request.resource_spans {
        let resource: BTreeMap<String, String> = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .map(|kv| {
                (
                    kv.key.clone(),
                    AttrValue::from_proto(kv.value.as_ref()).to_plain(),
                )
            })
            .collect();
        for ss in &rs.scope_spans {
            let (scope_name, scope_version) = ss
                .scope
                .as_ref()
                .map(|s| (s.name.clone(), s.version.clone()))
                .unwrap_or_default();
            let schema_url = if ss.schema_url.is_empty() {
                rs.schema_url.clone()
            } else {
                ss.schema_url.clone()
            };
            for span in &ss.spans {
                let (status_code, status_message) = span
                    .status
                    .as_ref()
                    .map(|s| (s.code, s.message.clone()))
                    .unwrap_or_default();
                out.push(ReceivedSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name.clone(),
                    kind: span.kind,
                    flags: span.flags,
                    start_unix_nanos: span.start_time_unix_nano,
                    end_unix_nanos: span.end_time_unix_nano,
                    status_code,
                    status_message,
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), AttrValue::from_proto(kv.value.as_ref())))
                        .collect(),
                    resource: resource.clone(),
                    scope_name: scope_name.clone(),
                    scope_version: scope_version.clone(),
                    schema_url: schema_url.clone(),
                });
            }
        }
    }
    out
}

/// What the collector decided for one request; each transport turns it into its own answer.
enum Outcome {
    Accepted,
    Status {
        code: u16,
        retry_after_s: Option<u64>,
    },
    Refused,
    /// A stalled request released by `stop`.
    Stopped,
    /// HTTP only: the body was not a protobuf `ExportTraceServiceRequest`.
    Undecodable(String),
}

struct Shared {
    mode: Mutex<Mode>,
    spans: Mutex<Vec<ReceivedSpan>>,
    requests: AtomicUsize,
    /// The `Content-Type` of every OTLP/HTTP request, in order.
    content_types: Mutex<Vec<String>>,
    /// Woken on every request and every stored batch.
    changed: Notify,
    /// Turns true in `stop`: releases stalled requests.
    stopped: watch::Sender<bool>,
}

impl Shared {
    async fn receive(&self, request: Result<ExportTraceServiceRequest, String>) -> Outcome {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
        let request = match request {
            Ok(r) => r,
            Err(e) => return Outcome::Undecodable(e),
        };
        let mode = *self.mode.lock().unwrap();
        match mode {
            Mode::Accept => {
                self.spans.lock().unwrap().extend(flatten(&request));
                self.changed.notify_waiters();
                Outcome::Accepted
            }
            Mode::Status {
                code,
                retry_after_s,
            } => Outcome::Status {
                code,
                retry_after_s,
            },
            Mode::Refuse => Outcome::Refused,
            Mode::Stall => {
                let mut stopped = self.stopped.subscribe();
                let _ = stopped.wait_for(|s| *s).await;
                Outcome::Stopped
            }
        }
    }
}

pub struct Collector {
    pub addr: SocketAddr,
    pub transport: Transport,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl Collector {
    /// A collector on 127.0.0.1, port 0.
    /// Starts on a port outside the ephemeral range, so `stop` and `start_on` the same address
    /// cannot lose the port to another connection in between.
    pub async fn start(transport: Transport) -> Collector {
        let port = super::restartable_port();
        Collector::start_on(transport, SocketAddr::from(([127, 0, 0, 1], port))).await
    }

    /// A collector on a given address, e.g. the one of a stopped collector (SO_REUSEADDR is
    /// set, so connections in TIME_WAIT do not block the restart).
    pub async fn start_on(transport: Transport, addr: SocketAddr) -> Collector {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket
            .bind(addr)
            .unwrap_or_else(|e| panic!("the test collector cannot bind {addr}: {e}"));
        let listener = socket.listen(1024).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Accept),
            spans: Mutex::new(Vec::new()),
            requests: AtomicUsize::new(0),
            changed: Notify::new(),
            content_types: Mutex::new(Vec::new()),
            stopped: watch::Sender::new(false),
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let server = tokio::spawn(serve(listener, transport, shared.clone(), stop_rx));
        Collector {
            addr,
            transport,
            shared,
            stop: Some(stop_tx),
            server: Some(server),
        }
    }

    /// The exporter endpoint: `http://127.0.0.1:PORT` (gRPC) or `…/v1/traces` (HTTP).
    pub fn endpoint(&self) -> String {
        match self.transport {
            Transport::Grpc => format!("http://{}", self.addr),
            Transport::Http => format!("http://{}/v1/traces", self.addr),
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// Closes the listener and every open connection (stalled requests included) and waits
    /// until they are gone: afterwards the port refuses connections.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .expect("the test collector did not stop within 10 s")
                .expect("the test collector's server task panicked");
        }
        // Only now, with every connection gone, let stalled handlers (HTTP/2 streams run in
        // tasks of their own) finish: their answers go nowhere.
        self.shared.stopped.send_replace(true);
    }

    /// Spans stored so far (successful requests only), in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared.spans.lock().unwrap().clone()
    }

    /// Export requests received so far, in any mode.
    /// The `Content-Type` of every OTLP/HTTP request so far.
    pub fn content_types(&self) -> Vec<String> {
        self.shared.content_types.lock().unwrap().clone()
    }

    pub fn export_requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` spans are stored; panics after `timeout`.
    pub async fn wait_for_spans(&self, n: usize, timeout: Duration) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            let spans = self.spans();
            if spans.len() >= n {
                return spans;
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "the test collector ({:?} on {}) has {} span(s) after {timeout:?}, expected {n}; \
                     it received {} export request(s), mode {:?}; spans: {:?}",
                    self.transport,
                    self.addr,
                    spans.len(),
                    self.export_requests(),
                    *self.shared.mode.lock().unwrap(),
                    spans.iter().map(|s| &s.name).collect::<Vec<_>>(),
                );
            }
            let _ = tokio::time::timeout((deadline - now).min(Duration::from_millis(50)), changed)
                .await;
        }
    }

    /// Waits until at least `n` export requests arrived; panics after `timeout`.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            if self.export_requests() >= n {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "the test collector ({:?} on {}) received {} export request(s) after \
                     {timeout:?}, expected {n}",
                    self.transport,
                    self.addr,
                    self.export_requests(),
                );
            }
            let _ = tokio::time::timeout((deadline - now).min(Duration::from_millis(50)), changed)
                .await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        // Not stopped explicitly: let the server wind down in the background.
        self.shared.stopped.send_replace(true);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The accept loop. Every connection is a task in `conns`; on stop the listener is dropped
/// and those tasks are aborted, which closes their sockets.
async fn serve(
    listener: TcpListener,
    transport: Transport,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let grpc = TraceServiceServer::new(GrpcCollector(shared.clone()))
        .accept_compressed(CompressionEncoding::Gzip);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let io = TokioIo::new(stream);
                match transport {
                    Transport::Grpc => {
                        let service = TowerToHyperService::new(grpc.clone());
                        conns.spawn(async move {
                            let _ = auto::Builder::new(TokioExecutor::new())
                                .http2_only()
                                .serve_connection(io, service)
                                .await;
                        });
                    }
                    Transport::Http => {
                        let shared = shared.clone();
                        let service = hyper::service::service_fn(move |req| {
                            http_export(shared.clone(), req)
                        });
                        conns.spawn(async move {
                            let _ = auto::Builder::new(TokioExecutor::new())
                                .serve_connection(io, service)
                                .await;
                        });
                    }
                }
            }
        }
    }
    drop(listener);
    conns.shutdown().await;
}

struct GrpcCollector(Arc<Shared>);

#[tonic::async_trait]
impl TraceService for GrpcCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        match self.0.receive(Ok(request.into_inner())).await {
            Outcome::Accepted => Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            })),
            Outcome::Status {
                code,
                retry_after_s,
            } => Err(grpc_status(code, retry_after_s)),
            Outcome::Refused => Err(tonic::Status::invalid_argument(
                "refused by the test collector",
            )),
            Outcome::Stopped => Err(tonic::Status::unavailable("the test collector stopped")),
            Outcome::Undecodable(e) => Err(tonic::Status::invalid_argument(e)),
        }
    }
}

/// The gRPC code standing for an HTTP status in `Mode::Status`.
pub fn grpc_code(http_status: u16) -> Code {
    match http_status {
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        408 | 504 => Code::DeadlineExceeded,
        409 => Code::Aborted,
        413 | 429 => Code::ResourceExhausted,
        499 => Code::Cancelled,
        500 => Code::Internal,
        501 => Code::Unimplemented,
        502 | 503 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

fn grpc_status(http_status: u16, retry_after_s: Option<u64>) -> tonic::Status {
    let code = grpc_code(http_status);
    let message = format!("the test collector answers {http_status}");
    match retry_after_s {
        None => tonic::Status::new(code, message),
        Some(s) => {
            let mut status = tonic::Status::with_error_details(
                code,
                message,
                ErrorDetails::with_retry_info(Some(Duration::from_secs(s))),
            );
            if let Ok(v) = (s * 1000).to_string().parse() {
                status.metadata_mut().insert("grpc-retry-pushback-ms", v);
            }
            status
        }
    }
}

async fn http_export(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/v1/traces" {
        return Ok(rpc_error(
            StatusCode::NOT_FOUND,
            Code::NotFound,
            "not found",
        ));
    }
    if req.method() != Method::POST {
        return Ok(rpc_error(
            StatusCode::METHOD_NOT_ALLOWED,
            Code::Unimplemented,
            "POST only",
        ));
    }
    let gzip = req
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"));
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let json = content_type.starts_with("application/json");
    shared
        .content_types
        .lock()
        .unwrap()
        .push(content_type.clone());
    let request = match req.into_body().collect().await {
        Ok(body) => decode_http(&body.to_bytes(), gzip, json),
        Err(e) => Err(format!("reading the body: {e}")),
    };
    let response = match shared.receive(request).await {
        // The answer uses the request's encoding (OTLP/HTTP spec).
        Outcome::Accepted if json => {
            let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            response
        }
        Outcome::Accepted => {
            let mut response = Response::new(Full::new(Bytes::from(
                ExportTraceServiceResponse {
                    partial_success: None,
                }
                .encode_to_vec(),
            )));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/x-protobuf"),
            );
            response
        }
        Outcome::Status {
            code,
            retry_after_s,
        } => {
            let status = StatusCode::from_u16(code).expect("Mode::Status needs a valid status");
            let mut response = rpc_error(
                status,
                grpc_code(code),
                &format!("the test collector answers {code}"),
            );
            if let Some(s) = retry_after_s {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from(s));
            }
            response
        }
        Outcome::Refused => rpc_error(
            StatusCode::BAD_REQUEST,
            Code::InvalidArgument,
            "refused by the test collector",
        ),
        Outcome::Stopped => rpc_error(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::Unavailable,
            "the test collector stopped",
        ),
        Outcome::Undecodable(e) => rpc_error(StatusCode::BAD_REQUEST, Code::InvalidArgument, &e),
    };
    Ok(response)
}

fn decode_http(body: &[u8], gzip: bool, json: bool) -> Result<ExportTraceServiceRequest, String> {
    let mut inflated = Vec::new();
    let bytes = if gzip {
        flate2::read::GzDecoder::new(body)
            .read_to_end(&mut inflated)
            .map_err(|e| format!("gunzip: {e}"))?;
        &inflated[..]
    } else {
        body
    };
    if json {
        return sidetrace::ingest::json::decode(bytes).map_err(|e| format!("json: {e}"));
    }
    ExportTraceServiceRequest::decode(bytes).map_err(|e| format!("protobuf: {e}"))
}

/// An OTLP/HTTP error answer: the status and a protobuf `google.rpc.Status` body.
fn rpc_error(status: StatusCode, code: Code, message: &str) -> Response<Full<Bytes>> {
    let body = tonic_types::Status {
        code: code as i32,
        message: message.to_string(),
        details: Vec::new(),
    }
    .encode_to_vec();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-protobuf"),
    );
    response
}
