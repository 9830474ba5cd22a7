//! Conflicts (seed §5.1), driven through `MeshNode::handle` on a virtual clock: a cluster
//! lead escalates those of priority 3 and 4 with its report, the most urgent first; a READY
//! to the same content later resolves a value mismatch, a READY to other content does not;
//! an integrity failure quarantines its agent and stays unresolved; a coordinator logs what a
//! late report from the cluster's lead escalates, and passes those of priority 4 on to the
//! root with its next sector summary; answers after their gather closed are taken once, as
//! late, their conflicts logged.

mod common;

use common::*;
use qs_core::Time;
use qs_core::mesh::conflict::Resolution;
use qs_wire::mesh::{AgentId, ConflictDetail};
use std::sync::Arc;

#[test]
fn a_lead_escalates_critical_conflicts_and_the_same_content_accepted_resolves_a_mismatch() {
    let c = one_cluster(6, 300);
    let mut lead = Lead::new(c, Time::from_millis(3_000_000));
    lead.run(1_200);

    // An ask of the three agents with the capability: one integrity failure (priority 4),
    // one value mismatch affecting 101 agents (3), one affecting one (2).
    lead.order(1, None);
    let sent = dispatches(&lead.run(250));
    assert_eq!(sent.len(), 3, "{sent:?}");
    let s = |x: &str| x.to_string();
    let details = [
        ConflictDetail::DataContradiction {
            expected: s("1"),
            received: s("2"),
            affects_agents: 1,
        },
        ConflictDetail::DataContradiction {
            expected: s("1"),
            received: s("2"),
            affects_agents: 101,
        },
        ConflictDetail::HashMismatch {
            expected: s("a"),
            received: s("b"),
        },
    ];
    for (d, detail) in sent.iter().zip(details.iter()) {
        lead.answer(d, Some(detail.clone()));
    }
    let (out, counts) = drained_counts(&mut lead);
    assert_eq!(counts, [3, 0, 3, 0], "sent, ready, conflict, rerouted");
    let rep = report(&out).unwrap();
    let escalated: Vec<(AgentId, &ConflictDetail)> =
        rep.escalated.iter().map(|e| (e.agent, &e.detail)).collect();
    assert_eq!(
        escalated,
        [(sent[2].agent, &details[2]), (sent[1].agent, &details[1])],
        "priority 4, then 3; not 2"
    );
    assert_eq!(rep.escalated_more, 0);
    let open = |lead: &Lead| lead.node.conflicts().counts(lead.now, |_| true);
    assert_eq!((open(&lead).open, open(&lead).critical), (3, 2));

    // An ask of other content: READY from the two still in the pool resolves nothing.
    lead.run(600);
    let other = lead.ask_with(2, "something else");
    lead.order_of(other, None);
    let sent2 = dispatches(&lead.run(250));
    assert!(
        !sent2.iter().any(|d| d.agent == sent[2].agent),
        "the agent whose content was corrupt is quarantined"
    );
    assert_eq!(sent2.len(), 2, "{sent2:?}");
    for d in &sent2 {
        lead.answer(d, None);
    }
    let (out, _) = drained_counts(&mut lead);
    assert_eq!(resolved(&out), []);

    // The same content again, accepted: both mismatches are resolved (the weaker source
    // was updated); the integrity failure waits for an operator.
    lead.run(600);
    lead.order(3, None);
    let sent3 = dispatches(&lead.run(250));
    assert_eq!(sent3.len(), 2, "{sent3:?}");
    for d in &sent3 {
        lead.answer(d, None);
    }
    let (out, _) = drained_counts(&mut lead);
    let mut got = resolved(&out);
    got.sort_by_key(|(a, _)| *a);
    let mut want = vec![
        (sent[0].agent, Resolution::Agreed),
        (sent[1].agent, Resolution::Agreed),
    ];
    want.sort_by_key(|(a, _)| *a);
    assert_eq!(got, want);
    assert_eq!((open(&lead).open, open(&lead).critical), (1, 1));
    // Past its time (priority 4: at once), it counts as overdue in the summary.
    lead.run(1_000);
    assert_eq!(open(&lead).overdue, 1);
}

