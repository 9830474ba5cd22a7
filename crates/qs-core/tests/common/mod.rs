//! A cluster lead driven through `MeshNode::handle` on a virtual clock, with the agents of
//! another host beating to it: the harness of the lead's tests.
#![allow(dead_code)]

use qs_core::Time;
use qs_core::mesh::conflict::Resolution;
use qs_core::mesh::{
    CascadeCommand, Command, Hierarchy, Member, MeshConfig, MeshInput, MeshNode, MeshOutput,
    OpResult, Seniority, Shape,
};
use qs_wire::NodeId;
use qs_wire::mesh::{
    Ack, AgentBeat, AgentId, AgentState, Busy, CascadeMode, ClusterId, ClusterSummary,
    ConflictDetail, Dispatch, Escalated, HostBeat, LeadHistogram, MeshEnvelope, MeshMessage, OpId,
    Order, Report, Scope, SectorId, SectorSummary, Tally, Trinary, Verb,
};
use std::collections::BTreeSet;
use std::sync::Arc;

mod controls;
mod notices;
mod sectors;
#[allow(unused_imports)]
pub use controls::*;
#[allow(unused_imports)]
pub use notices::*;
#[allow(unused_imports)]
pub use sectors::*;

pub const TPU: &str = "tpu";

pub fn beat(agent: AgentId, joined_ms: u64, tpu: bool) -> AgentBeat {
    AgentBeat {
        agent,
        state: AgentState::Active,
        processing_ms: 5.0,
        queue_depth: 0,
        capabilities: match tpu {
            true => vec![TPU.to_string()],
            false => Vec::new(),
        },
        joined_ms,
        busy: None,
    }
}

/// One cluster of `n` agents (ids from `first`) on two hosts: its tree, its lead, the other
/// host, and each host's agents.
pub struct OneCluster {
    pub tree: Arc<Hierarchy>,
    pub lead: NodeId,
    pub other: NodeId,
    pub mine: Vec<AgentId>,
    pub theirs: Vec<AgentId>,
}

pub fn one_cluster(n: u64, first: u64) -> OneCluster {
    let hosts = [NodeId::new("h1").unwrap(), NodeId::new("h2").unwrap()];
    let members: Vec<Member> = (0..n)
        .map(|i| Member {
            agent: AgentId(first + i),
            host: hosts[(i % 2) as usize].clone(),
            zone: String::new(),
        })
        .collect();
    let tree =
        Arc::new(Hierarchy::build(&members, Shape::default(), |_| Seniority::Seasoned).unwrap());
    let lead = tree
        .cluster(ClusterId(0))
        .unwrap()
        .lead
        .clone()
        .expect("a lead");
    let other = hosts.iter().find(|h| **h != lead).unwrap().clone();
    let of = |h: &NodeId| -> Vec<AgentId> {
        members
            .iter()
            .filter(|m| m.host == *h)
            .map(|m| m.agent)
            .collect()
    };
    OneCluster {
        mine: of(&lead),
        theirs: of(&other),
        tree,
        lead,
        other,
    }
}

pub struct Lead {
    pub node: MeshNode,
    /// The tree's root, whose orders the lead takes.
    pub root: NodeId,
    pub other: NodeId,
    pub theirs: Vec<AgentId>,
    /// The other host's agents it beats as offline.
    pub down: BTreeSet<AgentId>,
    /// What the other host's beats say its agents work on (none: nothing).
    pub busy: Option<Busy>,
    pub now: Time,
}

impl Lead {
    /// The lead of `c`, its own agents without the capability, at `now`. Another node,
    /// `root`, is the root and the sector's coordinator: the lead takes its orders and
    /// reports to it.
    pub fn new(c: OneCluster, now: Time) -> Lead {
        let mut node = MeshNode::new(c.lead.clone(), MeshConfig::default(), now);
        let root = NodeId::new("root").unwrap();
        let mut tree = (*c.tree).clone();
        tree.sectors[0].coordinator = Some(root.clone());
        tree.root = Some(root.clone());
        node.handle(MeshInput::Tree(Arc::new(tree)), now);
        node.handle(
            MeshInput::Agents(c.mine.iter().map(|a| beat(*a, 0, false)).collect()),
            now,
        );
        Lead {
            node,
            root,
            other: c.other,
            theirs: c.theirs,
            down: BTreeSet::new(),
            busy: None,
            now,
        }
    }

