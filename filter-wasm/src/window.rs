//! Traffic windows: what the workers count between ticks, merged across workers in shared
//! data, consumed by the controller each tick and summed into telemetry reports.
//!
//! A window records what was *actually* done with the traffic — where each request went,
//! with or without a session, and which sessions' requests the read-your-writes rule kept
//! on the primary — not what the plan intended: the controller's demand estimate divides
//! by the share that really left the primary ([`RouteCounts::shadow_share`]).

use crate::load::LatencyHistogram;
use serde::{Deserialize, Serialize};
use shadowmesh_wire::ClusterTelemetry;

/// Which cluster a request was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The primary (the route's default).
    Primary,
    /// The shadow (the routing header was set).
    Shadow,
}

impl Side {
    /// 0 for the primary, 1 for the shadow: the index of per-side arrays.
    pub fn index(self) -> usize {
        match self {
            Side::Primary => 0,
            Side::Shadow => 1,
        }
    }
}

/// Counts for one cluster (primary or shadow) of one service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterWindow {
    /// Latency of completed requests; its `count` is the number of completed requests.
    pub latency: LatencyHistogram,
    /// Sum of well-formed ORCA utilizations.
    pub orca_sum: f64,
    /// Number of well-formed ORCA reports.
    pub orca_reports: u64,
    /// Number of malformed ORCA headers ignored.
    pub orca_malformed: u64,
}

/// Where the requests of a window went, by kind: what was measured, not what the plan
/// intended (a session the plan pins to the shadow may be held on the primary until the
/// shadows have its latest state; a redirect may fall back).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouteCounts {
    /// Requests without a session key: to the primary, to the shadow.
    pub plain: [u64; 2],
    /// Requests with a session key: to the primary, to the shadow.
    pub session: [u64; 2],
    /// Session requests the plan pinned to the shadow that read-your-writes kept on the
    /// primary (their latest state was not acknowledged yet). Counted in `session[0]` too.
    pub held: u64,
}

impl RouteCounts {
    /// Counts one routed request.
    pub fn count(&mut self, with_session: bool, side: Side, held: bool) {
        let by_side = if with_session {
            &mut self.session
        } else {
            &mut self.plain
        };
        by_side[side.index()] += 1;
        self.held += u64::from(held);
    }

    /// All requests routed.
    pub fn total(&self) -> u64 {
        self.plain[0] + self.plain[1] + self.session[0] + self.session[1]
    }

    /// Requests sent to the shadow.
    pub fn to_shadow(&self) -> u64 {
        self.plain[1] + self.session[1]
    }

    /// Requests with a session key.
    pub fn with_session(&self) -> u64 {
        self.session[0] + self.session[1]
    }

    /// The share of all requests that went to the shadow (0 without traffic).
    pub fn shadow_share(&self) -> f64 {
        ratio(self.to_shadow(), self.total())
    }

    /// The share of requests that carried a session key (0 without traffic).
    pub fn session_fraction(&self) -> f64 {
        ratio(self.with_session(), self.total())
    }

    /// The share of session requests held on the primary by read-your-writes.
    pub fn held_fraction(&self) -> f64 {
        ratio(self.held, self.with_session())
    }

    fn merge(&mut self, other: &RouteCounts) {
        for i in 0..2 {
            self.plain[i] += other.plain[i];
            self.session[i] += other.session[i];
        }
        self.held += other.held;
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Number of equal slices of the session-point line `[0, 1)` that [`SessionSpread`] counts.
pub const SPREAD_SLICES: usize = 64;

/// Session requests by where their key's point ([`crate::decision::session_point`]) falls,
/// in [`SPREAD_SLICES`] equal slices of `[0, 1)`.
///
/// Sessions go to the shadow when their point is below a threshold, so the share of
/// session *traffic* a threshold moves is the share of requests below it — which depends
/// on how many keys there are and how busy each is: with 20 keys, one busy key can carry a
/// tenth of the traffic. Counting requests by slice lets the controller choose the
/// threshold that moves the share it needs in one step, instead of creeping up on it (a
/// threshold only rises during a surge: sessions stay where they were sent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionSpread {
    /// Sparse `(slice, count)` pairs in the serialised form.
    #[serde(with = "sparse_slices")]
    counts: [u64; SPREAD_SLICES],
}

impl Default for SessionSpread {
    fn default() -> Self {
        SessionSpread {
            counts: [0; SPREAD_SLICES],
        }
    }
}

impl SessionSpread {
    /// The slice a point in `[0, 1)` falls in (points outside are clamped).
    pub fn slice_of(point: f64) -> usize {
        let s = (point * SPREAD_SLICES as f64) as isize;
        s.clamp(0, SPREAD_SLICES as isize - 1) as usize
    }

    /// Counts one session request at `point`.
    pub fn count(&mut self, point: f64) {
        self.counts[Self::slice_of(point)] += 1;
    }

    /// Requests counted per slice.
    pub fn counts(&self) -> &[u64; SPREAD_SLICES] {
        &self.counts
    }

