//! Test harness: an in-process scripted mock provider (HTTP/1.1, h2c or TLS with ALPN), the real
//! gateway on port 0, and a plain hyper client.
#![allow(dead_code)]

pub mod otlp;

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use sidetrace::{
    Config, Gateway,
    call::{CallRecord, sink::Sink},
    trace::span::SpanRecord,
};
use tokio::{
    net::TcpListener,
    sync::{Notify, mpsc},
};

pub type TestBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// One step of a scripted response body.
#[derive(Clone, Debug)]
pub enum Step {
    Send(Bytes),
    Pause(Duration),
    /// Hold the response open, sending nothing, until the connection goes away.
    Stall,
    /// Break the connection mid-body.
    Abort,
    /// Wait until the mock has seen at least this many requests in total.
    WaitForRequests(usize),
}

/// A scripted response.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub headers_delay: Duration,
    pub steps: Vec<Step>,
}

impl Reply {
    pub fn json(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            headers_delay: Duration::ZERO,
            steps: vec![Step::Send(Bytes::from(body.to_string()))],
        }
    }

    /// A `text/event-stream` response, one step per event, with a pause between events.
    pub fn sse(events: &[&str], pause: Duration) -> Reply {
        let mut steps = Vec::new();
        for (i, e) in events.iter().enumerate() {
            if i > 0 && !pause.is_zero() {
                steps.push(Step::Pause(pause));
            }
            steps.push(Step::Send(Bytes::from(e.to_string())));
        }
        Reply {
            status: 200,
            headers: vec![
                (
                    "content-type".into(),
                    "text/event-stream; charset=utf-8".into(),
                ),
                ("cache-control".into(), "no-cache".into()),
            ],
            headers_delay: Duration::ZERO,
            steps,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn then(mut self, step: Step) -> Reply {
        self.steps.push(step);
        self
    }

    pub fn delay_headers(mut self, d: Duration) -> Reply {
        self.headers_delay = d;
        self
    }
}

/// A request as the mock provider received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Default, Clone)]
pub struct MockOptions {
    /// Serve TLS with this certificate chain and key (PEM); ALPN offers h2 and http/1.1.
    pub tls: Option<(String, String)>,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS.
    pub h2_max_streams: Option<u32>,
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

pub struct Mock {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Request body frames received so far, over all requests.
    pub body_frames: Arc<AtomicUsize>,
    pub body_frame_seen: Arc<Notify>,
    requests: Arc<AtomicUsize>,
    request_seen: Arc<Notify>,
    tls: bool,
}

impl Mock {
    pub async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Mock {
        Mock::start_with(MockOptions::default(), handler).await
    }

    pub async fn start_with(
        options: MockOptions,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler: Arc<Handler> = Arc::new(handler);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let body_frames = Arc::new(AtomicUsize::new(0));
        let body_frame_seen = Arc::new(Notify::new());
        let requests = Arc::new(AtomicUsize::new(0));
        let request_seen = Arc::new(Notify::new());
        let acceptor = options
            .tls
            .as_ref()
            .map(|(cert, key)| tls_acceptor(cert, key));
        let mock = Mock {
            addr,
            seen: seen.clone(),
            body_frames: body_frames.clone(),
            body_frame_seen: body_frame_seen.clone(),
            requests: requests.clone(),
            request_seen: request_seen.clone(),
            tls: acceptor.is_some(),
        };
        let shared = Arc::new(MockShared {
            handler,
            seen,
            body_frames,
            body_frame_seen,
            requests,
            request_seen,
        });
        tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new());
            if let Some(n) = options.h2_max_streams {
                builder.http2().max_concurrent_streams(n);
            }
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let builder = builder.clone();
                let shared = shared.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req| serve_one(shared.clone(), req));
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        mock
    }

    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the mock saw no request")
    }
}

struct MockShared {
    handler: Arc<Handler>,
    seen: Arc<Mutex<Vec<Seen>>>,
    body_frames: Arc<AtomicUsize>,
    body_frame_seen: Arc<Notify>,
    requests: Arc<AtomicUsize>,
    request_seen: Arc<Notify>,
}

