//! A lead's part in scale-out (seed §10.2, the policy in [`crate::mesh::integration`]): at
//! each beat, agents of its clusters that settled join the routing pool, at most
//! `admit_per_beat` per cluster, those that joined first first (an established agent also
//! joins at its host's next full beat).

use super::*;
use crate::mesh::impedance::CLASS_D_BELOW_MS;
use crate::mesh::integration::{self, Candidate, PROBE_TIMEOUT_MS, Standing};
use qs_wire::mesh::Contradicted;

/// Most readiness probes a lead sends per beat, over all its clusters (a cluster of 100
/// newcomers is probed over a few beats).
const MAX_PROBES_PER_BEAT: usize = 300;

/// A readiness probe to send.
struct Probe {
    host: NodeId,
    cluster: ClusterId,
    agent: AgentId,
}

impl MeshNode {
    pub(super) fn integrate(&mut self, now: Time) {
        let cfg = self.cfg.integration;
        let mut probes: Vec<Probe> = Vec::new();
        for (cluster, led) in self.led.iter_mut() {
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
                let link_samples = led
                    .hosts
                    .get_mut(&led.agents[&a].host)
                    .map_or(0, |h| h.link.stats().samples);
                let view = led.agents.get_mut(&a).expect("listed above");
                // A probe unanswered past its timeout (twice what the agent is thought to
                // take, a second at least): it takes at least that long, and is probed again
                // (the estimate doubles with each timeout, and so does the wait). Its answer,
                // if it comes later, is still a measurement.
                let thought_ms = view.work.processing_ms().unwrap_or(0.0);
                let timeout_ms = (2.0 * thought_ms).max(PROBE_TIMEOUT_MS as f64);
                if view
                    .probe
                    .is_some_and(|p| now.since(p.at).as_secs_f64() * 1000.0 >= timeout_ms)
                {
                    view.work.at_least(timeout_ms);
                    view.probe = None;
                }
                // Slow (class F) by an answer: not by a wait, which a lost probe makes too.
                let slow = view.work.longest_ms() >= CLASS_D_BELOW_MS;
                let c = Candidate {
                    joined_ms: view.joined_ms,
                    link_samples,
                    drifting,
                    work_samples: view.work.samples(),
                    slow,
                    spiking: view.spiking,
                    held_until: view.held_until,
                };
                let standing = integration::standing(&c, now, &cfg);
                // Seed §10.2's "verify impedance profiles stabilize": an agent not measured
                // enough yet, or whose last answer spiked, is probed, one probe out at a time
                // (none to a slow one: it would only queue them).
                if standing == Standing::Settling
                    && (c.work_samples < cfg.min_work_samples || c.spiking)
                    && !slow
                    && view.probe.is_none()
                    && probes.len() < MAX_PROBES_PER_BEAT
                {
                    probes.push(Probe {
                        host: view.host.clone(),
                        cluster: *cluster,
                        agent: a,
                    });
                }
                // Established while it settled here (a slow one that answered no probe
                // in 30 s): first in line, but in line. (An established agent also joins at
                // its host's next full beat, `on_beat`: members from before, after a new
                // tree, at once.)
                match standing {
                    Standing::Settling => {}
                    Standing::Eligible | Standing::Established => {
                        eligible.push((view.joined_ms, a))
                    }
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
        for p in probes {
            let op = self.send_probe(p.host, p.cluster, p.agent, now);
            if let Some(view) = self
                .led
                .get_mut(&p.cluster)
                .and_then(|l| l.agents.get_mut(&p.agent))
            {
                view.probe = Some(ProbeOut { at: now, op });
            }
        }
    }

    /// The root says agents of a cluster this node leads contradicted it in an urgent
    /// operation (whose answers the root gathers): as if this lead had heard them.
    pub(super) fn on_contradicted(&mut self, from: &NodeId, c: Contradicted, now: Time) {
        if self.tree.root.as_ref() != Some(from) {
            self.refused_senders += 1;
            return;
        }
        for a in c.agents {
            self.conflict_while_integrating(c.cluster, a, now);
        }
    }

    /// An agent answered CONFLICT where its cluster clearly answered READY: while it is
    /// integrating, it leaves the pool and is held back for a settling period.
    pub(super) fn conflict_while_integrating(&mut self, c: ClusterId, agent: AgentId, now: Time) {
        let cfg = self.cfg.integration;
        let Some(l) = self.led.get_mut(&c) else {
            return;
        };
        let integrating = l
            .agents
            .get(&agent)
            .is_some_and(|v| v.admitted && !integration::established(v.joined_ms, now, &cfg));
        if integrating {
            l.hold_out(agent, now + Duration::from_millis(cfg.settle_ms));
        }
    }
}

pub(super) fn admit(led: &mut Led, a: AgentId) {
    if let Some(v) = led.agents.get_mut(&a) {
        v.admitted = true;
        v.held_until = None;
        v.probe = None;
    }
}

impl MeshNode {
    /// The agents of the clusters this node leads that are in the routing pool, by cluster:
    /// admitted and active (one admitted and offline is out, as `qs mesh status` says,
    /// until it is back).
    pub fn pool(&self) -> impl Iterator<Item = (ClusterId, AgentId)> + '_ {
        self.led.iter().flat_map(|(c, l)| {
            let admitted = l
                .agents
                .iter()
                .filter(|(_, v)| v.admitted && v.state == AgentState::Active);
            admitted.map(move |(a, _)| (*c, *a))
        })
    }
}
