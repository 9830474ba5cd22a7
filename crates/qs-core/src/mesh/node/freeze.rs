//! Freezes that outlive the nodes holding them (and, held the same way, the capability
//! mapping's rules: see `exclude`). The root is the authority on what is frozen
//! (an operator's freeze or thaw reaches it first), and its mode notices carry the whole set
//! (`ModeNotice::frozen` for the mesh, `frozen_scopes` for sectors and clusters) at each
//! change and every summary period while anything is frozen. A node off the root takes that
//! set for its own marks, so a coordinator or lead new to a frozen scope holds it frozen as
//! the one before did, a mark that a lost thaw left behind is dropped, and a node that
//! becomes the root keeps what the last root held; marks lapse with the notices (a root
//! renews them every summary period while anything is frozen). A notice older than a
//! control this node carried out (by the root's numbering of its controls) does not undo
//! that control; controls themselves are carried out as they come (they travel paths of
//! different lengths), and the next notice settles what a late one marked. A lead marks the clusters a control passed on covers, and
//! keeps which scope they stand for: one that becomes the root holds that scope frozen.

use super::*;
use qs_wire::mesh::{Exclusion, MAX_EXCLUSIONS, MAX_FROZEN_SCOPES, ModeNotice};

/// What the root's notices say of the frozen scopes, and which of its controls they follow.
#[derive(Clone, Debug, Default)]
pub(crate) struct FreezeSync {
    /// At the root: the frozen scopes its last notice said (a new root announces what it
    /// holds, if anything), and the capability mapping's rules.
    announced: BTreeSet<Scope>,
    announced_rules: BTreeSet<Exclusion>,
    /// At the root: the id of the last control it sent.
    last_sent: u64,
    /// Off the root: the highest id of a control from the current root carried out here.
    last_heard: u64,
    /// Off the root: the clusters marked for each scope a control passed on froze, since the
    /// last notice (which says the scopes themselves).
    relayed: BTreeMap<Scope, BTreeSet<Scope>>,
}

impl MeshNode {
    /// The frozen scope that holds `scope`: the whole mesh, `scope` itself, or the sector of
    /// a cluster `scope` names.
    pub(crate) fn frozen_over(&self, scope: Scope) -> Option<Scope> {
        self.frozen.iter().copied().find(|f| match (*f, scope) {
            (Scope::Global, _) => true,
            (Scope::Sector(s), Scope::Cluster(c)) => {
                self.tree.cluster(c).is_some_and(|x| x.sector == s)
            }
            (f, scope) => f == scope,
        })
    }

    /// At the root: whether one more scope may be frozen (the set is bounded, so its notices
    /// are).
    pub(super) fn may_freeze(&self, scope: Scope) -> bool {
        let parts = self.frozen.iter().filter(|s| **s != Scope::Global).count();
        scope == Scope::Global || self.frozen.contains(&scope) || parts < MAX_FROZEN_SCOPES
    }

    /// At the root: a control sent under `id` (its notices say the last).
    pub(super) fn control_sent(&mut self, id: u64) {
        self.freeze_sync.last_sent = id;
    }

