//! The xDS protocol state of one resource type on one stream, independent of transport.
//!
//! The ADS server (issue #3) keeps one [`TypeState`] per (stream, type URL) and asks it two
//! questions: *what did this request mean* ([`TypeState::on_request`]) and *should the
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

use std::collections::BTreeSet;

/// A response sent and not yet answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    /// Version of the resources in the response.
    pub version: String,
    /// Nonce of the response.
    pub nonce: String,
}

/// A NACK: the proxy rejected `version` with `error`.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Protocol state of one type URL on one stream.
#[derive(Debug, Clone, Default)]
pub struct TypeState {
    /// Response awaiting an ACK/NACK.
    pub in_flight: Option<InFlight>,
    /// Last version the proxy confirmed applying.
    pub acked: Option<String>,
    /// Last rejection (cleared by a later ACK).
    pub rejected: Option<Rejection>,
    /// Resource names subscribed (`None`: wildcard, all of them).
    pub subscribed: Option<BTreeSet<String>>,
    /// Subscribed names at the time of the last response sent.
    sent_subscription: Option<Option<BTreeSet<String>>>,
    /// Nonce of the latest response sent.
    last_nonce: Option<String>,
    /// Answer once more even if nothing changed (see [`TypeState::resend`]).
    force: bool,
    nonce_seq: u64,
}

impl TypeState {
    /// Interprets one request for this type.
    ///
    /// ```
    /// use shadowmesh_xds::protocol::{RequestOutcome, TypeState};
    /// let mut s = TypeState::default();
    /// assert_eq!(s.on_request("", "", None, &[]), RequestOutcome::Subscribe);
    /// let nonce = s.sent("v1");
    /// assert_eq!(s.on_request("v1", &nonce, None, &[]), RequestOutcome::Ack { version: "v1".into() });
    /// ```
    pub fn on_request(
        &mut self,
        version_info: &str,
        response_nonce: &str,
        error_detail: Option<&str>,
        resource_names: &[String],
    ) -> RequestOutcome {
        let names = (!resource_names.is_empty()).then(|| resource_names.iter().cloned().collect());
        if response_nonce.is_empty() {
            // A (re)subscription; after a reconnect the proxy reports what it runs.
            self.subscribed = names;
            if !version_info.is_empty() {
                self.acked = Some(version_info.to_string());
            }
            return RequestOutcome::Subscribe;
        }
        if self.last_nonce.as_deref() != Some(response_nonce) {
            return RequestOutcome::Stale;
        }
        self.subscribed = names;
        let Some(in_flight) = self.in_flight.take() else {
            return RequestOutcome::Resubscribe;
        };
        match error_detail {
            Some(error) => {
                self.rejected = Some(Rejection {
                    version: in_flight.version.clone(),
                    error: error.to_string(),
                });
                if !version_info.is_empty() {
                    self.acked = Some(version_info.to_string());
                }
                RequestOutcome::Nack {
                    rejected: in_flight.version,
                    kept_version: version_info.to_string(),
                    error: error.to_string(),
                }
            }
            None => {
                self.acked = Some(version_info.to_string());
                self.rejected = None;
                RequestOutcome::Ack {
                    version: version_info.to_string(),
                }
            }
        }
    }

    /// Asks for one more response at the current version: Envoy re-warms a changed
    /// cluster and waits for its endpoints, which may not have changed at all.
    pub fn resend(&mut self) {
        self.force = true;
    }

    /// Whether `desired` should be sent now.
    pub fn wants(&self, desired: &str) -> bool {
        if self.in_flight.is_some() {
            return false;
        }
        if self.force {
            return true;
        }
        let subscription_changed = self.sent_subscription.as_ref() != Some(&self.subscribed);
        if subscription_changed {
            // New names must be answered even at an unchanged version (stuck-warming bug),
            // and the first response of a stream always goes out.
            return true;
        }
        if self.rejected.as_ref().is_some_and(|r| r.version == desired) {
            return false;
        }
        self.acked.as_deref() != Some(desired)
    }

