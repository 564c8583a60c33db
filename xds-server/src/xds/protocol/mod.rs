//! The xDS protocol state of one resource type on one stream, independent of transport.
//!
//! The ADS server keeps one [`TypeState`] (state of the world) or [`DeltaTypeState`]
//! (incremental) per (stream, type URL) and asks it two questions: *what did this request mean* ([`TypeState::on_request`]) and *should the
//! desired version be sent now* ([`TypeState::wants`]). Keeping these rules in one place,
//! free of gRPC, is what lets them be tested exhaustively:
//!
//! * `version_info` in a request is the last version the proxy *applied*; `response_nonce`
//!   names the response it answers. A request whose nonce is not the latest one sent is
//!   stale and ignored (it answers a response that has been superseded). The latest nonce
//!   stays valid after its ACK: Envoy repeats it when it changes its subscription.
//! * A request carrying `error_detail` is a NACK of the response with that nonce: the proxy
//!   keeps its previous version. The rejected version is never re-sent (the reference Go
//!   server can loop re-sending it); only a *different* desired version is.
//! * One response in flight at a time per type: the next push waits for the ACK or NACK of
//!   the previous one, so a fast-changing controller cannot pile up responses.
//! * A change of subscribed resource names is answered even if the version did not change:
//!   Envoy subscribes to a new cluster's endpoints only after it received the cluster, and a
//!   server that answers "no change" leaves that cluster warming forever. Likewise a changed
//!   cluster is re-warmed and needs its endpoints again ([`TypeState::resend`]).
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | what both variants share: [`RequestOutcome`], [`Rejection`], the push order |
//! | `sotw.rs` | state of the world: [`TypeState`], [`sotw_response`] (make-before-break) |
//! | `delta.rs` | incremental: [`DeltaTypeState`] (what the proxy holds, by resource) |

mod delta;
mod sotw;

pub use delta::{DeltaResponsePlan, DeltaSubscription, DeltaTypeState};
pub use sotw::{InFlight, TypeState, sotw_response};

/// A NACK: the proxy rejected `version` with `error`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejection {
    /// The rejected version.
    pub version: String,
    /// The proxy's `error_detail.message`.
    pub error: String,
}

/// What a request meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOutcome {
    /// First request of the type on this stream (no nonce): a subscription.
    Subscribe,
    /// A request answering the latest response again, after its ACK/NACK was processed:
    /// the proxy changed the names it subscribes to.
    Resubscribe,
    /// The proxy applied the response with this version.
    Ack {
        /// Applied version.
        version: String,
    },
    /// The proxy rejected the response; it keeps serving `kept_version`.
    Nack {
        /// The rejected response's version.
        rejected: String,
        /// The version the proxy still runs (its `version_info`).
        kept_version: String,
        /// Its reason.
        error: String,
    },
    /// The nonce is not the one of the latest response: ignored.
    Stale,
}

/// Resource types in the order a change is sent within one push: clusters before their
/// endpoints. Responses on a stream are applied in order, so a new or changed cluster
/// exists (and is warming) when its endpoints arrive.
///
/// A push never *waits* for the clusters' ACK before sending endpoints: Envoy holds that
/// ACK until the changed clusters have warmed, that is, until it has their endpoints —
/// waiting would deadlock until Envoy's fetch timeout (15 s by default).
pub const PUSH_ORDER: [&str; 2] = [
    "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
];

/// Suffix of the version of a response that still carries resources due for removal.
pub const RETAINED_SUFFIX: &str = "+retained";

/// Builders shared by the tests of both variants.
#[cfg(test)]
mod test_support {
    use crate::xds::resource::{Resource, ResourceMap};
    use envoy_types::pb::google::protobuf::Any;
    use std::sync::Arc;

    /// Resource names as a request carries them.
    pub(super) fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    /// Resources with these names and versions (empty content).
    pub(super) fn map(items: &[(&str, &str)]) -> ResourceMap {
        items
            .iter()
            .map(|(name, version)| {
                (
                    name.to_string(),
                    Arc::new(Resource {
                        version: version.to_string(),
                        any: Any::default(),
                    }),
                )
            })
            .collect()
    }
}
