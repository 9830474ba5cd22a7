//! Freezes outlive the nodes that hold them (seed §7.1's `freeze`): the root's mode notices
//! say what it holds frozen, at each change and every summary period while anything is; a
//! coordinator or lead new to a frozen scope takes it from them, a node that becomes the
//! root keeps it, and a mark a lost thaw left behind is dropped. A notice older than a
//! control carried out does not undo it. The root holds at most `MAX_FROZEN_SCOPES`
//! sectors and clusters frozen.

mod common;

use common::*;
use qs_core::Time;
use qs_core::mesh::{
    CascadeCommand, Command, CommandError, MeshConfig, MeshInput, MeshNode, MeshOutput,
};
use qs_wire::NodeId;
use qs_wire::mesh::{
    CascadeMode, ClusterId, Control, ControlAction, MAX_FROZEN_SCOPES, MeshMessage, ModeNotice,
    Scope, SectorId, Verb,
};
use std::collections::BTreeSet;

fn at(ms: u64) -> Time {
    Time::from_millis(1_000_000 + ms)
}

fn freeze(node: &mut MeshNode, scope: Scope, frozen: bool, now: Time) -> Vec<MeshOutput> {
    let command = Command::Freeze {
        scope,
        frozen,
        approved: false,
    };
    node.handle(MeshInput::Command { command, tag: 1 }, now);
    drain(node)
}

/// The error of the command `out` refused, if one.
fn refused(out: &[MeshOutput]) -> Option<CommandError> {
    out.iter().find_map(|o| match o {
        MeshOutput::Refused { error, .. } => Some(error.clone()),
        _ => None,
    })
}

/// The orders `node` put out to `to`.
fn orders_to(out: &[MeshOutput], to: &NodeId) -> usize {
    out.iter()
        .filter(|o| matches!(o, MeshOutput::Send { to: t, msg: MeshMessage::Order(_) } if t == to))
        .count()
}

/// `node`, sector 0's coordinator, hears the root's wave order for the sector: what it put
/// out.
fn order_heard(node: &mut MeshNode, root: &NodeId, now: Time) -> Vec<MeshOutput> {
    let order = sector_order(node, 1, root, now);
    let msg = MeshMessage::Order(Box::new(order));
    let from = root.clone();
    node.handle(MeshInput::Heard { from, msg }, now);
    drain(node)
}

/// A freeze of the whole mesh outlives its root: the root's notices say it, at the change
/// and every summary period while it lasts; a node that becomes the root keeps the mesh
/// frozen and refuses operations until a thaw. One that heard no freeze is not frozen.
#[test]
fn a_freeze_of_the_whole_mesh_outlives_its_root() {
    let pair = pair();
    let (p1, p2) = (pair.p1.clone(), pair.p2.clone());
    let tree = pair.roles(&p2, &p2, &p1);
    let mut root = node_in(&p1, MeshConfig::default(), &tree, at(0));
    let mut lead = node_in(&p2, MeshConfig::default(), &tree, at(0));
    let mut bystander = node_in(&p2, MeshConfig::default(), &tree, at(0));
    root_beat(&mut root, &p2, 20, at(0));
    let freeze = Command::Freeze {
        scope: Scope::Global,
        frozen: true,
        approved: false,
    };
    root.handle(
        MeshInput::Command {
            command: freeze,
            tag: 1,
        },
        at(100),
    );
    drain(&mut root);
    let said = notices(&root_beat(&mut root, &p2, 20, at(300)));
    assert!(said.iter().any(|(to, n)| *to == p2 && n.frozen), "{said:?}");
    let (_, notice) = said.iter().find(|(to, _)| *to == p2).cloned().unwrap();
    hear_notice(&mut lead, &p1, &notice, at(350));
    // Renewed every summary period while it lasts.
    let later = notices(&root_beat(&mut root, &p2, 20, at(6_000)));
    assert!(later.iter().any(|(_, n)| n.frozen), "{later:?}");
    // p1 is gone: p2 becomes the root, and keeps the mesh frozen.
    let tree2 = pair.roles(&p2, &p2, &p2);
    lead.handle(MeshInput::Tree(tree2.clone()), at(7_000));
    assert!(lead.frozen().contains(&Scope::Global));
    cascade(&mut lead, CascadeMode::Wave, Verb::Sync, "x", at(7_100));
    let refused = drain(&mut lead).into_iter().any(|o| {
        matches!(
            o,
            MeshOutput::Refused {
                error: CommandError::Frozen(Scope::Global),
                ..
            }
        )
    });
    assert!(refused, "frozen at the new root");
    // One that heard no freeze is not frozen when it becomes the root.
    bystander.handle(MeshInput::Tree(tree2), at(7_000));
    assert!(bystander.frozen().is_empty());
}

