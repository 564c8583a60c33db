//! `soak`: the real `shadowmesh-xds` binary under sustained, partly hostile telemetry, then
//! killed with `SIGKILL` under concurrent writes — bounded in time, loopback only.
//!
//! **Ingest soak.** `--proxies` simulated filters (default 1,000) each post one report a
//! second for `--minutes` (default 10), spread evenly over the second, through the
//! telemetry token. A share of the reports is hostile or broken: malformed (`--malformed`,
//! unparseable JSON, `u64::MAX` requests, a share of −7.5e300, a window ending before it
//! starts, a forged proxy name), replayed (`--replayed`, the proxy's last accepted report
//! again) and skewed (`--skewed`, a window an hour in the future). Checked: every valid
//! report answered 200 and the server's `accepted` count equals the valid ones sent (zero
//! lost); every bad one refused with its status (400, 409); the server's RSS (from
//! `/proc/PID/status`) after warm-up (`--warmup-secs`, default three forecast steps):
//! median of the first minute against the median of the last minute (growth ≤ 5 %);
//! ingest latency (client round trip) p50/p99. Beside it runs the hostile mix
//! ([`hostile`]): forged identities, a relay flood, slow readers, silent ADS sockets, and
//! honest relay and ADS clients that must be served throughout.
//!
//! **Crash cycles.** `--cycles` times (default 5): `--writers` tasks write capacities and
//! services as fast as the server acknowledges them; after a random 0.3–1.5 s the process
//! is killed with `SIGKILL` mid-write and started again on the same state directory. Every
//! acknowledged write must be there after the restart (a value at least the last one
//! acknowledged: writes that were in flight may or may not have landed).
//!
//! Prints a table, checks both targets (exit 1 if one fails) and writes
//! `target/bench/soak.json`. Run with `--release`.

mod hostile;

use anyhow::{Context, Result, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use serde::Serialize;
use shadowmesh_testkit::median;
use shadowmesh_testkit::xds_process::{ApiClient, XdsProcess, free_addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const OPERATOR: &str = "op-soak-5e2a91c7d04b";
const TELEMETRY: &str = "tm-soak-8c1f36e9a27d";

/// Soaks the control plane with telemetry, then kills it mid-write, and checks nothing
/// was lost.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Simulated proxies, one report a second each.
    #[arg(long, default_value_t = 1_000)]
    proxies: u64,
    /// Length of the ingest soak.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Seconds from the start not counted in the RSS growth (default: three forecast
    /// steps of 60 s, at most a third of the soak). Every series' model allocates its
    /// state over its first steps — 3,050 series here (50 services, and one per proxy and
    /// service link) — so memory climbs for about three steps, then holds.
    #[arg(long)]
    warmup_secs: Option<f64>,
    /// Distinct services the proxies report (three per report).
    #[arg(long, default_value_t = 50)]
    services: u64,
    /// Share of malformed reports.
    #[arg(long, default_value_t = 0.05)]
    malformed: f64,
    /// Share of replayed reports.
    #[arg(long, default_value_t = 0.03)]
    replayed: f64,
    /// Share of reports from a clock an hour ahead.
    #[arg(long, default_value_t = 0.02)]
    skewed: f64,
    /// `kill -9` / restart cycles.
    #[arg(long, default_value_t = 5)]
    cycles: usize,
    /// Concurrent writers during each cycle.
    #[arg(long, default_value_t = 4)]
    writers: u64,
}

/// What one report was meant to be, and so what its answer must be.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Valid,
    Malformed,
    Replayed,
    Skewed,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Valid, Kind::Malformed, Kind::Replayed, Kind::Skewed];

    fn expected_status(self) -> u16 {
        match self {
            Kind::Valid => 200,
            Kind::Replayed => 409,
            Kind::Malformed | Kind::Skewed => 400,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Valid => "valid",
            Kind::Malformed => "malformed",
            Kind::Replayed => "replayed",
            Kind::Skewed => "skewed",
        }
    }
}

