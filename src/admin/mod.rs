//! The admin listener: health, readiness, Prometheus metrics, the JSON API (`docs/api.md`) and
//! the web UI, away from the proxy port.

pub mod auth;
pub mod scores;
mod traces;
pub mod ui;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use http::{Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};

use crate::{
    cost::Cost,
    metrics::Metrics,
    proxy::body::{ProxyBody, full},
    store::{
        costs::{CostStore, Filter, GroupBy, HOUR_SECS, Totals, now_secs},
        traces::TraceStore,
    },
    trace::metadata::{canonical_feature, percent_decode},
};

/// What the admin endpoints read.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    /// True while the proxy accepts calls; false once shutdown began.
    pub ready: AtomicBool,
    pub costs: Arc<CostStore>,
    /// The trace store, or why there is none.
    pub traces: Result<Arc<TraceStore>, String>,
    /// Where posted scores go.
    pub scores: scores::Scores,
    /// The admin token and the routes open without it.
    pub auth: auth::AdminAuth,
}

/// A query string's parameters, percent-decoded (`+` is a space).
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(query: &str) -> Query {
        Query(
            query
                .split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    let decode = |s: &str| percent_decode(&s.replace('+', " "));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    /// A 400 naming the first parameter that is not one of `known`, the ones `endpoint` takes:
    /// a misspelt filter (`feture=`) would otherwise leave the answer unfiltered, and look
    /// right. Also a 400 when the window is given twice, as `window` and as `from`/`to`.
    pub fn only(&self, endpoint: &str, known: &[&str]) -> Result<(), ApiError> {
        if let Some((k, _)) = self.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            return Err(ApiError::bad(format!(
                "{endpoint} has no parameter {k:?}; it takes {}",
                known.join(", ")
            )));
        }
        if self.get("window").is_some() && (self.get("from").is_some() || self.get("to").is_some())
        {
            return Err(ApiError::bad("give window, or from and to, not both"));
        }
        Ok(())
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }
}

/// An API answer other than 200: a status and a JSON error saying what was wrong.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "not_found",
            message: message.into(),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "store_unavailable",
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "internal_error",
            message: message.into(),
        }
    }

    fn response(&self) -> Response<ProxyBody> {
        text(
            self.status,
            "application/json",
            json!({"error": {"type": self.kind, "message": self.message}}).to_string(),
        )
    }
}

fn json_answer(result: Result<Value, ApiError>) -> Response<ProxyBody> {
    match result {
        Ok(v) => text(StatusCode::OK, "application/json", v.to_string()),
        Err(e) => e.response(),
    }
}

pub async fn handle<B>(
    state: Arc<AdminState>,
    req: Request<B>,
) -> Result<Response<ProxyBody>, Infallible>
where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match state.auth.check(req.uri().path(), req.headers()) {
        auth::Access::Granted => {}
        refused => {
            state.metrics.admin_refused(match refused {
                auth::Access::Missing => "missing",
                _ => "wrong",
            });
            return Ok(unauthorized());
        }
    }
    if req.uri().path() == "/api/scores" {
        return Ok(post_score(&state, req).await);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(method_not_allowed("GET, HEAD", "use GET"));
    }
    let path = req.uri().path();
    let query = Query::parse(req.uri().query().unwrap_or(""));
    if let Some(answer) =
        traces::route(state.traces.as_ref().map_err(String::as_str), path, &query).await
    {
        return Ok(json_answer(answer));
    }
    if path == "/ui" || path.starts_with("/ui/") {
        return Ok(match ui::asset(path) {
            Some((content_type, bytes)) => page(content_type, bytes),
            None if path.starts_with(ui::ASSETS_PREFIX) => text(
                StatusCode::NOT_FOUND,
                "text/plain",
                "no such asset\n".into(),
            ),
            None => page(ui::INDEX_CONTENT_TYPE, ui::INDEX_HTML),
        });
    }
    let response = match path {
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
        "/metrics" => {
            // Classic text unless the scraper asks for OpenMetrics (Prometheus does, in its
            // Accept header); promtool and older scrapers read only the classic format.
            let accept = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let (content_type, body) = state.metrics.encode_for(accept);
            let mut r = text(StatusCode::OK, content_type, body);
            r.headers_mut()
                .insert(header::VARY, http::HeaderValue::from_static("accept"));
            r
        }
        "/api/costs" => json_answer(costs(&state, &query)),
        "/" => {
            let mut r = text(
                StatusCode::FOUND,
                "text/plain",
                "the trace explorer is at /ui; also /api/traces /api/sessions /api/costs /api/scores (POST) /healthz /readyz /metrics (docs/api.md)\n".into(),
            );
            r.headers_mut()
                .insert(header::LOCATION, http::HeaderValue::from_static("/ui"));
            r
        }
        _ if path.starts_with("/api/") => ApiError::not_found(
            "no such endpoint: /api/traces /api/sessions /api/costs /api/scores (docs/api.md)",
        )
        .response(),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /ui /api/traces /healthz /readyz /metrics\n".into(),
        ),
    };
    Ok(response)
}

