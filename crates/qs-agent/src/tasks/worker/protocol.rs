//! The worker protocol's frames: what a worker asks ([`Request`], each field checked by
//! serde, unknown ones refused) and what the agent answers ([`Answer`]).

use qs_wire::mesh::{AgentId, ConflictDetail, MeshEnvelope, OpId, Trinary};
use qs_wire::{ServiceName, TaskId};
use serde::{Deserialize, Serialize};

/// What a worker asks.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub(super) enum Request {
    Register {
        worker: String,
        #[serde(default)]
        models: Vec<ServiceName>,
        /// When given, the worker sends a frame at least this often; silent for three times
        /// as long, it is taken for hung: disconnected, its attempts failed.
        #[serde(default)]
        heartbeat_ms: Option<u64>,
    },
    Claim {
        /// How long to wait for work when there is none (at most [`MAX_CLAIM_WAIT_MS`]).
        #[serde(default)]
        wait_ms: u64,
    },
    Heartbeat,
    Report {
        task: TaskId,
        attempt: u64,
        score: f64,
        result_hash: u64,
    },
    Checkpoint {
        task: TaskId,
        attempt: u64,
        iteration: u32,
        state: String,
    },
    Complete {
        task: TaskId,
        attempt: u64,
        result: String,
    },
    /// How far the iteration under way is (shown in `qs task show`, not kept).
    Progress {
        task: TaskId,
        attempt: u64,
        fraction: f64,
        #[serde(default)]
        note: String,
    },
    /// Whether an attempt of the task already ran its side effect `key`.
    Effect {
        task: TaskId,
        attempt: u64,
        key: String,
    },
    /// This attempt ran its side effect `key` to the end.
    EffectDone {
        task: TaskId,
        attempt: u64,
        key: String,
    },
    Fail {
        task: TaskId,
        attempt: u64,
        reason: String,
    },
    /// Join the mesh as an agent with these capabilities.
    MeshJoin {
        #[serde(default)]
        capabilities: Vec<String>,
    },
    /// What the mesh sends this agent, waiting up to `wait_ms` (at most [`MAX_CLAIM_WAIT_MS`]).
    MeshPoll {
        #[serde(default)]
        wait_ms: u64,
    },
    /// This agent's answer to an operation it took.
    MeshAnswer {
        operation: OpId,
        state: Trinary,
        #[serde(default)]
        answer: String,
        #[serde(default)]
        conflict: Option<ConflictDetail>,
    },
}

impl Request {
    /// Whether what its mesh agent's beats say it works on is looked at again after it: the
    /// task it holds, what it said of it, its joining the mesh, or a heartbeat (a task
    /// cancelled or past its deadline meanwhile is no longer held).
    pub(super) fn refreshes_busy(&self) -> bool {
        matches!(
            self,
            Request::Claim { .. }
                | Request::Progress { .. }
                | Request::Complete { .. }
                | Request::Fail { .. }
                | Request::MeshJoin { .. }
                | Request::Heartbeat
        )
    }
}

/// What the agent answers.
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub(super) enum Answer {
    Registered {
        node: String,
    },
    MeshJoined {
        agent: AgentId,
    },
    Mesh {
        envelope: Box<MeshEnvelope>,
    },
    Task {
        task: TaskId,
        attempt: u64,
        iteration: u32,
        payload: String,
        model: Option<ServiceName>,
        state: Option<String>,
    },
    None,
    SoftStop,
    Next {
        next: &'static str,
    },
    Effect {
        done: bool,
    },
    Ok,
    Refused {
        reason: String,
    },
}
