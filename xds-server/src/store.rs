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

/// Opens the database (the file; in tests, a disk that can be made to fail).
type Opener = dyn Fn() -> Result<redb::Database, redb::DatabaseError> + Send + Sync;

struct Inner {
    path: PathBuf,
    open: Box<Opener>,
    reopen_interval: Duration,
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
        std::fs::create_dir_all(dir).map_err(|e| StoreError {
            path: path.display().to_string(),
            message: format!("cannot create the directory: {e}"),
        })?;
        let file = path.clone();
        StateStore::with_opener(
            path,
            Box::new(move || redb::Database::create(&file)),
            REOPEN_INTERVAL,
        )
    }

    /// A store whose database `open` opens (again after a failure, at most once every
    /// `reopen_interval`); `path` names it in errors, and its directory's disk is the one
    /// whose free space counts.
    fn with_opener(
        path: PathBuf,
        open: Box<Opener>,
        reopen_interval: Duration,
    ) -> Result<StateStore, StoreError> {
        let db = open().map_err(|e| StoreError {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let store = StateStore {
            inner: Arc::new(Inner {
                path,
                open,
                reopen_interval,
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
            .is_some_and(|(at, _)| at.elapsed() < self.inner.reopen_interval)
        {
            return Err(self.error(f.message()));
        }
        // The failed database must be closed (its file lock released) before it reopens.
        opened.db = None;
        match (self.inner.open)() {
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

/// A disk in memory that can be made to fail, for tests of what the store and its writers
/// do then.
#[cfg(test)]
pub(crate) mod flaky {
    use super::{Duration, StateStore};
    use redb::StorageBackend;
    use redb::backends::InMemoryBackend;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    /// How the disk fails.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Fault {
        /// It does not.
        None,
        /// Every write and resize: a full disk.
        RefuseWrites,
        /// Every sync, after the writes landed: a commit reported failed that is there.
        RefuseSyncs,
    }

    /// The disk; clones share it (a store opened on a clone sees the same bytes).
    #[derive(Debug, Clone)]
    pub(crate) struct FlakyDisk {
        bytes: Arc<InMemoryBackend>,
        fault: Arc<Mutex<Fault>>,
        openings: Arc<AtomicUsize>,
    }

    impl Default for FlakyDisk {
        fn default() -> Self {
            FlakyDisk {
                bytes: Arc::new(InMemoryBackend::new()),
                fault: Arc::new(Mutex::new(Fault::None)),
                openings: Arc::default(),
            }
        }
    }

    impl FlakyDisk {
        /// From now on the disk fails so.
        pub(crate) fn set(&self, fault: Fault) {
            *self.fault.lock().unwrap() = fault;
        }

        /// How often a database was opened on it.
        pub(crate) fn openings(&self) -> usize {
            self.openings.load(Ordering::SeqCst)
        }

        /// How long a failed store waits before it opens the database again.
        pub(crate) const REOPEN: Duration = Duration::from_millis(50);

        /// A store on this disk.
        pub(crate) fn store(&self) -> StateStore {
            let disk = self.clone();
            StateStore::with_opener(
                std::env::temp_dir().join("flaky-disk.redb"),
                Box::new(move || {
                    disk.openings.fetch_add(1, Ordering::SeqCst);
                    redb::Database::builder().create_with_backend(disk.clone())
                }),
                Self::REOPEN,
            )
            .expect("a store on a working disk")
        }

        fn refuses(&self, fault: Fault) -> std::io::Result<()> {
            if *self.fault.lock().unwrap() == fault {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "no space left (flaky disk)",
                ));
            }
            Ok(())
        }
    }

    impl StorageBackend for FlakyDisk {
        fn len(&self) -> std::io::Result<u64> {
            self.bytes.len()
        }

        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.bytes.read(offset, out)
        }

        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.refuses(Fault::RefuseWrites)?;
            self.bytes.set_len(len)
        }

        fn sync_data(&self) -> std::io::Result<()> {
            self.refuses(Fault::RefuseSyncs)?;
            self.bytes.sync_data()
        }

        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.refuses(Fault::RefuseWrites)?;
            self.bytes.write(offset, data)
        }
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

    #[test]
    fn a_write_the_disk_refuses_changes_nothing_and_the_store_reopens_once_it_works() {
        use flaky::{Fault, FlakyDisk};
        let disk = FlakyDisk::default();
        let store = disk.store();
        store.save_document("kept", &1).unwrap();
        disk.set(Fault::RefuseWrites);
        assert!(store.save_document("refused", &2).is_err());
        // The next operation reopens the database at once; its write still fails.
        let opened = disk.openings();
        assert!(store.check().is_err());
        assert_eq!(disk.openings(), opened + 1);
        // Within the reopening interval the failure is the answer: no reopening.
        let opened = disk.openings();
        assert!(store.check().is_err());
        assert!(store.save_document("refused", &3).is_err());
        assert_eq!(disk.openings(), opened, "reopened within the interval");
        // After it, a readiness check reopens once and finds writes still refused.
        std::thread::sleep(FlakyDisk::REOPEN * 2);
        let e = store.check().unwrap_err();
        assert!(e.message.contains("no space left"), "{e}");
        assert_eq!(disk.openings(), opened + 1);
        // The disk works again: ready, and a recovered store is not probed again.
        disk.set(Fault::None);
        std::thread::sleep(FlakyDisk::REOPEN * 2);
        store.check().unwrap();
        let probed = store.document::<u64>(PROBE_DOCUMENT).unwrap();
        assert!(probed.is_some(), "the check wrote its probe");
        std::thread::sleep(Duration::from_millis(5));
        store.check().unwrap();
        assert_eq!(store.document::<u64>(PROBE_DOCUMENT).unwrap(), probed);
        assert_eq!(store.document::<u64>("kept").unwrap(), Some(1));
        assert_eq!(store.document::<u64>("refused").unwrap(), None);
        store.save_document("after", &4).unwrap();
        assert_eq!(disk.openings(), opened + 2);
    }

    #[test]
    fn a_closed_store_refuses_everything_and_opens_nothing() {
        use flaky::FlakyDisk;
        let disk = FlakyDisk::default();
        let store = disk.store();
        store.save_document("a", &1).unwrap();
        store.close();
        let e = store.save_document("b", &2).unwrap_err();
        assert!(e.message.contains("closed"), "{e}");
        assert!(store.document::<u64>("a").is_err());
        assert_eq!(disk.openings(), 1);
        // What it held is on the disk for the next one.
        assert_eq!(disk.store().document::<u64>("a").unwrap(), Some(1));
    }
}
