//! What a cluster lead knows of its clusters (seed §2.1, §4.1): each agent's view (state,
//! work profile, capabilities, place in the routing pool) and each host's link, with the
//! impedance and lead time read from them.

use super::*;

/// A led agent, as `qs mesh status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LedAgent {
    pub cluster: ClusterId,
    pub agent: AgentId,
    pub state: AgentState,
    pub class: ImpedanceClass,
    pub score_ms: f64,
    pub lead_ms: f64,
    pub drift: f64,
    pub processing_ms: Option<f64>,
    pub link_p50_ms: f64,
    /// In the routing pool (else still joining, or held out).
    pub admitted: bool,
    /// How much longer it is held out of the pool (after a conflict while integrating, or
    /// operations it missed in a row), milliseconds; 0 if it is not.
    pub held_ms: u64,
    /// Operations in a row it was sent and never answered.
    pub missed: u8,
    /// Its path's delay is in a spike (more than twice its baseline).
    pub spiking: bool,
    /// What its host last said it works on (since on this node's clock), and for how long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub busy: Option<Busy>,
    #[serde(skip_serializing_if = "qs_wire::bounds::is_zero")]
    pub busy_for_ms: u64,
}

/// An agent as its cluster lead knows it.
#[derive(Clone, Debug)]
pub(crate) struct AgentView {
    pub host: NodeId,
    pub state: AgentState,
    pub work: Work,
    pub capabilities: Vec<String>,
    /// Capabilities it said it lacked when asked (seed §5.1: the capability map fixed), kept
    /// out of what its host says until it registers again.
    pub revoked: Vec<String>,
    pub spiking: bool,
    /// Times it disagreed with a clear majority (seed §6.1 byzantine behaviour).
    pub disagreements: u32,
    /// When it registered with its host, on this node's clock, Unix milliseconds (0: long
    /// ago), and as its host said it (on the host's clock: a later one is a restart).
    pub joined_ms: u64,
    pub joined_host_ms: u64,
    /// In the routing pool: operations may go to it (seed §10.2).
    pub admitted: bool,
    /// Held out of the pool after a conflict while integrating, or after operations it
    /// missed in a row, until then.
    pub held_until: Option<Time>,
    /// Operations in a row it was sent and never answered (any answer, a late one or a
    /// probe's, starts the count again; seed §6.1's TRANSIENT_NETWORK).
    pub missed: u8,
    /// When it last answered anything (an operation, late or not, a probe).
    pub last_answer: Option<Time>,
    /// The readiness probe out to it (seed §10.2).
    pub probe: Option<ProbeOut>,
    /// Made before its host said anything of it (a new lead, a new member): its state is
    /// unknown, and it counts in no summary until its host says it or this time passes
    /// (`dead_after_ms`: a host that says nothing is offline then).
    pub unknown_until: Option<Time>,
    /// Seed §6.1's AGENT_CRASH: since when it is offline, and its crashes.
    pub crash: super::crash::Crash,
    /// What its host last said it works on, since when on this node's clock.
    pub busy: Option<Busy>,
}

impl AgentView {
    /// How long it has worked on what it is busy with, at `now` (0: nothing).
    pub(crate) fn busy_for_ms(&self, now: Time) -> u64 {
        self.busy
            .as_ref()
            .map_or(0, |b| now.as_millis().saturating_sub(b.since_ms))
    }
}

/// A readiness probe sent: when, and its operation (its own: its answer is told apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProbeOut {
    pub at: Time,
    pub op: OpId,
}

