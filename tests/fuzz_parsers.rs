//! Fuzzing every parser that reads bytes a client or a provider controls, with proptest as the
//! engine (only stable Rust here, so no `cargo fuzz`): SSE, NDJSON and AWS event-stream framing,
//! each extractor through `BodyParser::for_response`, `traceparent` and the metadata headers.
//!
//! Inputs are the provider fixtures (`tests/fixtures/providers/`) mutated the ways broken or
//! hostile upstreams break them (byte flips, truncation, splices of two bodies, huge numbers,
//! deep nesting, invalid UTF-8, CR/LF games, oversize events) plus arbitrary bytes, fed in
//! random splits. Properties: nothing panics; buffers stay within a small multiple of the
//! per-event limit however much is fed; the result does not depend on how the bytes were split;
//! `traceparent` round-trips and anything that is not strictly W3C is refused; metadata stays
//! within its bounds. `tests/extract_fixtures.rs` checks the unmutated fixtures and random
//! well-formed streams; this file goes after everything else.
//!
//! CI runs a bounded number of cases (a few seconds per test). For a longer run set
//! `FUZZ_CASES` (cases per property; `PROPTEST_CASES` is read too), in release mode:
//!
//! ```sh
//! FUZZ_CASES=1000000 cargo test --release --test fuzz_parsers -- --test-threads 1
//! ```
//!
//! That run (10 million cases) took 17 minutes at nice 10 on the shared 2-core machine; 100,000
//! cases per property take under 2 minutes.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::Value;
use sidetrace::{
    format::{
        BodyParser, ParserLimits, ResponseRecord,
        eventstream::{FrameDecoder, crc32, encode_frame},
        ndjson::LineSplitter,
    },
    provider::{WireFormat, builtin_quirks},
    sse::SseParser,
    trace::{
        context::{FLAG_RANDOM, FLAG_SAMPLED, TraceContext, TraceSource, hex, parse_traceparent},
        metadata::{CallMetadata, MAX_KEYS, MAX_VALUE_CHARS, percent_decode},
    },
};

/// Cases per property: `FUZZ_CASES`, else `PROPTEST_CASES`, else the CI default.
fn config(ci_default: u32) -> Config {
    let cases = ["FUZZ_CASES", "PROPTEST_CASES"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse().ok())
        .unwrap_or(ci_default);
    Config {
        cases,
        // Failures are reported with their minimal input; nothing is written into the tree.
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs: the fixtures, and how they get broken.

struct Fixture {
    name: String,
    body: Vec<u8>,
    format: WireFormat,
    provider: &'static str,
    content_type: String,
}

fn fixtures() -> &'static [Fixture] {
    static FIXTURES: OnceLock<Vec<Fixture>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/providers");
        let mut expects: Vec<PathBuf> = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("read fixture dir") {
                let path = entry.expect("dir entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.to_string_lossy().ends_with(".expect.json") {
                    expects.push(path);
                }
            }
        }
        expects.sort();
        let out: Vec<Fixture> = expects
            .iter()
            .map(|path| {
                let expect: Value =
                    serde_json::from_slice(&std::fs::read(path).expect("read expect.json"))
                        .expect("expect.json is JSON");
                let field = |k: &str| expect[k].as_str().expect("string field").to_owned();
                let dir = path.parent().expect("parent");
                Fixture {
                    name: path
                        .strip_prefix(&root)
                        .unwrap_or(path)
                        .display()
                        .to_string(),
                    body: std::fs::read(dir.join(field("body_file"))).expect("read body"),
                    format: format_of(&field("api")),
                    provider: provider_of(&field("provider")),
                    content_type: field("content_type"),
                }
            })
            .collect();
        assert!(out.len() >= 25, "found only {} fixtures", out.len());
        out
    })
}

fn format_of(api: &str) -> WireFormat {
    match api {
        "chat_completions" => WireFormat::ChatCompletions,
        "completions" => WireFormat::Completions,
        "embeddings" => WireFormat::Embeddings,
        "responses" => WireFormat::Responses,
        "messages" => WireFormat::Messages,
        "generate_content" => WireFormat::GenerateContent,
        "ollama_chat" => WireFormat::OllamaChat,
        "converse_stream" => WireFormat::ConverseStream,
        "invoke_model_with_response_stream" => WireFormat::InvokeModelWithResponseStream,
        other => panic!("fixture api {other:?} has no wire format"),
    }
}

fn provider_of(dir: &str) -> &'static str {
    match dir {
        "openai" => "openai",
        "azure_openai" => "azure",
        "anthropic" => "anthropic",
        "gemini" => "gemini",
        "ollama" => "ollama",
        "deepseek" => "deepseek",
        "bedrock" => "bedrock",
        _ => "vllm",
    }
}

/// Every inspected wire format, so each extractor meets every framing.
fn formats() -> Vec<WireFormat> {
    WireFormat::ALL
        .into_iter()
        .filter(|&f| f != WireFormat::Passthrough)
        .collect()
}

