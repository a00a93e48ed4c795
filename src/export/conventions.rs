//! The attribute names the gateway's own spans leave with. Spans are recorded, stored and shown
//! with the GenAI v1.41 names (the last release of the conventions in the core repository);
//! on the way out they are renamed for the conventions the operator chose:
//! `OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental` for the latest text of the GenAI
//! repository; with `[export] conventions = ["gen_ai", "openinference"]` they also carry the
//! OpenInference attributes Phoenix and other OpenInference readers take first (the exact cost,
//! the feature and prompt in `metadata`). Spans received from apps are never touched.

use std::borrow::Cow;

use crate::{
    config::ExportConfig,
    trace::span::{AttrKey, AttrValue, SCHEMA_URL, SpanRecord},
};

/// The schema of the GenAI repository's development text, which has no release yet.
pub const LATEST_SCHEMA_URL: &str = "https://opentelemetry.io/schemas/gen-ai-dev/1.42.0-dev";

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
    /// Add the OpenInference attributes (`[export] conventions` lists `openinference`).
    pub openinference: bool,
}

impl Conventions {
    pub fn from_config(cfg: &ExportConfig) -> Conventions {
        Conventions {
            gen_ai: if cfg.gen_ai_latest {
                GenAiNames::Latest
            } else {
                GenAiNames::V1_41
            },
            openinference: cfg.conventions.iter().any(|c| c == "openinference"),
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
    pub fn attributes<'a>(&self, span: &'a SpanRecord) -> Cow<'a, [(AttrKey, AttrValue)]> {
        let mut out = match self.gen_ai {
            GenAiNames::V1_41 => Cow::Borrowed(&span.attributes[..]),
            GenAiNames::Latest => Cow::Owned(latest(&span.attributes)),
        };
        if self.openinference {
            // Read from the recorded (v1.41) names, whatever the export's GenAI set.
            let extra = openinference(&span.attributes);
            if !extra.is_empty() {
                out.to_mut().extend(extra);
            }
        }
        out
    }
}

