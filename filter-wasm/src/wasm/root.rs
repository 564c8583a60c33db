//! The root context of one worker: configuration, and once per tick the flush of this
//! worker's counts into shared data and — on the worker holding the lease — the plan
//! update of every service.

use super::abi::{self, buffer, level, log, now_ns};
use super::http::AtreHttp;
use super::metrics::{GlobalMetrics, ServiceMetrics};
use super::report::Reporter;
use super::sync::Syncer;
use super::{GenerationGauge, HostStore, ServiceRuntime, Worker, read_plan, read_shadow};
use crate::config::PluginConfig;
use crate::control::{RedirectController, ShadowView, TickInput};
use crate::decision::Spreader;
use crate::plan::RedirectPlan;
use crate::session_state::StateRole;
use crate::shared::{self, SharedStore, keys};
use crate::window::ServiceWindow;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use shadowmesh_wire::RedirectState;
use std::cell::RefCell;
use std::rc::Rc;

#[derive(Default)]
pub(super) struct AtreRoot {
    worker: Option<Rc<RefCell<Worker>>>,
    /// Random identity for the controller lease.
    id: u64,
    ticks: u64,
    /// Telemetry, used while this worker holds the lease.
    reporter: Option<Reporter>,
    /// State synchronization's calls, made while this worker holds the lease.
    sync: Syncer,
}

impl Context for AtreRoot {
    /// The VM is going away (a new filter configuration replaces it): the changes still
    /// queued on this worker reach the table, which outlives the VM in Envoy's shared data.
    fn on_done(&mut self) -> bool {
        if let Some(worker) = &self.worker {
            flush_before_leaving(worker);
        }
        true
    }

    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some(worker) = &self.worker else { return };
        let worker = worker.borrow();
        if self.sync.on_answer(token, body_size, &worker) {
            return;
        }
        if let Some(reporter) = &mut self.reporter {
            reporter.on_answer(token, body_size, &worker);
        }
    }
}

