//! What each connected proxy has: its stream's protocol variant, the versions it ACKed,
//! what it NACKed and how far it has caught up with the cache. Streams report it; the
//! [`crate::xds::SnapshotCache`] holds it apart from the desired snapshots.

use super::protocol::Rejection;
use serde::Serialize;
use std::collections::BTreeMap;

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
    /// The last cache generation ([`crate::xds::SnapshotCache::generation`]) this stream has fully
    /// processed: everything it should send for it has been sent.
    pub synced_generation: u64,
}
