//! What `GET /v1/mesh` shows of the mesh at this node: its mode, sectors (at the root), led
//! clusters, breakers, frozen scopes, queued operations, conflicts and seed Part 11's KPIs,
//! read from the core's `MeshNode` at each beat.

use crate::clock::now;
use crate::mesh_agents::LocalAgents;
use qs_core::mesh::node::Incidents;
use qs_core::mesh::{LedAgent, MeshNode, QueuedView};
use qs_store::{MeshSnapshotKind, StateDir, StateFile};
use qs_wire::mesh::{AgentState, ConflictCounts, Scope};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

/// How many views of the mesh preserved of each kind a node keeps (the newest).
pub const EMERGENCY_FILES_KEPT: usize = 8;

/// Seed §6.3's EMERGENCY ("Preserve state to persistent storage") and Part 7's freeze
/// ("State preserved to …"): the file `status` goes to, as JSON, for `kind` at `unix_ms`
/// (known before it is written, so the operator is told at once; [`preserve`] writes it).
pub fn snapshot_path(state: &StateDir, kind: MeshSnapshotKind, unix_ms: u64) -> PathBuf {
    state.path(StateFile::MeshSnapshot(kind, unix_ms))
}

/// [`preserve`] beside the caller (a blocking task, so the mesh's loop beats on): the file's
/// path, known at once; the write is logged, a failure as an error.
pub fn preserve_beside(
    state: StateDir,
    status: MeshStatus,
    kind: MeshSnapshotKind,
    unix_ms: u64,
) -> PathBuf {
    let path = snapshot_path(&state, kind, unix_ms);
    tokio::task::spawn_blocking(move || match preserve(&state, &status, kind, unix_ms) {
        Ok(path) => tracing::warn!(
            "mesh: this node's view of the mesh preserved in {}",
            path.display()
        ),
        Err(e) => tracing::error!("mesh: preserving the state: {e}"),
    });
    path
}

/// Writes `status` as JSON to the state directory's mesh snapshot of `kind` at `unix_ms`
/// and drops all but the newest `EMERGENCY_FILES_KEPT` of that kind (each kind apart, so
/// freezes never drop an EMERGENCY's view); returns the file written.
pub fn preserve(
    state: &StateDir,
    status: &MeshStatus,
    kind: MeshSnapshotKind,
    unix_ms: u64,
) -> Result<PathBuf, qs_store::StoreError> {
    let file = StateFile::MeshSnapshot(kind, unix_ms);
    let path = state.prepare(file)?;
    let bytes = serde_json::to_vec_pretty(status).unwrap_or_default();
    state.write(file, &bytes, Some(0o600))?;
    let present = state.mesh_snapshots(kind)?;
    let excess = present.len().saturating_sub(EMERGENCY_FILES_KEPT);
    for old in &present[..excess] {
        state.remove(StateFile::MeshSnapshot(kind, *old))?;
    }
    Ok(path)
}

/// What `GET /v1/mesh` shows.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MeshStatus {
    pub node: String,
    pub root: Option<String>,
    pub is_root: bool,
    pub mode: &'static str,
    pub agents: u32,
    pub active: u32,
    /// Active agents not yet in the routing pool (joined lately, settling: seed §10.2).
    pub joining: u32,
    pub local_agents: u32,
    pub sectors: Vec<SectorRow>,
    pub clusters: Vec<ClusterRow>,
    /// Each agent of the clusters this node leads (`qs mesh status CLUSTER` lists them).
    pub led_agents: Vec<LedAgent>,
    pub breakers: Vec<String>,
    pub frozen: Vec<String>,
    /// The capability mapping's rules this node routes by (`class E off "llm_inference"`).
    pub excluded: Vec<String>,
    /// At the root: operations queued until the mode is DEGRADED_LIGHT or better, oldest
    /// first (seed §6.3).
    pub queued: Vec<QueuedView>,
    /// Nodes in the mesh for less than their lead-after time: they lead only where no
    /// seasoned node can (seed §10.2).
    pub new_nodes: Vec<String>,
    /// Conflicts this node heard, all time, and by class.
    pub conflicts: u64,
    pub conflicts_by_class: Vec<(String, u64)>,
    /// Of those, the ones still unresolved here (its quarantine), and those resolved.
    pub conflicts_unresolved: ConflictCounts,
    pub conflicts_resolved: u64,
    /// Conflicts escalated to this node from below (as a coordinator, or the root).
    pub conflicts_escalated_here: u64,
    /// Unresolved conflicts dropped from a full quarantine (the ledger still has them).
    pub conflicts_dropped: u64,
    /// Answers taken after their gather closed (as late: their conflicts still logged).
    pub late_answers: u64,
    /// At the root: every lead's unresolved conflicts, summed up the tree.
    pub mesh_conflicts: Option<ConflictCounts>,
    pub kpis: Kpis,
}

