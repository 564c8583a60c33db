//! The state relay of State Synchronization (SSM): session deltas from the filters on the
//! primaries' path in, to the filters in front of the shadows out.
//!
//! Per service the relay keeps every session's current state and version, a bounded
//! backlog of changes numbered by one sequence (the Redis replication-backlog idea), and
//! each subscriber's cursor — the last change it applied, which is its acknowledgement:
//!
//! * **Publish**: a delta must continue its session's version (`version = current + 1`);
//!   one that skips ahead is a *gap* — the session is named in `resync` and the publisher
//!   sends its whole state next. Duplicates (`version ≤ current`) are ignored. Whole states
//!   replace older ones. A publisher that restarted (a new `incarnation`) counts its
//!   sessions from 1 again: its version 1 continues the session where the relay has it
//!   (versions in answers are the publisher's own), so a restarted edge can neither be
//!   mistaken for a replay nor be told that an old version acknowledges its new writes.
//! * **Pull**: a subscriber whose cursor is inside the backlog gets the changes after it; one
//!   whose cursor fell out of the backlog, or comes from another epoch (the relay restarted
//!   without its memory), gets a full snapshot of the service instead.
//! * **Acknowledged**: a session's version counts as acknowledged when every *live*
//!   subscriber of the service (seen within `subscriber_ttl_ms`) has a cursor at or past its
//!   last change — and never when none is live. The filters redirect a session only then:
//!   no redirected request reads older state than its client wrote.
//!
//! The relay holds its state in memory: a restart changes the epoch, publishers resend
//! whole states and subscribers resynchronize in full. [`StateRelay`] is the seam for a
//! shared store (Redis streams, one per service) when one relay is not enough.

use serde::Serialize;
use shadowmesh_wire::{
    STATE_SCHEMA, SessionDelta, SessionSnapshot, StatePublish, StatePublishAck, StatePull,
    StatePullAnswer, apply_ops, state_bytes,
};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use tokio::sync::watch;

/// Limits of the relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayLimits {
    /// Services (distinct names) the relay keeps.
    pub max_services: usize,
    /// Sessions per service (the least recently changed is forgotten first).
    pub max_sessions: usize,
    /// Bytes of one session's state (keys and values).
    pub max_session_bytes: usize,
    /// Changes kept per service for subscribers that are behind.
    pub backlog: usize,
    /// Subscribers per service.
    pub max_subscribers: usize,
    /// A subscriber not seen for this long no longer counts for acknowledgements.
    pub subscriber_ttl_ms: u64,
    /// Longest a pull may wait for changes.
    pub max_wait_ms: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            max_services: 1_000,
            max_sessions: 100_000,
            max_session_bytes: 16 << 10,
            backlog: 10_000,
            max_subscribers: 256,
            subscriber_ttl_ms: 5_000,
            max_wait_ms: 5_000,
        }
    }
}

/// Why a message was refused: the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayError {
    /// The field at fault, e.g. `deltas[3].ops[0].key`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn refuse(field: impl Into<String>, message: impl Into<String>) -> RelayError {
    RelayError {
        field: field.into(),
        message: message.into(),
    }
}

/// What carries session state from the publishers to the subscribers.
pub trait StateRelay: Send + Sync {
    /// Applies a publisher's changes; answers the acknowledged versions and the gaps.
    fn publish(&self, message: StatePublish, now_ms: u64) -> Result<StatePublishAck, RelayError>;
    /// What a subscriber has not applied yet; `Ok(None)` when nothing (the caller waits on
    /// [`StateRelay::changes`] and asks again).
    fn pull(&self, message: &StatePull, now_ms: u64)
    -> Result<Option<StatePullAnswer>, RelayError>;
    /// The version of each of `sessions` that every live subscriber of `service` has
    /// applied (0: not all have it), in the numbering of publisher `incarnation`.
    fn acked(
        &self,
        service: &str,
        incarnation: u64,
        sessions: &[String],
        now_ms: u64,
    ) -> Vec<(String, u64)>;
    /// The session's whole state (with whether its last change came from a shadow).
    fn lookup(&self, service: &str, session: &str) -> Option<SessionSnapshot>;
    /// Bumped on every accepted change and every subscriber's progress.
    fn changes(&self) -> watch::Receiver<u64>;
}

