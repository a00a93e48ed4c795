//! Listeners, connection handling and graceful shutdown for the proxy and admin ports.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tower::Service;

use crate::{
    admin::{self, AdminState},
    call::{CallRecord, Recorder, RecorderParts},
    config::{Config, ConfigError},
    cost::PriceBookCell,
    export::{
        otlp,
        pipeline::{ExportHandle, ExportTasks},
        sampling::TailSampler,
        spool::{SpoolLimits, open_or_degrade},
    },
    metrics::Metrics,
    proxy::{body::ProxyBody, stack, upstream::UpstreamClient},
    store::{
        budgets::Budgets,
        costs::{CostStore, spawn_flusher},
    },
    trace::span::Telemetry,
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("upstream client: {0}")]
    Client(String),
    #[error("span export: {0}")]
    Export(String),
}

/// How long shutdown waits for the last cost store flush.
const COST_FLUSH_AT_SHUTDOWN: Duration = Duration::from_secs(2);

/// How a shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Every open call finished within the grace period.
    pub drained: bool,
}

/// A running gateway: the proxy and admin listeners and their connections.
pub struct Gateway {
    /// Where apps send their calls.
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    recorder: Arc<Recorder>,
    prices: Arc<PriceBookCell>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<ShutdownReport>,
}

impl Gateway {
    /// Validates the config, binds both listeners and starts serving. Port 0 picks a free port.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        let registry = Arc::new(config.validate()?);
        let metrics = Arc::new(Metrics::new());
        let client = Arc::new(UpstreamClient::new(&config.upstream).map_err(StartError::Client)?);

        let bind = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { what, addr, source })
        };
        let listener = bind("listen", config.listen_addr()?).await?;
        let admin_listener = bind("admin_listen", config.admin_addr()?).await?;
        let addr = local_addr(&listener, "listen")?;
        let admin_addr = local_addr(&admin_listener, "admin_listen")?;

        let telemetry = Telemetry::from_env(std::env::vars(), &instance_id());
        let (export, export_tasks) = if config.export.enabled() {
            let (handle, tasks) = start_export(&config, &telemetry, metrics.clone()).await?;
            (Some(handle), Some(tasks))
        } else {
            tracing::info!("no OTLP endpoint configured: spans stay local");
            (None, None)
        };
        let prices = Arc::new(PriceBookCell::new(config.price_book()?));
        let data_dir = config.data_dir();
        let (costs, _) =
            tokio::task::spawn_blocking(move || CostStore::open(&data_dir.join("costs")))
                .await
                .map_err(|e| StartError::Export(e.to_string()))?;
        if let Some(damage) = costs.damage() {
            metrics.store_damaged("costs");
            metrics.cost_calls_lost.inc_by(damage.lost.units);
        }
        let costs = Arc::new(costs);
        let budgets = Arc::new(
            Budgets::new(&config.budgets, &costs)
                .map_err(|e| StartError::Config(ConfigError::Invalid(e)))?,
        );
        let cost_flusher = spawn_flusher(costs.clone(), Duration::from_secs(2));
        let capturer = Arc::new(config.capturer()?);
        let recorder = Arc::new(Recorder::new(RecorderParts {
            capturer: capturer.clone(),
            pricing: config.cost.enabled,
            metrics: metrics.clone(),
            keep: config.inspect.recent_calls,
            export,
            prices: prices.clone(),
            costs: costs.clone(),
            budgets: budgets.clone(),
            feature_labels: config.cost.metric_features.clone(),
            max_feature_labels: config.cost.max_metric_features,
        }));
        let proxy = stack::build(
            &config,
            registry.clone(),
            client,
            metrics.clone(),
            recorder.clone(),
            capturer,
            budgets,
        );

        let admin_state = Arc::new(AdminState {
            metrics: metrics.clone(),
            ready: AtomicBool::new(true),
            costs: costs.clone(),
        });
        let admin_service = tower::service_fn({
            let state = admin_state.clone();
            move |req: Request<Incoming>| admin::handle(state.clone(), req)
        });

        let (shutdown, signal) = watch::channel(false);
        let grace = config.shutdown_grace();
        let export_deadline = Duration::from_millis(config.export.shutdown_export_ms);
        let task = tokio::spawn(async move {
            let admin_stop = watch::channel(false);
            let admin_task = tokio::spawn(serve(
                admin_listener,
                admin_service,
                admin_stop.1,
                Duration::from_secs(1),
                "admin",
            ));
            let mut on_signal = signal.clone();
            let ready = admin_state.clone();
            tokio::spawn(async move {
                let _ = on_signal.wait_for(|stop| *stop).await;
                ready.ready.store(false, Ordering::Release);
            });
            let drained = serve(listener, proxy, signal, grace, "proxy").await;
            // Every call has ended: export what is queued, spool the rest.
            if let Some(tasks) = export_tasks {
                tasks.shutdown(export_deadline).await;
            }
            cost_flusher.abort();
            // Bounded: a failed disk must not hold the exit (the rows stay unflushed then).
            let flushed = tokio::time::timeout(
                COST_FLUSH_AT_SHUTDOWN,
                tokio::task::spawn_blocking(move || costs.flush()),
            );
            if flushed.await.is_err() {
                tracing::error!(
                    "the cost store did not flush in time at shutdown; recent cost rows may be lost"
                );
            }
            let _ = admin_stop.0.send(true);
            let _ = admin_task.await;
            ShutdownReport { drained }
        });
        tracing::info!(%addr, %admin_addr, providers = registry.providers().count(), "sidetrace listening");
        Ok(Gateway {
            addr,
            admin_addr,
            metrics,
            recorder,
            prices,
            shutdown,
            task,
        })
    }

    /// Rebuilds the price tables from a new config (providers' `[[models]]` and overrides);
    /// calls priced from now on use them. Other settings need a restart.
    pub fn reload_prices(&self, config: &Config) -> Result<(), StartError> {
        self.prices.store(config.price_book()?);
        tracing::info!("prices reloaded");
        Ok(())
    }

    /// The most recent span records, oldest first.
    pub fn recent_spans(&self) -> Vec<crate::trace::span::SpanRecord> {
        self.recorder.recent_spans()
    }

    /// The most recent finished calls, oldest first.
    pub fn recent_calls(&self) -> Vec<CallRecord> {
        self.recorder.recent()
    }

    /// Stops accepting connections; open calls may finish within the grace period.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Shuts down and waits until every connection is closed or the grace period is over.
    pub async fn shutdown(self) -> ShutdownReport {
        self.begin_shutdown();
        self.wait().await
    }

    /// Waits for the gateway to stop (after `begin_shutdown`).
    pub async fn wait(self) -> ShutdownReport {
        match self.task.await {
            Ok(report) => report,
            Err(e) => {
                tracing::error!(error = %e, "gateway task failed");
                ShutdownReport { drained: false }
            }
        }
    }
}

