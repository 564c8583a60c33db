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
//! * **Whose session**: a session belongs to the publisher (name and incarnation) that
//!   changed it last. Only that proxy's *own* restart merges a whole state over what the
//!   relay has (a restarted edge knows only what changed since); another publisher's whole
//!   state replaces it. So a foreign incarnation cannot merge into a session: the owner's
//!   next change finds it foreign, is asked to resend whole, and its whole state wins. (Who
//!   may publish for a service at all is the token's scope, [`crate::http::auth`].)
//! * **Pull**: a subscriber whose cursor is inside the backlog gets the changes after it; one
//!   whose cursor fell out of the backlog, or comes from another epoch (the relay restarted
//!   without its memory), gets a full snapshot of the service instead. Answers are pages of
//!   at most `max_answer_bytes`: changes up to the answer's cursor, and a full snapshot in
//!   key order continued with `page_after` (`more` names the last key sent).
//! * **Acknowledged**: a session's version counts as acknowledged when every *live*
//!   subscriber of the service (seen within `subscriber_ttl_ms`) has a cursor at or past its
//!   last change — and never when none is live. The filters redirect a session only then:
//!   no redirected request reads older state than its client wrote. Only a cursor a
//!   subscriber reports outside a full snapshot's paging counts.
//! * **Bounded in bytes**: sessions and backlog are counted in bytes per service
//!   (`max_service_bytes`) and in all (`max_bytes`). Past either, the publishing service's
//!   oldest backlog entries go first (a subscriber behind them gets a full snapshot), then
//!   its least recently changed sessions (their publishers resend them whole when they
//!   watch them). One service's flood evicts only its own sessions.
//!
//! The relay holds its state in memory: a restart changes the epoch, publishers resend
//! whole states and subscribers resynchronize in full. [`StateRelay`] is the seam for a
//! shared store (Redis streams, one per service) when one relay is not enough.

use serde::Serialize;
use shadowmesh_wire::{
    STATE_SCHEMA, SessionDelta, SessionSnapshot, StateLookup, StatePublish, StatePublishAck,
    StatePull, StatePullAnswer, apply_ops, state_bytes,
};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use tokio::sync::watch;

/// Largest session version a publisher may send (a publisher counts one per write of one
/// session: 2^32 writes of a session is no real client).
pub const MAX_PUBLISHED_VERSION: u64 = 1 << 32;

/// Largest version the relay numbers a session with (exactly representable in a JSON
/// number); a change that would pass it is refused, never wrapped.
pub const MAX_RELAY_VERSION: u64 = 1 << 53;

/// Bytes counted for a session or a backlog entry beyond its keys and values (the maps'
/// and the entry's own memory), so the byte limits follow the process's memory.
const ENTRY_OVERHEAD: usize = 96;

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
    /// Bytes of one service's sessions and backlog.
    pub max_service_bytes: usize,
    /// Bytes of every service's sessions and backlog together.
    pub max_bytes: usize,
    /// Bytes of sessions and changes in one pull answer (a page; at least one is sent).
    pub max_answer_bytes: usize,
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
            max_service_bytes: 64 << 20,
            max_bytes: 256 << 20,
            max_answer_bytes: 1 << 20,
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
    /// applied (0: not all have it), in the numbering of `publisher`'s `incarnation`.
    fn acked(
        &self,
        service: &str,
        publisher: &str,
        incarnation: u64,
        sessions: &[String],
        now_ms: u64,
    ) -> Vec<(String, u64)>;
    /// The session's whole state (with whether its last change came from a shadow).
    fn lookup(&self, message: &StateLookup) -> Result<Option<SessionSnapshot>, RelayError>;
    /// Bumped on every accepted change and every subscriber's progress.
    fn changes(&self) -> watch::Receiver<u64>;
}

/// Counts, for `GET /v1/state` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RelayStats {
    /// The relay's epoch.
    pub epoch: u64,
    /// Bytes held, all services.
    pub bytes: usize,
    /// Per service.
    pub services: BTreeMap<String, ServiceStats>,
}

/// One service's replication state.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServiceStats {
    /// Sessions held.
    pub sessions: usize,
    /// Bytes held: sessions and backlog.
    pub bytes: usize,
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
    /// Sessions forgotten to stay within the limits (count or bytes).
    pub evicted: u64,
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

/// The publisher whose numbering a session's versions follow.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Origin {
    publisher: String,
    incarnation: u64,
}

