//! An operator's controls (seed §7.1), driven through `MeshNode::handle` on a virtual clock:
//! the root sends a freeze, a thaw or a heal to the coordinators in scope, who pass it on
//! to their leads; each node confirms to the root what it did, and the root reports the sum
//! once every node in scope confirmed, or names those that did not when its wait ends. A
//! heal thaws, releases quarantined agents and conflicts, and closes breakers. A
//! confirmation from a node not in scope is refused and counted.

mod common;

use common::*;
use qs_core::Time;
use qs_core::mesh::conflict::Resolution;
use qs_core::mesh::{CONTROL_CONFIRM_MS, Command, MeshConfig, MeshInput, MeshNode, MeshOutput};
use qs_wire::NodeId;
use qs_wire::mesh::{
    AgentId, AgentState, BreakerState, ControlAction, ControlDone, MeshMessage, Scope,
};
use std::collections::BTreeSet;

/// The control `root` sent last (to a coordinator), what else it put out drained.
fn sent_control(root: &mut MeshNode) -> qs_wire::mesh::Control {
    drain(root)
        .into_iter()
        .find_map(|o| match o {
            MeshOutput::Send {
                msg: MeshMessage::Control(c),
                ..
            } => Some(c),
            _ => None,
        })
        .expect("a control, to a coordinator")
}

fn state_of(lead: &mut Lead, agent: AgentId) -> AgentState {
    let agents = lead.node.led_agents(lead.now);
    agents.iter().find(|a| a.agent == agent).unwrap().state
}

#[test]
fn a_heal_thaws_releases_and_closes_and_the_root_reports_what_every_node_did() {
    let (mut root, mut lead) = mesh();
    // Two agents answer with corrupt content (quarantined, an integrity conflict each);
    // then the other host's remaining eight go down, which opens the cluster's breaker.
    lead.order(1, None);
    let sent = dispatches(&lead.run(250));
    assert_eq!(sent.len(), 10, "{sent:?}");
    for (i, d) in sent.iter().enumerate() {
        lead.answer(d, (i < 2).then(corrupt));
    }
    let quarantined: Vec<AgentId> = sent[..2].iter().map(|d| d.agent).collect();
    lead.run(400);
    for q in &quarantined {
        assert_eq!(state_of(&mut lead, *q), AgentState::Quarantined);
    }
    lead.down = sent[2..].iter().map(|d| d.agent).collect();
    lead.run(700);
    let cluster = Scope::Cluster(qs_wire::mesh::ClusterId(0));
    assert_eq!(lead.node.breakers().state(cluster), BreakerState::Open);

    // A freeze first: both nodes confirm, neither was frozen before; both are now.
    command(
        &mut root,
        Command::Freeze {
            scope: Scope::Global,
            frozen: true,
            approved: false,
        },
        7,
        lead.now,
    );
    let out = exchange(&mut root, &mut lead, None);
    let r = reports(&out);
    assert_eq!(r.len(), 1, "{out:?}");
    assert_eq!(
        (r[0].tag, r[0].action, r[0].nodes, r[0].confirmed),
        (7, ControlAction::Freeze, 2, 2)
    );
    assert_eq!(r[0].was_frozen_on, 0);
    // (At the lead, passed on by its coordinator: the clusters it coordinates.)
    assert!(lead.node.frozen().contains(&cluster));
    assert!(root.frozen().contains(&Scope::Global));

    // The heal: every count is what the lead held, and the freeze is lifted everywhere.
    command(
        &mut root,
        Command::Heal {
            scope: Scope::Global,
            approved: false,
        },
        8,
        lead.now,
    );
    let out = exchange(&mut root, &mut lead, None);
    let r = reports(&out);
    assert_eq!(r.len(), 1, "{out:?}");
    let r = &r[0];
    assert_eq!((r.tag, r.action), (8, ControlAction::Heal));
    assert_eq!((r.nodes, r.confirmed, r.unconfirmed.len()), (2, 2, 0));
    assert_eq!(r.agents_released, 2, "{r:?}");
    assert_eq!(r.conflicts_released, 2, "{r:?}");
    assert_eq!(r.breakers_closed, 1, "the cluster's: {r:?}");
    assert_eq!(r.was_frozen_on, 2);
    assert!(lead.node.frozen().is_empty() && root.frozen().is_empty());
    assert_eq!(lead.node.breakers().state(cluster), BreakerState::Closed);
    // Seed Part 11's recovery time, by level: the lead closed a cluster's incident.
    let recovered = lead.node.kpis().recovered;
    assert_eq!(recovered.cluster.closed, 1, "{recovered:?}");
    assert!(recovered.cluster.open_ms_total > 0, "{recovered:?}");
    assert_eq!(recovered.sector.closed + recovered.global.closed, 0);
    let released: BTreeSet<AgentId> = out
        .iter()
        .filter_map(|o| match o {
            MeshOutput::ConflictResolved(x) if x.how == Resolution::Released => Some(x.agent),
            _ => None,
        })
        .collect();
    assert_eq!(released, quarantined.iter().copied().collect());
    // Released agents come back at their host's next beat, into the routing pool.
    lead.down.clear();
    lead.run(700);
    for q in &quarantined {
        assert_eq!(state_of(&mut lead, *q), AgentState::Active);
        assert!(pool(&lead.node).contains(q));
    }
    // The report reads as the API answers it.
    let json = serde_json::to_value(r).unwrap();
    assert_eq!(json["done"], "heal");
    assert_eq!(json["agents_released"], 2);
}

