//! Prices through the library: fixture bodies parsed by the gateway's extractors, priced by the
//! built-in tables and by tables changed in the config. Every expected cost is computed by hand in
//! the comment above it, in micro-USD (µ$ = tokens × USD per million tokens).

use std::{
    path::Path,
    time::{Duration, SystemTime},
};

use serde_json::Value;
use sidetrace::{
    Config,
    call::{CallRecord, Outcome, RequestInfo},
    cost::{PriceBook, PriceBookCell, Priced, UsdPerMillion},
    format::{BodyParser, ParserLimits, ResponseRecord, Usage},
    provider::{ProviderSpec, WireFormat, builtin_specs},
    trace::context::{TraceContext, TraceSource},
};

/// A fixture parsed as the gateway parses it, plus the request model it names (body or path).
struct Fixture {
    record: ResponseRecord,
    request_model: Option<String>,
}

fn fixture(name: &str) -> Fixture {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/providers");
    let path = dir.join(format!("{name}.expect.json"));
    let expect: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let body_file = path
        .parent()
        .unwrap()
        .join(expect["body_file"].as_str().unwrap());
    let body = std::fs::read(body_file).unwrap();
    let format = match expect["api"].as_str().unwrap() {
        "chat_completions" => WireFormat::ChatCompletions,
        "responses" => WireFormat::Responses,
        "messages" => WireFormat::Messages,
        "generate_content" => WireFormat::GenerateContent,
        "converse_stream" => WireFormat::ConverseStream,
        other => panic!("no format for {other}"),
    };
    let provider = match expect["provider"].as_str().unwrap() {
        "azure_openai" => "azure",
        other => other,
    };
    let mut parser = BodyParser::for_response(
        format,
        sidetrace::provider::builtin_quirks(provider),
        expect["content_type"].as_str(),
        ParserLimits::default(),
    )
    .unwrap();
    parser.feed(&body);
    let record = parser.finish(true);
    let request = &expect["request"];
    let request_model = request["body"]["model"]
        .as_str()
        .map(str::to_string)
        .or_else(|| {
            // Bedrock and Azure name the model (deployment) in the path, as the gateway reads it.
            let path = request["path"].as_str()?;
            let rest = path
                .split_once("/model/")
                .or_else(|| path.split_once("/deployments/"))?
                .1;
            Some(rest.split('/').next()?.to_string())
        });
    Fixture {
        record,
        request_model,
    }
}

fn builtin_book() -> PriceBook {
    PriceBook::from_config(&Config::default()).unwrap()
}

fn price(book: &PriceBook, provider: &str, f: &Fixture) -> Priced {
    book.price(
        provider,
        f.record.model.as_deref(),
        f.request_model.as_deref(),
        &f.record.usage,
    )
}

fn cost_of(priced: &Priced) -> String {
    priced.cost.expect("priced").to_string()
}

fn usage(input: u64, cached: u64, output: u64, reasoning: u64) -> Usage {
    Usage {
        input_tokens: Some(input),
        output_tokens: Some(output),
        cached_input_tokens: Some(cached),
        reasoning_tokens: Some(reasoning),
        ..Usage::default()
    }
}

#[test]
fn openai_o4_mini_fixture_costs_cached_and_reasoning_tokens_exactly() {
    let f = fixture("openai/chat_nonstream");
    let p = price(&builtin_book(), "openai", &f);
    assert_eq!(p.matched_model.as_deref(), Some("o4-mini"));
    // o4-mini 1.10 in / 0.275 cached / 4.40 out. 1310 in of which 1152 cached, 615 out of
    // which 448 reasoning (billed as output):
    //   (1310 − 1152) × 1.10 = 158 × 1.10 = 173.8 µ$
    //   1152 × 0.275                     = 316.8 µ$
    //   615 × 4.40                       = 2706  µ$
    //   total 3196.6 µ$ = $0.0031966
    assert_eq!(cost_of(&p), "0.0031966");
}

