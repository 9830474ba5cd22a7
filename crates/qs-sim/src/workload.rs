//! The `qs sim` scenario: a random heterogeneous fleet and a placement workload with load
//! spikes, crashes, broken nodes and node deaths, all drawn from one seed.

use crate::engine::{Action, Sim, Violation};
use crate::net::Network;
use qs_core::{Config, Rng, Time};
use qs_wire::{
    Capacity, GpuCapacity, HaPattern, NodeId, NodeSpec, Resources, ServiceName, WorkloadKind,
    WorkloadSpec,
};
use serde::Serialize;
use std::collections::BTreeMap;

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;
pub const MAX_NODES: usize = 100_000;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub nodes: usize,
    pub seed: u64,
    /// Simulated time to run, milliseconds.
    pub duration_ms: u64,
    /// Services to apply; jobs are a fifth of that again. `None`: a quarter of the nodes,
    /// at least 4, at most 20,000.
    pub services: Option<usize>,
    /// Fraction of nodes killed during the run.
    pub kill_fraction: f64,
    pub check_invariants: bool,
    pub keep_records: bool,
    pub core: Config,
    pub network: Network,
}

impl SimConfig {
    pub fn new(nodes: usize, seed: u64) -> SimConfig {
        SimConfig {
            nodes,
            seed,
            duration_ms: 10_000,
            services: None,
            kill_fraction: 0.01,
            check_invariants: false,
            keep_records: false,
            core: Config::default(),
            network: Network::lan_and_vpn(),
        }
    }

    pub fn services(&self) -> usize {
        self.services.unwrap_or((self.nodes / 4).clamp(4, 20_000))
    }

    /// Refuses values out of range, naming the flag.
    pub fn validate(&self) -> Result<(), SimConfigError> {
        let refuse = |field: &'static str, message: String| Err(SimConfigError { field, message });
        if !(1..=MAX_NODES).contains(&self.nodes) {
            return refuse(
                "nodes",
                format!("must be in 1..={MAX_NODES}, got {}", self.nodes),
            );
        }
        if !(100..=3_600_000).contains(&self.duration_ms) {
            return refuse(
                "duration-ms",
                format!("must be in 100..=3600000, got {}", self.duration_ms),
            );
        }
        if self.services() > 100_000 {
            return refuse(
                "services",
                format!("must be at most 100000, got {}", self.services()),
            );
        }
        if !(0.0..=0.5).contains(&self.kill_fraction) {
            return refuse(
                "kill-fraction",
                format!("must be in 0..=0.5, got {}", self.kill_fraction),
            );
        }
        self.core.validate().map_err(|e| SimConfigError {
            field: e.field,
            message: e.message,
        })
    }
}

/// A simulator setting out of range.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("--{field}: {message}")]
pub struct SimConfigError {
    pub field: &'static str,
    pub message: String,
}

/// What one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub nodes: usize,
    pub seed: u64,
    pub services: usize,
    pub jobs: usize,
    pub sim_seconds: f64,
    pub wall_seconds: f64,
    pub placements: u64,
    pub placed_locally: u64,
    pub placements_per_sim_second: f64,
    pub placements_per_wall_second: f64,
    pub latency_p50_us: u64,
    pub latency_p90_us: u64,
    pub latency_p99_us: u64,
    pub latency_max_us: u64,
    pub gave_up: u64,
    pub dispatch_refused: u64,
    pub instance_failures: u64,
    pub nodes_killed: u64,
    pub messages: u64,
    pub events: u64,
    /// Services and jobs whose wanted count is met at the end.
    pub satisfied: usize,
    pub trace_hash: String,
    /// Invariant violations (checked only with `check_invariants`): how many, and the first.
    pub violation_count: u64,
    pub violations: Vec<String>,
}

/// A heterogeneous fleet: levels 0–2, 4–64 cores, 30 % with one or two GPUs, three zones.
pub fn fleet(n: usize, rng: &mut Rng) -> Vec<NodeSpec> {
    let width = n.saturating_sub(1).to_string().len().max(2);
    (0..n)
        .map(|i| {
            let r = rng.unit();
            let level = if r < 0.1 {
                0
            } else if r < 0.5 {
                1
            } else {
                2
            };
            let cores = [4u64, 8, 16, 32, 64][rng.below(5) as usize];
            let gib = [8u64, 16, 32, 64, 128, 256][rng.below(6) as usize];
            let gpus = if rng.unit() < 0.3 {
                let vram = [16u64, 24, 48, 80][rng.below(4) as usize] * GIB;
                vec![GpuCapacity { vram_bytes: vram }; 1 + rng.below(2) as usize]
            } else {
                vec![]
            };
            NodeSpec {
                id: NodeId::new(&format!("n{i:0width$}")).expect("generated names are valid"),
                level,
                labels: BTreeMap::from([("zone".to_owned(), ["a", "b", "c"][i % 3].to_owned())]),
                capacity: Capacity {
                    cpu_millicores: cores * 1000,
                    memory_bytes: gib * GIB,
                    gpus,
                },
            }
        })
        .collect()
}

