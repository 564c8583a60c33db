//! The session table in Envoy's shared data: index buckets and state slots, the capture
//! and flush of changes, what is sent to the relay and acknowledged, and the subscriber's
//! side (snapshots and deltas applied).

use super::contract::{DropReason, parse_changes};
use super::worker::QueuedWrite;
use super::{BUCKETS, StateSyncConfig};
use crate::shared::{Encoding, SetError, SharedStore};
use serde::{Deserialize, Serialize};
use shadowmesh_wire::{SessionDelta, SessionSnapshot, StateOp, apply_ops, state_bytes};
use std::collections::BTreeMap;

/// One session in an index bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEntry {
    /// Session key.
    pub s: String,
    /// Its state slot within the bucket.
    pub slot: u32,
    /// Latest version.
    pub v: u64,
    /// Latest version handed to the relay.
    pub sent: u64,
    /// Latest version every shadow acknowledged.
    pub acked: u64,
    /// Its whole state must go (a gap, a lost batch, a relay restart).
    pub full: bool,
    /// A change could not be replicated: the session stays on the primary.
    pub pinned: bool,
    /// Last write (ms).
    pub t: u64,
    /// Workers whose [`CaptureQueue`](super::CaptureQueue) holds changes of this session not in the table yet:
    /// while any does, no shadow may serve the session and the primary is never handed the
    /// table's (older) state.
    pub pending: u32,
    /// The table's latest change came from a shadow: the primary may be behind it.
    pub from_shadow: bool,
}

impl SessionEntry {
    /// Whether a shadow may serve this session: every change captured is in the table and
    /// every version written is acknowledged.
    pub fn replicated(&self) -> bool {
        !self.pinned && self.pending == 0 && self.acked >= self.v
    }

    /// Takes in what recording a change in the slot came to.
    fn took(&mut self, recorded: Result<Option<Recorded>, DropReason>) {
        match recorded {
            Ok(Some(r)) => {
                self.v = self.v.max(r.version);
                self.from_shadow = r.from_shadow;
            }
            Ok(None) => {}
            Err(_) => self.pin(),
        }
    }

    /// A change of the session is not in the table: it stays on the primary, and the
    /// primary — which may hold that change — is never handed the table's state.
    fn pin(&mut self) {
        self.pinned = true;
        self.from_shadow = false;
    }

    /// [`SessionEntry::pin`] for a refused change captured at `stamp_ns` while the table's
    /// newest change is `newest_ns`: a shadow's change newer than the refused one is still
    /// one the primary lacks, so the hand-over stays armed.
    fn pin_at(&mut self, stamp_ns: u64, newest_ns: u64) {
        if stamp_ns >= newest_ns {
            self.pin();
        } else {
            self.pinned = true;
        }
    }
}

/// A change recorded in a session's slot.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Recorded {
    /// Its version.
    version: u64,
    /// The slot's newest change is a shadow's.
    from_shadow: bool,
}

/// One session's state slot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionSlot {
    /// Session key (a reused slot is recognised by it).
    pub s: String,
    /// Version of `state`.
    pub v: u64,
    /// The state.
    pub state: BTreeMap<String, String>,
    /// Changes not handed to the relay yet.
    pub ops: Vec<SessionDelta>,
    /// The last change came from a shadow: the primary may be behind.
    pub from_shadow: bool,
    /// The relay's version of the state this edge started from (a session it adopted
    /// after a restart): `base + v` is the session's version as the application sees it,
    /// which never goes back.
    pub base: u64,
    /// Per key, the capture stamp (ns) of its last change: a change older than that is
    /// skipped. Two workers' queues may reach the table in either order; the stamps put a
    /// client's changes back in the order it made them (a response is captured before
    /// the client can send its next request).
    pub stamps: BTreeMap<String, u64>,
    /// Stamp of the newest change applied (whose side `from_shadow` tells).
    pub newest_ns: u64,
}

impl SessionSlot {
    /// The session's version as handed to applications.
    pub fn app_version(&self) -> u64 {
        self.base + self.v
    }
}

/// One captured state change.
#[derive(Debug, Clone, PartialEq)]
pub struct StateWrite {
    /// Its operations, in order.
    pub ops: Vec<StateOp>,
    /// When it was captured (ns, Envoy's clock): orders a session's changes.
    pub stamp_ns: u64,
    /// Captured from a shadow's response.
    pub from_shadow: bool,
}

/// The index buckets that may hold sessions waiting for an acknowledgement, one bit each:
/// kept by the publishing worker between ticks. Every bucket when it starts (a worker
/// that just took the publishing over knows nothing yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watched(u64);

impl Default for Watched {
    fn default() -> Self {
        Watched(u64::MAX)
    }
}

// One bit per bucket in the dirty and watched masks.
const _: () = assert!(BUCKETS == 64);

/// What a [`SessionTable::flush`] did.
#[derive(Debug, Default, PartialEq)]
pub struct Flushed {
    /// New versions written.
    pub versions: u64,
    /// Changes taken into the table (applied, or superseded by newer ones).
    pub captured: u64,
    /// Sessions whose changes were dropped (their sessions are pinned to the primary).
    pub dropped: Vec<(String, DropReason)>,
    /// Changes to flush again next tick (the host refused a write).
    pub retry: Vec<QueuedWrite>,
}

/// How late a worker's queued change may reach the table and still be ordered by its
/// stamp (queues are flushed every tick; the rest is the clock stepping back).
pub const REORDER_WINDOW_NS: u64 = 10_000_000_000;

// A queued change reaches the table a tick after its capture (a few when a flush is
// retried): the longest tick the configuration accepts with state sync must fit in the
// window several times. Checked here, where both bounds meet, so neither moves alone.
const _: () = assert!(REORDER_WINDOW_NS >= 5 * crate::config::MAX_STATE_SYNC_TICK_MS * 1_000_000);

/// The session tables' encoding in shared data: they are read and written on the request
/// path.
const ENCODING: Encoding = Encoding::Compact;

fn read<T: serde::de::DeserializeOwned>(store: &dyn SharedStore, key: &str) -> Option<T> {
    crate::shared::read_as(ENCODING, store, key)
}

fn update<T, F>(store: &dyn SharedStore, key: &str, f: F) -> Result<Option<T>, SetError>
where
    T: Serialize + serde::de::DeserializeOwned,
    F: FnMut(Option<&T>) -> Option<T>,
{
    crate::shared::update_as(ENCODING, store, key, f)
}

/// A service's sessions in shared data.
pub struct SessionTable<'a> {
    store: &'a dyn SharedStore,
    service: &'a str,
    per_bucket: u32,
}

/// Bucket of a session key (FNV-1a).
pub fn bucket_of(session: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in session.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h % BUCKETS
}

/// What a captured change became.
#[derive(Debug, Clone, PartialEq)]
pub enum Capture {
    /// Recorded as this version.
    Recorded(u64),
    /// Dropped; the session is pinned to the primary.
    Dropped(DropReason),
}

impl<'a> SessionTable<'a> {
    /// The table of `service` holding up to `max_sessions`.
    pub fn new(store: &'a dyn SharedStore, service: &'a str, max_sessions: u64) -> Self {
        SessionTable {
            store,
            service,
            per_bucket: max_sessions.div_ceil(BUCKETS) as u32,
        }
    }

    fn index_key(&self, bucket: u64) -> String {
        // v3: the generation in an Envoy gauge (v2: in shared data; entries with
        // `pending`, slots with stamps). A reloaded filter sharing this Envoy's memory
        // with an older one must not use its tables: the two would not see each other's
        // generation moves.
        format!("shadowmesh.v3.ssm.{}.idx.{bucket}", self.service)
    }

    fn slot_key(&self, bucket: u64, slot: u32) -> String {
        format!("shadowmesh.v3.ssm.{}.slot.{bucket}.{slot}", self.service)
    }

    /// The session's index entry.
    pub fn entry(&self, session: &str) -> Option<SessionEntry> {
        let entries: Vec<SessionEntry> = read(self.store, &self.index_key(bucket_of(session)))?;
        entries.into_iter().find(|e| e.s == session)
    }

    /// The session's state slot.
    pub fn slot(&self, session: &str) -> Option<SessionSlot> {
        self.slot_of(&self.entry(session)?)
    }

    /// Stamp of the newest change in the session's slot (0 if none).
    fn newest_ns(&self, entry: &SessionEntry) -> u64 {
        self.slot_of(entry).map_or(0, |s| s.newest_ns)
    }

    /// The state slot of an entry already read.
    pub fn slot_of(&self, entry: &SessionEntry) -> Option<SessionSlot> {
        let slot: SessionSlot = read(self.store, &self.slot_key(bucket_of(&entry.s), entry.slot))?;
        (slot.s == entry.s).then_some(slot)
    }

