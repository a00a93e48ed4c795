//! Reading the trace store: pages of trace and session rows by index scans, one whole trace as a
//! tree with rollups.

use std::collections::{HashMap, HashSet};

use super::{
    SessionSummary, StoredSpan, Totals, TraceStore, TraceSummary, decode, log::Pointer,
    open::TraceRow, rows::Rows, tags::TagFilter, time_key, trace_id_of,
};
use crate::trace::span::AttrValue;

/// Rows the time index gives a reader at a time (its lock is not held while they are read).
const TIME_PAGE: usize = 64;

/// Written rows newest first within a page's bounds whose tags the filter takes, with their
/// keys, a page of the time index at a time.
struct Written<'a> {
    rows: &'a Rows,
    filter: TagFilter,
    low: [u8; 24],
    high: [u8; 24],
    page: std::vec::IntoIter<([u8; 24], Pointer)>,
}

impl Iterator for Written<'_> {
    type Item = Result<([u8; 24], Vec<u8>), sled::Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            while self.page.len() == 0 {
                let filter = self.filter;
                let (next, resume) =
                    match self
                        .rows
                        .newest_before(&self.low, &self.high, TIME_PAGE, |t| filter.takes(t))
                    {
                        Ok(next) => next,
                        Err(e) => return Some(Err(sled::Error::Io(e))),
                    };
                // Stopped at its budget of chunk files: everything from `resume` up was seen.
                self.high = match (resume, next.last()) {
                    (Some(resume), _) => resume,
                    (None, Some(last)) => last.0,
                    (None, None) => return None,
                };
                self.page = next.into_iter();
            }
            let (key, p) = self.page.next()?;
            match self.rows.read(p) {
                Ok(Some(row)) => return Some(Ok((key, row))),
                // Evicted since the page was taken.
                Ok(None) => continue,
                Err(e) => return Some(Err(sled::Error::Io(e))),
            }
        }
    }
}

/// A filter over traces, and a page of it. Every given condition must hold.
#[derive(Debug, Clone, Default)]
pub struct TraceQuery {
    /// Started at or after (unix nanos).
    pub from: Option<u64>,
    /// Started before.
    pub to: Option<u64>,
    pub feature: Option<String>,
    pub user: Option<String>,
    pub session: Option<String>,
    /// A model the trace called (as answered or as requested).
    pub model: Option<String>,
    pub provider: Option<String>,
    pub errors_only: bool,
    pub min_cost_pico_usd: Option<u128>,
    pub min_duration_nanos: Option<u64>,
    /// Case-insensitive text in span names and captured content.
    pub text: Option<String>,
    pub limit: usize,
    /// Continue after this (start, trace id): the previous page's [`Page::next`].
    pub cursor: Option<(u64, [u8; 16])>,
    /// With `text`: how many traces one page reads at most before it answers with what it
    /// found and where it stopped (`None`: the store's `search_scan_traces`); a word no trace
    /// holds would otherwise read the whole store before the first answer.
    pub text_scan_limit: Option<usize>,
}

/// A filter over sessions, and a page of it.
#[derive(Debug, Clone, Default)]
pub struct SessionQuery {
    /// Last active at or after (unix nanos).
    pub from: Option<u64>,
    /// Last active before.
    pub to: Option<u64>,
    pub user: Option<String>,
    pub feature: Option<String>,
    pub limit: usize,
    /// Continue after this (last active, session id).
    pub cursor: Option<(u64, String)>,
}

/// One page: the rows and whether more follow (their cursor is the last row's, or `resume`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub rows: Vec<T>,
    pub more: bool,
    /// A page of traces that a text search ended before it was full: the (start, trace id)
    /// of the last trace it read, where the next page goes on.
    pub resume: Option<(u64, [u8; 16])>,
}

impl Page<TraceSummary> {
    /// Where the next page of traces begins; `None` when there is none.
    pub fn next(&self) -> Option<(u64, [u8; 16])> {
        if !self.more {
            return None;
        }
        self.resume
            .or_else(|| self.rows.last().map(|r| (r.start_unix_nanos, r.trace_id)))
    }
}

/// One span of a trace in tree order.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeNode {
    pub stored: StoredSpan,
    pub depth: usize,
    /// It names a parent that is not in the trace.
    pub parent_missing: bool,
    /// Its own figures, and those of its whole subtree.
    pub own: Totals,
    pub rollup: Totals,
    /// `service.name` of its resource.
    pub service: String,
}

