//! The record layer: the "logging" phase of every routed call. It sits directly under routing,
//! outside everything that can refuse a call (body limits, inspection, budgets), starts a
//! `Call` and makes sure it is finished exactly once: when the response body ends, fails or is
//! dropped (client gone), when the exchange fails before headers, or when a layer inside
//! refuses the call. The layers inside tell it what they learned through a [`CallSlot`] in the
//! request extensions: inspection the request (model, parameters, content), budgets their
//! reservation.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use http::{HeaderValue, Request, Response, header};
use http_body_util::BodyExt;
use tower::{Layer, Service};

use super::{
    body::{BoxError, ProxyBody},
    reply::{ClientWants, CostSummary, EndExtras, TRAILER_NAMES, buffer_and_price},
    tap::TapBody,
    timeouts::BodyTimeout,
};
pub use crate::config::OnDisconnect;
use crate::{
    call::{
        record::{CallRecord, Outcome, RequestInfo},
        recorder::Recorder,
    },
    error::ProxyError,
    format::{BodyParser, ParserLimits},
    metrics::Metrics,
    provider::{Route, WireFormat},
    store::budgets::Reservation,
    trace::{
        capture::{CapturedContent, REDACTION_MARGIN},
        context::TraceContext,
        metadata::{CallMetadata, CaptureLevel},
    },
};

/// What the layers inside the record layer learned about the call, for its record. Shared
/// through the request extensions; the record layer takes it when the inner layers answer (or
/// when the call is finished earlier).
#[derive(Clone, Default)]
pub struct CallSlot(Arc<Mutex<Draft>>);

#[derive(Default)]
struct Draft {
    info: Option<RequestInfo>,
    metadata: Option<CallMetadata>,
    content: Option<CapturedContent>,
    /// The store's copy of the content, when it was captured apart from the export's (see
    /// `Capturer::request_apart` and `Capturer::request_body`).
    kept_content: Option<CapturedContent>,
    reservation: Option<Reservation>,
    /// The trace the call joined (an agent loop with no trace header), replacing the one read
    /// from its headers.
    trace: Option<TraceContext>,
}

impl CallSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Draft> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Inspection: what the request said, the metadata with its body fields, the content.
    pub fn fill_request(
        &self,
        info: RequestInfo,
        metadata: Option<CallMetadata>,
        content: Option<CapturedContent>,
        kept_content: Option<CapturedContent>,
    ) {
        let mut draft = self.lock();
        draft.info = Some(info);
        draft.metadata = metadata;
        draft.content = content;
        draft.kept_content = kept_content;
    }

    /// Inspection: the call joins an earlier call's trace (see `call::tools`).
    pub fn join_trace(&self, trace: TraceContext) {
        self.lock().trace = Some(trace);
    }

    /// The key check: the metadata with the key's name (and what it stands for), for a call
    /// refused before inspection fills the request in.
    pub fn set_metadata(&self, metadata: CallMetadata) {
        self.lock().metadata = Some(metadata);
    }

    /// The model the request names, once inspection has read it.
    pub fn requested_model(&self) -> Option<String> {
        self.lock().info.as_ref()?.model.clone()
    }

    /// Budgets: what they hold for this call until it is recorded.
    pub fn hold(&self, reservation: Reservation) {
        self.lock().reservation = Some(reservation);
    }

    fn take(&self) -> Draft {
        std::mem::take(&mut *self.lock())
    }
}

/// How a failure maps to the call's outcome and `error.type`: the one place that decides it.
fn outcome_of(e: &ProxyError) -> (Outcome, &'static str) {
    match e {
        ProxyError::UpstreamTimeout { .. } => (Outcome::Timeout, "timeout"),
        ProxyError::UpstreamUnreachable { .. } => (Outcome::UpstreamError, e.code()),
        ProxyError::ClientBody(_) => (Outcome::Cancelled, "cancelled"),
        // Refusals after routing: budget, body too large or too slow, buffers full, ...
        _ => (Outcome::GatewayError, e.code()),
    }
}

