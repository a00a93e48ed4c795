//! Listeners, connection handling and graceful shutdown for the proxy and admin ports.
//!
//! Each listener keeps its connections bounded: at most `max_connections` open (at the cap it
//! closes the ones quiet for a second or more, and accepts again when one closes), a connection
//! must send its first request within `request_headers_ms` and is closed gracefully after
//! `idle_connection_ms` with no request in flight. On shutdown the connections drain within the grace; those still open after it are
//! cut, and the calls on them are finished (recorded, exported or spooled) before export stops.

use std::{
    convert::Infallible,
    fmt::Display,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulConnection},
    service::TowerToHyperService,
};
use tokio::{
    net::TcpListener,
    sync::{Notify, OwnedSemaphorePermit, Semaphore, watch},
    task::{JoinHandle, JoinSet},
};
use tower::Service;

use crate::{
    admin::{self, AdminState},
    call::{
        recorder::{Recorder, RecorderParts},
        sink::Sink,
        tools::{ToolLimits, ToolTable},
    },
    config::{Config, ConfigError},
    cost::{PriceBook, PriceBookCell},
    export::{
        otlp,
        pipeline::{ExportHandle, ExportTasks},
        sampling::TailSampler,
        spool::{SpoolLimits, open_or_degrade},
    },
    metrics::{CallMetrics, ConnectionCloseLabels, ListenerLabels, Metrics},
    provider::Registry,
    proxy::{
        body::{Holding, ProxyBody},
        stack,
        upstream::UpstreamClient,
    },
    store::{
        budgets::Budgets,
        costs::{CostStore, HOUR_SECS, spawn_flusher},
        traces::{StoreLimits, StoreSink, TraceStore},
    },
    trace::{capture::Capturer, span::Telemetry},
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
    /// The OTLP receiver's listeners (`[ingest]`), when it is on.
    pub ingest_http_addr: Option<SocketAddr>,
    pub ingest_grpc_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    /// Tool calls awaiting their results (`None` when `[trace] tool_spans` is off): the OTLP
    /// receiver reports the app's own `execute_tool` spans here.
    pub tools: Option<Arc<ToolTable>>,
    prices: Arc<PriceBookCell>,
    /// The listeners' certificate (`[tls]`), reloaded on SIGHUP.
    server_certs: Option<Arc<crate::tls::ServerCerts>>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<ShutdownReport>,
}

