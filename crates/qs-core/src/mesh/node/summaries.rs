//! Summaries up the tree (seed §4.2–4.3, §8.2): a lead's cluster summary and a coordinator's
//! sector summary, full every 5 s or after an operation measured agents (and a sector's
//! whenever conflicts wait to go to the root with it), `Alive` beats with fresh counts
//! between; the root's mode, global breaker and availability from them.

use super::*;

impl MeshNode {
    /// Leads' summaries to their coordinators (seed §4.2).
    pub(super) fn summarize_clusters(&mut self, now: Time, recompute: bool) {
        let now_ms = now.as_millis();
        let led: Vec<ClusterId> = self.led.keys().copied().collect();
        // The capability mapping's rules: an agent of a class kept out of a capability's
        // routing is not counted as having it (no operation that requires it goes to it).
        let excluded = self.excluded.clone();
        for c in led {
            let Some(l) = self.led.get_mut(&c) else {
                continue;
            };
            let active_now = l.active_count();
            // A summary made before its agents were heard from is made again.
            let stale = l.measured
                || l.summary
                    .as_ref()
                    .is_none_or(|s| s.active_count == 0 && active_now > 0);
            l.measured = false;
            if !stale && !recompute {
                // Between summaries, a beat with the counts that move fast.
                let alive = Alive {
                    scope: Scope::Cluster(c),
                    from: self.me.clone(),
                    sent_ms: now_ms,
                    agents: l.known_count(now),
                    active: active_now,
                    joining: l.joining_count().min(active_now),
                    failures: std::mem::take(&mut l.failures_this_period),
                    breaker_open: self.breakers.state(Scope::Cluster(c))
                        == qs_wire::mesh::BreakerState::Open,
                };
                let sector = l.sector;
                if let Some(co) = self.tree.sector(sector).and_then(|s| s.coordinator.clone()) {
                    self.send(co, MeshMessage::Alive(alive));
                }
                continue;
            }
            let active: Vec<AgentId> = l
                .agents
                .iter()
                .filter(|(_, a)| a.state == AgentState::Active)
                .map(|(id, _)| *id)
                .collect();
            let n_active = active.len();
            let mut assessed: Vec<impedance::Assessed> = Vec::with_capacity(n_active);
            // Its active agents by capability (as the lead's map says, lost ones out; those
            // of a class the rules keep out of it left out). An agent names each once
            // (`check_capabilities`, at its join and in every beat).
            let mut capable: BTreeMap<String, u32> = BTreeMap::new();
            for a in active {
                let Some((z, lead)) = l.assess(a, 0.0) else {
                    continue;
                };
                for name in &l.agents[&a].capabilities {
                    let rule = qs_wire::mesh::Exclusion {
                        class: z.class,
                        capability: name.clone(),
                    };
                    if excluded.is_empty() || !excluded.contains(&rule) {
                        *capable.entry(rule.capability).or_default() += 1;
                    }
                }
                let samples = l
                    .hosts
                    .get_mut(&l.agents[&a].host)
                    .map_or(0, |h| h.link.stats().samples);
                assessed.push(impedance::Assessed {
                    impedance: z,
                    lead_ms: lead.lead_ms,
                    anomalous: impedance::standing(&z, samples).is_some(),
                });
            }
            let agg = impedance::aggregate(&assessed);
            if impedance::coordinated_shift(l.spikes_this_period, n_active) {
                // Seed §9.2: a coordinated shift is reported; its samples taught nothing
                // (spikes never move a baseline).
                self.kpis.coordinated_shifts += 1;
            }
            l.spikes_this_period = 0;
            // (At most what a summary may say of its agents: a cluster renumbered by a new
            // tree may count failures of agents it no longer knows.)
            let failures = std::mem::take(&mut l.failures_this_period).min(
                l.known_count(now)
                    .saturating_mul(qs_wire::mesh::MAX_FAILURES_PER_AGENT),
            );
            let sector = l.sector;
            let (capabilities, capabilities_more) = qs_wire::mesh::capability_counts(capable);
            let summary = ClusterSummary {
                cluster: c,
                sector,
                lead: self.me.clone(),
                sent_ms: now_ms,
                agent_count: l.known_count(now),
                active_count: n_active as u32,
                joining_count: l.joining_count().min(n_active as u32),
                mean_impedance_ms: agg.mean_ms,
                p95_impedance_ms: agg.p95_ms,
                leads: agg.leads,
                classes: agg.classes,
                anomalies: agg.anomalies,
                failures,
                breaker_open: self.breakers.state(Scope::Cluster(c))
                    == qs_wire::mesh::BreakerState::Open,
                conflicts: self.conflicts.counts(now, |x| x == c),
                capabilities,
                capabilities_more,
            };
            l.summary = Some(summary.clone());
            if let Some(co) = self.tree.sector(sector).and_then(|s| s.coordinator.clone()) {
                self.send(co, MeshMessage::Cluster(Box::new(summary)));
            }
        }
    }