/// 405 as a JSON error, with the methods the route takes in `Allow`.
fn method_not_allowed(allow: &'static str, message: &str) -> Response<ProxyBody> {
    let mut r = ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        kind: "method_not_allowed",
        message: message.into(),
    }
    .response();
    r.headers_mut()
        .insert(header::ALLOW, http::HeaderValue::from_static(allow));
    r
}

/// 401 with a challenge; the UI shows its login form on it.
fn unauthorized() -> Response<ProxyBody> {
    let mut r = ApiError {
        status: StatusCode::UNAUTHORIZED,
        kind: "unauthorized",
        message: "this admin route needs Authorization: Bearer <admin token> ([admin] token)"
            .into(),
    }
    .response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer realm=\"sidetrace admin\""),
    );
    r
}

/// `POST /api/scores` (`scores.rs`): the body read up to its limit, then the score.
async fn post_score<B>(state: &AdminState, req: Request<B>) -> Response<ProxyBody>
where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::{BodyExt, Limited};
    if req.method() != Method::POST {
        return method_not_allowed("POST", "use POST with a JSON body (docs/api.md)");
    }
    let body = match Limited::new(req.into_body(), scores::MAX_BODY)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                kind: "request_too_large",
                message: format!("a score body is at most {} bytes", scores::MAX_BODY),
            }
            .response();
        }
        Err(e) => return ApiError::bad(format!("the body could not be read: {e}")).response(),
    };
    let store = state.traces.as_ref().map_err(String::as_str);
    match scores::post(&state.scores, store, &body).await {
        Ok(v) => text(StatusCode::CREATED, "application/json", v.to_string()),
        Err(e) => e.response(),
    }
}

/// Groups answered at most in `rows` (the costliest; `rows_left_out` says how many more) and
/// drawn at most in `series`.
const COST_ROWS: usize = 100;
const COST_SERIES: usize = 10;

