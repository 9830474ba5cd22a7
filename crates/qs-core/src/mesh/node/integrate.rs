//! A lead's part in scale-out (seed §10.2, the policy in [`crate::mesh::integration`]): at
//! each beat, agents of its clusters that settled join the routing pool, at most
//! `admit_per_beat` per cluster, those that joined first first; established agents at once.

use super::*;
use crate::mesh::integration::{self, Candidate, Standing};

impl MeshNode {
    pub(super) fn integrate(&mut self, now: Time) {
        let cfg = self.cfg.integration;
        for led in self.led.values_mut() {
            if !led.integrating {
                continue;
            }
            let mut eligible: Vec<(u64, AgentId)> = Vec::new();
            let outside: Vec<AgentId> = led
                .agents
                .iter()
                .filter(|(_, v)| !v.admitted && v.state == AgentState::Active)
                .map(|(a, _)| *a)
                .collect();
            for a in outside {
                let drifting = led
                    .assess(a, 0.0)
                    .is_some_and(|(z, _)| z.class == ImpedanceClass::E);
                let view = &led.agents[&a];
                let link_samples = led
                    .hosts
                    .get_mut(&view.host)
                    .map_or(0, |h| h.link.stats().samples);
                let c = Candidate {
                    joined_ms: view.joined_ms,
                    link_samples,
                    drifting,
                    held_until: view.held_until,
                };
                let joined_ms = view.joined_ms;
                match integration::standing(&c, now, &cfg) {
                    Standing::Settling => {}
                    Standing::Eligible => eligible.push((joined_ms, a)),
                    Standing::Established => admit(led, a),
                }
            }
            eligible.sort_unstable();
            for (_, a) in eligible.into_iter().take(cfg.admit_per_beat) {
                admit(led, a);
            }
            led.integrating = led
                .agents
                .values()
                .any(|v| v.state == AgentState::Active && !v.admitted);
        }
    }

    /// An agent answered CONFLICT where its cluster clearly answered READY: while it is
    /// integrating, it leaves the pool and is held back for a settling period.
    pub(super) fn conflict_while_integrating(&mut self, c: ClusterId, agent: AgentId, now: Time) {
        let cfg = self.cfg.integration;
        let Some(view) = self.led.get_mut(&c).and_then(|l| l.agents.get_mut(&agent)) else {
            return;
        };
        if view.admitted && !integration::established(view.joined_ms, now, &cfg) {
            view.admitted = false;
            view.held_until = Some(now + Duration::from_millis(cfg.settle_ms));
            if let Some(l) = self.led.get_mut(&c) {
                l.integrating = true;
            }
        }
    }
}

fn admit(led: &mut Led, a: AgentId) {
    if let Some(v) = led.agents.get_mut(&a) {
        v.admitted = true;
        v.held_until = None;
    }
}

impl MeshNode {
    /// The agents of the clusters this node leads that are in the routing pool, by cluster.
    pub fn pool(&self) -> impl Iterator<Item = (ClusterId, AgentId)> + '_ {
        self.led.iter().flat_map(|(c, l)| {
            let admitted = l.agents.iter().filter(|(_, v)| v.admitted);
            admitted.map(move |(a, _)| (*c, *a))
        })
    }
}
