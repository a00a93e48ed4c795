//! One place turns every failure on the request path into a response, and says whose fault it was.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::proxy::body::{ProxyBody, full};

/// Whose fault a failure was: decides the status class and how loudly it is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something we cannot forward.
    Client,
    /// The upstream provider could not be reached or did not answer in time.
    Upstream,
    /// The gateway itself (overload, shutdown, a bug).
    Gateway,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Upstream => "upstream",
            Fault::Gateway => "gateway",
        }
    }
}

/// A failure on the request path. Upstream HTTP error responses are not errors here: they pass
/// through to the client unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no provider route matches {path}; valid prefixes: {prefixes}")]
    UnknownRoute { path: String, prefixes: String },
    #[error("invalid {param} in path: {value:?} (expected letters, digits and '-')")]
    BadRouteParam { param: String, value: String },
    #[error(
        "path {path:?} has a '.' or '..' segment (plain or percent-encoded); such paths are not forwarded"
    )]
    DotSegment { path: String },
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("client request body failed: {0}")]
    ClientBody(String),
    #[error("request body too slow: {0}")]
    RequestBodyTimeout(String),
    #[error("upstream {host} is unreachable: {reason}")]
    UpstreamUnreachable { host: String, reason: String },
    #[error("upstream {host} sent no response headers within {ms} ms")]
    UpstreamTimeout { host: String, ms: u64 },
    #[error("gateway overloaded: {limit} calls already in flight, retry shortly")]
    Overloaded { limit: usize },
    #[error(
        "budget {name:?} of {limit_usd} USD per {window} is spent; calls resume when the window turns"
    )]
    BudgetExceeded {
        name: String,
        limit_usd: String,
        window: &'static str,
        retry_after_secs: u64,
    },
    #[error(
        "request bodies held by the gateway would pass {limit} bytes (max_buffered_request_bytes), retry shortly"
    )]
    BufferFull { limit: u64 },
    #[error(
        "this gateway wants a gateway key: Authorization: Bearer sk-st-... (or x-sidetrace-key beside your own provider key)"
    )]
    KeyMissing,
    #[error("the gateway key is not valid")]
    KeyUnknown,
    #[error("the gateway key {name:?} has expired")]
    KeyExpired { name: String },
    #[error("the gateway key {name:?} may not use {what}")]
    KeyNotAllowed { name: String, what: String },
    #[error("internal gateway error: {0}")]
    Internal(String),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::UnknownRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::BadRouteParam { .. }
            | ProxyError::DotSegment { .. }
            | ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::RequestBodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::UpstreamUnreachable { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Overloaded { .. } | ProxyError::BufferFull { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::BudgetExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::KeyMissing | ProxyError::KeyUnknown | ProxyError::KeyExpired { .. } => {
                StatusCode::UNAUTHORIZED
            }
            ProxyError::KeyNotAllowed { .. } => StatusCode::FORBIDDEN,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::UnknownRoute { .. }
            | ProxyError::BadRouteParam { .. }
            | ProxyError::DotSegment { .. }
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::ClientBody(_)
            | ProxyError::RequestBodyTimeout(_)
            | ProxyError::BudgetExceeded { .. }
            | ProxyError::KeyMissing
            | ProxyError::KeyUnknown
            | ProxyError::KeyExpired { .. }
            | ProxyError::KeyNotAllowed { .. } => Fault::Client,
            ProxyError::UpstreamUnreachable { .. } | ProxyError::UpstreamTimeout { .. } => {
                Fault::Upstream
            }
            ProxyError::Overloaded { .. }
            | ProxyError::BufferFull { .. }
            | ProxyError::Internal(_) => Fault::Gateway,
        }
    }

    /// Refused before the call was routed (load shedding, routing): there is no record of it,
    /// so its answer names no trace.
    pub fn before_routing(&self) -> bool {
        matches!(
            self,
            ProxyError::UnknownRoute { .. }
                | ProxyError::BadRouteParam { .. }
                | ProxyError::DotSegment { .. }
                | ProxyError::Overloaded { .. }
        )
    }

    /// A stable machine-readable code, used as `error.code` in the body and as the
    /// `error.type` of the call record.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::UnknownRoute { .. } => "unknown_route",
            ProxyError::BadRouteParam { .. } => "bad_route_param",
            ProxyError::DotSegment { .. } => "invalid_path",
            ProxyError::BodyTooLarge { .. } => "request_too_large",
            ProxyError::ClientBody(_) => "client_body_error",
            ProxyError::RequestBodyTimeout(_) => "request_body_timeout",
            ProxyError::UpstreamUnreachable { .. } => "upstream_unreachable",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
            ProxyError::Overloaded { .. } => "gateway_overloaded",
            ProxyError::BufferFull { .. } => "gateway_buffer_full",
            ProxyError::BudgetExceeded { .. } => "budget_exceeded",
            ProxyError::KeyMissing => "missing_gateway_key",
            ProxyError::KeyUnknown => "invalid_gateway_key",
            ProxyError::KeyExpired { .. } => "expired_gateway_key",
            ProxyError::KeyNotAllowed { .. } => "gateway_key_not_allowed",
            ProxyError::Internal(_) => "internal_error",
        }
    }

    fn error_type(&self) -> &'static str {
        match self.fault() {
            Fault::Client if matches!(self, ProxyError::BudgetExceeded { .. }) => {
                "budget_exceeded_error"
            }
            // The types OpenAI's and Anthropic's APIs use for 401 and 403.
            Fault::Client
                if matches!(
                    self,
                    ProxyError::KeyMissing | ProxyError::KeyUnknown | ProxyError::KeyExpired { .. }
                ) =>
            {
                "authentication_error"
            }
            Fault::Client if matches!(self, ProxyError::KeyNotAllowed { .. }) => "permission_error",
            Fault::Client => "invalid_request_error",
            Fault::Upstream => "upstream_error",
            Fault::Gateway => match self {
                ProxyError::Overloaded { .. } | ProxyError::BufferFull { .. } => "overloaded_error",
                _ => "api_error",
            },
        }
    }

    /// The body is shaped so that both OpenAI's SDKs (`error.message`, `error.type`, `error.code`)
    /// and Anthropic's (`type: "error"`, `error.type`) surface it as a normal API error.
    pub fn to_response(&self) -> Response<ProxyBody> {
        let body = serde_json::json!({
            "type": "error",
            "error": {
                "type": self.error_type(),
                "code": self.code(),
                "message": self.to_string(),
                "source": "sidetrace",
            }
        });
        let mut response = Response::new(full(Bytes::from(body.to_string())));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            "x-sidetrace-error-source",
            HeaderValue::from_static(self.fault().as_str()),
        );
        match self {
            ProxyError::Overloaded { .. } | ProxyError::BufferFull { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ProxyError::KeyMissing
            | ProxyError::KeyUnknown
            | ProxyError::KeyExpired { .. }
            | ProxyError::KeyNotAllowed { .. } => {
                // The same key would be refused again.
                headers.insert("x-should-retry", HeaderValue::from_static("false"));
                if self.status() == StatusCode::UNAUTHORIZED {
                    headers.insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer realm=\"sidetrace\""),
                    );
                }
            }
            ProxyError::BudgetExceeded {
                retry_after_secs, ..
            } => {
                // Retrying before the window turns cannot succeed: the SDKs honour this header.
                headers.insert("x-should-retry", HeaderValue::from_static("false"));
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        response
    }
}
