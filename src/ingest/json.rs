//! OTLP/JSON: the protobuf messages in the protobuf JSON mapping, with the OTLP exceptions
//! (trace and span ids as hex, not base64; enums as integers). Decoded by hand from
//! `serde_json::Value` into the protobuf types, so both encodings go through one conversion.
//! Field names are lowerCamelCase; the original snake_case names are accepted too, as the
//! protobuf JSON mapping asks of parsers, and unknown fields are ignored (the spec's MUST).
//!
//! A structure that is not what OTLP says (a list that is not a list) makes the request
//! malformed; a bad id only makes its span invalid (rejected in the partial success).

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span},
};
use serde_json::{Map, Value};

type Obj = Map<String, Value>;

/// Decodes an `ExportTraceServiceRequest`; the error says what is wrong where.
pub fn decode(body: &[u8]) -> Result<ExportTraceServiceRequest, String> {
    let root: Value =
        crate::format::json::from_bytes(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let root = object(&root, "the request")?;
    Ok(ExportTraceServiceRequest {
        resource_spans: list(root, "resourceSpans", "resource_spans")?
            .iter()
            .map(resource_spans)
            .collect::<Result<_, _>>()?,
    })
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Obj, String> {
    v.as_object()
        .ok_or_else(|| format!("{what} is not a JSON object"))
}

fn field<'a>(o: &'a Obj, camel: &str, snake: &str) -> Option<&'a Value> {
    o.get(camel)
        .or_else(|| o.get(snake))
        .filter(|v| !v.is_null())
}

fn list<'a>(o: &'a Obj, camel: &str, snake: &str) -> Result<&'a [Value], String> {
    match field(o, camel, snake) {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(format!("{camel} is not a list")),
    }
}

fn string(o: &Obj, camel: &str, snake: &str) -> Result<String, String> {
    match field(o, camel, snake) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("{camel} is not a string")),
    }
}

/// A 64-bit integer: a number or a decimal string (the JSON mapping's form for 64-bit ints).
fn int64(v: &Value, name: &str) -> Result<i64, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_u64().and_then(|u| i64::try_from(u).ok()))
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
                    .map(|f| f as i64)
            })
            .ok_or_else(|| format!("{name} is not an integer")),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("{name} is not an integer")),
        _ => Err(format!("{name} is not an integer")),
    }
}

fn uint64(o: &Obj, camel: &str, snake: &str) -> Result<u64, String> {
    match field(o, camel, snake) {
        None => Ok(0),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map_err(|_| format!("{camel} is not an unsigned integer")),
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| format!("{camel} is not an unsigned integer")),
        Some(_) => Err(format!("{camel} is not an unsigned integer")),
    }
}

fn uint32(o: &Obj, camel: &str, snake: &str) -> Result<u32, String> {
    let n = uint64(o, camel, snake)?;
    u32::try_from(n).map_err(|_| format!("{camel} is out of range"))
}

/// An enum: its integer (what OTLP/JSON sends) or, leniently, its name.
fn enumeration(o: &Obj, camel: &str, snake: &str, names: &[&str]) -> Result<i32, String> {
    match field(o, camel, snake) {
        None => Ok(0),
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| format!("{camel} is not an enum value")),
        Some(Value::String(s)) => names
            .iter()
            .position(|name| name == s)
            .map(|i| i as i32)
            .ok_or_else(|| format!("{camel} {s:?} is not an enum value")),
        Some(_) => Err(format!("{camel} is not an enum value")),
    }
}

