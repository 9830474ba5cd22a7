//! One node's durable tasks (seed 002), as a sans-IO state machine: the three queues and every
//! decision about a task's life.
//!
//! - **Inbound**: tasks accepted and not yet taken, ordered by class, then priority (highest
//!   first), then whether a worker has the model warm, then expected difficulty (easiest
//!   first), then arrival.
//! - **Refinement**: tasks between iterations. A worker reports each iteration (a score and a
//!   hash of its result); the convergence checks (`convergence.rs`: stability, consistency,
//!   novelty) or `max_iterations` end the refining, else the task waits here for its next
//!   iteration, which any worker may take, before new work.
//! - **Outbound**: results waiting for their validation; a task whose spec asks none
//!   completes at once.
//!
//! Every claim of a task is a new attempt with a growing fencing token: a report, completion
//! or failure from a superseded attempt is refused. A task completes once: a second
//! completion is refused, and an idempotency key submitted again names the task it already
//! names. Every queue is bounded ([`TaskLimits`]); a full one refuses new work with the reason.
//! Each step is an [`Event::Task`] for the ledger, taken with [`TaskQueues::poll`].

mod attempt;
pub mod balance;
mod convergence;
pub mod fleet;
mod judge;
mod recover;
pub use recover::is_end;
pub mod signals;
mod types;

use crate::time::{Time, ms};
use qs_wire::event::TaskStep;
use qs_wire::task::{TaskClass, TaskSpec, Validation};
use qs_wire::{Event, NodeId, ServiceName, TaskId};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub use convergence::{Convergence, Report, converged};
pub use judge::{Judging, ToValidate, Vote};
pub use types::*;

/// The bounds of one node's queues.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskLimits {
    pub inbound: usize,
    pub refinement: usize,
    pub outbound: usize,
    /// Ended tasks (and their idempotency keys) remembered; the oldest are forgotten past it.
    pub ended: usize,
    /// Attempts that fail before the task does.
    pub attempts: u32,
}

impl Default for TaskLimits {
    fn default() -> Self {
        TaskLimits {
            inbound: 10_000,
            refinement: 10_000,
            outbound: 10_000,
            ended: 100_000,
            attempts: 3,
        }
    }
}

/// The order of the inbound queue (warmth aside, which depends on the worker).
type InboundKey = (TaskClass, std::cmp::Reverse<u8>, u32, u64);

/// See the module docs.
#[derive(Debug)]
pub struct TaskQueues {
    node: NodeId,
    limits: TaskLimits,
    tasks: BTreeMap<TaskId, Task>,
    inbound: BTreeMap<InboundKey, TaskId>,
    refinement: VecDeque<TaskId>,
    outbound: BTreeSet<TaskId>,
    by_key: BTreeMap<String, TaskId>,
    ended: VecDeque<TaskId>,
    /// Ended tasks forgotten since the shell last asked (its store forgets them too).
    forgotten: Vec<TaskId>,
    next_seq: u64,
    next_attempt: u64,
    events: VecDeque<Event>,
    /// How many may run at once, and those that may run now (pruned at each claim).
    concurrency: balance::Aimd,
    running: BTreeSet<TaskId>,
    /// Completions and failed attempts since start: the reliability others weigh.
    completions: u64,
    failures: u64,
}

/// Whether `id` is held by an attempt now (the `running` set is pruned lazily).
fn is_running(tasks: &BTreeMap<TaskId, Task>, id: &TaskId) -> bool {
    tasks
        .get(id)
        .is_some_and(|t| matches!(t.phase, Phase::Running { .. }))
}

/// How far down the inbound order a claim looks for a task whose model is warm.
const WARM_LOOKAHEAD: usize = 64;
/// How far down a queue a claim looks past tasks that must go to another worker.
const AVOID_LOOKAHEAD: usize = 256;

