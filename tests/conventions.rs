//! The names the gateway's spans leave with, at the in-process OTLP collector: GenAI v1.41 by
//! default, the latest GenAI text with `OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental`;
//! spans received from apps leave as they came.

mod common;

use std::time::Duration;

use common::{
    otlp::{AttrValue, Collector, ReceivedSpan, Transport},
    *,
};
use http::StatusCode;
use sidetrace::config::Config;

fn provider(seen: &Seen) -> Reply {
    match seen.uri.split('?').next().unwrap_or("") {
        "/v1/messages" => Reply::sse(
            &[std::str::from_utf8(&fixture("anthropic/stream_cache_tokens.sse")).unwrap()],
            Duration::ZERO,
        ),
        _ => Reply::json(
            200,
            std::str::from_utf8(&fixture("openai/chat_nonstream.json")).unwrap(),
        ),
    }
}

/// A gateway exporting to `collector`, configured by `extra` TOML and the environment `vars`.
async fn gateway_with(
    mock: &Mock,
    collector: &Collector,
    extra: &str,
    vars: &[(&str, &str)],
) -> (TestGateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[providers.anthropic]\nbase_url = {:?}\n[providers.openai]\nbase_url = {:?}\n[export]\nendpoint = {:?}\nprotocol = \"grpc\"\nbatch_delay_ms = 20\n{extra}\n",
        dir.path().display().to_string(),
        mock.url(),
        mock.url(),
        collector.endpoint(),
    );
    let mut config = Config::from_toml(&text, "test.toml").unwrap();
    config
        .apply_env(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .unwrap();
    (TestGateway::start(config).await.unwrap(), dir)
}

