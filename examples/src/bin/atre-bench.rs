//! ATRE overhead benchmark: the same Envoy (one worker), the same upstream, three filter
//! chains measured side by side in one run:
//!
//! * (a) no Wasm filter, (b) a no-op Rust Proxy-Wasm filter, (c) the ATRE filter;
//! * throughput at saturation (closed loop) and p50/p99 latency at a fixed open-loop rate
//!   below saturation.
//!
//! Variants are interleaved over several rounds and the median is kept, so drift on the
//! machine affects all three alike. Prints a table and writes `target/bench/atre.json`.

use anyhow::Result;
use clap::Parser;
use serde::Serialize;
use shadowmesh_testkit::envoy::{
    Bootstrap, EnvoyOptions, EnvoyProcess, FilterChoice, default_plugin_config,
};
use shadowmesh_testkit::loadgen;
use shadowmesh_testkit::median;
use shadowmesh_testkit::upstream::{self, OrcaMode, UpstreamConfig};
use std::time::{Duration, Instant};

/// Measures what the ATRE filter costs Envoy.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Rounds; each runs all three variants, the median is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    rounds: usize,
    /// Seconds of saturation per variant and round.
    #[arg(long, default_value_t = 4)]
    saturation_secs: u64,
    /// Concurrent connections for saturation.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Fixed rate for the latency measurement (requests/s, paced over 8 connections, each
    /// request timed from its actual send), below saturation.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of fixed-rate load per variant and round.
    #[arg(long, default_value_t = 4)]
    latency_secs: u64,
    /// CPUs for Envoy (`taskset -c` list); this process (load generator and upstream)
    /// takes the others, so Envoy's single worker is the bottleneck being measured.
    #[arg(long, default_value = "0")]
    envoy_cpus: String,
    /// CPUs for the load generator and upstream; empty = no pinning.
    #[arg(long, default_value = "1")]
    client_cpus: String,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Sample {
    throughput_rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
}

#[derive(Debug, Serialize)]
struct VariantResult {
    variant: &'static str,
    rounds: Vec<Sample>,
    median: Sample,
}

#[derive(Debug, Serialize)]
struct Report {
    envoy_workers: u32,
    connections: usize,
    rate_rps: f64,
    variants: Vec<VariantResult>,
    /// (p50_atre − p50_none) / (p50_noop − p50_none)
    added_latency_ratio_p50: f64,
    /// p50_atre / p50_noop
    latency_ratio_p50: f64,
    /// p99_atre / p99_noop
    latency_ratio_p99: f64,
    /// 1 − throughput_atre / throughput_none
    throughput_loss_vs_none: f64,
}

