//! Budget check: a call whose feature or user has spent its budget for the window (counting the
//! reservations of calls under way) is refused with 429 before it reaches the provider; an
//! admitted call carries its reservation to the record layer. Calls under way are never cut.
//! What a budget promises is in `store/budgets.rs`.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tower::{Layer, Service};

use super::{body::ProxyBody, record::CallSlot};
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
        if self.layer.budgets.is_empty() {
            return Box::pin(self.inner.call(req));
        }
        let metadata = req.extensions().get::<CallMetadata>();
        let admitted = self.layer.budgets.admit(
            metadata.and_then(|m| m.feature.as_deref()),
            metadata.and_then(|m| m.user_id.as_deref()),
        );
        match admitted {
            Ok(reservation) => {
                // The call keeps it until it is recorded; without a call (no record layer
                // above) it is released here at once.
                if let Some(slot) = req.extensions().get::<CallSlot>() {
                    slot.hold(reservation);
                }
                Box::pin(self.inner.call(req))
            }
            Err(e) => {
                self.layer.metrics.budget_refused(&e.name);
                Box::pin(std::future::ready(Err(ProxyError::BudgetExceeded {
                    name: e.name,
                    limit_usd: e.limit_usd,
                    window: e.window,
                    retry_after_secs: e.retry_after_secs,
                })))
            }
        }
    }
}
