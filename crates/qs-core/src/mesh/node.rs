//! [`MeshNode`]: one node's part in the mesh, sans-IO.
//!
//! Every node is a host of its own agents: it beats to each cluster lead it has agents
//! under, delivers what a lead dispatches to them, and relays their answers. The hierarchy
//! makes some nodes cluster leads (profiles, failure detection, arrival-time dispatch,
//! cluster summaries), some sector coordinators (sector summaries, relaying operations),
//! and one the root (the global view, the degradation mode, operations and their results).
//! Operations themselves are in [`super::node::ops`]'s sibling module `ops`.

use super::breaker::{self, Breakers};
use super::conflict;
use super::degrade::Mode;
use super::hierarchy::Hierarchy;
use super::impedance::{self, Link, Work};
use super::integration::IntegrationConfig;
use crate::time::Time;
use qs_wire::NodeId;
use qs_wire::mesh::{
    Ack, AgentBeat, AgentId, AgentState, Alive, AnswerCount, Busy, CascadeMode, ClusterId,
    ClusterSummary, ConflictCounts, Control, ControlAction, Dispatch, HostBeat, ImpedanceClass,
    LeadHistogram, MeshEnvelope, MeshMessage, OpId, Scope, SectorId, SectorSummary,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

mod batch;
mod beats;
pub(crate) use beats::Hop;
mod kpis;
pub use kpis::{Incidents, Kpis, MAX_LATENCIES, Recovered};
mod conflicts;
mod control;
mod crash;
mod exclude;
mod freeze;
pub use control::{CONTROL_CONFIRM_MS, ControlReport};
pub use crash::{AgentCrash, CRASH_AFTER_MS, CRASH_AGAIN_WITHIN_MS};
mod handover;
mod inbox;
mod integrate;
mod led;
mod mode;
pub use led::LedAgent;
pub(crate) use led::{AgentView, HostLink, Led, ProbeOut};
mod ops;
mod probe;
pub use probe::BREAKER_PROBE_AGENTS;
mod summaries;
mod tree_change;
pub use ops::{
    CascadeCommand, Command, CommandError, MAX_QUEUE_WAIT_MS, MAX_QUEUED, OpResult, PhaseResult,
    Quarantined, QueuedOp, QueuedView, RoutedAround,
};

/// The mesh's timings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MeshConfig {
    /// A host's beat to each of its cluster leads.
    pub beat_ms: u64,
    /// A host silent this long is dead and its agents offline: with the 300 ms beat and
    /// a check at each beat, a death is known within 1 s (650 + 300 ms), and one lost
    /// beat (a 600 ms gap) is no death.
    pub dead_after_ms: u64,
    /// Full cluster and sector summaries, with the impedance figures (seed §8.2: every
    /// 5 s); between them, leads and coordinators send [`Alive`] beats with their counts.
    pub summary_ms: u64,
    /// The longest lead time an operation compensates (seed §8.3: 0 to 1,000 ms).
    pub max_budget_ms: u64,
    /// What a level waits beyond its children's deadline for their reports.
    pub report_slack_ms: u64,
    /// How agents that joined lately enter the routing pool (seed §10.2).
    pub integration: IntegrationConfig,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            beat_ms: 300,
            dead_after_ms: 650,
            summary_ms: 5_000,
            max_budget_ms: 1_000,
            report_slack_ms: 100,
            integration: IntegrationConfig::default(),
        }
    }
}

