//! The controller-facing API: which services exist, their primary endpoints and the
//! shadow nodes currently serving beside them. Every change is turned into one
//! [`Snapshot`] and published to the [`SnapshotCache`], which pushes it to every Envoy.
//!
//! Shadows here are **warm-spare nodes that serve real traffic** redirected to them by the
//! ATRE filter — not Envoy's request mirroring (`request_mirror_policies`), which Envoy's
//! docs also call "shadowing".
//!
//! Each service `S` becomes three clusters, matching `envoy-configs/`:
//!
//! | cluster | kind | endpoints |
//! |---|---|---|
//! | `S_primary` | EDS | the primary instances |
//! | `S_shadow_pool` | EDS, outlier detection | the shadow nodes (may be empty) |
//! | `S_shadow` | aggregate `[S_shadow_pool, S_primary]` | what redirected requests are routed to |
//!
//! Setting or clearing shadows changes endpoints only, so Envoy never re-warms a cluster
//! for it; removing a service removes its clusters.
//!
//! ```
//! use shadowmesh_xds::cache::SnapshotCache;
//! use shadowmesh_xds::controller::Controller;
//! use shadowmesh_xds::resources::EndpointSpec;
//! let controller = Controller::new(SnapshotCache::default());
//! controller.set_primary("checkout", &[EndpointSpec::healthy("10.0.0.1:8080".parse().unwrap())])?;
//! controller.set_shadows("checkout", &[EndpointSpec::healthy("10.0.0.9:8080".parse().unwrap())])?;
//! assert_eq!(controller.services()["checkout"].shadows.len(), 1);
//! # Ok::<(), shadowmesh_xds::controller::SpecError>(())
//! ```

use crate::cache::{DEFAULT_GROUP, Snapshot, SnapshotCache};
use crate::metrics::XdsMetrics;
use crate::resources::{
    EndpointSpec, MAX_WEIGHT, aggregate_cluster, eds_cluster, load_assignment, shadow_pool_cluster,
};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

/// Longest service name accepted (cluster names derive from it).
pub const MAX_SERVICE_NAME: usize = 100;

/// A rejected controller input: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("field `{field}`: {message}")]
pub struct SpecError {
    /// Path of the offending field, e.g. `endpoints[2].weight`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
    /// The input named a service that does not exist (the admin API answers `404`).
    #[serde(skip)]
    pub unknown_service: bool,
}

impl SpecError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError {
            field: field.into(),
            message: message.into(),
            unknown_service: false,
        }
    }
}

/// The cluster names of one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterNames {
    /// EDS cluster of the primary instances.
    pub primary: String,
    /// EDS cluster of the shadow nodes.
    pub shadow_pool: String,
    /// Aggregate `[shadow_pool, primary]`: where redirected requests go.
    pub shadow: String,
}

impl ClusterNames {
    /// The names for `service`.
    pub fn of(service: &str) -> ClusterNames {
        ClusterNames {
            primary: format!("{service}_primary"),
            shadow_pool: format!("{service}_shadow_pool"),
            shadow: format!("{service}_shadow"),
        }
    }
}

/// What the controller holds for one service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceEndpoints {
    /// Primary instances.
    pub primary: Vec<EndpointSpec>,
    /// Shadow nodes currently active.
    pub shadows: Vec<EndpointSpec>,
}

