//! A cluster lead's part of an operation: its agents dispatched at their arrival times, their
//! answers gathered in the window (or, in parallel, sent on to the root), and its report.

use super::*;

pub(super) fn lead_order(node: &mut MeshNode, o: Order, c: ClusterId, now: Time) {
    if node.ops.lead.len() >= MAX_OPS {
        return;
    }
    // An order this lead holds already (under way, or reported with answers still to come)
    // is carried out once: no agent is sent the same operation twice. (The same number with
    // another envelope is a new order: a root that restarted counts its numbers anew.)
    let key = (o.op, c);
    let e = &o.envelope;
    let held = node
        .ops
        .lead
        .get(&key)
        .is_some_and(|l| l.envelope.same_message(e))
        || node.ops.settled.get(&key).is_some_and(|s| s.of(e));
    if held {
        return;
    }
    let target = Time::from_millis(o.envelope.target_arrival_ms);
    let min_rate = family::min_rate(o.mode, o.class);
    let mut gather = Gather::new(target, Duration::from_millis(o.window_ms), min_rate);
    let sector = node.led[&c].sector;
    let frozen = node.frozen_over(Scope::Cluster(c)).is_some();
    let routable = !frozen && node.breakers.routable(c, sector);
    // Half-open here, or at the coordinator that passed the order on.
    let limited = node.breakers.limited(c, sector) || o.limited;
    let weight = o.envelope.weight;
    let requires = o.envelope.requires.clone();
    // The capability mapping: classes kept out of the capability's routing.
    let barred = requires
        .as_deref()
        .map(|r| node.classes_excluded_from(r))
        .unwrap_or_default();
    // A retry of the same message (seed §5.2's RETRY): none of those READY for it, or still
    // awaited there, is sent it again (the attempt before may still gather, in its window's
    // extension).
    let before = o
        .retry_of
        .and_then(|p| {
            let live = node.ops.lead.get(&(p, c));
            match live.filter(|l| l.envelope.same_message(&o.envelope)) {
                Some(l) => Some(l.before()),
                None => node
                    .ops
                    .settled
                    .get(&(p, c))
                    .filter(|s| s.of(&o.envelope))
                    .map(late::Settled::before),
            }
        })
        .unwrap_or_default();
    let led = node.led.get_mut(&c).expect("checked");
    let mut wants: Vec<Want<AgentId>> = Vec::new();
    let mut candidates: Vec<AgentId> = Vec::new();
    let ids: Vec<AgentId> = led.agents.keys().copied().collect();
    for a in ids {
        let Some((z, _)) = led.assess(a, weight) else {
            continue;
        };
        let class = z.class;
        let view = &led.agents[&a];
        if o.class.is_some_and(|k| k != class) {
            continue;
        }
        if let Some(r) = &requires
            && (!view.capabilities.iter().any(|c| c == r) || barred.contains(&class))
        {
            continue;
        }
        // Not in the routing pool yet (seed §10.2): out of scope, counted apart.
        if view.state == AgentState::Active && !view.admitted {
            gather.tally_mut().joining += 1;
            continue;
        }
        gather.tally_mut().targeted += 1;
        if before.ready.contains(&a) {
            gather.carried(a);
            continue;
        }
        // Sent before and not answered yet: still in transit (its answer is that attempt's).
        if before.awaited.contains(&a) {
            gather.sent(a);
            continue;
        }
        // Route around: down, quarantined, spiking agents, and a breaker open above them.
        if !routable || view.state != AgentState::Active || view.spiking {
            gather.tally_mut().unreachable += 1;
            continue;
        }
        candidates.push(a);
    }
    // The shortest leads first (seed §4.2: "pick lowest impedance among capable agents"),
    // ties by the operation's hash: for a sample, and for a half-open breaker's share.
    let limit = o.sample_per_cluster.map(|n| n as usize);
    let share = limited.then(|| {
        ((candidates.len() as f64 * crate::mesh::breaker::HALF_OPEN_SHARE).ceil() as usize).max(1)
    });
    if limit.is_some() || share.is_some() {
        let mut ranked: Vec<(u64, u64, AgentId)> = candidates
            .iter()
            .map(|a| {
                let lead = led
                    .assess(*a, weight)
                    .map_or(u64::MAX, |(_, l)| l.lead_ms as u64);
                (lead, mix(a.0 ^ o.op.0), *a)
            })
            .collect();
        ranked.sort();
        candidates = ranked.into_iter().map(|(_, _, a)| a).collect();
        // A sample leaves the rest out of scope.
        if let Some(n) = limit {
            let extra = candidates.len().saturating_sub(n) as u32;
            candidates.truncate(n);
            gather.tally_mut().targeted -= extra;
        }
        // Half-open (seed §6.2): limited traffic; the rest is not reached.
        if let Some(n) = share {
            let held = candidates.len().saturating_sub(n) as u32;
            candidates.truncate(n);
            gather.tally_mut().unreachable += held;
        }
    }
    for a in candidates {
        if let Some((_, lead)) = led.assess(a, weight) {
            wants.push(Want {
                key: a,
                lead_ms: lead.lead_ms,
            });
        }
    }
    // A sample of a few agents (a delegation, a small ask): who answered what is told, with
    // the class each was chosen as; and one whose work takes longer than the target allows
    // is sent at once and awaited for the window (a delegation's timeout), not left out.
    let named = o.sample_per_cluster.is_some() && wants.len() <= MAX_NAMED;
    if named {
        let available_ms = target.since(now).as_secs_f64() * 1000.0;
        for w in &mut wants {
            if w.lead_ms > available_ms && w.lead_ms <= available_ms + o.window_ms as f64 {
                w.lead_ms = available_ms;
            }
        }
    }
    let plan = schedule::schedule(now, target, &wants);
    let chosen_as: BTreeMap<AgentId, ImpedanceClass> = match named {
        true => wants
            .iter()
            .filter_map(|w| led.assess(w.key, weight).map(|(z, _)| (w.key, z.class)))
            .collect(),
        false => BTreeMap::new(),
    };
    gather.tally_mut().skipped += plan.too_late.len() as u32;
    let scheduled: usize = plan.batches.iter().map(|b| b.keys.len()).sum();
    gather.scheduled(scheduled);
    let reply_to = match o.mode {
        CascadeMode::Parallel => o.root.clone(),
        _ => node.me.clone(),
    };
    let report_to = match o.mode {
        CascadeMode::Parallel => o.root.clone(),
        _ => o.report_to.clone(),
    };
    // Nothing to send (none in scope, or all known too late) and nobody awaited from an
    // attempt before: nothing to wait for.
    let done = scheduled == 0 && gather.complete();
    let op = LeadOp {
        gather,
        report_to,
        reply_to,
        mode: o.mode,
        scope: Scope::Cluster(c),
        envelope: o.envelope,
        sent_at: BTreeMap::new(),
        answers: BTreeMap::new(),
        by_agent: BTreeMap::new(),
        conflicted: BTreeSet::new(),
        planned: plan
            .batches
            .iter()
            .flat_map(|b| b.keys.iter().copied())
            .collect(),
        class: o.class,
        limited,
        root: o.root.clone(),
        extending: None,
        retry_of: o.retry_of,
        escalate: Escalations::default(),
        rerouted: BTreeMap::new(),
        named: named.then(Vec::new),
        chosen_as,
    };
    node.ops.lead.insert(key, op);
    for b in plan.batches {
        node.ops
            .sends
            .entry(b.send_at)
            .or_default()
            .extend(b.keys.into_iter().map(|a| (o.op, c, a)));
    }
    if done {
        let mut ops = std::mem::take(&mut node.ops);
        report_lead(&mut ops, node, key, now);
        node.ops = ops;
    }
}

