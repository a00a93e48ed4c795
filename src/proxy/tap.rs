//! The tap on a response body. It observes each frame as it passes (a borrow, no copy) and
//! feeds the call's response parser; it changes nothing, except that it removes the usage-only
//! chunk when the gateway itself asked for it (include_usage injection), and may end a stream
//! with the cost (a comment or trailers) when the client asked. It finishes the call when the
//! body ends, fails, or is dropped (client gone).

use std::{
    collections::VecDeque,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use super::{
    body::{BoxError, ProxyBody},
    record::{Call, OnDisconnect, body_outcome},
    reply::EndExtras,
};
use crate::{
    call::Outcome,
    format::{BodyParser, EventKind},
};

/// Holds back the bytes of the event being received so that the usage-only chunk can be left
/// out whole. Client SSE parsers act only on complete events, so this delays nothing they see.
#[derive(Default)]
struct Strip {
    pending: Vec<Bytes>,
    pending_len: usize,
    /// The dropped event ended with CR at the end of a frame: its LF may start the next one.
    skip_lf: bool,
    /// A kept event ended with CR at the end of a frame: its LF, if it starts the next one, is
    /// the kept event's, not part of the event after it (which may be the one dropped).
    keep_lf: bool,
    boundaries: Vec<(usize, EventKind)>,
}

impl Strip {
    fn take_pending(&mut self, out: &mut Vec<Bytes>) {
        out.append(&mut self.pending);
        self.pending_len = 0;
    }
}

/// The tap on a response body; see the module docs.
pub struct TapBody {
    inner: Option<ProxyBody>,
    call: Option<Box<Call>>,
    strip: Option<Strip>,
    /// Frames to send before ending the stream: held-back bytes, the cost comment, trailers.
    queued: VecDeque<Frame<Bytes>>,
    extras: EndExtras,
    max_pending: usize,
    on_disconnect: OnDisconnect,
}

impl TapBody {
    pub(super) fn new(
        inner: ProxyBody,
        call: Box<Call>,
        strip: bool,
        queued: VecDeque<Frame<Bytes>>,
        extras: EndExtras,
        max_pending: usize,
        on_disconnect: OnDisconnect,
    ) -> TapBody {
        TapBody {
            inner: Some(inner),
            call: Some(call),
            strip: strip.then(Strip::default),
            queued,
            extras,
            max_pending,
            on_disconnect,
        }
    }
}

fn join(parts: Vec<Bytes>) -> Bytes {
    match parts.len() {
        0 => Bytes::new(),
        1 => parts.into_iter().next().unwrap_or_default(),
        _ => {
            let mut out = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
            for p in parts {
                out.extend_from_slice(&p);
            }
            out.freeze()
        }
    }
}

impl TapBody {
    /// Feeds a frame and returns what to forward, leaving out the usage-only event.
    fn strip_frame(&mut self, data: Bytes) -> Bytes {
        let (Some(strip), Some(call)) = (&mut self.strip, &mut self.call) else {
            return data;
        };
        let Some(parser) = &mut call.parser else {
            return data;
        };
        strip.boundaries.clear();
        let boundaries = &mut strip.boundaries;
        parser.feed_marking(&data, |end, kind| boundaries.push((end, kind)));
        call.note_first_chunk();
        call.note_first_token();
        let mut start = 0;
        let mut out = Vec::new();
        let (skip_lf, keep_lf) = (
            std::mem::take(&mut strip.skip_lf),
            std::mem::take(&mut strip.keep_lf),
        );
        if data.first() == Some(&b'\n') && (skip_lf || keep_lf) {
            if keep_lf {
                out.push(data.slice(..1));
            }
            start = 1;
        }
        let boundaries = std::mem::take(&mut strip.boundaries);
        for &(end, kind) in &boundaries {
            let end = end.max(start);
            if kind == EventKind::UsageOnly {
                strip.pending.clear();
                strip.pending_len = 0;
                strip.skip_lf = end == data.len() && data[end - 1] == b'\r';
            } else {
                strip.take_pending(&mut out);
                if end > start {
                    out.push(data.slice(start..end));
                }
                strip.keep_lf = end == data.len() && data[end - 1] == b'\r';
            }
            start = end;
        }
        strip.boundaries = boundaries;
        if start < data.len() {
            strip.pending_len += data.len() - start;
            strip.pending.push(data.slice(start..));
            if strip.pending_len > self.max_pending {
                // Too large to be the usage chunk: stop holding it back.
                strip.take_pending(&mut out);
            }
        }
        join(out)
    }
}

impl TapBody {
    /// The upstream body is over: queue what was held back and finish the call as completed.
    /// Done as soon as the end is known, because hyper stops polling a body whose
    /// `is_end_stream` is true (known length) and would otherwise only drop it.
    fn end(&mut self) {
        self.inner = None;
        if let Some(strip) = &mut self.strip {
            let mut rest = Vec::new();
            strip.take_pending(&mut rest);
            let rest = join(rest);
            if !rest.is_empty() {
                self.queued.push_back(Frame::data(rest));
            }
        }
        if let Some(mut call) = self.call.take()
            && let Some(summary) = call.finish(Outcome::Completed, None, true)
        {
            if self.extras.comment {
                self.queued.push_back(Frame::data(summary.sse_comment()));
            }
            if self.extras.trailers {
                self.queued.push_back(Frame::trailers(summary.headers()));
            }
        }
    }
}

impl Body for TapBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(frame) = this.queued.pop_front() {
                return Poll::Ready(Some(Ok(frame)));
            }
            let Some(inner) = this.inner.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    let frame = match frame.into_data() {
                        Ok(data) if this.strip.is_some() => Frame::data(this.strip_frame(data)),
                        Ok(data) => {
                            if let Some(call) = &mut this.call {
                                call.feed(&data);
                            }
                            Frame::data(data)
                        }
                        Err(trailers) => trailers,
                    };
                    if this.inner.as_ref().is_some_and(|b| b.is_end_stream()) {
                        this.end();
                    }
                    if frame.data_ref().is_some_and(|d| d.is_empty()) {
                        // Everything in it was held back or stripped.
                        continue;
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => {
                    if let Some(mut call) = this.call.take() {
                        let (outcome, kind) = body_outcome(&e);
                        call.finish(outcome, Some(kind.to_string()), false);
                    }
                    this.inner = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => this.end(),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.queued.is_empty() && self.inner.is_none()
    }

    /// hyper frames the response by this hint when it is exact, so it must count every byte
    /// still to come: the queued frames (a prefix read while trying to buffer the body) plus
    /// what the upstream has left. Unknown when the tap may change the length: stripping makes
    /// the body shorter, a cost comment longer.
    fn size_hint(&self) -> SizeHint {
        let Some(inner) = &self.inner else {
            return SizeHint::default();
        };
        if self.strip.is_some() || self.extras.comment || self.extras.trailers {
            return SizeHint::default();
        }
        let queued: u64 = self
            .queued
            .iter()
            .filter_map(Frame::data_ref)
            .map(|d| d.len() as u64)
            .sum();
        let rest = inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(queued));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(queued));
        }
        hint
    }
}