/// A sector's freeze reaches a coordinator that never heard the control (the one the tree
/// named after the last died): the root's notice names the sector, and the new coordinator
/// passes no order into it. It outlives the root too: the node that becomes the root refuses
/// an operation on a cluster of the frozen sector, and its own notices say the freeze.
#[test]
fn a_sector_freeze_reaches_a_new_coordinator_and_outlives_the_root() {
    let pair = pair();
    let (p1, p2) = (pair.p1.clone(), pair.p2.clone());
    // p1 is the root and leads the one cluster; p2 coordinates its sector.
    let tree = pair.roles(&p1, &p2, &p1);
    let mut root = node_in(&p1, MeshConfig::default(), &tree, at(0));
    root_beat(&mut root, &p2, 20, at(0));
    let out = freeze(&mut root, Scope::Sector(SectorId(0)), true, at(100));
    // The coordinator passes it on to the cluster's lead, the root: it marks nothing more
    // there (what the root holds frozen is what the operator froze).
    let sent = out.into_iter().find_map(|o| match o {
        MeshOutput::Send {
            to,
            msg: MeshMessage::Control(c),
        } if to == p2 => Some(c),
        _ => None,
    });
    let passed_on = Control {
        relayed: true,
        ..sent.expect("the control to the coordinator")
    };
    let msg = MeshMessage::Control(passed_on);
    let from = p2.clone();
    root.handle(MeshInput::Heard { from, msg }, at(200));
    drain(&mut root);
    let said = notices(&root_beat(&mut root, &p2, 20, at(300)));
    let (_, notice) = said
        .into_iter()
        .find(|(to, _)| *to == p2)
        .expect("a notice");
    assert_eq!(notice.frozen_scopes, [Scope::Sector(SectorId(0))]);
    assert!(!notice.frozen && notice.last_control > 0, "{notice:?}");
    // Renewed every summary period while it lasts.
    let later = notices(&root_beat(&mut root, &p2, 20, at(6_000)));
    assert!(
        later
            .iter()
            .any(|(_, n)| n.frozen_scopes == notice.frozen_scopes)
    );

    // Two coordinators new to the sector: one hears the notice, one does not.
    let mut heard = node_in(&p2, MeshConfig::default(), &tree, at(0));
    let mut unaware = node_in(&p2, MeshConfig::default(), &tree, at(0));
    hear_notice(&mut heard, &p1, &notice, at(350));
    assert_eq!(
        heard.frozen().iter().copied().collect::<Vec<_>>(),
        [Scope::Sector(SectorId(0))]
    );
    assert_eq!(orders_to(&order_heard(&mut unaware, &p1, at(400)), &p1), 1);
    assert_eq!(orders_to(&order_heard(&mut heard, &p1, at(400)), &p1), 0);

    // p1 is no longer the root: p2 is, and keeps the sector frozen, a cluster of it too.
    let tree2 = pair.roles(&p1, &p2, &p2);
    heard.handle(MeshInput::Tree(tree2), at(7_000));
    drain(&mut heard);
    let envelope = heard.envelope(Verb::Sync, "x", 2, at(7_100));
    let command = Command::Cascade(CascadeCommand::new(
        CascadeMode::Wave,
        Scope::Cluster(ClusterId(0)),
        envelope,
    ));
    heard.handle(MeshInput::Command { command, tag: 2 }, at(7_100));
    assert_eq!(
        refused(&drain(&mut heard)),
        Some(CommandError::Frozen(Scope::Sector(SectorId(0))))
    );
    let own = notices(&root_beat(&mut heard, &p2, 20, at(7_400)));
    assert!(
        own.iter()
            .any(|(_, n)| n.frozen_scopes == [Scope::Sector(SectorId(0))]),
        "{own:?}"
    );
}

