//! A closed-loop simulation of ATRE's controller: the filter's own code — the per-request
//! [`decide`], the workers' windows and [`BusyClock`]s, the lease holder's
//! [`RedirectController::tick`] with its [`RedirectPlan::next`] and [`CapacityEstimate`] —
//! against a queueing model of the primary and the shadow, in simulated time.
//!
//! What is modelled, and why each matters:
//!
//! * **Envoy workers**: requests are spread over `workers`, each with its own copy of the
//!   plan refreshed at its own tick (a different phase per worker), its own spreader and
//!   window; the lease holder (worker 0) merges the windows and recomputes the plan. A
//!   session's requests land on any worker — stale plans are where bounces come from.
//! * **Primary and shadow**: `servers` requests served at once, each taking a
//!   deterministic or exponential service time, the rest waiting in FIFO order. Load is
//!   measured the filter's way (in-flight time / capacity) and, independently, from the
//!   model's own in-system count.
//! * **Traffic**: Poisson arrivals at a rate profile; a share of requests carry one of
//!   `keys` sessions, busy or idle (a power law), which end and are replaced (churn).
//! * **Read-your-writes**: a session's write on the primary is acknowledged by the
//!   shadows a while later (the worker's tick, the relay); until then the filter holds the
//!   session on the primary, as `wasm/http.rs` does with the session table's answer. A
//!   write on the shadow, and one of a session so held, is acknowledged before its
//!   response returns (it is published at once).

use shadowmesh_filter::config::PluginConfig;
use shadowmesh_filter::control::{RedirectController, ShadowView, TickInput};
use shadowmesh_filter::decision::{
    RedirectDecision, Spreader, decide, plan_is_stale, session_point,
};
use shadowmesh_filter::load::BusyClock;
use shadowmesh_filter::plan::RedirectPlan;
use shadowmesh_filter::window::{ServiceWindow, Side};
use shadowmesh_wire::RedirectState;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// How long requests take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ServiceTime {
    /// Always this many ms.
    Fixed(f64),
    /// Exponentially distributed with this mean (ms).
    Exponential(f64),
}

impl ServiceTime {
    fn mean_ms(self) -> f64 {
        match self {
            ServiceTime::Fixed(ms) | ServiceTime::Exponential(ms) => ms,
        }
    }

    fn sample_us(self, rng: &mut fastrand::Rng) -> u64 {
        let ms = match self {
            ServiceTime::Fixed(ms) => ms,
            ServiceTime::Exponential(ms) => -ms * (1.0 - rng.f64()).ln(),
        };
        (ms * 1e3).round().max(1.0) as u64
    }
}

/// One run of the model.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Requests per second: calm, then the surge, then calm again (seconds each).
    pub calm_rps: f64,
    /// Rate during the surge.
    pub surge_rps: f64,
    /// Lengths of the three phases (s).
    pub phases_s: [f64; 3],
    /// Share of requests that carry a session key.
    pub session_share: f64,
    /// Sessions alive at any time.
    pub keys: usize,
    /// Power of the sessions' busyness: session `i` is weighted `(i+1)^-skew` (0: equal).
    pub skew: f64,
    /// Mean session lifetime (s); `None`: sessions last the whole run.
    pub lifetime_s: Option<f64>,
    /// Share of session requests that write state.
    pub write_share: f64,
    /// How long after a primary's write the shadows acknowledge it (ms, uniform range).
    pub ack_ms: (f64, f64),
    /// Primary: servers and service time.
    pub primary: (u32, ServiceTime),
    /// The primary's `max_in_flight` in the plugin configuration.
    pub primary_max_in_flight: u32,
    /// Shadow: servers and service time.
    pub shadow: (u32, ServiceTime),
    /// Envoy workers.
    pub workers: usize,
    /// The filter's tick (ms).
    pub tick_ms: u64,
    /// Seed of every random choice.
    pub seed: u64,
    /// How requests arrive.
    pub arrivals: Arrivals,
    /// When the controller lease moves to another worker (s): the new holder starts with a
    /// controller that knows nothing but the plan, and its first window is empty (the old
    /// holder took it).
    pub lease_moves_s: Vec<f64>,
    /// Chance that a worker's tick comes a tick late (a stalled event loop): it flushes
    /// two ticks' counts at once, and the lease holder's plan is a tick older.
    pub stall_share: f64,
    /// The load generator's own stalls (a busy host): when (s) and how long (ms). A
    /// stalled generator sends nothing, then every request it owes at once — as a
    /// `sleep_until` schedule catches up — so arrivals come in a gap and a burst.
    pub client_stalls: Vec<(f64, f64)>,
}

