//! An operator's controls as they spread down the tree: freeze, thaw and heal (breakers
//! closed, quarantined agents and conflicts released), sent by the root to the coordinators
//! in scope, passed on by them to their leads, carried out by each, and confirmed by each to
//! the root, which sums what was done into one report for the operator (seed §7.1: "Healing
//! SECTOR-12: 3 agents restarted … circuit breaker reset"); seed §7.2's route-around and
//! reassignment of the slow agents' work, and its capability mapping (`exclude`).

use super::*;
use qs_wire::mesh::{AgentOrder, ControlDone, MAX_ROUTED_NAMED, RoutedAgent};

/// How long the root waits for the nodes in scope to confirm a control (two hops down and
/// one back, with a WAN's tail): past it, the report names who did not.
pub const CONTROL_CONFIRM_MS: u64 = 2_000;
/// Controls awaiting confirmation at once: a newer one ends the oldest's wait.
pub const MAX_PENDING_CONTROLS: usize = 16;
/// Nodes a report names as not confirmed, at most.
pub const MAX_UNCONFIRMED_NAMED: usize = 8;
/// Agents a route-around's report names, at most (the slowest).
pub const MAX_ROUTED_REPORTED: usize = 16;

/// The `most` slowest of `agents`, slowest first, each agent once (at its slowest: a lead
/// under two coordinators confirms through each).
fn slowest(agents: impl IntoIterator<Item = RoutedAgent>, most: usize) -> Vec<RoutedAgent> {
    let mut by_agent: BTreeMap<AgentId, RoutedAgent> = BTreeMap::new();
    for a in agents {
        match by_agent.get(&a.agent) {
            Some(b) if b.impedance_ms >= a.impedance_ms => {}
            _ => {
                by_agent.insert(a.agent, a);
            }
        }
    }
    let mut v: Vec<RoutedAgent> = by_agent.into_values().collect();
    v.sort_by(|a, b| {
        b.impedance_ms
            .total_cmp(&a.impedance_ms)
            .then(a.agent.cmp(&b.agent))
    });
    v.truncate(most);
    v
}

/// What a control did in its scope, as the root reports it to the operator who asked.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ControlReport {
    /// The command's tag (the shell's, for its answer).
    #[serde(skip)]
    pub tag: u64,
    #[serde(rename = "done")]
    pub action: ControlAction,
    pub scope: Scope,
    /// Nodes that carry it out: the root, the coordinators and the leads in scope.
    pub nodes: u32,
    pub confirmed: u32,
    /// Some of those that did not confirm within `CONTROL_CONFIRM_MS` (dead, partitioned, or
    /// on another tree), at most `MAX_UNCONFIRMED_NAMED`.
    pub unconfirmed: Vec<String>,
    pub agents_released: u32,
    pub breakers_closed: u32,
    pub conflicts_released: u32,
    /// Agents a route-around held out of the routing pool, the slowest of them (at most
    /// `MAX_ROUTED_REPORTED`), and its numbers.
    pub agents_routed_around: u32,
    /// Agents on tasks whose hosts a reassignment asked to take the tasks from them, the
    /// slowest of them in `routed`.
    #[serde(skip_serializing_if = "qs_wire::bounds::is_zero")]
    pub agents_reassigned: u32,
    /// An exclusion's (or inclusion's) rule, and the agents it keeps out of its
    /// capability's routing (lets back) in the clusters that confirmed: those with the
    /// capability, now of the class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<qs_wire::mesh::Exclusion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agents_excluded: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routed: Vec<RoutedAgent>,
    #[serde(skip_serializing_if = "qs_wire::bounds::is_zero")]
    pub slower_than_ms: u64,
    #[serde(skip_serializing_if = "qs_wire::bounds::is_zero")]
    pub for_ms: u64,
    /// Nodes on which the scope was frozen before (a thaw or a heal thawed it there).
    pub was_frozen_on: u32,
    pub waited_ms: u64,
}

/// Who confirms a control: a node, and the coordinator that passed it on to it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Hand {
    node: NodeId,
    via: Option<NodeId>,
}

impl PendingControl {
    /// When its wait ends.
    fn deadline(&self) -> Time {
        self.sent + Duration::from_millis(CONTROL_CONFIRM_MS)
    }
}

/// A control the root sent, awaiting its confirmations.
#[derive(Clone, Debug)]
pub(crate) struct PendingControl {
    sent: Time,
    /// Each node that carries it out, and the coordinator that passes it on to it (none:
    /// the root's own, and the coordinators').
    expected: BTreeSet<Hand>,
    heard: BTreeSet<Hand>,
    /// The nodes on which its scope (or a part of it) was frozen before.
    frozen_on: BTreeSet<NodeId>,
    /// The counts summed so far (the rest is filled in at the end).
    report: ControlReport,
}

