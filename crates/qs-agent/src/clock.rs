//! The daemon's clock: the one place the agent reads the wall clock for the core.

use qs_core::Time;
use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch: the daemon's clock for the core.
pub fn now() -> Time {
    let us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    Time::from_micros(us)
}
