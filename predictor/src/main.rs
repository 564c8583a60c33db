//! `predictor`: offline backtests and the throughput benchmark of the Shadowmesh
//! Predictive Traffic Analyzer.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use shadowmesh_predictor::analyzer::{Analyzer, AnalyzerConfig};
use shadowmesh_predictor::backtest::{self, BacktestConfig};
use shadowmesh_predictor::data::{read_csv, read_events};
use shadowmesh_predictor::model::{ModelConfig, SeasonCombination, SeasonSpec};
use std::path::PathBuf;
use std::time::Instant;

/// Shadowmesh Predictive Traffic Analyzer tools.
#[derive(Parser, Debug)]
#[command(name = "predictor", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Rolling-origin backtest of the Shadowmesh model against naive, seasonal naive and
    /// plain Holt-Winters on any `timestamp,value` CSV: MASE, sMAPE, interval coverage.
    Backtest {
        /// The series (header row; timestamp in column 1, value in column 2).
        #[arg(long)]
        csv: PathBuf,
        /// Grid step in seconds [default: the smallest gap between rows].
        #[arg(long)]
        step: Option<i64>,
        /// Season lengths in steps, comma-separated; the first is the MASE scale's and
        /// Holt-Winters' season [default: a day and a week (24,168 for hourly data, 48,336
        /// for half-hourly, 1440,10080 for minutes), 7,365 for daily data].
        #[arg(long, value_delimiter = ',')]
        seasons: Vec<usize>,
        /// Steps ahead; horizons 1..=H are all scored.
        #[arg(long, default_value_t = 24)]
        horizon: usize,
        /// Central interval evaluated (0.8 = the 10th to 90th percentile).
        #[arg(long, default_value_t = 0.8)]
        coverage: f64,
        /// Leading share of the series for fitting parameters and the MASE scale.
        #[arg(long, default_value_t = 0.2)]
        train: f64,
        /// Score an origin every this many steps [default: 1; with --peers, the first
        /// season + 1, so that the origins sweep every phase of the season].
        #[arg(long)]
        origin_every: Option<usize>,
        /// Scheduled events and holidays: one a line, a date (a whole-day `holiday`) or
        /// `start,duration,kind` (duration in s, or with m/h/d).
        #[arg(long)]
        events: Option<PathBuf>,
        /// With --events: score the event days separately, but do not tell the model
        /// about the events (to measure what the calendar is worth).
        #[arg(long, requires = "events")]
        events_scored_only: bool,
        /// Other libraries' models in the same table, on the same origins: `statsmodels`
        /// (Holt-Winters and MSTL, refitted at every origin; installed into .venv on
        /// demand by scripts/peers).
        #[arg(long, value_delimiter = ',')]
        peers: Vec<String>,
        /// Values each peer refit sees [default: four longest seasons, at least eight of
        /// the first].
        #[arg(long)]
        peer_window: Option<usize>,
        /// Fit only this way of combining seasons: `additive` or `nested` [default: both
        /// are tried on the training part].
        #[arg(long, value_parser = parse_combine)]
        combine: Option<SeasonCombination>,
        /// Use default parameters instead of fitting on the training part.
        #[arg(long)]
        no_fit: bool,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Throughput and memory: update and forecast many series per tick on one core.
    Bench {
        /// Series.
        #[arg(long, default_value_t = 10_000)]
        series: usize,
        /// Measured ticks.
        #[arg(long, default_value_t = 100)]
        ticks: usize,
        /// Forecast horizon in steps.
        #[arg(long, default_value_t = 24)]
        horizon: usize,
    },
}

