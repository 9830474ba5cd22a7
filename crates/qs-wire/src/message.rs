//! Fleet messages: heartbeats, capacity queries and offers, dispatches and their replies.

use crate::ids::{InstanceId, NodeId, PlacementId, ServiceName};
use crate::resources::{Capacity, Committed, Load, Resources};
use crate::spec::HaPattern;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};

/// The composite weight of one node for one workload, with its parts (seed 000 §5, §7):
/// `value = (1 − pressure) × vram_free × cpu_free × level_weight`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Composite {
    /// Learned failure pressure of this (node, service), 0.0..1.0.
    pub pressure: f64,
    /// Free VRAM fraction of the GPU that would host it; 1.0 for CPU-only workloads.
    pub vram_free: f64,
    /// Free CPU fraction of the node.
    pub cpu_free: f64,
    /// `γ₁ / (level + 1)`.
    pub level_weight: f64,
    pub value: f64,
}

impl Hash for Composite {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for f in [
            self.pressure,
            self.vram_free,
            self.cpu_free,
            self.level_weight,
            self.value,
        ] {
            f.to_bits().hash(state);
        }
    }
}
impl Eq for Composite {}

impl fmt::Display for Composite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "(1 - {:.3}) x {:.3} vram x {:.3} cpu x {:.3} level = {:.3}",
            self.pressure, self.vram_free, self.cpu_free, self.level_weight, self.value
        )
    }
}

/// What a workload needs from a node; sent with every capacity query and dispatch.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Demand {
    pub service: ServiceName,
    pub pattern: HaPattern,
    pub need: Resources,
    pub labels: BTreeMap<String, String>,
    pub max_per_node: u32,
}

impl Demand {
    /// What one instance of `spec` asks of a node.
    pub fn of(spec: &crate::WorkloadSpec) -> Demand {
        Demand {
            service: spec.name.clone(),
            pattern: spec.pattern,
            need: spec.resources,
            labels: spec.labels.clone(),
            max_per_node: spec.max_per_node,
        }
    }
}

/// A node's answer "I can take it", with the weight it claims.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Offer {
    pub composite: Composite,
    /// GPU that would host it, for GPU workloads.
    pub gpu: Option<u32>,
    /// Free VRAM on that GPU, for gpu-inference ranking.
    pub vram_free_bytes: u64,
}

/// Which resource a refusal is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resource {
    Cpu,
    Memory,
    Gpu,
    Vram,
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Resource::Cpu => "cpu",
            Resource::Memory => "memory",
            Resource::Gpu => "gpu",
            Resource::Vram => "vram",
        })
    }
}

/// Why a node declined a query or refused a dispatch.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeclineReason {
    /// Sensed use is over the configured threshold.
    OverThreshold { resource: Resource },
    /// Not enough uncommitted capacity.
    NoFit { resource: Resource },
    /// The node lacks a required label.
    Labels,
    /// The node already runs as many instances of it as the pattern allows.
    AlreadyRunning,
    /// A singleton with a newer fencing token exists.
    Superseded,
    /// The composite does not pass the admission gate.
    Gate,
    /// The node is shutting down or draining.
    Draining,
    /// The sender does not steward the service, as the receiver sees the fleet.
    NotSteward,
    /// The receiver holds no spec of the service (yet).
    UnknownService,
    /// The node's certificate does not let it host this (hosting, or GPU work).
    NotGranted,
}

impl fmt::Display for DeclineReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeclineReason::OverThreshold { resource } => write!(f, "{resource} over threshold"),
            DeclineReason::NoFit { resource } => write!(f, "not enough free {resource}"),
            DeclineReason::Labels => f.write_str("labels do not match"),
            DeclineReason::AlreadyRunning => f.write_str("already running it"),
            DeclineReason::Superseded => f.write_str("a newer singleton exists"),
            DeclineReason::Gate => f.write_str("composite at or under the gate"),
            DeclineReason::Draining => f.write_str("draining"),
            DeclineReason::NotSteward => f.write_str("the sender is not the service's steward"),
            DeclineReason::UnknownService => f.write_str("no spec of the service here"),
            DeclineReason::NotGranted => f.write_str("its certificate does not grant it"),
        }
    }
}

