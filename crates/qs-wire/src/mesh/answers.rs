//! What comes back up the mesh: an agent's answer (READY or CONFLICT, with what conflicts,
//! or word that its envelope expired), the counts of one operation under a subtree, and the
//! report a level sends the one above.

use super::*;

/// A conflict an agent reports with its −1 (seed §5.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "type")]
pub enum ConflictDetail {
    /// Incompatible world models; `depth` is how far they diverged.
    ContextDivergence { depth: u32, context_hash: String },
    /// The same fact with different values.
    DataContradiction {
        expected: String,
        received: String,
        affects_agents: u32,
    },
    /// An effect before its cause.
    TemporalParadox { detail: String },
    /// Asked for something it cannot do.
    CapabilityMismatch { missing: String },
    /// The payload's hash did not match.
    HashMismatch { expected: String, received: String },
}

impl ConflictDetail {
    pub(crate) fn check(&self) -> Result<(), String> {
        match self {
            ConflictDetail::ContextDivergence { context_hash, .. } => {
                text("context_hash", context_hash)
            }
            ConflictDetail::DataContradiction {
                expected, received, ..
            }
            | ConflictDetail::HashMismatch { expected, received } => {
                text("expected", expected)?;
                text("received", received)
            }
            ConflictDetail::TemporalParadox { detail } => text("detail", detail),
            ConflictDetail::CapabilityMismatch { missing } => text("missing", missing),
        }
    }
}

/// An agent's answer (seed Appendix B's ACK), relayed by its host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    pub op: OpId,
    pub agent: AgentId,
    pub cluster: ClusterId,
    pub state: Trinary,
    /// When the envelope reached the agent, and when it was ready, Unix milliseconds.
    pub arrived_ms: u64,
    pub ready_ms: u64,
    /// What the agent answers (an ask's answer), bounded.
    #[serde(default)]
    pub answer: String,
    #[serde(default)]
    pub conflict: Option<ConflictDetail>,
    /// The envelope had passed its time to live when it reached the agent's host (or the
    /// agent): dropped there, and said so, so the operation counts it (seed Appendix B).
    #[serde(default)]
    pub expired: bool,
}

impl Ack {
    /// What an agent's host says of a dispatch past its time to live, at `now_ms`: it was
    /// dropped there (so the operation counts it and stops waiting for it).
    pub fn expired(d: &Dispatch, now_ms: u64) -> Ack {
        Ack {
            op: d.envelope.op,
            agent: d.agent,
            cluster: d.cluster,
            state: Trinary::Transit,
            arrived_ms: now_ms,
            ready_ms: now_ms,
            answer: String::new(),
            conflict: None,
            expired: true,
        }
    }

    /// Its answer and conflict within bounds, by field.
    /// And a conflict exactly when it answers CONFLICT, whoever relays it (a worker's
    /// socket, another node): a CONFLICT without one could not be logged.
    pub fn check(&self) -> Result<(), String> {
        text("answer", &self.answer)?;
        unix_ms("arrived_ms", self.arrived_ms)?;
        unix_ms("ready_ms", self.ready_ms)?;
        match (self.state, &self.conflict) {
            (Trinary::Conflict, Some(c)) => c.check(),
            (Trinary::Conflict, None) => {
                Err("a CONFLICT answer (-1) names what conflicts (conflict)".into())
            }
            (_, Some(_)) => Err("only a CONFLICT answer (-1) carries a conflict".into()),
            (_, None) => Ok(()),
        }
    }
}

/// Counts of one operation under a subtree, reported up (a cluster's, a sector's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tally {
    /// Agents in scope.
    pub targeted: u32,
    /// Known too late before sending.
    pub skipped: u32,
    /// Not sent: down, or behind an open breaker.
    pub unreachable: u32,
    /// Not in scope yet: joined lately and not yet added to the routing pool (seed §10.2).
    #[serde(default)]
    pub joining: u32,
    pub sent: u32,
    pub ready: u32,
    pub transit: u32,
    pub conflict: u32,
    /// Answers after the window: quarantined, not failures.
    pub late: u32,
    /// Ready within the arrival window.
    pub window_hits: u32,
    /// Ready within 50 ms of the predicted time.
    pub predicted_within_50ms: u32,
    /// Messages dropped past their time to live.
    pub expired: u32,
    /// Clusters (or sectors) that did not report in time.
    pub missing_reports: u32,
    /// Sent again to another agent after a capability mismatch (seed §5.1's REROUTE).
    #[serde(default)]
    pub rerouted: u32,
    /// Clusters whose gather closed with the quorum saying WAIT (too few READY, too many
    /// still in transit) and extended their arrival window once (seed §5.2).
    #[serde(default, skip_serializing_if = "crate::bounds::is_zero")]
    pub waited: u32,
    /// A retry's (seed §5.2's RETRY): agents READY for the same message in the attempt
    /// before, counted sent and READY again without being sent it again.
    #[serde(default, skip_serializing_if = "crate::bounds::is_zero")]
    pub carried: u32,
}

