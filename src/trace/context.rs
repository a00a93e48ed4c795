//! Trace context per call, first rule that applies: a valid W3C `traceparent` (strict, exactly
//! one header field), else `x-sidetrace-trace-id` (32 hex in either case as is, any other value
//! hashed to the same id on every replica) with an optional `x-sidetrace-parent-span-id`, else a
//! new random trace. A bad header never fails the call: it starts a new trace and is counted.
//! `tracestate` is kept only beside a valid `traceparent` and only when it follows the grammar of
//! the W3C Recommendation; a valid one is propagated with its entries in order.

use std::cell::Cell;

use http::{HeaderMap, HeaderName};
use ring::digest;
use serde::{Deserialize, Serialize};

// The trace headers' names, made at compile time: a lookup by a `&str` name parses it first.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// Names a trace by id or by any string (grouping), on requests; the trace's id on responses.
pub const TRACE_ID: HeaderName = HeaderName::from_static("x-sidetrace-trace-id");
/// The call's span id, on responses.
pub const SPAN_ID: HeaderName = HeaderName::from_static("x-sidetrace-span-id");
const PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-sidetrace-parent-span-id");
const PORTKEY_TRACE_ID: HeaderName = HeaderName::from_static("x-portkey-trace-id");

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
    /// Present beside a valid `traceparent` but not following the grammar: dropped.
    pub tracestate: bool,
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
        let mut traceparents = headers.get_all(TRACEPARENT).iter();
        if let Some(value) = traceparents.next() {
            // Two `traceparent` fields cannot be combined into one value: the context is
            // invalid (W3C test suite, `test_traceparent_duplicated`), so a new trace starts.
            let single = traceparents.next().is_none();
            match value
                .to_str()
                .ok()
                .filter(|_| single)
                .and_then(parse_traceparent)
            {
                Some((trace_id, parent, flags)) => {
                    let trace_state = match parse_tracestate(headers) {
                        Ok(state) => state,
                        Err(()) => {
                            invalid.tracestate = true;
                            None
                        }
                    };
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
            .get(TRACE_ID)
            .or_else(|| headers.get(PORTKEY_TRACE_ID))
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty());
        if let Some(value) = group {
            // Hex in either case, as the OTLP receiver and the API take ids: an app that writes
            // its ids in capitals must find its calls in the trace of its own spans.
            let trace_id = match parse_hex::<16>(&value.to_ascii_lowercase()) {
                Some(id) if id != [0; 16] => id,
                _ => grouped_trace_id(value, grouping_key),
            };
            let parent = match headers.get(PARENT_SPAN_ID) {
                Some(v) => match v
                    .to_str()
                    .ok()
                    .and_then(|v| parse_hex::<8>(&v.trim().to_ascii_lowercase()))
                {
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
        if headers.contains_key(TRACE_ID) {
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
        // Written byte by byte: `format!` was a noticeable part of each call's CPU.
        let mut out = Vec::with_capacity(55);
        out.extend_from_slice(b"00-");
        push_hex(&mut out, &self.trace_id);
        out.push(b'-');
        push_hex(&mut out, &self.span_id);
        out.push(b'-');
        push_hex(&mut out, &[self.flags]);
        ascii(out)
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
    let mut out = Vec::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    ascii(out)
}

/// Appends `bytes` as lowercase hex.
pub fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 15)]);
    }
}

