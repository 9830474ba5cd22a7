//! A node's part in the conflict log (seed §5.1): an agent's CONFLICT logged where its
//! answer is heard (its agent quarantined for an integrity failure), resolved when the agent
//! accepts the same content later, and, at the root, the mesh's unresolved count.

use super::*;

impl MeshNode {
    /// At the root: the mesh's unresolved conflicts, as the sector summaries count them, and
    /// those the root heard itself (an urgent operation's answers) of clusters it does not
    /// lead (those it leads are in its own summary).
    pub fn mesh_conflicts(&self, now: Time) -> Option<ConflictCounts> {
        if !self.is_root {
            return None;
        }
        let mut sum = self.conflicts.counts(now, |c| !self.led.contains_key(&c));
        for s in self.sector_summaries.values() {
            sum.add(&s.conflicts);
        }
        Some(sum)
    }

    /// An agent's CONFLICT over the content `content_hash`: logged, and its agent
    /// quarantined for an integrity failure. The record, for escalation.
    pub(crate) fn conflict(
        &mut self,
        ack: &Ack,
        content_hash: &str,
        now: Time,
    ) -> Option<conflict::Record> {
        let detail = ack.conflict.clone()?;
        let heard = conflict::Heard {
            op: ack.op,
            agent: ack.agent,
            cluster: ack.cluster,
            content_hash: content_hash.to_owned(),
            detail,
        };
        let r = self.conflicts.record(heard, now);
        if let Some(led) = self.led.get_mut(&ack.cluster)
            && r.class == conflict::Class::IntegrityFailure
            && let Some(v) = led.agents.get_mut(&ack.agent)
        {
            // Seed §6.1 context corruption: quarantine the agent.
            v.state = AgentState::Quarantined;
            led.active = None;
        }
        self.out.push_back(MeshOutput::Conflict(r.clone()));
        Some(r)
    }

    /// An agent answered READY to the content `content_hash`: what it contradicted of it
    /// before is resolved, and so is the capability mismatch (its number `rerouted`) whose
    /// work it took, if it took one (seed §5.1's REROUTE).
    pub(crate) fn agreed(
        &mut self,
        agent: AgentId,
        content_hash: &str,
        rerouted: Option<u64>,
        now: Time,
    ) {
        let mut done = self.conflicts.agreed(agent, content_hash, now);
        if let Some(seq) = rerouted {
            done.extend(self.conflicts.rerouted(seq, now));
        }
        self.resolved(done);
    }

    pub(crate) fn resolved(&mut self, resolved: Vec<conflict::Resolved>) {
        self.out
            .extend(resolved.into_iter().map(MeshOutput::ConflictResolved));
    }
}
