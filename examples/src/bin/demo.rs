//! The Shadowmesh demo: the whole loop on loopback, in compressed time (one "hour" a
//! second, a "day" in 24 s).
//!
//! A checkout service whose demand surges every evening, plus a sale declared for the
//! second day's late morning. The control plane learned the past week (backfilled, as a
//! new deployment imports it from its metrics store); it forecasts each surge, warms spares
//! from its pool *before* the onset — each by its own warm-up plus a margin, the cheapest
//! set that covers the excess — ATRE in Envoy sends the excess to them, and they are
//! released after the surge. One line a second. Then state follows the sessions: shoppers
//! moved to a shadow mid-surge keep their carts — changes captured by the edge Envoy's
//! filter, relayed, handed to the shadow — and none reads older state than it wrote. At
//! the end a timeline picture.

use anyhow::Result;
use clap::Parser;
use shadowmesh_provisioner::{Mode, Settings};
use shadowmesh_testkit::scenario::{self, EventPlan, Sample, Scenario, SparePlan, Strategy};
use shadowmesh_xds::provisioning::ProbeConfig;
use std::time::Duration;

/// Runs the whole Shadowmesh loop once and draws it.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Days to replay live (after a week of history).
    #[arg(long, default_value_t = 3)]
    days: usize,
    /// Peak demand of the evening surge (req/s); the primary plans with 300.
    #[arg(long, default_value_t = 560.0)]
    peak_rps: f64,
    /// Seconds of wall time per "hour".
    #[arg(long, default_value_t = 1)]
    hour_secs: i64,
}

const CAPACITY: f64 = 300.0;
const QUIET: f64 = 150.0;

/// Demand at hour `h` of a day: quiet nights, a busier day, an evening surge around 18:00.
fn daily(h: usize, peak: f64) -> f64 {
    let hour = (h % 24) as f64;
    let day = 40.0 * (-((hour - 13.0) / 4.0).powi(2)).exp();
    let evening = (peak - QUIET) * (-((hour - 18.0) / 1.6).powi(2)).exp();
    QUIET + day + evening
}

