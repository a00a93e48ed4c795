//! Prometheus metrics of the gateway itself, served as text on the admin listener.

use std::time::Duration;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    provider: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
}

type HistogramFamily = Family<ProviderLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms .. 33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<CallLabels, Counter>,
    rejected: Family<ReasonLabels, Counter>,
    upstream_headers: HistogramFamily,
    /// Calls in flight, open response streams included.
    pub active_calls: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<CallLabels, Counter>::default();
        registry.register(
            "sidetrace_requests",
            "Routed calls by provider and response status (upstream status, or the gateway's error status)",
            requests.clone(),
        );
        let rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "sidetrace_requests_rejected",
            "Calls refused before reaching a provider, by reason",
            rejected.clone(),
        );
        let upstream_headers: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "sidetrace_upstream_response_headers",
            "Time from sending a call upstream to receiving its response headers",
            Unit::Seconds,
            upstream_headers.clone(),
        );
        let active_calls = Gauge::default();
        registry.register(
            "sidetrace_active_calls",
            "Calls in flight, open response streams included",
            active_calls.clone(),
        );
        Metrics {
            registry,
            requests,
            rejected,
            upstream_headers,
            active_calls,
        }
    }

    pub fn call_finished_headers(&self, provider: &str, status: u16) {
        self.requests
            .get_or_create(&CallLabels {
                provider: provider.to_string(),
                status,
            })
            .inc();
    }

    pub fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn observe_upstream_headers(&self, provider: &str, elapsed: Duration) {
        self.upstream_headers
            .get_or_create(&ProviderLabels {
                provider: provider.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}