/// How requests arrive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrivals {
    /// At exact intervals, as the open-loop load generator of the real-Envoy tests sends:
    /// a fixed share of them in sessions, the sessions in turn, the Envoy workers in turn.
    Paced,
    /// A Poisson process, each request in a session by chance, a session and a worker
    /// picked at random: bursts by chance.
    Poisson,
}

impl Scenario {
    /// Whether nothing but the controller is random: paced arrivals, fixed service times,
    /// sessions that last. There a primary given exactly its share holds exactly its
    /// target; with Poisson arrivals or exponential service times its queue wanders by
    /// itself (even the best constant share sees seconds at 1.5× the target on 8 servers
    /// at 0.8), and sessions that end and begin land where chance puts them.
    pub fn is_smooth(&self) -> bool {
        self.arrivals == Arrivals::Paced
            && matches!(self.primary.1, ServiceTime::Fixed(_))
            && self.lifetime_s.is_none()
    }

    /// A primary of 8 × 20 ms (400 req/s) with the shipped thresholds, a surge of
    /// `surge_rps`, calm at 100 req/s, paced arrivals.
    pub fn standard(session_share: f64, keys: usize, surge_rps: f64, seed: u64) -> Scenario {
        Scenario {
            calm_rps: 100.0,
            surge_rps,
            phases_s: [4.0, 14.0, 6.0],
            session_share,
            keys,
            skew: 0.0,
            lifetime_s: None,
            write_share: 0.25,
            ack_ms: (20.0, 160.0),
            primary: (8, ServiceTime::Fixed(20.0)),
            primary_max_in_flight: 8,
            shadow: (32, ServiceTime::Fixed(20.0)),
            workers: 2,
            tick_ms: 100,
            seed,
            arrivals: Arrivals::Paced,
            lease_moves_s: Vec::new(),
            stall_share: 0.0,
            client_stalls: Vec::new(),
        }
    }

    /// Demand during the surge: the load the primary would carry alone, by the capacity
    /// it really has.
    pub fn surge_demand(&self) -> f64 {
        self.surge_rps * self.primary.1.mean_ms() / 1e3 / f64::from(self.primary.0)
    }

    fn rate_at(&self, t_s: f64) -> f64 {
        let [a, b, _] = self.phases_s;
        if t_s >= a && t_s < a + b {
            self.surge_rps
        } else {
            self.calm_rps
        }
    }

    fn duration_s(&self) -> f64 {
        self.phases_s.iter().sum()
    }

    /// The plugin configuration the filter runs with (the shipped thresholds).
    pub fn plugin(&self) -> PluginConfig {
        let json = format!(
            r#"{{"tick_ms":{},"services":[{{"name":"checkout",
                "primary":{{"cluster":"p","max_in_flight":{}}},
                "shadow":{{"cluster":"s","max_in_flight":{},"ready":true}},
                "session":{{"header":"x-session-id"}}}}]}}"#,
            self.tick_ms, self.primary_max_in_flight, self.shadow.0
        );
        PluginConfig::parse(json.as_bytes()).expect("the simulation's plugin configuration")
    }
}

/// One sample period's measurements.
#[derive(Debug, Clone, Copy, Default)]
pub struct Period {
    /// End of the period (s).
    pub end_s: f64,
    /// The primary's mean in-system count over the period / its real capacity.
    pub primary_load: f64,
    /// Share of the period's requests sent to the shadow.
    pub shadow_share: f64,
    /// Requests in the period.
    pub requests: u64,
}