    /// Records that `version` was sent; returns the response's nonce.
    pub fn sent(&mut self, version: &str) -> String {
        self.nonce_seq += 1;
        let nonce = self.nonce_seq.to_string();
        self.in_flight = Some(InFlight {
            version: version.to_string(),
            nonce: nonce.clone(),
        });
        self.last_nonce = Some(nonce.clone());
        self.force = false;
        self.sent_subscription = Some(self.subscribed.clone());
        nonce
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ack_then_new_version() {
        let mut s = TypeState::default();
        s.on_request("", "", None, &[]);
        assert!(s.wants("v1"));
        let n1 = s.sent("v1");
        assert!(!s.wants("v2"), "one response in flight at a time");
        assert_eq!(
            s.on_request("v1", &n1, None, &[]),
            RequestOutcome::Ack {
                version: "v1".into()
            }
        );
        assert!(!s.wants("v1"), "nothing new");
        assert!(s.wants("v2"));
    }

    #[test]
    fn nack_keeps_last_good_and_never_resends_the_rejected_version() {
        let mut s = TypeState::default();
        s.on_request("", "", None, &[]);
        let n1 = s.sent("v1");
        s.on_request("v1", &n1, None, &[]);
        let n2 = s.sent("v2");
        let outcome = s.on_request("v1", &n2, Some("bad cluster"), &[]);
        assert_eq!(
            outcome,
            RequestOutcome::Nack {
                rejected: "v2".into(),
                kept_version: "v1".into(),
                error: "bad cluster".into()
            }
        );
        assert_eq!(s.acked.as_deref(), Some("v1"));
        assert!(!s.wants("v2"), "the rejected version is not re-sent");
        assert!(s.wants("v3"), "a new version is");
        let n3 = s.sent("v3");
        s.on_request("v3", &n3, None, &[]);
        assert_eq!(s.rejected, None, "an ACK clears the rejection");
    }

    #[test]
    fn stale_nonces_are_ignored() {
        let mut s = TypeState::default();
        s.on_request("", "", None, &[]);
        let n1 = s.sent("v1");
        assert_eq!(s.on_request("v0", "999", None, &[]), RequestOutcome::Stale);
        assert!(s.in_flight.is_some(), "still waiting for the real answer");
        assert_eq!(
            s.on_request("v1", &n1, None, &[]),
            RequestOutcome::Ack {
                version: "v1".into()
            }
        );
        assert_eq!(
            s.on_request("v1", &n1, None, &[]),
            RequestOutcome::Resubscribe,
            "latest nonce again"
        );
        assert!(!s.wants("v1"), "same names, same version: nothing to send");
        let n2 = s.sent("v2");
        assert_eq!(
            s.on_request("v1", &n1, None, &[]),
            RequestOutcome::Stale,
            "superseded by {n2}"
        );
    }

    #[test]
    fn new_subscription_is_answered_at_an_unchanged_version() {
        let mut s = TypeState::default();
        s.on_request("", "", None, &names(&["a"]));
        let n1 = s.sent("v1");
        s.on_request("v1", &n1, None, &names(&["a"]));
        assert!(!s.wants("v1"));
        // Envoy added cluster b and now also asks for its endpoints, repeating the nonce.
        assert_eq!(
            s.on_request("v1", &n1, None, &names(&["a", "b"])),
            RequestOutcome::Resubscribe
        );
        assert!(
            s.wants("v1"),
            "stuck-warming bug: must answer the new subscription"
        );
    }

    #[test]
    fn reconnect_reports_the_running_version() {
        let mut s = TypeState::default();
        assert_eq!(s.on_request("v7", "", None, &[]), RequestOutcome::Subscribe);
        assert_eq!(s.acked.as_deref(), Some("v7"));
        assert!(s.wants("v7"), "first response of a stream always goes out");
        let n = s.sent("v7");
        s.on_request("v7", &n, None, &[]);
        assert!(!s.wants("v7"));
    }

    #[test]
    fn resend_answers_once_at_an_unchanged_version() {
        let mut s = TypeState::default();
        s.on_request("", "", None, &[]);
        let n1 = s.sent("v1");
        s.on_request("v1", &n1, None, &[]);
        assert!(!s.wants("v1"));
        s.resend();
        assert!(s.wants("v1"));
        let n2 = s.sent("v1");
        s.on_request("v1", &n2, None, &[]);
        assert!(!s.wants("v1"), "once");
    }
}