#[test]
fn anthropic_cache_read_and_5m_write_fixture_costs_exactly() {
    let f = fixture("anthropic/stream_cache_tokens");
    assert_eq!(f.record.usage.cache_creation_1h_input_tokens, Some(0));
    let p = price(&builtin_book(), "anthropic", &f);
    assert_eq!(p.matched_model.as_deref(), Some("claude-sonnet-4-5"));
    // claude-sonnet-4-5 3.00 in / 0.30 read / 3.75 5m write / 15.00 out. 12147 in =
    // 12 uncached + 10240 read + 1895 written (all 5m); 90 out:
    //   12 × 3.00      = 36      µ$
    //   10240 × 0.30   = 3072    µ$
    //   1895 × 3.75    = 7106.25 µ$
    //   90 × 15.00     = 1350    µ$
    //   total 11564.25 µ$ = $0.01156425
    assert_eq!(cost_of(&p), "0.01156425");
}

#[test]
fn anthropic_1h_cache_write_fixture_costs_exactly() {
    // nonstream.json: usage.cache_creation = {ephemeral_5m: 0, ephemeral_1h: 3120}.
    let f = fixture("anthropic/nonstream");
    assert_eq!(f.record.usage.cache_creation_1h_input_tokens, Some(3120));
    let p = price(&builtin_book(), "anthropic", &f);
    assert_eq!(p.matched_model.as_deref(), Some("claude-opus-4-5"));
    // claude-opus-4-5 5.00 in / 10.00 1h write / 25.00 out. 3155 in = 35 uncached + 3120
    // written with the 1h TTL; 41 out:
    //   35 × 5.00     = 175   µ$
    //   3120 × 10.00  = 31200 µ$
    //   41 × 25.00    = 1025  µ$
    //   total 32400 µ$ = $0.0324
    assert_eq!(cost_of(&p), "0.0324");
}

#[test]
fn deepseek_cache_hit_fixture_costs_exactly() {
    let f = fixture("deepseek/chat_stream_cache_hit");
    let p = price(&builtin_book(), "deepseek", &f);
    assert_eq!(p.matched_model.as_deref(), Some("deepseek-chat"));
    // deepseek-chat 0.28 miss / 0.028 hit / 0.42 out. 1520 in of which 1408 hit; 30 out:
    //   112 × 0.28    = 31.36  µ$
    //   1408 × 0.028  = 39.424 µ$
    //   30 × 0.42     = 12.6   µ$
    //   total 83.384 µ$ = $0.000083384
    assert_eq!(cost_of(&p), "0.000083384");
}

#[test]
fn gemini_fixture_below_200k_input_uses_the_base_rates() {
    let f = fixture("gemini/nonstream");
    let p = price(&builtin_book(), "gemini", &f);
    assert_eq!(p.matched_model.as_deref(), Some("gemini-2.5-pro"));
    // gemini-2.5-pro ≤200k: 1.25 in / 0.125 cached / 10.00 out. 34812 in of which 32768
    // cached; 1504 out including 1290 thinking:
    //   2044 × 1.25    = 2555  µ$
    //   32768 × 0.125  = 4096  µ$
    //   1504 × 10.00   = 15040 µ$
    //   total 21691 µ$ = $0.021691
    assert_eq!(cost_of(&p), "0.021691");
}

#[test]
fn gemini_long_context_tier_applies_to_the_whole_request_above_200k_input_tokens() {
    let book = builtin_book();
    let price = |u: &Usage| {
        book.price("gemini", Some("gemini-2.5-pro"), None, u)
            .cost
            .unwrap()
            .to_string()
    };
    // >200k: 2.50 in / 0.25 cached / 15.00 out, for every token of the request.
    // 250000 in of which 100000 cached; 2000 out of which 1500 thinking:
    //   150000 × 2.50  = 375000 µ$
    //   100000 × 0.25  = 25000  µ$
    //   2000 × 15.00   = 30000  µ$
    //   total 430000 µ$ = $0.43
    assert_eq!(price(&usage(250_000, 100_000, 2_000, 1_500)), "0.43");
    // Exactly 200000 is not above the threshold: base rates.
    //   100000 × 1.25 + 100000 × 0.125 + 2000 × 10 = 125000 + 12500 + 20000 = 157500 µ$
    assert_eq!(price(&usage(200_000, 100_000, 2_000, 1_500)), "0.1575");
    // Through the path-prefixed name Gemini's OpenAI endpoint reports.
    let p = book.price(
        "gemini",
        Some("models/gemini-2.5-pro"),
        None,
        &usage(200_001, 0, 0, 0),
    );
    // 200001 × 2.50 = 500002.5 µ$
    assert_eq!(cost_of(&p), "0.5000025");
}

