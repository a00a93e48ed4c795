//! The trace store against a model: random spans in, random queries paged through with their
//! cursors, and the answer must equal a brute-force filter over the same spans. Plus retention
//! by bytes and by age (whole traces, counted), restart, and a damaged store moved aside.

use std::{path::Path, sync::Arc, time::Duration};

use proptest::prelude::*;
use sidetrace::{
    metrics::Metrics,
    store::traces::{
        Ingest, Origin, SessionQuery, StoreLimits, StoreSink, TraceQuery, TraceStore,
        now_unix_nanos,
    },
    trace::{
        capture::CapturedContent,
        metadata::CaptureLevel,
        span::{AttrValue, SpanRecord, SpanStatus, Telemetry, content_attributes, is_content},
    },
};

const HOUR: u64 = 3_600_000_000_000;

fn origin() -> Arc<Origin> {
    Arc::new(Origin {
        resource: vec![("service.name".into(), "test".into())],
        scope_name: "sidetrace".into(),
        scope_version: "0".into(),
    })
}

/// A span as the model sees it.
#[derive(Debug, Clone)]
struct Spec {
    trace: u8,
    span: u8,
    parent: Option<u8>,
    start: u64,
    duration: u64,
    feature: Option<&'static str>,
    user: Option<&'static str>,
    session: Option<&'static str>,
    model: &'static str,
    provider: &'static str,
    error: bool,
    input_tokens: u64,
    cost_pico: Option<u128>,
    name: &'static str,
}

fn trace_id(n: u8) -> [u8; 16] {
    let mut id = [0x11u8; 16];
    id[15] = n;
    id
}

fn span_of(s: &Spec, base: u64) -> SpanRecord {
    let mut attributes: Vec<(sidetrace::trace::span::AttrKey, AttrValue)> = vec![
        (
            "gen_ai.request.model".into(),
            AttrValue::Str(s.model.into()),
        ),
        (
            "sidetrace.provider".into(),
            AttrValue::Str(s.provider.into()),
        ),
        (
            "gen_ai.usage.input_tokens".into(),
            AttrValue::Int(s.input_tokens as i64),
        ),
    ];
    for (k, v) in [
        ("feature.id", s.feature),
        ("user.id", s.user),
        ("session.id", s.session),
    ] {
        if let Some(v) = v {
            attributes.push((k.into(), AttrValue::Str(v.into())));
        }
    }
    SpanRecord {
        trace_id: trace_id(s.trace),
        span_id: [s.trace, s.span, 0, 0, 0, 0, 0, 1],
        parent_span_id: s.parent.map(|p| [s.trace, p, 0, 0, 0, 0, 0, 1]),
        parent_is_remote: false,
        flags: 1,
        trace_state: None,
        name: s.name.into(),
        kind: "CLIENT".into(),
        start_unix_nanos: base + s.start,
        end_unix_nanos: base + s.start + s.duration,
        status: if s.error {
            SpanStatus::Error("failed".into())
        } else {
            SpanStatus::Unset
        },
        attributes,
        events: Vec::new(),
        links: Vec::new(),
        origin: None,
    }
}

fn open(dir: &Path, max_bytes: u64, max_age: Duration) -> (Arc<TraceStore>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let limits = StoreLimits {
        max_bytes,
        max_age,
        search_scan_traces: 5_000,
    };
    let opened = TraceStore::open(dir, limits, metrics.clone());
    (opened.store.expect("the store opens"), metrics)
}

fn put(store: &TraceStore, span: SpanRecord, cost: Option<u128>) {
    store.submit(Ingest {
        span,
        origin: origin(),
        cost_pico_usd: cost,
    });
}

/// The model's row of a trace.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    id: [u8; 16],
    start: u64,
    end: u64,
    spans: u64,
    errors: u64,
    input_tokens: u64,
    cost: Option<u128>,
    feature: Option<String>,
    user: Option<String>,
    session: Option<String>,
    models: Vec<String>,
    providers: Vec<String>,
    names: Vec<String>,
}

fn model_rows(specs: &[Spec], base: u64) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    for s in specs {
        let id = trace_id(s.trace);
        let span = span_of(s, base);
        // A span sent twice counts once.
        if specs
            .iter()
            .take_while(|o| !std::ptr::eq(*o, s))
            .any(|o| o.trace == s.trace && o.span == s.span)
        {
            continue;
        }
        let at = match rows.iter().position(|r| r.id == id) {
            Some(at) => at,
            None => {
                rows.push(Row {
                    id,
                    start: span.start_unix_nanos,
                    end: span.end_unix_nanos,
                    spans: 0,
                    errors: 0,
                    input_tokens: 0,
                    cost: None,
                    feature: None,
                    user: None,
                    session: None,
                    models: Vec::new(),
                    providers: Vec::new(),
                    names: Vec::new(),
                });
                rows.len() - 1
            }
        };
        let r = &mut rows[at];
        r.start = r.start.min(span.start_unix_nanos);
        r.end = r.end.max(span.end_unix_nanos);
        r.spans += 1;
        r.errors += u64::from(s.error);
        r.input_tokens += s.input_tokens;
        if let Some(c) = s.cost_pico {
            r.cost = Some(r.cost.unwrap_or(0) + c);
        }
        r.feature = r.feature.clone().or(s.feature.map(String::from));
        r.user = r.user.clone().or(s.user.map(String::from));
        r.session = r.session.clone().or(s.session.map(String::from));
        if !r.models.contains(&s.model.to_string()) {
            r.models.push(s.model.into());
        }
        if !r.providers.contains(&s.provider.to_string()) {
            r.providers.push(s.provider.into());
        }
        r.names.push(s.name.into());
    }
    rows
}

fn model_query(rows: &[Row], q: &TraceQuery) -> Vec<[u8; 16]> {
    let mut hits: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            q.from.is_none_or(|f| r.start >= f)
                && q.to.is_none_or(|t| r.start < t)
                && q.feature
                    .as_ref()
                    .is_none_or(|f| r.feature.as_ref() == Some(f))
                && q.user.as_ref().is_none_or(|u| r.user.as_ref() == Some(u))
                && q.session
                    .as_ref()
                    .is_none_or(|s| r.session.as_ref() == Some(s))
                && q.model.as_ref().is_none_or(|m| r.models.contains(m))
                && q.provider.as_ref().is_none_or(|p| r.providers.contains(p))
                && (!q.errors_only || r.errors > 0)
                && q.min_cost_pico_usd
                    .is_none_or(|c| r.cost.is_some_and(|have| have >= c))
                && q.min_duration_nanos.is_none_or(|d| r.end - r.start >= d)
                && q.text.as_ref().is_none_or(|t| {
                    r.names
                        .iter()
                        .any(|n| n.to_lowercase().contains(&t.to_lowercase()))
                })
        })
        .collect();
    hits.sort_by_key(|r| std::cmp::Reverse((r.start, r.id)));
    hits.into_iter().map(|r| r.id).collect()
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        (0u8..6, 0u8..4, prop::option::of(0u8..4), 0u64..50, 0u64..20),
        (
            prop::option::of(prop::sample::select(vec!["support", "search"])),
            prop::option::of(prop::sample::select(vec!["u1", "u2"])),
            prop::option::of(prop::sample::select(vec!["s1", "s2"])),
        ),
        (
            prop::sample::select(vec!["gpt-4o", "claude"]),
            prop::sample::select(vec!["openai", "anthropic"]),
            prop::bool::weighted(0.2),
            0u64..100,
            prop::option::of(0u128..1_000_000),
            prop::sample::select(vec!["chat gpt-4o", "agent.run", "Retrieve docs"]),
        ),
    )
        .prop_map(
            |(
                (trace, span, parent, start, duration),
                (feature, user, session),
                (model, provider, error, input_tokens, cost_pico, name),
            )| Spec {
                trace,
                span,
                parent: parent.filter(|p| *p != span),
                start: start * 1_000_000,
                duration: duration * 1_000_000,
                feature,
                user,
                session,
                model,
                provider,
                error,
                input_tokens,
                cost_pico,
                name,
            },
        )
}

