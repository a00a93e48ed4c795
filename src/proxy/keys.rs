//! Gateway keys: who may call. With `[[keys]]` configured, every routed call must present one:
//! `Authorization: Bearer sk-st-...` (or the route's own credential header) when the gateway
//! holds the provider key, or `x-sidetrace-key` beside the client's own provider key. Keys are
//! kept as SHA-256 digests only and compared in constant time; the key a call presented is
//! removed before the request goes upstream, so it never reaches a provider, a log line, a
//! record or a span. Two layers, both inside the record layer so a refused call is recorded
//! like any other: [`KeyLayer`] authenticates before the body is read (401 unknown or expired,
//! 403 provider not allowed), [`KeyModelLayer`] checks the model once inspection has read it
//! (403).

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderMap, HeaderName, Request, Response};
use tower::{Layer, Service};

use super::{body::ProxyBody, record::CallSlot};
use crate::{
    config::{ConfigError, KeyConfig},
    digest::{constant_time_eq, from_hex, sha256},
    error::ProxyError,
    provider::Route,
    store::costs::now_secs,
    trace::metadata::CallMetadata,
};

/// The header a client sends its gateway key in when `authorization` carries its own provider
/// key. Stripped before the request goes upstream, like every `x-sidetrace-*` header.
pub const KEY_HEADER: &str = "x-sidetrace-key";

/// What every gateway key starts with, so the gateway can tell one from a provider key in
/// `authorization`.
pub const KEY_PREFIX: &str = "sk-st-";

/// A new random key (`sk-st-` and 43 URL-safe base64 characters: 256 bits) and the hex
/// SHA-256 the config keeps of it.
pub fn generate() -> Result<(String, String), String> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| "the system's random source failed".to_string())?;
    let key = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let digest = crate::digest::hex(&sha256(key.as_bytes()));
    Ok((key, digest))
}

struct Key {
    name: Arc<str>,
    digest: [u8; 32],
    feature: Option<String>,
    user: Option<String>,
    providers: Vec<String>,
    /// Shared with each call's [`Grant`].
    models: Arc<[String]>,
    expires_unix: Option<u64>,
}

/// The configured keys (digests only).
pub struct Keys {
    keys: Vec<Key>,
}

/// The key a call presented, once accepted: the model check and the budgets read it.
#[derive(Clone)]
pub struct Grant {
    pub name: Arc<str>,
    models: Arc<[String]>,
}

impl Grant {
    /// Whether the key may ask for `model`: exact names, or a prefix ending in `*`.
    fn allows_model(&self, model: &str) -> bool {
        self.models.is_empty()
            || self.models.iter().any(|m| match m.strip_suffix('*') {
                Some(prefix) => model.starts_with(prefix),
                None => m == model,
            })
    }
}

impl Keys {
    pub fn from_config(configs: &[KeyConfig]) -> Result<Keys, ConfigError> {
        let mut keys: Vec<Key> = Vec::new();
        for c in configs {
            let invalid =
                |what: String| ConfigError::Invalid(format!("[[keys]] {:?}: {what}", c.name));
            if c.name.is_empty()
                || !c
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(invalid(
                    "name must be letters, digits, '-', '_' or '.'".into(),
                ));
            }
            if keys.iter().any(|k| *k.name == *c.name) {
                return Err(invalid("the name is used twice".into()));
            }
            let digest = from_hex(&c.sha256).ok_or_else(|| {
                invalid("sha256 must be 64 hex digits: the SHA-256 of the key (`sidetrace new-key` prints both)".into())
            })?;
            if keys.iter().any(|k| k.digest == digest) {
                return Err(invalid("the same key is configured twice".into()));
            }
            let expires_unix = c
                .expires
                .as_ref()
                .map(|d| {
                    crate::config::datetime_unix_secs(d).ok_or_else(|| {
                        invalid(format!(
                            "expires {d} must be a date or a date-time with an offset"
                        ))
                    })
                })
                .transpose()?;
            keys.push(Key {
                name: Arc::from(c.name.as_str()),
                digest,
                feature: c.feature.clone().filter(|f| !f.is_empty()),
                user: c.user.clone().filter(|u| !u.is_empty()),
                providers: c.providers.clone(),
                models: Arc::from(c.models.as_slice()),
                expires_unix,
            });
        }
        Ok(Keys { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The configured key whose digest is the presented key's, looking at every key whatever
    /// matched (so the time does not tell which, or how many, there are).
    fn find(&self, presented: &[u8]) -> Option<&Key> {
        let digest = sha256(presented);
        let mut found = None;
        for key in &self.keys {
            if constant_time_eq(&key.digest, &digest) {
                found = Some(key);
            }
        }
        found
    }
}

/// The gateway key a request presents, and the credential header it came in (to be removed,
/// so that the gateway-held provider key takes its place).
fn presented<'a>(headers: &'a HeaderMap, route: &Route) -> Option<(&'a [u8], Option<HeaderName>)> {
    if let Some(v) = headers.get(KEY_HEADER) {
        return Some((v.as_bytes().trim_ascii(), None));
    }
    let names = std::iter::once(&http::header::AUTHORIZATION)
        .chain(route.provider.credential_headers.iter());
    for name in names {
        let Some(value) = headers.get(name) else {
            continue;
        };
        let v = value.as_bytes().trim_ascii();
        let v = match v.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => v[7..].trim_ascii(),
            _ => v,
        };
        if v.starts_with(KEY_PREFIX.as_bytes()) {
            return Some((v, Some(name.clone())));
        }
    }
    None
}

