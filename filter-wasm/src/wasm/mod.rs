//! Proxy-Wasm glue: contexts, hostcalls, metrics.
//!
//! Rule for this module: every hostcall goes through [`abi`], whose functions return every
//! host status as a value, and every error is absorbed (counted or logged) — never
//! unwrapped. The SDK's own wrappers (`proxy_wasm::hostcalls`, the `Context` helpers)
//! panic on statuses they do not expect, and a panic in a Wasm filter is a VM fault: with
//! `failure_policy: FAIL_OPEN` the request survives, but the VM is gone for every request
//! after it.

use crate::config::{PluginConfig, ServiceConfig, SessionKeySource};
use crate::control::{ServiceController, ShadowView, TickInput};
use crate::decision::{RedirectDecision, Spreader, cookie_value, decide, session_point};
use crate::orca::{ORCA_HEADER, OrcaReport};
use crate::plan::RedirectPlan;
use crate::shared::{self, SetError, SharedStore, keys};
use crate::window::{ClusterWindow, ServiceWindow};
mod abi;

use abi::{buffer, level, map, metric};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use shadowmesh_wire::{
    RedirectState, ShadowRecord, TELEMETRY_SCHEMA, TelemetryAck, TelemetryReport,
};
use std::cell::RefCell;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(AtreRoot::default()) });
}}

use abi::{log, now_ns};

/// Envoy's shared data through the hostcalls.
struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        abi::get_shared_data(key).unwrap_or((None, None))
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        match abi::set_shared_data(key, value, cas) {
            Ok(()) => Ok(()),
            Err(abi::Status::CAS_MISMATCH) => Err(SetError::CasMismatch),
            Err(_) => Err(SetError::Host),
        }
    }
}

/// A metric id, or nothing if the host refused to define it (then updates are no-ops).
#[derive(Clone, Copy, Default)]
struct Metric(Option<u32>);

impl Metric {
    fn define(kind: u32, name: &str) -> Metric {
        Metric(abi::define_metric(kind, name).ok())
    }
    fn add(self, delta: u64) {
        if let (Some(id), true) = (self.0, delta > 0) {
            let _ = abi::increment_metric(id, delta as i64);
        }
    }
    fn set(self, value: u64) {
        if let Some(id) = self.0 {
            let _ = abi::record_metric(id, value);
        }
    }
}

/// Per-service metrics. Names are `shadowmesh.service.<name>.<metric>`; the Envoy
/// bootstraps turn `<name>` into a `shadowmesh_service` Prometheus label.
#[derive(Clone, Copy, Default)]
struct ServiceMetrics {
    requests: Metric,
    redirected: Metric,
    fallbacks: Metric,
    orca_malformed: Metric,
    in_flight_primary: Metric,
    in_flight_shadow: Metric,
    redirect_share_permille: Metric,
    primary_load_permille: Metric,
    shadow_load_permille: Metric,
    redirecting: Metric,
    latency_ms: Metric,
}

impl ServiceMetrics {
    fn define(service: &str) -> ServiceMetrics {
        let n = |m: &str| format!("shadowmesh.service.{service}.{m}");
        let counter = |m: &str| Metric::define(metric::COUNTER, &n(m));
        let gauge = |m: &str| Metric::define(metric::GAUGE, &n(m));
        ServiceMetrics {
            requests: counter("requests_total"),
            redirected: counter("redirected_total"),
            fallbacks: counter("fallbacks_total"),
            orca_malformed: counter("orca_malformed_total"),
            in_flight_primary: gauge("in_flight_primary"),
            in_flight_shadow: gauge("in_flight_shadow"),
            redirect_share_permille: gauge("redirect_share_permille"),
            primary_load_permille: gauge("primary_load_permille"),
            shadow_load_permille: gauge("shadow_load_permille"),
            redirecting: gauge("redirecting"),
            latency_ms: Metric::define(metric::HISTOGRAM, &n("latency_ms")),
        }
    }
}

/// Filter-wide metrics.
#[derive(Clone, Copy, Default)]
struct GlobalMetrics {
    spoofed_route_headers: Metric,
    telemetry_reports: Metric,
    telemetry_failures: Metric,
    shared_data_errors: Metric,
}

/// What one worker knows about one service.
struct ServiceRuntime {
    /// Plan as last read from shared data.
    plan: RedirectPlan,
    /// Shadow readiness as last read.
    shadow: ShadowView,
    spreader: Spreader,
    /// Traffic counted on this worker since its last flush.
    window: ServiceWindow,
    /// Requests started on this worker since the last metric flush.
    started: u64,
    /// Net change of this worker's in-flight requests (primary, shadow) since it last
    /// added them to the shared counters. Batched per tick: only the controller reads the
    /// shared counters, once per tick, so per-request CAS round trips on Envoy's
    /// mutex-guarded shared store would buy nothing but cost.
    in_flight_delta: [i64; 2],
    /// Shared-data keys of the in-flight counters (primary, shadow), built once.
    in_flight_keys: [String; 2],
    metrics: ServiceMetrics,
    /// Used only while this worker holds the controller lease.
    controller: ServiceController,
}

