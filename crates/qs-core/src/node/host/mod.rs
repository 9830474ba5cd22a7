//! The host: what runs on this node. Its capacity and commitments, the instances it hosts,
//! their health verdicts and restarts, its failure memory, its drain, and its answers to the
//! placement steps (offers, late-binding acceptance of dispatches).

use super::{Outbox, Output, StartOrder};
use crate::config::Config;
use crate::failure::{FailureEntry, FailureMemory, load_bucket};
use crate::health::{self, Probed, Verdict};
use crate::registry::Registry;
use crate::time::{Time, ms};
use crate::weight::{Gate, composite};
use qs_wire::trust::Capability;
use qs_wire::{
    Capacity, Committed, DeclineReason, Demand, Event, ExitOutcome, InstanceId, InstanceLoad,
    InstanceSummary, Load, Message, NodeId, NodeSpec, NodeStatus, Offer, Resource, Role,
    ServiceName,
};
use std::collections::{BTreeMap, VecDeque};

mod exits;

/// An instance this node runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hosted {
    pub service: ServiceName,
    pub demand: Demand,
    pub role: Role,
    pub fencing: u64,
    pub gpu: Option<u32>,
    /// Its sensed use is over a threshold.
    pub hot: bool,
    /// A stop was ordered; it still holds its resources until it exits.
    pub stopping: bool,
    /// Healthy: it may receive traffic.
    pub serving: bool,
    /// What the probes of its current process have shown.
    pub probed: Probed,
    /// Its health check failed and its stop was ordered: the exit is a health failure.
    pub health_failed: Option<String>,
    /// In-place restarts so far.
    pub restarts: u32,
    /// Failed; to be started again at this time (resources stay committed meanwhile).
    pub restart_at: Option<Time>,
}

/// A job instance that completed, reported in heartbeats until the linger passes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Completed {
    at: Time,
    instance: InstanceId,
    service: ServiceName,
}

/// Do the node's labels carry every required label with the same value?
pub(crate) fn labels_match(
    required: &BTreeMap<String, String>,
    have: &BTreeMap<String, String>,
) -> bool {
    required.iter().all(|(k, v)| have.get(k) == Some(v))
}

/// See the module docs.
#[derive(Debug)]
pub struct Host {
    id: NodeId,
    level: u8,
    /// What its certificate lets it do (`None`: everything); said in its heartbeats.
    capabilities: Option<qs_wire::trust::CapabilitySet>,
    labels: BTreeMap<String, String>,
    capacity: Capacity,
    config: Config,
    gate: Gate,
    committed: Committed,
    load: Load,
    hosted: BTreeMap<InstanceId, Hosted>,
    /// Draining: no new work; instances are being moved away.
    draining: bool,
    completed: VecDeque<Completed>,
    failures: FailureMemory,
    next_heartbeat: Time,
}

impl Host {
    pub(crate) fn new(spec: &NodeSpec, config: Config, first_beat: Time) -> Host {
        Host {
            id: spec.id.clone(),
            level: spec.level,
            capabilities: None,
            labels: spec.labels.clone(),
            committed: Committed {
                gpu_vram_bytes: vec![0; spec.capacity.gpus.len()],
                ..Committed::default()
            },
            load: Load {
                gpus: vec![Default::default(); spec.capacity.gpus.len()],
                ..Load::default()
            },
            capacity: spec.capacity.clone(),
            gate: Gate {
                min: config.gate_min,
            },
            failures: FailureMemory::new(ms(config.failure_half_life_ms), config.pressure_cap),
            config,
            hosted: BTreeMap::new(),
            draining: false,
            completed: VecDeque::new(),
            next_heartbeat: first_beat,
        }
    }

    /// Heartbeats and restarts that are due.
    pub(crate) fn on_tick(&mut self, now: Time, out: &mut Outbox) {
        if now >= self.next_heartbeat {
            let beat = self.status(now);
            out.emit(Output::Heartbeat(beat));
            self.next_heartbeat = now + ms(self.config.heartbeat_ms);
        }
    }

    /// The host's next deadline: a heartbeat or a restart.
    pub(crate) fn deadline(&self) -> Time {
        self.hosted
            .values()
            .filter_map(|h| h.restart_at)
            .fold(self.next_heartbeat, Time::min)
    }

