//! Operations across the mesh (seed §3): the root starts a cascade in one of three modes,
//! sector coordinators relay it, cluster leads dispatch it to their agents at arrival
//! times and gather their answers in a window, and each level reports to the one above
//! (a wave) or the agents answer the root (parallel). The root decides by the trinary
//! quorum and keeps the KPIs.

use super::{MeshNode, MeshOutput};
use crate::hash::mix;
use crate::mesh::degrade;
use crate::mesh::gather::{self, Gather, Status};
use crate::mesh::quorum::Decision;
use crate::mesh::schedule::{self, Want};
use crate::time::Time;
use qs_wire::NodeId;
use qs_wire::mesh::{
    Ack, AgentId, AgentState, AnswerCount, BreakerState, CascadeMode, ClusterId, Contradicted,
    Control, ControlAction, Dispatch, ImpedanceClass, LeadHistogram, MAX_CHILDREN, MAX_NAMED,
    MeshEnvelope, MeshMessage, NamedAnswer, OpId, Order, Report, Scope, SectorId, Tally, Trinary,
};
use serde::Serialize;

mod close;
mod command;
mod escalate;
mod extend;
mod family;
mod late;
mod lead;
mod queue;
mod relay;
mod retry;
mod root;
use close::close;
pub use command::{CascadeCommand, Command, CommandError};
use escalate::Escalations;
pub(crate) use escalate::ForRoot;
pub(super) use escalate::{from_summary, to_send as late_to_send};
pub(crate) use late::prune as prune_late;
pub(crate) use lead::on_ack;
use lead::*;
pub use queue::{MAX_QUEUE_WAIT_MS, MAX_QUEUED, QueuedOp, QueuedView};
pub(crate) use queue::{drain as drain_queue, view as queue_view};
use relay::*;
pub(crate) use relay::{on_order, on_report};
use root::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// One phase of a priority-first cascade (or the only phase of the others).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhaseResult {
    /// The number its envelopes carried (a priority-first phase's own).
    pub op: OpId,
    pub class: Option<ImpedanceClass>,
    pub min_rate: f64,
    pub status: Status,
    pub decision: &'static str,
    pub tally: Tally,
    /// From the operation's start to this phase's end, milliseconds.
    pub latency_ms: f64,
    /// How far ahead of the operation's start this phase's agents were to be ready,
    /// milliseconds.
    pub target_after_ms: f64,
    /// The attempts before this one, if its quorum said RETRY (seed §5.2): this one is the
    /// retry, under a number of its own.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<PhaseResult>,
}

/// An operation's result, at the root.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpResult {
    pub op: OpId,
    pub mode: CascadeMode,
    pub scope: Scope,
    /// SUCCESS, PARTIAL, FAILED, FAILED_AT_SECTOR, or COMPLETE (priority-first).
    pub status: &'static str,
    pub decision: Decision,
    pub tally: Tally,
    pub latency_ms: f64,
    /// How far ahead of the start the agents were to be ready, milliseconds.
    pub target_after_ms: f64,
    pub answers: Vec<AnswerCount>,
    pub phases: Vec<PhaseResult>,
    /// Who answered what, for an operation of a few agents (a delegation, a small ask).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub named: Vec<NamedAnswer>,
    /// Orders the root itself sent.
    pub root_messages: u32,
    pub degradation: &'static str,
    /// The command's tag, as the shell gave it.
    pub tag: u64,
}

#[derive(Clone, Debug)]
pub(crate) struct LeadOp {
    gather: Gather<AgentId>,
    report_to: NodeId,
    reply_to: NodeId,
    mode: CascadeMode,
    scope: Scope,
    envelope: MeshEnvelope,
    sent_at: BTreeMap<AgentId, Time>,
    answers: BTreeMap<String, u32>,
    by_agent: BTreeMap<AgentId, String>,
    /// Agents that answered CONFLICT (at most the cluster's 100).
    conflicted: BTreeSet<AgentId>,
    /// Every agent in the plan (sent or still to be): a reroute goes to none of them.
    planned: BTreeSet<AgentId>,
    /// The phase's class, if any: a reroute stays within it.
    class: Option<ImpedanceClass>,
    /// A half-open breaker limits this cluster's share: nothing is rerouted.
    limited: bool,
    /// The operation's root: its window's extension reports there directly.
    root: NodeId,
    /// Reported with its quorum saying WAIT, it gathers on in its window's extension: the
    /// tally it reported (seed §5.2).
    extending: Option<Tally>,
    /// The operation it retries, if one (seed §5.2's RETRY): its late READY answers count
    /// here too, for those not sent again.
    retry_of: Option<OpId>,
    /// Conflicts for the report to carry up.
    escalate: Escalations,
    /// Agents the work of a capability mismatch went to, and that conflict: resolved when
    /// the agent answers READY (seed §5.1's REROUTE).
    rerouted: BTreeMap<AgentId, u64>,
    /// Its answers by agent, for a sample of at most `MAX_NAMED` agents a cluster, and the
    /// class each was chosen as.
    named: Option<Vec<NamedAnswer>>,
    chosen_as: BTreeMap<AgentId, ImpedanceClass>,
}

