//! `qs sim`: the deterministic simulator from the command line: the placement fleet (the
//! real core on a virtual clock, optionally writing its ledger), or with `--agents` the mesh
//! (seed 001: hosts in WAN regions, the hierarchy, impedance, cascades).

use crate::render::OutputFormat;
use anyhow::{Context, Result, bail};
use qs_sim::mesh::engine::READY_AT_MS;
use qs_sim::mesh::{Cascade, Matrix, MeshReport, MeshSimConfig, parse_mode};
use qs_sim::{Report, SimConfig};
use qs_store::Ledger;
use std::path::PathBuf;

/// `qs sim`'s flags.
#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// Nodes in the simulated fleet.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub nodes: u64,
    /// Seed of every random choice; the same seed gives the same trace hash.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Simulated time to run, in milliseconds.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub duration_ms: u64,
    /// Services to apply (jobs add a fifth); default a quarter of the nodes.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub services: Option<u64>,
    /// Fraction of nodes killed during the run (0 to 0.5).
    #[arg(long, default_value_t = 0.01)]
    pub kill_fraction: f64,
    /// Check the invariants after every event (slow; small fleets).
    #[arg(long)]
    pub check: bool,
    /// Write every ledger event of the run to this redb file (read it with `qs events`).
    #[arg(long)]
    pub ledger: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Simulate the mesh instead (seed 001): this many agents on hosts in WAN regions,
    /// the hierarchy, impedance profiling and cascades.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub agents: Option<u64>,
    /// Hosts the agents run on (default: one per 30 agents).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub hosts: Option<u64>,
    /// Round trips between regions, a CSV with the header
    /// cty1,cty2,rtt_cnt,rtt_avg,rtt_std,rtt_min,rtt_max (milliseconds): hosts spread
    /// over regions in proportion to rtt_cnt, delays drawn from a normal truncated to
    /// [min, max].
    #[arg(long, requires = "agents")]
    pub latency_matrix: Option<PathBuf>,
    /// Share of agents that go down after the calibration (0 to 1).
    #[arg(long, default_value_t = 0.0, requires = "agents")]
    pub down_fraction: f64,
    /// How long a restart takes: a crashed agent its lead asks to restart is up again this
    /// long after (by default a down agent stays down).
    #[arg(long, requires = "agents")]
    pub restart_ms: Option<u64>,
    /// Cascades to run after the calibration: wave, parallel or priority-first (repeat).
    #[arg(long = "cascade", requires = "agents")]
    pub cascades: Vec<String>,
    /// Add this many agents, on new hosts, to the running mesh after the calibration
    /// (seed §10.2's scale-out): the report shows how they joined the routing pool.
    #[arg(long, requires = "agents", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub scale_out: Option<u64>,
    /// Each host names its region as its zone (as `qs agent --mesh-zone` does), so the
    /// hierarchy keeps clusters and sectors within a region; by default hosts name none.
    #[arg(long, requires = "agents")]
    pub zones: bool,
}

pub fn run(a: SimArgs) -> Result<()> {
    if a.agents.is_some() {
        return simulate_mesh(&a);
    }
    let SimArgs {
        nodes,
        seed,
        duration_ms,
        services,
        kill_fraction,
        check,
        ledger,
        output,
        ..
    } = a;
    let mut cfg = SimConfig::new(nodes as usize, seed);
    cfg.duration_ms = duration_ms;
    cfg.services = services.map(|s| s as usize);
    cfg.kill_fraction = kill_fraction;
    cfg.check_invariants = check;
    cfg.keep_records = ledger.is_some();
    let report = simulate(&cfg, ledger.as_ref())?;
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Text => print_report(&report),
    }
    if report.violation_count > 0 {
        bail!(
            "{} invariant violations (seed {seed})",
            report.violation_count
        );
    }
    Ok(())
}

fn simulate(cfg: &SimConfig, ledger: Option<&PathBuf>) -> Result<Report> {
    // The simulator reads no clock: its wall-time figures come from this one.
    let start = std::time::Instant::now();
    let wall = || start.elapsed().as_secs_f64();
    let Some(path) = ledger else {
        return qs_sim::run(cfg, &wall).context("invalid simulation settings");
    };
    let ledger = Ledger::open(path)?;
    let mut failure = None;
    let report = qs_sim::run_with_records(cfg, &wall, |records| {
        if failure.is_none()
            && let Err(e) = ledger.append_records(&records)
        {
            failure = Some(e);
        }
    })
    .context("invalid simulation settings")?;
    if let Some(e) = failure {
        return Err(e).context("writing the simulation's ledger");
    }
    Ok(report)
}

fn print_report(r: &Report) {
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "qs sim: {} nodes, seed {}, {:.1} s simulated in {:.2} s",
        r.nodes, r.seed, r.sim_seconds, r.wall_seconds
    );
    println!(
        "  workload    {} services, {} jobs; {} nodes killed; {} instance failures",
        r.services, r.jobs, r.nodes_killed, r.instance_failures
    );
    println!(
        "  placements  {} ({} local, {} through the fleet); {} gave up; {} dispatches refused",
        r.placements,
        r.placed_locally,
        r.placements - r.placed_locally,
        r.gave_up,
        r.dispatch_refused
    );
    println!(
        "  rate        {:.1} per simulated second, {:.0} per wall second",
        r.placements_per_sim_second, r.placements_per_wall_second
    );
    println!(
        "  latency     p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (sense to placed)",
        ms(r.latency_p50_us),
        ms(r.latency_p90_us),
        ms(r.latency_p99_us),
        ms(r.latency_max_us)
    );
    println!(
        "  converged   {} of {} workloads at their wanted count",
        r.satisfied,
        r.services + r.jobs
    );
    println!(
        "  trace hash  {} (the same seed gives the same hash)",
        r.trace_hash
    );
    for v in &r.violations {
        println!("  VIOLATION   {v}");
    }
}

