//! The Shadow Node Provisioner's loop in the control plane: every step it reads each
//! service's load (its [`DemandMeter`], a telemetry subscriber) and the surge forecasts
//! (the overload list of the [`Forecaster`], or another [`SurgeSource`]), runs the pure
//! policy ([`shadowmesh_provisioner::Provisioner`]), and carries out its actions:
//!
//! | action | what the loop does |
//! |---|---|
//! | start warm-up | the [`PoolProvider`] starts the spare; the [`probe`] measures until it is really warm, then the policy hears of it (or of the failure: backoff, another spare) |
//! | assign | the spare joins the service's shadow set in the [`ShadowRegistry`] — endpoint and readiness in one change |
//! | drain | readiness off (filters stop sending), endpoint kept while in-flight requests finish |
//! | release | endpoint removed, the provider stops the spare |
//!
//! The policy's state is stored after every change, and the process provider keeps its
//! pids, so a restarted control plane resumes with the same spares and shadows — it does
//! not release them mid-surge.

pub mod meter;
pub mod metrics;
pub mod probe;
pub mod provider;

pub use meter::DemandMeter;
pub use metrics::SnpMetrics;
pub use probe::ProbeConfig;
pub use provider::{PoolProvider, ProcessProvider, ProviderError, StaticProvider};

use crate::forecaster::Forecaster;
use crate::registry::{ShadowRegistry, ShadowSet};
use crate::store::StateStore;
use crate::xds::builders::EndpointSpec;
use metrics::{DecisionLabels, StageLabels, StateLabels};
use serde::Serialize;
use shadowmesh_predictor::analyzer::{Reason, SeriesKind};
use shadowmesh_provisioner::inputs::{ServiceLoad, StepInput, SurgeForecast};
use shadowmesh_provisioner::{
    Action, Decision, LogEntry, Mode, Provisioner, ServicePlan, Settings, ShadowPool, SpareSpec,
    SpareState,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Store document holding the policy's state.
const POLICY_DOCUMENT: &str = "provisioner";
/// Activations kept for `/v1/provisioning`.
const KEPT_ACTIVATIONS: usize = 200;

/// Where surge forecasts come from.
pub trait SurgeSource: Send + Sync {
    /// The surges forecast at `now` (Unix seconds).
    fn forecasts(&self, now: f64) -> Vec<SurgeForecast>;
}

/// The overload list of the control plane's Predictive Traffic Analyzer (services only;
/// links are the mesh's business, not a spare's).
pub struct ForecastSource(pub Forecaster);

impl SurgeSource for ForecastSource {
    fn forecasts(&self, _now: f64) -> Vec<SurgeForecast> {
        let quantile = self.0.quantile();
        self.0
            .overload_risks()
            .into_iter()
            .filter(|r| r.kind == SeriesKind::Service)
            .map(|r| SurgeForecast {
                onset: r.onset_ts.unwrap_or(r.peak_ts) as f64,
                end: r.end_ts.map(|t| t as f64),
                peak_median: r.predicted_peak,
                peak_quantile: r.peak_at_quantile,
                quantile,
                probability: r.probability,
                anomaly: matches!(r.reason, Reason::Anomaly { .. }),
                reason: match &r.reason {
                    Reason::Seasonal => "seasonal".to_string(),
                    Reason::Event { kinds } => format!("event ({})", kinds.join(", ")),
                    Reason::Anomaly { .. } => "anomaly".to_string(),
                },
                service: r.series,
            })
            .collect()
    }
}

/// Settings of the loop (the `[provisioner]` section without the pool).
#[derive(Debug, Clone, PartialEq)]
pub struct LoopSettings {
    /// The policy.
    pub policy: Settings,
    /// Time between steps.
    pub step: Duration,
    /// The warm-up probe.
    pub probe: ProbeConfig,
}

/// One activation: a spare assigned to a service, and how far ahead of the surge's
/// actual onset (demand over the primary's capacity) that was.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Activation {
    /// Service.
    pub service: String,
    /// Spare.
    pub spare: String,
    /// When it was assigned (Unix seconds).
    pub assigned_at: f64,
    /// When demand actually went over capacity, once it did.
    pub onset_at: Option<f64>,
    /// `onset_at − assigned_at`: positive = ready ahead of the surge.
    pub lead_secs: Option<f64>,
}

