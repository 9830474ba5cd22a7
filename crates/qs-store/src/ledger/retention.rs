//! Retention: the ledger keeps a configured age and size of history; what falls outside is
//! compacted into a [`Snapshot`].
//!
//! Compaction removes the oldest records (older than `max_age_us`, or beyond `max_bytes`,
//! which it then brings down to three quarters of the bound, so it does not run again at
//! the next append) except those that still describe the present, which are *carried*: kept
//! as they are, with their sequence numbers. Those are the start of every instance not seen
//! exiting since, and the last promotion of each service, at most [`MAX_CARRIED`]; they count
//! towards the bound like any record. The snapshot counts what went, by event kind, with its
//! time range; it is kept in the ledger file, updated in the very transaction that removes
//! the records it counts, and summed over every compaction. A record that no longer parses
//! (damaged, or of a newer qs) goes as `unreadable`.
//!
//! The newest record is never compacted: the next sequence number is read back from it,
//! so numbers never go back, whatever the age of the history.
//!
//! Removed pages are reused by later appends, so the file stops growing at about its bound.
//! It is shrunk (redb's compaction, which rewrites it) only when opened much larger than its
//! records, after the bound was lowered, say: never while appends wait.

use super::{LEDGER, Ledger};
use crate::StoreError;
use qs_wire::{Event, InstanceId, Record, ServiceName};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::Ordering;

/// Bytes of the ledger's records (keys and values), kept beside them.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("ledger-meta");
pub(super) const BYTES: &str = "bytes";
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("ledger-snapshot");
const SNAPSHOT: &str = "snapshot";
/// Most records one compaction carries.
pub const MAX_CARRIED: usize = 10_000;
/// Records removed per write transaction: appends wait for one at most that long.
const CHUNK: u64 = 20_000;
/// Each record's key, in bytes, as counted against `max_bytes`.
pub(super) const KEY_BYTES: u64 = 8;
/// A file opened with more than this many times its records' bytes (plus [`SPARSE_SLACK`])
/// is shrunk.
const SPARSE_FACTOR: u64 = 4;
const SPARSE_SLACK: u64 = 16 << 20;

/// How much history a ledger keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Records older than this (by their `at_us`) are compacted.
    pub max_age_us: u64,
    /// Past this many bytes of records, the oldest are compacted.
    pub max_bytes: u64,
}

/// What compaction took out of the ledger, summed over every compaction so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Every record below this sequence number has been compacted: removed, or carried.
    pub through_seq: u64,
    /// Records removed.
    pub removed: u64,
    /// Removed records by event kind (`placed`, `instance-exited`, ...).
    pub removed_by_event: BTreeMap<String, u64>,
    /// The earliest and the latest time (µs) among the removed records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_at_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_at_us: Option<u64>,
    /// Records below `through_seq` that stay, as they still describe the present.
    pub carried: u64,
    pub compactions: u64,
}

impl Snapshot {
    fn count(&mut self, at_us: Option<u64>, kind: &str) {
        self.removed += 1;
        *self.removed_by_event.entry(kind.to_owned()).or_default() += 1;
        if let Some(at) = at_us {
            self.first_at_us = Some(self.first_at_us.map_or(at, |t| t.min(at)));
            self.last_at_us = Some(self.last_at_us.map_or(at, |t| t.max(at)));
        }
    }
}

/// What one record is, as far as removing it goes.
#[derive(Deserialize)]
struct Head {
    at_us: u64,
    event: Kind,
}

#[derive(Deserialize)]
struct Kind {
    event: String,
}

/// What pass one decided: which records to look at, and what among them stays.
struct Plan {
    /// The oldest record's sequence number.
    first: u64,
    /// Records below this are compacted (removed unless carried).
    cut: u64,
    carried: BTreeSet<u64>,
}

/// A record that stays if nothing later in the cut says it no longer describes the present.
#[derive(Clone, Copy)]
struct Candidate {
    seq: u64,
    bytes: u64,
}

