//! The host side of a node: sensing, offers, late-binding acceptance, running instances.

use super::{Node, Output, StartOrder};
use crate::failure::load_bucket;
use crate::registry::Registry;
use crate::time::{Time, ms};
use crate::weight::composite;
use qs_wire::{
    DeclineReason, Demand, Event, ExitOutcome, InstanceId, InstanceLoad, InstanceSummary, Load,
    NodeStatus, Offer, Resource, Role, ServiceName,
};
use std::collections::BTreeMap;

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
    /// In-place restarts so far.
    pub restarts: u32,
    /// Failed; to be started again at this time (resources stay committed meanwhile).
    pub restart_at: Option<Time>,
}

/// Do the node's labels carry every required label with the same value?
pub(crate) fn labels_match(
    required: &BTreeMap<String, String>,
    have: &BTreeMap<String, String>,
) -> bool {
    required.iter().all(|(k, v)| have.get(k) == Some(v))
}

impl Node {
    /// Steps 4 and 5, host side: can this node take `demand` now, and with what weight?
    /// `fencing` is set for singleton dispatches, so a stale one is refused.
    pub(crate) fn evaluate(
        &self,
        demand: &Demand,
        fencing: Option<u64>,
        now: Time,
        reg: &Registry,
    ) -> Result<Offer, DeclineReason> {
        if self.draining {
            return Err(DeclineReason::Draining);
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
        let cpu_cap = self.capacity.cpu_millicores.max(1) as f64;
        let cpu_free = 1.0
            - self
                .load
                .cpu_util
                .max(self.committed.cpu_millicores as f64 / cpu_cap);
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
    pub(crate) fn accept_dispatch(
        &mut self,
        instance: &InstanceId,
        demand: &Demand,
        role: Role,
        fencing: u64,
        now: Time,
        reg: &Registry,
    ) -> Result<(), DeclineReason> {
        if self.hosted.contains_key(instance) {
            return Ok(()); // a repeated dispatch: already accepted
        }
        let token = demand.pattern.is_singleton().then_some(fencing);
        let offer = self.evaluate(demand, token, now, reg)?;
        if !self.gate.admits(&offer.composite) {
            return Err(DeclineReason::Gate);
        }
        self.host(instance.clone(), demand.clone(), role, fencing, offer.gpu);
        Ok(())
    }

    /// Commits resources and orders the start.
    pub(crate) fn host(
        &mut self,
        instance: InstanceId,
        demand: Demand,
        role: Role,
        fencing: u64,
        gpu: Option<u32>,
    ) {
        let need = demand.need;
        self.committed.cpu_millicores += need.cpu_millicores;
        self.committed.memory_bytes += need.memory_bytes;
        if let Some(i) = gpu {
            self.committed.gpu_vram_bytes[i as usize] += need.vram_bytes;
        }
        let service = demand.service.clone();
        self.record(Event::InstanceStarted {
            instance: instance.clone(),
            service: service.clone(),
            role,
            fencing,
            gpu,
        });
        self.emit(Output::Start(StartOrder {
            instance: instance.clone(),
            service: service.clone(),
            role,
            fencing,
            gpu,
            need,
        }));
        self.hosted.insert(
            instance,
            Hosted {
                service,
                demand,
                role,
                fencing,
                gpu,
                hot: false,
                stopping: false,
                serving: false,
                restarts: 0,
                restart_at: None,
            },
        );
    }

    /// Raises this node's pressure for `service` at the load bucket of `cpu_util`.
    fn remember_failure(&mut self, service: &ServiceName, cpu_util: f64, now: Time) {
        let bucket = load_bucket(cpu_util);
        let pressure = self.failures.record(service, bucket, now);
        self.record(Event::PressureRaised {
            service: service.clone(),
            load_bucket: bucket,
            pressure_permille: (pressure * 1000.0).round() as u32,
        });
    }

    /// An instance that went down with this node's previous agent: a crash of its service
    /// here (its steward has placed it again, or will).
    pub(crate) fn on_lost(
        &mut self,
        instance: InstanceId,
        service: ServiceName,
        cpu_util: f64,
        reason: String,
        now: Time,
    ) {
        self.record(Event::InstanceExited {
            instance,
            service: service.clone(),
            outcome: ExitOutcome::Crashed { reason },
        });
        self.remember_failure(&service, cpu_util, now);
    }

    /// An instance ended. A failure raises this node's pressure for its service; a failed
    /// instance is restarted in place with backoff up to `max_restarts` times, after which the
    /// node gives it up and its steward places it again (elsewhere, if pressure says so).
    pub(crate) fn on_exit(&mut self, instance: &InstanceId, outcome: ExitOutcome, now: Time) {
        let Some(h) = self.hosted.get(instance) else {
            return;
        };
        let service = h.service.clone();
        let failed = outcome.is_failure();
        let completed = outcome == ExitOutcome::Completed;
        let restart = failed && !h.stopping && h.restarts < self.config.max_restarts;
        self.record(Event::InstanceExited {
            instance: instance.clone(),
            service: service.clone(),
            outcome,
        });
        if failed {
            self.remember_failure(&service, self.load.cpu_util, now);
        }
        if restart {
            let c = &self.config;
            let Some(h) = self.hosted.get_mut(instance) else {
                return;
            };
            h.restarts += 1;
            let delay_ms = c
                .restart_backoff_ms
                .saturating_mul(1 << (h.restarts - 1).min(16))
                .min(c.restart_backoff_max_ms);
            h.restart_at = Some(now + ms(delay_ms));
            h.serving = false;
            h.hot = false;
            let attempt = h.restarts;
            self.record(Event::InstanceRestarting {
                instance: instance.clone(),
                service,
                attempt,
                delay_ms,
            });
            return;
        }
        self.release(instance);
        if completed {
            self.completed.push_back((now, instance.clone(), service));
        }
    }

    /// Forgets an instance and gives back what it held.
    fn release(&mut self, instance: &InstanceId) {
        let Some(h) = self.hosted.remove(instance) else {
            return;
        };
        let need = h.demand.need;
        self.committed.cpu_millicores -= need.cpu_millicores;
        self.committed.memory_bytes -= need.memory_bytes;
        if let Some(i) = h.gpu {
            self.committed.gpu_vram_bytes[i as usize] -= need.vram_bytes;
        }
    }

    /// Starts again every failed instance whose backoff has passed.
    pub(crate) fn restart_due(&mut self, now: Time) {
        let due: Vec<InstanceId> = self
            .hosted
            .iter()
            .filter(|(_, h)| h.restart_at.is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let Some(h) = self.hosted.get_mut(&id) else {
                continue;
            };
            h.restart_at = None;
            let order = StartOrder {
                instance: id.clone(),
                service: h.service.clone(),
                role: h.role,
                fencing: h.fencing,
                gpu: h.gpu,
                need: h.demand.need,
            };
            self.record(Event::InstanceStarted {
                instance: id,
                service: order.service.clone(),
                role: order.role,
                fencing: order.fencing,
                gpu: order.gpu,
            });
            self.emit(Output::Start(order));
        }
    }

    /// The earliest pending restart.
    pub(crate) fn next_restart(&self) -> Option<Time> {
        self.hosted.values().filter_map(|h| h.restart_at).min()
    }

    /// A new sensor sample: marks instances hot or calm (an instance is hot when its own use
    /// crosses the threshold relative to what it asked for).
    pub(crate) fn on_sensed(&mut self, load: Load, instances: &BTreeMap<InstanceId, InstanceLoad>) {
        let mut gpus = load.gpus;
        gpus.resize(self.capacity.gpus.len(), Default::default());
        self.load = Load { gpus, ..load };
        let t = self.config.thresholds;
        let mut became_hot = Vec::new();
        for (id, h) in &mut self.hosted {
            let Some(l) = instances.get(id) else { continue };
            let cpu = l.cpu_millicores as f64 / h.demand.need.cpu_millicores.max(1) as f64;
            let mem = l.memory_bytes as f64 / h.demand.need.memory_bytes.max(1) as f64;
            let hot = cpu > t.cpu || mem > t.memory;
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
            self.record(e);
        }
    }

    /// Starts or ends a drain. Starting stops every instance (not a failure: no pressure);
    /// their stewards place them elsewhere, since this node now declines everything.
    pub(crate) fn drain(&mut self, on: bool) {
        self.draining = on;
        if on {
            let ids: Vec<InstanceId> = self.hosted.keys().cloned().collect();
            for id in ids {
                self.stop(&id, "drain".into());
            }
        }
    }

    /// Stop a hosted instance gracefully (idempotent). One waiting to restart has no
    /// process: it is released at once.
    pub(crate) fn stop(&mut self, instance: &InstanceId, reason: String) {
        if self
            .hosted
            .get(instance)
            .is_some_and(|h| h.restart_at.is_some())
        {
            let service = self.hosted[instance].service.clone();
            self.release(instance);
            self.record(Event::InstanceExited {
                instance: instance.clone(),
                service,
                outcome: ExitOutcome::Stopped { reason },
            });
            return;
        }
        if let Some(h) = self.hosted.get_mut(instance)
            && !h.stopping
        {
            h.stopping = true;
            self.emit(Output::Stop {
                instance: instance.clone(),
                reason,
            });
        }
    }

    pub(crate) fn promote(&mut self, instance: &InstanceId) {
        if let Some(h) = self.hosted.get_mut(instance) {
            h.role = Role::Primary;
        }
    }

    /// Stops what must not run any more: instances whose spec was deleted, and singletons
    /// whose fencing token another node has superseded.
    pub(crate) fn stop_unwanted(&mut self, reg: &Registry) {
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
            self.stop(&id, why.into());
        }
    }

    /// The heartbeat: this node as others should see it.
    pub fn status(&mut self, now: Time) -> NodeStatus {
        let linger = ms(self.config.completion_linger_ms);
        while self
            .completed
            .front()
            .is_some_and(|(t, _, _)| now.since(*t) > linger)
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
                })
                .collect(),
            completed: self
                .completed
                .iter()
                .map(|(_, i, s)| (i.clone(), s.clone()))
                .collect(),
            draining: self.draining,
        }
    }
}
