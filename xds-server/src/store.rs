//! Durable control-plane state in an embedded, crash-safe store (`redb`: ACID, fsync on
//! every commit): the registry's services and shadows, the provisioner's state, the spare
//! processes it runs. A change is committed before it is published or acknowledged, so an
//! acknowledged write survives a `kill -9`, and after a restart Envoys receive the same
//! snapshot — never an empty one.
//!
//! Values are JSON documents (`serde`), keyed by service name or by document name.
//!
//! **A failed commit changes nothing, and the store recovers.** After an I/O error (a full
//! disk) redb refuses every later transaction until the database is opened again. So a
//! failed operation marks the store failed; the next one opens it again first (at most
//! once a second) and clears the failure if it succeeds — redb's recovery keeps exactly
//! the last commit that succeeded. Writes are refused before they start on a disk with
//! less than [`MIN_FREE_BYTES`] free (where a commit would likely fail halfway).
//! [`StateStore::check`], for readiness, reports both: a low disk, and a failed store
//! (trying a small write to see whether it recovered).

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// File name of the store inside the state directory.
pub const STORE_FILE: &str = "shadowmesh.redb";

const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");
const DOCUMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("documents");

/// How often a failed store is opened again, at most.
const REOPEN_INTERVAL: Duration = Duration::from_secs(1);

/// Free space on the store's disk under which writes are refused (and
/// [`StateStore::check`] reports the store not ready): a commit could fail halfway.
pub const MIN_FREE_BYTES: u64 = 1 << 20;

/// Document a readiness check writes to see whether a failed store recovered.
const PROBE_DOCUMENT: &str = "readiness-probe";

/// Why the store could not be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("state store {path}: {message}")]
pub struct StoreError {
    /// The store file.
    pub path: String,
    /// What went wrong.
    pub message: String,
}

/// The failure the store has not recovered from yet: set by a failed operation, cleared
/// by the next one that succeeds on a database opened after it.
struct Failure {
    /// The error that failed it.
    cause: String,
    /// The database it happened on ([`Opened::generation`]).
    generation: u64,
    /// The last attempt to open it again: when, and its error.
    last_reopen: Option<(Instant, Option<String>)>,
}

impl Failure {
    fn message(&self) -> String {
        match &self.last_reopen {
            Some((_, Some(e))) => format!("cannot reopen: {e} (failed by: {})", self.cause),
            _ => self.cause.clone(),
        }
    }
}

/// The database as it is open now.
struct Opened {
    /// `None` after a reopening failed, or once closed.
    db: Option<redb::Database>,
    /// Counts openings: an operation's success clears a failure only if it ran on a
    /// database opened after the failure (one begun before it may still succeed on the
    /// failed database, which redb refuses from then on).
    generation: u64,
    /// Closed for good ([`StateStore::close`]).
    closed: bool,
}

struct Inner {
    path: PathBuf,
    /// Operations hold the read lock; reopening and closing take the write lock, so no
    /// transaction is open then.
    db: RwLock<Opened>,
    failure: Mutex<Option<Failure>>,
}

/// The durable state of one control plane. Cheap to clone (shared).
#[derive(Clone)]
pub struct StateStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl StateStore {
    /// Opens (or creates) the store in directory `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<StateStore, StoreError> {
        let path = dir.join(STORE_FILE);
        let err = |message: String| StoreError {
            path: path.display().to_string(),
            message,
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| err(format!("cannot create the directory: {e}")))?;
        let db = redb::Database::create(&path).map_err(|e| err(e.to_string()))?;
        let store = StateStore {
            inner: Arc::new(Inner {
                path,
                db: RwLock::new(Opened {
                    db: Some(db),
                    generation: 0,
                    closed: false,
                }),
                failure: Mutex::new(None),
            }),
        };
        // Both tables exist from the start, so reads never meet a missing table. (Not
        // through `write`: a restart on a nearly full disk still serves what is stored.)
        store.with_db(|db| {
            let txn = db.begin_write()?;
            txn.open_table(SERVICES)?;
            txn.open_table(DOCUMENTS)?;
            Ok(txn.commit()?)
        })?;
        Ok(store)
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn error(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError {
            path: self.inner.path.display().to_string(),
            message: e.to_string(),
        }
    }

