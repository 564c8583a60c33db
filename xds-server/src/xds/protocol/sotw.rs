//! State-of-the-world rules: one version per type, the last applied one reported in every
//! request.

use super::{RETAINED_SUFFIX, Rejection, RequestOutcome};
use crate::xds::resource::{ResourceMap, Resources};
use imbl::ordmap::DiffItem;
use std::collections::BTreeSet;

/// A response sent and not yet answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    /// Version of the resources in the response.
    pub version: String,
    /// Nonce of the response.
    pub nonce: String,
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
    /// use shadowmesh_xds::xds::protocol::{RequestOutcome, TypeState};
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
    ///
    /// The NACK rule comes first: a version the proxy rejected is never sent again, not
    /// even to answer a subscription change or a re-warm ([`TypeState::resend`]) — the
    /// proxy would reject it again, and again. Only a different desired version goes out.
    pub fn wants(&self, desired: &str) -> bool {
        if self.in_flight.is_some() {
            return false;
        }
        if self.rejected.as_ref().is_some_and(|r| r.version == desired) {
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

/// What a state-of-the-world response for one type should carry: the desired resources,
/// unless that would remove resources while adding or changing others.
///
/// Make-before-break: a change that replaces resources (say, cluster `a` by cluster `b`)
/// is sent in two steps: first the new and changed resources *beside* the ones to be
/// removed (version `<desired>+retained`), and once the proxy ACKs that, the desired set.
/// A change that only removes, or only adds, goes in one step.
///
/// Finding out costs work proportional to what changed: `applied` and `desired` are
/// versions of the same persistent map, and their difference skips the shared parts.
///
/// ```
/// use shadowmesh_xds::xds::resource::Resources;
/// use shadowmesh_xds::xds::protocol::sotw_response;
/// let applied = Resources::default();
/// let desired = Resources::default();
/// let (version, _items) = sotw_response(Some(&applied.items), &desired);
/// assert_eq!(version, desired.version);
/// ```
pub fn sotw_response(applied: Option<&ResourceMap>, desired: &Resources) -> (String, ResourceMap) {
    let Some(applied) = applied else {
        return (desired.version.clone(), desired.items.clone());
    };
    let (mut removes, mut makes) = (false, false);
    for change in applied.diff(&desired.items) {
        match change {
            DiffItem::Remove(..) => removes = true,
            DiffItem::Add(..) | DiffItem::Update { .. } => makes = true,
        }
        if removes && makes {
            break;
        }
    }
    if !(removes && makes) {
        return (desired.version.clone(), desired.items.clone());
    }
    let mut union = desired.items.clone();
    for (k, r) in applied.iter() {
        if !union.contains_key(k) {
            union.insert(k.clone(), r.clone());
        }
    }
    (format!("{}{RETAINED_SUFFIX}", desired.version), union)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::protocol::test_support::{map, names};

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

    #[test]
    fn sotw_replacement_keeps_the_old_resource_until_the_new_one_is_acked() {
        let applied = map(&[("a", "1"), ("keep", "1")]);
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

    #[test]
    fn a_change_beside_a_removal_also_goes_make_before_break_with_the_new_content() {
        // `keep` changes and `a` goes in one step: first the change beside `a`.
        let applied = map(&[("a", "1"), ("keep", "1")]);
        let desired = Resources::new(map(&[("keep", "2")]));
        let (version, items) = sotw_response(Some(&applied), &desired);
        assert_eq!(version, format!("{}{RETAINED_SUFFIX}", desired.version));
        assert_eq!(items.keys().collect::<Vec<_>>(), ["a", "keep"]);
        assert_eq!(
            items["keep"].version, "2",
            "the retained response carries the new content"
        );
        // And it converges: the next response is the desired set.
        let (version, items) = sotw_response(Some(&items), &desired);
        assert_eq!(version, desired.version);
        assert_eq!(items.keys().collect::<Vec<_>>(), ["keep"]);
    }

    /// Subscribes, sends and ACKs `v1`, then sends `v2` and has it NACKed.
    fn with_v2_rejected() -> TypeState {
        let mut s = TypeState::default();
        s.on_request("", "", None, &names(&["a"]));
        let n1 = s.sent("v1");
        s.on_request("v1", &n1, None, &names(&["a"]));
        let n2 = s.sent("v2");
        let outcome = s.on_request("v1", &n2, Some("bad"), &names(&["a"]));
        assert!(matches!(outcome, RequestOutcome::Nack { .. }));
        assert!(!s.wants("v2"));
        s
    }

    #[test]
    fn a_rejected_version_is_not_resent_to_rewarm_a_changed_cluster() {
        let mut s = with_v2_rejected();
        s.resend();
        assert!(
            !s.wants("v2"),
            "re-warming must not re-send the NACKed version"
        );
        assert!(s.wants("v3"), "a new version goes, and answers the re-warm");
    }

    #[test]
    fn a_rejected_version_is_not_resent_to_answer_a_new_subscription() {
        let mut s = with_v2_rejected();
        let latest = s.last_nonce.clone().unwrap();
        assert_eq!(
            s.on_request("v1", &latest, None, &names(&["a", "b"])),
            RequestOutcome::Resubscribe
        );
        assert!(
            !s.wants("v2"),
            "a subscription change must not re-send the NACKed version"
        );
        assert!(s.wants("v3"));
    }
}
