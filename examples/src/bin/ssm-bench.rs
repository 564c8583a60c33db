//! `ssm-bench`: what State Synchronization costs and buys, through real Envoy.
//!
//! **Replication, per mode** (`async`, `event`): `--sessions` shopping sessions (a
//! `--profile-bytes` profile written once, then small cart writes) overload the primary for
//! `--secs`; the edge moves a share of them to the shadow. Measured at the relay: bytes
//! replicated as deltas against the bytes a copy of the whole session state on every write
//! would have sent; replication lag (capture at the edge → applied by the shadow side) p50
//! and p99. Measured by the sessions: stale reads (an answer with fewer writes than the
//! client made).
//!
//! **Added latency**: a light, unsaturated load (carts answer at once) through three
//! listeners of one edge Envoy — no filter, ATRE, ATRE with state sync — so the three share
//! its worker threads, the carts and the shadow side; interleaved request by request (each
//! session takes the three listeners in turn, the order rotating), in rounds after a
//! warm-up. A round's p50 of a variant minus the same round's p50 without a filter is what
//! the filter added in that round; the medians of those paired differences are ATRE's own
//! cost (`atre − none`) and state sync's (`sync − none`); target: at most 1.3× ATRE's own.
//! Interleaving matters on a shared machine: its speed drifts by more than the difference
//! measured, and drift slows the three edges alike.
//!
//! A round's p50 (≈1,200 requests a variant) is good to about ±20 µs on a noisy two-core
//! machine, against differences of 5–50 µs; so the default is 100 rounds (about six
//! minutes), and the ratio comes with a 95% bootstrap interval over the rounds — fifteen
//! rounds left a single run's ratio anywhere between 1.1 and 1.7 for the same build.
//!
//! Prints a table and writes `target/bench/ssm.json` with `bytes_delta`, `bytes_full`,
//! `lag_p99_ms_async`, `lag_p99_ms_event`, `stale_reads`, `added_p50_us` (and more:
//! `atre_added_p50_us`, `added_ratio_to_atre`, `added_ratio_ci95`, `rounds`,
//! `round_p50_us`). `--pool a.json b.json …` measures nothing: it prints the same
//! statistics over the rounds of earlier runs' files, pooled (keep copies of `ssm.json`).

use anyhow::{Context, Result, bail};
use clap::Parser;
use shadowmesh_testkit::median;
use shadowmesh_testkit::state_sync::{
    EdgeFilter, SyncOptions, SyncStack, run_interleaved, run_sessions,
};
use std::time::Duration;

/// Measures State Synchronization through real Envoy.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Sessions in the replication runs.
    #[arg(long, default_value_t = 120)]
    sessions: usize,
    /// Seconds of each replication run.
    #[arg(long, default_value_t = 12)]
    secs: u64,
    /// Bytes of each session's profile (state written once).
    #[arg(long, default_value_t = 4_096)]
    profile_bytes: usize,
    /// Latency rounds (at least one).
    #[arg(long, default_value_t = 100, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    rounds: usize,
    /// Seconds per round (all three edges at once, request by request).
    #[arg(long, default_value_t = 3)]
    round_secs: u64,
    /// Measure the added latency only (no replication runs; the JSON then lacks their
    /// fields).
    #[arg(long)]
    latency_only: bool,
    /// Measure nothing: pool the latency rounds of earlier runs' `ssm.json` files and print
    /// their statistics, as one run of all their rounds (no JSON is written).
    #[arg(long, num_args = 1.., value_name = "SSM_JSON")]
    pool: Vec<std::path::PathBuf>,
}

/// Sessions of the latency runs, each taking the three edges in turn: together as light a
/// load as one edge's eight sessions.
const LATENCY_SESSIONS: usize = 4;

struct Replication {
    bytes_delta: u64,
    bytes_full: u64,
    lag_p50_ms: f64,
    lag_p99_ms: f64,
    stale_reads: u64,
    by_shadow_after_writes: u64,
    requests: u64,
}

