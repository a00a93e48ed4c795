//! Optional tail sampling in the gateway (off by default: 100% of spans are exported). Spans
//! wait per trace until the trace has been idle for `decision_wait_ms`; then the whole trace is
//! kept if any span failed, was slower than the latency threshold or cost more than the cost
//! threshold, and otherwise with probability `keep_fraction`, decided from the trace id so that
//! every replica decides the same. Never head-samples on the request alone.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

pub use crate::config::SamplingConfig;
use crate::trace::span::{AttrValue, SpanRecord, SpanStatus};

struct Pending {
    spans: Vec<SpanRecord>,
    last_seen: Instant,
    interesting: bool,
}

/// What a decision round produced.
#[derive(Default)]
pub struct Decided {
    pub kept: Vec<SpanRecord>,
    pub kept_traces: u64,
    pub dropped_traces: u64,
    pub dropped_spans: u64,
}

pub struct TailSampler {
    cfg: SamplingConfig,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    traces: HashMap<[u8; 16], Pending>,
    /// Set by [`TailSampler::close`]: a span offered after the last decision is handed back,
    /// never held where no decision comes.
    closed: bool,
}

impl TailSampler {
    pub fn new(cfg: SamplingConfig) -> TailSampler {
        TailSampler {
            cfg,
            held: Mutex::default(),
        }
    }

    pub fn decision_wait(&self) -> Duration {
        Duration::from_millis(self.cfg.decision_wait_ms)
    }

    fn interesting(&self, span: &SpanRecord) -> bool {
        if self.cfg.keep_errors && matches!(span.status, SpanStatus::Error(_)) {
            return true;
        }
        let millis = span.end_unix_nanos.saturating_sub(span.start_unix_nanos) / 1_000_000;
        if self.cfg.latency_threshold_ms > 0 && millis >= self.cfg.latency_threshold_ms {
            return true;
        }
        if self.cfg.cost_threshold_usd > 0.0
            && let Some(AttrValue::Double(cost)) = span.attr("cost.usd")
        {
            return *cost >= self.cfg.cost_threshold_usd;
        }
        false
    }

    /// Holds a span until its trace is decided; returns it back when the sampler is full or
    /// closed.
    pub fn offer(&self, span: SpanRecord) -> Option<SpanRecord> {
        let interesting = self.interesting(&span);
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.closed {
            return Some(span);
        }
        let traces = &mut held.traces;
        if let Some(p) = traces.get_mut(&span.trace_id) {
            p.spans.push(span);
            p.last_seen = Instant::now();
            p.interesting |= interesting;
            return None;
        }
        if traces.len() >= self.cfg.max_traces {
            return Some(span);
        }
        traces.insert(
            span.trace_id,
            Pending {
                spans: vec![span],
                last_seen: Instant::now(),
                interesting,
            },
        );
        None
    }

    /// Decides every trace idle for the decision wait (all of them when `everything`).
    pub fn decide(&self, now: Instant, everything: bool) -> Decided {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        self.decide_held(&mut held.traces, now, everything)
    }

    /// The last decision (at shutdown): every trace held is decided, and from now on `offer`
    /// hands every span back.
    pub fn close(&self) -> Decided {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.closed = true;
        self.decide_held(&mut held.traces, Instant::now(), true)
    }

    fn decide_held(
        &self,
        traces: &mut HashMap<[u8; 16], Pending>,
        now: Instant,
        everything: bool,
    ) -> Decided {
        let wait = self.decision_wait();
        let ready: Vec<[u8; 16]> = traces
            .iter()
            .filter(|(_, p)| everything || now.duration_since(p.last_seen) >= wait)
            .map(|(id, _)| *id)
            .collect();
        let mut out = Decided::default();
        for id in ready {
            let Some(p) = traces.remove(&id) else {
                continue;
            };
            if p.interesting || keep_by_id(&id, self.cfg.keep_fraction) {
                out.kept_traces += 1;
                out.kept.extend(p.spans);
            } else {
                out.dropped_traces += 1;
                out.dropped_spans += p.spans.len() as u64;
            }
        }
        out
    }
}