/// A notice older than a control carried out here does not undo it; a later one that says
/// less frozen drops the mark a lost thaw left; a thaw passed on by a coordinator thaws the
/// scope a notice marked here (not only the clusters the lead marked itself); a control that
/// comes late is settled by the next notice; a notice of another root is not taken; and
/// what notices said frozen lapses with them when no notice renews it.
#[test]
fn notices_follow_the_controls_they_come_after() {
    let pair = pair();
    let (p1, p2) = (pair.p1.clone(), pair.p2.clone());
    // p1 is the root and coordinates; p2 leads the cluster.
    let tree = pair.roles(&p2, &p1, &p1);
    let mut lead = node_in(&p2, MeshConfig::default(), &tree, at(0));
    let control = |id: u64, action: ControlAction, scope: Scope, relayed: bool| Control {
        id,
        root: Some(p1.clone()),
        relayed,
        ..Control::new(action, scope)
    };
    let notice = |sent: u64, last_control: u64, frozen_scopes: Vec<Scope>| ModeNotice {
        level: 0,
        active_agents: 20,
        total_agents: 20,
        sent_ms: at(sent).as_millis(),
        frozen: false,
        frozen_scopes,
        excluded: Vec::new(),
        last_control,
        root: Some(p1.clone()),
    };
    let heard = |lead: &mut MeshNode, c: Control, now: Time| {
        let msg = MeshMessage::Control(c);
        lead.handle(
            MeshInput::Heard {
                from: p1.clone(),
                msg,
            },
            now,
        );
        drain(lead)
    };
    let frozen = |lead: &MeshNode| lead.frozen().iter().copied().collect::<BTreeSet<_>>();
    let cluster = Scope::Cluster(ClusterId(0));
    let sector = Scope::Sector(SectorId(0));
    heard(
        &mut lead,
        control(5, ControlAction::Freeze, cluster, false),
        at(100),
    );
    assert_eq!(frozen(&lead), BTreeSet::from([cluster]));
    // Sent before the freeze (the root's control 4 its last), heard after it: kept.
    hear_notice(&mut lead, &p1, &notice(200, 4, Vec::new()), at(300));
    assert_eq!(frozen(&lead), BTreeSet::from([cluster]));
    // After a thaw (6) this node never heard: the mark goes.
    hear_notice(&mut lead, &p1, &notice(500, 6, Vec::new()), at(600));
    assert!(frozen(&lead).is_empty());
    // A freeze of the sector this node heard of only from a notice, then its thaw, passed
    // on by the coordinator: thawed, and said to have been frozen here.
    hear_notice(&mut lead, &p1, &notice(700, 7, vec![sector]), at(800));
    assert_eq!(frozen(&lead), BTreeSet::from([sector]));
    let out = heard(
        &mut lead,
        control(8, ControlAction::Thaw, sector, true),
        at(900),
    );
    assert!(frozen(&lead).is_empty());
    let was_frozen = out.iter().any(
        |o| matches!(o, MeshOutput::Send { msg: MeshMessage::ControlDone(d), .. } if d.was_frozen),
    );
    assert!(was_frozen, "{out:?}");
    // The freeze before that thaw (7), passed on late (by a longer path): carried out as it
    // comes, and the root's next notice settles it.
    heard(
        &mut lead,
        control(7, ControlAction::Freeze, sector, true),
        at(950),
    );
    assert_eq!(frozen(&lead), BTreeSet::from([cluster]));
    hear_notice(&mut lead, &p1, &notice(960, 8, Vec::new()), at(970));
    assert!(frozen(&lead).is_empty());
    // A notice of another root (a slower copy from the root before): not taken.
    let stranger = ModeNotice {
        root: Some(NodeId::new("p3").unwrap()),
        ..notice(1_000, 9, vec![sector])
    };
    hear_notice(&mut lead, &p1, &stranger, at(1_000));
    assert!(frozen(&lead).is_empty());
    // The root's, then none for three summary periods: it lapses.
    hear_notice(&mut lead, &p1, &notice(1_100, 9, vec![sector]), at(1_100));
    assert_eq!(frozen(&lead), BTreeSet::from([sector]));
    let summary_ms = MeshConfig::default().summary_ms;
    lead.handle(MeshInput::Tick, at(1_100 + 3 * summary_ms - 100));
    assert_eq!(frozen(&lead), BTreeSet::from([sector]), "not yet");
    lead.handle(MeshInput::Tick, at(1_100 + 3 * summary_ms + 400));
    assert!(frozen(&lead).is_empty(), "lapsed");
}