    fn failure(&self) -> std::sync::MutexGuard<'_, Option<Failure>> {
        self.inner.failure.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the store is ready for writes, for readiness probes: `Ok` unless its disk
    /// has less than [`MIN_FREE_BYTES`] free, or its last operation failed and a small
    /// write still fails (tried at most once a second). The error says which, and why.
    pub fn check(&self) -> Result<(), StoreError> {
        self.room_for_writes()?;
        if self.failure().is_some() {
            self.save_document(PROBE_DOCUMENT, &crate::clock::unix_now_ms())?;
        }
        Ok(())
    }

    /// Closes the store for good, releasing its file lock for the next process: every later
    /// operation fails. For shutdown, once nothing writes any more.
    pub fn close(&self) {
        let mut opened = self.inner.db.write().unwrap_or_else(|e| e.into_inner());
        opened.db = None;
        opened.closed = true;
    }

    /// Opens the database again if an operation failed on the one open now (at most once a
    /// second; in between the failure is the answer). The reopened database is compacted:
    /// a full disk may have left it grown.
    fn reopen_if_failed(&self) -> Result<(), StoreError> {
        let mut failure = self.failure();
        let Some(f) = failure.as_mut() else {
            return Ok(());
        };
        let mut opened = self.inner.db.write().unwrap_or_else(|e| e.into_inner());
        if opened.closed || f.generation < opened.generation {
            return Ok(());
        }
        if f.last_reopen
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < REOPEN_INTERVAL)
        {
            return Err(self.error(f.message()));
        }
        // The failed database must be closed (its file lock released) before it reopens.
        opened.db = None;
        match redb::Database::create(&self.inner.path) {
            Ok(mut reopened) => {
                if let Err(e) = reopened.compact() {
                    tracing::debug!(error = %e, "cannot compact the reopened state store");
                }
                opened.db = Some(reopened);
                opened.generation += 1;
                f.last_reopen = Some((Instant::now(), None));
                Ok(())
            }
            Err(e) => {
                f.last_reopen = Some((Instant::now(), Some(e.to_string())));
                Err(self.error(f.message()))
            }
        }
    }

    /// Runs `op` on the database, opening it again first if an operation failed; a failed
    /// `op` marks the store failed, one that succeeds on a database opened after the
    /// failure clears it.
    fn with_db<T>(
        &self,
        op: impl FnOnce(&redb::Database) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        self.reopen_if_failed()?;
        let opened = self.inner.db.read().unwrap_or_else(|e| e.into_inner());
        let generation = opened.generation;
        let Some(database) = opened.db.as_ref() else {
            return Err(self.error(if opened.closed {
                "closed (the control plane is shutting down)"
            } else {
                "the store could not be opened again"
            }));
        };
        let result = op(database);
        drop(opened);
        let mut failure = self.failure();
        match result {
            Ok(v) => {
                if let Some(f) = failure.take_if(|f| f.generation < generation) {
                    tracing::info!(path = %self.inner.path.display(), failed_by = %f.cause, "state store recovered");
                }
                Ok(v)
            }
            Err(e) => {
                let error = self.error(&e);
                tracing::error!(error = %error, "state store failed; it will be opened again");
                let last_reopen = failure.take().and_then(|f| f.last_reopen);
                *failure = Some(Failure {
                    cause: e.to_string(),
                    generation,
                    last_reopen,
                });
                Err(error)
            }
        }
    }

    /// Bytes free on the disk of the store.
    fn free_bytes(&self) -> Result<u64, StoreError> {
        let dir = self.inner.path.parent().unwrap_or(Path::new("."));
        nix::sys::statvfs::statvfs(dir)
            // `fsblkcnt_t` and `c_ulong` are narrower than u64 on some targets.
            .map(|s| {
                #[allow(clippy::unnecessary_cast)]
                let (blocks, size) = (s.blocks_available() as u64, s.fragment_size() as u64);
                blocks.saturating_mul(size)
            })
            .map_err(|e| {
                self.error(format!(
                    "cannot read the free space of {}: {e}",
                    dir.display()
                ))
            })
    }

    /// Refuses writes on a disk with less than [`MIN_FREE_BYTES`] free: such a write would
    /// likely fail halfway through its commit (redb then refuses everything until it is
    /// opened again), so it is refused before it starts, like a search engine's flood
    /// stage.
    fn room_for_writes(&self) -> Result<u64, StoreError> {
        let free = self.free_bytes()?;
        if free < MIN_FREE_BYTES {
            return Err(self.error(format!(
                "{free} bytes free on its disk, under {MIN_FREE_BYTES}: writes are refused until there is room"
            )));
        }
        Ok(free)
    }

    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        self.room_for_writes()?;
        self.with_db(|db| {
            let txn = db.begin_write()?;
            f(&txn)?;
            Ok(txn.commit()?)
        })
    }

    /// Every stored service (the registry's `ServiceState`: the store only keeps it).
    pub fn services<S: DeserializeOwned>(&self) -> Result<BTreeMap<String, S>, StoreError> {
        let rows: Vec<(String, Vec<u8>)> = self.with_db(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(SERVICES)?;
            let mut rows = Vec::new();
            for row in table.iter()? {
                let (k, v) = row?;
                rows.push((k.value().to_string(), v.value().to_vec()));
            }
            Ok(rows)
        })?;
        rows.into_iter()
            .map(|(k, v)| {
                let state = serde_json::from_slice(&v)
                    .map_err(|e| self.error(format!("service {k:?}: {e}")))?;
                Ok((k, state))
            })
            .collect()
    }

    /// Writes these services (`None`: removed) in one transaction.
    pub fn write_services<S: Serialize>(
        &self,
        changes: &[(String, Option<S>)],
    ) -> Result<(), StoreError> {
        self.put_services(changes.iter().map(|(k, v)| (k, v.as_ref())), false)
    }

    /// Replaces every stored service by `services`, in one transaction (after a failed
    /// write, the writer's whole state: whatever a failed commit may have left is gone).
    pub fn replace_services<'a, S: Serialize + 'a>(
        &self,
        services: impl IntoIterator<Item = (&'a String, &'a S)>,
    ) -> Result<(), StoreError> {
        self.put_services(services.into_iter().map(|(k, v)| (k, Some(v))), true)
    }

    fn put_services<'a, S: Serialize + 'a>(
        &self,
        changes: impl Iterator<Item = (&'a String, Option<&'a S>)>,
        replace: bool,
    ) -> Result<(), StoreError> {
        let mut encoded: Vec<(&str, Option<Vec<u8>>)> = Vec::new();
        for (k, v) in changes {
            let bytes = match v {
                Some(s) => Some(serde_json::to_vec(s).map_err(|e| self.error(e))?),
                None => None,
            };
            encoded.push((k.as_str(), bytes));
        }
        self.write(|txn| {
            let mut table = txn.open_table(SERVICES)?;
            if replace {
                table.retain(|_, _| false)?;
            }
            for (k, v) in &encoded {
                match v {
                    Some(bytes) => {
                        table.insert(*k, bytes.as_slice())?;
                    }
                    None => {
                        table.remove(*k)?;
                    }
                }
            }
            Ok(())
        })
    }

    /// The document stored under `key`.
    pub fn document<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let bytes: Option<Vec<u8>> = self.with_db(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(DOCUMENTS)?;
            Ok(table.get(key)?.map(|v| v.value().to_vec()))
        })?;
        bytes
            .map(|b| serde_json::from_slice(&b))
            .transpose()
            .map_err(|e| self.error(format!("document {key:?}: {e}")))
    }

    /// Stores `value` under `key`, replacing what was there.
    pub fn save_document<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|e| self.error(e))?;
        self.write(|txn| {
            txn.open_table(DOCUMENTS)?.insert(key, bytes.as_slice())?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::ServiceState;

    #[test]
    fn services_and_documents_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("shadowmesh-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let store = StateStore::open(&dir).unwrap();
            let s = ServiceState {
                generation: 7,
                ..Default::default()
            };
            store
                .write_services(&[("a".into(), Some(s.clone())), ("b".into(), Some(s))])
                .unwrap();
            store
                .write_services::<ServiceState>(&[("b".into(), None)])
                .unwrap();
            store.save_document("doc", &vec![1, 2, 3]).unwrap();
        }
        let store = StateStore::open(&dir).unwrap();
        let services: BTreeMap<String, ServiceState> = store.services().unwrap();
        assert_eq!(services.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(services["a"].generation, 7);
        assert_eq!(
            store.document::<Vec<u32>>("doc").unwrap(),
            Some(vec![1, 2, 3])
        );
        assert_eq!(store.document::<Vec<u32>>("none").unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
