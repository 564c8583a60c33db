//! The redirect plan: how much of a service's traffic goes to its shadow, recomputed once
//! per tick by one elected worker and read by every worker.
//!
//! ## Why "excess share" and not "everything above a threshold"
//!
//! The naive rule — *primary load above threshold ⇒ send requests to the shadow* — moves
//! **all** traffic the moment the threshold is crossed. The primary then idles, its load
//! collapses below the threshold, all traffic swings back, and the system oscillates at
//! the tick frequency while the shadow (sized for the excess, not the whole) is flooded.
//!
//! Instead the plan estimates the *demand* `D`: the load the primary would carry alone.
//! With a share `s` of the requests actually sent to the shadow — **measured** over the
//! last tick, whatever the plan meant to send — the primary sees `L = D·(1−s)`, so
//! `D = L/(1−s)`. The share that keeps the primary at its `target` is `1 − target/D`:
//! exactly the excess. The share moves towards it with a gain below one, which damps
//! measurement noise, and it is capped by how much more the shadow can take
//! (`shadow_max`).
//!
//! `L/(1−s)` trails a step: the load it reads is last tick's, and a queue that built up
//! is counted as demand until it drains. Once the primary's unloaded latency is known, the
//! plan also reads the *offered* demand — arrivals × unloaded latency / capacity, which
//! moves with the arrivals at once and holds no backlog — times an *inflation* learned
//! from the two (how much more the primary carries than its arrivals' unloaded work:
//! queueing, a slowdown under load). The demand is the larger of `offered × inflation`
//! and `L/(1−s)`: a burst the inflation has not caught up with still shows in `L`.
//!
//! ## Sessions and session-less requests
//!
//! A request with a session key goes to the shadow when its key's point
//! ([`crate::decision::session_point`]) lies below the plan's [`SessionPins`] threshold,
//! which only rises during a surge: a session sent to the shadow stays there until the
//! surge ends. Session-less requests are spread at [`RedirectPlan::plain_share`]. The two
//! are set together so that *all* traffic on the shadow is the excess, for any mix:
//!
//! * sessions carry their proportional part of the excess: the threshold is the one under
//!   which that share of the session *traffic* lies ([`SessionMix::threshold_for`] — keys
//!   are few or many, busy or idle), chosen on a demand smoothed over about a second
//!   (`steady_demand`: offered demand × an inflation learned only once the onset's
//!   backlog drained, each tick first filtered so that a load generator's stall and the
//!   burst that catches up on it count for nothing) because it cannot be taken back. A
//!   new threshold is announced [`PIN_LEAD_TICKS`] ticks ahead and takes effect at one instant on every worker, and a
//!   pending one is never replaced, so no session is routed by two thresholds at once;
//! * session-less requests carry the rest, moment to moment: what the sessions below the
//!   threshold do not carry, less those held on the primary by read-your-writes.
//!
//! Estimating demand from the plan's *intent* instead (the session-less share alone, as the
//! first version did) made session-heavy traffic flap: with every request in a session the
//! session-less share fell to zero, demand looked low, the plan left redirection and every
//! session returned to the primary at once.
//!
//! ## Hysteresis
//!
//! Redirection starts only when the primary reaches `enter`, and ends only after the demand
//! has stayed under `exit` for `exit_hold_ticks` ticks. In between, the share follows demand
//! smoothly, down to 0.

use crate::config::ServiceConfig;
use crate::load::LoadScore;
use crate::window::{RouteCounts, SPREAD_SLICES, SessionSpread};
use serde::{Deserialize, Serialize};
use shadowmesh_wire::RedirectState;

/// The shared, per-service plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RedirectPlan {
    /// Normal or redirecting.
    pub state: RedirectState,
    /// Share of all the service's traffic meant for the shadow: the excess, 0..=`max_share`.
    pub share: f64,
    /// Share of session-less requests sent to the shadow: what the pinned sessions do not
    /// carry of `share`. Takes effect when a worker reads the plan.
    pub plain_share: f64,
    /// Which sessions the shadow serves; a change takes effect on every worker at once.
    pub pins: SessionPins,
    /// Counts surges; a new surge re-pins sessions from scratch.
    pub surge: u64,
    /// Consecutive ticks the demand has been below `exit`.
    pub below_exit_ticks: u32,
    /// Estimated demand (load the primary would carry alone) over the last tick: the
    /// offered demand × `inflation` once the primary's unloaded latency is known,
    /// `L/(1−s)` for the share `s` that really left it until then.
    pub demand: f64,
    /// The demand sessions are pinned on: the offered demand (arrivals × unloaded latency /
    /// capacity — no backlog in it) × `steady_inflation`, filtered tick by tick
    /// ([`RecentTicks`]) and smoothed over [`STEADY_DEMAND_MS`]; during the onset, the
    /// highest the filtered demand has been since the first pins.
    pub steady_demand: f64,
    /// Share of the requests that went to the shadow over the last tick (measured).
    pub measured_share: f64,
    /// How much more load the primary carries than its arrivals' unloaded work would
    /// cause (1: neither queue nor slowdown), over [`INFLATION_MS`]; `demand` is the
    /// offered demand times it.
    pub inflation: Inflation,
    /// The same over [`STEADY_INFLATION_MS`] of this surge, from [`SETTLE_MS`] after its
    /// onset (until the first tick without a backlog) ended, each tick counting up to
    /// [`BACKLOG_INFLATION`] × its offered demand: what a queue that wanders at the target,
    /// or a primary slower under load, adds to the offered demand the sessions are pinned
    /// for.
    pub steady_inflation: Inflation,
    /// When this surge began (ms).
    pub entered_ms: u64,
    /// The surge's onset: from the entry until the first tick without a backlog.
    pub onset: bool,
    /// When the onset ended (ms).
    pub onset_ended_ms: u64,
    /// The last ticks' offered demand × `steady_inflation` (a tick without arrivals
    /// counts 0), from the entry on during a surge's onset; `steady_demand` follows their
    /// lower median.
    pub recent_pin_basis: RecentTicks,

    /// Primary load score at the last update.
    pub primary_load: f64,
    /// Shadow load score at the last update.
    pub shadow_load: f64,
    /// What the lease holder learned of the primary that a worker taking the lease over
    /// starts from: its unloaded latency (ms, 0: not known yet)…
    pub unloaded_latency_ms: f64,
    /// …and the concurrency it queues above, where below `max_in_flight` (0: none).
    pub knee: f64,
}

/// A ratio of two decayed sums — the load the primary carried to the load its arrivals
/// offered — so that each tick counts by its traffic: the mean of per-tick ratios would
/// be biased up by a quiet tick's few requests (the mean of `x / y` exceeds `x̄ / ȳ`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Inflation {
    /// Decayed sum of what the primary's load said the demand was.
    pub loaded: f64,
    /// Decayed sum of the offered demand.
    pub offered: f64,
}

impl Inflation {
    /// The ratio; 1 before anything was counted.
    pub fn get(&self) -> f64 {
        if self.offered > 0.0 && self.loaded.is_finite() {
            self.loaded / self.offered
        } else {
            1.0
        }
    }

    /// Adds one tick, the past keeping `1 − alpha` of its weight.
    fn add(&mut self, loaded: f64, offered: f64, alpha: f64) {
        if !(loaded.is_finite() && offered.is_finite()) {
            return;
        }
        let keep = (1.0 - alpha).clamp(0.0, 1.0);
        self.loaded = keep * self.loaded + loaded;
        self.offered = keep * self.offered + offered;
    }
}

/// The sessions pinned to the shadow: those whose point lies below a threshold.
///
/// Workers read the plan once per tick, at moments of their own, so a threshold that took
/// effect when each worker read it would for up to a tick send a session to the shadow
/// from one worker and to the primary from another. Instead a change is announced
/// [`PIN_LEAD_TICKS`] ticks ahead and takes effect at `from_ms` on every worker's clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionPins {
    /// The threshold before `from_ms`.
    pub before: f64,
    /// The threshold from `from_ms` on.
    pub after: f64,
    /// When `after` takes over (ms, Envoy's clock).
    pub from_ms: u64,
}

/// How many ticks ahead a change of the pinned sessions is announced: every worker reads
/// the plan at least once a tick, and one tick more covers a late timer.
pub const PIN_LEAD_TICKS: u64 = 2;

impl SessionPins {
    /// The threshold in force at `now_ms`.
    pub fn at(&self, now_ms: u64) -> f64 {
        if now_ms >= self.from_ms {
            self.after
        } else {
            self.before
        }
    }

