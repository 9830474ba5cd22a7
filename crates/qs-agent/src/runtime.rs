//! One node's event loop: the core's inputs come from the fabric, the executor, the sensor,
//! health monitors and timers; its outputs go to the fabric, the executor and the ledger.

use crate::clock::now;
use crate::control::{Control, Shared};
use crate::error::AgentError;
use crate::exec::{Executor, Exit, Launch};
use crate::membership::Membership;
use crate::orphans::InstanceFile;
use crate::sense::GpuSource;
use crate::v1::Explained;
use qs_core::{
    Config, Detector, DetectorInput, DetectorOutput, FailureEntry, Input, Node, Notice, Output,
};
use qs_fabric::{Bytes, Fabric, Topic};
use qs_store::StateFile;
use qs_wire::{
    Demand, Envelope, Event, ExitOutcome, InstanceId, InstanceLoad, Load, Message, MessageId,
    NodeId, NodeSpec, ServiceName, WorkloadSpec,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

mod reach;
mod view;

/// How often the failure detector looks for silent nodes and overdue probes.
const DETECT_EVERY: Duration = Duration::from_millis(50);
/// How often a node removes the logs of instances ended longer than `log_retention_ms` ago.
const LOG_SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How stale the API's view of a node may be.
const VIEW_EVERY: Duration = Duration::from_millis(1000);
/// How soon a change an operator acts on (an instance turned healthy, ended, was told to stop;
/// a drain) shows.
const VIEW_SOON: Duration = Duration::from_millis(10);
/// Control messages buffered per node.
const CONTROL_BUFFER: usize = 256;

/// How a node's load is sensed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SenseMode {
    /// The whole host is this node (`qs agent`).
    Host,
    /// A virtual node of an embedded fleet: its load is what its own instances use, against
    /// its declared caps (`qs up`).
    Instances,
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
    /// Use the no-op executor double, with this script, instead of real processes.
    pub noop: Option<Arc<crate::exec::NoopScript>>,
    /// This node runs the process's failure detector (one node per process does).
    pub detect: bool,
    /// What this node's certificate grants (`None`: everything, trusting on first use).
    pub capabilities: Option<std::collections::BTreeSet<qs_wire::trust::Capability>>,
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
    /// None with the no-op executor: it starts no process that could be orphaned.
    instance_file: Option<InstanceFile>,
    control_tx: mpsc::Sender<Control>,
    /// When the API's view is next due, if it changed since it was last published.
    view_due: Option<tokio::time::Instant>,
    /// The process's failure detector, on the one node that runs it.
    detector: Option<Detector>,
    /// The load bucket last written to the instance file.
    saved_load_bucket: u8,
}

