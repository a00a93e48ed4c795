//! Validated providers and routing: the upstream is chosen by the route prefix only, so no header
//! or body can point the gateway at another host.

use super::sigv4::AwsSigner;
use std::{collections::BTreeMap, sync::Arc, time::Duration};

use http::{HeaderName, HeaderValue, Uri};

use crate::{
    config::{
        Config, ConfigError,
        providers::{PathSpec, ProviderSpec, Quirks, WireFormat},
    },
    error::ProxyError,
    trace::metadata::percent_decode,
};

/// Timeouts in force for one provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTimeouts {
    pub response_headers: Duration,
    pub idle: Duration,
    pub total: Duration,
}

#[derive(Debug, Clone)]
enum HostPart {
    Literal(String),
    Param(String),
}

/// A provider ready to route to.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub gen_ai_provider: String,
    pub prefix: String,
    scheme: &'static str,
    host: Vec<HostPart>,
    base_path: String,
    pub http2_prior_knowledge: bool,
    pub stream_usage_injection: bool,
    pub propagate_trace_context: bool,
    pub quirks: Quirks,
    paths: Vec<PathSpec>,
    pub credential_headers: Vec<HeaderName>,
    /// A key the gateway holds, set only when the client sent no credential.
    pub gateway_key: Option<(HeaderName, HeaderValue)>,
    /// AWS credentials the gateway signs requests with (`[auth] sigv4_service`), when it holds
    /// some.
    pub sigv4: Option<Arc<AwsSigner>>,
    pub timeouts: RouteTimeouts,
}

/// Where one request goes.
#[derive(Debug, Clone)]
pub struct Route {
    pub provider: Arc<Provider>,
    pub uri: Uri,
    pub format: WireFormat,
}

impl Route {
    /// `server.port` of the upstream.
    pub fn port(&self) -> u16 {
        self.uri.port_u16().unwrap_or(match self.uri.scheme_str() {
            Some("http") => 80,
            _ => 443,
        })
    }

    /// `server.address` of the upstream (host only).
    pub fn address(&self) -> &str {
        self.uri.host().unwrap_or("")
    }
}

impl Route {
    /// `host[:port]` of the upstream, for logs and errors (never carries a credential).
    pub fn host(&self) -> &str {
        self.uri.authority().map(|a| a.as_str()).unwrap_or("")
    }
}