/// A whole trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceTree {
    pub summary: TraceSummary,
    /// Depth first, children by start time.
    pub nodes: Vec<TreeNode>,
    /// Every resource its spans name, by key.
    pub resources: HashMap<u64, Vec<(String, String)>>,
    /// Spans the trace counts that could not be read back: their span file is gone, cut short
    /// or damaged (the CRC of each record tells).
    pub unreadable: usize,
    /// The gateway's tool spans left out, the app's own span of the same tool call being in
    /// the trace ([`without_tool_spans_the_app_reported`]).
    pub replaced_tool_spans: usize,
}

impl TraceQuery {
    fn matches(&self, s: &TraceSummary) -> bool {
        let eq = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        self.from.is_none_or(|f| s.start_unix_nanos >= f)
            && self.to.is_none_or(|t| s.start_unix_nanos < t)
            && eq(&self.feature, &s.feature)
            && eq(&self.user, &s.user)
            && eq(&self.session, &s.session)
            && self.model.as_ref().is_none_or(|m| s.models.contains(m))
            && self
                .provider
                .as_ref()
                .is_none_or(|p| s.providers.contains(p))
            && (!self.errors_only || s.totals.errors > 0)
            && self
                .min_cost_pico_usd
                .is_none_or(|c| s.totals.cost().is_some_and(|have| have >= c))
            && self
                .min_duration_nanos
                .is_none_or(|d| s.duration_nanos() >= d)
    }
}

/// Whether a span's name or captured content holds `needle` (lower case already).
fn span_has_text(span: &StoredSpan, needle: &str) -> bool {
    const CONTENT: [&str; 4] = [
        "gen_ai.input.messages",
        "gen_ai.output.messages",
        "gen_ai.system_instructions",
        "gen_ai.tool.definitions",
    ];
    if span.span.name.to_lowercase().contains(needle) {
        return true;
    }
    span.span.attributes.iter().any(|(k, v)| {
        CONTENT.contains(&k.as_ref())
            && matches!(v, crate::trace::span::AttrValue::Str(s) if s.to_lowercase().contains(needle))
    })
}

impl TraceStore {
    /// A page of traces, newest first: the time index is walked newest first, taking the rows
    /// whose feature, user and session hashes match; every condition is checked on each row
    /// read.
    pub fn traces(&self, q: &TraceQuery) -> Result<Page<TraceSummary>, sled::Error> {
        let low = time_key(q.from.unwrap_or(0), &[0; 16]);
        // Exclusive upper bound: before `to`, and before the cursor's row.
        let mut high = q.to.map_or([0xff; 24], |to| time_key(to, &[0; 16]));
        if let Some((start, id)) = q.cursor {
            high = high.min(time_key(start, &id));
        }
        let filter = TagFilter::new(
            q.feature.as_deref(),
            q.user.as_deref(),
            q.session.as_deref(),
        );
        let written = Written {
            rows: &self.rows,
            filter,
            low,
            high,
            page: Vec::new().into_iter(),
        };
        let needle = q.text.as_ref().map(|s| s.to_lowercase());
        let scan_limit = q
            .text_scan_limit
            .unwrap_or(self.limits.search_scan_traces)
            .max(1);
        // With text: the traces read so far, and the last one.
        let mut scanned = 0;
        let mut last_read = None;
        // Open traces first (newest first, within the page's bounds): they take the place of
        // any row written for them before.
        let (mut open, open_ids) = self.open_matching(|s| {
            q.matches(s)
                && (s.start_unix_nanos, s.trace_id) < q.cursor.unwrap_or((u64::MAX, [0xff; 16]))
        });
        open.sort_by_key(|s| std::cmp::Reverse((s.start_unix_nanos, s.trace_id)));
        let mut open = open.into_iter().peekable();
        let mut rows = Vec::new();
        let mut written = written;
        loop {
            // The next written row that matches, unless an open trace comes before it.
            let mut next_written = None;
            for entry in written.by_ref() {
                let (k, row) = entry?;
                let Some(id) = trace_id_of(&k) else { continue };
                if open_ids.contains(&id) {
                    continue;
                }
                let Some(summary) = TraceRow::decode_summary(&row) else {
                    continue;
                };
                if q.matches(&summary) {
                    next_written = Some(summary);
                    break;
                }
            }
            let key = |s: &TraceSummary| (s.start_unix_nanos, s.trace_id);
            let mut candidates = Vec::new();
            while let Some(o) =
                open.next_if(|o| next_written.as_ref().is_none_or(|w| key(o) > key(w)))
            {
                candidates.push(o);
            }
            let done = next_written.is_none();
            candidates.extend(next_written);
            for summary in candidates {
                if let Some(needle) = &needle {
                    if scanned == scan_limit {
                        return Ok(Page {
                            rows,
                            more: true,
                            resume: last_read,
                        });
                    }
                    scanned += 1;
                    last_read = Some((summary.start_unix_nanos, summary.trace_id));
                    if !self.trace_has_text(&summary.trace_id, needle)? {
                        continue;
                    }
                }
                if rows.len() == q.limit {
                    return Ok(Page {
                        rows,
                        more: true,
                        resume: None,
                    });
                }
                rows.push(summary);
            }
            if done {
                return Ok(Page {
                    rows,
                    more: false,
                    resume: None,
                });
            }
        }
    }