/// What a run showed.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Every second.
    pub periods: Vec<Period>,
    /// When the controller entered and left redirection (s).
    pub transitions: Vec<(f64, RedirectState)>,
    /// Sessions that went back from the shadow to the primary while redirecting.
    pub bounces: Vec<String>,
    /// Requests the read-your-writes rule held on the primary.
    pub held: u64,
    /// Sessions that were served by the shadow at some point.
    pub sessions_moved: usize,
    /// Knees the capacity check reported for the primary.
    pub knees: Vec<f64>,
    /// The plan when the surge ended.
    pub plan_at_surge_end: RedirectPlan,
}

impl Outcome {
    /// The periods that lie wholly in `[from_s, to_s]`.
    pub fn between(&self, from_s: f64, to_s: f64) -> Vec<Period> {
        self.periods
            .iter()
            .filter(|p| p.end_s - PERIOD_S >= from_s - 1e-9 && p.end_s <= to_s + 1e-9)
            .copied()
            .collect()
    }
}

/// Length of a sample period (s).
pub const PERIOD_S: f64 = 1.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A worker's tick (worker index).
    Tick(usize),
    /// Request id completes service.
    Done(usize),
    /// The next arrival.
    Arrival,
    /// Close a sample period.
    Sample,
}

struct Cluster {
    servers: u32,
    service: ServiceTime,
    busy: u32,
    queue: VecDeque<usize>,
    /// ∫ in-system dt since the last sample (request·µs).
    in_system_us: u128,
    since_us: u64,
}

impl Cluster {
    fn new(servers: u32, service: ServiceTime) -> Cluster {
        Cluster {
            servers,
            service,
            busy: 0,
            queue: VecDeque::new(),
            in_system_us: 0,
            since_us: 0,
        }
    }

    fn in_system(&self) -> u64 {
        u64::from(self.busy) + self.queue.len() as u64
    }

    fn advance(&mut self, now: u64) {
        self.in_system_us += u128::from(self.in_system()) * u128::from(now - self.since_us);
        self.since_us = now;
    }
}

struct Request {
    session: Option<usize>,
    side: Side,
    worker: usize,
    start_us: u64,
    write: bool,
    held: bool,
}

struct Session {
    name: String,
    point: f64,
    weight: f64,
    /// Replicated from this time on (read-your-writes).
    acked_at_us: u64,
    /// The surge during which it was sent to the shadow, while it is there.
    on_shadow: Option<u64>,
    /// Whether the shadow ever served it.
    moved: bool,
    ends_at_us: u64,
    /// A browser: one request at a time, and the next — if its time came — is sent when
    /// the answer arrives (one, not every one it missed: a user waits, then clicks).
    busy: bool,
    waiting: bool,
}

struct Worker {
    plan: RedirectPlan,
    /// When it last read the plan (µs).
    plan_read_us: u64,
    spreader: Spreader,
    window: ServiceWindow,
    busy: [BusyClock; 2],
    flushed_at_us: u64,
}

struct Sim<'a> {
    sc: &'a Scenario,
    rng: fastrand::Rng,
    config: PluginConfig,
    shadow_view: ShadowView,
    clusters: [Cluster; 2],
    workers: Vec<Worker>,
    shared_window: ServiceWindow,
    shared_plan: RedirectPlan,
    controller: RedirectController,
    sessions: Vec<Session>,
    total_weight: f64,
    names: usize,
    requests: Vec<Request>,
    events: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
    period_requests: [u64; 2],
    out: Outcome,
    /// Paced: the share of session requests (error diffusion), the sessions' turns
    /// (stride scheduling: next pass, index) and the worker of the last request.
    session_credit: f64,
    turns: BinaryHeap<Reverse<(u64, usize)>>,
    next_worker: usize,
    lease_moves: usize,
    /// When the load generator meant to send its next request (µs).
    next_arrival_us: u64,
    /// The generator's stalls: `[start, end)` (µs), in order.
    client_stalls: Vec<(u64, u64)>,
}

