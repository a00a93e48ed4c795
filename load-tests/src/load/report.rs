//! The results page: reads a run's JSON reports and writes markdown tables, the added latency of
//! each proxy over the direct call, the sidetrace / nginx ratios, the budgets of design.md 9,
//! and the cost of the gateway's features (tap, capture levels, span export, spool, replay),
//! each against a baseline measured in the same run.

use std::{fmt::Write as _, path::PathBuf, process::ExitCode};

use clap::Args;
use serde_json::Value;

#[derive(Args)]
pub struct ReportArgs {
    /// Directory of JSON reports, read in file-name order.
    dir: PathBuf,
    /// Exit 1 if any load run against one of these targets had errors (comma separated; a
    /// trailing `*` matches every target with that prefix).
    #[arg(long, value_delimiter = ',')]
    fail_on_errors: Vec<String>,
    /// Mark the figures as a quick smoke run, not a measurement.
    #[arg(long)]
    quick: bool,
}

/// The gateway variants are separate targets: `sidetrace` is the default gateway on the
/// inspected route; `sidetrace-raw` the same process on a route with no inspection; the others
/// are gateway processes of their own (capture level, trace store off, export off, collector
/// down).
const TARGET_ORDER: [&str; 9] = [
    "direct",
    "nginx",
    "floor",
    "sidetrace-raw",
    "sidetrace-none",
    "sidetrace",
    "sidetrace-redacted",
    "sidetrace-noexport",
    "sidetrace-spool",
];

pub(crate) struct Scenario {
    pub id: String,
    title: String,
    pub runs: Vec<Value>,
}

impl Scenario {
    pub fn run(&self, target: &str) -> Option<&Value> {
        self.runs.iter().find(|r| r["target"] == target)
    }
}

pub(crate) fn num(v: &Value, pointer: &str) -> Option<f64> {
    v.pointer(pointer).and_then(Value::as_f64)
}

pub(crate) fn ms(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:.3}"))
}

pub(crate) fn signed_ms(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:+.3}"))
}

pub(crate) fn mib(kib: Option<f64>) -> String {
    kib.map_or("—".into(), |k| format!("{:.1}", k / 1024.0))
}

pub(crate) fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

pub(crate) fn times(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:.2}×"))
}

fn load(dir: &PathBuf) -> Result<Vec<Scenario>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut scenarios: Vec<Scenario> = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
        let id = v["scenario"].as_str().unwrap_or("adhoc").to_string();
        match scenarios.iter_mut().find(|s| s.id == id) {
            Some(s) => s.runs.push(v),
            None => scenarios.push(Scenario {
                title: v["title"].as_str().unwrap_or("").to_string(),
                id,
                runs: vec![v],
            }),
        }
    }
    for s in &mut scenarios {
        let order = |r: &Value| {
            let t = r["target"].as_str().unwrap_or("");
            TARGET_ORDER
                .iter()
                .position(|x| *x == t)
                .unwrap_or(TARGET_ORDER.len())
        };
        s.runs.sort_by_key(order);
    }
    Ok(scenarios)
}

/// Proxy minus direct, for one figure of one scenario.
fn added(s: &Scenario, target: &str, pointer: &str) -> Option<f64> {
    if target == "direct" {
        return None;
    }
    Some(num(s.run(target)?, pointer)? - num(s.run("direct")?, pointer)?)
}

