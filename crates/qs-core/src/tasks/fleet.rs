//! The fleet's copy of each task (seed 002 §3, §4): what a node writes of its tasks to the
//! fleet's KV, who owns each, and the decisions that keep one completion per task when nodes
//! die, come back, or were only paused.
//!
//! - Each task's record in the fleet names its **owner**, the one node that may run it. A node
//!   writes its tasks' records by compare-and-set on the revision it last wrote, so a record
//!   another node took over is never overwritten.
//! - A completion directly from a worker is **sealed** first: the completed record written by
//!   compare-and-set before the node commits it, so a node whose task was adopted while it
//!   was paused or cut off learns so and hands the task over instead of completing it twice.
//! - When a node is dead, each of its unended tasks is **adopted** by one live node, the
//!   rendezvous of the task and the live nodes, by compare-and-set, and resumes there from its
//!   last checkpoint.
//! - A node that comes back **reconciles** each unended local task with the fleet's record:
//!   kept, handed over (another node owns it now), or completed as the fleet recorded.

use super::{Phase, Task};
use crate::hash::{of_str, rendezvous};
use qs_wire::{NodeId, TaskId};

/// Longest name of a checkpoint's object.
pub const MAX_ARTIFACT_NAME: usize = 256;

/// A task as the fleet keeps it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetTask {
    pub owner: NodeId,
    pub task: Task,
}

/// Why a fleet record was not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadRecord {
    #[error("the fleet's record of {key}: {why}")]
    Invalid { key: String, why: String },
}

impl FleetTask {
    /// Decodes and checks the record under `key`: untrusted input, like every KV value.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<FleetTask, BadRecord> {
        let bad = |why: String| BadRecord::Invalid {
            key: key.to_owned(),
            why,
        };
        let r: FleetTask = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if r.task.id.as_str() != key {
            return Err(bad(format!("it names task {}", r.task.id)));
        }
        let t = &r.task;
        t.spec
            .validate()
            .map_err(|e| bad(format!("{}: {}", e.field, e.reason)))?;
        let j = &t.judging;
        let checks = [
            (t.attempt <= qs_wire::bounds::MAX_FENCING, "attempt"),
            (t.history.len() <= super::convergence::HISTORY, "history"),
            (t.effects.len() <= super::MAX_EFFECTS, "effects"),
            (
                t.result
                    .as_ref()
                    .is_none_or(|r| r.len() <= super::MAX_RESULT_BYTES),
                "result",
            ),
            (
                t.checkpoint
                    .as_ref()
                    .is_none_or(|c| c.state.len() <= super::MAX_CHECKPOINT_BYTES),
                "checkpoint",
            ),
            (
                t.checkpoint.as_ref().is_none_or(|c| {
                    c.artifact
                        .as_ref()
                        .is_none_or(|a| c.state.is_empty() && a.len() <= MAX_ARTIFACT_NAME)
                }),
                "checkpoint.artifact",
            ),
            (
                j.ballots.len() <= qs_wire::task::MAX_VOTERS as usize,
                "ballots",
            ),
            (
                j.avoid.len() <= 2 * qs_wire::task::MAX_VOTERS as usize,
                "avoid",
            ),
            (j.escalated as usize <= t.spec.escalate.len(), "escalated"),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, field)) => Err(bad(format!("{field} is out of bounds"))),
            None => Ok(r),
        }
    }
}

/// The live node that adopts `task` when its owner is dead: the highest rendezvous score.
pub fn adopter<'a>(task: &TaskId, live: impl IntoIterator<Item = &'a NodeId>) -> Option<NodeId> {
    let key = of_str(task.as_str());
    live.into_iter()
        .max_by_key(|n| (rendezvous(key, of_str(n.as_str())), (*n).clone()))
        .cloned()
}

/// Whether `me` adopts the fleet's record `r`: its owner is dead (not `live`), the task has
/// not ended, and the rendezvous picks `me` among the live nodes.
pub fn adopts(r: &FleetTask, me: &NodeId, live: &std::collections::BTreeSet<NodeId>) -> bool {
    !live.contains(&r.owner)
        && !r.task.phase.ended()
        && adopter(&r.task.id, live.iter()).as_ref() == Some(me)
}