/// A lead that froze its clusters for a sector's freeze passed on by its coordinator, and
/// becomes the root before any notice said the freeze, holds the sector frozen (not its one
/// cluster) and announces it; one with nothing frozen announces nothing (a root change
/// sends no notice to every host: marks a lost thaw left lapse instead).
#[test]
fn a_lead_that_becomes_the_root_holds_what_its_clusters_were_frozen_for() {
    let pair = pair();
    let (p1, p2) = (pair.p1.clone(), pair.p2.clone());
    // p1 is the root and coordinates; p2 leads the cluster.
    let tree = pair.roles(&p2, &p1, &p1);
    let mut lead = node_in(&p2, MeshConfig::default(), &tree, at(0));
    let mut quiet = node_in(&p2, MeshConfig::default(), &tree, at(0));
    let sector = Scope::Sector(SectorId(0));
    let passed_on = Control {
        id: 5,
        root: Some(p1.clone()),
        relayed: true,
        ..Control::new(ControlAction::Freeze, sector)
    };
    let msg = MeshMessage::Control(passed_on);
    lead.handle(
        MeshInput::Heard {
            from: p1.clone(),
            msg,
        },
        at(100),
    );
    drain(&mut lead);
    let marked: Vec<Scope> = lead.frozen().iter().copied().collect();
    assert_eq!(marked, [Scope::Cluster(ClusterId(0))]);
    // p1 is gone: p2 is the root (p1 still leads, to hear notices).
    let tree2 = pair.roles(&p1, &p2, &p2);
    for node in [&mut lead, &mut quiet] {
        node.handle(MeshInput::Tree(tree2.clone()), at(1_000));
        drain(node);
    }
    let held: Vec<Scope> = lead.frozen().iter().copied().collect();
    assert_eq!(held, [sector]);
    let said = notices(&root_beat(&mut lead, &p2, 20, at(1_300)));
    assert!(
        said.iter().any(|(_, n)| n.frozen_scopes == [sector]),
        "{said:?}"
    );
    let said = notices(&root_beat(&mut quiet, &p2, 20, at(1_300)));
    assert!(said.is_empty(), "{said:?}");
}

/// The root holds at most `MAX_FROZEN_SCOPES` sectors and clusters frozen: one more is
/// refused by name; a scope frozen already, and the whole mesh, still may be; its notice
/// then names every one and passes the wire's check.
#[test]
fn the_root_holds_a_bounded_set_of_frozen_scopes() {
    let pair = pair();
    let (p1, p2) = (pair.p1.clone(), pair.p2.clone());
    let tree = pair.roles(&p2, &p2, &p1);
    let mut root = node_in(&p1, MeshConfig::default(), &tree, at(0));
    let cluster = |c: usize| Scope::Cluster(ClusterId(c as u32));
    for c in 0..MAX_FROZEN_SCOPES {
        assert_eq!(refused(&freeze(&mut root, cluster(c), true, at(100))), None);
    }
    let over = refused(&freeze(
        &mut root,
        cluster(MAX_FROZEN_SCOPES),
        true,
        at(100),
    ));
    assert!(
        matches!(&over, Some(CommandError::Invalid(why)) if why.contains("256 scopes")),
        "{over:?}"
    );
    assert_eq!(refused(&freeze(&mut root, cluster(3), true, at(100))), None);
    assert_eq!(
        refused(&freeze(&mut root, Scope::Global, true, at(100))),
        None
    );
    let said = notices(&root_beat(&mut root, &p2, 20, at(300)));
    let (_, notice) = said
        .into_iter()
        .find(|(to, _)| *to == p2)
        .expect("a notice");
    assert!(notice.frozen);
    assert_eq!(notice.frozen_scopes.len(), MAX_FROZEN_SCOPES);
    assert_eq!(notice.check(), Ok(()));
}
