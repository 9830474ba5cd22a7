//! One node's event loop: the core's inputs come from the fabric, the executor, the sensor,
//! health monitors and timers; its outputs go to the fabric, the executor and the ledger.

use crate::exec::{Executor, Exit, Launch};
use crate::health;
use crate::membership::{Membership, Notice};
use crate::orphans::InstanceFile;
use crate::sense::{GpuSource, Sensor};
use prometheus_client::metrics::counter::Counter;
use qs_core::{
    Config, Detector, DetectorInput, DetectorOutput, Input, Node, Output, RunningInstance, Time,
};
use qs_fabric::{Bytes, Fabric, Kv, Topic};
use qs_store::Ledger;
use qs_wire::{
    DeclineReason, Demand, Envelope, Event, ExitOutcome, InstanceId, InstanceLoad, Load, Message,
    MessageId, NodeId, NodeSpec, NodeStatus, Offer, ServiceName, SingletonClaim, WorkloadSpec,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};

/// The KV bucket of desired state.
pub const SPECS_BUCKET: &str = "specs";
/// The KV bucket of singleton records (`SingletonClaim`s, key: the service).
pub const INSTANCES_BUCKET: &str = "instances";
/// Compare-and-set tries of one claim before it gives up (each lost try means another
/// writer got in between; the core's claim timeout covers the rest).
const CLAIM_TRIES: usize = 8;
/// How often the failure detector looks for silent nodes and overdue probes.
const DETECT_EVERY: Duration = Duration::from_millis(50);
/// How stale the API's view of a node may be.
const VIEW_EVERY: Duration = Duration::from_millis(1000);
/// How soon a change an operator acts on (an instance turned healthy, ended, was told to stop;
/// a drain) shows.
const VIEW_SOON: Duration = Duration::from_millis(10);
/// Control messages buffered per node.
const CONTROL_BUFFER: usize = 256;

/// Stores every workload of a document as desired state (the KV every node watches).
/// Validation happened when the document was parsed; this is all or nothing per workload.
pub async fn put_specs<F: Fabric>(
    fabric: &F,
    doc: &qs_wire::SpecDocument,
) -> Result<Vec<ServiceName>, qs_fabric::FabricError> {
    let kv = fabric.kv(SPECS_BUCKET).await?;
    let mut applied = Vec::new();
    for w in &doc.workloads {
        let bytes = Bytes::from(serde_json::to_vec(w).expect("specs serialize"));
        kv.put(w.name.as_str(), bytes).await?;
        applied.push(w.name.clone());
    }
    Ok(applied)
}

/// Microseconds since the Unix epoch: the daemon's clock for the core.
pub fn now() -> Time {
    let us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    Time::from_micros(us)
}

/// How a node's load is sensed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SenseMode {
    /// The whole host is this node (`qs agent`).
    Host,
    /// A virtual node of an embedded fleet: its load is what its own instances use, against
    /// its declared caps (`qs up`).
    Instances,
}

/// Process-wide counters, exported on /metrics.
#[derive(Clone, Default)]
pub struct Counters {
    pub messages_sent: Counter,
    pub messages_received: Counter,
    pub ledger_events: Counter,
    pub placements: Counter,
    pub instance_starts: Counter,
    pub instance_failures: Counter,
    /// Peers this process declared dead (silent past `dead_after_ms`).
    pub nodes_declared_dead: Counter,
}

/// An instance this node runs, as the API shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LocalInstance {
    pub instance: InstanceId,
    pub service: ServiceName,
    pub node: NodeId,
    pub role: qs_wire::Role,
    pub serving: bool,
    pub hot: bool,
    /// While a process runs.
    pub pid: Option<u32>,
    pub port: Option<u16>,
    pub command: String,
}

/// What the API can see of one node without asking it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NodeView {
    pub status: NodeStatus,
    pub instances: Vec<LocalInstance>,
    pub stewards: Vec<ServiceName>,
    pub placements_in_flight: usize,
    pub gpu_source: String,
    pub live_peers: usize,
}

/// The fleet as one node's registry sees it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RegistryView {
    pub nodes: Vec<NodeStatus>,
    pub specs: Vec<WorkloadSpec>,
    pub instances: Vec<(ServiceName, InstanceId, InstanceRow)>,
    pub stewards: BTreeMap<ServiceName, NodeId>,
    pub completed: BTreeMap<ServiceName, usize>,
}

