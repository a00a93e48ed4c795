//! The binary encoding of stored spans and trace summaries.
//!
//! The store wrote both as JSON until this encoding: every attribute key and every captured
//! message (itself JSON text, so each quote escaped) went through serde_json's escaping, and
//! that was the largest part of the writer thread's time. Here strings are written as they are
//! behind their length, numbers as fixed-width little-endian bytes.
//!
//! A record begins with a tag byte JSON never begins with, so records written as JSON by an
//! earlier version (`{`) still decode ([`decode_span`], [`decode_summary`]). A span record then
//! has its whole length, so a reader walking a span file can step over it ([`next_span`]), and
//! (since version 2) a CRC-32 of the rest, so damaged content is never read as other content.
//! Decoding checks the CRC and every length against the bytes left and answers `None` for
//! anything damaged; it never panics and never allocates more than the record holds, but for
//! a call's request body kept as it came, which it reads into the GenAI messages
//! (`span::expand_content`): what the API, the UI and a search see.

use super::{
    StoredSpan,
    summary::{Totals, TraceSummary},
};
use crate::trace::span::{
    AttrKey, AttrValue, SpanEvent, SpanLink, SpanRecord, SpanStatus, expand_content,
};

/// The first byte of a binary span record: version 1, then version 2 (a CRC of the record),
/// then version 3 (an attribute key of [`KNOWN_KEYS`] written as its place in it).
const SPAN_V1: u8 = 0xB1;
const SPAN_V2: u8 = 0xB2;
const SPAN_V3: u8 = 0xB3;
/// The first byte of a binary summary (version 1).
const SUMMARY_V1: u8 = 0xC1;
/// Version 2: version 1 and a byte of flags (`TraceSummary::same_call`).
const SUMMARY_V2: u8 = 0xC2;
/// A span record's tag and length (version 1); and its CRC-32 of what follows (version 2).
const SPAN_HEADER_V1: usize = 5;
const SPAN_HEADER: usize = 9;

