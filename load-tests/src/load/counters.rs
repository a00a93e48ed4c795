//! Counters read over HTTP from the processes under test: the gateway's Prometheus page
//! (`/metrics` on its admin listener) and the OTLP sink's `/stats` (same text format). Used to
//! turn export, spool and replay counters into rates, and to watch a spool drain.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use clap::Args;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::{Map, Value, json};

/// Metric families kept in the reports; the rest of a metrics page (latency histograms, per
/// provider call counts) is not needed to compute the feature figures.
const KEPT: [&str; 6] = [
    "sidetrace_spans_",
    "sidetrace_store_spans_",
    "sidetrace_spool_",
    "sidetrace_export_attempts",
    "sidetrace_active_calls",
    "bench_sink_",
];

/// `NAME=URL`: a page of counters to read before and after a run.
#[derive(Clone, Debug)]
pub struct Source {
    pub name: String,
    pub uri: Uri,
}

impl std::str::FromStr for Source {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, url) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected NAME=URL"))?;
        if name.is_empty() {
            return Err(format!("{s:?}: expected NAME=URL"));
        }
        Ok(Source {
            name: name.to_string(),
            uri: crate::loopback_uri(url)?,
        })
    }
}

pub type Page = BTreeMap<String, f64>;

/// Parses the Prometheus text format, summing the label sets of each metric name, and keeps
/// the families of `KEPT`.
pub fn parse(text: &str) -> Page {
    let mut page = Page::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => (&line[..i], &line[i..]),
            None => continue,
        };
        if !KEPT.iter().any(|k| name.starts_with(k)) {
            continue;
        }
        // The value follows the closing brace of the labels (label values may hold spaces).
        let after_labels = match rest.strip_prefix('{') {
            Some(r) => match r.rfind('}') {
                Some(i) => &r[i + 1..],
                None => continue,
            },
            None => rest,
        };
        if let Some(v) = after_labels
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *page.entry(name.to_string()).or_default() += v;
        }
    }
    page
}

pub struct Reader {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Reader {
    pub fn new() -> Reader {
        Reader {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(4)
                .build(HttpConnector::new()),
        }
    }

    /// One page, or an error string (a sink not started yet is a normal case for the caller).
    pub async fn read(&self, uri: &Uri) -> Result<Page, String> {
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = uri.clone();
        let fetch = async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            if !status.is_success() {
                return Err(format!("{uri}: status {status}"));
            }
            Ok(parse(&String::from_utf8_lossy(&body)))
        };
        tokio::time::timeout(Duration::from_secs(5), fetch)
            .await
            .map_err(|_| format!("{uri}: no answer within 5 s"))?
    }

    /// Every source, each `Some(page)` or `None` when it could not be read.
    pub async fn read_all(&self, sources: &[Source]) -> Vec<Option<Page>> {
        let mut pages = Vec::with_capacity(sources.len());
        for s in sources {
            pages.push(self.read(&s.uri).await.ok());
        }
        pages
    }
}

pub fn page_json(p: &Option<Page>) -> Value {
    match p {
        Some(p) => json!(p),
        None => Value::Null,
    }
}

/// `after - before` for every name in `after` (names missing before count from zero).
pub fn delta(before: &Option<Page>, after: &Option<Page>) -> Value {
    let (Some(b), Some(a)) = (before, after) else {
        return Value::Null;
    };
    let m: Map<String, Value> = a
        .iter()
        .map(|(k, v)| (k.clone(), json!(v - b.get(k).copied().unwrap_or(0.0))))
        .collect();
    Value::Object(m)
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Args)]
pub struct ReplayArgs {
    /// The gateway's metrics page, e.g. http://127.0.0.1:4001/metrics.
    #[arg(long)]
    metrics: String,
    /// Give up after this many seconds if the spool has not drained.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Poll interval, in ms.
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
    /// Created (empty) as soon as the replayed counter first rises, for the caller to start
    /// the load that runs during the replay.
    #[arg(long)]
    started_file: Option<PathBuf>,
    #[command(flatten)]
    labels: crate::Labels,
}

fn get(p: &Page, name: &str) -> f64 {
    p.get(name).copied().unwrap_or(0.0)
}

