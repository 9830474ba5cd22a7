//! Group commit of the task store: every change of the queues is handed here in the order the
//! queues made them, and one thread writes whatever has gathered since its last commit in one
//! durable transaction, then tells each change's caller it is on disk. A caller answers its
//! client only then; many callers share one fsync, so throughput grows with the number of
//! workers and clients instead of being one fsync per change.
//!
//! Order is kept: changes enter one FIFO channel while the queues' lock is held, and the
//! thread commits them in that order, a later change never before an earlier one. The channel
//! is bounded ([`MAX_PENDING`] changes): past it, callers wait for room. A commit that fails
//! (a full or failing disk) is logged as an error and its callers are released all the same:
//! the change stands in memory and is answered, and the next commit of the same task carries
//! it (every write is the task's whole record).

use qs_store::{TaskStore, TaskWrite};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Changes waiting for their commit, at most.
pub const MAX_PENDING: usize = 4096;
/// Changes put in one transaction, at most.
const MAX_BATCH: usize = 1024;

/// One change's writes and who waits for them.
struct Change {
    writes: Vec<TaskWrite>,
    durable: oneshot::Sender<()>,
}

/// See the module docs.
pub struct Persister {
    tx: mpsc::Sender<Change>,
}

/// Resolves when a change is on disk (or its commit failed, which is logged).
pub struct Durable(oneshot::Receiver<()>);

impl Durable {
    pub async fn wait(self) {
        let _ = self.0.await;
    }
}

impl Persister {
    /// Starts the writing thread of `store`; it ends when the persister is dropped.
    pub fn start(store: Arc<TaskStore>) -> Persister {
        let (tx, mut rx) = mpsc::channel::<Change>(MAX_PENDING);
        std::thread::Builder::new()
            .name("qs-task-store".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH
                        && let Ok(next) = rx.try_recv()
                    {
                        batch.push(next);
                    }
                    let mut writes = Vec::new();
                    let mut waiting = Vec::with_capacity(batch.len());
                    for change in batch {
                        writes.extend(change.writes);
                        waiting.push(change.durable);
                    }
                    if let Err(e) = store.apply(writes) {
                        tracing::error!("task store: {e}");
                    }
                    for w in waiting {
                        let _ = w.send(());
                    }
                }
            })
            .expect("a thread starts");
        Persister { tx }
    }

    /// Queues `writes` behind every change queued before; the caller holds the queues' lock,
    /// so the order of the queue is the order of the changes.
    pub async fn queue(&self, writes: Vec<TaskWrite>) -> Durable {
        let (durable, on_disk) = oneshot::channel();
        if self.tx.send(Change { writes, durable }).await.is_err() {
            tracing::error!("task store: its writer has stopped; a change was not written");
        }
        Durable(on_disk)
    }
}