#[test]
fn a_separate_reasoning_price_applies_only_to_reasoning_tokens() {
    let config = Config::from_toml(
        r#"
[providers.lab]
base_url = "http://127.0.0.1:9"
models = [{ name = "thinker", input = "1.00", output = "2.00", reasoning = "8.00" }]
"#,
        "c.toml",
    )
    .unwrap();
    let book = PriceBook::from_config(&config).unwrap();
    // 1000 in × 1.00 = 1000 µ$; (500 − 300) plain out × 2.00 = 400 µ$;
    // 300 reasoning × 8.00 = 2400 µ$; total 3800 µ$ = $0.0038.
    let p = book.price("lab", Some("thinker"), None, &usage(1000, 0, 500, 300));
    assert_eq!(cost_of(&p), "0.0038");
}

#[test]
fn bedrock_geographic_profile_costs_ten_percent_more_than_global() {
    let f = fixture("bedrock/converse_stream");
    assert_eq!(f.record.model, None, "the stream never names the model");
    assert_eq!(
        f.request_model.as_deref(),
        Some("us.anthropic.claude-sonnet-4-5-20250929-v1:0")
    );
    let book = builtin_book();
    let p = price(&book, "bedrock", &f);
    assert_eq!(
        p.matched_model.as_deref(),
        Some("us.anthropic.claude-sonnet-4-5")
    );
    // us. profile 3.30 in / 0.33 read / 16.50 out. 1847 in of which 1824 read; 29 out:
    //   23 × 3.30     = 75.9   µ$
    //   1824 × 0.33   = 601.92 µ$
    //   29 × 16.50    = 478.5  µ$
    //   total 1156.32 µ$ = $0.00115632
    assert_eq!(cost_of(&p), "0.00115632");
    // The global profile at the base price: 23 × 3 + 1824 × 0.30 + 29 × 15
    //   = 69 + 547.2 + 435 = 1051.2 µ$.
    let global = book.price(
        "bedrock",
        None,
        Some("global.anthropic.claude-sonnet-4-5-20250929-v1:0"),
        &f.record.usage,
    );
    assert_eq!(global.matched_model.as_deref(), Some("claude-sonnet-4-5"));
    assert_eq!(cost_of(&global), "0.0010512");
}

#[test]
fn failed_and_cut_calls_are_priced_on_the_usage_they_reported() {
    let book = builtin_book();
    // Overloaded after message_start: only its usage (2048 in, placeholder 1 out) arrived.
    // 2048 × 3.00 + 1 × 15.00 = 6144 + 15 = 6159 µ$.
    let f = fixture("anthropic/stream_overloaded_error");
    assert!(!f.record.stream_completed);
    assert_eq!(cost_of(&price(&book, "anthropic", &f)), "0.006159");
    // Mid-stream error before any usage: the model is known, the cost is not (not 0).
    let f = fixture("openai/chat_stream_midstream_error");
    let p = price(&book, "openai", &f);
    assert_eq!(p.matched_model.as_deref(), Some("gpt-4.1-mini"));
    assert_eq!(p.cost, None);
    // An incomplete Responses stream (max_output_tokens) still reports usage.
    let f = fixture("openai/responses_stream_incomplete");
    let p = price(&book, "openai", &f);
    assert!(p.cost.is_some(), "{p:?}");
}

#[test]
fn unknown_models_are_unpriced_never_zero() {
    let book = builtin_book();
    let u = usage(100, 0, 100, 0);
    for (provider, model) in [
        ("openai", "gpt-4o-mini-transcribe"),
        ("openai", "ft:gpt-4o-mini-2024-07-18:acme::x1"),
        ("anthropic", "claude-2.1"),
        ("openrouter", "openai/gpt-4o"),
        ("together", "meta-llama/Llama-3.3-70B-Instruct-Turbo"),
        ("ollama", "llama3.1:8b"),
        ("nonesuch", "gpt-4o"),
    ] {
        let p = book.price(provider, Some(model), None, &u);
        assert_eq!(p, Priced::default(), "{provider}/{model}");
    }
}