/// Text written as ASCII bytes.
fn ascii(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_default()
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

/// Most `tracestate` characters propagated. The spec asks for at least 512; past this, whole
/// entries are dropped as it says: those longer than 128 characters first, then from the right.
pub const MAX_TRACESTATE_CHARS: usize = 512;

/// Most list members of a `tracestate` (W3C).
const MAX_TRACESTATE_MEMBERS: usize = 32;

/// The `tracestate` to propagate: every header field combined in order (RFC 9110), parsed by
/// the grammar of the W3C Trace Context Recommendation. `Ok(None)` when there is none (or only
/// empty members); `Err` when it breaks the grammar (more than 32 members, a bad key or value),
/// then it is dropped whole, never forwarded as received. Empty members and the optional
/// whitespace around members are dropped, a repeated key keeps its first (left-most, most
/// recent) entry, and the rest keep their order.
fn parse_tracestate(headers: &HeaderMap) -> Result<Option<String>, ()> {
    let mut members: Vec<(&str, &str)> = Vec::new();
    let mut count = 0;
    for field in headers.get_all(TRACESTATE) {
        let field = field.to_str().map_err(|_| ())?;
        for member in field.split(',') {
            let member = member.trim_matches([' ', '\t']);
            if member.is_empty() {
                continue;
            }
            count += 1;
            if count > MAX_TRACESTATE_MEMBERS {
                return Err(());
            }
            let (key, value) = member.split_once('=').ok_or(())?;
            if !tracestate_key(key) || !tracestate_value(value) {
                return Err(());
            }
            if !members.iter().any(|(k, _)| *k == key) {
                members.push((key, value));
            }
        }
    }
    let len = |m: &[(&str, &str)]| -> usize {
        m.iter().map(|(k, v)| k.len() + 1 + v.len()).sum::<usize>() + m.len().saturating_sub(1)
    };
    if len(&members) > MAX_TRACESTATE_CHARS {
        members.retain(|(k, v)| k.len() + 1 + v.len() <= 128);
        while len(&members) > MAX_TRACESTATE_CHARS {
            members.pop();
        }
    }
    if members.is_empty() {
        return Ok(None);
    }
    let mut out = String::with_capacity(len(&members));
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    Ok(Some(out))
}

/// `key = simple-key / multi-tenant-key` (W3C Trace Context, Recommendation):
/// `simple-key = lcalpha 0*255( lcalpha / DIGIT / "_" / "-" / "*" / "/" )`,
/// `multi-tenant-key = tenant-id "@" system-id`, `tenant-id = ( lcalpha / DIGIT ) 0*240(...)`,
/// `system-id = lcalpha 0*13(...)`. (The Level 3 editor's draft allows `@` anywhere in a key;
/// every key this accepts is valid there too.)
fn tracestate_key(key: &str) -> bool {
    fn rest(s: &str, max: usize) -> bool {
        s.len() <= max
            && s.bytes().all(|c| {
                c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || matches!(c, b'_' | b'-' | b'*' | b'/')
            })
    }
    let first = |s: &str, digit_ok: bool| {
        s.bytes()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || (digit_ok && c.is_ascii_digit()))
    };
    match key.split_once('@') {
        None => first(key, false) && rest(&key[1..], 255),
        Some((tenant, system)) => {
            first(tenant, true)
                && rest(&tenant[1..], 240)
                && first(system, false)
                && rest(&system[1..], 13)
        }
    }
}

