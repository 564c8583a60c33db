//! The shadow registry: the one owner of shadow state in the control plane.
//!
//! Per service it holds the primary endpoints and the [`ShadowSet`] — the shadow
//! endpoints Envoy routes to (address, health, weight) *and* the readiness the ATRE
//! filters act on (warm, max in-flight, expiry). Both change together, under one
//! generation, through one API; every change produces the xDS [`Snapshot`] (pushed to
//! every Envoy by the [`SnapshotCache`]) and the readiness [`ShadowRecord`] (handed to the
//! filters in the answer to their telemetry) from the same state, so the two cannot
//! disagree. Operators reach it over HTTP (`/v1/services/{service}[/shadows]`), the Shadow
//! Node Provisioner through this Rust API.
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
//! for it; removing a service removes its clusters. A change to one service costs work
//! proportional to that service: the snapshot is updated in place of being rebuilt.
//!
//! ```
//! use shadowmesh_xds::registry::{ShadowRegistry, ShadowSet};
//! use shadowmesh_xds::xds::builders::EndpointSpec;
//! use shadowmesh_xds::xds::SnapshotCache;
//! let registry = ShadowRegistry::new(SnapshotCache::default());
//! registry.set_primary("checkout", &[EndpointSpec::healthy("10.0.0.1:8080".parse().unwrap())])?;
//! let spare = EndpointSpec::healthy("10.0.0.9:8080".parse().unwrap());
//! registry.set_shadows("checkout", &ShadowSet::warm(vec![spare], 32))?;
//! let record = &registry.readiness(0)[0];
//! assert!(record.warm);
//! assert_eq!(record.cluster, "checkout_shadow");
//! # Ok::<(), shadowmesh_xds::registry::RegistryError>(())
//! ```

use crate::store::StateStore;
use crate::xds::builders::{
    EndpointSpec, MAX_WEIGHT, aggregate_cluster, eds_cluster, load_assignment, shadow_pool_cluster,
};
use crate::xds::{DEFAULT_GROUP, Snapshot, SnapshotCache, XdsMetrics};
use serde::{Deserialize, Serialize};
use shadowmesh_wire::ShadowRecord;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Longest service name accepted (cluster names derive from it).
pub const MAX_SERVICE_NAME: usize = 100;
/// Largest `max_in_flight` a shadow set may declare.
pub const MAX_SHADOW_IN_FLIGHT: u32 = 1_000_000;
/// How long a readiness record stays valid in a filter after the answer that carried it,
/// unless its shadow set expires earlier. Every telemetry answer renews it, so it only
/// lapses when the control plane goes silent — and then filters stop redirecting to a
/// shadow nobody vouches for any more.
pub const DEFAULT_READINESS_TTL: Duration = Duration::from_secs(30);

/// What went wrong with a registry change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistryErrorKind {
    /// A field is invalid.
    Invalid,
    /// The change names a service that does not exist.
    UnknownService,
    /// The change could not be stored durably, so it was not made.
    Unavailable,
}

/// A refused registry change: which field, and why. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct RegistryError {
    /// Path of the offending field, e.g. `shadows.endpoints[2].weight`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
    /// Invalid input, or an unknown service.
    pub kind: RegistryErrorKind,
}

impl RegistryError {
    /// An invalid `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> RegistryError {
        RegistryError {
            field: field.into(),
            message: message.into(),
            kind: RegistryErrorKind::Invalid,
        }
    }

    fn unavailable(message: String) -> RegistryError {
        RegistryError {
            // The only thing that can be unavailable: the store under `state_dir`.
            field: "state_dir".into(),
            message,
            kind: RegistryErrorKind::Unavailable,
        }
    }

    fn unknown(service: &str) -> RegistryError {
        RegistryError {
            field: "service".into(),
            message: format!("no service {service:?}; create it with its primary endpoints first"),
            kind: RegistryErrorKind::UnknownService,
        }
    }

    /// The same error with its field nested under `parent` (`shadows` + `warm` →
    /// `shadows.warm`).
    pub fn within(self, parent: &str) -> RegistryError {
        RegistryError {
            field: format!("{parent}.{}", self.field),
            ..self
        }
    }

    /// The same error with `prefix` taken off its field.
    fn unnest(self, prefix: &str) -> RegistryError {
        RegistryError {
            field: self
                .field
                .strip_prefix(prefix)
                .map_or(self.field.clone(), str::to_string),
            ..self
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

/// A service's shadows: the endpoints Envoy routes redirected requests to, and the
/// readiness the filters act on. In JSON:
/// `{"endpoints": [E…], "warm": true, "max_in_flight": 32, "expires_at_ms": null}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowSet {
    /// Shadow nodes in the `S_shadow_pool` cluster (required: an empty list releases them
    /// all, which should be said, not implied).
    pub endpoints: Vec<EndpointSpec>,
    /// Whether filters may redirect to them now. Needs at least one healthy endpoint.
    /// Released make-before-break: first `warm: false` (filters stop sending), then the
    /// endpoints go once in-flight requests have drained.
    #[serde(default)]
    pub warm: bool,
    /// Concurrent requests the shadow nodes take together before they are at capacity.
    #[serde(default)]
    pub max_in_flight: u32,
    /// Unix-epoch millisecond after which filters treat the shadows as not ready.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
}

impl ShadowSet {
    /// No shadows.
    pub fn none() -> ShadowSet {
        ShadowSet::default()
    }

    /// These endpoints, warm, taking `max_in_flight` concurrent requests together.
    pub fn warm(endpoints: Vec<EndpointSpec>, max_in_flight: u32) -> ShadowSet {
        ShadowSet {
            endpoints,
            warm: true,
            max_in_flight,
            expires_at_ms: None,
        }
    }

    /// Checks the set; errors name the field relative to the set (`endpoints[1].weight`,
    /// `warm`, `max_in_flight`).
    pub fn validate(&self) -> Result<(), RegistryError> {
        validate_endpoints("endpoints", &self.endpoints)?;
        if self.max_in_flight > MAX_SHADOW_IN_FLIGHT {
            return Err(RegistryError::invalid(
                "max_in_flight",
                format!("{} exceeds {MAX_SHADOW_IN_FLIGHT}", self.max_in_flight),
            ));
        }
        if self.warm {
            if !self.endpoints.iter().any(|e| e.healthy) {
                return Err(RegistryError::invalid(
                    "warm",
                    "a warm shadow set needs at least one healthy endpoint",
                ));
            }
            if self.max_in_flight == 0 {
                return Err(RegistryError::invalid(
                    "max_in_flight",
                    "a warm shadow set must take at least one request",
                ));
            }
        }
        Ok(())
    }
}

/// What the registry holds for one service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    /// Primary instances.
    pub primary: Vec<EndpointSpec>,
    /// Its shadows and their readiness.
    pub shadows: ShadowSet,
    /// Generation of the last change to this service (see [`ShadowRegistry`]).
    pub generation: u64,
}