async fn serve_one(
    shared: Arc<MockShared>,
    req: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let (parts, mut body) = req.into_parts();
    let mut collected = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    collected.extend_from_slice(data);
                    shared.body_frames.fetch_add(1, Ordering::SeqCst);
                    shared.body_frame_seen.notify_waiters();
                }
            }
            Err(_) => break,
        }
    }
    let seen = Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        version: parts.version,
        headers: parts.headers,
        body: Bytes::from(collected),
    };
    let reply = (shared.handler)(&seen);
    shared.seen.lock().unwrap().push(seen);
    shared.requests.fetch_add(1, Ordering::SeqCst);
    shared.request_seen.notify_waiters();
    if !reply.headers_delay.is_zero() {
        tokio::time::sleep(reply.headers_delay).await;
    }
    let (tx, rx) = mpsc::channel(16);
    let requests = shared.requests.clone();
    let request_seen = shared.request_seen.clone();
    tokio::spawn(async move {
        for step in reply.steps {
            match step {
                Step::Send(b) => {
                    if tx.send(Ok(b)).await.is_err() {
                        return;
                    }
                }
                Step::Pause(d) => tokio::time::sleep(d).await,
                Step::Stall => {
                    tx.closed().await;
                    return;
                }
                Step::Abort => {
                    let _ = tx.send(Err(std::io::Error::other("scripted abort"))).await;
                    return;
                }
                Step::WaitForRequests(n) => loop {
                    let notified = request_seen.notified();
                    if requests.load(Ordering::SeqCst) >= n {
                        break;
                    }
                    let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
                },
            }
        }
    });
    let mut response = Response::new(ChannelBody { rx }.boxed_unsync());
    *response.status_mut() = StatusCode::from_u16(reply.status).unwrap();
    for (k, v) in reply.headers {
        response.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    Ok(response)
}

