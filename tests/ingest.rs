//! The OTLP receiver (`[ingest]`): spans sent by an app over OTLP/HTTP (protobuf, JSON, gzip)
//! and OTLP/gRPC reach the trace store and the upstream collector under the app's resource and
//! scope, exactly once, across a collector outage and a restart; and abuse (malformed bodies,
//! wrong content types, oversize and gzip bombs, too many spans, invalid ids, a crowded export
//! queue) gets the OTLP spec's answer without losing the other spans.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{
    otlp::{Collector, Mode, ReceivedSpan, Transport},
    *,
};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_client::TraceServiceClient,
    },
    common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span},
};
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic_types::StatusExt;

/// `google.rpc.Status`, the body of OTLP/HTTP error answers.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn string(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

/// A valid span `n` of trace `trace`, child of `parent` when given.
fn span(trace: [u8; 16], n: u64, parent: Option<u64>) -> Span {
    let start = now_nanos();
    Span {
        trace_id: trace.to_vec(),
        span_id: (n + 1).to_be_bytes().to_vec(),
        parent_span_id: parent
            .map(|p| (p + 1).to_be_bytes().to_vec())
            .unwrap_or_default(),
        name: format!("step {n}"),
        kind: 1,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 1_000_000,
        ..Default::default()
    }
}

fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    string("service.name", service),
                    KeyValue {
                        key: "process.pid".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::IntValue(4242)),
                        }),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "agent.lib".into(),
                    version: "2.1.0".into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn trace_id(seed: u8) -> [u8; 16] {
    let mut t = [seed; 16];
    t[..8].copy_from_slice(&now_nanos().to_be_bytes());
    t
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

async fn post(addr: SocketAddr, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Answer {
    let mut req = Request::post(format!("http://{addr}/v1/traces"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client()
        .request(req.body(full_body(body.into())).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

const PROTOBUF: (&str, &str) = ("content-type", "application/x-protobuf");
const JSON: (&str, &str) = ("content-type", "application/json");

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn http_addr(gw: &TestGateway) -> SocketAddr {
    gw.ingest_http_addr.expect("the receiver is on")
}

async fn grpc_client(gw: &TestGateway) -> TraceServiceClient<tonic::transport::Channel> {
    let addr = gw.ingest_grpc_addr.expect("the receiver is on");
    TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .send_compressed(CompressionEncoding::Gzip)
}

fn export_config(collector: &Collector, data_dir: &Path, extra: &str) -> String {
    let protocol = match collector.transport {
        Transport::Grpc => "grpc",
        Transport::Http => "http/protobuf",
    };
    format!(
        "data_dir = {:?}\n{extra}\n[export]\nendpoint = {:?}\nprotocol = {protocol:?}\ntimeout_ms = 300\nbatch_delay_ms = 20\nreplay_backoff_max_ms = 400\n",
        data_dir.display().to_string(),
        collector.endpoint(),
    )
}

/// Waits until the metric is at least `n`.
async fn wait_for(gw: &TestGateway, prefix: &str, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = metric(gw, prefix).await;
        if v >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{prefix} is {v}, expected {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the gateway has delivered `n` spans and holds none in its spool: what the
/// collector has then is final, duplicates included.
async fn wait_settled(gw: &TestGateway, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let delivered = metric(gw, "sidetrace_spans_exported_total").await
            + metric(gw, "sidetrace_spans_replayed_total").await;
        let spooled = metric(gw, "sidetrace_spool_items ").await;
        if delivered >= n as f64 && spooled == 0.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{delivered} of {n} spans delivered, {spooled} batches still spooled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every expected span id exactly once.
fn assert_each_once(received: &[ReceivedSpan], expected: &BTreeSet<String>) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in received {
        *counts.entry(s.span_id.as_str()).or_default() += 1;
    }
    let dupes: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dupes.is_empty(), "spans received more than once: {dupes:?}");
    let got: BTreeSet<String> = counts.keys().map(|s| s.to_string()).collect();
    assert_eq!(&got, expected);
}

async fn stored_trace(gw: &TestGateway, trace: &[u8; 16]) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = admin_get(gw, &format!("/api/traces/{}", hex(trace))).await;
        if a.status == StatusCode::OK {
            return a.json();
        }
        assert!(Instant::now() < deadline, "trace not stored: {}", a.status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_over_http_protobuf_json_and_grpc_keep_their_resource_in_the_store_and_the_export() {
    let collector = Collector::start(Transport::Grpc).await;
    let mock = Mock::start(|_| {
        Reply::json(
            200,
            &String::from_utf8(fixture("openai/chat_nonstream.json")).unwrap(),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_for(&mock, &export_config(&collector, dir.path(), "")).await;
    let trace = trace_id(1);

    // Root over protobuf (with every kind of attribute value), a child over JSON, one over gRPC.
    let mut root = span(trace, 0, None);
    root.name = "support_agent.run".into();
    root.status = Some(Status {
        code: 1,
        message: String::new(),
    });
    root.attributes = vec![
        string("s", "text"),
        KeyValue {
            key: "mixed".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::ArrayValue(ArrayValue {
                    values: vec![
                        AnyValue {
                            value: Some(any_value::Value::IntValue(1)),
                        },
                        AnyValue {
                            value: Some(any_value::Value::StringValue("x".into())),
                        },
                    ],
                })),
            }),
            ..Default::default()
        },
        KeyValue {
            key: "map".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::KvlistValue(KeyValueList {
                    values: vec![string("k", "v")],
                })),
            }),
            ..Default::default()
        },
        KeyValue {
            key: "raw".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::BytesValue(vec![1, 2, 3])),
            }),
            ..Default::default()
        },
    ];
    root.events = vec![span::Event {
        time_unix_nano: root.start_time_unix_nano + 10,
        name: "retrieved".into(),
        attributes: vec![string("doc", "d1")],
        dropped_attributes_count: 0,
    }];
    let a = post(
        http_addr(&gw),
        &[PROTOBUF],
        request("support-agent", vec![root]).encode_to_vec(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["content-type"], "application/x-protobuf");
    let response = ExportTraceServiceResponse::decode(a.body).unwrap();
    assert_eq!(response.partial_success, None);

    let start = now_nanos();
    let json = format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"support-agent"}}}}]}},
        "scopeSpans":[{{"scope":{{"name":"agent.lib","version":"2.1.0"}},"spans":[{{"traceId":"{}","spanId":"{}","parentSpanId":"{}",
        "name":"retrieve","kind":1,"startTimeUnixNano":"{start}","endTimeUnixNano":"{}","attributes":[{{"key":"n","value":{{"intValue":"3"}}}}]}}]}}]}}]}}"#,
        hex(&trace),
        hex(&2u64.to_be_bytes()),
        hex(&1u64.to_be_bytes()),
        start + 1000
    );
    let a = post(
        http_addr(&gw),
        &[JSON, ("content-encoding", "gzip")],
        gzip(json.as_bytes()),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&a.body).unwrap(),
        serde_json::json!({})
    );

    let mut tool = span(trace, 2, Some(0));
    tool.name = "execute_tool lookup_order".into();
    let answer = grpc_client(&gw)
        .await
        .export(request("support-agent", vec![tool]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.partial_success, None);

    // The gateway's own call in the same trace, as the app's child.
    let traceparent = format!("00-{}-{}-01", hex(&trace), hex(&1u64.to_be_bytes()));
    let call = common::post(
        &gw,
        "/openai/v1/chat/completions",
        &[("traceparent", &traceparent)],
        r#"{"model":"o4-mini","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(call.status, StatusCode::OK);

    collector.wait_for_spans(4, Duration::from_secs(10)).await;
    wait_settled(&gw, 4).await;
    let received = collector.spans();
    assert_eq!(received.len(), 4, "{received:#?}");
    let by_name: BTreeMap<&str, &ReceivedSpan> =
        received.iter().map(|s| (s.name.as_str(), s)).collect();
    for name in ["support_agent.run", "retrieve", "execute_tool lookup_order"] {
        let s = by_name[name];
        assert_eq!(s.resource["service.name"], "support-agent", "{name}");
        assert_eq!(s.scope_name, "agent.lib", "{name}");
        assert_eq!(s.scope_version, "2.1.0", "{name}");
        assert_eq!(s.trace_id, hex(&trace));
    }
    let root = by_name["support_agent.run"];
    // A resource attribute that is not a string goes out as its text.
    assert_eq!(root.resource["process.pid"], "4242");
    assert_eq!(root.status_code, 1);
    assert_eq!(
        root.attributes["s"],
        common::otlp::AttrValue::Str("text".into())
    );
    assert_eq!(by_name["retrieve"].parent_span_id, root.span_id);
    assert_eq!(
        by_name["retrieve"].attributes["n"],
        common::otlp::AttrValue::Int(3)
    );
    let own = received
        .iter()
        .find(|s| s.name.starts_with("chat"))
        .expect("the gateway's span");
    assert_eq!(own.resource["service.name"], "sidetrace");
    assert_eq!(own.scope_name, "sidetrace");
    assert_eq!(own.parent_span_id, root.span_id);

    // The store keeps one tree, each span under its own service, values as they came.
    let stored = stored_trace(&gw, &trace).await;
    let spans = stored["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 4, "{stored:#}");
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s["name"].as_str().unwrap().starts_with(name))
            .unwrap()
            .clone()
    };
    let root = find("support_agent.run");
    assert_eq!(root["service"], "support-agent");
    assert_eq!(root["parent_span_id"], serde_json::Value::Null);
    assert_eq!(root["attributes"]["mixed"], serde_json::json!([1, "x"]));
    assert_eq!(root["attributes"]["map"], serde_json::json!({"k": "v"}));
    assert_eq!(
        root["attributes"]["raw"],
        serde_json::json!({"bytes": "AQID"})
    );
    assert_eq!(root["events"][0]["name"], "retrieved");
    assert_eq!(root["events"][0]["attributes"]["doc"], "d1");
    assert_eq!(root["status"]["code"], "ok");
    let otlp = admin_get(&gw, &format!("/api/traces/{}/otlp", hex(&trace))).await;
    assert!(
        String::from_utf8_lossy(&otlp.body).contains("\"retrieved\""),
        "{:?}",
        otlp.body
    );
    for name in ["retrieve", "execute_tool lookup_order", "chat"] {
        assert_eq!(find(name)["parent_span_id"], root["span_id"], "{name}");
    }
    assert_eq!(find("chat")["service"], "sidetrace");

    let m = metrics_of(&gw).await;
    assert_eq!(
        metric_in(
            &m,
            "sidetrace_ingest_spans_total{transport=\"http\",result=\"accepted\"}"
        ),
        2.0
    );
    assert_eq!(
        metric_in(
            &m,
            "sidetrace_ingest_spans_total{transport=\"grpc\",result=\"accepted\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_in(
            &m,
            "sidetrace_ingest_requests_total{transport=\"http\",result=\"ok\"}"
        ),
        2.0
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_and_wrong_content_types_get_the_specs_answers_and_nothing_is_taken() {
    let gw = gateway("").await;
    let addr = http_addr(&gw);

    // Malformed protobuf: 400 with a protobuf google.rpc.Status.
    let a = post(
        addr,
        &[PROTOBUF],
        vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01],
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.headers["content-type"], "application/x-protobuf");
    let status = RpcStatus::decode(a.body).unwrap();
    assert_eq!(status.code, 3);
    assert!(status.message.contains("protobuf"), "{}", status.message);

    // Malformed JSON, and JSON of the wrong shape: 400 with a JSON status.
    for body in [
        &b"{\"resourceSpans\": [ {"[..],
        b"{\"resourceSpans\": 7}",
        b"[]",
    ] {
        let a = post(addr, &[JSON], body.to_vec()).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body:?}");
        assert_eq!(a.headers["content-type"], "application/json");
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(v["code"], 3);
        assert!(v["message"].as_str().unwrap().len() > 3);
    }

    // Invalid gzip: 400.
    let a = post(
        addr,
        &[PROTOBUF, ("content-encoding", "gzip")],
        b"not gzip at all".to_vec(),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(RpcStatus::decode(a.body).unwrap().message.contains("gzip"));

    // A content type or encoding it does not speak: 415.
    let valid = request("app", vec![span(trace_id(2), 0, None)]).encode_to_vec();
    for headers in [
        vec![("content-type", "text/plain")],
        vec![],
        vec![PROTOBUF, ("content-encoding", "br")],
    ] {
        let a = post(addr, &headers, valid.clone()).await;
        assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{headers:?}");
    }
    // Another path or method.
    let resp = client()
        .request(
            Request::get(format!("http://{addr}/v1/traces"))
                .body(full_body(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let resp = client()
        .request(
            Request::post(format!("http://{addr}/v1/metrics"))
                .header("content-type", "application/x-protobuf")
                .body(full_body(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // Malformed protobuf over gRPC: INVALID_ARGUMENT (the raw frame, as a broken client sends it).
    let grpc = gw.ingest_grpc_addr.unwrap();
    let mut frame = vec![0u8];
    let junk = [0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01];
    frame.extend_from_slice(&(junk.len() as u32).to_be_bytes());
    frame.extend_from_slice(&junk);
    let resp = h2_client()
        .request(
            Request::post(format!(
                "http://{grpc}/opentelemetry.proto.collector.trace.v1.TraceService/Export"
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(full_body(frame))
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.headers()["grpc-status"], "3");

    // Nothing of it reached the store, and the gateway still takes a valid request.
    let a = post(addr, &[PROTOBUF], valid).await;
    assert_eq!(a.status, StatusCode::OK);
    let m = metrics_of(&gw).await;
    assert_eq!(
        metric_in(
            &m,
            "sidetrace_ingest_requests_total{transport=\"http\",result=\"malformed\"}"
        ),
        5.0
    );
    assert_eq!(
        metric_in(
            &m,
            "sidetrace_ingest_requests_total{transport=\"http\",result=\"unsupported\"}"
        ),
        3.0
    );
    assert_eq!(
        metric_in(
            &m,
            "sidetrace_ingest_requests_total{transport=\"grpc\",result=\"malformed\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_in(
            &m,
            "sidetrace_ingest_spans_total{transport=\"http\",result=\"accepted\"}"
        ),
        1.0
    );
    wait_for(&gw, "sidetrace_store_spans_written_total", 1.0).await;
    assert_eq!(
        metric(&gw, "sidetrace_store_spans_written_total").await,
        1.0
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_requests_gzip_bombs_and_too_many_spans_are_refused_whole() {
    let gw = gateway("[ingest]\nhttp_listen = \"127.0.0.1:0\"\ngrpc_listen = \"127.0.0.1:0\"\nmax_request_bytes = 65536\nmax_spans_per_request = 100\n").await;
    let addr = http_addr(&gw);
    let trace = trace_id(3);

    // Larger than the limit, declared or streamed without a length.
    let mut big = span(trace, 0, None);
    big.name = "x".repeat(100_000);
    let body = request("app", vec![big.clone()]).encode_to_vec();
    let a = post(addr, &[PROTOBUF], body.clone()).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(RpcStatus::decode(a.body).unwrap().code, 8);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let req = Request::post(format!("http://{addr}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(ChannelBody { rx }.boxed_unsync())
        .unwrap();
    let sending = tokio::spawn(async move {
        for chunk in body.chunks(8192) {
            if tx.send(Ok(Bytes::copy_from_slice(chunk))).await.is_err() {
                break;
            }
        }
    });
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    sending.abort();

    // A gzip bomb: 64 KiB of gzip that unpacks to 50 MB stops at the limit.
    let bomb = gzip(&vec![0u8; 50_000_000]);
    assert!(bomb.len() < 65536);
    let a = post(
        addr,
        &[PROTOBUF, ("content-encoding", "gzip")],
        bomb.clone(),
    )
    .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);

    // More spans than allowed: 413, none taken.
    let spans: Vec<Span> = (0..101).map(|n| span(trace, n, None)).collect();
    let a = post(
        addr,
        &[PROTOBUF],
        request("app", spans.clone()).encode_to_vec(),
    )
    .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        RpcStatus::decode(a.body)
            .unwrap()
            .message
            .contains("max_spans_per_request")
    );

    // gRPC: RESOURCE_EXHAUSTED for all three.
    let mut c = grpc_client(&gw).await;
    let e = c.export(request("app", spans)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    let e = c.export(request("app", vec![big])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    let mut plain = TraceServiceClient::connect(format!("http://{}", gw.ingest_grpc_addr.unwrap()))
        .await
        .unwrap();
    let mut big = span(trace, 0, None);
    big.name = "y".repeat(100_000);
    let e = plain.export(request("app", vec![big])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");

    // Then a request within the limits is taken whole.
    let spans: Vec<Span> = (0..100).map(|n| span(trace, n, None)).collect();
    let a = post(addr, &[PROTOBUF], request("app", spans).encode_to_vec()).await;
    assert_eq!(a.status, StatusCode::OK);
    wait_for(&gw, "sidetrace_store_spans_written_total", 100.0).await;
    let m = metrics_of(&gw).await;
    assert_eq!(
        metric_in(
            &m,
            "sidetrace_ingest_requests_total{transport=\"http\",result=\"too_large\"}"
        ),
        4.0
    );
    assert_eq!(
        metric_in(
            &m,
            "sidetrace_ingest_requests_total{transport=\"grpc\",result=\"too_large\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(&gw, "sidetrace_store_spans_written_total").await,
        100.0
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_most_spans_a_request_may_hold_all_reach_the_store_and_the_collector_once() {
    let collector = Collector::start(Transport::Http).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&export_config(&collector, dir.path(), "")).await;
    let trace = trace_id(4);
    let spans: Vec<Span> = (0..20_000)
        .map(|n| span(trace, n, (n > 0).then_some(0)))
        .collect();
    let body = gzip(&request("bulk-app", spans).encode_to_vec());
    let a = post(
        http_addr(&gw),
        &[PROTOBUF, ("content-encoding", "gzip")],
        body,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        ExportTraceServiceResponse::decode(a.body)
            .unwrap()
            .partial_success,
        None
    );
    collector
        .wait_for_spans(20_000, Duration::from_secs(30))
        .await;
    wait_settled(&gw, 20_000).await;
    let expected: BTreeSet<String> = (0..20_000u64)
        .map(|n| hex(&(n + 1).to_be_bytes()))
        .collect();
    let received = collector.spans();
    assert_each_once(&received, &expected);
    assert!(
        received
            .iter()
            .all(|s| s.resource["service.name"] == "bulk-app")
    );
    wait_for(&gw, "sidetrace_store_spans_written_total", 20_000.0).await;
    assert_eq!(metric(&gw, "sidetrace_spans_dropped_total").await, 0.0);
    gw.shutdown().await;
}

/// Requests of the most spans each, sent at once, more than the trace store's queue holds:
/// each is taken whole or refused whole (503, to be retried), and every span taken is stored.
/// A request the queue had no room for was answered 200 and lost its last spans from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_store_cannot_queue_are_refused_whole_not_cut() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&format!(
        "data_dir = {:?}\n",
        dir.path().display().to_string()
    ))
    .await;
    let bodies: Vec<Vec<u8>> = (0..4u8)
        .map(|i| {
            let trace = trace_id(20 + i);
            let spans = (0..20_000).map(|n| span(trace, n, None)).collect();
            request("burst", spans).encode_to_vec()
        })
        .collect();
    let addr = http_addr(&gw);
    let sent: Vec<_> = bodies
        .into_iter()
        .map(|body| tokio::spawn(async move { post(addr, &[PROTOBUF], body).await }))
        .collect();
    let mut taken = 0.0;
    for a in sent {
        let a = a.await.unwrap();
        match a.status {
            StatusCode::OK => taken += 20_000.0,
            StatusCode::SERVICE_UNAVAILABLE => assert_eq!(a.headers["retry-after"], "2"),
            other => panic!("unexpected {other}"),
        }
    }
    assert!(taken > 0.0);
    wait_for(&gw, "sidetrace_store_spans_written_total", taken).await;
    assert_eq!(
        metric(&gw, "sidetrace_store_spans_dropped_total").await,
        0.0
    );
    gw.shutdown().await;
}

/// Exporters that keep their connections open fill the receiver's 32: at the cap, the ones
/// quiet for a second make room, and the next exporter is answered at once. It used to wait
/// for their header timeout, 30 s, past an SDK's 10 s export timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_alive_exporters_at_the_connection_cap_make_room_for_a_new_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&format!(
        "data_dir = {:?}\n",
        dir.path().display().to_string()
    ))
    .await;
    let addr = http_addr(&gw);
    let export = "POST /v1/traces HTTP/1.1\r\nhost: app\r\ncontent-type: application/json\r\n\
                  content-length: 2\r\n\r\n{}";
    let mut kept = Vec::new();
    for _ in 0..32 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(export.as_bytes()).await.unwrap();
        let mut answer = [0u8; 512];
        let n = stream.read(&mut answer).await.unwrap();
        assert!(
            answer[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&answer[..n])
        );
        kept.push(stream);
    }
    let a = tokio::time::timeout(Duration::from_secs(10), post(addr, &[JSON], "{}"))
        .await
        .expect("the 33rd exporter is answered before its export timeout");
    assert_eq!(a.status, StatusCode::OK);
    let closed = metric(
        &gw,
        "sidetrace_connections_closed_total{listener=\"ingest\",reason=\"cap\"}",
    )
    .await;
    assert!(closed >= 1.0, "{closed}");
    drop(kept);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_ids_are_rejected_one_by_one_in_a_partial_success_and_the_rest_kept() {
    let collector = Collector::start(Transport::Grpc).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&export_config(&collector, dir.path(), "")).await;
    let trace = trace_id(5);
    let good = |n| span(trace, n, None);
    let mut zero_trace = good(10);
    zero_trace.trace_id = vec![0; 16];
    let mut short_trace = good(11);
    short_trace.trace_id = vec![1; 15];
    let mut zero_span = good(12);
    zero_span.span_id = vec![0; 8];
    let mut bad_parent = good(13);
    bad_parent.parent_span_id = vec![1, 2, 3];
    let spans = vec![
        good(0),
        zero_trace,
        short_trace,
        good(1),
        zero_span,
        bad_parent,
        good(2),
    ];

    // Protobuf over HTTP.
    let a = post(
        http_addr(&gw),
        &[PROTOBUF],
        request("app", spans.clone()).encode_to_vec(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let partial = ExportTraceServiceResponse::decode(a.body)
        .unwrap()
        .partial_success
        .expect("a partial success");
    assert_eq!(partial.rejected_spans, 4);
    assert!(
        partial.error_message.contains("trace_id"),
        "{}",
        partial.error_message
    );
    assert!(
        partial.error_message.contains("parent_span_id"),
        "{}",
        partial.error_message
    );

    // gRPC: the same answer.
    let trace2 = trace_id(6);
    let spans2: Vec<Span> = spans
        .iter()
        .cloned()
        .map(|mut s| {
            if s.trace_id.len() == 16 && s.trace_id != vec![0; 16] {
                s.trace_id = trace2.to_vec();
            }
            s
        })
        .collect();
    let answer = grpc_client(&gw)
        .await
        .export(request("app", spans2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.partial_success.unwrap().rejected_spans, 4);

    // JSON with ids that are not hex: rejected spans, not a malformed request.
    let trace7 = trace_id(7);
    let start = now_nanos();
    let json = format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[
          {{"traceId":"{t}","spanId":"zzzzzzzzzzzzzzzz","name":"bad","startTimeUnixNano":"{start}","endTimeUnixNano":"{start}"}},
          {{"traceId":"{t}","spanId":"00000000000000aa","name":"good","startTimeUnixNano":"{start}","endTimeUnixNano":"{start}"}},
          {{"traceId":"{t}","spanId":"00000000000000bb","parentSpanId":"xyz","name":"bad parent","startTimeUnixNano":"{start}","endTimeUnixNano":"{start}"}},
          {{"traceId":"{t}","spanId":"00000000000000cc","name":"backwards","startTimeUnixNano":"{start}","endTimeUnixNano":"{before}"}},
          {{"traceId":"{t}","spanId":"00000000000000dd","name":"ancient","startTimeUnixNano":"0","endTimeUnixNano":"1000"}}]}}]}}]}}"#,
        t = hex(&trace7),
        before = start - 1_000,
    );
    let a = post(http_addr(&gw), &[JSON], json).await;
    assert_eq!(a.status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(v["partialSuccess"]["rejectedSpans"], "4");
    let message = v["partialSuccess"]["errorMessage"].as_str().unwrap();
    // A parent id that is not hex made its span a root; a span started before the store's
    // max_age (1970 here) evicted its whole trace at once, the other spans in it too.
    for says in ["span_id", "parent_span_id", "before start", "max_age"] {
        assert!(message.contains(says), "{says}: {message}");
    }

    // Every valid span arrives once; no invalid one does.
    let received = collector.wait_for_spans(7, Duration::from_secs(10)).await;
    wait_settled(&gw, 7).await;
    assert_eq!(collector.spans().len(), 7, "{received:#?}");
    let names: BTreeMap<String, usize> =
        collector
            .spans()
            .into_iter()
            .fold(BTreeMap::new(), |mut m, s| {
                *m.entry(s.name).or_default() += 1;
                m
            });
    let want: BTreeMap<String, usize> = [("step 0", 2), ("step 1", 2), ("step 2", 2), ("good", 1)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(names, want);
    let m = metrics_of(&gw).await;
    assert_eq!(
        metric_in(
            &m,
            "sidetrace_ingest_spans_rejected_total{reason=\"invalid_trace_id\"}"
        ),
        4.0
    );
    assert_eq!(
        metric_in(
            &m,
            "sidetrace_ingest_spans_rejected_total{reason=\"invalid_span_id\"}"
        ),
        3.0
    );
    assert_eq!(
        metric_in(
            &m,
            "sidetrace_ingest_spans_rejected_total{reason=\"invalid_parent_span_id\"}"
        ),
        3.0
    );
    for reason in ["end_before_start", "older_than_store_max_age"] {
        let line = format!("sidetrace_ingest_spans_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(metric_in(&m, &line), 1.0, "{reason}");
    }
    // The trace of the span started in 1970 is still there, with its good span.
    let stored = stored_trace(&gw, &trace7).await;
    assert_eq!(
        stored["spans"].as_array().map(Vec::len),
        Some(1),
        "{stored}"
    );
    assert_eq!(
        metric_in(
            &m,
            "sidetrace_ingest_requests_total{transport=\"http\",result=\"partial\"}"
        ),
        2.0
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowded_export_queue_answers_503_with_retry_after_and_unavailable_with_retry_info() {
    // A collector that holds every export: the batcher waits on it and the small queue fills.
    let collector = Collector::start(Transport::Grpc).await;
    collector.set_mode(Mode::Stall);
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "data_dir = {:?}\n[export]\nendpoint = {:?}\nprotocol = \"grpc\"\ntimeout_ms = 5000\nbatch_delay_ms = 1\nbatch_max_spans = 2\nqueue_spans = 16\nreplay_backoff_max_ms = 400\n",
        dir.path().display().to_string(),
        collector.endpoint()
    );
    let gw = gateway(&text).await;
    let trace = trace_id(8);
    let mut accepted = BTreeSet::new();
    let mut refused = None;
    for round in 0..40u64 {
        let spans: Vec<Span> = (0..4).map(|i| span(trace, round * 4 + i, None)).collect();
        let ids: Vec<String> = spans.iter().map(|s| hex(&s.span_id)).collect();
        let a = post(
            http_addr(&gw),
            &[PROTOBUF],
            request("app", spans).encode_to_vec(),
        )
        .await;
        match a.status {
            StatusCode::OK => accepted.extend(ids),
            StatusCode::SERVICE_UNAVAILABLE => {
                refused = Some(a);
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let refused = refused.expect("the crowded queue refused a request");
    assert_eq!(refused.headers["retry-after"], "2");
    assert_eq!(RpcStatus::decode(refused.body).unwrap().code, 14);
    let e = grpc_client(&gw)
        .await
        .export(request(
            "app",
            (1000..1004).map(|n| span(trace, n, None)).collect(),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert_eq!(
        e.get_details_retry_info().and_then(|r| r.retry_delay),
        Some(Duration::from_secs(2))
    );
    assert!(
        metric(
            &gw,
            "sidetrace_ingest_requests_total{transport=\"http\",result=\"overloaded\"}"
        )
        .await
            >= 1.0
    );

    // The collector comes back: every accepted span arrives, once.
    collector.set_mode(Mode::Accept);
    let collector = {
        // Release the stalled request (it stored nothing) by restarting on the same address.
        let addr = collector.addr;
        collector.stop().await;
        Collector::start_on(Transport::Grpc, addr).await
    };
    collector
        .wait_for_spans(accepted.len(), Duration::from_secs(30))
        .await;
    wait_settled(&gw, accepted.len()).await;
    assert_each_once(&collector.spans(), &accepted);
    assert_eq!(metric(&gw, "sidetrace_spans_dropped_total").await, 0.0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn received_spans_spooled_at_shutdown_are_replayed_after_a_restart_with_their_resource() {
    let collector = Collector::start(Transport::Http).await;
    collector.set_mode(Mode::Status {
        code: 503,
        retry_after_s: None,
    });
    let dir = tempfile::tempdir().unwrap();
    let text = export_config(&collector, dir.path(), "");
    let gw = gateway(&text).await;
    let trace = trace_id(9);
    let spans: Vec<Span> = (0..5).map(|n| span(trace, n, None)).collect();
    let expected: BTreeSet<String> = spans.iter().map(|s| hex(&s.span_id)).collect();
    let a = post(
        http_addr(&gw),
        &[PROTOBUF],
        request("replayed-app", spans).encode_to_vec(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    wait_for(&gw, "sidetrace_spans_spooled_total", 5.0).await;
    gw.shutdown().await;
    assert!(collector.spans().is_empty());

    collector.set_mode(Mode::Accept);
    let gw = gateway(&text).await;
    collector.wait_for_spans(5, Duration::from_secs(20)).await;
    wait_settled(&gw, 5).await;
    let received = collector.spans();
    assert_each_once(&received, &expected);
    for s in &received {
        assert_eq!(s.resource["service.name"], "replayed-app");
        assert_eq!(s.scope_name, "agent.lib");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_receiver_port_in_use_stops_the_start_with_its_name() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = taken.local_addr().unwrap().port();
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[ingest]\nhttp_listen = \"127.0.0.1:{port}\"\ngrpc_listen = \"127.0.0.1:0\"\n"
    );
    let config = sidetrace::Config::from_toml(&text, "test.toml").unwrap();
    let err = match TestGateway::start(config).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("started on a port in use"),
    };
    assert!(err.contains("ingest.http_listen"), "{err}");
    assert!(err.contains(&port.to_string()), "{err}");

    let off =
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[ingest]\nenabled = false\n";
    let gw = TestGateway::start(sidetrace::Config::from_toml(off, "t.toml").unwrap())
        .await
        .unwrap();
    assert!(gw.ingest_http_addr.is_none() && gw.ingest_grpc_addr.is_none());
    gw.shutdown().await;
}

/// The gateway's own span and two apps' spans, spooled together while the collector is down,
/// replay each under its own resource, once: a spool entry holds one origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_several_origins_spooled_together_replay_each_under_its_resource_once() {
    let collector = Collector::start(Transport::Grpc).await;
    collector.set_mode(Mode::Status {
        code: 503,
        retry_after_s: None,
    });
    let mock = Mock::start(|_| {
        Reply::json(
            200,
            &String::from_utf8(fixture("openai/chat_nonstream.json")).unwrap(),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_for(&mock, &export_config(&collector, dir.path(), "")).await;
    let trace = trace_id(10);
    // One request with two resources: their spans are queued back to back, in one batch.
    let mut expected = BTreeSet::new();
    let mut service_of = BTreeMap::new();
    let mut both = ExportTraceServiceRequest::default();
    for (service, first) in [("app-a", 0u64), ("app-b", 10)] {
        let spans: Vec<Span> = (first..first + 3).map(|n| span(trace, n, None)).collect();
        for s in &spans {
            expected.insert(hex(&s.span_id));
            service_of.insert(hex(&s.span_id), service);
        }
        both.resource_spans
            .extend(request(service, spans).resource_spans);
    }
    let a = post(http_addr(&gw), &[PROTOBUF], both.encode_to_vec()).await;
    assert_eq!(a.status, StatusCode::OK);
    let call = common::post(
        &gw,
        "/openai/v1/chat/completions",
        &[],
        r#"{"model":"o4-mini","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(call.status, StatusCode::OK);
    wait_for(&gw, "sidetrace_spans_spooled_total", 7.0).await;

    collector.set_mode(Mode::Accept);
    collector.wait_for_spans(7, Duration::from_secs(20)).await;
    wait_settled(&gw, 7).await;
    let received = collector.spans();
    let own: Vec<_> = received
        .iter()
        .filter(|s| s.resource["service.name"] == "sidetrace")
        .collect();
    assert_eq!(own.len(), 1, "{received:#?}");
    expected.insert(own[0].span_id.clone());
    assert_each_once(&received, &expected);
    for s in &received {
        if let Some(service) = service_of.get(&s.span_id) {
            assert_eq!(s.resource["service.name"], *service);
            assert_eq!(s.scope_name, "agent.lib");
        }
    }
    gw.shutdown().await;
}

/// The app's OpenTelemetry GenAI instrumentation records its LLM call with its usage and sends
/// it through the gateway under that span (the `traceparent` it injects): the trace counts the
/// call once, the gateway's way (its tokens, read from the wire, and its price), whether the
/// app's span comes before or after the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_apps_instrumentation_also_records_is_counted_once() {
    let mock = Mock::start(|_| {
        Reply::json(
            200,
            &String::from_utf8(fixture("openai/chat_nonstream.json")).unwrap(),
        )
    })
    .await;
    let gw = gateway_for(&mock, "").await;
    for (n, app_first) in [(1u8, true), (2, false)] {
        let trace = [0x70 + n; 16];
        let mut llm = span(trace, 1, None);
        llm.name = "chat o4-mini".into();
        llm.kind = 3;
        llm.attributes = vec![
            string("gen_ai.operation.name", "chat"),
            KeyValue {
                key: "gen_ai.usage.input_tokens".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::IntValue(1310)),
                }),
                ..Default::default()
            },
            KeyValue {
                key: "gen_ai.usage.output_tokens".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::IntValue(615)),
                }),
                ..Default::default()
            },
        ];
        let send_app = || async {
            let a = post(
                http_addr(&gw),
                &[PROTOBUF],
                request("support-agent", vec![llm.clone()]).encode_to_vec(),
            )
            .await;
            assert_eq!(a.status, StatusCode::OK);
        };
        if app_first {
            send_app().await;
        }
        let traceparent = format!("00-{}-{}-01", hex(&trace), hex(&2u64.to_be_bytes()));
        let call = common::post(
            &gw,
            "/openai/v1/chat/completions",
            &[("traceparent", &traceparent)],
            r#"{"model":"o4-mini","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .await;
        assert_eq!(call.status, StatusCode::OK);
        if !app_first {
            send_app().await;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let stored = loop {
            let stored = stored_trace(&gw, &trace).await;
            if stored["spans"].as_array().is_some_and(|s| s.len() == 2) {
                break stored;
            }
            assert!(Instant::now() < deadline, "{stored:#}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(stored["trace"]["input_tokens"], 1310, "{stored:#}");
        assert_eq!(stored["trace"]["output_tokens"], 615, "{stored:#}");
        let spans = stored["spans"].as_array().unwrap();
        assert_eq!(spans[0]["scope"], "agent.lib");
        assert_eq!(spans[0]["self"]["input_tokens"], 0, "{stored:#}");
        assert_eq!(spans[0]["rollup"]["input_tokens"], 1310, "{stored:#}");
        assert_eq!(spans[1]["scope"], "sidetrace");
        assert_eq!(spans[1]["self"]["input_tokens"], 1310);
        assert_ne!(spans[1]["self"]["cost_usd"], serde_json::Value::Null);
        // The list says the same.
        let list = admin_get(&gw, "/api/traces?limit=50").await.json();
        let row = list["traces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["trace_id"] == hex(&trace))
            .cloned()
            .unwrap();
        assert_eq!(row["input_tokens"], 1310, "{row:#}");
    }
    gw.shutdown().await;
}