/// Role of an instance within its service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Any instance of a stateless, gpu-inference or gpu-singleton workload; a read replica
    /// of a stateful-read one.
    Replica,
    /// The one instance of a stateful-read service that takes writes.
    Primary,
}

/// How an instance ended.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum ExitOutcome {
    /// A job instance finished its work.
    Completed,
    Crashed {
        reason: String,
    },
    FailedStart {
        reason: String,
    },
    HealthFailed {
        reason: String,
    },
    /// Stopped on purpose (scale-in, superseded, operator).
    Stopped {
        reason: String,
    },
}

impl ExitOutcome {
    /// Failures feed failure memory; completions and deliberate stops do not.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            ExitOutcome::Crashed { .. }
                | ExitOutcome::FailedStart { .. }
                | ExitOutcome::HealthFailed { .. }
        )
    }

    /// What it says of why the process ended (`completed` for a clean exit).
    pub fn reason(&self) -> &str {
        match self {
            ExitOutcome::Completed => "completed",
            ExitOutcome::Crashed { reason }
            | ExitOutcome::FailedStart { reason }
            | ExitOutcome::HealthFailed { reason }
            | ExitOutcome::Stopped { reason } => reason,
        }
    }
}

/// One instance as its node reports it in a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InstanceSummary {
    pub instance: InstanceId,
    pub service: ServiceName,
    pub role: Role,
    /// Fencing token; only singletons use it, others carry 0.
    pub fencing: u64,
    /// Its sensed use crossed a threshold.
    pub hot: bool,
    /// It passes its health check (or has none and runs): it may receive traffic.
    #[serde(default)]
    pub serving: bool,
    /// The port its process was given (`{port}`) on its node's address; 0 when it has none.
    #[serde(default)]
    pub port: u16,
}

/// A model's state on a node, as its heartbeat says (the entry points route by it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelState {
    /// Declared here, no runtime: a request raises its load.
    Absent,
    Loading,
    Warm,
    /// Giving way to another model; it loads again after.
    Draining,
    Stopping,
    /// A resident runtime the watchdog gave up on.
    Failed,
    /// Declared here, but no GPU here holds even its smallest tier.
    Unfit,
    /// Served by a runtime someone else manages, which this node reaches.
    Shared,
}

impl ModelState {
    /// Its name in `/v1/models`.
    pub fn name(self) -> &'static str {
        match self {
            ModelState::Absent => "absent",
            ModelState::Loading => "loading",
            ModelState::Warm => "warm",
            ModelState::Draining => "draining",
            ModelState::Stopping => "stopping",
            ModelState::Failed => "failed",
            ModelState::Unfit => "unfit",
            ModelState::Shared => "shared",
        }
    }

    /// The state its name in `/v1/models` names.
    pub fn named(name: &str) -> Option<ModelState> {
        ModelState::ALL.into_iter().find(|s| s.name() == name)
    }

    pub const ALL: [ModelState; 8] = [
        ModelState::Absent,
        ModelState::Loading,
        ModelState::Warm,
        ModelState::Draining,
        ModelState::Stopping,
        ModelState::Failed,
        ModelState::Unfit,
        ModelState::Shared,
    ];
}

/// One model a node holds, as its heartbeat says.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelSummary {
    pub model: ServiceName,
    pub state: ModelState,
    /// Requests in flight on its runtime, and waiting for it.
    pub in_flight: u32,
    pub waiting: u32,
    /// The VRAM its tier takes here (for an unfit one, the smallest tier's need).
    pub vram_bytes: u64,
}

/// A heartbeat: everything other nodes need to know of one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: NodeId,
    pub level: u8,
    pub labels: BTreeMap<String, String>,
    pub capacity: Capacity,
    pub committed: Committed,
    pub load: Load,
    pub instances: Vec<InstanceSummary>,
    /// Job instances that completed recently, kept for a while so every observer sees it.
    #[serde(default)]
    pub completed: Vec<(InstanceId, ServiceName)>,
    /// Draining: takes no new work and is moving its instances away.
    #[serde(default)]
    pub draining: bool,
    /// Where other machines reach its instances (their ports are in `instances`); `None`
    /// when it does not say.
    #[serde(default)]
    pub address: Option<core::net::IpAddr>,
    /// The models it holds (the entry points of the fleet route requests by them).
    #[serde(default)]
    pub models: Vec<ModelSummary>,
    /// The port of its OpenAI-compatible entry point on `address` (plain HTTP); 0 when it
    /// takes no requests from other nodes.
    #[serde(default)]
    pub entry_port: u16,
    /// What its certificate lets it do; `None`: everything (trust on first use, one
    /// process, the simulator). Its peers hold it to its certificate.
    #[serde(default)]
    pub capabilities: Option<crate::trust::CapabilitySet>,
}

