//! Seed §5.2's WAIT carried out. A lead whose gather closes with its quorum saying WAIT
//! (too few READY, too many still in transit) reports what it has, saying so
//! (`tally.waited`), and gathers on for one extension of its window ([`gather::extension`]);
//! then its answers in the extension go straight to the root (the coordinator reported
//! already) in a late report with `waited`. The root adds them to the phase while it
//! gathers, and a phase whose own quorum says WAIT with extensions still to come waits for
//! them once, an extension past its deadline at most. The urgent mode, whose agents answer
//! the root, does not wait.

use super::*;

/// The extension of `key`'s window ended (or every answer came): its answers since the first
/// report (`first`, its tally then) go to the root, which waits for them if its own quorum
/// says WAIT (straight there: the coordinator reported already); the rest are late.
pub(super) fn report(
    ops: &mut Ops,
    node: &mut MeshNode,
    key: (OpId, ClusterId),
    first: Tally,
    now: Time,
) {
    let Some(mut l) = ops.lead.remove(&key) else {
        return;
    };
    close(ops, node, key, &l, now);
    // Conflicts heard in the extension go where the first report went (the sector's
    // coordinator logs those of priority 3 and passes 4 on), as a late report's do.
    let (escalated, escalated_more) = l.escalate.take();
    if !escalated.is_empty() {
        let conflicts = Report {
            op: key.0,
            scope: l.scope,
            from: node.me.clone(),
            tally: Tally::default(),
            answers: Vec::new(),
            escalated,
            escalated_more,
            late: true,
            named: Vec::new(),
        };
        // (To the coordinator the tree names now: one it no longer names would not take
        // them.)
        let to = match l.report_to == l.root {
            true => l.root.clone(),
            false => node
                .tree
                .coordinator_of(key.1)
                .cloned()
                .unwrap_or(l.report_to.clone()),
        };
        node.send(to, MeshMessage::Report(Box::new(conflicts)));
    }
    let t = *l.gather.tally();
    let since = |now: u32, then: u32| now.saturating_sub(then);
    let tally = Tally {
        ready: since(t.ready, first.ready),
        transit: since(t.transit, first.transit),
        conflict: since(t.conflict, first.conflict),
        expired: since(t.expired, first.expired),
        late: since(t.late, first.late),
        rerouted: since(t.rerouted, first.rerouted),
        unreachable: since(t.unreachable, first.unreachable),
        // (An answer ready in the window that came in the extension was a hit.)
        window_hits: since(t.window_hits, first.window_hits),
        predicted_within_50ms: since(t.predicted_within_50ms, first.predicted_within_50ms),
        targeted: since(t.targeted, first.targeted),
        sent: since(t.sent, first.sent),
        waited: 1,
        ..Tally::default()
    };
    let report = l.report(key.0, &node.me, tally, true);
    node.send(l.root, MeshMessage::Report(Box::new(report)));
}

/// Seed §5.2 at the root: a phase whose quorum says WAIT, with clusters still gathering in
/// their windows' extensions, waits once for their reports, an extension past its deadline
/// at most; true if it does.
pub(super) fn waits(r: &mut RootOp, now: Time) -> bool {
    if r.extended
        || r.mode == CascadeMode::Parallel
        || !matches!(gather::decide(&r.tally, r.min_rate), Decision::Wait)
        || done(r)
    {
        return false;
    }
    r.extended = true;
    r.deadline = r.deadline.max(now) + gather::extension(r.window);
    true
}

/// A cluster's answers in its window's extension, at the root: added to the phase while it
/// still gathers; one that waits for them ends when all came or its quorum holds. (After
/// the phase ended, only their conflicts count, as any late report's.)
/// Each cluster of the phase's scope once, from its lead (in the tree or the one before;
/// the inbox lets its coordinator speak for it too); anything else is no extension and is
/// dropped, counted as refused.
pub(super) fn heard(ops: &mut Ops, node: &mut MeshNode, rep: &Report, now: Time) -> bool {
    let Some(r) = ops.root.get_mut(&rep.op) else {
        return false;
    };
    let lead_of = |c: ClusterId| {
        let scope = Scope::Cluster(c);
        node.tree.named_for(scope) == Some(&rep.from)
            || node
                .tree_before
                .as_deref()
                .is_some_and(|t| t.named_for(scope) == Some(&rep.from))
    };
    let taken = match rep.scope {
        Scope::Cluster(c) => {
            r.mode != CascadeMode::Parallel
                && rep.tally.waited == 1
                && node.tree.holds(r.scope, c)
                && lead_of(c)
                && r.extensions.insert(c)
        }
        _ => false,
    };
    if !taken {
        node.refused_senders += 1;
        return true;
    }
    let mut counts = rep.tally;
    counts.waited = 0;
    r.tally.add(&counts);
    merge_answers(&mut r.answers, &rep.answers);
    merge_named(&mut r.named, &rep.named);
    maybe_end_early(ops, node, rep.op, now);
    true
}

/// A phase that waits for extensions has what it waited for: all came, or its quorum holds.
pub(super) fn done(r: &RootOp) -> bool {
    r.extensions.len() >= r.tally.waited as usize
        || matches!(
            gather::decide(&r.tally, r.min_rate),
            Decision::Proceed { .. }
        )
}