const CONTENT_TYPES: &[Option<&str>] = &[
    Some("text/event-stream"),
    Some("Text/Event-Stream; charset=utf-8"),
    Some("application/x-ndjson"),
    Some("application/jsonl"),
    Some("application/vnd.amazon.eventstream"),
    Some("application/json"),
    Some("text/plain"),
    None,
];

/// One way a body gets broken; several are applied in a row.
#[derive(Debug, Clone)]
enum Mutation {
    /// Overwrite the byte at a position.
    Flip(prop::sample::Index, u8),
    /// Cut the body short.
    Truncate(prop::sample::Index),
    /// The head of this body followed by the tail of another fixture.
    Splice(
        prop::sample::Index,
        prop::sample::Index,
        prop::sample::Index,
    ),
    /// Replace a run of digits with a number no integer type holds.
    HugeNumber(prop::sample::Index, &'static str),
    /// Insert `depth` open brackets (and maybe their closes) at a position.
    Nest(prop::sample::Index, usize, bool),
    /// Insert bytes that are not UTF-8.
    InvalidUtf8(prop::sample::Index, &'static [u8]),
    /// Rewrite every line end: `\n` becomes this.
    LineEnds(&'static str),
    /// Insert a line end (or half of one) at a position.
    StrayLineEnd(prop::sample::Index, &'static str),
    /// Repeat a slice many times (an oversize event, a runaway line).
    Blowup(prop::sample::Index, usize),
}

/// Bytes that break UTF-8: lone, cut, surrogate and overlong sequences (and a NUL).
const NOT_UTF8: &[&[u8]] = &[
    b"\xff",
    b"\xc3",
    b"\xe4\xbd",
    b"\xf0\x9f\x99",
    b"\xed\xa0\x80",
    b"\xc0\xaf",
    b"\0",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    let idx = any::<prop::sample::Index>;
    prop_oneof![
        4 => (idx(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        2 => idx().prop_map(Mutation::Truncate),
        2 => (idx(), idx(), idx()).prop_map(|(a, b, c)| Mutation::Splice(a, b, c)),
        2 => (idx(), prop::sample::select(&[
            "18446744073709551616", "-1", "1e400", "-0", "1.5", "99999999999999999999999999999999",
            "1E19", "0x10", "NaN", "18446744073709551615", "\"12\"",
        ][..])).prop_map(|(i, n)| Mutation::HugeNumber(i, n)),
        1 => (idx(), 1usize..4000, any::<bool>()).prop_map(|(i, d, c)| Mutation::Nest(i, d, c)),
        2 => (idx(), prop::sample::select(NOT_UTF8)).prop_map(|(i, b)| Mutation::InvalidUtf8(i, b)),
        1 => prop::sample::select(&["\r\n", "\r", "\n\n", "\r\r\n", "\n\r"][..]).prop_map(Mutation::LineEnds),
        2 => (idx(), prop::sample::select(&["\n", "\r", "\r\n", "\n\n", "\r\n\r\n"][..]))
            .prop_map(|(i, e)| Mutation::StrayLineEnd(i, e)),
        1 => (idx(), 2usize..200).prop_map(|(i, n)| Mutation::Blowup(i, n)),
    ]
}

fn insert(body: &mut Vec<u8>, at: prop::sample::Index, bytes: &[u8]) {
    let i = at.index(body.len() + 1);
    body.splice(i..i, bytes.iter().copied());
}

fn apply(body: &mut Vec<u8>, m: &Mutation) {
    match m {
        Mutation::Flip(at, b) => {
            if !body.is_empty() {
                let i = at.index(body.len());
                body[i] = *b;
            }
        }
        Mutation::Truncate(at) => body.truncate(at.index(body.len() + 1)),
        Mutation::Splice(cut, other, from) => {
            let other = &other.get(fixtures()).body;
            body.truncate(cut.index(body.len() + 1));
            body.extend_from_slice(&other[from.index(other.len() + 1)..]);
        }
        Mutation::HugeNumber(at, number) => {
            let digits: Vec<usize> = (0..body.len())
                .filter(|&i| body[i].is_ascii_digit() && (i == 0 || !body[i - 1].is_ascii_digit()))
                .collect();
            if digits.is_empty() {
                return;
            }
            let start = digits[at.index(digits.len())];
            let end = (start..body.len())
                .find(|&i| !body[i].is_ascii_digit())
                .unwrap_or(body.len());
            body.splice(start..end, number.bytes());
        }
        Mutation::Nest(at, depth, close) => {
            let mut bytes = "[{\"a\":".repeat(*depth / 6).into_bytes();
            bytes.extend(std::iter::repeat_n(b'[', *depth));
            if *close {
                bytes.extend(std::iter::repeat_n(b']', *depth));
                bytes.extend("1}]".repeat(*depth / 6).bytes());
            }
            insert(body, *at, &bytes);
        }
        Mutation::InvalidUtf8(at, bytes) => insert(body, *at, bytes),
        Mutation::LineEnds(end) => {
            let mut out = Vec::with_capacity(body.len() * 2);
            for &b in body.iter() {
                if b == b'\n' {
                    out.extend_from_slice(end.as_bytes());
                } else {
                    out.push(b);
                }
            }
            *body = out;
        }
        Mutation::StrayLineEnd(at, end) => insert(body, *at, end.as_bytes()),
        Mutation::Blowup(at, times) => {
            if body.is_empty() {
                return;
            }
            let i = at.index(body.len());
            let piece = body[i..body.len().min(i + 64)].to_vec();
            let repeated = piece.repeat(*times);
            body.splice(i..i, repeated);
        }
    }
}

/// A fixture broken by a few mutations, or arbitrary bytes.
fn hostile_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => (any::<prop::sample::Index>(), prop::collection::vec(mutation(), 0..6)).prop_map(
            |(pick, muts)| {
                let mut body = pick.get(fixtures()).body.clone();
                for m in &muts {
                    apply(&mut body, m);
                }
                body
            }
        ),
        1 => prop::collection::vec(any::<u8>(), 0..1024),
    ]
}

/// Sorted cut offsets into a body of `len` bytes.
fn cut_points(raw: &[prop::sample::Index], len: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = raw.iter().map(|c| c.index(len + 1)).collect();
    cuts.sort_unstable();
    cuts
}

/// The body split at `cuts` (possibly empty pieces).
fn pieces<'a>(body: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut from = 0;
    for &c in cuts {
        out.push(&body[from..c]);
        from = c;
    }
    out.push(&body[from..]);
    out
}

// ---------------------------------------------------------------------------------------------
// SSE framing.

/// What an SSE parser made of a body: events, boundary ends (stream offsets), skipped events,
/// whether an event was left open.
#[derive(Debug, PartialEq)]
struct SseRun {
    events: Vec<(String, String)>,
    ends: Vec<usize>,
    oversize: u64,
    partial: bool,
}

fn run_sse(body: &[u8], cuts: &[usize], max: usize) -> SseRun {
    let mut p = SseParser::new(max);
    let mut run = SseRun {
        events: Vec::new(),
        ends: Vec::new(),
        oversize: 0,
        partial: false,
    };
    let mut offset = 0;
    for piece in pieces(body, cuts) {
        p.feed(piece, |b| {
            let mut end = offset + b.end;
            // A CRLF split between two reads ends the line at its CR (the LF has not arrived);
            // count that boundary where the whole body puts it, after the LF.
            if end > 0 && body[end - 1] == b'\r' && body.get(end) == Some(&b'\n') {
                end += 1;
            }
            run.ends.push(end);
            if let Some(e) = b.event {
                assert!(
                    e.data.len() <= 3 * max && e.event.len() <= 3 * max,
                    "an event past the limit was delivered: {} bytes of data, limit {max}",
                    e.data.len()
                );
                run.events.push((e.event.to_owned(), e.data.to_owned()));
            }
        });
        offset += piece.len();
        // Held memory: one event's worth (lines as bytes, data as UTF-8 text, in which a
        // replaced invalid byte takes 3), each buffer at most doubled by growth.
        assert!(
            p.held_bytes() <= 16 * max + 64,
            "the SSE parser holds {} bytes with a {max}-byte event limit",
            p.held_bytes()
        );
    }
    run.oversize = p.oversize_events();
    run.partial = p.finish();
    run
}

/// SSE-shaped lines, some of them long, in any line-end style.
fn sse_body() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        Just(b"data: {\"a\":1}".to_vec()),
        Just(b"data:".to_vec()),
        Just(b"data".to_vec()),
        Just(b"event: message_delta".to_vec()),
        Just(b": keep-alive".to_vec()),
        Just(b"id: 7".to_vec()),
        Just(b"retry: 5".to_vec()),
        Just(Vec::new()),
        Just(Vec::new()),
        Just(b"\xEF\xBB\xBFdata: bom".to_vec()),
        Just(b"data: \xff\xfe caf\xc3".to_vec()),
        (1usize..600).prop_map(|n| {
            let mut l = b"data: ".to_vec();
            l.extend(std::iter::repeat_n(b'x', n));
            l
        }),
        prop::collection::vec(any::<u8>(), 0..20),
    ];
    let end = prop_oneof![Just(&b"\n"[..]), Just(&b"\r\n"[..]), Just(&b"\r"[..])];
    prop::collection::vec((line, end), 0..40).prop_map(|lines| {
        let mut body = Vec::new();
        for (l, e) in lines {
            body.extend_from_slice(&l);
            body.extend_from_slice(e);
        }
        body
    })
}

// ---------------------------------------------------------------------------------------------
// NDJSON framing.

fn run_ndjson(body: &[u8], cuts: &[usize], max: usize) -> (Vec<String>, u64, Option<String>) {
    let mut s = LineSplitter::new(max);
    let mut lines = Vec::new();
    for piece in pieces(body, cuts) {
        s.feed(piece, |l| {
            assert!(l.len() <= 3 * max, "a line past the limit was delivered");
            lines.push(l.to_owned());
        });
        assert!(
            s.held_bytes() <= 2 * max + 64,
            "the NDJSON splitter holds {} bytes with a {max}-byte line limit",
            s.held_bytes()
        );
    }
    let tail = s.finish();
    (lines, s.oversize_lines(), tail)
}

fn ndjson_body() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        Just(br#"{"model":"llama3","message":{"content":"hi"},"done":false}"#.to_vec()),
        Just(
            br#"{"done":true,"done_reason":"stop","prompt_eval_count":3,"eval_count":4}"#.to_vec()
        ),
        Just(b"   ".to_vec()),
        Just(Vec::new()),
        Just(b"{\"x\":\"\xff\"}".to_vec()),
        (1usize..400).prop_map(|n| vec![b'y'; n]),
        prop::collection::vec(any::<u8>(), 0..30),
    ];
    let end = prop_oneof![Just(&b"\n"[..]), Just(&b"\r\n"[..]), Just(&b""[..])];
    prop::collection::vec((line, end), 0..30).prop_map(|lines| {
        let mut body = Vec::new();
        for (l, e) in lines {
            body.extend_from_slice(&l);
            body.extend_from_slice(e);
        }
        body
    })
}

