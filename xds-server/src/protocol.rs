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

use crate::cache::{ResourceMap, Resources};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// A response sent and not yet answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    /// Version of the resources in the response.
    pub version: String,
    /// Nonce of the response.
    pub nonce: String,
}

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

/// Suffix of the version of a response that still carries resources due for removal.
pub const RETAINED_SUFFIX: &str = "+retained";

/// What a state-of-the-world response for one type should carry: the desired resources,
/// unless that would remove resources while adding or changing others.
///
/// Make-before-break: a change that replaces resources (say, cluster `a` by cluster `b`)
/// is sent in two steps: first the new and changed resources *beside* the ones to be
/// removed (version `<desired>+retained`), and once the proxy ACKs that, the desired set.
/// A change that only removes, or only adds, goes in one step.
///
/// ```
/// use shadowmesh_xds::cache::{Resources, ResourceMap};
/// use shadowmesh_xds::protocol::sotw_response;
/// let applied = Resources::default();
/// let desired = Resources::default();
/// let (version, _items) = sotw_response(Some(&applied.items), &desired);
/// assert_eq!(version, desired.version);
/// ```
pub fn sotw_response(
    applied: Option<&Arc<ResourceMap>>,
    desired: &Resources,
) -> (String, Arc<ResourceMap>) {
    let Some(applied) = applied else {
        return (desired.version.clone(), desired.items.clone());
    };
    let removes = applied.keys().any(|k| !desired.items.contains_key(k));
    let makes = desired
        .items
        .iter()
        .any(|(k, r)| applied.get(k).is_none_or(|a| a.version != r.version));
    if !(removes && makes) {
        return (desired.version.clone(), desired.items.clone());
    }
    let mut union = (*desired.items).clone();
    for (k, r) in applied.iter() {
        union.entry(k.clone()).or_insert_with(|| r.clone());
    }
    (
        format!("{}{RETAINED_SUFFIX}", desired.version),
        Arc::new(union),
    )
}

/// The names an incremental (delta) stream subscribes to, for one type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeltaSubscription {
    /// All resources of the type (legacy wildcard: an empty first subscription, or `*`).
    pub wildcard: bool,
    /// Names subscribed explicitly.
    pub names: BTreeSet<String>,
}

impl DeltaSubscription {
    /// Whether resource `name` is subscribed.
    pub fn covers(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// One incremental response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaResponsePlan {
    /// Snapshot version this response brings the proxy to (with [`RETAINED_SUFFIX`] when
    /// removals wait for a later response).
    pub version: String,
    /// Names of resources to send (added or changed), with their versions.
    pub updated: Vec<(String, String)>,
    /// Names of resources to remove.
    pub removed: Vec<String>,
}

#[derive(Debug, Clone)]
struct DeltaInFlight {
    nonce: String,
    plan: DeltaResponsePlan,
}

/// Protocol state of one type URL on one incremental (delta) stream.
///
/// Delta xDS has no `version_info` per type: the proxy's state is the set of resources it
/// holds and each one's version. The server tracks that set from ACKs ([`Self::known`]),
/// so it sends only what differs from the desired snapshot — and after a reconnect, thanks
/// to `initial_resource_versions`, nothing that is already in place. The same rules as
/// [`TypeState`] hold: one response in flight per type, stale nonces ignored, a rejected
/// resource version never re-sent, make-before-break removals.
#[derive(Debug, Clone, Default)]
pub struct DeltaTypeState {
    /// What the proxy subscribes to.
    pub subscription: DeltaSubscription,
    /// Resources the proxy holds: name → version.
    pub known: BTreeMap<String, String>,
    /// Snapshot version the last ACKed response brought the proxy to.
    pub acked: Option<String>,
    /// Resource versions the proxy rejected: name → version. (The rejection itself is
    /// reported by the NACK outcome and kept in the proxy's status.)
    rejected_versions: BTreeMap<String, String>,
    in_flight: Option<DeltaInFlight>,
    /// Names to send again even at an unchanged version.
    resend: BTreeSet<String>,
    started: bool,
    answered: bool,
    nonce_seq: u64,
}

impl DeltaTypeState {
    /// Interprets one request for this type.
    pub fn on_request(
        &mut self,
        response_nonce: &str,
        error_detail: Option<&str>,
        subscribe: &[String],
        unsubscribe: &[String],
        initial_versions: &HashMap<String, String>,
    ) -> RequestOutcome {
        if !self.started {
            self.started = true;
            // An empty first subscription is the legacy wildcard.
            self.subscription.wildcard = subscribe.is_empty();
            self.known = initial_versions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
        }
        for name in subscribe {
            if name == "*" {
                self.subscription.wildcard = true;
            } else {
                self.subscription.names.insert(name.clone());
            }
        }
        for name in unsubscribe {
            if name == "*" {
                self.subscription.wildcard = false;
            } else {
                self.subscription.names.remove(name);
                // The proxy dropped it; if it subscribes again it must get it again.
                self.known.remove(name);
            }
        }
        if response_nonce.is_empty() {
            return RequestOutcome::Subscribe;
        }
        let Some(in_flight) = self.in_flight.take_if(|f| f.nonce == response_nonce) else {
            return RequestOutcome::Stale;
        };
        let plan = in_flight.plan;
        match error_detail {
            Some(error) => {
                for (name, version) in plan.updated {
                    self.rejected_versions.insert(name, version);
                }
                RequestOutcome::Nack {
                    rejected: plan.version,
                    kept_version: self.acked.clone().unwrap_or_default(),
                    error: error.to_string(),
                }
            }
            None => {
                for (name, version) in plan.updated {
                    if self.subscription.covers(&name) {
                        self.known.insert(name, version);
                    }
                }
                for name in &plan.removed {
                    self.known.remove(name);
                }
                self.acked = Some(plan.version.clone());
                RequestOutcome::Ack {
                    version: plan.version,
                }
            }
        }
    }

