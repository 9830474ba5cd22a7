//! Group commit for the ledger: every node runtime of a process hands its events to one
//! writer task, which commits them in batches (one durable transaction per batch instead of
//! one per event). A batch that starts small lingers a moment for the records right behind
//! it, so a busy fleet commits hundreds of records per transaction rather than a few. The
//! queue is bounded: when the disk falls behind, runtimes wait.

use qs_store::Ledger;
use qs_wire::{Event, NodeId, Record};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

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
}

impl Journal {
    /// Starts the writer task. It ends when `stop` turns true (after committing everything
    /// queued by then) or when every `Journal` clone is dropped.
    pub fn start(
        ledger: Arc<Ledger>,
        stop: watch::Receiver<bool>,
    ) -> (Journal, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Journal { tx }, tokio::spawn(write(ledger, rx, stop)))
    }

    /// Queues events written by `node` at `at_us` (waits while the queue is full).
    pub async fn append(&self, node: &NodeId, at_us: u64, events: Vec<Event>) {
        for event in events {
            let record = Record {
                seq: 0, // assigned by the ledger at commit
                at_us,
                node: node.clone(),
                event,
            };
            if self.tx.send(record).await.is_err() {
                tracing::error!("the ledger writer has stopped; an event was not recorded");
                return;
            }
        }
    }
}

async fn write(
    ledger: Arc<Ledger>,
    mut rx: mpsc::Receiver<Record>,
    mut stop: watch::Receiver<bool>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => n,
            _ = stop.changed() => {
                // Take nothing new; commit what is queued, then end.
                rx.close();
                while rx.recv_many(&mut batch, BATCH).await > 0 {
                    commit(&ledger, std::mem::take(&mut batch)).await;
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
        commit(&ledger, std::mem::take(&mut batch)).await;
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

async fn commit(ledger: &Arc<Ledger>, records: Vec<Record>) {
    let ledger = ledger.clone();
    match tokio::task::spawn_blocking(move || ledger.append_records(&records)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!("ledger append failed: {e}"),
        Err(e) => tracing::error!("ledger writer failed: {e}"),
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
