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

mod convergence;
mod judge;

use crate::time::{Time, ms};
use qs_wire::event::TaskStep;
use qs_wire::task::{TaskClass, TaskSpec, Validation};
use qs_wire::{Event, NodeId, ServiceName, TaskId};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub use convergence::{Convergence, Report, converged};
pub use judge::{Judging, ToValidate, Vote};

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

/// Where a task is in its life.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "phase")]
pub enum Phase {
    Inbound,
    /// A worker holds it for an iteration.
    Running {
        worker: String,
    },
    Refining,
    Outbound,
    Completed,
    Failed {
        reason: String,
    },
    Cancelled,
}

impl Phase {
    pub fn ended(&self) -> bool {
        matches!(
            self,
            Phase::Completed | Phase::Failed { .. } | Phase::Cancelled
        )
    }
}

/// One task and what became of it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub spec: TaskSpec,
    pub phase: Phase,
    /// Its fencing token: the attempt that holds it (or last held it).
    pub attempt: u64,
    /// Failed attempts so far.
    pub failures: u32,
    /// Iterations reported.
    pub iteration: u32,
    pub submitted_ms: u64,
    /// The last reports (at most [`convergence::HISTORY`]).
    pub history: VecDeque<Report>,
    pub result: Option<String>,
    /// What its worker last saved of its work, given to the next claim.
    pub checkpoint: Option<Checkpoint>,
    /// The side effects an attempt of it ran to the end, by the worker's key.
    #[serde(default)]
    pub effects: BTreeSet<String>,
    /// How judging and escalation left it (`judge.rs`).
    #[serde(default)]
    pub judging: judge::Judging,
}

/// A worker's saved state of a task at an iteration boundary.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub iteration: u32,
    pub state: String,
    pub attempt: u64,
}

/// Most side effects one task records.
pub const MAX_EFFECTS: usize = 256;
/// Longest key of a side effect.
pub const MAX_EFFECT_KEY_BYTES: usize = 128;

/// Largest checkpoint state a worker may save.
pub const MAX_CHECKPOINT_BYTES: usize = 256 * 1024;

/// Why a request about a task was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the {queue} queue is full ({limit} tasks)")]
    Full { queue: &'static str, limit: usize },
    #[error("no task {0}")]
    Unknown(TaskId),
    #[error("attempt {got} of task {task} was superseded by attempt {now}")]
    Superseded { task: TaskId, got: u64, now: u64 },
    #[error("task {task} is {phase}, not running")]
    NotRunning { task: TaskId, phase: String },
    #[error("task {0} has ended")]
    Ended(TaskId),
    #[error("a checkpoint of {got} bytes; at most {MAX_CHECKPOINT_BYTES}")]
    TooLarge { got: usize },
    #[error(
        "a side effect's key is 1..={MAX_EFFECT_KEY_BYTES} printable characters, and a task records at most {MAX_EFFECTS}"
    )]
    Effect,
}

/// A task accepted (or found again by its idempotency key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub id: TaskId,
    /// The key named a task already accepted.
    pub existing: bool,
}

/// What a worker gets when it claims: one iteration of a task.
#[derive(Clone, Debug, PartialEq)]
pub struct Claim {
    pub id: TaskId,
    pub attempt: u64,
    pub iteration: u32,
    pub payload: String,
    pub model: Option<ServiceName>,
    /// The last checkpoint's state, to resume from.
    pub state: Option<String>,
}

/// What a report of an iteration leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Another iteration: the task waits in the refinement queue.
    Continue,
    /// Refining is over (converged, or its last iteration): the worker completes it.
    Finish,
}

/// The counts `/queue_stats` shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueCounts {
    pub inbound: usize,
    pub running: usize,
    pub refinement: usize,
    pub outbound: usize,
    pub completed: usize,
    pub failed: usize,
    pub cancelled: usize,
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
        let name = judge::worker_name(worker);
        let tasks = &self.tasks;
        let allowed = |id: &TaskId| {
            tasks
                .get(id)
                .is_some_and(|t| !t.judging.avoid.contains(name))
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
        self.next_attempt += 1;
        let t = self.tasks.get_mut(&id)?;
        t.attempt = attempt;
        t.phase = Phase::Running {
            worker: worker.to_owned(),
        };
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
        t.history.push_back(report);
        while t.history.len() > convergence::HISTORY {
            t.history.pop_front();
        }
        let done = t.iteration >= t.spec.max_iterations || converged(&t.history).is_some();
        let why = converged(&t.history).map_or("", Convergence::name);
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
        t.checkpoint = Some(Checkpoint {
            iteration,
            state,
            attempt,
        });
        self.record(
            id,
            TaskStep::Checkpointed,
            format!("iteration {iteration}, attempt {attempt}"),
        );
        Ok(())
    }

    /// Whether an attempt of `id` (held now by `attempt`) already ran its side effect `key`.
    pub fn effect_done(&mut self, id: &TaskId, attempt: u64, key: &str) -> Result<bool, Refusal> {
        Ok(self.running(id, attempt)?.effects.contains(key))
    }

    /// The attempt holding `id` ran its side effect `key` to the end.
    pub fn record_effect(&mut self, id: &TaskId, attempt: u64, key: &str) -> Result<(), Refusal> {
        let ok = (1..=MAX_EFFECT_KEY_BYTES).contains(&key.len())
            && key.bytes().all(|b| b.is_ascii_graphic());
        let t = self.running(id, attempt)?;
        if !ok || (t.effects.len() >= MAX_EFFECTS && !t.effects.contains(key)) {
            return Err(Refusal::Effect);
        }
        if t.effects.insert(key.to_owned()) {
            self.record(id, TaskStep::Effect, format!("{key}, attempt {attempt}"));
        }
        Ok(())
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
        let outbound_full = self.outbound.len() >= self.limits.outbound;
        let t = self.running(id, attempt)?;
        let worker = match &t.phase {
            Phase::Running { worker } => judge::worker_name(worker).to_owned(),
            _ => String::new(),
        };
        if let Some(vote) = t.judging.voting(&t.spec) {
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
        if t.failures >= limit {
            t.phase = Phase::Failed {
                reason: reason.to_owned(),
            };
            let detail = format!("{} attempts failed, the last: {reason}", t.failures);
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