impl Gateway {
    /// Validates the config, binds both listeners and starts serving. Port 0 picks a free port.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        Gateway::start_with_sinks(config, Vec::new()).await
    }

    /// [`Gateway::start`], with more places for finished calls to go: each sink gets every call
    /// after the built-in ones (metrics, cost store, budgets). Tests use it to read the calls.
    pub async fn start_with_sinks(
        config: Config,
        extra_sinks: Vec<Arc<dyn Sink>>,
    ) -> Result<Gateway, StartError> {
        let registry = Arc::new(check_config(&config)?);
        let admin_auth = admin::auth::AdminAuth::from_config(&config.admin)?;
        let keys = Arc::new(crate::proxy::keys::Keys::from_config(&config.keys)?);
        // HTTPS on the listeners: one certificate, swapped in place on reload.
        let server_certs = crate::tls::ServerCerts::load(&config.tls)
            .map_err(|e| StartError::Config(ConfigError::Invalid(e)))?;
        let (proxy_tls, admin_tls) = match &server_certs {
            Some(certs) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(
                    certs
                        .server_config()
                        .map_err(|e| StartError::Config(ConfigError::Invalid(e)))?,
                ));
                let admin = config.tls.admin.then(|| acceptor.clone());
                (Some(acceptor), admin)
            }
            None => (None, None),
        };
        if !admin_auth.required() && !config.admin_addr()?.ip().is_loopback() {
            tracing::warn!(
                admin_listen = %config.admin_listen,
                "THE ADMIN LISTENER IS OPEN TO THE NETWORK WITH NO TOKEN (allow_unauthenticated_admin): anyone who reaches it can read traces, captured content and spend per user"
            );
        }
        let metrics = Arc::new(Metrics::with_series_cap(config.cost.max_metric_series));
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
        // The OTLP receiver's listeners: bound before anything starts, so a port in use stops
        // the start with its name and address.
        let ingest_listeners = if config.ingest.enabled {
            let http = bind("ingest.http_listen", config.ingest.http_addr()?).await?;
            let grpc = bind("ingest.grpc_listen", config.ingest.grpc_addr()?).await?;
            Some((http, grpc))
        } else {
            None
        };
        let ingest_http_addr = match &ingest_listeners {
            Some((http, _)) => Some(local_addr(http, "ingest.http_listen")?),
            None => None,
        };
        let ingest_grpc_addr = match &ingest_listeners {
            Some((_, grpc)) => Some(local_addr(grpc, "ingest.grpc_listen")?),
            None => None,
        };

        let telemetry = Telemetry::from_env(std::env::vars(), &instance_id());
        let (export, export_tasks) = if config.export.enabled() {
            let (handle, tasks) = start_export(&config, &telemetry, metrics.clone()).await?;
            (Some(handle), Some(tasks))
        } else {
            if let Some(reason) = config.export.off_reason() {
                tracing::info!("{reason}");
            }
            (None, None)
        };
        let prices = Arc::new(PriceBookCell::new(PriceBook::from_config(&config)?));
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
        // The aggregates are kept as long as the traces, and as long as budgets look back.
        let cost_keep_secs = config
            .store
            .max_age_secs()?
            .max(budgets.longest_window_secs() + HOUR_SECS);
        let cost_flusher = spawn_flusher(costs.clone(), Duration::from_secs(2), cost_keep_secs);
        let traces = open_trace_store(&config, metrics.clone()).await?;
        let capturer = Arc::new(
            Capturer::from_config(&config.capture)?
                .with_store_level(traces.as_ref().ok().map(|_| config.store.capture)),
        );
        // Where each finished call goes, in order: metrics, the cost store, budgets, then any
        // the caller added; the span goes to the trace store and the export last.
        let mut sinks: Vec<Arc<dyn Sink>> = vec![
            Arc::new(CallMetrics::new(
                metrics.clone(),
                &config.cost.metric_features,
                config.cost.max_metric_features,
                config.cost.enabled,
            )),
            costs.clone(),
        ];
        if !budgets.is_empty() {
            sinks.push(budgets.clone());
        }
        let store_sink = traces
            .as_ref()
            .ok()
            .map(|store| Arc::new(StoreSink::new(store.clone(), &telemetry)));
        sinks.extend(extra_sinks);
        let tools = config.trace.tool_spans.then(|| {
            Arc::new(ToolTable::new(
                ToolLimits::from_config(&config.trace),
                capturer.clone(),
                metrics.clone(),
            ))
        });
        let recorder = Arc::new(Recorder::new(RecorderParts {
            prices: prices.clone(),
            pricing: config.cost.enabled,
            capturer: capturer.clone(),
            sinks,
            export,
            store: store_sink,
            tools: tools.clone(),
        }));
        // Ends tool calls never answered and releases tool spans held for the app's own.
        let tool_sweeper = tools.clone().map(|table| {
            let recorder = recorder.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(table.sweep_every()).await;
                    recorder.sweep_tools();
                }
            })
        });
        let proxy = stack::build(
            &config,
            registry.clone(),
            client,
            metrics.clone(),
            recorder.clone(),
            capturer,
            stack::Admission { keys, budgets },
        );

        let receiver = ingest_listeners.is_some().then(|| {
            let max_age = config.store.enabled.then(|| config.store.max_age_secs());
            Arc::new(crate::ingest::Receiver::new(
                &config.ingest,
                max_age.and_then(Result::ok).map(Duration::from_secs),
                recorder.clone(),
                metrics.clone(),
            ))
        });

        let admin_state = Arc::new(AdminState {
            metrics: metrics.clone(),
            ready: AtomicBool::new(true),
            costs: costs.clone(),
            traces: traces.clone(),
            scores: admin::scores::Scores::new(recorder.clone(), metrics.clone()),
            auth: admin_auth,
        });
        let admin_service = tower::service_fn({
            let state = admin_state.clone();
            move |req: Request<Incoming>| admin::handle(state.clone(), req)
        });

        let (shutdown, signal) = watch::channel(false);
        let export_deadline = Duration::from_millis(config.export.shutdown_export_ms);
        let proxy_limits = ListenerLimits {
            name: "proxy",
            max_connections: max_connections(config.max_connections, open_file_limit()),
            first_request: Duration::from_millis(config.timeouts.request_headers_ms),
            idle: Duration::from_millis(config.timeouts.idle_connection_ms),
            grace: config.shutdown_grace(),
        };
        let admin_limits = ListenerLimits {
            name: "admin",
            max_connections: ADMIN_MAX_CONNECTIONS,
            grace: Duration::from_secs(1),
            ..proxy_limits
        };
        tracing::info!(
            max_connections = proxy_limits.max_connections,
            "client connection cap"
        );
        let ingest_limits = ListenerLimits {
            name: "ingest",
            max_connections: INGEST_MAX_CONNECTIONS,
            ..proxy_limits
        };
        let serve_metrics = metrics.clone();
        let tool_recorder = recorder.clone();
        let task = tokio::spawn(async move {
            // The receiver stops taking spans when the proxy stops taking calls; both finish
            // what they hold before the export drains.
            let mut ingest_tasks = Vec::new();
            if let (Some((http, grpc)), Some(receiver)) = (ingest_listeners, receiver) {
                let http_service = tower::service_fn({
                    let receiver = receiver.clone();
                    move |req: Request<Incoming>| crate::ingest::handle_http(receiver.clone(), req)
                });
                ingest_tasks.push(tokio::spawn(serve(
                    http,
                    http_service,
                    signal.clone(),
                    ingest_limits,
                    serve_metrics.clone(),
                    None,
                    None,
                )));
                ingest_tasks.push(tokio::spawn(serve(
                    grpc,
                    crate::ingest::grpc_service(receiver),
                    signal.clone(),
                    ingest_limits,
                    serve_metrics.clone(),
                    None,
                    None,
                )));
            }
            let admin_stop = watch::channel(false);
            let admin_task = tokio::spawn(serve(
                admin_listener,
                admin_service,
                admin_stop.1,
                admin_limits,
                serve_metrics.clone(),
                None,
                admin_tls,
            ));
            let mut on_signal = signal.clone();
            let ready = admin_state.clone();
            tokio::spawn(async move {
                let _ = on_signal.wait_for(|stop| *stop).await;
                ready.ready.store(false, Ordering::Release);
            });
            let drained = serve(
                listener,
                proxy,
                signal,
                proxy_limits,
                serve_metrics,
                Some(recorder),
                proxy_tls,
            )
            .await;
            for task in ingest_tasks {
                let _ = task.await;
            }
            // Every call has ended: tool spans still held or pending go out now (pending calls
            // as unanswered, reason `shutdown`), then export what is queued, spool the rest.
            if let Some(sweeper) = tool_sweeper {
                sweeper.abort();
            }
            tool_recorder.drain_tools();
            drop(tool_recorder);
            if let Some(tasks) = export_tasks {
                tasks.shutdown(export_deadline).await;
            }
            cost_flusher.abort();
            if let Ok(store) = traces {
                close_trace_store(store).await;
            }
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
        tracing::info!(%addr, %admin_addr, tls = server_certs.is_some(), providers = registry.providers().count(), "sidetrace listening");
        Ok(Gateway {
            addr,
            admin_addr,
            ingest_http_addr,
            ingest_grpc_addr,
            metrics,
            tools,
            prices,
            server_certs,
            shutdown,
            task,
        })
    }

    /// Rebuilds the price tables from a new config (providers' `[[models]]` and overrides);
    /// calls priced from now on use them. Other settings need a restart.
    pub fn reload_prices(&self, config: &Config) -> Result<(), StartError> {
        self.prices.store(PriceBook::from_config(config)?);
        tracing::info!("prices reloaded");
        Ok(())
    }

    /// Reads the listeners' certificate and key files again (`[tls]`): handshakes from now on
    /// use them, open connections keep theirs. On an error the old certificate stays.
    pub fn reload_tls(&self) -> Result<(), StartError> {
        let Some(certs) = &self.server_certs else {
            return Ok(());
        };
        certs
            .reload()
            .map_err(|e| StartError::Config(ConfigError::Invalid(e)))?;
        tracing::info!("TLS certificate reloaded");
        Ok(())
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

/// How long shutdown waits for the trace store to write what is queued.
const TRACE_STORE_FLUSH_AT_SHUTDOWN: Duration = Duration::from_secs(2);

/// Opens the trace store in `<data_dir>/traces` when `[store] enabled`; `Err` says why there is
/// none (the API answers 503 with it, the proxy serves as usual).
async fn open_trace_store(
    config: &Config,
    metrics: Arc<Metrics>,
) -> Result<Result<Arc<TraceStore>, String>, StartError> {
    if !config.store.enabled {
        return Ok(Err(
            "the trace store is off ([store] enabled = false)".into()
        ));
    }
    let limits = StoreLimits {
        max_bytes: config.store.max_bytes,
        max_age: Duration::from_secs(config.store.max_age_secs()?),
        search_scan_traces: config.store.search_scan_traces,
    };
    let dir = config.data_dir().join("traces");
    let opened = {
        let metrics = metrics.clone();
        tokio::task::spawn_blocking(move || TraceStore::open(&dir, limits, metrics))
            .await
            .map_err(|e| StartError::Export(e.to_string()))?
    };
    if opened.damage.is_some() {
        metrics.store_damaged("traces");
    }
    Ok(match (opened.store, opened.unavailable) {
        (Some(store), _) => Ok(store),
        (None, why) => Err(why.unwrap_or_else(|| "the trace store could not be opened".into())),
    })
}

/// Stops the store taking spans and waits, bounded, for what is queued to be written.
async fn close_trace_store(store: Arc<TraceStore>) {
    let flushed = tokio::task::spawn_blocking(move || {
        let done = store.flush(TRACE_STORE_FLUSH_AT_SHUTDOWN);
        store.close();
        done
    })
    .await;
    if !matches!(flushed, Ok(true)) {
        tracing::error!(
            "the trace store did not write everything in time at shutdown; the last spans may be missing from it"
        );
    }
}

/// Everything `serve` checks before it binds a port (what `check-config` runs): the config's
/// own values, then everything built from it (TLS roots, redaction patterns, prices, budgets,
/// routes). Returns the routing table.
pub fn check_config(config: &Config) -> Result<Registry, ConfigError> {
    config.validate()?;
    crate::tls::client_config(&config.upstream).map_err(ConfigError::Invalid)?;
    Capturer::from_config(&config.capture)?;
    PriceBook::from_config(config)?;
    crate::store::budgets::check(&config.budgets).map_err(ConfigError::Invalid)?;
    crate::tls::ServerCerts::load(&config.tls).map_err(ConfigError::Invalid)?;
    let registry = Registry::from_config(config)?;
    crate::proxy::keys::Keys::from_config(&config.keys)?;
    for key in &config.keys {
        for provider in &key.providers {
            if !registry.providers().any(|p| p.name == *provider) {
                return Err(ConfigError::Invalid(format!(
                    "[[keys]] {:?}: provider {provider:?} is not one this gateway routes to",
                    key.name
                )));
            }
        }
    }
    for budget in &config.budgets {
        if let Some(key) = budget.key.as_deref().filter(|k| !k.is_empty())
            && !config.keys.iter().any(|k| k.name == key)
        {
            return Err(ConfigError::Invalid(format!(
                "budget {}: key {key:?} is not a [[keys]] name",
                budget.name
            )));
        }
    }
    Ok(registry)
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
    let tls = crate::tls::client_config(&config.upstream).map_err(StartError::Export)?;
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
    let sampler = config
        .sampling
        .enabled
        .then(|| TailSampler::new(config.sampling.clone()));
    ExportHandle::start(
        &config.export,
        || otlp::build(&config.export, telemetry, tls),
        spool,
        limits,
        telemetry,
        metrics,
        sampler,
    )
    .map_err(StartError::Export)
}

fn local_addr(listener: &TcpListener, what: &'static str) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Bind {
        what,
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })
}

