//! The feature-cost section of the results page: what the tap, the capture levels, span export,
//! a collector outage (spooling) and the replay after it cost, each against a baseline measured
//! in the same run. Scenario ids and target names are the ones run.sh gives.

use std::fmt::Write as _;

use serde_json::Value;

use crate::report::{Scenario, mib, ms, num, ratio, signed_ms, times};

fn find<'a>(scenarios: &'a [Scenario], id: &str) -> Option<&'a Scenario> {
    scenarios.iter().find(|s| s.id == id)
}

fn fig(s: Option<&Scenario>, target: &str, pointer: &str) -> Option<f64> {
    num(s?.run(target)?, pointer)
}

fn diff(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? - b?)
}

fn us(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:.1}"))
}

fn count(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:.0}"))
}

fn rate_label(s: Option<&Scenario>) -> String {
    let r = s.and_then(|s| s.runs.first());
    match (
        r.and_then(|r| r["rate"].as_f64()),
        r.and_then(|r| r["connections"].as_u64()),
    ) {
        (Some(rate), _) => format!("{rate:.0}/s"),
        (None, Some(c)) => format!("{c} connections"),
        _ => "—".into(),
    }
}

pub fn write(out: &mut String, scenarios: &[Scenario]) {
    let any = ["probe", "cap", "st1k", "stc", "x1k", "xc", "replay", "rc"]
        .iter()
        .any(|id| find(scenarios, id).is_some())
        || scenarios.iter().any(|s| s.run("sidetrace-raw").is_some());
    if !any {
        return;
    }
    let _ = writeln!(out, "\n### Feature costs\n");
    let _ = writeln!(
        out,
        "Each against a baseline measured in the same run. Latency in ms, CPU in µs per successful request."
    );
    tap(out, scenarios);
    capture(out, scenarios);
    store(out, scenarios);
    export(out, scenarios);
    spool(out, scenarios);
    replay(out, scenarios);
}