/// A successful stream whose body ended cleanly before the provider's own end (`[DONE]`,
/// `message_stop`, `response.completed`, ...) and before any finish reason: the upstream cut it
/// short (a proxy or a server that closed it), and what it said is not the answer. Recorded
/// as an upstream error, `stream_incomplete`, as a reset body is. A finish reason without the
/// end marker is an answer whose usage may be missing, recorded as completed.
fn cut_short(record: &CallRecord) -> bool {
    record.status.is_some_and(|s| (200..300).contains(&s))
        && record.response.as_ref().is_some_and(|r| {
            !r.stream_completed && r.error.is_none() && r.finish_reasons.is_empty()
        })
}

/// How a response body that failed mid-way maps to the call's outcome and `error.type`.
pub(super) fn body_outcome(e: &BoxError) -> (Outcome, &'static str) {
    if e.downcast_ref::<BodyTimeout>().is_some() {
        (Outcome::Timeout, "timeout")
    } else {
        (Outcome::UpstreamError, "upstream_reset")
    }
}

#[derive(Clone)]
pub struct RecordLayer {
    recorder: Arc<Recorder>,
    metrics: Arc<Metrics>,
    limits: ParserLimits,
    on_disconnect: OnDisconnect,
    cost_headers_max_body_bytes: usize,
    capture_output_bytes: usize,
}

impl RecordLayer {
    pub fn new(
        recorder: Arc<Recorder>,
        metrics: Arc<Metrics>,
        limits: ParserLimits,
        on_disconnect: OnDisconnect,
        cost_headers_max_body_bytes: usize,
        capture_output_bytes: usize,
    ) -> Self {
        RecordLayer {
            recorder,
            metrics,
            limits,
            on_disconnect,
            cost_headers_max_body_bytes,
            capture_output_bytes,
        }
    }

    /// The upstream answered: choose the parser, then either read a small JSON body whole (so
    /// its headers can carry the cost) or hand the body to the tap.
    async fn respond(
        &self,
        mut call: Box<Call>,
        route: Route,
        wants: ClientWants,
        response: Response<ProxyBody>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        call.headers(response.status().as_u16());
        let (strip_usage, requested_stream, capture_text) = match &call.record {
            Some(r) => (
                r.request.include_usage_injected,
                r.request.stream,
                [&r.content, &r.kept_content]
                    .into_iter()
                    .flatten()
                    .any(|c| c.level >= Some(CaptureLevel::Redacted)),
            ),
            None => (false, false, false),
        };
        // Output is assembled only when the call's content is captured with text; past the
        // size limit by a margin, so that redaction sees a finding across it whole (each copy
        // is cut to the limit once redacted).
        let limits = ParserLimits {
            capture_output_bytes: if capture_text && self.capture_output_bytes > 0 {
                self.capture_output_bytes.saturating_add(REDACTION_MARGIN)
            } else {
                0
            },
            ..self.limits
        };
        let encoded = response
            .headers()
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes() != b"identity");
        call.parser = if encoded {
            // Compressed by the upstream although we asked for identity: passed through as it
            // is, but its usage cannot be read. Counted, not hidden.
            if route.format != WireFormat::Passthrough {
                self.metrics.call_uninspected("content_encoding");
            }
            None
        } else {
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            BodyParser::for_response(route.format, route.provider.quirks, content_type, limits)
        };
        let is_stream = call.parser.as_ref().is_some_and(BodyParser::is_stream);
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        let (declared_json, is_sse) = (
            content_type.starts_with(b"application/json"),
            content_type.starts_with(b"text/event-stream"),
        );
        // A streamed request is streamed whatever its answer's content type: Gemini's
        // `streamGenerateContent` without `alt=sse` streams a JSON array, as application/json,
        // and held back it would reach the client only once whole. Its error answers (JSON,
        // whole at once) are read whole, for their headers.
        let error_answer = response.status().as_u16() >= 400;
        if self.cost_headers_max_body_bytes > 0
            && call.parser.is_some()
            && !is_stream
            && (!requested_stream || (declared_json && error_answer))
        {
            let host = route.host().to_string();
            return buffer_and_price(call, response, self.cost_headers_max_body_bytes, host).await;
        }
        let strip = strip_usage && is_stream;
        let extras = EndExtras {
            trailers: wants.trailers && is_stream,
            comment: wants.sse_comment && is_sse,
        };
        let mut response = response;
        if strip || extras.trailers || extras.comment {
            // The body will differ in length from the upstream's.
            response.headers_mut().remove(header::CONTENT_LENGTH);
        }
        if extras.trailers {
            response
                .headers_mut()
                .insert(header::TRAILER, HeaderValue::from_static(TRAILER_NAMES));
        }
        let max_pending = self.limits.max_event_bytes;
        let on_disconnect = self.on_disconnect;
        Ok(response.map(|body| {
            TapBody::new(
                body,
                call,
                strip,
                VecDeque::new(),
                extras,
                max_pending,
                on_disconnect,
            )
            .boxed_unsync()
        }))
    }
}

