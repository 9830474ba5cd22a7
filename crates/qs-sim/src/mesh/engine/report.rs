//! The mesh simulator's report of a run: what the cascades did, the hierarchy, the traffic,
//! the mode and breakers, conflicts, crashes and restarts, and the trace hash.

use super::*;

impl MeshSim {
    /// The run's report.
    pub fn report(&self, cfg: &MeshSimConfig, wall_seconds: f64) -> MeshReport {
        let sim_seconds = self.now.as_millis() as f64 / 1000.0;
        let root = self.root().map(|r| &self.nodes[r]);
        let breakers = root.map(|r| r.breakers());
        let mut h = self.trace;
        h.write_u64(self.events);
        MeshReport {
            agents: self.agents.len(),
            hosts: self.nodes.len(),
            seed: cfg.seed,
            clusters: self
                .tree
                .clusters
                .iter()
                .filter(|c| !c.agents.is_empty())
                .count(),
            sectors: self.tree.sectors.len(),
            largest_cluster: self
                .tree
                .clusters
                .iter()
                .map(|c| c.agents.len())
                .max()
                .unwrap_or(0),
            largest_sector: self
                .tree
                .sectors
                .iter()
                .map(|s| s.clusters.len())
                .max()
                .unwrap_or(0),
            sim_seconds,
            wall_seconds,
            speed: match wall_seconds > 0.0 {
                true => sim_seconds / wall_seconds,
                false => 0.0,
            },
            events: self.events,
            messages: self.messages,
            lost: self.lost,
            beats_per_host_per_second: self.beats as f64
                / self.nodes.len() as f64
                / sim_seconds.max(1e-9),
            max_received_per_node_per_second: *self.received.iter().max().unwrap_or(&0) as f64
                / sim_seconds.max(1e-9),
            detection_ms: self.detection_ms.clone(),
            mode: root.map_or("FULL", |r| r.mode().name()),
            open_cluster_breakers: self
                .nodes
                .iter()
                .map(|n| n.breakers().open_count(false))
                .sum(),
            open_sector_breakers: self
                .nodes
                .iter()
                .map(|n| n.breakers().open_count(true))
                .sum(),
            global_breaker_open: breakers
                .is_some_and(|b| b.state(Scope::Global) == qs_wire::mesh::BreakerState::Open),
            conflicts: crate::mesh::ConflictTotals::of(&self.nodes, root, self.now),
            leads: root.map_or_else(Default::default, |r| {
                let mut h = qs_wire::mesh::LeadHistogram::default();
                for s in r.sector_summaries().values() {
                    h.add(&s.leads);
                }
                h
            }),
            results: self.results.clone(),
            ready_after_ms: BTreeMap::new(),
            refused: self.refused.clone(),
            queued: self.queued.clone(),
            routed_around: self.routed_around,
            agents_crashed: self.crashed,
            agents_restarted: self.restarts.done.len() as u64,
            restarted_in_pool: self.restarted_in_pool(),
            refused_senders: self.nodes.iter().map(MeshNode::refused_senders).sum(),
            mode_changes: self.mode_changes.clone(),
            integration: self.scale_out.as_ref().map(|t| t.report.clone()),
            trace_hash: format!("{:016x}", h.finish() ^ of_str("mesh")),
            peak_rss_bytes: None,
            calibrations: match cfg.calibrate {
                true => CALIBRATIONS as usize,
                false => 0,
            },
        }
    }
}
