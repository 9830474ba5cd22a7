//! What the root decides reaches a node only from the root, or through the node the tree
//! names above it: an operation's orders (a sector's from the root; a cluster's from the
//! root or its sector's coordinator), an operator's controls (from the root; passed on by
//! the coordinator of a cluster the node leads, within what it coordinates), and a report (from the lead or coordinator
//! the tree names for its scope; a cluster's also from its coordinator, when the urgent mode
//! reached none of it). Any other member's is refused and counted, and changes nothing.

mod common;

use common::*;
use qs_core::Time;
use qs_core::mesh::{MeshConfig, MeshInput, MeshNode, MeshOutput};
use qs_wire::NodeId;
use qs_wire::mesh::{
    AgentId, ClusterId, Control, ControlAction, MeshMessage, Order, Scope, SectorId, Tally,
};
use std::time::Duration;

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

/// Who hears what, from whom, and whether it is taken.
struct Case {
    name: &'static str,
    to: &'static str,
    from: &'static str,
    msg: fn(order: Order) -> MeshMessage,
    taken: bool,
}

fn as_cluster_order(mut o: Order) -> MeshMessage {
    o.scope = Scope::Cluster(ClusterId(0));
    MeshMessage::Order(Box::new(o))
}

fn as_sector_order(o: Order) -> MeshMessage {
    MeshMessage::Order(Box::new(o))
}

fn freeze(relayed: bool) -> MeshMessage {
    MeshMessage::Control(Control {
        relayed,
        ..Control::new(ControlAction::Freeze, Scope::Global)
    })
}

/// A freeze of `scope`, passed on by a coordinator.
fn freeze_of(scope: Scope) -> MeshMessage {
    MeshMessage::Control(Control {
        relayed: true,
        ..Control::new(ControlAction::Freeze, scope)
    })
}

fn report_from(from: &str) -> MeshMessage {
    let tally = Tally {
        sent: 1,
        ready: 1,
        ..Tally::default()
    };
    MeshMessage::Report(Box::new(cluster_report(1, &id(from), tally, vec![], false)))
}

/// What `out` shows of a message taken: an order dispatched or relayed, a control.
fn acted(node: &MeshNode, out: &[MeshOutput]) -> bool {
    let sent = out.iter().any(|o| {
        matches!(
            o,
            MeshOutput::Deliver(_)
                | MeshOutput::Send {
                    msg: MeshMessage::Dispatch(_) | MeshMessage::Order(_),
                    ..
                }
        )
    });
    sent || !node.frozen().is_empty()
}