/// Deterministic pseudo-random numbers (xorshift): the same run every time.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn report(proxy: u64, seq: u64, end_ms: u64, services: u64, requests: u64) -> serde_json::Value {
    let entry = |s: u64| {
        serde_json::json!({
            "service": format!("svc-{s:03}"), "requests": requests, "redirected": 0,
            "fallbacks": 0, "state": "normal", "redirect_share": 0.0,
            "primary": {"cluster": format!("svc-{s:03}_primary"), "requests": requests,
                        "in_flight": 1, "load_score": 0.4,
                        "latency_ms": {"count": requests, "mean": 4.0, "p50": 3.5, "p90": 6.0,
                                       "p99": 9.0, "max": 12.0},
                        "orca_utilization": null, "orca_reports": 0, "orca_malformed": 0},
            "shadow": {"cluster": format!("svc-{s:03}_shadow"), "requests": 0, "in_flight": 0,
                       "load_score": 0.0,
                       "latency_ms": {"count": 0, "mean": 0.0, "p50": 0.0, "p90": 0.0,
                                      "p99": 0.0, "max": 0.0},
                       "orca_utilization": null, "orca_reports": 0, "orca_malformed": 0}
        })
    };
    let mine = [
        proxy % services,
        (proxy + 1) % services,
        (proxy + 7) % services,
    ];
    let mut distinct = mine.to_vec();
    distinct.dedup();
    serde_json::json!({
        "schema": shadowmesh_wire::TELEMETRY_SCHEMA,
        "proxy": format!("soak-proxy-{proxy:05}"), "seq": seq,
        "window_start_ms": end_ms - 1_000, "window_end_ms": end_ms,
        "services": distinct.into_iter().map(entry).collect::<Vec<_>>(),
    })
}

/// One of five ways to be malformed, each refused with 400.
fn malformed(valid: serde_json::Value, variant: u64) -> String {
    let mut r = valid;
    match variant % 5 {
        0 => return "{\"schema\": \"shadowmesh.telemetry/v1\", \"proxy\": ".to_string(),
        1 => r["services"][0]["requests"] = u64::MAX.into(),
        2 => r["services"][0]["redirect_share"] = (-7.5e300).into(),
        3 => r["window_start_ms"] = (r["window_end_ms"].as_u64().unwrap_or(0) + 5_000).into(),
        _ => r["proxy"] = "not a proxy name!".into(),
    }
    r.to_string()
}

/// Per proxy: the next sequence number and the last report the server accepted.
#[derive(Default, Clone)]
struct ProxyState {
    next_seq: u64,
    last_accepted: Option<String>,
}

#[derive(Default)]
struct Tally {
    sent: [u64; 4],
    as_expected: [u64; 4],
    unexpected: Vec<String>,
    transport_errors: u64,
}

#[derive(Serialize)]
struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

#[derive(Serialize)]
struct SoakReport {
    proxies: u64,
    minutes: f64,
    services: u64,
    sent: serde_json::Value,
    refused_as_expected: serde_json::Value,
    valid_acknowledged: u64,
    valid_lost: u64,
    server_accepted: u64,
    server_refused: serde_json::Value,
    unexpected_answers: Vec<String>,
    transport_errors: u64,
    ingest_latency_us: Latency,
    rss_kib_warm: u64,
    rss_kib_end: u64,
    rss_kib_max: u64,
    rss_growth_pct: f64,
    rss_samples: Vec<(f64, u64)>,
    crash_cycles: usize,
    acknowledged_writes: u64,
    lost_acknowledged_writes: u64,
    restart_ms: Vec<u64>,
    passed: bool,
    /// The hostile mix beside the ingest soak.
    hostile: hostile::HostileReport,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The value of the Prometheus sample whose line starts with `prefix`.
fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

async fn wait_up(api: &ApiClient) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok((200, _)) = api.call("GET", "/healthz", None).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the control plane did not come up within 60 s")
}

struct Plane {
    http: std::net::SocketAddr,
    ads: std::net::SocketAddr,
    config: PathBuf,
    log: PathBuf,
    tokens: PathBuf,
    operator: ApiClient,
    telemetry: ApiClient,
}

impl Plane {
    fn new(dir: &Path) -> Result<Plane> {
        std::fs::create_dir_all(dir)?;
        let (http, ads) = (free_addr(), free_addr());
        let tokens = dir.join("tokens");
        std::fs::write(
            &tokens,
            format!(
                "operator {OPERATOR}\ntelemetry {TELEMETRY} proxies=soak-proxy-* fronts=svc-* serves=svc-*\n{}",
                hostile::token_lines()
            ),
        )?;
        let config = dir.join("xds.toml");
        std::fs::write(
            &config,
            format!(
                "http_listen = \"{http}\"\nads_listen = \"{ads}\"\nstate_dir = \"{}\"\n\
                 [relay]\nmax_service_bytes = 33554432\nmax_bytes = 67108864\n\
                 [[services]]\nname = \"cart\"\nprimary = [{{ address = \"127.0.0.1:9\" }}]\n",
                dir.join("state").display()
            ),
        )?;
        Ok(Plane {
            http,
            ads,
            config,
            log: dir.join("xds.log"),
            tokens,
            operator: ApiClient::new(http, Some(OPERATOR)),
            telemetry: ApiClient::new(http, Some(TELEMETRY)),
        })
    }

