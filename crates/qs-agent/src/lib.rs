//! The node agent: the shell that wires the sans-IO core to the real world.
//!
//! Real child processes ([`exec`]), health checks ([`health`]), sensors ([`sense`]), the
//! fabric, the ledger on disk and an HTTP API. Every decision stays in `qs-core`; this crate
//! only carries inputs in and outputs out.

pub mod api;
mod backoff;
pub mod exec;
pub mod fleet;
pub mod health;
pub mod identity;
pub mod journal;
pub mod membership;
pub mod mirror;
pub mod model_double;
pub mod orphans;
pub mod runtime;
pub mod sense;
