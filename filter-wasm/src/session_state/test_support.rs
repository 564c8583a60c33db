//! Test helpers shared by the session-state modules' tests.

use super::*;
use crate::shared::memory::MemoryStore;
use crate::shared::{SetError, SharedStore};
use shadowmesh_wire::StateOp;

/// A primary's change captured at `stamp`.
pub(super) fn w(
    ops: Result<Vec<StateOp>, DropReason>,
    stamp: u64,
) -> Result<StateWrite, DropReason> {
    ops.map(|ops| StateWrite {
        ops,
        stamp_ns: stamp,
        from_shadow: false,
    })
}

pub(super) fn cfg() -> StateSyncConfig {
    serde_json::from_value(serde_json::json!({
        "role": "publisher", "cluster": "control", "keys": ["cart", "writes"],
        "max_value_bytes": 64, "max_session_bytes": 100, "max_sessions": 64,
    }))
    .unwrap()
}

/// A primary's change of `cart` to `v`, captured at `stamp`.
pub(super) fn change(v: &str, stamp: u64) -> StateWrite {
    StateWrite {
        ops: vec![StateOp {
            key: "cart".into(),
            value: Some(v.into()),
        }],
        stamp_ns: stamp,
        from_shadow: false,
    }
}

/// The same change queued as the application wrote it.
pub(super) fn queued(session: &str, v: &str, stamp: u64) -> QueuedWrite {
    let mut header = "set cart=".to_string();
    percent_encode_into(v, &mut header);
    queued_header(session, &header, stamp)
}

pub(super) fn queued_header(session: &str, header: &str, stamp: u64) -> QueuedWrite {
    QueuedWrite {
        session: session.into(),
        header: header.into(),
        stamp_ns: stamp,
    }
}

/// Two sessions in the same index bucket.
pub(super) fn same_bucket_pair() -> (String, String) {
    let first = "s0".to_string();
    let other = (1..10_000)
        .map(|i| format!("s{i}"))
        .find(|s| bucket_of(s) == bucket_of(&first))
        .unwrap();
    (first, other)
}

pub(super) struct FailIdx {
    pub(super) inner: MemoryStore,
    pub(super) fail: std::cell::Cell<bool>,
}

impl SharedStore for FailIdx {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        if self.fail.get() && key.contains(".idx.") {
            return Err(SetError::Host);
        }
        self.inner.set(key, value, cas)
    }
}

pub(super) fn failing_index() -> FailIdx {
    FailIdx {
        inner: MemoryStore::default(),
        fail: false.into(),
    }
}
