//! Retention: the ledger keeps a configured age and size of history; what falls outside is
//! compacted into a [`Snapshot`].
//!
//! Compaction removes the oldest records (older than `max_age_us`, or beyond `max_bytes`,
//! which it then brings down to three quarters of the bound, so it does not run again at
//! the next append) except those that still describe the present, which are *carried*: kept
//! as they are, with their sequence numbers. Those are the start of every instance not seen
//! exiting since, and the last promotion of each service, at most [`MAX_CARRIED`]. The
//! snapshot counts what went, by event kind, with its time range; it is kept in the ledger
//! file and summed over every compaction.
//!
//! The newest record is never compacted: the next sequence number is read back from it,
//! so numbers never go back, whatever the age of the history.

use super::{LEDGER, Ledger};
use crate::StoreError;
use qs_wire::{Event, InstanceId, Record, ServiceName};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

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
    fn count(&mut self, at_us: u64, kind: &str) {
        self.removed += 1;
        *self.removed_by_event.entry(kind.to_owned()).or_default() += 1;
        self.first_at_us = Some(self.first_at_us.map_or(at_us, |t| t.min(at_us)));
        self.last_at_us = Some(self.last_at_us.map_or(at_us, |t| t.max(at_us)));
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

/// What pass one decided: where the cut is, and what below it stays.
struct Plan {
    cut: u64,
    carried: BTreeSet<u64>,
}

impl Ledger {
    /// Bytes of records the ledger holds (keys and values).
    pub fn bytes(&self) -> Result<u64, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(|e| self.err(e))?;
            match tx.open_table(META) {
                Ok(t) => Ok(t
                    .get(BYTES)
                    .map_err(|e| self.err(e))?
                    .map_or(0, |v| v.value())),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
                Err(e) => Err(self.err(e)),
            }
        })
    }

    /// Counts the bytes of the records, where no count is kept yet.
    pub(super) fn count_bytes(&self, db: &Database) -> Result<(), StoreError> {
        {
            let tx = db.begin_read().map_err(|e| self.err(e))?;
            match tx.open_table(META) {
                Ok(t) if t.get(BYTES).map_err(|e| self.err(e))?.is_some() => return Ok(()),
                Ok(_) | Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(self.err(e)),
            }
        }
        let tx = db.begin_write().map_err(|e| self.err(e))?;
        {
            let table = tx.open_table(LEDGER).map_err(|e| self.err(e))?;
            let mut total = 0;
            for item in table.iter().map_err(|e| self.err(e))? {
                let (_, v) = item.map_err(|e| self.err(e))?;
                total += KEY_BYTES + v.value().len() as u64;
            }
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            meta.insert(BYTES, total).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// What compaction has taken out so far.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(|e| self.err(e))?;
            let table = match tx.open_table(SNAPSHOTS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Snapshot::default()),
                Err(e) => return Err(self.err(e)),
            };
            let Some(bytes) = table.get(SNAPSHOT).map_err(|e| self.err(e))? else {
                return Ok(Snapshot::default());
            };
            serde_json::from_slice(bytes.value()).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!("the compaction snapshot: {e}"),
            })
        })
    }

    /// Whether [`Ledger::compact`] has anything to do: more bytes than the bound, or a
    /// record past the snapshot older than the age bound (and not the newest).
    pub fn due(&self, retention: Retention, now_us: u64) -> Result<bool, StoreError> {
        if self.bytes()? > retention.max_bytes {
            return Ok(true);
        }
        let from = self.snapshot()?.through_seq;
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
        let mut snapshot = self.snapshot()?;
        let plan = self.with_db(|db| self.plan(db, retention, now_us, snapshot.through_seq))?;
        if plan.cut <= snapshot.through_seq {
            return Ok(None);
        }
        let (mut from, mut freed) = (0, 0);
        while from < plan.cut {
            let to = (from + CHUNK).min(plan.cut);
            freed += self.with_db(|db| self.remove(db, from..to, &plan.carried, &mut snapshot))?;
            from = to;
        }
        snapshot.through_seq = snapshot.through_seq.max(plan.cut);
        snapshot.carried = plan.carried.len() as u64;
        snapshot.compactions += 1;
        let done = snapshot.clone();
        self.with_db(|db| self.save(db, &done))?;
        // Give the freed pages back to the file system when they are a good part of it.
        if freed > retention.max_bytes / 4 {
            self.shrink()?;
        }
        Ok(Some(snapshot))
    }

    /// Pass one, in a read transaction: the cut (the first record that is young enough
    /// and within the size bound, at most the newest) and the records below it to carry.
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
                    cut: 0,
                    carried: BTreeSet::new(),
                });
            }
            Err(e) => return Err(self.err(e)),
        };
        let newest = table
            .last()
            .map_err(|e| self.err(e))?
            .map_or(0, |(k, _)| k.value());
        let total = match tx.open_table(META) {
            Ok(t) => t
                .get(BYTES)
                .map_err(|e| self.err(e))?
                .map_or(0, |v| v.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(e) => return Err(self.err(e)),
        };
        let target = if total > retention.max_bytes {
            retention.max_bytes / 4 * 3
        } else {
            total
        };
        let cutoff = now_us.saturating_sub(retention.max_age_us);
        let mut remaining = total;
        let mut started: BTreeMap<InstanceId, u64> = BTreeMap::new();
        let mut promoted: BTreeMap<ServiceName, u64> = BTreeMap::new();
        let mut cut = 0;
        for item in table.range(0..newest).map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let seq = k.value();
            let record: Record =
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: format!("record {seq}: {e}"),
                })?;
            // Past the last snapshot, a record young enough within the bound ends the cut.
            if seq >= through_seq && record.at_us >= cutoff && remaining <= target {
                break;
            }
            remaining = remaining.saturating_sub(KEY_BYTES + v.value().len() as u64);
            cut = seq + 1;
            match record.event {
                Event::InstanceStarted { instance, .. } => {
                    started.insert(instance, seq);
                }
                Event::InstanceExited { instance, .. } => {
                    started.remove(&instance);
                }
                Event::Promoted { service, .. } => {
                    promoted.insert(service, seq);
                }
                _ => {}
            }
        }
        let mut carried: BTreeSet<u64> = started
            .into_values()
            .chain(promoted.into_values())
            .collect();
        // The newest are kept when there are too many (nodes lost with their instances
        // never tell of an exit).
        while carried.len() > MAX_CARRIED {
            carried.pop_first();
        }
        Ok(Plan { cut, carried })
    }

    /// Removes the records of `range` that are not carried, counting them into `snapshot`;
    /// returns the bytes freed.
    fn remove(
        &self,
        db: &Database,
        range: std::ops::Range<u64>,
        carried: &BTreeSet<u64>,
        snapshot: &mut Snapshot,
    ) -> Result<u64, StoreError> {
        let tx = db.begin_write().map_err(|e| self.err(e))?;
        let mut freed = 0u64;
        {
            let mut table = tx.open_table(LEDGER).map_err(|e| self.err(e))?;
            table
                .retain_in(range, |seq, value| {
                    if carried.contains(&seq) {
                        return true;
                    }
                    freed += KEY_BYTES + value.len() as u64;
                    // A record that no longer parses goes too, counted as what it is.
                    match serde_json::from_slice::<Head>(value) {
                        Ok(head) => snapshot.count(head.at_us, &head.event.event),
                        Err(_) => snapshot.count(0, "unreadable"),
                    }
                    false
                })
                .map_err(|e| self.err(e))?;
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            let bytes = meta
                .get(BYTES)
                .map_err(|e| self.err(e))?
                .map_or(0, |v| v.value());
            meta.insert(BYTES, bytes.saturating_sub(freed))
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(freed)
    }

    fn save(&self, db: &Database, snapshot: &Snapshot) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(snapshot).expect("a snapshot always serializes");
        let tx = db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = tx.open_table(SNAPSHOTS).map_err(|e| self.err(e))?;
            table
                .insert(SNAPSHOT, bytes.as_slice())
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// redb's compaction of the file: appends wait meanwhile.
    fn shrink(&self) -> Result<(), StoreError> {
        let mut guard = self.db.write().unwrap_or_else(|p| p.into_inner());
        let Some(db) = guard.as_mut() else {
            return Err(StoreError::Closed {
                path: self.path.clone(),
            });
        };
        let path = self.path.clone();
        super::contained(&path, || {
            db.compact().map_err(|e| super::classify(&path, e.into()))
        })?;
        Ok(())
    }
}