/// A cluster this node leads.
#[derive(Clone, Debug, Default)]
pub(crate) struct Led {
    pub sector: SectorId,
    pub agents: BTreeMap<AgentId, AgentView>,
    pub hosts: BTreeMap<NodeId, HostLink>,
    pub spikes_this_period: usize,
    pub failures_this_period: u32,
    /// The last summary, re-sent at each beat between recomputations.
    pub summary: Option<ClusterSummary>,
    /// How many agents are active, kept until a state changes.
    pub active: Option<u32>,
    /// Answers measured since the last full summary: the next beat carries one.
    pub measured: bool,
    /// Some agent may be active and outside the routing pool: the lead's integration pass
    /// looks at this cluster (set when a view is made, joins again, comes up or is held).
    pub integrating: bool,
    /// The latest `unknown_until` of its views: past it, every view is known.
    pub unknown_until: Option<Time>,
    /// Some agent was offline at the last crash pass (seed §6.1's AGENT_CRASH): the next
    /// pass looks at every agent even if all are active again (to note who came back).
    pub crash_watch: bool,
    /// Its open breaker's probe, out (seed §6.2).
    pub breaker_probe: Option<super::probe::BreakerProbe>,
}

/// A host of a led cluster: when it last beat, and the path to it.
#[derive(Clone, Debug, Default)]
pub(crate) struct HostLink {
    pub last: Option<Time>,
    pub link: Link,
}

impl Led {
    /// Active agents not yet in the routing pool.
    pub(crate) fn joining_count(&self) -> u32 {
        if !self.integrating {
            return 0;
        }
        let joining = self.agents.values();
        joining
            .filter(|a| a.state == AgentState::Active && !a.admitted)
            .count() as u32
    }

    /// Agents a summary counts now: all but those whose state is not known yet.
    pub(crate) fn known_count(&self, now: Time) -> u32 {
        if self.unknown_until.is_none_or(|t| now >= t) {
            return self.agents.len() as u32;
        }
        let unknown = self.agents.values();
        let unknown = unknown.filter(|a| a.unknown_until.is_some_and(|t| now < t));
        (self.agents.len() - unknown.count()) as u32
    }

    /// Holds agent `a` out of the routing pool until `until` (the integration pass takes it
    /// back then).
    pub(crate) fn hold_out(&mut self, a: AgentId, until: Time) {
        if let Some(v) = self.agents.get_mut(&a) {
            v.admitted = false;
            v.held_until = Some(until);
            self.integrating = true;
        }
    }

    /// Active agents now.
    pub(crate) fn active_count(&mut self) -> u32 {
        if let Some(n) = self.active {
            return n;
        }
        let n = self
            .agents
            .values()
            .filter(|a| a.state == AgentState::Active)
            .count() as u32;
        self.active = Some(n);
        n
    }

    /// An agent's impedance and lead for a payload of `weight`.
    pub(crate) fn assess(
        &mut self,
        agent: AgentId,
        weight: f64,
    ) -> Option<(impedance::Impedance, impedance::Lead)> {
        let view = self.agents.get(&agent)?;
        let host = self.hosts.entry(view.host.clone()).or_default();
        let z = impedance::assess(&mut host.link, &view.work);
        let l = impedance::lead_of(&z, &mut host.link, &view.work, weight);
        Some((z, l))
    }
}

impl MeshNode {
    /// Agents this node leads, with their class, score and place in the routing pool at
    /// `now` (for `qs mesh status CLUSTER`).
    pub fn led_agents(&mut self, now: Time) -> Vec<LedAgent> {
        let mut v = Vec::new();
        for (c, led) in &mut self.led {
            let agents: Vec<(AgentId, AgentState)> =
                led.agents.iter().map(|(a, x)| (*a, x.state)).collect();
            for (agent, state) in agents {
                if let Some((z, l)) = led.assess(agent, 0.0) {
                    let view = &led.agents[&agent];
                    v.push(LedAgent {
                        cluster: *c,
                        agent,
                        state,
                        class: z.class,
                        score_ms: z.score_ms,
                        lead_ms: l.lead_ms,
                        drift: z.drift,
                        processing_ms: view.work.processing_ms(),
                        link_p50_ms: z.link_p50_ms,
                        admitted: view.admitted,
                        held_ms: view
                            .held_until
                            .map_or(0, |t| t.since(now).as_millis() as u64),
                        missed: view.missed,
                        spiking: view.spiking,
                        busy: view.busy.clone(),
                        busy_for_ms: view.busy_for_ms(now),
                    });
                }
            }
        }
        v
    }
}