impl MeshNode {
    /// The root: sends a control to every coordinator in scope (and itself), who pass it on
    /// to their leads, and awaits each one's confirmation.
    pub(super) fn fan_control(&mut self, control: Control, tag: u64, now: Time) {
        let id = self.next_id();
        self.control_sent(id);
        let (action, scope) = (control.action, control.scope);
        let (slower_than_ms, for_ms) = (control.slower_than_ms, control.for_ms);
        let rule = control.rule.clone();
        let msg = MeshMessage::Control(Control {
            relayed: false,
            id,
            root: Some(self.me.clone()),
            ..control
        });
        // Who carries it out: this node, each coordinator in scope, and the leads of the
        // clusters in scope that those coordinators pass it to.
        let mut coordinators: BTreeSet<NodeId> = BTreeSet::new();
        let mut expected = BTreeSet::from([Hand {
            node: self.me.clone(),
            via: None,
        }]);
        for s in ops::sectors_in(self, scope) {
            let Some(sector) = self.tree.sector(s) else {
                continue;
            };
            let Some(co) = sector.coordinator.clone() else {
                continue;
            };
            for cl in sector
                .clusters
                .iter()
                .filter(|cl| self.tree.holds(scope, **cl))
            {
                let lead = self.tree.named_for(Scope::Cluster(*cl));
                if let Some(lead) = lead.filter(|l| **l != co) {
                    expected.insert(Hand {
                        node: lead.clone(),
                        via: Some(co.clone()),
                    });
                }
            }
            expected.insert(Hand {
                node: co.clone(),
                via: None,
            });
            coordinators.insert(co);
        }
        if self.controls.len() >= MAX_PENDING_CONTROLS
            && let Some(oldest) = self.controls.keys().next().copied()
        {
            self.end_control(oldest, now);
        }
        self.controls.insert(
            id,
            PendingControl {
                sent: now,
                expected,
                heard: BTreeSet::new(),
                frozen_on: BTreeSet::new(),
                report: ControlReport {
                    tag,
                    action,
                    scope,
                    nodes: 0,
                    confirmed: 0,
                    unconfirmed: Vec::new(),
                    agents_released: 0,
                    breakers_closed: 0,
                    conflicts_released: 0,
                    agents_routed_around: 0,
                    agents_reassigned: 0,
                    agents_excluded: rule.as_ref().map(|_| 0),
                    rule,
                    routed: Vec::new(),
                    slower_than_ms,
                    for_ms,
                    was_frozen_on: 0,
                    waited_ms: 0,
                },
            },
        );
        self.inbox.push_back((self.me.clone(), msg.clone()));
        let me = self.me.clone();
        for co in coordinators.into_iter().filter(|c| *c != me) {
            self.send(co, msg.clone());
        }
    }

    /// Carries out an operator's control from `from` here, passes it to the leads of the
    /// sectors this node coordinates, and confirms it to the root with what it did. One a
    /// coordinator passed on covers only the clusters in scope that the coordinator
    /// coordinates (a lead under two coordinators hears each for its own); the root's, its
    /// whole scope.
    pub(super) fn control(&mut self, from: &NodeId, c: Control, now: Time) {
        let relayed_by = c.relayed.then_some(from);
        let tree = self.tree.clone();
        let covers = |cl: ClusterId| {
            tree.holds(c.scope, cl)
                && relayed_by.is_none_or(|co| tree.coordinator_of(cl) == Some(co))
        };
        let clusters: Vec<ClusterId> = self.led.keys().copied().filter(|cl| covers(*cl)).collect();
        let mut done = ControlDone::new(c.id, self.me.clone(), relayed_by.cloned(), c.action);
        done.was_frozen = self.mark_frozen(&c, &clusters);
        match c.action {
            ControlAction::Heal => {
                self.heal(&clusters, &mut done, now);
                let released = self.conflicts.release(now, covers);
                done.conflicts_released = released.len() as u32;
                self.resolved(released);
                if relayed_by.is_none() {
                    // The breakers of the sectors it coordinates in scope, and the global one
                    // when the whole mesh is healed (a cluster's or a sector's heal leaves
                    // it: the next summaries would open it again).
                    let sectors: Vec<SectorId> = self.my_sectors.clone();
                    for s in sectors {
                        let held = match c.scope {
                            Scope::Global => true,
                            Scope::Sector(x) => x == s,
                            Scope::Cluster(_) => false,
                        };
                        if held {
                            done.breakers_closed +=
                                u32::from(self.breakers.reset(Scope::Sector(s), now));
                        }
                    }
                    if c.scope == Scope::Global {
                        done.breakers_closed += u32::from(self.breakers.reset(Scope::Global, now));
                    }
                }
            }
            ControlAction::RouteAround => self.route_around(&clusters, &c, &mut done, now),
            ControlAction::Reassign => self.reassign(&clusters, &c, &mut done, now),
            ControlAction::Exclude | ControlAction::Include => {
                done.agents_excluded = self.apply_rule(&c, &clusters);
            }
            ControlAction::Freeze | ControlAction::Thaw => {}
        }
        if !c.relayed {
            for lead in self.leads_below(c.scope) {
                let passed = Control {
                    relayed: true,
                    ..c.clone()
                };
                self.send(lead, MeshMessage::Control(passed));
            }
        }
        // To the root that sent it, if a tree (this one or the one before) names it root;
        // else to this tree's.
        let named = |t: &Hierarchy| t.root.is_some() && t.root == c.root;
        let to = match named(&self.tree) || self.tree_before.as_deref().is_some_and(named) {
            true => c.root.clone(),
            false => self.tree.root.clone(),
        };
        if c.id != 0
            && let Some(root) = to
        {
            self.send(root, MeshMessage::ControlDone(Box::new(done)));
        }
    }

