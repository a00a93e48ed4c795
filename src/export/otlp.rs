//! The OTLP side of export: span records become `SpanData` and go out through the
//! `opentelemetry-otlp` exporter (gRPC, HTTP/protobuf or HTTP/JSON), called from our own task, never from
//! the SDK's batch processor (reference/rust-stack.md, pitfall 1). The exporter's own retries
//! are off: a failed batch goes to the spool and the replayer retries it.

use std::{
    borrow::Cow,
    collections::HashMap,
    time::{Duration, UNIX_EPOCH},
};

use opentelemetry::{
    Array, InstrumentationScope, KeyValue, StringValue, Value,
    trace::{Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};

use super::conventions::Conventions;
use crate::{
    config::{ExportConfig, ExportProtocol},
    trace::span::{AttrValue, Origin, SpanRecord, SpanStatus, Telemetry},
};

pub type Exporter = opentelemetry_otlp::SpanExporter;

/// An attribute value as the SDK's. The SDK's values have no bytes, maps or mixed arrays:
/// those (only received spans have them) go out as their JSON text, which the trace store and
/// `/api/traces` keep as they came.
fn value(v: &AttrValue) -> Value {
    match v {
        AttrValue::Bool(b) => Value::Bool(*b),
        AttrValue::Int(i) => Value::I64(*i),
        AttrValue::Double(d) => Value::F64(*d),
        AttrValue::Str(s) => Value::String(s.clone().into()),
        AttrValue::StrList(list) => Value::Array(Array::String(
            list.iter().cloned().map(StringValue::from).collect(),
        )),
        AttrValue::List(list) => homogeneous(list).unwrap_or_else(|| as_json(v)),
        AttrValue::Map { .. } | AttrValue::Bytes { .. } => as_json(v),
    }
}

/// An array of one scalar type, as the SDK's array.
fn homogeneous(list: &[AttrValue]) -> Option<Value> {
    let bools: Option<Vec<bool>> = list
        .iter()
        .map(|v| match v {
            AttrValue::Bool(b) => Some(*b),
            _ => None,
        })
        .collect();
    if let Some(b) = bools {
        return Some(Value::Array(Array::Bool(b)));
    }
    let ints: Option<Vec<i64>> = list
        .iter()
        .map(|v| match v {
            AttrValue::Int(i) => Some(*i),
            _ => None,
        })
        .collect();
    if let Some(i) = ints {
        return Some(Value::Array(Array::I64(i)));
    }
    let doubles: Option<Vec<f64>> = list
        .iter()
        .map(|v| match v {
            AttrValue::Double(d) => Some(*d),
            AttrValue::Int(i) => Some(*i as f64),
            _ => None,
        })
        .collect();
    doubles.map(|d| Value::Array(Array::F64(d)))
}

fn as_json(v: &AttrValue) -> Value {
    Value::String(serde_json::to_string(v).unwrap_or_default().into())
}

fn key_values<K: Clone + Into<opentelemetry::Key>>(attrs: &[(K, AttrValue)]) -> Vec<KeyValue> {
    attrs
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), value(v)))
        .collect()
}

/// The scope of the gateway's own spans; its schema URL names the conventions they leave with.
pub fn scope(t: &Telemetry, conventions: &Conventions) -> InstrumentationScope {
    InstrumentationScope::builder(t.scope_name.clone())
        .with_version(t.scope_version.clone())
        .with_schema_url(conventions.schema_url())
        .build()
}

pub fn resource(t: &Telemetry) -> opentelemetry_sdk::Resource {
    resource_of(&t.resource)
}