fn query(base: u64) -> impl Strategy<Value = TraceQuery> {
    (
        (
            prop::option::of(0u64..50),
            prop::option::of(0u64..70),
            prop::option::of(prop::sample::select(vec!["support", "search", "none"])),
            prop::option::of(prop::sample::select(vec!["u1", "u2"])),
            prop::option::of(prop::sample::select(vec!["s1", "s2"])),
        ),
        (
            prop::option::of(prop::sample::select(vec!["gpt-4o", "claude"])),
            prop::option::of(prop::sample::select(vec!["openai", "anthropic"])),
            prop::bool::weighted(0.3),
            prop::option::of(0u128..1_500_000),
            prop::option::of(0u64..30),
            prop::option::of(prop::sample::select(vec!["retrieve", "CHAT", "nothing"])),
            1usize..5,
            // A text search's pages stop reading after this many traces.
            prop::option::of(1usize..4),
        ),
    )
        .prop_map(
            move |(
                (from, to, feature, user, session),
                (model, provider, errors_only, min_cost, min_duration, text, limit, scan),
            )| TraceQuery {
                from: from.map(|f| base + f * 1_000_000),
                to: to.map(|t| base + t * 1_000_000),
                feature: feature.map(String::from),
                user: user.map(String::from),
                session: session.map(String::from),
                model: model.map(String::from),
                provider: provider.map(String::from),
                errors_only,
                min_cost_pico_usd: min_cost,
                min_duration_nanos: min_duration.map(|d| d * 1_000_000),
                text: text.map(String::from),
                limit,
                cursor: None,
                text_scan_limit: scan,
            },
        )
}

/// Pages through a query with its cursor; every id, in order.
fn all_pages(store: &TraceStore, q: &TraceQuery) -> Vec<[u8; 16]> {
    let mut q = q.clone();
    let mut out = Vec::new();
    for _ in 0..1000 {
        let page = store.traces(&q).unwrap();
        assert!(page.rows.len() <= q.limit);
        out.extend(page.rows.iter().map(|r| r.trace_id));
        let Some(next) = page.next() else {
            return out;
        };
        q.cursor = Some(next);
    }
    panic!("paging did not end");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn queries_and_pages_equal_a_brute_force_filter(
        specs in prop::collection::vec(spec(), 1..40),
        queries in prop::collection::vec(query(1_000 * HOUR), 1..8),
    ) {
        let base = 1_000 * HOUR;
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path(), u64::MAX, Duration::from_secs(u64::MAX / 4_000_000_000));
        // The first half is written to sled; the second half arrives after, so its traces are
        // open (in memory), some of them opened again from their written rows. The answers
        // must be the same then, and once everything is written.
        let (first, second) = specs.split_at(specs.len() / 2);
        for s in first {
            put(&store, span_of(s, base), s.cost_pico);
        }
        assert!(store.flush(Duration::from_secs(10)));
        for s in second {
            put(&store, span_of(s, base), s.cost_pico);
        }
        assert!(store.caught_up(Duration::from_secs(10)));
        check_against_model(&store, &specs, &queries, base)?;
        assert!(store.flush(Duration::from_secs(10)));
        check_against_model(&store, &specs, &queries, base)?;
    }
}

fn check_against_model(
    store: &TraceStore,
    specs: &[Spec],
    queries: &[TraceQuery],
    base: u64,
) -> Result<(), TestCaseError> {
    {
        let rows = model_rows(specs, base);
        for r in &rows {
            let got = store
                .summary(&r.id)
                .unwrap()
                .expect("every trace has a row");
            prop_assert_eq!(got.totals.spans, r.spans);
            prop_assert_eq!(got.totals.errors, r.errors);
            prop_assert_eq!(got.totals.input_tokens, r.input_tokens);
            prop_assert_eq!(got.totals.cost(), r.cost);
            prop_assert_eq!(got.start_unix_nanos, r.start);
            prop_assert_eq!(got.end_unix_nanos, r.end);
            prop_assert_eq!(&got.feature, &r.feature);
            let tree = store.trace(&r.id).unwrap().unwrap();
            prop_assert_eq!(tree.nodes.len() as u64, r.spans);
            // The roots' rollups add up to the trace.
            let rolled: u64 = tree
                .nodes
                .iter()
                .filter(|n| n.depth == 0)
                .map(|n| n.rollup.input_tokens)
                .sum();
            prop_assert_eq!(rolled, r.input_tokens);
        }
        for q in queries {
            prop_assert_eq!(all_pages(store, q), model_query(&rows, q), "query {:?}", q);
        }
    }
    Ok(())
}