    /// A heal of the led `clusters`: their breakers closed, their quarantined agents
    /// released (back in the pool at their host's next beat), their agents held out of
    /// the pool taken back (at the next beat's integration pass) and their crashed agents'
    /// restarts asked, each agent counted once.
    fn heal(&mut self, clusters: &[ClusterId], done: &mut ControlDone, now: Time) {
        let mut released: BTreeSet<AgentId> = BTreeSet::new();
        for cl in clusters {
            done.breakers_closed += u32::from(self.breakers.reset(Scope::Cluster(*cl), now));
            let Some(l) = self.led.get_mut(cl) else {
                continue;
            };
            l.breaker_probe = None;
            for (a, v) in l.agents.iter_mut() {
                let quarantined = v.state == AgentState::Quarantined;
                if quarantined {
                    v.state = AgentState::Offline;
                    v.disagreements = 0;
                    l.active = None;
                }
                // Held out (routed around, after misses, or after a conflict while
                // integrating), and still so.
                let held = v.held_until.take().is_some_and(|t| t > now);
                if held {
                    v.missed = 0;
                    l.integrating = true;
                }
                if quarantined || held {
                    released.insert(*a);
                }
            }
        }
        // Crashed agents' restarts, asked now (in EMERGENCY too: an operator's heal).
        released.extend(self.restart_crashed(clusters, now));
        done.agents_released += released.len() as u32;
    }

    /// The agents of the led `clusters` whose impedance score is over `slower_than_ms` and
    /// that `pick` takes, as a route-around or a reassignment names them.
    fn slower_than(
        &mut self,
        clusters: &[ClusterId],
        slower_than_ms: u64,
        now: Time,
        pick: impl Fn(&AgentView) -> bool,
    ) -> Vec<RoutedAgent> {
        let mut found = Vec::new();
        for cl in clusters {
            let Some(led) = self.led.get_mut(cl) else {
                continue;
            };
            let picked: Vec<AgentId> = led
                .agents
                .iter()
                .filter(|(_, v)| pick(v))
                .map(|(a, _)| *a)
                .collect();
            for a in picked {
                let Some((z, _)) = led.assess(a, 0.0) else {
                    continue;
                };
                if z.score_ms > slower_than_ms as f64 {
                    let view = &led.agents[&a];
                    found.push(RoutedAgent {
                        agent: a,
                        cluster: *cl,
                        impedance_ms: z.score_ms,
                        busy: view.busy.clone(),
                        busy_for_ms: view.busy_for_ms(now),
                        class: Some(z.class),
                        capabilities: view
                            .capabilities
                            .iter()
                            .take(qs_wire::mesh::MAX_ROUTED_CAPABILITIES)
                            .cloned()
                            .collect(),
                    });
                }
            }
        }
        found
    }

    /// A route-around of the led `clusters` (seed §7.2): their agents in the pool whose
    /// impedance score is over `slower_than_ms`, held out of it for `for_ms` (the integration
    /// pass takes them back after, as settled members). How many.
    fn route_around(
        &mut self,
        clusters: &[ClusterId],
        c: &Control,
        done: &mut ControlDone,
        now: Time,
    ) {
        let until = now + Duration::from_millis(c.for_ms);
        let in_pool = |v: &AgentView| v.admitted && v.state == AgentState::Active;
        let held = self.slower_than(clusters, c.slower_than_ms, now, in_pool);
        for h in &held {
            if let Some(led) = self.led.get_mut(&h.cluster) {
                led.hold_out(h.agent, until);
            }
        }
        done.agents_routed_around = held.len() as u32;
        done.routed = slowest(held, MAX_ROUTED_NAMED);
    }