/// Admin connections at once: probes and a scraper need few.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Connections at once on each OTLP receiver listener: an app's exporters keep one or a few
/// open. The general part of [`FD_RESERVE`] covers the two listeners' (the proxy's cap is not
/// lowered for a receiver most deployments barely use).
const INGEST_MAX_CONNECTIONS: usize = 32;

/// At its connection cap, a listener closes the connections that have had no request in
/// flight for this long (or have sent none in this long since they opened), so that a new one
/// does not wait for their idle timeout (30 s for a kept-alive HTTP/1.1 connection). Not at
/// once: a client may be sending its next request on a connection that just went quiet.
const CAP_QUIET: Duration = Duration::from_secs(1);

/// File descriptors kept for what is not a client connection: the data stores, the admin
/// listener, idle upstream connections, the exporter.
const FD_RESERVE: u64 = 128 + ADMIN_MAX_CONNECTIONS as u64;

/// How long cut connections may take to end once aborted (they end at their next poll).
const CUT_DEADLINE: Duration = Duration::from_secs(5);

/// The proxy listener's connection cap: half of the open-file limit left after the reserve
/// (each call may open an upstream connection too), or less when configured lower.
fn max_connections(configured: usize, open_files: Option<u64>) -> usize {
    let derived = open_files.map(|n| (n.saturating_sub(FD_RESERVE) / 2).max(1));
    let derived = derived.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    match (configured, derived) {
        (0, Some(d)) => d,
        (0, None) => 10_000,
        (c, Some(d)) => c.min(d),
        (c, None) => c,
    }
}