    /// Steps 4 and 5, host side: can this node take `demand` now, and with what weight?
    /// `fencing` is set for singleton dispatches, so a stale one is refused.
    pub fn evaluate(
        &self,
        demand: &Demand,
        fencing: Option<u64>,
        now: Time,
        reg: &Registry,
    ) -> Result<Offer, DeclineReason> {
        if self.draining {
            return Err(DeclineReason::Draining);
        }
        let granted = |c| self.capabilities.is_none_or(|set| set.contains(c));
        if !granted(Capability::Host) || (demand.need.needs_gpu() && !granted(Capability::Gpu)) {
            return Err(DeclineReason::NotGranted);
        }
        if !labels_match(&demand.labels, &self.labels) {
            return Err(DeclineReason::Labels);
        }
        let mine = self
            .hosted
            .values()
            .filter(|h| h.service == demand.service && !h.stopping)
            .count();
        if mine >= demand.max_per_node as usize {
            return Err(DeclineReason::AlreadyRunning);
        }
        if let Some(token) = fencing
            && token < reg.max_fencing(&demand.service)
        {
            return Err(DeclineReason::Superseded);
        }
        if let Some(resource) = self
            .config
            .thresholds
            .over(&self.load, &self.capacity, None)
            && resource != Resource::Gpu
        {
            return Err(DeclineReason::OverThreshold { resource });
        }
        let need = &demand.need;
        if self.committed.cpu_millicores + need.cpu_millicores > self.capacity.cpu_millicores {
            return Err(DeclineReason::NoFit {
                resource: Resource::Cpu,
            });
        }
        let memory_used = self.committed.memory_bytes.max(self.load.memory_used_bytes);
        if memory_used + need.memory_bytes > self.capacity.memory_bytes {
            return Err(DeclineReason::NoFit {
                resource: Resource::Memory,
            });
        }
        let (gpu, vram_free_bytes, vram_free) = if need.needs_gpu() {
            let (index, free) = self.best_gpu().ok_or(DeclineReason::NoFit {
                resource: Resource::Gpu,
            })?;
            if free < need.vram_bytes {
                return Err(DeclineReason::NoFit {
                    resource: Resource::Vram,
                });
            }
            if self
                .load
                .gpus
                .get(index)
                .is_some_and(|g| g.util > self.config.thresholds.gpu)
            {
                return Err(DeclineReason::OverThreshold {
                    resource: Resource::Gpu,
                });
            }
            let total = self.capacity.gpus[index].vram_bytes.max(1);
            (Some(index as u32), free, Some(free as f64 / total as f64))
        } else {
            (None, 0, None)
        };
        let cpu_free = 1.0
            - self.config.thresholds.cpu_taken(
                &self.load,
                &self.capacity,
                self.committed.cpu_millicores,
            );
        let pressure = self.pressure(&demand.service, now);
        Ok(Offer {
            composite: composite(pressure, vram_free, cpu_free, self.level),
            gpu,
            vram_free_bytes,
        })
    }

    /// This node's failure pressure for a service at its current load.
    pub fn pressure(&self, service: &ServiceName, now: Time) -> f64 {
        self.failures
            .pressure(service, load_bucket(self.load.cpu_util), now)
    }

