//! `qs bench cascade`: the mesh at 30,000 agents on the simulator (the core's `MeshNode`
//! per host, a WAN model with a heavy tail and loss), cascades of each mode with 0, 1, 5 and
//! 20 % of agents down, the same with hosts in zones, and waves while 1,000 more agents join
//! (seed §10.2); beside it, Serf-style gossip spreading one message over as many members on
//! the same network; and the simulator's own speed and memory.

use crate::bench::{emit, round_to};
use anyhow::{Context, Result};
use qs_core::mesh::degrade::Mode;
use qs_sim::mesh::engine::{READY_AT_MS, run};
use qs_sim::mesh::gossip::{Gossip, spread};
use qs_sim::mesh::{Cascade, Matrix, MeshReport, MeshSimConfig, Wan};
use qs_wire::mesh::CascadeMode;
use std::path::PathBuf;

/// The suite's settings.
pub struct CascadeBench {
    pub agents: usize,
    pub cascades: usize,
    pub seed: u64,
    pub latency_matrix: Option<PathBuf>,
    /// Also run waves with this fixed arrival budget (an urgent operation), milliseconds.
    pub urgent_budget_ms: u64,
}

const BENCH: &str = "cascade";

fn wan(b: &CascadeBench) -> Result<Wan> {
    let mut wan = Wan::default();
    if let Some(path) = &b.latency_matrix {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        wan.matrix = Some(Matrix::parse(&text, &path.display().to_string())?);
    }
    Ok(wan)
}

fn mode_name(m: CascadeMode) -> &'static str {
    match m {
        CascadeMode::Wave => "wave",
        CascadeMode::Parallel => "parallel",
        CascadeMode::PriorityFirst => "priority_first",
    }
}

fn p95(mut v: Vec<f64>) -> f64 {
    qs_core::mesh::impedance::p95(&mut v)
}