    /// Whether a change is announced and not in force yet.
    pub fn pending(&self, now_ms: u64) -> bool {
        now_ms < self.from_ms
    }

    /// Moves the threshold to `threshold` from `lead_ms` after `now_ms` — unless a change
    /// is still pending: it is never replaced (a worker that read it and not its
    /// replacement would switch to it at its instant while others switch to the new one,
    /// and a session between the two would go to the shadow from one worker and to the
    /// primary from the other). Returns whether the change was announced.
    fn set(&mut self, threshold: f64, now_ms: u64, lead_ms: u64) -> bool {
        if threshold == self.after || self.pending(now_ms) {
            return false;
        }
        self.before = self.after;
        self.after = threshold;
        self.from_ms = now_ms.saturating_add(lead_ms);
        true
    }
}

/// Time constant of [`RedirectPlan::steady_demand`]: long enough that its noise, which
/// a rising threshold keeps, stays small; short enough that sessions take their part of a
/// surge within a second.
pub const STEADY_DEMAND_MS: f64 = 1_000.0;

/// More sessions are pinned only when the ones pinned carry this much less of the session
/// traffic than the excess asks for: the threshold keeps every rise, so one that followed
/// the noise of its estimates (the demand's, the spread's) would creep up through a long
/// surge. What the slack leaves, session-less requests carry (where every request has a
/// session, the primary runs up to 0.02 × demand above its target instead).
const PIN_SLACK: f64 = 0.02;

/// Share of the excess the surge's first pins are for: they rest on a tick or two of
/// arrivals (±13% at 600 requests a second) and an unloaded latency learned to a few per
/// cent, and a pinned session cannot be taken back: pinning too few costs a second, too
/// many the whole surge. The rest follows on the steady demand within a second.
const ENTRY_PIN_FRACTION: f64 = 0.8;

/// The last [`RECENT_TICKS`] values of a per-tick quantity, and their lower median: a
/// filter that lets a run of ticks move it only once it is most of them. A load generator
/// that stalls sends nothing for a few ticks and then, in one or two, everything it owes
/// (a `sleep_until` schedule catching up); an average of any span, or the highest of one,
/// keeps the burst of a gap whose start it no longer sees — and a pinned session cannot
/// be taken back. Zeros and a burst of up to two ticks leave the median where it was.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecentTicks {
    /// Oldest first; only the last `len` are filled.
    pub values: [f64; RECENT_TICKS],
    /// How many are filled.
    pub len: usize,
}

/// How many ticks [`RecentTicks`] keeps.
pub const RECENT_TICKS: usize = 5;

impl RecentTicks {
    /// Only `v`: a surge's ticks start at its entry.
    fn starting_with(v: f64) -> RecentTicks {
        let mut r = RecentTicks::default();
        r.push(v);
        r
    }

    fn push(&mut self, v: f64) {
        self.values.rotate_left(1);
        self.values[RECENT_TICKS - 1] = v;
        self.len = (self.len + 1).min(RECENT_TICKS);
    }

    /// The median of those filled, the lower of the middle two where they are even;
    /// 0 where none is.
    fn lower_median(&self) -> f64 {
        let mut v = self.values;
        let filled = &mut v[RECENT_TICKS - self.len.min(RECENT_TICKS)..];
        if filled.is_empty() {
            return 0.0;
        }
        filled.sort_by(f64::total_cmp);
        filled[(filled.len() - 1) / 2]
    }
}

/// Session requests the spread starts from, evenly over the slices (a prior): few requests
/// seen among many keys — the calm before a surge — say little of how the keys' traffic
/// spreads, and a threshold chosen on their noise would be kept for the surge; where the
/// keys are few and busy, their counts soon outweigh it.
const SPREAD_PRIOR: f64 = 128.0;

/// Time constant of the session mix ([`SessionMix`]).
pub const SESSION_MIX_MS: f64 = 3_000.0;

/// Time constant of [`RedirectPlan::inflation`]: a queue's bursts — which a tick's load
/// shows many times over, since a queue only grows or drains — average out, and a backlog
/// still drains within a second or two.
pub const INFLATION_MS: f64 = 500.0;

/// The first this long after a surge's onset (the backlog's tail drains) teaches
/// [`RedirectPlan::steady_inflation`] nothing.
const SETTLE_MS: u64 = 2_000;

/// Time constant of [`RedirectPlan::steady_inflation`].
pub const STEADY_INFLATION_MS: f64 = 3_000.0;

/// An inflation this high is a backlog (a queue a third longer than the servers), not the
/// ordinary wobble of a queue at the target.
const BACKLOG_INFLATION: f64 = 4.0 / 3.0;

/// The weight of a tick of `elapsed_ms` in an average over `time_constant_ms`.
pub(crate) fn smoothing(elapsed_ms: f64, time_constant_ms: f64) -> f64 {
    1.0 - (-elapsed_ms.max(0.0) / time_constant_ms).exp()
}

/// Below this share left on the primary, its load says little about the demand.
const MIN_PRIMARY_SHARE: f64 = 0.05;

/// The controller's smoothed picture of the service's session traffic: how much of it has
/// a session key, how it spreads over the session-point line, and how much of it
/// read-your-writes holds on the primary.
///
/// Counts decay by age (each request counts alike, whatever tick it came in), so a quiet
/// tick's few requests weigh no more than a busy tick's many.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionMix {
    /// Requests, with a session, and of those held on the primary (decayed counts).
    requests: f64,
    with_session: f64,
    held_requests: f64,
    /// Session requests per slice (decayed counts).
    spread: [f64; SPREAD_SLICES],
    fraction: f64,
    held: f64,
}

impl Default for SessionMix {
    fn default() -> Self {
        SessionMix {
            requests: 0.0,
            with_session: 0.0,
            held_requests: 0.0,
            spread: [0.0; SPREAD_SLICES],
            fraction: 0.0,
            held: 0.0,
        }
    }
}

impl SessionMix {
    /// Takes in one tick's counts; what came before keeps `1 − alpha` of its weight.
    pub fn observe(&mut self, routed: &RouteCounts, spread: &SessionSpread, alpha: f64) {
        let keep = (1.0 - alpha).clamp(0.0, 1.0);
        self.requests = keep * self.requests + routed.total() as f64;
        self.with_session = keep * self.with_session + routed.with_session() as f64;
        self.held_requests = keep * self.held_requests + routed.held as f64;
        for (decayed, count) in self.spread.iter_mut().zip(spread.counts()) {
            *decayed = keep * *decayed + *count as f64;
        }
        self.fraction = if self.requests > 0.0 {
            (self.with_session / self.requests).min(1.0)
        } else {
            0.0
        };
        self.held = if self.with_session > 0.0 {
            (self.held_requests / self.with_session).min(1.0)
        } else {
            0.0
        };
    }

    fn spread_total(&self) -> f64 {
        self.spread.iter().sum::<f64>() + SPREAD_PRIOR
    }

    /// Session requests counted in a slice, with the prior's even share.
    fn slice(&self, i: usize) -> f64 {
        self.spread[i] + SPREAD_PRIOR / SPREAD_SLICES as f64
    }

    /// Share of requests that carry a session key.
    pub fn fraction(&self) -> f64 {
        self.fraction
    }

    /// Share of session requests held on the primary by read-your-writes.
    pub fn held(&self) -> f64 {
        self.held
    }

    /// Share of session requests whose point lies below `threshold` (slices cut by the
    /// threshold count in proportion; [`SPREAD_PRIOR`] requests spread evenly count too).
    pub fn below(&self, threshold: f64) -> f64 {
        let t = threshold.clamp(0.0, 1.0);
        let total = self.spread_total();
        let width = 1.0 / SPREAD_SLICES as f64;
        let mut sum = 0.0;
        for i in 0..SPREAD_SLICES {
            let count = self.slice(i);
            let lo = i as f64 * width;
            if t >= lo + width {
                sum += count;
            } else if t > lo {
                sum += count * (t - lo) / width;
            }
        }
        (sum / total).min(1.0)
    }

