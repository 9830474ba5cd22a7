//! Summaries up the tree are taken only from the node the tree names for what they speak of:
//! a cluster's from its lead (and of the sector the tree puts it in), a sector's from its
//! coordinator. Another member that names itself in a summary is refused and counted, and
//! the counts, breakers and modes built on summaries are not moved by it.

mod common;

use common::*;
use qs_core::Time;
use qs_core::mesh::{MeshConfig, MeshInput};
use qs_wire::NodeId;
use qs_wire::mesh::{Alive, ClusterId, MeshMessage, Scope, SectorId};

/// `from`'s beat for `scope`: its `agents` all down, its breaker open.
fn all_down(scope: Scope, from: &NodeId, agents: u32, now: Time) -> Alive {
    Alive {
        scope,
        from: from.clone(),
        sent_ms: now.as_millis(),
        agents,
        active: 0,
        joining: 0,
        failures: agents,
        breaker_open: true,
    }
}

/// One summary or beat heard by a node of the tree, and whether it is taken.
struct Case {
    name: &'static str,
    from: &'static str,
    msg: fn(now: Time) -> MeshMessage,
    taken: bool,
}

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

#[test]
fn summaries_are_taken_only_from_the_node_the_tree_names() {
    let pair = pair();
    let p1 = &pair.p1;
    // p2 leads the one cluster (of sector 0), p1 coordinates the sector and is the root.
    let tree = pair.roles(&pair.p2, p1, p1);
    let cases = [
        Case {
            name: "the cluster's lead",
            from: "p2",
            msg: |now| MeshMessage::Cluster(Box::new(cluster_summary(0, 0, &id("p2"), now))),
            taken: true,
        },
        Case {
            name: "a member naming itself the cluster's lead",
            from: "p3",
            msg: |now| MeshMessage::Cluster(Box::new(cluster_summary(0, 0, &id("p3"), now))),
            taken: false,
        },
        Case {
            name: "the lead, of a cluster the tree does not have",
            from: "p2",
            msg: |now| MeshMessage::Cluster(Box::new(cluster_summary(7, 0, &id("p2"), now))),
            taken: false,
        },
        Case {
            name: "the lead, putting its cluster in another sector",
            from: "p2",
            msg: |now| MeshMessage::Cluster(Box::new(cluster_summary(0, 3, &id("p2"), now))),
            taken: false,
        },
        Case {
            name: "the sector's coordinator",
            from: "p1",
            msg: |now| MeshMessage::Sector(Box::new(sector_summary(0, &id("p1"), 20, 20, now))),
            taken: true,
        },
        Case {
            name: "a member naming itself the sector's coordinator",
            from: "p2",
            msg: |now| MeshMessage::Sector(Box::new(sector_summary(0, &id("p2"), 20, 20, now))),
            taken: false,
        },
        Case {
            name: "the coordinator, of a sector the tree does not have",
            from: "p1",
            msg: |now| MeshMessage::Sector(Box::new(sector_summary(5, &id("p1"), 20, 20, now))),
            taken: false,
        },
    ];
    for case in cases {
        let now = Time::from_millis(1_000_000);
        let mut node = node_in(p1, MeshConfig::default(), &tree, now);
        let msg = (case.msg)(now);
        node.handle(
            MeshInput::Heard {
                from: id(case.from),
                msg: msg.clone(),
            },
            now,
        );
        drain(&mut node);
        let stored = match &msg {
            MeshMessage::Cluster(s) => node.cluster_summaries().get(&s.cluster) == Some(&**s),
            MeshMessage::Sector(s) => node.sector_summaries().get(&s.sector) == Some(&**s),
            _ => unreachable!("summaries only"),
        };
        assert_eq!(stored, case.taken, "{}", case.name);
        assert_eq!(
            node.refused_senders(),
            u64::from(!case.taken),
            "{}: refused and counted",
            case.name
        );
    }
}

/// A forged sector summary would have put a thousand agents down at the root, and its beats
/// would have kept them so: neither moves the root's counts.
#[test]
fn a_forged_sector_summary_and_its_beats_leave_the_roots_counts_alone() {
    let pair = pair();
    let (p1, p2) = (pair.p1.clone(), pair.p2.clone());
    let now = Time::from_millis(1_000_000);
    let tree = pair.roles(&p2, &p1, &p1);
    let mut root = node_in(&p1, MeshConfig::default(), &tree, now);
    let heard = |from: &NodeId, msg: MeshMessage| MeshInput::Heard {
        from: from.clone(),
        msg,
    };
    root.handle(
        heard(
            &p1,
            MeshMessage::Sector(Box::new(sector_summary(0, &p1, 20, 20, now))),
        ),
        now,
    );
    assert_eq!(root.global_counts(), (20, 20));
    let mut forged = sector_summary(0, &p2, 1_000, 1_000, now);
    forged.active_agents = 0;
    root.handle(heard(&p2, MeshMessage::Sector(Box::new(forged))), now);
    let beat = all_down(Scope::Sector(SectorId(0)), &p2, 1_000, now);
    root.handle(heard(&p2, MeshMessage::Alive(beat)), now);
    drain(&mut root);
    assert_eq!(root.global_counts(), (20, 20));
    assert!(!root.sector_summaries()[&SectorId(0)].breaker_open);
}

/// A lead the tree no longer names (another node leads its cluster now) speaks for it no
/// more: its `Alive` beats are refused, and what it had sent is gone with the tree.
#[test]
fn a_former_lead_beats_for_its_cluster_no_more() {
    let pair = pair();
    let (p1, p2, p3) = (pair.p1.clone(), pair.p2.clone(), id("p3"));
    let now = Time::from_millis(1_000_000);
    let before = pair.roles(&p2, &p1, &p1);
    let mut node = node_in(&p1, MeshConfig::default(), &before, now);
    let summary = cluster_summary(0, 0, &p2, now);
    let heard = |from: &NodeId, msg: MeshMessage| MeshInput::Heard {
        from: from.clone(),
        msg,
    };
    node.handle(heard(&p2, MeshMessage::Cluster(Box::new(summary))), now);
    assert_eq!(node.refused_senders(), 0);
    node.handle(MeshInput::Tree(pair.roles(&p3, &p1, &p1)), now);
    drain(&mut node);
    let beat = all_down(Scope::Cluster(ClusterId(0)), &p2, 20, now);
    node.handle(heard(&p2, MeshMessage::Alive(beat)), now);
    drain(&mut node);
    assert_eq!(node.refused_senders(), 1);
    // What it said went with the tree, and its beat brought nothing back.
    assert_eq!(node.cluster_summaries().get(&ClusterId(0)), None);
}
