//! `POST /api/scores`: a quality score for a trace or one of its spans, given after the fact (a
//! user's thumbs down, an evaluator's verdict).
//!
//! A score becomes a zero-duration span named `evaluation {name}` (kind INTERNAL), parented to
//! the scored span (or, when only a trace is named, to the trace's root span) and placed at its
//! end (the time it was posted is its event's), carrying the GenAI
//! evaluation attributes (`gen_ai.evaluation.name`, `.score.value`, `.score.label`,
//! `.explanation`, and the scored call's `gen_ai.response.id`), and the same attributes in a
//! `gen_ai.evaluation.result` span event. The span goes where every other
//! span goes: into the trace store (the UI shows it under the span it scores) and out through the
//! export queue and spool. It is counted in `sidetrace_scores_total{name,feature,label}` and
//! `sidetrace_score_value{name,feature}`, with bounded labels.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::ApiError;
use crate::{
    call::recorder::Recorder,
    metrics::{LabelCap, Metrics},
    store::traces::{TraceStore, now_unix_nanos},
    trace::{
        context::random_span_id,
        span::{AttrValue, SpanEvent, SpanRecord, SpanStatus},
    },
};

/// The largest body taken; a score is a few hundred bytes.
pub const MAX_BODY: usize = 64 * 1024;
const MAX_NAME: usize = 100;
const MAX_LABEL: usize = 100;
const MAX_EXPLANATION: usize = 8 * 1024;
/// How long a score for a trace not yet in the store waits for the store's queue to be written.
const STORE_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(2);

/// What a score needs: where spans go, the store to check ids against, and bounded metrics.
pub struct Scores {
    pub recorder: Arc<Recorder>,
    pub metrics: Arc<Metrics>,
    names: LabelCap,
    features: LabelCap,
    labels: LabelCap,
}

impl Scores {
    pub fn new(recorder: Arc<Recorder>, metrics: Arc<Metrics>) -> Scores {
        Scores {
            recorder,
            metrics,
            names: LabelCap::new(50),
            features: LabelCap::new(100),
            labels: LabelCap::new(50),
        }
    }
}

/// A score as posted, validated.
#[derive(Debug, PartialEq)]
struct Posted {
    trace_id: [u8; 16],
    span_id: Option<[u8; 8]>,
    name: String,
    score: Option<f64>,
    label: Option<String>,
    explanation: Option<String>,
}

fn hex_id<const N: usize>(v: &Value, field: &str) -> Result<[u8; N], ApiError> {
    let bad = || ApiError::bad(format!("{field} is {} hex digits, not all zero", 2 * N));
    let s = v.as_str().ok_or_else(bad)?;
    if s.len() != 2 * N {
        return Err(bad());
    }
    let mut id = [0u8; N];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte =
            u8::from_str_radix(s.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    if id == [0; N] {
        return Err(bad());
    }
    Ok(id)
}

fn text(v: &Value, field: &str, max: usize) -> Result<String, ApiError> {
    let s = v
        .as_str()
        .ok_or_else(|| ApiError::bad(format!("{field} is a string")))?;
    if s.trim().is_empty() {
        return Err(ApiError::bad(format!("{field} is empty")));
    }
    if s.chars().count() > max {
        return Err(ApiError::bad(format!(
            "{field} is longer than {max} characters"
        )));
    }
    Ok(s.to_string())
}

fn parse(body: &[u8]) -> Result<Posted, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("the body is not JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(ApiError::bad(
            "the body is a JSON object: {\"trace_id\", \"span_id\"?, \"name\", \"score\"?, \"label\"?, \"explanation\"?}",
        ));
    };
    const KNOWN: [&str; 6] = [
        "trace_id",
        "span_id",
        "name",
        "score",
        "label",
        "explanation",
    ];
    if let Some(unknown) = fields.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::bad(format!(
            "unknown field {unknown:?}; the fields are {}",
            KNOWN.join(", ")
        )));
    }
    let present = |k: &str| fields.get(k).filter(|v| !v.is_null());
    let trace_id = hex_id::<16>(
        present("trace_id").ok_or_else(|| ApiError::bad("trace_id is required"))?,
        "trace_id",
    )?;
    let span_id = present("span_id")
        .map(|v| hex_id::<8>(v, "span_id"))
        .transpose()?;
    let name = text(
        present("name").ok_or_else(|| ApiError::bad("name is required"))?,
        "name",
        MAX_NAME,
    )?;
    let score = present("score")
        .map(|v| {
            v.as_f64()
                .filter(|f| f.is_finite())
                .ok_or_else(|| ApiError::bad("score is a finite number"))
        })
        .transpose()?;
    let label = present("label")
        .map(|v| text(v, "label", MAX_LABEL))
        .transpose()?;
    let explanation = present("explanation")
        .map(|v| text(v, "explanation", MAX_EXPLANATION))
        .transpose()?;
    if score.is_none() && label.is_none() {
        return Err(ApiError::bad(
            "a score has a score (number), a label, or both",
        ));
    }
    Ok(Posted {
        trace_id,
        span_id,
        name,
        score,
        label,
        explanation,
    })
}