/// Counts, for `GET /v1/state` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RelayStats {
    /// The relay's epoch.
    pub epoch: u64,
    /// Per service.
    pub services: BTreeMap<String, ServiceStats>,
}

/// One service's replication state.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServiceStats {
    /// Sessions held.
    pub sessions: usize,
    /// Last change's sequence number.
    pub seq: u64,
    /// Deltas applied.
    pub deltas: u64,
    /// Whole states received.
    pub snapshots_in: u64,
    /// Gaps detected (a delta that skipped versions).
    pub gaps: u64,
    /// Full snapshots sent to subscribers.
    pub full_resyncs: u64,
    /// Bytes of keys and values replicated as deltas and whole states.
    pub replicated_bytes: u64,
    /// Bytes a copy of the whole session state on every change would have replicated.
    pub full_copy_bytes: u64,
    /// Replication lag, capture → applied by every live subscriber (ms): p50, p99 of the
    /// last 10,000 changes.
    pub lag_ms_p50: f64,
    /// See `lag_ms_p50`.
    pub lag_ms_p99: f64,
    /// Subscribers: cursor and how many changes they are behind.
    pub subscribers: BTreeMap<String, SubscriberStats>,
}

/// One subscriber.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SubscriberStats {
    /// Last change applied.
    pub cursor: u64,
    /// Changes not applied yet.
    pub behind: u64,
    /// Counts for acknowledgements.
    pub live: bool,
}

struct Session {
    /// The relay's version (what subscribers see).
    version: u64,
    state: BTreeMap<String, String>,
    /// Sequence number of its last change.
    changed: u64,
    /// The publisher incarnation whose numbering applies, and its offset: relay version =
    /// publisher version + offset.
    origin: u64,
    offset: u64,
    /// Its last change came from a shadow's response.
    from_shadow: bool,
}

impl Session {
    fn new(origin: u64) -> Session {
        Session {
            version: 0,
            state: BTreeMap::new(),
            changed: 0,
            origin,
            offset: 0,
            from_shadow: false,
        }
    }
}

enum Change {
    Delta(SessionDelta),
    Snapshot(SessionSnapshot),
}

struct Subscriber {
    cursor: u64,
    seen_ms: u64,
}

#[derive(Default)]
struct ServiceLog {
    seq: u64,
    sessions: HashMap<String, Session>,
    backlog: VecDeque<(u64, Change)>,
    subscribers: HashMap<String, Subscriber>,
    stats: ServiceStats,
    /// Changes waiting to be applied everywhere: (seq, captured at ms).
    unapplied: VecDeque<(u64, u64)>,
    /// Recent replication lags (ms).
    lags: VecDeque<u64>,
}

/// Lags kept for the percentiles.
const LAGS_KEPT: usize = 10_000;

impl ServiceLog {
    /// Records the lag of every change all live subscribers have now applied.
    fn note_applied(&mut self, now_ms: u64, ttl_ms: u64) {
        let slowest = self
            .subscribers
            .values()
            .filter(|s| now_ms.saturating_sub(s.seen_ms) <= ttl_ms)
            .map(|s| s.cursor)
            .min();
        let Some(slowest) = slowest else { return };
        while let Some(&(seq, at)) = self.unapplied.front() {
            if seq > slowest {
                break;
            }
            self.unapplied.pop_front();
            if at > 0 {
                self.lags.push_back(now_ms.saturating_sub(at));
                if self.lags.len() > LAGS_KEPT {
                    self.lags.pop_front();
                }
            }
        }
    }

    fn lag_percentile(&self, q: f64) -> f64 {
        if self.lags.is_empty() {
            return 0.0;
        }
        let mut v: Vec<u64> = self.lags.iter().copied().collect();
        v.sort_unstable();
        v[((v.len() - 1) as f64 * q).round() as usize] as f64
    }
}

impl ServiceLog {
    fn record(&mut self, change: Change, limit: usize) -> u64 {
        self.seq += 1;
        self.backlog.push_back((self.seq, change));
        while self.backlog.len() > limit {
            self.backlog.pop_front();
        }
        self.seq
    }

    /// The version every live subscriber has, or 0.
    fn acked(&self, session: &str, now_ms: u64, ttl_ms: u64) -> u64 {
        let Some(s) = self.sessions.get(session) else {
            return 0;
        };
        let mut live = self
            .subscribers
            .values()
            .filter(|sub| now_ms.saturating_sub(sub.seen_ms) <= ttl_ms)
            .peekable();
        if live.peek().is_none() {
            return 0;
        }
        if live.all(|sub| sub.cursor >= s.changed) {
            s.version
        } else {
            0
        }
    }

