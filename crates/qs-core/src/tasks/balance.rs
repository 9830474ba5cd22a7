//! Self-balancing of durable tasks (seed 002 §7), decided here from the load reports nodes
//! publish every second:
//!
//! A node's **surplus** is what waits beyond what its workers take next (one each, idle or
//! finishing): `waiting - idle_workers - running`. A node without workers holds all it has
//! as surplus.
//!
//! - **Stealing**: a node with idle workers and nothing waiting takes inbound tasks that the
//!   live node with the largest surplus offers (its newest, the last it would run), half that
//!   surplus at most, by compare-and-set in
//!   the fleet's bucket; a try that got nothing waits longer before the next
//!   ([`STEAL_MIN_MS`] doubling to [`STEAL_MAX_MS`]), one that got work tries again at once.
//! - **Pushing**: a node with a surplus offers it to live nodes with idle workers and nothing
//!   waiting, which take it the same way.
//! - **Assignment**: a new task goes, by weighted random choice among the live nodes, where
//!   the weight is capacity (idle workers, over what already waits) times reliability (its
//!   completions against its failed attempts) times warmth (twice for a node with the task's
//!   model warm); a task assigned elsewhere is offered to that node, which takes it.
//! - **Concurrency**: an AIMD controller ([`Aimd`]) sets how many tasks a node runs at once:
//!   each completion adds `1/limit` (one per window), each failure halves it.

use crate::time::{Time, ms};
use qs_wire::task_bus::TaskLoad;
use qs_wire::{NodeId, TaskId};
use std::collections::{BTreeMap, BTreeSet};

/// The first wait after a steal that got nothing.
pub const STEAL_MIN_MS: u64 = 250;
/// The longest wait between steals.
pub const STEAL_MAX_MS: u64 = 8_000;
/// Most tasks one steal or one offer moves.
pub const MAX_MOVE: usize = 32;
/// Nodes offered work at once, at most.
pub const MAX_PUSH_TARGETS: usize = 4;

/// An additive-increase, multiplicative-decrease limit on the tasks a node runs at once.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Aimd {
    limit: f64,
    min: f64,
    max: f64,
}

impl Default for Aimd {
    fn default() -> Self {
        Aimd::new(1, 1024, 16)
    }
}

impl Aimd {
    pub fn new(min: u32, max: u32, start: u32) -> Aimd {
        let (min, max) = (f64::from(min.max(1)), f64::from(max.max(min.max(1))));
        Aimd {
            limit: f64::from(start).clamp(min, max),
            min,
            max,
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit as u32
    }

    /// A task completed: one more per window of `limit` completions.
    pub fn on_success(&mut self) {
        self.limit = (self.limit + 1.0 / self.limit).min(self.max);
    }

    /// An attempt failed: half as many.
    pub fn on_failure(&mut self) {
        self.limit = (self.limit / 2.0).max(self.min);
    }
}

/// A steal to try: take `tasks` from `from`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub from: NodeId,
    pub to: NodeId,
    pub tasks: Vec<TaskId>,
}

/// When a node may steal next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stealing {
    backoff_ms: u64,
    next_at: Time,
}

impl Default for Stealing {
    fn default() -> Self {
        Stealing {
            backoff_ms: STEAL_MIN_MS,
            next_at: Time::ZERO,
        }
    }
}

impl Stealing {
    /// What `me` (its own report `mine`) steals now from the `loads` of the `live` nodes.
    pub fn plan(
        &mut self,
        now: Time,
        mine: &TaskLoad,
        loads: &BTreeMap<NodeId, TaskLoad>,
        live: &BTreeSet<NodeId>,
    ) -> Option<Move> {
        if now < self.next_at || mine.idle_workers == 0 || mine.waiting > 0 {
            return None;
        }
        let victim = loads
            .values()
            .filter(|l| l.node != mine.node && live.contains(&l.node))
            .filter(|l| surplus(l) > 0 && !l.offered.is_empty())
            .max_by_key(|l| (surplus(l), std::cmp::Reverse(l.node.clone())));
        let Some(victim) = victim else {
            self.outcome(now, 0);
            return None;
        };
        let want = (mine.idle_workers as usize)
            .min((surplus(victim) / 2).max(1) as usize)
            .min(MAX_MOVE);
        Some(Move {
            from: victim.node.clone(),
            to: mine.node.clone(),
            tasks: victim.offered.iter().take(want).cloned().collect(),
        })
    }

