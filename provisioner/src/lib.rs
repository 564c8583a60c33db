//! # shadowmesh-provisioner — the Shadow Node Provisioner's policy
//!
//! Turns the overload forecast into timed actions on a pool of warm spares: start a spare
//! so it is warm *before* the predicted onset (its own warm-up plus a margin), pick the
//! cheapest set of spares that covers the peak at the provisioning quantile minus the
//! primary's capacity, act only when the expected loss avoided outweighs what the spares
//! cost, serve the best value first when the pool is short, and release after the surge
//! with hysteresis, a minimum hold and make-before-break (readiness off, then the
//! endpoints). Reactive and oracle modes run through the same code, for comparison.
//!
//! Pure: no I/O, no clock, deterministic — the control plane's loop passes the time and the
//! inputs in, executes the [`Action`]s, and reports what it observed back.
//!
//! Modules follow the data flow: [`inputs`] (load and forecast) → [`policy`] (the
//! [`Provisioner`], using [`cover`] and the [`pool`]) → [`decision`] (actions, reasons,
//! the decision log).
//!
//! ```
//! use shadowmesh_provisioner::{Action, Provisioner, Settings, ShadowPool, SpareSpec};
//! use shadowmesh_provisioner::inputs::{ServiceLoad, StepInput, SurgeForecast};
//! let spare = |id: &str| SpareSpec {
//!     id: id.into(), address: "10.0.0.9:8080".into(), capacity: 200.0, max_in_flight: 16,
//!     warmup_secs: 60.0, cost_per_sec: 0.001, class: "small".into(),
//! };
//! let pool = ShadowPool::new(vec![spare("a"), spare("b")])?;
//! let mut snp = Provisioner::new(Settings { lead_margin_secs: 30.0, ..Settings::default() }, pool)?;
//! let input = |now: f64| StepInput {
//!     now,
//!     services: vec![ServiceLoad { service: "checkout".into(), primary_capacity: 300.0, current_demand: 150.0 }],
//!     forecasts: vec![SurgeForecast {
//!         service: "checkout".into(), onset: 1_000.0, end: Some(2_000.0), peak_median: 420.0,
//!         peak_quantile: 450.0, quantile: 0.9, probability: 0.95, reason: "seasonal".into(),
//!         anomaly: false,
//!     }],
//! };
//! // Too early: the spare is planned, not started.
//! assert!(snp.step(&input(800.0)).is_empty());
//! // Onset 1000 − margin 30 − warm-up 60 = 910: start now.
//! let decisions = snp.step(&input(910.0));
//! assert!(matches!(&decisions[0].action, Action::StartWarmup { service, .. } if service == "checkout"));
//! # Ok::<(), shadowmesh_provisioner::FieldError>(())
//! ```

pub mod cover;
pub mod decision;
pub mod error;
pub mod inputs;
pub mod policy;
pub mod pool;

pub use decision::{Action, Decision, LogEntry, LogEvent, ReasonKind, Verdict};
pub use error::FieldError;
pub use policy::{Mode, Provisioner, ServicePlan, Settings};
pub use pool::{ShadowPool, Spare, SpareSpec, SpareState};
