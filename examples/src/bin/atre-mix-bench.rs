//! ATRE under every traffic mix, with real Envoy 1.40: State Synchronization's deployment
//! (edge Envoy with the filter as publisher, a primary `cart` serving 8 requests at once of
//! 20 ms, the shadow `cart` behind its own Envoy, the real `shadowmesh-xds` as relay), a
//! surge above the primary's capacity (4 s at 100 requests a second, 14 s at 600, 6 s at
//! 100), and each mix of 0 / 0.5 / 1.0 of the requests in sessions × 20 / 2,000 keys.
//!
//! Per mix: the primary's load band over the settled surge (from the primary's own count
//! of requests in it, not the filter's), entries and exits of redirection, the shadow's
//! share against the excess `1 − target/demand`, p50/p99 of the settled surge, errors,
//! sessions sent back early, stale reads. Mixes are interleaved round by round (each
//! round in a rotated order) and the medians kept; `flaps`, `errors`, `bounces` and
//! `stale_reads` are the worst round's. Prints a table and writes
//! `target/bench/atre-mix.json` as `{"target", "settle_s", "rounds", "mixes": [...]}`.

use anyhow::Result;
use clap::Parser;
use serde::Serialize;
use shadowmesh_testkit::median;
use shadowmesh_testkit::state_sync::{SyncOptions, SyncStack};
use shadowmesh_testkit::traffic_mix::{self, MixSpec, MixSummary};

/// Measures how ATRE meets a surge under each traffic mix.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Rounds; each runs every mix once, the median is reported.
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    rounds: usize,
    /// The surge is judged from this many seconds after its onset.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(0..14))]
    settle_s: u64,
    /// Requests per second during the surge (the primary serves about 390).
    #[arg(long, default_value_t = 600.0)]
    surge_rps: f64,
    /// The edge filter's `primary.max_in_flight`; default: what the primary serves at once
    /// (8). Try 16 to see the knee check at work.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_in_flight: Option<u32>,
}

/// One mix: the medians over rounds, and every round.
#[derive(Debug, Serialize)]
struct MixResult {
    #[serde(flatten)]
    median: MixSummary,
    runs: Vec<MixSummary>,
}

#[derive(Debug, Serialize)]
struct Report {
    target: f64,
    settle_s: u64,
    rounds: usize,
    max_in_flight: u32,
    mixes: Vec<MixResult>,
}

const MIXES: [(f64, usize); 6] = [
    (0.0, 20),
    (0.0, 2_000),
    (0.5, 20),
    (0.5, 2_000),
    (1.0, 20),
    (1.0, 2_000),
];

/// Medians of the measures, the worst round of the counts that must be zero or two.
fn combine(runs: &[MixSummary]) -> MixSummary {
    let med = |f: fn(&MixSummary) -> f64| median(runs.iter().map(f).collect());
    let worst = |f: fn(&MixSummary) -> u64| runs.iter().map(f).max().unwrap_or(0);
    let first = &runs[0];
    MixSummary {
        session_share: first.session_share,
        keys: first.keys,
        flaps: runs
            .iter()
            .map(|r| r.flaps)
            .max_by_key(|f| f.abs_diff(2))
            .unwrap_or(0),
        primary_load_p5: med(|r| r.primary_load_p5),
        primary_load_p95: med(|r| r.primary_load_p95),
        shadow_share: med(|r| r.shadow_share),
        ideal_share: med(|r| r.ideal_share),
        errors: worst(|r| r.errors),
        demand: med(|r| r.demand),
        p50_ms: med(|r| r.p50_ms),
        p99_ms: med(|r| r.p99_ms),
        bounces: worst(|r| r.bounces as u64) as usize,
        stale_reads: worst(|r| r.stale_reads),
        sessions_moved: med(|r| r.sessions_moved as f64) as usize,
        held: med(|r| r.held as f64) as u64,
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let shipped = shadowmesh_testkit::envoy::default_plugin_config()?;
    let target = shipped["services"][0]["thresholds"]["target"]
        .as_f64()
        .unwrap_or(0.8);
    let options = SyncOptions {
        edge_max_in_flight: args.max_in_flight,
        ..SyncOptions::default()
    };
    let max_in_flight = args
        .max_in_flight
        .unwrap_or(options.primary_concurrency as u32);
    let mut runs: Vec<Vec<MixSummary>> = vec![Vec::new(); MIXES.len()];
    for round in 0..args.rounds {
        for k in 0..MIXES.len() {
            let i = (k + round) % MIXES.len();
            let (share, keys) = MIXES[i];
            let mut spec = MixSpec::surge(share, keys);
            spec.surge_rps = args.surge_rps;
            let stack = SyncStack::start(&spec.prefix, options.clone()).await?;
            let report = traffic_mix::run(&stack, &spec, args.settle_s).await;
            drop(stack);
            let s = report.summary(args.settle_s, target);
            eprintln!(
                "round {} mix {:.1} × {}: load {:.2}–{:.2}, share {:.2} (ideal {:.2}), flaps {}, errors {}",
                round + 1,
                share,
                keys,
                s.primary_load_p5,
                s.primary_load_p95,
                s.shadow_share,
                s.ideal_share,
                s.flaps,
                s.errors
            );
            runs[i].push(s);
        }
    }
    let mixes: Vec<MixResult> = runs
        .into_iter()
        .map(|runs| MixResult {
            median: combine(&runs),
            runs,
        })
        .collect();
    println!(
        "ATRE under each traffic mix: target {target}, primary.max_in_flight {max_in_flight}, \
         {} round(s), judged from {} s after the onset",
        args.rounds, args.settle_s
    );
    println!(
        "{:>8} {:>6} | {:>6} {:>6} | {:>5} | {:>6} {:>6} | {:>7} {:>7} | {:>6} {:>7} {:>5}",
        "sessions",
        "keys",
        "load5",
        "load95",
        "flaps",
        "shadow",
        "ideal",
        "p50 ms",
        "p99 ms",
        "errors",
        "bounces",
        "stale"
    );
    for m in &mixes {
        let s = &m.median;
        println!(
            "{:>8.1} {:>6} | {:>6.3} {:>6.3} | {:>5} | {:>6.3} {:>6.3} | {:>7.1} {:>7.1} | {:>6} {:>7} {:>5}",
            s.session_share,
            s.keys,
            s.primary_load_p5,
            s.primary_load_p95,
            s.flaps,
            s.shadow_share,
            s.ideal_share,
            s.p50_ms,
            s.p99_ms,
            s.errors,
            s.bounces,
            s.stale_reads
        );
    }
    let report = Report {
        target,
        settle_s: args.settle_s,
        rounds: args.rounds,
        max_in_flight,
        mixes,
    };
    let path = shadowmesh_testkit::bench_dir()?.join("atre-mix.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("written to {}", path.display());
    Ok(())
}
