//! ATRE in real Envoy 1.40: every test starts its own upstreams, control plane and Envoy on
//! loopback with ephemeral ports, drives real traffic, and stops everything at the end.

use shadowmesh_testkit::envoy::{Bootstrap, EnvoyProcess, FilterChoice, default_plugin_config};
use shadowmesh_testkit::loadgen::{self, LoadSpec, Phase, RateProfile};
use shadowmesh_testkit::upstream::OrcaMode;
use shadowmesh_testkit::{Stack, StackConfig};
use shadowmesh_wire::{RedirectState, TelemetryReport};
use shadowmesh_xds::registry::ShadowSet;
use shadowmesh_xds::xds::builders::EndpointSpec;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn phases(p: &[(u64, f64, f64)]) -> RateProfile {
    RateProfile::Phases(
        p.iter()
            .map(|&(secs, from, to)| Phase {
                duration: Duration::from_secs(secs),
                from,
                to,
            })
            .collect(),
    )
}

fn total_requests(reports: &[TelemetryReport]) -> u64 {
    reports
        .iter()
        .flat_map(|r| &r.services)
        .map(|s| s.requests)
        .sum()
}

/// Polls `f` with backoff until it returns `Some`, for state only observable by polling
/// (Envoy's admin API has no change notifications).
async fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut wait = Duration::from_millis(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(200));
    }
}

/// The state changes Envoy logged for the service.
fn transitions(stack: &Stack) -> Vec<String> {
    shadowmesh_testkit::traffic_mix::transitions(&stack.envoy)
}

/// Primary capacity: 8 concurrent × ~21 ms ≈ 380 rps; `max_in_flight` 8. A 750 rps surge
/// (demand ≈ 2) must be split so the primary stays near its 0.8 target, then traffic
/// returns when the surge ends, with exactly one entry and one exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surge_excess_goes_to_shadow_and_returns_without_flapping() {
    let stack = Stack::start(StackConfig::atre(8)).await.unwrap();
    stack.wait_for_first_report().await.unwrap();
    let before = stack.hub.reports().len();

    // calm 3 s, surge 8 s, calm 6 s; a third of the traffic carries sessions.
    let profile = phases(&[(3, 100.0, 100.0), (8, 500.0, 500.0), (6, 100.0, 100.0)]);
    let sessionless = LoadSpec::new(stack.envoy.listener, profile.clone());
    let mut sessionful = LoadSpec::new(stack.envoy.listener, scale(&profile, 0.5));
    sessionful.sessions = Some(50);
    let (a, b) = tokio::join!(
        loadgen::run(sessionless, |_| {}),
        loadgen::run(sessionful, |_| {})
    );

    assert_eq!(
        a.errors + b.errors,
        0,
        "client errors: {:?} {:?}",
        a.error_kinds,
        b.error_kinds
    );
    // Seconds 0-2: calm, nothing redirected.
    for s in a.seconds.iter().take(3) {
        assert_eq!(
            s.by_server.get("shadow"),
            None,
            "calm second {} redirected",
            s.index
        );
    }
    // Surge seconds 6-10 (after the controller settled): the shadow takes the excess,
    // neither nothing nor everything.
    let surge: Vec<_> = a
        .seconds
        .iter()
        .filter(|s| (6..11).contains(&s.index))
        .collect();
    let (to_shadow, all): (u64, u64) = surge
        .iter()
        .map(|s| (s.by_server.get("shadow").copied().unwrap_or(0), s.ok))
        .fold((0, 0), |(x, y), (a, b)| (x + a, y + b));
    let share = to_shadow as f64 / all as f64;
    assert!(
        (0.3..0.75).contains(&share),
        "shadow share during surge {share:.2}"
    );
    // Last calm seconds: everything back on the primary.
    for s in a.seconds.iter().filter(|s| s.index >= 15) {
        assert_eq!(
            s.by_server.get("shadow"),
            None,
            "second {} still redirected",
            s.index
        );
    }
    // The primary was held near its target rather than pushed to its limit.
    let reports = stack.hub.reports();
    for r in &reports[before..] {
        let s = &r.services[0];
        eprintln!(
            "{:?} share {:.2} req {} redir {} | primary load {:.2} inflight {} p50 {:.1} | shadow load {:.2} inflight {} p50 {:.1}",
            s.state,
            s.redirect_share,
            s.requests,
            s.redirected,
            s.primary.load_score,
            s.primary.in_flight,
            s.primary.latency_ms.p50,
            s.shadow.load_score,
            s.shadow.in_flight,
            s.shadow.latency_ms.p50
        );
    }
    // Held: every redirecting report after the one that entered redirection (whose window
    // straddles the switch).
    let mut held: Vec<f64> = reports[before..]
        .iter()
        .flat_map(|r| &r.services)
        .filter(|s| s.state == RedirectState::Redirecting && s.redirected > 0)
        .skip(1)
        .map(|s| s.primary.load_score)
        .collect();
    assert!(held.len() >= 4, "redirecting reports: {}", held.len());
    held.sort_by(f64::total_cmp);
    let median = held[held.len() / 2];
    // The plugin's target is 0.8: near it means a median within 0.1 of it. (Each report
    // carries the load at one instant — in-flight requests are whole numbers of 8 slots —
    // so single reports scatter; the median is what the controller holds.)
    assert!(
        (0.7..=0.9).contains(&median),
        "primary load while redirecting: median {median:.2} of {held:?}"
    );
    // Exactly one entry and one exit: no flapping.
    let t = transitions(&stack);
    assert_eq!(t.len(), 2, "state transitions: {t:?}");
    assert!(
        t[0].starts_with("Normal -> Redirecting") && t[1].starts_with("Redirecting -> Normal"),
        "{t:?}"
    );
    // Sessions: once moved to the shadow, a session stays there until the surge ends
    // (its servers read primary*, shadow*, primary*).
    for (session, servers) in &b.session_servers {
        let mut phase = 0; // 0 primary before, 1 shadow, 2 primary after
        for s in servers {
            phase = match (phase, s.as_str()) {
                (0, "primary") => 0,
                (0 | 1, "shadow") => 1,
                (1 | 2, "primary") => 2,
                _ => panic!("session {session} bounced: {servers:?}"),
            };
        }
    }
    assert!(
        b.session_servers
            .values()
            .any(|s| s.iter().any(|x| x == "shadow")),
        "some sessions moved"
    );
    assert_eq!(
        stack
            .primary
            .stats
            .leaked_route_headers
            .load(Ordering::Relaxed),
        0
    );
}

