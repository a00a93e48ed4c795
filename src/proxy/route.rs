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
        // `/v1/chat/completion%73` is `/v1/chat/completions` to the provider: routed, inspected,
        // checked against keys and budgets, and forwarded, as that.
        if let Some(uri) = unreserved_decoded(req.uri()) {
            *req.uri_mut() = uri;
        }
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

/// The URI with the percent-encoded unreserved characters of its path (letters, digits, `-`,
/// `.`, `_`, `~`) decoded, when it has any: RFC 3986 (6.2.2.2) makes the two spellings the same
/// resource, and providers answer both. Routed, inspected and forwarded as sent, such a path
/// went past inspection (no usage, no budget, no key's model check) to the same endpoint.
/// Reserved characters (`%3A` in a Bedrock model id, `%2F`) stay as they are: they may mean
/// something else encoded, and a signed path is signed as sent. `None` when nothing changes.
fn unreserved_decoded(uri: &http::Uri) -> Option<http::Uri> {
    let path = uri.path();
    if !path.contains('%') {
        return None;
    }
    let hex = |b: u8| char::from(b).to_digit(16);
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut changed = false;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            let c = char::from((h * 16 + l) as u8);
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~') {
                out.push(c);
                changed = true;
                i += 3;
                continue;
            }
        }
        out.push(char::from(bytes[i]));
        i += 1;
    }
    if !changed {
        return None;
    }
    if let Some(query) = uri.query() {
        out.push('?');
        out.push_str(query);
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = out.parse().ok();
    http::Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unreserved_characters_are_decoded_and_the_query_is_left_alone() {
        let decoded = |s: &str| unreserved_decoded(&s.parse().unwrap()).map(|u| u.to_string());
        assert_eq!(
            decoded("/v1/chat/completion%73?x=%73").as_deref(),
            Some("/v1/chat/completions?x=%73")
        );
        assert_eq!(decoded("/a%7e%2D%5f").as_deref(), Some("/a~-_"));
        // Reserved characters, a cut escape and plain paths: unchanged.
        for same in [
            "/model/m-v1%3A0/converse",
            "/a%2Fb",
            "/a%4",
            "/a%zz",
            "/v1/models",
        ] {
            assert_eq!(decoded(same), None, "{same}");
        }
    }
}