    /// Sends these resources again even if the proxy holds their version: Envoy re-warms
    /// a changed cluster and waits for its endpoints.
    pub fn resend<'a>(&mut self, names: impl IntoIterator<Item = &'a String>) {
        self.resend.extend(names.into_iter().cloned());
    }

    /// The response that brings the proxy towards `desired`, if one is due now.
    pub fn plan(&self, desired: &Resources) -> Option<DeltaResponsePlan> {
        if self.in_flight.is_some() || !self.started {
            return None;
        }
        let mut blocked = false;
        let updated: Vec<(String, String)> = desired
            .items
            .iter()
            .filter(|(name, _)| self.subscription.covers(name))
            .filter(|(name, r)| {
                self.resend.contains(*name) || self.known.get(*name) != Some(&r.version)
            })
            .filter(|(name, r)| {
                let rejected = self.rejected_versions.get(*name) == Some(&r.version);
                blocked |= rejected;
                !rejected
            })
            .map(|(name, r)| (name.clone(), r.version.clone()))
            .collect();
        let mut removed: Vec<String> = self
            .known
            .keys()
            .filter(|name| !desired.items.contains_key(*name))
            .cloned()
            .collect();
        let mut version = desired.version.clone();
        if !updated.is_empty() && !removed.is_empty() {
            // Make before break: removals follow once the replacements are in place.
            removed.clear();
            version.push_str(RETAINED_SUFFIX);
        }
        if updated.is_empty() && removed.is_empty() {
            // The first answer goes out even when empty: the proxy waits for it to finish
            // initialising (until its `initial_fetch_timeout` otherwise).
            if self.answered || blocked {
                return None;
            }
        }
        Some(DeltaResponsePlan {
            version,
            updated,
            removed,
        })
    }