/// A cluster's report that comes after its operation settled at the coordinator (or from a
/// node the tree does not name for the cluster): its escalated conflicts are still logged
/// there as notices, and only when the cluster's own lead sent them.
#[test]
fn a_coordinator_logs_the_conflicts_of_a_late_report_from_the_clusters_lead_only() {
    use qs_core::mesh::{MeshConfig, MeshInput, MeshNode};
    use qs_wire::NodeId;
    use qs_wire::mesh::{MeshMessage, Tally};
    let pair = pair();
    let (p1, p2) = (&pair.p1, &pair.p2);
    // p2 leads the one cluster; p1 coordinates its sector and is the root.
    let tree = pair.roles(p2, p1, p1);
    let now = Time::from_millis(1_000_000);
    let mut node = node_in(p1, MeshConfig::default(), &tree, now);
    let report = |from: &NodeId| {
        let conflicts = vec![escalated(15, corrupt(), now)];
        cluster_report(77, from, Tally::default(), conflicts, false)
    };
    let logged = |node: &mut MeshNode, from: &NodeId| -> Vec<(AgentId, Option<NodeId>)> {
        let msg = MeshMessage::Report(Box::new(report(from)));
        node.handle(
            MeshInput::Heard {
                from: from.clone(),
                msg,
            },
            now,
        );
        conflicts_logged(drain(node))
    };
    let stranger = NodeId::new("p3").unwrap();
    assert_eq!(logged(&mut node, &stranger), [], "not the cluster's lead");
    assert_eq!(logged(&mut node, p2), [(AgentId(15), Some(p2.clone()))]);
    assert_eq!(node.conflicts().escalated_here(), 1);
}

