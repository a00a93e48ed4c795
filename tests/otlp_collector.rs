//! The in-process OTLP collector (tests/common/otlp.rs) against the real `opentelemetry-otlp`
//! exporter the gateway uses: every span field survives the trip over gRPC and HTTP, and each
//! collector mode fails (or holds) the export the way the gateway will see it.

mod common;

use std::{
    collections::BTreeMap,
    io::Write as _,
    time::{Duration, Instant, UNIX_EPOCH},
};

use common::otlp::{AttrValue, Collector, Mode, ReceivedSpan, Transport};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use opentelemetry::{
    Array, InstrumentationScope, KeyValue, Value,
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
};
use opentelemetry_otlp::{
    Compression, RetryPolicy, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_proto::{
    tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    transform::{
        common::tonic::ResourceAttributesWithSchema,
        trace::tonic::group_spans_by_resource_and_scope,
    },
};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks},
};
use prost::Message;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN_ID: &str = "00f067aa0ba902b7";
const PARENT_ID: &str = "5399a7c1d2e38ad8";
const START_NS: u64 = 1_760_000_000_123_456_789;
const END_NS: u64 = 1_760_000_001_357_913_579;
const SCOPE_SCHEMA: &str = "https://opentelemetry.io/schemas/1.41.0";
const WAIT: Duration = Duration::from_secs(5);

fn resource() -> Resource {
    Resource::builder_empty()
        .with_service_name("sidetrace-test")
        .with_attributes([
            KeyValue::new("service.version", "0.1.0"),
            KeyValue::new("deployment.environment.name", "ci"),
        ])
        .build()
}

fn span(name: &'static str) -> SpanData {
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_hex(TRACE_ID).unwrap(),
            SpanId::from_hex(SPAN_ID).unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: SpanId::from_hex(PARENT_ID).unwrap(),
        parent_span_is_remote: true,
        span_kind: SpanKind::Client,
        name: name.into(),
        start_time: UNIX_EPOCH + Duration::from_nanos(START_NS),
        end_time: UNIX_EPOCH + Duration::from_nanos(END_NS),
        attributes: vec![
            KeyValue::new("gen_ai.operation.name", "chat"),
            KeyValue::new("gen_ai.usage.input_tokens", 1234_i64),
            KeyValue::new("gen_ai.request.temperature", 0.25),
            KeyValue::new("sidetrace.streamed", true),
            KeyValue::new(
                "gen_ai.response.finish_reasons",
                Value::Array(Array::String(vec!["stop".into(), "length".into()])),
            ),
        ],
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::error("upstream answered 500"),
        instrumentation_scope: InstrumentationScope::builder("sidetrace")
            .with_version("0.1.0")
            .with_schema_url(SCOPE_SCHEMA)
            .build(),
    }
}

