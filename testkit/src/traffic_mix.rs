//! Traffic mixes through State Synchronization's deployment ([`SyncStack`]): a share of the
//! requests in sessions that write their carts and check every answer against their own
//! writes, the rest session-less, at a rate profile that surges above the primary's
//! capacity — and what came of it, second by second, measured where it happens rather than
//! where the filter says it did.
//!
//! * **Sent** on a schedule fixed in advance (open loop): each slot is a session's request
//!   (error diffusion over `session_share`; the sessions in turn) or a session-less one.
//!   A session is one browser: one request at a time, and a slot that finds it waiting
//!   leaves it one request to send when the answer comes (a user waits, then clicks once).
//! * **The primary's load** from the primary `cart`'s own count of requests in it
//!   (`GET /stats`: waiting or served, integrated over time), divided by its capacity —
//!   not the filter's estimate.
//! * **The shadow's share** from the answers' `x-served-by`.
//! * **Read-your-writes**: an answer with fewer writes than the session made is a stale
//!   read; **stickiness**: a session served by the shadow and later by the primary before
//!   the surge ended bounced.
//! * **Entries and exits** of redirection from the edge Envoy's log.

use crate::envoy::EnvoyProcess;
use crate::loadgen::{self, HttpClient};
use crate::state_sync::{SyncStack, filter_stat};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A traffic mix and its rate profile.
#[derive(Debug, Clone)]
pub struct MixSpec {
    /// Share of requests that carry a session key, 0..=1.
    pub session_share: f64,
    /// Distinct session keys.
    pub keys: usize,
    /// Requests per second before and after the surge.
    pub calm_rps: f64,
    /// Requests per second during the surge.
    pub surge_rps: f64,
    /// Seconds of calm, surge, calm.
    pub phases_s: [u64; 3],
    /// Every this many requests of a session, one writes its cart (`POST /cart/add`); the
    /// others read it.
    pub write_every: u64,
    /// Session keys are `<prefix>-<n>`.
    pub prefix: String,
}

impl MixSpec {
    /// The surge: 4 s at 100 req/s, 14 s at 600 (1.5× a primary of 8 × 20 ms),
    /// 6 s at 100; a write every fourth request of a session.
    pub fn surge(session_share: f64, keys: usize) -> MixSpec {
        MixSpec {
            session_share,
            keys,
            calm_rps: 100.0,
            surge_rps: 600.0,
            phases_s: [4, 14, 6],
            write_every: 4,
            prefix: format!("mix{}x{keys}", (session_share * 100.0).round()),
        }
    }

    fn rate_at(&self, t: Duration) -> f64 {
        let s = t.as_secs_f64();
        let [a, b, _] = self.phases_s.map(|p| p as f64);
        if s >= a && s < a + b {
            self.surge_rps
        } else {
            self.calm_rps
        }
    }

    fn duration(&self) -> Duration {
        Duration::from_secs(self.phases_s.iter().sum())
    }

    /// When the surge begins and ends, from the start (s).
    pub fn surge_s(&self) -> (u64, u64) {
        (self.phases_s[0], self.phases_s[0] + self.phases_s[1])
    }
}

/// How much slower than calm the primary's own time per request must be for a second to
/// count as the host's stall: well above its second-to-second noise (a few per cent).
pub const SLOWED_PRIMARY: f64 = 1.25;

/// One second of a mix, by the send time of its requests.
#[derive(Debug, Clone, Default)]
pub struct MixSecond {
    /// Seconds from the start.
    pub index: u64,
    /// Requests answered 2xx.
    pub ok: u64,
    /// Of those, served by the shadow.
    pub to_shadow: u64,
    /// Requests that failed.
    pub errors: u64,
    /// The primary's mean concurrency over this second / its capacity, from its own count.
    pub primary_load: f64,
    /// The primary's own time per request served this second (ms), queue wait excluded:
    /// its speed, which only the host changes (a stall of the machine), never the
    /// traffic sent to it.
    pub primary_service_ms: f64,
}