pub(super) fn send_one(
    ops: &mut Ops,
    node: &mut MeshNode,
    op: OpId,
    c: ClusterId,
    agent: AgentId,
    now: Time,
) {
    let Some(l) = ops.lead.get_mut(&(op, c)) else {
        return;
    };
    let Some(host) = node
        .led
        .get(&c)
        .and_then(|led| led.agents.get(&agent))
        .map(|v| v.host.clone())
    else {
        l.gather.dropped();
        return;
    };
    l.gather.sent(agent);
    l.sent_at.insert(agent, now);
    let d = Dispatch {
        agent,
        cluster: c,
        reply_to: l.reply_to.clone(),
        envelope: l.envelope.clone(),
    };
    node.send(host, MeshMessage::Dispatch(Box::new(d)));
    // Parallel: the answers go to the root; the lead reports once all went out.
    if l.mode == CascadeMode::Parallel && l.gather.all_sent() {
        report_lead(ops, node, (op, c), now);
    }
}

/// An agent's answer: at its lead (a wave) or at the root (parallel).
pub(crate) fn on_ack(node: &mut MeshNode, from: &NodeId, a: Ack, now: Time) {
    // An answer comes from its agent's host: no other member speaks for it.
    let host = node.tree.host_of(a.agent);
    if host != Some(from) || node.tree.cluster_of(a.agent) != Some(a.cluster) {
        node.refused_senders += 1;
        return;
    }
    // Any answer (late, to a probe, of an expired envelope) shows the agent reachable.
    if let Some(v) = node
        .led
        .get_mut(&a.cluster)
        .and_then(|l| l.agents.get_mut(&a.agent))
    {
        v.missed = 0;
        v.last_answer = Some(now);
    }
    // An open breaker's probe: its answer says whether the cluster answers again.
    if node.breaker_probe_answered(&a, now) {
        return;
    }
    let mut ops = std::mem::take(&mut node.ops);
    let live = ops.lead.get(&(a.op, a.cluster));
    // A parallel operation's answers are the root's, even where the root leads the cluster.
    let at_lead = live.is_some_and(|l| l.mode != CascadeMode::Parallel);
    // Sent by the live operation (an answer it did not send for is none of its).
    let sent_live = live.is_some_and(|l| l.sent_at.contains_key(&a.agent));
    if !at_lead
        && !a.expired
        && !ops.root.contains_key(&a.op)
        && let Some(led) = node.led.get_mut(&a.cluster)
        && let Some(view) = led.agents.get_mut(&a.agent)
    {
        // An answer after its cluster reported, or to a readiness probe: a measurement of
        // the agent.
        let link_p50 = led
            .hosts
            .get_mut(&view.host)
            .map_or(0.0, |h| h.link.recent_ms());
        let processing = a.ready_ms.saturating_sub(a.arrived_ms) as f64;
        let spike = view.work.record(processing, link_p50);
        if view.probe.is_some_and(|p| p.op == a.op) {
            view.probe = None;
            view.spiking = spike.is_some();
        }
    }
    // After the cluster reported: late, taken once.
    if !(at_lead && sent_live) && late::answer(&mut ops, node, &a, now) {
        node.ops = ops;
        return;
    }
    let mut rerouted = None;
    match ops.lead.get_mut(&(a.op, a.cluster)).filter(|_| at_lead) {
        // Nothing more comes from it: the lead may be done (below).
        Some(l) if a.expired => l.gather.expired(a.agent),
        Some(l) => {
            let target = l.gather.target();
            let ready = Time::from_millis(a.ready_ms.max(target.as_millis()));
            let heard = l.gather.answer(a.agent, a.state, ready, now);
            if heard != gather::Heard::Ignored {
                if let Some(led) = node.led.get_mut(&a.cluster)
                    && let Some(view) = led.agents.get_mut(&a.agent)
                {
                    let host = led.hosts.entry(view.host.clone()).or_default();
                    if let Some(sent) = l.sent_at.get(&a.agent) {
                        let delay = a.arrived_ms.saturating_sub(sent.as_millis()) as f64;
                        host.link.record(delay);
                    }
                    let link_p50 = host.link.recent_ms();
                    let processing = a.ready_ms.saturating_sub(a.arrived_ms) as f64;
                    view.spiking = view.work.record(processing, link_p50).is_some();
                    view.work.outcome(heard == gather::Heard::Counted);
                    led.measured = true;
                }
                if heard == gather::Heard::Counted
                    && let Some(named) = l.named.as_mut().filter(|n| n.len() < MAX_NAMED)
                    && let Some(led) = node.led.get(&a.cluster)
                {
                    named.push(NamedAnswer {
                        agent: a.agent,
                        cluster: a.cluster,
                        sector: led.sector,
                        class: l.chosen_as.get(&a.agent).copied(),
                        state: a.state,
                        answer: a.answer.clone(),
                        took_ms: a.ready_ms.saturating_sub(a.arrived_ms),
                    });
                }
                if heard == gather::Heard::Counted && !a.answer.is_empty() {
                    count_answer(&mut l.answers, &a.answer, 1);
                    l.by_agent.insert(a.agent, a.answer.clone());
                }
                if a.state == Trinary::Ready {
                    let rerouted = l.rerouted.remove(&a.agent);
                    node.agreed(a.agent, &l.envelope.content_hash, rerouted, now);
                }
                if a.state == Trinary::Conflict
                    && let Some(record) = node.conflict(&a, &l.envelope.content_hash, now)
                {
                    l.conflicted.insert(a.agent);
                    escalate::heard(&mut l.escalate, &record);
                    if let Some(qs_wire::mesh::ConflictDetail::CapabilityMismatch { missing }) =
                        &a.conflict
                        && heard == gather::Heard::Counted
                        && !l.limited
                        && let Some(other) = reroute(node, l, a.cluster, a.agent, missing)
                    {
                        l.planned.insert(other);
                        l.gather.scheduled(1);
                        l.gather.tally_mut().targeted += 1;
                        l.gather.tally_mut().rerouted += 1;
                        rerouted = Some(other);
                        l.rerouted.insert(other, record.seq);
                    }
                }
            }
        }
        None => {}
    }
    if let Some(other) = rerouted {
        send_one(&mut ops, node, a.op, a.cluster, other, now);
    }
    // READY to an attempt still gathering (in its extension) that a retry already awaits.
    if at_lead && sent_live && a.state == Trinary::Ready && !a.expired {
        late::to_retry(&mut ops, node, &a, now);
    }
    let done = at_lead
        && ops
            .lead
            .get(&(a.op, a.cluster))
            .is_some_and(|l| l.gather.complete());
    if done {
        report_lead(&mut ops, node, (a.op, a.cluster), now);
    } else if !at_lead
        && let Some(r) = ops.root.get_mut(&a.op)
        && r.mode == CascadeMode::Parallel
        && r.acks.insert(a.agent)
    {
        let ready = Time::from_millis(a.ready_ms.max(r.target.as_millis()));
        let deadline = r.target + r.window;
        if a.expired {
            r.tally.expired += 1;
        } else if now > deadline {
            r.tally.late += 1;
        } else {
            let v = r.votes.entry(a.cluster).or_default();
            match a.state {
                Trinary::Ready => {
                    r.tally.ready += 1;
                    v.ready += 1;
                }
                Trinary::Transit => r.tally.transit += 1,
                Trinary::Conflict => {
                    r.tally.conflict += 1;
                    if v.conflicted.len() < MAX_CHILDREN {
                        v.conflicted.push(a.agent);
                    }
                }
            }
            if ready <= deadline {
                r.tally.window_hits += 1;
            }
            if ready.since(r.target) <= Duration::from_millis(gather::ACCURATE_MS) {
                r.tally.predicted_within_50ms += 1;
            }
            if !a.answer.is_empty() {
                count_answer(&mut r.answers, &a.answer, 1);
            }
        }
        let content_hash = &r.envelope.content_hash;
        match a.state {
            Trinary::Conflict => {
                node.conflict(&a, content_hash, now);
            }
            Trinary::Ready => node.agreed(a.agent, content_hash, None, now),
            Trinary::Transit => {}
        }
        maybe_finish_parallel(&mut ops, node, a.op, now);
    }
    node.ops = ops;
}

