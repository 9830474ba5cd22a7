//! TCP's round-trip estimator (RFC 6298), for the steward's adaptive gathering deadline.

use std::time::Duration;

/// The most times a deadline doubles in a row (RFC 6298 §5.5); the configured maximum caps it
/// anyway.
const MAX_BACKOFF_DOUBLINGS: u32 = 8;

/// The deadline is `srtt + 4 rttvar`, and the maximum until the first sample arrives, so a
/// slow first link is not cut off. A round that closes on its deadline with nodes still silent
/// doubles the next deadline (§5.5, "back off the timer"), until a fresh sample: without it, a
/// fleet whose answers queue past a deadline learned when it was idle would close every round
/// empty, retry, and so queue the answers further (a congestion collapse).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RttEstimator {
    srtt_us: Option<f64>,
    rttvar_us: f64,
    doublings: u32,
}

impl RttEstimator {
    pub(crate) fn sample(&mut self, rtt_us: f64) {
        self.doublings = 0;
        match self.srtt_us {
            None => {
                self.srtt_us = Some(rtt_us);
                self.rttvar_us = rtt_us / 2.0;
            }
            Some(srtt) => {
                self.rttvar_us += ((srtt - rtt_us).abs() - self.rttvar_us) / 4.0;
                self.srtt_us = Some(srtt + (rtt_us - srtt) / 8.0);
            }
        }
    }

    /// How many times the deadline has doubled: a round remembers it when it is sent.
    pub(crate) fn level(&self) -> u32 {
        self.doublings
    }

    /// A round sent at backoff `level` closed on its deadline with nodes still silent: back
    /// off, once per level (rounds that timed out together double the deadline once).
    pub(crate) fn timed_out(&mut self, level: u32) {
        if level == self.doublings {
            self.doublings = (self.doublings + 1).min(MAX_BACKOFF_DOUBLINGS);
        }
    }

    pub(crate) fn timeout(&self, min: Duration, max: Duration) -> Duration {
        match self.srtt_us {
            None => max,
            Some(srtt) => {
                let us = (srtt + 4.0 * self.rttvar_us) as u64;
                let base = Duration::from_micros(us).clamp(min, max);
                base.saturating_mul(1 << self.doublings).min(max)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_millis(500);

    #[test]
    fn the_deadline_follows_samples_within_bounds() {
        let mut rtt = RttEstimator::default();
        assert_eq!(rtt.timeout(MIN, MAX), MAX, "no sample yet: the maximum");
        rtt.sample(1_000.0);
        assert_eq!(
            rtt.timeout(MIN, MAX),
            MIN,
            "1 ms + 4 × 0.5 ms is under the minimum"
        );
        for _ in 0..50 {
            rtt.sample(40_000.0);
        }
        let t = rtt.timeout(MIN, MAX);
        assert!(
            t > Duration::from_millis(40) && t < Duration::from_millis(60),
            "{t:?}"
        );
    }

    #[test]
    fn a_round_closed_by_its_deadline_doubles_the_next_until_a_sample() {
        let mut rtt = RttEstimator::default();
        rtt.sample(1_000.0);
        let mut deadlines = vec![rtt.timeout(MIN, MAX)];
        for _ in 0..9 {
            let sent_at = rtt.level();
            // Rounds sent at the same level that time out together double it once.
            rtt.timed_out(sent_at);
            rtt.timed_out(sent_at);
            deadlines.push(rtt.timeout(MIN, MAX));
        }
        let ms: Vec<u128> = deadlines.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [5, 10, 20, 40, 80, 160, 320, 500, 500, 500]);
        rtt.sample(1_000.0);
        assert_eq!(
            rtt.timeout(MIN, MAX),
            MIN,
            "a fresh sample ends the backoff"
        );
    }
}
