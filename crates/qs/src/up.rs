//! `qs up` and `qs agent`: reading the config, the fleet and the specs, and starting an
//! embedded fleet (on the in-memory fabric, or this machine's node on NATS).

use anyhow::{Context, Result, bail};
use qs_agent::fleet::{EmbeddedFleet, FleetOptions};
use qs_fabric::Fabric;
use qs_wire::{Capacity, NodeId, NodeSpec, parse_spec};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Seed 000's fleet, built into the binary for `qs up --demo`.
pub const SEED_FLEET: &str = include_str!("../../../examples/seed-fleet.toml");

/// Options of `qs up`.
pub struct Up {
    pub demo: bool,
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    /// Serve a non-loopback `listen` over plain HTTP.
    pub insecure_listen: bool,
    /// Serve the API over TLS with this certificate and key.
    pub tls: Option<qs_agent::api::tls::TlsFiles>,
    /// Names the API's Host header may carry.
    pub api_hosts: Vec<String>,
    pub fleet: Option<PathBuf>,
    pub apply: Vec<PathBuf>,
    /// A TOML file of core settings.
    pub config: Option<PathBuf>,
    /// `qs agent`: this machine as one real node.
    pub host: Option<Host>,
}

/// How `qs agent` runs this machine.
pub struct Host {
    /// The NATS servers and fleet to join, if any.
    pub nats: Option<Nats>,
    pub node: Option<String>,
    pub level: u8,
    /// Simulated GPUs (VRAM in MiB) for a machine without NVIDIA's driver.
    pub simulated_gpus_mib: Vec<u64>,
    /// Its built-in mesh agents.
    pub mesh: qs_agent::mesh::MeshOptions,
}

/// Where a `qs agent` joins its fleet.
#[derive(Clone, Debug)]
pub struct Nats {
    /// One server, or several of one cluster, comma-separated.
    pub urls: String,
    pub fleet: String,
    /// Copies JetStream keeps of the fleet's buckets and stream.
    pub replicas: usize,
    /// Replace this node's registered public key with the one in its state directory.
    pub rekey: bool,
    pub trust: crate::trust::TrustChoice,
}

/// This machine's name as a node name: the host name, lower-cased, with anything a DNS
/// label cannot hold turned into '-'.
fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = raw
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let name = name.trim_matches('-');
    if name.is_empty() {
        "local".into()
    } else {
        name.chars().take(63).collect()
    }
}

/// The address this machine's route to the first NATS server of `urls` leaves from: where
/// the others reach it, unless `[addresses] advertise` says. No packet is sent.
fn route_to(urls: &str) -> Option<std::net::IpAddr> {
    use std::net::ToSocketAddrs;
    let first = urls.split(',').next()?.trim();
    let hostport = first.split("://").last()?.rsplit('@').next()?;
    let hostport = hostport.split('/').next()?;
    let with_port = if hostport.contains(':') && !hostport.ends_with(']') {
        hostport.to_owned()
    } else {
        format!("{hostport}:4222")
    };
    let server = with_port.to_socket_addrs().ok()?.next()?;
    let any: std::net::SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(any).ok()?;
    socket.connect(server).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

pub(crate) fn read_spec(path: &Path) -> Result<qs_wire::SpecDocument> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(parse_spec(&path.display().to_string(), &text)?)
}

/// This machine as one node, with its real size; `gpus_mib` declares simulated GPUs (used where NVML finds none).
fn this_machine(name: &str, level: u8, gpus_mib: &[u64]) -> Result<Vec<NodeSpec>> {
    let sys = qs_agent::sense::Sensor::new()?.sample(&BTreeMap::new());
    Ok(vec![NodeSpec {
        id: NodeId::new(name).with_context(|| format!("node name {name:?}"))?,
        level,
        labels: BTreeMap::new(),
        capacity: Capacity {
            cpu_millicores: sys.cores as u64 * 1000,
            memory_bytes: sys.memory_total_bytes,
            gpus: gpus_mib
                .iter()
                .map(|mib| qs_wire::GpuCapacity {
                    vram_bytes: mib << 20,
                })
                .collect(),
        },
    }])
}

/// A non-loopback API needs TLS, or the operator's `--insecure-listen`, which is then
/// announced loudly: whoever reaches it with the token runs commands on every node.
fn check_listen(opts: &Up) -> Result<()> {
    if opts.api_hosts.len() > qs_agent::api::MAX_API_HOSTS {
        bail!(
            "--api-host given {} times; at most {}",
            opts.api_hosts.len(),
            qs_agent::api::MAX_API_HOSTS
        );
    }
    if opts.listen.ip().is_loopback() || opts.tls.is_some() {
        return Ok(());
    }
    if !opts.insecure_listen {
        bail!(
            "refusing to serve the API on {} (not loopback) over plain HTTP: its token would \
             cross the network in the clear. Give it --tls-cert and --tls-key, keep the \
             default 127.0.0.1 (behind a TLS proxy, say), or say --insecure-listen",
            opts.listen
        );
    }
    eprintln!(
        "qs: WARNING: the API listens on {} over plain HTTP (--insecure-listen): anyone who \
         sees one request can replay its token and run commands on every node",
        opts.listen
    );
    tracing::warn!(listen = %opts.listen, "API served over plain HTTP on a non-loopback address");
    Ok(())
}

