//! What the trace store keeps beside the spans: one summary row per trace and per session, kept
//! current as spans arrive, so that lists and filters read rows, not spans.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::trace::span::{AttrValue, SpanRecord, SpanStatus};

/// What one span adds to its trace (and its session).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub spans: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub reasoning_tokens: u64,
    pub output_tokens: u64,
    /// Exact cost of the priced spans, in pico-USD.
    pub cost_pico_usd: u128,
    /// Spans that carried a cost; `cost_pico_usd` means nothing when this is 0.
    pub priced_spans: u64,
}

impl Totals {
    /// Whether it holds tokens (a span that reported usage).
    pub fn has_usage(&self) -> bool {
        self.input_tokens > 0 || self.output_tokens > 0
    }

    /// The same span counted without its tokens and cost (see [`super::query::counted_twice`]).
    pub fn without_usage(self) -> Totals {
        Totals {
            spans: self.spans,
            errors: self.errors,
            ..Totals::default()
        }
    }

    /// The counts, in the order the encodings keep them (the cost apart).
    pub(super) fn counts(&self) -> [u64; 7] {
        [
            self.spans,
            self.errors,
            self.input_tokens,
            self.cached_input_tokens,
            self.reasoning_tokens,
            self.output_tokens,
            self.priced_spans,
        ]
    }

    /// Totals from [`Totals::counts`] and the cost.
    pub(super) fn from_counts(counts: [u64; 7], cost_pico_usd: u128) -> Totals {
        let [
            spans,
            errors,
            input_tokens,
            cached_input_tokens,
            reasoning_tokens,
            output_tokens,
            priced_spans,
        ] = counts;
        Totals {
            spans,
            errors,
            input_tokens,
            cached_input_tokens,
            reasoning_tokens,
            output_tokens,
            cost_pico_usd,
            priced_spans,
        }
    }

    /// One span's own figures: its token counts and cost (`cost_pico_usd` when the gateway
    /// priced it, else its `cost.usd` attribute).
    pub fn of_span(span: &SpanRecord, cost_pico_usd: Option<u128>) -> Totals {
        Totals::of(span, &Picked::of(span), cost_pico_usd)
    }

    /// [`Totals::of_span`] from the span's attributes already picked.
    fn of(span: &SpanRecord, picked: &Picked<'_>, cost_pico_usd: Option<u128>) -> Totals {
        let int = |v: Option<&AttrValue>| match v {
            Some(AttrValue::Int(n)) => u64::try_from(*n).unwrap_or(0),
            _ => 0,
        };
        let cost = cost_pico_usd.or_else(|| match picked.cost_usd {
            Some(AttrValue::Double(usd)) if *usd >= 0.0 && usd.is_finite() => {
                Some((usd * 1e12).round() as u128)
            }
            _ => None,
        });
        Totals {
            spans: 1,
            errors: u64::from(matches!(span.status, SpanStatus::Error(_))),
            input_tokens: int(picked.input_tokens),
            cached_input_tokens: int(picked.cached_input_tokens),
            reasoning_tokens: int(picked.reasoning_tokens),
            output_tokens: int(picked.output_tokens),
            cost_pico_usd: cost.unwrap_or(0),
            priced_spans: u64::from(cost.is_some()),
        }
    }

    pub fn add(&mut self, o: &Totals) {
        self.spans += o.spans;
        self.errors += o.errors;
        self.input_tokens += o.input_tokens;
        self.cached_input_tokens += o.cached_input_tokens;
        self.reasoning_tokens += o.reasoning_tokens;
        self.output_tokens += o.output_tokens;
        self.cost_pico_usd = self.cost_pico_usd.saturating_add(o.cost_pico_usd);
        self.priced_spans += o.priced_spans;
    }

    pub fn sub(&mut self, o: &Totals) {
        self.spans = self.spans.saturating_sub(o.spans);
        self.errors = self.errors.saturating_sub(o.errors);
        self.input_tokens = self.input_tokens.saturating_sub(o.input_tokens);
        self.cached_input_tokens = self
            .cached_input_tokens
            .saturating_sub(o.cached_input_tokens);
        self.reasoning_tokens = self.reasoning_tokens.saturating_sub(o.reasoning_tokens);
        self.output_tokens = self.output_tokens.saturating_sub(o.output_tokens);
        self.cost_pico_usd = self.cost_pico_usd.saturating_sub(o.cost_pico_usd);
        self.priced_spans = self.priced_spans.saturating_sub(o.priced_spans);
    }