impl Tally {
    /// Adds `o`'s counts (saturating: a report from the bus cannot overflow a sum).
    pub fn add(&mut self, o: &Tally) {
        let pairs: [(&mut u32, u32); 16] = [
            (&mut self.targeted, o.targeted),
            (&mut self.skipped, o.skipped),
            (&mut self.unreachable, o.unreachable),
            (&mut self.joining, o.joining),
            (&mut self.sent, o.sent),
            (&mut self.ready, o.ready),
            (&mut self.transit, o.transit),
            (&mut self.conflict, o.conflict),
            (&mut self.late, o.late),
            (&mut self.window_hits, o.window_hits),
            (&mut self.predicted_within_50ms, o.predicted_within_50ms),
            (&mut self.expired, o.expired),
            (&mut self.missing_reports, o.missing_reports),
            (&mut self.rerouted, o.rerouted),
            (&mut self.waited, o.waited),
            (&mut self.carried, o.carried),
        ];
        for (sum, n) in pairs {
            *sum = sum.saturating_add(n);
        }
    }

    /// Checks a subtree's counts (a report's, from the bus): each at most the agents a
    /// `scope` holds (a cluster [`MAX_CHILDREN`], a sector [`MAX_AGENTS_IN_SCOPE`]; an agent
    /// rerouted to counts as targeted again), and no more answers than sends (but in a
    /// `late` report, of answers after its subtree reported), nor more answers in the
    /// window or on time than answers counted.
    pub fn check(&self, scope: Scope, late: bool) -> Result<(), String> {
        let most = match scope {
            Scope::Cluster(_) => MAX_CHILDREN,
            Scope::Sector(_) => MAX_AGENTS_IN_SCOPE,
            Scope::Global => MAX_AGENTS_IN_SCOPE * MAX_CHILDREN,
        } as u64;
        let clusters = match scope {
            Scope::Cluster(_) => 1,
            Scope::Sector(_) => MAX_CHILDREN,
            Scope::Global => MAX_CHILDREN * MAX_CHILDREN,
        } as u64;
        let counts = [
            ("waited", self.waited, clusters),
            ("targeted", self.targeted, 2 * most),
            ("skipped", self.skipped, most),
            ("unreachable", self.unreachable, most),
            ("joining", self.joining, most),
            ("sent", self.sent, most),
            ("rerouted", self.rerouted, most),
            ("missing_reports", self.missing_reports, most),
            ("carried", self.carried, most),
        ];
        for (field, n, max) in counts {
            if u64::from(n) > max {
                return Err(format!("tally.{field}: {n}; at most {max} in {scope:?}"));
            }
        }
        let counted = [self.ready, self.transit, self.conflict].map(u64::from);
        let counted: u64 = counted.iter().sum();
        let heard = counted + u64::from(self.late) + u64::from(self.expired);
        // (A late report counts the late answers it carries, not what was sent; an
        // extension's, those of its cluster's agents.)
        if late && self.waited > 0 && heard > most {
            return Err(format!("tally: {heard} heard; at most {most} in {scope:?}"));
        }
        if heard > u64::from(self.sent) && !late {
            return Err(format!(
                "tally: {heard} heard (ready, transit, conflict, late, expired) of {} sent",
                self.sent
            ));
        }
        if self.carried > self.ready {
            return Err(format!(
                "tally.carried: {} of {} READY",
                self.carried, self.ready
            ));
        }
        for (field, n) in [
            ("window_hits", self.window_hits),
            ("predicted_within_50ms", self.predicted_within_50ms),
        ] {
            if u64::from(n) > counted {
                return Err(format!(
                    "tally.{field}: {n} of {counted} answers counted (ready, transit, conflict)"
                ));
            }
        }
        Ok(())
    }

    /// Answers heard, of any state, expiries included (saturating).
    pub fn heard(&self) -> u32 {
        [
            self.ready,
            self.transit,
            self.conflict,
            self.late,
            self.expired,
        ]
        .iter()
        .fold(0u32, |a, b| a.saturating_add(*b))
    }
}

/// A subtree's result, reported to the level above.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub op: OpId,
    pub scope: Scope,
    pub from: NodeId,
    pub tally: Tally,
    /// Distinct answers and how many gave each (at most 16, the most frequent).
    #[serde(default)]
    pub answers: Vec<AnswerCount>,
    /// Conflicts escalated up (seed §5.1: priority 3 to the sector's coordinator, 4 on to
    /// the root), the most urgent first, at most [`MAX_ESCALATED`]. Left out when empty, so
    /// a node from before reads the report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub escalated: Vec<Escalated>,
    /// Escalated conflicts past those carried.
    #[serde(default, skip_serializing_if = "crate::bounds::is_zero")]
    pub escalated_more: u32,
    /// Sent after the subtree's report: the conflicts of answers that came after its window,
    /// for the level above to log; its counts are not the subtree's result. Or, with
    /// `tally.waited`, a cluster's answers in the extension its WAIT gave its window (seed
    /// §5.2), which the levels above add to its result while they still gather. Left out
    /// when false.
    #[serde(default, skip_serializing_if = "crate::bounds::is_zero")]
    pub late: bool,
    /// Who answered what, for an operation of a few agents (a delegation, a small ask): at
    /// most [`MAX_NAMED`]. Left out when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub named: Vec<NamedAnswer>,
}

