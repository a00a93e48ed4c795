//! Budget check: a call whose feature or user has spent its budget for the window is refused
//! with 429 before it reaches the provider. Calls already under way are never cut.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tower::{Layer, Service};

use super::body::ProxyBody;
use crate::{
    error::ProxyError, metrics::Metrics, store::budgets::Budgets, trace::metadata::CallMetadata,
};

#[derive(Clone)]
pub struct BudgetLayer {
    budgets: Arc<Budgets>,
    metrics: Arc<Metrics>,
}

impl BudgetLayer {
    pub fn new(budgets: Arc<Budgets>, metrics: Arc<Metrics>) -> Self {
        BudgetLayer { budgets, metrics }
    }
}

impl<S> Layer<S> for BudgetLayer {
    type Service = BudgetCheck<S>;
    fn layer(&self, inner: S) -> BudgetCheck<S> {
        BudgetCheck {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct BudgetCheck<S> {
    inner: S,
    layer: BudgetLayer,
}

impl<S, B> Service<Request<B>> for BudgetCheck<S>
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
        if !self.layer.budgets.is_empty()
            && let Some(m) = req.extensions().get::<CallMetadata>()
            && let Some(e) = self
                .layer
                .budgets
                .check(m.feature.as_deref(), m.user_id.as_deref())
        {
            self.layer.metrics.budget_refused(&e.name);
            return Box::pin(std::future::ready(Err(ProxyError::BudgetExceeded {
                name: e.name,
                limit_usd: e.limit_usd,
                window: e.window,
            })));
        }
        Box::pin(self.inner.call(req))
    }
}