#[derive(Clone)]
struct Session {
    /// The relay's version (what subscribers see).
    version: u64,
    state: BTreeMap<String, String>,
    /// Sequence number of its last change.
    changed: u64,
    /// Whose numbering applies, and its offset: relay version = publisher version + offset.
    origin: Origin,
    offset: u64,
    /// Its last change came from a shadow's response.
    from_shadow: bool,
}

impl Session {
    fn new(origin: Origin) -> Session {
        Session {
            version: 0,
            state: BTreeMap::new(),
            changed: 0,
            origin,
            offset: 0,
            from_shadow: false,
        }
    }

    fn bytes(&self, key: &str) -> usize {
        key.len() + state_bytes(&self.state) + ENTRY_OVERHEAD
    }

    fn snapshot(&self, key: &str) -> SessionSnapshot {
        SessionSnapshot {
            session: key.to_string(),
            version: self.version,
            state: self.state.clone(),
            from_shadow: self.from_shadow,
        }
    }
}

enum Change {
    Delta(SessionDelta),
    Snapshot(SessionSnapshot),
}

impl Change {
    fn bytes(&self) -> usize {
        ENTRY_OVERHEAD
            + match self {
                Change::Delta(d) => {
                    d.session.len() + d.ops.iter().map(|o| o.bytes()).sum::<usize>()
                }
                Change::Snapshot(s) => s.session.len() + state_bytes(&s.state),
            }
    }
}

struct Subscriber {
    cursor: u64,
    seen_ms: u64,
}

#[derive(Default)]
struct ServiceLog {
    seq: u64,
    /// In key order: a full snapshot is paged by key.
    sessions: BTreeMap<String, Session>,
    /// Sessions by their last change (oldest first): who is forgotten first.
    by_change: BTreeMap<u64, String>,
    /// Bytes of `sessions`.
    session_bytes: usize,
    backlog: VecDeque<(u64, Change)>,
    /// Bytes of `backlog`.
    backlog_bytes: usize,
    /// The highest version of any session forgotten: a subscriber may still hold that
    /// session at it, so a session new to the relay is numbered above it (or a subscriber
    /// would keep its older copy, and acknowledge the new one without having it).
    evicted_floor: u64,
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
    fn bytes(&self) -> usize {
        self.session_bytes + self.backlog_bytes
    }

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

    /// Stores `session` under `key` as changed by `change` (recorded in the backlog).
    fn commit(&mut self, key: String, mut session: Session, change: Change, backlog: usize) {
        self.seq += 1;
        let seq = self.seq;
        self.backlog_bytes += change.bytes();
        self.backlog.push_back((seq, change));
        while self.backlog.len() > backlog {
            self.pop_backlog();
        }
        session.changed = seq;
        if let Some(old) = self.sessions.remove(&key) {
            self.session_bytes -= old.bytes(&key);
            self.by_change.remove(&old.changed);
        }
        self.session_bytes += session.bytes(&key);
        self.by_change.insert(seq, key.clone());
        self.sessions.insert(key, session);
    }

    fn pop_backlog(&mut self) -> bool {
        match self.backlog.pop_front() {
            Some((_, c)) => {
                self.backlog_bytes -= c.bytes();
                true
            }
            None => false,
        }
    }

    /// Forgets the least recently changed session; false when none is left.
    fn evict_oldest(&mut self) -> bool {
        let Some((_, key)) = self.by_change.pop_first() else {
            return false;
        };
        if let Some(old) = self.sessions.remove(&key) {
            self.session_bytes -= old.bytes(&key);
            self.evicted_floor = self.evicted_floor.max(old.version);
        }
        self.stats.evicted += 1;
        true
    }

