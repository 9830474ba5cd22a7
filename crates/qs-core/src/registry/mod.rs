//! One node's replica of the fleet's shared state: who is alive with what load, the specs,
//! who stewards each service, and which instances run where.
//!
//! The daemon keeps one per agent, fed by heartbeats and the spec watch. The simulator shares
//! one among its nodes, as if every node read the same KV replica at the same instant.
//! Everything is incremental: a heartbeat costs O(log n), a join O(services), a death
//! re-elects only the services the dead node stewarded.
//!
//! Stewards are chosen by hierarchical rendezvous hashing: each node falls into one of
//! [`STEWARD_BUCKETS`] fixed buckets by the hash of its id; a service's steward is the
//! highest-scoring live node of its highest-scoring non-empty bucket. Any node computes it from
//! the live set alone, a death moves only the dead node's services, and an election costs
//! O(buckets + n / buckets) instead of O(n).

use crate::config::{Config, Thresholds};
use crate::hash;
use crate::rng::Rng;
use crate::sampler::WeightTree;
use crate::time::{Time, ms};
use crate::weight::level_weight;
use qs_wire::trust::Capability;
use qs_wire::{InstanceId, InstanceSummary, NodeId, NodeStatus, Role, ServiceName, WorkloadSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Buckets of the two-level rendezvous hash that picks stewards.
pub const STEWARD_BUCKETS: u64 = 256;

/// An instance as the registry last heard of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningInstance {
    pub node: NodeId,
    pub role: Role,
    pub fencing: u64,
    pub hot: bool,
    pub serving: bool,
    /// Its port on its node's address (0: none said).
    pub port: u16,
}

#[derive(Clone, Debug)]
struct Slot {
    status: NodeStatus,
    last_seen: Time,
    alive: bool,
    id_hash: u64,
    /// When it was last declared dead (meaningless while alive).
    died_at: Time,
}

/// A change of membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Membership {
    Joined(NodeId),
    Died(NodeId),
}

/// See the module docs.
#[derive(Clone, Debug)]
pub struct Registry {
    thresholds: Thresholds,
    dead_after: Duration,
    slots: Vec<Slot>,
    index: BTreeMap<NodeId, usize>,
    by_last_seen: BTreeSet<(Time, usize)>,
    live: usize,
    cpu_weights: WeightTree,
    gpu_weights: WeightTree,
    specs: BTreeMap<ServiceName, WorkloadSpec>,
    /// When each spec first arrived here.
    spec_since: BTreeMap<ServiceName, Time>,
    stewards: BTreeMap<ServiceName, usize>,
    /// Live slots of each steward bucket.
    buckets: Vec<BTreeSet<usize>>,
    stewarded: BTreeMap<usize, BTreeSet<ServiceName>>,
    instances: BTreeMap<ServiceName, BTreeMap<InstanceId, RunningInstance>>,
    completed: BTreeMap<ServiceName, BTreeSet<InstanceId>>,
    max_fencing: BTreeMap<ServiceName, u64>,
    /// Each service's steward before the last change, and when it changed: its orders
    /// are still obeyed for a grace window (see [`Registry::may_steward`]).
    previous_stewards: BTreeMap<ServiceName, PreviousSteward>,
    steward_grace: std::time::Duration,
    /// Dead slots by when they died: forgotten `forget_after` later, so names that come and
    /// go (or are invented) do not grow the registry without bound.
    dead_since: BTreeSet<(Time, usize)>,
    forget_after: Duration,
    /// Forgotten slots, reused by the next new node.
    free: Vec<usize>,
    /// The latest time an input carried: when a change without its own time happened.
    now: Time,
}

/// A service's steward before the last change.
#[derive(Clone, Debug)]
struct PreviousSteward {
    node: NodeId,
    until: Time,
}

mod stewards;