impl Provider {
    pub fn from_spec(spec: &ProviderSpec, defaults: RouteTimeouts) -> Result<Provider, String> {
        let name = &spec.name;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "provider name {name:?} must be letters, digits, '_' or '-'"
            ));
        }
        let (scheme, rest) = if let Some(r) = spec.base_url.strip_prefix("https://") {
            ("https", r)
        } else if let Some(r) = spec.base_url.strip_prefix("http://") {
            ("http", r)
        } else {
            return Err(format!(
                "provider {name}: base_url {:?} must start with http:// or https://",
                spec.base_url
            ));
        };
        let (authority, base_path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') || base_path.contains(['?', '#']) {
            return Err(format!(
                "provider {name}: base_url {:?} must be scheme://host[:port][/path]",
                spec.base_url
            ));
        }
        let host = parse_host_template(authority).map_err(|e| format!("provider {name}: {e}"))?;
        // Check the template fills into a valid URI.
        let probe: String = host
            .iter()
            .map(|p| match p {
                HostPart::Literal(s) => s.as_str(),
                HostPart::Param(_) => "x",
            })
            .collect();
        format!("{scheme}://{probe}{base_path}/")
            .parse::<Uri>()
            .map_err(|e| format!("provider {name}: base_url {:?}: {e}", spec.base_url))?;

        let prefix = spec
            .route_prefix
            .clone()
            .unwrap_or_else(|| format!("/{name}"));
        if !prefix.starts_with('/') || prefix.len() < 2 || prefix.ends_with('/') {
            return Err(format!(
                "provider {name}: route_prefix {prefix:?} must look like /name (no trailing slash)"
            ));
        }
        let credential_headers = spec
            .auth
            .credential_headers
            .iter()
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("provider {name}: bad credential header {h:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let gateway_key = match (&spec.auth.key_env, &spec.auth.key_header) {
            (Some(var), Some(header)) => match std::env::var(var) {
                Ok(key) if !key.is_empty() => {
                    let header = HeaderName::from_bytes(header.as_bytes())
                        .map_err(|_| format!("provider {name}: bad key_header {header:?}"))?;
                    let mut value = HeaderValue::from_str(&format!(
                        "{}{key}",
                        spec.auth.key_prefix
                    ))
                    .map_err(|_| {
                        format!("provider {name}: the key in ${var} is not a valid header value")
                    })?;
                    value.set_sensitive(true);
                    Some((header, value))
                }
                _ => None,
            },
            (Some(_), None) => {
                return Err(format!(
                    "provider {name}: auth.key_env needs auth.key_header"
                ));
            }
            _ => None,
        };
        let sigv4 = spec
            .auth
            .sigv4_service
            .as_deref()
            .and_then(|service| AwsSigner::from_env(service, std::env::vars()))
            .map(Arc::new);
        // A key the gateway holds goes to the provider's fixed host only: with a host taken
        // from the client's path, any client could have it sent to a host of its choosing.
        if gateway_key.is_some() && host.iter().any(|p| matches!(p, HostPart::Param(_))) {
            return Err(format!(
                "provider {name}: a gateway-held key (${}) is set, but base_url {:?} takes its host from the client's path; set a fixed base_url for it in [providers.{name}]",
                spec.auth.key_env.as_deref().unwrap_or(""),
                spec.base_url
            ));
        }
        let t = &spec.timeouts;
        let timeouts = RouteTimeouts {
            response_headers: t
                .response_headers_ms
                .map(Duration::from_millis)
                .unwrap_or(defaults.response_headers),
            idle: t
                .idle_ms
                .map(Duration::from_millis)
                .unwrap_or(defaults.idle),
            total: t
                .total_ms
                .map(Duration::from_millis)
                .unwrap_or(defaults.total),
        };
        for p in &spec.paths {
            if !p.pattern.starts_with('/') {
                return Err(format!(
                    "provider {name}: path pattern {:?} must start with /",
                    p.pattern
                ));
            }
        }
        Ok(Provider {
            name: name.clone(),
            gen_ai_provider: spec.gen_ai_provider.clone(),
            prefix,
            scheme,
            host,
            base_path: base_path.to_string(),
            http2_prior_knowledge: spec.http2_prior_knowledge,
            stream_usage_injection: spec.stream_usage_injection,
            propagate_trace_context: spec.propagate_trace_context,
            quirks: spec.quirks,
            paths: spec.paths.clone(),
            credential_headers,
            gateway_key,
            sigv4,
            timeouts,
        })
    }

    /// The value a host parameter took in an upstream host (`us-east-1` for `region` in
    /// `bedrock-runtime.us-east-1.amazonaws.com`); `None` when the template has no such
    /// parameter (a `base_url` override) or the host does not fit it.
    pub fn host_param_value<'h>(&self, host: &'h str, name: &str) -> Option<&'h str> {
        let mut rest = host;
        let mut parts = self.host.iter().peekable();
        while let Some(part) = parts.next() {
            match part {
                HostPart::Literal(s) => rest = rest.strip_prefix(s.as_str())?,
                HostPart::Param(param) => {
                    let end = match parts.peek() {
                        Some(HostPart::Literal(next)) => rest.find(next.as_str())?,
                        _ => rest.len(),
                    };
                    if param == name {
                        return Some(&rest[..end]);
                    }
                    rest = &rest[end..];
                }
            }
        }
        None
    }

    /// The upstream base URL as configured, host parameters as `{name}` (what `check-config`
    /// prints): `https://{resource}.openai.azure.com`.
    pub fn upstream_url(&self) -> String {
        let mut url = format!("{}://", self.scheme);
        for part in &self.host {
            match part {
                HostPart::Literal(s) => url.push_str(s),
                HostPart::Param(name) => {
                    url.push('{');
                    url.push_str(name);
                    url.push('}');
                }
            }
        }
        url.push_str(&self.base_path);
        url
    }

    /// Names of the path segments that fill the host template, e.g. `["resource"]` for Azure.
    pub fn host_params(&self) -> impl Iterator<Item = &str> {
        self.host.iter().filter_map(|p| match p {
            HostPart::Param(n) => Some(n.as_str()),
            HostPart::Literal(_) => None,
        })
    }

    /// Builds the route for `rest` (the path after the prefix, empty or starting with `/`).
    fn route(self: &Arc<Self>, mut rest: &str, query: Option<&str>) -> Result<Route, ProxyError> {
        let mut authority = String::with_capacity(64);
        for part in &self.host {
            match part {
                HostPart::Literal(s) => authority.push_str(s),
                HostPart::Param(param) => {
                    let after = rest.strip_prefix('/').unwrap_or(rest);
                    let (segment, remainder) = match after.find('/') {
                        Some(i) => (&after[..i], &after[i..]),
                        None => (after, ""),
                    };
                    if !is_dns_label(segment) {
                        return Err(ProxyError::BadRouteParam {
                            param: param.clone(),
                            value: segment.chars().take(64).collect(),
                        });
                    }
                    authority.push_str(&segment.to_ascii_lowercase());
                    rest = remainder;
                }
            }
        }
        let format = self
            .paths
            .iter()
            .find(|p| path_matches(&p.pattern, rest))
            .map_or(WireFormat::Passthrough, |p| p.format);
        let mut uri = String::with_capacity(
            self.scheme.len()
                + 3
                + authority.len()
                + self.base_path.len()
                + rest.len()
                + 1
                + query.map_or(0, str::len),
        );
        uri.push_str(self.scheme);
        uri.push_str("://");
        uri.push_str(&authority);
        uri.push_str(&self.base_path);
        if rest.is_empty() && self.base_path.is_empty() {
            uri.push('/');
        }
        uri.push_str(rest);
        if let Some(q) = query {
            uri.push('?');
            uri.push_str(q);
        }
        let uri = Uri::try_from(uri).map_err(|e| ProxyError::BadRouteParam {
            param: "path".to_string(),
            value: e.to_string(),
        })?;
        Ok(Route {
            provider: self.clone(),
            uri,
            format,
        })
    }
}

