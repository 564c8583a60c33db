//! The ATRE demo: real Envoy with the Shadowmesh filter in front of a primary and a shadow
//! instance, and a load ramp that overloads the primary. One line per second shows the
//! primary's load, the share the shadow takes, and p99 latency.
//!
//! Run with `scripts/demo` (sets everything up first).

use anyhow::Result;
use clap::Parser;
use shadowmesh_testkit::envoy::{
    Bootstrap, EnvoyOptions, EnvoyProcess, FilterChoice, default_plugin_config,
};
use shadowmesh_testkit::loadgen::{self, LoadSpec, Phase, RateProfile};
use shadowmesh_testkit::upstream::{self, OrcaMode, UpstreamConfig};
use shadowmesh_wire::RedirectState;
use std::time::Duration;

/// Shadowmesh ATRE demo: watch a warm shadow take a hot primary's excess and hand it back.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Calm rate before and after the surge (requests/s).
    #[arg(long, default_value_t = 150.0)]
    calm_rps: f64,
    /// Peak rate of the surge (requests/s). The primary serves about 380/s.
    #[arg(long, default_value_t = 650.0)]
    peak_rps: f64,
    /// Seconds the peak is held.
    #[arg(long, default_value_t = 10)]
    hold_secs: u64,
    /// Spread requests over this many sessions (`x-session-id`): a session moved to the
    /// shadow stays there until the surge ends. Default: no sessions.
    #[arg(long)]
    sessions: Option<usize>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    // The primary: 8 requests at a time, 20 ms each (≈ 380 rps). The shadow: a warm spare.
    let service_time = Duration::from_millis(20);
    let primary = upstream::start(
        UpstreamConfig::new("primary", 8, service_time, OrcaMode::Text),
        0,
    )
    .await?;
    let shadow = upstream::start(
        UpstreamConfig::new("shadow", 32, service_time, OrcaMode::Text),
        0,
    )
    .await?;
    let plane = shadowmesh_xds::ControlPlane::default();
    let (control, _, _control) = shadowmesh_testkit::spawn_plane(&plane).await;
    let (hub, control_port) = (plane.hub.clone(), control.port());

    let mut plugin = default_plugin_config()?;
    plugin["services"][0]["primary"]["max_in_flight"] = 8.into();
    plugin["services"][0]["shadow"]["max_in_flight"] = 32.into();
    let yaml = Bootstrap {
        node_id: "demo-edge".into(),
        primary_port: primary.addr.port(),
        shadow_port: shadow.addr.port(),
        control_port,
        filter: FilterChoice::Atre(plugin.to_string()),
    }
    .render()?;
    let envoy = EnvoyProcess::launch(yaml, EnvoyOptions::default()).await?;
    println!(
        "Envoy 1.40 with the ATRE filter listening on http://{}",
        envoy.listener
    );
    println!(
        "  primary  127.0.0.1:{}  (capacity ≈ 380 req/s: 8 concurrent × 20 ms)",
        primary.addr.port()
    );
    println!("  shadow   127.0.0.1:{}  (warm spare)", shadow.addr.port());
    println!("  admin    http://{}/stats/prometheus", envoy.admin);
    println!();
    println!(
        "{:>4}  {:>6}  {:>8} {:>8}  {:>6}  {:>8}  {:>7}  state",
        "sec", "rate", "primary", "shadow", "share", "p99 ms", "load"
    );

    let ramp = Duration::from_secs(6);
    let profile = RateProfile::Phases(vec![
        Phase {
            duration: Duration::from_secs(4),
            from: args.calm_rps,
            to: args.calm_rps,
        },
        Phase {
            duration: ramp,
            from: args.calm_rps,
            to: args.peak_rps,
        },
        Phase {
            duration: Duration::from_secs(args.hold_secs),
            from: args.peak_rps,
            to: args.peak_rps,
        },
        Phase {
            duration: ramp,
            from: args.peak_rps,
            to: args.calm_rps,
        },
        Phase {
            duration: Duration::from_secs(6),
            from: args.calm_rps,
            to: args.calm_rps,
        },
    ]);
    let mut spec = LoadSpec::new(envoy.listener, profile);
    spec.sessions = args.sessions;
    let view = hub.clone();
    let report = loadgen::run(spec, move |s| {
        let p = s.by_server.get("primary").copied().unwrap_or(0);
        let sh = s.by_server.get("shadow").copied().unwrap_or(0);
        let share = if p + sh > 0 {
            sh as f64 / (p + sh) as f64
        } else {
            0.0
        };
        let (load, state) = view
            .reports()
            .last()
            .map(|r| {
                let svc = &r.services[0];
                (svc.primary.load_score, svc.state)
            })
            .unwrap_or((0.0, RedirectState::Normal));
        let bar = "█".repeat((share * 20.0).round() as usize);
        println!(
            "{:>4}  {:>6}  {:>8} {:>8}  {:>5.0}%  {:>8.1}  {:>7.2}  {:<11} {bar}",
            s.index,
            s.sent,
            p,
            sh,
            share * 100.0,
            s.p99_ms,
            load,
            format!("{state:?}").to_lowercase()
        );
    })
    .await;

    let shadow_total = report.by_server.get("shadow").copied().unwrap_or(0);
    println!();
    println!(
        "{} requests, {} errors; the shadow served {} ({:.0}%) — only the excess, while the primary was hot.",
        report.sent,
        report.errors,
        shadow_total,
        100.0 * shadow_total as f64 / report.ok.max(1) as f64
    );
    println!(
        "latency from intended send time: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        report.latency_us.value_at_quantile(0.5) as f64 / 1e3,
        report.latency_us.value_at_quantile(0.99) as f64 / 1e3,
        report.latency_us.max() as f64 / 1e3
    );
    let transitions: Vec<String> = envoy
        .log()
        .lines()
        .filter_map(|l| {
            l.split_once("shadowmesh: service ")
                .map(|(_, t)| t.to_string())
        })
        .collect();
    println!("controller decisions (from Envoy's log):");
    for t in &transitions {
        println!("  {t}");
    }
    Ok(())
}
