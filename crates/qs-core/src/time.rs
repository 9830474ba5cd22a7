//! Time as a value: microseconds since an epoch the shell chooses.

use serde::{Deserialize, Serialize};
use std::ops::{Add, Sub};
use std::time::Duration;

/// A point in time, in microseconds since the shell's epoch (the daemon: the Unix epoch; the
/// simulator: the start of the run).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Time(u64);

impl Time {
    pub const ZERO: Time = Time(0);

    pub const fn from_micros(us: u64) -> Time {
        Time(us)
    }
    /// (Saturating: a time from another node is no reason to overflow.)
    pub const fn from_millis(ms: u64) -> Time {
        Time(ms.saturating_mul(1000))
    }
    pub const fn as_millis(self) -> u64 {
        self.0 / 1000
    }

    pub const fn as_micros(self) -> u64 {
        self.0
    }
    /// The time `d` before this one, if that is not before the epoch.
    pub fn checked_sub(self, d: Duration) -> Option<Time> {
        let us = u64::try_from(d.as_micros()).ok()?;
        self.0.checked_sub(us).map(Time)
    }
    /// Time elapsed since `earlier`, zero if `earlier` is later.
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time(
            self.0
                .saturating_add(d.as_micros().min(u128::from(u64::MAX)) as u64),
        )
    }
}

impl Sub<Time> for Time {
    type Output = Duration;
    fn sub(self, earlier: Time) -> Duration {
        self.since(earlier)
    }
}

/// Milliseconds as a `Duration` (config values are in milliseconds).
pub const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A time in milliseconds from another node cannot overflow: it saturates.
    #[test]
    fn milliseconds_past_the_range_saturate() {
        assert_eq!(Time::from_millis(1_500).as_micros(), 1_500_000);
        assert_eq!(Time::from_millis(u64::MAX).as_micros(), u64::MAX);
        assert_eq!(
            Time::from_millis(u64::MAX) + ms(1),
            Time::from_micros(u64::MAX)
        );
    }
}
