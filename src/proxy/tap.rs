//! The record layer and the tap. The layer starts a `Call` for every routed request and makes
//! sure it is finished exactly once: when the response body ends, fails, or is dropped (client
//! gone), or when the exchange fails before headers. The tap body observes each frame as it
//! passes (a borrow, no copy) and feeds the response parser; it changes nothing, except that it
//! removes the usage-only chunk when the gateway itself asked for it (include_usage injection).

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tower::{Layer, Service};

use super::{
    body::{BoxError, ProxyBody},
    timeouts::BodyTimeout,
};
use crate::{
    call::{CallRecord, Outcome, Recorder, RequestInfo},
    cost::Cost,
    error::ProxyError,
    format::{BodyParser, EventKind, ParserLimits},
    provider::{Route, WireFormat},
    store::budgets::Reservation,
    trace::{
        capture::CapturedContent,
        context::TraceContext,
        metadata::{CallMetadata, CaptureLevel},
    },
};

/// What to do with the upstream call when the client goes away mid-stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDisconnect {
    /// Drop the upstream request at once (stops generation and its cost).
    Cancel,
    /// Read the rest of the upstream response in the background to record full usage.
    Finish,
}

#[derive(Clone)]
pub struct RecordLayer {
    recorder: Arc<Recorder>,
    limits: ParserLimits,
    on_disconnect: OnDisconnect,
    cost_headers_max_body_bytes: usize,
    capture_output_bytes: usize,
}

impl RecordLayer {
    pub fn new(
        recorder: Arc<Recorder>,
        limits: ParserLimits,
        on_disconnect: OnDisconnect,
        cost_headers_max_body_bytes: usize,
        capture_output_bytes: usize,
    ) -> Self {
        RecordLayer {
            recorder,
            limits,
            on_disconnect,
            cost_headers_max_body_bytes,
            capture_output_bytes,
        }
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
        let Some(route) = req.extensions().get::<Route>().cloned() else {
            return Box::pin(self.inner.call(req));
        };
        let info = req
            .extensions()
            .get::<RequestInfo>()
            .cloned()
            .unwrap_or_default();
        let wants = req
            .extensions()
            .get::<ClientWants>()
            .copied()
            .unwrap_or_default();
        let strip_usage = info.include_usage_injected;
        let requested_stream = info.stream;
        let ext = req.extensions();
        let Some(trace) = ext.get::<TraceContext>().cloned() else {
            return Box::pin(self.inner.call(req));
        };
        let metadata = ext.get::<CallMetadata>().cloned().unwrap_or_default();
        let content = ext.get::<CapturedContent>().cloned();
        // Output is assembled only when the call's content is captured with text.
        let limits = ParserLimits {
            capture_output_bytes: if content.as_ref().and_then(|c| c.level)
                >= Some(CaptureLevel::Redacted)
            {
                self.layer.capture_output_bytes
            } else {
                0
            },
            ..self.layer.limits
        };
        let mut call = Call::start(
            self.layer.recorder.clone(),
            &route,
            req.method().as_str(),
            info,
            (trace, metadata, content),
        );
        call.reservation = req.extensions_mut().remove::<Arc<Reservation>>();
        let layer = self.layer.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            match fut.await {
                Ok(response) => {
                    call.headers(response.status().as_u16());
                    let encoded = response
                        .headers()
                        .get(header::CONTENT_ENCODING)
                        .is_some_and(|v| v.as_bytes() != b"identity");
                    let parser = if encoded {
                        // Compressed by the upstream although we asked for identity: passed
                        // through as it is, but its usage cannot be read. Counted, not hidden.
                        if route.format != WireFormat::Passthrough {
                            layer
                                .recorder
                                .metrics()
                                .call_uninspected("content_encoding");
                        }
                        None
                    } else {
                        let content_type = response
                            .headers()
                            .get(header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok());
                        BodyParser::for_response(
                            route.format,
                            route.provider.quirks,
                            content_type,
                            limits,
                        )
                    };
                    call.parser = parser;
                    let is_stream = call.parser.as_ref().is_some_and(BodyParser::is_stream);
                    let declared_json = response
                        .headers()
                        .get(header::CONTENT_TYPE)
                        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
                    // A streamed request answered with an odd content type is still streamed.
                    if layer.cost_headers_max_body_bytes > 0
                        && call.parser.is_some()
                        && !is_stream
                        && (!requested_stream || declared_json)
                    {
                        let host = route.host().to_string();
                        return buffer_and_price(
                            call,
                            response,
                            layer.cost_headers_max_body_bytes,
                            host,
                        )
                        .await;
                    }
                    let strip = strip_usage && is_stream;
                    let is_sse = response
                        .headers()
                        .get(header::CONTENT_TYPE)
                        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
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
                    Ok(response.map(|body| {
                        TapBody {
                            inner: Some(body),
                            call: Some(call),
                            strip: strip.then(Strip::default),
                            queued: VecDeque::new(),
                            extras,
                            max_pending: layer.limits.max_event_bytes,
                            on_disconnect: layer.on_disconnect,
                        }
                        .boxed_unsync()
                    }))
                }
                Err(e) => {
                    let outcome = match &e {
                        ProxyError::UpstreamTimeout { .. } => Outcome::Timeout,
                        ProxyError::UpstreamUnreachable { .. } => Outcome::UpstreamError,
                        ProxyError::ClientBody(_) => Outcome::Cancelled,
                        _ => Outcome::GatewayError,
                    };
                    let error_type = match outcome {
                        Outcome::Timeout => "timeout",
                        Outcome::Cancelled => "cancelled",
                        _ => e.code(),
                    };
                    call.finish(outcome, Some(error_type.to_string()), false);
                    Err(e)
                }
            }
        })
    }
}

