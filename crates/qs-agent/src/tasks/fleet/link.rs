//! The host's side of the fleet task: its records queued without ever waiting (the latest
//! per task, kept in the order the queues made them), and the requests it waits on (seal a
//! claim or a completion, take or offer tasks).

use qs_core::tasks::Task;
use qs_wire::{NodeId, TaskId};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, mpsc, oneshot};

/// Requests waiting for the fleet task, at most.
const MAX_COMMANDS: usize = 8192;

/// What the host asks of the fleet task.
pub(super) enum Command {
    /// Seal this record (a claim's, a completion's) before anyone hears of it.
    Seal {
        task: Box<Task>,
        reply: oneshot::Sender<Sealed>,
    },
    /// Offer these of this node's tasks to `to` once their records are written.
    Offer { to: NodeId, tasks: Vec<TaskId> },
    /// Look at these tasks in the bucket: take those `from` still owns and has not started
    /// (answering how many), hand over those of this node that another owns now.
    Take {
        from: NodeId,
        tasks: Vec<TaskId>,
        reply: Option<oneshot::Sender<usize>>,
    },
}

/// How a seal went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sealed {
    /// The fleet holds it: go on.
    Sealed,
    /// The fleet cannot be reached: go on here (autonomous); it is written on return.
    Offline,
    /// Another node owns the task now: hand it over.
    Moved(NodeId),
    /// The fleet no longer holds the task this node had written: it ended elsewhere.
    Gone,
    /// The fleet recorded its completion (with this result) before this node knew.
    Ended(String),
}

/// Records waiting to be written: the latest per task (`None`: forgotten here).
#[derive(Default)]
pub(super) struct Writes {
    pub(super) records: Mutex<BTreeMap<TaskId, Option<Task>>>,
    pub(super) ready: Notify,
}

impl Writes {
    pub(super) fn take(&self) -> BTreeMap<TaskId, Option<Task>> {
        std::mem::take(&mut *self.records.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The host's handle on the fleet task.
#[derive(Clone)]
pub struct FleetLink {
    tx: mpsc::Sender<Command>,
    writes: Arc<Writes>,
}

/// The fleet task's end.
pub struct FleetInbox {
    pub(super) rx: mpsc::Receiver<Command>,
    pub(super) writes: Arc<Writes>,
}

impl FleetLink {
    /// The link and the fleet task's end (started with `fleet::run`).
    pub fn new() -> (FleetLink, FleetInbox) {
        let (tx, rx) = mpsc::channel(MAX_COMMANDS);
        let writes = Arc::new(Writes::default());
        let inbox = FleetInbox {
            rx,
            writes: writes.clone(),
        };
        (FleetLink { tx, writes }, inbox)
    }

    /// Queues the latest record of `id`; never waits (the host calls it holding its queues'
    /// lock, so records of one task queue in the order they were made). The map holds one
    /// record per task remembered, so it is as bounded as the queues.
    pub fn write(&self, id: TaskId, record: Option<Task>) {
        let mut records = self
            .writes
            .records
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        records.insert(id, record);
        drop(records);
        self.writes.ready.notify_one();
    }

    /// Records queued and not yet taken by the fleet task.
    pub fn queued(&self) -> usize {
        let records = self.writes.records.lock();
        records.map_or(0, |r| r.len())
    }

    /// Takes what of `tasks` `from` still owns and has not started; how many it took.
    pub async fn take(&self, from: NodeId, tasks: Vec<TaskId>) -> usize {
        let (reply, took) = oneshot::channel();
        let sent = self.tx.send(Command::Take {
            from,
            tasks,
            reply: Some(reply),
        });
        if sent.await.is_err() {
            return 0;
        }
        took.await.unwrap_or(0)
    }

    /// Offers `tasks` to `to` (after their records are in the bucket, so it can take them).
    pub async fn offer(&self, to: NodeId, tasks: Vec<TaskId>) {
        let _ = self.tx.send(Command::Offer { to, tasks }).await;
    }

    /// `from` says it took some of `tasks` (or offers them): look at them in the bucket.
    pub async fn look(&self, from: NodeId, tasks: Vec<TaskId>) {
        let look = Command::Take {
            from,
            tasks,
            reply: None,
        };
        let _ = self.tx.send(look).await;
    }

    /// Seals `task`'s record in the fleet before anyone hears of it.
    pub async fn seal(&self, task: Task) -> Sealed {
        let (reply, sealed) = oneshot::channel();
        let seal = Command::Seal {
            task: Box::new(task),
            reply,
        };
        if self.tx.send(seal).await.is_err() {
            return Sealed::Offline;
        }
        sealed.await.unwrap_or(Sealed::Offline)
    }
}