fn metric(m: &Metrics, prefix: &str) -> f64 {
    m.encode()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn simple(trace: u8, span: u8, start: u64) -> SpanRecord {
    span_of(
        &Spec {
            trace,
            span,
            parent: None,
            start: 0,
            duration: 1_000_000,
            feature: Some("support"),
            user: None,
            session: Some("s1"),
            model: "gpt-4o",
            provider: "openai",
            error: false,
            input_tokens: 10,
            cost_pico: None,
            name: "chat gpt-4o",
        },
        start,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// A call's span goes to the store encoded on the request's worker (`StoreSink::call`,
    /// with the store's content in place of the export's). What is stored and read back, span
    /// by span and row by row, is what storing the equivalent span through the writer gives.
    #[test]
    fn a_calls_span_encoded_by_the_sink_is_stored_as_the_writer_would_store_it(
        specs in prop::collection::vec(spec(), 1..12),
        content in prop::option::of(("[{\"role\":\"user\"}]", prop::bool::ANY)),
    ) {
        let base = now_unix_nanos() - HOUR;
        let telemetry = Telemetry {
            resource: origin().resource.clone(),
            scope_name: origin().scope_name.clone(),
            scope_version: origin().scope_version.clone(),
            schema_url: String::new(),
        };
        let kept = content.map(|(messages, truncated)| CapturedContent {
            level: Some(CaptureLevel::Redacted),
            input_messages: Some(messages.to_string()),
            output_messages: Some("[]".into()),
            truncated,
            ..CapturedContent::default()
        });
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (encoded, _) = open(dir_a.path(), 1 << 30, Duration::from_secs(86_400));
        let (written, _) = open(dir_b.path(), 1 << 30, Duration::from_secs(86_400));
        let sink = StoreSink::new(encoded.clone(), &telemetry);
        for s in &specs {
            let mut span = span_of(s, base);
            // What the export carries of the content, which the store replaces.
            span.attributes.push(("gen_ai.input.messages".into(), AttrValue::Str("exported".into())));
            sink.call(&span, kept.clone(), s.cost_pico);
            let mut stored = span.clone();
            stored.attributes.retain(|(k, _)| !is_content(k));
            stored.attributes.extend(content_attributes(kept.clone().unwrap_or_default()));
            put(&written, stored, s.cost_pico);
        }
        prop_assert!(encoded.flush(Duration::from_secs(10)) && written.flush(Duration::from_secs(10)));
        for t in 0u8..6 {
            let (a, b) = (encoded.trace(&trace_id(t)).unwrap(), written.trace(&trace_id(t)).unwrap());
            prop_assert_eq!(a.as_ref().map(|a| (&a.summary, &a.nodes)), b.as_ref().map(|b| (&b.summary, &b.nodes)));
        }
        encoded.close();
        written.close();
    }
}

/// `sidetrace_store_queued_spans` counts what waits for the writer: never below zero while
/// spans pour in, zero once the writer has caught up, and every span submitted is written or
/// counted as dropped.
#[test]
fn the_open_traces_gauge_falls_when_they_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let (store, metrics) = open(dir.path(), u64::MAX, Duration::from_secs(86_400));
    let now = now_unix_nanos();
    for t in 1..=3 {
        put(&store, simple(t, 1, now), None);
    }
    assert!(store.caught_up(Duration::from_secs(10)));
    assert_eq!(metric(&metrics, "sidetrace_store_open_traces "), 3.0);
    // A flush writes every open trace; nothing else comes that would refresh the gauge.
    assert!(store.flush(Duration::from_secs(10)));
    assert_eq!(metric(&metrics, "sidetrace_store_open_traces "), 0.0);
    assert_eq!(metric(&metrics, "sidetrace_store_traces "), 3.0);
    store.close();
}

#[test]
fn the_queue_gauge_counts_what_waits_for_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let (store, metrics) = open(dir.path(), u64::MAX, Duration::from_secs(86_400));
    let now = now_unix_nanos();
    let n = 20_000u32;
    let mut lowest = 0.0f64;
    for i in 0..n {
        put(
            &store,
            simple((i % 200) as u8, (i / 200) as u8, now + u64::from(i)),
            None,
        );
        if i % 1000 == 0 {
            lowest = lowest.min(metric(&metrics, "sidetrace_store_queued_spans "));
        }
    }
    assert!(store.caught_up(Duration::from_secs(30)));
    assert!(lowest >= 0.0, "the gauge went below zero: {lowest}");
    assert_eq!(metric(&metrics, "sidetrace_store_queued_spans "), 0.0);
    let written = metric(&metrics, "sidetrace_store_spans_written_total");
    let dropped = metric(&metrics, "sidetrace_store_spans_dropped_total");
    assert_eq!(written + dropped, f64::from(n));
    store.close();
}

#[test]
fn past_max_bytes_the_oldest_traces_are_evicted_whole_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (store, metrics) = open(dir.path(), 40_000, Duration::from_secs(86_400));
    let now = now_unix_nanos();
    for t in 0..100u8 {
        for s in 0..3 {
            put(&store, simple(t, s, now + u64::from(t) * 1_000_000), None);
        }
    }
    assert!(store.flush(Duration::from_secs(10)));
    let evicted = metric(
        &metrics,
        "sidetrace_store_traces_evicted_total{reason=\"size\"}",
    );
    assert!(evicted > 0.0, "nothing evicted");
    assert!(metric(&metrics, "sidetrace_store_bytes ") <= 40_000.0);
    let all = store
        .traces(&TraceQuery {
            limit: 1000,
            ..TraceQuery::default()
        })
        .unwrap()
        .rows;
    assert_eq!(all.len() as f64 + evicted, 100.0);
    // The newest are kept, the oldest gone, and no trace is kept in part.
    assert_eq!(all[0].trace_id, trace_id(99));
    assert!(store.trace(&trace_id(0)).unwrap().is_none());
    for row in &all {
        assert_eq!(row.totals.spans, 3);
        assert_eq!(store.trace(&row.trace_id).unwrap().unwrap().nodes.len(), 3);
    }
    // The session counts only what is left.
    let (session, traces) = store.session("s1", 1000).unwrap().unwrap();
    assert_eq!(session.traces, all.len() as u64);
    assert_eq!(traces.rows.len(), all.len());
}

/// Bytes in the span files under `dir/spans`, and how many files.
fn span_files(dir: &Path) -> (u64, usize) {
    files_in(&dir.join("spans"))
}

fn files_in(dir: &Path) -> (u64, usize) {
    let mut bytes = 0;
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        bytes += entry.unwrap().metadata().unwrap().len();
        files += 1;
    }
    (bytes, files)
}

#[test]
fn evicted_traces_give_their_disk_space_back_and_what_is_kept_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let max_bytes = 100_000;
    let now = now_unix_nanos();
    let mut written = 0u64;
    {
        let (store, metrics) = open(dir.path(), max_bytes, Duration::from_secs(86_400));
        for round in 0..40u64 {
            for t in 0..20u64 {
                let n = round * 20 + t;
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&(n + 1).to_be_bytes());
                for s in 0..3 {
                    let mut span = simple(1, s, now + n * 1_000_000);
                    span.trace_id = id;
                    put(&store, span, None);
                    written += 1;
                }
            }
            assert!(store.flush(Duration::from_secs(10)));
        }
        assert!(metric(&metrics, "sidetrace_store_bytes ") <= max_bytes as f64);
        let (bytes, files) = span_files(dir.path());
        // What is kept, plus the segment being written and one being emptied (64 KiB each
        // at this size), not everything ever written.
        assert!(
            bytes < max_bytes + 3 * (64 << 10),
            "{bytes} bytes in {files} span files for {written} spans"
        );
        // The rows' files too: the segments of evicted traces' rows are deleted.
        let (bytes, files) = files_in(&dir.path().join("rows"));
        assert!(bytes < 3 * (64 << 10), "{bytes} bytes in {files} row files");
        store.close();
    }
    let (store, _) = open(dir.path(), max_bytes, Duration::from_secs(86_400));
    let rows = store
        .traces(&TraceQuery {
            limit: 1000,
            ..TraceQuery::default()
        })
        .unwrap()
        .rows;
    assert!(!rows.is_empty());
    for row in &rows {
        let tree = store.trace(&row.trace_id).unwrap().unwrap();
        assert_eq!(tree.nodes.len(), 3, "every kept span is read back");
    }
}

#[test]
fn a_lost_span_file_loses_its_spans_not_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), u64::MAX, Duration::from_secs(86_400));
    put(&store, simple(3, 0, now_unix_nanos()), None);
    assert!(store.flush(Duration::from_secs(10)));
    for entry in std::fs::read_dir(dir.path().join("spans")).unwrap() {
        std::fs::write(entry.unwrap().path(), b"").unwrap();
    }
    let tree = store.trace(&trace_id(3)).unwrap().expect("the row is kept");
    assert!(tree.nodes.is_empty(), "the span cannot be read: left out");
    assert_eq!(tree.unreadable, 1, "and said to be");
    put(&store, simple(4, 0, now_unix_nanos()), None);
    assert!(store.flush(Duration::from_secs(10)));
    assert_eq!(store.trace(&trace_id(4)).unwrap().unwrap().nodes.len(), 1);
}

