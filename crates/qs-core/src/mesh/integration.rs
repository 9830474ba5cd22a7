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
//!   periods, its own time to answer measured fewer than `min_work_samples` times (the
//!   lead probes it: a readiness probe, `Verb::Probe`; an agent whose answer took a second or
//!   more is slow, class F, and known as such after one), or spiking (its link, or its last
//!   answer), or held back after a conflict. Operations leave it out (counted as `joining`). An agent that answers no
//!   probe joins only once established.
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
//! as a whole is a conflict to resolve, not a bad newcomer. In the urgent mode the root
//! gathers the answers, and tells the lead which of its agents contradicted their cluster.
//! An agent that registers again (a restart: a later `joined_ms`) starts over.

use crate::time::Time;

/// A readiness probe unanswered this long (or twice what the agent is thought to take, if
/// more): the agent takes at least that long, and is probed again.
pub const PROBE_TIMEOUT_MS: u64 = 1_000;

/// How agents join the routing pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntegrationConfig {
    /// How long a new agent beats before it may be routed to.
    pub settle_ms: u64,
    /// Its host's link measured at least this many times first.
    pub min_link_samples: u32,
    /// Its answers (to probes, or work) measured at least this many times first, unless it
    /// is known to be slow.
    pub min_work_samples: u32,
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
            min_work_samples: 3,
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
    /// Its answers measured so far.
    pub work_samples: u32,
    /// An answer of its took a second or more: class F, known without more samples.
    pub slow: bool,
    /// Its link's last sample, or its last answer, spiked over its baseline.
    pub spiking: bool,
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
    let measured = c.work_samples >= cfg.min_work_samples || c.slow;
    if age_ms < cfg.settle_ms
        || c.link_samples < cfg.min_link_samples
        || !steady
        || !measured
        || c.spiking
    {
        return Standing::Settling;
    }
    Standing::Eligible
}

/// Whether a cluster clearly (four in five) answered READY against its CONFLICTs: a
/// newcomer that contradicted it is then held back, not the cluster's view in question.
pub fn clearly_ready(ready: u32, conflicts: u32) -> bool {
    u64::from(ready) * 5 >= (u64::from(ready) + u64::from(conflicts)) * 4
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
        // Settled in every way: joined 5 s ago, its link and its answers measured.
        let ok = Candidate {
            joined_ms: ago(5_000),
            link_samples: 20,
            drifting: false,
            work_samples: 3,
            slow: false,
            spiking: false,
            held_until: None,
        };
        let held = |ms| Some(Time::from_millis(ms));
        let table = [
            (
                Candidate {
                    joined_ms: 0,
                    link_samples: 0,
                    work_samples: 0,
                    ..ok
                },
                Standing::Established,
            ),
            (
                Candidate {
                    joined_ms: ago(30_000),
                    link_samples: 0,
                    drifting: true,
                    work_samples: 0,
                    spiking: true,
                    ..ok
                },
                Standing::Established,
            ),
            (
                Candidate {
                    joined_ms: ago(29_999),
                    link_samples: 8,
                    ..ok
                },
                Standing::Eligible,
            ),
            (
                Candidate {
                    joined_ms: ago(3_000),
                    link_samples: 8,
                    ..ok
                },
                Standing::Eligible,
            ),
            (
                Candidate {
                    joined_ms: ago(2_999),
                    ..ok
                },
                Standing::Settling,
            ),
            (
                Candidate {
                    link_samples: 7,
                    ..ok
                },
                Standing::Settling,
            ),
            (
                Candidate {
                    drifting: true,
                    ..ok
                },
                Standing::Settling,
            ),
            (
                Candidate {
                    joined_ms: ago(8_999),
                    drifting: true,
                    ..ok
                },
                Standing::Settling,
            ),
            (
                Candidate {
                    joined_ms: ago(9_000),
                    drifting: true,
                    ..ok
                },
                Standing::Eligible,
            ),
            // Its own time to answer: measured three times, or known to be slow.
            (
                Candidate {
                    work_samples: 2,
                    ..ok
                },
                Standing::Settling,
            ),
            (
                Candidate {
                    work_samples: 0,
                    slow: true,
                    ..ok
                },
                Standing::Eligible,
            ),
            (
                Candidate {
                    spiking: true,
                    ..ok
                },
                Standing::Settling,
            ),
            (
                Candidate {
                    held_until: held(100_001),
                    ..ok
                },
                Standing::Settling,
            ),
            (
                Candidate {
                    held_until: held(100_000),
                    ..ok
                },
                Standing::Eligible,
            ),
        ];
        for (c, want) in table {
            assert_eq!(standing(&c, now, &cfg), want, "{c:?}");
        }
        assert!(!established(ago(29_999), now, &cfg));
        assert!(established(ago(30_000), now, &cfg));
        assert!(established(0, now, &cfg));
    }
}
