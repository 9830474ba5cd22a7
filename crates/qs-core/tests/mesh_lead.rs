//! One cluster lead, driven through `MeshNode::handle` on a virtual clock, with the agents of
//! another host beating to it:
//!
//! - scale-out (seed §10.2): agents of another host settle before they enter the routing pool,
//!   their age read on their host's clock (a host whose clock runs a minute behind does not
//!   make its new agents look established), and the lead's own long-standing agents are in
//!   the pool at once;
//! - REROUTE (seed §5.1): an agent that answers that it lacks the capability an ask requires
//!   loses it in the lead's map, and the ask goes to another agent of the cluster that has it;
//! - breakers (seed §6.2): open, a cluster takes nothing; half-open after a good probe, a
//!   tenth of an operation;
//! - time to live (seed Appendix B): an envelope that expired is dropped at its host and
//!   counted by its operation;
//! - senders: an answer from another node than its agent's host is refused;
//! - handovers: a node that takes a cluster over counts no agent offline before its host
//!   could beat, and one that roots the mesh again starts from no mode of before.

use qs_core::Time;
use qs_core::mesh::{
    Hierarchy, Member, MeshConfig, MeshInput, MeshNode, MeshOutput, Seniority, Shape,
};
use qs_wire::NodeId;
use qs_wire::mesh::{
    AgentBeat, AgentId, BreakerState, CascadeMode, ClusterId, ConflictDetail, Dispatch,
    MeshMessage, OpId, Scope, Verb,
};
use std::sync::Arc;

mod common;
use common::*;

#[test]
fn newcomers_settle_on_their_hosts_clock_and_members_are_in_the_pool_at_once() {
    let OneCluster {
        tree,
        lead,
        other,
        mine,
        theirs,
    } = one_cluster(6, 100);
    let c = ClusterId(0);

    let start = Time::from_millis(1_000_000);
    let mut node = MeshNode::new(lead.clone(), MeshConfig::default(), start);
    node.handle(MeshInput::Tree(tree), start);
    // The lead's own agents have been there all along (0: long ago).
    node.handle(
        MeshInput::Agents(mine.iter().map(|a| beat(*a, 0, false)).collect()),
        start,
    );
    // The other host's clock is a minute behind; its agents joined a second ago on it. It
    // answers the lead's readiness probes in 5 ms, but for the last of its agents, which
    // answers none.
    let skew_ms = 60_000;
    let joined_on_host = start.as_millis() - skew_ms - 1_000;
    let silent = *theirs.last().unwrap();
    let answering = &theirs[..theirs.len() - 1];
    let mut admitted_at = None;
    let mut silent_at = None;
    let mut probes = 0;
    for k in 0..110u64 {
        let now = Time::from_millis(start.as_millis() + k * 300);
        let agents = theirs.iter().map(|a| beat(*a, joined_on_host, false));
        let sent_ms = now.as_millis() - skew_ms;
        hear_beat(&mut node, &other, c, sent_ms, agents.collect(), now);
        node.handle(MeshInput::Tick, now);
        let out = drain(&mut node);
        for d in dispatches(&out) {
            assert_eq!(d.envelope.verb, Verb::Probe, "only probes before they join");
            assert_ne!(d.envelope.op, OpId(0));
            probes += 1;
            if d.agent == silent {
                continue;
            }
            let on_host = now.as_millis() - skew_ms;
            let msg = ready(&d, on_host, 5);
            let from = other.clone();
            node.handle(MeshInput::Heard { from, msg }, now);
        }
        let p = pool(&node);
        if k >= 1 {
            assert!(mine.iter().all(|a| p.contains(a)), "members at {k}: {p:?}");
        }
        let in_pool = answering.iter().filter(|a| p.contains(a)).count();
        if in_pool > 0 && admitted_at.is_none() {
            admitted_at = Some(k * 300);
        }
        if p.contains(&silent) && silent_at.is_none() {
            silent_at = Some(k * 300);
        }
    }
    // Settled for 3 s (2 s more from the first beat here), each measured by three probes,
    // then in the pool: not taken for established by a minute of skew.
    let after_ms = admitted_at.expect("the newcomers joined the pool");
    assert!((1_800..=3_600).contains(&after_ms), "{after_ms}");
    assert!(answering.iter().all(|a| pool(&node).contains(a)));
    // Three probes each, and the silent one probed again as each probe times out, a
    // longer wait each time (1 s, 2 s, 4 s, ...: a few in 30 s).
    assert!(
        (answering.len() * 3 + 3..answering.len() * 3 + 8).contains(&probes),
        "{probes}"
    );
    // The one that answers no probe joins only once established: 30 s after it joined.
    let silent_ms = silent_at.expect("established at last");
    assert!((28_800..=29_400).contains(&silent_ms), "{silent_ms}");
}

#[test]
fn an_agent_lacking_a_capability_loses_it_and_the_ask_goes_to_one_that_has_it() {
    let c = one_cluster(4, 200);
    let theirs = c.theirs.clone();
    let mut lead = Lead::new(c, Time::from_millis(3_000_000));
    lead.run(1_200);

    // One agent of the two with the capability is asked; it says it lacks it.
    lead.order(1, Some(1));
    let out = lead.run(250);
    let sent = dispatches(&out);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let lacking = sent[0].clone();
    lead.answer(
        &lacking,
        Some(ConflictDetail::CapabilityMismatch {
            missing: TPU.into(),
        }),
    );
    // The ask goes on to the other one, which answers.
    let out = drain(&mut lead.node);
    let again = dispatches(&out);
    assert_eq!(again.len(), 1, "{out:?}");
    assert_ne!(again[0].agent, lacking.agent);
    assert!(theirs.contains(&again[0].agent));
    // Its conflict is resolved once the other one did the work (REROUTE), not before.
    assert_eq!(resolved(&out), []);
    lead.answer(&again[0], None);
    let (out, counts) = drained_counts(&mut lead);
    assert_eq!(
        resolved(&out),
        [(lacking.agent, qs_core::mesh::conflict::Resolution::Rerouted)]
    );
    assert_eq!(counts, [2, 1, 1, 1], "sent, ready, conflict, rerouted");

    // The map is fixed: the next ask needing it, even of both, reaches only the other one,
    // though its host still says both have it.
    lead.run(600);
    lead.order(2, Some(2));
    let out = lead.run(400);
    let sent = dispatches(&out);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].agent, again[0].agent);
}

