//! Beats and failure detection: a host's beats to its leads (full lists when something changed
//! or every 16), a lead's verdict on silent hosts, a coordinator's on silent leads, the
//! root's on silent coordinators (each within 1 s), and the one-way delays they measure.

use super::*;
use crate::mesh::integration;

impl MeshNode {
    /// A lead's or a coordinator's beat: alive, with fresh counts.
    pub(super) fn on_alive(&mut self, a: Alive, now: Time) {
        self.note_hop(&a.from, a.sent_ms, now);
        match a.scope {
            Scope::Cluster(c) => {
                let Some(s) = self.cluster_summaries.get_mut(&c) else {
                    return;
                };
                if s.lead != a.from {
                    return;
                }
                self.lead_heard.insert(c, now);
                s.agent_count = a.agents.min(qs_wire::mesh::MAX_CHILDREN as u32);
                s.active_count = a.active.min(s.agent_count);
                s.joining_count = a.joining.min(s.active_count);
                s.breaker_open = a.breaker_open;
                let sector = s.sector;
                self.breakers.sector_failures(sector, a.failures, now);
            }
            Scope::Sector(sec) => {
                let Some(s) = self.sector_summaries.get_mut(&sec) else {
                    return;
                };
                if s.coordinator != a.from {
                    return;
                }
                self.coordinator_heard.insert(sec, now);
                s.total_agents = a.agents;
                s.active_agents = a.active.min(a.agents);
                s.joining_agents = a.joining.min(s.active_agents);
                s.breaker_open = a.breaker_open;
            }
            Scope::Global => {}
        }
    }

    /// A one-way delay sample from a child's timestamped summary or beat.
    pub(super) fn note_hop(&mut self, from: &NodeId, sent_ms: u64, now: Time) {
        let d = now.as_millis().saturating_sub(sent_ms) as f64;
        self.hop_ms.entry(from.clone()).or_default().record(d);
    }

    /// The host part: one beat per cluster lead with this node's agents of that cluster.
    pub(super) fn beat(&mut self, now: Time) {
        if self.local.is_empty() {
            return;
        }
        if self.beat_groups.is_none() {
            // A change goes in the next three beats, so one lost beat loses nothing.
            self.beat_full_left = 3;
            let mut per: BTreeMap<ClusterId, Vec<AgentBeat>> = BTreeMap::new();
            for a in &self.local {
                if let Some(c) = self.tree.cluster_of(a.agent) {
                    per.entry(c).or_default().push(a.clone());
                }
            }
            self.beat_groups = Some(per);
        }
        // A full beat after a change or every few beats; between them a beat only says
        // the host is alive.
        let full =
            self.beat_full_left > 0 || self.beat_seq.is_multiple_of(qs_wire::mesh::FULL_BEAT_EVERY);
        self.beat_seq += 1;
        self.beat_full_left = self.beat_full_left.saturating_sub(1);
        let groups = self.beat_groups.take().unwrap_or_default();
        for (c, agents) in &groups {
            if !full {
                if let Some(lead) = self.tree.cluster(*c).and_then(|cl| cl.lead.clone()) {
                    self.send(
                        lead,
                        MeshMessage::Beat(HostBeat {
                            host: self.me.clone(),
                            cluster: *c,
                            sent_ms: now.as_millis(),
                            agents: Vec::new(),
                        }),
                    );
                }
                continue;
            }
            let c = *c;
            let Some(lead) = self.tree.cluster(c).and_then(|cl| cl.lead.clone()) else {
                continue;
            };
            for chunk in qs_wire::mesh::beat_lists(agents) {
                self.send(
                    lead.clone(),
                    MeshMessage::Beat(HostBeat {
                        host: self.me.clone(),
                        cluster: c,
                        sent_ms: now.as_millis(),
                        agents: chunk.to_vec(),
                    }),
                );
            }
        }
        self.beat_groups = Some(groups);
    }

