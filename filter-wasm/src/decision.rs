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

/// Decides one request at `now_ms`.
///
/// A request with a session goes to the shadow iff its session point falls below the
/// threshold the plan's [`SessionPins`](crate::plan::SessionPins) put in force at `now_ms`
/// — the same instant on every worker, and a threshold that only rises during a surge, so
/// a session sent to the shadow stays there; one without a session is spread by
/// `spreader` at the plan's session-less share, only while redirecting.
///
/// ```
/// use shadowmesh_filter::decision::{decide, RedirectDecision, Spreader};
/// use shadowmesh_filter::plan::{RedirectPlan, SessionPins};
/// use shadowmesh_wire::RedirectState;
/// let plan = RedirectPlan {
///     state: RedirectState::Redirecting,
///     plain_share: 0.5,
///     pins: SessionPins { before: 0.0, after: 0.5, from_ms: 1_000 },
///     ..Default::default()
/// };
/// let mut s = Spreader::default();
/// let sent: Vec<_> = (0..4).map(|_| decide(&plan, 1_000, true, None, &mut s)).collect();
/// assert_eq!(sent.iter().filter(|d| **d == RedirectDecision::Shadow).count(), 2);
/// // A session below the threshold goes to the shadow once the threshold is in force…
/// assert_eq!(decide(&plan, 999, true, Some(0.1), &mut s), RedirectDecision::Primary);
/// assert_eq!(decide(&plan, 1_000, true, Some(0.1), &mut s), RedirectDecision::Shadow);
/// // …and falls back to the primary when the shadow is not ready.
/// assert_eq!(decide(&plan, 1_000, false, Some(0.1), &mut s), RedirectDecision::Fallback);
/// ```
pub fn decide(
    plan: &RedirectPlan,
    now_ms: u64,
    shadow_ready: bool,
    session_point: Option<f64>,
    spreader: &mut Spreader,
) -> RedirectDecision {
    let wants_shadow = match session_point {
        // Pins stay in force until the instant the plan set for their release, in either
        // state: every worker lets its sessions go at the same moment.
        Some(p) => p < plan.pins.at(now_ms),
        None => plan.state == RedirectState::Redirecting && spreader.take(plan.plain_share),
    };
    match (wants_shadow, shadow_ready) {
        (false, _) => RedirectDecision::Primary,
        (true, true) => RedirectDecision::Shadow,
        (true, false) => RedirectDecision::Fallback,
    }
}

/// Whether a worker's copy of the plan, read at `read_ms`, is too old to decide by at
/// `now_ms`: older than a tick and a half. Workers re-read the plan at every tick; one
/// whose timer ran late (a stalled event loop) reads it again before deciding — pin
/// changes are announced [`crate::plan::PIN_LEAD_TICKS`] ticks ahead, and one it missed
/// would have it route a session differently from every other worker.
///
/// ```
/// use shadowmesh_filter::decision::plan_is_stale;
/// assert!(!plan_is_stale(1_000, 1_150, 100));
/// assert!(plan_is_stale(1_000, 1_151, 100));
/// ```
pub fn plan_is_stale(read_ms: u64, now_ms: u64, tick_ms: u64) -> bool {
    now_ms.saturating_sub(read_ms) > tick_ms.saturating_mul(3) / 2
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
    use crate::plan::SessionPins;

    fn redirecting(share: f64) -> RedirectPlan {
        RedirectPlan {
            state: RedirectState::Redirecting,
            share,
            plain_share: share,
            pins: SessionPins {
                before: share,
                after: share,
                from_ms: 0,
            },
            ..Default::default()
        }
    }

    #[test]
    fn spreader_sends_exactly_the_share() {
        let mut s = Spreader::default();
        let plan = redirecting(0.3);
        let shadow = (0..1000)
            .filter(|_| decide(&plan, 0, true, None, &mut s) == RedirectDecision::Shadow)
            .count();
        assert!((299..=301).contains(&shadow), "{shadow}");
    }

    #[test]
    fn normal_state_never_redirects_session_less_requests() {
        let mut s = Spreader::default();
        let plan = RedirectPlan {
            plain_share: 0.9,
            ..Default::default()
        };
        assert!(
            (0..100).all(|_| decide(&plan, 0, true, None, &mut s) == RedirectDecision::Primary)
        );
        assert!(
            (0..100)
                .all(|_| decide(&plan, 0, true, Some(0.0), &mut s) == RedirectDecision::Primary),
            "no pins, no session goes"
        );
    }

    #[test]
    fn pins_release_sessions_at_their_instant_even_after_the_exit() {
        let mut s = Spreader::default();
        // The plan left redirection at 1,000 and releases the sessions at 1,200.
        let plan = RedirectPlan {
            pins: SessionPins {
                before: 0.5,
                after: 0.0,
                from_ms: 1_200,
            },
            ..Default::default()
        };
        assert_eq!(
            decide(&plan, 1_199, true, Some(0.2), &mut s),
            RedirectDecision::Shadow
        );
        assert_eq!(
            decide(&plan, 1_200, true, Some(0.2), &mut s),
            RedirectDecision::Primary
        );
        assert_eq!(
            decide(&plan, 1_199, true, None, &mut s),
            RedirectDecision::Primary
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
            let first = decide(&plan, 0, true, Some(p), &mut s);
            assert_eq!(
                first,
                decide(&plan, 0, true, Some(session_point(key.as_bytes())), &mut s)
            );
            if first == RedirectDecision::Shadow {
                shadow += 1;
            }
        }
        assert!((3_700..4_300).contains(&shadow), "{shadow}");
    }

    #[test]
    fn a_session_s_point_is_the_same_in_every_release() {
        // Edge proxies of two releases run side by side during an upgrade: both must send a
        // session to the same side, so the point of a key is part of the contract. These
        // are FNV-1a with the 64-bit finaliser, top 53 bits (computed independently).
        for (key, point) in [
            (&b""[..], 0.9247168271715233),
            (b"alice", 0.8019624945897325),
            (b"session-0", 0.3216206558184803),
            (b"\xff\x00", 0.16682845301763904),
        ] {
            assert_eq!(session_point(key), point, "{key:?}");
        }
    }

    #[test]
    fn short_sequential_keys_spread_evenly() {
        // Numeric ids are the common session key; ten equal slices of [0, 1) each get a
        // tenth of 20,000 of them, within 5 %.
        let mut slices = [0u32; 10];
        for i in 0..20_000 {
            let p = session_point(i.to_string().as_bytes());
            assert!((0.0..1.0).contains(&p));
            slices[(p * 10.0) as usize] += 1;
        }
        assert!(
            slices.iter().all(|n| (1_900..=2_100).contains(n)),
            "{slices:?}"
        );
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        assert_eq!(cookie_value("a=1; sid=xyz; b=2", "sid"), Some("xyz"));
        assert_eq!(cookie_value("xsid=1", "sid"), None);
        assert_eq!(cookie_value("garbage", "sid"), None);
    }
}
