//! The node's durable tasks (seed 002) on this process: the core's [`TaskQueues`] behind a
//! lock, fed by the API (`POST /v1/tasks` and the rest), their deadlines kept by a timer, and
//! every step of every task written to the ledger.
//!
//! The process's first node takes its tasks. What exists so far: submission (idempotent,
//! bounded), the three queues and their counts in `/queue_stats`, listing, cancelling and
//! deadlines; the core already decides claims, iterations, convergence, completion and
//! validation, which the worker protocol will carry (not built yet).

use crate::clock::now;
use crate::journal::Journal;
use qs_core::tasks::{Accepted, QueueCounts, Refusal, Task, TaskLimits, TaskQueues};
use qs_wire::{Event, NodeId, TaskId, TaskSpec};
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
        }
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
                _ = stop.changed() => return,
                _ = tick.tick() => {}
            }
            let due = self.queues().next_deadline().is_some_and(|t| t <= now());
            if due {
                self.with(|q| q.expire(now())).await;
            }
        }
    }
}