/// One sector, as the root sees it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SectorRow {
    pub sector: u32,
    pub coordinator: String,
    pub clusters: u32,
    pub agents: u32,
    pub active: u32,
    pub joining: u32,
    pub mean_impedance_ms: f64,
    pub p95_impedance_ms: f64,
    pub classes: [u32; 6],
    pub anomalies: u32,
    pub breaker_open: bool,
    /// Its leads' unresolved conflicts.
    pub conflicts: ConflictCounts,
}

/// One cluster this node leads.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClusterRow {
    pub cluster: u32,
    /// Its sector, if the tree still holds it.
    pub sector: Option<u32>,
    pub agents: u32,
    pub active: u32,
    pub joining: u32,
    /// Quarantined after an integrity failure or byzantine answers (until a heal).
    pub quarantined: u32,
    /// Active, held out of the routing pool for a while (a conflict while integrating, or
    /// operations missed in a row).
    pub held: u32,
    /// Whose path's delay is in a spike.
    pub spiking: u32,
    pub classes: [u32; 6],
    pub mean_score_ms: f64,
}

/// Seed Part 11's KPIs as this node measured them (the root's are the mesh's).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Kpis {
    pub operations: u64,
    pub coordination_success_rate: f64,
    pub arrival_window_hit_rate: f64,
    pub prediction_accuracy: f64,
    pub conflict_rate: f64,
    pub mesh_availability: f64,
    pub cascade_latency_p95_ms: f64,
    /// How long ago the last operation ended (none yet: absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_operation_ago_ms: Option<u64>,
    pub recoveries: u64,
    pub recovery_time_ms_mean: f64,
    pub expired: u64,
    /// Dispatches a worker agent's full mailbox could not take.
    pub dropped: u64,
    pub coordinated_shifts: u64,
    /// The counts behind the rates, since this node started (for Prometheus' `rate()`):
    /// agents sent to, answers counted, ready in the window, within 50 ms, conflicts,
    /// known too late before sending.
    pub sent: u64,
    pub answered: u64,
    pub window_hits: u64,
    pub predicted_within_50ms: u64,
    pub conflicts: u64,
    pub skipped: u64,
    /// Clusters that extended their window once, their quorum saying WAIT (seed §5.2).
    pub windows_extended: u64,
    /// Operations (or priority-first phases) retried once, their quorum saying RETRY.
    pub retried: u64,
    /// Breaker incidents this node closed, by level (a lead's clusters', a coordinator's
    /// sectors', the root's whole mesh's).
    pub recovered: qs_core::mesh::node::Recovered,
}

