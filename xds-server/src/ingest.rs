//! What a telemetry report must pass before the hub publishes it, so that a forged or
//! broken report cannot move the forecast (and through it the provisioner) by more than
//! its bounds allow:
//!
//! * **Clock**: the server's clock decides. A report whose window ends more than
//!   `max_skew_ms` from the server's now (a proxy clock an hour ahead, a replayed old
//!   report) is refused and counted for its proxy; an accepted report's window is dated by
//!   its arrival ([`CheckedReport::received_ms`]), not by the proxy.
//! * **Replay**: `(proxy, seq)` is accepted once within a window of the proxy's last
//!   `dedup_window` sequence numbers; `seq` counts from the proxy's clock in ms and may not
//!   pass the server's by more than `max_skew_ms`, so no report can push the window past
//!   the reports still to come.
//! * **Bounds**: at most `max_services` entries, each service once, names of the registry's
//!   form; per service at most `max_requests` requests (and redirected and fallback counts
//!   no larger), shares within [0, 1], load scores and latencies finite and non-negative;
//!   the window ordered and at most `max_window_ms` long.
//!
//! **Guarantee.** Each accepted report is dated by the server and adds at most
//! `max_requests` requests per service it names; so one forged report moves a service's
//! demand in the current step by at most `max_requests / step` req/s, and its replays add
//! nothing. Proxies a forger invents are bounded by `max_proxies` tracked (the least
//! recently seen is forgotten first) and, in the forecaster, by its series limit.

use crate::registry::validate_service;
use serde::Serialize;
use shadowmesh_wire::{ClusterTelemetry, TELEMETRY_SCHEMA, TelemetryReport};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// Largest `dedup_window`: 8 KiB of replay memory per proxy.
pub const MAX_DEDUP_WINDOW: u64 = 65_536;
use std::sync::Mutex;

/// Limits of one report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportLimits {
    /// Farthest a report's window end may be from the server's clock (ms).
    pub max_skew_ms: u64,
    /// Longest window (ms).
    pub max_window_ms: u64,
    /// Most service entries in one report.
    pub max_services: usize,
    /// Most requests one service entry may count.
    pub max_requests: u64,
    /// Sequence numbers remembered per proxy for replay detection (one bit each, at most
    /// 65,536).
    pub dedup_window: u64,
    /// Proxies remembered (replay windows, refusal counts).
    pub max_proxies: usize,
}

impl Default for ReportLimits {
    fn default() -> Self {
        ReportLimits {
            max_skew_ms: 30_000,
            max_window_ms: 600_000,
            max_services: 1_000,
            max_requests: 10_000_000,
            dedup_window: 1_024,
            max_proxies: 100_000,
        }
    }
}

/// Why a report was refused: its kind, the field, the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What kind of refusal (a replay is answered 409, the others 400).
    pub kind: RefusalKind,
    /// Path of the field at fault.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// The kinds of refusal, as counted per proxy and in the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// Out of bounds or malformed.
    Invalid,
    /// Window too far from the server's clock.
    Skewed,
    /// `(proxy, seq)` accepted before.
    Replayed,
}

fn refuse(field: impl Into<String>, message: impl Into<String>) -> Refusal {
    Refusal {
        kind: RefusalKind::Invalid,
        field: field.into(),
        message: message.into(),
    }
}

/// A report that passed, with when it arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedReport {
    /// The report.
    pub report: TelemetryReport,
    /// Server time of its arrival (Unix ms): its window ends here.
    pub received_ms: u64,
}

/// Refusals of one proxy, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProxyRefusals {
    /// Window too far from the server's clock.
    pub skewed: u64,
    /// `(proxy, seq)` seen before.
    pub replayed: u64,
    /// Out of bounds or malformed.
    pub invalid: u64,
}

struct ProxyMemory {
    seen: SeqWindow,
    refusals: ProxyRefusals,
    /// Stamp of its last sighting.
    touched: u64,
}

type ProxyTable = (HashMap<String, ProxyMemory>, VecDeque<(String, u64)>, u64);

