//! Incremental (delta) rules: the proxy's state is the set of resources it holds, each
//! with its own version.

use super::{RETAINED_SUFFIX, RequestOutcome};
use crate::xds::resource::Resources;
use std::collections::{BTreeMap, BTreeSet, HashMap};

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
/// [`super::TypeState`] hold: one response in flight per type, stale nonces ignored, a rejected
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
    use crate::xds::protocol::test_support::{map, names};

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
        let p = s.plan(&v).unwrap();
        assert_eq!(
            p.updated,
            [("a".to_string(), "1".to_string())],
            "a changed cluster's endpoints go again"
        );
        // Once, not forever.
        let n = s.sent(p);
        delta_ack(&mut s, &n);
        assert_eq!(s.plan(&v), None);
    }

    #[test]
    fn the_first_answer_goes_out_even_when_empty() {
        let mut s = DeltaTypeState::default();
        s.on_request("", None, &[], &[], &HashMap::new());
        let empty = Resources::default();
        let p = s.plan(&empty).expect("the proxy waits for a first answer");
        assert!(p.updated.is_empty() && p.removed.is_empty());
        let n = s.sent(p);
        delta_ack(&mut s, &n);
        assert_eq!(s.plan(&empty), None, "only the first");
    }

    #[test]
    fn a_name_unsubscribed_with_the_ack_is_sent_again_on_resubscription() {
        let mut s = DeltaTypeState::default();
        s.on_request("", None, &names(&["a"]), &[], &HashMap::new());
        let v = Resources::new(map(&[("a", "1")]));
        let n = s.sent(s.plan(&v).unwrap());
        // The ACK arrives in the request that drops `a`.
        s.on_request(&n, None, &[], &names(&["a"]), &HashMap::new());
        assert!(!s.known.contains_key("a"), "the proxy no longer holds it");
        s.on_request("", None, &names(&["a"]), &[], &HashMap::new());
        assert_eq!(
            s.plan(&v).unwrap().updated,
            [("a".to_string(), "1".to_string())]
        );
    }

    #[test]
    fn delta_never_resends_a_rejected_version_to_rewarm_or_resubscribe() {
        let mut s = DeltaTypeState::default();
        s.on_request("", None, &names(&["a"]), &[], &HashMap::new());
        let v1 = Resources::new(map(&[("a", "1")]));
        let n = s.sent(s.plan(&v1).unwrap());
        delta_ack(&mut s, &n);
        let v2 = Resources::new(map(&[("a", "2")]));
        let n = s.sent(s.plan(&v2).unwrap());
        s.on_request(&n, Some("bad"), &[], &[], &HashMap::new());
        s.resend([&"a".to_string()]);
        assert_eq!(s.plan(&v2), None, "re-warm");
        s.on_request("", None, &names(&["b"]), &[], &HashMap::new());
        let v2b = Resources::new(map(&[("a", "2"), ("b", "1")]));
        let p = s.plan(&v2b).unwrap();
        assert_eq!(
            p.updated,
            [("b".to_string(), "1".to_string())],
            "new name only"
        );
    }
}
