//! Cross-worker state in Envoy's shared data, behind a small trait so the compare-and-swap
//! loops are unit-tested natively.
//!
//! Envoy runs one VM per worker thread; all VMs with the same `vm_id` share one key-value
//! store whose writes may carry the CAS token of the value they replace. Every helper here
//! retries on CAS mismatch a bounded number of times and never panics: on persistent
//! failure it reports an error and the caller counts it.

use serde::{Serialize, de::DeserializeOwned};

/// Result of a write that carried a CAS token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetError {
    /// Someone else wrote the key since we read it: read again and retry.
    CasMismatch,
    /// Any other host error.
    Host,
}

/// The shared-data hostcalls.
pub trait SharedStore {
    /// Current value and its CAS token (`None` value: key absent or empty).
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Writes `value` if the key's CAS token is still `cas` (`None`: unconditionally).
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError>;

    /// A counter that only goes up, that every worker reads on the request path and that
    /// is raised rarely (the session table's generation); `None` if it cannot be read.
    /// Here in shared data; Envoy keeps it where a read costs less (a gauge: no lock, no
    /// copy into the VM).
    fn read_signal(&self, name: &str) -> Option<u64> {
        Some(read_counter(self, name))
    }

    /// Raises the counter [`SharedStore::read_signal`] reads by one.
    fn raise_signal(&self, name: &str) -> Result<(), SetError> {
        add_counter(self, name, 1).map(drop)
    }
}

/// Bounded CAS retries: contention is between a handful of workers, so a long retry
/// chain means something is wrong; give up rather than spin in the data path.
const MAX_CAS_RETRIES: usize = 16;

/// Shared keys, versioned so a future layout cannot misread an old one.
pub mod keys {
    /// In-flight counter of one service's primary (`side = "primary"`) or shadow.
    pub fn in_flight(service: &str, side: &str) -> String {
        format!("shadowmesh.v1.inflight.{service}.{side}")
    }
    /// Workers' accumulated, not yet consumed, traffic window of a service.
    pub fn window(service: &str) -> String {
        format!("shadowmesh.v1.window.{service}")
    }
    /// The current redirect plan of a service.
    pub fn plan(service: &str) -> String {
        format!("shadowmesh.v1.plan.{service}")
    }
    /// The control plane's shadow readiness record of a service.
    pub fn shadow(service: &str) -> String {
        format!("shadowmesh.v1.shadow.{service}")
    }
    /// The controller lease (who computes plans and reports telemetry).
    pub const LEADER: &str = "shadowmesh.v1.leader";
}

