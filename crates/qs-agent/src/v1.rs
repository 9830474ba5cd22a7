//! Version 1 of the HTTP API: every request and response body, as serde types. The
//! handlers ([`crate::api`]) return them and the CLI decodes them; nothing else defines the API's
//! JSON.

use qs_core::RunningInstance;
use qs_wire::{InstanceId, NodeId, NodeStatus, Offer, ServiceName, WorkloadSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An instance this node runs, as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocalInstance {
    pub instance: InstanceId,
    pub service: ServiceName,
    pub node: NodeId,
    pub role: qs_wire::Role,
    pub serving: bool,
    pub hot: bool,
    /// While a process runs.
    pub pid: Option<u32>,
    pub port: Option<u16>,
    pub command: String,
}

/// What the API can see of one node without asking it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub status: NodeStatus,
    pub instances: Vec<LocalInstance>,
    pub stewards: Vec<ServiceName>,
    pub placements_in_flight: usize,
    pub gpu_source: String,
    pub live_peers: usize,
}

/// The fleet as one node's registry sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegistryView {
    pub nodes: Vec<NodeStatus>,
    pub specs: Vec<WorkloadSpec>,
    pub instances: Vec<(ServiceName, InstanceId, InstanceRow)>,
    pub stewards: BTreeMap<ServiceName, NodeId>,
    pub completed: BTreeMap<ServiceName, usize>,
}

/// An instance row of the registry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceRow {
    pub node: NodeId,
    pub role: qs_wire::Role,
    pub serving: bool,
    pub hot: bool,
    pub fencing: u64,
}

impl From<&RunningInstance> for InstanceRow {
    fn from(r: &RunningInstance) -> Self {
        InstanceRow {
            node: r.node.clone(),
            role: r.role,
            serving: r.serving,
            hot: r.hot,
            fencing: r.fencing,
        }
    }
}

/// A node's offer for a service and its own gate's verdict on it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Explained {
    pub offer: Offer,
    pub passes_gate: bool,
}
