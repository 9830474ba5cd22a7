//! An operator's controls as they spread down the tree: freeze, thaw and heal (breakers
//! closed, quarantined agents and conflicts released), carried out by each node in scope and
//! passed by coordinators to their leads.

use super::*;

impl MeshNode {
    /// Carries out an operator's control here, and passes it to the leads of the sectors
    /// this node coordinates.
    pub(super) fn control(&mut self, c: Control, now: Time) {
        match c.action {
            ControlAction::Freeze => {
                self.frozen.insert(c.scope);
            }
            ControlAction::Thaw => {
                self.frozen.remove(&c.scope);
            }
            ControlAction::Heal => {
                self.frozen.remove(&c.scope);
                let clusters: Vec<ClusterId> = self.led.keys().copied().collect();
                for cl in clusters {
                    if !self.tree.holds(c.scope, cl) {
                        continue;
                    }
                    self.breakers.reset(Scope::Cluster(cl), now);
                    let released: Vec<AgentId> = self.led[&cl]
                        .agents
                        .iter()
                        .filter(|(_, v)| v.state == AgentState::Quarantined)
                        .map(|(a, _)| *a)
                        .collect();
                    for a in released {
                        if let Some(l) = self.led.get_mut(&cl)
                            && let Some(v) = l.agents.get_mut(&a)
                        {
                            // Back on its next beat.
                            l.active = None;
                            v.state = AgentState::Offline;
                            v.disagreements = 0;
                        }
                    }
                }
                // Every conflict in scope is released (an operator's review), and the
                // notices escalated here about it dropped.
                let tree = &self.tree;
                let released = self.conflicts.release(now, |cl| tree.holds(c.scope, cl));
                self.resolved(released);
                match c.scope {
                    Scope::Cluster(_) => {}
                    s => self.breakers.reset(s, now),
                }
                self.breakers.reset(Scope::Global, now);
            }
        }
        if c.relayed {
            return;
        }
        for lead in self.leads_below(c.scope) {
            self.send(lead, MeshMessage::Control(Control { relayed: true, ..c }));
        }
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
