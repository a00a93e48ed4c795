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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tower::{ServiceExt, service_fn};

    use super::*;
    use crate::proxy::body::full;

    /// A load shed of `limit` over an inner service that answers at once and counts its calls.
    fn shed(
        limit: usize,
    ) -> (
        impl Service<Request<()>, Response = Response<ProxyBody>, Error = ProxyError, Future: Send>
        + Clone,
        Arc<AtomicUsize>,
        Arc<Metrics>,
    ) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let inner = service_fn(move |_req: Request<()>| {
            counted.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<_, ProxyError>(Response::new(full("streamed"))))
        });
        let metrics = Arc::new(Metrics::new());
        let layer = LoadShedLayer::new(limit, metrics.clone());
        (layer.layer(inner), calls, metrics)
    }

    #[tokio::test]
    async fn an_open_response_body_holds_its_permit_and_the_next_call_is_refused_at_once() {
        let (svc, calls, metrics) = shed(1);
        let open = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(metrics.active_calls.get(), 1);
        let refused = svc.clone().oneshot(Request::new(())).await;
        assert!(
            matches!(refused, Err(ProxyError::Overloaded { limit: 1 })),
            "{refused:?}"
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "a refused call never reaches inner"
        );
        // Reading the body to its end and dropping it frees the permit.
        let body = open.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "streamed");
        assert_eq!(metrics.active_calls.get(), 0);
        svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_inner_error_frees_the_permit() {
        let metrics = Arc::new(Metrics::new());
        let inner = service_fn(|_req: Request<()>| {
            std::future::ready(Err::<Response<ProxyBody>, _>(ProxyError::Internal(
                "boom".into(),
            )))
        });
        let svc = LoadShedLayer::new(1, metrics.clone()).layer(inner);
        for _ in 0..3 {
            let e = svc.clone().oneshot(Request::new(())).await;
            assert!(matches!(e, Err(ProxyError::Internal(_))), "{e:?}");
        }
        assert_eq!(metrics.active_calls.get(), 0);
    }
}