/// The soft `RLIMIT_NOFILE` of this process, from `/proc/self/limits` (Linux); `None` when
/// unknown or unlimited.
fn open_file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_file_limit(&text)
}

fn parse_open_file_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// How one listener treats its connections.
#[derive(Debug, Clone, Copy)]
struct ListenerLimits {
    name: &'static str,
    max_connections: usize,
    /// A new connection must have sent its first request's headers within this long.
    first_request: Duration,
    /// A connection with no request in flight for this long is closed gracefully.
    idle: Duration,
    /// On shutdown, how long open connections may take to finish.
    grace: Duration,
}

/// Logs a repeated warning at most once a second, with how many times it happened.
struct Throttled {
    last: Option<Instant>,
    count: u64,
}

impl Throttled {
    fn new() -> Self {
        Throttled {
            last: None,
            count: 0,
        }
    }

    /// Counts one occurrence; returns how many happened since the last log line when it is
    /// time for another.
    fn hit(&mut self) -> Option<u64> {
        self.count += 1;
        let due = self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if !due {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.count))
    }
}

/// Requests in flight on a whole listener. Shutdown waits for none to be left: HTTP/2 streams
/// run on tasks of their own, outside the connection tasks.
#[derive(Default)]
struct ListenerRequests {
    count: AtomicUsize,
    none_left: Notify,
    /// The listener is at its connection cap: its connections quiet for [`CAP_QUIET`] close
    /// and make room ([`until_crowded_out`]).
    crowded: Notify,
}

