//! Lenient JSON decoding and byte pre-checks shared by the extractors.
//!
//! Providers add fields, send `null` for absent values, pad with whitespace and put 64-bit seeds
//! next to the counts; one odd field must not cost a whole event. So the typed structs the
//! extractors decode into are built from these wrappers: a value of the wrong type reads as
//! absent instead of failing the event, and unknown fields are skipped without allocating.

use std::{borrow::Cow, fmt, marker::PhantomData, sync::OnceLock};

use memchr::memmem::Finder;
use serde::de::{
    self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor,
    value::{MapAccessDeserializer, SeqAccessDeserializer},
};

use super::{InbandError, ResponseRecord};

/// Longest model, id, finish reason or error type kept; longer values are cut (on a character
/// boundary), so a broken upstream cannot blow up span attributes.
const MAX_NAME_BYTES: usize = 256;
/// Longest error message kept.
const MAX_MESSAGE_BYTES: usize = 2048;
/// Most choices/candidates whose finish reason is tracked (OpenAI allows `n` up to 128).
const MAX_CHOICES: usize = 256;

/// Decodes a JSON body. A body in UTF-8 (as every JSON text should be) is checked once, whole,
/// then read as text, so serde_json does not check each string in it again (about 40 strings a
/// chat call, a fifth of the parse); any other body is read as bytes, as before: the same value
/// or the same error either way. The check is simdutf8's: std's runs at 1.3-2.4 GB/s on text
/// in other languages than English, and an agent resends its whole conversation each call.
pub fn from_bytes<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> serde_json::Result<T> {
    match simdutf8::basic::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(bytes),
    }
}

/// Drains whatever value the deserializer holds, so a visitor can answer "absent" for it.
fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Implements the visitor methods of a lenient type that answer `absent` for every JSON value
/// not handled explicitly.
macro_rules! absent_for_the_rest {
    ($absent:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($absent)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($absent)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($absent)
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            drain_map(map)?;
            Ok($absent)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            drain_seq(seq)?;
            Ok($absent)
        }
    };
}

