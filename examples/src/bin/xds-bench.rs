//! xDS benchmark, state of the world and delta side by side in one run:
//!
//! * **decision → ACK** with one real Envoy 1.40: the controller changes a service's
//!   shadow nodes; time until Envoy's ACK of that exact endpoint version is recorded by
//!   the server (p50/p99 over many pushes);
//! * **fan-out**: N simulated proxies ([`shadowmesh_testkit::ads_client`]), each watching
//!   100 clusters / 1,000 endpoints, against the server running as a child process:
//!   time from a one-endpoint change until every proxy has ACKed it, server memory per
//!   connected proxy (RSS growth / N), and bytes per proxy per push.
//!
//! Prints a table and writes `target/bench/xds.json`.

use anyhow::{Context, Result, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use serde::Serialize;
use shadowmesh_testkit::ads_client::{self, Received, SimProxy};
use shadowmesh_testkit::envoy::{AdsBootstrap, EnvoyOptions, EnvoyProcess, FilterChoice};
use shadowmesh_testkit::median;
use shadowmesh_testkit::upstream::{self, OrcaMode, UpstreamConfig};
use shadowmesh_xds::ControlPlane;
use shadowmesh_xds::registry::ShadowSet;
use shadowmesh_xds::xds::builders::{EndpointSpec, eds_cluster, load_assignment};
use shadowmesh_xds::xds::{ENDPOINT_TYPE, Snapshot, SnapshotCache};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Measures how fast Shadowmesh's ADS server gets a controller decision into Envoys.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Pushes measured per mode with the real Envoy.
    #[arg(long, default_value_t = 200)]
    pushes: usize,
    /// Simulated proxy counts for the fan-out (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    proxies: Vec<usize>,
    /// Clusters each simulated proxy watches.
    #[arg(long, default_value_t = 100)]
    clusters: usize,
    /// Endpoints per cluster.
    #[arg(long, default_value_t = 10)]
    endpoints_per_cluster: usize,
    /// One-endpoint changes measured per fan-out configuration (median reported).
    #[arg(long, default_value_t = 5)]
    changes: usize,
    /// Internal: run as the fan-out server child.
    #[arg(long, hide = true)]
    serve_fanout: bool,
}

#[derive(Debug, Serialize)]
struct AckLatency {
    mode: &'static str,
    pushes: usize,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

#[derive(Debug, Serialize)]
struct FanOut {
    mode: &'static str,
    proxies: usize,
    clusters: usize,
    endpoints: usize,
    /// Opening the N connections (one at a time), included in `initial_sync_ms`.
    connect_ms: f64,
    initial_sync_ms: f64,
    all_acked_ms_median: f64,
    all_acked_ms_max: f64,
    server_rss_kib_per_proxy: f64,
    bytes_per_proxy_per_push: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    decision_to_ack: Vec<AckLatency>,
    fan_out: Vec<FanOut>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if args.serve_fanout {
        return rt.block_on(serve_fanout(&args));
    }
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let mut report = Report {
        decision_to_ack: Vec::new(),
        fan_out: Vec::new(),
    };
    for delta in [false, true] {
        report
            .decision_to_ack
            .push(decision_to_ack(&args, delta).await?);
    }
    for &n in &args.proxies {
        for delta in [false, true] {
            report.fan_out.push(fan_out(&args, n, delta).await?);
        }
    }

    println!(
        "\ndecision → ACK, one real Envoy 1.40 ({} pushes per mode)",
        args.pushes
    );
    println!("| mode | p50 µs | p99 µs | max µs |\n|---|---:|---:|---:|");
    for r in &report.decision_to_ack {
        println!(
            "| {} | {} | {} | {} |",
            r.mode, r.p50_us, r.p99_us, r.max_us
        );
    }
    println!(
        "\nfan-out: one-endpoint change, {} clusters / {} endpoints per proxy (median of {} changes)",
        args.clusters,
        args.clusters * args.endpoints_per_cluster,
        args.changes
    );
    println!(
        "| mode | proxies | connect ms | initial sync ms | all ACKed ms (median) | max | server KiB/proxy | bytes/proxy/push |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &report.fan_out {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.0} |",
            r.mode,
            r.proxies,
            r.connect_ms,
            r.initial_sync_ms,
            r.all_acked_ms_median,
            r.all_acked_ms_max,
            r.server_rss_kib_per_proxy,
            r.bytes_per_proxy_per_push
        );
    }
    let dir = shadowmesh_testkit::bench_dir()?;
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("xds.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("\nwritten to {}", path.display());
    Ok(())
}

fn mode(delta: bool) -> &'static str {
    if delta { "delta" } else { "sotw" }
}

