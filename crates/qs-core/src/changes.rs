//! What a change of the fleet's shared state causes: which nodes must reconcile what. The
//! agent's membership feed and the simulator both apply a change to their [`Registry`], then
//! ask [`caused_by`] whom to tell, and post the answer into that node's [`Notice`], which
//! coalesces until the node takes it as inputs ([`Notice::into_inputs`]). Both shells decide
//! nothing of this themselves.

use crate::node::Input;
use crate::registry::Registry;
use qs_wire::{NodeId, ServiceName};
use std::collections::BTreeSet;

/// A change of the registry that calls for a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FleetChange {
    /// A node was heard from for the first time (or again, after it was declared dead).
    Joined(NodeId),
    /// A node was declared dead (silent, or its probes unanswered) and removed.
    Died(NodeId),
    /// A node was quarantined for invalid messages and removed.
    Quarantined(NodeId),
    /// A spec arrived or changed.
    SpecChanged(ServiceName),
    /// A spec was deleted.
    SpecRemoved(ServiceName),
}

/// Who must hear of a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recipients {
    /// Every node (of the process, or of the simulated fleet).
    Every,
    /// One node: a service's steward.
    Node(NodeId),
}

/// What a node must reconcile, coalesced until it looks: a burst of a thousand joins is one
/// full reconcile, and a notice cannot grow past the number of specs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Notice {
    /// Stop what is unwanted here and reconcile every stewarded service.
    pub all: bool,
    /// Services to reconcile, if stewarded here.
    pub services: BTreeSet<ServiceName>,
}

impl Notice {
    pub fn is_empty(&self) -> bool {
        !self.all && self.services.is_empty()
    }

    /// Adds what `other` asks for.
    pub fn merge(&mut self, other: Notice) {
        self.all |= other.all;
        if !self.all {
            self.services.extend(other.services);
        } else {
            self.services.clear();
        }
    }

    /// The inputs that carry it out: one full reconcile covers every named service.
    pub fn into_inputs(self) -> Vec<Input> {
        if self.all {
            vec![Input::Reconcile]
        } else {
            self.services
                .into_iter()
                .map(Input::ReconcileService)
                .collect()
        }
    }
}

/// One change's consequence: post `notice` to `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caused {
    pub to: Recipients,
    pub notice: Notice,
}

/// Whom a change (already applied to `reg`) must reach, and with what. A change of
/// membership moves stewardships and instances, and a deleted spec leaves instances to stop,
/// so every node reconciles everything; a new or changed spec concerns its steward alone
/// (none while nobody is alive).
pub fn caused_by(change: &FleetChange, reg: &Registry) -> Option<Caused> {
    match change {
        FleetChange::Joined(_)
        | FleetChange::Died(_)
        | FleetChange::Quarantined(_)
        | FleetChange::SpecRemoved(_) => Some(Caused {
            to: Recipients::Every,
            notice: Notice {
                all: true,
                services: BTreeSet::new(),
            },
        }),
        FleetChange::SpecChanged(service) => reg.steward(service).map(|steward| Caused {
            to: Recipients::Node(steward.clone()),
            notice: Notice {
                all: false,
                services: BTreeSet::from([service.clone()]),
            },
        }),
    }
}