    fn start(&self) -> Result<XdsProcess> {
        XdsProcess::start(
            &self.config,
            &self.log,
            &["--tokens-file", &self.tokens.display().to_string()],
        )
    }
}

/// Seconds of RSS samples whose median is compared (after the warm-up, and at the end).
const RSS_WINDOW_SECS: f64 = 60.0;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.proxies == 0 || args.services == 0 || !args.minutes.is_finite() || args.minutes <= 0.0 {
        bail!("--proxies, --services and --minutes must be positive");
    }
    if args.malformed + args.replayed + args.skewed > 1.0 {
        bail!("--malformed + --replayed + --skewed must be at most 1");
    }
    let dir = shadowmesh_testkit::target_dir()
        .join("soak")
        .join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    let plane = Plane::new(&dir)?;
    let mut process = plane.start()?;
    wait_up(&plane.operator).await?;
    let pid = process.pid();

    let soak_secs = args.minutes * 60.0;
    let warmup = args.warmup_secs.unwrap_or((soak_secs / 3.0).min(180.0));
    eprintln!(
        "[soak] {} proxies × 1 report/s for {:.1} min (warm-up {warmup:.0} s), server pid {pid}",
        args.proxies, args.minutes
    );

    // RSS every second.
    let started = Instant::now();
    let samples: Arc<Mutex<Vec<(f64, u64)>>> = Arc::default();
    let sampler = {
        let samples = samples.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if let Some(kib) = rss_kib(pid) {
                    samples
                        .lock()
                        .unwrap()
                        .push((started.elapsed().as_secs_f64(), kib));
                }
            }
        })
    };

    let states = Arc::new(Mutex::new(vec![
        ProxyState::default();
        args.proxies as usize
    ]));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let total = (soak_secs * args.proxies as f64) as u64;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.proxies as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut rng = Rng(0x5eed_50a4);
    let mut tasks = tokio::task::JoinSet::new();
    let base_seq = now_ms();
    let mix = hostile::Hostile::start(plane.http, plane.ads, |proxy, seq, end| {
        report(proxy, seq, end, 50, 100).to_string()
    });
    for n in 0..total {
        tick.tick().await;
        let proxy = n % args.proxies;
        let u = rng.unit();
        let mut kind = if u < args.malformed {
            Kind::Malformed
        } else if u < args.malformed + args.replayed {
            Kind::Replayed
        } else if u < args.malformed + args.replayed + args.skewed {
            Kind::Skewed
        } else {
            Kind::Valid
        };
        let end = now_ms();
        let requests = 50 + rng.next() % 200;
        let body = {
            let mut states = states.lock().unwrap();
            let state = &mut states[proxy as usize];
            if kind == Kind::Replayed && state.last_accepted.is_none() {
                kind = Kind::Valid;
            }
            match kind {
                Kind::Replayed => state.last_accepted.clone().unwrap_or_default(),
                Kind::Valid => {
                    state.next_seq += 1;
                    report(
                        proxy,
                        base_seq + state.next_seq,
                        end,
                        args.services,
                        requests,
                    )
                    .to_string()
                }
                // Bad reports take no sequence number of their own: the next valid one
                // must still be accepted.
                Kind::Malformed => malformed(
                    report(proxy, base_seq + state.next_seq + 1, end, args.services, 1),
                    rng.next(),
                ),
                Kind::Skewed => report(
                    proxy,
                    base_seq + state.next_seq + 1,
                    end + 3_600_000,
                    args.services,
                    requests,
                )
                .to_string(),
            }
        };
        tally.lock().unwrap().sent[kind as usize] += 1;
        let (api, states, tally, latency, acknowledged) = (
            plane.telemetry.clone(),
            states.clone(),
            tally.clone(),
            latency.clone(),
            acknowledged.clone(),
        );
        tasks.spawn(async move {
            let t0 = Instant::now();
            let answer = api.call("POST", "/v1/telemetry", Some(&body)).await;
            let took = t0.elapsed().as_micros() as u64;
            let mut tally = tally.lock().unwrap();
            match answer {
                Ok((status, text)) if status == kind.expected_status() => {
                    tally.as_expected[kind as usize] += 1;
                    if kind == Kind::Valid {
                        acknowledged.fetch_add(1, Ordering::Relaxed);
                        let _ = latency.lock().unwrap().record(took.max(1));
                        states.lock().unwrap()[proxy as usize].last_accepted = Some(body);
                    }
                    drop(text);
                }
                Ok((status, text)) => {
                    if tally.unexpected.len() < 20 {
                        tally.unexpected.push(format!(
                            "{} report answered {status}: {}",
                            kind.name(),
                            text.chars().take(200).collect::<String>()
                        ));
                    }
                }
                Err(_) => tally.transport_errors += 1,
            }
        });
        // Reap finished tasks as we go: the set stays small.
        while tasks.try_join_next().is_some() {}
        if n > 0 && n % (args.proxies * 60) == 0 {
            let rss = samples.lock().unwrap().last().map(|s| s.1).unwrap_or(0);
            eprintln!(
                "[soak] {:.0} s: {n} reports sent, RSS {} MiB",
                started.elapsed().as_secs_f64(),
                rss / 1024
            );
        }
    }
    while tasks.join_next().await.is_some() {}
    let hostile = mix.finish(&plane.operator).await;
    sampler.abort();
    let soak_took = started.elapsed().as_secs_f64();

    let metrics = plane
        .operator
        .call("GET", "/metrics", None)
        .await
        .map_err(anyhow::Error::msg)?
        .1;
    let server = |outcome: &str| {
        metric(
            &metrics,
            &format!("shadowmesh_http_telemetry_reports_total{{outcome=\"{outcome}\"}}"),
        )
    };
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    let window = |from: f64, to: f64| {
        median(
            samples
                .iter()
                .filter(|(t, _)| (from..to).contains(t))
                .map(|s| s.1 as f64)
                .collect(),
        ) as u64
    };
    // Medians over a minute: the hostile mix's slow readers come eight every 5 s and are
    // held 20 s, each with a page of up to 1 MiB in the server, so RSS saws with them; a
    // minute holds three of their cycles.
    let rss_warm = window(warmup, warmup + RSS_WINDOW_SECS);
    let rss_end = window(soak_took - RSS_WINDOW_SECS, f64::MAX);
    let rss_max = samples
        .iter()
        .filter(|(t, _)| *t >= warmup)
        .map(|s| s.1)
        .max()
        .unwrap_or(0);
    let growth = (rss_end as f64 / rss_warm.max(1) as f64 - 1.0) * 100.0;
    let h = latency.lock().unwrap().clone();
    let valid_sent = tally.sent[Kind::Valid as usize];
    let valid_ack = acknowledged.load(Ordering::Relaxed);
    let server_accepted = server("accepted");

    // Crash cycles.
    let mut restart_ms = Vec::new();
    let (mut acked_total, mut lost_total) = (0, 0);
    let mut rng = Rng(0xc4a5_4e11);
    for cycle in 0..args.cycles {
        let (acked, lost) = crash_cycle(&plane, &mut process, &args, cycle, &mut rng).await?;
        let t0 = Instant::now();
        process = plane.start()?;
        wait_up(&plane.operator).await?;
        restart_ms.push(t0.elapsed().as_millis() as u64);
        let lost = lost_writes(&plane.operator, &lost).await;
        acked_total += acked;
        lost_total += lost;
        eprintln!(
            "[soak] crash cycle {}: {acked} writes acknowledged, {lost} lost, back in {} ms",
            cycle + 1,
            restart_ms.last().unwrap_or(&0)
        );
    }
    let _ = process.terminate(Duration::from_secs(15));

    let kinds = |v: &[u64; 4]| {
        serde_json::Value::Object(
            Kind::ALL
                .iter()
                .map(|k| (k.name().to_string(), v[*k as usize].into()))
                .collect(),
        )
    };
    let soak_ok = valid_ack == valid_sent
        && server_accepted == valid_sent
        && tally.unexpected.is_empty()
        && tally.transport_errors == 0
        && growth <= 5.0
        && hostile.passed();
    let crash_ok = lost_total == 0 && acked_total > 0;
    let result = SoakReport {
        proxies: args.proxies,
        minutes: args.minutes,
        services: args.services,
        sent: kinds(&tally.sent),
        refused_as_expected: kinds(&tally.as_expected),
        valid_acknowledged: valid_ack,
        valid_lost: valid_sent - valid_ack.min(valid_sent),
        server_accepted,
        server_refused: serde_json::json!({
            "invalid": server("invalid"), "replayed": server("replayed"),
            "skewed": server("skewed"),
        }),
        unexpected_answers: tally.unexpected.clone(),
        transport_errors: tally.transport_errors,
        ingest_latency_us: Latency {
            p50: h.value_at_quantile(0.5) as f64,
            p99: h.value_at_quantile(0.99) as f64,
            p999: h.value_at_quantile(0.999) as f64,
            max: h.max() as f64,
        },
        rss_kib_warm: rss_warm,
        rss_kib_end: rss_end,
        rss_kib_max: rss_max,
        rss_growth_pct: growth,
        rss_samples: samples,
        crash_cycles: args.cycles,
        acknowledged_writes: acked_total,
        lost_acknowledged_writes: lost_total,
        restart_ms: restart_ms.clone(),
        passed: soak_ok && crash_ok,
        hostile,
    };

    println!(
        "\nsoak: {} proxies × 1 report/s × {:.1} min, {} services",
        args.proxies, args.minutes, args.services
    );
    println!("| reports | sent | answered as expected |\n|---|---:|---:|");
    for k in Kind::ALL {
        println!(
            "| {} | {} | {} |",
            k.name(),
            tally.sent[k as usize],
            tally.as_expected[k as usize]
        );
    }
    println!("\n| measure | value |\n|---|---:|");
    let rows: Vec<(&str, String)> = vec![
        ("valid reports lost", result.valid_lost.to_string()),
        ("server's accepted count", server_accepted.to_string()),
        ("unexpected answers", tally.unexpected.len().to_string()),
        ("transport errors", tally.transport_errors.to_string()),
        (
            "ingest p50 (µs)",
            format!("{:.0}", result.ingest_latency_us.p50),
        ),
        (
            "ingest p99 (µs)",
            format!("{:.0}", result.ingest_latency_us.p99),
        ),
        (
            "ingest p99.9 (µs)",
            format!("{:.0}", result.ingest_latency_us.p999),
        ),
        (
            "RSS after warm-up (MiB)",
            format!("{:.1}", rss_warm as f64 / 1024.0),
        ),
        (
            "RSS at the end (MiB)",
            format!("{:.1}", rss_end as f64 / 1024.0),
        ),
        (
            "RSS max after warm-up (MiB)",
            format!("{:.1}", rss_max as f64 / 1024.0),
        ),
        ("RSS growth after warm-up", format!("{growth:+.1} %")),
        (
            "forged identities refused (403)",
            format!(
                "{} / {}",
                result.hostile.forged_refused, result.hostile.forged_sent
            ),
        ),
        (
            "seq past the clock refused (400)",
            format!(
                "{} / {}",
                result.hostile.pushed_refused, result.hostile.pushed_sent
            ),
        ),
        (
            "relay flood publishes (1.8 MB)",
            result.hostile.flood_publishes.to_string(),
        ),
        (
            "relay bytes at the end (MiB)",
            format!("{:.1}", result.hostile.relay_bytes as f64 / 1048576.0),
        ),
        (
            "slow readers closed by the server",
            format!(
                "{} / {}",
                result.hostile.slow_readers_closed, result.hostile.slow_readers
            ),
        ),
        (
            "silent ADS sockets closed by the server",
            format!(
                "{} / {}",
                result.hostile.idle_ads_closed, result.hostile.idle_ads
            ),
        ),
        (
            "honest relay calls refused",
            format!(
                "{} of {} publishes",
                result.hostile.honest_refused, result.hostile.honest_publishes
            ),
        ),
        (
            "honest acknowledged versions lost",
            format!(
                "{} of {}",
                result.hostile.honest_lost, result.hostile.honest_acknowledged
            ),
        ),
        (
            "honest ADS connections not served in 5 s",
            format!(
                "{} of {}",
                result.hostile.ads_failures, result.hostile.ads_checks
            ),
        ),
        ("kill -9 cycles", args.cycles.to_string()),
        ("acknowledged writes", acked_total.to_string()),
        ("acknowledged writes lost", lost_total.to_string()),
        (
            "restart to healthy, median (ms)",
            (median(restart_ms.iter().map(|&ms| ms as f64).collect()) as u64).to_string(),
        ),
    ];
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
    for u in &tally.unexpected {
        println!("unexpected: {u}");
    }
    let out = shadowmesh_testkit::bench_dir()?.join("soak.json");
    std::fs::write(&out, serde_json::to_string_pretty(&result)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "\ningest: {} (zero valid lost, every bad one refused, every attack refused, honest clients served, RSS growth ≤ 5 %)",
        if soak_ok { "PASS" } else { "FAIL" }
    );
    println!(
        "crash: {} (zero acknowledged writes lost)",
        if crash_ok { "PASS" } else { "FAIL" }
    );
    println!("wrote {}", out.display());
    let _ = std::fs::remove_dir_all(&dir);
    if !(soak_ok && crash_ok) {
        std::process::exit(1);
    }
    Ok(())
}