/// A call under way. Finishing hands its record to the recorder; dropping an unfinished call
/// finishes it as cancelled, so every call is recorded exactly once.
pub struct Call {
    recorder: Arc<Recorder>,
    record: Option<CallRecord>,
    started: Instant,
    parser: Option<BodyParser>,
    /// What the budgets hold for this call; released when the call is dropped, after it was
    /// recorded.
    reservation: Option<Arc<Reservation>>,
}

impl Call {
    fn start(
        recorder: Arc<Recorder>,
        route: &Route,
        method: &str,
        request: RequestInfo,
        (trace, metadata, content): (TraceContext, CallMetadata, Option<CapturedContent>),
    ) -> Call {
        Call {
            recorder,
            record: Some(CallRecord {
                provider: route.provider.name.clone(),
                gen_ai_provider: route.provider.gen_ai_provider.clone(),
                format: route.format,
                method: method.to_string(),
                path: route.uri.path().to_string(),
                server_address: route.address().to_string(),
                server_port: route.port(),
                request,
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
                content,
                cost_pico_usd: None,
                priced_model: None,
            }),
            started: Instant::now(),
            parser: None,
            reservation: None,
        }
    }

    fn headers(&mut self, status: u16) {
        if let Some(r) = &mut self.record {
            r.status = Some(status);
            r.time_to_headers = Some(self.started.elapsed());
        }
    }

    fn feed(&mut self, data: &[u8]) {
        self.note_first_chunk();
        if let Some(parser) = &mut self.parser {
            parser.feed(data);
            self.note_first_token();
        }
    }

    fn note_first_chunk(&mut self) {
        if let Some(record) = &mut self.record
            && record.time_to_first_chunk.is_none()
        {
            record.time_to_first_chunk = Some(self.started.elapsed());
        }
    }

