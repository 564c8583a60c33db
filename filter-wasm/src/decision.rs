//! The per-request choice: primary, shadow, or primary-because-no-shadow (fallback).

use crate::plan::RedirectPlan;
use shadowmesh_wire::RedirectState;

/// Where one request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectDecision {
    /// The primary cluster.
    Primary,
    /// The shadow cluster: the primary is hot and this request is part of the excess.
    Shadow,
    /// The plan wanted the shadow, but no shadow is ready: the primary serves it.
    Fallback,
}

/// Spreads session-less redirects evenly: with share `s`, exactly ⌊n·s⌋ or ⌈n·s⌉ of
/// every `n` consecutive requests go to the shadow (error diffusion), without randomness
/// so tests and bursts behave the same.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spreader {
    credit: f64,
}

impl Spreader {
    /// Whether the next request is part of the redirected share.
    pub fn take(&mut self, share: f64) -> bool {
        self.credit += share;
        if self.credit >= 1.0 {
            self.credit -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Maps a session key to a stable point in `[0, 1)` (FNV-1a, then the top 53 bits).
pub fn session_point(key: &[u8]) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV's low bits mix poorly for short keys; finish with a 64-bit avalanche.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Decides one request.
///
/// A request with a session goes to the shadow iff its session point falls below the
/// surge's pinned share; one without is spread by `spreader` at the current share.
///
/// ```
/// use shadowmesh_filter::decision::{decide, RedirectDecision, Spreader};
/// use shadowmesh_filter::plan::RedirectPlan;
/// use shadowmesh_wire::RedirectState;
/// let plan = RedirectPlan { state: RedirectState::Redirecting, share: 0.5, session_share: 0.5, ..Default::default() };
/// let mut s = Spreader::default();
/// let sent: Vec<_> = (0..4).map(|_| decide(&plan, true, None, &mut s)).collect();
/// assert_eq!(sent.iter().filter(|d| **d == RedirectDecision::Shadow).count(), 2);
/// // A session pinned to the shadow falls back to the primary when the shadow is not ready.
/// assert_eq!(decide(&plan, false, Some(0.1), &mut s), RedirectDecision::Fallback);
/// ```
pub fn decide(
    plan: &RedirectPlan,
    shadow_ready: bool,
    session_point: Option<f64>,
    spreader: &mut Spreader,
) -> RedirectDecision {
    if plan.state != RedirectState::Redirecting {
        return RedirectDecision::Primary;
    }
    let wants_shadow = match session_point {
        Some(p) => p < plan.session_share,
        None => spreader.take(plan.share),
    };
    match (wants_shadow, shadow_ready) {
        (false, _) => RedirectDecision::Primary,
        (true, true) => RedirectDecision::Shadow,
        (true, false) => RedirectDecision::Fallback,
    }
}

/// Extracts the value of cookie `name` from a `cookie` header value.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirecting(share: f64) -> RedirectPlan {
        RedirectPlan {
            state: RedirectState::Redirecting,
            share,
            session_share: share,
            ..Default::default()
        }
    }

    #[test]
    fn spreader_sends_exactly_the_share() {
        let mut s = Spreader::default();
        let plan = redirecting(0.3);
        let shadow = (0..1000)
            .filter(|_| decide(&plan, true, None, &mut s) == RedirectDecision::Shadow)
            .count();
        assert!((299..=301).contains(&shadow), "{shadow}");
    }

    #[test]
    fn normal_state_never_redirects() {
        let mut s = Spreader::default();
        let plan = RedirectPlan {
            share: 0.9,
            ..Default::default()
        };
        assert!(
            (0..100).all(|_| decide(&plan, true, Some(0.0), &mut s) == RedirectDecision::Primary)
        );
    }

    #[test]
    fn sessions_are_sticky_and_spread() {
        let plan = redirecting(0.4);
        let mut s = Spreader::default();
        let mut shadow = 0;
        for i in 0..10_000 {
            let key = format!("session-{i}");
            let p = session_point(key.as_bytes());
            let first = decide(&plan, true, Some(p), &mut s);
            assert_eq!(
                first,
                decide(&plan, true, Some(session_point(key.as_bytes())), &mut s)
            );
            if first == RedirectDecision::Shadow {
                shadow += 1;
            }
        }
        assert!((3_700..4_300).contains(&shadow), "{shadow}");
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        assert_eq!(cookie_value("a=1; sid=xyz; b=2", "sid"), Some("xyz"));
        assert_eq!(cookie_value("xsid=1", "sid"), None);
        assert_eq!(cookie_value("garbage", "sid"), None);
    }
}
