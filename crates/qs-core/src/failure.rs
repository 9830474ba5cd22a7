//! Failure memory (seed 000 §6): a decayed failure count per (service, load bucket) of one
//! node, turned into the pressure that lowers this node's composite for that service.

use crate::time::Time;
use qs_wire::ServiceName;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Load buckets: node CPU use at failure, in fifths (0–20 %, …, 80–100 %).
pub const LOAD_BUCKETS: u8 = 5;
/// Most (service, bucket) entries kept; the weakest is forgotten first.
pub const MAX_ENTRIES: usize = 4096;
/// Failures that bring pressure to about 63 % of its cap.
const FAILURE_SCALE: f64 = 3.0;

/// The load bucket of a CPU utilisation.
pub fn load_bucket(cpu_util: f64) -> u8 {
    let b = (cpu_util.clamp(0.0, 1.0) * f64::from(LOAD_BUCKETS)) as u8;
    b.min(LOAD_BUCKETS - 1)
}

/// One remembered (service, load bucket) and its decayed failure count: what the shell
/// saves across restarts ([`crate::Output::SaveFailures`]) and gives back to
/// [`crate::Node::restore_failures`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailureEntry {
    pub service: ServiceName,
    pub load_bucket: u8,
    pub count: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Decayed {
    count: f64,
    at: Time,
}

/// One node's memory of its own failures.
#[derive(Clone, Debug, PartialEq)]
pub struct FailureMemory {
    half_life: Duration,
    cap: f64,
    entries: BTreeMap<(ServiceName, u8), Decayed>,
}

impl FailureMemory {
    pub fn new(half_life: Duration, cap: f64) -> Self {
        FailureMemory {
            half_life,
            cap,
            entries: BTreeMap::new(),
        }
    }

    fn decay(&self, d: &Decayed, now: Time) -> f64 {
        let age = now.since(d.at).as_secs_f64();
        d.count * 0.5f64.powf(age / self.half_life.as_secs_f64())
    }

    /// Records one failure of `service` at `bucket`; returns the new pressure at that bucket.
    pub fn record(&mut self, service: &ServiceName, bucket: u8, now: Time) -> f64 {
        let key = (service.clone(), bucket.min(LOAD_BUCKETS - 1));
        let count = self.entries.get(&key).map_or(0.0, |d| self.decay(d, now)) + 1.0;
        self.entries.insert(key, Decayed { count, at: now });
        if self.entries.len() > MAX_ENTRIES {
            let weakest = self
                .entries
                .iter()
                .min_by(|a, b| self.decay(a.1, now).total_cmp(&self.decay(b.1, now)))
                .map(|(k, _)| k.clone());
            if let Some(k) = weakest {
                self.entries.remove(&k);
            }
        }
        self.pressure(service, bucket, now)
    }

    /// Pressure of `service` at `bucket`: failures at the same load count fully, those at
    /// other loads count half per bucket of distance. Always below the cap, which is below 1.
    pub fn pressure(&self, service: &ServiceName, bucket: u8, now: Time) -> f64 {
        let mut weighted = 0.0;
        for b in 0..LOAD_BUCKETS {
            if let Some(d) = self.entries.get(&(service.clone(), b)) {
                let distance = i32::from(b.abs_diff(bucket));
                weighted += self.decay(d, now) * 0.5f64.powi(distance);
            }
        }
        self.cap * (1.0 - (-weighted / FAILURE_SCALE).exp())
    }

    /// Sets a remembered count as of `now` (restoring a snapshot taken with [`Self::entries`]).
    pub fn restore(&mut self, service: ServiceName, bucket: u8, count: f64, now: Time) {
        if count.is_finite() && count > 0.0 && self.entries.len() < MAX_ENTRIES {
            let key = (service, bucket.min(LOAD_BUCKETS - 1));
            self.entries.insert(key, Decayed { count, at: now });
        }
    }

    /// Every remembered (service, bucket, decayed count), for explanation and persistence.
    pub fn entries(&self, now: Time) -> impl Iterator<Item = (&ServiceName, u8, f64)> {
        self.entries
            .iter()
            .map(move |((s, b), d)| (s, *b, self.decay(d, now)))
    }

    /// Every entry as of `now`, to be saved.
    pub fn snapshot(&self, now: Time) -> Vec<FailureEntry> {
        self.entries(now)
            .map(|(service, load_bucket, count)| FailureEntry {
                service: service.clone(),
                load_bucket,
                count,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::ms;

    fn svc() -> ServiceName {
        ServiceName::new("dns").unwrap()
    }

    #[test]
    fn pressure_rises_with_failures_and_stays_capped() {
        let mut m = FailureMemory::new(ms(3_600_000), 0.9);
        let now = Time::from_millis(1);
        assert_eq!(m.pressure(&svc(), 4, now), 0.0);
        let mut last = 0.0;
        for _ in 0..50 {
            let p = m.record(&svc(), 4, now);
            assert!(p > last && p < 0.9, "{p}");
            last = p;
        }
    }

    #[test]
    fn pressure_halves_its_count_every_half_life() {
        let mut m = FailureMemory::new(ms(1000), 0.9);
        m.record(&svc(), 2, Time::ZERO);
        m.record(&svc(), 2, Time::ZERO);
        let count = |m: &FailureMemory, t| m.entries(t).next().unwrap().2;
        assert!((count(&m, Time::from_millis(1000)) - 1.0).abs() < 1e-9);
        assert!(m.pressure(&svc(), 2, Time::from_millis(1000)) < m.pressure(&svc(), 2, Time::ZERO));
    }

    #[test]
    fn a_snapshot_restores_the_same_pressure() {
        let mut m = FailureMemory::new(ms(3_600_000), 0.9);
        m.record(&svc(), 3, Time::ZERO);
        m.record(&svc(), 3, Time::ZERO);
        let now = Time::from_millis(60_000);
        let mut fresh = FailureMemory::new(ms(3_600_000), 0.9);
        for (s, b, c) in m.entries(now) {
            fresh.restore(s.clone(), b, c, now);
        }
        assert!((fresh.pressure(&svc(), 3, now) - m.pressure(&svc(), 3, now)).abs() < 1e-12);
        fresh.restore(svc(), 1, f64::NAN, now);
        assert_eq!(fresh.entries(now).count(), 1, "bad counts are ignored");
    }

    #[test]
    fn failures_at_other_loads_count_less() {
        let mut m = FailureMemory::new(ms(3_600_000), 0.9);
        m.record(&svc(), 4, Time::ZERO);
        let same = m.pressure(&svc(), 4, Time::ZERO);
        let near = m.pressure(&svc(), 3, Time::ZERO);
        let far = m.pressure(&svc(), 0, Time::ZERO);
        assert!(same > near && near > far && far > 0.0);
        let other = ServiceName::new("web").unwrap();
        assert_eq!(m.pressure(&other, 4, Time::ZERO), 0.0);
    }
}