    /// The open traces whose summary `keep` takes, and the ids of every open trace.
    fn open_matching(
        &self,
        keep: impl Fn(&TraceSummary) -> bool,
    ) -> (Vec<TraceSummary>, HashSet<[u8; 16]>) {
        let open = self.open_traces();
        let ids = open.keys().copied().collect();
        let matching = open
            .values()
            .filter(|t| keep(&t.summary))
            .map(|t| t.summary.clone())
            .collect();
        (matching, ids)
    }

    fn trace_has_text(&self, id: &[u8; 16], needle: &str) -> Result<bool, sled::Error> {
        let pointers = self.lookup(id)?.map(|(_, p)| p).unwrap_or_default();
        for p in pointers {
            if let Some(span) = self.load_span(p)
                && span_has_text(&span, needle)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A trace's summary and where its spans are, open or written.
    fn lookup(&self, id: &[u8; 16]) -> Result<Option<(TraceSummary, Vec<Pointer>)>, sled::Error> {
        if let Some(t) = self.open_traces().get(id) {
            return Ok(Some((
                t.summary.clone(),
                t.spans.iter().map(|(_, p)| *p).collect(),
            )));
        }
        Ok(self
            .written_row(id)?
            .map(|(_, row)| (row.summary, row.spans.into_iter().map(|(_, p)| p).collect())))
    }

    /// One trace's row.
    pub fn summary(&self, id: &[u8; 16]) -> Result<Option<TraceSummary>, sled::Error> {
        if let Some(t) = self.open_traces().get(id) {
            return Ok(Some(t.summary.clone()));
        }
        Ok(self.written_row(id)?.map(|(_, row)| row.summary))
    }

    /// One whole trace as a tree; `None` when the store has no such trace.
    pub fn trace(&self, id: &[u8; 16]) -> Result<Option<TraceTree>, sled::Error> {
        let Some((summary, pointers)) = self.lookup(id)? else {
            return Ok(None);
        };
        let wanted = pointers.len();
        let spans: Vec<StoredSpan> = pointers
            .into_iter()
            .filter_map(|p| self.load_span(p))
            .collect();
        let unreadable = wanted - spans.len();
        if unreadable > 0 {
            self.metrics
                .store
                .spans_unreadable
                .inc_by(unreadable as u64);
            tracing::warn!(
                trace_id = %id.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                unreadable,
                "spans of a stored trace could not be read back: their span file is gone, cut short or damaged"
            );
        }
        let (spans, replaced) = without_tool_spans_the_app_reported(spans);
        let mut summary = summary;
        for t in replaced.iter().map(StoredSpan::totals) {
            summary.totals.spans = summary.totals.spans.saturating_sub(t.spans);
            summary.totals.errors = summary.totals.errors.saturating_sub(t.errors);
        }
        let replaced_tool_spans = replaced.len();
        let mut resources = HashMap::new();
        for s in &spans {
            if !resources.contains_key(&s.resource)
                && let Some(r) = self.trees.resources.get(s.resource.to_be_bytes())?
            {
                resources.insert(s.resource, decode(&r).unwrap_or_default());
            }
        }
        let nodes = tree_order(spans, &resources);
        Ok(Some(TraceTree {
            summary,
            nodes,
            resources,
            unreadable,
            replaced_tool_spans,
        }))
    }

    /// A page of sessions, most recently active first.
    pub fn sessions(&self, q: &SessionQuery) -> Result<Page<SessionSummary>, sled::Error> {
        let cursor = q.cursor.as_ref().map(|(last, id)| (*last, id.as_str()));
        let (rows, more) =
            self.session_rows()
                .page(q.from.unwrap_or(0), q.to, cursor, q.limit, |s| {
                    q.user.as_ref().is_none_or(|u| s.user.as_ref() == Some(u))
                        && q.feature
                            .as_ref()
                            .is_none_or(|f| s.feature.as_ref() == Some(f))
                });
        Ok(Page {
            rows,
            more,
            resume: None,
        })
    }

    /// One session's row and its traces, oldest first (at most `limit`; `more` when there are
    /// more). `None` for an unknown session.
    #[allow(clippy::type_complexity)]
    pub fn session(
        &self,
        id: &str,
        limit: usize,
    ) -> Result<Option<(SessionSummary, Page<TraceSummary>)>, sled::Error> {
        let Some(session) = self.session_rows().get(id) else {
            return Ok(None);
        };
        // Its open traces and its written ones, oldest first; an open trace takes the place of
        // its earlier row.
        let (open, open_ids) = self.open_matching(|s| s.session.as_deref() == Some(id));
        let filter = TagFilter::new(None, None, Some(id));
        // The oldest rows whose session hash matches, checked against the session itself: one
        // more than the page, besides the rows of its open traces (skipped). A row of another
        // session that shares the hash makes it look further.
        let want = limit + 1;
        let mut written = Vec::new();
        let mut n = want + open.len();
        loop {
            let keys = self
                .rows
                .oldest(n, |t| filter.takes(t))
                .map_err(sled::Error::Io)?;
            written.clear();
            for k in &keys {
                let Some(trace) = trace_id_of(k) else {
                    continue;
                };
                if open_ids.contains(&trace) {
                    continue;
                }
                if let Some(s) = self.summary(&trace)?
                    && s.session.as_deref() == Some(id)
                {
                    written.push(s);
                    if written.len() >= want {
                        break;
                    }
                }
            }
            if written.len() >= want || keys.len() < n {
                break;
            }
            n *= 2;
        }
        let mut all: Vec<TraceSummary> = open;
        all.extend(written);
        all.sort_by_key(|s| (s.start_unix_nanos, s.trace_id));
        let more = all.len() > limit;
        all.truncate(limit);
        Ok(Some((
            session,
            Page {
                rows: all,
                more,
                resume: None,
            },
        )))
    }
}

/// The scope of the gateway's own spans.
pub(super) const GATEWAY_SCOPE: &str = "sidetrace";
/// How far up from a gateway call [`counted_twice`] looks for the app's span of the same call.
const SAME_CALL_HOPS: usize = 3;

/// The spans whose usage a gateway call under them reports again: the app's own span of an LLM
/// call (an OpenTelemetry GenAI instrumentation's `chat gpt-4o`, with its tokens) whose request
/// went through the gateway, the gateway's call span below it (directly, or under the HTTP
/// client span that sent the `traceparent`). The gateway's span counts the call (it read the
/// usage from the wire and priced it); the app's counts no tokens and no cost, or a trace's
/// totals would hold the call twice. For each gateway call, the nearest span above it, at most
/// [`SAME_CALL_HOPS`] up, not the gateway's, that reported usage.
pub(super) fn counted_twice(
    spans: &[StoredSpan],
    parent_of: &[Option<usize>],
    own: &[Totals],
) -> Vec<usize> {
    let gateway = |i: usize| spans[i].scope_name == GATEWAY_SCOPE;
    let mut twice = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        if !gateway(i) || s.span.attr("sidetrace.outcome").is_none() {
            continue;
        }
        let mut at = parent_of[i];
        for _ in 0..SAME_CALL_HOPS {
            let Some(a) = at.filter(|&a| a != i && !gateway(a)) else {
                break;
            };
            if own[a].has_usage() {
                twice.push(a);
                break;
            }
            at = parent_of[a];
        }
    }
    twice
}

/// `spans` without the gateway's tool spans (`execute_tool`, read from the wire) of a tool call
/// the app reported a span of its own for in the trace (`gen_ai.tool.call.id`), and the spans
/// left out. The gateway holds its tool span for `tool_app_span_grace_ms` once any app sends
/// spans, and drops it when the app's arrives meanwhile; but the app's may come later (its
/// exporter was slow, or this was the first trace after a start, before the gateway knew the
/// app sends spans), and both were kept. The app's wins, as it does within the grace: it knows
/// the tool's real timing.
fn without_tool_spans_the_app_reported(
    spans: Vec<StoredSpan>,
) -> (Vec<StoredSpan>, Vec<StoredSpan>) {
    let text = |s: &StoredSpan, key: &str| match s.span.attr(key) {
        Some(AttrValue::Str(v)) => Some(v.to_string()),
        _ => None,
    };
    let reported: HashSet<String> = spans
        .iter()
        .filter(|s| s.scope_name != GATEWAY_SCOPE)
        .filter_map(|s| text(s, "gen_ai.tool.call.id"))
        .collect();
    if reported.is_empty() {
        return (spans, Vec::new());
    }
    spans.into_iter().partition(|s| {
        !(s.scope_name == GATEWAY_SCOPE
            && text(s, "gen_ai.operation.name").as_deref() == Some("execute_tool")
            && text(s, "gen_ai.tool.call.id").is_some_and(|id| reported.contains(&id)))
    })
}

/// Each span's place in `spans` by its id.
pub(super) fn span_index(spans: &[StoredSpan]) -> HashMap<[u8; 8], usize> {
    spans
        .iter()
        .enumerate()
        .map(|(i, s)| (s.span.span_id, i))
        .collect()
}

/// Each span's parent's place in `spans`, when its parent is there.
pub(super) fn parent_indexes(
    spans: &[StoredSpan],
    index: &HashMap<[u8; 8], usize>,
) -> Vec<Option<usize>> {
    spans
        .iter()
        .map(|s| s.span.parent_span_id.and_then(|p| index.get(&p).copied()))
        .collect()
}

/// Each span's own totals, the usage of [`counted_twice`] left out.
pub(super) fn own_totals(spans: &[StoredSpan], parent_of: &[Option<usize>]) -> Vec<Totals> {
    let mut own: Vec<Totals> = spans.iter().map(StoredSpan::totals).collect();
    for i in counted_twice(spans, parent_of, &own) {
        own[i] = own[i].without_usage();
    }
    own
}

/// Orders spans depth first (children by start time, then span id), with depths and rollups.
/// Spans whose parent is not in the trace are roots.
fn tree_order(
    mut spans: Vec<StoredSpan>,
    resources: &HashMap<u64, Vec<(String, String)>>,
) -> Vec<TreeNode> {
    spans.sort_by(|a, b| {
        (a.span.start_unix_nanos, a.span.span_id).cmp(&(b.span.start_unix_nanos, b.span.span_id))
    });
    let index = span_index(&spans);
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); spans.len()];
    let mut roots = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        match s.span.parent_span_id.and_then(|p| index.get(&p)) {
            Some(&parent) if parent != i => children[parent].push(i),
            _ => roots.push(i),
        }
    }
    // Depth-first order without recursion (a 1,000-deep chain must not overflow the stack).
    let mut order: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
    let mut stack: Vec<(usize, usize)> = roots.iter().rev().map(|&r| (r, 0)).collect();
    let mut seen = vec![false; spans.len()];
    while let Some((i, depth)) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        order.push((i, depth));
        stack.extend(children[i].iter().rev().map(|&c| (c, depth + 1)));
    }
    // Spans in a parent cycle (malformed input) are reached by no root: show them as roots.
    for (i, seen) in seen.iter_mut().enumerate() {
        if !std::mem::replace(seen, true) {
            order.push((i, 0));
        }
    }
    // Rollups: children come after their parent in `order`, so a reverse pass sums upwards.
    let parent_of = parent_indexes(&spans, &index);
    let own = own_totals(&spans, &parent_of);
    let mut rollup = own.clone();
    for &(i, depth) in order.iter().rev() {
        // Below a root, a span was reached from its parent; roots (a parent cycle included)
        // add to nothing.
        if let Some(p) = parent_of[i].filter(|_| depth > 0) {
            let r = rollup[i];
            rollup[p].add(&r);
        }
    }
    let mut slots: Vec<Option<StoredSpan>> = spans.into_iter().map(Some).collect();
    order
        .into_iter()
        .map(|(i, depth)| {
            let stored = slots[i].take().expect("each span is placed once");
            let service = resources
                .get(&stored.resource)
                .and_then(|r| r.iter().find(|(k, _)| k == "service.name"))
                .map_or_else(String::new, |(_, v)| v.clone());
            TreeNode {
                parent_missing: stored.span.parent_span_id.is_some() && depth == 0,
                depth,
                own: own[i],
                rollup: rollup[i],
                service,
                stored,
            }
        })
        .collect()
}
