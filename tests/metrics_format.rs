//! `/metrics` as scrapers read it: the classic text format 0.0.4 unless OpenMetrics is asked
//! for, checked by `promtool check metrics` (Debian's `prometheus` package, installed by
//! tests/setup-tools.sh); every drop and error counter present at 0 from the start; a cap on the
//! label sets of the families clients label (model x feature).

mod common;

use std::{io::Write as _, process::Command};

use common::*;
use http::{Request, header};
use http_body_util::BodyExt;

/// GETs `/metrics` with `accept` (none when `None`): content type and body.
async fn scrape(gw: &sidetrace::server::Gateway, accept: Option<&str>) -> (String, String) {
    let mut req = Request::get(format!("http://{}/metrics", gw.admin_addr));
    if let Some(accept) = accept {
        req = req.header(header::ACCEPT, accept);
    }
    let response = client()
        .request(req.body(full_body("")).unwrap())
        .await
        .unwrap();
    let content_type = response.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_string();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (content_type, String::from_utf8(body.to_vec()).unwrap())
}

/// `promtool check metrics` on `text`: `None` when promtool is not installed (outside CI only),
/// else its exit status and output.
fn promtool_check(text: &str) -> Option<(bool, String)> {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool is missing in CI: tests/setup-tools.sh installs it"
            );
            eprintln!(
                "SKIPPED: promtool is not installed (bash tests/setup-tools.sh installs Debian's prometheus package)"
            );
            return None;
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), report))
}

fn chat_reply(seen: &Seen) -> Reply {
    let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap_or_default();
    let model = body["model"].as_str().unwrap_or("m").to_string();
    Reply::json(
        200,
        &serde_json::json!({
            "id": "c1", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
        })
        .to_string(),
    )
}

