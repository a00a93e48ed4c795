//! What the writer keeps in memory: traces still taking spans, and the rows it writes for
//! them.
//!
//! A trace's spans usually arrive within seconds of each other (the gateway's call, then the
//! app's batch of spans, then the tool spans). Keeping the trace open in memory until it has
//! been quiet for a while means its row is written once, not once per span, and in about the
//! order the traces started: the time index then grows at its end.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::{Duration, Instant},
};

use super::{TraceSummary, codec, id_hash::IdHash, log::Pointer, tags::Tags};

/// A trace with no new span for this long is written and let go of.
pub(super) const SEAL_IDLE: Duration = Duration::from_secs(5);
/// Open traces at most; past it the ones quiet the longest are written first.
pub(super) const OPEN_MAX: usize = 4096;
/// A trace open this long is written even while it still takes spans (and opened again by
/// the next): this bounds what a replay after a crash reads back.
pub(super) const OPEN_LONGEST: Duration = Duration::from_secs(60);

/// A trace still taking spans.
#[derive(Debug, Clone)]
pub(super) struct OpenTrace {
    pub summary: TraceSummary,
    /// Its spans, in arrival order.
    pub spans: Vec<([u8; 8], Pointer)>,
    /// Their ids, once there are many (a few are searched in `spans`).
    span_ids: Option<HashSet<[u8; 8]>>,
    /// Its row as written before (a span came after it was written): replaced when written
    /// again. Boxed: most open traces have none, and the summary is 304 bytes (an open trace
    /// 440 with the box, 736 without; up to [`OPEN_MAX`] of them).
    pub written: Option<Box<TraceSummary>>,
    /// Where its first span since it was opened is in the span files: a replay after a crash
    /// reads from the earliest of these.
    pub first_new: Option<Pointer>,
    opened: Instant,
    touched: Instant,
}

/// Up to this many spans, a trace's span ids are searched in its list.
const FEW_SPANS: usize = 32;

impl OpenTrace {
    /// A new trace, opened `now`.
    pub fn new(trace_id: [u8; 16], now: Instant) -> OpenTrace {
        OpenTrace {
            summary: TraceSummary::new(trace_id),
            spans: Vec::new(),
            span_ids: None,
            written: None,
            first_new: None,
            opened: now,
            touched: now,
        }
    }

    /// Opened again from its written row.
    pub fn reopened(row: TraceRow, now: Instant) -> OpenTrace {
        let mut trace = OpenTrace::new(row.summary.trace_id, now);
        trace.summary = row.summary.clone();
        trace.written = Some(Box::new(row.summary));
        for (id, p) in row.spans {
            trace.add_span(id, p);
        }
        trace.first_new = None;
        trace
    }

    /// Adds a span; false (and nothing added) when the trace has one with that id already.
    pub fn add_span(&mut self, id: [u8; 8], p: Pointer) -> bool {
        let known = match &mut self.span_ids {
            Some(ids) => !ids.insert(id),
            None => self.spans.iter().any(|(have, _)| *have == id),
        };
        if known {
            return false;
        }
        self.spans.push((id, p));
        self.first_new.get_or_insert(p);
        if self.span_ids.is_none() && self.spans.len() > FEW_SPANS {
            self.span_ids = Some(self.spans.iter().map(|(id, _)| *id).collect());
        }
        true
    }

    #[cfg(test)]
    pub fn row(&self) -> TraceRow {
        TraceRow {
            summary: self.summary.clone(),
            spans: self.spans.clone(),
        }
    }
}

/// The open traces, by id, and the order they were last given spans in.
#[derive(Debug, Default)]
pub(super) struct OpenTraces {
    /// Boxed: an open trace is about 900 bytes, and the map keeps its largest capacity (8,192
    /// slots once past [`OPEN_MAX`]) after the traces are written.
    traces: HashMap<[u8; 16], Box<OpenTrace>, IdHash>,
    /// Each time a trace took spans, oldest first. An entry older than its trace's `touched`
    /// is stale (the trace took spans again since) and skipped.
    touches: VecDeque<(Instant, [u8; 16])>,
}

impl OpenTraces {
    pub fn len(&self) -> usize {
        self.traces.len()
    }

    pub fn get(&self, id: &[u8; 16]) -> Option<&OpenTrace> {
        self.traces.get(id).map(|t| &**t)
    }

    pub fn get_mut(&mut self, id: &[u8; 16]) -> Option<&mut OpenTrace> {
        self.traces.get_mut(id).map(|t| &mut **t)
    }

