//! The root's part of an operation: its target arrival from the lead histograms, its
//! orders to the sectors, and its end: the quorum, the outcome, the KPIs.

use super::*;

/// Operation `op`'s orders go out, for its agents to be ready no earlier than `not_before`;
/// its target arrival, if it is held.
pub(super) fn start_phase(
    ops: &mut Ops,
    node: &mut MeshNode,
    op: OpId,
    not_before: Time,
    now: Time,
) -> Option<Time> {
    let mut r = ops.root.remove(&op)?;
    let sectors: Vec<SectorId> = sectors_in(node, r.scope);
    // Seed §6.3, DEGRADED_MODERATE and worse: only healthy sectors take traffic.
    let healthy_only = node.mode.healthy_sectors_only();
    let (class, min_rate) = (r.class, r.min_rate);
    // How early to start (seed §3.2: "enough time for the 95th percentile"): the 95th
    // percentile of the predicted leads in scope (the urgent mode's: the 90th, the share it
    // needs to answer), of the phase's class or every class but F (which no sub-second
    // operation waits for), plus the longest two hops down.
    let mut leads = LeadHistogram::default();
    let mut hops: f64 = 0.0;
    for s in sectors.iter().filter_map(|s| node.sector_summaries.get(s)) {
        leads.add(&s.leads);
        hops = hops.max(node.hop(Some(&s.coordinator)) + s.hop_ms);
    }
    let classes: Vec<ImpedanceClass> = match class {
        Some(k) => vec![k],
        None => ImpedanceClass::ALL[..5].to_vec(),
    };
    let within = node.cfg.max_budget_ms as f64;
    let quantile = match r.mode {
        CascadeMode::Parallel => min_rate.min(0.95),
        _ => 0.95,
    };
    let lead_p95 = leads.quantile_ms(&classes, quantile, within).unwrap_or(0.0) + hops;
    let (window_ms, _) = MeshNode::cascade_mode_window(r.mode);
    // An operator's window, but never shorter than the mode's (degraded modes lengthen it).
    let mode_window_ms = window_ms * node.mode.window_factor();
    let window_ms = r
        .window_ms
        .map_or(mode_window_ms, |w| w.max(mode_window_ms));
    // An operator's budget is taken as given; otherwise the leads decide, up to the most
    // the mesh compensates.
    let budget = match r.budget_ms {
        Some(ms) => ms as f64,
        None => (lead_p95 + node.cfg.report_slack_ms as f64 / 4.0)
            .clamp(20.0, node.cfg.max_budget_ms as f64),
    };
    r.target = (now + Duration::from_micros((budget * 1000.0) as u64)).max(not_before);
    r.target_checked = false;
    r.window = Duration::from_millis(window_ms);
    // Reports come back up the way the order went down: the root waits the window, the
    // longest two hops up, and some slack (a fixed wait would lose far sectors' reports).
    let slack = Duration::from_millis(node.cfg.report_slack_ms);
    // Hops are one-way delays, read from other nodes' clocks: bounded by the most the mesh
    // compensates.
    let up_ms = hops.clamp(0.0, node.cfg.max_budget_ms as f64);
    let up = Duration::from_micros((up_ms * 1000.0) as u64);
    r.deadline = r.target + r.window + (up + slack * 2).max(slack * 3);
    r.tally = Tally::default();
    r.extended = false;
    r.extensions.clear();
    r.answers.clear();
    r.acks.clear();
    r.expect.clear();
    let mut env = r.envelope.clone();
    env.target_arrival_ms = r.target.as_millis();
    // Lives until this phase's deadline and a second more, counted from its creation.
    env.ttl_ms = ((r
        .deadline
        .since(Time::from_millis(env.created_ms))
        .as_millis() as u64)
        .max(1)
        + 1_000)
        .min(qs_wire::mesh::MAX_TTL_MS);
    // A sample of n agents at most: n sectors at most (chosen by the operation's hash) with
    // agents active (of the phase's class, if one; with the capability it requires, if
    // one), each with its share of n, which its coordinator spreads over as few clusters.
    let mut sectors = sectors;
    // (With a capability required: only sectors where its summary says it may be.)
    let requires = r.envelope.requires.clone();
    let sample = r.sample;
    // (Only sectors the order would reach: coordinated, breaker closed, healthy where the
    // mode asks it; no share is given to one skipped below.)
    let global_open = node.breakers.state(Scope::Global) == BreakerState::Open;
    if let Some(n) = sample {
        // The agents of the sectors out of reach: if no sector is left, the sample is
        // counted unreachable (up to its size), which tells the operator why.
        let mut out_of_reach = 0u32;
        sectors.retain(|s| {
            let coordinated = node
                .tree
                .sector(*s)
                .is_some_and(|x| x.coordinator.is_some());
            let Some(x) = node.sector_summaries.get(s) else {
                return false;
            };
            let reached =
                coordinated && !global_open && !x.breaker_open && (!healthy_only || healthy(x));
            if !reached {
                out_of_reach = out_of_reach.saturating_add(x.active_agents);
            }
            reached
                && x.active_agents > 0
                && class.is_none_or(|k| x.classes[k.index()] > 0)
                && requires.as_deref().is_none_or(|c| {
                    qs_wire::mesh::may_have(&x.capabilities, x.capabilities_more, c)
                })
        });
        if sectors.is_empty() {
            let unreachable = n.min(out_of_reach);
            r.tally.targeted = r.tally.targeted.saturating_add(unreachable);
            r.tally.unreachable = r.tally.unreachable.saturating_add(unreachable);
        }
        sectors.sort_by_key(|s| mix(u64::from(s.0) ^ op.0));
        sectors.truncate((n as usize).max(1));
    }
    let parts = sectors.len();
    for (i, s) in sectors.into_iter().enumerate() {
        let Some(sector) = node.tree.sector(s) else {
            continue;
        };
        let in_health = node.sector_summaries.get(&s).is_none_or(healthy);
        let routable = node
            .sector_summaries
            .get(&s)
            .is_none_or(|x| !x.breaker_open)
            && node.breakers.state(Scope::Global) != BreakerState::Open;
        let Some(co) = sector.coordinator.clone() else {
            continue;
        };
        if !routable || (healthy_only && !in_health) {
            let agents = node.sector_summaries.get(&s).map_or(0, |x| x.total_agents);
            r.tally.targeted = r.tally.targeted.saturating_add(agents);
            r.tally.unreachable = r.tally.unreachable.saturating_add(agents);
            continue;
        }
        let sub_scope = match r.scope {
            Scope::Cluster(c) => Scope::Cluster(c),
            _ => Scope::Sector(s),
        };
        match r.mode {
            CascadeMode::Parallel => {
                for c in clusters_in(node, r.scope, s) {
                    if node.tree.cluster(c).is_some_and(|cl| cl.lead.is_some()) {
                        r.expect.insert(Scope::Cluster(c));
                    }
                }
            }
            _ => {
                r.expect.insert(sub_scope);
            }
        }
        let order = Order {
            report_to: node.me.clone(),
            op,
            mode: r.mode,
            root: node.me.clone(),
            scope: sub_scope,
            class,
            sample_per_cluster: sample.map(|n| share(n, parts, i)),
            window_ms,
            envelope: env.clone(),
            limited: false,
            retry_of: r.retry_of,
        };
        r.root_messages += u32::from(co != node.me);
        node.send_order(co, order);
    }
    r.expected_first = r.expect.len();
    let target = r.target;
    ops.root.insert(op, r);
    Some(target)
}