    /// The slice edge under which the share of session requests is nearest to `share`
    /// (the lowest such edge: the fewest sessions, and new ones are pinned in proportion),
    /// among the edges under which at most `max_share` of it lies: a busy session that
    /// alone carries more than `max_share` is never pinned.
    pub fn threshold_for(&self, share: f64, max_share: f64) -> f64 {
        let total = self.spread_total();
        // (edge, miss) for the empty threshold and each slice's upper edge.
        let mut edges = Vec::with_capacity(SPREAD_SLICES + 1);
        edges.push((0.0, share.abs()));
        let mut cum = 0.0;
        for i in 0..SPREAD_SLICES {
            cum += self.slice(i) / total;
            if cum > max_share + 1e-9 {
                break;
            }
            edges.push(((i + 1) as f64 / SPREAD_SLICES as f64, (cum - share).abs()));
        }
        let best = edges
            .iter()
            .map(|(_, miss)| *miss)
            .fold(f64::INFINITY, f64::min);
        // The lowest edge about as near as the nearest (the prior makes no stretch quite
        // flat).
        edges
            .iter()
            .find(|(_, miss)| *miss <= best + EDGE_TOLERANCE)
            .map_or(0.0, |(edge, _)| *edge)
    }
}

/// Edges whose share of session traffic misses the wanted one by at most this more than
/// the nearest edge's count as near.
const EDGE_TOLERANCE: f64 = 0.005;

/// What the plan update sees each tick.
#[derive(Debug, Clone, Copy)]
pub struct PlanInputs<'a> {
    /// Primary load over the last tick.
    pub primary: LoadScore,
    /// Shadow load over the last tick.
    pub shadow: LoadScore,
    /// Whether the shadow is ready.
    pub shadow_ready: bool,
    /// Where the last tick's requests actually went.
    pub routed: RouteCounts,
    /// The service's session traffic, smoothed.
    pub sessions: &'a SessionMix,
    /// Now (ms, Envoy's clock).
    pub now_ms: u64,
    /// Length of the last tick (ms).
    pub elapsed_ms: f64,
    /// The configured tick (ms): pin changes are announced [`PIN_LEAD_TICKS`] of it ahead.
    pub tick_ms: u64,
    /// The demand the arrivals offer: requests per ms × the primary's unloaded latency /
    /// its capacity, once the unloaded latency is known. Unlike `L/(1−s)` it does not
    /// count a backlog — the queue a surge builds before sessions move is the past, not
    /// demand, and a pinned session cannot be taken back — nor bursts of a queue.
    pub offered: Option<f64>,
    /// The share of requests that went to the shadow (each worker's over its own span).
    pub measured_share: f64,
}

impl RedirectPlan {
    /// The plan for the next tick.
    pub fn next(&self, input: PlanInputs<'_>, svc: &ServiceConfig) -> RedirectPlan {
        let t = &svc.thresholds;
        let mut plan = *self;
        let lead_ms = PIN_LEAD_TICKS * input.tick_ms;
        if input.routed.total() == 0 && input.primary.0 <= 0.0 {
            // A tick that saw nothing — the window went to the worker that held the lease a
            // moment ago, or the service is idle — teaches nothing; an idle service still
            // leaves redirection in time.
            plan.demand = 0.0;
            plan.primary_load = 0.0;
            plan.measured_share = 0.0;
            if self.state == RedirectState::Redirecting {
                plan.below_exit_ticks += 1;
                if plan.below_exit_ticks >= t.exit_hold_ticks {
                    plan.leave(input.now_ms, lead_ms);
                }
            }
            return plan;
        }
        let measured = input.measured_share;
        // What the primary's load says: L/(1−s), for the share that really left it.
        let loaded = input.primary.0 / (1.0 - measured).max(MIN_PRIMARY_SHARE);
        let (demand, pin_basis) = match input.offered {
            Some(offered) => {
                // How much more load the primary carries than the arrivals' unloaded work:
                // 1 without queue or slowdown. Only a tick in which something arrived and
                // the primary served some of it says.
                if offered > 0.0 && input.routed.to_shadow() < input.routed.total() {
                    let current = self.inflation.get();
                    if current >= BACKLOG_INFLATION && loaded / offered < current / 2.0 {
                        // A backlog that drained is gone at once: shedding on for its
                        // memory would leave the primary under its target for a second.
                        plan.inflation = Inflation { loaded, offered };
                    } else {
                        let alpha = smoothing(input.elapsed_ms, INFLATION_MS);
                        plan.inflation.add(loaded, offered, alpha);
                    }
                    let settled = self.state == RedirectState::Redirecting
                        && !self.onset
                        && input.now_ms >= self.onset_ended_ms.saturating_add(SETTLE_MS);
                    // The onset's backlog says nothing of the steady state (and while
                    // clients wait on it, their arrivals say too little of the demand);
                    // later, a queue's bursts are part of it, but a tick counts only up to
                    // a backlog's bound: pins keep every rise, so a burst must not buy any.
                    if settled {
                        let alpha = smoothing(input.elapsed_ms, STEADY_INFLATION_MS);
                        let counted = loaded.min(BACKLOG_INFLATION * offered);
                        plan.steady_inflation.add(counted, offered, alpha);
                    }
                }
                (
                    // A burst the smoothed inflation has not caught up with yet shows in
                    // this tick's load: shed for it now (session-less requests come back).
                    (offered * plan.inflation.get()).max(loaded),
                    offered * plan.steady_inflation.get(),
                )
            }
            None => (loaded, loaded),
        };
        plan.demand = demand;
        plan.measured_share = measured;
        plan.primary_load = input.primary.0;
        plan.shadow_load = input.shadow.0;
        // The surge's first pins are announced a tick after the entry (the tick that
        // entered straddled the onset), on the lower of that tick's demand and the
        // entry's: a stall's catch-up burst in either is not counted.
        let first_pins = self.state == RedirectState::Redirecting
            && self.pins.after == 0.0
            && !self.pins.pending(input.now_ms);
        // While the onset's backlog lasts, clients that wait on it send less than they will:
        // what they do send is a floor of the demand, to follow at once. The onset ends
        // with the first tick without a backlog (a later burst's is noise, not a floor).
        let backlogged = input
            .offered
            .is_some_and(|o| loaded >= BACKLOG_INFLATION * o);
        plan.onset = self.onset && backlogged;
        if self.onset && !plan.onset {
            plan.onset_ended_ms = input.now_ms;
        }
        plan.recent_pin_basis.push(pin_basis);
        let filtered = plan.recent_pin_basis.lower_median();
        plan.steady_demand = if first_pins {
            filtered
        } else if plan.onset {
            // The highest it has been: what clients waiting on the backlog send is a floor.
            self.steady_demand.max(filtered)
        } else {
            self.steady_demand
                + smoothing(input.elapsed_ms, STEADY_DEMAND_MS) * (filtered - self.steady_demand)
        };

        match self.state {
            RedirectState::Normal => {
                // Sessions go back once the release can be announced (not while the last
                // raise of the surge is still pending).
                if self.pins.after > 0.0 {
                    plan.pins.set(0.0, input.now_ms, lead_ms);
                }
                if input.primary.0 >= t.enter && input.shadow_ready {
                    plan.state = RedirectState::Redirecting;
                    plan.surge += 1;
                    plan.below_exit_ticks = 0;
                    plan.entered_ms = input.now_ms;
                    plan.onset = true;
                    plan.steady_inflation = Inflation::default();
                    // Enter with the full excess at once: the surge is already here. The
                    // steady estimate trailed the onset; it starts again from here. The
                    // sessions' part waits for a tick wholly in the surge.
                    plan.share = excess_share(loaded.max(demand), t.target, svc.max_share);
                    plan.recent_pin_basis = RecentTicks::starting_with(pin_basis);
                    plan.steady_demand = pin_basis;
                }
            }
            RedirectState::Redirecting => {
                // The shadow carries `shadow` load for the share it got; scale to its limit.
                let headroom = if measured > 0.0 && input.shadow.0 > 0.0 {
                    measured * t.shadow_max / input.shadow.0
                } else {
                    f64::INFINITY
                };
                let want = excess_share(demand, t.target, svc.max_share).min(headroom);
                plan.share =
                    (self.share + svc.gain * (want - self.share)).clamp(0.0, svc.max_share);
                if plan.share < 1e-3 {
                    plan.share = 0.0;
                }
                let mut need =
                    excess_share(plan.steady_demand, t.target, svc.max_share).min(headroom);
                if first_pins {
                    need *= ENTRY_PIN_FRACTION;
                }
                let carried = input.sessions.below(self.pins.after);
                if need > carried + PIN_SLACK || (first_pins && need > 0.0) {
                    let pinned = input
                        .sessions
                        .threshold_for(need, svc.max_share)
                        .max(self.pins.after);
                    plan.pins.set(pinned, input.now_ms, lead_ms);
                }
                if demand < t.exit {
                    plan.below_exit_ticks += 1;
                } else {
                    plan.below_exit_ticks = 0;
                }
                if plan.below_exit_ticks >= t.exit_hold_ticks {
                    plan.leave(input.now_ms, lead_ms);
                }
            }
        }
        plan.plain_share = match plan.state {
            RedirectState::Normal => 0.0,
            RedirectState::Redirecting => {
                plain_share(plan.share, plan.pins.at(input.now_ms), input.sessions)
                    .min(svc.max_share)
            }
        };
        plan
    }
}

