//! The snapshot cache: what the controller wants each group of proxies to have, kept apart
//! from what each connected proxy has acknowledged.
//!
//! * **Desired** — [`SnapshotCache::set_snapshot`] stores one immutable [`Snapshot`] per
//!   proxy group. Which group a proxy belongs to is the cache's [`NodeGrouping`] applied to
//!   its `Node` (by default `node.cluster`); a group without a snapshot of its own takes
//!   [`DEFAULT_GROUP`]'s. Versions are content hashes, per resource and per resource type,
//!   so setting identical content again pushes nothing, and delta streams send only the
//!   resources whose hash changed.
//! * **Acknowledged** — every ADS stream reports its per-type protocol state
//!   ([`ProxyStatus`]); the admin API and tests read it with [`SnapshotCache::proxies`] and
//!   can await a condition on it with [`SnapshotCache::wait_for`].

use crate::protocol::Rejection;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::protobuf::value::Kind;
use prost::Message;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// Type URL of clusters (CDS).
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of endpoints (EDS).
pub const ENDPOINT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Group of proxies whose own group has no snapshot.
pub const DEFAULT_GROUP: &str = "*";

/// One encoded resource and the hash of its content.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Content hash: the per-resource version of incremental (delta) xDS.
    pub version: String,
    /// The encoded resource.
    pub any: Any,
}

/// Resources of one type by name. Shared between the snapshot and every stream that sent
/// it, so a thousand proxies on the same snapshot hold one copy.
pub type ResourceMap = BTreeMap<String, Arc<Resource>>;

/// Resources of one type, by name, with their version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// Content hash of all resources of the type: the state-of-the-world version.
    pub version: String,
    /// Encoded resources by name.
    pub items: Arc<ResourceMap>,
}

/// Everything one group of proxies should have. Immutable once built.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    types: BTreeMap<&'static str, Resources>,
}

fn hex_hash(h: impl Hasher) -> String {
    format!("{:016x}", h.finish())
}

fn encode<M: Message>(type_url: &str, m: &M) -> Arc<Resource> {
    let value = m.encode_to_vec();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    Arc::new(Resource {
        version: hex_hash(h),
        any: Any {
            type_url: type_url.to_string(),
            value,
        },
    })
}

impl Resources {
    /// Resources with a version computed from their names and content.
    pub fn new(items: ResourceMap) -> Resources {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (name, r) in &items {
            name.hash(&mut h);
            r.version.hash(&mut h);
        }
        Resources {
            version: hex_hash(h),
            items: Arc::new(items),
        }
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
        types.insert(CLUSTER_TYPE, Resources::new(cds));
        types.insert(ENDPOINT_TYPE, Resources::new(eds));
        Snapshot { types }
    }

    /// Resources of a type URL (`None` for types this server does not serve).
    pub fn get(&self, type_url: &str) -> Option<&Resources> {
        self.types.get(type_url)
    }
}

/// How a proxy's snapshot group is chosen from the `Node` it sends.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum NodeGrouping {
    /// `node.cluster` (Envoy's `--service-cluster`): one group per service.
    #[default]
    Cluster,
    /// `node.id`: one group per proxy.
    Id,
    /// The string value of this key in `node.metadata` (e.g. Istio's `WORKLOAD_NAME`).
    Metadata(String),
}

impl NodeGrouping {
    /// The group of `node` ([`DEFAULT_GROUP`] when the chosen field is empty or absent).
    pub fn group_of(&self, node: &Node) -> String {
        let group = match self {
            NodeGrouping::Cluster => node.cluster.clone(),
            NodeGrouping::Id => node.id.clone(),
            NodeGrouping::Metadata(key) => node
                .metadata
                .as_ref()
                .and_then(|m| m.fields.get(key))
                .and_then(|v| match &v.kind {
                    Some(Kind::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default(),
        };
        if group.is_empty() {
            DEFAULT_GROUP.to_string()
        } else {
            group
        }
    }
}

/// Which variant of the xDS protocol a stream speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum XdsMode {
    /// State of the world (`StreamAggregatedResources`).
    #[default]
    Sotw,
    /// Incremental (`DeltaAggregatedResources`).
    Delta,
}

impl XdsMode {
    /// Label value for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            XdsMode::Sotw => "sotw",
            XdsMode::Delta => "delta",
        }
    }
}

/// One connected proxy's state, as its stream last reported it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProxyStatus {
    /// Envoy `node.id`.
    pub node_id: String,
    /// The group it takes snapshots from.
    pub group: String,
    /// Protocol variant of its stream.
    pub mode: XdsMode,
    /// Per type URL: the last version it confirmed applying. For delta streams, the
    /// snapshot version its resources were brought to by the last ACKed response.
    pub acked: BTreeMap<String, String>,
    /// Per type URL: last rejection, if the proxy NACKed a version (cleared by an ACK).
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
    grouping: Arc<NodeGrouping>,
    changed: Arc<watch::Sender<u64>>,
    reported: Arc<watch::Sender<u64>>,
}

impl Default for SnapshotCache {
    fn default() -> Self {
        SnapshotCache::new(NodeGrouping::default())
    }
}

impl SnapshotCache {
    /// An empty cache grouping proxies by `grouping`.
    pub fn new(grouping: NodeGrouping) -> SnapshotCache {
        SnapshotCache {
            inner: Arc::default(),
            grouping: Arc::new(grouping),
            changed: Arc::new(watch::channel(0).0),
            reported: Arc::new(watch::channel(0).0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The group a proxy with this `Node` belongs to.
    pub fn group_of(&self, node: &Node) -> String {
        self.grouping.group_of(node)
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
        self.reported.send_modify(|n| *n += 1);
    }

    /// Forgets a closed stream.
    pub fn close_stream(&self, stream: u64) {
        self.lock().proxies.remove(&stream);
        self.reported.send_modify(|n| *n += 1);
    }

    /// State of every connected proxy.
    pub fn proxies(&self) -> Vec<ProxyStatus> {
        self.lock().proxies.values().cloned().collect()
    }

    /// Waits until `done` holds for the connected proxies' state (checked after every
    /// report of every stream, so no change is missed).
    pub async fn wait_for(&self, mut done: impl FnMut(&[ProxyStatus]) -> bool) {
        let mut reports = self.reported.subscribe();
        loop {
            reports.mark_unchanged();
            if done(&self.proxies()) {
                return;
            }
            if reports.changed().await.is_err() {
                return;
            }
        }
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
