//! The node's durable tasks (seed 002) on this process: the core's [`TaskQueues`] behind a
//! lock, fed by the API (`POST /v1/tasks` and the rest), their deadlines kept by a timer, and
//! every step of every task written to the ledger.
//!
//! The process's first node takes its tasks. Clients submit, list and cancel them over the
//! API; local workers claim, report, checkpoint, complete and fail them over the worker
//! protocol (`worker.rs`, a Unix socket in the state directory). What the core decides (the
//! order of the queues, attempts and their fencing, convergence, one completion per task) is
//! carried out here as it says. Tasks live in memory: a restart of the agent loses them (the
//! ledger keeps their steps).

use crate::clock::now;
use crate::journal::Journal;
pub mod worker;

use qs_core::tasks::{
    Accepted, Claim, Next, QueueCounts, Refusal, Report, Task, TaskLimits, TaskQueues,
};
use qs_wire::{Event, NodeId, ServiceName, TaskId, TaskSpec};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How often deadlines are looked at.
const EXPIRE_EVERY: Duration = Duration::from_millis(250);

/// See the module docs.
pub struct TaskHost {
    node: NodeId,
    queues: Mutex<TaskQueues>,
    journal: Journal,
    /// Workers are asked to stop claiming (the agent is stopping).
    soft_stop: AtomicBool,
    /// Workers disconnected for speaking the protocol wrongly.
    pub workers_disconnected: Arc<AtomicU64>,
}

impl TaskHost {
    pub fn new(node: NodeId, journal: Journal) -> TaskHost {
        // Numbered from the wall clock at start: a restart names no task twice.
        let first_seq = now().as_micros();
        TaskHost {
            queues: Mutex::new(TaskQueues::new(
                node.clone(),
                TaskLimits::default(),
                first_seq,
            )),
            node,
            journal,
            soft_stop: AtomicBool::new(false),
            workers_disconnected: Arc::default(),
        }
    }

    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// Whether workers should stop claiming.
    pub fn soft_stopping(&self) -> bool {
        self.soft_stop.load(Ordering::Relaxed)
    }

    pub async fn claim(&self, worker: &str, warm: &BTreeSet<ServiceName>) -> Option<Claim> {
        self.with(|q| q.claim(worker, warm)).await
    }

    pub async fn report(&self, id: &TaskId, attempt: u64, r: Report) -> Result<Next, Refusal> {
        self.with(|q| q.report(id, attempt, r)).await
    }

    pub async fn checkpoint(
        &self,
        id: &TaskId,
        attempt: u64,
        iteration: u32,
        state: String,
    ) -> Result<(), Refusal> {
        self.with(|q| q.checkpoint(id, attempt, iteration, state))
            .await
    }

    pub async fn complete(&self, id: &TaskId, attempt: u64, result: String) -> Result<(), Refusal> {
        self.with(|q| q.complete(id, attempt, result)).await
    }

    pub async fn fail(&self, id: &TaskId, attempt: u64, reason: &str) -> Result<(), Refusal> {
        self.with(|q| q.fail(id, attempt, reason, now())).await
    }

    /// A worker went away: the attempts it held fail.
    pub async fn abandon(&self, worker: &str) {
        self.with(|q| q.abandon(worker, now())).await;
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, TaskQueues> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the queues, then writes the steps it took to the ledger.
    async fn with<T>(&self, f: impl FnOnce(&mut TaskQueues) -> T) -> T {
        let (out, events) = {
            let mut q = self.queues();
            let out = f(&mut q);
            let events: Vec<Event> = std::iter::from_fn(|| q.poll()).collect();
            (out, events)
        };
        if !events.is_empty() {
            self.journal
                .append(&self.node, now().as_micros(), events)
                .await;
        }
        out
    }

    /// Takes a task (its spec checked by [`qs_wire::decode_task`]).
    pub async fn submit(&self, spec: TaskSpec) -> Result<Accepted, Refusal> {
        self.with(|q| q.submit(spec, now())).await
    }

    pub async fn cancel(&self, id: &TaskId) -> Result<(), Refusal> {
        self.with(|q| q.cancel(id)).await
    }

    pub fn get(&self, id: &TaskId) -> Option<Task> {
        self.queues().get(id).cloned()
    }

    /// Every task remembered, by id.
    pub fn list(&self) -> Vec<Task> {
        self.queues().tasks().cloned().collect()
    }

    pub fn counts(&self) -> QueueCounts {
        self.queues().counts()
    }

    /// Fails the tasks past their deadlines until `stop` turns true.
    pub async fn keep_deadlines(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(EXPIRE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => {
                    self.soft_stop.store(true, Ordering::Relaxed);
                    return;
                }
                _ = tick.tick() => {}
            }
            let due = self.queues().next_deadline().is_some_and(|t| t <= now());
            if due {
                self.with(|q| q.expire(now())).await;
            }
        }
    }
}