pub fn cascade_suite(b: &CascadeBench) -> Result<()> {
    let wan = wan(b)?;
    let clock_start = std::time::Instant::now();
    let clock = move || clock_start.elapsed().as_secs_f64();
    let modes = [
        CascadeMode::Wave,
        CascadeMode::Parallel,
        CascadeMode::PriorityFirst,
    ];
    for down in [0.0, 0.01, 0.05, 0.20] {
        let pct = (down * 100.0) as u32;
        for mode in modes {
            let mut cfg = Series::of(mode, b).config(b, &wan);
            cfg.down_fraction = down;
            cfg.down_at_ms = READY_AT_MS;
            let r = run(&cfg, &clock)?;
            let name = format!("{}_down{pct}", mode_name(mode));
            report(&name, &r);
            emit(
                BENCH,
                format!("{name}_refused"),
                r.refused.len() as f64,
                "operations",
            );
            let ordinal = [
                Mode::Full,
                Mode::DegradedLight,
                Mode::DegradedModerate,
                Mode::DegradedSevere,
                Mode::Emergency,
            ]
            .iter()
            .position(|m| m.name() == r.mode)
            .unwrap_or(0);
            emit(
                BENCH,
                format!("{name}_degradation_mode"),
                ordinal as f64,
                "FULL=0 LIGHT=1 MODERATE=2 SEVERE=3 EMERGENCY=4",
            );
            emit(
                BENCH,
                format!("{name}_open_cluster_breakers"),
                r.open_cluster_breakers as f64,
                "breakers",
            );
            emit(
                BENCH,
                format!("{name}_open_sector_breakers"),
                r.open_sector_breakers as f64,
                "breakers",
            );
            emit(
                BENCH,
                format!("{name}_global_breaker_open"),
                f64::from(u8::from(r.global_breaker_open)),
                "bool",
            );
        }
    }
    // An urgent wave: the arrival budget fixed, slower agents known too late and skipped.
    let cfg = Series {
        budget_ms: Some(b.urgent_budget_ms),
        tail_ms: 3_000,
        ..Series::of(CascadeMode::Wave, b)
    }
    .config(b, &wan);
    let r = run(&cfg, &clock)?;
    report(&format!("wave_urgent{}ms_down0", b.urgent_budget_ms), &r);

    // Zones (seed §2.1's local clusters, regional sectors): each host names its region, as
    // `qs agent --mesh-zone` does; the same waves and parallel cascades, no agent down.
    for mode in [CascadeMode::Wave, CascadeMode::Parallel] {
        let mut cfg = Series::of(mode, b).config(b, &wan);
        cfg.zones = true;
        let r = run(&cfg, &clock)?;
        report(&format!("{}_zones_down0", mode_name(mode)), &r);
    }

    // Scale-out (seed §10.2): 1,000 more agents on new hosts join the running mesh; waves
    // go on while they settle and after they joined. The run goes on until the slowest
    // (class F, measured by one answer to a probe that takes seconds) are established.
    let join_ms = READY_AT_MS;
    let series = Series {
        first_ms: join_ms + 1_000,
        count: b.cascades.max(2),
        ..Series::of(CascadeMode::Wave, b)
    };
    let mut cfg = series.config(b, &wan);
    cfg.duration_ms = cfg.duration_ms.max(join_ms + 31_000);
    cfg.scale_out = Some(qs_sim::mesh::ScaleOut {
        at_ms: join_ms,
        agents: 1_000,
    });
    let r = run(&cfg, &clock)?;
    report("wave_scaleout1000_down0", &r);
    if let Some(i) = &r.integration {
        let ms = |v: Option<u64>| v.map_or(f64::NAN, |v| v as f64);
        emit(
            BENCH,
            "scaleout_first_in_pool".into(),
            ms(i.first_admitted_after_ms),
            "ms after joining",
        );
        emit(
            BENCH,
            "scaleout_all_in_pool".into(),
            ms(i.all_admitted_after_ms),
            "ms after joining",
        );
        // All but the slowest (class F) are in the pool within seconds.
        let by_10_s = i.timeline.iter().rfind(|(ms, _)| *ms <= 10_000);
        emit(
            BENCH,
            "scaleout_in_pool_at_10s".into(),
            by_10_s.map_or(0.0, |(_, n)| {
                round_to(*n as f64 / i.agents.max(1) as f64, 4)
            }),
            "share of the new agents",
        );
        emit(
            BENCH,
            "scaleout_most_out_again".into(),
            i.most_out_again as f64,
            "agents",
        );
        emit(
            BENCH,
            "scaleout_first_new_lead".into(),
            ms(i.first_lead_after_ms),
            "ms after joining",
        );
        emit(
            BENCH,
            "scaleout_most_per_cluster_and_beat".into(),
            i.max_admitted_per_cluster_per_beat as f64,
            "agents",
        );
    }

    // The peer: gossip over as many members, same network.
    let g = spread(b.agents, &wan, Gossip::lan(b.agents), b.seed);
    emit(
        BENCH,
        "gossip_p50_reach".into(),
        round_to(g.p50_ms, 1),
        "ms",
    );
    emit(
        BENCH,
        "gossip_p95_reach".into(),
        round_to(g.p95_ms, 1),
        "ms",
    );
    emit(
        BENCH,
        "gossip_p99_reach".into(),
        round_to(g.p99_ms, 1),
        "ms",
    );
    emit(
        BENCH,
        "gossip_all_reach".into(),
        round_to(g.all_ms.unwrap_or(f64::NAN), 1),
        "ms",
    );
    emit(
        BENCH,
        "gossip_messages".into(),
        g.messages as f64,
        "messages",
    );

    // The simulator itself: a steady mesh of `agents`, 60 s simulated.
    let mut cfg = MeshSimConfig::new(b.agents, b.seed);
    cfg.wan = wan;
    cfg.calibrate = false;
    cfg.duration_ms = 60_000;
    let r = run(&cfg, &clock)?;
    emit(
        BENCH,
        "sim_speed".into(),
        round_to(r.speed, 1),
        "x real time",
    );
    emit(BENCH, "sim_events".into(), r.events as f64, "events");
    if let Some(rss) = peak_rss_bytes() {
        emit(
            BENCH,
            "sim_peak_rss".into(),
            (rss / (1 << 20)) as f64,
            "MiB",
        );
    }
    Ok(())
}

/// A run of `count` cascades of one mode, `gap_ms` apart from `first_ms`, going on `tail_ms`
/// past the last one's gap.
struct Series {
    mode: CascadeMode,
    budget_ms: Option<u64>,
    first_ms: u64,
    gap_ms: u64,
    count: usize,
    tail_ms: u64,
}

impl Series {
    /// The suite's usual run: `b.cascades` of `mode` 1.5 s apart, from 1.5 s after the
    /// calibration, 6 s more after them.
    fn of(mode: CascadeMode, b: &CascadeBench) -> Series {
        Series {
            mode,
            budget_ms: None,
            first_ms: READY_AT_MS + 1_500,
            gap_ms: 1_500,
            count: b.cascades,
            tail_ms: 6_000,
        }
    }

