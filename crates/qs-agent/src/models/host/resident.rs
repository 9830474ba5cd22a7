//! The resident model of a GPU (seed 003's margin): a small runtime kept loaded in the
//! reserved margin through every swap, outside the scheduler, which only learns how much of
//! the margin it holds. Started when declared; after a crash, the core's [`Keeper`] says
//! when to start it again, or that the watchdog gives up (an alert).

use super::{Decision, Host};
use crate::clock::now;
use qs_core::gpu::{Keeper, KeeperVerdict, place_resident};
use qs_fabric::Fabric;
use qs_wire::{InstanceId, ModelSpec, ModelStep, ServiceName};
use std::time::Duration;
use tokio::sync::oneshot;

/// The pause before a crashed resident runtime starts again, times its failures in a row.
const RESTART_PAUSE_MS: u64 = 500;

/// A resident model and its runtime.
pub(super) struct ResidentModel {
    pub(super) spec: ModelSpec,
    pub(super) gpu: usize,
    pub(super) tier: usize,
    pub(super) instance: Option<InstanceId>,
    pub(super) port: u16,
    pub(super) warm: bool,
    /// Its failures in a row, and what follows one.
    pub(super) keeper: Keeper,
    /// When to start it (again); `None` while it runs, or once the watchdog gave up.
    pub(super) start_at: Option<tokio::time::Instant>,
}

impl<F: Fabric> Host<F> {
    /// Takes a resident model: the GPU whose free margin holds a tier of it. A changed spec
    /// of one already resident applies at its next start.
    pub(super) fn declare_resident(&mut self, spec: ModelSpec) {
        if let Some(r) = self.residents.get_mut(&spec.name) {
            r.spec = spec;
            return;
        }
        let tiers: Vec<u64> = spec.tiers.iter().map(|t| t.vram_bytes).collect();
        let margins_free: Vec<u64> = (0..self.gpus.len())
            .map(|i| self.reserved_bytes.saturating_sub(self.margin_held(i)))
            .collect();
        let Some(p) = place_resident(&tiers, &margins_free) else {
            tracing::warn!(
                "resident model {}: no GPU of node {} has a margin that holds it",
                spec.name,
                self.node
            );
            return;
        };
        self.residents.insert(
            spec.name.clone(),
            ResidentModel {
                spec,
                gpu: p.gpu,
                tier: p.tier,
                instance: None,
                port: 0,
                warm: false,
                keeper: Keeper::new(self.max_failed_starts, RESTART_PAUSE_MS),
                start_at: Some(tokio::time::Instant::now()),
            },
        );
        let held = self.margin_held(p.gpu);
        self.gpus[p.gpu].scheduler.hold_margin(held);
    }

    /// VRAM of GPU `gpu`'s margin that its resident models hold.
    fn margin_held(&self, gpu: usize) -> u64 {
        self.residents
            .values()
            .filter(|r| r.gpu == gpu)
            .map(|r| r.spec.tiers[r.tier].vram_bytes)
            .sum()
    }

    /// Withdraws a resident model: its runtime stops, its margin is free again.
    pub(super) fn withdraw_resident(&mut self, name: &ServiceName) {
        let Some(r) = self.residents.remove(name) else {
            return;
        };
        if let Some(instance) = &r.instance
            && let Some(p) = self.processes.get_mut(instance)
        {
            p.stopping = true;
            self.exec.stop(instance, "withdrawn");
        }
        let held = self.margin_held(r.gpu);
        self.gpus[r.gpu].scheduler.hold_margin(held);
    }

    /// Starts the resident runtimes that are due.
    pub(super) fn start_residents(&mut self) {
        let instant = tokio::time::Instant::now();
        let due: Vec<ServiceName> = self
            .residents
            .iter()
            .filter(|(_, r)| r.start_at.is_some_and(|at| at <= instant))
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            let Some(r) = self.residents.get_mut(&name) else {
                continue;
            };
            r.start_at = None;
            let (spec, gpu, tier) = (r.spec.clone(), r.gpu, r.tier);
            match self.spawn(gpu, &spec, tier, true) {
                Ok(instance) => {
                    let port = self.processes.get(&instance).map_or(0, |p| p.port);
                    if let Some(r) = self.residents.get_mut(&name) {
                        r.instance = Some(instance);
                        r.port = port;
                    }
                }
                Err(why) => self.resident_failed(&name, why),
            }
        }
    }

    /// When the next resident start is due.
    pub(super) fn next_resident_start(&self) -> Option<tokio::time::Instant> {
        self.residents.values().filter_map(|r| r.start_at).min()
    }

    /// Its runtime answered its warm check.
    pub(super) fn resident_warm(&mut self, name: &ServiceName) {
        if let Some(r) = self.residents.get_mut(name) {
            r.warm = true;
            r.keeper.warm();
            let gpu = self.gpus[r.gpu].index;
            self.record(gpu, name, ModelStep::Loaded, "resident".to_owned());
        }
    }

    /// Its runtime exited (not told to): started again after a pause, or given up.
    pub(super) fn resident_exited(&mut self, name: &ServiceName, why: String) {
        if let Some(r) = self.residents.get_mut(name) {
            r.instance = None;
            r.warm = false;
        }
        self.resident_failed(name, why);
    }

    fn resident_failed(&mut self, name: &ServiceName, why: String) {
        let Some(r) = self.residents.get_mut(name) else {
            return;
        };
        let gpu = self.gpus[r.gpu].index;
        match r.keeper.failed(now()) {
            KeeperVerdict::GiveUp { failures } => {
                self.counters.model_watchdog_resets.inc();
                tracing::error!("ALERT: GPU {gpu}: resident {name} failed {failures} times; reset");
                self.record(
                    gpu,
                    name,
                    ModelStep::WatchdogReset,
                    format!("alert: {failures} failures in a row ({why}); not started again"),
                );
            }
            KeeperVerdict::StartAt(at) => {
                let wait = Duration::from_micros(at.as_micros().saturating_sub(now().as_micros()));
                r.start_at = Some(tokio::time::Instant::now() + wait);
                let attempt = r.keeper.failures();
                self.record(
                    gpu,
                    name,
                    ModelStep::LoadFailed,
                    format!("attempt {attempt}: {why}"),
                );
            }
        }
    }

    /// A request for a resident model: straight to its runtime when warm.
    pub(super) fn ask_resident(&mut self, name: &ServiceName, reply: oneshot::Sender<Decision>) {
        let Some(r) = self.residents.get(name) else {
            return;
        };
        let decision = if r.warm {
            // Outside the scheduler: no slot to give back.
            Decision::Route {
                port: r.port,
                finish: None,
                cut: None,
            }
        } else if r.start_at.is_none() && r.instance.is_none() {
            Decision::Refuse {
                too_many: false,
                retry_after_ms: 0,
                reason: "the model's runtime failed to start".to_owned(),
            }
        } else {
            Decision::Refuse {
                too_many: false,
                retry_after_ms: 1000,
                reason: format!("{name} is loading"),
            }
        };
        let _ = reply.send(decision);
    }
}
