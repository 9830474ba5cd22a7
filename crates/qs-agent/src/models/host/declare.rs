//! What the models KV says, carried into the host: each model checked as it is read
//! (`decode_model`), declared on the GPU and at the tier the core's strategy picks (a
//! resident one in a margin, a shared one only routed to), withdrawn when deleted, and those
//! a re-watch no longer shows withdrawn at its `Synced`.

use super::{Assigned, Host, profile};
use crate::clock::now;
use crate::models::MAX_MODELS;
use crate::names::MODELS_BUCKET;
use qs_core::gpu::GpuSlot;
use qs_fabric::{Fabric, KvEvent};
use qs_wire::{Authority, Event, ModelSpec, ServiceName};

impl<F: Fabric> Host<F> {
    pub(super) async fn on_kv(&mut self, ev: KvEvent) {
        match ev {
            KvEvent::Put(entry) => {
                if let Some(seen) = &mut self.replayed {
                    seen.insert(entry.key.clone());
                }
                let source = format!("kv {MODELS_BUCKET}/{}", entry.key);
                match qs_wire::decode_model(&source, &entry.key, &entry.value) {
                    Ok(spec) => self.declare(spec),
                    Err(e) => {
                        tracing::warn!("refused a model: {e}");
                        self.counters.specs_refused.inc();
                        let mut key = entry.key.clone();
                        key.truncate(qs_wire::spec::MAX_LABEL_BYTES);
                        self.append(vec![Event::ModelRefused {
                            key,
                            field: e.field,
                            reason: e.message,
                        }])
                        .await;
                    }
                }
            }
            KvEvent::Delete { key, .. } => {
                if let Ok(name) = ServiceName::new(&key) {
                    self.withdraw(&name);
                }
            }
            // A (re)watch replayed the bucket: a model it did not show was deleted while
            // the watch was down.
            KvEvent::Synced => {
                if let Some(seen) = self.replayed.take() {
                    let gone: Vec<ServiceName> = self
                        .models
                        .keys()
                        .chain(self.residents.keys())
                        .chain(self.shared_models.keys())
                        .chain(self.unfit.keys())
                        .filter(|m| !seen.contains(m.as_str()))
                        .cloned()
                        .collect();
                    for m in gone {
                        self.withdraw(&m);
                    }
                }
            }
        }
    }

    /// Takes a model (or its changed spec): the GPU and the largest tier that fits there.
    pub(super) fn declare(&mut self, spec: ModelSpec) {
        let name = spec.name.clone();
        if spec.resident {
            if let Some(a) = self.models.remove(&name) {
                self.gpus[a.gpu].scheduler.withdraw(&name, now());
            }
            self.shared_models.remove(&name);
            return self.declare_resident(spec);
        }
        self.withdraw_resident(&name);
        if spec.authority == Authority::Shared {
            self.withdraw(&name);
            self.shared_models.insert(name, spec);
            return;
        }
        self.shared_models.remove(&name);
        let placed = match self.models.get(&name) {
            Some(a) => Some(a.gpu),
            None if self.models.len() >= MAX_MODELS => {
                tracing::warn!("model {name} not taken: this node has {MAX_MODELS} already");
                return;
            }
            None => None,
        };
        // One whose runtime runs keeps its GPU and size: a spec re-read or changed does not
        // resize (or reload) a runtime that is there, nor hold it to another quota.
        if let Some(a) = self.models.get(&name)
            && self.gpus[a.gpu].scheduler.phase(&name).is_some()
            && spec
                .tiers
                .get(a.tier)
                .is_some_and(|t| t.vram_bytes == a.spec.tiers[a.tier].vram_bytes)
        {
            let (gpu, tier) = (a.gpu, a.tier);
            self.gpus[gpu].scheduler.declare(profile(&spec, tier));
            self.models.insert(name, Assigned { spec, gpu, tier });
            return;
        }
        // The strategy's choice among the GPUs; one already placed stays on its GPU (its
        // runtime may be warm there), at the tier the strategy takes for it there.
        let tiers: Vec<u64> = spec.tiers.iter().map(|t| t.vram_bytes).collect();
        let candidates: Vec<usize> = match placed {
            Some(gpu) => vec![gpu],
            None => (0..self.gpus.len()).collect(),
        };
        let slots: Vec<GpuSlot> = candidates.iter().map(|&i| self.slot(i, &name)).collect();
        let choice = self
            .strategy
            .place(&tiers, &slots)
            .map(|p| (candidates[p.gpu], p.tier));
        let Some((gpu, tier)) = choice else {
            let smallest = spec.tiers.last().expect("a model has a tier");
            let most = self
                .gpus
                .iter()
                .map(|g| g.scheduler.budget_bytes())
                .max()
                .unwrap_or(0);
            let why = format!(
                "model {name} needs {} MiB at its smallest tier ({}); the GPUs of node {} hold at \
                 most {} MiB beside their reserved margin",
                smallest.vram_bytes >> 20,
                smallest.name,
                self.node,
                most >> 20
            );
            tracing::warn!("{why}");
            self.withdraw(&name);
            self.unfit.insert(name, (spec, why));
            return;
        };
        self.unfit.remove(&name);
        self.gpus[gpu].scheduler.declare(profile(&spec, tier));
        self.models
            .insert(name.clone(), Assigned { spec, gpu, tier });
        if let Some(class) = self.resume.remove(&name) {
            self.resume_stasis(gpu, name, class);
        }
    }

    /// GPU `i` as the strategy sees it, `model` aside.
    fn slot(&self, i: usize, model: &ServiceName) -> GpuSlot {
        let on_it = self
            .models
            .iter()
            .filter(|(n, a)| a.gpu == i && *n != model);
        let energy = self.gpus[i].reader.energy();
        GpuSlot {
            budget_bytes: self.gpus[i].scheduler.budget_bytes(),
            placed_bytes: on_it.clone().map(|(_, a)| a.spec.tiers[0].vram_bytes).sum(),
            placed: on_it.count(),
            power_watts: energy.power_watts,
            power_limit_watts: energy.power_limit_watts,
            temperature_c: energy.temperature_c,
        }
    }

    pub(super) fn withdraw(&mut self, name: &ServiceName) {
        self.alerts.remove(name);
        self.unfit.remove(name);
        self.shared_models.remove(name);
        self.withdraw_resident(name);
        if let Some(a) = self.models.remove(name) {
            self.gpus[a.gpu].scheduler.withdraw(name, now());
        }
    }
}
