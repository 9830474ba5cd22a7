//! Operations across the mesh (seed §3): the root starts a cascade in one of three modes,
//! sector coordinators relay it, cluster leads dispatch it to their agents at arrival
//! times and gather their answers in a window, and each level reports to the one above
//! (a wave) or the agents answer the root (parallel). The root decides by the trinary
//! quorum and keeps the KPIs.

use super::{MeshNode, MeshOutput};
use crate::hash::mix;
use crate::mesh::degrade::{self, Mode};
use crate::mesh::gather::{self, Gather, Status};
use crate::mesh::quorum::{self, Decision, QuorumPolicy, Votes};
use crate::mesh::schedule::{self, Want};
use crate::time::Time;
use qs_wire::NodeId;
use qs_wire::mesh::{
    Ack, AgentId, AgentState, AnswerCount, BreakerState, CascadeMode, ClusterId, Control,
    ControlAction, Dispatch, ImpedanceClass, LeadHistogram, MeshEnvelope, MeshMessage, OpId, Order,
    Report, Scope, SectorId, Tally, Trinary,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// An operator's (or the API's) command to the root.
#[derive(Clone, Debug)]
pub enum Command {
    Cascade {
        mode: CascadeMode,
        scope: Scope,
        envelope: MeshEnvelope,
        /// Reach about this many agents in all (an ask's sample).
        sample: Option<u32>,
        /// How far ahead of now the agents are to be ready, milliseconds; `None`: the 95th
        /// percentile of the predicted leads in scope, at most `max_budget_ms`.
        budget_ms: Option<u64>,
        approved: bool,
        automated: bool,
    },
    Freeze {
        scope: Scope,
        frozen: bool,
    },
    Heal {
        scope: Scope,
    },
}

/// Why the root refused a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
pub enum CommandError {
    #[error("this node is not the mesh's root (the root is {root:?})")]
    NotRoot { root: Option<String> },
    #[error(transparent)]
    Mode(#[from] degrade::Refused),
    #[error("the mesh is frozen in {0:?}: thaw it first")]
    Frozen(Scope),
    #[error("no agents in scope {0:?}")]
    NoAgents(Scope),
}

/// One phase of a priority-first cascade (or the only phase of the others).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhaseResult {
    pub class: Option<ImpedanceClass>,
    pub min_rate: f64,
    pub status: Status,
    pub decision: &'static str,
    pub tally: Tally,
    pub latency_ms: f64,
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
    reported: bool,
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
}

#[derive(Clone, Debug)]
pub(crate) struct RootOp {
    mode: CascadeMode,
    scope: Scope,
    envelope: MeshEnvelope,
    sample: Option<u32>,
    budget_ms: Option<u64>,
    phases: Vec<(Option<ImpedanceClass>, f64)>,
    phase: usize,
    started: Time,
    phase_started: Time,
    target: Time,
    window: Duration,
    expect: BTreeSet<Scope>,
    expected_first: usize,
    tally: Tally,
    answers: BTreeMap<String, u32>,
    acks: BTreeSet<AgentId>,
    deadline: Time,
    results: Vec<PhaseResult>,
    root_messages: u32,
    degradation: &'static str,
    tag: u64,
}

/// Every operation in flight at a node, by role.
#[derive(Clone, Debug, Default)]
pub(crate) struct Ops {
    lead: BTreeMap<(OpId, ClusterId), LeadOp>,
    relay: BTreeMap<(OpId, SectorId), RelayOp>,
    root: BTreeMap<OpId, RootOp>,
    sends: BTreeMap<Time, Vec<(OpId, ClusterId, AgentId)>>,
}

/// Most operations a node holds at once in each role.
pub const MAX_OPS: usize = 1_024;

impl Ops {
    pub(crate) fn next_due(&self) -> Option<Time> {
        let sends = self.sends.keys().next().copied();
        let lead = self
            .lead
            .values()
            .filter(|l| !l.reported)
            .map(|l| l.gather.deadline())
            .min();
        let relay = self.relay.values().map(|r| r.deadline).min();
        let root = self.root.values().map(|r| r.deadline).min();
        [sends, lead, relay, root].into_iter().flatten().min()
    }

    fn merge(&mut self, other: Ops) {
        self.lead.extend(other.lead);
        self.relay.extend(other.relay);
        self.root.extend(other.root);
        for (t, v) in other.sends {
            self.sends.entry(t).or_default().extend(v);
        }
    }
}

/// Carries out what is due at `now`.
pub(crate) fn due(node: &mut MeshNode, now: Time) {
    // Taken out so the node can be borrowed while they run.
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
        let late: Vec<(OpId, ClusterId)> = me
            .lead
            .iter()
            .filter(|(_, l)| !l.reported && l.gather.deadline() <= now)
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
        let roots: Vec<OpId> = me
            .root
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for op in roots {
            end_phase(&mut me, node, op, now);
        }
        let added = std::mem::take(&mut node.ops);
        me.merge(added);
        node.ops = me;
    }
}