fn parse_host_template(authority: &str) -> Result<Vec<HostPart>, String> {
    let mut parts = Vec::new();
    let mut rest = authority;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(HostPart::Literal(rest[..open].to_string()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unclosed {{ in base_url host {authority:?}"))?;
        let name = &rest[open + 1..open + close];
        if name.is_empty() {
            return Err(format!("empty {{}} in base_url host {authority:?}"));
        }
        parts.push(HostPart::Param(name.to_string()));
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        parts.push(HostPart::Literal(rest.to_string()));
    }
    Ok(parts)
}

/// True when a path segment is `.` or `..`, plainly or percent-encoded or followed by `;`
/// parameters, also where a segment
/// decodes to several parts split by `/` or `\` (servers that decode `%2F`, or treat `\` as a
/// separator, would see them as segments). An encoded `/` alone stays allowed: Bedrock model
/// ARNs in paths need it.
fn has_dot_segment(path: &str) -> bool {
    // Servlet containers read `..;x` as `..` (path parameters): the part before `;` counts.
    let is_dot = |part: &str| {
        let part = part.split(';').next().unwrap_or(part);
        part == "." || part == ".."
    };
    path.split('/').any(|segment| {
        if segment.contains('%') {
            percent_decode(segment).split(['/', '\\']).any(is_dot)
        } else {
            segment.split('\\').any(is_dot)
        }
    })
}

/// A host label a path segment may fill in: 1-63 letters, digits or '-', not starting with '-'.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Segment-wise match; `*` in a pattern segment matches any characters except `/`.
fn path_matches(pattern: &str, path: &str) -> bool {
    let mut pat = pattern.split('/');
    let mut segs = path.split('/');
    loop {
        match (pat.next(), segs.next()) {
            (None, None) => return true,
            (Some(p), Some(s)) if segment_matches(p, s) => {}
            _ => return false,
        }
    }
}

fn segment_matches(pattern: &str, segment: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == segment,
        Some((head, tail)) => {
            segment.len() >= head.len() + tail.len()
                && segment.starts_with(head)
                && segment_matches_tail(tail, &segment[head.len()..])
        }
    }
}

fn segment_matches_tail(pattern: &str, segment: &str) -> bool {
    // `pattern` follows a `*`: find any position where the rest matches.
    if !pattern.contains('*') {
        return segment.ends_with(pattern);
    }
    (0..=segment.len())
        .filter(|&i| segment.is_char_boundary(i))
        .any(|i| segment_matches(pattern, &segment[i..]))
}

/// Route prefix -> provider, plus the default provider for bare `/v1/...` paths.
#[derive(Debug)]
pub struct Registry {
    /// Longest prefix first, so `/openai-eu` is tried before `/openai`.
    by_prefix: Vec<Arc<Provider>>,
    default: Option<Arc<Provider>>,
}

impl Registry {
    /// Validates the providers in force and builds the routing table.
    pub fn from_config(config: &Config) -> Result<Registry, ConfigError> {
        let t = &config.timeouts;
        let defaults = RouteTimeouts {
            response_headers: Duration::from_millis(t.response_headers_ms),
            idle: Duration::from_millis(t.idle_ms),
            total: Duration::from_millis(t.total_ms),
        };
        let providers = config
            .provider_specs()?
            .iter()
            .map(|s| Provider::from_spec(s, defaults))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ConfigError::Invalid)?;
        Registry::new(providers, &config.default_provider).map_err(ConfigError::Invalid)
    }

    pub fn new(providers: Vec<Provider>, default: &str) -> Result<Registry, String> {
        let mut seen = BTreeMap::new();
        for p in &providers {
            if p.prefix == "/v1" {
                return Err(format!(
                    "provider {}: route_prefix /v1 is reserved for the default provider",
                    p.name
                ));
            }
            if let Some(other) = seen.insert(p.prefix.clone(), p.name.clone()) {
                return Err(format!(
                    "providers {other} and {} share the route prefix {}",
                    p.name, p.prefix
                ));
            }
        }
        let mut by_prefix: Vec<Arc<Provider>> = providers.into_iter().map(Arc::new).collect();
        by_prefix.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then(a.prefix.cmp(&b.prefix))
        });
        let default = if default.is_empty() {
            None
        } else {
            let p = by_prefix
                .iter()
                .find(|p| p.name == default)
                .ok_or_else(|| {
                    format!("default_provider {default:?} is not a configured provider")
                })?;
            if p.host_params().next().is_some() {
                return Err(format!(
                    "default_provider {default:?} needs path parameters and cannot serve bare /v1 paths"
                ));
            }
            Some(p.clone())
        };
        Ok(Registry { by_prefix, default })
    }

    pub fn providers(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.by_prefix.iter()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Provider>> {
        self.by_prefix.iter().find(|p| p.name == name)
    }

    /// Picks the provider for a request path (with its query) and builds the upstream URI.
    pub fn route(&self, path_and_query: &str) -> Result<Route, ProxyError> {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        // Dot segments would let a path climb out of the provider's base path upstream
        // (`/mylab/../tenant-b/...` reaching `/tenant-a/../tenant-b/...`). No API uses them.
        if has_dot_segment(path) {
            return Err(ProxyError::DotSegment {
                path: path.chars().take(200).collect(),
            });
        }
        for p in &self.by_prefix {
            if let Some(rest) = path.strip_prefix(p.prefix.as_str())
                && (rest.is_empty() || rest.starts_with('/'))
            {
                return p.route(rest, query);
            }
        }
        if let Some(p) = &self.default
            && (path == "/v1" || path.starts_with("/v1/"))
        {
            return p.route(path, query);
        }
        Err(ProxyError::UnknownRoute {
            path: path.chars().take(200).collect(),
            prefixes: self.prefix_list(),
        })
    }

    fn prefix_list(&self) -> String {
        let mut list: Vec<String> = self.by_prefix.iter().map(|p| p.prefix.clone()).collect();
        list.sort();
        if let Some(d) = &self.default {
            list.push(format!("/v1 (default provider {})", d.name));
        }
        list.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_is_read_back_from_an_upstream_host_by_its_template() {
        let registry = Registry::from_config(&Config::default()).unwrap();
        let bedrock = registry.get("bedrock").unwrap();
        let route = registry
            .route("/bedrock/eu-central-1/model/m/converse")
            .unwrap();
        assert_eq!(
            bedrock.host_param_value(route.uri.host().unwrap(), "region"),
            Some("eu-central-1")
        );
        assert_eq!(
            bedrock.host_param_value("bedrock-runtime.us-east-1.amazonaws.com", "resource"),
            None
        );
        assert_eq!(bedrock.host_param_value("example.com", "region"), None);
        let azure = registry.get("azure").unwrap();
        assert_eq!(
            azure.host_param_value("acme.openai.azure.com", "resource"),
            Some("acme")
        );
    }

    fn timeouts() -> RouteTimeouts {
        RouteTimeouts {
            response_headers: Duration::from_secs(1),
            idle: Duration::from_secs(1),
            total: Duration::from_secs(1),
        }
    }

    fn registry(specs: &[(&str, &str)]) -> Registry {
        let providers = specs
            .iter()
            .map(|(name, base)| {
                let mut spec = ProviderSpec::openai_compatible(name);
                spec.base_url = base.to_string();
                Provider::from_spec(&spec, timeouts()).unwrap()
            })
            .collect();
        Registry::new(providers, "openai").unwrap()
    }

    #[test]
    fn prefix_routes_to_base_url_with_rest_and_query() {
        let r = registry(&[
            ("openai", "https://api.openai.com"),
            ("groq", "https://api.groq.com/openai"),
        ]);
        let route = r.route("/openai/v1/chat/completions?x=1").unwrap();
        assert_eq!(route.uri, "https://api.openai.com/v1/chat/completions?x=1");
        assert_eq!(route.format, WireFormat::ChatCompletions);
        let route = r.route("/groq/v1/chat/completions").unwrap();
        assert_eq!(route.uri, "https://api.groq.com/openai/v1/chat/completions");
    }

    #[test]
    fn bare_v1_goes_to_the_default_provider() {
        let r = registry(&[("openai", "https://api.openai.com")]);
        let route = r.route("/v1/embeddings").unwrap();
        assert_eq!(route.uri, "https://api.openai.com/v1/embeddings");
        assert_eq!(route.format, WireFormat::Embeddings);
    }

    #[test]
    fn a_prefix_matches_whole_segments_only() {
        let r = registry(&[("openai", "https://api.openai.com")]);
        let err = r.route("/openaiX/v1/chat/completions").unwrap_err();
        assert!(err.to_string().contains("/openai"), "{err}");
        assert!(matches!(err, ProxyError::UnknownRoute { .. }));
    }

    #[test]
    fn host_template_takes_a_validated_path_segment() {
        let mut spec = ProviderSpec::openai_compatible("azure");
        spec.base_url = "https://{resource}.openai.azure.com".into();
        spec.paths = vec![PathSpec {
            pattern: "/openai/deployments/*/chat/completions".into(),
            format: WireFormat::ChatCompletions,
        }];
        let p = Provider::from_spec(&spec, timeouts()).unwrap();
        let r = Registry::new(vec![p], "").unwrap();
        let route = r
            .route("/azure/MyRes/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21")
            .unwrap();
        assert_eq!(
            route.uri,
            "https://myres.openai.azure.com/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(route.format, WireFormat::ChatCompletions);
        for bad in [
            "/azure/evil.com/openai",
            "/azure/a@b/x",
            "/azure/",
            "/azure/-x/y",
        ] {
            assert!(
                matches!(r.route(bad), Err(ProxyError::BadRouteParam { .. })),
                "{bad} must be refused"
            );
        }
    }

    #[test]
    fn glob_patterns_match_within_one_segment() {
        assert!(path_matches(
            "/v1beta/models/*:streamGenerateContent",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
        ));
        assert!(!path_matches(
            "/v1beta/models/*:generateContent",
            "/v1beta/models/gemini:streamGenerateContent"
        ));
        assert!(!path_matches("/v1/*", "/v1/a/b"));
        assert!(path_matches(
            "/model/*/converse-stream",
            "/model/anthropic.claude-v2:1/converse-stream"
        ));
    }

    #[test]
    fn duplicate_prefixes_are_refused() {
        let mut a = ProviderSpec::openai_compatible("a");
        a.base_url = "http://127.0.0.1:1".into();
        a.route_prefix = Some("/x".into());
        let mut b = a.clone();
        b.name = "b".into();
        let err = Registry::new(
            vec![
                Provider::from_spec(&a, timeouts()).unwrap(),
                Provider::from_spec(&b, timeouts()).unwrap(),
            ],
            "",
        )
        .unwrap_err();
        assert!(err.contains("share the route prefix /x"), "{err}");
    }

    #[test]
    fn dot_segments_plain_encoded_or_hidden_behind_separators_are_refused() {
        for path in [
            "/mylab/../tenant-b/v1/chat/completions",
            "/mylab/./v1/chat/completions",
            "/mylab/%2e%2e/tenant-b/v1/chat/completions",
            "/mylab/%2E./tenant-b/v1/chat/completions",
            "/mylab/.%2e/tenant-b/v1/chat/completions",
            "/mylab/..%2ftenant-b/v1/chat/completions",
            "/mylab/x%2F..%2F../v1/chat/completions",
            "/mylab/..%5ctenant-b/v1/chat/completions",
            "/mylab/..\\tenant-b/v1/chat/completions",
            "/mylab/v1/..",
            "/v1/../../admin",
            "/mylab/..;/tenant-b/v1/chat/completions",
            "/mylab/.%2e;x=1/tenant-b/v1",
        ] {
            assert!(has_dot_segment(path), "{path}");
        }
        for path in [
            "/mylab/v1/chat/completions",
            "/gemini/v1beta/models/gemini-2.5-pro:generateContent",
            "/bedrock/us-east-1/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.anthropic.claude-v2/converse",
            "/mylab/v1/files/.hidden",
            "/mylab/v1/files/a..b",
            "/mylab/v1/files/...",
            "/mylab/%252e%252e/v1",
        ] {
            assert!(!has_dot_segment(path), "{path}");
        }
    }

    #[test]
    fn a_dot_segment_path_is_refused_before_routing() {
        let r = registry(&[
            ("openai", "https://api.openai.com"),
            ("mylab", "http://host/tenant-a"),
        ]);
        assert!(matches!(
            r.route("/mylab/../tenant-b/v1/chat/completions?x=1"),
            Err(ProxyError::DotSegment { .. })
        ));
        let ok = r.route("/mylab/v1/chat/completions").unwrap();
        assert_eq!(ok.uri.path(), "/tenant-a/v1/chat/completions");
    }
}
