//! The per-tick work of the elected controller worker, as pure functions of what it read
//! from shared data: resolve shadow readiness, score both clusters, update the plan, and
//! accumulate the telemetry report.

use crate::capacity::{CapacityEstimate, KneeFinding, OrcaCapacity, TickLoad};
use crate::config::{PluginConfig, ServiceConfig, ShadowConfig};
use crate::load::{Ewma, LoadScore, LoadSignals};
use crate::plan::{PlanInputs, RedirectPlan, SESSION_MIX_MS, SessionMix, smoothing};
use crate::window::{ClusterWindow, ServiceWindow};
use shadowmesh_wire::{RedirectState, ServiceTelemetry, ShadowRecord};

/// The shadow as the data path sees it: configuration overlaid with the control plane's
/// record when there is a current one.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowView {
    /// Cluster to route redirected requests to.
    pub cluster: String,
    /// Whether it may take traffic now.
    pub ready: bool,
    /// Its capacity.
    pub max_in_flight: u32,
}

impl ShadowView {
    /// Resolves readiness. An expired record counts as "not ready": the control plane
    /// that vouched for the shadow went silent, and a shadow it may have released must
    /// not receive traffic.
    pub fn resolve(
        config: &ShadowConfig,
        record: Option<&ShadowRecord>,
        now_ms: u64,
    ) -> ShadowView {
        match record {
            Some(r) => ShadowView {
                cluster: r.cluster.clone(),
                ready: r.warm && r.expires_at_ms.is_none_or(|t| now_ms < t) && r.max_in_flight > 0,
                max_in_flight: r.max_in_flight.max(1),
            },
            None => ShadowView {
                cluster: config.cluster.clone(),
                ready: config.ready,
                max_in_flight: config.max_in_flight,
            },
        }
    }
}

/// Whether `incoming` replaces the `current` record: it is not older — or the current one
/// has expired. (A restarted control plane without durable state may number its records
/// lower than the ones it issued before; once those expire, its word is the only one.)
pub fn supersedes(incoming: &ShadowRecord, current: Option<&ShadowRecord>, now_ms: u64) -> bool {
    current.is_none_or(|c| {
        c.generation <= incoming.generation || c.expires_at_ms.is_some_and(|t| now_ms >= t)
    })
}

/// Controller-side memory of one service (lives in the lease holder only).
#[derive(Debug, Clone, Default)]
pub struct RedirectController {
    latency: [Ewma; 2],
    orca: [Option<(f64, u64)>; 2],
    capacity: [CapacityEstimate; 2],
    orca_capacity: [OrcaCapacity; 2],
    sessions: SessionMix,
    /// Each worker's rates as its last span showed them, and when (ms).
    worker_rates: std::collections::BTreeMap<u64, (Rates, u64)>,
    findings: [Option<KneeFinding>; 2],
    last_tick_ms: Option<u64>,
    /// Traffic accumulated since the last report.
    pub report: ServiceWindow,
    /// Load scores at the last tick: primary, shadow.
    pub scores: [LoadScore; 2],
    /// In-flight counts at the last tick: primary, shadow.
    pub in_flight: [u64; 2],
}

/// A worker whose flush missed this many ticks no longer counts: one that stalled must not
/// take its traffic out of the demand (the excess would flood the primary), one that fell
/// idle (it flushes nothing) leaves within a second.
const ABSENT_TICKS: u64 = 10;

/// The time a tick covers: since the last tick; a first tick, or one whose clock did not
/// move on (or stepped back), counts as one `tick_ms`, so no rate divides by zero or less.
fn tick_elapsed_ms(last_ms: Option<u64>, now_ms: u64, tick_ms: u64) -> f64 {
    match last_ms {
        Some(t) if now_ms > t => (now_ms - t) as f64,
        _ => tick_ms as f64,
    }
}

/// Rates per ms.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Rates {
    /// Requests started.
    started: f64,
    /// Of those, sent to the shadow.
    to_shadow: f64,
    /// Requests completed: primary, shadow.
    completed: [f64; 2],
    /// Mean concurrency: primary, shadow.
    concurrency: [f64; 2],
}

