//! An open-loop HTTP load generator.
//!
//! Requests are sent on a schedule fixed in advance by a [`RateProfile`], whether or not
//! earlier ones have returned, and latency is measured from the *intended* send time, so
//! a slow server cannot slow the generator down and hide its own queueing (coordinated
//! omission). Latencies go into an HDR histogram.

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Request rate over time.
#[derive(Debug, Clone)]
pub enum RateProfile {
    /// `rps` requests per second for `duration`.
    Constant {
        /// Requests per second.
        rps: f64,
        /// How long.
        duration: Duration,
    },
    /// Consecutive phases; within a phase the rate moves linearly from `from` to `to` rps.
    Phases(Vec<Phase>),
}

/// One phase of [`RateProfile::Phases`].
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    /// Length of the phase.
    pub duration: Duration,
    /// Rate at the start (rps).
    pub from: f64,
    /// Rate at the end (rps).
    pub to: f64,
}

impl RateProfile {
    /// Total length.
    pub fn duration(&self) -> Duration {
        match self {
            RateProfile::Constant { duration, .. } => *duration,
            RateProfile::Phases(p) => p.iter().map(|p| p.duration).sum(),
        }
    }

    /// Rate at `t` from the start.
    pub fn rate_at(&self, t: Duration) -> f64 {
        match self {
            RateProfile::Constant { rps, duration } => {
                if t < *duration {
                    *rps
                } else {
                    0.0
                }
            }
            RateProfile::Phases(phases) => {
                let mut start = Duration::ZERO;
                for p in phases {
                    if t < start + p.duration {
                        let f = (t - start).as_secs_f64() / p.duration.as_secs_f64().max(1e-9);
                        return p.from + (p.to - p.from) * f;
                    }
                    start += p.duration;
                }
                0.0
            }
        }
    }
}

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Envoy listener.
    pub target: SocketAddr,
    /// `:authority`.
    pub authority: String,
    /// Path.
    pub path: String,
    /// Schedule.
    pub profile: RateProfile,
    /// With `Some(n)`, request *i* carries `x-session-id: s<i mod n>`.
    pub sessions: Option<usize>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Per-request timeout (counted as an error).
    pub timeout: Duration,
    /// Latency objective: successful requests slower than this are counted as over it.
    pub slo: Option<Duration>,
}

impl LoadSpec {
    /// A spec with defaults: authority `checkout.local`, path `/`, no sessions, 10 s timeout.
    pub fn new(target: SocketAddr, profile: RateProfile) -> LoadSpec {
        LoadSpec {
            target,
            authority: "checkout.local".into(),
            path: "/".into(),
            profile,
            sessions: None,
            headers: Vec::new(),
            timeout: Duration::from_secs(10),
            slo: None,
        }
    }
}

/// Results of one second of the schedule (by intended send time).
#[derive(Debug, Clone, Default)]
pub struct Second {
    /// Second index from the start.
    pub index: u64,
    /// Requests scheduled in this second.
    pub sent: u64,
    /// 2xx responses.
    pub ok: u64,
    /// Everything else: non-2xx, connection errors, timeouts.
    pub errors: u64,
    /// 2xx responses by `x-served-by`.
    pub by_server: BTreeMap<String, u64>,
    /// Latency percentiles in ms.
    pub p50_ms: f64,
    /// 99th percentile in ms.
    pub p99_ms: f64,
    /// Successful requests slower than the spec's `slo`.
    pub over_slo: u64,
    /// Latency (µs) of every request of the second.
    pub latency_us: Option<Histogram<u64>>,
}

/// Results of a run.
#[derive(Debug)]
pub struct LoadReport {
    /// Requests sent.
    pub sent: u64,
    /// 2xx responses.
    pub ok: u64,
    /// Failures.
    pub errors: u64,
    /// 2xx responses by `x-served-by`.
    pub by_server: BTreeMap<String, u64>,
    /// Latency (µs) from intended send time to full response.
    pub latency_us: Histogram<u64>,
    /// Per-second breakdown.
    pub seconds: Vec<Second>,
    /// For each session key, the servers its requests landed on, in send order.
    pub session_servers: BTreeMap<String, Vec<String>>,
    /// Failures by kind (`status 503`, `timeout`, or the client error), for diagnosis.
    pub error_kinds: BTreeMap<String, u64>,
    /// Successful requests slower than the spec's `slo`.
    pub over_slo: u64,
}

struct Sample {
    second: u64,
    seq: u64,
    latency_us: u64,
    ok: bool,
    served_by: Option<String>,
    session: Option<String>,
    error: Option<String>,
}

