//! Proxy-Wasm glue: contexts, hostcalls, metrics. Split by what the host calls:
//!
//! | file | what |
//! |---|---|
//! | `root.rs` | the root context: configuration, the per-tick flush, the lease holder's plan update |
//! | `report.rs` | the lease holder's telemetry report and the readiness records in its answer |
//! | `http.rs` | the per-request context: decide, route, account; capture and hand over session state |
//! | `sync.rs` | state synchronization's calls to the relay: publish, long poll, acknowledgements |
//! | `metrics.rs` | the Envoy stats the filter defines |
//! | `abi.rs` | non-panicking hostcall bindings (the only `unsafe` in the workspace) |
//!
//! Rule for this module: every hostcall goes through [`abi`], whose functions return every
//! host status as a value, and every error is absorbed (counted or logged) — never
//! unwrapped. The SDK's own wrappers (`proxy_wasm::hostcalls`, the `Context` helpers)
//! panic on statuses they do not expect, and a panic in a Wasm filter is a VM fault: with
//! `failure_policy: FAIL_OPEN` the request survives, but the VM is gone for every request
//! after it.

#[allow(unsafe_code)]
mod abi;
mod http;
mod metrics;
mod report;
mod root;
mod sync;

use crate::config::{PluginConfig, ServiceConfig};
use crate::control::{RedirectController, ShadowView};
use crate::decision::Spreader;
use crate::load::BusyClock;
use crate::plan::RedirectPlan;
use crate::session_state::SessionTable;
use crate::shared::{self, SetError, SharedStore, keys};
use crate::window::ServiceWindow;
use metrics::{GlobalMetrics, ServiceMetrics};
use proxy_wasm::traits::RootContext;
use proxy_wasm::types::LogLevel;
use shadowmesh_wire::ShadowRecord;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(root::AtreRoot::default()) });
}}

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

    /// A gauge of that name: Envoy keeps one per name for the whole process, so every
    /// worker reads what any raised, without the shared-data lock or a copy into the VM.
    /// (Filters of other VMs with the same service share it: their raises only make this
    /// one forget sessions it saw, which costs reads, never correctness.) A gauge that
    /// does not work ([`signal_gauge`]) does so for every worker alike: none reads it
    /// (nothing counts as seen) and none can raise it.
    fn read_signal(&self, name: &str) -> Option<u64> {
        abi::get_metric(signal_gauge(name)?).ok()
    }

    fn raise_signal(&self, name: &str) -> Result<(), SetError> {
        let id = signal_gauge(name).ok_or(SetError::Host)?;
        abi::increment_metric(id, 1).map_err(|_| SetError::Host)
    }
}

/// The session table's generation as the request path reads it: the id of its gauge,
/// defined when the worker is configured (a name formatted and looked up per request
/// cost more than the read itself). The same gauge [`HostStore`]'s `raise_signal` raises.
#[derive(Debug, Clone, Copy, Default)]
struct GenerationGauge(Option<u32>);

impl GenerationGauge {
    /// The gauge of `service`'s table ([`SessionTable::generation_name`]), if it works;
    /// otherwise the request path reads entries every time.
    fn define(service: &str) -> GenerationGauge {
        GenerationGauge(signal_gauge(&SessionTable::generation_name(service)))
    }

    /// [`SessionTable::generation`], without the lookup.
    fn read(self) -> Option<u64> {
        abi::get_metric(self.0?).ok()
    }
}

thread_local! {
    /// Gauge ids of the signals this worker's VM defined, by name.
    static SIGNAL_GAUGES: std::cell::RefCell<std::collections::HashMap<String, Option<u32>>> =
        std::cell::RefCell::default();
}

/// The id of the signal gauge `name`, defined on first use — if it works: raising it
/// must show. (An operator's `stats_matcher` that rejects the name makes Envoy hand out a
/// gauge that ignores raises and always reads 0; trusting it would let a worker take a
/// session newly behind a shadow for one it saw plain. The raise here costs only
/// re-reads.)
fn signal_gauge(name: &str) -> Option<u32> {
    SIGNAL_GAUGES.with(|gauges| {
        let mut gauges = gauges.try_borrow_mut().ok()?;
        if let Some(id) = gauges.get(name) {
            return *id;
        }
        let working = || {
            let id = abi::define_metric(abi::metric::GAUGE, name).ok()?;
            let before = abi::get_metric(id).ok()?;
            abi::increment_metric(id, 1).ok()?;
            (abi::get_metric(id).ok()? > before).then_some(id)
        };
        let id = working();
        gauges.insert(name.to_string(), id);
        id
    })
}

/// What one worker knows about one service.
struct ServiceRuntime {
    /// Plan as last read from shared data…
    plan: RedirectPlan,
    /// …at this time (ms).
    plan_read_ms: u64,
    /// Shadow readiness as last read.
    shadow: ShadowView,
    spreader: Spreader,
    /// Traffic counted on this worker since its last flush.
    window: ServiceWindow,
    /// Requests started on this worker since the last metric flush.
    started: u64,
    /// State changes captured on this worker since the last metric flush (a metric
    /// update is a hostcall: the response path only counts).
    captured: u64,
    /// In-flight time of this worker's requests (primary, shadow): the window's
    /// concurrency.
    busy: [BusyClock; 2],
    /// Since when the window's counts run (ms): the last flush, or the configuration.
    span_start_ms: u64,
    /// Net change of this worker's in-flight requests (primary, shadow) since it last
    /// added them to the shared counters. Batched per tick: only the controller reads the
    /// shared counters, once per tick, so per-request CAS round trips on Envoy's
    /// mutex-guarded shared store would buy nothing but cost.
    in_flight_delta: [i64; 2],
    /// Shared-data keys of the in-flight counters (primary, shadow), built once.
    in_flight_keys: [String; 2],
    metrics: ServiceMetrics,
    /// State changes captured on this worker, on their way to the session table.
    state_queue: crate::session_state::CaptureQueue,
    /// Sessions whose entries the primary's path need not read (state sync).
    seen: crate::session_state::SeenSessions,
    /// The session table's generation, read on the primary's path (state sync).
    generation: GenerationGauge,
    /// Used only while this worker holds the controller lease.
    controller: RedirectController,
    /// When this worker last warned of each cluster's capacity (primary, shadow; ms).
    warned_ms: [Option<u64>; 2],
}

/// State shared by a worker's root context and its HTTP contexts.
struct Worker {
    config: PluginConfig,
    services: Vec<ServiceRuntime>,
    metrics: GlobalMetrics,
    spoofed: u64,
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