/// A sector healthy enough for the mode's "route to healthy sectors only": at least 95 %
/// of its agents active (or none yet).
fn healthy(x: &qs_wire::mesh::SectorSummary) -> bool {
    x.total_agents == 0 || f64::from(x.active_agents) >= 0.95 * f64::from(x.total_agents)
}

/// The root: operation `op` ended (every report in, or its deadline): its result, or its
/// phase's for the priority-first operation it is part of.
pub(super) fn end_phase(ops: &mut Ops, node: &mut MeshNode, op: OpId, now: Time) {
    let Some(mut r) = ops.root.remove(&op) else {
        return;
    };
    if extend::waits(&mut r, now) {
        ops.root.insert(op, r);
        return;
    }
    let mut tally = r.tally;
    tally.missing_reports = tally.missing_reports.saturating_add(r.expect.len() as u32);
    // What was heard was sent, though its cluster's count may not have come (the urgent
    // mode ends without the last few).
    tally.sent = tally.sent.max(tally.heard());
    // Seed §10.2 for the urgent mode, whose answers the root gathers: agents that
    // contradicted a cluster that clearly answered READY are told to their lead.
    for (c, v) in std::mem::take(&mut r.votes) {
        let conflicts = v.conflicted.len() as u32;
        let lead = node.tree.cluster(c).and_then(|cl| cl.lead.clone());
        if let Some(lead) = lead
            && conflicts > 0
            && crate::mesh::integration::clearly_ready(v.ready, conflicts)
        {
            let msg = Contradicted {
                op,
                cluster: c,
                agents: v.conflicted,
            };
            node.send(lead, MeshMessage::Contradicted(Box::new(msg)));
        }
    }
    let decision = gather::decide(&tally, r.min_rate);
    let out = gather::outcome(&tally, r.min_rate);
    let target_after_ms = r.target.since(r.started).as_secs_f64() * 1000.0;
    let phase = PhaseResult {
        op,
        class: r.class,
        min_rate: r.min_rate,
        status: out.status,
        decision: decision.name(),
        tally,
        latency_ms: now.since(r.started).as_secs_f64() * 1000.0,
        target_after_ms,
        earlier: std::mem::take(&mut r.earlier),
    };
    // KPIs, per phase (a retry's agents READY before were counted then).
    let answered = tally.ready + tally.transit + tally.conflict;
    let k = &mut node.kpis;
    k.sent += u64::from(tally.sent.saturating_sub(tally.carried));
    k.answered += u64::from(answered.saturating_sub(tally.carried));
    k.window_hits += u64::from(tally.window_hits.saturating_sub(tally.carried));
    k.predicted_within_50ms += u64::from(tally.predicted_within_50ms);
    k.conflicts += u64::from(tally.conflict);
    k.skipped += u64::from(tally.skipped);
    k.expired += u64::from(tally.expired);
    k.windows_extended += u64::from(tally.waited);
    if retry::wanted(ops, node, &r, &decision, &tally, now) {
        return retry::start(ops, node, op, r, phase, now);
    }
    if let Some(part) = r.part_of {
        return family::phase_ended(ops, node, part, phase, r, now);
    }
    if r.mode == CascadeMode::Parallel {
        super::late::keep_urgent(ops, op, &mut r, now);
    }
    let sectors_short = r.mode == CascadeMode::Wave
        && r.expected_first > 0
        && !super::relay::sectors_confirmed(r.expect.len(), r.expected_first);
    let status = match (sectors_short, out.status) {
        (true, _) => "FAILED_AT_SECTOR",
        (_, Status::Success) => "SUCCESS",
        (_, Status::Partial) => "PARTIAL",
        (_, Status::Failed) => "FAILED",
    };
    let result = OpResult {
        // A retry's result is the operation's, under the number its asker was told.
        op: r.retry_of.unwrap_or(op),
        mode: r.mode,
        scope: r.scope,
        status,
        decision,
        tally,
        latency_ms: phase.latency_ms,
        target_after_ms,
        answers: MeshNode::top_answers(&r.answers),
        phases: vec![phase],
        named: r.named,
        root_messages: r.root_messages,
        degradation: r.degradation,
        tag: r.tag,
    };
    // A cascade of the whole mesh: not a sample (an ask, a delegation), nor one class.
    let mesh_wide = r.scope == Scope::Global && r.sample.is_none() && r.class.is_none();
    conclude(node, result, mesh_wide, now);
}

/// An operation ended: the KPIs count it (its latency only if it was a cascade of the
/// whole mesh, seed Part 11's "time for mesh-wide cascade"), and its asker is told.
pub(super) fn conclude(node: &mut MeshNode, result: OpResult, mesh_wide: bool, now: Time) {
    let k = &mut node.kpis;
    k.operations += 1;
    k.last_operation_ms = Some(now.as_millis());
    if matches!(result.decision, Decision::Proceed { .. }) {
        k.operations_with_quorum += 1;
    }
    if mesh_wide {
        if k.cascade_latencies_ms.len() == super::super::MAX_LATENCIES {
            k.cascade_latencies_ms.pop_front();
        }
        k.cascade_latencies_ms.push_back(result.latency_ms);
    }
    node.finish(result);
}