/// What the controller read from shared data this tick.
#[derive(Debug, Clone)]
pub struct TickInput<'a> {
    /// Now, ms.
    pub now_ms: u64,
    /// Traffic all workers published since the last tick.
    pub window: ServiceWindow,
    /// In-flight counters: primary, shadow.
    pub in_flight: [u64; 2],
    /// Shadow readiness.
    pub shadow: &'a ShadowView,
}

impl RedirectController {
    /// One controller tick; returns the new plan.
    pub fn tick(
        &mut self,
        config: &PluginConfig,
        svc: &ServiceConfig,
        plan: &RedirectPlan,
        input: TickInput<'_>,
    ) -> RedirectPlan {
        let elapsed = tick_elapsed_ms(self.last_tick_ms, input.now_ms, config.tick_ms);
        if self.last_tick_ms.is_none() {
            // A worker that just took the lease over starts from what its predecessor
            // learned of the primary, not from nothing.
            self.capacity[0].seed(plan.unloaded_latency_ms, plan.knee);
        }
        self.last_tick_ms = Some(input.now_ms);
        let rates = self.rates(&input.window, input.now_ms, config.tick_ms, elapsed);
        let sides: [(&ClusterWindow, u32, Option<f64>); 2] = [
            (
                &input.window.primary,
                svc.primary.max_in_flight,
                svc.primary.latency_slo_ms,
            ),
            (
                &input.window.shadow,
                input.shadow.max_in_flight,
                svc.shadow.latency_slo_ms,
            ),
        ];
        for (i, (w, max_in_flight, slo)) in sides.into_iter().enumerate() {
            if w.latency.count > 0 {
                let mean_ms = w.latency.sum_us as f64 / w.latency.count as f64 / 1e3;
                self.latency[i].observe(mean_ms, config.latency_ewma_alpha);
            }
            let reported = w.orca_mean();
            if let Some(u) = reported {
                self.orca[i] = Some((u, input.now_ms));
            }
            let orca = self.orca[i]
                .filter(|(_, at)| input.now_ms.saturating_sub(*at) <= config.orca_stale_ms)
                .map(|(u, _)| u);
            let concurrency = rates.concurrency[i];
            let finding = self.capacity[i].observe(
                TickLoad {
                    completed: w.latency.count,
                    latency_sum_ms: w.latency.sum_us as f64 / 1e3,
                    concurrency,
                    throughput_per_ms: rates.completed[i],
                    arrivals_per_ms: if i == 0 {
                        rates.started - rates.to_shadow
                    } else {
                        rates.to_shadow
                    },
                    elapsed_ms: elapsed,
                    held_at_target: i == 0 && plan.state == RedirectState::Redirecting,
                },
                max_in_flight,
            );
            let finding =
                finding.or(self.orca_capacity[i].observe(concurrency, reported, max_in_flight));
            if finding.is_some() {
                self.findings[i] = finding;
            }
            let signals = LoadSignals {
                concurrency,
                capacity: self.capacity[i].effective(max_in_flight),
                latency_ewma_ms: self.latency[i].get(),
                latency_slo_ms: slo,
                orca_utilization: orca,
            };
            self.scores[i] = signals.score();
        }
        self.in_flight = input.in_flight;
        let alpha = smoothing(elapsed, SESSION_MIX_MS);
        self.sessions
            .observe(&input.window.routed, &input.window.spread, alpha);
        // Arrivals per ms × the unloaded latency = the concurrency they would cause.
        let offered = self.capacity[0].base_latency_ms().map(|base| {
            rates.started * base / self.capacity[0].effective(svc.primary.max_in_flight)
        });
        self.report.merge(&input.window);
        let mut next = plan.next(
            PlanInputs {
                primary: self.scores[0],
                shadow: self.scores[1],
                shadow_ready: input.shadow.ready,
                routed: input.window.routed,
                sessions: &self.sessions,
                now_ms: input.now_ms,
                elapsed_ms: elapsed,
                tick_ms: config.tick_ms,
                offered,
                measured_share: if rates.started > 0.0 {
                    (rates.to_shadow / rates.started).clamp(0.0, 1.0)
                } else {
                    0.0
                },
            },
            svc,
        );
        next.unloaded_latency_ms = self.capacity[0].base_latency_ms().unwrap_or(0.0);
        next.knee = self.capacity[0].knee().unwrap_or(0.0);
        next
    }

