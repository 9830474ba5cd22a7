//! Handing agents over (seed §10.2): when a newly seasoned node wins a cluster, its former
//! lead tells it at its next beats what it knew of each agent (in the routing pool, its
//! processing time), so a newcomer admitted under the former lead stays in the pool instead
//! of settling again, and its conflicts still unresolved, so they stay so. The new lead takes
//! it only from the agent's lead in the hierarchy before, and views only for agents it has
//! measured nothing of itself. A handover goes out at [`HANDOVER_SENDS`] beats in a row, so
//! one lost message loses nothing (unless the former lead takes another tree before the
//! copies went: then it hands over anew); the new lead takes each agent's view and each
//! conflict once.

use super::*;
use crate::mesh::conflict::{self, Resolution};
use qs_wire::mesh::{HandedAgent, HandedConflict, Handover, MAX_CHILDREN, MAX_HANDED_CONFLICTS};

/// Beats at which a handover goes out (the same one each time).
pub(crate) const HANDOVER_SENDS: u8 = 3;
/// Most handed views and conflicts a node remembers taking, per tree (the quarantine's
/// bound); past it, another copy's are taken again.
const MAX_HANDED_TAKEN: usize = conflict::MAX_QUARANTINE;

impl MeshNode {
    /// Views of agents this node no longer leads (`left`, after a new tree): each for the
    /// node that leads it now, sent at the next beats.
    pub(super) fn hand_over(
        &mut self,
        left: BTreeMap<AgentId, AgentView>,
        tree: &Hierarchy,
        now: Time,
    ) {
        self.handovers.clear();
        self.handover_sends_left = HANDOVER_SENDS;
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
            let h = self.handover_to(lead, c);
            if h.agents.len() < MAX_CHILDREN {
                let held_ms = view
                    .held_until
                    .map_or(0, |t| t.as_millis().saturating_sub(now.as_millis()));
                h.agents.push(HandedAgent {
                    agent,
                    admitted: view.admitted,
                    processing_ms: view.work.processing_ms().unwrap_or(0.0),
                    samples: view.work.samples(),
                    held_ms,
                    missed: view.missed,
                });
            }
        }
    }

    /// Conflicts that left this node's quarantine after a new tree (`left`): each with its
    /// agent's handover to the node that leads it now (the most urgent first, as many as a
    /// handover carries), resolved here as handed over; where no other node leads it, as its
    /// lead changed.
    pub(super) fn hand_over_conflicts(
        &mut self,
        mut left: Vec<conflict::Record>,
        tree: &Hierarchy,
        now: Time,
    ) {
        left.sort_by_key(|r| (std::cmp::Reverse(r.priority), r.seq));
        for r in left {
            let lead = tree
                .cluster_of(r.agent)
                .and_then(|c| Some((c, tree.cluster(c)?.lead.clone()?)))
                .filter(|(_, lead)| *lead != self.me);
            let mut how = Resolution::LeadChanged;
            if let Some((c, lead)) = lead {
                let h = self.handover_to(lead, c);
                if h.conflicts.len() < MAX_HANDED_CONFLICTS {
                    h.conflicts.push(HandedConflict {
                        agent: r.agent,
                        op: r.op,
                        at_ms: r.at_ms,
                        content_hash: r.content_hash.clone(),
                        detail: r.detail.clone(),
                    });
                    how = Resolution::HandedOver;
                }
            }
            let done = self.conflicts.settle(&r, how, now);
            self.out.push_back(MeshOutput::ConflictResolved(done));
        }
    }

    /// The handover to `lead` for cluster `c`, made empty if there is none yet.
    fn handover_to(&mut self, lead: NodeId, c: ClusterId) -> &mut Handover {
        self.handovers.entry((lead, c)).or_insert_with(|| Handover {
            cluster: c,
            agents: Vec::new(),
            conflicts: Vec::new(),
        })
    }

    /// At a beat: the handovers of the last tree change go out, again until they went
    /// [`HANDOVER_SENDS`] times.
    pub(super) fn send_handovers(&mut self) {
        if self.handover_sends_left == 0 {
            return;
        }
        self.handover_sends_left -= 1;
        let last = self.handover_sends_left == 0;
        let handovers = match last {
            true => std::mem::take(&mut self.handovers),
            false => self.handovers.clone(),
        };
        for ((to, _), h) in handovers {
            self.send(to, MeshMessage::Handover(Box::new(h)));
        }
    }

    /// A former lead's views: taken for agents of a cluster this node leads, that `from`
    /// led in the hierarchy before this one, and that this node measured nothing of yet.
    pub(super) fn on_handover(&mut self, from: &NodeId, h: Handover, now: Time) {
        let Some(before) = self.tree_before.clone() else {
            return;
        };
        let Some(led) = self.led.get(&h.cluster) else {
            return;
        };
        let led_before = |agent| {
            before
                .cluster_of(agent)
                .and_then(|c| before.cluster(c))
                .is_some_and(|cl| cl.lead.as_ref() == Some(from))
        };
        // Conflicts: of agents of the cluster, that `from` led before, not taken already
        // (from another copy of this handover).
        let taken: Vec<HandedConflict> = h
            .conflicts
            .into_iter()
            .filter(|c| led.agents.contains_key(&c.agent) && led_before(c.agent))
            .filter(|c| {
                !self
                    .handed_taken
                    .contains(&(from.clone(), c.agent, Some(c.op)))
            })
            .collect();
        for c in taken {
            if self.handed_taken.len() < MAX_HANDED_TAKEN {
                self.handed_taken
                    .insert((from.clone(), c.agent, Some(c.op)));
            }
            let r = self.conflicts.handed(from.clone(), h.cluster, c, now);
            self.out.push_back(MeshOutput::Conflict(r));
        }
        let led = self.led.get_mut(&h.cluster).expect("checked above");
        for a in h.agents {
            let led_before = led_before(a.agent);
            let Some(view) = led.agents.get_mut(&a.agent) else {
                continue;
            };
            // Another copy of a handover taken already: this node may have held the agent
            // back since, or heard it register anew; the copy must not undo that.
            let key = (from.clone(), a.agent, None);
            let again = self.handed_taken.contains(&key);
            if !led_before || again || view.work.samples() > 0 || view.admitted {
                self.refused_senders += u64::from(!led_before);
                continue;
            }
            if self.handed_taken.len() < MAX_HANDED_TAKEN {
                self.handed_taken.insert(key);
            }
            view.work.handed(a.processing_ms, a.samples);
            // A hold goes with it (a backoff after misses in a row, a conflict's), so the new
            // lead does not take it back into the pool at its host's next beat.
            view.missed = a.missed;
            if a.held_ms > 0 {
                let held_ms = a.held_ms.min(qs_wire::mesh::MAX_HELD_MS);
                view.held_until = Some(now + Duration::from_millis(held_ms));
                led.integrating = true;
            }
            if a.admitted {
                super::integrate::admit(led, a.agent);
            }
        }
    }
}