/// What a mix did.
#[derive(Debug, Clone)]
pub struct MixReport {
    /// The mix.
    pub spec: MixSpec,
    /// Second by second.
    pub seconds: Vec<MixSecond>,
    /// The edge filter's state changes, as it logged them (`Normal -> Redirecting (…)`).
    pub transitions: Vec<String>,
    /// Sessions served by the shadow and then by the primary before the surge ended.
    pub bounces: Vec<String>,
    /// Answers with fewer writes than their session had made.
    pub stale_reads: u64,
    /// The first stale reads, described.
    pub stale_examples: Vec<String>,
    /// Failed requests by kind.
    pub error_kinds: BTreeMap<String, u64>,
    /// Sessions the shadow served at some point.
    pub sessions_moved: usize,
    /// Requests the edge filter held on the primary until their session's latest state was
    /// acknowledged (its `state_held_on_primary_total`).
    pub held: u64,
    /// Latency (µs, send to last byte) of the requests sent in the settled surge.
    pub surge_latency_us: Histogram<u64>,
    /// Requests the primary serves at once.
    pub capacity: usize,
}

/// A mix judged: what the table and `target/bench/atre-mix.json` show of it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MixSummary {
    /// Share of requests in sessions.
    pub session_share: f64,
    /// Distinct session keys.
    pub keys: usize,
    /// Entries plus exits of redirection during the run.
    pub flaps: usize,
    /// The primary's load over the settled surge, 5th and 95th percentile of its seconds.
    pub primary_load_p5: f64,
    /// See `primary_load_p5`.
    pub primary_load_p95: f64,
    /// Share of the settled surge's answers the shadow gave.
    pub shadow_share: f64,
    /// `1 − target/demand`: the excess.
    pub ideal_share: f64,
    /// Failed requests, whole run.
    pub errors: u64,
    /// The surge's demand, as the primary's load alone.
    pub demand: f64,
    /// Latency of the settled surge's requests, send to last byte (ms).
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// Sessions sent back from the shadow before the surge ended.
    pub bounces: usize,
    /// Answers older than their session's writes.
    pub stale_reads: u64,
    /// Sessions the shadow served.
    pub sessions_moved: usize,
    /// Requests held on the primary until their session's state was acknowledged.
    pub held: u64,
}

/// The edge filter's logged state changes of service `checkout`.
pub fn transitions(edge: &EnvoyProcess) -> Vec<String> {
    edge.log()
        .lines()
        .filter_map(|l| {
            l.split_once("shadowmesh: service checkout ")
                .map(|(_, t)| t.to_string())
        })
        .filter(|t| t.starts_with("Normal -> ") || t.starts_with("Redirecting -> "))
        .collect()
}

/// The edge filter's logged changes of the sessions it pins.
pub fn pin_changes(edge: &EnvoyProcess) -> Vec<String> {
    edge.log()
        .lines()
        .filter_map(|l| {
            l.split_once("shadowmesh: service checkout pins ")
                .map(|(_, t)| t.to_string())
        })
        .collect()
}

impl MixReport {
    /// The seconds from `settle_s` after the surge began to its end.
    pub fn settled(&self, settle_s: u64) -> Vec<&MixSecond> {
        let (from, to) = self.spec.surge_s();
        self.seconds
            .iter()
            .filter(|s| s.index >= from + settle_s && s.index < to)
            .collect()
    }

    /// The `q`-quantile (nearest rank) of the primary's load over the settled surge.
    pub fn primary_load(&self, settle_s: u64, q: f64) -> f64 {
        nearest_rank(
            self.settled(settle_s)
                .iter()
                .map(|s| s.primary_load)
                .collect(),
            q,
        )
    }

    /// The primary's own time per request (ms) before the surge: the median of the calm
    /// seconds.
    pub fn calm_service_ms(&self) -> f64 {
        let (onset, _) = self.spec.surge_s();
        let calm: Vec<f64> = self
            .seconds
            .iter()
            .filter(|s| s.index >= 1 && s.index < onset && s.primary_service_ms.is_finite())
            .map(|s| s.primary_service_ms)
            .collect();
        // None measured: no second can be judged slow against it.
        if calm.is_empty() {
            f64::NAN
        } else {
            crate::median(calm)
        }
    }

    /// The settled seconds in which the primary itself was slow — its own time per request
    /// (queue wait excluded) [`SLOWED_PRIMARY`]× its calm one: a stall of the machine
    /// (its timers ran late), which no routing causes. The controller answers it (it sheds
    /// more), but the primary's load that second is the host's, not the controller's.
    pub fn slowed_primary(&self, settle_s: u64) -> Vec<&MixSecond> {
        let calm = self.calm_service_ms();
        self.settled(settle_s)
            .into_iter()
            .filter(|s| s.primary_service_ms > SLOWED_PRIMARY * calm)
            .collect()
    }