fn sectors_in(node: &MeshNode, scope: Scope) -> Vec<SectorId> {
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

impl MeshNode {
    pub(crate) fn command(&mut self, c: Command, tag: u64, now: Time) {
        if !self.is_root {
            let root = self.tree.root.as_ref().map(|r| r.to_string());
            self.out.push_back(MeshOutput::Refused {
                tag,
                error: CommandError::NotRoot { root },
            });
            return;
        }
        match c {
            Command::Cascade {
                mode,
                scope,
                envelope,
                sample,
                budget_ms,
                approved,
                automated,
            } => {
                if let Err(error) = self.start(
                    mode, scope, envelope, sample, budget_ms, approved, automated, tag, now,
                ) {
                    self.out.push_back(MeshOutput::Refused { tag, error });
                }
            }
            Command::Freeze { scope, frozen } => {
                let action = match frozen {
                    true => ControlAction::Freeze,
                    false => ControlAction::Thaw,
                };
                self.fan_control(scope, action);
            }
            Command::Heal { scope } => self.fan_control(scope, ControlAction::Heal),
        }
    }

    /// Sends a control to every coordinator in scope (and itself), who pass it on.
    fn fan_control(&mut self, scope: Scope, action: ControlAction) {
        let msg = MeshMessage::Control(Control {
            action,
            scope,
            relayed: false,
        });
        self.inbox.push_back(msg.clone());
        let coordinators: BTreeSet<NodeId> = sectors_in(self, scope)
            .into_iter()
            .filter_map(|s| self.tree.sector(s).and_then(|s| s.coordinator.clone()))
            .collect();
        let me = self.me.clone();
        for co in coordinators.into_iter().filter(|c| *c != me) {
            self.send(co, msg.clone());
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        &mut self,
        mode: CascadeMode,
        scope: Scope,
        mut envelope: MeshEnvelope,
        sample: Option<u32>,
        budget_ms: Option<u64>,
        approved: bool,
        automated: bool,
        tag: u64,
        now: Time,
    ) -> Result<(), CommandError> {
        for f in [Scope::Global, scope] {
            if self.frozen.contains(&f) {
                return Err(CommandError::Frozen(f));
            }
        }
        let in_scope: u32 = sectors_in(self, scope)
            .iter()
            .filter_map(|s| self.sector_summaries.get(s))
            .map(|s| s.total_agents)
            .sum();
        let agents = sample.map_or(in_scope, |n| n.min(in_scope));
        degrade::permit(
            self.mode,
            &degrade::Ask {
                priority: envelope.priority,
                agents,
                mesh_wide: scope == Scope::Global,
                approved,
                automated,
            },
        )?;
        if self.ops.root.len() >= MAX_OPS {
            return Err(CommandError::NoAgents(scope));
        }
        let op = OpId(self.next_id());
        envelope.op = op;
        envelope.created_ms = now.as_millis();
        let phases = match mode {
            CascadeMode::PriorityFirst => vec![
                (Some(ImpedanceClass::D), 0.99),
                (Some(ImpedanceClass::C), 0.98),
                (Some(ImpedanceClass::B), 0.95),
                (Some(ImpedanceClass::A), 0.90),
                (Some(ImpedanceClass::E), 0.85),
            ],
            _ => vec![(None, MeshNode::cascade_mode_window(mode).1)],
        };
        let budget_ms = budget_ms.map(|b| b.min(qs_wire::mesh::MAX_TTL_MS));
        let r = RootOp {
            mode,
            scope,
            envelope,
            sample,
            budget_ms,
            phases,
            phase: 0,
            started: now,
            phase_started: now,
            target: now,
            window: Duration::ZERO,
            expect: BTreeSet::new(),
            expected_first: 0,
            tally: Tally::default(),
            answers: BTreeMap::new(),
            acks: BTreeSet::new(),
            deadline: now,
            results: Vec::new(),
            root_messages: 0,
            degradation: self.mode.name(),
            tag,
        };
        let mut ops = std::mem::take(&mut self.ops);
        ops.root.insert(op, r);
        start_phase(&mut ops, self, op, now);
        self.ops = ops;
        Ok(())
    }
}

fn start_phase(ops: &mut Ops, node: &mut MeshNode, op: OpId, now: Time) {
    let Some(mut r) = ops.root.remove(&op) else {
        return;
    };
    let sectors: Vec<SectorId> = sectors_in(node, r.scope);
    // Seed §6.3, DEGRADED_MODERATE and worse: only healthy sectors take traffic.
    let healthy_only = node.mode.healthy_sectors_only();
    let class = r.phases[r.phase].0;
    // How early to start (seed §3.2: "enough time for the 95th percentile"): the 95th
    // percentile of the predicted leads in scope (of the phase's class, or every class but
    // F, which no sub-second operation waits for), plus the longest two hops down.
    let mut leads = LeadHistogram::default();
    let mut hops: f64 = 0.0;
    for s in sectors.iter().filter_map(|s| node.sector_summaries.get(s)) {
        leads.add(&s.leads);
        hops = hops.max(node.hop(Some(&s.coordinator)) + s.hop_ms);
    }
    let classes: Vec<ImpedanceClass> = match class {
        Some(k) => vec![k],
        None => ImpedanceClass::ALL[..5].to_vec(),
    };
    let lead_p95 = leads.quantile_ms(&classes, 0.95).unwrap_or(0.0) + hops;
    let (window_ms, _) = MeshNode::cascade_mode_window(r.mode);
    let window_ms = window_ms * node.mode.window_factor();
    // An operator's budget is taken as given; otherwise the leads decide, up to the most
    // the mesh compensates.
    let budget = match r.budget_ms {
        Some(ms) => ms as f64,
        None => (lead_p95 + node.cfg.report_slack_ms as f64 / 4.0)
            .clamp(20.0, node.cfg.max_budget_ms as f64),
    };
    r.phase_started = now;
    r.target = now + Duration::from_micros((budget * 1000.0) as u64);
    r.window = Duration::from_millis(window_ms);
    let slack = Duration::from_millis(node.cfg.report_slack_ms);
    r.deadline = r.target + r.window + slack * 3;
    r.tally = Tally::default();
    r.answers.clear();
    r.acks.clear();
    r.expect.clear();
    let mut env = r.envelope.clone();
    env.target_arrival_ms = r.target.as_millis();
    // Lives until this phase's deadline and a second more, counted from its creation.
    env.ttl_ms = (r
        .deadline
        .since(Time::from_millis(env.created_ms))
        .as_millis() as u64)
        .max(1)
        + 1_000;
    // A sample of about n agents: n sectors at most (chosen by the operation's hash), each
    // with its quota, which its coordinator spreads over as few clusters.
    let mut sectors = sectors;
    let sample_per_cluster = r.sample.map(|n| {
        sectors.retain(|s| {
            node.sector_summaries
                .get(s)
                .is_some_and(|x| x.active_agents > 0)
        });
        sectors.sort_by_key(|s| mix(u64::from(s.0) ^ op.0));
        sectors.truncate((n as usize).max(1));
        n.div_ceil(sectors.len().max(1) as u32).max(1)
    });
    for s in sectors {
        let Some(sector) = node.tree.sector(s) else {
            continue;
        };
        let healthy = node.sector_summaries.get(&s).is_none_or(|x| {
            x.total_agents == 0 || f64::from(x.active_agents) >= 0.95 * f64::from(x.total_agents)
        });
        let routable = node
            .sector_summaries
            .get(&s)
            .is_none_or(|x| !x.breaker_open)
            && node.breakers.state(Scope::Global) != BreakerState::Open;
        let Some(co) = sector.coordinator.clone() else {
            continue;
        };
        if !routable || (healthy_only && !healthy) {
            let agents = node.sector_summaries.get(&s).map_or(0, |x| x.total_agents);
            r.tally.targeted += agents;
            r.tally.unreachable += agents;
            continue;
        }
        let sub_scope = match r.scope {
            Scope::Cluster(c) => Scope::Cluster(c),
            _ => Scope::Sector(s),
        };
        match r.mode {
            CascadeMode::Parallel => {
                for c in clusters_in(node, r.scope, s) {
                    if node.tree.cluster(c).is_some_and(|cl| cl.lead.is_some()) {
                        r.expect.insert(Scope::Cluster(c));
                    }
                }
            }
            _ => {
                r.expect.insert(sub_scope);
            }
        }
        let order = Order {
            report_to: node.me.clone(),
            op,
            mode: r.mode,
            root: node.me.clone(),
            scope: sub_scope,
            class,
            sample_per_cluster,
            window_ms,
            envelope: env.clone(),
        };
        r.root_messages += u32::from(co != node.me);
        node.send(co, MeshMessage::Order(Box::new(order)));
    }
    r.expected_first = r.expect.len();
    ops.root.insert(op, r);
}

/// A coordinator (or a lead, for a cluster's scope) gets an order.
pub(crate) fn on_order(node: &mut MeshNode, o: Order, now: Time) {
    match o.scope {
        Scope::Cluster(c) if node.led.contains_key(&c) => lead_order(node, o, c, now),
        Scope::Cluster(c) => {
            // A cluster scope from the root: pass it to the lead.
            if let Some(lead) = node.tree.cluster(c).and_then(|cl| cl.lead.clone())
                && lead != node.me
            {
                node.send(lead, MeshMessage::Order(Box::new(o)));
            }
        }
        Scope::Sector(s) => relay_order(node, o, s, now),
        Scope::Global => {}
    }
}

fn relay_order(node: &mut MeshNode, o: Order, s: SectorId, now: Time) {
    if node.ops.relay.len() >= MAX_OPS {
        return;
    }
    let clusters = clusters_in(node, o.scope, s);
    let target = Time::from_millis(o.envelope.target_arrival_ms);
    let slack = Duration::from_millis(node.cfg.report_slack_ms);
    let mut relay = RelayOp {
        expect: BTreeSet::new(),
        min_rate: MeshNode::cascade_mode_window(o.mode).1,
        tally: Tally::default(),
        answers: BTreeMap::new(),
        deadline: target + Duration::from_millis(o.window_ms) + slack * 2,
        report_to: o.root.clone(),
        scope: o.scope,
    };
    let frozen = node.frozen.contains(&Scope::Sector(s));
    // A sample's quota for this sector: as few clusters as it takes, one agent each at
    // least (chosen by the operation's hash).
    let mut clusters = clusters;
    let mut o = o;
    if let (Some(quota), Scope::Sector(_)) = (o.sample_per_cluster, o.scope) {
        clusters.retain(|c| {
            node.tree
                .cluster(*c)
                .is_some_and(|cl| !cl.agents.is_empty())
        });
        clusters.sort_by_key(|c| mix(u64::from(c.0) ^ o.op.0));
        clusters.truncate((quota as usize).max(1));
        o.sample_per_cluster = Some(quota.div_ceil(clusters.len().max(1) as u32).max(1));
    }
    for c in clusters {
        let Some(cl) = node.tree.cluster(c) else {
            continue;
        };
        if cl.agents.is_empty() {
            continue;
        }
        let lead = cl.lead.clone();
        let open = node
            .cluster_summaries
            .get(&c)
            .is_some_and(|x| x.breaker_open);
        let routable = !frozen && !open;
        match (lead, routable) {
            (Some(lead), true) => {
                let mut sub = o.clone();
                sub.scope = Scope::Cluster(c);
                sub.report_to = node.me.clone();
                if o.mode != CascadeMode::Parallel {
                    relay.expect.insert(Scope::Cluster(c));
                }
                node.send(lead, MeshMessage::Order(Box::new(sub)));
            }
            _ => {
                let n = cl.agents.len() as u32;
                relay.tally.targeted += n;
                relay.tally.unreachable += n;
            }
        }
    }
    if o.mode == CascadeMode::Parallel {
        // Parallel: nothing to gather here; what could not be reached goes to the root.
        if relay.tally.targeted > 0 {
            node.send(
                o.root.clone(),
                MeshMessage::Report(Box::new(Report {
                    op: o.op,
                    scope: Scope::Sector(s),
                    from: node.me.clone(),
                    tally: relay.tally,
                    answers: Vec::new(),
                })),
            );
        }
        return;
    }
    let _ = now;
    let key = (o.op, s);
    node.ops.relay.insert(key, relay);
    if node.ops.relay[&key].expect.is_empty() {
        let mut ops = std::mem::take(&mut node.ops);
        report_relay(&mut ops, node, key);
        node.ops = ops;
    }
}

fn lead_order(node: &mut MeshNode, o: Order, c: ClusterId, now: Time) {
    if node.ops.lead.len() >= MAX_OPS {
        return;
    }
    let target = Time::from_millis(o.envelope.target_arrival_ms);
    let (_, min_rate) = MeshNode::cascade_mode_window(o.mode);
    let mut gather = Gather::new(target, Duration::from_millis(o.window_ms), min_rate);
    let sector = node.led[&c].sector;
    let frozen = [Scope::Global, Scope::Sector(sector), Scope::Cluster(c)]
        .iter()
        .any(|s| node.frozen.contains(s));
    let routable = !frozen && node.breakers.routable(c, sector);
    let weight = o.envelope.weight;
    let requires = o.envelope.requires.clone();
    let led = node.led.get_mut(&c).expect("checked");
    let mut wants: Vec<Want<AgentId>> = Vec::new();
    let mut candidates: Vec<AgentId> = Vec::new();
    let ids: Vec<AgentId> = led.agents.keys().copied().collect();
    for a in ids {
        let Some((z, _)) = led.assess(a, weight) else {
            continue;
        };
        let class = z.class;
        let view = &led.agents[&a];
        if o.class.is_some_and(|k| k != class) {
            continue;
        }
        if let Some(r) = &requires
            && !view.capabilities.iter().any(|c| c == r)
        {
            continue;
        }
        gather.tally_mut().targeted += 1;
        // Route around: down, quarantined, spiking agents, and a breaker open above them.
        if !routable || view.state != AgentState::Active || view.spiking {
            gather.tally_mut().unreachable += 1;
            continue;
        }
        candidates.push(a);
    }
    if let Some(n) = o.sample_per_cluster {
        // The lowest impedance first (seed §4.2: "pick lowest impedance among capable
        // agents"), ties by the operation's hash.
        let mut ranked: Vec<(u64, u64, AgentId)> = candidates
            .iter()
            .map(|a| {
                let lead = led
                    .assess(*a, weight)
                    .map_or(u64::MAX, |(_, l)| l.lead_ms as u64);
                (lead, mix(a.0 ^ o.op.0), *a)
            })
            .collect();
        ranked.sort();
        candidates = ranked.into_iter().map(|(_, _, a)| a).collect();
        let extra = candidates.len().saturating_sub(n as usize) as u32;
        candidates.truncate(n as usize);
        gather.tally_mut().targeted -= extra;
    }
    for a in candidates {
        if let Some((_, lead)) = led.assess(a, weight) {
            wants.push(Want {
                key: a,
                lead_ms: lead.lead_ms,
            });
        }
    }
    let plan = schedule::schedule(now, target, &wants);
    gather.tally_mut().skipped += plan.too_late.len() as u32;
    gather.scheduled(plan.batches.iter().map(|b| b.keys.len()).sum());
    let reply_to = match o.mode {
        CascadeMode::Parallel => o.root.clone(),
        _ => node.me.clone(),
    };
    let report_to = match o.mode {
        CascadeMode::Parallel => o.root.clone(),
        _ => o.report_to.clone(),
    };
    let op = LeadOp {
        gather,
        report_to,
        reply_to,
        mode: o.mode,
        scope: Scope::Cluster(c),
        envelope: o.envelope,
        sent_at: BTreeMap::new(),
        answers: BTreeMap::new(),
        by_agent: BTreeMap::new(),
        reported: false,
    };
    let key = (o.op, c);
    node.ops.lead.insert(key, op);
    for b in plan.batches {
        node.ops
            .sends
            .entry(b.send_at)
            .or_default()
            .extend(b.keys.into_iter().map(|a| (o.op, c, a)));
    }
    if wants.is_empty() {
        let mut ops = std::mem::take(&mut node.ops);
        report_lead(&mut ops, node, key, now);
        node.ops = ops;
    }
}

fn send_one(ops: &mut Ops, node: &mut MeshNode, op: OpId, c: ClusterId, agent: AgentId, now: Time) {
    let Some(l) = ops.lead.get_mut(&(op, c)) else {
        return;
    };
    let Some(host) = node
        .led
        .get(&c)
        .and_then(|led| led.agents.get(&agent))
        .map(|v| v.host.clone())
    else {
        l.gather.dropped();
        return;
    };
    l.gather.sent(agent);
    l.sent_at.insert(agent, now);
    let d = Dispatch {
        agent,
        cluster: c,
        reply_to: l.reply_to.clone(),
        envelope: l.envelope.clone(),
    };
    node.send(host, MeshMessage::Dispatch(Box::new(d)));
    // Parallel: the answers go to the root; the lead reports once all went out.
    if l.mode == CascadeMode::Parallel && l.gather.all_sent() {
        report_lead(ops, node, (op, c), now);
    }
}

/// An agent's answer: at its lead (a wave) or at the root (parallel).
pub(crate) fn on_ack(node: &mut MeshNode, a: Ack, now: Time) {
    let mut ops = std::mem::take(&mut node.ops);
    // A parallel operation's answers are the root's, even where the root leads the cluster.
    let at_lead = ops
        .lead
        .get(&(a.op, a.cluster))
        .is_some_and(|l| l.mode != CascadeMode::Parallel);
    if !at_lead
        && !ops.root.contains_key(&a.op)
        && let Some(led) = node.led.get_mut(&a.cluster)
        && let Some(view) = led.agents.get_mut(&a.agent)
    {
        // An answer after its cluster reported: still a measurement of the agent.
        let link_p50 = led
            .hosts
            .get_mut(&view.host)
            .map_or(0.0, |h| h.link.recent_ms());
        let processing = a.ready_ms.saturating_sub(a.arrived_ms) as f64;
        view.work.record(processing, link_p50);
    }
    if at_lead && let Some(l) = ops.lead.get_mut(&(a.op, a.cluster)) {
        let target = l.gather.target();
        let ready = Time::from_millis(a.ready_ms.max(target.as_millis()));
        let heard = l.gather.answer(a.agent, a.state, ready, now);
        if heard != gather::Heard::Ignored {
            if let Some(led) = node.led.get_mut(&a.cluster)
                && let Some(view) = led.agents.get_mut(&a.agent)
            {
                let host = led.hosts.entry(view.host.clone()).or_default();
                if let Some(sent) = l.sent_at.get(&a.agent) {
                    let delay = a.arrived_ms.saturating_sub(sent.as_millis()) as f64;
                    host.link.record(delay);
                }
                let link_p50 = host.link.recent_ms();
                let processing = a.ready_ms.saturating_sub(a.arrived_ms) as f64;
                view.spiking = view.work.record(processing, link_p50).is_some();
                view.work.outcome(heard == gather::Heard::Counted);
                led.measured = true;
            }
            if heard == gather::Heard::Counted && !a.answer.is_empty() {
                if l.answers.len() < 256 || l.answers.contains_key(&a.answer) {
                    *l.answers.entry(a.answer.clone()).or_default() += 1;
                }
                l.by_agent.insert(a.agent, a.answer.clone());
            }
            if a.state == Trinary::Conflict {
                node.conflict(&a, now);
            }
        }
        let done = l.gather.complete() && !l.reported;
        if done {
            report_lead(&mut ops, node, (a.op, a.cluster), now);
        }
    } else if let Some(r) = ops.root.get_mut(&a.op)
        && r.mode == CascadeMode::Parallel
        && r.acks.insert(a.agent)
    {
        let ready = Time::from_millis(a.ready_ms.max(r.target.as_millis()));
        let deadline = r.target + r.window;
        if now > deadline {
            r.tally.late += 1;
        } else {
            match a.state {
                Trinary::Ready => r.tally.ready += 1,
                Trinary::Transit => r.tally.transit += 1,
                Trinary::Conflict => r.tally.conflict += 1,
            }
            if ready <= deadline {
                r.tally.window_hits += 1;
            }
            if ready.since(r.target) <= Duration::from_millis(gather::ACCURATE_MS) {
                r.tally.predicted_within_50ms += 1;
            }
            if !a.answer.is_empty() && (r.answers.len() < 256 || r.answers.contains_key(&a.answer))
            {
                *r.answers.entry(a.answer.clone()).or_default() += 1;
            }
        }
        if a.state == Trinary::Conflict {
            node.conflict(&a, now);
        }
        maybe_finish_parallel(&mut ops, node, a.op, now);
    }
    node.ops = ops;
}

fn maybe_finish_parallel(ops: &mut Ops, node: &mut MeshNode, op: OpId, now: Time) {
    let Some(r) = ops.root.get(&op) else {
        return;
    };
    let t = &r.tally;
    if r.expect.is_empty() && t.ready + t.transit + t.conflict + t.late >= t.sent {
        end_phase(ops, node, op, now);
    }
}

fn report_lead(ops: &mut Ops, node: &mut MeshNode, key: (OpId, ClusterId), now: Time) {
    let Some(l) = ops.lead.get_mut(&key) else {
        return;
    };
    if l.reported {
        return;
    }
    l.reported = true;
    let l = ops.lead.remove(&key).expect("present");
    let (op, c) = key;
    // Stragglers: a timeout each (seed §6.1, transient network). It lowers the agent's
    // reliability, and what it has taken so far is a lower bound of its processing time.
    // It is no failure for the breakers: only agents that go down are (a late answer is
    // quarantined, not failed).
    let waited_ms = now.as_millis() as f64;
    if let Some(led) = node.led.get_mut(&c) {
        for (a, sent) in &l.sent_at {
            if !l.gather.answered(a)
                && let Some(v) = led.agents.get_mut(a)
            {
                v.work.outcome(false);
                let link_p50 = led
                    .hosts
                    .get_mut(&v.host)
                    .map_or(0.0, |h| h.link.recent_ms());
                v.work
                    .at_least(waited_ms - sent.as_millis() as f64 - link_p50);
            }
        }
        // Seed §6.1 byzantine behaviour: disagreeing with a clear majority, repeatedly.
        if let Some((top, n)) = l.answers.iter().max_by_key(|(_, n)| **n)
            && *n as usize * 5 >= l.by_agent.len() * 4
            && l.by_agent.len() >= 5
        {
            for (a, ans) in &l.by_agent {
                if ans != top
                    && let Some(v) = led.agents.get_mut(a)
                {
                    v.disagreements += 1;
                    if v.disagreements >= degrade::BYZANTINE_AFTER {
                        v.state = AgentState::Quarantined;
                        led.active = None;
                    }
                }
            }
        }
    }
    let mut tally = *l.gather.tally();
    if l.mode == CascadeMode::Parallel {
        // The agents answered the root: report only what this lead could not send.
        tally = Tally {
            targeted: tally.targeted,
            skipped: tally.skipped,
            unreachable: tally.unreachable,
            sent: tally.sent,
            ..Tally::default()
        };
    }
    let report = Report {
        op,
        scope: l.scope,
        from: node.me.clone(),
        tally,
        answers: MeshNode::top_answers(&l.answers),
    };
    node.send(l.report_to.clone(), MeshMessage::Report(Box::new(report)));
}

fn report_relay(ops: &mut Ops, node: &mut MeshNode, key: (OpId, SectorId)) {
    let Some(mut r) = ops.relay.remove(&key) else {
        return;
    };
    r.tally.missing_reports += r.expect.len() as u32;
    let report = Report {
        op: key.0,
        scope: r.scope,
        from: node.me.clone(),
        tally: r.tally,
        answers: MeshNode::top_answers(&r.answers),
    };
    node.send(r.report_to, MeshMessage::Report(Box::new(report)));
}

/// A report from below: at a coordinator (a wave's cluster) or at the root.
pub(crate) fn on_report(node: &mut MeshNode, rep: Report, now: Time) {
    let mut ops = std::mem::take(&mut node.ops);
    let sector = match rep.scope {
        Scope::Cluster(c) => node.tree.cluster(c).map(|cl| cl.sector),
        Scope::Sector(s) => Some(s),
        Scope::Global => None,
    };
    let relay_key = sector.map(|s| (rep.op, s));
    let at_relay = relay_key.is_some_and(|k| {
        ops.relay
            .get(&k)
            .is_some_and(|r| r.expect.contains(&rep.scope))
    });
    if at_relay {
        let k = relay_key.expect("checked");
        let r = ops.relay.get_mut(&k).expect("checked");
        r.expect.remove(&rep.scope);
        r.tally.add(&rep.tally);
        merge_answers(&mut r.answers, &rep.answers);
        // Settled: the clusters still silent could not change the outcome.
        let missing: u32 = r
            .expect
            .iter()
            .filter_map(|s| match s {
                Scope::Cluster(c) => node.cluster_summaries.get(c).map(|x| x.active_count),
                _ => None,
            })
            .sum();
        if r.expect.is_empty() || settled(&r.tally, missing, r.min_rate) {
            report_relay(&mut ops, node, k);
        }
    } else if let Some(r) = ops.root.get_mut(&rep.op) {
        let expected = r.expect.remove(&rep.scope);
        if expected || r.mode == CascadeMode::Parallel {
            r.tally.add(&rep.tally);
            merge_answers(&mut r.answers, &rep.answers);
        }
        let missing: u32 = r
            .expect
            .iter()
            .filter_map(|s| match s {
                Scope::Sector(x) => node.sector_summaries.get(x).map(|x| x.active_agents),
                _ => None,
            })
            .sum();
        let min_rate = r.phases[r.phase].1;
        let early = now >= r.target && settled(&r.tally, missing, min_rate);
        match r.mode {
            CascadeMode::Parallel => maybe_finish_parallel(&mut ops, node, rep.op, now),
            _ if r.expect.is_empty() || early => end_phase(&mut ops, node, rep.op, now),
            _ => {}
        }
    }
    node.ops = ops;
}

/// Whether a tally's outcome is settled with `missing` agents not yet heard of: even if all
/// were sent and none is ready, READY answers are at `min_rate`.
fn settled(t: &Tally, missing: u32, min_rate: f64) -> bool {
    t.sent > 0 && f64::from(t.ready) >= min_rate * f64::from(t.sent + missing)
}

fn merge_answers(into: &mut BTreeMap<String, u32>, from: &[AnswerCount]) {
    for a in from {
        if into.len() < 256 || into.contains_key(&a.answer) {
            *into.entry(a.answer.clone()).or_default() += a.count;
        }
    }
}

/// The root: a phase ended (every report in, or its deadline); the next phase, or the end.
fn end_phase(ops: &mut Ops, node: &mut MeshNode, op: OpId, now: Time) {
    let Some(mut r) = ops.root.remove(&op) else {
        return;
    };
    let mut tally = r.tally;
    tally.missing_reports += r.expect.len() as u32;
    let (class, min_rate) = r.phases[r.phase];
    let answered = tally.ready + tally.transit + tally.conflict;
    // Sent and not answered in the window is "in transit": outcome unknown (seed §1.4).
    let votes = Votes {
        ready: tally.ready,
        transit: tally.transit + tally.sent.saturating_sub(answered),
        conflict: tally.conflict,
    };
    let decision = quorum::decide(votes, &QuorumPolicy::default());
    let out = gather::outcome(&tally, min_rate);
    r.results.push(PhaseResult {
        class,
        min_rate,
        status: out.status,
        decision: decision.name(),
        tally,
        latency_ms: now.since(r.phase_started).as_secs_f64() * 1000.0,
    });
    // KPIs, per phase.
    let k = &mut node.kpis;
    k.sent += u64::from(tally.sent);
    k.answered += u64::from(answered);
    k.window_hits += u64::from(tally.window_hits);
    k.predicted_within_50ms += u64::from(tally.predicted_within_50ms);
    k.conflicts += u64::from(tally.conflict);
    k.skipped += u64::from(tally.skipped);
    k.expired += u64::from(tally.expired);
    r.phase += 1;
    if r.phase < r.phases.len() {
        ops.root.insert(op, r);
        start_phase(ops, node, op, now);
        return;
    }
    let latency_ms = now.since(r.started).as_secs_f64() * 1000.0;
    let mut total = Tally::default();
    for p in &r.results {
        total.add(&p.tally);
    }
    let sectors_short = r.mode == CascadeMode::Wave
        && r.expected_first > 0
        && (r.expected_first - r.expect.len().min(r.expected_first)) * 100 < r.expected_first * 98;
    let status = match (r.mode, sectors_short) {
        (CascadeMode::PriorityFirst, _) => "COMPLETE",
        (_, true) => "FAILED_AT_SECTOR",
        _ => match out.status {
            Status::Success => "SUCCESS",
            Status::Partial => "PARTIAL",
            Status::Failed => "FAILED",
        },
    };
    let final_decision = match r.mode {
        CascadeMode::PriorityFirst => {
            let answered = total.ready + total.transit + total.conflict;
            quorum::decide(
                Votes {
                    ready: total.ready,
                    transit: total.transit + total.sent.saturating_sub(answered),
                    conflict: total.conflict,
                },
                &QuorumPolicy::default(),
            )
        }
        _ => decision,
    };
    let k = &mut node.kpis;
    k.operations += 1;
    if matches!(final_decision, Decision::Proceed { .. }) {
        k.operations_with_quorum += 1;
    }
    if k.cascade_latencies_ms.len() == super::MAX_LATENCIES {
        k.cascade_latencies_ms.pop_front();
    }
    k.cascade_latencies_ms.push_back(latency_ms);
    let result = OpResult {
        op,
        mode: r.mode,
        scope: r.scope,
        status,
        decision: final_decision,
        tally: total,
        latency_ms,
        target_after_ms: r.target.since(r.phase_started).as_secs_f64() * 1000.0,
        answers: MeshNode::top_answers(&r.answers),
        phases: r.results,
        root_messages: r.root_messages,
        degradation: r.degradation,
        tag: r.tag,
    };
    let _ = Mode::Full;
    node.finish(result);
}