    /// Records that `plan` was sent; returns the response's nonce.
    pub fn sent(&mut self, plan: DeltaResponsePlan) -> String {
        self.nonce_seq += 1;
        let nonce = self.nonce_seq.to_string();
        for (name, _) in &plan.updated {
            self.resend.remove(name);
        }
        self.answered = true;
        self.in_flight = Some(DeltaInFlight {
            nonce: nonce.clone(),
            plan,
        });
        nonce
    }
}

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

    use crate::cache::{Resource, ResourceMap, Resources};
    use envoy_types::pb::google::protobuf::Any;

    fn map(items: &[(&str, &str)]) -> ResourceMap {
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

    #[test]
    fn sotw_replacement_keeps_the_old_resource_until_the_new_one_is_acked() {
        let applied = Arc::new(map(&[("a", "1"), ("keep", "1")]));
        let desired = Resources::new(map(&[("b", "1"), ("keep", "1")]));
        let (version, items) = sotw_response(Some(&applied), &desired);
        assert_eq!(version, format!("{}{RETAINED_SUFFIX}", desired.version));
        assert_eq!(items.keys().collect::<Vec<_>>(), ["a", "b", "keep"]);
        // Once that is applied, the removal goes out.
        let (version, items) = sotw_response(Some(&items), &desired);
        assert_eq!(version, desired.version);
        assert_eq!(items.keys().collect::<Vec<_>>(), ["b", "keep"]);
        // A pure removal goes at once.
        let only_keep = Resources::new(map(&[("keep", "1")]));
        assert_eq!(
            sotw_response(Some(&applied), &only_keep).0,
            only_keep.version
        );
    }

    fn delta_ack(s: &mut DeltaTypeState, nonce: &str) -> RequestOutcome {
        s.on_request(nonce, None, &[], &[], &HashMap::new())
    }

    #[test]
    fn delta_sends_only_differences_and_removes_after_replacing() {
        let mut s = DeltaTypeState::default();
        s.on_request("", None, &[], &[], &HashMap::new());
        assert!(s.subscription.wildcard, "empty first subscription");
        let v1 = Resources::new(map(&[("a", "1"), ("b", "1")]));
        let p = s.plan(&v1).unwrap();
        assert_eq!(p.updated.len(), 2);
        let n = s.sent(p);
        assert_eq!(s.plan(&v1), None, "one in flight");
        assert!(matches!(delta_ack(&mut s, &n), RequestOutcome::Ack { .. }));
        assert_eq!(s.plan(&v1), None, "nothing differs");
        // b changes, a is replaced by c: first b and c, then a's removal.
        let v2 = Resources::new(map(&[("b", "2"), ("c", "1")]));
        let p = s.plan(&v2).unwrap();
        assert_eq!(
            p.updated,
            [("b".to_string(), "2".to_string()), ("c".into(), "1".into())]
        );
        assert!(p.removed.is_empty());
        assert!(p.version.ends_with(RETAINED_SUFFIX));
        let n = s.sent(p);
        delta_ack(&mut s, &n);
        let p = s.plan(&v2).unwrap();
        assert!(p.updated.is_empty());
        assert_eq!(p.removed, ["a"]);
        assert_eq!(p.version, v2.version);
        let n = s.sent(p);
        delta_ack(&mut s, &n);
        assert_eq!(s.acked.as_deref(), Some(v2.version.as_str()));
        assert_eq!(s.known.keys().collect::<Vec<_>>(), ["b", "c"]);
    }

    #[test]
    fn delta_nack_blocks_that_resource_version_only() {
        let mut s = DeltaTypeState::default();
        s.on_request("", None, &names(&["a", "b"]), &[], &HashMap::new());
        assert!(!s.subscription.wildcard);
        let v1 = Resources::new(map(&[("a", "1"), ("b", "1"), ("other", "1")]));
        let p = s.plan(&v1).unwrap();
        assert_eq!(p.updated.len(), 2, "only subscribed names");
        let n = s.sent(p);
        let outcome = s.on_request(&n, Some("bad"), &[], &[], &HashMap::new());
        assert!(matches!(outcome, RequestOutcome::Nack { .. }));
        assert_eq!(s.plan(&v1), None, "the rejected versions are not re-sent");
        let v2 = Resources::new(map(&[("a", "2"), ("b", "1")]));
        let p = s.plan(&v2).unwrap();
        assert_eq!(p.updated, [("a".to_string(), "2".to_string())]);
    }

    #[test]
    fn delta_reconnect_sends_nothing_the_proxy_already_has() {
        let mut s = DeltaTypeState::default();
        let initial: HashMap<String, String> = [("a".to_string(), "1".to_string())].into();
        s.on_request("", None, &[], &[], &initial);
        let v = Resources::new(map(&[("a", "1"), ("b", "1")]));
        let p = s.plan(&v).unwrap();
        assert_eq!(p.updated, [("b".to_string(), "1".to_string())]);
        let n = s.sent(p);
        assert_eq!(
            s.on_request("999", None, &[], &[], &HashMap::new()),
            RequestOutcome::Stale
        );
        delta_ack(&mut s, &n);
        s.resend([&"a".to_string()]);
        assert_eq!(
            s.plan(&v).unwrap().updated,
            [("a".to_string(), "1".to_string())],
            "a changed cluster's endpoints go again"
        );
    }
}