impl RedirectPlan {
    /// The control inputs and outputs of the last tick, on one line (the filter logs it
    /// every tick at debug level).
    pub fn tick_line(&self) -> String {
        format!(
            "primary load {:.2}, measured share {:.2}, demand {:.2} (steady {:.2}, this tick \
             {:.2}), inflation {:.2} (steady {:.2}), share {:.2} (session-less {:.2}), pins \
             {:.3} -> {:.3} at {} ms, onset {}, unloaded latency {:.1} ms",
            self.primary_load,
            self.measured_share,
            self.demand,
            self.steady_demand,
            self.recent_pin_basis.values[RECENT_TICKS - 1],
            self.inflation.get(),
            self.steady_inflation.get(),
            self.share,
            self.plain_share,
            self.pins.before,
            self.pins.after,
            self.pins.from_ms,
            self.onset,
            self.unloaded_latency_ms
        )
    }

    /// Back to normal: nothing more is redirected, and the pinned sessions go back to the
    /// primary at one instant (as soon as one can be announced).
    fn leave(&mut self, now_ms: u64, lead_ms: u64) {
        self.state = RedirectState::Normal;
        self.share = 0.0;
        self.plain_share = 0.0;
        self.below_exit_ticks = 0;
        self.pins.set(0.0, now_ms, lead_ms);
    }
}

/// The share of session-less requests that, with the sessions the shadow serves under
/// `threshold` (less those read-your-writes holds back), makes `share` of all traffic.
fn plain_share(share: f64, threshold: f64, mix: &SessionMix) -> f64 {
    let f = mix.fraction().clamp(0.0, 1.0);
    if f >= 1.0 {
        return 0.0;
    }
    let sessions_on_shadow = (mix.below(threshold) - mix.held()).max(0.0);
    ((share - f * sessions_on_shadow) / (1.0 - f)).clamp(0.0, 1.0)
}