    /// Runs `ms` of beats from the other host; what the lead sent meanwhile.
    pub fn run(&mut self, ms: u64) -> Vec<MeshOutput> {
        let mut out = Vec::new();
        let end = self.now.as_millis() + ms;
        while self.now.as_millis() < end {
            self.now = Time::from_millis(self.now.as_millis() + 10);
            if self.now.as_millis().is_multiple_of(300) {
                let agents = self.theirs.iter().map(|a| AgentBeat {
                    state: match self.down.contains(a) {
                        true => AgentState::Offline,
                        false => AgentState::Active,
                    },
                    busy: self.busy.clone(),
                    ..beat(*a, 0, true)
                });
                let (sent_ms, now) = (self.now.as_millis(), self.now);
                let c = ClusterId(0);
                hear_beat(
                    &mut self.node,
                    &self.other,
                    c,
                    sent_ms,
                    agents.collect(),
                    now,
                );
            }
            self.node.handle(MeshInput::Tick, self.now);
            out.extend(drain(&mut self.node));
        }
        out
    }

    /// An ask of the agents with the capability, arriving in 200 ms.
    pub fn ask(&mut self, op: u64) -> MeshEnvelope {
        self.ask_with(op, "ready?")
    }

    /// An ask of `payload` of the agents with the capability, arriving in 200 ms.
    pub fn ask_with(&mut self, op: u64, payload: &str) -> MeshEnvelope {
        let mut envelope = self.node.envelope(Verb::Observe, payload, 2, self.now);
        envelope.op = OpId(op);
        envelope.requires = Some(TPU.into());
        envelope.target_arrival_ms = self.now.as_millis() + 200;
        envelope
    }

    pub fn order(&mut self, op: u64, sample: Option<u32>) {
        let envelope = self.ask(op);
        self.order_of(envelope, sample);
    }

    pub fn order_of(&mut self, envelope: MeshEnvelope, sample: Option<u32>) {
        self.order_with(envelope, sample, false);
    }

    /// An order of `envelope`, limited by a half-open breaker above the cluster if
    /// `limited`.
    pub fn order_with(&mut self, envelope: MeshEnvelope, sample: Option<u32>, limited: bool) {
        let root = self.root.clone();
        self.order_reporting_to(envelope, sample, limited, root);
    }

    /// An order of `envelope` from the root, whose report goes to `report_to` (a sector's
    /// coordinator, say).
    pub fn order_reporting_to(
        &mut self,
        envelope: MeshEnvelope,
        sample: Option<u32>,
        limited: bool,
        report_to: NodeId,
    ) {
        let op = envelope.op.0;
        let order = Order {
            op: OpId(op),
            mode: CascadeMode::Wave,
            root: self.root.clone(),
            report_to,
            scope: Scope::Cluster(ClusterId(0)),
            class: None,
            sample_per_cluster: sample,
            window_ms: 150,
            envelope,
            limited,
            retry_of: None,
        };
        self.node.handle(
            MeshInput::Heard {
                from: self.root.clone(),
                msg: MeshMessage::Order(Box::new(order)),
            },
            self.now,
        );
    }

    /// Runs in steps of 100 ms, up to `within_ms`, until the lead sends readiness probes
    /// (to the other host or its own agents); those it sent. With `answer`, each is answered
    /// READY at once, from its agent's host.
    pub fn next_probes(&mut self, within_ms: u64, answer: bool) -> Vec<Dispatch> {
        let end = self.now.as_millis() + within_ms;
        while self.now.as_millis() < end {
            let out = self.run(100);
            let probes: Vec<Dispatch> = out
                .iter()
                .filter_map(|o| match o {
                    MeshOutput::Send {
                        msg: MeshMessage::Dispatch(d),
                        ..
                    } => Some((**d).clone()),
                    MeshOutput::Deliver(d) => Some(d.clone()),
                    _ => None,
                })
                .filter(|d| d.envelope.verb == Verb::Probe)
                .collect();
            if probes.is_empty() {
                continue;
            }
            for d in probes.iter().filter(|_| answer) {
                let host = self.node.tree().host_of(d.agent).cloned();
                let from = host.filter(|h| h != self.node.id());
                answer_dispatch(&mut self.node, d, from.as_ref(), 2, None, self.now);
            }
            return probes;
        }
        Vec::new()
    }

