//! `qs up`: an embedded fleet in one process. Every node is a full runtime of its own (its own
//! core, registry, executor and caps), they talk over the in-memory fabric exactly as they
//! would over NATS, and they share the process's ledger, sensor and HTTP API.

use crate::api;
use crate::control::Shared;
use crate::desired;
use crate::exec::NoopScript;
use crate::identity::{self, Auth};
use crate::membership::Membership;
use crate::runtime::{NodeSetup, SenseMode, run_node};
use crate::sense::{Sensor, SimulatedGpus};
use qs_core::Config;
use qs_core::auth::AuthConfig;
use qs_fabric::Fabric;
use qs_fabric::memory::MemoryFabric;
use qs_store::{Ledger, StateDir, StateFile};
use qs_wire::{NodeId, NodeRecord, NodeSpec};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How to run an embedded fleet.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    pub nodes: Vec<NodeSpec>,
    pub config: Config,
    pub sense_every: Duration,
    pub stop_grace: Duration,
    pub seed: u64,
    /// One real machine (`qs agent`): sense the whole host and its GPUs through NVML.
    /// Otherwise every node is virtual: sensed by its own instances, with simulated GPUs.
    pub host: bool,
    /// Start no processes (the no-op executor double): for benchmarks of the decision path.
    pub noop_executor: bool,
    /// What `/health` calls this process while its fabric is connected: `embedded`, `nats`.
    pub mode: &'static str,
    /// Sign and seal every message, and drop what is not (a fleet that spans processes).
    /// Each node's key is kept in the state directory and registered in the fleet's KV.
    pub authenticate: bool,
    /// Replace a registered key that differs from this node's (after a reinstall).
    pub rekey: bool,
    /// How peers are trusted when `authenticate`: under the fleet authority's certificates,
    /// or the first key registered under a name.
    pub trust: crate::trust::Trust,
    /// Names the API's `Host` header may carry beyond loopback's and the listen address.
    pub api_hosts: Vec<String>,
    /// Serve the API over TLS with this certificate (otherwise plain HTTP).
    pub tls: Option<api::tls::ApiTls>,
    /// The mesh agents of the process's first node.
    pub mesh: crate::mesh::MeshOptions,
}

/// Why a fleet could not start.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Store(#[from] qs_store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("a fleet needs at least one node")]
    NoNodes,
    #[error(transparent)]
    Fabric(qs_fabric::FabricError),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    #[error("the API token: {0}")]
    Token(crate::AgentError),
    #[error("the model runtimes' executor: {0}")]
    ModelExecutor(String),
    #[error("the API keys: {0}")]
    ApiKeys(String),
}

/// Serves the API on `listener` until `stop` changes. Every connection gets `TCP_NODELAY`
/// (answers are small and come at once); the peer's address reaches the [`api`] guard.
async fn serve_api<L>(listener: L, app: axum::Router, mut stop: watch::Receiver<bool>)
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    L::Io: api::tls::HasTcp,
{
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|io| {
        let _ = api::tls::HasTcp::tcp(io).set_nodelay(true);
    });
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stop.changed().await;
    });
    if let Err(e) = serve.await {
        tracing::error!("HTTP API stopped: {e}");
    }
}

