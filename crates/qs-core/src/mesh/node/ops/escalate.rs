//! Conflicts escalated up with the reports (seed §5.1, "notify relevant parties"): a lead's
//! of priority 3 and 4 go to its sector's coordinator, which logs them and passes those of
//! priority 4 on to the root; in the urgent mode, where the leads report to the root, the
//! root takes both. Nothing is sent for them but the reports that go up anyway; a report
//! that comes after its operation settled still has its conflicts logged, and those of
//! priority 4 in it go to the root with the coordinator's next sector summary.

use super::*;
use crate::mesh::conflict;
use qs_wire::mesh::{Escalated, LateEscalated, MAX_ESCALATED, SectorId, SectorSummary};

/// Priorities from which a conflict goes to the sector's coordinator, and on to the root.
pub(crate) const TO_SECTOR: u8 = 3;
pub(crate) const TO_ROOT: u8 = 4;

/// What a report will carry: the most urgent first, at most [`MAX_ESCALATED`], the rest
/// counted.
#[derive(Clone, Debug, Default)]
pub(crate) struct Escalations {
    items: Vec<(u8, Escalated)>,
    more: u32,
}

impl Escalations {
    fn push(&mut self, priority: u8, e: Escalated) {
        if self.items.len() < MAX_ESCALATED {
            self.items.push((priority, e));
            return;
        }
        self.more = self.more.saturating_add(1);
        // Full: it takes the place of a less urgent one.
        if let Some(i) = self.items.iter().position(|(p, _)| *p < priority) {
            self.items[i] = (priority, e);
        }
    }

    /// For the report: the escalated, most urgent first, and how many more there were.
    pub(super) fn take(&mut self) -> (Vec<Escalated>, u32) {
        let mut items = std::mem::take(&mut self.items);
        items.sort_by_key(|x| std::cmp::Reverse(x.0));
        let more = std::mem::take(&mut self.more);
        (items.into_iter().map(|(_, e)| e).collect(), more)
    }
}

/// A conflict heard at a lead goes up with its report if its priority says so.
pub(super) fn heard(into: &mut Escalations, r: &conflict::Record) {
    if r.priority >= TO_SECTOR {
        let e = Escalated {
            agent: r.agent,
            cluster: r.cluster,
            at_ms: r.at_ms,
            detail: r.detail.clone(),
        };
        into.push(r.priority, e);
    }
}

/// The conflicts escalated in a report from below, at a coordinator (which passes those for
/// the root on, `pass_on`) or at the root. Each must be of an agent of a cluster in the
/// report's scope, in a report from the node the tree names for that scope (else it is
/// dropped and counted as refused); it is classified here again. A report from this node
/// itself brings nothing new to its log.
pub(super) fn from_report(
    node: &mut MeshNode,
    rep: &Report,
    mut pass_on: Option<&mut Escalations>,
    now: Time,
) {
    // Only from the node the tree names for the report's scope.
    if rep.escalated.is_empty() || node.tree.named_for(rep.scope) != Some(&rep.from) {
        node.refused_senders += u64::from(!rep.escalated.is_empty());
        return;
    }
    // The root stands in for the coordinators where the leads report to it.
    let least = match (&pass_on, rep.scope) {
        (None, Scope::Sector(_)) => TO_ROOT,
        _ => TO_SECTOR,
    };
    for e in &rep.escalated {
        let taken = take(node, &rep.from, rep.scope, rep.op, e, least, now);
        if let Some(priority) = taken.filter(|p| *p >= TO_ROOT)
            && let Some(p) = pass_on.as_deref_mut()
        {
            p.push(priority, e.clone());
        }
    }
    if let Some(p) = pass_on {
        p.more = p.more.saturating_add(rep.escalated_more);
    }
}

/// One conflict escalated by `from`, who speaks for `scope`: logged here (unless `from` is
/// this node) if it is of an agent of a cluster in the scope and of priority `least` or
/// more, classified here again; its priority when taken. One that is not of the scope is
/// counted as refused.
fn take(
    node: &mut MeshNode,
    from: &NodeId,
    scope: Scope,
    op: OpId,
    e: &Escalated,
    least: u8,
    now: Time,
) -> Option<u8> {
    let inside = scope != Scope::Global && node.tree.holds(scope, e.cluster);
    if !inside || node.tree.cluster_of(e.agent) != Some(e.cluster) {
        node.refused_senders += 1;
        return None;
    }
    let (_, priority, _) = conflict::classify(&e.detail);
    if priority < least {
        return None;
    }
    if *from != node.me {
        let r = node.conflicts.escalated(from.clone(), op, e.clone(), now);
        node.out.push_back(MeshOutput::Conflict(r));
    }
    Some(priority)
}