/// An instance row of the registry.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InstanceRow {
    pub node: NodeId,
    pub role: qs_wire::Role,
    pub serving: bool,
    pub hot: bool,
    pub fencing: u64,
}

impl From<&RunningInstance> for InstanceRow {
    fn from(r: &RunningInstance) -> Self {
        InstanceRow {
            node: r.node.clone(),
            role: r.role,
            serving: r.serving,
            hot: r.hot,
            fencing: r.fencing,
        }
    }
}

/// A node's offer for a service and its own gate's verdict on it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Explained {
    pub offer: Offer,
    pub passes_gate: bool,
}

/// Requests to a node runtime.
pub enum Control {
    /// What this node would offer for a service now.
    Explain {
        service: ServiceName,
        reply: oneshot::Sender<Option<Result<Explained, DeclineReason>>>,
    },
    /// This node's registry.
    Registry {
        reply: oneshot::Sender<RegistryView>,
    },
    /// Chaos: kill -9 an instance's process group.
    Kill {
        instance: InstanceId,
        reply: oneshot::Sender<bool>,
    },
    ApprovePromotion(ServiceName),
    /// Start (`true`) or end a drain of this node.
    Drain(bool),
    /// Chaos: this node dies at once, as a machine would (its instances get SIGKILL, it
    /// stops talking); the fleet finds out from the silence.
    Die,
    /// Chaos: this node freezes for a while, as a stopped process would (SIGSTOP): it reads
    /// nothing, sends nothing, then carries on with what queued up. Its instances run on.
    Pause(Duration),
    /// A health monitor's verdict.
    Health {
        instance: InstanceId,
        serving: bool,
        failed: Option<String>,
    },
    /// The answer to a singleton's claim.
    Claimed {
        service: ServiceName,
        instance: InstanceId,
        result: Result<(), SingletonClaim>,
    },
}

/// Everything shared by the node runtimes of one process and its API.
pub struct Shared {
    pub ledger: Arc<Ledger>,
    /// Where runtimes send their events (group commit into `ledger`).
    pub journal: crate::journal::Journal,
    pub counters: Counters,
    pub views: RwLock<BTreeMap<NodeId, NodeView>>,
    pub controls: RwLock<BTreeMap<NodeId, mpsc::Sender<Control>>>,
    pub sensor: Mutex<Option<Sensor>>,
    pub state_dir: PathBuf,
    /// The process's keyring: seals what its nodes send, opens what they receive.
    pub auth: Arc<crate::identity::Auth>,
}

/// What one node runtime needs.
pub struct NodeSetup<F: Fabric> {
    pub spec: NodeSpec,
    pub config: Config,
    pub seed: u64,
    pub fabric: F,
    /// The process's registry, which this node reads and never feeds.
    pub membership: Membership,
    pub shared: Arc<Shared>,
    pub gpus: Box<dyn GpuSource>,
    pub sense: SenseMode,
    pub sense_every: Duration,
    pub stop_grace: Duration,
    /// Use the no-op executor double instead of real processes.
    pub noop_executor: bool,
    /// This node runs the process's failure detector (one node per process does).
    pub detect: bool,
}

struct Runtime<F: Fabric> {
    id: NodeId,
    node: Node,
    reg: Membership,
    fabric: F,
    shared: Arc<Shared>,
    exec: Executor,
    gpus: Box<dyn GpuSource>,
    sense: SenseMode,
    seq: u64,
    health_failed: BTreeMap<InstanceId, String>,
    /// None with the no-op executor: it starts no process that could be orphaned.
    instance_file: Option<InstanceFile>,
    control_tx: mpsc::Sender<Control>,
    /// Failure memory survives restarts here.
    failures_file: PathBuf,
    /// When the API's view is next due, if it changed since it was last published.
    view_due: Option<tokio::time::Instant>,
    /// The process's failure detector, on the one node that runs it.
    detector: Option<Detector>,
    /// The load bucket last written to the instance file.
    saved_load_bucket: u8,
}