/// Seed §5.1's REROUTE for a capability mismatch, where the lead gathers the answers (a
/// wave's or a priority-first phase's; in the urgent mode they go to the root): the agent
/// loses the capability in this lead's map (until it registers again), and the work goes to
/// the agent of the cluster with the capability and the shortest lead that is not in the
/// plan yet and would have been in scope (the phase's class), if there is one. Only for the
/// capability the operation requires.
fn reroute(
    node: &mut MeshNode,
    l: &LeadOp,
    c: ClusterId,
    agent: AgentId,
    missing: &str,
) -> Option<AgentId> {
    if l.envelope.requires.as_deref() != Some(missing) {
        return None;
    }
    let weight = l.envelope.weight;
    let barred = node.classes_excluded_from(missing);
    let led = node.led.get_mut(&c)?;
    if let Some(v) = led.agents.get_mut(&agent) {
        v.capabilities.retain(|x| x != missing);
        if v.revoked.len() < qs_wire::mesh::MAX_CAPABILITIES
            && !v.revoked.iter().any(|x| x == missing)
        {
            v.revoked.push(missing.to_string());
        }
    }
    let capable: Vec<AgentId> = led
        .agents
        .iter()
        .filter(|(id, v)| {
            **id != agent
                && !l.planned.contains(*id)
                && v.admitted
                && v.state == AgentState::Active
                && !v.spiking
                && v.capabilities.iter().any(|x| x == missing)
        })
        .map(|(id, _)| *id)
        .collect();
    capable
        .into_iter()
        .filter_map(|id| {
            let (z, lead) = led.assess(id, weight)?;
            (l.class.is_none_or(|k| k == z.class) && !barred.contains(&z.class))
                .then_some((lead.lead_ms, id))
        })
        .min_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)))
        .map(|(_, id)| id)
}