/// The byte count and the snapshot a ledger file holds. A file of a qs before retention has
/// no count: its records are counted (a read, so this works on a full disk too).
pub(super) fn accounting(path: &Path, db: &Database) -> Result<(u64, Snapshot), StoreError> {
    let err = |e: redb::Error| super::classify(path, e);
    let tx = db.begin_read().map_err(|e| err(e.into()))?;
    let counted = match tx.open_table(META) {
        Ok(t) => t.get(BYTES).map_err(|e| err(e.into()))?.map(|v| v.value()),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(err(e.into())),
    };
    let bytes = match counted {
        Some(b) => b,
        None => match tx.open_table(LEDGER) {
            Ok(t) => {
                let mut total = 0;
                for item in t.iter().map_err(|e| err(e.into()))? {
                    let (_, v) = item.map_err(|e| err(e.into()))?;
                    total += KEY_BYTES + v.value().len() as u64;
                }
                total
            }
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(e) => return Err(err(e.into())),
        },
    };
    let snapshot = match tx.open_table(SNAPSHOTS) {
        Ok(t) => match t.get(SNAPSHOT).map_err(|e| err(e.into()))? {
            Some(v) => serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("the compaction snapshot: {e}"),
            })?,
            None => Snapshot::default(),
        },
        Err(redb::TableError::TableDoesNotExist(_)) => Snapshot::default(),
        Err(e) => return Err(err(e.into())),
    };
    Ok((bytes, snapshot))
}

/// Gives the space of removed records back to the file system when the file is much larger
/// than they are. Best effort: a file that cannot be shrunk now (a full disk) stays as it is.
pub(super) fn shrink_if_sparse(path: &Path, db: &mut Database, bytes: u64) {
    let len = std::fs::metadata(path).map_or(0, |m| m.len());
    if len > SPARSE_FACTOR * bytes + SPARSE_SLACK {
        let _ = super::contained(path, || {
            db.compact().map_err(|e| super::classify(path, e.into()))
        });
    }
}

