//! Scale-out on the simulator (seed §10.2, "adding 1,000 new agents"): new hosts with new
//! agents start in a running mesh, the hierarchy takes them in, and their cluster leads add
//! them to the routing pool as the core decides; the run samples every beat which of them
//! are in the pool, to show it happened gradually.

use qs_core::Time;
use qs_core::mesh::{Hierarchy, MeshNode};
use qs_wire::NodeId;
use qs_wire::mesh::{AgentId, ClusterId};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// New agents that join the running mesh at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScaleOut {
    pub at_ms: u64,
    pub agents: usize,
}

/// How a scale-out's agents entered the routing pool.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Integration {
    pub agents: usize,
    pub hosts: usize,
    pub at_ms: u64,
    /// In the pool at the end.
    pub admitted: usize,
    /// From the join to the first, and to the last, of them in the pool.
    pub first_admitted_after_ms: Option<u64>,
    pub all_admitted_after_ms: Option<u64>,
    /// The most of them out of the pool again at one sample, having been in it (a new lead
    /// that measures them afresh).
    pub most_out_again: usize,
    /// The most of them one cluster added in one beat.
    pub max_admitted_per_cluster_per_beat: usize,
    /// From the join to when the hierarchy first made one of the new hosts the lead of a
    /// cluster that an older host could have led (new nodes lead there only once
    /// seasoned; a cluster of new hosts only has one of them as its lead at once). `None`:
    /// none did in the run.
    pub first_lead_after_ms: Option<u64>,
    /// (ms after the join, how many were in the pool), one per beat until all were.
    pub timeline: Vec<(u64, usize)>,
}

/// What the run keeps while the new agents integrate.
#[derive(Clone, Debug)]
pub(super) struct Tracker {
    pub joined_at: Option<Time>,
    pub hosts: Vec<usize>,
    pub agents: BTreeSet<AgentId>,
    pub admitted: BTreeSet<AgentId>,
    pub report: Integration,
}

impl Tracker {
    pub fn new(at_ms: u64, hosts: Vec<usize>, agents: BTreeSet<AgentId>) -> Tracker {
        let report = Integration {
            agents: agents.len(),
            hosts: hosts.len(),
            at_ms,
            ..Integration::default()
        };
        Tracker {
            joined_at: None,
            hosts,
            agents,
            admitted: BTreeSet::new(),
            report,
        }
    }

    /// The hierarchy was computed again: whether one of the new hosts leads a cluster with
    /// older hosts now.
    pub fn elected(&mut self, tree: &Hierarchy, nodes: &[MeshNode], now: Time) {
        let Some(joined) = self.joined_at else {
            return;
        };
        if self.report.first_lead_after_ms.is_some() {
            return;
        }
        let new: BTreeSet<&NodeId> = self.hosts.iter().map(|h| nodes[*h].id()).collect();
        if tree.clusters.iter().any(|c| {
            c.lead.as_ref().is_some_and(|l| new.contains(l))
                && c.hosts.iter().any(|h| !new.contains(h))
        }) {
            self.report.first_lead_after_ms = Some(now.since(joined).as_millis() as u64);
        }
    }

    /// The new agents now in the pool, as the leads among the live `nodes` say; `true` while
    /// some are still out.
    pub fn sample<'a>(&mut self, nodes: impl Iterator<Item = &'a MeshNode>, now: Time) -> bool {
        let Some(joined) = self.joined_at else {
            return false;
        };
        let after_ms = now.since(joined).as_millis() as u64;
        // Per lead and cluster: where the lead changed since the last sample, the former
        // and the new one each admitted at their own beats.
        let mut per_cluster: BTreeMap<(&NodeId, ClusterId), usize> = BTreeMap::new();
        let mut in_pool = 0;
        for n in nodes {
            for (c, a) in n.pool() {
                if !self.agents.contains(&a) {
                    continue;
                }
                in_pool += 1;
                if self.admitted.insert(a) {
                    *per_cluster.entry((n.id(), c)).or_default() += 1;
                }
            }
        }
        let out_again = self.admitted.len().saturating_sub(in_pool);
        self.report.most_out_again = self.report.most_out_again.max(out_again);
        let r = &mut self.report;
        let most = per_cluster.values().copied().max().unwrap_or(0);
        r.max_admitted_per_cluster_per_beat = r.max_admitted_per_cluster_per_beat.max(most);
        r.admitted = self.admitted.len();
        if r.admitted > 0 && r.first_admitted_after_ms.is_none() {
            r.first_admitted_after_ms = Some(after_ms);
        }
        r.timeline.push((after_ms, r.admitted));
        if r.admitted == r.agents {
            r.all_admitted_after_ms = Some(after_ms);
            return false;
        }
        true
    }
}
