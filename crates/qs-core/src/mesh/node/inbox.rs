//! What a node hears from the others: each message checked against the tree for its
//! sender (what it says of its sender must be its sender; what speaks for a cluster or a
//! sector, or carries what the root decides, only from the node the tree names), then
//! handed to the part of the node it is for; and a lead's dispatch to this node's agents.

use super::*;

/// How long after the tree changed an order is still taken from whom the tree before named
/// (orders on their way when it changed).
const ORDERS_AFTER_CHANGE_MS: u64 = 2_000;

impl MeshNode {
    /// Whether the tree changed a moment ago (`ORDERS_AFTER_CHANGE_MS`): orders from whom
    /// the tree before named may still be on their way.
    pub(super) fn tree_changed_lately(&self, now: Time) -> bool {
        now.since(self.tree_changed_at) < Duration::from_millis(ORDERS_AFTER_CHANGE_MS)
    }

    pub(super) fn heard(&mut self, from: NodeId, m: MeshMessage, now: Time) {
        // Orders that came together: each taken as if it came alone, and what they make
        // this node pass on goes together too.
        let m = match m {
            MeshMessage::Orders(batch) => {
                let outer = self.gather_orders();
                for o in batch.orders {
                    self.heard(from.clone(), MeshMessage::Order(Box::new(o)), now);
                }
                if outer {
                    self.flush_orders();
                }
                return;
            }
            m => m,
        };
        // What a message says of its sender must be its sender: a member cannot speak for
        // another host, lead or coordinator. A summary, or a beat between summaries, speaks
        // for a cluster or a sector: only from the node this node's tree names for it (a
        // cluster's, of the sector the tree puts it in). What an operation carries (its
        // orders down, its reports up) comes from the root or the node the tree names; an
        // operation under way when the tree changed finishes the way it started: its
        // reports are also taken from whom the tree before named, and orders from them a
        // moment after the change (`ORDERS_AFTER_CHANGE_MS`, messages on their way). An
        // operator's controls come from the root, or through the coordinator the tree names.
        let fresh = self.tree_changed_lately(now);
        let under_way = |op: OpId| self.ops.is_root_or_relay(op);
        // Named by this tree, or (`before`) by the tree before it too.
        let named = |before: bool, f: &dyn Fn(&Hierarchy) -> bool| {
            f(&self.tree) || (before && self.tree_before.as_deref().is_some_and(f))
        };
        let names =
            |before: bool, scope: Scope| named(before, &|t| t.named_for(scope) == Some(&from));
        let root = |before: bool| named(before, &|t| t.root.as_ref() == Some(&from));
        let coordinates =
            |before: bool, c: ClusterId| named(before, &|t| t.coordinator_of(c) == Some(&from));
        let sender_ok = match &m {
            MeshMessage::Beat(b) => b.host == from,
            MeshMessage::Cluster(s) => {
                s.lead == from && self.tree.leads_in(&from, s.cluster, s.sector)
            }
            MeshMessage::Alive(a) => a.from == from && names(false, a.scope),
            MeshMessage::Sector(s) => {
                s.coordinator == from && names(false, Scope::Sector(s.sector))
            }
            // A cluster's report comes from its lead, or from its coordinator when the urgent
            // mode could reach none of it.
            MeshMessage::Report(r) => {
                let before = under_way(r.op);
                r.from == from
                    && (names(before, r.scope)
                        || matches!(r.scope, Scope::Cluster(c) if coordinates(before, c)))
            }
            MeshMessage::Mode(_) => self.mode_sender_ok(&from),
            MeshMessage::Order(o) => match o.scope {
                Scope::Sector(_) => root(fresh),
                Scope::Cluster(c) => root(fresh) || coordinates(fresh, c),
                Scope::Global => false,
            },
            // Passed on by a coordinator: one above a cluster this node leads, and within
            // what it coordinates (the whole mesh's, its sector's, its cluster's).
            MeshMessage::Control(c) => {
                let leads_under_sender = self.led.keys().any(|cl| coordinates(false, *cl));
                let within = match c.scope {
                    Scope::Global => true,
                    Scope::Sector(_) => names(false, c.scope),
                    Scope::Cluster(cl) => coordinates(false, cl),
                };
                root(fresh) || (c.relayed && leads_under_sender && within)
            }
            // A confirmation speaks for its sender (and only the root awaits it).
            MeshMessage::ControlDone(d) => d.from == from,
            // From the agent's lead (checked with the agent's host, below).
            MeshMessage::Restart(r) | MeshMessage::Reassign(r) => {
                names(false, Scope::Cluster(r.cluster))
            }
            _ => true,
        };
        if !sender_ok {
            self.refused_senders += 1;
            return;
        }
        match m {
            MeshMessage::Beat(b) => self.on_beat(b, now),
            MeshMessage::Cluster(s) => {
                let s = *s;
                self.note_hop(&s.lead, s.sent_ms, now);
                self.lead_heard.insert(s.cluster, now);
                self.breakers.sector_failures(s.sector, s.failures, now);
                // A full cluster summary makes the sector's next beat a full one too.
                self.summarized.remove(&s.sector);
                self.cluster_summaries.insert(s.cluster, s);
            }
            MeshMessage::Alive(a) => self.on_alive(a, now),
            MeshMessage::Sector(s) => {
                let s = *s;
                self.note_hop(&s.coordinator, s.sent_ms, now);
                self.coordinator_heard.insert(s.sector, now);
                ops::from_summary(self, &s, now);
                self.sector_summaries.insert(s.sector, s);
            }
            MeshMessage::Order(o) => ops::on_order(self, *o, now),
            // Taken apart above.
            MeshMessage::Orders(_) => {}
            MeshMessage::Dispatch(d) => self.on_dispatch(&from, *d, now),
            MeshMessage::Ack(a) => ops::on_ack(self, &from, *a, now),
            MeshMessage::Report(r) => ops::on_report(self, *r, now),
            MeshMessage::Circuit(_) => {}
            MeshMessage::Control(c) => self.control(&from, c, now),
            MeshMessage::ControlDone(d) => self.on_control_done(*d, now),
            MeshMessage::Restart(r) => self.on_agent_order(r, MeshOutput::Restart),
            MeshMessage::Reassign(r) => self.on_agent_order(r, MeshOutput::Reassign),
            // The shell's: an operator's request and its answer.
            MeshMessage::Request(_) | MeshMessage::Outcome(_) => {}
            MeshMessage::Handover(h) => self.on_handover(&from, *h, now),
            MeshMessage::Contradicted(c) => self.on_contradicted(&from, *c, now),
            MeshMessage::Mode(m) => self.on_mode(m, now),
        }
    }

    /// Messages refused because they spoke for another node than their sender.
    pub fn refused_senders(&self) -> u64 {
        self.refused_senders
    }

    /// The host part: a lead's dispatch for one of this node's agents.
    pub(super) fn on_dispatch(&mut self, from: &NodeId, d: Dispatch, now: Time) {
        // Only for this node's own agents (nor is an expiry said for others'), from the lead
        // of their cluster, answered to it or to the root.
        let lead = self.tree.cluster(d.cluster).and_then(|c| c.lead.as_ref());
        let from_lead = lead == Some(from);
        let to_known = d.reply_to == *from || self.tree.root.as_ref() == Some(&d.reply_to);
        if !self.local.iter().any(|a| a.agent == d.agent) || !from_lead || !to_known {
            self.refused_senders += u64::from(!from_lead || !to_known);
            return;
        }
        if d.envelope.expired(now.as_millis()) {
            self.expired += 1;
            // Said to whom hears the answer, so the operation counts it.
            let ack = Ack::expired(&d, now.as_millis());
            self.send(d.reply_to, MeshMessage::Ack(Box::new(ack)));
            return;
        }
        self.out.push_back(MeshOutput::Deliver(d));
    }
}