/// Writes `GARBAGE` over the second span's content (`message 1 ...`) in the span file, `at`
/// bytes into it.
fn garble_second_message(dir: &Path, at: usize) {
    let file = std::fs::read_dir(dir.join("spans"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::metadata(p).unwrap().len() > 0)
        .unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let second = bytes
        .windows(10)
        .position(|w| w == b"message 1 ")
        .expect("the second span's content");
    bytes[second + at..second + at + 7].copy_from_slice(b"GARBAGE");
    std::fs::write(&file, &bytes).unwrap();
}

/// Garbage written over a span in its file: the span is not served with the garbage as its
/// content, but left out, said to be and counted; the trace's other spans are read.
#[test]
fn a_damaged_span_is_left_out_and_counted_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let (store, metrics) = open(dir.path(), u64::MAX, Duration::from_secs(86_400));
    let now = now_unix_nanos();
    for s in 0..3 {
        let mut span = simple(5, s, now + u64::from(s));
        span.attributes.push((
            "gen_ai.input.messages".into(),
            AttrValue::Str(format!("message {s} ").repeat(40)),
        ));
        put(&store, span, None);
        assert!(store.flush(Duration::from_secs(10)));
    }
    garble_second_message(dir.path(), 40);
    let tree = store.trace(&trace_id(5)).unwrap().unwrap();
    assert_eq!(tree.nodes.len(), 2, "the other spans are read");
    assert_eq!(tree.unreadable, 1);
    for node in &tree.nodes {
        let content = format!("{:?}", node.stored.span.attributes);
        assert!(!content.contains("GARBAGE"), "{content}");
    }
    assert_eq!(
        metric(&metrics, "sidetrace_store_spans_unreadable_total"),
        1.0
    );
}

#[test]
fn traces_past_max_age_are_evicted_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (store, metrics) = open(dir.path(), u64::MAX, Duration::from_secs(3600));
    let now = now_unix_nanos();
    put(&store, simple(1, 0, now - 2 * HOUR), None);
    put(&store, simple(2, 0, now), None);
    assert!(store.flush(Duration::from_secs(10)));
    assert_eq!(
        metric(
            &metrics,
            "sidetrace_store_traces_evicted_total{reason=\"age\"}"
        ),
        1.0
    );
    assert!(store.trace(&trace_id(1)).unwrap().is_none());
    assert!(store.trace(&trace_id(2)).unwrap().is_some());
}

/// Killed with traces open: they come back from the span files at the next open, and the traces
/// the size limit evicted before the kill do not (their spans lie among the open ones' in the
/// span files, and came back, partial and over the limit).
#[test]
fn after_a_kill_open_traces_come_back_and_evicted_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_unix_nanos();
    let padded = |trace: u8, start: u64| {
        let mut span = simple(trace, 0, start);
        span.attributes
            .push(("padding".into(), AttrValue::Str("x".repeat(1000))));
        span
    };
    let max_bytes = 20_000;
    let all = TraceQuery {
        limit: 100,
        ..TraceQuery::default()
    };
    let kept = {
        let (store, metrics) = open(dir.path(), max_bytes, Duration::from_secs(86_400));
        // The newest trace, open across the kill; its span is the first in the span files.
        put(&store, padded(1, now), None);
        // Older ones: the size limit evicts the oldest first, while they are still open.
        for t in 2..=60u8 {
            put(&store, padded(t, now - HOUR + u64::from(t)), None);
        }
        assert!(store.caught_up(Duration::from_secs(10)));
        let evicted = metric(
            &metrics,
            "sidetrace_store_traces_evicted_total{reason=\"size\"}",
        );
        assert!(evicted > 0.0, "the limit evicted traces");
        let kept = all_pages(&store, &all);
        assert!(kept.contains(&trace_id(1)));
        store.stop_as_if_killed();
        kept
    };
    let (store, metrics) = open(dir.path(), max_bytes, Duration::from_secs(86_400));
    let back = all_pages(&store, &all);
    assert!(back.contains(&trace_id(1)), "the open trace is back");
    for id in &back {
        assert!(kept.contains(id), "an evicted trace came back: {id:?}");
    }
    assert_eq!(back.len(), kept.len());
    assert!(metric(&metrics, "sidetrace_store_bytes") <= max_bytes as f64);
}

/// The app's OpenTelemetry GenAI instrumentation records an LLM call with its usage, and the
/// request goes through the gateway under it (via the HTTP client's span that sent the
/// `traceparent`): the call is counted once, by the gateway's span, whatever order the spans
/// arrive in and however long apart (a trace written in between is counted again when it is
/// written once more). The tree's rollups, the trace's row and its session agree.
#[test]
fn a_call_the_app_and_the_gateway_both_record_is_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), u64::MAX, Duration::from_secs(86_400));
    let telemetry = Telemetry {
        resource: origin().resource.clone(),
        scope_name: origin().scope_name.clone(),
        scope_version: origin().scope_version.clone(),
        schema_url: String::new(),
    };
    let sink = StoreSink::new(store.clone(), &telemetry);
    let now = now_unix_nanos();
    let app = |scope: &str| {
        Arc::new(Origin {
            resource: vec![("service.name".into(), "agent".into())],
            scope_name: scope.into(),
            scope_version: "1".into(),
        })
    };
    let span = |trace: u8, id: u8, parent: Option<u8>, name: &str, usage: bool| {
        let mut s = simple(trace, id, now);
        s.parent_span_id = parent.map(|p| [trace, p, 0, 0, 0, 0, 0, 1]);
        s.name = name.into();
        s.attributes.retain(|(k, _)| {
            k.as_ref() != "gen_ai.usage.input_tokens" && k.as_ref() != "sidetrace.provider"
        });
        if usage {
            s.attributes
                .push(("gen_ai.usage.input_tokens".into(), AttrValue::Int(100)));
            s.attributes
                .push(("gen_ai.usage.output_tokens".into(), AttrValue::Int(20)));
        }
        s
    };
    let send = |store: &TraceStore, trace: u8, which: &str| {
        let (span, origin, cost) = match which {
            "root" => (span(trace, 1, None, "agent.run", false), app("agent"), None),
            "llm" => (
                span(trace, 2, Some(1), "chat gpt-4o", true),
                app("opentelemetry.instrumentation.openai_v2"),
                None,
            ),
            "http" => (
                span(trace, 3, Some(2), "POST", false),
                app("opentelemetry.instrumentation.httpx"),
                None,
            ),
            _ => {
                // As the gateway's recorder hands a call's span to the store.
                let mut g = span(trace, 4, Some(3), "chat gpt-4o", true);
                g.attributes.push((
                    "sidetrace.outcome".into(),
                    AttrValue::Str("completed".into()),
                ));
                sink.call(&g, None, Some(5_000_000u128));
                return;
            }
        };
        store.submit(Ingest {
            span,
            origin,
            cost_pico_usd: cost,
        });
    };
    // All at once; the app's spans after the gateway's, its row written between (a flush)
    // or not; the gateway's after the app's, likewise.
    let orders: [(&[&[&str]], bool); 7] = [
        (&[&["root", "llm", "http", "gateway"]], true),
        (&[&["gateway"], &["http", "llm", "root"]], true),
        (&[&["root", "llm", "http"], &["gateway"]], true),
        (&[&["gateway"], &["http", "llm", "root"]], false),
        (&[&["root", "llm", "http"], &["gateway"]], false),
        // The HTTP client's span, which links the two, last.
        (&[&["root", "llm", "gateway"], &["http"]], false),
        (&[&["root", "llm", "gateway"], &["http"]], true),
    ];
    for (n, (batches, written_between)) in orders.iter().enumerate() {
        let trace = 40 + n as u8;
        for batch in *batches {
            for which in *batch {
                send(&store, trace, which);
            }
            if *written_between {
                assert!(store.flush(Duration::from_secs(10)));
            } else {
                assert!(store.caught_up(Duration::from_secs(10)));
            }
        }
        let tree = store.trace(&trace_id(trace)).unwrap().unwrap();
        assert_eq!(tree.nodes.len(), 4);
        let root = &tree.nodes[0];
        assert_eq!(root.stored.span.name, "agent.run");
        assert_eq!(root.rollup.input_tokens, 100, "order {n}: the tree");
        assert_eq!(root.rollup.output_tokens, 20, "order {n}: the tree");
        assert_eq!(root.rollup.cost_pico_usd, 5_000_000);
        let llm = tree
            .nodes
            .iter()
            .find(|x| x.stored.span.name == "chat gpt-4o" && x.stored.scope_name != "sidetrace")
            .unwrap();
        assert_eq!(
            llm.own.input_tokens, 0,
            "the app's span of the call counts none"
        );
        assert_eq!(tree.summary.totals.input_tokens, 100, "order {n}: the row");
        assert_eq!(tree.summary.totals.output_tokens, 20, "order {n}: the row");
        assert_eq!(tree.summary.totals.spans, 4);
    }
    // Their session ("s1", from the spans): seven calls, each counted once.
    let (session, _) = store.session("s1", 10).unwrap().unwrap();
    assert_eq!(session.totals.input_tokens, 700);

    // Killed with such a trace open: put back from the span files, it is counted once too.
    for which in ["root", "llm", "http", "gateway"] {
        send(&store, 50, which);
    }
    assert!(store.caught_up(Duration::from_secs(10)));
    store.stop_as_if_killed();
    drop(sink);
    drop(store);
    let (store, _) = open(dir.path(), u64::MAX, Duration::from_secs(86_400));
    let tree = store.trace(&trace_id(50)).unwrap().unwrap();
    assert_eq!(tree.nodes.len(), 4);
    assert_eq!(tree.summary.totals.input_tokens, 100, "after the replay");
    let (session, _) = store.session("s1", 10).unwrap().unwrap();
    assert_eq!(session.totals.input_tokens, 800);
}