/// [`KNOWN_KEYS`] and [`known_key`] from one list.
macro_rules! known_keys {
    ($(#[$doc:meta])* $($key:literal),* $(,)?) => {
        $(#[$doc])*
        const KNOWN_KEYS: &[&str] = &[$($key),*];

        /// The place of `key` in [`KNOWN_KEYS`]: a `match`, which the compiler makes a test of
        /// the length and a comparison or two, each place worked out at compile time.
        fn known_key(key: &str) -> Option<u32> {
            match key {
                $($key => Some(const { place($key) }),)*
                _ => None,
            }
        }
    };
}

known_keys! {
    /// Attribute keys written as their place in this list (with [`KNOWN`] set) rather than as
    /// text: the keys of the gateway's own spans and the GenAI conventions' commonest. A call's
    /// span has about 25 attributes, whose keys were 650 of its 1,500 bytes, copied on the
    /// request path, checksummed, written, and read back as new strings each time. The list
    /// only ever grows at its end: a record names a key by its place. A binary of an earlier
    /// version does not read a version 3 record (it counts it unreadable).
    "gen_ai.operation.name",
    "gen_ai.provider.name",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "gen_ai.response.id",
    "gen_ai.response.finish_reasons",
    "gen_ai.response.time_to_first_chunk",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.reasoning.output_tokens",
    "gen_ai.request.max_tokens",
    "gen_ai.request.temperature",
    "gen_ai.request.top_p",
    "gen_ai.request.top_k",
    "gen_ai.request.seed",
    "gen_ai.request.stop_sequences",
    "gen_ai.request.stream",
    "gen_ai.request.presence_penalty",
    "gen_ai.request.frequency_penalty",
    "gen_ai.request.choice.count",
    "gen_ai.conversation.id",
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.system_instructions",
    "gen_ai.tool.definitions",
    "gen_ai.tool.name",
    "gen_ai.tool.type",
    "gen_ai.tool.description",
    "gen_ai.tool.call.id",
    "gen_ai.tool.call.arguments",
    "gen_ai.tool.call.result",
    "gen_ai.agent.id",
    "gen_ai.agent.name",
    "gen_ai.agent.description",
    "gen_ai.output.type",
    "gen_ai.data_source.id",
    "gen_ai.evaluation.name",
    "gen_ai.evaluation.score.value",
    "gen_ai.evaluation.score.label",
    "gen_ai.evaluation.explanation",
    "server.address",
    "server.port",
    "http.response.status_code",
    "error.type",
    "feature.id",
    "user.id",
    "session.id",
    "session.path",
    "prompt.template_id",
    "prompt.version",
    "tag.tags",
    "cost.usd",
    "openai.api.type",
    "sidetrace.provider",
    "sidetrace.outcome",
    "sidetrace.price.model",
    "sidetrace.cost.input_usd",
    "sidetrace.cost.output_usd",
    "sidetrace.key.name",
    "sidetrace.request.body_bytes",
    "sidetrace.session.name",
    "sidetrace.content.level",
    "sidetrace.content.truncated",
    "sidetrace.content.request_body",
    "sidetrace.input.message_count",
    "sidetrace.input.messages_omitted",
    "sidetrace.tool.unanswered",
    "sidetrace.tool.unanswered_reason",
}

/// Set in a key's length when it is a place in [`KNOWN_KEYS`] instead (a real length is less
/// than its record, and the reader checks it against the bytes left).
const KNOWN: u32 = 1 << 31;

/// The place of `key` in [`KNOWN_KEYS`], at compile time ([`known_key`]).
const fn place(key: &str) -> u32 {
    let mut i = 0;
    while i < KNOWN_KEYS.len() {
        let (k, want) = (KNOWN_KEYS[i].as_bytes(), key.as_bytes());
        if k.len() == want.len() {
            let mut j = 0;
            while j < k.len() && k[j] == want[j] {
                j += 1;
            }
            if j == k.len() {
                return i as u32;
            }
        }
        i += 1;
    }
    panic!("not a known key")
}

/// Appends `stored` to `out` as one self-delimiting record.
#[cfg(test)]
pub(super) fn encode_span(stored: &StoredSpan, out: &mut Vec<u8>) {
    encode_span_parts(
        &stored.span,
        stored.span.attributes.iter(),
        stored.resource,
        &stored.scope_name,
        &stored.scope_version,
        stored.cost_pico_usd,
        out,
    );
}

/// [`encode_span`] from a stored span's parts, with `span_attributes` in place of the span's
/// own. The writer encodes each span where it arrived, without first moving it and copying its
/// scope into a [`StoredSpan`]; a call's span is encoded on the request's worker with the
/// store's content in place of the export's, without a copy of the span.
pub(super) fn encode_span_parts<'a>(
    s: &SpanRecord,
    span_attributes: impl Iterator<Item = &'a (AttrKey, AttrValue)>,
    resource: u64,
    scope_name: &str,
    scope_version: &str,
    cost_pico_usd: Option<u128>,
    out: &mut Vec<u8>,
) {
    let at = out.len();
    out.push(SPAN_V3);
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&s.trace_id);
    out.extend_from_slice(&s.span_id);
    match s.parent_span_id {
        Some(p) => {
            out.push(1);
            out.extend_from_slice(&p);
        }
        None => out.push(0),
    }
    out.push(u8::from(s.parent_is_remote));
    out.push(s.flags);
    opt_str(out, s.trace_state.as_deref());
    str(out, &s.name);
    str(out, &s.kind);
    out.extend_from_slice(&s.start_unix_nanos.to_le_bytes());
    out.extend_from_slice(&s.end_unix_nanos.to_le_bytes());
    match &s.status {
        SpanStatus::Unset => out.push(0),
        SpanStatus::Error(message) => {
            out.push(1);
            str(out, message);
        }
        SpanStatus::Ok => out.push(2),
    }
    attributes(out, span_attributes);
    count(out, s.events.len());
    for e in &s.events {
        str(out, &e.name);
        out.extend_from_slice(&e.time_unix_nanos.to_le_bytes());
        attributes(out, &e.attributes);
    }
    count(out, s.links.len());
    for l in &s.links {
        out.extend_from_slice(&l.trace_id);
        out.extend_from_slice(&l.span_id);
        opt_str(out, l.trace_state.as_deref());
        out.push(l.flags);
        attributes(out, &l.attributes);
    }
    out.extend_from_slice(&resource.to_le_bytes());
    str(out, scope_name);
    str(out, scope_version);
    match cost_pico_usd {
        Some(c) => {
            out.push(1);
            out.extend_from_slice(&c.to_le_bytes());
        }
        None => out.push(0),
    }
    let len = u32::try_from(out.len() - at).unwrap_or(u32::MAX);
    out[at + 1..at + 5].copy_from_slice(&len.to_le_bytes());
    let crc = crc32fast::hash(&out[at + SPAN_HEADER..]);
    out[at + 5..at + SPAN_HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// One stored span, binary or (from an earlier version) JSON, as it is served: a call's
/// request body kept as it came is read into the GenAI messages (`span::expand_content`).
/// `None` when it is damaged (a version 2 record whose CRC does not match: flipped bytes,
/// garbage written over it).
pub(super) fn decode_span(bytes: &[u8]) -> Option<StoredSpan> {
    let mut stored = decode_span_as_written(bytes)?;
    expand_content(&mut stored.span.attributes);
    Some(stored)
}

/// [`decode_span`] without reading a request body into messages: for the writer, which only
/// counts a span (a replay, a trace counted again from its spans).
pub(super) fn decode_span_as_written(bytes: &[u8]) -> Option<StoredSpan> {
    let body = match *bytes.first()? {
        SPAN_V2 | SPAN_V3 => {
            let crc = u32::from_le_bytes(bytes.get(5..SPAN_HEADER)?.try_into().ok()?);
            let body = bytes.get(SPAN_HEADER..)?;
            (crc32fast::hash(body) == crc).then_some(body)?
        }
        SPAN_V1 => bytes.get(SPAN_HEADER_V1..)?,
        _ => return serde_json::from_slice(bytes).ok(),
    };
    let mut r = Reader(body);
    let stored = r.span()?;
    r.0.is_empty().then_some(stored)
}

/// The span record that begins `bytes` (as written: see [`decode_span_as_written`]) and its
/// length, binary or JSON; `None` at the end or
/// where no record can be made out (nothing after it can be read). The span is `None` for a
/// binary record whose length is whole but whose content is damaged: the next record begins
/// after it.
pub(super) fn next_span(bytes: &[u8]) -> Option<(Option<StoredSpan>, usize)> {
    match bytes.first()? {
        &SPAN_V1 | &SPAN_V2 | &SPAN_V3 => {
            let len = u32::from_le_bytes(bytes.get(1..5)?.try_into().ok()?) as usize;
            // A length shorter than a header is damage that would not move the reader on.
            if len < SPAN_HEADER_V1 {
                return None;
            }
            Some((decode_span_as_written(bytes.get(..len)?), len))
        }
        _ => {
            let mut stream = serde_json::Deserializer::from_slice(bytes).into_iter::<StoredSpan>();
            let stored = stream.next()?.ok()?;
            Some((Some(stored), stream.byte_offset()))
        }
    }
}

/// Appends `summary`'s encoding to `out`.
pub(super) fn encode_summary(summary: &TraceSummary, out: &mut Vec<u8>) {
    out.push(SUMMARY_V2);
    out.extend_from_slice(&summary.trace_id);
    out.extend_from_slice(&summary.start_unix_nanos.to_le_bytes());
    out.extend_from_slice(&summary.end_unix_nanos.to_le_bytes());
    opt_str(out, summary.root_name.as_deref());
    out.extend_from_slice(&summary.root_start.to_le_bytes());
    str(out, &summary.first_name);
    for n in summary.totals.counts() {
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.extend_from_slice(&summary.totals.cost_pico_usd.to_le_bytes());
    for tag in [&summary.feature, &summary.user, &summary.session] {
        opt_str(out, tag.as_deref());
    }
    for list in [&summary.models, &summary.providers] {
        count(out, list.len());
        list.iter().for_each(|s| str(out, s));
    }
    out.extend_from_slice(&summary.bytes.to_le_bytes());
    out.push(summary.same_call);
}

/// A summary, binary or (from an earlier version) JSON.
pub(super) fn decode_summary(bytes: &[u8]) -> Option<TraceSummary> {
    match *bytes.first()? {
        version @ (SUMMARY_V1 | SUMMARY_V2) => {
            let mut r = Reader(&bytes[1..]);
            let mut summary = r.summary()?;
            if version == SUMMARY_V2 {
                summary.same_call = r.u8()?;
            }
            r.0.is_empty().then_some(summary)
        }
        _ => serde_json::from_slice(bytes).ok(),
    }
}

/// Only a summary's feature, user and session (what the time index keeps of it).
pub(super) fn decode_tags(bytes: &[u8]) -> Option<[Option<String>; 3]> {
    #[derive(serde::Deserialize)]
    struct Tags {
        feature: Option<String>,
        user: Option<String>,
        session: Option<String>,
    }
    match *bytes.first()? {
        SUMMARY_V1 | SUMMARY_V2 => {
            let s = decode_summary(bytes)?;
            Some([s.feature, s.user, s.session])
        }
        _ => {
            let t: Tags = serde_json::from_slice(bytes).ok()?;
            Some([t.feature, t.user, t.session])
        }
    }
}

fn count(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

fn str(out: &mut Vec<u8>, s: &str) {
    count(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// An attribute key: its place in [`KNOWN_KEYS`], else its text.
fn key(out: &mut Vec<u8>, key: &str) {
    match known_key(key) {
        Some(place) => out.extend_from_slice(&(KNOWN | place).to_le_bytes()),
        None => str(out, key),
    }
}

fn opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            out.push(1);
            str(out, s);
        }
        None => out.push(0),
    }
}

/// Attributes: their count (written once they are), then each key and value.
fn attributes<'a, K: AsRef<str> + 'a>(
    out: &mut Vec<u8>,
    attrs: impl IntoIterator<Item = &'a (K, AttrValue)>,
) {
    let at = out.len();
    count(out, 0);
    let mut n = 0;
    for (k, v) in attrs {
        key(out, k.as_ref());
        value(out, v);
        n += 1;
    }
    out[at..at + 4].copy_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

fn value(out: &mut Vec<u8>, v: &AttrValue) {
    match v {
        AttrValue::Bool(b) => out.extend_from_slice(&[0, u8::from(*b)]),
        AttrValue::Int(i) => {
            out.push(1);
            out.extend_from_slice(&i.to_le_bytes());
        }
        AttrValue::Double(d) => {
            out.push(2);
            out.extend_from_slice(&d.to_le_bytes());
        }
        AttrValue::Str(s) => {
            out.push(3);
            str(out, s);
        }
        AttrValue::StrList(list) => {
            out.push(4);
            count(out, list.len());
            list.iter().for_each(|s| str(out, s));
        }
        AttrValue::List(list) => {
            out.push(5);
            count(out, list.len());
            list.iter().for_each(|v| value(out, v));
        }
        AttrValue::Map { kvlist } => {
            out.push(6);
            attributes(out, kvlist);
        }
        AttrValue::Bytes { bytes } => {
            out.push(7);
            str(out, bytes);
        }
    }
}

/// Reads from the front of a slice; every method answers `None` past its end.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[b]| b)
    }

    fn flag(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }

    /// A count of items each at least `min` bytes long: never more than the bytes left hold.
    fn count(&mut self, min: usize) -> Option<usize> {
        let n = u32::from_le_bytes(self.take()?) as usize;
        (n.checked_mul(min)? <= self.0.len()).then_some(n)
    }

    fn str(&mut self) -> Option<String> {
        let n = self.count(1)?;
        let (s, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        String::from_utf8(s.to_vec()).ok()
    }

    fn opt_str(&mut self) -> Option<Option<String>> {
        if self.flag()? {
            self.str().map(Some)
        } else {
            Some(None)
        }
    }

    fn strs(&mut self) -> Option<Vec<String>> {
        let n = self.count(4)?;
        (0..n).map(|_| self.str()).collect()
    }

    fn attributes<K: From<String> + From<&'static str>>(&mut self) -> Option<Vec<(K, AttrValue)>> {
        // A key's length or place (4) and a value's tag and smallest body (2).
        let n = self.count(6)?;
        (0..n).map(|_| Some((self.key()?, self.value()?))).collect()
    }

    /// An attribute key: a place in [`KNOWN_KEYS`] (its text not copied), else its text.
    fn key<K: From<String> + From<&'static str>>(&mut self) -> Option<K> {
        let [a, b, c, d] = *self.0.first_chunk::<4>()?;
        let n = u32::from_le_bytes([a, b, c, d]);
        if n & KNOWN == 0 {
            return self.str().map(K::from);
        }
        self.0 = &self.0[4..];
        KNOWN_KEYS.get((n & !KNOWN) as usize).map(|&k| K::from(k))
    }

    fn value(&mut self) -> Option<AttrValue> {
        Some(match self.u8()? {
            0 => AttrValue::Bool(self.flag()?),
            1 => AttrValue::Int(i64::from_le_bytes(self.take()?)),
            2 => AttrValue::Double(f64::from_le_bytes(self.take()?)),
            3 => AttrValue::Str(self.str()?),
            4 => AttrValue::StrList(self.strs()?),
            5 => {
                let n = self.count(2)?;
                AttrValue::List((0..n).map(|_| self.value()).collect::<Option<_>>()?)
            }
            6 => AttrValue::Map {
                kvlist: self.attributes()?,
            },
            7 => AttrValue::Bytes { bytes: self.str()? },
            _ => return None,
        })
    }

    fn span(&mut self) -> Option<StoredSpan> {
        let trace_id = self.take()?;
        let span_id = self.take()?;
        let parent_span_id = if self.flag()? {
            Some(self.take()?)
        } else {
            None
        };
        let parent_is_remote = self.flag()?;
        let flags = self.u8()?;
        let trace_state = self.opt_str()?;
        let name = self.str()?;
        let kind = self.str()?;
        let start_unix_nanos = self.u64()?;
        let end_unix_nanos = self.u64()?;
        let status = match self.u8()? {
            0 => SpanStatus::Unset,
            1 => SpanStatus::Error(self.str()?),
            2 => SpanStatus::Ok,
            _ => return None,
        };
        let attributes = self.attributes()?;
        let n = self.count(16)?;
        let events = (0..n)
            .map(|_| {
                Some(SpanEvent {
                    name: self.str()?,
                    time_unix_nanos: self.u64()?,
                    attributes: self.attributes()?,
                })
            })
            .collect::<Option<_>>()?;
        let n = self.count(30)?;
        let links = (0..n)
            .map(|_| {
                Some(SpanLink {
                    trace_id: self.take()?,
                    span_id: self.take()?,
                    trace_state: self.opt_str()?,
                    flags: self.u8()?,
                    attributes: self.attributes()?,
                })
            })
            .collect::<Option<_>>()?;
        let resource = self.u64()?;
        let scope_name = self.str()?;
        let scope_version = self.str()?;
        let cost_pico_usd = if self.flag()? {
            Some(u128::from_le_bytes(self.take()?))
        } else {
            None
        };
        Some(StoredSpan {
            span: SpanRecord {
                trace_id,
                span_id,
                parent_span_id,
                parent_is_remote,
                flags,
                trace_state,
                name,
                kind,
                start_unix_nanos,
                end_unix_nanos,
                status,
                attributes,
                events,
                links,
                origin: None,
            },
            resource,
            scope_name,
            scope_version,
            cost_pico_usd,
        })
    }

    fn summary(&mut self) -> Option<TraceSummary> {
        let mut s = TraceSummary::new(self.take()?);
        s.start_unix_nanos = self.u64()?;
        s.end_unix_nanos = self.u64()?;
        s.root_name = self.opt_str()?;
        s.root_start = self.u64()?;
        s.first_name = self.str()?;
        let mut counts = [0u64; 7];
        for n in &mut counts {
            *n = self.u64()?;
        }
        s.totals = Totals::from_counts(counts, u128::from_le_bytes(self.take()?));
        s.feature = self.opt_str()?;
        s.user = self.opt_str()?;
        s.session = self.opt_str()?;
        s.models = self.strs()?;
        s.providers = self.strs()?;
        s.bytes = self.u64()?;
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[a-z\"{}\\\\é]{1,12}", any::<String>()]
    }

    fn value() -> impl Strategy<Value = AttrValue> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(AttrValue::Bool),
            any::<i64>().prop_map(AttrValue::Int),
            any::<f64>().prop_map(AttrValue::Double),
            text().prop_map(AttrValue::Str),
            prop::collection::vec(text(), 0..3).prop_map(AttrValue::StrList),
            text().prop_map(|bytes| AttrValue::Bytes { bytes }),
        ];
        leaf.prop_recursive(3, 12, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(AttrValue::List),
                prop::collection::vec((text(), inner), 0..3)
                    .prop_map(|kvlist| AttrValue::Map { kvlist }),
            ]
        })
    }

    fn attributes() -> impl Strategy<Value = Vec<(String, AttrValue)>> {
        prop::collection::vec((text(), value()), 0..5)
    }

    prop_compose! {
        fn stored()(
            ids in any::<([u8; 16], [u8; 8], Option<[u8; 8]>)>(),
            bits in any::<(bool, u8, u64, u64, u64)>(),
            trace_state in prop::option::of(text()),
            names in (text(), text(), text(), text()),
            status in prop_oneof![
                Just(SpanStatus::Unset),
                Just(SpanStatus::Ok),
                text().prop_map(SpanStatus::Error),
            ],
            attributes in attributes(),
            events in prop::collection::vec((text(), any::<u64>(), attributes()), 0..3),
            links in prop::collection::vec(
                (any::<([u8; 16], [u8; 8], u8)>(), prop::option::of(text()), attributes()),
                0..3,
            ),
            cost in prop::option::of(any::<u128>()),
        ) -> StoredSpan {
            StoredSpan {
                span: SpanRecord {
                    trace_id: ids.0,
                    span_id: ids.1,
                    parent_span_id: ids.2,
                    parent_is_remote: bits.0,
                    flags: bits.1,
                    trace_state,
                    name: names.0,
                    kind: names.1,
                    start_unix_nanos: bits.2,
                    end_unix_nanos: bits.3,
                    status,
                    attributes: attributes.into_iter().map(|(k, v)| (k.into(), v)).collect(),
                    events: events
                        .into_iter()
                        .map(|(name, time_unix_nanos, attributes)| SpanEvent {
                            name,
                            time_unix_nanos,
                            attributes,
                        })
                        .collect(),
                    links: links
                        .into_iter()
                        .map(|((trace_id, span_id, flags), trace_state, attributes)| SpanLink {
                            trace_id,
                            span_id,
                            trace_state,
                            flags,
                            attributes,
                        })
                        .collect(),
                    origin: None,
                },
                resource: bits.4,
                scope_name: names.2,
                scope_version: names.3,
                cost_pico_usd: cost,
            }
        }
    }

    /// Equal, with NaN equal to NaN (a double is kept bit for bit).
    fn same(a: &StoredSpan, b: &StoredSpan) -> bool {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        encode_span(a, &mut x);
        encode_span(b, &mut y);
        x == y
    }

    proptest! {
        #[test]
        fn a_span_comes_back_as_it_went_in(s in stored()) {
            let mut bytes = vec![7u8; 3];
            encode_span(&s, &mut bytes);
            let (back, len) = next_span(&bytes[3..]).expect("decodes");
            let back = back.expect("whole");
            prop_assert_eq!(len, bytes.len() - 3);
            prop_assert!(same(&back, &s));
            let mut again = Vec::new();
            encode_span(&back, &mut again);
            prop_assert_eq!(&again[..], &bytes[3..]);
        }

        #[test]
        fn damage_never_panics_and_is_never_read_as_a_longer_record(
            s in stored(),
            cut in any::<prop::sample::Index>(),
            flip in any::<(prop::sample::Index, u8)>(),
        ) {
            let mut bytes = Vec::new();
            encode_span(&s, &mut bytes);
            let short = &bytes[..cut.index(bytes.len())];
            prop_assert!(decode_span(short).is_none());
            prop_assert!(next_span(short).is_none());
            let at = flip.0.index(bytes.len());
            bytes[at] ^= flip.1.max(1);
            if let Some((_, len)) = next_span(&bytes) {
                prop_assert!(len <= bytes.len());
            }
        }

        #[test]
        fn a_summary_comes_back_as_it_went_in(
            id in any::<[u8; 16]>(),
            times in any::<(u64, u64, u64)>(),
            names in (prop::option::of(text()), text()),
            totals in any::<([u64; 7], u128)>(),
            tags in any::<(Option<String>, Option<String>, Option<String>)>(),
            lists in (prop::collection::vec(text(), 0..3), prop::collection::vec(text(), 0..3)),
            same_call in 0u8..4,
        ) {
            let mut s = TraceSummary::new(id);
            (s.start_unix_nanos, s.end_unix_nanos, s.root_start) = times;
            (s.root_name, s.first_name) = names;
            let [spans, errors, i, c, r, o, p] = totals.0;
            s.totals = crate::store::traces::Totals {
                spans,
                errors,
                input_tokens: i,
                cached_input_tokens: c,
                reasoning_tokens: r,
                output_tokens: o,
                cost_pico_usd: totals.1,
                priced_spans: p,
            };
            (s.feature, s.user, s.session) = tags;
            (s.models, s.providers) = lists;
            s.bytes = times.0 ^ times.1;
            s.same_call = same_call;
            let mut bytes = Vec::new();
            encode_summary(&s, &mut bytes);
            prop_assert_eq!(decode_summary(&bytes), Some(s.clone()));
            // As version 1 wrote it (no flags byte): the same, without its flags.
            let mut v1 = bytes[..bytes.len() - 1].to_vec();
            v1[0] = SUMMARY_V1;
            prop_assert_eq!(
                decode_summary(&v1),
                Some(TraceSummary { same_call: 0, ..s.clone() })
            );
            prop_assert_eq!(
                decode_tags(&bytes),
                Some([s.feature.clone(), s.user.clone(), s.session.clone()])
            );
            for cut in 0..bytes.len() {
                prop_assert!(decode_summary(&bytes[..cut]).is_none());
            }
        }
    }

    /// A span as the gateway stores one, with captured content (JSON text in a string).
    fn sample() -> StoredSpan {
        StoredSpan {
            span: SpanRecord {
                trace_id: [1; 16],
                span_id: [2; 8],
                parent_span_id: Some([3; 8]),
                parent_is_remote: true,
                flags: 1,
                trace_state: Some("vendor=1".into()),
                name: "chat gpt-4o".into(),
                kind: "client".into(),
                start_unix_nanos: 1_700_000_000_000_000_000,
                end_unix_nanos: 1_700_000_000_046_000_000,
                status: SpanStatus::Error("429".into()),
                attributes: vec![
                    ("gen_ai.usage.input_tokens".into(), AttrValue::Int(12)),
                    ("cost.usd".into(), AttrValue::Double(0.000_125)),
                    (
                        "gen_ai.response.finish_reasons".into(),
                        AttrValue::StrList(vec!["stop".into()]),
                    ),
                    (
                        "gen_ai.input.messages".into(),
                        AttrValue::Str(
                            r#"[{"role":"user","parts":[{"type":"text","content":"hi \"you\""}]}]"#
                                .into(),
                        ),
                    ),
                    ("stream".into(), AttrValue::Bool(false)),
                ],
                events: vec![SpanEvent {
                    name: "e".into(),
                    time_unix_nanos: 5,
                    attributes: vec![(
                        "k".into(),
                        AttrValue::Bytes {
                            bytes: "AAE=".into(),
                        },
                    )],
                }],
                links: Vec::new(),
                origin: None,
            },
            resource: 42,
            scope_name: "sidetrace".into(),
            scope_version: "0.1.0".into(),
            cost_pico_usd: Some(125_000_000),
        }
    }

    #[test]
    fn spans_written_as_json_by_an_earlier_version_still_read() {
        let old = sample();
        let json = serde_json::to_vec(&old).unwrap();
        let mut file = json.clone();
        encode_span(&old, &mut file);
        file.extend_from_slice(&json);
        assert!(same(&decode_span(&json).expect("JSON decodes"), &old));
        // A span file from before and after an upgrade: JSON, binary, JSON.
        let mut at = 0;
        let mut lens = Vec::new();
        while let Some((_, len)) = next_span(&file[at..]) {
            lens.push(len);
            at += len;
        }
        assert_eq!(at, file.len());
        assert_eq!(lens.len(), 3);
        assert_eq!(lens[0], json.len());
    }

    /// Version 2 records carry a CRC: a flipped byte anywhere in one makes it unreadable
    /// rather than read as other content. Version 1 records (before it) still read.
    #[test]
    fn a_damaged_span_record_is_not_read_and_one_without_a_crc_still_is() {
        let stored = sample();
        let mut record = Vec::new();
        encode_span(&stored, &mut record);
        assert_eq!(record[0], SPAN_V3);
        assert!(same(&decode_span(&record).unwrap(), &stored));
        for at in [SPAN_HEADER, record.len() / 2, record.len() - 1] {
            let mut damaged = record.clone();
            damaged[at] ^= 0x20;
            assert!(decode_span(&damaged).is_none(), "byte {at} flipped");
        }
        let mut v1 = vec![SPAN_V1];
        v1.extend_from_slice(&((record.len() - 4) as u32).to_le_bytes());
        v1.extend_from_slice(&record[SPAN_HEADER..]);
        assert!(same(&decode_span(&v1).expect("version 1 reads"), &stored));
        let (_, len) = next_span(&v1).unwrap();
        assert_eq!(len, v1.len());
    }

    /// A known key is written as its place in four bytes and read back as the key itself
    /// (not a copy); any other key as its text. Records of version 2, every key as text,
    /// still read; a place past the list is damage.
    #[test]
    fn known_keys_are_written_as_their_place() {
        let mut seen = std::collections::HashSet::new();
        for (i, k) in KNOWN_KEYS.iter().enumerate() {
            assert!(seen.insert(*k), "{k} twice");
            assert_eq!(known_key(k), Some(i as u32), "{k}");
        }
        for other in [
            "",
            "gen_ai",
            "gen_ai.request.model ",
            "Gen_ai.request.model",
            "k",
        ] {
            assert_eq!(known_key(other), None, "{other}");
        }
        // The places are for ever: a record names a key by its place.
        assert_eq!(KNOWN_KEYS[0], "gen_ai.operation.name");
        assert_eq!(KNOWN_KEYS[7], "gen_ai.usage.input_tokens");
        assert_eq!(KNOWN_KEYS[69], "sidetrace.tool.unanswered_reason");

        let mut stored = sample();
        let (mut known, mut unknown) = (Vec::new(), Vec::new());
        encode_span(&stored, &mut known);
        for (k, _) in &mut stored.span.attributes {
            *k = format!("x.{k}").into();
        }
        encode_span(&stored, &mut unknown);
        let read = decode_span(&known).unwrap();
        assert_eq!(read.span.attributes, sample().span.attributes);
        assert!(
            read.span
                .attributes
                .iter()
                .take(4)
                .all(|(k, _)| matches!(k, std::borrow::Cow::Borrowed(_))),
            "known keys are not copied"
        );
        // Each known key's text in place of its four bytes, and two more bytes a key ("x.").
        let text: usize = sample()
            .span
            .attributes
            .iter()
            .take(4)
            .map(|(k, _)| k.len())
            .sum();
        assert_eq!(
            unknown.len() - known.len(),
            text + 2 * 5,
            "four bytes a known key"
        );
        // Version 2: the same body, keys as text.
        let mut v2 = unknown.clone();
        v2[0] = SPAN_V2;
        assert!(same(&decode_span(&v2).unwrap(), &stored));
        // A place past the list.
        let at = SPAN_HEADER
            + known[SPAN_HEADER..]
                .windows(4)
                .position(|w| w == (KNOWN | 7).to_le_bytes())
                .unwrap();
        let mut past = known.clone();
        past[at..at + 4].copy_from_slice(&(KNOWN | 4_000).to_le_bytes());
        let crc = crc32fast::hash(&past[SPAN_HEADER..]);
        past[5..SPAN_HEADER].copy_from_slice(&crc.to_le_bytes());
        assert!(decode_span(&past).is_none());
    }

    #[test]
    fn summaries_written_as_json_by_an_earlier_version_still_read() {
        let mut s = TraceSummary::new([3; 16]);
        s.feature = Some("search".into());
        s.session = Some("s-1".into());
        s.models = vec!["gpt-4o".into()];
        s.totals.input_tokens = 12;
        let json = serde_json::to_vec(&s).unwrap();
        assert_eq!(decode_summary(&json), Some(s));
        assert_eq!(
            decode_tags(&json),
            Some([Some("search".into()), None, Some("s-1".into())])
        );
    }
}
