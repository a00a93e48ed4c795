//! AWS Signature Version 4 for providers whose `[auth] sigv4_service` names an AWS service
//! (Bedrock). A client's SigV4 signature covers the host and path it sent, the gateway's, so it
//! cannot survive the rewrite to the upstream; when the gateway holds AWS credentials it signs
//! each such request again for the upstream. Bedrock API keys (`Authorization: Bearer ...`) are
//! not signatures and pass as they are.

use std::{borrow::Cow, fmt, time::SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::{
    http_request::{SignableBody, SignableRequest, SigningSettings, sign},
    sign::v4,
};
use http::{HeaderMap, HeaderValue, header};

/// Headers of a client's own SigV4 signature: they name the gateway's host, so they go.
const CLIENT_SIGNATURE_HEADERS: [&str; 4] = [
    "authorization",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
];

/// The AWS credentials the gateway holds and the service it signs for.
pub struct AwsSigner {
    credentials: Credentials,
    service: String,
    /// `AWS_REGION` (else `AWS_DEFAULT_REGION`): the region when the route names none (a
    /// `base_url` without the `{region}` parameter, such as a VPC endpoint).
    default_region: Option<String>,
}

impl fmt::Debug for AwsSigner {
    /// Never the keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsSigner")
            .field("service", &self.service)
            .field("default_region", &self.default_region)
            .finish_non_exhaustive()
    }
}

impl AwsSigner {
    /// From the standard variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optionally
    /// `AWS_SESSION_TOKEN`, `AWS_REGION` / `AWS_DEFAULT_REGION`); `None` without a key pair.
    pub fn from_env(
        service: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Option<AwsSigner> {
        let mut key = None;
        let mut secret = None;
        let mut token = None;
        let mut region = None;
        let mut default_region = None;
        for (k, v) in vars {
            let v = Some(v).filter(|v| !v.trim().is_empty());
            match k.as_str() {
                "AWS_ACCESS_KEY_ID" => key = v,
                "AWS_SECRET_ACCESS_KEY" => secret = v,
                "AWS_SESSION_TOKEN" => token = v,
                "AWS_REGION" => region = v,
                "AWS_DEFAULT_REGION" => default_region = v,
                _ => {}
            }
        }
        Some(AwsSigner {
            credentials: Credentials::new(key?, secret?, token, None, "sidetrace-env"),
            service: service.to_string(),
            default_region: region.or(default_region),
        })
    }

    /// Whether a request with these headers is signed by the gateway: any request but one that
    /// carries a Bedrock API key (a bearer token, valid whatever the host).
    pub fn should_sign(headers: &HeaderMap) -> bool {
        !headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("Bearer "))
    }