    pub fn contains_key(&self, id: &[u8; 16]) -> bool {
        self.traces.contains_key(id)
    }

    pub fn values(&self) -> impl Iterator<Item = &OpenTrace> {
        self.traces.values().map(|t| &**t)
    }

    pub fn keys(&self) -> impl Iterator<Item = &[u8; 16]> {
        self.traces.keys()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8; 16], &OpenTrace)> {
        self.traces.iter().map(|(id, t)| (id, &**t))
    }

    pub fn remove(&mut self, id: &[u8; 16]) -> Option<OpenTrace> {
        self.traces.remove(id).map(|t| *t)
    }

    /// The trace `id`, made by `make` when not open; marked as given spans `now`.
    pub fn touch(
        &mut self,
        id: [u8; 16],
        now: Instant,
        make: impl FnOnce() -> OpenTrace,
    ) -> &mut OpenTrace {
        self.touches.push_back((now, id));
        let trace = self.traces.entry(id).or_insert_with(|| Box::new(make()));
        trace.touched = now;
        trace
    }

    /// Takes out the traces due to be written: quiet for [`SEAL_IDLE`], open for
    /// [`OPEN_LONGEST`], and past `keep` open traces the ones quiet the longest.
    /// Boxed as they were kept: a seal sorts them, and moving 900 bytes a trace showed.
    #[allow(clippy::vec_box)]
    pub fn take_due(&mut self, now: Instant, keep: usize) -> Vec<Box<OpenTrace>> {
        let mut due = Vec::new();
        while let Some(&(at, id)) = self.touches.front() {
            if self.traces.get(&id).map(|t| t.touched) != Some(at) {
                self.touches.pop_front();
                continue;
            }
            if self.traces.len() <= keep && now.duration_since(at) < SEAL_IDLE {
                break;
            }
            self.touches.pop_front();
            due.extend(self.traces.remove(&id));
        }
        let long_open: Vec<[u8; 16]> = self
            .traces
            .iter()
            .filter(|(_, t)| now.duration_since(t.opened) >= OPEN_LONGEST)
            .map(|(id, _)| *id)
            .collect();
        for id in long_open {
            due.extend(self.traces.remove(&id));
        }
        due
    }

    /// Takes out every open trace (boxed, as [`OpenTraces::take_due`]).
    #[allow(clippy::vec_box)]
    pub fn take_all(&mut self) -> Vec<Box<OpenTrace>> {
        self.touches.clear();
        self.traces.drain().map(|(_, t)| t).collect()
    }

    /// Puts back a trace that could not be written.
    pub fn put_back(&mut self, trace: Box<OpenTrace>) {
        self.touches
            .push_back((trace.touched, trace.summary.trace_id));
        self.traces.insert(trace.summary.trace_id, trace);
    }
}

/// A written trace: its summary and where its spans are. Encoded as the span count (4 bytes),
/// each span's id and pointer (8 + 16 bytes), then the summary's JSON, so a list reads the
/// summary without decoding the pointers.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TraceRow {
    pub summary: TraceSummary,
    pub spans: Vec<([u8; 8], Pointer)>,
}

const SPAN_ENTRY: usize = 8 + Pointer::LEN;

impl TraceRow {
    pub fn encode(&self) -> Vec<u8> {
        TraceRow::encode_parts(&self.summary, &self.spans)
    }

    /// A row's encoding from its parts.
    pub fn encode_parts(summary: &TraceSummary, spans: &[([u8; 8], Pointer)]) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + spans.len() * SPAN_ENTRY + 512);
        out.extend_from_slice(&(spans.len() as u32).to_be_bytes());
        for (id, p) in spans {
            out.extend_from_slice(id);
            out.extend_from_slice(&p.encode());
        }
        codec::encode_summary(summary, &mut out);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<TraceRow> {
        let (n, rest) = split_count(bytes)?;
        let (entries, summary) = rest.split_at_checked(n * SPAN_ENTRY)?;
        let spans = entries
            .chunks_exact(SPAN_ENTRY)
            .map(|e| {
                let id: [u8; 8] = e[..8].try_into().ok()?;
                Some((id, Pointer::decode(&e[8..])?))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(TraceRow {
            summary: codec::decode_summary(summary)?,
            spans,
        })
    }

    /// Only the summary of an encoded row.
    pub fn decode_summary(bytes: &[u8]) -> Option<TraceSummary> {
        let (n, rest) = split_count(bytes)?;
        codec::decode_summary(rest.get(n.checked_mul(SPAN_ENTRY)?..)?)
    }
}

impl TraceRow {
    /// The feature, user and session ids of an encoded row (its summary read for just these).
    pub fn decode_tags(bytes: &[u8]) -> Tags {
        let tags = split_count(bytes)
            .and_then(|(n, rest)| rest.get(n.checked_mul(SPAN_ENTRY)?..))
            .and_then(codec::decode_tags);
        tags.map_or_else(Tags::default, |[feature, user, session]| {
            Tags::of(feature.as_deref(), user.as_deref(), session.as_deref())
        })
    }

    /// Where each span of an encoded row is, without decoding its summary.
    pub fn span_pointers(bytes: &[u8]) -> impl Iterator<Item = Pointer> + '_ {
        let (n, rest) = split_count(bytes).unwrap_or((0, &[]));
        rest.chunks_exact(SPAN_ENTRY)
            .take(n)
            .filter_map(|e| Pointer::decode(&e[8..]))
    }
}

