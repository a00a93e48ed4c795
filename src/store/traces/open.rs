//! What the writer keeps in memory: traces still taking spans, and where each written trace's
//! row is.
//!
//! A trace's spans usually arrive within seconds of each other (the gateway's call, then the
//! app's batch of spans, then the tool spans). Keeping the trace open in memory until it has
//! been quiet for a while means its row and index entries are written once, not once per span,
//! and written rows are keyed by start time: sled then appends to the right edge of its trees
//! instead of rewriting a random node per span, which is what the store's cost was.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use super::{TraceSummary, log::Pointer};

/// A trace with no new span for this long is written and let go of.
pub(super) const SEAL_IDLE: Duration = Duration::from_secs(5);
/// Open traces at most; past it the ones quiet the longest are written first.
pub(super) const OPEN_MAX: usize = 4096;

/// A trace still taking spans.
#[derive(Debug, Clone)]
pub(super) struct OpenTrace {
    pub summary: TraceSummary,
    /// Its spans, in arrival order.
    pub spans: Vec<([u8; 8], Pointer)>,
    pub span_ids: HashSet<[u8; 8]>,
    /// Its row as written before (a span came after it was written): replaced when written
    /// again.
    pub written: Option<TraceSummary>,
    pub touched: Instant,
}

impl OpenTrace {
    pub fn new(trace_id: [u8; 16]) -> OpenTrace {
        OpenTrace {
            summary: TraceSummary::new(trace_id),
            spans: Vec::new(),
            span_ids: HashSet::new(),
            written: None,
            touched: Instant::now(),
        }
    }

    /// Opened again from its written row.
    pub fn reopened(row: TraceRow) -> OpenTrace {
        OpenTrace {
            span_ids: row.spans.iter().map(|(id, _)| *id).collect(),
            summary: row.summary.clone(),
            spans: row.spans,
            written: Some(row.summary),
            touched: Instant::now(),
        }
    }

    pub fn row(&self) -> TraceRow {
        TraceRow {
            summary: self.summary.clone(),
            spans: self.spans.clone(),
        }
    }
}

/// The open traces, by id.
pub(super) type OpenTraces = HashMap<[u8; 16], OpenTrace>;

/// The ids of the traces `quiet_for` has passed for, and past `keep`, the ones quiet the
/// longest.
pub(super) fn to_seal(open: &OpenTraces, now: Instant, keep: usize) -> Vec<[u8; 16]> {
    let mut by_age: Vec<(Instant, [u8; 16])> =
        open.iter().map(|(id, t)| (t.touched, *id)).collect();
    by_age.sort_unstable();
    let excess = by_age.len().saturating_sub(keep);
    by_age
        .into_iter()
        .enumerate()
        .take_while(|(i, (touched, _))| *i < excess || now.duration_since(*touched) >= SEAL_IDLE)
        .map(|(_, (_, id))| id)
        .collect()
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
        let summary = serde_json::to_vec(&self.summary).unwrap_or_default();
        let mut out = Vec::with_capacity(4 + self.spans.len() * SPAN_ENTRY + summary.len());
        out.extend_from_slice(&(self.spans.len() as u32).to_be_bytes());
        for (id, p) in &self.spans {
            out.extend_from_slice(id);
            out.extend_from_slice(&p.encode());
        }
        out.extend_from_slice(&summary);
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
            summary: serde_json::from_slice(summary).ok()?,
            spans,
        })
    }

    /// Only the summary of an encoded row.
    pub fn decode_summary(bytes: &[u8]) -> Option<TraceSummary> {
        let (n, rest) = split_count(bytes)?;
        serde_json::from_slice(rest.get(n.checked_mul(SPAN_ENTRY)?..)?).ok()
    }
}

fn split_count(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let (n, rest) = bytes.split_first_chunk::<4>()?;
    Some((u32::from_be_bytes(*n) as usize, rest))
}

