//! What the simulator observes of its nodes: the simulated sensor's samples, and each
//! ledger record (counted, checked against the gate, hashed into the trace).

use super::Sim;
use qs_wire::{Event, GpuLoad, InstanceId, InstanceLoad, Load, LocalVerdict, Record};
use std::collections::BTreeMap;
use std::hash::Hash;

impl Sim {
    /// The simulated sensor: background load plus each instance's share.
    pub(super) fn sense(&self, i: usize) -> (Load, BTreeMap<InstanceId, InstanceLoad>) {
        let n = &self.nodes[i];
        let cap = n.core.capacity();
        let mut cpu = n.background * cap.cpu_millicores as f64;
        let mut mem = 0u64;
        let mut gpus = vec![GpuLoad::default(); cap.gpus.len()];
        let mut per = BTreeMap::new();
        for (id, p) in &n.procs {
            let used = (p.need.cpu_millicores as f64 * p.util) as u64;
            let used_mem = p.need.memory_bytes / 2;
            cpu += used as f64;
            mem += used_mem;
            let mut own = InstanceLoad {
                cpu_millicores: used,
                memory_bytes: used_mem,
                ..InstanceLoad::default()
            };
            if let Some(i) = p.gpu.map(|g| g as usize)
                && let (Some(g), Some(total)) = (gpus.get_mut(i), cap.gpus.get(i))
            {
                // A model keeps its GPU busy in proportion to the share of VRAM it holds.
                g.vram_used_bytes += p.need.vram_bytes;
                let share = p.need.vram_bytes as f64 / total.vram_bytes.max(1) as f64;
                own.gpu_util = (0.6 * share * p.util / 0.4).min(1.0);
                own.vram_bytes = p.need.vram_bytes;
                g.util = (g.util + own.gpu_util).min(1.0);
            }
            per.insert(id.clone(), own);
        }
        let load = Load {
            cpu_util: (cpu / cap.cpu_millicores.max(1) as f64).min(1.0),
            memory_used_bytes: mem,
            gpus,
        };
        (load, per)
    }

    pub(super) fn on_record(&mut self, i: usize, event: Event) {
        let gate = self.config.gate_min;
        match &event {
            Event::Placed { latency_us, on, .. } => {
                self.counters.placed += 1;
                if on == self.nodes[i].core.id() {
                    self.counters.placed_locally += 1;
                }
                self.latency_us.saturating_record(*latency_us);
            }
            Event::Unplaced { retry: false, .. } => self.counters.gave_up += 1,
            Event::DispatchRefused { .. } => self.counters.dispatch_refused += 1,
            Event::Dispatched { composite, to, .. }
            | Event::LocalCheck {
                verdict: LocalVerdict::Start { composite },
                placement: qs_wire::PlacementId { steward: to, .. },
            } if self.check && composite.value <= gate => {
                self.violate(format!("gate bypassed: {to} chosen with {composite}"));
            }
            _ => {}
        }
        let record = Record {
            seq: self.record_seq,
            at_us: self.now.as_micros(),
            node: self.nodes[i].core.id().clone(),
            event,
        };
        self.record_seq += 1;
        record.hash(&mut self.trace);
        if self.keep_records {
            self.records.push(record);
        }
    }
}
