//! Which node of the fleet serves one request for a model (seed 003, the fleet-wide gateway).
//!
//! Every node's heartbeat says, for each model it holds, its state there and the requests in
//! flight and waiting; the entry point that took the request adds what its own hosts show.
//! [`route`] then decides, the same way on every node:
//! 1. a node where the model is warm (or a shared runtime it reaches): with a session key, the
//!    one rendezvous hashing picks among them, so a conversation keeps its prefix cache;
//!    otherwise the one with the fewest requests outstanding, this node first on a tie;
//! 2. else a node where it is loading already: the fewest outstanding;
//! 3. else a node that holds it and can load it (absent, draining, stopping there): the one with
//!    the most free VRAM on one GPU, then the lowest level (the most authoritative), this node
//!    first on a tie; its scheduler raises the transition and the request waits there in live
//!    stasis;
//! 4. else, when some node holds it but no GPU of the fleet fits even its smallest tier,
//!    [`Route::Unfit`] with its need; when no node knows it, [`Route::Unknown`].
//!
//! Nodes already tried for the request (they could not be reached) are left out.

use crate::hash;
use crate::registry::Registry;
use qs_wire::{ModelState, NodeId, NodeStatus, ServiceName};

/// One node's word on a model, as the router weighs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub node: NodeId,
    /// A node of this process (reached without a hop).
    pub local: bool,
    pub state: ModelState,
    /// Requests in flight on its runtime and waiting for it.
    pub outstanding: u32,
    /// The most VRAM free on one of its GPUs.
    pub free_vram_bytes: u64,
    /// The node's level (0 is the most authoritative).
    pub level: u8,
    /// The VRAM its tier takes there (for an unfit one, its smallest tier's need).
    pub vram_bytes: u64,
}

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    To(NodeId),
    /// Some node holds the model, but no GPU of the fleet fits its smallest tier.
    Unfit {
        need_bytes: u64,
    },
    /// No node of the fleet holds the model.
    Unknown,
}

/// See the module docs.
pub fn route(holders: &[Holder], session: Option<&str>, excluding: &[NodeId]) -> Route {
    let open: Vec<&Holder> = holders
        .iter()
        .filter(|h| !excluding.contains(&h.node))
        .collect();
    let warm: Vec<&Holder> = open
        .iter()
        .copied()
        .filter(|h| matches!(h.state, ModelState::Warm | ModelState::Shared))
        .collect();
    if let Some(key) = session
        && !warm.is_empty()
    {
        let key_hash = hash::of_str(key);
        let best = warm
            .iter()
            .max_by_key(|h| (hash::mix(key_hash ^ hash::of_str(h.node.as_str())), &h.node))
            .expect("not empty");
        return Route::To(best.node.clone());
    }
    let fewest = |pool: &[&Holder]| {
        pool.iter()
            .min_by_key(|h| (h.outstanding, !h.local, &h.node))
            .map(|h| Route::To(h.node.clone()))
    };
    if let Some(r) = fewest(&warm) {
        return r;
    }
    let loading: Vec<&Holder> = open
        .iter()
        .copied()
        .filter(|h| h.state == ModelState::Loading)
        .collect();
    if let Some(r) = fewest(&loading) {
        return r;
    }
    let loadable = open
        .iter()
        .filter(|h| {
            matches!(
                h.state,
                ModelState::Absent | ModelState::Draining | ModelState::Stopping
            )
        })
        .max_by_key(|h| {
            (
                h.free_vram_bytes,
                std::cmp::Reverse(h.level),
                h.local,
                std::cmp::Reverse(&h.node),
            )
        });
    if let Some(h) = loadable {
        return Route::To(h.node.clone());
    }
    match holders
        .iter()
        .filter(|h| h.state == ModelState::Unfit)
        .map(|h| h.vram_bytes)
        .min()
    {
        Some(need_bytes) => Route::Unfit { need_bytes },
        None => Route::Unknown,
    }
}

/// The most VRAM free on one GPU of a node, as its heartbeat says.
pub fn free_vram_bytes(status: &NodeStatus) -> u64 {
    status
        .capacity
        .gpus
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let used = status.load.gpus.get(i).map_or(0, |l| l.vram_used_bytes);
            g.vram_bytes.saturating_sub(used)
        })
        .max()
        .unwrap_or(0)
}

