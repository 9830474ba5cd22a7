//! Model runtimes on a node (seed 003): the shell around the core's [`GpuScheduler`].
//!
//! Each node with GPUs runs one model host ([`host`]): a task that owns one scheduler per
//! GPU, feeds it the requests of the node's OpenAI-compatible entry point ([`proxy`]), the
//! exits and warm checks of the runtime processes it starts, and the GPU's free VRAM (NVML,
//! or the simulated GPU's accounting, [`crate::simgpu`]); and carries out what it decides:
//! route, refuse with a retry-after, stop, read the VRAM, start. The model specs come from
//! the fleet's `models` KV bucket, checked on the way in like every spec.
//!
//! [`GpuScheduler`]: qs_core::gpu::GpuScheduler

mod host;
mod http;
pub mod keys;
pub mod proxy;
pub mod route;
pub mod systemctl;
pub mod systemd;

pub use host::{GpuSetup, HostSetup, VramReader, host};

use qs_core::gpu::{Class, RequestId};
use qs_wire::{NodeId, ServiceName};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use tokio::sync::{mpsc, oneshot};

/// Requests queued to one host at most; one more is answered 503 at once.
pub const MAX_ASKS: usize = 1024;
/// Models one host takes at most; one more is refused with a ledger event.
pub const MAX_MODELS: usize = 256;

/// What the entry point asks a host.
pub(crate) enum Ask {
    /// A request for `model`: answered with where to send it, or why not.
    Request {
        model: ServiceName,
        class: Class,
        context_tokens: u32,
        /// The node whose lease it runs under (placed here by another node).
        lease: Option<NodeId>,
        reply: oneshot::Sender<Decision>,
    },
    /// A routed request's answer has been passed on (or its client went away).
    Finished { id: RequestId },
}

/// A host's answer to a request.
#[derive(Debug)]
pub(crate) enum Decision {
    /// Send it to the runtime on this loopback port. `finish` gives the request's slot back
    /// when dropped: when its answer has been passed on, or at once if the client went
    /// away before it read this decision. `cut` says why, if the scheduler cuts it while it
    /// runs (its lease holder left the fleet): its answer ends there.
    Route {
        port: u16,
        finish: Option<Finish>,
        cut: Option<oneshot::Receiver<String>>,
    },
    /// Refused: 429 when too many wait, 503 otherwise, with when to try again.
    Refuse {
        too_many: bool,
        retry_after_ms: u64,
        reason: String,
    },
}

/// The header that names a request's priority class.
pub const PRIORITY_HEADER: &str = "x-qs-priority";
/// Which OpenAI endpoint a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
}

impl Endpoint {
    pub(crate) fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
        }
    }
}

/// Gives a routed request's slot back when dropped.
#[derive(Debug)]
pub(crate) struct Finish {
    pub(crate) tx: mpsc::Sender<Ask>,
    pub(crate) id: RequestId,
}

impl Drop for Finish {
    fn drop(&mut self) {
        let id = self.id;
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(Ask::Finished { id }) {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(Ask::Finished { id }).await;
            });
        }
    }
}

/// A model as a host shows it (`/v1/models`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModelView {
    pub name: ServiceName,
    pub node: NodeId,
    /// The GPU it runs on (none for a shared runtime).
    pub gpu: Option<u32>,
    pub tier: String,
    pub vram_bytes: u64,
    /// `absent`, `loading`, `warm`, `draining`, `stopping`; `failed` for a resident one the
    /// watchdog gave up on; `shared` for a runtime someone else manages.
    pub state: &'static str,
    /// A shared runtime's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Kept loaded in the GPU's reserved margin through every swap.
    pub resident: bool,
    /// Requests in flight on its runtime and waiting for it (scheduled runtimes only).
    pub in_flight: usize,
    pub waiting: usize,
    /// Its last alert (the watchdog's reset, VRAM not released), until it loads again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert: Option<String>,
}

/// One node's host, as the entry point reaches it.
#[derive(Clone)]
pub struct Handle {
    pub(crate) tx: mpsc::Sender<Ask>,
    pub(crate) views: Arc<RwLock<BTreeMap<ServiceName, ModelView>>>,
}

/// The hosts of this process, by node.
#[derive(Default)]
pub struct Registry {
    hosts: RwLock<BTreeMap<NodeId, Handle>>,
}

impl Registry {
    pub fn insert(&self, node: NodeId, handle: Handle) {
        self.hosts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node, handle);
    }

    pub fn remove(&self, node: &NodeId) {
        self.hosts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node);
    }

    /// Every host of this process that holds `model`, with how it shows it, by node.
    pub(crate) fn find_all(&self, model: &ServiceName) -> Vec<(Handle, ModelView)> {
        let hosts = self.hosts.read().unwrap_or_else(|p| p.into_inner());
        hosts
            .values()
            .filter_map(|h| {
                let view = h
                    .views
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(model)
                    .cloned()?;
                Some((h.clone(), view))
            })
            .collect()
    }

    /// The models of `node`'s host (none when it has no host here).
    pub fn views_of(&self, node: &NodeId) -> Vec<ModelView> {
        let hosts = self.hosts.read().unwrap_or_else(|p| p.into_inner());
        hosts.get(node).map_or_else(Vec::new, |h| {
            h.views
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned()
                .collect()
        })
    }

    /// Every model of every host.
    pub fn views(&self) -> Vec<ModelView> {
        let hosts = self.hosts.read().unwrap_or_else(|p| p.into_inner());
        hosts
            .values()
            .flat_map(|h| {
                h.views
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A routed request's slot comes back to its host however the decision ends: read and
    /// its answer passed on, or dropped unread because the client went away between the
    /// host's decision and the entry point reading it (even with the host's queue full).
    #[tokio::test]
    async fn a_route_decision_dropped_unread_gives_its_slot_back() {
        let (tx, mut rx) = mpsc::channel(1);
        // The host's queue is full: the slot still comes back, once there is room.
        tx.try_send(Ask::Finished { id: RequestId(0) }).unwrap();
        let (reply, answer) = oneshot::channel();
        reply
            .send(Decision::Route {
                port: 1,
                finish: Some(Finish {
                    tx: tx.clone(),
                    id: RequestId(7),
                }),
                cut: None,
            })
            .unwrap();
        drop(answer);
        let mut back = Vec::new();
        for _ in 0..2 {
            let ask = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
                .await
                .expect("the slot came back")
                .unwrap();
            if let Ask::Finished { id } = ask {
                back.push(id.0);
            }
        }
        assert_eq!(back, [0, 7]);
    }
}