#[test]
fn a_half_open_cluster_takes_a_tenth_of_an_operation() {
    let c = one_cluster(40, 300);
    let theirs = c.theirs.clone();
    let mut lead = Lead::new(c, Time::from_millis(5_000_000));
    lead.run(1_200);
    // Six of its agents go down: the cluster's breaker opens (more than five failures).
    lead.down = theirs.iter().take(6).copied().collect();
    lead.run(1_200);
    lead.order(1, None);
    let out = lead.run(400);
    assert!(dispatches(&out).is_empty(), "open: nothing goes");
    let r = report(&out).expect("the cluster reported");
    assert_eq!(
        (r.tally.targeted, r.tally.unreachable),
        (20, 20),
        "{:?}",
        r.tally
    );
    // They come back; 30 s after it opened, a probe answered READY makes it half-open.
    lead.down.clear();
    assert!(!lead.next_probes(31_000, true).is_empty(), "probed");
    lead.order(2, None);
    let out = lead.run(400);
    let sent = dispatches(&out);
    assert_eq!(
        sent.len(),
        2,
        "a tenth of the 20 that have the capability: {sent:?}"
    );
    let r = report(&out).expect("the cluster reported");
    assert_eq!(
        (r.tally.targeted, r.tally.unreachable),
        (20, 18),
        "{:?}",
        r.tally
    );
}

/// A sector's breaker is its coordinator's: half-open there, the orders it passes on say so,
/// and a lead whose own breakers are closed takes a tenth all the same.
#[test]
fn a_half_open_sector_limits_its_clusters_through_its_coordinators_orders() {
    use qs_wire::mesh::{BreakerState, ClusterSummary, Scope, SectorId};
    // The lead's side: a limited order.
    let c = one_cluster(40, 300);
    let mut lead = Lead::new(c, Time::from_millis(5_000_000));
    lead.run(1_200);
    let envelope = lead.ask(1);
    lead.order_with(envelope, None, true);
    let sent = dispatches(&lead.run(400));
    assert_eq!(
        sent.len(),
        2,
        "a tenth of the 20 with the capability: {sent:?}"
    );

    // The coordinator's side: 51 failures in its sector open its breaker; 30 s on, with its
    // cluster active again, a good probe makes it half-open, and its orders say so.
    let pair = pair();
    let (p1, p2) = (pair.p1.clone(), pair.p2.clone());
    let root = NodeId::new("p3").unwrap();
    let tree = pair.roles(&p2, &p1, &root);
    let start = Time::from_millis(1_000_000);
    let mut coordinator = node_in(&p1, MeshConfig::default(), &tree, start);
    let summary = |failures: u32, now: Time| ClusterSummary {
        failures,
        ..cluster_summary(0, 0, &p2, now)
    };
    let hear = |node: &mut MeshNode, msg: MeshMessage, now: Time| {
        node.handle(
            MeshInput::Heard {
                from: p2.clone(),
                msg,
            },
            now,
        )
    };
    let msg = MeshMessage::Cluster(Box::new(summary(51, start)));
    hear(&mut coordinator, msg, start);
    let mut now = start;
    while now.as_millis() < start.as_millis() + 31_000 {
        now = Time::from_millis(now.as_millis() + 250);
        let msg = MeshMessage::Cluster(Box::new(summary(0, now)));
        hear(&mut coordinator, msg, now);
        coordinator.handle(MeshInput::Tick, now);
    }
    assert_eq!(
        coordinator.breakers().state(Scope::Sector(SectorId(0))),
        BreakerState::HalfOpen
    );
    drain(&mut coordinator);
    let order = sector_order(&mut coordinator, 7, &root, now);
    coordinator.handle(
        MeshInput::Heard {
            from: root,
            msg: MeshMessage::Order(Box::new(order)),
        },
        now,
    );
    let passed: Vec<bool> = drain(&mut coordinator)
        .into_iter()
        .filter_map(|o| match o {
            MeshOutput::Send {
                to,
                msg: MeshMessage::Order(o),
            } if to == p2 => Some(o.limited),
            _ => None,
        })
        .collect();
    assert_eq!(passed, [true]);
}

#[test]
fn an_envelope_past_its_time_to_live_is_dropped_at_its_host_and_counted_by_the_operation() {
    let c = one_cluster(4, 400);
    let mine = c.mine.len() as u32;
    let theirs = c.theirs.clone();
    let mut lead = Lead::new(c, Time::from_millis(7_000_000));
    // The other host's agents are down: only the lead's own are sent to.
    lead.down = theirs.into_iter().collect();
    lead.run(1_200);
    // An operation whose envelope outlived its time to live: the lead's own agents' host
    // (the lead itself) drops it and says so.
    let mut envelope = lead.ask(1);
    envelope.requires = None;
    envelope.created_ms -= 5_000;
    envelope.ttl_ms = 1_000;
    lead.order_of(envelope, None);
    // Sent just before the target (200 ms), dropped at once: nothing more can come, and the
    // cluster reports then, not at its deadline (the target and a window of 150 ms).
    let out = lead.run(260);
    let r = report(&out).expect("the cluster reported before its deadline");
    assert_eq!(r.tally.expired, mine, "{:?}", r.tally);
    assert_eq!(lead.node.expired(), u64::from(mine));
}

