//! State synchronization's calls to the relay: the lease holder's per-tick publish
//! (publishers) and long poll (subscribers), and the event mode's publish of one session
//! from a request's context.

use super::abi::{self, buffer, level, log, map};
use super::{HostStore, Worker};
use crate::config::{PluginConfig, ServiceConfig};
use crate::session_state::{Outbound, SessionTable, StateRole, StateSyncConfig, Watched};
use crate::shared::{self, SharedStore};
use shadowmesh_wire::{STATE_SCHEMA, StatePublish, StatePublishAck, StatePull, StatePullAnswer};

/// Sessions in one publish, at most.
const MAX_BATCH: usize = 512;

/// The service's session table.
pub(super) fn table<'a>(svc: &'a ServiceConfig, sync: &StateSyncConfig) -> SessionTable<'a> {
    SessionTable::new(&HostStore, &svc.name, sync.max_sessions)
}

/// This Envoy's incarnation for state sync: the first worker to configure picks it (a
/// random number), every worker reads the same — a restarted Envoy has a new one.
const INCARNATION_KEY: &str = "shadowmesh.v1.ssm.incarnation";

/// Claims the incarnation with `candidate` unless a worker of this Envoy already has.
pub(super) fn claim_incarnation(candidate: u64) {
    let _ = shared::update_json::<u64, _>(&HostStore, INCARNATION_KEY, |current| {
        current.is_none().then_some(candidate.max(1))
    });
}

fn epoch_key(service: &str) -> String {
    format!("shadowmesh.v1.ssm.{service}.epoch")
}

/// The lookup of one session.
pub(super) fn lookup_body(svc: &ServiceConfig, session: &str) -> Vec<u8> {
    serde_json::to_vec(&shadowmesh_wire::StateLookup {
        schema: STATE_SCHEMA.into(),
        service: svc.name.clone(),
        session: session.to_string(),
    })
    .unwrap_or_default()
}

/// A lookup's answer, if the call succeeded.
pub(super) fn lookup_answer(body_size: usize) -> Option<shadowmesh_wire::StateLookupAnswer> {
    let body = answer_body(body_size)?;
    serde_json::from_slice(&body).ok()
}

fn cursor_key(service: &str) -> String {
    format!("shadowmesh.v1.ssm.{service}.cursor")
}

