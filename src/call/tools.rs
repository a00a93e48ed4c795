//! Tool spans read from the wire, and agent loops grouped with no SDK: the tool calls a
//! response asked for wait here (bounded) until a later request carries their results, which
//! makes one `execute_tool {tool}` span per call under the LLM call that asked; a request with
//! no trace header that answers them (or names a seen `previous_response_id`) joins that
//! call's trace and session.
//!
//! Pure state behind one lock: the recorder feeds it finished calls, the inspect layer asks it
//! which trace a request follows and hands it the results, a sweeper ends the calls never
//! answered and releases held spans. What it returns is emitted by the recorder.
//!
//! Dedupe with the app's own spans: the OTLP receiver calls [`ToolTable::app_reported`] for
//! every received span carrying `gen_ai.tool.call.id`, and [`ToolTable::set_app_sends_spans`]
//! once any app sends spans. From then on a finished tool span is held for
//! `tool_app_span_grace_ms` and dropped (counted) if the app reported the same call id in the
//! same trace meanwhile: the app's span wins, it knows the tool's real timing. Before that,
//! tool spans are emitted at once.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::{
    call::record::CallRecord,
    config::TraceConfig,
    format::{
        is_synthetic_tool_call_id,
        request::{self, ToolResult},
    },
    metrics::Metrics,
    trace::{
        capture::{Capturer, REDACTION_MARGIN, redacted_cut_short},
        context::{TraceContext, TraceSource, random_span_id},
        metadata::CaptureLevel,
        span::{AttrKey, AttrValue, SpanRecord, SpanStatus},
    },
};

/// A span to emit: the export's copy and, when it keeps other content, the store's.
pub type ToolSpan = (SpanRecord, Option<SpanRecord>);

/// Where an LLM call sits in its trace: what a later call needs to join it and what a tool
/// span needs to hang under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asker {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub flags: u8,
    pub trace_state: Option<String>,
    pub session_id: Option<String>,
}

impl Asker {
    fn of(call: &CallRecord) -> Asker {
        Asker {
            trace_id: call.trace.trace_id,
            span_id: call.trace.span_id,
            parent_span_id: call.trace.parent_span_id,
            flags: call.trace.flags,
            trace_state: call.trace.trace_state.clone(),
            session_id: call.metadata.session_id.clone(),
        }
    }

    /// The context of a call that follows this one (keeping its own span id). Parent rule: the
    /// parent of the call it follows, or that call itself when it is the trace's root, so a
    /// loop with no SDK is a flat tree under its first call.
    pub fn followed_by(&self, span_id: [u8; 8]) -> TraceContext {
        TraceContext {
            trace_id: self.trace_id,
            span_id,
            parent_span_id: Some(self.parent_span_id.unwrap_or(self.span_id)),
            parent_is_remote: false,
            flags: self.flags,
            trace_state: self.trace_state.clone(),
            source: TraceSource::Joined,
        }
    }

    fn bytes(&self) -> usize {
        64 + self.trace_state.as_ref().map_or(0, String::len)
            + self.session_id.as_ref().map_or(0, String::len)
    }
}

/// Sizes and waits of the table.
#[derive(Debug, Clone)]
pub struct ToolLimits {
    pub max_entries: usize,
    pub max_bytes: usize,
    pub unanswered_after: Duration,
    pub app_span_grace: Duration,
    pub max_response_ids: usize,
}

impl ToolLimits {
    pub fn from_config(c: &TraceConfig) -> ToolLimits {
        ToolLimits {
            max_entries: c.tool_pending_max_entries.max(1),
            max_bytes: c.tool_pending_max_bytes.max(1),
            unanswered_after: Duration::from_millis(c.tool_unanswered_ms),
            app_span_grace: Duration::from_millis(c.tool_app_span_grace_ms),
            max_response_ids: c.response_ids_max_entries,
        }
    }
}

/// A tool call awaiting its result.
struct Pending {
    asker: Arc<Asker>,
    name: String,
    /// Raw, as the response sent them: only kept when the call's content was captured with
    /// text, and lowered to each copy's level when the span is made.
    arguments: Option<String>,
    /// The arguments were cut short (by the body parser's limit, or [`MAX_CONTENT_BYTES`]):
    /// redacted, they drop their margin (see `redacted_cut_short`).
    arguments_cut: bool,
    /// The capture level the asking call's caller asked for.
    asked: Option<CaptureLevel>,
    /// When the asking call ended: the tool span's start.
    start: SystemTime,
    deadline: Instant,
    bytes: usize,
    seq: u64,
}