    /// The cost, when any span in it was priced.
    pub fn cost(&self) -> Option<u128> {
        (self.priced_spans > 0).then_some(self.cost_pico_usd)
    }
}

/// One trace's row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceSummary {
    pub trace_id: [u8; 16],
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    /// The earliest span without a parent, when one arrived.
    pub root_name: Option<String>,
    pub(super) root_start: u64,
    /// The earliest span's name: the trace's name until its root arrives.
    pub(super) first_name: String,
    pub totals: Totals,
    /// The first feature, user and session seen in the trace.
    pub feature: Option<String>,
    pub user: Option<String>,
    pub session: Option<String>,
    /// Every distinct model (as answered, else as requested) and provider.
    pub models: Vec<String>,
    pub providers: Vec<String>,
    /// Stored bytes of the trace's spans (keys and values), for the size bound.
    pub bytes: u64,
    /// It holds a span not the gateway's that reported usage ([`SAME_CALL_APP`]) and a gateway
    /// call span with a parent ([`SAME_CALL_GATEWAY`]): with both, a call may be reported twice
    /// (`query::counted_twice`), and the trace is counted again from its spans as spans join.
    #[serde(default)]
    pub(super) same_call: u8,
}

/// [`TraceSummary::same_call`]'s flags.
pub(super) const SAME_CALL_APP: u8 = 1;
pub(super) const SAME_CALL_GATEWAY: u8 = 2;

/// The attributes a trace's row reads from a span (the first of each key, as
/// [`SpanRecord::attr`] finds it), in one pass over them instead of one a key.
#[derive(Default)]
struct Picked<'a> {
    feature: Option<&'a AttrValue>,
    user: Option<&'a AttrValue>,
    session: Option<&'a AttrValue>,
    response_model: Option<&'a AttrValue>,
    request_model: Option<&'a AttrValue>,
    provider: Option<&'a AttrValue>,
    gen_ai_provider: Option<&'a AttrValue>,
    input_tokens: Option<&'a AttrValue>,
    cached_input_tokens: Option<&'a AttrValue>,
    reasoning_tokens: Option<&'a AttrValue>,
    output_tokens: Option<&'a AttrValue>,
    cost_usd: Option<&'a AttrValue>,
}

impl<'a> Picked<'a> {
    fn of(span: &'a SpanRecord) -> Picked<'a> {
        let mut p = Picked::default();
        for (key, value) in &span.attributes {
            let slot = match key.as_ref() {
                "feature.id" => &mut p.feature,
                "user.id" => &mut p.user,
                "session.id" => &mut p.session,
                "gen_ai.response.model" => &mut p.response_model,
                "gen_ai.request.model" => &mut p.request_model,
                "sidetrace.provider" => &mut p.provider,
                "gen_ai.provider.name" => &mut p.gen_ai_provider,
                "gen_ai.usage.input_tokens" => &mut p.input_tokens,
                "gen_ai.usage.cache_read.input_tokens" => &mut p.cached_input_tokens,
                "gen_ai.usage.reasoning.output_tokens" => &mut p.reasoning_tokens,
                "gen_ai.usage.output_tokens" => &mut p.output_tokens,
                "cost.usd" => &mut p.cost_usd,
                _ => continue,
            };
            slot.get_or_insert(value);
        }
        p
    }
}

/// A non-empty string value.
fn text(value: Option<&AttrValue>) -> Option<&str> {
    match value {
        Some(AttrValue::Str(s)) if !s.is_empty() => Some(s),
        _ => None,
    }
}

impl TraceSummary {
    pub fn new(trace_id: [u8; 16]) -> TraceSummary {
        TraceSummary {
            trace_id,
            ..TraceSummary::default()
        }
    }

    /// The name to show for the trace.
    pub fn name(&self) -> &str {
        self.root_name.as_deref().unwrap_or(&self.first_name)
    }

    pub fn duration_nanos(&self) -> u64 {
        self.end_unix_nanos.saturating_sub(self.start_unix_nanos)
    }

    /// Adds one span (`cost_pico_usd`: the gateway's price, as for [`Totals::of_span`];
    /// `bytes`: what it takes in the store).
    pub fn add(&mut self, span: &SpanRecord, cost_pico_usd: Option<u128>, bytes: u64) {
        self.add_facts(&mut SpanFacts::of(span, cost_pico_usd), bytes);
    }

