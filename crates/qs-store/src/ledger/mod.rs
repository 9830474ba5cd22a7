//! The ledger on redb: an append-only log of typed events with
//! sequence numbers, range reads and follow.
//!
//! Every append is one redb transaction with immediate durability: once [`Ledger::append`]
//! returns, the events survive a kill -9 or a power cut. A file that is not a ledger, or a
//! damaged one, gives [`StoreError::Corrupt`] naming the file; it never panics. (redb 4.5
//! itself panics on some damaged pages, so every storage call runs inside [`contained`].)
//!
//! After a failed write (a full disk, say) redb refuses every later one, so the writer calls
//! [`Ledger::reopen`] once the cause may have passed: the file is opened anew and its last
//! committed sequence number read back; nothing committed is lost, and the caller learns from
//! [`Ledger::next_seq`] whether the failed batch had committed after all.
//!
//! The ledger keeps a bounded history ([`retention`]): older records are compacted into a
//! snapshot.

use crate::StoreError;
use qs_wire::{Event, NodeId, Record};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::cell::Cell;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, RwLock};
use std::time::Duration;

mod retention;
use retention::{BYTES, KEY_BYTES, META};
pub use retention::{MAX_CARRIED, Retention, Snapshot};

const LEDGER: TableDefinition<u64, &[u8]> = TableDefinition::new("ledger");
/// Most records one read returns.
pub const MAX_READ: usize = 10_000;

/// The append-only ledger of one node.
pub struct Ledger {
    /// `None` between a failed reopen and the next.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    /// Next sequence number, guarded so appends from several threads stay contiguous; the
    /// condvar wakes followers.
    next: Mutex<u64>,
    appended: Condvar,
    /// Bytes of records, as the file's count says plus what committed since (read without
    /// touching the file, so never waiting on it).
    bytes: AtomicU64,
    /// What compaction has taken out, as last committed.
    compacted: Mutex<Snapshot>,
}

impl Ledger {
    /// Opens the ledger at `path`, creating it if missing.
    pub fn open(path: impl AsRef<Path>) -> Result<Ledger, StoreError> {
        let path = path.as_ref().to_path_buf();
        let mut db = contained(&path, || {
            Database::create(&path).map_err(|e| classify(&path, e.into()))
        })?;
        let (bytes, compacted) = contained(&path, || retention::accounting(&path, &db))?;
        retention::shrink_if_sparse(&path, &mut db, bytes);
        let ledger = Ledger {
            db: RwLock::new(Some(db)),
            path: path.clone(),
            next: Mutex::new(0),
            appended: Condvar::new(),
            bytes: AtomicU64::new(bytes),
            compacted: Mutex::new(compacted),
        };
        let next = ledger.scan_last()?.map_or(0, |s| s + 1);
        *ledger.lock_next() = next;
        Ok(ledger)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock_next(&self) -> std::sync::MutexGuard<'_, u64> {
        self.next.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        classify(&self.path, e.into())
    }

