//! The trace and session endpoints of the JSON API (`docs/api.md`): query parsing, answers
//! from the trace store, and the JSON shapes the web UI reads.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::{ApiError, Query};
use crate::{
    cost::Cost,
    store::traces::{
        Page, SessionQuery, SessionSummary, Totals, TraceQuery, TraceStore, TraceSummary,
        TraceTree, TreeNode,
    },
    trace::{
        context::{hex, parse_hex},
        metadata::canonical_feature,
        span::{AttrValue, SpanStatus},
    },
};

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;
/// Traces listed with one session at most.
const SESSION_TRACES: usize = 1000;

fn ms(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}

fn cost(totals: &Totals) -> Value {
    totals.cost().map_or(Value::Null, |c| {
        Value::String(Cost::from_pico_usd(c).to_string())
    })
}

fn tokens(out: &mut Map<String, Value>, t: &Totals) {
    out.insert("input_tokens".into(), t.input_tokens.into());
    out.insert("cached_input_tokens".into(), t.cached_input_tokens.into());
    out.insert("reasoning_tokens".into(), t.reasoning_tokens.into());
    out.insert("output_tokens".into(), t.output_tokens.into());
    out.insert("cost_usd".into(), cost(t));
}

pub fn summary_json(s: &TraceSummary) -> Value {
    let mut out = Map::new();
    out.insert("trace_id".into(), hex(&s.trace_id).into());
    out.insert("start_ms".into(), ms(s.start_unix_nanos).into());
    out.insert("end_ms".into(), ms(s.end_unix_nanos).into());
    out.insert("duration_ms".into(), ms(s.duration_nanos()).into());
    out.insert("root_name".into(), s.name().into());
    out.insert("spans".into(), s.totals.spans.into());
    out.insert("errors".into(), s.totals.errors.into());
    tokens(&mut out, &s.totals);
    out.insert("feature".into(), s.feature.clone().into());
    out.insert("user".into(), s.user.clone().into());
    out.insert("session".into(), s.session.clone().into());
    out.insert("models".into(), s.models.clone().into());
    out.insert("providers".into(), s.providers.clone().into());
    Value::Object(out)
}

fn session_json(s: &SessionSummary) -> Value {
    let mut out = Map::new();
    out.insert("session_id".into(), s.session_id.clone().into());
    out.insert("first_ms".into(), ms(s.first_unix_nanos).into());
    out.insert("last_ms".into(), ms(s.last_unix_nanos).into());
    out.insert("traces".into(), s.traces.into());
    out.insert("spans".into(), s.totals.spans.into());
    out.insert("errors".into(), s.totals.errors.into());
    tokens(&mut out, &s.totals);
    out.insert("user".into(), s.user.clone().into());
    out.insert("feature".into(), s.feature.clone().into());
    Value::Object(out)
}

pub fn attr_json(v: &AttrValue) -> Value {
    match v {
        AttrValue::Bool(b) => (*b).into(),
        AttrValue::Int(n) => (*n).into(),
        AttrValue::Double(d) => (*d).into(),
        AttrValue::Str(s) => s.clone().into(),
        AttrValue::StrList(l) => l.clone().into(),
        AttrValue::List(l) => l.iter().map(attr_json).collect::<Vec<_>>().into(),
        AttrValue::Map { kvlist } => Value::Object(
            kvlist
                .iter()
                .map(|(k, v)| (k.clone(), attr_json(v)))
                .collect(),
        ),
        AttrValue::Bytes { bytes } => json!({ "bytes": bytes }),
    }
}

fn totals_json(t: &Totals, spans: bool) -> Value {
    let mut out = Map::new();
    if spans {
        out.insert("spans".into(), t.spans.into());
    }
    out.insert("errors".into(), t.errors.into());
    tokens(&mut out, t);
    Value::Object(out)
}