    /// Coordinators' summaries to the root (seed §4.3), at every beat (they sum at most 100
    /// cluster summaries); then the root updates the mode, the global breaker and
    /// availability.
    pub(super) fn summarize_sectors(&mut self, now: Time, recompute: bool) {
        let now_ms = now.as_millis();
        let sectors = self.my_sectors.clone();
        for s in sectors {
            // Conflicts for the root go with a full summary.
            let passing_on = self.late_for_root.contains_key(&s);
            if !recompute && self.summarized.contains(&s) && !passing_on {
                let (agents, active, joining) = self
                    .cluster_summaries
                    .values()
                    .filter(|c| c.sector == s)
                    .fold((0, 0, 0), |(t, a, j), c| {
                        (t + c.agent_count, a + c.active_count, j + c.joining_count)
                    });
                let alive = Alive {
                    scope: Scope::Sector(s),
                    from: self.me.clone(),
                    sent_ms: now_ms,
                    agents,
                    active,
                    joining: joining.min(active),
                    failures: 0,
                    breaker_open: self.breakers.state(Scope::Sector(s))
                        == qs_wire::mesh::BreakerState::Open,
                };
                if let Some(root) = self.tree.root.clone() {
                    self.send(root, MeshMessage::Alive(alive));
                }
                continue;
            }
            // Kept while there is no root to send them to.
            let escalated = match self.tree.root {
                Some(_) => ops::late_to_send(self, s),
                None => Vec::new(),
            };
            let mine: Vec<&ClusterSummary> = self
                .cluster_summaries
                .values()
                .filter(|c| c.sector == s)
                .collect();
            let mut sum = SectorSummary {
                sector: s,
                coordinator: self.me.clone(),
                sent_ms: now_ms,
                cluster_count: mine.len() as u32,
                total_agents: 0,
                active_agents: 0,
                joining_agents: 0,
                mean_impedance_ms: 0.0,
                p95_impedance_ms: 0.0,
                leads: LeadHistogram::default(),
                hop_ms: 0.0,
                classes: [0; 6],
                anomalies: 0,
                open_breakers: 0,
                breaker_open: false,
                conflicts: ConflictCounts::default(),
                escalated,
                capabilities: Vec::new(),
                capabilities_more: false,
            };
            let mut capable: BTreeMap<String, u32> = BTreeMap::new();
            let mut with_agents = 0.0;
            for c in &mine {
                sum.total_agents = sum.total_agents.saturating_add(c.agent_count);
                sum.active_agents = sum.active_agents.saturating_add(c.active_count);
                sum.joining_agents = sum.joining_agents.saturating_add(c.joining_count);
                if c.active_count > 0 {
                    sum.mean_impedance_ms += c.mean_impedance_ms;
                    with_agents += 1.0;
                }
                sum.p95_impedance_ms = sum.p95_impedance_ms.max(c.p95_impedance_ms);
                let hop = self.hop(Some(&c.lead));
                sum.leads.add(&c.leads);
                sum.hop_ms = sum.hop_ms.max(hop);
                for (into, n) in sum.classes.iter_mut().zip(c.classes) {
                    *into = into.saturating_add(n);
                }
                sum.anomalies = sum.anomalies.saturating_add(c.anomalies);
                sum.open_breakers += u32::from(c.breaker_open);
                sum.conflicts.add(&c.conflicts);
                for k in &c.capabilities {
                    let n = capable.entry(k.name.clone()).or_default();
                    *n = n.saturating_add(k.agents);
                }
                sum.capabilities_more |= c.capabilities_more;
            }
            // (Never more than the agents: a cluster's counts kept from an older summary
            // than its last beat's total.)
            let total = sum.total_agents;
            let capable = capable
                .into_iter()
                .map(|(c, n)| (c, n.min(total)))
                .collect();
            let (counts, more) = qs_wire::mesh::capability_counts(capable);
            sum.capabilities = counts;
            sum.capabilities_more |= more;
            if with_agents > 0.0 {
                sum.mean_impedance_ms /= with_agents;
            }
            sum.joining_agents = sum.joining_agents.min(sum.active_agents);
            sum.breaker_open =
                self.breakers.state(Scope::Sector(s)) == qs_wire::mesh::BreakerState::Open;
            self.summarized.insert(s);
            if let Some(root) = self.tree.root.clone() {
                self.send(root, MeshMessage::Sector(Box::new(sum)));
            }
        }
        if self.is_root {
            let open = self
                .sector_summaries
                .values()
                .filter(|s| s.breaker_open)
                .count();
            self.breakers.open_sectors(open, now);
            let (total, active) = self.global_counts();
            let share = match total {
                0 => 1.0,
                _ => f64::from(active) / f64::from(total),
            };
            // A new root keeps the mode it held until its sectors' summaries count agents
            // (or three summary periods passed: a mesh with no agents is FULL).
            let settling = total == 0
                && self
                    .root_since
                    .is_some_and(|t| now.since(t) < Duration::from_millis(3 * self.cfg.summary_ms));
            if !settling {
                let mode = Mode::from_active_share(share);
                let changed = mode != self.mode;
                self.mode_from_notice = false;
                self.set_mode(mode, active, total);
                self.announce_mode(changed, active, total, now);
            }
            if let Some(last) = self.last_observed {
                let dt = now.since(last).as_millis() as u64;
                self.kpis.observed_ms += dt;
                if share >= 0.95 {
                    self.kpis.available_ms += dt;
                }
            }
            self.last_observed = Some(now);
        }
    }
}