/// A finished tool span held for the app's own (dedupe).
struct Held {
    trace_id: [u8; 16],
    call_id: String,
    span: ToolSpan,
    release: Instant,
    bytes: usize,
}

#[derive(Default)]
struct State {
    seq: u64,
    pending: HashMap<String, Pending>,
    /// Call ids oldest first, with the entry's `seq` (stale rows are skipped).
    order: VecDeque<(u64, String)>,
    bytes: usize,
    responses: HashMap<String, Arc<Asker>>,
    response_order: VecDeque<String>,
    /// Call ids already answered, with their asker: a client's retry of the request that
    /// answered them still joins the loop (no second span). Bounded like `responses`.
    answered: HashMap<String, Arc<Asker>>,
    answered_order: VecDeque<String>,
    held: VecDeque<Held>,
    held_bytes: usize,
    /// Call ids the app reported spans for, per trace; bounded like the pending table.
    reported: HashSet<([u8; 16], String)>,
    reported_order: VecDeque<([u8; 16], String)>,
    /// Held spans evicted by the limits: emitted with the next batch rather than lost.
    overflow: Vec<ToolSpan>,
}

pub struct ToolTable {
    limits: ToolLimits,
    capturer: Arc<Capturer>,
    metrics: Arc<Metrics>,
    app_sends_spans: AtomicBool,
    state: Mutex<State>,
}

/// Longest tool result or arguments kept in memory per call, whatever the capture budget.
const MAX_CONTENT_BYTES: usize = 64 * 1024;