    /// The `q`-quantile (nearest rank) of the primary's load over the settled surge,
    /// without the seconds in which the primary itself was slow ([`MixReport::slowed_primary`])
    /// and the second after each (the backlog a stall leaves drains in it).
    pub fn primary_load_judged(&self, settle_s: u64, q: f64) -> f64 {
        let slowed: Vec<u64> = self
            .slowed_primary(settle_s)
            .iter()
            .map(|s| s.index)
            .collect();
        nearest_rank(
            self.settled(settle_s)
                .iter()
                .filter(|s| !slowed.iter().any(|i| s.index == *i || s.index == i + 1))
                .map(|s| s.primary_load)
                .collect(),
            q,
        )
    }

    /// The share of the settled surge's answers the shadow gave.
    pub fn shadow_share(&self, settle_s: u64) -> f64 {
        let (shadow, ok) = self
            .settled(settle_s)
            .iter()
            .fold((0, 0), |(s, o), x| (s + x.to_shadow, o + x.ok));
        if ok == 0 {
            0.0
        } else {
            shadow as f64 / ok as f64
        }
    }

    /// How long a request spends in the primary when it is calm (ms): its load before the
    /// surge × its capacity / the calm rate (Little's law).
    pub fn unloaded_ms(&self) -> f64 {
        let (onset, _) = self.spec.surge_s();
        let calm: Vec<f64> = self
            .seconds
            .iter()
            .filter(|s| s.index >= 1 && s.index < onset && s.primary_load.is_finite())
            .map(|s| s.primary_load)
            .collect();
        let load = calm.iter().sum::<f64>() / calm.len().max(1) as f64;
        load * self.capacity as f64 / self.spec.calm_rps * 1e3
    }

    /// The surge's demand: the load the primary would carry alone (its rate × the
    /// unloaded time in it / its capacity).
    pub fn demand(&self) -> f64 {
        self.spec.surge_rps * self.unloaded_ms() / 1e3 / self.capacity.max(1) as f64
    }

    /// `1 − target/demand`: the excess, the share the shadow should take.
    pub fn ideal_share(&self, target: f64) -> f64 {
        (1.0 - target / self.demand()).max(0.0)
    }

    /// Entries and exits of redirection.
    pub fn flaps(&self) -> usize {
        self.transitions.len()
    }

    /// Failed requests.
    pub fn errors(&self) -> u64 {
        self.error_kinds.values().sum()
    }

    /// The mix judged from `settle_s` after the onset against the load `target`.
    pub fn summary(&self, settle_s: u64, target: f64) -> MixSummary {
        let ms = |q: f64| self.surge_latency_us.value_at_quantile(q) as f64 / 1e3;
        MixSummary {
            session_share: self.spec.session_share,
            keys: self.spec.keys,
            flaps: self.flaps(),
            primary_load_p5: self.primary_load(settle_s, 0.05),
            primary_load_p95: self.primary_load(settle_s, 0.95),
            shadow_share: self.shadow_share(settle_s),
            ideal_share: self.ideal_share(target),
            errors: self.errors(),
            demand: self.demand(),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            bounces: self.bounces.len(),
            stale_reads: self.stale_reads,
            sessions_moved: self.sessions_moved,
            held: self.held,
        }
    }

