//! The placement machine: one placement of a steward through the 5 steps of seed 000 §2
//! (sense, local check, capacity query, offers, dispatch), with its claim for singletons, its
//! adaptive gathering deadline, its retries with backoff and how it ends.

use super::inflight::{Placement, Stage};
use super::steward::{Accepted, Steward};
use super::{Cx, Output, StartOrder};
use crate::time::ms;
use qs_wire::{
    DeclineFrom, DeclineReason, Demand, Event, HaPattern, InstanceId, LocalVerdict, Message,
    NodeId, Offer, OfferFrom, PlacementId, Role, SenseReason, ServiceName, SingletonClaim,
    WorkloadSpec,
};
use std::cmp::Ordering;
use std::collections::BTreeSet;

mod candidates;

/// How a placement ended.
enum End {
    Placed(NodeId),
    GaveUp(String),
}

impl Steward {
    fn new_instance_id(&mut self, service: &ServiceName) -> InstanceId {
        let prefix: String = service.as_str().chars().take(54).collect();
        let prefix = prefix.trim_end_matches('-');
        let suffix = self.rng.next_u64() as u32;
        InstanceId::new(&format!("{prefix}-{suffix:08x}"))
            .expect("a valid service name plus a hex suffix is a valid instance id")
    }

    /// Step 1, sense: a placement starts.
    pub(crate) fn start_placement(
        &mut self,
        spec: &WorkloadSpec,
        reason: SenseReason,
        role: Role,
        fencing: u64,
        cx: &mut Cx<'_>,
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let id = PlacementId {
            steward: self.id.clone(),
            seq,
        };
        let instance = self.new_instance_id(&spec.name);
        let hot = matches!(reason, SenseReason::Hot { .. });
        cx.out.record(Event::Sensed {
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
                started: cx.now,
                attempt: 0,
                stage: Stage::Backoff { until: cx.now },
            },
        );
        if fencing == 0 {
            return self.run_round(seq, cx);
        }
        // A singleton: its token is claimed before anything is asked or started, so two
        // stewards placing it at once cannot both go on.
        let Some(p) = self.placements.get_mut(&seq) else {
            return;
        };
        p.stage = Stage::Claiming {
            deadline: cx.now + ms(self.config.claim_timeout_ms),
        };
        let claim = SingletonClaim {
            instance: p.instance.clone(),
            fencing,
            steward: self.id.clone(),
        };
        let service = spec.name.clone();
        cx.out.emit(Output::Claim { service, claim });
    }

