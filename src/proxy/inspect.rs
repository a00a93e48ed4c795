//! Request inspection: on routes whose wire format the gateway reads, the JSON request body is
//! read whole (it is small, and bounded by the body limit) and the route's API (in `format`)
//! says what it asks for: the model, the stream flag, the generation parameters, and a body
//! with `stream_options.include_usage` added where the API has that option and the stream lacks
//! it. Other routes (uploads, files) keep streaming untouched. The bytes held at once over all
//! calls are bounded (`max_buffered_request_bytes`): past it a call gets 503.

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
use tower::{Layer, Service};

use super::{
    body::{Holding, ProxyBody, RequestBody},
    context::JoinedTrace,
    record::CallSlot,
};
use crate::{
    call::{RequestInfo, recorder::Recorder},
    error::ProxyError,
    format::{
        request::{self, RequestFields},
        tree::Json,
    },
    metrics::Metrics,
    provider::{Route, WireFormat},
    trace::{
        capture::{CapturedContent, Capturer},
        context::{TraceContext, TraceSource},
        metadata::{CallMetadata, CaptureLevel},
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
    recorder: Arc<Recorder>,
}

impl InspectLayer {
    pub fn new(
        inject_include_usage: bool,
        capturer: Arc<Capturer>,
        buffers: Arc<RequestBuffers>,
        recorder: Arc<Recorder>,
    ) -> Self {
        InspectLayer {
            inject_include_usage,
            capturer,
            buffers,
            recorder,
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
            recorder: self.recorder.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Inspect<S> {
    inner: S,
    inject_include_usage: bool,
    capturer: Arc<Capturer>,
    buffers: Arc<RequestBuffers>,
    recorder: Arc<Recorder>,
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
        let recorder = self.recorder.clone();
        let held = self.buffers.hold();
        // The service was polled ready; hand that instance to the future and keep a fresh clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let (bytes, held) = read_whole(body, &parts.headers, held).await?;
            let path = parts.uri.path().to_string();
            let metadata = parts.extensions.get::<CallMetadata>();
            let asked = metadata.and_then(|m| m.capture);
            let level = metadata.map(|_| capturer.capture_level(asked));
            // Kept for the store as the body came (redacted), it is read into the GenAI shapes
            // when the store reads it, not here.
            let body_for_store = level.is_some() && capturer.body_for_store(asked, bytes.len());
            // Content captured whole is read into a tree once, for the typed read too.
            let tree = level
                .filter(|&l| l >= CaptureLevel::Redacted && !body_for_store)
                .and_then(|_| crate::format::json::from_bytes::<Json>(&bytes).ok());
            let (info, rewritten, fields) = inspect(&route, &path, &bytes, tree.as_ref(), inject);
            // Decided here, before the request goes upstream, so the propagated
            // `traceparent` names the joined trace.
            let joined = follow_agent_loop(&recorder, &mut parts, route.format, &bytes, &fields);
            let (mut content, mut kept) = (None, None);
            if let (Some(metadata), Some(level)) =
                (parts.extensions.get_mut::<CallMetadata>(), level)
            {
                if let Some(f) = &fields {
                    metadata.add_body_fields(f.user.as_deref(), &f.metadata_pairs());
                }
                content = match (level, &fields, &tree) {
                    (CaptureLevel::None, _, _) | (_, None, _) => None,
                    // Counts and tool names come from the typed parse already done.
                    (CaptureLevel::Metadata, Some(f), _) => {
                        Some(capturer.metadata(f.input_message_count(), f.tool_names()))
                    }
                    (_, Some(f), _) if body_for_store => {
                        kept = capturer.request_body(route.format, &bytes).or_else(|| {
                            let tree = crate::format::json::from_bytes::<Json>(&bytes).ok()?;
                            Some(capturer.request(CaptureLevel::Redacted, route.format, &tree))
                        });
                        (capturer.level(asked) == CaptureLevel::Metadata)
                            .then(|| capturer.metadata(f.input_message_count(), f.tool_names()))
                    }
                    (_, Some(_), Some(tree)) => {
                        match capturer.request_apart(asked, route.format, tree) {
                            Some((exported, stored)) => {
                                kept = Some(stored);
                                Some(exported)
                            }
                            None => Some(capturer.request(level, route.format, tree)),
                        }
                    }
                    (_, Some(_), None) => Some(CapturedContent::default()),
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
                slot.fill_request(info, metadata, content, kept);
                if let Some(trace) = &joined {
                    slot.join_trace(trace.clone());
                }
            }
            // For the trace context layer, which names the call's trace in the response.
            if let (Some(trace), Some(cell)) = (&joined, parts.extensions.get::<JoinedTrace>()) {
                cell.set(trace.clone());
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

/// Tool results and agent loops: the request's tool results end the tool spans of the calls
/// they answer, and a request with no trace header and no explicit session header that
/// continues an earlier call (answers its tool calls, or names its response as
/// `previous_response_id`) joins that call's trace, and its session unless a coding agent's
/// own session header names one. Returns the joined trace, which replaces the one in the
/// extensions. Explicit headers always win: a request with `traceparent`,
/// `x-sidetrace-trace-id` or a session header set on purpose (`x-sidetrace-session-id` and its
/// aliases) is not joined; one whose coding-agent session differs from the earlier call's is
/// not joined either.
fn follow_agent_loop(
    recorder: &Recorder,
    parts: &mut http::request::Parts,
    format: WireFormat,
    body: &[u8],
    fields: &Option<RequestFields>,
) -> Option<TraceContext> {
    let tools = recorder.tools()?;
    let results = request::tool_results(format, body);
    let previous = fields
        .as_ref()
        .and_then(|f| f.previous_response_id.as_deref());
    let metadata = parts.extensions.get::<CallMetadata>();
    let asked = metadata.and_then(|m| m.capture);
    let session = metadata.and_then(|m| m.session_id.clone());
    let explicit_session = metadata.is_some_and(|m| m.session_explicit);
    let own = parts.extensions.get::<TraceContext>();
    let may_join = own.is_some_and(|t| t.source == TraceSource::New) && !explicit_session;
    let joined = if may_join && (!results.is_empty() || previous.is_some()) {
        tools
            .join(&results, previous, session.as_deref())
            .and_then(|asker| {
                let own = parts.extensions.get::<TraceContext>()?;
                let trace = asker.followed_by(own.span_id);
                parts.extensions.insert(trace.clone());
                if session.is_none()
                    && let Some(m) = parts.extensions.get_mut::<CallMetadata>()
                {
                    m.session_id = asker.session_id.clone();
                }
                Some(trace)
            })
    } else {
        None
    };
    if let Some(trace) = parts.extensions.get::<TraceContext>() {
        recorder.tool_results(&results, trace.trace_id, asked);
    }
    joined
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

pub(super) fn body_error(e: super::body::BoxError) -> ProxyError {
    super::limit::refusal(&*e).unwrap_or_else(|| {
        // The client's own error says what failed once ("client request body failed: ...").
        let why = match e.downcast_ref::<super::limit::ClientBodyError>() {
            Some(client) => client.0.clone(),
            None => e.to_string(),
        };
        ProxyError::ClientBody(why)
    })
}

/// Asks the route's API what the request says (from `tree` when the body was read into one)
/// and, when `inject` allows, for a body that asks for the stream's usage too.
pub fn inspect(
    route: &Route,
    path: &str,
    body: &[u8],
    tree: Option<&Json<'_>>,
    inject: bool,
) -> (RequestInfo, Option<Bytes>, Option<RequestFields>) {
    let body_bytes = body.len() as u64;
    let request = match tree {
        Some(tree) => request::Request::read_tree(route.format, path, tree),
        None => request::Request::read(route.format, path, body),
    };
    let Some(request) = request else {
        return (
            RequestInfo {
                body_bytes,
                ..RequestInfo::default()
            },
            None,
            None,
        );
    };
    let rewritten = if inject {
        request.with_stream_usage(body)
    } else {
        None
    };
    let info = RequestInfo {
        model: request.model,
        stream: request.stream,
        include_usage_requested: request.include_usage_requested,
        include_usage_injected: rewritten.is_some(),
        params: request.params,
        parsed: request.fields.is_some(),
        body_bytes,
    };
    (info, rewritten, request.fields)
}
