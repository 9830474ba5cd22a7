//! Seed §5.2's RETRY carried out ("insufficient ready agents: retry with adjusted impedance
//! compensation"): a phase whose quorum says RETRY at its end (too few READY, few in
//! transit, few conflicts) is retried once, under a number of its own, with the same
//! message (its envelope's id and creation: an agent can tell it is the same). The retry's
//! compensation is adjusted: its arrival budget and its window grow by half (the budget up
//! to the most the mesh compensates, an operator's budget kept), and the leads schedule it
//! by the profiles the first attempt just measured.
//!
//! It is retried only where it could reach its quorum: were all it sends again READY.
//! No agent is sent the same message twice for it while its lead holds the attempt before
//! (gathering still, or kept for late answers: 10 s past its window): a lead counts its
//! agents READY in the attempt before (in its window, its extension or late) as sent and
//! READY at once (`Tally.carried`), and those it still awaits there as sent and still in
//! transit; only the others (those that answered IN TRANSIT or CONFLICT, whose envelope
//! expired, or that were not sent) are sent it again. A lead that holds nothing of the
//! attempt before (a new lead) sends to all. The operation's result is the retry's, the
//! first attempt's in its phase's `earlier`.
//!
//! Not retried: the urgent mode (its answers went to the root; the leads do not know who
//! answered READY, and it exists for speed), a sample (an ask, a delegation: who answers is
//! the operator's to ask again), a retry, and one whose message's time to live could not
//! hold it. A retry starts at once: a priority-first phase's retry does not wait for the
//! classes after it, and it was admitted with its operation (the mode's rules are not asked
//! again).
//!
//! Left to do: the first attempt's answers are not merged into the retry's (a broadcast's
//! are empty); agents awaited before count in the KPIs' sends of both attempts; one awaited
//! whose late answer says IN TRANSIT or CONFLICT (or that the envelope expired) stays in
//! transit in the retry, not sent it again.

use super::*;

/// How much a retry's arrival budget and window grow (seed §3.2's PARTIAL: "retry with a
/// larger window").
const GROWTH: f64 = 1.5;

/// What a retry's reports may take past its window (hops up, slack, an extension): at most.
const REPORTS_MS: f64 = 4_000.0;

/// Whether phase `r`, ended with `decision` on `tally`, is retried: only where the retry
/// could reach the quorum, were all it sends again READY (agents still awaited are not sent
/// it again: a shortfall of theirs is no retry's).
pub(super) fn wanted(
    ops: &Ops,
    node: &MeshNode,
    r: &RootOp,
    decision: &Decision,
    tally: &Tally,
    now: Time,
) -> bool {
    let again = [tally.transit, tally.conflict, tally.expired]
        .iter()
        .fold(0u32, |n, k| n.saturating_add(*k));
    // The same message lives at most the longest time to live from its creation: the retry
    // (its budget, its window, its reports' slack) must fit in it.
    let g = grown(r, node.cfg.max_budget_ms);
    let needs_ms = now.as_millis().saturating_sub(r.envelope.created_ms) as f64
        + (g.budget_ms + g.window_ms) as f64
        + REPORTS_MS;
    let fits = needs_ms < qs_wire::mesh::MAX_TTL_MS as f64;
    matches!(decision, Decision::Retry)
        && r.retry_of.is_none()
        && r.mode != CascadeMode::Parallel
        && r.sample.is_none()
        && again > 0
        && f64::from(tally.ready.saturating_add(again)) >= r.min_rate * f64::from(tally.sent)
        && fits
        && ops.root.len() < MAX_OPS
}

/// A retry's arrival budget and window.
struct Grown {
    budget_ms: u64,
    window_ms: u64,
}

/// Attempt `r`'s budget (from its start to its target: a priority-first phase's waited for
/// the class before it too) and window, each half again as long; an operator's budget kept.
fn grown(r: &RootOp, max_budget_ms: u64) -> Grown {
    let budget_ms = match r.budget_ms {
        Some(ms) => ms,
        None => (r.target.since(r.started).as_secs_f64() * 1000.0 * GROWTH)
            .clamp(20.0, max_budget_ms as f64) as u64,
    };
    let window_ms = (r.window.as_millis() as f64 * GROWTH) as u64;
    Grown {
        budget_ms,
        window_ms: window_ms.min(qs_wire::mesh::MAX_WINDOW_MS),
    }
}

/// Starts the retry of phase `op` (its operation `r`, its attempt's result `attempt`).
pub(super) fn start(
    ops: &mut Ops,
    node: &mut MeshNode,
    op: OpId,
    mut r: RootOp,
    attempt: PhaseResult,
    now: Time,
) {
    let id = OpId(node.next_id());
    let g = grown(&r, node.cfg.max_budget_ms);
    r.budget_ms = Some(g.budget_ms);
    r.window_ms = Some(g.window_ms);
    r.retry_of = Some(op);
    r.earlier.push(attempt);
    r.envelope.op = id;
    node.kpis.retried += 1;
    ops.root.insert(id, r);
    start_phase(ops, node, id, now, now);
}
