//! Call metadata from request headers: sidetrace's own `x-sidetrace-*` headers, W3C `baggage`
//! keys and the migration aliases of other gateways (Helicone, Portkey, LiteLLM). When several
//! say the same thing, one order decides ([`ALIAS_ORDER`]): the gateway's own headers, then
//! `baggage`, then each peer's in turn. Values are bounded in length and count so a client
//! cannot blow up memory or cardinality; what is cut is counted.

use http::HeaderMap;
use serde::{Deserialize, Serialize};

pub use crate::config::CaptureLevel;

/// Longest value kept (characters); longer ones are truncated.
pub const MAX_VALUE_CHARS: usize = 256;
/// Most `meta` keys and tags kept per call.
pub const MAX_KEYS: usize = 32;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallMetadata {
    pub feature: Option<String>,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub session_path: Option<String>,
    /// A human name for the session (`Helicone-Session-Name`, `x-sidetrace-session-name`).
    #[serde(default)]
    pub session_name: Option<String>,
    pub prompt_template: Option<String>,
    pub prompt_version: Option<String>,
    pub span_name: Option<String>,
    pub tags: Vec<String>,
    /// `x-sidetrace-meta-<key>` and the aliases that carry free properties.
    pub meta: Vec<(String, String)>,
    /// The capture level the caller asked for (it can only lower the configured one).
    pub capture: Option<CaptureLevel>,
    /// Values or keys cut to the bounds.
    pub truncated: u32,
    /// The session came from a header the caller set on purpose (`x-sidetrace-session-id`,
    /// `helicone-session-id`, `baggage`), not one a coding agent sends on its own: such a call
    /// is never joined to an agent loop's trace (see `call::tools`).
    #[serde(default)]
    pub session_explicit: bool,
    /// The name of the gateway key the call presented (`[[keys]]`); set by the key check only,
    /// never from a header.
    #[serde(default)]
    pub key: Option<String>,
}

/// Session headers that coding agents and agent gateways send by themselves, first match wins:
/// Claude Code (`X-Claude-Code-Session-Id`), Codex CLI (`session-id`, older versions
/// `session_id`), OpenCode (`x-opencode-session`), Amp (`x-amp-thread-id`), Bifrost's
/// `x-bf-session-id`, and the generic `x-session-id`. They are passed upstream unchanged.
pub const CODING_AGENT_SESSION_HEADERS: [&str; 7] = [
    "x-claude-code-session-id",
    "session-id",
    "session_id",
    "x-opencode-session",
    "x-amp-thread-id",
    "x-bf-session-id",
    "x-session-id",
];

/// Every header [`CallMetadata::from_headers`] reads by name (the coding agents' session headers
/// and the `helicone-property-*` and `x-sidetrace-meta-*` prefixes aside). A request carrying
/// none of them (most do) is read with one pass over its header names instead of a lookup
/// each; `text` asserts in debug builds that it is asked only for a name listed here.
const METADATA_HEADERS: [&str; 16] = [
    "x-litellm-tags",
    "x-portkey-metadata",
    "helicone-user-id",
    "helicone-session-id",
    "helicone-session-path",
    "helicone-session-name",
    "baggage",
    "x-sidetrace-feature",
    "x-sidetrace-user-id",
    "x-sidetrace-session-id",
    "x-sidetrace-session-name",
    "x-sidetrace-prompt-template",
    "x-sidetrace-prompt-version",
    "x-sidetrace-span-name",
    "x-sidetrace-tags",
    "x-sidetrace-capture",
];

/// Whether any header of the request is one `from_headers` reads.
fn may_carry_metadata(headers: &HeaderMap) -> bool {
    headers.keys().any(|name| {
        let n = name.as_str();
        METADATA_HEADERS.contains(&n)
            || CODING_AGENT_SESSION_HEADERS.contains(&n)
            || n.starts_with("helicone-property-")
            || n.starts_with("x-sidetrace-meta-")
    })
}