/// One streamed Anthropic call with cache reads and writes and a named prompt; its span as the
/// collector received it.
async fn cached_call(gw: &TestGateway, collector: &Collector) -> ReceivedSpan {
    let a = post(
        gw,
        "/anthropic/v1/messages",
        &[
            ("x-sidetrace-prompt-template", "support.v3"),
            ("x-sidetrace-prompt-version", "7"),
            ("x-sidetrace-feature", "support"),
        ],
        r#"{"model":"claude-sonnet-4-5","stream":true,"max_tokens":9,"top_k":40,"messages":[]}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    collector
        .wait_for_spans(1, Duration::from_secs(10))
        .await
        .remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_uses_the_v1_41_genai_names_unless_the_latest_are_opted_in() {
    let mock = Mock::start(provider).await;

    let collector = Collector::start(Transport::Grpc).await;
    let (gw, _dir) = gateway_with(&mock, &collector, "", &[]).await;
    let s = cached_call(&gw, &collector).await;
    assert_eq!(s.schema_url, "https://opentelemetry.io/schemas/1.41.0");
    assert_eq!(
        s.attributes.get("gen_ai.usage.cache_creation.input_tokens"),
        Some(&AttrValue::Int(1895))
    );
    assert!(
        !s.attributes
            .contains_key("gen_ai.usage.cache_write.input_tokens")
    );
    assert!(!s.attributes.contains_key("gen_ai.prompt.name"));
    assert_eq!(
        s.attributes.get("gen_ai.request.top_k"),
        Some(&AttrValue::Double(40.0))
    );
    gw.shutdown().await;
    collector.stop().await;

    let collector = Collector::start(Transport::Grpc).await;
    let (gw, _dir) = gateway_with(
        &mock,
        &collector,
        "",
        // A comma-separated list, as the spec writes it.
        &[(
            "OTEL_SEMCONV_STABILITY_OPT_IN",
            "http, gen_ai_latest_experimental",
        )],
    )
    .await;
    let s = cached_call(&gw, &collector).await;
    assert_eq!(
        s.schema_url,
        "https://opentelemetry.io/schemas/gen-ai-dev/1.42.0-dev"
    );
    assert_eq!(
        s.attributes.get("gen_ai.usage.cache_write.input_tokens"),
        Some(&AttrValue::Int(1895))
    );
    assert!(
        !s.attributes
            .contains_key("gen_ai.usage.cache_creation.input_tokens")
    );
    assert_eq!(
        s.attributes.get("gen_ai.usage.cache_read.input_tokens"),
        Some(&AttrValue::Int(10240))
    );
    assert_eq!(
        s.attributes.get("gen_ai.usage.input_tokens"),
        Some(&AttrValue::Int(12147))
    );
    assert_eq!(
        s.attributes.get("gen_ai.prompt.name"),
        Some(&AttrValue::Str("support.v3".into()))
    );
    assert_eq!(
        s.attributes.get("gen_ai.prompt.version"),
        Some(&AttrValue::Str("7".into()))
    );
    assert_eq!(
        s.attributes.get("gen_ai.request.top_k"),
        Some(&AttrValue::Int(40))
    );
    // The local store keeps the names it records with (the UI and the API read them).
    let stored = gw.recent_spans().remove(0);
    assert!(
        stored
            .attr("gen_ai.usage.cache_creation.input_tokens")
            .is_some()
    );

    // A span an app sent the receiver leaves exactly as the app made it.
    let ingest = gw.ingest_http_addr.expect("the receiver is on");
    // Started now: a span from before the store's max_age is rejected.
    let now = now_nanos();
    let body = format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"app"}}}}]}},"scopeSpans":[{{"scope":{{"name":"app.lib"}},"spans":[{{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"chat app-model","kind":3,"startTimeUnixNano":"{now}","endTimeUnixNano":"{end}","attributes":[{{"key":"gen_ai.usage.cache_creation.input_tokens","value":{{"intValue":"3"}}}}]}}]}}]}}]}}"#,
        end = now + 1,
    );
    let req = http::Request::post(format!("http://{ingest}/v1/traces"))
        .header("content-type", "application/json")
        .body(full_body(body))
        .unwrap();
    assert_eq!(client().request(req).await.unwrap().status(), 200);
    let spans = collector.wait_for_spans(2, Duration::from_secs(10)).await;
    let app = spans.iter().find(|s| s.name == "chat app-model").unwrap();
    assert_eq!(
        app.attributes
            .get("gen_ai.usage.cache_creation.input_tokens"),
        Some(&AttrValue::Int(3))
    );
    assert!(
        !app.attributes
            .contains_key("gen_ai.usage.cache_write.input_tokens")
    );
    gw.shutdown().await;
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openinference_attributes_carry_the_exact_cost_feature_and_prompt_when_opted_in() {
    let mock = Mock::start(provider).await;
    let collector = Collector::start(Transport::Grpc).await;
    let (gw, _dir) = gateway_with(
        &mock,
        &collector,
        "conventions = [\"gen_ai\", \"openinference\"]",
        &[],
    )
    .await;
    let s = cached_call(&gw, &collector).await;
    let str_of = |key: &str| match s.attributes.get(key) {
        Some(AttrValue::Str(v)) => v.clone(),
        other => panic!("{key}: {other:?}"),
    };
    let f64_of = |key: &str| match s.attributes.get(key) {
        Some(AttrValue::Double(v)) => *v,
        other => panic!("{key}: {other:?}"),
    };
    let int_of = |key: &str| match s.attributes.get(key) {
        Some(AttrValue::Int(v)) => *v,
        other => panic!("{key}: {other:?}"),
    };
    assert_eq!(str_of("openinference.span.kind"), "LLM");
    assert_eq!(str_of("llm.provider"), "anthropic");
    assert_eq!(str_of("llm.system"), "anthropic");
    assert_eq!(str_of("llm.model_name"), "claude-sonnet-4-5-20250929");
    // 12 plain + 10240 read + 1895 written, 90 out (the fixture).
    assert_eq!(int_of("llm.token_count.prompt"), 12147);
    assert_eq!(int_of("llm.token_count.completion"), 90);
    assert_eq!(int_of("llm.token_count.total"), 12237);
    assert_eq!(int_of("llm.token_count.prompt_details.cache_read"), 10240);
    assert_eq!(int_of("llm.token_count.prompt_details.cache_write"), 1895);
    // The gateway's exact price (cost_gateway.rs: 0.01156425 USD), split into input (12 x 3 +
    // 10240 x 0.30 + 1895 x 3.75 µUSD) and output (90 x 15 µUSD).
    assert_eq!(f64_of("llm.cost.total"), 0.01156425);
    assert_eq!(f64_of("llm.cost.total"), f64_of("cost.usd"));
    assert!((f64_of("llm.cost.prompt") - 0.01021425).abs() < 1e-12);
    assert!((f64_of("llm.cost.completion") - 0.00135).abs() < 1e-12);
    assert_eq!(str_of("llm.prompt_template.version"), "7");
    assert_eq!(str_of("prompt.id"), "support.v3");
    let metadata: serde_json::Value = serde_json::from_str(&str_of("metadata")).unwrap();
    assert_eq!(metadata["feature"], "support");
    assert_eq!(metadata["prompt_template"], "support.v3");
    assert_eq!(metadata["prompt_version"], "7");
    assert_eq!(metadata["price_model"], "claude-sonnet-4-5");
    let params: serde_json::Value =
        serde_json::from_str(&str_of("llm.invocation_parameters")).unwrap();
    assert_eq!(params["max_tokens"], 9);
    // The GenAI attributes are all still there.
    assert_eq!(int_of("gen_ai.usage.cache_creation.input_tokens"), 1895);
    assert_eq!(str_of("gen_ai.operation.name"), "chat");
    gw.shutdown().await;
    collector.stop().await;
}
