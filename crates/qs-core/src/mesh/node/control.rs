//! An operator's controls as they spread down the tree: freeze, thaw and heal (breakers
//! closed, quarantined agents and conflicts released), sent by the root to the coordinators
//! in scope, passed on by them to their leads, carried out by each, and confirmed by each to
//! the root, which sums what was done into one report for the operator (seed §7.1: "Healing
//! SECTOR-12: 3 agents restarted … circuit breaker reset").

use super::*;
use qs_wire::mesh::ControlDone;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// How long the root waits for the nodes in scope to confirm a control (two hops down and
/// one back, with a WAN's tail): past it, the report names who did not.
pub const CONTROL_CONFIRM_MS: u64 = 2_000;
/// Controls awaiting confirmation at once: a newer one ends the oldest's wait.
pub const MAX_PENDING_CONTROLS: usize = 16;
/// Nodes a report names as not confirmed, at most.
pub const MAX_UNCONFIRMED_NAMED: usize = 8;

/// What a control did in its scope, as the root reports it to the operator who asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
    /// Agents a route-around held out of the routing pool, and its numbers.
    pub agents_routed_around: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub slower_than_ms: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub for_ms: u64,
    /// Nodes on which the scope was frozen before (a thaw or a heal thawed it there).
    pub was_frozen_on: u32,
    pub waited_ms: u64,
}

/// A control the root sent, awaiting its confirmations.
#[derive(Clone, Debug)]
pub(crate) struct PendingControl {
    sent: Time,
    deadline: Time,
    expected: BTreeSet<NodeId>,
    heard: BTreeSet<NodeId>,
    /// The counts summed so far (the rest is filled in at the end).
    report: ControlReport,
}

