//! The mesh simulator's membership: a host killed (its death confirmed by the fleet's
//! detector 2 s later), a scale-out's hosts joining the running mesh and sampled into the
//! routing pool, and the hierarchy every live node computes again from the live members.

use super::*;

impl MeshSim {
    /// Host `h` dies at once.
    pub(super) fn kill(&mut self, h: usize) {
        let now = self.now;
        self.dead[h] = true;
        self.killed_at.insert(h, now);
        // The fleet's own failure detector confirms a death (here after 2 s); then
        // every node computes the hierarchy again (new leads).
        self.push(now + Duration::from_millis(2_000), Event::Elect);
    }

    /// A scale-out's hosts start.
    pub(super) fn join(&mut self) {
        let now = self.now;
        let Some(so) = self.scale_out.as_mut() else {
            return;
        };
        so.joined_at = Some(now);
        let hosts = so.hosts.clone();
        for h in hosts {
            self.dead[h] = false;
            self.since_ms[h] = now.as_millis();
            for a in self.host_agents[h].clone() {
                self.agents[a].joined_ms = now.as_millis();
            }
            let beats = self.beats_of(h);
            self.nodes[h].handle(MeshInput::Agents(beats), now);
            if let Some(rules) = self.stored_rules.clone() {
                self.nodes[h].handle(MeshInput::Rules(rules), now);
            }
            self.schedule_wake(h);
        }
        // The membership hears of them: every node computes the hierarchy again,
        // and again when they come of age and may lead.
        self.push(now, Event::Elect);
        self.push(now + Duration::from_millis(LEAD_AFTER_MS), Event::Elect);
        self.push(now, Event::Sample);
    }

    /// Which of a scale-out's agents are in the routing pool, again each beat until all are.
    pub(super) fn sample(&mut self) {
        let now = self.now;
        let Some(mut so) = self.scale_out.take() else {
            return;
        };
        if so.sample(self.live_nodes(), now) {
            let beat = Duration::from_millis(MeshConfig::default().beat_ms);
            self.push(now + beat, Event::Sample);
        }
        self.scale_out = Some(so);
    }

    /// The membership changed: every live node computes the hierarchy again.
    pub(super) fn elect(&mut self) {
        let now = self.now;
        let dead = self.dead.clone();
        let index = self.index.clone();
        let members: Vec<Member> = self
            .members
            .iter()
            .filter(|m| !dead[index[&m.host]])
            .cloned()
            .collect();
        let live = (0..dead.len()).filter(|h| !dead[*h]).map(|h| {
            let joined = Joined {
                since_ms: self.since_ms[h],
                lead_after_ms: LEAD_AFTER_MS,
            };
            (self.nodes[h].id(), joined)
        });
        let seniorities = seniorities(live, now.as_millis());
        let tree = Hierarchy::build(&members, Shape::default(), seniority_in(&seniorities))
            .expect("fewer agents than before");
        if let Some(so) = self.scale_out.as_mut() {
            so.elected(&tree, &self.nodes, now);
        }
        self.tree = Arc::new(tree);
        for i in 0..self.nodes.len() {
            if !self.dead[i] {
                self.nodes[i].handle(MeshInput::Tree(self.tree.clone()), now);
                self.drain(i);
            }
        }
    }
}