impl Registry {
    pub fn new(config: &Config) -> Self {
        Registry {
            thresholds: config.thresholds,
            dead_after: ms(config.dead_after_ms),
            slots: Vec::new(),
            index: BTreeMap::new(),
            by_last_seen: BTreeSet::new(),
            live: 0,
            cpu_weights: WeightTree::default(),
            gpu_weights: WeightTree::default(),
            specs: BTreeMap::new(),
            spec_since: BTreeMap::new(),
            stewards: BTreeMap::new(),
            buckets: vec![BTreeSet::new(); STEWARD_BUCKETS as usize],
            stewarded: BTreeMap::new(),
            instances: BTreeMap::new(),
            completed: BTreeMap::new(),
            max_fencing: BTreeMap::new(),
            previous_stewards: BTreeMap::new(),
            now: Time::ZERO,
            steward_grace: ms(config.steward_grace_ms),
            dead_since: BTreeSet::new(),
            forget_after: ms(config.forget_dead_after_ms),
            free: Vec::new(),
        }
    }

    // ---- membership -------------------------------------------------------------------

    /// Takes in a heartbeat. Returns `Joined` when the node is new or back from the dead.
    pub fn observe(&mut self, status: NodeStatus, now: Time) -> Option<Membership> {
        self.now = self.now.max(now);
        let slot = match self.index.get(&status.node) {
            Some(&s) => s,
            None => {
                let fresh = Slot {
                    id_hash: hash::of_str(status.node.as_str()),
                    status: status.clone(),
                    last_seen: now,
                    alive: false,
                    died_at: now,
                };
                let s = match self.free.pop() {
                    Some(s) => {
                        self.slots[s] = fresh;
                        s
                    }
                    None => {
                        self.slots.push(fresh);
                        self.cpu_weights.push();
                        self.gpu_weights.push();
                        self.slots.len() - 1
                    }
                };
                self.index.insert(status.node.clone(), s);
                s
            }
        };
        let joined = !self.slots[slot].alive;
        let stewards = status.may(Capability::Steward);
        if joined {
            self.dead_since.remove(&(self.slots[slot].died_at, slot));
            self.slots[slot].alive = true;
            self.live += 1;
            if stewards {
                let bucket = self.bucket_of(slot);
                self.buckets[bucket].insert(slot);
            }
        } else {
            self.by_last_seen
                .remove(&(self.slots[slot].last_seen, slot));
        }
        self.slots[slot].last_seen = now;
        let old = std::mem::replace(&mut self.slots[slot].status, status);
        // A node whose certificate stops (or starts) letting it steward leaves (or joins)
        // the election, as if it had died (or joined) for that alone.
        let stewarded = old.may(Capability::Steward);
        if !joined && stewarded != stewards {
            let bucket = self.bucket_of(slot);
            if stewards {
                self.buckets[bucket].insert(slot);
                self.on_join(slot);
            } else {
                self.buckets[bucket].remove(&slot);
                for service in self.stewarded.remove(&slot).unwrap_or_default() {
                    self.elect(&service);
                }
            }
        }
        self.by_last_seen.insert((now, slot));
        if joined {
            self.index_instances(slot);
        } else {
            self.reindex_changes(slot, &old.instances);
        }
        self.index_completed(slot);
        self.reweigh(slot);
        if joined {
            if stewards {
                self.on_join(slot);
            }
            return Some(Membership::Joined(self.slots[slot].status.node.clone()));
        }
        None
    }

    /// Declares dead every node silent for `dead_after`. Returns each one's last heartbeat, so
    /// the caller knows which instances were lost with it.
    pub fn expire(&mut self, now: Time) -> Vec<NodeStatus> {
        self.now = self.now.max(now);
        self.forget_dead(now);
        let mut dead = Vec::new();
        while let Some(&(seen, slot)) = self.by_last_seen.first() {
            if now.since(seen) < self.dead_after {
                break;
            }
            dead.push(self.slots[slot].status.clone());
            self.kill_slot(slot);
        }
        dead
    }