fn scale(p: &RateProfile, f: f64) -> RateProfile {
    match p {
        RateProfile::Phases(ph) => RateProfile::Phases(
            ph.iter()
                .map(|x| Phase {
                    duration: x.duration,
                    from: x.from * f,
                    to: x.to * f,
                })
                .collect(),
        ),
        RateProfile::Constant { rps, duration } => RateProfile::Constant {
            rps: rps * f,
            duration: *duration,
        },
    }
}

/// The shadow disappears mid-surge, first unannounced (its process dies: Envoy's aggregate
/// cluster and retries move its requests to the primary), then announced (the control
/// plane marks it not warm: the filter stops redirecting and counts fallbacks). No client
/// sees an error.
///
/// The load is above the primary's redirect threshold but within what it can physically
/// serve alone (≈ 760 rps): falling back is meant to degrade latency, not to fail requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_gone_falls_back_to_primary_with_zero_errors() {
    let mut config = StackConfig::atre(16);
    config.service()["thresholds"] = serde_json::json!({"enter": 0.7, "target": 0.6, "exit": 0.4});
    let stack = Stack::start(config).await.unwrap();
    stack.wait_for_first_report().await.unwrap();
    let spec = LoadSpec::new(
        stack.envoy.listener,
        RateProfile::Constant {
            rps: 650.0,
            duration: Duration::from_secs(10),
        },
    );
    let load = tokio::spawn(loadgen::run(spec, |_| {}));

    // Wait until redirection is under way.
    tokio::time::timeout(
        Duration::from_secs(8),
        stack
            .hub
            .wait_for(|r| r.iter().flat_map(|r| &r.services).any(|s| s.redirected > 0)),
    )
    .await
    .expect("redirection started");
    // Unannounced: the shadow process dies. Redirected requests keep going to it until
    // Envoy's outlier detection ejects it; each of those is retried on the primary.
    stack.shadow.shutdown().await;
    let served_before = stack.shadow.stats.served.load(Ordering::Relaxed);
    // Proof that redirected requests reached the dead shadow: Envoy retried them on the
    // primary through the aggregate cluster, and ejected the shadow.
    let retried = "cluster.checkout_shadow.upstream_rq_retry_success";
    let ejected = "cluster.checkout_shadow_pool.outlier_detection.ejections_enforced_total";
    eventually(
        "a redirected request reaching the dead shadow, retried on the primary",
        Duration::from_secs(5),
        || {
            (stack.envoy.stat(retried).ok()?? > 0 && stack.envoy.stat(ejected).ok()?? > 0)
                .then_some(())
        },
    )
    .await;
    // Announced: the control plane says the shadow is gone (endpoints kept, not warm).
    stack
        .plane
        .registry
        .set_service(
            "checkout",
            &[EndpointSpec::healthy(stack.primary.addr)],
            Some(ShadowSet {
                endpoints: vec![EndpointSpec::healthy(stack.shadow.addr)],
                warm: false,
                max_in_flight: 16,
                expires_at_ms: None,
            }),
        )
        .unwrap();
    let report = load.await.unwrap();
    if report.errors > 0 {
        let stats = stack.envoy.admin_get("/stats").unwrap();
        for l in stats.lines().filter(|l| {
            (l.contains("retry")
                || l.contains("5xx")
                || l.contains("outlier")
                || l.contains("cx_connect_fail")
                || l.contains("no_healthy")
                || l.contains("rq_error"))
                && !l.ends_with(": 0")
        }) {
            eprintln!("{l}");
        }
    }
    assert_eq!(
        report.errors, 0,
        "client errors after the shadow went away: {:?}",
        report.error_kinds
    );
    assert_eq!(
        stack.shadow.stats.served.load(Ordering::Relaxed),
        served_before
    );
    let reports = stack.hub.reports();
    let fallbacks: u64 = reports
        .iter()
        .flat_map(|r| &r.services)
        .map(|s| s.fallbacks)
        .sum();
    assert!(
        fallbacks > 0,
        "filter counted fallbacks once the shadow was marked not warm"
    );
    let last = reports.last().unwrap();
    assert_eq!(
        last.services[0].redirected, 0,
        "no redirects once the shadow is not ready"
    );
}

