//! Orders coming down and reports going up: a coordinator relays an order to its clusters'
//! leads and sums their reports; the root takes the sectors' reports.

use super::*;

/// A coordinator (or a lead, for a cluster's scope) gets an order.
pub(crate) fn on_order(node: &mut MeshNode, o: Order, now: Time) {
    match o.scope {
        Scope::Cluster(c) if node.led.contains_key(&c) => lead_order(node, o, c, now),
        Scope::Cluster(c) => {
            // A cluster scope from the root, at the cluster's coordinator: passed to the
            // lead, which takes it only from the root or its coordinator (in its tree or the
            // one before). A node neither now nor before drops it.
            let me = Some(&node.me);
            let coordinates = node.tree.coordinator_of(c) == me
                || (node.tree_changed_lately(now)
                    && node
                        .tree_before
                        .as_deref()
                        .is_some_and(|t| t.coordinator_of(c) == me));
            if let Some(lead) = node.tree.cluster(c).and_then(|cl| cl.lead.clone())
                && lead != node.me
                && coordinates
            {
                node.send_order(lead, o);
            }
        }
        Scope::Sector(s) => relay_order(node, o, s),
        Scope::Global => {}
    }
}

pub(super) fn relay_order(node: &mut MeshNode, o: Order, s: SectorId) {
    if node.ops.relay.len() >= MAX_OPS {
        return;
    }
    let clusters = clusters_in(node, o.scope, s);
    let target = Time::from_millis(o.envelope.target_arrival_ms);
    let slack = Duration::from_millis(node.cfg.report_slack_ms);
    // Its leads' reports take a hop up: it waits the longest of them past their window.
    let up_ms = clusters
        .iter()
        .filter_map(|c| node.tree.cluster(*c).and_then(|cl| cl.lead.as_ref()))
        .map(|lead| node.hop(Some(lead)))
        .fold(0.0, f64::max)
        .min(node.cfg.max_budget_ms as f64);
    let up = Duration::from_micros((up_ms * 1000.0) as u64);
    let mut relay = RelayOp {
        expect: BTreeSet::new(),
        min_rate: family::min_rate(o.mode, o.class),
        tally: Tally::default(),
        answers: BTreeMap::new(),
        deadline: target + Duration::from_millis(o.window_ms) + (up + slack).max(slack * 2),
        report_to: o.root.clone(),
        scope: o.scope,
        escalate: Escalations::default(),
        named: Vec::new(),
    };
    // This sector's breaker is the coordinator's: half-open, each lead takes its share.
    let half_open = node.breakers.state(Scope::Sector(s)) == BreakerState::HalfOpen;
    // A sample's quota for this sector: as few clusters as it takes (with agents of the
    // order's class, if one, and with the capability it requires, if one, as their
    // summaries say; led, not frozen, their breakers closed: a share is not given to a
    // cluster the order would not reach), each its share of the quota, one agent at least
    // (chosen by the operation's hash).
    let mut clusters = clusters;
    let mut quota = None;
    if let (Some(n), Scope::Sector(_)) = (o.sample_per_cluster, o.scope) {
        let requires = o.envelope.requires.clone();
        clusters.retain(|c| {
            let summary = node.cluster_summaries.get(c);
            let of_class = o
                .class
                .is_none_or(|k| summary.is_none_or(|x| x.classes[k.index()] > 0));
            let capable = requires.as_deref().is_none_or(|r| {
                summary.is_none_or(|x| {
                    qs_wire::mesh::may_have(&x.capabilities, x.capabilities_more, r)
                })
            });
            let reachable = summary.is_none_or(|x| !x.breaker_open)
                && node.frozen_over(Scope::Cluster(*c)).is_none();
            of_class
                && capable
                && reachable
                && node
                    .tree
                    .cluster(*c)
                    .is_some_and(|cl| !cl.agents.is_empty() && cl.lead.is_some())
        });
        clusters.sort_by_key(|c| mix(u64::from(c.0) ^ o.op.0));
        clusters.truncate((n as usize).max(1));
        quota = Some(n);
    }
    let parts = clusters.len();
    for (i, c) in clusters.into_iter().enumerate() {
        let Some(cl) = node.tree.cluster(c) else {
            continue;
        };
        if cl.agents.is_empty() {
            continue;
        }
        let lead = cl.lead.clone();
        let open = node
            .cluster_summaries
            .get(&c)
            .is_some_and(|x| x.breaker_open);
        // Frozen: the whole mesh, the sector, or the cluster.
        let routable = node.frozen_over(Scope::Cluster(c)).is_none() && !open;
        match (lead, routable) {
            (Some(lead), true) => {
                let mut sub = o.clone();
                sub.scope = Scope::Cluster(c);
                if let Some(n) = quota {
                    sub.sample_per_cluster = Some(share(n, parts, i));
                }
                sub.report_to = node.me.clone();
                sub.limited |= half_open;
                if o.mode != CascadeMode::Parallel {
                    relay.expect.insert(Scope::Cluster(c));
                }
                node.send_order(lead, sub);
            }
            (lead, _) => {
                let n = cl.agents.len() as u32;
                let unreachable = Tally {
                    targeted: n,
                    unreachable: n,
                    ..Tally::default()
                };
                if o.mode == CascadeMode::Parallel && lead.is_some() {
                    // The root counts a parallel operation's clusters: this one's count is
                    // that none of it could be reached.
                    let rep = Report {
                        op: o.op,
                        scope: Scope::Cluster(c),
                        from: node.me.clone(),
                        tally: unreachable,
                        answers: Vec::new(),
                        escalated: Vec::new(),
                        escalated_more: 0,
                        late: false,
                        named: Vec::new(),
                    };
                    node.send(o.root.clone(), MeshMessage::Report(Box::new(rep)));
                } else {
                    relay.tally.add(&unreachable);
                }
            }
        }
    }
    if o.mode == CascadeMode::Parallel {
        // Parallel: nothing to gather here; what could not be reached goes to the root.
        if relay.tally.targeted > 0 {
            node.send(
                o.root.clone(),
                MeshMessage::Report(Box::new(Report {
                    op: o.op,
                    scope: Scope::Sector(s),
                    from: node.me.clone(),
                    tally: relay.tally,
                    answers: Vec::new(),
                    escalated: Vec::new(),
                    escalated_more: 0,
                    late: false,
                    named: Vec::new(),
                })),
            );
        }
        return;
    }
    let key = (o.op, s);
    node.ops.relay.insert(key, relay);
    if node.ops.relay[&key].expect.is_empty() {
        let mut ops = std::mem::take(&mut node.ops);
        report_relay(&mut ops, node, key);
        node.ops = ops;
    }
}

