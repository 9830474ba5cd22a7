//! How the API and the process's tasks talk to a node runtime ([`Control`]), and what the
//! node runtimes of one process share ([`Shared`]).

use crate::counters::Counters;
use crate::sense::Sensor;
use crate::v1::{Explained, NodeView, RegistryView};
use qs_store::Ledger;
use qs_wire::{DeclineReason, InstanceId, NodeId, ServiceName};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Requests to a node runtime.
pub enum Control {
    /// What this node would offer for a service now.
    Explain {
        service: ServiceName,
        reply: oneshot::Sender<Option<Result<Explained, DeclineReason>>>,
    },
    /// This node's registry.
    Registry {
        reply: oneshot::Sender<RegistryView>,
    },
    /// Chaos: kill -9 an instance's process group.
    Kill {
        instance: InstanceId,
        reply: oneshot::Sender<bool>,
    },
    ApprovePromotion(ServiceName),
    /// Start (`true`) or end a drain of this node.
    Drain(bool),
    /// Chaos: this node dies at once, as a machine would (its instances get SIGKILL, it
    /// stops talking); the fleet finds out from the silence.
    Die,
    /// Chaos: this node freezes for a while, as a stopped process would (SIGSTOP): it reads
    /// nothing, sends nothing, then carries on with what queued up. Its instances run on.
    Pause(Duration),
    /// Chaos: this node's runtime panics, as a bug would. `qs` ends the whole process on
    /// any panic, so a supervisor restarts it and the restart reaps and recovers.
    Panic,
    /// What one of the runtime's own tasks learned, for its core: a health monitor's probe
    /// result (`Input::Probe`) or a singleton claim's answer (`Input::Claimed`).
    Core(Box<qs_core::Input>),
}

/// Everything shared by the node runtimes of one process and its API.
pub struct Shared {
    pub ledger: Arc<Ledger>,
    /// Where runtimes send their events (group commit into `ledger`).
    pub journal: crate::journal::Journal,
    pub counters: Counters,
    pub views: RwLock<BTreeMap<NodeId, NodeView>>,
    pub controls: RwLock<BTreeMap<NodeId, mpsc::Sender<Control>>>,
    pub sensor: Mutex<Option<Sensor>>,
    pub state_dir: qs_store::StateDir,
    /// The process's keyring: seals what its nodes send, opens what they receive.
    pub auth: Arc<crate::identity::Auth>,
    /// The model hosts of its nodes, for the OpenAI-compatible entry point.
    pub models: Arc<crate::models::Registry>,
    /// How the entry point reaches the models of other processes' nodes (a fleet whose
    /// messages are authenticated: the nodes of one process reach each other's hosts
    /// directly).
    pub route: Option<Arc<crate::models::route::FleetRoute>>,
    /// The port of the entry point other nodes route to (plain HTTP); 0 until the API
    /// listens, and under TLS, where other nodes route nothing here.
    pub entry_port: std::sync::atomic::AtomicU16,
    /// The durable tasks of the process's first node.
    pub tasks: Arc<crate::tasks::TaskHost>,
    /// What the process listens on for the fleet's stable addresses.
    pub addresses: Arc<RwLock<Vec<crate::v1::AddressView>>>,
    /// The mesh of the process's first node.
    pub mesh: crate::mesh::MeshHandle,
}