impl TaskQueues {
    /// The queues of `node`; task ids are `NODE-t<seq>`, from `first_seq` (the shell's boot
    /// numbering, so a restart names no task twice).
    pub fn new(node: NodeId, limits: TaskLimits, first_seq: u64) -> TaskQueues {
        TaskQueues {
            node,
            limits,
            tasks: BTreeMap::new(),
            inbound: BTreeMap::new(),
            refinement: VecDeque::new(),
            outbound: BTreeSet::new(),
            by_key: BTreeMap::new(),
            ended: VecDeque::new(),
            forgotten: Vec::new(),
            next_seq: first_seq,
            next_attempt: 1,
            events: VecDeque::new(),
            concurrency: balance::Aimd::default(),
            running: BTreeSet::new(),
            completions: 0,
            failures: 0,
        }
    }

    fn record(&mut self, task: &TaskId, step: TaskStep, detail: String) {
        // The ledger's writer is bounded; so is what waits for it here.
        if self.events.len() < 4 * self.limits.inbound.max(1024) {
            self.events.push_back(Event::Task {
                task: task.clone(),
                step,
                detail,
            });
        }
    }

    /// The next event for the ledger.
    pub fn poll(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn key(t: &Task, seq: u64) -> InboundKey {
        let difficulty = (t.spec.difficulty * 1000.0) as u32;
        (
            t.spec.class,
            std::cmp::Reverse(t.spec.priority),
            difficulty,
            seq,
        )
    }

    /// Takes a task (`spec` checked by the caller's decoding), or names the one its
    /// idempotency key already names.
    pub fn submit(&mut self, spec: TaskSpec, now: Time) -> Result<Accepted, Refusal> {
        if let Some(id) = self.by_key.get(&spec.idempotency_key) {
            return Ok(Accepted {
                id: id.clone(),
                existing: true,
            });
        }
        if self.inbound.len() >= self.limits.inbound {
            return Err(Refusal::Full {
                queue: "inbound",
                limit: self.limits.inbound,
            });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let id = TaskId::new(&format!("{}-t{seq}", self.node))
            .or_else(|_| TaskId::new(&format!("t{seq}")))
            .expect("a node name and a number make a name");
        let task = Task {
            id: id.clone(),
            spec,
            phase: Phase::Inbound,
            attempt: 0,
            failures: 0,
            iteration: 0,
            submitted_ms: now.as_micros() / 1000,
            history: VecDeque::new(),
            result: None,
            checkpoint: None,
            effects: BTreeSet::new(),
            progress: None,
            judging: judge::Judging::default(),
        };
        self.inbound.insert(Self::key(&task, seq), id.clone());
        self.by_key
            .insert(task.spec.idempotency_key.clone(), id.clone());
        let detail = format!(
            "{} priority {}, at most {} iterations",
            task.spec.class, task.spec.priority, task.spec.max_iterations
        );
        self.tasks.insert(id.clone(), task);
        self.record(&id, TaskStep::Submitted, detail);
        Ok(Accepted {
            id,
            existing: false,
        })
    }

    /// A worker (`worker`, with `warm` models) takes its next iteration: a task waiting in the
    /// refinement queue first, else the first inbound one, one whose model it has warm first
    /// among the next few; never one that must go to another worker than this one (a
    /// reroute, a vote's independent pass).
    pub fn claim(&mut self, worker: &str, warm: &BTreeSet<ServiceName>) -> Option<Claim> {
        let tasks = &self.tasks;
        self.running.retain(|id| is_running(tasks, id));
        if self.running.len() >= self.concurrency.limit() as usize {
            return None;
        }
        let name = judge::worker_name(worker);
        // Avoided by name (a reroute, a vote's pass) or by connection (a reassignment).
        let allowed = |id: &TaskId| {
            tasks.get(id).is_some_and(|t| {
                !t.judging.avoid.contains(name) && !t.judging.avoid.contains(worker)
            })
        };
        let refining = self
            .refinement
            .iter()
            .take(AVOID_LOOKAHEAD)
            .position(allowed);
        let id = match refining {
            Some(i) => self.refinement.remove(i)?,
            None => {
                let open: Vec<&InboundKey> = self
                    .inbound
                    .iter()
                    .take(AVOID_LOOKAHEAD)
                    .filter(|(_, id)| allowed(id))
                    .map(|(k, _)| k)
                    .take(WARM_LOOKAHEAD)
                    .collect();
                let head = **open.first()?;
                let pick = open
                    .iter()
                    // Warmth orders only among the same class and priority.
                    .take_while(|k| (k.0, k.1) == (head.0, head.1))
                    .find(|k| {
                        self.inbound
                            .get(k)
                            .and_then(|id| tasks.get(id))
                            .and_then(Task::model)
                            .is_some_and(|m| warm.contains(m))
                    })
                    .map_or(head, |k| **k);
                self.inbound.remove(&pick)?
            }
        };
        let attempt = self.next_attempt;
        self.next_attempt = self.next_attempt.saturating_add(1);
        let t = self.tasks.get_mut(&id)?;
        t.attempt = attempt;
        t.phase = Phase::Running {
            worker: worker.to_owned(),
        };
        self.running.insert(id.clone());
        let claim = Claim {
            id: id.clone(),
            attempt,
            iteration: t.iteration,
            payload: t.spec.payload.clone(),
            model: t.model().cloned(),
            state: t.checkpoint.as_ref().map(|c| c.state.clone()),
        };
        let detail = format!("attempt {attempt} by {worker}, iteration {}", t.iteration);
        self.record(&id, TaskStep::Claimed, detail);
        Some(claim)
    }

    /// The task `id` if it has not ended, or why not.
    fn live(&mut self, id: &TaskId) -> Result<&mut Task, Refusal> {
        let t = self
            .tasks
            .get_mut(id)
            .ok_or_else(|| Refusal::Unknown(id.clone()))?;
        if t.phase.ended() {
            return Err(Refusal::Ended(id.clone()));
        }
        Ok(t)
    }

    /// The running task `id` held by `attempt`, or why it is not.
    fn running(&mut self, id: &TaskId, attempt: u64) -> Result<&mut Task, Refusal> {
        let t = self.live(id)?;
        if t.attempt != attempt {
            return Err(Refusal::Superseded {
                task: id.clone(),
                got: attempt,
                now: t.attempt,
            });
        }
        if !matches!(t.phase, Phase::Running { .. }) {
            return Err(Refusal::NotRunning {
                task: id.clone(),
                phase: format!("{:?}", t.phase),
            });
        }
        Ok(t)
    }

    /// An iteration of `id` ended with `report`: refining goes on or is over.
    pub fn report(&mut self, id: &TaskId, attempt: u64, report: Report) -> Result<Next, Refusal> {
        if self.refinement.len() >= self.limits.refinement {
            return Err(Refusal::Full {
                queue: "refinement",
                limit: self.limits.refinement,
            });
        }
        let t = self.running(id, attempt)?;
        t.iteration = t.iteration.saturating_add(1);
        t.progress = None;
        t.history.push_back(report);
        while t.history.len() > convergence::HISTORY {
            t.history.pop_front();
        }
        let convergence = converged(&t.history);
        let done = t.iteration >= t.spec.max_iterations || convergence.is_some();
        let why = convergence.map_or("", Convergence::name);
        let detail = format!("iteration {} score {:.3} {why}", t.iteration, report.score);
        let escalation = match done {
            true => None,
            false => t.judging.progress(&t.spec, t.iteration, report.score),
        };
        if let Some(e) = &escalation {
            t.history.clear();
            if e.reroute
                && let Phase::Running { worker } = &t.phase
            {
                let name = judge::worker_name(worker).to_owned();
                t.reroute(&name);
            }
        }
        let next = if done {
            Next::Finish
        } else {
            t.phase = Phase::Refining;
            self.refinement.push_back(id.clone());
            Next::Continue
        };
        self.record(id, TaskStep::Iterated, detail);
        if let Some(e) = escalation {
            self.record(id, TaskStep::Escalated, e.why);
        }
        Ok(next)
    }

    /// The worker holding `id` saved its state at `iteration`: the next claim resumes there.
    pub fn checkpoint(
        &mut self,
        id: &TaskId,
        attempt: u64,
        iteration: u32,
        state: String,
    ) -> Result<(), Refusal> {
        if state.len() > MAX_CHECKPOINT_BYTES {
            return Err(Refusal::TooLarge { got: state.len() });
        }
        let t = self.running(id, attempt)?;
        let model = t.model().cloned();
        let hash = crate::hash::of_str(&state);
        t.checkpoint = Some(Checkpoint {
            iteration,
            state,
            attempt,
            model,
            hash,
            artifact: None,
        });
        self.record(
            id,
            TaskStep::Checkpointed,
            format!("iteration {iteration}, attempt {attempt}"),
        );
        Ok(())
    }

    /// Whether `worker` holds an attempt of a task now.
    pub fn holds_work(&self, worker: &str) -> bool {
        self.held_by(worker).is_some()
    }

    /// A task `worker` holds an attempt of now (the first by id, if several).
    pub fn held_by(&self, worker: &str) -> Option<&Task> {
        self.tasks
            .values()
            .find(|t| matches!(&t.phase, Phase::Running { worker: w } if w == worker))
    }

    /// `worker` went away: the attempts it held fail (their tasks go back to the inbound
    /// queue, or fail past their attempts).
    pub fn abandon(&mut self, worker: &str) {
        let held: Vec<(TaskId, u64)> = self
            .tasks
            .values()
            .filter(|t| matches!(&t.phase, Phase::Running { worker: w } if w == worker))
            .map(|t| (t.id.clone(), t.attempt))
            .collect();
        for (id, attempt) in held {
            let _ = self.fail(&id, attempt, "its worker went away");
        }
    }

    /// The worker holding `id` finished it with `result`: it completes, waits for its
    /// validation in the outbound queue, or counts as a vote (`judge.rs`).
    pub fn complete(&mut self, id: &TaskId, attempt: u64, result: String) -> Result<(), Refusal> {
        if result.len() > MAX_RESULT_BYTES {
            return Err(Refusal::ResultTooLarge { got: result.len() });
        }
        let outbound_full = self.outbound.len() >= self.limits.outbound;
        let t = self.running(id, attempt)?;
        let worker = match &t.phase {
            Phase::Running { worker } => judge::worker_name(worker).to_owned(),
            _ => String::new(),
        };
        if let Some(vote) = t.judging.voting(&t.spec) {
            self.concurrency.on_success();
            self.completions += 1;
            self.vote(id, vote, worker, result);
            return Ok(());
        }
        let validated = t.spec.validation == Validation::None;
        if !validated && outbound_full {
            return Err(Refusal::Full {
                queue: "outbound",
                limit: self.limits.outbound,
            });
        }
        t.result = Some(result);
        t.judging.last_worker = Some(worker);
        self.concurrency.on_success();
        self.completions += 1;
        let Some(t) = self.tasks.get_mut(id) else {
            return Ok(());
        };
        if validated {
            t.phase = Phase::Completed;
            self.end(id, TaskStep::Completed, format!("attempt {attempt}"));
        } else {
            t.phase = Phase::Outbound;
            self.outbound.insert(id.clone());
            self.record(id, TaskStep::Outbound, format!("attempt {attempt}"));
        }
        Ok(())
    }

    /// The attempt holding `id` failed: the task goes back to the inbound queue, or fails
    /// after [`TaskLimits::attempts`].
    pub fn fail(&mut self, id: &TaskId, attempt: u64, reason: &str) -> Result<(), Refusal> {
        let limit = self.limits.attempts;
        let t = self.running(id, attempt)?;
        t.failures += 1;
        let failures = t.failures;
        if failures >= limit {
            t.phase = Phase::Failed {
                reason: reason.to_owned(),
            };
        }
        self.concurrency.on_failure();
        self.failures += 1;
        if failures >= limit {
            let detail = format!("{failures} attempts failed, the last: {reason}");
            self.end(id, TaskStep::Failed, detail);
        } else {
            self.requeue(id);
            self.record(
                id,
                TaskStep::Retried,
                format!("attempt {attempt} failed: {reason}"),
            );
        }
        Ok(())
    }

    fn requeue(&mut self, id: &TaskId) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(t) = self.tasks.get_mut(id) {
            t.phase = Phase::Inbound;
            self.inbound.insert(Self::key(t, seq), id.clone());
        }
    }

    /// The client gives `id` up; an ended task stays as it ended.
    /// The record `id` would end with if cancelled now, to seal in the fleet first.
    pub fn sealing_cancel(&mut self, id: &TaskId) -> Result<Task, Refusal> {
        let t = self.live(id)?;
        Ok(Task {
            phase: Phase::Cancelled,
            ..t.clone()
        })
    }

    pub fn cancel(&mut self, id: &TaskId) -> Result<(), Refusal> {
        self.live(id)?.phase = Phase::Cancelled;
        self.unqueue(id);
        self.end(id, TaskStep::Cancelled, "by the client".into());
        Ok(())
    }

    /// Takes `id` out of whichever queue holds it.
    fn unqueue(&mut self, id: &TaskId) {
        self.inbound.retain(|_, t| t != id);
        self.refinement.retain(|t| t != id);
        self.outbound.remove(id);
    }

    /// Tasks past their deadline fail.
    pub fn expire(&mut self, now: Time) {
        let now_ms = now.as_micros() / 1000;
        let late: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|t| {
                !t.phase.ended() && now_ms >= t.submitted_ms.saturating_add(t.spec.deadline_ms)
            })
            .map(|t| t.id.clone())
            .collect();
        for id in late {
            self.unqueue(&id);
            if let Some(t) = self.tasks.get_mut(&id) {
                t.phase = Phase::Failed {
                    reason: "past its deadline".into(),
                };
            }
            self.end(&id, TaskStep::Failed, "past its deadline".into());
        }
    }