    /// Adds one span, from what its trace's row takes from it. The text the row keeps is
    /// taken from `span` where it owns it (a call's span, whose facts were copied out on the
    /// request's worker), not copied once more.
    pub fn add_facts(&mut self, span: &mut SpanFacts<'_>, bytes: u64) {
        let earliest = self.totals.spans == 0 || span.start_unix_nanos < self.start_unix_nanos;
        let root =
            span.root && (self.root_name.is_none() || span.start_unix_nanos < self.root_start);
        if earliest {
            self.start_unix_nanos = span.start_unix_nanos;
            self.first_name = if root {
                span.name.to_string()
            } else {
                take(&mut span.name)
            };
        }
        self.end_unix_nanos = self.end_unix_nanos.max(span.end_unix_nanos);
        if root {
            self.root_name = Some(take(&mut span.name));
            self.root_start = span.start_unix_nanos;
        }
        self.totals.add(&span.totals);
        self.bytes += bytes;
        for (have, seen) in [
            (&mut self.feature, &mut span.feature),
            (&mut self.user, &mut span.user),
            (&mut self.session, &mut span.session),
        ] {
            if have.is_none() {
                *have = seen.as_mut().map(take);
            }
        }
        add_new(&mut self.models, &mut span.model);
        add_new(&mut self.providers, &mut span.provider);
        add_new(&mut self.models, &mut span.requested_model);
    }
}

/// The text of `text`, taken when owned (left empty), copied when borrowed.
fn take(text: &mut Cow<'_, str>) -> String {
    std::mem::take(text).into_owned()
}

/// Adds `value` to `list` unless it is there already.
fn add_new(list: &mut Vec<String>, value: &mut Option<Cow<'_, str>>) {
    if let Some(v) = value
        && !list.iter().any(|known| known == v)
    {
        list.push(take(v));
    }
}

/// What a trace's row takes from one of its spans. Read from the span where it is (borrowed),
/// or, for a call's span encoded on the request's worker, copied out to go with its bytes to
/// the writer ([`SpanFacts::into_owned`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpanFacts<'a> {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub start_unix_nanos: u64,
    end_unix_nanos: u64,
    /// It has no parent.
    root: bool,
    name: Cow<'a, str>,
    totals: Totals,
    /// Its first non-empty `feature.id`, `user.id` and `session.id`.
    feature: Option<Cow<'a, str>>,
    user: Option<Cow<'a, str>>,
    session: Option<Cow<'a, str>>,
    /// The model as answered, else as requested; and as requested when that differs (the
    /// name a caller filters by: `gpt-4o`, answered as `gpt-4o-2024-08-06`).
    model: Option<Cow<'a, str>>,
    requested_model: Option<Cow<'a, str>>,
    /// The gateway's provider, else the GenAI one.
    provider: Option<Cow<'a, str>>,
}

impl<'a> SpanFacts<'a> {
    /// `cost_pico_usd`: the gateway's price, as for [`Totals::of_span`].
    pub fn of(span: &'a SpanRecord, cost_pico_usd: Option<u128>) -> SpanFacts<'a> {
        let picked = Picked::of(span);
        let text = |v: Option<&'a AttrValue>| text(v).map(Cow::Borrowed);
        SpanFacts {
            trace_id: span.trace_id,
            span_id: span.span_id,
            start_unix_nanos: span.start_unix_nanos,
            end_unix_nanos: span.end_unix_nanos,
            root: span.parent_span_id.is_none(),
            name: Cow::Borrowed(&span.name),
            totals: Totals::of(span, &picked, cost_pico_usd),
            feature: text(picked.feature),
            user: text(picked.user),
            session: text(picked.session),
            model: text(picked.response_model).or_else(|| text(picked.request_model)),
            requested_model: text(picked.request_model)
                .filter(|r| text(picked.response_model).is_some_and(|a| a != *r)),
            provider: text(picked.provider).or_else(|| text(picked.gen_ai_provider)),
        }
    }

    /// It has a parent.
    pub fn has_parent(&self) -> bool {
        !self.root
    }

    /// It reported usage (tokens).
    pub fn has_usage(&self) -> bool {
        self.totals.has_usage()
    }

    /// The same facts, owning their text.
    pub fn into_owned(self) -> SpanFacts<'static> {
        let own = |v: Option<Cow<'_, str>>| v.map(|v| Cow::Owned(v.into_owned()));
        SpanFacts {
            name: Cow::Owned(self.name.into_owned()),
            feature: own(self.feature),
            user: own(self.user),
            session: own(self.session),
            model: own(self.model),
            requested_model: own(self.requested_model),
            provider: own(self.provider),
            trace_id: self.trace_id,
            span_id: self.span_id,
            start_unix_nanos: self.start_unix_nanos,
            end_unix_nanos: self.end_unix_nanos,
            root: self.root,
            totals: self.totals,
        }
    }
}

