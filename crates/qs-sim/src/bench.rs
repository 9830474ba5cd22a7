//! `qs bench placement`: placement decisions per second through the core, by fleet size.
//!
//! Every placement takes the full path of the 5 steps (a gpu-inference service always asks
//! the fleet, since it must compare VRAM): sense, local check, capacity query to every node
//! (small fleets) or a weighted sample (large ones), offers, gate, dispatch, late-binding
//! accept, ledger events. Messages cross an in-process network in zero time, so the figure
//! is the cost of the decisions themselves.

use crate::engine::{Action, Sim};
use crate::net::Network;
use qs_core::{Config, Time};
use qs_wire::{
    Capacity, GpuCapacity, HaPattern, NodeId, NodeSpec, Resources, ServiceName, WorkloadKind,
    WorkloadSpec,
};
use std::collections::BTreeMap;

const MIB: u64 = 1024 * 1024;

/// One measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct PlacementRun {
    pub nodes: usize,
    pub placements: u64,
    pub wall_seconds: f64,
    /// Messages between nodes per placement.
    pub messages_per_placement: f64,
}

impl PlacementRun {
    pub fn per_second(&self) -> f64 {
        self.placements as f64 / self.wall_seconds
    }
    pub fn ns_per_placement(&self) -> f64 {
        self.wall_seconds * 1e9 / self.placements as f64
    }
}

fn bench_fleet(n: usize) -> Vec<NodeSpec> {
    (0..n)
        .map(|i| NodeSpec {
            id: NodeId::new(&format!("b{i}")).expect("generated names are valid"),
            level: (i % 3) as u8,
            labels: BTreeMap::new(),
            capacity: Capacity {
                cpu_millicores: 64_000,
                memory_bytes: 256 * 1024 * MIB,
                gpus: vec![GpuCapacity {
                    vram_bytes: 80 * 1024 * MIB,
                }],
            },
        })
        .collect()
}

/// Places `placements` single-replica gpu-inference services on a fleet of `nodes`, and
/// measures the wall time from the first spec to the last placement (fleet set-up excluded).
pub fn placement(
    nodes: usize,
    placements: usize,
    seed: u64,
    clock: crate::WallClock<'_>,
) -> PlacementRun {
    let config = Config::default();
    // Start once every node has heard every other and is ready to steward.
    let ready = Time::from_millis(config.join_settle_ms + 100);
    let mut sim = Sim::new(&bench_fleet(nodes), 1, config, Network::instant(), seed);
    sim.run_until(ready);
    let need = Resources {
        cpu_millicores: 10,
        memory_bytes: 16 * MIB,
        vram_bytes: 16 * MIB,
    };
    let start = sim.now();
    for i in 0..placements {
        let spec = WorkloadSpec {
            name: ServiceName::new(&format!("svc-{i}")).expect("generated names are valid"),
            kind: WorkloadKind::Service {
                replicas: 1,
                max_replicas: 1,
                auto_promote: false,
            },
            pattern: HaPattern::GpuInference,
            resources: need,
            labels: BTreeMap::new(),
            command: None,
            env: BTreeMap::new(),
            user: None,
            max_per_node: 1,
            health: None,
            address: None,
            publish: None,
        };
        sim.schedule(start, Action::Apply(spec));
    }
    let before = sim.counters().clone();
    let target = before.placed + placements as u64;
    let wall = clock();
    let done = sim.run_while_not(Time::from_millis(600_000), |s| {
        s.counters().placed >= target
    });
    let wall_seconds = clock() - wall;
    assert!(done, "the benchmark fleet placed everything");
    let c = sim.counters();
    let placed = c.placed - before.placed;
    PlacementRun {
        nodes,
        placements: placed,
        wall_seconds,
        messages_per_placement: (c.messages - before.messages) as f64 / placed as f64,
    }
}

/// The median of a non-empty list.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bench_placement_takes_the_full_path() {
        // No wall figure is checked: a stopped clock does.
        let run = placement(20, 200, 1, &|| 0.0);
        assert_eq!(run.placements, 200);
        // Query to the 19 others and 19 answers, then a dispatch and its reply unless the
        // steward's own offer won.
        assert!(run.messages_per_placement >= 38.0, "{run:?}");
        let sampled = placement(200, 200, 1, &|| 0.0);
        assert!(sampled.messages_per_placement <= 20.0, "{sampled:?}");
    }
}
