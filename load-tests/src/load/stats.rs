//! Percentiles of a run's samples. Sample counts are bounded, so an exact sort beats a histogram.

use serde_json::{Value, json};

/// The value below which a fraction `q` of the sorted samples lie (nearest rank).
fn rank(sorted: &[u64], q: f64) -> u64 {
    let n = sorted.len();
    let r = ((q * n as f64).ceil() as usize).clamp(1, n);
    sorted[r - 1]
}

fn ms(ns: u64) -> f64 {
    // Microsecond resolution: finer is noise on a shared machine.
    (ns as f64 / 1e3).round() / 1e3
}

/// p50 / p90 / p99 / p99.9 / max / mean in milliseconds, or null when there is no sample.
pub fn summary(mut ns: Vec<u64>) -> Value {
    if ns.is_empty() {
        return Value::Null;
    }
    ns.sort_unstable();
    let mean = ns.iter().map(|&v| v as f64).sum::<f64>() / ns.len() as f64;
    json!({
        "p50": ms(rank(&ns, 0.50)),
        "p90": ms(rank(&ns, 0.90)),
        "p99": ms(rank(&ns, 0.99)),
        "p999": ms(rank(&ns, 0.999)),
        "max": ms(*ns.last().unwrap_or(&0)),
        "mean": ms(mean as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).map(|i| i * 1_000_000).collect();
        let s = summary(v);
        assert_eq!(s["p50"], 50.0);
        assert_eq!(s["p99"], 99.0);
        assert_eq!(s["max"], 100.0);
        assert_eq!(summary(vec![]), Value::Null);
        assert_eq!(summary(vec![1_500])["p50"], 0.002);
    }
}