/// How many of a sector's next summaries carry a late conflict to the root (it takes each
/// once): a lost summary loses nothing.
pub(crate) const LATE_SENDS: u8 = 3;
/// How long the root remembers a late conflict it took, to know its later copies.
const LATE_TAKEN_MS: u64 = 60_000;
/// Most late conflicts the root remembers so.
const MAX_LATE_TAKEN: usize = 4_096;

/// A late conflict waiting for the sector's next summaries to the root.
#[derive(Clone, Debug)]
pub(crate) struct ForRoot {
    pub(crate) item: LateEscalated,
    pub(crate) sends_left: u8,
}

/// A late report at its cluster's coordinator (see [`late_report_is_mine`]): its conflicts
/// are logged here, and those of priority 4 go to the root with the sector's next
/// [`LATE_SENDS`] summaries (at most [`MAX_ESCALATED`] a sector; past that they are logged
/// here only). All three copies lost, or a new tree in which this node no longer coordinates
/// the sector, leaves them in this node's ledger only. At the root, which coordinates that
/// sector itself, logging them is all.
pub(super) fn from_late_report(node: &mut MeshNode, rep: &Report, now: Time) {
    let sector = match rep.scope {
        Scope::Cluster(c) if !node.is_root => node.tree.cluster(c).map(|x| x.sector),
        _ => None,
    };
    let Some(sector) = sector else {
        from_report(node, rep, None, now);
        return;
    };
    let mut for_root = Escalations::default();
    from_report(node, rep, Some(&mut for_root), now);
    let waiting = node.late_for_root.entry(sector).or_default();
    for conflict in for_root.take().0 {
        if waiting.len() < MAX_ESCALATED {
            let item = LateEscalated {
                op: rep.op,
                conflict,
            };
            waiting.push(ForRoot {
                item,
                sends_left: LATE_SENDS,
            });
        }
    }
    if waiting.is_empty() {
        node.late_for_root.remove(&sector);
    }
}

/// What the sector's next summary carries to the root: each late conflict waiting, one send
/// fewer left for it.
pub(in crate::mesh::node) fn to_send(node: &mut MeshNode, sector: SectorId) -> Vec<LateEscalated> {
    let Some(waiting) = node.late_for_root.get_mut(&sector) else {
        return Vec::new();
    };
    let items = waiting.iter().map(|w| w.item.clone()).collect();
    waiting.retain_mut(|w| {
        w.sends_left -= 1;
        w.sends_left > 0
    });
    if waiting.is_empty() {
        node.late_for_root.remove(&sector);
    }
    items
}

/// The conflicts passed on in a sector's summary, at the root (the summary came from the
/// node the tree names the sector's coordinator, or it was refused on arrival), each as from
/// a report of that sector, once: a later copy (the next summaries carry it too) is known
/// by its sector, operation, agent and time.
pub(in crate::mesh::node) fn from_summary(node: &mut MeshNode, s: &SectorSummary, now: Time) {
    if s.escalated.is_empty() {
        return;
    }
    if !node.is_root {
        node.refused_senders += 1;
        return;
    }
    let horizon = Time::from_millis(now.as_millis().saturating_sub(LATE_TAKEN_MS));
    node.late_taken.retain(|_, at| *at > horizon);
    for l in &s.escalated {
        let key = (s.sector, l.op, l.conflict.agent, l.conflict.at_ms);
        if node.late_taken.contains_key(&key) {
            continue;
        }
        insert_bounded(&mut node.late_taken, key, now, MAX_LATE_TAKEN, |at| *at);
        let scope = Scope::Sector(s.sector);
        take(node, &s.coordinator, scope, l.op, &l.conflict, TO_ROOT, now);
    }
}

/// Whether a report that came after its operation settled here (or ended) was for this node:
/// a cluster's to its sector's coordinator (or to the root, for an operation of that cluster
/// alone), a sector's to the root. Its conflicts are still
/// logged here, and those of priority 4 go on with the next sector summary
/// ([`from_late_report`]).
pub(super) fn late_report_is_mine(node: &MeshNode, rep: &Report) -> bool {
    match rep.scope {
        // The root takes a cluster's too: an operation of that cluster alone reports to it.
        Scope::Cluster(c) => node.is_root || node.tree.coordinator_of(c) == Some(&node.me),
        Scope::Sector(_) => node.is_root,
        Scope::Global => false,
    }
}
