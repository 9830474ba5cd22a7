//! Version 1 of the HTTP API: every response body, as serde types (requests are a TOML spec
//! document, path segments and query parameters). `GET /v1/nodes` answers `Vec<NodeStatus>`,
//! `GET /v1/events` answers `Vec<Record>` (both wire types). The
//! handlers ([`crate::api`]) return them and the CLI decodes them; nothing else defines the API's
//! JSON.

use qs_core::RunningInstance;
use qs_wire::{
    DeclineReason, HaPattern, InstanceId, NodeId, NodeStatus, Offer, Role, ServiceName,
    WorkloadSpec,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An instance this node runs, as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocalInstance {
    pub instance: InstanceId,
    pub service: ServiceName,
    pub node: NodeId,
    pub role: qs_wire::Role,
    pub serving: bool,
    pub hot: bool,
    /// While a process runs.
    pub pid: Option<u32>,
    pub port: Option<u16>,
    pub command: String,
}

/// What the API can see of one node without asking it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub status: NodeStatus,
    pub instances: Vec<LocalInstance>,
    pub stewards: Vec<ServiceName>,
    pub placements_in_flight: usize,
    pub gpu_source: String,
    pub live_peers: usize,
}

/// The fleet as one node's registry sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegistryView {
    pub nodes: Vec<NodeStatus>,
    pub specs: Vec<WorkloadSpec>,
    pub instances: Vec<(ServiceName, InstanceId, InstanceRow)>,
    pub stewards: BTreeMap<ServiceName, NodeId>,
    pub completed: BTreeMap<ServiceName, usize>,
}

/// An instance row of the registry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceRow {
    pub node: NodeId,
    pub role: qs_wire::Role,
    pub serving: bool,
    pub hot: bool,
    pub fencing: u64,
}

impl From<&RunningInstance> for InstanceRow {
    fn from(r: &RunningInstance) -> Self {
        InstanceRow {
            node: r.node.clone(),
            role: r.role,
            serving: r.serving,
            hot: r.hot,
            fencing: r.fencing,
        }
    }
}

/// A node's offer for a service and its own gate's verdict on it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Explained {
    pub offer: Offer,
    pub passes_gate: bool,
}

/// Every error: `{"error": "..."}` with the HTTP status that fits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `GET /health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`, or `degraded` while something the agent needs fails (see `reason`).
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `embedded`, `nats`, or `autonomous` while the fabric is out of reach.
    pub mode: String,
    /// Nodes this process runs.
    pub nodes: usize,
    pub ledger_next_seq: u64,
    /// Where the API token is (absolute path), told only to a client on loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
}

/// `GET /queue_stats`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    pub nodes: BTreeMap<NodeId, NodeQueue>,
    /// The durable tasks' queues (inbound, refinement, outbound) and what became of them.
    #[serde(default)]
    pub tasks: qs_core::tasks::QueueCounts,
    /// Task workers disconnected for speaking the protocol wrongly.
    #[serde(default)]
    pub workers_disconnected: u64,
}

/// One node's queues.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeQueue {
    pub placements_in_flight: usize,
    pub instances: usize,
    pub stewarded_services: usize,
}

/// `GET /checkpoint_state`: the durable state this agent keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointState {
    pub state_dir: String,
    pub ledger: LedgerState,
    pub desired_state: DesiredState,
    #[serde(default)]
    pub tasks: TaskCheckpoints,
}

/// Most entries a list of `/checkpoint_state` holds.
pub const MAX_LISTED: usize = 1000;