/// What goes into the machine.
#[derive(Clone, Debug)]
pub enum MeshInput {
    /// The hierarchy, rebuilt by the shell when membership or liveness changed.
    Tree(Arc<Hierarchy>),
    /// This node's own agents as it sees them now (registered, their state and profile).
    Agents(Vec<AgentBeat>),
    /// A message from another node (or this one), with the node that sent it (the shell
    /// checked its signature): what a message says of its sender must be true of it.
    Heard { from: NodeId, msg: MeshMessage },
    /// A local agent answered a dispatch.
    AgentDone { ack: Ack, reply_to: NodeId },
    /// An operator's command (at the root), with a tag its result carries back.
    Command { command: Command, tag: u64 },
    /// The capability mapping as the shell last read it from the durable store a root
    /// writes it to ([`MeshOutput::Rules`]): a root that changed none since it became the
    /// root takes it, a node that becomes the root starts from it, and a node whose notices
    /// lapsed falls back on it.
    Rules(Vec<qs_wire::mesh::Exclusion>),
    /// Nothing happened; time passed.
    Tick,
}

/// What the shell carries out.
#[derive(Clone, Debug)]
pub enum MeshOutput {
    Send {
        to: NodeId,
        msg: MeshMessage,
    },
    /// Hand this to the local agent now.
    Deliver(Dispatch),
    Finished(OpResult),
    /// The root queued the command tagged `tag` (DEGRADED_MODERATE): it runs when the mode
    /// allows, and ends `Finished` (or `Refused`) then.
    Queued(ops::QueuedOp),
    /// The root refused the command tagged `tag` (`op`: a queued operation it did not run
    /// after all).
    Refused {
        tag: u64,
        op: Option<qs_wire::mesh::OpId>,
        error: CommandError,
    },
    /// Append to the ledger's conflict log.
    Conflict(conflict::Record),
    /// Append to the ledger: a conflict resolved.
    ConflictResolved(conflict::Resolved),
    Breaker(breaker::Change),
    /// The mesh's mode changed (seed §6.3): at the root, as it computed it; elsewhere, as
    /// the root's notice says (or the notice lapsed). The shell alerts its operators and
    /// records it.
    ModeChanged {
        from: Mode,
        to: Mode,
        active_agents: u32,
        total_agents: u32,
    },
    /// A lead routes around an agent that missed operations in a row (the shell logs it).
    RoutedAround(ops::RoutedAround),
    /// Seed §6.1's AGENT_CRASH, at a lead: an agent offline past `CRASH_AFTER_MS` while its
    /// host lives (its host is asked to restart it); the shell records it.
    AgentCrashed(crash::AgentCrash),
    /// Seed §6.1's BYZANTINE_BEHAVIOR, at a lead: an agent quarantined for disagreeing with
    /// its cluster's clear majority; the shell alerts and records it.
    Quarantined(ops::Quarantined),
    /// At a host: restart this agent of it, as its lead asks (a worker agent is disconnected,
    /// for its supervisor to start again), if it is still the registration its lead knows.
    Restart(qs_wire::mesh::AgentOrder),
    /// At a host: take the task this worker agent holds from it, for another worker (seed
    /// §7.2's "reassign the task", an operator's), if it is still the registration its lead
    /// knows.
    Reassign(qs_wire::mesh::AgentOrder),
    /// At the root, after an exclusion or inclusion: store the capability mapping durably
    /// (and hand it back as [`MeshInput::Rules`] when read).
    Rules(Vec<qs_wire::mesh::Exclusion>),
    /// A control's report (freeze, thaw, heal), at the root, once every node in scope
    /// confirmed it or `CONTROL_CONFIRM_MS` passed.
    ControlDone(control::ControlReport),
    /// A node fell silent: a host of a led cluster (past `dead_after_ms`; its agents are
    /// offline), a cluster's lead (at its coordinator), or a sector's coordinator (at the
    /// root): every level beats at `beat_ms` and is lost after `dead_after_ms`. The shell
    /// tells the membership, which elects again.
    HostLost {
        scope: Scope,
        host: NodeId,
    },
}