/// A spare as `/v1/pool` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpareView {
    /// Its spec.
    #[serde(flatten)]
    pub spec: SpareSpec,
    /// Its state.
    pub state: SpareState,
    /// Consecutive failed warm-ups.
    pub failures: u32,
    /// The warm-up the probe measured last time.
    pub measured_warmup_secs: Option<f64>,
    /// Process id (process provider).
    pub pid: Option<u32>,
}

/// `/v1/provisioning`: the plan, the log, expected cost and benefit.
#[derive(Debug, Clone, Serialize)]
pub struct ProvisioningView {
    /// Where the need comes from.
    pub mode: Mode,
    /// The plan per service.
    pub plan: Vec<ServicePlan>,
    /// Expected loss avoided, summed over the plan.
    pub expected_benefit: f64,
    /// Expected cost, summed over the plan.
    pub expected_cost: f64,
    /// Spare-seconds run so far.
    pub shadow_seconds: f64,
    /// Recent activations with their lead over the actual onset.
    pub activations: Vec<Activation>,
    /// The decision log, newest last.
    pub log: Vec<LogEntry>,
}

struct Surges {
    /// Services whose demand is over capacity now, since when.
    over: BTreeMap<String, f64>,
    activations: VecDeque<Activation>,
    /// Services whose shadow set the loop manages.
    managed: BTreeSet<String>,
    last_tick: Option<f64>,
    shadow_seconds: f64,
}

struct Inner {
    policy: Mutex<Provisioner>,
    registry: ShadowRegistry,
    forecaster: Forecaster,
    meter: Arc<DemandMeter>,
    source: Arc<dyn SurgeSource>,
    provider: Arc<dyn PoolProvider>,
    settings: LoopSettings,
    metrics: SnpMetrics,
    store: Option<StateStore>,
    surges: Mutex<Surges>,
    wake: tokio::sync::Notify,
    /// Left over from a previous run, done when the loop starts: spares to stop (no longer
    /// configured) and spares to probe again (they were warming).
    resume: Mutex<(Vec<SpareSpec>, Vec<SpareSpec>)>,
}

/// The provisioner loop. Cheap to clone (shared).
#[derive(Clone)]
pub struct Provisioning {
    inner: Arc<Inner>,
}

/// What the loop is built from.
pub struct ProvisioningParts {
    /// The registry it applies actions through.
    pub registry: ShadowRegistry,
    /// Capacities (and, by default, forecasts) come from it.
    pub forecaster: Forecaster,
    /// Current demand per service (subscribe it to the telemetry hub).
    pub meter: Arc<DemandMeter>,
    /// Surge forecasts (`ForecastSource` over the forecaster unless given).
    pub source: Arc<dyn SurgeSource>,
    /// Starts and stops spares.
    pub provider: Arc<dyn PoolProvider>,
    /// Where its state is kept, if anywhere.
    pub store: Option<StateStore>,
    /// Its metrics.
    pub metrics: SnpMetrics,
}

