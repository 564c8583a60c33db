//! The xds-server's ADS with real Envoy 1.40, every scenario in both protocol variants
//! (`sotw::…` and `delta::…`): Envoy takes its clusters and endpoints from Shadowmesh,
//! changes made through the shadow registry (Rust and HTTP) show up in Envoy and in where
//! requests land, invalid resources are NACKed without harm, removals are applied, and
//! Envoy rides out a control-plane restart.

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use shadowmesh_testkit::envoy::{EnvoyProcess, FilterChoice};
use shadowmesh_testkit::loadgen;
use shadowmesh_testkit::upstream::{self, OrcaMode, UpstreamConfig, UpstreamHandle};
use shadowmesh_testkit::{spawn_plane, within};
use shadowmesh_xds::ControlPlane;
use shadowmesh_xds::registry::{ServiceChange, ServiceSpec, ShadowSet};
use shadowmesh_xds::xds::Ads;
use shadowmesh_xds::xds::builders::{EndpointSpec, eds_cluster, load_assignment};
use shadowmesh_xds::xds::{CLUSTER_TYPE, ENDPOINT_TYPE, Snapshot, SnapshotCache, XdsMode};
use std::collections::BTreeSet;
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
        tokio::spawn(shadowmesh_xds::xds::serve_ads(
            listener,
            Ads::new(cache.clone()),
            None,
            Default::default(),
            std::future::pending(),
        )),
    )
}

/// Envoy of proxy group `edge`, taking clusters and endpoints from ADS on `xds_port`, in
/// delta mode if `delta`, without a filter.
async fn ads_envoy(xds_port: u16, delta: bool) -> EnvoyProcess {
    shadowmesh_testkit::ads_envoy(xds_port, 9, FilterChoice::None, delta).await
}

/// Which upstreams answered `n` requests through Envoy's default route; an error if any
/// request failed.
async fn served_by(envoy: &EnvoyProcess, n: usize) -> Result<BTreeSet<String>, String> {
    let client = loadgen::client();
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        match loadgen::get(&client, envoy.listener, "checkout.local", "/", &[]).await {
            Ok((200, Some(s))) => {
                seen.insert(s);
            }
            other => return Err(format!("request failed: {other:?}")),
        }
    }
    Ok(seen)
}

/// `served_by`'s answer when every request landed on `name`.
fn only(name: &str) -> Result<BTreeSet<String>, String> {
    Ok([name.to_string()].into())
}

/// Two upstreams, a cache pointing group `edge`'s `checkout_primary` at `a`, ADS serving
/// it, and an Envoy (delta if `delta`) whose requests already land on `a`.
struct OnA {
    a: UpstreamHandle,
    b: UpstreamHandle,
    cache: SnapshotCache,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    envoy: EnvoyProcess,
}

async fn envoy_on_a(delta: bool) -> OnA {
    let (a, b) = upstreams().await;
    let cache = SnapshotCache::default();
    cache.set_snapshot("edge", primary_snapshot(&[a.addr]));
    let (xds_port, server) = spawn_ads(&cache).await;
    let envoy = ads_envoy(xds_port, delta).await;
    eventually("requests served by endpoint a", async || {
        served_by(&envoy, 1).await == only("a")
    })
    .await;
    OnA {
        a,
        b,
        cache,
        server,
        envoy,
    }
}