fn parse_combine(s: &str) -> Result<SeasonCombination, String> {
    match s {
        "additive" => Ok(SeasonCombination::Additive),
        "nested" => Ok(SeasonCombination::Nested),
        _ => Err(format!("{s:?} is not additive or nested")),
    }
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Backtest {
            csv,
            step,
            seasons,
            horizon,
            coverage,
            train,
            origin_every,
            events,
            events_scored_only,
            peers,
            peer_window,
            combine,
            no_fit,
            json,
        } => {
            for p in &peers {
                if !shadowmesh_predictor::peers::KNOWN.contains(&p.as_str()) {
                    bail!(
                        "--peers: {p:?} is not one of {:?}",
                        shadowmesh_predictor::peers::KNOWN
                    );
                }
            }
            if origin_every == Some(0) {
                bail!("--origin-every must be at least 1");
            }
            if peer_window.is_some_and(|w| w < 2) {
                bail!("--peer-window must be at least 2");
            }
            let events = match &events {
                Some(path) => read_events(path).context("--events")?,
                None => Vec::new(),
            };
            if !(coverage > 0.0 && coverage < 1.0) {
                bail!("--coverage: {coverage} is not in (0, 1)");
            }
            if !(train > 0.0 && train < 1.0) {
                bail!("--train: {train} is not in (0, 1)");
            }
            let series = read_csv(&csv, step)?;
            let seasons = if seasons.is_empty() {
                match series.step_secs {
                    86_400 => vec![7, 365],
                    // Sub-daily steps that divide the day: day and week at full resolution.
                    s if s < 86_400 && 86_400 % s == 0 => {
                        vec![(86_400 / s) as usize, (7 * 86_400 / s) as usize]
                    }
                    s => vec![(86_400 / s).max(2) as usize],
                }
            } else {
                seasons
            };
            let mut model = ModelConfig::for_step(series.step_secs, horizon);
            model.seasons = seasons
                .iter()
                .map(|s| {
                    let period_secs = i64::try_from(*s)
                        .ok()
                        .and_then(|s| s.checked_mul(series.step_secs))
                        .with_context(|| format!("--seasons: {s} steps is too long a season"))?;
                    Ok(SeasonSpec {
                        period_secs,
                        buckets: *s,
                        rate: 0.1,
                    })
                })
                .collect::<Result<_>>()?;
            model.calibrate_coverage = coverage;
            model.validate().context("model configuration")?;
            let first = seasons.first().copied().unwrap_or(1);
            let cfg = BacktestConfig {
                horizon,
                coverage,
                train_fraction: train,
                origin_every: origin_every.unwrap_or(if peers.is_empty() { 1 } else { first + 1 }),
                seasons: seasons.clone(),
                fit: !no_fit,
                events: std::sync::Arc::new(events),
                events_scored_only,
                combine,
            };
            if let Some(c) = combine {
                model.combine = c;
            }
            let started = Instant::now();
            if let Some(path) = &json {
                // Before minutes of work, not after.
                std::fs::File::create(path)
                    .with_context(|| format!("--json {}", path.display()))?;
            }
            let mut peer_forecasts = Vec::new();
            if !peers.is_empty() {
                let origins = backtest::origins(&series.values, &cfg);
                if origins.is_empty() || series.values.len() < horizon + 2 {
                    bail!(
                        "--horizon: the series has {} steps and no origin to forecast {horizon} steps from",
                        series.values.len()
                    );
                }
                let longest = seasons.iter().copied().max().unwrap_or(first);
                let window = peer_window.unwrap_or((4 * longest).max(8 * first));
                eprintln!(
                    "[peers] statsmodels: {} origins, refitted on the last {window} values each",
                    origins.len()
                );
                peer_forecasts = shadowmesh_predictor::peers::statsmodels(
                    &shadowmesh_predictor::peers::PeerRequest {
                        values: &series.values,
                        origins: &origins,
                        horizon,
                        seasons: &seasons,
                        window,
                    },
                )
                .map_err(|e| anyhow::anyhow!("--peers: {}", e.message))?;
            }
            let report = backtest::run(&series, &cfg, model, peer_forecasts).map_err(|e| {
                let flag = if e.field == "csv" {
                    "--csv"
                } else {
                    &format!("--{}", e.field)
                };
                anyhow::anyhow!("{flag}: {}", e.message)
            })?;
            println!(
                "{}: {} steps of {} s, trained on {}, horizons 1–{}, {:.0}% intervals ({:.1} s)",
                csv.display(),
                report.steps,
                series.step_secs,
                report.train_steps,
                horizon,
                coverage * 100.0,
                started.elapsed().as_secs_f64()
            );
            let on_events = !cfg.events.is_empty();
            println!(
                "| model | MASE | vs seasonal naive | sMAPE % | {:.0}% coverage |{}",
                coverage * 100.0,
                if on_events {
                    " MASE on event days |"
                } else {
                    ""
                }
            );
            println!(
                "|---|---:|---:|---:|---:|{}",
                if on_events { "---:|" } else { "" }
            );
            let best_snaive = report
                .scores
                .iter()
                .filter(|s| s.model.starts_with("seasonal naive"))
                .map(|s| s.mase)
                .fold(f64::INFINITY, f64::min);
            for s in &report.scores {
                println!(
                    "| {} | {:.3} | {:+.1}% | {:.1} | {} |{}",
                    s.model,
                    s.mase,
                    (s.mase / best_snaive - 1.0) * 100.0,
                    s.smape,
                    s.coverage
                        .map_or("—".into(), |c| format!("{:.1}%", c * 100.0)),
                    match (on_events, s.mase_on_events) {
                        (false, _) => String::new(),
                        (true, Some(m)) => format!(" {m:.3} |"),
                        (true, None) => " — |".into(),
                    }
                );
            }
            let m = &report.shadowmesh;
            println!(
                "Shadowmesh fitted: {:?} seasons, transform {:?}, level {}, seasons {:?}, ar {}",
                m.combine,
                m.transform,
                m.level_rate,
                m.seasons.iter().map(|s| s.rate).collect::<Vec<_>>(),
                m.ar
            );
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
                println!("written to {}", path.display());
            }
        }
        Command::Bench {
            series,
            ticks,
            horizon,
        } => bench(series, ticks, horizon)?,
    }
    Ok(())
}