    fn note_first_token(&mut self) {
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
    fn finish(
        &mut self,
        outcome: Outcome,
        error_type: Option<String>,
        clean: bool,
    ) -> Option<CostSummary> {
        let mut record = self.record.take()?;
        record.duration = self.started.elapsed();
        record.response = self.parser.take().map(|p| p.finish(clean));
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
}

/// Cost and token counts of a finished call, as the client gets them.
pub struct CostSummary {
    cost_usd: Option<String>,
    tokens: [(HeaderName, Option<u64>); 4],
}

const TRAILER_NAMES: &str = "x-sidetrace-cost-usd, x-sidetrace-input-tokens, x-sidetrace-output-tokens, x-sidetrace-cached-input-tokens, x-sidetrace-reasoning-tokens";

impl CostSummary {
    fn of(record: &CallRecord) -> CostSummary {
        let u = record
            .response
            .as_ref()
            .map(|r| r.usage.clone())
            .unwrap_or_default();
        CostSummary {
            cost_usd: record
                .cost_pico_usd
                .map(|p| Cost::from_pico_usd(p).to_string()),
            tokens: [
                (
                    HeaderName::from_static("x-sidetrace-input-tokens"),
                    u.input_tokens,
                ),
                (
                    HeaderName::from_static("x-sidetrace-output-tokens"),
                    u.output_tokens,
                ),
                (
                    HeaderName::from_static("x-sidetrace-cached-input-tokens"),
                    u.cached_input_tokens,
                ),
                (
                    HeaderName::from_static("x-sidetrace-reasoning-tokens"),
                    u.reasoning_tokens,
                ),
            ],
        }
    }

    /// The headers (or trailers); an unpriced call gets no cost header, never a 0.
    fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(cost) = self
            .cost_usd
            .as_deref()
            .and_then(|c| HeaderValue::from_str(c).ok())
        {
            h.insert("x-sidetrace-cost-usd", cost);
        }
        for (name, value) in &self.tokens {
            if let Some(v) = value {
                h.insert(name.clone(), HeaderValue::from(*v));
            }
        }
        h
    }

    /// An SSE comment line: every SSE parser ignores it.
    fn sse_comment(&self) -> Bytes {
        let mut line = String::from(": sidetrace");
        if let Some(c) = &self.cost_usd {
            line.push_str(&format!(" cost_usd={c}"));
        }
        for (name, value) in &self.tokens {
            if let Some(v) = value {
                let key = name
                    .as_str()
                    .trim_start_matches("x-sidetrace-")
                    .replace('-', "_");
                line.push_str(&format!(" {key}={v}"));
            }
        }
        line.push_str("\n\n");
        Bytes::from(line)
    }
}

/// What the client asked to get back about cost, read before the request is rewritten.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientWants {
    /// `TE: trailers`: the cost comes as HTTP trailers at the end of a stream.
    pub trailers: bool,
    /// `x-sidetrace-cost-comment: true`: the cost comes as a final SSE comment line.
    pub sse_comment: bool,
}

impl ClientWants {
    pub fn from_headers(headers: &HeaderMap) -> ClientWants {
        ClientWants {
            trailers: headers
                .get_all(header::TE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| {
                    v.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
                }),
            sse_comment: headers
                .get("x-sidetrace-cost-comment")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true")),
        }
    }
}

/// Extra frames a stream ends with.
#[derive(Debug, Clone, Copy, Default)]
struct EndExtras {
    trailers: bool,
    comment: bool,
}

/// Reads a non-streamed response whole (it is small), so the headers can carry its cost. A body
/// larger than `max` is passed on as it comes, without cost headers.
async fn buffer_and_price(
    mut call: Call,
    response: Response<ProxyBody>,
    max: usize,
    host: String,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (mut parts, mut body) = response.into_parts();
    let started = std::time::Instant::now();
    let mut buf = BytesMut::new();
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    call.feed(data);
                    buf.extend_from_slice(data);
                    if buf.len() > max {
                        // Too large to hold: send what we have and stream the rest.
                        let prefix = buf.freeze();
                        let rest = TapBody {
                            inner: Some(body),
                            call: Some(call),
                            strip: None,
                            queued: VecDeque::from([Frame::data(prefix)]),
                            extras: EndExtras::default(),
                            max_pending: 0,
                            on_disconnect: OnDisconnect::Cancel,
                        };
                        parts.headers.remove(header::CONTENT_LENGTH);
                        return Ok(Response::from_parts(parts, rest.boxed_unsync()));
                    }
                }
            }
            Some(Err(e)) => {
                let timeout = e.downcast_ref::<BodyTimeout>().is_some();
                let (outcome, kind) = if timeout {
                    (Outcome::Timeout, "timeout")
                } else {
                    (Outcome::UpstreamError, "upstream_reset")
                };
                call.finish(outcome, Some(kind.to_string()), false);
                return Err(ProxyError::UpstreamUnreachable {
                    host,
                    reason: format!("the response body failed: {e}"),
                });
            }
        }
    }
    if let Some(summary) = call.finish(Outcome::Completed, None, true) {
        parts.headers.extend(summary.headers());
    }
    parts.extensions.insert(BufferedFor(started.elapsed()));
    Ok(Response::from_parts(parts, super::body::full(buf.freeze())))
}

