//! The mock's response body: pre-rendered frames, sent one by one with an optional pause before
//! the frames marked for it, without a task or channel per response.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

/// One piece of a response body, and whether the configured delay comes before it.
pub struct Piece {
    pub bytes: Bytes,
    pub delayed: bool,
}

pub struct MockBody {
    pieces: Vec<Piece>,
    next: usize,
    delay: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// A whole answer has a known length, so hyper sends `content-length` instead of chunks.
    whole: bool,
}

impl MockBody {
    pub fn whole(bytes: Bytes) -> MockBody {
        MockBody {
            pieces: vec![Piece {
                bytes,
                delayed: false,
            }],
            next: 0,
            delay: Duration::ZERO,
            sleep: None,
            whole: true,
        }
    }

    pub fn stream(pieces: Vec<Piece>, delay: Duration) -> MockBody {
        MockBody {
            pieces,
            next: 0,
            delay,
            sleep: None,
            whole: false,
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        let Some(piece) = this.pieces.get(this.next) else {
            return Poll::Ready(None);
        };
        if piece.delayed && !this.delay.is_zero() {
            let delay = this.delay;
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            ready!(sleep.as_mut().poll(cx));
            this.sleep = None;
        }
        let bytes = piece.bytes.clone();
        this.next += 1;
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.pieces.len()
    }

    fn size_hint(&self) -> SizeHint {
        if self.whole {
            let left: usize = self.pieces[self.next.min(self.pieces.len())..]
                .iter()
                .map(|p| p.bytes.len())
                .sum();
            SizeHint::with_exact(left as u64)
        } else {
            SizeHint::default()
        }
    }
}