fn resource_of(attributes: &[(String, String)]) -> opentelemetry_sdk::Resource {
    opentelemetry_sdk::Resource::builder_empty()
        .with_attributes(
            attributes
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .build()
}

/// The resource and scope a received span is exported under.
pub fn origin_parts(o: &Origin) -> (opentelemetry_sdk::Resource, InstrumentationScope) {
    let mut scope = InstrumentationScope::builder(o.scope_name.clone());
    if !o.scope_version.is_empty() {
        scope = scope.with_version(o.scope_version.clone());
    }
    (resource_of(&o.resource), scope.build())
}

fn span_context(
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
    state: Option<&str>,
) -> SpanContext {
    let trace_state = state
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    SpanContext::new(
        TraceId::from_bytes(trace_id),
        SpanId::from_bytes(span_id),
        TraceFlags::new(flags),
        false,
        trace_state,
    )
}

fn time(nanos: u64) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

/// One span record as the SDK's export type. `conventions`: the gateway's own span, renamed for
/// the export's conventions; `None`: a received span, exported as the app made it.
pub fn span_data(
    r: &SpanRecord,
    scope: &InstrumentationScope,
    conventions: Option<&Conventions>,
) -> SpanData {
    let mut events = SpanEvents::default();
    events.events = r
        .events
        .iter()
        .map(|e| {
            Event::new(
                e.name.clone(),
                time(e.time_unix_nanos),
                key_values(&e.attributes),
                0,
            )
        })
        .collect();
    let mut links = SpanLinks::default();
    links.links = r
        .links
        .iter()
        .map(|l| {
            Link::new(
                span_context(l.trace_id, l.span_id, l.flags, l.trace_state.as_deref()),
                key_values(&l.attributes),
                0,
            )
        })
        .collect();
    SpanData {
        span_context: span_context(r.trace_id, r.span_id, r.flags, r.trace_state.as_deref()),
        parent_span_id: r.parent_span_id.map_or(SpanId::INVALID, SpanId::from_bytes),
        parent_span_is_remote: r.parent_is_remote,
        span_kind: span_kind(&r.kind),
        name: Cow::Owned(r.name.clone()),
        start_time: time(r.start_unix_nanos),
        end_time: time(r.end_unix_nanos),
        attributes: match conventions {
            Some(c) => key_values(&c.attributes(r)),
            None => key_values(&r.attributes),
        },
        dropped_attributes_count: 0,
        events,
        links,
        status: match &r.status {
            SpanStatus::Unset => Status::Unset,
            SpanStatus::Ok => Status::Ok,
            SpanStatus::Error(m) => Status::error(m.clone()),
        },
        instrumentation_scope: scope.clone(),
    }
}

/// Builds the exporter from the config; the standard `OTEL_EXPORTER_OTLP_*` variables fill in
/// whatever the config leaves empty (the crate reads them).
pub fn build(
    cfg: &ExportConfig,
    telemetry: &Telemetry,
    tls: rustls::ClientConfig,
) -> Result<Exporter, String> {
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let mut exporter = match cfg.protocol {
        ExportProtocol::Grpc => {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_timeout(timeout)
                .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled());
            if !cfg.endpoint.is_empty() {
                b = b.with_endpoint(cfg.endpoint.clone());
            }
            if cfg.compression == "gzip" {
                b = b.with_compression(opentelemetry_otlp::Compression::Gzip);
            }
            if !cfg.headers.is_empty() {
                let mut headers = http::HeaderMap::new();
                for (k, v) in &cfg.headers {
                    let name = http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
                        .map_err(|e| format!("export.headers {k:?}: {e}"))?;
                    let value = http::HeaderValue::from_str(v)
                        .map_err(|e| format!("export.headers {k:?}: {e}"))?;
                    headers.insert(name, value);
                }
                b = b.with_metadata(
                    opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers),
                );
            }
            b.build().map_err(|e| format!("OTLP gRPC exporter: {e}"))?
        }
        ExportProtocol::HttpProtobuf | ExportProtocol::HttpJson => {
            let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
            http.enforce_http(false);
            http.set_nodelay(true);
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .wrap_connector(http);
            let client = opentelemetry_http::hyper::HyperClient::new(https, timeout, None);
            // Named, never left to the crate: with the http-json feature on, its default (and
            // its reading of OTEL_EXPORTER_OTLP_PROTOCOL) could differ from the config's.
            let protocol = match cfg.protocol {
                ExportProtocol::HttpJson => opentelemetry_otlp::Protocol::HttpJson,
                _ => opentelemetry_otlp::Protocol::HttpBinary,
            };
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(protocol)
                .with_http_client(client)
                .with_timeout(timeout)
                .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled());
            if !cfg.endpoint.is_empty() {
                b = b.with_endpoint(http_traces_endpoint(&cfg.endpoint));
            }
            if cfg.compression == "gzip" {
                b = b.with_compression(opentelemetry_otlp::Compression::Gzip);
            }
            if !cfg.headers.is_empty() {
                b = b.with_headers(
                    cfg.headers
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect::<HashMap<_, _>>(),
                );
            }
            b.build().map_err(|e| format!("OTLP HTTP exporter: {e}"))?
        }
    };
    exporter.set_resource(&resource(telemetry));
    Ok(exporter)
}

/// A base endpoint (`http://collector:4318`) gets the traces path; a full one is kept.
fn http_traces_endpoint(endpoint: &str) -> String {
    if endpoint.trim_end_matches('/').ends_with("/v1/traces") {
        endpoint.to_string()
    } else {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    }
}

/// The OTLP kind of a span's `kind` (`client`, `server`, `internal`, `producer`, `consumer`);
/// an unknown one is `internal`, the spec's default.
pub fn span_kind(kind: &str) -> SpanKind {
    match kind {
        "client" => SpanKind::Client,
        "server" => SpanKind::Server,
        "producer" => SpanKind::Producer,
        "consumer" => SpanKind::Consumer,
        _ => SpanKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_kinds_map_to_otlp_kinds() {
        assert_eq!(span_kind("client"), SpanKind::Client);
        assert_eq!(span_kind("server"), SpanKind::Server);
        assert_eq!(span_kind("internal"), SpanKind::Internal);
        assert_eq!(span_kind("something else"), SpanKind::Internal);
    }

    #[test]
    fn an_http_base_endpoint_gets_the_traces_path_once() {
        assert_eq!(
            http_traces_endpoint("http://c:4318"),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            http_traces_endpoint("http://c:4318/"),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            http_traces_endpoint("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }
}
