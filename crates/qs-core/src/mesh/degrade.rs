//! Graceful degradation (seed §6.3): the mode follows the share of active agents, and each
//! mode refuses what it must. Failure classes (seed §6.1): how each is detected here and what
//! recovers it.

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

/// Scatters over this many agents wait for FULL or DEGRADED_LIGHT.
pub const MODERATE_MAX_AGENTS: u32 = 1_000;

/// Seed §6.3's restrictions.
pub fn permit(mode: Mode, ask: &Ask) -> Result<(), Refused> {
    let no = |rule| {
        Err(Refused {
            mode: mode.name(),
            rule,
            active_agents: ask.active_agents,
            total_agents: ask.total_agents,
        })
    };
    match mode {
        Mode::Full => Ok(()),
        Mode::DegradedLight if ask.priority == 0 => {
            no("non-critical background tasks are disabled")
        }
        Mode::DegradedLight => Ok(()),
        Mode::DegradedModerate if ask.agents > MODERATE_MAX_AGENTS => {
            no("scatter operations over 1000 agents are disabled")
        }
        Mode::DegradedModerate if ask.priority < 2 => {
            no("non-urgent operations are queued: send with priority 2 or more")
        }
        Mode::DegradedModerate => Ok(()),
        Mode::DegradedSevere if ask.priority < 3 => no("critical operations only (priority 3)"),
        Mode::DegradedSevere if ask.mesh_wide && !ask.approved => {
            no("mesh-wide operations need a human's approval (--approve)")
        }
        Mode::DegradedSevere => Ok(()),
        Mode::Emergency if ask.automated => no("all automated operations are halted"),
        Mode::Emergency if !ask.approved => {
            no("investigate the root cause; any action needs a human's approval (--approve)")
        }
        Mode::Emergency => Ok(()),
    }
}

/// Seed §6.1's failure classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailureClass {
    /// A few missed beats or a timeout: marked offline, retried with backoff.
    TransientNetwork,
    /// Silent past [`CRASH_AFTER_MS`]: removed from its cluster, which re-forms.
    AgentCrash,
    /// A score over twice its baseline: routed around while it lasts.
    ImpedanceSpike,
    /// The content hash did not match: the agent is quarantined.
    ContextCorruption,
    /// Its answers contradict the majority repeatedly: quarantined.
    ByzantineBehavior,
    /// Failures growing fast: breakers isolate the sector.
    CascadeFailure,
}

/// Silence that is a crash rather than a transient partition (seed §6.1: 30 s).
pub const CRASH_AFTER_MS: u64 = 30_000;
/// Times an agent may disagree with a clear majority before it is quarantined.
pub const BYZANTINE_AFTER: u32 = 3;

impl FailureClass {
    pub fn recovery(self) -> &'static str {
        match self {
            FailureClass::TransientNetwork => "automatic retry with exponential backoff",
            FailureClass::AgentCrash => "removed from its cluster; the cluster re-forms",
            FailureClass::ImpedanceSpike => "routed around; investigate the cause",
            FailureClass::ContextCorruption => {
                "quarantined; reload from known-good state, then heal"
            }
            FailureClass::ByzantineBehavior => "quarantined for forensic analysis",
            FailureClass::CascadeFailure => "circuit breakers isolate the affected sector",
        }
    }
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

    /// (mode, priority, agents, mesh-wide, approved, automated) → permitted.
    #[test]
    fn each_mode_enforces_its_restrictions() {
        use Mode::*;
        let table = [
            (Full, 0, 30_000, true, false, true, true),
            (DegradedLight, 0, 10, false, false, false, false),
            (DegradedLight, 1, 30_000, true, false, false, true),
            (DegradedModerate, 3, 1_001, true, true, false, false),
            (DegradedModerate, 2, 1_000, false, false, false, true),
            (DegradedModerate, 1, 10, false, false, false, false),
            (DegradedSevere, 2, 10, false, false, false, false),
            (DegradedSevere, 3, 500, true, false, false, false),
            (DegradedSevere, 3, 500, true, true, false, true),
            (DegradedSevere, 3, 30, false, false, false, true),
            (Emergency, 3, 30, false, true, true, false),
            (Emergency, 3, 30, false, false, false, false),
            (Emergency, 3, 30, false, true, false, true),
        ];
        for (mode, priority, agents, mesh_wide, approved, automated, ok) in table {
            let ask = Ask {
                priority,
                agents,
                mesh_wide,
                approved,
                automated,
                total_agents: 100,
                active_agents: 10,
            };
            assert_eq!(permit(mode, &ask).is_ok(), ok, "{mode:?} {ask:?}");
            if let Err(e) = permit(mode, &ask) {
                assert!(e.to_string().contains("(10 of 100 agents active)"), "{e}");
            }
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
