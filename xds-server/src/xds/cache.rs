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

use super::snapshot::Snapshot;
use super::status::ProxyStatus;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// Group of proxies whose own group has no snapshot.
pub const DEFAULT_GROUP: &str = "*";

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
    use crate::xds::resource::CLUSTER_TYPE;
    use crate::xds::snapshot::tests::cluster;

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
