//! The fault schedule and the operator's actions, carried out on the simulated fleet.

use super::{Action, Ev, Sim, micros};
use qs_core::{FleetChange, Input};
use qs_wire::ExitOutcome;

impl Sim {
    pub(super) fn act(&mut self, action: Action) {
        let now = self.now;
        match action {
            Action::Apply(spec) => {
                let name = spec.name.clone();
                self.registry.apply_spec(spec, now);
                self.changed(FleetChange::SpecChanged(name));
            }
            Action::Remove(name) => {
                if self.registry.remove_spec(&name).is_some() {
                    self.changed(FleetChange::SpecRemoved(name));
                }
            }
            Action::Spike {
                service,
                util,
                for_ms,
            } => {
                let hit = self.running_instance_of(&service);
                if let Some((i, id)) = hit {
                    if let Some(p) = self.nodes[i].procs.get_mut(&id) {
                        p.util = util;
                    }
                    self.sense_soon(i);
                    self.push(
                        now + micros(for_ms * 1000),
                        Ev::Calm {
                            node: i,
                            instance: id,
                        },
                    );
                }
            }
            Action::Background { node, cpu_util } => {
                if let Some(&i) = self.index.get(&node) {
                    self.nodes[i].background = cpu_util;
                    self.sense_soon(i);
                }
            }
            Action::Kill(node) => {
                if let Some(&i) = self.index.get(&node)
                    && self.nodes[i].alive
                {
                    self.nodes[i].alive = false;
                    self.nodes[i].procs.clear();
                    self.counters.kills += 1;
                }
            }
            Action::Crash(service) => {
                let hit = self.running_instance_of(&service);
                if let Some((node, instance)) = hit {
                    let outcome = ExitOutcome::Crashed {
                        reason: "simulated crash".into(),
                    };
                    self.push(
                        now,
                        Ev::Exit {
                            node,
                            instance,
                            outcome,
                        },
                    );
                }
            }
            Action::BreakStarts(node) => {
                if let Some(&i) = self.index.get(&node) {
                    self.nodes[i].broken_starts = true;
                }
            }
            Action::Drain(node) => {
                if let Some(&i) = self.index.get(&node) {
                    let input = Box::new(Input::Drain(true));
                    self.push(now, Ev::Local { to: i, input });
                }
            }
            Action::ApprovePromotion(service) => {
                if let Some(&i) = self
                    .registry
                    .steward(&service)
                    .and_then(|s| self.index.get(s))
                {
                    let input = Box::new(Input::ApprovePromotion { service });
                    self.push(now, Ev::Local { to: i, input });
                }
            }
        }
    }
}