/// The OpenInference attributes of one of the gateway's spans (Arize-ai/openinference,
/// `spec/semantic_conventions.md`), from its recorded attributes. Only what the span knows
/// exactly: no template text (the gateway sees a template's name, not its text) and no
/// flattened messages (OpenInference readers convert `gen_ai.*.messages` themselves).
fn openinference(attributes: &[(AttrKey, AttrValue)]) -> Vec<(AttrKey, AttrValue)> {
    let get = |key: &str| attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    let text = |key: &str| match get(key) {
        Some(AttrValue::Str(s)) => Some(s.as_str()),
        _ => None,
    };
    let int = |key: &str| match get(key) {
        Some(AttrValue::Int(i)) => Some(*i),
        _ => None,
    };
    let mut out: Vec<(AttrKey, AttrValue)> = Vec::new();
    let mut push = |key: &'static str, value: AttrValue| out.push((key.into(), value));
    let kind = match (text("gen_ai.operation.name"), get("gen_ai.evaluation.name")) {
        (_, Some(_)) => "EVALUATOR",
        (Some("chat" | "text_completion" | "generate_content"), _) => "LLM",
        (Some("embeddings"), _) => "EMBEDDING",
        (Some("execute_tool"), _) => "TOOL",
        // A passthrough call: no model call the gateway could read.
        _ => return Vec::new(),
    };
    push("openinference.span.kind", AttrValue::Str(kind.into()));
    if kind == "TOOL" {
        if let Some(name) = text("gen_ai.tool.name") {
            push("tool.name", AttrValue::Str(name.into()));
        }
        if let Some(id) = text("gen_ai.tool.call.id") {
            push("tool.id", AttrValue::Str(id.into()));
        }
    }
    if let Some(provider) = text("gen_ai.provider.name") {
        let (hosting, product) = oi_provider(provider, text("gen_ai.request.model"));
        push("llm.provider", AttrValue::Str(hosting.into()));
        if let Some(product) = product {
            push("llm.system", AttrValue::Str(product.into()));
        }
    }
    let model = text("gen_ai.response.model").or(text("gen_ai.request.model"));
    if let Some(model) = model {
        let key = if kind == "EMBEDDING" {
            "embedding.model_name"
        } else {
            "llm.model_name"
        };
        push(key, AttrValue::Str(model.into()));
    }
    let input = int("gen_ai.usage.input_tokens");
    let output = int("gen_ai.usage.output_tokens");
    for (from, to) in [
        ("gen_ai.usage.input_tokens", "llm.token_count.prompt"),
        ("gen_ai.usage.output_tokens", "llm.token_count.completion"),
        (
            "gen_ai.usage.cache_read.input_tokens",
            "llm.token_count.prompt_details.cache_read",
        ),
        (
            "gen_ai.usage.cache_creation.input_tokens",
            "llm.token_count.prompt_details.cache_write",
        ),
        (
            "gen_ai.usage.reasoning.output_tokens",
            "llm.token_count.completion_details.reasoning",
        ),
    ] {
        if let Some(n) = int(from) {
            push(to, AttrValue::Int(n));
        }
    }
    if input.is_some() || output.is_some() {
        let total = input.unwrap_or(0).saturating_add(output.unwrap_or(0));
        push("llm.token_count.total", AttrValue::Int(total));
    }
    // The gateway's exact cost, so a reader need not price the call from its own table.
    for (from, to) in [
        ("cost.usd", "llm.cost.total"),
        ("sidetrace.cost.input_usd", "llm.cost.prompt"),
        ("sidetrace.cost.output_usd", "llm.cost.completion"),
    ] {
        if let Some(AttrValue::Double(usd)) = get(from) {
            push(to, AttrValue::Double(*usd));
        }
    }
    if let Some(version) = text("prompt.version") {
        push(
            "llm.prompt_template.version",
            AttrValue::Str(version.into()),
        );
    }
    if let Some(template) = text("prompt.template_id") {
        push("prompt.id", AttrValue::Str(template.into()));
    }
    let params: serde_json::Map<String, serde_json::Value> = attributes
        .iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix("gen_ai.request.")?;
            (name != "model").then(|| (name.to_string(), json(v)))
        })
        .collect();
    if !params.is_empty() {
        push(
            "llm.invocation_parameters",
            AttrValue::Str(serde_json::Value::Object(params).to_string()),
        );
    }
    // What OpenInference readers show as the span's metadata: the feature, the prompt and the
    // session's name and path, the caller's free properties, and what the gateway decided.
    let mut metadata = serde_json::Map::new();
    for (from, to) in [
        ("feature.id", "feature"),
        ("prompt.template_id", "prompt_template"),
        ("prompt.version", "prompt_version"),
        ("session.path", "session_path"),
        ("sidetrace.session.name", "session_name"),
        ("sidetrace.provider", "gateway_provider"),
        ("sidetrace.price.model", "price_model"),
        ("sidetrace.outcome", "outcome"),
    ] {
        if let Some(v) = text(from) {
            metadata.insert(to.into(), v.into());
        }
    }
    for (k, v) in attributes {
        if let (Some(key), AttrValue::Str(v)) = (k.strip_prefix("sidetrace.meta."), v) {
            metadata
                .entry(key.to_string())
                .or_insert_with(|| v.as_str().into());
        }
    }
    if !metadata.is_empty() {
        push(
            "metadata",
            AttrValue::Str(serde_json::Value::Object(metadata).to_string()),
        );
    }
    out
}

