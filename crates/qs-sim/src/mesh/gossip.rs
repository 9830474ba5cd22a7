//! The peer to beat: Serf-style push gossip (memberlist's LAN defaults: every 200 ms each
//! node that knows a message sends it to 3 random members, for as long as it is fresh), on
//! the same WAN model as the mesh, timing how long one message takes to reach a share of
//! the members.

use super::latency::Wan;
use qs_core::Rng;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Gossip's parameters.
#[derive(Clone, Copy, Debug)]
pub struct Gossip {
    pub interval_ms: f64,
    pub fanout: usize,
    /// Rounds a node keeps retransmitting a message it learned (memberlist:
    /// RetransmitMult × log(N + 1)).
    pub retransmits: u32,
}

impl Gossip {
    /// memberlist's `DefaultLANConfig` (GossipInterval 200 ms, GossipNodes 3,
    /// RetransmitMult 4) for `n` members.
    pub fn lan(n: usize) -> Gossip {
        Gossip {
            interval_ms: 200.0,
            fanout: 3,
            retransmits: 4 * ((n as f64 + 1.0).log10().ceil() as u32).max(1),
        }
    }
}

/// When each share of the members first heard the message, milliseconds after it began.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// When the last member heard it, if all did.
    pub all_ms: Option<f64>,
    pub messages: u64,
}

/// Spreads one message from member 0 among `n` members placed in `wan`'s regions.
pub fn spread(n: usize, wan: &Wan, g: Gossip, seed: u64) -> Spread {
    let mut rng = Rng::seeded(seed);
    let region: Vec<usize> = (0..n).map(|_| wan.pick_region(&mut rng)).collect();
    let mut heard: Vec<Option<f64>> = vec![None; n];
    // (time in µs, member): a member hears the message, or gossips it.
    let mut queue: BinaryHeap<Reverse<(u64, u32, bool)>> = BinaryHeap::new();
    heard[0] = Some(0.0);
    // Members gossip on their own timers, phased at random.
    let phase: Vec<f64> = (0..n).map(|_| rng.unit() * g.interval_ms).collect();
    queue.push(Reverse(((phase[0] * 1000.0) as u64, 0, true)));
    let mut rounds_left = vec![g.retransmits; n];
    let mut messages = 0u64;
    let mut count = 1usize;
    while let Some(Reverse((t_us, m, gossip))) = queue.pop() {
        let t = t_us as f64 / 1000.0;
        let m = m as usize;
        if !gossip {
            if heard[m].is_none() {
                heard[m] = Some(t);
                count += 1;
                // Its next gossip tick.
                let next = phase[m]
                    + ((t - phase[m]) / g.interval_ms).floor() * g.interval_ms
                    + g.interval_ms;
                queue.push(Reverse(((next * 1000.0) as u64, m as u32, true)));
                if count == n {
                    break;
                }
            }
            continue;
        }
        if rounds_left[m] == 0 {
            continue;
        }
        rounds_left[m] -= 1;
        for _ in 0..g.fanout {
            let to = rng.below(n as u64) as usize;
            if to == m {
                continue;
            }
            messages += 1;
            if let Some(d) = wan.one_way_ms(region[m], region[to], &mut rng) {
                queue.push(Reverse((((t + d) * 1000.0) as u64, to as u32, false)));
            }
        }
        queue.push(Reverse((
            ((t + g.interval_ms) * 1000.0) as u64,
            m as u32,
            true,
        )));
    }
    let mut times: Vec<f64> = heard.iter().flatten().copied().collect();
    times.sort_by(f64::total_cmp);
    let at = |q: f64| -> f64 {
        let want = ((q * n as f64).ceil() as usize).max(1);
        times.get(want - 1).copied().unwrap_or(f64::INFINITY)
    };
    Spread {
        p50_ms: at(0.50),
        p95_ms: at(0.95),
        p99_ms: at(0.99),
        all_ms: (times.len() == n).then(|| times[n - 1]),
        messages,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gossip_reaches_everyone_in_rounds_of_its_interval() {
        let s = spread(2_000, &Wan::default(), Gossip::lan(2_000), 1);
        assert!(s.p99_ms.is_finite());
        // log_4(2000) ≈ 6 rounds of 200 ms, give or take.
        assert!((600.0..4_000.0).contains(&s.p99_ms), "{s:?}");
        assert_eq!(spread(2_000, &Wan::default(), Gossip::lan(2_000), 1), s);
    }
}
