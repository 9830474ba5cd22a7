//! The mesh's mode reaches every node (seed §6.3): the root announces it down the tree at
//! each change (and the next two beats) and renews it while the mesh is not FULL; each node takes it only from the
//! root or a node the tree names above it, passes each notice on once, and counts the mesh
//! FULL again when no notice renews it. In EMERGENCY a lead admits no new agent to the
//! routing pool (seed: "Halt all automated operations").

mod common;

use common::*;
use qs_core::Time;
use qs_core::mesh::degrade::Mode;
use qs_core::mesh::{MeshConfig, MeshInput, MeshNode, MeshOutput};
use qs_wire::NodeId;
use qs_wire::mesh::{
    AgentId, ClusterId, Control, ControlAction, MeshMessage, ModeNotice, Scope, Verb,
};
use std::time::Duration;

const BEAT_MS: u64 = 300;

fn changes(out: &[MeshOutput]) -> Vec<(Mode, Mode)> {
    out.iter()
        .filter_map(|o| match o {
            MeshOutput::ModeChanged { from, to, .. } => Some((*from, *to)),
            _ => None,
        })
        .collect()
}

fn at(ms: u64) -> Time {
    Time::from_millis(1_000_000 + ms)
}

#[test]
fn the_roots_mode_reaches_every_node_and_lapses_unless_renewed() {
    let pair = pair();
    let (p1, p2) = (pair.p1.clone(), pair.p2.clone());
    // p1 is the root; p2 coordinates the one sector and leads its cluster, where p1 has
    // agents 0–9.
    let tree = pair.roles(&p2, &p2, &p1);
    let cfg = MeshConfig::default();
    let mut root = node_in(&p1, cfg, &tree, at(0));
    let mut lead = node_in(&p2, cfg, &tree, at(0));
    let p1_agents: Vec<_> = (0..10).map(|i| beat(AgentId(i), 0, false)).collect();
    root.handle(MeshInput::Agents(p1_agents.clone()), at(0));
    drain(&mut root);
    let sent_ms = at(0).as_millis();
    hear_beat(&mut lead, &p1, ClusterId(0), sent_ms, p1_agents, at(0));
    drain(&mut lead);

    // 14 of 20 active: the root changes its mode and tells its coordinator.
    let out = root_beat(&mut root, &p2, 14, at(BEAT_MS));
    assert_eq!(changes(&out), vec![(Mode::Full, Mode::DegradedModerate)]);
    let sent = notices(&out);
    assert_eq!(sent.len(), 1, "{out:?}");
    let (to, notice) = sent[0].clone();
    assert_eq!(to, p2);
    assert_eq!(
        (notice.level, notice.active_agents, notice.total_agents),
        (2, 14, 20)
    );

    // The lead takes it and passes it on to the hosts of its agents: p1.
    let t = at(BEAT_MS + 10);
    let out = hear_notice(&mut lead, &p1, &notice, t);
    assert_eq!(lead.mode(), Mode::DegradedModerate);
    assert_eq!(changes(&out), vec![(Mode::Full, Mode::DegradedModerate)]);
    assert_eq!(notices(&out), vec![(p1.clone(), notice.clone())]);
    // Once: the same notice again changes nothing and goes nowhere.
    let out = hear_notice(&mut lead, &p1, &notice, t);
    assert!(
        changes(&out).is_empty() && notices(&out).is_empty(),
        "{out:?}"
    );
    // The root hears its own notice back from the lead (its agents' lead: no stranger): it
    // decides its mode itself, and passes nothing on again.
    let refused = root.refused_senders();
    let out = hear_notice(&mut root, &p2, &notice, t);
    assert!(
        notices(&out).is_empty() && changes(&out).is_empty(),
        "{out:?}"
    );
    assert_eq!(root.refused_senders(), refused);
    // A node the tree does not name above the lead is refused.
    let stranger = NodeId::new("p3").unwrap();
    let forged = ModeNotice {
        level: 4,
        sent_ms: notice.sent_ms + 1,
        ..notice
    };
    let refused = lead.refused_senders();
    let out = hear_notice(&mut lead, &stranger, &forged, t);
    assert_eq!(lead.refused_senders(), refused + 1);
    assert_eq!(lead.mode(), Mode::DegradedModerate);
    assert!(notices(&out).is_empty());

    // The change goes out at the next two beats too; then, while the mesh is not FULL,
    // the root renews its notice a summary period after the last.
    let period_ms = cfg.summary_ms;
    let mut renewed = Vec::new();
    let mut ms = 2 * BEAT_MS;
    while ms <= 4 * BEAT_MS + period_ms {
        renewed.extend(notices(&root_beat(&mut root, &p2, 14, at(ms))));
        ms += BEAT_MS;
    }
    let sent_at: Vec<u64> = renewed.iter().map(|(_, n)| n.sent_ms).collect();
    let first = notice.sent_ms;
    let last = first + 2 * BEAT_MS;
    assert_eq!(sent_at.len(), 3, "{renewed:?}");
    assert_eq!(sent_at[..2], [first + BEAT_MS, last]);
    assert!((last + period_ms..last + period_ms + BEAT_MS).contains(&sent_at[2]));
    // Recovered: a notice of FULL at this beat and the next two, then none.
    let out = root_beat(&mut root, &p2, 20, at(ms));
    assert_eq!(changes(&out), vec![(Mode::DegradedModerate, Mode::Full)]);
    let mut full = notices(&out);
    for k in 1..=40 {
        let out = root_beat(&mut root, &p2, 20, at(ms + k * BEAT_MS));
        full.extend(notices(&out));
    }
    assert_eq!(full.len(), 3, "{full:?}");
    assert!(full.iter().all(|(_, n)| n.level == 0));

    // A notice not renewed lapses at the lead after three summary periods.
    let lapse = Duration::from_millis(3 * period_ms);
    let before = t + (lapse - Duration::from_millis(BEAT_MS));
    lead.handle(MeshInput::Tick, before);
    assert_eq!(lead.mode(), Mode::DegradedModerate);
    drain(&mut lead);
    let mut lapsed = Vec::new();
    for k in 0..3 {
        let now = t + lapse + Duration::from_millis(k * BEAT_MS);
        lead.handle(MeshInput::Tick, now);
        lapsed.extend(changes(&drain(&mut lead)));
    }
    assert_eq!(lapsed, vec![(Mode::DegradedModerate, Mode::Full)]);
}

