//! Control-plane scale: does a change cost work proportional to the change, not to the
//! world? Two measurements, each at several service counts, the counts interleaved over
//! rounds (this machine is noisy), medians reported:
//!
//! * **start-up**: the real `shadowmesh-xds` binary started with a configuration file of N
//!   services (each with a primary and a warm shadow); time from spawn until both
//!   listeners accept connections.
//! * **one change**: with N services present, one service's shadows changed through the
//!   HTTP API of that running binary; time from sending the `PUT` until its answer, which
//!   comes after the snapshot is published. In-process, the registry call alone
//!   (`ShadowRegistry::set_shadows`, validation to published snapshot) over as many
//!   changes.
//!
//! Prints a table and writes `target/bench/xds_scale.json`.

use anyhow::{Context, Result, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use serde::Serialize;
use shadowmesh_testkit::loadgen;
use shadowmesh_testkit::median;
use shadowmesh_xds::registry::{ServiceChange, ServiceSpec, ShadowRegistry, ShadowSet};
use shadowmesh_xds::xds::SnapshotCache;
use shadowmesh_xds::xds::builders::EndpointSpec;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Measures start-up and per-change cost of the control plane against its size.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Service counts (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1000,4000,10000")]
    services: Vec<usize>,
    /// Rounds; the counts are interleaved within each round.
    #[arg(long, default_value_t = 5, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    rounds: usize,
    /// Changes measured per count and round.
    #[arg(long, default_value_t = 200)]
    changes: usize,
}

#[derive(Debug, Default, Serialize)]
struct Row {
    services: usize,
    /// Spawn → both listeners accept, median over rounds.
    startup_ms: f64,
    /// HTTP `PUT …/shadows` round trip, over all changes of all rounds.
    put_p50_ms: f64,
    put_p99_ms: f64,
    /// In-process `ShadowRegistry::set_shadows`.
    publish_p50_us: f64,
    publish_p99_us: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    rounds: usize,
    changes_per_round: usize,
    rows: Vec<Row>,
}

fn ep(i: usize, port: u16) -> EndpointSpec {
    let addr: SocketAddr = format!(
        "10.{}.{}.{}:{port}",
        (i >> 16) & 255,
        (i >> 8) & 255,
        i & 255
    )
    .parse()
    .expect("valid address");
    EndpointSpec::healthy(addr)
}

/// A configuration file with `n` services, each with one primary and one warm shadow.
fn write_config(dir: &Path, n: usize) -> Result<PathBuf> {
    let mut toml = String::with_capacity(n * 200);
    for i in 0..n {
        let (p, s) = (ep(i, 8080).addr, ep(i, 9090).addr);
        writeln!(
            toml,
            "[[services]]\nname = \"svc-{i}\"\nprimary = [{{ address = \"{p}\" }}]\n\
             shadows = {{ endpoints = [{{ address = \"{s}\" }}], warm = true, max_in_flight = 32 }}"
        )?;
    }
    let path = dir.join(format!("services-{n}.toml"));
    std::fs::write(&path, toml)?;
    Ok(path)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The release `shadowmesh-xds` binary, built if needed.
fn server_binary() -> Result<PathBuf> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--quiet", "--release", "-p", "shadowmesh-xds"])
        .current_dir(shadowmesh_testkit::envoy::repo_root())
        .status()?;
    if !status.success() {
        bail!("cargo build -p shadowmesh-xds failed");
    }
    Ok(shadowmesh_testkit::target_dir().join("release/shadowmesh-xds"))
}

struct Server {
    child: Child,
    http: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on `config`; returns it and the time until both listeners accept.
fn start(binary: &Path, config: &Path) -> Result<(Server, Duration)> {
    let (http_port, ads_port) = (free_port()?, free_port()?);
    let http: SocketAddr = ([127, 0, 0, 1], http_port).into();
    let ads: SocketAddr = ([127, 0, 0, 1], ads_port).into();
    let started = Instant::now();
    let child = Command::new(binary)
        .arg("--config")
        .arg(config)
        .args([
            "--http-listen",
            &http.to_string(),
            "--ads-listen",
            &ads.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut server = Server { child, http };
    loop {
        if TcpStream::connect(http).is_ok() && TcpStream::connect(ads).is_ok() {
            return Ok((server, started.elapsed()));
        }
        if let Some(status) = server.child.try_wait()? {
            bail!("shadowmesh-xds exited during start-up: {status}");
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("shadowmesh-xds did not bind within 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// One `PUT …/shadows` per change against `server`, each a different shadow node.
async fn http_changes(
    server: &Server,
    n: usize,
    changes: usize,
    h: &mut Histogram<u64>,
) -> Result<()> {
    let client = loadgen::client();
    for c in 0..changes {
        let service = (c * 7919) % n;
        let body = format!(
            r#"{{"endpoints": [{{"address": "{}"}}], "warm": true, "max_in_flight": 32}}"#,
            ep(c, 10_000 + (c % 50_000) as u16).addr
        );
        let started = Instant::now();
        let (status, answer) = loadgen::request_json(
            &client,
            "PUT",
            server.http,
            &format!("/v1/services/svc-{service}/shadows"),
            Some(&body),
        )
        .await
        .map_err(anyhow::Error::msg)?;
        h.record(started.elapsed().as_micros() as u64)?;
        if status != 200 {
            bail!("PUT answered {status}: {answer}");
        }
    }
    Ok(())
}

/// The registry alone: `n` services, then `changes` shadow changes timed one by one.
fn registry_changes(n: usize, changes: usize, h: &mut Histogram<u64>) -> Result<()> {
    let registry = ShadowRegistry::new(SnapshotCache::default());
    registry.apply((0..n).map(|i| {
        ServiceChange::Set(ServiceSpec {
            name: format!("svc-{i}"),
            primary: vec![ep(i, 8080)],
            shadows: Some(ShadowSet::warm(vec![ep(i, 9090)], 32)),
        })
    }))?;
    for c in 0..changes {
        let shadows = ShadowSet::warm(vec![ep(c, 10_000 + (c % 50_000) as u16)], 32);
        let service = format!("svc-{}", (c * 7919) % n);
        let started = Instant::now();
        registry.set_shadows(&service, &shadows)?;
        h.record(started.elapsed().as_nanos() as u64)?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let binary = server_binary()?;
    let dir = std::env::temp_dir().join(format!("shadowmesh-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let configs: Vec<PathBuf> = args
        .services
        .iter()
        .map(|&n| write_config(&dir, n))
        .collect::<Result<_>>()?;
    let mut startup: Vec<Vec<f64>> = vec![Vec::new(); args.services.len()];
    let mut put: Vec<Histogram<u64>> = (0..args.services.len())
        .map(|_| Histogram::new(3))
        .collect::<Result<_, _>>()?;
    let mut publish = put.clone();
    for round in 0..args.rounds {
        for (i, &n) in args.services.iter().enumerate() {
            let (server, took) = start(&binary, &configs[i])
                .with_context(|| format!("start-up with {n} services"))?;
            startup[i].push(took.as_secs_f64() * 1e3);
            http_changes(&server, n, args.changes, &mut put[i]).await?;
            drop(server);
            registry_changes(n, args.changes, &mut publish[i])?;
            eprintln!(
                "round {}/{}: {n} services, start-up {:.0} ms",
                round + 1,
                args.rounds,
                took.as_secs_f64() * 1e3
            );
        }
    }
    std::fs::remove_dir_all(&dir)?;
    let rows: Vec<Row> = args
        .services
        .iter()
        .enumerate()
        .map(|(i, &n)| Row {
            services: n,
            startup_ms: median(startup[i].clone()),
            put_p50_ms: put[i].value_at_quantile(0.5) as f64 / 1e3,
            put_p99_ms: put[i].value_at_quantile(0.99) as f64 / 1e3,
            publish_p50_us: publish[i].value_at_quantile(0.5) as f64 / 1e3,
            publish_p99_us: publish[i].value_at_quantile(0.99) as f64 / 1e3,
        })
        .collect();
    println!(
        "\ncontrol-plane scale ({} rounds, {} changes per count and round; medians / quantiles)\n",
        args.rounds, args.changes
    );
    println!(
        "| services | start-up to listeners bound | PUT shadows p50 | p99 | registry change p50 | p99 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.0} ms | {:.2} ms | {:.2} ms | {:.1} µs | {:.1} µs |",
            r.services,
            r.startup_ms,
            r.put_p50_ms,
            r.put_p99_ms,
            r.publish_p50_us,
            r.publish_p99_us
        );
    }
    let report = Report {
        rounds: args.rounds,
        changes_per_round: args.changes,
        rows,
    };
    let path = shadowmesh_testkit::bench_dir()?.join("xds_scale.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("\nwritten: {}", path.display());
    Ok(())
}
