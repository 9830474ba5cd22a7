//! What a GPU holds and what waits for it: the resident runtimes and their phases, the
//! queues, the learned load times and arrival rates. The [`super::GpuScheduler`] changes it;
//! a policy reads it through [`super::View`].

use super::queue::{Queue, Rate};
use super::{Class, GpuConfig, ModelName, ModelProfile, RequestId};
use crate::Time;
use std::collections::BTreeMap;

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
    /// The tier it was started at (an index into its profile's tiers) and what that holds.
    pub(super) tier: usize,
    pub(super) vram_bytes: u64,
    /// Requests in flight, with their context tokens.
    pub(super) in_flight: BTreeMap<RequestId, u32>,
    pub(super) in_flight_tokens: u64,
    /// Those of `in_flight` that run under another node's lease, with that node.
    pub(super) leased: BTreeMap<RequestId, qs_wire::NodeId>,
    /// Its drain is a lease revoked: what its bound cuts is said to be so.
    pub(super) revoked: bool,
    /// The requests waiting for it that arrived before this place in arrival order were
    /// waiting when it was chosen: it serves them before it may go (commitment). Counted,
    /// not listed, so a transition costs no copy of a long queue.
    pub(super) committed_before: u64,
    pub(super) last_used: Time,
}

impl Resident {
    /// Takes request `id` off it (finished, or cut while it ran), freeing its slot.
    pub(super) fn release(&mut self, id: RequestId) {
        if let Some(tokens) = self.in_flight.remove(&id) {
            self.in_flight_tokens -= u64::from(tokens);
        }
        self.leased.remove(&id);
    }
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

    /// The learned load time of `m` in whole milliseconds (0 before it was declared).
    pub(super) fn load_ms_of(&self, m: &ModelName) -> u64 {
        self.load_ms.get(m).copied().unwrap_or(0.0).max(0.0) as u64
    }

    /// VRAM the resident runtimes hold, each at the tier it was started at.
    pub(super) fn resident_bytes(&self) -> u64 {
        self.resident.values().map(|r| r.vram_bytes).sum()
    }

    /// The requests `m`'s runtime is committed to that still wait (O(log n)).
    pub(super) fn committed_left(&self, m: &ModelName) -> usize {
        match (self.resident.get(m), self.queues.get(m)) {
            (Some(r), Some(q)) => q.count_before(r.committed_before),
            _ => 0,
        }
    }

    /// Whether the runtime of `m` is busy: loading, or serving, holding or owing work.
    /// What is draining or stopping is on its way out already.
    pub(super) fn busy(&self, m: &ModelName, r: &Resident) -> bool {
        match r.phase {
            Phase::Loading { .. } => true,
            Phase::Draining { .. } | Phase::Stopping { .. } => false,
            Phase::Warm => {
                // What it is committed to waits in its queue.
                !r.in_flight.is_empty() || self.queues.get(m).is_some_and(|q| q.len() > 0)
            }
        }
    }

    /// The largest tier of `m` that fits beside every runtime resident now, with nothing
    /// stopped.
    pub(super) fn fit_beside(&self, m: &ModelName) -> Option<Fit> {
        self.largest_fit(m, &|_, _| false)
    }

    /// The largest tier of `m` for which room can be made, evicting only what `may_go`
    /// allows.
    fn largest_fit(
        &self,
        m: &ModelName,
        may_go: &dyn Fn(&ModelName, &Resident) -> bool,
    ) -> Option<Fit> {
        let tiers = &self.profiles.get(m)?.tiers_vram_bytes;
        tiers.iter().enumerate().find_map(|(tier, &need)| {
            self.room_for(m, need, may_go).map(|evict| Fit {
                tier,
                vram_bytes: need,
                evict,
            })
        })
    }

    /// How `m` comes onto the GPU (tiering, seed 003): its largest tier that fits beside the
    /// runtimes busy there, making room only with idle ones; when none does, its largest
    /// tier that fits the GPU at all, making room with whatever must go (the swap a policy
    /// weighs). `None` when no tier fits even alone, or only by stopping a runtime still
    /// loading.
    pub(super) fn fit_for(&self, m: &ModelName) -> Option<Fit> {
        self.largest_fit(m, &|n, r| !self.busy(n, r))
            .or_else(|| self.fit_largest(m))
    }

    /// `m` at its largest tier that fits the GPU at all, making room with whatever must go
    /// but a runtime still loading (a lease's revocation takes the GPU back for it whole).
    pub(super) fn fit_largest(&self, m: &ModelName) -> Option<Fit> {
        let tiers = &self.profiles.get(m)?.tiers_vram_bytes;
        let budget = self.budget_bytes();
        let (tier, &need) = tiers.iter().enumerate().find(|(_, v)| **v <= budget)?;
        let evict = self.room_for(m, need, &|_, r| !matches!(r.phase, Phase::Loading { .. }))?;
        Some(Fit {
            tier,
            vram_bytes: need,
            evict,
        })
    }

    /// Room for `need` beside the runtimes resident (`m`'s own runtime, if it has one,
    /// counted gone: it is what `need` replaces), evicting the least recently used of those
    /// `may_go` allows: what must go, or `None`.
    pub(super) fn room_for(
        &self,
        m: &ModelName,
        need: u64,
        may_go: &dyn Fn(&ModelName, &Resident) -> bool,
    ) -> Option<Vec<ModelName>> {
        let budget = self.budget_bytes();
        let mut by_age: Vec<(&ModelName, &Resident)> =
            self.resident.iter().filter(|(n, _)| *n != m).collect();
        by_age.sort_by_key(|(n, r)| (r.last_used, (*n).clone()));
        let own = self.resident.get(m).map_or(0, |r| r.vram_bytes);
        let mut held = self.resident_bytes() - own;
        let mut evict = Vec::new();
        for (name, r) in by_age {
            if held + need <= budget {
                break;
            }
            if may_go(name, r) {
                held -= r.vram_bytes;
                evict.push(name.clone());
            }
        }
        (held + need <= budget).then_some(evict)
    }
}

/// How a model comes onto the GPU: at which tier, and what must go to make room.
#[derive(Clone, Debug, PartialEq)]
pub struct Fit {
    pub tier: usize,
    pub vram_bytes: u64,
    /// The runtimes drained and stopped first, least recently used first.
    pub evict: Vec<ModelName>,
}