    pub fn answer(&mut self, d: &Dispatch, conflict: Option<ConflictDetail>) {
        let host = self.other.clone();
        self.answer_from(host, d, conflict);
    }

    pub fn answer_from(&mut self, from: NodeId, d: &Dispatch, conflict: Option<ConflictDetail>) {
        answer_dispatch(&mut self.node, d, Some(&from), 0, conflict, self.now);
    }
}

/// `host`'s beat for `cluster`, sent at `sent_ms` on its clock, heard by `node` at `now`.
pub fn hear_beat(
    node: &mut MeshNode,
    host: &NodeId,
    cluster: ClusterId,
    sent_ms: u64,
    agents: Vec<AgentBeat>,
    now: Time,
) {
    let b = HostBeat {
        host: host.clone(),
        cluster,
        sent_ms,
        agents,
    };
    let msg = MeshMessage::Beat(b);
    node.handle(
        MeshInput::Heard {
            from: host.clone(),
            msg,
        },
        now,
    );
}

/// READY to `d`, from an agent that got it at `at_ms` (on its host's clock) and took
/// `took_ms`.
pub fn ready(d: &Dispatch, at_ms: u64, took_ms: u64) -> MeshMessage {
    MeshMessage::Ack(Box::new(Ack {
        op: d.envelope.op,
        agent: d.agent,
        cluster: d.cluster,
        state: Trinary::Ready,
        arrived_ms: at_ms,
        ready_ms: at_ms + took_ms,
        answer: String::new(),
        conflict: None,
        expired: false,
    }))
}

pub fn dispatches(out: &[MeshOutput]) -> Vec<Dispatch> {
    out.iter()
        .filter_map(|o| match o {
            MeshOutput::Send {
                msg: MeshMessage::Dispatch(d),
                ..
            } => Some((**d).clone()),
            _ => None,
        })
        .collect()
}

/// What the lead put out since, and its report's sent, ready, conflict and rerouted counts.
pub fn drained_counts(lead: &mut Lead) -> (Vec<MeshOutput>, [u32; 4]) {
    let out = drain(&mut lead.node);
    let t = report(&out).expect("the cluster reported").tally;
    (out, [t.sent, t.ready, t.conflict, t.rerouted])
}

pub fn report(out: &[MeshOutput]) -> Option<Report> {
    out.iter().find_map(|o| match o {
        MeshOutput::Send {
            msg: MeshMessage::Report(r),
            ..
        } => Some((**r).clone()),
        _ => None,
    })
}

/// The conflicts resolved in `out`: whose, and how.
pub fn resolved(out: &[MeshOutput]) -> Vec<(AgentId, Resolution)> {
    out.iter()
        .filter_map(|o| match o {
            MeshOutput::ConflictResolved(r) => Some((r.agent, r.how)),
            _ => None,
        })
        .collect()
}

/// Two hosts of 10 agents each (0–9 on p1, 10–19 on p2), in one cluster: their tree, with
/// p2 new to the mesh.
pub struct Pair {
    pub p1: NodeId,
    pub p2: NodeId,
    pub members: Vec<Member>,
    pub tree: Hierarchy,
}

pub fn pair() -> Pair {
    let (p1, p2) = (NodeId::new("p1").unwrap(), NodeId::new("p2").unwrap());
    let members: Vec<Member> = (0..20u64)
        .map(|i| Member {
            agent: AgentId(i),
            host: if i < 10 { p1.clone() } else { p2.clone() },
            zone: String::new(),
        })
        .collect();
    let tree = Hierarchy::build(&members, Shape::default(), |n| match *n == p2 {
        true => Seniority::New,
        false => Seniority::Seasoned,
    })
    .unwrap();
    Pair {
        p1,
        p2,
        members,
        tree,
    }
}

