//! Conflicts (seed §5.1): a −1 is information, not failure. Each conflict gets an immutable
//! record (the shell appends it to the ledger), its conflicting data goes to a bounded
//! quarantine until it is resolved, and it is classified: a priority (0–4) with the time it
//! gives to resolve it, a resolution strategy, and whom to escalate to.
//!
//! How each is resolved: a capability mismatch when a capable agent did the work instead
//! (REROUTE: it answered READY); a divergence, a value mismatch or a causality violation
//! when the agent accepts the same content later (the branch converged, the weaker source
//! was updated, the causal chain holds again); any by an operator's `heal`, the only way out
//! for an integrity failure (its agent is quarantined until then). A conflict whose agent
//! another node leads after a new tree leaves this quarantine with the agent's handover, for
//! its new lead to hold. Conflicts escalated here from below are notices: the lead that
//! heard them resolves them.

use crate::time::Time;
use qs_wire::NodeId;
use qs_wire::mesh::{
    AgentId, ClusterId, ConflictCounts, ConflictDetail, Escalated, HandedConflict, OpId,
};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

/// Most unresolved conflicts a node holds in quarantine; the oldest leave first (the ledger
/// keeps all).
pub const MAX_QUARANTINE: usize = qs_wire::mesh::MAX_OPEN_CONFLICTS as usize;
/// Most escalated notices a node keeps (the ledger keeps all).
pub const MAX_NOTICES: usize = 1_000;

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

impl Strategy {
    /// Whether the agent's accepting the same content later resolves it.
    fn converges(self) -> bool {
        matches!(
            self,
            Strategy::BranchAndReconcile
                | Strategy::ProvenanceTrace
                | Strategy::ClockReconciliation
        )
    }
}

/// Who must hear of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Escalation {
    None,
    Sector,
    /// The sector coordinator and the root (the operator's).
    Operator,
}

/// One conflict, as logged.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Record {
    pub seq: u64,
    pub at_ms: u64,
    pub op: OpId,
    pub agent: AgentId,
    pub cluster: ClusterId,
    pub class: Class,
    pub priority: u8,
    pub strategy: Strategy,
    pub escalation: Escalation,
    /// To be resolved by then (seed §5.1); none for priority 0, "when convenient".
    pub due_ms: Option<u64>,
    /// The content the agent contradicted (its envelope's hash).
    pub content_hash: String,
    /// The lead (or coordinator) that escalated it here; none where it was heard.
    pub escalated_by: Option<NodeId>,
    /// The former lead that handed it over with its agent, where it was heard there.
    pub handed_by: Option<NodeId>,
    pub detail: ConflictDetail,
}

/// How a conflict was resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resolution {
    /// The agent accepted the same content later.
    Agreed,
    /// A capable agent did the work instead.
    Rerouted,
    /// An operator healed its scope.
    Released,
    /// Handed over to its cluster's new lead, with the agent.
    HandedOver,
    /// Its cluster has no lead now that could take it.
    LeadChanged,
}

impl Resolution {
    /// Its name in the ledger, as it serializes.
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Agreed => "agreed",
            Resolution::Rerouted => "rerouted",
            Resolution::Released => "released",
            Resolution::HandedOver => "handed-over",
            Resolution::LeadChanged => "lead-changed",
        }
    }
}

/// A conflict resolved, for the ledger.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Resolved {
    pub seq: u64,
    pub agent: AgentId,
    pub cluster: ClusterId,
    pub how: Resolution,
    pub at_ms: u64,
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

/// Seed §5.1: 4 immediate, 3 within a minute, 2 within 10 minutes, 1 within an hour, 0
/// when convenient.
pub fn resolve_within_ms(priority: u8) -> Option<u64> {
    match priority {
        4.. => Some(0),
        3 => Some(60_000),
        2 => Some(600_000),
        1 => Some(3_600_000),
        0 => None,
    }
}