impl Sim<'_> {
    fn push(&mut self, at: u64, e: Event) {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, e)));
    }

    fn new_session(&mut self, now: u64, weight: f64) -> Session {
        self.names += 1;
        let name = format!("s{}", self.names);
        let life = self.sc.lifetime_s;
        Session {
            point: session_point(name.as_bytes()),
            name,
            weight,
            acked_at_us: 0,
            on_shadow: None,
            moved: false,
            ends_at_us: life.map_or(u64::MAX, |l| {
                now + (-l * 1e6 * (1.0 - self.rng.f64()).ln()) as u64
            }),
            busy: false,
            waiting: false,
        }
    }

    /// The session a request belongs to, if it has one.
    fn pick_session(&mut self, now: u64) -> Option<usize> {
        if self.sc.keys == 0 {
            return None;
        }
        let i = match self.sc.arrivals {
            // The load generator's way: a fixed share of requests in sessions, the sessions
            // in turn, each as often as its weight says (stride scheduling).
            Arrivals::Paced => {
                self.session_credit += self.sc.session_share;
                if self.session_credit < 1.0 {
                    return None;
                }
                self.session_credit -= 1.0;
                let Reverse((pass, i)) = self.turns.pop()?;
                let stride = (1e6 / self.sessions[i].weight) as u64;
                self.turns.push(Reverse((pass + stride.max(1), i)));
                i
            }
            Arrivals::Poisson => {
                if self.rng.f64() >= self.sc.session_share {
                    return None;
                }
                let mut pick = self.rng.f64() * self.total_weight;
                let mut i = 0;
                while i + 1 < self.sessions.len() && pick >= self.sessions[i].weight {
                    pick -= self.sessions[i].weight;
                    i += 1;
                }
                i
            }
        };
        if self.sessions[i].ends_at_us <= now && !self.sessions[i].busy {
            // The session ended; a new one takes its place (and its busyness).
            let weight = self.sessions[i].weight;
            self.sessions[i] = self.new_session(now, weight);
        }
        Some(i)
    }

    /// One request leaves the client now: the filter decides, the cluster serves.
    fn send(&mut self, now: u64, session: Option<usize>) {
        let worker = match self.sc.arrivals {
            Arrivals::Paced => {
                self.next_worker = (self.next_worker + 1) % self.sc.workers;
                self.next_worker
            }
            Arrivals::Poisson => self.rng.usize(..self.sc.workers),
        };
        let point = session.map(|i| self.sessions[i].point);
        let w = &mut self.workers[worker];
        // A worker whose timer ran late reads the plan again before deciding.
        if plan_is_stale(w.plan_read_us / 1_000, now / 1_000, self.sc.tick_ms) {
            w.plan = self.shared_plan;
            w.plan_read_us = now;
        }
        let mut decision = decide(
            &w.plan,
            now / 1_000,
            self.shadow_view.ready,
            point,
            &mut w.spreader,
        );
        let mut held = false;
        if let Some(i) = session {
            self.sessions[i].busy = true;
            // Read-your-writes, as the session table answers it.
            if decision == RedirectDecision::Shadow && now < self.sessions[i].acked_at_us {
                decision = RedirectDecision::Primary;
                held = true;
                self.out.held += 1;
            }
        }
        let side = match decision {
            RedirectDecision::Shadow => Side::Shadow,
            _ => Side::Primary,
        };
        if let Some(i) = session {
            let (state, surge) = (self.shared_plan.state, self.shared_plan.surge);
            let pins = w.plan.pins;
            let s = &mut self.sessions[i];
            match (side, s.on_shadow) {
                (Side::Shadow, None) => {
                    s.on_shadow = Some(surge);
                    s.moved = true;
                }
                (Side::Primary, Some(at)) => {
                    if state == RedirectState::Redirecting && at == surge {
                        self.out.bounces.push(format!(
                            "{} at {:.2} s (point {:.3}, worker {worker}, held {held}, its pins {pins:?})",
                            s.name,
                            now as f64 / 1e6,
                            s.point,
                        ));
                    }
                    s.on_shadow = None;
                }
                _ => {}
            }
        }
        w.window.count_route(point, side, held);
        w.busy[side.index()].start(now * 1_000);
        self.period_requests[side.index()] += 1;
        let write = session.is_some() && self.rng.f64() < self.sc.write_share;
        let id = self.requests.len();
        self.requests.push(Request {
            session,
            side,
            worker,
            start_us: now,
            write,
            held,
        });
        let c = &mut self.clusters[side.index()];
        if c.busy < c.servers {
            c.busy += 1;
            let t = c.service.sample_us(&mut self.rng);
            self.push(now + t, Event::Done(id));
        } else {
            c.queue.push_back(id);
        }
    }

    fn arrival(&mut self, now: u64) {
        let meant = self.next_arrival_us;
        let rate = self.sc.rate_at(meant as f64 / 1e6);
        let gap_s = match self.sc.arrivals {
            Arrivals::Paced => 1.0 / rate,
            Arrivals::Poisson => -(1.0 - self.rng.f64()).ln() / rate,
        };
        self.next_arrival_us = meant + (gap_s * 1e6) as u64 + 1;
        // A request meant for a stall leaves when the stall ends.
        let at = match self
            .client_stalls
            .iter()
            .find(|(start, end)| (*start..*end).contains(&self.next_arrival_us))
        {
            Some((_, end)) => *end,
            None => self.next_arrival_us,
        };
        self.push(at.max(now), Event::Arrival);
        let session = self.pick_session(now);
        match session {
            Some(i) if self.sessions[i].busy => self.sessions[i].waiting = true,
            _ => self.send(now, session),
        }
    }

    fn done(&mut self, now: u64, id: usize) {
        let (side, worker, start, session, write, held) = {
            let r = &self.requests[id];
            (r.side, r.worker, r.start_us, r.session, r.write, r.held)
        };
        let c = &mut self.clusters[side.index()];
        c.busy -= 1;
        if let Some(next) = c.queue.pop_front() {
            c.busy += 1;
            let t = c.service.sample_us(&mut self.rng);
            self.push(now + t, Event::Done(next));
        }
        let w = &mut self.workers[worker];
        w.busy[side.index()].finish(now * 1_000);
        w.window.side_mut(side).latency.record(now - start);
        if let Some(i) = session {
            if write {
                let (lo, hi) = self.sc.ack_ms;
                let lag_ms = match (side, held) {
                    // Published at once (a shadow's write, or one of a session held back
                    // from it); acknowledged before the response returns.
                    (Side::Shadow, _) | (Side::Primary, true) => 0.0,
                    (Side::Primary, false) => lo + self.rng.f64() * (hi - lo),
                };
                let at = now + (lag_ms * 1e3) as u64;
                let s = &mut self.sessions[i];
                s.acked_at_us = s.acked_at_us.max(at);
            }
            self.sessions[i].busy = false;
            if std::mem::take(&mut self.sessions[i].waiting) {
                self.send(now, Some(i));
            }
        }
    }

    fn tick(&mut self, now: u64, k: usize) {
        self.push(now + self.sc.tick_ms * 1_000, Event::Tick(k));
        if self.sc.stall_share > 0.0 && self.rng.f64() < self.sc.stall_share {
            return;
        }
        let w = &mut self.workers[k];
        let busy = [
            w.busy[0].take_us(now * 1_000),
            w.busy[1].take_us(now * 1_000),
        ];
        let span_ms = (now - w.flushed_at_us) / 1_000;
        w.flushed_at_us = now;
        w.window.close_span(k as u64, span_ms, busy);
        let local = std::mem::take(&mut w.window);
        self.shared_window.merge(&local);
        if k == 0
            && let Some(&at) = self.sc.lease_moves_s.get(self.lease_moves)
            && now as f64 / 1e6 >= at
        {
            // The old holder took the window a moment ago; the new one knows nothing.
            self.lease_moves += 1;
            self.shared_window = ServiceWindow::default();
            self.controller = RedirectController::default();
        }
        if k == 0 {
            let old = self.shared_plan;
            let in_flight = [self.clusters[0].in_system(), self.clusters[1].in_system()];

            let svc = &self.config.services[0];
            self.shared_plan = self.controller.tick(
                &self.config,
                svc,
                &old,
                TickInput {
                    now_ms: now / 1_000,
                    window: std::mem::take(&mut self.shared_window),
                    in_flight,
                    shadow: &self.shadow_view,
                },
            );
            if self.shared_plan.state != old.state {
                self.out
                    .transitions
                    .push((now as f64 / 1e6, self.shared_plan.state));
            }
            if std::env::var_os("SIM_TRACE").is_some() {
                eprintln!(
                    "{:7.2} {:?} in-system {:3} | {}",
                    now as f64 / 1e6,
                    self.shared_plan.state,
                    self.clusters[0].in_system(),
                    self.shared_plan.tick_line()
                );
            }
            if let Some(f) = self.controller.take_findings()[0] {
                self.out.knees.push(f.knee);
            }
        }
        self.workers[k].plan = self.shared_plan;
        self.workers[k].plan_read_us = now;
    }

    fn sample(&mut self, now: u64) {
        self.push(now + (PERIOD_S * 1e6) as u64, Event::Sample);
        let busy = self.clusters[0].in_system_us as f64;
        self.clusters[0].in_system_us = 0;
        self.clusters[1].in_system_us = 0;
        let [p, s] = std::mem::take(&mut self.period_requests);
        let n = p + s;
        self.out.periods.push(Period {
            end_s: now as f64 / 1e6,
            primary_load: busy / (PERIOD_S * 1e6) / f64::from(self.sc.primary.0),
            shadow_share: if n == 0 { 0.0 } else { s as f64 / n as f64 },
            requests: n,
        });
    }
}