/// How long the gateway held a response to read it whole (not overhead: upstream time).
#[derive(Debug, Clone, Copy)]
pub struct BufferedFor(pub Duration);

impl Call {
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

/// Holds back the bytes of the event being received so that the usage-only chunk can be left
/// out whole. Client SSE parsers act only on complete events, so this delays nothing they see.
#[derive(Default)]
struct Strip {
    pending: Vec<Bytes>,
    pending_len: usize,
    /// The dropped event ended with CR at the end of a frame: its LF may start the next one.
    skip_lf: bool,
    boundaries: Vec<(usize, EventKind)>,
}

impl Strip {
    fn take_pending(&mut self, out: &mut Vec<Bytes>) {
        out.append(&mut self.pending);
        self.pending_len = 0;
    }
}

/// The tap on a response body; see the module docs.
pub struct TapBody {
    inner: Option<ProxyBody>,
    call: Option<Call>,
    strip: Option<Strip>,
    /// Frames to send before ending the stream: held-back bytes, the cost comment, trailers.
    queued: VecDeque<Frame<Bytes>>,
    extras: EndExtras,
    max_pending: usize,
    on_disconnect: OnDisconnect,
}

fn join(parts: Vec<Bytes>) -> Bytes {
    match parts.len() {
        0 => Bytes::new(),
        1 => parts.into_iter().next().unwrap_or_default(),
        _ => {
            let mut out = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
            for p in parts {
                out.extend_from_slice(&p);
            }
            out.freeze()
        }
    }
}

impl TapBody {
    /// Feeds a frame and returns what to forward, leaving out the usage-only event.
    fn strip_frame(&mut self, data: Bytes) -> Bytes {
        let (Some(strip), Some(call)) = (&mut self.strip, &mut self.call) else {
            return data;
        };
        let Some(parser) = &mut call.parser else {
            return data;
        };
        strip.boundaries.clear();
        let boundaries = &mut strip.boundaries;
        parser.feed_marking(&data, |end, kind| boundaries.push((end, kind)));
        call.note_first_chunk();
        call.note_first_token();
        let mut start = 0;
        if std::mem::take(&mut strip.skip_lf) && data.first() == Some(&b'\n') {
            start = 1;
        }
        let mut out = Vec::new();
        let boundaries = std::mem::take(&mut strip.boundaries);
        for &(end, kind) in &boundaries {
            let end = end.max(start);
            if kind == EventKind::UsageOnly {
                strip.pending.clear();
                strip.pending_len = 0;
                strip.skip_lf = end == data.len() && data[end - 1] == b'\r';
            } else {
                strip.take_pending(&mut out);
                if end > start {
                    out.push(data.slice(start..end));
                }
            }
            start = end;
        }
        strip.boundaries = boundaries;
        if start < data.len() {
            strip.pending_len += data.len() - start;
            strip.pending.push(data.slice(start..));
            if strip.pending_len > self.max_pending {
                // Too large to be the usage chunk: stop holding it back.
                strip.take_pending(&mut out);
            }
        }
        join(out)
    }
}

impl TapBody {
    /// The upstream body is over: queue what was held back and finish the call as completed.
    /// Done as soon as the end is known, because hyper stops polling a body whose
    /// `is_end_stream` is true (known length) and would otherwise only drop it.
    fn end(&mut self) {
        self.inner = None;
        if let Some(strip) = &mut self.strip {
            let mut rest = Vec::new();
            strip.take_pending(&mut rest);
            let rest = join(rest);
            if !rest.is_empty() {
                self.queued.push_back(Frame::data(rest));
            }
        }
        if let Some(mut call) = self.call.take()
            && let Some(summary) = call.finish(Outcome::Completed, None, true)
        {
            if self.extras.comment {
                self.queued.push_back(Frame::data(summary.sse_comment()));
            }
            if self.extras.trailers {
                self.queued.push_back(Frame::trailers(summary.headers()));
            }
        }
    }
}

impl Body for TapBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(frame) = this.queued.pop_front() {
                return Poll::Ready(Some(Ok(frame)));
            }
            let Some(inner) = this.inner.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    let frame = match frame.into_data() {
                        Ok(data) if this.strip.is_some() => Frame::data(this.strip_frame(data)),
                        Ok(data) => {
                            if let Some(call) = &mut this.call {
                                call.feed(&data);
                            }
                            Frame::data(data)
                        }
                        Err(trailers) => trailers,
                    };
                    if this.inner.as_ref().is_some_and(|b| b.is_end_stream()) {
                        this.end();
                    }
                    if frame.data_ref().is_some_and(|d| d.is_empty()) {
                        // Everything in it was held back or stripped.
                        continue;
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => {
                    let timeout = e.downcast_ref::<BodyTimeout>().is_some();
                    if let Some(mut call) = this.call.take() {
                        let (outcome, kind) = if timeout {
                            (Outcome::Timeout, "timeout")
                        } else {
                            (Outcome::UpstreamError, "upstream_reset")
                        };
                        call.finish(outcome, Some(kind.to_string()), false);
                    }
                    this.inner = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => this.end(),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.queued.is_empty() && self.inner.is_none()
    }

    /// hyper frames the response by this hint when it is exact, so it must count every byte
    /// still to come: the queued frames (a prefix read while trying to buffer the body) plus
    /// what the upstream has left. Unknown when the tap may change the length: stripping makes
    /// the body shorter, a cost comment longer.
    fn size_hint(&self) -> SizeHint {
        let Some(inner) = &self.inner else {
            return SizeHint::default();
        };
        if self.strip.is_some() || self.extras.comment || self.extras.trailers {
            return SizeHint::default();
        }
        let queued: u64 = self
            .queued
            .iter()
            .filter_map(Frame::data_ref)
            .map(|d| d.len() as u64)
            .sum();
        let rest = inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(queued));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(queued));
        }
        hint
    }
}

