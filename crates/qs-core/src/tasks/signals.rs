//! Which steps of a task are news for the fleet (seed 002 §5): a completion for the results
//! channel, and the major events for the event bus, its alerts and supervision channels.
//!
//! - model divergence: a vote ended without `k` agreeing results;
//! - novel finding: an iteration (the third or later) whose result is unlike every one kept
//!   before and whose score is the task's best;
//! - consistency anomaly: a validator refused a result;
//! - performance spike: a task took more than [`SPIKE_FACTOR`] times the node's recent
//!   average from submission to completion (and over [`SPIKE_FLOOR_MS`]), an alert;
//! - supervision: an escalation, an adoption, a hand-over.
//!
//! Security flags (a worker that spoke the protocol wrongly) come from the shell, which sees
//! the misuse.

use super::Task;
use qs_wire::event::TaskStep;
use qs_wire::task_bus::FleetEventKind;
use qs_wire::{Event, TaskId};

/// A completion this much slower than the recent average is a spike.
pub const SPIKE_FACTOR: f64 = 10.0;
/// Nor is one faster than this.
pub const SPIKE_FLOOR_MS: f64 = 1_000.0;
/// Weight of the newest completion in the average.
const EWMA_WEIGHT: f64 = 0.05;

/// One piece of news.
#[derive(Clone, Debug, PartialEq)]
pub enum Signal {
    /// For `tasks.results.<node>`.
    Result { task: TaskId, result_bytes: u64 },
    /// For the event bus, and `alerts` or `supervision` as it says.
    Event {
        kind: FleetEventKind,
        task: TaskId,
        detail: String,
        alert: bool,
        supervision: bool,
    },
}

/// What it remembers between steps: the recent average time to complete.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Signals {
    average_ms: Option<f64>,
}

impl Signals {
    /// The news in `event`, given the task as it is after it (`None`: forgotten or handed
    /// over) and the time now.
    pub fn classify(&mut self, event: &Event, task: Option<&Task>, now_ms: u64) -> Vec<Signal> {
        let Event::Task {
            task: id,
            step,
            detail,
        } = event
        else {
            return Vec::new();
        };
        let news = |kind, alert, supervision| Signal::Event {
            kind,
            task: id.clone(),
            detail: detail.clone(),
            alert,
            supervision,
        };
        let mut out = Vec::new();
        match step {
            TaskStep::Completed => {
                let Some(t) = task else { return out };
                out.push(Signal::Result {
                    task: id.clone(),
                    result_bytes: t.result.as_ref().map_or(0, |r| r.len() as u64),
                });
                let took_ms = now_ms.saturating_sub(t.submitted_ms) as f64;
                if let Some(avg) = self.average_ms
                    && took_ms > SPIKE_FLOOR_MS
                    && took_ms > SPIKE_FACTOR * avg
                {
                    out.push(Signal::Event {
                        kind: FleetEventKind::PerformanceSpike,
                        task: id.clone(),
                        detail: format!("{took_ms:.0} ms to complete; recently {avg:.0} ms"),
                        alert: true,
                        supervision: false,
                    });
                }
                let avg = self.average_ms.unwrap_or(took_ms);
                self.average_ms = Some(avg + EWMA_WEIGHT * (took_ms - avg));
            }
            TaskStep::Failed if task.is_some_and(|t| !t.judging.ballots.is_empty()) => {
                out.push(news(FleetEventKind::ModelDivergence, false, true));
            }
            TaskStep::Rejected => out.push(news(FleetEventKind::ConsistencyAnomaly, false, true)),
            TaskStep::Escalated | TaskStep::Adopted | TaskStep::Moved => {
                out.push(news(FleetEventKind::Supervision, false, true));
            }
            TaskStep::Iterated => {
                if let Some(t) = task
                    && novel(t)
                {
                    out.push(news(FleetEventKind::NovelFinding, false, false));
                }
            }
            _ => {}
        }
        out
    }
}

/// The last report of `t` is new among those kept, its score the best, from the third on.
fn novel(t: &Task) -> bool {
    let Some(last) = t.history.back() else {
        return false;
    };
    t.iteration >= 3
        && t.history.len() >= 2
        && t.history
            .iter()
            .rev()
            .skip(1)
            .all(|r| r.result_hash != last.result_hash && r.score < last.score)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::{Report, TaskLimits, TaskQueues};
    use crate::time::Time;
    use qs_wire::NodeId;
    use std::collections::BTreeSet;

    fn spec(key: &str, extra: &str) -> qs_wire::TaskSpec {
        let text = format!(
            "[task]\nclass = \"batch\"\nidempotency_key = \"{key}\"\nmax_iterations = 9\ndeadline_ms = 600000\n{extra}\n"
        );
        qs_wire::parse_task("t.toml", &text).unwrap()
    }

    /// Every signal of what `q` recorded since the last call.
    fn drain(q: &mut TaskQueues, s: &mut Signals, now_ms: u64) -> Vec<String> {
        let events: Vec<Event> = std::iter::from_fn(|| q.poll()).collect();
        events
            .iter()
            .flat_map(|e| {
                let Event::Task { task, .. } = e else {
                    unreachable!()
                };
                s.classify(e, q.get(task), now_ms)
            })
            .map(|sig| match sig {
                Signal::Result { .. } => "result".to_owned(),
                Signal::Event { kind, alert, .. } => {
                    format!("{kind:?}{}", if alert { "!" } else { "" })
                }
            })
            .collect()
    }

    #[test]
    fn completions_divergence_novelty_and_spikes_are_news() {
        let mut q = TaskQueues::new(NodeId::new("n").unwrap(), TaskLimits::default(), 1);
        let none = BTreeSet::new();
        let mut s = Signals::default();
        // Quick completions set the average (submitted at 0 ms).
        for i in 0..3 {
            let id = q.submit(spec(&format!("k{i}"), ""), Time::ZERO).unwrap().id;
            let c = q.claim("w#1", &none).unwrap();
            q.complete(&id, c.attempt, "r".into()).unwrap();
        }
        assert_eq!(drain(&mut q, &mut s, 100), ["result"; 3]);
        // One that takes 5 s is a spike.
        let slow = q.submit(spec("slow", ""), Time::ZERO).unwrap().id;
        let c = q.claim("w#1", &none).unwrap();
        q.complete(&slow, c.attempt, "r".into()).unwrap();
        assert_eq!(
            drain(&mut q, &mut s, 5_000),
            ["result", "PerformanceSpike!"]
        );
        // Rising scores with new results: a finding from the third iteration on.
        let found = q.submit(spec("found", ""), Time::ZERO).unwrap().id;
        for i in 0..3u64 {
            let c = q.claim("w#1", &none).unwrap();
            let r = Report {
                score: i as f64,
                result_hash: 100 + i,
            };
            q.report(&found, c.attempt, r).unwrap();
        }
        assert!(drain(&mut q, &mut s, 5_000).contains(&"NovelFinding".to_owned()));
        q.cancel(&found).unwrap();
        // A vote without agreement: divergence.
        let vote = "validation = { kind = \"vote\", k = 2, n = 2 }";
        let split = q.submit(spec("split", vote), Time::ZERO).unwrap().id;
        for (w, r) in [("a#1", "x"), ("b#2", "y")] {
            let c = q.claim(w, &none).unwrap();
            assert_eq!(c.id, split);
            q.complete(&split, c.attempt, r.into()).unwrap();
        }
        assert!(drain(&mut q, &mut s, 5_000).contains(&"ModelDivergence".to_owned()));
    }
}
