//! bench-floor: the least a hyper reverse proxy does, for the benchmark's floor. It serves
//! HTTP/1.1 with hyper's server on tokio's multi-threaded runtime (one worker per core, like the
//! gateway) and forwards every request, body streamed both ways, to one upstream through
//! hyper-util's pooled client (HTTP/1.1 keep-alive): no routing, no headers read or changed
//! beyond the URI, no telemetry.
//!
//! It is what the gateway's passthrough route would cost with nothing of the gateway's own: the
//! gap from nginx to it is hyper's and tokio's, the gap from it to the gateway is the gateway's.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use clap::Parser;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{
    body::{Bytes, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    name = "bench-floor",
    about = "A minimal hyper reverse proxy: the floor under the gateway's passthrough route"
)]
struct Args {
    /// Loopback address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// The upstream's address (HTTP/1.1, plain).
    #[arg(long)]
    upstream: SocketAddr,
    /// Exit after this many seconds, in case whoever started it dies without stopping it.
    #[arg(long, default_value_t = 3600)]
    exit_after_secs: u64,
}

type Body = BoxBody<Bytes, hyper::Error>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(args.listen).await?;
        let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build_http();
        let upstream = args.upstream;
        let exit = tokio::time::sleep(Duration::from_secs(args.exit_after_secs));
        tokio::pin!(exit);
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => accepted?,
                () = &mut exit => return Ok(()),
            };
            stream.set_nodelay(true)?;
            let client = client.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| forward(client.clone(), upstream, request));
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

async fn forward(
    client: Client<HttpConnector, Incoming>,
    upstream: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (mut parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    parts.uri = match Uri::try_from(format!("http://{upstream}{path}")) {
        Ok(uri) => uri,
        Err(_) => return Ok(status(StatusCode::BAD_REQUEST)),
    };
    match client.request(Request::from_parts(parts, body)).await {
        Ok(response) => Ok(response.map(BodyExt::boxed)),
        Err(_) => Ok(status(StatusCode::BAD_GATEWAY)),
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()).map_err(|e| match e {}).boxed());
    *response.status_mut() = code;
    response
}
