//! Seed §7.2's capability mapping ("CLASS_E_LOCAL agents now excluded from 'llm_inference'
//! routing"), driven through `MeshNode::handle` on a virtual clock: an exclusion keeps an
//! impedance class out of the routing of every operation that requires the capability,
//! mesh-wide, and an inclusion lets it back; the root reports how many agents each touched.
//! The rules are held as freezes are: the root's notices carry them, a node new to its role
//! takes them from a notice, a node that becomes the root keeps them, they lapse with the
//! notices, and the root holds at most `MAX_EXCLUSIONS`.

mod common;

use common::*;
use qs_core::Time;
use qs_core::mesh::{Command, MeshConfig, MeshInput, MeshOutput};
use qs_wire::mesh::{
    AgentId, Control, ControlAction, Exclusion, ImpedanceClass, MAX_EXCLUSIONS, MeshMessage, Scope,
    Verb,
};
use std::collections::BTreeSet;

/// The agents an ask requiring the capability reaches (order `op`, each answering READY as
/// it arrives, 500 ms run).
fn asked(lead: &mut Lead, op: u64) -> BTreeSet<AgentId> {
    let envelope = lead.ask(op);
    asked_of(lead, envelope)
}

fn asked_of(lead: &mut Lead, envelope: qs_wire::mesh::MeshEnvelope) -> BTreeSet<AgentId> {
    lead.order_of(envelope, None);
    let mut reached = BTreeSet::new();
    for _ in 0..10 {
        for d in dispatches(&lead.run(50)) {
            if d.envelope.verb == Verb::Observe && reached.insert(d.agent) {
                lead.answer(&d, None);
            }
        }
    }
    reached
}

/// The agents with the capability, as the lead's next full cluster summary counts them
/// (within 6 s).
fn counted_in_summary(lead: &mut Lead) -> u32 {
    let out = lead.run(6_000);
    let summaries: Vec<&qs_wire::mesh::ClusterSummary> = out
        .iter()
        .filter_map(|o| match o {
            MeshOutput::Send {
                msg: MeshMessage::Cluster(s),
                ..
            } => Some(&**s),
            _ => None,
        })
        .collect();
    let last = summaries.last().expect("a full summary within 6 s");
    last.capabilities
        .iter()
        .find(|c| c.name == TPU)
        .map_or(0, |c| c.agents)
}

/// The class the lead sees the other host's (capable) agents in now.
fn class_of_theirs(lead: &mut Lead) -> ImpedanceClass {
    let now = lead.now;
    let classes: BTreeSet<ImpedanceClass> = lead
        .node
        .led_agents(now)
        .into_iter()
        .filter(|a| lead.theirs.contains(&a.agent))
        .map(|a| a.class)
        .collect();
    assert_eq!(classes.len(), 1, "{classes:?}");
    classes.into_iter().next().unwrap()
}

fn rule(class: ImpedanceClass) -> Exclusion {
    Exclusion {
        class,
        capability: TPU.to_string(),
    }
}

fn exclude(rule: Exclusion, excluded: bool) -> Command {
    Command::Exclude {
        rule,
        excluded,
        approved: false,
    }
}

