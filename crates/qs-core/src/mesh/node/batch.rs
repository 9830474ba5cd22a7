//! Orders that go together: while a priority-first operation starts (its phases at once),
//! the orders for each node are gathered and go as one message (`MeshMessage::Orders`), so
//! the root sends at most one message per sector and cascade; a node that takes such a
//! message gathers what it passes on the same way. A group holds at most
//! `MAX_ORDERS_BATCHED` orders and fits the bus's message size as they encode.

use super::*;
use qs_wire::mesh::{MAX_ORDERS_BATCHED, Order, Orders};

impl MeshNode {
    /// Sends an order: at once, or, while orders are gathered (`gather_orders`), with the
    /// others to the same node.
    pub(crate) fn send_order(&mut self, to: NodeId, order: Order) {
        match &mut self.order_batch {
            Some(batch) => batch.entry(to).or_default().push(order),
            None => self.send(to, MeshMessage::Order(Box::new(order))),
        }
    }

    /// From now until `flush_orders`, orders to the same node go in one message (a
    /// priority-first operation's phases start at once: the root sends each coordinator
    /// one message for all of them, not one each). Whether this call started gathering
    /// (a nested one leaves the flush to the outer).
    pub(crate) fn gather_orders(&mut self) -> bool {
        let outer = self.order_batch.is_none();
        if outer {
            self.order_batch = Some(BTreeMap::new());
        }
        outer
    }

    /// Sends what was gathered: one message per node, as few as fit (at most
    /// `MAX_ORDERS_BATCHED` orders each, within the bus's message size as they encode).
    /// How many went to other nodes.
    pub(crate) fn flush_orders(&mut self) -> u32 {
        let mut sent = 0;
        for (to, orders) in self.order_batch.take().unwrap_or_default() {
            for group in order_groups(orders) {
                let msg = match <[_; 1]>::try_from(group) {
                    Ok([one]) => MeshMessage::Order(Box::new(one)),
                    Err(many) => MeshMessage::Orders(Box::new(Orders { orders: many })),
                };
                sent += u32::from(to != self.me);
                self.send(to.clone(), msg);
            }
        }
        sent
    }
}

/// Room for orders in one message: the bus's limit on a message (`MAX_BUS_BYTES`), less
/// a margin for what wraps them (the packet's sender, the message's kind, the frame).
const ORDERS_ROOM_BYTES: usize = qs_wire::task_bus::MAX_BUS_BYTES - 2_048;

/// What an order takes encoded, as the bus carries it (and a comma); an order that cannot
/// be encoded takes all the room (it goes alone).
fn order_bytes(o: &Order) -> usize {
    serde_json::to_vec(o).map_or(ORDERS_ROOM_BYTES, |b| b.len() + 1)
}

/// Orders to one node in groups that go as one message each: in their order, at most
/// `MAX_ORDERS_BATCHED` a group and within [`ORDERS_ROOM_BYTES`] encoded (a group of one
/// may be larger: it goes alone, as always).
fn order_groups(orders: Vec<Order>) -> Vec<Vec<Order>> {
    let budget = ORDERS_ROOM_BYTES;
    let mut groups: Vec<Vec<Order>> = Vec::new();
    let mut used = 0;
    for o in orders {
        let bytes = order_bytes(&o);
        match groups.last_mut() {
            Some(g) if g.len() < MAX_ORDERS_BATCHED && used + bytes <= budget => {
                used += bytes;
                g.push(o);
            }
            _ => {
                used = bytes;
                groups.push(vec![o]);
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use qs_wire::mesh::{CascadeMode, MeshEnvelope, OpId, Verb};

    fn order(payload: &str) -> Order {
        let me = NodeId::new("n1").unwrap();
        let mut node = MeshNode::new(me.clone(), MeshConfig::default(), Time::ZERO);
        let envelope: MeshEnvelope = node.envelope(Verb::Sync, payload, 2, Time::ZERO);
        Order {
            op: OpId(1),
            mode: CascadeMode::PriorityFirst,
            root: me.clone(),
            report_to: me,
            scope: Scope::Sector(SectorId(0)),
            class: None,
            sample_per_cluster: None,
            window_ms: 100,
            envelope,
            limited: false,
            retry_of: None,
        }
    }

    /// Orders for one node, grouped: as many as fit a message, by count and by their size
    /// encoded (a control character takes six bytes); each group, sent as one message in a
    /// packet, is within what the bus takes.
    #[test]
    fn orders_are_grouped_by_count_and_encoded_size() {
        let plain = "x".repeat(4_096);
        let controls = "\u{1}".repeat(4_096);
        let table = [
            ("x", 5, vec![5]),
            ("x", 9, vec![8, 1]),
            (plain.as_str(), 5, vec![5]),
            (controls.as_str(), 5, vec![2, 2, 1]),
        ];
        for (payload, n, want) in table {
            let groups = order_groups(vec![order(payload); n]);
            let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
            assert_eq!(sizes, want, "{n} of {} bytes", payload.len());
            for orders in groups {
                let packet = qs_wire::mesh::MeshPacket {
                    from: NodeId::new(
                        "a-node-with-a-long-name-of-sixty-three-characters-0000000000",
                    )
                    .unwrap(),
                    message: MeshMessage::Orders(Box::new(Orders { orders })),
                };
                let bytes = serde_json::to_vec(&packet).unwrap();
                assert!(
                    bytes.len() <= qs_wire::task_bus::MAX_BUS_BYTES,
                    "{}",
                    bytes.len()
                );
            }
        }
    }
}
