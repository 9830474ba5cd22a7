//! What nodes say to each other about durable tasks on the fabric's task channels and the
//! fleet event bus (JSON, like the KV records, for operators who subscribe). None of it is
//! authoritative: the fleet's `tasks` bucket is. A load report or a nudge only leads a node to
//! read that bucket, so a forged one costs a read, never a task. Every type has one check,
//! [`decode_bus`], whatever topic it came on.

use crate::ids::{NodeId, TaskId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Most task ids in one message.
pub const MAX_BUS_TASKS: usize = 256;
/// Longest detail of an event.
pub const MAX_DETAIL_BYTES: usize = 512;
/// Largest message on a task channel or the event bus.
pub const MAX_BUS_BYTES: usize = 64 * 1024;

/// A node's load, every second on `tasks.metrics.<node>`: what thieves and pushers read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskLoad {
    pub node: NodeId,
    /// Tasks a claim could take now (inbound and refinement).
    pub waiting: u32,
    pub running: u32,
    /// Workers waiting in a claim: idle hands.
    pub idle_workers: u32,
    /// What the node's adaptive controller lets run at once.
    pub concurrency: u32,
    /// Inbound tasks it would give away (the newest), for a thief to take.
    pub offered: Vec<TaskId>,
    /// Completions and failed attempts since it started: its reliability.
    #[serde(default)]
    pub completions: u64,
    #[serde(default)]
    pub failures: u64,
    /// The models warm on it (at most [`MAX_BUS_MODELS`]).
    #[serde(default)]
    pub warm: Vec<crate::ids::ServiceName>,
}

/// Most models a load report names.
pub const MAX_BUS_MODELS: usize = 64;

/// "Look at these tasks in the fleet's bucket" on `tasks.inbound.<node>`: a loaded node
/// offering them (push), or a thief saying it took them (they are the receiver's to hand
/// over).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskNudge {
    pub from: NodeId,
    pub tasks: Vec<TaskId>,
}

/// A completion, on `tasks.results.<node>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskResult {
    pub node: NodeId,
    pub task: TaskId,
    pub result_bytes: u64,
    pub at_ms: u64,
}

/// What a fleet event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FleetEventKind {
    /// Independent results disagreed (a vote without agreement).
    ModelDivergence,
    /// A report's result unlike any before in its task, and its best score.
    NovelFinding,
    /// A validator refused a result.
    ConsistencyAnomaly,
    /// A task took far longer than the node's recent ones.
    PerformanceSpike,
    /// A worker spoke the protocol wrongly, or a fleet record did not check.
    SecurityFlag,
    /// Supervision acted: an escalation, an adoption, a hand-over, a reroute.
    Supervision,
}

/// One event, on `events.bus` (every kind), `events.alerts` (security flags and performance
/// spikes) or `events.supervision` (supervision's acts and judgements).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetEvent {
    pub kind: FleetEventKind,
    pub node: NodeId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskId>,
    pub detail: String,
    pub at_ms: u64,
}

/// Why a message of the task channels was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a message on {topic}: {why}")]
pub struct BadBusMessage {
    pub topic: String,
    pub why: String,
}

/// The rules of each type, beyond its shape.
pub trait BusMessage: DeserializeOwned {
    fn check(&self) -> Result<(), String>;
}

fn at_most<T>(what: &str, v: &[T], max: usize) -> Result<(), String> {
    match v.len() > max {
        true => Err(format!("{} {what}; at most {max}", v.len())),
        false => Ok(()),
    }
}

impl BusMessage for TaskLoad {
    fn check(&self) -> Result<(), String> {
        at_most("offered tasks", &self.offered, MAX_BUS_TASKS)?;
        at_most("warm models", &self.warm, MAX_BUS_MODELS)
    }
}

impl BusMessage for TaskNudge {
    fn check(&self) -> Result<(), String> {
        at_most("tasks", &self.tasks, MAX_BUS_TASKS)
    }
}

impl BusMessage for TaskResult {
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

impl BusMessage for FleetEvent {
    fn check(&self) -> Result<(), String> {
        match self.detail.len() > MAX_DETAIL_BYTES {
            true => Err(format!(
                "a detail of {} bytes; at most {MAX_DETAIL_BYTES}",
                self.detail.len()
            )),
            false => Ok(()),
        }
    }
}

/// Decodes and checks a message that came on `topic`.
pub fn decode_bus<T: BusMessage>(topic: &str, bytes: &[u8]) -> Result<T, BadBusMessage> {
    let bad = |why: String| BadBusMessage {
        topic: topic.to_owned(),
        why,
    };
    if bytes.len() > MAX_BUS_BYTES {
        return Err(bad(format!(
            "{} bytes; at most {MAX_BUS_BYTES}",
            bytes.len()
        )));
    }
    let m: T = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    m.check().map_err(bad)?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bus_message_is_checked_whatever_it_claims() {
        let load = r#"{"node":"n1","waiting":3,"running":1,"idle_workers":0,"concurrency":4,"offered":["n1-t1"]}"#;
        assert!(decode_bus::<TaskLoad>("t", load.as_bytes()).is_ok());
        let too_many = format!(
            r#"{{"from":"n1","tasks":[{}]}}"#,
            vec!["\"n1-t1\""; MAX_BUS_TASKS + 1].join(",")
        );
        let e = decode_bus::<TaskNudge>("tasks.inbound.n2", too_many.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("257 tasks"), "{e}");
        let long = format!(
            r#"{{"kind":"security-flag","node":"n1","detail":"{}","at_ms":1}}"#,
            "x".repeat(MAX_DETAIL_BYTES + 1)
        );
        assert!(decode_bus::<FleetEvent>("events.bus", long.as_bytes()).is_err());
        let unknown = r#"{"from":"n1","tasks":[],"steal":"all"}"#;
        assert!(decode_bus::<TaskNudge>("t", unknown.as_bytes()).is_err());
        let bad_id = r#"{"from":"n1","tasks":["../etc"]}"#;
        assert!(decode_bus::<TaskNudge>("t", bad_id.as_bytes()).is_err());
    }
}