    /// The service's rates per ms: each worker's counts over its own span, summed; a worker
    /// whose flush missed this tick (it stalled, or lost a race) counts with the rates its
    /// last span showed, for up to [`ABSENT_TICKS`] ticks. A window without spans (none
    /// was closed) is counted over the tick, with no in-flight time.
    fn rates(&mut self, window: &ServiceWindow, now_ms: u64, tick_ms: u64, elapsed: f64) -> Rates {
        for (id, span) in &window.workers {
            if span.span_ms == 0 {
                continue;
            }
            let ms = span.span_ms as f64;
            let rates = Rates {
                started: span.started as f64 / ms,
                to_shadow: span.to_shadow as f64 / ms,
                completed: span.completed.map(|c| c as f64 / ms),
                concurrency: span.busy_us.map(|b| b as f64 / 1e3 / ms),
            };
            self.worker_rates.insert(*id, (rates, now_ms));
        }
        let horizon = ABSENT_TICKS * tick_ms;
        self.worker_rates
            .retain(|_, (_, seen)| now_ms.saturating_sub(*seen) <= horizon);
        if self.worker_rates.is_empty() {
            return Rates {
                started: window.routed.total() as f64 / elapsed,
                to_shadow: window.routed.to_shadow() as f64 / elapsed,
                completed: [window.primary.latency.count, window.shadow.latency.count]
                    .map(|c| c as f64 / elapsed),
                concurrency: [0.0; 2],
            };
        }
        self.worker_rates
            .values()
            .fold(Rates::default(), |sum, (r, _)| Rates {
                started: sum.started + r.started,
                to_shadow: sum.to_shadow + r.to_shadow,
                completed: [
                    sum.completed[0] + r.completed[0],
                    sum.completed[1] + r.completed[1],
                ],
                concurrency: [
                    sum.concurrency[0] + r.concurrency[0],
                    sum.concurrency[1] + r.concurrency[1],
                ],
            })
    }

    /// What the capacity checks found since the last call, primary first: a cluster seen
    /// to queue below its `max_in_flight`.
    pub fn take_findings(&mut self) -> [Option<KneeFinding>; 2] {
        std::mem::take(&mut self.findings)
    }

    /// The capacity load is counted against, primary first: `max_in_flight`, or the
    /// concurrency at which the cluster was seen to queue where that is lower.
    pub fn capacities(&self, svc: &ServiceConfig, shadow: &ShadowView) -> [f64; 2] {
        [
            self.capacity[0].effective(svc.primary.max_in_flight),
            self.capacity[1].effective(shadow.max_in_flight),
        ]
    }

    /// Turns the accumulated traffic into a report entry and starts a new one.
    pub fn take_report(
        &mut self,
        svc: &ServiceConfig,
        shadow: &ShadowView,
        plan: &RedirectPlan,
    ) -> ServiceTelemetry {
        let w = std::mem::take(&mut self.report);
        let below = |i: usize, max_in_flight: u32| {
            let c = self.capacity[i].effective(max_in_flight);
            (c < f64::from(max_in_flight)).then_some(c)
        };
        ServiceTelemetry {
            service: svc.name.clone(),
            requests: w.primary.latency.count + w.shadow.latency.count,
            redirected: w.redirected(),
            fallbacks: w.fallbacks,
            state: plan.state,
            redirect_share: plan.share,
            primary: w.primary.telemetry(
                &svc.primary.cluster,
                self.in_flight[0],
                self.scores[0].0,
                below(0, svc.primary.max_in_flight),
            ),
            shadow: w.shadow.telemetry(
                &shadow.cluster,
                self.in_flight[1],
                self.scores[1].0,
                below(1, shadow.max_in_flight),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_records_supersede_and_an_expired_one_yields_to_any() {
        let rec = |generation, expires_at_ms| ShadowRecord {
            service: "s".into(),
            cluster: "c".into(),
            warm: true,
            max_in_flight: 1,
            generation,
            expires_at_ms,
        };
        assert!(supersedes(&rec(1, None), None, 0));
        assert!(
            supersedes(&rec(5, Some(100)), Some(&rec(5, Some(50))), 10),
            "renewal"
        );
        assert!(
            !supersedes(&rec(4, Some(100)), Some(&rec(5, Some(50))), 10),
            "older, current still valid"
        );
        assert!(
            supersedes(&rec(4, Some(100)), Some(&rec(5, Some(50))), 50),
            "older, current expired"
        );
        assert!(
            !supersedes(&rec(4, None), Some(&rec(5, None)), u64::MAX),
            "never expires"
        );
    }
    use shadowmesh_wire::RedirectState;

    fn config() -> PluginConfig {
        PluginConfig::parse(
            br#"{"tick_ms":100,"services":[{"name":"s","primary":{"cluster":"p","max_in_flight":10},
                "shadow":{"cluster":"sh","max_in_flight":10,"ready":true}}]}"#,
        )
        .unwrap()
    }