fn split_count(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let (n, rest) = bytes.split_first_chunk::<4>()?;
    Some((u32::from_be_bytes(*n) as usize, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_trace_holds_one_summary_inline() {
        // Up to OPEN_MAX of them stay in memory; the row as written before is boxed.
        assert!(std::mem::size_of::<OpenTrace>() < 2 * std::mem::size_of::<TraceSummary>());
    }

    #[test]
    fn rows_round_trip_and_the_summary_reads_alone() {
        let mut summary = TraceSummary::new([7; 16]);
        summary.bytes = 42;
        let p = Pointer {
            segment: 3,
            offset: 9,
            len: 100,
        };
        let row = TraceRow {
            summary: summary.clone(),
            spans: vec![([1; 8], p), ([2; 8], p)],
        };
        let bytes = row.encode();
        assert_eq!(TraceRow::decode(&bytes), Some(row));
        assert_eq!(TraceRow::decode_summary(&bytes), Some(summary));
        assert_eq!(TraceRow::decode(&bytes[..10]), None);
        assert_eq!(TraceRow::decode_summary(&[0, 0, 0, 9, b'{']), None);
    }

    #[test]
    fn quiet_traces_and_the_excess_are_written_quietest_first() {
        let now = Instant::now();
        let mut open = OpenTraces::default();
        for i in 0..4u8 {
            open.touch([i; 16], now + Duration::from_secs(u64::from(i)), || {
                OpenTrace::new([i; 16], Instant::now())
            });
        }
        // Trace 0 takes spans again last: its first entry is stale.
        let last = now + Duration::from_secs(4);
        open.touch([0; 16], last, || unreachable!("open already"));
        let ids = |due: Vec<Box<OpenTrace>>| -> Vec<u8> {
            due.iter().map(|t| t.summary.trace_id[0]).collect()
        };
        // Nothing quiet for SEAL_IDLE; one over `keep`: the quietest (1) goes.
        assert_eq!(ids(open.take_due(last, 3)), vec![1]);
        assert_eq!(
            ids(open.take_due(now + SEAL_IDLE + Duration::from_millis(2500), 10)),
            vec![2]
        );
        assert_eq!(ids(open.take_due(last + SEAL_IDLE, 10)), vec![3, 0]);
        assert_eq!(open.len(), 0);
        // A trace that never goes quiet is written once it has been open for OPEN_LONGEST.
        let busy = OpenTrace::new([9; 16], Instant::now());
        let opened = busy.opened;
        open.touch([9; 16], opened, || busy);
        let mut at = opened;
        while at < opened + OPEN_LONGEST {
            assert!(open.take_due(at, 10).is_empty());
            at += Duration::from_secs(1);
            open.touch([9; 16], at, || unreachable!("still open"));
        }
        assert_eq!(ids(open.take_due(at, 10)), vec![9]);
    }

    #[test]
    fn a_span_id_is_taken_once_however_many_spans_the_trace_has() {
        let p = Pointer {
            segment: 1,
            offset: 0,
            len: 1,
        };
        let mut trace = OpenTrace::new([1; 16], Instant::now());
        for i in 0..100u64 {
            assert!(trace.add_span(i.to_be_bytes(), p));
            assert!(!trace.add_span(i.to_be_bytes(), p), "span {i} again");
            assert!(!trace.add_span(0u64.to_be_bytes(), p));
        }
        assert_eq!(trace.spans.len(), 100);
        let reopened = OpenTrace::reopened(trace.row(), Instant::now());
        assert_eq!(reopened.spans.len(), 100);
        let mut reopened = reopened;
        assert!(!reopened.add_span(50u64.to_be_bytes(), p));
    }
}