/// The proxy's name for the relay: `proxy_id`, else Envoy's node id.
pub(super) fn proxy_name(config: &PluginConfig) -> String {
    config
        .proxy_id
        .clone()
        .or_else(|| {
            abi::get_property(&["xds", "node", "id"])
                .or_else(|| abi::get_property(&["node", "id"]))
                .and_then(|b| String::from_utf8(b).ok())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "envoy".into())
}

/// A POST to the relay; the call's token.
pub(super) fn post(
    sync: &StateSyncConfig,
    path: &str,
    body: &[u8],
    timeout_ms: u64,
) -> Option<u32> {
    let bearer = sync.token.as_ref().map(|t| format!("Bearer {t}"));
    let mut headers = vec![
        (":method", "POST"),
        (":path", path),
        (":authority", sync.authority.as_str()),
        ("content-type", "application/json"),
    ];
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    // The SDK's call registers the token with its dispatcher (see report.rs).
    proxy_wasm::hostcalls::dispatch_http_call(
        &sync.cluster,
        headers,
        Some(body),
        vec![],
        std::time::Duration::from_millis(timeout_ms),
    )
    .ok()
}

/// The publish message of `out` for `svc`.
pub(super) fn publish_body(
    config: &PluginConfig,
    svc: &ServiceConfig,
    out: Outbound,
    wait_ack_ms: u64,
) -> Vec<u8> {
    let epoch = shared::read_counter(&HostStore, &epoch_key(&svc.name));
    let message = StatePublish {
        schema: STATE_SCHEMA.into(),
        publisher: proxy_name(config),
        service: svc.name.clone(),
        epoch,
        incarnation: shared::read_json(&HostStore, INCARNATION_KEY).unwrap_or(0),
        deltas: out.deltas,
        snapshots: out.snapshots,
        watch: out.watch,
        wait_ack_ms,
    };
    serde_json::to_vec(&message).unwrap_or_default()
}

/// The body of a call's answer if it succeeded (2xx).
fn answer_body(body_size: usize) -> Option<Vec<u8>> {
    let status =
        abi::get_header_str(map::HTTP_CALL_RESPONSE_HEADERS, ":status").unwrap_or_default();
    if !status.starts_with('2') {
        return None;
    }
    abi::get_buffer(buffer::HTTP_CALL_RESPONSE_BODY, 0, body_size)
        .ok()
        .flatten()
}

/// Applies a publish's answer (or its failure: `None`) to the table: acknowledged
/// versions, gaps, a relay restart, or the sessions to resend whole.
pub(super) fn on_publish_answer(
    svc: &ServiceConfig,
    sync: &StateSyncConfig,
    sessions: &[String],
    body_size: Option<usize>,
    metrics: &super::metrics::StateMetrics,
) {
    let t = table(svc, sync);
    let ack = body_size
        .and_then(answer_body)
        .and_then(|b| serde_json::from_slice::<StatePublishAck>(&b).ok());
    let Some(ack) = ack else {
        metrics.publish_failures.add(1);
        t.resend_whole(sessions);
        return;
    };
    metrics.publishes.add(1);
    let key = epoch_key(&svc.name);
    let known = shared::read_counter(&HostStore, &key);
    if known != ack.epoch {
        if known != 0 {
            // The relay restarted without its memory: everything goes again, whole.
            log(
                level::INFO,
                &format!(
                    "shadowmesh: state relay restarted (service {}); resending every session",
                    svc.name
                ),
            );
            t.reset_replication();
        }
        let _ = HostStore.set(&key, &ack.epoch.to_le_bytes(), None);
        if known != 0 {
            return;
        }
    }
    t.on_ack(&ack.acked, &ack.resync);
}

/// A dropped state change: counted and logged; its session stays on the primary.
pub(super) fn dropped(
    svc: &ServiceConfig,
    metrics: &super::metrics::StateMetrics,
    reason: crate::session_state::DropReason,
) {
    metrics.dropped.add(1);
    log(
        level::WARN,
        &format!(
            "shadowmesh: state change of service {} dropped ({}); the session stays on the primary",
            svc.name,
            reason.as_str()
        ),
    );
}

/// Per tick, on every worker: moves the changes captured on it into the session tables
/// (what the host refused stays queued for the next tick).
pub(super) fn flush_captures(worker: &mut Worker, now_ms: u64) {
    for (svc, rt) in worker
        .config
        .services
        .iter()
        .zip(worker.services.iter_mut())
    {
        let Some(sync) = &svc.state_sync else {
            continue;
        };
        if rt.state_queue.is_empty() {
            continue;
        }
        let flushed = table(svc, sync).flush(rt.state_queue.take(), sync, now_ms);
        rt.metrics.state.captured.add(flushed.captured);
        for (_, reason) in &flushed.dropped {
            dropped(svc, &rt.metrics.state, *reason);
        }
        rt.state_queue.requeue(flushed.retry);
    }
}

/// The lease holder's state-sync calls in flight.
#[derive(Default)]
pub(super) struct Syncer {
    pending: Vec<Call>,
    /// Per service, the buckets that may hold unacknowledged sessions (every bucket at a
    /// sweep, so also when this worker takes the publishing over).
    watched: Vec<Watched>,
    /// Ticks since this worker took the publishing over (0: it just did — sweep).
    ticks: u64,
}

/// Every this many publishing ticks every bucket is read once (a dirty mark the host
/// refused delays a version by at most this, never strands it).
const SWEEP_TICKS: u64 = 50;

struct Call {
    token: u32,
    service: usize,
    sent_ms: u64,
    kind: CallKind,
}

enum CallKind {
    Publish(Vec<String>),
    Pull,
}

impl Syncer {
    fn busy(&mut self, service: usize, now_ms: u64, limit_ms: u64) -> bool {
        // A call unanswered for long (host lost it) no longer blocks the next.
        self.pending
            .retain(|c| c.service != service || now_ms < c.sent_ms + limit_ms);
        self.pending.iter().any(|c| c.service == service)
    }

    /// Per tick on a worker without the lease: another worker publishes.
    pub(super) fn idle(&mut self) {
        self.ticks = 0;
    }

    /// Per tick, on the lease holder: publish what changed, or pull what the relay has.
    pub(super) fn tick(&mut self, worker: &Worker, now_ms: u64) {
        let services = worker.config.services.len();
        let mut watched = std::mem::take(&mut self.watched);
        watched.resize(services, Watched::default());
        let sweep = self.ticks.is_multiple_of(SWEEP_TICKS);
        self.ticks += 1;
        if sweep {
            watched.fill(Watched::default());
        }
        for (i, svc) in worker.config.services.iter().enumerate() {
            let Some(sync) = &svc.state_sync else {
                continue;
            };
            match sync.role {
                StateRole::Publisher => {
                    if self.busy(i, now_ms, 2 * sync.timeout_ms) {
                        continue;
                    }
                    let t = table(svc, sync);
                    if sweep {
                        t.sweep();
                    }
                    let out = t.take_outbound(MAX_BATCH, &mut watched[i]);
                    if out.is_empty() {
                        continue;
                    }
                    let sessions = out.sessions.clone();
                    let body = publish_body(&worker.config, svc, out, 0);
                    match post(sync, "/v1/state/publish", &body, sync.timeout_ms) {
                        Some(token) => self.pending.push(Call {
                            token,
                            service: i,
                            sent_ms: now_ms,
                            kind: CallKind::Publish(sessions),
                        }),
                        None => {
                            worker.services[i].metrics.state.publish_failures.add(1);
                            table(svc, sync).resend_whole(&sessions);
                        }
                    }
                }
                StateRole::Subscriber => {
                    if !self.busy(i, now_ms, sync.wait_ms + 2 * sync.timeout_ms) {
                        self.pull(worker, i, now_ms);
                    }
                }
            }
        }
        self.watched = watched;
    }

    fn pull(&mut self, worker: &Worker, i: usize, now_ms: u64) {
        let svc = &worker.config.services[i];
        let Some(sync) = &svc.state_sync else { return };
        // (An older filter's two-number cursor does not decode: a full snapshot then.)
        let (epoch, cursor, page_after): (u64, u64, Option<String>) =
            shared::read_json(&HostStore, &cursor_key(&svc.name)).unwrap_or((0, 0, None));
        let message = StatePull {
            schema: STATE_SCHEMA.into(),
            subscriber: proxy_name(&worker.config),
            service: svc.name.clone(),
            epoch,
            cursor,
            wait_ms: sync.wait_ms,
            page_after,
        };
        let body = serde_json::to_vec(&message).unwrap_or_default();
        if let Some(token) = post(
            sync,
            "/v1/state/pull",
            &body,
            sync.wait_ms + sync.timeout_ms,
        ) {
            self.pending.push(Call {
                token,
                service: i,
                sent_ms: now_ms,
                kind: CallKind::Pull,
            });
        }
    }

    /// An answer to one of this syncer's calls (others are ignored); a subscriber pulls
    /// again at once, so a change waits at the relay rather than for the next tick.
    pub(super) fn on_answer(&mut self, token: u32, body_size: usize, worker: &Worker) -> bool {
        let Some(at) = self.pending.iter().position(|c| c.token == token) else {
            return false;
        };
        let call = self.pending.swap_remove(at);
        let svc = &worker.config.services[call.service];
        let Some(sync) = &svc.state_sync else {
            return true;
        };
        let metrics = &worker.services[call.service].metrics.state;
        match call.kind {
            CallKind::Publish(sessions) => {
                on_publish_answer(svc, sync, &sessions, Some(body_size), metrics);
            }
            CallKind::Pull => {
                let now_ms = abi::now_ns() / 1_000_000;
                if let Some(answer) = answer_body(body_size)
                    .and_then(|b| serde_json::from_slice::<StatePullAnswer>(&b).ok())
                {
                    apply_pull(svc, sync, answer, now_ms, metrics);
                }
                self.pull(worker, call.service, now_ms);
            }
        }
        true
    }
}

/// Subscriber: applies the relay's answer and records the new cursor (with the page to
/// continue a full snapshot after, if it has more); a gap resets the cursor so the next
/// pull brings the whole state.
fn apply_pull(
    svc: &ServiceConfig,
    sync: &StateSyncConfig,
    answer: StatePullAnswer,
    now_ms: u64,
    metrics: &super::metrics::StateMetrics,
) {
    let t = table(svc, sync);
    if answer.full {
        metrics.full_resyncs.add(1);
        t.clear();
    }
    for snap in &answer.snapshots {
        t.put_snapshot(snap, now_ms);
    }
    let mut gap = false;
    for d in &answer.deltas {
        if t.apply_delta(d, now_ms) {
            metrics.applied.add(1);
        } else {
            gap = true;
            metrics.gaps.add(1);
            break;
        }
    }
    let next = if gap {
        (0, 0, None)
    } else {
        (answer.epoch, answer.cursor, answer.more)
    };
    if let Ok(bytes) = serde_json::to_vec(&next) {
        let _ = HostStore.set(&cursor_key(&svc.name), &bytes, None);
    }
}
