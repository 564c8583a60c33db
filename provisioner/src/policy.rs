//! [`Provisioner`]: the policy, one [`Provisioner::step`] at a time.
//!
//! Each step, for every service:
//!
//! 1. **Need** — the capacity to add: the forecast peak at the provisioning quantile
//!    minus the primary's own capacity, needed by the onset minus the lead margin and
//!    until the forecast end of the surge (predictive, oracle); or, acting on current load
//!    only, the current demand plus headroom minus capacity, needed now (reactive — and, in
//!    predictive mode, a surge nobody forecast). Both at once: the larger capacity, needed
//!    by the earlier time.
//! 2. **Worth it?** — the expected loss avoided, `E[(D − C)⁺] × duration × cost of a
//!    degraded request` (the probability of overload times the excess expected), against
//!    what the spares cost from their start until released. Reactive mode does what an
//!    autoscaler does: it acts whenever the trigger is crossed.
//! 3. **Which spares** — the cheapest cover ([`crate::cover`]) of the missing capacity
//!    among the free spares that can be warm in time (any free spare if none can), each
//!    started at `onset − margin − its own warm-up`. When the pool cannot cover everyone,
//!    services are served in order of expected loss avoided per unit cost; the rest are
//!    logged as left out, with what they lack.
//! 4. **Assign** a spare as soon as the probe verified it warm; **release** after the
//!    surge: calm (demand under `release_below` × capacity, no surge within the lead
//!    window) for `release_hysteresis_secs`, assigned at least `min_hold_secs` — first
//!    [`Action::Drain`] (readiness off), then [`Action::Release`] after `drain_secs`.
//!
//! Deterministic and free of I/O and clocks: the caller passes the time in, executes the
//! actions, and reports back what it observed ([`Provisioner::on_warm`],
//! [`Provisioner::on_failed`]).

use crate::cover::{Candidate, cheapest_cover};
use crate::decision::{Action, Decision, LogEntry, LogEvent, ReasonKind, Verdict};
use crate::error::FieldError;
use crate::inputs::{ServiceLoad, StepInput, SurgeForecast};
use crate::pool::{ShadowPool, SpareState, non_negative, positive};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Log lines kept.
const LOG_LINES: usize = 1_000;

/// Where the need comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// From the forecast, ahead of the onset (Shadowmesh); current load as a safety net.
    #[default]
    Predictive,
    /// From current load only, the way an autoscaler does.
    Reactive,
    /// From the true future (fed as forecasts with certainty) — a benchmark's yardstick.
    Oracle,
}

/// Policy settings. Durations in seconds, money in any unit, consistently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where the need comes from.
    pub mode: Mode,
    /// Spares are warm this long before the predicted onset, beyond their warm-up.
    pub lead_margin_secs: f64,
    /// A spare stays assigned at least this long.
    pub min_hold_secs: f64,
    /// Demand must stay calm this long before spares are released.
    pub release_hysteresis_secs: f64,
    /// Demand below this share of the primary's capacity counts as calm.
    pub release_below: f64,
    /// Time between withdrawing readiness and releasing (in-flight requests finish).
    pub drain_secs: f64,
    /// Most the running spares may cost per hour together.
    pub spend_cap_per_hour: f64,
    /// What one request degraded by overload costs (the benefit of avoiding it).
    pub degraded_request_cost: f64,
    /// How far the forecast reaches: a surge's duration when its end is not forecast.
    pub horizon_secs: f64,
    /// Reactive trigger: act when demand reaches this share of the primary's capacity.
    pub reactive_trigger: f64,
    /// Reactive sizing: cover current demand times (1 + headroom).
    pub reactive_headroom: f64,
    /// First pause before a spare that failed to warm up is tried again (doubles).
    pub failure_backoff_secs: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: Mode::Predictive,
            lead_margin_secs: 30.0,
            min_hold_secs: 300.0,
            release_hysteresis_secs: 120.0,
            release_below: 0.8,
            drain_secs: 10.0,
            spend_cap_per_hour: f64::MAX,
            degraded_request_cost: 0.001,
            horizon_secs: 3_600.0,
            reactive_trigger: 0.9,
            reactive_headroom: 0.2,
            failure_backoff_secs: 30.0,
        }
    }
}

