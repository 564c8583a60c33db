//! Durable control-plane state in an embedded, crash-safe store (`redb`: ACID, fsync on
//! every commit): the registry's services and shadows, the provisioner's state, the spare
//! processes it runs. A change is committed before it is published or acknowledged, so an
//! acknowledged write survives a `kill -9`, and after a restart Envoys receive the same
//! snapshot — never an empty one.
//!
//! Values are JSON documents (`serde`), keyed by service name or by document name.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File name of the store inside the state directory.
pub const STORE_FILE: &str = "shadowmesh.redb";

const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");
const DOCUMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("documents");

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
#[error("state store {path}: {message}")]
pub struct StoreError {
    /// The store file.
    pub path: String,
    /// What went wrong.
    pub message: String,
}

/// The durable state of one control plane. Cheap to clone (shared).
#[derive(Clone)]
pub struct StateStore {
    db: Arc<redb::Database>,
    path: PathBuf,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("path", &self.path)
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
            db: Arc::new(db),
            path,
        };
        // Both tables exist from the start, so reads never meet a missing table.
        store.write(|txn| {
            txn.open_table(SERVICES)?;
            txn.open_table(DOCUMENTS)?;
            Ok(())
        })?;
        Ok(store)
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.error(e))?;
        f(&txn).map_err(|e| self.error(e))?;
        txn.commit().map_err(|e| self.error(e))
    }

    /// Every stored service (the registry's `ServiceState`: the store only keeps it).
    pub fn services<S: DeserializeOwned>(&self) -> Result<BTreeMap<String, S>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = txn.open_table(SERVICES).map_err(|e| self.error(e))?;
        let mut out = BTreeMap::new();
        for row in table.iter().map_err(|e| self.error(e))? {
            let (k, v) = row.map_err(|e| self.error(e))?;
            let state = serde_json::from_slice(v.value())
                .map_err(|e| self.error(format!("service {:?}: {e}", k.value())))?;
            out.insert(k.value().to_string(), state);
        }
        Ok(out)
    }

    /// Writes these services (`None`: removed) in one transaction.
    pub fn write_services<S: Serialize>(
        &self,
        changes: &[(String, Option<S>)],
    ) -> Result<(), StoreError> {
        let mut encoded: Vec<(&str, Option<Vec<u8>>)> = Vec::with_capacity(changes.len());
        for (k, v) in changes {
            let bytes = match v {
                Some(s) => Some(serde_json::to_vec(s).map_err(|e| self.error(e))?),
                None => None,
            };
            encoded.push((k.as_str(), bytes));
        }
        self.write(|txn| {
            let mut table = txn.open_table(SERVICES)?;
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
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = txn.open_table(DOCUMENTS).map_err(|e| self.error(e))?;
        let Some(v) = table.get(key).map_err(|e| self.error(e))? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
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
