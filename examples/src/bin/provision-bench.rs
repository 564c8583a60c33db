//! `provision-bench`: does preparing before the surge beat reacting to it?
//!
//! One run, one machine, one trace — a real series (`--trace CSV`, `timestamp,value`;
//! default the hourly bike-share rentals in `../shared/data/`) in compressed time (one hour
//! in `--hour-secs` seconds), scaled so its peaks exceed the primary's capacity, with a
//! declared event and an unannounced spike added — replayed through real Envoy with ATRE,
//! the real control plane and real upstream processes under five strategies:
//!
//! | strategy | shadows |
//! |---|---|
//! | `none` | none: the primary alone |
//! | `always-on` | every spare started and assigned for the whole run |
//! | `reactive` | the provisioner on current load only, as an autoscaler |
//! | `predictive` | the provisioner on the forecast (Shadowmesh) |
//! | `oracle` | the provisioner fed the true future |
//!
//! Spares have a cold start: for their warm-up after start-up they serve ten times slower,
//! and the probe keeps filters away from them until they are measurably warm. Per strategy:
//! requests, errors, requests over the latency SLO, p99 in steady seconds and in surge
//! seconds, spare-seconds (the cost), and the lead of each activation over the actual
//! onset. Prints a table, checks the targets, writes `target/bench/provision.json` and a
//! timeline picture per strategy (`target/bench/provision-<strategy>.svg`).

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde::Serialize;
use shadowmesh_predictor::data::read_csv;
use shadowmesh_provisioner::{Mode, Settings};
use shadowmesh_testkit::median;
use shadowmesh_testkit::scenario::{self, EventPlan, Outcome, Scenario, SparePlan, Strategy};
use shadowmesh_xds::provisioning::ProbeConfig;
use std::path::PathBuf;
use std::time::Duration;

/// Replays a real traffic series under five provisioning strategies and compares them.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The series: CSV with a header, timestamp in column 1, value in column 2 (hourly).
    #[arg(long, default_value = "../shared/data/bikeshare_rentals_hourly.csv")]
    trace: PathBuf,
    /// First day of the replay, counted from the start of the series.
    #[arg(long, default_value_t = 400)]
    start_day: usize,
    /// Days replayed live.
    #[arg(long, default_value_t = 3)]
    days: usize,
    /// Days before it backfilled into the predictor.
    #[arg(long, default_value_t = 28)]
    history_days: usize,
    /// Wall seconds per hour of the trace.
    #[arg(long, default_value_t = 2)]
    hour_secs: i64,
    /// The trace's highest hour in the replay becomes this many req/s (the primary plans
    /// with 300 and serves 400 at most).
    #[arg(long, default_value_t = 560.0)]
    peak_rps: f64,
    /// Demand (req/s) added to every hour (the trace's quiet hours are near zero).
    #[arg(long, default_value_t = 60.0)]
    base_rps: f64,
    /// A declared event: `DAY:HOUR:HOURS:UPLIFT` of the replay (0-based day), or `none`.
    #[arg(long, default_value = "1:10:3:2.2")]
    event: String,
    /// An unannounced spike: `DAY:HOUR:HOURS:FACTOR`, or `none`.
    #[arg(long, default_value = "2:13:2:2.0")]
    spike: String,
    /// Strategies to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "none,always-on,reactive,predictive,oracle"
    )]
    strategies: Vec<String>,
    /// Rounds; strategies are interleaved within each, medians reported.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

/// One row of the JSON report (the fields the issue names first).
#[derive(Debug, Serialize)]
struct Row {
    name: String,
    requests: u64,
    errors: u64,
    slo_violations: u64,
    p99_steady_ms: f64,
    p99_surge_ms: f64,
    shadow_seconds: f64,
    lead_secs: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    trace: String,
    hour_secs: i64,
    days: usize,
    slo_ms: f64,
    capacity_rps: f64,
    rounds: usize,
    strategies: Vec<Row>,
    targets: Vec<Target>,
}

#[derive(Debug, Serialize)]
struct Target {
    what: String,
    value: f64,
    limit: f64,
    met: bool,
}

/// `DAY:HOUR:HOURS:FACTOR`.
fn parse_window(s: &str, flag: &str) -> Result<Option<(usize, usize, usize, f64)>> {
    if s == "none" {
        return Ok(None);
    }
    let p: Vec<&str> = s.split(':').collect();
    let bad = || format!("--{flag} {s:?}: expected DAY:HOUR:HOURS:FACTOR or none");
    if p.len() != 4 {
        bail!(bad());
    }
    let n = |i: usize| p[i].parse::<usize>().with_context(bad);
    let factor: f64 = p[3].parse().with_context(bad)?;
    if !(factor.is_finite() && factor > 0.0) || n(1)? > 23 || n(2)? == 0 {
        bail!(bad());
    }
    Ok(Some((n(0)?, n(1)?, n(2)?, factor)))
}