/// The same answer for the same trace on every replica: the trace id's low 8 bytes are random
/// (or a hash) and compared with the fraction.
fn keep_by_id(id: &[u8; 16], fraction: f64) -> bool {
    if fraction >= 1.0 {
        return true;
    }
    if fraction <= 0.0 {
        return false;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&id[8..]);
    (u64::from_be_bytes(low) as f64) < fraction * (u64::MAX as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(trace: u8, error: bool, millis: u64) -> SpanRecord {
        SpanRecord {
            trace_id: [trace; 16],
            span_id: [trace; 8],
            start_unix_nanos: 0,
            end_unix_nanos: millis * 1_000_000,
            status: if error {
                SpanStatus::Error("x".into())
            } else {
                SpanStatus::Unset
            },
            ..SpanRecord::with_attributes(Vec::new())
        }
    }

    fn sampler(fraction: f64) -> TailSampler {
        TailSampler::new(SamplingConfig {
            enabled: true,
            decision_wait_ms: 0,
            latency_threshold_ms: 1000,
            keep_fraction: fraction,
            ..SamplingConfig::default()
        })
    }

    #[test]
    fn errors_and_slow_traces_are_kept_and_the_rest_follow_the_fraction() {
        let s = sampler(0.0);
        for sp in [
            span(1, true, 5),
            span(2, false, 2000),
            span(3, false, 5),
            span(3, false, 6),
        ] {
            assert!(s.offer(sp).is_none());
        }
        let d = s.decide(Instant::now(), false);
        assert_eq!(
            (d.kept_traces, d.dropped_traces, d.dropped_spans),
            (2, 1, 2)
        );
        let s = sampler(1.0);
        s.offer(span(3, false, 5));
        assert_eq!(s.decide(Instant::now(), false).kept.len(), 1);
    }

    #[test]
    fn one_error_keeps_the_whole_trace() {
        let s = sampler(0.0);
        s.offer(span(7, false, 5));
        s.offer(span(7, true, 5));
        assert_eq!(s.decide(Instant::now(), false).kept.len(), 2);
    }

    #[test]
    fn a_trace_is_not_decided_before_it_has_been_idle() {
        let s = TailSampler::new(SamplingConfig {
            enabled: true,
            decision_wait_ms: 60_000,
            ..SamplingConfig::default()
        });
        s.offer(span(1, false, 5));
        assert_eq!(
            s.decide(Instant::now(), false).kept.len()
                + s.decide(Instant::now(), false).dropped_spans as usize,
            0
        );
        assert_eq!(
            s.decide(Instant::now(), true).kept_traces
                + s.decide(Instant::now(), true).dropped_traces,
            1
        );
    }

    #[test]
    fn the_fraction_decision_depends_only_on_the_trace_id() {
        let ids: Vec<[u8; 16]> = (0..1000u32)
            .map(|i| {
                let mut id = [0u8; 16];
                id[8..].copy_from_slice(&crate::trace::context::random_span_id());
                id[0..4].copy_from_slice(&i.to_be_bytes());
                id
            })
            .collect();
        let kept = ids.iter().filter(|id| keep_by_id(id, 0.25)).count();
        assert!((150..350).contains(&kept), "{kept}");
        assert!(
            ids.iter()
                .all(|id| keep_by_id(id, 0.25) == keep_by_id(id, 0.25))
        );
    }

    #[test]
    fn a_closed_sampler_decides_what_it_held_and_hands_later_spans_back() {
        let s = TailSampler::new(SamplingConfig {
            enabled: true,
            decision_wait_ms: 60_000,
            keep_fraction: 1.0,
            ..SamplingConfig::default()
        });
        assert!(s.offer(span(1, false, 5)).is_none());
        assert_eq!(s.close().kept.len(), 1);
        // A call that finished after the last decision: nothing would ever decide it here.
        assert!(s.offer(span(1, false, 5)).is_some());
        assert!(s.offer(span(2, false, 5)).is_some());
        assert_eq!(s.decide(Instant::now(), true).kept.len(), 0);
    }

    #[test]
    fn a_full_sampler_hands_spans_back_to_be_kept() {
        let s = TailSampler::new(SamplingConfig {
            enabled: true,
            max_traces: 1,
            ..SamplingConfig::default()
        });
        assert!(s.offer(span(1, false, 5)).is_none());
        assert!(s.offer(span(2, false, 5)).is_some());
    }
}
