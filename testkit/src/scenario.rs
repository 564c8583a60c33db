//! A whole Shadowmesh deployment replaying a demand trace under one provisioning
//! strategy — the engine of the demo and of `provision-bench`.
//!
//! On loopback: a primary upstream, the control plane (in process) with its provisioner,
//! spares started as `upstream` processes with a cold start, one Envoy 1.40 with ATRE on
//! ADS, and the open-loop load generator replaying the trace in compressed time (one
//! trace point per `step_secs` of wall time). History before the trace is backfilled into
//! the predictor, as a new deployment would import it from its metrics store.

use crate::envoy::{EnvoyProcess, FilterChoice};
use crate::loadgen::{self, LoadSpec, Phase, RateProfile};
use crate::upstream::{self, OrcaMode, UpstreamConfig, UpstreamHandle};
use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use shadowmesh_predictor::analyzer::AnalyzerConfig;
use shadowmesh_predictor::events::ScheduledEvent;
use shadowmesh_predictor::model::SeasonSpec;
use shadowmesh_provisioner::inputs::SurgeForecast;
use shadowmesh_provisioner::{Mode, Settings, SpareSpec};
use shadowmesh_xds::provisioning::{
    LoopSettings, PoolProvider, ProbeConfig, ProcessProvider, SurgeSource, probe,
};
use shadowmesh_xds::registry::ShadowSet;
use shadowmesh_xds::xds::builders::EndpointSpec;
use shadowmesh_xds::{ControlPlane, PlaneOptions, ProviderKind, ProvisioningOptions};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The service every scenario runs.
pub const SERVICE: &str = "checkout";

/// How shadows are provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// No shadows: the primary alone.
    None,
    /// Every spare started and assigned for the whole run.
    AlwaysOn,
    /// The provisioner acting on current load only (an autoscaler).
    Reactive,
    /// The provisioner acting on the forecast (Shadowmesh).
    Predictive,
    /// The provisioner fed the true future.
    Oracle,
}

impl Strategy {
    /// Every strategy, in table order.
    pub const ALL: [Strategy; 5] = [
        Strategy::None,
        Strategy::AlwaysOn,
        Strategy::Reactive,
        Strategy::Predictive,
        Strategy::Oracle,
    ];

    /// Its name (`none`, `always-on`, `reactive`, `predictive`, `oracle`).
    pub fn name(self) -> &'static str {
        match self {
            Strategy::None => "none",
            Strategy::AlwaysOn => "always-on",
            Strategy::Reactive => "reactive",
            Strategy::Predictive => "predictive",
            Strategy::Oracle => "oracle",
        }
    }

    /// The strategy called `name`.
    pub fn parse(name: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// A spare in the scenario's pool (started from the `upstream` binary).
#[derive(Debug, Clone)]
pub struct SparePlan {
    /// Id.
    pub id: String,
    /// Requests per second it serves warm (what the provisioner counts on).
    pub capacity: f64,
    /// Concurrency (its `upstream --concurrency`).
    pub max_in_flight: u32,
    /// Cold-start time (`upstream --warmup-ms`).
    pub warmup_secs: f64,
    /// Cost per hour of wall time.
    pub cost_per_hour: f64,
}

/// A scheduled event in the trace, declared to the control plane.
#[derive(Debug, Clone)]
pub struct EventPlan {
    /// Kind (`sale`).
    pub kind: String,
    /// First trace step.
    pub start_step: usize,
    /// Length in steps.
    pub steps: usize,
    /// Declared demand multiplier.
    pub uplift: f64,
}

/// What to replay and how.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Wall seconds per trace step.
    pub step_secs: i64,
    /// Demand (req/s) before the run, one value per step, backfilled into the predictor.
    pub history: Vec<f64>,
    /// Demand (req/s) during the run, one value per step (linear in between).
    pub trace: Vec<f64>,
    /// Seasons, in steps (e.g. 24 and 168 for hourly data).
    pub season_steps: Vec<usize>,
    /// Forecast horizon in steps.
    pub horizon_steps: usize,
    /// Events declared in advance (their uplift is already in `trace`).
    pub events: Vec<EventPlan>,
    /// Requests per second the primary serves before it is overloaded (provisioning).
    pub capacity: f64,
    /// Primary concurrency (slots) and service time.
    pub primary: (usize, Duration),
    /// The spares.
    pub spares: Vec<SparePlan>,
    /// Policy (its mode is set by the strategy).
    pub policy: Settings,
    /// Warm-up probe.
    pub probe: ProbeConfig,
    /// Latency objective.
    pub slo: Duration,
}