/// An exclusion of the class the capable agents are in keeps an ask requiring the capability
/// from all of them (none other has it), and says how many it keeps out; one of another
/// class changes nothing; an inclusion lets them back. Every node in the tree holds the
/// rule, and `excluded()` lists it.
#[test]
fn an_exclusion_keeps_a_class_out_of_a_capabilitys_routing_until_an_inclusion() {
    let (mut root, mut lead) = mesh();
    let theirs: BTreeSet<AgentId> = lead.theirs.iter().copied().collect();
    assert_eq!(asked(&mut lead, 101), theirs, "before: every capable agent");
    assert_eq!(counted_in_summary(&mut lead), theirs.len() as u32);
    // A class nobody here is in (the human-paced one).
    let other = ImpedanceClass::F;

    // Another class's rule: nobody it keeps out, and the ask reaches them all.
    command(&mut root, exclude(rule(other), true), 1, lead.now);
    let r = reports(&exchange(&mut root, &mut lead, None));
    assert_eq!(r[0].action, ControlAction::Exclude);
    assert_eq!(
        (r[0].agents_excluded, r[0].confirmed),
        (Some(0), 2),
        "{r:?}"
    );
    assert_eq!(asked(&mut lead, 102), theirs);

    // Their class's (as measured now: it moves with what the lead measures): kept out,
    // counted, held by the root and the lead.
    let class = class_of_theirs(&mut lead);
    assert_ne!(class, other);
    command(&mut root, exclude(rule(class), true), 2, lead.now);
    let r = reports(&exchange(&mut root, &mut lead, None));
    assert_eq!(r[0].rule, Some(rule(class)));
    assert_eq!(r[0].agents_excluded, Some(theirs.len() as u32), "{r:?}");
    let both = BTreeSet::from([rule(class), rule(other)]);
    assert_eq!(*root.excluded(), both);
    assert_eq!(*lead.node.excluded(), both);
    assert!(asked(&mut lead, 103).is_empty(), "excluded");
    // Nor does its cluster's summary count them as having it (the root and the coordinators
    // send a delegation requiring it only where it may be).
    assert_eq!(counted_in_summary(&mut lead), 0);
    // An operation that requires nothing still reaches them.
    let mut envelope = lead.ask(104);
    envelope.requires = None;
    let reached = asked_of(&mut lead, envelope);
    assert!(theirs.is_subset(&reached), "{reached:?}");

    // Included again: back in the capability's routing.
    command(&mut root, exclude(rule(class), false), 3, lead.now);
    let r = reports(&exchange(&mut root, &mut lead, None));
    assert_eq!(r[0].action, ControlAction::Include);
    assert_eq!(r[0].agents_excluded, Some(theirs.len() as u32), "{r:?}");
    assert_eq!(*lead.node.excluded(), BTreeSet::from([rule(other)]));
    assert_eq!(asked(&mut lead, 105), theirs);

    // A node that hears the root's own copy (as a coordinator of another sector would) and
    // the copy its cluster's coordinator passes on counts its cluster once: in the second.
    let class = class_of_theirs(&mut lead);
    let excluded_by = |relayed: bool, lead: &mut Lead| -> u32 {
        let c = Control {
            id: 50 + u64::from(relayed),
            root: Some(lead.root.clone()),
            relayed,
            rule: Some(rule(class)),
            ..Control::new(ControlAction::Exclude, Scope::Global)
        };
        let from = lead.root.clone();
        let msg = MeshMessage::Control(c);
        lead.node.handle(MeshInput::Heard { from, msg }, lead.now);
        drain(&mut lead.node)
            .into_iter()
            .find_map(|o| match o {
                MeshOutput::Send {
                    msg: MeshMessage::ControlDone(d),
                    ..
                } => Some(d.agents_excluded),
                _ => None,
            })
            .expect("confirmed")
    };
    assert_eq!(
        excluded_by(false, &mut lead),
        0,
        "not its coordinator's copy"
    );
    assert_eq!(excluded_by(true, &mut lead), theirs.len() as u32);
}