async fn decision_to_ack(args: &Args, delta: bool) -> Result<AckLatency> {
    let primary = upstream::start(
        UpstreamConfig::new("primary", 64, Duration::ZERO, OrcaMode::Off),
        0,
    )
    .await?;
    let plane = ControlPlane::default();
    plane
        .registry
        .set_primary("checkout", &[EndpointSpec::healthy(primary.addr)])?;
    let ads = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let xds_port = ads.local_addr()?.port();
    let serving = plane.clone();
    let server = tokio::spawn(async move { serving.serve_ads(ads, std::future::pending()).await });
    let yaml = AdsBootstrap {
        node_id: "bench".into(),
        node_cluster: "bench".into(),
        xds_port,
        control_port: 9,
        filter: FilterChoice::None,
        delta,
        services: Vec::new(),
        tls: None,
    }
    .render()?;
    let envoy = EnvoyProcess::launch(yaml, EnvoyOptions::default()).await?;
    let acked = |version: String| {
        let cache = plane.cache.clone();
        async move {
            cache
                .wait_for(|p| p.len() == 1 && p[0].acked.get(ENDPOINT_TYPE) == Some(&version))
                .await
        }
    };
    let eds_version = |cache: &SnapshotCache| {
        cache
            .snapshot_for("bench")
            .and_then(|s| s.get(ENDPOINT_TYPE).map(|r| r.version.clone()))
            .unwrap_or_default()
    };
    tokio::time::timeout(Duration::from_secs(30), acked(eds_version(&plane.cache)))
        .await
        .context("Envoy never ACKed the initial endpoints")?;
    let mut h = Histogram::<u64>::new(3)?;
    for i in 0..args.pushes {
        // A different shadow node each time, so every push is a real endpoint change.
        let shadow: SocketAddr = format!("127.0.0.{}:{}", 2 + i % 200, 20_000 + i).parse()?;
        let started = Instant::now();
        let shadows = ShadowSet {
            endpoints: vec![EndpointSpec::healthy(shadow)],
            ..ShadowSet::none()
        };
        plane.registry.set_shadows("checkout", &shadows)?;
        tokio::time::timeout(Duration::from_secs(10), acked(eds_version(&plane.cache)))
            .await
            .with_context(|| format!("push {i} not ACKed"))?;
        h.record(started.elapsed().as_micros() as u64)?;
    }
    drop(envoy);
    server.abort();
    primary.stop();
    Ok(AckLatency {
        mode: mode(delta),
        pushes: args.pushes,
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
        max_us: h.max(),
    })
}

/// The fan-out server's snapshot: `clusters` EDS clusters of `per` endpoints; `bump`
/// moves one endpoint (of cluster `bump % clusters`) to another port.
fn fanout_snapshot(clusters: usize, per: usize, bumps: &[u16]) -> Snapshot {
    let names: Vec<String> = (0..clusters)
        .map(|i| format!("svc{i:03}_primary"))
        .collect();
    let cds: Vec<_> = names.iter().map(|n| eds_cluster(n)).collect();
    let eds: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let endpoints: Vec<EndpointSpec> = (0..per)
                .map(|j| {
                    let port = 10_000 + (j as u16) + bumps.get(i).copied().unwrap_or(0) * 100;
                    EndpointSpec::healthy(SocketAddr::from(([10, 1, (i % 250) as u8, 1], port)))
                })
                .collect();
            load_assignment(n, &endpoints)
        })
        .collect();
    Snapshot::new(&cds, &eds)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Child process: serves ADS and obeys `change K` / `rss` lines on stdin.
async fn serve_fanout(args: &Args) -> Result<()> {
    let cache = SnapshotCache::default();
    let mut bumps = vec![0u16; args.clusters];
    let publish = |bumps: &[u16]| {
        let s = fanout_snapshot(args.clusters, args.endpoints_per_cluster, bumps);
        let v = s
            .get(ENDPOINT_TYPE)
            .map(|r| r.version.clone())
            .unwrap_or_default();
        cache.set_snapshot("*", s);
        v
    };
    let version = publish(&bumps);
    let listener = shadowmesh_xds::bind(([127, 0, 0, 1], 0).into())?;
    println!("PORT {} {version}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    let ads = shadowmesh_xds::xds::Ads::new(cache.clone());
    tokio::spawn(shadowmesh_xds::xds::serve_ads(
        listener,
        ads,
        None,
        Default::default(),
        std::future::pending(),
    ));
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        let mut words = line.split_whitespace();
        match (
            words.next(),
            words.next().and_then(|k| k.parse::<usize>().ok()),
        ) {
            (Some("change"), Some(k)) => {
                let i = k % args.clusters;
                bumps[i] = bumps[i].wrapping_add(1) % 500;
                println!("OK {}", publish(&bumps));
            }
            (Some("rss"), _) => println!("RSS {}", rss_kib()),
            _ => println!("ERR {line}"),
        }
        std::io::stdout().flush()?;
    }
    Ok(())
}

