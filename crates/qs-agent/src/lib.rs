//! The node agent: the shell that wires the sans-IO core to the real world.
//!
//! Real child processes ([`exec`]), health probes ([`health`], paced by [`monitor`]),
//! sensors ([`sense`]), the fabric, the state directory and the ledger on disk, and an HTTP
//! API ([`api`], its types in [`v1`]). Every decision stays in `qs-core`; this crate
//! only carries inputs in and outputs out.

pub mod addresses;
pub mod api;
mod backoff;
mod claim;
pub mod clock;
pub mod control;
pub mod counters;
mod desired;
pub mod error;
pub mod exec;
pub mod fleet;
pub mod health;
pub mod identity;
pub mod journal;
pub mod membership;
pub mod mesh;
pub mod mesh_agents;
pub mod mesh_metrics;
pub mod mesh_status;
pub mod mirror;
pub mod model_double;
pub mod model_metrics;
pub mod models;
mod monitor;
pub mod names;
pub mod orphans;
pub mod run_as;
pub mod runtime;
mod sandbox;
pub mod sense;
pub mod simgpu;
pub mod specs;
pub mod tasks;
pub mod trust;
mod upstream;
pub mod v1;

pub use error::AgentError;