/// The root's notices carry the rules (at the change, and every summary period while it
/// holds any); a node that never heard the control takes them from a notice and routes by
/// them; a node that becomes the root keeps them and announces them; they lapse with the
/// notices; and the root refuses a rule past `MAX_EXCLUSIONS`.
#[test]
fn the_rules_travel_with_the_roots_notices_and_outlive_it() {
    let pair = pair();
    let (p1, p2) = (pair.p1.clone(), pair.p2.clone());
    let tree = pair.roles(&p2, &p2, &p1);
    let at = |ms: u64| Time::from_millis(1_000_000 + ms);
    let mut root = node_in(&p1, MeshConfig::default(), &tree, at(0));
    let mut unaware = node_in(&p2, MeshConfig::default(), &tree, at(0));
    root_beat(&mut root, &p2, 20, at(0));
    command(
        &mut root,
        exclude(rule(ImpedanceClass::E), true),
        1,
        at(100),
    );
    drain(&mut root);
    let said = notices(&root_beat(&mut root, &p2, 20, at(300)));
    let (_, notice) = said
        .iter()
        .find(|(to, _)| *to == p2)
        .cloned()
        .expect("a notice at the change");
    assert_eq!(notice.excluded, [rule(ImpedanceClass::E)]);
    // Renewed every summary period while it holds any.
    let later = notices(&root_beat(&mut root, &p2, 20, at(6_000)));
    assert!(later.iter().any(|(_, n)| n.excluded == notice.excluded));

    // A node that heard only the notice holds the rule; it becomes the root and keeps it,
    // and its own notices say it.
    hear_notice(&mut unaware, &p1, &notice, at(350));
    assert_eq!(
        *unaware.excluded(),
        BTreeSet::from([rule(ImpedanceClass::E)])
    );
    // (p1 leads the cluster: the new root's notices go to it.)
    let tree2 = pair.roles(&p1, &p2, &p2);
    unaware.handle(MeshInput::Tree(tree2), at(7_000));
    drain(&mut unaware);
    let own = notices(&root_beat(&mut unaware, &p2, 20, at(7_400)));
    assert!(
        own.iter().any(|(_, n)| n.excluded == notice.excluded),
        "{own:?}"
    );

    // Off the root, with no notice for three summary periods: the rule lapses.
    let mut lead = node_in(&p2, MeshConfig::default(), &tree, at(0));
    hear_notice(&mut lead, &p1, &notice, at(400));
    let summary_ms = MeshConfig::default().summary_ms;
    lead.handle(MeshInput::Tick, at(400 + 3 * summary_ms - 100));
    assert_eq!(lead.excluded().len(), 1, "not yet");
    lead.handle(MeshInput::Tick, at(400 + 3 * summary_ms + 400));
    assert!(lead.excluded().is_empty(), "lapsed");

    // At most MAX_EXCLUSIONS rules: one more is refused, one held already is not.
    let many = |i: usize| Exclusion {
        class: ImpedanceClass::ALL[i % 6],
        capability: format!("cap{}", i / 6),
    };
    // (Its sector heard from again: the mesh is FULL, no approval asked.)
    root_beat(&mut root, &p2, 20, at(8_000));
    for i in 1..MAX_EXCLUSIONS {
        command(&mut root, exclude(many(i + 6), true), 10, at(8_000));
        drain(&mut root);
    }
    assert_eq!(root.excluded().len(), MAX_EXCLUSIONS);
    command(&mut root, exclude(many(1_000), true), 11, at(8_100));
    let refused = drain(&mut root).into_iter().any(|o| {
        matches!(o, MeshOutput::Refused { tag: 11, error, .. } if error.to_string().contains("rules"))
    });
    assert!(refused);
    command(
        &mut root,
        exclude(rule(ImpedanceClass::E), true),
        12,
        at(8_200),
    );
    let refused = drain(&mut root)
        .into_iter()
        .any(|o| matches!(o, MeshOutput::Refused { tag: 12, .. }));
    assert!(!refused, "a rule held already");
    // A rule is mesh-wide: a control of one for a sector is refused where it is checked.
    let c = qs_wire::mesh::Control {
        rule: Some(rule(ImpedanceClass::E)),
        ..qs_wire::mesh::Control::new(
            ControlAction::Exclude,
            Scope::Sector(qs_wire::mesh::SectorId(0)),
        )
    };
    assert!(c.check().unwrap_err().contains("mesh-wide"));
}