#[test]
fn a_node_that_does_not_confirm_is_named_when_the_wait_ends() {
    let (mut root, mut lead) = mesh();
    let lead_id = lead.node.id().clone();
    let start = lead.now;
    command(
        &mut root,
        Command::Heal {
            scope: Scope::Global,
            approved: false,
        },
        3,
        start,
    );
    let out = exchange(&mut root, &mut lead, Some(&lead_id));
    assert!(
        reports(&out).is_empty(),
        "the lead's confirmation is awaited"
    );
    let deadline = Time::from_millis(start.as_millis() + CONTROL_CONFIRM_MS);
    assert!(
        root.poll_timeout() <= deadline,
        "the root wakes for its wait"
    );
    root.handle(MeshInput::Tick, deadline);
    let r = reports(&drain(&mut root));
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].tag, r[0].nodes, r[0].confirmed), (3, 2, 1));
    assert_eq!(r[0].unconfirmed, vec![lead_id.to_string()]);
    assert_eq!(r[0].waited_ms, CONTROL_CONFIRM_MS);
}

#[test]
fn a_confirmation_from_a_node_not_in_scope_is_refused_and_counted() {
    let (mut root, lead) = mesh();
    let now = lead.now;
    command(
        &mut root,
        Command::Heal {
            scope: Scope::Global,
            approved: false,
        },
        4,
        now,
    );
    let control = sent_control(&mut root);
    let stranger = NodeId::new("p9").unwrap();
    let done = |from: &NodeId| {
        // The lead hears it through its coordinator (the root here).
        let via = control.root.clone();
        let mut d = ControlDone::new(control.id, from.clone(), via, ControlAction::Heal);
        d.agents_released = 50;
        MeshMessage::ControlDone(Box::new(d))
    };
    let refused = root.refused_senders();
    // Not in scope; and one that says it is the lead but is not.
    for (sender, said) in [(&stranger, &stranger), (&stranger, lead.node.id())] {
        let msg = done(said);
        let from = sender.clone();
        root.handle(MeshInput::Heard { from, msg }, now);
    }
    assert_eq!(root.refused_senders(), refused + 2);
    // The lead's own: counted, and the last awaited.
    let from = lead.node.id().clone();
    root.handle(
        MeshInput::Heard {
            from,
            msg: done(lead.node.id()),
        },
        now,
    );
    let r = reports(&drain(&mut root));
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].confirmed, r[0].agents_released), (2, 50));
}

#[test]
fn the_root_awaits_at_most_sixteen_controls_and_a_newer_one_ends_the_oldest_wait() {
    let (mut root, mut lead) = mesh();
    let lead_id = lead.node.id().clone();
    for tag in 1..=16 {
        command(
            &mut root,
            Command::Freeze {
                scope: Scope::Global,
                frozen: true,
                approved: false,
            },
            tag,
            lead.now,
        );
        let out = exchange(&mut root, &mut lead, Some(&lead_id));
        assert!(reports(&out).is_empty(), "{tag}: awaited");
    }
    command(
        &mut root,
        Command::Freeze {
            scope: Scope::Global,
            frozen: true,
            approved: false,
        },
        17,
        lead.now,
    );
    let r = reports(&exchange(&mut root, &mut lead, Some(&lead_id)));
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].tag, r[0].confirmed, r[0].nodes), (1, 1, 2));
}

/// One host `l` with 20 agents in two clusters of two sectors, `l` leading both; `a`
/// coordinates sector 0, `b` sector 1, `r` is the root. The tree, and `l`'s node with its
/// agents in the pool.
struct TwoSectors {
    tree: std::sync::Arc<qs_core::mesh::Hierarchy>,
    l: NodeId,
    a: NodeId,
    b: NodeId,
    r: NodeId,
    node: MeshNode,
    now: Time,
}

