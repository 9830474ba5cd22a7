//! Answers after their gather closed (seed §3.2: late answers are quarantined, not
//! failures). A lead keeps, for a while, who it still waits for in each operation it
//! reported (and who answered READY, for a retry of the same message); the root keeps who
//! answered each
//! urgent operation it ended (it does not know whom the leads sent to). An answer that comes
//! after is taken once, as late: READY still resolves what it agrees with (a REROUTE's
//! conflict too), a CONFLICT is still logged and, at a lead, of priority 3 or more,
//! escalated at once in a late report (`Report.late`) to the node the tree names now, which
//! takes it for its conflicts only. The results have gone: none of this changes them. A
//! lead that no longer leads the cluster takes no late answer (the new lead's tree is the
//! one that counts).

use super::*;

/// How long after its report a lead still takes an operation's late answers.
pub(crate) const LATE_ANSWERS_MS: u64 = 10_000;
/// Most urgent operations the root keeps for late answers (each with who answered it).
const MAX_URGENT_KEPT: usize = 16;
/// Most answers the root keeps of one ended urgent operation (past that, late ones are
/// timing samples only).
const MAX_ANSWERED_KEPT: usize = 100_000;

/// What a lead (or the root) keeps of an operation whose answers may still come.
#[derive(Clone, Debug)]
pub(crate) struct Settled {
    until: Time,
    /// The operation's scope: a late answer from outside it is not taken.
    scope: Scope,
    /// Where a late conflict goes up to (none at the root).
    up: Option<Up>,
    content_hash: String,
    /// Its envelope's id and creation: an order of the same is one this node carried out.
    envelope_id: u64,
    created_ms: u64,
    awaited: Awaited,
    /// Agents the work of a capability mismatch went to, and that conflict's number.
    rerouted: BTreeMap<AgentId, u64>,
    /// At a lead: its agents that answered READY (in the window, its extension, or late),
    /// which a retry of the same message does not send it again (seed §5.2's RETRY).
    ready: BTreeSet<AgentId>,
}

impl Settled {
    /// Whether it is what `envelope` asked (an order of it again is one carried out).
    pub(super) fn of(&self, envelope: &MeshEnvelope) -> bool {
        self.envelope_id == envelope.id && self.created_ms == envelope.created_ms
    }

    /// What a retry of its message at its lead takes from it: who was READY, and who is
    /// still awaited.
    pub(super) fn before(&self) -> Before {
        let awaited = match &self.awaited {
            Awaited::These(waiting) => waiting.clone(),
            Awaited::AllBut(_) => BTreeSet::new(),
        };
        Before {
            ready: self.ready.clone(),
            awaited,
        }
    }
}

/// An attempt before a retry, at a lead: its agents READY for the message, and those it
/// still awaits (each at most the cluster's).
#[derive(Clone, Debug, Default)]
pub(super) struct Before {
    pub(super) ready: BTreeSet<AgentId>,
    pub(super) awaited: BTreeSet<AgentId>,
}

/// The level a lead's report went to, as the tree names it when a late conflict goes up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Up {
    /// The coordinator of the cluster's sector (a wave's, a priority-first phase's).
    Coordinator,
    /// The root (an operation of the cluster alone).
    Root,
}

/// Whose late answer is taken.
#[derive(Clone, Debug)]
enum Awaited {
    /// At a lead: those sent to and not answered yet.
    These(BTreeSet<AgentId>),
    /// At the root (an urgent operation): any agent in scope but those that answered.
    AllBut(BTreeSet<AgentId>),
}

impl Awaited {
    /// Takes `agent`'s answer if awaited; true if taken.
    fn take(&mut self, agent: AgentId) -> bool {
        match self {
            Awaited::These(waiting) => waiting.remove(&agent),
            Awaited::AllBut(answered) => {
                answered.len() < MAX_ANSWERED_KEPT && answered.insert(agent)
            }
        }
    }
}

