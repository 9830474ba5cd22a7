//! Group commit for the ledger: every node runtime of a process hands its events to one
//! writer task, which commits them in batches (one durable transaction per batch instead of
//! one per event). The queue is bounded: when the disk falls behind, runtimes wait.

use qs_store::Ledger;
use qs_wire::{Event, NodeId, Record};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Records waiting for the writer at most.
pub const QUEUE: usize = 65_536;
/// Records in one transaction at most.
pub const BATCH: usize = 8_192;

/// The sending side, cloned into every runtime.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Record>,
}

impl Journal {
    /// Starts the writer task; it ends when every `Journal` clone is dropped, after
    /// committing what was queued.
    pub fn start(ledger: Arc<Ledger>) -> (Journal, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Journal { tx }, tokio::spawn(write(ledger, rx)))
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

async fn write(ledger: Arc<Ledger>, mut rx: mpsc::Receiver<Record>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let records = std::mem::take(&mut batch);
        let ledger = ledger.clone();
        let result = tokio::task::spawn_blocking(move || ledger.append_records(&records)).await;
        match result {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!("ledger append failed: {e}"),
            Err(e) => tracing::error!("ledger writer failed: {e}"),
        }
    }
}