fn two_sectors() -> TwoSectors {
    use qs_core::mesh::{Hierarchy, Member, Seniority, Shape};
    let id = |s: &str| NodeId::new(s).unwrap();
    let (l, a, b, r) = (id("l"), id("a"), id("b"), id("r"));
    let members: Vec<Member> = (0..20u64)
        .map(|i| Member {
            agent: AgentId(i),
            host: l.clone(),
            zone: String::new(),
        })
        .collect();
    let shape = Shape {
        cluster_agents: 10,
        sector_clusters: 1,
    };
    let mut tree = Hierarchy::build(&members, shape, |_| Seniority::Seasoned).unwrap();
    assert_eq!((tree.clusters.len(), tree.sectors.len()), (2, 2));
    for c in &mut tree.clusters {
        c.lead = Some(l.clone());
    }
    tree.sectors[0].coordinator = Some(a.clone());
    tree.sectors[1].coordinator = Some(b.clone());
    tree.root = Some(r.clone());
    let tree = std::sync::Arc::new(tree);
    let mut now = Time::from_millis(3_000_000);
    let mut node = node_in(&l, MeshConfig::default(), &tree, now);
    let beats = (0..20u64).map(|i| beat(AgentId(i), 0, false)).collect();
    node.handle(MeshInput::Agents(beats), now);
    for _ in 0..4 {
        now = Time::from_millis(now.as_millis() + 300);
        node.handle(MeshInput::Tick, now);
    }
    drain(&mut node);
    assert_eq!(pool(&node).len(), 20);
    TwoSectors {
        tree,
        l,
        a,
        b,
        r,
        node,
        now,
    }
}

/// What a lead under two coordinators takes from one of them covers only the clusters that
/// coordinator coordinates: a route-around of the whole mesh passed on by `a` holds out
/// sector 0's agents only, a freeze passed on by `b` freezes sector 1's cluster only, and
/// each confirmation names the coordinator it came through.
#[test]
fn a_control_passed_on_covers_only_the_clusters_its_coordinator_coordinates() {
    use qs_wire::mesh::{ClusterId, Control};
    let mut t = two_sectors();
    let in_sector = |s: usize| -> BTreeSet<AgentId> {
        let c = t.tree.sectors[s].clusters[0];
        t.tree.cluster(c).unwrap().agents.iter().copied().collect()
    };
    let (zero, one) = (in_sector(0), in_sector(1));
    let around = Control {
        relayed: true,
        id: 9,
        slower_than_ms: 0,
        for_ms: 60_000,
        root: Some(t.r.clone()),
        ..Control::new(ControlAction::RouteAround, Scope::Global)
    };
    let msg = MeshMessage::Control(around);
    let from = t.a.clone();
    t.node.handle(MeshInput::Heard { from, msg }, t.now);
    let out = drain(&mut t.node);
    assert_eq!(pool(&t.node), one, "sector 0's held out, sector 1's not");
    let done: Vec<(NodeId, ControlDone)> = out
        .into_iter()
        .filter_map(|o| match o {
            MeshOutput::Send {
                to,
                msg: MeshMessage::ControlDone(d),
            } => Some((to, *d)),
            _ => None,
        })
        .collect();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].0, t.r, "to the root");
    assert_eq!(done[0].1.via.as_ref(), Some(&t.a));
    assert_eq!(done[0].1.agents_routed_around, zero.len() as u32);
    // A freeze of the whole mesh, passed on by b: sector 1's cluster only.
    let freeze = Control {
        relayed: true,
        id: 10,
        root: Some(t.r.clone()),
        ..Control::new(ControlAction::Freeze, Scope::Global)
    };
    let msg = MeshMessage::Control(freeze);
    let from = t.b.clone();
    t.node.handle(MeshInput::Heard { from, msg }, t.now);
    let c1: ClusterId = t.tree.sectors[1].clusters[0];
    let frozen: Vec<Scope> = t.node.frozen().iter().copied().collect();
    assert_eq!(frozen, [Scope::Cluster(c1)]);
}