    /// A reassignment in the led `clusters` (seed §7.2's "reassign the task"): each worker
    /// agent whose impedance score is over `slower_than_ms` and that works on a durable task
    /// (as its host last said), its host asked to take that task from it, for another
    /// worker. The agents asked for (whether their hosts find the task still theirs is
    /// their hosts' to say, in the task's own record).
    fn reassign(&mut self, clusters: &[ClusterId], c: &Control, done: &mut ControlDone, now: Time) {
        let on_task = |v: &AgentView| v.busy.as_ref().and_then(Busy::task_id).is_some();
        let asked = self.slower_than(clusters, c.slower_than_ms, now, on_task);
        for t in &asked {
            let Some(view) = self
                .led
                .get(&t.cluster)
                .and_then(|l| l.agents.get(&t.agent))
            else {
                continue;
            };
            let order = AgentOrder {
                agent: t.agent,
                cluster: t.cluster,
                joined_ms: view.joined_host_ms,
                task: t.busy.as_ref().and_then(Busy::task_id),
            };
            let host = view.host.clone();
            self.send(host, MeshMessage::Reassign(order));
        }
        done.agents_reassigned = asked.len() as u32;
        done.routed = slowest(asked, MAX_ROUTED_NAMED);
    }

    /// The root: a node's confirmation, summed; the report once every node confirmed.
    pub(super) fn on_control_done(&mut self, d: ControlDone, now: Time) {
        let Some(p) = self.controls.get_mut(&d.id) else {
            return; // ended (or never asked here): nothing waits for it
        };
        let hand = Hand {
            node: d.from.clone(),
            via: d.via,
        };
        if !p.expected.contains(&hand) || d.action != p.report.action {
            self.refused_senders += 1;
            return;
        }
        // Each once (a copy the bus delivered again is not counted again).
        if !p.heard.insert(hand) {
            return;
        }
        if d.was_frozen {
            p.frozen_on.insert(d.from);
        }
        let r = &mut p.report;
        r.agents_released = r.agents_released.saturating_add(d.agents_released);
        r.breakers_closed = r.breakers_closed.saturating_add(d.breakers_closed);
        r.conflicts_released = r.conflicts_released.saturating_add(d.conflicts_released);
        r.agents_routed_around = r
            .agents_routed_around
            .saturating_add(d.agents_routed_around);
        r.agents_reassigned = r.agents_reassigned.saturating_add(d.agents_reassigned);
        if let Some(n) = &mut r.agents_excluded {
            *n = n.saturating_add(d.agents_excluded);
        }
        let routed = std::mem::take(&mut r.routed);
        r.routed = slowest(routed.into_iter().chain(d.routed), MAX_ROUTED_REPORTED);
        if p.heard.len() == p.expected.len() {
            let id = d.id;
            self.end_control(id, now);
        }
    }

    /// The root: controls whose wait is over.
    pub(super) fn controls_due(&mut self, now: Time) {
        let due: Vec<u64> = self
            .controls
            .iter()
            .filter(|(_, p)| p.deadline() <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.end_control(id, now);
        }
    }

    /// When the next control's wait ends.
    pub(super) fn next_control_due(&self) -> Option<Time> {
        self.controls.values().map(PendingControl::deadline).min()
    }

    fn end_control(&mut self, id: u64, now: Time) {
        let Some(p) = self.controls.remove(&id) else {
            return;
        };
        let mut report = p.report;
        // Nodes, each once (a lead under two coordinators confirms twice).
        let nodes: BTreeSet<&NodeId> = p.expected.iter().map(|h| &h.node).collect();
        let missing: BTreeSet<&NodeId> = p.expected.difference(&p.heard).map(|h| &h.node).collect();
        report.nodes = nodes.len() as u32;
        report.was_frozen_on = p.frozen_on.len() as u32;
        report.confirmed = (nodes.len() - missing.len()) as u32;
        report.unconfirmed = missing
            .into_iter()
            .take(MAX_UNCONFIRMED_NAMED)
            .map(|n| n.to_string())
            .collect();
        report.waited_ms = now.since(p.sent).as_millis() as u64;
        self.out.push_back(MeshOutput::ControlDone(report));
    }

    /// The leads (but this node) of the clusters in `scope` of the sectors this node
    /// coordinates.
    pub(super) fn leads_below(&self, scope: Scope) -> BTreeSet<NodeId> {
        let clusters = self
            .my_sectors
            .iter()
            .filter_map(|s| self.tree.sector(*s))
            .flat_map(|s| s.clusters.iter().copied());
        clusters
            .filter(|cl| self.tree.holds(scope, *cl))
            .filter_map(|cl| self.tree.named_for(Scope::Cluster(cl)).cloned())
            .filter(|lead| *lead != self.me)
            .collect()
    }
}