/// A client cannot pick a cluster: the routing header it sends is overwritten or removed,
/// counted, and never reaches an upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_routing_header_is_ignored_and_counted() {
    let stack = Stack::start(StackConfig::atre(16)).await.unwrap();
    let c = loadgen::client();
    let spoof = |cluster: &str, internal: bool| {
        let mut h = vec![("x-shadowmesh-cluster".to_string(), cluster.to_string())];
        if internal {
            // Envoy strips `internal_only_headers` from external requests before any filter
            // runs; an internal source (RFC 1918 x-forwarded-for) gets past that layer, so
            // only the filter stands between it and the cluster choice.
            h.push(("x-forwarded-for".to_string(), "10.1.2.3".to_string()));
        }
        h
    };
    for cluster in [
        "checkout_shadow",
        "checkout_shadow_pool",
        "shadowmesh_control",
        "nonexistent",
    ] {
        for internal in [false, true] {
            let r = loadgen::get(
                &c,
                stack.envoy.listener,
                "checkout.local",
                "/",
                &spoof(cluster, internal),
            )
            .await;
            assert_eq!(
                r,
                Ok((200, Some("primary".into()))),
                "spoofed {cluster} (internal: {internal})"
            );
        }
    }
    // Only the 4 internal requests reached the filter with the header.
    eventually("spoofed counter = 4", Duration::from_secs(10), || {
        (stack
            .prometheus_value("shadowmesh_spoofed_route_headers_total")
            .ok()??
            == 4.0)
            .then_some(())
    })
    .await;
    // An authority no service answers: the header must be removed, not honoured.
    let mut plugin = default_plugin_config().unwrap();
    plugin["services"][0]["hosts"] = serde_json::json!(["checkout.local"]);
    drop(stack);
    let mut config = StackConfig::atre(16);
    config.plugin = Some(plugin);
    let stack = Stack::start(config).await.unwrap();
    let r = loadgen::get(
        &c,
        stack.envoy.listener,
        "other.local",
        "/",
        &spoof("checkout_shadow", true),
    )
    .await;
    assert_eq!(r, Ok((200, Some("primary".into()))));
    assert_eq!(stack.shadow.stats.served.load(Ordering::Relaxed), 0);
    assert_eq!(
        stack
            .primary
            .stats
            .leaked_route_headers
            .load(Ordering::Relaxed),
        0
    );
    eventually("spoofed counter", Duration::from_secs(10), || {
        (stack
            .prometheus_value("shadowmesh_spoofed_route_headers_total")
            .ok()??
            == 1.0)
            .then_some(())
    })
    .await;
}

