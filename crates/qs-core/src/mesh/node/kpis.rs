//! Seed Part 11's KPIs as the root counts them: coordination success, arrival-window hits,
//! prediction accuracy, conflicts, availability, cascade latency, recovery time.

use super::impedance;
use serde::Serialize;
use std::collections::VecDeque;

/// The KPIs of seed Part 11, as counters (the shell exports them on `/metrics`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Kpis {
    pub operations: u64,
    pub operations_with_quorum: u64,
    pub sent: u64,
    pub answered: u64,
    pub window_hits: u64,
    pub predicted_within_50ms: u64,
    pub conflicts: u64,
    pub expired: u64,
    pub skipped: u64,
    /// Clusters that extended their window once because their quorum said WAIT.
    pub windows_extended: u64,
    /// Phases retried once because their quorum said RETRY.
    pub retried: u64,
    /// Recent cascade latencies, milliseconds (at most [`MAX_LATENCIES`]).
    pub cascade_latencies_ms: VecDeque<f64>,
    /// Time observed, and time with at least 95 % of agents active (the root's view).
    pub observed_ms: u64,
    pub available_ms: u64,
    /// Breaker incidents closed and their time open, by the level of the breaker (seed Part
    /// 11's recovery time: a cluster's within 5 minutes, a sector's within 15): each node
    /// counts those it holds.
    pub recovered: Recovered,
    /// Clusters where many agents' impedance jumped at once (seed §9.2).
    pub coordinated_shifts: u64,
    /// When the last operation ended, on this node's clock (milliseconds).
    pub last_operation_ms: Option<u64>,
}

/// Breaker incidents closed, by level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Recovered {
    pub cluster: Incidents,
    pub sector: Incidents,
    pub global: Incidents,
}

/// Breaker incidents closed at one level, and their total time open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Incidents {
    pub closed: u64,
    pub open_ms_total: u64,
}

impl Recovered {
    /// An incident of the breaker of `scope` closed after `open_ms`.
    pub fn closed(&mut self, scope: qs_wire::mesh::Scope, open_ms: u64) {
        let level = match scope {
            qs_wire::mesh::Scope::Cluster(_) => &mut self.cluster,
            qs_wire::mesh::Scope::Sector(_) => &mut self.sector,
            qs_wire::mesh::Scope::Global => &mut self.global,
        };
        level.closed += 1;
        level.open_ms_total = level.open_ms_total.saturating_add(open_ms);
    }

    /// Every level's together.
    pub fn total(&self) -> Incidents {
        let levels = [self.cluster, self.sector, self.global];
        Incidents {
            closed: levels.iter().map(|l| l.closed).sum(),
            open_ms_total: levels
                .iter()
                .fold(0u64, |a, l| a.saturating_add(l.open_ms_total)),
        }
    }
}

/// Cascade latencies kept for the p95.
pub const MAX_LATENCIES: usize = 1_024;

impl Kpis {
    pub fn cascade_p95_ms(&self) -> f64 {
        let mut v: Vec<f64> = self.cascade_latencies_ms.iter().copied().collect();
        impedance::p95(&mut v)
    }
    fn rate(a: u64, b: u64) -> f64 {
        match b {
            0 => 0.0,
            _ => a as f64 / b as f64,
        }
    }
    pub fn coordination_success_rate(&self) -> f64 {
        Self::rate(self.operations_with_quorum, self.operations)
    }
    pub fn window_hit_rate(&self) -> f64 {
        Self::rate(self.window_hits, self.sent)
    }
    pub fn prediction_accuracy(&self) -> f64 {
        Self::rate(self.predicted_within_50ms, self.answered)
    }
    pub fn conflict_rate(&self) -> f64 {
        Self::rate(self.conflicts, self.answered)
    }
    pub fn availability(&self) -> f64 {
        Self::rate(self.available_ms, self.observed_ms)
    }
}