    /// [`ServiceLog::acked`] in the numbering of publisher `incarnation` (0 for a session
    /// another incarnation numbers).
    fn acked_for(&self, session: &str, incarnation: u64, now_ms: u64, ttl_ms: u64) -> u64 {
        match self.sessions.get(session) {
            Some(s) if s.origin == incarnation => {
                self.acked(session, now_ms, ttl_ms).saturating_sub(s.offset)
            }
            _ => 0,
        }
    }

    fn full(&self) -> Vec<SessionSnapshot> {
        self.sessions
            .iter()
            .map(|(k, s)| SessionSnapshot {
                session: k.clone(),
                version: s.version,
                state: s.state.clone(),
                from_shadow: s.from_shadow,
            })
            .collect()
    }

    /// Forgets the least recently changed sessions beyond `max`.
    fn trim(&mut self, max: usize) {
        if self.sessions.len() <= max {
            return;
        }
        let mut by_age: Vec<(u64, String)> = self
            .sessions
            .iter()
            .map(|(k, s)| (s.changed, k.clone()))
            .collect();
        by_age.sort_unstable();
        let excess = self.sessions.len() - max;
        for (_, k) in by_age.into_iter().take(excess) {
            self.sessions.remove(&k);
        }
    }
}

/// The relay in this process's memory.
pub struct MemoryRelay {
    limits: RelayLimits,
    epoch: u64,
    services: Mutex<HashMap<String, ServiceLog>>,
    changed: watch::Sender<u64>,
}

impl MemoryRelay {
    /// An empty relay; `epoch` must differ from every earlier run's (the start time in ms
    /// serves).
    pub fn new(limits: RelayLimits, epoch: u64) -> MemoryRelay {
        MemoryRelay {
            limits,
            epoch: epoch.max(1),
            services: Mutex::default(),
            changed: watch::Sender::new(0),
        }
    }

    /// Its limits.
    pub fn limits(&self) -> &RelayLimits {
        &self.limits
    }

    /// Replication state per service.
    pub fn stats(&self, now_ms: u64) -> RelayStats {
        let services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        RelayStats {
            epoch: self.epoch,
            services: services
                .iter()
                .map(|(name, log)| {
                    let mut stats = log.stats.clone();
                    stats.lag_ms_p50 = log.lag_percentile(0.5);
                    stats.lag_ms_p99 = log.lag_percentile(0.99);
                    stats.sessions = log.sessions.len();
                    stats.seq = log.seq;
                    stats.subscribers = log
                        .subscribers
                        .iter()
                        .map(|(id, sub)| {
                            (
                                id.clone(),
                                SubscriberStats {
                                    cursor: sub.cursor,
                                    behind: log.seq.saturating_sub(sub.cursor),
                                    live: now_ms.saturating_sub(sub.seen_ms)
                                        <= self.limits.subscriber_ttl_ms,
                                },
                            )
                        })
                        .collect();
                    (name.clone(), stats)
                })
                .collect(),
        }
    }

    fn check_names(
        &self,
        schema: &str,
        proxy: (&str, &str),
        service: &str,
    ) -> Result<(), RelayError> {
        if schema != STATE_SCHEMA {
            return Err(refuse(
                "schema",
                format!("expected {STATE_SCHEMA:?}, got {schema:?}"),
            ));
        }
        crate::registry::validate_service(service).map_err(|e| refuse("service", e.message))?;
        if !crate::ingest::valid_proxy_name(proxy.1) {
            return Err(refuse(
                proxy.0,
                "must be 1 to 128 characters of letters, digits and `._:/-`",
            ));
        }
        Ok(())
    }

    fn check_session(&self, at: &str, session: &str) -> Result<(), RelayError> {
        if session.is_empty() || session.len() > shadowmesh_wire::MAX_SESSION_KEY_BYTES {
            return Err(refuse(
                at,
                format!(
                    "a session key is 1 to {} bytes",
                    shadowmesh_wire::MAX_SESSION_KEY_BYTES
                ),
            ));
        }
        Ok(())
    }

