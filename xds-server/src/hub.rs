//! The telemetry hub: where the ATRE filters' reports arrive, and from where they go to
//! every part of the control plane that learns from traffic — the forecaster today, the
//! provisioner and state synchronization next. The hub owns no shadow state: the answer
//! to a report (the readiness records) comes from the [`crate::registry::ShadowRegistry`].
//!
//! ```
//! use shadowmesh_xds::hub::{ReportSubscriber, TelemetryHub};
//! use shadowmesh_wire::{TelemetryReport, TELEMETRY_SCHEMA};
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::Arc;
//!
//! #[derive(Default)]
//! struct Counter(AtomicU64);
//! impl ReportSubscriber for Counter {
//!     fn on_report(&self, report: &TelemetryReport, _received_ms: u64) {
//!         self.0.fetch_add(report.services.len() as u64, Ordering::Relaxed);
//!     }
//! }
//! let hub = TelemetryHub::default();
//! let counter = Arc::new(Counter::default());
//! hub.subscribe(counter.clone());
//! let report = TelemetryReport {
//!     schema: TELEMETRY_SCHEMA.into(), proxy: "edge-1".into(), seq: 1,
//!     window_start_ms: 0, window_end_ms: 1_000, services: vec![],
//! };
//! hub.publish(report, 1_000, 120);
//! assert_eq!(hub.reports().len(), 1);
//! ```

use shadowmesh_wire::TelemetryReport;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use tokio::sync::watch;

/// Most reports kept for `GET /v1/telemetry` and for tests…
const KEPT_REPORTS: usize = 4_096;
/// …and most bytes (as received) they may take together.
const KEPT_BYTES: usize = 16 << 20;

/// Something that learns from every accepted telemetry report.
///
/// Called synchronously, in order, on the task that accepted the report: subscribers keep
/// their own work short (the filter is waiting for the answer) and never block.
pub trait ReportSubscriber: Send + Sync {
    /// One accepted report, which arrived at `received_ms` (server clock, Unix ms): its
    /// window is dated by that, not by the proxy's clock.
    fn on_report(&self, report: &TelemetryReport, received_ms: u64);
}

/// Accepted reports, their subscribers, and the count of refused ones. Cheap to clone
/// (shared).
#[derive(Clone, Default)]
pub struct TelemetryHub {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    kept: Mutex<Kept>,
    subscribers: RwLock<Vec<Arc<dyn ReportSubscriber>>>,
    /// Bumped on every accepted report, so callers can await new reports.
    received: watch::Sender<u64>,
}

#[derive(Default)]
struct Kept {
    /// Reports and their size as received.
    reports: VecDeque<(TelemetryReport, usize)>,
    bytes: usize,
    refused: u64,
}

impl TelemetryHub {
    fn kept(&self) -> MutexGuard<'_, Kept> {
        // A poisoned lock only means a panic elsewhere mid-update of plain data; keep serving.
        self.inner.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a subscriber; it sees every report accepted from now on.
    pub fn subscribe(&self, subscriber: Arc<dyn ReportSubscriber>) {
        self.inner
            .subscribers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(subscriber);
    }

    /// Accepts one (already checked) report that arrived at `received_ms` and took
    /// `bytes` on the wire: every subscriber sees it, then it is kept (the oldest go once
    /// [`KEPT_REPORTS`] or [`KEPT_BYTES`] would be exceeded).
    pub fn publish(&self, report: TelemetryReport, received_ms: u64, bytes: usize) {
        for s in self
            .inner
            .subscribers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            s.on_report(&report, received_ms);
        }
        let mut kept = self.kept();
        while !kept.reports.is_empty()
            && (kept.reports.len() >= KEPT_REPORTS || kept.bytes + bytes > KEPT_BYTES)
        {
            if let Some((_, b)) = kept.reports.pop_front() {
                kept.bytes -= b;
            }
        }
        kept.bytes += bytes;
        kept.reports.push_back((report, bytes));
        drop(kept);
        self.inner.received.send_modify(|n| *n += 1);
    }

    /// Counts a report refused as malformed.
    pub fn refuse(&self) {
        self.kept().refused += 1;
    }

    /// All reports kept, oldest first.
    pub fn reports(&self) -> Vec<TelemetryReport> {
        self.kept().reports.iter().map(|(r, _)| r.clone()).collect()
    }

    /// The last `n` reports kept, oldest first.
    pub fn last_reports(&self, n: usize) -> Vec<TelemetryReport> {
        let kept = self.kept();
        let skip = kept.reports.len().saturating_sub(n);
        kept.reports
            .iter()
            .skip(skip)
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// Number of reports refused as malformed.
    pub fn refused(&self) -> u64 {
        self.kept().refused
    }

    /// Waits until `pred` holds for the kept reports (checked on every new report). Does
    /// not time out by itself: callers that must not hang wrap it in a timeout.
    pub async fn wait_for<F: FnMut(&[TelemetryReport]) -> bool>(&self, mut pred: F) {
        let mut rx = self.inner.received.subscribe();
        loop {
            rx.mark_unchanged();
            if pred(self.reports().as_slice()) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}
