//! The warm-up probe: a spare is warm when it *measurably* serves like a warm instance —
//! `successes` probe requests in a row answered `2xx` within `latency_slo_ms` — not when
//! its configured warm-up time has passed. Until then filters may not use it.

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Probe settings (`[provisioner.probe]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    /// Path requested on the spare.
    pub path: String,
    /// Pause between probes.
    pub interval_ms: u64,
    /// A probe slower than this fails.
    pub timeout_ms: u64,
    /// A probe answered slower than this counts as cold.
    pub latency_slo_ms: f64,
    /// Consecutive good probes that make a spare warm.
    pub successes: u32,
    /// Give up after `warmup_secs × give_up_factor + give_up_extra_secs`.
    pub give_up_factor: f64,
    /// See `give_up_factor`.
    pub give_up_extra_secs: f64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            path: "/".into(),
            interval_ms: 100,
            timeout_ms: 1_000,
            latency_slo_ms: 100.0,
            successes: 3,
            give_up_factor: 3.0,
            give_up_extra_secs: 10.0,
        }
    }
}

impl ProbeConfig {
    /// Checks the fields; the error names the field relative to the section.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !self.path.starts_with('/') {
            return Err(("path".into(), "must start with '/'".into()));
        }
        for (field, v) in [
            ("interval_ms", self.interval_ms),
            ("timeout_ms", self.timeout_ms),
        ] {
            if !(1..=3_600_000).contains(&v) {
                return Err((field.into(), format!("{v} is outside 1..=3600000")));
            }
        }
        if !(self.latency_slo_ms.is_finite() && self.latency_slo_ms > 0.0) {
            return Err(("latency_slo_ms".into(), "must be a positive number".into()));
        }
        if self.successes == 0 {
            return Err(("successes".into(), "must be at least 1".into()));
        }
        if !(self.give_up_factor.is_finite() && (1.0..=1_000.0).contains(&self.give_up_factor)) {
            return Err(("give_up_factor".into(), "must be 1 to 1000".into()));
        }
        if !(self.give_up_extra_secs.is_finite()
            && (0.0..=86_400.0).contains(&self.give_up_extra_secs))
        {
            return Err(("give_up_extra_secs".into(), "must be 0 to 86400".into()));
        }
        Ok(())
    }
}

/// Probes `addr` until it is warm; returns the measured warm-up time, or why it never
/// became warm within the limit for a spare whose warm-up is expected to take
/// `expected_warmup_secs`.
pub async fn await_warm(
    addr: SocketAddr,
    expected_warmup_secs: f64,
    config: &ProbeConfig,
) -> Result<Duration, String> {
    let client: Client<HttpConnector, Empty<bytes::Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let started = Instant::now();
    let limit = Duration::from_secs_f64(
        expected_warmup_secs * config.give_up_factor + config.give_up_extra_secs,
    );
    let uri: hyper::Uri = format!("http://{addr}{}", config.path)
        .parse()
        .map_err(|e| format!("probe address: {e}"))?;
    let (mut good, mut last) = (0, String::from("no probe answered yet"));
    loop {
        let sent = Instant::now();
        let answer = tokio::time::timeout(Duration::from_millis(config.timeout_ms), async {
            let resp = client.get(uri.clone()).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            resp.into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(status)
        })
        .await;
        let took = sent.elapsed();
        match answer {
            Ok(Ok(status))
                if status.is_success() && took.as_secs_f64() * 1e3 <= config.latency_slo_ms =>
            {
                good += 1;
                if good >= config.successes {
                    return Ok(started.elapsed());
                }
            }
            Ok(Ok(status)) => {
                good = 0;
                last = format!("{status} in {:.0} ms", took.as_secs_f64() * 1e3);
            }
            Ok(Err(e)) => {
                good = 0;
                last = e;
            }
            Err(_) => {
                good = 0;
                last = format!("no answer within {} ms", config.timeout_ms);
            }
        }
        if started.elapsed() > limit {
            return Err(format!(
                "not warm after {:.1} s (last probe: {last})",
                started.elapsed().as_secs_f64()
            ));
        }
        tokio::time::sleep(Duration::from_millis(config.interval_ms)).await;
    }
}
