//! The sans-IO core of Quasicrystal: every decision, none of the IO.
//!
//! Nothing here touches tokio, sockets, files or the clock. Time comes in as an argument
//! ([`Time`]); randomness comes from a seeded [`Rng`] owned by the state; maps are `BTreeMap` so
//! iteration order, and therefore every decision, is deterministic.
//!
//! Two state machines carry the fleet protocol:
//! - [`Registry`]: one node's replica of the fleet's shared state (who is alive, their last
//!   heartbeat, the specs, who stewards what, which instances run where).
//! - [`Node`]: one node's decisions. As a host it senses, offers, accepts or refuses
//!   dispatches. As a steward it reconciles its services through the 5 placement steps.
//!   Inputs go in through [`Node::handle`]; outputs come out through [`Node::poll`] and the
//!   next deadline through [`Node::poll_timeout`].
//! - [`Detector`]: a process's failure detector: suspects silent nodes, probes them directly
//!   and through relays, and confirms deaths.

pub mod addresses;
pub mod auth;
pub mod changes;
pub mod claim;
pub mod config;
pub mod detector;
pub mod failure;
pub mod gpu;
pub mod hash;
pub mod health;
pub mod mesh;
pub mod node;
pub mod registry;
pub mod rng;
pub mod routing;
pub mod sampler;
pub mod tasks;
pub mod time;
pub mod transport;
pub mod trust;
pub mod weight;

pub use auth::{AuthConfig, AuthCounters, Keyring, Reject, Rejected};
pub use changes::{Caused, FleetChange, Notice, Recipients, caused_by};
pub use claim::{RecordVerdict, judge_claim, judge_record};
pub use config::{Config, ConfigError, Thresholds};
pub use detector::{Detector, DetectorInput, DetectorOutput};
pub use failure::FailureEntry;
pub use failure::FailureMemory;
pub use node::{Host, Hosted, Input, Node, Output, StartOrder, Steward};
pub use registry::{Registry, RunningInstance};
pub use rng::Rng;
pub use time::Time;
pub use trust::{Anchor, Authority, Refusal};
pub use weight::{GAMMA_1, Gate, composite, level_weight};
