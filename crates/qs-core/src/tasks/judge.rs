//! Judging results and escalating stalled work (seed 002 §1, §4, §8): supervision decides
//! here, the shell acts.
//!
//! - **Validation by command**: a finished result waits in the outbound queue; the shell runs
//!   the task's validator ([`TaskQueues::to_validate`]) and says how it judged
//!   ([`TaskQueues::validated`]). A refused result leads, by the task's `on_failure`, to a new
//!   pass (`retry`), a new pass by another worker (`reroute`), a new pass on the next model of
//!   its `escalate` list (`diversify`), or a vote of 2 of 3 by distinct workers (`vote`).
//!   After [`TaskLimits::attempts`] refusals the task fails.
//! - **Votes**: under `validation = { kind = "vote", k, n }` every finished result is a vote;
//!   the task completes with the first result `k` votes agree on, each vote from a worker
//!   that has not voted on it before; after `n` votes without agreement it fails.
//! - **Escalation**: a task whose best score has not improved over `stall_iterations`
//!   iterations moves to the next model of its `escalate` list (a larger tier, another
//!   family); past the list, its next pass goes to another worker (another routing).

use super::{Phase, Task, TaskLimits, TaskQueues};
use qs_wire::event::TaskStep;
use qs_wire::task::{OnInvalid, TaskSpec, Validation};
use qs_wire::{ServiceName, TaskId};
use std::collections::BTreeSet;

/// The vote `on_failure = "vote"` switches to.
const FALLBACK_VOTE: Vote = Vote { k: 2, n: 3 };

/// `k` of `n` results must agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Vote {
    pub k: u32,
    pub n: u32,
}

/// One result counted in a vote.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ballot {
    pub worker: String,
    pub result_hash: u64,
    pub result: String,
}

/// What judging and escalation have made of a task so far.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Judging {
    /// Workers (by registered name) its next pass must not go to.
    #[serde(default)]
    pub avoid: BTreeSet<String>,
    /// The worker whose result waits for validation.
    #[serde(default)]
    pub last_worker: Option<String>,
    /// Results its validator refused.
    #[serde(default)]
    pub rejections: u32,
    /// A vote it switched to after a refusal (`on_failure = "vote"`).
    #[serde(default)]
    pub vote: Option<Vote>,
    #[serde(default)]
    pub ballots: Vec<Ballot>,
    /// How many models of its `escalate` list it has moved through.
    #[serde(default)]
    pub escalated: u32,
    /// The best score reported, and the iteration that reported it.
    #[serde(default)]
    pub best: Option<(f64, u32)>,
}

/// Where a stalled task goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Escalation {
    pub why: String,
    /// Its model list is spent: its next pass goes to another worker.
    pub reroute: bool,
}

/// A result waiting for its validator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToValidate {
    pub id: TaskId,
    pub command: String,
    pub result: String,
    pub payload: String,
}

/// A worker's registered name: its connection's name less the `#N` the shell adds.
pub fn worker_name(worker: &str) -> &str {
    worker.rsplit_once('#').map_or(worker, |(name, _)| name)
}

impl Judging {
    /// The ballots cast for the result whose hash is `result_hash`.
    pub fn agreeing(&self, result_hash: u64) -> u32 {
        let same = self.ballots.iter().filter(|b| b.result_hash == result_hash);
        same.count() as u32
    }

    /// The vote the task's results go through, if any.
    pub fn voting(&self, spec: &TaskSpec) -> Option<Vote> {
        match spec.validation {
            Validation::Vote { k, n } => Some(Vote { k, n }),
            _ => self.vote,
        }
    }

    /// A score at `iteration`: how it escalates, when it made no progress for
    /// `stall_iterations`.
    pub fn progress(&mut self, spec: &TaskSpec, iteration: u32, score: f64) -> Option<Escalation> {
        match self.best {
            Some((best, _)) if score <= best => {}
            _ => self.best = Some((score, iteration)),
        }
        let (_, at) = self.best?;
        let stall = spec.stall_iterations;
        if stall == 0 || iteration.saturating_sub(at) < stall {
            return None;
        }
        // Counted again from here, whatever comes next.
        self.best = None;
        let why = format!("no better score over {stall} iterations");
        Some(match self.escalate(spec) {
            Some(model) => Escalation {
                why: format!("{why}: escalated to {model}"),
                reroute: false,
            },
            None => Escalation {
                why: format!("{why}: escalations spent, its next pass goes to another worker"),
                reroute: true,
            },
        })
    }

    /// Moves to the next model of the `escalate` list; `None` when it is spent.
    fn escalate(&mut self, spec: &TaskSpec) -> Option<ServiceName> {
        let next = spec.escalate.get(self.escalated as usize)?.clone();
        self.escalated += 1;
        Some(next)
    }
}