fn node_json(n: &TreeNode) -> Value {
    let s = &n.stored.span;
    let (code, message) = match &s.status {
        SpanStatus::Unset | SpanStatus::Ok => ("ok", Value::Null),
        SpanStatus::Error(m) => ("error", m.clone().into()),
    };
    let attributes: Map<String, Value> = s
        .attributes
        .iter()
        .map(|(k, v)| (k.to_string(), attr_json(v)))
        .collect();
    let mut out = json!({
        "trace_id": hex(&s.trace_id),
        "span_id": hex(&s.span_id),
        "parent_span_id": s.parent_span_id.map(|p| hex(&p)),
        "parent_missing": n.parent_missing,
        "depth": n.depth,
        "name": s.name,
        "kind": s.kind.to_ascii_uppercase(),
        "start_ms": ms(s.start_unix_nanos),
        "end_ms": ms(s.end_unix_nanos),
        "duration_ms": ms(s.end_unix_nanos.saturating_sub(s.start_unix_nanos)),
        "start_unix_nanos": s.start_unix_nanos.to_string(),
        "end_unix_nanos": s.end_unix_nanos.to_string(),
        "status": {"code": code, "message": message},
        "service": n.service,
        "scope": n.stored.scope_name,
        "attributes": attributes,
        "self": totals_json(&n.own, false),
        "rollup": totals_json(&n.rollup, true),
    });
    // Received spans may have events and links, a score its evaluation event.
    let attrs = |a: &[(String, AttrValue)]| -> Map<String, Value> {
        a.iter().map(|(k, v)| (k.clone(), attr_json(v))).collect()
    };
    if !s.events.is_empty() {
        out["events"] = s
            .events
            .iter()
            .map(|e| {
                json!({
                    "name": e.name,
                    "time_ms": ms(e.time_unix_nanos),
                    "time_unix_nanos": e.time_unix_nanos.to_string(),
                    "attributes": attrs(&e.attributes),
                })
            })
            .collect::<Vec<_>>()
            .into();
    }
    if !s.links.is_empty() {
        out["links"] = s
            .links
            .iter()
            .map(|l| {
                json!({
                    "trace_id": hex(&l.trace_id),
                    "span_id": hex(&l.span_id),
                    "attributes": attrs(&l.attributes),
                })
            })
            .collect::<Vec<_>>()
            .into();
    }
    out
}

fn tree_json(t: &TraceTree) -> Value {
    let mut out = json!({
        "trace": summary_json(&t.summary),
        "spans": t.nodes.iter().map(node_json).collect::<Vec<_>>(),
    });
    if t.unreadable > 0 {
        out["spans_unreadable"] = t.unreadable.into();
    }
    if t.replaced_tool_spans > 0 {
        out["tool_spans_replaced"] = t.replaced_tool_spans.into();
    }
    out
}

/// OTLP/JSON attribute value.
fn otlp_value(v: &AttrValue) -> Value {
    match v {
        AttrValue::Bool(b) => json!({"boolValue": b}),
        AttrValue::Int(n) => json!({"intValue": n.to_string()}),
        AttrValue::Double(d) => json!({"doubleValue": d}),
        AttrValue::Str(s) => json!({"stringValue": s}),
        AttrValue::StrList(l) => {
            json!({"arrayValue": {"values": l.iter().map(|s| json!({"stringValue": s})).collect::<Vec<_>>()}})
        }
        AttrValue::List(l) => {
            json!({"arrayValue": {"values": l.iter().map(otlp_value).collect::<Vec<_>>()}})
        }
        AttrValue::Map { kvlist } => {
            json!({"kvlistValue": {"values": kvlist.iter().map(|(k, v)| json!({"key": k, "value": otlp_value(v)})).collect::<Vec<_>>()}})
        }
        AttrValue::Bytes { bytes } => json!({ "bytesValue": bytes }),
    }
}

/// The OTLP enum value of a span kind (written `client`, `CLIENT`, `SPAN_KIND_CLIENT`, ...).
fn otlp_kind(kind: &str) -> u8 {
    let kind = kind.to_ascii_uppercase();
    match kind.trim_start_matches("SPAN_KIND_") {
        "INTERNAL" => 1,
        "SERVER" => 2,
        "CLIENT" => 3,
        "PRODUCER" => 4,
        "CONSUMER" => 5,
        _ => 0,
    }
}

