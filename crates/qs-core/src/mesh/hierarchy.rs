//! The hierarchy (seed §2.1): the root, sectors of clusters, clusters of agents, at most
//! [`MAX_CHILDREN`] children per parent, computed the same way by every node from the same
//! membership, so nothing is configured by hand.
//!
//! - A host's agents go to one cluster when they fit: the cluster is a jump consistent hash
//!   (Lamping and Veach) of the host over the cluster count, so when agents come and go only
//!   about `1/C` of hosts move. A full cluster (100 agents) spills to the host's next choice.
//! - Clusters `s·k .. s·k + k` form sector `s`.
//! - Zones (seed §2.1's local clusters and regional sectors): a member may name its host's
//!   zone. Each zone then has clusters and sectors of its own (its hosts hash over its
//!   clusters only), so an agent's lead and its lead's coordinator are in its zone, and only
//!   the root's hops cross zones. A zone has a power of two of clusters (half to all of
//!   them full), so clusters are numbered anew only when a zone doubles or halves. The
//!   zones after it keep their clusters' agents and, as elections are keyed by a cluster's
//!   zone and place in it, their leads, which keep what they knew of each agent. Zones
//!   that do not fit (more than 100, or more clusters than the tree holds) are ignored: one
//!   tree as without them.
//! - The lead of a cluster is the live host of its agents with the highest rendezvous score
//!   for the cluster's key (its zone and place in it); a sector's coordinator is the
//!   highest-scoring live lead of its clusters; the root the highest-scoring coordinator. A
//!   lead's death elects the next.
//! - Nodes come into leadership gradually ([`super::seniority`]): an election takes the best
//!   seniority there is, so a node new to a running mesh leads only where no seasoned host
//!   can (a cluster of new hosts only).

use super::seniority::Seniority;
use crate::hash::{mix, of_str, rendezvous};
use qs_wire::NodeId;
use qs_wire::mesh::{AgentId, ClusterId, MAX_CHILDREN, Scope, SectorId};
use std::collections::{BTreeMap, BTreeSet};

/// Most agents the hierarchy holds: 100 sectors × 100 clusters × 100 agents.
pub const MAX_AGENTS: usize = MAX_CHILDREN * MAX_CHILDREN * MAX_CHILDREN;

/// The sizes the hierarchy aims at (seed §2.1: 30 agents per cluster, 10 clusters per
/// sector); each grows when the mesh outgrows 100 sectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub cluster_agents: u32,
    pub sector_clusters: u32,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            cluster_agents: 30,
            sector_clusters: 10,
        }
    }
}

/// An agent, the node it is registered with, and that node's zone (empty: none named).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    pub agent: AgentId,
    pub host: NodeId,
    pub zone: String,
}

/// The agents of one zone (or of all, when zones are ignored), and the clusters they take.
struct Group<'a> {
    members: Vec<&'a Member>,
    first_cluster: u32,
    clusters: u32,
    /// A hash of its zone's name (0: zones ignored): elections are keyed by it and the
    /// cluster's or sector's place in the zone, not by its number in the whole tree.
    zone_key: u64,
}

/// One cluster.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    pub sector: SectorId,
    pub agents: Vec<AgentId>,
    /// Hosts of its agents, in order.
    pub hosts: Vec<NodeId>,
    pub lead: Option<NodeId>,
    /// Its election's key: its zone and its place in the zone, so when another zone
    /// doubles and this cluster is numbered anew, its lead stays.
    pub key: u64,
}

/// One sector.
#[derive(Clone, Debug, Default)]
pub struct Sector {
    pub clusters: Vec<ClusterId>,
    pub coordinator: Option<NodeId>,
    /// Its election's key, as a cluster's.
    pub key: u64,
}

/// The whole tree.
#[derive(Clone, Debug, Default)]
pub struct Hierarchy {
    pub clusters: Vec<Cluster>,
    pub sectors: Vec<Sector>,
    pub root: Option<NodeId>,
    placed: BTreeMap<AgentId, ClusterId>,
    host_of: BTreeMap<AgentId, NodeId>,
}

/// Too many agents for the hierarchy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{agents} agents; the hierarchy holds at most {MAX_AGENTS}")]
pub struct TooMany {
    pub agents: usize,
}

/// Jump consistent hash: a bucket in `0..buckets` for `key`.
pub fn jump(mut key: u64, buckets: u32) -> u32 {
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b.max(0) as u32
}

