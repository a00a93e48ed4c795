//! The admin listener: health, readiness and Prometheus metrics, away from the proxy port.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use http::{Method, Request, Response, StatusCode, header};

use crate::{
    cost::Cost,
    metrics::Metrics,
    proxy::body::{ProxyBody, full},
    store::costs::{CostStore, Filter, GroupBy, HOUR_SECS, Totals, now_secs},
    trace::metadata::{canonical_feature, percent_decode},
};

/// What the admin endpoints read.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    /// True while the proxy accepts calls; false once shutdown began.
    pub ready: AtomicBool,
    pub costs: Arc<CostStore>,
}

pub async fn handle<B>(
    state: Arc<AdminState>,
    req: Request<B>,
) -> Result<Response<ProxyBody>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".into(),
        ));
    }
    let response = match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            if state.ready.load(Ordering::Acquire) {
                text(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "shutting down\n".into(),
                )
            }
        }
        "/metrics" => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.encode(),
        ),
        "/api/costs" => costs(&state, req.uri().query().unwrap_or("")),
        "/" => text(
            StatusCode::OK,
            "text/plain",
            "sidetrace admin: /healthz /readyz /metrics /api/costs?group_by=feature&window=24h\n"
                .into(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /healthz /readyz /metrics\n".into(),
        ),
    };
    Ok(response)
}

/// `GET /api/costs?group_by=feature|user|model|provider|prompt_version&window=24h` (or
/// `from`/`to` in unix seconds; `feature=`/`user=` filter): totals of cost, tokens and calls per
/// group over the window, at hour granularity, from the local cost store.
fn costs(state: &AdminState, query: &str) -> Response<ProxyBody> {
    let params: Vec<(&str, &str)> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let get = |k: &str| params.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    let group_by = match get("group_by").map_or(Some(GroupBy::Feature), GroupBy::parse) {
        Some(g) => g,
        None => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "group_by must be one of provider, model, feature, user, prompt_version",
            );
        }
    };
    let now = now_secs();
    let (from, to) = match (get("from"), get("to"), get("window")) {
        (Some(f), t, _) => match (f.parse::<u64>(), t.map_or(Ok(now + 1), str::parse::<u64>)) {
            (Ok(f), Ok(t)) if f < t => (f, t),
            _ => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "from and to are unix seconds, from < to",
                );
            }
        },
        (None, _, w) => match parse_window(w.unwrap_or("24h")) {
            Some(secs) => (now.saturating_sub(secs), now + 1),
            None => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "window is a number with h or d, e.g. 24h or 7d",
                );
            }
        },
    };
    let filter = Filter {
        // Features are recorded in canonical form: `Support_Agent` finds `support_agent`.
        feature: get("feature").map(|v| canonical_feature(&percent_decode(&v.replace('+', " ")))),
        user: get("user").map(|v| percent_decode(&v.replace('+', " "))),
    };
    let rows = state.costs.query(from, to, group_by, &filter);
    let mut total = Totals::default();
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|(key, t)| {
            total.add(t);
            row(key, t)
        })
        .collect();
    let body = serde_json::json!({
        "from": from,
        "to": to,
        "granularity_secs": HOUR_SECS,
        "group_by": get("group_by").unwrap_or("feature"),
        "rows": rows,
        "total": row("", &total),
    });
    text(StatusCode::OK, "application/json", body.to_string())
}

fn row(key: &str, t: &Totals) -> serde_json::Value {
    serde_json::json!({
        "key": key,
        "calls": t.calls,
        "priced_calls": t.priced_calls,
        "unpriced_calls": t.unpriced_calls,
        "cost_usd": Cost::from_pico_usd(t.cost_pico_usd).to_string(),
        "input_tokens": t.input_tokens,
        "output_tokens": t.output_tokens,
        "cached_input_tokens": t.cached_input_tokens,
        "cache_creation_input_tokens": t.cache_creation_input_tokens,
        "reasoning_tokens": t.reasoning_tokens,
    })
}

fn parse_window(w: &str) -> Option<u64> {
    let (n, unit) = w.split_at(w.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    match unit {
        "h" => Some(n * 3600),
        "d" => Some(n * 86_400),
        _ => None,
    }
}

fn json_error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    text(
        status,
        "application/json",
        serde_json::json!({"error": {"type": "invalid_request_error", "message": message}})
            .to_string(),
    )
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}
