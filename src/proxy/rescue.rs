//! Rescue: the one place a `ProxyError` becomes a JSON response, so hyper never sees an `Err`.

use std::{
    convert::Infallible,
    task::{Context, Poll},
};

use http::{Request, Response};
use tower::{Layer, Service};

use super::body::ProxyBody;
use crate::error::{Fault, ProxyError};

#[derive(Clone, Default)]
pub struct RescueLayer;

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, inner: S) -> Rescue<S> {
        Rescue { inner }
    }
}

/// Marks an answer given before the call was routed: it has no record, and so no trace
/// headers ([`super::context`]).
#[derive(Clone, Copy)]
pub struct Unrecorded;

#[derive(Clone)]
pub struct Rescue<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Rescue<S>
where
    S: Service<Request<B>, Response = Response<ProxyBody>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = super::BoxFuture<Result<Response<ProxyBody>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(e)) => {
                // Our services are always ready; an error here is a bug, answered per call.
                tracing::error!(error = %e, "service not ready");
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // A refcounted clone, not a copy: only logged when the call fails.
        let uri = req.uri().clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            match fut.await {
                Ok(response) => Ok(response),
                Err(e) => {
                    match e.fault() {
                        Fault::Client => {
                            tracing::debug!(path = uri.path(), error = %e, "client error")
                        }
                        Fault::Upstream => {
                            tracing::warn!(path = uri.path(), error = %e, "upstream error")
                        }
                        Fault::Gateway => {
                            tracing::error!(path = uri.path(), error = %e, "gateway error")
                        }
                    }
                    let mut response = e.to_response();
                    if e.before_routing() {
                        response.extensions_mut().insert(Unrecorded);
                    }
                    Ok(response)
                }
            }
        })
    }
}
