//! The attribute names the gateway's own spans leave with. Spans are recorded, stored and shown
//! with the GenAI v1.41 names (the last release of the conventions in the core repository);
//! on the way out they are renamed for the conventions the operator chose:
//! `OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental` for the latest text of the GenAI
//! repository. Spans received from apps are never touched.

use std::borrow::Cow;

use crate::{
    config::ExportConfig,
    trace::span::{AttrValue, SCHEMA_URL, SpanRecord},
};

/// The schema of the GenAI repository's development text, which has no release yet.
pub const LATEST_SCHEMA_URL: &str = "https://opentelemetry.io/schemas/gen-ai-dev/1.42.0-dev";

/// The value of `OTEL_SEMCONV_STABILITY_OPT_IN` that asks for the latest GenAI names.
pub const OPT_IN_LATEST: &str = "gen_ai_latest_experimental";

/// Which GenAI names the export uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenAiNames {
    /// semantic-conventions v1.41.0 (the default: what Phoenix, Langfuse and most backends
    /// read today).
    V1_41,
    /// The latest text of open-telemetry/semantic-conventions-genai (see `docs/conventions.md`).
    Latest,
}

/// Renamed between v1.41 and the latest text (its migration guide, "Inference span and event
/// attributes").
const RENAMED: [(&str, &str); 1] = [(
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_write.input_tokens",
)];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conventions {
    pub gen_ai: GenAiNames,
}

impl Conventions {
    pub fn from_config(cfg: &ExportConfig) -> Conventions {
        Conventions {
            gen_ai: if cfg.gen_ai_latest {
                GenAiNames::Latest
            } else {
                GenAiNames::V1_41
            },
        }
    }

    /// The schema URL of the instrumentation scope the gateway's spans are exported under.
    pub fn schema_url(&self) -> &'static str {
        match self.gen_ai {
            GenAiNames::V1_41 => SCHEMA_URL,
            GenAiNames::Latest => LATEST_SCHEMA_URL,
        }
    }

    /// The attributes one of the gateway's own spans is exported with.
    pub fn attributes<'a>(&self, span: &'a SpanRecord) -> Cow<'a, [(String, AttrValue)]> {
        match self.gen_ai {
            GenAiNames::V1_41 => Cow::Borrowed(&span.attributes),
            GenAiNames::Latest => Cow::Owned(latest(&span.attributes)),
        }
    }
}

/// The v1.41 attributes as the latest text names them.
fn latest(attributes: &[(String, AttrValue)]) -> Vec<(String, AttrValue)> {
    let mut out = Vec::with_capacity(attributes.len() + 2);
    for (key, value) in attributes {
        let key = RENAMED
            .iter()
            .find(|(old, _)| old == key)
            .map_or(key.as_str(), |(_, new)| new);
        let value = match (key, value) {
            // An int now (was a double); a fraction has no int form and is left out.
            ("gen_ai.request.top_k", AttrValue::Double(d)) => {
                if d.fract() != 0.0 || !d.is_finite() {
                    continue;
                }
                AttrValue::Int(*d as i64)
            }
            // `finish_reason` inside the output messages is deprecated there in favour of
            // `gen_ai.response.finish_reasons`, which the span carries anyway.
            ("gen_ai.output.messages", AttrValue::Str(text)) => {
                AttrValue::Str(without_finish_reason(text))
            }
            _ => value.clone(),
        };
        out.push((key.to_string(), value));
    }
    // Named prompts have attributes of their own in the latest text.
    for (from, to) in [
        ("prompt.template_id", "gen_ai.prompt.name"),
        ("prompt.version", "gen_ai.prompt.version"),
    ] {
        if let Some((_, v)) = attributes.iter().find(|(k, _)| k == from)
            && !attributes.iter().any(|(k, _)| k == to)
        {
            out.push((to.to_string(), v.clone()));
        }
    }
    out
}

