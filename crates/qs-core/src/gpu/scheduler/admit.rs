//! A request's admission: refused at once when no model of its name is declared here or
//! none of its tiers fits the GPU beside the margin; else it waits (live stasis), within
//! bounds: `max_waiting` in all, `max_waiting_by_class` for its class, a full stasis giving
//! it the place of the youngest waiting request of a lower class. A local interactive one
//! may revoke the leases in its way.

use super::GpuScheduler;
use crate::Time;
use crate::gpu::state::Phase;
use crate::gpu::{GpuOutput, ModelName, Request, Waiting};

impl GpuScheduler {
    pub(super) fn arrive(&mut self, request: Request, now: Time) {
        let profile = self
            .state
            .profiles
            .get(&request.model)
            .filter(|p| !self.withdrawn.contains(&p.name));
        let Some(profile) = profile else {
            self.out.push_back(GpuOutput::Refuse {
                id: request.id,
                retry_after_ms: 0,
                reason: "no such model on this GPU",
            });
            return;
        };
        if profile.smallest_bytes() > self.budget_bytes() {
            self.out.push_back(GpuOutput::Refuse {
                id: request.id,
                retry_after_ms: 0,
                reason: "the model does not fit on this GPU beside its reserved margin",
            });
            return;
        }
        let free_slot = self.state.resident.get(&request.model).is_some_and(|r| {
            r.phase == Phase::Warm && r.in_flight.len() < profile.discipline.slots() as usize
        });
        let ci = crate::gpu::queue::class_index(request.class);
        let class_waiting: usize = self
            .state
            .queues
            .values()
            .map(|q| q.by_class[ci].len())
            .sum();
        let class_full = class_waiting >= self.state.config.max_waiting_by_class[ci];
        let full = self.waiting >= self.state.config.max_waiting;
        // A full stasis gives a request the place of the youngest of a lower class.
        let shed = full && !class_full && !free_slot && self.shed_below(ci);
        if (class_full || full) && !free_slot && !shed {
            self.out.push_back(GpuOutput::Refuse {
                id: request.id,
                retry_after_ms: self.retry_after_ms(&request.model),
                reason: if class_full {
                    "too many requests of its class waiting"
                } else {
                    "too many requests waiting"
                },
            });
            return;
        }
        self.state
            .rates
            .entry(request.model.clone())
            .or_default()
            .arrive(now);
        self.state
            .last_class
            .insert(request.model.clone(), request.class);
        let local_interactive =
            request.lease.is_none() && request.class == crate::gpu::Class::Interactive;
        let model = request.model.clone();
        let order = self.next_order;
        self.next_order += 1;
        self.waiting += 1;
        self.state
            .queues
            .entry(request.model.clone())
            .or_default()
            .push(Waiting {
                request,
                arrived: now,
                order,
            });
        if local_interactive {
            self.revoke_for(&model, now);
        }
    }

    /// When a request refused for a full stasis may try again: a load time of its model,
    /// and at least a second.
    fn retry_after_ms(&self, model: &ModelName) -> u64 {
        self.state.load_ms_of(model).max(1000)
    }

    /// Refuses the youngest waiting request of the lowest class below class `ci` (with a
    /// retry-after): whether there was one.
    fn shed_below(&mut self, ci: usize) -> bool {
        for lower in (ci + 1..3).rev() {
            let youngest = self
                .state
                .queues
                .iter()
                .filter_map(|(m, q)| q.by_class[lower].back().map(|w| (w.order, m.clone())))
                .max();
            let Some((_, model)) = youngest else {
                continue;
            };
            let Some(w) = self
                .state
                .queues
                .get_mut(&model)
                .and_then(|q| q.pop_youngest(lower))
            else {
                continue;
            };
            self.waiting -= 1;
            if self.state.queues.get(&model).is_some_and(|q| q.len() == 0) {
                self.state.queues.remove(&model);
            }
            self.out.push_back(GpuOutput::Refuse {
                id: w.request.id,
                retry_after_ms: self.retry_after_ms(&model),
                reason: "too many requests waiting: its place went to one of a higher class",
            });
            return true;
        }
        false
    }
}