/// A late report's conflict of priority 4 goes on to the root with the coordinator's next
/// three sector summaries (the report up had gone; one summary may be lost), and the root
/// logs it once, as escalated by the coordinator; one of priority 3 stays at the
/// coordinator; the root takes such conflicts only from the node the tree names the sector's
/// coordinator.
#[test]
fn a_late_critical_conflict_reaches_the_root_with_the_next_sector_summary() {
    use qs_core::mesh::{MeshConfig, MeshInput, MeshNode, MeshOutput};
    use qs_wire::NodeId;
    use qs_wire::mesh::{LateEscalated, MeshMessage, OpId, SectorSummary, Tally};
    let pair = pair();
    let (p1, p2) = (pair.p1.clone(), pair.p2.clone());
    let p3 = NodeId::new("p3").unwrap();
    // p2 leads the cluster, p1 coordinates its sector, p3 is the root.
    let tree = pair.roles(&p2, &p1, &p3);
    let cfg = MeshConfig::default();
    let now = Time::from_millis(1_000_000);
    let critical = escalated(15, corrupt(), now);
    let mut coordinator = node_in(&p1, cfg, &tree, now);
    // Priority 4, and 3 (a mismatch affecting 101 agents).
    let conflicts = vec![critical.clone(), escalated(16, contradiction_of(101), now)];
    let late = cluster_report(77, &p2, Tally::default(), conflicts, false);
    let heard = |from: &NodeId, msg: MeshMessage| MeshInput::Heard {
        from: from.clone(),
        msg,
    };
    let summaries = |node: &mut MeshNode, at: Time| -> Vec<SectorSummary> {
        node.handle(MeshInput::Tick, at);
        drain(node)
            .into_iter()
            .filter_map(|o| match o {
                MeshOutput::Send {
                    to,
                    msg: MeshMessage::Sector(s),
                } if to == p3 => Some(*s),
                _ => None,
            })
            .collect()
    };
    // The sector's full summary of the period has gone: the next beats send `Alive`.
    let mut at = now + std::time::Duration::from_millis(cfg.summary_ms + 1);
    assert_eq!(summaries(&mut coordinator, at).len(), 1);
    coordinator.handle(heard(&p2, MeshMessage::Report(Box::new(late))), at);
    assert_eq!(
        conflicts_logged(drain(&mut coordinator)).len(),
        2,
        "both logged here"
    );
    // The next beat sends a full summary all the same, with the conflict for the root.
    let beat = std::time::Duration::from_millis(cfg.beat_ms);
    at = at + beat;
    let sent = summaries(&mut coordinator, at);
    let passed: Vec<&LateEscalated> = sent.iter().flat_map(|s| &s.escalated).collect();
    let want = LateEscalated {
        op: OpId(77),
        conflict: critical,
    };
    assert_eq!(passed, [&want], "the priority-4 conflict, not the other");
    let mut copies = vec![sent[0].clone()];
    for n in 2..=4u32 {
        let next = summaries(&mut coordinator, at + beat * n);
        let carried = next.iter().any(|s| s.escalated == [want.clone()]);
        assert_eq!(carried, n <= 3, "summary {n}: {next:?}");
        copies.extend(next.into_iter().filter(|s| !s.escalated.is_empty()));
    }
    assert_eq!(copies.len(), 3);

    let mut root = node_in(&p3, cfg, &tree, now);
    let summary = sent.into_iter().next().expect("a sector summary");
    let mut forged = summary.clone();
    forged.coordinator = p2.clone();
    root.handle(heard(&p2, MeshMessage::Sector(Box::new(forged))), at);
    assert_eq!(
        conflicts_logged(drain(&mut root)),
        [],
        "not the sector's coordinator"
    );
    assert_eq!(root.refused_senders(), 1);
    root.handle(heard(&p1, MeshMessage::Sector(Box::new(summary))), at);
    assert_eq!(
        conflicts_logged(drain(&mut root)),
        [(AgentId(15), Some(p1.clone()))]
    );
    // The later copies are known.
    for copy in copies.into_iter().skip(1) {
        root.handle(heard(&p1, MeshMessage::Sector(Box::new(copy))), at + beat);
    }
    assert_eq!(conflicts_logged(drain(&mut root)), []);
    assert_eq!(root.conflicts().escalated_here(), 1);
}