fn cut(s: &str, max: usize) -> &str {
    &s[..s.floor_char_boundary(max)]
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl ToolTable {
    pub fn new(limits: ToolLimits, capturer: Arc<Capturer>, metrics: Arc<Metrics>) -> ToolTable {
        ToolTable {
            limits,
            capturer,
            metrics,
            app_sends_spans: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How often the sweeper should look: often enough for the shortest wait.
    pub fn sweep_every(&self) -> Duration {
        let shortest = self.limits.unanswered_after.min(if self.app_sends_spans() {
            self.limits.app_span_grace
        } else {
            self.limits.unanswered_after
        });
        (shortest / 4).clamp(Duration::from_millis(5), Duration::from_secs(1))
    }

    /// The OTLP receiver says an app sends its own spans (or stopped): tool spans are held for
    /// the app's `execute_tool` spans while this is on.
    pub fn set_app_sends_spans(&self, on: bool) {
        self.app_sends_spans.store(on, Ordering::Release);
    }

    pub fn app_sends_spans(&self) -> bool {
        self.app_sends_spans.load(Ordering::Acquire)
    }

    /// The app sent a span with `gen_ai.tool.call.id = call_id` in `trace_id`: the gateway's
    /// span for that call is dropped (the app's wins), held or not yet made.
    pub fn app_reported(&self, trace_id: [u8; 16], call_id: &str) {
        let mut st = self.lock();
        let key = (trace_id, call_id.to_owned());
        if let Some(at) = st
            .held
            .iter()
            .position(|h| h.trace_id == trace_id && h.call_id == call_id)
            && let Some(h) = st.held.remove(at)
        {
            st.held_bytes -= h.bytes;
            self.metrics.tools.dropped("app_reported");
            return;
        }
        if st.reported.insert(key.clone()) {
            st.reported_order.push_back(key);
            while st.reported_order.len() > self.limits.max_entries {
                if let Some(old) = st.reported_order.pop_front() {
                    st.reported.remove(&old);
                }
            }
        }
    }

    /// A finished call: remembers the tool calls its response asked for, and its response id.
    /// Returns held spans the limits pushed out.
    pub fn remember(&self, call: &CallRecord, now: Instant) -> Vec<ToolSpan> {
        let Some(response) = &call.response else {
            return Vec::new();
        };
        let calls: Vec<_> = response
            .tool_calls
            .iter()
            .filter(|t| !t.id.is_empty())
            .collect();
        // Only an API whose requests can name a response (`previous_response_id`) has ids
        // worth remembering: a chat completion's id is never followed.
        let response_id = response
            .response_id
            .as_deref()
            .filter(|id| !id.is_empty() && request::continued_by_response_id(call.format));
        if calls.is_empty() && response_id.is_none() {
            return Vec::new();
        }
        let asker = Arc::new(Asker::of(call));
        let start = call.started_at + call.duration;
        // With whether they were cut short: by the parser (its output was cut, and this is
        // its last tool call) or here.
        let arguments = |id: &str| {
            let out = response.output.as_ref()?;
            let i = out.tool_calls.iter().position(|t| t.id == id)?;
            let t = &out.tool_calls[i];
            let kept = cut(&t.arguments, MAX_CONTENT_BYTES + REDACTION_MARGIN);
            let by_parser = out.truncated && i + 1 == out.tool_calls.len();
            Some((kept.to_owned(), by_parser || kept.len() < t.arguments.len()))
        };
        let mut st = self.lock();
        if let Some(id) = response_id
            && self.limits.max_response_ids > 0
        {
            if st.responses.insert(id.to_owned(), asker.clone()).is_none() {
                st.response_order.push_back(id.to_owned());
            }
            while st.response_order.len() > self.limits.max_response_ids {
                if let Some(old) = st.response_order.pop_front() {
                    st.responses.remove(&old);
                    self.metrics.tools.evicted("response_ids");
                }
            }
        }
        for (i, t) in calls.iter().enumerate() {
            let (arguments, arguments_cut) = arguments(&t.id).unzip();
            let bytes = 128
                + asker.bytes()
                + t.id.len() * 2
                + t.name.len()
                + arguments.as_ref().map_or(0, String::len);
            st.seq += 1;
            let seq = st.seq;
            let entry = Pending {
                asker: asker.clone(),
                name: t.name.clone(),
                arguments,
                arguments_cut: arguments_cut.unwrap_or(false),
                asked: call.metadata.capture,
                // A nanosecond apart in the order the call asked for them: a trace lists spans
                // that start together in no set order.
                start: start + Duration::from_nanos(i as u64),
                deadline: now + self.limits.unanswered_after,
                bytes,
                seq,
            };
            if let Some(old) = st.pending.insert(t.id.clone(), entry) {
                // The same id asked again (a retried call): the newer asker wins.
                st.bytes -= old.bytes;
            }
            st.bytes += bytes;
            st.order.push_back((seq, t.id.clone()));
        }
        self.evict(&mut st);
        std::mem::take(&mut st.overflow)
    }

    /// Evicts the oldest pending calls past the count or byte limit (held spans count too).
    fn evict(&self, st: &mut State) {
        loop {
            let count = st.pending.len() + st.held.len();
            let bytes = st.bytes + st.held_bytes;
            let reason = if count > self.limits.max_entries {
                "count"
            } else if bytes > self.limits.max_bytes {
                "bytes"
            } else {
                break;
            };
            if let Some((seq, id)) = st.order.pop_front() {
                if st.pending.get(&id).is_some_and(|p| p.seq == seq)
                    && let Some(p) = st.pending.remove(&id)
                {
                    st.bytes -= p.bytes;
                    self.metrics.tools.evicted(reason);
                }
            } else if let Some(h) = st.held.pop_front() {
                // Nothing pending is left: a held span goes out at once rather than be lost.
                st.held_bytes -= h.bytes;
                self.metrics.tools.evicted(reason);
                self.metrics.tools.emitted.inc();
                st.overflow.push(h.span);
            } else {
                break;
            }
        }
        // Answered calls leave stale rows behind; keep the queue near the table's size.
        if st.order.len() > 2 * st.pending.len() + 64 {
            let State { order, pending, .. } = st;
            order.retain(|(seq, id)| pending.get(id).is_some_and(|p| p.seq == *seq));
        }
    }

    /// The call a request follows, for a request with no trace header (the join is
    /// counted): the one that asked for a tool call it answers, else the one whose response id
    /// it names as `previous_response_id`. A request that names a session other than that
    /// call's does not join it.
    pub fn join(
        &self,
        results: &[ToolResult],
        previous_response_id: Option<&str>,
        session: Option<&str>,
    ) -> Option<Arc<Asker>> {
        let st = self.lock();
        let same_session = |a: &Asker| match (session, a.session_id.as_deref()) {
            (Some(s), Some(theirs)) => s == theirs,
            _ => true,
        };
        // A synthetic id (`<name>#<n>`, Gemini without ids) repeats across apps: it links only
        // calls that name the same session.
        let same_named_session = |a: &Asker| matches!((session, a.session_id.as_deref()), (Some(s), Some(theirs)) if s == theirs);
        let by_result = results
            .iter()
            .filter_map(|r| {
                let asker = st
                    .pending
                    .get(&r.call_id)
                    .map(|p| &p.asker)
                    .or_else(|| st.answered.get(&r.call_id))?;
                Some((r, asker))
            })
            .find(|(r, asker)| {
                if is_synthetic_tool_call_id(&r.call_id) {
                    same_named_session(asker)
                } else {
                    same_session(asker)
                }
            })
            .map(|(_, asker)| (asker.clone(), "tool_result"));
        let by_response = || {
            let asker = st.responses.get(previous_response_id?)?;
            same_session(asker).then(|| (asker.clone(), "previous_response_id"))
        };
        let (asker, link) = by_result.or_else(by_response)?;
        self.metrics.tools.joined(link);
        Some(asker)
    }

    /// Keeps an answered call's asker for joining a retry; the oldest go past the bound.
    fn remember_answered(&self, st: &mut State, call_id: &str, asker: &Arc<Asker>) {
        if self.limits.max_response_ids == 0 {
            return;
        }
        if st
            .answered
            .insert(call_id.to_owned(), asker.clone())
            .is_none()
        {
            st.answered_order.push_back(call_id.to_owned());
        }
        while st.answered_order.len() > self.limits.max_response_ids {
            if let Some(old) = st.answered_order.pop_front() {
                st.answered.remove(&old);
                self.metrics.tools.evicted("answered");
            }
        }
    }

    /// A request carrying tool results arrived at `arrived`: each result of a pending call
    /// makes its span (ended now), returned unless it is held for the app's own. `asked` is
    /// the capture level that request's caller asked for (it governs the results).
    pub fn answer(
        &self,
        results: &[ToolResult],
        trace_id: [u8; 16],
        asked: Option<CaptureLevel>,
        arrived: SystemTime,
        now: Instant,
    ) -> Vec<ToolSpan> {
        if results.is_empty() {
            return Vec::new();
        }
        let hold = self.app_sends_spans();
        // The answered calls leave the table under the lock; their spans (redaction included)
        // are built after it, so other requests never wait on that work.
        let mut taken = Vec::new();
        {
            let mut st = self.lock();
            for r in results {
                // A synthetic id answers only a call of the request's own trace.
                if is_synthetic_tool_call_id(&r.call_id)
                    && st
                        .pending
                        .get(&r.call_id)
                        .is_none_or(|p| p.asker.trace_id != trace_id)
                {
                    continue;
                }
                let Some(p) = st.pending.remove(&r.call_id) else {
                    continue;
                };
                st.bytes -= p.bytes;
                self.remember_answered(&mut st, &r.call_id, &p.asker);
                if st.reported.contains(&(p.asker.trace_id, r.call_id.clone())) {
                    self.metrics.tools.dropped("app_reported");
                    continue;
                }
                taken.push((p, r));
            }
        }
        let built: Vec<_> = taken
            .into_iter()
            .map(|(p, r)| {
                let span = self.span(&p, &r.call_id, Some((r, asked)), arrived);
                (p, r, span)
            })
            .collect();
        let mut out = Vec::new();
        let mut st = self.lock();
        for (p, r, span) in built {
            let trace_id = p.asker.trace_id;
            // The app may have reported it while the span was being built.
            if st.reported.contains(&(trace_id, r.call_id.clone())) {
                self.metrics.tools.dropped("app_reported");
                continue;
            }
            self.metrics
                .tools
                .answered(if r.is_error { "error" } else { "ok" });
            if hold {
                let bytes = p.bytes + r.content.len();
                st.held_bytes += bytes;
                st.held.push_back(Held {
                    trace_id,
                    call_id: r.call_id.clone(),
                    span,
                    release: now + self.limits.app_span_grace,
                    bytes,
                });
            } else {
                self.metrics.tools.emitted.inc();
                out.push(span);
            }
        }
        self.evict(&mut st);
        out.append(&mut st.overflow);
        out
    }

    /// Ends the calls whose wait is over (as unanswered) and releases the held spans whose
    /// grace is over.
    pub fn sweep(&self, now: Instant) -> Vec<ToolSpan> {
        let mut st = self.lock();
        let mut out = std::mem::take(&mut st.overflow);
        while let Some(h) = st.held.front()
            && h.release <= now
        {
            if let Some(h) = st.held.pop_front() {
                st.held_bytes -= h.bytes;
                self.metrics.tools.emitted.inc();
                out.push(h.span);
            }
        }
        while let Some((seq, id)) = st.order.front() {
            let live = st.pending.get(id).filter(|p| p.seq == *seq);
            match live {
                Some(p) if p.deadline > now => break,
                Some(_) => {
                    let id = id.clone();
                    st.order.pop_front();
                    if let Some(p) = st.pending.remove(&id) {
                        st.bytes -= p.bytes;
                        out.push(self.unanswered(&p, &id));
                    }
                }
                None => {
                    st.order.pop_front();
                }
            }
        }
        out
    }

    /// Shutdown: every held span goes out, and every pending call ends now as unanswered
    /// (marked `shutdown`), so nothing the gateway saw is lost silently.
    pub fn drain(&self) -> Vec<ToolSpan> {
        let mut st = self.lock();
        let mut out = std::mem::take(&mut st.overflow);
        self.metrics.tools.emitted.inc_by(st.held.len() as u64);
        out.extend(st.held.drain(..).map(|h| h.span));
        st.held_bytes = 0;
        let order: Vec<(u64, String)> = st.order.drain(..).collect();
        for (seq, id) in order {
            if st.pending.get(&id).is_some_and(|p| p.seq == seq)
                && let Some(p) = st.pending.remove(&id)
            {
                let (mut exported, mut stored) = self.unanswered(&p, &id);
                let now = unix_nanos(SystemTime::now()).max(exported.start_unix_nanos);
                for s in std::iter::once(&mut exported).chain(stored.as_mut()) {
                    s.end_unix_nanos = now;
                    s.attributes.push((
                        "sidetrace.tool.unanswered_reason".into(),
                        AttrValue::Str("shutdown".into()),
                    ));
                }
                out.push((exported, stored));
            }
        }
        st.bytes = 0;
        out
    }

    fn unanswered(&self, p: &Pending, call_id: &str) -> ToolSpan {
        self.metrics.tools.unanswered.inc();
        self.metrics.tools.emitted.inc();
        let end = p.start + self.limits.unanswered_after;
        let (mut exported, mut stored) = self.span(p, call_id, None, end);
        for s in std::iter::once(&mut exported).chain(stored.as_mut()) {
            s.attributes
                .push(("sidetrace.tool.unanswered".into(), AttrValue::Bool(true)));
        }
        (exported, stored)
    }

    /// The span of one tool call, for the export at its capture level and, when the store's
    /// level differs, for the store.
    fn span(
        &self,
        p: &Pending,
        call_id: &str,
        result: Option<(&ToolResult, Option<CaptureLevel>)>,
        end: SystemTime,
    ) -> ToolSpan {
        let start_ns = unix_nanos(p.start);
        let mut base = SpanRecord {
            trace_id: p.asker.trace_id,
            span_id: random_span_id(),
            parent_span_id: Some(p.asker.span_id),
            parent_is_remote: false,
            flags: p.asker.flags,
            trace_state: p.asker.trace_state.clone(),
            name: format!("execute_tool {}", p.name),
            kind: "internal".into(),
            start_unix_nanos: start_ns,
            end_unix_nanos: unix_nanos(end).max(start_ns),
            status: SpanStatus::Unset,
            attributes: Vec::with_capacity(10),
            events: Vec::new(),
            links: Vec::new(),
            origin: None,
        };
        let s = |k: &'static str, v: &str| -> (AttrKey, AttrValue) {
            (k.into(), AttrValue::Str(v.to_string()))
        };
        base.attributes
            .push(s("gen_ai.operation.name", "execute_tool"));
        base.attributes.push(s("gen_ai.tool.name", &p.name));
        base.attributes.push(s("gen_ai.tool.call.id", call_id));
        base.attributes.push(s("gen_ai.tool.type", "function"));
        if let Some(session) = &p.asker.session_id {
            base.attributes.push(s("session.id", session));
            base.attributes.push(s("gen_ai.conversation.id", session));
        }
        if let Some((r, _)) = result
            && r.is_error
        {
            base.status = SpanStatus::Error("the tool returned an error".into());
            base.attributes.push(s("error.type", "tool_error"));
        }
        let content = |level: Option<CaptureLevel>, res_level: Option<CaptureLevel>| {
            let mut span = base.clone();
            if let (Some(args), Some(level)) = (&p.arguments, level)
                && let Some(text) = self.content(args, level, p.arguments_cut)
            {
                span.attributes
                    .push(("gen_ai.tool.call.arguments".into(), AttrValue::Str(text)));
            }
            if let (Some((r, _)), Some(level)) = (result, res_level)
                && let Some(text) = self.content(&r.content, level, false)
            {
                span.attributes
                    .push(("gen_ai.tool.call.result".into(), AttrValue::Str(text)));
            }
            span
        };
        let res_asked = result.and_then(|(_, a)| a);
        let exported = content(
            Some(self.capturer.level(p.asked)),
            Some(self.capturer.level(res_asked)),
        );
        let store = (
            self.capturer.store_level(p.asked),
            self.capturer.store_level(res_asked),
        );
        let stored = (store.0.is_some() || store.1.is_some()).then(|| content(store.0, store.1));
        let stored = stored.filter(|s| *s != exported);
        (exported, stored)
    }

    /// Arguments or a result as `level` keeps them: text only at `redacted` (redacted) and
    /// `full`, cut to the capture size limit. `cut_short`: the text came cut already.
    fn content(&self, text: &str, level: CaptureLevel, cut_short: bool) -> Option<String> {
        let max = self.capturer.max_bytes.min(MAX_CONTENT_BYTES);
        let text = match level {
            CaptureLevel::None | CaptureLevel::Metadata => return None,
            // Cut first (with a margin, so a secret across the cut is still seen whole), then
            // redact: the work is bounded whatever the size of the text.
            CaptureLevel::Redacted if cut_short || text.len() > max + REDACTION_MARGIN => {
                redacted_cut_short(&self.capturer.redactor, cut(text, max + REDACTION_MARGIN))
            }
            CaptureLevel::Redacted => self.capturer.redactor.redact(text).into_owned(),
            CaptureLevel::Full => cut(text, max).to_owned(),
        };
        Some(cut(&text, max).to_owned())
    }

    /// Pending calls and held spans, for tests and the metrics.
    pub fn len(&self) -> (usize, usize) {
        let st = self.lock();
        (st.pending.len(), st.held.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        config::CaptureConfig,
        format::{CapturedOutput, ResponseRecord, ToolCallOutput, ToolCallRef},
        provider::WireFormat,
        trace::metadata::CallMetadata,
    };

    fn table(limits: ToolLimits, level: CaptureLevel) -> ToolTable {
        let capturer = Capturer::from_config(&CaptureConfig {
            level,
            ..CaptureConfig::default()
        })
        .unwrap();
        ToolTable::new(limits, Arc::new(capturer), Arc::new(Metrics::new()))
    }

    fn limits() -> ToolLimits {
        ToolLimits {
            max_entries: 100,
            max_bytes: 1 << 20,
            unanswered_after: Duration::from_secs(60),
            app_span_grace: Duration::from_secs(10),
            max_response_ids: 100,
        }
    }

    /// A finished call whose response asked for `calls` (id, name, arguments).
    fn call(span: u8, parent: Option<u8>, calls: &[(&str, &str, &str)]) -> CallRecord {
        let chat = CallRecord::test_chat();
        CallRecord {
            response: Some(ResponseRecord {
                response_id: Some(format!("resp_{span}")),
                tool_calls: calls
                    .iter()
                    .map(|(id, name, _)| ToolCallRef {
                        id: (*id).into(),
                        name: (*name).into(),
                    })
                    .collect(),
                output: Some(CapturedOutput {
                    text: String::new(),
                    tool_calls: calls
                        .iter()
                        .map(|(id, name, args)| ToolCallOutput {
                            id: (*id).into(),
                            name: (*name).into(),
                            arguments: (*args).into(),
                        })
                        .collect(),
                    truncated: false,
                }),
                ..ResponseRecord::default()
            }),
            started_at: UNIX_EPOCH + Duration::from_secs(1000),
            duration: Duration::from_millis(250),
            trace: TraceContext {
                trace_id: [7; 16],
                span_id: [span; 8],
                parent_span_id: parent.map(|p| [p; 8]),
                ..chat.trace.clone()
            },
            metadata: CallMetadata {
                session_id: Some("s1".into()),
                ..CallMetadata::default()
            },
            ..chat
        }
    }

    fn result(id: &str, content: &str, is_error: bool) -> ToolResult {
        ToolResult {
            call_id: id.into(),
            name: None,
            content: content.into(),
            is_error,
        }
    }

    #[test]
    fn a_loop_with_no_sdk_is_a_flat_tree_under_its_first_call() {
        let t = table(limits(), CaptureLevel::Full);
        let now = Instant::now();
        t.remember(&call(1, None, &[("c1", "f", "{}")]), now);
        let asker = t.join(&[result("c1", "x", false)], None, None).unwrap();
        let second = asker.followed_by([2; 8]);
        assert_eq!(second.trace_id, [7; 16]);
        assert_eq!(
            second.parent_span_id,
            Some([1; 8]),
            "the root is the parent"
        );
        assert_eq!(second.source, TraceSource::Joined);
        // The second call's own follower goes under the root too, not under the second.
        let mut second_call = call(2, Some(1), &[("c2", "g", "{}")]);
        // A Responses API call: its id can be named as `previous_response_id`.
        second_call.format = WireFormat::Responses;
        t.remember(&second_call, now);
        let asker = t.join(&[result("c2", "y", false)], None, None).unwrap();
        assert_eq!(asker.followed_by([3; 8]).parent_span_id, Some([1; 8]));
        // By response id too, and a request naming another session does not join.
        assert!(t.join(&[], Some("resp_2"), Some("s1")).is_some());
        assert!(t.join(&[], Some("resp_2"), Some("other")).is_none());
        assert!(t.join(&[], Some("resp_unknown"), None).is_none());
        // A chat completion's id is never remembered: no request can name it.
        assert!(t.join(&[], Some("resp_1"), None).is_none());
    }

    #[test]
    fn a_synthetic_id_links_only_the_same_session_and_answers_only_its_own_trace() {
        let t = table(limits(), CaptureLevel::Full);
        let now = Instant::now();
        t.remember(
            &call(1, None, &[("get_weather#0", "get_weather", "{}")]),
            now,
        );
        let answer = [result("get_weather#0", "{\"t\":18}", false)];
        // Another app with the same tool, no session: not joined, and not its answer.
        assert!(t.join(&answer, None, None).is_none());
        assert!(
            t.answer(&answer, [9; 16], None, SystemTime::now(), now)
                .is_empty()
        );
        assert!(t.join(&answer, None, Some("s2")).is_none());
        // The same session joins, and the answer in that trace makes the span.
        assert!(t.join(&answer, None, Some("s1")).is_some());
        let spans = t.answer(&answer, [7; 16], None, SystemTime::now(), now);
        assert_eq!(spans.len(), 1);
        // A real id still links without a session.
        t.remember(&call(2, None, &[("call_1", "f", "{}")]), now);
        assert!(t.join(&[result("call_1", "", false)], None, None).is_some());
    }

    /// Arguments the body parser cut short: redacted, no part of an address its cut left
    /// is kept, however much redaction shrank what came before.
    #[test]
    fn arguments_cut_short_keep_no_part_of_a_finding() {
        let t = table(limits(), CaptureLevel::Redacted);
        let now = Instant::now();
        let mut args = "{\"to\":\"".to_string();
        args.push_str(&"abcdefgh@example.com ".repeat(20));
        args.push_str("x jane@exa");
        let mut asking = call(1, None, &[("c1", "mail", &args)]);
        let output = asking.response.as_mut().unwrap().output.as_mut().unwrap();
        output.truncated = true;
        t.remember(&asking, now);
        let arrived = UNIX_EPOCH + Duration::from_secs(1002);
        let spans = t.answer(&[result("c1", "sent", false)], [7; 16], None, arrived, now);
        let (s, _) = &spans[0];
        let Some(AttrValue::Str(kept)) = s.attr("gen_ai.tool.call.arguments") else {
            panic!("no arguments: {s:?}");
        };
        assert!(!kept.contains("jane"), "{kept}");
    }

    #[test]
    fn an_answered_call_makes_one_span_from_the_end_of_the_call_to_the_answer() {
        let t = table(limits(), CaptureLevel::Full);
        let now = Instant::now();
        t.remember(&call(1, None, &[("c1", "search", "{\"q\":1}")]), now);
        let arrived = UNIX_EPOCH + Duration::from_secs(1002);
        let spans = t.answer(&[result("c1", "hits", true)], [7; 16], None, arrived, now);
        assert_eq!(spans.len(), 1);
        let (s, stored) = &spans[0];
        assert_eq!(stored, &None, "no store: one copy");
        assert_eq!(s.name, "execute_tool search");
        assert_eq!(s.kind, "internal");
        assert_eq!(s.parent_span_id, Some([1; 8]));
        assert_eq!(s.start_unix_nanos, 1_000_250_000_000);
        assert_eq!(s.end_unix_nanos, 1_002_000_000_000);
        assert!(matches!(s.status, SpanStatus::Error(_)));
        assert_eq!(
            s.attr("gen_ai.tool.call.arguments"),
            Some(&AttrValue::Str("{\"q\":1}".into()))
        );
        assert_eq!(
            s.attr("gen_ai.tool.call.result"),
            Some(&AttrValue::Str("hits".into()))
        );
        // Answered once: a second answer makes nothing.
        assert!(
            t.answer(&[result("c1", "hits", false)], [7; 16], None, arrived, now)
                .is_empty()
        );
        assert!(t.is_empty());
    }

    #[test]
    fn without_content_capture_a_span_has_no_arguments_or_result() {
        let t = table(limits(), CaptureLevel::Metadata);
        let now = Instant::now();
        t.remember(&call(1, None, &[("c1", "f", "{\"secret\":1}")]), now);
        let spans = t.answer(
            &[result("c1", "r", false)],
            [7; 16],
            None,
            SystemTime::now(),
            now,
        );
        let (s, _) = &spans[0];
        assert_eq!(s.attr("gen_ai.tool.call.arguments"), None);
        assert_eq!(s.attr("gen_ai.tool.call.result"), None);
        assert_eq!(
            s.attr("gen_ai.tool.call.id"),
            Some(&AttrValue::Str("c1".into()))
        );
    }

    #[test]
    fn bytes_bound_the_table_and_the_oldest_calls_go_first() {
        let t = table(
            ToolLimits {
                max_bytes: 1000,
                ..limits()
            },
            CaptureLevel::Full,
        );
        let now = Instant::now();
        let big = "x".repeat(400);
        for i in 0..5u8 {
            t.remember(&call(i + 1, None, &[(&format!("c{i}"), "f", &big)]), now);
        }
        let (pending, _) = t.len();
        assert!((1..5).contains(&pending), "{pending}");
        assert!(t.join(&[result("c4", "", false)], None, None).is_some());
        assert!(t.join(&[result("c0", "", false)], None, None).is_none());
    }

    #[test]
    fn unanswered_calls_end_after_the_wait_and_shutdown_ends_the_rest() {
        let t = table(limits(), CaptureLevel::Full);
        let now = Instant::now();
        t.remember(&call(1, None, &[("c1", "f", "{}")]), now);
        assert!(t.sweep(now + Duration::from_secs(59)).is_empty());
        let spans = t.sweep(now + Duration::from_secs(60));
        assert_eq!(spans.len(), 1);
        let (s, _) = &spans[0];
        assert_eq!(
            s.attr("sidetrace.tool.unanswered"),
            Some(&AttrValue::Bool(true))
        );
        assert_eq!(s.end_unix_nanos - s.start_unix_nanos, 60_000_000_000);

        t.remember(&call(2, None, &[("c2", "g", "{}")]), now);
        let spans = t.drain();
        assert_eq!(spans.len(), 1);
        assert_eq!(
            spans[0].0.attr("sidetrace.tool.unanswered_reason"),
            Some(&AttrValue::Str("shutdown".into()))
        );
        assert!(t.is_empty());
    }

    #[test]
    fn while_apps_send_spans_a_finished_span_is_held_and_the_apps_own_wins() {
        let t = table(limits(), CaptureLevel::Full);
        t.set_app_sends_spans(true);
        let now = Instant::now();
        t.remember(&call(1, None, &[("c1", "f", "{}"), ("c2", "g", "{}")]), now);
        let arrived = SystemTime::now();
        let out = t.answer(
            &[result("c1", "", false), result("c2", "", false)],
            [7; 16],
            None,
            arrived,
            now,
        );
        assert!(out.is_empty(), "held");
        t.app_reported([7; 16], "c1");
        t.app_reported([9; 16], "c2"); // another trace: not the same call
        assert!(t.sweep(now + Duration::from_secs(9)).is_empty());
        let out = t.sweep(now + Duration::from_secs(10));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0.name, "execute_tool g");
        // Switched off: emitted at once.
        t.set_app_sends_spans(false);
        t.remember(&call(2, None, &[("c3", "h", "{}")]), now);
        assert_eq!(
            t.answer(&[result("c3", "", false)], [7; 16], None, arrived, now)
                .len(),
            1
        );
    }
}