    /// Whether a request of `session` may go to a shadow: one this table holds must be
    /// replicated; one it does not hold must have written nothing here.
    pub fn may_redirect(&self, session: &str) -> bool {
        self.may_redirect_entry(session, self.entry(session).as_ref())
    }

    /// [`SessionTable::may_redirect`] with the session's entry already read.
    pub fn may_redirect_entry(&self, session: &str, entry: Option<&SessionEntry>) -> bool {
        match entry {
            Some(e) => e.replicated(),
            None => self.may_redirect_unknown(session),
        }
    }

    /// Finds or makes the session's entry; `f` changes it. Returns the entry as written.
    fn with_entry(
        &self,
        session: &str,
        now_ms: u64,
        mut f: impl FnMut(&mut SessionEntry),
    ) -> Result<Option<SessionEntry>, SetError> {
        let bucket = bucket_of(session);
        let mut written = None;
        // A session forgotten, or newly behind a shadow: views of entries seen before are
        // no longer good (the table's generation moves on).
        let mut moved_on = false;
        update::<Vec<SessionEntry>, _>(self.store, &self.index_key(bucket), |cur| {
            moved_on = false;
            let mut entries = cur.cloned().unwrap_or_default();
            let i = match entries.iter().position(|e| e.s == session) {
                Some(i) => i,
                None => {
                    let used: Vec<u32> = entries.iter().map(|e| e.slot).collect();
                    let slot = if entries.len() < self.per_bucket as usize {
                        (0..self.per_bucket).find(|s| !used.contains(s))?
                    } else {
                        // Forget the oldest session whose state the shadows have.
                        let (old, _) = entries
                            .iter()
                            .enumerate()
                            .filter(|(_, e)| e.replicated() && e.sent >= e.v)
                            .min_by_key(|(_, e)| e.t)?;
                        moved_on = true;
                        entries.remove(old).slot
                    };
                    entries.push(SessionEntry {
                        s: session.to_string(),
                        slot,
                        v: 0,
                        sent: 0,
                        acked: 0,
                        full: false,
                        pinned: false,
                        t: now_ms,
                        pending: 0,
                        from_shadow: false,
                    });
                    entries.len() - 1
                }
            };
            let was_behind = entries[i].from_shadow;
            f(&mut entries[i]);
            moved_on |= entries[i].from_shadow && !was_behind;
            written = Some(entries[i].clone());
            Some(entries)
        })?;
        if moved_on {
            self.bump_generation();
        }
        if written.is_none() {
            // No room: whatever this session writes is not in the table, so it must never
            // be taken for a session that wrote nothing (fail closed).
            self.mark_mask(&self.overflow_key(), 1 << bucket);
        }
        Ok(written)
    }

    /// The name of `service`'s table generation: also an Envoy stat, hence the
    /// stats-tag form.
    pub fn generation_name(service: &str) -> String {
        format!("shadowmesh.service.{service}.state_generation")
    }

    /// The table's generation: it changes whenever a session leaves the table or its
    /// newest change becomes a shadow's — the only changes that make an entry seen before
    /// wrong for the primary's path (see [`SeenSessions`](super::SeenSessions)). `None` if it cannot be read:
    /// then nothing counts as seen.
    pub fn generation(&self) -> Option<u64> {
        self.store.read_signal(&Self::generation_name(self.service))
    }

    fn bump_generation(&self) {
        let _ = self
            .store
            .raise_signal(&Self::generation_name(self.service));
    }

    fn overflow_key(&self) -> String {
        format!("shadowmesh.v3.ssm.{}.overflow", self.service)
    }

    /// Whether a session this table holds no entry of may go to a shadow: only if its
    /// bucket never turned a session away (then it has written nothing here).
    pub fn may_redirect_unknown(&self, session: &str) -> bool {
        let mask: u64 = read(self.store, &self.overflow_key()).unwrap_or(0);
        mask & (1 << bucket_of(session)) == 0
    }

    /// The session's entry, made if there is none (`Ok(None)`: no room).
    fn entry_or_make(&self, session: &str, now_ms: u64) -> Result<Option<SessionEntry>, SetError> {
        match self.entry(session) {
            Some(e) => Ok(Some(e)),
            None => self.with_entry(session, now_ms, |_| {}),
        }
    }

    /// Keeps `session` on the primary and out of replication for as long as this table
    /// holds it.
    pub fn pin(&self, session: &str, now_ms: u64) {
        let _ = self.with_entry(session, now_ms, SessionEntry::pin);
    }

    /// Records a change of `session` seen in a response directly in the table: the next
    /// version (the current one if newer changes superseded all of it), or the reason it
    /// was dropped.
    pub fn capture(
        &self,
        session: &str,
        change: Result<StateWrite, DropReason>,
        max_session_bytes: usize,
        now_ms: u64,
    ) -> Capture {
        let write = match change {
            Ok(w) => w,
            Err(reason) => {
                self.pin(session, now_ms);
                return Capture::Dropped(reason);
            }
        };
        // The entry is written once, after the state: here it is only found (or made).
        let Ok(Some(entry)) = self.entry_or_make(session, now_ms) else {
            return Capture::Dropped(DropReason::Full);
        };
        let recorded = self.record(&entry, std::slice::from_ref(&write), max_session_bytes);
        let written = self.with_entry(session, now_ms, |e| {
            e.took(recorded);
            e.t = now_ms;
        });
        if let (Ok(Some(_)), Ok(Some(_))) = (recorded, &written) {
            self.mark_dirty(session);
        }
        match (recorded, written) {
            (Err(reason), _) => Capture::Dropped(reason),
            (Ok(_), Ok(Some(e))) => Capture::Recorded(e.v),
            (Ok(_), _) => Capture::Dropped(DropReason::Full),
        }
    }

    /// Async capture, on the response path, of a worker's first change of the session
    /// since its last flush: the session's entry counts one more worker with changes on
    /// their way (made if new). The changes wait in the worker's [`CaptureQueue`](super::CaptureQueue).
    pub fn note_pending(&self, session: &str, now_ms: u64) -> Result<(), DropReason> {
        match self.with_entry(session, now_ms, |e| {
            e.pending = e.pending.saturating_add(1);
            e.t = now_ms;
        }) {
            Ok(Some(_)) => Ok(()),
            _ => Err(DropReason::Full),
        }
    }

    /// Moves a worker's queued changes into the table: per session one new version with
    /// the operations newer changes did not supersede, and its pending count lowered by
    /// one (this worker's batch). A session with a change the contract refuses (see
    /// [`parse_changes`]), or over its cap, is pinned to the primary.
    pub fn flush(&self, queued: Vec<QueuedWrite>, cfg: &StateSyncConfig, now_ms: u64) -> Flushed {
        let mut by_session: BTreeMap<String, Vec<QueuedWrite>> = BTreeMap::new();
        for q in queued {
            by_session.entry(q.session.clone()).or_default().push(q);
        }
        let mut out = Flushed::default();
        let mut dirty = 0u64;
        for (session, queued) in by_session {
            let parsed: Result<Vec<StateWrite>, DropReason> = queued
                .iter()
                .map(|q| {
                    parse_changes(&q.header, cfg).map(|ops| StateWrite {
                        ops,
                        stamp_ns: q.stamp_ns,
                        from_shadow: false,
                    })
                })
                .collect();
            let mut writes = match parsed {
                Ok(writes) => writes,
                Err(reason) => {
                    let refused_ns = queued.iter().map(|q| q.stamp_ns).max().unwrap_or(0);
                    match self.with_entry(&session, now_ms, |e| {
                        // Read again on every attempt: a shadow's change recorded
                        // meanwhile moves the entry, and the write retries.
                        e.pin_at(refused_ns, self.newest_ns(e));
                        e.pending = e.pending.saturating_sub(1);
                    }) {
                        Err(_) => out.retry.extend(queued),
                        // Made or not (no room marks its bucket), it stays on the primary.
                        Ok(_) => out.dropped.push((session, reason)),
                    }
                    continue;
                }
            };
            writes.sort_by_key(|w| w.stamp_ns);
            // Never evicted while pending; made again if it was anyway.
            let entry = match self.entry_or_make(&session, now_ms) {
                Ok(Some(e)) => e,
                Ok(None) => {
                    // No room (its bucket is marked: the session stays on the primary).
                    out.dropped.push((session, DropReason::Full));
                    continue;
                }
                Err(_) => {
                    out.retry.extend(queued);
                    continue;
                }
            };
            let recorded = self.record(&entry, &writes, cfg.max_session_bytes);
            if recorded == Err(DropReason::Full) {
                // The host refused the slot's write: nothing changed, try again.
                out.retry.extend(queued);
                continue;
            }
            let latest_ns = writes.last().map_or(0, |w| w.stamp_ns);
            let written = self.with_entry(&session, now_ms, |e| {
                match recorded {
                    Err(_) => e.pin_at(latest_ns, self.newest_ns(e)),
                    took => e.took(took),
                }
                e.pending = e.pending.saturating_sub(1);
                e.t = now_ms;
            });
            match (recorded, written) {
                (_, Err(_) | Ok(None)) => {
                    // The state is written but the entry still counts the changes as
                    // pending: writing them again is harmless (the same operations with
                    // the same stamps), forgetting them would hold the session for good.
                    out.retry.extend(queued);
                }
                (Err(reason), _) => out.dropped.push((session, reason)),
                (Ok(Some(_)), _) => {
                    dirty |= 1 << bucket_of(&session);
                    out.versions += 1;
                    out.captured += writes.len() as u64;
                }
                (Ok(None), _) => out.captured += writes.len() as u64,
            }
        }
        if dirty != 0 {
            self.mark_dirty_mask(dirty);
        }
        out
    }

