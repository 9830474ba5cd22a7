//! The steward: the services this node stewards. Per service it keeps a [`Stewardship`]
//! (tenure, accepted and stopping instances, cooldowns, the last fencing token), runs the
//! pure planning pass ([`super::plan`]) and carries out the plan: stop and promote orders,
//! and new placements, which [`super::placement`] drives through the 5 steps.

use super::inflight::{Placement, placing_primary};
use super::plan::{self, Approval, Facts, Plan, Running, Tenure};
use super::rtt::RttEstimator;
use super::{Cx, Output};
use crate::config::Config;
use crate::rng::Rng;
use crate::time::{Time, ms};
use crate::weight::Gate;
use qs_wire::{Event, HaPattern, InstanceId, Message, NodeId, Role, ServiceName, WorkloadSpec};
use std::collections::{BTreeMap, BTreeSet};

/// An instance a host accepted and no heartbeat has shown yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Accepted {
    /// After this the steward stops waiting for it.
    pub until: Time,
    pub role: Role,
    pub node: NodeId,
}

/// What a steward remembers of one service during its tenure.
#[derive(Debug)]
pub(crate) struct Stewardship {
    pub tenure: Tenure,
    pub in_flight: u32,
    pub hot_in_flight: bool,
    pub pending: BTreeMap<InstanceId, Accepted>,
    /// Instances ordered to stop, with the time after which we stop waiting.
    pub stopping: BTreeMap<InstanceId, Time>,
    /// No new placement before this (an inherited tenure settles first).
    pub settle_until: Time,
    /// After a placement gave up: no new one before this.
    pub cooldown_until: Time,
    pub last_fencing: u64,
}