fn workload(name: &str, kind: WorkloadKind, pattern: HaPattern, need: Resources) -> WorkloadSpec {
    WorkloadSpec {
        name: ServiceName::new(name).expect("generated names are valid"),
        kind,
        pattern,
        resources: need,
        labels: BTreeMap::new(),
        command: None,
        env: BTreeMap::new(),
        user: None,
        max_per_node: 1,
        health: None,
        address: None,
        publish: None,
    }
}

/// Services of every HA pattern and batch jobs, with their arrival times.
fn specs(cfg: &SimConfig, rng: &mut Rng) -> Vec<(Time, WorkloadSpec, Option<u64>)> {
    let services = cfg.services();
    let spread_ms = cfg.duration_ms * 6 / 10;
    let mut out = Vec::new();
    for i in 0..services + services / 5 {
        let at = Time::from_millis(200 + rng.below(spread_ms.max(1)));
        let need = Resources {
            cpu_millicores: 100 + rng.below(1900),
            memory_bytes: (64 + rng.below(1984)) * MIB,
            vram_bytes: 0,
        };
        if i >= services {
            let kind = WorkloadKind::Job {
                parallelism: 1 + rng.below(4) as u32,
            };
            let spec = workload(&format!("job{i:05}"), kind, HaPattern::Stateless, need);
            out.push((at, spec, Some(500 + rng.below(2500))));
            continue;
        }
        let r = rng.unit();
        let gpu_need = Resources {
            vram_bytes: (2 + rng.below(18)) * GIB,
            ..need
        };
        let (pattern, replicas, max, need) = if r < 0.65 {
            let n = 1 + rng.below(3) as u32;
            (HaPattern::Stateless, n, n + 2, need)
        } else if r < 0.75 {
            (HaPattern::StatefulRead, 2 + rng.below(2) as u32, 0, need)
        } else if r < 0.92 {
            (
                HaPattern::GpuInference,
                1 + rng.below(2) as u32,
                0,
                gpu_need,
            )
        } else {
            (HaPattern::GpuSingleton, 1, 1, gpu_need)
        };
        let kind = WorkloadKind::Service {
            replicas,
            max_replicas: max.max(replicas),
            auto_promote: rng.unit() < 0.5,
        };
        let mut spec = workload(&format!("svc{i:05}"), kind, pattern, need);
        if rng.unit() < 0.1 {
            spec.labels
                .insert("zone".into(), ["a", "b", "c"][rng.below(3) as usize].into());
        }
        if let WorkloadKind::Service { auto_promote, .. } = &mut spec.kind {
            *auto_promote &= pattern == HaPattern::StatefulRead;
        }
        out.push((at, spec, None));
    }
    out
}