impl Hierarchy {
    /// Builds the tree over `members` (any order), electing leads by each host's
    /// `seniority`.
    pub fn build(
        members: &[Member],
        shape: Shape,
        seniority: impl Fn(&NodeId) -> Seniority,
    ) -> Result<Hierarchy, TooMany> {
        let n = members.len();
        if n > MAX_AGENTS {
            return Err(TooMany { agents: n });
        }
        let per_cluster = u64::from(shape.cluster_agents.clamp(1, MAX_CHILDREN as u32));
        let mut sorted: Vec<&Member> = members.iter().collect();
        // An agent two hosts claim is placed under neither: a host cannot take another's
        // agent (its work, and the answers its lead takes only from its host) by naming
        // it. (An agent's id hashes its host's: no two hosts have one by right.)
        sorted.sort_by_key(|m| (m.agent, m.host.clone()));
        sorted.dedup_by(|a, b| a.agent == b.agent && a.host == b.host);
        let contested: BTreeSet<AgentId> = sorted
            .windows(2)
            .filter(|w| w[0].agent == w[1].agent)
            .map(|w| w[0].agent)
            .collect();
        sorted.retain(|m| !contested.contains(&m.agent));
        sorted.sort_by_key(|m| (of_str(m.host.as_str()), m.host.clone(), m.agent));
        let (groups, sector_clusters) = plan(sorted, per_cluster, shape.sector_clusters);
        let c: u32 = groups.iter().map(|g| g.clusters).sum();
        let mut h = Hierarchy {
            clusters: vec![Cluster::default(); c as usize],
            ..Hierarchy::default()
        };
        for g in &groups {
            let first = g.first_cluster;
            for m in &g.members {
                let host_hash = of_str(m.host.as_str());
                let room = |h: &Hierarchy, k: u32| {
                    h.clusters[(first + k) as usize].agents.len() < MAX_CHILDREN
                };
                let mut attempt = 0u64;
                let cluster = loop {
                    let k = match attempt < 64 {
                        true => jump(mix(host_hash.wrapping_add(attempt)), g.clusters),
                        // Crowded: the group's first cluster with room (there is one: each
                        // group has a cluster per 100 of its agents at least).
                        false => (0..g.clusters).find(|k| room(&h, *k)).unwrap_or(0),
                    };
                    if attempt >= 64 || room(&h, k) {
                        break first + k;
                    }
                    attempt += 1;
                };
                let cl = &mut h.clusters[cluster as usize];
                cl.agents.push(m.agent);
                if cl.hosts.last() != Some(&m.host) {
                    cl.hosts.push(m.host.clone());
                }
                h.placed.insert(m.agent, ClusterId(cluster));
                h.host_of.insert(m.agent, m.host.clone());
            }
            // The group's clusters, `sector_clusters` to a sector: no sector spans zones.
            for i in first..first + g.clusters {
                let local = u64::from(i - first);
                if local % u64::from(sector_clusters) == 0 {
                    let key = local / u64::from(sector_clusters);
                    h.sectors.push(Sector {
                        key: mix(0x7365_6374 ^ key ^ g.zone_key),
                        ..Sector::default()
                    });
                }
                let s = h.sectors.len() - 1;
                let cl = &mut h.clusters[i as usize];
                cl.sector = SectorId(s as u32);
                cl.key = mix(0x636c_7573 ^ local ^ g.zone_key);
                h.sectors[s].clusters.push(ClusterId(i));
            }
        }
        h.elect(seniority);
        Ok(h)
    }

    /// Elects leads, coordinators and the root again by each node's seniority (a lead died,
    /// a node came of age): at each level, the best seasoned node, else the best new one.
    pub fn elect(&mut self, seniority: impl Fn(&NodeId) -> Seniority) {
        for cl in &mut self.clusters {
            cl.lead = best(cl.key, cl.hosts.iter(), &seniority);
        }
        for s in &mut self.sectors {
            let leads: BTreeSet<&NodeId> = s
                .clusters
                .iter()
                .filter_map(|c| self.clusters[c.0 as usize].lead.as_ref())
                .collect();
            s.coordinator = best(s.key, leads.into_iter(), &seniority);
        }
        let coordinators: BTreeSet<&NodeId> = self
            .sectors
            .iter()
            .filter_map(|s| s.coordinator.as_ref())
            .collect();
        self.root = best(0x726f_6f74, coordinators.into_iter(), &seniority);
    }

    pub fn cluster_of(&self, agent: AgentId) -> Option<ClusterId> {
        self.placed.get(&agent).copied()
    }

    pub fn host_of(&self, agent: AgentId) -> Option<&NodeId> {
        self.host_of.get(&agent)
    }

    /// Whether `scope` holds cluster `c` (the whole mesh, its sector, or itself).
    pub fn holds(&self, scope: Scope, c: ClusterId) -> bool {
        match scope {
            Scope::Global => true,
            Scope::Sector(s) => self.cluster(c).is_some_and(|x| x.sector == s),
            Scope::Cluster(x) => x == c,
        }
    }

    /// The node this tree names to speak for `scope`: a cluster's lead, a sector's
    /// coordinator (none for the whole mesh, which nothing below the root speaks for).
    pub fn named_for(&self, scope: Scope) -> Option<&NodeId> {
        match scope {
            Scope::Cluster(c) => self.cluster(c).and_then(|x| x.lead.as_ref()),
            Scope::Sector(s) => self.sector(s).and_then(|x| x.coordinator.as_ref()),
            Scope::Global => None,
        }
    }

    /// The coordinator of cluster `c`'s sector.
    pub fn coordinator_of(&self, c: ClusterId) -> Option<&NodeId> {
        self.cluster(c)
            .and_then(|x| self.named_for(Scope::Sector(x.sector)))
    }

