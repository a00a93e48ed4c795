//! The trace store: how fast spans are written (the budget is 50,000 spans/s), and how fast
//! the API's reads are with 1,000,000 spans stored (first page of the trace list, one trace of
//! 1,000 spans, a list filtered by feature and errors; the budgets are 50, 50 and 100 ms).
//!
//! `cargo bench --bench store`. The million-span store is built once under
//! `target/store-bench/` (a few seconds) and reused; `STORE_BENCH_SPANS` changes its size;
//! remove the directory after a change of the span format. It also prints the process's
//! resident memory with the store open (reopened, when it was built by an earlier run) and
//! after the reads, before the writes are measured.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use sidetrace::{
    metrics::Metrics,
    store::traces::{Ingest, Origin, StoreLimits, TraceQuery, TraceStore, now_unix_nanos},
    trace::span::{AttrValue, SpanRecord, SpanStatus},
};

fn origin() -> Arc<Origin> {
    Arc::new(Origin {
        resource: vec![
            ("service.name".into(), "sidetrace".into()),
            ("service.version".into(), "0.1.0".into()),
        ],
        scope_name: "sidetrace".into(),
        scope_version: "0.1.0".into(),
    })
}

/// A span like the gateway's for a chat call with redacted content (about 1.5 KB as stored).
/// Reads of it include turning its request body into the GenAI messages.
fn span(trace: u64, n: u64, start: u64) -> SpanRecord {
    let mut trace_id = [0u8; 16];
    trace_id[..8].copy_from_slice(&trace.to_be_bytes());
    trace_id[15] = 1;
    let mut span_id = [0u8; 8];
    span_id.copy_from_slice(&(n + 1).to_be_bytes());
    let s = |v: &str| AttrValue::Str(v.to_string());
    let features = ["support_agent", "search", "summarize", "classify"];
    let attributes = vec![
        ("gen_ai.operation.name".into(), s("chat")),
        ("gen_ai.provider.name".into(), s("openai")),
        ("gen_ai.request.model".into(), s("gpt-4o-mini")),
        ("server.address".into(), s("api.openai.com")),
        ("server.port".into(), AttrValue::Int(443)),
        ("gen_ai.request.max_tokens".into(), AttrValue::Int(512)),
        ("gen_ai.request.temperature".into(), AttrValue::Double(0.2)),
        (
            "gen_ai.response.id".into(),
            s("chatcmpl-CJCk1PzR4vXb7NmQe2WtY9sLu5HaJ"),
        ),
        ("gen_ai.response.model".into(), s("gpt-4o-mini-2024-07-18")),
        (
            "gen_ai.response.finish_reasons".into(),
            AttrValue::StrList(vec!["stop".into()]),
        ),
        ("gen_ai.usage.input_tokens".into(), AttrValue::Int(182)),
        ("gen_ai.usage.output_tokens".into(), AttrValue::Int(17)),
        ("cost.usd".into(), AttrValue::Double(0.0000375)),
        ("http.response.status_code".into(), AttrValue::Int(200)),
        ("feature.id".into(), s(features[(trace % 4) as usize])),
        ("user.id".into(), s(&format!("u_{}", trace % 1000))),
        ("session.id".into(), s(&format!("s_{}", trace % 5000))),
        // The request as the gateway keeps it for the store (the body, redacted, read into
        // `gen_ai.input.messages` and `gen_ai.system_instructions` when the span is read).
        (
            "sidetrace.content.request_body".into(),
            s(concat!(
                "chat_completions 16384\n",
                r#"{"model":"gpt-4o-mini","temperature":0.2,"max_tokens":512,"messages":["#,
                r#"{"role":"system","content":"You are a helpful support agent for Acme Travel. Use the tools when the user asks about the weather. Be brief."},"#,
                r#"{"role":"user","content":"What is the weather in Paris right now? I fly there tomorrow and need to know what to pack. Mail me at [EMAIL] with a list of clothes, please, and keep it short."}]}"#,
            )),
        ),
        (
            "gen_ai.output.messages".into(),
            s(
                r#"[{"role":"assistant","parts":[{"type":"text","content":"It is 18°C and sunny in Paris; pack a light jacket, comfortable shoes and sunglasses. Rain is not expected before the weekend."}],"finish_reason":"stop"}]"#,
            ),
        ),
        ("sidetrace.provider".into(), s("openai")),
        ("sidetrace.outcome".into(), s("completed")),
        ("sidetrace.content.level".into(), s("redacted")),
    ];
    SpanRecord {
        trace_id,
        span_id,
        parent_span_id: (n > 0).then_some([0, 0, 0, 0, 0, 0, 0, 1]),
        parent_is_remote: false,
        flags: 1,
        trace_state: None,
        name: "chat gpt-4o-mini".into(),
        kind: "client".into(),
        start_unix_nanos: start,
        end_unix_nanos: start + 46_000_000,
        status: if trace % 50 == 1 && n == 0 {
            SpanStatus::Error("upstream answered 429".into())
        } else {
            SpanStatus::Unset
        },
        attributes,
        events: Vec::new(),
        links: Vec::new(),
        origin: None,
    }
}