/// One second of a run.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Second from the start.
    pub index: u64,
    /// The trace step it falls in (`None` in the lead-in before the trace begins).
    pub step: Option<usize>,
    /// Demand scheduled in it (req/s).
    pub demand: f64,
    /// Requests answered 2xx.
    pub ok: u64,
    /// Requests failed.
    pub errors: u64,
    /// Requests answered slower than the SLO.
    pub over_slo: u64,
    /// p99 latency (ms).
    pub p99_ms: f64,
    /// Requests the primary served.
    pub primary: u64,
    /// Requests the spares served.
    pub shadow: u64,
    /// The forecast made `lead` earlier for this second: median, low, high (req/s).
    pub forecast: Option<(f64, f64, f64)>,
    /// Capacity of the spares assigned (req/s).
    pub shadow_capacity: f64,
    /// Spares running (warming, warm, assigned or draining).
    pub spares_running: usize,
    /// Every spare's state (`cold`, `warming`, `warm`, `assigned`, `draining`), by id.
    pub spares: Vec<(String, &'static str)>,
    /// Latency of its requests (µs).
    pub latency_us: Option<Histogram<u64>>,
}

/// What a strategy achieved.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Strategy name.
    pub name: String,
    /// Requests sent.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// Requests slower than the SLO.
    pub slo_violations: u64,
    /// p99 over seconds whose demand was within the primary's capacity (ms).
    pub p99_steady_ms: f64,
    /// p99 over seconds whose demand exceeded it (ms).
    pub p99_surge_ms: f64,
    /// Spare-seconds run (the cost).
    pub shadow_seconds: f64,
    /// Lead of each activation over the actual onset (s; negative: late).
    pub leads: Vec<f64>,
    /// The run, second by second.
    pub samples: Vec<Sample>,
}

/// The true future of the trace as surge forecasts: what an oracle would say.
struct Oracle {
    start: f64,
    step: f64,
    trace: Vec<f64>,
    capacity: f64,
    horizon: f64,
}

impl SurgeSource for Oracle {
    fn forecasts(&self, now: f64) -> Vec<SurgeForecast> {
        let at = |i: usize| self.start + i as f64 * self.step;
        let from = (((now - self.start) / self.step).floor().max(0.0)) as usize;
        let until = ((now + self.horizon - self.start) / self.step).ceil() as usize;
        let over = |i: usize| self.trace.get(i).is_some_and(|d| *d > self.capacity);
        let Some(onset) = (from..until).find(|&i| over(i)) else {
            return Vec::new();
        };
        let end = (onset..self.trace.len()).find(|&i| !over(i));
        let peak = self.trace[onset..end.unwrap_or(self.trace.len())]
            .iter()
            .fold(0.0, |m: f64, d| m.max(*d));
        vec![SurgeForecast {
            service: SERVICE.to_string(),
            onset: at(onset),
            end: end.map(at),
            peak_median: peak,
            // Certain: a hair above the median keeps the interval's arithmetic finite.
            peak_quantile: peak * 1.000_1,
            quantile: 0.9,
            probability: 1.0,
            reason: "oracle".into(),
            anomaly: false,
        }]
    }
}

