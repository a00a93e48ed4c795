//! Session rows, in memory: the sum of each session's traces ([`SessionSummary`]), kept current
//! per batch (open traces included) and rebuilt from the trace rows at open.
//!
//! sled kept them before, rewriting a session's row for every trace that took spans: at a
//! million spans in the store bench that held about 700 MiB, and it halved the write rate.
//! As `SessionSummary`s in a map and a set they took about 450 bytes a session (the id three
//! times); now each is packed (its numbers as varints, its user and feature) beside one shared
//! copy of its id: about 200 bytes a session with an 18-byte id, map and set included (300,000
//! sessions: 137 MB before, 61 after). A gateway whose every conversation is a session holds
//! that for each session in the store.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use super::{SessionSummary, Totals};

#[derive(Debug, Default)]
pub(super) struct Sessions {
    by_id: HashMap<Arc<str>, Packed>,
    /// Last activity and id, for the list: most recently active last.
    by_last: BTreeSet<(u64, Arc<str>)>,
}

/// A session's row without its id: first, last, traces and the totals as LEB128 varints, then
/// the user and the feature (a varint of length + 1, 0 for none, and the bytes).
#[derive(Debug)]
struct Packed(Box<[u8]>);

fn put_varint(out: &mut Vec<u8>, mut n: u128) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn take_varint(bytes: &mut &[u8]) -> u128 {
    let mut n = 0u128;
    for shift in (0..).step_by(7) {
        let Some((&byte, rest)) = bytes.split_first() else {
            return n;
        };
        *bytes = rest;
        if shift < 128 {
            n |= u128::from(byte & 0x7f) << shift;
        }
        if byte & 0x80 == 0 {
            break;
        }
    }
    n
}

impl Packed {
    fn pack(s: &SessionSummary) -> Packed {
        let mut out = Vec::with_capacity(48);
        for n in [s.first_unix_nanos, s.last_unix_nanos, s.traces] {
            put_varint(&mut out, u128::from(n));
        }
        for n in s.totals.counts() {
            put_varint(&mut out, u128::from(n));
        }
        put_varint(&mut out, s.totals.cost_pico_usd);
        for text in [&s.user, &s.feature] {
            match text {
                Some(text) => {
                    put_varint(&mut out, text.len() as u128 + 1);
                    out.extend_from_slice(text.as_bytes());
                }
                None => out.push(0),
            }
        }
        Packed(out.into_boxed_slice())
    }

    fn unpack(&self, id: &str) -> SessionSummary {
        let mut b: &[u8] = &self.0;
        let mut next = || u64::try_from(take_varint(&mut b)).unwrap_or(u64::MAX);
        let (first_unix_nanos, last_unix_nanos, traces) = (next(), next(), next());
        let counts = std::array::from_fn(|_| next());
        let totals = Totals::from_counts(counts, take_varint(&mut b));
        let mut text = || {
            let len = usize::try_from(take_varint(&mut b)).unwrap_or(usize::MAX);
            let len = len.checked_sub(1)?;
            let (text, rest) = b.split_at_checked(len)?;
            b = rest;
            Some(String::from_utf8_lossy(text).into_owned())
        };
        let (user, feature) = (text(), text());
        SessionSummary {
            session_id: id.to_string(),
            first_unix_nanos,
            last_unix_nanos,
            traces,
            totals,
            user,
            feature,
        }
    }
}

impl Sessions {
    pub fn get(&self, id: &str) -> Option<SessionSummary> {
        self.by_id.get(id).map(|p| p.unpack(id))
    }

    /// Changes a session's row (made when new); a session left with no trace goes.
    pub fn update(&mut self, id: &str, change: impl FnOnce(&mut SessionSummary)) {
        let (key, mut session) = match self.by_id.get_key_value(id) {
            Some((key, packed)) => (key.clone(), packed.unpack(id)),
            None => (Arc::from(id), SessionSummary::new(id)),
        };
        let before = (session.traces > 0).then_some(session.last_unix_nanos);
        change(&mut session);
        let after = (session.traces > 0).then_some(session.last_unix_nanos);
        if before != after {
            if let Some(last) = before {
                self.by_last.remove(&(last, key.clone()));
            }
            if let Some(last) = after {
                self.by_last.insert((last, key.clone()));
            }
        }
        if after.is_some() {
            self.by_id.insert(key, Packed::pack(&session));
        } else {
            self.by_id.remove(id);
        }
    }