impl ListenerRequests {
    fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    async fn wait_for_none(&self) {
        loop {
            let none_left = self.none_left.notified();
            tokio::pin!(none_left);
            none_left.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            none_left.await;
        }
    }
}

/// Requests in flight, on one connection (for idleness) and on the whole listener. Counted with
/// atomics alone: a request's start and end wake no task (the idle check looks when it is due).
struct InFlight {
    requests: AtomicUsize,
    /// When the connection's last request ended, in milliseconds after `opened`, plus one (0:
    /// none has ended yet).
    last_end: AtomicU64,
    /// tokio's clock, the one `sleep` in `until_idle` follows (paused in tests).
    opened: tokio::time::Instant,
    listener: Arc<ListenerRequests>,
}

/// How long a connection has had no request in flight.
#[derive(Debug, PartialEq)]
enum Quiet {
    /// A request is in flight.
    Busy,
    /// No request yet, for this long since the connection opened.
    Unused(Duration),
    /// No request since the last one ended, this long ago.
    Idle(Duration),
}

impl InFlight {
    fn new(listener: Arc<ListenerRequests>) -> Self {
        InFlight {
            requests: AtomicUsize::new(0),
            last_end: AtomicU64::new(0),
            opened: tokio::time::Instant::now(),
            listener,
        }
    }

    fn quiet(&self) -> Quiet {
        if self.requests.load(Ordering::Acquire) > 0 {
            return Quiet::Busy;
        }
        let open_for = self.opened.elapsed();
        match self.last_end.load(Ordering::Acquire) {
            0 => Quiet::Unused(open_for),
            end => Quiet::Idle(open_for.saturating_sub(Duration::from_millis(end - 1))),
        }
    }
}

/// One request in flight: from the call of the service until its response body is dropped.
struct RequestGuard(Arc<InFlight>);

impl RequestGuard {
    fn new(in_flight: &Arc<InFlight>) -> Self {
        in_flight.requests.fetch_add(1, Ordering::AcqRel);
        in_flight.listener.count.fetch_add(1, Ordering::AcqRel);
        RequestGuard(in_flight.clone())
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let in_flight = &self.0;
        let ended = u64::try_from(in_flight.opened.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        // The latest end wins: HTTP/2 streams can end at once on different tasks.
        in_flight.last_end.fetch_max(ended + 1, Ordering::AcqRel);
        in_flight.requests.fetch_sub(1, Ordering::AcqRel);
        let listener = &in_flight.listener;
        if listener.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            listener.none_left.notify_waiters();
        }
    }
}