/// The socket task workers connect to, in the state directory, for the agent's user only.
fn workers_socket(state: &StateDir) -> Result<tokio::net::UnixListener, FleetError> {
    use std::os::unix::fs::PermissionsExt;
    let path = state.socket(StateFile::TasksSocket)?;
    let io = |source| {
        FleetError::Store(qs_store::StoreError::Io {
            path: path.clone(),
            source,
        })
    };
    let listener = tokio::net::UnixListener::bind(&path).map_err(io)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Whether other nodes, which reach this one at `advertise`, reach an API that listens on
/// `listen`.
fn reachable_at(listen: SocketAddr, advertise: Option<std::net::IpAddr>) -> bool {
    let Some(a) = advertise else {
        return false;
    };
    let ip = listen.ip();
    ip.is_unspecified() || ip == a || (ip.is_loopback() && a.is_loopback())
}

/// NVML for a real host when a driver is there; otherwise the GPUs the node declares,
/// simulated (a double, named as such in `/v1/nodes`).
fn gpu_source(host: bool, spec: &NodeSpec) -> Box<dyn crate::sense::GpuSource> {
    if host {
        match crate::sense::Nvml::load() {
            Ok(n) => return Box::new(n),
            Err(e) => tracing::info!("{e}; using the GPUs declared in config, simulated"),
        }
    }
    Box::new(SimulatedGpus {
        gpus: spec.capacity.gpus.clone(),
    })
}

/// The model host of a node with GPUs: NVML's free memory on a real host that has the
/// driver, else the simulated GPUs' accounting under the state directory.
fn model_host<F: Fabric>(
    opts: &FleetOptions,
    shared: &Arc<Shared>,
    fabric: &F,
    spec: &NodeSpec,
    membership: &Membership,
) -> Result<crate::models::HostSetup<F>, FleetError> {
    use crate::models::{GpuSetup, VramReader};
    let systemd_user =
        (opts.config.models.executor == "systemd").then_some(opts.config.models.systemd_user);
    if let Some(user) = systemd_user {
        crate::models::systemctl::Systemctl::unit_dir(user).map_err(FleetError::ModelExecutor)?;
    }
    let nvml = opts
        .host
        .then(|| crate::sense::Nvml::load().ok().map(Arc::new))
        .flatten();
    let mut gpus = Vec::new();
    for (i, g) in spec.capacity.gpus.iter().enumerate() {
        let reader = match &nvml {
            Some(n) => VramReader::Nvml(n.clone(), i as u32),
            None => {
                let dir = shared
                    .state_dir
                    .root()
                    .join("gpus")
                    .join(spec.id.as_str())
                    .join(i.to_string());
                let gpu = crate::simgpu::SimGpu::create(&dir, g.vram_bytes).map_err(|source| {
                    FleetError::Store(qs_store::StoreError::Io {
                        path: dir.clone(),
                        source,
                    })
                })?;
                VramReader::Simulated(gpu)
            }
        };
        gpus.push(GpuSetup {
            index: i as u32,
            vram_bytes: g.vram_bytes,
            reader,
        });
    }
    Ok(crate::models::HostSetup {
        node: spec.id.clone(),
        fabric: fabric.clone(),
        registry: shared.models.clone(),
        journal: shared.journal.clone(),
        counters: shared.counters.clone(),
        gpus,
        config: opts.config.models.gpu(0),
        policy: opts
            .config
            .models
            .policy()
            .unwrap_or(qs_core::gpu::PolicyKind::TippingPoint),
        strategy: opts
            .config
            .models
            .strategy()
            .unwrap_or(qs_core::gpu::StrategyKind::TippingPoint),
        log_dir: shared
            .state_dir
            .path(qs_store::StateFile::Logs(&spec.id))
            .join("models"),
        stop_grace: opts.stop_grace,
        state: shared.state_dir.clone(),
        ledger: shared.ledger.clone(),
        membership: membership.clone(),
        systemd_user,
    })
}

/// A running fleet of one process: every node of `qs up` on the in-memory fabric, or the one
/// node of `qs agent` on NATS.
pub struct EmbeddedFleet<F: Fabric = MemoryFabric> {
    pub shared: Arc<Shared>,
    pub fabric: F,
    pub addr: SocketAddr,
    /// With the no-op executor double: each node's script (broken starts, sensed loads).
    pub scripts: BTreeMap<NodeId, Arc<NoopScript>>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    writer: tokio::task::JoinHandle<()>,
    writer_stop: watch::Sender<bool>,
}

impl EmbeddedFleet<MemoryFabric> {
    /// Starts the nodes on a fresh in-memory fabric; the desired state cached by the last
    /// run is stored in its KV again.
    pub async fn start(mut opts: FleetOptions) -> Result<Self, FleetError> {
        // Every node of an embedded fleet is this machine.
        opts.config
            .addresses
            .advertise
            .get_or_insert(std::net::Ipv4Addr::LOCALHOST.into());
        let fabric = MemoryFabric::new();
        let doc = desired::load(&StateDir::open(&opts.state_dir)?)?;
        crate::specs::put_specs(&fabric, &doc)
            .await
            .map_err(FleetError::Fabric)?;
        Self::launch(opts, fabric, vec![]).await
    }
}

impl<F: Fabric> EmbeddedFleet<F> {
    /// Starts the nodes on `fabric`, whose KV holds the desired state; until it answers, the
    /// desired state cached by the last run rules.
    pub async fn start_on(opts: FleetOptions, fabric: F) -> Result<Self, FleetError> {
        let known = desired::load(&StateDir::open(&opts.state_dir)?)?.workloads;
        Self::launch(opts, fabric, known).await
    }

    async fn launch(
        mut opts: FleetOptions,
        fabric: F,
        known: Vec<qs_wire::WorkloadSpec>,
    ) -> Result<Self, FleetError> {
        if opts.nodes.is_empty() {
            return Err(FleetError::NoNodes);
        }
        let state = StateDir::open(&opts.state_dir)?;
        let ledger = Arc::new(Ledger::open(state.path(StateFile::Ledger))?);
        let (writer_stop, writer_stop_rx) = watch::channel(false);
        let retention = qs_store::Retention {
            max_age_us: opts.config.ledger_max_age_ms.saturating_mul(1000),
            max_bytes: opts.config.ledger_max_bytes,
        };
        let (journal, writer) =
            crate::journal::Journal::start(ledger.clone(), retention, writer_stop_rx);
        let certified = match (&opts.trust, opts.authenticate) {
            (crate::trust::Trust::Certificates(c), true) => Some(c.as_ref().clone()),
            _ => None,
        };
        let auth = Arc::new(Auth::new(
            AuthConfig::from_config(&opts.config, opts.authenticate),
            certified.as_ref().map(|c| c.anchor.clone()),
        )?);
        let mut own = Vec::new();
        let mut certificates = Vec::new();
        if opts.authenticate {
            for spec in &opts.nodes {
                let secret = identity::load_or_create_secret(&state, &spec.id)?;
                let public = auth.add_local(spec.id.clone(), secret);
                if let Some(c) = &certified {
                    let cert = crate::trust::obtain(
                        &fabric,
                        &auth,
                        c,
                        &state,
                        &spec.id,
                        spec.level,
                        &opts.config.trust,
                    )
                    .await?;
                    certificates.push((spec.id.clone(), cert));
                    continue;
                }
                own.push(identity::Own {
                    node: spec.id.clone(),
                    record: NodeRecord::new(
                        public,
                        spec.level,
                        crate::clock::now().as_micros() / 1000,
                    ),
                    key_file: state.path(StateFile::Key(&spec.id)),
                });
            }
            if fabric.connected() && certified.is_none() {
                identity::register_at_start(&fabric, &own, opts.rekey).await?;
            }
        }
        // A certified node runs at the level its certificate grants (peers refuse any other)
        // and does only what it grants.
        let mut granted = BTreeMap::new();
        for (node, signed) in &certificates {
            let Ok(cert) = signed.open::<qs_wire::trust::Certificate>() else {
                continue;
            };
            if let Some(spec) = opts.nodes.iter_mut().find(|s| s.id == *node)
                && spec.level != cert.level
            {
                tracing::warn!(
                    "node {node}: level {}, as its certificate grants (not {})",
                    cert.level,
                    spec.level
                );
                spec.level = cert.level;
            }
            granted.insert(node.clone(), cert.capabilities);
        }
        let membership = Membership::new(&opts.config);
        let route = opts.authenticate.then(|| {
            Arc::new(crate::models::route::FleetRoute::new(
                membership.clone(),
                auth.clone(),
                opts.nodes.iter().map(|n| n.id.clone()).collect(),
                opts.nodes[0].id.clone(),
                opts.config.max_clock_skew_ms,
            ))
        });
        let tasks = Arc::new(crate::tasks::TaskHost::new(
            opts.nodes[0].id.clone(),
            journal.clone(),
            &state,
            &ledger,
        )?);
        let (mesh, mesh_ends) = crate::mesh::MeshHandle::new();
        let shared = Arc::new(Shared {
            auth: auth.clone(),
            ledger,
            journal: journal.clone(),
            counters: Default::default(),
            views: RwLock::default(),
            controls: RwLock::default(),
            sensor: Mutex::new(Sensor::new().ok()),
            state_dir: state.clone(),
            models: Default::default(),
            route,
            tasks,
            entry_port: Default::default(),
            addresses: Default::default(),
            mesh,
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(shared.tasks.clone().keep_deadlines(stop_rx.clone()));
        tasks.spawn(crate::tasks::validate::judge(
            shared.tasks.clone(),
            stop_rx.clone(),
        ));
        // The fleet's copy of the tasks: adoption, hand-over, sealed completions.
        let (link, inbox) = crate::tasks::fleet::FleetLink::new();
        shared.tasks.attach_fleet(link.clone());
        let live = |m: Membership| move || m.read().live_nodes().map(|n| n.node.clone()).collect();
        tasks.spawn(crate::tasks::fleet::run(
            fabric.clone(),
            shared.auth.clone(),
            shared.tasks.clone(),
            inbox,
            live(membership.clone()),
            stop_rx.clone(),
        ));
        let (news, outgoing) = crate::tasks::bus::outgoing();
        shared.tasks.attach_bus(news);
        let (models, first) = (shared.models.clone(), opts.nodes[0].id.clone());
        let warm = move || {
            let views = models.views_of(&first).into_iter();
            let warm = views.filter(|m| m.state == "warm").map(|m| m.name);
            warm.take(qs_wire::task_bus::MAX_BUS_MODELS).collect()
        };
        tasks.spawn(crate::tasks::bus::run(
            fabric.clone(),
            shared.auth.clone(),
            shared.tasks.clone(),
            link,
            outgoing,
            live(membership.clone()),
            warm,
            stop_rx.clone(),
        ));
        let (mesh_agents, mesh_answers) =
            crate::mesh::LocalAgents::new(opts.nodes[0].id.clone(), opts.mesh.clone());
        tasks.spawn(crate::mesh::run(
            fabric.clone(),
            shared.auth.clone(),
            shared.journal.clone(),
            shared.state_dir.clone(),
            opts.nodes[0].id.clone(),
            mesh_agents.clone(),
            mesh_answers,
            mesh_ends,
            live(membership.clone()),
            stop_rx.clone(),
        ));
        if !opts.noop_executor {
            // Without its socket (a state directory whose path is too long for one, say) the
            // agent runs on; tasks then wait for workers.
            match workers_socket(&state) {
                Ok(listener) => {
                    tasks.spawn(crate::tasks::worker::serve(
                        shared.tasks.clone(),
                        shared.models.clone(),
                        mesh_agents,
                        listener,
                        stop_rx.clone(),
                    ));
                }
                Err(e) => tracing::warn!("no socket for task workers: {e}"),
            }
        }
        // The desired-state cache: what was applied survives a restart of the process.
        tasks.spawn(desired::keep(
            fabric.clone(),
            state.clone(),
            stop_rx.clone(),
        ));
        if opts.authenticate {
            tasks.spawn(identity::follow(
                fabric.clone(),
                auth.clone(),
                own,
                opts.rekey,
                stop_rx.clone(),
            ));
        }
        if let Some(c) = &certified {
            for (node, cert) in certificates {
                tasks.spawn(crate::trust::renew(
                    fabric.clone(),
                    auth.clone(),
                    c.clone(),
                    crate::trust::Held {
                        state: state.clone(),
                        node,
                        certificate: cert,
                    },
                    opts.config.trust.clone(),
                    stop_rx.clone(),
                ));
            }
            if let Some(authority) = &c.authority {
                tasks.spawn(crate::trust::serve_joins(
                    fabric.clone(),
                    authority.clone(),
                    auth.clone(),
                    opts.config.trust.certificate_lifetime_ms,
                    stop_rx.clone(),
                ));
            }
        }
        let feed = membership
            .feed(
                &fabric,
                known,
                auth,
                shared.journal.clone(),
                opts.nodes[0].id.clone(),
            )
            .await
            .map_err(FleetError::Fabric)?;
        tasks.spawn(feed.run(shared.counters.clone(), stop_rx.clone()));
        if !opts.noop_executor {
            let setup = crate::addresses::AddressSetup {
                membership: membership.clone(),
                config: opts.config.addresses.clone(),
                view: shared.addresses.clone(),
                child_users: opts.config.child_users.clone(),
            };
            tasks.spawn(crate::addresses::serve(setup, stop_rx.clone()));
        }
        let mut scripts = BTreeMap::new();
        for (i, spec) in opts.nodes.iter().enumerate() {
            let noop = opts.noop_executor.then(|| {
                let script = Arc::new(NoopScript::default());
                scripts.insert(spec.id.clone(), script.clone());
                script
            });
            // A node offers the GPUs its source has: NVML's real ones on a host that has
            // them, else those declared (simulated).
            let gpus = gpu_source(opts.host, spec);
            let mut spec = spec.clone();
            spec.capacity.gpus = gpus.capacity();
            let setup = NodeSetup {
                spec: spec.clone(),
                config: opts.config.clone(),
                seed: opts.seed.wrapping_add(i as u64),
                fabric: fabric.clone(),
                membership: membership.clone(),
                shared: shared.clone(),
                gpus,
                sense: if opts.host {
                    SenseMode::Host
                } else {
                    SenseMode::Instances
                },
                sense_every: opts.sense_every,
                stop_grace: opts.stop_grace,
                noop,
                detect: i == 0,
                capabilities: granted.get(&spec.id).cloned(),
            };
            let gpu_granted = granted
                .get(&spec.id)
                .is_none_or(|c| c.contains(&qs_wire::trust::Capability::Gpu));
            if !gpu_granted && !spec.capacity.gpus.is_empty() {
                tracing::warn!(
                    "node {}: its certificate does not grant the gpu capability; no model \
                     runtime runs here",
                    spec.id
                );
            }
            if !opts.noop_executor && !spec.capacity.gpus.is_empty() && gpu_granted {
                let setup = model_host(&opts, &shared, &fabric, &spec, &membership)?;
                tasks.spawn(crate::models::host(setup, stop_rx.clone()));
            }
            let rx = stop_rx.clone();
            let id = spec.id.clone();
            tasks.spawn(async move {
                if let Err(e) = run_node(setup, rx).await {
                    tracing::error!(node = %id, "node stopped: {e}");
                }
            });
        }
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(|source| FleetError::Listen {
                addr: opts.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| FleetError::Listen {
            addr: opts.listen,
            source,
        })?;
        let mut access = api::Access::new(
            api::ApiToken::load_or_create(&state).map_err(FleetError::Token)?,
            addr,
            &opts.api_hosts,
        );
        if let Some(file) = &opts.config.models.keys_file {
            let keys = crate::models::keys::ApiKeys::read(std::path::Path::new(file))
                .map_err(FleetError::ApiKeys)?;
            tracing::info!("{} API keys for the entry point from {file}", keys.len());
            access = access.with_keys(keys);
        }
        let app = api::router(api::Api::new(
            shared.clone(),
            fabric.clone(),
            opts.mode,
            access,
        ));
        let api_stop = stop_rx.clone();
        match &opts.tls {
            None => {
                if reachable_at(addr, opts.config.addresses.advertise) {
                    shared
                        .entry_port
                        .store(addr.port(), std::sync::atomic::Ordering::Relaxed);
                } else if opts.authenticate {
                    tracing::warn!(
                        "the API listens on {addr}, which other nodes cannot reach at {:?}: \
                         they route no model requests here (listen on the advertised address)",
                        opts.config.addresses.advertise
                    );
                }
                tasks.spawn(serve_api(listener, app, api_stop));
            }
            Some(tls) => {
                let tls_listener = api::tls::TlsListener::new(listener, tls).map_err(|source| {
                    FleetError::Listen {
                        addr: opts.listen,
                        source,
                    }
                })?;
                tasks.spawn(serve_api(tls_listener, app, api_stop));
            }
        }
        Ok(EmbeddedFleet {
            shared,
            fabric,
            addr,
            scripts,
            stop,
            tasks,
            writer,
            writer_stop,
        })
    }

    /// Turns true when the fleet is shutting down.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Stops every node (each stops its instances) and the API; waits for all of them, then
    /// for the ledger writer to commit the last events.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        // Every runtime has recorded its last events: let the writer commit them and end.
        let _ = self.writer_stop.send(true);
        let _ = self.writer.await;
    }
}
