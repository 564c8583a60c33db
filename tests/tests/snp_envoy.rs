//! The Shadow Node Provisioner end to end with real Envoy 1.40 and the ATRE filter: the
//! control plane forecasts a surge, warms a spare from its pool *before* the surge begins
//! (the warm-up probe measuring, not assuming), assigns it through the shadow registry
//! (xDS endpoints + readiness), ATRE sends the excess to it, and it is released after the
//! surge — all with zero client errors.
//!
//! Time is compressed: one-second steps, a 30-second "day" (18 s quiet, 8 s busy, 4 s
//! quiet), spares that take 1–2 s to warm up. The primary serves 8 × 20 ms (at most 400 req/s); the
//! provisioner plans with a capacity of 300 req/s; a surge brings 450.

use shadowmesh_predictor::analyzer::AnalyzerConfig;
use shadowmesh_predictor::model::SeasonSpec;
use shadowmesh_provisioner::{Mode, Settings, SpareSpec};
use shadowmesh_testkit::envoy::{FilterChoice, ServiceRoute};
use shadowmesh_testkit::loadgen::{self, LoadReport, LoadSpec, Phase, RateProfile};
use shadowmesh_testkit::upstream::{self, OrcaMode, UpstreamConfig, UpstreamHandle};
use shadowmesh_testkit::{ads_envoy_for, spawn_plane, within};
use shadowmesh_xds::provisioning::{LoopSettings, ProbeConfig, Provisioning};
use shadowmesh_xds::xds::builders::EndpointSpec;
use shadowmesh_xds::{ControlPlane, PlaneOptions, ProviderKind, ProvisioningOptions};
use std::net::SocketAddr;
use std::time::Duration;

const CAPACITY: f64 = 300.0;
const QUIET: f64 = 100.0;
const BUSY: f64 = 450.0;
const PERIOD: i64 = 30;
const BUSY_FROM: i64 = 18;
const BUSY_SECS: i64 = 8;

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn spare(id: &str, address: SocketAddr, warmup_secs: f64, cost_per_hour: f64) -> SpareSpec {
    SpareSpec {
        id: id.into(),
        address: address.to_string(),
        capacity: 400.0,
        max_in_flight: 16,
        warmup_secs,
        cost_per_sec: cost_per_hour / 3_600.0,
        class: "small".into(),
    }
}

fn policy(lead_margin_secs: f64) -> Settings {
    Settings {
        mode: Mode::Predictive,
        lead_margin_secs,
        min_hold_secs: 4.0,
        release_hysteresis_secs: 3.0,
        release_below: 0.8,
        drain_secs: 2.0,
        spend_cap_per_hour: 1e6,
        degraded_request_cost: 0.01,
        horizon_secs: 12.0,
        reactive_trigger: 0.9,
        reactive_headroom: 0.2,
        failure_backoff_secs: 60.0,
    }
}

fn probe(give_up_extra_secs: f64) -> ProbeConfig {
    ProbeConfig {
        give_up_factor: 1.0,
        give_up_extra_secs,
        ..ProbeConfig::default()
    }
}

fn predictor() -> AnalyzerConfig {
    let mut p = AnalyzerConfig::for_step(1, 12);
    p.model.seasons = vec![SeasonSpec {
        period_secs: PERIOD,
        buckets: PERIOD as usize,
        rate: 0.3,
    }];
    p
}

