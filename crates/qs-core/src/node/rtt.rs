//! TCP's round-trip estimator (RFC 6298), for the steward's adaptive gathering deadline.

use std::time::Duration;

/// The deadline is `srtt + 4 rttvar`, and the maximum until the first sample arrives, so a
/// slow first link is not cut off.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RttEstimator {
    srtt_us: Option<f64>,
    rttvar_us: f64,
}

impl RttEstimator {
    pub(crate) fn sample(&mut self, rtt_us: f64) {
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

    pub(crate) fn timeout(&self, min: Duration, max: Duration) -> Duration {
        match self.srtt_us {
            None => max,
            Some(srtt) => {
                let us = (srtt + 4.0 * self.rttvar_us) as u64;
                Duration::from_micros(us).clamp(min, max)
            }
        }
    }
}
