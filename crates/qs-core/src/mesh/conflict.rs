//! Conflicts (seed §5.1): a −1 is information, not failure. Each conflict gets an immutable
//! record (the shell appends it to the ledger), its conflicting data goes to a bounded
//! quarantine, and it is classified: a priority (0–4), a resolution strategy, and whom to
//! escalate to.

use crate::time::Time;
use qs_wire::mesh::{AgentId, ConflictDetail, OpId};
use serde::Serialize;
use std::collections::VecDeque;

/// Most conflicts a node holds in quarantine; the oldest leave first (the ledger keeps all).
pub const MAX_QUARANTINE: usize = 10_000;

/// Seed §5.1's classes, by the brief's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    WorldModelDivergence,
    ValueMismatch,
    CausalityViolation,
    CapabilityMismatch,
    IntegrityFailure,
}

/// How a class is resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Strategy {
    /// Parallel context branches, convergence points, human review of what cannot merge.
    BranchAndReconcile,
    /// Trace both values to their origin; prefer the stronger provenance.
    ProvenanceTrace,
    /// Check causal order (ledger sequence numbers), find the drifting clock, rebuild.
    ClockReconciliation,
    /// Route the work to an agent that has the capability; fix the capability map.
    Reroute,
    /// Quarantine the agent and reload it from known-good state.
    QuarantineAndReload,
}

/// Who must hear of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Escalation {
    None,
    Sector,
    /// The sector coordinator and the operator.
    Operator,
}

/// One conflict, as logged.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Record {
    pub seq: u64,
    pub at_ms: u64,
    pub op: OpId,
    pub agent: AgentId,
    pub class: Class,
    pub priority: u8,
    pub strategy: Strategy,
    pub escalation: Escalation,
    pub detail: ConflictDetail,
}

/// Seed §5.1's `classify_conflict_priority` and strategies.
pub fn classify(detail: &ConflictDetail) -> (Class, u8, Strategy) {
    match detail {
        ConflictDetail::ContextDivergence { depth, .. } => (
            Class::WorldModelDivergence,
            if *depth > 10 { 3 } else { 2 },
            Strategy::BranchAndReconcile,
        ),
        ConflictDetail::DataContradiction { affects_agents, .. } => (
            Class::ValueMismatch,
            if *affects_agents > 100 { 3 } else { 2 },
            Strategy::ProvenanceTrace,
        ),
        ConflictDetail::TemporalParadox { .. } => {
            (Class::CausalityViolation, 4, Strategy::ClockReconciliation)
        }
        ConflictDetail::CapabilityMismatch { .. } => {
            (Class::CapabilityMismatch, 1, Strategy::Reroute)
        }
        ConflictDetail::HashMismatch { .. } => {
            (Class::IntegrityFailure, 4, Strategy::QuarantineAndReload)
        }
    }
}

fn escalation(priority: u8) -> Escalation {
    match priority {
        4.. => Escalation::Operator,
        3 => Escalation::Sector,
        _ => Escalation::None,
    }
}

/// A node's conflict log: what it recorded, and the quarantine.
#[derive(Clone, Debug, Default)]
pub struct Log {
    next_seq: u64,
    quarantine: VecDeque<Record>,
    by_class: [u64; 5],
}

impl Log {
    /// Records a conflict reported with a −1, returning the record to append to the ledger.
    pub fn record(
        &mut self,
        op: OpId,
        agent: AgentId,
        detail: ConflictDetail,
        now: Time,
    ) -> Record {
        let (class, priority, strategy) = classify(&detail);
        self.next_seq += 1;
        let r = Record {
            seq: self.next_seq,
            at_ms: now.as_millis(),
            op,
            agent,
            class,
            priority,
            strategy,
            escalation: escalation(priority),
            detail,
        };
        self.by_class[class as usize] += 1;
        if self.quarantine.len() == MAX_QUARANTINE {
            self.quarantine.pop_front();
        }
        self.quarantine.push_back(r.clone());
        r
    }

    /// Quarantined conflicts, newest last.
    pub fn quarantined(&self) -> impl Iterator<Item = &Record> {
        self.quarantine.iter()
    }

    /// Resolves (releases) what an agent had in quarantine; returns how many.
    pub fn release(&mut self, agent: AgentId) -> usize {
        let before = self.quarantine.len();
        self.quarantine.retain(|r| r.agent != agent);
        before - self.quarantine.len()
    }

    pub fn total(&self) -> u64 {
        self.next_seq
    }

    pub fn by_class(&self) -> [(Class, u64); 5] {
        [
            (Class::WorldModelDivergence, self.by_class[0]),
            (Class::ValueMismatch, self.by_class[1]),
            (Class::CausalityViolation, self.by_class[2]),
            (Class::CapabilityMismatch, self.by_class[3]),
            (Class::IntegrityFailure, self.by_class[4]),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_the_seed() {
        let s = |x: &str| x.to_string();
        let table = [
            (
                ConflictDetail::ContextDivergence {
                    depth: 11,
                    context_hash: s("h"),
                },
                Class::WorldModelDivergence,
                3,
                Escalation::Sector,
            ),
            (
                ConflictDetail::ContextDivergence {
                    depth: 10,
                    context_hash: s("h"),
                },
                Class::WorldModelDivergence,
                2,
                Escalation::None,
            ),
            (
                ConflictDetail::DataContradiction {
                    expected: s("1"),
                    received: s("2"),
                    affects_agents: 101,
                },
                Class::ValueMismatch,
                3,
                Escalation::Sector,
            ),
            (
                ConflictDetail::DataContradiction {
                    expected: s("1"),
                    received: s("2"),
                    affects_agents: 100,
                },
                Class::ValueMismatch,
                2,
                Escalation::None,
            ),
            (
                ConflictDetail::TemporalParadox { detail: s("x") },
                Class::CausalityViolation,
                4,
                Escalation::Operator,
            ),
            (
                ConflictDetail::CapabilityMismatch { missing: s("gpu") },
                Class::CapabilityMismatch,
                1,
                Escalation::None,
            ),
            (
                ConflictDetail::HashMismatch {
                    expected: s("a"),
                    received: s("b"),
                },
                Class::IntegrityFailure,
                4,
                Escalation::Operator,
            ),
        ];
        let mut log = Log::default();
        for (detail, class, priority, esc) in table {
            let r = log.record(OpId(1), AgentId(9), detail, Time::from_millis(5));
            assert_eq!((r.class, r.priority, r.escalation), (class, priority, esc));
        }
        assert_eq!(log.total(), 7);
        assert_eq!(log.quarantined().count(), 7);
        assert_eq!(log.release(AgentId(9)), 7);
        assert_eq!(log.quarantined().count(), 0);
        assert_eq!(log.total(), 7, "the log itself is append-only");
    }
}