impl ServiceRuntime {
    /// This worker's not-yet-published counts for one side.
    fn window_mut(&mut self, side: Side) -> &mut ClusterWindow {
        match side {
            Side::Primary => &mut self.window.primary,
            Side::Shadow => &mut self.window.shadow,
        }
    }
}

/// State shared by a worker's root context and its HTTP contexts.
struct Worker {
    config: PluginConfig,
    services: Vec<ServiceRuntime>,
    metrics: GlobalMetrics,
    spoofed: u64,
}

#[derive(Default)]
struct AtreRoot {
    worker: Option<Rc<RefCell<Worker>>>,
    /// Random identity for the controller lease.
    id: u64,
    proxy: String,
    ticks: u64,
    report_seq: u64,
    report_start_ms: u64,
    /// Outstanding telemetry call and when it was sent.
    pending_report: Option<(u32, u64)>,
}

impl Context for AtreRoot {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if self.pending_report.map(|(t, _)| t) != Some(token) {
            return;
        }
        self.pending_report = None;
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let worker = worker.borrow();
        let status =
            abi::get_header_str(map::HTTP_CALL_RESPONSE_HEADERS, ":status").unwrap_or_default();
        if !status.starts_with('2') {
            worker.metrics.telemetry_failures.add(1);
            log(
                level::WARN,
                &format!("shadowmesh: telemetry report rejected (status {status:?})"),
            );
            return;
        }
        worker.metrics.telemetry_reports.add(1);
        let body = abi::get_buffer(buffer::HTTP_CALL_RESPONSE_BODY, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        if body.is_empty() {
            return;
        }
        match serde_json::from_slice::<TelemetryAck>(&body) {
            Ok(ack) => store_shadow_records(&worker.config, ack.shadows),
            Err(e) => log(
                level::WARN,
                &format!("shadowmesh: ignoring malformed telemetry answer: {e}"),
            ),
        }
    }
}