impl<S> Layer<S> for RecordLayer {
    type Service = Record<S>;
    fn layer(&self, inner: S) -> Record<S> {
        Record {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Record<S> {
    inner: S,
    layer: RecordLayer,
}

impl<S, B> Service<Request<B>> for Record<S>
where
    S: Service<Request<B>, Response = Response<ProxyBody>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = super::BoxFuture<Result<Response<ProxyBody>, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let ext = req.extensions();
        let (Some(route), Some(trace)) = (
            ext.get::<Route>().cloned(),
            ext.get::<TraceContext>().cloned(),
        ) else {
            return Box::pin(self.inner.call(req));
        };
        let metadata = ext.get::<CallMetadata>().cloned().unwrap_or_default();
        // Read before the rewrite drops TE (hop-by-hop) and the x-sidetrace-* headers.
        let wants = ClientWants::from_headers(req.headers());
        let slot = CallSlot::default();
        req.extensions_mut().insert(slot.clone());
        let mut call = Call::start(
            self.layer.recorder.clone(),
            &route,
            req.method().as_str(),
            (trace, metadata),
            slot,
        );
        let layer = self.layer.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            call.absorb();
            match result {
                Ok(response) => layer.respond(call, route, wants, response).await,
                Err(e) => {
                    let (outcome, error_type) = outcome_of(&e);
                    call.finish(outcome, Some(error_type.to_string()), false);
                    Err(e)
                }
            }
        })
    }
}

/// A call under way. Finishing hands its record to the recorder; dropping an unfinished call
/// finishes it as cancelled (or `shutdown` when shutdown cut it), so every call is recorded
/// exactly once.
pub struct Call {
    pub(super) recorder: Arc<Recorder>,
    record: Option<CallRecord>,
    started: Instant,
    pub(super) parser: Option<BodyParser>,
    /// Where the inner layers leave what they learn, until it is absorbed into the record.
    slot: Option<CallSlot>,
    /// What the budgets hold for this call; released when the call is dropped, after it was
    /// recorded.
    reservation: Option<Reservation>,
}

