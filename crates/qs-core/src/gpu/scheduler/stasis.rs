//! Durable stasis: a wait long enough to outlive the agent is written down. Once a model's
//! oldest waiting request has waited `durable_after_ms`, the scheduler says so (an event for
//! the ledger, with the class it waits in); when nothing waits for it any more, it says that
//! too. An agent that restarts while a stasis stands resumes it: the transition request is
//! raised again (the shell feeds it as a request of that class), so the model it waited for
//! is brought in without a client having to ask again.

use super::GpuScheduler;
use crate::Time;
use crate::gpu::{GpuEvent, GpuInput, GpuOutput, ModelName, Request};

impl GpuScheduler {
    /// A stasis a previous life recorded and did not end, raised again: `request` stands
    /// for it (no client waits on it), and its end is recorded when nothing waits for its
    /// model any more, however soon.
    pub fn resume(&mut self, request: Request, now: Time) {
        let model = request.model.clone();
        self.handle(GpuInput::Arrive(request), now);
        if self.state.queues.contains_key(&model) || self.state.resident.contains_key(&model) {
            self.durable.insert(model);
        }
        self.durable_stasis(now);
    }

    /// Records the stases that became durable and ends those nothing waits in any more.
    pub(super) fn durable_stasis(&mut self, now: Time) {
        let after = crate::time::ms(self.state.config.durable_after_ms);
        for (m, q) in &self.state.queues {
            let Some(oldest) = q.oldest() else {
                continue;
            };
            if self.durable.contains(m) || now.since(oldest.arrived) < after {
                continue;
            }
            self.durable.insert(m.clone());
            self.out
                .push_back(GpuOutput::Event(GpuEvent::StasisRecorded {
                    model: m.clone(),
                    class: oldest.request.class,
                    waiting: q.len(),
                }));
        }
        let ended: Vec<ModelName> = self
            .durable
            .iter()
            .filter(|m| !self.state.queues.contains_key(*m))
            .cloned()
            .collect();
        for m in ended {
            self.durable.remove(&m);
            self.out
                .push_back(GpuOutput::Event(GpuEvent::StasisEnded { model: m }));
        }
    }

    /// When the next stasis turns durable, if one will.
    pub(super) fn next_durable(&self) -> Option<Time> {
        let after = crate::time::ms(self.state.config.durable_after_ms);
        self.state
            .queues
            .iter()
            .filter(|(m, _)| !self.durable.contains(*m))
            .filter_map(|(_, q)| q.oldest().map(|w| w.arrived + after))
            .min()
    }
}
