//! Trace context and call metadata: read from the request headers before anything else, so
//! every response (errors included) can name its trace and span.

use std::{
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};

use crate::{
    metrics::Metrics,
    trace::{
        context::{self, TraceContext},
        metadata::CallMetadata,
    },
};

/// Where an inner layer leaves the trace a call joined (inspection: an agent loop with no
/// trace header), so the response names it, the gateway's own error answers included.
#[derive(Clone, Default)]
pub struct JoinedTrace(Arc<Mutex<Option<TraceContext>>>);

impl JoinedTrace {
    pub fn set(&self, trace: TraceContext) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(trace);
    }

    fn take(&self) -> Option<TraceContext> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

#[derive(Clone)]
pub struct TraceContextLayer {
    metrics: Arc<Metrics>,
    grouping_key: Option<Arc<[u8]>>,
}

impl TraceContextLayer {
    pub fn new(metrics: Arc<Metrics>, grouping_key: Option<Arc<[u8]>>) -> Self {
        TraceContextLayer {
            metrics,
            grouping_key,
        }
    }
}

impl<S> Layer<S> for TraceContextLayer {
    type Service = TraceContextService<S>;
    fn layer(&self, inner: S) -> TraceContextService<S> {
        TraceContextService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct TraceContextService<S> {
    inner: S,
    layer: TraceContextLayer,
}

impl<S, B, RB> Service<Request<B>> for TraceContextService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = super::BoxFuture<Result<Response<RB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let (trace, invalid) =
            TraceContext::from_headers(req.headers(), self.layer.grouping_key.as_deref());
        for (bad, header) in [
            (invalid.traceparent, "traceparent"),
            (invalid.tracestate, "tracestate"),
            (invalid.trace_id, "x-sidetrace-trace-id"),
            (invalid.parent_span_id, "x-sidetrace-parent-span-id"),
        ] {
            if bad {
                self.layer.metrics.trace_context_invalid(header);
            }
        }
        let metadata = CallMetadata::from_headers(req.headers());
        if metadata.truncated > 0 {
            self.layer.metrics.metadata_truncated(metadata.truncated);
        }
        let read = trace.clone();
        let joined = JoinedTrace::default();
        req.extensions_mut().insert(trace);
        req.extensions_mut().insert(metadata);
        req.extensions_mut().insert(joined.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut response = fut.await?;
            // Refused before routing: no record, so no trace to name.
            if response
                .extensions()
                .get::<super::rescue::Unrecorded>()
                .is_some()
            {
                return Ok(response);
            }
            // Inspection may have joined the call to an earlier call's trace (an agent loop
            // with no trace header): the response then names that one.
            let trace = joined.take().unwrap_or(read);
            let trace_id = HeaderValue::from_str(&trace.trace_id_hex());
            let span_id = HeaderValue::from_str(&trace.span_id_hex());
            if let (Ok(t), Ok(s)) = (trace_id, span_id) {
                let headers = response.headers_mut();
                headers.insert(context::TRACE_ID, t);
                headers.insert(context::SPAN_ID, s);
            }
            Ok(response)
        })
    }
}