    /// At most `limit` sessions last active in `from..to` and before `cursor` that `keep`
    /// takes, most recently active first; and whether more follow.
    pub fn page(
        &self,
        from: u64,
        to: Option<u64>,
        cursor: Option<(u64, &str)>,
        limit: usize,
        keep: impl Fn(&SessionSummary) -> bool,
    ) -> (Vec<SessionSummary>, bool) {
        let mut rows = Vec::new();
        let below = |last: u64, id: &str| {
            to.is_none_or(|to| last < to) && cursor.is_none_or(|c| (last, id) < c)
        };
        for (last, id) in self.by_last.iter().rev() {
            if *last < from {
                break;
            }
            if !below(*last, id) {
                continue;
            }
            let Some(s) = self.get(id) else {
                continue;
            };
            if !keep(&s) {
                continue;
            }
            if rows.len() == limit {
                return (rows, true);
            }
            rows.push(s);
        }
        (rows, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::traces::TraceSummary;

    fn trace(start: u64, end: u64) -> TraceSummary {
        let mut t = TraceSummary::new([start as u8; 16]);
        t.start_unix_nanos = start;
        t.end_unix_nanos = end;
        t
    }

    #[test]
    fn a_session_row_packs_and_unpacks_whole() {
        let mut s = SessionSummary::new("conversation-1");
        s.first_unix_nanos = 1_700_000_000_000_000_000;
        s.last_unix_nanos = u64::MAX;
        s.traces = 3;
        s.totals = Totals {
            spans: 9,
            errors: 1,
            input_tokens: 1_234_567,
            cached_input_tokens: 0,
            reasoning_tokens: 128,
            output_tokens: 300,
            cost_pico_usd: u128::MAX,
            priced_spans: 9,
        };
        s.user = Some("ünïcode user".into());
        s.feature = Some(String::new());
        assert_eq!(Packed::pack(&s).unpack("conversation-1"), s);
        s.user = None;
        s.feature = None;
        s.totals.cost_pico_usd = 37_500_000;
        let packed = Packed::pack(&s);
        assert_eq!(packed.unpack("conversation-1"), s);
        assert!(packed.0.len() < 48, "{} bytes", packed.0.len());
    }

    #[test]
    fn sessions_are_listed_by_last_activity_and_go_with_their_last_trace() {
        let mut sessions = Sessions::default();
        let (a, b) = (trace(1, 5), trace(2, 9));
        sessions.update("s1", |s| s.update(None, &a));
        sessions.update("s2", |s| s.update(None, &b));
        let ids =
            |rows: Vec<SessionSummary>| rows.into_iter().map(|s| s.session_id).collect::<Vec<_>>();
        let (rows, more) = sessions.page(0, None, None, 10, |_| true);
        assert_eq!(
            (ids(rows), more),
            (vec!["s2".to_string(), "s1".into()], false)
        );
        // Paged: one, then after its cursor the other.
        let (rows, more) = sessions.page(0, None, None, 1, |_| true);
        assert_eq!((ids(rows), more), (vec!["s2".to_string()], true));
        let (rows, _) = sessions.page(0, None, Some((9, "s2")), 1, |_| true);
        assert_eq!(ids(rows), vec!["s1".to_string()]);
        // s1 takes a later trace: it comes first now.
        let c = trace(3, 20);
        sessions.update("s1", |s| s.update(None, &c));
        let (rows, _) = sessions.page(0, None, None, 10, |_| true);
        assert_eq!(ids(rows), vec!["s1".to_string(), "s2".into()]);
        assert_eq!(sessions.get("s1").unwrap().traces, 2);
        // Window by last activity.
        let (rows, _) = sessions.page(10, None, None, 10, |_| true);
        assert_eq!(ids(rows), vec!["s1".to_string()]);
        let (rows, _) = sessions.page(0, Some(10), None, 10, |_| true);
        assert_eq!(ids(rows), vec!["s2".to_string()]);
        // Evicting its only trace lets s2 go.
        sessions.update("s2", |s| s.remove(&b));
        assert!(sessions.get("s2").is_none());
        let (rows, _) = sessions.page(0, None, None, 10, |_| true);
        assert_eq!(ids(rows), vec!["s1".to_string()]);
    }
}