async fn envoy_takes_clusters_and_endpoints_from_ads_and_follows_endpoint_changes(delta: bool) {
    let OnA {
        a,
        b,
        cache,
        server,
        envoy,
    } = envoy_on_a(delta).await;
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

    // The cache moves the cluster to endpoint b (and a is gone).
    cache.set_snapshot("edge", primary_snapshot(&[b.addr]));
    eventually("requests served by endpoint b", async || {
        served_by(&envoy, 1).await == only("b")
    })
    .await;
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
async fn an_invalid_resource_is_nacked_and_the_last_good_version_keeps_serving(delta: bool) {
    // Both upstreams live to the end of the test (a dropped handle stops its server).
    let OnA {
        a: _a,
        b,
        cache,
        server,
        envoy,
    } = envoy_on_a(delta).await;

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
    assert_eq!(served_by(&envoy, 50).await, only("a"));
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
        served_by(&envoy, 1).await == only("b")
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
                    _ = shadowmesh_xds::xds::serve_ads(listener, Ads::new(cache), None, Default::default(), std::future::pending()) => {}
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
/// registry's current state, which changed meanwhile): Envoy reconnects and converges.
async fn envoy_survives_a_control_plane_restart_and_converges(delta: bool) {
    let (a, b) = upstreams().await;
    let cache = SnapshotCache::default();
    cache.set_snapshot("edge", primary_snapshot(&[a.addr]));
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut xds = KillableXds::start(port, cache.clone());
    let envoy = ads_envoy(port, delta).await;
    eventually("requests served by endpoint a", async || {
        served_by(&envoy, 1).await == only("a")
    })
    .await;

    xds.kill();
    assert_eq!(
        served_by(&envoy, 50).await,
        only("a"),
        "Envoy serves on during the outage"
    );
    // The restarted control plane starts from the current state.
    let restarted = SnapshotCache::default();
    restarted.set_snapshot("edge", primary_snapshot(&[b.addr]));
    let _xds = KillableXds::start(port, restarted.clone());
    eventually(
        "requests served by endpoint b after reconnecting",
        async || served_by(&envoy, 1).await == only("b"),
    )
    .await;
    assert_eq!(restarted.proxies().len(), 1, "Envoy reconnected");
}

/// A changed cluster is re-warmed by Envoy, which then waits for its endpoints. The
/// endpoints did not change, yet they must be sent again — otherwise the cluster stays
/// warming until Envoy's fetch timeout (the classic stuck-warming bug).
async fn a_cluster_changed_alone_still_gets_its_endpoints(delta: bool) {
    let OnA {
        a,
        b: _b,
        cache,
        server,
        envoy,
    } = envoy_on_a(delta).await;
    let endpoints = [load_assignment(
        "checkout_primary",
        &[EndpointSpec::healthy(a.addr)],
    )];

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
    assert_eq!(served_by(&envoy, 1).await, only("a"));
    server.abort();
}

/// The mode a test's Envoy should report.
fn mode(delta: bool) -> XdsMode {
    if delta { XdsMode::Delta } else { XdsMode::Sotw }
}

/// A service created over the admin HTTP API reaches Envoy as its three clusters; primary
/// endpoints added and removed move where requests land; shadow nodes set with a weight
/// and health show up in Envoy's shadow pool and leave it when released; `/v1/proxies`
/// and `/metrics` show the Envoy and its ACKs.
async fn registry_changes_reach_envoy(delta: bool) {
    let (a, b) = upstreams().await;
    let plane = ControlPlane::default();
    let (http, ads_port, task) = spawn_plane(&plane).await;
    let client = loadgen::client();
    let call = async |method: &str, path: &str, body: Option<&str>| {
        loadgen::request_json(&client, method, http, path, body)
            .await
            .unwrap()
    };
    let body = format!(r#"{{"primary": [{{"address": "{}"}}]}}"#, a.addr);
    assert_eq!(
        call("PUT", "/v1/services/checkout", Some(&body)).await.0,
        200
    );
    let envoy = ads_envoy(ads_port, delta).await;
    eventually("requests served by a", async || {
        served_by(&envoy, 1).await == only("a")
    })
    .await;
    let clusters = envoy.admin_get("/clusters").unwrap();
    for c in [
        "checkout_primary",
        "checkout_shadow_pool",
        "checkout_shadow",
    ] {
        assert!(
            clusters.contains(&format!("{c}::")),
            "{c} missing: {clusters}"
        );
    }

    // Primary endpoint added (Rust API): requests land on both; a removed: only b.
    plane
        .registry
        .set_primary(
            "checkout",
            &[EndpointSpec::healthy(a.addr), EndpointSpec::healthy(b.addr)],
        )
        .unwrap();
    eventually("requests served by a and b", async || {
        served_by(&envoy, 20).await.is_ok_and(|s| s.len() == 2)
    })
    .await;
    plane
        .registry
        .set_primary("checkout", &[EndpointSpec::healthy(b.addr)])
        .unwrap();
    eventually("requests served by b only", async || {
        served_by(&envoy, 20).await == only("b")
    })
    .await;

    // Shadows over HTTP: one weighted healthy node and one unhealthy node.
    let shadows = format!(
        r#"{{"endpoints": [{{"address": "{}", "weight": 3}}, {{"address": "127.0.0.1:9", "healthy": false}}]}}"#,
        a.addr
    );
    assert_eq!(
        call("PUT", "/v1/services/checkout/shadows", Some(&shadows))
            .await
            .0,
        200
    );
    let pool_a = format!("checkout_shadow_pool::{}", a.addr);
    eventually("the shadows in Envoy's pool", async || {
        let c = envoy.admin_get("/clusters").unwrap_or_default();
        c.contains(&format!("{pool_a}::weight::3"))
            && c.contains("checkout_shadow_pool::127.0.0.1:9::health_flags::/failed_eds_health")
    })
    .await;
    // A bad request changes nothing and says why.
    let (status, body) = call(
        "PUT",
        "/v1/services/checkout/shadows",
        Some(r#"{"endpoints": [{"address": "127.0.0.1:9", "weight": 100000}]}"#),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("endpoints[0].weight"), "{body}");

    // Released: the pool empties.
    assert_eq!(
        call("DELETE", "/v1/services/checkout/shadows", None)
            .await
            .0,
        200
    );
    eventually("the pool emptied", async || {
        !envoy
            .admin_get("/clusters")
            .unwrap_or_default()
            .contains("checkout_shadow_pool::127.0.0.1:")
    })
    .await;
    let desired = plane.cache.snapshot_for("edge").unwrap();
    let eds_version = desired.get(ENDPOINT_TYPE).unwrap().version.clone();
    within(
        "Envoy's ACK of the emptied pool",
        Duration::from_secs(20),
        plane
            .cache
            .wait_for(|p| p.len() == 1 && p[0].acked.get(ENDPOINT_TYPE) == Some(&eds_version)),
    )
    .await;

    let (_, proxies) = call("GET", "/v1/proxies", None).await;
    let proxies: serde_json::Value = serde_json::from_str(&proxies).unwrap();
    assert_eq!(proxies[0]["node_id"], "edge-1");
    assert_eq!(proxies[0]["mode"], mode(delta).as_str());
    assert_eq!(proxies[0]["acked"][ENDPOINT_TYPE], eds_version.as_str());
    let (_, metrics) = call("GET", "/metrics", None).await;
    let m = mode(delta).as_str();
    assert!(
        metrics.contains(&format!(
            "shadowmesh_xds_connected_proxies{{mode=\"{m}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "shadowmesh_xds_acks_total{{type=\"endpoint\",mode=\"{m}\"}}"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("shadowmesh_xds_push_latency_seconds_bucket"));
    task.abort();
}

/// A removed service's clusters leave Envoy (in delta: `removed_resources`), and a service
/// replaced by another in one change goes make-before-break: the new clusters first,
/// beside the old, the removal once Envoy has ACKed them.
async fn removed_services_leave_envoy_after_their_replacement(delta: bool) {
    let (a, b) = upstreams().await;
    let plane = ControlPlane::default();
    let (_http, ads_port, task) = spawn_plane(&plane).await;
    let c = &plane.registry;
    c.set_primary("checkout", &[EndpointSpec::healthy(a.addr)])
        .unwrap();
    c.set_primary("payments", &[EndpointSpec::healthy(b.addr)])
        .unwrap();
    let envoy = ads_envoy(ads_port, delta).await;
    eventually("payments clusters in Envoy", async || {
        envoy
            .admin_get("/clusters")
            .unwrap_or_default()
            .contains(&format!("payments_primary::{}", b.addr))
    })
    .await;

    c.remove_service("payments").unwrap();
    eventually("payments clusters gone from Envoy", async || {
        let clusters = envoy.admin_get("/clusters").unwrap_or_default();
        !clusters.is_empty() && !clusters.contains("payments_")
    })
    .await;
    assert_eq!(served_by(&envoy, 10).await, only("a"));

    // Replace checkout's sibling "orders" by "billing" in one snapshot change.
    c.set_primary("orders", &[EndpointSpec::healthy(b.addr)])
        .unwrap();
    let cds = |p: &ControlPlane| {
        p.cache
            .snapshot_for("edge")
            .unwrap()
            .get(CLUSTER_TYPE)
            .unwrap()
            .version
            .clone()
    };
    let before = cds(&plane);
    within(
        "Envoy's ACK of orders' clusters",
        Duration::from_secs(20),
        plane
            .cache
            .wait_for(|p| p.len() == 1 && p[0].acked.get(CLUSTER_TYPE) == Some(&before)),
    )
    .await;
    let responses_before = plane.cache.proxies()[0].responses[CLUSTER_TYPE];
    c.apply([
        ServiceChange::Remove("orders".into()),
        ServiceChange::Set(ServiceSpec {
            name: "billing".into(),
            primary: c.services()["checkout"].primary.clone(),
            shadows: None,
        }),
    ])
    .unwrap();
    let after = cds(&plane);
    within(
        "Envoy's ACK of the replacement",
        Duration::from_secs(20),
        plane
            .cache
            .wait_for(|p| p[0].acked.get(CLUSTER_TYPE) == Some(&after)),
    )
    .await;
    assert_eq!(
        plane.cache.proxies()[0].responses[CLUSTER_TYPE] - responses_before,
        2,
        "two steps: add beside, then remove"
    );
    eventually("billing in, orders out", async || {
        let clusters = envoy.admin_get("/clusters").unwrap_or_default();
        clusters.contains("billing_primary::") && !clusters.contains("orders_")
    })
    .await;
    assert_eq!(served_by(&envoy, 10).await, only("a"));
    task.abort();
}

/// The control plane as the `shadowmesh-xds` command runs it, from a configuration file:
/// Envoy receives the configured service and the admin API lists it.
async fn the_configured_command_line_serves_envoy(delta: bool) {
    use clap::Parser;
    let (a, _b) = upstreams().await;
    let dir =
        std::env::temp_dir().join(format!("shadowmesh-xds-cli-{}-{delta}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("xds.toml");
    std::fs::write(
        &config,
        format!(
            "grouping = \"id\"\n[[services]]\nname = \"checkout\"\nprimary = [{{ address = \"{}\" }}]\n",
            a.addr
        ),
    )
    .unwrap();
    let args = shadowmesh_xds::cli::Args::try_parse_from([
        "shadowmesh-xds",
        "--config",
        config.to_str().unwrap(),
        "--http-listen",
        "127.0.0.1:0",
        "--ads-listen",
        "127.0.0.1:0",
    ])
    .unwrap();
    let running = shadowmesh_xds::cli::start(args.resolve().unwrap())
        .await
        .unwrap();
    let envoy = ads_envoy(running.ads_addr.port(), delta).await;
    eventually("requests served by the configured primary", async || {
        served_by(&envoy, 1).await == only("a")
    })
    .await;
    let proxies = running.plane.cache.proxies();
    assert_eq!(proxies[0].group, "edge-1", "grouped by node id");
    let (status, services) = loadgen::request_json(
        &loadgen::client(),
        "GET",
        running.http_addr,
        "/v1/services",
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(services.contains("checkout_shadow_pool"), "{services}");
    running.task.abort();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The whole path with real pieces: the ADS bootstrap running the ATRE filter, the
/// primary, shadow pool and aggregate clusters all delivered by the registry, and a
/// surge beyond the primary's capacity redirected to the shadow node without errors.
async fn atre_redirects_to_a_shadow_delivered_over_ads(delta: bool) {
    use shadowmesh_testkit::loadgen::{LoadSpec, RateProfile};
    let start = |name, max| {
        upstream::start(
            UpstreamConfig::new(name, max, Duration::from_millis(20), OrcaMode::Off),
            0,
        )
    };
    // The primary serves 8 × 50 = 400 req/s at most.
    let (primary, shadow) = (
        start("primary", 8).await.unwrap(),
        start("shadow", 64).await.unwrap(),
    );
    let plane = ControlPlane::default();
    let (http, ads_port, task) = spawn_plane(&plane).await;
    plane
        .registry
        .set_primary("checkout", &[EndpointSpec::healthy(primary.addr)])
        .unwrap();
    plane
        .registry
        .set_shadows(
            "checkout",
            &ShadowSet::warm(vec![EndpointSpec::healthy(shadow.addr)], 16),
        )
        .unwrap();
    let plugin = shadowmesh_testkit::atre_plugin(8);
    let envoy = shadowmesh_testkit::ads_envoy(
        ads_port,
        http.port(),
        FilterChoice::Atre(plugin.to_string()),
        delta,
    )
    .await;
    eventually("requests served by the primary", async || {
        served_by(&envoy, 1).await == only("primary")
    })
    .await;
    // The filter's telemetry reached this control plane: the data path is live.
    within(
        "the first telemetry report",
        Duration::from_secs(20),
        plane.hub.wait_for(|r| !r.is_empty()),
    )
    .await;

    let report = loadgen::run(
        LoadSpec::new(
            envoy.listener,
            RateProfile::Constant {
                rps: 600.0,
                duration: Duration::from_secs(4),
            },
        ),
        |_| {},
    )
    .await;
    assert_eq!(report.errors, 0, "{:?}", report.error_kinds);
    let to_shadow = report.by_server.get("shadow").copied().unwrap_or(0);
    assert!(
        to_shadow > report.sent / 5,
        "the surge was not redirected to the ADS-delivered shadow: {:?}",
        report.by_server
    );
    task.abort();
}

/// Scenarios that only check configuration flowing through share the machine.
async fn shared() -> tokio::sync::OwnedRwLockReadGuard<()> {
    shadowmesh_testkit::load_test_lock().read_owned().await
}

/// A scenario that asserts behaviour under load (zero errors during a surge) runs alone:
/// on 2 cores, Envoys of other scenarios would take the time it measures.
async fn alone() -> tokio::sync::OwnedRwLockWriteGuard<()> {
    shadowmesh_testkit::load_test_lock().write_owned().await
}

/// Every scenario, once per protocol variant, holding the load-test lock as given.
macro_rules! in_both_modes {
    ($($lock:ident $scenario:ident),* $(,)?) => {
        mod sotw {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let _slot = super::$lock().await;
                    super::$scenario(false).await
                }
            )*
        }
        mod delta {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let _slot = super::$lock().await;
                    super::$scenario(true).await
                }
            )*
        }
    };
}

in_both_modes!(
    shared envoy_takes_clusters_and_endpoints_from_ads_and_follows_endpoint_changes,
    shared an_invalid_resource_is_nacked_and_the_last_good_version_keeps_serving,
    shared envoy_survives_a_control_plane_restart_and_converges,
    shared a_cluster_changed_alone_still_gets_its_endpoints,
    shared registry_changes_reach_envoy,
    shared removed_services_leave_envoy_after_their_replacement,
    shared the_configured_command_line_serves_envoy,
    alone atre_redirects_to_a_shadow_delivered_over_ads,
);