/// One session's row: the sum of its traces' rows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSummary {
    pub session_id: String,
    pub first_unix_nanos: u64,
    pub last_unix_nanos: u64,
    pub traces: u64,
    pub totals: Totals,
    pub user: Option<String>,
    pub feature: Option<String>,
}

impl SessionSummary {
    pub fn new(session_id: &str) -> SessionSummary {
        SessionSummary {
            session_id: session_id.to_string(),
            ..SessionSummary::default()
        }
    }

    /// Takes in a trace of the session: `before` is its totals as the session counted them
    /// already (`None` when the trace is new to the session).
    pub fn update(&mut self, before: Option<&Totals>, after: &TraceSummary) {
        let empty = self.traces == 0;
        match before {
            Some(b) => self.totals.sub(b),
            None => self.traces += 1,
        }
        self.totals.add(&after.totals);
        self.first_unix_nanos = if empty {
            after.start_unix_nanos
        } else {
            self.first_unix_nanos.min(after.start_unix_nanos)
        };
        self.last_unix_nanos = self.last_unix_nanos.max(after.end_unix_nanos);
        if self.user.is_none() {
            self.user = after.user.clone();
        }
        if self.feature.is_none() {
            self.feature = after.feature.clone();
        }
    }

    /// Lets go of an evicted trace.
    pub fn remove(&mut self, trace: &TraceSummary) {
        self.traces = self.traces.saturating_sub(1);
        self.totals.sub(&trace.totals);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> AttrValue {
        AttrValue::Str(text.into())
    }

    #[test]
    fn a_row_reads_the_first_value_of_each_key_as_attr_finds_it() {
        let first = SpanRecord::with_attributes(vec![
            ("user.id", s("u1")),
            ("user.id", s("u2")),
            // An empty answered model names no model: the requested one does.
            ("gen_ai.response.model", s("")),
            ("gen_ai.request.model", s("gpt-4o")),
            ("gen_ai.provider.name", s("openai")),
            ("gen_ai.usage.input_tokens", AttrValue::Int(12)),
            ("gen_ai.usage.input_tokens", AttrValue::Int(99)),
            ("gen_ai.usage.output_tokens", AttrValue::Int(5)),
            ("cost.usd", AttrValue::Double(0.5)),
        ]);
        let totals = Totals::of_span(&first, None);
        assert_eq!((totals.input_tokens, totals.output_tokens), (12, 5));
        assert_eq!(totals.cost(), Some(500_000_000_000));
        // The gateway's own price wins over the attribute.
        assert_eq!(Totals::of_span(&first, Some(7)).cost(), Some(7));
        let mut row = TraceSummary::new([1; 16]);
        row.add(&first, None, 100);
        let second = SpanRecord::with_attributes(vec![
            ("feature.id", s("search")),
            ("user.id", s("u3")),
            ("gen_ai.response.model", s("gpt-4o")),
            ("sidetrace.provider", s("azure")),
            ("gen_ai.provider.name", s("openai")),
        ]);
        row.add(&second, None, 50);
        assert_eq!(row.user.as_deref(), Some("u1"));
        assert_eq!(row.feature.as_deref(), Some("search"));
        assert_eq!(row.models, ["gpt-4o"]);
        // Answered under another name: both, so either finds the trace.
        let third = SpanRecord::with_attributes(vec![
            ("gen_ai.request.model", s("gpt-4o-mini")),
            ("gen_ai.response.model", s("gpt-4o-mini-2024-07-18")),
        ]);
        row.add(&third, None, 50);
        assert_eq!(
            row.models,
            ["gpt-4o", "gpt-4o-mini-2024-07-18", "gpt-4o-mini"]
        );
        assert_eq!(row.providers, ["openai", "azure"]);
        assert_eq!((row.totals.spans, row.bytes), (3, 200));
    }
}