/// The server child process and its command pipe.
struct FanoutServer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl FanoutServer {
    fn start(args: &Args) -> Result<(FanoutServer, u16, String)> {
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                "--serve-fanout",
                "--clusters",
                &args.clusters.to_string(),
                "--endpoints-per-cluster",
                &args.endpoints_per_cluster.to_string(),
            ])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let mut s = FanoutServer {
            child,
            stdin,
            stdout,
        };
        let line = s.line()?;
        let mut words = line.split_whitespace().skip(1);
        let port = words.next().context("port")?.parse()?;
        let version = words.next().context("version")?.to_string();
        Ok((s, port, version))
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("fan-out server exited");
        }
        Ok(line.trim().to_string())
    }

    /// Sends a command, returns the answer's value.
    fn ask(&mut self, command: &str) -> Result<String> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        let line = self.line()?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("answer")?
            .to_string())
    }
}

impl Drop for FanoutServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Receives until all `n` proxies have ACKed endpoint version `version`; returns when the
/// last one did and the endpoint bytes they received for it.
async fn all_acked(
    seen: &mut mpsc::UnboundedReceiver<Received>,
    n: usize,
    version: &str,
) -> Result<(Instant, usize)> {
    let mut done = vec![false; n];
    let mut remaining = n;
    let mut last = Instant::now();
    let mut bytes = 0;
    while remaining > 0 {
        let r = tokio::time::timeout(Duration::from_secs(60), seen.recv())
            .await
            .context("proxies stopped ACKing")?
            .context("all proxies gone")?;
        if r.type_url == ENDPOINT_TYPE && r.version == version {
            bytes += r.bytes;
            if !std::mem::replace(&mut done[r.proxy], true) {
                remaining -= 1;
                last = last.max(r.acked_at);
            }
        }
    }
    Ok((last, bytes))
}

async fn fan_out(args: &Args, n: usize, delta: bool) -> Result<FanOut> {
    let (mut server, port, initial) = FanoutServer::start(args)?;
    let rss_before: f64 = server.ask("rss")?.parse()?;
    let (tx, mut seen) = mpsc::unbounded_channel();
    let started = Instant::now();
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .tcp_nodelay(true);
    for index in 0..n {
        let channel = endpoint.connect().await?;
        let p = SimProxy {
            index,
            node_id: format!("sim-{index}"),
            group: "sim".into(),
            delta,
        };
        let tx = tx.clone();
        tokio::spawn(async move { ads_client::run(p, channel, tx).await });
    }
    let connect_ms = started.elapsed().as_secs_f64() * 1e3;
    let (synced, _) = all_acked(&mut seen, n, &initial).await?;
    let initial_sync_ms = synced.duration_since(started).as_secs_f64() * 1e3;
    let rss_after: f64 = server.ask("rss")?.parse()?;
    let mut times = Vec::new();
    let mut bytes = Vec::new();
    for k in 0..args.changes {
        let t0 = Instant::now();
        let version = server.ask(&format!("change {}", k * 7))?;
        let (last, b) = all_acked(&mut seen, n, &version).await?;
        times.push(last.saturating_duration_since(t0).as_secs_f64() * 1e3);
        bytes.push(b as f64 / n as f64);
    }
    times.sort_by(f64::total_cmp);
    drop(server);
    Ok(FanOut {
        mode: mode(delta),
        proxies: n,
        clusters: args.clusters,
        endpoints: args.clusters * args.endpoints_per_cluster,
        connect_ms,
        initial_sync_ms,
        all_acked_ms_median: median(times.clone()),
        all_acked_ms_max: *times.last().unwrap_or(&0.0),
        server_rss_kib_per_proxy: (rss_after - rss_before) / n as f64,
        bytes_per_proxy_per_push: bytes.iter().sum::<f64>() / bytes.len().max(1) as f64,
    })
}