impl Drop for TapBody {
    fn drop(&mut self) {
        let (Some(mut call), Some(mut inner)) = (self.call.take(), self.inner.take()) else {
            return;
        };
        if call.parser.as_ref().is_some_and(BodyParser::end_seen) {
            // The client left after the stream's last event (SDKs stop reading at `[DONE]`):
            // it has the whole answer; only the upstream's end of body was still to come.
            drop(inner);
            call.finish(Outcome::Completed, None, true);
            return;
        }
        // When shutdown cuts the call nothing may outlive it: no background read.
        if self.on_disconnect == OnDisconnect::Finish
            && !call.recorder.cutting()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            // The client is gone; read the rest so the record has the full usage.
            handle.spawn(async move {
                let mut clean = true;
                while let Some(frame) = inner.frame().await {
                    match frame {
                        Ok(frame) => {
                            if let Some(data) = frame.data_ref() {
                                call.feed(data);
                            }
                        }
                        Err(_) => {
                            clean = false;
                            break;
                        }
                    }
                }
                call.finish(Outcome::Cancelled, Some("cancelled".to_string()), clean);
            });
            return;
        }
        drop(inner);
        let kind = call.dropped_because();
        call.finish(Outcome::Cancelled, Some(kind.to_string()), false);
    }
}
