//! Ledger events: the append-only story of every decision (the seed's "WPA record").

use crate::ids::{InstanceId, NodeId, PlacementId, ServiceName};
use crate::message::{Composite, DeclineReason, ExitOutcome, Role};
use serde::{Deserialize, Serialize};

/// Why a placement started (step 1, sense).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "reason")]
pub enum SenseReason {
    /// Fewer instances than wanted: new spec, failure, lost node.
    Missing { have: u32, want: u32 },
    /// An instance crossed a threshold: scale out.
    Hot { instance: InstanceId, on: NodeId },
}

/// Step 2's verdict on the steward's own node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "verdict")]
pub enum LocalVerdict {
    /// Fits here and passes the gate: started locally, no query.
    Start {
        composite: Composite,
    },
    /// Fits, but competes: a GPU workload compares VRAM, and a node that recently failed the
    /// service lets `(1 - pressure)` decide. This node's own offer joins the pool.
    Compete {
        composite: Composite,
    },
    Refused {
        reason: DeclineReason,
    },
}

/// An offer received in step 4.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OfferFrom {
    pub from: NodeId,
    pub composite: Composite,
}

/// A decline received in step 4.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeclineFrom {
    pub from: NodeId,
    pub reason: DeclineReason,
}

/// One ledger event. Every step of every placement is one, so the ledger tells each
/// placement's story the way seed 000 §3 tells CoreDNS's.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "event")]
pub enum Event {
    Sensed {
        placement: PlacementId,
        service: ServiceName,
        reason: SenseReason,
    },
    LocalCheck {
        placement: PlacementId,
        verdict: LocalVerdict,
    },
    QuerySent {
        placement: PlacementId,
        asked: u32,
        live: u32,
        sampled: bool,
    },
    /// Step 4 closed: every answer the round got, in the order they came.
    Gathered {
        placement: PlacementId,
        /// "I can take it", with each composite weight.
        offers: Vec<OfferFrom>,
        /// "I cannot", with each reason.
        declined: Vec<DeclineFrom>,
        /// Asked nodes that did not answer before the deadline.
        silent: Vec<NodeId>,
    },
    GateRefused {
        placement: PlacementId,
        from: NodeId,
        composite: Composite,
    },
    Dispatched {
        placement: PlacementId,
        to: NodeId,
        instance: InstanceId,
        composite: Composite,
    },
    /// `reason: None` means the target did not answer in time.
    DispatchRefused {
        placement: PlacementId,
        to: NodeId,
        reason: Option<DeclineReason>,
    },
    Placed {
        placement: PlacementId,
        service: ServiceName,
        instance: InstanceId,
        on: NodeId,
        latency_us: u64,
    },
    Unplaced {
        placement: PlacementId,
        service: ServiceName,
        reason: String,
        retry: bool,
    },
    InstanceStarted {
        instance: InstanceId,
        service: ServiceName,
        role: Role,
        fencing: u64,
        gpu: Option<u32>,
    },
    InstanceExited {
        instance: InstanceId,
        service: ServiceName,
        outcome: ExitOutcome,
    },
    /// A failed instance is started again on the same node after `delay_ms`.
    InstanceRestarting {
        instance: InstanceId,
        service: ServiceName,
        attempt: u32,
        delay_ms: u64,
    },
    InstanceHot {
        instance: InstanceId,
        service: ServiceName,
        cpu_permille: u32,
    },
    PressureRaised {
        service: ServiceName,
        load_bucket: u8,
        pressure_permille: u32,
    },
    ScaleIn {
        service: ServiceName,
        instance: InstanceId,
        on: NodeId,
    },
    PromotionNeedsApproval {
        service: ServiceName,
    },
    Promoted {
        service: ServiceName,
        instance: InstanceId,
        on: NodeId,
    },
    /// A singleton's placement owns its fencing token in the `instances` KV.
    Claimed {
        placement: PlacementId,
        instance: InstanceId,
        fencing: u64,
    },
    /// Another placement holds the singleton's record with a token at or above this one's:
    /// this placement ends before anything starts.
    ClaimRefused {
        placement: PlacementId,
        held_by: InstanceId,
        fencing: u64,
    },
    /// This node stopped listening to `peer` for `for_ms`: it kept sending invalid messages
    /// (`reason` names the last kind).
    PeerQuarantined {
        peer: NodeId,
        reason: String,
        for_ms: u64,
    },
    /// An order (`dispatch`, `stop`, `promote`) from `from` was not obeyed: `from` does not
    /// steward the service as this node sees the fleet, or the service is unknown here.
    OrderRefused {
        from: NodeId,
        order: String,
        instance: InstanceId,
        service: Option<ServiceName>,
        reason: DeclineReason,
    },
    /// A spec in the fleet's KV broke a rule; the version in force before (if any) stays.
    /// `key` is the KV key as read (cut to 253 bytes).
    SpecRefused {
        key: String,
        field: String,
        reason: String,
    },
    /// A step of a model runtime's life on GPU `gpu` (seed 003's transition: a swap begun,
    /// drained, stopped, VRAM released, loaded), or the watchdog's verdict, with how long the
    /// step took (0 where it has no duration) and what it concerns.
    ModelRuntime {
        gpu: u32,
        model: ServiceName,
        step: ModelStep,
        took_ms: u64,
        detail: String,
    },
    /// A step of a durable task's life (seed 002).
    Task {
        task: crate::ids::TaskId,
        step: TaskStep,
        detail: String,
    },
    /// A model spec in the fleet's `models` KV broke a rule; the one in force (if any) stays.
    ModelRefused {
        key: String,
        field: String,
        reason: String,
    },
    /// An agent of the mesh answered CONFLICT (seed 001 §5.1): the conflict log's record, its
    /// conflicting information quarantined, its class, priority (0–4), resolution strategy
    /// and whom it escalates to. With `escalated_by`: a notice of a conflict a lead (or a
    /// coordinator) below escalated here.
    MeshConflict {
        seq: u64,
        op: u64,
        agent: u64,
        #[serde(default)]
        cluster: u32,
        class: String,
        priority: u8,
        strategy: String,
        escalation: String,
        /// To be resolved by then, Unix milliseconds (none for priority 0).
        #[serde(default)]
        due_ms: Option<u64>,
        #[serde(default)]
        escalated_by: Option<String>,
        /// The former lead that handed it over with its agent (it was heard there).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        handed_by: Option<String>,
        /// The agent's conflict detail, as JSON.
        detail: String,
    },
    /// A conflict of this node's log resolved: how (agreed, rerouted, released, handed over to
    /// the agent's new lead, or its lead changed).
    MeshConflictResolved {
        seq: u64,
        agent: u64,
        cluster: u32,
        how: String,
    },
    /// An operation of the mesh ended at its root (seed §3.3): its outcome and counts, or
    /// why it did not run (`status` REFUSED, with `error`: a queued one that waited too
    /// long, or was refused when it came to start).
    MeshOperation {
        op: u64,
        mode: String,
        scope: String,
        status: String,
        #[serde(default)]
        decision: String,
        #[serde(default)]
        sent: u32,
        #[serde(default)]
        ready: u32,
        /// Whole milliseconds from its start to its result.
        #[serde(default)]
        latency_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// The numbers its phases' envelopes carried, where they are not `op` (a
        /// priority-first operation's, each phase its own): what its conflicts name.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        phases: Vec<u64>,
    },
    /// The mesh's mode changed (seed §6.3: by the share of active agents), as this node holds
    /// it: the root's own, another node's as the root's notices said it (the counts: the
    /// last notice's, also when one lapsed to FULL).
    MeshMode {
        from: String,
        to: String,
        active_agents: u32,
        total_agents: u32,
    },
    /// Seed §6.1's AGENT_CRASH at a cluster lead: an agent offline 30 s while its host lived,
    /// its host asked to restart it; `escalated` when it crashed again soon after it came
    /// back ("replacement also fails").
    MeshAgentCrashed {
        agent: u64,
        cluster: u32,
        host: String,
        offline_ms: u64,
        escalated: bool,
    },
    /// Seed §6.1's BYZANTINE_BEHAVIOR at a cluster lead: an agent quarantined for answering
    /// other than a clear majority of its cluster, repeatedly (the last time `answer` where
    /// the majority said `majority`, in operation `op`): for forensics.
    MeshAgentQuarantined {
        agent: u64,
        cluster: u32,
        host: String,
        op: u64,
        disagreements: u32,
        answer: String,
        majority: String,
    },
    /// An operator's control of the mesh (freeze, thaw, heal) as its root reported it: how
    /// many of the nodes in scope confirmed it, and what a heal did there.
    MeshControl {
        action: String,
        scope: String,
        nodes: u32,
        confirmed: u32,
        #[serde(default)]
        agents_released: u32,
        #[serde(default)]
        breakers_closed: u32,
        #[serde(default)]
        conflicts_released: u32,
        #[serde(default)]
        agents_routed_around: u32,
        #[serde(default, skip_serializing_if = "crate::bounds::is_zero")]
        agents_reassigned: u32,
    },
}