async fn measure(
    filter: FilterChoice,
    args: &Args,
    upstream_port: u16,
    control_port: u16,
) -> Result<Sample> {
    let yaml = Bootstrap {
        node_id: "bench".into(),
        primary_port: upstream_port,
        shadow_port: upstream_port,
        control_port,
        filter,
    }
    .render()?;
    let options = EnvoyOptions {
        concurrency: 1,
        log_level: "warn".into(),
        cpus: (!args.envoy_cpus.is_empty()).then(|| args.envoy_cpus.clone()),
    };
    let envoy = EnvoyProcess::launch(yaml, options).await?;
    // Warm up connections and the VM.
    loadgen::saturate(
        envoy.listener,
        "checkout.local",
        args.connections,
        Duration::from_millis(500),
    )
    .await;
    let started = Instant::now();
    let (ok, errors) = loadgen::saturate(
        envoy.listener,
        "checkout.local",
        args.connections,
        Duration::from_secs(args.saturation_secs),
    )
    .await;
    let throughput_rps = ok as f64 / started.elapsed().as_secs_f64();
    let (lat, lat_errors) = loadgen::paced(
        envoy.listener,
        "checkout.local",
        args.rate,
        8,
        Duration::from_secs(args.latency_secs),
    )
    .await;
    Ok(Sample {
        throughput_rps,
        p50_us: lat.value_at_quantile(0.5) as f64,
        p99_us: lat.value_at_quantile(0.99) as f64,
        errors: errors + lat_errors,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !args.client_cpus.is_empty() {
        // All threads of this process, including the runtime's workers already running.
        let pinned = std::process::Command::new("taskset")
            .args([
                "-a",
                "-p",
                "-c",
                &args.client_cpus,
                &std::process::id().to_string(),
            ])
            .output();
        if !matches!(pinned, Ok(ref o) if o.status.success()) {
            eprintln!(
                "warning: could not pin the load generator to CPUs {}",
                args.client_cpus
            );
        }
    }
    let up = upstream::start(
        UpstreamConfig::new("primary", 4096, Duration::ZERO, OrcaMode::Off),
        0,
    )
    .await?;
    let plane = shadowmesh_xds::ControlPlane::default();
    let (control, _, _control) = shadowmesh_testkit::spawn_plane(&plane).await;
    let control_port = control.port();

    let mut atre = default_plugin_config()?;
    // Capacity far above the benchmark load: this measures the decision path itself
    // (every request is scored, counted and routed), not a redirect.
    atre["services"][0]["primary"]["max_in_flight"] = 100_000.into();
    let variants: [(&str, FilterChoice); 3] = [
        ("none", FilterChoice::None),
        ("noop-wasm", FilterChoice::Noop),
        ("atre", FilterChoice::Atre(atre.to_string())),
    ];
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); 3];
    for round in 0..args.rounds {
        for (i, (name, filter)) in variants.iter().enumerate() {
            let s = measure(filter.clone(), &args, up.addr.port(), control_port).await?;
            eprintln!(
                "round {} {:<10} {:>8.0} rps  p50 {:>6.0} µs  p99 {:>6.0} µs  errors {}",
                round + 1,
                name,
                s.throughput_rps,
                s.p50_us,
                s.p99_us,
                s.errors
            );
            samples[i].push(s);
        }
    }
    let results: Vec<VariantResult> = variants
        .iter()
        .zip(samples)
        .map(|((name, _), rounds)| {
            let m = Sample {
                throughput_rps: median(rounds.iter().map(|s| s.throughput_rps).collect()),
                p50_us: median(rounds.iter().map(|s| s.p50_us).collect()),
                p99_us: median(rounds.iter().map(|s| s.p99_us).collect()),
                errors: rounds.iter().map(|s| s.errors).sum(),
            };
            VariantResult {
                variant: name,
                rounds,
                median: m,
            }
        })
        .collect();
    let [none, noop, atre] = [results[0].median, results[1].median, results[2].median];
    let report = Report {
        envoy_workers: 1,
        connections: args.connections,
        rate_rps: args.rate,
        added_latency_ratio_p50: (atre.p50_us - none.p50_us) / (noop.p50_us - none.p50_us).max(1.0),
        latency_ratio_p50: atre.p50_us / noop.p50_us,
        latency_ratio_p99: atre.p99_us / noop.p99_us,
        throughput_loss_vs_none: 1.0 - atre.throughput_rps / none.throughput_rps,
        variants: results,
    };

    println!();
    println!(
        "ATRE overhead — Envoy 1.40, 1 worker on CPU {}, load generator on CPU {}, {} connections at saturation, {} rps for latency (median of {} rounds)",
        args.envoy_cpus, args.client_cpus, args.connections, args.rate, args.rounds
    );
    println!("| variant    | throughput (rps) | vs none | p50 (µs) | p99 (µs) | errors |");
    println!("|------------|-----------------:|--------:|---------:|---------:|-------:|");
    for v in &report.variants {
        let m = &v.median;
        println!(
            "| {:<10} | {:>16.0} | {:>6.1}% | {:>8.0} | {:>8.0} | {:>6} |",
            v.variant,
            m.throughput_rps,
            100.0 * (m.throughput_rps / none.throughput_rps - 1.0),
            m.p50_us,
            m.p99_us,
            m.errors
        );
    }
    println!();
    println!(
        "ATRE p50 / no-op p50: {:.2}×   (target ≤ 1.30×)",
        report.latency_ratio_p50
    );
    println!("ATRE p99 / no-op p99: {:.2}×", report.latency_ratio_p99);
    println!(
        "ATRE added p50 / no-op added p50 (vs no filter): {:.2}×",
        report.added_latency_ratio_p50
    );
    println!(
        "ATRE throughput loss vs no filter: {:.1}%   (target ≤ 15%)",
        100.0 * report.throughput_loss_vs_none
    );
    let dir = shadowmesh_testkit::bench_dir()?;
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("atre.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("written to {}", path.display());
    Ok(())
}