#[test]
fn a_reroute_never_goes_to_an_agent_already_asked() {
    let c = one_cluster(4, 500);
    let mut lead = Lead::new(c, Time::from_millis(9_000_000));
    lead.run(1_200);
    // Both agents with the capability are asked; one says it lacks it.
    lead.order(1, None);
    let out = lead.run(250);
    let sent = dispatches(&out);
    assert_eq!(sent.len(), 2, "{sent:?}");
    lead.answer(
        &sent[0],
        Some(ConflictDetail::CapabilityMismatch {
            missing: TPU.into(),
        }),
    );
    lead.answer(&sent[1], None);
    let (out, counts) = drained_counts(&mut lead);
    assert!(
        dispatches(&out).is_empty(),
        "the other was asked already: {out:?}"
    );
    assert_eq!(counts, [2, 1, 1, 0], "sent, ready, conflict, rerouted");
}

#[test]
fn an_answer_from_another_node_than_the_agents_host_is_refused() {
    let c = one_cluster(4, 600);
    let mut lead = Lead::new(c, Time::from_millis(11_000_000));
    lead.run(1_200);
    lead.order(1, Some(1));
    let out = lead.run(250);
    let sent = dispatches(&out);
    assert_eq!(sent.len(), 1, "{sent:?}");
    // Another member says the agent lacks the capability: refused, nothing rerouted.
    let mallory = NodeId::new("mallory").unwrap();
    let lacks = ConflictDetail::CapabilityMismatch {
        missing: TPU.into(),
    };
    lead.answer_from(mallory, &sent[0], Some(lacks));
    let out = drain(&mut lead.node);
    assert!(dispatches(&out).is_empty(), "{out:?}");
    assert_eq!(lead.node.refused_senders(), 1);
    // Its host's own answer counts.
    lead.answer(&sent[0], None);
    let (_, counts) = drained_counts(&mut lead);
    assert_eq!(counts, [1, 1, 0, 0], "sent, ready, conflict, rerouted");
}

/// A node that takes a cluster over (a new tree: a failover, a peer that came back) knows
/// nothing yet of the other host's agents. It says nothing of them until that host beats or
/// `dead_after_ms` passes: the root's mode does not drop to EMERGENCY in the moment between
/// (a CI run refused an operator's command so), and a host that never beats is offline then.
#[test]
fn a_new_lead_counts_no_agent_offline_before_its_host_could_beat() {
    use qs_core::mesh::degrade::Mode;
    // Which host leads the one cluster does not depend on how many agents each has.
    let OneCluster { lead, other, .. } = one_cluster(2, 1);
    let members: Vec<Member> = (0..23u64)
        .map(|i| Member {
            agent: AgentId(500 + i),
            host: if i < 3 { lead.clone() } else { other.clone() },
            zone: String::new(),
        })
        .collect();
    let tree =
        Arc::new(Hierarchy::build(&members, Shape::default(), |_| Seniority::Seasoned).unwrap());
    let (mine, theirs): (Vec<AgentId>, Vec<AgentId>) = (
        members[..3].iter().map(|m| m.agent).collect(),
        members[3..].iter().map(|m| m.agent).collect(),
    );
    let cfg = MeshConfig::default();
    let start = Time::from_millis(2_000_000);
    let mut node = MeshNode::new(lead.clone(), cfg, start);
    node.handle(MeshInput::Tree(tree.clone()), start);
    node.handle(
        MeshInput::Agents(mine.iter().map(|a| beat(*a, 0, false)).collect()),
        start,
    );
    let at = |ms: u64| Time::from_millis(start.as_millis() + ms);
    // Until the other host could have beaten, the root sees no agent offline.
    let mut ms = 0;
    while ms < cfg.dead_after_ms {
        node.handle(MeshInput::Tick, at(ms));
        assert_eq!(
            node.mode(),
            Mode::Full,
            "at {ms} ms: {:?}",
            node.global_counts()
        );
        ms += 50;
    }
    // A host silent since the lead took over is offline past dead_after_ms (the counts
    // reach the root a beat after the lead's, and its mode a beat after that).
    for k in 1..=3 {
        node.handle(MeshInput::Tick, at(cfg.dead_after_ms + k * cfg.beat_ms + k));
    }
    assert_eq!(node.global_counts(), (23, 3));
    assert_eq!(node.mode(), Mode::Emergency);
    // Another node roots the mesh a moment (this one looked dead to the others), then this
    // one again: the mode it had says nothing of the new hierarchy, whose counts (its
    // agents not yet known offline) make the mode at its next beat, told once.
    let elsewhere =
        Hierarchy::build(&members, Shape::default(), |n| Seniority::live(*n != lead)).unwrap();
    assert_eq!(elsewhere.root.as_ref(), Some(&other));
    let t = at(cfg.dead_after_ms + 3 * cfg.beat_ms + 10);
    drain(&mut node);
    node.handle(MeshInput::Tree(Arc::new(elsewhere)), t);
    node.handle(MeshInput::Tree(tree.clone()), t);
    node.handle(MeshInput::Tick, at(cfg.dead_after_ms + 4 * cfg.beat_ms + 4));
    assert_eq!(node.mode(), Mode::Full, "{:?}", node.global_counts());
    let told: Vec<(Mode, Mode)> = drain(&mut node)
        .into_iter()
        .filter_map(|o| match o {
            MeshOutput::ModeChanged { from, to, .. } => Some((from, to)),
            _ => None,
        })
        .collect();
    assert_eq!(told, vec![(Mode::Emergency, Mode::Full)]);
    // It beats: its agents count active at the next beat.
    let now = at(cfg.dead_after_ms + 4 * cfg.beat_ms + 4);
    let agents = theirs.iter().map(|a| beat(*a, 0, false)).collect();
    hear_beat(
        &mut node,
        &other,
        ClusterId(0),
        now.as_millis(),
        agents,
        now,
    );
    for k in 5..=7 {
        node.handle(MeshInput::Tick, at(cfg.dead_after_ms + k * cfg.beat_ms + k));
    }
    assert_eq!(node.global_counts(), (23, 23));
    assert_eq!(node.mode(), Mode::Full);
}