/// Malformed ORCA headers never affect requests; they are counted. Well-formed TEXT and
/// JSON reports feed the load score.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orca_reports_are_used_and_malformed_ones_counted() {
    let mut config = StackConfig::atre(16);
    config.orca = OrcaMode::Malformed;
    let stack = Stack::start(config).await.unwrap();
    let c = loadgen::client();
    for _ in 0..20 {
        let r = loadgen::get(&c, stack.envoy.listener, "checkout.local", "/", &[]).await;
        assert_eq!(r, Ok((200, Some("primary".into()))));
    }
    eventually("orca_malformed_total = 20", Duration::from_secs(10), || {
        let v = stack
            .prometheus_value(
                "shadowmesh_service_orca_malformed_total{shadowmesh_service=\"checkout\"}",
            )
            .ok()??;
        (v == 20.0).then_some(())
    })
    .await;
    for mode in [OrcaMode::Text, OrcaMode::Json] {
        stack.primary.set_orca(mode);
        let seen = stack.hub.reports().len();
        for _ in 0..10 {
            loadgen::get(&c, stack.envoy.listener, "checkout.local", "/", &[])
                .await
                .unwrap();
        }
        tokio::time::timeout(
            Duration::from_secs(10),
            stack.hub.wait_for(|r| {
                r[seen.min(r.len())..]
                    .iter()
                    .any(|r| r.services[0].primary.orca_reports > 0)
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("{mode:?} ORCA reports reach telemetry"));
        let r = stack.hub.reports();
        let s = r[seen..]
            .iter()
            .find(|r| r.services[0].primary.orca_reports > 0)
            .unwrap();
        let u = s.services[0].primary.orca_utilization.unwrap();
        // Sequential requests: at most one in the system out of 16 slots, and one most of
        // the time it is busy — the upstream reports a time average, which idle gaps
        // (between requests, before this loop) lower. A report read as a percentage, or
        // not scaled at all, falls outside.
        assert!(
            u > 0.1 / 16.0 && u <= 1.0 / 16.0 + 0.002,
            "{mode:?} utilization {u}"
        );
    }
}

/// A primary that reports its utilization (ORCA) tells the filter what it serves at once,
/// before any surge: at 200 requests a second of 20 ms, 4 in flight are utilization 0.5 of
/// a primary that serves 8 — so a `max_in_flight` of 16 puts the 0.8 target inside its
/// queue. The filter warns, naming the field; with `max_in_flight` 8, the same traffic
/// draws no warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orca_utilization_checks_max_in_flight_before_any_surge() {
    let calm = || phases(&[(4, 200.0, 200.0)]);
    let capacity_warnings = |stack: &Stack| -> Vec<String> {
        stack
            .envoy
            .log()
            .lines()
            .filter(|l| l.contains("primary.max_in_flight is"))
            .map(str::to_string)
            .collect()
    };
    for (max_in_flight, warned) in [(16, true), (8, false)] {
        let mut config = StackConfig::atre(max_in_flight);
        config.primary.0 = 8;
        config.orca = OrcaMode::Json;
        let stack = Stack::start(config).await.unwrap();
        let load = loadgen::run(LoadSpec::new(stack.envoy.listener, calm()), |_| {}).await;
        assert_eq!(load.errors, 0, "{:?}", load.error_kinds);
        let found = capacity_warnings(&stack);
        if warned {
            let w = found
                .first()
                .unwrap_or_else(|| panic!("no warning for max_in_flight {max_in_flight}"));
            eprintln!("{w}");
            assert!(
                w.contains("services[0].primary.max_in_flight is 16, but cluster checkout_primary reports (ORCA) utilization"),
                "{w}"
            );
            let knee: f64 = w
                .split("full at about ")
                .nth(1)
                .and_then(|t| t.split(' ').next())
                .and_then(|k| k.parse().ok())
                .unwrap_or_else(|| panic!("parallelism in {w}"));
            assert!(
                (7.0..=10.0).contains(&knee),
                "serves 8 at once; {knee} in {w}"
            );
            assert_eq!(
                transitions(&stack),
                Vec::<String>::new(),
                "a warning, not a redirect"
            );
        } else {
            assert_eq!(found, Vec::<String>::new(), "max_in_flight {max_in_flight}");
        }
    }
}