/// One node's part in the mesh.
#[derive(Debug)]
pub struct MeshNode {
    pub(crate) me: NodeId,
    pub(crate) cfg: MeshConfig,
    pub(crate) tree: Arc<Hierarchy>,
    /// The hierarchy before the last change: a handover comes from an agent's lead in it.
    pub(crate) tree_before: Option<Arc<Hierarchy>>,
    /// When the tree last changed: what the tree before named orders only a moment after.
    pub(crate) tree_changed_at: Time,
    /// Views to hand over at the next beats, by the agents' new lead and cluster.
    pub(crate) handovers: BTreeMap<(NodeId, ClusterId), qs_wire::mesh::Handover>,
    /// Beats at which they still go out (the last send empties `handovers`).
    pub(crate) handover_sends_left: u8,
    /// Handed views and conflicts taken since the last tree (former lead, agent, and the
    /// conflict's operation; none for the agent's view).
    pub(crate) handed_taken: BTreeSet<(NodeId, AgentId, Option<OpId>)>,
    pub(crate) local: Vec<AgentBeat>,
    /// This node's agents by cluster, as its beats carry them (rebuilt when either changes).
    pub(crate) beat_groups: Option<BTreeMap<ClusterId, Vec<AgentBeat>>>,
    pub(crate) beat_seq: u64,
    /// This node's roles in the current hierarchy.
    pub(crate) my_sectors: Vec<SectorId>,
    /// Sectors whose full summary went to the current root (else the next beat sends one).
    pub(crate) summarized: BTreeSet<SectorId>,
    pub(crate) is_root: bool,
    pub(crate) beat_full_left: u8,
    pub(crate) next_beat: Time,
    pub(crate) next_summary: Time,
    pub(crate) led: BTreeMap<ClusterId, Led>,
    pub(crate) cluster_summaries: BTreeMap<ClusterId, ClusterSummary>,
    /// When each cluster's lead was last heard (a coordinator's failure detection).
    pub(crate) lead_heard: BTreeMap<ClusterId, Time>,
    /// When each sector's coordinator was last heard (the root's).
    pub(crate) coordinator_heard: BTreeMap<SectorId, Time>,

    pub(crate) sector_summaries: BTreeMap<SectorId, SectorSummary>,
    /// One-way delay to each node that sent us a timestamped message, milliseconds (EWMA).
    pub(crate) hop_ms: BTreeMap<NodeId, Hop>,
    pub(crate) ops: ops::Ops,
    pub(crate) breakers: Breakers,
    pub(crate) opened_at: BTreeMap<Scope, Time>,
    pub(crate) conflicts: conflict::Log,
    /// Conflicts of priority 4 from late reports, for the root with each sector's next
    /// summaries (at most `MAX_ESCALATED` a sector).
    pub(crate) late_for_root: BTreeMap<SectorId, Vec<ops::ForRoot>>,
    /// At the root: the late conflicts taken from sector summaries lately (sector,
    /// operation, agent, when its lead heard it), so a later copy is not taken again.
    pub(crate) late_taken: BTreeMap<(SectorId, OpId, AgentId, u64), Time>,
    pub(crate) frozen: BTreeSet<Scope>,
    /// The capability mapping's rules (see `exclude`), held as the freezes are; the set the
    /// durable store holds, as last read; whether this node changed the rules since it
    /// became the root.
    pub(crate) excluded: BTreeSet<qs_wire::mesh::Exclusion>,
    pub(crate) rules_stored: Option<BTreeSet<qs_wire::mesh::Exclusion>>,
    pub(crate) rules_set_here: bool,
    /// Orders gathered to go one message per node (see `send_order`), while some are.
    pub(crate) order_batch: Option<BTreeMap<NodeId, Vec<qs_wire::mesh::Order>>>,
    /// At a lead: the agents it took for crashed lately, and when (an agent restarted
    /// joins anew, with a new view: its crash history is kept here).
    pub(crate) crashed_lately: BTreeMap<AgentId, Time>,
    /// At the root: controls sent, awaiting their confirmations, by id.
    pub(crate) controls: BTreeMap<u64, control::PendingControl>,
    pub(crate) kpis: Kpis,
    /// The mesh's mode: the root's own, another node's as the root's notices say it.
    pub(crate) mode: Mode,
    /// Off the root: when the last notice of the mode was taken.
    pub(crate) mode_heard: Option<Time>,
    /// The newest notice seen (its `sent_ms`, on the root's clock), and the counts the last
    /// one taken said.
    pub(crate) mode_seen_ms: Option<u64>,
    pub(crate) mode_counts: (u32, u32),
    /// Whether the mode held came from a root's notice (not this node's own reckoning).
    pub(crate) mode_from_notice: bool,
    /// When this node last became the root: it keeps the mode it held until its sector
    /// summaries come (or a while passed).
    pub(crate) root_since: Option<Time>,
    /// At the root: when the mode is next announced, if not FULL, and how many beats more
    /// announce a change.
    pub(crate) next_mode_notice: Time,
    pub(crate) mode_announcements_left: u8,
    /// What the root's notices say of the frozen scopes, and which controls they follow.
    pub(crate) freeze_sync: freeze::FreezeSync,
    pub(crate) last_observed: Option<Time>,
    pub(crate) out: VecDeque<MeshOutput>,
    pub(crate) inbox: VecDeque<(NodeId, MeshMessage)>,
    pub(crate) next_id: u64,
    pub(crate) expired: u64,
    /// Messages that spoke for another node than their sender (refused).
    pub(crate) refused_senders: u64,
    /// Answers taken after their gather closed (`ops::late`).
    pub(crate) late_answers: u64,
}

