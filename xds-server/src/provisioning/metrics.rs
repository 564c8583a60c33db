//! Prometheus metrics of the provisioner (`shadowmesh_snp_…`).
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `shadowmesh_snp_spares` | gauge | `state` | spares by state (cold, warming, warm, assigned, draining) |
//! | `shadowmesh_snp_shadow_seconds_total` | counter | | seconds spares ran, summed (the cost) |
//! | `shadowmesh_snp_activation_lead_seconds` | histogram | | actual onset of a surge minus when its spare was assigned (negative: late) |
//! | `shadowmesh_snp_warmup_seconds` | histogram | | measured warm-up (start → probe says warm) |
//! | `shadowmesh_snp_decisions_total` | counter | `action`, `reason` | decisions |
//! | `shadowmesh_snp_provider_failures_total` | counter | `stage` (`start`, `warmup`, `stop`) | failures, each retried with backoff |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Labels of `spares`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// Spare state.
    pub state: &'static str,
}

/// Labels of `decisions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `start_warmup`, `assign`, `drain` or `release`.
    pub action: &'static str,
    /// The reason kind.
    pub reason: &'static str,
}

/// Labels of `provider_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// `start`, `warmup` or `stop`.
    pub stage: &'static str,
}

/// The provisioner's metrics.
pub struct SnpMetrics {
    /// Spares by state.
    pub spares: Family<StateLabels, Gauge>,
    /// Spare-seconds run.
    pub shadow_seconds: Counter<f64, AtomicU64>,
    /// Onset minus assignment time, per activation.
    pub activation_lead: Histogram,
    /// Measured warm-ups.
    pub warmup: Histogram,
    /// Decisions by action and reason.
    pub decisions: Family<DecisionLabels, Counter>,
    /// Provider and probe failures.
    pub failures: Family<StageLabels, Counter>,
}

impl SnpMetrics {
    /// Creates the metrics and registers them in `registry` under `shadowmesh_snp_`.
    pub fn register(registry: &mut Registry) -> SnpMetrics {
        let r = registry.sub_registry_with_prefix("shadowmesh_snp");
        let m = SnpMetrics {
            spares: Family::default(),
            shadow_seconds: Counter::default(),
            activation_lead: Histogram::new([
                -120.0, -60.0, -30.0, -10.0, -5.0, -1.0, 0.0, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0,
                300.0, 600.0,
            ]),
            warmup: Histogram::new([0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]),
            decisions: Family::default(),
            failures: Family::default(),
        };
        r.register("spares", "Spares by state", m.spares.clone());
        r.register(
            "shadow_seconds",
            "Seconds spares ran (warming, warm, assigned or draining), summed",
            m.shadow_seconds.clone(),
        );
        r.register(
            "activation_lead_seconds",
            "Actual onset of a surge minus when its spare was assigned (negative: late)",
            m.activation_lead.clone(),
        );
        r.register(
            "warmup_seconds",
            "Measured warm-up: start until the probe found the spare warm",
            m.warmup.clone(),
        );
        r.register("decisions", "Provisioning decisions", m.decisions.clone());
        r.register(
            "provider_failures",
            "Spare start, warm-up and stop failures (each retried with backoff)",
            m.failures.clone(),
        );
        m
    }
}
