//! Nodes come into leadership gradually (seed §10.2): a node that joins a running mesh is
//! [`Seniority::New`] for its first [`LEAD_AFTER_MS`], and the hierarchy elects it only
//! where no seasoned node can be. The founders, which joined within the first node's
//! lead-after time of it, are seasoned at once, so a fleet that starts together elects once.

use qs_wire::NodeId;
use std::collections::BTreeMap;

/// How long a node that joins a running mesh waits before it may lead.
pub const LEAD_AFTER_MS: u64 = 10_000;

/// A node as an election sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Seniority {
    /// Not live: never elected.
    Down,
    /// Live, and in the mesh for less than the lead-after time: elected only where no
    /// seasoned node can be.
    New,
    Seasoned,
}

impl Seniority {
    /// A node's seniority, from when it joined (`joined`) and when the mesh's first live node
    /// did (`first`): a founder if it joined within the first node's lead-after time of it,
    /// else new until its own lead-after time passed. (The same clock: every node reads both
    /// from the membership, so every node computes the same tree, up to the clocks' skew at
    /// the moment a node comes of age.)
    pub fn of(live: bool, joined: Joined, first: Joined, now_ms: u64) -> Self {
        let window_ms = first.since_ms.saturating_add(first.lead_after_ms);
        let founder = joined.since_ms <= window_ms;
        let aged = now_ms >= joined.since_ms.saturating_add(joined.lead_after_ms);
        match (live, founder || aged) {
            (false, _) => Seniority::Down,
            (true, false) => Seniority::New,
            (true, true) => Seniority::Seasoned,
        }
    }

    /// Live or down, for a mesh where every node is seasoned (tests, a fleet started
    /// together).
    pub fn live(live: bool) -> Self {
        match live {
            true => Seniority::Seasoned,
            false => Seniority::Down,
        }
    }
}

/// When a node joined the mesh, and how long it waits before it may lead, as its
/// membership record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Joined {
    pub since_ms: u64,
    pub lead_after_ms: u64,
}

/// Each live node's seniority; the first node is the earliest live one. A node not in the
/// map is down. Each node's lead-after time is read from its record, so nodes that were
/// given different ones still compute the same tree.
pub fn seniorities<'a>(
    live: impl Iterator<Item = (&'a NodeId, Joined)>,
    now_ms: u64,
) -> BTreeMap<NodeId, Seniority> {
    let joined: BTreeMap<&NodeId, Joined> = live.collect();
    let Some(first) = joined
        .values()
        .min_by_key(|j| (j.since_ms, j.lead_after_ms))
        .copied()
    else {
        return BTreeMap::new();
    };
    joined
        .into_iter()
        .map(|(n, j)| (n.clone(), Seniority::of(true, j, first, now_ms)))
        .collect()
}

/// A node's seniority as `seniorities` says it: down when it is not in the map.
pub fn seniority_in(m: &BTreeMap<NodeId, Seniority>) -> impl Fn(&NodeId) -> Seniority + '_ {
    |n| m.get(n).copied().unwrap_or(Seniority::Down)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_new_in_a_running_mesh_and_seasoned_after_a_while() {
        const AFTER: u64 = 10_000;
        let at = |since_ms| Joined {
            since_ms,
            lead_after_ms: AFTER,
        };
        // (live, joined, the first node, now, seniority)
        let table = [
            (false, at(0), at(0), 99_000, Seniority::Down),
            // The founders: within the lead-after time of the first node.
            (true, at(0), at(0), 0, Seniority::Seasoned),
            (true, at(10_000), at(0), 10_000, Seniority::Seasoned),
            // A node that joins a running mesh, until it comes of age.
            (true, at(10_001), at(0), 10_001, Seniority::New),
            (true, at(50_000), at(0), 59_999, Seniority::New),
            (true, at(50_000), at(0), 60_000, Seniority::Seasoned),
            // A clock far ahead makes only its own node new (no overflow).
            (true, at(u64::MAX), at(0), 60_000, Seniority::New),
            // The founders' window is the first node's: a long lead-after time of its own
            // makes a late node no founder.
            (
                true,
                Joined {
                    since_ms: 50_000,
                    lead_after_ms: 3_600_000,
                },
                at(0),
                60_000,
                Seniority::New,
            ),
        ];
        for (live, joined, first, now, want) in table {
            assert_eq!(
                Seniority::of(live, joined, first, now),
                want,
                "{live} {joined:?} {first:?} {now}"
            );
        }
        // The founding time is the earliest live node's.
        let (a, b, c) = (
            NodeId::new("a").unwrap(),
            NodeId::new("b").unwrap(),
            NodeId::new("c").unwrap(),
        );
        let live = [(&a, at(5_000)), (&b, at(12_000)), (&c, at(40_000))];
        let s = seniorities(live.into_iter(), 45_000);
        assert_eq!(
            s.values().copied().collect::<Vec<_>>(),
            [Seniority::Seasoned, Seniority::Seasoned, Seniority::New]
        );
    }
}
