//! The vocabulary of a node's tasks: a task and its phase, its checkpoint, what a claim
//! gives, what a report leads to, why a request is refused, and the queues' counts.

use super::convergence::Report;
use super::judge;
use qs_wire::task::TaskSpec;
use qs_wire::{ServiceName, TaskId};
use std::collections::{BTreeSet, VecDeque};

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
    /// The last reports (at most [`super::convergence::HISTORY`]).
    pub history: VecDeque<Report>,
    pub result: Option<String>,
    /// What its worker last saved of its work, given to the next claim.
    pub checkpoint: Option<Checkpoint>,
    /// The side effects an attempt of it ran to the end, by the worker's key.
    #[serde(default)]
    pub effects: BTreeSet<String>,
    /// What its worker last said of the iteration under way (not kept across restarts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// How judging and escalation left it (`judge.rs`).
    #[serde(default)]
    pub judging: judge::Judging,
}

/// How far an iteration is, as its worker says.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    /// 0 to 1.
    pub fraction: f64,
    pub note: String,
}

/// Longest note of a progress report.
pub const MAX_PROGRESS_NOTE_BYTES: usize = 256;

/// A worker's saved state of a task at an iteration boundary.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub iteration: u32,
    /// What the worker saved (its intermediate artifacts), given to the next claim.
    pub state: String,
    pub attempt: u64,
    /// The model it ran on when saved (the spec's, or the one it escalated to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ServiceName>,
    /// A stable hash of `state`, to tell a checkpoint from another without its bytes.
    #[serde(default)]
    pub hash: u64,
    /// In the fleet's copy only: the object holding a large `state` (then left empty here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
}

/// Most side effects one task records.
pub const MAX_EFFECTS: usize = 256;
/// Longest key of a side effect.
pub const MAX_EFFECT_KEY_BYTES: usize = 128;

/// Largest result a worker may give.
pub const MAX_RESULT_BYTES: usize = 256 * 1024;

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
    #[error("a result of {got} bytes; at most {MAX_RESULT_BYTES}")]
    ResultTooLarge { got: usize },
    #[error(
        "progress is a fraction in 0..=1 with a note of at most {MAX_PROGRESS_NOTE_BYTES} bytes"
    )]
    Progress,
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
    /// Tasks it runs at once at most, as its adaptive controller sets it.
    #[serde(default)]
    pub concurrency: usize,
    pub inbound: usize,
    pub running: usize,
    pub refinement: usize,
    pub outbound: usize,
    pub completed: usize,
    pub failed: usize,
    pub cancelled: usize,
}
