//! # shadowmesh-predictor — the Predictive Traffic Analyzer (PTA)
//!
//! Learns each service's and each link's demand online — daily and weekly seasonality,
//! scheduled events, live anomalies — and turns it into what the Shadow Node Provisioner
//! acts on: a prioritized list of series expected to exceed their capacity within the
//! horizon, with the predicted peak, the expected increase and its uncertainty, the
//! probability of overload, the onset time and the reason ([`analyzer::OverloadRisk`]).
//!
//! Modules follow the data flow:
//!
//! * [`demand`] — ATRE telemetry reports → per-step demand per service and per link;
//! * [`analyzer`] — all series, capacities, the events calendar, the overload list;
//! * [`model`] — the per-series model (multi-seasonal, AR-corrected, calibrated intervals),
//!   with [`anomaly`] (CUSUM on its innovations) and [`events`] (declared and learned
//!   uplifts) beside it;
//! * [`error`] — the one error shape of every input: [`error::FieldError`];
//! * with the `cli` feature (on by default; the control plane turns it off):
//!   `baselines`, `backtest`, `data`, `peers` — the offline evaluation behind
//!   `predictor backtest` (with other libraries' models as peers).
//!
//! ```
//! use shadowmesh_predictor::analyzer::{Analyzer, AnalyzerConfig};
//! let mut pta = Analyzer::new(AnalyzerConfig::for_step(3600, 24))?;
//! pta.set_capacity("checkout", 120.0)?;
//! for hour in 0..24 * 14 {
//!     let daily = 60.0 + 50.0 * ((hour % 24) as f64 / 24.0 * std::f64::consts::TAU).sin();
//!     pta.observe("checkout", hour * 3600, daily)?;
//! }
//! let risks = pta.overload_risks();
//! assert!(risks.iter().all(|r| r.series == "checkout"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

pub mod analyzer;
pub mod anomaly;
pub mod demand;
pub mod error;
pub mod events;
pub mod model;

#[cfg(feature = "cli")]
pub mod backtest;
#[cfg(feature = "cli")]
pub mod baselines;
#[cfg(feature = "cli")]
pub mod data;
#[cfg(feature = "cli")]
pub mod peers;