async fn replication(args: &Args, mode: &'static str) -> Result<Replication> {
    let s = SyncStack::start(
        &format!("bench-{mode}"),
        SyncOptions {
            mode,
            profile_bytes: args.profile_bytes,
            max_value_bytes: args.profile_bytes.max(1_024) * 2,
            ..SyncOptions::default()
        },
    )
    .await?;
    let report = run_sessions(
        s.edge.listener,
        args.sessions,
        Duration::from_secs(args.secs),
        mode,
        Duration::from_millis(200),
    )
    .await;
    let relay = s.relay_state().await.unwrap_or_default();
    let svc = &relay["services"]["checkout"];
    let n = |k: &str| svc[k].as_f64().unwrap_or(0.0);
    Ok(Replication {
        bytes_delta: n("replicated_bytes") as u64,
        bytes_full: n("full_copy_bytes") as u64,
        lag_p50_ms: n("lag_ms_p50"),
        lag_p99_ms: n("lag_ms_p99"),
        stale_reads: report.stale_reads,
        by_shadow_after_writes: report.by_shadow_after_writes,
        requests: report.ok + report.errors,
    })
}

fn percentile(v: &mut [u64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * q).round() as usize] as f64
}

/// What the filters added, from per-round p50s (`none`, `atre`, `sync`): the medians of
/// the rounds' differences `atre − none` and `sync − none`, and their ratio.
fn added(p50s: &[Vec<f64>], rounds: &[usize]) -> (f64, f64, f64) {
    let diff = |i: usize| median(rounds.iter().map(|&r| p50s[i][r] - p50s[0][r]).collect());
    let (atre, sync) = (diff(1), diff(2));
    // ATRE adding nothing while state sync adds something is no ratio within any target.
    let ratio = match (atre > 0.0, sync > 0.0) {
        (true, _) => sync / atre,
        (false, true) => f64::INFINITY,
        (false, false) => f64::NAN,
    };
    (atre, sync, ratio)
}

/// Resamples of the bootstrap.
const BOOTSTRAP_RESAMPLES: usize = 2_000;
/// Its seed: the same rounds give the same interval.
const BOOTSTRAP_SEED: u64 = 0x5eed;

