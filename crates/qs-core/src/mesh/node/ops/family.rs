//! A priority-first operation (seed §3.3: "critical agents first, then expand"): one root
//! operation per class, GPUs first, each under a number of its own and judged on its own
//! threshold. All start at once, and the order is kept where it matters, in arrival: each
//! class's agents are to be ready no earlier than the class before it's. (Started one after
//! another's end, five classes took five round trips.) The operation ends when its last
//! phase has, COMPLETE whatever each phase did.

use super::*;

/// The classes in the order they are reached, and the response rate each succeeds at.
pub(super) const PHASES: [(ImpedanceClass, f64); 5] = [
    (ImpedanceClass::D, 0.99),
    (ImpedanceClass::C, 0.98),
    (ImpedanceClass::B, 0.95),
    (ImpedanceClass::A, 0.90),
    (ImpedanceClass::E, 0.85),
];

/// The response rate an order's gather succeeds at, at its coordinator and its leads: a
/// priority-first phase's, by its class; else its mode's.
pub(super) fn min_rate(mode: CascadeMode, class: Option<ImpedanceClass>) -> f64 {
    let phase = PHASES.iter().find(|(k, _)| Some(*k) == class);
    match (mode, phase) {
        (CascadeMode::PriorityFirst, Some((_, rate))) => *rate,
        _ => MeshNode::cascade_mode_window(mode).1,
    }
}

/// Which operation a phase belongs to, and where in [`PHASES`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Part {
    pub(super) family: OpId,
    pub(super) index: usize,
}

/// A priority-first operation at the root, while its phases run.
#[derive(Clone, Debug)]
pub(crate) struct Family {
    scope: Scope,
    started: Time,
    tag: u64,
    degradation: &'static str,
    /// By index in [`PHASES`]; `None` while the phase runs.
    ended: Vec<Option<PhaseResult>>,
    answers: BTreeMap<String, u32>,
    named: Vec<NamedAnswer>,
    /// The messages its orders took from the root (its phases' went together).
    root_messages: u32,
}

/// Starts operation `op`'s `phases` (in [`PHASES`]' order), each's agents to be ready no
/// earlier than the one before's.
pub(super) fn launch(ops: &mut Ops, node: &mut MeshNode, op: OpId, phases: Vec<RootOp>, now: Time) {
    let Some(first) = phases.first() else {
        return;
    };
    let mut family = Family {
        scope: first.scope,
        started: now,
        tag: first.tag,
        degradation: first.degradation,
        ended: vec![None; phases.len()],
        answers: BTreeMap::new(),
        named: Vec::new(),
        root_messages: 0,
    };
    let mut not_before = now;
    // One message per coordinator for all the phases (the root sends at most one per
    // sector and cascade), not one per phase.
    let outer = node.gather_orders();
    for phase in phases {
        let id = phase.envelope.op;
        ops.root.insert(id, phase);
        if let Some(target) = start_phase(ops, node, id, not_before, now) {
            not_before = target;
        }
    }
    if outer {
        family.root_messages = node.flush_orders();
    }
    ops.families.insert(op, family);
}

/// Phase `part` ended with `result` (`r` its operation): once the last has, the operation's
/// result goes out.
pub(super) fn phase_ended(
    ops: &mut Ops,
    node: &mut MeshNode,
    part: Part,
    result: PhaseResult,
    r: RootOp,
    now: Time,
) {
    let Some(f) = ops.families.get_mut(&part.family) else {
        return;
    };
    if let Some(slot) = f.ended.get_mut(part.index) {
        *slot = Some(result);
    }
    for (answer, n) in &r.answers {
        count_answer(&mut f.answers, answer, *n);
    }
    merge_named(&mut f.named, &r.named);
    if f.ended.iter().any(Option::is_none) {
        return;
    }
    let Some(f) = ops.families.remove(&part.family) else {
        return;
    };
    let phases: Vec<PhaseResult> = f.ended.into_iter().flatten().collect();
    let mut tally = Tally::default();
    for p in &phases {
        tally.add(&p.tally);
    }
    let target_after_ms = phases.iter().map(|p| p.target_after_ms).fold(0.0, f64::max);
    let result = OpResult {
        op: part.family,
        mode: CascadeMode::PriorityFirst,
        scope: f.scope,
        status: "COMPLETE",
        // The phases' rates differ (0.85 to 0.99): the whole is judged at the seed's.
        decision: gather::decide(&tally, crate::mesh::quorum::REQUIRED_READY_RATE),
        tally,
        latency_ms: now.since(f.started).as_secs_f64() * 1000.0,
        target_after_ms,
        answers: MeshNode::top_answers(&f.answers),
        phases,
        named: f.named,
        root_messages: f.root_messages,
        degradation: f.degradation,
        tag: f.tag,
    };
    let mesh_wide = f.scope == Scope::Global;
    conclude(node, result, mesh_wide, now);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_phase_is_gathered_at_its_own_rate_below_the_root() {
        use CascadeMode::*;
        use ImpedanceClass::*;
        let table = [
            (PriorityFirst, Some(D), 0.99),
            (PriorityFirst, Some(C), 0.98),
            (PriorityFirst, Some(B), 0.95),
            (PriorityFirst, Some(A), 0.90),
            (PriorityFirst, Some(E), 0.85),
            (Wave, Some(D), 0.95),
            (Wave, None, 0.95),
            (Parallel, None, 0.90),
        ];
        for (mode, class, rate) in table {
            assert_eq!(min_rate(mode, class), rate, "{mode:?} {class:?}");
        }
    }
}
