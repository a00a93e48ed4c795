//! A JSON tree that borrows its strings from the bytes it was read from, for content capture.
//!
//! Capture reads a request body and writes parts of it, reshaped, as the GenAI JSON shapes. As
//! a `serde_json::Value` every string was copied out of the body, every object was a B-tree
//! with its own allocations, and the reshaped copy cloned each string again: that was most of
//! what keeping content cost a call. Here a string without escapes is a slice of the body,
//! an object is a vector of its entries, and the reshaped tree borrows the same slices.
//!
//! An object keeps its entries sorted by key, the last of equal keys kept, so it reads, walks
//! and writes exactly as a `Value` of the same text (serde_json's maps are sorted too). A
//! tree is itself a deserializer, so the typed read of a request captured whole decodes the
//! tree instead of parsing the body a second time.

use std::{borrow::Cow, fmt, ops::Index};

use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{
        IntoDeserializer, MapAccess, SeqAccess, Visitor,
        value::{MapDeserializer, SeqDeserializer},
    },
    forward_to_deserialize_any,
    ser::{SerializeMap, SerializeSeq},
};
use serde_json::Number;

/// A JSON value whose strings (and object keys) borrow from the text it was read from when
/// they hold no escapes.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Json<'a> {
    #[default]
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    /// Entries sorted by key, keys unique ([`Json::object`] and the reader keep it so).
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

static NULL: Json<'static> = Json::Null;

impl<'a> Json<'a> {
    /// An object of these entries, in any order (sorted here; the last of equal keys kept).
    pub fn object(mut entries: Vec<(Cow<'a, str>, Json<'a>)>) -> Json<'a> {
        sort_entries(&mut entries);
        Json::Object(entries)
    }

    /// The member `key` of an object; `None` for a missing key or a value that is not an
    /// object.
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(entries) => entries
                .binary_search_by(|(k, _)| k.as_ref().cmp(key))
                .ok()
                .map(|i| &entries[i].1),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Json<'a>]> {
        match self {
            Json::Array(items) => Some(items),
            _ => None,
        }
    }

    /// The JSON text of the value.
    pub fn to_json(&self) -> String {
        // Serializing never fails: every key is a string and numbers are finite.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl<'a> From<&'a str> for Json<'a> {
    fn from(s: &'a str) -> Json<'a> {
        Json::String(Cow::Borrowed(s))
    }
}

impl From<String> for Json<'_> {
    fn from(s: String) -> Self {
        Json::String(Cow::Owned(s))
    }
}

/// `value["key"]`: the member, or `null` (as `Value` answers).
impl<'a> Index<&str> for Json<'a> {
    type Output = Json<'a>;
    fn index(&self, key: &str) -> &Json<'a> {
        self.get(key).unwrap_or(&NULL)
    }
}

/// Sorts object entries by key, keeping the last of equal keys (a `Value` map's insert).
fn sort_entries<V>(entries: &mut Vec<(Cow<'_, str>, V)>) {
    if entries.is_sorted_by(|a, b| a.0 < b.0) {
        return;
    }
    // Stable: of equal keys the one read last stays last.
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    if entries.windows(2).any(|w| w[0].0 == w[1].0) {
        let mut unique: Vec<(Cow<'_, str>, V)> = Vec::with_capacity(entries.len());
        for entry in entries.drain(..) {
            match unique.last_mut() {
                Some(last) if last.0 == entry.0 => *last = entry,
                _ => unique.push(entry),
            }
        }
        *entries = unique;
    }
}

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::Number(n) => n.serialize(s),
            Json::String(text) => s.serialize_str(text),
            Json::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Object(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k.as_ref(), v)?;
                }
                map.end()
            }
        }
    }
}

/// Typed values read from a tree as serde_json reads them from its text (for
/// `#[derive(Deserialize)]` structs, `Option`s, maps, untagged enums).
impl<'de> Deserializer<'de> for &'de Json<'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self {
            Json::Null => visitor.visit_unit(),
            Json::Bool(b) => visitor.visit_bool(*b),
            Json::Number(n) => n.deserialize_any(visitor),
            Json::String(s) => visitor.visit_borrowed_str(s),
            Json::Array(items) => {
                let mut seq = SeqDeserializer::new(items.iter());
                let value = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(value)
            }
            Json::Object(entries) => {
                let mut map = MapDeserializer::new(entries.iter().map(|(k, v)| (k.as_ref(), v)));
                let value = visitor.visit_map(&mut map)?;
                map.end()?;
                Ok(value)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self {
            Json::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_unit()
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier
    }
}

impl<'de> IntoDeserializer<'de, serde_json::Error> for &'de Json<'de> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Json<'de>, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json<'de>, D::Error> {
        Json::deserialize(d)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(n.into()))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Json<'de>, E> {
        // JSON text has no NaN or infinity; serde_json reads an overflow as infinity, which a
        // `Value` keeps as null too.
        Ok(Number::from_f64(n).map_or(Json::Null, Json::Number))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
        while let Some(Key(k)) = map.next_key()? {
            entries.push((k, map.next_value()?));
        }
        sort_entries(&mut entries);
        Ok(Json::Object(entries))
    }
}