    /// A steal took `took` tasks: the next may come at once, or after a longer wait.
    pub fn outcome(&mut self, now: Time, took: usize) {
        if took > 0 {
            self.backoff_ms = STEAL_MIN_MS;
            self.next_at = now;
        } else {
            self.next_at = now + ms(self.backoff_ms);
            self.backoff_ms = (self.backoff_ms * 2).min(STEAL_MAX_MS);
        }
    }
}

/// The weight of `l` for a new task needing `model`: capacity × reliability × warmth.
pub fn weight(l: &TaskLoad, model: Option<&qs_wire::ServiceName>) -> f64 {
    let capacity = (1.0 + f64::from(l.idle_workers)) / (1.0 + f64::from(l.waiting));
    let reliability = (l.completions as f64 + 1.0) / ((l.completions + l.failures) as f64 + 2.0);
    let warmth = match model {
        Some(m) if l.warm.contains(m) => 2.0,
        _ => 1.0,
    };
    capacity * reliability * warmth
}

/// Where a new task needing `model` goes: a weighted random choice among `me` and the live
/// nodes whose loads are known, drawn from `rng`.
pub fn assign(
    model: Option<&qs_wire::ServiceName>,
    mine: &TaskLoad,
    loads: &BTreeMap<NodeId, TaskLoad>,
    live: &BTreeSet<NodeId>,
    rng: &mut crate::rng::Rng,
) -> NodeId {
    let candidates: Vec<(&NodeId, f64)> = std::iter::once(mine)
        .chain(
            loads
                .values()
                .filter(|l| l.node != mine.node && live.contains(&l.node)),
        )
        .map(|l| (&l.node, weight(l, model)))
        .collect();
    let total: f64 = candidates.iter().map(|(_, w)| w).sum();
    let mut pick = rng.unit() * total;
    for (node, w) in &candidates {
        if pick < *w {
            return (*node).clone();
        }
        pick -= w;
    }
    mine.node.clone()
}

/// What waits at `l` beyond what its workers take next.
pub fn surplus(l: &TaskLoad) -> u32 {
    l.waiting
        .saturating_sub(l.idle_workers.saturating_add(l.running))
}

