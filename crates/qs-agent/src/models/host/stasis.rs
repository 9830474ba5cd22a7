//! Durable stasis across a restart: the stases this node's previous life recorded in the
//! ledger and did not end are read back at start, and each is raised again as a transition
//! request of its class once its model is declared, so the model the wait was for is
//! brought in without its clients asking again.

use super::Host;
use crate::clock::now;
use qs_core::gpu::{Class, Request, RequestId};
use qs_fabric::Fabric;
use qs_store::Ledger;
use qs_wire::{Event, ModelStep, NodeId, ServiceName};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Ledger records read back at start, newest last.
const LOOK_BACK: usize = 4096;

/// The stases `node` recorded and did not end, by model, with the class they waited in.
pub(super) async fn standing(ledger: Arc<Ledger>, node: NodeId) -> BTreeMap<ServiceName, Class> {
    let read = tokio::task::spawn_blocking(move || {
        let from = ledger.next_seq().saturating_sub(LOOK_BACK as u64);
        ledger.read(from, LOOK_BACK)
    })
    .await;
    let records = match read {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::error!("durable stasis not read back: {e}");
            return BTreeMap::new();
        }
        Err(e) => {
            tracing::error!("durable stasis not read back: {e}");
            return BTreeMap::new();
        }
    };
    let mut standing = BTreeMap::new();
    for r in records.into_iter().filter(|r| r.node == node) {
        if let Event::ModelRuntime {
            model,
            step,
            detail,
            ..
        } = r.event
        {
            match step {
                ModelStep::Stasis => {
                    // The ledger is read as untrusted: a class it does not name is batch.
                    let class = detail
                        .split(':')
                        .next()
                        .and_then(Class::named)
                        .unwrap_or(Class::Batch);
                    standing.insert(model, class);
                }
                ModelStep::StasisEnded => {
                    standing.remove(&model);
                }
                _ => {}
            }
        }
    }
    standing
}

impl<F: Fabric> Host<F> {
    /// Raises a standing stasis of `model` again: a request of its class that no client
    /// waits on (its answer goes nowhere; routed, its slot is given back at once).
    pub(super) fn resume_stasis(&mut self, gpu: usize, model: ServiceName, class: Class) {
        let index = self.gpus[gpu].index;
        self.record(
            index,
            &model,
            ModelStep::Stasis,
            format!("{}: resumed after a restart", class.name()),
        );
        let id = RequestId(self.next_request);
        self.next_request += 1;
        // Its answer goes nowhere; it is not swept as a client that went away.
        let (reply, _) = oneshot::channel();
        self.pending.insert(id, (gpu, reply));
        self.placeholders.insert(id);
        let request = Request {
            id,
            model,
            class,
            context_tokens: 0,
            lease: None,
        };
        self.gpus[gpu].scheduler.resume(request, now());
    }
}