/// Killed with a trace open, and one of its spans damaged in the span file since: the others
/// are put back, the ones after the damaged one too.
#[test]
fn after_a_kill_a_damaged_span_loses_itself_not_the_spans_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_unix_nanos();
    {
        let (store, _) = open(dir.path(), u64::MAX, Duration::from_secs(86_400));
        for s in 0..3u8 {
            let mut span = simple(7, s, now + u64::from(s));
            span.attributes.push((
                "gen_ai.input.messages".into(),
                AttrValue::Str(format!("message {s} ").repeat(20)),
            ));
            put(&store, span, None);
            assert!(store.caught_up(Duration::from_secs(10)));
        }
        store.stop_as_if_killed();
    }
    garble_second_message(dir.path(), 30);
    let (store, _) = open(dir.path(), u64::MAX, Duration::from_secs(86_400));
    let tree = store.trace(&trace_id(7)).unwrap().expect("put back");
    let names: Vec<u8> = tree
        .nodes
        .iter()
        .map(|n| n.stored.span.span_id[1])
        .collect();
    assert_eq!(names, vec![0, 2], "the first and the third span");
}

/// A store that is not written to still evicts traces as they pass `max_age`, within a tenth of
/// it: not only every 30 s (a `max_age` of a minute kept traces 90 s).
#[test]
fn an_idle_store_evicts_a_trace_soon_after_it_passes_max_age() {
    let dir = tempfile::tempdir().unwrap();
    let (store, metrics) = open(dir.path(), u64::MAX, Duration::from_secs(2));
    put(&store, simple(1, 0, now_unix_nanos()), None);
    assert!(store.flush(Duration::from_secs(10)));
    let evicted = || {
        metric(
            &metrics,
            "sidetrace_store_traces_evicted_total{reason=\"age\"}",
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while evicted() < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "not evicted 15 s after it passed max_age"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(store.trace(&trace_id(1)).unwrap().is_none());
}

/// A word only the oldest trace holds: each page of the search reads at most `text_scan_limit`
/// traces, answers with what it found (nothing here) and where it stopped, and the next goes
/// on from there until the oldest is found.
#[test]
fn a_text_search_reads_a_bounded_number_of_traces_a_page_and_goes_on_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_unix_nanos();
    let (store, _) = open(dir.path(), u64::MAX, Duration::from_secs(86_400));
    for t in 0..10u8 {
        let mut span = simple(t, 0, now + u64::from(t) * 1_000_000);
        if t == 0 {
            span.name = "needle in the oldest".into();
        }
        put(&store, span, None);
        if t == 4 {
            // Half written to the row files, half still open in memory.
            assert!(store.flush(Duration::from_secs(10)));
        }
    }
    assert!(store.caught_up(Duration::from_secs(10)));
    let q = TraceQuery {
        text: Some("NEEDLE".into()),
        limit: 5,
        text_scan_limit: Some(3),
        ..TraceQuery::default()
    };
    let first = store.traces(&q).unwrap();
    assert!(first.rows.is_empty() && first.more);
    // It read the three newest: 9, 8 and 7.
    let seven = store.summary(&trace_id(7)).unwrap().unwrap();
    assert_eq!(first.resume, Some((seven.start_unix_nanos, trace_id(7))));
    assert_eq!(first.next(), first.resume);
    assert_eq!(all_pages(&store, &q), [trace_id(0)]);
    // Without the bound one page finds it.
    let whole = store
        .traces(&TraceQuery {
            text_scan_limit: None,
            ..q
        })
        .unwrap();
    assert_eq!(whole.rows.len(), 1);
    assert!(!whole.more);
}

#[test]
fn traces_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_unix_nanos();
    let bytes = {
        let (store, metrics) = open(dir.path(), u64::MAX, Duration::from_secs(86_400));
        put(&store, simple(7, 0, now), Some(5));
        put(&store, simple(7, 1, now), Some(6));
        assert!(store.flush(Duration::from_secs(10)));
        store.close();
        metric(&metrics, "sidetrace_store_bytes ")
    };
    let (store, metrics) = open(dir.path(), u64::MAX, Duration::from_secs(86_400));
    let row = store.summary(&trace_id(7)).unwrap().unwrap();
    assert_eq!(row.totals.spans, 2);
    assert_eq!(row.totals.cost(), Some(11));
    // The stored bytes, counted again from the rows, are what they were.
    assert!(bytes > 0.0);
    assert_eq!(metric(&metrics, "sidetrace_store_bytes "), bytes);
    assert_eq!(metric(&metrics, "sidetrace_store_traces "), 1.0);
    // Its session too, summed again from the rows.
    let (session, traces) = store
        .session("s1", 10)
        .unwrap()
        .expect("the session is kept");
    assert_eq!((session.traces, session.totals.spans), (1, 2));
    assert_eq!(session.totals.cost(), Some(11));
    assert_eq!(traces.rows.len(), 1);
    let page = store
        .sessions(&SessionQuery {
            limit: 10,
            ..SessionQuery::default()
        })
        .unwrap();
    assert_eq!(page.rows, vec![session]);
}