/// Zones: when the zone before it doubles, a cluster is numbered anew with the same agents
/// and, its election keyed by its zone and place, the same lead, which keeps what it knew of
/// each agent: those in the routing pool stay in it, measured as before.
#[test]
fn a_lead_keeps_its_agents_when_another_zone_renumbers_their_cluster() {
    let members_of = |host: &NodeId, zone: &str, first: u64, n: u64| -> Vec<Member> {
        (first..first + n)
            .map(|i| Member {
                agent: AgentId(i),
                host: host.clone(),
                zone: zone.to_string(),
            })
            .collect()
    };
    let other = NodeId::new("eu-2").unwrap();
    let ap = NodeId::new("ap-1").unwrap();
    let build = |me: &NodeId, ap_agents: u64| {
        let mut m = members_of(&ap, "ap", 1_000, ap_agents);
        m.extend(members_of(me, "eu", 0, 15));
        m.extend(members_of(&other, "eu", 100, 15));
        Hierarchy::build(&m, Shape::default(), |_| Seniority::Seasoned).unwrap()
    };
    // A name for this node under which it leads eu's one cluster (the search is
    // deterministic: names hash the same everywhere).
    let me = (0..64)
        .map(|i| NodeId::new(&format!("eu-{i}")).unwrap())
        .find(|n| {
            let t = build(n, 25);
            *n != other && t.cluster(ClusterId(1)).unwrap().lead.as_ref() == Some(n)
        })
        .expect("some name leads");
    let (before, after) = (build(&me, 25), build(&me, 60));
    assert_eq!(before.cluster_of(AgentId(100)), Some(ClusterId(1)));
    // ap doubles to two clusters: eu's is numbered 2 now, with the same agents and lead.
    let moved = ClusterId(2);
    assert_eq!(after.cluster_of(AgentId(100)), Some(moved));
    assert_eq!(after.cluster(moved).unwrap().lead.as_ref(), Some(&me));

    let start = Time::from_millis(1_000_000);
    let mut node = MeshNode::new(me.clone(), MeshConfig::default(), start);
    node.handle(MeshInput::Tree(Arc::new(before)), start);
    let mine: Vec<AgentBeat> = (0..15).map(|i| beat(AgentId(i), 0, false)).collect();
    node.handle(MeshInput::Agents(mine), start);
    // The other host's agents joined a second ago; they take 40 ms, and answer probes so.
    let theirs: Vec<AgentId> = (100..115).map(AgentId).collect();
    let beat_from_other = |node: &mut MeshNode, c: ClusterId, now: Time| {
        let agents = theirs.iter().map(|a| AgentBeat {
            processing_ms: 40.0,
            ..beat(*a, start.as_millis() - 1_000, false)
        });
        hear_beat(node, &other, c, now.as_millis(), agents.collect(), now);
    };
    let mut now = start;
    for _ in 0..20 {
        now = Time::from_millis(now.as_millis() + 300);
        beat_from_other(&mut node, ClusterId(1), now);
        node.handle(MeshInput::Tick, now);
        let out = drain(&mut node);
        for d in dispatches(&out)
            .into_iter()
            .filter(|d| theirs.contains(&d.agent))
        {
            let msg = ready(&d, now.as_millis(), 40);
            node.handle(
                MeshInput::Heard {
                    from: other.clone(),
                    msg,
                },
                now,
            );
        }
    }
    let measured = |node: &mut MeshNode| -> Vec<(ClusterId, bool, Option<u64>)> {
        let mut v: Vec<_> = node
            .led_agents(Time::from_millis(0))
            .into_iter()
            .filter(|a| theirs.contains(&a.agent))
            .map(|a| {
                (
                    a.cluster,
                    a.admitted,
                    a.processing_ms.map(|p| p.round() as u64),
                )
            })
            .collect();
        v.dedup();
        v
    };
    assert_eq!(measured(&mut node), [(ClusterId(1), true, Some(40))]);

    node.handle(MeshInput::Tree(Arc::new(after)), now);
    assert_eq!(measured(&mut node), [(moved, true, Some(40))]);
    // Its host beats to the cluster's new number: nothing is relearned.
    now = Time::from_millis(now.as_millis() + 300);
    beat_from_other(&mut node, moved, now);
    node.handle(MeshInput::Tick, now);
    let out = drain(&mut node);
    assert!(
        dispatches(&out).is_empty(),
        "no probe: they are in the pool"
    );
    assert_eq!(measured(&mut node), [(moved, true, Some(40))]);
}