/// Carries out a singleton's claim on the `instances` KV: read the record, let the core's rule
/// judge it, compare-and-set; answers through the node's control channel. A fabric that does
/// not answer gets no reply: the placement's claim timeout ends it.
async fn claim_record<F: Fabric>(
    fabric: F,
    service: ServiceName,
    claim: SingletonClaim,
    reply: mpsc::Sender<Control>,
) {
    let attempt = async {
        let kv = fabric.kv(INSTANCES_BUCKET).await?;
        let value = Bytes::from(serde_json::to_vec(&claim).expect("claims serialize"));
        for _ in 0..CLAIM_TRIES {
            let entry = kv.get(service.as_str()).await?;
            let current = match &entry {
                Some(e) => match serde_json::from_slice::<SingletonClaim>(&e.value) {
                    Ok(c) => Some(c),
                    Err(err) => {
                        tracing::warn!(%service, "replacing an unreadable singleton record: {err}");
                        None
                    }
                },
                None => None,
            };
            if let Err(holder) = qs_core::judge_claim(current.as_ref(), &claim) {
                return Ok(Err(holder));
            }
            let expected = entry.map(|e| e.revision);
            match kv.cas(service.as_str(), value.clone(), expected).await {
                Ok(_) => return Ok(Ok(())),
                Err(qs_fabric::FabricError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(qs_fabric::FabricError::Backend(format!(
            "the record of {service} changed under {CLAIM_TRIES} tries"
        )))
    };
    match attempt.await {
        Ok(result) => {
            let instance = claim.instance;
            let _ = reply
                .send(Control::Claimed {
                    service,
                    instance,
                    result,
                })
                .await;
        }
        Err(e) => tracing::warn!(%service, "claiming the singleton record: {e}"),
    }
}

/// Runs one node until `stop` turns true; stops its instances before returning.
pub async fn run_node<F: Fabric>(
    setup: NodeSetup<F>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let id = setup.spec.id.clone();
    let node_dir = setup.shared.state_dir.join("nodes").join(id.as_str());
    std::fs::create_dir_all(&node_dir).map_err(|e| format!("{}: {e}", node_dir.display()))?;
    let instance_file = InstanceFile::new(node_dir.join("instances.json"));
    let reaped = instance_file.reap_orphans(setup.stop_grace);
    let (exit_tx, mut exits) = mpsc::channel::<Exit>(1024);
    let (control_tx, mut controls) = mpsc::channel::<Control>(CONTROL_BUFFER);
    setup
        .shared
        .controls
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.clone(), control_tx.clone());
    let fabric = setup.fabric.clone();
    let mut inbox = fabric
        .subscribe(&Topic::node_rpc(&id))
        .await
        .map_err(|e| e.to_string())?;
    let notices = setup.membership.subscribe(&id);
    let failures_file = node_dir.join("failures.json");
    let detector = setup.detect.then(|| {
        Detector::new(
            id.clone(),
            &setup.config,
            setup.seed ^ qs_core::hash::of_str("detector"),
        )
    });
    let mut node = Node::new(&setup.spec, setup.config.clone(), setup.seed, now());
    node.restore_failures(load_failures(&failures_file), now());
    let mut rt = Runtime {
        failures_file,
        node,
        reg: setup.membership,
        id: id.clone(),
        fabric,
        shared: setup.shared.clone(),
        exec: if setup.noop_executor {
            Executor::noop(exit_tx)
        } else {
            Executor::new(node_dir.join("logs"), setup.stop_grace, exit_tx)
        },
        gpus: setup.gpus,
        sense: setup.sense,
        // Numbered from the wall clock: a restarted node's messages are newer than its last
        // life's, so receivers' replay windows take them.
        seq: now().as_micros(),
        health_failed: BTreeMap::new(),
        instance_file: (!setup.noop_executor).then_some(instance_file),
        control_tx,
        view_due: None,
        detector,
        saved_load_bucket: 0,
    };
    for orphan in reaped {
        let pid = orphan.pid;
        let reason = if orphan.was_running {
            format!("outlived its killed agent (pid {pid}); ended at restart")
        } else {
            format!("gone with its killed agent (pid {pid})")
        };
        match orphan.service {
            // It went down with the node: a failure of its service here.
            Some(service) => {
                rt.input(Input::Lost {
                    instance: orphan.instance,
                    service,
                    cpu_util: orphan.cpu_util,
                    reason,
                })
                .await
            }
            // Written by an agent that did not record services.
            None => {
                rt.record(vec![Event::InstanceExited {
                    instance: orphan.instance,
                    service: ServiceName::new("orphan").expect("a valid name"),
                    outcome: ExitOutcome::Stopped { reason },
                }])
                .await
            }
        }
    }
    // Specs and members that arrived before this node subscribed.
    rt.input(Input::Reconcile).await;
    let mut died = false;
    let mut sense_timer = tokio::time::interval(setup.sense_every);
    let mut detect_timer = tokio::time::interval(DETECT_EVERY);
    loop {
        let wake = rt.node.poll_timeout().map_or(Duration::from_secs(1), |t| {
            Duration::from_micros(t.as_micros().saturating_sub(now().as_micros()))
        });
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(wake) => rt.input(Input::Tick).await,
            Some(m) = inbox.next() => rt.on_message(&m.payload).await,
            n = notices.next() => rt.on_notice(n).await,
            Some(exit) = exits.recv() => rt.on_exit(exit).await,
            Some(c) = controls.recv() => {
                match c {
                    Control::Die => {
                        died = true;
                        break;
                    }
                    Control::Pause(d) => {
                        tracing::warn!(node = %id, "chaos: paused for {d:?}");
                        rt.reg.set_paused(&id, true);
                        tokio::time::sleep(d).await;
                        rt.reg.set_paused(&id, false);
                        continue;
                    }
                    _ => {}
                }
                rt.on_control(c).await;
            }
            _ = sense_timer.tick() => rt.on_sense().await,
            _ = detect_timer.tick(), if rt.detector.is_some() => {
                rt.detect(DetectorInput::Tick).await;
            }
            _ = tokio::time::sleep_until(rt.view_due.unwrap_or_else(far_future)), if rt.view_due.is_some() => {
                rt.publish_view();
            }
        }
        if *stop.borrow() {
            break;
        }
    }
    if died {
        for instance in rt.exec.running().keys() {
            rt.exec.kill(instance);
        }
        let shared = &rt.shared;
        shared
            .views
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        shared
            .controls
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        return Ok(());
    }
    rt.exec.shutdown("agent stopping").await;
    while let Ok(exit) = exits.try_recv() {
        rt.on_exit(exit).await;
    }
    rt.publish_view();
    Ok(())
}

impl<F: Fabric> Runtime<F> {
    async fn input(&mut self, input: Input) {
        // What an operator acts on (an instance ended, turned healthy, a drain) shows within
        // VIEW_SOON; the chatter of placements within VIEW_EVERY.
        let visible = matches!(
            input,
            Input::Exited { .. } | Input::Health { .. } | Input::Drain(_)
        );
        self.node.handle(input, now(), &self.reg.read());
        self.drain(visible).await;
    }

    fn envelope(&mut self, msg: Message, to: Option<&NodeId>) -> Bytes {
        self.seq += 1;
        let id = MessageId(qs_core::hash::mix(
            qs_core::hash::of_str(self.id.as_str()) ^ self.seq,
        ));
        let env = Envelope::new(self.id.clone(), self.seq, now().as_micros(), id, msg);
        self.shared.auth.seal(&self.id, to, &env.encode())
    }

    /// Carries out every output of the core.
    async fn drain(&mut self, mut visible: bool) {
        let mut records = Vec::new();
        let mut pending_acks = Vec::new();
        while let Some(out) = self.node.poll() {
            match out {
                Output::Send { to, msg } => {
                    let bytes = self.envelope(msg, Some(&to));
                    if self.fabric.send(&to, bytes).await.is_ok() {
                        self.shared.counters.messages_sent.inc();
                    }
                }
                Output::Heartbeat(status) => {
                    let bytes = self.envelope(Message::Heartbeat(status), None);
                    let _ = self
                        .fabric
                        .publish(&Topic::heartbeat(&self.id), bytes)
                        .await;
                }
                // A started instance matters once its health says it serves.
                Output::Start(order) => self.start(order),
                Output::Stop { instance, reason } => {
                    visible = true;
                    self.exec.stop(&instance, &reason);
                }
                Output::Ack { target, nonce } => {
                    pending_acks.push(DetectorInput::Ack { target, nonce });
                }
                Output::Claim { service, claim } => {
                    tokio::spawn(claim_record(
                        self.fabric.clone(),
                        service,
                        claim,
                        self.control_tx.clone(),
                    ));
                }
                Output::Record(event) => {
                    if matches!(event, Event::Placed { .. }) {
                        self.shared.counters.placements.inc();
                    }
                    records.push(event);
                }
            }
        }
        if records
            .iter()
            .any(|e| matches!(e, Event::PressureRaised { .. }))
        {
            self.save_failures();
        }
        self.record(records).await;
        for ack in pending_acks {
            Box::pin(self.detect(ack)).await;
        }
        let due = tokio::time::Instant::now() + if visible { VIEW_SOON } else { VIEW_EVERY };
        self.view_due = Some(self.view_due.map_or(due, |d| d.min(due)));
    }

    async fn record(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        self.shared
            .counters
            .ledger_events
            .inc_by(events.len() as u64);
        self.shared
            .journal
            .append(&self.id, now().as_micros(), events)
            .await;
    }

    fn start(&mut self, order: qs_core::StartOrder) {
        self.shared.counters.instance_starts.inc();
        let spec = self.reg.read().spec(&order.service).cloned();
        let Some(command) = spec.as_ref().and_then(|s| s.command.clone()) else {
            let exit = Exit {
                instance: order.instance,
                outcome: ExitOutcome::FailedStart {
                    reason: format!("{} has no command to run", order.service),
                },
            };
            let tx = self.exec.exits();
            tokio::spawn(async move {
                let _ = tx.send(exit).await;
            });
            return;
        };
        let is_job = spec.as_ref().is_some_and(WorkloadSpec::is_job);
        let launch = Launch {
            instance: order.instance.clone(),
            command,
            is_job,
        };
        match self.exec.start(launch) {
            Ok(running) => {
                self.save_instances();
                let check = spec.and_then(|s| s.health);
                tokio::spawn(monitor(
                    self.exec.clone(),
                    order.instance,
                    running.pid,
                    running.port,
                    check,
                    self.control_tx.clone(),
                ));
            }
            Err(e) => tracing::error!(node = %self.id, "start failed: {e}"),
        }
    }

    /// Records which processes run, for the next agent to reap if this one is killed.
    fn save_instances(&mut self) {
        if let Some(file) = &self.instance_file {
            let hosted = self.node.hosted();
            let cpu_util = self.node.load().cpu_util;
            file.save(
                &self.exec.running(),
                |i| hosted.get(i).map(|h| h.service.clone()),
                cpu_util,
            );
            self.saved_load_bucket = qs_core::failure::load_bucket(cpu_util);
        }
    }

    /// Writes failure memory (written, then renamed, so a crash leaves the old or the new).
    fn save_failures(&self) {
        let entries: Vec<(&ServiceName, u8, f64)> = self.node.failures().entries(now()).collect();
        let tmp = self.failures_file.with_extension("json.tmp");
        let body = serde_json::to_vec(&entries).expect("failure entries serialize");
        if let Err(e) =
            std::fs::write(&tmp, body).and_then(|()| std::fs::rename(&tmp, &self.failures_file))
        {
            tracing::error!(node = %self.id, "saving failure memory: {e}");
        }
    }

    /// Records the quarantines the keyring began (on this node's messages or the feed's).
    async fn record_quarantines(&self) {
        let quarantines = self.shared.auth.take_quarantines();
        self.record(quarantines).await;
    }

    async fn on_message(&mut self, payload: &[u8]) {
        // Dropped messages are counted and logged by the keyring.
        let opened = self.shared.auth.open(Some(&self.id), payload);
        self.record_quarantines().await;
        if let Some(env) = opened {
            self.shared.counters.messages_received.inc();
            self.input(Input::Message {
                from: env.sender,
                msg: env.payload,
            })
            .await;
        }
    }

    async fn on_notice(&mut self, notice: Notice) {
        if notice.all {
            // Covers every service, the ones named too.
            return self.input(Input::Reconcile).await;
        }
        for service in notice.services {
            self.input(Input::ReconcileService(service)).await;
        }
    }

    async fn on_exit(&mut self, exit: Exit) {
        let outcome = match self.health_failed.remove(&exit.instance) {
            Some(reason) => ExitOutcome::HealthFailed { reason },
            None => exit.outcome,
        };
        if outcome.is_failure() {
            self.shared.counters.instance_failures.inc();
        }
        self.save_instances();
        self.input(Input::Exited {
            instance: exit.instance,
            outcome,
        })
        .await;
    }

    async fn on_control(&mut self, c: Control) {
        match c {
            Control::Explain { service, reply } => {
                let gate = qs_core::Gate {
                    min: self.node.config().gate_min,
                };
                let reg = self.reg.read();
                let answer = reg.spec(&service).map(|s| {
                    self.node
                        .offer_for(&Demand::of(s), now(), &reg)
                        .map(|offer| Explained {
                            passes_gate: gate.admits(&offer.composite),
                            offer,
                        })
                });
                let _ = reply.send(answer);
            }
            Control::Registry { reply } => {
                let _ = reply.send(self.registry_view());
            }
            Control::Kill { instance, reply } => {
                let killed = self.exec.kill(&instance);
                let _ = reply.send(killed);
            }
            Control::ApprovePromotion(service) => {
                self.input(Input::ApprovePromotion { service }).await
            }
            Control::Drain(on) => self.input(Input::Drain(on)).await,
            Control::Die | Control::Pause(_) => {} // handled by the loop
            Control::Health {
                instance,
                serving,
                failed,
            } => {
                if let Some(reason) = failed {
                    self.health_failed.insert(instance.clone(), reason.clone());
                    self.exec
                        .stop(&instance, &format!("health check failed: {reason}"));
                }
                self.input(Input::Health { instance, serving }).await;
            }
            Control::Claimed {
                service,
                instance,
                result,
            } => {
                self.input(Input::Claimed {
                    service,
                    instance,
                    result,
                })
                .await
            }
        }
    }

    /// Feeds the failure detector and carries out what it asks. While the fabric is
    /// disconnected it suspects nobody: this node is the one cut off.
    async fn detect(&mut self, input: DetectorInput) {
        let Some(detector) = self.detector.as_mut() else {
            return;
        };
        if matches!(input, DetectorInput::Tick) && !self.fabric.connected() {
            return;
        }
        {
            let reg = self.reg.read();
            detector.handle(input, now(), &reg, |n| self.reg.is_local(n));
        }
        let mut outputs = Vec::new();
        while let Some(out) = detector.poll() {
            outputs.push(out);
        }
        for out in outputs {
            match out {
                DetectorOutput::Send { to, msg } => {
                    let bytes = self.envelope(*msg, Some(&to));
                    if self.fabric.send(&to, bytes).await.is_ok() {
                        self.shared.counters.messages_sent.inc();
                    }
                }
                DetectorOutput::Alive(node) => self.reg.vouch(&node),
                DetectorOutput::Dead(node) => {
                    tracing::warn!(node = %self.id, "{node} answered no probe: declared dead");
                    self.reg.declare_dead(&node, &self.shared.counters);
                }
            }
        }
    }

    async fn on_sense(&mut self) {
        self.record_quarantines().await;
        let running = self.exec.running();
        let roots: BTreeMap<InstanceId, u32> =
            running.iter().map(|(k, r)| (k.clone(), r.pid)).collect();
        let sample = {
            let mut guard = self.shared.sensor.lock().unwrap_or_else(|p| p.into_inner());
            match guard.as_mut() {
                Some(s) => s.sample(&roots),
                None => return,
            }
        };
        let cap = self.node.capacity().clone();
        let gpus = self.gpus.sample(&self.node.committed().gpu_vram_bytes);
        let load = match self.sense {
            SenseMode::Host => Load {
                cpu_util: sample.cpu_util,
                memory_used_bytes: sample.memory_used_bytes,
                gpus,
            },
            SenseMode::Instances => {
                let cpu: u64 = sample.trees.values().map(|t| t.cpu_millicores).sum();
                let mem: u64 = sample.trees.values().map(|t| t.memory_bytes).sum();
                Load {
                    cpu_util: (cpu as f64 / cap.cpu_millicores.max(1) as f64).min(1.0),
                    memory_used_bytes: mem,
                    gpus,
                }
            }
        };
        let instances: BTreeMap<InstanceId, InstanceLoad> = sample.trees;
        self.input(Input::Sensed { load, instances }).await;
        // The instance file keeps the load at which what runs would be lost.
        if qs_core::failure::load_bucket(self.node.load().cpu_util) != self.saved_load_bucket {
            self.save_instances();
        }
    }

    fn registry_view(&self) -> RegistryView {
        let reg = self.reg.read();
        let specs: Vec<WorkloadSpec> = reg.specs().cloned().collect();
        let mut instances = Vec::new();
        let mut stewards = BTreeMap::new();
        let mut completed = BTreeMap::new();
        for s in &specs {
            for (id, r) in reg.instances_of(&s.name) {
                instances.push((s.name.clone(), id.clone(), InstanceRow::from(r)));
            }
            if let Some(st) = reg.steward(&s.name) {
                stewards.insert(s.name.clone(), st.clone());
            }
            if s.is_job() {
                completed.insert(s.name.clone(), reg.completed(&s.name));
            }
        }
        RegistryView {
            nodes: reg.live_nodes().cloned().collect(),
            specs,
            instances,
            stewards,
            completed,
        }
    }

    fn publish_view(&mut self) {
        self.view_due = None;
        let status = self.node.status(now());
        let instances = self
            .node
            .hosted()
            .iter()
            .map(|(id, h)| {
                let r = self.exec.running_one(id);
                LocalInstance {
                    instance: id.clone(),
                    service: h.service.clone(),
                    node: self.id.clone(),
                    role: h.role,
                    serving: h.serving,
                    hot: h.hot,
                    pid: r.as_ref().map(|r| r.pid),
                    port: r.as_ref().map(|r| r.port),
                    command: r.map(|r| r.command).unwrap_or_default(),
                }
            })
            .collect();
        let reg = self.reg.read();
        let view = NodeView {
            status,
            instances,
            stewards: reg.stewarded_by(&self.id).cloned().collect(),
            placements_in_flight: self.node.placements_in_flight(),
            gpu_source: self.gpus.describe(),
            live_peers: reg.live_count(),
        };
        self.shared
            .views
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.id.clone(), view);
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(3600)
}

/// Failure memory saved by a previous run; unreadable or absent means none (logged).
fn load_failures(path: &std::path::Path) -> Vec<(ServiceName, u8, f64)> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
            tracing::warn!(
                "{}: unreadable failure memory, starting without it: {e}",
                path.display()
            );
            Vec::new()
        }),
        Err(_) => Vec::new(),
    }
}

