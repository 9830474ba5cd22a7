//! A new hierarchy at this node: its roles in it (led clusters, sectors, the root), what it
//! knew of the agents it leads again, and the views and conflicts of those another node
//! leads now, handed over.

use super::*;

impl MeshNode {
    /// Takes `tree` as the hierarchy from `now` on.
    pub(super) fn set_tree(&mut self, tree: Arc<Hierarchy>, now: Time) {
        let unknown_until = now + Duration::from_millis(self.cfg.dead_after_ms);
        let mut led = BTreeMap::new();
        // What this node knew of each agent and host it led, whatever the cluster: an
        // agent it leads again in another cluster (numbered anew when another zone doubled,
        // or its host moved) keeps its view, and its host its link.
        let mut old = std::mem::take(&mut self.led);
        let mut views: BTreeMap<AgentId, AgentView> = BTreeMap::new();
        let mut links: BTreeMap<NodeId, HostLink> = BTreeMap::new();
        for l in old.values_mut() {
            views.append(&mut l.agents);
            links.append(&mut l.hosts);
        }
        for c in tree.led_by(&self.me) {
            let cluster = tree.cluster(c).expect("led clusters exist");
            let mut l = old.remove(&c).unwrap_or_default();
            l.sector = cluster.sector;
            l.active = None;
            // Views may have moved between clusters: the next crash pass looks at all.
            l.crash_watch = true;
            // The coordinator may be new: the next beat carries a full summary.
            l.summary = None;
            for a in &cluster.agents {
                let Some(host) = tree.host_of(*a) else {
                    continue;
                };
                if !l.hosts.contains_key(host)
                    && let Some(link) = links.get(host)
                {
                    l.hosts.insert(host.clone(), link.clone());
                }
                match views.remove(a).filter(|v| v.host == *host) {
                    Some(view) => {
                        l.integrating |= !view.admitted;
                        l.unknown_until = l.unknown_until.max(view.unknown_until);
                        l.agents.insert(*a, view);
                    }
                    None => {
                        l.integrating = true;
                        l.unknown_until = Some(unknown_until);
                        l.agents.insert(
                            *a,
                            AgentView {
                                host: host.clone(),
                                state: AgentState::Offline,
                                work: Work::default(),
                                capabilities: Vec::new(),
                                revoked: Vec::new(),
                                spiking: false,
                                disagreements: 0,
                                joined_ms: 0,
                                joined_host_ms: 0,
                                admitted: false,
                                held_until: None,
                                missed: 0,
                                last_answer: None,
                                probe: None,
                                unknown_until: Some(unknown_until),
                                crash: Default::default(),
                                busy: None,
                            },
                        );
                    }
                }
            }
            led.insert(c, l);
        }
        self.led = led;
        // What is left is led by other nodes now: they hear what this one knew.
        self.hand_over(views, &tree, now);
        // Open conflicts stay with the agents this node still leads, and with the root,
        // which hears an urgent operation's answers; the others go to their agents' new
        // leads with the handovers.
        let root_now = tree.root.as_ref() == Some(&self.me);
        let led_now = &self.led;
        let left = self.conflicts.leave(|a| {
            let c = tree.cluster_of(a)?;
            (root_now || led_now.contains_key(&c)).then_some(c)
        });
        self.hand_over_conflicts(left, &tree, now);
        let mine: BTreeSet<SectorId> = tree.coordinated_by(&self.me).collect();
        self.my_sectors = mine.iter().copied().collect();
        self.late_for_root.retain(|s, _| mine.contains(s));
        self.handed_taken.clear();
        self.summarized.clear();
        let was_root = self.is_root;
        self.is_root = root_now;
        if tree.root != self.tree.root {
            // Another root, another clock: its notices and controls are numbered afresh.
            self.mode_seen_ms = None;
            self.freezes_on_new_root();
        }
        if self.is_root && !was_root {
            // A mode the former root's notices said holds until the summaries of this
            // hierarchy say the mesh's (no change is told that did not happen); one it
            // computed when it was the root before says nothing now.
            self.root_since = Some(now);
            self.freezes_as_root();
            self.rules_as_root();
            if !self.mode_from_notice {
                let (active, total) = self.mode_counts;
                self.set_mode(Mode::Full, active, total);
            }
        }
        if was_root && !self.is_root {
            // The mode it computed holds as a notice would: until the new root's renew it,
            // or it lapses.
            self.mode_heard = Some(now);
        }
        // Summaries from the leads of this hierarchy only: a cluster's number may name other
        // agents now, and an empty cluster has no lead to replace what it said.
        self.cluster_summaries
            .retain(|c, s| mine.contains(&s.sector) && tree.leads_in(&s.lead, *c, s.sector));
        self.lead_heard
            .retain(|c, _| tree.cluster(*c).is_some_and(|cl| mine.contains(&cl.sector)));

        if !root_now {
            self.sector_summaries.clear();
            self.coordinator_heard.clear();
        }
        self.sector_summaries
            .retain(|s, x| tree.named_for(Scope::Sector(*s)) == Some(&x.coordinator));
        self.tree_before = Some(std::mem::replace(&mut self.tree, tree));
        self.tree_changed_at = now;
    }
}
