//! Scale-out (seed §10.2, "adding 1,000 new agents"): an agent that joins an established
//! mesh reports heartbeats first, its impedance profile stabilizes, and only then is it added
//! to the routing pool, a few at a time, watched for conflicts meanwhile.
//!
//! Each cluster lead decides for its agents, from what its host says (how long ago the agent
//! registered there, read on the host's own clock, so clocks need not agree) and what the lead
//! measured (its host's link):
//!
//! - **Settling**: registered less than `settle_ms` ago, its host's link measured fewer than
//!   `min_link_samples` times, or its link drifting (class E) for less than three settling
//!   periods, or held back after a conflict. Operations leave it out (counted as `joining`).
//! - **Eligible**: settled. Each beat the lead adds at most `admit_per_beat` eligible agents
//!   of a cluster to the routing pool, those that joined first first.
//! - **Established**: registered `established_ms` ago or more (or at an unknown time, `0`:
//!   members from before): in the pool at once, from their first beat. A new lead after a
//!   failover does not put an established cluster back on probation; agents still
//!   integrating settle again under it (it has no samples of their link yet).
//!
//! An agent that answers CONFLICT while integrating (younger than `established_ms`), where
//! its cluster clearly (four in five) answers READY, leaves the pool and is held for
//! `settle_ms` (seed: "monitor for conflicts during integration"). A cluster that disagrees
//! as a whole is a conflict to resolve, not a bad newcomer.
//! An agent that registers again (a restart: a later `joined_ms`) starts over.

use crate::time::Time;

/// How agents join the routing pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntegrationConfig {
    /// How long a new agent beats before it may be routed to.
    pub settle_ms: u64,
    /// Its host's link measured at least this many times first.
    pub min_link_samples: u32,
    /// After this long an agent is a member like any other, whatever its profile.
    pub established_ms: u64,
    /// Most agents of one cluster added to the pool per beat.
    pub admit_per_beat: usize,
}

/// How long a new agent settles by default: ten beats of 300 ms, ten link samples, enough
/// for the p95 and the drift.
pub const SETTLE_MS: u64 = 3_000;

impl Default for IntegrationConfig {
    fn default() -> Self {
        IntegrationConfig {
            settle_ms: SETTLE_MS,
            min_link_samples: 8,
            established_ms: 30_000,
            admit_per_beat: 10,
        }
    }
}

/// Where an agent outside the pool stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    Settling,
    Eligible,
    Established,
}

/// What the lead knows of one agent outside the pool.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// When it registered with its host, Unix milliseconds (0: long ago).
    pub joined_ms: u64,
    /// Its host's link samples at this lead.
    pub link_samples: u32,
    /// Its host's link drifts (impedance class E).
    pub drifting: bool,
    /// Held back after a conflict during integration, until then.
    pub held_until: Option<Time>,
}

/// Where `c` stands at `now`.
pub fn standing(c: &Candidate, now: Time, cfg: &IntegrationConfig) -> Standing {
    if c.held_until.is_some_and(|t| now < t) {
        return Standing::Settling;
    }
    let age_ms = now.as_millis().saturating_sub(c.joined_ms);
    if established(c.joined_ms, now, cfg) {
        return Standing::Established;
    }
    // A link that still drifts after three settling periods is what it is: the agent joins
    // as class E (last in a priority-first cascade).
    let steady = !c.drifting || age_ms >= cfg.settle_ms.saturating_mul(3);
    if age_ms < cfg.settle_ms || c.link_samples < cfg.min_link_samples || !steady {
        return Standing::Settling;
    }
    Standing::Eligible
}

/// Whether an agent that joined at `joined_ms` (0: long ago) is a member like any other.
pub fn established(joined_ms: u64, now: Time, cfg: &IntegrationConfig) -> bool {
    joined_ms == 0 || now.as_millis().saturating_sub(joined_ms) >= cfg.established_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standing_by_age_profile_and_hold() {
        let cfg = IntegrationConfig::default();
        let now = Time::from_millis(100_000);
        let ago = |ms: u64| 100_000 - ms;
        // (joined, link samples, drifting, held until, expected)
        let table: [(u64, u32, bool, Option<u64>, Standing); 11] = [
            (0, 0, false, None, Standing::Established),
            (ago(30_000), 0, true, None, Standing::Established),
            (ago(29_999), 8, false, None, Standing::Eligible),
            (ago(3_000), 8, false, None, Standing::Eligible),
            (ago(2_999), 20, false, None, Standing::Settling),
            (ago(5_000), 7, false, None, Standing::Settling),
            (ago(5_000), 20, true, None, Standing::Settling),
            (ago(8_999), 20, true, None, Standing::Settling),
            (ago(9_000), 20, true, None, Standing::Eligible),
            (ago(5_000), 20, false, Some(100_001), Standing::Settling),
            (ago(5_000), 20, false, Some(100_000), Standing::Eligible),
        ];
        for (joined_ms, link_samples, drifting, held, want) in table {
            let c = Candidate {
                joined_ms,
                link_samples,
                drifting,
                held_until: held.map(Time::from_millis),
            };
            assert_eq!(standing(&c, now, &cfg), want, "{c:?}");
        }
        assert!(!established(ago(29_999), now, &cfg));
        assert!(established(ago(30_000), now, &cfg));
        assert!(established(0, now, &cfg));
    }
}