/// What the store knows of the scored span: its id, its response id and the trace's feature.
struct Target {
    parent: Option<[u8; 8]>,
    /// The scored span's trace flags and state, which its score keeps (sampled when unknown).
    flags: u8,
    trace_state: Option<String>,
    response_id: Option<String>,
    feature: Option<String>,
    /// When the scored span ended: the score's span is placed there, so a score posted days
    /// later does not stretch its trace's duration (the time it was posted is its event's).
    ended: Option<u64>,
}

/// Finds the scored span (or the trace's root) in the store; `None` when the trace is not there.
fn find(
    store: &TraceStore,
    posted_trace: [u8; 16],
    span: Option<[u8; 8]>,
) -> Result<Option<Result<Target, ApiError>>, sled::Error> {
    let Some(tree) = store.trace(&posted_trace)? else {
        return Ok(None);
    };
    let node = match span {
        Some(id) => tree.nodes.iter().find(|n| n.stored.span.span_id == id),
        None => tree.nodes.iter().find(|n| n.depth == 0),
    };
    let Some(node) = node else {
        return Ok(Some(Err(ApiError::not_found(format!(
            "trace {} has no span {}",
            hex(&posted_trace),
            span.map(|s| hex(&s)).unwrap_or_default()
        )))));
    };
    let response_id = match node.stored.span.attr("gen_ai.response.id") {
        Some(AttrValue::Str(s)) => Some(s.clone()),
        _ => None,
    };
    Ok(Some(Ok(Target {
        parent: Some(node.stored.span.span_id),
        flags: node.stored.span.flags,
        trace_state: node.stored.span.trace_state.clone(),
        response_id,
        feature: tree.summary.feature.clone(),
        ended: Some(node.stored.span.end_unix_nanos),
    })))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `POST /api/scores` with `body`: 201 with the score's span, or a 4xx saying what was wrong.
pub async fn post(
    scores: &Scores,
    store: Result<&Arc<TraceStore>, &str>,
    body: &[u8],
) -> Result<Value, ApiError> {
    let posted = parse(body)?;
    let target = match store {
        Ok(store) => {
            let store = store.clone();
            let (trace_id, span_id) = (posted.trace_id, posted.span_id);
            tokio::task::spawn_blocking(move || {
                // A score can come right after its call: let the store's queue catch up once.
                match find(&store, trace_id, span_id)? {
                    Some(found) => Ok(Some(found)),
                    None => {
                        store.flush(STORE_CATCH_UP);
                        find(&store, trace_id, span_id)
                    }
                }
            })
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::internal(format!("the trace store failed to read: {e}")))?
            .ok_or_else(|| {
                ApiError::not_found(format!("no trace {} in the store", hex(&posted.trace_id)))
            })??
        }
        // No store to check against: the ids are taken as given.
        Err(_) => Target {
            parent: posted.span_id,
            flags: 1,
            trace_state: None,
            response_id: None,
            feature: None,
            ended: None,
        },
    };
    let span = score_span(&posted, &target);
    let span_id = span.span_id;
    count(scores, &posted, target.feature.as_deref());
    scores.recorder.record_span(span, None, None);
    let mut answer = Map::new();
    answer.insert("trace_id".into(), hex(&posted.trace_id).into());
    answer.insert("span_id".into(), hex(&span_id).into());
    answer.insert(
        "parent_span_id".into(),
        target.parent.map_or(Value::Null, |p| hex(&p).into()),
    );
    Ok(json!(answer))
}