    fn config(&self, b: &CascadeBench, wan: &Wan) -> MeshSimConfig {
        let mut cfg = MeshSimConfig::new(b.agents, b.seed);
        cfg.wan = wan.clone();
        cfg.cascades = (0..self.count)
            .map(|i| Cascade {
                at_ms: self.first_ms + self.gap_ms * i as u64,
                mode: self.mode,
                budget_ms: self.budget_ms,
                delegate: None,
            })
            .collect();
        cfg.duration_ms = self.first_ms + self.gap_ms * self.count as u64 + self.tail_ms;
        cfg
    }
}

/// One row's figures over its operations.
fn report(name: &str, run: &MeshReport) {
    let ops = run.measured();
    let lat: Vec<f64> = ops.iter().map(|o| o.latency_ms).collect();
    let reach: Vec<f64> = ops.iter().filter_map(|o| run.reach_p95_ms(o)).collect();
    let reached = reach.len() as u64;
    let sent: u64 = ops.iter().map(|o| u64::from(o.tally.sent)).sum();
    let hits: u64 = ops.iter().map(|o| u64::from(o.tally.window_hits)).sum();
    let answered: u64 = ops
        .iter()
        .map(|o| u64::from(o.tally.ready + o.tally.transit + o.tally.conflict))
        .sum();
    let accurate: u64 = ops
        .iter()
        .map(|o| u64::from(o.tally.predicted_within_50ms))
        .sum();
    let targeted: u64 = ops.iter().map(|o| u64::from(o.tally.targeted)).sum();
    let skipped: u64 = ops.iter().map(|o| u64::from(o.tally.skipped)).sum();
    let quorum = ops
        .iter()
        .filter(|o| o.decision.name() == "PROCEED")
        .count();
    let succeeded = ops.iter().filter(|o| o.status == "SUCCESS").count();
    // A priority-first operation ends COMPLETE whatever its phases did: no success to count.
    let judged = ops.iter().any(|o| o.mode != CascadeMode::PriorityFirst);
    // The root's messages for a cascade (a priority-first one's phases go together).
    let root_messages = ops
        .iter()
        .map(|o| f64::from(o.root_messages))
        .fold(0.0, f64::max);
    let rate = |a: u64, b: u64| {
        if b == 0 {
            0.0
        } else {
            round_to(a as f64 / b as f64, 4)
        }
    };
    emit(
        BENCH,
        format!("{name}_operations"),
        ops.len() as f64,
        "operations",
    );
    emit(
        BENCH,
        format!("{name}_cascade_p95"),
        round_to(p95(lat), 1),
        "ms",
    );
    // The way down alone (the agents ready), beside the round trip above: what the seed
    // calls cascade latency and gossip's reach measures.
    if !reach.is_empty() {
        emit(
            BENCH,
            format!("{name}_reach_p95"),
            round_to(p95(reach), 1),
            "ms (95 % of the agents sent to ready; p95 over the operations that got there)",
        );
    }
    let sending = ops.iter().filter(|o| o.tally.sent > 0).count();
    if sending > 0 {
        emit(
            BENCH,
            format!("{name}_reached_95"),
            rate(reached, sending as u64),
            "share of operations that sent, with 95 % of the agents sent to ready",
        );
    }
    emit(
        BENCH,
        format!("{name}_target_after"),
        round_to(ops.iter().map(|o| o.target_after_ms).fold(0.0, f64::max), 1),
        "ms",
    );
    emit(
        BENCH,
        format!("{name}_window_hit_rate"),
        rate(hits, sent),
        "share of sent",
    );
    emit(
        BENCH,
        format!("{name}_within_50ms"),
        rate(accurate, answered),
        "share of answers",
    );
    emit(
        BENCH,
        format!("{name}_skipped"),
        rate(skipped, targeted),
        "share of targeted",
    );
    emit(
        BENCH,
        format!("{name}_quorum"),
        rate(quorum as u64, ops.len() as u64),
        "share of operations",
    );
    if judged {
        emit(
            BENCH,
            format!("{name}_success"),
            rate(succeeded as u64, ops.len() as u64),
            "share of operations (SUCCESS)",
        );
    }
    emit(
        BENCH,
        format!("{name}_root_messages"),
        root_messages,
        "messages per cascade (the most of its operations; target at most 100)",
    );
}

/// The process's peak resident memory, from `/proc/self/status`.
pub(crate) fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
