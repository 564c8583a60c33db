//! The xds-server's ADS (state of the world) with real Envoy 1.40: Envoy takes its clusters
//! and endpoints from Shadowmesh, and endpoint changes made through the controller API move
//! where requests land.

use shadowmesh_examples::envoy::{AdsBootstrap, EnvoyOptions, EnvoyProcess, FilterChoice};
use shadowmesh_examples::loadgen;
use shadowmesh_examples::upstream::{self, OrcaMode, UpstreamConfig};
use shadowmesh_xds::cache::{CLUSTER_TYPE, ENDPOINT_TYPE, Snapshot, SnapshotCache};
use shadowmesh_xds::resources::{EndpointSpec, eds_cluster, load_assignment};
use std::time::Duration;

/// Polls until `f` holds (Envoy's admin API and data path have no change notifications).
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut wait = Duration::from_millis(10);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_takes_clusters_and_endpoints_from_ads_and_follows_endpoint_changes() {
    let a = upstream::start(
        UpstreamConfig::new("a", 64, Duration::ZERO, OrcaMode::Off),
        0,
    )
    .await
    .unwrap();
    let b = upstream::start(
        UpstreamConfig::new("b", 64, Duration::ZERO, OrcaMode::Off),
        0,
    )
    .await
    .unwrap();
    let cache = SnapshotCache::default();
    let snapshot = |endpoints: &[EndpointSpec]| {
        Snapshot::new(
            &[eds_cluster("checkout_primary")],
            &[load_assignment("checkout_primary", endpoints)],
        )
    };
    cache.set_snapshot("edge", snapshot(&[EndpointSpec::healthy(a.addr)]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let xds_port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(shadowmesh_xds::serve_ads(listener, cache.clone()));
    let yaml = AdsBootstrap {
        node_id: "edge-1".into(),
        node_cluster: "edge".into(),
        xds_port,
        control_port: 9,
        filter: FilterChoice::None,
    }
    .render()
    .unwrap();
    let envoy =
        tokio::task::spawn_blocking(move || EnvoyProcess::start(&yaml, &EnvoyOptions::default()))
            .await
            .unwrap()
            .unwrap();
    let client = loadgen::client();
    let lands_on = |server: &'static str| {
        let client = client.clone();
        let target = envoy.listener;
        async move || {
            loadgen::get(&client, target, "checkout.local", "/", &[]).await
                == Ok((200, Some(server.into())))
        }
    };

    eventually("requests served by endpoint a", lands_on("a")).await;
    let first = cache.snapshot_for("edge").unwrap();
    let proxies = cache.proxies();
    assert_eq!(proxies.len(), 1);
    assert_eq!(proxies[0].node_id, "edge-1");
    assert_eq!(
        proxies[0].acked.get(CLUSTER_TYPE),
        Some(&first.get(CLUSTER_TYPE).unwrap().version)
    );
    assert_eq!(
        proxies[0].acked.get(ENDPOINT_TYPE),
        Some(&first.get(ENDPOINT_TYPE).unwrap().version)
    );

    // The controller moves the cluster to endpoint b (and marks a gone).
    cache.set_snapshot("edge", snapshot(&[EndpointSpec::healthy(b.addr)]));
    eventually("requests served by endpoint b", lands_on("b")).await;
    let clusters = envoy.admin_get("/clusters").unwrap();
    assert!(
        clusters.contains(&format!("checkout_primary::{}", b.addr)),
        "{clusters}"
    );
    assert!(
        !clusters.contains(&format!("checkout_primary::{}", a.addr)),
        "{clusters}"
    );
    let second = cache.snapshot_for("edge").unwrap();
    eventually("EDS ACK of the new version", async || {
        cache.proxies()[0].acked.get(ENDPOINT_TYPE)
            == Some(&second.get(ENDPOINT_TYPE).unwrap().version)
    })
    .await;
    assert!(cache.proxies()[0].rejected.is_empty());
    server.abort();
}