fn score_span(posted: &Posted, target: &Target) -> SpanRecord {
    let now = now_unix_nanos();
    let at = target.ended.unwrap_or(now);
    let mut attributes = vec![(
        "gen_ai.evaluation.name".to_string(),
        AttrValue::Str(posted.name.clone()),
    )];
    if let Some(score) = posted.score {
        attributes.push((
            "gen_ai.evaluation.score.value".into(),
            AttrValue::Double(score),
        ));
    }
    if let Some(label) = &posted.label {
        attributes.push((
            "gen_ai.evaluation.score.label".into(),
            AttrValue::Str(label.clone()),
        ));
    }
    if let Some(explanation) = &posted.explanation {
        attributes.push((
            "gen_ai.evaluation.explanation".into(),
            AttrValue::Str(explanation.clone()),
        ));
    }
    if let Some(id) = &target.response_id {
        attributes.push(("gen_ai.response.id".into(), AttrValue::Str(id.clone())));
    }
    SpanRecord {
        trace_id: posted.trace_id,
        span_id: random_span_id(),
        parent_span_id: target.parent,
        parent_is_remote: false,
        flags: target.flags,
        trace_state: target.trace_state.clone(),
        name: format!("evaluation {}", posted.name),
        kind: "internal".into(),
        start_unix_nanos: at,
        end_unix_nanos: at,
        status: SpanStatus::Unset,
        // The convention's event too, for tools that read evaluations from span events.
        events: vec![SpanEvent {
            name: "gen_ai.evaluation.result".into(),
            time_unix_nanos: now,
            attributes: attributes.clone(),
        }],
        attributes: attributes.into_iter().map(|(k, v)| (k.into(), v)).collect(),
        links: Vec::new(),
        origin: None,
    }
}

fn count(scores: &Scores, posted: &Posted, feature: Option<&str>) {
    let name = scores.names.label(&posted.name);
    let feature = scores.features.label(feature.unwrap_or(""));
    let label = scores.labels.label(posted.label.as_deref().unwrap_or(""));
    scores
        .metrics
        .score_recorded(&name, &feature, &label, posted.score);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(body: &str) -> Result<Posted, String> {
        parse(body.as_bytes()).map_err(|e| e.message)
    }

    #[test]
    fn a_valid_score_parses() {
        let p = status_of(r#"{"trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331","name":"helpfulness","score":0.5,"label":"pass","explanation":"ok"}"#).unwrap();
        assert_eq!(p.name, "helpfulness");
        assert_eq!(p.score, Some(0.5));
        assert_eq!(
            p.span_id,
            Some([0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31])
        );
        let p = status_of(r#"{"trace_id":"0AF7651916CD43DD8448EB211C80319C","name":"thumbs","label":"down","span_id":null}"#).unwrap();
        assert_eq!(p.span_id, None);
        assert_eq!(p.score, None);
    }

    #[test]
    fn bad_scores_say_what_is_wrong() {
        let t = r#""trace_id":"0af7651916cd43dd8448eb211c80319c""#;
        for (body, says) in [
            ("not json".to_string(), "not JSON"),
            ("[1]".to_string(), "JSON object"),
            (
                r#"{"name":"x","score":1}"#.to_string(),
                "trace_id is required",
            ),
            (
                r#"{"trace_id":"xyz","name":"x","score":1}"#.to_string(),
                "32 hex",
            ),
            (
                r#"{"trace_id":"00000000000000000000000000000000","name":"x","score":1}"#
                    .to_string(),
                "not all zero",
            ),
            (
                format!(r#"{{{t},"span_id":"12","name":"x","score":1}}"#),
                "16 hex",
            ),
            (format!(r#"{{{t},"score":1}}"#), "name is required"),
            (format!(r#"{{{t},"name":" ","score":1}}"#), "name is empty"),
            (format!(r#"{{{t},"name":"x"}}"#), "a score has"),
            (
                format!(r#"{{{t},"name":"x","score":"high"}}"#),
                "finite number",
            ),
            (
                format!(r#"{{{t},"name":"x","label":5}}"#),
                "label is a string",
            ),
            (
                format!(r#"{{{t},"name":"x","scrore":1}}"#),
                "unknown field \"scrore\"",
            ),
            (
                format!(r#"{{{t},"name":"{}","score":1}}"#, "n".repeat(101)),
                "longer than 100",
            ),
        ] {
            let err = status_of(&body).expect_err(&body);
            assert!(err.contains(says), "{body}: {err}");
        }
    }
}
