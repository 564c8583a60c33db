//! A small upstream HTTP service with a real capacity limit that reports its load with
//! ORCA, as a stand-in for a primary or shadow instance.
//!
//! Capacity is `concurrency` requests served at a time, each taking `service_time`;
//! further requests queue. Every response carries `x-served-by: <name>` and an
//! `endpoint-load-metrics` header whose utilization is `(active + queued) / concurrency`
//! averaged over the last tenth of a second — as a real server reports its CPU
//! utilization: a time average, not a count taken at one request's arrival (which always
//! includes that request, and so reads one request high).
//!
//! A [`ColdStart`] makes it behave like a real instance that has just started (caches
//! empty, JIT cold, connections to its own dependencies not yet open): for a while after
//! start-up every request is much slower, or refused with `503`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// How the upstream reports ORCA load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OrcaMode {
    /// No `endpoint-load-metrics` header.
    Off = 0,
    /// `TEXT cpu_utilization=…`
    Text = 1,
    /// `JSON {"application_utilization":…}`
    Json = 2,
    /// A malformed header (for robustness tests).
    Malformed = 3,
}

/// Upstream settings.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Name returned in `x-served-by`.
    pub name: String,
    /// Requests served concurrently.
    pub concurrency: usize,
    /// Time to serve one request.
    pub service_time: Duration,
    /// ORCA reporting.
    pub orca: OrcaMode,
    /// Behaviour right after start-up.
    pub cold_start: Option<ColdStart>,
}

/// How an upstream behaves while it warms up after start-up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColdStart {
    /// How long after start-up.
    pub duration: Duration,
    /// What requests get meanwhile.
    pub behaviour: ColdBehaviour,
}

/// What a cold upstream does with a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ColdBehaviour {
    /// Serves it this many times slower than when warm.
    Slow(u32),
    /// Refuses it with `503 Service Unavailable` at once.
    Refuse,
}

/// Counters of a running upstream.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    /// Requests answered.
    pub served: AtomicU64,
    /// Requests being served or queued now.
    pub in_system: AtomicU64,
    /// Highest `in_system` seen.
    pub peak_in_system: AtomicU64,
    /// Requests that arrived carrying Shadowmesh's internal routing header (must stay 0).
    pub leaked_route_headers: AtomicU64,
}

/// A running upstream; stops when dropped or [`UpstreamHandle::stop`]ped.
pub struct UpstreamHandle {
    /// Bound address.
    pub addr: SocketAddr,
    /// Live counters.
    pub stats: Arc<UpstreamStats>,
    orca: Arc<AtomicU8>,
    stop: watch::Sender<bool>,
    stopped: watch::Receiver<bool>,
}

impl UpstreamHandle {
    /// Changes the ORCA mode at run time.
    pub fn set_orca(&self, mode: OrcaMode) {
        self.orca.store(mode as u8, Ordering::Relaxed);
    }

    /// Stops accepting and closes every connection now (a crash, as far as clients see),
    /// without waiting.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Like [`UpstreamHandle::stop`], and returns once every connection is closed: after
    /// this, the upstream serves nothing more.
    pub async fn shutdown(&self) {
        self.stop();
        let mut stopped = self.stopped.clone();
        let _ = stopped.wait_for(|s| *s).await;
    }
}

impl Drop for UpstreamHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Shared {
    config: UpstreamConfig,
    started: tokio::time::Instant,
    permits: Semaphore,
    stats: Arc<UpstreamStats>,
    orca: Arc<AtomicU8>,
    load: Mutex<LoadMeter>,
}

/// The time average of the requests in the system, over windows of [`LoadMeter::WINDOW`].
struct LoadMeter {
    in_system: u64,
    since: std::time::Instant,
    window_start: std::time::Instant,
    /// Request·seconds in the current window so far.
    area: f64,
    /// The average of the last complete window (`None` before the first).
    last: Option<f64>,
}

impl LoadMeter {
    const WINDOW: Duration = Duration::from_millis(100);

    fn new() -> LoadMeter {
        let now = std::time::Instant::now();
        LoadMeter {
            in_system: 0,
            since: now,
            window_start: now,
            area: 0.0,
            last: None,
        }
    }

