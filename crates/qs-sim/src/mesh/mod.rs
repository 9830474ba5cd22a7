//! The mesh scenario (`qs sim --agents N`, `qs bench cascade`): hosts with agents of every
//! impedance class spread over WAN regions, each host a real [`MeshNode`] from the core,
//! driven on a virtual clock by [`engine::MeshSim`]; agents that fail, hosts that die, and
//! cascades of each mode.

pub mod engine;
pub mod gossip;
pub mod latency;
mod scale_out;

pub use engine::{MeshSim, SimAgent};
pub use latency::{Matrix, MatrixError, Wan};
pub use scale_out::{Integration, ScaleOut};

use qs_core::Time;
use qs_core::mesh::{MeshNode, OpResult};
use qs_wire::mesh::{CascadeMode, ConflictCounts, OpId};
use serde::Serialize;
use std::collections::BTreeMap;

/// Most agents and hosts the mesh simulator takes.
pub const MAX_AGENTS: usize = 1_000_000;
/// The longest a simulated restart takes: ten minutes.
pub const MAX_RESTART_MS: u64 = 600_000;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct MeshSimConfig {
    pub agents: usize,
    /// Hosts the agents are spread over (a host is a node); default one per 30 agents.
    pub hosts: Option<usize>,
    pub seed: u64,
    pub duration_ms: u64,
    pub wan: Wan,
    /// Share of agents that go down at `down_at_ms`.
    pub down_fraction: f64,
    pub down_at_ms: u64,
    /// How long a restart takes: a crashed agent its lead asks its host to restart (seed
    /// §6.1's AGENT_CRASH) is up again this long after, as a new registration. `None`: a
    /// down agent stays down (its replacement also fails).
    pub restart_ms: Option<u64>,
    /// Hosts killed, and when.
    pub kill_hosts: Vec<KillHost>,
    /// Cascades the root starts.
    pub cascades: Vec<Cascade>,
    /// Calibration broadcasts before the first cascade, so profiles are measured.
    pub calibrate: bool,
    /// New hosts with new agents that join the running mesh (seed §10.2).
    pub scale_out: Option<ScaleOut>,
    /// Hosts name their region as their zone, so the hierarchy keeps each cluster and
    /// sector within one (as an operator would with `qs agent --mesh-zone`); off by default.
    pub zones: bool,
}

/// A host killed at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KillHost {
    pub at_ms: u64,
    pub host: usize,
}

/// A cascade started at a time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cascade {
    pub at_ms: u64,
    pub mode: CascadeMode,
    /// Cap on how far ahead the target arrival is set.
    pub budget_ms: Option<u64>,
    /// A delegation instead of a broadcast: one agent, the best available.
    pub delegate: Option<Delegation>,
}

/// A task delegated to the one best available agent (`qs mesh delegate`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Delegation {
    /// Of this class only.
    pub class: Option<qs_wire::mesh::ImpedanceClass>,
    /// How long its answer is awaited past its arrival.
    pub window_ms: u64,
}

impl MeshSimConfig {
    pub fn new(agents: usize, seed: u64) -> MeshSimConfig {
        MeshSimConfig {
            agents,
            hosts: None,
            seed,
            duration_ms: 10_000,
            wan: Wan::default(),
            down_fraction: 0.0,
            down_at_ms: 0,
            restart_ms: None,
            kill_hosts: Vec::new(),
            cascades: Vec::new(),
            calibrate: true,
            scale_out: None,
            zones: false,
        }
    }

    pub fn hosts(&self) -> usize {
        self.hosts
            .unwrap_or(self.agents.div_ceil(30))
            .clamp(1, self.agents.max(1))
    }

    /// Refuses values out of range, naming the flag.
    pub fn validate(&self) -> Result<(), crate::SimConfigError> {
        let refuse =
            |field: &'static str, message: String| Err(crate::SimConfigError { field, message });
        if !(1..=MAX_AGENTS).contains(&self.agents) {
            return refuse(
                "agents",
                format!("must be in 1..={MAX_AGENTS}, got {}", self.agents),
            );
        }
        if let Some(h) = self.hosts
            && !(1..=self.agents).contains(&h)
        {
            return refuse("hosts", format!("must be in 1..={}, got {h}", self.agents));
        }
        if !(100..=3_600_000).contains(&self.duration_ms) {
            return refuse(
                "duration-ms",
                format!("must be in 100..=3600000, got {}", self.duration_ms),
            );
        }
        if !(0.0..=1.0).contains(&self.down_fraction) {
            return refuse(
                "down-fraction",
                format!("must be in 0..=1, got {}", self.down_fraction),
            );
        }
        if let Some(ms) = self.restart_ms
            && !(1..=MAX_RESTART_MS).contains(&ms)
        {
            return refuse(
                "restart-ms",
                format!("must be in 1..={MAX_RESTART_MS}, got {ms}"),
            );
        }
        if let Some(s) = &self.scale_out
            && (!(1..=MAX_AGENTS - self.agents).contains(&s.agents) || s.at_ms >= self.duration_ms)
        {
            return refuse(
                "scale-out",
                format!(
                    "{} agents at {} ms: at most {} more agents, before the end ({} ms)",
                    s.agents,
                    s.at_ms,
                    MAX_AGENTS - self.agents,
                    self.duration_ms
                ),
            );
        }
        let w = &self.wan;
        if !(0.0..=0.5).contains(&w.loss)
            || !(0.0..=0.5).contains(&w.tail)
            || !(0.0..=1.0).contains(&w.jitter)
        {
            return refuse(
                "loss",
                "loss and tail must be in 0..=0.5, jitter in 0..=1".into(),
            );
        }
        Ok(())
    }
}

