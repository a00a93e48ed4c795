//! The OTLP side of export: span records become `SpanData` and go out through the
//! `opentelemetry-otlp` exporter (gRPC or HTTP/protobuf), called from our own task, never from
//! the SDK's batch processor (reference/rust-stack.md, pitfall 1). The exporter's own retries
//! are off: a failed batch goes to the spool and the replayer retries it.

use std::{
    borrow::Cow,
    collections::HashMap,
    time::{Duration, UNIX_EPOCH},
};

use opentelemetry::{
    Array, InstrumentationScope, KeyValue, StringValue, Value,
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};

use crate::{
    config::{ExportConfig, ExportProtocol},
    trace::span::{AttrValue, SpanRecord, SpanStatus, Telemetry},
};

pub type Exporter = opentelemetry_otlp::SpanExporter;

fn value(v: &AttrValue) -> Value {
    match v {
        AttrValue::Bool(b) => Value::Bool(*b),
        AttrValue::Int(i) => Value::I64(*i),
        AttrValue::Double(d) => Value::F64(*d),
        AttrValue::Str(s) => Value::String(s.clone().into()),
        AttrValue::StrList(list) => Value::Array(Array::String(
            list.iter().cloned().map(StringValue::from).collect(),
        )),
    }
}

pub fn scope(t: &Telemetry) -> InstrumentationScope {
    InstrumentationScope::builder(t.scope_name.clone())
        .with_version(t.scope_version.clone())
        .with_schema_url(t.schema_url.clone())
        .build()
}

pub fn resource(t: &Telemetry) -> opentelemetry_sdk::Resource {
    opentelemetry_sdk::Resource::builder_empty()
        .with_attributes(
            t.resource
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .build()
}

/// One span record as the SDK's export type.
pub fn span_data(r: &SpanRecord, scope: &InstrumentationScope) -> SpanData {
    let trace_state = r
        .trace_state
        .as_deref()
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(r.trace_id),
            SpanId::from_bytes(r.span_id),
            TraceFlags::new(r.flags),
            false,
            trace_state,
        ),
        parent_span_id: r.parent_span_id.map_or(SpanId::INVALID, SpanId::from_bytes),
        parent_span_is_remote: r.parent_is_remote,
        span_kind: span_kind(&r.kind),
        name: Cow::Owned(r.name.clone()),
        start_time: UNIX_EPOCH + Duration::from_nanos(r.start_unix_nanos),
        end_time: UNIX_EPOCH + Duration::from_nanos(r.end_unix_nanos),
        attributes: r
            .attributes
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), value(v)))
            .collect(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: match &r.status {
            SpanStatus::Unset => Status::Unset,
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
        ExportProtocol::HttpProtobuf => {
            let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
            http.enforce_http(false);
            http.set_nodelay(true);
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .wrap_connector(http);
            let client = opentelemetry_http::hyper::HyperClient::new(https, timeout, None);
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
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
