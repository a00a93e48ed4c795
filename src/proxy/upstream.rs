//! The upstream client: pooled hyper-util clients over rustls (ring), HTTP/1.1 and HTTP/2 by
//! ALPN, or h2c by prior knowledge. HTTP/2 puts every call to a host on one connection and
//! queues calls past the server's stream limit, so calls are spread over several clients, each
//! with its own connection, before any one of them reaches that limit.

use std::{
    error::Error as _,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use tower::Service;

use super::{
    body::{BoxError, Holding, ProxyBody, RequestBody},
    limit::{self, ClientBodyError},
    rewrite::strip_upstream_response,
};
use crate::{config::UpstreamConfig, error::ProxyError, metrics::Metrics, provider::Route};

type HyperClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

/// Clients sharing the load of one kind of connection.
struct ClientSet {
    clients: Box<[OnceLock<Slot>]>,
    open: AtomicUsize,
    max_streams: usize,
    build: Box<dyn Fn() -> HyperClient + Send + Sync>,
}

struct Slot {
    client: HyperClient,
    in_flight: Arc<AtomicUsize>,
}

/// One call on a client, until its response body is dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ClientSet {
    fn new(
        max_clients: usize,
        max_streams: usize,
        build: Box<dyn Fn() -> HyperClient + Send + Sync>,
    ) -> Self {
        let clients: Box<[OnceLock<Slot>]> =
            (0..max_clients.max(1)).map(|_| OnceLock::new()).collect();
        ClientSet {
            clients,
            open: AtomicUsize::new(0),
            max_streams,
            build,
        }
    }

    fn slot(&self, i: usize) -> &Slot {
        self.clients[i].get_or_init(|| Slot {
            client: (self.build)(),
            in_flight: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The least busy client; a new one when all are at the stream limit. `spread` is false for
    /// plain HTTP/1.1, where one pool opens as many connections as needed.
    ///
    /// A stream is counted on its client with a compare-and-swap, so calls picking at the same
    /// moment never put more than `max_streams` on one connection (past the server's limit
    /// hyper would queue the extra stream behind the others).
    fn pick(&self, spread: bool) -> (&HyperClient, InFlight) {
        if !spread {
            return self.take(self.slot(0));
        }
        loop {
            let open = self.open.load(Ordering::Acquire).min(self.clients.len());
            let best = self.clients[..open]
                .iter()
                .filter_map(OnceLock::get)
                .map(|slot| (slot, slot.in_flight.load(Ordering::Acquire)))
                .min_by_key(|&(_, n)| n);
            if let Some((slot, n)) = best
                && n < self.max_streams
            {
                if slot
                    .in_flight
                    .compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return (&slot.client, InFlight(slot.in_flight.clone()));
                }
                // Another call took that stream first: look again.
                continue;
            }
            // Every open client is at the limit (or none is open yet): open one more.
            let i = self.open.fetch_add(1, Ordering::AcqRel);
            if i < self.clients.len() {
                return self.take(self.slot(i));
            }
            self.open.fetch_sub(1, Ordering::AcqRel);
            // At the connection cap: the least busy client queues the stream.
            return self.take(best.map_or_else(|| self.slot(0), |(slot, _)| slot));
        }
    }

    /// Counts one more stream on `slot`, whatever its count.
    fn take<'a>(&'a self, slot: &'a Slot) -> (&'a HyperClient, InFlight) {
        slot.in_flight.fetch_add(1, Ordering::AcqRel);
        (&slot.client, InFlight(slot.in_flight.clone()))
    }
}

/// Sends routed requests upstream.
pub struct UpstreamClient {
    auto: ClientSet,
    h2c: ClientSet,
}

impl UpstreamClient {
    pub fn new(cfg: &UpstreamConfig) -> Result<UpstreamClient, String> {
        let tls = crate::tls::client_config(cfg)?;
        let make = |http2_only: bool| -> Box<dyn Fn() -> HyperClient + Send + Sync> {
            let tls = tls.clone();
            let cfg = cfg.clone();
            Box::new(move || {
                let mut http = HttpConnector::new();
                http.enforce_http(false);
                http.set_nodelay(true);
                http.set_connect_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)));
                http.set_keepalive(Some(Duration::from_secs(60)));
                let https = HttpsConnectorBuilder::new()
                    .with_tls_config(tls.clone())
                    .https_or_http()
                    .enable_http1()
                    .enable_http2()
                    .wrap_connector(http);
                Client::builder(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(Duration::from_millis(cfg.pool_idle_timeout_ms))
                    .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
                    .http2_only(http2_only)
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .http2_keep_alive_while_idle(false)
                    .build(https)
            })
        };
        Ok(UpstreamClient {
            auto: ClientSet::new(
                cfg.http2_max_connections,
                cfg.http2_max_streams_per_connection,
                make(false),
            ),
            h2c: ClientSet::new(
                cfg.http2_max_connections,
                cfg.http2_max_streams_per_connection,
                make(true),
            ),
        })
    }
}

/// The innermost service: one request out, one response back, nothing retried (provider calls
/// are costly and not idempotent).
#[derive(Clone)]
pub struct Upstream {
    client: Arc<UpstreamClient>,
    metrics: Arc<Metrics>,
}

impl Upstream {
    pub fn new(client: Arc<UpstreamClient>, metrics: Arc<Metrics>) -> Self {
        Upstream { client, metrics }
    }
}

impl Service<Request<RequestBody>> for Upstream {
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = super::BoxFuture<Result<Response<ProxyBody>, ProxyError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        let Some(route) = req.extensions().get::<Route>().cloned() else {
            return Box::pin(std::future::ready(Err(ProxyError::Internal(
                "request reached the upstream client without a route".into(),
            ))));
        };
        let (set, spread) = if route.provider.http2_prior_knowledge {
            (&self.client.h2c, true)
        } else {
            (&self.client.auto, route.uri.scheme_str() == Some("https"))
        };
        let (client, in_flight) = set.pick(spread);
        let fut = client.request(req);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let started = Instant::now();
            let result = fut.await;
            let elapsed = started.elapsed();
            metrics.observe_upstream_headers(&route.provider.name, elapsed);
            let mut response = result.map_err(|e| classify(&route, &e))?;
            strip_upstream_response(response.headers_mut());
            response.extensions_mut().insert(UpstreamElapsed(elapsed));
            Ok(response
                .map(|body| Holding::boxed(body.map_err(BoxError::from).boxed_unsync(), in_flight)))
        })
    }
}

/// Time from sending the request upstream to its response headers.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamElapsed(pub Duration);

/// Turns a client error into the error the caller sees, by whose fault it was.
fn classify(route: &Route, error: &hyper_util::client::legacy::Error) -> ProxyError {
    let mut source = error.source();
    let mut reasons = Vec::new();
    while let Some(e) = source {
        if let Some(refused) = limit::refusal(e) {
            return refused;
        }
        if let Some(client) = e.downcast_ref::<ClientBodyError>() {
            return ProxyError::ClientBody(client.0.clone());
        }
        reasons.push(e.to_string());
        source = e.source();
    }
    reasons.dedup();
    let reason = if reasons.is_empty() {
        error.to_string()
    } else {
        reasons.join(": ")
    };
    ProxyError::UpstreamUnreachable {
        host: route.host().to_string(),
        reason: if error.is_connect() {
            format!("connect failed: {reason}")
        } else {
            reason
        },
    }
}