/// Who wins when several headers set the same field (user, session, feature, prompt, a `meta`
/// key), first first: the gateway's own `x-sidetrace-*` headers, then W3C `baggage`, then the
/// peers' headers in this order. Documented in the README ("Migrating from another gateway").
pub const ALIAS_ORDER: [&str; 5] = [
    "x-sidetrace-*",
    "baggage",
    "helicone-*",
    "x-portkey-*",
    "x-litellm-*",
];

/// Request headers that carry metadata and are stripped before the request goes upstream
/// (besides every `x-sidetrace-*` header).
pub fn is_metadata_header(name: &str) -> bool {
    name.starts_with("x-sidetrace-")
        || name.starts_with("helicone-")
        || name.starts_with("x-portkey-")
        || name == "x-litellm-tags"
        || name == "baggage"
}

impl CallMetadata {
    pub fn from_headers(headers: &HeaderMap) -> CallMetadata {
        let mut m = CallMetadata::default();
        if !may_carry_metadata(headers) {
            return m;
        }
        // The sources in reverse of ALIAS_ORDER: each one overwrites what a source after it in
        // the order set, so the first in the order wins.
        // LiteLLM.
        if let Some(v) = text(headers, "x-litellm-tags") {
            m.add_tags(&v);
        }
        // Portkey.
        if let Some(v) = text(headers, "x-portkey-metadata")
            && let Ok(serde_json::Value::Object(map)) =
                serde_json::from_str::<serde_json::Value>(&v)
        {
            for (key, value) in map {
                let value = match value {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                if key == "_user" {
                    m.set_user(&value);
                } else {
                    m.add_meta(&key, &value);
                }
            }
        }
        // Helicone.
        if let Some(v) = text(headers, "helicone-user-id") {
            m.set_user(&v);
        }
        if let Some(v) = text(headers, "helicone-session-id") {
            m.set(Field::Session, &v);
        }
        if let Some(v) = text(headers, "helicone-session-path") {
            m.set(Field::SessionPath, &v);
        }
        if let Some(v) = text(headers, "helicone-session-name") {
            m.set(Field::SessionName, &v);
        }
        for (name, value) in headers {
            let name = name.as_str();
            if let Some(key) = name.strip_prefix("helicone-property-")
                && let Ok(v) = value.to_str()
            {
                m.add_meta(key, v);
            }
        }
        // W3C baggage.
        if let Some(v) = text(headers, "baggage") {
            for (key, value) in parse_baggage(&v) {
                match key.as_str() {
                    "user.id" | "user_id" | "userId" => m.set_user(&value),
                    "session.id" | "session_id" | "sessionId" => m.set(Field::Session, &value),
                    "session.name" => m.set(Field::SessionName, &value),
                    "feature.id" | "feature" => m.set(Field::Feature, &value),
                    "prompt.template_id" | "prompt.template" => {
                        m.set(Field::PromptTemplate, &value)
                    }
                    "prompt.version" => m.set(Field::PromptVersion, &value),
                    _ => {}
                }
            }
        }
        // sidetrace's own headers.
        if let Some(v) = text(headers, "x-sidetrace-feature") {
            m.set(Field::Feature, &v);
        }
        if let Some(v) = text(headers, "x-sidetrace-user-id") {
            m.set_user(&v);
        }
        if let Some(v) = text(headers, "x-sidetrace-session-id") {
            m.set(Field::Session, &v);
        }
        if let Some(v) = text(headers, "x-sidetrace-session-name") {
            m.set(Field::SessionName, &v);
        }
        if let Some(v) = text(headers, "x-sidetrace-prompt-template") {
            m.set(Field::PromptTemplate, &v);
        }
        if let Some(v) = text(headers, "x-sidetrace-prompt-version") {
            m.set(Field::PromptVersion, &v);
        }
        if let Some(v) = text(headers, "x-sidetrace-span-name") {
            m.set(Field::SpanName, &v);
        }
        if let Some(v) = text(headers, "x-sidetrace-tags") {
            m.add_tags(&v);
        }
        for (name, value) in headers {
            if let Some(key) = name.as_str().strip_prefix("x-sidetrace-meta-")
                && let Ok(v) = value.to_str()
            {
                m.add_meta(key, v);
            }
        }
        // Session headers coding agents send on their own, only when no header set one on
        // purpose (those win). Sources in the README ("Sessions").
        m.session_explicit = m.session_id.is_some();
        if !m.session_explicit
            && let Some(v) = CODING_AGENT_SESSION_HEADERS
                .iter()
                .find_map(|name| text(headers, name))
        {
            m.set(Field::Session, &v);
        }
        if let Some(v) = text(headers, "x-sidetrace-capture") {
            m.capture = CaptureLevel::parse(&v);
        }
        m
    }

    /// OpenAI's body `user` and `metadata` fields fill in what headers did not say.
    pub fn add_body_fields(&mut self, user: Option<&str>, metadata: &[(String, String)]) {
        if self.user_id.is_none()
            && let Some(u) = user
        {
            self.set_user(u);
        }
        for (k, v) in metadata {
            if !self.meta.iter().any(|(key, _)| key == k) {
                self.add_meta(k, v);
            }
        }
    }

    fn set_user(&mut self, v: &str) {
        self.set(Field::User, v);
    }

    /// The feature a gateway key stands for, replacing what the request said.
    pub fn set_key_feature(&mut self, v: &str) {
        self.feature = None;
        self.set(Field::Feature, v);
    }

    /// The user a gateway key stands for, replacing what the request said.
    pub fn set_key_user(&mut self, v: &str) {
        self.user_id = None;
        self.set(Field::User, v);
    }

    fn set(&mut self, field: Field, value: &str) {
        let value = match field {
            // Canonical first: lowercasing can lengthen a text, and the bound must hold after.
            Field::Feature => self.bound(&canonical_feature(value)),
            _ => self.bound(value),
        };
        if value.is_empty() {
            return;
        }
        let slot = match field {
            Field::Feature => &mut self.feature,
            Field::User => &mut self.user_id,
            Field::Session => &mut self.session_id,
            Field::SessionPath => &mut self.session_path,
            Field::SessionName => &mut self.session_name,
            Field::PromptTemplate => &mut self.prompt_template,
            Field::PromptVersion => &mut self.prompt_version,
            Field::SpanName => &mut self.span_name,
        };
        *slot = Some(value);
    }

    fn add_meta(&mut self, key: &str, value: &str) {
        let key: String = key
            .trim()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            .take(64)
            .collect::<String>()
            .to_ascii_lowercase();
        if key.is_empty() {
            return;
        }
        let value = self.bound(value);
        if let Some(slot) = self.meta.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else if self.meta.len() < MAX_KEYS {
            self.meta.push((key, value));
        } else {
            self.truncated += 1;
        }
    }

    fn add_tags(&mut self, list: &str) {
        for tag in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let tag = self.bound(tag);
            if self.tags.contains(&tag) {
                continue;
            }
            if self.tags.len() < MAX_KEYS {
                self.tags.push(tag);
            } else {
                self.truncated += 1;
            }
        }
    }