/// A token count. Only a non-negative integer (or an integral float, or a string of digits)
/// counts; `null`, negative numbers and anything else read as absent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Count(pub Option<u64>);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a token count")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
                Ok(Count(Some(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
                Ok(Count(u64::try_from(v).ok()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Count, E> {
                // 2^64 as f64; casts below it are exact for integral values.
                let ok = v.is_finite()
                    && v >= 0.0
                    && v.fract() == 0.0
                    && v < 18_446_744_073_709_551_616.0;
                Ok(Count(ok.then_some(v as u64)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Count, E> {
                Ok(Count(v.trim().parse().ok()))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Count, D::Error> {
                Count::deserialize(d)
            }
            absent_for_the_rest!(Count(None));
        }
        d.deserialize_any(V)
    }
}

/// A string, borrowed from the event when it has no escapes. Numbers read as their decimal text
/// (error codes are numbers for some providers); everything else reads as absent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Text<'a>(pub Option<Cow<'a, str>>);

impl<'a> Text<'a> {
    pub fn as_str(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// The value when it is present and not empty.
    pub fn non_empty(&self) -> Option<&str> {
        self.as_str().filter(|s| !s.is_empty())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'a>, E> {
                Ok(Text(Some(Cow::Owned(v))))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text<'a>, E> {
                Ok(Text(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text<'a>, E> {
                Ok(Text(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Text<'a>, E> {
                Ok(Text(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Text<'a>, D::Error> {
                Text::deserialize(d)
            }
            absent_for_the_rest!(Text(None));
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// Whether a value carries anything: false for `null`, `""`, `[]`, `{}` and `false`, true for
/// everything else. Used to see output (content, reasoning, tool-call deltas) without keeping it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Filled(pub bool);

impl<'de> Deserialize<'de> for Filled {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Filled;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Filled, E> {
                Ok(Filled(v))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Filled, E> {
                Ok(Filled(true))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Filled, E> {
                Ok(Filled(true))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Filled, E> {
                Ok(Filled(true))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Filled, E> {
                Ok(Filled(!v.is_empty()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Filled, E> {
                Ok(Filled(false))
            }
            fn visit_none<E: de::Error>(self) -> Result<Filled, E> {
                Ok(Filled(false))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Filled, D::Error> {
                Filled::deserialize(d)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Filled, A::Error> {
                let any = map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some();
                drain_map(map)?;
                Ok(Filled(any))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Filled, A::Error> {
                let any = seq.next_element::<IgnoredAny>()?.is_some();
                drain_seq(seq)?;
                Ok(Filled(any))
            }
        }
        d.deserialize_any(V)
    }
}

/// `true` only for the JSON literal `true`; anything else reads as false.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flag(pub bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Flag;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a boolean")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Flag, E> {
                Ok(Flag(v))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Flag, E> {
                Ok(Flag(false))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Flag, E> {
                Ok(Flag(false))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Flag, E> {
                Ok(Flag(false))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Flag, E> {
                Ok(Flag(false))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Flag, D::Error> {
                Flag::deserialize(d)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Flag, E> {
                Ok(Flag(false))
            }
            fn visit_none<E: de::Error>(self) -> Result<Flag, E> {
                Ok(Flag(false))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Flag, A::Error> {
                drain_map(map)?;
                Ok(Flag(false))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Flag, A::Error> {
                drain_seq(seq)?;
                Ok(Flag(false))
            }
        }
        d.deserialize_any(V)
    }
}

/// A JSON object decoded as `T`; `null` or a value of another type reads as absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Obj<T>(pub Option<T>);

impl<T> Default for Obj<T> {
    fn default() -> Self {
        Obj(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Obj<T>, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(|v| Obj(Some(v)))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Obj<T>, D::Error> {
                Obj::deserialize(d)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Obj<T>, E> {
                Ok(Obj(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Obj<T>, E> {
                Ok(Obj(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Obj<T>, E> {
                Ok(Obj(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Obj<T>, E> {
                Ok(Obj(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Obj<T>, E> {
                Ok(Obj(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Obj<T>, E> {
                Ok(Obj(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Obj<T>, E> {
                Ok(Obj(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Obj<T>, A::Error> {
                drain_seq(seq)?;
                Ok(Obj(None))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// A JSON array of objects decoded as `T`. `null`, a missing key or a value of another type
/// read as an empty list, and elements that are not objects are skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Objs<T>(pub Vec<T>);

impl<T> Default for Objs<T> {
    fn default() -> Self {
        Objs(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Objs<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Objs<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of objects")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Objs<T>, A::Error> {
                let mut out = Vec::new();
                while let Some(Obj(item)) = seq.next_element::<Obj<T>>()? {
                    out.extend(item);
                }
                Ok(Objs(out))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Objs<T>, D::Error> {
                Objs::deserialize(d)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Objs<T>, E> {
                Ok(Objs::default())
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Objs<T>, E> {
                Ok(Objs::default())
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Objs<T>, E> {
                Ok(Objs::default())
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Objs<T>, E> {
                Ok(Objs::default())
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Objs<T>, E> {
                Ok(Objs::default())
            }
            fn visit_unit<E: de::Error>(self) -> Result<Objs<T>, E> {
                Ok(Objs::default())
            }
            fn visit_none<E: de::Error>(self) -> Result<Objs<T>, E> {
                Ok(Objs::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Objs<T>, A::Error> {
                drain_map(map)?;
                Ok(Objs::default())
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// The fields an in-band error object can have, across providers.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub(crate) struct ErrorBody<'a> {
    #[serde(borrow, rename = "type")]
    pub kind: Text<'a>,
    #[serde(borrow)]
    pub code: Text<'a>,
    /// Gemini's `RESOURCE_EXHAUSTED`-style name.
    #[serde(borrow)]
    pub status: Text<'a>,
    #[serde(borrow)]
    pub message: Text<'a>,
}

/// An `error` field: an object, or a bare string (Ollama, some compatible servers) that is
/// only a message. `null` and other values read as absent.
#[derive(Debug, Default)]
pub(crate) struct ErrorField<'a>(pub Option<ErrorBody<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for ErrorField<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = ErrorField<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an error object or message")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ErrorField<'a>, A::Error> {
                ErrorBody::deserialize(MapAccessDeserializer::new(map)).map(|e| ErrorField(Some(e)))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<ErrorField<'a>, E> {
                Ok(message_only(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ErrorField<'a>, E> {
                Ok(message_only(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<ErrorField<'a>, E> {
                Ok(message_only(Cow::Owned(v)))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<ErrorField<'a>, D::Error> {
                ErrorField::deserialize(d)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<ErrorField<'a>, E> {
                Ok(ErrorField(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<ErrorField<'a>, E> {
                Ok(ErrorField(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<ErrorField<'a>, E> {
                Ok(ErrorField(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<ErrorField<'a>, E> {
                Ok(ErrorField(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<ErrorField<'a>, E> {
                Ok(ErrorField(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<ErrorField<'a>, E> {
                Ok(ErrorField(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<ErrorField<'a>, A::Error> {
                // Some servers answer with a list of error objects; the first one names it.
                let mut items =
                    Objs::<ErrorBody<'a>>::deserialize(SeqAccessDeserializer::new(seq))?.0;
                Ok(ErrorField(
                    (!items.is_empty()).then(|| items.swap_remove(0)),
                ))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

fn message_only(message: Cow<'_, str>) -> ErrorField<'_> {
    ErrorField(Some(ErrorBody {
        message: Text(Some(message)),
        ..ErrorBody::default()
    }))
}

/// What follows one occurrence of a quoted key in raw JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hit {
    /// The string is a key; this is the first byte of its value.
    Value(u8),
    /// The string is not followed by `:`, so it is a value (or the event is cut).
    NotKey,
}

/// A quoted JSON string to look for in raw event bytes, e.g. `"usage"`.
pub(crate) struct Needle {
    quoted: &'static str,
    finder: OnceLock<Finder<'static>>,
}

impl Needle {
    pub const fn new(quoted: &'static str) -> Needle {
        Needle {
            quoted,
            finder: OnceLock::new(),
        }
    }

    /// Whether any occurrence of the string satisfies `pred`. A literal `"key"` in raw JSON is
    /// always a whole string token (quotes inside strings are escaped), so this never misses a
    /// key; it may see one at another depth, which only costs a decode.
    pub fn any(&self, data: &[u8], mut pred: impl FnMut(Hit) -> bool) -> bool {
        let finder = self
            .finder
            .get_or_init(|| Finder::new(self.quoted.as_bytes()));
        let len = finder.needle().len();
        finder.find_iter(data).any(|at| {
            let mut rest = data[at + len..]
                .iter()
                .copied()
                .skip_while(u8::is_ascii_whitespace);
            let hit = match rest.next() {
                Some(b':') => match rest.find(|b| !b.is_ascii_whitespace()) {
                    Some(b) => Hit::Value(b),
                    None => Hit::NotKey,
                },
                _ => Hit::NotKey,
            };
            pred(hit)
        })
    }

    /// Whether the string occurs as a key whose value is not `null`.
    pub fn non_null(&self, data: &[u8]) -> bool {
        self.any(data, |h| matches!(h, Hit::Value(b) if b != b'n'))
    }

    /// Whether the string occurs as a key whose value is an object.
    pub fn object(&self, data: &[u8]) -> bool {
        self.any(data, |h| h == Hit::Value(b'{'))
    }

    /// Whether the string occurs at all, as a key with a non-null value or as a value.
    pub fn present(&self, data: &[u8]) -> bool {
        self.any(data, |h| h != Hit::Value(b'n'))
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn capped(s: &str, max: usize) -> String {
    s[..s.floor_char_boundary(max)].to_owned()
}

/// Keeps the first non-empty value (providers send `""` placeholders, e.g. Azure's first chunk).
pub(crate) fn set_first(slot: &mut Option<String>, value: &Text<'_>) {
    if slot.is_none()
        && let Some(v) = value.non_empty()
    {
        *slot = Some(capped(v, MAX_NAME_BYTES));
    }
}

/// Records an in-band error. The first one wins: later ones are usually its consequences.
pub(crate) fn set_error(record: &mut ResponseRecord, kind: Option<&str>, message: Option<&str>) {
    if record.error.is_none() {
        record.error = Some(InbandError {
            kind: kind
                .filter(|k| !k.is_empty())
                .map(|k| capped(k, MAX_NAME_BYTES)),
            message: message.map(|m| capped(m, MAX_MESSAGE_BYTES)),
        });
    }
}

/// The last finish reason reported per choice or candidate index, kept in index order.
#[derive(Debug, Default)]
pub(crate) struct FinishReasons(Vec<(u64, String)>);

impl FinishReasons {
    /// Notes `reason` for choice `index` and rewrites `record.finish_reasons`. Empty values are
    /// placeholders (old Ollama `/v1` sends `""`) and are ignored.
    pub fn set(&mut self, index: u64, reason: &str, record: &mut ResponseRecord) {
        if reason.is_empty() {
            return;
        }
        match self.0.binary_search_by_key(&index, |(i, _)| *i) {
            Ok(at) if self.0[at].1 == reason => return,
            Ok(at) => self.0[at].1 = capped(reason, MAX_NAME_BYTES),
            Err(_) if self.0.len() >= MAX_CHOICES => return,
            Err(at) => self.0.insert(at, (index, capped(reason, MAX_NAME_BYTES))),
        }
        record.finish_reasons = self.0.iter().map(|(_, r)| r.clone()).collect();
    }
}

/// `a + b` over optional parts: missing parts count as 0 (used once a usage object was seen).
pub(crate) fn sum(parts: &[Option<u64>]) -> u64 {
    parts
        .iter()
        .fold(0u64, |acc, p| acc.saturating_add(p.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(default)]
    struct Probe<'a> {
        n: Count,
        #[serde(borrow)]
        s: Text<'a>,
        f: Filled,
        o: Obj<Inner>,
        l: Objs<Inner>,
        #[serde(borrow)]
        e: ErrorField<'a>,
        b: Flag,
    }

    #[derive(Debug, Default, serde::Deserialize, PartialEq)]
    #[serde(default)]
    struct Inner {
        x: Count,
    }

    fn probe(json: &str) -> Probe<'_> {
        serde_json::from_str(json).expect("valid probe")
    }

    #[test]
    fn a_body_decodes_from_bytes_as_serde_json_reads_it() {
        let text = r#"{"n": 3, "s": "h\u00e9llo \"x\"", "l": [{"x": 1}], "z": "ünïcode ✓"}"#;
        let ours: Probe<'_> = from_bytes(text.as_bytes()).expect("valid");
        let theirs: Probe<'_> = serde_json::from_slice(text.as_bytes()).expect("valid");
        assert_eq!(format!("{ours:?}"), format!("{theirs:?}"));
        assert_eq!(ours.s, Text(Some("héllo \"x\"".into())));
        // Bytes that are not UTF-8 in a skipped field: serde_json reads them (it checks only
        // the strings it keeps), and so does `from_bytes`.
        let skipped = b"{\"n\": 2, \"z\": \"\xff\xfe\"}";
        assert_eq!(
            from_bytes::<Probe<'_>>(skipped).expect("read as bytes").n,
            Count(Some(2))
        );
        // ... and in a kept one, both refuse it, with the same message; so for a body cut short.
        for bad in [&b"{\"s\": \"\xff\"}"[..], &b"{\"n\": "[..]] {
            let theirs = serde_json::from_slice::<Probe<'_>>(bad).expect_err("refused");
            let ours = from_bytes::<Probe<'_>>(bad).expect_err("refused");
            assert_eq!(ours.to_string(), theirs.to_string());
        }
    }

    /// Long bodies in other scripts than Latin, where the check takes its vector path: valid
    /// ones read as text, a byte that is not UTF-8 anywhere in a skipped field still read as
    /// bytes, and one cut inside a character refused as serde_json refuses it.
    #[test]
    fn long_bodies_in_any_script_decode_as_serde_json_reads_them() {
        let long = "Écrivez-moi à l'été prochain; مرحبا بالعالم ✓ 日本語 ".repeat(60);
        let text = format!(r#"{{"n": 5, "s": "{long}", "z": "{long}"}}"#);
        let ours: Probe<'_> = from_bytes(text.as_bytes()).expect("valid");
        assert_eq!(ours.s, Text(Some(long.as_str().into())));
        let z = text.rfind(&long).expect("z's value");
        for offset in [0, 1, 31, 64, 1000, long.len() - 1] {
            let mut bad = text.clone().into_bytes();
            bad[z + offset] = 0xff;
            let ours = from_bytes::<Probe<'_>>(&bad).expect("read as bytes");
            assert_eq!(
                (ours.n, ours.s),
                (Count(Some(5)), Text(Some(long.as_str().into())))
            );
        }
        let cut = &text.as_bytes()[..text.find('م').expect("an Arabic letter") + 1];
        let theirs = serde_json::from_slice::<Probe<'_>>(cut).expect_err("refused");
        let ours = from_bytes::<Probe<'_>>(cut).expect_err("refused");
        assert_eq!(ours.to_string(), theirs.to_string());
    }

    #[test]
    fn wrong_types_read_as_absent_instead_of_failing_the_event() {
        let p = probe(
            r#"{"n":"x","s":{"a":1},"f":null,"o":[1,2],"l":"no","e":7,"b":"true","seed":18446744073709551617}"#,
        );
        assert_eq!(p.n, Count(None));
        assert_eq!(p.s, Text(None));
        assert!(!p.f.0);
        assert!(p.o.0.is_none());
        assert!(p.l.0.is_empty());
        assert!(p.e.0.is_none());
        assert!(!p.b.0);
    }

    #[test]
    fn counts_accept_integers_integral_floats_and_digit_strings_only() {
        assert_eq!(probe(r#"{"n":12}"#).n, Count(Some(12)));
        assert_eq!(probe(r#"{"n":12.0}"#).n, Count(Some(12)));
        assert_eq!(probe(r#"{"n":"12"}"#).n, Count(Some(12)));
        assert_eq!(probe(r#"{"n":-1}"#).n, Count(None));
        assert_eq!(probe(r#"{"n":1.5}"#).n, Count(None));
        assert_eq!(probe(r#"{"n":null}"#).n, Count(None));
    }

    #[test]
    fn lists_skip_elements_that_are_not_objects() {
        let p = probe(r#"{"l":[{"x":1},null,3,{"x":2}]}"#);
        assert_eq!(
            p.l.0,
            vec![Inner { x: Count(Some(1)) }, Inner { x: Count(Some(2)) }]
        );
    }

    #[test]
    fn filled_is_false_only_for_empty_values() {
        for (json, want) in [
            (r#"{"f":""}"#, false),
            (r#"{"f":[]}"#, false),
            (r#"{"f":{}}"#, false),
            (r#"{"f":"a"}"#, true),
            (r#"{"f":[{}]}"#, true),
            (r#"{"f":{"a":null}}"#, true),
        ] {
            assert_eq!(probe(json).f.0, want, "{json}");
        }
    }

    #[test]
    fn an_error_can_be_an_object_or_a_bare_message() {
        let p = probe(r#"{"e":{"type":"t","code":429,"message":"m"}}"#);
        let e = p.e.0.expect("error");
        assert_eq!((e.kind.as_str(), e.code.as_str()), (Some("t"), Some("429")));
        let p = probe(r#"{"e":"boom"}"#);
        let e = p.e.0.expect("error");
        assert_eq!((e.kind.as_str(), e.message.as_str()), (None, Some("boom")));
    }

    static USAGE: Needle = Needle::new("\"usage\"");

    #[test]
    fn needles_tell_keys_from_values_and_ignore_escaped_text() {
        assert!(USAGE.object(br#"{"usage" : {"a":1}}"#));
        assert!(!USAGE.object(br#"{"usage":null}"#));
        assert!(!USAGE.object(br#"{"type":"usage","x":{}}"#));
        assert!(!USAGE.object(br#"{"content":"the \"usage\": {} key"}"#));
        assert!(USAGE.present(br#"{"type":"usage"}"#));
        assert!(!USAGE.present(br#"{"usage":null}"#));
    }

    #[test]
    fn finish_reasons_stay_in_index_order_and_ignore_placeholders() {
        let mut r = ResponseRecord::default();
        let mut f = FinishReasons::default();
        f.set(1, "length", &mut r);
        f.set(0, "", &mut r);
        f.set(0, "stop", &mut r);
        assert_eq!(r.finish_reasons, ["stop", "length"]);
    }

    #[test]
    fn long_values_are_cut_on_a_character_boundary() {
        let s = "é".repeat(200);
        let c = capped(&s, 255);
        assert_eq!(c.len(), 254);
    }
}