/// An answer that comes after its cluster reported (its window over) is late, not lost: a
/// CONFLICT in it is logged at the lead all the same and, of priority 3 or more, escalated to
/// the coordinator in a late report (one the coordinator takes for its conflicts only), one
/// of priority 2 is not; a late READY to the content a mismatch expected resolves it; a
/// second answer from the same agent, or one from an agent not asked, is not taken.
#[test]
fn a_conflict_answered_after_the_window_is_logged_and_escalated_late() {
    use qs_core::mesh::MeshOutput;
    let c = one_cluster(6, 300);
    // The harness's "root" is the sector's coordinator and the root: the lead's reports go
    // up to another node.
    let mut lead = Lead::new(c, Time::from_millis(3_000_000));
    let up = lead.root.clone();
    lead.run(1_200);
    lead.order(1, None);
    let sent = dispatches(&lead.run(250));
    assert_eq!(sent.len(), 3, "{sent:?}");
    lead.answer(&sent[0], None);
    // The window ends (200 ms ahead, then 150 ms) with two silent: the report goes; its
    // quorum says WAIT, so the window's extension (150 ms more) follows, silent too.
    let out = lead.run(200);
    let rep = report(&out).expect("reported at the window's end");
    let t = rep.tally;
    assert_eq!((t.sent, t.ready, t.waited, rep.late), (3, 1, 1, false));
    let out = lead.run(150);
    let rep = report(&out).expect("the extension's report");
    let t = rep.tally;
    assert_eq!((t.sent, t.ready, t.waited, rep.late), (0, 0, 1, true));
    let corrupt = corrupt();
    let mismatch = contradiction_of(1);
    let late_reports = |out: &[MeshOutput]| -> Vec<qs_wire::mesh::Report> {
        out.iter()
            .filter_map(|o| match o {
                MeshOutput::Send {
                    to,
                    msg: qs_wire::mesh::MeshMessage::Report(r),
                } if *to == up && r.late => Some((**r).clone()),
                _ => None,
            })
            .collect()
    };
    lead.answer(&sent[1], Some(mismatch));
    let out = drain(&mut lead.node);
    assert_eq!(conflicts_logged(out.clone()), [(sent[1].agent, None)]);
    assert_eq!(late_reports(&out), [], "priority 2 stays at the lead");
    lead.answer(&sent[2], Some(corrupt.clone()));
    let out = drain(&mut lead.node);
    assert_eq!(conflicts_logged(out.clone()), [(sent[2].agent, None)]);
    let late = late_reports(&out);
    assert_eq!(late.len(), 1, "{out:?}");
    assert_eq!(late[0].tally.late, 1);
    let escalated: Vec<(AgentId, &ConflictDetail)> = late[0]
        .escalated
        .iter()
        .map(|e| (e.agent, &e.detail))
        .collect();
    assert_eq!(escalated, [(sent[2].agent, &corrupt)]);
    let open = lead.node.conflicts().counts(lead.now, |_| true);
    assert_eq!((open.open, open.critical), (2, 1));
    // Once per agent; an agent answered already, or one not asked, is no late answer.
    lead.answer(&sent[2], Some(corrupt.clone()));
    lead.answer(&sent[0], Some(corrupt.clone()));
    // (The lead's own agents lack the capability asked for: none was asked.)
    let not_asked = (300..306)
        .map(AgentId)
        .find(|a| !lead.theirs.contains(a))
        .expect("one of the lead's own agents");
    let mut other = sent[0].clone();
    other.agent = not_asked;
    let now = lead.now;
    answer_dispatch(&mut lead.node, &other, None, 0, Some(corrupt), now);
    assert_eq!(conflicts_logged(drain(&mut lead.node)), []);
    assert_eq!(lead.node.late_answers(), 2);

    // The same content again, asked of the one whose answer contradicted it (a second
    // ahead: its late answer made its lead time longer), answered late with READY: the
    // mismatch is resolved.
    lead.run(600);
    let mut envelope = lead.ask(2);
    envelope.target_arrival_ms = lead.now.as_millis() + 1_000;
    lead.order_of(envelope, None);
    let again = dispatches(&lead.run(1_000));
    let d = again
        .iter()
        .find(|d| d.agent == sent[1].agent)
        .expect("asked again");
    lead.run(200);
    drain(&mut lead.node);
    lead.answer(d, None);
    assert_eq!(
        resolved(&drain(&mut lead.node)),
        [(sent[1].agent, Resolution::Agreed)]
    );
}

