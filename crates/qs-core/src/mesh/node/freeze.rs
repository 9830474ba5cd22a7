//! Freezes that outlive the nodes holding them. The root is the authority on what is frozen
//! (an operator's freeze or thaw reaches it first), and its mode notices carry the whole set
//! (`ModeNotice::frozen` for the mesh, `frozen_scopes` for sectors and clusters) at each
//! change and every summary period while anything is frozen. A node off the root takes that
//! set for its own marks, so a coordinator or lead new to a frozen scope holds it frozen as
//! the one before did, a mark that a lost thaw left behind is dropped, and a node that
//! becomes the root keeps what the last root held. A notice older than a control this node
//! carried out (by the root's numbering of its controls) does not undo that control.

use super::*;
use qs_wire::mesh::{MAX_FROZEN_SCOPES, ModeNotice};

/// What the root's notices say of the frozen scopes, and which of its controls they follow.
#[derive(Clone, Debug, Default)]
pub(crate) struct FreezeSync {
    /// At the root: the frozen scopes its last notice said (a new root announces what it
    /// holds, if anything).
    announced: BTreeSet<Scope>,
    /// At the root: the id of the last control it sent.
    last_sent: u64,
    /// Off the root: the highest id of a control from the current root carried out here.
    last_heard: u64,
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

    /// A control carried out here: one from the current root numbers what its notices
    /// must follow to undo it.
    pub(super) fn control_carried_out(&mut self, c: &Control) {
        if !self.is_root && c.root.is_some() && c.root == self.tree.root {
            self.freeze_sync.last_heard = self.freeze_sync.last_heard.max(c.id);
        }
    }

    /// At the root: whether what is frozen changed since its last notice said it.
    pub(super) fn freezes_changed(&self) -> bool {
        self.freeze_sync.announced != self.frozen
    }

    /// At the root: a notice's freezes (the whole mesh, the rest, the last control), now
    /// announced.
    pub(super) fn announce_freezes(&mut self) -> (bool, Vec<Scope>, u64) {
        self.freeze_sync.announced = self.frozen.clone();
        let whole = self.frozen.contains(&Scope::Global);
        let parts = self
            .frozen
            .iter()
            .copied()
            .filter(|s| *s != Scope::Global)
            .take(MAX_FROZEN_SCOPES)
            .collect();
        (whole, parts, self.freeze_sync.last_sent)
    }

    /// Off the root: a notice's freezes become this node's marks, unless it is older than a
    /// control carried out here.
    pub(super) fn take_freezes(&mut self, notice: &ModeNotice) {
        if notice.last_control < self.freeze_sync.last_heard {
            return;
        }
        self.frozen = notice.frozen_scopes.iter().copied().collect();
        if notice.frozen {
            self.frozen.insert(Scope::Global);
        }
    }

    /// The root moved: the new one numbers its controls afresh, and a node that is the root
    /// now announces what it holds frozen.
    pub(super) fn freezes_on_new_root(&mut self) {
        self.freeze_sync = FreezeSync::default();
    }
}