    /// The GPU with the most free VRAM (committed or sensed, whichever is more), lowest index
    /// on ties.
    fn best_gpu(&self) -> Option<(usize, u64)> {
        self.capacity
            .gpus
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let committed = self.committed.gpu_vram_bytes.get(i).copied().unwrap_or(0);
                let sensed = self.load.gpus.get(i).map_or(0, |l| l.vram_used_bytes);
                (i, g.vram_bytes.saturating_sub(committed.max(sensed)))
            })
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
    }

    /// Late binding: re-check fit, pattern and gate at the moment of the dispatch.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn accept_dispatch(
        &mut self,
        instance: &InstanceId,
        demand: &Demand,
        role: Role,
        fencing: u64,
        now: Time,
        reg: &Registry,
        out: &mut Outbox,
    ) -> Result<(), DeclineReason> {
        if self.hosted.contains_key(instance) {
            return Ok(()); // a repeated dispatch: already accepted
        }
        let token = demand.pattern.is_singleton().then_some(fencing);
        let offer = self.evaluate(demand, token, now, reg)?;
        if !self.gate.admits(&offer.composite) {
            return Err(DeclineReason::Gate);
        }
        let order = StartOrder {
            instance: instance.clone(),
            service: demand.service.clone(),
            role,
            fencing,
            gpu: offer.gpu,
            need: demand.need,
        };
        self.host(order, demand.clone(), now, out);
        Ok(())
    }

    /// Commits resources and orders the start.
    pub(crate) fn host(&mut self, order: StartOrder, demand: Demand, now: Time, out: &mut Outbox) {
        let need = demand.need;
        self.committed.cpu_millicores += need.cpu_millicores;
        self.committed.memory_bytes += need.memory_bytes;
        if let Some(i) = order.gpu {
            self.committed.gpu_vram_bytes[i as usize] += need.vram_bytes;
        }
        self.hosted.insert(
            order.instance.clone(),
            Hosted {
                service: order.service.clone(),
                demand,
                role: order.role,
                fencing: order.fencing,
                gpu: order.gpu,
                hot: false,
                stopping: false,
                serving: false,
                probed: Probed::started(now),
                health_failed: None,
                restarts: 0,
                restart_at: None,
            },
        );
        start(order, out);
    }

    /// A probe of an instance's health (or, without a check, its process staying up)
    /// reported `result`: the core's verdict decides whether it serves, and whether its
    /// health failed, which stops it (and so restarts it in place, or gives it up).
    pub(crate) fn on_probe(
        &mut self,
        instance: &InstanceId,
        result: Result<(), String>,
        now: Time,
        reg: &Registry,
        out: &mut Outbox,
    ) {
        // A report about a process that has since failed, or is being stopped, is stale.
        let Some(h) = self.hosted.get_mut(instance) else {
            return;
        };
        if h.restart_at.is_some() || h.stopping || h.health_failed.is_some() {
            return;
        }
        let check = reg.spec(&h.service).and_then(|s| s.health.as_ref());
        let was_serving = h.serving;
        match health::judge(check, &mut h.probed, result, now) {
            Verdict::Unchanged => {}
            Verdict::Serving => h.serving = true,
            Verdict::NotServing => h.serving = false,
            Verdict::Failed { reason } => {
                h.serving = false;
                h.health_failed = Some(reason.clone());
                out.emit(Output::Stop {
                    instance: instance.clone(),
                    reason: format!("health check failed: {reason}"),
                });
            }
        }
        // Whether it takes traffic is news the fleet's addresses wait for: said at once.
        if h.serving != was_serving {
            self.next_heartbeat = self.next_heartbeat.min(now);
        }
    }

    /// A new sensor sample: marks instances hot or calm. An instance is hot when its own use
    /// crosses a threshold relative to what it asked for (CPU and memory against its
    /// request), or, for one holding a GPU, when its use of that GPU crosses the GPU
    /// threshold.
    pub(crate) fn on_sensed(
        &mut self,
        load: Load,
        instances: &BTreeMap<InstanceId, InstanceLoad>,
        out: &mut Outbox,
    ) {
        let mut gpus = load.gpus;
        gpus.resize(self.capacity.gpus.len(), Default::default());
        self.load = Load { gpus, ..load };
        let t = self.config.thresholds;
        let mut became_hot = Vec::new();
        for (id, h) in &mut self.hosted {
            let Some(l) = instances.get(id) else { continue };
            let need = &h.demand.need;
            let cpu = l.cpu_millicores as f64 / need.cpu_millicores.max(1) as f64;
            let mem = l.memory_bytes as f64 / need.memory_bytes.max(1) as f64;
            let gpu_hot = h.gpu.is_some() && l.gpu_util > t.gpu;
            let hot = cpu > t.cpu || mem > t.memory || gpu_hot;
            if hot && !h.hot {
                became_hot.push(Event::InstanceHot {
                    instance: id.clone(),
                    service: h.service.clone(),
                    cpu_permille: (cpu * 1000.0).round() as u32,
                });
            }
            h.hot = hot;
        }
        for e in became_hot {
            out.record(e);
        }
    }

    /// Starts or ends a drain. Starting stops every instance (not a failure: no pressure);
    /// their stewards place them elsewhere, since this node now declines everything.
    pub(crate) fn drain(&mut self, on: bool, out: &mut Outbox) {
        self.draining = on;
        if on {
            let ids: Vec<InstanceId> = self.hosted.keys().cloned().collect();
            for id in ids {
                self.stop(&id, "drain".into(), out);
            }
        }
    }

    /// The service of an instance hosted here.
    pub(crate) fn service_of(&self, instance: &InstanceId) -> Option<&ServiceName> {
        self.hosted.get(instance).map(|h| &h.service)
    }

    /// Orders from a steward (this node's own, or another's): stop or promote an instance.
    pub(crate) fn obey(&mut self, order: Message, out: &mut Outbox) {
        match order {
            Message::Stop { instance, reason } => self.stop(&instance, reason, out),
            Message::Promote { instance } => {
                if let Some(h) = self.hosted.get_mut(&instance) {
                    h.role = Role::Primary;
                }
            }
            _ => {}
        }
    }

    /// Stop a hosted instance gracefully (idempotent). One waiting to restart has no
    /// process: it is released at once.
    pub(crate) fn stop(&mut self, instance: &InstanceId, reason: String, out: &mut Outbox) {
        let Some(h) = self.hosted.get_mut(instance) else {
            return;
        };
        if h.restart_at.is_some() {
            let service = h.service.clone();
            self.release(instance);
            out.record(Event::InstanceExited {
                instance: instance.clone(),
                service,
                outcome: ExitOutcome::Stopped { reason },
            });
            return;
        }
        if !h.stopping {
            h.stopping = true;
            out.emit(Output::Stop {
                instance: instance.clone(),
                reason,
            });
        }
    }

    /// Stops what must not run any more: instances whose spec was deleted, and singletons
    /// whose fencing token another node has superseded.
    pub(crate) fn stop_unwanted(&mut self, reg: &Registry, out: &mut Outbox) {
        let unwanted: Vec<(InstanceId, &'static str)> = self
            .hosted
            .iter()
            .filter(|(_, h)| !h.stopping)
            .filter_map(|(id, h)| {
                if reg.spec(&h.service).is_none() {
                    Some((id.clone(), "spec deleted"))
                } else if h.demand.pattern.is_singleton() && h.fencing < reg.max_fencing(&h.service)
                {
                    Some((id.clone(), "superseded by a newer fencing token"))
                } else {
                    None
                }
            })
            .collect();
        for (id, why) in unwanted {
            self.stop(&id, why.into(), out);
        }
    }

    /// The heartbeat: this node as others should see it.
    pub fn status(&mut self, now: Time) -> NodeStatus {
        let linger = ms(self.config.completion_linger_ms);
        while self
            .completed
            .front()
            .is_some_and(|c| now.since(c.at) > linger)
        {
            self.completed.pop_front();
        }
        NodeStatus {
            node: self.id.clone(),
            level: self.level,
            labels: self.labels.clone(),
            capacity: self.capacity.clone(),
            committed: self.committed.clone(),
            load: self.load.clone(),
            instances: self
                .hosted
                .iter()
                .map(|(id, h)| InstanceSummary {
                    instance: id.clone(),
                    service: h.service.clone(),
                    role: h.role,
                    fencing: h.fencing,
                    hot: h.hot,
                    serving: h.serving,
                    // The executor picks the port; the shell says it as it publishes.
                    port: 0,
                })
                .collect(),
            completed: self
                .completed
                .iter()
                .map(|c| (c.instance.clone(), c.service.clone()))
                .collect(),
            draining: self.draining,
            address: None,
            models: vec![],
            entry_port: 0,
            capabilities: self.capabilities,
        }
    }

    /// Takes what this node's certificate grants: said in its heartbeats, so the fleet asks
    /// it to host or steward only as granted.
    pub fn grant(&mut self, capabilities: std::collections::BTreeSet<qs_wire::trust::Capability>) {
        self.capabilities = Some(capabilities.into());
    }

    // ---- read access -------------------------------------------------------------------------

    pub fn id(&self) -> &NodeId {
        &self.id
    }
    pub fn level(&self) -> u8 {
        self.level
    }
    pub fn capacity(&self) -> &Capacity {
        &self.capacity
    }
    pub fn committed(&self) -> &Committed {
        &self.committed
    }
    /// Instances this node hosts, by id.
    pub fn hosted(&self) -> &BTreeMap<InstanceId, Hosted> {
        &self.hosted
    }
    pub fn failures(&self) -> &FailureMemory {
        &self.failures
    }
    pub fn is_draining(&self) -> bool {
        self.draining
    }
    /// The last sensor sample.
    pub fn load(&self) -> &Load {
        &self.load
    }
}

/// Records an instance's start and orders it.
fn start(order: StartOrder, out: &mut Outbox) {
    out.record(Event::InstanceStarted {
        instance: order.instance.clone(),
        service: order.service.clone(),
        role: order.role,
        fencing: order.fencing,
        gpu: order.gpu,
    });
    out.emit(Output::Start(order));
}