/// A late report that reaches the coordinator before the cluster's own report (the network
/// may reorder them) is not taken for it: its conflict is logged, the coordinator still waits
/// for the cluster's result, and reports up once that comes.
#[test]
fn a_late_report_is_never_taken_for_the_clusters_result() {
    use qs_core::mesh::{MeshConfig, MeshOutput};
    use qs_wire::NodeId;
    use qs_wire::mesh::{Escalated, MeshMessage, Tally};
    let pair = pair();
    let (p1, p2) = (pair.p1.clone(), pair.p2.clone());
    let p3 = NodeId::new("p3").unwrap();
    // p2 leads the cluster, p1 coordinates its sector, p3 is the root.
    let tree = pair.roles(&p2, &p1, &p3);
    let now = Time::from_millis(1_000_000);
    let mut coordinator = node_in(&p1, MeshConfig::default(), &tree, now);
    let order = sector_order(&mut coordinator, 9, &p3, now);
    let heard = |from: &NodeId, msg: MeshMessage| qs_core::mesh::MeshInput::Heard {
        from: from.clone(),
        msg,
    };
    coordinator.handle(heard(&p3, MeshMessage::Order(Box::new(order))), now);
    drain(&mut coordinator);
    let report = |late: bool, tally: Tally, conflicts: Vec<Escalated>| {
        cluster_report(9, &p2, tally, conflicts, late)
    };
    let conflict = escalated(15, corrupt(), now);
    let up = |out: &[MeshOutput]| {
        out.iter()
            .filter(
                |o| matches!(o, MeshOutput::Send { to, msg: MeshMessage::Report(_) } if *to == p3),
            )
            .count()
    };
    let late = report(
        true,
        Tally {
            late: 1,
            ..Tally::default()
        },
        vec![conflict],
    );
    coordinator.handle(heard(&p2, MeshMessage::Report(Box::new(late))), now);
    let out = drain(&mut coordinator);
    assert_eq!(
        conflicts_logged(out.clone()),
        [(AgentId(15), Some(p2.clone()))]
    );
    assert_eq!(up(&out), 0, "still waiting for the cluster's result");
    let result = Tally {
        sent: 20,
        ready: 20,
        ..Tally::default()
    };
    coordinator.handle(
        heard(
            &p2,
            MeshMessage::Report(Box::new(report(false, result, Vec::new()))),
        ),
        now,
    );
    assert_eq!(
        up(&drain(&mut coordinator)),
        1,
        "the sector's report goes up"
    );
}

/// The root gathers an urgent operation's answers itself, and ends it before the last few
/// (a message in the network's tail is not waited for): one that comes after is still taken
/// once, its CONFLICT logged at the root.
#[test]
fn the_root_logs_a_conflict_answered_after_its_urgent_operation_ended() {
    use qs_core::mesh::{MeshConfig, MeshInput, MeshOutput};
    use qs_wire::mesh::{AgentBeat, CascadeMode, ClusterId, Dispatch, Verb};
    let pair = pair();
    let (p1, p2) = (pair.p1.clone(), pair.p2.clone());
    let start = Time::from_millis(1_000_000);
    let mut root = node_in(&p1, MeshConfig::default(), &Arc::new(pair.tree), start);
    root.handle(
        MeshInput::Agents((0..10).map(|i| beat(AgentId(i), 0, false)).collect()),
        start,
    );
    let theirs: Vec<AgentBeat> = (10..20)
        .map(|i| beat(AgentId(i), start.as_millis() - 1_000, false))
        .collect();
    let silent = AgentId(12);
    let mut withheld: Option<Dispatch> = None;
    let mut finished = Vec::new();
    let mut logged = Vec::new();
    // Each step: p2's beat, a tick, every dispatch answered at once but the silent agent's
    // to the urgent operation.
    let mut step = |root: &mut qs_core::mesh::MeshNode, now: Time| {
        if now.as_millis().is_multiple_of(300) {
            hear_beat(
                root,
                &p2,
                ClusterId(0),
                now.as_millis(),
                theirs.clone(),
                now,
            );
        }
        root.handle(MeshInput::Tick, now);
        for o in drain(root) {
            match o {
                MeshOutput::Send {
                    to,
                    msg: qs_wire::mesh::MeshMessage::Dispatch(d),
                } if to == p2 => {
                    if d.agent == silent && d.envelope.verb == Verb::Sync {
                        withheld = Some(*d);
                    } else {
                        answer_dispatch(root, &d, Some(&p2), 5, None, now);
                    }
                }
                MeshOutput::Deliver(d) => answer_dispatch(root, &d, None, 5, None, now),
                MeshOutput::Finished(r) => finished.push(r),
                MeshOutput::Conflict(r) => logged.push(r.agent),
                _ => {}
            }
        }
    };
    let mut now = start;
    for _ in 0..600 {
        now = Time::from_millis(now.as_millis() + 10);
        step(&mut root, now);
    }
    cascade(&mut root, CascadeMode::Parallel, Verb::Sync, "v2", now);
    for _ in 0..300 {
        now = Time::from_millis(now.as_millis() + 10);
        step(&mut root, now);
    }
    assert_eq!(finished.len(), 1, "{finished:?}");
    assert_eq!(finished[0].tally.ready, 19, "{:?}", finished[0].tally);
    let d = withheld.expect("the silent agent was sent to");
    let late = || contradiction();
    answer_dispatch(&mut root, &d, Some(&p2), 5, Some(late()), now);
    assert_eq!(conflicts_logged(drain(&mut root)), [(silent, None)]);
    // Once; and an agent that answered in time is not taken again.
    answer_dispatch(&mut root, &d, Some(&p2), 5, Some(late()), now);
    let mut answered = d.clone();
    answered.agent = AgentId(13);
    answer_dispatch(&mut root, &answered, Some(&p2), 5, Some(late()), now);
    assert_eq!(conflicts_logged(drain(&mut root)), []);
    assert!(logged.is_empty(), "{logged:?}");
}