impl Settings {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), FieldError> {
        for (field, v) in [
            ("lead_margin_secs", self.lead_margin_secs),
            ("min_hold_secs", self.min_hold_secs),
            ("release_hysteresis_secs", self.release_hysteresis_secs),
            ("drain_secs", self.drain_secs),
            ("degraded_request_cost", self.degraded_request_cost),
            ("reactive_headroom", self.reactive_headroom),
        ] {
            non_negative(field, v)?;
        }
        positive("horizon_secs", self.horizon_secs)?;
        positive("failure_backoff_secs", self.failure_backoff_secs)?;
        if self.spend_cap_per_hour.is_nan() || self.spend_cap_per_hour <= 0.0 {
            return Err(FieldError::new(
                "spend_cap_per_hour",
                format!("{} is not a positive number", self.spend_cap_per_hour),
            ));
        }
        for (field, v) in [
            ("release_below", self.release_below),
            ("reactive_trigger", self.reactive_trigger),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 2.0) {
                return Err(FieldError::new(field, format!("{v} is not in (0, 2]")));
            }
        }
        Ok(())
    }
}

/// What one service needs this step.
#[derive(Debug, Clone, PartialEq)]
struct Need {
    /// Capacity (req/s) to add to the primary's.
    capacity: f64,
    /// When it must be ready.
    ready_by: f64,
    /// When the surge is expected to end.
    end: f64,
    /// Expected loss avoided by covering it.
    benefit: f64,
    /// Reactive (now) rather than forecast.
    reactive: bool,
    /// Why, for the log.
    why: String,
}

/// The plan for one service, as `/v1/provisioning` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServicePlan {
    /// Service name.
    pub service: String,
    /// Capacity (req/s) needed beyond the primary's.
    pub need: f64,
    /// Capacity of the spares warming, warm or assigned for it.
    pub provided: f64,
    /// When the added capacity must be ready.
    pub ready_by: Option<f64>,
    /// When the surge is expected to end.
    pub surge_end: Option<f64>,
    /// Expected loss avoided by covering the need.
    pub expected_benefit: f64,
    /// What its cover costs (spares already running included).
    pub expected_cost: f64,
    /// The verdict.
    pub verdict: Verdict,
    /// Spares planned to start later: (id, start time).
    pub planned: Vec<(String, f64)>,
}

/// What the provisioner remembers of a service between steps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Memory {
    calm_since: Option<f64>,
    verdict: Option<Verdict>,
}

/// The Shadow Node Provisioner's policy and state. Serializable, so a control plane can
/// store it and recover it after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provisioner {
    settings: Settings,
    pool: ShadowPool,
    memory: BTreeMap<String, Memory>,
    plan: Vec<ServicePlan>,
    log: VecDeque<LogEntry>,
}

impl Provisioner {
    /// A provisioner over `pool` (all spares cold).
    pub fn new(settings: Settings, pool: ShadowPool) -> Result<Provisioner, FieldError> {
        settings.validate()?;
        Ok(Provisioner {
            settings,
            pool,
            memory: BTreeMap::new(),
            plan: Vec::new(),
            log: VecDeque::new(),
        })
    }

    /// Continues from `saved` (a stored provisioner) under `settings` and `pool`: spares
    /// keep their state by id, the decision log and the per-service memory carry over.
    /// Returns the saved spares that are no longer in `pool` but were running, for the
    /// caller to stop.
    pub fn resume(
        settings: Settings,
        mut pool: ShadowPool,
        saved: Provisioner,
    ) -> Result<(Provisioner, Vec<crate::pool::Spare>), FieldError> {
        let gone = pool.resume_from(&saved.pool);
        let mut p = Provisioner::new(settings, pool)?;
        p.memory = saved.memory;
        p.log = saved.log;
        p.plan = saved.plan;
        Ok((p, gone))
    }

    /// Its settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The pool and every spare's state.
    pub fn pool(&self) -> &ShadowPool {
        &self.pool
    }

    /// The plan of the last step, per service with a need or running spares.
    pub fn plan(&self) -> &[ServicePlan] {
        &self.plan
    }

    /// The decision log, oldest first (the last [`LOG_LINES`] lines).
    pub fn log(&self) -> impl Iterator<Item = &LogEntry> {
        self.log.iter()
    }