/// Many traces due at once (a second's traces at thousands of calls a second) are all
/// written, in start order, and all read back after a restart.
#[test]
fn a_thousand_traces_sealed_at_once_are_all_written() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_unix_nanos();
    let n = 1_000u64;
    let ids: Vec<[u8; 16]> = (0..n)
        .map(|i| {
            let mut id = [0x22u8; 16];
            id[8..].copy_from_slice(&(i + 1).to_be_bytes());
            id
        })
        .collect();
    {
        let (store, _) = open(dir.path(), u64::MAX, Duration::from_secs(86_400));
        for (i, id) in ids.iter().enumerate() {
            let mut span = simple(0, 0, now + i as u64 * 1_000);
            span.trace_id = *id;
            put(&store, span, Some(1));
        }
        // One flush seals every open trace at once.
        assert!(store.flush(Duration::from_secs(20)));
        store.close();
    }
    let (store, metrics) = open(dir.path(), u64::MAX, Duration::from_secs(86_400));
    assert_eq!(metric(&metrics, "sidetrace_store_traces "), n as f64);
    let listed = all_pages(
        &store,
        &TraceQuery {
            limit: 100,
            ..TraceQuery::default()
        },
    );
    // Newest first.
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(listed, expected);
    for id in &ids {
        let row = store.summary(id).unwrap().expect("every trace has its row");
        assert_eq!((row.totals.spans, row.totals.cost()), (1, Some(1)));
    }
    let (session, _) = store.session("s1", 1).unwrap().expect("their session");
    assert_eq!(session.traces, n);
}

#[test]
fn a_damaged_store_is_moved_aside_and_a_fresh_one_used() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("traces");
    {
        let (store, _) = open(&dir, u64::MAX, Duration::from_secs(86_400));
        put(&store, simple(1, 0, now_unix_nanos()), None);
        assert!(store.flush(Duration::from_secs(10)));
        store.close();
    }
    std::fs::write(
        dir.join("conf"),
        b"\x00garbage that is not a sled config\xff",
    )
    .unwrap();
    let metrics = Arc::new(Metrics::new());
    let opened = TraceStore::open(
        &dir,
        StoreLimits {
            max_bytes: u64::MAX,
            max_age: Duration::from_secs(86_400),
            search_scan_traces: 5_000,
        },
        metrics,
    );
    let damage = opened.damage.expect("the damage is reported");
    let moved = damage.moved_to.expect("the damaged files are kept aside");
    assert!(moved.join("conf").exists());
    let store = opened.store.expect("a fresh store is used");
    put(&store, simple(2, 0, now_unix_nanos()), None);
    assert!(store.flush(Duration::from_secs(10)));
    assert!(store.summary(&trace_id(2)).unwrap().is_some());
}

/// A store moved from an earlier layout holds trace `n` (two spans, 14 pico-USD) whole, and
/// across two restarts a span arriving after the move joins it (the second time, as a
/// duplicate).
fn check_moved(dir: &Path, n: u8, now: u64) {
    for added in 0..2 {
        let (store, metrics) = open(dir, u64::MAX, Duration::from_secs(86_400));
        let tree = store
            .trace(&trace_id(n))
            .unwrap()
            .expect("the trace is kept");
        assert_eq!(tree.nodes.len(), 2 + added);
        assert_eq!(tree.summary.totals.cost(), Some(14));
        assert_eq!(metric(&metrics, "sidetrace_store_traces "), 1.0);
        let page = store
            .traces(&TraceQuery {
                limit: 10,
                ..TraceQuery::default()
            })
            .unwrap();
        assert_eq!(page.rows.len(), 1);
        put(&store, simple(n, 9, now + 9), None);
        assert!(store.flush(Duration::from_secs(10)));
        store.close();
    }
    let (store, _) = open(dir, u64::MAX, Duration::from_secs(86_400));
    assert_eq!(
        store.summary(&trace_id(n)).unwrap().unwrap().totals.spans,
        3
    );
}

/// A store written before the `rows` tree (one `traces` row per trace id, one `spans` row per
/// span, spans inline as JSON) is moved into the new layout at open, and nothing is lost.
#[test]
fn a_store_in_the_earlier_layout_is_moved_into_the_new_one() {
    use sidetrace::store::traces::{StoredSpan, TraceSummary};
    let dir = tempfile::tempdir().unwrap();
    let now = now_unix_nanos();
    let spans = [simple(3, 0, now), simple(3, 1, now + 5)];
    {
        let db = sled::open(dir.path()).unwrap();
        let (traces, by_time) = (
            db.open_tree("traces").unwrap(),
            db.open_tree("by_time").unwrap(),
        );
        let old_spans = db.open_tree("spans").unwrap();
        let mut summary = TraceSummary::new(trace_id(3));
        for span in &spans {
            let stored = StoredSpan {
                span: span.clone(),
                resource: 1,
                scope_name: "sidetrace".into(),
                scope_version: "0".into(),
                cost_pico_usd: Some(7),
            };
            let json = serde_json::to_vec(&stored).unwrap();
            summary.add(span, Some(7), 24 + json.len() as u64);
            let mut key = trace_id(3).to_vec();
            key.extend_from_slice(&span.span_id);
            old_spans.insert(key, json).unwrap();
        }
        traces
            .insert(trace_id(3), serde_json::to_vec(&summary).unwrap())
            .unwrap();
        let mut time_key = summary.start_unix_nanos.to_be_bytes().to_vec();
        time_key.extend_from_slice(&trace_id(3));
        by_time.insert(time_key, &[]).unwrap();
        db.flush().unwrap();
    }
    check_moved(dir.path(), 3, now);
}

/// A store whose rows were a sled `rows` tree (start + trace id -> span count, span id and
/// pointer per span, summary JSON) is moved into the row files at open, and nothing is lost.
#[test]
fn a_store_with_rows_in_sled_is_moved_into_the_row_files() {
    use sidetrace::store::traces::{StoredSpan, TraceSummary};
    let dir = tempfile::tempdir().unwrap();
    let now = now_unix_nanos();
    let spans = [simple(4, 0, now), simple(4, 1, now + 5)];
    {
        let db = sled::open(dir.path()).unwrap();
        let rows = db.open_tree("rows").unwrap();
        let segments = db.open_tree("segments").unwrap();
        std::fs::create_dir_all(dir.path().join("spans")).unwrap();
        let mut file = Vec::new();
        let mut summary = TraceSummary::new(trace_id(4));
        let mut row = (spans.len() as u32).to_be_bytes().to_vec();
        for span in &spans {
            let stored = StoredSpan {
                span: span.clone(),
                resource: 1,
                scope_name: "sidetrace".into(),
                scope_version: "0".into(),
                cost_pico_usd: Some(7),
            };
            let json = serde_json::to_vec(&stored).unwrap();
            summary.add(span, Some(7), 24 + json.len() as u64);
            // Span id, then the pointer: segment (4), offset (8), length (4).
            row.extend_from_slice(&span.span_id);
            row.extend_from_slice(&1u32.to_be_bytes());
            row.extend_from_slice(&(file.len() as u64).to_be_bytes());
            row.extend_from_slice(&(json.len() as u32).to_be_bytes());
            file.extend_from_slice(&json);
        }
        std::fs::write(dir.path().join("spans/0000000001.log"), &file).unwrap();
        segments
            .insert(1u32.to_be_bytes(), &2u64.to_be_bytes())
            .unwrap();
        row.extend_from_slice(&serde_json::to_vec(&summary).unwrap());
        let mut key = summary.start_unix_nanos.to_be_bytes().to_vec();
        key.extend_from_slice(&trace_id(4));
        rows.insert(key, row).unwrap();
        db.flush().unwrap();
    }
    check_moved(dir.path(), 4, now);
    assert!(dir.path().join("rows").is_dir());
}