/// `root`'s notice of EMERGENCY (5 of 20 agents active), sent and heard at 0: `lead` holds
/// the mode. The notice, to renew.
fn emergency_from(lead: &mut MeshNode, root: &NodeId) -> ModeNotice {
    let emergency = ModeNotice {
        level: 4,
        active_agents: 5,
        total_agents: 20,
        sent_ms: at(0).as_millis(),
        frozen: false,
        frozen_scopes: Vec::new(),
        excluded: Vec::new(),
        last_control: 0,
        root: Some(root.clone()),
    };
    hear_notice(lead, root, &emergency, at(0));
    assert_eq!(lead.mode(), Mode::Emergency);
    emergency
}

#[test]
fn a_lead_admits_no_new_agent_while_the_mesh_is_in_emergency() {
    let pair = pair();
    let (p1, p2) = (pair.p1.clone(), pair.p2.clone());
    let tree = pair.roles(&p2, &p2, &p1);
    let mut lead = node_in(&p2, MeshConfig::default(), &tree, at(0));
    let emergency = emergency_from(&mut lead, &p1);
    // p1's agents joined just now: newcomers, probed into the pool when the mode allows.
    let newcomers: Vec<AgentId> = (0..10).map(AgentId).collect();
    let run = |lead: &mut MeshNode, from_ms: u64, renew: Option<ModeNotice>| {
        let (mut probes, mut ms) = (0, from_ms);
        while ms < from_ms + 6_000 {
            let now = at(ms);
            if let Some(n) = renew.as_ref().filter(|_| ms % 3_000 == 0) {
                hear_notice(lead, &p1, n, now);
            }
            let agents = newcomers.iter().map(|a| beat(*a, at(0).as_millis(), false));
            hear_beat(
                lead,
                &p1,
                ClusterId(0),
                now.as_millis(),
                agents.collect(),
                now,
            );
            lead.handle(MeshInput::Tick, now);
            for d in dispatches(&drain(lead)) {
                assert_eq!(d.envelope.verb, Verb::Probe);
                probes += 1;
                let msg = ready(&d, now.as_millis(), 5);
                lead.handle(
                    MeshInput::Heard {
                        from: p1.clone(),
                        msg,
                    },
                    now,
                );
            }
            ms += BEAT_MS;
        }
        probes
    };
    assert_eq!(
        run(&mut lead, 0, Some(emergency.clone())),
        0,
        "no probe in EMERGENCY"
    );
    assert!(newcomers.iter().all(|a| !pool(&lead).contains(a)));
    let full = ModeNotice {
        level: 0,
        sent_ms: at(6_000).as_millis(),
        ..emergency
    };
    hear_notice(&mut lead, &p1, &full, at(6_000));
    assert_eq!(lead.mode(), Mode::Full);
    assert!(
        run(&mut lead, 6_000, None) > 0,
        "probes once the mesh recovered"
    );
    assert!(newcomers.iter().any(|a| pool(&lead).contains(a)));
}