    /// Applies `writes` (in stamp order) to the session's slot as one new version: each
    /// operation unless its key changed later (a newer stamp). `Ok(None)` if nothing was
    /// left to apply; `Oversize` if the state would outgrow its cap (the slot is kept as
    /// it was); `Full` if the host refused the write.
    fn record(
        &self,
        entry: &SessionEntry,
        writes: &[StateWrite],
        max_session_bytes: usize,
    ) -> Result<Option<Recorded>, DropReason> {
        let Some(first) = writes.first() else {
            return Ok(None);
        };
        let session = entry.s.as_str();
        let key = self.slot_key(bucket_of(session), entry.slot);
        let mut outcome = Ok(None);
        let written = update::<SessionSlot, _>(self.store, &key, |cur| {
            let mut slot = match cur {
                Some(s) if s.s == session => s.clone(),
                // A reused slot, or none yet: this session starts here.
                _ => SessionSlot {
                    s: session.to_string(),
                    v: entry.v,
                    ..SessionSlot::default()
                },
            };
            let mut ops = Vec::new();
            for w in writes {
                let mut any = false;
                for op in &w.ops {
                    let last = slot.stamps.get(&op.key).copied().unwrap_or(0);
                    // Older than the key's last change: a worker's queue reached the
                    // table late — unless by more than any queue waits, which is the
                    // clock stepping back (the change is newer; applying it loses nothing).
                    if w.stamp_ns < last && last - w.stamp_ns <= REORDER_WINDOW_NS {
                        continue;
                    }
                    slot.stamps.insert(op.key.clone(), w.stamp_ns);
                    ops.push(op.clone());
                    any = true;
                }
                if any && w.stamp_ns >= slot.newest_ns {
                    slot.newest_ns = w.stamp_ns;
                    slot.from_shadow = w.from_shadow;
                }
            }
            if ops.is_empty() {
                outcome = Ok(None);
                return None;
            }
            apply_ops(&mut slot.state, &ops);
            if state_bytes(&slot.state) > max_session_bytes {
                outcome = Err(DropReason::Oversize);
                return None;
            }
            slot.v += 1;
            outcome = Ok(Some(Recorded {
                version: slot.v,
                from_shadow: slot.from_shadow,
            }));
            if entry.pinned {
                // Never sent: keeping them would only grow the slot.
                slot.ops.clear();
                return Some(slot);
            }
            slot.ops.push(SessionDelta {
                session: session.to_string(),
                version: slot.v,
                ops,
                // Lag is measured from the capture, queueing included.
                at_ms: first.stamp_ns / 1_000_000,
                from_shadow: slot.from_shadow,
            });
            Some(slot)
        });
        match written {
            Ok(_) => outcome,
            Err(_) => Err(DropReason::Full),
        }
    }

    /// What to send the relay: deltas of sessions with unsent versions (or their whole
    /// state), and the sessions waiting for an acknowledgement. Marks what it takes as
    /// sent. At most `max` sessions. Reads only the buckets marked dirty and the ones
    /// `watched` (the publisher's between ticks): a tick costs what changed, not the
    /// table's size.
    pub fn take_outbound(&self, max: usize, watched: &mut Watched) -> Outbound {
        let mut out = Outbound::default();
        let mut dirty = self.take_dirty();
        while dirty != 0 {
            let bucket = u64::from(dirty.trailing_zeros());
            if out.sessions.len() >= max {
                // Left for the next tick.
                self.mark_dirty_mask(dirty);
                break;
            }
            dirty &= !(1 << bucket);
            let before = out.sessions.len();
            self.take_from(bucket, None, max, &mut out);
            if out.sessions.len() > before {
                watched.0 |= 1 << bucket;
            }
            if out.sessions.len() >= max {
                // The bucket may hold more than fitted.
                self.mark_dirty_mask(1 << bucket);
            }
        }
        out.watch = self.unacknowledged(max, watched);
        out
    }

    fn dirty_key(&self) -> String {
        format!("shadowmesh.v3.ssm.{}.dirty", self.service)
    }

    /// Marks buckets as holding something to send.
    fn mark_dirty_mask(&self, mask: u64) {
        self.mark_mask(&self.dirty_key(), mask);
    }

    /// Marks every bucket dirty: the publisher's periodic sweep, so that a mark the host
    /// refused delays a version, never strands it.
    pub fn sweep(&self) {
        self.mark_dirty_mask(u64::MAX);
    }

    fn mark_mask(&self, key: &str, mask: u64) {
        let _ = update::<u64, _>(self.store, key, |cur| {
            let cur = cur.copied().unwrap_or(0);
            (cur | mask != cur).then_some(cur | mask)
        });
    }

    fn mark_dirty(&self, session: &str) {
        self.mark_dirty_mask(1 << bucket_of(session));
    }

    /// The dirty buckets, cleared. A bucket marked after this is read next tick; one
    /// changed before it and marked after is read then too (marking follows the change).
    fn take_dirty(&self) -> u64 {
        let mut taken = 0;
        let _ = update::<u64, _>(self.store, &self.dirty_key(), |cur| {
            taken = cur.copied().unwrap_or(0);
            (taken != 0).then_some(0)
        });
        taken
    }

    /// Like [`SessionTable::take_outbound`] for one session (event mode).
    pub fn take_session(&self, session: &str) -> Outbound {
        let mut out = Outbound::default();
        self.take_from(bucket_of(session), Some(session), 1, &mut out);
        out.watch = out.sessions.clone();
        out
    }

    fn take_from(&self, bucket: u64, only: Option<&str>, max: usize, out: &mut Outbound) {
        let key = self.index_key(bucket);
        let mut taken: Vec<(String, u32, bool, u64)> = Vec::new();
        let _ = update::<Vec<SessionEntry>, _>(self.store, &key, |cur| {
            taken.clear();
            let mut entries = cur.cloned()?;
            let mut any = false;
            for e in entries
                .iter_mut()
                .filter(|e| !e.pinned && only.is_none_or(|s| s == e.s))
            {
                if (e.v > e.sent || e.full) && out.sessions.len() + taken.len() < max {
                    taken.push((e.s.clone(), e.slot, e.full, e.sent));
                    e.sent = e.v;
                    e.full = false;
                    any = true;
                }
            }
            any.then_some(entries)
        });
        for (session, slot, full, sent) in taken {
            let skey = self.slot_key(bucket, slot);
            let mut deltas = Vec::new();
            let mut snapshot = None;
            let _ = update::<SessionSlot, _>(self.store, &skey, |cur| {
                let mut s = cur.filter(|s| s.s == session)?.clone();
                deltas.clear();
                snapshot = None;
                // Deltas when they continue what was sent; the whole state otherwise.
                let continuous = s.ops.first().is_some_and(|d| d.version == sent + 1);
                if full || !continuous {
                    snapshot = Some(SessionSnapshot {
                        session: session.clone(),
                        version: s.v,
                        state: s.state.clone(),
                        from_shadow: s.from_shadow,
                    });
                } else {
                    deltas = s.ops.clone();
                }
                s.ops.clear();
                Some(s)
            });
            out.deltas.extend(deltas);
            out.snapshots.extend(snapshot);
            out.sessions.push(session);
        }
    }

    /// Sessions with versions the shadows have not acknowledged (at most `max`), looked
    /// for in the `watched` buckets; a bucket found without any is no longer watched.
    pub fn unacknowledged(&self, max: usize, watched: &mut Watched) -> Vec<String> {
        let mut out = Vec::new();
        for bucket in 0..BUCKETS {
            if watched.0 & (1 << bucket) == 0 {
                continue;
            }
            if out.len() >= max {
                break;
            }
            let entries: Vec<SessionEntry> =
                read(self.store, &self.index_key(bucket)).unwrap_or_default();
            let before = out.len();
            out.extend(
                entries
                    .into_iter()
                    .filter(|e| !e.pinned && e.acked < e.v)
                    .map(|e| e.s),
            );
            if out.len() == before {
                watched.0 &= !(1 << bucket);
            }
        }
        out.truncate(max);
        out
    }