/// The row files and the span files are the truth about which span files hold live spans: a
/// store whose sled lost its last writes (a kill before its flush) still keeps every span file
/// a row points into, across several segments.
#[test]
fn span_files_the_rows_point_into_are_kept_when_sled_lost_its_last_writes() {
    let dir = tempfile::tempdir().unwrap();
    // The smallest segments (64 KiB): the spans below fill several.
    let max_bytes = 1 << 20;
    let now = now_unix_nanos();
    {
        let (store, _) = open(dir.path(), max_bytes, Duration::from_secs(86_400));
        for t in 0..60u64 {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(t + 1).to_be_bytes());
            for s in 0..4 {
                let mut span = simple(1, s, now + t * 1_000_000);
                span.trace_id = id;
                span.attributes
                    .push(("padding".into(), AttrValue::Str("x".repeat(1000))));
                put(&store, span, None);
            }
            // A batch per trace, so the segments roll over between traces.
            assert!(store.flush(Duration::from_secs(10)));
        }
        store.close();
    }
    assert!(
        span_files(dir.path()).1 > 2,
        "the spans fill several segments"
    );
    {
        // What sled had saved is gone: the counts and the replay marks.
        let db =
            sidetrace::store::sled_db::open_waiting_for_lock(&sled::Config::new().path(dir.path()))
                .unwrap();
        db.drop_tree("meta").unwrap();
        db.flush().unwrap();
    }
    let (store, metrics) = open(dir.path(), max_bytes, Duration::from_secs(86_400));
    assert_eq!(metric(&metrics, "sidetrace_store_traces "), 60.0);
    for t in 0..60u64 {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(t + 1).to_be_bytes());
        let tree = store.trace(&id).unwrap().expect("the trace is kept");
        assert_eq!(tree.nodes.len(), 4, "every span is read back");
    }
}

/// A store written by the version before the binary span encoding (ca1ce7b: spans and row
/// summaries as JSON; `tests/fixtures/store-ca1ce7b`, four calls through the release gateway)
/// opens and reads as it did, and takes new spans beside the old ones, also after a restart.
#[test]
fn a_store_written_as_json_by_the_previous_version_reads_and_grows() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-ca1ce7b");
    copy_dir(&fixture, dir.path());
    // Its spans are from December 2026: keep them whatever the date.
    let forever = Duration::from_secs(100 * 365 * 86_400);
    let id = |last: u8| {
        let mut id = [0u8; 16];
        hex_to(&mut id, "0af7651916cd43dd8448eb211c803190");
        id[15] |= last;
        id
    };
    let check = |store: &TraceStore, extra: usize| {
        let page = store
            .traces(&TraceQuery {
                limit: 10,
                ..TraceQuery::default()
            })
            .unwrap();
        assert_eq!(page.rows.len(), 3 + extra);
        let two = store
            .trace(&id(1))
            .unwrap()
            .expect("the first trace is kept");
        assert_eq!(two.nodes.len(), 2 + extra);
        // As the previous version answered: 38 input tokens, $0.0000297 (plus the late span).
        assert_eq!(two.summary.totals.input_tokens, 38 + 10 * extra as u64);
        assert_eq!(
            two.summary.totals.cost(),
            Some(29_700_000 + 5 * extra as u128)
        );
        let first = &two.nodes[0].stored;
        assert_eq!(first.span.name, "chat gpt-4o-mini");
        assert_eq!(first.scope_name, "sidetrace");
        let input = first.span.attr("gen_ai.input.messages");
        assert!(
            matches!(input, Some(AttrValue::Str(s)) if s.contains("[EMAIL]")),
            "{input:?}"
        );
        let by_user = store
            .traces(&TraceQuery {
                user: Some("u2".into()),
                limit: 10,
                ..TraceQuery::default()
            })
            .unwrap();
        assert_eq!(by_user.rows.len(), 1);
        assert_eq!(by_user.rows[0].feature.as_deref(), Some("search"));
        let (session, traces) = store.session("s1", 10).unwrap().expect("the session");
        // Its three traces and four spans (the new trace and the late span join it).
        assert_eq!(session.totals.spans, 4 + 2 * extra as u64);
        assert_eq!(traces.rows.len(), 3 + extra);
    };
    {
        let (store, _) = open(dir.path(), u64::MAX, forever);
        check(&store, 0);
        let mut late = simple(1, 7, store.summary(&id(1)).unwrap().unwrap().end_unix_nanos);
        late.trace_id = id(1);
        put(&store, late, Some(5));
        let mut new = simple(9, 0, now_unix_nanos());
        new.trace_id = id(4);
        put(&store, new, None);
        assert!(store.flush(Duration::from_secs(10)));
        store.close();
    }
    let (store, _) = open(dir.path(), u64::MAX, forever);
    check(&store, 1);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn hex_to(out: &mut [u8], hex: &str) {
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
}

/// Span `span` of trace `n` of many (more than a `u8` of them), with `feature`.
fn one_of_many(n: u32, span: u8, start: u64, feature: &'static str) -> SpanRecord {
    let mut s = simple(0, span, start);
    s.trace_id = [0x22; 16];
    s.trace_id[12..].copy_from_slice(&n.to_be_bytes());
    s.span_id[..4].copy_from_slice(&n.to_be_bytes());
    s.span_id[4] = span;
    for (k, v) in &mut s.attributes {
        if k.as_ref() == "feature.id" {
            *v = AttrValue::Str(feature.into());
        }
    }
    s
}

fn many_id(n: u32) -> [u8; 16] {
    one_of_many(n, 0, 0, "").trace_id
}

fn feature_query(feature: Option<&str>) -> TraceQuery {
    TraceQuery {
        feature: feature.map(str::to_string),
        limit: 500,
        ..TraceQuery::default()
    }
}

