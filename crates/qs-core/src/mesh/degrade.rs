//! Graceful degradation (seed §6.3): the mode follows the share of active agents, and each
//! mode refuses what it must or queues it; and two of seed §6.1's failure classes' rules (a growing
//! failure rate, repeated disagreement).

use serde::Serialize;

/// The operating mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Mode {
    Full,
    DegradedLight,
    DegradedModerate,
    DegradedSevere,
    Emergency,
}

impl Mode {
    /// Seed §6.3's thresholds, checked from the top.
    pub fn from_active_share(share: f64) -> Mode {
        if share >= 0.95 {
            Mode::Full
        } else if share >= 0.80 {
            Mode::DegradedLight
        } else if share >= 0.60 {
            Mode::DegradedModerate
        } else if share >= 0.30 {
            Mode::DegradedSevere
        } else {
            Mode::Emergency
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Full => "FULL",
            Mode::DegradedLight => "DEGRADED_LIGHT",
            Mode::DegradedModerate => "DEGRADED_MODERATE",
            Mode::DegradedSevere => "DEGRADED_SEVERE",
            Mode::Emergency => "EMERGENCY",
        }
    }

    /// 0 FULL … 4 EMERGENCY: the mode on the wire and in the metrics.
    pub fn level(self) -> u8 {
        self as u8
    }

    /// The mode of a level, if one.
    pub fn from_level(level: u8) -> Option<Mode> {
        [
            Mode::Full,
            Mode::DegradedLight,
            Mode::DegradedModerate,
            Mode::DegradedSevere,
            Mode::Emergency,
        ]
        .get(usize::from(level))
        .copied()
    }

    /// Retry windows grow in degraded modes (seed: "Increase retry timeouts").
    pub fn window_factor(self) -> u64 {
        match self {
            Mode::Full => 1,
            _ => 2,
        }
    }

    /// Only sectors this healthy take traffic (seed: "Route to healthy sectors only").
    pub fn healthy_sectors_only(self) -> bool {
        self >= Mode::DegradedModerate
    }
}

/// An operation asked of the mesh, as the mode judges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ask {
    /// Envelope priority, 0 background … 3 critical.
    pub priority: u8,
    /// Agents it would reach.
    pub agents: u32,
    /// It reaches the whole mesh (not one sector or cluster).
    pub mesh_wide: bool,
    /// An operator approved it (`--approve`).
    pub approved: bool,
    /// An automated operation (a probe, a scheduled cascade), not an operator's.
    pub automated: bool,
    /// The mesh's agents and active agents that made the mode (a refusal names them).
    pub total_agents: u32,
    pub active_agents: u32,
}

/// Why the mode refuses, with the counts the root had when it did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{mode} ({active_agents} of {total_agents} agents active) refuses this: {rule}")]
pub struct Refused {
    pub mode: &'static str,
    pub rule: &'static str,
    pub active_agents: u32,
    pub total_agents: u32,
}

/// What a mode does with an operation it does not refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// It starts now.
    Now,
    /// It waits at the root until the mode is DEGRADED_LIGHT or better (seed §6.3's
    /// DEGRADED_MODERATE: "Queue non-urgent operations").
    Queue,
}

/// Scatters over this many agents wait for FULL or DEGRADED_LIGHT in DEGRADED_MODERATE; in
/// worse modes they need a human's approval.
pub const MODERATE_MAX_AGENTS: u32 = 1_000;

