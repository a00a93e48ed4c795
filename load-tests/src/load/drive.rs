//! Sending the load: one pooled hyper client, an open-loop scheduler thread, closed-loop workers,
//! and the timing of each request from its scheduled start.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::{runtime::Runtime, task::JoinSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Non-streamed OpenAI chat completion.
    Chat,
    /// Streamed OpenAI chat completion (SSE, usage chunk asked for).
    Stream,
    /// Streamed Anthropic message (SSE).
    Anthropic,
}

impl Mode {
    pub fn streams(self) -> bool {
        self != Mode::Chat
    }

    fn body(self) -> &'static str {
        match self {
            Mode::Chat => concat!(
                r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},"#,
                r#"{"role":"user","content":"Say hello and count to twenty."}],"temperature":0.2}"#
            ),
            Mode::Stream => concat!(
                r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},"#,
                r#"{"role":"user","content":"Say hello and count to twenty."}],"temperature":0.2,"#,
                r#""stream":true,"stream_options":{"include_usage":true}}"#
            ),
            Mode::Anthropic => concat!(
                r#"{"model":"claude-sonnet-4-20250514","max_tokens":256,"stream":true,"#,
                r#""system":"You are a helpful assistant.","#,
                r#""messages":[{"role":"user","content":"Say hello and count to twenty."}]}"#
            ),
        }
    }

    /// How a complete answer ends: a response cut short is an error, not a fast sample.
    fn expected_end(self) -> &'static [u8] {
        match self {
            Mode::Chat => b"}",
            Mode::Stream => b"data: [DONE]\n\n",
            Mode::Anthropic => b"data: {\"type\":\"message_stop\"}\n\n",
        }
    }
}

/// Why a request did not count as a sample.
#[derive(Clone, Copy, Debug)]
pub enum Failure {
    /// Answer status was not 2xx.
    Status,
    /// Connect, send or receive failed.
    Io,
    /// No complete answer within the per-request timeout.
    Timeout,
    /// The answer ended without its expected last bytes.
    Truncated,
    /// More requests in flight than allowed when this one was due; never sent.
    Overload,
}

#[derive(Default, Debug, Clone)]
pub struct Errors {
    pub status: u64,
    pub io: u64,
    pub timeout: u64,
    pub truncated: u64,
    pub overload: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.status + self.io + self.timeout + self.truncated + self.overload
    }

    fn add(&mut self, f: Failure) {
        match f {
            Failure::Status => self.status += 1,
            Failure::Io => self.io += 1,
            Failure::Timeout => self.timeout += 1,
            Failure::Truncated => self.truncated += 1,
            Failure::Overload => self.overload += 1,
        }
    }
}

/// One successful request, in nanoseconds from its scheduled start.
#[derive(Clone, Copy)]
pub struct Sample {
    /// Until the last body byte.
    pub total_ns: u64,
    /// Until the first body byte.
    pub ttfb_ns: u64,
    /// How late the driver itself sent it (scheduler and runtime delay).
    pub lag_ns: u64,
}

#[derive(Default)]
pub struct Outcomes {
    pub samples: Vec<Sample>,
    pub errors: Errors,
    /// The first failure, described, to make a broken run easy to diagnose.
    pub first_error: Option<String>,
}

pub struct Target {
    pub uri: Uri,
    pub mode: Mode,
    /// Each request's body instead of the mode's own (the mode still says how answers end).
    pub body: Option<Bytes>,
    pub chunks: u64,
    pub delay_ms: u64,
    pub timeout: Duration,
}

pub struct Driver {
    client: Client<HttpConnector, Full<Bytes>>,
    target: Target,
    headers: HeaderMap,
    body: Bytes,
    in_flight: AtomicUsize,
    outcomes: Mutex<Outcomes>,
    /// Set from outside to end a closed-loop run before its duration.
    pub stop: AtomicBool,
}