impl Pair {
    /// The pair's tree with its one cluster led by `lead`, its sector coordinated by
    /// `coordinator`, and `root` the root.
    pub fn roles(&self, lead: &NodeId, coordinator: &NodeId, root: &NodeId) -> Arc<Hierarchy> {
        let mut tree = self.tree.clone();
        tree.clusters[0].lead = Some(lead.clone());
        tree.sectors[0].coordinator = Some(coordinator.clone());
        tree.root = Some(root.clone());
        Arc::new(tree)
    }
}

/// A cluster's summary from `lead`: 20 agents, all active, of class A.
pub fn cluster_summary(cluster: u32, sector: u32, lead: &NodeId, now: Time) -> ClusterSummary {
    ClusterSummary {
        cluster: ClusterId(cluster),
        sector: SectorId(sector),
        lead: lead.clone(),
        sent_ms: now.as_millis(),
        agent_count: 20,
        active_count: 20,
        joining_count: 0,
        mean_impedance_ms: 10.0,
        p95_impedance_ms: 20.0,
        leads: LeadHistogram::default(),
        classes: [20, 0, 0, 0, 0, 0],
        anomalies: 0,
        failures: 0,
        breaker_open: false,
        conflicts: Default::default(),
        capabilities: Vec::new(),
        capabilities_more: false,
    }
}

/// A sector's summary from `coordinator`: `agents` of class A in one cluster, `active` of
/// them active.
pub fn sector_summary(
    sector: u32,
    coordinator: &NodeId,
    agents: u32,
    active: u32,
    now: Time,
) -> SectorSummary {
    SectorSummary {
        sector: SectorId(sector),
        coordinator: coordinator.clone(),
        sent_ms: now.as_millis(),
        cluster_count: 1,
        total_agents: agents,
        active_agents: active,
        joining_agents: 0,
        mean_impedance_ms: 10.0,
        p95_impedance_ms: 20.0,
        leads: LeadHistogram::default(),
        hop_ms: 1.0,
        classes: [agents, 0, 0, 0, 0, 0],
        anomalies: 0,
        open_breakers: 0,
        breaker_open: false,
        conflicts: Default::default(),
        escalated: Vec::new(),
        capabilities: Vec::new(),
        capabilities_more: false,
    }
}

/// The root's wave order `op` to sector 0's coordinator (`node`'s envelope, the agents to be
/// ready in 200 ms), reported to the root.
pub fn sector_order(node: &mut MeshNode, op: u64, root: &NodeId, now: Time) -> Order {
    let mut envelope = node.envelope(Verb::Observe, "ready?", 2, now);
    envelope.op = OpId(op);
    envelope.target_arrival_ms = now.as_millis() + 200;
    Order {
        op: OpId(op),
        mode: CascadeMode::Wave,
        root: root.clone(),
        report_to: root.clone(),
        scope: Scope::Sector(SectorId(0)),
        class: None,
        sample_per_cluster: None,
        window_ms: 150,
        envelope,
        limited: false,
        retry_of: None,
    }
}

/// Node `me` holding `tree` from `now`, what it put out on taking it drained.
pub fn node_in(me: &NodeId, cfg: MeshConfig, tree: &Arc<Hierarchy>, now: Time) -> MeshNode {
    let mut node = MeshNode::new(me.clone(), cfg, now);
    node.handle(MeshInput::Tree(tree.clone()), now);
    drain(&mut node);
    node
}

/// An operator's cascade of `verb` and `payload` over the whole mesh, the agents to be ready
/// in 100 ms, given to `node` (the root).
pub fn cascade(node: &mut MeshNode, mode: CascadeMode, verb: Verb, payload: &str, now: Time) {
    let envelope = node.envelope(verb, payload, 2, now);
    let command = Command::Cascade(CascadeCommand {
        budget_ms: Some(100),
        ..CascadeCommand::new(mode, Scope::Global, envelope)
    });
    node.handle(MeshInput::Command { command, tag: 1 }, now);
}

/// The integrity failure (priority 4) the tests escalate.
pub fn corrupt() -> ConflictDetail {
    ConflictDetail::HashMismatch {
        expected: "a".into(),
        received: "b".into(),
    }
}

