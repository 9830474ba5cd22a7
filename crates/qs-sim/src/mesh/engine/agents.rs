//! The simulated agents: the seed's mix of impedance classes, each kind's processing time,
//! and what an agent does with a dispatch (its class's time, then READY, or now and then a
//! CONFLICT) and what its host's beats say of it.

use super::*;

/// Seed §2.2's allocation of 30,000 agents, per 30 (A 10, B 8, C 5, D 2, E 3, F 2).
pub(super) const KINDS: [(ImpedanceClass, u64); 6] = [
    (ImpedanceClass::A, 10),
    (ImpedanceClass::B, 8),
    (ImpedanceClass::C, 5),
    (ImpedanceClass::D, 2),
    (ImpedanceClass::E, 3),
    (ImpedanceClass::F, 2),
];

/// Processing time per kind: a log-normal with this median (ms) and spread.
pub(super) fn processing(kind: ImpedanceClass) -> (f64, f64) {
    match kind {
        ImpedanceClass::A => (4.0, 0.3),
        ImpedanceClass::B => (40.0, 0.3),
        ImpedanceClass::C => (120.0, 0.25),
        ImpedanceClass::D => (250.0, 0.2),
        ImpedanceClass::E => (50.0, 0.9),
        ImpedanceClass::F => (20_000.0, 0.5),
    }
}

fn ag_context(c: &str) -> String {
    match c {
        "" => "unknown".into(),
        c => c.into(),
    }
}

impl MeshSim {
    pub(super) fn beats_of(&self, host: usize) -> Vec<AgentBeat> {
        self.host_agents[host]
            .iter()
            .map(|&a| {
                let ag = &self.agents[a];
                AgentBeat {
                    agent: ag.id,
                    state: match ag.down {
                        true => AgentState::Offline,
                        false => AgentState::Active,
                    },
                    processing_ms: ag.last_ms,
                    queue_depth: 0,
                    capabilities: Vec::new(),
                    joined_ms: ag.joined_ms,
                    busy: None,
                }
            })
            .collect()
    }

    /// A local agent takes its class's time and answers.
    pub(super) fn agent_work(&mut self, host: usize, d: Dispatch) {
        let Some(&a) = self.by_agent.get(&d.agent) else {
            return;
        };
        self.agents[a].delivered += 1;
        if self.agents[a].down {
            return;
        }
        let ag = &self.agents[a];
        let u1 = self.rng.unit().max(1e-12);
        let u2 = self.rng.unit();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        let ms = ag.median_ms * (ag.sigma * z).exp();
        // A broadcast is acknowledged; an ask (observe) is answered with the context hash.
        let context = match d.envelope.verb {
            Verb::Observe => ag.context,
            _ => "",
        };
        self.agents[a].last_ms = ms;
        // The host's beats carry what it measured of its agents.
        if self.rng.below(8) == 0 {
            let beats = self.beats_of(host);
            self.nodes[host].handle(MeshInput::Agents(beats), self.now);
        }
        let now_ms = self.now.as_millis();
        let ready = self.now + Duration::from_micros((ms * 1000.0) as u64);
        let started = Time::from_millis(d.envelope.created_ms);
        self.ready_after_ms
            .entry(d.envelope.op)
            .or_default()
            .push(ready.since(started).as_secs_f64() * 1000.0);
        // One answer in 2,000 is a conflict (a value that contradicts the context).
        let conflict = self.rng.below(2_000) == 0;
        let ack = Ack {
            op: d.envelope.op,
            agent: d.agent,
            cluster: d.cluster,
            state: match conflict {
                true => Trinary::Conflict,
                false => Trinary::Ready,
            },
            arrived_ms: now_ms,
            ready_ms: ready.as_millis(),
            answer: context.to_owned(),
            // Of the classes an agent can tell (seed §5.1): priority 2, 3 and 4.
            conflict: conflict.then(|| match self.rng.below(3) {
                0 => ConflictDetail::DataContradiction {
                    expected: "a1b2c3d4".into(),
                    received: ag_context(context),
                    affects_agents: 1,
                },
                1 => ConflictDetail::ContextDivergence {
                    depth: 12,
                    context_hash: ag_context(context),
                },
                _ => ConflictDetail::TemporalParadox {
                    detail: "an effect before its cause".into(),
                },
            }),
            expired: false,
        };
        self.push(
            ready,
            Event::Done {
                host,
                ack,
                reply_to: d.reply_to,
            },
        );
    }
}