pub(crate) fn status(
    node: &mut MeshNode,
    local: &LocalAgents,
    new_nodes: Vec<String>,
) -> MeshStatus {
    let (agents, active) = node.global_counts();
    let k = node.kpis().clone();
    let mut clusters: BTreeMap<u32, ClusterRow> = BTreeMap::new();
    let led_agents = node.led_agents(now());
    for a in &led_agents {
        let sector = node.tree().cluster(a.cluster).map(|c| c.sector.0);
        let row = clusters.entry(a.cluster.0).or_insert_with(|| ClusterRow {
            cluster: a.cluster.0,
            sector,
            ..ClusterRow::default()
        });
        row.agents += 1;
        if a.state == AgentState::Active {
            row.active += 1;
            row.joining += u32::from(!a.admitted && a.held_ms == 0);
            row.held += u32::from(!a.admitted && a.held_ms > 0);
        }
        row.quarantined += u32::from(a.state == AgentState::Quarantined);
        row.spiking += u32::from(a.spiking);
        row.classes[a.class.index()] += 1;
        row.mean_score_ms += a.score_ms;
    }
    for row in clusters.values_mut() {
        row.mean_score_ms /= f64::from(row.agents.max(1));
    }
    MeshStatus {
        node: node.id().to_string(),
        root: node.tree().root.as_ref().map(|r| r.to_string()),
        is_root: node.tree().root.as_ref() == Some(node.id()),
        mode: node.mode().name(),
        agents,
        active,
        joining: node.global_joining(),
        local_agents: local.count(),
        sectors: node
            .sector_summaries()
            .values()
            .map(|s| SectorRow {
                sector: s.sector.0,
                coordinator: s.coordinator.to_string(),
                clusters: s.cluster_count,
                agents: s.total_agents,
                active: s.active_agents,
                joining: s.joining_agents,
                mean_impedance_ms: s.mean_impedance_ms,
                p95_impedance_ms: s.p95_impedance_ms,
                classes: s.classes,
                anomalies: s.anomalies,
                breaker_open: s.breaker_open,
                conflicts: s.conflicts,
            })
            .collect(),
        clusters: clusters.into_values().collect(),
        led_agents,
        breakers: node
            .breakers()
            .not_closed()
            .iter()
            .map(|(s, b)| format!("{s} {b:?}"))
            .collect(),
        frozen: node.frozen().iter().map(Scope::to_string).collect(),
        excluded: node.excluded().iter().map(ToString::to_string).collect(),
        queued: node.queued(now()),
        new_nodes,
        conflicts: node.conflicts().total(),
        conflicts_by_class: node
            .conflicts()
            .by_class()
            .iter()
            .map(|(c, n)| (format!("{c:?}"), *n))
            .collect(),
        conflicts_unresolved: node.conflicts().counts(now(), |_| true),
        conflicts_resolved: node.conflicts().resolved(),
        conflicts_escalated_here: node.conflicts().escalated_here(),
        conflicts_dropped: node.conflicts().dropped(),
        late_answers: node.late_answers(),
        mesh_conflicts: node.mesh_conflicts(now()),
        kpis: Kpis {
            operations: k.operations,
            coordination_success_rate: k.coordination_success_rate(),
            arrival_window_hit_rate: k.window_hit_rate(),
            prediction_accuracy: k.prediction_accuracy(),
            conflict_rate: k.conflict_rate(),
            mesh_availability: k.availability(),
            cascade_latency_p95_ms: k.cascade_p95_ms(),
            last_operation_ago_ms: k
                .last_operation_ms
                .map(|t| now().as_millis().saturating_sub(t)),
            recoveries: k.recovered.total().closed,
            recovery_time_ms_mean: match k.recovered.total() {
                Incidents { closed: 0, .. } => 0.0,
                all => all.open_ms_total as f64 / all.closed as f64,
            },
            expired: node.expired() + local.expired.load(Ordering::Relaxed),
            dropped: local.dropped.load(Ordering::Relaxed),
            coordinated_shifts: k.coordinated_shifts,
            sent: k.sent,
            answered: k.answered,
            window_hits: k.window_hits,
            predicted_within_50ms: k.predicted_within_50ms,
            conflicts: k.conflicts,
            skipped: k.skipped,
            windows_extended: k.windows_extended,
            retried: k.retried,
            recovered: k.recovered,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each EMERGENCY preserves the node's view in its own file, readable as the status it
    /// was; the oldest go past `EMERGENCY_FILES_KEPT`.
    #[test]
    fn emergencies_preserve_the_view_and_keep_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let status = |mode| MeshStatus {
            node: "m1".into(),
            mode,
            agents: 1_000,
            active: 200,
            ..MeshStatus::default()
        };
        let mut written = Vec::new();
        for k in 0..EMERGENCY_FILES_KEPT as u64 + 3 {
            let mode = if k % 2 == 0 { "EMERGENCY" } else { "FULL" };
            let at_ms = 1_700_000_000_000 + k;
            written
                .push(preserve(&state, &status(mode), MeshSnapshotKind::Emergency, at_ms).unwrap());
        }
        // A freeze's view goes apart: it drops none of EMERGENCY's.
        let frozen = preserve(&state, &status("FULL"), MeshSnapshotKind::Frozen, 1).unwrap();
        assert_eq!(frozen, snapshot_path(&state, MeshSnapshotKind::Frozen, 1));
        assert!(frozen.exists() && frozen.to_string_lossy().contains("mesh-frozen"));
        let kept: Vec<PathBuf> = (state.mesh_snapshots(MeshSnapshotKind::Emergency))
            .unwrap()
            .into_iter()
            .map(|ms| state.path(StateFile::MeshSnapshot(MeshSnapshotKind::Emergency, ms)))
            .collect();
        assert_eq!(kept, written[3..]);
        let read = |p: &PathBuf| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
        };
        let (last, before) = (read(&kept[kept.len() - 1]), read(&kept[kept.len() - 2]));
        assert_eq!(
            (&last["mode"], &before["mode"]),
            (&"EMERGENCY".into(), &"FULL".into())
        );
        assert_eq!(last["active"], 200);
        assert_eq!(last["node"], "m1");
    }
}
