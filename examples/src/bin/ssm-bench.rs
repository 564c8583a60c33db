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
//! Prints a table and writes `target/bench/ssm.json` with `bytes_delta`, `bytes_full`,
//! `lag_p99_ms_async`, `lag_p99_ms_event`, `stale_reads`, `added_p50_us` (and more).

use anyhow::Result;
use clap::Parser;
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
    /// Latency rounds.
    #[arg(long, default_value_t = 15)]
    rounds: usize,
    /// Seconds per round (all three edges at once, request by request).
    #[arg(long, default_value_t = 3)]
    round_secs: u64,
    /// Measure the added latency only (no replication runs; the JSON then lacks their
    /// fields).
    #[arg(long)]
    latency_only: bool,
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
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
    let [none, atre, sync] = [0, 1, 2].map(|i| median(p50s[i].clone()));
    // The median of per-round differences `variant − none`.
    let added = |i: usize| median(p50s[i].iter().zip(&p50s[0]).map(|(v, n)| v - n).collect());
    let atre_added = added(1);
    let sync_added = added(2);
    let ratio = if atre_added > 0.0 {
        sync_added / atre_added
    } else {
        f64::NAN
    };

    let mut json = serde_json::json!({
        "added_p50_us": sync_added,
        "atre_added_p50_us": atre_added,
        "added_ratio_to_atre": ratio,
        "p50_us": {"none": none, "atre": atre, "sync": sync},
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
    println!(
        "\n| edge filter | p50 µs (median of {} rounds) | added over none µs (median of the rounds' differences) |",
        args.rounds
    );
    println!("|---|---:|---:|");
    println!("| none | {none:.0} | — |");
    println!("| ATRE | {atre:.0} | {atre_added:.0} |");
    println!("| ATRE + state sync | {sync:.0} | {sync_added:.0} |");
    println!("state sync's added p50 / ATRE's own: {ratio:.2}× (target ≤ 1.3×)");
    checks.push(("added p50 ≤ 1.3× ATRE's own", ratio <= 1.3));
    let out = shadowmesh_testkit::bench_dir()?.join("ssm.json");
    std::fs::write(&out, serde_json::to_string_pretty(&json)?)?;
    for (what, ok) in checks {
        println!("{}: {what}", if ok { "PASS" } else { "FAIL" });
    }
    println!("wrote {}", out.display());
    Ok(())
}