// ---------------------------------------------------------------------------------------------
// AWS event-stream framing.

/// A frame (event type, message type, exception type, payload) or its error.
type FrameOutcome = Result<(String, String, String, Vec<u8>), String>;

fn run_eventstream(body: &[u8], cuts: &[usize], max: usize) -> (Vec<FrameOutcome>, u64, bool) {
    let mut d = FrameDecoder::new(max);
    let mut frames = Vec::new();
    for piece in pieces(body, cuts) {
        d.feed(piece, |f| {
            frames.push(
                f.map(|f| {
                    assert!(
                        f.payload.len() <= max,
                        "a frame past the limit was delivered"
                    );
                    (
                        f.event_type.to_owned(),
                        f.message_type.to_owned(),
                        f.exception_type.to_owned(),
                        f.payload.to_vec(),
                    )
                })
                .map_err(|e| e.to_string()),
            )
        });
        assert!(
            d.held_bytes() <= 2 * max + 64,
            "the event-stream decoder holds {} bytes with a {max}-byte frame limit",
            d.held_bytes()
        );
    }
    let inside = d.finish();
    (frames, d.oversize_frames(), inside)
}

/// A prelude whose checksum is right but whose lengths are hostile.
fn prelude(total: u32, headers: u32) -> Vec<u8> {
    let mut p = total.to_be_bytes().to_vec();
    p.extend(headers.to_be_bytes());
    let crc = crc32(&p);
    p.extend(crc.to_be_bytes());
    p
}

