//! Encoded xDS resources and their versions.
//!
//! A resource's version is a hash of its encoded bytes, so identical content has an
//! identical version and setting it again pushes nothing. A type's state-of-the-world
//! version is a digest of every `(name, version)` pair, combined so that adding,
//! replacing or removing one resource updates it in O(1) — a change to one service costs
//! work proportional to that service, not to the number of services.
//!
//! Resources of a type live in a persistent map ([`imbl::OrdMap`]): a snapshot and its
//! successor share every node the change did not touch, cloning one is O(1), and the
//! difference between two related maps is found without visiting the shared parts.

use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Type URL of clusters (CDS).
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of endpoints (EDS).
pub const ENDPOINT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// One encoded resource and the hash of its content.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Content hash: the per-resource version of incremental (delta) xDS.
    pub version: String,
    /// The encoded resource.
    pub any: Any,
}

impl Resource {
    /// Encodes `message` as a resource of `type_url`.
    pub fn encode<M: Message>(type_url: &str, message: &M) -> Arc<Resource> {
        let value = message.encode_to_vec();
        let mut h = hasher();
        value.hash(&mut h);
        Arc::new(Resource {
            version: hex(h.finish()),
            any: Any {
                type_url: type_url.to_string(),
                value,
            },
        })
    }
}

/// Resources of one type by name. Shared between snapshots and every stream that sent
/// them: a thousand proxies on the same snapshot hold one copy.
pub type ResourceMap = imbl::OrdMap<String, Arc<Resource>>;

/// Resources of one type, by name, with their state-of-the-world version.
#[derive(Debug, Clone, PartialEq)]
pub struct Resources {
    /// Digest of all `(name, version)` pairs: the state-of-the-world version.
    pub version: String,
    /// Encoded resources by name.
    pub items: ResourceMap,
    /// XOR of the pair hashes; `version` is its hex form.
    digest: u64,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            version: hex(0),
            items: ResourceMap::new(),
            digest: 0,
        }
    }
}

/// Deterministic across processes (fixed keys), so a restarted server computes the same
/// versions and a reconnecting proxy that already has them is sent nothing new.
fn hasher() -> std::collections::hash_map::DefaultHasher {
    std::collections::hash_map::DefaultHasher::new()
}

fn hex(h: u64) -> String {
    format!("{h:016x}")
}

/// The contribution of one named resource to its type's digest.
fn pair_hash(name: &str, version: &str) -> u64 {
    let mut h = hasher();
    name.hash(&mut h);
    version.hash(&mut h);
    h.finish()
}

impl Resources {
    /// Resources with a version computed from their names and content.
    pub fn new(items: impl IntoIterator<Item = (String, Arc<Resource>)>) -> Resources {
        let mut r = Resources::default();
        for (name, resource) in items {
            r.insert(name, resource);
        }
        r
    }

    /// Adds or replaces resource `name`.
    pub fn insert(&mut self, name: String, resource: Arc<Resource>) {
        let added = pair_hash(&name, &resource.version);
        if let Some(old) = self.items.insert(name.clone(), resource) {
            self.digest ^= pair_hash(&name, &old.version);
        }
        self.digest ^= added;
        self.version = hex(self.digest);
    }

    /// Removes resource `name`, if present.
    pub fn remove(&mut self, name: &str) {
        if let Some(old) = self.items.remove(name) {
            self.digest ^= pair_hash(name, &old.version);
            self.version = hex(self.digest);
        }
    }
}