/// The `upstream` binary as the process provider's spare: cold (10× slower) for its
/// warm-up time after start.
fn spare_command() -> Vec<String> {
    let bin = shadowmesh_testkit::workspace_binary("upstream").unwrap();
    [
        bin.to_str().unwrap(),
        "--name",
        "{id}",
        "--port",
        "{port}",
        "--concurrency",
        "{max_in_flight}",
        "--service-ms",
        "20",
        "--warmup-ms",
        "{warmup_ms}",
        "--cold",
        "slow",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The ATRE configuration for `services` (name, host names): primaries of 8 slots, shadow
/// readiness only from the control plane.
fn plugin_for(services: &[(&str, &[&str])]) -> serde_json::Value {
    let mut plugin = shadowmesh_testkit::atre_plugin(8);
    let template = plugin["services"][0].clone();
    plugin["services"] = services
        .iter()
        .map(|(name, hosts)| {
            let mut s = template.clone();
            s["name"] = (*name).into();
            s["hosts"] = serde_json::json!(hosts);
            s["primary"]["cluster"] = format!("{name}_primary").into();
            s["shadow"]["cluster"] = format!("{name}_shadow").into();
            s["shadow"]["ready"] = false.into();
            s
        })
        .collect();
    plugin
}

/// A whole deployment with a provisioner; stops its spares when dropped.
struct Deployment {
    plane: ControlPlane,
    http: SocketAddr,
    envoy: shadowmesh_testkit::envoy::EnvoyProcess,
    _primaries: Vec<UpstreamHandle>,
    server: tokio::task::JoinHandle<()>,
    _alone: tokio::sync::OwnedRwLockWriteGuard<()>,
}

impl Deployment {
    fn provisioning(&self) -> &Provisioning {
        self.plane.provisioning.as_ref().unwrap()
    }

    fn state(&self, spare: &str) -> String {
        self.provisioning()
            .pool()
            .into_iter()
            .find(|s| s.spec.id == spare)
            .map(|s| s.state.name().to_string())
            .unwrap()
    }

    async fn get(&self, path: &str) -> serde_json::Value {
        let (status, body) =
            loadgen::request_json(&loadgen::client(), "GET", self.http, path, None)
                .await
                .unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.server.abort();
        // Spare processes outlive a control plane by design; this one's test is over.
        for s in self.provisioning().pool() {
            if let Some(pid) = s.pid {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
        }
    }
}

async fn deploy(
    services: &[(&str, &[&str])],
    spares: Vec<SpareSpec>,
    provider: ProviderKind,
    settings: LoopSettings,
) -> Deployment {
    let alone = shadowmesh_testkit::load_test_lock().write_owned().await;
    let plane = ControlPlane::build(PlaneOptions {
        predictor: predictor(),
        provisioning: Some(ProvisioningOptions {
            settings,
            spares,
            provider,
            source: None,
        }),
        ..PlaneOptions::default()
    })
    .unwrap();
    let mut primaries = Vec::new();
    for (name, _) in services {
        let primary = upstream::start(
            UpstreamConfig::new(
                &format!("{name}-primary"),
                8,
                Duration::from_millis(20),
                OrcaMode::Off,
            ),
            0,
        )
        .await
        .unwrap();
        plane
            .registry
            .set_primary(name, &[EndpointSpec::healthy(primary.addr)])
            .unwrap();
        plane.forecaster.set_capacity(name, CAPACITY).unwrap();
        primaries.push(primary);
    }
    let (http, ads_port, server) = spawn_plane(&plane).await;
    let routes = services
        .iter()
        .map(|(name, hosts)| ServiceRoute::new(name, hosts))
        .collect();
    let envoy = ads_envoy_for(
        ads_port,
        http.port(),
        FilterChoice::Atre(plugin_for(services).to_string()),
        false,
        routes,
    )
    .await;
    let client = loadgen::client();
    let started = tokio::time::Instant::now();
    for (name, hosts) in services {
        let host = hosts[0].replace('*', "checkout.local");
        let primary = format!("{name}-primary");
        while loadgen::get(&client, envoy.listener, &host, "/", &[]).await
            != Ok((200, Some(primary.clone())))
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "Envoy never served {name}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    within(
        "the first telemetry report",
        Duration::from_secs(20),
        plane.hub.wait_for(|r| !r.is_empty()),
    )
    .await;
    Deployment {
        plane,
        http,
        envoy,
        _primaries: primaries,
        server,
        _alone: alone,
    }
}

fn settings(lead_margin_secs: f64, probe: ProbeConfig) -> LoopSettings {
    LoopSettings {
        policy: policy(lead_margin_secs),
        step: Duration::from_millis(500),
        probe,
    }
}

/// Quiet until `surge_at` (Unix seconds), `BUSY` for 8 s, quiet for `tail` seconds.
fn surge_profile(surge_at: f64, busy: f64, tail: u64) -> RateProfile {
    let quiet = surge_at - unix_now();
    assert!(
        quiet > 5.0,
        "too little time before the surge: {quiet:.1} s"
    );
    RateProfile::Phases(vec![
        Phase {
            duration: Duration::from_secs_f64(quiet),
            from: QUIET,
            to: QUIET,
        },
        Phase {
            duration: Duration::from_secs(8),
            from: busy,
            to: busy,
        },
        Phase {
            duration: Duration::from_secs(tail),
            from: QUIET,
            to: QUIET,
        },
    ])
}

/// Flat history of `value` for the last `secs` seconds.
fn flat_history(secs: i64, value: f64) -> Vec<(i64, f64)> {
    let now = unix_now() as i64;
    (now - secs..now).map(|t| (t, value)).collect()
}

/// Declares `kind` on `service` from `start` for 8 s with `uplift`, over HTTP.
async fn declare_event(d: &Deployment, service: &str, kind: &str, start: f64, uplift: f64) {
    let body = serde_json::json!({
        "kind": kind, "start": start as i64, "duration_secs": 8, "uplift": uplift,
        "series": [service],
    });
    let (status, answer) = loadgen::request_json(
        &loadgen::client(),
        "POST",
        d.http,
        "/v1/events",
        Some(&body.to_string()),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{answer}");
}

/// The activations of `service` in `/v1/provisioning`: (spare, assigned_at, lead_secs).
async fn activations(d: &Deployment, service: &str) -> Vec<(String, f64, Option<f64>)> {
    d.get("/v1/provisioning").await["activations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["service"] == service)
        .map(|a| {
            (
                a["spare"].as_str().unwrap().to_string(),
                a["assigned_at"].as_f64().unwrap(),
                a["lead_secs"].as_f64(),
            )
        })
        .collect()
}

fn assert_no_errors(what: &str, report: &LoadReport) {
    assert_eq!(report.errors, 0, "{what}: {:?}", report.error_kinds);
}

/// Waits until `spare` is in `state`.
async fn await_state(d: &Deployment, spare: &str, state: &str, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while d.state(spare) != state {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{spare} never became {state} (is {}); log: {}",
            d.state(spare),
            serde_json::to_string_pretty(&d.get("/v1/provisioning").await["log"]).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_is_warm_before_a_recurring_surge_and_released_after_it() {
    let spare_addr = free_addr();
    let d = deploy(
        &[("checkout", &["*"])],
        vec![spare("spare-1", spare_addr, 2.0, 1.0)],
        ProviderKind::Process(spare_command()),
        settings(2.0, probe(8.0)),
    )
    .await;
    // Six past "days" from a metrics store, the current one beginning now: quiet, busy
    // from second 18 to 26 of 30. The live load continues exactly that pattern.
    let day_start = unix_now() as i64 + 1;
    let busy =
        |t: i64| (BUSY_FROM..BUSY_FROM + BUSY_SECS).contains(&(t - day_start).rem_euclid(PERIOD));
    let history: Vec<(i64, f64)> = (day_start - 6 * PERIOD..day_start)
        .map(|t| (t, if busy(t) { BUSY } else { QUIET }))
        .collect();
    d.plane.forecaster.backfill("checkout", &history).unwrap();
    let surge_at = (day_start + BUSY_FROM) as f64;
    let report = loadgen::run(
        LoadSpec::new(d.envoy.listener, surge_profile(surge_at, BUSY, 10)),
        |_| {},
    )
    .await;
    assert_no_errors("surge", &report);
    // Warm and assigned before the surge began — measured against the wall clock and
    // against the moment demand actually went over the primary's capacity.
    let acts = activations(&d, "checkout").await;
    let (spare, assigned_at, lead) = acts.first().cloned().expect("an activation");
    assert_eq!(spare, "spare-1");
    assert!(
        assigned_at < surge_at,
        "assigned {:.1} s after the surge began",
        assigned_at - surge_at
    );
    assert!(
        lead.is_some_and(|l| l > 0.0),
        "lead over the actual onset: {lead:?}"
    );
    let served = report.by_server.get("spare-1").copied().unwrap_or(0);
    assert!(
        served > 500,
        "the spare took the excess: {:?}",
        report.by_server
    );
    // Released after the surge: readiness off first, the endpoint after the drain.
    await_state(&d, "spare-1", "cold", Duration::from_secs(15)).await;
    let log = d.get("/v1/provisioning?log=1000").await["log"].clone();
    let at = |action: &str| {
        log.as_array()
            .unwrap()
            .iter()
            .find(|l| l["event"]["decision"]["action"] == action)
            .and_then(|l| l["at"].as_f64())
            .unwrap_or_else(|| panic!("no {action} in {log}"))
    };
    assert!(
        at("drain") + 2.0 <= at("release") + 1e-6,
        "make-before-break"
    );
    assert!(at("start_warmup") < at("assign"));
    let shadows = &d.get("/v1/services/checkout/shadows").await;
    assert_eq!(shadows["endpoints"], serde_json::json!([]), "{shadows}");
    assert_eq!(shadows["readiness"]["warm"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_event_is_provisioned_ahead_of_its_start() {
    let d = deploy(
        &[("checkout", &["*"])],
        vec![spare("spare-1", free_addr(), 1.0, 1.0)],
        ProviderKind::Process(spare_command()),
        settings(2.0, probe(8.0)),
    )
    .await;
    d.plane
        .forecaster
        .backfill("checkout", &flat_history(60, QUIET))
        .unwrap();
    let start = (unix_now() + 11.0).floor();
    declare_event(&d, "checkout", "sale", start, BUSY / QUIET).await;
    let report = loadgen::run(
        LoadSpec::new(d.envoy.listener, surge_profile(start, BUSY, 4)),
        |_| {},
    )
    .await;
    assert_no_errors("event", &report);
    let acts = activations(&d, "checkout").await;
    let (_, assigned_at, _) = acts.first().cloned().expect("an activation");
    assert!(
        assigned_at < start,
        "assigned {:.1} s into the event",
        assigned_at - start
    );
    let log = d.get("/v1/provisioning?log=1000").await["log"].to_string();
    assert!(
        log.contains("event (sale)"),
        "the reason names the event: {log}"
    );
    assert!(report.by_server.get("spare-1").copied().unwrap_or(0) > 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_that_fails_to_warm_up_is_replaced_by_another() {
    // Static spares: "dead" (cheapest, nothing listens) and "good" (a running upstream).
    let good = upstream::start(
        UpstreamConfig::new("good", 16, Duration::from_millis(20), OrcaMode::Off),
        0,
    )
    .await
    .unwrap();
    let d = deploy(
        &[("checkout", &["*"])],
        vec![
            spare("dead", free_addr(), 1.0, 1.0),
            spare("good", good.addr, 1.0, 2.0),
        ],
        ProviderKind::Static,
        settings(4.0, probe(1.0)),
    )
    .await;
    d.plane
        .forecaster
        .backfill("checkout", &flat_history(60, QUIET))
        .unwrap();
    let start = (unix_now() + 12.0).floor();
    declare_event(&d, "checkout", "sale", start, BUSY / QUIET).await;
    let report = loadgen::run(
        LoadSpec::new(d.envoy.listener, surge_profile(start, BUSY, 2)),
        |_| {},
    )
    .await;
    assert_no_errors("surge", &report);
    let view = d.get("/v1/provisioning?log=1000").await;
    let failed = view["log"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["event"]["warmup_failed"]["spare"] == "dead");
    assert!(
        failed,
        "the dead spare's warm-up failure is logged: {}",
        view["log"]
    );
    let acts = activations(&d, "checkout").await;
    let (spare, assigned_at, _) = acts.first().cloned().expect("an activation");
    assert_eq!(spare, "good");
    assert!(assigned_at < start, "the replacement was ready in time");
    assert!(report.by_server.get("good").copied().unwrap_or(0) > 500);
    assert_eq!(d.state("dead"), "cold");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_spare_warm_the_primary_serves_the_surge_alone_without_errors() {
    let d = deploy(
        &[("checkout", &["*"])],
        vec![spare("dead", free_addr(), 1.0, 1.0)],
        ProviderKind::Static,
        settings(4.0, probe(1.0)),
    )
    .await;
    d.plane
        .forecaster
        .backfill("checkout", &flat_history(60, QUIET))
        .unwrap();
    let start = (unix_now() + 10.0).floor();
    declare_event(&d, "checkout", "sale", start, BUSY / QUIET).await;
    let report = loadgen::run(
        LoadSpec::new(d.envoy.listener, surge_profile(start, BUSY, 2)),
        |_| {},
    )
    .await;
    assert_no_errors("surge on the primary alone", &report);
    assert_eq!(
        report.by_server.keys().collect::<Vec<_>>(),
        ["checkout-primary"]
    );
    // The primary was overloaded, and nothing was redirected: with no shadow ready, ATRE
    // never enters redirection.
    let reports = d.plane.hub.reports();
    let services = || reports.iter().flat_map(|r| &r.services);
    assert!(
        services().any(|s| s.primary.load_score >= 0.9),
        "the surge overloaded the primary"
    );
    assert_eq!(services().map(|s| s.redirected).sum::<u64>(), 0);
    assert!(activations(&d, "checkout").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_pool_goes_to_the_larger_expected_loss_and_says_who_was_left_out() {
    let d = deploy(
        &[
            ("checkout", &["checkout.local"]),
            ("search", &["search.local"]),
        ],
        vec![spare("spare-1", free_addr(), 1.0, 1.0)],
        ProviderKind::Process(spare_command()),
        settings(2.0, probe(8.0)),
    )
    .await;
    for s in ["checkout", "search"] {
        d.plane
            .forecaster
            .backfill(s, &flat_history(60, QUIET))
            .unwrap();
    }
    let start = (unix_now() + 11.0).floor();
    // checkout: 450 req/s (150 over capacity); search: 350 (50 over).
    declare_event(&d, "checkout", "sale", start, BUSY / QUIET).await;
    declare_event(&d, "search", "sale", start, 350.0 / QUIET).await;
    let mut search = LoadSpec::new(d.envoy.listener, surge_profile(start, 350.0, 2));
    search.authority = "search.local".into();
    let (checkout, search) = tokio::join!(
        loadgen::run(
            LoadSpec::new(d.envoy.listener, surge_profile(start, BUSY, 2)),
            |_| {}
        ),
        loadgen::run(search, |_| {}),
    );
    assert_no_errors("checkout", &checkout);
    assert_no_errors("search", &search);
    assert_eq!(activations(&d, "checkout").await.len(), 1);
    assert!(activations(&d, "search").await.is_empty());
    assert_eq!(
        search.by_server.keys().collect::<Vec<_>>(),
        ["search-primary"]
    );
    let log = d.get("/v1/provisioning?log=1000").await["log"].clone();
    let left_out = log.as_array().unwrap().iter().any(|l| {
        l["service"] == "search"
            && l["event"]["verdict"]["verdict"] == "left_out"
            && l["event"]["verdict"]["why"]
                .as_str()
                .is_some_and(|w| w.contains("pool exhausted"))
    });
    assert!(
        left_out,
        "search's exclusion is logged with the reason: {log}"
    );
}
