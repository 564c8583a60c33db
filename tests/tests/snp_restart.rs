//! The control plane killed (`kill -9`) in the middle of a surge and restarted: it resumes
//! from its state directory, adopts the spare process still running, keeps its shadows —
//! Envoy never loses the spare's endpoint, clients see no error — and releases the spare
//! after the surge. The control plane here is the real `shadowmesh-xds` binary started
//! from a configuration file.

use shadowmesh_testkit::envoy::FilterChoice;
use shadowmesh_testkit::loadgen::{self, LoadSpec, Phase, RateProfile};
use shadowmesh_testkit::upstream::{self, OrcaMode, UpstreamConfig};
use shadowmesh_testkit::xds_process::{XdsProcess, eventually, free_addr};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

async fn get(http: SocketAddr, path: &str) -> Option<serde_json::Value> {
    let (status, body) = loadgen::request_json(&loadgen::client(), "GET", http, path, None)
        .await
        .ok()?;
    (status == 200).then(|| serde_json::from_str(&body).ok())?
}

async fn post(http: SocketAddr, path: &str, body: serde_json::Value) -> u16 {
    loadgen::request_json(
        &loadgen::client(),
        "POST",
        http,
        path,
        Some(&body.to_string()),
    )
    .await
    .unwrap()
    .0
}

/// The spare's (state, pid) in `/v1/pool`.
async fn spare(http: SocketAddr) -> Option<(String, Option<u64>)> {
    let pool = get(http, "/v1/pool").await?;
    let s = &pool.as_array()?[0];
    Some((s["state"]["state"].as_str()?.to_string(), s["pid"].as_u64()))
}