const CAPACITY: f64 = 300.0;

fn main() -> Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let strategies: Vec<Strategy> = args
        .strategies
        .iter()
        .map(|s| Strategy::parse(s).with_context(|| format!("--strategies: unknown {s:?}")))
        .collect::<Result<_>>()?;
    let series = read_csv(&args.trace, Some(3_600))
        .with_context(|| format!("--trace {}", args.trace.display()))?;
    let first = (args.start_day.saturating_sub(args.history_days)) * 24;
    let end = (args.start_day + args.days) * 24;
    if series.values.len() < end || args.start_day < args.history_days {
        bail!(
            "--trace {} has {} hours; --start-day {} with --history-days {} and --days {} needs {}",
            args.trace.display(),
            series.values.len(),
            args.start_day,
            args.history_days,
            args.days,
            end
        );
    }
    // Missing hours repeat the hour before (the replay needs a value every hour).
    let mut raw = Vec::with_capacity(end - first);
    let mut last = 0.0;
    for v in &series.values[first..end] {
        last = v.unwrap_or(last);
        raw.push(last);
    }
    let live_from = args.history_days * 24;
    let peak = raw[live_from..]
        .iter()
        .fold(0.0, |m: f64, v| m.max(*v))
        .max(1e-9);
    let scale = (args.peak_rps - args.base_rps) / peak;
    let demand: Vec<f64> = raw.iter().map(|v| args.base_rps + v * scale).collect();
    let (history, mut trace) = (demand[..live_from].to_vec(), demand[live_from..].to_vec());
    let mut events = Vec::new();
    if let Some((day, hour, hours, uplift)) = parse_window(&args.event, "event")? {
        let start = day * 24 + hour;
        for v in trace.iter_mut().skip(start).take(hours) {
            *v *= uplift;
        }
        events.push(EventPlan {
            kind: "sale".into(),
            start_step: start,
            steps: hours,
            uplift,
        });
    }
    if let Some((day, hour, hours, factor)) = parse_window(&args.spike, "spike")? {
        for v in trace.iter_mut().skip(day * 24 + hour).take(hours) {
            *v *= factor;
        }
    }
    let hour = args.hour_secs as f64;
    let spare =
        |id: &str, capacity: f64, max_in_flight: u32, warmup_hours: f64, cost: f64| SparePlan {
            id: id.into(),
            capacity,
            max_in_flight,
            warmup_secs: warmup_hours * hour,
            cost_per_hour: cost,
        };
    let sc = Scenario {
        step_secs: args.hour_secs,
        history,
        trace,
        season_steps: vec![24, 168],
        horizon_steps: 8,
        events,
        capacity: CAPACITY,
        primary: (8, Duration::from_millis(20)),
        spares: vec![
            spare("small-1", 200.0, 8, 2.0, 1.0),
            spare("small-2", 200.0, 8, 2.0, 1.0),
            spare("large-1", 450.0, 16, 3.0, 2.5),
            spare("large-2", 450.0, 16, 3.0, 2.5),
        ],
        policy: Settings {
            mode: Mode::Predictive,
            lead_margin_secs: hour,
            min_hold_secs: 2.0 * hour,
            release_hysteresis_secs: 1.5 * hour,
            release_below: 0.8,
            drain_secs: 2.0,
            spend_cap_per_hour: 100.0,
            degraded_request_cost: 0.01,
            horizon_secs: 8.0 * hour,
            reactive_trigger: 0.9,
            reactive_headroom: 0.3,
            failure_backoff_secs: 5.0 * hour,
        },
        probe: ProbeConfig {
            latency_slo_ms: 60.0,
            ..ProbeConfig::default()
        },
        slo: Duration::from_millis(100),
    };
    eprintln!(
        "replaying {} days ({} hours, {:.0} s each strategy) of {} after {} days of history; peaks {:.0} req/s against a capacity of {CAPACITY:.0}",
        args.days,
        sc.trace.len(),
        sc.trace.len() as f64 * hour,
        args.trace.display(),
        args.history_days,
        sc.trace.iter().fold(0.0, |m: f64, v| m.max(*v))
    );
    let mut outcomes: Vec<Vec<Outcome>> = vec![Vec::new(); strategies.len()];
    for round in 0..args.rounds {
        // Interleaved, and in a rotated order each round.
        for k in 0..strategies.len() {
            let i = (k + round) % strategies.len();
            let s = strategies[i];
            eprintln!("round {}/{}: {} …", round + 1, args.rounds, s.name());
            let outcome = scenario::run(&sc, s, |_| {}).await?;
            eprintln!(
                "  {} requests, {} errors, {} over SLO, p99 {:.1}/{:.1} ms, {:.0} spare-seconds",
                outcome.requests,
                outcome.errors,
                outcome.slo_violations,
                outcome.p99_steady_ms,
                outcome.p99_surge_ms,
                outcome.shadow_seconds
            );
            outcomes[i].push(outcome);
        }
    }
    let dir = shadowmesh_testkit::bench_dir()?;
    let mut rows = Vec::new();
    for (s, runs) in strategies.iter().zip(&outcomes) {
        let pick = |f: &dyn Fn(&Outcome) -> f64| median(runs.iter().map(f).collect());
        let last = runs.last().expect("at least one round");
        shadowmesh_testkit::timeline::draw(
            &dir.join(format!("provision-{}.svg", s.name())),
            &format!("provision-bench: {}", s.name()),
            &last.samples,
            CAPACITY,
            sc.slo.as_secs_f64() * 1e3,
        )?;
        rows.push(Row {
            name: s.name().to_string(),
            requests: pick(&|o| o.requests as f64) as u64,
            errors: pick(&|o| o.errors as f64) as u64,
            slo_violations: pick(&|o| o.slo_violations as f64) as u64,
            p99_steady_ms: pick(&|o| o.p99_steady_ms),
            p99_surge_ms: pick(&|o| o.p99_surge_ms),
            shadow_seconds: pick(&|o| o.shadow_seconds),
            lead_secs: last.leads.clone(),
        });
    }
    println!(
        "\nprovision-bench: {} ({} days, 1 h = {} s), SLO {} ms, medians of {} round(s)\n",
        args.trace.display(),
        args.days,
        args.hour_secs,
        sc.slo.as_millis(),
        args.rounds
    );
    println!(
        "| strategy | requests | errors | over SLO | p99 steady (ms) | p99 surge (ms) | spare-seconds | activation lead (s) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for r in &rows {
        let leads: Vec<String> = r.lead_secs.iter().map(|l| format!("{l:+.1}")).collect();
        println!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.0} | {} |",
            r.name,
            r.requests,
            r.errors,
            r.slo_violations,
            r.p99_steady_ms,
            r.p99_surge_ms,
            r.shadow_seconds,
            if leads.is_empty() {
                "—".into()
            } else {
                leads.join(" ")
            }
        );
    }
    let get = |name: &str| rows.iter().find(|r| r.name == name);
    let mut targets = Vec::new();
    if let Some(p) = get("predictive") {
        let mut target = |what: &str, value: f64, limit: f64| {
            targets.push(Target {
                what: what.into(),
                value,
                limit,
                met: value <= limit,
            })
        };
        target("predictive errors", p.errors as f64, 0.0);
        if let Some(r) = get("reactive") {
            target(
                "predictive SLO violations / reactive's",
                p.slo_violations as f64 / (r.slo_violations as f64).max(1.0),
                0.10,
            );
        }
        if let Some(o) = get("oracle") {
            target(
                "predictive spare-seconds / oracle's",
                p.shadow_seconds / o.shadow_seconds.max(1e-9),
                1.3,
            );
        }
        if let Some(a) = get("always-on") {
            target(
                "predictive spare-seconds / always-on's",
                p.shadow_seconds / a.shadow_seconds.max(1e-9),
                0.40,
            );
        }
        target(
            "predictive p99 surge / p99 steady",
            p.p99_surge_ms / p.p99_steady_ms.max(1e-9),
            1.5,
        );
    }
    println!();
    for t in &targets {
        println!(
            "{} {}: {:.3} (target ≤ {})",
            if t.met { "MET   " } else { "MISSED" },
            t.what,
            t.value,
            t.limit
        );
    }
    let report = Report {
        trace: args.trace.display().to_string(),
        hour_secs: args.hour_secs,
        days: args.days,
        slo_ms: sc.slo.as_secs_f64() * 1e3,
        capacity_rps: CAPACITY,
        rounds: args.rounds,
        strategies: rows,
        targets,
    };
    let path = dir.join("provision.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!(
        "\nwritten: {} and provision-<strategy>.svg beside it",
        path.display()
    );
    Ok(())
}