/// Which of the last `width` sequence numbers below the newest accepted one were seen.
///
/// A fixed ring of bits (bit `seq % width`), allocated once per proxy, so the guard's memory
/// is flat from the first report instead of growing to the window and churning after.
struct SeqWindow {
    newest: Option<u64>,
    bits: Vec<u64>,
    width: u64,
}

impl SeqWindow {
    fn new(width: u64) -> SeqWindow {
        let width = width.max(1);
        SeqWindow {
            newest: None,
            bits: vec![0; width.div_ceil(64) as usize],
            width,
        }
    }

    fn slot(&self, seq: u64) -> (usize, u64) {
        let i = seq % self.width;
        ((i / 64) as usize, 1 << (i % 64))
    }

    /// Records `seq`; false if it was seen before or is older than the window.
    fn insert(&mut self, seq: u64) -> bool {
        match self.newest {
            Some(newest) if seq <= newest => {
                if newest - seq >= self.width {
                    return false;
                }
                let (word, bit) = self.slot(seq);
                if self.bits[word] & bit != 0 {
                    return false;
                }
                self.bits[word] |= bit;
            }
            newest => {
                // Slots of the numbers skipped over now stand for unseen ones.
                match newest {
                    Some(n) if seq - n < self.width => {
                        for skipped in n + 1..seq {
                            let (word, bit) = self.slot(skipped);
                            self.bits[word] &= !bit;
                        }
                    }
                    _ => self.bits.iter_mut().for_each(|w| *w = 0),
                }
                let (word, bit) = self.slot(seq);
                self.bits[word] |= bit;
                self.newest = Some(seq);
            }
        }
        true
    }
}

/// The checks, with the per-proxy memory they need (bounded).
pub struct IngestGuard {
    limits: ReportLimits,
    /// Per proxy its memory; the order in which proxies were seen (with the stamp of each
    /// sighting); the stamp clock.
    proxies: Mutex<ProxyTable>,
}

impl IngestGuard {
    /// A guard with `limits`.
    pub fn new(limits: ReportLimits) -> IngestGuard {
        IngestGuard {
            limits,
            proxies: Mutex::default(),
        }
    }

    /// Its limits.
    pub fn limits(&self) -> &ReportLimits {
        &self.limits
    }

    /// Checks `report` arriving at `now_ms`; records its sequence number if accepted, the
    /// refusal against its proxy if not.
    pub fn check(&self, report: TelemetryReport, now_ms: u64) -> Result<CheckedReport, Refusal> {
        let valid_proxy = valid_proxy_name(&report.proxy);
        let outcome = self
            .bounds(&report)
            .and_then(|()| self.clock(&report, now_ms));
        let mut guard = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        let (proxies, order, clock) = &mut *guard;
        // An invalid proxy name is refused without being remembered.
        if !valid_proxy {
            return Err(refuse(
                "proxy",
                "must be 1 to 128 characters of letters, digits and `._:/-`",
            ));
        }
        if !proxies.contains_key(&report.proxy) && proxies.len() >= self.limits.max_proxies {
            // Forget the least recently seen: stale queue entries (a proxy seen again
            // since) are skipped.
            while let Some((name, stamp)) = order.pop_front() {
                if proxies.get(&name).is_some_and(|m| m.touched == stamp) {
                    proxies.remove(&name);
                    break;
                }
            }
        }
        *clock += 1;
        let stamp = *clock;
        if order.len() > 2 * proxies.len() + 64 {
            // Compact: one entry per proxy, oldest first. At most half the queue is stale
            // entries, so it stays near the number of proxies (amortised O(log n) a report).
            let mut live: Vec<(String, u64)> = proxies
                .iter()
                .map(|(k, m)| (k.clone(), m.touched))
                .collect();
            live.sort_unstable_by_key(|(_, t)| *t);
            *order = live.into();
        }
        order.push_back((report.proxy.clone(), stamp));
        let memory = proxies
            .entry(report.proxy.clone())
            .or_insert_with(|| ProxyMemory {
                seen: SeqWindow::new(self.limits.dedup_window),
                refusals: ProxyRefusals::default(),
                touched: stamp,
            });
        memory.touched = stamp;
        if let Err(r) = outcome {
            match r.kind {
                RefusalKind::Skewed => memory.refusals.skewed += 1,
                RefusalKind::Invalid | RefusalKind::Replayed => memory.refusals.invalid += 1,
            }
            return Err(r);
        }
        if !memory.seen.insert(report.seq) {
            memory.refusals.replayed += 1;
            return Err(Refusal {
                kind: RefusalKind::Replayed,
                ..refuse(
                    "seq",
                    format!("{} was received before (or is too old)", report.seq),
                )
            });
        }
        Ok(CheckedReport {
            report,
            received_ms: now_ms,
        })
    }