/// An order a lead holds already (one repeated) is carried out once: no agent is sent the
/// operation again, while it is gathered nor after it reported, and the first order's
/// stragglers are still taken late. The same number with another envelope (a root that
/// restarted and counts anew) is a new order.
#[test]
fn a_repeated_order_is_carried_out_once() {
    let c = one_cluster(6, 300);
    let mut lead = Lead::new(c, Time::from_millis(3_000_000));
    lead.run(1_200);
    let envelope = lead.ask(5);
    lead.order_of(envelope.clone(), None);
    let first = dispatches(&lead.run(250));
    assert_eq!(first.len(), 3, "{first:?}");
    lead.order_of(envelope.clone(), None);
    lead.answer(&first[0], None);
    // (Two silent: the window, then its extension.)
    let gathered = lead.run(350);
    assert_eq!(dispatches(&gathered), [], "sent again while gathered");
    assert!(report(&gathered).is_some(), "the order reported");
    lead.order_of(envelope, None);
    assert_eq!(
        dispatches(&lead.run(250)),
        [],
        "sent again after its report"
    );
    lead.answer(&first[1], Some(contradiction()));
    assert_eq!(
        conflicts_logged(drain(&mut lead.node)),
        [(first[1].agent, None)]
    );
    assert_eq!(lead.node.late_answers(), 1);
    lead.order(5, None);
    assert!(
        !dispatches(&lead.run(250)).is_empty(),
        "a new envelope, a new order"
    );
}

/// An operation of one cluster alone reports to the root: so does its late report, and the
/// root logs its conflict though it does not coordinate the cluster's sector.
#[test]
fn the_root_takes_the_late_report_of_an_operation_of_one_cluster() {
    use qs_core::mesh::{MeshConfig, MeshInput};
    use qs_wire::NodeId;
    use qs_wire::mesh::{MeshMessage, Tally};
    let pair = pair();
    let (p1, p2) = (pair.p1.clone(), pair.p2.clone());
    let p3 = NodeId::new("p3").unwrap();
    let tree = pair.roles(&p2, &p1, &p3);
    let now = Time::from_millis(1_000_000);
    let mut root = node_in(&p3, MeshConfig::default(), &tree, now);
    let tally = Tally {
        late: 1,
        ..Tally::default()
    };
    let conflicts = vec![escalated(15, contradiction_of(101), now)];
    let late = cluster_report(4, &p2, tally, conflicts, true);
    let msg = MeshMessage::Report(Box::new(late));
    root.handle(
        MeshInput::Heard {
            from: p2.clone(),
            msg,
        },
        now,
    );
    assert_eq!(
        conflicts_logged(drain(&mut root)),
        [(AgentId(15), Some(p2))]
    );
}

/// A value mismatch affecting `n` agents (priority 3 from 100).
fn contradiction_of(n: u32) -> ConflictDetail {
    ConflictDetail::DataContradiction {
        expected: "1".into(),
        received: "2".into(),
        affects_agents: n,
    }
}