/// Two hosts of 10 agents each, in one cluster, and its tree while `p2` is new: `p1` leads
/// it and is the root (`p2` ranks above `p1` for the cluster once seasoned).
/// Seed §10.2: a newly seasoned node wins a cluster; its former lead hands over what it knew,
/// so the newcomers it had admitted stay in the routing pool under the new lead instead of
/// settling again (link samples, probes), and their conflicts still unresolved.
#[test]
fn a_former_lead_hands_its_admitted_agents_over_to_the_new_lead() {
    let Pair {
        p1,
        p2,
        members,
        tree: before,
    } = pair();
    let before = Arc::new(before);
    let after =
        Arc::new(Hierarchy::build(&members, Shape::default(), |_| Seniority::Seasoned).unwrap());
    let c = ClusterId(0);
    assert_eq!(before.cluster(c).unwrap().lead.as_ref(), Some(&p1));
    assert_eq!(after.cluster(c).unwrap().lead.as_ref(), Some(&p2));

    let start = Time::from_millis(1_000_000);
    let joined = start.as_millis() - 1_000;
    let theirs: Vec<AgentId> = (10..20).map(AgentId).collect();
    let their_beats: Vec<AgentBeat> = theirs.iter().map(|a| beat(*a, joined, false)).collect();
    let mut a = MeshNode::new(p1.clone(), MeshConfig::default(), start);
    let mut b = MeshNode::new(p2.clone(), MeshConfig::default(), start);
    a.handle(MeshInput::Tree(before.clone()), start);
    b.handle(MeshInput::Tree(before), start);
    a.handle(
        MeshInput::Agents((0..10).map(|i| beat(AgentId(i), 0, false)).collect()),
        start,
    );
    b.handle(MeshInput::Agents(their_beats.clone()), start);
    // p1 leads: p2 beats its agents to it and answers its probes, until p1 admitted them.
    let mut now = start;
    for _ in 0..20 {
        now = Time::from_millis(now.as_millis() + 300);
        hear_beat(&mut a, &p2, c, now.as_millis(), their_beats.clone(), now);
        a.handle(MeshInput::Tick, now);
        let out = drain(&mut a);
        for d in dispatches(&out) {
            let msg = ready(&d, now.as_millis(), 5);
            a.handle(
                MeshInput::Heard {
                    from: p2.clone(),
                    msg,
                },
                now,
            );
        }
    }
    assert!(
        theirs.iter().all(|x| pool(&a).contains(x)),
        "p1 admitted them"
    );
    // One of p1's own (long-standing) agents contradicts a wave's content: p1 holds the
    // conflict, unresolved. (A newcomer that did would leave the pool again, §10.2.)
    cascade(&mut a, CascadeMode::Wave, Verb::Sync, "a fact", now);
    for _ in 0..10 {
        now = Time::from_millis(now.as_millis() + 100);
        step_answering(&mut a, &p2, &their_beats, now, |d| d.agent == AgentId(0));
    }
    let open = |n: &MeshNode, now: Time| n.conflicts().counts(now, |_| true).open;
    assert_eq!(open(&a, now), 1, "p1 heard the conflict");

    // p2 comes of age: both take the new tree; p2 leads and knows nothing of them yet.
    now = Time::from_millis(now.as_millis() + 300);
    a.handle(MeshInput::Tree(after.clone()), now);
    b.handle(MeshInput::Tree(after), now);
    b.handle(MeshInput::Agents(their_beats.clone()), now);
    drain(&mut b);
    assert!(
        theirs.iter().all(|x| !pool(&b).contains(x)),
        "not measured by p2 yet"
    );
    // p1's next beats hand them over: the same handover at three beats in a row, then no
    // more.
    let mut handovers: Vec<MeshMessage> = Vec::new();
    for _ in 0..5 {
        now = Time::from_millis(now.as_millis() + 300);
        a.handle(MeshInput::Tick, now);
        handovers.extend(drain(&mut a).into_iter().filter_map(|o| match o {
            MeshOutput::Send {
                to,
                msg: msg @ MeshMessage::Handover(_),
            } if to == p2 => Some(msg),
            _ => None,
        }));
    }
    assert_eq!(handovers.len(), 3);
    assert!(handovers.iter().all(|h| *h == handovers[0]));
    // From another node than their former lead: refused.
    let stranger = NodeId::new("p3").unwrap();
    b.handle(
        MeshInput::Heard {
            from: stranger,
            msg: handovers[0].clone(),
        },
        now,
    );
    assert!(theirs.iter().all(|x| !pool(&b).contains(x)));
    assert_eq!(open(&b, now), 0, "nor its conflicts");
    // The first copy is lost; the second arrives.
    let copy = |i: usize| MeshInput::Heard {
        from: p1.clone(),
        msg: handovers[i].clone(),
    };
    b.handle(copy(1), now);
    // The conflict went with its agent: p2 holds it now, p1 no longer.
    assert_eq!((open(&a, now), open(&b, now)), (0, 1));
    let held = b.conflicts().quarantined().next().unwrap();
    assert_eq!(
        (held.agent, held.handed_by.as_ref()),
        (AgentId(0), Some(&p1))
    );
    assert!(
        theirs.iter().all(|x| pool(&b).contains(x)),
        "in p2's pool at once"
    );
    let measured = b
        .led_agents(Time::from_millis(0))
        .into_iter()
        .filter(|x| theirs.contains(&x.agent))
        .all(|x| x.processing_ms.is_some_and(|p| (4.0..6.0).contains(&p)));
    assert!(measured, "as p1 measured them");
    // One of them registers anew (a restart) and leaves the pool; the third copy, late, does
    // not put it back with its former measure, nor hand its conflict over a second time.
    let restarted = their_beats[0].agent;
    let mut again = their_beats.clone();
    again[0].joined_ms = now.as_millis();
    b.handle(MeshInput::Agents(again), now);
    now = Time::from_millis(now.as_millis() + 300);
    b.handle(MeshInput::Tick, now);
    drain(&mut b);
    assert!(!pool(&b).contains(&restarted), "registered anew");
    b.handle(copy(2), now);
    assert!(
        !pool(&b).contains(&restarted),
        "the late copy undid nothing"
    );
    assert_eq!(open(&b, now), 1, "the conflict taken once");
}

/// Seed §10.2, "monitor for conflicts during integration", in the urgent mode: its answers
/// go to the root, not to the lead, so the root tells the lead which of its agents
/// contradicted a cluster that clearly answered READY; a newcomer among them leaves the
/// routing pool, an established agent stays.
#[test]
fn the_root_tells_a_lead_of_newcomers_that_contradicted_an_urgent_operation() {
    let Pair { p1, p2, tree, .. } = pair();
    assert_eq!(tree.root.as_ref(), Some(&p1));
    let start = Time::from_millis(1_000_000);
    let theirs: Vec<AgentBeat> = (10..20)
        .map(|i| beat(AgentId(i), start.as_millis() - 1_000, false))
        .collect();
    let mut node = MeshNode::new(p1.clone(), MeshConfig::default(), start);
    node.handle(MeshInput::Tree(Arc::new(tree)), start);
    node.handle(
        MeshInput::Agents((0..10).map(|i| beat(AgentId(i), 0, false)).collect()),
        start,
    );
    let (newcomer, member) = (AgentId(15), AgentId(3));
    // Each step: p2's beat, a tick, and every dispatch answered at once: READY, but for
    // the two that contradict an ask (the newcomer and an established member).
    let mut now = start;
    let mut results = Vec::new();
    let mut step = |node: &mut MeshNode, now: Time| {
        let contradicts = |d: &Dispatch| {
            d.envelope.verb == Verb::Observe && [newcomer, member].contains(&d.agent)
        };
        results.extend(step_answering(node, &p2, &theirs, now, contradicts));
    };
    // p2's agents settle and are probed into the pool.
    for _ in 0..600 {
        now = Time::from_millis(now.as_millis() + 10);
        step(&mut node, now);
    }
    let p = pool(&node);
    assert!(p.contains(&newcomer) && p.contains(&member), "{p:?}");
    cascade(
        &mut node,
        CascadeMode::Parallel,
        Verb::Observe,
        "ready?",
        now,
    );
    for _ in 0..300 {
        now = Time::from_millis(now.as_millis() + 10);
        step(&mut node, now);
    }
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!((results[0].tally.ready, results[0].tally.conflict), (18, 2));
    let p = pool(&node);
    assert!(!p.contains(&newcomer), "the newcomer is held back");
    assert!(p.contains(&member), "an established member is not");
    // The root heard both conflicts (an urgent operation's answers are its) and holds them
    // unresolved.
    assert_eq!(node.conflicts().counts(now, |_| true).open, 2);
    assert!(node.mesh_conflicts(now).is_some(), "it is the root");
}