    /// Applies the relay's answer: acknowledged versions (never lowered), sessions to
    /// resend whole.
    pub fn on_ack(&self, acked: &[(String, u64)], resync: &[String]) {
        for (session, v) in acked {
            self.update_existing(session, |e| e.acked = e.acked.max(*v));
        }
        self.resend_whole(resync);
    }

    /// After a failed publish: the sessions it carried go whole next time.
    pub fn resend_whole(&self, sessions: &[String]) {
        let mut dirty = 0u64;
        for session in sessions {
            self.update_existing(session, |e| e.full = true);
            dirty |= 1 << bucket_of(session);
        }
        if dirty != 0 {
            self.mark_dirty_mask(dirty);
        }
    }

    /// The relay restarted without its memory: every session goes whole, nothing is
    /// acknowledged until the shadows have it again.
    pub fn reset_replication(&self) {
        for bucket in 0..BUCKETS {
            let _ = update::<Vec<SessionEntry>, _>(self.store, &self.index_key(bucket), |cur| {
                let mut entries = cur.cloned()?;
                for e in &mut entries {
                    e.full = true;
                    e.acked = 0;
                }
                Some(entries)
            });
        }
        self.sweep();
    }

    fn update_existing(&self, session: &str, mut f: impl FnMut(&mut SessionEntry)) {
        let key = self.index_key(bucket_of(session));
        let _ = update::<Vec<SessionEntry>, _>(self.store, &key, |cur| {
            let mut entries = cur.cloned()?;
            let e = entries.iter_mut().find(|e| e.s == session)?;
            f(e);
            Some(entries)
        });
    }

    /// Publisher: records a session it had no record of, with its whole state as the relay
    /// has it (if any): later changes apply to it, and a resend of the whole state is
    /// whole. False if there is no room.
    pub fn adopt(&self, session: &str, known: Option<&SessionSnapshot>, now_ms: u64) -> bool {
        let Ok(Some(entry)) = self.with_entry(session, now_ms, |_| {}) else {
            return false;
        };
        let Some(known) = known else { return true };
        let key = self.slot_key(bucket_of(session), entry.slot);
        let mut adopted = false;
        let written = update::<SessionSlot, _>(self.store, &key, |cur| {
            // A change captured meanwhile is newer than the relay's answer.
            if cur.is_some_and(|s| s.s == session && s.v > 0) {
                adopted = false;
                return None;
            }
            adopted = true;
            // Version 0 of its own on top of the relay's, no changes to send yet.
            Some(SessionSlot {
                s: session.to_string(),
                state: known.state.clone(),
                from_shadow: known.from_shadow,
                base: known.version,
                ..SessionSlot::default()
            })
        });
        if adopted && written.is_ok() && known.from_shadow {
            // Through `with_entry`, which moves the generation on for a session newly
            // behind a shadow.
            let _ = self.with_entry(session, now_ms, |e| e.from_shadow = true);
        }
        written.is_ok()
    }

    /// Subscriber: drops every session (before a full snapshot).
    pub fn clear(&self) {
        for bucket in 0..BUCKETS {
            let empty: Vec<SessionEntry> = Vec::new();
            let _ = crate::shared::write_as(ENCODING, self.store, &self.index_key(bucket), &empty);
        }
    }

    /// Subscriber: stores a session's whole state.
    pub fn put_snapshot(&self, snap: &SessionSnapshot, now_ms: u64) -> bool {
        let Ok(Some(entry)) = self.with_entry(&snap.session, now_ms, |e| {
            e.v = e.v.max(snap.version);
            e.t = now_ms;
        }) else {
            return false;
        };
        let key = self.slot_key(bucket_of(&snap.session), entry.slot);
        update::<SessionSlot, _>(self.store, &key, |cur| {
            if cur.is_some_and(|s| s.s == snap.session && s.v > snap.version) {
                return None;
            }
            // The relay's numbering (no base), nothing to send, not a shadow's change.
            Some(SessionSlot {
                s: snap.session.clone(),
                v: snap.version,
                state: snap.state.clone(),
                ..SessionSlot::default()
            })
        })
        .is_ok()
    }

    /// Subscriber: applies a delta; false on a gap (the caller resynchronizes in full).
    pub fn apply_delta(&self, d: &SessionDelta, now_ms: u64) -> bool {
        let Ok(Some(entry)) = self.with_entry(&d.session, now_ms, |e| e.t = now_ms) else {
            return false;
        };
        let key = self.slot_key(bucket_of(&d.session), entry.slot);
        let mut gap = false;
        let _ = update::<SessionSlot, _>(self.store, &key, |cur| {
            let mut s = match cur {
                Some(s) if s.s == d.session => s.clone(),
                _ => SessionSlot {
                    s: d.session.clone(),
                    ..SessionSlot::default()
                },
            };
            if d.version <= s.v {
                return None; // already applied
            }
            if d.version != s.v + 1 {
                gap = true;
                return None;
            }
            apply_ops(&mut s.state, &d.ops);
            s.v = d.version;
            Some(s)
        });
        if !gap {
            self.update_existing(&d.session, |e| e.v = e.v.max(d.version));
        }
        !gap
    }
}

/// One publish's content.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outbound {
    /// Deltas, in version order per session.
    pub deltas: Vec<SessionDelta>,
    /// Whole states.
    pub snapshots: Vec<SessionSnapshot>,
    /// Sessions carried (for a resend if the publish is lost).
    pub sessions: Vec<String>,
    /// Sessions waiting for an acknowledgement.
    pub watch: Vec<String>,
}

impl Outbound {
    /// Nothing to send and nothing to ask.
    pub fn is_empty(&self) -> bool {
        self.deltas.is_empty() && self.snapshots.is_empty() && self.watch.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session_state::CaptureQueue;
    use crate::session_state::test_support::*;
    use crate::shared::memory::MemoryStore;

    #[test]
    fn a_pinned_session_stays_on_the_primary_and_out_of_replication() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        // What a failed lookup does to a session this edge has no record of.
        t.pin("s1", 1);
        assert!(!t.may_redirect("s1"), "before any write");
        let set = Ok(vec![StateOp {
            key: "cart".into(),
            value: Some("a".into()),
        }]);
        assert_eq!(t.capture("s1", w(set, 2), 100, 2), Capture::Recorded(1));
        assert!(!t.may_redirect("s1"), "after a write");
        let out = t.take_outbound(100, &mut Watched::default());
        assert!(out.is_empty(), "{out:?}");
        assert!(t.unacknowledged(100, &mut Watched::default()).is_empty());
    }

    #[test]
    fn a_session_may_be_redirected_only_once_its_latest_version_is_acknowledged() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        assert!(t.may_redirect("s1"), "a session that wrote nothing");
        let ops = |v: &str| {
            Ok(vec![StateOp {
                key: "cart".into(),
                value: Some(v.into()),
            }])
        };
        assert_eq!(
            t.capture("s1", w(ops("a"), 1), 100, 1),
            Capture::Recorded(1)
        );
        assert_eq!(
            t.capture("s1", w(ops("ab"), 2), 100, 2),
            Capture::Recorded(2)
        );
        assert!(!t.may_redirect("s1"));
        let out = t.take_outbound(100, &mut Watched::default());
        assert_eq!(
            out.deltas.iter().map(|d| d.version).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(out.watch, vec!["s1".to_string()]);
        assert!(
            t.take_outbound(100, &mut Watched::default())
                .deltas
                .is_empty(),
            "sent once"
        );
        t.on_ack(&[("s1".into(), 1)], &[]);
        assert!(!t.may_redirect("s1"), "version 2 is not acknowledged yet");
        t.on_ack(&[("s1".into(), 2)], &[]);
        assert!(t.may_redirect("s1"));
        t.on_ack(&[("s1".into(), 0)], &[]);
        assert!(t.may_redirect("s1"), "an acknowledgement is never lowered");
        // A dropped change pins the session to the primary.
        let big = Ok(vec![StateOp {
            key: "cart".into(),
            value: Some("x".repeat(97)),
        }]);
        assert_eq!(
            t.capture("s1", w(big, 3), 100, 3),
            Capture::Dropped(DropReason::Oversize)
        );
        assert!(!t.may_redirect("s1"));
    }

