//! Who stewards what: the hierarchical rendezvous election among the live nodes that may
//! steward, kept as nodes join, leave, or gain or lose the capability, and the grace in
//! which a previous steward's orders still count.

use super::{PreviousSteward, Registry, STEWARD_BUCKETS};
use crate::hash;
use crate::time::Time;
use qs_wire::{NodeId, ServiceName};

impl Registry {
    /// The steward of a service: the live node with the highest rendezvous score.
    pub fn steward(&self, service: &ServiceName) -> Option<&NodeId> {
        self.stewards
            .get(service)
            .map(|&s| &self.slots[s].status.node)
    }

    /// Services whose steward is `node`.
    pub fn stewarded_by(&self, node: &NodeId) -> impl Iterator<Item = &ServiceName> {
        self.index
            .get(node)
            .and_then(|s| self.stewarded.get(s))
            .into_iter()
            .flatten()
    }

    pub(super) fn bucket_of(&self, slot: usize) -> usize {
        (self.slots[slot].id_hash % STEWARD_BUCKETS) as usize
    }

    /// Score of a bucket for a service (ties cannot happen: bucket indexes differ).
    fn bucket_score(service_hash: u64, bucket: usize) -> (u64, usize) {
        (
            hash::rendezvous(service_hash, hash::mix(bucket as u64)),
            bucket,
        )
    }

    /// Score of a node for a service within its bucket; ties go to the node id.
    fn score(&self, service_hash: u64, slot: usize) -> (u64, &NodeId) {
        let h = hash::rendezvous(service_hash, self.slots[slot].id_hash);
        (h, &self.slots[slot].status.node)
    }

    /// Whether `node` may give orders for `service` here: it is its steward, or was until a
    /// change less than `steward_grace_ms` ago (its view may lag this one's).
    ///
    /// The window also runs the other way: while the steward has been silent for half of
    /// `dead_after` (others may have declared it dead already), the node that would succeed
    /// it may give orders too.
    pub fn may_steward(&self, service: &ServiceName, node: &NodeId, now: Time) -> bool {
        if self.steward(service) == Some(node)
            || self
                .previous_stewards
                .get(service)
                .is_some_and(|p| &p.node == node && now <= p.until)
        {
            return true;
        }
        let Some(&current) = self.stewards.get(service) else {
            return false;
        };
        let silent = now.since(self.slots[current].last_seen) >= self.dead_after / 2;
        silent
            && self
                .best_for(service, Some(current))
                .is_some_and(|s| &self.slots[s].status.node == node)
    }

    fn set_steward(&mut self, service: &ServiceName, slot: Option<usize>) {
        if let Some(old) = self.stewards.remove(service) {
            if let Some(set) = self.stewarded.get_mut(&old) {
                set.remove(service);
            }
            if slot != Some(old) {
                let previous = PreviousSteward {
                    node: self.slots[old].status.node.clone(),
                    until: self.now + self.steward_grace,
                };
                self.previous_stewards.insert(service.clone(), previous);
            }
        }
        if let Some(slot) = slot {
            self.stewards.insert(service.clone(), slot);
            self.stewarded
                .entry(slot)
                .or_default()
                .insert(service.clone());
        }
    }

    /// Recomputes a service's steward: best bucket, then best node in it.
    pub(super) fn elect(&mut self, service: &ServiceName) {
        if !self.specs.contains_key(service) {
            return;
        }
        let best = self.best_for(service, None);
        self.set_steward(service, best);
    }

    /// The live slot that wins `service` (best bucket, then best node in it), leaving out
    /// `without`.
    fn best_for(&self, service: &ServiceName, without: Option<usize>) -> Option<usize> {
        let sh = hash::of_str(service.as_str());
        let left = |b: usize| {
            self.buckets[b]
                .iter()
                .copied()
                .filter(move |&s| Some(s) != without)
        };
        (0..self.buckets.len())
            .filter(|&b| left(b).next().is_some())
            .max_by_key(|&b| Self::bucket_score(sh, b))
            .and_then(|b| left(b).max_by(|&x, &y| self.score(sh, x).cmp(&self.score(sh, y))))
    }

    /// A joining node takes over the services it now wins: those of its own bucket whose
    /// steward it outscores, and, if its bucket was empty, those whose bucket it outscores.
    pub(super) fn on_join(&mut self, slot: usize) {
        let b = self.bucket_of(slot);
        let bucket_is_new = self.buckets[b].len() == 1;
        let takeover: Vec<ServiceName> = self
            .specs
            .keys()
            .filter(|svc| {
                let sh = hash::of_str(svc.as_str());
                match self.stewards.get(*svc) {
                    None => true,
                    Some(&cur) if self.bucket_of(cur) == b => {
                        self.score(sh, slot) > self.score(sh, cur)
                    }
                    Some(&cur) => {
                        bucket_is_new
                            && Self::bucket_score(sh, b)
                                > Self::bucket_score(sh, self.bucket_of(cur))
                    }
                }
            })
            .cloned()
            .collect();
        for svc in takeover {
            self.set_steward(&svc, Some(slot));
        }
    }
}
