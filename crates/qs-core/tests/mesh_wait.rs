//! Seed §5.2's WAIT carried out: a cluster lead whose gather closes with too few agents READY
//! and too many still in transit reports what it has, saying it waits, and extends its
//! arrival window once, by the window's length; its answers in the extension (answers, not
//! window hits) follow in a second report. A gather that closes with a quorum, or whose
//! quorum says RETRY, has no extension; one extension is all a gather gets.
//!
//! One lead, driven through `MeshNode::handle` on a virtual clock, with ten agents of
//! another host asked to be ready 200 ms ahead, a window of 150 ms.

use qs_core::Time;
use qs_wire::mesh::{AgentId, Dispatch, Report};
use std::collections::BTreeMap;

mod common;
use common::*;

/// When an agent answers its dispatch, counted from the target arrival.
#[derive(Clone, Copy, Debug)]
enum When {
    /// As soon as it gets it (before the target).
    AtOnce,
    /// This long after the target (the window closes at +150, an extension at +300).
    After(u64),
    Never,
}

struct Row {
    name: &'static str,
    /// Of the ten agents, how many answer when.
    answers: &'static [(usize, When)],
    /// The first report: READY, waited, and when it left from the target arrival (at
    /// least, at most, ms).
    first: (u32, u32, (u64, u64)),
    /// The extension's report, if one: READY, and when it left.
    extension: Option<(u32, (u64, u64))>,
}

const TABLE: &[Row] = &[
    Row {
        name: "all in the window: reported when all answered, no wait",
        answers: &[(10, When::AtOnce)],
        first: (10, 0, (0, 10)),
        extension: None,
    },
    Row {
        name: "half in transit at the close: WAIT, the rest counted in the extension",
        answers: &[(5, When::AtOnce), (5, When::After(200))],
        first: (5, 1, (150, 160)),
        extension: Some((5, (200, 210))),
    },
    Row {
        name: "half never answer: WAIT, the extension's report at its close",
        answers: &[(5, When::AtOnce), (5, When::Never)],
        first: (5, 1, (150, 160)),
        extension: Some((0, (300, 310))),
    },
    Row {
        name: "one in ten in transit is not too many: RETRY, no extension",
        answers: &[(9, When::AtOnce), (1, When::Never)],
        first: (9, 0, (150, 160)),
        extension: None,
    },
    Row {
        name: "one extension only: answers after it are late",
        answers: &[(5, When::AtOnce), (5, When::After(400))],
        first: (5, 1, (150, 160)),
        extension: Some((0, (300, 310))),
    },
];

#[test]
fn a_lead_extends_its_window_once_when_its_quorum_says_wait() {
    for (i, row) in TABLE.iter().enumerate() {
        let reports = run(row, 800 + 100 * i as u64);
        let within = |at: u64, (lo, hi): (u64, u64)| (lo..=hi).contains(&at);
        let (first, at) = &reports[0];
        let t = first.tally;
        let (ready, waited, when) = row.first;
        assert_eq!(
            (t.sent, t.ready, t.waited, first.late),
            (10, ready, waited, false),
            "{}: {t:?}",
            row.name
        );
        assert!(within(*at, when), "{}: first report at +{at} ms", row.name);
        match (row.extension, reports.get(1)) {
            (None, None) => {}
            (Some((ready, when)), Some((ext, at))) => {
                let t = ext.tally;
                // Answers, not window hits: the window the agents were sent for was the
                // first; nothing sent again.
                assert_eq!(
                    (t.sent, t.ready, t.window_hits, t.waited, ext.late),
                    (0, ready, 0, 1, true),
                    "{}: {t:?}",
                    row.name
                );
                assert!(within(*at, when), "{}: extension at +{at} ms", row.name);
            }
            (want, got) => panic!("{}: extension {want:?}, got {got:?}", row.name),
        }
        assert!(reports.len() <= 2, "{}: {reports:?}", row.name);
    }
}

