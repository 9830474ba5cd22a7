//! The invariants checked after every simulated event: capacity never over-committed, no
//! stateless double-booking past `max_per_node`, at most one copy of a singleton.

use super::Sim;
use qs_wire::{NodeId, ServiceName};
use std::collections::BTreeMap;

impl Sim {
    /// Capacity never over-committed; no stateless double-booking; at most one singleton.
    pub(super) fn check_all(&mut self) {
        let mut found = Vec::new();
        let mut singletons: BTreeMap<&ServiceName, Vec<&NodeId>> = BTreeMap::new();
        for n in self.nodes.iter().filter(|n| n.alive) {
            let (cap, c) = (n.core.capacity(), n.core.committed());
            let id = n.core.id();
            if c.cpu_millicores > cap.cpu_millicores || c.memory_bytes > cap.memory_bytes {
                found.push(format!("{id} over-committed: {c:?} of {cap:?}"));
            }
            for (g, used) in cap.gpus.iter().zip(&c.gpu_vram_bytes) {
                if *used > g.vram_bytes {
                    found.push(format!(
                        "{id} VRAM over-committed: {used} of {}",
                        g.vram_bytes
                    ));
                }
            }
            let mut per_service: BTreeMap<&ServiceName, u32> = BTreeMap::new();
            for h in n.core.hosted().values() {
                *per_service.entry(&h.service).or_default() += 1;
                if h.demand.pattern.is_singleton() {
                    singletons.entry(&h.service).or_default().push(id);
                }
            }
            for (svc, count) in per_service {
                let max = self.registry.spec(svc).map_or(u32::MAX, |s| s.max_per_node);
                if count > max {
                    found.push(format!(
                        "{id} runs {count} instances of {svc} (max {max} per node)"
                    ));
                }
            }
        }
        for (svc, hosts) in singletons {
            if hosts.len() > 1 {
                found.push(format!("singleton {svc} runs on {hosts:?}"));
            }
        }
        for f in found {
            self.violate(f);
        }
    }
}