/// At the root: a lead under two coordinators confirms once through each, both counted; a
/// copy delivered again is not; one through a coordinator not above it is refused.
#[test]
fn the_root_counts_each_confirmation_once_through_each_coordinator() {
    let t = two_sectors();
    let mut root = node_in(&t.r, MeshConfig::default(), &t.tree, t.now);
    command(
        &mut root,
        Command::Heal {
            scope: Scope::Global,
            approved: false,
        },
        6,
        t.now,
    );
    let id = sent_control(&mut root).id;
    let done = |from: &NodeId, via: Option<&NodeId>, released: u32| {
        let mut d = ControlDone::new(id, from.clone(), via.cloned(), ControlAction::Heal);
        d.agents_released = released;
        MeshMessage::ControlDone(Box::new(d))
    };
    let stranger = NodeId::new("z").unwrap();
    let refused = root.refused_senders();
    let hear = |root: &mut MeshNode, from: &NodeId, msg: MeshMessage| {
        let from = from.clone();
        root.handle(MeshInput::Heard { from, msg }, t.now);
    };
    hear(&mut root, &t.l, done(&t.l, Some(&t.a), 4));
    hear(&mut root, &t.l, done(&t.l, Some(&t.a), 4));
    hear(&mut root, &t.l, done(&t.l, Some(&stranger), 4));
    assert_eq!(root.refused_senders(), refused + 1);
    hear(&mut root, &t.a, done(&t.a, None, 0));
    hear(&mut root, &t.b, done(&t.b, None, 0));
    assert!(reports(&drain(&mut root)).is_empty(), "l through b awaited");
    hear(&mut root, &t.l, done(&t.l, Some(&t.b), 3));
    let r = reports(&drain(&mut root));
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].nodes, r[0].confirmed),
        (4, 4),
        "r, a, b and l, each once"
    );
    assert_eq!(
        r[0].agents_released, 7,
        "4 through a, 3 through b, the copy not"
    );
}

/// A control sent just before the root moved is still taken from the root before (as an
/// operation's orders are, for a moment), and confirmed to it: the root that awaits it. A
/// control naming a root neither tree names is confirmed to this tree's root.
#[test]
fn a_control_is_confirmed_to_the_root_that_sent_it_when_the_root_moved() {
    use qs_wire::mesh::Control;
    let (_root, mut lead) = mesh();
    let (old, new) = (lead.root.clone(), NodeId::new("root2").unwrap());
    let mut tree = (**lead.node.tree()).clone();
    tree.root = Some(new.clone());
    tree.sectors[0].coordinator = Some(new.clone());
    lead.node
        .handle(MeshInput::Tree(std::sync::Arc::new(tree)), lead.now);
    drain(&mut lead.node);
    let confirmed_to = |lead: &mut Lead, from: &NodeId, root: &NodeId| -> Vec<NodeId> {
        let c = Control {
            id: 5,
            root: Some(root.clone()),
            ..Control::new(ControlAction::Thaw, Scope::Global)
        };
        let (msg, from) = (MeshMessage::Control(c), from.clone());
        lead.node.handle(MeshInput::Heard { from, msg }, lead.now);
        drain(&mut lead.node)
            .into_iter()
            .filter_map(|o| match o {
                MeshOutput::Send {
                    to,
                    msg: MeshMessage::ControlDone(_),
                } => Some(to),
                _ => None,
            })
            .collect()
    };
    assert_eq!(confirmed_to(&mut lead, &old, &old), vec![old.clone()]);
    let nobody = NodeId::new("root3").unwrap();
    assert_eq!(confirmed_to(&mut lead, &new, &nobody), vec![new]);
}

/// A heal closes the global breaker only when asked of the whole mesh: healing a cluster
/// or a sector leaves it open (it would count a breaker closed, and a recovery, that the
/// next summaries undo).
#[test]
fn only_a_heal_of_the_whole_mesh_closes_the_global_breaker() {
    // 12 sectors of 10 clusters of 30 agents, a host for each cluster.
    let tree = sectors_tree(3_600, None);
    assert!(tree.sectors.len() > qs_core::mesh::breaker::GLOBAL_TRIP_AFTER_SECTORS);
    let me = tree.root.clone().unwrap();
    let now = Time::from_millis(1_000_000);
    let mut root = node_in(&me, MeshConfig::default(), &tree, now);
    let open_all = |root: &mut MeshNode, now: Time| {
        for ms in (0..=6_000).step_by(300) {
            let now = now + std::time::Duration::from_millis(ms);
            hear_sectors(root, &tree, now, |s| s.breaker_open = true);
            root.handle(MeshInput::Tick, now);
            drain(root);
        }
        assert_eq!(root.breakers().state(Scope::Global), BreakerState::Open);
    };
    open_all(&mut root, now);
    let now = now + std::time::Duration::from_millis(6_000);
    let cluster = Scope::Cluster(tree.sectors[0].clusters[0]);
    for (tag, scope) in [(1, cluster), (2, Scope::Sector(qs_wire::mesh::SectorId(0)))] {
        command(
            &mut root,
            Command::Heal {
                scope,
                approved: false,
            },
            tag,
            now,
        );
        drain(&mut root);
        assert_eq!(
            root.breakers().state(Scope::Global),
            BreakerState::Open,
            "healing {scope:?}"
        );
    }
    command(
        &mut root,
        Command::Heal {
            scope: Scope::Global,
            approved: false,
        },
        3,
        now,
    );
    drain(&mut root);
    assert_eq!(root.breakers().state(Scope::Global), BreakerState::Closed);
}