fn json(v: &AttrValue) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// OpenInference's hosting provider (`llm.provider`) and AI product (`llm.system`) for a
/// `gen_ai.provider.name`. Hosts that serve many makers' models (Groq, Together, OpenRouter,
/// Ollama, vLLM) name no product; Bedrock's comes from the model id's maker prefix.
fn oi_provider<'a>(gen_ai: &'a str, model: Option<&str>) -> (&'a str, Option<&'static str>) {
    match gen_ai {
        "openai" => ("openai", Some("openai")),
        "anthropic" => ("anthropic", Some("anthropic")),
        "azure.ai.openai" => ("azure", Some("openai")),
        "gcp.gemini" | "gcp.vertex_ai" | "gcp.gen_ai" => ("google", Some("vertexai")),
        "mistral_ai" => ("mistralai", Some("mistralai")),
        "x_ai" => ("xai", Some("xai")),
        "deepseek" => ("deepseek", Some("deepseek")),
        "aws.bedrock" => {
            // `anthropic.claude-...`, or with a region prefix `us.anthropic.claude-...`.
            let maker = model.and_then(|m| {
                m.split('.')
                    .find(|part| !matches!(*part, "us" | "eu" | "apac" | "global"))
            });
            let product = match maker {
                Some("anthropic") => Some("anthropic"),
                Some("amazon") => Some("amazon"),
                Some("meta") => Some("meta"),
                Some("mistral") => Some("mistralai"),
                Some("cohere") => Some("cohere"),
                Some("ai21") => Some("ai21"),
                Some("deepseek") => Some("deepseek"),
                _ => None,
            };
            ("aws", product)
        }
        other => (other, None),
    }
}

