//! Answers after their gather closed (seed §3.2: late answers are quarantined, not
//! failures). A lead keeps, for a while, who it still waits for in each operation it
//! reported; the root keeps who answered each urgent operation it ended (it does not know
//! whom the leads sent to). An answer that comes after is taken once, as late: READY still
//! resolves what it agrees with, a CONFLICT is still logged and, at a lead, of priority 3 or
//! more, escalated at once in a late report (`Report.late`), which the coordinator takes for
//! its conflicts only. The results have gone: none of this changes them.

use super::*;

/// How long after its report a lead still takes an operation's late answers.
pub(crate) const LATE_ANSWERS_MS: u64 = 10_000;

/// What a lead (or the root) keeps of an operation whose answers may still come.
#[derive(Clone, Debug)]
pub(crate) struct Settled {
    until: Time,
    /// Where a late conflict is escalated: the lead's coordinator; none at the root.
    report_to: Option<NodeId>,
    content_hash: String,
    awaited: Awaited,
}

/// Whose late answer is taken.
#[derive(Clone, Debug)]
enum Awaited {
    /// At a lead: those sent to and not answered yet.
    These(BTreeSet<AgentId>),
    /// At the root (an urgent operation): any agent but those that answered.
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

    fn done(&self) -> bool {
        matches!(self, Awaited::These(w) if w.is_empty())
    }
}

/// Most answers the root keeps of one ended urgent operation (past that, late ones are
/// timing samples only).
const MAX_ANSWERED_KEPT: usize = 100_000;

/// Keeps at most [`MAX_OPS`] of `map`, those past their time dropped first, then the one
/// kept longest, and `settled` under `key`.
fn keep_in<K: Ord + Copy>(map: &mut BTreeMap<K, Settled>, key: K, settled: Settled, now: Time) {
    map.retain(|_, s| s.until > now);
    if map.len() >= MAX_OPS
        && let Some(first) = map
            .iter()
            .min_by_key(|(k, s)| (s.until, **k))
            .map(|(k, _)| *k)
    {
        map.remove(&first);
    }
    map.insert(key, settled);
}

/// Keeps what late answers to `l`, reported now, need (nothing when none is awaited).
pub(super) fn keep(ops: &mut Ops, key: (OpId, ClusterId), l: &LeadOp, now: Time) {
    let waiting: BTreeSet<AgentId> = l
        .sent_at
        .keys()
        .filter(|a| !l.gather.answered(a))
        .copied()
        .collect();
    if waiting.is_empty() {
        return;
    }
    let settled = Settled {
        until: now + Duration::from_millis(LATE_ANSWERS_MS),
        report_to: Some(l.report_to.clone()),
        content_hash: l.envelope.content_hash.clone(),
        awaited: Awaited::These(waiting),
    };
    keep_in(&mut ops.settled, key, settled, now);
}

/// Keeps what late answers to the urgent operation `r`, ended now at the root, need.
pub(super) fn keep_urgent(ops: &mut Ops, op: OpId, r: &mut RootOp, now: Time) {
    let settled = Settled {
        until: now + Duration::from_millis(LATE_ANSWERS_MS),
        report_to: None,
        content_hash: r.envelope.content_hash.clone(),
        awaited: Awaited::AllBut(std::mem::take(&mut r.acks)),
    };
    keep_in(&mut ops.settled_urgent, op, settled, now);
}

/// An answer after its gather closed, at a lead or at the root of an urgent operation:
/// taken (true) if still awaited here.
pub(super) fn answer(ops: &mut Ops, node: &mut MeshNode, a: &Ack, now: Time) -> bool {
    let (lead_key, urgent_key) = ((a.op, a.cluster), a.op);
    let s = match ops.settled.get_mut(&lead_key) {
        Some(s) => s,
        None => match ops.settled_urgent.get_mut(&urgent_key) {
            Some(s) => s,
            None => return false,
        },
    };
    if s.until <= now || !s.awaited.take(a.agent) {
        return false;
    }
    node.late_answers += 1;
    let (hash, report_to) = (s.content_hash.clone(), s.report_to.clone());
    if s.awaited.done() {
        ops.settled.remove(&lead_key);
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
            let Some(report_to) = report_to else {
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