impl Event {
    /// The ledger's record of a queued operation of the mesh that did not run.
    pub fn mesh_operation_not_run(op: u64, error: String) -> Event {
        Event::MeshOperation {
            op,
            mode: String::new(),
            scope: String::new(),
            status: "REFUSED".into(),
            decision: String::new(),
            sent: 0,
            ready: 0,
            latency_ms: 0,
            error: Some(error),
            phases: Vec::new(),
        }
    }
}

/// The steps of a durable task's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskStep {
    /// Accepted into the inbound queue.
    Submitted,
    /// A worker took an iteration of it (`detail`: the attempt, its fencing token).
    Claimed,
    /// An iteration ended (`detail`: its score, and what ended refining if anything did).
    Iterated,
    /// Its worker saved its state at an iteration boundary.
    Checkpointed,
    /// An attempt ran one of its side effects to the end (`detail`: the effect's key).
    Effect,
    /// Its result waits for validation.
    Outbound,
    /// Its result failed validation: what its policy says comes next (`detail`).
    Rejected,
    /// A result counted in its vote; another pass by another worker follows.
    Voted,
    /// No progress over its stall: a larger model, another family or another worker.
    Escalated,
    /// Taken over from a dead node (`detail`: which), to resume from its last checkpoint.
    Adopted,
    /// Another node owns it now (it adopted it while this one was down or cut off).
    Moved,
    /// An attempt failed: it goes back to the inbound queue.
    Retried,
    /// Done, once.
    Completed,
    Failed,
    Cancelled,
}

/// The steps of a model runtime's transition and the watchdog's verdicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelStep {
    /// A swap begins: the runtimes in `detail` drain to make room for `model`.
    SwapBegun,
    /// Nothing was in flight on it any more (or its drain bound passed, cutting some).
    Drained,
    /// Its process exited.
    Stopped,
    /// Told to stop, it had not exited within its bound: it is killed.
    StopOverdue,
    /// The VRAM the stopped runtimes held was seen free, before `model` starts.
    VramReleased,
    /// Started: its process runs and it loads.
    Started,
    /// Warm: it answered its health and warm checks.
    Loaded,
    /// A start failed (`detail` says why and which attempt).
    LoadFailed,
    /// The watchdog gave up on it after repeated failed starts: an alert.
    WatchdogReset,
    /// Requests have waited for it long enough to be written down (durable stasis):
    /// `detail` starts with the class they wait in; resumed after a restart.
    Stasis,
    /// Nothing waits for it any more.
    StasisEnded,
    /// It served only other nodes' leased work and is taken back for local interactive use.
    LeaseRevoked,
}

/// An event as stored: its place in the ledger, when, and which node wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub at_us: u64,
    pub node: NodeId,
    pub event: Event,
}