/// The trace as an OTLP/JSON `ExportTraceServiceRequest`: spans grouped by resource, then scope.
fn otlp_json(t: &TraceTree) -> Value {
    // Resource key -> (scope name and version -> spans), in the order first seen.
    type Scopes = Vec<((String, String), Vec<Value>)>;
    let mut groups: Vec<(u64, Scopes)> = Vec::new();
    for n in &t.nodes {
        let st = &n.stored;
        let s = &st.span;
        let mut span = json!({
            "traceId": hex(&s.trace_id),
            "spanId": hex(&s.span_id),
            "name": s.name,
            "kind": otlp_kind(&s.kind),
            "startTimeUnixNano": s.start_unix_nanos.to_string(),
            "endTimeUnixNano": s.end_unix_nanos.to_string(),
            "attributes": s.attributes.iter().map(|(k, v)| json!({"key": k, "value": otlp_value(v)})).collect::<Vec<_>>(),
            "flags": s.flags,
            "status": match &s.status {
                SpanStatus::Unset => json!({}),
                SpanStatus::Ok => json!({"code": 1}),
                SpanStatus::Error(m) => json!({"code": 2, "message": m}),
            },
        });
        if let Some(p) = s.parent_span_id {
            span["parentSpanId"] = hex(&p).into();
        }
        let kvs = |a: &[(String, AttrValue)]| -> Vec<Value> {
            a.iter()
                .map(|(k, v)| json!({"key": k, "value": otlp_value(v)}))
                .collect()
        };
        if !s.events.is_empty() {
            span["events"] = s
                .events
                .iter()
                .map(|e| {
                    json!({
                        "timeUnixNano": e.time_unix_nanos.to_string(),
                        "name": e.name,
                        "attributes": kvs(&e.attributes),
                    })
                })
                .collect::<Vec<_>>()
                .into();
        }
        if !s.links.is_empty() {
            span["links"] = s
                .links
                .iter()
                .map(|l| {
                    let mut link = json!({
                        "traceId": hex(&l.trace_id),
                        "spanId": hex(&l.span_id),
                        "flags": l.flags,
                        "attributes": kvs(&l.attributes),
                    });
                    if let Some(ts) = &l.trace_state {
                        link["traceState"] = ts.clone().into();
                    }
                    link
                })
                .collect::<Vec<_>>()
                .into();
        }
        if let Some(ts) = &s.trace_state {
            span["traceState"] = ts.clone().into();
        }
        let scope = (st.scope_name.clone(), st.scope_version.clone());
        let at = match groups.iter().position(|(r, _)| *r == st.resource) {
            Some(at) => at,
            None => {
                groups.push((st.resource, Vec::new()));
                groups.len() - 1
            }
        };
        let scopes = &mut groups[at].1;
        match scopes.iter_mut().find(|(s, _)| *s == scope) {
            Some((_, spans)) => spans.push(span),
            None => scopes.push((scope, vec![span])),
        }
    }
    let resource_spans: Vec<Value> = groups
        .into_iter()
        .map(|(key, scopes)| {
            let attributes: Vec<Value> = t
                .resources
                .get(&key)
                .into_iter()
                .flatten()
                .map(|(k, v)| json!({"key": k, "value": {"stringValue": v}}))
                .collect();
            json!({
                "resource": {"attributes": attributes},
                "scopeSpans": scopes.into_iter().map(|((name, version), spans)| json!({
                    "scope": {"name": name, "version": version},
                    "spans": spans,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({"resourceSpans": resource_spans})
}

fn limit(q: &Query, max: usize) -> Result<usize, ApiError> {
    match q.get("limit") {
        None => Ok(DEFAULT_LIMIT.min(max)),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| ApiError::bad(format!("limit must be a number from 1 to {max}"))),
    }
}

/// `window`, or `from`/`to` in unix milliseconds, as a nanosecond range.
fn window(q: &Query) -> Result<(Option<u64>, Option<u64>), ApiError> {
    let millis = |k: &str| -> Result<Option<u64>, ApiError> {
        q.get(k)
            .map(|v| {
                v.parse::<u64>()
                    .ok()
                    .and_then(|ms| ms.checked_mul(1_000_000))
                    .ok_or_else(|| ApiError::bad(format!("{k} is unix milliseconds")))
            })
            .transpose()
    };
    if let Some(w) = q.get("window") {
        let secs = crate::config::parse_duration_secs(&w).ok_or_else(|| {
            ApiError::bad("window is a number with m, h or d, e.g. 15m, 24h or 7d")
        })?;
        let now = crate::store::traces::now_unix_nanos();
        return Ok((Some(now.saturating_sub(secs * 1_000_000_000)), None));
    }
    let (from, to) = (millis("from")?, millis("to")?);
    if let (Some(f), Some(t)) = (from, to)
        && f >= t
    {
        return Err(ApiError::bad("from must be before to"));
    }
    Ok((from, to))
}

fn cursor(q: &Query) -> Result<Option<(u64, String)>, ApiError> {
    let Some(c) = q.get("cursor") else {
        return Ok(None);
    };
    c.split_once('-')
        .and_then(|(t, rest)| Some((t.parse::<u64>().ok()?, rest.to_string())))
        .map(Some)
        .ok_or_else(|| ApiError::bad("cursor is not one this API gave"))
}

/// The text whose UTF-8 bytes `hex` spells (a session id in a cursor).
fn unhex(hex: &str) -> Option<String> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

fn trace_query(q: &Query) -> Result<TraceQuery, ApiError> {
    let (from, to) = window(q)?;
    let cursor = match cursor(q)? {
        None => None,
        Some((start, id)) => Some((
            start,
            parse_hex::<16>(&id).ok_or_else(|| ApiError::bad("cursor is not one this API gave"))?,
        )),
    };
    let status = q.get("status");
    if status
        .as_deref()
        .is_some_and(|s| s != "error" && s != "any")
    {
        return Err(ApiError::bad("status is error (or any)"));
    }
    let min_cost_pico_usd = q
        .get("min_cost_usd")
        .map(|v| {
            crate::store::budgets::parse_usd(&v)
                .map_err(|_| ApiError::bad("min_cost_usd is a decimal number of USD, e.g. 0.01"))
        })
        .transpose()?;
    let min_duration_nanos = q
        .get("min_duration_ms")
        .map(|v| {
            v.parse::<f64>()
                .ok()
                .filter(|ms| ms.is_finite() && *ms >= 0.0)
                .map(|ms| (ms * 1e6) as u64)
                .ok_or_else(|| ApiError::bad("min_duration_ms is a number of milliseconds"))
        })
        .transpose()?;
    let nonempty = |k: &str| q.get(k).filter(|v| !v.is_empty());
    Ok(TraceQuery {
        from,
        to,
        feature: nonempty("feature").map(|f| canonical_feature(&f)),
        user: nonempty("user"),
        session: nonempty("session"),
        model: nonempty("model"),
        provider: nonempty("provider"),
        errors_only: status.as_deref() == Some("error"),
        min_cost_pico_usd,
        min_duration_nanos,
        text: nonempty("q"),
        limit: limit(q, MAX_LIMIT)?,
        cursor,
        text_scan_limit: None,
    })
}

fn page_cursor<T>(page: &Page<T>, key: impl Fn(&T) -> String) -> Value {
    match page.rows.last() {
        Some(last) if page.more => key(last).into(),
        _ => Value::Null,
    }
}

/// Runs a store read off the async runtime (sled reads can touch the disk).
async fn read<T: Send + 'static>(
    store: &Arc<TraceStore>,
    f: impl FnOnce(&TraceStore) -> Result<T, sled::Error> + Send + 'static,
) -> Result<T, ApiError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(format!("the trace store failed to read: {e}")))
}

/// `/api/traces...` and `/api/sessions...`: `None` when the path is neither.
pub async fn route(
    store: Result<&Arc<TraceStore>, &str>,
    path: &str,
    query: &Query,
) -> Option<Result<Value, ApiError>> {
    let rest = path
        .strip_prefix("/api/traces")
        .map(|r| (true, r))
        .or_else(|| path.strip_prefix("/api/sessions").map(|r| (false, r)))?;
    let store = match store {
        Ok(store) => store,
        Err(why) => return Some(Err(ApiError::unavailable(why))),
    };
    Some(match rest {
        (true, "" | "/") => traces(store, query).await,
        (true, id) => match id.trim_start_matches('/').split_once('/') {
            None => trace(store, id.trim_start_matches('/'), false).await,
            Some((id, "otlp")) => trace(store, id, true).await,
            Some(_) => Err(ApiError::not_found("no such endpoint; see docs/api.md")),
        },
        (false, "" | "/") => sessions(store, query).await,
        (false, id) => session(store, id.trim_start_matches('/')).await,
    })
}

async fn traces(store: &Arc<TraceStore>, query: &Query) -> Result<Value, ApiError> {
    query.only(
        "/api/traces",
        &[
            "window",
            "from",
            "to",
            "cursor",
            "limit",
            "feature",
            "user",
            "session",
            "model",
            "provider",
            "status",
            "min_cost_usd",
            "min_duration_ms",
            "q",
        ],
    )?;
    let q = trace_query(query)?;
    let limit = q.limit;
    let page = read(store, move |s| s.traces(&q)).await?;
    let mut body = json!({
        "traces": page.rows.iter().map(summary_json).collect::<Vec<_>>(),
        "next_cursor": page.next().map(|(start, id)| format!("{start}-{}", hex(&id))),
    });
    // A text search that stopped reading before its page was full: how far back it read.
    if let Some((start, _)) = page.resume
        && page.rows.len() < limit
    {
        body["searched_to_ms"] = ms(start).into();
    }
    Ok(body)
}

async fn trace(store: &Arc<TraceStore>, id: &str, otlp: bool) -> Result<Value, ApiError> {
    let id = parse_hex::<16>(&id.to_ascii_lowercase())
        .ok_or_else(|| ApiError::bad("a trace id is 32 hex digits"))?;
    let tree = read(store, move |s| s.trace(&id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no trace {} in the store", hex(&id))))?;
    Ok(if otlp {
        otlp_json(&tree)
    } else {
        tree_json(&tree)
    })
}

async fn sessions(store: &Arc<TraceStore>, query: &Query) -> Result<Value, ApiError> {
    query.only(
        "/api/sessions",
        &["window", "from", "to", "cursor", "limit", "user", "feature"],
    )?;
    let (from, to) = window(query)?;
    let q = SessionQuery {
        from,
        to,
        user: query.get("user").filter(|v| !v.is_empty()),
        feature: query
            .get("feature")
            .filter(|v| !v.is_empty())
            .map(|f| canonical_feature(&f)),
        limit: limit(query, MAX_LIMIT)?,
        cursor: match cursor(query)? {
            None => None,
            Some((last, id)) => Some((
                last,
                unhex(&id).ok_or_else(|| ApiError::bad("cursor is not one this API gave"))?,
            )),
        },
    };
    let page = read(store, move |s| s.sessions(&q)).await?;
    Ok(json!({
        "sessions": page.rows.iter().map(session_json).collect::<Vec<_>>(),
        "next_cursor": page_cursor(&page, |s| format!("{}-{}", s.last_unix_nanos, hex(s.session_id.as_bytes()))),
    }))
}

async fn session(store: &Arc<TraceStore>, id: &str) -> Result<Value, ApiError> {
    let id = crate::trace::metadata::percent_decode(id);
    let wanted = id.clone();
    let (session, traces) = read(store, move |s| s.session(&wanted, SESSION_TRACES))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no session {id:?} in the store")))?;
    Ok(json!({
        "session": session_json(&session),
        "traces": traces.rows.iter().map(summary_json).collect::<Vec<_>>(),
        "truncated": traces.more,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_kinds_follow_the_proto_enum() {
        assert_eq!(otlp_kind("CLIENT"), 3);
        assert_eq!(otlp_kind("client"), 3);
        assert_eq!(otlp_kind("INTERNAL"), 1);
        assert_eq!(otlp_kind("nonsense"), 0);
    }

    #[test]
    fn a_session_cursor_round_trips_through_hex() {
        assert_eq!(unhex(&hex("s_9 é".as_bytes())).as_deref(), Some("s_9 é"));
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("abc"), None);
    }
}