    /// Adds `delta` to the requests in the system; returns the average in the system over
    /// the last complete window (or the current one, before any is complete).
    fn change(&mut self, delta: i64) -> f64 {
        let now = std::time::Instant::now();
        self.area += self.in_system as f64 * (now - self.since).as_secs_f64();
        self.since = now;
        let open = (now - self.window_start).as_secs_f64();
        if open >= Self::WINDOW.as_secs_f64() {
            self.last = Some(self.area / open);
            self.area = 0.0;
            self.window_start = now;
        }
        self.in_system = self.in_system.saturating_add_signed(delta);
        self.last
            .unwrap_or(if open > 0.0 { self.area / open } else { 0.0 })
    }
}

impl UpstreamConfig {
    /// An upstream called `name` serving `concurrency` requests at a time, each taking
    /// `service_time`.
    pub fn new(
        name: &str,
        concurrency: usize,
        service_time: Duration,
        orca: OrcaMode,
    ) -> UpstreamConfig {
        UpstreamConfig {
            name: name.to_string(),
            concurrency,
            service_time,
            orca,
            cold_start: None,
        }
    }
}

/// Starts an upstream on `127.0.0.1:port` (0 = ephemeral) inside the current runtime.
pub async fn start(config: UpstreamConfig, port: u16) -> std::io::Result<UpstreamHandle> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(UpstreamStats::default());
    let orca = Arc::new(AtomicU8::new(config.orca as u8));
    let (stop, mut stop_rx) = watch::channel(false);
    let (stopped_tx, stopped) = watch::channel(false);
    let shared = Arc::new(Shared {
        started: tokio::time::Instant::now(),
        permits: Semaphore::new(config.concurrency.max(1)),
        config,
        stats: stats.clone(),
        orca: orca.clone(),
        load: Mutex::new(LoadMeter::new()),
    });
    tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = stop_rx.changed() => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    connections.spawn(async move {
                        let svc = hyper::service::service_fn(move |req| handle(shared.clone(), req));
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            }
        }
        // Abort every connection task (clients see resets) and reap them, so nothing is
        // served after `stopped` is set.
        connections.abort_all();
        while connections.join_next().await.is_some() {}
        let _ = stopped_tx.send(true);
    });
    Ok(UpstreamHandle {
        addr,
        stats,
        orca,
        stop,
        stopped,
    })
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let stats = &shared.stats;
    if req.headers().contains_key("x-shadowmesh-cluster") {
        stats.leaked_route_headers.fetch_add(1, Ordering::Relaxed);
    }
    let cold = shared
        .config
        .cold_start
        .filter(|c| shared.started.elapsed() < c.duration)
        .map(|c| c.behaviour);
    if cold == Some(ColdBehaviour::Refuse) {
        let refused = Response::builder()
            .status(503)
            .header("x-served-by", &shared.config.name)
            .body(Full::new(Bytes::from_static(b"warming up")))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
        return Ok(refused);
    }
    let now = stats.in_system.fetch_add(1, Ordering::Relaxed) + 1;
    stats.peak_in_system.fetch_max(now, Ordering::Relaxed);
    shared.load.lock().map(|mut m| m.change(1)).ok();
    // Closed only if the semaphore is closed, which never happens.
    let permit = shared.permits.acquire().await;
    let service_time = match cold {
        Some(ColdBehaviour::Slow(factor)) => shared.config.service_time * factor.max(1),
        _ => shared.config.service_time,
    };
    if !service_time.is_zero() {
        tokio::time::sleep(service_time).await;
    }
    drop(permit);
    stats.in_system.fetch_sub(1, Ordering::Relaxed);
    let in_system = shared.load.lock().map(|mut m| m.change(-1)).unwrap_or(0.0);
    let utilization = in_system / shared.config.concurrency.max(1) as f64;
    stats.served.fetch_add(1, Ordering::Relaxed);
    let mut resp = Response::builder()
        .header("x-served-by", &shared.config.name)
        .header("content-type", "text/plain");
    match shared.orca.load(Ordering::Relaxed) {
        1 => {
            resp = resp.header(
                "endpoint-load-metrics",
                format!("TEXT cpu_utilization={utilization:.3}"),
            )
        }
        2 => {
            resp = resp.header(
                "endpoint-load-metrics",
                format!("JSON {{\"application_utilization\":{utilization:.3}}}"),
            )
        }
        3 => resp = resp.header("endpoint-load-metrics", "TEXT cpu_utilization=garbage"),
        _ => {}
    }
    Ok(resp
        .body(Full::new(Bytes::from(shared.config.name.clone())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}