/// One ask of `row`'s answers: the lead's reports within a second, each with how long after
/// the target it left.
fn run(row: &Row, first: u64) -> Vec<(Report, u64)> {
    let c = one_cluster(20, first);
    let mut lead = Lead::new(c, Time::from_millis(3_000_000));
    lead.run(1_200);
    let mut whens: Vec<When> = Vec::new();
    for (n, w) in row.answers {
        whens.extend(std::iter::repeat_n(*w, *n));
    }
    assert_eq!(whens.len(), lead.theirs.len(), "{}", row.name);
    let plan: BTreeMap<AgentId, When> = lead.theirs.iter().copied().zip(whens).collect();
    let envelope = lead.ask(1);
    let target_ms = envelope.target_arrival_ms;
    lead.order_of(envelope, None);
    let mut held: Vec<(u64, Dispatch)> = Vec::new();
    let mut reports = Vec::new();
    for _ in 0..100 {
        let out = lead.run(10);
        for d in dispatches(&out) {
            match plan[&d.agent] {
                When::AtOnce => lead.answer(&d, None),
                When::After(ms) => held.push((target_ms + ms, d)),
                When::Never => {}
            }
        }
        let now = lead.now.as_millis();
        for (_, d) in held.iter().filter(|(at, _)| *at <= now) {
            let d = d.clone();
            lead.answer(&d, None);
        }
        held.retain(|(at, _)| *at > now);
        let out = [out, drain(&mut lead.node)].concat();
        reports.extend(report(&out).map(|r| (r, now.saturating_sub(target_ms))));
    }
    assert!(
        !reports.is_empty(),
        "{}: no report within a second",
        row.name
    );
    reports
}

/// What the root's phase does with the clusters' extensions, by its quorum when the sectors
/// reported (each with one cluster gathering on): the sectors' READY of their 300 agents,
/// each extension's READY, how many extensions have come when it ends (none: at once), and
/// its decision then.
struct RootRow {
    name: &'static str,
    sector_ready: u32,
    extension_ready: u32,
    ended_after: Option<usize>,
    decision: &'static str,
}

const ROOT_TABLE: &[RootRow] = &[
    RootRow {
        name: "a quorum: the root does not wait",
        sector_ready: 290,
        extension_ready: 10,
        ended_after: None,
        decision: "PROCEED",
    },
    RootRow {
        name: "WAIT: the extensions come until the quorum holds",
        sector_ready: 250,
        extension_ready: 50,
        ended_after: Some(9),
        decision: "PROCEED",
    },
    RootRow {
        name: "WAIT: all the extensions, and WAIT still",
        sector_ready: 200,
        extension_ready: 10,
        ended_after: Some(12),
        decision: "WAIT",
    },
];