/// What `me` offers, and to whom: its surplus, split among live nodes with idle workers and
/// nothing waiting.
pub fn offers(
    mine: &TaskLoad,
    loads: &BTreeMap<NodeId, TaskLoad>,
    live: &BTreeSet<NodeId>,
) -> Vec<Move> {
    let mut offered: Vec<TaskId> = mine
        .offered
        .iter()
        .take(surplus(mine) as usize)
        .cloned()
        .collect();
    let mut out = Vec::new();
    let idle = loads
        .values()
        .filter(|l| l.node != mine.node && live.contains(&l.node))
        .filter(|l| l.idle_workers > 0 && l.waiting == 0)
        .take(MAX_PUSH_TARGETS);
    for l in idle {
        let n = (l.idle_workers as usize).min(MAX_MOVE).min(offered.len());
        if n == 0 {
            break;
        }
        out.push(Move {
            from: mine.node.clone(),
            to: l.node.clone(),
            tasks: offered.drain(..n).collect(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: &str) -> NodeId {
        NodeId::new(n).unwrap()
    }

    fn load(n: &str, waiting: u32, idle: u32, offered: usize) -> TaskLoad {
        TaskLoad {
            node: node(n),
            waiting,
            running: 0,
            idle_workers: idle,
            concurrency: 4,
            offered: (0..offered)
                .map(|i| TaskId::new(&format!("{n}-t{i}")).unwrap())
                .collect(),
            completions: 0,
            failures: 0,
            warm: Vec::new(),
        }
    }

    #[test]
    fn assignment_favours_capacity_reliability_and_warmth() {
        let live: BTreeSet<NodeId> = ["a", "b", "c"].iter().map(|n| node(n)).collect();
        let model = qs_wire::ServiceName::new("llm").unwrap();
        let me = load("a", 8, 0, 0);
        let mut idle = load("b", 0, 4, 0);
        idle.completions = 100;
        let mut flaky = load("c", 0, 4, 0);
        flaky.completions = 10;
        flaky.failures = 90;
        let loads: BTreeMap<NodeId, TaskLoad> =
            [(node("b"), idle.clone()), (node("c"), flaky.clone())].into();
        let mut rng = crate::rng::Rng::seeded(7);
        let mut got: BTreeMap<String, u32> = BTreeMap::new();
        for _ in 0..1000 {
            let n = assign(None, &me, &loads, &live, &mut rng);
            *got.entry(n.to_string()).or_default() += 1;
        }
        assert!(got["b"] > 4 * got["c"], "{got:?}");
        assert!(got["b"] > 4 * got["a"], "{got:?}");
        // Warmth doubles a weight.
        let mut warm = flaky.clone();
        warm.warm = vec![model.clone()];
        assert_eq!(
            weight(&warm, Some(&model)),
            2.0 * weight(&flaky, Some(&model))
        );
        // Alone, a node keeps its tasks.
        let none = BTreeMap::new();
        assert_eq!(assign(None, &me, &none, &live, &mut rng), node("a"));
    }

    #[test]
    fn aimd_adds_one_per_window_and_halves_on_failure() {
        let mut a = Aimd::new(1, 100, 4);
        for _ in 0..4 {
            a.on_success();
        }
        assert_eq!(a.limit(), 4, "a window of 4 adds just under one");
        a.on_success();
        assert_eq!(a.limit(), 5);
        a.on_failure();
        assert_eq!(a.limit(), 2);
        for _ in 0..10 {
            a.on_failure();
        }
        assert_eq!(a.limit(), 1, "never below its minimum");
    }

    #[test]
    fn an_idle_node_steals_from_the_most_loaded_and_backs_off_when_there_is_nothing() {
        let live: BTreeSet<NodeId> = ["a", "b", "c"].iter().map(|n| node(n)).collect();
        let mut loads = BTreeMap::new();
        for l in [load("a", 10, 0, 8), load("b", 30, 0, 8), load("c", 0, 2, 0)] {
            loads.insert(l.node.clone(), l);
        }
        let me = load("c", 0, 2, 0);
        let mut s = Stealing::default();
        let t0 = Time::from_millis(1_000);
        let m = s.plan(t0, &me, &loads, &live).unwrap();
        assert_eq!((m.from.as_str(), m.tasks.len()), ("b", 2));
        // A node without workers gives up even its last task.
        let lone: BTreeMap<NodeId, TaskLoad> = [(node("a"), load("a", 1, 0, 1))].into();
        let mut fresh = Stealing::default();
        let m = fresh.plan(t0, &me, &lone, &live).unwrap();
        assert_eq!((m.from.as_str(), m.tasks.len()), ("a", 1));
        // Busy: no steal.
        assert_eq!(s.plan(t0, &load("c", 1, 2, 0), &loads, &live), None);
        // Nothing to take: waits 250 ms, then 500, then 1 s.
        let empty = BTreeMap::new();
        assert_eq!(s.plan(t0, &me, &empty, &live), None);
        assert_eq!(s.plan(t0 + ms(249), &me, &loads, &live), None);
        assert!(s.plan(t0 + ms(250), &me, &loads, &live).is_some());
        s.outcome(t0 + ms(250), 0);
        assert_eq!(s.plan(t0 + ms(749), &me, &loads, &live), None);
        assert!(s.plan(t0 + ms(750), &me, &loads, &live).is_some());
        // A dead victim is not robbed.
        let only_c: BTreeSet<NodeId> = [node("c")].into();
        s.outcome(t0, 1);
        assert_eq!(s.plan(t0, &me, &loads, &only_c), None);
    }

    #[test]
    fn a_loaded_node_offers_its_surplus_to_idle_nodes_only() {
        let live: BTreeSet<NodeId> = ["a", "b", "c", "d"].iter().map(|n| node(n)).collect();
        let mut loads = BTreeMap::new();
        for l in [load("b", 0, 3, 0), load("c", 5, 3, 0), load("d", 0, 1, 0)] {
            loads.insert(l.node.clone(), l);
        }
        let mut me = load("a", 20, 0, 20);
        me.running = 4;
        let moves = offers(&me, &loads, &live);
        let to: Vec<(&str, usize)> = moves
            .iter()
            .map(|m| (m.to.as_str(), m.tasks.len()))
            .collect();
        assert_eq!(to, [("b", 3), ("d", 1)]);
        // Nothing beyond what its workers take next: no offer.
        let mut calm = load("a", 4, 2, 4);
        calm.running = 2;
        assert!(offers(&calm, &loads, &live).is_empty());
    }
}