/// Seed §6.1's TRANSIENT_NETWORK: an agent that answered before, sent three operations in a
/// row that it answers none of, not even late (within the 10 s a lead takes late answers),
/// is routed around: out of
/// the routing pool for a second, then tried again; its next miss keeps it out twice as
/// long; an answer starts its count again. (Each miss also makes it look slower, so each ask
/// here gives it longer to be ready: it is still sent to.)
#[test]
fn an_agent_that_misses_three_operations_in_a_row_is_routed_around_with_backoff() {
    let c = one_cluster(6, 400);
    let silent = c.theirs[0];
    let mut lead = Lead::new(c, Time::from_millis(3_000_000));
    lead.run(1_200);
    let mut op = 0;
    let mut ask = |lead: &mut Lead, ahead_ms: u64, answers: bool| {
        op += 1;
        ask_ahead(lead, op, ahead_ms, silent, answers)
    };
    // It answers once (one never heard from may be slow, not missing); then three misses,
    // and the late answers' time passes.
    assert_eq!(ask(&mut lead, 200, true), []);
    for ahead_ms in [200, 1_000, 2_500] {
        assert_eq!(ask(&mut lead, ahead_ms, false), []);
    }
    // (Each late answers' time began when its window's extension ended.)
    let out = lead.run(10_300);
    assert_eq!(routed_around(&out), [(silent, 3, 1_000)]);
    // The lead's status shows it out of the pool, its misses, and the rest of its hold.
    let now = lead.now;
    let view = lead.node.led_agents(now);
    let view = view.iter().find(|a| a.agent == silent).unwrap();
    assert_eq!((view.admitted, view.missed), (false, 3));
    assert!((500..=1_000).contains(&view.held_ms), "{view:?}");
    // Out, then tried again after its backoff.
    let out = lead.run(900);
    assert!(
        !pool(&lead.node).contains(&silent),
        "{:?}",
        routed_around(&out)
    );
    lead.run(300);
    assert!(pool(&lead.node).contains(&silent));
    // Its next miss keeps it out twice as long.
    assert_eq!(ask(&mut lead, 8_000, false), []);
    let out = lead.run(10_000);
    assert_eq!(routed_around(&out), [(silent, 4, 2_000)]);
    // It answers: its count starts again, and one miss routes nothing around.
    lead.run(2_100);
    assert!(pool(&lead.node).contains(&silent));
    assert_eq!(ask(&mut lead, 20_000, true), []);
    assert_eq!(ask(&mut lead, 20_000, false), []);
    assert_eq!(routed_around(&lead.run(10_000)), []);
    assert!(pool(&lead.node).contains(&silent));
}

/// An agent whose work takes seconds (a human's, one that queues) and that does not answer
/// within the late answers' time is slow, not missing: it is not routed around.
#[test]
fn a_slow_agent_that_does_not_answer_in_time_is_not_routed_around() {
    use qs_core::mesh::MeshOutput;
    let c = one_cluster(6, 500);
    let slow = c.theirs[0];
    let other = c.other.clone();
    let mut lead = Lead::new(c, Time::from_millis(3_000_000));
    lead.run(1_200);
    let mut routed = 0;
    // Each ask gives it time enough to be sent to, as each miss makes it look slower.
    for (op, ahead_ms) in [(1u64, 6_000u64), (2, 7_000), (3, 15_000), (4, 31_000)] {
        let mut envelope = lead.ask(op);
        envelope.target_arrival_ms = lead.now.as_millis() + ahead_ms;
        envelope.ttl_ms = 60_000;
        lead.order_of(envelope, None);
        let mut asked = false;
        for _ in 0..(ahead_ms + 400) / 50 {
            let step = lead.run(50);
            for d in dispatches(&step) {
                asked |= d.agent == slow;
                // Its first answer took 5 s; then it answers none in time.
                match (d.agent == slow, op) {
                    (true, 1) => {
                        let now = lead.now;
                        answer_dispatch(&mut lead.node, &d, Some(&other), 5_000, None, now);
                    }
                    (true, _) => {}
                    (false, _) => lead.answer(&d, None),
                }
            }
            let out = drain(&mut lead.node);
            routed += out
                .iter()
                .filter(|o| matches!(o, MeshOutput::RoutedAround(_)))
                .count();
        }
        assert!(asked, "op {op} asked the slow agent");
    }
    let out = lead.run(12_000);
    routed += out
        .iter()
        .filter(|o| matches!(o, MeshOutput::RoutedAround(_)))
        .count();
    assert_eq!(routed, 0);
    assert!(pool(&lead.node).contains(&slow));
}

