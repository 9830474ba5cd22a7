//! Command-line interface: the subcommands and their flags.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use qs_sim::SimConfig;

#[derive(Parser, Debug)]
#[command(name = "qs", version, about = "Quasicrystal: a decentralized orchestrator for GPU and CPU fleets")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the deterministic simulator: the real core, a virtual clock, a simulated network.
    Sim {
        /// Nodes in the simulated fleet.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        nodes: u64,
        /// Seed of every random choice; the same seed gives the same trace hash.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Simulated time to run, in milliseconds.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
        duration_ms: u64,
        /// Services to apply (jobs add a fifth); default a quarter of the nodes.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        services: Option<u64>,
        /// Fraction of nodes killed during the run (0 to 0.5).
        #[arg(long, default_value_t = 0.01)]
        kill_fraction: f64,
        /// Check the invariants after every event (slow; small fleets).
        #[arg(long)]
        check: bool,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Run a benchmark suite; prints one JSON object per line.
    Bench {
        #[command(subcommand)]
        suite: BenchSuite,
    },
}

#[derive(Subcommand, Debug)]
enum BenchSuite {
    /// Core placement decisions per second for growing fleets, and the cost growth.
    Placement {
        /// Fleet sizes, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "10,100,1000,10000,30000",
              value_parser = clap::value_parser!(u64).range(2..=100_000))]
        nodes: Vec<u64>,
        /// Placements per run.
        #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        placements: u64,
        /// Runs per size; the median is reported.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
        repeats: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Bench {
            suite:
                BenchSuite::Placement {
                    nodes,
                    placements,
                    repeats,
                    seed,
                },
        } => {
            let sizes: Vec<usize> = nodes.iter().map(|&n| n as usize).collect();
            crate::bench::placement_suite(&sizes, placements as usize, repeats as usize, seed);
            Ok(())
        }
        Command::Sim {
            nodes,
            seed,
            duration_ms,
            services,
            kill_fraction,
            check,
            output,
        } => {
            let mut cfg = SimConfig::new(nodes as usize, seed);
            cfg.duration_ms = duration_ms;
            cfg.services = services.map(|s| s as usize);
            cfg.kill_fraction = kill_fraction;
            cfg.check_invariants = check;
            let report = qs_sim::run(&cfg).context("invalid simulation settings")?;
            match output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                OutputFormat::Text => println!("{report:#?}"),
            }
            if report.violation_count > 0 {
                anyhow::bail!("{} invariant violations (seed {seed})", report.violation_count);
            }
            Ok(())
        }
    }
}
