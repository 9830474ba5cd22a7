//! Agents that fail and come back in the simulator: a share of them goes down at once while
//! their hosts live (`down_fraction`), and seed §6.1's AGENT_CRASH recovery: a host its lead
//! asks to restart a crashed agent (`MeshOutput::Restart`, which the core decided) brings it
//! up again once the restart took `restart_ms`, as a new registration, which its lead
//! measures afresh and admits to the routing pool gradually. Without `restart_ms` a down
//! agent stays down (a replacement that also fails).

use super::*;
use qs_wire::mesh::AgentOrder;
use std::collections::BTreeSet;

/// The restarts of one run.
#[derive(Clone, Debug, Default)]
pub(super) struct Restarts {
    /// How long one takes (none: agents are not restarted).
    ms: Option<u64>,
    /// Agents being restarted now (each once, however often its lead asks).
    under_way: BTreeSet<usize>,
    /// Agents restarted, in order.
    pub(super) done: Vec<usize>,
}

impl Restarts {
    pub(super) fn new(ms: Option<u64>) -> Restarts {
        Restarts {
            ms,
            ..Restarts::default()
        }
    }
}

impl MeshSim {
    /// A share of the agents, chosen by the seeded RNG, goes down at once; their hosts beat
    /// them as offline.
    pub(super) fn agents_down(&mut self) {
        let now = self.now;
        let n = (self.agents.len() as f64 * self.down_fraction).round() as usize;
        let mut order: Vec<usize> = (0..self.agents.len()).collect();
        for i in (1..order.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        for &a in order.iter().take(n) {
            self.agents[a].down = true;
        }
        for h in 0..self.nodes.len() {
            let beats = self.beats_of(h);
            self.nodes[h].handle(MeshInput::Agents(beats), now);
        }
    }

    /// Host `host`'s core asks its shell to restart an agent: one of its own that is down
    /// comes up again once the restart took its time.
    pub(super) fn ask_restart(&mut self, host: usize, r: AgentOrder) {
        let Some(ms) = self.restarts.ms else {
            return;
        };
        let Some(&a) = self.by_agent.get(&r.agent) else {
            return;
        };
        if self.agents[a].host != host || !self.agents[a].down || !self.restarts.under_way.insert(a)
        {
            return;
        }
        self.push(self.now + Duration::from_millis(ms), Event::Restart(a));
    }

    /// Agent `a` is up again, registered anew with its host (unless the host died meanwhile).
    pub(super) fn restart(&mut self, a: usize) {
        self.restarts.under_way.remove(&a);
        let host = self.agents[a].host;
        if self.dead[host] {
            return;
        }
        let now = self.now;
        let agent = &mut self.agents[a];
        agent.down = false;
        agent.joined_ms = now.as_millis();
        agent.last_ms = 0.0;
        self.restarts.done.push(a);
        let beats = self.beats_of(host);
        self.nodes[host].handle(MeshInput::Agents(beats), now);
        self.drain(host);
    }

    /// Of the agents restarted, those in their lead's routing pool now.
    pub(super) fn restarted_in_pool(&self) -> u64 {
        let restarted: BTreeSet<AgentId> = self
            .restarts
            .done
            .iter()
            .map(|a| self.agents[*a].id)
            .collect();
        let mut in_pool = BTreeSet::new();
        for n in self.live_nodes() {
            in_pool.extend(n.pool().map(|(_, a)| a).filter(|a| restarted.contains(a)));
        }
        in_pool.len() as u64
    }
}