impl MeshNode {
    pub fn new(me: NodeId, cfg: MeshConfig, now: Time) -> MeshNode {
        MeshNode {
            me,
            cfg,
            tree: Arc::new(Hierarchy::default()),
            tree_before: None,
            tree_changed_at: now,
            handovers: BTreeMap::new(),
            handover_sends_left: 0,
            handed_taken: BTreeSet::new(),
            local: Vec::new(),
            beat_groups: None,
            beat_seq: 0,
            my_sectors: Vec::new(),
            summarized: BTreeSet::new(),
            is_root: false,
            beat_full_left: 3,
            next_beat: now,
            next_summary: now + Duration::from_millis(cfg.summary_ms),
            led: BTreeMap::new(),
            cluster_summaries: BTreeMap::new(),
            lead_heard: BTreeMap::new(),
            coordinator_heard: BTreeMap::new(),

            sector_summaries: BTreeMap::new(),
            hop_ms: BTreeMap::new(),
            ops: ops::Ops::default(),
            breakers: Breakers::default(),
            opened_at: BTreeMap::new(),
            conflicts: conflict::Log::default(),
            late_for_root: BTreeMap::new(),
            late_taken: BTreeMap::new(),
            frozen: BTreeSet::new(),
            excluded: BTreeSet::new(),
            rules_stored: None,
            rules_set_here: false,
            order_batch: None,
            controls: BTreeMap::new(),
            crashed_lately: BTreeMap::new(),
            kpis: Kpis::default(),
            mode: Mode::Full,
            mode_heard: None,
            mode_seen_ms: None,
            mode_counts: (0, 0),
            mode_from_notice: false,
            root_since: None,
            next_mode_notice: now,
            mode_announcements_left: 0,
            freeze_sync: freeze::FreezeSync::default(),
            last_observed: None,
            out: VecDeque::new(),
            inbox: VecDeque::new(),
            next_id: 0,
            expired: 0,
            refused_senders: 0,
            late_answers: 0,
        }
    }

    pub fn id(&self) -> &NodeId {
        &self.me
    }