    /// Requests counted in all.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn merge(&mut self, other: &SessionSpread) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += *b;
        }
    }
}

mod sparse_slices {
    use super::SPREAD_SLICES;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        counts: &[u64; SPREAD_SLICES],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let pairs: Vec<(u8, u64)> = counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| (i as u8, *c))
            .collect();
        pairs.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u64; SPREAD_SLICES], D::Error> {
        let pairs = Vec::<(u8, u64)>::deserialize(d)?;
        let mut counts = [0; SPREAD_SLICES];
        for (i, c) in pairs {
            let slot: &mut u64 = counts
                .get_mut(i as usize)
                .ok_or_else(|| serde::de::Error::custom("slice out of range"))?;
            *slot = slot.saturating_add(c);
        }
        Ok(counts)
    }
}

/// One worker's part of a window: what it counted, and over how long. Workers flush at
/// moments of their own, and one that stalled flushes a longer stretch at once: a rate is
/// each worker's counts over its own span, summed — not everything over the controller's
/// tick, which would count a late worker's stretch twice in one tick and not at all in the
/// one before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerSpan {
    /// How long it counted (ms): from its last flush into shared data to this one.
    pub span_ms: u64,
    /// Requests it started.
    pub started: u64,
    /// Of those, sent to the shadow.
    pub to_shadow: u64,
    /// Requests it saw complete: primary, shadow.
    pub completed: [u64; 2],
    /// In-flight time of its requests (µs: the integral of its in-flight count,
    /// [`crate::load::BusyClock`]): primary, shadow. Over the span it is the worker's mean
    /// concurrency — exactly, with requests that have not completed yet.
    pub busy_us: [u64; 2],
}

impl WorkerSpan {
    fn merge(&mut self, other: &WorkerSpan) {
        self.span_ms = self.span_ms.saturating_add(other.span_ms);
        self.started = self.started.saturating_add(other.started);
        self.to_shadow = self.to_shadow.saturating_add(other.to_shadow);
        for i in 0..2 {
            self.completed[i] = self.completed[i].saturating_add(other.completed[i]);
            self.busy_us[i] = self.busy_us[i].saturating_add(other.busy_us[i]);
        }
    }
}

/// Counts for one service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceWindow {
    /// Where requests went, by kind, as they started.
    pub routed: RouteCounts,
    /// Requests that wanted the shadow but had to go to the primary (no ready shadow).
    pub fallbacks: u64,
    /// Session requests by session point.
    pub spread: SessionSpread,
    /// Primary side.
    pub primary: ClusterWindow,
    /// Shadow side.
    pub shadow: ClusterWindow,
    /// Each worker's span and rates' numerators, by the worker's identity.
    pub workers: std::collections::BTreeMap<u64, WorkerSpan>,
}

impl ClusterWindow {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &ClusterWindow) {
        self.latency.merge(&other.latency);
        self.orca_sum += other.orca_sum;
        self.orca_reports += other.orca_reports;
        self.orca_malformed += other.orca_malformed;
    }

    /// Mean ORCA utilization, if any report arrived.
    pub fn orca_mean(&self) -> Option<f64> {
        (self.orca_reports > 0).then(|| self.orca_sum / self.orca_reports as f64)
    }

    /// The wire form; `in_flight`, `load_score` and `capacity` are the controller's current
    /// view.
    pub fn telemetry(
        &self,
        cluster: &str,
        in_flight: u64,
        load_score: f64,
        capacity: Option<f64>,
    ) -> ClusterTelemetry {
        ClusterTelemetry {
            cluster: cluster.to_string(),
            requests: self.latency.count,
            in_flight,
            load_score,
            latency_ms: self.latency.summary(),
            orca_utilization: self.orca_mean(),
            orca_reports: self.orca_reports,
            orca_malformed: self.orca_malformed,
            capacity_in_flight: capacity,
        }
    }
}

impl ServiceWindow {
    /// Counts one request as it is sent: with its session's point if it has one, the side
    /// it went to, and whether read-your-writes held it on the primary.
    pub fn count_route(&mut self, session_point: Option<f64>, side: Side, held: bool) {
        self.routed.count(session_point.is_some(), side, held);
        if let Some(p) = session_point {
            self.spread.count(p);
        }
    }

    /// The cluster window of `side`.
    pub fn side_mut(&mut self, side: Side) -> &mut ClusterWindow {
        match side {
            Side::Primary => &mut self.primary,
            Side::Shadow => &mut self.shadow,
        }
    }

    /// Requests sent to the shadow.
    pub fn redirected(&self) -> u64 {
        self.routed.to_shadow()
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &ServiceWindow) {
        self.routed.merge(&other.routed);
        self.fallbacks += other.fallbacks;
        self.spread.merge(&other.spread);
        self.primary.merge(&other.primary);
        self.shadow.merge(&other.shadow);
        for (id, span) in &other.workers {
            self.workers.entry(*id).or_default().merge(span);
        }
    }

