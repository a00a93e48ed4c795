//! Session rows, in memory: the sum of each session's traces ([`SessionSummary`]), kept current
//! per batch (open traces included) and rebuilt from the trace rows at open.
//!
//! sled kept them before, rewriting a session's row for every trace that took spans: at a
//! million spans in the store bench that held about 700 MiB, and it halved the write rate.
//! About 200 bytes and the id twice per session.

use std::collections::{BTreeSet, HashMap};

use super::SessionSummary;

#[derive(Debug, Default)]
pub(super) struct Sessions {
    by_id: HashMap<Box<str>, SessionSummary>,
    /// Last activity and id, for the list: most recently active last.
    by_last: BTreeSet<(u64, Box<str>)>,
}

impl Sessions {
    pub fn get(&self, id: &str) -> Option<&SessionSummary> {
        self.by_id.get(id)
    }

    /// Changes a session's row (made when new); a session left with no trace goes.
    pub fn update(&mut self, id: &str, change: impl FnOnce(&mut SessionSummary)) {
        let session = self
            .by_id
            .entry(id.into())
            .or_insert_with(|| SessionSummary::new(id));
        let before = (session.traces > 0).then_some(session.last_unix_nanos);
        change(session);
        let after = (session.traces > 0).then_some(session.last_unix_nanos);
        if before == after {
            return;
        }
        if let Some(last) = before {
            self.by_last.remove(&(last, id.into()));
        }
        match after {
            Some(last) => {
                self.by_last.insert((last, id.into()));
            }
            None => {
                self.by_id.remove(id);
            }
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
            let Some(s) = self.by_id.get(id) else {
                continue;
            };
            if !keep(s) {
                continue;
            }
            if rows.len() == limit {
                return (rows, true);
            }
            rows.push(s.clone());
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