#[test]
fn what_the_root_decides_comes_from_the_root_or_the_node_the_tree_names_above() {
    // p1 is the root, p3 coordinates the one sector, p2 leads its cluster (p1 and p2 host
    // its agents); p4 is another member.
    let pair = pair();
    let tree = pair.roles(&id("p2"), &id("p3"), &id("p1"));
    let cases = [
        Case {
            name: "a cluster's order from the root",
            to: "p2",
            from: "p1",
            msg: as_cluster_order,
            taken: true,
        },
        Case {
            name: "a cluster's order from its sector's coordinator",
            to: "p2",
            from: "p3",
            msg: as_cluster_order,
            taken: true,
        },
        Case {
            name: "a cluster's order from another member",
            to: "p2",
            from: "p4",
            msg: as_cluster_order,
            taken: false,
        },
        Case {
            name: "a sector's order from the root",
            to: "p3",
            from: "p1",
            msg: as_sector_order,
            taken: true,
        },
        Case {
            name: "a sector's order from a lead",
            to: "p3",
            from: "p2",
            msg: as_sector_order,
            taken: false,
        },
        Case {
            name: "a freeze from the root",
            to: "p2",
            from: "p1",
            msg: |_| freeze(false),
            taken: true,
        },
        Case {
            name: "a freeze passed on by the coordinator of a cluster it leads",
            to: "p2",
            from: "p3",
            msg: |_| freeze(true),
            taken: true,
        },
        Case {
            name: "a freeze from the coordinator, not passed on",
            to: "p2",
            from: "p3",
            msg: |_| freeze(false),
            taken: false,
        },
        Case {
            name: "a freeze of another sector, passed on by the coordinator",
            to: "p2",
            from: "p3",
            msg: |_| freeze_of(Scope::Sector(SectorId(5))),
            taken: false,
        },
        Case {
            name: "a freeze of its sector, passed on by its coordinator",
            to: "p2",
            from: "p3",
            msg: |_| freeze_of(Scope::Sector(SectorId(0))),
            taken: true,
        },
        Case {
            name: "a freeze passed on by another member",
            to: "p2",
            from: "p4",
            msg: |_| freeze(true),
            taken: false,
        },
        Case {
            name: "a cluster's report from its lead",
            to: "p3",
            from: "p2",
            msg: |_| report_from("p2"),
            taken: true,
        },
        Case {
            name: "a cluster's report from its coordinator (an urgent operation reached none of it)",
            to: "p1",
            from: "p3",
            msg: |_| report_from("p3"),
            taken: true,
        },
        Case {
            name: "a cluster's report from a member naming itself",
            to: "p3",
            from: "p4",
            msg: |_| report_from("p4"),
            taken: false,
        },
    ];
    for case in cases {
        let now = Time::from_millis(1_000_000);
        let mut node = node_in(&id(case.to), MeshConfig::default(), &tree, now);
        // The lead's own agents (long there: in the routing pool at once).
        let own = (10..20).map(|i| beat(AgentId(i), 0, false)).collect();
        node.handle(MeshInput::Agents(own), now);
        let mut now = now + Duration::from_millis(300);
        node.handle(MeshInput::Tick, now);
        drain(&mut node);
        let order = sector_order(&mut node, 1, &id("p1"), now);
        node.handle(
            MeshInput::Heard {
                from: id(case.from),
                msg: (case.msg)(order),
            },
            now,
        );
        let mut out = drain(&mut node);
        for _ in 0..30 {
            now = now + Duration::from_millis(10);
            node.handle(MeshInput::Tick, now);
            out.extend(drain(&mut node));
        }
        assert_eq!(
            node.refused_senders(),
            u64::from(!case.taken),
            "{}: refused and counted",
            case.name
        );
        if !case.name.contains("report") {
            assert_eq!(acted(&node, &out), case.taken, "{}: {out:?}", case.name);
        }
    }
}

/// An operation under way when the tree changes finishes the way it started: the lead the
/// tree named before may still report one that is under way here, and the root it named
/// still order a moment after the change; not later, and not for another operation.
#[test]
fn what_the_tree_before_named_is_heard_only_for_what_was_under_way() {
    let pair = pair();
    let now = Time::from_millis(1_000_000);
    let before = pair.roles(&id("p2"), &id("p3"), &id("p1"));
    let after = pair.roles(&id("p1"), &id("p3"), &id("p2"));
    let mut node = node_in(&id("p3"), MeshConfig::default(), &before, now);
    // Operation 1 is under way at the coordinator when the tree changes.
    let order = sector_order(&mut node, 1, &id("p1"), now);
    node.handle(
        MeshInput::Heard {
            from: id("p1"),
            msg: MeshMessage::Order(Box::new(order.clone())),
        },
        now,
    );
    node.handle(MeshInput::Tree(after), now);
    drain(&mut node);
    let hear = |node: &mut MeshNode, from: &str, msg: MeshMessage, at: Time| {
        let before = node.refused_senders();
        node.handle(
            MeshInput::Heard {
                from: id(from),
                msg,
            },
            at,
        );
        drain(node);
        node.refused_senders() == before
    };
    let report = |op: u64, from: &str| {
        let tally = Tally {
            sent: 1,
            ready: 1,
            ..Tally::default()
        };
        MeshMessage::Report(Box::new(cluster_report(
            op,
            &id(from),
            tally,
            vec![],
            false,
        )))
    };
    let soon = now + Duration::from_millis(500);
    assert!(
        hear(&mut node, "p2", report(1, "p2"), soon),
        "the former lead, under way"
    );
    assert!(
        !hear(&mut node, "p2", report(2, "p2"), soon),
        "the former lead, another op"
    );
    assert!(hear(&mut node, "p1", report(2, "p1"), soon), "the lead now");
    assert!(!hear(&mut node, "p4", report(1, "p4"), soon), "a stranger");
    let mut later = order.clone();
    later.op = qs_wire::mesh::OpId(3);
    let msg = |o: &Order| MeshMessage::Order(Box::new(o.clone()));
    assert!(
        hear(&mut node, "p1", msg(&later), soon),
        "the former root, a moment after"
    );
    later.op = qs_wire::mesh::OpId(4);
    let late = now + Duration::from_millis(5_000);
    assert!(
        !hear(&mut node, "p1", msg(&later), late),
        "the former root, later"
    );
}