/// A body fed from a channel: each message is one frame.
pub struct ChannelBody {
    pub rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

fn tls_acceptor(cert_pem: &str, key_pem: &str) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// A self-signed certificate for `localhost`: (cert PEM, key PEM).
pub fn self_signed_localhost() -> (String, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

/// A test CA and a certificate it signed for `localhost` and `127.0.0.1`, all PEM.
pub struct TestPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestPki {
    /// A fresh CA (named after `name`) and its server certificate.
    pub fn new(name: &str) -> TestPki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("sidetrace test CA {name}"));
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let mut leaf =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, format!("sidetrace {name}"));
        leaf.use_authority_key_identifier_extension = true;
        let leaf_key = KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&leaf_key, &ca).unwrap();
        TestPki {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: leaf_key.serialize_pem(),
        }
    }

    /// Writes the CA, the certificate and the key to `dir` (`ca.pem`, `tls.crt`, `tls.key`);
    /// returns the `[tls]` table naming them.
    pub fn write(&self, dir: &std::path::Path) -> String {
        std::fs::write(dir.join("ca.pem"), &self.ca_pem).unwrap();
        std::fs::write(dir.join("tls.crt"), &self.cert_pem).unwrap();
        std::fs::write(dir.join("tls.key"), &self.key_pem).unwrap();
        format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            dir.join("tls.crt").display().to_string(),
            dir.join("tls.key").display().to_string()
        )
    }

    /// A TLS client trusting this CA only, offering `alpn`.
    pub fn connector(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// A sink that keeps every finished call and its span, for tests to read: the gateway itself
/// keeps none in memory.
#[derive(Default)]
pub struct RecentCalls {
    calls: std::sync::Mutex<Vec<(CallRecord, SpanRecord)>>,
}

impl Sink for RecentCalls {
    fn record(&self, call: &CallRecord, span: &SpanRecord) {
        self.calls
            .lock()
            .unwrap()
            .push((call.clone(), span.clone()));
    }
}

/// The gateway under test, with the calls it recorded.
pub struct TestGateway {
    gateway: Gateway,
    recent: Arc<RecentCalls>,
    /// The data directory made for this gateway when the config named none (removed on drop).
    _data: Option<tempfile::TempDir>,
}

impl TestGateway {
    /// Starts the gateway; without a `data_dir` in the config it gets a fresh one of its own, so
    /// tests never share (or lock each other out of) the stores.
    pub async fn start(mut config: Config) -> Result<TestGateway, sidetrace::server::StartError> {
        let data = config
            .data_dir
            .is_empty()
            .then(|| tempfile::tempdir().unwrap());
        if let Some(dir) = &data {
            config.data_dir = dir.path().display().to_string();
        }
        // Tests start many gateways at once: the OTLP receiver's default ports would clash.
        let defaults = sidetrace::config::IngestConfig::default();
        if config.ingest.http_listen == defaults.http_listen {
            config.ingest.http_listen = "127.0.0.1:0".into();
        }
        if config.ingest.grpc_listen == defaults.grpc_listen {
            config.ingest.grpc_listen = "127.0.0.1:0".into();
        }
        let recent = Arc::new(RecentCalls::default());
        let gateway = Gateway::start_with_sinks(config, vec![recent.clone()]).await?;
        Ok(TestGateway {
            gateway,
            recent,
            _data: data,
        })
    }

    /// Every call recorded so far, oldest first.
    pub fn recent_calls(&self) -> Vec<CallRecord> {
        let calls = self.recent.calls.lock().unwrap();
        calls.iter().map(|(call, _)| call.clone()).collect()
    }

    /// The span of every call recorded so far, oldest first.
    pub fn recent_spans(&self) -> Vec<SpanRecord> {
        let calls = self.recent.calls.lock().unwrap();
        calls.iter().map(|(_, span)| span.clone()).collect()
    }

    pub async fn shutdown(self) -> sidetrace::server::ShutdownReport {
        self.gateway.shutdown().await
    }

    pub async fn wait(self) -> sidetrace::server::ShutdownReport {
        self.gateway.wait().await
    }
}

impl std::ops::Deref for TestGateway {
    type Target = Gateway;
    fn deref(&self) -> &Gateway {
        &self.gateway
    }
}

/// The gateway on port 0 with `extra` TOML appended to the base config.
pub async fn gateway(extra: &str) -> TestGateway {
    let text = format!("listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{extra}");
    let config = Config::from_toml(&text, "test.toml").unwrap();
    TestGateway::start(config).await.unwrap()
}

/// The gateway with openai, anthropic and a few more providers pointed at the mock.
pub async fn gateway_for(mock: &Mock, extra: &str) -> TestGateway {
    let url = mock.url();
    let mut text = String::new();
    // Top-level keys must come before the first table.
    let mut in_table = false;
    let mut top_lines = String::new();
    let mut table_lines = String::new();
    for line in extra.lines() {
        if line.trim_start().starts_with('[') {
            in_table = true;
        }
        if in_table {
            table_lines.push_str(line);
            table_lines.push('\n');
        } else {
            top_lines.push_str(line);
            top_lines.push('\n');
        }
    }
    text.push_str(&top_lines);
    for name in ["openai", "anthropic", "groq", "gemini"] {
        let header = format!("[providers.{name}]\n");
        let with_url = format!("{header}base_url = \"{url}\"\n");
        if table_lines.contains(&header) {
            table_lines = table_lines.replace(&header, &with_url);
        } else {
            text.push_str(&with_url);
        }
    }
    text.push_str(&table_lines);
    gateway(&text).await
}

pub fn client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(5))
        .build_http()
}

pub fn h2_client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub fn full_body(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// POSTs `body` to the gateway and reads the whole answer.
pub async fn post(gw: &Gateway, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut req = Request::post(format!("http://{}{path}", gw.addr));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(full_body(body.to_string())).unwrap();
    let response = client().request(req).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Reads a response body frame by frame, with the time each frame arrived.
pub async fn frames(body: Incoming) -> (Vec<(Instant, Bytes)>, Result<(), String>) {
    let mut body = body;
    let mut out = Vec::new();
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    out.push((Instant::now(), data));
                }
            }
            Some(Err(e)) => return (out, Err(e.to_string())),
            None => return (out, Ok(())),
        }
    }
}

pub fn concat(frames: &[(Instant, Bytes)]) -> Vec<u8> {
    frames.iter().flat_map(|(_, b)| b.iter().copied()).collect()
}

