//! The xds-server's ADS (state of the world) with real Envoy 1.40: Envoy takes its clusters
//! and endpoints from Shadowmesh, and endpoint changes made through the controller API move
//! where requests land.

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use shadowmesh_examples::envoy::{AdsBootstrap, EnvoyOptions, EnvoyProcess, FilterChoice};
use shadowmesh_examples::loadgen;
use shadowmesh_examples::upstream::{self, OrcaMode, UpstreamConfig, UpstreamHandle};
use shadowmesh_xds::cache::{CLUSTER_TYPE, ENDPOINT_TYPE, Snapshot, SnapshotCache};
use shadowmesh_xds::resources::{EndpointSpec, eds_cluster, load_assignment};
use std::net::SocketAddr;
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

/// Two upstreams answering `x-served-by: a` and `b`.
async fn upstreams() -> (UpstreamHandle, UpstreamHandle) {
    let start = |name| {
        upstream::start(
            UpstreamConfig::new(name, 64, Duration::ZERO, OrcaMode::Off),
            0,
        )
    };
    (start("a").await.unwrap(), start("b").await.unwrap())
}

/// The `checkout_primary` EDS cluster with these endpoints.
fn primary_snapshot(endpoints: &[SocketAddr]) -> Snapshot {
    let endpoints: Vec<EndpointSpec> = endpoints
        .iter()
        .map(|a| EndpointSpec::healthy(*a))
        .collect();
    Snapshot::new(
        &[eds_cluster("checkout_primary")],
        &[load_assignment("checkout_primary", &endpoints)],
    )
}

/// Serves ADS for `cache` on an ephemeral port; returns the port and the serving task.
async fn spawn_ads(
    cache: &SnapshotCache,
) -> (
    u16,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (
        port,
        tokio::spawn(shadowmesh_xds::serve_ads(listener, cache.clone())),
    )
}