/// Says whose identity the children get: a root agent's run as `nobody` (or the user their
/// spec names); any other agent's share its own, so they can read what it can.
fn announce_identity() {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        eprintln!(
            "qs: running as root: instances run as {} unless their spec names a user",
            qs_agent::run_as::DEFAULT_USER
        );
    } else {
        eprintln!(
            "qs: instances run as this agent's user (uid {uid}) and can read what it can, \
             its state directory included; run the agent as root (instances then run as \
             {}) or under a user of its own",
            qs_agent::run_as::DEFAULT_USER
        );
    }
}

pub fn up(opts: Up) -> Result<()> {
    check_listen(&opts)?;
    let tls = opts
        .tls
        .as_ref()
        .map(qs_agent::api::tls::ApiTls::load)
        .transpose()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    announce_identity();
    let nodes = match (&opts.fleet, opts.demo, &opts.host) {
        (Some(file), _, _) => read_spec(file)?.nodes,
        (None, true, _) => parse_spec("examples/seed-fleet.toml", SEED_FLEET)?.nodes,
        (None, false, Some(h)) => this_machine(
            h.node.as_deref().unwrap_or(&host_name()),
            h.level,
            &h.simulated_gpus_mib,
        )?,
        (None, false, None) => this_machine("local", 0, &[])?,
    };
    if nodes.is_empty() {
        bail!("the fleet declares no [node.*] table");
    }
    let mut docs = Vec::new();
    for file in &opts.apply {
        docs.push(read_spec(file)?);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let options = FleetOptions {
        state_dir: opts.state_dir.clone(),
        listen: opts.listen,
        nodes: nodes.clone(),
        config: crate::config_file::read_config(opts.config.as_deref())?,
        sense_every: Duration::from_millis(500),
        stop_grace: Duration::from_secs(5),
        seed: 1,
        host: opts.host.is_some(),
        noop_executor: false,
        mode: "embedded",
        authenticate: false,
        rekey: false,
        trust: qs_agent::trust::Trust::FirstUse,
        api_hosts: opts.api_hosts.clone(),
        tls,
        mesh: opts
            .host
            .as_ref()
            .map(|h| h.mesh.clone())
            .unwrap_or_default(),
    };
    let nats = opts.host.as_ref().and_then(|h| h.nats.clone());
    rt.block_on(async move {
        match nats {
            Some(Nats {
                urls: url,
                fleet: fleet_name,
                replicas,
                rekey,
                trust,
            }) => {
                let state = qs_store::StateDir::open(&opts.state_dir)?;
                let trust = crate::trust::choose(&trust, &fleet_name, &state)?;
                let security = crate::trust::nats_security(&options.config.nats)?;
                let fabric = qs_fabric::nats::NatsFabric::connect_secured(
                    &url,
                    &fleet_name,
                    replicas,
                    &security,
                )
                .await
                .with_context(|| format!("connecting to {url}"))?;
                println!("qs agent: fleet {fleet_name} on {url}");
                let waited = std::time::Instant::now();
                while !fabric.connected() && waited.elapsed() < Duration::from_secs(2) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if !fabric.connected() {
                    eprintln!(
                        "qs agent: warning: {url} is unreachable; running autonomous (keeping \
                         this node's instances and ledger) and retrying with backoff"
                    );
                }
                // Across processes every message is signed or sealed, and checked.
                let mut options = options;
                if options.config.addresses.advertise.is_none() {
                    options.config.addresses.advertise = route_to(&url);
                    if options.config.addresses.advertise.is_none() {
                        eprintln!(
                            "qs agent: warning: no route to {url} says this machine's address; \
                             other nodes will send its instances nothing until [addresses] \
                             advertise names it"
                        );
                    }
                }
                let options = FleetOptions {
                    mode: "nats",
                    authenticate: true,
                    rekey,
                    trust,
                    ..options
                };
                let fleet = EmbeddedFleet::start_on(options, fabric.clone()).await?;
                tokio::spawn(qs_agent::mirror::run(
                    fabric,
                    nodes[0].id.clone(),
                    fleet.shared.ledger.clone(),
                    fleet.stopping(),
                ));
                serve(fleet, scheme, &nodes, &opts.state_dir, &docs, None).await
            }
            None => {
                let fleet = EmbeddedFleet::start(options).await?;
                let story = opts.demo.then(|| {
                    tokio::spawn(crate::demo::play(
                        fleet.addr,
                        fleet.shared.clone(),
                        fleet.fabric.clone(),
                    ))
                });
                serve(fleet, scheme, &nodes, &opts.state_dir, &docs, story).await
            }
        }
    })
}

/// Announces a started fleet, applies `docs`, and runs until SIGTERM or Ctrl-C.
async fn serve<F: qs_fabric::Fabric>(
    fleet: EmbeddedFleet<F>,
    scheme: &str,
    nodes: &[NodeSpec],
    state_dir: &Path,
    docs: &[qs_wire::SpecDocument],
    story: Option<tokio::task::JoinHandle<()>>,
) -> Result<()> {
    println!(
        "qs up: {} nodes ({}), API on {scheme}://{} (token in api.token), state in {}",
        nodes.len(),
        nodes
            .iter()
            .map(|n| n.id.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        fleet.addr,
        state_dir.display()
    );
    for doc in docs {
        let applied = qs_agent::specs::put_specs(&fleet.fabric, doc).await?;
        println!(
            "applied {}",
            applied
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    wait_for_stop().await;
    println!("qs up: stopping (instances get SIGTERM, then SIGKILL after 5 s)");
    if let Some(s) = story {
        s.abort();
    }
    fleet.shutdown().await;
    println!("qs up: stopped");
    Ok(())
}

async fn wait_for_stop() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