    #[test]
    fn a_lost_batch_or_a_gap_resends_the_whole_state() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        let ops = |v: &str| {
            Ok(vec![StateOp {
                key: "cart".into(),
                value: Some(v.into()),
            }])
        };
        t.capture("s1", w(ops("a"), 1), 100, 1);
        let lost = t.take_outbound(100, &mut Watched::default());
        t.resend_whole(&lost.sessions);
        t.capture("s1", w(ops("ab"), 2), 100, 2);
        let again = t.take_outbound(100, &mut Watched::default());
        assert!(again.deltas.is_empty());
        assert_eq!(again.snapshots.len(), 1);
        assert_eq!(again.snapshots[0].version, 2);
        assert_eq!(again.snapshots[0].state["cart"], "ab");
        t.on_ack(&[], &["s1".to_string()]);
        assert_eq!(
            t.take_outbound(100, &mut Watched::default())
                .snapshots
                .len(),
            1,
            "resync asked by the relay"
        );
    }

    #[test]
    fn a_subscriber_applies_in_order_and_reports_gaps() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        let d = |v: u64, val: &str| SessionDelta {
            session: "s1".into(),
            version: v,
            ops: vec![StateOp {
                key: "cart".into(),
                value: Some(val.into()),
            }],
            at_ms: 0,
            from_shadow: false,
        };
        assert!(t.apply_delta(&d(1, "a"), 0));
        assert!(t.apply_delta(&d(1, "dup"), 0));
        assert!(!t.apply_delta(&d(3, "c"), 0), "a gap");
        assert_eq!(t.slot("s1").unwrap().state["cart"], "a");
        t.put_snapshot(
            &SessionSnapshot {
                session: "s1".into(),
                version: 3,
                state: [("cart".into(), "c".into())].into(),
                from_shadow: false,
            },
            0,
        );
        assert!(t.apply_delta(&d(4, "cd"), 0));
        assert_eq!(t.slot("s1").unwrap().v, 4);
    }

    #[test]
    fn a_full_bucket_forgets_only_replicated_sessions() {
        let store = MemoryStore::default();
        // 64 sessions over 64 buckets: one slot per bucket.
        let t = SessionTable::new(&store, "cart", 64);
        let ops = || {
            Ok(vec![StateOp {
                key: "cart".into(),
                value: Some("a".into()),
            }])
        };
        // Two sessions in the same bucket.
        let (first, other) = same_bucket_pair();
        assert_eq!(t.capture(&first, w(ops(), 1), 100, 1), Capture::Recorded(1));
        assert_eq!(
            t.capture(&other, w(ops(), 2), 100, 2),
            Capture::Dropped(DropReason::Full)
        );
        t.take_outbound(100, &mut Watched::default());
        t.on_ack(&[(first.clone(), 1)], &[]);
        assert_eq!(t.capture(&other, w(ops(), 3), 100, 3), Capture::Recorded(1));
        assert!(
            t.entry(&first).is_none(),
            "the replicated one was forgotten"
        );
    }

    #[test]
    fn a_queued_change_holds_its_session_until_flushed_and_acknowledged() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        t.note_pending("s1", 1).unwrap();
        assert!(!t.may_redirect("s1"), "a change on its way");
        assert!(
            t.take_outbound(100, &mut Watched::default())
                .deltas
                .is_empty(),
            "nothing in the table yet"
        );
        let flushed = t.flush(vec![queued("s1", "a", 10)], &cfg(), 2);
        assert_eq!(flushed.versions, 1);
        assert!(flushed.retry.is_empty() && flushed.dropped.is_empty());
        let e = t.entry("s1").unwrap();
        assert_eq!((e.v, e.pending), (1, 0));
        assert!(!t.may_redirect("s1"), "flushed, not acknowledged");
        let out = t.take_outbound(100, &mut Watched::default());
        assert_eq!(out.deltas.len(), 1);
        assert_eq!(
            out.deltas[0].at_ms, 0,
            "lag counts from the capture (10 ns)"
        );
        t.on_ack(&[("s1".into(), 1)], &[]);
        assert!(t.may_redirect("s1"));
    }

    #[test]
    fn two_workers_flushing_out_of_order_keep_the_clients_order() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        // The client wrote "a" (captured on worker A), then "ab" (on worker B); B's
        // tick comes first.
        t.note_pending("s1", 1).unwrap();
        t.note_pending("s1", 2).unwrap();
        assert_eq!(
            t.flush(vec![queued("s1", "ab", 200)], &cfg(), 3).versions,
            1
        );
        assert!(!t.may_redirect("s1"), "A's change is still on its way");
        let late = t.flush(vec![queued("s1", "a", 100)], &cfg(), 4);
        assert_eq!(late.versions, 0, "superseded: no new version");
        let slot = t.slot("s1").unwrap();
        assert_eq!(slot.state["cart"], "ab");
        assert_eq!(slot.v, 1);
        assert_eq!(t.entry("s1").unwrap().pending, 0);
        // A later change of another key still applies; one of the same key only if newer.
        let other = queued_header("s1", "set writes=x", 150);
        t.note_pending("s1", 5).unwrap();
        assert_eq!(
            t.flush(vec![other, queued("s1", "abc", 300)], &cfg(), 5)
                .versions,
            1
        );
        let slot = t.slot("s1").unwrap();
        assert_eq!(slot.state["cart"], "abc");
        assert_eq!(slot.state["writes"], "x");
    }

    #[test]
    fn a_flush_over_the_session_cap_pins_the_session() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        t.note_pending("s1", 1).unwrap();
        // Each change within the value cap (64), together over the session's (100).
        let flushed = t.flush(
            vec![
                queued("s1", &"x".repeat(60), 1),
                queued_header("s1", &format!("set writes={}", "y".repeat(60)), 2),
            ],
            &cfg(),
            2,
        );
        assert_eq!(
            flushed.dropped,
            vec![("s1".to_string(), DropReason::Oversize)]
        );
        let e = t.entry("s1").unwrap();
        assert!(e.pinned && e.pending == 0 && e.v == 0, "{e:?}");
        assert!(!t.may_redirect("s1"));
    }

    #[test]
    fn a_queued_change_the_contract_refuses_pins_its_session_at_the_flush() {
        for (header, reason) in [
            ("set coupon=x", DropReason::NotAllowed),
            ("bogus", DropReason::Malformed),
            ("set cart=%zz", DropReason::Malformed),
        ] {
            let store = MemoryStore::default();
            let t = SessionTable::new(&store, "cart", 64);
            t.note_pending("s1", 1).unwrap();
            assert!(!t.may_redirect("s1"), "held while the change is on its way");
            let flushed = t.flush(
                vec![queued("s1", "a", 1), queued_header("s1", header, 2)],
                &cfg(),
                2,
            );
            assert_eq!(flushed.dropped, vec![("s1".to_string(), reason)]);
            assert_eq!((flushed.versions, flushed.captured), (0, 0));
            let e = t.entry("s1").unwrap();
            assert!(e.pinned && e.pending == 0 && e.v == 0, "{header}: {e:?}");
            assert!(!t.may_redirect("s1"), "{header}: pinned to the primary");
        }
    }

    #[test]
    fn the_newest_change_decides_whether_the_primary_is_behind() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        let on_shadow = StateWrite {
            ops: vec![StateOp {
                key: "cart".into(),
                value: Some("s".into()),
            }],
            stamp_ns: 200,
            from_shadow: true,
        };
        t.capture("s1", Ok(on_shadow), 100, 1);
        // The slot says it, and the entry the request path reads.
        let behind = |t: &SessionTable<'_>| {
            let (slot, entry) = (t.slot("s1").unwrap(), t.entry("s1").unwrap());
            assert_eq!(slot.from_shadow, entry.from_shadow);
            entry.from_shadow
        };
        assert!(behind(&t));
        // An older primary change reaching the table later does not hide the shadow's.
        t.note_pending("s1", 2).unwrap();
        t.flush(vec![queued("s1", "p", 100)], &cfg(), 3);
        assert!(behind(&t));
        // Nor does one of another key, which does apply: the newest change is still the
        // shadow's.
        t.note_pending("s1", 3).unwrap();
        t.flush(vec![queued_header("s1", "set writes=1", 150)], &cfg(), 3);
        assert_eq!(t.slot("s1").unwrap().state["writes"], "1");
        assert!(behind(&t));
        t.note_pending("s1", 4).unwrap();
        t.flush(vec![queued("s1", "p2", 300)], &cfg(), 5);
        assert!(!behind(&t));
    }

    #[test]
    fn a_full_bucket_never_forgets_a_session_with_changes_on_their_way() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        let (first, other) = same_bucket_pair();
        t.note_pending(&first, 1).unwrap();
        assert_eq!(t.note_pending(&other, 2), Err(DropReason::Full));
        assert_eq!(t.entry(&first).unwrap().pending, 1);
    }

    #[test]
    fn a_tick_reads_the_buckets_that_changed_and_leaves_the_rest_for_later() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        let mut watched = Watched::default();
        // Three sessions in three buckets.
        let mut sessions: Vec<String> = Vec::new();
        for i in 0..1_000 {
            let s = format!("s{i}");
            if sessions.iter().all(|o| bucket_of(o) != bucket_of(&s)) {
                sessions.push(s);
            }
            if sessions.len() == 3 {
                break;
            }
        }
        for (i, s) in sessions.iter().enumerate() {
            let ops = vec![StateOp {
                key: "cart".into(),
                value: Some("a".into()),
            }];
            t.capture(s, w(Ok(ops), i as u64 + 1), 100, 1);
        }
        let first = t.take_outbound(1, &mut watched);
        assert_eq!(first.sessions.len(), 1, "the batch is full");
        let rest = t.take_outbound(10, &mut watched);
        assert_eq!(rest.sessions.len(), 2, "the others stayed dirty: {rest:?}");
        assert_eq!(rest.watch.len(), 3, "all three wait for acknowledgements");
        for s in &sessions {
            t.on_ack(&[(s.clone(), 1)], &[]);
        }
        let idle = t.take_outbound(10, &mut watched);
        assert!(idle.is_empty(), "{idle:?}");
        assert_eq!(watched, Watched(0), "nothing left to watch");
        // A lost publish: its session is dirty again.
        t.resend_whole(&sessions[..1]);
        let again = t.take_outbound(10, &mut watched);
        assert_eq!(again.snapshots.len(), 1);
        // A new version: sent, and its bucket watched until acknowledged.
        let ops = vec![StateOp {
            key: "cart".into(),
            value: Some("b".into()),
        }];
        t.capture(&sessions[0], w(Ok(ops), 9), 100, 2);
        let next = t.take_outbound(10, &mut watched);
        assert_eq!(next.deltas.len(), 1);
        assert_eq!(next.watch, vec![sessions[0].clone()]);
        assert_eq!(watched, Watched(1 << bucket_of(&sessions[0])));
    }

    #[test]
    fn recording_never_lowers_the_entrys_version() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        t.note_pending("s1", 1).unwrap();
        let mut e = t.entry("s1").unwrap();
        e.v = 5;
        e.took(Ok(Some(Recorded {
            version: 3,
            from_shadow: false,
        })));
        assert_eq!(e.v, 5);
    }

    #[test]
    fn a_refused_state_write_is_retried_not_dropped() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        t.note_pending("s1", 1).unwrap();
        *store.conflicts.borrow_mut() = 16;
        let f = t.flush(vec![queued("s1", "a", 10)], &cfg(), 2);
        assert_eq!(f.retry.len(), 1);
        assert!(f.dropped.is_empty());
        let e = t.entry("s1").unwrap();
        assert!(!e.pinned && e.pending == 1, "{e:?}");
        let f = t.flush(f.retry, &cfg(), 3);
        assert_eq!(f.versions, 1);
        assert_eq!(t.entry("s1").unwrap().pending, 0);
    }

    #[test]
    fn a_refused_entry_write_is_retried_and_the_session_stays_pending() {
        let store = FailIdx {
            inner: MemoryStore::default(),
            fail: false.into(),
        };
        let t = SessionTable::new(&store, "cart", 64);
        t.note_pending("s1", 1).unwrap();
        store.fail.set(true);
        let f = t.flush(vec![queued("s1", "a", 10)], &cfg(), 2);
        assert_eq!(f.retry.len(), 1);
        assert_eq!(t.entry("s1").unwrap().pending, 1);
        store.fail.set(false);
        t.flush(f.retry, &cfg(), 3);
        assert_eq!(t.entry("s1").unwrap().pending, 0);
    }

    #[test]
    fn a_refused_change_whose_pinning_write_fails_is_retried_then_pinned() {
        let store = failing_index();
        let t = SessionTable::new(&store, "cart", 64);
        t.note_pending("s1", 1).unwrap();
        store.fail.set(true);
        let f = t.flush(vec![queued_header("s1", "bogus", 1)], &cfg(), 2);
        assert_eq!(f.retry.len(), 1, "not lost");
        assert!(f.dropped.is_empty());
        let e = t.entry("s1").unwrap();
        assert!(!e.pinned && e.pending == 1, "{e:?}");
        assert!(!t.may_redirect("s1"), "still pending");
        store.fail.set(false);
        let f = t.flush(f.retry, &cfg(), 3);
        assert_eq!(f.dropped, vec![("s1".to_string(), DropReason::Malformed)]);
        let e = t.entry("s1").unwrap();
        assert!(e.pinned && e.pending == 0, "{e:?}");
    }

    #[test]
    fn a_change_whose_entry_cannot_be_made_is_retried() {
        let store = failing_index();
        let t = SessionTable::new(&store, "cart", 64);
        store.fail.set(true);
        let f = t.flush(vec![queued("s1", "a", 1)], &cfg(), 2);
        assert_eq!(f.retry, vec![queued("s1", "a", 1)]);
        assert!(f.dropped.is_empty());
    }

    #[test]
    fn a_flush_counts_the_changes_it_took_in() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        t.note_pending("s1", 1).unwrap();
        let f = t.flush(
            vec![queued("s1", "a", 10), queued("s1", "b", 20)],
            &cfg(),
            2,
        );
        assert_eq!((f.versions, f.captured), (1, 2), "two changes, one version");
        t.note_pending("s1", 3).unwrap();
        let f = t.flush(vec![queued("s1", "old", 5)], &cfg(), 4);
        assert_eq!(
            (f.versions, f.captured),
            (0, 1),
            "superseded, still taken in"
        );
    }

    #[test]
    fn queued_changes_apply_in_stamp_order_whatever_order_they_come_in() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        t.note_pending("s1", 1).unwrap();
        t.flush(
            vec![queued("s1", "b", 9_000_000), queued("s1", "a", 1_000_000)],
            &cfg(),
            2,
        );
        assert_eq!(t.slot("s1").unwrap().state["cart"], "b");
        assert_eq!(
            t.take_outbound(10, &mut Watched::default()).deltas[0].at_ms,
            1,
            "lag from the oldest change"
        );
    }

    #[test]
    fn a_change_without_room_is_dropped_and_its_bucket_fails_closed() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        let (first, other) = same_bucket_pair();
        assert!(t.may_redirect(&other), "nothing written yet");
        t.note_pending(&first, 1).unwrap();
        let f = t.flush(vec![queued(&other, "a", 10)], &cfg(), 2);
        assert_eq!(f.dropped, vec![(other.clone(), DropReason::Full)]);
        assert!(f.retry.is_empty());
        assert!(
            !t.may_redirect(&other),
            "a session whose change found no room must not pass for one that wrote nothing"
        );
    }

    #[test]
    fn two_operations_on_one_key_in_one_change_apply_in_order() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        let q = queued_header("s1", "set cart=a; set cart=b", 10);
        t.note_pending("s1", 1).unwrap();
        t.flush(vec![q], &cfg(), 2);
        assert_eq!(t.slot("s1").unwrap().state["cart"], "b");
    }

    #[test]
    fn a_bucket_with_more_than_a_batch_is_read_again() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 128);
        let (first, other) = same_bucket_pair();
        t.capture(&first, Ok(change("a", 1)), 100, 1);
        t.capture(&other, Ok(change("a", 2)), 100, 1);
        let mut wt = Watched::default();
        assert_eq!(t.take_outbound(1, &mut wt).sessions.len(), 1);
        assert_eq!(t.take_outbound(1, &mut wt).sessions.len(), 1);
    }

    #[test]
    fn a_relay_restart_resends_every_session() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        let mut wt = Watched::default();
        t.capture("s1", Ok(change("a", 1)), 100, 1);
        t.take_outbound(10, &mut wt);
        t.on_ack(&[("s1".into(), 1)], &[]);
        assert!(t.take_outbound(10, &mut wt).is_empty());
        t.reset_replication();
        assert_eq!(t.take_outbound(10, &mut wt).snapshots.len(), 1);
    }

    fn snapshot(session: &str, version: u64, cart: &str, from_shadow: bool) -> SessionSnapshot {
        SessionSnapshot {
            session: session.into(),
            version,
            state: [("cart".into(), cart.into())].into(),
            from_shadow,
        }
    }

    fn cart_of(t: &SessionTable, session: &str) -> Option<String> {
        t.slot(session)?.state.get("cart").cloned()
    }

    #[test]
    fn an_adopted_session_continues_the_relays_numbering_from_its_state() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        assert!(t.adopt("s1", Some(&snapshot("s1", 7, "a", false)), 1));
        let slot = t.slot("s1").unwrap();
        assert_eq!((slot.v, slot.base, slot.app_version()), (0, 7, 7));
        assert_eq!(cart_of(&t, "s1").as_deref(), Some("a"));
        assert!(!slot.from_shadow && !t.entry("s1").unwrap().from_shadow);
        // The next change is version 8 to applications, on top of the adopted state.
        let add = StateWrite {
            ops: vec![StateOp {
                key: "writes".into(),
                value: Some("1".into()),
            }],
            stamp_ns: 10,
            from_shadow: false,
        };
        t.capture("s1", Ok(add), 100, 2);
        let slot = t.slot("s1").unwrap();
        assert_eq!(slot.app_version(), 8);
        assert_eq!(slot.state.get("cart").map(String::as_str), Some("a"));
        // Adopted from a shadow: the slot says so too.
        assert!(t.adopt("s2", Some(&snapshot("s2", 3, "b", true)), 1));
        assert!(t.slot("s2").unwrap().from_shadow);
        // Nothing known: an entry, no state.
        assert!(t.adopt("s3", None, 1));
        assert!(t.entry("s3").is_some() && t.slot("s3").is_none_or(|s| s.state.is_empty()));
    }

    #[test]
    fn a_later_answer_replaces_an_adoption_no_change_has_touched() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        assert!(t.adopt("s1", Some(&snapshot("s1", 7, "a", false)), 1));
        assert!(t.adopt("s1", Some(&snapshot("s1", 9, "b", false)), 2));
        let slot = t.slot("s1").unwrap();
        assert_eq!((slot.base, slot.app_version()), (9, 9));
        assert_eq!(cart_of(&t, "s1").as_deref(), Some("b"));
    }

    #[test]
    fn a_change_captured_before_the_relays_answer_is_not_overwritten_by_it() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        t.capture("s1", Ok(change("mine", 10)), 100, 1);
        assert!(t.adopt("s1", Some(&snapshot("s1", 7, "relay's", true)), 2));
        let slot = t.slot("s1").unwrap();
        assert_eq!(cart_of(&t, "s1").as_deref(), Some("mine"));
        assert_eq!((slot.v, slot.base), (1, 0));
        assert!(!t.entry("s1").unwrap().from_shadow);
    }

    #[test]
    fn a_snapshot_is_stored_whole_and_an_older_one_is_ignored() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        assert!(t.put_snapshot(&snapshot("s1", 5, "five", true), 1));
        let slot = t.slot("s1").unwrap();
        assert_eq!((slot.v, slot.base, slot.from_shadow), (5, 0, false));
        assert_eq!(cart_of(&t, "s1").as_deref(), Some("five"));
        assert_eq!(t.entry("s1").unwrap().v, 5);
        // An older snapshot (a late answer) changes nothing.
        t.put_snapshot(&snapshot("s1", 3, "three", false), 2);
        assert_eq!(cart_of(&t, "s1").as_deref(), Some("five"));
        assert_eq!((t.slot("s1").unwrap().v, t.entry("s1").unwrap().v), (5, 5));
        // A newer one replaces it.
        t.put_snapshot(&snapshot("s1", 9, "nine", false), 4);
        assert_eq!(cart_of(&t, "s1").as_deref(), Some("nine"));
        assert_eq!(t.entry("s1").unwrap().v, 9);
    }

    #[test]
    fn clearing_drops_every_session() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        for i in 0..20 {
            t.put_snapshot(&snapshot(&format!("s{i}"), 1, "x", false), 1);
        }
        assert!((0..20).all(|i| t.entry(&format!("s{i}")).is_some()));
        t.clear();
        assert!((0..20).all(|i| t.entry(&format!("s{i}")).is_none()));
    }

    #[test]
    fn a_session_whose_slot_lost_its_state_goes_on_from_the_entry_s_version() {
        // The entry says version 5 (a snapshot), but the slot holds nothing of it (the
        // host refused or dropped the slot's write). The next local write is version 6:
        // numbered from 1, every shadow at 5 would take it for an older state.
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        assert!(t.put_snapshot(&snapshot("s1", 5, "five", false), 1));
        let slot = t.slot_key(bucket_of("s1"), t.entry("s1").unwrap().slot);
        store.map.borrow_mut().remove(&slot);
        t.note_pending("s1", 1).unwrap();
        t.flush(vec![queued("s1", "a", 10)], &cfg(), 2);
        assert_eq!(t.entry("s1").unwrap().v, 6);
        // It goes whole (the slot has no sent versions to build deltas on), as 6.
        let out = t.take_outbound(10, &mut Watched::default());
        assert_eq!(
            out.snapshots.iter().map(|s| s.version).collect::<Vec<_>>(),
            vec![6]
        );
    }

    #[test]
    fn a_delta_into_a_reused_slot_starts_from_nothing() {
        // `old` had slot 0 of its bucket; after a clear, `new` (same bucket) gets slot 0,
        // which still holds old's state at version 3.
        let (old, new) = same_bucket_pair();
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        t.put_snapshot(&snapshot(&old, 3, "old's", false), 1);
        t.clear();
        let delta = SessionDelta {
            session: new.clone(),
            version: 1,
            ops: vec![StateOp {
                key: "writes".into(),
                value: Some("1".into()),
            }],
            at_ms: 0,
            from_shadow: false,
        };
        assert!(t.apply_delta(&delta, 2));
        let slot = t.slot(&new).unwrap();
        assert_eq!(slot.v, 1);
        assert_eq!(slot.state, [("writes".into(), "1".into())].into());
        assert_eq!(t.entry(&new).unwrap().v, 1);
    }

    #[test]
    fn adopting_a_shadows_state_marks_the_entry() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        let snap = SessionSnapshot {
            session: "s1".into(),
            version: 7,
            state: Default::default(),
            from_shadow: true,
        };
        assert!(t.adopt("s1", Some(&snap), 1));
        assert!(t.entry("s1").unwrap().from_shadow);
    }

    #[test]
    fn a_new_publisher_asks_for_every_unacknowledged_session() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        t.capture("s1", Ok(change("a", 1)), 100, 1);
        t.take_outbound(10, &mut Watched::default());
        assert_eq!(
            t.take_outbound(10, &mut Watched::default()).watch,
            vec!["s1".to_string()]
        );
    }

    #[test]
    fn a_state_at_its_cap_is_kept() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        // "cart" (4) + 96 = 100 bytes
        let ops = vec![StateOp {
            key: "cart".into(),
            value: Some("x".repeat(96)),
        }];
        assert_eq!(t.capture("s1", w(Ok(ops), 1), 100, 1), Capture::Recorded(1));
    }

    #[test]
    fn lag_counts_from_the_oldest_change() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        t.note_pending("s1", 1).unwrap();
        t.flush(
            vec![queued("s1", "a", 1_000_000), queued("s1", "b", 9_000_000)],
            &cfg(),
            2,
        );
        assert_eq!(
            t.take_outbound(10, &mut Watched::default()).deltas[0].at_ms,
            1
        );
    }

    #[test]
    fn a_tick_clears_the_dirty_mask() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        t.capture("s1", Ok(change("a", 1)), 100, 1);
        t.take_outbound(10, &mut Watched::default());
        assert_eq!(t.take_dirty(), 0);
    }

    struct Counting {
        inner: MemoryStore,
        idx_gets: std::cell::Cell<usize>,
    }

    impl SharedStore for Counting {
        fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
            if key.contains(".idx.") {
                self.idx_gets.set(self.idx_gets.get() + 1);
            }
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn an_idle_tick_reads_no_bucket() {
        let store = Counting {
            inner: MemoryStore::default(),
            idx_gets: 0.into(),
        };
        let t = SessionTable::new(&store, "cart", 64);
        let mut wt = Watched::default();
        t.capture("s1", Ok(change("a", 1)), 100, 1);
        t.take_outbound(10, &mut wt);
        t.on_ack(&[("s1".into(), 1)], &[]);
        t.take_outbound(10, &mut wt);
        store.idx_gets.set(0);
        assert!(t.take_outbound(10, &mut wt).is_empty());
        assert_eq!(store.idx_gets.get(), 0);
    }

    #[test]
    fn the_reorder_window_holds_at_real_clock_values() {
        // Envoy's clock is nanoseconds since 1970: a change stamped 1 ms before the key's
        // last one reached the table late and is skipped; one 20 s before it is a clock
        // that stepped back, and applied.
        let t0: u64 = 1_765_000_000_000_000_000;
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        t.note_pending("s1", 1).unwrap();
        t.flush(vec![queued("s1", "new", t0)], &cfg(), 2);
        t.note_pending("s1", 3).unwrap();
        t.flush(vec![queued("s1", "late", t0 - 1_000_000)], &cfg(), 3);
        assert_eq!(t.slot("s1").unwrap().state["cart"], "new");
        t.note_pending("s1", 4).unwrap();
        t.flush(
            vec![queued("s1", "stepped", t0 - 20_000_000_000)],
            &cfg(),
            4,
        );
        assert_eq!(t.slot("s1").unwrap().state["cart"], "stepped");
    }

    #[test]
    fn each_service_has_its_own_generation_and_overflow() {
        // The generation is also an Envoy stat: its name is part of the interface.
        assert_eq!(
            SessionTable::generation_name("cart"),
            "shadowmesh.service.cart.state_generation"
        );
        // `cart` turned a session away from a full bucket; `search`, on the same shared
        // data, never did.
        let store = MemoryStore::default();
        let cart = SessionTable::new(&store, "cart", 64);
        let search = SessionTable::new(&store, "search", 64);
        let (first, other) = same_bucket_pair();
        cart.note_pending(&first, 1).unwrap();
        cart.flush(vec![queued(&other, "a", 10)], &cfg(), 2);
        assert!(!cart.may_redirect(&other));
        assert!(search.may_redirect(&other));
    }

    #[test]
    fn an_outbound_is_empty_only_with_nothing_to_send_or_ask() {
        assert!(Outbound::default().is_empty());
        let delta = SessionDelta {
            session: "s1".into(),
            version: 1,
            ops: vec![],
            at_ms: 0,
            from_shadow: false,
        };
        let with_delta = Outbound {
            deltas: vec![delta],
            ..Default::default()
        };
        let with_snapshot = Outbound {
            snapshots: vec![snapshot("s1", 1, "a", false)],
            ..Default::default()
        };
        let asking = Outbound {
            watch: vec!["s1".into()],
            ..Default::default()
        };
        for out in [with_delta, with_snapshot, asking] {
            assert!(!out.is_empty(), "{out:?}");
        }
    }

    #[test]
    fn two_changes_in_one_bucket_before_a_tick_are_both_sent() {
        // The second mark of a dirty bucket keeps it dirty.
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 640); // room for both in a bucket
        let (first, other) = same_bucket_pair();
        t.capture(&first, Ok(change("a", 10)), 100, 1);
        t.capture(&other, Ok(change("b", 20)), 100, 1);
        let out = t.take_outbound(10, &mut Watched(0));
        let mut sent = out.sessions.clone();
        sent.sort();
        let mut want = vec![first, other];
        want.sort();
        assert_eq!(sent, want);
    }

    #[test]
    fn a_sweep_keeps_the_buckets_already_marked() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        t.capture("s1", Ok(change("a", 10)), 100, 1);
        t.sweep();
        assert_eq!(t.take_outbound(10, &mut Watched(0)).sessions, ["s1"]);
    }

    #[test]
    fn each_service_reads_its_own_dirty_buckets() {
        let store = MemoryStore::default();
        let cart = SessionTable::new(&store, "cart", 64);
        let search = SessionTable::new(&store, "search", 64);
        cart.capture("s1", Ok(change("a", 10)), 100, 1);
        assert!(
            search
                .take_outbound(10, &mut Watched(0))
                .sessions
                .is_empty()
        );
        assert_eq!(cart.take_outbound(10, &mut Watched(0)).sessions, ["s1"]);
    }

    #[test]
    fn event_mode_takes_the_one_session_asked_for() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 640); // room for both in a bucket
        let (first, other) = same_bucket_pair();
        t.capture(&first, Ok(change("a", 10)), 100, 1);
        t.capture(&other, Ok(change("b", 20)), 100, 1);
        let out = t.take_session(&first);
        assert_eq!(out.sessions, std::slice::from_ref(&first));
        assert_eq!(out.watch, std::slice::from_ref(&first));
        let versions: Vec<(&str, u64)> = out
            .deltas
            .iter()
            .map(|d| (d.session.as_str(), d.version))
            .chain(
                out.snapshots
                    .iter()
                    .map(|s| (s.session.as_str(), s.version)),
            )
            .collect();
        assert_eq!(versions, [(first.as_str(), 1)]);
        // The other is still waiting for its tick.
        assert_eq!(t.take_session(&other).sessions, [other]);
    }

    #[test]
    fn a_clock_stepping_back_does_not_lose_a_change() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        t.note_pending("s1", 1).unwrap();
        t.flush(vec![queued("s1", "a", 100 * REORDER_WINDOW_NS)], &cfg(), 2);
        t.take_outbound(10, &mut Watched::default());
        t.on_ack(&[("s1".into(), 1)], &[]);
        // The clock stepped back by far more than any queue waits.
        t.note_pending("s1", 3).unwrap();
        let f = t.flush(vec![queued("s1", "b", 1)], &cfg(), 3);
        assert_eq!(f.versions, 1);
        assert_eq!(t.slot("s1").unwrap().state["cart"], "b");
        assert!(!t.may_redirect("s1"), "version 2 is not acknowledged");
        // A worker's own stamps never go back.
        let mut q = CaptureQueue::default();
        assert_eq!(q.stamp(1_000), 1_000);
        assert_eq!(q.stamp(10), 1_001);
        assert_eq!(q.stamp(5_000), 5_000);
    }

    #[test]
    fn a_dropped_primary_change_is_never_overwritten_by_the_tables_older_state() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        let mut on_shadow = change("s", 10);
        on_shadow.from_shadow = true;
        t.capture("s1", Ok(on_shadow), 100, 1);
        assert!(t.entry("s1").unwrap().from_shadow);
        // The primary's next change is too big: dropped, the session pinned — and the
        // primary, which holds that change, must not be handed the shadow's older state.
        t.note_pending("s1", 2).unwrap();
        let f = t.flush(vec![queued("s1", &"x".repeat(200), 20)], &cfg(), 3);
        assert_eq!(f.dropped, vec![("s1".to_string(), DropReason::Oversize)]);
        let e = t.entry("s1").unwrap();
        assert!(e.pinned && !e.from_shadow, "{e:?}");
    }

    #[test]
    fn a_refused_change_older_than_a_shadows_leaves_the_primary_to_be_handed_it() {
        for queued_first in [false, true] {
            let store = MemoryStore::default();
            let t = SessionTable::new(&store, "cart", 64);
            // The primary's refused change (stamp 10) and a shadow's change (stamp 20) of
            // one session in flight together; the worker's tick comes after either.
            t.note_pending("s1", 1).unwrap();
            let mut on_shadow = change("sh", 20);
            on_shadow.from_shadow = true;
            let refused = vec![queued_header("s1", "set coupon=x", 10)];
            if queued_first {
                t.flush(refused, &cfg(), 3);
                t.capture("s1", Ok(on_shadow), 100, 4);
            } else {
                t.capture("s1", Ok(on_shadow), 100, 2);
                t.flush(refused, &cfg(), 3);
            }
            let e = t.entry("s1").unwrap();
            assert!(e.pinned && e.pending == 0, "{e:?}");
            assert!(
                e.from_shadow,
                "the shadow's newer change is still the primary's to get"
            );
        }
    }

    #[test]
    fn a_change_over_the_cap_older_than_a_shadows_leaves_the_primary_to_be_handed_it() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        let mut on_shadow = change(&"y".repeat(60), 20);
        on_shadow.from_shadow = true;
        t.note_pending("s1", 1).unwrap();
        t.capture("s1", Ok(on_shadow), 100, 2);
        // The primary's change (stamp 10) of another key takes the state over its cap.
        let over = format!("set writes={}", "z".repeat(60));
        let f = t.flush(vec![queued_header("s1", &over, 10)], &cfg(), 3);
        assert_eq!(f.dropped, vec![("s1".to_string(), DropReason::Oversize)]);
        let e = t.entry("s1").unwrap();
        assert!(e.pinned && e.pending == 0 && e.from_shadow, "{e:?}");
    }

    #[test]
    fn a_pinned_sessions_slot_does_not_grow() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        t.pin("s1", 1);
        for i in 0..50 {
            let ops = vec![StateOp {
                key: "cart".into(),
                value: Some(format!("v{i}")),
            }];
            t.capture("s1", w(Ok(ops), i + 1), 100, 2);
        }
        assert!(t.slot("s1").unwrap().ops.is_empty());
    }

    #[test]
    fn the_generation_moves_only_when_a_seen_entry_could_mislead_the_primarys_path() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        let (first, other) = same_bucket_pair();
        let g0 = t.generation();
        t.note_pending(&first, 1).unwrap();
        t.flush(vec![queued(&first, "a", 10)], &cfg(), 2);
        assert_eq!(t.generation(), g0, "a primary's change leaves views good");
        let mut on_shadow = change("s", 20);
        on_shadow.from_shadow = true;
        t.capture(&first, Ok(on_shadow.clone()), 100, 3);
        let g1 = t.generation();
        assert_ne!(g1, g0, "newly behind a shadow");
        t.capture(
            &first,
            Ok(StateWrite {
                stamp_ns: 30,
                ..on_shadow
            }),
            100,
            4,
        );
        assert_eq!(t.generation(), g1, "already behind: nothing new");
        // Replicated and the oldest: forgotten for a new session in its bucket.
        t.take_outbound(10, &mut Watched::default());
        let v = t.entry(&first).unwrap().v;
        t.on_ack(&[(first.clone(), v)], &[]);
        t.note_pending(&other, 5).unwrap();
        assert!(t.entry(&first).is_none());
        assert_ne!(t.generation(), g1, "a session forgotten");
        let g2 = t.generation();
        let snap = SessionSnapshot {
            session: "s9".into(),
            version: 3,
            state: Default::default(),
            from_shadow: true,
        };
        t.adopt("s9", Some(&snap), 6);
        assert_ne!(t.generation(), g2, "adopted behind a shadow");
    }
}
