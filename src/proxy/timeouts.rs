//! Timeouts split by phase: time to response headers (504), idle time between body frames and a
//! total deadline (the stream is cut). Connect timeouts live in the upstream connector.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use super::body::{BoxError, ProxyBody};
use crate::{error::ProxyError, provider::Route};

/// Why a response body was cut.
#[derive(Debug, thiserror::Error)]
pub enum BodyTimeout {
    #[error("upstream sent nothing for {0:?}")]
    Idle(Duration),
    #[error("call exceeded its total deadline of {0:?}")]
    Total(Duration),
}

#[derive(Clone, Default)]
pub struct TimeoutsLayer;

impl<S> Layer<S> for TimeoutsLayer {
    type Service = Timeouts<S>;
    fn layer(&self, inner: S) -> Timeouts<S> {
        Timeouts { inner }
    }
}

#[derive(Clone)]
pub struct Timeouts<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Timeouts<S>
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
        let Some(route) = req.extensions().get::<Route>() else {
            return Box::pin(self.inner.call(req));
        };
        let limits = route.provider.timeouts;
        let host = route.host().to_string();
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let response = match tokio::time::timeout(limits.response_headers, fut).await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(ProxyError::UpstreamTimeout {
                        host,
                        ms: limits.response_headers.as_millis() as u64,
                    });
                }
            };
            Ok(response.map(|body| {
                TimedBody {
                    inner: body,
                    idle: limits.idle,
                    idle_timer: Box::pin(tokio::time::sleep(limits.idle)),
                    total: limits.total,
                    deadline: Box::pin(tokio::time::sleep_until(started + limits.total)),
                }
                .boxed_unsync()
            }))
        })
    }
}

/// Passes frames through; errors the body when the upstream goes quiet or the deadline passes.
struct TimedBody {
    inner: ProxyBody,
    idle: Duration,
    idle_timer: Pin<Box<Sleep>>,
    total: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let idle = this.idle;
                this.idle_timer.as_mut().reset(Instant::now() + idle);
                return Poll::Ready(frame);
            }
            Poll::Pending => {}
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout::Total(this.total)))));
        }
        if this.idle_timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout::Idle(this.idle)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