    /// Whether `lead` is the one this tree names for cluster `c`, of sector `s` (what a
    /// cluster's summary says of itself).
    pub fn leads_in(&self, lead: &NodeId, c: ClusterId, s: SectorId) -> bool {
        self.named_for(Scope::Cluster(c)) == Some(lead)
            && self.cluster(c).is_some_and(|x| x.sector == s)
    }

    pub fn cluster(&self, c: ClusterId) -> Option<&Cluster> {
        self.clusters.get(c.0 as usize)
    }

    pub fn sector(&self, s: SectorId) -> Option<&Sector> {
        self.sectors.get(s.0 as usize)
    }

    pub fn agents(&self) -> usize {
        self.placed.len()
    }

    /// Clusters `node` leads.
    pub fn led_by<'a>(&'a self, node: &'a NodeId) -> impl Iterator<Item = ClusterId> + 'a {
        self.clusters
            .iter()
            .enumerate()
            .filter(move |(_, c)| c.lead.as_ref() == Some(node))
            .map(|(i, _)| ClusterId(i as u32))
    }

    /// Sectors `node` coordinates.
    pub fn coordinated_by<'a>(&'a self, node: &'a NodeId) -> impl Iterator<Item = SectorId> + 'a {
        self.sectors
            .iter()
            .enumerate()
            .filter(move |(_, s)| s.coordinator.as_ref() == Some(node))
            .map(|(i, _)| SectorId(i as u32))
    }

    /// Clusters a host has agents in, with those agents.
    pub fn clusters_of_host(&self, host: &NodeId) -> BTreeMap<ClusterId, Vec<AgentId>> {
        let mut out: BTreeMap<ClusterId, Vec<AgentId>> = BTreeMap::new();
        for (agent, h) in &self.host_of {
            if h == host
                && let Some(c) = self.placed.get(agent)
            {
                out.entry(*c).or_default().push(*agent);
            }
        }
        out
    }
}

/// The groups (a zone each, or one for all) with their clusters, and how many clusters
/// make a sector: clusters of about `per_cluster` agents (at most 10,000 of them, which then
/// grow to 100 agents), at most 100 sectors.
fn plan(sorted: Vec<&Member>, per_cluster: u64, sector_clusters: u32) -> (Vec<Group<'_>>, u32) {
    let max_clusters = (MAX_CHILDREN * MAX_CHILDREN) as u64;
    let wanted = |n: usize| (n as u64).div_ceil(per_cluster).max(1);
    let sectors_of =
        |clusters: &[u64], k: u64| -> u64 { clusters.iter().map(|c| c.div_ceil(k)).sum() };
    let sector_clusters = u64::from(sector_clusters.clamp(1, MAX_CHILDREN as u32));
    let mut zones: BTreeMap<&str, Vec<&Member>> = BTreeMap::new();
    for m in &sorted {
        zones.entry(m.zone.as_str()).or_default().push(*m);
    }
    if zones.len() > 1 && zones.len() <= MAX_CHILDREN {
        // A power of two per zone: a zone's count (and the numbers of the zones after it)
        // changes only when it doubles or halves, not each time a host comes or goes.
        let clusters: Vec<u64> = zones
            .values()
            .map(|m| wanted(m.len()).next_power_of_two())
            .collect();
        if clusters.iter().sum::<u64>() <= max_clusters {
            // The smallest sector size that keeps to 100 sectors (one per zone fits).
            let k = (sector_clusters..=max_clusters)
                .find(|k| sectors_of(&clusters, *k) <= MAX_CHILDREN as u64)
                .unwrap_or(max_clusters);
            let mut first = 0u32;
            let groups = zones
                .into_iter()
                .zip(clusters)
                .map(|((zone, members), c)| {
                    let g = Group {
                        members,
                        first_cluster: first,
                        clusters: c as u32,
                        zone_key: of_str(zone),
                    };
                    first += c as u32;
                    g
                })
                .collect();
            return (groups, k as u32);
        }
    }
    // One tree: past 10,000 clusters, clusters grow instead (to at most 100 agents).
    let clusters = wanted(sorted.len()).min(max_clusters);
    let k = match clusters.div_ceil(sector_clusters) > MAX_CHILDREN as u64 {
        true => clusters.div_ceil(MAX_CHILDREN as u64),
        false => sector_clusters,
    };
    let group = Group {
        members: sorted,
        first_cluster: 0,
        clusters: clusters as u32,
        zone_key: 0,
    };
    (vec![group], k as u32)
}

/// The highest rendezvous score for `key` among the nodes of the best seniority there is.
fn best<'a>(
    key: u64,
    nodes: impl Iterator<Item = &'a NodeId>,
    seniority: impl Fn(&NodeId) -> Seniority,
) -> Option<NodeId> {
    nodes
        .map(|n| (seniority(n), n))
        .filter(|(s, _)| *s != Seniority::Down)
        .max_by_key(|(s, n)| (*s, rendezvous(key, of_str(n.as_str())), (*n).clone()))
        .map(|(_, n)| n.clone())
}

#[cfg(test)]
mod tests;
