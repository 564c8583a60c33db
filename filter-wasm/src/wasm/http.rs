//! The per-request context: pick primary or shadow, write the routing header only on a
//! redirect, and account the request (in-flight, latency, ORCA) for the controller.

use super::abi::{self, map, now_ns};
use super::{Worker, sync};
use crate::config::SessionKeySource;
use crate::decision::{RedirectDecision, cookie_value, decide, session_point};
use crate::orca::{ORCA_HEADER, OrcaReport};
use crate::session_state::{
    Capture, QueuedWrite, SESSION_STATE_HEADER, STATE_CHANGE_HEADER, StateRole, StateWrite,
    SyncMode, encode_state, parse_changes,
};
use crate::window::Side;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::cell::RefCell;
use std::rc::Rc;

struct Routed {
    service: usize,
    side: Side,
    start_ns: u64,
    /// The session key, when the service has state sync.
    session: Option<String>,
    /// Publisher: the session's latest change in the table was a shadow's when the request
    /// came (its next change goes to the table at once, so the table stays whole for the
    /// primary's hand-over).
    behind_shadow: bool,
    /// Publisher: the plan sent the session to the shadow and read-your-writes held it on
    /// the primary (its next change goes to the relay at once, so it can move).
    held: bool,
    /// Whether it went upstream yet: a request the filter holds (waiting for the relay's
    /// answer to a lookup) is not in flight to the cluster, and its wait is not the
    /// cluster's latency.
    upstream: bool,
    /// When the client finished sending it (ns; 0: not yet).
    sent_ns: u64,
}

pub(super) struct AtreHttp {
    worker: Rc<RefCell<Worker>>,
    routed: Option<Routed>,
    /// A relay call this stream waits for.
    awaiting: Option<Awaiting>,
}

/// What a paused stream waits for.
struct Awaiting {
    token: u32,
    service: usize,
    session: String,
    kind: AwaitKind,
    /// The request goes to the primary.
    to_primary: bool,
}

enum AwaitKind {
    /// Event mode: the publish of this response's change (the response is paused).
    Publish,
    /// An edge without a record of the session asked what the primary lacks (the request
    /// is paused).
    Lookup,
}

impl AtreHttp {
    /// A request context of `worker`, not routed yet.
    pub(super) fn new(worker: Rc<RefCell<Worker>>) -> AtreHttp {
        AtreHttp {
            worker,
            routed: None,
            awaiting: None,
        }
    }

    /// The request goes upstream now: it counts as in flight to its cluster from here.
    /// Idempotent.
    fn start_upstream(&mut self) {
        let Some(r) = self.routed.as_mut().filter(|r| !r.upstream) else {
            return;
        };
        let Ok(mut worker) = self.worker.try_borrow_mut() else {
            return;
        };
        let now = now_ns();
        let rt = &mut worker.services[r.service];
        rt.in_flight_delta[r.side.index()] += 1;
        rt.busy[r.side.index()].start(now);
        r.start_ns = now;
        r.upstream = true;
    }

    /// The cluster is done with the request (stream end, or its response headers when the
    /// filter then holds the response for the relay): release the in-flight slot and
    /// record its latency — from when the cluster had the whole request (or got it, if it
    /// answered before the client finished sending) to now. A slow client's upload is not
    /// the cluster's time, and a latency that counted it would make the capacity check see
    /// a queue that is not there; it ends where the in-flight time ends, which it is
    /// compared with. Idempotent.
    fn finish(&mut self) {
        let Some(r) = self.routed.take().filter(|r| r.upstream) else {
            return;
        };
        let Ok(mut worker) = self.worker.try_borrow_mut() else {
            return;
        };
        let now = now_ns();
        let us = now.saturating_sub(r.sent_ns.max(r.start_ns)) / 1_000;
        let rt = &mut worker.services[r.service];
        rt.in_flight_delta[r.side.index()] -= 1;
        rt.busy[r.side.index()].finish(now);
        rt.window.side_mut(r.side).latency.record(us);
        rt.metrics.latency_ms.set(us / 1_000);
    }
}