fn eventstream_body() -> impl Strategy<Value = Vec<u8>> {
    let part = prop_oneof![
        4 => (
            prop::sample::select(&["messageStart", "contentBlockDelta", "messageStop", "metadata", "chunk", ""][..]),
            prop::sample::select(&["event", "exception", "error", ""][..]),
            prop::collection::vec(any::<u8>(), 0..300),
        ).prop_map(|(n, t, p)| encode_frame(&[(":event-type", n), (":message-type", t)], &p)),
        1 => (any::<u32>(), any::<u32>()).prop_map(|(t, h)| prelude(t, h)),
        1 => (16u32..100_000, 0u32..64).prop_map(|(t, h)| prelude(t, h)),
        1 => prop::collection::vec(any::<u8>(), 0..40),
        // A header block with bad types and lengths, under a valid message checksum.
        1 => prop::collection::vec(any::<u8>(), 0..60).prop_map(|headers| {
            let total = (16 + headers.len()) as u32;
            let mut f = prelude(total, headers.len() as u32);
            f.extend(&headers);
            let crc = crc32(&f);
            f.extend(crc.to_be_bytes());
            f
        }),
    ];
    (
        prop::collection::vec(part, 0..10),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
    )
        .prop_map(|(parts, flips)| {
            let mut body = parts.concat();
            for (at, b) in flips {
                if !body.is_empty() {
                    let i = at.index(body.len());
                    body[i] = b;
                }
            }
            body
        })
}

// ---------------------------------------------------------------------------------------------
// Whole body parsers (framing + extractor).

fn run_body(
    format: WireFormat,
    provider: &str,
    content_type: Option<&str>,
    limits: ParserLimits,
    body: &[u8],
    cuts: &[usize],
    clean: bool,
) -> ResponseRecord {
    let mut p = BodyParser::for_response(format, builtin_quirks(provider), content_type, limits)
        .expect("parser");
    for piece in pieces(body, cuts) {
        p.feed(piece);
        let _ = p.output_started();
    }
    let record = p.finish(clean);
    check_record_bounds(&record, limits);
    record
}

