//! The steward side of a node: reconciling services and driving placements through the
//! 5 steps of seed 000 §2 (sense, local check, capacity query, offers, dispatch).

use super::host::labels_match;
use super::{Node, Output};
use crate::registry::Registry;
use crate::time::{Time, ms};
use qs_wire::{
    DeclineFrom, DeclineReason, Demand, Event, HaPattern, InstanceId, LocalVerdict, Message,
    NodeId, Offer, OfferFrom, PlacementId, Role, SenseReason, ServiceName, SingletonClaim,
    WorkloadSpec,
};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// One placement in flight.
#[derive(Debug)]
pub(crate) struct Placement {
    id: PlacementId,
    instance: InstanceId,
    demand: Demand,
    role: Role,
    fencing: u64,
    hot: bool,
    started: Time,
    attempt: u32,
    stage: Stage,
}

#[derive(Debug)]
enum Stage {
    /// Steps 3–4: the query is out; offers come back.
    Gathering {
        asked: BTreeSet<NodeId>,
        answered: BTreeSet<NodeId>,
        /// The pool: answers' offers, and this node's own when it competes.
        offers: Vec<(NodeId, Offer)>,
        declined: Vec<DeclineFrom>,
        sent_at: Time,
        deadline: Time,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Approval {
    NotAsked,
    Requested,
    Granted,
}

/// What a steward remembers of one service during its tenure.
#[derive(Debug)]
pub(crate) struct Stewardship {
    primed: bool,
    /// Replicas added by scale-out above the spec's base count.
    extra: u32,
    calm_since: Time,
    last_scale_out: Option<Time>,
    in_flight: u32,
    hot_in_flight: bool,
    /// Accepted instances not yet seen in a heartbeat: deadline, role, host.
    pending: BTreeMap<InstanceId, (Time, Role, NodeId)>,
    /// Instances ordered to stop, with the time after which we stop waiting.
    stopping: BTreeMap<InstanceId, Time>,
    promoting: Option<(InstanceId, Time)>,
    approval: Approval,
    /// No new placement before this (an inherited tenure settles first).
    settle_until: Time,
    /// After a placement gave up: no new one before this.
    cooldown_until: Time,
    last_fencing: u64,
}

impl Stewardship {
    fn new(now: Time, settle_until: Time) -> Self {
        Stewardship {
            primed: false,
            extra: 0,
            calm_since: now,
            last_scale_out: None,
            in_flight: 0,
            hot_in_flight: false,
            pending: BTreeMap::new(),
            stopping: BTreeMap::new(),
            promoting: None,
            approval: Approval::NotAsked,
            settle_until,
            cooldown_until: now,
            last_fencing: 0,
        }
    }
}

/// How a placement ended.
enum End {
    Placed(NodeId),
    GaveUp(String),
}

/// What one reconcile pass decided for a service, acted on after the borrow ends.
#[derive(Default)]
struct Plan {
    place: Vec<SenseReason>,
    stop: Vec<(InstanceId, NodeId, String)>,
    promote: Option<(InstanceId, NodeId)>,
    ask_approval: bool,
}

impl Node {
    /// Reconciles every service this node stewards.
    pub(crate) fn reconcile(&mut self, now: Time, reg: &Registry) {
        if now < self.ready_at {
            return; // still learning who is alive
        }
        let mine: BTreeSet<ServiceName> = reg.stewarded_by(&self.id).cloned().collect();
        // Tenure ended (or spec deleted): forget, but let in-flight placements finish.
        self.services
            .retain(|s, st| mine.contains(s) || st.in_flight > 0);
        for service in &mine {
            if let Some(spec) = reg.spec(service) {
                self.reconcile_one(spec, now, reg);
            }
        }
    }

    /// When a tenure beginning now may start placing. A brand-new spec has no predecessor
    /// steward, so it is placed at once; an inherited one waits for the predecessor's
    /// in-flight dispatches to surface in heartbeats.
    fn settle_until(&self, spec: &WorkloadSpec, now: Time, reg: &Registry) -> Time {
        let settle_ms = if spec.pattern.is_singleton() {
            self.config.singleton_settle_ms
        } else {
            self.config.steward_settle_ms
        };
        let fresh = reg
            .spec_since(&spec.name)
            .is_some_and(|since| now.since(since) < ms(self.config.steward_settle_ms));
        if fresh { now } else { now + ms(settle_ms) }
    }

    /// Reconciles one service, if this node stewards it.
    pub(crate) fn reconcile_service(&mut self, service: &ServiceName, now: Time, reg: &Registry) {
        if now >= self.ready_at
            && reg.steward(service) == Some(&self.id)
            && let Some(spec) = reg.spec(service)
        {
            self.reconcile_one(spec, now, reg);
        }
    }

    fn reconcile_one(&mut self, spec: &WorkloadSpec, now: Time, reg: &Registry) {
        let service = &spec.name;
        let settle_until = self.settle_until(spec, now, reg);
        let st = self
            .services
            .entry(service.clone())
            .or_insert_with(|| Stewardship::new(now, settle_until));
        st.pending.retain(|id, (deadline, _, _)| {
            reg.instance(service, id).is_none() && !reg.is_completed(service, id) && *deadline > now
        });
        st.stopping
            .retain(|id, deadline| reg.instance(service, id).is_some() && *deadline > now);
        let running: Vec<(InstanceId, NodeId, Role, u64, bool)> = reg
            .instances_of(service)
            .filter(|(id, _)| !st.stopping.contains_key(*id))
            .map(|(id, r)| (id.clone(), r.node.clone(), r.role, r.fencing, r.hot))
            .collect();
        let live = running.len() as u32;
        let (base, max) = (spec.base_count(), spec.max_count());
        if !st.primed {
            st.extra = live.saturating_sub(base).min(max - base);
            st.primed = true;
        }
        let hot = running.iter().find(|r| r.4);
        if hot.is_some() {
            st.calm_since = now;
        } else if st.extra > 0 && now.since(st.calm_since) >= ms(self.config.scale_in_after_ms) {
            st.extra -= 1;
            st.calm_since = now;
        }
        let want = if spec.is_job() {
            base.saturating_sub(reg.completed(service) as u32)
        } else {
            (base + st.extra).min(max)
        };
        let have = live + st.pending.len() as u32 + st.in_flight;
        let mut plan = Plan::default();

        if have < want {
            for _ in have..want {
                plan.place.push(SenseReason::Missing { have, want });
            }
        } else if let Some(h) = hot
            && !spec.is_job()
            && have < max
            && !st.hot_in_flight
            && st
                .last_scale_out
                .is_none_or(|t| now.since(t) >= ms(self.config.scale_out_cooldown_ms))
        {
            st.extra += 1;
            plan.place.push(SenseReason::Hot {
                instance: h.0.clone(),
                on: h.1.clone(),
            });
        }

        // Singletons shed copies by fencing token below, never by this rule: it could pick
        // the newest token and leave none.
        if live > want
            && st.in_flight == 0
            && st.pending.is_empty()
            && !spec.is_job()
            && !spec.pattern.is_singleton()
        {
            // Scale in: newest ids first, never the primary.
            let mut victims: Vec<_> = running.iter().filter(|r| r.2 != Role::Primary).collect();
            victims.sort_by(|a, b| b.0.cmp(&a.0));
            for v in victims.into_iter().take((live - want) as usize) {
                plan.stop
                    .push((v.0.clone(), v.1.clone(), "scale in".into()));
            }
        }

        if spec.pattern.is_singleton() {
            // One copy stays: the newest fencing token (of equals, the lowest id).
            let keep = running
                .iter()
                .max_by(|a, b| a.3.cmp(&b.3).then_with(|| b.0.cmp(&a.0)))
                .map(|r| r.0.clone());
            for r in running.iter().filter(|r| Some(&r.0) != keep.as_ref()) {
                plan.stop
                    .push((r.0.clone(), r.1.clone(), "superseded singleton".into()));
            }
            if live > 0 || !st.pending.is_empty() || st.in_flight > 0 {
                plan.place.clear();
            }
        }

        if spec.pattern == HaPattern::StatefulRead {
            let primary_live = running.iter().any(|r| r.2 == Role::Primary);
            let primary_coming = st.pending.values().any(|p| p.1 == Role::Primary)
                || placing_primary(&self.placements, service);
            if primary_live {
                st.promoting = None;
                st.approval = Approval::NotAsked;
            } else if live > 0 && !primary_coming {
                st.promoting = st.promoting.take().filter(|(_, deadline)| *deadline > now);
                let auto = matches!(
                    spec.kind,
                    qs_wire::WorkloadKind::Service {
                        auto_promote: true,
                        ..
                    }
                );
                if st.promoting.is_none() {
                    if auto || st.approval == Approval::Granted {
                        let (id, node) = (running[0].0.clone(), running[0].1.clone());
                        st.promoting = Some((id.clone(), now + ms(self.config.pending_timeout_ms)));
                        plan.promote = Some((id, node));
                    } else if st.approval == Approval::NotAsked {
                        st.approval = Approval::Requested;
                        plan.ask_approval = true;
                    }
                }
            }
        }

        let placing_allowed = now >= st.cooldown_until && now >= st.settle_until;
        self.act(spec, plan, placing_allowed, live, now, reg);
    }

    fn act(
        &mut self,
        spec: &WorkloadSpec,
        plan: Plan,
        placing_allowed: bool,
        live: u32,
        now: Time,
        reg: &Registry,
    ) {
        let service = &spec.name;
        for (instance, node, reason) in plan.stop {
            let deadline = now + ms(self.config.pending_timeout_ms);
            if let Some(st) = self.services.get_mut(service) {
                st.stopping.insert(instance.clone(), deadline);
            }
            self.record(Event::ScaleIn {
                service: service.clone(),
                instance: instance.clone(),
                on: node.clone(),
            });
            self.send_or_handle(node, Message::Stop { instance, reason }, now, reg);
        }
        if let Some((instance, node)) = plan.promote {
            self.record(Event::Promoted {
                service: service.clone(),
                instance: instance.clone(),
                on: node.clone(),
            });
            self.send_or_handle(node, Message::Promote { instance }, now, reg);
        }
        if plan.ask_approval {
            self.record(Event::PromotionNeedsApproval {
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
                reg.max_fencing(service).max(st.last_fencing) + 1
            } else {
                0
            };
            self.start_placement(spec, reason, role, fencing, now, reg);
        }
    }

    /// A primary is accepted but not yet seen, or being placed.
    fn primary_coming(&self, service: &ServiceName) -> bool {
        self.services
            .get(service)
            .is_some_and(|st| st.pending.values().any(|p| p.1 == Role::Primary))
            || placing_primary(&self.placements, service)
    }

    fn send_or_handle(&mut self, to: NodeId, msg: Message, now: Time, reg: &Registry) {
        if to == self.id {
            let from = self.id.clone();
            self.on_message(from, msg, now, reg);
        } else {
            self.emit(Output::Send { to, msg });
        }
    }

    /// The operator approved moving a stateful-read primary.
    pub(crate) fn approve_promotion(&mut self, service: &ServiceName, now: Time, reg: &Registry) {
        if let Some(st) = self.services.get_mut(service)
            && now >= self.ready_at
        {
            st.approval = Approval::Granted;
            if let Some(spec) = reg.spec(service) {
                self.reconcile_one(spec, now, reg);
            }
        }
    }

    fn new_instance_id(&mut self, service: &ServiceName) -> InstanceId {
        let prefix: String = service.as_str().chars().take(54).collect();
        let prefix = prefix.trim_end_matches('-');
        let suffix = self.rng.next_u64() as u32;
        InstanceId::new(&format!("{prefix}-{suffix:08x}"))
            .expect("a valid service name plus a hex suffix is a valid instance id")
    }

    /// Step 1, sense: a placement starts.
    fn start_placement(
        &mut self,
        spec: &WorkloadSpec,
        reason: SenseReason,
        role: Role,
        fencing: u64,
        now: Time,
        reg: &Registry,
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let id = PlacementId {
            steward: self.id.clone(),
            seq,
        };
        let instance = self.new_instance_id(&spec.name);
        let hot = matches!(reason, SenseReason::Hot { .. });
        self.record(Event::Sensed {
            placement: id.clone(),
            service: spec.name.clone(),
            reason,
        });
        if let Some(st) = self.services.get_mut(&spec.name) {
            st.in_flight += 1;
            st.hot_in_flight |= hot;
        }
        self.placements.insert(
            seq,
            Placement {
                id,
                instance,
                demand: Demand::of(spec),
                role,
                fencing,
                hot,
                started: now,
                attempt: 0,
                stage: Stage::Backoff { until: now },
            },
        );
        if fencing == 0 {
            return self.run_round(seq, now, reg);
        }
        // A singleton: its token is claimed before anything is asked or started, so two
        // stewards placing it at once cannot both go on.
        let Some(p) = self.placements.get_mut(&seq) else {
            return;
        };
        p.stage = Stage::Claiming {
            deadline: now + ms(self.config.claim_timeout_ms),
        };
        let claim = SingletonClaim {
            instance: p.instance.clone(),
            fencing,
            steward: self.id.clone(),
        };
        let service = spec.name.clone();
        self.emit(Output::Claim { service, claim });
    }

    /// The answer to a singleton's claim: go on with the placement, or end it and remember
    /// the token that holds the service, so the next placement claims above it.
    pub(crate) fn on_claimed(
        &mut self,
        service: &ServiceName,
        instance: &InstanceId,
        result: Result<(), SingletonClaim>,
        now: Time,
        reg: &Registry,
    ) {
        let Some((&seq, p)) = self
            .placements
            .iter()
            .find(|(_, p)| p.instance == *instance && matches!(p.stage, Stage::Claiming { .. }))
        else {
            return;
        };
        let (pid, fencing) = (p.id.clone(), p.fencing);
        match result {
            Ok(()) => {
                self.record(Event::Claimed {
                    placement: pid,
                    instance: instance.clone(),
                    fencing,
                });
                self.run_round(seq, now, reg);
            }
            Err(held) => {
                if let Some(st) = self.services.get_mut(service) {
                    st.last_fencing = st.last_fencing.max(held.fencing);
                }
                let why = format!(
                    "fencing token {} is held by {} (claimed by {})",
                    held.fencing, held.instance, held.steward
                );
                self.record(Event::ClaimRefused {
                    placement: pid,
                    held_by: held.instance,
                    fencing: held.fencing,
                });
                self.end(seq, End::GaveUp(why), now);
            }
        }
    }

    /// Steps 2 and 3: local check, then the capacity query.
    fn run_round(&mut self, seq: u64, now: Time, reg: &Registry) {
        let Some(p) = self.placements.get_mut(&seq) else {
            return;
        };
        p.attempt += 1;
        let (pid, demand, fencing) = (p.id.clone(), p.demand.clone(), p.fencing);
        let token = demand.pattern.is_singleton().then_some(fencing);

        // Step 2: can this node run it itself?
        let mut pool = Vec::new();
        let verdict = match self.evaluate(&demand, token, now, reg) {
            Ok(offer) if !self.gate.admits(&offer.composite) => LocalVerdict::Refused {
                reason: DeclineReason::Gate,
            },
            // GPU inference must compare VRAM; and a node that recently failed this service
            // does not pick itself: it competes, and (1 - pressure) decides.
            Ok(offer)
                if demand.pattern == HaPattern::GpuInference || offer.composite.pressure > 0.0 =>
            {
                let composite = offer.composite;
                pool.push((self.id.clone(), offer));
                LocalVerdict::Compete { composite }
            }
            Ok(offer) => {
                self.record(Event::LocalCheck {
                    placement: pid,
                    verdict: LocalVerdict::Start {
                        composite: offer.composite,
                    },
                });
                self.start_here(seq, offer.gpu, now);
                return;
            }
            Err(reason) => LocalVerdict::Refused { reason },
        };
        self.record(Event::LocalCheck {
            placement: pid.clone(),
            verdict,
        });

        // Step 3: who can take it?
        let (asked, sampled) = self.candidates(&demand, reg);
        self.record(Event::QuerySent {
            placement: pid.clone(),
            asked: asked.len() as u32,
            live: reg.live_count() as u32,
            sampled,
        });
        for to in &asked {
            let msg = Message::CapacityQuery {
                placement: pid.clone(),
                demand: demand.clone(),
            };
            self.emit(Output::Send {
                to: to.clone(),
                msg,
            });
        }
        let deadline = now + self.query_timeout();
        let nobody = asked.is_empty();
        if let Some(p) = self.placements.get_mut(&seq) {
            p.stage = Stage::Gathering {
                asked: asked.into_iter().collect(),
                answered: BTreeSet::new(),
                offers: pool,
                declined: Vec::new(),
                sent_at: now,
                deadline,
            };
        }
        if nobody {
            self.finish_gathering(seq, now, reg);
        }
    }

    /// Whom to ask: every live node in a small fleet, a weighted sample of `query_sample`
    /// in a large one. Nodes that can never fit (labels, GPU size) are not asked.
    fn candidates(&mut self, demand: &Demand, reg: &Registry) -> (Vec<NodeId>, bool) {
        // Anti-affinity: nodes known (from heartbeats, through the registry's index, or from
        // dispatches accepted since) to run as many instances as the pattern allows would
        // only decline. Counted once per round, not once per candidate.
        let mut per_node: BTreeMap<&NodeId, u32> = BTreeMap::new();
        for (_, r) in reg.instances_of(&demand.service) {
            *per_node.entry(&r.node).or_default() += 1;
        }
        if let Some(st) = self.services.get(&demand.service) {
            for (_, _, node) in st.pending.values() {
                *per_node.entry(node).or_default() += 1;
            }
        }
        for p in self.placements.values() {
            if p.demand.service == demand.service
                && let Stage::Dispatching { target, .. } = &p.stage
            {
                *per_node.entry(target).or_default() += 1;
            }
        }
        let full = |n: &qs_wire::NodeStatus| {
            per_node.get(&n.node).copied().unwrap_or(0) >= demand.max_per_node
        };
        let accept = |n: &qs_wire::NodeStatus| {
            !n.draining
                && !full(n)
                && labels_match(&demand.labels, &n.labels)
                && (!demand.need.needs_gpu()
                    || n.capacity
                        .gpus
                        .iter()
                        .any(|g| g.vram_bytes >= demand.need.vram_bytes))
        };
        if reg.live_count() <= self.config.query_all_below + 1 {
            let all = reg
                .live_nodes()
                .filter(|n| n.node != self.id && accept(n))
                .map(|n| n.node.clone())
                .collect();
            (all, false)
        } else {
            let needs_gpu = demand.need.needs_gpu();
            let d = self.config.query_sample;
            (
                reg.sample(&mut self.rng, needs_gpu, d, &self.id, accept),
                true,
            )
        }
    }

    /// The adaptive gathering deadline, within the config bounds.
    fn query_timeout(&self) -> std::time::Duration {
        let c = &self.config;
        self.rtt
            .timeout(ms(c.query_timeout_min_ms), ms(c.query_timeout_max_ms))
    }

    /// Step 4: an offer or a decline came back.
    pub(crate) fn on_answer(
        &mut self,
        pid: PlacementId,
        from: NodeId,
        answer: Result<Offer, DeclineReason>,
        now: Time,
        reg: &Registry,
    ) {
        if pid.steward != self.id {
            return;
        }
        let seq = pid.seq;
        let Some(p) = self.placements.get_mut(&seq) else {
            return;
        };
        let Stage::Gathering {
            asked,
            answered,
            offers,
            declined,
            sent_at,
            ..
        } = &mut p.stage
        else {
            return; // late: the round already closed
        };
        if !asked.contains(&from) || !answered.insert(from.clone()) {
            return;
        }
        let rtt_us = now.since(*sent_at).as_micros() as f64;
        let complete = answered.len() == asked.len();
        match answer {
            Ok(offer) => offers.push((from, offer)),
            Err(reason) => declined.push(DeclineFrom { from, reason }),
        }
        self.rtt.sample(rtt_us);
        if complete {
            self.finish_gathering(seq, now, reg);
        }
    }

    /// End of step 4: gate the offers, rank the survivors, dispatch to the best.
    fn finish_gathering(&mut self, seq: u64, now: Time, reg: &Registry) {
        let Some(p) = self.placements.get_mut(&seq) else {
            return;
        };
        let Stage::Gathering {
            asked,
            answered,
            offers,
            declined,
            ..
        } = &mut p.stage
        else {
            return;
        };
        let offers = std::mem::take(offers);
        let (pid, pattern) = (p.id.clone(), p.demand.pattern);
        // The round's answers, as one event (the pool also holds this node's own offer, which
        // the local check recorded).
        let gathered = Event::Gathered {
            placement: pid.clone(),
            offers: offers
                .iter()
                .filter(|(n, _)| answered.contains(n))
                .map(|(n, o)| OfferFrom {
                    from: n.clone(),
                    composite: o.composite,
                })
                .collect(),
            declined: std::mem::take(declined),
            silent: asked.difference(answered).cloned().collect(),
        };
        if !asked.is_empty() {
            self.record(gathered);
        }
        let mut passed = Vec::with_capacity(offers.len());
        for (node, offer) in offers {
            if self.gate.admits(&offer.composite) {
                passed.push((node, offer));
            } else {
                self.record(Event::GateRefused {
                    placement: pid.clone(),
                    from: node,
                    composite: offer.composite,
                });
            }
        }
        if passed.is_empty() {
            self.retry_later(seq, "no offer passed the gate", now);
            return;
        }
        passed.sort_by(|a, b| rank(pattern, a, b));
        if let Some(p) = self.placements.get_mut(&seq) {
            p.stage = Stage::Dispatching {
                ranked: passed.into(),
                target: self.id.clone(),
                deadline: now,
            };
        }
        self.dispatch_next(seq, now, reg);
    }

    /// Step 5: dispatch to the best remaining offer.
    fn dispatch_next(&mut self, seq: u64, now: Time, reg: &Registry) {
        loop {
            let Some(p) = self.placements.get_mut(&seq) else {
                return;
            };
            let Stage::Dispatching { ranked, .. } = &mut p.stage else {
                return;
            };
            let Some((node, offer)) = ranked.pop_front() else {
                self.retry_later(seq, "every offer was refused", now);
                return;
            };
            let (pid, instance) = (p.id.clone(), p.instance.clone());
            let (demand, role, fencing) = (p.demand.clone(), p.role, p.fencing);
            self.record(Event::Dispatched {
                placement: pid.clone(),
                to: node.clone(),
                instance: instance.clone(),
                composite: offer.composite,
            });
            if node == self.id {
                match self.accept_dispatch(&instance, &demand, role, fencing, now, reg) {
                    Ok(()) => self.end(seq, End::Placed(node), now),
                    Err(reason) => {
                        self.record(Event::DispatchRefused {
                            placement: pid,
                            to: node,
                            reason: Some(reason),
                        });
                        continue;
                    }
                }
                return;
            }
            let deadline = now + ms(self.config.dispatch_timeout_ms);
            if let Some(p) = self.placements.get_mut(&seq)
                && let Stage::Dispatching {
                    target,
                    deadline: d,
                    ..
                } = &mut p.stage
            {
                *target = node.clone();
                *d = deadline;
            }
            let msg = Message::Dispatch {
                placement: pid,
                instance,
                demand,
                role,
                fencing,
            };
            self.emit(Output::Send { to: node, msg });
            return;
        }
    }

    pub(crate) fn on_dispatch_reply(
        &mut self,
        pid: PlacementId,
        from: NodeId,
        instance: &InstanceId,
        refused: Option<DeclineReason>,
        now: Time,
        reg: &Registry,
    ) {
        if pid.steward != self.id {
            return;
        }
        let Some(p) = self.placements.get(&pid.seq) else {
            return;
        };
        let Stage::Dispatching { target, .. } = &p.stage else {
            return;
        };
        if *target != from || p.instance != *instance {
            return;
        }
        match refused {
            None => self.end(pid.seq, End::Placed(from), now),
            Some(reason) => {
                self.record(Event::DispatchRefused {
                    placement: pid.clone(),
                    to: from,
                    reason: Some(reason),
                });
                self.dispatch_next(pid.seq, now, reg);
            }
        }
    }

    /// Step 2 succeeded: start on this node without asking anyone.
    fn start_here(&mut self, seq: u64, gpu: Option<u32>, now: Time) {
        let Some(p) = self.placements.get(&seq) else {
            return;
        };
        let (instance, demand, role, fencing) =
            (p.instance.clone(), p.demand.clone(), p.role, p.fencing);
        self.host(instance, demand, role, fencing, gpu);
        let me = self.id.clone();
        self.end(seq, End::Placed(me), now);
    }

    /// Nothing worked this round: back off and retry, or give up after `max_attempts`.
    fn retry_later(&mut self, seq: u64, reason: &str, now: Time) {
        let Some(p) = self.placements.get_mut(&seq) else {
            return;
        };
        if p.attempt >= self.config.max_attempts {
            self.end(seq, End::GaveUp(reason.to_owned()), now);
            return;
        }
        let exp = self
            .config
            .retry_backoff_ms
            .saturating_mul(1 << (p.attempt - 1).min(16));
        let backoff = exp.min(self.config.retry_backoff_max_ms);
        p.stage = Stage::Backoff {
            until: now + ms(backoff),
        };
        let event = Event::Unplaced {
            placement: p.id.clone(),
            service: p.demand.service.clone(),
            reason: format!("{reason}; retry in {backoff} ms"),
            retry: true,
        };
        self.record(event);
    }

    fn end(&mut self, seq: u64, end: End, now: Time) {
        let Some(p) = self.placements.remove(&seq) else {
            return;
        };
        if matches!(end, End::Placed(_)) {
            // Keep a backlog moving: reconcile this service before the input returns.
            self.reconcile_soon.insert(p.demand.service.clone());
        }
        let st = self.services.get_mut(&p.demand.service);
        match end {
            End::Placed(on) => {
                if let Some(st) = st {
                    st.in_flight -= 1;
                    if p.hot {
                        st.hot_in_flight = false;
                        st.last_scale_out = Some(now);
                    }
                    let deadline = now + ms(self.config.pending_timeout_ms);
                    st.pending
                        .insert(p.instance.clone(), (deadline, p.role, on.clone()));
                    st.last_fencing = st.last_fencing.max(p.fencing);
                }
                self.record(Event::Placed {
                    placement: p.id,
                    service: p.demand.service,
                    instance: p.instance,
                    on,
                    latency_us: now.since(p.started).as_micros() as u64,
                });
            }
            End::GaveUp(reason) => {
                if let Some(st) = st {
                    st.in_flight -= 1;
                    if p.hot {
                        st.hot_in_flight = false;
                        st.extra = st.extra.saturating_sub(1);
                    }
                    st.cooldown_until = now + ms(self.config.retry_backoff_max_ms);
                    // Come back when the cooldown ends, not a whole reconcile period later.
                    self.next_reconcile = self.next_reconcile.min(st.cooldown_until);
                    if p.demand.pattern.is_singleton() {
                        st.settle_until = now + ms(self.config.singleton_settle_ms);
                    }
                }
                self.record(Event::Unplaced {
                    placement: p.id,
                    service: p.demand.service,
                    reason,
                    retry: false,
                });
            }
        }
    }

    /// Deadlines: gathering closes, dispatches time out, backoffs retry.
    pub(crate) fn on_deadlines(&mut self, now: Time, reg: &Registry) {
        let due: Vec<u64> = self
            .placements
            .iter()
            .filter(|(_, p)| p.deadline() <= now)
            .map(|(s, _)| *s)
            .collect();
        for seq in due {
            let Some(p) = self.placements.get(&seq) else {
                continue;
            };
            if reg.spec(&p.demand.service).is_none() {
                self.end(seq, End::GaveUp("the spec was deleted".into()), now);
                continue;
            }
            match &p.stage {
                Stage::Gathering { .. } => self.finish_gathering(seq, now, reg),
                Stage::Dispatching { target, .. } => {
                    let event = Event::DispatchRefused {
                        placement: p.id.clone(),
                        to: target.clone(),
                        reason: None,
                    };
                    let singleton = p.demand.pattern.is_singleton();
                    self.record(event);
                    if singleton {
                        // The target may have accepted: wait for the registry, never guess.
                        let why = "dispatch unanswered; waiting for the registry to settle";
                        self.end(seq, End::GaveUp(why.into()), now);
                    } else {
                        self.dispatch_next(seq, now, reg);
                    }
                }
                Stage::Backoff { .. } => self.run_round(seq, now, reg),
                Stage::Claiming { .. } => {
                    // The claim may have been written: the next placement claims above it.
                    let (service, fencing) = (p.demand.service.clone(), p.fencing);
                    if let Some(st) = self.services.get_mut(&service) {
                        st.last_fencing = st.last_fencing.max(fencing);
                    }
                    self.end(seq, End::GaveUp("the claim went unanswered".into()), now);
                }
            }
        }
    }
}

fn placing_primary(placements: &BTreeMap<u64, Placement>, service: &ServiceName) -> bool {
    placements
        .values()
        .any(|p| p.demand.service == *service && p.role == Role::Primary)
}

/// Offer order: gpu-inference goes to the most free VRAM, everything else to the highest
/// composite; ties go to the lower node id so the order is total and deterministic.
fn rank(pattern: HaPattern, a: &(NodeId, Offer), b: &(NodeId, Offer)) -> Ordering {
    let by_composite = || b.1.composite.value.total_cmp(&a.1.composite.value);
    let primary = if pattern == HaPattern::GpuInference {
        b.1.vram_free_bytes
            .cmp(&a.1.vram_free_bytes)
            .then_with(by_composite)
    } else {
        by_composite()
    };
    primary.then_with(|| a.0.cmp(&b.0))
}
