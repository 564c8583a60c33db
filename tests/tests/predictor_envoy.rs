//! The Predictive Traffic Analyzer fed by real Envoy 1.40: the ATRE filter's telemetry
//! reports reach the control plane, become per-service and per-link demand series, and a
//! recurring surge is predicted — with its onset — *before* it arrives.
//!
//! Time is compressed: one sample per second (the filter's report interval) and a
//! 6-second "day" (3 s quiet, 3 s busy), so a season is learned in under a minute.

use shadowmesh_predictor::analyzer::{AnalyzerConfig, Reason};
use shadowmesh_predictor::model::SeasonSpec;
use shadowmesh_testkit::envoy::FilterChoice;
use shadowmesh_testkit::loadgen::{self, LoadSpec, Phase, RateProfile};
use shadowmesh_testkit::upstream::{self, OrcaMode, UpstreamConfig};
use shadowmesh_xds::ControlPlane;
use shadowmesh_xds::xds::NodeGrouping;
use shadowmesh_xds::xds::builders::EndpointSpec;
use std::time::Duration;

const QUIET: f64 = 50.0;
const BUSY: f64 = 200.0;
const CAPACITY: f64 = 140.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recurring_surge_seen_through_envoy_is_predicted_before_it_arrives() {
    let _exclusive = shadowmesh_testkit::load_test_lock().write_owned().await;
    let primary = upstream::start(
        UpstreamConfig::new("primary", 256, Duration::from_millis(1), OrcaMode::Off),
        0,
    )
    .await
    .unwrap();
    let mut predictor = AnalyzerConfig::for_step(1, 6);
    predictor.model.seasons = vec![SeasonSpec {
        period_secs: 6,
        buckets: 6,
        rate: 0.3,
    }];
    let plane = ControlPlane::with_predictor(NodeGrouping::Cluster, predictor).unwrap();
    plane
        .registry
        .set_primary("checkout", &[EndpointSpec::healthy(primary.addr)])
        .unwrap();
    plane.forecaster.set_capacity("checkout", CAPACITY).unwrap();
    let (http, ads_port, server) = shadowmesh_testkit::spawn_plane(&plane).await;
    // Never redirect: this test is about what the control plane learns.
    let plugin = shadowmesh_testkit::atre_plugin(10_000);
    let envoy = shadowmesh_testkit::ads_envoy(
        ads_port,
        http.port(),
        FilterChoice::Atre(plugin.to_string()),
        false,
    )
    .await;
    // The data path and telemetry are live before the traffic pattern starts.
    let client = loadgen::client();
    let started = tokio::time::Instant::now();
    while loadgen::get(&client, envoy.listener, "checkout.local", "/", &[]).await
        != Ok((200, Some("primary".into())))
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "Envoy never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shadowmesh_testkit::within(
        "the first telemetry report",
        Duration::from_secs(20),
        plane.hub.wait_for(|r| !r.is_empty()),
    )
    .await;

    let cycles = 7;
    let phase = |rps| Phase {
        duration: Duration::from_secs(3),
        from: rps,
        to: rps,
    };
    let profile = RateProfile::Phases(
        (0..cycles)
            .flat_map(|_| [phase(QUIET), phase(BUSY)])
            .collect(),
    );
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let load = tokio::spawn(loadgen::run(LoadSpec::new(envoy.listener, profile), |_| {}));

    // Watch the overload list while the pattern repeats: before a busy phase begins (by
    // the wall clock), is it predicted, with its onset inside it? Each cycle counts once,
    // however often it is polled.
    let mut cycles_predicted = std::collections::BTreeSet::new();
    let mut last = None;
    while !load.is_finished() {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let cycle = ((now - started) / 6.0).floor();
        let busy_from = started + cycle * 6.0 + 3.0;
        if now >= busy_from {
            continue; // only predictions made before the busy phase count
        }
        for risk in plane.forecaster.overload_risks() {
            let onset_in_coming_busy_phase = risk
                .onset_ts
                .is_some_and(|t| (t as f64) >= now.floor() && (t as f64) < busy_from + 3.0);
            // (The model's `current` lags the wall clock by the report interval plus a
            // step of grace, so "quiet" is judged by the wall clock, not by it.)
            if risk.series == "checkout"
                && onset_in_coming_busy_phase
                && risk.reason == Reason::Seasonal
            {
                cycles_predicted.insert(cycle as i64);
                last = Some(risk);
            }
        }
    }
    let report = load.await.unwrap();
    assert_eq!(report.errors, 0, "{:?}", report.error_kinds);
    assert!(
        cycles_predicted.len() >= 3,
        "the busy phase was predicted ahead of time in only {} cycles: {cycles_predicted:?}",
        cycles_predicted.len()
    );
    let last = last.unwrap();
    assert!(last.probability > 0.5, "{last:?}");
    assert!(
        (last.predicted_peak - BUSY).abs() < 0.35 * BUSY,
        "predicted peak {:.0} for a {BUSY} req/s surge",
        last.predicted_peak
    );
    assert!(last.expected_increase > 0.0 && last.confidence.samples >= 12);
    // Links are tracked too: this Envoy's demand on checkout.
    assert!(
        plane
            .forecaster
            .series()
            .iter()
            .any(|s| s.ends_with("->checkout")),
        "{:?}",
        plane.forecaster.series()
    );
    server.abort();
}
