//! The sign layer: requests to a provider that signs with AWS SigV4 (`[auth] sigv4_service`)
//! are signed again for the upstream with the credentials the gateway holds, since the client's
//! signature covers the gateway's host and path. Sits right after the rewrite, which fixes the
//! URI and the headers the signature covers; the body is read whole to hash it (inspection has
//! usually read it already, and the body limit bounds it).

use std::{
    task::{Context, Poll},
    time::SystemTime,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use tower::{Layer, Service};

use super::body::{ProxyBody, RequestBody};
use crate::{error::ProxyError, provider::Route, provider::sigv4::AwsSigner};

#[derive(Clone, Default)]
pub struct SignLayer;

impl<S> Layer<S> for SignLayer {
    type Service = Sign<S>;
    fn layer(&self, inner: S) -> Sign<S> {
        Sign { inner }
    }
}

#[derive(Clone)]
pub struct Sign<S> {
    inner: S,
}

impl<S> Service<Request<RequestBody>> for Sign<S>
where
    S: Service<Request<RequestBody>, Response = Response<ProxyBody>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = super::BoxFuture<Result<Response<ProxyBody>, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        let signing = req.extensions().get::<Route>().and_then(|route| {
            let signer = route.provider.sigv4.clone()?;
            AwsSigner::should_sign(req.headers()).then(|| {
                let region = route
                    .uri
                    .host()
                    .and_then(|h| route.provider.host_param_value(h, "region"))
                    .map(str::to_string);
                (signer, region)
            })
        });
        let Some((signer, region)) = signing else {
            return Box::pin(self.inner.call(req));
        };
        // The service that was polled ready takes this call; a clone waits for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let bytes = read_whole(body).await?;
            signer
                .sign(
                    &parts.method,
                    &parts.uri,
                    &mut parts.headers,
                    region.as_deref(),
                    &bytes,
                    SystemTime::now(),
                )
                .map_err(ProxyError::Internal)?;
            // Boxed here, where its type is concrete: rustc cannot prove the inner future Send
            // for every lifetime of the body's error type otherwise.
            let call: super::BoxFuture<Result<Response<ProxyBody>, ProxyError>> =
                Box::pin(inner.call(Request::from_parts(parts, super::body::full(bytes))));
            call.await
        })
    }
}

/// The whole body (not copied when it is one chunk already, as inspection leaves it).
async fn read_whole(body: RequestBody) -> Result<Bytes, ProxyError> {
    Ok(body
        .collect()
        .await
        .map_err(super::inspect::body_error)?
        .to_bytes())
}