fn escalation(priority: u8) -> Escalation {
    match priority {
        4.. => Escalation::Operator,
        3 => Escalation::Sector,
        _ => Escalation::None,
    }
}

/// What a conflict is about: where, for what, and what.
#[derive(Clone, Debug, PartialEq)]
pub struct Heard {
    pub op: OpId,
    pub agent: AgentId,
    pub cluster: ClusterId,
    pub content_hash: String,
    pub detail: ConflictDetail,
}

/// A node's conflict log: the unresolved ones it heard (the quarantine), and the notices
/// escalated to it.
#[derive(Clone, Debug, Default)]
pub struct Log {
    next_seq: u64,
    open: BTreeMap<u64, Record>,
    /// Open conflicts per agent (their sequence numbers): an answer from an agent with
    /// none costs one lookup, and one with some, a look at its own.
    open_agents: BTreeMap<AgentId, Vec<u64>>,
    notices: VecDeque<Record>,
    by_class: [u64; 5],
    resolved: u64,
    escalated_here: u64,
    /// Unresolved ones that left the quarantine when it was full.
    dropped: u64,
}

impl Log {
    fn record_of(&mut self, h: Heard, escalated_by: Option<NodeId>, at_ms: u64) -> Record {
        let (class, priority, strategy) = classify(&h.detail);
        self.next_seq += 1;
        Record {
            seq: self.next_seq,
            at_ms,
            op: h.op,
            agent: h.agent,
            cluster: h.cluster,
            class,
            priority,
            strategy,
            escalation: escalation(priority),
            due_ms: resolve_within_ms(priority).map(|ms| at_ms.saturating_add(ms)),
            content_hash: h.content_hash,
            escalated_by,
            handed_by: None,
            detail: h.detail,
        }
    }

    /// Records a conflict reported with a −1, returning the record to append to the ledger.
    pub fn record(&mut self, h: Heard, now: Time) -> Record {
        let r = self.record_of(h, None, now.as_millis());
        self.hold(r)
    }

    /// Takes a conflict a former lead of `cluster` handed over with its agent, heard there
    /// when it says (no later than now): its time to resolve runs from then.
    pub fn handed(
        &mut self,
        from: NodeId,
        cluster: ClusterId,
        c: HandedConflict,
        now: Time,
    ) -> Record {
        let h = Heard {
            op: c.op,
            agent: c.agent,
            cluster,
            content_hash: c.content_hash,
            detail: c.detail,
        };
        let mut r = self.record_of(h, None, c.at_ms.min(now.as_millis()));
        r.handed_by = Some(from);
        self.hold(r)
    }

    fn hold(&mut self, r: Record) -> Record {
        self.by_class[r.class as usize] += 1;
        if self.open.len() == MAX_QUARANTINE
            && let Some((_, old)) = self.open.pop_first()
        {
            self.forget(old.agent, old.seq);
            self.dropped += 1;
        }
        self.open_agents.entry(r.agent).or_default().push(r.seq);
        self.open.insert(r.seq, r.clone());
        r
    }

    /// Records a conflict escalated here by `from` (classified here again), returning the
    /// record to append to the ledger.
    pub fn escalated(&mut self, from: NodeId, op: OpId, e: Escalated, now: Time) -> Record {
        let h = Heard {
            op,
            agent: e.agent,
            cluster: e.cluster,
            content_hash: String::new(),
            detail: e.detail,
        };
        let r = self.record_of(h, Some(from), now.as_millis());
        self.escalated_here += 1;
        if self.notices.len() == MAX_NOTICES {
            self.notices.pop_front();
        }
        self.notices.push_back(r.clone());
        r
    }

    fn forget(&mut self, agent: AgentId, seq: u64) {
        if let Some(seqs) = self.open_agents.get_mut(&agent) {
            seqs.retain(|s| *s != seq);
            if seqs.is_empty() {
                self.open_agents.remove(&agent);
            }
        }
    }