    /// Refusals by proxy.
    pub fn refusals(&self) -> BTreeMap<String, ProxyRefusals> {
        let guard = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .0
            .iter()
            .filter(|(_, m)| m.refusals != ProxyRefusals::default())
            .map(|(p, m)| (p.clone(), m.refusals.clone()))
            .collect()
    }

    fn clock(&self, r: &TelemetryReport, now_ms: u64) -> Result<(), Refusal> {
        // The filter numbers its reports from its clock in ms, one a report: a number past
        // the server's clock would move the proxy's replay window ahead of every real
        // report to come (each then refused as too old).
        let latest = now_ms.saturating_add(self.limits.max_skew_ms);
        if r.seq > latest {
            return Err(Refusal {
                kind: RefusalKind::Skewed,
                ..refuse(
                    "seq",
                    format!(
                        "{} is past the server's clock in ms ({now_ms}) by more than {} ms",
                        r.seq, self.limits.max_skew_ms
                    ),
                )
            });
        }
        if r.window_end_ms.abs_diff(now_ms) > self.limits.max_skew_ms {
            return Err(Refusal {
                kind: RefusalKind::Skewed,
                ..refuse(
                    "window_end_ms",
                    format!(
                        "{} is {:.1} s from the server's clock; at most {:.1} s is accepted",
                        r.window_end_ms,
                        r.window_end_ms.abs_diff(now_ms) as f64 / 1e3,
                        self.limits.max_skew_ms as f64 / 1e3
                    ),
                )
            });
        }
        Ok(())
    }

    fn bounds(&self, r: &TelemetryReport) -> Result<(), Refusal> {
        let l = &self.limits;
        if r.schema != TELEMETRY_SCHEMA {
            return Err(refuse(
                "schema",
                format!("expected {TELEMETRY_SCHEMA:?}, got {:?}", r.schema),
            ));
        }
        if r.window_start_ms > r.window_end_ms {
            return Err(refuse("window_start_ms", "is after window_end_ms"));
        }
        if r.window_end_ms - r.window_start_ms > l.max_window_ms {
            return Err(refuse(
                "window_start_ms",
                format!("the window is longer than {} ms", l.max_window_ms),
            ));
        }
        if r.services.len() > l.max_services {
            return Err(refuse(
                "services",
                format!("{} entries; at most {}", r.services.len(), l.max_services),
            ));
        }
        let mut names = BTreeSet::new();
        for (i, s) in r.services.iter().enumerate() {
            let at = |f: &str| format!("services[{i}].{f}");
            validate_service(&s.service).map_err(|e| refuse(at("service"), e.message))?;
            if !names.insert(s.service.as_str()) {
                return Err(refuse(at("service"), "listed twice"));
            }
            for (field, v) in [
                ("requests", s.requests),
                ("redirected", s.redirected),
                ("fallbacks", s.fallbacks),
            ] {
                if v > l.max_requests {
                    return Err(refuse(at(field), format!("{v} exceeds {}", l.max_requests)));
                }
            }
            if s.redirected > s.requests || s.fallbacks > s.requests {
                return Err(refuse(at("redirected"), "more than the requests"));
            }
            if !(s.redirect_share.is_finite() && (0.0..=1.0).contains(&s.redirect_share)) {
                return Err(refuse(at("redirect_share"), "must be within [0, 1]"));
            }
            cluster(&s.primary, l).map_err(|(f, m)| refuse(at(&format!("primary.{f}")), m))?;
            cluster(&s.shadow, l).map_err(|(f, m)| refuse(at(&format!("shadow.{f}")), m))?;
        }
        Ok(())
    }
}