    /// Second by second: `index:load/shadow share/requests`.
    pub fn timeline(&self) -> String {
        self.seconds
            .iter()
            .map(|s| {
                format!(
                    "{}:{:.2}/{:.2}/{}/{:.1}",
                    s.index,
                    s.primary_load,
                    s.to_shadow as f64 / s.ok.max(1) as f64,
                    s.ok + s.errors,
                    s.primary_service_ms
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// What one answer said.
struct Answer {
    second: u64,
    latency_us: u64,
    outcome: Result<String, String>,
}

/// A session's requests, in order: (sent at, served by).
type Trail = Vec<(Duration, String)>;

struct Tally {
    seconds: BTreeMap<u64, MixSecond>,
    error_kinds: BTreeMap<String, u64>,
    stale_reads: u64,
    stale_examples: Vec<String>,
    latency: Histogram<u64>,
    settled: (u64, u64),
}

impl Tally {
    fn add(&mut self, a: Answer) {
        let sec = self.seconds.entry(a.second).or_insert_with(|| MixSecond {
            index: a.second,
            ..Default::default()
        });
        match a.outcome {
            Ok(by) => {
                sec.ok += 1;
                if by.contains("shadow") {
                    sec.to_shadow += 1;
                }
                if (self.settled.0..self.settled.1).contains(&a.second) {
                    let _ = self.latency.record(a.latency_us.max(1));
                }
            }
            Err(kind) => {
                sec.errors += 1;
                *self.error_kinds.entry(kind).or_default() += 1;
            }
        }
    }
}

/// Runs `spec` through `stack`'s edge; the settled surge (for latency) starts `settle_s`
/// after the onset.
pub async fn run(stack: &SyncStack, spec: &MixSpec, settle_s: u64) -> MixReport {
    let client = loadgen::client();
    let edge = stack.edge.listener;
    let (onset, end) = spec.surge_s();
    let tally = Arc::new(Mutex::new(Tally {
        seconds: BTreeMap::new(),
        error_kinds: BTreeMap::new(),
        stale_reads: 0,
        stale_examples: Vec::new(),
        latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds"),
        settled: (onset + settle_s, end),
    }));
    let start = Instant::now();
    // One task per session, each woken by its slots (a slot that finds one waiting is
    // dropped: at most one request waits behind the one in flight).
    let mut wake = Vec::with_capacity(spec.keys);
    let mut sessions = tokio::task::JoinSet::new();
    for i in 0..spec.keys {
        let (tx, rx) = mpsc::channel::<()>(1);
        wake.push(tx);
        let (client, tally) = (client.clone(), tally.clone());
        let key = format!("{}-{i}", spec.prefix);
        let write_every = spec.write_every.max(1);
        sessions.spawn(session(client, edge, key, write_every, rx, tally, start));
    }
    let load = tokio::spawn(primary_load(
        stack.primary_addr,
        stack.options.primary_concurrency,
        spec.duration(),
        start,
    ));
    let mut plain = tokio::task::JoinSet::new();
    let mut t = Duration::ZERO;
    let (mut credit, mut next) = (0.0, 0usize);
    while t < spec.duration() {
        tokio::time::sleep_until(start + t).await;
        credit += spec.session_share;
        if credit >= 1.0 && spec.keys > 0 {
            credit -= 1.0;
            let _ = wake[next].try_send(());
            next = (next + 1) % spec.keys;
        } else {
            let (client, tally) = (client.clone(), tally.clone());
            let second = t.as_secs();
            plain.spawn(async move {
                let sent = Instant::now();
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    loadgen::get(&client, edge, "checkout.local", "/catalog", &[]),
                )
                .await;
                let outcome = match r {
                    Ok(Ok((200, Some(by)))) => Ok(by),
                    Ok(Ok((status, _))) => Err(format!("status {status}")),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err("timeout".into()),
                };
                let latency_us = sent.elapsed().as_micros() as u64;
                lock(&tally).add(Answer {
                    second,
                    latency_us,
                    outcome,
                });
            });
        }
        t += Duration::from_secs_f64(1.0 / spec.rate_at(t).max(1.0));
    }
    drop(wake);
    while plain.join_next().await.is_some() {}
    let mut trails: Vec<(String, Trail)> = Vec::new();
    while let Some(done) = sessions.join_next().await {
        if let Ok(trail) = done {
            trails.push(trail);
        }
    }
    let loads = load.await.unwrap_or_default();
    let surge_end = Duration::from_secs(end);
    let mut bounces = Vec::new();
    let mut moved = 0;
    for (key, trail) in &trails {
        let mut on_shadow = false;
        let mut was = false;
        for (at, by) in trail {
            let shadow = by.contains("shadow");
            if shadow {
                on_shadow = true;
                was = true;
            } else if on_shadow && *at < surge_end {
                bounces.push(format!(
                    "{key} back on the primary at {:.2} s: {trail:?}",
                    at.as_secs_f64()
                ));
                on_shadow = false;
            } else {
                on_shadow = false;
            }
        }
        moved += usize::from(was);
    }
    let mut t = lock(&tally);
    let mut seconds = std::mem::take(&mut t.seconds);
    for (i, (load, service_ms)) in loads.iter().enumerate() {
        let second = seconds.entry(i as u64).or_insert_with(|| MixSecond {
            index: i as u64,
            ..Default::default()
        });
        second.primary_load = *load;
        second.primary_service_ms = *service_ms;
    }
    MixReport {
        spec: spec.clone(),
        seconds: seconds.into_values().collect(),
        transitions: transitions(&stack.edge),
        bounces,
        stale_reads: t.stale_reads,
        stale_examples: std::mem::take(&mut t.stale_examples),
        error_kinds: std::mem::take(&mut t.error_kinds),
        sessions_moved: moved,
        held: filter_stat(&stack.edge, "state_held_on_primary_total"),
        surge_latency_us: t.latency.clone(),
        capacity: stack.options.primary_concurrency,
    }
}

/// The `q`-quantile of `values` by nearest rank (NaN if there are none).
fn nearest_rank(mut values: Vec<f64>, q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

fn lock(t: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// One session: a request per wake-up, one at a time, every `write_every`-th a write; every
/// answer checked against the writes it made. Returns its key and trail.
async fn session(
    client: HttpClient,
    edge: SocketAddr,
    key: String,
    write_every: u64,
    mut wake: mpsc::Receiver<()>,
    tally: Arc<Mutex<Tally>>,
    start: Instant,
) -> (String, Trail) {
    let headers = vec![("x-session-id".to_string(), key.clone())];
    let (mut n, mut writes) = (0u64, 0u64);
    let mut trail = Trail::new();
    while wake.recv().await.is_some() {
        n += 1;
        let write = n % write_every == 1 || write_every == 1;
        let (method, path) = if write {
            ("POST", format!("/cart/add?sku=sku-{}", n % 3))
        } else {
            ("GET", "/cart".to_string())
        };
        let sent_at = start.elapsed();
        let sent = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            loadgen::request_with(&client, method, edge, &path, None, &headers),
        )
        .await;
        let latency_us = sent.elapsed().as_micros() as u64;
        let outcome = match r {
            Ok(Ok((200, body))) => {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let seen = v["writes"].as_u64().unwrap_or(0);
                let by = v["served_by"].as_str().unwrap_or("").to_string();
                let expected = writes + u64::from(write);
                if seen < expected {
                    let mut t = lock(&tally);
                    t.stale_reads += 1;
                    if t.stale_examples.len() < 5 {
                        t.stale_examples.push(format!(
                            "{key}: {method} {path} served by {by} saw {seen} writes, {expected} made"
                        ));
                    }
                }
                if write {
                    writes = seen.max(expected);
                }
                trail.push((sent_at, by.clone()));
                Ok(by)
            }
            Ok(Ok((status, _))) => Err(format!("status {status}")),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("timeout".into()),
        };
        lock(&tally).add(Answer {
            second: sent_at.as_secs(),
            latency_us,
            outcome,
        });
    }
    (key, trail)
}

/// The primary's load, second by second: its own count of requests in it, integrated, over
/// each second, divided by `capacity`; and its own time per request served (ms).
async fn primary_load(
    primary: SocketAddr,
    capacity: usize,
    duration: Duration,
    start: Instant,
) -> Vec<(f64, f64)> {
    let client = loadgen::client();
    let read = async || -> Option<(Instant, u64, u64, u64)> {
        let (status, body) = loadgen::request_json(&client, "GET", primary, "/stats", None)
            .await
            .ok()?;
        let at = Instant::now();
        (status == 200).then_some(())?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        Some((
            at,
            v["in_system_us"].as_u64()?,
            v["served"].as_u64()?,
            v["service_us"].as_u64()?,
        ))
    };
    let mut loads = Vec::new();
    let mut last = read().await;
    let mut second = 1u64;
    while Duration::from_secs(second) <= duration {
        tokio::time::sleep_until(start + Duration::from_secs(second)).await;
        let now = read().await;
        let load = match (last, now) {
            (Some((t0, a, n0, s0)), Some((t1, b, n1, s1))) if t1 > t0 => (
                (b.saturating_sub(a)) as f64
                    / t1.duration_since(t0).as_micros() as f64
                    / capacity.max(1) as f64,
                s1.saturating_sub(s0) as f64 / 1e3 / n1.saturating_sub(n0).max(1) as f64,
            ),
            _ => (f64::NAN, f64::NAN),
        };
        loads.push(load);
        last = now;
        second += 1;
    }
    loads
}