/// One key's last acknowledged value and the write in flight when the process died (which
/// may or may not have landed): after the restart the key must hold one of the two.
struct Expected {
    path: String,
    acknowledged: String,
    in_flight: String,
}

/// Writers write until the process is killed under them; returns the writes acknowledged
/// and what each key must hold after the restart.
async fn crash_cycle(
    plane: &Plane,
    process: &mut XdsProcess,
    args: &Args,
    cycle: usize,
    rng: &mut Rng,
) -> Result<(u64, Vec<Expected>)> {
    let acked = Arc::new(AtomicU64::new(0));
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..args.writers {
        let (api, acked) = (plane.operator.clone(), acked.clone());
        writers.spawn(async move {
            let series = format!("soak-writer-{w}");
            let keys = [
                format!("/v1/capacity/{series}"),
                format!("/v1/services/{series}"),
            ];
            // (acknowledged, in flight) per key.
            let mut last: [(Option<String>, Option<String>); 2] = Default::default();
            // Values never repeat across cycles: a stale value cannot pass for a new one.
            for n in (cycle as u64 + 1) * 1_000_000.. {
                let k = (n % 2) as usize;
                let (body, value, want) = if k == 0 {
                    let c = n as f64;
                    (format!("{{\"capacity\": {c}}}"), c.to_string(), 204)
                } else {
                    let address = format!(
                        "10.{}.{}.{}:{}",
                        n >> 24 & 255,
                        n >> 16 & 255,
                        n >> 8 & 255,
                        1 + (n & 255)
                    );
                    (
                        format!("{{\"primary\": [{{\"address\": \"{address}\"}}]}}"),
                        address,
                        200,
                    )
                };
                last[k].1 = Some(value.clone());
                match api.call("PUT", &keys[k], Some(&body)).await {
                    Ok((status, _)) if status == want => {
                        last[k] = (Some(value), None);
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => break,
                }
            }
            keys.into_iter()
                .zip(last)
                .filter_map(|(path, (acknowledged, in_flight))| {
                    let acknowledged = acknowledged?;
                    Some(Expected {
                        path,
                        in_flight: in_flight.unwrap_or_else(|| acknowledged.clone()),
                        acknowledged,
                    })
                })
                .collect::<Vec<_>>()
        });
    }
    let delay = Duration::from_millis(300 + rng.next() % 1_200);
    tokio::time::sleep(delay).await;
    process.kill_9();
    let mut expected = Vec::new();
    while let Some(done) = writers.join_next().await {
        expected.extend(done?);
    }
    Ok((acked.load(Ordering::Relaxed), expected))
}

/// How many keys hold neither their acknowledged value nor the one in flight.
async fn lost_writes(api: &ApiClient, expected: &[Expected]) -> u64 {
    let mut lost = 0;
    for e in expected {
        let found = api.get_json(&e.path).await.and_then(|v| {
            if e.path.starts_with("/v1/capacity/") {
                v["capacity"].as_f64().map(|c| c.to_string())
            } else {
                v["primary"][0]["address"].as_str().map(str::to_string)
            }
        });
        let found = found.unwrap_or_default();
        if found != e.acknowledged && found != e.in_flight {
            eprintln!(
                "[soak] LOST: {} holds {found:?}; {:?} was acknowledged",
                e.path, e.acknowledged
            );
            lost += 1;
        }
    }
    lost
}