pub(super) fn report_relay(ops: &mut Ops, node: &mut MeshNode, key: (OpId, SectorId)) {
    let Some(mut r) = ops.relay.remove(&key) else {
        return;
    };
    r.tally.missing_reports = r
        .tally
        .missing_reports
        .saturating_add(r.expect.len() as u32);
    let (escalated, escalated_more) = r.escalate.take();
    let report = Report {
        op: key.0,
        scope: r.scope,
        from: node.me.clone(),
        tally: r.tally,
        answers: MeshNode::top_answers(&r.answers),
        escalated,
        escalated_more,
        late: false,
        named: r.named,
    };
    node.send(r.report_to, MeshMessage::Report(Box::new(report)));
}

/// A report from below: at a coordinator (a wave's cluster) or at the root.
pub(crate) fn on_report(node: &mut MeshNode, rep: Report, now: Time) {
    let mut ops = std::mem::take(&mut node.ops);
    let sector = match rep.scope {
        Scope::Cluster(c) => node.tree.cluster(c).map(|cl| cl.sector),
        Scope::Sector(s) => Some(s),
        Scope::Global => None,
    };
    let relay_key = sector.map(|s| (rep.op, s));
    // A cluster's answers in its window's extension come to the root straight.
    if rep.late && rep.tally.waited > 0 && extend::heard(&mut ops, node, &rep, now) {
        node.ops = ops;
        return;
    }
    // A late report (answers after its subtree reported) brings conflicts, not a result.
    let at_relay = !rep.late
        && relay_key.is_some_and(|k| {
            ops.relay
                .get(&k)
                .is_some_and(|r| r.expect.contains(&rep.scope))
        });
    if at_relay {
        let k = relay_key.expect("checked");
        let r = ops.relay.get_mut(&k).expect("checked");
        r.expect.remove(&rep.scope);
        r.tally.add(&rep.tally);
        merge_answers(&mut r.answers, &rep.answers);
        merge_named(&mut r.named, &rep.named);
        escalate::from_report(node, &rep, Some(&mut r.escalate), now);
        // Settled: the clusters still silent could not change the outcome.
        let missing = silent_agents(node, &r.expect);
        if r.expect.is_empty() || settled(&r.tally, missing, r.min_rate) {
            report_relay(&mut ops, node, k);
        }
    } else if let Some(r) = ops.root.get_mut(&rep.op).filter(|_| !rep.late) {
        let expected = r.expect.remove(&rep.scope);
        if expected || r.mode == CascadeMode::Parallel {
            r.tally.add(&rep.tally);
            merge_answers(&mut r.answers, &rep.answers);
            merge_named(&mut r.named, &rep.named);
        }
        if expected {
            escalate::from_report(node, &rep, None, now);
        }
        maybe_end_early(&mut ops, node, rep.op, now);
    } else if !rep.escalated.is_empty() && escalate::late_report_is_mine(node, &rep) {
        // After the operation settled here: its count is too late, its conflicts are not.
        escalate::from_late_report(node, &rep, now);
    }
    node.ops = ops;
}