#[derive(Clone, Debug)]
pub(crate) struct RelayOp {
    expect: BTreeSet<Scope>,
    min_rate: f64,
    tally: Tally,
    answers: BTreeMap<String, u32>,
    deadline: Time,
    report_to: NodeId,
    scope: Scope,
    /// Conflicts for the report to carry up to the root.
    escalate: Escalations,
    named: Vec<NamedAnswer>,
}

#[derive(Clone, Debug)]
pub(crate) struct RootOp {
    mode: CascadeMode,
    scope: Scope,
    envelope: MeshEnvelope,
    sample: Option<u32>,
    budget_ms: Option<u64>,
    /// The agents' class it reaches, if one (a priority-first phase's, a delegation's).
    class: Option<ImpedanceClass>,
    /// The response rate it succeeds at.
    min_rate: f64,
    /// The priority-first operation this is a phase of, if one.
    part_of: Option<family::Part>,
    started: Time,
    target: Time,
    /// Whether this phase looked at its early end at its target (reports that came before
    /// it could not end it then).
    target_checked: bool,
    window: Duration,
    expect: BTreeSet<Scope>,
    expected_first: usize,
    tally: Tally,
    answers: BTreeMap<String, u32>,
    acks: BTreeSet<AgentId>,
    /// An urgent operation's answers by cluster: READY, and who answered CONFLICT.
    votes: BTreeMap<ClusterId, ClusterVotes>,
    deadline: Time,
    /// Its quorum said WAIT with clusters still gathering in their windows' extensions:
    /// it waits for them once (seed §5.2), past its deadline if need be.
    extended: bool,
    /// The clusters whose extension's report came (of `tally.waited`, those that extended;
    /// each once, at most the tree's clusters).
    extensions: BTreeSet<ClusterId>,
    /// The window an operator asked for, if any.
    window_ms: Option<u64>,
    /// The attempt this one retries, if it is a retry (seed §5.2's RETRY), and the results
    /// of the attempts before.
    retry_of: Option<OpId>,
    earlier: Vec<PhaseResult>,
    named: Vec<NamedAnswer>,
    root_messages: u32,
    degradation: &'static str,
    tag: u64,
}

/// An agent its lead routes around (seed §6.1's TRANSIENT_NETWORK): sent and never
/// answering `missed` operations in a row, it is out of the routing pool for `back_in_ms`,
/// then tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RoutedAround {
    pub agent: AgentId,
    pub cluster: ClusterId,
    pub missed: u8,
    pub back_in_ms: u64,
}

/// An agent its lead quarantined for seed §6.1's BYZANTINE_BEHAVIOR: it answered other
/// than a clear majority of its cluster `disagreements` times more than it agreed (the
/// last time `answer` where the majority said `majority`, in operation `op`). "Immediate:
/// potential security issue": the shell alerts and records it, for forensics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Quarantined {
    pub agent: AgentId,
    pub cluster: ClusterId,
    pub host: NodeId,
    pub op: OpId,
    pub disagreements: u32,
    pub answer: String,
    pub majority: String,
}

/// One cluster's answers to an urgent operation, at the root.
#[derive(Clone, Debug, Default)]
pub(crate) struct ClusterVotes {
    ready: u32,
    conflicted: Vec<AgentId>,
}

/// Every operation in flight at a node, by role.
#[derive(Clone, Debug, Default)]
pub(crate) struct Ops {
    lead: BTreeMap<(OpId, ClusterId), LeadOp>,
    relay: BTreeMap<(OpId, SectorId), RelayOp>,
    root: BTreeMap<OpId, RootOp>,
    sends: BTreeMap<Time, Vec<(OpId, ClusterId, AgentId)>>,
    /// Operations this node led and reported, with answers still to come or agents READY
    /// (for a retry of the same message).
    settled: BTreeMap<(OpId, ClusterId), late::Settled>,
    /// Urgent operations this node (the root) ended, whose answers may still come.
    settled_urgent: BTreeMap<OpId, late::Settled>,
    /// At the root: operations waiting for a milder mode, oldest first.
    queued: std::collections::VecDeque<queue::Queued>,
    /// At the root: priority-first operations, whose phases are root operations of their own.
    families: BTreeMap<OpId, family::Family>,
}

