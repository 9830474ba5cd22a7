//! The entry point's asks carried into a host: a request becomes the scheduler's, a routed
//! one's answer gives its slot back, the requests whose clients went away and the leased
//! work of holders that left the fleet are swept, and a route the scheduler decided is
//! handed to the request with its runtime's port, its slot's return and its cut.

use super::Host;
use crate::clock::now;
use crate::models::{Ask, Decision};
use qs_core::gpu::{GpuInput, Request, RequestId};
use qs_fabric::Fabric;
use qs_wire::{NodeId, ServiceName};
use tokio::sync::oneshot;

impl<F: Fabric> Host<F> {
    pub(super) fn on_ask(&mut self, ask: Ask) {
        match ask {
            Ask::Request {
                model,
                class,
                context_tokens,
                lease,
                reply,
            } => {
                if self.residents.contains_key(&model) {
                    return self.ask_resident(&model, reply);
                }
                let Some(gpu) = self.models.get(&model).map(|a| a.gpu) else {
                    let _ = reply.send(Decision::Refuse {
                        too_many: false,
                        retry_after_ms: 0,
                        reason: format!("no model {model} on node {}", self.node),
                    });
                    return;
                };
                let id = RequestId(self.next_request);
                self.next_request += 1;
                self.pending.insert(id, (gpu, reply));
                let request = Request {
                    id,
                    model,
                    class,
                    context_tokens,
                    lease,
                };
                self.gpus[gpu]
                    .scheduler
                    .handle(GpuInput::Arrive(request), now());
            }
            Ask::Finished { id } => {
                self.cuts.remove(&id);
                if let Some(gpu) = self.routed.remove(&id) {
                    self.gpus[gpu]
                        .scheduler
                        .handle(GpuInput::Finished { id }, now());
                }
            }
        }
    }

    /// Sweeps the waiting requests whose clients went away (a vanished peer's leased work
    /// among them): no swap is made for nobody.
    pub(super) fn sweep_gone(&mut self) {
        let gone: Vec<(RequestId, usize)> = self
            .pending
            .iter()
            .filter(|(id, (_, reply))| reply.is_closed() && !self.placeholders.contains(*id))
            .map(|(id, (gpu, _))| (*id, *gpu))
            .collect();
        for (id, gpu) in gone {
            self.pending.remove(&id);
            self.gpus[gpu]
                .scheduler
                .handle(GpuInput::Cancel { id }, now());
        }
        // Leased work whose holder left the fleet (the watchdog's sweep of its leases).
        for g in &mut self.gpus {
            let gone: Vec<NodeId> = {
                let fleet = self.membership.read();
                g.scheduler
                    .lease_holders()
                    .into_iter()
                    .filter(|h| !fleet.is_live(h))
                    .collect()
            };
            for holder in gone {
                g.scheduler.handle(GpuInput::HolderGone { holder }, now());
            }
        }
    }

    pub(super) fn route(&mut self, gpu: usize, id: RequestId, model: &ServiceName) {
        let port = self
            .processes
            .values()
            .find(|p| &p.model == model && p.warm && !p.stopping && !p.resident)
            .map(|p| p.port);
        let Some((_, reply)) = self.pending.remove(&id) else {
            // Swept since (its client went away): its slot goes back at once.
            self.gpus[gpu]
                .scheduler
                .handle(GpuInput::Finished { id }, now());
            return;
        };
        match port {
            Some(port) => {
                // The slot is given back by the Finish the decision carries: when the answer
                // has been passed on, or when the decision is dropped unread.
                self.routed.insert(id, gpu);
                let finish = Some(crate::models::Finish {
                    tx: self.asks_tx.clone(),
                    id,
                });
                let (cut_tx, cut) = oneshot::channel();
                self.cuts.insert(id, cut_tx);
                let _ = reply.send(Decision::Route {
                    port,
                    finish,
                    cut: Some(cut),
                });
            }
            None => {
                let _ = reply.send(Decision::Refuse {
                    too_many: false,
                    retry_after_ms: 0,
                    reason: format!("{model}'s runtime is gone"),
                });
                self.gpus[gpu]
                    .scheduler
                    .handle(GpuInput::Finished { id }, now());
            }
        }
    }
}
