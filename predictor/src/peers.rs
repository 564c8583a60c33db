//! Forecasting peers from other libraries, run on the backtest's own origins: Python
//! `statsmodels` (Holt-Winters and MSTL, refitted at every origin on a bounded window) via
//! `peers/statsmodels_peer.py`, in the project's `.venv`, installed on demand by
//! `scripts/peers`.

use crate::backtest::PeerForecasts;
use crate::error::FieldError;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The peers `--peers` knows.
pub const KNOWN: &[&str] = &["statsmodels"];

/// What the peers forecast from.
#[derive(Debug, Clone)]
pub struct PeerRequest<'a> {
    /// The series (missing steps `None`).
    pub values: &'a [Option<f64>],
    /// Origins ([`crate::backtest::origins`]).
    pub origins: &'a [usize],
    /// Steps ahead.
    pub horizon: usize,
    /// Season lengths in steps (the first is Holt-Winters' season).
    pub seasons: &'a [usize],
    /// Values each refit sees, at most (the last ones up to the origin).
    pub window: usize,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn failed(message: impl Into<String>) -> FieldError {
    FieldError::new("peers", message)
}

/// Runs the `statsmodels` peers: installs them into `.venv` if missing (`scripts/peers`),
/// then refits each at every origin. Progress goes to stderr. The answer is kept in
/// `target/peers/cache-<hash of the request>.json`: the peers take minutes, and their
/// forecasts do not change while the Shadowmesh model is tuned against them.
pub fn statsmodels(request: &PeerRequest<'_>) -> Result<Vec<PeerForecasts>, FieldError> {
    let root = root();
    let script = root.join("predictor/peers/statsmodels_peer.py");
    let mut body = serde_json::json!({
        "values": request.values,
        "origins": request.origins,
        "horizon": request.horizon,
        "seasons": request.seasons,
        "window": request.window,
    });
    // The script is part of the key: a changed peer is a different peer.
    let key =
        fnv1a(body.to_string().as_bytes()) ^ fnv1a(&std::fs::read(&script).unwrap_or_default());
    let cache = root.join(format!("target/peers/cache-{key:016x}.json"));
    if let Ok(bytes) = std::fs::read(&cache)
        && let Ok(models) = serde_json::from_slice::<Vec<PeerForecasts>>(&bytes)
        && check(&models, request).is_ok()
    {
        eprintln!("[peers] statsmodels: cached answer {}", cache.display());
        return Ok(models);
    }
    // How many processes fit is not part of the question.
    body["workers"] = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .into();
    let models = run_statsmodels(&root, &script, &body.to_string())?;
    check(&models, request).map_err(failed)?;
    if let Some(dir) = cache.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(bytes) = serde_json::to_vec(&models) {
        let _ = std::fs::write(&cache, bytes);
    }
    Ok(models)
}

/// An answer is used (and cached) only if it has a forecast of every horizon at every
/// origin, each a finite number within the range a series may hold.
fn check(models: &[PeerForecasts], request: &PeerRequest<'_>) -> Result<(), String> {
    if models.is_empty() {
        return Err("the statsmodels peer answered no model".into());
    }
    models
        .iter()
        .try_for_each(|m| m.check(request.origins, request.horizon))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn run_statsmodels(
    root: &std::path::Path,
    script: &std::path::Path,
    body: &str,
) -> Result<Vec<PeerForecasts>, FieldError> {
    let status = Command::new(root.join("scripts/peers"))
        .status()
        .map_err(|e| failed(format!("scripts/peers: {e}")))?;
    if !status.success() {
        return Err(failed(format!(
            "scripts/peers could not install statsmodels into .venv ({status})"
        )));
    }
    let mut child = Command::new(root.join(".venv/bin/python"))
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| failed(format!(".venv/bin/python: {e}")))?;
    // The child reads all of stdin before it writes: write, close, then read.
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(body.as_bytes())
            .map_err(|e| failed(format!("writing to the statsmodels peer: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| failed(format!("the statsmodels peer: {e}")))?;
    if !out.status.success() {
        return Err(failed(format!(
            "the statsmodels peer failed ({}); its error is above",
            out.status
        )));
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        models: Vec<PeerForecasts>,
        errors: u64,
    }
    let answer: Answer = serde_json::from_slice(&out.stdout)
        .map_err(|e| failed(format!("the statsmodels peer's answer: {e}")))?;
    if answer.errors > 0 {
        eprintln!(
            "[peers] {} statsmodels fits failed and were replaced by the seasonal naive forecast",
            answer.errors
        );
    }
    Ok(answer.models)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_whole_finite_answer_is_used_or_cached() {
        let values = vec![Some(1.0); 10];
        let request = PeerRequest {
            values: &values,
            origins: &[3, 5],
            horizon: 2,
            seasons: &[2],
            window: 4,
        };
        let answer = |forecasts: Vec<Vec<f64>>| {
            vec![PeerForecasts {
                model: "p".into(),
                forecasts,
            }]
        };
        assert!(check(&answer(vec![vec![1.0, 2.0]; 2]), &request).is_ok());
        assert!(check(&[], &request).is_err(), "no model");
        assert!(
            check(&answer(vec![vec![1.0, 2.0]]), &request).is_err(),
            "an origin short"
        );
        assert!(
            check(&answer(vec![vec![1.0]; 2]), &request).is_err(),
            "a step short"
        );
        for bad in [f64::NAN, f64::INFINITY, 1e308] {
            let e = check(&answer(vec![vec![1.0, bad]; 2]), &request).unwrap_err();
            assert!(e.contains("origin 3"), "{e}");
        }
    }
}