fn alive(pid: u64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_killed_mid_surge_keeps_its_shadows_after_restarting() {
    let _alone = shadowmesh_testkit::load_test_lock().write_owned().await;
    let dir = std::env::temp_dir().join(format!("shadowmesh-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let primary = upstream::start(
        UpstreamConfig::new(
            "checkout-primary",
            8,
            Duration::from_millis(20),
            OrcaMode::Off,
        ),
        0,
    )
    .await
    .unwrap();
    let (http, ads, spare_addr) = (free_addr(), free_addr(), free_addr());
    let upstream_bin = shadowmesh_testkit::workspace_binary("upstream").unwrap();
    let config = format!(
        r#"
http_listen = "{http}"
ads_listen = "{ads}"
state_dir = "{state}"

[predictor]
step_secs = 1
horizon = 12
capacities = {{ checkout = 300.0 }}
seasons = [{{ period_secs = 30, buckets = 30, rate = 0.3 }}]

[[services]]
name = "checkout"
primary = [{{ address = "{primary}" }}]

[provisioner]
step_secs = 0.5
[provisioner.policy]
lead_margin_secs = 2.0
min_hold_secs = 4.0
release_hysteresis_secs = 3.0
drain_secs = 2.0
degraded_request_cost = 0.01
horizon_secs = 12.0
[provisioner.probe]
give_up_factor = 1.0
give_up_extra_secs = 8.0

[pool]
provider = "process"
command = ["{bin}", "--name", "{{id}}", "--port", "{{port}}", "--concurrency", "{{max_in_flight}}", "--service-ms", "20", "--warmup-ms", "{{warmup_ms}}"]
[[pool.spares]]
id = "spare-1"
address = "{spare_addr}"
capacity = 400.0
max_in_flight = 16
warmup_secs = 1.0
cost_per_hour = 1.0
"#,
        state = dir.join("state").display(),
        primary = primary.addr,
        bin = upstream_bin.display(),
    );
    let config_path = dir.join("xds.toml");
    std::fs::write(&config_path, config).unwrap();
    let log = dir.join("xds.log");
    let mut plane = XdsProcess::start(&config_path, &log, &[]).unwrap();
    eventually(
        "the control plane's HTTP API",
        Duration::from_secs(30),
        async || get(http, "/v1/services").await,
    )
    .await;
    let mut plugin = shadowmesh_testkit::atre_plugin(8);
    plugin["services"][0]["shadow"]["ready"] = false.into();
    let envoy = shadowmesh_testkit::ads_envoy(
        ads.port(),
        http.port(),
        FilterChoice::Atre(plugin.to_string()),
        false,
    )
    .await;
    let client = loadgen::client();
    eventually(
        "Envoy serving from the primary",
        Duration::from_secs(30),
        async || {
            (loadgen::get(&client, envoy.listener, "checkout.local", "/", &[]).await
                == Ok((200, Some("checkout-primary".into()))))
            .then_some(())
        },
    )
    .await;
    // A minute of flat history, then a sale declared 11 s from now for 16 s at 4.5×.
    let now = unix_now() as i64;
    let points: Vec<(i64, f64)> = (now - 60..now).map(|t| (t, 100.0)).collect();
    let status = post(
        http,
        "/v1/forecast/checkout/history",
        serde_json::json!({ "points": points }),
    )
    .await;
    assert_eq!(status, 200);
    let start = (unix_now() + 11.0).floor();
    let event = serde_json::json!({"kind": "sale", "start": start as i64, "duration_secs": 16, "uplift": 4.5});
    assert_eq!(post(http, "/v1/events", event).await, 201);
    let quiet = Duration::from_secs_f64(start - unix_now());
    let profile = RateProfile::Phases(vec![
        Phase {
            duration: quiet,
            from: 100.0,
            to: 100.0,
        },
        Phase {
            duration: Duration::from_secs(16),
            from: 450.0,
            to: 450.0,
        },
        Phase {
            duration: Duration::from_secs(10),
            from: 100.0,
            to: 100.0,
        },
    ]);
    let load_started = unix_now();
    let load = tokio::spawn(loadgen::run(LoadSpec::new(envoy.listener, profile), |_| {}));

    // The spare is assigned before the sale starts.
    let (_, pid) = eventually("the spare assigned", Duration::from_secs(30), async || {
        spare(http).await.filter(|(state, _)| state == "assigned")
    })
    .await;
    let pid = pid.expect("the process provider reports the spare's pid");
    assert!(unix_now() < start, "assigned only after the sale began");
    // From now until the sale ends Envoy must never lose the spare's endpoint.
    let endpoint = format!("checkout_shadow_pool::{spare_addr}::");
    let (watching, lost, checks) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let watcher = {
        let (watching, lost, checks) = (watching.clone(), lost.clone(), checks.clone());
        let admin = envoy.admin;
        std::thread::spawn(move || {
            while watching.load(Ordering::Relaxed) {
                let clusters =
                    shadowmesh_testkit::envoy::admin_get(admin, "/clusters").unwrap_or_default();
                if !clusters.contains(&endpoint) {
                    lost.fetch_add(1, Ordering::Relaxed);
                }
                checks.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // Three seconds into the sale, with the excess on the spare: kill -9.
    let until = start + 3.0 - unix_now();
    tokio::time::sleep(Duration::from_secs_f64(until.max(0.0))).await;
    plane.kill_9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(alive(pid), "the spare outlives the control plane");
    let mut plane = XdsProcess::start(&config_path, &log, &[]).unwrap();
    let (state, adopted) = eventually(
        "the restarted control plane",
        Duration::from_secs(30),
        async || spare(http).await,
    )
    .await;
    let restarted = unix_now();
    assert_eq!(
        (state.as_str(), adopted),
        ("assigned", Some(pid)),
        "resumed and adopted"
    );
    // Watched until the sale ends: draining and releasing the spare after it is the
    // provisioner's job (asserted below), not a loss.
    let until_end = start + 16.0 - unix_now();
    tokio::time::sleep(Duration::from_secs_f64(until_end.max(0.0))).await;
    watching.store(false, Ordering::Relaxed);
    watcher.join().unwrap();
    let report = load.await.unwrap();
    assert_eq!(report.errors, 0, "{:?}", report.error_kinds);
    assert!(checks.load(Ordering::Relaxed) > 50);
    assert_eq!(
        lost.load(Ordering::Relaxed),
        0,
        "Envoy lost the spare's endpoint"
    );
    // Between the restart and the end of the sale, the spare kept taking the excess.
    let (from, to) = (
        (restarted - load_started).ceil() as u64,
        (start + 16.0 - load_started).floor() as u64,
    );
    assert!(to > from + 3, "the restart took most of the sale");
    let after: u64 = report
        .seconds
        .iter()
        .filter(|s| (from..to).contains(&s.index))
        .map(|s| s.by_server.get("spare-1").copied().unwrap_or(0))
        .sum();
    assert!(
        after > 100 * (to - from),
        "the spare served {after} requests in seconds {from}..{to} after the restart"
    );
    // The restarted plane releases it after the surge, and stops its process.
    eventually("the spare released", Duration::from_secs(30), async || {
        spare(http).await.filter(|(state, _)| state == "cold")
    })
    .await;
    eventually(
        "the spare process stopped",
        Duration::from_secs(10),
        async || (!alive(pid)).then_some(()),
    )
    .await;
    plane.kill_9();
    // What both control planes said about the spare (shown when the test fails).
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    for line in said.lines().filter(|l| {
        ["adopted", "resumed", "provisioning decision", "listening"]
            .iter()
            .any(|w| l.contains(w))
    }) {
        eprintln!("{line}");
    }
    assert!(said.contains("spare adopted after a restart"), "{said}");
    let _ = std::fs::remove_dir_all(&dir);
}