    fn log_for<'a>(
        &self,
        services: &'a mut HashMap<String, ServiceLog>,
        service: &str,
    ) -> Result<&'a mut ServiceLog, RelayError> {
        if !services.contains_key(service) && services.len() >= self.limits.max_services {
            return Err(refuse(
                "service",
                format!(
                    "the relay holds {} services already",
                    self.limits.max_services
                ),
            ));
        }
        Ok(services.entry(service.to_string()).or_default())
    }
}

impl StateRelay for MemoryRelay {
    fn publish(&self, m: StatePublish, now_ms: u64) -> Result<StatePublishAck, RelayError> {
        self.check_names(&m.schema, ("publisher", &m.publisher), &m.service)?;
        // Checked as a whole first: a refused message changes nothing.
        let max = self.limits.max_session_bytes;
        for (i, d) in m.deltas.iter().enumerate() {
            self.check_session(&format!("deltas[{i}].session"), &d.session)?;
            let bytes: usize = d.ops.iter().map(|o| o.bytes()).sum();
            if bytes > max {
                return Err(refuse(
                    format!("deltas[{i}].ops"),
                    format!("{bytes} bytes; a session holds at most {max}"),
                ));
            }
        }
        for (i, s) in m.snapshots.iter().enumerate() {
            self.check_session(&format!("snapshots[{i}].session"), &s.session)?;
            let bytes = state_bytes(&s.state);
            if bytes > max {
                return Err(refuse(
                    format!("snapshots[{i}].state"),
                    format!("{bytes} bytes; a session holds at most {max}"),
                ));
            }
        }
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let log = self.log_for(&mut services, &m.service)?;
        let mut touched: Vec<String> = Vec::new();
        let mut resync: HashSet<String> = HashSet::new();
        let mut changed = false;
        for mut snap in m.snapshots {
            touched.push(snap.session.clone());
            let session = log
                .sessions
                .entry(snap.session.clone())
                .or_insert_with(|| Session::new(m.incarnation));
            let mut state = snap.state.clone();
            if session.origin != m.incarnation {
                // A restarted publisher only knows what changed since: its whole state
                // goes over what the relay has, and its numbering continues the relay's.
                let mut merged = session.state.clone();
                merged.extend(state);
                state = merged;
                session.origin = m.incarnation;
                session.offset = (session.version + 1).saturating_sub(snap.version);
            } else if snap.version + session.offset < session.version {
                continue; // older than what the relay has
            }
            let relay_version = snap.version + session.offset;
            let bytes = state_bytes(&state);
            if bytes > max {
                resync.insert(snap.session.clone());
                continue;
            }
            session.version = relay_version;
            session.state = state.clone();
            session.from_shadow = snap.from_shadow;
            snap.version = relay_version;
            snap.state = state;
            let key = snap.session.clone();
            let seq = log.record(Change::Snapshot(snap), self.limits.backlog);
            if let Some(s) = log.sessions.get_mut(&key) {
                s.changed = seq;
            }
            log.stats.snapshots_in += 1;
            log.stats.replicated_bytes += bytes as u64;
            log.stats.full_copy_bytes += bytes as u64;
            changed = true;
        }
        for delta in m.deltas {
            touched.push(delta.session.clone());
            if resync.contains(&delta.session) {
                continue;
            }
            let session = log
                .sessions
                .entry(delta.session.clone())
                .or_insert_with(|| Session::new(m.incarnation));
            if session.origin != m.incarnation {
                if delta.version != 1 {
                    // A publisher we have no numbering for, mid-count: its whole state.
                    log.stats.gaps += 1;
                    resync.insert(delta.session.clone());
                    continue;
                }
                session.origin = m.incarnation;
                session.offset = session.version;
            }
            let current = session.version - session.offset;
            if delta.version <= current {
                continue; // a duplicate
            }
            if delta.version != current + 1 {
                log.stats.gaps += 1;
                resync.insert(delta.session.clone());
                continue;
            }
            let mut next = session.state.clone();
            apply_ops(&mut next, &delta.ops);
            let bytes = state_bytes(&next);
            if bytes > max {
                // The publisher caps sessions too; one that got past it is resynchronized
                // rather than stored over the limit.
                resync.insert(delta.session.clone());
                continue;
            }
            session.state = next;
            session.version = delta.version + session.offset;
            session.from_shadow = delta.from_shadow;
            let mut delta = delta;
            // Subscribers see the relay's numbering.
            delta.version = session.version;
            let session_key = delta.session.clone();
            let at = delta.at_ms;
            log.stats.replicated_bytes += delta.ops.iter().map(|o| o.bytes() as u64).sum::<u64>();
            log.stats.full_copy_bytes += bytes as u64;
            let seq = log.record(Change::Delta(delta), self.limits.backlog);
            log.unapplied.push_back((seq, at));
            if log.unapplied.len() > self.limits.backlog {
                log.unapplied.pop_front();
            }
            if let Some(s) = log.sessions.get_mut(&session_key) {
                s.changed = seq;
            }
            log.stats.deltas += 1;
            changed = true;
        }
        log.trim(self.limits.max_sessions);
        // A watched session the relay does not know (forgotten, or never received) needs
        // its whole state.
        for w in &m.watch {
            if !log.sessions.contains_key(w) && !touched.contains(w) {
                resync.insert(w.clone());
            }
        }
        touched.extend(m.watch);
        touched.sort_unstable();
        touched.dedup();
        let acked = touched
            .into_iter()
            .filter(|s| !resync.contains(s))
            .map(|s| {
                let v = log.acked_for(&s, m.incarnation, now_ms, self.limits.subscriber_ttl_ms);
                (s, v)
            })
            .collect();
        drop(services);
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
        let mut resync: Vec<String> = resync.into_iter().collect();
        resync.sort_unstable();
        Ok(StatePublishAck {
            epoch: self.epoch,
            acked,
            resync,
        })
    }