#[test]
fn the_root_waits_once_for_the_extensions_of_a_phase_whose_quorum_says_wait() {
    use qs_core::mesh::{CascadeCommand, Command, MeshConfig, MeshInput, MeshOutput, OpResult};
    use qs_wire::NodeId;
    use qs_wire::mesh::{CascadeMode, MeshMessage, Scope, Tally, Verb};
    use std::time::Duration;
    let finished = |out: Vec<MeshOutput>| -> Vec<OpResult> {
        out.into_iter()
            .filter_map(|o| match o {
                MeshOutput::Finished(r) => Some(r),
                _ => None,
            })
            .collect()
    };
    for row in ROOT_TABLE.iter().chain([&ROOT_TABLE[2]]) {
        // (The last row again, with no extension coming: it ends an extension past its
        // deadline.)
        let silent = std::ptr::eq(row, &ROOT_TABLE[2]) && row.decision == "WAIT";
        let me = NodeId::new("root").unwrap();
        let tree = sectors_tree(3_600, Some(&me));
        let start = Time::from_millis(1_000_000);
        let mut root = node_in(&me, MeshConfig::default(), &tree, start);
        let now = start + Duration::from_millis(300);
        hear_sectors(&mut root, &tree, now, |_| {});
        root.handle(MeshInput::Tick, now);
        drain(&mut root);
        let envelope = root.envelope(Verb::Sync, "v2", 2, now);
        let wave = CascadeCommand::new(CascadeMode::Wave, Scope::Global, envelope);
        let command = Command::Cascade(wave);
        root.handle(MeshInput::Command { command, tag: 1 }, now);
        let sent = orders(&drain(&mut root));
        assert_eq!(sent.len(), 12, "{}", row.name);
        let op = sent[0].op;
        let at = now + Duration::from_millis(400);
        let heard = |root: &mut qs_core::mesh::MeshNode, from: &NodeId, rep: Report| {
            let msg = MeshMessage::Report(Box::new(rep));
            let from = from.clone();
            root.handle(MeshInput::Heard { from, msg }, at);
        };
        for (i, s) in tree.sectors.iter().enumerate() {
            let from = s.coordinator.clone().unwrap();
            let tally = Tally {
                targeted: 300,
                sent: 300,
                ready: row.sector_ready,
                window_hits: row.sector_ready,
                waited: 1,
                ..Tally::default()
            };
            let scope = Scope::Sector(qs_wire::mesh::SectorId(i as u32));
            heard(&mut root, &from, report_of(op, scope, &from, tally, false));
        }
        // An extension that is none (a sector's, or claiming two waits) is dropped.
        let s0 = &tree.sectors[0];
        let coordinator = s0.coordinator.clone().unwrap();
        let forged = Tally {
            ready: 100,
            waited: 1,
            ..Tally::default()
        };
        let scope = Scope::Sector(qs_wire::mesh::SectorId(0));
        heard(
            &mut root,
            &coordinator,
            report_of(op, scope, &coordinator, forged, true),
        );
        // Nor a cluster's from its coordinator: a lead's only.
        let not_its_lead = s0
            .clusters
            .iter()
            .copied()
            .find(|c| {
                let lead = tree.cluster(*c).and_then(|x| x.lead.as_ref());
                lead.is_some_and(|l| *l != coordinator)
            })
            .expect("a cluster another node leads");
        let scope = Scope::Cluster(not_its_lead);
        let rep = report_of(op, scope, &coordinator, forged, true);
        heard(&mut root, &coordinator, rep);
        // (Refused while the phase waits; one that ended has nothing to refuse them for.)
        let refused = if row.ended_after.is_some() { 2 } else { 0 };
        assert_eq!(root.refused_senders(), refused, "{}", row.name);
        let mut ended = finished(drain(&mut root));
        let mut came = 0;
        for s in tree.sectors.iter().filter(|_| !silent) {
            if !ended.is_empty() {
                break;
            }
            let (c, lead) = s
                .clusters
                .iter()
                .find_map(|c| Some((*c, tree.cluster(*c)?.lead.clone()?)))
                .expect("a cluster with a lead");
            let tally = Tally {
                ready: row.extension_ready,
                waited: 1,
                ..Tally::default()
            };
            // Each twice (a repeat, or a lead that sends more than one): counted once.
            for _ in 0..2 {
                let rep = report_of(op, Scope::Cluster(c), &lead, tally, true);
                heard(&mut root, &lead, rep);
            }
            let twice = Tally { waited: 2, ..tally };
            heard(
                &mut root,
                &lead,
                report_of(op, Scope::Cluster(c), &lead, twice, true),
            );
            came += 1;
            ended = finished(drain(&mut root));
        }
        if silent {
            assert!(ended.is_empty(), "{}: waits", row.name);
            // Its deadline (the window's 150 ms past the target, and 300 for the reports)
            // passes: it waits on, an extension (150 ms) past it.
            for ms in (400..1_500).step_by(10) {
                root.handle(MeshInput::Tick, now + Duration::from_millis(ms));
                ended = finished(drain(&mut root));
                if let Some(r) = ended.first() {
                    let deadline = r.target_after_ms + 450.0;
                    assert!(ms as f64 >= deadline + 150.0, "{}: +{ms} ms", row.name);
                    break;
                }
            }
        }
        assert_eq!(ended.len(), 1, "{}: {ended:?}", row.name);
        let r = &ended[0];
        let ext = row.ended_after.filter(|_| !silent).unwrap_or(0);
        assert_eq!(
            (came, r.decision.name(), r.tally.waited),
            (ext, row.decision, 12),
            "{}: {:?}",
            row.name,
            r.tally
        );
        let ready = 12 * row.sector_ready + ext as u32 * row.extension_ready;
        assert_eq!(r.tally.ready, ready, "{}", row.name);
        // The extensions' answers are not window hits.
        assert_eq!(r.tally.window_hits, 12 * row.sector_ready, "{}", row.name);
    }
}