impl Context for AtreHttp {
    /// The relay answered a call this stream waits for (or the call failed): the stream
    /// goes on either way — a failed publish leaves the session for a whole resend, a failed
    /// lookup leaves the request to the primary as it is.
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        let Some(a) = self.awaiting.take() else {
            return;
        };
        let shared = self.worker.clone();
        let worker = shared.try_borrow().ok();
        let svc = worker
            .as_ref()
            .filter(|_| token == a.token)
            .and_then(|w| Some((w, w.config.services.get(a.service)?)));
        match a.kind {
            AwaitKind::Publish => {
                if let Some((w, svc)) = svc
                    && let Some(sync_cfg) = &svc.state_sync
                {
                    sync::on_publish_answer(
                        svc,
                        sync_cfg,
                        &[a.session],
                        Some(body_size),
                        &w.services[a.service].metrics.state,
                    );
                }
                let _ = abi::resume_response();
            }
            AwaitKind::Lookup => {
                if let Some((w, svc)) = svc
                    && let Some(sync_cfg) = &svc.state_sync
                {
                    on_lookup_answer(w, svc, sync_cfg, &a, body_size);
                }
                drop(worker);
                self.start_upstream();
                let _ = abi::resume_request();
            }
        }
    }
}

impl HttpContext for AtreHttp {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        let Ok(mut worker) = self.worker.try_borrow_mut() else {
            return Action::Continue;
        };
        let worker = &mut *worker;
        let header = worker.config.route_header.as_str();
        let spoofed = matches!(abi::get_header(map::REQUEST_HEADERS, header), Ok(Some(_)));
        if spoofed {
            // Whatever happens next, the client's value never picks a cluster.
            worker.spoofed += 1;
            let _ = abi::remove_header(map::REQUEST_HEADERS, header);
        }
        let services = &worker.config.services;
        // A first service that answers any host (the sidecar case) needs no :authority read.
        let index = if services[0].hosts.iter().any(|h| h == "*") {
            Some(0)
        } else {
            let authority =
                abi::get_header_str(map::REQUEST_HEADERS, ":authority").unwrap_or_default();
            services
                .iter()
                .position(|s| s.matches_authority(&authority))
        };
        let Some(index) = index else {
            return Action::Continue;
        };
        let svc = &worker.config.services[index];
        let session: Option<Vec<u8>> = match &svc.session {
            Some(SessionKeySource::Header(h)) => abi::get_header(map::REQUEST_HEADERS, h)
                .ok()
                .flatten()
                .filter(|v| !v.is_empty()),
            Some(SessionKeySource::Cookie(c)) => {
                abi::get_header_str(map::REQUEST_HEADERS, "cookie").and_then(|v| {
                    cookie_value(&v, c)
                        .filter(|s| !s.is_empty())
                        .map(|s| s.as_bytes().to_vec())
                })
            }
            None => None,
        };
        let point = session.as_deref().map(session_point);
        // State sync carries UTF-8 keys of up to MAX_SESSION_KEY_BYTES; the header is only
        // ever ours to set.
        let mut unsyncable = false;
        let sync_session = svc.state_sync.as_ref().and_then(|_| {
            // Only a header that is there is removed: a write clears Envoy's route cache.
            if matches!(
                abi::get_header(map::REQUEST_HEADERS, SESSION_STATE_HEADER),
                Ok(Some(_))
            ) {
                let _ = abi::remove_header(map::REQUEST_HEADERS, SESSION_STATE_HEADER);
            }
            let key = session.and_then(|s| String::from_utf8(s).ok());
            unsyncable = point.is_some()
                && key
                    .as_ref()
                    .is_none_or(|k| k.len() > shadowmesh_wire::MAX_SESSION_KEY_BYTES);
            key.filter(|_| !unsyncable)
        });
        let rt = &mut worker.services[index];
        let start_ns = now_ns();
        let start_ms = start_ns / 1_000_000;
        if crate::decision::plan_is_stale(rt.plan_read_ms, start_ms, worker.config.tick_ms) {
            rt.plan = super::read_plan(svc);
            rt.shadow = super::read_shadow(svc, start_ms);
            rt.plan_read_ms = start_ms;
        }
        let mut decision = decide(
            &rt.plan,
            start_ns / 1_000_000,
            rt.shadow.ready,
            point,
            &mut rt.spreader,
        );
        let mut held = false;
        if unsyncable {
            // Its state could not follow it to a shadow (nor could the relay be asked what
            // it holds), so it stays on the primary — without an entry in the table, so no
            // number of such keys can crowd out the sessions that can move.
            rt.metrics.state.unsyncable.add(1);
            if decision == RedirectDecision::Shadow {
                decision = RedirectDecision::Primary;
                held = true;
            }
        }
        let mut lookup: Option<(u32, String, bool)> = None;
        let mut behind_shadow = false;
        if let (Some(sync_cfg), Some(key)) = (&svc.state_sync, &sync_session) {
            let table = sync::table(svc, sync_cfg);
            match sync_cfg.role {
                StateRole::Publisher => {
                    // A session this worker saw in the table, not behind a shadow, while
                    // the table's generation stood still: on the primary's path there is
                    // nothing to look up or hand over, and its entry need not be read.
                    let generation = rt.generation.read();
                    let plain =
                        decision != RedirectDecision::Shadow && rt.seen.fresh(generation, key);
                    if !plain {
                        // One read of the session's index entry serves both checks below.
                        let entry = table.entry(key);
                        behind_shadow = entry.as_ref().is_some_and(|e| e.from_shadow);
                        // Read-your-writes: the shadow serves a session only once it has
                        // acknowledged the session's latest version.
                        if decision == RedirectDecision::Shadow
                            && !table.may_redirect_entry(key, entry.as_ref())
                        {
                            rt.metrics.state.held.add(1);
                            decision = RedirectDecision::Primary;
                            held = true;
                        }
                        // A session this edge has no record of (it restarted, or the session
                        // is new): first ask the relay what it holds — the edge's record starts
                        // from it, and a primary that lacks it (the session's last writes were
                        // on a shadow) is handed it.
                        if entry.is_none() {
                            let body = sync::lookup_body(svc, key);
                            match sync::post(
                                sync_cfg,
                                "/v1/state/lookup",
                                &body,
                                sync_cfg.timeout_ms,
                            ) {
                                Some(token) => {
                                    lookup = Some((
                                        token,
                                        key.clone(),
                                        decision != RedirectDecision::Shadow,
                                    ))
                                }
                                None => lookup_failed(&table, key, &rt.metrics.state),
                            }
                        }
                        // A primary behind a shadow's writes gets the session's state (a
                        // shadow's change goes to the table at once, whichever worker saw
                        // it). Not while a change is on its way to the table: the primary
                        // made that change after the shadow's, so its own state is newer.
                        if decision != RedirectDecision::Shadow
                            && let Some(e) =
                                entry.as_ref().filter(|e| e.from_shadow && e.pending == 0)
                            && hand_state(table.slot_of(e))
                        {
                            rt.metrics.state.injected.add(1);
                        }
                        if let Some(e) = &entry {
                            rt.seen.saw(generation, e);
                        }
                    }
                }
                StateRole::Subscriber => {
                    if hand_state(table.slot(key)) {
                        rt.metrics.state.injected.add(1);
                    }
                }
            }
        }
        // Only a redirect writes the header. Writing any request header makes Envoy clear
        // the route cache and match again (≈ 20 µs a request in the benchmark), and a
        // request without the header already takes the route's default: the primary —
        // the same path a request takes when the filter fails open.
        let side = match decision {
            RedirectDecision::Shadow => {
                if abi::replace_header(map::REQUEST_HEADERS, header, &rt.shadow.cluster).is_ok() {
                    Side::Shadow
                } else {
                    let _ = abi::remove_header(map::REQUEST_HEADERS, header);
                    Side::Primary
                }
            }
            RedirectDecision::Fallback => {
                rt.window.fallbacks += 1;
                Side::Primary
            }
            RedirectDecision::Primary => Side::Primary,
        };
        // What was done, not what was meant: the controller's demand estimate divides by
        // the share that really left the primary.
        rt.window.count_route(point, side, held);
        rt.started += 1;
        let upstream = lookup.is_none();
        if upstream {
            rt.in_flight_delta[side.index()] += 1;
            rt.busy[side.index()].start(start_ns);
        }
        self.routed = Some(Routed {
            service: index,
            side,
            start_ns,
            session: sync_session,
            behind_shadow,
            held,
            upstream,
            sent_ns: if end_of_stream { start_ns } else { 0 },
        });
        if let Some((token, session, to_primary)) = lookup {
            self.awaiting = Some(Awaiting {
                token,
                service: index,
                session,
                kind: AwaitKind::Lookup,
                to_primary,
            });
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, _: usize, end_of_stream: bool) -> Action {
        if end_of_stream && let Some(r) = self.routed.as_mut().filter(|r| r.sent_ns == 0) {
            r.sent_ns = now_ns();
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let Some(r) = &self.routed else {
            return Action::Continue;
        };
        let (service, side, session, behind_shadow, held) = (
            r.service,
            r.side,
            r.session.clone(),
            r.behind_shadow,
            r.held,
        );
        self.account_orca(service, side);
        let action = self.capture_state(service, side, session, behind_shadow, held);
        if action == Action::Pause {
            // The cluster answered; the wait for the relay that follows is not its.
            self.finish();
        }
        action
    }

    fn on_log(&mut self) {
        self.finish();
    }
}

/// The relay's answer to the lookup of a session this edge had no record of: the edge's
/// record starts from it, and a primary about to serve a session whose last writes were on
/// a shadow is handed the state.
fn on_lookup_answer(
    w: &Worker,
    svc: &crate::config::ServiceConfig,
    sync_cfg: &crate::session_state::StateSyncConfig,
    a: &Awaiting,
    body_size: usize,
) {
    let table = sync::table(svc, sync_cfg);
    let metrics = &w.services[a.service].metrics.state;
    let Some(answer) = sync::lookup_answer(body_size) else {
        lookup_failed(&table, &a.session, metrics);
        return;
    };
    let now_ms = now_ns() / 1_000_000;
    let known = answer.state;
    table.adopt(&a.session, known.as_ref(), now_ms);
    // Its last writes were on a shadow: the primary lacks them.
    if let Some(k) = known.filter(|k| k.from_shadow)
        && a.to_primary
        && hand_state(Some(crate::session_state::SessionSlot {
            s: k.session,
            v: 0,
            state: k.state,
            ops: vec![],
            from_shadow: true,
            base: k.version,
            ..Default::default()
        }))
    {
        metrics.injected.add(1);
    }
}

/// The relay could not say what it holds of a session this edge has no record of. Without
/// that, this edge's numbering of the session's next changes would restart below what the
/// applications hold (and they would refuse its hand-overs): the session stays on the
/// primary, unreplicated, while this edge holds it.
fn lookup_failed(
    table: &crate::session_state::SessionTable<'_>,
    session: &str,
    metrics: &super::metrics::StateMetrics,
) {
    metrics.lookup_failures.add(1);
    table.pin(session, now_ns() / 1_000_000);
}

/// Hands the request its session's state (`x-shadowmesh-session-state`); false if there
/// is none or the host refused the header.
fn hand_state(slot: Option<crate::session_state::SessionSlot>) -> bool {
    slot.is_some_and(|slot| {
        abi::replace_header(
            map::REQUEST_HEADERS,
            SESSION_STATE_HEADER,
            &encode_state(slot.app_version(), &slot.state),
        )
        .is_ok()
    })
}

impl AtreHttp {
    fn account_orca(&mut self, service: usize, side: Side) {
        let Some(value) = abi::get_header_str(map::RESPONSE_HEADERS, ORCA_HEADER) else {
            return;
        };
        let Ok(mut worker) = self.worker.try_borrow_mut() else {
            return;
        };
        let w = worker.services[service].window.side_mut(side);
        match OrcaReport::parse(&value) {
            Ok(report) => {
                w.orca_sum += report.utilization();
                w.orca_reports += 1;
            }
            Err(_) => w.orca_malformed += 1,
        }
    }