/// Runs one node until `stop` turns true; stops its instances before returning.
pub async fn run_node<F: Fabric>(
    setup: NodeSetup<F>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let id = setup.spec.id.clone();
    let state = setup.shared.state_dir.clone();
    state.prepare(StateFile::Instances(&id))?;
    let instance_file = InstanceFile::new(state.clone(), id.clone());
    let reaped = instance_file
        .reap_orphans(setup.stop_grace)
        .unwrap_or_else(|e| {
            tracing::error!(node = %id, "orphans not reaped: {e}");
            Vec::new()
        });
    let (exit_tx, mut exits) = mpsc::channel::<Exit>(1024);
    let (control_tx, mut controls) = mpsc::channel::<Control>(CONTROL_BUFFER);
    setup
        .shared
        .controls
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.clone(), control_tx.clone());
    let fabric = setup.fabric.clone();
    let mut inbox = fabric.subscribe(&Topic::node_rpc(&id)).await?;
    let notices = setup.membership.subscribe(&id);
    let detector = setup.detect.then(|| {
        Detector::new(
            id.clone(),
            &setup.config,
            setup.seed ^ qs_core::hash::of_str("detector"),
        )
    });
    let seq = state.next_boot_seq(&id, now().as_micros())?;
    let mut node = Node::new(&setup.spec, setup.config.clone(), setup.seed, now());
    if let Some(capabilities) = setup.capabilities.clone() {
        node.grant(capabilities);
    }
    // Failure memory that cannot be read is not applied: the node starts without it.
    match state.read_json::<Vec<FailureEntry>>(StateFile::Failures(&id)) {
        Ok(entries) => node.restore_failures(entries.unwrap_or_default(), now()),
        Err(e) => tracing::error!(node = %id, "starting without failure memory: {e}"),
    }
    let mut rt = Runtime {
        node,
        reg: setup.membership,
        id: id.clone(),
        fabric,
        shared: setup.shared.clone(),
        instance_file: setup.noop.is_none().then_some(instance_file),
        exec: if let Some(script) = setup.noop {
            Executor::noop(exit_tx, script)
        } else {
            Executor::new(state.path(StateFile::Logs(&id)), setup.stop_grace, exit_tx)
        },
        gpus: setup.gpus,
        sense: setup.sense,
        // Numbered from this life's boot epoch: a restarted node's messages are newer than its
        // last life's, whatever its clock did, so receivers' replay windows take them.
        seq,
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
    // Specs and members that arrived before this node subscribed: the core's first
    // periodic reconcile (at its first heartbeat) covers them.
    let mut died = false;
    let mut sense_timer = tokio::time::interval(setup.sense_every);
    let mut detect_timer = tokio::time::interval(DETECT_EVERY);
    let mut sweep_timer = tokio::time::interval(LOG_SWEEP_EVERY);
    let log_retention = Duration::from_millis(setup.config.log_retention_ms);
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
                    Control::Panic => panic!("chaos: a panic injected into node {id}'s runtime"),
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
            _ = sweep_timer.tick() => {
                let exec = rt.exec.clone();
                tokio::task::spawn_blocking(move || exec.sweep_logs(log_retention));
            }
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
        let serving = |node: &Node, i: &InstanceId| node.hosted().get(i).map(|h| h.serving);
        let probed = match &input {
            Input::Probe { instance, .. } => {
                Some((instance.clone(), serving(&self.node, instance)))
            }
            _ => None,
        };
        let mut visible = matches!(input, Input::Exited { .. } | Input::Drain(_));
        self.node.handle(input, now(), &self.reg.read());
        visible |= probed.is_some_and(|(i, before)| serving(&self.node, &i) != before);
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
                Output::Heartbeat(mut status) => {
                    self.stamp_reach(&mut status);
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
                    tokio::spawn(crate::claim::claim_record(
                        self.fabric.clone(),
                        service,
                        claim,
                        self.control_tx.clone(),
                    ));
                }
                Output::Record(event) => {
                    match &event {
                        Event::Placed { .. } => self.shared.counters.placements.inc(),
                        Event::InstanceExited { outcome, .. } if outcome.is_failure() => {
                            self.shared.counters.instance_failures.inc()
                        }
                        Event::OrderRefused { reason, .. } => {
                            let reason = match reason {
                                qs_wire::DeclineReason::NotSteward => "not_steward",
                                _ => "unknown_service",
                            };
                            self.shared
                                .counters
                                .orders_refused
                                .get_or_create(&vec![("reason".into(), reason.into())])
                                .inc()
                        }
                        _ => 0,
                    };
                    records.push(event);
                }
                Output::SaveFailures(entries) => {
                    let file = StateFile::Failures(&self.id);
                    if let Err(e) = self.shared.state_dir.write_json(file, &entries) {
                        tracing::error!(node = %self.id, "saving failure memory: {e}");
                    }
                }
            }
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
        let user = spec.as_ref().and_then(|s| s.user.clone());
        let prepared = spec
            .as_ref()
            .and_then(|s| s.command.clone())
            .ok_or_else(|| format!("{} has no command to run", order.service))
            .and_then(|c| {
                let allowed = &self.node.config().child_users;
                Ok((c, crate::run_as::for_spec(user.as_deref(), allowed)?))
            });
        let (command, run_as) = match prepared {
            Ok(p) => p,
            Err(reason) => {
                let exit = Exit {
                    instance: order.instance,
                    outcome: ExitOutcome::FailedStart { reason },
                };
                let tx = self.exec.exits();
                tokio::spawn(async move {
                    let _ = tx.send(exit).await;
                });
                return;
            }
        };
        let is_job = spec.as_ref().is_some_and(WorkloadSpec::is_job);
        let launch = Launch {
            instance: order.instance.clone(),
            command,
            is_job,
            env: spec.as_ref().map(|s| s.env.clone()).unwrap_or_default(),
            run_as: run_as.clone(),
        };
        match self.exec.start(launch) {
            Ok(running) => {
                self.save_instances();
                let (check, env) = spec.map_or_else(Default::default, |s| (s.health, s.env));
                tokio::spawn(crate::monitor::monitor(
                    self.exec.clone(),
                    order.instance,
                    running.pid,
                    running.port,
                    check,
                    crate::sandbox::ChildSetting { env, run_as },
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
            let saved = file.save(
                &self.exec.running(),
                |i| hosted.get(i).map(|h| h.service.clone()),
                cpu_util,
            );
            if let Err(e) = saved {
                tracing::error!(node = %self.id, "saving the instance file: {e}");
            }
            self.saved_load_bucket = qs_core::failure::load_bucket(cpu_util);
        }
    }

    /// Records the quarantines the keyring began (on this node's messages or the feed's),
    /// and takes each quarantined peer out of the membership at once: the core says who
    /// reconciles then.
    async fn record_quarantines(&self) {
        let quarantines = self.shared.auth.take_quarantines();
        for q in &quarantines {
            if let Event::PeerQuarantined { peer, .. } = q {
                self.reg.quarantined(peer);
            }
        }
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
        for input in notice.into_inputs() {
            self.input(input).await;
        }
    }

    async fn on_exit(&mut self, exit: Exit) {
        self.save_instances();
        self.input(Input::Exited {
            instance: exit.instance,
            outcome: exit.outcome,
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
            Control::Die | Control::Pause(_) | Control::Panic => {} // handled by the loop
            Control::Core(input) => self.input(*input).await,
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
        // The no-op double has no processes to walk: its script says what its instances use.
        let roots: BTreeMap<InstanceId, u32> = match self.exec.script() {
            Some(_) => BTreeMap::new(),
            None => running.iter().map(|(k, r)| (k.clone(), r.pid)).collect(),
        };
        let mut sample = {
            let mut guard = self.shared.sensor.lock().unwrap_or_else(|p| p.into_inner());
            match guard.as_mut() {
                Some(s) => s.sample(&roots),
                None => return,
            }
        };
        if let Some(script) = self.exec.script() {
            for id in running.keys() {
                sample.trees.insert(id.clone(), script.load(id));
            }
        }
        let cap = self.node.capacity().clone();
        let gpus = self.gpus.sample(&self.node.committed().gpu_vram_bytes);
        // Each instance's share of its GPU: the utilisation of the GPU it holds (a GPU is
        // given to one model at a time), and the VRAM the source attributes to it.
        for (id, h) in self.node.hosted() {
            if let (Some(i), Some(tree)) = (h.gpu, sample.trees.get_mut(id))
                && let Some(g) = gpus.get(i as usize)
            {
                tree.gpu_util = tree.gpu_util.max(g.util);
                tree.vram_bytes = tree
                    .vram_bytes
                    .max(h.demand.need.vram_bytes.min(g.vram_used_bytes));
            }
        }
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
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(3600)
}