/// With more traces than the time index keeps in memory, most of it is in files under
/// `rows/index`: lists, filters, lookups by id, a late span, eviction and a restart answer as
/// with it all in memory.
#[test]
fn a_store_larger_than_the_index_in_memory_answers_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_unix_nanos();
    // Enough for more chunk files than a page of the index reads at once (8).
    let n = 16_000u32;
    let feature = |i: u32| match i {
        0 => "first",
        i if i % 100 == 7 => "rare",
        _ => "support",
    };
    let newest_first: Vec<[u8; 16]> = (0..n).rev().map(many_id).collect();
    let rare: Vec<[u8; 16]> = (0..n)
        .rev()
        .filter(|&i| feature(i) == "rare")
        .map(many_id)
        .collect();
    let check = |store: &TraceStore| {
        assert_eq!(all_pages(store, &feature_query(None)), newest_first);
        assert_eq!(all_pages(store, &feature_query(Some("rare"))), rare);
        // Lists that walk every chunk file, a few at a time.
        assert_eq!(
            all_pages(store, &feature_query(Some("first"))),
            [many_id(0)]
        );
        assert!(all_pages(store, &feature_query(Some("nobody"))).is_empty());
        // Every trace is in session s1: its view, oldest first.
        let (session, traces) = store.session("s1", 10).unwrap().unwrap();
        assert_eq!(session.traces, u64::from(n));
        let oldest: Vec<_> = traces.rows.iter().map(|r| r.trace_id).collect();
        assert_eq!(oldest, (0..10).map(many_id).collect::<Vec<_>>());
        assert!(traces.more);
        for i in [0, 1, 999, 2_000, 3_000, 5_000, 6_001, n - 1] {
            let row = store.summary(&many_id(i)).unwrap().expect("kept");
            assert_eq!(row.feature.as_deref(), Some(feature(i)));
        }
    };
    let chunk_files = |dir: &Path| std::fs::read_dir(dir.join("rows/index")).unwrap().count();
    let bytes = {
        let (store, metrics) = open(dir.path(), u64::MAX, Duration::from_secs(86_400));
        for i in 0..n {
            put(
                &store,
                one_of_many(i, 0, now + u64::from(i) * 1_000, feature(i)),
                None,
            );
        }
        assert!(store.flush(Duration::from_secs(30)));
        assert!(chunk_files(dir.path()) > 0, "the index spilled nothing");
        check(&store);
        // A late span for an old trace (found by its id in a chunk held in a file) changes its
        // row; one that starts before it moves the row.
        put(
            &store,
            one_of_many(3_000, 1, now + 3_000_000, feature(3_000)),
            None,
        );
        put(
            &store,
            one_of_many(5_000, 1, now + 5_000_000 - 1, feature(5_000)),
            None,
        );
        assert!(store.flush(Duration::from_secs(30)));
        for i in [3_000, 5_000] {
            assert_eq!(store.summary(&many_id(i)).unwrap().unwrap().totals.spans, 2);
            assert_eq!(store.trace(&many_id(i)).unwrap().unwrap().nodes.len(), 2);
        }
        check(&store);
        store.close();
        metric(&metrics, "sidetrace_store_bytes ")
    };
    // Opened again: the index is rebuilt from the rows, spilled again, and answers the same.
    {
        let (store, metrics) = open(dir.path(), u64::MAX, Duration::from_secs(86_400));
        assert_eq!(metric(&metrics, "sidetrace_store_traces "), f64::from(n));
        assert!(chunk_files(dir.path()) > 0);
        check(&store);
        assert_eq!(
            store
                .summary(&many_id(3_000))
                .unwrap()
                .unwrap()
                .totals
                .spans,
            2
        );
        assert_eq!(
            store
                .summary(&many_id(5_000))
                .unwrap()
                .unwrap()
                .totals
                .spans,
            2
        );
        store.close();
    }
    // Opened with room for about half: the oldest go, whole, from chunks held in files.
    // (The size is enforced as spans come: one more trace.)
    let (store, metrics) = open(
        dir.path(),
        (bytes / 2.0) as u64,
        Duration::from_secs(86_400),
    );
    put(
        &store,
        one_of_many(n, 0, now + u64::from(n) * 1_000, "support"),
        None,
    );
    assert!(store.flush(Duration::from_secs(30)));
    let kept = all_pages(&store, &feature_query(None));
    let evicted = metric(
        &metrics,
        "sidetrace_store_traces_evicted_total{reason=\"size\"}",
    );
    assert!(evicted > f64::from(n) / 3.0, "evicted {evicted}");
    assert_eq!(kept.len() as f64 + evicted, f64::from(n + 1));
    assert_eq!(kept[0], many_id(n));
    assert_eq!(kept[1..], newest_first[..kept.len() - 1]);
    assert!(store.summary(&many_id(0)).unwrap().is_none());
    assert!(store.summary(&many_id(n - 1)).unwrap().is_some());
}

/// Lists filter the time index by 32-bit hashes of the feature, user and session; two values
/// with the same hash (these two do) are still told apart, in the lists and the session view.
#[test]
fn values_that_share_a_hash_are_told_apart() {
    let (a, b) = ("s38675", "s61566");
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), u64::MAX, Duration::from_secs(86_400));
    let now = now_unix_nanos();
    for (n, value) in [(0u32, a), (1, b), (2, a), (3, b)] {
        let mut span = one_of_many(n, 0, now + u64::from(n) * 1_000, "support");
        for (k, v) in &mut span.attributes {
            if k.as_ref() == "session.id" {
                *v = AttrValue::Str(value.into());
            }
        }
        span.attributes
            .push(("user.id".into(), AttrValue::Str(value.into())));
        put(&store, span, None);
    }
    assert!(store.flush(Duration::from_secs(10)));
    let of = |value: &str| -> Vec<[u8; 16]> {
        if value == a {
            vec![many_id(2), many_id(0)]
        } else {
            vec![many_id(3), many_id(1)]
        }
    };
    for value in [a, b] {
        let by_session = TraceQuery {
            session: Some(value.into()),
            limit: 1,
            ..TraceQuery::default()
        };
        assert_eq!(all_pages(&store, &by_session), of(value));
        let by_user = TraceQuery {
            user: Some(value.into()),
            limit: 10,
            ..TraceQuery::default()
        };
        assert_eq!(all_pages(&store, &by_user), of(value));
        let (session, traces) = store.session(value, 1).unwrap().unwrap();
        assert_eq!(session.traces, 2);
        assert_eq!(traces.rows.len(), 1);
        assert!(traces.more);
        assert_eq!(traces.rows[0].trace_id, of(value)[1]);
        let (_, traces) = store.session(value, 10).unwrap().unwrap();
        let mut ids: Vec<_> = traces.rows.iter().map(|r| r.trace_id).collect();
        ids.reverse();
        assert_eq!(ids, of(value));
    }
}

/// The gateway's tool span of a call the app reported a span of its own for (which came after
/// the gateway's) is left out of the trace as read: its span and its error are not counted.
#[test]
fn a_gateway_tool_span_the_app_reported_too_is_left_out_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), u64::MAX, Duration::from_secs(86_400));
    let now = now_unix_nanos();
    let call = simple(1, 1, now);
    let tool = |span: u8, call_id: &str, error: bool| {
        let mut s = simple(1, span, now + 1_000);
        s.parent_span_id = Some(call.span_id);
        s.name = "execute_tool get_weather".into();
        s.attributes = vec![
            (
                "gen_ai.operation.name".into(),
                AttrValue::Str("execute_tool".into()),
            ),
            ("gen_ai.tool.call.id".into(), AttrValue::Str(call_id.into())),
        ];
        if error {
            s.status = SpanStatus::Error("the tool returned an error".into());
        }
        s
    };
    put(&store, call.clone(), None);
    // The gateway's spans of two calls, one an error; then the app's of the first.
    put(&store, tool(2, "call_weather", true), None);
    put(&store, tool(3, "call_time", false), None);
    let mut app = tool(4, "call_weather", false);
    app.parent_span_id = Some(call.span_id);
    store.submit(Ingest {
        span: app,
        origin: Arc::new(Origin {
            resource: vec![("service.name".into(), "weather-agent".into())],
            scope_name: "weather-agent".into(),
            scope_version: "1".into(),
        }),
        cost_pico_usd: None,
    });
    assert!(store.caught_up(Duration::from_secs(30)));
    let tree = store.trace(&trace_id(1)).unwrap().unwrap();
    let ids: Vec<u8> = tree
        .nodes
        .iter()
        .map(|n| n.stored.span.span_id[1])
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(
        !ids.contains(&2),
        "the gateway's span of call_weather is left out: {ids:?}"
    );
    assert_eq!(tree.replaced_tool_spans, 1);
    assert_eq!(tree.summary.totals.spans, 3);
    assert_eq!(
        tree.summary.totals.errors, 0,
        "the left-out span's error with it"
    );
    store.close();
}