#[test]
fn family_matching_on_the_built_in_tables() {
    let book = builtin_book();
    let cases = [
        ("openai", "gpt-4o-2024-08-06", Some("gpt-4o")),
        ("openai", "gpt-4o-mini-2024-07-18", Some("gpt-4o-mini")),
        ("openai", "gpt-4o-2024-05-13", Some("gpt-4o-2024-05-13")),
        ("openai", "gpt-5-codex", Some("gpt-5")),
        ("openai", "gpt-5.1-codex-mini", None),
        ("openai", "gpt-5-chat-latest", Some("gpt-5")),
        ("openai", "o3-pro-2025-06-10", Some("o3-pro")),
        (
            "anthropic",
            "claude-sonnet-4-5-20250929",
            Some("claude-sonnet-4-5"),
        ),
        ("anthropic", "claude-sonnet-4-0", Some("claude-sonnet-4")),
        (
            "anthropic",
            "claude-opus-4-1-20250805",
            Some("claude-opus-4-1"),
        ),
        ("anthropic", "claude-opus-4-20250514", Some("claude-opus-4")),
        ("anthropic", "claude-opus-4-9", None),
        (
            "gemini",
            "gemini-2.5-flash-preview-05-20",
            Some("gemini-2.5-flash"),
        ),
        ("gemini", "gemini-2.5-flash-001", Some("gemini-2.5-flash")),
        ("gemini", "models/gemini-2.5-pro", Some("gemini-2.5-pro")),
        ("gemini", "gemini-3-pro-preview", Some("gemini-3-pro")),
        ("gemini", "gemini-3-pro-image-preview", None),
        ("mistral", "mistral-large-latest", Some("mistral-large")),
        ("mistral", "mistral-large-2411", Some("mistral-large-2411")),
        (
            "mistral",
            "mistral-medium-2505",
            Some("mistral-medium-2508"),
        ),
        ("mistral", "codestral-2508", Some("codestral")),
        ("mistral", "codestral-embed", None),
        ("deepseek", "deepseek-reasoner", Some("deepseek-reasoner")),
        ("groq", "openai/gpt-oss-120b", Some("gpt-oss-120b")),
        (
            "groq",
            "meta-llama/llama-4-scout-17b-16e-instruct",
            Some("llama-4-scout-17b-16e-instruct"),
        ),
        (
            "groq",
            "moonshotai/kimi-k2-instruct-0905",
            Some("kimi-k2-instruct"),
        ),
        ("xai", "grok-4-0709", Some("grok-4")),
        ("xai", "grok-4-fast-non-reasoning", Some("grok-4-fast")),
        ("xai", "grok-4-1-fast-reasoning", Some("grok-4-1-fast")),
        ("xai", "grok-3-mini-fast", None),
        (
            "bedrock",
            "anthropic.claude-haiku-4-5-20251001-v1:0",
            Some("claude-haiku-4-5"),
        ),
        (
            "bedrock",
            "eu.anthropic.claude-opus-4-5-20251101-v1:0",
            Some("us.anthropic.claude-opus-4-5"),
        ),
        (
            "bedrock",
            "us.anthropic.claude-sonnet-4-20250514-v1:0",
            Some("claude-sonnet-4"),
        ),
        ("azure", "gpt-4o-2024-11-20", Some("gpt-4o")),
    ];
    let mut failures = Vec::new();
    for (provider, model, want) in cases {
        let got = book.lookup(provider, model).map(|m| m.name.as_str());
        if got != want {
            failures.push(format!("{provider}/{model}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn a_config_model_price_replaces_the_built_in_price_and_adds_private_models() {
    let config = Config::from_toml(
        r#"
[providers.openai]
models = [
  { name = "gpt-4o", input = "1.00", output = "4.00" },
  { name = "acme-private-1", input = "0.50", output = "0.50" },
]
"#,
        "c.toml",
    )
    .unwrap();
    let book = PriceBook::from_config(&config).unwrap();
    let u = usage(1000, 0, 100, 0);
    // Negotiated: 1000 × 1.00 + 100 × 4.00 = 1400 µ$ (the list price would be 3500 µ$).
    let p = book.price("openai", Some("gpt-4o-2024-08-06"), None, &u);
    assert_eq!(cost_of(&p), "0.0014");
    // The replacement has no cached price: cached input now falls back to its input price.
    let m = book.lookup("openai", "gpt-4o").unwrap();
    assert_eq!(m.cached_input, None);
    // A private model: 1000 × 0.50 + 100 × 0.50 = 550 µ$.
    let p = book.price("openai", Some("acme-private-1"), None, &u);
    assert_eq!(cost_of(&p), "0.00055");
    // Everything else keeps its built-in price: gpt-4o-mini 1000 × 0.15 + 100 × 0.60 = 210 µ$.
    let p = book.price("openai", Some("gpt-4o-mini"), None, &u);
    assert_eq!(cost_of(&p), "0.00021");
}

#[test]
fn a_config_price_for_an_alias_takes_that_name_over() {
    let config = Config::from_toml(
        "[[providers.anthropic.models]]\nname = \"claude-sonnet-4-0\"\ninput = \"2\"\noutput = \"2\"\n",
        "c.toml",
    )
    .unwrap();
    let book = PriceBook::from_config(&config).unwrap();
    assert_eq!(
        book.lookup("anthropic", "claude-sonnet-4-0").unwrap().input,
        UsdPerMillion::parse("2").unwrap()
    );
    assert_eq!(
        book.lookup("anthropic", "claude-sonnet-4-20250514")
            .unwrap()
            .name,
        "claude-sonnet-4"
    );
}

#[test]
fn azure_prices_openai_models_and_maps_deployments_to_priced_models() {
    let f = fixture("azure_openai/chat_stream_prompt_filter_first");
    assert_eq!(f.request_model.as_deref(), Some("prod-gpt4o"));
    // No mapping: the response names gpt-4o-2024-11-20, priced from OpenAI's table.
    // 212 × 2.50 + 26 × 10.00 = 530 + 260 = 790 µ$.
    let p = price(&builtin_book(), "azure", &f);
    assert_eq!(p.matched_model.as_deref(), Some("gpt-4o"));
    assert_eq!(cost_of(&p), "0.00079");

    // A Data Zone deployment at its own price, mapped by deployment name: the explicit mapping
    // wins over the response model. 212 × 2.75 + 26 × 11.00 = 583 + 286 = 869 µ$.
    let config = Config::from_toml(
        r#"
[providers.azure]
models = [{ name = "gpt-4o-datazone", input = "2.75", cached_input = "1.375", output = "11.00" }]

[providers.azure.deployments]
prod-gpt4o = "gpt-4o-datazone"
batch-mini = "gpt-4o-mini"
"#,
        "c.toml",
    )
    .unwrap();
    let book = PriceBook::from_config(&config).unwrap();
    let p = price(&book, "azure", &f);
    assert_eq!(p.matched_model.as_deref(), Some("gpt-4o-datazone"));
    assert_eq!(cost_of(&p), "0.000869");
    // A deployment mapped to an OpenAI model, seen only in the request (classic path, no model
    // in the response): 1000 × 0.15 + 100 × 0.60 = 210 µ$.
    let p = book.price("azure", None, Some("batch-mini"), &usage(1000, 0, 100, 0));
    assert_eq!(p.matched_model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(cost_of(&p), "0.00021");
}

#[test]
fn a_deployment_mapped_to_an_unpriced_model_is_a_config_error() {
    let config = Config::from_toml(
        "[providers.azure.deployments]\nprod = \"gpt-9-imaginary\"\n",
        "c.toml",
    )
    .unwrap();
    let err = PriceBook::from_config(&config).unwrap_err().to_string();
    assert!(err.contains("prod") && err.contains("no price"), "{err}");
}

#[test]
fn price_typos_in_the_config_fail_loudly() {
    for text in [
        "[providers.openai]\nmodels = [{ name = \"gpt-4o\", input = 2.5, output = \"10\" }]\n",
        "[providers.openai]\nmodels = [{ name = \"gpt-4o\", input = \"2.5\", ouput = \"10\" }]\n",
        "[providers.openai]\nmodels = [{ name = \"gpt-4o\", input = \"2,5\", output = \"10\" }]\n",
    ] {
        let result = Config::from_toml(text, "c.toml").and_then(|c| PriceBook::from_config(&c));
        assert!(result.is_err(), "{text}");
    }
}

#[test]
fn rebuilding_the_book_from_changed_specs_gives_the_new_price() {
    let u = usage(1_000_000, 0, 0, 0);
    let cell = PriceBookCell::new(builtin_book());
    let before = cell.load();
    // 1M × 2.50 = $2.50 at list price.
    assert_eq!(
        cost_of(&before.price("openai", Some("gpt-4o"), None, &u)),
        "2.5"
    );

    let reloaded = Config::from_toml(
        "[providers.openai]\nmodels = [{ name = \"gpt-4o\", input = \"2.00\", output = \"8.00\" }]\n",
        "c.toml",
    )
    .unwrap();
    cell.store(PriceBook::from_specs(&reloaded.provider_specs().unwrap()).unwrap());
    // 1M × 2.00 = $2 after the reload; a reader holding the old book keeps its prices.
    assert_eq!(
        cost_of(&cell.load().price("openai", Some("gpt-4o"), None, &u)),
        "2"
    );
    assert_eq!(
        cost_of(&before.price("openai", Some("gpt-4o"), None, &u)),
        "2.5"
    );
}

#[test]
fn price_call_reads_provider_models_and_usage_from_the_record() {
    let f = fixture("azure_openai/chat_stream_prompt_filter_first");
    let call = CallRecord {
        provider: "azure".into(),
        gen_ai_provider: "azure.ai.openai".into(),
        format: WireFormat::ChatCompletions,
        method: "POST".into(),
        path: "/azure/res/openai/deployments/prod-gpt4o/chat/completions".into(),
        server_address: "res.openai.azure.com".into(),
        server_port: 443,
        request: RequestInfo {
            model: f.request_model.clone(),
            ..RequestInfo::default()
        },
        status: Some(200),
        response: Some(f.record.clone()),
        outcome: Outcome::Completed,
        error_type: None,
        started_at: SystemTime::UNIX_EPOCH,
        duration: Duration::ZERO,
        time_to_headers: None,
        time_to_first_chunk: None,
        time_to_first_token: None,
        trace: TraceContext {
            trace_id: [1; 16],
            span_id: [1; 8],
            parent_span_id: None,
            parent_is_remote: false,
            flags: 1,
            trace_state: None,
            source: TraceSource::New,
        },
        cost_pico_usd: None,
        priced_model: None,
        input_cost_pico_usd: None,
        metadata: Default::default(),
        content: None,
        kept_content: None,
    };
    let book = builtin_book();
    assert_eq!(book.price_call(&call), price(&book, "azure", &f));
    assert_eq!(call.model(), Some("gpt-4o-2024-11-20"));
    // No response inspected: nothing to price.
    let call = CallRecord {
        response: None,
        ..call
    };
    assert_eq!(book.price_call(&call), Priced::default());
}

#[test]
fn every_built_in_price_parses_and_names_its_source_and_date() {
    let mut failures = Vec::new();
    for (file, text) in builtin_specs() {
        let spec: ProviderSpec = toml::from_str(text).unwrap();
        for m in &spec.models {
            let source = m.source.as_deref().unwrap_or("");
            if !source.starts_with("https://") {
                failures.push(format!("{file}: {}: source {source:?}", m.name));
            }
            if m.as_of.is_none() {
                failures.push(format!("{file}: {}: no as_of", m.name));
            }
            if m.input.micros() == 0 {
                failures.push(format!("{file}: {}: free input", m.name));
            }
            if let Some(t) = &m.long_context
                && (t.input < m.input || t.output < m.output)
            {
                failures.push(format!("{file}: {}: long context is cheaper", m.name));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    // And the whole set builds into a book (unique names, valid dates, deployments resolve).
    builtin_book();
}

#[test]
fn built_in_tables_cover_at_least_40_models_across_the_seven_vendors() {
    let book = builtin_book();
    let vendors = [
        "openai",
        "anthropic",
        "gemini",
        "mistral",
        "deepseek",
        "groq",
        "xai",
    ];
    let counts: Vec<(&str, usize)> = vendors.iter().map(|v| (*v, book.models(v).len())).collect();
    for (vendor, n) in &counts {
        assert!(*n >= 2, "{vendor} has {n} models");
    }
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    assert!(total >= 40, "{total} models: {counts:?}");
    // Self-hosted and resale providers carry no prices of their own.
    for none in ["azure", "openrouter", "together", "vllm", "ollama"] {
        assert!(book.models(none).is_empty(), "{none}");
    }
}
