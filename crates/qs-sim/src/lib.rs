//! The deterministic simulator: the very same core as the daemon, on a virtual clock with a
//! simulated network, a simulated executor and a fault schedule.
//!
//! Single-threaded and seeded: one seed gives one run, event for event, and the run's trace
//! hash proves it. Any failure it finds is reproduced by running the same seed again.

pub mod bench;
pub mod engine;
pub mod gpu;
pub mod mesh;
pub mod net;
pub mod workload;

pub use engine::{Action, Counters, Sim, Violation};
pub use net::Network;
pub use workload::{Report, SimConfig, SimConfigError, WallClock, run, run_with_records};