/// Envoy of proxy group `edge`, taking clusters and endpoints from ADS on `xds_port`.
async fn ads_envoy(xds_port: u16) -> EnvoyProcess {
    let yaml = AdsBootstrap {
        node_id: "edge-1".into(),
        node_cluster: "edge".into(),
        xds_port,
        control_port: 9,
        filter: FilterChoice::None,
    }
    .render()
    .unwrap();
    tokio::task::spawn_blocking(move || EnvoyProcess::start(&yaml, &EnvoyOptions::default()))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_takes_clusters_and_endpoints_from_ads_and_follows_endpoint_changes() {
    let (a, b) = upstreams().await;
    let cache = SnapshotCache::default();
    cache.set_snapshot("edge", primary_snapshot(&[a.addr]));
    let (xds_port, server) = spawn_ads(&cache).await;
    let envoy = ads_envoy(xds_port).await;
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
    cache.set_snapshot("edge", primary_snapshot(&[b.addr]));
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

/// Envoy NACKs an invalid resource: the server records the error and does not send that
/// version again, Envoy keeps serving the last good version without a failed request, and
/// the next valid version is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_resource_is_nacked_and_the_last_good_version_keeps_serving() {
    let (a, b) = upstreams().await;
    let cache = SnapshotCache::default();
    cache.set_snapshot("edge", primary_snapshot(&[a.addr]));
    let (xds_port, server) = spawn_ads(&cache).await;
    let envoy = ads_envoy(xds_port).await;
    let client = loadgen::client();
    let get = || loadgen::get(&client, envoy.listener, "checkout.local", "/", &[]);
    eventually("requests served by endpoint a", async || {
        get().await == Ok((200, Some("a".into())))
    })
    .await;

    // Port 70000 breaks Envoy's proto constraints for SocketAddress.port_value.
    let mut bad = load_assignment("checkout_primary", &[EndpointSpec::healthy(b.addr)]);
    if let Some(HostIdentifier::Endpoint(e)) = &mut bad.endpoints[0].lb_endpoints[0].host_identifier
        && let Some(AddressKind::SocketAddress(sa)) =
            e.address.as_mut().and_then(|a| a.address.as_mut())
    {
        sa.port_specifier = Some(PortSpecifier::PortValue(70_000));
    }
    let bad_snapshot = Snapshot::new(&[eds_cluster("checkout_primary")], &[bad]);
    let bad_version = bad_snapshot.get(ENDPOINT_TYPE).unwrap().version.clone();
    cache.set_snapshot("edge", bad_snapshot.clone());
    eventually("the NACK", async || {
        cache.proxies()[0]
            .rejected
            .get(ENDPOINT_TYPE)
            .is_some_and(|r| r.version == bad_version)
    })
    .await;
    let rejection = cache.proxies()[0].rejected[ENDPOINT_TYPE].clone();
    assert!(
        rejection.error.to_lowercase().contains("port"),
        "error detail: {}",
        rejection.error
    );
    let sent = cache.proxies()[0].responses[ENDPOINT_TYPE];
    // The last good version keeps serving, request for request.
    for _ in 0..50 {
        assert_eq!(get().await, Ok((200, Some("a".into()))));
    }
    // Setting the same bad content again changes nothing, and nothing is re-sent.
    cache.set_snapshot("edge", bad_snapshot);
    let generation = cache.generation();
    eventually("the stream processed the repeated snapshot", async || {
        cache.proxies()[0].synced_generation >= generation
    })
    .await;
    assert_eq!(
        cache.proxies()[0].responses[ENDPOINT_TYPE],
        sent,
        "rejected version re-sent"
    );

    // The next valid version is accepted.
    cache.set_snapshot("edge", primary_snapshot(&[b.addr]));
    eventually("requests served by endpoint b", async || {
        get().await == Ok((200, Some("b".into())))
    })
    .await;
    eventually("rejection cleared by the ACK", async || {
        cache.proxies()[0].rejected.is_empty()
    })
    .await;
    server.abort();
}

/// An xDS server in its own runtime on its own thread, so a test can kill it outright: every
/// connection dies with the runtime, as with a crashed process.
struct KillableXds {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KillableXds {
    fn start(port: u16, cache: SnapshotCache) -> KillableXds {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .unwrap();
                ready_tx
                    .send(listener.local_addr().unwrap().port())
                    .unwrap();
                tokio::select! {
                    _ = shadowmesh_xds::serve_ads(listener, cache) => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime cancels every connection task.
        });
        let _ = ready_rx.recv().unwrap();
        KillableXds {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn kill(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for KillableXds {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The control plane dies: Envoy keeps serving with what it has. It comes back (with the
/// controller's current state, which changed meanwhile): Envoy reconnects and converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_survives_a_control_plane_restart_and_converges() {
    let (a, b) = upstreams().await;
    let cache = SnapshotCache::default();
    cache.set_snapshot("edge", primary_snapshot(&[a.addr]));
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut xds = KillableXds::start(port, cache.clone());
    let envoy = ads_envoy(port).await;
    let client = loadgen::client();
    let get = || loadgen::get(&client, envoy.listener, "checkout.local", "/", &[]);
    eventually("requests served by endpoint a", async || {
        get().await == Ok((200, Some("a".into())))
    })
    .await;

    xds.kill();
    for _ in 0..50 {
        assert_eq!(
            get().await,
            Ok((200, Some("a".into()))),
            "Envoy serves on during the outage"
        );
    }
    // The restarted control plane starts from the controller's current state.
    let restarted = SnapshotCache::default();
    restarted.set_snapshot("edge", primary_snapshot(&[b.addr]));
    let _xds = KillableXds::start(port, restarted.clone());
    eventually(
        "requests served by endpoint b after reconnecting",
        async || get().await == Ok((200, Some("b".into()))),
    )
    .await;
    assert_eq!(restarted.proxies().len(), 1, "Envoy reconnected");
}

/// A changed cluster is re-warmed by Envoy, which then waits for its endpoints. The
/// endpoints did not change, yet they must be sent again — otherwise the cluster stays
/// warming until Envoy's fetch timeout (the classic stuck-warming bug).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_changed_alone_still_gets_its_endpoints() {
    let (a, _b) = upstreams().await;
    let endpoints = [load_assignment(
        "checkout_primary",
        &[EndpointSpec::healthy(a.addr)],
    )];
    let cache = SnapshotCache::default();
    cache.set_snapshot("edge", primary_snapshot(&[a.addr]));
    let (xds_port, server) = spawn_ads(&cache).await;
    let envoy = ads_envoy(xds_port).await;
    let client = loadgen::client();
    let get = || loadgen::get(&client, envoy.listener, "checkout.local", "/", &[]);
    eventually("requests served by endpoint a", async || {
        get().await == Ok((200, Some("a".into())))
    })
    .await;

    // Only the cluster changes (its connect timeout); the endpoints are identical.
    let mut changed = eds_cluster("checkout_primary");
    changed.connect_timeout = Some(envoy_types::pb::google::protobuf::Duration {
        seconds: 3,
        nanos: 0,
    });
    cache.set_snapshot("edge", Snapshot::new(&[changed], &endpoints));
    let started = std::time::Instant::now();
    // Warm again in far less than Envoy's 15 s EDS fetch timeout.
    eventually(
        "the changed cluster active and no cluster warming",
        async || {
            let dump = envoy
                .admin_get("/config_dump?resource=dynamic_active_clusters")
                .unwrap_or_default();
            dump.contains("\"connect_timeout\": \"3s\"")
                && envoy
                    .stat("cluster_manager.warming_clusters")
                    .ok()
                    .flatten()
                    == Some(0)
        },
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "warming took {:?}",
        started.elapsed()
    );
    assert_eq!(get().await, Ok((200, Some("a".into()))));
    server.abort();
}
