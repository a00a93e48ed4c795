//! Who may look: the admin listener's bearer token, compared in constant time.

use http::{HeaderMap, header};

use crate::{
    config::{AdminConfig, ConfigError},
    digest::{constant_time_eq, sha256},
};

/// The admin token in force (as its SHA-256 digest, so the comparison takes the same time
/// whatever the length or content of what a client sends) and which routes are open.
pub struct AdminAuth {
    digest: Option<[u8; 32]>,
    open_metrics: bool,
}

/// What a request may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Granted,
    /// No `Authorization: Bearer` header.
    Missing,
    /// A token that is not the admin token.
    Wrong,
}

impl AdminAuth {
    pub fn from_config(config: &AdminConfig) -> Result<AdminAuth, ConfigError> {
        Ok(AdminAuth {
            digest: config
                .resolved_token()?
                .map(|token| sha256(token.expose().as_bytes())),
            open_metrics: config.open_metrics,
        })
    }

    /// Whether the listener asks for a token at all.
    pub fn required(&self) -> bool {
        self.digest.is_some()
    }

    /// Routes anyone may use: probes, and the UI's own files (code, no data: the page asks for
    /// the token and sends it with every API call). `/metrics` when `open_metrics` is set.
    pub fn is_open(&self, path: &str) -> bool {
        matches!(path, "/healthz" | "/readyz" | "/" | "/ui")
            || path.starts_with("/ui/")
            || (path == "/metrics" && self.open_metrics)
    }

    pub fn check(&self, path: &str, headers: &HeaderMap) -> Access {
        let Some(want) = &self.digest else {
            return Access::Granted;
        };
        if self.is_open(path) {
            return Access::Granted;
        }
        let Some(presented) = bearer(headers) else {
            return Access::Missing;
        };
        if constant_time_eq(&sha256(presented), want) {
            Access::Granted
        } else {
            Access::Wrong
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let scheme = value.get(..7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| value[7..].trim_ascii())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn auth(open_metrics: bool) -> AdminAuth {
        AdminAuth::from_config(&AdminConfig {
            token: Secret::new("s3cret-admin"),
            open_metrics,
            ..AdminConfig::default()
        })
        .unwrap()
    }

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn data_routes_need_the_exact_token_and_probes_do_not() {
        let a = auth(false);
        assert_eq!(a.check("/api/costs", &HeaderMap::new()), Access::Missing);
        assert_eq!(a.check("/api/costs", &with("Bearer s3cret")), Access::Wrong);
        assert_eq!(
            a.check("/api/costs", &with("Bearer s3cret-admin!")),
            Access::Wrong
        );
        assert_eq!(
            a.check("/api/costs", &with("Basic s3cret-admin")),
            Access::Missing
        );
        assert_eq!(
            a.check("/api/costs", &with("bearer s3cret-admin")),
            Access::Granted
        );
        assert_eq!(a.check("/metrics", &HeaderMap::new()), Access::Missing);
        for open in [
            "/healthz",
            "/readyz",
            "/ui",
            "/ui/traces",
            "/ui/assets/app.js",
        ] {
            assert_eq!(a.check(open, &HeaderMap::new()), Access::Granted, "{open}");
        }
        assert_eq!(
            auth(true).check("/metrics", &HeaderMap::new()),
            Access::Granted
        );
    }

    #[test]
    fn without_a_token_everything_is_open() {
        let a = AdminAuth::from_config(&AdminConfig::default()).unwrap();
        assert!(!a.required());
        assert_eq!(a.check("/api/traces", &HeaderMap::new()), Access::Granted);
    }
}