impl RootContext for AtreRoot {
    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = abi::get_buffer(buffer::PLUGIN_CONFIGURATION, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let config = match PluginConfig::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                // Envoy rejects the configuration when on_configure returns false; this
                // line is the operator's only clue, so it names the field.
                log(level::ERROR, &e.to_string());
                return false;
            }
        };
        // Changes captured under the old configuration reach the table first: their
        // sessions' entries count them as pending until they do.
        if let Some(old) = self.worker.take() {
            flush_before_leaving(&old);
        }
        // `node.id` is resolved at the first report: not every host exposes it this early.
        self.reporter = Some(Reporter::new(
            config.proxy_id.clone().unwrap_or_default(),
            now_ns() / 1_000_000,
        ));
        // Identity for the lease: wasi's random_get seeds std's RandomState.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(now_ns());
        self.id = h.finish();
        super::sync::claim_incarnation(self.id);
        let services = config
            .services
            .iter()
            .map(|s| ServiceRuntime {
                plan: RedirectPlan::default(),
                plan_read_ms: 0,
                shadow: ShadowView::resolve(&s.shadow, None, 0),
                spreader: Spreader::default(),
                window: ServiceWindow::default(),
                started: 0,
                captured: 0,
                busy: Default::default(),
                // The first span runs from here: requests served before the first flush
                // are this worker's too (a span of unknown start would be dropped, and
                // the controller would miss the worker for a tick).
                span_start_ms: now_ns() / 1_000_000,
                in_flight_delta: [0, 0],
                in_flight_keys: [
                    keys::in_flight(&s.name, "primary"),
                    keys::in_flight(&s.name, "shadow"),
                ],
                metrics: ServiceMetrics::define(&s.name),
                state_queue: Default::default(),
                seen: Default::default(),
                // Only a publisher's request path reads it.
                generation: match &s.state_sync {
                    Some(c) if c.role == StateRole::Publisher => GenerationGauge::define(&s.name),
                    _ => GenerationGauge::default(),
                },
                controller: RedirectController::default(),
                warned_ms: [None; 2],
            })
            .collect();
        let metrics = GlobalMetrics::define();
        let tick_ms = config.tick_ms as u32;
        self.worker = Some(Rc::new(RefCell::new(Worker {
            config,
            services,
            metrics,
            spoofed: 0,
        })));
        if abi::set_tick_period_ms(tick_ms).is_err() {
            log(level::ERROR, "shadowmesh: cannot set tick period");
            return false;
        }
        true
    }

    fn on_tick(&mut self) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let mut guard = worker.borrow_mut();
        let worker = &mut *guard;
        let now_ns = now_ns();
        let now_ms = now_ns / 1_000_000;
        flush_local(worker, self.id, now_ns);
        // Before the lease holder's publish, so this worker's changes go in this tick.
        super::sync::flush_captures(worker, now_ms);
        let ttl = worker.config.tick_ms * 3;
        if shared::acquire_lease(&HostStore, self.id, now_ms, ttl) {
            self.control(worker, now_ms);
            self.sync.tick(worker, now_ms);
        } else {
            self.sync.idle();
        }
        for (svc, rt) in worker
            .config
            .services
            .iter()
            .zip(worker.services.iter_mut())
        {
            rt.plan = read_plan(svc);
            rt.shadow = read_shadow(svc, now_ms);
            rt.plan_read_ms = now_ms;
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let worker = self.worker.clone()?;
        Some(Box::new(AtreHttp::new(worker)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A worker about to be replaced or dropped: its queued state changes reach the table
/// (which lives on in Envoy's shared data) first. There is no next tick to retry what the
/// host refused (a lost race, mostly), so it tries a few times now: a change left behind
/// would keep its session pending — on the primary — for as long as the table holds it.
fn flush_before_leaving(worker: &Rc<RefCell<Worker>>) {
    const ATTEMPTS: usize = 3;
    if let Ok(mut w) = worker.try_borrow_mut() {
        for _ in 0..ATTEMPTS {
            super::sync::flush_captures(&mut w, now_ns() / 1_000_000);
            if w.services.iter().all(|rt| rt.state_queue.is_empty()) {
                break;
            }
        }
    }
}

/// Moves this worker's counts into shared data and Envoy's stats; `worker_id` names its
/// span.
fn flush_local(worker: &mut Worker, worker_id: u64, now_ns: u64) {
    let mut errors = 0;
    for (svc, rt) in worker
        .config
        .services
        .iter()
        .zip(worker.services.iter_mut())
    {
        // In-flight time up to now (requests still running count too), over the span
        // since this worker's last flush.
        let busy = [rt.busy[0].take_us(now_ns), rt.busy[1].take_us(now_ns)];
        let now_ms = now_ns / 1_000_000;
        if busy != [0, 0] || !rt.window.is_empty() {
            let span_ms = now_ms.saturating_sub(rt.span_start_ms);
            rt.window.close_span(worker_id, span_ms, busy);
        }
        rt.span_start_ms = now_ms;
        rt.metrics.requests.add(std::mem::take(&mut rt.started));
        rt.metrics
            .state
            .captured
            .add(std::mem::take(&mut rt.captured));
        for (delta, key) in rt.in_flight_delta.iter_mut().zip(rt.in_flight_keys.iter()) {
            if *delta != 0 {
                match shared::add_counter(&HostStore, key, *delta) {
                    Ok(_) => *delta = 0,
                    // Kept and retried next tick: an increment is never lost.
                    Err(_) => errors += 1,
                }
            }
        }
        if rt.window.is_empty() {
            continue;
        }
        let local = std::mem::take(&mut rt.window);
        let merged =
            shared::update_json::<ServiceWindow, _>(&HostStore, &keys::window(&svc.name), |cur| {
                let mut next = cur.cloned().unwrap_or_default();
                next.merge(&local);
                Some(next)
            });
        match merged {
            // Envoy's stats count what the controller got, once.
            Ok(_) => {
                rt.metrics.redirected.add(local.redirected());
                rt.metrics.fallbacks.add(local.fallbacks);
                rt.metrics
                    .orca_malformed
                    .add(local.primary.orca_malformed + local.shadow.orca_malformed);
            }
            // Kept for the next tick rather than lost (and counted in the stats then).
            Err(_) => {
                rt.window = local;
                errors += 1;
            }
        }
    }
    worker
        .metrics
        .spoofed_route_headers
        .add(std::mem::take(&mut worker.spoofed));
    worker.metrics.shared_data_errors.add(errors);
}

impl AtreRoot {
    /// The lease holder's tick: consume windows, update plans, maybe report.
    fn control(&mut self, worker: &mut Worker, now_ms: u64) {
        let Worker {
            config, services, ..
        } = worker;
        for (i, (svc, rt)) in config.services.iter().zip(services.iter_mut()).enumerate() {
            let window = shared::update_json::<ServiceWindow, _>(
                &HostStore,
                &keys::window(&svc.name),
                |cur| cur.map(|_| ServiceWindow::default()),
            )
            .ok()
            .flatten()
            .unwrap_or_default();
            let in_flight = [
                shared::read_counter(&HostStore, &rt.in_flight_keys[0]),
                shared::read_counter(&HostStore, &rt.in_flight_keys[1]),
            ];
            let shadow = read_shadow(svc, now_ms);
            let old = read_plan(svc);
            let plan = rt.controller.tick(
                config,
                svc,
                &old,
                TickInput {
                    now_ms,
                    window,
                    in_flight,
                    shadow: &shadow,
                },
            );
            if plan.state != old.state {
                log(
                    level::INFO,
                    &format!(
                        "shadowmesh: service {} {:?} -> {:?} (primary load {:.2}, demand {:.2}, share {:.2})",
                        svc.name, old.state, plan.state, plan.primary_load, plan.demand, plan.share
                    ),
                );
            }
            if plan.state == RedirectState::Redirecting {
                // Every tick's control inputs, for `--component-log-level wasm:debug`.
                log(
                    level::DEBUG,
                    &format!(
                        "shadowmesh: service {} tick: {}",
                        svc.name,
                        plan.tick_line()
                    ),
                );
            }
            if plan.pins.after != old.pins.after {
                log(
                    level::INFO,
                    &format!(
                        "shadowmesh: service {} pins sessions below {:.3} from {} ms (steady demand {:.2}, inflation {:.2}, measured share {:.2}, primary load {:.2})",
                        svc.name,
                        plan.pins.after,
                        plan.pins.from_ms,
                        plan.steady_demand,
                        plan.steady_inflation.get(),
                        plan.measured_share,
                        plan.primary_load
                    ),
                );
            }
            let [primary_knee, shadow_knee] = rt.controller.take_findings();
            let clusters = [
                (
                    "primary",
                    svc.primary.cluster.as_str(),
                    svc.primary.max_in_flight,
                    primary_knee,
                ),
                (
                    "shadow",
                    shadow.cluster.as_str(),
                    shadow.max_in_flight,
                    shadow_knee,
                ),
            ];
            for (k, (side, cluster, max_in_flight, finding)) in clusters.into_iter().enumerate() {
                // At most one warning a minute per cluster: a knee that wanders (or an
                // upstream whose reports do) must not flood the log; the capacity gauge
                // shows every change.
                let quiet = rt.warned_ms[k]
                    .is_some_and(|t| now_ms.saturating_sub(t) < CAPACITY_WARNING_EVERY_MS);
                if let Some(f) = finding.filter(|_| !quiet) {
                    rt.warned_ms[k] = Some(now_ms);
                    log(
                        level::WARN,
                        &capacity_warning(i, side, cluster, max_in_flight, f),
                    );
                }
            }
            if let Ok(bytes) = serde_json::to_vec(&plan) {
                let _ = HostStore.set(&keys::plan(&svc.name), &bytes, None);
            }
            let m = rt.metrics;
            m.in_flight_primary.set(in_flight[0]);
            m.in_flight_shadow.set(in_flight[1]);
            let permille = |v: f64| (v * 1000.0).round() as u64;
            m.redirect_share_permille.set(permille(plan.share));
            m.measured_share_permille.set(permille(plan.measured_share));
            m.session_pins_permille.set(permille(plan.pins.at(now_ms)));
            let [primary_capacity, shadow_capacity] = rt.controller.capacities(svc, &shadow);
            m.primary_capacity.set(primary_capacity.round() as u64);
            m.shadow_capacity.set(shadow_capacity.round() as u64);
            m.primary_load_permille
                .set((rt.controller.scores[0].0 * 1000.0).round() as u64);
            m.shadow_load_permille
                .set((rt.controller.scores[1].0 * 1000.0).round() as u64);
            m.redirecting
                .set(u64::from(plan.state == RedirectState::Redirecting));
        }
        let ticks_per_report = config.ticks_per_report();
        self.ticks += 1;
        if self.ticks.is_multiple_of(ticks_per_report)
            && let Some(reporter) = &mut self.reporter
        {
            reporter.send(worker, now_ms);
        }
    }
}

/// The least time between two capacity warnings of one cluster (ms).
const CAPACITY_WARNING_EVERY_MS: u64 = 60_000;

/// The warning for a cluster seen to queue below its `max_in_flight`: names the field,
/// what was measured, and what the filter does about it.
fn capacity_warning(
    service: usize,
    side: &str,
    cluster: &str,
    max_in_flight: u32,
    f: crate::capacity::KneeFinding,
) -> String {
    use crate::capacity::KneeEvidence;
    let field = if side == "primary" {
        format!("services[{service}].primary.max_in_flight")
    } else {
        // The control plane's record may set the shadow's capacity; the field is the default.
        format!("services[{service}].shadow.max_in_flight (or the control plane's record)")
    };
    let seen = match f.evidence {
        KneeEvidence::Latency {
            latency_ms,
            base_latency_ms,
        } => format!(
            "queues above about {knee:.1} requests at once: mean latency {latency_ms:.1} ms at \
             {c:.1} in flight, {ratio:.1}x its unloaded {base_latency_ms:.1} ms",
            knee = f.knee,
            c = f.concurrency,
            ratio = latency_ms / base_latency_ms,
        ),
        KneeEvidence::Orca { utilization } => format!(
            "reports (ORCA) utilization {utilization:.2} at {c:.1} in flight: it is full at \
             about {knee:.1} requests at once",
            knee = f.knee,
            c = f.concurrency,
        ),
    };
    format!(
        "shadowmesh: {field} is {max_in_flight}, but cluster {cluster} {seen}. A target inside \
         the queue cannot be held (the queue only grows or drains); set the field to what the \
         cluster serves at once (filter-wasm/README.md, \"Choosing max_in_flight\"){counted}",
        counted = match f.evidence {
            KneeEvidence::Latency { .. } => format!(
                ". Until then load is counted against {:.1}, until the cluster serves more at \
                 once without queueing",
                f.knee
            ),
            KneeEvidence::Orca { .. } => String::new(),
        },
    )
}