impl Drop for TapBody {
    fn drop(&mut self) {
        let (Some(mut call), Some(mut inner)) = (self.call.take(), self.inner.take()) else {
            return;
        };
        if call.parser.as_ref().is_some_and(BodyParser::end_seen) {
            // The client left after the stream's last event (SDKs stop reading at `[DONE]`):
            // it has the whole answer; only the upstream's end of body was still to come.
            drop(inner);
            call.finish(Outcome::Completed, None, true);
            return;
        }
        // When shutdown cuts the call nothing may outlive it: no background read.
        if self.on_disconnect == OnDisconnect::Finish
            && !call.recorder.cutting()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            // The client is gone; read the rest so the record has the full usage.
            handle.spawn(async move {
                let mut clean = true;
                while let Some(frame) = inner.frame().await {
                    match frame {
                        Ok(frame) => {
                            if let Some(data) = frame.data_ref() {
                                call.feed(data);
                            }
                        }
                        Err(_) => {
                            clean = false;
                            break;
                        }
                    }
                }
                call.finish(Outcome::Cancelled, Some("cancelled".to_string()), clean);
            });
            return;
        }
        // The client left mid-stream: the upstream is dropped first, then the call, whose own
        // drop records it as cancelled (or `shutdown`).
        drop(inner);
        drop(call);
    }
}
