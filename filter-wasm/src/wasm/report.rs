//! The lease holder's telemetry: one report per interval for the whole Envoy, and the
//! shadow readiness records the control plane sends back in its answer.

use super::abi::{self, buffer, level, log, map};
use super::{HostStore, Worker, read_plan, read_shadow};
use crate::config::PluginConfig;
use crate::control::supersedes;
use crate::shared::{self, keys};
use shadowmesh_wire::{ShadowRecord, TELEMETRY_SCHEMA, TelemetryAck, TelemetryReport};

/// The telemetry state of the lease holder.
pub(super) struct Reporter {
    /// Proxy name in reports.
    proxy: String,
    /// Sequence number of the last report sent. Starts at the clock (ms): a reporter that
    /// takes over the lease, or a restarted Envoy, continues above every number sent
    /// before (at most one report a millisecond), so the control plane's replay check
    /// never mistakes its reports for replays.
    seq: u64,
    /// Start of the window the next report covers.
    window_start_ms: u64,
    /// Outstanding call and when it was sent.
    pending: Option<(u32, u64)>,
}

impl Reporter {
    /// A reporter for `proxy` (empty: Envoy's `node.id`, resolved at the first report),
    /// whose first window starts at `now_ms`.
    pub(super) fn new(proxy: String, now_ms: u64) -> Reporter {
        Reporter {
            proxy,
            seq: now_ms,
            window_start_ms: now_ms,
            pending: None,
        }
    }

    /// Handles the answer to an HTTP call; ignores calls that are not this reporter's.
    pub(super) fn on_answer(&mut self, token: u32, body_size: usize, worker: &Worker) {
        if self.pending.map(|(t, _)| t) != Some(token) {
            return;
        }
        self.pending = None;
        let status =
            abi::get_header_str(map::HTTP_CALL_RESPONSE_HEADERS, ":status").unwrap_or_default();
        if !status.starts_with('2') {
            worker.metrics.telemetry_failures.add(1);
            log(
                level::WARN,
                &format!("shadowmesh: telemetry report rejected (status {status:?})"),
            );
            return;
        }
        worker.metrics.telemetry_reports.add(1);
        let body = abi::get_buffer(buffer::HTTP_CALL_RESPONSE_BODY, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        if body.is_empty() {
            return;
        }
        match serde_json::from_slice::<TelemetryAck>(&body) {
            Ok(ack) => store_shadow_records(&worker.config, ack.shadows, abi::now_ns() / 1_000_000),
            Err(e) => log(
                level::WARN,
                &format!("shadowmesh: ignoring malformed telemetry answer: {e}"),
            ),
        }
    }

    /// Sends one report covering every service since the last one, unless the previous
    /// report is still unanswered.
    pub(super) fn send(&mut self, worker: &mut Worker, now_ms: u64) {
        let Some(t) = worker.config.telemetry.clone() else {
            return;
        };
        if let Some((_, sent)) = self.pending {
            if now_ms < sent + 2 * t.timeout_ms {
                return; // the previous report is still in flight; its data is not lost, just later
            }
            self.pending = None;
        }
        let Worker {
            config,
            services,
            metrics,
            ..
        } = worker;
        let entries = config
            .services
            .iter()
            .zip(services.iter_mut())
            .map(|(svc, rt)| {
                rt.controller
                    .take_report(svc, &read_shadow(svc, now_ms), &read_plan(svc))
            })
            .collect();
        if self.proxy.is_empty() {
            // Envoy 1.40 names the local node `xds.node`; older releases `node`.
            self.proxy = abi::get_property(&["xds", "node", "id"])
                .or_else(|| abi::get_property(&["node", "id"]))
                .and_then(|b| String::from_utf8(b).ok())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "envoy".into());
        }
        self.seq += 1;
        let report = TelemetryReport {
            schema: TELEMETRY_SCHEMA.into(),
            proxy: self.proxy.clone(),
            seq: self.seq,
            window_start_ms: self.window_start_ms,
            window_end_ms: now_ms,
            services: entries,
        };
        self.window_start_ms = now_ms;
        let Ok(body) = serde_json::to_vec(&report) else {
            return;
        };
        let bearer = t.token.as_ref().map(|token| format!("Bearer {token}"));
        let mut headers = vec![
            (":method", "POST"),
            (":path", t.path.as_str()),
            (":authority", t.authority.as_str()),
            ("content-type", "application/json"),
        ];
        if let Some(b) = &bearer {
            headers.push(("authorization", b.as_str()));
        }
        // The SDK's call (not abi::http_call): only it registers the token with the SDK's
        // dispatcher, which otherwise refuses the response. It maps the statuses Envoy
        // returns for calls (BadArgument, InternalFailure) to errors.
        let timeout = std::time::Duration::from_millis(t.timeout_ms);
        match proxy_wasm::hostcalls::dispatch_http_call(
            &t.cluster,
            headers,
            Some(&body),
            vec![],
            timeout,
        ) {
            Ok(token) => self.pending = Some((token, now_ms)),
            Err(status) => {
                metrics.telemetry_failures.add(1);
                log(
                    level::WARN,
                    &format!(
                        "shadowmesh: cannot send telemetry to cluster {}: {status:?}",
                        t.cluster
                    ),
                );
            }
        }
    }
}

/// Keeps the newest generation of each configured service's shadow record.
fn store_shadow_records(config: &PluginConfig, records: Vec<ShadowRecord>, now_ms: u64) {
    for record in records {
        if !config.services.iter().any(|s| s.name == record.service) {
            continue;
        }
        let key = keys::shadow(&record.service);
        let _ = shared::update_json::<ShadowRecord, _>(&HostStore, &key, |current| {
            supersedes(&record, current, now_ms).then(|| record.clone())
        });
    }
}