/// Drops what is past its time (at every beat, so nothing stays when no operation comes);
/// an agent a lead still awaited then missed that operation.
pub(crate) fn prune(node: &mut MeshNode, now: Time) {
    let mut missing: Vec<(ClusterId, AgentId, Time)> = Vec::new();
    let late_us = LATE_ANSWERS_MS * 1_000;
    node.ops.settled.retain(|(_, c), s| {
        let keep = s.until > now;
        if let (false, Awaited::These(waiting)) = (keep, &s.awaited) {
            // Reported (every send before) the late answers' time before its end.
            let reported = Time::from_micros(s.until.as_micros().saturating_sub(late_us));
            missing.extend(waiting.iter().map(|a| (*c, *a, reported)));
        }
        keep
    });
    node.ops.settled_urgent.retain(|_, s| s.until > now);
    for (c, a, reported) in missing {
        missed(node, c, a, reported, now);
    }
}

/// An answer this long (a quarter of the late answers' time) makes an agent that does not
/// answer slow, not missing.
const SLOW_WORK_MS: f64 = LATE_ANSWERS_MS as f64 / 4.0;

/// Seed §6.1, transient network: an agent in the routing pool, active, that answered before
/// (one never heard from may be slow, not missing) and not since the operation was
/// reported (`reported`), sent an operation that answered it not even late, though no
/// answer of its ever took `SLOW_WORK_MS` (one of seconds is slow). The third miss in a row
/// routes around it: out of the routing pool for a backoff that doubles with each further
/// miss, then tried again. Any answer starts its count again (`on_ack`).
fn missed(node: &mut MeshNode, c: ClusterId, a: AgentId, reported: Time, now: Time) {
    let Some(led) = node.led.get_mut(&c) else {
        return;
    };
    let Some(v) = led.agents.get_mut(&a) else {
        return;
    };
    // Work of seconds (a human's, one that queues), by its answers (not by the waits its
    // misses made it look): slow, not missing.
    let slow = v.work.longest_ms() >= SLOW_WORK_MS;
    let answered_since = v.last_answer.is_some_and(|t| t >= reported);
    if slow
        || v.work.samples() == 0
        || answered_since
        || !v.admitted
        || v.state != AgentState::Active
    {
        return;
    }
    v.missed = v.missed.saturating_add(1);
    let Some(back_in_ms) = degrade::backoff_ms(v.missed) else {
        return;
    };
    let missed = v.missed;
    led.hold_out(a, now + Duration::from_millis(back_in_ms));
    node.out.push_back(MeshOutput::RoutedAround(RoutedAround {
        agent: a,
        cluster: c,
        missed,
        back_in_ms,
    }));
}

/// Keeps what late answers to `l`, reported now, need, and who answered READY for a retry
/// of its message (nothing when neither), until the late answers' time after its gather's
/// end (a cluster that reported early is asked by a retry only after the phase's end).
pub(super) fn keep(ops: &mut Ops, node: &MeshNode, key: (OpId, ClusterId), l: &LeadOp, now: Time) {
    let Before {
        ready,
        awaited: waiting,
    } = l.before();
    let rerouted: BTreeMap<AgentId, u64> = l
        .rerouted
        .iter()
        .filter(|(a, _)| waiting.contains(*a))
        .map(|(a, seq)| (*a, *seq))
        .collect();
    if waiting.is_empty() && ready.is_empty() {
        return;
    }
    let up = match node.tree.coordinator_of(key.1) == Some(&l.report_to) {
        true => Up::Coordinator,
        false => Up::Root,
    };
    let settled = Settled {
        until: now.max(l.gather.deadline()) + Duration::from_millis(LATE_ANSWERS_MS),
        scope: l.scope,
        up: Some(up),
        content_hash: l.envelope.content_hash.clone(),
        envelope_id: l.envelope.id,
        created_ms: l.envelope.created_ms,
        awaited: Awaited::These(waiting),
        rerouted,
        ready,
    };
    insert_bounded(&mut ops.settled, key, settled, MAX_OPS, |s| s.until);
}

