//! Request rewrite: the upstream URI from the route, hop-by-hop headers removed (RFC 9110 7.6.1),
//! `Host` left to the client to set from the URI, every `x-sidetrace-*` header stripped, the
//! client's own credentials kept as they are.

use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Version, header};
use tower::{Layer, Service};

use crate::{
    provider::Route,
    trace::{context::TraceContext, metadata::is_metadata_header},
};

/// Headers that describe one connection, not the message (RFC 9110 7.6.1), plus the
/// non-standard ones proxies are known to see.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// Removes sidetrace's own headers and the metadata aliases of other gateways.
fn strip_sidetrace_headers(headers: &mut HeaderMap) {
    let ours: Vec<HeaderName> = headers
        .keys()
        .filter(|k| is_metadata_header(k.as_str()))
        .cloned()
        .collect();
    for name in ours {
        headers.remove(name);
    }
}

#[derive(Clone, Default)]
pub struct RewriteLayer;

impl<S> Layer<S> for RewriteLayer {
    type Service = Rewrite<S>;
    fn layer(&self, inner: S) -> Rewrite<S> {
        Rewrite { inner }
    }
}

#[derive(Clone)]
pub struct Rewrite<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Rewrite<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        let route = req.extensions().get::<Route>().cloned();
        if let Some(route) = route {
            *req.uri_mut() = route.uri.clone();
            let headers = req.headers_mut();
            strip_hop_by_hop(headers);
            strip_sidetrace_headers(headers);
            // The caller's trace context is replaced by ours: the call span is the parent.
            headers.remove("traceparent");
            headers.remove("tracestate");
            let trace = req.extensions().get::<TraceContext>().cloned();
            if route.provider.propagate_trace_context
                && let Some(trace) = trace
            {
                let headers = req.headers_mut();

                if let Ok(v) = HeaderValue::from_str(&trace.traceparent()) {
                    headers.insert("traceparent", v);
                }
                if let Some(state) = trace
                    .trace_state
                    .as_deref()
                    .and_then(|s| HeaderValue::from_str(s).ok())
                {
                    headers.insert("tracestate", state);
                }
            }
            let headers = req.headers_mut();
            // hyper sets Host (HTTP/1.1) or :authority (HTTP/2) from the new URI.
            headers.remove(header::HOST);
            // hyper's client does not wait for 100 Continue; the body is sent at once anyway.
            headers.remove(header::EXPECT);
            if let Some((name, value)) = &route.provider.gateway_key {
                let client_sent_credentials = route
                    .provider
                    .credential_headers
                    .iter()
                    .any(|h| headers.contains_key(h));
                if !client_sent_credentials {
                    headers.insert(name.clone(), value.clone());
                }
            }
            // The client side picks HTTP/1.1 or HTTP/2 per connection (ALPN or prior knowledge).
            *req.version_mut() = Version::HTTP_11;
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk-test"),
        );
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["authorization", "content-type"]);
    }

    #[test]
    fn sidetrace_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert("x-sidetrace-feature", HeaderValue::from_static("a"));
        h.insert("x-sidetrace-user-id", HeaderValue::from_static("b"));
        h.insert("x-side", HeaderValue::from_static("kept"));
        strip_sidetrace_headers(&mut h);
        assert_eq!(h.len(), 1);
    }
}