    /// Takes open conflict `seq` out of the quarantine.
    fn take_open(&mut self, seq: u64) -> Option<Record> {
        let r = self.open.remove(&seq)?;
        self.forget(r.agent, seq);
        Some(r)
    }

    /// Resolves the open conflicts `seqs`, returning them for the ledger.
    fn resolve(&mut self, how: Resolution, now: Time, seqs: Vec<u64>) -> Vec<Resolved> {
        let taken: Vec<Record> = seqs.into_iter().filter_map(|s| self.take_open(s)).collect();
        taken.iter().map(|r| self.settle(r, how, now)).collect()
    }

    /// The agent accepted `content_hash`: its divergences, mismatches and causality
    /// violations over that content are resolved.
    pub fn agreed(&mut self, agent: AgentId, content_hash: &str, now: Time) -> Vec<Resolved> {
        let Some(seqs) = self.open_agents.get(&agent) else {
            return Vec::new();
        };
        let seqs: Vec<u64> = seqs
            .iter()
            .copied()
            .filter(|s| {
                self.open
                    .get(s)
                    .is_some_and(|r| r.strategy.converges() && r.content_hash == content_hash)
            })
            .collect();
        self.resolve(Resolution::Agreed, now, seqs)
    }

    /// A capable agent did the work of conflict `seq` instead.
    pub fn rerouted(&mut self, seq: u64, now: Time) -> Vec<Resolved> {
        self.resolve(Resolution::Rerouted, now, vec![seq])
    }

    /// An operator healed the clusters `inside` picks: their conflicts are released, and
    /// the notices about them dropped.
    pub fn release(&mut self, now: Time, inside: impl Fn(ClusterId) -> bool) -> Vec<Resolved> {
        self.notices.retain(|r| !inside(r.cluster));
        let seqs = self.picked(|r| inside(r.cluster));
        self.resolve(Resolution::Released, now, seqs)
    }

    fn picked(&self, which: impl Fn(&Record) -> bool) -> Vec<u64> {
        self.open
            .values()
            .filter(|r| which(r))
            .map(|r| r.seq)
            .collect()
    }

    /// A new hierarchy: each open conflict whose agent `cluster_now` still places here
    /// stays (in the agent's cluster now); the others leave this quarantine, returned for
    /// the caller to hand over (or not), then to [`Log::settle`].
    pub fn leave(&mut self, cluster_now: impl Fn(AgentId) -> Option<ClusterId>) -> Vec<Record> {
        let mut gone = Vec::new();
        for r in self.open.values_mut() {
            match cluster_now(r.agent) {
                Some(c) => r.cluster = c,
                None => gone.push(r.seq),
            }
        }
        gone.into_iter().filter_map(|s| self.take_open(s)).collect()
    }

    /// A conflict that left this quarantine ([`Log::leave`]) is resolved here as `how`.
    pub fn settle(&mut self, r: &Record, how: Resolution, now: Time) -> Resolved {
        self.resolved += 1;
        Resolved {
            seq: r.seq,
            agent: r.agent,
            cluster: r.cluster,
            how,
            at_ms: now.as_millis(),
        }
    }

    /// Unresolved conflicts, oldest first.
    pub fn quarantined(&self) -> impl Iterator<Item = &Record> {
        self.open.values()
    }

    /// Notices escalated here, newest last.
    pub fn notices(&self) -> impl Iterator<Item = &Record> {
        self.notices.iter()
    }

    /// Counts of the unresolved conflicts of the clusters `inside` picks, at `now`.
    pub fn counts(&self, now: Time, inside: impl Fn(ClusterId) -> bool) -> ConflictCounts {
        let mut c = ConflictCounts::default();
        for r in self.open.values().filter(|r| inside(r.cluster)) {
            c.open += 1;
            c.critical += u32::from(r.priority >= 3);
            c.overdue += u32::from(r.due_ms.is_some_and(|d| now.as_millis() > d));
        }
        c
    }