/// What a node that comes back does with one of its unended tasks.
#[derive(Clone, Debug, PartialEq)]
pub enum Reconcile {
    /// The fleet agrees it is this node's (or never heard of it): keep it and write it.
    Keep,
    /// Another node owns it now.
    HandOver(NodeId),
    /// The fleet recorded its completion (sealed before the node died): complete it so.
    Complete(String),
}

/// The decision for `local`, a task of `me` that has not ended, against the fleet's record.
pub fn reconcile(me: &NodeId, fleet: Option<&FleetTask>) -> Reconcile {
    match fleet {
        None => Reconcile::Keep,
        Some(r) if &r.owner != me => Reconcile::HandOver(r.owner.clone()),
        Some(r) if r.task.phase == Phase::Completed => {
            Reconcile::Complete(r.task.result.clone().unwrap_or_default())
        }
        Some(_) => Reconcile::Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::{TaskLimits, TaskQueues};
    use crate::time::Time;
    use std::collections::BTreeSet;

    fn record() -> FleetTask {
        let mut q = TaskQueues::new(NodeId::new("a").unwrap(), TaskLimits::default(), 1);
        let spec = qs_wire::parse_task(
            "t.toml",
            "[task]\nclass = \"batch\"\nidempotency_key = \"k\"\nmax_iterations = 3\ndeadline_ms = 1000\n",
        )
        .unwrap();
        let id = q.submit(spec, Time::ZERO).unwrap().id;
        FleetTask {
            owner: NodeId::new("a").unwrap(),
            task: q.get(&id).unwrap().clone(),
        }
    }

    #[test]
    fn a_fleet_record_is_checked_like_any_input() {
        let r = record();
        let key = r.task.id.to_string();
        let ok = serde_json::to_vec(&r).unwrap();
        assert_eq!(FleetTask::decode(&key, &ok).unwrap(), r);
        let e = FleetTask::decode("other", &ok).unwrap_err().to_string();
        assert!(e.contains("it names task"), "{e}");
        let mut huge = r.clone();
        huge.task.attempt = u64::MAX;
        let e = FleetTask::decode(&key, &serde_json::to_vec(&huge).unwrap()).unwrap_err();
        assert!(e.to_string().contains("attempt is out of bounds"), "{e}");
        let mut escalated = r.clone();
        escalated.task.judging.escalated = 3;
        assert!(FleetTask::decode(&key, &serde_json::to_vec(&escalated).unwrap()).is_err());
        assert!(FleetTask::decode(&key, b"{\"owner\":\"a\"}").is_err());
    }

    #[test]
    fn one_live_node_adopts_each_dead_nodes_task_and_a_returning_node_defers_to_the_fleet() {
        let r = record();
        let live: BTreeSet<NodeId> = ["b", "c"].iter().map(|n| NodeId::new(n).unwrap()).collect();
        let adopters: Vec<&NodeId> = live.iter().filter(|n| adopts(&r, n, &live)).collect();
        assert_eq!(adopters.len(), 1, "exactly one adopter");
        let with_owner: BTreeSet<NodeId> = live.iter().cloned().chain([r.owner.clone()]).collect();
        assert!(
            live.iter().all(|n| !adopts(&r, n, &with_owner)),
            "its owner lives"
        );
        let a = NodeId::new("a").unwrap();
        assert_eq!(reconcile(&a, Some(&r)), Reconcile::Keep);
        assert_eq!(reconcile(&a, None), Reconcile::Keep);
        let mut moved = r.clone();
        moved.owner = NodeId::new("b").unwrap();
        assert_eq!(
            reconcile(&a, Some(&moved)),
            Reconcile::HandOver(moved.owner.clone())
        );
        let mut done = r.clone();
        done.task.phase = Phase::Completed;
        done.task.result = Some("x".into());
        assert_eq!(reconcile(&a, Some(&done)), Reconcile::Complete("x".into()));
    }
}