    fn record(&mut self, at: f64, service: &str, event: LogEvent) {
        if self.log.len() == LOG_LINES {
            self.log.pop_front();
        }
        self.log.push_back(LogEntry {
            at,
            service: service.to_string(),
            event,
        });
    }

    fn decide(
        &mut self,
        out: &mut Vec<Decision>,
        at: f64,
        action: Action,
        reason: ReasonKind,
        why: String,
    ) {
        let d = Decision {
            at,
            action,
            reason,
            why,
        };
        let service = d.action.service().to_string();
        self.record(at, &service, LogEvent::Decision(d.clone()));
        out.push(d);
    }

    /// The spare started for a service is verified warm at `at`. False if it was not
    /// warming (released meanwhile): then nothing changes.
    pub fn on_warm(&mut self, spare: &str, at: f64) -> bool {
        let Some(s) = self.pool.get_mut(spare) else {
            return false;
        };
        let SpareState::Warming { service, since } = &s.state else {
            return false;
        };
        s.measured_warmup_secs = Some(at - *since);
        s.state = SpareState::Warm {
            service: service.clone(),
            started: *since,
            since: at,
        };
        s.failures = 0;
        true
    }

    /// The spare failed to start or to warm up at `at`: it goes back to cold and is not
    /// tried again before a backoff that doubles with each consecutive failure; the next
    /// step covers its service with another spare. Returns the service it was for.
    pub fn on_failed(&mut self, spare: &str, at: f64, error: &str) -> Option<String> {
        let backoff = self.settings.failure_backoff_secs;
        let s = self.pool.get_mut(spare)?;
        let service = s.state.service()?.to_string();
        if !matches!(
            s.state,
            SpareState::Warming { .. } | SpareState::Warm { .. }
        ) {
            return None;
        }
        s.failures += 1;
        let retry_after = at + backoff * f64::from(1u32 << (s.failures - 1).min(10));
        s.state = SpareState::Cold {
            retry_after: Some(retry_after),
        };
        self.record(
            at,
            &service,
            LogEvent::WarmupFailed {
                spare: spare.to_string(),
                error: error.to_string(),
                retry_after,
            },
        );
        Some(service)
    }