pub(super) fn maybe_finish_parallel(ops: &mut Ops, node: &mut MeshNode, op: OpId, now: Time) {
    let Some(r) = ops.root.get(&op) else {
        return;
    };
    let t = &r.tally;
    let heard = u64::from(t.heard());
    let sent = u64::from(t.sent);
    // Urgent: past the target, with all but 2 % of the clusters' counts (as a wave's sectors:
    // with zones, the last 5 % may be a whole far zone) and 1 % of the answers heard, and the
    // outcome settled whatever the clusters still silent say, it ends; a message in the
    // network's tail is not waited for to the deadline. (The silent clusters' agents are
    // summed last: a walk of every cluster still to report, at each answer.)
    let early = now >= r.target
        && super::relay::sectors_confirmed(r.expect.len(), r.expected_first)
        && heard * 100 >= sent * 99
        && super::relay::settled(t, super::relay::silent_agents(node, &r.expect), r.min_rate);
    if (r.expect.is_empty() && heard >= sent) || early {
        end_phase(ops, node, op, now);
    }
}

/// The lead's report of `key`, its gather closed (its window's end, or every answer in).
/// Seed §5.2: a gather whose quorum says WAIT reports what it has, and goes on gathering for
/// its window's extension; then its answers in the extension follow in a second report, and
/// only then is it closed (its stragglers known).
pub(super) fn report_lead(ops: &mut Ops, node: &mut MeshNode, key: (OpId, ClusterId), now: Time) {
    let Some(l) = ops.lead.get_mut(&key) else {
        return;
    };
    if let Some(first) = l.extending {
        return extend::report(ops, node, key, first, now);
    }
    if l.mode != CascadeMode::Parallel && l.gather.wait_once(now) {
        // What it reports is reported: the extension's report carries what comes after.
        let tally = *l.gather.tally();
        l.extending = Some(tally);
        let report = l.report(key.0, &node.me, tally, false);
        node.send(l.report_to.clone(), MeshMessage::Report(Box::new(report)));
        return;
    }
    let mut l = ops.lead.remove(&key).expect("present");
    close(ops, node, key, &l, now);
    let mut tally = *l.gather.tally();
    if l.mode == CascadeMode::Parallel {
        // The agents answered the root: report only what this lead could not send.
        tally = Tally {
            targeted: tally.targeted,
            skipped: tally.skipped,
            unreachable: tally.unreachable,
            joining: tally.joining,
            sent: tally.sent,
            ..Tally::default()
        };
    }
    let report = l.report(key.0, &node.me, tally, false);
    node.send(l.report_to.clone(), MeshMessage::Report(Box::new(report)));
}

impl LeadOp {
    /// Who answered READY, and who it still awaits: what a retry of its message takes from
    /// it (while it gathers, or kept for late answers once it closed).
    pub(super) fn before(&self) -> late::Before {
        late::Before {
            ready: self.gather.ready().copied().collect(),
            awaited: self
                .sent_at
                .keys()
                .filter(|a| !self.gather.answered(a))
                .copied()
                .collect(),
        }
    }

    /// Its report of `tally` (`late`: its window's extension's), with the answers, the
    /// conflicts to escalate and the named answers it holds, taken (a gather that goes on
    /// counts its next report's afresh).
    pub(super) fn report(&mut self, op: OpId, me: &NodeId, tally: Tally, late: bool) -> Report {
        let (escalated, escalated_more) = self.escalate.take();
        Report {
            op,
            scope: self.scope,
            from: me.clone(),
            tally,
            answers: MeshNode::top_answers(&std::mem::take(&mut self.answers)),
            escalated,
            escalated_more,
            late,
            named: self.named.as_mut().map(std::mem::take).unwrap_or_default(),
        }
    }
}
