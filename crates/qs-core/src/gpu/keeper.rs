//! The watchdog's rules beside the scheduler's: the resident model's keeper (a runtime kept
//! loaded in the margin is started again after it fails, crashed or never warm, after a
//! pause that grows with its failures in a row, until the watchdog gives up on it and
//! alerts), and the VRAM quota a runtime may not outgrow.

use crate::Time;

/// What to do after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeeperVerdict {
    /// Start it again at this time.
    StartAt(Time),
    /// The watchdog gives up after `failures` in a row: reset it and alert.
    GiveUp { failures: u32 },
}

/// One resident runtime's failures in a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keeper {
    failures: u32,
    max_failures: u32,
    pause_ms: u64,
}

impl Keeper {
    pub fn new(max_failures: u32, pause_ms: u64) -> Keeper {
        Keeper {
            failures: 0,
            max_failures: max_failures.max(1),
            pause_ms,
        }
    }

    /// It turned warm: its failures are forgiven.
    pub fn warm(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// It failed at `now`.
    pub fn failed(&mut self, now: Time) -> KeeperVerdict {
        self.failures = self.failures.saturating_add(1);
        if self.failures >= self.max_failures {
            return KeeperVerdict::GiveUp {
                failures: self.failures,
            };
        }
        let pause = self.pause_ms.saturating_mul(u64::from(self.failures));
        KeeperVerdict::StartAt(now + crate::time::ms(pause))
    }
}

/// Slack over a runtime's declared VRAM before it counts as over its quota (allocators
/// round up): a twentieth.
pub const QUOTA_SLACK_DIVISOR: u64 = 20;

/// Whether a runtime holding `used_bytes` is over its quota of `quota_bytes` (its tier's
/// VRAM): the watchdog resets it (hard) and alerts, before it starves its neighbours.
pub fn over_quota(used_bytes: u64, quota_bytes: u64) -> bool {
    used_bytes > quota_bytes.saturating_add(quota_bytes / QUOTA_SLACK_DIVISOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runtime_is_over_its_quota_past_the_slack() {
        assert!(!over_quota(1000, 1000));
        assert!(!over_quota(1050, 1000));
        assert!(over_quota(1051, 1000));
        assert!(!over_quota(u64::MAX, u64::MAX));
    }

    #[test]
    fn it_restarts_after_growing_pauses_then_gives_up_and_a_warm_start_forgives() {
        let mut k = Keeper::new(3, 500);
        let t = Time::from_millis(1000);
        assert_eq!(k.failed(t), KeeperVerdict::StartAt(Time::from_millis(1500)));
        assert_eq!(k.failed(t), KeeperVerdict::StartAt(Time::from_millis(2000)));
        k.warm();
        assert_eq!(k.failed(t), KeeperVerdict::StartAt(Time::from_millis(1500)));
        assert_eq!(k.failed(t), KeeperVerdict::StartAt(Time::from_millis(2000)));
        assert_eq!(k.failed(t), KeeperVerdict::GiveUp { failures: 3 });
    }
}
