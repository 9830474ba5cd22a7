//! The watchdog's load bound: a runtime still loading past `load_bound_factor` times its
//! learned load time (and at least `min_load_bound_ms`) is a failed start. It is killed at
//! once, counted towards the watchdog's reset, and started again only once the VRAM it held
//! is seen free, like any failed start.

use super::GpuScheduler;
use crate::Time;
use crate::gpu::state::Phase;
use crate::gpu::{GpuEvent, GpuOutput, ModelName};

impl GpuScheduler {
    /// How long `m` may load.
    fn model_load_bound_ms(&self, m: &ModelName) -> u64 {
        self.state.config.load_bound_ms(self.state.load_ms_of(m))
    }

    /// When the earliest load in progress passes its bound.
    pub(super) fn next_load_bound(&self) -> Option<Time> {
        self.state
            .resident
            .iter()
            .filter_map(|(m, r)| match r.phase {
                Phase::Loading { since } => {
                    Some(since + crate::time::ms(self.model_load_bound_ms(m)))
                }
                _ => None,
            })
            .min()
    }

    /// Fails the loads past their bound.
    pub(super) fn overdue_loads(&mut self, now: Time) {
        let overdue: Vec<(ModelName, u64)> = self
            .state
            .resident
            .iter()
            .filter_map(|(m, r)| match r.phase {
                Phase::Loading { since } => {
                    let bound_ms = self.model_load_bound_ms(m);
                    (now >= since + crate::time::ms(bound_ms)).then(|| (m.clone(), bound_ms))
                }
                _ => None,
            })
            .collect();
        for (model, bound_ms) in overdue {
            self.out.push_back(GpuOutput::Event(GpuEvent::LoadTimedOut {
                model: model.clone(),
                bound_ms,
            }));
            self.out.push_back(GpuOutput::Stop {
                model: model.clone(),
                kill: true,
            });
            self.load_failed(model, now);
        }
    }
}
