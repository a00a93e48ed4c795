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
            metadata.and_then(|m| m.key.as_deref()),
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tower::{ServiceExt, service_fn};

    use super::*;
    use crate::{
        config::{BudgetConfig, Window},
        proxy::body::full,
        store::costs::CostStore,
    };

    /// A budget of $1 a day for feature `search`, where a call not yet priced reserves $1:
    /// one call under way spends it.
    fn budgets() -> Arc<Budgets> {
        let config = BudgetConfig {
            name: "search-daily".into(),
            feature: Some("search".into()),
            user: None,
            key: None,
            limit_usd: "1.00".into(),
            window: Window::Day,
            unpriced_call_usd: Some("1.00".into()),
        };
        Arc::new(Budgets::new(&[config], &CostStore::in_memory()).unwrap())
    }

    fn request(feature: &str, slot: &CallSlot) -> Request<()> {
        let mut req = Request::new(());
        req.extensions_mut().insert(CallMetadata {
            feature: Some(feature.into()),
            ..CallMetadata::default()
        });
        req.extensions_mut().insert(slot.clone());
        req
    }

    #[tokio::test]
    async fn a_spent_budget_refuses_before_the_inner_service_and_a_released_reservation_admits_again()
     {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let inner = service_fn(move |_req: Request<()>| {
            counted.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<_, ProxyError>(Response::new(full("ok"))))
        });
        let metrics = Arc::new(Metrics::new());
        let svc = BudgetLayer::new(budgets(), metrics.clone()).layer(inner);

        // The first call is admitted and its slot holds the reservation.
        let first = CallSlot::default();
        svc.clone()
            .oneshot(request("search", &first))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // While it is under way, the next one is refused without reaching the inner service.
        let refused = svc
            .clone()
            .oneshot(request("search", &CallSlot::default()))
            .await;
        match refused {
            Err(ProxyError::BudgetExceeded {
                name,
                limit_usd,
                window,
                retry_after_secs,
            }) => {
                assert_eq!(
                    (name.as_str(), limit_usd.as_str(), window),
                    ("search-daily", "1.00", "day")
                );
                assert!(
                    (1..=86_400).contains(&retry_after_secs),
                    "{retry_after_secs}"
                );
            }
            other => panic!("expected a budget refusal, got {other:?}"),
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(metrics.encode().contains("search-daily"));

        // Another feature is not under this budget.
        svc.clone()
            .oneshot(request("chat", &CallSlot::default()))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        // The first call ends unpriced (it is never recorded here): dropping its slot releases
        // the reservation, and the budget admits again.
        drop(first);
        svc.oneshot(request("search", &CallSlot::default()))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
