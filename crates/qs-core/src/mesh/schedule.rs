//! Arrival-time dispatch (seed §3.1): to have agents ready at `target`, send to each at
//! `target − lead`, the slowest first, in 10 ms batches of at most [`MAX_BATCH`]; an agent
//! whose send time has already passed is known too late before anything is sent.

use crate::time::Time;
use std::time::Duration;

/// Width of a batch (seed §3.2: 10 ms buckets).
pub const BUCKET_MS: u64 = 10;
/// Most sends in one batch: a bucket with more is split.
pub const MAX_BATCH: usize = 1_000;

/// One agent to schedule: its key and predicted lead time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Want<K> {
    pub key: K,
    pub lead_ms: f64,
}

/// Sends due at one time.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch<K> {
    pub send_at: Time,
    pub keys: Vec<K>,
}

/// An agent known too late: it needed `needed_ms`, only `available_ms` was left.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TooLate<K> {
    pub key: K,
    pub needed_ms: f64,
    pub available_ms: f64,
}

/// A send schedule: batches in time order (so the slowest agents go first), and who is
/// too late.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule<K> {
    pub batches: Vec<Batch<K>>,
    pub too_late: Vec<TooLate<K>>,
}

/// Schedules `wants` for `target`, at `now`.
pub fn schedule<K: Copy + Ord>(now: Time, target: Time, wants: &[Want<K>]) -> Schedule<K> {
    let available_ms = target.since(now).as_secs_f64() * 1000.0;
    let mut timed: Vec<(Time, K)> = Vec::with_capacity(wants.len());
    let mut too_late = Vec::new();
    for w in wants {
        let lead_ms = w.lead_ms.max(0.0);
        if lead_ms > available_ms {
            too_late.push(TooLate {
                key: w.key,
                needed_ms: lead_ms,
                available_ms,
            });
            continue;
        }
        let lead = Duration::from_micros((lead_ms * 1000.0) as u64);
        let at = target.checked_sub(lead).unwrap_or(now).max(now);
        // Round down into its bucket: never later than its send time.
        let bucket_us = BUCKET_MS * 1000;
        let at = Time::from_micros(at.as_micros() / bucket_us * bucket_us).max(now);
        timed.push((at, w.key));
    }
    timed.sort();
    let mut batches: Vec<Batch<K>> = Vec::new();
    for (at, key) in timed {
        match batches.last_mut() {
            Some(b) if b.send_at == at && b.keys.len() < MAX_BATCH => b.keys.push(key),
            _ => batches.push(Batch {
                send_at: at,
                keys: vec![key],
            }),
        }
    }
    Schedule { batches, too_late }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Time {
        Time::from_millis(ms)
    }

    /// (now, target, [(agent, lead)]) → ([(send at, agents)], [too late]).
    #[test]
    fn schedules_from_a_table() {
        type Row = (
            u64,
            u64,
            &'static [(u32, f64)],
            &'static [(u64, &'static [u32])],
            &'static [u32],
        );
        let table: &[Row] = &[
            // Slow agents first; fast ones later; one bucket per 10 ms.
            (
                1_000,
                1_500,
                &[(1, 20.0), (2, 400.0), (3, 105.0)],
                &[(1_100, &[2]), (1_390, &[3]), (1_480, &[1])],
                &[],
            ),
            // Two agents in one bucket share a batch.
            (0, 100, &[(1, 21.0), (2, 25.0)], &[(70, &[1, 2])], &[]),
            // A lead longer than the time left: too late, known before sending.
            (0, 100, &[(1, 150.0), (2, 100.0)], &[(0, &[2])], &[1]),
            // Negative predictions are treated as zero.
            (0, 100, &[(1, -5.0)], &[(100, &[1])], &[]),
        ];
        for (now, target, wants, batches, late) in table {
            let wants: Vec<Want<u32>> = wants
                .iter()
                .map(|&(key, lead_ms)| Want { key, lead_ms })
                .collect();
            let s = schedule(t(*now), t(*target), &wants);
            let want_batches: Vec<(u64, Vec<u32>)> =
                batches.iter().map(|(at, k)| (*at, k.to_vec())).collect();
            let got: Vec<(u64, Vec<u32>)> = s
                .batches
                .iter()
                .map(|b| (b.send_at.as_millis(), b.keys.clone()))
                .collect();
            assert_eq!(got, want_batches, "now {now}, target {target}");
            let got_late: Vec<u32> = s.too_late.iter().map(|l| l.key).collect();
            assert_eq!(&got_late, late);
        }
    }

    #[test]
    fn big_buckets_split() {
        let wants: Vec<Want<u32>> = (0..2_500).map(|key| Want { key, lead_ms: 50.0 }).collect();
        let s = schedule(t(0), t(100), &wants);
        let sizes: Vec<usize> = s.batches.iter().map(|b| b.keys.len()).collect();
        assert_eq!(sizes, vec![1_000, 1_000, 500]);
        assert!(s.batches.iter().all(|b| b.send_at == t(50)));
    }
}
