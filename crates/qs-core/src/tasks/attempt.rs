//! What the holder of an attempt says besides its reports and its end (how far it is, the
//! side effects it ran), an operator taking an attempt from its worker, and the records the
//! shell seals in the fleet before a claim or an end is heard of (`fleet.rs`).

use super::{
    MAX_EFFECT_KEY_BYTES, MAX_EFFECTS, MAX_PROGRESS_NOTE_BYTES, MAX_RESULT_BYTES, Phase, Progress,
    Refusal, Task, TaskQueues,
};
use qs_wire::TaskId;
use qs_wire::event::TaskStep;
use qs_wire::task::Validation;

impl TaskQueues {
    /// The worker holding `id` says how far its iteration is (shown, not kept).
    pub fn progress(
        &mut self,
        id: &TaskId,
        attempt: u64,
        fraction: f64,
        note: String,
    ) -> Result<(), Refusal> {
        let ok = fraction.is_finite()
            && (0.0..=1.0).contains(&fraction)
            && note.len() <= MAX_PROGRESS_NOTE_BYTES;
        if !ok {
            return Err(Refusal::Progress);
        }
        self.running(id, attempt)?.progress = Some(Progress { fraction, note });
        Ok(())
    }

    /// An operator takes task `id` from `worker`, if it holds it now (seed §7.2's "reassign
    /// the task"): it goes back to the inbound queue, for another connection than this one
    /// (a worker of the same name, or this one connected again, may take it), with no
    /// failure counted; what the worker says of that attempt after is refused (it no longer
    /// runs). Whether it was taken.
    pub fn reassign(&mut self, worker: &str, id: &TaskId) -> bool {
        let held = |t: &&mut Task| matches!(&t.phase, Phase::Running { worker: w } if w == worker);
        let Some(t) = self.tasks.get_mut(id).filter(held) else {
            return false;
        };
        let attempt = t.attempt;
        t.reroute(worker);
        t.progress = None;
        self.running.remove(id);
        self.requeue(id);
        let detail = format!("attempt {attempt} taken from {worker} by an operator: reassigned");
        self.record(id, TaskStep::Retried, detail);
        true
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

    /// When the completion of `id` by `attempt` with `result` would end it (no validation,
    /// or the vote it completes), the record it would end with, for the shell to seal in the
    /// fleet first (`fleet.rs`); `None` when it would not end it.
    pub fn sealing(
        &mut self,
        id: &TaskId,
        attempt: u64,
        result: &str,
    ) -> Result<Option<Task>, Refusal> {
        if result.len() > MAX_RESULT_BYTES {
            return Err(Refusal::ResultTooLarge { got: result.len() });
        }
        let t = self.running(id, attempt)?;
        let ends = match t.judging.voting(&t.spec) {
            Some(vote) => t.judging.agreeing(crate::hash::of_str(result)) + 1 >= vote.k,
            None => t.spec.validation == Validation::None,
        };
        Ok(ends.then(|| Task {
            phase: Phase::Completed,
            result: Some(result.to_owned()),
            ..t.clone()
        }))
    }

    /// The record `id` ends with if its validator accepted its result (`None`: not waiting
    /// for one), to seal before [`TaskQueues::validated`].
    pub fn sealing_validated(&self, id: &TaskId) -> Option<Task> {
        if !self.outbound.contains(id) {
            return None;
        }
        let t = self.tasks.get(id)?;
        Some(Task {
            phase: Phase::Completed,
            ..t.clone()
        })
    }
}