impl Task {
    /// The model its next pass needs: its spec's, or the last it escalated to.
    pub fn model(&self) -> Option<&ServiceName> {
        match self.judging.escalated {
            0 => self.spec.model.as_ref(),
            n => self.spec.escalate.get(n as usize - 1),
        }
    }

    /// Its next pass starts over: an independent result, not the refused one resumed.
    fn fresh_pass(&mut self) {
        self.iteration = 0;
        self.checkpoint = None;
        self.history.clear();
        self.judging.best = None;
    }

    /// Its next pass must go to another worker than the one that last ran it.
    pub(super) fn reroute(&mut self, worker: &str) {
        if self.judging.avoid.len() < 2 * qs_wire::task::MAX_VOTERS as usize {
            self.judging.avoid.insert(worker.to_owned());
        }
    }
}

impl TaskQueues {
    /// The first `max` results in the outbound queue that wait for a command, but those in
    /// `judging`.
    pub fn to_validate(&self, judging: &BTreeSet<TaskId>, max: usize) -> Vec<ToValidate> {
        self.outbound
            .iter()
            .filter(|id| !judging.contains(*id))
            .filter_map(|id| {
                let t = self.tasks.get(id)?;
                let Validation::Command { command, .. } = &t.spec.validation else {
                    return None;
                };
                Some(ToValidate {
                    id: id.clone(),
                    command: command.clone(),
                    result: t.result.clone().unwrap_or_default(),
                    payload: t.spec.payload.clone(),
                })
            })
            .take(max)
            .collect()
    }

    /// The validator judged `id`'s result: accepted, it completes; refused, its `on_failure`
    /// says what comes next.
    pub fn validated(&mut self, id: &TaskId, accepted: bool) -> Result<(), super::Refusal> {
        if !self.outbound.remove(id) {
            return Err(super::Refusal::Unknown(id.clone()));
        }
        let TaskLimits { attempts, .. } = self.limits;
        let Some(t) = self.tasks.get_mut(id) else {
            return Err(super::Refusal::Unknown(id.clone()));
        };
        if accepted {
            t.phase = Phase::Completed;
            self.end(id, TaskStep::Completed, "validated".into());
            return Ok(());
        }
        t.judging.rejections += 1;
        t.result = None;
        t.fresh_pass();
        if t.judging.rejections >= attempts {
            let why = format!("its validator refused {} results", t.judging.rejections);
            t.phase = Phase::Failed {
                reason: why.clone(),
            };
            self.end(id, TaskStep::Failed, why);
            return Ok(());
        }
        let on_failure = match &t.spec.validation {
            Validation::Command { on_failure, .. } => *on_failure,
            _ => OnInvalid::Retry,
        };
        let last = t.judging.last_worker.clone().unwrap_or_default();
        let detail = match on_failure {
            OnInvalid::Retry => "validation failed: a new pass".to_owned(),
            OnInvalid::Reroute => {
                t.reroute(&last);
                format!("validation failed: a new pass by another worker than {last}")
            }
            OnInvalid::Diversify => match t.judging.escalate(&t.spec) {
                Some(model) => format!("validation failed: a new pass on {model}"),
                None => {
                    t.reroute(&last);
                    format!("validation failed, no model left: another worker than {last}")
                }
            },
            OnInvalid::Vote => {
                t.judging.vote = Some(FALLBACK_VOTE);
                t.reroute(&last);
                let Vote { k, n } = FALLBACK_VOTE;
                format!("validation failed: a vote of {k} of {n} by distinct workers")
            }
        };
        self.requeue(id);
        self.record(id, TaskStep::Rejected, detail);
        Ok(())
    }

    /// `worker`'s finished `result` of `id` counts in its vote.
    pub(super) fn vote(&mut self, id: &TaskId, vote: Vote, worker: String, result: String) {
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        let result_hash = crate::hash::of_str(&result);
        t.reroute(&worker);
        t.judging.ballots.push(Ballot {
            worker: worker.clone(),
            result_hash,
            result,
        });
        let agreeing = t.judging.agreeing(result_hash);
        let cast = t.judging.ballots.len() as u32;
        if agreeing >= vote.k {
            t.result = t.judging.ballots.last().map(|b| b.result.clone());
            t.phase = Phase::Completed;
            let detail = format!("{agreeing} of {cast} results agreed ({} needed)", vote.k);
            self.end(id, TaskStep::Completed, detail);
        } else if cast >= vote.n {
            let why = format!("no {} of {} results agreed", vote.k, vote.n);
            t.phase = Phase::Failed {
                reason: why.clone(),
            };
            self.end(id, TaskStep::Failed, why);
        } else {
            t.fresh_pass();
            self.requeue(id);
            let detail = format!("vote {cast} of at most {} by {worker}", vote.n);
            self.record(id, TaskStep::Voted, detail);
        }
    }
}
