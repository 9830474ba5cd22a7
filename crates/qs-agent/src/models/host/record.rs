//! What a model host writes down: the scheduler's events and its own as ledger records
//! (and counters, and an alert for a watchdog reset), and the views `/v1/models` shows.

use super::Host;
use crate::clock::now;
use crate::models::ModelView;
use qs_core::gpu::{GpuEvent, Phase};
use qs_fabric::Fabric;
use qs_wire::{Event, ModelStep, ServiceName};
use std::collections::BTreeMap;

impl<F: Fabric> Host<F> {
    /// A scheduler's event as a ledger record (and counted); `None` for one whose record is
    /// the next event's (a load past its bound is the reason of the failed start after it).
    pub(super) fn event(&mut self, gpu: usize, e: GpuEvent) -> Option<Event> {
        let c = &self.counters;
        let (model, step, took_ms, detail) = match e {
            GpuEvent::SwapBegun {
                to,
                tier,
                evict,
                committed,
            } => {
                if !evict.is_empty() {
                    c.model_swaps.inc();
                }
                let tiering = if evict.contains(&to) {
                    c.model_tier_changes.inc();
                    "; up a tier, room returned"
                } else if tier > 0 {
                    c.model_tier_changes.inc();
                    "; a smaller tier, to fit beside the busy runtimes"
                } else {
                    ""
                };
                let tier_name = self
                    .models
                    .get(&to)
                    .and_then(|a| a.spec.tiers.get(a.tier + tier))
                    .map_or_else(|| format!("#{tier}"), |t| t.name.clone());
                let evict: Vec<&str> = evict.iter().map(|m| m.as_str()).collect();
                let detail = format!(
                    "tier {tier_name}{tiering}; evicts [{}]; {committed} request(s) waiting for it",
                    evict.join(", ")
                );
                (to, ModelStep::SwapBegun, 0, detail)
            }
            GpuEvent::Drained {
                model,
                took_ms,
                cut,
            } => (
                model,
                ModelStep::Drained,
                took_ms,
                format!("{cut} request(s) cut"),
            ),
            GpuEvent::Stopped { model } => (model, ModelStep::Stopped, 0, String::new()),
            GpuEvent::StopOverdue { model } => (
                model,
                ModelStep::StopOverdue,
                0,
                "killed: it outlived its stop".to_owned(),
            ),
            GpuEvent::VramReleased {
                to,
                free_bytes,
                took_ms,
            } => (
                to,
                ModelStep::VramReleased,
                took_ms,
                format!("{free_bytes} bytes free"),
            ),
            GpuEvent::VramNotReleased {
                to,
                free_bytes,
                waited_ms,
            } => (
                to,
                ModelStep::LoadFailed,
                waited_ms,
                format!("alert: its VRAM was not released ({free_bytes} bytes free); not started"),
            ),
            GpuEvent::Loaded { model, took_ms } => {
                c.model_loads.inc();
                (model, ModelStep::Loaded, took_ms, String::new())
            }
            GpuEvent::LoadTimedOut { model, bound_ms } => {
                let why = format!("the load outlasted its bound of {bound_ms} ms");
                self.failures.insert(model, why);
                return None;
            }
            GpuEvent::LoadFailed { model, attempt } => {
                let why = self.failures.remove(&model).unwrap_or_default();
                let detail = format!("attempt {attempt}: {why}");
                (model, ModelStep::LoadFailed, 0, detail)
            }
            GpuEvent::WatchdogReset { model, attempts } => {
                c.model_watchdog_resets.inc();
                tracing::error!(
                    "ALERT: GPU {}: {model} failed {attempts} starts; reset",
                    self.gpus[gpu].index
                );
                (
                    model,
                    ModelStep::WatchdogReset,
                    0,
                    format!("alert: {attempts} failed starts; its waiting requests are refused"),
                )
            }
            GpuEvent::StasisRecorded {
                model,
                class,
                waiting,
            } => (
                model,
                ModelStep::Stasis,
                0,
                format!("{}: {waiting} request(s) waiting", class.name()),
            ),
            GpuEvent::StasisEnded { model } => (model, ModelStep::StasisEnded, 0, String::new()),
            GpuEvent::LeaseRevoked { model, by } => (
                model,
                ModelStep::LeaseRevoked,
                0,
                format!("taken back for local interactive use of {by}"),
            ),
        };
        Some(Event::ModelRuntime {
            gpu: self.gpus[gpu].index,
            model,
            step,
            took_ms,
            detail,
        })
    }