    /// A tick's window: `requests` completed on the primary, each `latency_us`, and
    /// `busy_us` of in-flight time.
    fn window_with(requests: u64, latency_us: u64, busy_us: u64) -> ServiceWindow {
        let mut w = ServiceWindow::default();
        for _ in 0..requests {
            w.primary.latency.record(latency_us);
            w.count_route(None, crate::window::Side::Primary, false);
        }
        w.close_span(1, 100, [busy_us, 0]);
        w
    }

    /// A tick's input at `now_ms` with nothing in flight at the tick.
    fn idle_input(now_ms: u64, window: ServiceWindow, shadow: &ShadowView) -> TickInput<'_> {
        TickInput {
            now_ms,
            window,
            in_flight: [0, 0],
            shadow,
        }
    }

    #[test]
    fn saturated_primary_enters_redirecting() {
        let c = config();
        let svc = &c.services[0];
        let shadow = ShadowView::resolve(&svc.shadow, None, 0);
        let mut ctl = RedirectController::default();
        // 1.2 s of in-flight time in 100 ms = 12 concurrent on a capacity of 10.
        let plan = ctl.tick(
            &c,
            svc,
            &RedirectPlan::default(),
            TickInput {
                now_ms: 100,
                window: window_with(100, 12_000, 1_200_000),
                in_flight: [12, 0],
                shadow: &shadow,
            },
        );
        assert_eq!(plan.state, RedirectState::Redirecting);
        assert!((ctl.scores[0].0 - 1.2).abs() < 0.01, "{:?}", ctl.scores);
        let report = ctl.take_report(svc, &shadow, &plan);
        assert_eq!(report.requests, 100);
        assert_eq!(report.primary.in_flight, 12);
        assert!(ctl.report.is_empty());
    }

    #[test]
    fn a_tick_covers_the_time_since_the_last_or_one_tick() {
        assert_eq!(tick_elapsed_ms(None, 5_000, 100), 100.0, "the first tick");
        assert_eq!(tick_elapsed_ms(Some(100), 350, 100), 250.0, "a late tick");
        assert_eq!(tick_elapsed_ms(Some(350), 351, 100), 1.0);
        assert_eq!(
            tick_elapsed_ms(Some(350), 350, 100),
            100.0,
            "the clock did not move"
        );
        assert_eq!(
            tick_elapsed_ms(Some(400), 350, 100),
            100.0,
            "the clock stepped back"
        );
    }

    #[test]
    fn the_primary_is_judged_calm_by_the_requests_that_reached_it() {
        // Tick 1: 10 requests of 10 ms, one in flight of 10: calm, the unloaded latency is
        // 10 ms. Tick 2: 65 arrive, 60 are sent to the shadow, the 5 the primary took ran
        // 20 ms. Its arrivals (5 per 100 ms × 10 ms = 0.5 in flight) are calm, so the
        // average takes them in: (0.95 × 100 + 100) / (0.95 × 10 + 5) = 13.45 ms. Judged by
        // the service's 65 (or the shadow's 60) arrivals it would not be calm.
        let c = config();
        let svc = &c.services[0];
        let shadow = ShadowView::resolve(&svc.shadow, None, 0);
        let mut ctl = RedirectController::default();
        let input = |now_ms, window| idle_input(now_ms, window, &shadow);
        let plan = ctl.tick(
            &c,
            svc,
            &RedirectPlan::default(),
            input(100, window_with(10, 10_000, 100_000)),
        );
        assert!((plan.unloaded_latency_ms - 10.0).abs() < 1e-9, "{plan:?}");
        let mut w = ServiceWindow::default();
        for _ in 0..5 {
            w.primary.latency.record(20_000);
            w.count_route(None, crate::window::Side::Primary, false);
        }
        for _ in 0..60 {
            w.count_route(None, crate::window::Side::Shadow, false);
        }
        w.close_span(1, 100, [100_000, 0]);
        let plan = ctl.tick(&c, svc, &RedirectPlan::default(), input(200, w));
        let want = (0.95 * 100.0 + 100.0) / (0.95 * 10.0 + 5.0);
        assert!((plan.unloaded_latency_ms - want).abs() < 1e-9, "{plan:?}");
        assert!((plan.measured_share - 60.0 / 65.0).abs() < 1e-9, "{plan:?}");
        // A tick in which nothing arrived while five requests still ran (a stalled
        // upstream) measured no share (not 0/0).
        let plan = ctl.tick(
            &c,
            svc,
            &RedirectPlan::default(),
            input(300, window_with(0, 0, 500_000)),
        );
        assert!(ctl.scores[0].0 > 0.0);
        assert_eq!(plan.measured_share, 0.0, "{plan:?}");
    }

    #[test]
    fn rates_are_each_workers_counts_over_its_own_span_summed() {
        use crate::window::WorkerSpan;
        let mut ctl = RedirectController::default();
        let mut w = ServiceWindow::default();
        w.workers.insert(
            1,
            WorkerSpan {
                span_ms: 100,
                started: 10,
                to_shadow: 2,
                completed: [5, 1],
                busy_us: [50_000, 10_000],
            },
        );
        w.workers.insert(
            2,
            WorkerSpan {
                span_ms: 50,
                started: 20,
                to_shadow: 5,
                completed: [10, 4],
                busy_us: [100_000, 0],
            },
        );
        // Worker 1: 0.1 started/ms, 0.02 to the shadow, [0.05, 0.01] completed, 0.5 and 0.1
        // in flight; worker 2: 0.4, 0.1, [0.2, 0.08], 2.0 and 0.
        let r = ctl.rates(&w, 1_000, 100, 100.0);
        let near = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(near(r.started, 0.5) && near(r.to_shadow, 0.12), "{r:?}");
        assert!(
            near(r.completed[0], 0.25) && near(r.completed[1], 0.09),
            "{r:?}"
        );
        assert!(
            near(r.concurrency[0], 2.5) && near(r.concurrency[1], 0.1),
            "{r:?}"
        );
    }

    #[test]
    fn a_window_without_spans_is_counted_over_the_tick() {
        // 30 started (10 to the shadow), 12 and 6 completed, over 200 ms; no in-flight time.
        let mut w = ServiceWindow::default();
        for i in 0..30 {
            let side = if i < 10 {
                crate::window::Side::Shadow
            } else {
                crate::window::Side::Primary
            };
            w.count_route(None, side, false);
        }
        for _ in 0..12 {
            w.primary.latency.record(1_000);
        }
        for _ in 0..6 {
            w.shadow.latency.record(1_000);
        }
        let r = RedirectController::default().rates(&w, 1_000, 100, 200.0);
        assert_eq!(
            r,
            Rates {
                started: 0.15,
                to_shadow: 0.05,
                completed: [0.06, 0.03],
                concurrency: [0.0; 2],
            }
        );
    }

    #[test]
    fn a_report_counts_both_sides_and_names_a_capacity_only_below_max_in_flight() {
        let c = config();
        let svc = &c.services[0];
        let record = ShadowRecord {
            service: "s".into(),
            cluster: "dyn".into(),
            warm: true,
            max_in_flight: 4,
            generation: 1,
            expires_at_ms: None,
        };
        let shadow = ShadowView::resolve(&svc.shadow, Some(&record), 0);
        let mut ctl = RedirectController::default();
        // The lease's last holder found the primary queueing at 6 of its 10.
        let learned = RedirectPlan {
            unloaded_latency_ms: 10.0,
            knee: 6.0,
            ..Default::default()
        };
        let mut w = window_with(7, 10_000, 10_000);
        for _ in 0..3 {
            w.shadow.latency.record(10_000);
            w.count_route(None, crate::window::Side::Shadow, false);
        }
        let plan = ctl.tick(
            &c,
            svc,
            &learned,
            TickInput {
                now_ms: 100,
                window: w,
                in_flight: [0, 0],
                shadow: &shadow,
            },
        );
        assert_eq!(ctl.capacities(svc, &shadow), [6.0, 4.0]);
        let report = ctl.take_report(svc, &shadow, &plan);
        assert_eq!(report.requests, 10);
        assert_eq!(report.primary.capacity_in_flight, Some(6.0));
        assert_eq!(
            report.shadow.capacity_in_flight, None,
            "at its max_in_flight"
        );
    }

    #[test]
    fn latency_over_the_slo_loads_the_primary_as_its_smoothed_ratio() {
        // Little in flight (10 ms of 100 against 10), but every request took 150 ms against an
        // SLO of 100: the primary is at 1.5. Then 50 ms requests: the average moves half way
        // (alpha 0.5) to 100 ms, a load of 1.0.
        let c = PluginConfig::parse(
            br#"{"tick_ms":100,"latency_ewma_alpha":0.5,"services":[{"name":"s",
                "primary":{"cluster":"p","max_in_flight":10,"latency_slo_ms":100},
                "shadow":{"cluster":"sh","max_in_flight":10,"ready":true}}]}"#,
        )
        .unwrap();
        let svc = &c.services[0];
        let shadow = ShadowView::resolve(&svc.shadow, None, 0);
        let mut ctl = RedirectController::default();
        let input = |now_ms, window| idle_input(now_ms, window, &shadow);
        ctl.tick(
            &c,
            svc,
            &RedirectPlan::default(),
            input(100, window_with(4, 150_000, 10_000)),
        );
        assert!((ctl.scores[0].0 - 1.5).abs() < 1e-9, "{:?}", ctl.scores);
        ctl.tick(
            &c,
            svc,
            &RedirectPlan::default(),
            input(200, window_with(6, 50_000, 10_000)),
        );
        assert!((ctl.scores[0].0 - 1.0).abs() < 1e-9, "{:?}", ctl.scores);
    }

    #[test]
    fn stale_orca_is_ignored() {
        let c = config();
        let svc = &c.services[0];
        let shadow = ShadowView::resolve(&svc.shadow, None, 0);
        let mut ctl = RedirectController::default();
        let mut w = ServiceWindow::default();
        w.primary.orca_sum = 0.95;
        w.primary.orca_reports = 1;
        let input = |now_ms, window| idle_input(now_ms, window, &shadow);
        ctl.tick(&c, svc, &RedirectPlan::default(), input(100, w));
        assert_eq!(ctl.scores[0], LoadScore(0.95));
        ctl.tick(
            &c,
            svc,
            &RedirectPlan::default(),
            input(5_000, ServiceWindow::default()),
        );
        assert_eq!(ctl.scores[0], LoadScore(0.0));
    }

    #[test]
    fn control_plane_record_overrides_and_expires() {
        let c = config();
        let cfg = &c.services[0].shadow;
        let record = ShadowRecord {
            service: "s".into(),
            cluster: "dyn".into(),
            warm: true,
            max_in_flight: 4,
            generation: 1,
            expires_at_ms: Some(1_000),
        };
        let v = ShadowView::resolve(cfg, Some(&record), 999);
        assert_eq!(
            (v.cluster.as_str(), v.ready, v.max_in_flight),
            ("dyn", true, 4)
        );
        assert!(!ShadowView::resolve(cfg, Some(&record), 1_000).ready);
        assert!(ShadowView::resolve(cfg, None, 5_000).ready);
    }
}