    fn pull(&self, m: &StatePull, now_ms: u64) -> Result<Option<StatePullAnswer>, RelayError> {
        self.check_names(&m.schema, ("subscriber", &m.subscriber), &m.service)?;
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let log = self.log_for(&mut services, &m.service)?;
        let in_epoch = m.epoch == self.epoch && m.cursor <= log.seq;
        if !log.subscribers.contains_key(&m.subscriber)
            && log.subscribers.len() >= self.limits.max_subscribers
        {
            // Forget the one seen longest ago: a departed shadow must not block acks.
            if let Some(oldest) = log
                .subscribers
                .iter()
                .min_by_key(|(_, s)| s.seen_ms)
                .map(|(k, _)| k.clone())
            {
                log.subscribers.remove(&oldest);
            }
        }
        // The cursor is the subscriber's acknowledgement: only one from this epoch counts.
        let cursor = if in_epoch { m.cursor } else { 0 };
        let sub = log
            .subscribers
            .entry(m.subscriber.clone())
            .or_insert(Subscriber {
                cursor,
                seen_ms: now_ms,
            });
        let advanced = cursor > sub.cursor;
        sub.cursor = cursor;
        sub.seen_ms = now_ms;
        if advanced {
            log.note_applied(now_ms, self.limits.subscriber_ttl_ms);
            // Publishers waiting for acknowledgements look again.
            self.changed.send_modify(|n| *n += 1);
        }
        let first_kept = log.backlog.front().map_or(log.seq + 1, |(seq, _)| *seq);
        if !in_epoch || m.cursor + 1 < first_kept {
            log.stats.full_resyncs += 1;
            return Ok(Some(StatePullAnswer {
                epoch: self.epoch,
                cursor: log.seq,
                full: true,
                deltas: vec![],
                snapshots: log.full(),
            }));
        }
        if m.cursor == log.seq {
            return Ok(None);
        }
        let mut answer = StatePullAnswer {
            epoch: self.epoch,
            cursor: log.seq,
            ..StatePullAnswer::default()
        };
        for (seq, change) in &log.backlog {
            if *seq <= m.cursor {
                continue;
            }
            match change {
                Change::Delta(d) => answer.deltas.push(d.clone()),
                Change::Snapshot(s) => answer.snapshots.push(s.clone()),
            }
        }
        Ok(Some(answer))
    }

    fn acked(
        &self,
        service: &str,
        incarnation: u64,
        sessions: &[String],
        now_ms: u64,
    ) -> Vec<(String, u64)> {
        let services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let Some(log) = services.get(service) else {
            return sessions.iter().map(|s| (s.clone(), 0)).collect();
        };
        let ttl = self.limits.subscriber_ttl_ms;
        sessions
            .iter()
            .map(|s| (s.clone(), log.acked_for(s, incarnation, now_ms, ttl)))
            .collect()
    }