fn load_table(out: &mut String, s: &Scenario) {
    let streams = s.runs.iter().any(|r| !r["ttfb_ms"].is_null());
    let mut cols = vec!["target", "ok", "errors", "req/s"];
    let figures: &[(&str, &str)] = if streams {
        &[
            ("TTFB p50", "/ttfb_ms/p50"),
            ("TTFB p99", "/ttfb_ms/p99"),
            ("total p50", "/total_ms/p50"),
            ("total p99", "/total_ms/p99"),
        ]
    } else {
        &[
            ("p50", "/total_ms/p50"),
            ("p90", "/total_ms/p90"),
            ("p99", "/total_ms/p99"),
            ("max", "/total_ms/max"),
        ]
    };
    let has_direct = s.run("direct").is_some();
    let added_figures: &[(&str, &str)] = if !has_direct {
        &[]
    } else if streams {
        &[
            ("added TTFB p50", "/ttfb_ms/p50"),
            ("added TTFB p99", "/ttfb_ms/p99"),
            ("added total p50", "/total_ms/p50"),
            ("added total p99", "/total_ms/p99"),
        ]
    } else {
        &[
            ("added p50", "/total_ms/p50"),
            ("added p99", "/total_ms/p99"),
        ]
    };
    cols.extend(figures.iter().map(|f| f.0));
    cols.extend(added_figures.iter().map(|f| f.0));
    cols.extend([
        "from send p50",
        "from send p99",
        "proxy CPU µs/req",
        "proxy peak RSS MiB",
        "mock CPU µs/req",
        "driver lag p99",
    ]);
    let _ = writeln!(out, "| {} |", cols.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(cols.len()));
    for r in &s.runs {
        let target = r["target"].as_str().unwrap_or("?");
        let mut row = vec![
            target.to_string(),
            r["ok"].to_string(),
            r["errors"].to_string(),
            format!("{:.0}", num(r, "/achieved_rps").unwrap_or(0.0)),
        ];
        row.extend(figures.iter().map(|f| ms(num(r, f.1))));
        row.extend(
            added_figures
                .iter()
                .map(|f| signed_ms(added(s, target, f.1))),
        );
        row.push(ms(num(r, "/from_send_ms/p50")));
        row.push(ms(num(r, "/from_send_ms/p99")));
        row.push(
            num(r, "/processes/proxy/cpu_us_per_req").map_or("—".into(), |v| format!("{v:.1}")),
        );
        row.push(mib(num(r, "/processes/proxy/peak_rss_kib")));
        row.push(
            num(r, "/processes/mock/cpu_us_per_req").map_or("—".into(), |v| format!("{v:.1}")),
        );
        row.push(ms(num(r, "/send_lag_ms/p99")));
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    let (st, ng) = (s.run("sidetrace"), s.run("nginx"));
    if let (Some(st), Some(ng)) = (st, ng) {
        let lat = if streams {
            "/ttfb_ms/p50"
        } else {
            "/total_ms/p50"
        };
        let _ = writeln!(
            out,
            "\nsidetrace / nginx: throughput {}, CPU per request {}; {} p50 sidetrace − nginx: {} ms.",
            times(ratio(num(st, "/achieved_rps"), num(ng, "/achieved_rps"))),
            times(ratio(
                num(st, "/processes/proxy/cpu_us_per_req"),
                num(ng, "/processes/proxy/cpu_us_per_req")
            )),
            if streams { "TTFB" } else { "latency" },
            signed_ms(match (num(st, lat), num(ng, lat)) {
                (Some(a), Some(b)) => Some(a - b),
                _ => None,
            }),
        );
    }
    for r in &s.runs {
        if let Some(e) = r["first_error"].as_str() {
            let _ = writeln!(
                out,
                "\n{} first error: `{}`",
                r["target"].as_str().unwrap_or("?"),
                e.replace('`', "'")
            );
        }
    }
}

fn slow_table(out: &mut String, s: &Scenario, after: Option<&Scenario>) {
    let _ = writeln!(
        out,
        "| target | streams | ok | errors | TTFB p50 | TTFB p99 | total p50 | total max | proxy peak RSS MiB | proxy RSS after MiB | proxy CPU ms |"
    );
    let _ = writeln!(out, "|{}", "---|".repeat(11));
    for r in &s.runs {
        let target = r["target"].as_str().unwrap_or("?");
        let after_rss = after
            .and_then(|a| a.run(target))
            .and_then(|a| num(a, "/processes/proxy/rss_kib"));
        let _ = writeln!(
            out,
            "| {target} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r["streams"],
            r["ok"],
            r["errors"],
            ms(num(r, "/ttfb_ms/p50")),
            ms(num(r, "/ttfb_ms/p99")),
            ms(num(r, "/total_ms/p50")),
            ms(num(r, "/total_ms/max")),
            mib(num(r, "/processes/proxy/peak_rss_kib")),
            mib(after_rss),
            num(r, "/processes/proxy/cpu_ms").map_or("—".into(), |v| format!("{v:.0}")),
        );
    }
    for r in &s.runs {
        if let Some(e) = r["first_error"].as_str() {
            let _ = writeln!(
                out,
                "\n{} first error: `{}`",
                r["target"].as_str().unwrap_or("?"),
                e.replace('`', "'")
            );
        }
    }
}

fn is_load(r: &Value) -> bool {
    matches!(r["kind"].as_str(), Some("open" | "closed"))
}

/// Highest peak RSS of a target's proxy over every open- and closed-loop run (for sidetrace,
/// its runs on the raw route too: the same process).
fn peak_under_load(scenarios: &[Scenario], target: &str) -> Option<f64> {
    let same = |t: &str| t == target || (target == "sidetrace" && t == "sidetrace-raw");
    scenarios
        .iter()
        .flat_map(|s| s.runs.iter())
        .filter(|r| same(r["target"].as_str().unwrap_or("")))
        .filter(|r| is_load(r))
        .filter_map(|r| num(r, "/processes/proxy/peak_rss_kib"))
        .reduce(f64::max)
}

fn memory_table(out: &mut String, scenarios: &[Scenario]) {
    let find = |id: &str| scenarios.iter().find(|s| s.id == id);
    let (idle, slow, after) = (find("idle"), find("slow"), find("after-slow"));
    let streams = slow
        .and_then(|s| s.runs.first())
        .map_or("—".to_string(), |r| r["streams"].to_string());
    let _ = writeln!(
        out,
        "| proxy | idle RSS MiB | idle PSS MiB | peak RSS under load MiB | peak RSS with {streams} open streams MiB | RSS after the streams ended MiB | PSS after MiB |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for target in ["nginx", "sidetrace"] {
        let rss =
            |s: Option<&Scenario>, p: &str| s.and_then(|s| s.run(target)).and_then(|r| num(r, p));
        if idle.and_then(|s| s.run(target)).is_none()
            && peak_under_load(scenarios, target).is_none()
        {
            continue;
        }
        let _ = writeln!(
            out,
            "| {target} | {} | {} | {} | {} | {} | {} |",
            mib(rss(idle, "/processes/proxy/rss_kib")),
            mib(rss(idle, "/processes/proxy/pss_kib")),
            mib(peak_under_load(scenarios, target)),
            mib(rss(slow, "/processes/proxy/peak_rss_kib")),
            mib(rss(after, "/processes/proxy/rss_kib")),
            mib(rss(after, "/processes/proxy/pss_kib")),
        );
    }
}

/// One budget: what it says, what was measured, and whether it was met (None: no data).
struct Budget {
    what: String,
    measured: String,
    met: Option<bool>,
}

fn budgets(scenarios: &[Scenario]) -> Vec<Budget> {
    let find = |id: &str| scenarios.iter().find(|s| s.id == id);
    let mut list = Vec::new();
    for (id, label) in [("a1k", "1k req/s"), ("a3k", "3k req/s")] {
        let s = find(id);
        let st = s.and_then(|s| added(s, "sidetrace", "/total_ms/p50"));
        let ng = s.and_then(|s| added(s, "nginx", "/total_ms/p50"));
        list.push(Budget {
            what: format!("added latency p50 within 0.05 ms of nginx's ({label})"),
            measured: format!("sidetrace {} ms, nginx {} ms", signed_ms(st), signed_ms(ng)),
            met: st.zip(ng).map(|(a, b)| a - b <= 0.05),
        });
        let p99 = s.and_then(|s| added(s, "sidetrace", "/total_ms/p99"));
        let ng99 = s.and_then(|s| added(s, "nginx", "/total_ms/p99"));
        list.push(Budget {
            what: format!("added latency p99 < 0.5 ms ({label})"),
            measured: format!(
                "sidetrace {} ms (nginx {} ms)",
                signed_ms(p99),
                signed_ms(ng99)
            ),
            met: p99.map(|v| v < 0.5),
        });
    }
    let b = find("b");
    let st = b.and_then(|s| added(s, "sidetrace", "/ttfb_ms/p50"));
    let ng = b.and_then(|s| added(s, "nginx", "/ttfb_ms/p50"));
    list.push(Budget {
        what: "stream TTFB added p50 no more than nginx's (500/s)".into(),
        measured: format!("sidetrace {} ms, nginx {} ms", signed_ms(st), signed_ms(ng)),
        met: st.zip(ng).map(|(a, b)| a <= b),
    });
    let c = find("c");
    let tp = c.and_then(|c| {
        ratio(
            num(c.run("sidetrace")?, "/achieved_rps"),
            num(c.run("nginx")?, "/achieved_rps"),
        )
    });
    list.push(Budget {
        what: "throughput at 64 connections ≥ 90 % of nginx".into(),
        measured: times(tp),
        met: tp.map(|r| r >= 0.9),
    });
    let cpu: Vec<(String, f64)> = scenarios
        .iter()
        .filter_map(|s| {
            let (st, ng) = (s.run("sidetrace")?, s.run("nginx")?);
            if !is_load(st) {
                return None;
            }
            let r = ratio(
                num(st, "/processes/proxy/cpu_us_per_req"),
                num(ng, "/processes/proxy/cpu_us_per_req"),
            )?;
            Some((s.id.clone(), r))
        })
        .collect();
    let worst = cpu
        .iter()
        .cloned()
        .reduce(|a, b| if b.1 > a.1 { b } else { a });
    list.push(Budget {
        what: "CPU per request ≤ 1.5 × nginx (every load scenario)".into(),
        measured: if cpu.is_empty() {
            "—".into()
        } else {
            cpu.iter()
                .map(|(id, r)| format!("{id} {r:.2}×"))
                .collect::<Vec<_>>()
                .join(", ")
        },
        met: worst.map(|(_, r)| r <= 1.5),
    });
    let peak = peak_under_load(scenarios, "sidetrace");
    list.push(Budget {
        what: "sidetrace RSS < 64 MiB under load".into(),
        measured: format!("{} MiB peak", mib(peak)),
        met: peak.map(|k| k < 64.0 * 1024.0),
    });
    let slow = find("slow").and_then(|s| s.run("sidetrace")).and_then(|r| {
        Some((
            num(r, "/processes/proxy/peak_rss_kib")?,
            r["streams"].clone(),
        ))
    });
    list.push(Budget {
        what: "sidetrace RSS < 128 MiB with 1,000 open streams".into(),
        measured: slow.as_ref().map_or("—".into(), |(k, n)| {
            format!("{} MiB peak with {n} streams", mib(Some(*k)))
        }),
        met: slow.map(|(k, _)| k < 128.0 * 1024.0),
    });
    list
}

/// The headline comparison with nginx (issue 16's table), once per placement the run measured:
/// every process on every CPU (scenario ids as they are), and pinned (`run.sh --pin`: ids with
/// `-pin`, the proxy on one CPU, the driver and the mock on the other).
fn headline(out: &mut String, scenarios: &[Scenario]) {
    let find = |id: &str| scenarios.iter().find(|s| s.id == id);
    for (suffix, placement) in [
        ("", "every process on every CPU"),
        (
            "-pin",
            "pinned: the proxy on CPU 0, the driver, the mock and the OTLP sink on CPU 1",
        ),
    ] {
        let (a1, a3, b, c) = (
            find(&format!("a1k{suffix}")),
            find(&format!("a3k{suffix}")),
            find(&format!("b{suffix}")),
            find(&format!("c{suffix}")),
        );
        if [a1, a3, b, c].iter().all(Option::is_none) {
            continue;
        }
        let _ = writeln!(out, "\n#### {placement}\n");
        let _ = writeln!(
            out,
            "| figure | nginx | floor (bare hyper) | sidetrace | sidetrace vs nginx | floor vs nginx |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        let rate = |s: Option<&Scenario>| {
            s.and_then(|s| s.runs.first())
                .and_then(|r| num(r, "/rate"))
                .map_or("—".into(), |r| format!("{r:.0}/s"))
        };
        let lat = |label: String, s: Option<&Scenario>, pointer: &str| {
            let [ng, fl, st] =
                ["nginx", "floor", "sidetrace"].map(|t| s.and_then(|s| added(s, t, pointer)));
            let diff = |a: Option<f64>| match (a, ng) {
                (Some(a), Some(b)) => format!("{:+.3} ms", a - b),
                _ => "—".into(),
            };
            format!(
                "| {label} | {} ms | {} ms | {} ms | {} | {} |",
                signed_ms(ng),
                signed_ms(fl),
                signed_ms(st),
                diff(st),
                diff(fl)
            )
        };
        let fig = |s: Option<&Scenario>, t: &str, p: &str| s.and_then(|s| num(s.run(t)?, p));
        let per_req =
            |label: String, s: Option<&Scenario>, pointer: &str, fmt: fn(f64) -> String| {
                let [ng, fl, st] = ["nginx", "floor", "sidetrace"].map(|t| fig(s, t, pointer));
                format!(
                    "| {label} | {} | {} | {} | {} | {} |",
                    ng.map_or("—".into(), fmt),
                    fl.map_or("—".into(), fmt),
                    st.map_or("—".into(), fmt),
                    times(ratio(st, ng)),
                    times(ratio(fl, ng))
                )
            };
        let cpu = "/processes/proxy/cpu_us_per_req";
        let conns = c
            .and_then(|s| s.runs.first())
            .map_or("—".into(), |r| r["connections"].to_string());
        for row in [
            lat(format!("added p50, {}", rate(a1)), a1, "/total_ms/p50"),
            lat(format!("added p50, {}", rate(a3)), a3, "/total_ms/p50"),
            lat(format!("added p99, {}", rate(a3)), a3, "/total_ms/p99"),
            lat(
                format!("stream TTFB added p50, {}", rate(b)),
                b,
                "/ttfb_ms/p50",
            ),
            per_req(
                format!("CPU per request, {conns} connections"),
                c,
                cpu,
                |v| format!("{v:.1} µs"),
            ),
            per_req(format!("CPU per request, {}", rate(a3)), a3, cpu, |v| {
                format!("{v:.1} µs")
            }),
            per_req(
                format!("max throughput, {conns} connections"),
                c,
                "/achieved_rps",
                |v| format!("{v:.0} req/s"),
            ),
        ] {
            let _ = writeln!(out, "{row}");
        }
        let peak = |t: &str| {
            [a1, a3, b, c]
                .into_iter()
                .flatten()
                .filter_map(|s| fig(Some(s), t, "/processes/proxy/peak_rss_kib"))
                .reduce(f64::max)
        };
        let _ = writeln!(
            out,
            "| peak RSS under load | {} MiB | {} MiB | {} MiB | {} | {} |",
            mib(peak("nginx")),
            mib(peak("floor")),
            mib(peak("sidetrace")),
            times(ratio(peak("sidetrace"), peak("nginx"))),
            times(ratio(peak("floor"), peak("nginx")))
        );
    }
}

pub fn main(args: ReportArgs) -> Result<ExitCode, String> {
    let scenarios = load(&args.dir)?;
    let mut out = String::new();
    if args.quick {
        let _ = writeln!(
            out,
            "> Quick smoke run: low rates and ~1 s scenarios. These figures check that the bench works; they measure nothing.\n"
        );
    }
    let _ = writeln!(out, "### Budgets (design.md section 9)\n");
    let _ = writeln!(out, "| budget | measured | verdict |\n|---|---|---|");
    for b in budgets(&scenarios) {
        let verdict = match b.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "no data",
        };
        let _ = writeln!(out, "| {} | {} | {verdict} |", b.what, b.measured);
    }
    let _ = writeln!(
        out,
        "\n### sidetrace and nginx side by side (span export on)\n\nAdded latency = the \
         proxy's percentile minus the direct call's, same scenario, same placement. The floor is \
         bench-floor, a hyper reverse proxy that does nothing of its own: what hyper and tokio \
         cost before any gateway work.",
    );
    headline(&mut out, &scenarios);
    let _ = writeln!(out, "\n### Memory\n");
    memory_table(&mut out, &scenarios);
    crate::features::write(&mut out, &scenarios);
    let after = scenarios.iter().find(|s| s.id == "after-slow");
    for s in &scenarios {
        let kind = s
            .runs
            .first()
            .and_then(|r| r["kind"].as_str())
            .unwrap_or("");
        match kind {
            "open" | "closed" => {
                let _ = writeln!(out, "\n### {}: {}\n", s.id, s.title);
                load_table(&mut out, s);
            }
            "slow" => {
                let _ = writeln!(out, "\n### {}: {}\n", s.id, s.title);
                slow_table(&mut out, s, after);
            }
            _ => {}
        }
    }
    print!("{out}");

    // A plain summary for the terminal and CI logs.
    let mut failed = Vec::new();
    for s in &scenarios {
        for r in s.runs.iter().filter(|r| r["kind"] != "snapshot") {
            let target = r["target"].as_str().unwrap_or("?");
            let errors = r["errors"].as_u64().unwrap_or(0);
            eprintln!(
                "{:<11} {:<10} ok {:>7} errors {:>5}  p50 {:>8} ms  p99 {:>8} ms",
                s.id,
                target,
                r["ok"],
                errors,
                ms(num(r, "/total_ms/p50")),
                ms(num(r, "/total_ms/p99")),
            );
            let watched = |t: &String| match t.strip_suffix('*') {
                Some(prefix) => target.starts_with(prefix),
                None => t == target,
            };
            if errors > 0 && args.fail_on_errors.iter().any(watched) {
                failed.push(format!("{} {target}: {errors} errors", s.id));
            }
        }
    }
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("FAILED: {}", failed.join("; "));
        Ok(ExitCode::from(1))
    }
}