    /// Conflicts heard here, all time.
    pub fn total(&self) -> u64 {
        self.by_class.iter().sum()
    }

    pub fn resolved(&self) -> u64 {
        self.resolved
    }

    pub fn escalated_here(&self) -> u64 {
        self.escalated_here
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
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
            let r = log.record(heard(9, "h", detail), Time::from_millis(5));
            assert_eq!((r.class, r.priority, r.escalation), (class, priority, esc));
            let within = resolve_within_ms(priority);
            assert_eq!(r.due_ms, within.map(|ms| 5 + ms), "{r:?}");
        }
        assert_eq!(log.total(), 7);
        assert_eq!(log.quarantined().count(), 7);
        assert_eq!(log.release(Time::from_millis(6), |_| true).len(), 7);
        assert_eq!(log.quarantined().count(), 0);
        assert_eq!(log.total(), 7, "the log itself is append-only");
    }

    fn heard(agent: u64, content_hash: &str, detail: ConflictDetail) -> Heard {
        Heard {
            op: OpId(1),
            agent: AgentId(agent),
            cluster: ClusterId(agent as u32 / 100),
            content_hash: content_hash.into(),
            detail,
        }
    }

    /// Seed §5.1's deadlines: 4 at once, 3 in a minute, 2 in ten, 1 in an hour, 0 never.
    #[test]
    fn each_priority_gives_its_time_to_resolve() {
        let table = [
            (4, Some(0)),
            (3, Some(60_000)),
            (2, Some(600_000)),
            (1, Some(3_600_000)),
            (0, None),
        ];
        for (priority, within) in table {
            assert_eq!(resolve_within_ms(priority), within, "priority {priority}");
        }
    }

    /// (the conflict, what happens next) → whether it is resolved, and how.
    #[test]
    fn each_strategy_is_resolved_by_what_answers_it() {
        let s = |x: &str| x.to_string();
        let divergence = ConflictDetail::ContextDivergence {
            depth: 3,
            context_hash: s("c"),
        };
        let mismatch = ConflictDetail::DataContradiction {
            expected: s("1"),
            received: s("2"),
            affects_agents: 1,
        };
        let paradox = ConflictDetail::TemporalParadox { detail: s("x") };
        let capability = ConflictDetail::CapabilityMismatch { missing: s("gpu") };
        let integrity = ConflictDetail::HashMismatch {
            expected: s("a"),
            received: s("b"),
        };
        #[derive(Clone, Copy, Debug)]
        enum Next {
            SameContent,
            OtherContent,
            OtherAgent,
            Rerouted,
            Healed,
            HealedElsewhere,
        }
        use Next::*;
        let table = [
            (&divergence, SameContent, Some(Resolution::Agreed)),
            (&divergence, OtherContent, None),
            (&divergence, OtherAgent, None),
            (&mismatch, SameContent, Some(Resolution::Agreed)),
            (&mismatch, OtherContent, None),
            (&paradox, SameContent, Some(Resolution::Agreed)),
            (&capability, SameContent, None),
            (&capability, Rerouted, Some(Resolution::Rerouted)),
            (&integrity, SameContent, None),
            (&integrity, Healed, Some(Resolution::Released)),
            (&integrity, HealedElsewhere, None),
            (&mismatch, Healed, Some(Resolution::Released)),
        ];
        for (detail, next, want) in table {
            let mut log = Log::default();
            let r = log.record(heard(150, "h", detail.clone()), Time::from_millis(1));
            let at = Time::from_millis(2);
            let got = match next {
                SameContent => log.agreed(AgentId(150), "h", at),
                OtherContent => log.agreed(AgentId(150), "other", at),
                OtherAgent => log.agreed(AgentId(151), "h", at),
                Rerouted => log.rerouted(r.seq, at),
                Healed => log.release(at, |c| c == ClusterId(1)),
                HealedElsewhere => log.release(at, |c| c == ClusterId(2)),
            };
            let how = got.first().map(|x| x.how);
            assert_eq!(how, want, "{detail:?} then {next:?}");
            let open = log.counts(at, |_| true).open;
            assert_eq!(open, u32::from(want.is_none()), "{detail:?} then {next:?}");
            assert_eq!(log.resolved(), u64::from(want.is_some()));
        }
    }

    /// Each resolution's name in the ledger is the one it serializes to.
    #[test]
    fn resolution_names_are_their_serialized_names() {
        use Resolution::*;
        for how in [Agreed, Rerouted, Released, HandedOver, LeadChanged] {
            assert_eq!(serde_json::to_value(how).unwrap(), how.as_str());
        }
    }

    /// A new tree: the conflicts of agents still led here stay (under their cluster now),
    /// the others leave the quarantine.
    #[test]
    fn a_new_tree_keeps_the_conflicts_of_agents_still_led_here() {
        let mut log = Log::default();
        let d = ConflictDetail::TemporalParadox { detail: "x".into() };
        log.record(heard(110, "h", d.clone()), Time::from_millis(1));
        log.record(heard(220, "h", d), Time::from_millis(1));
        let gone = log.leave(|a| (a == AgentId(110)).then_some(ClusterId(7)));
        let gone: Vec<_> = gone.iter().map(|r| r.agent).collect();
        assert_eq!(gone, [AgentId(220)]);
        let kept: Vec<_> = log.quarantined().map(|r| r.cluster).collect();
        assert_eq!(kept, [ClusterId(7)]);
        // Still resolved by its agent's agreement, and only once.
        assert_eq!(log.agreed(AgentId(110), "h", Time::from_millis(3)).len(), 1);
        assert_eq!(log.agreed(AgentId(110), "h", Time::from_millis(4)).len(), 0);
        assert_eq!(log.counts(Time::from_millis(4), |_| true).open, 0);
    }

    /// Open, critical and overdue counts per cluster, as the summaries carry them up; a
    /// notice escalated here is no open conflict of this node's.
    #[test]
    fn counts_say_what_is_open_critical_and_overdue() {
        let s = |x: &str| x.to_string();
        let mut log = Log::default();
        let t0 = Time::from_millis(1_000);
        let integrity = ConflictDetail::HashMismatch {
            expected: s("a"),
            received: s("b"),
        };
        let mismatch = ConflictDetail::DataContradiction {
            expected: s("1"),
            received: s("2"),
            affects_agents: 1,
        };
        log.record(heard(110, "h", integrity.clone()), t0);
        log.record(heard(120, "h", mismatch.clone()), t0);
        log.record(heard(220, "h", mismatch), t0);
        let e = Escalated {
            agent: AgentId(330),
            cluster: ClusterId(3),
            at_ms: 900,
            detail: integrity,
        };
        let n = log.escalated(NodeId::new("lead-3").unwrap(), OpId(1), e, t0);
        assert_eq!((n.priority, n.escalated_by.is_some()), (4, true));
        let in1 = |c: ClusterId| c == ClusterId(1);
        let at = |ms: u64| Time::from_millis(1_000 + ms);
        let c = |open, critical, overdue| ConflictCounts {
            open,
            critical,
            overdue,
        };
        assert_eq!(log.counts(at(0), in1), c(2, 1, 0));
        assert_eq!(log.counts(at(1), in1), c(2, 1, 1), "priority 4: at once");
        assert_eq!(log.counts(at(600_001), in1), c(2, 1, 2));
        assert_eq!(log.counts(at(600_001), |_| true), c(3, 1, 3));
        assert_eq!((log.escalated_here(), log.notices().count()), (1, 1));
        assert_eq!(log.release(at(5), |c| c == ClusterId(3)).len(), 0);
        assert_eq!(log.notices().count(), 0, "healed: the notice goes too");
    }
}