    fn lookup(&self, service: &str, session: &str) -> Option<SessionSnapshot> {
        let services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let s = services.get(service)?.sessions.get(session)?;
        Some(SessionSnapshot {
            session: session.to_string(),
            version: s.version,
            state: s.state.clone(),
            from_shadow: s.from_shadow,
        })
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shadowmesh_wire::StateOp;

    fn relay() -> MemoryRelay {
        MemoryRelay::new(
            RelayLimits {
                backlog: 4,
                ..RelayLimits::default()
            },
            77,
        )
    }

    fn set(session: &str, version: u64, key: &str, value: &str) -> SessionDelta {
        SessionDelta {
            session: session.into(),
            version,
            ops: vec![StateOp {
                key: key.into(),
                value: Some(value.into()),
            }],
            at_ms: 0,
            from_shadow: false,
        }
    }

    fn publish(deltas: Vec<SessionDelta>, watch: &[&str]) -> StatePublish {
        StatePublish {
            schema: STATE_SCHEMA.into(),
            publisher: "edge-1".into(),
            service: "cart".into(),
            epoch: 77,
            incarnation: 1,
            deltas,
            snapshots: vec![],
            watch: watch.iter().map(|s| s.to_string()).collect(),
            wait_ack_ms: 0,
        }
    }

    fn pull(subscriber: &str, epoch: u64, cursor: u64) -> StatePull {
        StatePull {
            schema: STATE_SCHEMA.into(),
            subscriber: subscriber.into(),
            service: "cart".into(),
            epoch,
            cursor,
            wait_ms: 0,
        }
    }

    #[test]
    fn a_version_is_acknowledged_once_every_live_subscriber_applied_it() {
        let r = relay();
        // No subscriber: nothing is acknowledged.
        let ack = r
            .publish(publish(vec![set("s1", 1, "cart", "a")], &[]), 1_000)
            .unwrap();
        assert_eq!(ack.acked, vec![("s1".into(), 0)]);
        // Two subscribers start from full snapshots.
        let a = r.pull(&pull("shadow-a", 0, 0), 1_000).unwrap().unwrap();
        assert!(a.full);
        assert_eq!(a.snapshots[0].state["cart"], "a");
        r.pull(&pull("shadow-b", 0, 0), 1_000).unwrap().unwrap();
        // Only a has applied (its next pull carries the cursor): not yet acknowledged.
        assert_eq!(
            r.pull(&pull("shadow-a", 77, a.cursor), 1_100).unwrap(),
            None
        );
        let ack = r.publish(publish(vec![], &["s1"]), 1_100).unwrap();
        assert_eq!(ack.acked, vec![("s1".into(), 0)]);
        r.pull(&pull("shadow-b", 77, a.cursor), 1_100).unwrap();
        let ack = r.publish(publish(vec![], &["s1"]), 1_100).unwrap();
        assert_eq!(ack.acked, vec![("s1".into(), 1)]);
        // b goes silent: after the TTL only a counts.
        let ack = r
            .publish(publish(vec![set("s1", 2, "cart", "ab")], &[]), 1_200)
            .unwrap();
        assert_eq!(ack.acked, vec![("s1".into(), 0)]);
        let d = r
            .pull(&pull("shadow-a", 77, a.cursor), 9_000)
            .unwrap()
            .unwrap();
        assert_eq!(d.deltas, vec![set("s1", 2, "cart", "ab")]);
        r.pull(&pull("shadow-a", 77, d.cursor), 9_000).unwrap();
        let ack = r.publish(publish(vec![], &["s1"]), 9_000).unwrap();
        assert_eq!(ack.acked, vec![("s1".into(), 2)]);
    }

    #[test]
    fn a_restarted_publisher_continues_the_sessions_numbering() {
        let r = relay();
        for v in 1..=3 {
            r.publish(publish(vec![set("s1", v, "k", &v.to_string())], &[]), 0)
                .unwrap();
        }
        let sub = r.pull(&pull("d", 0, 0), 0).unwrap().unwrap();
        r.pull(&pull("d", 77, sub.cursor), 0).unwrap();
        // The edge restarted: its version 1 of s1 is the relay's 4, not a duplicate of 1.
        let mut after = publish(vec![set("s1", 1, "k", "new")], &[]);
        after.incarnation = 2;
        let ack = r.publish(after, 0).unwrap();
        assert_eq!(
            ack.acked,
            vec![("s1".into(), 0)],
            "the subscriber has not got it yet"
        );
        let d = r.pull(&pull("d", 77, sub.cursor), 0).unwrap().unwrap();
        assert_eq!(d.deltas.len(), 1);
        assert_eq!(
            (d.deltas[0].version, d.deltas[0].ops[0].value.as_deref()),
            (4, Some("new"))
        );
        r.pull(&pull("d", 77, d.cursor), 0).unwrap();
        let mut watch = publish(vec![], &["s1"]);
        watch.incarnation = 2;
        assert_eq!(
            r.publish(watch, 0).unwrap().acked,
            vec![("s1".into(), 1)],
            "its own numbering"
        );
        // The old incarnation's numbering no longer acknowledges anything.
        assert_eq!(
            r.publish(publish(vec![], &["s1"]), 0).unwrap().acked,
            vec![("s1".into(), 0)]
        );
    }

    #[test]
    fn a_gap_asks_for_the_whole_state_and_duplicates_change_nothing() {
        let r = relay();
        r.publish(publish(vec![set("s1", 1, "k", "1")], &[]), 0)
            .unwrap();
        let ack = r
            .publish(publish(vec![set("s1", 3, "k", "3")], &[]), 0)
            .unwrap();
        assert_eq!(ack.resync, vec!["s1".to_string()]);
        assert_eq!(r.stats(0).services["cart"].gaps, 1);
        let ack = r
            .publish(publish(vec![set("s1", 1, "k", "dup")], &[]), 0)
            .unwrap();
        assert!(ack.resync.is_empty());
        let mut whole = publish(vec![], &[]);
        whole.snapshots.push(SessionSnapshot {
            session: "s1".into(),
            version: 3,
            state: [("k".to_string(), "3".to_string())].into(),
            from_shadow: false,
        });
        r.publish(whole, 0).unwrap();
        let full = r.pull(&pull("d", 0, 0), 0).unwrap().unwrap();
        assert_eq!(full.snapshots[0].version, 3);
        assert_eq!(full.snapshots[0].state["k"], "3");
    }

    #[test]
    fn a_subscriber_behind_the_backlog_or_from_another_epoch_gets_a_full_snapshot() {
        let r = relay();
        let first = r.pull(&pull("d", 0, 0), 0).unwrap().unwrap();
        assert!(first.full && first.snapshots.is_empty());
        for v in 1..=3 {
            r.publish(publish(vec![set("s1", v, "k", &v.to_string())], &[]), 0)
                .unwrap();
        }
        let inc = r.pull(&pull("d", 77, first.cursor), 0).unwrap().unwrap();
        assert!(!inc.full);
        assert_eq!(inc.deltas.len(), 3);
        for v in 4..=9 {
            r.publish(publish(vec![set("s1", v, "k", &v.to_string())], &[]), 0)
                .unwrap();
        }
        // Cursor 3 is older than the 4 changes kept.
        let behind = r.pull(&pull("d", 77, inc.cursor), 0).unwrap().unwrap();
        assert!(behind.full);
        assert_eq!(behind.snapshots[0].state["k"], "9");
        // Another epoch (the relay restarted): full as well, and its cursor is no ack.
        let other = r.pull(&pull("d", 5, behind.cursor), 0).unwrap().unwrap();
        assert!(other.full);
    }

    #[test]
    fn oversize_or_malformed_messages_are_refused_naming_the_field_and_change_nothing() {
        let r = relay();
        let big = "x".repeat(20 << 10);
        let e = r
            .publish(
                publish(vec![set("s1", 1, "k", "v"), set("s2", 1, "k", &big)], &[]),
                0,
            )
            .unwrap_err();
        assert_eq!(e.field, "deltas[1].ops");
        assert_eq!(r.stats(0).services.get("cart").map_or(0, |s| s.sessions), 0);
        let mut bad = publish(vec![], &[]);
        bad.publisher = "no spaces allowed".into();
        assert_eq!(r.publish(bad, 0).unwrap_err().field, "publisher");
        let mut bad = publish(vec![], &[]);
        bad.schema = "v0".into();
        assert_eq!(r.publish(bad, 0).unwrap_err().field, "schema");
    }
}
