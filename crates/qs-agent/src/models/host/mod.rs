//! One node's model host: the task that drives a [`GpuScheduler`] per GPU on real runtime
//! processes. Every decision is the scheduler's; this task only feeds it and carries out what
//! it said (see the module docs of [`crate::models`]).

use super::{Ask, Decision, Handle, MAX_ASKS, ModelView, Registry};
use crate::clock::now;
use crate::counters::Counters;
use crate::exec::Exit;
use crate::journal::Journal;
use crate::names::MODELS_BUCKET;
use crate::orphans::InstanceFile;
use crate::simgpu::SimGpu;
use qs_core::Time;
use qs_core::gpu::{
    Class, Discipline, GpuConfig, GpuInput, GpuOutput, GpuScheduler, ModelProfile, PolicyKind,
    RequestId, Strategy, StrategyKind,
};
use qs_fabric::{Fabric, KvEvent, Watch};
use qs_wire::{Event, InstanceId, ModelDiscipline, ModelSpec, NodeId, ServiceName};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

mod asks;
mod declare;
mod launch;
mod quota;
mod record;
mod resident;
mod stasis;

/// The VRAM is read again this soon when the scheduler found it not yet released (the driver
/// lags a process's exit): paced, not spun.
const VRAM_RECHECK: Duration = Duration::from_millis(100);
/// Watching the models KV again after it failed.
const REWATCH: Duration = Duration::from_secs(1);

/// Where a GPU's free VRAM is read.
#[derive(Clone)]
pub enum VramReader {
    /// The simulated GPU's accounting (a double, on machines without the driver).
    Simulated(SimGpu),
    /// The driver, through NVML: the real path.
    Nvml(Arc<crate::sense::Nvml>, u32),
}

impl VramReader {
    fn free_bytes(&self) -> Result<u64, String> {
        match self {
            VramReader::Simulated(g) => g.free_bytes().map_err(|e| e.to_string()),
            VramReader::Nvml(n, i) => n.free_vram_bytes(*i).map_err(|e| e.to_string()),
        }
    }

    /// Power and temperature, for the energy-aware strategy (none on the simulated GPU).
    fn energy(&self) -> crate::sense::Energy {
        match self {
            VramReader::Simulated(_) => crate::sense::Energy::default(),
            VramReader::Nvml(n, i) => n.energy(*i),
        }
    }

    fn env(&self) -> Option<(String, String)> {
        match self {
            VramReader::Simulated(g) => Some((
                crate::simgpu::ENV_DIR.to_owned(),
                g.dir().display().to_string(),
            )),
            VramReader::Nvml(..) => None,
        }
    }
}

/// One GPU of the node.
pub struct GpuSetup {
    pub index: u32,
    pub vram_bytes: u64,
    pub reader: VramReader,
}

/// What a host needs.
pub struct HostSetup<F: Fabric> {
    pub node: NodeId,
    pub fabric: F,
    /// Where the host registers itself for the entry point.
    pub registry: Arc<Registry>,
    pub journal: Journal,
    pub counters: Counters,
    pub gpus: Vec<GpuSetup>,
    /// Bounds of every GPU's scheduler (its `vram_bytes` is each GPU's own).
    pub config: GpuConfig,
    pub policy: PolicyKind,
    /// Where each model goes among the GPUs, at which tier.
    pub strategy: StrategyKind,
    pub log_dir: PathBuf,
    pub stop_grace: Duration,
    /// Where the runtimes it starts are recorded, so that a restarted agent ends what a
    /// killed one left running.
    pub state: qs_store::StateDir,
    /// Where a durable stasis of a previous life is found.
    pub ledger: Arc<qs_store::Ledger>,
    /// The fleet as this process sees it: leased work of a holder that left it is swept.
    pub membership: crate::membership::Membership,
    /// The systemd executor (`Some(user)`: `systemctl --user` or not), or `None`: the agent
    /// forks the runtimes itself.
    pub systemd_user: Option<bool>,
}

/// A model this host took: which GPU and which tier.
struct Assigned {
    spec: ModelSpec,
    gpu: usize,
    tier: usize,
}

impl Assigned {
    /// The tier of its spec that the scheduler's `tier` is (the scheduler counts from the
    /// tier it was placed at), with its index in the spec.
    fn spec_tier(&self, tier: usize) -> Option<(usize, &qs_wire::ModelTier)> {
        let i = self.tier.checked_add(tier)?;
        self.spec.tiers.get(i).map(|t| (i, t))
    }
}

/// A runtime process this host started.
struct Process {
    model: ServiceName,
    gpu: usize,
    /// The tier of its spec it runs (its quota is that tier's VRAM).
    tier_name: String,
    vram_bytes: u64,
    port: u16,
    warm: bool,
    stopping: bool,
    /// A resident model's, kept loaded in the margin outside the scheduler.
    resident: bool,
    /// Its load outlasted its bound: the scheduler was told; its exit changes nothing.
    failed: bool,
}

