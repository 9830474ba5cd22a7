//! Handing agents over (seed §10.2): when a newly seasoned node wins a cluster, its former
//! lead tells it at its next beat what it knew of each agent (in the routing pool, its
//! processing time), so a newcomer admitted under the former lead stays in the pool instead
//! of settling again. The new lead takes it only from the agent's lead in the hierarchy
//! before, and only for agents it has measured nothing of itself.

use super::*;
use qs_wire::mesh::{HandedAgent, Handover, MAX_CHILDREN};

impl MeshNode {
    /// Views of agents this node no longer leads (`left`, after a new tree): each for the
    /// node that leads it now, sent at the next beat.
    pub(super) fn hand_over(&mut self, left: BTreeMap<AgentId, AgentView>, tree: &Hierarchy) {
        self.handovers.clear();
        for (agent, view) in left {
            if !view.admitted && view.work.samples() == 0 {
                continue;
            }
            let Some(c) = tree.cluster_of(agent) else {
                continue;
            };
            let Some(lead) = tree.cluster(c).and_then(|cl| cl.lead.clone()) else {
                continue;
            };
            if lead == self.me {
                continue;
            }
            let h = self.handovers.entry((lead, c)).or_insert_with(|| Handover {
                cluster: c,
                agents: Vec::new(),
            });
            if h.agents.len() < MAX_CHILDREN {
                h.agents.push(HandedAgent {
                    agent,
                    admitted: view.admitted,
                    processing_ms: view.work.processing_ms().unwrap_or(0.0),
                    samples: view.work.samples(),
                });
            }
        }
    }

    /// At a beat: the handovers of the last tree change go out.
    pub(super) fn send_handovers(&mut self) {
        for ((to, _), h) in std::mem::take(&mut self.handovers) {
            self.send(to, MeshMessage::Handover(Box::new(h)));
        }
    }

    /// A former lead's views: taken for agents of a cluster this node leads, that `from`
    /// led in the hierarchy before this one, and that this node measured nothing of yet.
    pub(super) fn on_handover(&mut self, from: &NodeId, h: Handover) {
        let Some(before) = self.tree_before.clone() else {
            return;
        };
        let Some(led) = self.led.get_mut(&h.cluster) else {
            return;
        };
        for a in h.agents {
            let led_before = before
                .cluster_of(a.agent)
                .and_then(|c| before.cluster(c))
                .is_some_and(|cl| cl.lead.as_ref() == Some(from));
            let Some(view) = led.agents.get_mut(&a.agent) else {
                continue;
            };
            if !led_before || view.work.samples() > 0 || view.admitted {
                self.refused_senders += u64::from(!led_before);
                continue;
            }
            view.work.handed(a.processing_ms, a.samples);
            if a.admitted {
                super::integrate::admit(led, a.agent);
            }
        }
    }
}