    pub fn handle(&mut self, input: MeshInput, now: Time) {
        match input {
            MeshInput::Tree(t) => {
                self.set_tree(t, now);
                self.beat_groups = None;
            }
            MeshInput::Agents(a) => {
                if a != self.local {
                    self.local = a;
                    self.beat_groups = None;
                }
            }
            MeshInput::Heard { from, msg } => self.inbox.push_back((from, msg)),
            MeshInput::AgentDone { ack, reply_to } => {
                self.send(reply_to, MeshMessage::Ack(Box::new(ack)));
            }
            MeshInput::Command { command, tag } => self.command(command, tag, now),
            MeshInput::Rules(rules) => self.stored_rules(rules),
            MeshInput::Tick => {}
        }
        self.work(now);
    }

    pub fn poll(&mut self) -> Option<MeshOutput> {
        self.out.pop_front()
    }

    /// The earliest time something is due.
    pub fn poll_timeout(&self) -> Time {
        // Summaries go out with beats, so the beat is the clock.
        let mut t = self.next_beat;
        if let Some(d) = self.ops.next_due() {
            t = t.min(d);
        }
        if let Some(d) = self.breakers.next_due() {
            t = t.min(d);
        }
        if let Some(d) = self.next_control_due() {
            t = t.min(d);
        }
        t
    }

    /// Operations queued at the root (DEGRADED_MODERATE), oldest first.
    pub fn queued(&self, now: Time) -> Vec<ops::QueuedView> {
        ops::queue_view(&self.ops, now)
    }

    pub fn kpis(&self) -> &Kpis {
        &self.kpis
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn tree(&self) -> &Arc<Hierarchy> {
        &self.tree
    }

    pub fn breakers(&self) -> &Breakers {
        &self.breakers
    }

    pub fn conflicts(&self) -> &conflict::Log {
        &self.conflicts
    }

    pub fn sector_summaries(&self) -> &BTreeMap<SectorId, SectorSummary> {
        &self.sector_summaries
    }

    pub fn cluster_summaries(&self) -> &BTreeMap<ClusterId, ClusterSummary> {
        &self.cluster_summaries
    }

    pub fn frozen(&self) -> &BTreeSet<Scope> {
        &self.frozen
    }

    /// Messages dropped past their time to live.
    pub fn expired(&self) -> u64 {
        self.expired
    }

    /// Answers taken after their gather closed: as late, their conflicts logged.
    pub fn late_answers(&self) -> u64 {
        self.late_answers
    }

    pub(crate) fn send(&mut self, to: NodeId, msg: MeshMessage) {
        match to == self.me {
            true => self.inbox.push_back((self.me.clone(), msg)),
            false => self.out.push_back(MeshOutput::Send { to, msg }),
        }
    }

    fn work(&mut self, now: Time) {
        let mut guard = 0usize;
        while let Some((from, m)) = self.inbox.pop_front() {
            self.heard(from, m, now);
            guard += 1;
            if guard > 1_000_000 {
                break;
            }
        }
        if now >= self.next_beat {
            self.send_handovers();
            self.beat(now);
            // Its own agents' beat, when it leads their cluster, before it summarizes.
            while let Some((from, m)) = self.inbox.pop_front() {
                self.heard(from, m, now);
            }
            self.next_beat = now + Duration::from_millis(self.cfg.beat_ms);
            self.detect(now);
            self.crashes(now);
            self.lapse_mode(now);
            // Seed §6.3's EMERGENCY halts automated operations: no agent is probed into the
            // routing pool.
            if self.mode != Mode::Emergency {
                self.integrate(now);
            }
            ops::prune_late(self, now);
            // A lead's summary is its beat to its coordinator too: every beat, with the
            // aggregate recomputed once a summary period.
            let recompute = now >= self.next_summary;
            self.summarize_clusters(now, recompute);
            self.summarize_sectors(now, recompute);
            if recompute {
                self.next_summary = now + Duration::from_millis(self.cfg.summary_ms);
            }
            // The mode is new: queued operations it lets through start.
            ops::drain_queue(self, now);
        }
        if self.breakers.next_due().is_some_and(|d| d <= now) {
            self.breakers.tick(now);
            self.probe_breakers(now);
        }
        for ch in self.breakers.drain_changes() {
            self.note_breaker(ch, now);
        }
        if self.ops.next_due().is_some_and(|d| d <= now) {
            ops::due(self, now);
        }
        self.controls_due(now);
        while let Some((from, m)) = self.inbox.pop_front() {
            self.heard(from, m, now);
        }
    }

    fn note_breaker(&mut self, ch: breaker::Change, now: Time) {
        match ch.state {
            qs_wire::mesh::BreakerState::Open => {
                self.opened_at.entry(ch.scope).or_insert(now);
            }
            qs_wire::mesh::BreakerState::Closed => {
                if let Some(t) = self.opened_at.remove(&ch.scope) {
                    let open_ms = now.since(t).as_millis() as u64;
                    self.kpis.recovered.closed(ch.scope, open_ms);
                }
            }
            qs_wire::mesh::BreakerState::HalfOpen => {}
        }
        self.out.push_back(MeshOutput::Breaker(ch));
    }

    /// The typical one-way delay to a child: the median of its last samples, so a delivery
    /// in the tail does not make every operation start late.
    pub(crate) fn hop(&self, to: Option<&NodeId>) -> f64 {
        to.and_then(|n| self.hop_ms.get(n)).map_or(0.0, Hop::median)
    }

    /// All agents and active agents, from the sector summaries (the root's view).
    pub fn global_counts(&self) -> (u32, u32) {
        self.sector_summaries
            .values()
            .fold((0u32, 0u32), |(t, a), s| {
                (
                    t.saturating_add(s.total_agents),
                    a.saturating_add(s.active_agents),
                )
            })
    }

    /// Active agents not yet in the routing pool, from the sector summaries (the root's view).
    pub fn global_joining(&self) -> u32 {
        let s = self.sector_summaries.values();
        s.map(|s| s.joining_agents.min(s.active_agents))
            .fold(0u32, u32::saturating_add)
    }

    pub(crate) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        (crate::hash::of_str(self.me.as_str()) & 0xffff_ffff_0000_0000) | self.next_id
    }