/// Counts a connection's requests in flight, so that it can be closed once idle and shutdown
/// can wait for every call (HTTP/2 streams run on tasks of their own).
#[derive(Clone)]
struct TrackRequests<S> {
    inner: S,
    in_flight: Arc<InFlight>,
}

impl<S> Service<Request<Incoming>> for TrackRequests<S>
where
    S: Service<Request<Incoming>, Response = Response<ProxyBody>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = crate::proxy::BoxFuture<Result<Response<ProxyBody>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let guard = RequestGuard::new(&self.in_flight);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let response = fut.await?;
            Ok(response.map(|body| Holding::boxed(body, guard)))
        })
    }
}

/// The service for one connection, counting its requests from now on.
fn track<S>(
    inner: S,
    listener: Arc<ListenerRequests>,
) -> (TowerToHyperService<TrackRequests<S>>, Arc<InFlight>) {
    let in_flight = Arc::new(InFlight::new(listener));
    let service = TowerToHyperService::new(TrackRequests {
        inner,
        in_flight: in_flight.clone(),
    });
    (service, in_flight)
}

/// Resolves once the connection has had no request in flight for `first` (before its first
/// request) or `idle` (after one). It sleeps until the earliest moment that could be true and
/// looks again, so a busy connection's timer fires once per `idle`, not once per request.
async fn until_idle(in_flight: Arc<InFlight>, first: Duration, idle: Duration) {
    loop {
        let wait = match in_flight.quiet() {
            Quiet::Busy => idle,
            Quiet::Unused(quiet) => first.saturating_sub(quiet),
            Quiet::Idle(quiet) => idle.saturating_sub(quiet),
        };
        if wait.is_zero() {
            return;
        }
        tokio::time::sleep(wait).await;
    }
}

/// Resolves when the listener is at its connection cap (see the accept loop) while this
/// connection has had no request in flight for [`CAP_QUIET`]. It waits for the listener's
/// word only while quiet that long, and stops waiting once a request comes: a busy
/// connection never touches the listener's shared waiter list, which each wait locks.
async fn until_crowded_out(in_flight: Arc<InFlight>) {
    let quiet = |in_flight: &InFlight| match in_flight.quiet() {
        Quiet::Busy => Duration::ZERO,
        Quiet::Unused(quiet) | Quiet::Idle(quiet) => quiet,
    };
    loop {
        let so_far = quiet(&in_flight);
        if so_far < CAP_QUIET {
            tokio::time::sleep(CAP_QUIET - so_far).await;
            continue;
        }
        let crowded = in_flight.listener.crowded.notified();
        tokio::pin!(crowded);
        let still_quiet = std::future::poll_fn(|cx| {
            if in_flight.requests.load(Ordering::Acquire) > 0 {
                return Poll::Ready(false);
            }
            crowded.as_mut().poll(cx).map(|()| true)
        })
        .await;
        if still_quiet {
            return;
        }
    }
}

/// Counts an open connection and holds its place under the cap until it ends.
struct OpenConnection {
    metrics: Arc<Metrics>,
    listener: &'static str,
    _permit: OwnedSemaphorePermit,
}

impl OpenConnection {
    fn new(metrics: Arc<Metrics>, listener: &'static str, permit: OwnedSemaphorePermit) -> Self {
        metrics
            .connections
            .open
            .get_or_create(&ListenerLabels { listener })
            .inc();
        OpenConnection {
            metrics,
            listener,
            _permit: permit,
        }
    }

    fn closed(&self, reason: &'static str) {
        let labels = ConnectionCloseLabels {
            listener: self.listener,
            reason,
        };
        self.metrics.connections.closed.get_or_create(&labels).inc();
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let labels = ListenerLabels {
            listener: self.listener,
        };
        self.metrics.connections.open.get_or_create(&labels).dec();
    }
}