/// Named answers from below, kept up to `MAX_NAMED`.
pub(super) fn merge_named(into: &mut Vec<NamedAnswer>, from: &[NamedAnswer]) {
    let room = MAX_NAMED.saturating_sub(into.len());
    into.extend(from.iter().take(room).cloned());
}

/// The root: a phase whose every report is in ends; so does one past its target whose
/// outcome the silent rest could not change (a wave once 98 % of its sectors confirmed,
/// seed §3.3, else it would call sectors still on their way failed).
pub(super) fn maybe_end_early(ops: &mut Ops, node: &mut MeshNode, op: OpId, now: Time) {
    let Some(r) = ops.root.get(&op) else {
        return;
    };
    if r.mode == CascadeMode::Parallel {
        return maybe_finish_parallel(ops, node, op, now);
    }
    // Waiting for the clusters' extensions (seed §5.2's WAIT): until they came or the
    // quorum holds, or its deadline.
    if r.extended {
        if extend::done(r) {
            end_phase(ops, node, op, now);
        }
        return;
    }
    let min_rate = r.min_rate;
    let confirmed =
        r.mode != CascadeMode::Wave || sectors_confirmed(r.expect.len(), r.expected_first);
    // The silent scopes' agents last: a walk of every scope still to report.
    let early =
        now >= r.target && confirmed && settled(&r.tally, silent_agents(node, &r.expect), min_rate);
    if r.expect.is_empty() || early {
        end_phase(ops, node, op, now);
    }
}

/// Whether at least 98 % of the `expected` sectors (or a parallel operation's clusters)
/// confirmed, `silent` still to.
pub(super) fn sectors_confirmed(silent: usize, expected: usize) -> bool {
    (expected - silent.min(expected)) * 100 >= expected * 98
}

/// Active agents under the clusters or sectors still to report, as their summaries say.
pub(super) fn silent_agents(node: &MeshNode, expect: &BTreeSet<Scope>) -> u32 {
    expect
        .iter()
        .filter_map(|s| match s {
            // At the root (a parallel operation's count reports), a cluster's share of its
            // sector's.
            Scope::Cluster(c) => node
                .cluster_summaries
                .get(c)
                .map(|x| x.active_count)
                .or_else(|| {
                    let s = node.tree.cluster(*c)?.sector;
                    let x = node.sector_summaries.get(&s)?;
                    Some(x.active_agents.div_ceil(x.cluster_count.max(1)))
                }),
            Scope::Sector(x) => node.sector_summaries.get(x).map(|x| x.active_agents),
            Scope::Global => None,
        })
        .fold(0u32, u32::saturating_add)
}

/// Whether a tally's outcome is settled with `missing` agents not yet heard of: even if all
/// were sent and none is ready, READY answers are at `min_rate`.
pub(super) fn settled(t: &Tally, missing: u32, min_rate: f64) -> bool {
    t.sent > 0 && f64::from(t.ready) >= min_rate * (f64::from(t.sent) + f64::from(missing))
}

/// Distinct answers an operation counts, at most (a new one past it is not counted).
const MAX_ANSWER_KINDS: usize = 256;

/// `n` more of `answer` in `into`.
pub(super) fn count_answer(into: &mut BTreeMap<String, u32>, answer: &str, n: u32) {
    if into.len() < MAX_ANSWER_KINDS || into.contains_key(answer) {
        let count = into.entry(answer.to_owned()).or_default();
        *count = count.saturating_add(n);
    }
}

pub(super) fn merge_answers(into: &mut BTreeMap<String, u32>, from: &[AnswerCount]) {
    for a in from {
        count_answer(into, &a.answer, a.count);
    }
}