#[derive(Clone)]
pub struct KeyLayer {
    keys: Arc<Keys>,
}

impl KeyLayer {
    pub fn new(keys: Arc<Keys>) -> Self {
        KeyLayer { keys }
    }
}

impl<S> Layer<S> for KeyLayer {
    type Service = KeyCheck<S>;
    fn layer(&self, inner: S) -> KeyCheck<S> {
        KeyCheck {
            inner,
            keys: self.keys.clone(),
        }
    }
}

#[derive(Clone)]
pub struct KeyCheck<S> {
    inner: S,
    keys: Arc<Keys>,
}

impl<S> KeyCheck<S> {
    /// Authenticates the request: on success the key is removed from its headers, its name
    /// and what it stands for are in the call's metadata, and its [`Grant`] in the extensions.
    fn admit<B>(&self, req: &mut Request<B>) -> Result<(), ProxyError> {
        let Some(route) = req.extensions().get::<Route>().cloned() else {
            return Ok(());
        };
        let (key, header) = match presented(req.headers(), &route) {
            Some((bytes, header)) => (self.keys.find(bytes), header),
            None => return Err(ProxyError::KeyMissing),
        };
        // Whatever the outcome, the key leaves the request here: the header it came in, and
        // any other credential header carrying a gateway key too.
        req.headers_mut().remove(KEY_HEADER);
        if let Some(h) = header {
            req.headers_mut().remove(h);
        }
        while let Some((_, Some(h))) = presented(req.headers(), &route) {
            req.headers_mut().remove(h);
        }
        let Some(key) = key else {
            return Err(ProxyError::KeyUnknown);
        };
        // The name is known from here on: refusals below are recorded under it.
        let metadata = {
            let m = req
                .extensions_mut()
                .get_or_insert_with(CallMetadata::default);
            m.key = Some(key.name.to_string());
            // The key stands for its feature and user: the client cannot claim others.
            if let Some(f) = &key.feature {
                m.set_key_feature(f);
            }
            if let Some(u) = &key.user {
                m.set_key_user(u);
            }
            m.clone()
        };
        if let Some(slot) = req.extensions().get::<CallSlot>() {
            slot.set_metadata(metadata);
        }
        if key.expires_unix.is_some_and(|t| now_secs() >= t) {
            return Err(ProxyError::KeyExpired {
                name: key.name.to_string(),
            });
        }
        if !key.providers.is_empty() && !key.providers.iter().any(|p| *p == route.provider.name) {
            return Err(ProxyError::KeyNotAllowed {
                name: key.name.to_string(),
                what: format!("provider {}", route.provider.name),
            });
        }
        req.extensions_mut().insert(Grant {
            name: key.name.clone(),
            models: key.models.clone(),
        });
        Ok(())
    }
}

impl<S, B> Service<Request<B>> for KeyCheck<S>
where
    S: Service<Request<B>, Response = Response<ProxyBody>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = super::BoxFuture<Result<Response<ProxyBody>, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if self.keys.is_empty() {
            return Box::pin(self.inner.call(req));
        }
        match self.admit(&mut req) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

/// After inspection: the model the request names must be one its key allows. With a model list,
/// a request whose model the gateway could not read (a body it cannot parse, a route it does
/// not inspect: images, audio, files) is refused too, except GET and HEAD (model lists, files
/// read back), which use no model: the list would otherwise be passed by any such request.
#[derive(Clone, Default)]
pub struct KeyModelLayer;

impl<S> Layer<S> for KeyModelLayer {
    type Service = KeyModelCheck<S>;
    fn layer(&self, inner: S) -> KeyModelCheck<S> {
        KeyModelCheck { inner }
    }
}

#[derive(Clone)]
pub struct KeyModelCheck<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for KeyModelCheck<S>
where
    S: Service<Request<B>, Response = Response<ProxyBody>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = super::BoxFuture<Result<Response<ProxyBody>, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // A key that allows every model has nothing to check.
        let grant = req
            .extensions()
            .get::<Grant>()
            .filter(|g| !g.models.is_empty());
        let reads_only = matches!(*req.method(), http::Method::GET | http::Method::HEAD);
        let refused = grant.and_then(|grant| {
            let model = req
                .extensions()
                .get::<CallSlot>()
                .and_then(|slot| slot.requested_model());
            match model {
                Some(model) => (!grant.allows_model(&model)).then(|| ProxyError::KeyNotAllowed {
                    name: grant.name.to_string(),
                    what: format!("model {model}"),
                }),
                None if reads_only => None,
                None => Some(ProxyError::KeyNotAllowed {
                    name: grant.name.to_string(),
                    what: format!(
                        "a request whose model the gateway cannot read (it allows only {})",
                        grant.models.join(", ")
                    ),
                }),
            }
        });
        match refused {
            None => Box::pin(self.inner.call(req)),
            Some(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}
