//! What the policy sees each step: every service's load now, and the surges forecast for
//! it. Both are plain numbers — the control plane fills them from the predictor's overload
//! list and its telemetry; the benchmark's oracle fills them from the true future.

use serde::{Deserialize, Serialize};
use statrs::distribution::{Continuous, ContinuousCDF, Normal};

/// One service's load now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceLoad {
    /// Service name.
    pub service: String,
    /// Requests per second its primary serves before it is overloaded.
    pub primary_capacity: f64,
    /// Requests per second it receives now.
    pub current_demand: f64,
}

/// A surge forecast for one service: an entry of the overload list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SurgeForecast {
    /// Service name.
    pub service: String,
    /// When demand is expected to exceed the primary's capacity (Unix seconds).
    pub onset: f64,
    /// When it is expected to fall back below it; `None` = beyond the horizon.
    pub end: Option<f64>,
    /// Median demand at the peak (req/s).
    pub peak_median: f64,
    /// Demand at the peak at the provisioning quantile (req/s): what to cover.
    pub peak_quantile: f64,
    /// That quantile, e.g. 0.9.
    pub quantile: f64,
    /// Probability that demand exceeds the primary's capacity at all.
    pub probability: f64,
    /// Why (`seasonal`, `event: sale`, `anomaly`, `oracle`…), for the decision log.
    pub reason: String,
    /// The forecast follows a change nobody forecast (an anomaly the model re-levelled
    /// on): its extrapolation is not trusted for sizing — the policy acts on current load
    /// for it, from the reactive trigger.
    #[serde(default)]
    pub anomaly: bool,
}

impl SurgeForecast {
    /// Expected demand above `capacity` at the peak, `E[(D − capacity)⁺]`, for demand `D`
    /// normal with this median and the spread implied by the quantile. It is the
    /// probability of overload times the excess expected when overloaded.
    pub fn expected_excess(&self, capacity: f64) -> f64 {
        let z = Normal::standard().inverse_cdf(self.quantile.clamp(0.5 + 1e-6, 1.0 - 1e-9));
        let sd = ((self.peak_quantile - self.peak_median) / z).max(1e-9);
        let k = (capacity - self.peak_median) / sd;
        let n = Normal::standard();
        (sd * n.pdf(k) - (capacity - self.peak_median) * (1.0 - n.cdf(k))).max(0.0)
    }
}

/// Everything one policy step sees.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepInput {
    /// Now (Unix seconds).
    pub now: f64,
    /// Every managed service's load.
    pub services: Vec<ServiceLoad>,
    /// Surges forecast (ignored in reactive mode).
    pub forecasts: Vec<SurgeForecast>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn surge(median: f64, q90: f64) -> SurgeForecast {
        SurgeForecast {
            service: "s".into(),
            onset: 0.0,
            end: None,
            peak_median: median,
            peak_quantile: q90,
            quantile: 0.9,
            probability: 0.0,
            reason: String::new(),
            anomaly: false,
        }
    }

    #[test]
    fn expected_excess_is_the_normal_partial_expectation() {
        // Median exactly at capacity: E[(D-C)+] = sd·φ(0) = sd/√(2π).
        let f = surge(100.0, 100.0 + 1.2815515655446004 * 10.0);
        assert!(
            (f.expected_excess(100.0) - 10.0 / (2.0 * std::f64::consts::PI).sqrt()).abs() < 1e-6
        );
        // Far above capacity: the whole difference.
        assert!((f.expected_excess(10.0) - 90.0).abs() < 1e-6);
        // Far below: nothing.
        assert!(f.expected_excess(1_000.0) < 1e-9);
    }

    #[test]
    fn expected_excess_one_standard_deviation_either_side() {
        // D ~ N(100, 10²), given as its q90 (z = 1.2816) and, the same demand, its q95.
        // Capacity one sd above the median: 10·φ(1) − 10·(1 − Φ(1)) = 0.833155;
        // one sd below: 10·φ(1) + 10·Φ(1) = 10.833155 (the 10 below plus the tail above).
        let q90 = surge(100.0, 100.0 + 1.2815515655446004 * 10.0);
        let mut q95 = surge(100.0, 100.0 + 1.6448536269514722 * 10.0);
        q95.quantile = 0.95;
        for f in [q90, q95] {
            assert!((f.expected_excess(110.0) - 0.833155).abs() < 1e-5, "{f:?}");
            assert!((f.expected_excess(90.0) - 10.833155).abs() < 1e-5, "{f:?}");
        }
    }

    #[test]
    fn a_forecast_without_spread_is_certain() {
        // The quantile equals the median: demand is the median, the excess what is above.
        let f = surge(150.0, 150.0);
        assert!((f.expected_excess(100.0) - 50.0).abs() < 1e-6);
        assert!(f.expected_excess(200.0) < 1e-9);
    }

    #[test]
    fn a_quantile_of_one_still_carries_its_spread() {
        // q = 1 is read as 1 − 1e-9 (z ≈ 6.0), not as infinity (which would leave no spread).
        let mut f = surge(100.0, 130.0);
        f.quantile = 1.0;
        let z = 5.997807019601636;
        let sd = 30.0 / z;
        let want = sd / (2.0 * std::f64::consts::PI).sqrt();
        assert!(
            (f.expected_excess(100.0) - want).abs() < 1e-3,
            "{}",
            f.expected_excess(100.0)
        );
    }
}
