//! [`Snapshot`]: everything one group of proxies should have, by resource type.
//!
//! A snapshot is a value: once handed to the [`crate::xds::SnapshotCache`] it never
//! changes. Its successor is made by cloning it (O(1): the maps are persistent) and
//! changing what differs, which shares every untouched resource with the predecessor.

use super::resource::{CLUSTER_TYPE, ENDPOINT_TYPE, Resource, Resources};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use std::collections::BTreeMap;

/// Everything one group of proxies should have.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    types: BTreeMap<&'static str, Resources>,
}

impl Snapshot {
    /// A snapshot of these clusters and endpoint assignments.
    pub fn new(clusters: &[Cluster], endpoints: &[ClusterLoadAssignment]) -> Snapshot {
        let mut s = Snapshot::empty();
        for c in clusters {
            s.set_cluster(c);
        }
        for e in endpoints {
            s.set_endpoints(e);
        }
        s
    }

    /// A snapshot with no clusters and no endpoints (both types present, so a proxy that
    /// subscribes is answered, with nothing).
    pub fn empty() -> Snapshot {
        let types = [CLUSTER_TYPE, ENDPOINT_TYPE]
            .into_iter()
            .map(|t| (t, Resources::default()))
            .collect();
        Snapshot { types }
    }

    /// Resources of a type URL (`None` for types this server does not serve).
    pub fn get(&self, type_url: &str) -> Option<&Resources> {
        self.types.get(type_url)
    }

    /// Adds or replaces a cluster.
    pub fn set_cluster(&mut self, cluster: &Cluster) {
        self.types_mut(CLUSTER_TYPE).insert(
            cluster.name.clone(),
            Resource::encode(CLUSTER_TYPE, cluster),
        );
    }

    /// Adds or replaces a cluster's endpoint assignment.
    pub fn set_endpoints(&mut self, assignment: &ClusterLoadAssignment) {
        self.types_mut(ENDPOINT_TYPE).insert(
            assignment.cluster_name.clone(),
            Resource::encode(ENDPOINT_TYPE, assignment),
        );
    }

    /// Removes a cluster and its endpoint assignment.
    pub fn remove_cluster(&mut self, name: &str) {
        self.types_mut(CLUSTER_TYPE).remove(name);
        self.types_mut(ENDPOINT_TYPE).remove(name);
    }

    fn types_mut(&mut self, type_url: &'static str) -> &mut Resources {
        self.types.entry(type_url).or_default()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A cluster with only a name.
    pub(in crate::xds) fn cluster(name: &str) -> Cluster {
        Cluster {
            name: name.into(),
            ..Default::default()
        }
    }

    fn version(s: &Snapshot, type_url: &str) -> String {
        s.get(type_url).unwrap().version.clone()
    }

    #[test]
    fn versions_are_content_hashes() {
        let a = Snapshot::new(&[cluster("a")], &[]);
        let b = Snapshot::new(&[cluster("a")], &[]);
        let c = Snapshot::new(&[cluster("a"), cluster("b")], &[]);
        assert_eq!(version(&a, CLUSTER_TYPE), version(&b, CLUSTER_TYPE));
        assert_ne!(version(&a, CLUSTER_TYPE), version(&c, CLUSTER_TYPE));
        assert_eq!(version(&a, ENDPOINT_TYPE), version(&c, ENDPOINT_TYPE));
    }

    #[test]
    fn incremental_changes_give_the_version_of_the_same_content_built_at_once() {
        let mut s = Snapshot::new(&[cluster("a"), cluster("b")], &[]);
        let mut changed = cluster("b");
        changed.connect_timeout = Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 3,
            nanos: 0,
        });
        s.set_cluster(&changed);
        s.set_cluster(&cluster("c"));
        s.remove_cluster("a");
        let direct = Snapshot::new(&[changed, cluster("c")], &[]);
        assert_eq!(s, direct);
        assert_eq!(version(&s, CLUSTER_TYPE), version(&direct, CLUSTER_TYPE));
        // Back to the original content: back to the original version.
        let mut again = s.clone();
        again.remove_cluster("c");
        again.set_cluster(&cluster("a"));
        again.set_cluster(&cluster("b"));
        assert_eq!(
            version(&again, CLUSTER_TYPE),
            version(
                &Snapshot::new(&[cluster("a"), cluster("b")], &[]),
                CLUSTER_TYPE
            )
        );
    }
}