    /// Publisher: the application's state-change header leaves the response and becomes
    /// the session's next version. In async mode a primary's change waits in this worker's
    /// queue for the tick (only its session's entry learns of it now). A shadow's change
    /// goes to the table at once (a primary may be handed it on the next request) and is
    /// published at once, and so is the change of a session the plan sends to the shadow
    /// that read-your-writes held back (with what this worker queued of it); their
    /// responses, like every response with a change in event mode, wait for the relay.
    fn capture_state(
        &mut self,
        service: usize,
        side: Side,
        session: Option<String>,
        behind_shadow: bool,
        held: bool,
    ) -> Action {
        let shared = self.worker.clone();
        let Ok(mut guard) = shared.try_borrow_mut() else {
            return Action::Continue;
        };
        let worker = &mut *guard;
        let svc = &worker.config.services[service];
        let Some(sync_cfg) = svc
            .state_sync
            .as_ref()
            .filter(|c| c.role == StateRole::Publisher)
        else {
            return Action::Continue;
        };
        let Some(value) = abi::get_header_str(map::RESPONSE_HEADERS, STATE_CHANGE_HEADER) else {
            return Action::Continue;
        };
        // Whatever happens next, the marker never reaches the client.
        let _ = abi::remove_header(map::RESPONSE_HEADERS, STATE_CHANGE_HEADER);
        let rt = &mut worker.services[service];
        let metrics = rt.metrics.state;
        let Some(session) = session else {
            metrics.dropped.add(1);
            return Action::Continue;
        };
        let stamp_ns = rt.state_queue.stamp(now_ns());
        let now_ms = stamp_ns / 1_000_000;
        let table = sync::table(svc, sync_cfg);
        let from_shadow = side == Side::Shadow;
        // A session the plan sends to the shadow, held on the primary because its latest
        // change was not acknowledged yet: were this change queued for the tick, a session
        // that writes often would never be acknowledged in time to move.
        let due = held && !from_shadow;
        if due && rt.state_queue.is_marked(&session) {
            let mut writes = rt.state_queue.take_session(&session);
            writes.push(QueuedWrite {
                session: session.clone(),
                header: value,
                stamp_ns,
            });
            let flushed = table.flush(writes, sync_cfg, now_ms);
            rt.captured += flushed.captured;
            for (_, reason) in &flushed.dropped {
                sync::dropped(svc, &metrics, *reason);
            }
            if !flushed.retry.is_empty() || !flushed.dropped.is_empty() {
                // Back to the tick (a lost race), or pinned to the primary (refused).
                rt.state_queue.requeue(flushed.retry);
                return Action::Continue;
            }
        } else {
            // A primary's change waits in the queue as it came (parsed at the tick). Only
            // a session's first change since this worker's last flush touches shared data:
            // its entry learns that changes are on their way. If it cannot, the change
            // goes to the table at once (which pins the session if that fails too).
            let queued = sync_cfg.mode == SyncMode::Async
                && !from_shadow
                && !behind_shadow
                && !due
                && !rt.state_queue.is_full()
                && (rt.state_queue.is_marked(&session)
                    || table.note_pending(&session, now_ms).is_ok());
            if queued {
                rt.state_queue.push(QueuedWrite {
                    session,
                    header: value,
                    stamp_ns,
                });
                return Action::Continue;
            }
            let change = parse_changes(&value, sync_cfg).map(|ops| StateWrite {
                ops,
                stamp_ns,
                from_shadow,
            });
            match table.capture(&session, change, sync_cfg.max_session_bytes, now_ms) {
                Capture::Recorded(_) => rt.captured += 1,
                Capture::Dropped(reason) => {
                    sync::dropped(svc, &metrics, reason);
                    return Action::Continue;
                }
            }
        }
        // A shadow's change is published at once in either mode, and its response waits
        // for the relay: when the client sees it, the shadows have acknowledged it, so the
        // session's next request may stay on the shadow. (Were it published at the tick,
        // a session that writes often would find its latest version unacknowledged and be
        // sent back to the primary, moving twice in one surge.)
        if sync_cfg.mode != SyncMode::Event && !from_shadow && !due {
            return Action::Continue;
        }
        let out = table.take_session(&session);
        let sessions = out.sessions.clone();
        // The relay holds the answer until the shadows applied the change (at most half
        // the timeout): when the client sees this response, the shadow has its write.
        let body = sync::publish_body(&worker.config, svc, out, sync_cfg.timeout_ms / 2);
        match sync::post(sync_cfg, "/v1/state/publish", &body, sync_cfg.timeout_ms) {
            Some(token) => {
                self.awaiting = Some(Awaiting {
                    token,
                    service,
                    session,
                    kind: AwaitKind::Publish,
                    to_primary: side == Side::Primary,
                });
                Action::Pause
            }
            None => {
                metrics.publish_failures.add(1);
                table.resend_whole(&sessions);
                Action::Continue
            }
        }
    }
}

impl Drop for AtreHttp {
    /// Belt and braces: if the host never called `on_log` for this stream, the in-flight
    /// slot is still released.
    fn drop(&mut self) {
        self.finish();
    }
}