impl MeshNode {
    /// The root: sends a control to every coordinator in scope (and itself), who pass it on
    /// to their leads, and awaits each one's confirmation.
    pub(super) fn fan_control(&mut self, control: Control, tag: u64, now: Time) {
        let id = self.next_id();
        let (action, scope) = (control.action, control.scope);
        let msg = MeshMessage::Control(Control {
            relayed: false,
            id,
            ..control
        });
        // Who carries it out: this node, each coordinator in scope, and the leads of the
        // clusters in scope that those coordinators pass it to.
        let mut coordinators: BTreeSet<NodeId> = BTreeSet::new();
        let mut expected = BTreeSet::from([self.me.clone()]);
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
                expected.extend(self.tree.named_for(Scope::Cluster(*cl)).cloned());
            }
            coordinators.insert(co);
        }
        expected.extend(coordinators.iter().cloned());
        if self.controls.len() >= MAX_PENDING_CONTROLS
            && let Some(oldest) = self.controls.keys().next().copied()
        {
            self.end_control(oldest, now);
        }
        let deadline = now + Duration::from_millis(CONTROL_CONFIRM_MS);
        self.controls.insert(
            id,
            PendingControl {
                sent: now,
                deadline,
                expected,
                heard: BTreeSet::new(),
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
                    slower_than_ms: control.slower_than_ms,
                    for_ms: control.for_ms,
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

    /// Carries out an operator's control here, passes it to the leads of the sectors this
    /// node coordinates, and confirms it to the root with what it did.
    pub(super) fn control(&mut self, c: Control, now: Time) {
        let mut done = ControlDone {
            id: c.id,
            from: self.me.clone(),
            action: c.action,
            agents_released: 0,
            breakers_closed: 0,
            conflicts_released: 0,
            agents_routed_around: 0,
            was_frozen: false,
        };
        match c.action {
            ControlAction::Freeze => {
                done.was_frozen = !self.frozen.insert(c.scope);
            }
            ControlAction::Thaw => {
                done.was_frozen = self.frozen.remove(&c.scope);
            }
            ControlAction::Heal => {
                done.was_frozen = self.frozen.remove(&c.scope);
                self.heal(c.scope, &mut done, now);
            }
            ControlAction::RouteAround => {
                done.agents_routed_around = self.route_around(&c, now);
            }
        }
        if !c.relayed {
            for lead in self.leads_below(c.scope) {
                self.send(lead, MeshMessage::Control(Control { relayed: true, ..c }));
            }
        }
        if c.id != 0
            && let Some(root) = self.tree.root.clone()
        {
            self.send(root, MeshMessage::ControlDone(Box::new(done)));
        }
    }

    /// A heal here: the breakers of the led clusters in scope closed, their quarantined
    /// agents released (back in the pool at their host's next beat), every conflict in
    /// scope released (an operator's review) with the notices escalated here about them, and
    /// the scope's and the global breaker closed.
    fn heal(&mut self, scope: Scope, done: &mut ControlDone, now: Time) {
        let clusters: Vec<ClusterId> = self.led.keys().copied().collect();
        for cl in clusters {
            if !self.tree.holds(scope, cl) {
                continue;
            }
            done.breakers_closed += u32::from(self.breakers.reset(Scope::Cluster(cl), now));
            let Some(l) = self.led.get_mut(&cl) else {
                continue;
            };
            l.breaker_probe = None;
            for v in l.agents.values_mut() {
                if v.state == AgentState::Quarantined {
                    v.state = AgentState::Offline;
                    v.disagreements = 0;
                    done.agents_released += 1;
                    l.active = None;
                }
                // Held out (routed around, or after a conflict while integrating): back in
                // the pool at the next beat's integration pass.
                if v.held_until.take().is_some() {
                    v.missed = 0;
                    done.agents_released += 1;
                    l.integrating = true;
                }
            }
        }
        let tree = &self.tree;
        let released = self.conflicts.release(now, |cl| tree.holds(scope, cl));
        done.conflicts_released = released.len() as u32;
        self.resolved(released);
        if !matches!(scope, Scope::Cluster(_)) {
            done.breakers_closed += u32::from(self.breakers.reset(scope, now));
        }
        done.breakers_closed += u32::from(self.breakers.reset(Scope::Global, now));
    }

    /// A route-around here (seed §7.2): the agents of the led clusters in scope, in the pool,
    /// whose impedance score is over `slower_than_ms`, held out of it for `for_ms` (the
    /// integration pass takes them back after, as settled members). How many.
    fn route_around(&mut self, c: &Control, now: Time) -> u32 {
        let until = now + Duration::from_millis(c.for_ms);
        let mut held = 0;
        for (cl, led) in self.led.iter_mut() {
            if !self.tree.holds(c.scope, *cl) {
                continue;
            }
            let slow: Vec<AgentId> = led
                .agents
                .iter()
                .filter(|(_, v)| v.admitted && v.state == AgentState::Active)
                .map(|(a, _)| *a)
                .collect();
            for a in slow {
                let over = led
                    .assess(a, 0.0)
                    .is_some_and(|(z, _)| z.score_ms > c.slower_than_ms as f64);
                if let Some(v) = led.agents.get_mut(&a).filter(|_| over) {
                    v.admitted = false;
                    v.held_until = Some(until);
                    led.integrating = true;
                    held += 1;
                }
            }
        }
        held
    }

    /// The root: a node's confirmation, summed; the report once every node confirmed.
    pub(super) fn on_control_done(&mut self, d: ControlDone, now: Time) {
        let Some(p) = self.controls.get_mut(&d.id) else {
            return; // ended (or never asked here): nothing waits for it
        };
        if !p.expected.contains(&d.from) || d.action != p.report.action {
            self.refused_senders += 1;
            return;
        }
        // A lead under two coordinators hears it twice: the second finds nothing to do.
        let first = p.heard.insert(d.from);
        let r = &mut p.report;
        r.agents_released = r.agents_released.saturating_add(d.agents_released);
        r.breakers_closed = r.breakers_closed.saturating_add(d.breakers_closed);
        r.conflicts_released = r.conflicts_released.saturating_add(d.conflicts_released);
        r.agents_routed_around = r
            .agents_routed_around
            .saturating_add(d.agents_routed_around);
        r.was_frozen_on += u32::from(first && d.was_frozen);
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
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.end_control(id, now);
        }
    }

    /// When the next control's wait ends.
    pub(super) fn next_control_due(&self) -> Option<Time> {
        self.controls.values().map(|p| p.deadline).min()
    }

    fn end_control(&mut self, id: u64, now: Time) {
        let Some(p) = self.controls.remove(&id) else {
            return;
        };
        let mut report = p.report;
        report.nodes = p.expected.len() as u32;
        report.confirmed = p.heard.len() as u32;
        report.unconfirmed = p
            .expected
            .difference(&p.heard)
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