    /// A step the host itself saw (a start), for the ledger in its place among the
    /// scheduler's.
    pub(super) fn record(
        &mut self,
        gpu: u32,
        model: &ServiceName,
        step: ModelStep,
        detail: String,
    ) {
        self.events.push(Event::ModelRuntime {
            gpu,
            model: model.clone(),
            step,
            took_ms: 0,
            detail,
        });
    }

    /// Keeps each model's last alert (a step whose detail begins `alert:`) until it loads
    /// again.
    pub(super) fn note_alerts(&mut self, events: &[Event]) {
        for e in events {
            if let Event::ModelRuntime {
                model,
                step,
                detail,
                ..
            } = e
            {
                if detail.starts_with("alert:") {
                    self.alerts.insert(model.clone(), detail.clone());
                } else if *step == ModelStep::Loaded {
                    self.alerts.remove(model);
                }
            }
        }
    }

    pub(super) async fn append(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        self.counters.ledger_events.inc_by(events.len() as u64);
        self.journal
            .append(&self.node, now().as_micros(), events)
            .await;
    }

    pub(super) fn publish_views(&self) {
        let mut views = BTreeMap::new();
        for (name, a) in &self.models {
            let g = &self.gpus[a.gpu];
            let state = match g.scheduler.phase(name) {
                None => "absent",
                Some(Phase::Loading { .. }) => "loading",
                Some(Phase::Warm) => "warm",
                Some(Phase::Draining { .. }) => "draining",
                Some(Phase::Stopping { .. }) => "stopping",
            };
            // The tier its runtime runs, or the one it was placed at.
            let running = self
                .processes
                .values()
                .find(|p| &p.model == name && !p.resident && !p.stopping);
            let (tier, vram_bytes) = match running {
                Some(p) => (p.tier_name.clone(), p.vram_bytes),
                None => {
                    let t = &a.spec.tiers[a.tier];
                    (t.name.clone(), t.vram_bytes)
                }
            };
            views.insert(
                name.clone(),
                ModelView {
                    name: name.clone(),
                    node: self.node.clone(),
                    gpu: Some(g.index),
                    tier,
                    vram_bytes,
                    state,
                    url: None,
                    resident: false,
                    in_flight: g.scheduler.in_flight(name),
                    waiting: g.scheduler.waiting_for(name),
                    alert: self.alerts.get(name).cloned(),
                },
            );
        }
        for (name, r) in &self.residents {
            let tier = &r.spec.tiers[r.tier];
            let state = if r.warm {
                "warm"
            } else if r.instance.is_none() && r.start_at.is_none() {
                "failed"
            } else {
                "loading"
            };
            views.insert(
                name.clone(),
                ModelView {
                    name: name.clone(),
                    node: self.node.clone(),
                    gpu: Some(self.gpus[r.gpu].index),
                    tier: tier.name.clone(),
                    vram_bytes: tier.vram_bytes,
                    state,
                    url: None,
                    resident: true,
                    in_flight: 0,
                    waiting: 0,
                    alert: self.alerts.get(name).cloned(),
                },
            );
        }
        for (name, (spec, why)) in &self.unfit {
            let smallest = spec.tiers.last().expect("a model has a tier");
            views.insert(
                name.clone(),
                ModelView {
                    name: name.clone(),
                    node: self.node.clone(),
                    gpu: None,
                    tier: smallest.name.clone(),
                    vram_bytes: smallest.vram_bytes,
                    state: crate::models::proxy::UNFIT,
                    url: None,
                    resident: false,
                    in_flight: 0,
                    waiting: 0,
                    alert: Some(why.clone()),
                },
            );
        }
        for (name, spec) in &self.shared_models {
            views.insert(
                name.clone(),
                ModelView {
                    name: name.clone(),
                    node: self.node.clone(),
                    gpu: None,
                    tier: spec.tiers[0].name.clone(),
                    vram_bytes: spec.tiers[0].vram_bytes,
                    state: "shared",
                    url: spec.url.clone(),
                    resident: false,
                    in_flight: 0,
                    waiting: 0,
                    alert: None,
                },
            );
        }
        *self.views.write().unwrap_or_else(|p| p.into_inner()) = views;
    }
}
