//! Provider fixtures through the gateway's body parser, however the body is split.
//!
//! Each fixture is fed whole, byte by byte, at seeded random cuts and at its `feed_splits`: every
//! way must give the same record, and that record must match the fixture's expectation. Property
//! tests add arbitrary splits and hostile input.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use proptest::prelude::*;
use serde_json::Value;
use sidetrace::{
    format::{BodyParser, ParserLimits, ResponseRecord, eventstream::encode_frame},
    provider::{WireFormat, builtin_quirks},
};

struct Case {
    name: String,
    expect: Value,
    body: Vec<u8>,
    format: WireFormat,
    provider: &'static str,
    content_type: String,
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/providers")
}

/// The route format the gateway would pick for a fixture's `api`.
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

/// The gateway's provider name for a fixture's provider directory.
fn provider_of(provider: &str) -> &'static str {
    match provider {
        "openai" => "openai",
        "azure_openai" => "azure",
        "anthropic" => "anthropic",
        "gemini" => "gemini",
        "ollama" => "ollama",
        "deepseek" => "deepseek",
        "bedrock" => "bedrock",
        "openai_compatible" => "vllm",
        "vllm" => "vllm",
        "groq" => "groq",
        "mistral" => "mistral",
        "openrouter" => "openrouter",
        "together" => "together",
        "xai" => "xai",
        other => panic!("fixture provider {other:?} has no gateway provider"),
    }
}

fn load_cases() -> Vec<Case> {
    let mut expect_files = Vec::new();
    let mut dirs = vec![fixtures_dir()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read fixture dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.to_string_lossy().ends_with(".expect.json") {
                expect_files.push(path);
            }
        }
    }
    expect_files.sort();
    expect_files
        .into_iter()
        .map(|path| {
            let expect: Value =
                serde_json::from_slice(&std::fs::read(&path).expect("read expect.json"))
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let field = |k: &str| {
                expect[k]
                    .as_str()
                    .unwrap_or_else(|| panic!("{}: no {k}", path.display()))
                    .to_owned()
            };
            let dir = path.parent().expect("parent");
            let body = std::fs::read(dir.join(field("body_file"))).expect("read body");
            Case {
                name: path
                    .strip_prefix(fixtures_dir())
                    .unwrap_or(&path)
                    .display()
                    .to_string(),
                format: format_of(&field("api")),
                provider: provider_of(&field("provider")),
                content_type: field("content_type"),
                body,
                expect,
            }
        })
        .collect()
}

fn cases() -> &'static [Case] {
    static CASES: OnceLock<Vec<Case>> = OnceLock::new();
    CASES.get_or_init(load_cases)
}

fn parser(case: &Case) -> BodyParser {
    BodyParser::for_response(
        case.format,
        builtin_quirks(case.provider),
        Some(&case.content_type),
        ParserLimits::default(),
    )
    .expect("every fixture format is inspected")
}

/// Feeds the body cut at `cuts` (sorted byte offsets).
fn parse_cut(case: &Case, cuts: &[usize]) -> ResponseRecord {
    let mut p = parser(case);
    let mut from = 0;
    for &cut in cuts {
        p.feed(&case.body[from..cut]);
        from = cut;
    }
    p.feed(&case.body[from..]);
    p.finish(true)
}

fn parse_bytewise(case: &Case) -> ResponseRecord {
    let mut p = parser(case);
    for b in case.body.chunks(1) {
        p.feed(b);
    }
    p.finish(true)
}

/// splitmix64: a few lines of deterministic randomness, so the cut points never change.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn cuts(&mut self, len: usize) -> Vec<usize> {
        let n = 1 + (self.next() % 8) as usize;
        let mut cuts: Vec<usize> = (0..n)
            .map(|_| (self.next() % (len as u64 + 1)) as usize)
            .collect();
        cuts.sort_unstable();
        cuts
    }
}

fn opt_u64(v: &Value) -> Option<u64> {
    v.as_u64()
}