/// A slower copy of an older notice (down another branch of the tree) changes nothing; a
/// node that becomes the root keeps the mode it held until its sectors' summaries say the
/// mesh's, so no change is told that did not happen.
#[test]
fn an_older_notice_changes_nothing_and_a_new_root_keeps_the_mode_it_held() {
    let pair = pair();
    let (p1, p2) = (pair.p1.clone(), pair.p2.clone());
    let tree = pair.roles(&p2, &p2, &p1);
    let mut node = node_in(&p2, MeshConfig::default(), &tree, at(0));
    let notice = |level: u8, sent: u64| ModeNotice {
        level,
        active_agents: 7,
        total_agents: 20,
        sent_ms: at(sent).as_millis(),
        frozen: false,
        frozen_scopes: Vec::new(),
        excluded: Vec::new(),
        last_control: 0,
        root: Some(p1.clone()),
    };
    hear_notice(&mut node, &p1, &notice(3, 200), at(300));
    assert_eq!(node.mode(), Mode::DegradedSevere);
    let out = hear_notice(&mut node, &p1, &notice(2, 100), at(310));
    assert_eq!(node.mode(), Mode::DegradedSevere);
    assert!(
        changes(&out).is_empty() && notices(&out).is_empty(),
        "{out:?}"
    );

    // p2 becomes the root (and still leads the one cluster, all 20 of whose agents beat):
    // the mode it held stays until its summaries count the agents, then it is theirs.
    let tree = pair.roles(&p2, &p2, &p2);
    node.handle(MeshInput::Tree(tree), at(400));
    let own = (10..20).map(|i| beat(AgentId(i), 0, false)).collect();
    node.handle(MeshInput::Agents(own), at(400));
    let mut changed = changes(&drain(&mut node));
    for k in 1..=40 {
        let now = at(400 + k * BEAT_MS);
        let agents = (0..10).map(|i| beat(AgentId(i), 0, false)).collect();
        hear_beat(&mut node, &p1, ClusterId(0), now.as_millis(), agents, now);
        node.handle(MeshInput::Tick, now);
        changed.extend(changes(&drain(&mut node)));
    }
    assert_eq!(changed, vec![(Mode::DegradedSevere, Mode::Full)]);
}

/// A hold that ends (here a route-around's) ends in EMERGENCY too: its members are back in
/// the pool at their host's next full beat, though the integration pass is halted.
#[test]
fn a_hold_that_ends_ends_in_emergency_too() {
    use qs_wire::mesh::{Control, ControlAction, Scope};
    let pair = pair();
    let (p1, p2) = (pair.p1.clone(), pair.p2.clone());
    let tree = pair.roles(&p2, &p2, &p1);
    let mut lead = node_in(&p2, MeshConfig::default(), &tree, at(0));
    let members: Vec<AgentId> = (0..10).map(AgentId).collect();
    let beat_at = |lead: &mut MeshNode, ms: u64| {
        let agents = members.iter().map(|a| beat(*a, 0, false)).collect();
        hear_beat(lead, &p1, ClusterId(0), ms, agents, at(ms));
        lead.handle(MeshInput::Tick, at(ms));
        drain(lead);
    };
    beat_at(&mut lead, 0);
    assert!(members.iter().all(|a| pool(&lead).contains(a)));
    emergency_from(&mut lead, &p1);
    let around = Control {
        slower_than_ms: 0,
        for_ms: 1_000,
        ..Control::new(ControlAction::RouteAround, Scope::Global)
    };
    let msg = MeshMessage::Control(around);
    let from = p1.clone();
    lead.handle(MeshInput::Heard { from, msg }, at(300));
    assert!(members.iter().all(|a| !pool(&lead).contains(a)), "held");
    for ms in (600..=3_000).step_by(BEAT_MS as usize) {
        beat_at(&mut lead, ms);
    }
    assert_eq!(lead.mode(), Mode::Emergency);
    assert!(members.iter().all(|a| pool(&lead).contains(a)), "back");
}