    /// One policy step at `input.now`: returns the actions to execute now (they are
    /// already reflected in the pool's states).
    pub fn step(&mut self, input: &StepInput) -> Vec<Decision> {
        let now = input.now;
        let mut out = Vec::new();
        self.finish_drains(now, &mut out);
        self.assign_warm(now, &mut out);
        let loads: BTreeMap<&str, &ServiceLoad> = input
            .services
            .iter()
            .map(|l| (l.service.as_str(), l))
            .collect();
        let mut needs: BTreeMap<String, Need> = BTreeMap::new();
        for load in &input.services {
            if let Some(need) = self.need(load, &input.forecasts, now) {
                needs.insert(load.service.clone(), need);
            }
        }
        let calm = self.release_calm_services(now, &loads, &needs, &mut out);
        let mut plans = self.allocate(now, &needs, &calm, &mut out);
        // Services with running spares but no need still show in the plan.
        for s in self.pool.spares() {
            if let Some(service) = s.state.service()
                && !plans.iter().any(|p| p.service == service)
            {
                plans.push(ServicePlan {
                    service: service.to_string(),
                    need: 0.0,
                    provided: self.provided(service),
                    ready_by: None,
                    surge_end: None,
                    expected_benefit: 0.0,
                    expected_cost: 0.0,
                    verdict: if calm.contains(&service.to_string()) {
                        Verdict::Releasing
                    } else {
                        Verdict::Covered
                    },
                    planned: Vec::new(),
                });
            }
        }
        plans.sort_by(|a, b| a.service.cmp(&b.service));
        for p in &plans {
            let changed = self
                .memory
                .get(&p.service)
                .is_none_or(|m| !same_verdict(m.verdict.as_ref(), &p.verdict));
            if changed {
                self.memory.entry(p.service.clone()).or_default().verdict = Some(p.verdict.clone());
                self.record(now, &p.service, LogEvent::Verdict(p.verdict.clone()));
            }
        }
        // Services that left the plan go back to idle.
        let idle: Vec<String> = self
            .memory
            .iter()
            .filter(|(name, m)| {
                !plans.iter().any(|p| &&p.service == name)
                    && m.verdict.as_ref().is_some_and(|v| *v != Verdict::Idle)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in idle {
            self.memory.entry(name.clone()).or_default().verdict = Some(Verdict::Idle);
            self.record(now, &name, LogEvent::Verdict(Verdict::Idle));
        }
        self.plan = plans;
        out
    }

    /// Draining spares whose drain time has passed are released.
    fn finish_drains(&mut self, now: f64, out: &mut Vec<Decision>) {
        let due: Vec<(String, String)> = self
            .pool
            .spares()
            .iter()
            .filter_map(|s| match &s.state {
                SpareState::Draining { service, until, .. } if *until <= now => {
                    Some((s.spec.id.clone(), service.clone()))
                }
                _ => None,
            })
            .collect();
        for (spare, service) in due {
            self.set_state(&spare, SpareState::cold());
            self.decide(
                out,
                now,
                Action::Release { spare, service },
                ReasonKind::Drained,
                "drained: in-flight requests had the drain time to finish".into(),
            );
        }
    }

    /// Spares verified warm are assigned to their service.
    fn assign_warm(&mut self, now: f64, out: &mut Vec<Decision>) {
        let warm: Vec<(String, String, f64, f64)> = self
            .pool
            .spares()
            .iter()
            .filter_map(|s| match &s.state {
                SpareState::Warm {
                    service, started, ..
                } => Some((
                    s.spec.id.clone(),
                    service.clone(),
                    *started,
                    s.spec.capacity,
                )),
                _ => None,
            })
            .collect();
        for (spare, service, started, capacity) in warm {
            self.set_state(
                &spare,
                SpareState::Assigned {
                    service: service.clone(),
                    started,
                    since: now,
                },
            );
            let weight = capacity.round().clamp(1.0, 10_000.0) as u32;
            self.decide(
                out,
                now,
                Action::Assign {
                    spare,
                    service,
                    weight,
                },
                ReasonKind::Warm,
                format!("verified warm after {:.1} s", now - started),
            );
        }
    }

    fn set_state(&mut self, spare: &str, state: SpareState) {
        if let Some(s) = self.pool.get_mut(spare) {
            s.state = state;
        }
    }

    /// Capacity of the spares warming, warm or assigned for `service`.
    fn provided(&self, service: &str) -> f64 {
        self.pool
            .of_service(service)
            .filter(|s| !matches!(s.state, SpareState::Draining { .. }))
            .map(|s| s.spec.capacity)
            .sum()
    }

    /// What `load`'s service needs now, if anything.
    fn need(&self, load: &ServiceLoad, forecasts: &[SurgeForecast], now: f64) -> Option<Need> {
        let st = &self.settings;
        let capacity = load.primary_capacity;
        let forecast = (st.mode != Mode::Reactive)
            .then(|| {
                forecasts
                    .iter()
                    .filter(|f| f.service == load.service && !f.anomaly)
                    .filter_map(|f| {
                        let end = f.end.unwrap_or(now + st.horizon_secs);
                        let add = f.peak_quantile - capacity;
                        if add <= 0.0 || end <= now {
                            return None;
                        }
                        // A surge that should have begun a margin ago, while demand stays
                        // calm, did not come (or is over): it holds and starts nothing.
                        let overdue = f.onset + st.lead_margin_secs <= now
                            && load.current_demand < st.release_below * capacity;
                        if overdue {
                            return None;
                        }
                        let duration = end - f.onset.max(now);
                        let excess = f.expected_excess(capacity);
                        Some(Need {
                            capacity: add,
                            ready_by: f.onset - st.lead_margin_secs,
                            end,
                            benefit: excess * duration * st.degraded_request_cost,
                            reactive: false,
                            why: format!(
                                "{} surge at {:.0}: peak {:.0} req/s at q{:.0} (median {:.0}) over capacity {:.0}, p={:.2}",
                                f.reason,
                                f.onset,
                                f.peak_quantile,
                                f.quantile * 100.0,
                                f.peak_median,
                                capacity,
                                f.probability
                            ),
                        })
                    })
                    // The soonest surge first, the biggest on a tie.
                    .min_by(|a, b| {
                        a.ready_by
                            .total_cmp(&b.ready_by)
                            .then(b.capacity.total_cmp(&a.capacity))
                    })
            })
            .flatten();
        let demand = load.current_demand;
        let anomaly = forecasts
            .iter()
            .any(|f| f.service == load.service && f.anomaly);
        let hot = match st.mode {
            Mode::Reactive => demand >= st.reactive_trigger * capacity,
            // An anomaly in progress: act on current load, from the reactive trigger.
            Mode::Predictive | Mode::Oracle if anomaly => demand >= st.reactive_trigger * capacity,
            // A surge nobody forecast: act on it as it happens.
            Mode::Predictive | Mode::Oracle => demand > capacity,
        };
        let current = hot.then(|| {
            let hold = st.min_hold_secs.max(st.release_hysteresis_secs);
            Need {
                capacity: demand * (1.0 + st.reactive_headroom) - capacity,
                ready_by: now,
                end: now + hold,
                benefit: (demand - capacity).max(0.0) * hold * st.degraded_request_cost,
                reactive: true,
                why: format!(
                    "demand {demand:.0} req/s now, {:.0}% of capacity {capacity:.0}",
                    100.0 * demand / capacity
                ),
            }
        });
        match (forecast, current) {
            // Overloaded now and covering it covers the forecast too: act now, reactively.
            (Some(f), Some(c)) if c.capacity >= f.capacity && f.ready_by > now => Some(c),
            // Both: the larger capacity, ready by the earlier time — an overload now is
            // never left waiting for a larger surge's lead time.
            (Some(f), Some(c)) => Some(Need {
                capacity: f.capacity.max(c.capacity),
                benefit: f.benefit.max(c.benefit),
                ready_by: f.ready_by.min(c.ready_by),
                ..f
            }),
            (f, c) => f.or(c).filter(|n| n.capacity > 0.0),
        }
    }

    /// Releases the spares of services that are calm: drain assigned spares held long
    /// enough, release spares that never took traffic. Returns the calm services.
    fn release_calm_services(
        &mut self,
        now: f64,
        loads: &BTreeMap<&str, &ServiceLoad>,
        needs: &BTreeMap<String, Need>,
        out: &mut Vec<Decision>,
    ) -> Vec<String> {
        let st = self.settings.clone();
        let services: Vec<String> = {
            let mut v: Vec<String> = self
                .pool
                .spares()
                .iter()
                .filter_map(|s| s.state.service().map(str::to_string))
                .collect();
            v.sort();
            v.dedup();
            v
        };
        let mut calm_services = Vec::new();
        for service in services {
            let longest_warmup = self
                .pool
                .of_service(&service)
                .map(crate::pool::Spare::expected_warmup_secs)
                .fold(0.0, f64::max);
            let imminent = needs
                .get(&service)
                .is_some_and(|n| n.ready_by <= now + longest_warmup + st.lead_margin_secs);
            let quiet = loads
                .get(service.as_str())
                .is_none_or(|l| l.current_demand < st.release_below * l.primary_capacity);
            let memory = self.memory.entry(service.clone()).or_default();
            if !quiet || imminent {
                memory.calm_since = None;
                continue;
            }
            let calm_since = *memory.calm_since.get_or_insert(now);
            if now - calm_since < st.release_hysteresis_secs {
                continue;
            }
            calm_services.push(service.clone());
            let spares: Vec<(String, SpareState)> = self
                .pool
                .of_service(&service)
                .map(|s| (s.spec.id.clone(), s.state.clone()))
                .collect();
            for (spare, state) in spares {
                match state {
                    SpareState::Assigned { started, since, .. }
                        if now - since >= st.min_hold_secs =>
                    {
                        self.set_state(
                            &spare,
                            SpareState::Draining {
                                service: service.clone(),
                                started,
                                assigned: since,
                                until: now + st.drain_secs,
                            },
                        );
                        self.decide(
                            out,
                            now,
                            Action::Drain {
                                spare,
                                service: service.clone(),
                            },
                            ReasonKind::SurgeOver,
                            format!(
                                "calm for {:.0} s (demand under {:.0}% of capacity, no surge within the lead window), held {:.0} s",
                                now - calm_since,
                                st.release_below * 100.0,
                                now - since
                            ),
                        );
                    }
                    SpareState::Warming { .. } | SpareState::Warm { .. } => {
                        self.set_state(&spare, SpareState::cold());
                        self.decide(
                            out,
                            now,
                            Action::Release {
                                spare,
                                service: service.clone(),
                            },
                            ReasonKind::CalledOff,
                            "the surge it was started for is no longer forecast; it took no traffic"
                                .into(),
                        );
                    }
                    _ => {}
                }
            }
        }
        calm_services
    }

    /// Covers the unmet needs from the free spares, best value first; starts the spares
    /// whose start time has come. Returns the plan of every service with a need.
    fn allocate(
        &mut self,
        now: f64,
        needs: &BTreeMap<String, Need>,
        calm: &[String],
        out: &mut Vec<Decision>,
    ) -> Vec<ServicePlan> {
        let st = self.settings.clone();
        let mut plans = Vec::new();
        // Value of covering each service, on the free pool as it is now.
        let mut order: Vec<(&String, &Need, f64)> = needs
            .iter()
            .filter(|(s, _)| !calm.contains(s))
            .map(|(s, n)| {
                let missing = n.capacity - self.provided(s);
                let cost = self
                    .cover_for(now, n, missing, &[])
                    .map_or(f64::INFINITY, |(c, _)| c.cost);
                (s, n, n.benefit / cost.max(1e-12))
            })
            .collect();
        order.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(b.0)));
        let mut taken: Vec<String> = Vec::new();
        for (service, need, _) in order {
            let provided = self.provided(service);
            let missing = need.capacity - provided;
            let running_cost = self.cost_of_running(service, need, now);
            let mut plan = ServicePlan {
                service: service.clone(),
                need: need.capacity,
                provided,
                ready_by: Some(need.ready_by),
                surge_end: Some(need.end),
                expected_benefit: need.benefit,
                expected_cost: running_cost,
                verdict: Verdict::Covered,
                planned: Vec::new(),
            };
            if missing <= 0.0 {
                plans.push(plan);
                continue;
            }
            let (cover, starts, partial) = match self.cover_for(now, need, missing, &taken) {
                Some((cover, starts)) => (cover, starts, None),
                None => {
                    // Not enough free spares: take what is left if it still pays.
                    let all = self.candidates(now, need, &taken, false);
                    let free: f64 = all.iter().map(|(c, _)| c.capacity).sum::<f64>().max(0.0);
                    let why = format!(
                        "pool exhausted: needs {missing:.0} req/s more, {free:.0} free after services of higher expected loss avoided per unit cost"
                    );
                    if all.is_empty() {
                        plan.verdict = Verdict::LeftOut { missing, why };
                        plans.push(plan);
                        continue;
                    }
                    let cover = crate::cover::Cover {
                        ids: all.iter().map(|(c, _)| c.id.clone()).collect(),
                        capacity: free,
                        cost: all.iter().map(|(c, _)| c.cost).sum(),
                    };
                    let starts = all.iter().map(|(c, t)| (c.id.clone(), *t)).collect();
                    (cover, starts, Some((missing - free, why)))
                }
            };
            let covered_share = (cover.capacity / missing).min(1.0);
            plan.expected_cost = running_cost + cover.cost;
            // A forecast is weighed against its cost; load over the trigger now is acted
            // on, as an autoscaler would (its loss is no longer a forecast).
            if !need.reactive {
                let benefit = need.benefit * covered_share * missing / need.capacity;
                if benefit < cover.cost {
                    plan.verdict = Verdict::NotWorthIt {
                        benefit,
                        cost: cover.cost,
                    };
                    plans.push(plan);
                    continue;
                }
            }
            let added_rate: f64 = cover
                .ids
                .iter()
                .filter_map(|id| self.pool.get(id))
                .map(|s| s.spec.cost_per_sec)
                .sum();
            let would = (self.pool.running_cost_per_sec() + added_rate) * 3_600.0;
            if would > st.spend_cap_per_hour {
                plan.verdict = Verdict::SpendCap {
                    would_spend_per_hour: would,
                };
                plans.push(plan);
                continue;
            }
            taken.extend(cover.ids.iter().cloned());
            for (spare, start) in starts {
                if start <= now {
                    let late = need.ready_by
                        < now
                            + self
                                .pool
                                .get(&spare)
                                .map_or(0.0, crate::pool::Spare::expected_warmup_secs);
                    self.set_state(
                        &spare,
                        SpareState::Warming {
                            service: service.clone(),
                            since: now,
                        },
                    );
                    let (reason, why) = if need.reactive {
                        (ReasonKind::Reactive, need.why.clone())
                    } else if late {
                        (
                            ReasonKind::Late,
                            format!(
                                "{}; started at once: its warm-up ends after the ready-by time {:.0}",
                                need.why, need.ready_by
                            ),
                        )
                    } else {
                        (
                            ReasonKind::LeadTime,
                            format!(
                                "{}; warm by {:.0} (onset minus {:.0} s margin)",
                                need.why, need.ready_by, st.lead_margin_secs
                            ),
                        )
                    };
                    self.decide(
                        out,
                        now,
                        Action::StartWarmup {
                            spare,
                            service: service.clone(),
                        },
                        reason,
                        why,
                    );
                } else {
                    plan.planned.push((spare, start));
                }
            }
            plan.verdict = match partial {
                Some((missing, why)) => Verdict::LeftOut { missing, why },
                None if !plan.planned.is_empty() && plan.planned.len() == cover.ids.len() => {
                    Verdict::Planned {
                        first_start: plan
                            .planned
                            .iter()
                            .map(|(_, t)| *t)
                            .fold(f64::INFINITY, f64::min),
                    }
                }
                None => Verdict::Covered,
            };
            plans.push(plan);
        }
        plans
    }