    pub(super) fn on_beat(&mut self, b: HostBeat, now: Time) {
        let Some(led) = self.led.get_mut(&b.cluster) else {
            return;
        };
        let delay = now.as_millis().saturating_sub(b.sent_ms) as f64;
        let host = led.hosts.entry(b.host.clone()).or_default();
        host.last = Some(now);
        // A spike of the path is every agent's on it at once.
        let spike = host.link.record(delay).is_some();
        let mut failures = 0;
        for a in b.agents {
            let Some(view) = led.agents.get_mut(&a.agent) else {
                continue;
            };
            if view.host != b.host {
                continue;
            }
            view.unknown_until = None;
            // Registered again (a restart): it joins the pool again. Its age is read on its
            // host's clock (when the beat left, less when it joined) and kept on this one.
            if a.joined_ms > view.joined_host_ms {
                view.admitted = false;
                view.joined_host_ms = a.joined_ms;
                let age_ms = b.sent_ms.saturating_sub(a.joined_ms);
                view.joined_ms = now.as_millis().saturating_sub(age_ms).max(1);
                view.revoked.clear();
                // Measured afresh: a restart may be another build, on another device.
                view.work = Work::default();
                view.probe = None;
                led.integrating = true;
            }
            view.work.reported(a.processing_ms);
            view.work.queue_depth = a.queue_depth;
            // Its start read on its host's clock (before the beat left) and kept on this one.
            view.busy = a.busy.map(|busy| Busy {
                since_ms: now
                    .as_millis()
                    .saturating_sub(b.sent_ms.saturating_sub(busy.since_ms)),
                ..busy
            });
            let mut capabilities = a.capabilities;
            capabilities.retain(|c| !view.revoked.contains(c));
            if view.capabilities != capabilities {
                view.capabilities = capabilities;
            }
            if spike && !view.spiking {
                led.spikes_this_period += 1;
            }
            view.spiking = spike;
            if view.state == AgentState::Quarantined {
                continue;
            }
            if view.state == AgentState::Active && a.state == AgentState::Offline {
                failures += 1;
            }
            if view.state != a.state {
                view.state = a.state;
                led.active = None;
                led.integrating |= !view.admitted;
            }
            // A hold that ended is none (the integration pass, which EMERGENCY halts, need not
            // see it first).
            if view.held_until.is_some_and(|t| t <= now) {
                view.held_until = None;
            }
            // A member from before (a new lead after a failover, or a tree rebuilt): in the
            // pool at once, not a beat later.
            if !view.admitted
                && view.state == AgentState::Active
                && view.held_until.is_none()
                && integration::established(view.joined_ms, now, &self.cfg.integration)
            {
                view.admitted = true;
            }
        }
        led.failures_this_period = led.failures_this_period.saturating_add(failures);
        for _ in 0..failures {
            self.breakers.cluster_failure(b.cluster, now);
        }
    }

    /// A lead's failure detection: a host silent past `dead_after_ms` takes its agents
    /// offline, each a failure for the breakers.
    pub(super) fn detect(&mut self, now: Time) {
        let dead_after = Duration::from_millis(self.cfg.dead_after_ms);
        let mut failures: Vec<ClusterId> = Vec::new();
        for (c, led) in &mut self.led {
            let mut lost: Vec<NodeId> = Vec::new();
            for (host, h) in &mut led.hosts {
                if h.last.is_some_and(|t| now.since(t) > dead_after) {
                    h.last = None;
                    lost.push(host.clone());
                    self.out.push_back(MeshOutput::HostLost {
                        scope: Scope::Cluster(*c),
                        host: host.clone(),
                    });
                }
            }
            if lost.is_empty() {
                continue;
            }
            led.active = None;
            for view in led.agents.values_mut() {
                if lost.contains(&view.host)
                    && matches!(view.state, AgentState::Active | AgentState::Degraded)
                {
                    view.state = AgentState::Offline;
                    failures.push(*c);
                }
            }
        }
        for c in failures {
            self.lead_failure(c, now);
        }
        // A coordinator's: a lead silent as long is lost, and its cluster's agents with it
        // until the hierarchy elects the next lead.
        for c in take_silent(&mut self.lead_heard, now, dead_after) {
            if let Some(s) = self.cluster_summaries.get_mut(&c) {
                s.active_count = 0;
                s.joining_count = 0;
                s.breaker_open = true;
                self.out.push_back(MeshOutput::HostLost {
                    scope: Scope::Cluster(c),
                    host: s.lead.clone(),
                });
            }
        }
        // The root's: a coordinator whose summaries stopped.
        for s in take_silent(&mut self.coordinator_heard, now, dead_after) {
            if let Some(x) = self.sector_summaries.get_mut(&s) {
                x.active_agents = 0;
                x.joining_agents = 0;
                x.breaker_open = true;
                self.out.push_back(MeshOutput::HostLost {
                    scope: Scope::Sector(s),
                    host: x.coordinator.clone(),
                });
            }
        }
    }

    /// An agent of a led cluster failed: its breaker counts it, and its summary tells the
    /// sector's.
    pub(crate) fn lead_failure(&mut self, c: ClusterId, now: Time) {
        if let Some(l) = self.led.get_mut(&c) {
            l.failures_this_period = l.failures_this_period.saturating_add(1);
        }
        self.breakers.cluster_failure(c, now);
    }
}

/// The keys last heard more than `limit` before `now`, taken out of `heard`.
fn take_silent<K: Copy + Ord>(heard: &mut BTreeMap<K, Time>, now: Time, limit: Duration) -> Vec<K> {
    let silent: Vec<K> = heard
        .iter()
        .filter(|(_, t)| now.since(**t) > limit)
        .map(|(k, _)| *k)
        .collect();
    for k in &silent {
        heard.remove(k);
    }
    silent
}

/// The last few one-way delays to one node.
#[derive(Clone, Debug, Default)]
pub(crate) struct Hop {
    samples: [f32; 8],
    len: u8,
    next: u8,
}

impl Hop {
    pub(super) fn record(&mut self, ms: f64) {
        self.samples[self.next as usize] = ms.clamp(0.0, 3_600_000.0) as f32;
        self.next = (self.next + 1) % 8;
        self.len = (self.len + 1).min(8);
    }

    pub(super) fn median(&self) -> f64 {
        let mut v = self.samples;
        let n = self.len as usize;
        v[..n].sort_by(f32::total_cmp);
        match n {
            0 => 0.0,
            _ => f64::from(v[n / 2]),
        }
    }
}
