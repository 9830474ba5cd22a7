//! What a GPU holds and what waits for it: the resident runtimes and their phases, the
//! queues, the learned load times and arrival rates. The [`super::GpuScheduler`] changes it;
//! a policy reads it through [`super::View`].

use super::queue::{Queue, Rate};
use super::{Class, GpuConfig, ModelName, ModelProfile, RequestId};
use crate::Time;
use std::collections::{BTreeMap, BTreeSet};

/// Where a resident runtime is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Started, not yet warm.
    Loading { since: Time },
    /// Serving.
    Warm,
    /// Taking no new request; stopped when nothing is in flight or at `deadline`.
    Draining { since: Time, deadline: Time },
    /// Told to stop; waiting for its exit, told again at `deadline` (the shell kills then).
    Stopping { deadline: Time },
}

/// One resident runtime.
#[derive(Clone, Debug)]
pub(super) struct Resident {
    pub(super) phase: Phase,
    /// Requests in flight, with their context tokens.
    pub(super) in_flight: BTreeMap<RequestId, u32>,
    pub(super) in_flight_tokens: u64,
    /// Those of `in_flight` that run under another node's lease.
    pub(super) leased: BTreeSet<RequestId>,
    /// Requests that were waiting for it when it was chosen and are not routed yet: it
    /// serves them before it may go.
    pub(super) committed: BTreeSet<RequestId>,
    pub(super) last_used: Time,
}

/// The part of the scheduler a policy may read.
pub(super) struct State {
    pub(super) config: GpuConfig,
    pub(super) profiles: BTreeMap<ModelName, ModelProfile>,
    pub(super) load_ms: BTreeMap<ModelName, f64>,
    pub(super) rates: BTreeMap<ModelName, Rate>,
    /// The class of each model's latest request.
    pub(super) last_class: BTreeMap<ModelName, Class>,
    pub(super) resident: BTreeMap<ModelName, Resident>,
    pub(super) queues: BTreeMap<ModelName, Queue>,
}

impl State {
    /// VRAM the runtimes may use: the GPU's less the reserved margin.
    pub(super) fn budget_bytes(&self) -> u64 {
        self.config
            .vram_bytes
            .saturating_sub(self.config.reserved_bytes)
    }

    /// VRAM the resident runtimes hold by their profiles.
    pub(super) fn resident_bytes(&self) -> u64 {
        self.resident
            .keys()
            .filter_map(|m| self.profiles.get(m))
            .map(|p| p.vram_bytes)
            .sum()
    }

    /// The ids of the requests waiting for `m`.
    pub(super) fn waiting_ids(&self, m: &ModelName) -> BTreeSet<RequestId> {
        self.queues
            .get(m)
            .map(|q| q.ids().collect())
            .unwrap_or_default()
    }

    pub(super) fn evictions_for(&self, m: &ModelName) -> Option<Vec<ModelName>> {
        let need = self.profiles.get(m)?.vram_bytes;
        let budget = self.budget_bytes();
        if need > budget {
            return None;
        }
        let mut held = self.resident_bytes();
        let mut by_age: Vec<(&ModelName, &Resident)> =
            self.resident.iter().filter(|(n, _)| *n != m).collect();
        by_age.sort_by_key(|(n, r)| (r.last_used, (*n).clone()));
        let mut evict = Vec::new();
        for (name, r) in by_age {
            if held + need <= budget {
                break;
            }
            if matches!(r.phase, Phase::Loading { .. }) {
                return None;
            }
            held -= self.profiles.get(name).map_or(0, |p| p.vram_bytes);
            evict.push(name.clone());
        }
        (held + need <= budget).then_some(evict)
    }
}
