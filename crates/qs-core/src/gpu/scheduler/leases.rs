//! Leases (seed 003): work another node placed here runs under its lease. A local
//! interactive request for a model that needs the GPU revokes it: the runtimes that serve
//! only leased work are drained within `lease_revoke_ms` (what is still in flight then is
//! cut, and its holder retries elsewhere), whatever the policy or their commitment says; the
//! leased requests still waiting stay, and are served when the GPU is free again. A waiting
//! request whose client went away is swept, and so is the waiting leased work of a holder
//! that left the fleet.

use super::GpuScheduler;
use crate::Time;
use crate::gpu::{GpuEvent, GpuOutput, ModelName, RequestId};

impl GpuScheduler {
    /// A local interactive request for `to` arrived: revokes the leases in its way.
    pub(super) fn revoke_for(&mut self, to: &ModelName, now: Time) {
        if self.state.resident.contains_key(to) {
            return;
        }
        match &self.transition {
            Some(t) if &t.to == to => return,
            Some(_) => return,
            None => {}
        }
        // What stands in the way of the model whole: a smaller tier beside leased work is
        // no reason to leave the lease standing.
        let Some(fit) = self.state.fit_largest(to) else {
            return;
        };
        let evict = fit.evict.clone();
        if evict.is_empty() {
            return;
        }
        // Only runtimes whose every request, in flight or waiting, is leased, and that hold
        // some leased work: an idle runtime is the policy's to weigh, not a lease.
        let only_leased = evict.iter().all(|m| {
            self.state.resident.get(m).is_some_and(|r| {
                r.in_flight.keys().all(|id| r.leased.contains_key(id))
                    && self.state.queues.get(m).is_none_or(|q| q.all_leased())
            })
        });
        let some_leased = evict.iter().any(|m| {
            self.state
                .resident
                .get(m)
                .is_some_and(|r| !r.leased.is_empty())
                || self.state.queues.get(m).is_some_and(|q| q.len() > 0)
        });
        if !only_leased || !some_leased {
            return;
        }
        for m in &evict {
            // Their commitment is to leased work: revoked with it.
            if let Some(r) = self.state.resident.get_mut(m) {
                r.committed_before = 0;
                r.revoked = true;
            }
            self.out.push_back(GpuOutput::Event(GpuEvent::LeaseRevoked {
                model: m.clone(),
                by: to.clone(),
            }));
        }
        self.begin_at(to.clone(), fit, now, self.state.config.lease_revoke_ms);
    }

    /// A local interactive request waits for a model that is not resident and no
    /// transition is under way (it may have come during one): the leases in its way are
    /// revoked now.
    pub(super) fn revoke_for_waiting(&mut self, now: Time) {
        if self.transition.is_some() {
            return;
        }
        let wanted: Vec<ModelName> = self
            .state
            .queues
            .iter()
            .filter(|(m, q)| !self.state.resident.contains_key(*m) && q.has_local_interactive())
            .map(|(m, _)| m.clone())
            .collect();
        for m in wanted {
            self.revoke_for(&m, now);
            if self.transition.is_some() {
                return;
            }
        }
    }

    /// Sweeps a waiting request whose client went away.
    pub(super) fn cancel(&mut self, id: RequestId) {
        let mut emptied = None;
        for (m, q) in self.state.queues.iter_mut() {
            if q.remove(id).is_some() {
                self.waiting -= 1;
                if q.len() == 0 {
                    emptied = Some(m.clone());
                }
                break;
            }
        }
        if let Some(m) = emptied {
            self.state.queues.remove(&m);
        }
    }
}

impl GpuScheduler {
    /// The nodes whose leased work waits or runs here.
    pub fn lease_holders(&self) -> std::collections::BTreeSet<qs_wire::NodeId> {
        let waiting = self
            .state
            .queues
            .values()
            .flat_map(|q| q.by_class.iter().flatten())
            .filter_map(|w| w.request.lease.clone());
        let running = self
            .state
            .resident
            .values()
            .flat_map(|r| r.leased.values().cloned());
        waiting.chain(running).collect()
    }

    /// `holder` left the fleet: the leased work it placed here is refused, what waits and
    /// what runs (its stream is cut, its slot freed): the watchdog's sweep of a vanished
    /// peer's leases.
    pub(super) fn holder_gone(&mut self, holder: &qs_wire::NodeId) {
        let reason = "its lease holder left the fleet";
        for r in self.state.resident.values_mut() {
            let cut: Vec<RequestId> = r
                .leased
                .iter()
                .filter(|(_, h)| *h == holder)
                .map(|(id, _)| *id)
                .collect();
            for id in cut {
                r.release(id);
                self.routed.remove(&id);
                self.out.push_back(GpuOutput::Refuse {
                    id,
                    retry_after_ms: 0,
                    reason,
                });
            }
        }
        let gone: Vec<RequestId> = self
            .state
            .queues
            .values()
            .flat_map(|q| q.by_class.iter().flatten())
            .filter(|w| w.request.lease.as_ref() == Some(holder))
            .map(|w| w.request.id)
            .collect();
        for id in gone {
            self.cancel(id);
            self.out.push_back(GpuOutput::Refuse {
                id,
                retry_after_ms: 0,
                reason,
            });
        }
    }
}