/// Who `out` says its lead routed around: the agent, its misses in a row, its backoff.
fn routed_around(out: &[qs_core::mesh::MeshOutput]) -> Vec<(AgentId, u8, u64)> {
    out.iter()
        .filter_map(|o| match o {
            qs_core::mesh::MeshOutput::RoutedAround(r) => Some((r.agent, r.missed, r.back_in_ms)),
            _ => None,
        })
        .collect()
}

/// Operation `op`, an ask of the agents with the capability to be ready `ahead_ms` from
/// now; each answers but `silent`, unless `answers`, and it must be asked. Who the lead
/// routed around meanwhile.
fn ask_ahead(
    lead: &mut Lead,
    op: u64,
    ahead_ms: u64,
    silent: AgentId,
    answers: bool,
) -> Vec<(AgentId, u8, u64)> {
    let mut envelope = lead.ask(op);
    envelope.target_arrival_ms = lead.now.as_millis() + ahead_ms;
    envelope.ttl_ms = ahead_ms + 5_000;
    lead.order_of(envelope, None);
    let mut out = Vec::new();
    let mut asked = false;
    for _ in 0..(ahead_ms + 400) / 50 {
        let step = lead.run(50);
        for d in dispatches(&step) {
            if d.agent != silent || answers {
                lead.answer(&d, None);
            }
            asked |= d.agent == silent;
        }
        out.extend(step);
        out.extend(drain(&mut lead.node));
    }
    assert!(report(&out).is_some(), "op {op} reported");
    assert!(asked, "op {op} asked the silent agent");
    routed_around(&out)
}

/// Misses with answers between them are not in a row: an agent that misses, answers,
/// misses, answers and misses is not routed around.
#[test]
fn misses_with_answers_between_them_route_nothing_around() {
    let c = one_cluster(6, 600);
    let agent = c.theirs[0];
    let mut lead = Lead::new(c, Time::from_millis(3_000_000));
    lead.run(1_200);
    let pattern = [true, false, true, false, true, false];
    for (k, answers) in pattern.into_iter().enumerate() {
        let ahead_ms = [200, 1_000, 1_000, 2_000, 2_000, 4_000][k];
        assert_eq!(
            ask_ahead(&mut lead, k as u64 + 1, ahead_ms, agent, answers),
            []
        );
    }
    assert_eq!(routed_around(&lead.run(11_000)), []);
    assert!(pool(&lead.node).contains(&agent));
}

/// A hold goes with its agent when another node takes over its cluster: an agent its former
/// lead routed around (misses in a row) stays out of the new lead's pool for the rest of its
/// backoff, not taken back at its host's next beat.
#[test]
fn a_handed_over_agent_keeps_the_rest_of_its_backoff() {
    use qs_wire::mesh::{HandedAgent, Handover};
    let Pair {
        p1,
        p2,
        members,
        tree: before,
    } = pair();
    let after =
        Arc::new(Hierarchy::build(&members, Shape::default(), |_| Seniority::Seasoned).unwrap());
    let c = ClusterId(0);
    let start = Time::from_millis(1_000_000);
    let mut b = MeshNode::new(p2.clone(), MeshConfig::default(), start);
    b.handle(MeshInput::Tree(Arc::new(before)), start);
    b.handle(MeshInput::Tree(after), start);
    let theirs: Vec<AgentBeat> = (0..10).map(|i| beat(AgentId(i), 0, false)).collect();
    let held = |agent: u64, held_ms: u64| HandedAgent {
        agent: AgentId(agent),
        admitted: false,
        processing_ms: 5.0,
        samples: 3,
        held_ms,
        missed: 3,
    };
    let handover = Handover {
        cluster: c,
        agents: vec![held(0, 5_000), held(1, 0)],
        conflicts: Vec::new(),
    };
    b.handle(
        MeshInput::Heard {
            from: p1.clone(),
            msg: MeshMessage::Handover(Box::new(handover)),
        },
        start,
    );
    // Its host beats (a full beat): the one without a hold joins the pool, the held one
    // only once its backoff is over.
    let mut in_pool_at = None;
    for k in 1..=30u64 {
        let now = Time::from_millis(start.as_millis() + k * 300);
        hear_beat(&mut b, &p1, c, now.as_millis(), theirs.clone(), now);
        b.handle(MeshInput::Tick, now);
        drain(&mut b);
        assert!(pool(&b).contains(&AgentId(1)), "at {k}");
        if pool(&b).contains(&AgentId(0)) && in_pool_at.is_none() {
            in_pool_at = Some(k * 300);
        }
    }
    let at = in_pool_at.expect("back after its backoff");
    assert!((5_000..=5_700).contains(&at), "{at}");
}

/// Seed §6.2: an open cluster breaker is probed with requests, not judged by beats. 30 s
/// after it opened its lead sends a readiness probe to each of its three most responsive
/// active agents; with no READY within the probe's wait it stays open (though every agent
/// beats as active again) and is probed again 60 s later; every probe answered otherwise
/// keeps it open at once; a READY makes it half-open.
#[test]
fn an_open_cluster_breaker_is_probed_with_requests_and_half_opens_on_a_ready() {
    use qs_core::mesh::BREAKER_PROBE_AGENTS;
    let c = one_cluster(20, 700);
    let mut lead = Lead::new(c, Time::from_millis(3_000_000));
    lead.run(1_200);
    let cluster = Scope::Cluster(ClusterId(0));
    lead.down = lead.theirs.iter().copied().collect();
    lead.run(700);
    assert_eq!(lead.node.breakers().state(cluster), BreakerState::Open);
    let opened = lead.now;
    lead.down.clear();
    // The first probe, 30 s after it opened: three agents asked, none answers; still open
    // past its wait.
    let first = lead.next_probes(31_000, false);
    assert_eq!(first.len(), BREAKER_PROBE_AGENTS, "{first:?}");
    assert!(
        lead.now.since(opened).as_millis() >= 29_000,
        "opened in the last 700 ms"
    );
    lead.run(3_000);
    assert_eq!(lead.node.breakers().state(cluster), BreakerState::Open);
    // The next, 60 s after the first's wait: each answers CONFLICT, which keeps it open at
    // once (the next probe 60 s after the answers, not after the wait).
    let asked = lead.now;
    let second = lead.next_probes(61_000, false);
    assert_eq!(second.len(), BREAKER_PROBE_AGENTS, "{second:?}");
    assert!(lead.now.since(asked).as_millis() >= 55_000);
    for d in &second {
        let host = lead.node.tree().host_of(d.agent).cloned();
        let from = host.filter(|h| h != lead.node.id());
        let now = lead.now;
        answer_dispatch(
            &mut lead.node,
            d,
            from.as_ref(),
            2,
            Some(contradiction()),
            now,
        );
    }
    assert_eq!(lead.node.breakers().state(cluster), BreakerState::Open);
    // The third: one READY half-opens it.
    let answered = lead.now;
    let third = lead.next_probes(61_000, true);
    assert_eq!(third.len(), BREAKER_PROBE_AGENTS, "{third:?}");
    let waited_ms = lead.now.since(answered).as_millis();
    assert!((59_000..=61_000).contains(&waited_ms), "{waited_ms}");
    assert_eq!(lead.node.breakers().state(cluster), BreakerState::HalfOpen);
}