/// What a record may hold whatever the body: bounded names, messages, lists and output.
fn check_record_bounds(r: &ResponseRecord, limits: ParserLimits) {
    let names = [
        r.model.as_deref(),
        r.response_id.as_deref(),
        r.incomplete_reason.as_deref(),
    ];
    for name in names.into_iter().flatten() {
        assert!(name.len() <= 256, "a {}-byte name was kept", name.len());
    }
    assert!(
        r.finish_reasons.len() <= 256,
        "{} finish reasons",
        r.finish_reasons.len()
    );
    for reason in &r.finish_reasons {
        assert!(
            reason.len() <= 256,
            "a {}-byte finish reason was kept",
            reason.len()
        );
    }
    if let Some(e) = &r.error {
        assert!(
            e.kind.as_ref().is_none_or(|k| k.len() <= 256),
            "error type too long"
        );
        assert!(
            e.message.as_ref().is_none_or(|m| m.len() <= 2048),
            "error message too long"
        );
    }
    match &r.output {
        None => {}
        Some(out) => {
            assert!(
                limits.capture_output_bytes > 0,
                "output captured with capture off"
            );
            let held = out.text.len()
                + out
                    .tool_calls
                    .iter()
                    .map(|t| t.name.len() + t.arguments.len())
                    .sum::<usize>();
            assert!(
                held <= limits.capture_output_bytes,
                "captured {held} bytes of output with a {}-byte budget",
                limits.capture_output_bytes
            );
        }
    }
    if r.stream_completed {
        assert!(r.error.is_none(), "completed with an in-band error: {r:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// traceparent.

/// The W3C rules written out on their own, to compare the parser with.
fn reference_traceparent(value: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let v = value.trim_matches([' ', '\t']);
    let lower_hex = |s: &str| s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let fields: Vec<&str> = v.splitn(5, '-').collect();
    if fields.len() < 4 {
        return None;
    }
    let (version, trace, parent, flags) = (fields[0], fields[1], fields[2], fields[3]);
    let lengths_ok =
        version.len() == 2 && trace.len() == 32 && parent.len() == 16 && flags.len() == 2;
    if !lengths_ok || ![version, trace, parent, flags].iter().all(|f| lower_hex(f)) {
        return None;
    }
    match version {
        "ff" => return None,
        "00" if fields.len() > 4 => return None,
        _ => {}
    }
    let bytes = |s: &str| -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    };
    let trace_id: [u8; 16] = bytes(trace).try_into().ok()?;
    let parent_id: [u8; 8] = bytes(parent).try_into().ok()?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some((trace_id, parent_id, bytes(flags)[0]))
}

fn traceparent_text() -> impl Strategy<Value = String> {
    let valid = (any::<[u8; 16]>(), any::<[u8; 8]>(), any::<u8>(), 0u8..4)
        .prop_map(|(t, p, f, v)| format!("{:02x}-{}-{}-{f:02x}", v, hex(&t), hex(&p)));
    let edit = prop_oneof![
        (
            any::<prop::sample::Index>(),
            prop::sample::select(&['A', 'F', 'g', '-', ' ', '0', 'é', '\t', 'x'][..])
        )
            .prop_map(|(i, c)| (i, Some(c), false)),
        any::<prop::sample::Index>().prop_map(|i| (i, None, false)),
        (
            any::<prop::sample::Index>(),
            prop::sample::select(&['0', '-', 'a', ' '][..])
        )
            .prop_map(|(i, c)| (i, Some(c), true)),
    ];
    let suffix =
        prop::sample::select(&["", "", "-", "-x", "-00", " ", "\t", "-what-ever", "é"][..]);
    let prefix = prop::sample::select(&["", "", " ", "\t", "ff-", "-"][..]);
    prop_oneof![
        4 => (prefix, valid, prop::collection::vec(edit, 0..3), suffix).prop_map(|(pre, v, edits, suf)| {
            let mut chars: Vec<char> = format!("{pre}{v}{suf}").chars().collect();
            for (at, c, insert) in edits {
                let i = at.index(chars.len() + 1);
                match (c, insert) {
                    (Some(c), true) => chars.insert(i, c),
                    (Some(c), false) if i < chars.len() => chars[i] = c,
                    (None, _) if i < chars.len() => {
                        chars.remove(i);
                    }
                    _ => {}
                }
            }
            chars.into_iter().collect()
        }),
        1 => Just("00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_owned()),
        1 => Just("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01".to_owned()),
        1 => "\\PC{0,70}",
    ]
}

// ---------------------------------------------------------------------------------------------
// Metadata headers.

const METADATA_HEADERS: &[&str] = &[
    "baggage",
    "helicone-user-id",
    "helicone-session-id",
    "helicone-session-path",
    "x-portkey-metadata",
    "x-litellm-tags",
    "x-sidetrace-feature",
    "x-sidetrace-user-id",
    "x-sidetrace-session-id",
    "x-sidetrace-prompt-template",
    "x-sidetrace-prompt-version",
    "x-sidetrace-span-name",
    "x-sidetrace-tags",
    "x-sidetrace-capture",
];

/// Our own headers that carry one value each (the first one sent counts).
const SINGLE_VALUED: &[&str] = &[
    "x-sidetrace-feature",
    "x-sidetrace-user-id",
    "x-sidetrace-session-id",
    "x-sidetrace-prompt-template",
    "x-sidetrace-prompt-version",
    "x-sidetrace-span-name",
];

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Visible ASCII, space and tab, and obs-text bytes (not UTF-8 on their own).
        prop::collection::vec(prop_oneof![0x20u8..0x7f, Just(b'\t'), 0x80u8..=0xff], 0..80),
        (1usize..2000).prop_map(|n| "é".repeat(n).into_bytes()),
        (0usize..200).prop_map(|n| (0..n)
            .map(|i| format!("t{i}"))
            .collect::<Vec<_>>()
            .join(",")
            .into_bytes()),
        (0usize..200).prop_map(|n| (0..n)
            .map(|i| format!("user.id=u%{:02X}{i};p=1", i % 256))
            .collect::<Vec<_>>()
            .join(",")
            .into_bytes()),
        (1usize..300).prop_map(|n| format!(
            "{{{}\"_user\":\"u\"}}",
            (0..n)
                .map(|i| format!("\"k{i}\":{{\"n\":[{i},null,true]}},"))
                .collect::<String>()
        )
        .into_bytes()),
        (1usize..3000).prop_map(|d| format!("{}1{}", "[".repeat(d), "]".repeat(d)).into_bytes()),
        Just(b"%%%2%zz%+1%-1%c3%28%e2%82".to_vec()),
    ]
}

fn header_map() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    let name = prop_oneof![
        3 => prop::sample::select(METADATA_HEADERS).prop_map(str::to_owned),
        1 => "[a-z0-9._-]{0,80}".prop_map(|k| format!("x-sidetrace-meta-{k}")),
        1 => "[a-z0-9._-]{0,80}".prop_map(|k| format!("helicone-property-{k}")),
        1 => (0usize..100).prop_map(|i| format!("x-sidetrace-meta-k{i}")),
    ];
    prop::collection::vec((name, header_value()), 0..80)
}

