//! What a [`super::SwapPolicy`] sees of a [`GpuScheduler`]: residents, queues, urgency,
//! learned load times and arrival rates, read-only.

use super::queue::{CLASSES, Queue, class_weight};
use super::state::{Phase, State};
use super::{Class, ModelName, ModelProfile, Waiting};
use crate::Time;

/// What a policy sees of the scheduler.
pub struct View<'a> {
    pub(super) s: &'a State,
    pub now: Time,
}

impl View<'_> {
    /// Models with a runtime on the GPU (loading, warm, draining or stopping).
    pub fn resident(&self) -> impl Iterator<Item = &ModelName> {
        self.s.resident.keys()
    }

    pub fn is_resident(&self, m: &ModelName) -> bool {
        self.s.resident.contains_key(m)
    }

    /// Warm and not being drained: routable.
    pub fn is_serving(&self, m: &ModelName) -> bool {
        self.s
            .resident
            .get(m)
            .is_some_and(|r| r.phase == Phase::Warm)
    }

    pub fn in_flight(&self, m: &ModelName) -> usize {
        self.s.resident.get(m).map_or(0, |r| r.in_flight.len())
    }

    /// Committed requests the runtime has still to take.
    pub fn committed_left(&self, m: &ModelName) -> usize {
        self.s.committed_left(m)
    }

    /// Seconds' worth of prefill the runtime's requests in flight would need again.
    pub fn reprocess_ms(&self, m: &ModelName) -> f64 {
        let tokens = self.s.resident.get(m).map_or(0, |r| r.in_flight_tokens);
        tokens as f64 * 1000.0 / self.s.config.prefill_tokens_per_s.max(1) as f64
    }

    pub fn waiting(&self, m: &ModelName) -> usize {
        self.s.queues.get(m).map_or(0, Queue::len)
    }

    /// Σ class weight × waited ms over the model's waiting requests.
    pub fn urgency_ms(&self, m: &ModelName) -> f64 {
        self.s.queues.get(m).map_or(0.0, |q| q.urgency_ms(self.now))
    }

    /// Its waiting request that arrived first, over every class.
    pub fn oldest_waiting(&self, m: &ModelName) -> Option<&Waiting> {
        self.s.queues.get(m).and_then(Queue::oldest)
    }

    /// The waiting request that arrived first, over every model.
    pub fn head(&self) -> Option<&Waiting> {
        self.s
            .queues
            .values()
            .filter_map(Queue::oldest)
            .min_by_key(|w| w.order)
    }

    /// Models with waiting requests.
    pub fn wanted(&self) -> impl Iterator<Item = &ModelName> {
        self.s
            .queues
            .iter()
            .filter(|(_, q)| q.len() > 0)
            .map(|(m, _)| m)
    }

    /// The learned load time.
    pub fn load_ms(&self, m: &ModelName) -> f64 {
        self.s.load_ms.get(m).copied().unwrap_or(0.0)
    }

    /// Arrivals per millisecond lately.
    pub fn rate_per_ms(&self, m: &ModelName) -> f64 {
        self.s.rates.get(m).map_or(0.0, |r| r.per_ms(self.now))
    }

    /// The heaviest class among the model's waiting requests, if any wait.
    fn heaviest_waiting(&self, m: &ModelName) -> Option<Class> {
        let q = self.s.queues.get(m)?;
        CLASSES
            .iter()
            .enumerate()
            .find(|(i, _)| !q.by_class[*i].is_empty())
            .map(|(_, c)| *c)
    }

    /// The weight of the heaviest class among the model's waiting requests, if any wait.
    pub fn waiting_weight(&self, m: &ModelName) -> Option<f64> {
        self.heaviest_waiting(m).map(class_weight)
    }

    pub fn weight(&self, m: &ModelName) -> f64 {
        let waiting = self.heaviest_waiting(m);
        let last = self.s.last_class.get(m).copied();
        let heaviest = match (waiting, last) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(Class::Batch),
        };
        class_weight(heaviest)
    }

    pub fn profile(&self, m: &ModelName) -> Option<&ModelProfile> {
        self.s.profiles.get(m)
    }

    /// The runtimes that would have to go for `m` to fit (least recently used first), at
    /// the tier it would take ([`State::fit_for`]), or `None` when it cannot fit even alone,
    /// or only by stopping a runtime still loading.
    pub fn evictions_for(&self, m: &ModelName) -> Option<Vec<ModelName>> {
        self.s.fit_for(m).map(|f| f.evict)
    }
}