/// Most operations a node holds at once in each role.
pub const MAX_OPS: usize = 1_024;

/// Puts `value` under `key`, `map` kept at most `max` long: when full, the entry oldest by
/// `at` (ties by key) makes room for a new key.
fn insert_bounded<K: Ord + Copy, V>(
    map: &mut BTreeMap<K, V>,
    key: K,
    value: V,
    max: usize,
    at: impl Fn(&V) -> Time,
) {
    if map.len() >= max
        && !map.contains_key(&key)
        && let Some(oldest) = map
            .iter()
            .min_by_key(|(k, v)| (at(v), **k))
            .map(|(k, _)| *k)
    {
        map.remove(&oldest);
    }
    map.insert(key, value);
}

impl Ops {
    /// Whether this node holds operation `op` as its root or relays it (it is under way
    /// here).
    pub(crate) fn is_root_or_relay(&self, op: OpId) -> bool {
        self.root.contains_key(&op)
            || self
                .relay
                .range((op, SectorId(0))..=(op, SectorId(u32::MAX)))
                .next()
                .is_some()
    }

    pub(crate) fn next_due(&self) -> Option<Time> {
        let sends = self.sends.keys().next().copied();
        let lead = self.lead.values().map(|l| l.gather.deadline()).min();
        let relay = self.relay.values().map(|r| r.deadline).min();
        let root = self
            .root
            .values()
            .map(|r| match r.target_checked {
                true => r.deadline,
                false => r.target.min(r.deadline),
            })
            .min();
        [sends, lead, relay, root].into_iter().flatten().min()
    }
}

/// Carries out what is due at `now`.
pub(crate) fn due(node: &mut MeshNode, now: Time) {
    // Taken out so the node can be borrowed while they run (nothing they call adds an
    // operation: orders come in through `heard`, never from here).
    let mut me = std::mem::take(&mut node.ops);
    {
        while let Some((&at, _)) = me.sends.iter().next() {
            if at > now {
                break;
            }
            let batch = me.sends.remove(&at).unwrap_or_default();
            for (op, c, agent) in batch {
                send_one(&mut me, node, op, c, agent, now);
            }
        }
        // Gathers that close now, and extensions that end.
        let late: Vec<(OpId, ClusterId)> = me
            .lead
            .iter()
            .filter(|(_, l)| l.gather.deadline() <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in late {
            report_lead(&mut me, node, k, now);
        }
        let relays: Vec<(OpId, SectorId)> = me
            .relay
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in relays {
            report_relay(&mut me, node, k);
        }
        let at_target: Vec<OpId> = me
            .root
            .iter_mut()
            .filter(|(_, r)| !r.target_checked && r.target <= now)
            .map(|(k, r)| {
                r.target_checked = true;
                *k
            })
            .collect();
        for op in at_target {
            relay::maybe_end_early(&mut me, node, op, now);
        }
        let roots: Vec<OpId> = me
            .root
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for op in roots {
            end_phase(&mut me, node, op, now);
        }
        node.ops = me;
    }
}

/// Part `i` of `n` split over `parts` as evenly as it goes (the first `n % parts` parts one
/// more): the shares add up to `n`.
pub(super) fn share(n: u32, parts: usize, i: usize) -> u32 {
    let parts = parts.max(1) as u32;
    n / parts + u32::from((i as u32) < n % parts)
}

pub(super) fn sectors_in(node: &MeshNode, scope: Scope) -> Vec<SectorId> {
    match scope {
        Scope::Global => (0..node.tree.sectors.len() as u32).map(SectorId).collect(),
        Scope::Sector(s) => vec![s],
        Scope::Cluster(c) => node
            .tree
            .cluster(c)
            .map(|cl| cl.sector)
            .into_iter()
            .collect(),
    }
}

fn clusters_in(node: &MeshNode, scope: Scope, sector: SectorId) -> Vec<ClusterId> {
    match scope {
        Scope::Cluster(c) => vec![c],
        _ => node
            .tree
            .sector(sector)
            .map(|s| s.clusters.clone())
            .unwrap_or_default(),
    }
}
