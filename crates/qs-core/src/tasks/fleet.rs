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
        r.task
            .spec
            .validate()
            .map_err(|e| bad(format!("{}: {}", e.field, e.reason)))?;
        if let Some(c) = &r.task.checkpoint
            && c.state.len() > super::MAX_CHECKPOINT_BYTES
        {
            return Err(bad(format!("a checkpoint of {} bytes", c.state.len())));
        }
        Ok(r)
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