/// One agent's answer, named: where it is, its class, what it answered and how long its
/// work took (on its host's clock).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedAnswer {
    pub agent: AgentId,
    pub cluster: ClusterId,
    pub sector: SectorId,
    /// The class its lead measured it in when it chose it (none: not measured yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<ImpedanceClass>,
    pub state: Trinary,
    pub answer: String,
    pub took_ms: u64,
}

/// Most named answers a report (and an operation's result) carries.
pub const MAX_NAMED: usize = 16;

/// A conflict escalated up the tree, as its agent reported it: the node that takes it
/// classifies it again from the detail (a priority is not taken on trust).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Escalated {
    pub agent: AgentId,
    pub cluster: ClusterId,
    /// When its lead heard it, Unix milliseconds.
    pub at_ms: u64,
    pub detail: ConflictDetail,
}

/// Most escalated conflicts a report carries.
pub const MAX_ESCALATED: usize = 16;

impl Report {
    /// Checks the bounds of what a report carries.
    pub fn check(&self) -> Result<(), String> {
        self.tally.check(self.scope, self.late)?;
        at_most("answers", self.answers.len(), MAX_ANSWERS)?;
        for a in &self.answers {
            text("answer", &a.answer)?;
        }
        at_most("named answers", self.named.len(), MAX_NAMED)?;
        for n in &self.named {
            text("named answer", &n.answer)?;
        }
        check_escalated(self.escalated.iter())
    }
}

/// Checks conflicts escalated in a report or a summary: at most [`MAX_ESCALATED`], each
/// detail within its bounds.
pub(crate) fn check_escalated<'a>(
    items: impl ExactSizeIterator<Item = &'a Escalated>,
) -> Result<(), String> {
    at_most("escalated", items.len(), MAX_ESCALATED)?;
    for (i, e) in items.enumerate() {
        e.detail
            .check()
            .map_err(|err| format!("escalated[{i}].detail: {err}"))?;
    }
    Ok(())
}

/// Unresolved conflicts under a cluster or a sector, summed up the tree (seed §8.2), so the
/// root knows of every one still open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConflictCounts {
    pub open: u32,
    /// Of the open, those of priority 3 or 4.
    pub critical: u32,
    /// Of the open, those past the time their priority gives to resolve them.
    pub overdue: u32,
}

/// Most unresolved conflicts a lead holds (its quarantine), so a cluster's count.
pub const MAX_OPEN_CONFLICTS: u32 = 10_000;

impl ConflictCounts {
    pub fn add(&mut self, o: &ConflictCounts) {
        self.open = self.open.saturating_add(o.open);
        self.critical = self.critical.saturating_add(o.critical);
        self.overdue = self.overdue.saturating_add(o.overdue);
    }

    /// Checks the counts of `clusters` clusters.
    pub fn check(&self, clusters: u32) -> Result<(), String> {
        let most = u64::from(MAX_OPEN_CONFLICTS) * u64::from(clusters.max(1));
        if u64::from(self.open) > most {
            return Err(format!("conflicts: {} open (at most {most})", self.open));
        }
        match self.critical > self.open || self.overdue > self.open {
            true => Err(format!(
                "conflicts: {} critical and {} overdue of {} open",
                self.critical, self.overdue, self.open
            )),
            false => Ok(()),
        }
    }
}

/// One distinct answer to an ask, and how many agents gave it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerCount {
    pub answer: String,
    pub count: u32,
}

/// Most distinct answers a report carries.
pub const MAX_ANSWERS: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    /// (state, with a conflict) → accepted: a conflict goes with CONFLICT and only with it.
    #[test]
    fn a_conflict_goes_with_a_conflict_answer_only() {
        let detail = ConflictDetail::CapabilityMismatch {
            missing: "gpu".into(),
        };
        let table = [
            (Trinary::Ready, false, true),
            (Trinary::Ready, true, false),
            (Trinary::Transit, false, true),
            (Trinary::Transit, true, false),
            (Trinary::Conflict, true, true),
            (Trinary::Conflict, false, false),
        ];
        for (state, with, ok) in table {
            let ack = Ack {
                op: OpId(1),
                agent: AgentId(2),
                cluster: ClusterId(0),
                state,
                arrived_ms: 0,
                ready_ms: 0,
                answer: String::new(),
                conflict: with.then(|| detail.clone()),
                expired: false,
            };
            assert_eq!(ack.check().is_ok(), ok, "{state:?} {with}");
        }
    }
}