/// Where each written trace's row is: its start time, the first half of the row's key. Held in
/// memory (about 17 bytes a trace) because trace ids are random: a sled tree keyed by them
/// would be rewritten at a random node per trace. Keyed by the id's first 8 bytes. The rule:
/// a written trace is in `overflow` with its start, or its start is its prefix's entry in
/// `by_prefix` (ids sharing a prefix and a start share the entry); a lookup reads the row at
/// that start and checks the id.
#[derive(Debug, Default)]
pub(super) struct WrittenIds {
    by_prefix: HashMap<u64, u64>,
    overflow: HashMap<[u8; 16], u64>,
}

fn prefix(id: &[u8; 16]) -> u64 {
    u64::from_be_bytes(id[..8].try_into().expect("8 bytes"))
}

impl WrittenIds {
    /// The start to look the trace up at: the row there may be another trace's that shares
    /// the prefix, so the caller checks the row it reads.
    pub fn get(&self, id: &[u8; 16]) -> Option<u64> {
        self.overflow
            .get(id)
            .or_else(|| self.by_prefix.get(&prefix(id)))
            .copied()
    }

    /// Records `id`'s row at `start`. `is_same` says whether the trace already recorded under
    /// the same prefix (at the start given) is this one.
    pub fn insert(&mut self, id: &[u8; 16], start: u64, is_same: impl FnOnce(u64) -> bool) {
        if let Some(s) = self.overflow.get_mut(id) {
            *s = start;
            return;
        }
        match self.by_prefix.get(&prefix(id)).copied() {
            Some(existing) if !is_same(existing) => {
                self.overflow.insert(*id, start);
            }
            _ => {
                self.by_prefix.insert(prefix(id), start);
            }
        }
    }

    /// Forgets `id`'s row, which was at `start` (and is gone). `shared` says whether another
    /// trace with the same prefix still has a row at that start: it keeps the entry then.
    pub fn remove(&mut self, id: &[u8; 16], start: u64, shared: impl FnOnce() -> bool) {
        if self.overflow.remove(id).is_none()
            && self.by_prefix.get(&prefix(id)) == Some(&start)
            && !shared()
        {
            self.by_prefix.remove(&prefix(id));
        }
    }

    /// The key range of the rows at `start` whose trace ids begin like `id`.
    pub fn shared_range(id: &[u8; 16], start: u64) -> std::ops::RangeInclusive<[u8; 24]> {
        let mut low = [0u8; 24];
        low[..8].copy_from_slice(&start.to_be_bytes());
        low[8..16].copy_from_slice(&id[..8]);
        let mut high = low;
        high[16..].fill(0xff);
        low..=high
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn ids_sharing_a_prefix_are_kept_apart() {
        let mut ids = WrittenIds::default();
        let a = [1u8; 16];
        let mut b = a;
        b[15] = 2;
        ids.insert(&a, 10, |_| unreachable!("nothing shares the prefix yet"));
        ids.insert(&b, 20, |at| {
            assert_eq!(at, 10);
            false
        });
        assert_eq!((ids.get(&a), ids.get(&b)), (Some(10), Some(20)));
        // Moved (its start changed), then removed.
        ids.insert(&a, 5, |_| true);
        assert_eq!(ids.get(&a), Some(5));
        ids.remove(&b, 20, || unreachable!("b was in the overflow"));
        assert_eq!((ids.get(&a), ids.get(&b)), (Some(5), Some(5)));
        // Another trace with the prefix still at 5 keeps the entry; none left drops it.
        ids.remove(&a, 5, || true);
        assert_eq!(ids.get(&a), Some(5));
        ids.remove(&a, 5, || false);
        assert_eq!(ids.get(&a), None);
    }

    #[test]
    fn quiet_traces_and_the_excess_are_sealed_oldest_first() {
        let now = Instant::now();
        let mut open = OpenTraces::new();
        for i in 0..4u8 {
            let mut t = OpenTrace::new([i; 16]);
            t.touched = now - Duration::from_secs(u64::from(i));
            open.insert([i; 16], t);
        }
        // None quiet for SEAL_IDLE; one over `keep`: the oldest (3) goes.
        assert_eq!(to_seal(&open, now, 3), vec![[3; 16]]);
        let later = now + SEAL_IDLE - Duration::from_millis(1500);
        assert_eq!(to_seal(&open, later, 10), vec![[3; 16], [2; 16]]);
    }
}
