//! The snapshot cache: what the controller wants each group of proxies to have, kept apart
//! from what each connected proxy has acknowledged.
//!
//! * **Desired** — [`SnapshotCache::set_snapshot`] stores one immutable [`Snapshot`] per
//!   proxy group (Envoy's `node.cluster`, or [`DEFAULT_GROUP`]). Versions are content
//!   hashes per resource type, so setting identical content again pushes nothing.
//! * **Acknowledged** — every ADS stream reports its per-type protocol state
//!   ([`ProxyStatus`]); the admin API and tests read it with [`SnapshotCache::proxies`].

use crate::protocol::Rejection;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// Type URL of clusters (CDS).
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of endpoints (EDS).
pub const ENDPOINT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Group of proxies whose `node.cluster` has no snapshot of its own.
pub const DEFAULT_GROUP: &str = "*";

/// Resources of one type, by name, with their version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// Content hash of all resources of the type.
    pub version: String,
    /// Encoded resources by name.
    pub items: BTreeMap<String, Any>,
}

/// Everything one group of proxies should have. Immutable once built.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    types: BTreeMap<&'static str, Resources>,
}

fn encode<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: type_url.to_string(),
        value: m.encode_to_vec(),
    }
}

fn resources(type_url: &str, items: BTreeMap<String, Any>) -> Resources {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (name, any) in &items {
        name.hash(&mut h);
        any.value.hash(&mut h);
    }
    let _ = type_url;
    Resources {
        version: format!("{:016x}", h.finish()),
        items,
    }
}

impl Snapshot {
    /// A snapshot of these clusters and endpoint assignments.
    pub fn new(clusters: &[Cluster], endpoints: &[ClusterLoadAssignment]) -> Snapshot {
        let mut types = BTreeMap::new();
        let cds = clusters
            .iter()
            .map(|c| (c.name.clone(), encode(CLUSTER_TYPE, c)))
            .collect();
        let eds = endpoints
            .iter()
            .map(|e| (e.cluster_name.clone(), encode(ENDPOINT_TYPE, e)))
            .collect();
        types.insert(CLUSTER_TYPE, resources(CLUSTER_TYPE, cds));
        types.insert(ENDPOINT_TYPE, resources(ENDPOINT_TYPE, eds));
        Snapshot { types }
    }

    /// Resources of a type URL (`None` for types this server does not serve).
    pub fn get(&self, type_url: &str) -> Option<&Resources> {
        self.types.get(type_url)
    }
}

/// One connected proxy's state, as its stream last reported it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyStatus {
    /// Envoy `node.id`.
    pub node_id: String,
    /// The group it takes snapshots from.
    pub group: String,
    /// Per type URL: last ACKed version.
    pub acked: BTreeMap<String, String>,
    /// Per type URL: last rejection, if the proxy NACKed a version.
    pub rejected: BTreeMap<String, Rejection>,
    /// Per type URL: responses sent on this stream.
    pub responses: BTreeMap<String, u64>,
    /// The last cache generation ([`SnapshotCache::generation`]) this stream has fully
    /// processed: everything it should send for it has been sent.
    pub synced_generation: u64,
}

#[derive(Default)]
struct Inner {
    desired: HashMap<String, Arc<Snapshot>>,
    proxies: BTreeMap<u64, ProxyStatus>,
    next_stream: u64,
}

/// Desired snapshots per group and acknowledged state per proxy. Cheap to clone.
#[derive(Clone)]
pub struct SnapshotCache {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Default for SnapshotCache {
    fn default() -> Self {
        SnapshotCache {
            inner: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
        }
    }
}

impl SnapshotCache {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets what `group` should have; connected proxies of the group are updated.
    pub fn set_snapshot(&self, group: &str, snapshot: Snapshot) {
        self.lock()
            .desired
            .insert(group.to_string(), Arc::new(snapshot));
        self.changed.send_modify(|n| *n += 1);
    }

    /// The snapshot a proxy of `group` gets: its group's, else the default group's.
    pub fn snapshot_for(&self, group: &str) -> Option<Arc<Snapshot>> {
        let inner = self.lock();
        inner
            .desired
            .get(group)
            .or_else(|| inner.desired.get(DEFAULT_GROUP))
            .cloned()
    }

    /// Counts snapshot changes.
    pub fn generation(&self) -> u64 {
        *self.changed.borrow()
    }

    /// Notifies on every snapshot change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Registers a new stream; returns its id.
    pub fn open_stream(&self) -> u64 {
        let mut inner = self.lock();
        inner.next_stream += 1;
        let id = inner.next_stream;
        inner.proxies.insert(id, ProxyStatus::default());
        id
    }

    /// Updates a stream's reported state.
    pub fn report(&self, stream: u64, update: impl FnOnce(&mut ProxyStatus)) {
        if let Some(p) = self.lock().proxies.get_mut(&stream) {
            update(p);
        }
    }

    /// Forgets a closed stream.
    pub fn close_stream(&self, stream: u64) {
        self.lock().proxies.remove(&stream);
    }

    /// State of every connected proxy.
    pub fn proxies(&self) -> Vec<ProxyStatus> {
        self.lock().proxies.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(name: &str) -> Cluster {
        Cluster {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn versions_are_content_hashes() {
        let a = Snapshot::new(&[cluster("a")], &[]);
        let b = Snapshot::new(&[cluster("a")], &[]);
        let c = Snapshot::new(&[cluster("a"), cluster("b")], &[]);
        assert_eq!(
            a.get(CLUSTER_TYPE).unwrap().version,
            b.get(CLUSTER_TYPE).unwrap().version
        );
        assert_ne!(
            a.get(CLUSTER_TYPE).unwrap().version,
            c.get(CLUSTER_TYPE).unwrap().version
        );
        assert_eq!(
            a.get(ENDPOINT_TYPE).unwrap().version,
            c.get(ENDPOINT_TYPE).unwrap().version
        );
    }

    #[test]
    fn groups_fall_back_to_the_default() {
        let cache = SnapshotCache::default();
        let mut changes = cache.subscribe();
        cache.set_snapshot(DEFAULT_GROUP, Snapshot::new(&[cluster("all")], &[]));
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        cache.set_snapshot("edge", Snapshot::new(&[cluster("edge")], &[]));
        let edge = cache.snapshot_for("edge").unwrap();
        assert!(edge.get(CLUSTER_TYPE).unwrap().items.contains_key("edge"));
        let other = cache.snapshot_for("mesh").unwrap();
        assert!(other.get(CLUSTER_TYPE).unwrap().items.contains_key("all"));
    }
}
