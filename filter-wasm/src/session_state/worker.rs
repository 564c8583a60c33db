//! What one worker keeps between callbacks: the state changes it captured, on their way to
//! the table, and the sessions it saw in the table not behind a shadow.

use super::SessionEntry;

/// A primary's change waiting in a [`CaptureQueue`], as the application wrote it: it is
/// parsed and checked at the worker's tick ([`SessionTable::flush`](super::SessionTable::flush)), not on the response
/// path.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedWrite {
    /// Its session.
    pub session: String,
    /// The `x-shadowmesh-state` value.
    pub header: String,
    /// When it was captured (ns): orders the session's changes.
    pub stamp_ns: u64,
}

/// What a queued change holds in memory (twice the session key: it is also marked).
fn queued_bytes(q: &QueuedWrite) -> usize {
    q.header.len() + 2 * q.session.len()
}

/// One worker's captured changes on their way to the table (async mode), moved there by
/// [`SessionTable::flush`](super::SessionTable::flush) at the worker's next tick. On the response path a capture then
/// touches only the session's small index entry (its `pending` count) — not its state,
/// which is kilobytes to decode, change and encode again — and does not even parse the
/// change: a change the flush refuses pins its session then, which stays on the primary
/// meanwhile anyway (its change is pending).
#[derive(Debug, Default)]
pub struct CaptureQueue {
    writes: Vec<QueuedWrite>,
    /// Bytes of the queued headers and session keys.
    bytes: usize,
    /// The last stamp given: a worker's stamps never go back, even if the clock does.
    last_stamp: u64,
    /// Sessions whose entries count this worker's queued changes as pending (one mark per
    /// session and flush, however many changes it made meanwhile).
    marked: std::collections::BTreeSet<String>,
}

impl CaptureQueue {
    /// Changes held at most; past it captures go to the table directly (bounded memory).
    pub const LIMIT: usize = 4_096;
    /// Bytes of operations held at most, likewise.
    pub const LIMIT_BYTES: usize = 4 << 20;

    /// Whether a capture must go to the table directly.
    pub fn is_full(&self) -> bool {
        self.writes.len() >= Self::LIMIT || self.bytes >= Self::LIMIT_BYTES
    }

    /// The stamp of a change captured at `now_ns`: never below one given before.
    pub fn stamp(&mut self, now_ns: u64) -> u64 {
        self.last_stamp = now_ns.max(self.last_stamp.saturating_add(1));
        self.last_stamp
    }

    /// Whether `session`'s entry already counts this queue's changes as pending.
    pub fn is_marked(&self, session: &str) -> bool {
        self.marked.contains(session)
    }

    /// Queues a change of a session whose entry counts this queue as pending
    /// ([`SessionTable::note_pending`](super::SessionTable::note_pending) when not [`CaptureQueue::is_marked`]).
    pub fn push(&mut self, write: QueuedWrite) {
        if !self.marked.contains(&write.session) {
            self.marked.insert(write.session.clone());
        }
        self.bytes += queued_bytes(&write);
        self.writes.push(write);
    }

    /// Everything queued, in capture order, for [`SessionTable::flush`](super::SessionTable::flush).
    pub fn take(&mut self) -> Vec<QueuedWrite> {
        self.marked.clear();
        self.bytes = 0;
        std::mem::take(&mut self.writes)
    }

    /// Takes out `session`'s queued changes, in capture order, to flush them now: its
    /// entry's count of this queue as pending goes with them (the flush lowers it).
    pub fn take_session(&mut self, session: &str) -> Vec<QueuedWrite> {
        if !self.marked.remove(session) {
            return Vec::new();
        }
        let (taken, kept): (Vec<QueuedWrite>, Vec<QueuedWrite>) = std::mem::take(&mut self.writes)
            .into_iter()
            .partition(|q| q.session == session);
        self.bytes -= taken.iter().map(queued_bytes).sum::<usize>();
        self.writes = kept;
        taken
    }

    /// Puts back changes a flush could not write, ahead of newer ones (their sessions'
    /// entries still count them).
    pub fn requeue(&mut self, mut retry: Vec<QueuedWrite>) {
        self.marked.extend(retry.iter().map(|q| q.session.clone()));
        self.bytes += retry.iter().map(queued_bytes).sum::<usize>();
        retry.append(&mut self.writes);
        self.writes = retry;
    }

    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

/// Sessions one worker has seen in the table, not behind a shadow, as of one table
/// [`SessionTable::generation`](super::SessionTable::generation): for them a request to the primary has nothing to look up
/// and nothing to be handed, so the worker need not read their entries — until the
/// generation moves on (a session forgotten, or one newly behind a shadow), which forgets
/// them all. A shadow's change moves it before its response reaches the client, so the
/// client's next request sees the new generation.
#[derive(Debug, Default)]
pub struct SeenSessions {
    generation: u64,
    sessions: std::collections::HashSet<String>,
}

impl SeenSessions {
    /// Sessions remembered at most (then all are forgotten).
    pub const LIMIT: usize = 16_384;

    /// Whether `session` was seen as of `generation` (forgets everything seen before if
    /// the generation moved on).
    pub fn fresh(&mut self, generation: Option<u64>, session: &str) -> bool {
        let Some(generation) = generation else {
            return false;
        };
        if generation != self.generation {
            self.sessions.clear();
            self.generation = generation;
            return false;
        }
        self.sessions.contains(session)
    }

