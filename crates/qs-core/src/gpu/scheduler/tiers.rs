//! Tiering (seed 003's fluid tiers), the moves the policy does not make:
//! - **Down:** a model the GPU cannot hold at its largest tier beside the runtimes resident
//!   there, which the policy does not make room for now (they are busy, or worth keeping),
//!   starts at once at its largest smaller tier that fits beside them: no swap, no wait.
//!   ([`crate::gpu::state::State::fit_for`] takes a smaller tier too when what stands in
//!   the way is busy.)
//! - **Up:** a runtime below its largest tier moves up to the largest that fits once room
//!   returns: what no runtime holds, and what runtimes idle for `idle_room_ms` hold (they
//!   go). It moves at its first lull (nothing in flight, waiting or owed) and only while no
//!   other model waits to come in, so no generation is cut and no swap another model needs
//!   is delayed; the move is a transition like any other (drain, stop, the VRAM seen free,
//!   start at the larger tier, warm), and the requests that come meanwhile wait for it.

use super::{GpuScheduler, Transition};
use crate::Time;
use crate::gpu::state::{Fit, Phase, Resident};
use crate::gpu::{GpuEvent, GpuOutput, ModelName};
use std::collections::BTreeSet;

impl GpuScheduler {
    /// Starts a wanted model that the policy left waiting at a smaller tier that fits beside
    /// what is resident, if it has one.
    pub(super) fn tier_down(&mut self, now: Time) {
        if self.transition.is_some() {
            return;
        }
        let s = &self.state;
        let down = s
            .queues
            .iter()
            .filter(|(m, q)| q.len() > 0 && !s.resident.contains_key(*m))
            .filter_map(|(m, q)| Some((q.oldest()?.order, m)))
            .min_by_key(|(order, _)| *order)
            .and_then(|(_, m)| Some((m.clone(), s.fit_beside(m)?)))
            .filter(|(_, fit)| fit.tier > 0);
        if let Some((model, fit)) = down {
            self.begin_at(model, fit, now, self.state.config.drain_timeout_ms);
        }
    }

    /// Begins moving one runtime up a tier, if one may.
    pub(super) fn move_up(&mut self, now: Time) {
        if self.transition.is_some() {
            return;
        }
        let s = &self.state;
        if s.queues.keys().any(|m| !s.resident.contains_key(m)) {
            return;
        }
        let up = s.resident.iter().find_map(|(m, r)| {
            // Its lull has lasted a load time: a reload is worth it, and a pause between
            // two requests is no lull.
            if !self.below_largest_and_idle(m, r) || now < self.lull_ends(m, r) {
                return None;
            }
            // Room: what no runtime holds, and what runtimes idle long enough hold.
            let idle_room =
                |o: &ModelName, x: &Resident| self.idle(o, x) && now >= self.room_from(x);
            let tiers = &s.profiles.get(m)?.tiers_vram_bytes;
            let fit = tiers
                .iter()
                .take(r.tier)
                .enumerate()
                .find_map(|(tier, &need)| {
                    let mut evict = s.room_for(m, need, &idle_room)?;
                    evict.insert(0, m.clone());
                    Some(Fit {
                        tier,
                        vram_bytes: need,
                        evict,
                    })
                })?;
            Some((m.clone(), fit, (r.tier, r.vram_bytes)))
        });
        if let Some((model, fit, ran_at)) = up {
            self.begin_at(model, fit, now, self.state.config.drain_timeout_ms);
            if let Some(t) = self.transition.as_mut() {
                t.fallback = Some(ran_at);
            }
        }
    }

    /// Warm with nothing in flight, waiting or owed.
    fn idle(&self, m: &ModelName, r: &Resident) -> bool {
        r.phase == Phase::Warm && !self.state.busy(m, r)
    }

    /// Idle, below its largest tier, and free to move up.
    fn below_largest_and_idle(&self, m: &ModelName, r: &Resident) -> bool {
        r.tier > 0 && self.idle(m, r) && !self.withdrawn.contains(m) && !self.no_move_up.contains(m)
    }

    /// When the lull of `m` has lasted its learned load time.
    fn lull_ends(&self, m: &ModelName, r: &Resident) -> Time {
        r.last_used + crate::time::ms(self.state.load_ms_of(m))
    }

    /// When an idle runtime becomes room for another to move up.
    fn room_from(&self, r: &Resident) -> Time {
        r.last_used + crate::time::ms(self.state.config.idle_room_ms)
    }

    /// Begins the transition to `to` at `fit`'s tier, draining what must go (`to` itself
    /// among them when it moves up) within `drain_ms`; with nothing to go, it starts now.
    pub(super) fn begin_at(&mut self, to: ModelName, fit: Fit, now: Time, drain_ms: u64) {
        let committed = self.state.queues.get(&to).map_or(0, |q| q.len());
        self.out.push_back(GpuOutput::Event(GpuEvent::SwapBegun {
            to: to.clone(),
            tier: fit.tier,
            evict: fit.evict.clone(),
            committed,
        }));
        if fit.evict.is_empty() {
            // It fits beside what is resident: no stop, nothing to wait for.
            self.start(to, fit.tier, fit.vram_bytes, now);
            return;
        }
        let deadline = now + crate::time::ms(drain_ms);
        for m in &fit.evict {
            if let Some(r) = self.state.resident.get_mut(m)
                && matches!(r.phase, Phase::Warm)
            {
                r.phase = Phase::Draining {
                    since: now,
                    deadline,
                };
            }
        }
        self.transition = Some(Transition {
            to,
            tier: fit.tier,
            vram_bytes: fit.vram_bytes,
            evict: fit.evict.into_iter().collect::<BTreeSet<_>>(),
            committed_before: self.next_order,
            releasing_since: None,
            fallback: None,
        });
    }

    /// When, after `after`, a runtime below its largest tier may next move up: when its own
    /// lull has lasted a load time, or when a runtime idle beside it becomes room.
    pub(super) fn next_move_up(&self, after: Time) -> Option<Time> {
        let s = &self.state;
        let lulls: Vec<Time> = s
            .resident
            .iter()
            .filter(|(m, r)| self.below_largest_and_idle(m, r))
            .map(|(m, r)| self.lull_ends(m, r))
            .collect();
        if lulls.is_empty() {
            return None;
        }
        let rooms = s
            .resident
            .iter()
            .filter(|(m, r)| self.idle(m, r))
            .map(|(_, r)| self.room_from(r));
        lulls.into_iter().chain(rooms).filter(|t| *t > after).min()
    }

    /// The tier `model`'s runtime runs at, if it has one.
    #[cfg(test)]
    pub(crate) fn tier(&self, model: &ModelName) -> Option<usize> {
        self.state.resident.get(model).map(|r| r.tier)
    }
}