/// Seed §6.3's restrictions. They add up: a mode keeps every restriction of the milder
/// ones, but for one the seed itself relaxes. DEGRADED_MODERATE refuses every scatter over
/// 1,000 agents; DEGRADED_SEVERE runs mesh-wide operations a human approved, so from there
/// on such a scatter needs that approval (`--approve`) instead. Approval never lifts a
/// priority floor. DEGRADED_MODERATE queues a non-urgent operation (priority 1) it would
/// otherwise take; worse modes refuse it (critical operations only).
pub fn permit(mode: Mode, ask: &Ask) -> Result<Admit, Refused> {
    let no = |rule| {
        Err(Refused {
            mode: mode.name(),
            rule,
            active_agents: ask.active_agents,
            total_agents: ask.total_agents,
        })
    };
    if mode >= Mode::DegradedLight && ask.priority == 0 {
        return no("non-critical background tasks are disabled");
    }
    if mode == Mode::DegradedModerate && ask.agents > MODERATE_MAX_AGENTS {
        return no("scatter operations over 1000 agents are disabled");
    }
    // (The priority floor first: approval never lifts it, so none is asked for in vain.)
    if mode >= Mode::DegradedSevere && ask.priority < 3 {
        return no("critical operations only (priority 3)");
    }
    if mode >= Mode::DegradedSevere && ask.agents > MODERATE_MAX_AGENTS && !ask.approved {
        return no("scatter operations over 1000 agents need a human's approval (--approve)");
    }
    if mode >= Mode::DegradedSevere && ask.mesh_wide && !ask.approved {
        return no("mesh-wide operations need a human's approval (--approve)");
    }
    if mode == Mode::Emergency && ask.automated {
        return no("all automated operations are halted");
    }
    if mode == Mode::Emergency && !ask.approved {
        return no("investigate the root cause; any action needs a human's approval (--approve)");
    }
    if mode == Mode::DegradedModerate && ask.priority < 2 {
        return Ok(Admit::Queue);
    }
    Ok(Admit::Now)
}

/// Times an agent may disagree with a clear majority before it is quarantined (seed §6.1's
/// BYZANTINE_BEHAVIOR).
pub const BYZANTINE_AFTER: u32 = 3;

/// The miss, in a row, at which a lead routes around an agent it sent operations that it
/// never answered (seed §6.1's TRANSIENT_NETWORK: "escalation_threshold: 3 consecutive
/// failures").
pub const TRANSIENT_AFTER: u8 = 3;
/// Its first time out of the routing pool, and the most: each further miss doubles it
/// (seed: "Automatic retry with exponential backoff").
pub const BACKOFF_FIRST_MS: u64 = 1_000;
pub const BACKOFF_MOST_MS: u64 = 60_000;

/// How long an agent that missed `missed` operations in a row stays out of the pool before
/// it is tried again: nothing below `TRANSIENT_AFTER`, then 1 s, 2 s, 4 s … up to 60 s.
pub fn backoff_ms(missed: u8) -> Option<u64> {
    let past = missed.checked_sub(TRANSIENT_AFTER)?;
    // Past six doublings it is the most (and no shift wraps).
    let doubled = match past {
        0..=6 => BACKOFF_FIRST_MS << past,
        _ => BACKOFF_MOST_MS,
    };
    Some(doubled.min(BACKOFF_MOST_MS))
}

