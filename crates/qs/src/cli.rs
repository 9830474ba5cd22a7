//! Command-line interface: the subcommands, their flags, and the glue to the crates.

use crate::render::{self, OutputFormat};
use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use qs_store::Ledger;
use qs_wire::Record;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "qs",
    version,
    about = "Quasicrystal: a decentralized orchestrator for GPU and CPU fleets"
)]
pub struct Cli {
    /// The agent API the client commands talk to.
    #[arg(long, global = true, env = "QS_API", default_value = crate::client::DEFAULT_API)]
    api: String,
    /// The API's token; default: read by itself from the agent's state directory when the
    /// agent runs on this machine (its api.token, which needs the right to read it).
    #[arg(long, global = true, env = "QS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// For an https:// --api: the certificate (PEM) to trust for it, that of the authority
    /// that signed the agent's, or its own self-signed one; default: the system's roots.
    #[arg(long, global = true, env = "QS_TLS_CA")]
    tls_ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// Whether the command serves (runs an agent, a model double or a bench's fleets) rather
    /// than printing for a reader.
    pub fn serves(&self) -> bool {
        matches!(
            self.command,
            Command::Up { .. }
                | Command::Agent { .. }
                | Command::ModelDouble { .. }
                | Command::Bench { .. }
        )
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run an embedded fleet in one process: in-memory fabric, real child processes, HTTP API.
    Up {
        /// Seed 000's seven-node fleet, the example specs, and its story played for real.
        #[arg(long)]
        demo: bool,
        /// Nodes of the fleet (a spec file with [node.*] tables); default: this machine.
        #[arg(long)]
        fleet: Option<PathBuf>,
        #[command(flatten)]
        serve: Serve,
    },
    /// Run this machine as one node: host sensing, NVML GPUs when present, HTTP API.
    Agent {
        #[command(flatten)]
        serve: Serve,
        /// Join a fleet across machines through this NATS server (JetStream, 2.10+), e.g.
        /// nats://127.0.0.1:4222, or several servers of one cluster, comma-separated; without
        /// it the node runs alone on the in-memory fabric.
        #[arg(long)]
        nats: Option<String>,
        /// Copies JetStream keeps of the fleet's buckets and ledger stream (at most the
        /// cluster's size): 3 on a 3-server cluster outlives the loss of one server.
        #[arg(long, default_value_t = 1, requires = "nats", value_parser = clap::value_parser!(u64).range(1..=5))]
        nats_replicas: u64,
        /// The fleet's name on that server (several fleets may share one).
        #[arg(long, default_value = "default", requires = "nats")]
        fleet: String,
        /// Register this node's key (kept in the state directory) in place of another one the
        /// fleet holds for its name: after a reinstall lost the old key. Without it, a name
        /// registered with another key stops the agent.
        #[arg(long, requires = "nats")]
        rekey: bool,
        /// Join the fleet with this single-use token from `qs fleet token` (or set
        /// QS_JOIN_TOKEN); only needed until the node holds a certificate.
        #[arg(long, env = "QS_JOIN_TOKEN", hide_env_values = true, requires = "nats")]
        join_token: Option<String>,
        /// Act as a fleet authority with the key in this directory (from `qs fleet init`):
        /// this node certifies itself and answers join requests.
        #[arg(long, requires = "nats")]
        authority: Option<PathBuf>,
        /// Trust the first key registered under each node name, without certificates: a
        /// single lab machine only (anyone who can write the fleet's KV can then be a node).
        #[arg(long, requires = "nats", conflicts_with_all = ["join_token", "authority"])]
        trust_on_first_use: bool,
        /// This node's name (a DNS label); default: the host name.
        #[arg(long)]
        node: Option<String>,
        /// This node's level, 0 (best) to 7.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=7))]
        level: u8,
        /// Declare a simulated GPU with this much VRAM in MiB (repeat for several): a test
        /// double for machines without NVIDIA's driver; real GPUs found by NVML replace them.
        #[arg(long = "simulated-gpu-mib", value_parser = clap::value_parser!(u64).range(1..=1 << 24))]
        simulated_gpus_mib: Vec<u64>,
        #[command(flatten)]
        mesh: Box<MeshFlags>,
    },
    /// Apply spec files to a running fleet (all of a file or nothing).
    Apply {
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
    },
    /// Delete a service or job; its instances are stopped.
    Delete { name: String },
    /// List instances.
    Ps {
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// List the stable service addresses this agent listens on, and the instances behind each.
    Addresses {
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// List nodes; with --explain, each part of each node's composite for a service.
    Nodes {
        #[arg(long)]
        explain: Option<String>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// List services and jobs with wanted, running and serving counts.
    Services {
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// The agent's health and each service's state.
    Status {
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// The queues: placements in flight per node, and the durable tasks' inbound, refinement
    /// and outbound queues.
    Queues {
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Drain a node: it takes no new work and its instances move elsewhere; shows progress.
    Drain {
        node: String,
        /// End a drain instead.
        #[arg(long)]
        undo: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
        timeout_s: u64,
    },
    /// Break things on purpose.
    Chaos {
        #[command(subcommand)]
        action: ChaosAction,
    },
    /// Durable tasks: submit one from a file, list them, show or cancel one.
    Task {
        #[command(subcommand)]
        action: TaskAction,
    },
    /// The mesh's console (seed 001): status, broadcast, ask, delegate, cascade, heal,
    /// freeze, thaw, and a plain-words chat.
    Mesh {
        #[command(subcommand)]
        action: crate::mesh_console::MeshCmd,
    },
    /// Approve promoting a replica of a stateful-read service that lost its primary.
    Approve { service: String },
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
    /// The init system as the model runtimes' authority.
    Systemd {
        #[command(subcommand)]
        action: SystemdAction,
    },
    /// Test double of an OpenAI-compatible model server (stands in for vLLM or Ollama):
    /// takes its VRAM on the simulated GPU, loads for a while, streams completions.
    ModelDouble {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "double")]
        model: String,
        /// VRAM it takes on the simulated GPU the agent hands it (0: none).
        #[arg(long, default_value_t = 0)]
        vram_mib: u64,
        /// How long it loads before it answers its health check.
        #[arg(long, default_value_t = 0)]
        load_ms: u64,
        #[arg(long, default_value_t = 5_000)]
        prefill_tps: u64,
        #[arg(long, default_value_t = 1_000)]
        decode_tps: u64,
    },
    /// Run the deterministic simulator: the real core, a virtual clock, a simulated network.
    Sim(crate::sim::SimArgs),
    /// The fleet authority: create it, issue join tokens, revoke nodes, list certificates.
    Fleet {
        #[command(subcommand)]
        action: crate::trust::FleetAction,
    },
    /// Check this machine's clock, certificates and NATS settings, and say what to fix.
    Doctor(crate::trust::DoctorArgs),
    /// Run a benchmark suite; prints one JSON object per line.
    Bench {
        #[command(subcommand)]
        suite: crate::bench_args::BenchSuite,
    },
    /// Validate spec files; prints what they declare, or the first error with its location.
    Check {
        /// TOML spec files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Show the ledger: each placement's story, step by step.
    Events {
        /// Read this ledger file (one written by `qs sim --ledger`) instead of the agent's.
        #[arg(long)]
        ledger: Option<PathBuf>,
        /// Keep printing new events as they happen.
        #[arg(long)]
        follow: bool,
        /// First sequence number to show.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Most events to show.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        limit: u64,
        /// Only events written by this node.
        #[arg(long)]
        node: Option<String>,
        /// Only events whose text or JSON mentions this (a service, an instance, a placement).
        #[arg(long)]
        grep: Option<String>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
}

/// `qs agent`'s mesh flags (seed 001).
#[derive(clap::Args, Debug)]
struct MeshFlags {
    /// Register this many built-in mesh agents on this node (seed 001): each answers what
    /// it is sent after --mesh-agent-ms with READY and its context hash.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=qs_agent::mesh_agents::MAX_BUILTIN_AGENTS as i64))]
    mesh_agents: u32,
    /// How long a built-in mesh agent takes, milliseconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    mesh_agent_ms: u64,
    /// What the built-in mesh agents answer an ask with (their context hash).
    #[arg(long, default_value = "a1b2c3d4")]
    mesh_context: String,
    /// How long an agent that joined lately beats before this node, as its cluster
    /// lead, adds it to the routing pool (seed §10.2), milliseconds.
    #[arg(long, default_value_t = qs_core::mesh::integration::SETTLE_MS, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    mesh_settle_ms: u64,
    /// This node's zone (a data centre, a cloud zone: `us-east-1a`): the mesh keeps its
    /// clusters and sectors within a zone, so leads and coordinators are near their
    /// agents (seed §2.1). Default: none.
    #[arg(long, default_value = "", value_parser = parse_zone)]
    mesh_zone: String,
    /// How long this node is in a running mesh before it may lead a cluster (seed
    /// §10.2: nodes join the routing pool gradually; the nodes that start the mesh
    /// together lead at once), milliseconds.
    #[arg(long, default_value_t = qs_core::mesh::seniority::LEAD_AFTER_MS, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    mesh_lead_after_ms: u64,
}

impl MeshFlags {
    fn options(self) -> qs_agent::mesh::MeshOptions {
        qs_agent::mesh::MeshOptions {
            agents: self.mesh_agents,
            processing_ms: self.mesh_agent_ms,
            context: self.mesh_context,
            settle_ms: self.mesh_settle_ms,
            zone: self.mesh_zone,
            lead_after_ms: self.mesh_lead_after_ms,
        }
    }
}

/// What `qs up` and `qs agent` share: where state lives, where the API listens, what to
/// apply at start.
#[derive(clap::Args, Debug)]
struct Serve {
    /// Spec files to apply at start.
    #[arg(short = 'f', long = "apply")]
    apply: Vec<PathBuf>,
    /// Where the ledger, instance logs and the desired-state cache live.
    #[arg(long, default_value = ".qs-state")]
    state_dir: PathBuf,
    /// Where the HTTP API listens (loopback by default). Any other address needs TLS
    /// (--tls-cert and --tls-key) or --insecure-listen: the API runs commands on every node
    /// of the fleet.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Serve the API over TLS with this certificate chain (PEM, the server's first).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve a non-loopback --listen over plain HTTP anyway: the token then crosses the
    /// network in the clear. Only behind a TLS-terminating proxy or on a trusted network.
    #[arg(long)]
    insecure_listen: bool,
    /// A name the API's Host header may carry (beyond loopback's and the --listen address),
    /// e.g. the machine's DNS name; repeatable.
    #[arg(long = "api-host")]
    api_hosts: Vec<String>,
    /// Tuning of the core (a TOML file of qs_core::Config fields: thresholds, gate_min,
    /// heartbeat_ms, dead_after_ms, ...); unnamed fields keep their defaults.
    #[arg(long)]
    config: Option<PathBuf>,
}

impl Serve {
    fn into_up(
        self,
        demo: bool,
        fleet: Option<PathBuf>,
        host: Option<crate::up::Host>,
    ) -> crate::up::Up {
        crate::up::Up {
            demo,
            state_dir: self.state_dir,
            listen: self.listen,
            insecure_listen: self.insecure_listen,
            tls: self
                .tls_cert
                .zip(self.tls_key)
                .map(|(cert, key)| qs_agent::api::tls::TlsFiles { cert, key }),
            api_hosts: self.api_hosts,
            fleet,
            apply: self.apply,
            config: self.config,
            host,
        }
    }
}

#[derive(Subcommand, Debug)]
enum SystemdAction {
    /// Write one unit per model runtime of FILES into --out, with `Conflicts=` between
    /// runtimes that cannot share a GPU (check them with `systemd-analyze verify`).
    Units {
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
        /// One per GPU of the node: its VRAM in MiB.
        #[arg(long = "gpu-mib", required = true)]
        gpus_mib: Vec<u64>,
        #[arg(long)]
        out: PathBuf,
        /// The first runtime's port; the next ones count up.
        #[arg(long, default_value_t = 8100)]
        port_base: u16,
        /// The config whose `[models]` section (reserved margin, strategy) applies.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum ChaosAction {
    /// kill -9 an instance's process group, or a node: the agent process itself under
    /// `qs agent`, one virtual node under `qs up`. Then reports the recovery.
    Kill {
        target: String,
        #[command(flatten)]
        watch: RecoveryArgs,
    },
    /// Freeze a node: SIGSTOP of the agent process under `qs agent` (resumed by SIGCONT),
    /// one virtual node under `qs up`. Then reports the recovery.
    Pause {
        node: String,
        /// How long the node stays frozen.
        #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
        for_ms: u64,
        #[command(flatten)]
        watch: RecoveryArgs,
    },
}

#[derive(Subcommand, Debug)]
enum TaskAction {
    /// Submit the task a file describes (a `[task]` table).
    Submit {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// List the tasks.
    Ls {
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Show one task.
    Show {
        id: String,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Cancel a task that has not ended.
    Cancel { id: String },
}

/// How `qs chaos` watches the fleet recover.
#[derive(clap::Args, Debug)]
struct RecoveryArgs {
    /// The agent that watches the recovery (default: --api). Name a survivor when the
    /// target is the agent --api points at.
    #[arg(long)]
    observer: Option<String>,
    /// Give up waiting for the recovery after this many seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout_s: u64,
    /// Do not wait: report the action only.
    #[arg(long)]
    no_wait: bool,
}

impl RecoveryArgs {
    fn watch<'a>(&'a self, api: &'a str) -> Option<crate::fleet::Recovery<'a>> {
        (!self.no_wait).then(|| crate::fleet::Recovery {
            observer: self.observer.as_deref().unwrap_or(api),
            timeout: std::time::Duration::from_secs(self.timeout_s),
        })
    }
}

pub fn run(cli: Cli) -> Result<()> {
    let api = cli.api.as_str();
    if let Some(token) = &cli.token {
        crate::client::use_token(token)?;
    }
    if let Some(ca) = &cli.tls_ca {
        crate::client::trust(ca)?;
    }
    match cli.command {
        Command::Up { demo, fleet, serve } => crate::up::up(serve.into_up(demo, fleet, None)),
        Command::Agent {
            serve,
            nats,
            nats_replicas,
            fleet,
            rekey,
            join_token,
            authority,
            trust_on_first_use,
            node,
            level,
            simulated_gpus_mib,
            mesh,
        } => crate::up::up(serve.into_up(
            false,
            None,
            Some(crate::up::Host {
                nats: nats.map(|urls| crate::up::Nats {
                    urls,
                    fleet,
                    replicas: nats_replicas as usize,
                    rekey,
                    trust: crate::trust::TrustChoice {
                        join_token,
                        authority,
                        first_use: trust_on_first_use,
                    },
                }),
                node,
                level,
                simulated_gpus_mib,
                mesh: mesh.options(),
            }),
        )),
        Command::Fleet { action } => crate::trust::fleet(action),
        Command::Doctor(args) => crate::doctor::doctor(api, &args),
        Command::Apply { files } => crate::fleet::apply(api, &files),
        Command::Delete { name } => crate::fleet::delete(api, &name),
        Command::Ps { output } => crate::fleet::ps(api, output),
        Command::Addresses { output } => crate::fleet::addresses(api, output),
        Command::Nodes { explain, output } => crate::fleet::nodes(api, explain.as_deref(), output),
        Command::Services { output } => crate::fleet::services(api, output),
        Command::Status { output } => crate::fleet::status(api, output),
        Command::Queues { output } => crate::tasks::queues(api, output),
        Command::Chaos {
            action: ChaosAction::Kill { target, watch },
        } => crate::fleet::chaos_kill(api, &target, watch.watch(api)),
        Command::Chaos {
            action:
                ChaosAction::Pause {
                    node,
                    for_ms,
                    watch,
                },
        } => crate::fleet::chaos_pause(api, &node, for_ms, watch.watch(api)),
        Command::Approve { service } => crate::fleet::approve(api, &service),
        Command::Mesh { action } => crate::mesh_console::run(api, action),
        Command::Task { action } => match action {
            TaskAction::Submit { file, output } => crate::tasks::submit(api, &file, output),
            TaskAction::Ls { output } => crate::tasks::ls(api, output),
            TaskAction::Show { id, output } => crate::tasks::show_one(api, &id, output),
            TaskAction::Cancel { id } => crate::tasks::cancel(api, &id),
        },
        Command::Drain {
            node,
            undo,
            timeout_s,
        } => crate::fleet::drain(api, &node, undo, std::time::Duration::from_secs(timeout_s)),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "qs", &mut std::io::stdout());
            Ok(())
        }
        Command::Systemd {
            action:
                SystemdAction::Units {
                    files,
                    gpus_mib,
                    out,
                    port_base,
                    config,
                },
        } => crate::systemd::units(&crate::systemd::Units {
            files,
            gpus_mib,
            out,
            port_base,
            config,
        }),
        Command::ModelDouble {
            port,
            model,
            vram_mib,
            load_ms,
            prefill_tps,
            decode_tps,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let opts = qs_agent::model_double::DoubleOptions {
                vram_bytes: vram_mib.saturating_mul(1 << 20),
                load_ms,
                prefill_tokens_per_s: prefill_tps,
                decode_tokens_per_s: decode_tps,
                ..qs_agent::model_double::DoubleOptions::new(port, model)
            };
            rt.block_on(qs_agent::model_double::serve(opts))
                .with_context(|| format!("model double on 127.0.0.1:{port}"))
        }
        Command::Sim(args) => crate::sim::run(args),
        Command::Bench { suite } => crate::bench_args::run(suite),
        Command::Check { files, output } => crate::check::check(&files, output),
        Command::Events {
            ledger,
            follow,
            from,
            limit,
            node,
            grep,
            output,
        } => {
            let keep = |r: &Record| {
                node.as_deref().is_none_or(|n| r.node.as_str() == n)
                    && grep.as_deref().is_none_or(|g| {
                        render::describe(&r.event).contains(g)
                            || serde_json::to_string(&r.event).is_ok_and(|s| s.contains(g))
                    })
            };
            match ledger {
                Some(path) => events(&path, from, limit as usize, keep, output),
                None => {
                    crate::fleet::events_from_api(api, from, limit as usize, follow, output, keep)
                }
            }
        }
    }
}

fn events(
    path: &PathBuf,
    from: u64,
    limit: usize,
    keep: impl Fn(&Record) -> bool,
    output: OutputFormat,
) -> Result<()> {
    if !path.exists() {
        bail!("{}: no such ledger", path.display());
    }
    let ledger = Ledger::open(path)?;
    let mut shown = 0;
    let mut at = from;
    while shown < limit {
        let batch = ledger.read(at, qs_store::MAX_READ)?;
        let Some(last) = batch.last() else { break };
        at = last.seq + 1;
        for r in batch.iter().filter(|r| keep(r)).take(limit - shown) {
            shown += 1;
            match output {
                OutputFormat::Json => println!("{}", serde_json::to_string(r)?),
                OutputFormat::Text => println!("{}", render::line(r)),
            }
        }
    }
    Ok(())
}

/// `--mesh-zone`, checked as the `mesh` bucket's records are.
fn parse_zone(s: &str) -> Result<String, String> {
    qs_wire::mesh::check_zone(s).map(|()| s.to_owned())
}
