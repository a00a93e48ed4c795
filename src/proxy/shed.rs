//! Concurrency limit with load shedding: a call holds a permit until its response body ends, so
//! open streams count; when none is free the call is refused at once instead of queueing.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use super::body::{Holding, ProxyBody};
use crate::{error::ProxyError, metrics::Metrics};

#[derive(Clone)]
pub struct LoadShedLayer {
    permits: Arc<Semaphore>,
    limit: usize,
    metrics: Arc<Metrics>,
}

impl LoadShedLayer {
    pub fn new(limit: usize, metrics: Arc<Metrics>) -> Self {
        LoadShedLayer {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            metrics,
        }
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;
    fn layer(&self, inner: S) -> LoadShed<S> {
        LoadShed {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct LoadShed<S> {
    inner: S,
    layer: LoadShedLayer,
}

/// Released when the response body is dropped: counts the call as active until then.
struct ActiveCall {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for ActiveCall {
    fn drop(&mut self) {
        self.metrics.active_calls.dec();
    }
}

impl<S, B> Service<Request<B>> for LoadShed<S>
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

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Ok(permit) = self.layer.permits.clone().try_acquire_owned() else {
            self.layer.metrics.rejected("overloaded");
            let limit = self.layer.limit;
            return Box::pin(std::future::ready(Err(ProxyError::Overloaded { limit })));
        };
        let metrics = self.layer.metrics.clone();
        metrics.active_calls.inc();
        let active = ActiveCall {
            _permit: permit,
            metrics,
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let response = fut.await?;
            Ok(response.map(|body| Holding::boxed(body, active)))
        })
    }
}