/// `%XX` decoding by the letter: two hex digits, nothing else.
fn reference_percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
        {
            let digit = |c: u8| (c as char).to_digit(16).expect("hex digit") as u8;
            out.push(digit(b[i + 1]) << 4 | digit(b[i + 2]));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// The properties.

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn sse_events_do_not_depend_on_how_the_stream_is_split_and_memory_stays_bounded(
        body in prop_oneof![sse_body(), hostile_body()],
        raw_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..24),
        max in prop::sample::select(&[16usize, 64, 200, 1 << 20][..]),
    ) {
        let cuts = cut_points(&raw_cuts, body.len());
        let whole = run_sse(&body, &[], max);
        prop_assert_eq!(&run_sse(&body, &cuts, max), &whole, "cut at {:?}", cuts);
        let bytewise: Vec<usize> = (1..body.len()).collect();
        prop_assert_eq!(run_sse(&body, &bytewise, max), whole, "fed byte by byte");
    }

    #[test]
    fn ndjson_lines_do_not_depend_on_how_the_body_is_split_and_memory_stays_bounded(
        body in prop_oneof![ndjson_body(), hostile_body()],
        raw_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..24),
        max in prop::sample::select(&[1usize, 16, 64, 200, 1 << 20][..]),
    ) {
        let cuts = cut_points(&raw_cuts, body.len());
        let whole = run_ndjson(&body, &[], max);
        prop_assert_eq!(&run_ndjson(&body, &cuts, max), &whole, "cut at {:?}", cuts);
        let bytewise: Vec<usize> = (1..body.len()).collect();
        prop_assert_eq!(run_ndjson(&body, &bytewise, max), whole, "fed byte by byte");
    }

    #[test]
    fn event_stream_frames_do_not_depend_on_how_the_body_is_split_and_memory_stays_bounded(
        body in prop_oneof![eventstream_body(), hostile_body()],
        raw_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..24),
        max in prop::sample::select(&[0usize, 16, 64, 200, 1 << 20][..]),
    ) {
        let cuts = cut_points(&raw_cuts, body.len());
        let whole = run_eventstream(&body, &[], max);
        prop_assert_eq!(&run_eventstream(&body, &cuts, max), &whole, "cut at {:?}", cuts);
        let bytewise: Vec<usize> = (1..body.len()).collect();
        prop_assert_eq!(run_eventstream(&body, &bytewise, max), whole, "fed byte by byte");
    }

    #[test]
    fn every_extractor_survives_hostile_bodies_in_any_split_with_the_same_record(
        body in hostile_body(),
        format in prop::sample::select(formats()),
        content_type in prop::sample::select(CONTENT_TYPES),
        provider in prop::sample::select(&["openai", "azure", "anthropic", "gemini", "ollama", "deepseek", "bedrock", "vllm"][..]),
        raw_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..16),
        max in prop::sample::select(&[64usize, 512, 1 << 20][..]),
        capture in prop::sample::select(&[0usize, 1, 7, 100, 1 << 16][..]),
        clean in any::<bool>(),
    ) {
        let limits = ParserLimits { max_event_bytes: max, capture_output_bytes: capture };
        let cuts = cut_points(&raw_cuts, body.len());
        let whole = run_body(format, provider, content_type, limits, &body, &[], clean);
        let split = run_body(format, provider, content_type, limits, &body, &cuts, clean);
        prop_assert_eq!(split, whole, "{:?} {:?} cut at {:?}", format, content_type, cuts);
    }

    #[test]
    fn each_fixture_with_its_own_parser_survives_mutation_in_any_split_with_the_same_record(
        pick in any::<prop::sample::Index>(),
        muts in prop::collection::vec(mutation(), 1..6),
        raw_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..16),
        max in prop::sample::select(&[64usize, 300, 1 << 20][..]),
        capture in prop::sample::select(&[0usize, 5, 1 << 16][..]),
        clean in any::<bool>(),
    ) {
        let fixture = pick.get(fixtures());
        let mut body = fixture.body.clone();
        for m in &muts {
            apply(&mut body, m);
        }
        let limits = ParserLimits { max_event_bytes: max, capture_output_bytes: capture };
        let cuts = cut_points(&raw_cuts, body.len());
        let ct = Some(fixture.content_type.as_str());
        let whole = run_body(fixture.format, fixture.provider, ct, limits, &body, &[], clean);
        let split = run_body(fixture.format, fixture.provider, ct, limits, &body, &cuts, clean);
        prop_assert_eq!(split, whole, "{} cut at {:?}", fixture.name, cuts);
    }

    #[test]
    fn a_traceparent_is_accepted_exactly_when_it_is_strict_w3c(value in traceparent_text()) {
        prop_assert_eq!(parse_traceparent(&value), reference_traceparent(&value), "{:?}", value);
    }

    #[test]
    fn a_traceparent_round_trips_through_the_gateway(
        trace_id in any::<[u8; 16]>(),
        parent in any::<[u8; 8]>(),
        flags in any::<u8>(),
    ) {
        prop_assume!(trace_id != [0; 16] && parent != [0; 8]);
        let header = format!("00-{}-{}-{flags:02x}", hex(&trace_id), hex(&parent));
        prop_assert_eq!(parse_traceparent(&header), Some((trace_id, parent, flags)));
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_str(&header).expect("ascii"));
        let (ctx, invalid) = TraceContext::from_headers(&headers, None);
        prop_assert!(!invalid.traceparent);
        prop_assert_eq!(ctx.source, TraceSource::Traceparent);
        prop_assert_eq!(ctx.parent_span_id, Some(parent));
        // What goes upstream: same trace, our span as parent, only the defined flag bits.
        let (t, p, f) = parse_traceparent(&ctx.traceparent()).expect("our own traceparent parses");
        prop_assert_eq!(t, trace_id);
        prop_assert_eq!(p, ctx.span_id);
        prop_assert_eq!(f, flags & (FLAG_SAMPLED | FLAG_RANDOM));
    }

    #[test]
    fn any_trace_header_gives_a_valid_context_and_a_bad_one_is_reported(
        traceparent in prop::option::of(traceparent_text()),
        raw in prop::option::of(prop::collection::vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff], 0..70)),
        group in prop::option::of("[ -~]{0,40}"),
        parent in prop::option::of("[0-9a-fA-F]{0,17}"),
    ) {
        let mut headers = HeaderMap::new();
        let mut sent_traceparent = None;
        if let Some(v) = traceparent.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            sent_traceparent = v.to_str().ok().map(str::to_owned);
            headers.insert("traceparent", v);
        } else if let Some(v) = raw.as_deref().and_then(|v| HeaderValue::from_bytes(v).ok()) {
            sent_traceparent = Some(v.to_str().map(str::to_owned).unwrap_or_default());
            headers.insert("traceparent", v);
        }
        for (name, value) in [("x-sidetrace-trace-id", &group), ("x-sidetrace-parent-span-id", &parent)] {
            if let Some(v) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(name, v);
            }
        }
        let (ctx, invalid) = TraceContext::from_headers(&headers, Some(b"key"));
        prop_assert_ne!(ctx.trace_id, [0; 16]);
        prop_assert_ne!(ctx.span_id, [0; 8]);
        prop_assert_ne!(ctx.parent_span_id, Some([0; 8]));
        prop_assert!(ctx.trace_state.as_ref().is_none_or(|s| s.len() <= 1024));
        if let Some(sent) = sent_traceparent {
            let ok = reference_traceparent(&sent).is_some();
            prop_assert_eq!(invalid.traceparent, !ok, "{:?}", sent);
            prop_assert_eq!(ctx.source == TraceSource::Traceparent, ok);
        }
        // The header our upstream request carries always parses.
        prop_assert!(parse_traceparent(&ctx.traceparent()).is_some());
    }

    #[test]
    fn metadata_headers_stay_within_their_bounds(headers in header_map()) {
        let mut map = HeaderMap::new();
        for (name, value) in &headers {
            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value)) {
                map.append(name, value);
            }
        }
        // A single-valued field of ours sent longer than the bound must be cut and counted.
        let offered_long = SINGLE_VALUED.iter().filter_map(|name| map.get(*name)).any(|v| {
            String::from_utf8_lossy(v.as_bytes()).trim().chars().count() > MAX_VALUE_CHARS
        });
        let m = CallMetadata::from_headers(&map);
        let values = [&m.feature, &m.user_id, &m.session_id, &m.session_path, &m.prompt_template, &m.prompt_version, &m.span_name];
        for v in values.into_iter().flatten() {
            prop_assert!(v.chars().count() <= MAX_VALUE_CHARS, "a {}-char value was kept", v.chars().count());
            prop_assert!(!v.is_empty());
        }
        prop_assert!(m.tags.len() <= MAX_KEYS, "{} tags", m.tags.len());
        prop_assert!(m.meta.len() <= MAX_KEYS, "{} meta keys", m.meta.len());
        for t in &m.tags {
            prop_assert!(!t.is_empty() && t.chars().count() <= MAX_VALUE_CHARS);
        }
        for (k, v) in &m.meta {
            prop_assert!(!k.is_empty() && k.len() <= 64, "meta key {:?}", k);
            prop_assert!(v.chars().count() <= MAX_VALUE_CHARS);
        }
        if offered_long {
            prop_assert!(m.truncated > 0, "a value over {} chars was cut without being counted", MAX_VALUE_CHARS);
        }
    }

    #[test]
    fn percent_decoding_reads_two_hex_digits_and_nothing_else(s in "([%+\\-0-9a-fA-FxzZé ]|%[+\\-]?[0-9a-fA-F]{0,2}){0,24}") {
        prop_assert_eq!(percent_decode(&s), reference_percent_decode(&s), "{:?}", s);
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions the properties above found, kept as plain examples.

/// Events (name, data) and skipped-event count of an SSE body fed in the given pieces.
fn sse_pieces(chunks: &[&[u8]], max: usize) -> (Vec<(String, String)>, u64) {
    let mut p = SseParser::new(max);
    let mut events = Vec::new();
    for c in chunks {
        p.feed(c, |b| {
            if let Some(e) = b.event {
                events.push((e.event.to_owned(), e.data.to_owned()));
            }
        });
    }
    (events, p.oversize_events())
}

#[test]
fn an_sse_event_under_the_limit_is_kept_when_its_line_spans_two_reads() {
    // The line's first half was counted once when held and again when the line ended, so an
    // event between half the limit and the limit was skipped as oversize when split.
    let usage = r#"data: {"id":"c1","model":"m","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":9}}"#;
    let body = format!("{usage}\n\ndata: [DONE]\n\n");
    let limits = ParserLimits {
        max_event_bytes: usage.len() + 10,
        capture_output_bytes: 0,
    };
    let mut p = BodyParser::for_response(
        WireFormat::ChatCompletions,
        builtin_quirks("openai"),
        Some("text/event-stream"),
        limits,
    )
    .expect("parser");
    let (head, tail) = body.as_bytes().split_at(usage.len() / 2);
    p.feed(head);
    p.feed(tail);
    let r = p.finish(true);
    assert_eq!(r.oversize_events, 0);
    assert_eq!(r.usage.output_tokens, Some(9));
}

#[test]
fn an_oversize_sse_line_ending_where_a_read_ends_does_not_end_its_event() {
    // The skipped line's end looked like a blank line, so the rest of the oversize event was
    // dispatched as an event of its own.
    let long = format!("data: {}", "x".repeat(40));
    let (events, oversize) = sse_pieces(&[long.as_bytes(), b"\ndata: rest\n\n"], 16);
    assert_eq!(events, []);
    assert_eq!(oversize, 1);
}

#[test]
fn an_empty_read_between_cr_and_lf_does_not_make_a_blank_line() {
    let (events, _) = sse_pieces(&[b"data: a\r", b"", b"\ndata: b\r\n\r\n"], 1 << 10);
    assert_eq!(events, [(String::new(), "a\nb".to_owned())]);
}

#[test]
fn a_percent_escape_is_two_hex_digits_without_a_sign() {
    assert_eq!(percent_decode("%+a%-1%2B%e2%82%ac"), "%+a%-1+€");
}