fn assert_intact(s: &ReceivedSpan, name: &str) {
    assert_eq!(s.trace_id, TRACE_ID);
    assert_eq!(s.span_id, SPAN_ID);
    assert_eq!(s.parent_span_id, PARENT_ID);
    assert_eq!(s.name, name);
    assert_eq!(s.kind, 3, "SPAN_KIND_CLIENT");
    assert_eq!(s.flags, 0x301, "sampled, has-is-remote, parent is remote");
    assert_eq!(s.start_unix_nanos, START_NS);
    assert_eq!(s.end_unix_nanos, END_NS);
    assert_eq!(s.status_code, 2, "STATUS_CODE_ERROR");
    assert_eq!(s.status_message, "upstream answered 500");
    let attributes: BTreeMap<String, AttrValue> = [
        ("gen_ai.operation.name", AttrValue::Str("chat".into())),
        ("gen_ai.usage.input_tokens", AttrValue::Int(1234)),
        ("gen_ai.request.temperature", AttrValue::Double(0.25)),
        ("sidetrace.streamed", AttrValue::Bool(true)),
        (
            "gen_ai.response.finish_reasons",
            AttrValue::StrList(vec!["stop".into(), "length".into()]),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(s.attributes, attributes);
    let resource: BTreeMap<String, String> = [
        ("service.name", "sidetrace-test"),
        ("service.version", "0.1.0"),
        ("deployment.environment.name", "ci"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(s.resource, resource);
    assert_eq!(s.scope_name, "sidetrace");
    assert_eq!(s.scope_version, "0.1.0");
    assert_eq!(s.schema_url, SCOPE_SCHEMA);
}

/// The gateway's exporter for this collector's transport; build it inside the runtime.
fn build_exporter(
    collector: &Collector,
    timeout: Duration,
    retry: RetryPolicy,
    gzip: bool,
) -> SpanExporter {
    let mut exporter = match collector.transport {
        Transport::Grpc => {
            let mut b = SpanExporter::builder()
                .with_tonic()
                .with_endpoint(collector.endpoint())
                .with_timeout(timeout)
                .with_retry_policy(retry);
            if gzip {
                b = b.with_compression(Compression::Gzip);
            }
            b.build().unwrap()
        }
        Transport::Http => {
            // The gateway's opentelemetry-otlp has no `gzip-http` feature: gzip over HTTP
            // would fail at build(); `a_gzip_compressed_http_export_…` covers the collector side.
            assert!(!gzip, "the HTTP exporter is built without gzip-http");
            SpanExporter::builder()
                .with_http()
                .with_endpoint(collector.endpoint())
                .with_timeout(timeout)
                .with_retry_policy(retry)
                .build()
                .unwrap()
        }
    };
    exporter.set_resource(&resource());
    exporter
}

fn no_retry(collector: &Collector, timeout: Duration) -> SpanExporter {
    build_exporter(collector, timeout, RetryPolicy::disabled(), false)
}

async fn export(exporter: &SpanExporter, name: &'static str) -> (OTelSdkResult, Duration) {
    let started = Instant::now();
    let result = exporter.export(vec![span(name)]).await;
    let elapsed = started.elapsed();
    eprintln!("export {name:?}: {result:?} after {elapsed:?}");
    (result, elapsed)
}

async fn round_trip(transport: Transport, gzip: bool) {
    let collector = Collector::start(transport).await;
    let exporter = build_exporter(&collector, WAIT, RetryPolicy::disabled(), gzip);
    let (result, _) = export(&exporter, "chat gpt-4o-mini").await;
    result.unwrap();
    let spans = collector.wait_for_spans(1, WAIT).await;
    assert_eq!(spans.len(), 1);
    assert_intact(&spans[0], "chat gpt-4o-mini");
    assert_eq!(collector.export_requests(), 1);
    collector.stop().await;
}

#[tokio::test]
async fn a_span_exported_over_grpc_arrives_with_every_field_intact() {
    round_trip(Transport::Grpc, false).await;
}

#[tokio::test]
async fn a_gzip_compressed_grpc_export_arrives_with_every_field_intact() {
    round_trip(Transport::Grpc, true).await;
}

#[tokio::test]
async fn a_span_exported_over_http_arrives_with_every_field_intact() {
    round_trip(Transport::Http, false).await;
}

#[tokio::test]
async fn a_gzip_compressed_http_export_is_decoded_by_the_collector() {
    let collector = Collector::start(Transport::Http).await;
    let request = ExportTraceServiceRequest {
        resource_spans: group_spans_by_resource_and_scope(
            vec![span("gzipped")],
            &ResourceAttributesWithSchema::from(&resource()),
        ),
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&request.encode_to_vec()).unwrap();
    let req = Request::post(collector.endpoint())
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "gzip")
        .body(common::full_body(gz.finish().unwrap()))
        .unwrap();
    let response = common::client().request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-protobuf");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let answer = ExportTraceServiceResponse::decode(&body[..]).unwrap();
    assert_eq!(answer.partial_success, None);
    let spans = collector.wait_for_spans(1, WAIT).await;
    assert_intact(&spans[0], "gzipped");
    collector.stop().await;
}

/// With retries disabled every failing mode costs one request and stores nothing.
async fn throttling_fails_the_export(transport: Transport) {
    let collector = Collector::start(transport).await;
    let exporter = no_retry(&collector, WAIT);
    let mut requests = 0;
    for (code, retry_after_s) in [(503, None), (429, None), (503, Some(1)), (429, Some(1))] {
        collector.set_mode(Mode::Status {
            code,
            retry_after_s,
        });
        let (result, elapsed) = export(&exporter, "throttled").await;
        assert!(
            result.is_err(),
            "{code} (retry after {retry_after_s:?}) must fail the export"
        );
        assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
        requests += 1;
        assert_eq!(collector.export_requests(), requests, "one attempt only");
    }
    assert!(collector.spans().is_empty());
    collector.set_mode(Mode::Accept);
    export(&exporter, "after").await.0.unwrap();
    assert_eq!(collector.spans().len(), 1);
    collector.stop().await;
}

#[tokio::test]
async fn statuses_503_and_429_fail_a_grpc_export() {
    throttling_fails_the_export(Transport::Grpc).await;
}

#[tokio::test]
async fn statuses_503_and_429_fail_an_http_export() {
    throttling_fails_the_export(Transport::Http).await;
}

async fn stall_fails_the_export_at_the_timeout(transport: Transport) {
    let collector = Collector::start(transport).await;
    collector.set_mode(Mode::Stall);
    let exporter = no_retry(&collector, Duration::from_millis(300));
    let (result, elapsed) = export(&exporter, "stalled").await;
    assert!(result.is_err());
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(1),
        "took {elapsed:?}"
    );
    assert_eq!(collector.export_requests(), 1);
    assert!(collector.spans().is_empty());
    collector.stop().await;
}

#[tokio::test]
async fn a_stalled_grpc_collector_fails_the_export_at_the_exporter_timeout() {
    stall_fails_the_export_at_the_timeout(Transport::Grpc).await;
}

#[tokio::test]
async fn a_stalled_http_collector_fails_the_export_at_the_exporter_timeout() {
    stall_fails_the_export_at_the_timeout(Transport::Http).await;
}

async fn refusal_fails_the_export(transport: Transport) {
    let collector = Collector::start(transport).await;
    collector.set_mode(Mode::Refuse);
    // The recommended retry policy: a refusal is not retryable, so it still costs one request.
    let exporter = build_exporter(&collector, WAIT, RetryPolicy::default(), false);
    let (result, elapsed) = export(&exporter, "refused").await;
    assert!(result.is_err());
    assert!(elapsed < Duration::from_millis(500), "took {elapsed:?}");
    assert_eq!(collector.export_requests(), 1);
    assert!(collector.spans().is_empty());
    collector.stop().await;
}

#[tokio::test]
async fn a_refusing_grpc_collector_fails_the_export_at_once_without_retry() {
    refusal_fails_the_export(Transport::Grpc).await;
}

#[tokio::test]
async fn a_refusing_http_collector_fails_the_export_at_once_without_retry() {
    refusal_fails_the_export(Transport::Http).await;
}

async fn down_then_up(transport: Transport) {
    let collector = Collector::start(transport).await;
    let addr = collector.addr;
    let exporter = no_retry(&collector, Duration::from_secs(2));
    export(&exporter, "before").await.0.unwrap();
    collector.wait_for_spans(1, WAIT).await;
    collector.stop().await;

    let refused = tokio::net::TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    let (result, elapsed) = export(&exporter, "while down").await;
    assert!(result.is_err());
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");

    let collector = Collector::start_on(transport, addr).await;
    assert_eq!(collector.addr, addr);
    export(&exporter, "after restart").await.0.unwrap();
    let spans = collector.wait_for_spans(1, WAIT).await;
    assert_intact(&spans[0], "after restart");
    assert_eq!(collector.export_requests(), 1);
    collector.stop().await;
}

#[tokio::test]
async fn a_stopped_grpc_collector_refuses_the_export_and_a_restart_on_its_port_accepts_again() {
    down_then_up(Transport::Grpc).await;
}

#[tokio::test]
async fn a_stopped_http_collector_refuses_the_export_and_a_restart_on_its_port_accepts_again() {
    down_then_up(Transport::Http).await;
}

async fn stop_releases_a_stalled_export(transport: Transport) {
    let collector = Collector::start(transport).await;
    collector.set_mode(Mode::Stall);
    let exporter = no_retry(&collector, Duration::from_secs(10));
    let pending = tokio::spawn(async move { export(&exporter, "held").await });
    collector.wait_for_requests(1, WAIT).await;
    let started = Instant::now();
    collector.stop().await;
    assert!(started.elapsed() < Duration::from_secs(1));
    let (result, elapsed) = pending.await.unwrap();
    // The message is for logs only, but here it tells a dropped connection from an answer.
    let error = format!("{:?}", result.unwrap_err());
    assert!(
        !error.contains("status code"),
        "the connection must drop, not answer: {error}"
    );
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
}

#[tokio::test]
async fn stopping_a_grpc_collector_drops_a_stalled_export_connection() {
    stop_releases_a_stalled_export(Transport::Grpc).await;
}

#[tokio::test]
async fn stopping_an_http_collector_drops_a_stalled_export_connection() {
    stop_releases_a_stalled_export(Transport::Http).await;
}

/// How many attempts `opentelemetry-otlp` makes, with a short retry policy, per answer.
async fn attempts(transport: Transport, mode: Mode) -> (usize, Duration) {
    let collector = Collector::start(transport).await;
    collector.set_mode(mode);
    let retry = RetryPolicy::default()
        .with_max_retries(2)
        .with_initial_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_millis(200))
        .with_max_jitter(Duration::ZERO);
    let exporter = build_exporter(&collector, WAIT, retry, false);
    let (result, elapsed) = export(&exporter, "retried").await;
    assert!(
        result.is_err(),
        "{transport:?} {mode:?} must fail the export"
    );
    let n = collector.export_requests();
    eprintln!("{transport:?} {mode:?}: {n} request(s) in {elapsed:?}");
    collector.stop().await;
    (n, elapsed)
}

#[tokio::test]
async fn the_exporter_retries_503_and_http_429_but_not_grpc_resource_exhausted_or_a_refusal() {
    let status = |code| Mode::Status {
        code,
        retry_after_s: None,
    };
    assert_eq!(attempts(Transport::Http, status(503)).await.0, 3);
    assert_eq!(attempts(Transport::Http, status(429)).await.0, 3);
    assert_eq!(attempts(Transport::Http, Mode::Refuse).await.0, 1);
    // UNAVAILABLE is retryable; RESOURCE_EXHAUSTED without RetryInfo is not (OTLP spec).
    assert_eq!(attempts(Transport::Grpc, status(503)).await.0, 3);
    assert_eq!(attempts(Transport::Grpc, status(429)).await.0, 1);
    assert_eq!(attempts(Transport::Grpc, Mode::Refuse).await.0, 1);
}

async fn retry_after_hint(transport: Transport, code: u16) {
    let collector = Collector::start(transport).await;
    collector.set_mode(Mode::Status {
        code,
        retry_after_s: Some(1),
    });
    let retry = RetryPolicy::default()
        .with_max_retries(1)
        .with_max_jitter(Duration::ZERO);
    let exporter = build_exporter(&collector, WAIT, retry.clone(), false);
    let (result, elapsed) = export(&exporter, "throttled").await;
    assert!(result.is_err());
    assert_eq!(collector.export_requests(), 2, "{transport:?} {code}");
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(2),
        "{transport:?} {code}: the hint was not honoured: {elapsed:?}"
    );

    // A hint longer than what is left of the exporter timeout: no retry at all.
    collector.set_mode(Mode::Status {
        code,
        retry_after_s: Some(30),
    });
    let exporter = build_exporter(&collector, Duration::from_secs(2), retry, false);
    let (result, elapsed) = export(&exporter, "throttled long").await;
    assert!(result.is_err());
    assert_eq!(collector.export_requests(), 3, "{transport:?} {code}");
    assert!(elapsed < Duration::from_millis(500), "took {elapsed:?}");
    collector.stop().await;
}

#[tokio::test]
async fn a_retry_after_hint_delays_the_retry_and_one_past_the_deadline_ends_the_export() {
    tokio::join!(
        retry_after_hint(Transport::Http, 503),
        retry_after_hint(Transport::Http, 429),
        retry_after_hint(Transport::Grpc, 503),
        retry_after_hint(Transport::Grpc, 429),
    );
}