/// `service.instance.id`: the pod or host name when known, else a random id.
fn instance_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| crate::trace::context::hex(&crate::trace::context::random_span_id()))
}

async fn start_export(
    config: &Config,
    telemetry: &Telemetry,
    metrics: Arc<Metrics>,
) -> Result<(ExportHandle, ExportTasks), StartError> {
    let tls = crate::proxy::upstream::tls_config(&config.upstream).map_err(StartError::Export)?;
    let exporter = otlp::build(&config.export, telemetry, tls).map_err(StartError::Export)?;
    let limits = SpoolLimits {
        max_bytes: config.spool.max_bytes,
        max_age_ms: config.spool.max_age_ms,
        max_attempts: config.spool.max_attempts,
    };
    let dir = config.data_dir().join("spool");
    let opened = tokio::task::spawn_blocking(move || open_or_degrade(&dir, limits))
        .await
        .map_err(|e| StartError::Export(e.to_string()))?;
    if opened.degraded.is_some() {
        metrics.spool_degraded.set(1);
    }
    if opened.damage.is_some() {
        metrics.store_damaged("spool");
    }
    let spool = opened.spool;
    let scope = otlp::scope(telemetry);
    let sampler = config
        .sampling
        .enabled
        .then(|| TailSampler::new(config.sampling.clone()));
    Ok(ExportHandle::start(
        &config.export,
        exporter,
        spool,
        limits,
        scope,
        metrics,
        sampler,
    ))
}

fn local_addr(listener: &TcpListener, what: &'static str) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Bind {
        what,
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })
}

/// Accepts connections until told to stop, then lets open connections finish for up to
/// `grace`. Returns whether they all finished.
async fn serve<S>(
    listener: TcpListener,
    service: S,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    name: &'static str,
) -> bool
where
    S: Service<Request<Incoming>, Response = Response<ProxyBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024);
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        match accepted {
            Ok((stream, _peer)) => {
                // Small SSE events must leave at once, not wait for Nagle.
                let _ = stream.set_nodelay(true);
                let conn = builder
                    .serve_connection_with_upgrades(
                        TokioIo::new(stream),
                        TowerToHyperService::new(service.clone()),
                    )
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(listener = name, error = %e, "connection ended with an error");
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: keep serving the connections we have.
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    tracing::info!(
        listener = name,
        grace_ms = grace.as_millis() as u64,
        "draining connections"
    );
    tokio::select! {
        _ = graceful.shutdown() => true,
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(listener = name, "grace period over; cutting the remaining connections");
            false
        }
    }
}