/// `qs sim --agents N …`.
fn simulate_mesh(a: &SimArgs) -> Result<()> {
    let agents = a.agents.context("--agents is required for the mesh")?;
    let mut cfg = MeshSimConfig::new(agents as usize, a.seed);
    cfg.hosts = a.hosts.map(|h| h as usize);
    cfg.zones = a.zones;
    cfg.down_fraction = a.down_fraction;
    cfg.down_at_ms = READY_AT_MS;
    cfg.restart_ms = a.restart_ms;
    cfg.scale_out = a.scale_out.map(|n| qs_sim::mesh::ScaleOut {
        at_ms: READY_AT_MS,
        agents: n as usize,
    });
    if let Some(path) = &a.latency_matrix {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        cfg.wan.matrix = Some(Matrix::parse(&text, &path.display().to_string())?);
    }
    let names: Vec<&str> = match a.cascades.is_empty() {
        true => vec!["wave", "parallel", "priority-first"],
        false => a.cascades.iter().map(String::as_str).collect(),
    };
    let mut at = READY_AT_MS + 1_000;
    for name in names {
        let Some(mode) = parse_mode(name) else {
            bail!("--cascade {name:?}: wave, parallel or priority-first");
        };
        cfg.cascades.push(Cascade {
            at_ms: at,
            mode,
            budget_ms: None,
            delegate: None,
        });
        at += 2_000;
    }
    cfg.duration_ms = a.duration_ms.max(at + 2_000);
    let start = std::time::Instant::now();
    let clock = move || start.elapsed().as_secs_f64();
    let mut report =
        qs_sim::mesh::engine::run(&cfg, &clock).context("invalid simulation settings")?;
    report.peak_rss_bytes = crate::bench_cascade::peak_rss_bytes();
    match a.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Text => print_mesh(&report),
    }
    Ok(())
}

fn print_mesh(r: &MeshReport) {
    println!(
        "qs sim: {} agents on {} hosts, seed {}, {:.1} s simulated in {:.2} s ({:.0}× real time)",
        r.agents, r.hosts, r.seed, r.sim_seconds, r.wall_seconds, r.speed
    );
    println!(
        "  hierarchy   {} sectors, {} clusters (largest {} agents, largest sector {} clusters)",
        r.sectors, r.clusters, r.largest_cluster, r.largest_sector
    );
    println!(
        "  traffic     {} messages, {} lost; busiest node {:.0} msg/s",
        r.messages, r.lost, r.max_received_per_node_per_second
    );
    println!(
        "  mesh        mode {}, breakers open: {} clusters, {} sectors, global {}",
        r.mode, r.open_cluster_breakers, r.open_sector_breakers, r.global_breaker_open
    );
    let c = &r.conflicts;
    println!(
        "  conflicts   {} heard, {} resolved, {} escalated notices; unresolved {} ({} critical, {} overdue), at the root {}; {} answers taken late",
        c.heard,
        c.resolved,
        c.escalated,
        c.unresolved.open,
        c.unresolved.critical,
        c.unresolved.overdue,
        c.unresolved_at_root.open,
        c.late_answers
    );
    for op in &r.results {
        let t = &op.tally;
        println!(
            "  {:<15} {:<17} {:<17} {:>6.0} ms  target +{:>4.0} ms  sent {:>6}  ready {:>6}  skipped {:>5}  joining {:>5}  waited {:>4}  hits {:>6}  ±50ms {:>6}  root msgs {}",
            format!("{:?}", op.mode),
            op.status,
            op.decision.name(),
            op.latency_ms,
            op.target_after_ms,
            t.sent,
            t.ready,
            t.skipped,
            t.joining,
            t.waited,
            t.window_hits,
            t.predicted_within_50ms,
            op.root_messages
        );
    }
    println!("  leads (ms)  {:?}", qs_wire::mesh::LEAD_BUCKETS_MS);
    for (i, row) in r.leads.0.iter().enumerate() {
        println!("    class {}  {row:?}", (b'A' + i as u8) as char);
    }
    if let Some(i) = &r.integration {
        let ms = |v: Option<u64>| v.map_or("never".to_string(), |v| format!("{v} ms"));
        println!(
            "  scale-out   {} agents on {} hosts at {} ms: first in the routing pool after {}, all after {}, at most {} per cluster and beat; {} of {} in the pool at the end",
            i.agents,
            i.hosts,
            i.at_ms,
            ms(i.first_admitted_after_ms),
            ms(i.all_admitted_after_ms),
            i.max_admitted_per_cluster_per_beat,
            i.admitted,
            i.agents
        );
    }
    if !r.refused.is_empty() {
        println!("  refused     {:?}", r.refused);
    }
    if !r.queued.is_empty() {
        println!("  queued      operations {:?}", r.queued);
    }
    if r.refused_senders > 0 {
        println!(
            "  refused     {} messages from senders the tree does not name",
            r.refused_senders
        );
    }
    if r.routed_around > 0 {
        println!(
            "  routed      around {} times: agents that missed 3 operations in a row",
            r.routed_around
        );
    }
    if r.agents_crashed > 0 {
        println!(
            "  crashed     {} agents: offline 30 s while their host lived",
            r.agents_crashed
        );
    }
    if r.agents_restarted > 0 {
        println!(
            "  restarted   {} agents at their lead's request; {} back in the routing pool",
            r.agents_restarted, r.restarted_in_pool
        );
    }
    if let Some(rss) = r.peak_rss_bytes {
        println!("  memory      peak {} MiB", rss >> 20);
    }
    println!("  trace hash  {}", r.trace_hash);
}