/// Watches the health of one process of an instance until that process is gone. Without a check, a process that stays up
/// briefly counts as serving.
async fn monitor(
    exec: Executor,
    instance: InstanceId,
    pid: u32,
    port: u16,
    check: Option<qs_wire::HealthCheck>,
    control: mpsc::Sender<Control>,
) {
    // This monitor belongs to one process: a restart of the instance gets its own.
    let running = |exec: &Executor| exec.pid_of(&instance) == Some(pid);
    let Some(check) = check else {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if running(&exec) {
            let _ = control
                .send(Control::Health {
                    instance,
                    serving: true,
                    failed: None,
                })
                .await;
        }
        return;
    };
    let started = tokio::time::Instant::now();
    let mut serving = false;
    let mut failures = 0u32;
    let timeout = Duration::from_millis(check.timeout_ms);
    loop {
        // Probe quickly until the instance first serves, then at the check's interval.
        let pause = if serving {
            check.interval_ms
        } else {
            check.interval_ms.clamp(50, 250)
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if !running(&exec) {
            return;
        }
        match health::probe(&check.probe, port, timeout).await {
            Ok(()) => {
                failures = 0;
                if !serving {
                    serving = true;
                    let msg = Control::Health {
                        instance: instance.clone(),
                        serving,
                        failed: None,
                    };
                    if control.send(msg).await.is_err() {
                        return;
                    }
                }
            }
            Err(why) => {
                if started.elapsed() < Duration::from_millis(check.start_period_ms) && !serving {
                    continue;
                }
                failures += 1;
                let failed = (failures >= check.failures).then(|| why.clone());
                if serving || failed.is_some() {
                    serving = false;
                    let done = failed.is_some();
                    let msg = Control::Health {
                        instance: instance.clone(),
                        serving,
                        failed,
                    };
                    if control.send(msg).await.is_err() || done {
                        return;
                    }
                }
            }
        }
    }
}