    /// The next deadline, for the shell's timer.
    pub fn next_deadline(&self) -> Option<Time> {
        self.tasks
            .values()
            .filter(|t| !t.phase.ended())
            .map(|t| Time::ZERO + ms(t.submitted_ms.saturating_add(t.spec.deadline_ms)))
            .min()
    }

    fn end(&mut self, id: &TaskId, step: TaskStep, detail: String) {
        self.record(id, step, detail);
        self.ended.push_back(id.clone());
        while self.ended.len() > self.limits.ended {
            if let Some(old) = self.ended.pop_front()
                && let Some(t) = self.tasks.remove(&old)
            {
                self.by_key.remove(&t.spec.idempotency_key);
                self.forgotten.push(old);
            }
        }
    }

    /// What this node reports of its load (`idle_workers`: claims waiting in the shell;
    /// `warm`: the models warm here), offering up to `offer` of its newest inbound tasks.
    pub fn load(
        &self,
        idle_workers: u32,
        offer: usize,
        warm: Vec<ServiceName>,
    ) -> qs_wire::task_bus::TaskLoad {
        let running = self
            .running
            .iter()
            .filter(|id| is_running(&self.tasks, id))
            .count();
        qs_wire::task_bus::TaskLoad {
            node: self.node.clone(),
            waiting: self.waiting() as u32,
            running: running as u32,
            idle_workers,
            concurrency: self.concurrency.limit(),
            offered: self.inbound.values().rev().take(offer).cloned().collect(),
            completions: self.completions,
            failures: self.failures,
            warm,
        }
    }

    /// Tasks a claim could take now (inbound and refinement).
    pub fn waiting(&self) -> usize {
        self.inbound.len() + self.refinement.len()
    }

    pub fn get(&self, id: &TaskId) -> Option<&Task> {
        self.tasks.get(id)
    }

    /// Every task remembered, by id.
    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values()
    }

    pub fn counts(&self) -> QueueCounts {
        let mut c = QueueCounts {
            concurrency: self.concurrency.limit() as usize,
            inbound: self.inbound.len(),
            refinement: self.refinement.len(),
            outbound: self.outbound.len(),
            ..QueueCounts::default()
        };
        for t in self.tasks.values() {
            match t.phase {
                Phase::Running { .. } => c.running += 1,
                Phase::Completed => c.completed += 1,
                Phase::Failed { .. } => c.failed += 1,
                Phase::Cancelled => c.cancelled += 1,
                _ => {}
            }
        }
        c
    }
}

#[cfg(test)]
mod tests;