    /// What the spares already running for `service` cost until the surge ends.
    fn cost_of_running(&self, service: &str, need: &Need, now: f64) -> f64 {
        let tail = need.end - now + self.settings.min_hold_secs + self.settings.drain_secs;
        self.pool
            .of_service(service)
            .map(|s| s.spec.cost_per_sec * tail.max(0.0))
            .sum()
    }

    /// Free spares as cover candidates for `need`, each with its start time (`ready_by`
    /// minus its warm-up, or now) and its cost from then until released. With `on_time`,
    /// only spares that can be warm by `ready_by`.
    fn candidates(
        &self,
        now: f64,
        need: &Need,
        exclude: &[String],
        on_time: bool,
    ) -> Vec<(Candidate, f64)> {
        let st = &self.settings;
        self.pool
            .spares()
            .iter()
            .filter(|s| !exclude.contains(&s.spec.id))
            .filter(|s| match s.state {
                SpareState::Cold { retry_after, .. } => retry_after.is_none_or(|t| t <= now),
                _ => false,
            })
            .filter(|s| !on_time || now + s.expected_warmup_secs() <= need.ready_by)
            .map(|s| {
                let start = (need.ready_by - s.expected_warmup_secs()).max(now);
                let runs = need.end - start + st.min_hold_secs + st.drain_secs;
                (
                    Candidate {
                        id: s.spec.id.clone(),
                        capacity: s.spec.capacity,
                        cost: s.spec.cost_per_sec * runs.max(0.0),
                    },
                    start,
                )
            })
            .collect()
    }

