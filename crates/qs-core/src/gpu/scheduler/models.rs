//! The models a scheduler serves changing under it: declared (or changed), withdrawn, and the
//! part of the reserved margin the resident model holds.

use super::GpuScheduler;
use crate::Time;
use crate::gpu::state::Phase;
use crate::gpu::{GpuOutput, ModelName, ModelProfile};

impl GpuScheduler {
    /// A model is declared, or its spec changed: the profile counts for the next decisions.
    /// A resident runtime of it runs on (a changed option does not reload a model).
    pub fn declare(&mut self, profile: ModelProfile) {
        self.withdrawn.remove(&profile.name);
        self.no_move_up.remove(&profile.name);
        self.state
            .load_ms
            .entry(profile.name.clone())
            .or_insert(profile.load_ms as f64);
        self.state.profiles.insert(profile.name.clone(), profile);
    }

    /// A model is withdrawn: its waiting requests are refused, a warm runtime of it drains
    /// and stops, a loading one stops. Its profile goes once its runtime has exited (what it
    /// holds counts until then).
    pub fn withdraw(&mut self, model: &ModelName, now: Time) {
        if !self.state.profiles.contains_key(model) {
            return;
        }
        self.refuse_waiting(model, "the model was withdrawn");
        if self.transition.as_ref().is_some_and(|t| &t.to == model) {
            self.transition = None;
        }
        let deadline = now + crate::time::ms(self.state.config.drain_timeout_ms);
        match self.state.resident.get_mut(model) {
            None => {
                self.state.profiles.remove(model);
                return;
            }
            Some(r) => match r.phase {
                Phase::Warm => {
                    r.phase = Phase::Draining {
                        since: now,
                        deadline,
                    }
                }
                Phase::Loading { .. } => {
                    r.phase = Phase::Stopping {
                        deadline: now + crate::time::ms(self.state.config.stop_timeout_ms),
                    };
                    self.out.push_back(GpuOutput::Stop {
                        model: model.clone(),
                        kill: false,
                    });
                }
                Phase::Draining { .. } | Phase::Stopping { .. } => {}
            },
        }
        self.withdrawn.insert(model.clone());
        self.step(now);
    }

    /// The resident model holds `bytes` of the reserved margin (at most all of it): VRAM
    /// readings leave it out, so a start needs room beside it and the margin's rest.
    pub fn hold_margin(&mut self, bytes: u64) {
        self.margin_held_bytes = bytes.min(self.state.config.reserved_bytes);
    }

    /// The models declared (withdrawn ones excepted).
    pub fn models(&self) -> impl Iterator<Item = &ModelProfile> {
        self.state
            .profiles
            .values()
            .filter(|p| !self.withdrawn.contains(&p.name))
    }
}
