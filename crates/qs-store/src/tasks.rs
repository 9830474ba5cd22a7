//! The durable tasks a node accepted, kept across restarts: one redb table of each task's
//! record (its JSON, as the core's task serializes), written in one transaction per change
//! with immediate durability, read back whole at start. What the records say is the caller's
//! to check: the file is input like any other.

use crate::StoreError;
use crate::ledger::{classify, contained};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};

const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");

/// See the module docs.
pub struct TaskStore {
    db: Database,
    path: PathBuf,
}

/// One change of the stored tasks.
pub enum TaskWrite {
    Put { id: String, record: Vec<u8> },
    Delete { id: String },
}

impl TaskStore {
    pub fn open(path: impl AsRef<Path>) -> Result<TaskStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let db = contained(&path, || {
            Database::create(&path).map_err(|e| classify(&path, e.into()))
        })?;
        Ok(TaskStore { db, path })
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        classify(&self.path, e.into())
    }

    /// Applies `writes` in one durable transaction.
    pub fn apply(&self, writes: Vec<TaskWrite>) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        contained(&self.path, || {
            let tx = self.db.begin_write().map_err(|e| self.err(e))?;
            {
                let mut table = tx.open_table(TASKS).map_err(|e| self.err(e))?;
                for w in writes {
                    match w {
                        TaskWrite::Put { id, record } => {
                            table
                                .insert(id.as_str(), record.as_slice())
                                .map_err(|e| self.err(e))?;
                        }
                        TaskWrite::Delete { id } => {
                            table.remove(id.as_str()).map_err(|e| self.err(e))?;
                        }
                    }
                }
            }
            tx.commit().map_err(|e| self.err(e))
        })
    }

    /// Every stored record: (id, record), by id.
    pub fn all(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        contained(&self.path, || {
            let tx = self.db.begin_read().map_err(|e| self.err(e))?;
            let table = match tx.open_table(TASKS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(self.err(e)),
            };
            let mut out = Vec::new();
            for row in table.iter().map_err(|e| self.err(e))? {
                let (k, v) = row.map_err(|e| self.err(e))?;
                out.push((k.value().to_owned(), v.value().to_vec()));
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_reopen_and_deletes_stay_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.redb");
        {
            let store = TaskStore::open(&path).unwrap();
            let put = |id: &str, r: &str| TaskWrite::Put {
                id: id.into(),
                record: r.as_bytes().to_vec(),
            };
            store.apply(vec![put("a", "1"), put("b", "2")]).unwrap();
            store
                .apply(vec![put("a", "3"), TaskWrite::Delete { id: "b".into() }])
                .unwrap();
        }
        let store = TaskStore::open(&path).unwrap();
        assert_eq!(store.all().unwrap(), vec![("a".to_owned(), b"3".to_vec())]);
    }
}