/// Builds the scenario of `cfg` without running it.
pub fn build(cfg: &SimConfig) -> (Sim, usize, usize) {
    let mut rng = Rng::seeded(cfg.seed);
    let nodes = fleet(cfg.nodes, &mut rng);
    let sites = 1 + (cfg.nodes as u64 / 500).min(63);
    let mut sim = Sim::new(
        &nodes,
        sites,
        cfg.core.clone(),
        cfg.network.clone(),
        rng.next_u64(),
    );
    sim.check_invariants(cfg.check_invariants);
    sim.keep_records(cfg.keep_records);
    let duration = cfg.duration_ms;
    let specs = specs(cfg, &mut rng);
    let jobs = specs.iter().filter(|s| s.2.is_some()).count();
    let services = specs.len() - jobs;
    for (at, spec, job_ms) in specs {
        let name = spec.name.clone();
        if let Some(ms) = job_ms {
            sim.set_job_duration(name.clone(), ms);
        }
        let after = at.as_micros() / 1000 + 500;
        if spec.pattern == HaPattern::Stateless && job_ms.is_none() && rng.unit() < 0.05 {
            let t = Time::from_millis(after + rng.below(duration / 4 + 1));
            let spike = Action::Spike {
                service: name.clone(),
                util: 0.95,
                for_ms: 3000,
            };
            sim.schedule(t, spike);
        }
        if rng.unit() < 0.03 {
            sim.schedule(
                Time::from_millis(after + rng.below(duration / 4 + 1)),
                Action::Crash(name.clone()),
            );
        }
        sim.schedule(at, Action::Apply(spec));
    }
    for n in &nodes {
        if rng.unit() < 0.05 {
            let hot = Action::Background {
                node: n.id.clone(),
                cpu_util: 0.85,
            };
            sim.schedule(Time::ZERO, hot);
        }
    }
    if cfg.nodes >= 10 {
        let broken = nodes[rng.below(nodes.len() as u64) as usize].id.clone();
        sim.schedule(Time::ZERO, Action::BreakStarts(broken));
    }
    let kills = (cfg.nodes as f64 * cfg.kill_fraction).round() as usize;
    let kills = if cfg.kill_fraction > 0.0 && cfg.nodes >= 5 {
        kills.max(1)
    } else {
        kills
    };
    for _ in 0..kills {
        let victim = nodes[rng.below(nodes.len() as u64) as usize].id.clone();
        let at = Time::from_millis(duration * 4 / 10 + rng.below(duration * 4 / 10 + 1));
        sim.schedule(at, Action::Kill(victim));
    }
    (sim, services, jobs)
}

/// The wall clock, as the shell that runs the simulator reads it: seconds since any fixed
/// point. The simulator never reads a clock itself; wall-time figures use this one.
pub type WallClock<'a> = &'a dyn Fn() -> f64;

/// Runs the scenario of `cfg` and reports what it measured.
pub fn run(cfg: &SimConfig, clock: WallClock<'_>) -> Result<Report, crate::SimConfigError> {
    run_with_records(cfg, clock, |_| ())
}

/// Like [`run`], handing the ledger records to `sink` one simulated second at a time (with
/// `keep_records` set), so a long run's records never pile up in memory. The sink's time is
/// not counted in the wall-clock figures.
pub fn run_with_records(
    cfg: &SimConfig,
    clock: WallClock<'_>,
    mut sink: impl FnMut(Vec<qs_wire::Record>),
) -> Result<Report, crate::SimConfigError> {
    cfg.validate()?;
    let (mut sim, services, jobs) = build(cfg);
    let mut wall_seconds = 0.0;
    let mut t_ms = 0;
    while t_ms < cfg.duration_ms {
        t_ms = (t_ms + 1000).min(cfg.duration_ms);
        let wall = clock();
        sim.run_until(Time::from_millis(t_ms));
        wall_seconds += clock() - wall;
        if cfg.keep_records {
            sink(sim.take_records());
        }
    }
    Ok(report(cfg, &sim, services, jobs, wall_seconds))
}

fn report(cfg: &SimConfig, sim: &Sim, services: usize, jobs: usize, wall_seconds: f64) -> Report {
    let c = sim.counters();
    let h = sim.latency();
    let sim_seconds = cfg.duration_ms as f64 / 1000.0;
    let reg = sim.registry();
    let satisfied = reg
        .specs()
        .filter(|s| {
            let running = reg.instances_of(&s.name).count() as u32;
            if s.is_job() {
                reg.completed(&s.name) as u32 + running >= s.base_count()
            } else {
                running >= s.base_count()
            }
        })
        .count();
    Report {
        nodes: cfg.nodes,
        seed: cfg.seed,
        services,
        jobs,
        sim_seconds,
        wall_seconds,
        placements: c.placed,
        placed_locally: c.placed_locally,
        placements_per_sim_second: c.placed as f64 / sim_seconds,
        placements_per_wall_second: c.placed as f64 / wall_seconds.max(1e-9),
        latency_p50_us: h.value_at_quantile(0.50),
        latency_p90_us: h.value_at_quantile(0.90),
        latency_p99_us: h.value_at_quantile(0.99),
        latency_max_us: h.max(),
        gave_up: c.gave_up,
        dispatch_refused: c.dispatch_refused,
        instance_failures: c.failures,
        nodes_killed: c.kills,
        messages: c.messages,
        events: c.events,
        satisfied,
        trace_hash: format!("{:016x}", sim.trace_hash()),
        violation_count: c.violations,
        violations: sim.violations().iter().map(Violation::to_string).collect(),
    }
}