    /// Remembers `entry`'s session if it is plain (in the table, not behind a shadow), as
    /// of `generation` — read before the entry was.
    pub fn saw(&mut self, generation: Option<u64>, entry: &SessionEntry) {
        if generation != Some(self.generation) || entry.from_shadow {
            return;
        }
        if self.sessions.len() >= Self::LIMIT {
            self.sessions.clear();
        }
        self.sessions.insert(entry.s.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session_state::test_support::*;
    use crate::session_state::{DropReason, SessionTable, parse_changes, percent_decode};
    use crate::shared::memory::MemoryStore;

    #[test]
    fn the_queue_marks_its_sessions_once_per_flush_and_retries_go_first() {
        let mut q = CaptureQueue::default();
        q.push(queued("s1", "a", 1));
        assert!(q.is_marked("s1"));
        let taken = q.take();
        assert!(!q.is_marked("s1") && q.is_empty());
        q.push(queued("s2", "b", 5));
        q.requeue(taken);
        assert!(q.is_marked("s1"));
        let all = q.take();
        assert_eq!(
            all.iter().map(|w| w.session.as_str()).collect::<Vec<_>>(),
            vec!["s1", "s2"]
        );
    }

    #[test]
    fn one_sessions_changes_leave_the_queue_with_its_mark_and_bytes() {
        let mut q = CaptureQueue::default();
        q.push(queued("s1", "a", 1));
        q.push(queued("s2", "b", 2));
        q.push(queued("s1", "c", 3));
        let taken = q.take_session("s1");
        assert_eq!(
            taken.iter().map(|w| w.stamp_ns).collect::<Vec<_>>(),
            vec![1, 3],
            "in capture order"
        );
        assert!(!q.is_marked("s1") && q.is_marked("s2"));
        assert_eq!(q.bytes, queued_bytes(&queued("s2", "b", 2)));
        assert!(q.take_session("s1").is_empty(), "nothing left of it");
        assert!(q.take_session("s3").is_empty(), "never queued");
        assert_eq!(q.take().len(), 1);
    }

    #[test]
    fn the_queue_is_full_at_its_limits_and_counts_requeued_bytes() {
        let mut q = CaptureQueue::default();
        q.push(queued_header(
            "s1",
            &"x".repeat(CaptureQueue::LIMIT_BYTES - 5),
            1,
        ));
        assert!(!q.is_full());
        q.push(queued_header("s1", "x", 2));
        assert!(q.is_full(), "at the byte limit");
        let taken = q.take();
        assert!(!q.is_full());
        q.requeue(taken);
        assert!(q.is_full(), "requeued bytes count");
        let mut q = CaptureQueue::default();
        for i in 0..CaptureQueue::LIMIT - 1 {
            q.push(queued_header("s1", "", i as u64));
        }
        assert!(!q.is_full());
        q.push(queued_header("s1", "", 9_999));
        assert!(q.is_full(), "at the count limit");
    }

    #[test]
    fn changes_are_bounded_in_size_and_the_queue_in_bytes() {
        let c = cfg();
        // max_session_bytes is 100: one change may not exceed it.
        let big = (0..30)
            .map(|i| format!("set cart={i}"))
            .collect::<Vec<_>>()
            .join("; ");
        assert!(big.len() > 100);
        assert_eq!(parse_changes(&big, &c), Err(DropReason::Oversize));
        assert_eq!(
            parse_changes("set cart=%+A", &c),
            Err(DropReason::Malformed)
        );
        assert_eq!(percent_decode("%2a%2B"), Some("*+".into()));
        // Session keys count too: a long key with empty changes still fills the queue.
        let mut q = CaptureQueue::default();
        let key = "k".repeat(64 << 10);
        for i in 0..CaptureQueue::LIMIT_BYTES / (2 << 16) {
            assert!(!q.is_full());
            q.push(queued_header(&key, "", i as u64));
        }
        assert!(q.is_full());
        let mut q = CaptureQueue::default();
        let huge = queued("s1", &"x".repeat(CaptureQueue::LIMIT_BYTES), 1);
        assert!(!q.is_full());
        q.push(huge);
        assert!(q.is_full());
        q.take();
        assert!(!q.is_full());
    }

    #[test]
    fn seen_sessions_last_only_while_the_generation_stands() {
        let store = MemoryStore::default();
        let t = SessionTable::new(&store, "cart", 64);
        t.note_pending("s1", 1).unwrap();
        let plain = t.entry("s1").unwrap();
        let mut seen = SeenSessions::default();
        assert!(!seen.fresh(Some(0), "s1"));
        seen.saw(Some(0), &plain);
        assert!(seen.fresh(Some(0), "s1"));
        assert!(!seen.fresh(Some(1), "s1"), "the generation moved on");
        assert!(
            !seen.fresh(Some(1), "s1"),
            "and everything seen before is forgotten"
        );
        seen.saw(Some(0), &plain);
        assert!(
            !seen.fresh(Some(1), "s1"),
            "a view older than the generation is not kept"
        );
        let behind = SessionEntry {
            from_shadow: true,
            ..plain.clone()
        };
        seen.saw(Some(1), &behind);
        assert!(
            !seen.fresh(Some(1), "s1"),
            "a session behind a shadow is never plain"
        );
        let mut seen = SeenSessions::default();
        seen.saw(Some(0), &plain);
        assert!(seen.fresh(Some(0), "s1"));
        assert!(
            !seen.fresh(None, "s1"),
            "without a readable generation nothing counts as seen"
        );
        let mut seen = SeenSessions::default();
        seen.saw(None, &plain);
        assert!(
            !seen.fresh(Some(0), "s1"),
            "nor is a session remembered without one"
        );
    }
}