/// Serves one connection until it ends; closes it gracefully when the listener stops or when
/// it has been idle too long.
async fn run_connection<C>(
    conn: C,
    in_flight: Arc<InFlight>,
    mut stop: watch::Receiver<bool>,
    limits: ListenerLimits,
    open: OpenConnection,
) where
    C: GracefulConnection,
    C::Error: Display,
{
    tokio::pin!(conn);
    let idle = until_idle(in_flight.clone(), limits.first_request, limits.idle);
    tokio::pin!(idle);
    let crowded_out = until_crowded_out(in_flight);
    tokio::pin!(crowded_out);
    let mut closing = false;
    let result = loop {
        tokio::select! {
            result = conn.as_mut() => break result,
            _ = stop.wait_for(|stop| *stop), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = &mut idle, if !closing => {
                closing = true;
                open.closed("idle");
                conn.as_mut().graceful_shutdown();
            }
            () = &mut crowded_out, if !closing => {
                closing = true;
                open.closed("cap");
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(listener = limits.name, error = %e, "connection ended with an error");
    }
}

/// What the accept loop does next.
enum Next {
    Stop,
    Accepted(std::io::Result<(tokio::net::TcpStream, SocketAddr)>),
}

/// Accepts connections until told to stop (at most `max_connections` open at once), then lets
/// open connections finish for up to the grace period. Connections still open after it are cut,
/// and the calls on them finished (as `error.type=shutdown` when `recorder` is given) before
/// this returns. Returns whether every connection finished within the grace.
#[allow(clippy::too_many_arguments)]
async fn serve<S>(
    listener: TcpListener,
    service: S,
    mut stop: watch::Receiver<bool>,
    limits: ListenerLimits,
    metrics: Arc<Metrics>,
    recorder: Option<Arc<Recorder>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> bool
where
    S: Service<Request<Incoming>, Response = Response<ProxyBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let name = limits.name;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // HTTP/1.1: partial request headers, and a kept-alive connection's next request headers,
    // must come within the timeout (hyper starts it whenever it waits for a request head).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.first_request);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let listener_requests = Arc::new(ListenerRequests::default());
    let mut connections = JoinSet::new();
    let mut accept_failures = Throttled::new();
    let mut at_cap = Throttled::new();
    let labels = ListenerLabels { listener: name };
    loop {
        while let Some(ended) = connections.try_join_next() {
            if let Err(e) = ended {
                tracing::error!(listener = name, error = %e, "connection task failed");
            }
        }
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                metrics.connections.cap_reached.get_or_create(&labels).inc();
                if let Some(times) = at_cap.hit() {
                    tracing::warn!(
                        listener = name,
                        max_connections = limits.max_connections,
                        times,
                        "connection cap reached; accepting again when a connection closes"
                    );
                }
                // The connections quiet for a while make room (a kept-alive exporter or
                // client, a socket that never sent anything), asked again while none ends.
                let permit = loop {
                    listener_requests.crowded.notify_waiters();
                    tokio::select! {
                        permit = slots.clone().acquire_owned() => break permit.ok(),
                        _ = stop.wait_for(|stop| *stop) => break None,
                        () = tokio::time::sleep(CAP_QUIET) => {}
                    }
                };
                match permit {
                    Some(permit) => permit,
                    None => break,
                }
            }
        };
        let next = tokio::select! {
            accepted = listener.accept() => Next::Accepted(accepted),
            _ = stop.wait_for(|stop| *stop) => Next::Stop,
        };
        match next {
            Next::Stop => break,
            Next::Accepted(Ok((stream, _peer))) => {
                // Small SSE events must leave at once, not wait for Nagle.
                let _ = stream.set_nodelay(true);
                let open = OpenConnection::new(metrics.clone(), name, permit);
                let stop = stop.clone();
                let Some(tls) = tls.clone() else {
                    let (service, in_flight) = track(service.clone(), listener_requests.clone());
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    connections.spawn(run_connection(conn, in_flight, stop, limits, open));
                    continue;
                };
                // The handshake runs on the connection's task, bounded like a first request,
                // so a slow or silent client never holds up the accept loop.
                let builder = builder.clone();
                let (service, listener_requests) = (service.clone(), listener_requests.clone());
                connections.spawn(async move {
                    let handshake =
                        tokio::time::timeout(limits.first_request, tls.accept(stream)).await;
                    let stream = match handshake {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            open.closed("tls_handshake");
                            tracing::debug!(listener = limits.name, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_elapsed) => {
                            open.closed("tls_handshake");
                            return;
                        }
                    };
                    // Once the handshake is done, like hyper's request header timeout: the
                    // first request has `first_request` from here.
                    let (service, in_flight) = track(service, listener_requests);
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    run_connection(conn, in_flight, stop, limits, open).await;
                });
            }
            Next::Accepted(Err(e)) => {
                // Out of file descriptors and the like: keep serving the connections we have.
                metrics
                    .connections
                    .accept_errors
                    .get_or_create(&labels)
                    .inc();
                if let Some(errors) = accept_failures.hit() {
                    tracing::warn!(listener = name, error = %e, errors, "accept failed");
                }
                drop(permit);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    tracing::info!(
        listener = name,
        grace_ms = limits.grace.as_millis() as u64,
        connections = connections.len(),
        "draining connections"
    );
    let drain = async {
        while connections.join_next().await.is_some() {}
        listener_requests.wait_for_none().await;
    };
    if tokio::time::timeout(limits.grace, drain).await.is_ok() {
        return true;
    }
    tracing::warn!(
        listener = name,
        connections = connections.len(),
        calls = listener_requests.count(),
        "grace period over; cutting the remaining connections"
    );
    if let Some(recorder) = &recorder {
        recorder.begin_cut();
    }
    let cut = ConnectionCloseLabels {
        listener: name,
        reason: "shutdown_cut",
    };
    metrics
        .connections
        .closed
        .get_or_create(&cut)
        .inc_by(connections.len() as u64);
    // Aborting drops each connection with its calls: every call's record is finished there.
    connections.abort_all();
    let ended = async {
        while connections.join_next().await.is_some() {}
        listener_requests.wait_for_none().await;
    };
    if tokio::time::timeout(CUT_DEADLINE, ended).await.is_err() {
        tracing::error!(
            listener = name,
            calls = listener_requests.count(),
            "calls still open after their connections were cut"
        );
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str = "Limit                     Soft Limit           Hard Limit           Units     \n\
Max cpu time              unlimited            unlimited            seconds   \n\
Max open files            1024                 1048576              files     \n";

    #[test]
    fn open_file_limit_is_the_soft_limit() {
        assert_eq!(parse_open_file_limit(LIMITS), Some(1024));
        assert_eq!(
            parse_open_file_limit("Max open files unlimited unlimited files"),
            None
        );
        assert_eq!(parse_open_file_limit(""), None);
    }

    /// Resolves `until_idle` (2 s before a first request, 10 s after one) in paused time;
    /// returns how long it took.
    async fn time_until_idle(in_flight: &Arc<InFlight>) -> Duration {
        let start = tokio::time::Instant::now();
        until_idle(
            in_flight.clone(),
            Duration::from_secs(2),
            Duration::from_secs(10),
        )
        .await;
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_after_its_last_request_not_while_one_runs() {
        let listener = Arc::new(ListenerRequests::default());
        // No request at all: closed after the first-request limit.
        let unused = Arc::new(InFlight::new(listener.clone()));
        assert_eq!(time_until_idle(&unused).await, Duration::from_secs(2));

        // A request that runs 25 s keeps the connection open; the idle limit counts from its end.
        let used = Arc::new(InFlight::new(listener.clone()));
        let guard = RequestGuard::new(&used);
        assert_eq!(listener.count(), 1);
        assert_eq!(used.quiet(), Quiet::Busy);
        let ends = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(25)).await;
            drop(guard);
        });
        assert_eq!(time_until_idle(&used).await, Duration::from_secs(35));
        ends.await.unwrap();
        assert_eq!(listener.count(), 0);

        // Requests every 4 s for a minute: never idle 10 s, so it closes 10 s after the last.
        let steady = Arc::new(InFlight::new(listener.clone()));
        let calls = {
            let steady = steady.clone();
            tokio::spawn(async move {
                for _ in 0..15 {
                    let guard = RequestGuard::new(&steady);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    drop(guard);
                    tokio::time::sleep(Duration::from_millis(3900)).await;
                }
            })
        };
        let took = time_until_idle(&steady).await;
        calls.await.unwrap();
        assert_eq!(took, Duration::from_millis(14 * 4000 + 100 + 10_000));
        assert_eq!(steady.quiet(), Quiet::Idle(Duration::from_secs(10)));
    }

    #[test]
    fn connection_cap_leaves_room_for_upstream_connections() {
        assert_eq!(
            max_connections(0, Some(1024)),
            (1024 - FD_RESERVE as usize) / 2
        );
        assert_eq!(max_connections(100, Some(1024)), 100);
        assert_eq!(
            max_connections(100_000, Some(1024)),
            (1024 - FD_RESERVE as usize) / 2
        );
        assert_eq!(max_connections(0, Some(10)), 1);
        assert_eq!(max_connections(0, None), 10_000);
        assert_eq!(max_connections(7, None), 7);
    }
}