impl Stewardship {
    fn new(now: Time, settle_until: Time) -> Self {
        Stewardship {
            tenure: Tenure::new(now),
            in_flight: 0,
            hot_in_flight: false,
            pending: BTreeMap::new(),
            stopping: BTreeMap::new(),
            settle_until,
            cooldown_until: now,
            last_fencing: 0,
        }
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct Steward {
    pub(crate) id: NodeId,
    pub(crate) config: Config,
    pub(crate) gate: Gate,
    pub(crate) rng: Rng,
    pub(crate) placements: BTreeMap<u64, Placement>,
    /// Services whose placement just ended: reconcile them before the input returns, so a
    /// steward with a backlog keeps its pipeline full instead of waiting for the next tick.
    pub(crate) reconcile_soon: BTreeSet<ServiceName>,
    pub(crate) services: BTreeMap<ServiceName, Stewardship>,
    pub(crate) next_seq: u64,
    /// Round trips of capacity queries, for the adaptive gathering deadline.
    pub(crate) rtt: RttEstimator,
    pub(crate) next_reconcile: Time,
    /// No steward work before this: a node first listens for `join_settle_ms`, so its view
    /// of who is alive (and so of who stewards what) is complete.
    ready_at: Time,
}

impl Steward {
    pub(crate) fn new(id: NodeId, config: Config, rng: Rng, first: Time, now: Time) -> Steward {
        Steward {
            id,
            gate: Gate {
                min: config.gate_min,
            },
            ready_at: now + ms(config.join_settle_ms),
            config,
            rng,
            placements: BTreeMap::new(),
            reconcile_soon: BTreeSet::new(),
            services: BTreeMap::new(),
            next_seq: 0,
            rtt: RttEstimator::default(),
            next_reconcile: first,
        }
    }

    /// The steward's next deadline: a placement's, or the periodic reconcile.
    pub(crate) fn deadline(&self) -> Time {
        self.placements
            .values()
            .map(Placement::deadline)
            .fold(self.next_reconcile, Time::min)
    }

    /// Placements this node is driving.
    pub fn placements_in_flight(&self) -> usize {
        self.placements.len()
    }

    /// Whether the periodic reconcile is due.
    pub(crate) fn reconcile_due(&self, now: Time) -> bool {
        now >= self.next_reconcile
    }

    /// Reconciles every service this node stewards; the next periodic pass is a heartbeat
    /// period away (set first: reconciling may ask for an earlier wake-up, a cooldown ending).
    pub(crate) fn reconcile(&mut self, cx: &mut Cx<'_>) {
        self.next_reconcile = cx.now + ms(self.config.heartbeat_ms);
        if cx.now < self.ready_at {
            return; // still learning who is alive
        }
        let reg = cx.reg;
        let mine: BTreeSet<&ServiceName> = reg.stewarded_by(&self.id).collect();
        // Tenure ended (or spec deleted): forget, but let in-flight placements finish.
        self.services
            .retain(|s, st| mine.contains(s) || st.in_flight > 0);
        for service in mine {
            if let Some(spec) = reg.spec(service) {
                self.reconcile_one(spec, cx);
            }
        }
    }

    /// Reconciles the services whose placements ended during this input.
    pub(crate) fn reconcile_pending(&mut self, cx: &mut Cx<'_>) {
        while let Some(service) = self.reconcile_soon.pop_first() {
            self.reconcile_service(&service, cx);
        }
    }

    /// When a tenure beginning now may start placing. A brand-new spec has no predecessor
    /// steward, so it is placed at once; an inherited one waits for the predecessor's
    /// in-flight dispatches to surface in heartbeats.
    fn settle_until(&self, spec: &WorkloadSpec, cx: &Cx<'_>) -> Time {
        let settle_ms = if spec.pattern.is_singleton() {
            self.config.singleton_settle_ms
        } else {
            self.config.steward_settle_ms
        };
        let fresh = cx
            .reg
            .spec_since(&spec.name)
            .is_some_and(|since| cx.now.since(since) < ms(self.config.steward_settle_ms));
        if fresh {
            cx.now
        } else {
            cx.now + ms(settle_ms)
        }
    }

    /// Reconciles one service, if this node stewards it.
    pub(crate) fn reconcile_service(&mut self, service: &ServiceName, cx: &mut Cx<'_>) {
        let reg = cx.reg;
        if cx.now >= self.ready_at
            && reg.steward(service) == Some(&self.id)
            && let Some(spec) = reg.spec(service)
        {
            self.reconcile_one(spec, cx);
        }
    }

    /// One pass over one service: gather the facts, plan, remember the tenure, act.
    fn reconcile_one(&mut self, spec: &WorkloadSpec, cx: &mut Cx<'_>) {
        let (now, reg) = (cx.now, cx.reg);
        let service = &spec.name;
        let settle_until = self.settle_until(spec, cx);
        // Only a stateful-read plan asks whether a primary is on its way.
        let stateful = spec.pattern == HaPattern::StatefulRead;
        let placing_primary = stateful && placing_primary(&self.placements, service);
        let st = self
            .services
            .entry(service.clone())
            .or_insert_with(|| Stewardship::new(now, settle_until));
        st.pending.retain(|id, a| {
            reg.instance(service, id).is_none() && !reg.is_completed(service, id) && a.until > now
        });
        st.stopping
            .retain(|id, deadline| reg.instance(service, id).is_some() && *deadline > now);
        let facts = Facts {
            running: reg
                .instances_of(service)
                .filter(|(id, _)| !st.stopping.contains_key(*id))
                .map(|(id, r)| Running {
                    instance: id.clone(),
                    node: r.node.clone(),
                    role: r.role,
                    fencing: r.fencing,
                    hot: r.hot,
                })
                .collect(),
            completed: reg.completed(service),
            pending: st.pending.len() as u32,
            pending_primary: stateful && st.pending.values().any(|a| a.role == Role::Primary),
            in_flight: st.in_flight,
            hot_in_flight: st.hot_in_flight,
            placing_primary,
        };
        let mut plan = plan::plan(spec, &st.tenure, &facts, now, &self.config);
        std::mem::swap(&mut st.tenure, &mut plan.tenure);
        let placing_allowed = now >= st.cooldown_until && now >= st.settle_until;
        self.act(spec, plan, placing_allowed, facts.running.len() as u32, cx);
    }

    /// Carries out a plan: stop and promote orders, the approval request, new placements.
    fn act(
        &mut self,
        spec: &WorkloadSpec,
        plan: Plan,
        placing_allowed: bool,
        live: u32,
        cx: &mut Cx<'_>,
    ) {
        let service = &spec.name;
        for stop in plan.stop {
            let deadline = cx.now + ms(self.config.pending_timeout_ms);
            if let Some(st) = self.services.get_mut(service) {
                st.stopping.insert(stop.instance.clone(), deadline);
            }
            cx.out.record(Event::ScaleIn {
                service: service.clone(),
                instance: stop.instance.clone(),
                on: stop.node.clone(),
            });
            let order = Message::Stop {
                instance: stop.instance,
                reason: stop.reason,
            };
            self.order(stop.node, order, cx);
        }
        if let Some(p) = plan.promote {
            cx.out.record(Event::Promoted {
                service: service.clone(),
                instance: p.instance.clone(),
                on: p.node.clone(),
            });
            let order = Message::Promote {
                instance: p.instance,
            };
            self.order(p.node, order, cx);
        }
        if plan.ask_approval {
            cx.out.record(Event::PromotionNeedsApproval {
                service: service.clone(),
            });
        }
        if !placing_allowed {
            return;
        }
        for reason in plan.place {
            let Some(st) = self.services.get(service) else {
                return;
            };
            if st.in_flight >= self.config.max_placements_per_service
                || self.placements.len() >= self.config.max_placements_in_flight
            {
                return;
            }
            let role = if spec.pattern == HaPattern::StatefulRead
                && live == 0
                && !self.primary_coming(service)
            {
                Role::Primary
            } else {
                Role::Replica
            };
            let fencing = if spec.pattern.is_singleton() {
                (cx.reg
                    .max_fencing(service)
                    .max(st.last_fencing)
                    .saturating_add(1))
                .min(qs_wire::bounds::MAX_FENCING)
            } else {
                0
            };
            self.start_placement(spec, reason, role, fencing, cx);
        }
    }

    /// A primary is accepted but not yet seen, or being placed.
    fn primary_coming(&self, service: &ServiceName) -> bool {
        self.services
            .get(service)
            .is_some_and(|st| st.pending.values().any(|a| a.role == Role::Primary))
            || placing_primary(&self.placements, service)
    }

    /// Sends a stop or promote order to the host that runs the instance (this node's own host
    /// obeys at once).
    fn order(&mut self, to: NodeId, msg: Message, cx: &mut Cx<'_>) {
        if to == self.id {
            cx.host.obey(msg, cx.out);
        } else {
            cx.out.emit(Output::Send { to, msg });
        }
    }

    /// The operator approved moving a stateful-read primary.
    pub(crate) fn approve_promotion(&mut self, service: &ServiceName, cx: &mut Cx<'_>) {
        if let Some(st) = self.services.get_mut(service)
            && cx.now >= self.ready_at
        {
            st.tenure.approval = Approval::Granted;
            if let Some(spec) = cx.reg.spec(service) {
                self.reconcile_one(spec, cx);
            }
        }
    }
}