impl Call {
    /// Boxed: a call is about 2 KB (its record, its parser) and moves from the record layer's
    /// future into the response's and then into the body; a box moves as a pointer.
    fn start(
        recorder: Arc<Recorder>,
        route: &Route,
        method: &str,
        (trace, metadata): (TraceContext, CallMetadata),
        slot: CallSlot,
    ) -> Box<Call> {
        Box::new(Call {
            recorder,
            record: Some(CallRecord {
                provider: route.provider.name.clone(),
                gen_ai_provider: route.provider.gen_ai_provider.clone(),
                format: route.format,
                method: method.to_string(),
                path: route.uri.path().to_string(),
                server_address: route.address().to_string(),
                server_port: route.port(),
                request: RequestInfo::default(),
                status: None,
                response: None,
                outcome: Outcome::Completed,
                error_type: None,
                started_at: SystemTime::now(),
                duration: Duration::ZERO,
                time_to_headers: None,
                time_to_first_chunk: None,
                time_to_first_token: None,
                trace,
                metadata,
                content: None,
                kept_content: None,
                cost_pico_usd: None,
                priced_model: None,
                input_cost_pico_usd: None,
            }),
            started: Instant::now(),
            parser: None,
            slot: Some(slot),
            reservation: None,
        })
    }

    /// Takes what the inner layers learned into the record (once).
    fn absorb(&mut self) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        let draft = slot.take();
        if let Some(record) = &mut self.record {
            if let Some(info) = draft.info {
                record.request = info;
            }
            if let Some(metadata) = draft.metadata {
                record.metadata = metadata;
            }
            record.content = draft.content;
            record.kept_content = draft.kept_content;
            if let Some(trace) = draft.trace {
                record.trace = trace;
            }
        }
        self.reservation = draft.reservation;
    }

    fn headers(&mut self, status: u16) {
        if let Some(r) = &mut self.record {
            r.status = Some(status);
            r.time_to_headers = Some(self.started.elapsed());
        }
    }

    pub(super) fn feed(&mut self, data: &[u8]) {
        self.note_first_chunk();
        if let Some(parser) = &mut self.parser {
            parser.feed(data);
            self.note_first_token();
        }
    }

    pub(super) fn note_first_chunk(&mut self) {
        if let Some(record) = &mut self.record
            && record.time_to_first_chunk.is_none()
        {
            record.time_to_first_chunk = Some(self.started.elapsed());
        }
    }

    pub(super) fn note_first_token(&mut self) {
        if let (Some(parser), Some(record)) = (&self.parser, &mut self.record)
            && record.time_to_first_token.is_none()
            && parser.is_stream()
            && parser.output_started()
        {
            record.time_to_first_token = Some(self.started.elapsed());
        }
    }

    /// Finishes the call (once): the record is priced and handed to the recorder. Returns what
    /// the client may be told about it.
    pub(super) fn finish(
        &mut self,
        outcome: Outcome,
        error_type: Option<String>,
        clean: bool,
    ) -> Option<CostSummary> {
        self.absorb();
        let mut record = self.record.take()?;
        record.duration = self.started.elapsed();
        let stream = self.parser.as_ref().is_some_and(|p| p.is_stream());
        record.response = self.parser.take().map(|p| p.finish(clean));
        let (outcome, error_type) = match (outcome, error_type) {
            (Outcome::Completed, None) if stream && cut_short(&record) => (
                Outcome::UpstreamError,
                Some("stream_incomplete".to_string()),
            ),
            other => other,
        };
        record.outcome = outcome;
        record.error_type = error_type.or_else(|| {
            let inband = record.response.as_ref().and_then(|r| r.error.as_ref());
            match (inband, record.status) {
                (Some(e), _) => Some(e.kind.clone().unwrap_or_else(|| "_OTHER".to_string())),
                (None, Some(status)) if status >= 400 => Some(status.to_string()),
                _ => None,
            }
        });
        self.recorder.price(&mut record);
        let summary = CostSummary::of(&record);
        self.recorder.record(record);
        Some(summary)
    }

    /// Why an unfinished call was dropped: its client left, or shutdown cut it.
    fn dropped_because(&self) -> &'static str {
        if self.recorder.cutting() {
            "shutdown"
        } else {
            "cancelled"
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let kind = self.dropped_because();
        self.finish(Outcome::Cancelled, Some(kind.to_string()), false);
    }
}
