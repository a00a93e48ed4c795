//! Which price-table entry a reported model name belongs to: exact names first, then the longest
//! family whose dated snapshot or alias the name is.

use std::collections::BTreeMap;

/// Characters that may separate a family id from a snapshot or alias suffix.
const BOUNDARIES: &[char] = &['-', '.', ':', '@'];

/// Words that, anywhere in a suffix, name a different (differently priced) product rather than a
/// snapshot of the family: `gpt-4o-mini` is not a `gpt-4o`, `o3-pro` not an `o3`, `grok-4-fast`
/// not a `grok-4`. Such a name gets a price only from an entry of its own.
const VARIANT_WORDS: &[&str] = &[
    "audio",
    "codex",
    "deep",
    "embed",
    "embedding",
    "fast",
    "image",
    "lite",
    "max",
    "mini",
    "nano",
    "pro",
    "realtime",
    "search",
    "transcribe",
    "tts",
    "turbo",
    "vision",
];

/// The names to try for a reported model, most specific first, lowercased: the name itself;
/// without a path prefix (`openai/gpt-4o`, `models/gemini-2.5-pro`, an ARN); without leading
/// letters-only dotted segments (Bedrock's `us.anthropic.`, `global.anthropic.`, `mistral.`).
pub fn candidates(model: &str) -> Vec<String> {
    let full = model.trim().to_ascii_lowercase();
    let mut out = Vec::with_capacity(3);
    let last = full.rsplit('/').next().unwrap_or_default().to_string();
    let mut bare = last.as_str();
    while let Some((head, rest)) = bare.split_once('.') {
        if head.is_empty() || rest.is_empty() || !head.bytes().all(|b| b.is_ascii_lowercase()) {
            break;
        }
        bare = rest;
    }
    let bare = bare.to_string();
    for name in [full, last, bare] {
        if !name.is_empty() && !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// Whether `suffix` (what follows a family id in a name, starting at a boundary) marks a
/// snapshot or alias of that family (`-2024-08-06`, `-20250929-v1:0`, `-latest`,
/// `-preview-05-20`, `-001`, `@20250929`) rather than another model.
fn is_snapshot_suffix(suffix: &str) -> bool {
    let mut chars = suffix.chars();
    let Some(sep) = chars.next() else {
        return true;
    };
    if !BOUNDARIES.contains(&sep) {
        return false;
    }
    let rest = chars.as_str();
    let mut parts = rest.split(BOUNDARIES);
    let first = parts.next().unwrap_or_default();
    if first.is_empty() {
        return false;
    }
    // `gpt-5` → `gpt-5.4`: a new version, not a snapshot.
    if sep == '.' && first.starts_with(|c: char| c.is_ascii_digit()) {
        return false;
    }
    // `claude-opus-4` → `claude-opus-4-1`, `grok-4` → `grok-4-1-fast`: a minor version. Dates
    // and snapshot numbers have three digits or more (`-001`, `-0125`, `-2024-08-06`).
    if first.len() <= 2 && first.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    !rest
        .split(BOUNDARIES)
        .any(|part| VARIANT_WORDS.contains(&part))
}

/// Looks `model` up in `index` (lowercased names to entries): for each candidate name, an exact
/// key, then the longest key that the name extends with a snapshot suffix.
pub fn find<'a, T>(index: &'a BTreeMap<String, T>, model: &str) -> Option<(&'a str, &'a T)> {
    for name in candidates(model) {
        if let Some((key, value)) = index.get_key_value(&name) {
            return Some((key.as_str(), value));
        }
        // Longest first: every boundary position, from the end.
        let cuts = name
            .char_indices()
            .filter(|&(_, c)| BOUNDARIES.contains(&c))
            .map(|(i, _)| i)
            .collect::<Vec<_>>();
        for &cut in cuts.iter().rev() {
            if let Some((key, value)) = index.get_key_value(&name[..cut])
                && is_snapshot_suffix(&name[cut..])
            {
                return Some((key.as_str(), value));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAMILIES: &[&str] = &[
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4o-2024-05-13",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-5",
        "gpt-5.4",
        "o3",
        "o3-mini",
        "o4-mini",
        "claude-sonnet-4-5",
        "claude-sonnet-4",
        "claude-opus-4",
        "claude-haiku-4-5",
        "gemini-2.5-flash",
        "gemini-2.5-flash-lite",
        "gemini-2.5-pro",
        "gemini-2.0-flash",
        "mistral-large",
        "grok-4",
        "grok-4-fast",
        "gpt-oss-120b",
        "deepseek-chat",
    ];

    fn lookup(model: &str) -> Option<&'static str> {
        let index: BTreeMap<String, &'static str> =
            FAMILIES.iter().map(|f| (f.to_string(), *f)).collect();
        find(&index, model).map(|(_, v)| *v)
    }

    #[test]
    fn family_matching_table() {
        let cases: &[(&str, Option<&str>)] = &[
            // exact
            ("gpt-4o", Some("gpt-4o")),
            ("GPT-4o", Some("gpt-4o")),
            ("o3", Some("o3")),
            // dated snapshots
            ("gpt-4o-2024-08-06", Some("gpt-4o")),
            ("gpt-4o-2024-11-20", Some("gpt-4o")),
            ("gpt-4o-mini-2024-07-18", Some("gpt-4o-mini")),
            ("gpt-4.1-2025-04-14", Some("gpt-4.1")),
            ("gpt-4.1-mini-2025-04-14", Some("gpt-4.1-mini")),
            ("o3-2025-04-16", Some("o3")),
            ("o3-mini-2025-01-31", Some("o3-mini")),
            ("o4-mini-2025-04-16", Some("o4-mini")),
            ("gpt-5-2025-08-07", Some("gpt-5")),
            ("gpt-5.4-2026-03-05", Some("gpt-5.4")),
            ("claude-sonnet-4-5-20250929", Some("claude-sonnet-4-5")),
            ("claude-sonnet-4-20250514", Some("claude-sonnet-4")),
            ("claude-haiku-4-5-20251001", Some("claude-haiku-4-5")),
            ("claude-sonnet-4-5@20250929", Some("claude-sonnet-4-5")),
            // a dated snapshot with an entry of its own beats its family
            ("gpt-4o-2024-05-13", Some("gpt-4o-2024-05-13")),
            // Gemini versions and previews, path prefix
            ("gemini-2.5-flash-preview-05-20", Some("gemini-2.5-flash")),
            ("gemini-2.5-flash-001", Some("gemini-2.5-flash")),
            (
                "gemini-2.5-flash-lite-preview-09-2025",
                Some("gemini-2.5-flash-lite"),
            ),
            ("models/gemini-2.5-pro", Some("gemini-2.5-pro")),
            ("gemini-2.5-pro-exp-03-25", Some("gemini-2.5-pro")),
            ("gemini-2.0-flash-001", Some("gemini-2.0-flash")),
            // Bedrock ids, ARNs, provider prefixes
            (
                "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
                Some("claude-sonnet-4-5"),
            ),
            (
                "anthropic.claude-sonnet-4-5-20250929-v1:0",
                Some("claude-sonnet-4-5"),
            ),
            (
                "global.anthropic.claude-haiku-4-5-20251001-v1:0",
                Some("claude-haiku-4-5"),
            ),
            (
                "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-sonnet-4-5-20250929-v1:0",
                Some("claude-sonnet-4-5"),
            ),
            ("openai/gpt-4o", Some("gpt-4o")),
            ("openai/gpt-oss-120b", Some("gpt-oss-120b")),
            // aliases
            ("mistral-large-latest", Some("mistral-large")),
            ("mistral-large-2411", Some("mistral-large")),
            ("grok-4-0709", Some("grok-4")),
            ("grok-4-latest", Some("grok-4")),
            ("grok-4-fast-reasoning", Some("grok-4-fast")),
            ("grok-4-fast-non-reasoning", Some("grok-4-fast")),
            // negatives: other products, new versions, unknown names
            ("gpt-4o-mini-tts", None),
            ("gpt-4o-realtime-preview", None),
            ("gpt-4o-audio-preview-2024-12-17", None),
            ("gpt-4o-search-preview", None),
            ("gpt-4.1-nano", None),
            ("gpt-5-pro", None),
            ("gpt-5-mini-2025-08-07", None),
            ("gpt-5.5", None),
            ("gpt-5.1-codex-mini", None),
            ("gpt-4", None),
            ("gpt-4-turbo", None),
            ("o3-pro", None),
            ("o3-deep-research", None),
            ("o4-mini-deep-research-2025-06-26", None),
            ("claude-opus-4-1-20250805", None),
            ("claude-opus-4-5", None),
            ("claude-sonnet-4-6", None),
            ("gemini-2.5-flash-image", None),
            ("gemini-2.5-flash-native-audio-latest", None),
            ("gemini-2.0-flash-lite", None),
            ("gemini-3-pro-preview", None),
            ("grok-4-1-fast-reasoning", None),
            ("grok-4.3", None),
            ("gpt-4omni", None),
            ("ft:gpt-4o-mini-2024-07-18:acme::abc123", None),
            ("llama3.1:8b", None),
            ("", None),
            ("   ", None),
            ("gpt-4o-", None),
        ];
        let mut failures = Vec::new();
        for (model, want) in cases {
            let got = lookup(model);
            if got != *want {
                failures.push(format!("{model:?}: got {got:?}, want {want:?}"));
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    #[test]
    fn candidates_strip_path_and_bedrock_prefixes_in_order() {
        assert_eq!(
            candidates("us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
            [
                "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
                "claude-sonnet-4-5-20250929-v1:0"
            ]
        );
        assert_eq!(candidates("openai/gpt-4o"), ["openai/gpt-4o", "gpt-4o"]);
        assert_eq!(candidates("gpt-4.1"), ["gpt-4.1"]);
        assert_eq!(candidates("mistral.mistral-large-2407-v1:0").len(), 2);
    }
}
