//! Request rewrite: the upstream URI from the route, hop-by-hop headers removed (RFC 9110 7.6.1),
//! `Host` left to the client to set from the URI, every `x-sidetrace-*` header stripped, the
//! client's own credentials kept as they are.

use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Version, header};
use tower::{Layer, Service};

use crate::{
    provider::Route,
    trace::{
        context::{TRACEPARENT, TRACESTATE, TraceContext},
        metadata::is_metadata_header,
    },
};

/// Headers that describe one connection, not the message (RFC 9110 7.6.1), plus the
/// non-standard ones proxies are known to see.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// An upstream response's headers as the client may get them: no hop-by-hop headers, and none
/// of sidetrace's own (`x-sidetrace-*`). Those are the gateway's to set: an upstream's (another
/// sidetrace behind this one, or any server) reached the client of a call this gateway could
/// not price as its cost (`x-sidetrace-cost-usd: 9.99`).
pub fn strip_upstream_response(headers: &mut HeaderMap) {
    remove_where(headers, |name| name.as_str().starts_with("x-sidetrace-"));
}

/// Removes the hop-by-hop headers (and each one `Connection` names) and every header `also`
/// picks. The names to remove are found in one pass over the message's names: most messages
/// have none of them, and a removal by name hashes the name whether it is there or not.
fn remove_where(headers: &mut HeaderMap, also: impl Fn(&HeaderName) -> bool) {
    let mut doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| HOP_BY_HOP.contains(k) || also(k))
        .cloned()
        .collect();
    if doomed.contains(&header::CONNECTION) {
        doomed.extend(
            headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok()),
        );
    }
    for name in doomed {
        headers.remove(name);
    }
}

/// What the request path removes besides the hop-by-hop headers: sidetrace's own headers and
/// the metadata aliases of other gateways; the caller's trace context (the call span is the
/// parent: ours replaces it); `Host` (hyper sets Host, or :authority, from the new URI) and
/// `Expect` (hyper's client does not wait for 100 Continue; the body is sent at once anyway).
fn replaced_upstream(name: &HeaderName) -> bool {
    name == TRACEPARENT
        || name == TRACESTATE
        || name == header::HOST
        || name == header::EXPECT
        || is_metadata_header(name.as_str())
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
            remove_where(req.headers_mut(), replaced_upstream);
            let trace = req.extensions().get::<TraceContext>().cloned();
            if route.provider.propagate_trace_context
                && let Some(trace) = trace
            {
                let headers = req.headers_mut();

                if let Ok(v) = HeaderValue::from_str(&trace.traceparent()) {
                    headers.insert(TRACEPARENT, v);
                }
                if let Some(state) = trace
                    .trace_state
                    .as_deref()
                    .and_then(|s| HeaderValue::from_str(s).ok())
                {
                    headers.insert(TRACESTATE, state);
                }
            }
            let headers = req.headers_mut();
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
    fn hop_by_hop_headers_the_ones_connection_names_and_sidetraces_own_are_removed() {
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
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk-test"),
        );
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert("x-sidetrace-cost-usd", HeaderValue::from_static("9.99"));
        strip_upstream_response(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["authorization", "content-type"]);
    }

    #[test]
    fn sidetrace_headers_trace_context_host_and_expect_are_not_sent_upstream() {
        let mut h = HeaderMap::new();
        h.insert("x-sidetrace-feature", HeaderValue::from_static("a"));
        h.insert("x-sidetrace-user-id", HeaderValue::from_static("b"));
        h.insert("x-side", HeaderValue::from_static("kept"));
        h.insert(TRACEPARENT, HeaderValue::from_static("00-x"));
        h.insert(TRACESTATE, HeaderValue::from_static("a=b"));
        h.insert(header::HOST, HeaderValue::from_static("gateway"));
        h.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k"));
        remove_where(&mut h, replaced_upstream);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["authorization", "x-side"]);
    }
}