/// Checks a service name: 1–100 characters of `[A-Za-z0-9_.-]`.
pub fn validate_service(name: &str) -> Result<(), SpecError> {
    if name.is_empty() || name.len() > MAX_SERVICE_NAME {
        return Err(SpecError::new(
            "service",
            format!("must be 1 to {MAX_SERVICE_NAME} characters long"),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(SpecError::new(
            "service",
            format!("{name:?} contains {c:?}; only letters, digits, '_', '.' and '-' are allowed"),
        ));
    }
    Ok(())
}

/// Checks a list of endpoints; errors name the field as `{field}[i].…`.
pub fn validate_endpoints(field: &str, endpoints: &[EndpointSpec]) -> Result<(), SpecError> {
    let mut seen = HashSet::new();
    for (i, e) in endpoints.iter().enumerate() {
        if e.addr.port() == 0 {
            return Err(SpecError::new(
                format!("{field}[{i}].address"),
                "port 0 is not a destination",
            ));
        }
        if e.addr.ip().is_unspecified() {
            return Err(SpecError::new(
                format!("{field}[{i}].address"),
                format!("{} is not a destination", e.addr.ip()),
            ));
        }
        if !(1..=MAX_WEIGHT).contains(&e.weight) {
            return Err(SpecError::new(
                format!("{field}[{i}].weight"),
                format!("{} is outside 1..={MAX_WEIGHT}", e.weight),
            ));
        }
        if !seen.insert(e.addr) {
            return Err(SpecError::new(
                format!("{field}[{i}].address"),
                format!("{} is listed twice", e.addr),
            ));
        }
    }
    Ok(())
}

/// The in-process controller API. Cheap to clone (shared).
#[derive(Clone)]
pub struct Controller {
    cache: SnapshotCache,
    metrics: Arc<XdsMetrics>,
    group: String,
    services: Arc<Mutex<BTreeMap<String, ServiceEndpoints>>>,
}

impl Controller {
    /// A controller publishing to `cache` for every proxy ([`DEFAULT_GROUP`]).
    pub fn new(cache: SnapshotCache) -> Controller {
        Controller::with_metrics(cache, Arc::default())
    }

    /// Like [`Controller::new`], counting published changes in `metrics`.
    pub fn with_metrics(cache: SnapshotCache, metrics: Arc<XdsMetrics>) -> Controller {
        Controller {
            cache,
            metrics,
            group: DEFAULT_GROUP.to_string(),
            services: Arc::default(),
        }
    }

    /// Publishes to proxy group `group` instead of every proxy.
    pub fn for_group(mut self, group: impl Into<String>) -> Controller {
        self.group = group.into();
        self
    }

    /// Applies `change` to the services and publishes the result, atomically.
    fn update<T>(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, ServiceEndpoints>) -> Result<T, SpecError>,
    ) -> Result<T, SpecError> {
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let out = change(&mut services)?;
        // Built and set under the lock so concurrent changes publish in order.
        self.cache
            .set_snapshot(&self.group, build_snapshot(&services));
        self.metrics.snapshot_updates.inc();
        Ok(out)
    }

    /// Creates `service` or replaces its primary endpoints (its shadows are kept).
    pub fn set_primary(&self, service: &str, endpoints: &[EndpointSpec]) -> Result<(), SpecError> {
        validate_service(service)?;
        validate_endpoints("primary", endpoints)?;
        self.update(|s| {
            s.entry(service.to_string()).or_default().primary = endpoints.to_vec();
            Ok(())
        })
    }

    /// Sets the shadow nodes of an existing `service` (an empty list keeps its clusters and
    /// sends nothing to the shadow pool).
    pub fn set_shadows(&self, service: &str, endpoints: &[EndpointSpec]) -> Result<(), SpecError> {
        validate_service(service)?;
        validate_endpoints("shadows", endpoints)?;
        self.update(|s| {
            let entry = s.get_mut(service).ok_or_else(|| unknown(service))?;
            entry.shadows = endpoints.to_vec();
            Ok(())
        })
    }

    /// Releases all shadow nodes of `service`.
    pub fn clear_shadows(&self, service: &str) -> Result<(), SpecError> {
        self.set_shadows(service, &[])
    }

    /// Removes `service` and its clusters.
    pub fn remove_service(&self, service: &str) -> Result<(), SpecError> {
        self.update(|s| s.remove(service).map(drop).ok_or_else(|| unknown(service)))
    }

    /// Current services.
    pub fn services(&self) -> BTreeMap<String, ServiceEndpoints> {
        self.services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn unknown(service: &str) -> SpecError {
    SpecError {
        unknown_service: true,
        ..SpecError::new(
            "service",
            format!("no service {service:?}; create it with its primary endpoints first"),
        )
    }
}

/// The snapshot of these services.
pub fn build_snapshot(services: &BTreeMap<String, ServiceEndpoints>) -> Snapshot {
    let mut clusters = Vec::with_capacity(services.len() * 3);
    let mut assignments = Vec::with_capacity(services.len() * 2);
    for (name, s) in services {
        let names = ClusterNames::of(name);
        clusters.push(eds_cluster(&names.primary));
        clusters.push(shadow_pool_cluster(&names.shadow_pool));
        clusters.push(aggregate_cluster(
            &names.shadow,
            &[&names.shadow_pool, &names.primary],
        ));
        assignments.push(load_assignment(&names.primary, &s.primary));
        assignments.push(load_assignment(&names.shadow_pool, &s.shadows));
    }
    Snapshot::new(&clusters, &assignments)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{CLUSTER_TYPE, ENDPOINT_TYPE};

    fn ep(s: &str) -> EndpointSpec {
        EndpointSpec::healthy(s.parse().unwrap())
    }

    #[test]
    fn a_service_is_three_clusters_and_shadows_change_endpoints_only() {
        let cache = SnapshotCache::default();
        let c = Controller::new(cache.clone());
        c.set_primary("checkout", &[ep("10.0.0.1:80")]).unwrap();
        let before = cache.snapshot_for("any").unwrap();
        let clusters: Vec<_> = before
            .get(CLUSTER_TYPE)
            .unwrap()
            .items
            .keys()
            .cloned()
            .collect();
        assert_eq!(
            clusters,
            [
                "checkout_primary",
                "checkout_shadow",
                "checkout_shadow_pool"
            ]
        );
        c.set_shadows("checkout", &[ep("10.0.0.9:80")]).unwrap();
        let after = cache.snapshot_for("any").unwrap();
        assert_eq!(
            before.get(CLUSTER_TYPE).unwrap().version,
            after.get(CLUSTER_TYPE).unwrap().version
        );
        let eds_before = before.get(ENDPOINT_TYPE).unwrap();
        let eds_after = after.get(ENDPOINT_TYPE).unwrap();
        assert_ne!(eds_before.version, eds_after.version);
        assert_eq!(
            eds_before.items["checkout_primary"].version,
            eds_after.items["checkout_primary"].version,
            "the primary's assignment is untouched"
        );
        assert_ne!(
            eds_before.items["checkout_shadow_pool"].version,
            eds_after.items["checkout_shadow_pool"].version
        );
    }

    #[test]
    fn bad_input_names_the_field_and_changes_nothing() {
        let cache = SnapshotCache::default();
        let c = Controller::new(cache.clone());
        c.set_primary("checkout", &[ep("10.0.0.1:80")]).unwrap();
        let generation = cache.generation();
        let heavy = EndpointSpec {
            weight: 0,
            ..ep("10.0.0.2:80")
        };
        let e = c
            .set_shadows("checkout", &[ep("10.0.0.3:80"), heavy])
            .unwrap_err();
        assert_eq!(e.field, "shadows[1].weight");
        let e = c
            .set_primary("checkout", &[ep("10.0.0.1:80"), ep("10.0.0.1:80")])
            .unwrap_err();
        assert_eq!(e.field, "primary[1].address");
        assert_eq!(c.set_primary("bad/name", &[]).unwrap_err().field, "service");
        assert_eq!(c.set_shadows("nope", &[]).unwrap_err().field, "service");
        assert_eq!(
            c.set_primary("x", &[ep("0.0.0.0:80")]).unwrap_err().field,
            "primary[0].address"
        );
        assert_eq!(cache.generation(), generation, "nothing published");
        assert_eq!(c.services()["checkout"].primary, [ep("10.0.0.1:80")]);
    }
}