/// One service to create or replace in a batch ([`ShadowRegistry::apply`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec {
    /// Service name.
    pub name: String,
    /// Primary endpoints.
    pub primary: Vec<EndpointSpec>,
    /// Its shadows; `None` keeps the current ones (none for a new service).
    pub shadows: Option<ShadowSet>,
}

/// One change of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum ServiceChange {
    /// Create or replace a service.
    Set(ServiceSpec),
    /// Remove a service and its clusters.
    Remove(String),
}

/// Checks a service name: 1–100 characters of `[A-Za-z0-9_.-]`, starting with a letter
/// or digit (so never `.`, `..` or a path-like name).
pub fn validate_service(name: &str) -> Result<(), RegistryError> {
    if name.is_empty() || name.len() > MAX_SERVICE_NAME {
        return Err(RegistryError::invalid(
            "service",
            format!("must be 1 to {MAX_SERVICE_NAME} characters long"),
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(RegistryError::invalid(
            "service",
            format!("{name:?} must start with a letter or a digit"),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(RegistryError::invalid(
            "service",
            format!("{name:?} contains {c:?}; only letters, digits, '_', '.' and '-' are allowed"),
        ));
    }
    Ok(())
}

/// Most endpoints in one list (primary or shadows).
pub const MAX_ENDPOINTS: usize = 10_000;

/// Checks a list of endpoints; errors name the field as `{field}[i].…`. An endpoint is a
/// unicast host address (IPv4-mapped IPv6 counts as its IPv4 address) without an IPv6
/// scope, each listed once.
pub fn validate_endpoints(field: &str, endpoints: &[EndpointSpec]) -> Result<(), RegistryError> {
    if endpoints.len() > MAX_ENDPOINTS {
        return Err(RegistryError::invalid(
            field,
            format!("{} endpoints; at most {MAX_ENDPOINTS}", endpoints.len()),
        ));
    }
    let mut seen = HashSet::new();
    for (i, e) in endpoints.iter().enumerate() {
        let at = |f: &str| format!("{field}[{i}].{f}");
        if e.addr.port() == 0 {
            return Err(RegistryError::invalid(
                at("address"),
                "port 0 is not a destination",
            ));
        }
        let ip = e.addr.ip().to_canonical();
        let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
        if ip.is_unspecified() || ip.is_multicast() || broadcast {
            return Err(RegistryError::invalid(
                at("address"),
                format!("{} is not a host address", e.addr.ip()),
            ));
        }
        if let std::net::SocketAddr::V6(v6) = e.addr
            && v6.scope_id() != 0
        {
            return Err(RegistryError::invalid(
                at("address"),
                "scoped IPv6 addresses (`%zone`) are not supported",
            ));
        }
        if !(1..=MAX_WEIGHT).contains(&e.weight) {
            return Err(RegistryError::invalid(
                at("weight"),
                format!("{} is outside 1..={MAX_WEIGHT}", e.weight),
            ));
        }
        if !seen.insert(canonical(e.addr)) {
            return Err(RegistryError::invalid(
                at("address"),
                format!("{} is listed twice", e.addr),
            ));
        }
    }
    Ok(())
}

impl ServiceSpec {
    fn validate(&self) -> Result<(), RegistryError> {
        validate_service(&self.name)?;
        validate_endpoints("primary", &self.primary)?;
        if let Some(s) = &self.shadows {
            s.validate().map_err(|e| e.within("shadows"))?;
        }
        Ok(())
    }
}

/// Settings of a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySettings {
    /// Proxy group the snapshot is published for ([`DEFAULT_GROUP`]: every proxy).
    pub group: String,
    /// Validity of a readiness record after the answer that carried it.
    pub readiness_ttl: Duration,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            group: DEFAULT_GROUP.to_string(),
            readiness_ttl: DEFAULT_READINESS_TTL,
        }
    }
}

struct State {
    /// Persistent map: the draft of a change is an O(1) copy.
    services: imbl::OrdMap<String, ServiceState>,
    /// The snapshot of `services`, updated change by change (never rebuilt).
    snapshot: Snapshot,
    /// Generation of the last change.
    generation: u64,
    /// A write to the store failed since the last one that succeeded: what the store holds
    /// may differ from `services` (a failed commit may even have landed), so the next write
    /// replaces the stored services whole instead of writing the change. It holds when a
    /// write to the store last failed ([`ShadowRegistry::sync_store`] waits a second after).
    store_behind: Option<std::time::Instant>,
}

/// The shadow registry. Cheap to clone (shared).
///
/// **Generations.** Every change gets a generation greater than any before it: the larger
/// of the previous one plus one and the current Unix time in milliseconds. Filters keep
/// the newest generation of a record, so generations must keep growing across a restart
/// of the control plane too; tying them to the clock does that without remembering the
/// last one.
#[derive(Clone)]
pub struct ShadowRegistry {
    state: Arc<Mutex<State>>,
    cache: SnapshotCache,
    metrics: Arc<XdsMetrics>,
    settings: Arc<RegistrySettings>,
    /// Where changes are committed before they are published (none: memory only).
    store: Option<StateStore>,
}

use crate::clock::unix_now_ms as now_ms;

impl ShadowRegistry {
    /// A registry publishing to `cache` for every proxy.
    pub fn new(cache: SnapshotCache) -> ShadowRegistry {
        ShadowRegistry::with_settings(cache, Arc::default(), RegistrySettings::default())
    }

    /// A registry publishing to `cache` with `settings`, counting published changes in
    /// `metrics`. Publishes the (empty) snapshot at once, so proxies that connect before
    /// the first service exists are answered.
    pub fn with_settings(
        cache: SnapshotCache,
        metrics: Arc<XdsMetrics>,
        settings: RegistrySettings,
    ) -> ShadowRegistry {
        let registry = ShadowRegistry {
            state: Arc::new(Mutex::new(State {
                services: imbl::OrdMap::new(),
                snapshot: Snapshot::empty(),
                generation: 0,
                store_behind: None,
            })),
            cache,
            metrics,
            settings: Arc::new(settings),
            store: None,
        };
        registry.apply([]).expect("an empty batch is valid");
        registry
    }

    /// Makes every change durable in `store` before it is published, and starts from the
    /// services stored there (their generations included): after a restart, Envoys are
    /// served the same snapshot as before it.
    pub fn with_store(mut self, store: StateStore) -> Result<ShadowRegistry, RegistryError> {
        let stored = store
            .services()
            .map_err(|e| RegistryError::unavailable(e.to_string()))?;
        {
            let mut state = self.lock();
            for (name, s) in stored {
                let new = !state.services.contains_key(&name);
                publish(&mut state.snapshot, &name, &s, new);
                state.generation = state.generation.max(s.generation);
                state.services.insert(name, s);
            }
            self.cache
                .set_snapshot(&self.settings.group, state.snapshot.clone());
        }
        self.store = Some(store);
        Ok(self)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere mid-update of plain data; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `changes` (validated first: one bad change refuses the whole batch) as one
    /// generation and one published snapshot; returns the generation. Errors name the
    /// change as `changes[i]`.
    pub fn apply(
        &self,
        changes: impl IntoIterator<Item = ServiceChange>,
    ) -> Result<u64, RegistryError> {
        let changes: Vec<ServiceChange> = changes.into_iter().collect();
        for (i, c) in changes.iter().enumerate() {
            if let ServiceChange::Set(spec) = c {
                spec.validate()
                    .map_err(|e| e.within(&format!("changes[{i}]")))?;
            }
        }
        self.change(|state, generation| apply_changes(state, generation, changes))
    }

    /// Runs `change` on the state with the next generation and publishes the resulting
    /// snapshot; a refused change leaves everything as it was.
    fn change(
        &self,
        change: impl FnOnce(&mut State, u64) -> Result<(), RegistryError>,
    ) -> Result<u64, RegistryError> {
        let mut state = self.lock();
        let generation = (state.generation + 1).max(now_ms());
        // Changes work on a copy (cheap: persistent maps) so a refusal halfway leaves the
        // published state untouched.
        let mut draft = State {
            services: state.services.clone(),
            snapshot: state.snapshot.clone(),
            generation,
            store_behind: None,
        };
        change(&mut draft, generation)?;
        if let Some(store) = &self.store {
            // Committed before it is published or acknowledged: an acknowledged change
            // survives a crash, and a refused one is in neither memory nor the store.
            let written = if state.store_behind.is_some() {
                store.replace_services(draft.services.iter())
            } else {
                let changed: Vec<(String, Option<ServiceState>)> = state
                    .services
                    .diff(&draft.services)
                    .map(|d| match d {
                        imbl::ordmap::DiffItem::Add(k, v)
                        | imbl::ordmap::DiffItem::Update { new: (k, v), .. } => {
                            (k.clone(), Some(v.clone()))
                        }
                        imbl::ordmap::DiffItem::Remove(k, _) => (k.clone(), None),
                    })
                    .collect();
                store.write_services(&changed)
            };
            if let Err(e) = written {
                state.store_behind = Some(std::time::Instant::now());
                return Err(RegistryError::unavailable(e.to_string()));
            }
        }
        // Set under the lock so concurrent changes publish in order.
        self.cache
            .set_snapshot(&self.settings.group, draft.snapshot.clone());
        *state = draft;
        self.metrics.snapshot_updates.inc();
        Ok(generation)
    }

    /// Whether the store holds what the registry holds: after a failed write, the stored
    /// services are replaced whole first (tried at most once a second). For readiness: a
    /// store that takes a small write may still refuse this one.
    pub fn sync_store(&self) -> Result<(), RegistryError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let mut state = self.lock();
        let Some(failed) = state.store_behind else {
            return Ok(());
        };
        if failed.elapsed() < std::time::Duration::from_secs(1) {
            return Err(RegistryError::unavailable(
                "the stored services are behind: the last write to the store failed".into(),
            ));
        }
        match store.replace_services(state.services.iter()) {
            Ok(()) => {
                state.store_behind = None;
                Ok(())
            }
            Err(e) => {
                state.store_behind = Some(std::time::Instant::now());
                Err(RegistryError::unavailable(e.to_string()))
            }
        }
    }

    /// Creates `service` or replaces its primary endpoints (its shadows are kept).
    /// Returns the service as this change left it.
    pub fn set_primary(
        &self,
        service: &str,
        endpoints: &[EndpointSpec],
    ) -> Result<ServiceState, RegistryError> {
        self.set_service(service, endpoints, None)
    }

    /// Creates or replaces `service`: its primary endpoints and, if given, its shadows, as
    /// one change. Returns the service as this change left it.
    pub fn set_service(
        &self,
        service: &str,
        primary: &[EndpointSpec],
        shadows: Option<ShadowSet>,
    ) -> Result<ServiceState, RegistryError> {
        let spec = ServiceSpec {
            name: service.to_string(),
            primary: primary.to_vec(),
            shadows,
        };
        spec.validate()?;
        let mut written = None;
        self.change(|state, generation| {
            apply_changes(state, generation, vec![ServiceChange::Set(spec)])
                .map_err(|e| e.unnest("changes[0]."))?;
            written = state.services.get(service).cloned();
            Ok(())
        })?;
        Ok(written.expect("the service was just set"))
    }

    /// Sets the shadows of an existing `service`. Returns the service as this change left
    /// it.
    pub fn set_shadows(
        &self,
        service: &str,
        shadows: &ShadowSet,
    ) -> Result<ServiceState, RegistryError> {
        validate_service(service)?;
        shadows.validate()?;
        let mut written = None;
        self.change(|state, generation| {
            let old = state
                .services
                .get(service)
                .ok_or_else(|| RegistryError::unknown(service))?;
            disjoint(&old.primary, &shadows.endpoints)?;
            let s = ServiceState {
                primary: old.primary.clone(),
                shadows: shadows.clone(),
                generation,
            };
            publish(&mut state.snapshot, service, &s, false);
            written = Some(s.clone());
            state.services.insert(service.to_string(), s);
            Ok(())
        })?;
        Ok(written.expect("the shadows were just set"))
    }

    /// Releases all shadows of `service`. Returns the service as this change left it.
    pub fn clear_shadows(&self, service: &str) -> Result<ServiceState, RegistryError> {
        self.set_shadows(service, &ShadowSet::none())
    }

    /// The readiness record of `service` in `state` as filters get it at `now_ms`.
    pub fn readiness_record(
        &self,
        service: &str,
        state: &ServiceState,
        now_ms: u64,
    ) -> ShadowRecord {
        record(service, state, self.valid_until(now_ms))
    }

    /// Every service with its readiness record at `now_ms`, read together.
    pub fn services_with_readiness(
        &self,
        now_ms: u64,
    ) -> Vec<(String, ServiceState, ShadowRecord)> {
        let until = self.valid_until(now_ms);
        let services = self.lock().services.clone();
        services
            .into_iter()
            .map(|(name, s)| {
                let r = record(&name, &s, until);
                (name, s, r)
            })
            .collect()
    }

    /// Removes `service` and its clusters.
    pub fn remove_service(&self, service: &str) -> Result<u64, RegistryError> {
        self.apply([ServiceChange::Remove(service.to_string())])
            .map_err(|e| match e.kind {
                // The store's failure keeps its own field.
                RegistryErrorKind::Unavailable => e,
                _ => RegistryError {
                    field: "service".into(),
                    ..e
                },
            })
    }

    /// Every service.
    pub fn services(&self) -> BTreeMap<String, ServiceState> {
        let services = self.lock().services.clone();
        services.into_iter().collect()
    }

    /// One service.
    pub fn service(&self, service: &str) -> Option<ServiceState> {
        self.lock().services.get(service).cloned()
    }

    /// Generation of the last change.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// The readiness record of every service, as the filters get them at `now_ms`
    /// (Unix-epoch milliseconds; the records expire [`RegistrySettings::readiness_ttl`]
    /// later, or when their shadow set does, whichever is first).
    pub fn readiness(&self, now_ms: u64) -> Vec<ShadowRecord> {
        let until = self.valid_until(now_ms);
        let services = self.lock().services.clone();
        services
            .iter()
            .map(|(name, s)| record(name, s, until))
            .collect()
    }

    /// One service and its readiness record at `now_ms` (see
    /// [`ShadowRegistry::readiness`]), read together.
    pub fn service_with_readiness(
        &self,
        service: &str,
        now_ms: u64,
    ) -> Option<(ServiceState, ShadowRecord)> {
        let until = self.valid_until(now_ms);
        let state = self.lock().services.get(service).cloned()?;
        let record = record(service, &state, until);
        Some((state, record))
    }

    fn valid_until(&self, now_ms: u64) -> u64 {
        now_ms.saturating_add(self.settings.readiness_ttl.as_millis() as u64)
    }
}

/// Applies a validated batch to `state` under `generation`: checked against the state as
/// the batch goes (unknown removals, shadows that are also primaries) before anything is
/// touched; errors name the change as `changes[i]`.
fn apply_changes(
    state: &mut State,
    generation: u64,
    changes: Vec<ServiceChange>,
) -> Result<(), RegistryError> {
    let mut present: BTreeMap<&str, &[EndpointSpec]> = BTreeMap::new();
    for (i, c) in changes.iter().enumerate() {
        let at = format!("changes[{i}]");
        match c {
            ServiceChange::Set(spec) => {
                let kept = state
                    .services
                    .get(&spec.name)
                    .map(|o| o.shadows.endpoints.as_slice());
                let shadows = spec
                    .shadows
                    .as_ref()
                    .map(|s| s.endpoints.as_slice())
                    .or(kept);
                if let Some(shadows) = shadows {
                    disjoint(&spec.primary, shadows)
                        .map_err(|e| e.within(&format!("{at}.shadows")))?;
                }
                present.insert(&spec.name, &[]);
            }
            ServiceChange::Remove(name) => {
                let exists = present.remove(name.as_str()).is_some()
                    || (state.services.contains_key(name) && !removed_before(&changes[..i], name));
                if !exists {
                    return Err(RegistryError::unknown(name).within(&at));
                }
            }
        }
    }
    for c in changes {
        match c {
            ServiceChange::Set(spec) => {
                let old = state.services.get(&spec.name);
                let new = old.is_none();
                let s = ServiceState {
                    primary: spec.primary,
                    shadows: spec
                        .shadows
                        .or_else(|| old.map(|o| o.shadows.clone()))
                        .unwrap_or_default(),
                    generation,
                };
                publish(&mut state.snapshot, &spec.name, &s, new);
                state.services.insert(spec.name, s);
            }
            ServiceChange::Remove(name) => {
                state.services.remove(&name);
                unpublish(&mut state.snapshot, &name);
            }
        }
    }
    Ok(())
}

/// Whether an earlier change of the batch already removed `name` (and none set it again).
fn removed_before(earlier: &[ServiceChange], name: &str) -> bool {
    let mut removed = false;
    for c in earlier {
        match c {
            ServiceChange::Remove(n) if n == name => removed = true,
            ServiceChange::Set(s) if s.name == name => removed = false,
            _ => {}
        }
    }
    removed
}

/// A shadow must not be one of the service's primaries: redirected traffic would land on
/// the hot primary again.
fn disjoint(primary: &[EndpointSpec], shadows: &[EndpointSpec]) -> Result<(), RegistryError> {
    for (i, e) in shadows.iter().enumerate() {
        if primary
            .iter()
            .any(|p| canonical(p.addr) == canonical(e.addr))
        {
            return Err(RegistryError::invalid(
                format!("endpoints[{i}].address"),
                format!("{} is also a primary endpoint of the service", e.addr),
            ));
        }
    }
    Ok(())
}

/// `addr` with an IPv4-mapped IPv6 address written as IPv4.
fn canonical(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    std::net::SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The readiness record of one service, valid until `until_ms` at the latest.
fn record(name: &str, s: &ServiceState, until_ms: u64) -> ShadowRecord {
    ShadowRecord {
        service: name.to_string(),
        cluster: ClusterNames::of(name).shadow,
        warm: s.shadows.warm,
        max_in_flight: s.shadows.max_in_flight,
        generation: s.generation,
        expires_at_ms: Some(
            s.shadows
                .expires_at_ms
                .map_or(until_ms, |t| t.min(until_ms)),
        ),
    }
}

/// Puts one service's clusters (only if `new`: they never change) and endpoint
/// assignments into `snapshot`.
fn publish(snapshot: &mut Snapshot, name: &str, s: &ServiceState, new: bool) {
    let names = ClusterNames::of(name);
    if new {
        snapshot.set_cluster(&eds_cluster(&names.primary));
        snapshot.set_cluster(&shadow_pool_cluster(&names.shadow_pool));
        snapshot.set_cluster(&aggregate_cluster(
            &names.shadow,
            &[&names.shadow_pool, &names.primary],
        ));
    }
    snapshot.set_endpoints(&load_assignment(&names.primary, &s.primary));
    snapshot.set_endpoints(&load_assignment(&names.shadow_pool, &s.shadows.endpoints));
}

/// Takes one service's clusters and assignments out of `snapshot`.
fn unpublish(snapshot: &mut Snapshot, name: &str) {
    let names = ClusterNames::of(name);
    for cluster in [names.primary, names.shadow_pool, names.shadow] {
        snapshot.remove_cluster(&cluster);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::{CLUSTER_TYPE, ENDPOINT_TYPE};

    fn ep(s: &str) -> EndpointSpec {
        EndpointSpec::healthy(s.parse().unwrap())
    }

    #[test]
    fn a_service_is_three_clusters_and_shadows_change_endpoints_only() {
        let cache = SnapshotCache::default();
        let r = ShadowRegistry::new(cache.clone());
        r.set_primary("checkout", &[ep("10.0.0.1:80")]).unwrap();
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
        r.set_shadows("checkout", &ShadowSet::warm(vec![ep("10.0.0.9:80")], 8))
            .unwrap();
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
    fn endpoints_and_readiness_change_together_under_one_generation() {
        let cache = SnapshotCache::default();
        let r = ShadowRegistry::new(cache.clone());
        let before_ms = now_ms();
        let g1 = r
            .set_primary("checkout", &[ep("10.0.0.1:80")])
            .unwrap()
            .generation;
        // Tied to the clock: a restarted registry does not start again from 1.
        assert!(
            g1 >= before_ms,
            "generation {g1} before the wall clock {before_ms}"
        );
        let cold = &r.readiness(1_000)[0];
        assert_eq!(
            (cold.warm, cold.max_in_flight, cold.generation),
            (false, 0, g1),
            "a service without shadows is not ready"
        );
        let g2 = r
            .set_shadows("checkout", &ShadowSet::warm(vec![ep("10.0.0.9:80")], 16))
            .unwrap()
            .generation;
        assert!(g2 > g1);
        let warm = &r.readiness(1_000)[0];
        assert_eq!(
            (warm.warm, warm.max_in_flight, warm.generation),
            (true, 16, g2)
        );
        assert_eq!(warm.cluster, "checkout_shadow");
        assert_eq!(
            warm.expires_at_ms,
            Some(1_000 + DEFAULT_READINESS_TTL.as_millis() as u64)
        );
        let snapshot = cache.snapshot_for("any").unwrap();
        let pool = &snapshot.get(ENDPOINT_TYPE).unwrap().items["checkout_shadow_pool"];
        let empty = load_assignment("checkout_shadow_pool", &[]);
        assert_ne!(
            pool.any.value,
            prost::Message::encode_to_vec(&empty),
            "the same change put the endpoint in EDS"
        );
        // Released make-before-break: readiness off first, endpoints kept...
        let mut draining = r.service("checkout").unwrap().shadows;
        draining.warm = false;
        let g3 = r.set_shadows("checkout", &draining).unwrap().generation;
        assert!(!r.readiness(1_000)[0].warm);
        assert_eq!(r.service("checkout").unwrap().shadows.endpoints.len(), 1);
        // ...then the endpoints.
        let g4 = r.clear_shadows("checkout").unwrap().generation;
        assert!(g4 > g3 && g3 > g2);
        assert!(r.service("checkout").unwrap().shadows.endpoints.is_empty());
        // A shadow set's own expiry wins when it is earlier.
        let mut until = ShadowSet::warm(vec![ep("10.0.0.9:80")], 16);
        until.expires_at_ms = Some(1_500);
        r.set_shadows("checkout", &until).unwrap();
        assert_eq!(r.readiness(1_000)[0].expires_at_ms, Some(1_500));
        // A later one is capped by the readiness TTL.
        until.expires_at_ms = Some(u64::MAX);
        r.set_shadows("checkout", &until).unwrap();
        assert_eq!(
            r.readiness(1_000)[0].expires_at_ms,
            Some(1_000 + DEFAULT_READINESS_TTL.as_millis() as u64)
        );
    }

    #[test]
    fn set_primary_keeps_the_shadows_and_their_readiness() {
        let cache = SnapshotCache::default();
        let r = ShadowRegistry::new(cache.clone());
        r.set_primary("checkout", &[ep("10.0.0.1:80")]).unwrap();
        let with_shadows = r
            .set_shadows("checkout", &ShadowSet::warm(vec![ep("10.0.0.9:80")], 16))
            .unwrap();
        let pool = |c: &SnapshotCache| {
            c.snapshot_for("any")
                .unwrap()
                .get(ENDPOINT_TYPE)
                .unwrap()
                .items["checkout_shadow_pool"]
                .version
                .clone()
        };
        let pool_before = pool(&cache);
        let after = r.set_primary("checkout", &[ep("10.0.0.2:80")]).unwrap();
        assert_eq!(after.shadows, with_shadows.shadows);
        assert_eq!(after.primary, [ep("10.0.0.2:80")]);
        assert_eq!(
            pool(&cache),
            pool_before,
            "the shadow pool's EDS is unchanged"
        );
        let record = &r.readiness(0)[0];
        assert!(record.warm && record.max_in_flight == 16);
    }

    #[test]
    fn a_shadow_can_not_also_be_a_primary() {
        let r = ShadowRegistry::new(SnapshotCache::default());
        r.set_primary("checkout", &[ep("10.0.0.1:80")]).unwrap();
        let e = r
            .set_shadows(
                "checkout",
                &ShadowSet::warm(vec![ep("10.0.0.9:80"), ep("10.0.0.1:80")], 4),
            )
            .unwrap_err();
        assert_eq!(e.field, "endpoints[1].address");
        let mapped = EndpointSpec::healthy("[::ffff:10.0.0.1]:80".parse().unwrap());
        let e = r
            .set_shadows("checkout", &ShadowSet::warm(vec![mapped], 4))
            .unwrap_err();
        assert_eq!(
            e.field, "endpoints[0].address",
            "an IPv4-mapped address is the same host"
        );
        r.set_shadows("checkout", &ShadowSet::warm(vec![ep("10.0.0.9:80")], 4))
            .unwrap();
        let e = r.set_primary("checkout", &[ep("10.0.0.9:80")]).unwrap_err();
        assert_eq!(e.field, "shadows.endpoints[0].address");
    }

    #[test]
    fn endpoints_must_be_unicast_hosts_listed_once() {
        for (addr, why) in [
            ("[::ffff:0.0.0.0]:80", "unspecified, IPv4-mapped"),
            ("255.255.255.255:80", "broadcast"),
            ("224.0.0.1:80", "multicast"),
            ("[fe80::1%3]:80", "scoped"),
        ] {
            let e = validate_endpoints("primary", &[EndpointSpec::healthy(addr.parse().unwrap())])
                .unwrap_err();
            assert_eq!(e.field, "primary[0].address", "{why}");
        }
        let e = validate_endpoints(
            "primary",
            &[
                ep("10.0.0.1:80"),
                EndpointSpec::healthy("[::ffff:10.0.0.1]:80".parse().unwrap()),
            ],
        )
        .unwrap_err();
        assert_eq!(e.field, "primary[1].address", "the same host twice");
        for name in [".", "..", "-x", "_"] {
            assert!(validate_service(name).is_err(), "{name:?}");
        }
    }

    #[test]
    fn batches_check_removals_against_the_batch_itself() {
        let r = ShadowRegistry::new(SnapshotCache::default());
        let set = |name: &str| {
            ServiceChange::Set(ServiceSpec {
                name: name.into(),
                primary: vec![ep("10.0.0.1:80")],
                shadows: None,
            })
        };
        // Created and removed in one batch: fine, and gone.
        r.apply([set("x"), ServiceChange::Remove("x".into())])
            .unwrap();
        assert!(r.service("x").is_none());
        r.apply([set("a")]).unwrap();
        let generation = r.generation();
        // Removed twice: the second removal names a service that no longer exists.
        let e = r
            .apply([
                ServiceChange::Remove("a".into()),
                ServiceChange::Remove("a".into()),
            ])
            .unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.kind),
            ("changes[1].service", RegistryErrorKind::UnknownService)
        );
        assert!(r.service("a").is_some());
        assert_eq!(
            r.generation(),
            generation,
            "a refused batch takes no generation"
        );
    }

    #[test]
    fn bad_input_names_the_field_and_changes_nothing() {
        let cache = SnapshotCache::default();
        let r = ShadowRegistry::new(cache.clone());
        r.set_primary("checkout", &[ep("10.0.0.1:80")]).unwrap();
        let generation = cache.generation();
        let registry_generation = r.generation();
        let heavy = EndpointSpec {
            weight: 0,
            ..ep("10.0.0.2:80")
        };
        let e = r
            .set_shadows(
                "checkout",
                &ShadowSet::warm(vec![ep("10.0.0.3:80"), heavy], 4),
            )
            .unwrap_err();
        assert_eq!(e.field, "endpoints[1].weight");
        let unhealthy = EndpointSpec {
            healthy: false,
            ..ep("10.0.0.2:80")
        };
        let e = r
            .set_shadows("checkout", &ShadowSet::warm(vec![unhealthy], 4))
            .unwrap_err();
        assert_eq!(e.field, "warm");
        let e = r
            .set_shadows("checkout", &ShadowSet::warm(vec![ep("10.0.0.3:80")], 0))
            .unwrap_err();
        assert_eq!(e.field, "max_in_flight");
        let e = r
            .set_primary("checkout", &[ep("10.0.0.1:80"), ep("10.0.0.1:80")])
            .unwrap_err();
        assert_eq!(e.field, "primary[1].address");
        assert_eq!(r.set_primary("bad/name", &[]).unwrap_err().field, "service");
        let e = r.set_shadows("nope", &ShadowSet::none()).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.kind),
            ("service", RegistryErrorKind::UnknownService)
        );
        let e = r.remove_service("nope").unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.kind),
            ("service", RegistryErrorKind::UnknownService)
        );
        assert_eq!(
            r.set_primary("x", &[ep("0.0.0.0:80")]).unwrap_err().field,
            "primary[0].address"
        );
        // A batch is refused as a whole, naming the change.
        let e = r
            .apply([
                ServiceChange::Set(ServiceSpec {
                    name: "fine".into(),
                    primary: vec![ep("10.0.0.5:80")],
                    shadows: None,
                }),
                ServiceChange::Remove("nope".into()),
            ])
            .unwrap_err();
        assert_eq!(e.field, "changes[1].service");
        assert_eq!(cache.generation(), generation, "nothing published");
        assert_eq!(r.generation(), registry_generation, "no generation taken");
        assert_eq!(r.services().len(), 1);
        assert!(r.service("fine").is_none());
        assert_eq!(r.services()["checkout"].primary, [ep("10.0.0.1:80")]);
    }

    #[test]
    fn a_stored_registry_restarts_with_the_same_snapshot_and_later_generations() {
        let dir = std::env::temp_dir().join(format!("shadowmesh-registry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = SnapshotCache::default();
        let r = ShadowRegistry::new(cache.clone())
            .with_store(StateStore::open(&dir).unwrap())
            .unwrap();
        r.set_primary("checkout", &[ep("10.0.0.1:80")]).unwrap();
        r.set_primary("gone", &[ep("10.0.0.2:80")]).unwrap();
        let g = r
            .set_shadows("checkout", &ShadowSet::warm(vec![ep("10.0.0.9:80")], 8))
            .unwrap()
            .generation;
        r.remove_service("gone").unwrap();
        let before = cache.snapshot_for("any").unwrap();
        drop(r);
        let cache2 = SnapshotCache::default();
        let r2 = ShadowRegistry::new(cache2.clone())
            .with_store(StateStore::open(&dir).unwrap())
            .unwrap();
        assert_eq!(*cache2.snapshot_for("any").unwrap(), *before);
        assert_eq!(r2.services().keys().collect::<Vec<_>>(), ["checkout"]);
        assert_eq!(r2.service("checkout").unwrap().generation, g);
        assert!(r2.clear_shadows("checkout").unwrap().generation > g);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A registry on a flaky disk holding `kept`, and `refused`: a change whose commit's
    /// writes landed while its sync failed — refused, yet on the disk. The disk is healthy
    /// again on return.
    fn registry_with_a_refused_change_on_disk() -> (crate::store::flaky::FlakyDisk, ShadowRegistry)
    {
        use crate::store::flaky::{Fault, FlakyDisk};
        let disk = FlakyDisk::default();
        let r = ShadowRegistry::new(SnapshotCache::default())
            .with_store(disk.store())
            .unwrap();
        r.set_primary("kept", &[ep("10.0.0.1:80")]).unwrap();
        disk.set(Fault::RefuseSyncs);
        let e = r.set_primary("refused", &[ep("10.0.0.2:80")]).unwrap_err();
        assert_eq!(
            (e.kind, e.field.as_str()),
            (RegistryErrorKind::Unavailable, "state_dir")
        );
        assert!(r.service("refused").is_none());
        disk.set(Fault::None);
        (disk, r)
    }

    /// The services the disk holds, by name.
    fn stored(disk: &crate::store::flaky::FlakyDisk) -> Vec<String> {
        let services: BTreeMap<String, ServiceState> = disk.store().services().unwrap();
        services.into_keys().collect()
    }

    #[test]
    fn a_refused_change_that_landed_in_the_store_is_undone_by_the_next_write() {
        use crate::store::flaky::FlakyDisk;
        let (disk, r) = registry_with_a_refused_change_on_disk();
        assert_eq!(
            stored(&disk),
            ["kept", "refused"],
            "the failed commit landed"
        );
        // The next change replaces the stored services whole: the refused one is gone.
        std::thread::sleep(FlakyDisk::REOPEN * 2);
        r.set_primary("next", &[ep("10.0.0.3:80")]).unwrap();
        assert_eq!(stored(&disk), ["kept", "next"]);
    }

    #[test]
    fn readiness_rewrites_the_stored_services_after_a_failed_write() {
        let (disk, r) = registry_with_a_refused_change_on_disk();
        assert!(r.sync_store().is_err(), "behind within the second after");
        std::thread::sleep(std::time::Duration::from_millis(1_050));
        r.sync_store().unwrap();
        assert_eq!(stored(&disk), ["kept"]);
        r.sync_store().unwrap();
    }

    #[test]
    fn incremental_snapshots_equal_a_snapshot_built_from_scratch() {
        let cache = SnapshotCache::default();
        let r = ShadowRegistry::new(cache.clone());
        for i in 0..50 {
            r.set_primary(&format!("s{i}"), &[ep(&format!("10.0.{i}.1:80"))])
                .unwrap();
        }
        r.set_shadows("s7", &ShadowSet::warm(vec![ep("10.9.9.9:80")], 4))
            .unwrap();
        r.remove_service("s3").unwrap();
        r.set_primary("s8", &[ep("10.0.8.2:80")]).unwrap();
        let incremental = cache.snapshot_for("any").unwrap();
        let fresh_cache = SnapshotCache::default();
        let fresh = ShadowRegistry::new(fresh_cache.clone());
        fresh
            .apply(r.services().into_iter().map(|(name, s)| {
                ServiceChange::Set(ServiceSpec {
                    name,
                    primary: s.primary,
                    shadows: Some(s.shadows),
                })
            }))
            .unwrap();
        assert_eq!(*incremental, *fresh_cache.snapshot_for("any").unwrap());
    }
}
