//! The waiting requests of one model (live stasis), by class, with the sums a policy's
//! urgency needs in O(1); and the arrival-rate estimate.

use super::{Class, RequestId, Waiting};
use crate::Time;
use std::collections::VecDeque;

/// Weight of a waiting millisecond by class, in the urgency a policy weighs.
pub const fn class_weight(class: Class) -> f64 {
    match class {
        Class::Interactive => 1.0,
        Class::Batch => 0.25,
        Class::Ingestion => 0.1,
    }
}

/// A batch or ingestion request this old goes before younger ones of the other of the two
/// (never before an interactive one): aging, so neither starves.
pub(super) const AGING_MS: u64 = 30_000;
/// Time constant of the arrival-rate estimate.
pub(super) const RATE_TAU_MS: f64 = 60_000.0;

pub(super) const CLASSES: [Class; 3] = [Class::Interactive, Class::Batch, Class::Ingestion];

pub(super) fn class_index(c: Class) -> usize {
    match c {
        Class::Interactive => 0,
        Class::Batch => 1,
        Class::Ingestion => 2,
    }
}

/// The waiting requests of one model, by class, with sums for urgency in O(1).
#[derive(Clone, Debug, Default)]
pub(super) struct Queue {
    pub(super) by_class: [VecDeque<Waiting>; 3],
    pub(super) arrived_sum_us: [u128; 3],
}

impl Queue {
    pub(super) fn len(&self) -> usize {
        self.by_class.iter().map(VecDeque::len).sum()
    }

    pub(super) fn push(&mut self, w: Waiting) {
        let i = class_index(w.request.class);
        self.arrived_sum_us[i] += u128::from(w.arrived.as_micros());
        self.by_class[i].push_back(w);
    }

    /// The next to serve: interactive first; then the older of batch and ingestion once it
    /// is past [`AGING_MS`], else batch.
    pub(super) fn next_index(&self, now: Time) -> Option<usize> {
        if !self.by_class[0].is_empty() {
            return Some(0);
        }
        let aged = |i: usize| {
            self.by_class[i]
                .front()
                .is_some_and(|w| now.since(w.arrived).as_millis() as u64 >= AGING_MS)
        };
        match (self.by_class[1].front(), self.by_class[2].front()) {
            (Some(b), Some(g)) if aged(2) && g.order < b.order => Some(2),
            (Some(_), _) => Some(1),
            (None, Some(_)) => Some(2),
            (None, None) => None,
        }
    }

    /// The class whose head arrived first (strict arrival order).
    pub(super) fn oldest_index(&self) -> Option<usize> {
        (0..3)
            .filter_map(|i| self.by_class[i].front().map(|w| (w.order, i)))
            .min()
            .map(|(_, i)| i)
    }

    /// Takes out the youngest request of class `i`.
    pub(super) fn pop_youngest(&mut self, i: usize) -> Option<Waiting> {
        let w = self.by_class[i].pop_back()?;
        self.arrived_sum_us[i] -= u128::from(w.arrived.as_micros());
        Some(w)
    }

    pub(super) fn pop(&mut self, i: usize) -> Option<Waiting> {
        let w = self.by_class[i].pop_front()?;
        self.arrived_sum_us[i] -= u128::from(w.arrived.as_micros());
        Some(w)
    }

    /// Takes request `id` out, wherever it waits (O(n): its client went away).
    pub(super) fn remove(&mut self, id: RequestId) -> Option<Waiting> {
        for i in 0..3 {
            if let Some(at) = self.by_class[i].iter().position(|w| w.request.id == id) {
                let w = self.by_class[i].remove(at)?;
                self.arrived_sum_us[i] -= u128::from(w.arrived.as_micros());
                return Some(w);
            }
        }
        None
    }

    /// Whether a local (not leased) interactive request waits here.
    pub(super) fn has_local_interactive(&self) -> bool {
        self.by_class[0].iter().any(|w| w.request.lease.is_none())
    }

    /// Whether every request waiting here is leased (placed by another node).
    pub(super) fn all_leased(&self) -> bool {
        self.by_class
            .iter()
            .all(|q| q.iter().all(|w| w.request.lease.is_some()))
    }

    pub(super) fn oldest(&self) -> Option<&Waiting> {
        self.by_class
            .iter()
            .filter_map(VecDeque::front)
            .min_by_key(|w| w.order)
    }

    /// Σ weight × waited ms over the queue.
    pub(super) fn urgency_ms(&self, now: Time) -> f64 {
        let now_us = u128::from(now.as_micros());
        CLASSES
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let n = self.by_class[i].len() as u128;
                let waited_us = (n * now_us).saturating_sub(self.arrived_sum_us[i]);
                class_weight(*c) * waited_us as f64 / 1000.0
            })
            .sum()
    }

    /// How many wait that arrived before `order` (each class is in arrival order).
    pub(super) fn count_before(&self, order: u64) -> usize {
        self.by_class
            .iter()
            .map(|q| q.partition_point(|w| w.order < order))
            .sum()
    }
}

/// Arrivals per millisecond, decayed over [`RATE_TAU_MS`].
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Rate {
    decayed: f64,
    at: Option<Time>,
}

impl Rate {
    pub(super) fn decay_to(&self, now: Time) -> f64 {
        match self.at {
            Some(at) => {
                let dt = now.since(at).as_secs_f64() * 1000.0;
                self.decayed * (-dt / RATE_TAU_MS).exp()
            }
            None => 0.0,
        }
    }

    pub(super) fn arrive(&mut self, now: Time) {
        self.decayed = self.decay_to(now) + 1.0;
        self.at = Some(now);
    }

    pub(super) fn per_ms(&self, now: Time) -> f64 {
        self.decay_to(now) / RATE_TAU_MS
    }
}