/// The load generator's HTTP/1.1 client.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// An HTTP/1.1 client with keep-alive, sized for load generation.
pub fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4_096)
        // Idle connections are dropped before a server's idle close (the control plane's
        // `header_read_timeout_secs`, 10 s by default): a request sent on a connection the
        // server is closing at that instant is lost in transit, and a POST cannot be retried.
        .pool_idle_timeout(POOL_IDLE)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// How long a pooled connection may sit idle before the client drops it.
pub const POOL_IDLE: Duration = Duration::from_secs(4);

/// One GET; returns (status, x-served-by) or an error string.
pub async fn get(
    client: &HttpClient,
    target: SocketAddr,
    authority: &str,
    path: &str,
    headers: &[(String, String)],
) -> Result<(u16, Option<String>), String> {
    let mut req = hyper::Request::get(format!("http://{target}{path}")).header("host", authority);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg = format!("{msg}: {s}");
            src = s.source();
        }
        msg
    })?;
    let status = resp.status().as_u16();
    let served_by = resp
        .headers()
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // Read the whole body: latency is to the last byte.
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, served_by))
}

/// One request with an optional JSON body (for the control plane's admin API); returns
/// the status and the body.
pub async fn request_json(
    client: &HttpClient,
    method: &str,
    target: SocketAddr,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    request_with(client, method, target, path, body, &[]).await
}

/// Like [`request_json`], with extra request headers (an `authorization` token).
pub async fn request_with(
    client: &HttpClient,
    method: &str,
    target: SocketAddr,
    path: &str,
    body: Option<&str>,
    headers: &[(String, String)],
) -> Result<(u16, String), String> {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{target}{path}"))
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default().to_string())))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Runs the schedule; `on_second` sees each second once all its requests have finished
/// (or timed out).
pub async fn run(spec: LoadSpec, mut on_second: impl FnMut(&Second)) -> LoadReport {
    let client = client();
    let (tx, mut rx) = mpsc::unbounded_channel::<Sample>();
    let start = Instant::now();
    let total = spec.profile.duration();
    let spec = std::sync::Arc::new(spec);
    let scheduler = {
        let spec = spec.clone();
        tokio::spawn(async move {
            let mut t = Duration::ZERO;
            let mut seq = 0u64;
            while t < total {
                let rate = spec.profile.rate_at(t);
                if rate <= 0.0 {
                    t += Duration::from_millis(10);
                    continue;
                }
                let intended = start + t;
                tokio::time::sleep_until(intended).await;
                let session = spec.sessions.map(|n| format!("s{}", seq % n as u64));
                let (client, spec, tx) = (client.clone(), spec.clone(), tx.clone());
                let this = seq;
                tokio::spawn(async move {
                    let mut headers = spec.headers.clone();
                    if let Some(s) = &session {
                        headers.push(("x-session-id".into(), s.clone()));
                    }
                    let result = tokio::time::timeout(
                        spec.timeout,
                        get(&client, spec.target, &spec.authority, &spec.path, &headers),
                    )
                    .await;
                    let latency_us = intended.elapsed().as_micros() as u64;
                    let (ok, served_by, error) = match result {
                        Ok(Ok((status, by))) if (200..300).contains(&status) => (true, by, None),
                        Ok(Ok((status, _))) => (false, None, Some(format!("status {status}"))),
                        Ok(Err(e)) => (false, None, Some(e)),
                        Err(_) => (false, None, Some("timeout".into())),
                    };
                    let _ = tx.send(Sample {
                        second: t.as_secs(),
                        seq: this,
                        latency_us,
                        ok,
                        served_by,
                        session,
                        error,
                    });
                });
                seq += 1;
                t += Duration::from_secs_f64(1.0 / rate);
            }
            seq
        })
    };
    let mut report = LoadReport {
        sent: 0,
        ok: 0,
        errors: 0,
        by_server: BTreeMap::new(),
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds are valid"),
        seconds: Vec::new(),
        session_servers: BTreeMap::new(),
        error_kinds: BTreeMap::new(),
        over_slo: 0,
    };
    let slo_us = spec.slo.map(|d| d.as_micros() as u64);
    let mut open: BTreeMap<u64, (Second, Histogram<u64>)> = BTreeMap::new();
    let mut session_log: Vec<(u64, String, String)> = Vec::new();
    // The channel closes when the scheduler and every request task have dropped their sender.
    drop(scheduler);
    while let Some(s) = rx.recv().await {
        report.sent += 1;
        let _ = report.latency_us.record(s.latency_us.max(1));
        let (sec, hist) = open.entry(s.second).or_insert_with(|| {
            (
                Second {
                    index: s.second,
                    ..Default::default()
                },
                Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds are valid"),
            )
        });
        sec.sent += 1;
        let _ = hist.record(s.latency_us.max(1));
        if s.ok {
            report.ok += 1;
            sec.ok += 1;
            if slo_us.is_some_and(|slo| s.latency_us > slo) {
                report.over_slo += 1;
                sec.over_slo += 1;
            }
            if let Some(by) = &s.served_by {
                *report.by_server.entry(by.clone()).or_default() += 1;
                *sec.by_server.entry(by.clone()).or_default() += 1;
                if let Some(session) = s.session {
                    session_log.push((s.seq, session, by.clone()));
                }
            }
        } else {
            report.errors += 1;
            sec.errors += 1;
            *report
                .error_kinds
                .entry(s.error.unwrap_or_default())
                .or_default() += 1;
        }
        // A second is complete once requests of a second ≥ 2 s later are returning
        // (the timeout bounds stragglers in the report, not in this live view).
        let elapsed = start.elapsed().as_secs();
        while let Some((&first, _)) = open.first_key_value() {
            if first + 2 > elapsed {
                break;
            }
            let (_, (mut sec, hist)) = open.pop_first().expect("non-empty");
            finish_second(&mut sec, &hist);
            on_second(&sec);
            report.seconds.push(sec);
        }
    }
    for (_, (mut sec, hist)) in open {
        finish_second(&mut sec, &hist);
        on_second(&sec);
        report.seconds.push(sec);
    }
    session_log.sort_by_key(|(seq, _, _)| *seq);
    for (_, session, by) in session_log {
        report.session_servers.entry(session).or_default().push(by);
    }
    report
}