/// An invalid plugin configuration makes Envoy refuse to start, and the log names the field.
#[test]
fn invalid_plugin_configuration_is_rejected_naming_the_field() {
    let mut plugin = default_plugin_config().unwrap();
    plugin["services"][0]["thresholds"]["exit"] = 0.95.into();
    let yaml = Bootstrap {
        node_id: "bad".into(),
        primary_port: 9,
        shadow_port: 9,
        control_port: 9,
        filter: FilterChoice::Atre(plugin.to_string()),
    }
    .render()
    .unwrap();
    let log = EnvoyProcess::expect_rejection(&yaml).unwrap();
    assert!(
        log.contains("field `services[0].thresholds.exit`: must be below thresholds.target"),
        "log does not name the field:\n{log}"
    );
}

/// The report the control plane receives matches the traffic sent, request for request,
/// and the same counts show in Envoy's Prometheus endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_and_prometheus_match_the_traffic() {
    let mut config = StackConfig::atre(16);
    config.service()["primary"]["max_in_flight"] = 1000.into(); // never redirect here
    config.plugin.as_mut().unwrap()["proxy_id"] = "edge-7".into();
    let stack = Stack::start(config).await.unwrap();
    let spec = LoadSpec::new(
        stack.envoy.listener,
        RateProfile::Constant {
            rps: 200.0,
            duration: Duration::from_secs(2),
        },
    );
    let sent = loadgen::run(spec, |_| {}).await;
    assert_eq!(sent.errors, 0);
    tokio::time::timeout(
        Duration::from_secs(10),
        stack.hub.wait_for(|r| total_requests(r) >= sent.sent),
    )
    .await
    .expect("all requests reported");
    let reports = stack.hub.reports();
    assert_eq!(total_requests(&reports), sent.sent);
    assert!(reports.iter().all(|r| r.proxy == "edge-7"));
    // Sequence numbers start at the filter's clock (ms) and count up by one: consecutive
    // means no report was lost.
    let seqs: Vec<u64> = reports.iter().map(|r| r.seq).collect();
    let first = seqs[0];
    assert!(
        first > 1_600_000_000_000,
        "seq starts at the clock: {first}"
    );
    assert_eq!(
        seqs,
        (first..first + seqs.len() as u64).collect::<Vec<_>>(),
        "no lost reports"
    );
    let primary: u64 = reports
        .iter()
        .map(|r| r.services[0].primary.latency_ms.count)
        .sum();
    assert_eq!(primary, sent.sent);
    let max_p99 = reports
        .iter()
        .map(|r| r.services[0].primary.latency_ms.p99)
        .fold(0.0, f64::max);
    assert!(
        (19.0..200.0).contains(&max_p99),
        "p99 {max_p99} ms for a 20 ms service"
    );
    let metric = "shadowmesh_service_requests_total{shadowmesh_service=\"checkout\"}";
    eventually("Prometheus requests_total", Duration::from_secs(10), || {
        (stack.prometheus_value(metric).ok()?? == sent.sent as f64).then_some(())
    })
    .await;
}