fn report_of(
    op: qs_wire::mesh::OpId,
    scope: qs_wire::mesh::Scope,
    from: &qs_wire::NodeId,
    tally: qs_wire::mesh::Tally,
    late: bool,
) -> Report {
    Report {
        op,
        scope,
        from: from.clone(),
        tally,
        answers: Vec::new(),
        escalated: Vec::new(),
        escalated_more: 0,
        late,
        named: Vec::new(),
    }
}

/// A small ask names who answered what: the extension's report names those that answered
/// in it.
#[test]
fn an_extension_names_its_answers_for_a_small_ask() {
    let c = one_cluster(20, 2_000);
    let mut lead = Lead::new(c, Time::from_millis(3_000_000));
    lead.run(1_200);
    let envelope = lead.ask(1);
    let target_ms = envelope.target_arrival_ms;
    lead.order_of(envelope, Some(2));
    let mut sent: Vec<Dispatch> = Vec::new();
    let mut reports: Vec<Report> = Vec::new();
    for _ in 0..100 {
        let out = lead.run(10);
        for d in dispatches(&out) {
            // The first answers at once, the second in the extension.
            if sent.is_empty() {
                lead.answer(&d, None);
            }
            sent.push(d);
        }
        if lead.now.as_millis() == target_ms + 200 {
            let d = sent[1].clone();
            lead.answer(&d, None);
        }
        reports.extend(report(&[out, drain(&mut lead.node)].concat()));
    }
    let named: Vec<Vec<AgentId>> = reports
        .iter()
        .map(|r| r.named.iter().map(|n| n.agent).collect())
        .collect();
    assert_eq!(
        named,
        [vec![sent[0].agent], vec![sent[1].agent]],
        "{reports:?}"
    );
    assert_eq!(reports[1].tally.waited, 1);
}

/// The first report goes where the order said (the sector's coordinator), the extension's
/// straight to the operation's root (the coordinator reported already).
#[test]
fn the_extension_goes_to_the_root_and_the_first_report_to_the_coordinator() {
    use qs_core::mesh::MeshOutput;
    use qs_wire::NodeId;
    use qs_wire::mesh::MeshMessage;
    let c = one_cluster(20, 3_000);
    let mut lead = Lead::new(c, Time::from_millis(3_000_000));
    lead.run(1_200);
    let coordinator = NodeId::new("coordinator").unwrap();
    let envelope = lead.ask(1);
    lead.order_reporting_to(envelope, None, false, coordinator.clone());
    // Half answer at once; the rest never.
    let mut answered = 0;
    let mut sent_to: Vec<(NodeId, bool, u32)> = Vec::new();
    for _ in 0..100 {
        let out = lead.run(10);
        for d in dispatches(&out) {
            if answered < 5 {
                lead.answer(&d, None);
                answered += 1;
            }
        }
        for o in [out, drain(&mut lead.node)].concat() {
            if let MeshOutput::Send {
                to,
                msg: MeshMessage::Report(r),
            } = o
            {
                sent_to.push((to, r.late, r.tally.waited));
            }
        }
    }
    let root = lead.root.clone();
    assert_eq!(sent_to, [(coordinator, false, 1), (root, true, 1)]);
}