/// The v1.41 attributes as the latest text names them.
fn latest(attributes: &[(AttrKey, AttrValue)]) -> Vec<(AttrKey, AttrValue)> {
    let mut out = Vec::with_capacity(attributes.len() + 2);
    for (key, value) in attributes {
        let key: AttrKey = RENAMED
            .iter()
            .find(|(old, _)| old == key)
            .map_or_else(|| key.clone(), |(_, new)| (*new).into());
        let value = match (key.as_ref(), value) {
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
        out.push((key, value));
    }
    // Named prompts have attributes of their own in the latest text.
    for (from, to) in [
        ("prompt.template_id", "gen_ai.prompt.name"),
        ("prompt.version", "gen_ai.prompt.version"),
    ] {
        if let Some((_, v)) = attributes.iter().find(|(k, _)| k == from)
            && !attributes.iter().any(|(k, _)| k == to)
        {
            out.push((to.into(), v.clone()));
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

    fn get<'a>(attrs: &'a [(AttrKey, AttrValue)], key: &str) -> Option<&'a AttrValue> {
        attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn conventions(latest: bool) -> Conventions {
        Conventions::from_config(&ExportConfig {
            gen_ai_latest: latest,
            ..ExportConfig::default()
        })
    }

    fn with_openinference(latest: bool) -> Conventions {
        Conventions::from_config(&ExportConfig {
            gen_ai_latest: latest,
            conventions: vec!["gen_ai".into(), "openinference".into()],
            ..ExportConfig::default()
        })
    }

    fn llm_span() -> SpanRecord {
        SpanRecord::with_attributes(vec![
            ("gen_ai.operation.name", AttrValue::Str("chat".into())),
            ("gen_ai.provider.name", AttrValue::Str("aws.bedrock".into())),
            (
                "gen_ai.request.model",
                AttrValue::Str("us.anthropic.claude-sonnet-4-5-v1:0".into()),
            ),
            ("gen_ai.request.temperature", AttrValue::Double(0.5)),
            ("gen_ai.usage.input_tokens", AttrValue::Int(100)),
            ("gen_ai.usage.output_tokens", AttrValue::Int(20)),
            (
                "gen_ai.usage.cache_creation.input_tokens",
                AttrValue::Int(25),
            ),
            ("cost.usd", AttrValue::Double(0.003)),
            ("sidetrace.cost.input_usd", AttrValue::Double(0.001)),
            ("sidetrace.cost.output_usd", AttrValue::Double(0.002)),
            ("feature.id", AttrValue::Str("support".into())),
            ("prompt.template_id", AttrValue::Str("support.v3".into())),
            ("prompt.version", AttrValue::Str("7".into())),
            ("sidetrace.meta.tenant", AttrValue::Str("acme".into())),
            ("sidetrace.outcome", AttrValue::Str("completed".into())),
        ])
    }

    #[test]
    fn openinference_adds_kind_provider_tokens_exact_cost_prompt_and_metadata() {
        let s = llm_span();
        for latest in [false, true] {
            let a = with_openinference(latest).attributes(&s);
            let want = [
                ("openinference.span.kind", AttrValue::Str("LLM".into())),
                ("llm.provider", AttrValue::Str("aws".into())),
                ("llm.system", AttrValue::Str("anthropic".into())),
                (
                    "llm.model_name",
                    AttrValue::Str("us.anthropic.claude-sonnet-4-5-v1:0".into()),
                ),
                ("llm.token_count.prompt", AttrValue::Int(100)),
                ("llm.token_count.completion", AttrValue::Int(20)),
                ("llm.token_count.total", AttrValue::Int(120)),
                (
                    "llm.token_count.prompt_details.cache_write",
                    AttrValue::Int(25),
                ),
                ("llm.cost.total", AttrValue::Double(0.003)),
                ("llm.cost.prompt", AttrValue::Double(0.001)),
                ("llm.cost.completion", AttrValue::Double(0.002)),
                ("llm.prompt_template.version", AttrValue::Str("7".into())),
                ("prompt.id", AttrValue::Str("support.v3".into())),
            ];
            for (key, value) in want {
                assert_eq!(get(&a, key), Some(&value), "{key} (latest: {latest})");
            }
            let Some(AttrValue::Str(metadata)) = get(&a, "metadata") else {
                panic!("no metadata");
            };
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(metadata).unwrap(),
                serde_json::json!({"feature": "support", "prompt_template": "support.v3",
                    "prompt_version": "7", "tenant": "acme", "outcome": "completed"})
            );
            let Some(AttrValue::Str(params)) = get(&a, "llm.invocation_parameters") else {
                panic!("no invocation parameters");
            };
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(params).unwrap(),
                serde_json::json!({"temperature": 0.5})
            );
            // The GenAI attributes stay, in the chosen set.
            let cache_write = if latest {
                "gen_ai.usage.cache_write.input_tokens"
            } else {
                "gen_ai.usage.cache_creation.input_tokens"
            };
            assert_eq!(get(&a, cache_write), Some(&AttrValue::Int(25)));
        }
        // Off by default.
        assert!(
            get(
                &conventions(false).attributes(&s),
                "openinference.span.kind"
            )
            .is_none()
        );
    }

    #[test]
    fn openinference_kinds_follow_the_operation() {
        let kind = |attrs: Vec<(&str, AttrValue)>| {
            get(
                &with_openinference(false).attributes(&SpanRecord::with_attributes(attrs)),
                "openinference.span.kind",
            )
            .cloned()
        };
        let op = |name: &str| ("gen_ai.operation.name", AttrValue::Str(name.into()));
        for (name, want) in [
            ("chat", "LLM"),
            ("text_completion", "LLM"),
            ("generate_content", "LLM"),
            ("embeddings", "EMBEDDING"),
            ("execute_tool", "TOOL"),
        ] {
            assert_eq!(kind(vec![op(name)]), Some(AttrValue::Str(want.into())));
        }
        assert_eq!(
            kind(vec![(
                "gen_ai.evaluation.name",
                AttrValue::Str("helpfulness".into())
            )]),
            Some(AttrValue::Str("EVALUATOR".into()))
        );
        assert_eq!(
            kind(vec![op("proxy")]),
            None,
            "a passthrough call is no model call"
        );
        let tool = SpanRecord::with_attributes(vec![
            op("execute_tool"),
            ("gen_ai.tool.name", AttrValue::Str("get_weather".into())),
            ("gen_ai.tool.call.id", AttrValue::Str("call_1".into())),
        ]);
        let a = with_openinference(false).attributes(&tool);
        assert_eq!(
            get(&a, "tool.name"),
            Some(&AttrValue::Str("get_weather".into()))
        );
        assert_eq!(get(&a, "tool.id"), Some(&AttrValue::Str("call_1".into())));
    }

    #[test]
    fn v1_41_is_the_default_and_leaves_the_span_as_recorded() {
        let s = SpanRecord::with_attributes(vec![
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
        let s = SpanRecord::with_attributes(vec![
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
        let s = SpanRecord::with_attributes(vec![("gen_ai.request.top_k", AttrValue::Double(0.5))]);
        assert_eq!(get(&c.attributes(&s), "gen_ai.request.top_k"), None);
    }
}