fn now_secs() -> f64 {
    crate::clock::unix_now_ms() as f64 / 1e3
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Provisioning {
    /// A loop over `spares`; resumes from the state stored in `parts.store` if any
    /// (spares still running are adopted through the provider; those that are not are
    /// reported failed and replaced).
    pub fn new(
        settings: LoopSettings,
        spares: Vec<SpareSpec>,
        parts: ProvisioningParts,
    ) -> Result<Provisioning, shadowmesh_provisioner::FieldError> {
        let pool = ShadowPool::new(spares)?;
        let saved: Option<Provisioner> = parts
            .store
            .as_ref()
            .and_then(|s| match s.document(POLICY_DOCUMENT) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the stored provisioner state; starting afresh");
                    None
                }
            });
        let resumed = saved.is_some();
        let (mut policy, gone) = match saved {
            Some(saved) => Provisioner::resume(settings.policy.clone(), pool, saved)?,
            None => (Provisioner::new(settings.policy.clone(), pool)?, Vec::new()),
        };
        let provider = parts.provider.clone();
        let now = now_secs();
        let stop: Vec<SpareSpec> = gone.into_iter().map(|g| g.spec).collect();
        // Adopt what still runs; what does not is a failure (replaced by the policy).
        let mut rewarm = Vec::new();
        let running: Vec<(SpareSpec, SpareState)> = policy
            .pool()
            .spares()
            .iter()
            .filter(|s| s.state.is_running())
            .map(|s| (s.spec.clone(), s.state.clone()))
            .collect();
        for (spec, state) in running {
            if provider.adopt(&spec) {
                tracing::info!(spare = %spec.id, state = state.name(), "spare adopted after a restart");
                if matches!(state, SpareState::Warming { .. }) {
                    rewarm.push(spec);
                }
            } else {
                policy.on_failed(&spec.id, now, "not running after a control-plane restart");
            }
        }
        let p = Provisioning {
            inner: Arc::new(Inner {
                policy: Mutex::new(policy),
                registry: parts.registry,
                forecaster: parts.forecaster,
                meter: parts.meter,
                source: parts.source,
                provider,
                settings,
                metrics: parts.metrics,
                store: parts.store,
                surges: Mutex::new(Surges {
                    over: BTreeMap::new(),
                    activations: VecDeque::new(),
                    managed: BTreeSet::new(),
                    last_tick: None,
                    shadow_seconds: 0.0,
                }),
                wake: tokio::sync::Notify::new(),
                resume: Mutex::new((stop, rewarm)),
            }),
        };
        if resumed {
            tracing::info!("provisioner resumed from the stored state");
        }
        Ok(p)
    }

    /// Runs the loop until the task is dropped: a step every `step`, and at once after a
    /// spare was found warm.
    pub async fn run(&self) {
        let (stop, rewarm) = std::mem::take(&mut *lock(&self.inner.resume));
        for spec in stop {
            tracing::warn!(spare = %spec.id, "spare no longer configured; stopping it");
            let _ = self.inner.provider.stop(&spec).await;
        }
        for spec in rewarm {
            self.spawn_warmup(spec, false);
        }
        let mut interval = tokio::time::interval(self.inner.settings.step);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = self.inner.wake.notified() => {}
            }
            self.tick(now_secs());
        }
    }

    /// One step at `now` (Unix seconds): decide, act, reconcile the registry. Returns the
    /// decisions.
    pub fn tick(&self, now: f64) -> Vec<Decision> {
        let inner = &self.inner;
        let now_ms = (now * 1000.0) as u64;
        let services: Vec<ServiceLoad> = inner
            .registry
            .services()
            .into_keys()
            .filter_map(|name| {
                let capacity = inner.forecaster.capacity(&name)?;
                Some(ServiceLoad {
                    current_demand: inner.meter.current(&name, now_ms),
                    primary_capacity: capacity,
                    service: name,
                })
            })
            .collect();
        let forecasts = if inner.settings.policy.mode == Mode::Reactive {
            Vec::new()
        } else {
            inner.source.forecasts(now)
        };
        let input = StepInput {
            now,
            services,
            forecasts,
        };
        let decisions = lock(&inner.policy).step(&input);
        for d in &decisions {
            inner
                .metrics
                .decisions
                .get_or_create(&DecisionLabels {
                    action: action_name(&d.action),
                    reason: d.reason.as_str(),
                })
                .inc();
            tracing::info!(action = action_name(&d.action), spare = d.action.spare(), service = d.action.service(), reason = d.reason.as_str(), why = %d.why, "provisioning decision");
            match &d.action {
                Action::StartWarmup { spare, .. } => {
                    if let Some(spec) = self.spec(spare) {
                        self.spawn_warmup(spec, true);
                    }
                }
                Action::Release { spare, .. } => {
                    if let Some(spec) = self.spec(spare) {
                        let provider = inner.provider.clone();
                        let metrics_failures = inner.metrics.failures.clone();
                        tokio::spawn(async move {
                            if let Err(e) = provider.stop(&spec).await {
                                metrics_failures
                                    .get_or_create(&StageLabels { stage: "stop" })
                                    .inc();
                                tracing::error!(spare = %spec.id, error = %e, "cannot stop a spare");
                            }
                        });
                    }
                }
                Action::Assign { .. } | Action::Drain { .. } => {}
            }
        }
        self.reconcile();
        self.track_surges(now, &input.services, &decisions);
        self.update_gauges(now);
        if !decisions.is_empty() {
            self.persist();
        }
        decisions
    }

    fn spec(&self, spare: &str) -> Option<SpareSpec> {
        lock(&self.inner.policy)
            .pool()
            .get(spare)
            .map(|s| s.spec.clone())
    }

    /// Starts `spec` (unless already started, after a restart) and probes it until warm;
    /// tells the policy either way.
    fn spawn_warmup(&self, spec: SpareSpec, start: bool) {
        let this = self.clone();
        tokio::spawn(async move {
            let inner = &this.inner;
            if start && let Err(e) = inner.provider.start(&spec).await {
                this.warmup_failed(&spec, "start", &e.to_string()).await;
                return;
            }
            let Ok(addr) = spec.address.parse::<SocketAddr>() else {
                this.warmup_failed(&spec, "start", "the address is not ip:port")
                    .await;
                return;
            };
            match probe::await_warm(addr, spec.warmup_secs, &inner.settings.probe).await {
                Ok(took) => {
                    inner.metrics.warmup.observe(took.as_secs_f64());
                    tracing::info!(spare = %spec.id, warmup_secs = took.as_secs_f64(), "spare verified warm");
                    if lock(&inner.policy).on_warm(&spec.id, now_secs()) {
                        this.persist();
                        inner.wake.notify_one();
                    }
                }
                Err(e) => this.warmup_failed(&spec, "warmup", &e).await,
            }
        });
    }

    async fn warmup_failed(&self, spec: &SpareSpec, stage: &'static str, error: &str) {
        let inner = &self.inner;
        inner
            .metrics
            .failures
            .get_or_create(&StageLabels { stage })
            .inc();
        tracing::warn!(spare = %spec.id, stage, %error, "spare failed to come up; another spare will be tried");
        let _ = inner.provider.stop(spec).await;
        if lock(&inner.policy)
            .on_failed(&spec.id, now_secs(), error)
            .is_some()
        {
            self.persist();
            inner.wake.notify_one();
        }
    }

    /// Makes every managed service's shadow set in the registry what the pool says:
    /// endpoints of its assigned and draining spares, warm while any is assigned.
    fn reconcile(&self) {
        let inner = &self.inner;
        let desired: BTreeMap<String, ShadowSet> = {
            let policy = lock(&inner.policy);
            let mut sets: BTreeMap<String, ShadowSet> = BTreeMap::new();
            for s in policy.pool().spares() {
                let (service, assigned) = match &s.state {
                    SpareState::Assigned { service, .. } => (service, true),
                    SpareState::Draining { service, .. } => (service, false),
                    _ => continue,
                };
                let Ok(addr) = s.spec.address.parse() else {
                    continue;
                };
                let set = sets.entry(service.clone()).or_default();
                set.endpoints.push(EndpointSpec {
                    addr,
                    healthy: true,
                    weight: s.spec.capacity.round().clamp(1.0, 10_000.0) as u32,
                });
                if assigned {
                    set.warm = true;
                    set.max_in_flight += s.spec.max_in_flight;
                }
            }
            sets
        };
        let mut surges = lock(&inner.surges);
        let services: BTreeSet<String> = surges
            .managed
            .iter()
            .cloned()
            .chain(desired.keys().cloned())
            .collect();
        for service in services {
            let want = desired.get(&service).cloned().unwrap_or_default();
            let have = inner.registry.service(&service).map(|s| s.shadows);
            if have.as_ref() != Some(&want) {
                match inner.registry.set_shadows(&service, &want) {
                    Ok(written) => {
                        tracing::info!(%service, warm = want.warm, endpoints = want.endpoints.len(), generation = written.generation, "shadow set updated")
                    }
                    Err(e) => {
                        tracing::error!(%service, error = %e, "cannot update the shadow set; retrying next step");
                        continue;
                    }
                }
            }
            if want.endpoints.is_empty() {
                surges.managed.remove(&service);
            } else {
                surges.managed.insert(service);
            }
        }
    }

    /// Actual onsets (demand going over capacity) and the lead of each activation.
    fn track_surges(&self, now: f64, loads: &[ServiceLoad], decisions: &[Decision]) {
        let inner = &self.inner;
        let mut surges = lock(&inner.surges);
        for d in decisions {
            if let Action::Assign { spare, service, .. } = &d.action {
                let onset = surges.over.get(service).copied();
                let lead = onset.map(|o| o - now);
                if let Some(lead) = lead {
                    inner.metrics.activation_lead.observe(lead);
                }
                if surges.activations.len() == KEPT_ACTIVATIONS {
                    surges.activations.pop_front();
                }
                surges.activations.push_back(Activation {
                    service: service.clone(),
                    spare: spare.clone(),
                    assigned_at: now,
                    onset_at: onset,
                    lead_secs: lead,
                });
            }
        }
        for l in loads {
            let over = l.current_demand > l.primary_capacity;
            match (over, surges.over.contains_key(&l.service)) {
                (true, false) => {
                    surges.over.insert(l.service.clone(), now);
                    let Surges { activations, .. } = &mut *surges;
                    for a in activations
                        .iter_mut()
                        .filter(|a| a.service == l.service && a.onset_at.is_none())
                    {
                        let lead = now - a.assigned_at;
                        a.onset_at = Some(now);
                        a.lead_secs = Some(lead);
                        inner.metrics.activation_lead.observe(lead);
                    }
                }
                (false, true) => {
                    surges.over.remove(&l.service);
                }
                _ => {}
            }
        }
    }

    fn update_gauges(&self, now: f64) {
        let inner = &self.inner;
        let policy = lock(&inner.policy);
        let mut counts: BTreeMap<&'static str, i64> =
            ["cold", "warming", "warm", "assigned", "draining"]
                .into_iter()
                .map(|s| (s, 0))
                .collect();
        let mut running = 0.0;
        for s in policy.pool().spares() {
            *counts.entry(s.state.name()).or_default() += 1;
            if s.state.is_running() {
                running += 1.0;
            }
        }
        drop(policy);
        for (state, n) in counts {
            inner
                .metrics
                .spares
                .get_or_create(&StateLabels { state })
                .set(n);
        }
        let mut surges = lock(&inner.surges);
        if let Some(last) = surges.last_tick {
            let secs = running * (now - last).max(0.0);
            surges.shadow_seconds += secs;
            inner.metrics.shadow_seconds.inc_by(secs);
        }
        surges.last_tick = Some(now);
    }

    fn persist(&self) {
        let Some(store) = &self.inner.store else {
            return;
        };
        let policy = lock(&self.inner.policy);
        if let Err(e) = store.save_document(POLICY_DOCUMENT, &*policy) {
            tracing::error!(error = %e, "cannot store the provisioner state");
        }
    }

    /// Every spare and its state.
    pub fn pool(&self) -> Vec<SpareView> {
        let policy = lock(&self.inner.policy);
        policy
            .pool()
            .spares()
            .iter()
            .map(|s| SpareView {
                spec: s.spec.clone(),
                state: s.state.clone(),
                failures: s.failures,
                measured_warmup_secs: s.measured_warmup_secs,
                pid: self.inner.provider.pid(&s.spec),
            })
            .collect()
    }

    /// The plan, expected cost and benefit, activations and the decision log (the last
    /// `log_lines` lines).
    pub fn view(&self, log_lines: usize) -> ProvisioningView {
        let policy = lock(&self.inner.policy);
        let plan = policy.plan().to_vec();
        let log: Vec<LogEntry> = policy.log().cloned().collect();
        let log = log[log.len().saturating_sub(log_lines)..].to_vec();
        let mode = policy.settings().mode;
        drop(policy);
        let surges = lock(&self.inner.surges);
        ProvisioningView {
            mode,
            expected_benefit: plan.iter().map(|p| p.expected_benefit).sum(),
            expected_cost: plan.iter().map(|p| p.expected_cost).sum(),
            plan,
            shadow_seconds: surges.shadow_seconds,
            activations: surges.activations.iter().cloned().collect(),
            log,
        }
    }

    /// Stops every running spare (for demos and tests that own their spares; a control
    /// plane that merely restarts leaves them running to be adopted).
    pub async fn stop_all(&self) {
        let running: Vec<SpareSpec> = lock(&self.inner.policy)
            .pool()
            .spares()
            .iter()
            .filter(|s| s.state.is_running())
            .map(|s| s.spec.clone())
            .collect();
        for spec in running {
            let _ = self.inner.provider.stop(&spec).await;
        }
    }
}

fn action_name(a: &Action) -> &'static str {
    match a {
        Action::StartWarmup { .. } => "start_warmup",
        Action::Assign { .. } => "assign",
        Action::Drain { .. } => "drain",
        Action::Release { .. } => "release",
    }
}