    /// What control `c` freezes or thaws here, of the clusters it covers here: the scope
    /// (from the root), or each of those clusters (passed on; none at the root that sent it,
    /// which marked the scope itself); a thaw, the scope too (a notice may have marked it).
    /// Whether anything was frozen before.
    pub(super) fn mark_frozen(&mut self, c: &Control, clusters: &[ClusterId]) -> bool {
        let from_current = !self.is_root && c.root.is_some() && c.root == self.tree.root;
        let sync = &mut self.freeze_sync;
        if from_current {
            sync.last_heard = sync.last_heard.max(c.id);
        }
        let marks: BTreeSet<Scope> = match (c.relayed, c.root.as_ref() == Some(&self.me)) {
            (false, _) => BTreeSet::from([c.scope]),
            (true, true) => BTreeSet::new(),
            (true, false) => clusters.iter().map(|cl| Scope::Cluster(*cl)).collect(),
        };
        let mut was_frozen = false;
        match c.action {
            ControlAction::Freeze => {
                for s in &marks {
                    was_frozen |= !self.frozen.insert(*s);
                }
                if c.relayed && !marks.is_empty() {
                    sync.relayed.entry(c.scope).or_default().extend(marks);
                }
            }
            ControlAction::Thaw | ControlAction::Heal => {
                for s in marks.iter().chain([&c.scope]) {
                    was_frozen |= self.frozen.remove(s);
                }
                if let Some(left) = sync.relayed.get_mut(&c.scope) {
                    left.retain(|m| !marks.contains(m));
                    if left.is_empty() {
                        sync.relayed.remove(&c.scope);
                    }
                }
            }
            ControlAction::RouteAround
            | ControlAction::Reassign
            | ControlAction::Exclude
            | ControlAction::Include => {}
        }
        was_frozen
    }

    /// At the root: whether what it holds (freezes, the capability mapping) changed since
    /// its last notice said it.
    pub(super) fn freezes_changed(&self) -> bool {
        self.freeze_sync.announced != self.frozen
            || self.freeze_sync.announced_rules != self.excluded
    }

    /// At the root: whether it holds anything its notices must renew.
    pub(super) fn holds_anything(&self) -> bool {
        !self.frozen.is_empty() || !self.excluded.is_empty()
    }

    /// At the root: what it holds (the whole mesh frozen, the other frozen scopes, the
    /// capability mapping, the last control) written into `notice`, now announced.
    pub(super) fn announce_held(&mut self, notice: &mut ModeNotice) {
        self.freeze_sync.announced = self.frozen.clone();
        self.freeze_sync.announced_rules = self.excluded.clone();
        notice.frozen = self.frozen.contains(&Scope::Global);
        notice.frozen_scopes = self
            .frozen
            .iter()
            .copied()
            .filter(|s| *s != Scope::Global)
            .take(MAX_FROZEN_SCOPES)
            .collect();
        notice.excluded = self.excluded.iter().take(MAX_EXCLUSIONS).cloned().collect();
        notice.last_control = self.freeze_sync.last_sent;
    }

    /// Off the root: a notice's freezes become this node's marks, and its rules this node's,
    /// unless it is older than a control carried out here.
    pub(super) fn take_freezes(&mut self, notice: &ModeNotice) {
        if notice.last_control < self.freeze_sync.last_heard {
            return;
        }
        self.freeze_sync.relayed.clear();
        self.frozen = notice.frozen_scopes.iter().copied().collect();
        if notice.frozen {
            self.frozen.insert(Scope::Global);
        }
        self.excluded = notice.excluded.iter().cloned().collect();
    }

    /// The root moved: the new one numbers its controls afresh (and, if this node, announces
    /// what it holds frozen, if anything).
    pub(super) fn freezes_on_new_root(&mut self) {
        let relayed = std::mem::take(&mut self.freeze_sync.relayed);
        self.freeze_sync = FreezeSync {
            relayed,
            ..FreezeSync::default()
        };
    }

    /// The root's notices lapsed: what they said frozen goes, and what this node marked
    /// since, and the rules they said (for the stored ones: see `exclude`).
    pub(super) fn freezes_lapse(&mut self) {
        self.frozen.clear();
        self.rules_lapse();
        self.freeze_sync.relayed.clear();
    }

    /// This node became the root: a scope whose clusters it marked for a control passed on
    /// (from the root before, whose notice did not come) is frozen here as that scope.
    pub(super) fn freezes_as_root(&mut self) {
        for (scope, marks) in std::mem::take(&mut self.freeze_sync.relayed) {
            self.frozen.retain(|m| !marks.contains(m));
            self.frozen.insert(scope);
        }
    }
}