/// The holders of `model` among the live peers of the registry that can be reached (they
/// say their address and entry port, and do not drain), `is_local` ones left out (the
/// entry point knows its own better than their last heartbeat).
pub fn peers(
    registry: &Registry,
    model: &ServiceName,
    is_local: impl Fn(&NodeId) -> bool,
) -> Vec<Holder> {
    registry
        .live_nodes()
        .filter(|s| !is_local(&s.node) && !s.draining && s.address.is_some() && s.entry_port != 0)
        .filter_map(|s| {
            let m = s.models.iter().find(|m| &m.model == model)?;
            Some(Holder {
                node: s.node.clone(),
                local: false,
                state: m.state,
                outstanding: m.in_flight.saturating_add(m.waiting),
                free_vram_bytes: free_vram_bytes(s),
                level: s.level,
                vram_bytes: m.vram_bytes,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(
        node: &str,
        local: bool,
        state: ModelState,
        outstanding: u32,
        free_gib: u64,
    ) -> Holder {
        Holder {
            node: NodeId::new(node).unwrap(),
            local,
            state,
            outstanding,
            free_vram_bytes: free_gib << 30,
            level: 1,
            vram_bytes: 8 << 30,
        }
    }

    fn to(node: &str) -> Route {
        Route::To(NodeId::new(node).unwrap())
    }

    #[test]
    fn a_request_goes_where_its_model_is_warm_then_loading_then_where_vram_is_free() {
        use ModelState::*;
        let cases: Vec<(&str, Vec<Holder>, Route)> = vec![
            (
                "warm beats loading and absent, the fewest outstanding first",
                vec![
                    holder("a", true, Absent, 0, 24),
                    holder("b", false, Warm, 3, 0),
                    holder("c", false, Warm, 1, 0),
                    holder("d", false, Loading, 0, 0),
                ],
                to("c"),
            ),
            (
                "on a tie, this node",
                vec![
                    holder("b", false, Warm, 1, 0),
                    holder("z", true, Warm, 1, 0),
                ],
                to("z"),
            ),
            (
                "a shared runtime counts as warm",
                vec![
                    holder("a", true, Absent, 0, 24),
                    holder("s", false, Shared, 5, 0),
                ],
                to("s"),
            ),
            (
                "none warm: join a load under way",
                vec![
                    holder("a", true, Absent, 0, 24),
                    holder("b", false, Loading, 2, 4),
                ],
                to("b"),
            ),
            (
                "none warm or loading: the most free VRAM",
                vec![
                    holder("a", true, Absent, 0, 8),
                    holder("b", false, Draining, 0, 20),
                    holder("c", false, Absent, 0, 12),
                ],
                to("b"),
            ),
            (
                "equal VRAM: this node",
                vec![
                    holder("b", false, Absent, 0, 20),
                    holder("c", true, Absent, 0, 20),
                ],
                to("c"),
            ),
            (
                "only unfit: its need",
                vec![
                    Holder {
                        vram_bytes: 90 << 30,
                        ..holder("a", true, Unfit, 0, 24)
                    },
                    Holder {
                        vram_bytes: 80 << 30,
                        ..holder("b", false, Unfit, 0, 24)
                    },
                    holder("c", false, Failed, 0, 24),
                ],
                Route::Unfit {
                    need_bytes: 80 << 30,
                },
            ),
            ("nobody holds it", vec![], Route::Unknown),
        ];
        for (what, holders, want) in cases {
            assert_eq!(route(&holders, None, &[]), want, "{what}");
        }
    }

    #[test]
    fn a_node_that_could_not_be_reached_is_passed_over() {
        use ModelState::*;
        let holders = vec![
            holder("b", false, Warm, 0, 0),
            holder("c", false, Warm, 4, 0),
        ];
        let b = NodeId::new("b").unwrap();
        assert_eq!(route(&holders, None, &[]), to("b"));
        assert_eq!(route(&holders, None, std::slice::from_ref(&b)), to("c"));
        let c = NodeId::new("c").unwrap();
        assert_eq!(route(&holders, None, &[b, c]), Route::Unknown);
    }

    #[test]
    fn a_session_keeps_to_one_warm_node_and_sessions_spread() {
        use ModelState::*;
        let holders: Vec<Holder> = ["n1", "n2", "n3", "n4"]
            .iter()
            .map(|n| holder(n, false, Warm, 0, 0))
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for s in 0..64 {
            let key = format!("conversation-{s}");
            let first = route(&holders, Some(&key), &[]);
            // Load elsewhere changes nothing for it.
            let mut busier = holders.clone();
            for h in &mut busier {
                h.outstanding = 9;
            }
            assert_eq!(route(&busier, Some(&key), &[]), first, "{key}");
            seen.insert(format!("{first:?}"));
        }
        assert_eq!(seen.len(), 4, "64 sessions use every warm node");
        // When its node leaves, a session moves; the others stay where they were.
        let without_n1: Vec<Holder> = holders[1..].to_vec();
        for s in 0..64 {
            let key = format!("conversation-{s}");
            let before = route(&holders, Some(&key), &[]);
            let after = route(&without_n1, Some(&key), &[]);
            if before != to("n1") {
                assert_eq!(before, after, "{key} stays");
            }
        }
    }
}