/// `GET /api/costs?group_by=feature|user|model|provider|prompt_version|key&window=24h` (or
/// `from`/`to` in unix seconds; `feature=`/`user=`/`key=` filter; `bucket=1h|1d` adds a series per
/// group): totals of cost, tokens and calls per group over the window, at hour granularity,
/// from the local cost store.
fn costs(state: &AdminState, q: &Query) -> Result<Value, ApiError> {
    q.only(
        "/api/costs",
        &[
            "group_by", "window", "from", "to", "bucket", "feature", "user", "key",
        ],
    )?;
    let group_name = q.get("group_by").unwrap_or_else(|| "feature".into());
    let group_by = GroupBy::parse(&group_name).ok_or_else(|| {
        ApiError::bad("group_by must be one of provider, model, feature, user, prompt_version, key")
    })?;
    let now = now_secs();
    let (from, to) = match (q.get("from"), q.get("to"), q.get("window")) {
        (Some(f), t, _) => match (
            f.parse::<u64>(),
            t.map_or(Ok(now + 1), |t| t.parse::<u64>()),
        ) {
            // Unix milliseconds (what /api/traces takes) read as seconds are thousands of
            // years ahead: said, rather than answered with nothing.
            (Ok(f), Ok(_)) if f > now + 86_400 => {
                return Err(ApiError::bad(
                    "from is in the future: from and to are unix seconds (not milliseconds)",
                ));
            }
            (Ok(f), Ok(t)) if f < t => (f, t),
            _ => return Err(ApiError::bad("from and to are unix seconds, from < to")),
        },
        (None, Some(_), _) => return Err(ApiError::bad("to needs from (unix seconds)")),
        (None, None, w) => {
            match crate::config::parse_duration_secs(w.as_deref().unwrap_or("24h")) {
                Some(secs) => (now.saturating_sub(secs), now + 1),
                None => {
                    return Err(ApiError::bad(
                        "window is a number with m, h or d, e.g. 24h or 7d",
                    ));
                }
            }
        }
    };
    let bucket = match q.get("bucket").as_deref() {
        None => None,
        Some("1h") => Some(HOUR_SECS),
        Some("1d") => Some(24 * HOUR_SECS),
        Some(_) => return Err(ApiError::bad("bucket is 1h or 1d")),
    };
    let filter = Filter {
        // Features are recorded in canonical form: `Support_Agent` finds `support_agent`.
        feature: q.get("feature").map(|v| canonical_feature(&v)),
        user: q.get("user"),
        key: q.get("key"),
    };
    let rows = state.costs.query(from, to, group_by, &filter);
    let mut total = Totals::default();
    for (_, t) in &rows {
        total.add(t);
    }
    let mut body = json!({
        "from": from,
        "to": to,
        "granularity_secs": HOUR_SECS,
        "group_by": group_name,
        "rows": rows.iter().take(COST_ROWS).map(|(k, t)| row(k, t)).collect::<Vec<_>>(),
        "rows_left_out": rows.len().saturating_sub(COST_ROWS),
        "total": row("", &total),
    });
    if let Some(bucket) = bucket {
        let groups: Vec<String> = rows
            .iter()
            .take(COST_SERIES)
            .map(|(k, _)| k.clone())
            .collect();
        let (series, rest) = state
            .costs
            .series(from, to, group_by, &filter, bucket, &groups);
        let points = |buckets: &BTreeMap<u64, Totals>| -> Vec<Value> {
            buckets
                .iter()
                .map(|(t, totals)| {
                    json!({
                        "t": t,
                        "calls": totals.calls,
                        "cost_usd": cost_of(totals),
                        "input_tokens": totals.input_tokens,
                        "output_tokens": totals.output_tokens,
                    })
                })
                .collect()
        };
        let empty = BTreeMap::new();
        body["series"] = groups
            .iter()
            .map(|g| json!({"key": g, "points": points(series.get(g).unwrap_or(&empty))}))
            .collect();
        // The groups past the charted ones, summed: a chart's "other" is the whole rest.
        body["series_other"] = json!({"points": points(&rest)});
    }
    Ok(body)
}

/// A group's cost as the API writes costs: `null` when none of its calls was priced (a `"0"`
/// would say they cost nothing).
fn cost_of(t: &Totals) -> Value {
    if t.priced_calls == 0 {
        Value::Null
    } else {
        Cost::from_pico_usd(t.cost_pico_usd).to_string().into()
    }
}

fn row(key: &str, t: &Totals) -> Value {
    json!({
        "key": key,
        "calls": t.calls,
        "priced_calls": t.priced_calls,
        "unpriced_calls": t.unpriced_calls,
        "cost_usd": cost_of(t),
        "input_tokens": t.input_tokens,
        "output_tokens": t.output_tokens,
        "cached_input_tokens": t.cached_input_tokens,
        "cache_creation_input_tokens": t.cache_creation_input_tokens,
        "reasoning_tokens": t.reasoning_tokens,
    })
}

/// A file of the web UI (embedded, never changes while the binary runs).
fn page(content_type: &'static str, bytes: &'static [u8]) -> Response<ProxyBody> {
    let mut r = Response::new(full(bytes::Bytes::from_static(bytes)));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    h.insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    h.insert(
        "x-content-type-options",
        http::HeaderValue::from_static("nosniff"),
    );
    r
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