fn main() -> Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let hours = 24 * args.days;
    let mut trace: Vec<f64> = (0..hours).map(|h| daily(h, args.peak_rps)).collect();
    // A sale on day 2 from 10:00 to 14:00, declared in advance: 3.5× the usual demand.
    let sale = EventPlan {
        kind: "sale".into(),
        start_step: 24 + 10,
        steps: 4,
        uplift: 3.5,
    };
    for v in &mut trace[sale.start_step..sale.start_step + sale.steps] {
        *v *= sale.uplift;
    }
    let spare =
        |id: &str, capacity: f64, max_in_flight: u32, warmup_secs: f64, cost: f64| SparePlan {
            id: id.into(),
            capacity,
            max_in_flight,
            warmup_secs,
            cost_per_hour: cost,
        };
    let sc = Scenario {
        step_secs: args.hour_secs,
        history: (0..24 * 7).map(|h| daily(h, args.peak_rps)).collect(),
        trace,
        season_steps: vec![24],
        horizon_steps: 12,
        events: vec![sale],
        capacity: CAPACITY,
        primary: (8, Duration::from_millis(20)),
        spares: vec![
            spare("small-1", 200.0, 8, 2.0, 1.0),
            spare("small-2", 200.0, 8, 2.0, 1.0),
            spare("large-1", 450.0, 16, 3.0, 2.5),
        ],
        policy: Settings {
            mode: Mode::Predictive,
            // Covers the filters learning of readiness (their next telemetry answer, ≤ 1 s).
            lead_margin_secs: 2.0,
            min_hold_secs: 3.0,
            release_hysteresis_secs: 2.0,
            release_below: 0.8,
            drain_secs: 2.0,
            spend_cap_per_hour: 100.0,
            degraded_request_cost: 0.01,
            horizon_secs: 12.0 * args.hour_secs as f64,
            reactive_trigger: 0.9,
            reactive_headroom: 0.2,
            failure_backoff_secs: 10.0,
        },
        probe: ProbeConfig {
            latency_slo_ms: 60.0,
            ..ProbeConfig::default()
        },
        slo: Duration::from_millis(100),
    };
    println!(
        "Shadowmesh demo: {} days of a checkout service in compressed time (1 hour = {} s), a sale on day 2 from 10:00 to 14:00.",
        args.days, args.hour_secs
    );
    println!(
        "Primary capacity {CAPACITY:.0} req/s; pool: small-1, small-2 (200 req/s, 2 s warm-up, 1/h), large-1 (450 req/s, 3 s, 2.5/h).\n"
    );
    println!(
        "{:>4} {:>7} {:>7} {:>11} {:>8} {:>7} {:>6} {:>7}  spares (W warming, A assigned, D draining)",
        "sec", "day hh", "demand", "forecast", "primary", "shadow", "share", "p99 ms"
    );
    let outcome = scenario::run(&sc, Strategy::Predictive, |s: &Sample| {
        let when = match s.step {
            None => "  --".to_string(),
            Some(hour) => format!("{:>2} {:02}h", hour / 24 + 1, hour % 24),
        };
        let forecast = s
            .forecast
            .map_or("".into(), |(_, lo, hi)| format!("{lo:.0}-{hi:.0}"));
        let served = (s.primary + s.shadow).max(1);
        let share = 100.0 * s.shadow as f64 / served as f64;
        let spares: String = s
            .spares
            .iter()
            .map(|(id, state)| match *state {
                "warming" => format!("W:{id} "),
                "warm" | "assigned" => format!("A:{id} "),
                "draining" => format!("D:{id} "),
                _ => String::new(),
            })
            .collect();
        let bar = "█".repeat((share / 5.0).round() as usize);
        println!(
            "{:>4} {:>7} {:>7.0} {:>11} {:>8} {:>7} {:>5.0}% {:>7.1}  {spares}{bar}",
            s.index, when, s.demand, forecast, s.primary, s.shadow, share, s.p99_ms
        );
    })
    .await?;
    let carts = state_follows().await?;
    let dir = shadowmesh_testkit::target_dir().join("demo");
    std::fs::create_dir_all(&dir)?;
    let picture = dir.join("timeline.svg");
    shadowmesh_testkit::timeline::draw(
        &picture,
        &format!(
            "Shadowmesh: forecast → spares warm before the surge → excess redirected → state follows ({carts}) → released"
        ),
        &outcome.samples,
        CAPACITY,
        sc.slo.as_secs_f64() * 1e3,
    )?;
    let shadow: u64 = outcome.samples.iter().map(|s| s.shadow).sum();
    println!(
        "\n{} requests, {} errors, {} over the {} ms objective; the spares served {shadow} ({:.0}%) — the excess, while the primary was hot.",
        outcome.requests,
        outcome.errors,
        outcome.slo_violations,
        sc.slo.as_millis(),
        100.0 * shadow as f64 / outcome.requests.max(1) as f64
    );
    println!(
        "p99 latency: {:.1} ms in steady seconds, {:.1} ms during surges; spares ran {:.0} spare-seconds.",
        outcome.p99_steady_ms, outcome.p99_surge_ms, outcome.shadow_seconds
    );
    let leads: Vec<String> = outcome.leads.iter().map(|l| format!("{l:+.1} s")).collect();
    println!(
        "Each spare was assigned ahead of the moment demand actually crossed the primary's capacity by: {}",
        if leads.is_empty() {
            "(no surge)".into()
        } else {
            leads.join(", ")
        }
    );
    println!("\npicture: {}", picture.display());
    Ok(())
}

/// The state-synchronization act: shopping sessions through an edge Envoy whose primary
/// cart is overloaded; a share of them moves to the shadow cart mid-session. Returns a
/// caption for the picture.
async fn state_follows() -> Result<String> {
    use shadowmesh_testkit::state_sync::{SyncOptions, SyncStack, run_sessions};
    println!(
        "\nState follows the session: 120 shoppers (add, remove, look at their carts) on a primary cart service that takes 8 at a time."
    );
    let stack = SyncStack::start("demo", SyncOptions::default()).await?;
    let report = run_sessions(
        stack.edge.listener,
        120,
        Duration::from_secs(8),
        "shopper",
        Duration::from_millis(200),
    )
    .await;
    let relay = stack.relay_state().await.unwrap_or_default();
    let svc = &relay["services"]["checkout"];
    let n = |k: &str| svc[k].as_f64().unwrap_or(0.0);
    println!(
        "{} requests; {} sessions moved to the shadow, which served {} requests of sessions that had already written — each with its latest cart: {} stale reads.",
        report.ok + report.errors,
        report.sessions_moved,
        report.by_shadow_after_writes,
        report.stale_reads
    );
    println!(
        "Replicated as deltas: {:.0} KiB (a copy of the whole state per write: {:.0} KiB); lag capture → shadow p50 {:.0} ms, p99 {:.0} ms.",
        n("replicated_bytes") / 1024.0,
        n("full_copy_bytes") / 1024.0,
        n("lag_ms_p50"),
        n("lag_ms_p99")
    );
    Ok(format!(
        "{} sessions moved, {} stale reads",
        report.sessions_moved, report.stale_reads
    ))
}