fn tap(out: &mut String, scenarios: &[Scenario]) {
    let (a, b, c) = (
        find(scenarios, "a1k"),
        find(scenarios, "b"),
        find(scenarios, "c"),
    );
    let has_raw = [a, b, c]
        .iter()
        .any(|s| s.is_some_and(|s| s.run("sidetrace-raw").is_some()));
    let probe = find(scenarios, "probe");
    if !has_raw && probe.is_none() {
        return;
    }
    let _ = writeln!(out, "\n#### Tap and request inspection\n");
    // The comparison needs load runs on both routes (not in the headline run).
    if has_raw {
        let _ = writeln!(
            out,
            "One gateway process, two routes to the same mock, taking turns within each scenario: \
             **raw** is `/raw/v1/chat/completions`, a provider with `paths = []` (every path \
             passthrough: no request inspection, no tap parsing, no cost); **inspected** is the \
             default `/v1/chat/completions` (OpenAI chat: request parse, usage injection, the tap \
             on the response, cost, the span record).\n"
        );
        let _ = writeln!(
            out,
            "| figure | raw route (before) | inspected route (after) | inspected − raw |"
        );
        let _ = writeln!(out, "|---|---|---|---|");
        let mut row = |label: String, s: Option<&Scenario>, pointer: &str, kind: &str| {
            let raw = fig(s, "sidetrace-raw", pointer);
            let ins = fig(s, "sidetrace", pointer);
            let (fmt, d): (fn(Option<f64>) -> String, String) = match kind {
                "ms" => (ms, format!("{} ms", signed_ms(diff(ins, raw)))),
                "cpu" => (us, times(ratio(ins, raw))),
                _ => (count, times(ratio(ins, raw))),
            };
            let _ = writeln!(out, "| {label} | {} | {} | {d} |", fmt(raw), fmt(ins));
        };
        let al = rate_label(a);
        row(
            format!("non-stream latency p50, {al} (a1k)"),
            a,
            "/total_ms/p50",
            "ms",
        );
        row(
            format!("non-stream latency p99, {al} (a1k)"),
            a,
            "/total_ms/p99",
            "ms",
        );
        row(
            "proxy CPU µs/request (a1k)".into(),
            a,
            "/processes/proxy/cpu_us_per_req",
            "cpu",
        );
        let bl = rate_label(b);
        row(
            format!("stream TTFB p50, {bl} (b)"),
            b,
            "/ttfb_ms/p50",
            "ms",
        );
        row(
            format!("stream TTFB p99, {bl} (b)"),
            b,
            "/ttfb_ms/p99",
            "ms",
        );
        row(
            format!("stream total p50, {bl} (b)"),
            b,
            "/total_ms/p50",
            "ms",
        );
        row(
            "proxy CPU µs/request (b)".into(),
            b,
            "/processes/proxy/cpu_us_per_req",
            "cpu",
        );
        row(
            format!("req/s, closed loop {} (c)", rate_label(c)),
            c,
            "/achieved_rps",
            "count",
        );
        row(
            "proxy CPU µs/request (c)".into(),
            c,
            "/processes/proxy/cpu_us_per_req",
            "cpu",
        );
        // How late the driver itself sent requests: high in one run only means other work shared
        // the machine during it, and its figures are the noisier.
        row(
            "noise check: driver lag p99 (a1k)".into(),
            a,
            "/send_lag_ms/p99",
            "ms",
        );
        row(
            "noise check: driver lag p99 (b)".into(),
            b,
            "/send_lag_ms/p99",
            "ms",
        );
    }
    if let Some(p) = probe {
        let _ = writeln!(
            out,
            "\nCost headers, from one non-streamed call on each route (`x-sidetrace-*` response \
             headers other than the trace, span and request ids):\n"
        );
        for r in &p.runs {
            let target = r["target"].as_str().unwrap_or("?");
            let route = match target {
                "sidetrace-raw" => "raw route",
                "sidetrace" => "inspected route",
                other => other,
            };
            let headers = r["headers"].as_object().filter(|h| !h.is_empty()).map_or(
                "none".to_string(),
                |h| {
                    h.iter()
                        .map(|(k, v)| format!("`{k}: {}`", v.as_str().unwrap_or("?")))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            );
            let check = match r["first_error"].as_str() {
                Some(e) => format!(" — **check failed: {e}**"),
                None => String::new(),
            };
            let _ = writeln!(out, "- {route}: status {}, {headers}{check}", r["status"]);
        }
    }
}

fn capture(out: &mut String, scenarios: &[Scenario]) {
    let Some(s) = find(scenarios, "cap") else {
        return;
    };
    let _ = writeln!(out, "\n#### Capture levels ({})\n", s_title(s));
    let _ = writeln!(
        out,
        "`none` and `redacted` are gateway processes of their own (`SIDETRACE_CAPTURE_LEVEL`, \
         warmed up like the others); `metadata` is the default gateway, the one of every other \
         scenario.\n"
    );
    let _ = writeln!(
        out,
        "| capture level | ok | errors | p50 | p99 | proxy CPU µs/req | CPU vs none | p50 − none | peak RSS MiB | driver lag p99 (noise check) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    let base = s.run("sidetrace-none");
    for (target, level) in [
        ("sidetrace-none", "none"),
        ("sidetrace", "metadata (default)"),
        ("sidetrace-redacted", "redacted"),
    ] {
        let Some(r) = s.run(target) else { continue };
        let cpu = num(r, "/processes/proxy/cpu_us_per_req");
        let p50 = num(r, "/total_ms/p50");
        let _ = writeln!(
            out,
            "| {level} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r["ok"],
            r["errors"],
            ms(p50),
            ms(num(r, "/total_ms/p99")),
            us(cpu),
            times(ratio(
                cpu,
                base.and_then(|b| num(b, "/processes/proxy/cpu_us_per_req"))
            )),
            signed_ms(diff(p50, base.and_then(|b| num(b, "/total_ms/p50")))),
            mib(num(r, "/processes/proxy/peak_rss_kib")),
            ms(num(r, "/send_lag_ms/p99")),
        );
    }
}

/// The trace store off (a gateway of its own) against on (the default gateway): added latency
/// in the open loop, CPU and throughput in the closed loop, and what the store wrote or dropped.
fn store(out: &mut String, scenarios: &[Scenario]) {
    let (o, c) = (find(scenarios, "st1k"), find(scenarios, "stc"));
    if o.is_none() && c.is_none() {
        return;
    }
    let _ = writeln!(out, "\n#### Trace store\n");
    let _ = writeln!(
        out,
        "Off is a gateway process of its own (`[store] enabled = false`); on is the default \
         gateway, whose background thread writes every span to its span files and each \
         trace's row to its row files. Open loop at {} (st1k), closed loop at {} (stc).\n",
        rate_label(o),
        rate_label(c)
    );
    let _ = writeln!(
        out,
        "| trace store | p50 (st1k) | p50 − off | p99 (st1k) | CPU µs/req (st1k) | CPU vs off (st1k) | req/s (stc) | req/s vs off | CPU µs/req (stc) | CPU vs off (stc) | peak RSS MiB (stc) | spans written (stc) | spans dropped (stc) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let cpu = "/processes/proxy/cpu_us_per_req";
    for (target, label) in [("sidetrace-nostore", "off"), ("sidetrace", "on (default)")] {
        let (or, cr) = (o.and_then(|s| s.run(target)), c.and_then(|s| s.run(target)));
        if or.is_none() && cr.is_none() {
            continue;
        }
        let base_o = o.and_then(|s| s.run("sidetrace-nostore"));
        let base_c = c.and_then(|s| s.run("sidetrace-nostore"));
        let p50 = or.and_then(|r| num(r, "/total_ms/p50"));
        let rps = cr.and_then(|r| num(r, "/achieved_rps"));
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            ms(p50),
            signed_ms(diff(p50, base_o.and_then(|b| num(b, "/total_ms/p50")))),
            ms(or.and_then(|r| num(r, "/total_ms/p99"))),
            us(or.and_then(|r| num(r, cpu))),
            times(ratio(
                or.and_then(|r| num(r, cpu)),
                base_o.and_then(|b| num(b, cpu))
            )),
            count(rps),
            times(ratio(rps, base_c.and_then(|b| num(b, "/achieved_rps")))),
            us(cr.and_then(|r| num(r, cpu))),
            times(ratio(
                cr.and_then(|r| num(r, cpu)),
                base_c.and_then(|b| num(b, cpu))
            )),
            mib(cr.and_then(|r| num(r, "/processes/proxy/peak_rss_kib"))),
            count(cr.and_then(|r| counter(
                r,
                "gw",
                "delta",
                "sidetrace_store_spans_written_total"
            ))),
            count(cr.and_then(|r| counter(
                r,
                "gw",
                "delta",
                "sidetrace_store_spans_dropped_total"
            ))),
        );
    }
}

fn s_title(s: &Scenario) -> String {
    s.runs
        .first()
        .and_then(|r| r["title"].as_str())
        .unwrap_or("")
        .to_string()
}

/// A counter's change over a run, after the settle time (`delta`) or during the load only
/// (`delta_end`).
/// A counter family with no sample yet (nothing dropped) is absent from the page: 0 when the page
/// itself was read.
fn counter(r: &Value, source: &str, which: &str, name: &str) -> Option<f64> {
    let page = r
        .pointer(&format!("/counters/{source}/{which}"))?
        .as_object()?;
    Some(page.get(name).and_then(Value::as_f64).unwrap_or(0.0))
}

fn export(out: &mut String, scenarios: &[Scenario]) {
    let (x1, xc) = (find(scenarios, "x1k"), find(scenarios, "xc"));
    if x1.is_none() && xc.is_none() {
        return;
    }
    let _ = writeln!(out, "\n#### Span export\n");
    let _ = writeln!(
        out,
        "**on** is the default gateway of this bench, exporting every span over OTLP/HTTP \
         protobuf to a local sink (bench-mock `POST /v1/traces`: 200, empty body); **off** a \
         gateway with no OTLP endpoint; \
         **collector down** a gateway whose endpoint is a closed loopback port, so every batch \
         goes to the spool. Each run's CPU and counters are read {} after its load ended, so the \
         last export batch (sent within `export.batch_delay_ms` = 1 s) is counted.\n",
        x1.or(xc)
            .and_then(|s| s.runs.first())
            .and_then(|r| r["settle_ms"].as_u64())
            .map_or("—".into(), |v| format!("{:.1} s", v as f64 / 1000.0)),
    );
    let _ = writeln!(
        out,
        "| export | p50, {} (x1k) | p99 (x1k) | CPU µs/req (x1k) | driver lag p99 (x1k, noise check) | req/s, {} (xc) | req/s vs off | CPU µs/req (xc) | CPU vs off (xc) | spans exported (xc) | spans spooled (xc) |",
        rate_label(x1),
        rate_label(xc)
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    let off_rps = fig(xc, "sidetrace-noexport", "/achieved_rps");
    let off_cpu = fig(xc, "sidetrace-noexport", "/processes/proxy/cpu_us_per_req");
    for (target, label) in [
        ("sidetrace-noexport", "off"),
        ("sidetrace", "on (sink)"),
        ("sidetrace-spool", "collector down"),
    ] {
        let rps = fig(xc, target, "/achieved_rps");
        let cpu = fig(xc, target, "/processes/proxy/cpu_us_per_req");
        let xr = xc.and_then(|s| s.run(target));
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            ms(fig(x1, target, "/total_ms/p50")),
            ms(fig(x1, target, "/total_ms/p99")),
            us(fig(x1, target, "/processes/proxy/cpu_us_per_req")),
            ms(fig(x1, target, "/send_lag_ms/p99")),
            count(rps),
            times(ratio(rps, off_rps)),
            us(cpu),
            times(ratio(cpu, off_cpu)),
            count(xr.and_then(|r| counter(r, "gw", "delta", "sidetrace_spans_exported_total"))),
            count(xr.and_then(|r| counter(r, "gw", "delta", "sidetrace_spans_spooled_total"))),
        );
    }
    // What the sink took from the exporting gateway over both runs.
    let (mut reqs, mut bytes, mut spans) = (0.0, 0.0, 0.0);
    for s in [x1, xc].into_iter().flatten() {
        if let Some(r) = s.run("sidetrace") {
            reqs += counter(r, "sink", "delta", "bench_sink_trace_requests_total").unwrap_or(0.0);
            bytes += counter(r, "sink", "delta", "bench_sink_trace_bytes_total").unwrap_or(0.0);
            spans += counter(r, "gw", "delta", "sidetrace_spans_exported_total").unwrap_or(0.0);
        }
    }
    if reqs > 0.0 {
        let _ = writeln!(
            out,
            "\nThe sink took {reqs:.0} export requests from the exporting gateway over x1k and xc: \
             {:.1} MB of protobuf for {spans:.0} spans ({:.0} bytes per span, {:.0} spans per request).",
            bytes / 1e6,
            if spans > 0.0 { bytes / spans } else { 0.0 },
            spans / reqs,
        );
    }
}

fn spool(out: &mut String, scenarios: &[Scenario]) {
    let runs: Vec<(&str, &Value)> = ["x1k", "xc"]
        .iter()
        .filter_map(|id| Some((*id, find(scenarios, id)?.run("sidetrace-spool")?)))
        .collect();
    if runs.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n#### Collector down: spooling\n");
    let _ = writeln!(
        out,
        "The collector-down gateway's counters (`/metrics`), read before each run and after its \
         settle time. Spool write rate = spans written to the spool for the run / load time; it \
         follows the request rate as long as the spool keeps up (nothing dropped, every span \
         received was spooled).\n"
    );
    let _ = writeln!(
        out,
        "| run | req/s | spans received | spans spooled | **spool write rate, spans/s** | spool growth MB | MB/s | dropped |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for (id, r) in runs {
        let spooled = counter(r, "gw", "delta", "sidetrace_spans_spooled_total");
        let grown = counter(r, "gw", "delta", "sidetrace_spool_bytes");
        let per_s = |v: Option<f64>| match (v, num(r, "/wall_s")) {
            (Some(n), Some(w)) if w > 0.0 => Some(n / w),
            _ => None,
        };
        let _ = writeln!(
            out,
            "| {id} ({}) | {} | {} | {} | **{}** | {} | {} | {} |",
            rate_label(find(scenarios, id)),
            count(num(r, "/achieved_rps")),
            count(counter(r, "gw", "delta", "sidetrace_spans_received_total")),
            count(spooled),
            count(per_s(spooled)),
            grown.map_or("—".into(), |b| format!("{:.1}", b / 1e6)),
            per_s(grown).map_or("—".into(), |b| format!("{:.1}", b / 1e6)),
            count(counter(r, "gw", "delta", "sidetrace_spans_dropped_total")),
        );
    }
}

fn replay(out: &mut String, scenarios: &[Scenario]) {
    let w = find(scenarios, "replay").and_then(|s| s.run("sidetrace-spool"));
    let rc = find(scenarios, "rc").and_then(|s| s.run("sidetrace-spool"));
    if w.is_none() && rc.is_none() {
        return;
    }
    let _ = writeln!(out, "\n#### Replay after the collector came back\n");
    if let Some(w) = w {
        let _ = writeln!(
            out,
            "The sink was started on the collector-down gateway's endpoint port; from then, its \
             `/metrics` was polled every 50 ms until `sidetrace_spool_items` was 0 (at most {} s).\n",
            num(w, "/timeout_s").map_or("—".into(), |v| format!("{v:.0}"))
        );
        let _ = writeln!(out, "| figure | value |\n|---|---|");
        let _ = writeln!(
            out,
            "| spool batches when the collector came up | {} |",
            count(num(w, "/spool_items_start"))
        );
        let _ = writeln!(
            out,
            "| first replayed span seen after (the replayer's backoff) | {}–{} s |",
            ms(num(w, "/wait_s")),
            ms(num(w, "/first_replay_seen_s"))
        );
        let _ = writeln!(
            out,
            "| spans replayed | {} |",
            count(num(w, "/replayed_spans"))
        );
        let _ = writeln!(
            out,
            "| replay time, first replay to empty spool | {} s |",
            ms(num(w, "/replay_s"))
        );
        let _ = writeln!(
            out,
            "| **replay rate** (with the run below going on) | **{} spans/s** |",
            count(num(w, "/replay_spans_per_s"))
        );
        let _ = writeln!(
            out,
            "| spool empty at the end | {} |",
            match w["first_error"].as_str() {
                None => "yes".to_string(),
                Some(e) => format!("**no: {e}**"),
            }
        );
    }
    if let Some(r) = rc {
        let xc = find(scenarios, "xc");
        let rps = num(r, "/achieved_rps");
        let _ = writeln!(
            out,
            "\nThroughput during the replay: a closed-loop run of {} on the same gateway, \
             started when the first replayed span was seen and ended when the spool was empty \
             (or after {} s).\n",
            r["connections"], r["duration_s"]
        );
        let _ = writeln!(
            out,
            "| run | ok | errors | load time s | req/s | vs export off (xc) | vs export on (xc) | CPU µs/req | spans replayed during it | spans exported live |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
        let _ = writeln!(
            out,
            "| during replay | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r["ok"],
            r["errors"],
            ms(num(r, "/wall_s")),
            count(rps),
            times(ratio(rps, fig(xc, "sidetrace-noexport", "/achieved_rps"))),
            times(ratio(rps, fig(xc, "sidetrace", "/achieved_rps"))),
            us(num(r, "/processes/proxy/cpu_us_per_req")),
            count(counter(
                r,
                "gw",
                "delta_end",
                "sidetrace_spans_replayed_total"
            )),
            count(counter(
                r,
                "gw",
                "delta_end",
                "sidetrace_spans_exported_total"
            )),
        );
        if let Some(e) = r["first_error"].as_str() {
            let _ = writeln!(out, "\nfirst error: `{}`", e.replace('`', "'"));
        }
    }
}
