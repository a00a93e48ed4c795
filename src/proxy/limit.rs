//! Request body limits: refuses a declared length over the limit before anything is sent, cuts
//! a streamed body that grows past it, and cuts a body that comes too slowly (silent between
//! frames for too long, or not complete by a total deadline), so a slow client cannot hold a
//! call, its load-shed permit and its buffer for ever.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use super::body::{BoxError, RequestBody};
use crate::error::ProxyError;

#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct LengthLimitError {
    pub limit: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("client request body failed: {0}")]
pub struct ClientBodyError(pub String);

/// Why a request body was cut for slowness.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyTimeout {
    #[error("the client sent nothing of the request body for {0:?}")]
    Idle(Duration),
    #[error("the request body did not arrive whole within {0:?}")]
    Total(Duration),
}

/// The refusal a request body error stands for when the limits here cut the body (too large,
/// too slow), wherever the error surfaces (inspection reading the body, or the upstream client
/// streaming it).
pub fn refusal(e: &(dyn std::error::Error + 'static)) -> Option<ProxyError> {
    if let Some(limit) = e.downcast_ref::<LengthLimitError>() {
        return Some(ProxyError::BodyTooLarge { limit: limit.limit });
    }
    e.downcast_ref::<RequestBodyTimeout>()
        .map(|slow| ProxyError::RequestBodyTimeout(slow.to_string()))
}

/// How long a client may take to send a request body.
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeouts {
    /// Longest wait for the next frame.
    pub idle: Duration,
    /// The whole body, from the request's headers on.
    pub total: Duration,
}

#[derive(Clone)]
pub struct BodyLimitLayer {
    limit: u64,
    timeouts: BodyTimeouts,
}

impl BodyLimitLayer {
    pub fn new(limit: u64, timeouts: BodyTimeouts) -> Self {
        BodyLimitLayer { limit, timeouts }
    }
}

impl<S> Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;
    fn layer(&self, inner: S) -> BodyLimit<S> {
        BodyLimit {
            inner,
            limit: self.limit,
            timeouts: self.timeouts,
        }
    }
}

#[derive(Clone)]
pub struct BodyLimit<S> {
    inner: S,
    limit: u64,
    timeouts: BodyTimeouts,
}

impl<S, B> Service<Request<B>> for BodyLimit<S>
where
    S: Service<Request<RequestBody>, Error = ProxyError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = super::BoxFuture<Result<S::Response, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let limit = self.limit;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Box::pin(std::future::ready(Err(ProxyError::BodyTooLarge { limit })));
        }
        let timeouts = self.timeouts;
        let req = req.map(|body| {
            LimitedBody {
                inner: body,
                remaining: limit,
                limit,
                timeouts,
                deadline: Instant::now() + timeouts.total,
                timer: None,
                waiting: false,
            }
            .boxed_unsync()
        });
        Box::pin(self.inner.call(req))
    }
}

struct LimitedBody<B> {
    inner: B,
    remaining: u64,
    limit: u64,
    timeouts: BodyTimeouts,
    /// When the whole body must have arrived.
    deadline: Instant,
    /// Made on the first wait only: a body that arrives with its headers costs no timer.
    timer: Option<Pin<Box<Sleep>>>,
    /// The last poll found no frame: the client is being waited for. Time the reader spends
    /// not polling (an upstream that reads slowly) is not the client's fault and not counted.
    waiting: bool,
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if polled.is_ready() {
            self.waiting = false;
        }
        match polled {
            Poll::Pending => self.wait(cx),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > self.remaining {
                        let limit = self.limit;
                        return Poll::Ready(Some(Err(Box::new(LengthLimitError { limit }))));
                    }
                    self.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                Poll::Ready(Some(Err(Box::new(ClientBodyError(e.to_string())))))
            }
            Poll::Ready(None) => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> LimitedBody<B> {
    /// No frame yet: arms the timer (the idle wait, or the total deadline if sooner) when the
    /// wait begins, and cuts the body when it fires.
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.waiting {
            self.waiting = true;
            let until = (Instant::now() + self.timeouts.idle).min(self.deadline);
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(until),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(until))),
            }
        }
        let Some(timer) = &mut self.timer else {
            return Poll::Pending;
        };
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let error = if Instant::now() >= self.deadline {
            RequestBodyTimeout::Total(self.timeouts.total)
        } else {
            RequestBodyTimeout::Idle(self.timeouts.idle)
        };
        Poll::Ready(Some(Err(Box::new(error))))
    }
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
    };

    use http_body_util::Full;
    use tower::{ServiceExt, service_fn};

    use super::*;

    /// A body that never sends a frame and never ends.
    struct Silent;

    impl Body for Silent {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Pending
        }
    }

    const TIMEOUTS: BodyTimeouts = BodyTimeouts {
        idle: Duration::from_secs(5),
        total: Duration::from_secs(60),
    };

    /// The limit over an inner service that reads the whole body and answers with what it got
    /// (the bytes, or the error that cut them), counting its calls.
    fn limited<B>(
        limit: u64,
    ) -> (
        impl Service<Request<B>, Response = Result<Bytes, BoxError>, Error = ProxyError> + Clone,
        Arc<AtomicUsize>,
    )
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display,
    {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let inner = service_fn(move |req: Request<RequestBody>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                let read = req.into_body().collect().await;
                Ok::<_, ProxyError>(read.map(|c| c.to_bytes()))
            }
        });
        (BodyLimitLayer::new(limit, TIMEOUTS).layer(inner), calls)
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_before_the_inner_service() {
        let (svc, calls) = limited::<Full<Bytes>>(10);
        let req = Request::builder()
            .header(header::CONTENT_LENGTH, "11")
            .body(Full::new(Bytes::from_static(b"01234567890")))
            .unwrap();
        let e = svc.oneshot(req).await;
        assert!(matches!(e, Err(ProxyError::BodyTooLarge { limit: 10 })));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_body_without_a_length_is_cut_when_it_grows_past_the_limit() {
        let (svc, _) = limited::<Full<Bytes>>(10);
        let within = svc
            .clone()
            .oneshot(Request::new(Full::new(Bytes::from_static(b"0123456789"))));
        assert_eq!(within.await.unwrap().unwrap(), "0123456789");
        let over = svc.oneshot(Request::new(Full::new(Bytes::from(vec![b'x'; 100]))));
        let cut = over.await.unwrap().unwrap_err();
        assert!(cut.downcast_ref::<LengthLimitError>().is_some(), "{cut}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_body_is_cut_after_the_idle_timeout() {
        let (svc, calls) = limited::<Silent>(10);
        let started = Instant::now();
        let cut = svc
            .oneshot(Request::new(Silent))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(
                cut.downcast_ref::<RequestBodyTimeout>(),
                Some(RequestBodyTimeout::Idle(d)) if *d == TIMEOUTS.idle
            ),
            "{cut}"
        );
        // Paused time: exactly the idle timeout passed, neither less nor the total deadline.
        assert_eq!(started.elapsed(), TIMEOUTS.idle);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// A client's body error read while inspecting says what failed once: it was "client
    /// request body failed: client request body failed: ...".
    #[test]
    fn a_client_body_error_is_said_once() {
        let e: BoxError = Box::new(ClientBodyError("connection reset".into()));
        let refused = crate::proxy::inspect::body_error(e);
        assert_eq!(
            refused.to_string(),
            "client request body failed: connection reset"
        );
    }
}