fn open(dir: &std::path::Path) -> Arc<TraceStore> {
    TraceStore::open(
        dir,
        StoreLimits {
            max_bytes: u64::MAX,
            max_age: Duration::from_secs(365 * 86_400),
            search_scan_traces: 5_000,
        },
        Arc::new(Metrics::new()),
    )
    .store
    .expect("the store opens")
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Submits spans as fast as the queue takes them (the writer drains it), then waits for all.
fn write_all(store: &TraceStore, spans: impl Iterator<Item = SpanRecord>) {
    let origin = origin();
    for span in spans {
        store.submit(Ingest {
            span,
            origin: origin.clone(),
            cost_pico_usd: Some(37_500_000),
        });
    }
    assert!(store.flush(Duration::from_secs(600)));
}

fn writes(c: &mut Criterion) {
    const N: u64 = 20_000;
    let mut g = c.benchmark_group("store_write");
    g.throughput(Throughput::Elements(N));
    g.sample_size(10);
    g.bench_function("20k spans, 4 per trace", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let store = open(dir.path());
                let now = now_unix_nanos();
                let spans: Vec<SpanRecord> =
                    (0..N).map(|i| span(i / 4, i % 4, now + i * 1000)).collect();
                (dir, store, spans)
            },
            |(dir, store, spans)| {
                // Slow submits would be dropped (the queue is bounded): wait for room instead,
                // so every span is written and the figure is the writer's own rate.
                let origin = origin();
                for chunk in spans.chunks(8 * 1024) {
                    for span in chunk {
                        store.submit(Ingest {
                            span: span.clone(),
                            origin: origin.clone(),
                            cost_pico_usd: Some(37_500_000),
                        });
                    }
                    assert!(store.flush(Duration::from_secs(60)));
                }
                // Its writer thread ends: the next samples do not pay for this store.
                store.close();
                (dir, store)
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

fn reads(c: &mut Criterion) {
    let spans: u64 = std::env::var("STORE_BENCH_SPANS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/store-bench")
        .join(format!("{spans}"));
    let done = dir.join("built");
    let fresh = !done.exists();
    if fresh {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let store = open(&dir.join("traces"));
    // One trace of 1,000 spans, the rest in traces of 4, spread over the last day.
    let big = 1u64 << 40;
    if fresh {
        let t0 = Instant::now();
        let start = now_unix_nanos() - 86_400_000_000_000;
        let step = 86_400_000_000_000 / spans.max(1);
        for chunk in (0..spans - 1000).collect::<Vec<_>>().chunks(8 * 1024) {
            write_all(
                &store,
                chunk.iter().map(|&i| span(i / 4, i % 4, start + i * step)),
            );
        }
        write_all(
            &store,
            (0..1000).map(|i| span(big, i, start + (spans / 2) * step + i * 1000)),
        );
        std::fs::write(&done, b"").unwrap();
        eprintln!(
            "built a store of {spans} spans in {:.1} s ({:.0} spans/s)",
            t0.elapsed().as_secs_f64(),
            spans as f64 / t0.elapsed().as_secs_f64()
        );
    }
    eprintln!(
        "RSS with the store of {spans} spans open: {:.1} MiB",
        rss_mib()
    );
    let mut big_id = [0u8; 16];
    big_id[..8].copy_from_slice(&big.to_be_bytes());
    big_id[15] = 1;
    let mut g = c.benchmark_group(format!("store_read_{spans}_spans"));
    g.bench_function("first page of 50 traces", |b| {
        b.iter(|| {
            let page = store
                .traces(&TraceQuery {
                    limit: 50,
                    ..TraceQuery::default()
                })
                .unwrap();
            assert_eq!(page.rows.len(), 50);
        })
    });
    g.bench_function("one trace of 1,000 spans", |b| {
        b.iter(|| assert_eq!(store.trace(&big_id).unwrap().unwrap().nodes.len(), 1000))
    });
    g.bench_function("50 traces of feature search with errors", |b| {
        b.iter(|| {
            store
                .traces(&TraceQuery {
                    feature: Some("search".into()),
                    errors_only: true,
                    limit: 50,
                    ..TraceQuery::default()
                })
                .unwrap()
        })
    });
    g.finish();
    eprintln!("RSS after the reads: {:.1} MiB", rss_mib());
}

// The reads first: their RSS line is then the store's alone, not what the writes benchmark
// left in the allocator.
criterion_group!(benches, reads, writes);
criterion_main!(benches);