/// An object key, borrowed when it holds no escapes (`Cow<str>`'s own impl always copies).
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key<'de>, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    /// Any JSON value, with keys that repeat and strings that need escapes.
    pub(crate) fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[a-c\"\\\\\n\u{1}é🙂 ]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 40, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                proptest::collection::vec(("[a-c\"é]{0,2}", inner), 0..5)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    /// An object's text with `key` written twice, `first` then `second`.
    fn repeated(key: &str, first: &str, second: &str) -> String {
        format!(r#"{{"z":1,{key:?}:{first},"a":2,{key:?}:{second}}}"#)
    }

    proptest! {
        #[test]
        fn a_text_reads_and_writes_as_a_value_of_it(v in value(), pretty in any::<bool>()) {
            let text = if pretty {
                serde_json::to_string_pretty(&v).unwrap()
            } else {
                serde_json::to_string(&v).unwrap()
            };
            let tree: Json = serde_json::from_str(&text).unwrap();
            let value: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(tree.to_json(), value.to_string());
        }

        #[test]
        fn of_repeated_keys_the_last_is_kept_as_a_value_keeps_it(
            key in "[a-z]{1,3}",
            first in value(),
            second in value(),
        ) {
            let text = repeated(&key, &first.to_string(), &second.to_string());
            let tree: Json = serde_json::from_str(&text).unwrap();
            let value: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(tree.to_json(), value.to_string());
            prop_assert_eq!(tree[key.as_str()].to_json(), value[key.as_str()].to_string());
        }
    }

    proptest! {
        /// A typed read of a tree is the typed read of its text, for the shapes the request
        /// side reads: structs of options, lists, numbers, maps and untagged enums.
        #[test]
        fn a_typed_read_of_a_tree_is_the_read_of_its_text(
            v in value(),
            fields in proptest::collection::vec(
                prop_oneof![Just("n"), Just("s"), Just("list"), Just("map"), Just("either")],
                0..4,
            ),
        ) {
            #[derive(Deserialize, Debug, PartialEq)]
            #[serde(untagged)]
            enum Either {
                One(String),
                Many(Vec<String>),
            }
            #[derive(Deserialize, Debug, PartialEq, Default)]
            #[serde(default)]
            struct Typed {
                n: Option<u64>,
                s: Option<String>,
                list: Option<Vec<Option<f64>>>,
                map: Option<serde_json::Map<String, Value>>,
                either: Option<Either>,
            }
            let object: serde_json::Map<String, Value> =
                fields.into_iter().map(|k| (k.to_string(), v.clone())).collect();
            let text = Value::Object(object).to_string();
            let tree: Json = serde_json::from_str(&text).unwrap();
            let from_text = serde_json::from_str::<Typed>(&text).ok();
            let from_tree = Typed::deserialize(&tree).ok();
            prop_assert_eq!(from_tree, from_text);
        }
    }

    #[test]
    fn strings_without_escapes_borrow_from_the_text() {
        let text = r#"{"plain":"abc","escaped":"a\nb","list":["x"]}"#;
        let tree: Json = serde_json::from_str(text).unwrap();
        assert!(matches!(tree["plain"], Json::String(Cow::Borrowed("abc"))));
        assert!(matches!(&tree["escaped"], Json::String(Cow::Owned(s)) if s == "a\nb"));
        assert_eq!(tree["list"].as_array().unwrap()[0].as_str(), Some("x"));
        assert_eq!(tree["missing"], Json::Null);
        assert_eq!(tree["plain"]["deeper"], Json::Null);
    }

    #[test]
    fn a_built_object_is_sorted_like_a_read_one() {
        let built = Json::object(vec![
            ("type".into(), "text".into()),
            ("content".into(), "hi".into()),
        ]);
        assert_eq!(built.to_json(), r#"{"content":"hi","type":"text"}"#);
        assert_eq!(built["type"].as_str(), Some("text"));
    }
}