/// Hex ids. Anything that is not hex decodes to 3 bytes, a length no id has, which makes the
/// span invalid (a rejected span, not a malformed request). Not to no bytes: an empty parent
/// id is a root span's, and a parent id that is not hex would have made its span a root.
fn id(o: &Obj, camel: &str, snake: &str) -> Result<Vec<u8>, String> {
    let text = string(o, camel, snake)?;
    Ok(hex_decode(&text).unwrap_or_else(|| vec![0; 3]))
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn resource_spans(v: &Value) -> Result<ResourceSpans, String> {
    let o = object(v, "a resourceSpans entry")?;
    let resource = match field(o, "resource", "resource") {
        None => None,
        Some(r) => {
            let r = object(r, "resource")?;
            Some(Resource {
                attributes: attributes(r)?,
                dropped_attributes_count: uint32(
                    r,
                    "droppedAttributesCount",
                    "dropped_attributes_count",
                )?,
                ..Default::default()
            })
        }
    };
    Ok(ResourceSpans {
        resource,
        scope_spans: list(o, "scopeSpans", "scope_spans")?
            .iter()
            .map(scope_spans)
            .collect::<Result<_, _>>()?,
        schema_url: string(o, "schemaUrl", "schema_url")?,
    })
}

fn scope_spans(v: &Value) -> Result<ScopeSpans, String> {
    let o = object(v, "a scopeSpans entry")?;
    let scope = match field(o, "scope", "scope") {
        None => None,
        Some(s) => {
            let s = object(s, "scope")?;
            Some(InstrumentationScope {
                name: string(s, "name", "name")?,
                version: string(s, "version", "version")?,
                attributes: attributes(s)?,
                dropped_attributes_count: uint32(
                    s,
                    "droppedAttributesCount",
                    "dropped_attributes_count",
                )?,
            })
        }
    };
    Ok(ScopeSpans {
        scope,
        spans: list(o, "spans", "spans")?
            .iter()
            .map(span)
            .collect::<Result<_, _>>()?,
        schema_url: string(o, "schemaUrl", "schema_url")?,
    })
}

const KINDS: [&str; 6] = [
    "SPAN_KIND_UNSPECIFIED",
    "SPAN_KIND_INTERNAL",
    "SPAN_KIND_SERVER",
    "SPAN_KIND_CLIENT",
    "SPAN_KIND_PRODUCER",
    "SPAN_KIND_CONSUMER",
];
const STATUS_CODES: [&str; 3] = ["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"];

fn span(v: &Value) -> Result<Span, String> {
    let o = object(v, "a span")?;
    let status = match field(o, "status", "status") {
        None => None,
        Some(s) => {
            let s = object(s, "status")?;
            Some(Status {
                message: string(s, "message", "message")?,
                code: enumeration(s, "code", "code", &STATUS_CODES)?,
            })
        }
    };
    Ok(Span {
        trace_id: id(o, "traceId", "trace_id")?,
        span_id: id(o, "spanId", "span_id")?,
        trace_state: string(o, "traceState", "trace_state")?,
        parent_span_id: id(o, "parentSpanId", "parent_span_id")?,
        flags: uint32(o, "flags", "flags")?,
        name: string(o, "name", "name")?,
        kind: enumeration(o, "kind", "kind", &KINDS)?,
        start_time_unix_nano: uint64(o, "startTimeUnixNano", "start_time_unix_nano")?,
        end_time_unix_nano: uint64(o, "endTimeUnixNano", "end_time_unix_nano")?,
        attributes: attributes(o)?,
        dropped_attributes_count: uint32(o, "droppedAttributesCount", "dropped_attributes_count")?,
        events: list(o, "events", "events")?
            .iter()
            .map(|e| {
                let e = object(e, "an event")?;
                Ok(span::Event {
                    time_unix_nano: uint64(e, "timeUnixNano", "time_unix_nano")?,
                    name: string(e, "name", "name")?,
                    attributes: attributes(e)?,
                    dropped_attributes_count: uint32(
                        e,
                        "droppedAttributesCount",
                        "dropped_attributes_count",
                    )?,
                })
            })
            .collect::<Result<_, String>>()?,
        dropped_events_count: uint32(o, "droppedEventsCount", "dropped_events_count")?,
        links: list(o, "links", "links")?
            .iter()
            .map(|l| {
                let l = object(l, "a link")?;
                Ok(span::Link {
                    trace_id: id(l, "traceId", "trace_id")?,
                    span_id: id(l, "spanId", "span_id")?,
                    trace_state: string(l, "traceState", "trace_state")?,
                    attributes: attributes(l)?,
                    dropped_attributes_count: uint32(
                        l,
                        "droppedAttributesCount",
                        "dropped_attributes_count",
                    )?,
                    flags: uint32(l, "flags", "flags")?,
                })
            })
            .collect::<Result<_, String>>()?,
        dropped_links_count: uint32(o, "droppedLinksCount", "dropped_links_count")?,
        status,
    })
}

fn attributes(o: &Obj) -> Result<Vec<KeyValue>, String> {
    key_values(list(o, "attributes", "attributes")?)
}

fn key_values(values: &[Value]) -> Result<Vec<KeyValue>, String> {
    values
        .iter()
        .map(|kv| {
            let kv = object(kv, "an attribute")?;
            Ok(KeyValue {
                key: string(kv, "key", "key")?,
                value: match field(kv, "value", "value") {
                    None => None,
                    Some(v) => Some(any_value(v)?),
                },
                ..Default::default()
            })
        })
        .collect()
}

fn any_value(v: &Value) -> Result<AnyValue, String> {
    use any_value::Value as V;
    let o = object(v, "an attribute value")?;
    let value = if let Some(s) = field(o, "stringValue", "string_value") {
        Some(V::StringValue(
            s.as_str().ok_or("stringValue is not a string")?.to_string(),
        ))
    } else if let Some(b) = field(o, "boolValue", "bool_value") {
        Some(V::BoolValue(b.as_bool().ok_or("boolValue is not a bool")?))
    } else if let Some(i) = field(o, "intValue", "int_value") {
        Some(V::IntValue(int64(i, "intValue")?))
    } else if let Some(d) = field(o, "doubleValue", "double_value") {
        Some(V::DoubleValue(match d {
            Value::Number(n) => n.as_f64().ok_or("doubleValue is not a number")?,
            // The JSON mapping writes NaN and the infinities as strings.
            Value::String(s) => match s.as_str() {
                "NaN" => f64::NAN,
                "Infinity" => f64::INFINITY,
                "-Infinity" => f64::NEG_INFINITY,
                other => other.parse().map_err(|_| "doubleValue is not a number")?,
            },
            _ => return Err("doubleValue is not a number".into()),
        }))
    } else if let Some(a) = field(o, "arrayValue", "array_value") {
        let a = object(a, "arrayValue")?;
        Some(V::ArrayValue(ArrayValue {
            values: list(a, "values", "values")?
                .iter()
                .map(any_value)
                .collect::<Result<_, _>>()?,
        }))
    } else if let Some(m) = field(o, "kvlistValue", "kvlist_value") {
        let m = object(m, "kvlistValue")?;
        Some(V::KvlistValue(KeyValueList {
            values: key_values(list(m, "values", "values")?)?,
        }))
    } else if let Some(b) = field(o, "bytesValue", "bytes_value") {
        use base64::Engine as _;
        let text = b.as_str().ok_or("bytesValue is not a string")?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
            .map_err(|_| "bytesValue is not base64")?;
        Some(V::BytesValue(bytes))
    } else {
        None
    };
    Ok(AnyValue { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_in_otlp_json_decodes_with_hex_ids_and_integer_enums() {
        let body = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"app"}}]},
            "scopeSpans":[{"scope":{"name":"lib","version":"1.0"},"spans":[{
              "traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
              "parentSpanId":"eee19b7ec3c1b173","name":"op","kind":3,
              "startTimeUnixNano":"1544712660000000000","endTimeUnixNano":1544712661000000000,
              "attributes":[{"key":"n","value":{"intValue":"42"}},{"key":"d","value":{"doubleValue":1.5}},
                {"key":"a","value":{"arrayValue":{"values":[{"intValue":1},{"stringValue":"x"}]}}},
                {"key":"m","value":{"kvlistValue":{"values":[{"key":"k","value":{"boolValue":true}}]}}},
                {"key":"b","value":{"bytesValue":"AQID"}}],
              "events":[{"timeUnixNano":"1544712660500000000","name":"e"}],
              "status":{"code":2,"message":"bad"},"unknownField":1}]}]}]}"#;
        let req = decode(body).unwrap();
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.trace_id.len(), 16);
        assert_eq!(span.span_id, hex_decode("eee19b7ec3c1b174").unwrap());
        assert_eq!(span.kind, 3);
        assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
        assert_eq!(span.end_time_unix_nano, 1_544_712_661_000_000_000);
        assert_eq!(span.attributes.len(), 5);
        assert_eq!(
            span.attributes[4].value.as_ref().unwrap().value,
            Some(any_value::Value::BytesValue(vec![1, 2, 3]))
        );
        assert_eq!(span.status.as_ref().unwrap().code, 2);
        assert_eq!(span.events.len(), 1);
    }

    #[test]
    fn bad_ids_make_an_invalid_span_but_bad_structure_a_malformed_request() {
        let req = decode(
            br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz","spanId":"01","parentSpanId":"xyz"}]}]}]}"#,
        )
        .unwrap();
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        // Not hex: a length no id has (an empty parent would be a root's).
        assert_eq!(span.trace_id.len(), 3);
        assert_eq!(span.parent_span_id.len(), 3);
        assert!(decode(br#"{"resourceSpans":{"x":1}}"#).is_err());
        assert!(
            decode(
                br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"startTimeUnixNano":"soon"}]}]}]}"#
            )
            .is_err()
        );
        assert!(decode(b"[1,2").is_err());
        assert!(decode(b"{}").unwrap().resource_spans.is_empty());
    }
}