fn finish_second(sec: &mut Second, hist: &Histogram<u64>) {
    sec.p50_ms = hist.value_at_quantile(0.5) as f64 / 1e3;
    sec.p99_ms = hist.value_at_quantile(0.99) as f64 / 1e3;
    sec.latency_us = Some(hist.clone());
}

/// Service latency at a fixed rate below saturation: `workers` connections each send one
/// request at a time on a fixed pace, and each request is timed from its *actual* send to
/// its last byte. Unlike [`run`], timer lateness (≈ 1 ms granularity) is not counted,
/// which matters when comparing filters that differ by microseconds. Returns the
/// histogram (µs) and the number of errors.
pub async fn paced(
    target: SocketAddr,
    authority: &str,
    rps: f64,
    workers: usize,
    duration: Duration,
) -> (Histogram<u64>, u64) {
    let deadline = Instant::now() + duration;
    let interval = Duration::from_secs_f64(workers as f64 / rps);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let authority = authority.to_string();
        tasks.spawn(async move {
            let client = client();
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .expect("static bounds are valid");
            let mut errors = 0;
            // Stagger the workers across one interval.
            let mut next = Instant::now() + interval.mul_f64(w as f64 / workers as f64);
            while next < deadline {
                tokio::time::sleep_until(next).await;
                let sent = std::time::Instant::now();
                match get(&client, target, &authority, "/", &[]).await {
                    Ok((200..=299, _)) => {
                        let _ = hist.record((sent.elapsed().as_micros() as u64).max(1));
                    }
                    _ => errors += 1,
                }
                next += interval;
            }
            (hist, errors)
        });
    }
    let mut all =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("static bounds are valid");
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        if let Ok((h, e)) = r {
            let _ = all.add(&h);
            errors += e;
        }
    }
    (all, errors)
}

/// Closed-loop saturation: `connections` workers send back-to-back for `duration`;
/// returns (completed 2xx, errors).
pub async fn saturate(
    target: SocketAddr,
    authority: &str,
    connections: usize,
    duration: Duration,
) -> (u64, u64) {
    let deadline = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let authority = authority.to_string();
        tasks.spawn(async move {
            // One client per worker = one connection per worker.
            let client = client();
            let (mut ok, mut err) = (0u64, 0u64);
            while Instant::now() < deadline {
                match get(&client, target, &authority, "/", &[]).await {
                    Ok((200..=299, _)) => ok += 1,
                    _ => err += 1,
                }
            }
            (ok, err)
        });
    }
    let (mut ok, mut err) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        if let Ok((o, e)) = r {
            ok += o;
            err += e;
        }
    }
    (ok, err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_interpolate() {
        let p = RateProfile::Phases(vec![
            Phase {
                duration: Duration::from_secs(10),
                from: 0.0,
                to: 100.0,
            },
            Phase {
                duration: Duration::from_secs(5),
                from: 100.0,
                to: 100.0,
            },
        ]);
        assert_eq!(p.duration(), Duration::from_secs(15));
        assert_eq!(p.rate_at(Duration::from_secs(5)), 50.0);
        assert_eq!(p.rate_at(Duration::from_secs(12)), 100.0);
        assert_eq!(p.rate_at(Duration::from_secs(20)), 0.0);
    }
}