/// A growing failure rate (seed: "increasing exponentially"): this period's failures at
/// least double the last period's, and at least `floor` of them.
pub fn cascading(previous: u32, current: u32, floor: u32) -> bool {
    current >= floor && current >= previous.saturating_mul(2).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_by_active_share() {
        let table = [
            (1.0, Mode::Full),
            (0.95, Mode::Full),
            (0.949, Mode::DegradedLight),
            (0.80, Mode::DegradedLight),
            (0.79, Mode::DegradedModerate),
            (0.60, Mode::DegradedModerate),
            (0.59, Mode::DegradedSevere),
            (0.30, Mode::DegradedSevere),
            (0.29, Mode::Emergency),
            (0.0, Mode::Emergency),
        ];
        for (share, want) in table {
            assert_eq!(Mode::from_active_share(share), want, "{share}");
        }
    }

    /// (mode, priority, agents, mesh-wide, approved, automated) → started now, queued or
    /// refused. A mode keeps the milder modes' restrictions; past DEGRADED_MODERATE,
    /// approval lifts the 1,000-agent limit.
    #[test]
    fn each_mode_enforces_its_restrictions() {
        use Mode::*;
        const NOW: Option<Admit> = Some(Admit::Now);
        const QUEUE: Option<Admit> = Some(Admit::Queue);
        const NO: Option<Admit> = None;
        let table = [
            (Full, 0, 30_000, true, false, true, NOW),
            (DegradedLight, 0, 10, false, false, false, NO),
            (DegradedLight, 1, 30_000, true, false, false, NOW),
            (DegradedModerate, 3, 1_001, true, false, false, NO),
            (DegradedModerate, 3, 1_001, true, true, false, NO),
            (DegradedModerate, 3, 1_001, false, false, false, NO),
            (DegradedModerate, 0, 10, false, true, false, NO),
            (DegradedSevere, 3, 2_000, false, false, false, NO),
            (DegradedSevere, 3, 30_000, true, true, false, NOW),
            (Emergency, 2, 30, false, true, false, NO),
            (Emergency, 3, 5_000, true, false, false, NO),
            (Emergency, 3, 5_000, true, true, false, NOW),
            (DegradedModerate, 2, 1_000, false, false, false, NOW),
            (DegradedModerate, 1, 10, false, false, false, QUEUE),
            (DegradedModerate, 1, 1_000, true, false, true, QUEUE),
            (DegradedModerate, 1, 1_001, false, false, false, NO),
            (DegradedLight, 1, 10, false, false, false, NOW),
            (DegradedSevere, 1, 10, false, false, false, NO),
            (DegradedSevere, 2, 10, false, false, false, NO),
            (DegradedSevere, 3, 500, true, false, false, NO),
            (DegradedSevere, 3, 500, true, true, false, NOW),
            (DegradedSevere, 3, 30, false, false, false, NOW),
            (Emergency, 3, 30, false, true, true, NO),
            (Emergency, 3, 30, false, false, false, NO),
            (Emergency, 3, 30, false, true, false, NOW),
        ];
        for (mode, priority, agents, mesh_wide, approved, automated, want) in table {
            let ask = Ask {
                priority,
                agents,
                mesh_wide,
                approved,
                automated,
                total_agents: 100,
                active_agents: 10,
            };
            let got = permit(mode, &ask);
            assert_eq!(got.as_ref().ok().copied(), want, "{mode:?} {ask:?}");
            if let Err(e) = got {
                assert!(e.to_string().contains("(10 of 100 agents active)"), "{e}");
            }
        }
    }

    /// A refusal names the rule the operator can act on: below the priority floor it says
    /// so, not that approval is wanted (approval would not lift it).
    #[test]
    fn the_priority_floor_is_named_before_approval() {
        let ask = Ask {
            priority: 2,
            agents: 2_000,
            mesh_wide: true,
            approved: false,
            automated: false,
            total_agents: 100,
            active_agents: 40,
        };
        let e = permit(Mode::DegradedSevere, &ask).unwrap_err();
        assert_eq!(e.rule, "critical operations only (priority 3)");
        let e = permit(Mode::DegradedSevere, &Ask { priority: 3, ..ask }).unwrap_err();
        assert!(e.rule.contains("--approve"), "{e}");
    }

    #[test]
    fn levels_name_the_modes_in_order() {
        for level in 0..=4 {
            assert_eq!(Mode::from_level(level).unwrap().level(), level);
        }
        assert_eq!(Mode::from_level(4), Some(Mode::Emergency));
        assert_eq!(Mode::from_level(5), None);
    }

    #[test]
    fn backoff_doubles_from_the_third_miss_to_a_minute() {
        let table = [
            (0, None),
            (2, None),
            (3, Some(1_000)),
            (4, Some(2_000)),
            (5, Some(4_000)),
            (8, Some(32_000)),
            (9, Some(60_000)),
            (64, Some(60_000)),
            (66, Some(60_000)),
            (70, Some(60_000)),
            (u8::MAX, Some(60_000)),
        ];
        for (missed, want) in table {
            assert_eq!(backoff_ms(missed), want, "{missed}");
        }
    }

    #[test]
    fn cascading_failures_double() {
        assert!(!cascading(10, 15, 5));
        assert!(cascading(10, 20, 5));
        assert!(!cascading(0, 3, 5));
        assert!(cascading(0, 5, 5));
    }
}