impl NodeStatus {
    /// Whether it may do what `capability` allows.
    pub fn may(&self, capability: crate::trust::Capability) -> bool {
        self.capabilities.is_none_or(|c| c.contains(capability))
    }

    /// A node of `level` that has nothing and runs nothing (what a test starts from).
    pub fn idle(node: NodeId, level: u8) -> NodeStatus {
        NodeStatus {
            node,
            level,
            labels: BTreeMap::new(),
            capacity: Capacity::default(),
            committed: Committed::default(),
            load: Load::default(),
            instances: vec![],
            completed: vec![],
            draining: false,
            address: None,
            models: vec![],
            entry_port: 0,
            capabilities: None,
        }
    }
}

/// A singleton's record in the fleet's `instances` KV bucket (key: the service): the
/// placement that owns the newest fencing token. Two stewards that place the same singleton at
/// once (views differ while membership changes) settle it here by compare-and-set: a claim at or
/// below the record's token, for another instance, is refused, so tokens only grow.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SingletonClaim {
    pub instance: InstanceId,
    pub fencing: u64,
    pub steward: NodeId,
}

impl SingletonClaim {
    /// Decodes a record read from the `instances` KV (untrusted: any writer of the bucket).
    pub fn decode(bytes: &[u8]) -> Result<SingletonClaim, crate::WireError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("claims of wire types always serialize")
    }
}

/// Every message between nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
// Externally tagged: it decodes in one pass (an internal tag makes serde buffer every
// message before it can pick the variant).
#[serde(rename_all = "kebab-case")]
pub enum Message {
    Heartbeat(NodeStatus),
    /// Step 3: "who can take this?"
    CapacityQuery {
        placement: PlacementId,
        demand: Demand,
    },
    /// Step 4: "I can take it", with the composite weight.
    Offer {
        placement: PlacementId,
        offer: Offer,
    },
    /// Step 4: "I cannot", so the gatherer can finish early.
    Decline {
        placement: PlacementId,
        reason: DeclineReason,
    },
    /// Step 5: the directed order to run an instance.
    Dispatch {
        placement: PlacementId,
        instance: InstanceId,
        demand: Demand,
        role: Role,
        fencing: u64,
    },
    /// The target's late-binding answer; `refused: None` means accepted.
    DispatchReply {
        placement: PlacementId,
        instance: InstanceId,
        refused: Option<DeclineReason>,
    },
    /// Steward to host: stop this instance (scale-in, superseded).
    Stop {
        instance: InstanceId,
        reason: String,
    },
    /// Steward to host: this read replica becomes the primary.
    Promote {
        instance: InstanceId,
    },
    /// Failure detection: "are you there?", from `origin` directly or through the relay `via`
    /// (an indirect probe). The answer goes back the way the ping came.
    Ping {
        nonce: u64,
        origin: NodeId,
        via: Option<NodeId>,
    },
    /// Asks a relay to ping `target` for the sender, whose own pings go unanswered.
    PingReq {
        target: NodeId,
        nonce: u64,
    },
    /// "I am here": `target` answers `origin`'s ping.
    Ack {
        nonce: u64,
        target: NodeId,
        origin: NodeId,
    },
}

impl Message {
    /// Short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Heartbeat(_) => "heartbeat",
            Message::CapacityQuery { .. } => "capacity-query",
            Message::Offer { .. } => "offer",
            Message::Decline { .. } => "decline",
            Message::Dispatch { .. } => "dispatch",
            Message::DispatchReply { .. } => "dispatch-reply",
            Message::Stop { .. } => "stop",
            Message::Promote { .. } => "promote",
            Message::Ping { .. } => "ping",
            Message::PingReq { .. } => "ping-req",
            Message::Ack { .. } => "ack",
        }
    }
}