/// Keeps the newest generation of each configured service's shadow record.
fn store_shadow_records(config: &PluginConfig, records: Vec<ShadowRecord>) {
    for record in records {
        if !config.services.iter().any(|s| s.name == record.service) {
            continue;
        }
        let key = keys::shadow(&record.service);
        let _ = shared::update_json::<ShadowRecord, _>(&HostStore, &key, |current| match current {
            Some(c) if c.generation > record.generation => None,
            _ => Some(record.clone()),
        });
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
        // `node.id` is resolved at the first report: not every host exposes it this early.
        self.proxy = config.proxy_id.clone().unwrap_or_default();
        // Identity for the lease: wasi's random_get seeds std's RandomState.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(now_ns());
        self.id = h.finish();
        let services = config
            .services
            .iter()
            .map(|s| ServiceRuntime {
                plan: RedirectPlan::default(),
                shadow: ShadowView::resolve(&s.shadow, None, 0),
                spreader: Spreader::default(),
                window: ServiceWindow::default(),
                started: 0,
                in_flight_delta: [0, 0],
                in_flight_keys: [
                    keys::in_flight(&s.name, "primary"),
                    keys::in_flight(&s.name, "shadow"),
                ],
                metrics: ServiceMetrics::define(&s.name),
                controller: ServiceController::default(),
            })
            .collect();
        let metrics = GlobalMetrics {
            spoofed_route_headers: Metric::define(
                metric::COUNTER,
                "shadowmesh.spoofed_route_headers_total",
            ),
            telemetry_reports: Metric::define(
                metric::COUNTER,
                "shadowmesh.telemetry_reports_total",
            ),
            telemetry_failures: Metric::define(
                metric::COUNTER,
                "shadowmesh.telemetry_failures_total",
            ),
            shared_data_errors: Metric::define(
                metric::COUNTER,
                "shadowmesh.shared_data_errors_total",
            ),
        };
        let tick_ms = config.tick_ms as u32;
        self.report_start_ms = now_ns() / 1_000_000;
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
        let now_ms = now_ns() / 1_000_000;
        flush_local(worker);
        let ttl = worker.config.tick_ms * 3;
        if shared::acquire_lease(&HostStore, self.id, now_ms, ttl) {
            self.control(worker, now_ms);
        }
        for (svc, rt) in worker
            .config
            .services
            .iter()
            .zip(worker.services.iter_mut())
        {
            rt.plan = read_plan(svc);
            rt.shadow = read_shadow(svc, now_ms);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let worker = self.worker.clone()?;
        Some(Box::new(AtreHttp {
            worker,
            routed: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The service's current plan (the default plan until the controller wrote one).
fn read_plan(svc: &ServiceConfig) -> RedirectPlan {
    shared::read_json(&HostStore, &keys::plan(&svc.name)).unwrap_or_default()
}

/// The service's shadow as the data path sees it now: configuration overlaid with the
/// control plane's record, if any.
fn read_shadow(svc: &ServiceConfig, now_ms: u64) -> ShadowView {
    let record: Option<ShadowRecord> = shared::read_json(&HostStore, &keys::shadow(&svc.name));
    ShadowView::resolve(&svc.shadow, record.as_ref(), now_ms)
}

/// Moves this worker's counts into shared data and Envoy's stats.
fn flush_local(worker: &mut Worker) {
    let mut errors = 0;
    for (svc, rt) in worker
        .config
        .services
        .iter()
        .zip(worker.services.iter_mut())
    {
        rt.metrics.requests.add(std::mem::take(&mut rt.started));
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
        rt.metrics.redirected.add(rt.window.redirected);
        rt.metrics.fallbacks.add(rt.window.fallbacks);
        rt.metrics
            .orca_malformed
            .add(rt.window.primary.orca_malformed + rt.window.shadow.orca_malformed);
        let local = std::mem::take(&mut rt.window);
        let merged =
            shared::update_json::<ServiceWindow, _>(&HostStore, &keys::window(&svc.name), |cur| {
                let mut next = cur.cloned().unwrap_or_default();
                next.merge(&local);
                Some(next)
            });
        if merged.is_err() {
            // Keep the counts for the next tick rather than lose them (metrics were
            // already incremented, so only the window is retried).
            let mut keep = local;
            keep.redirected = 0;
            keep.fallbacks = 0;
            keep.primary.orca_malformed = 0;
            keep.shadow.orca_malformed = 0;
            rt.window = keep;
            errors += 1;
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
        for (svc, rt) in config.services.iter().zip(services.iter_mut()) {
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
            if let Ok(bytes) = serde_json::to_vec(&plan) {
                let _ = HostStore.set(&keys::plan(&svc.name), &bytes, None);
            }
            let m = rt.metrics;
            m.in_flight_primary.set(in_flight[0]);
            m.in_flight_shadow.set(in_flight[1]);
            m.redirect_share_permille
                .set((plan.share * 1000.0).round() as u64);
            m.primary_load_permille
                .set((rt.controller.scores[0].0 * 1000.0).round() as u64);
            m.shadow_load_permille
                .set((rt.controller.scores[1].0 * 1000.0).round() as u64);
            m.redirecting
                .set(u64::from(plan.state == RedirectState::Redirecting));
        }
        let ticks_per_report = config.ticks_per_report();
        self.ticks += 1;
        if self.ticks.is_multiple_of(ticks_per_report) {
            self.report(worker, now_ms);
        }
    }

    fn report(&mut self, worker: &mut Worker, now_ms: u64) {
        let Some(t) = worker.config.telemetry.clone() else {
            return;
        };
        if let Some((_, sent)) = self.pending_report {
            if now_ms < sent + 2 * t.timeout_ms {
                return; // the previous report is still in flight; its data is not lost, just later
            }
            self.pending_report = None;
        }
        let Worker {
            config,
            services,
            metrics,
            ..
        } = worker;
        let entries = config
            .services
            .iter()
            .zip(services.iter_mut())
            .map(|(svc, rt)| {
                rt.controller
                    .take_report(svc, &read_shadow(svc, now_ms), &read_plan(svc))
            })
            .collect();
        if self.proxy.is_empty() {
            self.proxy = abi::get_property(&["node", "id"])
                .and_then(|b| String::from_utf8(b).ok())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "envoy".into());
        }
        self.report_seq += 1;
        let report = TelemetryReport {
            schema: TELEMETRY_SCHEMA.into(),
            proxy: self.proxy.clone(),
            seq: self.report_seq,
            window_start_ms: self.report_start_ms,
            window_end_ms: now_ms,
            services: entries,
        };
        self.report_start_ms = now_ms;
        let Ok(body) = serde_json::to_vec(&report) else {
            return;
        };
        let headers = vec![
            (":method", "POST"),
            (":path", t.path.as_str()),
            (":authority", t.authority.as_str()),
            ("content-type", "application/json"),
        ];
        // The SDK's call (not abi::http_call): only it registers the token with the SDK's
        // dispatcher, which otherwise refuses the response. It maps the statuses Envoy
        // returns for calls (BadArgument, InternalFailure) to errors.
        let timeout = std::time::Duration::from_millis(t.timeout_ms);
        match proxy_wasm::hostcalls::dispatch_http_call(
            &t.cluster,
            headers,
            Some(&body),
            vec![],
            timeout,
        ) {
            Ok(token) => self.pending_report = Some((token, now_ms)),
            Err(status) => {
                metrics.telemetry_failures.add(1);
                log(
                    level::WARN,
                    &format!(
                        "shadowmesh: cannot send telemetry to cluster {}: {status:?}",
                        t.cluster
                    ),
                );
            }
        }
    }
}

/// Which side a request was sent to, for the stream-end bookkeeping.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Primary,
    Shadow,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::Primary => 0,
            Side::Shadow => 1,
        }
    }
}

struct Routed {
    service: usize,
    side: Side,
    start_ns: u64,
}

struct AtreHttp {
    worker: Rc<RefCell<Worker>>,
    routed: Option<Routed>,
}

impl AtreHttp {
    /// Stream end: record latency, release the in-flight slot. Idempotent.
    fn finish(&mut self) {
        let Some(r) = self.routed.take() else { return };
        let Ok(mut worker) = self.worker.try_borrow_mut() else {
            return;
        };
        let us = now_ns().saturating_sub(r.start_ns) / 1_000;
        let rt = &mut worker.services[r.service];
        rt.in_flight_delta[r.side.index()] -= 1;
        rt.window_mut(r.side).latency.record(us);
        rt.metrics.latency_ms.set(us / 1_000);
    }
}

impl Context for AtreHttp {}

impl HttpContext for AtreHttp {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let Ok(mut worker) = self.worker.try_borrow_mut() else {
            return Action::Continue;
        };
        let worker = &mut *worker;
        let header = worker.config.route_header.as_str();
        let spoofed = matches!(abi::get_header(map::REQUEST_HEADERS, header), Ok(Some(_)));
        if spoofed {
            // Whatever happens next, the client's value never picks a cluster.
            worker.spoofed += 1;
            let _ = abi::remove_header(map::REQUEST_HEADERS, header);
        }
        let services = &worker.config.services;
        // A first service that answers any host (the sidecar case) needs no :authority read.
        let index = if services[0].hosts.iter().any(|h| h == "*") {
            Some(0)
        } else {
            let authority =
                abi::get_header_str(map::REQUEST_HEADERS, ":authority").unwrap_or_default();
            services
                .iter()
                .position(|s| s.matches_authority(&authority))
        };
        let Some(index) = index else {
            return Action::Continue;
        };
        let svc = &worker.config.services[index];
        let point = match &svc.session {
            Some(SessionKeySource::Header(h)) => abi::get_header(map::REQUEST_HEADERS, h)
                .ok()
                .flatten()
                .filter(|v| !v.is_empty())
                .map(|v| session_point(&v)),
            Some(SessionKeySource::Cookie(c)) => {
                abi::get_header_str(map::REQUEST_HEADERS, "cookie").and_then(|v| {
                    cookie_value(&v, c)
                        .filter(|s| !s.is_empty())
                        .map(|s| session_point(s.as_bytes()))
                })
            }
            None => None,
        };
        let rt = &mut worker.services[index];
        let decision = decide(&rt.plan, rt.shadow.ready, point, &mut rt.spreader);
        // Only a redirect writes the header. Writing any request header makes Envoy clear
        // the route cache and match again (≈ 20 µs a request in the benchmark), and a
        // request without the header already takes the route's default: the primary —
        // the same path a request takes when the filter fails open.
        let side = match decision {
            RedirectDecision::Shadow => {
                if abi::replace_header(map::REQUEST_HEADERS, header, &rt.shadow.cluster).is_ok() {
                    rt.window.redirected += 1;
                    Side::Shadow
                } else {
                    let _ = abi::remove_header(map::REQUEST_HEADERS, header);
                    Side::Primary
                }
            }
            RedirectDecision::Fallback => {
                rt.window.fallbacks += 1;
                Side::Primary
            }
            RedirectDecision::Primary => Side::Primary,
        };
        rt.started += 1;
        rt.in_flight_delta[side.index()] += 1;
        self.routed = Some(Routed {
            service: index,
            side,
            start_ns: now_ns(),
        });
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let Some(r) = &self.routed else {
            return Action::Continue;
        };
        let Some(value) = abi::get_header_str(map::RESPONSE_HEADERS, ORCA_HEADER) else {
            return Action::Continue;
        };
        let Ok(mut worker) = self.worker.try_borrow_mut() else {
            return Action::Continue;
        };
        let w = worker.services[r.service].window_mut(r.side);
        match OrcaReport::parse(&value) {
            Ok(report) => {
                w.orca_sum += report.utilization();
                w.orca_reports += 1;
            }
            Err(_) => w.orca_malformed += 1,
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.finish();
    }
}

impl Drop for AtreHttp {
    /// Belt and braces: if the host never called `on_log` for this stream, the in-flight
    /// slot is still released.
    fn drop(&mut self) {
        self.finish();
    }
}
