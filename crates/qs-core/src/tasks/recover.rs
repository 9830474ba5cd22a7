//! What a node takes back and gives up of its tasks: those its store kept from a previous
//! life ([`TaskQueues::restore`]), those it adopts from a dead node, those it hands over to the
//! node that adopted them, and completions the fleet recorded (`fleet.rs` decides which).

use super::{Phase, Refusal, Task, TaskQueues};
use qs_wire::event::TaskStep;
use qs_wire::{NodeId, TaskId};
use std::collections::BTreeMap;

impl TaskQueues {
    /// Another node's `task` taken over here (`why`: its node is dead, or it offered it; the
    /// fleet's record, checked by the caller): it waits
    /// where its phase says, a running one in the inbound queue with its checkpoint.
    pub fn adopt(&mut self, task: Task, why: String) -> Result<(), Refusal> {
        let id = task.id.clone();
        if !self.restore(vec![task]).is_empty() {
            return Err(Refusal::Full {
                queue: "inbound",
                limit: self.limits.inbound,
            });
        }
        self.record(&id, TaskStep::Adopted, why);
        Ok(())
    }

    /// `id` is another node's now (it adopted it), or the fleet no longer holds it (`None`:
    /// it ended elsewhere and was forgotten): this node forgets it, its store too.
    pub fn hand_over(&mut self, id: &TaskId, to: Option<&NodeId>) {
        let Some(t) = self.tasks.remove(id) else {
            return;
        };
        self.unqueue(id);
        self.ended.retain(|e| e != id);
        self.by_key.remove(&t.spec.idempotency_key);
        self.forgotten.push(id.clone());
        let detail = match to {
            Some(to) => format!("to {to}, which owns it now"),
            None => "the fleet no longer holds it: it ended elsewhere".to_owned(),
        };
        self.record(id, TaskStep::Moved, detail);
    }

    /// The fleet recorded `id`'s completion with `result` (sealed before this node went
    /// down): it completes so, once.
    pub fn complete_recorded(&mut self, id: &TaskId, result: String) {
        let Ok(t) = self.live(id) else {
            return;
        };
        t.phase = Phase::Completed;
        t.result = Some(result);
        self.unqueue(id);
        self.end(id, TaskStep::Completed, "as the fleet recorded it".into());
    }

    /// The ended tasks forgotten since the last call.
    pub fn take_forgotten(&mut self) -> Vec<TaskId> {
        std::mem::take(&mut self.forgotten)
    }

    /// Takes back the tasks a previous life kept (each already checked by the caller): each
    /// goes where its phase says. One that was running died with that life: its attempt is
    /// gone, and it waits in the inbound queue again, its checkpoint kept. Past the bounds,
    /// the rest are refused and returned.
    pub fn restore(&mut self, tasks: Vec<Task>) -> Vec<TaskId> {
        let mut refused = Vec::new();
        for mut t in tasks {
            if self.tasks.contains_key(&t.id) || self.by_key.contains_key(&t.spec.idempotency_key) {
                refused.push(t.id);
                continue;
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            self.next_attempt = self.next_attempt.max(t.attempt.saturating_add(1));
            match t.phase {
                Phase::Inbound | Phase::Running { .. }
                    if self.inbound.len() < self.limits.inbound =>
                {
                    t.phase = Phase::Inbound;
                    self.inbound.insert(Self::key(&t, seq), t.id.clone());
                }
                Phase::Refining if self.refinement.len() < self.limits.refinement => {
                    self.refinement.push_back(t.id.clone());
                }
                Phase::Outbound if self.outbound.len() < self.limits.outbound => {
                    self.outbound.insert(t.id.clone());
                }
                Phase::Completed | Phase::Failed { .. } | Phase::Cancelled
                    if self.ended.len() < self.limits.ended =>
                {
                    self.ended.push_back(t.id.clone());
                }
                _ => {
                    refused.push(t.id);
                    continue;
                }
            }
            self.by_key
                .insert(t.spec.idempotency_key.clone(), t.id.clone());
            self.tasks.insert(t.id.clone(), t);
        }
        refused
    }

    /// The tasks that ended here but whose end the ledger lost (the process died between
    /// the task store's commit and the ledger's): `seen` says, per task, whether the ledger
    /// holds any of its events and whether one is its end. A task with events but no end
    /// lost its tail; one without any was compacted away (or never here) and is left alone.
    /// Each gets its end recorded again, once.
    pub fn record_lost_ends(&mut self, seen: &BTreeMap<TaskId, bool>) {
        let lost: Vec<(TaskId, TaskStep)> = self
            .tasks
            .values()
            .filter(|t| seen.get(&t.id) == Some(&false))
            .filter_map(|t| {
                let step = match t.phase {
                    Phase::Completed => TaskStep::Completed,
                    Phase::Failed { .. } => TaskStep::Failed,
                    Phase::Cancelled => TaskStep::Cancelled,
                    _ => return None,
                };
                Some((t.id.clone(), step))
            })
            .collect();
        for (id, step) in lost {
            let detail = "recorded again: the ledger lost it when the process died".to_owned();
            self.record(&id, step, detail);
        }
    }
}

/// Whether a step ends a task.
pub fn is_end(step: TaskStep) -> bool {
    matches!(
        step,
        TaskStep::Completed | TaskStep::Failed | TaskStep::Cancelled
    )
}
