//! `upstream`: the test upstream as a process — an HTTP service with a real capacity limit,
//! ORCA load reports and an optional cold start. The control plane's `process` pool
//! provider starts spares from it in the demo, the benchmark and the tests.
//!
//! ```sh
//! upstream --name spare-1 --port 19001 --concurrency 16 --service-ms 20 --warmup-ms 3000 --cold slow
//! ```

use clap::{Parser, ValueEnum};
use shadowmesh_testkit::upstream::{self, ColdBehaviour, ColdStart, OrcaMode, UpstreamConfig};
use std::time::Duration;

/// An HTTP upstream with a real capacity limit (see `shadowmesh_testkit::upstream`).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Name returned in `x-served-by`.
    #[arg(long)]
    name: String,
    /// Port on 127.0.0.1 (0: any free port, printed on stdout).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Requests served at a time.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Milliseconds to serve one request when warm.
    #[arg(long, default_value_t = 20)]
    service_ms: u64,
    /// Milliseconds after start-up during which the instance is cold.
    #[arg(long, default_value_t = 0)]
    warmup_ms: u64,
    /// What a cold instance does with requests.
    #[arg(long, value_enum, default_value_t = Cold::Slow)]
    cold: Cold,
    /// How many times slower a cold instance serves (with `--cold slow`).
    #[arg(long, default_value_t = 10)]
    slow_factor: u32,
    /// Report ORCA load (`TEXT cpu_utilization`).
    #[arg(long)]
    orca: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Cold {
    Slow,
    Refuse,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = UpstreamConfig::new(
        &args.name,
        args.concurrency,
        Duration::from_millis(args.service_ms),
        if args.orca {
            OrcaMode::Text
        } else {
            OrcaMode::Off
        },
    );
    if args.warmup_ms > 0 {
        config.cold_start = Some(ColdStart {
            duration: Duration::from_millis(args.warmup_ms),
            behaviour: match args.cold {
                Cold::Slow => ColdBehaviour::Slow(args.slow_factor),
                Cold::Refuse => ColdBehaviour::Refuse,
            },
        });
    }
    let handle = upstream::start(config, args.port).await?;
    println!("listening on {}", handle.addr);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    handle.shutdown().await;
    Ok(())
}