/// Deterministic synthetic demand: daily and weekly cycles, per-series scale, noise.
fn demand(series: usize, hour: i64) -> f64 {
    let day = (hour % 24) as f64 / 24.0 * std::f64::consts::TAU;
    let week = (hour % 168) as f64 / 168.0 * std::f64::consts::TAU;
    let scale = 10.0 + (series % 97) as f64;
    let mut x = (series as u64).wrapping_mul(6364136223846793005)
        ^ (hour as u64).wrapping_mul(1442695040888963407);
    x ^= x >> 33;
    let noise = (x % 1000) as f64 / 1000.0 - 0.5;
    (scale * (1.0 + 0.5 * day.sin() + 0.2 * week.cos() + 0.1 * noise)).max(0.0)
}

fn bench(n: usize, ticks: usize, horizon: usize) -> Result<()> {
    for (flag, v) in [("--series", n), ("--ticks", ticks), ("--horizon", horizon)] {
        if v == 0 {
            bail!("{flag} must be at least 1");
        }
    }
    let mut pta = Analyzer::new(AnalyzerConfig::for_step(3600, horizon))?;
    let names: Vec<String> = (0..n).map(|i| format!("svc-{i:05}")).collect();
    for name in &names {
        pta.set_capacity(name, 200.0)?;
    }
    // Two weeks of history first, so every season is learned.
    let warm = 24 * 14;
    for hour in 0..warm {
        for (i, name) in names.iter().enumerate() {
            pta.observe(name, hour * 3600, demand(i, hour))?;
        }
    }
    let mut times = Vec::with_capacity(ticks);
    let mut listed = 0;
    for tick in 0..ticks as i64 {
        let hour = warm + tick;
        let started = Instant::now();
        for (i, name) in names.iter().enumerate() {
            pta.observe(name, hour * 3600, demand(i, hour))?;
        }
        listed = pta.overload_risks().len();
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    let model_bytes = {
        let m = shadowmesh_predictor::model::SeasonalModel::new(&pta.config().model);
        m.memory_bytes()
    };
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    println!(
        "| series | tick = update all + overload list (horizon {horizon}) | mean ms | p99 ms | µs/series | model bytes/series | process RSS KiB/series |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|");
    println!(
        "| {n} | one core, {ticks} ticks, {listed} listed | {mean:.1} | {p99:.1} | {:.2} | {model_bytes} | {:.2} |",
        mean * 1e3 / n as f64,
        rss / n as f64
    );
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("predictor.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&serde_json::json!({
            "series": n, "ticks": ticks, "horizon": horizon,
            "tick_ms_mean": mean, "tick_ms_p99": p99,
            "us_per_series": mean * 1e3 / n as f64,
            "model_bytes_per_series": model_bytes,
            "process_rss_kib_per_series": rss / n as f64,
        }))?,
    )?;
    println!("written to {}", path.display());
    Ok(())
}
