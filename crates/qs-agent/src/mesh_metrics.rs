//! The mesh's figures for `/metrics` (seed Part 11's KPIs, as this node measured them; the
//! root's are the mesh's): coordination success, arrival-window hits, prediction accuracy,
//! conflicts, availability, cascade latency, recovery time; the mode and the agents; and
//! the counts behind the rates as counters (`_total`), which Prometheus rates over any
//! window (seed Part 11 reports hourly), breaker recoveries by level among them (the
//! mesh's recovery time per level: the sum over its nodes of the time open over the sum of
//! the incidents).

use crate::mesh::MeshStatus;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type Ratio = Gauge<f64, AtomicU64>;

/// See the module docs.
#[derive(Clone, Default)]
pub struct MeshMetrics {
    success: Ratio,
    hits: Ratio,
    accuracy: Ratio,
    conflicts: Ratio,
    availability: Ratio,
    cascade_p95_ms: Ratio,
    recovery_ms: Ratio,
    agents: Gauge,
    active: Gauge,
    joining: Gauge,
    mode: Gauge,
    is_root: Gauge,
    totals: [Counter; TOTALS],
}

/// The counters: name (`_total` added), help, and the status's count.
const TOTALS: usize = 19;
type Count = fn(&MeshStatus) -> u64;
const COUNTERS: [(&str, &str, Count); TOTALS] = [
    ("mesh_operations", "Operations this root completed", |s| {
        s.kpis.operations
    }),
    ("mesh_sent", "Agents this root's operations sent to", |s| {
        s.kpis.sent
    }),
    (
        "mesh_answered",
        "Answers counted in their window (ready, in transit, conflict)",
        |s| s.kpis.answered,
    ),
    (
        "mesh_window_hits",
        "Agents sent to that were ready within the arrival window",
        |s| s.kpis.window_hits,
    ),
    (
        "mesh_predicted_within_50ms",
        "Answers ready within 50 ms of the predicted time",
        |s| s.kpis.predicted_within_50ms,
    ),
    ("mesh_conflicts", "CONFLICT (-1) answers", |s| {
        s.kpis.conflicts
    }),
    (
        "mesh_skipped",
        "Agents known too late for their operation before sending",
        |s| s.kpis.skipped,
    ),
    (
        "mesh_windows_extended",
        "Clusters that extended their arrival window once, their quorum saying WAIT",
        |s| s.kpis.windows_extended,
    ),
    (
        "mesh_operations_retried",
        "Operations (or priority-first phases) retried once, their quorum saying RETRY",
        |s| s.kpis.retried,
    ),
    (
        "mesh_expired",
        "Messages dropped past their time to live",
        |s| s.kpis.expired,
    ),
    (
        "mesh_dropped",
        "Dispatches a worker agent's full mailbox could not take",
        |s| s.kpis.dropped,
    ),
    ("mesh_recoveries", "Breaker incidents closed", |s| {
        s.kpis.recoveries
    }),
    (
        "mesh_cluster_recoveries",
        "Cluster breaker incidents this lead closed",
        |s| s.kpis.recovered.cluster.closed,
    ),
    (
        "mesh_cluster_recovery_ms",
        "Their time open, milliseconds",
        |s| s.kpis.recovered.cluster.open_ms_total,
    ),
    (
        "mesh_sector_recoveries",
        "Sector breaker incidents this coordinator closed",
        |s| s.kpis.recovered.sector.closed,
    ),
    (
        "mesh_sector_recovery_ms",
        "Their time open, milliseconds",
        |s| s.kpis.recovered.sector.open_ms_total,
    ),
    (
        "mesh_global_recoveries",
        "Global breaker incidents this root closed",
        |s| s.kpis.recovered.global.closed,
    ),
    (
        "mesh_global_recovery_ms",
        "Their time open, milliseconds",
        |s| s.kpis.recovered.global.open_ms_total,
    ),
    (
        "mesh_coordinated_shifts",
        "Clusters where many agents' impedance jumped at once",
        |s| s.kpis.coordinated_shifts,
    ),
];

impl MeshMetrics {
    pub fn register(&self, r: &mut Registry) {
        let ratios: [(&str, &str, &Ratio); 7] = [
            (
                "mesh_coordination_success_rate",
                "Share of this root's operations that reached quorum (PROCEED)",
                &self.success,
            ),
            (
                "mesh_arrival_window_hit_rate",
                "Share of agents sent to that were ready within the arrival window",
                &self.hits,
            ),
            (
                "mesh_prediction_accuracy",
                "Share of answers ready within 50 ms of the predicted time",
                &self.accuracy,
            ),
            (
                "mesh_conflict_rate",
                "Share of answers that were CONFLICT (-1)",
                &self.conflicts,
            ),
            (
                "mesh_availability",
                "Share of observed time with at least 95 % of agents active",
                &self.availability,
            ),
            (
                "mesh_cascade_latency_p95_ms",
                "95th percentile of recent cascades, start to decision, milliseconds",
                &self.cascade_p95_ms,
            ),
            (
                "mesh_recovery_time_ms",
                "Mean time from a breaker opening to its closing, milliseconds",
                &self.recovery_ms,
            ),
        ];
        for (name, help, g) in ratios {
            r.register(name, help, g.clone());
        }
        let gauges: [(&str, &str, &Gauge); 5] = [
            (
                "mesh_agents",
                "Agents in the mesh (the root's view)",
                &self.agents,
            ),
            (
                "mesh_agents_active",
                "Active agents in the mesh (the root's view)",
                &self.active,
            ),
            (
                "mesh_agents_joining",
                "Active agents not yet in the routing pool: joined lately, settling (the root's view)",
                &self.joining,
            ),
            (
                "mesh_mode",
                "Degradation mode: 0 FULL, 1 LIGHT, 2 MODERATE, 3 SEVERE, 4 EMERGENCY",
                &self.mode,
            ),
            (
                "mesh_is_root",
                "1 on the node that is the mesh's root",
                &self.is_root,
            ),
        ];
        for (name, help, g) in gauges {
            r.register(name, help, g.clone());
        }
        for ((name, help, _), c) in COUNTERS.iter().zip(&self.totals) {
            r.register(*name, *help, c.clone());
        }
    }

    pub fn set(&self, s: &MeshStatus) {
        let k = &s.kpis;
        self.success.set(k.coordination_success_rate);
        self.hits.set(k.arrival_window_hit_rate);
        self.accuracy.set(k.prediction_accuracy);
        self.conflicts.set(k.conflict_rate);
        self.availability.set(k.mesh_availability);
        self.cascade_p95_ms.set(k.cascade_latency_p95_ms);
        self.recovery_ms.set(k.recovery_time_ms_mean);
        self.agents.set(i64::from(s.agents));
        self.active.set(i64::from(s.active));
        self.joining.set(i64::from(s.joining));
        let mode = [
            "FULL",
            "DEGRADED_LIGHT",
            "DEGRADED_MODERATE",
            "DEGRADED_SEVERE",
            "EMERGENCY",
        ]
        .iter()
        .position(|m| *m == s.mode)
        .unwrap_or(0);
        self.mode.set(mode as i64);
        self.is_root.set(i64::from(s.is_root));
        // The status's counts only grow (since this node started): each counter takes the
        // larger, so two scrapes at once count nothing twice.
        for ((_, _, count), c) in COUNTERS.iter().zip(&self.totals) {
            c.inner()
                .fetch_max(count(s), std::sync::atomic::Ordering::Relaxed);
        }
    }
}
