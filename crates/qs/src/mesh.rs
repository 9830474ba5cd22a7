//! The mesh in the binary: `qs sim --agents` (the mesh on the simulator).

use crate::render::OutputFormat;
use anyhow::{Context, Result, bail};
use qs_sim::mesh::engine::{READY_AT_MS, run};
use qs_sim::mesh::{Cascade, Matrix, MeshReport, MeshSimConfig, parse_mode};
use std::path::PathBuf;

/// `qs sim --agents N …`.
pub struct SimArgs {
    pub agents: u64,
    pub hosts: Option<u64>,
    pub seed: u64,
    pub duration_ms: u64,
    pub latency_matrix: Option<PathBuf>,
    pub down_fraction: f64,
    pub cascades: Vec<String>,
    pub output: OutputFormat,
}

pub fn simulate(a: &SimArgs) -> Result<()> {
    let mut cfg = MeshSimConfig::new(a.agents as usize, a.seed);
    cfg.hosts = a.hosts.map(|h| h as usize);
    cfg.down_fraction = a.down_fraction;
    cfg.down_at_ms = READY_AT_MS;
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
        });
        at += match mode {
            qs_wire::mesh::CascadeMode::PriorityFirst => 6_000,
            _ => 2_000,
        };
    }
    cfg.duration_ms = a.duration_ms.max(at + 2_000);
    let start = std::time::Instant::now();
    let clock = move || start.elapsed().as_secs_f64();
    let mut report = run(&cfg, &clock).context("invalid simulation settings")?;
    report.peak_rss_bytes = crate::bench_cascade::peak_rss_bytes();
    match a.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Text => print(&report),
    }
    Ok(())
}

fn print(r: &MeshReport) {
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
    for op in &r.results {
        let t = &op.tally;
        println!(
            "  {:<15} {:<17} {:<17} {:>6.0} ms  target +{:>4.0} ms  sent {:>6}  ready {:>6}  skipped {:>5}  hits {:>6}  ±50ms {:>6}  root msgs {}",
            format!("{:?}", op.mode),
            op.status,
            op.decision.name(),
            op.latency_ms,
            op.target_after_ms,
            t.sent,
            t.ready,
            t.skipped,
            t.window_hits,
            t.predicted_within_50ms,
            op.root_messages
        );
    }
    println!("  leads (ms)  {:?}", qs_wire::mesh::LEAD_BUCKETS_MS);
    for (i, row) in r.leads.0.iter().enumerate() {
        println!("    class {}  {row:?}", (b'A' + i as u8) as char);
    }
    if !r.refused.is_empty() {
        println!("  refused     {:?}", r.refused);
    }
    if let Some(rss) = r.peak_rss_bytes {
        println!("  memory      peak {} MiB", rss >> 20);
    }
    println!("  trace hash  {}", r.trace_hash);
}
