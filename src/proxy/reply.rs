//! What the client is told about a call's cost: headers on a non-streamed response (read whole
//! for that, when small), trailers (`TE: trailers`) or a final SSE comment on a stream.

use std::{collections::VecDeque, time::Duration};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Response, header};
use http_body::Frame;
use http_body_util::BodyExt;

use super::{
    body::ProxyBody,
    record::{Call, OnDisconnect, body_outcome},
    tap::TapBody,
};
use crate::{call::CallRecord, call::Outcome, cost::Cost, error::ProxyError};

/// Cost and token counts of a finished call, as the client gets them.
pub struct CostSummary {
    cost_usd: Option<String>,
    tokens: [(HeaderName, Option<u64>); 4],
}

const COST_USD: HeaderName = HeaderName::from_static("x-sidetrace-cost-usd");
const INPUT_TOKENS: HeaderName = HeaderName::from_static("x-sidetrace-input-tokens");
const OUTPUT_TOKENS: HeaderName = HeaderName::from_static("x-sidetrace-output-tokens");
const CACHED_INPUT_TOKENS: HeaderName = HeaderName::from_static("x-sidetrace-cached-input-tokens");
const REASONING_TOKENS: HeaderName = HeaderName::from_static("x-sidetrace-reasoning-tokens");
const COST_COMMENT: HeaderName = HeaderName::from_static("x-sidetrace-cost-comment");

pub(super) const TRAILER_NAMES: &str = "x-sidetrace-cost-usd, x-sidetrace-input-tokens, x-sidetrace-output-tokens, x-sidetrace-cached-input-tokens, x-sidetrace-reasoning-tokens";

impl CostSummary {
    pub(super) fn of(record: &CallRecord) -> CostSummary {
        let u = record.response.as_ref().map(|r| &r.usage);
        let n = |f: fn(&crate::format::Usage) -> Option<u64>| u.and_then(f);
        CostSummary {
            cost_usd: record
                .cost_pico_usd
                .map(|p| Cost::from_pico_usd(p).to_string()),
            // Names made at compile time: `from_static` checks every byte when run.
            tokens: [
                (INPUT_TOKENS, n(|u| u.input_tokens)),
                (OUTPUT_TOKENS, n(|u| u.output_tokens)),
                (CACHED_INPUT_TOKENS, n(|u| u.cached_input_tokens)),
                (REASONING_TOKENS, n(|u| u.reasoning_tokens)),
            ],
        }
    }

    /// The headers (or trailers); an unpriced call gets no cost header, never a 0.
    pub(super) fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        self.add_to(&mut h);
        h
    }

    /// Adds [`CostSummary::headers`] to `h` (a response's own: no map made and merged).
    pub(super) fn add_to(&self, h: &mut HeaderMap) {
        if let Some(cost) = self
            .cost_usd
            .as_deref()
            .and_then(|c| HeaderValue::from_str(c).ok())
        {
            h.insert(COST_USD, cost);
        }
        for (name, value) in &self.tokens {
            if let Some(v) = value {
                h.insert(name.clone(), HeaderValue::from(*v));
            }
        }
    }

    /// An SSE comment line: every SSE parser ignores it.
    pub(super) fn sse_comment(&self) -> Bytes {
        let mut line = String::from(": sidetrace");
        if let Some(c) = &self.cost_usd {
            line.push_str(&format!(" cost_usd={c}"));
        }
        for (name, value) in &self.tokens {
            if let Some(v) = value {
                let key = name
                    .as_str()
                    .trim_start_matches("x-sidetrace-")
                    .replace('-', "_");
                line.push_str(&format!(" {key}={v}"));
            }
        }
        line.push_str("\n\n");
        Bytes::from(line)
    }
}

/// What the client asked to get back about cost, read before the request is rewritten.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientWants {
    /// `TE: trailers`: the cost comes as HTTP trailers at the end of a stream.
    pub trailers: bool,
    /// `x-sidetrace-cost-comment: true`: the cost comes as a final SSE comment line.
    pub sse_comment: bool,
}

impl ClientWants {
    pub fn from_headers(headers: &HeaderMap) -> ClientWants {
        ClientWants {
            trailers: headers
                .get_all(header::TE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| {
                    v.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
                }),
            sse_comment: headers
                .get(COST_COMMENT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true")),
        }
    }
}

/// Extra frames a stream ends with.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct EndExtras {
    pub(super) trailers: bool,
    pub(super) comment: bool,
}

/// Reads a non-streamed response whole (it is small), so the headers can carry its cost. A body
/// larger than `max` is passed on as it comes, without cost headers.
pub(super) async fn buffer_and_price(
    mut call: Box<Call>,
    response: Response<ProxyBody>,
    max: usize,
    host: String,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (mut parts, mut body) = response.into_parts();
    let started = std::time::Instant::now();
    let mut buf = BytesMut::new();
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    call.feed(data);
                    buf.extend_from_slice(data);
                    if buf.len() > max {
                        // Too large to hold: send what we have and stream the rest.
                        let prefix = buf.freeze();
                        let rest = TapBody::new(
                            body,
                            call,
                            false,
                            VecDeque::from([Frame::data(prefix)]),
                            EndExtras::default(),
                            0,
                            OnDisconnect::Cancel,
                        );
                        parts.headers.remove(header::CONTENT_LENGTH);
                        return Ok(Response::from_parts(parts, rest.boxed_unsync()));
                    }
                }
            }
            Some(Err(e)) => {
                let (outcome, kind) = body_outcome(&e);
                call.finish(outcome, Some(kind.to_string()), false);
                return Err(ProxyError::UpstreamUnreachable {
                    host,
                    reason: format!("the response body failed: {e}"),
                });
            }
        }
    }
    if let Some(summary) = call.finish(Outcome::Completed, None, true) {
        summary.add_to(&mut parts.headers);
    }
    parts.extensions.insert(BufferedFor(started.elapsed()));
    Ok(Response::from_parts(parts, super::body::full(buf.freeze())))
}

/// How long the gateway held a response to read it whole (not overhead: upstream time).
#[derive(Debug, Clone, Copy)]
pub struct BufferedFor(pub Duration);
