//! Trace context per call, first rule that applies: a valid W3C `traceparent` (strict), else
//! `x-sidetrace-trace-id` (32 hex as is, any other value hashed to the same id on every replica)
//! with an optional `x-sidetrace-parent-span-id`, else a new random trace. A bad header never
//! fails the call: it starts a new trace and is counted.

use std::cell::Cell;

use http::HeaderMap;
use ring::digest;
use serde::{Deserialize, Serialize};

/// Bit 0 of the trace flags.
pub const FLAG_SAMPLED: u8 = 0x01;
/// Level 2 "random trace id" bit.
pub const FLAG_RANDOM: u8 = 0x02;

/// Where the trace id came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceSource {
    Traceparent,
    GroupingHeader,
    New,
    /// No trace header: the request continues an agent loop of an earlier call (it answers
    /// that call's tool calls or names its response as `previous_response_id`).
    Joined,
}

/// The call span's place in a trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    /// The parent lives in another process (the caller's `traceparent`).
    pub parent_is_remote: bool,
    pub flags: u8,
    pub trace_state: Option<String>,
    pub source: TraceSource,
}

/// Headers that were present but invalid, for the metric.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Invalid {
    pub traceparent: bool,
    pub trace_id: bool,
    pub parent_span_id: bool,
}

impl TraceContext {
    /// Reads the trace context of an incoming request.
    pub fn from_headers(
        headers: &HeaderMap,
        grouping_key: Option<&[u8]>,
    ) -> (TraceContext, Invalid) {
        let mut invalid = Invalid::default();
        let span_id = random_span_id();
        if let Some(value) = headers.get("traceparent") {
            match value.to_str().ok().and_then(parse_traceparent) {
                Some((trace_id, parent, flags)) => {
                    let trace_state = join_header(headers, "tracestate");
                    return (
                        TraceContext {
                            trace_id,
                            span_id,
                            parent_span_id: Some(parent),
                            parent_is_remote: true,
                            // Reserved bits are sent as 0.
                            flags: flags & (FLAG_SAMPLED | FLAG_RANDOM),
                            trace_state,
                            source: TraceSource::Traceparent,
                        },
                        invalid,
                    );
                }
                None => invalid.traceparent = true,
            }
        }
        let group = headers
            .get("x-sidetrace-trace-id")
            .or_else(|| headers.get("x-portkey-trace-id"))
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty());
        if let Some(value) = group {
            let trace_id = match parse_hex::<16>(value) {
                Some(id) if id != [0; 16] => id,
                _ => grouped_trace_id(value, grouping_key),
            };
            let parent = match headers.get("x-sidetrace-parent-span-id") {
                Some(v) => match v.to_str().ok().and_then(parse_hex::<8>) {
                    Some(id) if id != [0; 8] => Some(id),
                    _ => {
                        invalid.parent_span_id = true;
                        None
                    }
                },
                None => None,
            };
            return (
                TraceContext {
                    trace_id,
                    span_id,
                    parent_span_id: parent,
                    parent_is_remote: parent.is_some(),
                    flags: FLAG_SAMPLED,
                    trace_state: None,
                    source: TraceSource::GroupingHeader,
                },
                invalid,
            );
        }
        if headers.contains_key("x-sidetrace-trace-id") {
            invalid.trace_id = true;
        }
        (
            TraceContext {
                trace_id: random_trace_id(),
                span_id,
                parent_span_id: None,
                parent_is_remote: false,
                flags: FLAG_SAMPLED | FLAG_RANDOM,
                trace_state: None,
                source: TraceSource::New,
            },
            invalid,
        )
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }

    /// The `traceparent` for the upstream request: same trace and flags, our span as parent.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.flags
        )
    }
}

/// Strict W3C parse: lowercase hex, exact lengths, version `ff` and all-zero ids refused; a
/// future version is read by position and may carry more fields.
pub fn parse_traceparent(value: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let v = value.trim_matches(|c| c == ' ' || c == '\t');
    let b = v.as_bytes();
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let version = parse_hex::<1>(&v[0..2])?[0];
    if version == 0xff || (version == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
        return None;
    }
    let trace_id = parse_hex::<16>(&v[3..35])?;
    let parent = parse_hex::<8>(&v[36..52])?;
    let flags = parse_hex::<1>(&v[53..55])?[0];
    if trace_id == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace_id, parent, flags))
}

/// Lowercase hex of exactly `N` bytes.
pub fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != N * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in b.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// The trace id for a grouping value: the first 16 bytes of SHA-256 (or of HMAC-SHA256 with the
/// configured key, so that callers of one deployment cannot collide with another's), identical
/// on every replica.
pub fn grouped_trace_id(value: &str, key: Option<&[u8]>) -> [u8; 16] {
    let mut out = [0u8; 16];
    match key {
        Some(key) => {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
            out.copy_from_slice(&ring::hmac::sign(&key, value.as_bytes()).as_ref()[..16]);
        }
        None => {
            let mut ctx = digest::Context::new(&digest::SHA256);
            ctx.update(b"sidetrace trace group\0");
            ctx.update(value.as_bytes());
            out.copy_from_slice(&ctx.finish().as_ref()[..16]);
        }
    }
    if out == [0; 16] {
        out[15] = 1;
    }
    out
}