impl Driver {
    pub fn new(target: Target) -> Arc<Driver> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(usize::MAX)
            .build(connector);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert("x-mock-chunks", HeaderValue::from(target.chunks));
        headers.insert("x-mock-delay-ms", HeaderValue::from(target.delay_ms));
        // Fake credentials, as a real client sends: the gateway passes them through untouched.
        if target.mode == Mode::Anthropic {
            headers.insert(
                "x-api-key",
                HeaderValue::from_static("sk-ant-bench-not-a-key"),
            );
            headers.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        } else {
            headers.insert(
                header::AUTHORIZATION,
                HeaderValue::from_static("Bearer sk-bench-not-a-key"),
            );
        }
        Arc::new(Driver {
            client,
            body: target
                .body
                .clone()
                .unwrap_or_else(|| Bytes::from_static(target.mode.body().as_bytes())),
            target,
            headers,
            in_flight: AtomicUsize::new(0),
            outcomes: Mutex::new(Outcomes::default()),
            stop: AtomicBool::new(false),
        })
    }

    pub fn take_outcomes(&self) -> Outcomes {
        std::mem::take(&mut *self.outcomes.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn fail(&self, f: Failure, detail: impl FnOnce() -> String) {
        let mut o = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        o.errors.add(f);
        if o.first_error.is_none() {
            o.first_error = Some(format!("{f:?}: {}", detail()));
        }
    }

    /// Sends one request due at `scheduled` and records how it went.
    async fn one(self: Arc<Self>, scheduled: Instant) {
        let sent = Instant::now();
        match tokio::time::timeout(self.target.timeout, self.exchange(scheduled)).await {
            Ok(Ok((ttfb, total))) => {
                let ns = |t: Instant| t.saturating_duration_since(scheduled).as_nanos() as u64;
                let sample = Sample {
                    total_ns: ns(total),
                    ttfb_ns: ns(ttfb),
                    lag_ns: ns(sent),
                };
                self.outcomes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .samples
                    .push(sample);
            }
            Ok(Err((f, detail))) => self.fail(f, || detail),
            Err(_) => self.fail(Failure::Timeout, || {
                format!("no complete answer within {:?}", self.target.timeout)
            }),
        }
    }

    /// One request, outside any run: its status, response headers and body length.
    pub async fn probe(&self) -> Result<(http::StatusCode, HeaderMap, usize), String> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = self.target.uri.clone();
        *req.headers_mut() = self.headers.clone();
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| error_chain(&e))?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(|e| error_chain(&e))?;
            Ok((parts.status, parts.headers, body.to_bytes().len()))
        };
        tokio::time::timeout(self.target.timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {:?}", self.target.timeout))?
    }

    /// Returns when the first and the last body bytes arrived.
    async fn exchange(&self, scheduled: Instant) -> Result<(Instant, Instant), (Failure, String)> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = self.target.uri.clone();
        *req.headers_mut() = self.headers.clone();
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| (Failure::Io, error_chain(&e)))?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut first = None;
        // The last bytes seen, to check that the answer is complete.
        let mut tail: Vec<u8> = Vec::with_capacity(128);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| (Failure::Io, error_chain(&e)))?;
            if let Ok(data) = frame.into_data() {
                if data.is_empty() {
                    continue;
                }
                first.get_or_insert_with(Instant::now);
                tail.extend_from_slice(&data[data.len().saturating_sub(64)..]);
                if tail.len() > 64 {
                    tail.drain(..tail.len() - 64);
                }
            }
        }
        let end = Instant::now();
        if !status.is_success() {
            return Err((
                Failure::Status,
                format!(
                    "status {status} after {:?}: {}",
                    end - scheduled,
                    String::from_utf8_lossy(&tail)
                ),
            ));
        }
        if !tail.ends_with(self.target.mode.expected_end()) {
            return Err((
                Failure::Truncated,
                format!("answer ends with {:?}", String::from_utf8_lossy(&tail)),
            ));
        }
        Ok((first.unwrap_or(end), end))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// Open loop: `count` requests due at fixed intervals of `1 / rate`, whatever the answers do.
/// Latency counts from the due time, so a slow target cannot slow the load down and hide its
/// own delay (no coordinated omission). A request due while `max_in_flight` are already out is
/// counted as an overload error instead of being sent late. Returns the time from the first due
/// time to the last answer.
pub fn open_loop(
    rt: &Runtime,
    driver: &Arc<Driver>,
    rate: f64,
    count: u64,
    max_in_flight: usize,
) -> Duration {
    let interval_ns = 1e9 / rate;
    let start = Instant::now() + Duration::from_millis(5);
    for i in 0..count {
        let due = start + Duration::from_nanos((i as f64 * interval_ns) as u64);
        // A plain thread sleep: the Tokio timer ticks in whole milliseconds, which would add up
        // to 1 ms to every request. nanosleep is better, but in a VM its wake-up can still be
        // late by 0.1 ms typically and by milliseconds at times: that lateness is part of every
        // target's figures alike (see send_lag_ms), and cancels out of the added latency.
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if driver.in_flight.load(Ordering::Acquire) >= max_in_flight {
            driver.fail(Failure::Overload, || {
                format!("{max_in_flight} requests already in flight")
            });
            continue;
        }
        driver.in_flight.fetch_add(1, Ordering::AcqRel);
        let d = driver.clone();
        rt.spawn(async move {
            d.clone().one(due).await;
            d.in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    }
    // Every request has its own timeout, so this wait is bounded; the margin covers scheduling.
    let give_up = Instant::now() + driver.target.timeout + Duration::from_secs(2);
    while driver.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(1));
    }
    let stuck = driver.in_flight.load(Ordering::Acquire);
    for _ in 0..stuck {
        driver.fail(Failure::Timeout, || {
            "still in flight at the end".to_string()
        });
    }
    start.elapsed()
}

/// Closed loop: `connections` workers, each sending its next request as soon as the previous
/// one is answered, until `duration` is over, `max_requests` were sent or `driver.stop` is set.
/// Returns the run time.
pub fn closed_loop(
    rt: &Runtime,
    driver: &Arc<Driver>,
    connections: usize,
    duration: Duration,
    max_requests: u64,
) -> Duration {
    let start = Instant::now();
    let deadline = start + duration;
    let sent = Arc::new(AtomicU64::new(0));
    rt.block_on(async {
        let mut workers = JoinSet::new();
        for _ in 0..connections {
            let d = driver.clone();
            let sent = sent.clone();
            workers.spawn(async move {
                while Instant::now() < deadline
                    && !d.stop.load(Ordering::Acquire)
                    && sent.fetch_add(1, Ordering::AcqRel) < max_requests
                {
                    let now = Instant::now();
                    d.clone().one(now).await;
                }
            });
        }
        while workers.join_next().await.is_some() {}
    });
    start.elapsed()
}