#[tokio::test]
async fn the_classic_text_format_passes_promtool_and_openmetrics_is_served_when_asked_for() {
    let mock = Mock::start(chat_reply).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_for(
        &mock,
        &format!(
            "data_dir = {:?}\n[ingest]\nhttp_listen = \"127.0.0.1:0\"\ngrpc_listen = \"127.0.0.1:0\"\n",
            dir.path().display().to_string()
        ),
    )
    .await;
    // Some traffic, so histograms, labelled counters and float counters have samples.
    for model in ["gpt-4o-mini", "my-private-model"] {
        post(
            &gw,
            "/openai/v1/chat/completions",
            &[("x-sidetrace-feature", "support")],
            &format!(r#"{{"model":"{model}","messages":[]}}"#),
        )
        .await;
    }
    post(&gw, "/nowhere/v1/chat", &[], "{}").await;
    wait_metric(&gw, "sidetrace_calls_total", 2.0).await;

    let (content_type, classic) = scrape(&gw, None).await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!classic.contains("# EOF") && !classic.contains("# UNIT"));
    assert!(
        classic.contains("# TYPE sidetrace_requests_total counter\n"),
        "a counter's TYPE names its samples: {classic}"
    );
    assert!(classic.contains("# HELP sidetrace_requests_total "));
    assert!(classic.contains("sidetrace_cost_usd_total{"), "{classic}");
    if let Some((ok, report)) = promtool_check(&classic) {
        assert!(ok, "promtool check metrics failed:\n{report}\n{classic}");
    }
    // What Prometheus sends: OpenMetrics first.
    let prometheus_accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (content_type, openmetrics) = scrape(&gw, Some(prometheus_accept)).await;
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(openmetrics.ends_with("# EOF\n"));
    assert!(openmetrics.contains("# TYPE sidetrace_requests counter\n"));
    // The classic parser reads OpenMetrics' counter families as samples without help: the
    // reason the classic format is the default (and proof that promtool checks what it reads).
    if let Some((ok, report)) = promtool_check(&openmetrics) {
        assert!(!ok && report.contains("no help text"), "{report}");
    }
    for (accept, classic_wanted) in [
        ("text/plain", true),
        ("*/*", true),
        ("application/json", true),
        ("text/plain;q=1, application/openmetrics-text;q=0.5", true),
        ("application/openmetrics-text;q=0", true),
        ("application/openmetrics-text", false),
        (
            "text/plain;q=0.2, application/openmetrics-text;q=0.9",
            false,
        ),
    ] {
        let (content_type, _) = scrape(&gw, Some(accept)).await;
        assert_eq!(
            content_type.starts_with("text/plain"),
            classic_wanted,
            "Accept: {accept} gave {content_type}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn every_drop_and_error_counter_is_present_at_zero_before_anything_happened() {
    let gw = gateway("[store]\nenabled = false\n[ingest]\nenabled = false\n").await;
    let (_, text) = scrape(&gw, None).await;
    for series in [
        r#"sidetrace_spans_dropped_total{reason="queue_full"} 0"#,
        r#"sidetrace_spans_dropped_total{reason="spool_full"} 0"#,
        r#"sidetrace_spans_dropped_total{reason="expired"} 0"#,
        r#"sidetrace_spans_dropped_total{reason="max_attempts"} 0"#,
        r#"sidetrace_spans_dropped_total{reason="corrupt"} 0"#,
        r#"sidetrace_spans_dropped_total{reason="spool_error"} 0"#,
        r#"sidetrace_spans_dropped_total{reason="encode_error"} 0"#,
        r#"sidetrace_spans_dropped_total{reason="shutdown"} 0"#,
        r#"sidetrace_export_attempts_total{outcome="error"} 0"#,
        r#"sidetrace_export_attempts_total{outcome="timeout"} 0"#,
        r#"sidetrace_requests_rejected_total{reason="unknown_route"} 0"#,
        r#"sidetrace_requests_rejected_total{reason="overloaded"} 0"#,
        r#"sidetrace_requests_rejected_total{reason="buffer_full"} 0"#,
        r#"sidetrace_requests_rejected_total{reason="invalid_path"} 0"#,
        r#"sidetrace_response_events_skipped_total{reason="malformed"} 0"#,
        r#"sidetrace_response_events_skipped_total{reason="oversize"} 0"#,
        r#"sidetrace_response_events_skipped_total{reason="truncated"} 0"#,
        r#"sidetrace_trace_context_invalid_total{header="traceparent"} 0"#,
        r#"sidetrace_store_spans_dropped_total{reason="queue_full"} 0"#,
        r#"sidetrace_store_damaged_total{store="spool"} 0"#,
        r#"sidetrace_store_damaged_total{store="traces"} 0"#,
        r#"sidetrace_accept_errors_total{listener="proxy"} 0"#,
        r#"sidetrace_ingest_requests_total{transport="http",result="malformed"} 0"#,
        r#"sidetrace_ingest_spans_rejected_total{reason="invalid_trace_id"} 0"#,
        r#"sidetrace_tool_spans_dropped_total{reason="app_reported"} 0"#,
        r#"sidetrace_calls_uninspected_total{reason="content_encoding"} 0"#,
        r#"sidetrace_metric_series_overflow_total{family="sidetrace_tokens"} 0"#,
        "sidetrace_cost_calls_lost_total 0",
        "sidetrace_requests_unparsed_total 0",
        "sidetrace_metadata_truncated_total 0",
    ] {
        assert!(
            text.lines().any(|l| l == series),
            "{series} missing:\n{text}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn label_sets_past_the_cap_are_counted_under_other_and_the_page_stays_bounded() {
    let mock = Mock::start(chat_reply).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_for(
        &mock,
        &format!(
            "data_dir = {:?}\n[cost]\nmax_metric_series = 6\n[store]\nenabled = false\n[ingest]\nenabled = false\n",
            dir.path().display().to_string()
        ),
    )
    .await;
    // 4 features x 4 models = 16 label sets, each with input and output token series; each
    // called twice (the second call of a kind takes the series kept from the first).
    let mut calls = 0.0;
    for _round in 0..2 {
        for feature in ["a", "b", "c", "d"] {
            for model in ["gpt-4o-mini", "gpt-4o", "o4-mini", "gpt-4.1"] {
                let a = post(
                    &gw,
                    "/openai/v1/chat/completions",
                    &[("x-sidetrace-feature", feature)],
                    &format!(r#"{{"model":"{model}","messages":[]}}"#),
                )
                .await;
                assert_eq!(a.status, 200);
                calls += 1.0;
            }
        }
    }
    wait_metric(&gw, "sidetrace_calls_total", calls).await;
    let (_, text) = scrape(&gw, None).await;
    let series = |family: &str| {
        text.lines()
            .filter(|l| l.starts_with(&format!("{family}{{")))
            .count()
    };
    // The cap holds six label sets; the seventh and later fold into model="other",
    // feature="other" (one per provider and kind).
    assert_eq!(series("sidetrace_tokens_total"), 6 + 2, "{text}");
    assert_eq!(series("sidetrace_cost_usd_total"), 6 + 1, "{text}");
    assert!(text.contains(
        r#"sidetrace_tokens_total{provider="openai",model="other",feature="other",kind="input"} "#
    ));
    // Nothing is lost: the tokens of every call are counted, capped or not.
    assert_eq!(
        metric_in(&text, "sidetrace_tokens_total{"),
        calls * (7.0 + 3.0)
    );
    // 64 token samples, 12 of them in the 6 admitted series (3 label sets x 2 kinds, each
    // twice); 32 cost samples, 12 in the 6 admitted: every folded sample is counted.
    assert_eq!(
        metric_in(
            &text,
            r#"sidetrace_metric_series_overflow_total{family="sidetrace_tokens"}"#
        ),
        64.0 - 12.0
    );
    assert_eq!(
        metric_in(
            &text,
            r#"sidetrace_metric_series_overflow_total{family="sidetrace_cost_usd"}"#
        ),
        32.0 - 12.0
    );
    gw.shutdown().await;
}