fn join_header(headers: &HeaderMap, name: &str) -> Option<String> {
    let parts: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let joined = parts.join(",");
    let joined = joined.trim();
    // W3C: propagate at least 512 characters; we keep up to 1 KiB and drop the rest whole.
    (!joined.is_empty() && joined.len() <= 1024).then(|| joined.to_string())
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    let rng = ring::rand::SystemRandom::new();
    if ring::rand::SecureRandom::fill(&rng, &mut bytes).is_err() {
        // No OS randomness: fall back to the clock, which still differs per thread start.
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    }
    u64::from_le_bytes(bytes)
}

/// wyrand: a fast generator seeded from the OS once per thread; ids need to be unique and
/// unpredictable enough for sampling, not secret.
fn next_u64() -> u64 {
    RNG.with(|s| {
        let v = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(v);
        let t = u128::from(v) * u128::from(v ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    })
}

pub fn random_trace_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&next_u64().to_be_bytes());
    id[8..].copy_from_slice(&next_u64().to_be_bytes());
    if id == [0; 16] {
        id[15] = 1;
    }
    id
}

pub fn random_span_id() -> [u8; 8] {
    let mut id = next_u64().to_be_bytes();
    if id == [0; 8] {
        id[7] = 1;
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_valid_traceparent_makes_the_call_a_child_of_the_caller() {
        let (ctx, invalid) = TraceContext::from_headers(
            &headers(&[("traceparent", VALID), ("tracestate", "vendor=1")]),
            None,
        );
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            ctx.parent_span_id.map(|p| hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert!(ctx.parent_is_remote);
        assert_eq!(ctx.flags, 1);
        assert_eq!(ctx.trace_state.as_deref(), Some("vendor=1"));
        assert_eq!(invalid, Invalid::default());
        let out = ctx.traceparent();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && out.ends_with("-01"));
        assert_ne!(
            &out[36..52],
            "00f067aa0ba902b7",
            "our span is the upstream's parent"
        );
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-abc-def-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_future_version_is_read_by_position_and_reemitted_as_00() {
        let future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-whatever";
        assert!(parse_traceparent(future).is_some());
        assert_eq!(
            parse_traceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03x"),
            None
        );
        let (ctx, _) = TraceContext::from_headers(&headers(&[("traceparent", future)]), None);
        assert!(ctx.traceparent().starts_with("00-"));
        assert_eq!(ctx.flags, 0x03, "the random bit is kept");
    }

    #[test]
    fn reserved_flag_bits_are_not_sent() {
        let (ctx, _) = TraceContext::from_headers(
            &headers(&[(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff",
            )]),
            None,
        );
        assert_eq!(ctx.flags, 0x03);
    }

    #[test]
    fn an_invalid_traceparent_starts_a_new_trace_and_is_reported() {
        let (ctx, invalid) = TraceContext::from_headers(
            &headers(&[("traceparent", "garbage"), ("tracestate", "a=1")]),
            None,
        );
        assert!(invalid.traceparent);
        assert_eq!(ctx.source, TraceSource::New);
        assert_eq!(
            ctx.trace_state, None,
            "tracestate without a valid traceparent is dropped"
        );
    }

    #[test]
    fn a_grouping_header_of_32_hex_is_the_trace_id_and_anything_else_is_hashed_deterministically() {
        let (a, _) = TraceContext::from_headers(
            &headers(&[("x-sidetrace-trace-id", "4bf92f3577b34da6a3ce929d0e0e4736")]),
            None,
        );
        assert_eq!(a.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let (b, _) =
            TraceContext::from_headers(&headers(&[("x-sidetrace-trace-id", "agent-run-42")]), None);
        let (c, _) =
            TraceContext::from_headers(&headers(&[("x-sidetrace-trace-id", "agent-run-42")]), None);
        assert_eq!(b.trace_id, c.trace_id);
        assert_ne!(b.span_id, c.span_id);
        assert_eq!(b.trace_id, grouped_trace_id("agent-run-42", None));
        assert_ne!(
            grouped_trace_id("agent-run-42", Some(b"k1")),
            grouped_trace_id("agent-run-42", Some(b"k2"))
        );
        assert_eq!(b.flags & FLAG_RANDOM, 0, "a derived id is not random");
    }

    #[test]
    fn the_parent_span_header_nests_the_call_and_a_bad_one_is_reported() {
        let (ctx, invalid) = TraceContext::from_headers(
            &headers(&[
                ("x-sidetrace-trace-id", "run-1"),
                ("x-sidetrace-parent-span-id", "00f067aa0ba902b7"),
            ]),
            None,
        );
        assert_eq!(
            ctx.parent_span_id.map(|p| hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_eq!(invalid, Invalid::default());
        let (ctx, invalid) = TraceContext::from_headers(
            &headers(&[
                ("x-sidetrace-trace-id", "run-1"),
                ("x-sidetrace-parent-span-id", "xyz"),
            ]),
            None,
        );
        assert_eq!(ctx.parent_span_id, None);
        assert!(invalid.parent_span_id);
    }

    #[test]
    fn traceparent_wins_over_the_grouping_header() {
        let (ctx, _) = TraceContext::from_headers(
            &headers(&[("traceparent", VALID), ("x-sidetrace-trace-id", "run-1")]),
            None,
        );
        assert_eq!(ctx.source, TraceSource::Traceparent);
    }

    #[test]
    fn new_traces_get_distinct_random_ids() {
        let ids: std::collections::HashSet<[u8; 16]> =
            (0..1000).map(|_| random_trace_id()).collect();
        assert_eq!(ids.len(), 1000);
    }
}
