//! Answers after their lead reported (seed §3.2: late answers are quarantined, not failures):
//! the lead keeps, for a while, who it still waits for in each operation it reported. An
//! answer that comes after is taken once, as late: READY still resolves what it agrees with,
//! a CONFLICT is still logged here and, of priority 3 or more, escalated at once in a late
//! report (`Report.late`), which the coordinator takes for its conflicts only. The report's
//! counts have gone: none of this changes the operation's result.

use super::*;

/// How long after its report a lead still takes an operation's late answers.
pub(crate) const LATE_ANSWERS_MS: u64 = 10_000;

/// What a lead keeps of an operation it reported with answers still to come.
#[derive(Clone, Debug)]
pub(crate) struct Settled {
    until: Time,
    report_to: NodeId,
    content_hash: String,
    /// Sent to, not answered yet.
    waiting: BTreeSet<AgentId>,
}

/// Keeps what late answers to `l`, reported now, need (nothing when none is awaited). Those
/// past their time go first; at [`MAX_OPS`], the one kept longest goes.
pub(super) fn keep(ops: &mut Ops, key: (OpId, ClusterId), l: &LeadOp, now: Time) {
    ops.settled.retain(|_, s| s.until > now);
    let waiting: BTreeSet<AgentId> = l
        .sent_at
        .keys()
        .filter(|a| !l.gather.answered(a))
        .copied()
        .collect();
    if waiting.is_empty() {
        return;
    }
    if ops.settled.len() >= MAX_OPS
        && let Some(first) = ops
            .settled
            .iter()
            .min_by_key(|(k, s)| (s.until, **k))
            .map(|(k, _)| *k)
    {
        ops.settled.remove(&first);
    }
    let settled = Settled {
        until: now + Duration::from_millis(LATE_ANSWERS_MS),
        report_to: l.report_to.clone(),
        content_hash: l.envelope.content_hash.clone(),
        waiting,
    };
    ops.settled.insert(key, settled);
}

/// An answer at a lead that reported its operation: taken (true) if the lead still waits for
/// it there.
pub(super) fn answer(ops: &mut Ops, node: &mut MeshNode, a: &Ack, now: Time) -> bool {
    let key = (a.op, a.cluster);
    let Some(s) = ops.settled.get_mut(&key) else {
        return false;
    };
    if s.until <= now || !s.waiting.remove(&a.agent) {
        return false;
    }
    let (hash, report_to) = (s.content_hash.clone(), s.report_to.clone());
    if s.waiting.is_empty() {
        ops.settled.remove(&key);
    }
    if a.expired {
        return true;
    }
    match a.state {
        Trinary::Ready => node.agreed(a.agent, &hash, now),
        Trinary::Transit => {}
        Trinary::Conflict => {
            let Some(record) = node.conflict(a, &hash, now) else {
                return true;
            };
            let mut up = Escalations::default();
            escalate::heard(&mut up, &record);
            let (escalated, escalated_more) = up.take();
            if escalated.is_empty() {
                return true;
            }
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
            };
            node.send(report_to, MeshMessage::Report(Box::new(report)));
        }
    }
    true
}