/// The mode's rules hold for an operator's controls too (seed §6.3): in DEGRADED_SEVERE a
/// mesh-wide one needs a human's approval, in EMERGENCY any does but a freeze (which stops
/// things); the refusal says which rule, with the counts.
#[test]
fn degraded_modes_ask_a_humans_approval_for_controls() {
    use qs_core::mesh::degrade::Mode;
    use qs_wire::mesh::{ClusterId, Exclusion, ImpedanceClass};
    let pair = pair();
    let (p1, p2) = (pair.p1.clone(), pair.p2.clone());
    let tree = pair.roles(&p2, &p2, &p1);
    let heal = |scope, approved| Command::Heal { scope, approved };
    let thaw = |approved| Command::Freeze {
        scope: Scope::Global,
        frozen: false,
        approved,
    };
    let freeze = Command::Freeze {
        scope: Scope::Global,
        frozen: true,
        approved: false,
    };
    let exclude = |approved| Command::Exclude {
        rule: Exclusion {
            class: ImpedanceClass::E,
            capability: "gpu".into(),
        },
        excluded: true,
        approved,
    };
    let route_around = |approved| Command::RouteAround {
        scope: Scope::Sector(qs_wire::mesh::SectorId(0)),
        slower_than_ms: 500,
        for_ms: 60_000,
        approved,
    };
    let cluster = Scope::Cluster(ClusterId(0));
    // (active of 20, the mode, the command, refused by the rule naming this)
    let table: Vec<(u32, Mode, Command, Option<&str>)> = vec![
        (20, Mode::Full, heal(Scope::Global, false), None),
        (
            10,
            Mode::DegradedSevere,
            heal(Scope::Global, false),
            Some("mesh-wide operations need"),
        ),
        (10, Mode::DegradedSevere, heal(Scope::Global, true), None),
        (10, Mode::DegradedSevere, heal(cluster, false), None),
        (
            10,
            Mode::DegradedSevere,
            exclude(false),
            Some("mesh-wide operations need"),
        ),
        (10, Mode::DegradedSevere, exclude(true), None),
        (10, Mode::DegradedSevere, route_around(false), None),
        (
            5,
            Mode::Emergency,
            heal(cluster, false),
            Some("investigate the root cause"),
        ),
        (5, Mode::Emergency, heal(cluster, true), None),
        (
            5,
            Mode::Emergency,
            route_around(false),
            Some("investigate the root cause"),
        ),
        (5, Mode::Emergency, freeze, None),
        (
            5,
            Mode::Emergency,
            thaw(false),
            Some("mesh-wide operations need"),
        ),
        (5, Mode::Emergency, thaw(true), None),
    ];
    for (i, (active, mode, command, refused)) in table.into_iter().enumerate() {
        let mut root = node_in(
            &p1,
            MeshConfig::default(),
            &tree,
            Time::from_millis(1_000_000),
        );
        let now = Time::from_millis(1_000_300);
        root_beat(&mut root, &p2, active, now);
        assert_eq!(root.mode(), mode, "row {i}");
        let tag = 100 + i as u64;
        let described = format!("row {i}: {command:?}");
        root.handle(MeshInput::Command { command, tag }, now);
        let out = drain(&mut root);
        let error = out.iter().find_map(|o| match o {
            MeshOutput::Refused { tag: t, error, .. } if *t == tag => Some(error.to_string()),
            _ => None,
        });
        let sent = out.iter().any(|o| {
            matches!(
                o,
                MeshOutput::Send {
                    msg: MeshMessage::Control(_),
                    ..
                }
            )
        });
        match refused {
            Some(rule) => {
                let error = error.unwrap_or_else(|| panic!("{described}: not refused"));
                assert!(error.contains(rule), "{described}: {error}");
                assert!(
                    error.contains(&format!("({active} of 20 agents active)")),
                    "{error}"
                );
                assert!(!sent, "{described}");
            }
            None => assert!(sent && error.is_none(), "{described}: {error:?} {out:?}"),
        }
    }
}