/// The durable tasks' checkpoints: on this node's disk, and the fleet's copy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCheckpoints {
    /// The task store (`tasks.redb`).
    pub store: String,
    /// Tasks remembered that hold a checkpoint.
    pub checkpoints: usize,
    /// The last checkpoint of each task still running or waiting (the first
    /// [`MAX_LISTED`]).
    pub latest: Vec<TaskCheckpoint>,
    /// Records written to the fleet's `tasks` bucket since start.
    pub fleet_written: u64,
    /// Records waiting to be written there (the fleet unreachable, or behind).
    pub fleet_pending: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCheckpoint {
    pub task: qs_wire::TaskId,
    pub iteration: u32,
    pub attempt: u64,
    pub bytes: usize,
    /// The model it ran on, and the hash of what was saved.
    #[serde(default)]
    pub model: Option<qs_wire::ServiceName>,
    #[serde(default)]
    pub hash: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerState {
    pub path: String,
    pub next_seq: u64,
    /// Bytes of records it holds (bounded by `ledger_max_bytes`).
    #[serde(default)]
    pub bytes: u64,
    /// What compaction has taken out of it so far.
    #[serde(default)]
    pub compacted: qs_store::Snapshot,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    pub specs: usize,
}

/// `GET /v1/nodes?explain=SERVICE`: each node's offer for the service, or why it declines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Explain {
    pub service: ServiceName,
    pub nodes: Vec<ExplainRow>,
}

/// One node's answer in [`Explain`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ExplainRow {
    Offers {
        node: NodeId,
        offer: Offer,
        passes_gate: bool,
    },
    Declines {
        node: NodeId,
        declines: DeclineReason,
        /// The reason in words.
        reason: String,
    },
}

/// `GET /v1/services`: one row per service or job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRow {
    pub name: ServiceName,
    /// `service` or `job`.
    pub kind: String,
    pub pattern: HaPattern,
    pub wanted: u32,
    pub max: u32,
    pub running: usize,
    pub serving: usize,
    pub completed: usize,
    pub steward: Option<NodeId>,
}

/// `GET /v1/instances`: one row per instance the registry knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub instance: InstanceId,
    pub service: ServiceName,
    pub node: NodeId,
    pub role: Role,
    pub serving: bool,
    pub hot: bool,
    pub fencing: u64,
    /// Known for the instances of this agent's own nodes.
    pub pid: Option<u32>,
    pub port: Option<u16>,
}

/// `GET /v1/addresses`: one row per service on each port this agent listens on for the
/// fleet's stable addresses (and one per address that could not have its port).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressView {
    pub port: u16,
    /// `tcp`, `udp` or `http`.
    pub protocol: String,
    pub service: String,
    /// The port reaches only the service's primary.
    pub primary_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// This agent listens on the port now.
    pub listening: bool,
    /// Why it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The serving instances behind it, `host:port`.
    pub endpoints: Vec<String>,
}

/// `POST /v1/tasks`: the task's id (201 when new; 200 when its idempotency key named it
/// already).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    pub id: qs_wire::TaskId,
    pub existing: bool,
}

/// `POST /v1/tasks/ID/cancel`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancelled {
    pub cancelled: qs_wire::TaskId,
}

/// `POST /v1/specs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub applied: Vec<ServiceName>,
}

/// `DELETE /v1/specs/NAME`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    pub deleted: ServiceName,
}

/// `POST /v1/chaos/kill/TARGET`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Killed {
    /// The whole agent process (`qs agent`).
    Agent { killed_agent: NodeId, pid: u32 },
    /// One virtual node of `qs up`.
    Node { killed_node: NodeId },
    /// One instance's process group.
    Instance { killed: InstanceId, node: NodeId },
}

/// `POST /v1/chaos/panic/NODE`: the node's runtime panics just after this answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Panicked {
    pub panicking: NodeId,
    /// The agent process, which ends.
    pub pid: u32,
}

/// `POST /v1/chaos/pause/NODE?ms=N`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Paused {
    Agent {
        paused_agent: NodeId,
        pid: u32,
        ms: u64,
    },
    Node {
        paused_node: NodeId,
        ms: u64,
    },
}

/// `POST|DELETE /v1/nodes/NODE/drain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    pub node: NodeId,
    pub draining: bool,
}

/// `POST /v1/services/NAME/approve`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approved {
    pub approved: ServiceName,
    pub steward: NodeId,
}