/// Adds `delta` to a little-endian u64 counter, saturating at 0; returns the new value.
pub fn add_counter<S: SharedStore + ?Sized>(
    store: &S,
    key: &str,
    delta: i64,
) -> Result<u64, SetError> {
    for _ in 0..MAX_CAS_RETRIES {
        let (value, cas) = store.get(key);
        let current = value.as_deref().map_or(0, decode_u64);
        let next = current.saturating_add_signed(delta);
        match store.set(key, &next.to_le_bytes(), cas) {
            Ok(()) => return Ok(next),
            Err(SetError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(SetError::CasMismatch)
}

/// Reads a counter written by [`add_counter`] (0 when absent or malformed).
pub fn read_counter<S: SharedStore + ?Sized>(store: &S, key: &str) -> u64 {
    store.get(key).0.as_deref().map_or(0, decode_u64)
}

fn decode_u64(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_le_bytes).unwrap_or(0)
}

/// How a shared value is encoded. JSON for the small values an operator may want to read
/// in a dump; the compact binary form (postcard) for the state-sync tables, which are
/// read and written on the request path and carry kilobytes of session state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `serde_json`.
    Json,
    /// `postcard`: no field names, varint integers; several times cheaper to read and
    /// write than JSON in the Wasm VM.
    Compact,
}

impl Encoding {
    fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Option<T> {
        match self {
            Encoding::Json => serde_json::from_slice(bytes).ok(),
            Encoding::Compact => postcard::from_bytes(bytes).ok(),
        }
    }

    fn encode<T: Serialize>(self, value: &T) -> Option<Vec<u8>> {
        match self {
            Encoding::Json => serde_json::to_vec(value).ok(),
            Encoding::Compact => postcard::to_allocvec(value).ok(),
        }
    }
}

/// Reads a JSON value; absent, empty or unparsable values read as `None`.
pub fn read_json<T: DeserializeOwned>(store: &dyn SharedStore, key: &str) -> Option<T> {
    read_as(Encoding::Json, store, key)
}

/// Reads a value in `encoding`; absent, empty or unparsable values read as `None`.
pub fn read_as<T: DeserializeOwned>(
    encoding: Encoding,
    store: &dyn SharedStore,
    key: &str,
) -> Option<T> {
    encoding.decode(&store.get(key).0?)
}

/// Writes `value` in `encoding`, whatever the key held.
pub fn write_as<T: Serialize>(
    encoding: Encoding,
    store: &dyn SharedStore,
    key: &str,
    value: &T,
) -> Result<(), SetError> {
    store.set(key, &encoding.encode(value).ok_or(SetError::Host)?, None)
}

/// Read-modify-write of a JSON value under CAS. `f` gets the current value (`None` when
/// absent or unparsable) and returns the new one, or `None` to leave the key alone.
/// Returns what the key held when the write succeeded.
pub fn update_json<T, F>(store: &dyn SharedStore, key: &str, f: F) -> Result<Option<T>, SetError>
where
    T: Serialize + DeserializeOwned,
    F: FnMut(Option<&T>) -> Option<T>,
{
    update_as(Encoding::Json, store, key, f)
}

/// [`update_json`] for a value in `encoding`.
pub fn update_as<T, F>(
    encoding: Encoding,
    store: &dyn SharedStore,
    key: &str,
    mut f: F,
) -> Result<Option<T>, SetError>
where
    T: Serialize + DeserializeOwned,
    F: FnMut(Option<&T>) -> Option<T>,
{
    for _ in 0..MAX_CAS_RETRIES {
        let (bytes, cas) = store.get(key);
        let current: Option<T> = bytes.as_deref().and_then(|b| encoding.decode(b));
        let Some(next) = f(current.as_ref()) else {
            return Ok(current);
        };
        let encoded = encoding.encode(&next).ok_or(SetError::Host)?;
        match store.set(key, &encoded, cas) {
            Ok(()) => return Ok(current),
            Err(SetError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(SetError::CasMismatch)
}

/// The controller lease: one worker computes plans and reports telemetry.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    /// Random identity of the holding VM.
    pub holder: u64,
    /// The lease is free after this (ms, Envoy wall clock).
    pub until_ms: u64,
}

/// Takes or renews the lease for `me` until `now_ms + ttl_ms`; true if `me` holds it.
/// A holder renews every tick; others take over only after it lapses (its worker died
/// or stalled for a whole TTL).
pub fn acquire_lease(store: &dyn SharedStore, me: u64, now_ms: u64, ttl_ms: u64) -> bool {
    let mut mine = false;
    let result = update_json::<Lease, _>(store, keys::LEADER, |current| {
        mine = match current {
            Some(l) => l.holder == me || l.until_ms < now_ms,
            None => true,
        };
        mine.then_some(Lease {
            holder: me,
            until_ms: now_ms + ttl_ms,
        })
    });
    mine && result.is_ok()
}

#[cfg(test)]
pub(crate) mod memory {
    //! An in-memory [`SharedStore`] with Envoy's CAS semantics, for unit tests.
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    #[derive(Default)]
    pub struct MemoryStore {
        pub map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        /// Forces this many CAS mismatches before writes succeed.
        pub conflicts: RefCell<usize>,
    }

    impl SharedStore for MemoryStore {
        fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
            match self.map.borrow().get(key) {
                Some((v, cas)) => (Some(v.clone()), Some(*cas)),
                None => (None, None),
            }
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
            let mut conflicts = self.conflicts.borrow_mut();
            if *conflicts > 0 {
                *conflicts -= 1;
                return Err(SetError::CasMismatch);
            }
            let mut map = self.map.borrow_mut();
            let current = map.get(key).map(|(_, c)| *c);
            if cas.is_some() && cas != current {
                return Err(SetError::CasMismatch);
            }
            let next = current.unwrap_or(0) + 1;
            map.insert(key.to_string(), (value.to_vec(), next));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::memory::MemoryStore;
    use super::*;

    #[test]
    fn counters_add_and_saturate() {
        let s = MemoryStore::default();
        assert_eq!(add_counter(&s, "k", 2), Ok(2));
        assert_eq!(add_counter(&s, "k", -3), Ok(0));
        *s.conflicts.borrow_mut() = 3;
        assert_eq!(add_counter(&s, "k", 5), Ok(5), "retries through conflicts");
        *s.conflicts.borrow_mut() = 100;
        assert_eq!(
            add_counter(&s, "k", 1),
            Err(SetError::CasMismatch),
            "bounded retries"
        );
        assert_eq!(read_counter(&s, "k"), 5);
    }

    #[test]
    fn lease_has_one_holder_until_it_lapses() {
        let s = MemoryStore::default();
        assert!(acquire_lease(&s, 1, 1_000, 300));
        assert!(!acquire_lease(&s, 2, 1_100, 300));
        assert!(acquire_lease(&s, 1, 1_200, 300), "holder renews");
        assert!(!acquire_lease(&s, 2, 1_400, 300));
        assert!(acquire_lease(&s, 2, 1_600, 300), "taken over after lapse");
        assert!(!acquire_lease(&s, 1, 1_650, 300));
    }

    #[test]
    fn json_update_treats_garbage_as_absent() {
        let s = MemoryStore::default();
        s.set("j", b"{not json", None).unwrap();
        let before = update_json::<u32, _>(&s, "j", |v| Some(v.copied().unwrap_or(0) + 1)).unwrap();
        assert_eq!(before, None);
        assert_eq!(read_json::<u32>(&s, "j"), Some(1));
    }
}