pub fn fixture(path: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/providers")
        .join(path);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// An address on which nothing listens, for as long as the value lives: its port stays bound
/// (never listened on, so a connection is refused), so that no other test's listener can be
/// given it meanwhile, as one was when the port was released at once.
pub struct ClosedPort {
    _bound: tokio::net::TcpSocket,
    pub addr: SocketAddr,
}

impl std::fmt::Display for ClosedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

pub async fn closed_port() -> ClosedPort {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    ClosedPort {
        _bound: socket,
        addr,
    }
}

/// The admin token tests configure when they turn admin authentication on; the helpers below
/// always send it (a gateway without a token ignores it).
pub const TEST_ADMIN_TOKEN: &str = "test-admin-token-7f3a";

pub async fn admin_get(gw: &Gateway, path: &str) -> Answer {
    let req = Request::get(format!("http://{}{path}", gw.admin_addr))
        .header("authorization", format!("Bearer {TEST_ADMIN_TOKEN}"))
        .body(full_body(""))
        .unwrap();
    let response = client().request(req).await.unwrap();
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// Now, in unix nanoseconds (span times).
pub fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A loopback port for a server that will be stopped and started again on the same port.
/// Ports from the kernel's ephemeral range can be handed out as the source port of another
/// test's outgoing connection while the server is down, so these come from below it
/// (20000-32767), starting at a per-process offset, probed by binding.
pub fn restartable_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let base = (std::process::id() as usize * 131) % 12_000;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(
            n < 12_000,
            "no free loopback port below the ephemeral range"
        );
        let port = 20_000 + ((base + n * 7) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The sum of the samples of the metric lines that start with `prefix` (labels included, so
/// `"sidetrace_spans_dropped_total"` sums every reason); end the prefix with a space to match
/// one unlabelled metric exactly.
pub fn metric_in(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The gateway's `/metrics` text.
pub async fn metrics_of(gw: &Gateway) -> String {
    String::from_utf8(admin_get(gw, "/metrics").await.body.to_vec()).unwrap()
}

/// [`metric_in`] of the gateway's `/metrics`.
pub async fn metric(gw: &Gateway, prefix: &str) -> f64 {
    metric_in(&metrics_of(gw).await, prefix)
}

/// Polls the gateway's `/metrics` until `prefix` reaches `at_least`; panics after 30 s.
pub async fn wait_metric(gw: &Gateway, prefix: &str, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = metrics_of(gw).await;
        let v = metric_in(&text, prefix);
        if v >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{prefix} stayed at {v}, wanted {at_least}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GET `path` on the admin port of a gateway run as a process; `None` while it is not up.
pub async fn admin_text(admin: u16, path: &str) -> Option<String> {
    let req = Request::get(format!("http://127.0.0.1:{admin}{path}"))
        .body(full_body(""))
        .unwrap();
    let r = client().request(req).await.ok()?;
    let body = r.into_body().collect().await.ok()?.to_bytes();
    Some(String::from_utf8_lossy(&body).into_owned())
}

/// Sends SIGTERM to a gateway run as a process and waits (without blocking the runtime) until
/// it exits; panics after `within`.
pub async fn sigterm_and_wait(
    child: &mut std::process::Child,
    within: Duration,
) -> std::process::ExitStatus {
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "gateway did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The nice value in a `/proc/.../stat` line: `pid (comm) state ppid ...`; the name may hold
/// spaces, so fields count from the `)`.
#[cfg(target_os = "linux")]
pub fn nice_in(stat: &str) -> Option<i32> {
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(16)?
        .parse()
        .ok()
}

/// The nice value of each of this process's threads, by thread name (Linux).
#[cfg(target_os = "linux")]
pub fn thread_nices() -> Vec<(String, i32)> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.ok()?.path().join("stat")).ok()?;
            let name = stat.split_once('(')?.1.rsplit_once(')')?.0.to_string();
            Some((name, nice_in(&stat)?))
        })
        .collect()
}

/// Waits (at most 10 s) until every thread of this process named `name` (Linux cuts names to
/// 15 bytes) runs at the background nice value above this thread's, and returns this thread's
/// nice value with the last look at every thread's. Other tests of the binary start gateways
/// meanwhile, and a thread has its name before it lowers its priority.
#[cfg(target_os = "linux")]
pub fn wait_for_background_threads(name: &str) -> (i32, Vec<(String, i32)>) {
    let own = nice_in(&std::fs::read_to_string("/proc/thread-self/stat").unwrap()).unwrap();
    let lowered = (own + sidetrace::background::BACKGROUND_NICE).min(19);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let nices = thread_nices();
        let named: Vec<i32> = nices
            .iter()
            .filter(|(n, _)| n == name)
            .map(|&(_, nice)| nice)
            .collect();
        assert!(!named.is_empty(), "no {name} thread among {nices:?}");
        if named.iter().all(|&n| n == lowered) {
            return (own, nices);
        }
        assert!(Instant::now() < deadline, "{nices:?}, own {own}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