    /// The answer to a singleton's claim: go on with the placement, or end it and remember
    /// the token that holds the service, so the next placement claims above it.
    pub(crate) fn on_claimed(
        &mut self,
        service: &ServiceName,
        instance: &InstanceId,
        result: Result<(), SingletonClaim>,
        cx: &mut Cx<'_>,
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
                cx.out.record(Event::Claimed {
                    placement: pid,
                    instance: instance.clone(),
                    fencing,
                });
                self.run_round(seq, cx);
            }
            Err(held) => {
                if let Some(st) = self.services.get_mut(service) {
                    st.last_fencing = st.last_fencing.max(held.fencing);
                }
                let why = format!(
                    "fencing token {} is held by {} (claimed by {})",
                    held.fencing, held.instance, held.steward
                );
                cx.out.record(Event::ClaimRefused {
                    placement: pid,
                    held_by: held.instance,
                    fencing: held.fencing,
                });
                self.end(seq, End::GaveUp(why), cx);
            }
        }
    }

    /// Steps 2 and 3: local check, then the capacity query.
    fn run_round(&mut self, seq: u64, cx: &mut Cx<'_>) {
        let Some(p) = self.placements.get_mut(&seq) else {
            return;
        };
        p.attempt += 1;
        let (pid, demand, fencing) = (p.id.clone(), p.demand.clone(), p.fencing);
        let token = demand.pattern.is_singleton().then_some(fencing);

        // Step 2: can this node run it itself?
        let mut pool = Vec::new();
        let verdict = match cx.host.evaluate(&demand, token, cx.now, cx.reg) {
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
                cx.out.record(Event::LocalCheck {
                    placement: pid,
                    verdict: LocalVerdict::Start {
                        composite: offer.composite,
                    },
                });
                self.start_here(seq, offer.gpu, cx);
                return;
            }
            Err(reason) => LocalVerdict::Refused { reason },
        };
        cx.out.record(Event::LocalCheck {
            placement: pid.clone(),
            verdict,
        });

        // Step 3: who can take it?
        let (asked, sampled) = self.candidates(&demand, cx.reg);
        cx.out.record(Event::QuerySent {
            placement: pid.clone(),
            asked: asked.len() as u32,
            live: cx.reg.live_count() as u32,
            sampled,
        });
        for to in &asked {
            let msg = Message::CapacityQuery {
                placement: pid.clone(),
                demand: demand.clone(),
            };
            cx.out.emit(Output::Send {
                to: to.clone(),
                msg,
            });
        }
        let deadline = cx.now + self.query_timeout();
        let nobody = asked.is_empty();
        if let Some(p) = self.placements.get_mut(&seq) {
            p.stage = Stage::Gathering {
                asked: asked.into_iter().collect(),
                answered: BTreeSet::new(),
                offers: pool,
                declined: Vec::new(),
                sent_at: cx.now,
                deadline,
                backoff_level: self.rtt.level(),
            };
        }
        if nobody {
            self.finish_gathering(seq, cx);
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
        cx: &mut Cx<'_>,
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
        let rtt_us = cx.now.since(*sent_at).as_micros() as f64;
        let complete = answered.len() == asked.len();
        match answer {
            Ok(offer) => offers.push((from, offer)),
            Err(reason) => declined.push(DeclineFrom { from, reason }),
        }
        self.rtt.sample(rtt_us);
        if complete {
            self.finish_gathering(seq, cx);
        }
    }

    /// End of step 4: gate the offers, rank the survivors, dispatch to the best.
    fn finish_gathering(&mut self, seq: u64, cx: &mut Cx<'_>) {
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
        // Why nothing may pass, in the operator's words: no answer is not a refusal.
        let (silent, refused) = (asked.len() - answered.len(), declined.len());
        let nothing_passed = if offers.is_empty() && refused == 0 && silent > 0 {
            format!("none of the {silent} nodes asked answered in time")
        } else if offers.is_empty() && refused > 0 {
            format!("no offer ({refused} declined, {silent} silent)")
        } else {
            "no offer passed the gate".to_owned()
        };
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
            cx.out.record(gathered);
        }
        let mut passed = Vec::with_capacity(offers.len());
        for (node, offer) in offers {
            if self.gate.admits(&offer.composite) {
                passed.push((node, offer));
            } else {
                cx.out.record(Event::GateRefused {
                    placement: pid.clone(),
                    from: node,
                    composite: offer.composite,
                });
            }
        }
        if passed.is_empty() {
            self.retry_later(seq, &nothing_passed, cx);
            return;
        }
        passed.sort_by(|a, b| rank(pattern, a, b));
        if let Some(p) = self.placements.get_mut(&seq) {
            p.stage = Stage::Dispatching {
                ranked: passed.into(),
                target: self.id.clone(),
                deadline: cx.now,
            };
        }
        self.dispatch_next(seq, cx);
    }

    /// Step 5: dispatch to the best remaining offer.
    fn dispatch_next(&mut self, seq: u64, cx: &mut Cx<'_>) {
        loop {
            let Some(p) = self.placements.get_mut(&seq) else {
                return;
            };
            let Stage::Dispatching { ranked, .. } = &mut p.stage else {
                return;
            };
            let Some((node, offer)) = ranked.pop_front() else {
                self.retry_later(seq, "every offer was refused", cx);
                return;
            };
            let (pid, instance) = (p.id.clone(), p.instance.clone());
            let (demand, role, fencing) = (p.demand.clone(), p.role, p.fencing);
            cx.out.record(Event::Dispatched {
                placement: pid.clone(),
                to: node.clone(),
                instance: instance.clone(),
                composite: offer.composite,
            });
            if node == self.id {
                match cx
                    .host
                    .accept_dispatch(&instance, &demand, role, fencing, cx.now, cx.reg, cx.out)
                {
                    Ok(()) => self.end(seq, End::Placed(node), cx),
                    Err(reason) => {
                        cx.out.record(Event::DispatchRefused {
                            placement: pid,
                            to: node,
                            reason: Some(reason),
                        });
                        continue;
                    }
                }
                return;
            }
            let deadline = cx.now + ms(self.config.dispatch_timeout_ms);
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
            cx.out.emit(Output::Send { to: node, msg });
            return;
        }
    }

    pub(crate) fn on_dispatch_reply(
        &mut self,
        pid: PlacementId,
        from: NodeId,
        instance: &InstanceId,
        refused: Option<DeclineReason>,
        cx: &mut Cx<'_>,
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
            None => self.end(pid.seq, End::Placed(from), cx),
            Some(reason) => {
                cx.out.record(Event::DispatchRefused {
                    placement: pid.clone(),
                    to: from,
                    reason: Some(reason),
                });
                self.dispatch_next(pid.seq, cx);
            }
        }
    }

    /// Step 2 succeeded: start on this node without asking anyone.
    fn start_here(&mut self, seq: u64, gpu: Option<u32>, cx: &mut Cx<'_>) {
        let Some(p) = self.placements.get(&seq) else {
            return;
        };
        let order = StartOrder {
            instance: p.instance.clone(),
            service: p.demand.service.clone(),
            role: p.role,
            fencing: p.fencing,
            gpu,
            need: p.demand.need,
        };
        cx.host.host(order, p.demand.clone(), cx.now, cx.out);
        let me = self.id.clone();
        self.end(seq, End::Placed(me), cx);
    }

    /// Nothing worked this round: back off and retry, or give up after `max_attempts`.
    fn retry_later(&mut self, seq: u64, reason: &str, cx: &mut Cx<'_>) {
        let Some(p) = self.placements.get_mut(&seq) else {
            return;
        };
        if p.attempt >= self.config.max_attempts {
            self.end(seq, End::GaveUp(reason.to_owned()), cx);
            return;
        }
        let exp = self
            .config
            .retry_backoff_ms
            .saturating_mul(1 << (p.attempt - 1).min(16));
        let backoff = exp.min(self.config.retry_backoff_max_ms);
        p.stage = Stage::Backoff {
            until: cx.now + ms(backoff),
        };
        let event = Event::Unplaced {
            placement: p.id.clone(),
            service: p.demand.service.clone(),
            reason: format!("{reason}; retry in {backoff} ms"),
            retry: true,
        };
        cx.out.record(event);
    }

    fn end(&mut self, seq: u64, end: End, cx: &mut Cx<'_>) {
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
                        st.tenure.last_scale_out = Some(cx.now);
                    }
                    let deadline = cx.now + ms(self.config.pending_timeout_ms);
                    let accepted = Accepted {
                        until: deadline,
                        role: p.role,
                        node: on.clone(),
                    };
                    st.pending.insert(p.instance.clone(), accepted);
                    st.last_fencing = st.last_fencing.max(p.fencing);
                }
                cx.out.record(Event::Placed {
                    placement: p.id,
                    service: p.demand.service,
                    instance: p.instance,
                    on,
                    latency_us: cx.now.since(p.started).as_micros() as u64,
                });
            }
            End::GaveUp(reason) => {
                if let Some(st) = st {
                    st.in_flight -= 1;
                    if p.hot {
                        st.hot_in_flight = false;
                        st.tenure.extra = st.tenure.extra.saturating_sub(1);
                    }
                    st.cooldown_until = cx.now + ms(self.config.retry_backoff_max_ms);
                    // Come back when the cooldown ends, not a whole reconcile period later.
                    self.next_reconcile = self.next_reconcile.min(st.cooldown_until);
                    if p.demand.pattern.is_singleton() {
                        st.settle_until = cx.now + ms(self.config.singleton_settle_ms);
                    }
                }
                cx.out.record(Event::Unplaced {
                    placement: p.id,
                    service: p.demand.service,
                    reason,
                    retry: false,
                });
            }
        }
    }

    /// Deadlines: gathering closes, dispatches time out, backoffs retry.
    pub(crate) fn on_deadlines(&mut self, cx: &mut Cx<'_>) {
        let due: Vec<u64> = self
            .placements
            .iter()
            .filter(|(_, p)| p.deadline() <= cx.now)
            .map(|(s, _)| *s)
            .collect();
        for seq in due {
            let Some(p) = self.placements.get(&seq) else {
                continue;
            };
            if cx.reg.spec(&p.demand.service).is_none() {
                self.end(seq, End::GaveUp("the spec was deleted".into()), cx);
                continue;
            }
            match &p.stage {
                Stage::Gathering {
                    asked,
                    answered,
                    backoff_level,
                    ..
                } => {
                    if answered.len() < asked.len() {
                        self.rtt.timed_out(*backoff_level);
                    }
                    self.finish_gathering(seq, cx)
                }
                Stage::Dispatching { target, .. } => {
                    let event = Event::DispatchRefused {
                        placement: p.id.clone(),
                        to: target.clone(),
                        reason: None,
                    };
                    let singleton = p.demand.pattern.is_singleton();
                    cx.out.record(event);
                    if singleton {
                        // The target may have accepted: wait for the registry, never guess.
                        let why = "dispatch unanswered; waiting for the registry to settle";
                        self.end(seq, End::GaveUp(why.into()), cx);
                    } else {
                        self.dispatch_next(seq, cx);
                    }
                }
                Stage::Backoff { .. } => self.run_round(seq, cx),
                Stage::Claiming { .. } => {
                    // The claim may have been written: the next placement claims above it.
                    let (service, fencing) = (p.demand.service.clone(), p.fencing);
                    if let Some(st) = self.services.get_mut(&service) {
                        st.last_fencing = st.last_fencing.max(fencing);
                    }
                    self.end(seq, End::GaveUp("the claim went unanswered".into()), cx);
                }
            }
        }
    }
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