/// A 95% percentile-bootstrap interval of the ratio: whole rounds resampled with
/// replacement (each keeps its three p50s together). Every resample counts — an undefined
/// ratio sorts last — so dropping the worst never narrows the interval.
fn ratio_interval(p50s: &[Vec<f64>]) -> (f64, f64) {
    let n = p50s[0].len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mut rng = fastrand::Rng::with_seed(BOOTSTRAP_SEED);
    let mut ratios: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| {
            let rounds: Vec<usize> = (0..n).map(|_| rng.usize(0..n)).collect();
            // `added` gives a positive NaN (both added nothing): it sorts after +∞
            // under `total_cmp`.
            added(p50s, &rounds).2
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    let at = |q: f64| ratios[((ratios.len() - 1) as f64 * q).round() as usize];
    (at(0.025), at(0.975))
}

/// The added-latency statistics of a set of rounds.
struct Latency {
    rounds: usize,
    /// Per variant (none, ATRE, ATRE + state sync): the median of the rounds' p50s (µs).
    p50: [f64; 3],
    atre_added: f64,
    sync_added: f64,
    ratio: f64,
    /// 95% interval of `ratio` ([`ratio_interval`]).
    interval: (f64, f64),
}

impl Latency {
    fn of(p50s: &[Vec<f64>]) -> Latency {
        let all: Vec<usize> = (0..p50s[0].len()).collect();
        let (atre_added, sync_added, ratio) = added(p50s, &all);
        Latency {
            rounds: all.len(),
            p50: [0, 1, 2].map(|i| median(p50s[i].clone())),
            atre_added,
            sync_added,
            ratio,
            interval: ratio_interval(p50s),
        }
    }

    /// Prints the table; whether the ratio meets the target.
    fn print(&self) -> bool {
        let [none, atre, sync] = self.p50;
        println!(
            "\n| edge filter | p50 µs (median of {} rounds) | added over none µs (median of the rounds' differences) |",
            self.rounds
        );
        println!("|---|---:|---:|");
        println!("| none | {none:.0} | — |");
        println!("| ATRE | {atre:.0} | {:.0} |", self.atre_added);
        println!("| ATRE + state sync | {sync:.0} | {:.0} |", self.sync_added);
        println!(
            "state sync's added p50 / ATRE's own: {:.2}× (95% percentile-bootstrap interval over the rounds {:.2}–{:.2}; target ≤ 1.3×)",
            self.ratio, self.interval.0, self.interval.1
        );
        self.ratio <= 1.3
    }
}

/// The `round_p50_us` of earlier runs' JSON files, concatenated per variant.
fn pooled_rounds(files: &[std::path::PathBuf]) -> Result<Vec<Vec<f64>>> {
    let mut p50s = vec![Vec::new(); 3];
    for file in files {
        let bytes = std::fs::read(file).with_context(|| format!("{}", file.display()))?;
        let json: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not JSON", file.display()))?;
        let rounds: Vec<Vec<f64>> = ["none", "atre", "sync"]
            .iter()
            .map(|v| serde_json::from_value(json["round_p50_us"][v].clone()))
            .collect::<Result<_, _>>()
            .with_context(|| format!("{}: round_p50_us.{{none,atre,sync}}", file.display()))?;
        if rounds.iter().any(|r| r.len() != rounds[0].len()) {
            bail!(
                "{}: round_p50_us arrays of different lengths",
                file.display()
            );
        }
        for (all, mine) in p50s.iter_mut().zip(rounds) {
            all.extend(mine);
        }
    }
    if p50s[0].is_empty() {
        bail!("no rounds in {} file(s)", files.len());
    }
    Ok(p50s)
}

/// Per variant (none, ATRE, ATRE + state sync), per round: the p50 latency (µs) of three
/// listeners of one edge Envoy, interleaved request by request.
async fn latency_rounds(args: &Args) -> Result<Vec<Vec<f64>>> {
    let light = |edge| SyncOptions {
        edge,
        service_ms: 0,
        primary_concurrency: 256,
        ..SyncOptions::default()
    };
    let stack = SyncStack::start("lat", light(EdgeFilter::SideBySide)).await?;
    let edges = stack.side_by_side().await;
    let think = Duration::from_millis(5);
    // Sessions known to the edges, connections open, code paths warm.
    run_interleaved(
        &edges,
        LATENCY_SESSIONS,
        Duration::from_secs(2),
        "lat",
        think,
    )
    .await;
    let mut p50s = vec![Vec::new(); edges.len()];
    for _ in 0..args.rounds {
        let round = Duration::from_secs(args.round_secs);
        let reports = run_interleaved(&edges, LATENCY_SESSIONS, round, "lat", think).await;
        for (i, mut r) in reports.into_iter().enumerate() {
            p50s[i].push(percentile(&mut r.latencies_us, 0.5));
        }
    }
    Ok(p50s)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !args.pool.is_empty() {
        let p50s = pooled_rounds(&args.pool)?;
        let ok = Latency::of(&p50s).print();
        println!(
            "{}: added p50 ≤ 1.3× ATRE's own",
            if ok { "PASS" } else { "FAIL" }
        );
        return Ok(());
    }
    let _alone = shadowmesh_testkit::load_test_lock().write_owned().await;
    let replicated = if args.latency_only {
        None
    } else {
        eprintln!("[ssm-bench] replication, async");
        let a = replication(&args, "async").await?;
        eprintln!("[ssm-bench] replication, event");
        let e = replication(&args, "event").await?;
        Some((a, e))
    };
    eprintln!("[ssm-bench] added latency: none / ATRE / ATRE + state sync, interleaved");
    let p50s = latency_rounds(&args).await?;
    let lat = Latency::of(&p50s);
    let mut json = serde_json::json!({
        "added_p50_us": lat.sync_added,
        "atre_added_p50_us": lat.atre_added,
        "added_ratio_to_atre": lat.ratio,
        "added_ratio_ci95": [lat.interval.0, lat.interval.1],
        "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED},
        "rounds": lat.rounds,
        "p50_us": {"none": lat.p50[0], "atre": lat.p50[1], "sync": lat.p50[2]},
        "round_p50_us": {"none": p50s[0], "atre": p50s[1], "sync": p50s[2]},
    });
    let mut checks = Vec::new();
    if let Some((a, e)) = &replicated {
        println!(
            "\n| mode | requests | on the shadow after writes | stale reads | replicated bytes (deltas) | bytes if whole state per write | full / delta | lag p50 ms | lag p99 ms |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (mode, r) in [("async", a), ("event", e)] {
            println!(
                "| {mode} | {} | {} | {} | {} | {} | {:.1}× | {:.0} | {:.0} |",
                r.requests,
                r.by_shadow_after_writes,
                r.stale_reads,
                r.bytes_delta,
                r.bytes_full,
                r.bytes_full as f64 / r.bytes_delta.max(1) as f64,
                r.lag_p50_ms,
                r.lag_p99_ms
            );
        }
        let bytes_delta = a.bytes_delta + e.bytes_delta;
        let bytes_full = a.bytes_full + e.bytes_full;
        let stale = a.stale_reads + e.stale_reads;
        let more = serde_json::json!({
            "bytes_delta": bytes_delta,
            "bytes_full": bytes_full,
            "lag_p50_ms_async": a.lag_p50_ms,
            "lag_p99_ms_async": a.lag_p99_ms,
            "lag_p50_ms_event": e.lag_p50_ms,
            "lag_p99_ms_event": e.lag_p99_ms,
            "stale_reads": stale,
            "sessions": args.sessions,
            "profile_bytes": args.profile_bytes,
        });
        if let (Some(json), serde_json::Value::Object(more)) = (json.as_object_mut(), more) {
            json.extend(more);
        }
        checks.push((
            "bytes_full / bytes_delta ≥ 10",
            bytes_full as f64 >= 10.0 * bytes_delta as f64,
        ));
        checks.push(("stale_reads = 0", stale == 0));
    }
    checks.push(("added p50 ≤ 1.3× ATRE's own", lat.print()));
    let out = shadowmesh_testkit::bench_dir()?.join("ssm.json");
    std::fs::write(&out, serde_json::to_string_pretty(&json)?)?;
    for (what, ok) in checks {
        println!("{}: {what}", if ok { "PASS" } else { "FAIL" });
    }
    println!("wrote {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_filters_added_is_the_median_of_paired_round_differences() {
        // Rounds drift (the `none` column moves by milliseconds); the pairing removes it.
        let none = vec![1_000.0, 3_000.0, 2_000.0];
        let p50s = vec![
            none.clone(),
            none.iter().map(|n| n + 40.0).collect(),
            none.iter().map(|n| n + 50.0).collect(),
        ];
        let (atre, sync, ratio) = added(&p50s, &[0, 1, 2]);
        assert_eq!((atre, sync), (40.0, 50.0));
        assert!((ratio - 1.25).abs() < 1e-9);
        assert_eq!(ratio_interval(&p50s), (1.25, 1.25), "no spread, no width");
        let free_atre = vec![none.clone(), none.clone(), p50s[2].clone()];
        assert_eq!(added(&free_atre, &[0, 1, 2]).2, f64::INFINITY);
        assert_eq!(ratio_interval(&free_atre), (f64::INFINITY, f64::INFINITY));
        assert!(
            added(&[none.clone(), none.clone(), none], &[0, 1, 2])
                .2
                .is_nan()
        );
    }

    #[test]
    fn the_ratio_interval_holds_the_estimate_and_widens_with_noise() {
        let n = 60;
        let none: Vec<f64> = (0..n).map(|r| 1_800.0 + (r % 7) as f64 * 100.0).collect();
        let noise = |r: usize, k: usize| ((r * 37 + k * 11) % 21) as f64 - 10.0;
        let p50s = vec![
            none.clone(),
            (0..n).map(|r| none[r] + 40.0 + noise(r, 1)).collect(),
            (0..n).map(|r| none[r] + 48.0 + 3.0 * noise(r, 2)).collect(),
        ];
        let all: Vec<usize> = (0..n).collect();
        let (_, _, ratio) = added(&p50s, &all);
        let (lo, hi) = ratio_interval(&p50s);
        assert!(lo <= ratio && ratio <= hi, "{lo} ≤ {ratio} ≤ {hi}");
        assert!(
            hi - lo > 0.05,
            "noisy rounds give a real interval: {lo}–{hi}"
        );
        let empty = vec![Vec::new(), Vec::new(), Vec::new()];
        let (lo, hi) = ratio_interval(&empty);
        assert!(lo.is_nan() && hi.is_nan());
    }
}