fn without_finish_reason(messages: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(messages) {
        Ok(serde_json::Value::Array(mut list)) => {
            for message in &mut list {
                if let Some(m) = message.as_object_mut() {
                    m.remove("finish_reason");
                }
            }
            serde_json::Value::Array(list).to_string()
        }
        _ => messages.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(attributes: Vec<(&str, AttrValue)>) -> SpanRecord {
        SpanRecord {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            parent_is_remote: false,
            flags: 1,
            trace_state: None,
            name: "chat m".into(),
            kind: "client".into(),
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            status: crate::trace::span::SpanStatus::Unset,
            attributes: attributes
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            events: Vec::new(),
            links: Vec::new(),
            origin: None,
        }
    }

    fn get<'a>(attrs: &'a [(String, AttrValue)], key: &str) -> Option<&'a AttrValue> {
        attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn conventions(latest: bool) -> Conventions {
        Conventions::from_config(&ExportConfig {
            gen_ai_latest: latest,
            ..ExportConfig::default()
        })
    }

    #[test]
    fn v1_41_is_the_default_and_leaves_the_span_as_recorded() {
        let s = span(vec![
            (
                "gen_ai.usage.cache_creation.input_tokens",
                AttrValue::Int(25),
            ),
            ("gen_ai.request.top_k", AttrValue::Double(40.0)),
        ]);
        let c = Conventions::from_config(&ExportConfig::default());
        assert_eq!(c.gen_ai, GenAiNames::V1_41);
        assert_eq!(c.schema_url(), "https://opentelemetry.io/schemas/1.41.0");
        assert_eq!(&*c.attributes(&s), &s.attributes[..]);
    }

    #[test]
    fn latest_renames_cache_creation_to_cache_write_and_types_top_k_as_int() {
        let s = span(vec![
            ("gen_ai.usage.input_tokens", AttrValue::Int(100)),
            ("gen_ai.usage.cache_read.input_tokens", AttrValue::Int(50)),
            (
                "gen_ai.usage.cache_creation.input_tokens",
                AttrValue::Int(25),
            ),
            ("gen_ai.request.top_k", AttrValue::Double(40.0)),
            ("prompt.template_id", AttrValue::Str("support.v3".into())),
            ("prompt.version", AttrValue::Str("7".into())),
            (
                "gen_ai.output.messages",
                AttrValue::Str(
                    r#"[{"role":"assistant","parts":[{"type":"text","content":"hi"}],"finish_reason":"stop"}]"#
                        .into(),
                ),
            ),
        ]);
        let c = conventions(true);
        assert_eq!(c.schema_url(), LATEST_SCHEMA_URL);
        let a = c.attributes(&s);
        assert_eq!(
            get(&a, "gen_ai.usage.cache_write.input_tokens"),
            Some(&AttrValue::Int(25))
        );
        assert_eq!(get(&a, "gen_ai.usage.cache_creation.input_tokens"), None);
        assert_eq!(
            get(&a, "gen_ai.usage.cache_read.input_tokens"),
            Some(&AttrValue::Int(50))
        );
        assert_eq!(get(&a, "gen_ai.request.top_k"), Some(&AttrValue::Int(40)));
        assert_eq!(
            get(&a, "gen_ai.prompt.name"),
            Some(&AttrValue::Str("support.v3".into()))
        );
        assert_eq!(
            get(&a, "gen_ai.prompt.version"),
            Some(&AttrValue::Str("7".into()))
        );
        let Some(AttrValue::Str(output)) = get(&a, "gen_ai.output.messages") else {
            panic!("no output messages");
        };
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(output).unwrap(),
            serde_json::json!([{"role":"assistant","parts":[{"type":"text","content":"hi"}]}])
        );
        // A fractional top_k has no int form: left out rather than rounded.
        let s = span(vec![("gen_ai.request.top_k", AttrValue::Double(0.5))]);
        assert_eq!(get(&c.attributes(&s), "gen_ai.request.top_k"), None);
    }
}