/// A notice numbered far ahead of the node's clock is not taken (no notice of the root
/// would be newer after it); one ahead within the skew allowed is, and its number shuts out
/// the root's older-numbered ones only until it lapses: then the root's next one is taken.
#[test]
fn a_notice_from_the_future_shuts_out_the_root_for_one_lapse_at_most() {
    let pair = pair();
    let (p1, p2) = (pair.p1.clone(), pair.p2.clone());
    let tree = pair.roles(&p2, &p2, &p1);
    let mut node = node_in(&p2, MeshConfig::default(), &tree, at(0));
    let notice = |level: u8, sent: Time| ModeNotice {
        level,
        active_agents: 7,
        total_agents: 20,
        sent_ms: sent.as_millis(),
        frozen: false,
        frozen_scopes: Vec::new(),
        excluded: Vec::new(),
        last_control: 0,
        root: Some(p1.clone()),
    };
    let years = Duration::from_secs(10 * 365 * 86_400);
    hear_notice(&mut node, &p1, &notice(1, at(0) + years), at(0));
    assert_eq!(node.mode(), Mode::Full, "a notice ten years ahead");
    hear_notice(&mut node, &p1, &notice(1, at(50_000)), at(0));
    assert_eq!(
        node.mode(),
        Mode::DegradedLight,
        "50 s ahead: within the skew"
    );
    // The root's own notices, numbered on its clock (behind the one above), every 3 s.
    let mut severe_at = None;
    for k in 0..=(40_000 / BEAT_MS) {
        let now = at(k * BEAT_MS);
        if (k * BEAT_MS).is_multiple_of(3_000) {
            hear_notice(&mut node, &p1, &notice(3, now), now);
        }
        node.handle(MeshInput::Tick, now);
        drain(&mut node);
        if node.mode() == Mode::DegradedSevere && severe_at.is_none() {
            severe_at = Some(k * BEAT_MS);
        }
    }
    let severe_at = severe_at.expect("the root's notices are taken after the lapse");
    assert!(
        (15_000..=20_000).contains(&severe_at),
        "taken at {severe_at} ms"
    );
    assert_eq!(node.mode(), Mode::DegradedSevere);
}

/// Seed §6.3's EMERGENCY halts automated operations: a lead still declares a crashed agent
/// (offline 30 s while its host lives) but asks no restart of it until the mesh is out of
/// EMERGENCY, or an operator heals its cluster.
#[test]
fn a_lead_restarts_no_crashed_agent_while_the_mesh_is_in_emergency() {
    let mut lead = Lead::new(one_cluster(6, 800), at(0));
    lead.run(1_200);
    let root = lead.root.clone();
    let notice = |level: u8, now: Time| ModeNotice {
        level,
        active_agents: 5,
        total_agents: 20,
        sent_ms: now.as_millis(),
        frozen: false,
        frozen_scopes: Vec::new(),
        excluded: Vec::new(),
        last_control: 0,
        root: Some(root.clone()),
    };
    let restarts = |out: &[MeshOutput]| {
        out.iter()
            .filter(|o| {
                matches!(
                    o,
                    MeshOutput::Send {
                        msg: MeshMessage::Restart(_),
                        ..
                    }
                )
            })
            .count()
    };
    let down = lead.theirs[0];
    lead.down.insert(down);
    let (mut crashed, mut asked) = (Vec::new(), 0);
    for _ in 0..14 {
        let n = notice(4, lead.now);
        hear_notice(&mut lead.node, &root, &n, lead.now);
        let out = lead.run(3_000);
        crashed.extend(out.iter().filter_map(|o| match o {
            MeshOutput::AgentCrashed(c) => Some(c.agent),
            _ => None,
        }));
        asked += restarts(&out);
    }
    assert_eq!(lead.node.mode(), Mode::Emergency);
    assert_eq!(crashed, [down], "declared once");
    assert_eq!(asked, 0, "no restart in EMERGENCY");
    // An operator's heal of the cluster asks it at once, EMERGENCY or not.
    let heal = Control {
        relayed: true,
        ..Control::new(ControlAction::Heal, Scope::Cluster(ClusterId(0)))
    };
    let msg = MeshMessage::Control(heal);
    lead.node.handle(
        MeshInput::Heard {
            from: root.clone(),
            msg,
        },
        lead.now,
    );
    assert_eq!(restarts(&drain(&mut lead.node)), 1, "asked by a heal");
    assert_eq!(lead.node.mode(), Mode::Emergency);
    // Out of EMERGENCY: asked again by the lead itself, 30 s after the last.
    let n = notice(3, lead.now);
    hear_notice(&mut lead.node, &root, &n, lead.now);
    let mut asked = 0;
    for _ in 0..11 {
        let n = notice(3, lead.now);
        hear_notice(&mut lead.node, &root, &n, lead.now);
        asked += restarts(&lead.run(3_000));
    }
    assert_eq!(asked, 1, "asked again once the mesh is out of EMERGENCY");
}