/// The rules outlive every node: the root asks its shell to store the set at each change; a
/// root that heard no notice and changed no rule (a fleet restarted) takes what the store
/// holds, one that did keeps its own (its write read back changes nothing; a stale one is
/// written over); a node that becomes the root while the last root's notices reach it keeps
/// what they said and repairs the store; and a node whose notices lapsed falls back on the
/// store instead of routing by no rule.
#[test]
fn the_rules_are_stored_and_outlive_every_node() {
    let pair = pair();
    let (p1, p2) = (pair.p1.clone(), pair.p2.clone());
    let tree = pair.roles(&p2, &p2, &p1);
    let at = |ms: u64| Time::from_millis(1_000_000 + ms);
    let stored = |out: &[MeshOutput]| -> Vec<Vec<Exclusion>> {
        out.iter()
            .filter_map(|o| match o {
                MeshOutput::Rules(r) => Some(r.clone()),
                _ => None,
            })
            .collect()
    };
    let e = rule(ImpedanceClass::E);
    let d = rule(ImpedanceClass::D);

    // The root stores each change.
    let mut root = node_in(&p1, MeshConfig::default(), &tree, at(0));
    command(&mut root, exclude(e.clone(), true), 1, at(100));
    assert_eq!(stored(&drain(&mut root)), [vec![e.clone()]]);
    // Its own write read back changes nothing; an older one (a write lost, a former root's
    // late one) is written over: its own set holds.
    root.handle(MeshInput::Rules(vec![e.clone()]), at(150));
    assert!(stored(&drain(&mut root)).is_empty());
    root.handle(MeshInput::Rules(Vec::new()), at(200));
    assert_eq!(stored(&drain(&mut root)), [vec![e.clone()]]);
    assert_eq!(*root.excluded(), BTreeSet::from([e.clone()]));
    command(&mut root, exclude(e.clone(), false), 2, at(300));
    assert_eq!(stored(&drain(&mut root)), [Vec::<Exclusion>::new()]);

    // A restarted root (no rule of its own, no notice heard) takes the store's, and its
    // notices say it.
    let mut restarted = node_in(&p1, MeshConfig::default(), &tree, at(1_000));
    root_beat(&mut restarted, &p2, 20, at(1_000));
    restarted.handle(MeshInput::Rules(vec![d.clone()]), at(1_100));
    assert_eq!(*restarted.excluded(), BTreeSet::from([d.clone()]));
    let said = notices(&root_beat(&mut restarted, &p2, 20, at(1_300)));
    assert!(
        said.iter().any(|(_, n)| n.excluded == [d.clone()]),
        "{said:?}"
    );

    // Off the root: the store's set is kept aside while notices say theirs; when they lapse,
    // it is what the node routes by; when the node becomes the root, it starts from it.
    let mut lead = node_in(&p2, MeshConfig::default(), &tree, at(0));
    lead.handle(MeshInput::Rules(vec![d.clone()]), at(2_000));
    let notice = qs_wire::mesh::ModeNotice {
        level: 0,
        active_agents: 20,
        total_agents: 20,
        sent_ms: at(2_000).as_millis(),
        frozen: false,
        frozen_scopes: Vec::new(),
        excluded: vec![e.clone()],
        last_control: 0,
        root: Some(p1.clone()),
    };
    hear_notice(&mut lead, &p1, &notice, at(2_050));
    assert_eq!(
        *lead.excluded(),
        BTreeSet::from([e.clone()]),
        "the notice's"
    );
    let summary_ms = MeshConfig::default().summary_ms;
    lead.handle(MeshInput::Tick, at(2_050 + 3 * summary_ms + 400));
    assert_eq!(
        *lead.excluded(),
        BTreeSet::from([d.clone()]),
        "lapsed: the store's"
    );
    hear_notice(
        &mut lead,
        &p1,
        &qs_wire::mesh::ModeNotice {
            sent_ms: at(20_000).as_millis(),
            ..notice
        },
        at(20_000),
    );
    assert_eq!(*lead.excluded(), BTreeSet::from([e.clone()]));
    // It becomes the root while the notices still reach it: what they said is newer than
    // the store (a write the last root lost), so it keeps it and stores it.
    let mut twin = node_in(&p2, MeshConfig::default(), &tree, at(0));
    twin.handle(MeshInput::Rules(vec![d.clone()]), at(2_000));
    let to_root = pair.roles(&p1, &p2, &p2);
    lead.handle(MeshInput::Tree(to_root.clone()), at(20_100));
    assert_eq!(
        stored(&drain(&mut lead)),
        [vec![e.clone()]],
        "the store repaired"
    );
    assert_eq!(
        *lead.excluded(),
        BTreeSet::from([e.clone()]),
        "the notices'"
    );
    // One that heard no notice (restarted with the fleet) starts from the store.
    twin.handle(MeshInput::Tree(to_root), at(20_100));
    drain(&mut twin);
    assert_eq!(*twin.excluded(), BTreeSet::from([d]), "the store's");
}

