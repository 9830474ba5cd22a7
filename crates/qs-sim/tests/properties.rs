//! Properties of the whole placement system, over random fleets and workloads: capacity is
//! never over-committed, the gate is never bypassed, no stateless double-booking, at most one
//! singleton (all checked after every event by the simulator), and a seed fixes the run.

use proptest::prelude::*;
use qs_sim::{SimConfig, run};

/// A wall clock for the runs (the simulator reads none itself).
fn wall() -> f64 {
    use std::sync::OnceLock;
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs_f64()
}

fn config(nodes: usize, seed: u64, kill_fraction: f64) -> SimConfig {
    let mut cfg = SimConfig::new(nodes, seed);
    cfg.duration_ms = 4000;
    cfg.kill_fraction = kill_fraction;
    cfg.check_invariants = true;
    cfg
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_on_random_fleets(nodes in 3usize..48, seed in any::<u64>(), kills in 0.0f64..0.2) {
        let report = run(&config(nodes, seed, kills), &wall).unwrap();
        prop_assert!(report.violations.is_empty(), "seed {seed}: {:?}", report.violations);
        prop_assert!(report.placements > 0, "seed {seed}: nothing placed");
    }

    #[test]
    fn a_seed_fixes_every_decision(nodes in 3usize..40, seed in any::<u64>()) {
        let a = run(&config(nodes, seed, 0.1), &wall).unwrap();
        let b = run(&config(nodes, seed, 0.1), &wall).unwrap();
        prop_assert_eq!(&a.trace_hash, &b.trace_hash);
        prop_assert_eq!(a.placements, b.placements);
        prop_assert_eq!(a.events, b.events);
    }
}

#[test]
fn different_seeds_give_different_runs() {
    let a = run(&config(30, 1, 0.1), &wall).unwrap();
    let b = run(&config(30, 2, 0.1), &wall).unwrap();
    assert_ne!(a.trace_hash, b.trace_hash);
}

/// A medium fleet through the sampled (power of d choices) query path: every workload ends
/// up satisfied, nothing is lost, and the run is reproducible.
#[test]
fn a_sampled_fleet_converges_and_reproduces() {
    let mut cfg = SimConfig::new(400, 11);
    cfg.duration_ms = 8000;
    let a = run(&cfg, &wall).unwrap();
    assert!(a.violations.is_empty());
    assert_eq!(a.satisfied, a.services + a.jobs, "{a:#?}");
    assert_eq!(a.gave_up, 0, "{a:#?}");
    let b = run(&cfg, &wall).unwrap();
    assert_eq!(a.trace_hash, b.trace_hash);
}

#[test]
fn out_of_range_settings_are_refused_by_name() {
    let check = |cfg: SimConfig, want: &str| {
        let err = run(&cfg, &wall).unwrap_err().to_string();
        assert!(err.starts_with(want), "{err}");
    };
    check(
        SimConfig::new(0, 1),
        "--nodes: must be in 1..=100000, got 0",
    );
    check(SimConfig::new(100_001, 1), "--nodes: must be in 1..=100000");
    let mut cfg = SimConfig::new(10, 1);
    cfg.duration_ms = 5;
    check(cfg, "--duration-ms: must be in 100..=3600000, got 5");
    let mut cfg = SimConfig::new(10, 1);
    cfg.kill_fraction = 0.9;
    check(cfg, "--kill-fraction: must be in 0..=0.5, got 0.9");
    let mut cfg = SimConfig::new(10, 1);
    cfg.core.thresholds.cpu = 1.5;
    check(cfg, "--thresholds.cpu: must be in (0, 1], got 1.5");
}

/// The simulator handles 30,000 nodes: every node joins, the workload arrives, and the run
/// stays free of violations on the sampled path. (Its speed is measured by `qs sim`, not here.)
#[test]
fn thirty_thousand_nodes() {
    let mut cfg = SimConfig::new(30_000, 5);
    cfg.duration_ms = 1500;
    cfg.services = Some(2000);
    let report = run(&cfg, &wall).unwrap();
    assert_eq!(report.nodes, 30_000);
    assert!(report.placements >= 1000, "{report:#?}");
    assert_eq!(report.gave_up, 0, "{report:#?}");
}