/// `value = 0*255(chr) nblk-chr`, `nblk-chr = %x21-2B / %x2D-3C / %x3E-7E`, `chr = %x20 /
/// nblk-chr`: 1 to 256 printable ASCII characters but `,` and `=`, not ending in a space.
fn tracestate_value(value: &str) -> bool {
    let b = value.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && b.iter()
            .all(|&c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
        && b[b.len() - 1] != b' '
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
        assert_eq!(
            out,
            format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
                ctx.span_id_hex()
            )
        );
        assert_eq!(
            parse_traceparent(&out),
            Some((ctx.trace_id, ctx.span_id, ctx.flags))
        );
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
        // In capitals too, as the OTLP receiver and the API take ids; the parent as well.
        let (upper, invalid) = TraceContext::from_headers(
            &headers(&[
                ("x-sidetrace-trace-id", "4BF92F3577B34DA6A3CE929D0E0E4736"),
                ("x-sidetrace-parent-span-id", "00F067AA0BA902B7"),
            ]),
            None,
        );
        assert_eq!(upper.trace_id, a.trace_id);
        assert_eq!(
            upper.parent_span_id,
            Some(*b"\x00\xf0\x67\xaa\x0b\xa9\x02\xb7")
        );
        assert!(!invalid.parent_span_id);
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

    // The W3C Trace Context test suite (w3c/trace-context, test/test.py), case by case, as
    // unit tests of what the gateway reads: the trace it joins and the `tracestate` it sends on.

    const TP: &str = "00-12345678901234567890123456789012-1234567890123456-00";
    const TRACE: &str = "12345678901234567890123456789012";

    /// The trace joined (hex) and the `tracestate` propagated, for these header fields in order.
    fn read(fields: &[(&'static str, &str)]) -> (String, Option<String>, Invalid) {
        let (ctx, invalid) = TraceContext::from_headers(&headers(fields), None);
        (ctx.trace_id_hex(), ctx.trace_state, invalid)
    }

    #[test]
    fn w3c_traceparent_duplicated_starts_a_new_trace() {
        let (trace, state, invalid) = read(&[
            (
                "traceparent",
                "00-12345678901234567890123456789011-1234567890123456-01",
            ),
            (
                "traceparent",
                "00-12345678901234567890123456789012-1234567890123456-01",
            ),
            ("tracestate", "foo=1"),
        ]);
        assert_ne!(trace, "12345678901234567890123456789011");
        assert_ne!(trace, TRACE);
        assert_eq!(state, None, "tracestate goes with the invalid traceparent");
        assert!(invalid.traceparent);
    }

    #[test]
    fn w3c_traceparent_cases_that_start_a_new_trace() {
        for bad in [
            // test_traceparent_version_0x00: trailing characters after a version 00 header
            "00-12345678901234567890123456789012-1234567890123456-01.",
            "00-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
            // test_traceparent_version_0xcc: a future version's fields end in "-" or the end
            "cc-12345678901234567890123456789012-1234567890123456-01.what-the-future-will-be-like",
            // test_traceparent_version_0xff
            "ff-12345678901234567890123456789012-1234567890123456-01",
            // test_traceparent_version_illegal_characters
            ".0-12345678901234567890123456789012-1234567890123456-01",
            "0.-12345678901234567890123456789012-1234567890123456-01",
            // test_traceparent_version_too_long / too_short
            "000-12345678901234567890123456789012-1234567890123456-01",
            "0000-12345678901234567890123456789012-1234567890123456-01",
            "0-12345678901234567890123456789012-1234567890123456-01",
            // test_traceparent_trace_id_all_zero / illegal_characters / too_long / too_short
            "00-00000000000000000000000000000000-1234567890123456-01",
            "00-.2345678901234567890123456789012-1234567890123456-01",
            "00-1234567890123456789012345678901.-1234567890123456-01",
            "00-123456789012345678901234567890123-1234567890123456-01",
            "00-1234567890123456789012345678901-1234567890123456-01",
            // test_traceparent_parent_id_all_zero / illegal_characters / too_long / too_short
            "00-12345678901234567890123456789012-0000000000000000-01",
            "00-12345678901234567890123456789012-.234567890123456-01",
            "00-12345678901234567890123456789012-123456789012345.-01",
            "00-12345678901234567890123456789012-12345678901234567-01",
            "00-12345678901234567890123456789012-123456789012345-01",
            // test_traceparent_trace_flags_illegal_characters / too_long / too_short
            "00-12345678901234567890123456789012-1234567890123456-.0",
            "00-12345678901234567890123456789012-1234567890123456-0.",
            "00-12345678901234567890123456789012-1234567890123456-001",
            "00-12345678901234567890123456789012-1234567890123456-1",
        ] {
            let (trace, state, invalid) = read(&[("traceparent", bad), ("tracestate", "foo=1")]);
            assert!(
                !trace.contains("2345678901234567890123456789012"),
                "{bad} was joined"
            );
            assert!(invalid.traceparent, "{bad}");
            assert_eq!(state, None, "{bad}");
        }
        // test_traceparent_header_name: other names are not the header
        for name in ["trace-parent", "trace.parent"] {
            let mut h = HeaderMap::new();
            h.insert(
                http::HeaderName::from_static(name),
                HeaderValue::from_static(TP),
            );
            let (ctx, _) = TraceContext::from_headers(&h, None);
            assert_ne!(ctx.trace_id_hex(), TRACE, "{name}");
        }
    }

    #[test]
    fn w3c_traceparent_cases_that_join_the_callers_trace() {
        for good in [
            // test_traceparent_included_tracestate_missing
            TP,
            // test_traceparent_version_0xcc
            "cc-12345678901234567890123456789012-1234567890123456-01",
            "cc-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
            // test_traceparent_ows_handling
            " 00-12345678901234567890123456789012-1234567890123456-01",
            "\t00-12345678901234567890123456789012-1234567890123456-01",
            "00-12345678901234567890123456789012-1234567890123456-01 ",
            "00-12345678901234567890123456789012-1234567890123456-01\t",
            "\t 00-12345678901234567890123456789012-1234567890123456-01 \t",
        ] {
            let (trace, _, invalid) = read(&[("traceparent", good)]);
            assert_eq!(trace, TRACE, "{good:?}");
            assert_eq!(invalid, Invalid::default(), "{good:?}");
        }
        // test_traceparent_included_tracestate_missing: our span becomes the parent
        let (ctx, _) = TraceContext::from_headers(&headers(&[("traceparent", TP)]), None);
        assert_ne!(&ctx.traceparent()[36..52], "1234567890123456");
        // test_traceparent_header_name_valid_casing: http's HeaderMap names are lowercase, so
        // TraceParent, TRACEPARENT and traceparent are one header by construction.
        assert_eq!(
            http::HeaderName::from_bytes(b"TrAcEpArEnT").unwrap(),
            "traceparent"
        );
    }

    #[test]
    fn w3c_tracestate_without_a_traceparent_is_discarded() {
        // test_tracestate_included_traceparent_missing
        for state in ["foo=1", "foo=1,bar=2"] {
            let (_, kept, _) = read(&[("tracestate", state)]);
            assert_eq!(kept, None);
        }
    }

    #[test]
    fn w3c_tracestate_cases_that_are_propagated() {
        for (fields, want) in [
            // test_tracestate_included_traceparent_included
            (&[("tracestate", "foo=1,bar=2")][..], "foo=1,bar=2"),
            // test_tracestate_empty_header
            (&[("tracestate", "foo=1"), ("tracestate", "")], "foo=1"),
            (&[("tracestate", ""), ("tracestate", "foo=1")], "foo=1"),
            // test_tracestate_multiple_headers_different_keys: combined, in order
            (
                &[
                    ("tracestate", "foo=1,bar=2"),
                    ("tracestate", "rojo=1,congo=2"),
                    ("tracestate", "baz=3"),
                ],
                "foo=1,bar=2,rojo=1,congo=2,baz=3",
            ),
            // test_tracestate_duplicated_keys: one of them is kept (the left-most)
            (&[("tracestate", "foo=1,foo=1")], "foo=1"),
            (&[("tracestate", "foo=1,foo=2")], "foo=1"),
            (&[("tracestate", "foo=1"), ("tracestate", "foo=2")], "foo=1"),
            // test_tracestate_ows_handling
            (
                &[("tracestate", "foo=1 \t , \t bar=2, \t baz=3")],
                "foo=1,bar=2,baz=3",
            ),
            (
                &[("tracestate", "foo=1\t \t,\t \tbar=2,\t \tbaz=3")],
                "foo=1,bar=2,baz=3",
            ),
            (&[("tracestate", " foo=1")], "foo=1"),
            (&[("tracestate", "\tfoo=1")], "foo=1"),
            (&[("tracestate", "foo=1 ")], "foo=1"),
            (&[("tracestate", "foo=1\t")], "foo=1"),
            (&[("tracestate", "\t foo=1 \t")], "foo=1"),
            // the tenant@system form
            (
                &[("tracestate", "acme@rojo=x,0tenant@s1=y")],
                "acme@rojo=x,0tenant@s1=y",
            ),
            // a value keeps its leading spaces
            (&[("tracestate", "foo= a b")], "foo= a b"),
        ] {
            let mut all = vec![("traceparent", TP)];
            all.extend_from_slice(fields);
            let (trace, kept, invalid) = read(&all);
            assert_eq!(trace, TRACE);
            assert_eq!(kept.as_deref(), Some(want), "{fields:?}");
            assert_eq!(invalid, Invalid::default(), "{fields:?}");
        }
        // test_tracestate_all_allowed_characters
        let key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/";
        let value: String = (0x20u8..=0x2b)
            .chain(0x2d..=0x3c)
            .chain(0x3e..=0x7e)
            .map(char::from)
            .collect();
        for key in [key.to_string(), format!("{key}@a-z0-9_-*/")] {
            // Too long for one system id: 14 characters at most.
            let key = match key.split_once('@') {
                Some((tenant, _)) => format!("{tenant}@a-z0-9_-*/x"),
                None => key,
            };
            let member = format!("{key}={value}");
            let (_, kept, _) = read(&[("traceparent", TP), ("tracestate", &member)]);
            assert_eq!(kept.as_deref(), Some(member.as_str()));
        }
        // test_tracestate_empty_header: only empty members is no tracestate, and not invalid
        let (_, kept, invalid) = read(&[("traceparent", TP), ("tracestate", "")]);
        assert_eq!((kept, invalid), (None, Invalid::default()));
    }

    #[test]
    fn w3c_tracestate_cases_that_are_dropped_whole() {
        let long_key = format!("a{}", "b".repeat(256));
        let long_tenant = format!("t{}@s", "b".repeat(241));
        let long_system = format!("t@s{}", "b".repeat(14));
        let long_value = format!("k={}", "v".repeat(257));
        let members_33 = (0..33)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        for state in [
            // test_tracestate_key_illegal_characters
            "foo =1",
            "FOO=1",
            "foo.bar=1",
            // test_tracestate_key_illegal_vendor_format: `@foo` is refused everywhere; the suite
            // now follows the Level 3 draft, where `foo@`, `foo@@bar` and `foo@bar@baz` are keys,
            // but the Recommendation's `tenant@system` form refuses them, and so do we (what we
            // forward is then valid under both)
            "@foo=1,bar=2",
            "foo@=1,bar=2",
            "foo@@bar=1,bar=2",
            "foo@bar@baz=1,bar=2",
            "foo@1bar=1",
            // a simple key starts with a letter
            "1foo=1",
            // test_tracestate_value_illegal_characters
            "foo=bar=baz",
            "foo=,bar=3",
            "foo=caf\u{e9}",
            // no "=" at all
            "foo",
            // key and value lengths: 256, tenant 241 and system 14 characters at most
            long_key.as_str(),
            long_tenant.as_str(),
            long_system.as_str(),
            long_value.as_str(),
            // test_tracestate_member_count_limit: 33 members
            members_33.as_str(),
        ] {
            let member = if state.contains('=') {
                state.to_string()
            } else {
                format!("{state}=1")
            };
            let member = if state == "foo" { "foo" } else { &member };
            let (trace, kept, invalid) = read(&[("traceparent", TP), ("tracestate", member)]);
            assert_eq!(
                trace, TRACE,
                "a bad tracestate never affects the traceparent"
            );
            assert_eq!(kept, None, "{member:?} was propagated");
            assert!(invalid.tracestate, "{member:?}");
        }
        // 32 members are fine, and the longest keys and values the grammar allows
        let members_32 = (0..32)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        let (_, kept, _) = read(&[("traceparent", TP), ("tracestate", &members_32)]);
        assert_eq!(kept.as_deref(), Some(members_32.as_str()));
        for member in [
            format!("a{}=1", "b".repeat(255)),
            format!("t{}@s=1", "b".repeat(240)),
            format!("t@s{}=1", "b".repeat(13)),
        ] {
            let (_, kept, invalid) = read(&[("traceparent", TP), ("tracestate", &member)]);
            assert!(kept.is_some() && !invalid.tracestate, "{member}");
        }
    }

    #[test]
    fn a_long_tracestate_loses_whole_entries_long_ones_first_then_from_the_right() {
        let big = format!("big={}", "x".repeat(200));
        let small: Vec<String> = (0..30)
            .map(|i| format!("k{i:02}={}", "y".repeat(12)))
            .collect();
        let mut list = vec![small[0].clone(), big];
        list.extend(small[1..].iter().cloned());
        let (_, kept, invalid) = read(&[("traceparent", TP), ("tracestate", &list.join(","))]);
        let kept = kept.unwrap();
        assert!(!invalid.tracestate);
        assert!(kept.len() <= MAX_TRACESTATE_CHARS);
        assert!(
            !kept.contains("big="),
            "the entry over 128 characters goes first"
        );
        // Each small entry is 16 characters plus a comma: 30 of them would be 509 characters.
        assert!(
            kept.starts_with("k00=") && kept.ends_with(&small[29]),
            "{kept}"
        );
        let many: Vec<String> = (0..32)
            .map(|i| format!("k{i:02}={}", "y".repeat(20)))
            .collect();
        let (_, kept, _) = read(&[("traceparent", TP), ("tracestate", &many.join(","))]);
        let kept = kept.unwrap();
        assert!(kept.len() <= MAX_TRACESTATE_CHARS, "{}", kept.len());
        assert!(kept.starts_with("k00=") && !kept.contains("k31="), "{kept}");
    }

    #[test]
    fn new_traces_get_distinct_random_ids() {
        let ids: std::collections::HashSet<[u8; 16]> =
            (0..1000).map(|_| random_trace_id()).collect();
        assert_eq!(ids.len(), 1000);
    }
}
