//! `qs bench`'s suites as arguments, and the suite each one runs (`crate::bench`,
//! `crate::bench_fleet`, `crate::bench_gpu`, `crate::bench_tasks`).

use anyhow::{Result, bail};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum BenchSuite {
    /// An embedded fleet of virtual nodes through the whole agent path (no-op executor), and
    /// the idle memory of `qs agent`.
    Fleet {
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(2..=5_000))]
        nodes: u64,
        #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        placements: u64,
        /// Replicas per service (at most one per node).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=5_000))]
        replicas: u64,
        /// Through a real nats-server (started for the run) instead of the in-memory fabric;
        /// adds placement latency p50/p99 and the raw NATS round trip of the same run.
        #[arg(long)]
        nats: bool,
    },
    /// Failover across processes: three `qs agent --nats` on a real nats-server; the agent
    /// running a service is killed with SIGKILL, `trials` times; detection and serving-again
    /// times (p50, p99, max).
    Failover {
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1_000))]
        trials: u64,
        /// The service is dnsmasq behind a UDP stable address: also how long a client asking
        /// through the address on a survivor goes unanswered.
        #[arg(long)]
        address: bool,
    },
    /// Authenticated messages per second through one node: a whole agent runtime on the
    /// in-memory fabric with authentication on, then its receive path alone on one core
    /// (frame, envelope, Ed25519 signature, timestamp, replay window), for directed
    /// messages both HMAC-sealed (trust on first use, or encryption off) and encrypted
    /// under certificates (ChaCha20-Poly1305, hybrid X25519 + ML-KEM-768 sessions).
    Messages {
        #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
        messages: u64,
        /// Distinct senders.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        peers: u64,
        /// Runs; the median is reported.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=100))]
        repeats: u64,
    },
    /// The GPU scheduler of the core on the Azure two-model hour (code as batch, conv as
    /// interactive) on one simulated 24 GB GPU with 1.5 GB reserved: FIFO, llama-swap,
    /// exhaustive, ours (tipping point) and the oracle (ours with loads that take no time), for
    /// the exclusive pair, a co-resident control and a tiered pair, every load time,
    /// utilisation and slot count; then the targets on load 10 s, utilisation 0.6, 4 slots.
    Gpu {
        /// The directory of AzureLLMInferenceTrace_code.csv and _conv.csv.
        #[arg(long, default_value = "../shared/traces")]
        traces: PathBuf,
        /// Load times in seconds (±30 % jitter each load).
        #[arg(long, value_delimiter = ',', default_value = "2,10,45",
              value_parser = clap::value_parser!(u64).range(0..=600))]
        loads: Vec<u64>,
        /// Ideal utilisations the traces are stretched to.
        #[arg(long, value_delimiter = ',', default_value = "0.3,0.6,0.9")]
        utilisations: Vec<f64>,
        /// Slots per runtime (continuous batching).
        #[arg(long, value_delimiter = ',', default_value = "1,4",
              value_parser = clap::value_parser!(u32).range(1..=256))]
        slots: Vec<u32>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// The agent's OpenAI-compatible entry point on loopback against a fast model double:
    /// requests per second and latency (p50, p99) of the double called directly, through the
    /// agent (the double as its managed runtime) and through nginx (when installed), side by
    /// side, with the added latency of each and DESIGN.md's targets.
    Gateway {
        /// Keep-alive client connections.
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024))]
        connections: u64,
        /// Seconds each column is measured (after a second of warm-up).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
        seconds: u64,
    },
    /// The mesh at 30,000 agents on the simulator: wave, parallel and priority-first
    /// cascades with 0, 1, 5 and 20 % of agents down (latency p95, arrival-window hits,
    /// prediction within 50 ms, root messages, degradation mode, breakers); Serf-style
    /// gossip over as many members on the same network; the simulator's speed and memory.
    Cascade {
        #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..=1_000_000))]
        agents: u64,
        /// Cascades per mode and share down.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
        cascades: u64,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Round trips between regions: a CSV with the header
        /// cty1,cty2,rtt_cnt,rtt_avg,rtt_std,rtt_min,rtt_max (milliseconds).
        #[arg(long)]
        latency_matrix: Option<PathBuf>,
        /// The arrival budget of the urgent wave, milliseconds.
        #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..=60_000))]
        urgent_budget_ms: u64,
    },
    /// Durable tasks through a real agent, embedded and on a real nats-server, beside Celery
    /// on a Redis broker (where installed): completions per second, submit-to-complete
    /// latency (p50, p99) of no-op tasks, and the round trip of a checkpoint (p50, p99).
    Tasks {
        #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        tasks: u64,
        /// Workers (ours: SDK connections; Celery: prefork processes).
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
        workers: u64,
        /// Threads submitting.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
        clients: u64,
        /// Checkpoints per worker.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        checkpoints: u64,
        /// Leave Celery out.
        #[arg(long)]
        no_celery: bool,
    },
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

/// Runs one suite; each prints its JSON lines.
pub fn run(suite: BenchSuite) -> Result<()> {
    match suite {
        BenchSuite::Fleet {
            nodes,
            placements,
            replicas,
            nats,
        } => crate::bench_fleet::fleet_suite(
            nodes as usize,
            placements as usize,
            replicas as usize,
            nats,
        ),
        BenchSuite::Messages {
            messages,
            peers,
            repeats,
        } => crate::bench::messages_suite(messages as usize, peers as usize, repeats as usize),
        BenchSuite::Failover { trials, address } => {
            crate::bench_failover::failover_suite(trials as usize, address)
        }
        BenchSuite::Gateway {
            connections,
            seconds,
        } => crate::bench_gateway::gateway_suite(connections as usize, seconds),
        BenchSuite::Cascade {
            agents,
            cascades,
            seed,
            latency_matrix,
            urgent_budget_ms,
        } => crate::bench_cascade::cascade_suite(&crate::bench_cascade::CascadeBench {
            agents: agents as usize,
            cascades: cascades as usize,
            seed,
            latency_matrix,
            urgent_budget_ms,
        }),
        BenchSuite::Tasks {
            tasks,
            workers,
            clients,
            checkpoints,
            no_celery,
        } => crate::bench_tasks::tasks_suite(&crate::bench_tasks::TasksBench {
            tasks: tasks as usize,
            workers: workers as usize,
            clients: clients as usize,
            checkpoints: checkpoints as usize,
            celery: !no_celery,
        }),
        BenchSuite::Gpu {
            traces,
            loads,
            utilisations,
            slots,
            seed,
        } => {
            if let Some(u) = utilisations.iter().find(|u| !(0.01..=1.0).contains(*u)) {
                bail!("--utilisations: {u} is not between 0.01 and 1");
            }
            crate::bench_gpu::gpu_suite(&crate::bench_gpu::GpuBench {
                traces: &traces,
                loads_s: &loads,
                utilisations: &utilisations,
                slots: &slots,
                seed,
            })
        }
        BenchSuite::Placement {
            nodes,
            placements,
            repeats,
            seed,
        } => {
            let sizes: Vec<usize> = nodes.iter().map(|&n| n as usize).collect();
            crate::bench::placement_suite(&sizes, placements as usize, repeats as usize, seed);
            Ok(())
        }
    }
}