impl Ledger {
    /// Bytes of records the ledger holds (keys and values). Never waits on the file.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// What compaction has taken out so far. Never waits on the file.
    pub fn snapshot(&self) -> Snapshot {
        self.compacted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether [`Ledger::compact`] has anything to do: more bytes than the bound, or a
    /// record past the snapshot older than the age bound (and not the newest).
    pub fn due(&self, retention: Retention, now_us: u64) -> Result<bool, StoreError> {
        if self.bytes() > retention.max_bytes {
            return Ok(true);
        }
        let from = self.snapshot().through_seq;
        let cutoff = now_us.saturating_sub(retention.max_age_us);
        let newest = self.next_seq().saturating_sub(1);
        Ok(self
            .read(from, 1)?
            .first()
            .is_some_and(|r| r.seq < newest && r.at_us < cutoff))
    }

    /// Compacts what `retention` no longer keeps; returns the snapshot after it, or `None`
    /// when there was nothing to do. Appends go on meanwhile (they wait for one chunk of
    /// removals at most).
    pub fn compact(
        &self,
        retention: Retention,
        now_us: u64,
    ) -> Result<Option<Snapshot>, StoreError> {
        let mut snapshot = self.snapshot();
        let plan = self.with_db(|db| self.plan(db, retention, now_us, snapshot.through_seq))?;
        if plan.cut <= snapshot.through_seq {
            return Ok(None);
        }
        snapshot.compactions += 1;
        let mut from = plan.first;
        while from < plan.cut {
            let to = from.saturating_add(CHUNK).min(plan.cut);
            snapshot.through_seq = snapshot.through_seq.max(to);
            snapshot.carried = plan.carried.iter().filter(|&&s| s < to).count() as u64;
            let freed = self.with_db(|db| self.remove(db, from..to, &plan, &mut snapshot))?;
            self.bytes.fetch_sub(freed, Ordering::AcqRel);
            *self.compacted.lock().unwrap_or_else(|p| p.into_inner()) = snapshot.clone();
            from = to;
        }
        Ok(Some(snapshot))
    }

    /// Pass one, in a read transaction: the cut (the first record that is young enough
    /// and within the size bound, at most the newest) and the records below it to carry.
    /// The bytes of the records that stay are counted as they are found: a start stays until
    /// its instance's exit is seen, a promotion until the next one of its service.
    fn plan(
        &self,
        db: &Database,
        retention: Retention,
        now_us: u64,
        through_seq: u64,
    ) -> Result<Plan, StoreError> {
        let tx = db.begin_read().map_err(|e| self.err(e))?;
        let table = match tx.open_table(LEDGER) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Ok(Plan {
                    first: 0,
                    cut: 0,
                    carried: BTreeSet::new(),
                });
            }
            Err(e) => return Err(self.err(e)),
        };
        let first = table
            .first()
            .map_err(|e| self.err(e))?
            .map_or(0, |(k, _)| k.value());
        let newest = table
            .last()
            .map_err(|e| self.err(e))?
            .map_or(0, |(k, _)| k.value());
        let total = self.bytes();
        let target = if total > retention.max_bytes {
            retention.max_bytes / 4 * 3
        } else {
            total
        };
        let cutoff = now_us.saturating_sub(retention.max_age_us);
        let mut remaining = total;
        let mut started: BTreeMap<InstanceId, Candidate> = BTreeMap::new();
        let mut promoted: BTreeMap<ServiceName, Candidate> = BTreeMap::new();
        let mut cut = first;
        for item in table.range(first..newest).map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let seq = k.value();
            let size = KEY_BYTES + v.value().len() as u64;
            // Unreadable (damaged, or of a newer qs): as old as can be, and it goes.
            let record = serde_json::from_slice::<Record>(v.value()).ok();
            let at_us = record.as_ref().map_or(0, |r| r.at_us);
            // Past the last snapshot, a record young enough within the bound ends the cut.
            if seq >= through_seq && at_us >= cutoff && remaining <= target {
                break;
            }
            cut = seq + 1;
            let me = Candidate { seq, bytes: size };
            let gone = match record.map(|r| r.event) {
                Some(Event::InstanceStarted { instance, .. }) => started.insert(instance, me),
                Some(Event::InstanceExited { instance, .. }) => {
                    remaining = remaining.saturating_sub(size);
                    started.remove(&instance)
                }
                Some(Event::Promoted { service, .. }) => promoted.insert(service, me),
                _ => {
                    remaining = remaining.saturating_sub(size);
                    None
                }
            };
            if let Some(g) = gone {
                remaining = remaining.saturating_sub(g.bytes);
            }
        }
        let mut carried: Vec<Candidate> = started
            .into_values()
            .chain(promoted.into_values())
            .collect();
        // The newest are kept when there are too many (nodes lost with their instances
        // never tell of an exit).
        carried.sort_by_key(|c| c.seq);
        let excess = carried.len().saturating_sub(MAX_CARRIED);
        let carried = carried.into_iter().skip(excess).map(|c| c.seq).collect();
        Ok(Plan {
            first,
            cut,
            carried,
        })
    }

    /// Removes the records of `range` that are not carried, counting them into `snapshot`,
    /// which is saved in the same transaction; returns the bytes freed.
    fn remove(
        &self,
        db: &Database,
        range: std::ops::Range<u64>,
        plan: &Plan,
        snapshot: &mut Snapshot,
    ) -> Result<u64, StoreError> {
        let tx = db.begin_write().map_err(|e| self.err(e))?;
        let mut freed = 0u64;
        // Counted on a copy: if the transaction fails, the snapshot stays as committed.
        let mut counted = snapshot.clone();
        {
            let mut table = tx.open_table(LEDGER).map_err(|e| self.err(e))?;
            table
                .retain_in(range, |seq, value| {
                    if plan.carried.contains(&seq) {
                        return true;
                    }
                    freed += KEY_BYTES + value.len() as u64;
                    match serde_json::from_slice::<Head>(value) {
                        Ok(head) => counted.count(Some(head.at_us), &head.event.event),
                        Err(_) => counted.count(None, "unreadable"),
                    }
                    false
                })
                .map_err(|e| self.err(e))?;
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            let bytes = meta
                .get(BYTES)
                .map_err(|e| self.err(e))?
                .map_or_else(|| self.bytes(), |v| v.value());
            meta.insert(BYTES, bytes.saturating_sub(freed))
                .map_err(|e| self.err(e))?;
            let encoded = serde_json::to_vec(&counted).expect("a snapshot always serializes");
            let mut snapshots = tx.open_table(SNAPSHOTS).map_err(|e| self.err(e))?;
            snapshots
                .insert(SNAPSHOT, encoded.as_slice())
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        *snapshot = counted;
        Ok(freed)
    }
}
