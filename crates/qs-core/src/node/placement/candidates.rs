//! Step 3's first half: whom a steward asks. Every live node in a small fleet, a weighted
//! sample in a large one, never a node that can only decline (draining, full for the
//! service's anti-affinity, wrong labels, no GPU large enough, a certificate that does not
//! let it host).

use crate::node::host::labels_match;
use crate::node::inflight::Stage;
use crate::node::steward::Steward;
use crate::registry::Registry;
use qs_wire::trust::Capability;
use qs_wire::{Demand, NodeId};
use std::collections::BTreeMap;

impl Steward {
    /// Whom to ask: every live node in a small fleet, a weighted sample of `query_sample`
    /// in a large one. Nodes that can never fit (labels, GPU size) are not asked.
    pub(super) fn candidates(&mut self, demand: &Demand, reg: &Registry) -> (Vec<NodeId>, bool) {
        // Anti-affinity: nodes known (from heartbeats, through the registry's index, or from
        // dispatches accepted since) to run as many instances as the pattern allows would
        // only decline. Counted once per round, not once per candidate.
        let mut per_node: BTreeMap<&NodeId, u32> = BTreeMap::new();
        for (_, r) in reg.instances_of(&demand.service) {
            *per_node.entry(&r.node).or_default() += 1;
        }
        if let Some(st) = self.services.get(&demand.service) {
            for a in st.pending.values() {
                *per_node.entry(&a.node).or_default() += 1;
            }
        }
        for p in self.placements.values() {
            if p.demand.service == demand.service
                && let Stage::Dispatching { target, .. } = &p.stage
            {
                *per_node.entry(target).or_default() += 1;
            }
        }
        let full = |n: &qs_wire::NodeStatus| {
            per_node.get(&n.node).copied().unwrap_or(0) >= demand.max_per_node
        };
        // Only nodes whose certificate lets them host (and run GPU work, for a GPU demand).
        let accept = |n: &qs_wire::NodeStatus| {
            !n.draining
                && n.may(Capability::Host)
                && (!demand.need.needs_gpu() || n.may(Capability::Gpu))
                && !full(n)
                && labels_match(&demand.labels, &n.labels)
                && (!demand.need.needs_gpu()
                    || n.capacity
                        .gpus
                        .iter()
                        .any(|g| g.vram_bytes >= demand.need.vram_bytes))
        };
        if reg.live_count() <= self.config.query_all_below + 1 {
            let all = reg
                .live_nodes()
                .filter(|n| n.node != self.id && accept(n))
                .map(|n| n.node.clone())
                .collect();
            (all, false)
        } else {
            let needs_gpu = demand.need.needs_gpu();
            let d = self.config.query_sample;
            (
                reg.sample(&mut self.rng, needs_gpu, d, &self.id, accept),
                true,
            )
        }
    }
}
