//! Group commit for the ledger: every node runtime of a process hands its events to one
//! writer task, which commits them in batches (one durable transaction per batch instead of
//! one per event). A batch that starts small lingers a moment for the records right behind
//! it, so a busy fleet commits hundreds of records per transaction rather than a few. The
//! queue is bounded: when the disk falls behind, runtimes wait.
//!
//! A batch that fails to commit (a full disk, say) is not lost: the writer marks the ledger
//! degraded with the reason (`/health` says so), reopens the ledger with backoff until a
//! commit succeeds, and takes nothing new meanwhile. Records keep queueing up to [`QUEUE`];
//! past that, while degraded, new ones are dropped and counted rather than stalling every
//! node's runtime (whose heartbeats must go on). Nothing committed is ever lost, and a batch
//! whose commit failed but landed (seen from the sequence number after the reopen) is not
//! written twice.
//!
//! The writer also keeps the ledger within its [`Retention`]: when a commit takes it past
//! the size bound, and every [`RETENTION_EVERY`] for the age bound, it compacts the ledger
//! on a blocking thread of its own (one at a time), while commits go on.

use qs_store::{Ledger, Retention};
use qs_wire::{Event, NodeId, Record};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// First wait before reopening a failed ledger, and the longest.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// How often the writer looks for records past the age bound.
pub const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// Whether the ledger takes writes: the reason it does not, and what was dropped meanwhile.
#[derive(Debug, Default)]
pub struct LedgerHealth {
    failing: Mutex<Option<String>>,
    dropped: AtomicU64,
}

impl LedgerHealth {
    /// Why the ledger takes no writes now; `None` while it does.
    pub fn degraded(&self) -> Option<String> {
        self.failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Events dropped because the queue was full while the ledger failed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn set(&self, reason: Option<String>) {
        *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = reason;
    }
}

/// Records waiting for the writer at most.
pub const QUEUE: usize = 65_536;
/// Records in one transaction at most.
pub const BATCH: usize = 8_192;
/// A batch smaller than this waits up to [`LINGER`] for more before it commits.
pub const LINGER_BELOW: usize = 256;
/// How long a small batch waits for more records (how much later than possible an event of
/// a busy fleet may be committed).
pub const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// The sending side, cloned into every runtime.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Record>,
    health: Arc<LedgerHealth>,
}

impl Journal {
    /// Starts the writer task. It ends when `stop` turns true (after committing everything
    /// queued by then) or when every `Journal` clone is dropped.
    pub fn start(
        ledger: Arc<Ledger>,
        retention: Retention,
        stop: watch::Receiver<bool>,
    ) -> (Journal, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let health = Arc::new(LedgerHealth::default());
        let writer = Writer {
            ledger,
            health: health.clone(),
            retention,
            compacting: Arc::new(AtomicBool::new(false)),
            compacted_to: Arc::new(AtomicU64::new(0)),
        };
        (Journal { tx, health }, tokio::spawn(writer.run(rx, stop)))
    }

    pub fn health(&self) -> &LedgerHealth {
        &self.health
    }

    /// Queues events written by `node` at `at_us`: waits while the queue is full, unless the
    /// ledger is failing (then the event is dropped and counted; see the module docs).
    pub async fn append(&self, node: &NodeId, at_us: u64, events: Vec<Event>) {
        for event in events {
            let record = Record {
                seq: 0, // assigned by the ledger at commit
                at_us,
                node: node.clone(),
                event,
            };
            let record = match self.tx.try_send(record) {
                Ok(()) => continue,
                Err(mpsc::error::TrySendError::Full(r)) if self.health.degraded().is_none() => r,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.health.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    tracing::error!("the ledger writer has stopped; an event was not recorded");
                    return;
                }
            };
            if self.tx.send(record).await.is_err() {
                tracing::error!("the ledger writer has stopped; an event was not recorded");
                return;
            }
        }
    }
}

