//! The daemon's clock: the one place the agent reads the wall clock for the core.
//!
//! `QS_FAULT_CLOCK_OFFSET_MS` (a signed number of milliseconds, read once) shifts it: a fault
//! injection for trying a fleet whose clocks disagree or went back, as NTP can make them.

use qs_core::Time;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// Largest offset the fault injection takes (a day either way).
const MAX_OFFSET_MS: i64 = 86_400_000;

fn offset_us() -> i64 {
    static OFFSET: OnceLock<i64> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        let Ok(text) = std::env::var("QS_FAULT_CLOCK_OFFSET_MS") else {
            return 0;
        };
        match text.trim().parse::<i64>() {
            Ok(ms) if ms.abs() <= MAX_OFFSET_MS => {
                tracing::warn!("fault injection: this agent's clock is off by {ms} ms");
                ms * 1000
            }
            _ => {
                tracing::error!(
                    "QS_FAULT_CLOCK_OFFSET_MS={text:?} is not a number of ms within a day; ignored"
                );
                0
            }
        }
    })
}

/// Microseconds since the Unix epoch: the daemon's clock for the core.
pub fn now() -> Time {
    let us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    Time::from_micros(us.saturating_add_signed(offset_us()))
}
