//! A cluster lead's gather closed for good (its window's end, or its extension's): who it
//! still waits for is late from now on, its stragglers time out (seed §6.1), an agent that
//! keeps contradicting a clear majority is quarantined (seed §6.1's byzantine behaviour),
//! and a newcomer that contradicts its cluster leaves the routing pool again (seed §10.2).

use super::*;

/// `key`'s gather closed for good (at its window's end, or its extension's): who it still
/// waits for is late from now on, and what its answers say of its agents is taken.
pub(super) fn close(
    ops: &mut Ops,
    node: &mut MeshNode,
    key: (OpId, ClusterId),
    l: &LeadOp,
    now: Time,
) {
    let c = key.1;
    let op = key.0;
    // Stragglers: a timeout each (seed §6.1, transient network). It lowers the agent's
    // reliability, and what it has taken so far is a lower bound of its processing time.
    // It is no failure for the breakers: only agents that go down are (a late answer is
    // quarantined, not failed).
    // In the urgent mode the answers go to the root: the lead hears none, and reports as
    // soon as all went out, so it takes nobody for a straggler.
    let waited_ms = now.as_millis() as f64;
    let gathered = l.mode != CascadeMode::Parallel;
    if gathered {
        late::keep(ops, node, key, l, now);
    }
    let mut quarantined = Vec::new();
    if let Some(led) = node.led.get_mut(&c) {
        for (a, sent) in &l.sent_at {
            if gathered
                && !l.gather.answered(a)
                && let Some(v) = led.agents.get_mut(a)
            {
                v.work.outcome(false);
                let link_p50 = led
                    .hosts
                    .get_mut(&v.host)
                    .map_or(0.0, |h| h.link.recent_ms());
                v.work
                    .at_least(waited_ms - sent.as_millis() as f64 - link_p50);
            }
        }
        // Seed §6.1 byzantine behaviour: disagreeing with a clear majority, repeatedly
        // (each agreement with one takes a disagreement back, so an agent once stale is
        // not quarantined for it a day later).
        // (By agent: a gather that waited reported its first answers' counts already.)
        let mut counts: BTreeMap<&String, usize> = BTreeMap::new();
        for ans in l.by_agent.values() {
            *counts.entry(ans).or_default() += 1;
        }
        if let Some((top, n)) = counts.into_iter().max_by_key(|(_, n)| *n)
            && n * 5 >= l.by_agent.len() * 4
            && l.by_agent.len() >= 5
        {
            for (a, ans) in &l.by_agent {
                let Some(v) = led.agents.get_mut(a) else {
                    continue;
                };
                if ans == top {
                    v.disagreements = v.disagreements.saturating_sub(1);
                    continue;
                }
                v.disagreements = v.disagreements.saturating_add(1);
                if v.disagreements >= degrade::BYZANTINE_AFTER && v.state != AgentState::Quarantined
                {
                    v.state = AgentState::Quarantined;
                    led.active = None;
                    quarantined.push(Quarantined {
                        agent: *a,
                        cluster: c,
                        host: v.host.clone(),
                        op,
                        disagreements: v.disagreements,
                        answer: ans.clone(),
                        majority: top.clone(),
                    });
                }
            }
        }
    }
    node.out
        .extend(quarantined.into_iter().map(MeshOutput::Quarantined));
    // Seed §10.2, monitoring conflicts during integration: a new agent that answers
    // CONFLICT where its cluster clearly answers READY leaves the routing pool again.
    let t = l.gather.tally();
    if !l.conflicted.is_empty() && crate::mesh::integration::clearly_ready(t.ready, t.conflict) {
        for &a in &l.conflicted {
            node.conflict_while_integrating(c, a, now);
        }
    }
}