/// The agents `out` says were taken for crashed, and whether escalated.
fn crashes(out: &[qs_core::mesh::MeshOutput]) -> Vec<(AgentId, bool)> {
    use qs_core::mesh::MeshOutput;
    out.iter()
        .filter_map(|o| match o {
            MeshOutput::AgentCrashed(c) => Some((c.agent, c.escalated)),
            _ => None,
        })
        .collect()
}

/// Seed §6.1's AGENT_CRASH: an agent offline 30 s while its host beats on is taken for
/// crashed once, and its host asked to restart it; one that crashes again within ten
/// minutes of coming back is escalated ("replacement also fails").
#[test]
fn an_agent_offline_30_s_while_its_host_lives_is_taken_for_crashed_and_restarted() {
    use qs_core::mesh::MeshOutput;
    let c = one_cluster(6, 800);
    let mut lead = Lead::new(c, Time::from_millis(3_000_000));
    lead.run(1_200);
    let down = lead.theirs[0];
    lead.down.insert(down);
    assert_eq!(crashes(&lead.run(29_000)), []);
    let out = lead.run(1_500);
    assert_eq!(crashes(&out), [(down, false)]);
    let restarts: Vec<(NodeId, AgentId)> = out
        .iter()
        .filter_map(|o| match o {
            MeshOutput::Send {
                to,
                msg: MeshMessage::Restart(r),
            } => Some((to.clone(), r.agent)),
            _ => None,
        })
        .collect();
    assert_eq!(restarts, [(lead.other.clone(), down)]);
    // Declared once; its restart asked again 30 s later (a request may be lost).
    let out = lead.run(30_000);
    assert_eq!(crashes(&out), [], "once");
    let asked_again = out.iter().any(
        |o| matches!(o, MeshOutput::Send { msg: MeshMessage::Restart(r), .. } if r.agent == down),
    );
    assert!(asked_again);
    // Back, and down again within ten minutes: escalated.
    lead.down.clear();
    lead.run(1_000);
    lead.down.insert(down);
    assert_eq!(crashes(&lead.run(31_000)), [(down, true)]);
}

/// A host restarts one of its agents, or takes its task from it, only when that agent's
/// lead asks, and only for the registration the lead knows.
#[test]
fn a_host_acts_on_an_agent_only_at_its_leads_request() {
    use qs_core::mesh::MeshOutput;
    use qs_wire::mesh::AgentOrder;
    let pair = pair();
    let (p1, p2) = (pair.p1.clone(), pair.p2.clone());
    let tree = pair.roles(&p2, &p2, &p2);
    let now = Time::from_millis(1_000_000);
    let mut host = MeshNode::new(p1.clone(), MeshConfig::default(), now);
    host.handle(MeshInput::Tree(tree), now);
    let mine: Vec<AgentBeat> = (0..10u64)
        .map(|i| AgentBeat {
            joined_ms: 500,
            ..beat(AgentId(i), 0, false)
        })
        .collect();
    host.handle(MeshInput::Agents(mine), now);
    drain(&mut host);
    type Msg = fn(AgentOrder) -> MeshMessage;
    let table: [(&str, Msg); 2] = [
        ("restart", MeshMessage::Restart),
        ("reassign", MeshMessage::Reassign),
    ];
    for (what, msg) in table {
        let ask = |host: &mut MeshNode, from: &NodeId, agent: u64, joined_ms: u64| {
            let r = AgentOrder {
                agent: AgentId(agent),
                cluster: ClusterId(0),
                joined_ms,
                task: None,
            };
            let (msg, from) = (msg(r), from.clone());
            host.handle(MeshInput::Heard { from, msg }, now);
            drain(host)
                .into_iter()
                .filter_map(|o| match (o, what) {
                    (MeshOutput::Restart(r), "restart") => Some(r.agent),
                    (MeshOutput::Reassign(r), "reassign") => Some(r.agent),
                    _ => None,
                })
                .collect::<Vec<AgentId>>()
        };
        let refused = host.refused_senders();
        assert_eq!(
            ask(&mut host, &p2, 3, 0),
            [AgentId(3)],
            "{what}: from its lead"
        );
        assert_eq!(
            ask(&mut host, &p2, 3, 500),
            [AgentId(3)],
            "{what}: that registration"
        );
        assert_eq!(
            ask(&mut host, &p2, 3, 400),
            [],
            "{what}: another registration"
        );
        let stranger = NodeId::new("p9").unwrap();
        assert_eq!(
            ask(&mut host, &stranger, 3, 0),
            [],
            "{what}: from another node"
        );
        assert_eq!(
            ask(&mut host, &p2, 15, 0),
            [],
            "{what}: not one of its agents"
        );
        assert_eq!(host.refused_senders(), refused + 2, "{what}");
    }
}