struct Gpu {
    index: u32,
    reader: VramReader,
    scheduler: GpuScheduler,
    /// When the VRAM is to be read (the scheduler asked), and when it last was.
    vram_due: Option<tokio::time::Instant>,
    vram_read: Option<tokio::time::Instant>,
}

/// A warm check's verdict on one start.
struct Warmed {
    instance: InstanceId,
    result: Result<(), String>,
}

struct Host<F: Fabric> {
    node: NodeId,
    fabric: F,
    registry: Arc<Registry>,
    journal: Journal,
    counters: Counters,
    gpus: Vec<Gpu>,
    models: BTreeMap<ServiceName, Assigned>,
    /// Resident models, in the reserved margin of their GPUs.
    residents: BTreeMap<ServiceName, resident::ResidentModel>,
    reserved_bytes: u64,
    max_failed_starts: u32,
    strategy: Box<dyn Strategy>,
    /// Shared runtimes: routed to, never started or stopped.
    shared_models: BTreeMap<ServiceName, ModelSpec>,
    processes: BTreeMap<InstanceId, Process>,
    pending: BTreeMap<RequestId, (usize, oneshot::Sender<Decision>)>,
    routed: BTreeMap<RequestId, usize>,
    /// How each routed request is cut short when the scheduler refuses it while it runs.
    cuts: BTreeMap<RequestId, oneshot::Sender<String>>,
    next_request: u64,
    next_start: u64,
    exec: launch::Runner,
    warm_tx: mpsc::Sender<Warmed>,
    views: Arc<RwLock<BTreeMap<ServiceName, ModelView>>>,
    /// Why each model's last start failed, for the scheduler's event that counts it.
    failures: BTreeMap<ServiceName, String>,
    /// Ledger records in the order things happened, appended after each step.
    events: Vec<Event>,
    /// When the runtimes' VRAM is next held to their quotas.
    quota_at: tokio::time::Instant,
    /// The runtimes running, as a restart after a kill -9 finds them.
    runtime_file: InstanceFile,
    /// Its own queue, for the [`super::Finish`] of each routed request.
    asks_tx: mpsc::Sender<Ask>,
    state: qs_store::StateDir,
    stop_grace: Duration,
    ledger: Arc<qs_store::Ledger>,
    membership: crate::membership::Membership,
    /// Stases a previous life recorded and did not end: raised again once their model is
    /// declared.
    resume: BTreeMap<ServiceName, Class>,
    /// The requests that stand for resumed stases (no client waits on them).
    placeholders: BTreeSet<RequestId>,
    /// The keys a (re)watch of the models KV has shown before its `Synced`.
    replayed: Option<BTreeSet<String>>,
    /// Each model's last alert (a watchdog reset, VRAM not released), until it loads again:
    /// what `/v1/models` and `qs status` show.
    alerts: BTreeMap<ServiceName, String>,
    /// Starts the scheduler asked for that wait for a runtime on their GPU to exit: by
    /// model, its GPU and the scheduler's tier.
    deferred: BTreeMap<ServiceName, (usize, usize)>,
    /// Models declared that no GPU here holds even at their smallest tier, with why.
    unfit: BTreeMap<ServiceName, (ModelSpec, String)>,
}