/// Differences between a record and the expectation, one line each.
fn mismatches(case: &Case, r: &ResponseRecord) -> Vec<String> {
    let e = &case.expect;
    let mut out = Vec::new();
    let mut check = |field: &str, got: String, want: String| {
        if got != want {
            out.push(format!("{}: {field}: got {got}, want {want}", case.name));
        }
    };
    check(
        "model",
        format!("{:?}", r.model.as_deref()),
        format!("{:?}", e["model"].as_str()),
    );
    check(
        "response_id",
        format!("{:?}", r.response_id.as_deref()),
        format!("{:?}", e["response_id"].as_str()),
    );
    let want_reasons: Vec<&str> = e["finish_reasons"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    check(
        "finish_reasons",
        format!("{:?}", r.finish_reasons),
        format!("{want_reasons:?}"),
    );
    let u = &r.usage;
    for (field, got) in [
        ("input_tokens", u.input_tokens),
        ("output_tokens", u.output_tokens),
        ("cached_input_tokens", u.cached_input_tokens),
        ("cache_creation_input_tokens", u.cache_creation_input_tokens),
        ("reasoning_tokens", u.reasoning_tokens),
    ] {
        check(
            field,
            format!("{got:?}"),
            format!("{:?}", opt_u64(&e[field])),
        );
    }
    check(
        "stream_completed",
        r.stream_completed.to_string(),
        e["stream_completed"].as_bool().unwrap_or(false).to_string(),
    );
    // Presence and type only: messages are informative.
    let want_error = match &e["error"] {
        Value::Null => None,
        err => Some(err["type"].as_str().map(str::to_owned)),
    };
    check(
        "error",
        format!("{:?}", r.error.as_ref().map(|x| x.kind.clone())),
        format!("{want_error:?}"),
    );
    if let Some(want) = e.get("incomplete_reason") {
        check(
            "incomplete_reason",
            format!("{:?}", r.incomplete_reason.as_deref()),
            format!("{:?}", want.as_str()),
        );
    }
    out
}

#[test]
fn every_fixture_matches_its_expectation_however_it_is_fed() {
    let cases = cases();
    assert!(
        cases.len() >= 25,
        "found only {} fixture cases under {}",
        cases.len(),
        fixtures_dir().display()
    );
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let whole = parse_cut(case, &[]);
        failures.extend(mismatches(case, &whole));

        let mut ways = vec![("one byte at a time".to_owned(), parse_bytewise(case))];
        let mut rng = Rng(0x5EED_0000 + i as u64);
        for n in 0..20 {
            let cuts = rng.cuts(case.body.len());
            ways.push((format!("random cuts #{n} {cuts:?}"), parse_cut(case, &cuts)));
        }
        if let Some(splits) = case.expect.get("feed_splits").and_then(Value::as_array) {
            let mut cuts: Vec<usize> = splits
                .iter()
                .filter_map(Value::as_u64)
                .map(|c| c as usize)
                .collect();
            cuts.sort_unstable();
            ways.push((format!("feed_splits {cuts:?}"), parse_cut(case, &cuts)));
        }
        for (how, record) in ways {
            if record != whole {
                failures.push(format!(
                    "{}: fed {how} gives a different record:\n  whole: {whole:?}\n  split: {record:?}",
                    case.name
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn fixtures_with_feed_splits_cut_where_the_readme_says() {
    // The cuts are chosen to be awkward (between CR and LF, inside a character or a prelude);
    // make sure the loader really sees them, so the case above exercises them.
    let with_splits = cases()
        .iter()
        .filter(|c| c.expect.get("feed_splits").is_some())
        .count();
    assert!(with_splits >= 1);
}

/// Every inspected wire format.
fn formats() -> Vec<WireFormat> {
    WireFormat::ALL
        .into_iter()
        .filter(|&f| f != WireFormat::Passthrough)
        .collect()
}

/// Output capture off, with a tiny budget, and with a large one.
const CAPTURE_SIZES: &[usize] = &[0, 7, 1 << 16];

/// Every framing, plus a missing and an unknown content type.
const CONTENT_TYPES: &[Option<&str>] = &[
    Some("text/event-stream; charset=utf-8"),
    Some("application/x-ndjson"),
    Some("application/vnd.amazon.eventstream"),
    Some("application/json"),
    Some("text/plain"),
    None,
];

const PROVIDERS: &[&str] = &[
    "openai",
    "azure",
    "xai",
    "groq",
    "vllm",
    "anthropic",
    "bedrock",
];

/// Feeds `body` in pieces of the given sizes (cycled) to one parser kind.
fn feed_pieces(
    format: WireFormat,
    provider: &str,
    content_type: Option<&str>,
    limits: ParserLimits,
    body: &[u8],
    sizes: &[usize],
    clean: bool,
) -> ResponseRecord {
    let mut p = BodyParser::for_response(format, builtin_quirks(provider), content_type, limits)
        .expect("parser");
    let mut rest = body;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes
            .get(i % sizes.len().max(1))
            .copied()
            .unwrap_or(rest.len());
        let (head, tail) = rest.split_at(n.clamp(1, rest.len()));
        p.feed(head);
        let _ = p.output_started();
        rest = tail;
        i += 1;
    }
    p.finish(clean)
}

/// Lines an SSE stream from any provider might contain, and some it should not.
fn sse_line() -> impl Strategy<Value = String> {
    let payloads = prop_oneof![
        Just("[DONE]".to_owned()),
        Just(r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}],"usage":null}"#.to_owned()),
        Just(r#"{"id":"c","model":"m","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#.to_owned()),
        Just(r#"{"choices":null,"usage":{"prompt_tokens":18446744073709551615}}"#.to_owned()),
        Just(r#"{"type":"message_start","message":{"id":"m","model":"c","usage":{"input_tokens":3}}}"#.to_owned()),
        Just(r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":9}}"#.to_owned()),
        Just(r#"{"type":"message_stop"}"#.to_owned()),
        Just(r#"{"type":"response.completed","response":{"id":"r","status":"completed","usage":{"input_tokens":1}}}"#.to_owned()),
        Just(r#"{"candidates":[{"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":1}}"#.to_owned()),
        Just(r#"{"error":{"type":"server_error","code":500}}"#.to_owned()),
        Just(r#"{"error":"boom"}"#.to_owned()),
        Just("{\"usage\": {\"prompt_tokens\": -1.5e300}".to_owned()),
        "[ -~]{0,40}",
        "\\PC{0,12}",
    ];
    let prefixes = prop_oneof![
        Just("data: "),
        Just("data:"),
        Just("event: message_start"),
        Just(":"),
        Just(": keep-alive"),
        Just("id: 1"),
        Just("retry: 10"),
        Just(""),
        Just("\u{feff}data: "),
    ];
    let ends = prop_oneof![Just("\n"), Just("\r\n"), Just("\r")];
    (prefixes, payloads, ends).prop_map(|(p, d, e)| {
        if p.starts_with("data") || p.ends_with("data: ") {
            format!("{p}{d}{e}")
        } else {
            format!("{p}{e}")
        }
    })
}

/// Payloads of valid event-stream frames.
fn frame() -> impl Strategy<Value = Vec<u8>> {
    let names = prop_oneof![
        Just("messageStart"),
        Just("contentBlockDelta"),
        Just("messageStop"),
        Just("metadata"),
        Just("chunk"),
        Just("throttlingException"),
        Just(""),
    ];
    let types = prop_oneof![Just("event"), Just("exception"), Just("error"), Just("")];
    let payloads = prop_oneof![
        Just(r#"{"stopReason":"end_turn"}"#.to_owned()),
        Just(r#"{"usage":{"inputTokens":1,"outputTokens":2,"cacheReadInputTokens":3}}"#.to_owned()),
        Just(r#"{"bytes":"eyJ0eXBlIjoibWVzc2FnZV9zdG9wIn0="}"#.to_owned()),
        Just(r#"{"bytes":"%%%"}"#.to_owned()),
        Just(r#"{"message":"x"}"#.to_owned()),
        "\\PC{0,40}",
    ];
    (names, types, payloads).prop_map(|(n, t, p)| {
        encode_frame(
            &[
                (":event-type", n),
                (":message-type", t),
                (":exception-type", n),
            ],
            p.as_bytes(),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_split_of_any_fixture_gives_the_same_record_as_feeding_it_whole(
        pick in any::<prop::sample::Index>(),
        raw_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..16),
    ) {
        let case = pick.get(cases());
        let mut cuts: Vec<usize> = raw_cuts.iter().map(|c| c.index(case.body.len() + 1)).collect();
        cuts.sort_unstable();
        prop_assert_eq!(parse_cut(case, &cuts), parse_cut(case, &[]), "{} cut at {:?}", case.name, cuts);
        let captured = |cuts: &[usize]| {
            let limits = ParserLimits { capture_output_bytes: 1 << 16, ..ParserLimits::default() };
            let mut p = BodyParser::for_response(case.format, builtin_quirks(case.provider), Some(&case.content_type), limits)
                .expect("parser");
            let mut from = 0;
            for &cut in cuts {
                p.feed(&case.body[from..cut]);
                from = cut;
            }
            p.feed(&case.body[from..]);
            p.finish(true)
        };
        prop_assert_eq!(captured(&cuts), captured(&[]), "{} cut at {:?} with capture", case.name, cuts);
    }

    #[test]
    fn arbitrary_bytes_never_panic_any_parser_kind(
        format in prop::sample::select(formats()),
        content_type in prop::sample::select(CONTENT_TYPES),
        provider in prop::sample::select(PROVIDERS),
        body in prop::collection::vec(any::<u8>(), 0..2048),
        sizes in prop::collection::vec(1usize..97, 1..8),
        clean in any::<bool>(),
        small_limit in any::<bool>(),
        capture in prop::sample::select(CAPTURE_SIZES),
    ) {
        let limits = ParserLimits {
            max_event_bytes: if small_limit { 64 } else { 1 << 20 },
            capture_output_bytes: capture,
        };
        feed_pieces(format, provider, content_type, limits, &body, &sizes, clean);
    }

    #[test]
    fn mutated_fixtures_never_panic_any_parser_kind(
        pick in any::<prop::sample::Index>(),
        format in prop::sample::select(formats()),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in any::<prop::sample::Index>(),
        sizes in prop::collection::vec(1usize..300, 1..8),
        clean in any::<bool>(),
        capture in prop::sample::select(CAPTURE_SIZES),
    ) {
        let case = pick.get(cases());
        let mut body = case.body.clone();
        for (at, byte) in &flips {
            let i = at.index(body.len().max(1));
            if let Some(b) = body.get_mut(i) {
                *b = *byte;
            }
        }
        body.truncate(cut.index(body.len() + 1));
        // The fixture's own framing with every extractor, and its own extractor with it.
        feed_pieces(format, case.provider, Some(&case.content_type), ParserLimits::default(), &body, &sizes, clean);
        let small = ParserLimits { max_event_bytes: 200, capture_output_bytes: capture };
        feed_pieces(case.format, case.provider, Some(&case.content_type), small, &body, &sizes, clean);
    }

    #[test]
    fn random_valid_looking_sse_never_panics_and_splits_agree(
        lines in prop::collection::vec(sse_line(), 0..40),
        format in prop::sample::select(formats()),
        provider in prop::sample::select(PROVIDERS),
        sizes in prop::collection::vec(1usize..50, 1..8),
        capture in prop::sample::select(CAPTURE_SIZES),
    ) {
        let body = lines.concat();
        let sse = Some("text/event-stream");
        let limits = ParserLimits { capture_output_bytes: capture, ..ParserLimits::default() };
        let whole = feed_pieces(format, provider, sse, limits, body.as_bytes(), &[body.len().max(1)], true);
        let split = feed_pieces(format, provider, sse, limits, body.as_bytes(), &sizes, true);
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn random_event_stream_frames_never_panic_and_splits_agree(
        frames in prop::collection::vec(frame(), 0..12),
        format in prop::sample::select(formats()),
        sizes in prop::collection::vec(1usize..40, 1..8),
        small_limit in any::<bool>(),
        capture in prop::sample::select(CAPTURE_SIZES),
    ) {
        let body = frames.concat();
        let es = Some("application/vnd.amazon.eventstream");
        let limits = ParserLimits {
            max_event_bytes: if small_limit { 64 } else { 1 << 20 },
            capture_output_bytes: capture,
        };
        let whole = feed_pieces(format, "bedrock", es, limits, &body, &[body.len().max(1)], true);
        let split = feed_pieces(format, "bedrock", es, limits, &body, &sizes, true);
        prop_assert_eq!(whole, split);
    }
}