/// Agent `agent`'s conflict in cluster 0, escalated as its lead heard it at `now`.
pub fn escalated(agent: u64, detail: ConflictDetail, now: Time) -> Escalated {
    Escalated {
        agent: AgentId(agent),
        cluster: ClusterId(0),
        at_ms: now.as_millis(),
        detail,
    }
}

/// `from`'s report of cluster 0 in operation `op`: `tally`, carrying `escalated`; sent after
/// the cluster's own if `late`.
pub fn cluster_report(
    op: u64,
    from: &NodeId,
    tally: Tally,
    escalated: Vec<Escalated>,
    late: bool,
) -> Report {
    Report {
        op: OpId(op),
        scope: Scope::Cluster(ClusterId(0)),
        from: from.clone(),
        tally,
        answers: Vec::new(),
        escalated,
        escalated_more: 0,
        late,
        named: Vec::new(),
    }
}

/// The value mismatch the tests' agents answer with.
pub fn contradiction() -> ConflictDetail {
    ConflictDetail::DataContradiction {
        expected: "b".into(),
        received: "a".into(),
        affects_agents: 1,
    }
}

/// An agent's answer to `d`, heard by `node` at `now`: READY in `took_ms`, or CONFLICT with
/// `conflict`; from another node's agent through `host`, or from one of `node`'s own.
pub fn answer_dispatch(
    node: &mut MeshNode,
    d: &Dispatch,
    host: Option<&NodeId>,
    took_ms: u64,
    conflict: Option<ConflictDetail>,
    now: Time,
) {
    let MeshMessage::Ack(mut ack) = ready(d, now.as_millis(), took_ms) else {
        unreachable!("ready() makes an ack")
    };
    if conflict.is_some() {
        ack.state = Trinary::Conflict;
        ack.conflict = conflict;
    }
    match host {
        Some(from) => {
            let msg = MeshMessage::Ack(ack);
            node.handle(
                MeshInput::Heard {
                    from: from.clone(),
                    msg,
                },
                now,
            )
        }
        None => {
            let reply_to = d.reply_to.clone();
            node.handle(
                MeshInput::AgentDone {
                    ack: *ack,
                    reply_to,
                },
                now,
            )
        }
    }
}

/// One step at `now` of a node with another host's agents: that host's beat of `beats`
/// (every 300 ms), a tick, and every dispatch answered at once, from that host or from the
/// node's own agents: READY, or CONFLICT ([`contradiction`]) where `contradicts` says. The
/// operations that finished.
pub fn step_answering(
    node: &mut MeshNode,
    host: &NodeId,
    beats: &[AgentBeat],
    now: Time,
    contradicts: impl Fn(&Dispatch) -> bool,
) -> Vec<OpResult> {
    if now.as_millis().is_multiple_of(300) {
        hear_beat(
            node,
            host,
            ClusterId(0),
            now.as_millis(),
            beats.to_vec(),
            now,
        );
    }
    node.handle(MeshInput::Tick, now);
    let out = drain(node);
    let mut finished = Vec::new();
    for o in out {
        let (d, from) = match o {
            MeshOutput::Send {
                to,
                msg: MeshMessage::Dispatch(d),
            } if to == *host => (*d, Some(host)),
            MeshOutput::Deliver(d) => (d, None),
            MeshOutput::Finished(r) => {
                finished.push(r);
                continue;
            }
            _ => continue,
        };
        let conflict = contradicts(&d).then(contradiction);
        answer_dispatch(node, &d, from, 5, conflict, now);
    }
    finished
}

/// Everything `node` put out since it was last drained.
pub fn drain(node: &mut MeshNode) -> Vec<MeshOutput> {
    std::iter::from_fn(|| node.poll()).collect()
}

/// The conflicts `out` logs: each agent, and the node that escalated it there (if any).
pub fn conflicts_logged(out: Vec<MeshOutput>) -> Vec<(AgentId, Option<NodeId>)> {
    out.into_iter()
        .filter_map(|o| match o {
            MeshOutput::Conflict(r) => Some((r.agent, r.escalated_by)),
            _ => None,
        })
        .collect()
}

/// The agents in `node`'s routing pool.
pub fn pool(node: &MeshNode) -> BTreeSet<AgentId> {
    node.pool().map(|(_, a)| a).collect()
}