    /// Runs `op` on the open database; [`StoreError::Closed`] while there is none.
    fn with_db<T>(
        &self,
        op: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(db) => contained(&self.path, || op(db)),
            None => Err(StoreError::Closed {
                path: self.path.clone(),
            }),
        }
    }

    /// Opens the file anew (after a failed write) and takes its last committed sequence
    /// number as the next one's predecessor.
    pub fn reopen(&self) -> Result<(), StoreError> {
        let mut next = self.lock_next();
        {
            let mut guard = self.db.write().unwrap_or_else(|p| p.into_inner());
            // The old handle holds the file's lock: it goes before the new one opens.
            *guard = None;
            let path = self.path.clone();
            let db = contained(&path, || {
                Database::create(&path).map_err(|e| classify(&path, e.into()))
            })?;
            // A batch whose commit failed but landed is in the file's count only.
            let (bytes, _) = contained(&path, || retention::accounting(&path, &db))?;
            self.bytes.store(bytes, Ordering::Release);
            *guard = Some(db);
        }
        *next = self.scan_last()?.map_or(0, |s| s + 1);
        Ok(())
    }

    fn scan_last(&self) -> Result<Option<u64>, StoreError> {
        self.with_db(|db| self.scan_last_inner(db))
    }

    fn scan_last_inner(&self, db: &Database) -> Result<Option<u64>, StoreError> {
        // A read: after a failed write on a full disk, a write transaction could fail too.
        let tx = db.begin_read().map_err(|e| self.err(e))?;
        let table = match tx.open_table(LEDGER) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        let last = table.last().map_err(|e| self.err(e))?;
        Ok(last.map(|(k, _)| k.value()))
    }

    /// Appends events written by `node` at `at_us`, in one durable transaction. Returns their
    /// sequence numbers.
    pub fn append(
        &self,
        node: &NodeId,
        at_us: u64,
        events: &[Event],
    ) -> Result<Range<u64>, StoreError> {
        self.append_with(events.len(), |i| (at_us, node, &events[i]))
    }

    /// Appends records written elsewhere (a simulator, another node's buffer) in one durable
    /// transaction, keeping their node and time; they get this ledger's sequence numbers.
    pub fn append_records(&self, records: &[Record]) -> Result<Range<u64>, StoreError> {
        self.append_with(records.len(), |i| {
            let r = &records[i];
            (r.at_us, &r.node, &r.event)
        })
    }

    /// Appends `n` records whose time, node and event `part(i)` gives.
    fn append_with<'a>(
        &self,
        n: usize,
        part: impl Fn(usize) -> (u64, &'a NodeId, &'a Event),
    ) -> Result<Range<u64>, StoreError> {
        let mut next = self.lock_next();
        let first = *next;
        self.with_db(|db| self.write(db, first, n, &part))?;
        *next = first + n as u64;
        self.appended.notify_all();
        Ok(first..*next)
    }

    fn write<'a>(
        &self,
        db: &Database,
        first: u64,
        n: usize,
        part: &dyn Fn(usize) -> (u64, &'a NodeId, &'a Event),
    ) -> Result<(), StoreError> {
        /// [`Record`] by reference: the same encoding without copying the event.
        #[derive(serde::Serialize)]
        struct Stored<'a> {
            seq: u64,
            at_us: u64,
            node: &'a NodeId,
            event: &'a Event,
        }
        let tx = db.begin_write().map_err(|e| self.err(e))?;
        let mut added = 0u64;
        {
            let mut table = tx.open_table(LEDGER).map_err(|e| self.err(e))?;
            let mut bytes = Vec::with_capacity(256);
            for i in 0..n {
                let (at_us, node, event) = part(i);
                let seq = first + i as u64;
                bytes.clear();
                serde_json::to_writer(
                    &mut bytes,
                    &Stored {
                        seq,
                        at_us,
                        node,
                        event,
                    },
                )
                .expect("ledger records always serialize");
                table
                    .insert(seq, bytes.as_slice())
                    .map_err(|e| self.err(e))?;
                added += KEY_BYTES + bytes.len() as u64;
            }
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            // No count in the file yet (a ledger of a qs before retention): the one made
            // at open.
            let before = meta
                .get(BYTES)
                .map_err(|e| self.err(e))?
                .map_or_else(|| self.bytes.load(Ordering::Acquire), |v| v.value());
            meta.insert(BYTES, before + added)
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        self.bytes.fetch_add(added, Ordering::AcqRel);
        Ok(())
    }

    /// Records with `seq >= from`, at most `limit` (capped at [`MAX_READ`]).
    pub fn read(&self, from: u64, limit: usize) -> Result<Vec<Record>, StoreError> {
        self.with_db(|db| self.read_inner(db, from, limit))
    }

    fn read_inner(
        &self,
        db: &Database,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let tx = db.begin_read().map_err(|e| self.err(e))?;
        let table = match tx.open_table(LEDGER) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.err(e)),
        };
        let mut out = Vec::new();
        for item in table
            .range(from..)
            .map_err(|e| self.err(e))?
            .take(limit.min(MAX_READ))
        {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let record: Record =
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: format!("record {}: {e}", k.value()),
                })?;
            out.push(record);
        }
        Ok(out)
    }

    /// The sequence number the next event will get (= number of events).
    pub fn next_seq(&self) -> u64 {
        *self.lock_next()
    }

    /// Like [`Ledger::read`], but waits up to `timeout` for a record at `from` to be appended
    /// (by this process) if there is none yet.
    pub fn follow(
        &self,
        from: u64,
        limit: usize,
        timeout: Duration,
    ) -> Result<Vec<Record>, StoreError> {
        let next = self.lock_next();
        let (next, _) = self
            .appended
            .wait_timeout_while(next, timeout, |n| *n <= from)
            .unwrap_or_else(|p| p.into_inner());
        drop(next);
        self.read(from, limit)
    }
}

thread_local! {
    /// How many [`contained`] calls this thread is inside.
    static CONTAINING: Cell<u32> = const { Cell::new(0) };
}

/// Whether a panic raised now, on this thread, will be caught by [`contained`] and turned
/// into an error. A process that ends on every panic asks this first.
pub fn panic_is_contained() -> bool {
    CONTAINING.with(|c| c.get() > 0)
}

/// Runs one storage operation; a panic inside the storage engine (which redb raises on some
/// damaged pages) becomes [`StoreError::Corrupt`] instead of taking the process down.
pub(crate) fn contained<T>(
    path: &Path,
    op: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    CONTAINING.with(|c| c.set(c.get() + 1));
    let result = catch_unwind(AssertUnwindSafe(op));
    CONTAINING.with(|c| c.set(c.get() - 1));
    result.unwrap_or_else(|panic| {
        let detail = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("the storage engine failed");
        Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("storage engine failure: {detail}"),
        })
    })
}

/// Storage errors that mean "this file is damaged or not ours" become [`StoreError::Corrupt`].
pub(crate) fn classify(path: &Path, e: redb::Error) -> StoreError {
    let corrupt = match &e {
        redb::Error::Corrupted(_)
        | redb::Error::UpgradeRequired(_)
        | redb::Error::TableTypeMismatch { .. } => true,
        // Truncated (shorter than its header says), or not redb's format at all.
        redb::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
        ),
        _ => false,
    };
    if corrupt {
        StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }
    } else {
        StoreError::Db {
            path: path.to_path_buf(),
            source: e,
        }
    }
}
