//! Reconcile as a pure planning function: what one pass of a steward decides for one
//! service (place, stop, promote, ask for approval), from the spec, what the steward
//! remembers of its tenure, and what the fleet shows now. No state is touched here: the
//! steward ([`super::steward`]) keeps the returned [`Tenure`] and carries out the [`Plan`].

use crate::config::Config;
use crate::time::{Time, ms};
use qs_wire::{HaPattern, InstanceId, NodeId, Role, SenseReason, WorkloadKind, WorkloadSpec};

/// One running instance of a service, as the registry shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    pub instance: InstanceId,
    pub node: NodeId,
    pub role: Role,
    pub fencing: u64,
    pub hot: bool,
}

/// Whether the operator approved moving a stateful-read primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Approval {
    NotAsked,
    Requested,
    Granted,
}

/// A promotion ordered and not yet seen in a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promoting {
    pub instance: InstanceId,
    /// After this, the steward stops waiting and may promote again.
    pub until: Time,
}

/// What a steward remembers of one service's scaling and promotion between passes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenure {
    /// `extra` was set from what already ran when the tenure began.
    pub primed: bool,
    /// Replicas added by scale-out above the spec's base count.
    pub extra: u32,
    /// Since when no instance has been hot.
    pub calm_since: Time,
    /// When the last hot scale-out was placed.
    pub last_scale_out: Option<Time>,
    pub promoting: Option<Promoting>,
    pub approval: Approval,
}

impl Tenure {
    /// A tenure beginning at `now`.
    pub fn new(now: Time) -> Tenure {
        Tenure {
            primed: false,
            extra: 0,
            calm_since: now,
            last_scale_out: None,
            promoting: None,
            approval: Approval::NotAsked,
        }
    }
}

/// What the fleet and the steward's own bookkeeping show in this pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// Instances that run and were not ordered to stop, in instance-id order.
    pub running: Vec<Running>,
    /// Job instances that completed.
    pub completed: usize,
    /// Instances accepted by a host and not yet seen in a heartbeat.
    pub pending: u32,
    /// One of those is a primary (asked only for stateful-read services).
    pub pending_primary: bool,
    /// Placements in flight.
    pub in_flight: u32,
    /// One of those is a hot scale-out.
    pub hot_in_flight: bool,
    /// A placement in flight is for a primary (asked only for stateful-read services).
    pub placing_primary: bool,
}

/// An order to stop one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StopOrder {
    pub instance: InstanceId,
    pub node: NodeId,
    pub reason: String,
}

/// An order to promote one replica to primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promotion {
    pub instance: InstanceId,
    pub node: NodeId,
}

/// What one pass decided, and the tenure to remember after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// One new placement per entry, with why.
    pub place: Vec<SenseReason>,
    pub stop: Vec<StopOrder>,
    pub promote: Option<Promotion>,
    /// Record that moving the primary waits for the operator.
    pub ask_approval: bool,
    pub tenure: Tenure,
}

/// Decides one reconcile pass of `spec` (see the module docs).
pub fn plan(spec: &WorkloadSpec, tenure: &Tenure, facts: &Facts, now: Time, c: &Config) -> Plan {
    let mut t = tenure.clone();
    let running = &facts.running;
    let live = running.len() as u32;
    let (base, max) = (spec.base_count(), spec.max_count());
    if !t.primed {
        t.extra = live.saturating_sub(base).min(max - base);
        t.primed = true;
    }
    let hot = running.iter().find(|r| r.hot);
    if hot.is_some() {
        t.calm_since = now;
    } else if t.extra > 0 && now.since(t.calm_since) >= ms(c.scale_in_after_ms) {
        t.extra -= 1;
        t.calm_since = now;
    }
    let want = if spec.is_job() {
        base.saturating_sub(facts.completed as u32)
    } else {
        (base + t.extra).min(max)
    };
    let have = live + facts.pending + facts.in_flight;
    let mut place = Vec::new();
    let mut stop = Vec::new();
    let mut promote = None;
    let mut ask_approval = false;

    if have < want {
        for _ in have..want {
            place.push(SenseReason::Missing { have, want });
        }
    } else if let Some(h) = hot
        && !spec.is_job()
        && have < max
        && !facts.hot_in_flight
        && t.last_scale_out
            .is_none_or(|at| now.since(at) >= ms(c.scale_out_cooldown_ms))
    {
        t.extra += 1;
        place.push(SenseReason::Hot {
            instance: h.instance.clone(),
            on: h.node.clone(),
        });
    }

    // Singletons shed copies by fencing token below, never by this rule: it could pick the
    // newest token and leave none.
    if live > want
        && facts.in_flight == 0
        && facts.pending == 0
        && !spec.is_job()
        && !spec.pattern.is_singleton()
    {
        // Scale in: newest ids first, never the primary.
        let mut victims: Vec<&Running> =
            running.iter().filter(|r| r.role != Role::Primary).collect();
        victims.sort_by(|a, b| b.instance.cmp(&a.instance));
        for v in victims.into_iter().take((live - want) as usize) {
            stop.push(StopOrder {
                instance: v.instance.clone(),
                node: v.node.clone(),
                reason: "scale in".into(),
            });
        }
    }

    if spec.pattern.is_singleton() {
        // One copy stays: the newest fencing token (of equals, the lowest id).
        let keep = running
            .iter()
            .max_by(|a, b| {
                a.fencing
                    .cmp(&b.fencing)
                    .then_with(|| b.instance.cmp(&a.instance))
            })
            .map(|r| r.instance.clone());
        for r in running
            .iter()
            .filter(|r| Some(&r.instance) != keep.as_ref())
        {
            stop.push(StopOrder {
                instance: r.instance.clone(),
                node: r.node.clone(),
                reason: "superseded singleton".into(),
            });
        }
        if live > 0 || facts.pending > 0 || facts.in_flight > 0 {
            place.clear();
        }
    }

    if spec.pattern == HaPattern::StatefulRead {
        let primary_live = running.iter().any(|r| r.role == Role::Primary);
        let primary_coming = facts.pending_primary || facts.placing_primary;
        if primary_live {
            t.promoting = None;
            t.approval = Approval::NotAsked;
        } else if let Some(first) = running.first()
            && !primary_coming
        {
            t.promoting = t.promoting.take().filter(|p| p.until > now);
            let auto = matches!(
                spec.kind,
                WorkloadKind::Service {
                    auto_promote: true,
                    ..
                }
            );
            if t.promoting.is_none() {
                if auto || t.approval == Approval::Granted {
                    t.promoting = Some(Promoting {
                        instance: first.instance.clone(),
                        until: now + ms(c.pending_timeout_ms),
                    });
                    promote = Some(Promotion {
                        instance: first.instance.clone(),
                        node: first.node.clone(),
                    });
                } else if t.approval == Approval::NotAsked {
                    t.approval = Approval::Requested;
                    ask_approval = true;
                }
            }
        }
    }

    Plan {
        place,
        stop,
        promote,
        ask_approval,
        tenure: t,
    }
}