/// Where a capability is (seed §4.2: "find the N best agents mesh-wide for a given
/// capability … cached and indexed by capability"): the summaries count agents by
/// capability, and a sample that requires one (a delegation, an ask with `--capability`) goes
/// only where the summaries say it may be: the root picks among the sectors that have it, a
/// coordinator among the clusters that have it, whatever the operation's hash would pick.
#[test]
fn a_sample_that_requires_a_capability_goes_where_the_summaries_say_it_is() {
    use qs_core::mesh::{CascadeCommand, Hierarchy, Member, Seniority, Shape};
    use qs_wire::mesh::{CapabilityCount, CascadeMode, ClusterId, Order, SectorId};
    use std::sync::Arc;
    let hosts: Vec<qs_wire::NodeId> = (0..30)
        .map(|i| qs_wire::NodeId::new(&format!("h{i:02}")).unwrap())
        .collect();
    let members: Vec<Member> = (0..900u64)
        .map(|i| Member {
            agent: AgentId(i),
            host: hosts[(i % 30) as usize].clone(),
            zone: String::new(),
        })
        .collect();
    let tree =
        Arc::new(Hierarchy::build(&members, Shape::default(), |_| Seniority::Seasoned).unwrap());
    assert!(tree.sectors.len() >= 3, "{}", tree.sectors.len());
    let now = Time::from_millis(5_000_000);
    let tpu = |n: u32| {
        vec![CapabilityCount {
            name: TPU.to_string(),
            agents: n,
        }]
    };
    let orders = |out: &[MeshOutput]| -> Vec<(qs_wire::NodeId, Order)> {
        out.iter()
            .filter_map(|o| match o {
                MeshOutput::Send {
                    to,
                    msg: MeshMessage::Order(order),
                } => Some((to.clone(), (**order).clone())),
                _ => None,
            })
            .collect()
    };

    // The root: only the last sector has agents with the capability.
    let root_id = tree.root.clone().unwrap();
    let mut root = node_in(&root_id, MeshConfig::default(), &tree, now);
    let last = SectorId(tree.sectors.len() as u32 - 1);
    for (s, sector) in tree.sectors.iter().enumerate() {
        let co = sector.coordinator.clone().unwrap();
        let mut summary = sector_summary(s as u32, &co, 300, 300, now);
        if SectorId(s as u32) == last {
            summary.capabilities = tpu(3);
        }
        let msg = MeshMessage::Sector(Box::new(summary));
        root.handle(MeshInput::Heard { from: co, msg }, now);
    }
    drain(&mut root);
    let want = tree.sector(last).unwrap().coordinator.clone().unwrap();
    for tag in 0..8 {
        let mut envelope = root.envelope(Verb::Act, "summarize", 2, now);
        envelope.requires = Some(TPU.to_string());
        let command = Command::Cascade(CascadeCommand {
            sample: Some(1),
            ..CascadeCommand::new(CascadeMode::Wave, Scope::Global, envelope)
        });
        root.handle(MeshInput::Command { command, tag }, now);
        let sent = orders(&drain(&mut root));
        let to: Vec<_> = sent.iter().map(|(to, _)| to.clone()).collect();
        assert_eq!(to, std::slice::from_ref(&want), "delegation {tag}");
    }

    // A coordinator: only one of its clusters has it.
    let s = SectorId(0);
    let co_id = tree.sector(s).unwrap().coordinator.clone().unwrap();
    // (Its clusters with agents: a cluster without any has no lead.)
    let clusters: Vec<ClusterId> = tree.sector(s).unwrap().clusters.clone();
    let clusters: Vec<ClusterId> = clusters
        .into_iter()
        .filter(|c| tree.cluster(*c).is_some_and(|cl| cl.lead.is_some()))
        .collect();
    assert!(clusters.len() >= 3, "{clusters:?}");
    let capable = *clusters.last().unwrap();
    for tag in 0..8u64 {
        let mut co = node_in(&co_id, MeshConfig::default(), &tree, now);
        for c in &clusters {
            let lead = tree.cluster(*c).unwrap().lead.clone().unwrap();
            let mut summary = cluster_summary(c.0, s.0, &lead, now);
            if *c == capable {
                summary.capabilities = tpu(2);
            }
            let msg = MeshMessage::Cluster(Box::new(summary));
            co.handle(MeshInput::Heard { from: lead, msg }, now);
        }
        drain(&mut co);
        let mut order = sector_order(&mut co, 100 + tag, &root_id, now);
        order.sample_per_cluster = Some(1);
        order.envelope.requires = Some(TPU.to_string());
        let msg = MeshMessage::Order(Box::new(order));
        co.handle(
            MeshInput::Heard {
                from: root_id.clone(),
                msg,
            },
            now,
        );
        let scopes: Vec<Scope> = orders(&drain(&mut co))
            .into_iter()
            .map(|(_, o)| o.scope)
            .collect();
        assert_eq!(scopes, [Scope::Cluster(capable)], "order {tag}");
    }
}
