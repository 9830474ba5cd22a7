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
                    .and_then(|a| a.spec_tier(tier))
                    .map_or_else(|| format!("#{tier}"), |(_, t)| t.name.clone());
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

    /// A model's view at `tier`, in `state`: on no GPU, with nothing in flight or waiting and
    /// its last alert, until told otherwise.
    fn view(
        &self,
        name: &ServiceName,
        tier: &qs_wire::ModelTier,
        state: &'static str,
    ) -> ModelView {
        ModelView {
            name: name.clone(),
            node: self.node.clone(),
            gpu: None,
            tier: tier.name.clone(),
            vram_bytes: tier.vram_bytes,
            state,
            url: None,
            resident: false,
            in_flight: 0,
            waiting: 0,
            alert: self.alerts.get(name).cloned(),
        }
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
            let mut v = self.view(name, &a.spec.tiers[a.tier], state);
            // The tier its runtime runs, or the one it was placed at.
            if let Some(p) = self
                .processes
                .values()
                .find(|p| &p.model == name && !p.resident && !p.stopping)
            {
                v.tier = p.tier_name.clone();
                v.vram_bytes = p.vram_bytes;
            }
            let seen = g.scheduler.view();
            v.gpu = Some(g.index);
            v.in_flight = seen.in_flight(name);
            v.waiting = seen.waiting(name);
            views.insert(name.clone(), v);
        }
        for (name, r) in &self.residents {
            let state = if r.warm {
                "warm"
            } else if r.instance.is_none() && r.start_at.is_none() {
                "failed"
            } else {
                "loading"
            };
            let v = ModelView {
                gpu: Some(self.gpus[r.gpu].index),
                resident: true,
                ..self.view(name, &r.spec.tiers[r.tier], state)
            };
            views.insert(name.clone(), v);
        }
        for (name, (spec, why)) in &self.unfit {
            let smallest = spec.tiers.last().expect("a model has a tier");
            let v = ModelView {
                alert: Some(why.clone()),
                ..self.view(name, smallest, crate::models::proxy::UNFIT)
            };
            views.insert(name.clone(), v);
        }
        for (name, spec) in &self.shared_models {
            let v = ModelView {
                url: spec.url.clone(),
                alert: None,
                ..self.view(name, &spec.tiers[0], "shared")
            };
            views.insert(name.clone(), v);
        }
        *self.views.write().unwrap_or_else(|p| p.into_inner()) = views;
    }
}