/// Watches a spool drain: from now (the collector just came up) until `sidetrace_spool_items`
/// is 0 after the replay began, or the timeout. Reports the wait before the first replayed
/// span (the replayer's backoff) and the replay rate, in spans per second.
pub fn replay_watch(args: ReplayArgs) -> Result<std::process::ExitCode, String> {
    let uri = crate::loopback_uri(&args.metrics)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let reader = Reader::new();
    let t0 = Instant::now();
    let t0_unix = unix_ms();
    let deadline = t0 + Duration::from_secs_f64(args.timeout.clamp(0.1, 3600.0));
    let interval = Duration::from_millis(args.interval_ms.clamp(10, 10_000));
    let first = rt.block_on(reader.read(&uri))?;
    let secs = |t: Instant| ((t - t0).as_secs_f64() * 1000.0).round() / 1000.0;
    // The last poll before the replayed counter rose, and the poll that saw it rise.
    let mut before_rise: (Instant, Page) = (t0, first.clone());
    let mut rise: Option<(Instant, Page, u64)> = None;
    let mut drained: Option<(Instant, Page, u64)> = None;
    let mut last = first.clone();
    let mut polls = 1u64;
    let mut max_items = get(&first, "sidetrace_spool_items");
    while Instant::now() < deadline {
        std::thread::sleep(interval);
        let now = Instant::now();
        let page = match rt.block_on(reader.read(&uri)) {
            Ok(p) => p,
            Err(_) => continue,
        };
        polls += 1;
        max_items = max_items.max(get(&page, "sidetrace_spool_items"));
        let replayed = get(&page, "sidetrace_spans_replayed_total");
        if rise.is_none() {
            if replayed > get(&first, "sidetrace_spans_replayed_total") {
                rise = Some((now, page.clone(), unix_ms()));
                if let Some(f) = &args.started_file {
                    std::fs::write(f, b"")
                        .map_err(|e| format!("cannot write {}: {e}", f.display()))?;
                }
            } else {
                before_rise = (now, page.clone());
            }
        }
        last = page.clone();
        if rise.is_some() && get(&page, "sidetrace_spool_items") == 0.0 {
            drained = Some((now, page, unix_ms()));
            break;
        }
    }
    let replayed_total = get(&last, "sidetrace_spans_replayed_total")
        - get(&first, "sidetrace_spans_replayed_total");
    let (replay_s, rate) = match &drained {
        Some((t, p, _)) => {
            // From the last poll that saw nothing replayed: the replay began after it, so the
            // duration is an upper bound and the rate a lower bound.
            let d = (*t - before_rise.0).as_secs_f64();
            let n = get(p, "sidetrace_spans_replayed_total")
                - get(&before_rise.1, "sidetrace_spans_replayed_total");
            (Some(d), (d > 0.0).then(|| n / d))
        }
        None => (None, None),
    };
    let error = if rise.is_none() {
        Some(format!(
            "nothing was replayed within {:.0} s (spool items {})",
            args.timeout,
            get(&last, "sidetrace_spool_items")
        ))
    } else if drained.is_none() {
        Some(format!(
            "the spool did not drain within {:.0} s ({} items left)",
            args.timeout,
            get(&last, "sidetrace_spool_items")
        ))
    } else {
        None
    };
    let mut report = crate::head(&args.labels, "replay");
    let fields = json!({
        "metrics": args.metrics,
        "timeout_s": args.timeout,
        "polls": polls,
        "collector_up_unix_ms": t0_unix,
        "first_replay_unix_ms": rise.as_ref().map(|r| r.2),
        "drained_unix_ms": drained.as_ref().map(|d| d.2),
        "wait_s": rise.as_ref().map(|_| secs(before_rise.0)),
        "first_replay_seen_s": rise.as_ref().map(|r| secs(r.0)),
        "drained_s": drained.as_ref().map(|d| secs(d.0)),
        "replay_s": replay_s.map(|d| (d * 1000.0).round() / 1000.0),
        "replayed_spans": replayed_total,
        "replay_spans_per_s": rate.map(f64::round),
        "spool_items_start": get(&first, "sidetrace_spool_items"),
        "spool_items_max": max_items,
        "spool_items_end": get(&last, "sidetrace_spool_items"),
        "first": first,
        "last": last,
        "ok": if error.is_none() { 1 } else { 0 },
        "errors": if error.is_none() { 0 } else { 1 },
        "first_error": error,
    });
    if let Value::Object(f) = fields {
        report.extend(f);
    }
    crate::write(&args.labels, Value::Object(report))?;
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_is_summed_over_labels() {
        let text = "# HELP sidetrace_spans_dropped Spans lost\n\
            # TYPE sidetrace_spans_dropped counter\n\
            sidetrace_spans_dropped_total{reason=\"queue_full\"} 3\n\
            sidetrace_spans_dropped_total{reason=\"a b}\"} 4\n\
            sidetrace_spans_spooled_total 512\n\
            sidetrace_spool_items 2\n\
            sidetrace_requests_total{provider=\"openai\"} 9\n\
            bench_sink_trace_bytes_total 1.5e3\n\
            # EOF\n";
        let p = parse(text);
        assert_eq!(p["sidetrace_spans_dropped_total"], 7.0);
        assert_eq!(p["sidetrace_spans_spooled_total"], 512.0);
        assert_eq!(p["sidetrace_spool_items"], 2.0);
        assert_eq!(p["bench_sink_trace_bytes_total"], 1500.0);
        assert!(!p.contains_key("sidetrace_requests_total"));
    }

    #[test]
    fn sources_are_loopback_only() {
        assert!("gw=http://127.0.0.1:4001/metrics".parse::<Source>().is_ok());
        assert!("gw=http://10.0.0.1:4001/metrics".parse::<Source>().is_err());
        assert!("http://127.0.0.1:4001/metrics".parse::<Source>().is_err());
    }
}