    /// Closes this worker's part of its own, not yet merged window before it goes to
    /// shared data: `span_ms` more since it last closed it, its in-flight time `busy_us`
    /// over them, and its starts and completions as the window counts them (a window kept
    /// after a failed merge is closed again, its span longer).
    pub fn close_span(&mut self, worker: u64, span_ms: u64, busy_us: [u64; 2]) {
        let (started, to_shadow) = (self.routed.total(), self.routed.to_shadow());
        let completed = [self.primary.latency.count, self.shadow.latency.count];
        let mine = self.workers.entry(worker).or_default();
        mine.span_ms = mine.span_ms.saturating_add(span_ms);
        mine.busy_us = [
            mine.busy_us[0].saturating_add(busy_us[0]),
            mine.busy_us[1].saturating_add(busy_us[1]),
        ];
        mine.started = started;
        mine.to_shadow = to_shadow;
        mine.completed = completed;
    }

    /// True when nothing was counted.
    pub fn is_empty(&self) -> bool {
        *self == ServiceWindow::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_everything() {
        let mut a = ServiceWindow::default();
        a.count_route(None, Side::Shadow, false);
        a.count_route(Some(0.7), Side::Primary, true);
        a.primary.latency.record(1_000);
        a.close_span(7, 60, [500, 0]);
        // Kept after a failed merge and closed again: the span grows, the counts are the
        // window's.
        a.close_span(7, 40, [400, 0]);
        assert_eq!(
            a.workers[&7],
            WorkerSpan {
                span_ms: 100,
                started: 2,
                to_shadow: 1,
                completed: [1, 0],
                busy_us: [900, 0],
            }
        );
        a.primary.orca_sum = 0.5;
        a.primary.orca_reports = 1;
        let mut b = a.clone();
        b.shadow.orca_malformed = 2;
        b.fallbacks = 3;
        a.merge(&b);
        assert_eq!(a.redirected(), 2);
        assert_eq!(a.routed.plain, [0, 2]);
        assert_eq!(a.routed.session, [2, 0]);
        assert_eq!(a.routed.held, 2);
        assert_eq!(a.fallbacks, 3);
        assert_eq!(a.spread.counts()[SessionSpread::slice_of(0.7)], 2);
        assert_eq!(a.spread.total(), 2);
        assert_eq!(a.primary.latency.count, 2);
        assert_eq!(
            a.workers[&7],
            WorkerSpan {
                span_ms: 200,
                started: 4,
                to_shadow: 2,
                completed: [2, 0],
                busy_us: [1_800, 0],
            },
            "the same worker's spans add up"
        );
        assert_eq!(a.primary.orca_mean(), Some(0.5));
        assert_eq!(a.shadow.orca_malformed, 2);
        assert!(!a.is_empty());
        assert!(ServiceWindow::default().is_empty());
        let t = a.primary.telemetry("p", 3, 0.7, Some(8.0));
        assert_eq!((t.requests, t.in_flight, t.orca_reports), (2, 3, 2));
        assert_eq!(t.capacity_in_flight, Some(8.0));
    }

    #[test]
    fn shares_are_of_what_was_routed() {
        let mut r = RouteCounts::default();
        assert_eq!(
            (r.shadow_share(), r.session_fraction(), r.held_fraction()),
            (0.0, 0.0, 0.0)
        );
        // 3 plain (1 to the shadow), 5 with a session (2 to the shadow, 1 held).
        for side in [Side::Primary, Side::Primary, Side::Shadow] {
            r.count(false, side, false);
        }
        for (side, held) in [
            (Side::Shadow, false),
            (Side::Shadow, false),
            (Side::Primary, true),
            (Side::Primary, false),
            (Side::Primary, false),
        ] {
            r.count(true, side, held);
        }
        assert_eq!(r.total(), 8);
        assert_eq!(r.to_shadow(), 3);
        assert_eq!(r.shadow_share(), 3.0 / 8.0);
        assert_eq!(r.session_fraction(), 5.0 / 8.0);
        assert_eq!(r.held_fraction(), 1.0 / 5.0);
    }

    #[test]
    fn spread_slices_cover_the_unit_line() {
        assert_eq!(SessionSpread::slice_of(0.0), 0);
        assert_eq!(SessionSpread::slice_of(0.999_999), SPREAD_SLICES - 1);
        assert_eq!(SessionSpread::slice_of(1.0 / SPREAD_SLICES as f64), 1);
        assert_eq!(SessionSpread::slice_of(-1.0), 0);
        assert_eq!(SessionSpread::slice_of(7.0), SPREAD_SLICES - 1);
        let mut s = SessionSpread::default();
        s.count(0.5);
        s.count(0.5);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"counts":[[32,2]]}"#);
        assert_eq!(serde_json::from_str::<SessionSpread>(&json).unwrap(), s);
        assert!(serde_json::from_str::<SessionSpread>(r#"{"counts":[[64,1]]}"#).is_err());
    }
}