    /// Live nodes last heard from at or before `before`, the longest silent first.
    pub fn silent_since(&self, before: Time) -> impl Iterator<Item = (&NodeId, Time)> {
        self.by_last_seen
            .iter()
            .take_while(move |(seen, _)| *seen <= before)
            .map(|&(seen, slot)| (&self.slots[slot].status.node, seen))
    }

    /// When a live node was last heard from.
    pub fn last_seen(&self, node: &NodeId) -> Option<Time> {
        let &slot = self.index.get(node)?;
        self.slots[slot].alive.then_some(self.slots[slot].last_seen)
    }

    /// Counts a live node as heard from now, without a heartbeat: the process that runs it
    /// knows it lives. Does nothing for a node that is not live.
    pub fn vouch(&mut self, node: &NodeId, now: Time) {
        if let Some(&slot) = self.index.get(node)
            && self.slots[slot].alive
        {
            let s = &mut self.slots[slot];
            self.by_last_seen.remove(&(s.last_seen, slot));
            s.last_seen = s.last_seen.max(now);
            self.by_last_seen.insert((s.last_seen, slot));
        }
    }

    /// Declares one node dead now (confirmed failure, orderly leave).
    pub fn remove(&mut self, node: &NodeId) -> bool {
        match self.index.get(node) {
            Some(&slot) if self.slots[slot].alive => {
                self.kill_slot(slot);
                true
            }
            _ => false,
        }
    }

    /// Forgets nodes dead for `forget_after`: their names leave the index and their slots
    /// are reused. One that comes back later joins as new.
    fn forget_dead(&mut self, now: Time) {
        while let Some(&(died, slot)) = self.dead_since.first() {
            if now.since(died) < self.forget_after {
                break;
            }
            self.dead_since.remove(&(died, slot));
            self.index.remove(&self.slots[slot].status.node);
            self.free.push(slot);
        }
    }

    /// Nodes known here, live or dead and not yet forgotten.
    pub fn known_count(&self) -> usize {
        self.index.len()
    }

    fn kill_slot(&mut self, slot: usize) {
        let now = self.now;
        self.dead_since.insert((now, slot));
        let s = &mut self.slots[slot];
        s.died_at = now;
        s.alive = false;
        self.by_last_seen.remove(&(s.last_seen, slot));
        self.live -= 1;
        let bucket = self.bucket_of(slot);
        self.buckets[bucket].remove(&slot);
        self.cpu_weights.set(slot, 0.0);
        self.gpu_weights.set(slot, 0.0);
        self.unindex_instances(slot);
        for service in self.stewarded.remove(&slot).unwrap_or_default() {
            self.elect(&service);
        }
    }

    pub fn live_count(&self) -> usize {
        self.live
    }

    pub fn is_live(&self, node: &NodeId) -> bool {
        self.index.get(node).is_some_and(|&s| self.slots[s].alive)
    }

    /// The last heartbeat of a live node.
    pub fn status(&self, node: &NodeId) -> Option<&NodeStatus> {
        let &s = self.index.get(node)?;
        self.slots[s].alive.then(|| &self.slots[s].status)
    }

    /// Live nodes, in id order.
    pub fn live_nodes(&self) -> impl Iterator<Item = &NodeStatus> {
        self.index
            .values()
            .map(|&s| &self.slots[s])
            .filter(|s| s.alive)
            .map(|s| &s.status)
    }