/// The receiving side: commits batches, rides out a failing ledger, and keeps it within
/// its retention.
struct Writer {
    ledger: Arc<Ledger>,
    health: Arc<LedgerHealth>,
    retention: Retention,
    /// A compaction is under way.
    compacting: Arc<AtomicBool>,
    /// Bytes the ledger held after the last compaction: when what it carries alone is
    /// past the bound, the next one waits for an eighth of the bound more.
    compacted_to: Arc<AtomicU64>,
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<Record>, mut stop: watch::Receiver<bool>) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut retention_timer = tokio::time::interval(RETENTION_EVERY);
        retention_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let n = tokio::select! {
                n = rx.recv_many(&mut batch, BATCH) => n,
                _ = retention_timer.tick() => {
                    self.compact();
                    continue;
                }
                _ = stop.changed() => {
                    // Take nothing new; commit what is queued, then end.
                    rx.close();
                    while rx.recv_many(&mut batch, BATCH).await > 0 {
                        self.commit(std::mem::take(&mut batch), &stop).await;
                    }
                    return;
                }
            };
            if n == 0 {
                return;
            }
            if n < LINGER_BELOW {
                linger(&mut rx, &mut batch).await;
            }
            self.commit(std::mem::take(&mut batch), &stop).await;
            let bound = self.retention.max_bytes;
            let floor = self.compacted_to.load(Ordering::Acquire) + bound / 8;
            let bytes = self.ledger.bytes();
            if bytes > bound && bytes >= floor {
                self.compact();
            }
        }
    }

    /// Compacts what the retention no longer keeps, on a blocking thread, unless a
    /// compaction is under way already.
    fn compact(&self) {
        if self.compacting.swap(true, Ordering::AcqRel) {
            return;
        }
        let (ledger, retention) = (self.ledger.clone(), self.retention);
        let (compacting, compacted_to) = (self.compacting.clone(), self.compacted_to.clone());
        tokio::task::spawn_blocking(move || {
            let now_us = crate::clock::now().as_micros();
            // The minute's look costs one read when nothing is past the bounds.
            let done = match ledger.due(retention, now_us) {
                Ok(true) => ledger.compact(retention, now_us),
                Ok(false) => Ok(None),
                Err(e) => Err(e),
            };
            match done {
                Ok(Some(s)) => tracing::info!(
                    through_seq = s.through_seq,
                    removed = s.removed,
                    carried = s.carried,
                    "ledger compacted"
                ),
                Ok(None) => {}
                Err(e) => tracing::warn!("ledger compaction failed: {e}"),
            }
            compacted_to.store(ledger.bytes(), Ordering::Release);
            compacting.store(false, Ordering::Release);
        });
    }

    /// Commits `records`; while that fails, reopens the ledger with backoff and tries again.
    /// Gives up only when the process is stopping and a last try failed (counted).
    async fn commit(&self, records: Vec<Record>, stop: &watch::Receiver<bool>) {
        let records = Arc::new(records);
        let mut wait = RETRY_FIRST;
        loop {
            let first = self.ledger.next_seq();
            let (ledger, batch) = (self.ledger.clone(), records.clone());
            let done = tokio::task::spawn_blocking(move || ledger.append_records(&batch)).await;
            let failure = match done {
                Ok(Ok(_)) => {
                    self.recovered();
                    return;
                }
                Ok(Err(e)) => e.to_string(),
                Err(e) => format!("the ledger writer failed: {e}"),
            };
            if self.health.degraded().is_none() {
                tracing::error!(
                    "ledger append failed ({failure}); {} records wait, retrying",
                    records.len()
                );
            }
            self.health.set(Some(failure));
            if *stop.borrow() {
                self.health
                    .dropped
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                tracing::error!(
                    "stopping with the ledger failing: {} records lost",
                    records.len()
                );
                return;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RETRY_MAX);
            let ledger = self.ledger.clone();
            match tokio::task::spawn_blocking(move || ledger.reopen()).await {
                // The failed commit landed after all: it is not written twice.
                Ok(Ok(())) if self.ledger.next_seq() >= first + records.len() as u64 => {
                    self.recovered();
                    return;
                }
                Ok(Ok(())) => {}
                Ok(Err(e)) => self.health.set(Some(e.to_string())),
                Err(e) => self
                    .health
                    .set(Some(format!("reopening the ledger failed: {e}"))),
            }
        }
    }

    fn recovered(&self) {
        if self.health.degraded().is_some() {
            tracing::warn!("the ledger takes writes again");
            self.health.set(None);
        }
    }
}

/// Adds to `batch` what arrives within [`LINGER`], until it holds [`LINGER_BELOW`] records.
async fn linger(rx: &mut mpsc::Receiver<Record>, batch: &mut Vec<Record>) {
    let until = tokio::time::Instant::now() + LINGER;
    while batch.len() < LINGER_BELOW {
        let room = BATCH - batch.len();
        match tokio::time::timeout_at(until, rx.recv_many(batch, room)).await {
            Ok(n) if n > 0 => {}
            // The time is up, or every sender is gone (commit what there is).
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u64) -> Record {
        Record {
            seq: 0,
            at_us: i,
            node: NodeId::new("n1").expect("a valid name"),
            event: Event::Sensed {
                placement: qs_wire::PlacementId {
                    steward: NodeId::new("n1").expect("a valid name"),
                    seq: i,
                },
                service: qs_wire::ServiceName::new("web").expect("a valid name"),
                reason: qs_wire::SenseReason::Missing { have: 0, want: 1 },
            },
        }
    }

    #[tokio::test]
    async fn a_small_batch_takes_what_queued_behind_it() {
        let (tx, mut rx) = mpsc::channel(QUEUE);
        for i in 0..300 {
            tx.send(record(i)).await.expect("the receiver is open");
        }
        let mut batch = vec![record(1_000)];
        linger(&mut rx, &mut batch).await;
        assert_eq!(batch.len(), 301);
        // Behind a few records nothing more comes: it commits those, after LINGER at most.
        for i in 0..3 {
            tx.send(record(i)).await.expect("the receiver is open");
        }
        let mut batch = vec![record(1_000)];
        linger(&mut rx, &mut batch).await;
        assert_eq!(batch.len(), 4);
        // Every sender gone: what there is, at once.
        tx.send(record(7)).await.expect("the receiver is open");
        drop(tx);
        let mut batch = Vec::new();
        linger(&mut rx, &mut batch).await;
        assert_eq!(batch.len(), 1);
    }
}