/// Runs `sc` to its end.
pub fn run(sc: &Scenario) -> Outcome {
    let mut sim = Sim {
        sc,
        rng: fastrand::Rng::with_seed(sc.seed),
        config: sc.plugin(),
        shadow_view: ShadowView {
            cluster: "s".into(),
            ready: true,
            max_in_flight: sc.shadow.0,
        },
        clusters: [
            Cluster::new(sc.primary.0, sc.primary.1),
            Cluster::new(sc.shadow.0, sc.shadow.1),
        ],
        workers: (0..sc.workers)
            .map(|_| Worker {
                plan: RedirectPlan::default(),
                plan_read_us: 0,
                spreader: Spreader::default(),
                window: ServiceWindow::default(),
                busy: [BusyClock::default(); 2],
                flushed_at_us: 0,
            })
            .collect(),
        shared_window: ServiceWindow::default(),
        shared_plan: RedirectPlan::default(),
        controller: RedirectController::default(),
        sessions: Vec::new(),
        total_weight: 0.0,
        names: 0,
        requests: Vec::new(),
        events: BinaryHeap::new(),
        seq: 0,
        period_requests: [0, 0],
        out: Outcome::default(),
        session_credit: 0.0,
        turns: BinaryHeap::new(),
        next_worker: 0,
        lease_moves: 0,
        next_arrival_us: 0,
        client_stalls: sc
            .client_stalls
            .iter()
            .map(|(at_s, ms)| ((at_s * 1e6) as u64, ((at_s + ms / 1e3) * 1e6) as u64))
            .collect(),
    };
    for i in 0..sc.keys {
        let s = sim.new_session(0, ((i + 1) as f64).powf(-sc.skew));
        sim.sessions.push(s);
    }
    sim.total_weight = sim.sessions.iter().map(|s| s.weight).sum();
    for i in 0..sc.keys {
        sim.turns.push(Reverse((i as u64, i)));
    }
    let tick_us = sc.tick_ms * 1_000;
    for w in 0..sc.workers {
        // Each worker's timer has its own phase.
        let phase = tick_us * (w as u64 + 1) / (sc.workers as u64 + 1);
        sim.push(phase, Event::Tick(w));
    }
    sim.push(0, Event::Arrival);
    sim.push((PERIOD_S * 1e6) as u64, Event::Sample);
    let end_us = (sc.duration_s() * 1e6) as u64;
    let surge_end_us = ((sc.phases_s[0] + sc.phases_s[1]) * 1e6) as u64;
    let mut surge_ended = false;
    while let Some(Reverse((now, _, event))) = sim.events.pop() {
        if now > end_us {
            break;
        }
        for c in sim.clusters.iter_mut() {
            c.advance(now);
        }
        if !surge_ended && now >= surge_end_us {
            surge_ended = true;
            sim.out.plan_at_surge_end = sim.shared_plan;
        }
        match event {
            Event::Arrival => sim.arrival(now),
            Event::Done(id) => sim.done(now, id),
            Event::Tick(k) => sim.tick(now, k),
            Event::Sample => sim.sample(now),
        }
    }
    sim.out.sessions_moved = sim.sessions.iter().filter(|s| s.moved).count();
    sim.out
}

/// The `q`-quantile of `values` (nearest rank).
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}