/// A client that uploads slowly holds its stream open, but not the cluster's latency: the
/// filter counts a request's latency up to the cluster's response headers, so a slow
/// upload (or download) cannot make the primary look slow — the capacity check would
/// take it for a queue. Three POSTs whose 12-byte bodies trickle in over ~0.6 s each,
/// to a 20 ms primary that answers without waiting for the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_is_not_the_clusters_latency() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = StackConfig::atre(16);
    config.service()["primary"]["max_in_flight"] = 1000.into();
    let stack = Stack::start(config).await.unwrap();
    let mut stream_ms = Vec::new();
    for _ in 0..3 {
        let started = tokio::time::Instant::now();
        let mut tcp = tokio::net::TcpStream::connect(stack.envoy.listener)
            .await
            .unwrap();
        tcp.write_all(b"POST / HTTP/1.1\r\nhost: checkout.local\r\ncontent-length: 12\r\n\r\n")
            .await
            .unwrap();
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tcp.write_all(b"x").await.unwrap();
        }
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while !answer.windows(7).any(|w| w == b"primary") {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
        }
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        stream_ms.push(started.elapsed().as_millis());
    }
    assert!(
        stream_ms.iter().all(|ms| *ms >= 600),
        "slow uploads: {stream_ms:?}"
    );
    tokio::time::timeout(
        Duration::from_secs(10),
        stack.hub.wait_for(|r| {
            r.iter()
                .map(|r| r.services[0].primary.latency_ms.count)
                .sum::<u64>()
                >= 3
        }),
    )
    .await
    .expect("the three requests reported");
    let max_ms = stack
        .hub
        .reports()
        .iter()
        .map(|r| r.services[0].primary.latency_ms.max)
        .fold(0.0, f64::max);
    assert!(
        max_ms < 200.0,
        "latency {max_ms} ms for a 20 ms primary; the streams took {stream_ms:?} ms"
    );
}

/// Every in-flight increment has its decrement: requests the client abandons mid-flight
/// (downstream resets) leave the in-flight count at zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_returns_to_zero_after_resets() {
    let mut config = StackConfig::atre(64);
    config.primary = (64, Duration::from_millis(300));
    let stack = Stack::start(config).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let target = stack.envoy.listener;
        tasks.spawn(async move {
            let c = loadgen::client();
            // Abandon the request after 50 ms: the connection is dropped, Envoy resets the stream.
            tokio::time::timeout(
                Duration::from_millis(50),
                loadgen::get(&c, target, "checkout.local", "/", &[]),
            )
            .await
            .is_err()
        });
    }
    let mut abandoned = 0;
    while let Some(r) = tasks.join_next().await {
        abandoned += u32::from(r.unwrap());
    }
    assert_eq!(abandoned, 40);
    // Every abandoned request's slot was released: were a decrement missing on reset, the
    // gauge would stay at the number of leaked slots.
    eventually("in-flight gauge back to 0", Duration::from_secs(10), || {
        let v = stack
            .prometheus_value(
                "shadowmesh_service_in_flight_primary{shadowmesh_service=\"checkout\"}",
            )
            .ok()??;
        let requests = stack
            .prometheus_value("shadowmesh_service_requests_total{shadowmesh_service=\"checkout\"}")
            .ok()??;
        (v == 0.0 && requests == 40.0).then_some(())
    })
    .await;
}

/// A Wasm filter that faults must not take requests down with it: with
/// `failure_policy: FAIL_OPEN` Envoy skips the broken VM, the request carries no routing
/// header, and the route's default sends it to the primary. Envoy answers the one request
/// that was inside the filter when its VM faulted with a 503; every later one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulting_filter_fails_open_to_the_primary() {
    let mut config = StackConfig::atre(16);
    config.plugin = None;
    config.fault = true;
    config.envoy_workers = 1; // one worker, one VM, whatever connections the client opens
    let stack = Stack::start(config).await.unwrap();
    let c = loadgen::client();
    let mut served = Vec::new();
    for _ in 0..20 {
        served.push(loadgen::get(&c, stack.envoy.listener, "checkout.local", "/", &[]).await);
    }
    // One worker, so one VM: only the very first request can be inside it when it faults.
    assert_eq!(
        served[0],
        Ok((503, None)),
        "the request inside the faulting VM"
    );
    assert!(
        served[1..]
            .iter()
            .all(|r| *r == Ok((200, Some("primary".to_string())))),
        "{served:?}"
    );
    assert!(
        stack.envoy.log().contains("deliberate fault"),
        "the VM really faulted"
    );
    assert_eq!(stack.shadow.stats.served.load(Ordering::Relaxed), 0);
}