/// Keeps what late answers to the urgent operation `r`, ended now at the root, need.
pub(super) fn keep_urgent(ops: &mut Ops, op: OpId, r: &mut RootOp, now: Time) {
    let settled = Settled {
        until: now + Duration::from_millis(LATE_ANSWERS_MS),
        scope: r.scope,
        up: None,
        content_hash: r.envelope.content_hash.clone(),
        envelope_id: r.envelope.id,
        created_ms: r.envelope.created_ms,
        awaited: Awaited::AllBut(std::mem::take(&mut r.acks)),
        rerouted: BTreeMap::new(),
        ready: BTreeSet::new(),
    };
    insert_bounded(&mut ops.settled_urgent, op, settled, MAX_URGENT_KEPT, |s| {
        s.until
    });
}

/// `a`, READY for an operation a retry under way here awaits it in too (it was not sent it
/// again): READY there as well.
pub(super) fn to_retry(ops: &mut Ops, node: &mut MeshNode, a: &Ack, now: Time) {
    let Some((key, retry)) = ops
        .lead
        .iter_mut()
        .find(|((_, c), l)| *c == a.cluster && l.retry_of == Some(a.op))
    else {
        return;
    };
    let key = *key;
    let ready_at = Time::from_millis(a.ready_ms).max(retry.gather.target());
    retry.gather.answer(a.agent, Trinary::Ready, ready_at, now);
    if retry.gather.complete() {
        report_lead(ops, node, key, now);
    }
}

/// An answer after its gather closed, at a lead or at the root of an urgent operation:
/// taken (true) if still awaited here.
pub(super) fn answer(ops: &mut Ops, node: &mut MeshNode, a: &Ack, now: Time) -> bool {
    let lead_key = (a.op, a.cluster);
    // A lead's (only while it still leads the cluster), else the root's urgent one.
    let s = match ops.settled.get_mut(&lead_key) {
        Some(_) if node.tree.named_for(Scope::Cluster(a.cluster)) != Some(&node.me) => {
            return false;
        }
        Some(s) => s,
        None => match ops.settled_urgent.get_mut(&a.op) {
            Some(s) => s,
            None => return false,
        },
    };
    if s.until <= now || !node.tree.holds(s.scope, a.cluster) || !s.awaited.take(a.agent) {
        return false;
    }
    node.late_answers += 1;
    let rerouted = s.rerouted.remove(&a.agent);
    let (hash, up) = (s.content_hash.clone(), s.up);
    if a.expired {
        return true;
    }
    // (Kept to its time, done or not: a retry of its message asks it who was READY.)
    if a.state == Trinary::Ready && matches!(s.awaited, Awaited::These(_)) {
        s.ready.insert(a.agent);
        to_retry(ops, node, a, now);
    }
    match a.state {
        Trinary::Ready => node.agreed(a.agent, &hash, rerouted, now),
        Trinary::Transit => {}
        Trinary::Conflict => {
            let Some(record) = node.conflict(a, &hash, now) else {
                return true;
            };
            let to = match up {
                None => return true,
                Some(Up::Root) => node.tree.root.clone(),
                Some(Up::Coordinator) => node.tree.coordinator_of(a.cluster).cloned(),
            };
            let mut carried = Escalations::default();
            escalate::heard(&mut carried, &record);
            let (escalated, escalated_more) = carried.take();
            let Some(to) = to.filter(|_| !escalated.is_empty()) else {
                return true;
            };
            let report = Report {
                op: a.op,
                scope: Scope::Cluster(a.cluster),
                from: node.me.clone(),
                tally: Tally {
                    late: 1,
                    ..Tally::default()
                },
                answers: Vec::new(),
                escalated,
                escalated_more,
                late: true,
                named: Vec::new(),
            };
            node.send(to, MeshMessage::Report(Box::new(report)));
        }
    }
    true
}