/// The host of `setup.node`, registered in the process's [`super::Registry`] at once; the
/// future it returns serves until `stop` turns true, then stops its runtimes.
pub fn host<F: Fabric>(
    setup: HostSetup<F>,
    stop: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static {
    let (tx, asks) = mpsc::channel(MAX_ASKS);
    let (exit_tx, exits) = mpsc::channel(256);
    let (warm_tx, warms) = mpsc::channel(256);
    let views = Arc::new(RwLock::new(BTreeMap::new()));
    setup.registry.insert(
        setup.node.clone(),
        Handle {
            tx: tx.clone(),
            views: views.clone(),
        },
    );
    let gpus = setup
        .gpus
        .into_iter()
        .map(|g| Gpu {
            index: g.index,
            reader: g.reader,
            scheduler: GpuScheduler::new(
                GpuConfig {
                    vram_bytes: g.vram_bytes,
                    ..setup.config.clone()
                },
                Vec::new(),
                setup.policy.build(),
            ),
            vram_due: None,
            vram_read: None,
        })
        .collect();
    let host = Host {
        node: setup.node.clone(),
        fabric: setup.fabric,
        registry: setup.registry,
        journal: setup.journal,
        counters: setup.counters,
        gpus,
        models: BTreeMap::new(),
        residents: BTreeMap::new(),
        reserved_bytes: setup.config.reserved_bytes,
        max_failed_starts: setup.config.max_failed_starts,
        strategy: setup.strategy.build(),
        shared_models: BTreeMap::new(),
        processes: BTreeMap::new(),
        pending: BTreeMap::new(),
        routed: BTreeMap::new(),
        cuts: BTreeMap::new(),
        next_request: 0,
        next_start: 0,
        exec: launch::Runner::new(setup.systemd_user, setup.log_dir, setup.stop_grace, exit_tx),
        warm_tx,
        views,
        failures: BTreeMap::new(),
        events: Vec::new(),
        quota_at: tokio::time::Instant::now() + quota::QUOTA_EVERY,
        runtime_file: InstanceFile::model_runtimes(setup.state.clone(), setup.node.clone()),
        asks_tx: tx,
        state: setup.state,
        stop_grace: setup.stop_grace,
        ledger: setup.ledger,
        membership: setup.membership,
        resume: BTreeMap::new(),
        placeholders: BTreeSet::new(),
        replayed: None,
        alerts: BTreeMap::new(),
        deferred: BTreeMap::new(),
        unfit: BTreeMap::new(),
    };
    host.run(asks, exits, warms, stop)
}

impl<F: Fabric> Host<F> {
    async fn run(
        mut self,
        mut asks: mpsc::Receiver<Ask>,
        mut exits: mpsc::Receiver<Exit>,
        mut warms: mpsc::Receiver<Warmed>,
        mut stop: watch::Receiver<bool>,
    ) {
        self.reap_orphans().await;
        self.resume = stasis::standing(self.ledger.clone(), self.node.clone()).await;
        let mut kv_watch: Option<Watch> = None;
        let mut rewatch_at = tokio::time::Instant::now();
        loop {
            if kv_watch.is_none() && tokio::time::Instant::now() >= rewatch_at {
                // Bounded in time like every desired-state watch: an unreachable server holds
                // the host up for one try, not for good.
                match crate::specs::watch_bucket(&self.fabric, MODELS_BUCKET).await {
                    Ok(w) => {
                        kv_watch = Some(w);
                        self.replayed = Some(BTreeSet::new());
                    }
                    Err(e) => {
                        tracing::warn!(node = %self.node, "watching the models KV: {e}");
                        rewatch_at = tokio::time::Instant::now() + REWATCH;
                    }
                }
            }
            let wake = self.next_wake(kv_watch.is_none().then_some(rewatch_at));
            tokio::select! {
                _ = stop.changed() => break,
                Some(ask) = asks.recv() => self.on_ask(ask),
                Some(exit) = exits.recv() => self.on_exit(exit),
                Some(w) = warms.recv() => self.on_warm(w),
                ev = next_kv(&mut kv_watch) => match ev {
                    Some(Ok(ev)) => self.on_kv(ev).await,
                    Some(Err(e)) => {
                        tracing::warn!(node = %self.node, "the models KV watch failed: {e}");
                        kv_watch = None;
                        rewatch_at = tokio::time::Instant::now() + REWATCH;
                    }
                    None => {
                        kv_watch = None;
                        rewatch_at = tokio::time::Instant::now() + REWATCH;
                    }
                },
                _ = tokio::time::sleep_until(wake) => self.on_time(),
            }
            self.drain_outputs().await;
            self.publish_views();
        }
        self.registry.remove(&self.node);
        self.exec.shutdown("the agent is stopping").await;
    }

    /// The earliest of the schedulers' timeouts, the VRAM reads due and a re-watch.
    fn next_wake(&self, rewatch: Option<tokio::time::Instant>) -> tokio::time::Instant {
        let at = |t: Time| {
            let d = Duration::from_micros(t.as_micros().saturating_sub(now().as_micros()));
            tokio::time::Instant::now() + d
        };
        self.gpus
            .iter()
            .filter_map(|g| g.scheduler.poll_timeout().map(at))
            .chain(self.gpus.iter().filter_map(|g| g.vram_due))
            .chain(self.next_resident_start())
            .chain(Some(self.quota_at))
            .chain(rewatch)
            .min()
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(1))
    }

    fn on_time(&mut self) {
        self.start_residents();
        if tokio::time::Instant::now() >= self.quota_at {
            self.quota_at = tokio::time::Instant::now() + quota::QUOTA_EVERY;
            self.check_quotas();
            self.sweep_gone();
        }
        let t = now();
        let instant = tokio::time::Instant::now();
        for g in &mut self.gpus {
            g.scheduler.tick(t);
            if g.vram_due.is_some_and(|due| due <= instant) {
                g.vram_due = None;
                g.vram_read = Some(instant);
                match g.reader.free_bytes() {
                    Ok(free_bytes) => g.scheduler.handle(GpuInput::VramFree { free_bytes }, t),
                    Err(e) => {
                        tracing::warn!("GPU {}: free VRAM unreadable: {e}", g.index);
                        g.vram_due = Some(instant + Duration::from_secs(1));
                    }
                }
            }
        }
    }

    fn on_exit(&mut self, exit: Exit) {
        let Some(p) = self.processes.remove(&exit.instance) else {
            return;
        };
        self.save_runtimes();
        self.start_deferred(p.gpu);
        if p.failed {
            return;
        }
        if p.resident {
            if !p.stopping {
                let why = format!("exited: {}", exit.outcome.reason());
                self.resident_exited(&p.model, why);
            }
            return;
        }
        let input = if p.warm || p.stopping {
            GpuInput::Stopped {
                model: p.model.clone(),
            }
        } else {
            let why = format!("exited while loading: {}", exit.outcome.reason());
            self.failures.insert(p.model.clone(), why);
            GpuInput::LoadFailed {
                model: p.model.clone(),
            }
        };
        self.gpus[p.gpu].scheduler.handle(input, now());
    }

    fn on_warm(&mut self, w: Warmed) {
        let Some(p) = self.processes.get_mut(&w.instance) else {
            return;
        };
        if p.stopping {
            return;
        }
        let (gpu, model) = (p.gpu, p.model.clone());
        if p.resident {
            match w.result {
                Ok(()) => {
                    p.warm = true;
                    self.resident_warm(&model);
                }
                // Its exit counts the failure.
                Err(_) => {
                    self.exec.kill(&w.instance);
                }
            }
            return;
        }
        match w.result {
            Ok(()) => {
                p.warm = true;
                self.gpus[gpu]
                    .scheduler
                    .handle(GpuInput::Loaded { model }, now());
            }
            Err(why) => {
                // The load outlasted its bound: killed, and a failed start for the watchdog.
                // Tracked until it has exited (a start again sees it), its exit then silent.
                p.stopping = true;
                p.failed = true;
                self.exec.kill(&w.instance);
                self.failures.insert(model.clone(), why);
                self.gpus[gpu]
                    .scheduler
                    .handle(GpuInput::LoadFailed { model }, now());
            }
        }
    }

    /// Carries out what every scheduler decided.
    async fn drain_outputs(&mut self) {
        for gpu in 0..self.gpus.len() {
            while let Some(out) = self.gpus[gpu].scheduler.poll() {
                match out {
                    GpuOutput::Route { id, model } => {
                        self.placeholders.remove(&id);
                        self.route(gpu, id, &model)
                    }
                    GpuOutput::Refuse {
                        id,
                        retry_after_ms,
                        reason,
                    } => {
                        self.routed.remove(&id);
                        self.placeholders.remove(&id);
                        // Refused while it runs: its answer is cut short where it is.
                        if let Some(cut) = self.cuts.remove(&id) {
                            let _ = cut.send(reason.to_owned());
                        }
                        if let Some((_, reply)) = self.pending.remove(&id) {
                            let _ = reply.send(Decision::Refuse {
                                too_many: retry_after_ms > 0,
                                retry_after_ms,
                                reason: reason.to_owned(),
                            });
                        }
                    }
                    GpuOutput::Stop { model, kill } => self.stop(&model, kill),
                    GpuOutput::CheckVram => {
                        let g = &mut self.gpus[gpu];
                        let earliest = g
                            .vram_read
                            .map_or_else(tokio::time::Instant::now, |t| t + VRAM_RECHECK);
                        g.vram_due = Some(earliest.max(tokio::time::Instant::now()));
                    }
                    GpuOutput::Start { model, tier, .. } => self.start(gpu, &model, tier),
                    GpuOutput::Event(e) => {
                        if let Some(event) = self.event(gpu, e) {
                            self.events.push(event);
                        }
                    }
                }
            }
        }
        let events = std::mem::take(&mut self.events);
        self.note_alerts(&events);
        self.append(events).await;
    }
}

async fn next_kv(w: &mut Option<Watch>) -> Option<Result<KvEvent, qs_fabric::FabricError>> {
    match w {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

/// The scheduler's view of a model placed at `tier`: that tier and the smaller ones, which
/// the scheduler takes when the GPU cannot hold it beside the runtimes busy there.
fn profile(spec: &ModelSpec, tier: usize) -> ModelProfile {
    ModelProfile {
        name: spec.name.clone(),
        tiers_vram_bytes: spec.tiers[tier..].iter().map(|t| t.vram_bytes).collect(),
        discipline: match spec.discipline {
            ModelDiscipline::Parallel { max_concurrency } => {
                Discipline::Parallel { max_concurrency }
            }
            ModelDiscipline::Serial => Discipline::Serial,
        },
        inertia_bias_ms: spec.inertia_bias_ms,
        load_ms: spec.load_ms,
    }
}