    /// Signs the upstream request in place: the client's signature headers go, ours come. Signs
    /// the host (the URI's authority, which hyper sends as `Host` or `:authority`), the content
    /// type, every `x-amz-*` and `x-amzn-*` header, and the body's SHA-256. `region`: the one the
    /// route names, else the default.
    pub fn sign(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        headers: &mut HeaderMap,
        region: Option<&str>,
        body: &[u8],
        time: SystemTime,
    ) -> Result<(), String> {
        let region = region
            .or(self.default_region.as_deref())
            .ok_or("no region to sign for: the route names none and AWS_REGION is not set")?;
        for name in CLIENT_SIGNATURE_HEADERS {
            headers.remove(name);
        }
        let host = uri
            .authority()
            .ok_or("the upstream URI has no host")?
            .as_str();
        let mut signed: Vec<(&str, Cow<'_, str>)> = vec![("host", Cow::Borrowed(host))];
        for (name, value) in headers.iter() {
            let n = name.as_str();
            if (n == "content-type" || n.starts_with("x-amz-") || n.starts_with("x-amzn-"))
                && let Ok(v) = value.to_str()
            {
                signed.push((n, Cow::Borrowed(v)));
            }
        }
        let identity = self.credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name(&self.service)
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| format!("sigv4 parameters: {e}"))?
            .into();
        let uri_text = uri.to_string();
        let request = SignableRequest::new(
            method.as_str(),
            uri_text.as_str(),
            signed.iter().map(|(k, v)| (*k, v.as_ref())),
            SignableBody::Bytes(body),
        )
        .map_err(|e| format!("sigv4 request: {e}"))?;
        let (instructions, _) = sign(request, &params)
            .map_err(|e| format!("sigv4: {e}"))?
            .into_parts();
        let (new_headers, _) = instructions.into_parts();
        for h in new_headers {
            let mut value = HeaderValue::from_str(h.value())
                .map_err(|e| format!("sigv4 header {}: {e}", h.name()))?;
            // Kept out of logs and debug output, like every credential.
            value.set_sensitive(
                h.sensitive() || matches!(h.name(), "authorization" | "x-amz-security-token"),
            );
            headers.insert(h.name(), value);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's SigV4 test suite credentials and time (`get-vanilla`, `post-vanilla`).
    fn example(token: Option<&str>) -> AwsSigner {
        let mut vars = vec![
            ("AWS_ACCESS_KEY_ID".to_string(), "AKIDEXAMPLE".to_string()),
            (
                "AWS_SECRET_ACCESS_KEY".to_string(),
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_string(),
            ),
            ("AWS_REGION".to_string(), "us-east-1".to_string()),
        ];
        if let Some(t) = token {
            vars.push(("AWS_SESSION_TOKEN".to_string(), t.to_string()));
        }
        AwsSigner::from_env("service", vars).unwrap()
    }

    fn time() -> SystemTime {
        // 20150830T123600Z
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_440_938_160)
    }

    #[test]
    fn the_aws_test_suite_vanilla_requests_get_their_published_signatures() {
        for (method, want) in [
            (
                http::Method::GET,
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            (
                http::Method::POST,
                "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            ),
        ] {
            let uri: http::Uri = "https://example.amazonaws.com/".parse().unwrap();
            let mut headers = HeaderMap::new();
            example(None)
                .sign(&method, &uri, &mut headers, None, b"", time())
                .unwrap();
            assert_eq!(
                headers["authorization"],
                format!(
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature={want}"
                ),
                "{method}"
            );
            assert_eq!(headers["x-amz-date"], "20150830T123600Z");
        }
    }

    #[test]
    fn a_clients_own_signature_is_replaced_and_a_session_token_is_sent() {
        let uri: http::Uri = "https://bedrock-runtime.eu-west-1.amazonaws.com/model/m/converse"
            .parse()
            .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            HeaderValue::from_static(
                "AWS4-HMAC-SHA256 Credential=AKIACLIENT/20260101/eu-west-1/bedrock/aws4_request, SignedHeaders=host, Signature=00",
            ),
        );
        headers.insert("x-amz-security-token", HeaderValue::from_static("client"));
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        assert!(AwsSigner::should_sign(&headers));
        example(Some("session-token-1"))
            .sign(
                &http::Method::POST,
                &uri,
                &mut headers,
                Some("eu-west-1"),
                b"{}",
                time(),
            )
            .unwrap();
        let auth = headers["authorization"].to_str().unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/eu-west-1/service/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature="),
            "{auth}"
        );
        assert_eq!(headers["x-amz-security-token"], "session-token-1");
        assert!(headers["authorization"].is_sensitive());
    }

    #[test]
    fn a_bearer_api_key_is_not_signed_and_no_key_pair_means_no_signer() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            HeaderValue::from_static("Bearer bedrock-api-key"),
        );
        assert!(!AwsSigner::should_sign(&headers));
        assert!(
            AwsSigner::from_env(
                "bedrock",
                [("AWS_ACCESS_KEY_ID".to_string(), "AKID".to_string())]
            )
            .is_none()
        );
        let no_region = AwsSigner::from_env(
            "bedrock",
            [
                ("AWS_ACCESS_KEY_ID".to_string(), "AKID".to_string()),
                ("AWS_SECRET_ACCESS_KEY".to_string(), "secret".to_string()),
            ],
        )
        .unwrap();
        let uri: http::Uri = "http://127.0.0.1:9/model/m/converse".parse().unwrap();
        let err = no_region
            .sign(
                &http::Method::POST,
                &uri,
                &mut HeaderMap::new(),
                None,
                b"",
                time(),
            )
            .unwrap_err();
        assert!(err.contains("AWS_REGION"), "{err}");
        assert!(!format!("{no_region:?}").contains("secret"));
    }
}
