//! The resident model's keeper: a runtime kept loaded in the margin is started again after
//! it fails (crashed, or never warm), after a pause that grows with its failures in a row,
//! until the watchdog gives up on it and alerts.

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

#[cfg(test)]
mod tests {
    use super::*;

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
