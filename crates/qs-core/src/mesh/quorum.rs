//! Trinary quorum (seed §5.2): enough READY (+1), few enough CONFLICT (−1), and IN TRANSIT (0)
//! only as a reason to wait. The checks run in the seed's order; the first that holds decides.

use serde::Serialize;

/// Seed §5.2's default share of READY answers a quorum needs.
pub const REQUIRED_READY_RATE: f64 = 0.95;

/// The rates a quorum needs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuorumPolicy {
    pub required_ready_rate: f64,
    pub max_conflict_rate: f64,
    pub max_transit_rate: f64,
}

impl Default for QuorumPolicy {
    fn default() -> Self {
        QuorumPolicy {
            required_ready_rate: REQUIRED_READY_RATE,
            max_conflict_rate: 0.05,
            max_transit_rate: 0.10,
        }
    }
}

/// Answers counted by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Votes {
    pub ready: u32,
    pub transit: u32,
    pub conflict: u32,
}

/// What the quorum says to do (on the wire: its name, its number, and but for PROCEED the
/// seed's reason and recommendation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decision {
    /// Enough are ready and conflicts are tolerable; `confidence = ready − conflict / 2`.
    Proceed { confidence: f64 },
    /// Not enough ready and too many still in transit: extend the arrival window.
    Wait,
    /// Too many conflicts: run conflict resolution first.
    ResolveConflicts { conflict_rate: f64 },
    /// Not enough ready: retry with adjusted impedance compensation (also with no answers).
    Retry,
}

impl Decision {
    /// Why it is not PROCEED, in the seed's words (none for PROCEED).
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Decision::Proceed { .. } => None,
            Decision::Wait => Some("too many agents still in transit"),
            Decision::ResolveConflicts { .. } => Some("the conflict rate exceeds the threshold"),
            Decision::Retry => Some("insufficient ready agents"),
        }
    }

    /// What to do about it, in the seed's words (none for PROCEED).
    pub fn recommendation(&self) -> Option<&'static str> {
        match self {
            Decision::Proceed { .. } => None,
            Decision::Wait => Some("extend the arrival window"),
            Decision::ResolveConflicts { .. } => Some("run conflict resolution before proceeding"),
            Decision::Retry => Some("retry with adjusted impedance compensation"),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Decision::Proceed { .. } => "PROCEED",
            Decision::Wait => "WAIT",
            Decision::ResolveConflicts { .. } => "RESOLVE_CONFLICTS",
            Decision::Retry => "RETRY",
        }
    }
}

/// A decision as the API shows it.
#[derive(Serialize)]
struct Shown {
    decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    confidence: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conflict_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recommendation: Option<&'static str>,
}

impl Serialize for Decision {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (decision, confidence, conflict_rate) = match *self {
            Decision::Proceed { confidence } => ("proceed", Some(confidence), None),
            Decision::Wait => ("wait", None, None),
            Decision::ResolveConflicts { conflict_rate } => {
                ("resolve-conflicts", None, Some(conflict_rate))
            }
            Decision::Retry => ("retry", None, None),
        };
        Shown {
            decision,
            confidence,
            conflict_rate,
            reason: self.reason(),
            recommendation: self.recommendation(),
        }
        .serialize(s)
    }
}

/// Seed §5.2's `trinary_quorum_check`, with no answers at all deciding RETRY (the seed
/// divides by zero there).
pub fn decide(votes: Votes, policy: &QuorumPolicy) -> Decision {
    let total = f64::from(votes.ready) + f64::from(votes.transit) + f64::from(votes.conflict);
    if total == 0.0 {
        return Decision::Retry;
    }
    let ready = f64::from(votes.ready) / total;
    let conflict = f64::from(votes.conflict) / total;
    let transit = f64::from(votes.transit) / total;
    let enough_ready = ready >= policy.required_ready_rate;
    let conflicts_ok = conflict <= policy.max_conflict_rate;
    if enough_ready && conflicts_ok {
        Decision::Proceed {
            confidence: ready - conflict * 0.5,
        }
    } else if !enough_ready && transit > policy.max_transit_rate {
        Decision::Wait
    } else if !conflicts_ok {
        Decision::ResolveConflicts {
            conflict_rate: conflict,
        }
    } else {
        Decision::Retry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (ready, transit, conflict) → decision, at the seed's default rates.
    #[test]
    fn the_seed_table() {
        let table: &[(u32, u32, u32, &str)] = &[
            (100, 0, 0, "PROCEED"),
            (95, 0, 5, "PROCEED"),
            (95, 5, 0, "PROCEED"),
            (96, 0, 4, "PROCEED"),
            (94, 0, 6, "RESOLVE_CONFLICTS"),
            (89, 11, 0, "WAIT"),
            // Too many in transit takes precedence over too many conflicts.
            (80, 11, 9, "WAIT"),
            (90, 10, 0, "RETRY"),
            (90, 4, 6, "RESOLVE_CONFLICTS"),
            (94, 6, 0, "RETRY"),
            (0, 0, 0, "RETRY"),
            (0, 0, 1, "RESOLVE_CONFLICTS"),
            (0, 1, 0, "WAIT"),
        ];
        for &(ready, transit, conflict, want) in table {
            let got = decide(
                Votes {
                    ready,
                    transit,
                    conflict,
                },
                &QuorumPolicy::default(),
            );
            assert_eq!(
                got.name(),
                want,
                "ready {ready}, transit {transit}, conflict {conflict}"
            );
        }
    }

    /// On the wire: the name, its number, and but for PROCEED the seed's reason and
    /// recommendation.
    #[test]
    fn decisions_say_why_and_what_to_do() {
        let table = [
            (
                Decision::Proceed { confidence: 0.5 },
                serde_json::json!({"decision": "proceed", "confidence": 0.5}),
            ),
            (
                Decision::Wait,
                serde_json::json!({"decision": "wait",
                    "reason": "too many agents still in transit",
                    "recommendation": "extend the arrival window"}),
            ),
            (
                Decision::ResolveConflicts {
                    conflict_rate: 0.25,
                },
                serde_json::json!({"decision": "resolve-conflicts", "conflict_rate": 0.25,
                    "reason": "the conflict rate exceeds the threshold",
                    "recommendation": "run conflict resolution before proceeding"}),
            ),
            (
                Decision::Retry,
                serde_json::json!({"decision": "retry",
                    "reason": "insufficient ready agents",
                    "recommendation": "retry with adjusted impedance compensation"}),
            ),
        ];
        for (d, want) in table {
            assert_eq!(serde_json::to_value(d).unwrap(), want, "{d:?}");
        }
    }

    #[test]
    fn confidence_is_ready_less_half_the_conflicts() {
        let d = decide(
            Votes {
                ready: 96,
                transit: 0,
                conflict: 4,
            },
            &QuorumPolicy::default(),
        );
        let Decision::Proceed { confidence } = d else {
            panic!("{d:?}")
        };
        assert!((confidence - (0.96 - 0.02)).abs() < 1e-9);
    }
}
