//! A placement in flight: what the steward remembers of it between inputs, at which of the
//! five steps it stands, and when it is next due. The machine that moves it is
//! [`super::placement`].

use crate::time::Time;
use qs_wire::{DeclineFrom, Demand, InstanceId, NodeId, Offer, PlacementId, Role, ServiceName};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// One placement in flight.
#[derive(Debug)]
pub(crate) struct Placement {
    pub(crate) id: PlacementId,
    pub(crate) instance: InstanceId,
    pub(crate) demand: Demand,
    pub(crate) role: Role,
    pub(crate) fencing: u64,
    pub(crate) hot: bool,
    pub(crate) started: Time,
    pub(crate) attempt: u32,
    pub(crate) stage: Stage,
}

#[derive(Debug)]
pub(crate) enum Stage {
    /// Steps 3–4: the query is out; offers come back.
    Gathering {
        asked: BTreeSet<NodeId>,
        answered: BTreeSet<NodeId>,
        /// The pool: answers' offers, and this node's own when it competes.
        offers: Vec<(NodeId, Offer)>,
        declined: Vec<DeclineFrom>,
        sent_at: Time,
        deadline: Time,
        /// The gathering deadline's backoff level when the queries went out.
        backoff_level: u32,
    },
    /// Step 5: a dispatch is out; the rest of the ranked offers wait their turn.
    Dispatching {
        ranked: VecDeque<(NodeId, Offer)>,
        target: NodeId,
        deadline: Time,
    },
    /// Step 1 for a singleton: its fencing token is being claimed in the `instances` KV.
    Claiming { deadline: Time },
    /// Nothing worked this round; try again at `until`.
    Backoff { until: Time },
}

impl Placement {
    pub(crate) fn deadline(&self) -> Time {
        match &self.stage {
            Stage::Gathering { deadline, .. }
            | Stage::Dispatching { deadline, .. }
            | Stage::Claiming { deadline } => *deadline,
            Stage::Backoff { until } => *until,
        }
    }
}

/// Whether a placement in flight is for the service's primary.
pub(crate) fn placing_primary(
    placements: &BTreeMap<u64, Placement>,
    service: &ServiceName,
) -> bool {
    placements
        .values()
        .any(|p| p.demand.service == *service && p.role == Role::Primary)
}
