//! The mesh (seed 001, MESH-30K): coordinating many agents through a hierarchy of sectors
//! and clusters, with predictive, impedance-matched dispatch.
//!
//! The decisions live here, sans-IO like the rest of the core: [`MeshNode`] is one node's
//! part in the mesh (host of agents, lead of clusters, coordinator of sectors, the root),
//! fed through [`MeshNode::handle`] with the current time and drained through
//! [`MeshNode::poll`]; the simulator and the daemon drive the same machine. The pieces it
//! uses each have a module: the tree ([`hierarchy`]), profiles and classes ([`impedance`]),
//! arrival-time schedules ([`schedule`]), windows ([`gather`]), the trinary quorum
//! ([`quorum`]), conflicts ([`conflict`]), which nodes may lead yet ([`seniority`]), circuit breakers ([`breaker`]) and degradation
//! modes and failure classes ([`degrade`]), and scale-out: new agents added to the routing
//! pool gradually ([`integration`]).

pub mod breaker;
pub mod conflict;
pub mod degrade;
pub mod gather;
pub mod hierarchy;
pub mod impedance;
pub mod integration;
pub mod node;
pub mod quorum;
pub mod schedule;
pub mod seniority;

pub use hierarchy::{Hierarchy, Member, Shape};
pub use node::{
    AgentCrash, BREAKER_PROBE_AGENTS, CONTROL_CONFIRM_MS, CRASH_AFTER_MS, CRASH_AGAIN_WITHIN_MS,
    CascadeCommand, Command, CommandError, ControlReport, Kpis, LedAgent, MAX_QUEUE_WAIT_MS,
    MAX_QUEUED, MeshConfig, MeshInput, MeshNode, MeshOutput, OpResult, Quarantined, QueuedOp,
    QueuedView,
};
pub use seniority::{Joined, Seniority, seniorities, seniority_in};

use sha2::{Digest, Sha256};

/// The SHA-256 of a payload, hex: an envelope's `content_hash`.
pub fn content_hash(payload: &str) -> String {
    let d = Sha256::digest(payload.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}
