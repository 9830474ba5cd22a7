//! Probes: a readiness probe to one agent (a `Verb::Probe` dispatch of its own operation, so
//! its answer is told apart), and an open breaker's probe (seed §6.2: "after timeout, try one
//! request"). A cluster's breaker, at its lead, is probed with real requests: a readiness
//! probe to each of its few most responsive active agents; the first READY makes it
//! half-open, and none within the probe's wait keeps it open until the next probe. A
//! sector's breaker (at its coordinator) is probed by what its leads' summaries say (each
//! cluster at least 80 % active: the leads probed their own), the global one by the root's.

use super::*;
use crate::mesh::integration::PROBE_TIMEOUT_MS;
use qs_wire::mesh::{Trinary, Verb};

/// Agents an open cluster breaker's probe asks.
pub const BREAKER_PROBE_AGENTS: usize = 3;

/// An open cluster breaker's probe, out: the operations it sent.
#[derive(Clone, Debug, Default)]
pub(crate) struct BreakerProbe {
    pub ops: BTreeSet<OpId>,
}

impl MeshNode {
    /// Sends a readiness probe to `agent` of `cluster` on `host`; its operation.
    pub(super) fn send_probe(
        &mut self,
        host: NodeId,
        cluster: ClusterId,
        agent: AgentId,
        now: Time,
    ) -> OpId {
        let mut envelope = self.envelope(Verb::Probe, "", 0, now);
        // Its own operation, so its answer is told apart from a late one.
        let op = OpId(self.next_id());
        envelope.op = op;
        envelope.ttl_ms = PROBE_TIMEOUT_MS * 10;
        let d = Dispatch {
            agent,
            cluster,
            reply_to: self.me.clone(),
            envelope,
        };
        self.send(host, MeshMessage::Dispatch(Box::new(d)));
        op
    }

    /// The breakers whose probe is due: a led cluster's asks its agents (or, its probe's
    /// wait over without a READY, stays open); any other's is judged from the summaries.
    pub(super) fn probe_breakers(&mut self, now: Time) {
        for scope in self.breakers.probes_due(now) {
            match scope {
                Scope::Cluster(c) if self.led.contains_key(&c) => self.probe_cluster(c, now),
                _ => {
                    let ok = self.healthy_below(scope);
                    self.breakers.probed(scope, ok, now);
                }
            }
        }
    }

    fn probe_cluster(&mut self, c: ClusterId, now: Time) {
        let scope = Scope::Cluster(c);
        let Some(led) = self.led.get_mut(&c) else {
            return;
        };
        if led.breaker_probe.take().is_some() {
            // Its wait ended and no agent answered READY: still open.
            self.breakers.probed(scope, false, now);
            return;
        }
        // The most responsive active agents: the shortest predicted lead first.
        let active: Vec<AgentId> = led
            .agents
            .iter()
            .filter(|(_, v)| v.state == AgentState::Active && !v.spiking)
            .map(|(a, _)| *a)
            .collect();
        let mut asked: Vec<(f64, AgentId, NodeId)> = active
            .into_iter()
            .filter_map(|a| {
                let (_, l) = led.assess(a, 0.0)?;
                Some((l.lead_ms, a, led.agents[&a].host.clone()))
            })
            .collect();
        asked.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
        asked.truncate(BREAKER_PROBE_AGENTS);
        let Some(longest_ms) = asked.iter().map(|x| x.0).reduce(f64::max) else {
            self.breakers.probed(scope, false, now);
            return;
        };
        let mut probe = BreakerProbe::default();
        for (_, agent, host) in asked {
            probe.ops.insert(self.send_probe(host, c, agent, now));
        }
        if let Some(led) = self.led.get_mut(&c) {
            led.breaker_probe = Some(probe);
        }
        // Twice what the slowest asked is thought to take, a second at least, and no longer
        // than a breaker waits for its first probe.
        let wait_ms = (2.0 * longest_ms)
            .max(PROBE_TIMEOUT_MS as f64)
            .min(breaker::FIRST_PROBE_MS as f64);
        let until = now + Duration::from_micros((wait_ms * 1000.0) as u64);
        self.breakers.probing(scope, until);
    }

    /// An answer to an open cluster breaker's probe: READY makes the breaker half-open.
    /// Whether `ack` answered one.
    pub(super) fn breaker_probe_answered(&mut self, ack: &Ack, now: Time) -> bool {
        let Some(led) = self.led.get_mut(&ack.cluster) else {
            return false;
        };
        let Some(probe) = &mut led.breaker_probe else {
            return false;
        };
        if !probe.ops.remove(&ack.op) {
            return false;
        }
        let ready = ack.state == Trinary::Ready && !ack.expired;
        // READY half-opens it; every probe answered otherwise keeps it open at once.
        if ready || probe.ops.is_empty() {
            led.breaker_probe = None;
            self.breakers
                .probed(Scope::Cluster(ack.cluster), ready, now);
        }
        true
    }

    /// A breaker's probe from what this node's view says of what is below it: a sector
    /// whose clusters are all at least 80 % active, as their summaries say. (A cluster this
    /// node no longer leads: its new lead's breaker speaks for it.)
    fn healthy_below(&self, scope: Scope) -> bool {
        match scope {
            Scope::Cluster(_) => false,
            Scope::Sector(s) => self
                .cluster_summaries
                .values()
                .filter(|c| c.sector == s)
                .all(|c| c.active_count * 10 >= c.agent_count * 8),
            Scope::Global => true,
        }
    }
}
