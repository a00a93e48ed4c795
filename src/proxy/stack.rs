//! THE layer order of the request path, outermost first. Each layer says why it sits where it is.

use std::{convert::Infallible, sync::Arc, time::Duration};

use http::{Request, Response};
use hyper::body::Incoming;
use tower::{Service, ServiceBuilder};
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};

use super::{
    body::ProxyBody,
    budget::BudgetLayer,
    context::TraceContextLayer,
    inspect::{InspectLayer, RequestBuffers},
    keys::{KeyLayer, KeyModelLayer, Keys},
    limit::{BodyLimitLayer, BodyTimeouts},
    record::RecordLayer,
    request_id::{MakeCallId, REQUEST_ID_HEADER},
    rescue::RescueLayer,
    rewrite::RewriteLayer,
    route::RouteLayer,
    shed::LoadShedLayer,
    sign::SignLayer,
    timeouts::TimeoutsLayer,
    upstream::{Upstream, UpstreamClient},
};
use crate::{
    call::recorder::Recorder, config::Config, format::ParserLimits, metrics::Metrics,
    provider::Registry, store::budgets::Budgets, trace::capture::Capturer,
};

fn grouping_key(config: &Config) -> Option<Arc<[u8]>> {
    let key = config.trace.grouping_key.as_bytes();
    (!key.is_empty()).then(|| Arc::from(key))
}

/// Who may call and how much: the gateway keys and the budgets.
pub struct Admission {
    pub keys: Arc<Keys>,
    pub budgets: Arc<Budgets>,
}

/// Builds the service that answers every proxied request.
pub fn build(
    config: &Config,
    registry: Arc<Registry>,
    client: Arc<UpstreamClient>,
    metrics: Arc<Metrics>,
    recorder: Arc<Recorder>,
    capturer: Arc<Capturer>,
    admission: Admission,
) -> impl Service<Request<Incoming>, Response = Response<ProxyBody>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    ServiceBuilder::new()
        // Request id first, so that every response, the rescued errors included, carries it.
        .layer(SetRequestIdLayer::new(
            REQUEST_ID_HEADER,
            MakeCallId::default(),
        ))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID_HEADER))
        // Trace context and metadata headers next, also outside rescue: every response names
        // its trace and span, and inner layers find the context in the request extensions.
        .layer(TraceContextLayer::new(
            metrics.clone(),
            grouping_key(config),
        ))
        // Rescue: every error below becomes a JSON response here; hyper never sees an Err.
        .layer(RescueLayer)
        // Load shed before any work is done: past the limit a call costs one atomic and a 503.
        // The permit lives in the response body, so open streams count.
        .layer(LoadShedLayer::new(
            config.max_concurrent_requests,
            metrics.clone(),
        ))
        // Route: the path prefix alone picks the upstream (no header or body can: no SSRF).
        // Counts each routed call by provider and status.
        .layer(RouteLayer::new(registry, metrics.clone()))
        // Record directly under routing, outside everything that can refuse a routed call
        // (body limits, inspection, budgets): every routed call is recorded exactly once, the
        // refused ones too. Outside the timeouts, so a timeout is recorded as a timeout. The
        // layers inside leave what they learn in the call's slot; the tap only reads.
        .layer(RecordLayer::new(
            recorder.clone(),
            metrics.clone(),
            ParserLimits {
                max_event_bytes: config.inspect.max_event_bytes,
                ..ParserLimits::default()
            },
            config.inspect.on_client_disconnect,
            // Without pricing there is nothing to put in the headers: do not hold responses.
            if config.cost.enabled {
                config.cost.response_headers_max_body_bytes
            } else {
                0
            },
            config.capture.max_bytes,
        ))
        // Gateway keys first inside the record layer: a call without a valid key is refused
        // (and recorded) before its body is read, and the key leaves the headers here, so no
        // layer below, and no provider, ever sees it.
        .layer(KeyLayer::new(admission.keys))
        // Body limit: a declared oversize body is refused before anything is read, a streamed
        // one is cut when it grows past the limit or comes too slowly.
        .layer(BodyLimitLayer::new(
            config.max_request_body_bytes,
            BodyTimeouts {
                idle: Duration::from_millis(config.timeouts.request_body_idle_ms),
                total: Duration::from_millis(config.timeouts.request_body_total_ms),
            },
        ))
        // Inspect after routing, because the route's wire format says whether the request is JSON
        // worth reading (model, stream, parameters) and whether include_usage may be added.
        .layer(InspectLayer::new(
            config.inspect.inject_include_usage,
            capturer,
            RequestBuffers::new(config.max_buffered_request_bytes, metrics.clone()),
            recorder.clone(),
        ))
        // The key's allowed models once inspection has read the model (body or path).
        .layer(KeyModelLayer)
        // Budgets after inspection, which knows the feature and user (headers and body): a
        // spent budget is refused before anything reaches the provider.
        .layer(BudgetLayer::new(admission.budgets, metrics.clone()))
        // Rewrite: upstream URI, hop-by-hop headers, Host, x-sidetrace-* stripped, credentials kept.
        .layer(RewriteLayer)
        // Sign right after the rewrite, which fixed the URI and headers a signature covers: a
        // client's AWS SigV4 signature names the gateway's host, so SigV4 providers are signed
        // again with the gateway's AWS credentials (Bearer API keys pass as they are).
        .layer(SignLayer)
        // Timeouts wrap only the upstream exchange: time to headers, idle between frames, total.
        .layer(TimeoutsLayer)
        // Upstream: pooled hyper client over rustls; never retries a POST.
        .service(Upstream::new(client, metrics))
}