    fn bound(&mut self, value: &str) -> String {
        let value = value.trim();
        if value.chars().count() > MAX_VALUE_CHARS {
            self.truncated += 1;
            value.chars().take(MAX_VALUE_CHARS).collect()
        } else {
            value.to_string()
        }
    }
}

enum Field {
    Feature,
    User,
    Session,
    SessionPath,
    SessionName,
    PromptTemplate,
    PromptVersion,
    SpanName,
}

fn text(headers: &HeaderMap, name: &str) -> Option<String> {
    debug_assert!(
        METADATA_HEADERS.contains(&name) || CODING_AGENT_SESSION_HEADERS.contains(&name),
        "{name} is missing from METADATA_HEADERS"
    );
    let v = headers.get(name)?;
    let s = match v.to_str() {
        Ok(s) => s.to_string(),
        Err(_) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
    };
    let s = s.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// A feature name as calls, metrics, cost aggregates and budgets know it: trimmed of whitespace
/// and stray list separators, lowercased. `Support_Agent` and `support_agent,` are one feature.
pub fn canonical_feature(value: &str) -> String {
    value
        .trim_matches(|c: char| c.is_whitespace() || matches!(c, ',' | ';'))
        .to_lowercase()
}

/// W3C baggage: `key=value;props,...`, values percent-decoded; at most 64 members.
fn parse_baggage(header: &str) -> Vec<(String, String)> {
    header
        .split(',')
        .take(64)
        .filter_map(|member| {
            let kv = member.split(';').next()?;
            let (k, v) = kv.split_once('=')?;
            Some((k.trim().to_string(), percent_decode(v.trim())))
        })
        .collect()
}

/// `%XX` escapes decoded (invalid UTF-8 becomes U+FFFD); used for baggage, resource
/// attributes, Bedrock model ids in paths and admin query strings.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // Two hex digits exactly: `from_str_radix` alone would also take a sign (`%+a`).
        if b[i] == b'%'
            && let Some(v) = b
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn every_metadata_header_is_read_and_a_request_without_them_reads_as_none() {
        let plain = h(&[
            ("content-type", "application/json"),
            ("x-mock-chunks", "3"),
            ("user-agent", "test"),
        ]);
        assert_eq!(CallMetadata::from_headers(&plain), CallMetadata::default());
        for name in METADATA_HEADERS {
            let value = match name {
                "x-portkey-metadata" => r#"{"k":"v"}"#,
                "baggage" => "user.id=u1",
                "x-sidetrace-capture" => "none",
                _ => "v1",
            };
            let m =
                CallMetadata::from_headers(&h(&[("content-type", "text/plain"), (name, value)]));
            assert_ne!(m, CallMetadata::default(), "{name} was not read");
        }
        for name in ["helicone-property-team", "x-sidetrace-meta-team"] {
            let m = CallMetadata::from_headers(&h(&[(name, "core")]));
            assert_eq!(
                m.meta,
                vec![("team".to_string(), "core".to_string())],
                "{name}"
            );
        }
    }

    #[test]
    fn coding_agent_session_headers_give_the_session_and_gateway_headers_win() {
        for name in CODING_AGENT_SESSION_HEADERS {
            let m = CallMetadata::from_headers(&h(&[(name, "agent-s1")]));
            assert_eq!(m.session_id.as_deref(), Some("agent-s1"), "{name}");
        }
        let m = CallMetadata::from_headers(&h(&[
            ("x-claude-code-session-id", "cc"),
            ("session-id", "codex"),
        ]));
        assert_eq!(
            m.session_id.as_deref(),
            Some("cc"),
            "first in the list wins"
        );
        let m = CallMetadata::from_headers(&h(&[
            ("x-claude-code-session-id", "cc"),
            ("helicone-session-id", "helicone"),
        ]));
        assert_eq!(m.session_id.as_deref(), Some("helicone"));
        assert!(m.session_explicit);
        let m = CallMetadata::from_headers(&h(&[
            ("x-claude-code-session-id", "cc"),
            ("baggage", "session.id=from-baggage"),
        ]));
        assert_eq!(m.session_id.as_deref(), Some("from-baggage"));
        let m = CallMetadata::from_headers(&h(&[
            ("x-claude-code-session-id", "cc"),
            ("x-sidetrace-session-id", "mine"),
        ]));
        assert_eq!(m.session_id.as_deref(), Some("mine"));
        assert!(
            CODING_AGENT_SESSION_HEADERS
                .iter()
                .all(|n| !is_metadata_header(n)),
            "passed upstream unchanged"
        );
    }

    #[test]
    fn sidetrace_headers_fill_every_field() {
        let m = CallMetadata::from_headers(&h(&[
            ("x-sidetrace-feature", "support_agent"),
            ("x-sidetrace-user-id", "u_123"),
            ("x-sidetrace-session-id", "s_9"),
            ("x-sidetrace-prompt-template", "support.v3"),
            ("x-sidetrace-prompt-version", "7"),
            ("x-sidetrace-span-name", "triage"),
            ("x-sidetrace-tags", "beta, eu ,beta"),
            ("x-sidetrace-meta-tenant", "acme"),
            ("x-sidetrace-capture", "metadata"),
        ]));
        assert_eq!(m.feature.as_deref(), Some("support_agent"));
        assert_eq!(m.user_id.as_deref(), Some("u_123"));
        assert_eq!(m.session_id.as_deref(), Some("s_9"));
        assert_eq!(m.prompt_template.as_deref(), Some("support.v3"));
        assert_eq!(m.prompt_version.as_deref(), Some("7"));
        assert_eq!(m.span_name.as_deref(), Some("triage"));
        assert_eq!(m.tags, ["beta", "eu"]);
        assert_eq!(m.meta, [("tenant".to_string(), "acme".to_string())]);
        assert_eq!(m.capture, Some(CaptureLevel::Metadata));
    }

    #[test]
    fn aliases_of_other_gateways_and_baggage_map_to_the_same_fields() {
        let m = CallMetadata::from_headers(&h(&[
            ("helicone-user-id", "hu"),
            ("helicone-session-id", "hs"),
            ("helicone-session-path", "/a/b"),
            ("helicone-property-environment", "prod"),
            ("x-portkey-metadata", r#"{"_user":"pu","team":"ml","n":3}"#),
            ("x-litellm-tags", "t1,t2"),
            (
                "baggage",
                "feature.id=search,prompt.version=2;ttl=5,other=x%20y",
            ),
        ]));
        assert_eq!(
            m.user_id.as_deref(),
            Some("hu"),
            "Helicone comes before Portkey in the alias order"
        );
        assert_eq!(m.session_id.as_deref(), Some("hs"));
        assert_eq!(m.session_path.as_deref(), Some("/a/b"));
        assert_eq!(m.feature.as_deref(), Some("search"));
        assert_eq!(m.prompt_version.as_deref(), Some("2"));
        assert_eq!(m.tags, ["t1", "t2"]);
        assert!(m.meta.contains(&("environment".into(), "prod".into())));
        assert!(m.meta.contains(&("team".into(), "ml".into())));
        assert!(m.meta.contains(&("n".into(), "3".into())));
    }

    #[test]
    fn conflicting_aliases_resolve_by_the_documented_order_own_then_baggage_then_each_peer() {
        assert_eq!(
            ALIAS_ORDER,
            [
                "x-sidetrace-*",
                "baggage",
                "helicone-*",
                "x-portkey-*",
                "x-litellm-*"
            ]
        );
        // Every source sets the user and a `team` meta key; each step removes the winner.
        let all: Vec<(&'static str, &str)> = vec![
            ("x-sidetrace-user-id", "own"),
            ("x-sidetrace-meta-team", "own"),
            ("baggage", "user.id=baggage,session.id=baggage-s"),
            ("helicone-user-id", "helicone"),
            ("helicone-property-team", "helicone"),
            ("helicone-session-id", "helicone-s"),
            (
                "x-portkey-metadata",
                r#"{"_user":"portkey","team":"portkey"}"#,
            ),
        ];
        let user = |pairs: &[(&'static str, &str)]| {
            let m = CallMetadata::from_headers(&h(pairs));
            (
                m.user_id,
                m.meta
                    .iter()
                    .find(|(k, _)| k == "team")
                    .map(|(_, v)| v.clone()),
                m.session_id,
            )
        };
        let (u, team, session) = user(&all);
        assert_eq!(u.as_deref(), Some("own"));
        assert_eq!(team.as_deref(), Some("own"));
        assert_eq!(
            session.as_deref(),
            Some("baggage-s"),
            "baggage before Helicone"
        );
        let (u, team, _) = user(&all[2..]);
        assert_eq!(u.as_deref(), Some("baggage"));
        assert_eq!(
            team.as_deref(),
            Some("helicone"),
            "baggage carries no meta keys"
        );
        let (u, team, session) = user(&all[3..]);
        assert_eq!(u.as_deref(), Some("helicone"));
        assert_eq!(team.as_deref(), Some("helicone"));
        assert_eq!(session.as_deref(), Some("helicone-s"));
        let (u, team, _) = user(&all[6..]);
        assert_eq!(u.as_deref(), Some("portkey"));
        assert_eq!(team.as_deref(), Some("portkey"));
        // The order does not depend on the order the headers arrive in.
        let mut reversed = all.clone();
        reversed.reverse();
        assert_eq!(user(&reversed).0.as_deref(), Some("own"));
    }

    #[test]
    fn helicone_session_name_is_kept_and_the_own_header_wins() {
        let m = CallMetadata::from_headers(&h(&[
            ("helicone-session-id", "s1"),
            ("helicone-session-name", "Support chat"),
        ]));
        assert_eq!(m.session_name.as_deref(), Some("Support chat"));
        assert!(
            is_metadata_header("helicone-session-name"),
            "stripped upstream"
        );
        let m = CallMetadata::from_headers(&h(&[
            ("helicone-session-name", "theirs"),
            ("baggage", "session.name=from%20baggage"),
        ]));
        assert_eq!(m.session_name.as_deref(), Some("from baggage"));
        let m = CallMetadata::from_headers(&h(&[
            ("helicone-session-name", "theirs"),
            ("x-sidetrace-session-name", "mine"),
        ]));
        assert_eq!(m.session_name.as_deref(), Some("mine"));
    }

    #[test]
    fn sidetrace_headers_win_over_aliases() {
        let m = CallMetadata::from_headers(&h(&[
            ("helicone-user-id", "alias"),
            ("x-sidetrace-user-id", "own"),
        ]));
        assert_eq!(m.user_id.as_deref(), Some("own"));
    }

    #[test]
    fn values_and_counts_are_bounded_and_the_excess_counted() {
        let long = "x".repeat(1000);
        let mut pairs: Vec<(&'static str, String)> = vec![("x-sidetrace-feature", long.clone())];
        let names: Vec<&'static str> = (0..40)
            .map(|i| &*Box::leak(format!("x-sidetrace-meta-k{i}").into_boxed_str()))
            .collect();
        for n in &names {
            pairs.push((n, "v".into()));
        }
        let pairs: Vec<(&'static str, &str)> =
            pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let m = CallMetadata::from_headers(&h(&pairs));
        assert_eq!(m.feature.as_ref().unwrap().len(), MAX_VALUE_CHARS);
        assert_eq!(m.meta.len(), MAX_KEYS);
        assert_eq!(m.truncated, 1 + 8);
    }

    #[test]
    fn body_user_and_metadata_fill_gaps_only() {
        let mut m = CallMetadata::from_headers(&h(&[("x-sidetrace-meta-team", "a")]));
        m.add_body_fields(
            Some("body-user"),
            &[("team".into(), "b".into()), ("env".into(), "dev".into())],
        );
        assert_eq!(m.user_id.as_deref(), Some("body-user"));
        assert!(m.meta.contains(&("team".into(), "a".into())));
        assert!(m.meta.contains(&("env".into(), "dev".into())));
    }

    #[test]
    fn metadata_headers_are_recognised_for_stripping() {
        for name in [
            "x-sidetrace-feature",
            "helicone-property-x",
            "x-portkey-metadata",
            "x-litellm-tags",
            "baggage",
        ] {
            assert!(is_metadata_header(name), "{name}");
        }
        assert!(!is_metadata_header("authorization"));
    }
}