fn excess_share(demand: f64, target: f64, max_share: f64) -> f64 {
    if demand <= target {
        0.0
    } else {
        (1.0 - target / demand).clamp(0.0, max_share)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inflation_ignores_a_tick_with_any_unknown_half() {
        let mut i = Inflation::default();
        i.add(3.0, 2.0, 0.5);
        let before = i;
        i.add(f64::NAN, 1.0, 0.5);
        i.add(1.0, f64::INFINITY, 0.5);
        assert_eq!(i, before);
        i.add(1.0, 1.0, 0.5);
        assert_eq!((i.loaded, i.offered), (2.5, 2.0), "half the past kept");
    }
    use crate::config::PluginConfig;
    use crate::window::Side;

    fn svc() -> ServiceConfig {
        PluginConfig::parse(
            br#"{"services":[{"name":"s","primary":{"cluster":"p","max_in_flight":10},
                "shadow":{"cluster":"sh","max_in_flight":10,"ready":true},
                "thresholds":{"enter":0.9,"target":0.8,"exit":0.6,"exit_hold_ticks":3,"shadow_max":0.9},
                "gain":0.5}]}"#,
        )
        .unwrap()
        .services
        .remove(0)
    }

    /// 1,000 session-less requests, `share` of them on the shadow.
    fn plain_traffic(share: f64) -> RouteCounts {
        let to_shadow = (share * 1_000.0).round() as u64;
        RouteCounts {
            plain: [1_000 - to_shadow, to_shadow],
            ..Default::default()
        }
    }

    fn inputs<'a>(
        primary: f64,
        shadow: f64,
        routed: RouteCounts,
        mix: &'a SessionMix,
        now_ms: u64,
    ) -> PlanInputs<'a> {
        PlanInputs {
            primary: LoadScore(primary),
            shadow: LoadScore(shadow),
            shadow_ready: true,
            routed,
            sessions: mix,
            now_ms,
            elapsed_ms: 100.0,
            tick_ms: 100,
            offered: None,
            measured_share: routed.shadow_share(),
        }
    }

    std::thread_local! {
        /// The clock `step` advances, a tick per step.
        static NOW_MS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    /// A primary with the given demand and session-less traffic only, one tick later: it
    /// sees demand × (1 − share actually sent).
    fn step(plan: &RedirectPlan, demand: f64, svc: &ServiceConfig) -> RedirectPlan {
        let applied = plan.plain_share;
        let mix = SessionMix::default();
        let now = NOW_MS.with(|n| {
            n.set(n.get() + 100);
            n.get()
        });
        plan.next(
            inputs(
                demand * (1.0 - applied),
                demand * applied * 0.5,
                plain_traffic(applied),
                &mix,
                now,
            ),
            svc,
        )
    }

    #[test]
    fn a_mix_that_saw_no_request_has_no_session_share() {
        let mut mix = SessionMix::default();
        mix.observe(&RouteCounts::default(), &SessionSpread::default(), 0.5);
        assert_eq!((mix.fraction(), mix.held()), (0.0, 0.0));
    }

    #[test]
    fn a_threshold_may_sit_exactly_at_the_largest_share_allowed() {
        // Nothing seen yet: the prior spreads sessions evenly, so half lie below 0.5 —
        // exactly the 0.5 allowed.
        let mix = SessionMix::default();
        assert_eq!(mix.threshold_for(0.5, 0.5), 0.5);
        assert_eq!(mix.threshold_for(0.5, 0.49), 31.0 / 64.0);
    }

    /// A tick of session-less traffic with `share` sent to the shadow, the primary at
    /// `primary` and `offered` of unloaded work, from `plan`.
    fn next_with(
        plan: &RedirectPlan,
        primary: f64,
        share: f64,
        offered: Option<f64>,
    ) -> RedirectPlan {
        let mix = SessionMix::default();
        let mut input = inputs(primary, 0.0, plain_traffic(share), &mix, 1_000);
        input.offered = offered;
        plan.next(input, &svc())
    }

    #[test]
    fn a_drained_backlog_resets_the_inflation_at_once_and_nothing_else_does() {
        let keep = 1.0 - smoothing(100.0, INFLATION_MS);
        let with = |loaded, offered| RedirectPlan {
            inflation: Inflation { loaded, offered },
            ..Default::default()
        };
        let smoothed = |past: (f64, f64), loaded: f64| Inflation {
            loaded: keep * past.0 + loaded,
            offered: keep * past.1 + 2.0,
        };
        // Inflation 4/2 = 2 (a backlog); this tick says 1.8/2 = 0.9, under half of it: reset.
        let next = next_with(&with(4.0, 2.0), 1.8, 0.0, Some(2.0));
        assert_eq!(
            next.inflation,
            Inflation {
                loaded: 1.8,
                offered: 2.0
            }
        );
        // This tick says 3.2/2 = 1.6, not under half: smoothed in.
        let next = next_with(&with(4.0, 2.0), 3.2, 0.0, Some(2.0));
        assert_eq!(next.inflation, smoothed((4.0, 2.0), 3.2));
        // Exactly half (1.0) is not under it.
        let next = next_with(&with(4.0, 2.0), 2.0, 0.0, Some(2.0));
        assert_eq!(next.inflation, smoothed((4.0, 2.0), 2.0));
        // Inflation 1.2 is no backlog: even a tick at 0.5 is smoothed in.
        let next = next_with(&with(2.4, 2.0), 1.0, 0.0, Some(2.0));
        assert_eq!(next.inflation, smoothed((2.4, 2.0), 1.0));
    }

    #[test]
    fn a_settled_surge_counts_a_tick_only_up_to_a_backlog_s_bound() {
        // Redirecting, the onset over 2 s (SETTLE_MS) ago: a tick whose load says 3 for an
        // offered 1 counts as 4/3 in the steady inflation.
        let plan = RedirectPlan {
            state: RedirectState::Redirecting,
            onset_ended_ms: 0,
            ..Default::default()
        };
        let mix = SessionMix::default();
        let mut input = inputs(3.0, 0.0, plain_traffic(0.0), &mix, SETTLE_MS);
        input.offered = Some(1.0);
        let next = plan.next(input, &svc());
        let alpha = smoothing(100.0, STEADY_INFLATION_MS);
        let mut want = Inflation::default();
        want.add(BACKLOG_INFLATION, 1.0, alpha);
        assert_eq!(next.steady_inflation, want);
        // A millisecond before it settles, nothing is counted.
        let mut input = inputs(3.0, 0.0, plain_traffic(0.0), &mix, SETTLE_MS - 1);
        input.offered = Some(1.0);
        assert_eq!(
            plan.next(input, &svc()).steady_inflation,
            Inflation::default()
        );
    }

    #[test]
    fn the_onset_lasts_while_the_primary_carries_a_backlog_and_its_end_is_stamped() {
        let plan = RedirectPlan {
            state: RedirectState::Redirecting,
            onset: true,
            ..Default::default()
        };
        let mix = SessionMix::default();
        let tick = |primary: f64| {
            let mut input = inputs(primary, 0.0, plain_traffic(0.0), &mix, 5_000);
            input.offered = Some(2.0);
            plan.next(input, &svc())
        };
        // 2.8 for an offered 2 is a backlog (≥ 4/3 × 2): the onset goes on, unstamped.
        let next = tick(2.8);
        assert!(next.onset);
        assert_eq!(next.onset_ended_ms, 0);
        // 2.6 is not: the onset ends now.
        let next = tick(2.6);
        assert!(!next.onset);
        assert_eq!(next.onset_ended_ms, 5_000);
    }

    #[test]
    fn a_surge_s_first_pins_are_set_for_any_need_however_small_and_none_for_no_need() {
        // Redirecting, no pins yet: the first pins follow the need of this tick and the
        // entry's, 0.8 of the excess — even one under the slack that later raises must
        // clear. A primary at 0.82 (and 0.82 at the entry) against a target of 0.8:
        // (1 − 0.8/0.82) × 0.8 = 0.0195, nearest edge 1/64.
        let plan = RedirectPlan {
            state: RedirectState::Redirecting,
            steady_demand: 0.82,
            ..Default::default()
        };
        let next = next_with(&plan, 0.82, 0.0, None);
        assert_eq!(next.pins.after, 1.0 / 64.0, "{:?}", next.pins);
        // At 0.5 there is no excess: nothing is pinned or announced.
        let next = next_with(&plan, 0.5, 0.0, None);
        assert_eq!(next.pins, SessionPins::default());
    }

    fn recent(values: &[f64]) -> RecentTicks {
        let mut r = RecentTicks::default();
        for v in values {
            r.push(*v);
        }
        r
    }

    /// Redirecting in the onset, pinned for `steady` (sessions below 0.3 on the shadow),
    /// the last five ticks each at `ticks`.
    fn in_onset(steady: f64, ticks: f64) -> RedirectPlan {
        RedirectPlan {
            state: RedirectState::Redirecting,
            onset: true,
            steady_demand: steady,
            recent_pin_basis: recent(&[ticks; RECENT_TICKS]),
            pins: SessionPins {
                before: 0.0,
                after: 0.3,
                from_ms: 0,
            },
            ..Default::default()
        }
    }

    #[test]
    fn recent_ticks_keep_the_last_five_and_their_lower_median() {
        assert_eq!(RecentTicks::default().lower_median(), 0.0);
        assert_eq!(recent(&[2.0]).lower_median(), 2.0);
        // Of two, the lower; of four, the second lowest.
        assert_eq!(recent(&[2.0, 1.0]).lower_median(), 1.0);
        assert_eq!(recent(&[4.0, 1.0, 3.0, 2.0]).lower_median(), 2.0);
        // The first of six is forgotten: 9 no longer counts.
        let r = recent(&[9.0, 9.0, 1.0, 2.0, 3.0, 9.0]);
        assert_eq!(r.len, RECENT_TICKS);
        assert_eq!(r.lower_median(), 3.0);
    }

    #[test]
    fn the_first_pins_rest_on_the_lower_of_the_entry_s_demand_and_this_tick_s() {
        // The entry saw 1.25, this tick 2.0 (a load generator's catch-up after a stall
        // split between them): the pins rest on 1.25 — (1 − 0.8/1.25) × 0.8 = 0.288 of
        // the sessions, nearest edge 18/64 — not on the burst's 2.0 (0.3 × 64 = 24/64).
        let plan = RedirectPlan {
            state: RedirectState::Redirecting,
            steady_demand: 1.25,
            recent_pin_basis: recent(&[1.25]),
            ..Default::default()
        };
        let next = next_with(&plan, 2.0, 0.0, None);
        assert_eq!(next.steady_demand, 1.25);
        assert_eq!(next.pins.after, 18.0 / 64.0, "{:?}", next.pins);
        // The same the other way round: a burst at the entry, the demand after it.
        let plan = RedirectPlan {
            steady_demand: 2.0,
            recent_pin_basis: recent(&[2.0]),
            ..plan
        };
        assert_eq!(next_with(&plan, 1.25, 0.0, None).steady_demand, 1.25);
    }

    #[test]
    fn in_the_onset_a_gap_and_the_burst_that_catches_up_on_it_cancel() {
        // In the onset (a backlog: the primary's load well above what is offered), pinned
        // for 1.5. Ticks without arrivals (a stalled load generator) and the two that
        // catch up on them leave the demand the pins rest on where it was; a rise that
        // lasts three ticks of five is followed.
        let plan = in_onset(1.5, 1.5);
        let mut p = plan;
        for offered in [0.0, 0.0, 3.0, 3.0, 1.5] {
            p = next_with(&p, 8.0, 0.0, Some(offered));
            assert!(p.onset);
            assert_eq!(p.steady_demand, 1.5, "after {offered}");
        }
        let mut p = plan;
        for (offered, steady) in [(1.8, 1.5), (1.8, 1.5), (1.8, 1.8)] {
            p = next_with(&p, 8.0, 0.0, Some(offered));
            assert_eq!(p.steady_demand, steady);
        }
        // And a lower demand does not lower it: what clients waiting on the backlog send
        // is a floor.
        for _ in 0..5 {
            p = next_with(&p, 8.0, 0.0, Some(1.0));
        }
        assert_eq!(p.steady_demand, 1.8);
    }

    #[test]
    fn recent_ticks_with_a_count_past_their_size_count_only_what_they_hold() {
        // The plan is read back from shared data: a count past the five it holds (written
        // by nothing but a corrupted copy) reads the five, it does not underflow.
        let r = RecentTicks {
            values: [1.0, 2.0, 3.0, 4.0, 5.0],
            len: 9,
        };
        assert_eq!(r.lower_median(), 3.0);
    }

    #[test]
    fn a_surge_s_ticks_start_at_its_entry_whatever_came_before() {
        // Ticks before the entry (calm, or the last surge's) are forgotten: the first pins
        // rest on the lower of the entry's and the next tick's, in either order.
        for before in [[0.0; RECENT_TICKS], [3.0; RECENT_TICKS]] {
            for (entry, next) in [(2.0, 1.25), (1.25, 2.0)] {
                let plan = RedirectPlan {
                    recent_pin_basis: recent(&before),
                    ..Default::default()
                };
                let entered = next_with(&plan, 8.0, 0.0, Some(entry));
                assert_eq!(entered.state, RedirectState::Redirecting);
                assert_eq!(entered.recent_pin_basis.len, 1, "{before:?}");
                let first = next_with(&entered, 8.0, 0.0, Some(next));
                assert_eq!(first.steady_demand, 1.25, "{before:?} then {entry}, {next}");
            }
        }
    }

    #[test]
    fn a_surge_that_returns_before_the_release_took_effect_keeps_the_onset_s_floor() {
        // The last surge's release is announced for 60 s (pending): the surge that begins
        // meanwhile cannot announce its first pins, and its onset keeps the highest demand
        // it sees (2.0) rather than starting from this tick's 1.25.
        let plan = RedirectPlan {
            pins: SessionPins {
                before: 0.3,
                after: 0.0,
                from_ms: 60_000,
            },
            ..Default::default()
        };
        let entered = next_with(&plan, 8.0, 0.0, Some(2.0));
        assert!(entered.onset);
        let next = next_with(&entered, 8.0, 0.0, Some(1.25));
        assert_eq!(
            next.pins, plan.pins,
            "nothing announced over a pending change"
        );
        assert_eq!(next.steady_demand, 2.0);
    }

    #[test]
    fn the_tick_that_ends_the_onset_smooths_instead_of_keeping_the_highest() {
        // In the onset at 1.5; this tick has no backlog (load 0.5 for an offered 1.0): the
        // onset ends and the demand moves towards the filtered 1.0 by a tick's smoothing.
        let next = next_with(&in_onset(1.5, 1.0), 0.5, 0.0, Some(1.0));
        assert!(!next.onset);
        let alpha = smoothing(100.0, STEADY_DEMAND_MS);
        assert!((next.steady_demand - (1.5 - 0.5 * alpha)).abs() < 1e-12);
    }

    #[test]
    fn after_the_onset_the_demand_pinned_for_follows_the_filtered_ticks() {
        // Calm (not in the onset): one tick's burst moves nothing; the lower median of the
        // last five does, by a second's smoothing.
        let plan = RedirectPlan {
            steady_demand: 1.0,
            recent_pin_basis: recent(&[1.0; 5]),
            ..Default::default()
        };
        let burst = next_with(&plan, 0.5, 0.0, Some(5.0));
        assert_eq!(burst.steady_demand, 1.0);
        let mut p = plan;
        for _ in 0..3 {
            p = next_with(&p, 0.5, 0.0, Some(2.0));
        }
        let alpha = smoothing(100.0, STEADY_DEMAND_MS);
        assert!(
            (p.steady_demand - (1.0 + alpha)).abs() < 1e-12,
            "{}",
            p.steady_demand
        );
    }

    #[test]
    fn later_pins_rise_only_for_a_need_beyond_what_they_carry_plus_the_slack() {
        // Pins at 1/64 carry 1/64 of the sessions (even spread); the need at 0.829 is
        // 1 − 0.8/0.829 = 0.035, within the slack (0.02) of it: no change announced, though
        // the edge nearest that need is 2/64.
        let pins = SessionPins {
            before: 1.0 / 64.0,
            after: 1.0 / 64.0,
            from_ms: 0,
        };
        let plan = RedirectPlan {
            state: RedirectState::Redirecting,
            pins,
            steady_demand: 0.829,
            ..Default::default()
        };
        assert_eq!(SessionMix::default().threshold_for(0.035, 0.5), 2.0 / 64.0);
        assert_eq!(next_with(&plan, 0.829, 0.0, None).pins, pins);
        // At 0.9 the need (0.111) is beyond it: raised.
        let mut higher = plan;
        higher.steady_demand = 0.9;
        assert!(next_with(&higher, 0.9, 0.0, None).pins.after > 1.0 / 64.0);
    }

    #[test]
    fn the_tick_line_names_each_control_quantity() {
        let plan = RedirectPlan {
            primary_load: 0.85,
            measured_share: 0.25,
            demand: 1.2,
            share: 0.33,
            onset: true,
            unloaded_latency_ms: 12.5,
            recent_pin_basis: recent(&[1.75]),
            ..Default::default()
        };
        let line = plan.tick_line();
        for part in [
            "primary load 0.85",
            "measured share 0.25",
            "demand 1.20",
            "this tick 1.75",
            "share 0.33",
            "onset true",
            "unloaded latency 12.5 ms",
        ] {
            assert!(line.contains(part), "{part:?} in {line}");
        }
    }

    #[test]
    fn a_calm_tick_announces_no_pin_change() {
        let plan = RedirectPlan::default();
        let next = next_with(&plan, 0.3, 0.0, None);
        assert_eq!(next.state, RedirectState::Normal);
        assert_eq!(next.pins, SessionPins::default());
    }

    #[test]
    fn a_tick_whose_requests_all_went_to_the_shadow_says_nothing_of_the_inflation() {
        let plan = RedirectPlan {
            inflation: Inflation {
                loaded: 1.1,
                offered: 1.0,
            },
            ..Default::default()
        };
        assert_eq!(
            next_with(&plan, 0.3, 1.0, Some(1.0)).inflation,
            plan.inflation
        );
    }

    #[test]
    fn a_tick_without_arrivals_offers_nothing_to_pin_for_and_sheds_for_its_load() {
        // A primary still busy with a backlog while nothing arrives (a stalled load
        // generator): the demand to shed is its load, as when nothing is known of the
        // offered work; the demand sessions are pinned on counts the tick as zero, not as
        // the backlog's load.
        let plan = RedirectPlan::default();
        let none = next_with(&plan, 0.7, 0.0, None);
        let nothing = next_with(&plan, 0.7, 0.0, Some(0.0));
        assert_eq!((none.demand, nothing.demand), (0.7, 0.7));
        assert_eq!(none.recent_pin_basis.values[RECENT_TICKS - 1], 0.7);
        assert_eq!(nothing.recent_pin_basis.values[RECENT_TICKS - 1], 0.0);
        // Nor does it teach the inflation anything.
        assert_eq!(nothing.inflation, plan.inflation);
    }

    #[test]
    fn redirects_only_the_excess_and_holds_primary_at_target() {
        let svc = svc();
        let mut plan = RedirectPlan::default();
        for _ in 0..30 {
            plan = step(&plan, 1.6, &svc);
        }
        assert_eq!(plan.state, RedirectState::Redirecting);
        assert!((plan.share - 0.5).abs() < 0.01, "share {}", plan.share);
        assert_eq!(plan.plain_share, plan.share, "no sessions: all of it plain");
        assert!(
            (plan.primary_load - 0.8).abs() < 0.02,
            "primary {}",
            plan.primary_load
        );
    }

    #[test]
    fn demand_divides_by_the_share_measured_not_the_one_intended() {
        let svc = svc();
        let mix = SessionMix::default();
        let plan = RedirectPlan {
            state: RedirectState::Redirecting,
            share: 0.5,
            plain_share: 0.5,
            ..Default::default()
        };
        // The plan meant half; a quarter went (held sessions, a failed header write).
        let next = plan.next(inputs(0.9, 0.2, plain_traffic(0.25), &mix, 0), &svc);
        assert!((next.measured_share - 0.25).abs() < 1e-9);
        assert!(
            (next.demand - 1.2).abs() < 1e-9,
            "0.9 / 0.75: {}",
            next.demand
        );
    }

    /// Demand is the larger of the two views of it: the primary's load over the share that
    /// really stayed (a burst the arrivals' smoothed inflation has not caught up with), and
    /// the arrivals' unloaded work × that inflation (arrivals that rose before the load).
    #[test]
    fn demand_is_the_larger_of_the_load_and_the_arrivals_views() {
        let svc = svc();
        let mix = SessionMix::default();
        let plan = RedirectPlan {
            state: RedirectState::Redirecting,
            share: 0.25,
            plain_share: 0.25,
            inflation: Inflation {
                loaded: 10.0,
                offered: 10.0,
            },
            ..Default::default()
        };
        let tick = |offered: f64| {
            let mut i = inputs(0.9, 0.2, plain_traffic(0.25), &mix, 0);
            i.offered = Some(offered);
            plan.next(i, &svc)
        };
        // The load says 0.9 / 0.75 = 1.2; the arrivals, 1.0 × about 1: the load wins.
        let burst = tick(1.0);
        assert!(
            (burst.demand - 1.2).abs() < 1e-9,
            "the load's view: {}",
            burst.demand
        );
        // The arrivals doubled before the load followed: theirs wins.
        let rise = tick(2.0);
        assert!(
            rise.demand > 1.8 && (rise.demand - 2.0 * rise.inflation.get()).abs() < 1e-9,
            "the arrivals' view: {} (inflation {})",
            rise.demand,
            rise.inflation.get()
        );
    }

    #[test]
    fn does_not_enter_below_enter_threshold() {
        let svc = svc();
        let mut plan = RedirectPlan::default();
        for _ in 0..10 {
            plan = step(&plan, 0.85, &svc);
        }
        assert_eq!(plan.state, RedirectState::Normal);
        assert_eq!(plan.share, 0.0);
    }

    #[test]
    fn leaves_only_after_demand_stays_low_and_does_not_flap() {
        let svc = svc();
        let mut plan = RedirectPlan::default();
        for _ in 0..10 {
            plan = step(&plan, 1.2, &svc);
        }
        // Demand hovers between target and enter: stays in, share small but no exit.
        for _ in 0..10 {
            plan = step(&plan, 0.7, &svc);
            assert_eq!(plan.state, RedirectState::Redirecting);
        }
        assert_eq!(plan.share, 0.0, "no excess at 0.7 demand");
        assert!(plan.pins.after > 0.1, "sessions stay pinned for the surge");
        let mut transitions = 0;
        let mut last = plan.state;
        for _ in 0..10 {
            plan = step(&plan, 0.5, &svc);
            if plan.state != last {
                transitions += 1;
                last = plan.state;
            }
        }
        assert_eq!(plan.state, RedirectState::Normal);
        assert_eq!(transitions, 1);
        assert_eq!(plan.pins.after, 0.0, "the exit releases every session");
    }

    /// Drives `plan` into redirection at demand 1.2 for a few ticks.
    fn redirecting(svc: &ServiceConfig, mut plan: RedirectPlan) -> RedirectPlan {
        for _ in 0..5 {
            plan = step(&plan, 1.2, svc);
        }
        assert_eq!(plan.state, RedirectState::Redirecting);
        plan
    }

    #[test]
    fn exit_waits_exactly_exit_hold_ticks() {
        let svc = svc();
        assert_eq!(svc.thresholds.exit_hold_ticks, 3);
        for surge in 1..=2 {
            let mut plan = redirecting(&svc, RedirectPlan::default());
            if surge == 2 {
                // A second surge holds just as long: nothing carried over from the first.
                plan = redirecting(&svc, plan_after_exit(&svc, plan));
            }
            for tick in 1..3 {
                plan = step(&plan, 0.5, &svc);
                assert_eq!(
                    plan.state,
                    RedirectState::Redirecting,
                    "surge {surge}: left after {tick} of 3 ticks below exit"
                );
            }
            plan = step(&plan, 0.5, &svc);
            assert_eq!(plan.state, RedirectState::Normal, "surge {surge}");
            assert_eq!(plan.surge, surge);
        }
    }

    fn plan_after_exit(svc: &ServiceConfig, mut plan: RedirectPlan) -> RedirectPlan {
        for _ in 0..svc.thresholds.exit_hold_ticks {
            plan = step(&plan, 0.5, svc);
        }
        assert_eq!(plan.state, RedirectState::Normal);
        plan
    }

    #[test]
    fn demand_back_above_exit_restarts_the_hold() {
        let svc = svc();
        let mut plan = redirecting(&svc, RedirectPlan::default());
        for demand in [0.5, 0.5, 0.7, 0.5, 0.5] {
            plan = step(&plan, demand, &svc);
            assert_eq!(
                plan.state,
                RedirectState::Redirecting,
                "the blip at 0.7 must restart the count of ticks below exit"
            );
        }
        plan = step(&plan, 0.5, &svc);
        assert_eq!(plan.state, RedirectState::Normal);
    }

    #[test]
    fn a_surge_right_after_an_exit_holds_as_long_as_the_first() {
        let svc = svc();
        let mut plan = plan_after_exit(&svc, redirecting(&svc, RedirectPlan::default()));
        assert_eq!(plan.below_exit_ticks, 0, "the count is reset on exit");
        // Re-enter with one hot tick, then straight back below exit.
        plan = step(&plan, 1.0, &svc);
        assert_eq!(plan.state, RedirectState::Redirecting);
        for tick in 1..3 {
            plan = step(&plan, 0.5, &svc);
            assert_eq!(
                plan.state,
                RedirectState::Redirecting,
                "left after {tick} of 3 ticks"
            );
        }
        assert_eq!(step(&plan, 0.5, &svc).state, RedirectState::Normal);
    }

    #[test]
    fn demand_exactly_at_exit_does_not_count_towards_leaving() {
        let svc = svc();
        let mut plan = redirecting(&svc, RedirectPlan::default());
        let mix = SessionMix::default();
        for _ in 0..10 {
            // Share 0 once the excess is gone, so the primary's load is the demand: 0.6.
            plan = plan.next(inputs(0.6, 0.0, plain_traffic(0.0), &mix, 0), &svc);
        }
        assert_eq!(
            plan.state,
            RedirectState::Redirecting,
            "exit means strictly below"
        );
    }

    #[test]
    fn a_tick_that_saw_nothing_changes_nothing_but_an_idle_service_leaves() {
        let svc = svc();
        let mix = SessionMix::default();
        let mut plan = redirecting(&svc, RedirectPlan::default());
        plan.pins = SessionPins {
            before: 0.2,
            after: 0.4,
            from_ms: 10_000,
        };
        let empty = plan.next(inputs(0.0, 0.0, RouteCounts::default(), &mix, 9_000), &svc);
        assert_eq!(
            empty.pins, plan.pins,
            "a pending pin change is not taken back"
        );
        assert_eq!(
            (empty.share, empty.steady_demand, empty.inflation),
            (plan.share, plan.steady_demand, plan.inflation)
        );
        assert_eq!(empty.below_exit_ticks, plan.below_exit_ticks + 1);
        // Idle for exit_hold_ticks: out, the sessions released.
        let mut idle = empty;
        for _ in 1..svc.thresholds.exit_hold_ticks {
            idle = idle.next(inputs(0.0, 0.0, RouteCounts::default(), &mix, 9_000), &svc);
        }
        assert_eq!(idle.state, RedirectState::Normal);
        assert_eq!((idle.share, idle.plain_share), (0.0, 0.0));
        assert_eq!(
            idle.pins.after, 0.4,
            "the release waits for the pending raise"
        );
        // Once that is in force, the release is announced.
        let released = idle.next(inputs(0.1, 0.0, plain_traffic(0.0), &mix, 10_000), &svc);
        assert_eq!(released.pins.after, 0.0);
        assert_eq!(released.pins.at(10_199), 0.4);
        assert_eq!(released.pins.at(10_200), 0.0);
        // In-flight time without a request started is something seen (a stalled primary).
        let stalled = plan.next(inputs(1.5, 0.0, RouteCounts::default(), &mix, 9_000), &svc);
        assert_eq!(stalled.below_exit_ticks, 0);
        assert_eq!(stalled.primary_load, 1.5);
    }

    #[test]
    fn the_entry_share_respects_max_share() {
        let mut svc = svc();
        svc.max_share = 0.3;
        let mix = SessionMix::default();
        let plan =
            RedirectPlan::default().next(inputs(4.0, 0.0, plain_traffic(0.0), &mix, 0), &svc);
        assert_eq!(plan.state, RedirectState::Redirecting);
        assert!(plan.share <= 0.3, "entered with share {}", plan.share);
        assert!(plan.plain_share <= 0.3 && plan.pins.after <= 0.3);
    }

    #[test]
    fn the_share_grows_again_from_zero_while_pinned_sessions_load_the_shadow() {
        let svc = svc();
        let mut plan = redirecting(&svc, RedirectPlan::default());
        let mix = SessionMix::default();
        // The excess went away (share 0), sessions pinned to the shadow keep it busy.
        for _ in 0..20 {
            plan = plan.next(inputs(0.7, 0.4, plain_traffic(0.0), &mix, 0), &svc);
        }
        assert_eq!(plan.share, 0.0);
        // Demand rises again: the share must follow.
        for _ in 0..5 {
            let applied = plan.plain_share;
            plan = plan.next(
                inputs(1.6 * (1.0 - applied), 0.4, plain_traffic(applied), &mix, 0),
                &svc,
            );
        }
        assert!(plan.share > 0.3, "share {}", plan.share);
    }

    #[test]
    fn with_the_shadow_gone_the_primary_load_is_the_demand() {
        let svc = svc();
        let mut plan = redirecting(&svc, RedirectPlan::default());
        plan.share = 0.5;
        let mix = SessionMix::default();
        // Nothing went to the shadow (it was not ready: every redirect fell back).
        let mut input = inputs(1.0, 0.0, plain_traffic(0.0), &mix, 0);
        input.shadow_ready = false;
        let next = plan.next(input, &svc);
        assert_eq!(
            next.demand, 1.0,
            "nothing was redirected: no share to divide by"
        );
    }

    #[test]
    fn shadow_headroom_caps_the_share() {
        let svc = svc();
        let mut plan = RedirectPlan::default();
        let mix = SessionMix::default();
        for _ in 0..20 {
            let applied = plan.plain_share;
            // A weak shadow: each 10% of traffic is 45% of its capacity.
            plan = plan.next(
                inputs(
                    2.0 * (1.0 - applied),
                    applied * 4.5,
                    plain_traffic(applied),
                    &mix,
                    0,
                ),
                &svc,
            );
        }
        assert!(plan.share <= 0.2 + 1e-3, "share {}", plan.share);
        assert!(plan.shadow_load <= 0.9 + 0.02);
    }

    #[test]
    fn no_ready_shadow_means_no_entry_and_demand_is_the_raw_load() {
        let svc = svc();
        let mix = SessionMix::default();
        let mut input = inputs(1.5, 0.0, plain_traffic(0.0), &mix, 0);
        input.shadow_ready = false;
        let plan = RedirectPlan::default().next(input, &svc);
        assert_eq!(plan.state, RedirectState::Normal);
        assert_eq!(plan.demand, 1.5);
    }

    /// A mix of `keys` equally busy sessions (and no session-less traffic) at the given
    /// points, observed once.
    /// Many requests in each (so many that the spread's prior is a rounding error).
    fn sessions_at(points: &[f64]) -> SessionMix {
        let mut spread = SessionSpread::default();
        let mut routed = RouteCounts::default();
        for p in points {
            for _ in 0..100_000 {
                spread.count(*p);
                routed.count(true, Side::Primary, false);
            }
        }
        let mut mix = SessionMix::default();
        mix.observe(&routed, &spread, 0.5);
        mix
    }

    #[track_caller]
    fn close(got: f64, want: f64) {
        assert!((got - want).abs() < 1e-3, "{got} != {want}");
    }

    #[test]
    fn the_threshold_moves_the_share_of_session_traffic_asked_for() {
        // Four sessions: points in slices 3, 10, 40 and 60.
        let width = 1.0 / SPREAD_SLICES as f64;
        let mix = sessions_at(&[3.5 * width, 10.5 * width, 40.5 * width, 60.5 * width]);
        assert_eq!(mix.fraction(), 1.0);
        // A quarter of the traffic lies below the end of slice 3, half below slice 10's.
        assert_eq!(mix.threshold_for(0.25, 1.0), 4.0 * width);
        assert_eq!(mix.threshold_for(0.5, 1.0), 11.0 * width);
        assert_eq!(
            mix.threshold_for(0.3, 1.0),
            4.0 * width,
            "nearest: 0.25 beats 0.5"
        );
        assert_eq!(
            mix.threshold_for(0.4, 1.0),
            11.0 * width,
            "nearest: 0.5 beats 0.25"
        );
        assert_eq!(
            mix.threshold_for(0.1, 1.0),
            0.0,
            "nothing is nearer than a quarter"
        );
        close(mix.below(4.0 * width), 0.25);
        close(mix.below(3.5 * width), 0.125); // half of slice 3
        close(mix.below(1.0), 1.0);
        // Never more than max_share of the session traffic, however near the edge above.
        assert_eq!(mix.threshold_for(0.5, 0.3), 4.0 * width);
        assert_eq!(
            mix.threshold_for(0.5, 0.2),
            0.0,
            "a quarter is above a fifth"
        );
        // Without any session seen, points are uniform: the nearest slice edge to 0.3.
        let none = SessionMix::default();
        assert_eq!(none.threshold_for(0.3, 1.0), 19.0 * width);
        assert_eq!(none.below(0.3), 0.3);
    }

    #[test]
    fn the_mix_counts_requests_and_forgets_them_with_age() {
        const N: u64 = 100_000;
        let mut mix = SessionMix::default();
        let mut routed = RouteCounts::default();
        let mut spread = SessionSpread::default();
        for i in 0..10 * N {
            routed.count(i < 4 * N, Side::Primary, i < N);
            if i < 4 * N {
                spread.count(0.9);
            }
        }
        mix.observe(&routed, &spread, 0.5);
        assert_eq!(mix.fraction(), 0.4);
        assert_eq!(mix.held(), 0.25);
        close(mix.below(0.85), 0.0);
        close(mix.below(0.95), 1.0);
        // As many session requests elsewhere, later: the earlier ones count half now.
        let mut elsewhere = SessionSpread::default();
        for _ in 0..4 * N {
            elsewhere.count(0.1);
        }
        let later = RouteCounts {
            session: [4 * N, 0],
            ..Default::default()
        };
        mix.observe(&later, &elsewhere, 0.5);
        close(mix.below(0.5), 2.0 / 3.0); // 4 of 4 + 4 × 0.5
        assert_eq!(mix.fraction(), 6.0 / 9.0, "(2 + 4) of (5 + 4)");
        assert_eq!(mix.held(), 0.5 / 6.0, "0.5 of 6");
        // A quiet tick only ages what was seen: shares stay.
        let before = (mix.fraction(), mix.held(), mix.below(0.5));
        mix.observe(&RouteCounts::default(), &SessionSpread::default(), 0.5);
        assert_eq!((mix.fraction(), mix.held()), (before.0, before.1));
        close(mix.below(0.5), before.2);
    }

    #[test]
    fn session_less_requests_carry_what_the_sessions_do_not() {
        let width = 1.0 / SPREAD_SLICES as f64;
        // Half the traffic in sessions.
        let mut mix = sessions_at(&[3.5 * width, 10.5 * width, 40.5 * width, 60.5 * width]);
        mix.fraction = 0.5;
        // Sessions below slice 4 carry a quarter of the session traffic: 0.125 of all.
        // For 0.4 of all, plain requests carry 0.275 of all = 0.55 of theirs.
        close(plain_share(0.4, 4.0 * width, &mix), 0.55);
        // Sessions alone carry more than the share: no plain request goes.
        assert_eq!(plain_share(0.1, 11.0 * width, &mix), 0.0);
        // Only sessions: nothing to spread.
        let mut all = mix.clone();
        all.fraction = 1.0;
        assert_eq!(plain_share(0.4, 0.0, &all), 0.0);
        // Held sessions stay on the primary: plain requests make up for them.
        let mut held = mix;
        held.held = 0.25;
        close(plain_share(0.4, 4.0 * width, &held), 0.8);
    }

    #[test]
    fn few_requests_among_many_keys_say_little_of_the_spread() {
        // Ten requests, all in the first slice: a prior of even spread outweighs them.
        let mut spread = SessionSpread::default();
        let mut routed = RouteCounts::default();
        for _ in 0..10 {
            spread.count(0.001);
            routed.count(true, Side::Primary, false);
        }
        let mut mix = SessionMix::default();
        mix.observe(&routed, &spread, 0.5);
        close(
            mix.below(0.5),
            (10.0 + 0.5 * SPREAD_PRIOR) / (10.0 + SPREAD_PRIOR),
        );
        assert!(
            (mix.threshold_for(0.5, 1.0) - 0.5).abs() < 0.05,
            "{}",
            mix.threshold_for(0.5, 1.0)
        );
        // Nothing seen: an even spread.
        let none = SessionMix::default();
        close(none.below(0.3), 0.3);
    }

    #[test]
    fn pin_changes_take_effect_two_ticks_later_on_every_worker() {
        let mut pins = SessionPins::default();
        assert!(pins.set(0.4, 1_000, 200));
        assert_eq!((pins.at(1_199), pins.at(1_200)), (0.0, 0.4));
        assert!(pins.pending(1_199) && !pins.pending(1_200));
        // A change while one is pending is not announced: the pending one stands.
        assert!(!pins.set(0.5, 1_100, 200));
        assert_eq!((pins.at(1_199), pins.at(1_200)), (0.0, 0.4));
        // After the instant, a change keeps the old threshold until its own.
        assert!(pins.set(0.6, 1_300, 200));
        assert_eq!((pins.at(1_499), pins.at(1_500)), (0.4, 0.6));
        // Setting the same threshold announces nothing.
        assert!(!pins.set(0.6, 2_000, 200));
        assert_eq!(pins.from_ms, 1_500);
    }

    #[test]
    fn session_only_traffic_stays_redirected_and_pins_the_excess() {
        // Every request has a session; 100 equally busy keys. The old plan estimated
        // demand from the session-less share — zero here — and left redirection.
        let svc = svc();
        let points: Vec<f64> = (0..100).map(|i| (i as f64 + 0.5) / 100.0).collect();
        let mut mix = SessionMix::default();
        let mut plan = RedirectPlan::default();
        let demand = 1.6;
        for tick in 0..100u64 {
            let now = tick * 100;
            let theta = plan.pins.at(now);
            let mut routed = RouteCounts::default();
            let mut spread = SessionSpread::default();
            for p in &points {
                let side = if *p < theta {
                    Side::Shadow
                } else {
                    Side::Primary
                };
                routed.count(true, side, false);
                spread.count(*p);
            }
            mix.observe(&routed, &spread, 0.1);
            let s = routed.shadow_share();
            plan = plan.next(
                inputs(demand * (1.0 - s), demand * s * 0.5, routed, &mix, now),
                &svc,
            );
            if tick > 0 {
                assert_eq!(plan.state, RedirectState::Redirecting, "tick {tick}");
            }
        }
        assert_eq!(plan.plain_share, 0.0);
        let theta = plan.pins.at(10_000);
        assert!((theta - 0.5).abs() <= 0.03, "threshold {theta}");
        assert!((plan.primary_load - 0.8).abs() < 0.05, "{plan:?}");
    }
}