    pub(crate) fn finish(&mut self, r: OpResult) {
        self.out.push_back(MeshOutput::Finished(r));
    }

    /// Top answers of a map, at most [`qs_wire::mesh::MAX_ANSWERS`].
    pub(crate) fn top_answers(map: &BTreeMap<String, u32>) -> Vec<AnswerCount> {
        let mut v: Vec<AnswerCount> = map
            .iter()
            .map(|(a, c)| AnswerCount {
                answer: a.clone(),
                count: *c,
            })
            .collect();
        v.sort_by(|a, b| b.count.cmp(&a.count).then(a.answer.cmp(&b.answer)));
        v.truncate(qs_wire::mesh::MAX_ANSWERS);
        v
    }

    /// A fresh envelope from this node (the root of an operation).
    pub fn envelope(
        &mut self,
        verb: qs_wire::mesh::Verb,
        payload: &str,
        priority: u8,
        now: Time,
    ) -> MeshEnvelope {
        MeshEnvelope {
            id: self.next_id(),
            op: OpId(0),
            causation: None,
            created_ms: now.as_millis(),
            target_arrival_ms: now.as_millis(),
            ttl_ms: 10_000,
            priority,
            weight: 0.0,
            verb,
            payload: payload.to_owned(),
            content_hash: super::content_hash(payload),
            requires: None,
        }
    }

    pub(crate) fn cascade_mode_window(mode: CascadeMode) -> (u64, f64) {
        // Seed §3.3: a wave gathers agents at 0.95, parallel at 0.90 in a 1,000 ms window;
        // the window here is past the target arrival, which the root sets from the
        // impedance summaries.
        match mode {
            CascadeMode::Wave | CascadeMode::PriorityFirst => (150, 0.95),
            CascadeMode::Parallel => (150, 0.90),
        }
    }
}