    /// Sheds bytes until at most `budget` are held: backlog first, then sessions.
    fn shed_to(&mut self, budget: usize) {
        while self.bytes() > budget && (self.pop_backlog() || self.evict_oldest()) {}
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

    /// [`ServiceLog::acked`] in the numbering of `origin` (0 for a session another
    /// publisher or incarnation numbers).
    fn acked_for(&self, session: &str, origin: &Origin, now_ms: u64, ttl_ms: u64) -> u64 {
        match self.sessions.get(session) {
            Some(s) if s.origin == *origin => {
                self.acked(session, now_ms, ttl_ms).saturating_sub(s.offset)
            }
            _ => 0,
        }
    }

    /// One page of the full snapshot: sessions after `after` in key order, up to
    /// `max_bytes` (at least one); and the last key sent when more follow.
    fn full_page(
        &self,
        after: Option<&str>,
        max_bytes: usize,
    ) -> (Vec<SessionSnapshot>, Option<String>) {
        use std::ops::Bound;
        let range = match after {
            Some(k) => self
                .sessions
                .range::<str, _>((Bound::Excluded(k), Bound::Unbounded)),
            None => self.sessions.range::<str, _>(..),
        };
        let mut page = Vec::new();
        let mut bytes = 0;
        for (k, s) in range {
            let b = s.bytes(k);
            if !page.is_empty() && bytes + b > max_bytes {
                let last = page.last().map(|p: &SessionSnapshot| p.session.clone());
                return (page, last);
            }
            bytes += b;
            page.push(s.snapshot(k));
        }
        (page, None)
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
            bytes: services.values().map(ServiceLog::bytes).sum(),
            services: services
                .iter()
                .map(|(name, log)| {
                    let mut stats = log.stats.clone();
                    stats.lag_ms_p50 = log.lag_percentile(0.5);
                    stats.lag_ms_p99 = log.lag_percentile(0.99);
                    stats.sessions = log.sessions.len();
                    stats.bytes = log.bytes();
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
        proxy: Option<(&str, &str)>,
        service: &str,
    ) -> Result<(), RelayError> {
        if schema != STATE_SCHEMA {
            return Err(refuse(
                "schema",
                format!("expected {STATE_SCHEMA:?}, got {:?}", truncated(schema)),
            ));
        }
        crate::registry::validate_service(service).map_err(|e| refuse("service", e.message))?;
        if let Some((field, name)) = proxy
            && !crate::ingest::valid_proxy_name(name)
        {
            return Err(refuse(
                field,
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

    fn check_version(&self, at: String, version: u64) -> Result<(), RelayError> {
        if !(1..=MAX_PUBLISHED_VERSION).contains(&version) {
            return Err(refuse(
                at,
                format!("{version} is outside 1..={MAX_PUBLISHED_VERSION}"),
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

    /// Checks a publish as a whole: a refused message changes nothing.
    fn check_publish(&self, m: &StatePublish) -> Result<(), RelayError> {
        self.check_names(&m.schema, Some(("publisher", &m.publisher)), &m.service)?;
        let max = self.limits.max_session_bytes;
        for (i, d) in m.deltas.iter().enumerate() {
            self.check_session(&format!("deltas[{i}].session"), &d.session)?;
            self.check_version(format!("deltas[{i}].version"), d.version)?;
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
            self.check_version(format!("snapshots[{i}].version"), s.version)?;
            let bytes = state_bytes(&s.state);
            if bytes > max {
                return Err(refuse(
                    format!("snapshots[{i}].state"),
                    format!("{bytes} bytes; a session holds at most {max}"),
                ));
            }
        }
        for (i, w) in m.watch.iter().enumerate() {
            self.check_session(&format!("watch[{i}]"), w)?;
        }
        Ok(())
    }
}

/// At most 64 characters of `s`, for messages that quote input.
fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

impl StateRelay for MemoryRelay {
    fn publish(&self, m: StatePublish, now_ms: u64) -> Result<StatePublishAck, RelayError> {
        self.check_publish(&m)?;
        let origin = Origin {
            publisher: m.publisher.clone(),
            incarnation: m.incarnation,
        };
        let max = self.limits.max_session_bytes;
        let backlog = self.limits.backlog;
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let others: usize = services
            .iter()
            .filter(|(name, _)| **name != m.service)
            .map(|(_, log)| log.bytes())
            .sum();
        let log = self.log_for(&mut services, &m.service)?;
        let mut touched: Vec<String> = Vec::new();
        let mut resync: HashSet<String> = HashSet::new();
        let mut changed = false;
        for mut snap in m.snapshots {
            touched.push(snap.session.clone());
            let mut session = log
                .sessions
                .get(&snap.session)
                .cloned()
                .unwrap_or_else(|| Session {
                    offset: log.evicted_floor,
                    ..Session::new(origin.clone())
                });
            let mut state = std::mem::take(&mut snap.state);
            if session.origin != origin {
                if session.origin.publisher == origin.publisher {
                    // This proxy restarted: it only knows what changed since, so its whole
                    // state goes over what the relay has.
                    let mut merged = std::mem::take(&mut session.state);
                    merged.extend(state);
                    state = merged;
                }
                // Its numbering continues the relay's either way.
                session.origin = origin.clone();
                session.offset = (session.version + 1).saturating_sub(snap.version);
            } else if snap.version + session.offset < session.version {
                continue; // older than what the relay has
            }
            let relay_version = snap.version + session.offset;
            if relay_version > MAX_RELAY_VERSION || state_bytes(&state) > max {
                resync.insert(snap.session.clone());
                continue;
            }
            session.version = relay_version;
            session.state = state.clone();
            session.from_shadow = snap.from_shadow;
            snap.version = relay_version;
            snap.state = state;
            let key = snap.session.clone();
            log.stats.snapshots_in += 1;
            let bytes = state_bytes(&snap.state) as u64;
            log.stats.replicated_bytes += bytes;
            log.stats.full_copy_bytes += bytes;
            log.commit(key, session, Change::Snapshot(snap), backlog);
            changed = true;
        }
        for delta in m.deltas {
            touched.push(delta.session.clone());
            if resync.contains(&delta.session) {
                continue;
            }
            let (version, mut offset, mut state) = match log.sessions.get(&delta.session) {
                Some(s) => (s.version, s.offset, Some((&s.origin, &s.state))),
                None => (0, log.evicted_floor, None),
            };
            let new = state.is_none();
            let foreign = state.is_some_and(|(o, _)| *o != origin);
            if foreign {
                if delta.version != 1 {
                    // A publisher we have no numbering for, mid-count: its whole state.
                    log.stats.gaps += 1;
                    resync.insert(delta.session.clone());
                    continue;
                }
                offset = version;
            }
            let current = if new || foreign { 0 } else { version - offset };
            if delta.version <= current {
                continue; // a duplicate
            }
            if delta.version != current + 1 {
                log.stats.gaps += 1;
                resync.insert(delta.session.clone());
                continue;
            }
            let mut next = state.take().map(|(_, s)| s.clone()).unwrap_or_default();
            apply_ops(&mut next, &delta.ops);
            let version = delta.version + offset;
            if version > MAX_RELAY_VERSION || state_bytes(&next) > max {
                // The publisher caps sessions too; one that got past it is resynchronized
                // rather than stored over the limit (or numbered past the largest version).
                resync.insert(delta.session.clone());
                continue;
            }
            let session = Session {
                version,
                state: next,
                changed: 0,
                origin: origin.clone(),
                offset,
                from_shadow: delta.from_shadow,
            };
            let mut delta = delta;
            // Subscribers see the relay's numbering.
            delta.version = version;
            let key = delta.session.clone();
            let at = delta.at_ms;
            log.stats.replicated_bytes += delta.ops.iter().map(|o| o.bytes() as u64).sum::<u64>();
            log.stats.full_copy_bytes += state_bytes(&session.state) as u64;
            // A session new to the relay but numbered above the forgotten ones is sent
            // whole: a subscriber's older copy (or none) is replaced, not patched.
            let change = if new && offset > 0 {
                Change::Snapshot(session.snapshot(&key))
            } else {
                Change::Delta(delta)
            };
            log.commit(key, session, change, backlog);
            log.unapplied.push_back((log.seq, at));
            if log.unapplied.len() > backlog {
                log.unapplied.pop_front();
            }
            log.stats.deltas += 1;
            changed = true;
        }
        while log.sessions.len() > self.limits.max_sessions && log.evict_oldest() {}
        let budget = self
            .limits
            .max_service_bytes
            .min(self.limits.max_bytes.saturating_sub(others));
        log.shed_to(budget);
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
                let v = log.acked_for(&s, &origin, now_ms, self.limits.subscriber_ttl_ms);
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
        self.check_names(&m.schema, Some(("subscriber", &m.subscriber)), &m.service)?;
        if let Some(after) = &m.page_after {
            self.check_session("page_after", after)?;
        }
        let max_answer = self.limits.max_answer_bytes;
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
        let first_kept = log.backlog.front().map_or(log.seq + 1, |(seq, _)| *seq);
        // Changes after the cursor are all still in the backlog.
        let covered = in_epoch && m.cursor + 1 >= first_kept;
        let paging = m.page_after.is_some() && covered;
        // The cursor is the subscriber's acknowledgement: only one from this epoch counts,
        // and not while it is still taking a full snapshot's pages (it has not applied
        // everything up to that cursor yet).
        let sub = log
            .subscribers
            .entry(m.subscriber.clone())
            .or_insert(Subscriber {
                cursor: 0,
                seen_ms: now_ms,
            });
        sub.seen_ms = now_ms;
        // A subscriber about to get a full snapshot drops what it holds first: until its
        // last page it acknowledges nothing.
        let mut advanced = false;
        if !covered {
            sub.cursor = 0;
        } else if m.page_after.is_none() {
            advanced = m.cursor > sub.cursor;
            sub.cursor = m.cursor;
        }
        if advanced {
            log.note_applied(now_ms, self.limits.subscriber_ttl_ms);
            // Publishers waiting for acknowledgements look again.
            self.changed.send_modify(|n| *n += 1);
        }
        if paging {
            // The next page of a full snapshot begun at `m.cursor`.
            let (snapshots, more) = log.full_page(m.page_after.as_deref(), max_answer);
            return Ok(Some(StatePullAnswer {
                epoch: self.epoch,
                cursor: m.cursor,
                full: false,
                deltas: vec![],
                snapshots,
                more,
            }));
        }
        if !covered {
            log.stats.full_resyncs += 1;
            let (snapshots, more) = log.full_page(None, max_answer);
            return Ok(Some(StatePullAnswer {
                epoch: self.epoch,
                cursor: log.seq,
                full: true,
                deltas: vec![],
                snapshots,
                more,
            }));
        }
        if m.cursor == log.seq {
            return Ok(None);
        }
        let mut answer = StatePullAnswer {
            epoch: self.epoch,
            cursor: m.cursor,
            ..StatePullAnswer::default()
        };
        let mut bytes = 0;
        for (seq, change) in &log.backlog {
            if *seq <= m.cursor {
                continue;
            }
            let b = change.bytes();
            if answer.cursor > m.cursor && bytes + b > max_answer {
                break; // the rest in the next answer
            }
            bytes += b;
            answer.cursor = *seq;
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
        publisher: &str,
        incarnation: u64,
        sessions: &[String],
        now_ms: u64,
    ) -> Vec<(String, u64)> {
        let services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let Some(log) = services.get(service) else {
            return sessions.iter().map(|s| (s.clone(), 0)).collect();
        };
        let origin = Origin {
            publisher: publisher.to_string(),
            incarnation,
        };
        let ttl = self.limits.subscriber_ttl_ms;
        sessions
            .iter()
            .map(|s| (s.clone(), log.acked_for(s, &origin, now_ms, ttl)))
            .collect()
    }

    fn lookup(&self, m: &StateLookup) -> Result<Option<SessionSnapshot>, RelayError> {
        self.check_names(&m.schema, None, &m.service)?;
        self.check_session("session", &m.session)?;
        let services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        Ok(services
            .get(&m.service)
            .and_then(|log| log.sessions.get(&m.session).map(|s| s.snapshot(&m.session))))
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
            page_after: None,
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
        // Versions are bounded, never wrapped.
        let e = r
            .publish(publish(vec![set("s1", u64::MAX, "k", "v")], &[]), 0)
            .unwrap_err();
        assert_eq!(e.field, "deltas[0].version");
        let e = r
            .publish(publish(vec![set("s1", 0, "k", "v")], &[]), 0)
            .unwrap_err();
        assert_eq!(e.field, "deltas[0].version");
        // A lookup is checked like the rest.
        let lookup = |service: &str, session: &str| StateLookup {
            schema: STATE_SCHEMA.into(),
            service: service.into(),
            session: session.into(),
        };
        assert_eq!(
            r.lookup(&lookup("cart", &"k".repeat(257)))
                .unwrap_err()
                .field,
            "session"
        );
        assert_eq!(
            r.lookup(&lookup("no spaces", "s")).unwrap_err().field,
            "service"
        );
        assert_eq!(r.lookup(&lookup("cart", "s1")), Ok(None));
    }

    fn snapshot(session: &str, version: u64, state: &[(&str, &str)]) -> SessionSnapshot {
        SessionSnapshot {
            session: session.into(),
            version,
            state: state
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            from_shadow: false,
        }
    }

    #[test]
    fn a_foreign_incarnation_cannot_merge_into_a_session_and_the_owner_s_whole_state_wins() {
        let r = relay();
        for v in 1..=2 {
            r.publish(publish(vec![set("s1", v, "cart", "book")], &[]), 0)
                .unwrap();
        }
        // Another publisher (a forger, or an edge the client moved to) writes the session
        // with a new incarnation and a key the owner never wrote.
        let mut forged = publish(vec![], &[]);
        forged.publisher = "evil".into();
        forged.incarnation = 999;
        forged.snapshots = vec![snapshot(
            "s1",
            1,
            &[("cart", "book"), ("coupon", "FREE-100")],
        )];
        r.publish(forged, 0).unwrap();
        // The owner's next change finds the session foreign and is asked for its whole
        // state; that whole state replaces the session: the injected key is gone.
        let ack = r
            .publish(publish(vec![set("s1", 3, "cart", "book,pen")], &[]), 0)
            .unwrap();
        assert_eq!(ack.resync, vec!["s1".to_string()]);
        let mut whole = publish(vec![], &[]);
        whole.snapshots = vec![snapshot("s1", 3, &[("cart", "book,pen")])];
        r.publish(whole, 0).unwrap();
        let lookup = StateLookup {
            schema: STATE_SCHEMA.into(),
            service: "cart".into(),
            session: "s1".into(),
        };
        let state = r.lookup(&lookup).unwrap().unwrap();
        assert_eq!(state.state.len(), 1, "{:?}", state.state);
        assert_eq!(state.state["cart"], "book,pen");
        // The same proxy restarted (new incarnation, same name) knows only what changed
        // since: its whole state goes over the relay's.
        let mut restarted = publish(vec![], &[]);
        restarted.incarnation = 2;
        restarted.snapshots = vec![snapshot("s1", 1, &[("coupon", "SAVE-5")])];
        r.publish(restarted, 0).unwrap();
        let state = r.lookup(&lookup).unwrap().unwrap();
        assert_eq!(state.state["cart"], "book,pen");
        assert_eq!(state.state["coupon"], "SAVE-5");
        // Acknowledgements are in the owner's numbering only: another publisher with the
        // same incarnation number is told nothing.
        let sub = r.pull(&pull("d", 0, 0), 0).unwrap().unwrap();
        r.pull(&pull("d", 77, sub.cursor), 0).unwrap();
        assert_eq!(r.acked("cart", "edge-1", 2, &["s1".into()], 0)[0].1, 1);
        assert_eq!(r.acked("cart", "evil", 2, &["s1".into()], 0)[0].1, 0);
    }

    #[test]
    fn full_snapshots_come_in_pages_and_acknowledge_nothing_until_the_last() {
        let r = MemoryRelay::new(
            RelayLimits {
                max_answer_bytes: 2_000,
                ..RelayLimits::default()
            },
            77,
        );
        let value = "v".repeat(300);
        for i in 0..20 {
            r.publish(
                publish(vec![set(&format!("s{i:02}"), 1, "k", &value)], &[]),
                0,
            )
            .unwrap();
        }
        let mut got = BTreeMap::new();
        let first = r.pull(&pull("d", 0, 0), 0).unwrap().unwrap();
        assert!(first.full && first.more.is_some());
        let start = first.cursor;
        let mut page = first;
        let mut pages = 1;
        loop {
            let bytes: usize = page.snapshots.iter().map(|s| state_bytes(&s.state)).sum();
            assert!(bytes <= 2_000, "a page holds {bytes} bytes");
            for snap in &page.snapshots {
                got.insert(snap.session.clone(), snap.version);
            }
            // Nothing is acknowledged while the pages come.
            assert_eq!(r.acked("cart", "edge-1", 1, &["s00".into()], 0)[0].1, 0);
            let Some(after) = page.more.clone() else {
                break;
            };
            // A change between pages arrives later as a delta after the first cursor.
            if pages == 2 {
                r.publish(publish(vec![set("s00", 2, "k", "changed")], &[]), 0)
                    .unwrap();
            }
            let mut next = pull("d", 77, start);
            next.page_after = Some(after);
            page = r.pull(&next, 0).unwrap().unwrap();
            assert!(!page.full);
            assert_eq!(page.cursor, start);
            pages += 1;
        }
        assert!(pages >= 4, "{pages} pages");
        assert_eq!(got.len(), 20);
        let rest = r.pull(&pull("d", 77, start), 0).unwrap().unwrap();
        assert_eq!(rest.deltas.len(), 1);
        assert_eq!(rest.deltas[0].ops[0].value.as_deref(), Some("changed"));
        r.pull(&pull("d", 77, rest.cursor), 0).unwrap();
        assert_eq!(r.acked("cart", "edge-1", 1, &["s00".into()], 0)[0].1, 2);
        // Changes are paged too: each answer within the limit, its cursor the last change
        // it holds.
        for i in 0..20 {
            r.publish(
                publish(
                    vec![set(&format!("s{i:02}"), 2 + u64::from(i == 0), "k", &value)],
                    &[],
                ),
                0,
            )
            .unwrap();
        }
        let part = r.pull(&pull("d", 77, rest.cursor), 0).unwrap().unwrap();
        assert!(!part.full && part.deltas.len() < 20 && !part.deltas.is_empty());
        assert_eq!(part.cursor, rest.cursor + part.deltas.len() as u64);
    }

    #[test]
    fn bytes_are_bounded_per_service_and_in_all_and_a_flood_evicts_only_its_own_service() {
        let r = MemoryRelay::new(
            RelayLimits {
                max_service_bytes: 100_000,
                max_bytes: 150_000,
                ..RelayLimits::default()
            },
            77,
        );
        let mut honest = publish(vec![set("h1", 1, "k", "v")], &[]);
        honest.service = "checkout".into();
        r.publish(honest, 0).unwrap();
        let value = "x".repeat(10_000);
        for i in 0..200 {
            r.publish(publish(vec![set(&format!("f{i}"), 1, "k", &value)], &[]), 0)
                .unwrap();
            let stats = r.stats(0);
            assert!(
                stats.services["cart"].bytes <= 100_000,
                "{}",
                stats.services["cart"].bytes
            );
            assert!(stats.bytes <= 150_000, "{}", stats.bytes);
        }
        let stats = r.stats(0);
        assert!(stats.services["cart"].evicted > 0);
        assert_eq!(
            stats.services["checkout"].sessions, 1,
            "the other service keeps its own"
        );
        // The newest of the flood is kept; an evicted session is asked for again whole.
        let ack = r.publish(publish(vec![], &["f0", "f199"]), 0).unwrap();
        assert_eq!(ack.resync, vec!["f0".to_string()]);
    }

    #[test]
    fn a_forgotten_session_comes_back_numbered_above_any_copy_a_subscriber_holds() {
        let r = MemoryRelay::new(
            RelayLimits {
                max_sessions: 1,
                ..RelayLimits::default()
            },
            77,
        );
        // s1 reaches relay version 4 through a restart of its publisher (offset 3).
        for v in 1..=3 {
            r.publish(publish(vec![set("s1", v, "k", &v.to_string())], &[]), 0)
                .unwrap();
        }
        let mut restarted = publish(vec![set("s1", 1, "k", "4")], &[]);
        restarted.incarnation = 2;
        r.publish(restarted, 0).unwrap();
        let sub = r.pull(&pull("d", 0, 0), 0).unwrap().unwrap();
        assert_eq!(sub.snapshots[0].version, 4, "the subscriber holds s1 at 4");
        // s2 pushes s1 out; s1 comes back from its publisher at its own version 2.
        r.publish(publish(vec![set("s2", 1, "k", "x")], &[]), 0)
            .unwrap();
        let mut back = publish(vec![], &[]);
        back.incarnation = 2;
        back.snapshots = vec![snapshot("s1", 2, &[("k", "5")])];
        r.publish(back, 0).unwrap();
        let next = r.pull(&pull("d", 77, sub.cursor), 0).unwrap().unwrap();
        let s1 = next.snapshots.iter().find(|s| s.session == "s1").unwrap();
        assert!(
            s1.version > 4,
            "numbered {} — a subscriber at 4 would keep its copy",
            s1.version
        );
        // A new session's first delta after a forgetting is sent whole, so a subscriber's
        // copy is replaced rather than patched (or taken as a gap).
        r.publish(publish(vec![set("s3", 1, "k", "y")], &[]), 0)
            .unwrap();
        let after = r.pull(&pull("d", 77, next.cursor), 0).unwrap().unwrap();
        assert!(after.deltas.is_empty());
        assert_eq!(after.snapshots.len(), 1);
        assert!(after.snapshots[0].version > 4);
        // In the publisher's own numbering the acknowledgement is still its version.
        r.pull(&pull("d", 77, after.cursor), 0).unwrap();
        let mut watch = publish(vec![], &["s3"]);
        watch.incarnation = 1;
        assert_eq!(r.publish(watch, 0).unwrap().acked, vec![("s3".into(), 1)]);
    }
}