fn free_addr() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The process provider's command for spares: the `upstream` binary, cold for its
/// warm-up time (10× slower).
pub fn spare_command(service_ms: u64) -> Result<Vec<String>> {
    let bin = crate::workspace_binary("upstream")?;
    Ok([
        bin.to_str().context("binary path")?,
        "--name",
        "{id}",
        "--port",
        "{port}",
        "--concurrency",
        "{max_in_flight}",
        "--service-ms",
        &service_ms.to_string(),
        "--warmup-ms",
        "{warmup_ms}",
        "--cold",
        "slow",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect())
}

/// What runs during one replay; stops everything when dropped.
struct Running {
    plane: ControlPlane,
    envoy: EnvoyProcess,
    _primary: UpstreamHandle,
    server: tokio::task::JoinHandle<()>,
    always_on: Option<(Arc<ProcessProvider>, Vec<SpareSpec>)>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.server.abort();
        let mut pids: Vec<u32> = self
            .plane
            .provisioning
            .iter()
            .flat_map(|p| p.pool())
            .filter_map(|s| s.pid)
            .collect();
        if let Some((provider, specs)) = &self.always_on {
            pids.extend(specs.iter().filter_map(|s| provider.pid(s)));
        }
        for pid in pids {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
}

/// Replays `sc` under `strategy`; `on_second` sees each second (about 2 s late).
pub async fn run(
    sc: &Scenario,
    strategy: Strategy,
    mut on_second: impl FnMut(&Sample),
) -> Result<Outcome> {
    let step = sc.step_secs as f64;
    let primary = upstream::start(
        UpstreamConfig::new("primary", sc.primary.0, sc.primary.1, OrcaMode::Off),
        0,
    )
    .await?;
    let specs: Vec<SpareSpec> = sc
        .spares
        .iter()
        .map(|s| {
            Ok(SpareSpec {
                id: s.id.clone(),
                address: free_addr()?.to_string(),
                capacity: s.capacity,
                max_in_flight: s.max_in_flight,
                warmup_secs: s.warmup_secs,
                cost_per_sec: s.cost_per_hour / 3_600.0,
                class: String::new(),
            })
        })
        .collect::<Result<_>>()?;
    let command = spare_command(sc.primary.1.as_millis() as u64)?;
    let mut predictor = AnalyzerConfig::for_step(sc.step_secs, sc.horizon_steps);
    predictor.model.seasons = sc
        .season_steps
        .iter()
        .map(|n| SeasonSpec {
            period_secs: *n as i64 * sc.step_secs,
            buckets: *n,
            rate: 0.1,
        })
        .collect();
    // The run starts on the step grid a few seconds from now.
    let start = ((unix_now() + 8.0) / step).ceil() * step;
    let mode = match strategy {
        Strategy::Reactive => Some(Mode::Reactive),
        Strategy::Predictive => Some(Mode::Predictive),
        Strategy::Oracle => Some(Mode::Oracle),
        Strategy::None | Strategy::AlwaysOn => None,
    };
    let provisioning = mode.map(|mode| ProvisioningOptions {
        settings: LoopSettings {
            policy: Settings {
                mode,
                ..sc.policy.clone()
            },
            step: Duration::from_millis(500),
            probe: sc.probe.clone(),
        },
        spares: specs.clone(),
        provider: ProviderKind::Process(command.clone()),
        source: (mode == Mode::Oracle).then(|| {
            Arc::new(Oracle {
                start,
                step,
                trace: sc.trace.clone(),
                capacity: sc.capacity,
                horizon: sc.horizon_steps as f64 * step,
            }) as Arc<dyn SurgeSource>
        }),
    });
    let plane = ControlPlane::build(PlaneOptions {
        predictor,
        provisioning,
        ..PlaneOptions::default()
    })?;
    plane
        .registry
        .set_primary(SERVICE, &[EndpointSpec::healthy(primary.addr)])?;
    plane.forecaster.set_capacity(SERVICE, sc.capacity)?;
    let first = start as i64 - sc.history.len() as i64 * sc.step_secs;
    let history: Vec<(i64, f64)> = sc
        .history
        .iter()
        .enumerate()
        .map(|(i, v)| (first + i as i64 * sc.step_secs, *v))
        .collect();
    plane.forecaster.backfill(SERVICE, &history)?;
    for e in &sc.events {
        plane.forecaster.add_event(ScheduledEvent {
            kind: e.kind.clone(),
            start: start as i64 + e.start_step as i64 * sc.step_secs,
            duration_secs: e.steps as i64 * sc.step_secs,
            uplift: Some(e.uplift),
            series: Some(vec![SERVICE.to_string()]),
        })?;
    }
    let (http, ads_port, server) = crate::spawn_plane(&plane).await;
    let mut plugin = crate::atre_plugin(sc.primary.0 as u32);
    plugin["services"][0]["shadow"]["ready"] = false.into();
    plugin["services"][0]["shadow"]["max_in_flight"] = sc
        .spares
        .iter()
        .map(|s| s.max_in_flight)
        .sum::<u32>()
        .max(1)
        .into();
    let envoy = crate::ads_envoy(
        ads_port,
        http.port(),
        FilterChoice::Atre(plugin.to_string()),
        false,
    )
    .await;
    let mut running = Running {
        plane,
        envoy,
        _primary: primary,
        server,
        always_on: None,
    };
    let client = loadgen::client();
    let ready = tokio::time::Instant::now();
    while loadgen::get(&client, running.envoy.listener, "checkout.local", "/", &[]).await
        != Ok((200, Some("primary".into())))
    {
        anyhow::ensure!(
            ready.elapsed() < Duration::from_secs(30),
            "Envoy never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let always_on_started = unix_now();
    if strategy == Strategy::AlwaysOn {
        let provider = Arc::new(ProcessProvider::new(command, None));
        running.always_on = Some((provider.clone(), specs.clone()));
        for s in &specs {
            provider.start(s).await?;
        }
        for s in &specs {
            probe::await_warm(s.address.parse()?, s.warmup_secs, &sc.probe)
                .await
                .map_err(anyhow::Error::msg)?;
        }
        running.plane.registry.set_shadows(
            SERVICE,
            &ShadowSet::warm(
                specs
                    .iter()
                    .map(|s| {
                        Ok(EndpointSpec {
                            addr: s.address.parse()?,
                            healthy: true,
                            weight: s.capacity.round().clamp(1.0, 10_000.0) as u32,
                        })
                    })
                    .collect::<Result<_>>()?,
                specs.iter().map(|s| s.max_in_flight).sum(),
            ),
        )?;
    }
    // Until the run starts: the first trace value, so the predictor sees live traffic.
    let lead_in = (start - unix_now()).max(0.0);
    let mut phases = vec![Phase {
        duration: Duration::from_secs_f64(lead_in),
        from: sc.trace[0],
        to: sc.trace[0],
    }];
    // Linear between step boundaries, each boundary halfway between its two steps' values,
    // so each step carries its own value on average (as the history the model learned).
    let n = sc.trace.len();
    let boundary = |i: usize| {
        if i == 0 || i == n {
            sc.trace[i.min(n - 1)]
        } else {
            (sc.trace[i - 1] + sc.trace[i]) / 2.0
        }
    };
    for i in 0..n {
        phases.push(Phase {
            duration: Duration::from_secs(sc.step_secs as u64),
            from: boundary(i),
            to: boundary(i + 1),
        });
    }
    let mut spec = LoadSpec::new(running.envoy.listener, RateProfile::Phases(phases.clone()));
    spec.slo = Some(sc.slo);
    // Sampled once a second while the load runs: forecasts and the pool.
    type PoolSample = (f64, usize, Vec<(String, &'static str)>);
    let samples: Arc<Mutex<BTreeMap<u64, PoolSample>>> = Arc::default();
    // Per second: (forecast mean, lower, upper).
    type ForecastSample = (f64, f64, f64);
    let forecasts: Arc<Mutex<BTreeMap<i64, ForecastSample>>> = Arc::default();
    let lead_steps = ((sc.spares.iter().map(|s| s.warmup_secs).fold(0.0, f64::max)
        + sc.policy.lead_margin_secs)
        / step)
        .ceil()
        .max(1.0) as usize;
    let load_started = unix_now();
    let sampler = {
        let (plane, samples, forecasts) =
            (running.plane.clone(), samples.clone(), forecasts.clone());
        let always_on = strategy == Strategy::AlwaysOn;
        let always_on_capacity: f64 = sc.spares.iter().map(|s| s.capacity).sum();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let second = (unix_now() - load_started).floor() as u64;
                let sample: PoolSample = match &plane.provisioning {
                    Some(p) => {
                        let pool = p.pool();
                        (
                            pool.iter()
                                .filter(|s| s.state.name() == "assigned")
                                .map(|s| s.spec.capacity)
                                .sum(),
                            pool.iter().filter(|s| s.state.is_running()).count(),
                            pool.iter()
                                .map(|s| (s.spec.id.clone(), s.state.name()))
                                .collect(),
                        )
                    }
                    None if always_on => (always_on_capacity, 0, Vec::new()),
                    None => (0.0, 0, Vec::new()),
                };
                samples
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(second, sample);
                if let Some(p) = plane.forecaster.forecast(SERVICE).get(lead_steps - 1) {
                    forecasts
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(p.ts)
                        .or_insert((p.median, p.low, p.high));
                }
            }
        })
    };
    let profile = RateProfile::Phases(phases);
    let mut collected = Vec::new();
    let report = loadgen::run(spec, |s| {
        let t = load_started + s.index as f64;
        let pool = samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&s.index)
            .cloned();
        let step_ts = ((t / step).floor() * step) as i64;
        let sample = Sample {
            index: s.index,
            step: (t >= start).then(|| ((t - start) / step).floor() as usize),
            demand: profile.rate_at(Duration::from_secs(s.index)),
            ok: s.ok,
            errors: s.errors,
            over_slo: s.over_slo,
            p99_ms: s.p99_ms,
            primary: s.by_server.get("primary").copied().unwrap_or(0),
            shadow: s
                .by_server
                .iter()
                .filter(|(k, _)| k.as_str() != "primary")
                .map(|(_, v)| v)
                .sum(),
            forecast: forecasts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&step_ts)
                .copied(),
            shadow_capacity: pool.as_ref().map_or(0.0, |p| p.0),
            spares_running: pool.as_ref().map_or(0, |p| p.1),
            spares: pool.map(|p| p.2).unwrap_or_default(),
            latency_us: s.latency_us.clone(),
        };
        on_second(&sample);
        collected.push(sample);
    })
    .await;
    sampler.abort();
    let (shadow_seconds, leads) = match &running.plane.provisioning {
        Some(p) => {
            let view = p.view(0);
            let leads = view
                .activations
                .iter()
                .filter_map(|a| a.lead_secs)
                .collect();
            (view.shadow_seconds, leads)
        }
        None if strategy == Strategy::AlwaysOn => (
            specs.len() as f64 * (unix_now() - always_on_started),
            Vec::new(),
        ),
        None => (0.0, Vec::new()),
    };
    if let Some(p) = &running.plane.provisioning {
        p.stop_all().await;
    }
    if let Some((provider, specs)) = &running.always_on {
        for s in specs {
            let _ = provider.stop(s).await;
        }
    }
    let p99_of = |surge: bool| {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("static bounds");
        for s in collected
            .iter()
            .filter(|s| (s.demand > sc.capacity) == surge)
        {
            if let Some(l) = &s.latency_us {
                let _ = h.add(l);
            }
        }
        h.value_at_quantile(0.99) as f64 / 1e3
    };
    Ok(Outcome {
        name: strategy.name().to_string(),
        requests: report.sent,
        errors: report.errors,
        slo_violations: report.over_slo,
        p99_steady_ms: p99_of(false),
        p99_surge_ms: p99_of(true),
        shadow_seconds,
        leads,
        samples: collected,
    })
}
