//! bench-mock: a fast mock LLM upstream on loopback, OpenAI chat completions and Anthropic
//! messages, streamed or not, with the chunk count and delays chosen per request by headers;
//! also a minimal OTLP/HTTP trace sink (`POST /v1/traces`) that counts what it is sent.

mod body;
mod wire;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use bytes::Bytes;
use clap::Parser;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use body::MockBody;

#[derive(Parser)]
#[command(
    name = "bench-mock",
    about = "Mock OpenAI / Anthropic upstream for the benchmark"
)]
struct Args {
    /// Loopback address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Exit after this many seconds, in case whoever started the mock dies without stopping it.
    #[arg(long, default_value_t = 3600)]
    exit_after_secs: u64,
}

/// What the client asked of the mock, from `x-mock-*` headers.
#[derive(Clone, Copy)]
pub struct Params {
    /// Content chunks (streams) or words (whole answers).
    pub chunks: usize,
    /// Pause before each chunk after the first.
    pub delay: Duration,
    /// Pause before the response headers.
    pub ttfb: Duration,
}

impl Params {
    fn from_headers(h: &HeaderMap) -> Params {
        let num = |name: &str, default: u64| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(default)
        };
        Params {
            // Bounded so that a typo cannot make the mock build a gigabyte answer.
            chunks: num("x-mock-chunks", 20).clamp(1, 100_000) as usize,
            delay: Duration::from_millis(num("x-mock-delay-ms", 0).min(60_000)),
            ttfb: Duration::from_millis(num("x-mock-ttfb-ms", 0).min(600_000)),
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if !args.listen.ip().is_loopback() {
        eprintln!(
            "bench-mock: refusing to listen on {}: loopback only",
            args.listen
        );
        return std::process::ExitCode::from(2);
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench-mock: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let lifetime = Duration::from_secs(args.exit_after_secs);
    let result = rt.block_on(async {
        tokio::select! {
            r = serve(args.listen) => r,
            _ = tokio::time::sleep(lifetime) => Ok(()),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-mock: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!("bench-mock listening on {}", listener.local_addr()?);
    let mut builder = http1::Builder::new();
    // hyper's header read timeout needs a timer; keep-alive is on by default.
    builder.timer(TokioTimer::new());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors: keep serving the connections we have.
                eprintln!("bench-mock: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // SSE chunks must leave at once, not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let conn = builder.serve_connection(TokioIo::new(stream), service_fn(handle));
        tokio::spawn(async move {
            // Clients closing mid-stream is normal in a benchmark; nothing to report.
            let _ = conn.await;
        });
    }
}

/// What the OTLP sink received: export requests and their body bytes (protobuf, as sent).
static TRACES_REQUESTS: AtomicU64 = AtomicU64::new(0);
static TRACES_BYTES: AtomicU64 = AtomicU64::new(0);

async fn handle(req: Request<Incoming>) -> Result<Response<MockBody>, Infallible> {
    let params = Params::from_headers(req.headers());
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    // Bodies are small: read them whole, at once.
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "cannot read the request body",
            ));
        }
    };
    if !params.ttfb.is_zero() {
        tokio::time::sleep(params.ttfb).await;
    }
    let resp = match (method, path.as_str()) {
        (Method::POST, p) if p.ends_with("/chat/completions") => chat(&body, params),
        (Method::POST, p) if p.ends_with("/messages") => messages(&body, params),
        (Method::POST, "/v1/traces") => traces(&body),
        (Method::GET, "/stats") => stats(),
        (Method::GET, "/healthz") => json(StatusCode::OK, Bytes::from_static(b"{\"ok\":true}")),
        _ => error(StatusCode::NOT_FOUND, "no such mock endpoint"),
    };
    Ok(resp)
}

/// The request fields the mock cares about.
struct Asked {
    stream: bool,
    include_usage: bool,
    /// A rough token count of the prompt, for realistic usage figures.
    prompt_tokens: u64,
}

fn parse(body: &Bytes) -> Option<Asked> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(Asked {
        stream: v.get("stream").and_then(|s| s.as_bool()).unwrap_or(false),
        include_usage: v
            .pointer("/stream_options/include_usage")
            .and_then(|s| s.as_bool())
            .unwrap_or(false),
        prompt_tokens: (body.len() as u64 / 4).max(1),
    })
}

fn chat(body: &Bytes, p: Params) -> Response<MockBody> {
    let Some(asked) = parse(body) else {
        return error(StatusCode::BAD_REQUEST, "request body is not JSON");
    };
    if asked.stream {
        let frames = wire::chat_stream(p.chunks, asked.include_usage, asked.prompt_tokens);
        sse(MockBody::stream(frames, p.delay))
    } else {
        json(
            StatusCode::OK,
            wire::chat_completion(p.chunks, asked.prompt_tokens),
        )
    }
}

fn messages(body: &Bytes, p: Params) -> Response<MockBody> {
    let Some(asked) = parse(body) else {
        return error(StatusCode::BAD_REQUEST, "request body is not JSON");
    };
    if asked.stream {
        sse(MockBody::stream(
            wire::messages_stream(p.chunks, asked.prompt_tokens),
            p.delay,
        ))
    } else {
        json(StatusCode::OK, wire::message(p.chunks, asked.prompt_tokens))
    }
}

/// OTLP/HTTP trace export: counted, not decoded. An empty `ExportTraceServiceResponse` (full
/// success) encodes to zero bytes, so the answer is 200 with an empty protobuf body.
fn traces(body: &Bytes) -> Response<MockBody> {
    TRACES_REQUESTS.fetch_add(1, Ordering::Relaxed);
    TRACES_BYTES.fetch_add(body.len() as u64, Ordering::Relaxed);
    let mut resp = Response::new(MockBody::whole(Bytes::new()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-protobuf"),
    );
    resp
}

/// The sink's counters, in the Prometheus text format (what bench-load reads from the gateway).
fn stats() -> Response<MockBody> {
    let text = format!(
        concat!(
            "# TYPE bench_sink_trace_requests counter\n",
            "bench_sink_trace_requests_total {}\n",
            "# TYPE bench_sink_trace_bytes counter\n",
            "bench_sink_trace_bytes_total {}\n",
        ),
        TRACES_REQUESTS.load(Ordering::Relaxed),
        TRACES_BYTES.load(Ordering::Relaxed),
    );
    let mut resp = Response::new(MockBody::whole(Bytes::from(text)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

fn sse(body: MockBody) -> Response<MockBody> {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    resp
}

fn json(status: StatusCode, body: Bytes) -> Response<MockBody> {
    let mut resp = Response::new(MockBody::whole(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, message: &str) -> Response<MockBody> {
    let body = serde_json::json!({
        "error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}
    });
    json(status, Bytes::from(body.to_string()))
}