    /// The cheapest cover of `missing` for `need`: among spares that can be warm in time if
    /// they suffice, else among all free spares. With the start time of each chosen spare.
    fn cover_for(
        &self,
        now: f64,
        need: &Need,
        missing: f64,
        exclude: &[String],
    ) -> Option<(crate::cover::Cover, Vec<(String, f64)>)> {
        for on_time in [true, false] {
            let candidates = self.candidates(now, need, exclude, on_time);
            let list: Vec<Candidate> = candidates.iter().map(|(c, _)| c.clone()).collect();
            if let Some(cover) = cheapest_cover(&list, missing) {
                let starts = candidates
                    .into_iter()
                    .filter(|(c, _)| cover.ids.contains(&c.id))
                    .map(|(c, t)| (c.id, t))
                    .collect();
                return Some((cover, starts));
            }
        }
        None
    }
}

/// Verdicts equal for logging purposes (planned start times may move a little).
fn same_verdict(a: Option<&Verdict>, b: &Verdict) -> bool {
    match (a, b) {
        (Some(Verdict::Planned { .. }), Verdict::Planned { .. }) => true,
        (Some(Verdict::LeftOut { .. }), Verdict::LeftOut { .. }) => true,
        (Some(Verdict::NotWorthIt { .. }), Verdict::NotWorthIt { .. }) => true,
        (Some(Verdict::SpendCap { .. }), Verdict::SpendCap { .. }) => true,
        (Some(a), b) => a == b,
        (None, _) => false,
    }
}
