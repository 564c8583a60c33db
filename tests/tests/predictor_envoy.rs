//! The Predictive Traffic Analyzer fed by real Envoy 1.40: the ATRE filter's telemetry
//! reports reach the control plane, become per-service and per-link demand series, and a
//! recurring surge is predicted — with its onset — *before* it arrives.
//!
//! Time is compressed: one sample per second (the filter's report interval) and a
//! 6-second "day" (3 s quiet, 3 s busy), so a season is learned in under a minute.

use shadowmesh_examples::envoy::FilterChoice;
use shadowmesh_examples::loadgen::{self, LoadSpec, Phase, RateProfile};
use shadowmesh_examples::upstream::{self, OrcaMode, UpstreamConfig};
use shadowmesh_predictor::analyzer::{AnalyzerConfig, Reason};
use shadowmesh_predictor::model::SeasonSpec;
use shadowmesh_xds::ControlPlane;
use shadowmesh_xds::cache::NodeGrouping;
use shadowmesh_xds::resources::EndpointSpec;
use std::time::Duration;

const QUIET: f64 = 50.0;
const BUSY: f64 = 200.0;
const CAPACITY: f64 = 140.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recurring_surge_seen_through_envoy_is_predicted_before_it_arrives() {
    let _exclusive = shadowmesh_e2e::exclusive().lock_owned().await;
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
        .controller
        .set_primary("checkout", &[EndpointSpec::healthy(primary.addr)])
        .unwrap();
    plane.forecaster.set_capacity("checkout", CAPACITY).unwrap();
    let (http, ads_port, server) = shadowmesh_e2e::spawn_plane(&plane).await;
    // Never redirect: this test is about what the control plane learns.
    let plugin = shadowmesh_e2e::atre_plugin(10_000);
    let envoy = shadowmesh_e2e::ads_envoy(
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
    tokio::time::timeout(
        Duration::from_secs(20),
        plane.hub.wait_for(|r| !r.is_empty()),
    )
    .await
    .unwrap();

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
    let load = tokio::spawn(loadgen::run(LoadSpec::new(envoy.listener, profile), |_| {}));

    // Watch the overload list while the pattern repeats: in a quiet moment, is the next
    // busy phase predicted, with its onset ahead?
    let mut predicted_ahead = Vec::new();
    while !load.is_finished() {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        for risk in plane.forecaster.overload_risks() {
            if risk.series == "checkout"
                && risk.current < CAPACITY
                && risk.onset_ts.is_some_and(|t| t >= now)
                && risk.reason == Reason::Seasonal
            {
                predicted_ahead.push(risk);
            }
        }
    }
    let report = load.await.unwrap();
    assert_eq!(report.errors, 0, "{:?}", report.error_kinds);
    assert!(
        predicted_ahead.len() >= 3,
        "the busy phase was predicted ahead of time only {} times",
        predicted_ahead.len()
    );
    let last = predicted_ahead.last().unwrap();
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
