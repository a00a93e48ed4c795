//! Body types on the request path. Wrappers hold what must live as long as a streamed body
//! (a concurrency permit, timers, an upstream slot) and never touch the bytes.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response body the proxy hands to hyper.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Every request body the proxy forwards upstream.
pub type RequestBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Carries a value (a permit, a guard) for as long as the body lives, and passes every frame
/// through as it is.
pub struct Holding<T> {
    inner: ProxyBody,
    _held: T,
}

impl<T: Send + Unpin + 'static> Holding<T> {
    pub fn boxed(inner: ProxyBody, held: T) -> ProxyBody {
        Holding { inner, _held: held }.boxed_unsync()
    }
}

impl<T: Unpin> Body for Holding<T> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