/// What one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct MeshReport {
    pub agents: usize,
    pub hosts: usize,
    pub seed: u64,
    pub clusters: usize,
    pub sectors: usize,
    pub largest_cluster: usize,
    pub largest_sector: usize,
    pub sim_seconds: f64,
    pub wall_seconds: f64,
    /// Simulated seconds per wall second.
    pub speed: f64,
    pub events: u64,
    pub messages: u64,
    pub lost: u64,
    /// Beats per host per simulated second, and the most messages any node received per
    /// simulated second: no node hears everyone.
    pub beats_per_host_per_second: f64,
    pub max_received_per_node_per_second: f64,
    /// Milliseconds from a host's death to its lead's verdict, one per killed host heard.
    pub detection_ms: Vec<f64>,
    pub mode: &'static str,
    /// Each change of the root's mode, as it told its shell.
    pub mode_changes: Vec<ModeChange>,
    pub open_cluster_breakers: usize,
    pub open_sector_breakers: usize,
    pub global_breaker_open: bool,
    pub conflicts: ConflictTotals,
    /// The root's lead histogram (per class A–F, buckets of `LEAD_BUCKETS_MS`) at the end.
    pub leads: qs_wire::mesh::LeadHistogram,
    pub results: Vec<OpResult>,
    /// When each agent sent an operation was ready, milliseconds after its start, by the
    /// number its envelope carried (see [`MeshReport::reach_p95_ms`]; `engine::run` moves it
    /// here).
    #[serde(skip)]
    pub ready_after_ms: BTreeMap<OpId, Vec<f64>>,
    pub refused: Vec<String>,
    /// Cascades the root queued (DEGRADED_MODERATE queues non-urgent ones): their results
    /// come later, with `results`.
    pub queued: Vec<u64>,
    /// Times a lead routed around an agent that missed operations in a row.
    pub routed_around: u64,
    /// Agents their lead took for crashed (seed §6.1's AGENT_CRASH: offline 30 s while
    /// their host lives).
    pub agents_crashed: u64,
    /// Of those, the agents their host restarted (with `restart_ms`), and how many of them
    /// are back in their lead's routing pool at the end.
    pub agents_restarted: u64,
    pub restarted_in_pool: u64,
    /// Messages the nodes refused because the tree does not name their sender for them
    /// (none, when every node runs the same core).
    pub refused_senders: u64,
    /// How the agents of a scale-out joined the routing pool.
    pub integration: Option<Integration>,
    pub trace_hash: String,
    pub peak_rss_bytes: Option<u64>,
    /// The first results are the calibration's broadcasts.
    pub calibrations: usize,
}

/// A change of the root's mode.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModeChange {
    pub at_ms: u64,
    pub from: &'static str,
    pub to: &'static str,
}

/// The conflict logs across the mesh at the end of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConflictTotals {
    /// Heard by the leads (and by the root, in the urgent mode).
    pub heard: u64,
    pub resolved: u64,
    /// Notices escalated to coordinators and the root.
    pub escalated: u64,
    /// Still unresolved, as the leads count them, and as the root's summaries say.
    pub unresolved: ConflictCounts,
    pub unresolved_at_root: ConflictCounts,
    /// Answers taken after their gather closed (their conflicts among those heard).
    pub late_answers: u64,
}

impl ConflictTotals {
    pub fn of(nodes: &[MeshNode], root: Option<&MeshNode>, now: Time) -> ConflictTotals {
        let mut t = ConflictTotals::default();
        for n in nodes {
            let log = n.conflicts();
            t.heard += log.total();
            t.resolved += log.resolved();
            t.escalated += log.escalated_here();
            t.unresolved.add(&log.counts(now, |_| true));
            t.late_answers += n.late_answers();
        }
        t.unresolved_at_root = root.and_then(|r| r.mesh_conflicts(now)).unwrap_or_default();
        t
    }
}

impl MeshReport {
    /// The scenario's own operations: the results past the calibration's.
    pub fn measured(&self) -> &[OpResult] {
        &self.results[self.calibrations.min(self.results.len())..]
    }

    /// How long after its start 95 % of the agents operation `op` was sent to (in every
    /// phase) were ready, milliseconds, as the simulator saw them: the way down alone, the
    /// seed's "total cascade latency" (§8.1), what gossip's reach measures. `None` if fewer
    /// were ever ready (down, or the message lost).
    pub fn reach_p95_ms(&self, op: &OpResult) -> Option<f64> {
        let mut v: Vec<f64> = op
            .phases
            .iter()
            .filter_map(|p| self.ready_after_ms.get(&p.op))
            .flatten()
            .copied()
            .collect();
        let sent: u64 = op.phases.iter().map(|p| u64::from(p.tally.sent)).sum();
        let nth = (sent * 95).div_ceil(100) as usize;
        if nth == 0 || v.len() < nth {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(v[nth - 1])
    }
}

/// Which cascade mode, by name (for flags).
pub fn parse_mode(s: &str) -> Option<CascadeMode> {
    match s {
        "wave" => Some(CascadeMode::Wave),
        "parallel" => Some(CascadeMode::Parallel),
        "priority-first" | "priority" => Some(CascadeMode::PriorityFirst),
        _ => None,
    }
}
