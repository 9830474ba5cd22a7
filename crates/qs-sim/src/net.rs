//! The simulated network: per-link latency from sites (LAN inside a site, a VPN-like hop
//! between sites, like seed 000's msi01↔lilo over Tailscale), with seeded jitter.

use qs_core::Rng;
use qs_core::hash::mix;

/// Latency model. Every figure is in microseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    /// Latency between two nodes of one site: `lan_us.0..lan_us.1`, fixed per link.
    pub lan_us: (u64, u64),
    /// Latency between sites: `wan_us.0..wan_us.1`, fixed per link.
    pub wan_us: (u64, u64),
    /// Each delivery varies by up to this fraction of the link's latency.
    pub jitter: f64,
    /// Time for a heartbeat or spec change to reach the registry replicas.
    pub kv_us: u64,
}

impl Network {
    /// A LAN with a few VPN-connected sites, as in seed 000.
    pub fn lan_and_vpn() -> Network {
        Network {
            lan_us: (100, 500),
            wan_us: (5_000, 15_000),
            jitter: 0.1,
            kv_us: 1_000,
        }
    }

    /// Every delivery in zero time: for benchmarks of the core alone.
    pub fn instant() -> Network {
        Network {
            lan_us: (0, 0),
            wan_us: (0, 0),
            jitter: 0.0,
            kv_us: 0,
        }
    }

    /// One delivery's latency between nodes at `site_a` and `site_b` (`link` identifies the
    /// pair so its base latency is stable).
    pub fn latency_us(&self, link: u64, same_site: bool, rng: &mut Rng) -> u64 {
        let (lo, hi) = if same_site { self.lan_us } else { self.wan_us };
        let base = if hi > lo {
            lo + mix(link) % (hi - lo)
        } else {
            lo
        };
        if self.jitter <= 0.0 || base == 0 {
            return base;
        }
        let spread = (base as f64 * self.jitter) as u64;
        base - spread / 2 + rng.below(spread.max(1))
    }
}