    /// Sampling weight: the composite this node would likely offer, estimated from its last
    /// heartbeat (no pressure: that is the node's own knowledge). Zero when over a threshold.
    fn reweigh(&mut self, slot: usize) {
        let st = &self.slots[slot].status;
        let over = self.thresholds.over(&st.load, &st.capacity, None).is_some();
        let cpu_free = 1.0
            - self
                .thresholds
                .cpu_taken(&st.load, &st.capacity, st.committed.cpu_millicores);
        let base = if over || st.draining || !st.may(Capability::Host) {
            0.0
        } else {
            cpu_free.max(0.0) * level_weight(st.level)
        };
        let vram_free = st
            .capacity
            .gpus
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let used = st.committed.gpu_vram_bytes.get(i).copied().unwrap_or(0);
                1.0 - used as f64 / g.vram_bytes.max(1) as f64
            })
            .fold(0.0, f64::max);
        self.cpu_weights.set(slot, base);
        self.gpu_weights.set(slot, base * vram_free);
    }

    /// Up to `d` distinct live nodes other than `exclude`, drawn with probability proportional
    /// to their estimated composite, that pass `accept`. Bounded: at most `4 d` draws.
    pub fn sample(
        &self,
        rng: &mut Rng,
        needs_gpu: bool,
        d: usize,
        exclude: &NodeId,
        accept: impl Fn(&NodeStatus) -> bool,
    ) -> Vec<NodeId> {
        let tree = if needs_gpu {
            &self.gpu_weights
        } else {
            &self.cpu_weights
        };
        let total = tree.total();
        let mut picked: Vec<NodeId> = Vec::with_capacity(d);
        if total <= 0.0 {
            return picked;
        }
        for _ in 0..4 * d {
            if picked.len() == d {
                break;
            }
            let Some(slot) = tree.find(rng.unit() * total) else {
                break;
            };
            let s = &self.slots[slot];
            if s.alive
                && &s.status.node != exclude
                && !picked.contains(&s.status.node)
                && accept(&s.status)
            {
                picked.push(s.status.node.clone());
            }
        }
        picked
    }

    // ---- desired state and stewards -------------------------------------------------------

    /// Adds or replaces a spec, seen at `now`.
    pub fn apply_spec(&mut self, spec: WorkloadSpec, now: Time) {
        self.now = self.now.max(now);
        let name = spec.name.clone();
        let new = self.specs.insert(name.clone(), spec).is_none();
        if new {
            self.spec_since.insert(name.clone(), now);
            self.elect(&name);
        }
    }

    /// When a spec first arrived here.
    pub fn spec_since(&self, name: &ServiceName) -> Option<Time> {
        self.spec_since.get(name).copied()
    }

    /// Removes a spec; its instances are then excess and the steward stops them.
    pub fn remove_spec(&mut self, name: &ServiceName) -> Option<WorkloadSpec> {
        let spec = self.specs.remove(name)?;
        self.spec_since.remove(name);
        self.previous_stewards.remove(name);
        if let Some(slot) = self.stewards.remove(name)
            && let Some(set) = self.stewarded.get_mut(&slot)
        {
            set.remove(name);
        }
        self.completed.remove(name);
        Some(spec)
    }

    pub fn spec(&self, name: &ServiceName) -> Option<&WorkloadSpec> {
        self.specs.get(name)
    }

    pub fn specs(&self) -> impl Iterator<Item = &WorkloadSpec> {
        self.specs.values()
    }

    // ---- instances --------------------------------------------------------------------------

    fn index_instances(&mut self, slot: usize) {
        let st = &self.slots[slot].status;
        for i in &st.instances {
            index_one(&mut self.instances, &mut self.max_fencing, &st.node, i);
        }
    }

    /// Brings the instance index from a node's previous heartbeat (`old`) to its current one.
    /// Most heartbeats repeat the last one's instances or add a few: when both lists are in
    /// strict instance order (as every node sends them), one merge touches only what changed;
    /// otherwise everything is indexed again. An instance two nodes report (a dispatch that
    /// timed out and was sent on) belongs to whichever reported it last; when that one drops it,
    /// the other's next changed list claims it back.
    fn reindex_changes(&mut self, slot: usize, old: &[InstanceSummary]) {
        let st = &self.slots[slot].status;
        let sorted = |l: &[InstanceSummary]| l.is_sorted_by(|a, b| a.instance < b.instance);
        if !sorted(old) || !sorted(&st.instances) {
            for i in old {
                unindex_one(&mut self.instances, &st.node, i);
            }
            return self.index_instances(slot);
        }
        let (mut a, mut b) = (old.iter().peekable(), st.instances.iter().peekable());
        let mut changed = false;
        loop {
            let order = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(o), Some(n)) => o.instance.cmp(&n.instance),
            };
            match order {
                std::cmp::Ordering::Less => {
                    changed = true;
                    let gone = a.next().expect("peeked");
                    unindex_one(&mut self.instances, &st.node, gone);
                }
                std::cmp::Ordering::Greater => {
                    changed = true;
                    let new = b.next().expect("peeked");
                    index_one(&mut self.instances, &mut self.max_fencing, &st.node, new);
                }
                std::cmp::Ordering::Equal => {
                    let (was, now) = (a.next().expect("peeked"), b.next().expect("peeked"));
                    if was != now {
                        changed = true;
                        unindex_one(&mut self.instances, &st.node, was);
                        index_one(&mut self.instances, &mut self.max_fencing, &st.node, now);
                    }
                }
            }
        }
        if changed {
            for i in &st.instances {
                let held = self
                    .instances
                    .get(&i.service)
                    .is_some_and(|m| m.contains_key(&i.instance));
                if !held {
                    index_one(&mut self.instances, &mut self.max_fencing, &st.node, i);
                }
            }
        }
    }

    /// Remembers the completed job instances a node reports (a job's spec may arrive after
    /// the heartbeat that reported it, so this runs on every heartbeat).
    fn index_completed(&mut self, slot: usize) {
        let st = &self.slots[slot].status;
        for (instance, service) in &st.completed {
            if self.specs.get(service).is_some_and(WorkloadSpec::is_job) {
                self.completed
                    .entry(service.clone())
                    .or_default()
                    .insert(instance.clone());
            }
        }
    }

    fn unindex_instances(&mut self, slot: usize) {
        let st = &self.slots[slot].status;
        for i in &st.instances {
            unindex_one(&mut self.instances, &st.node, i);
        }
    }

    /// Instances of a service on live nodes, by id.
    pub fn instances_of(
        &self,
        service: &ServiceName,
    ) -> impl Iterator<Item = (&InstanceId, &RunningInstance)> {
        self.instances.get(service).into_iter().flatten()
    }

    pub fn instance(&self, service: &ServiceName, id: &InstanceId) -> Option<&RunningInstance> {
        self.instances.get(service)?.get(id)
    }

    /// Job instances reported completed.
    pub fn completed(&self, service: &ServiceName) -> usize {
        self.completed.get(service).map_or(0, BTreeSet::len)
    }

    pub fn is_completed(&self, service: &ServiceName, id: &InstanceId) -> bool {
        self.completed.get(service).is_some_and(|s| s.contains(id))
    }

    /// Highest fencing token ever seen for a service (never decreases).
    pub fn max_fencing(&self, service: &ServiceName) -> u64 {
        self.max_fencing.get(service).copied().unwrap_or(0)
    }
}

/// Indexes one instance a node reports.
fn index_one(
    index: &mut BTreeMap<ServiceName, BTreeMap<InstanceId, RunningInstance>>,
    max_fencing: &mut BTreeMap<ServiceName, u64>,
    node: &NodeId,
    i: &InstanceSummary,
) {
    index.entry(i.service.clone()).or_default().insert(
        i.instance.clone(),
        RunningInstance {
            node: node.clone(),
            role: i.role,
            fencing: i.fencing,
            hot: i.hot,
            serving: i.serving,
            port: i.port,
        },
    );
    if i.fencing > 0 {
        let max = max_fencing.entry(i.service.clone()).or_insert(0);
        *max = (*max).max(i.fencing);
    }
}

/// Removes one instance a node no longer reports (unless another node claims it now).
fn unindex_one(
    index: &mut BTreeMap<ServiceName, BTreeMap<InstanceId, RunningInstance>>,
    node: &NodeId,
    i: &InstanceSummary,
) {
    if let Some(map) = index.get_mut(&i.service) {
        if map.get(&i.instance).is_some_and(|r| &r.node == node) {
            map.remove(&i.instance);
        }
        if map.is_empty() {
            index.remove(&i.service);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
