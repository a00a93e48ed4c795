//! Routing: picks the provider from the path prefix, and counts each routed call by provider and
//! status once its response headers (or its error) are known.

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{Request, Response};
use tower::{Layer, Service};

use super::{body::ProxyBody, reply::BufferedFor, upstream::UpstreamElapsed};
use crate::{error::ProxyError, metrics::Metrics, provider::Registry};

#[derive(Clone)]
pub struct RouteLayer {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
}

impl RouteLayer {
    pub fn new(registry: Arc<Registry>, metrics: Arc<Metrics>) -> Self {
        RouteLayer { registry, metrics }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = RouteService<S>;
    fn layer(&self, inner: S) -> RouteService<S> {
        RouteService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RouteService<S> {
    inner: S,
    layer: RouteLayer,
}

impl<S, B> Service<Request<B>> for RouteService<S>
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
        let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let route = match self.layer.registry.route(path_and_query) {
            Ok(route) => route,
            Err(e) => {
                self.layer.metrics.rejected(e.code());
                return Box::pin(std::future::ready(Err(e)));
            }
        };
        let provider = route.provider.clone();
        req.extensions_mut().insert(route);
        let metrics = self.layer.metrics.clone();
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            let status = match &result {
                Ok(r) => r.status(),
                Err(e) => e.status(),
            };
            metrics.call_finished_headers(&provider.name, status.as_u16());
            if let Ok(r) = &result
                && let Some(up) = r.extensions().get::<UpstreamElapsed>()
            {
                let held = r
                    .extensions()
                    .get::<BufferedFor>()
                    .map_or(Duration::ZERO, |b| b.0);
                let overhead = started.elapsed().saturating_sub(up.0).saturating_sub(held);
                metrics.observe_overhead(&provider.name, overhead);
            }
            result
        })
    }
}