/// Letters, digits and `._:/-`, 1 to 128 characters (Envoy node ids, pod names).
pub(crate) fn valid_proxy_name(p: &str) -> bool {
    (1..=128).contains(&p.len())
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'-'))
}

fn cluster(c: &ClusterTelemetry, l: &ReportLimits) -> Result<(), (String, String)> {
    let finite = |field: &str, v: f64| -> Result<(), (String, String)> {
        if v.is_finite() && (0.0..1e9).contains(&v) {
            Ok(())
        } else {
            Err((
                field.to_string(),
                format!("{v} is not a finite non-negative number"),
            ))
        }
    };
    for (field, v) in [
        ("requests", c.requests),
        ("in_flight", c.in_flight),
        ("orca_reports", c.orca_reports),
        ("orca_malformed", c.orca_malformed),
        ("latency_ms.count", c.latency_ms.count),
    ] {
        if v > l.max_requests {
            return Err((field.to_string(), format!("{v} exceeds {}", l.max_requests)));
        }
    }
    finite("load_score", c.load_score)?;
    let lat = &c.latency_ms;
    for (field, v) in [
        ("latency_ms.mean", lat.mean),
        ("latency_ms.p50", lat.p50),
        ("latency_ms.p90", lat.p90),
        ("latency_ms.p99", lat.p99),
        ("latency_ms.max", lat.max),
    ] {
        finite(field, v)?;
    }
    // The filter refuses ORCA utilizations above 100 (`filter-wasm/src/orca.rs`), and
    // counts load against at least one request and at most a `max_in_flight` (a u32).
    if let Some(u) = c.orca_utilization
        && !(0.0..=100.0).contains(&u)
    {
        return Err((
            "orca_utilization".to_string(),
            format!("{u} is not within 0..=100"),
        ));
    }
    if let Some(k) = c.capacity_in_flight
        && !(1.0..=f64::from(u32::MAX)).contains(&k)
    {
        return Err((
            "capacity_in_flight".to_string(),
            format!("{k} is not within 1..={}", u32::MAX),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shadowmesh_wire::{RedirectState, ServiceTelemetry};

    fn report(proxy: &str, seq: u64, end_ms: u64) -> TelemetryReport {
        TelemetryReport {
            schema: TELEMETRY_SCHEMA.into(),
            proxy: proxy.into(),
            seq,
            window_start_ms: end_ms - 1_000,
            window_end_ms: end_ms,
            services: vec![ServiceTelemetry {
                service: "checkout".into(),
                requests: 100,
                redirected: 10,
                fallbacks: 0,
                state: RedirectState::Normal,
                redirect_share: 0.1,
                primary: ClusterTelemetry::default(),
                shadow: ClusterTelemetry::default(),
            }],
        }
    }

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn the_servers_clock_decides_and_skewed_reports_are_counted() {
        let g = IngestGuard::new(ReportLimits::default());
        let ok = g.check(report("edge-1", 1, NOW - 500), NOW).unwrap();
        assert_eq!(ok.received_ms, NOW);
        let hour_ahead = g
            .check(report("edge-1", 2, NOW + 3_600_000), NOW)
            .unwrap_err();
        assert_eq!(hour_ahead.field, "window_end_ms");
        assert_eq!(g.refusals()["edge-1"].skewed, 1);
    }

    #[test]
    fn a_replay_counts_once() {
        let g = IngestGuard::new(ReportLimits::default());
        g.check(report("edge-1", 7, NOW), NOW).unwrap();
        for _ in 0..10 {
            let r = g.check(report("edge-1", 7, NOW), NOW).unwrap_err();
            assert_eq!(r.kind, RefusalKind::Replayed);
        }
        assert_eq!(g.refusals()["edge-1"].replayed, 10);
        // Another proxy's 7 is its own.
        g.check(report("edge-2", 7, NOW), NOW).unwrap();
        // Far behind the window: refused as a replay too.
        let g = IngestGuard::new(ReportLimits {
            dedup_window: 4,
            ..ReportLimits::default()
        });
        for seq in [10, 11, 12, 13, 14] {
            g.check(report("p", seq, NOW), NOW).unwrap();
        }
        assert_eq!(
            g.check(report("p", 9, NOW), NOW).unwrap_err().kind,
            RefusalKind::Replayed
        );
    }

    proptest::proptest! {
        /// The bit ring answers like the set of every accepted number: refused iff seen
        /// before or at least `width` below the newest.
        #[test]
        fn seq_window_matches_the_set_of_all_accepted(
            width in 1u64..200,
            seqs in proptest::collection::vec(0u64..600, 0..400),
        ) {
            let mut ring = SeqWindow::new(width);
            let mut all = BTreeSet::new();
            for seq in seqs {
                let newest = all.last().copied();
                let expected = !all.contains(&seq)
                    && newest.is_none_or(|n: u64| seq + width > n);
                proptest::prop_assert_eq!(ring.insert(seq), expected, "seq {}", seq);
                if expected {
                    all.insert(seq);
                }
            }
        }
    }

    #[test]
    fn absurd_values_are_refused_naming_the_field() {
        let g = IngestGuard::new(ReportLimits::default());
        type Corruption = Box<dyn Fn(&mut TelemetryReport)>;
        let cases: Vec<(Corruption, &str)> = vec![
            (
                Box::new(|r| r.services[0].requests = u64::MAX),
                "services[0].requests",
            ),
            (
                Box::new(|r| r.services[0].redirect_share = -7.5e300),
                "services[0].redirect_share",
            ),
            (
                Box::new(|r| r.services[0].primary.load_score = -1.0),
                "services[0].primary.load_score",
            ),
            (
                Box::new(|r| r.services[0].primary.latency_ms.p99 = f64::NAN),
                "services[0].primary.latency_ms.p99",
            ),
            (
                Box::new(|r| r.services[0].shadow.capacity_in_flight = Some(f64::INFINITY)),
                "services[0].shadow.capacity_in_flight",
            ),
            (
                Box::new(|r| r.services[0].shadow.capacity_in_flight = Some(0.5)),
                "services[0].shadow.capacity_in_flight",
            ),
            (
                Box::new(|r| r.services[0].primary.capacity_in_flight = Some(5e9)),
                "services[0].primary.capacity_in_flight",
            ),
            (
                Box::new(|r| r.services[0].primary.orca_utilization = Some(101.0)),
                "services[0].primary.orca_utilization",
            ),
            (
                Box::new(|r| r.window_start_ms = r.window_end_ms + 1),
                "window_start_ms",
            ),
            (
                Box::new(|r| r.services[0].service = "../x".into()),
                "services[0].service",
            ),
            (
                Box::new(|r| r.services.push(r.services[0].clone())),
                "services[1].service",
            ),
            (
                Box::new(|r| r.services[0].redirected = 101),
                "services[0].redirected",
            ),
            (Box::new(|r| r.proxy = "x".repeat(200)), "proxy"),
        ];
        for (i, (mutate, field)) in cases.iter().enumerate() {
            let mut r = report("edge-1", i as u64 + 1, NOW);
            mutate(&mut r);
            assert_eq!(g.check(r, NOW).unwrap_err().field, *field);
        }
    }

    #[test]
    fn proxies_remembered_are_bounded() {
        let g = IngestGuard::new(ReportLimits {
            max_proxies: 3,
            ..ReportLimits::default()
        });
        for p in 0..10 {
            g.check(report(&format!("p{p}"), 1, NOW), NOW).unwrap();
        }
        assert_eq!(g.proxies.lock().unwrap().0.len(), 3);
    }
}
