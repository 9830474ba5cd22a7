//! The state machine of one GPU: resident runtimes, waiting requests, and the transition
//! (drain, stop, VRAM released, start, warm) that the policy asked for.

use super::state::{Phase, Resident, State};
use super::view::View;
use super::{
    GpuConfig, GpuEvent, GpuInput, GpuOutput, ModelName, ModelProfile, RequestId, SwapPolicy,
};
use crate::Time;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

mod admit;
mod leases;
mod load_bound;
mod models;
mod stasis;
mod tiers;

/// Weight of a new load time in the learned estimate.
const LOAD_LEARN: f64 = 0.3;
/// While requests wait for a model that is not resident and no transition is under way,
/// the policy is asked again this often: urgency grows and aging bounds pass with time
/// alone.
pub const RECONSIDER_MS: u64 = 250;

/// The transition under way: runtimes drained to make room for `to`, which starts at `tier`
/// (needing `vram_bytes`).
#[derive(Clone, Debug)]
struct Transition {
    to: ModelName,
    tier: usize,
    vram_bytes: u64,
    evict: BTreeSet<ModelName>,
    /// The requests waiting for `to` when the transition began (those before this place in
    /// arrival order): what it commits to serve.
    committed_before: u64,
    /// Since the VRAM check was asked for; `None` before.
    releasing_since: Option<Time>,
    /// A move up a tier: the tier `to` ran at and its VRAM, started again if the larger
    /// one fails to start or its VRAM is not seen free.
    fallback: Option<(usize, u64)>,
}

/// One GPU's scheduler. See the module docs of [`crate::gpu`].
pub struct GpuScheduler {
    state: State,
    waiting: usize,
    next_order: u64,
    routed: BTreeMap<RequestId, ModelName>,
    transition: Option<Transition>,
    failed_starts: BTreeMap<ModelName, u32>,
    /// Models withdrawn whose runtimes have not exited yet.
    withdrawn: BTreeSet<ModelName>,
    /// VRAM of the reserved margin held by the resident model.
    margin_held_bytes: u64,
    /// Models whose stasis was recorded as durable and has not ended.
    durable: BTreeSet<ModelName>,
    /// Models whose move up a tier failed: they stay where they are until declared again.
    no_move_up: BTreeSet<ModelName>,
    /// When to ask the policy again though nothing came in.
    reconsider_at: Option<Time>,
    /// The time of the last step.
    stepped_at: Time,
    policy: Box<dyn SwapPolicy>,
    out: VecDeque<GpuOutput>,
}

impl GpuScheduler {
    pub fn new(config: GpuConfig, models: Vec<ModelProfile>, policy: Box<dyn SwapPolicy>) -> Self {
        let load_ms = models
            .iter()
            .map(|p| (p.name.clone(), p.load_ms as f64))
            .collect();
        GpuScheduler {
            state: State {
                config,
                profiles: models.into_iter().map(|p| (p.name.clone(), p)).collect(),
                load_ms,
                rates: BTreeMap::new(),
                last_class: BTreeMap::new(),
                resident: BTreeMap::new(),
                queues: BTreeMap::new(),
            },
            waiting: 0,
            next_order: 0,
            routed: BTreeMap::new(),
            transition: None,
            failed_starts: BTreeMap::new(),
            withdrawn: BTreeSet::new(),
            margin_held_bytes: 0,
            durable: BTreeSet::new(),
            no_move_up: BTreeSet::new(),
            reconsider_at: None,
            stepped_at: Time::ZERO,
            policy,
            out: VecDeque::new(),
        }
    }

    /// VRAM the runtimes may use: the GPU's less the reserved margin.
    pub fn budget_bytes(&self) -> u64 {
        self.state.budget_bytes()
    }

    /// VRAM the resident runtimes hold by their profiles.
    pub fn resident_bytes(&self) -> u64 {
        self.state.resident_bytes()
    }

    /// How long a runtime whose load takes `load_ms` may load ([`GpuConfig::load_bound_ms`]).
    pub fn load_bound_ms(&self, load_ms: u64) -> u64 {
        self.state.config.load_bound_ms(load_ms)
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// What a policy sees of it, as of its last step.
    pub fn view(&self) -> View<'_> {
        View {
            s: &self.state,
            now: self.stepped_at,
        }
    }

    pub fn phase(&self, m: &ModelName) -> Option<Phase> {
        self.state.resident.get(m).map(|r| r.phase)
    }

    /// The next output, if any.
    pub fn poll(&mut self) -> Option<GpuOutput> {
        self.out.pop_front()
    }

    /// When to call [`GpuScheduler::tick`] next: the earliest drain bound, or the next time
    /// the policy is asked again while requests wait for a model that is not resident.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.state
            .resident
            .values()
            .filter_map(|r| match r.phase {
                Phase::Draining { deadline, .. } | Phase::Stopping { deadline } => Some(deadline),
                _ => None,
            })
            .chain(self.reconsider_at)
            .chain(self.next_durable())
            .chain(self.next_load_bound())
            .chain(self.next_move_up(self.stepped_at))
            .min()
    }

    /// Time passed: drains past their bound stop, cutting what is still in flight.
    pub fn tick(&mut self, now: Time) {
        self.step(now);
    }

    pub fn handle(&mut self, input: GpuInput, now: Time) {
        match input {
            GpuInput::Arrive(request) => self.arrive(request, now),
            GpuInput::Finished { id } => {
                if let Some(m) = self.routed.remove(&id)
                    && let Some(r) = self.state.resident.get_mut(&m)
                {
                    r.release(id);
                    r.last_used = now;
                }
            }
            GpuInput::Loaded { model } => {
                if let Some(r) = self.state.resident.get_mut(&model)
                    && let Phase::Loading { since } = r.phase
                {
                    let took_ms = now.since(since).as_millis() as u64;
                    r.phase = Phase::Warm;
                    r.last_used = now;
                    let est = self
                        .state
                        .load_ms
                        .entry(model.clone())
                        .or_insert(took_ms as f64);
                    *est = (1.0 - LOAD_LEARN) * *est + LOAD_LEARN * took_ms as f64;
                    self.failed_starts.remove(&model);
                    if self.transition.as_ref().is_some_and(|t| t.to == model) {
                        self.transition = None;
                    }
                    self.out
                        .push_back(GpuOutput::Event(GpuEvent::Loaded { model, took_ms }));
                }
            }
            GpuInput::LoadFailed { model } => self.load_failed(model, now),
            GpuInput::Stopped { model } => self.exited(model, now),
            GpuInput::VramFree { free_bytes } => self.vram_free(free_bytes, now),
            GpuInput::Cancel { id } => self.cancel(id),
            GpuInput::HolderGone { holder } => self.holder_gone(&holder),
        }
        self.step(now);
    }

    /// A runtime's process is gone (told to stop, or crashed): what was in flight on it is
    /// refused, and a transition waiting for it reads the VRAM next.
    fn exited(&mut self, model: ModelName, now: Time) {
        if let Some(r) = self.state.resident.remove(&model) {
            for id in r.in_flight.into_keys() {
                self.routed.remove(&id);
                self.out.push_back(GpuOutput::Refuse {
                    id,
                    retry_after_ms: 0,
                    reason: "its runtime exited",
                });
            }
            if self.withdrawn.remove(&model) {
                self.state.profiles.remove(&model);
            }
            self.out
                .push_back(GpuOutput::Event(GpuEvent::Stopped { model }));
        }
        if let Some(t) = self.transition.as_mut()
            && t.releasing_since.is_none()
            && t.evict.iter().all(|m| !self.state.resident.contains_key(m))
        {
            t.releasing_since = Some(now);
            self.out.push_back(GpuOutput::CheckVram);
        }
    }

    /// A start failed. Only a loading runtime can fail to start; any other that is reported
    /// failed has exited. Started again (after the VRAM it held is seen free) until the
    /// watchdog's bound, then reset.
    fn load_failed(&mut self, model: ModelName, now: Time) {
        let (tier, vram_bytes) = match self.state.resident.get(&model) {
            Some(r) if matches!(r.phase, Phase::Loading { .. }) => (r.tier, r.vram_bytes),
            Some(_) => return self.exited(model, now),
            None => return,
        };
        self.state.resident.remove(&model);
        let attempts = self.failed_starts.entry(model.clone()).or_insert(0);
        *attempts += 1;
        let attempt = *attempts;
        self.out.push_back(GpuOutput::Event(GpuEvent::LoadFailed {
            model: model.clone(),
            attempt,
        }));
        if attempt < self.state.config.max_failed_starts {
            // Again, once what the failed process held is seen free. (Under another model's
            // transition, it is chosen again later.) A larger tier it moved up to that fails
            // gives way to the tier it ran at.
            match self.transition.as_mut() {
                Some(t) if t.to == model => {
                    if let Some((tier, bytes)) = t.fallback.take() {
                        t.tier = tier;
                        t.vram_bytes = bytes;
                        self.no_move_up.insert(model);
                    }
                    t.releasing_since = Some(now);
                    self.out.push_back(GpuOutput::CheckVram);
                }
                Some(_) => {}
                None => {
                    self.transition = Some(Transition {
                        to: model,
                        tier,
                        vram_bytes,
                        evict: BTreeSet::new(),
                        committed_before: self.next_order,
                        releasing_since: Some(now),
                        fallback: None,
                    });
                    self.out.push_back(GpuOutput::CheckVram);
                }
            }
            return;
        }
        self.failed_starts.remove(&model);
        if self.transition.as_ref().is_some_and(|t| t.to == model) {
            self.transition = None;
        }
        self.out
            .push_back(GpuOutput::Event(GpuEvent::WatchdogReset {
                model: model.clone(),
                attempts: attempt,
            }));
        self.refuse_waiting(&model, "the model's runtime failed to start");
    }

    /// Refuses every request waiting for `model`, saying `reason`.
    fn refuse_waiting(&mut self, model: &ModelName, reason: &'static str) {
        if let Some(mut q) = self.state.queues.remove(model) {
            for i in 0..3 {
                while let Some(w) = q.pop(i) {
                    self.waiting -= 1;
                    self.out.push_back(GpuOutput::Refuse {
                        id: w.request.id,
                        retry_after_ms: 0,
                        reason,
                    });
                }
            }
        }
    }

    fn vram_free(&mut self, free_bytes: u64, now: Time) {
        let Some(t) = self.transition.as_ref() else {
            return;
        };
        // A reading that comes after the start (a stray, or a periodic one) changes nothing.
        if self.state.resident.contains_key(&t.to) {
            return;
        }
        let Some(since) = t.releasing_since else {
            return;
        };
        let need = t.vram_bytes;
        // Room for it beside what stays resident and the reserved margin.
        let others = self.resident_bytes();
        // The margin is kept free but for the resident model, whose VRAM the reading
        // already leaves out.
        let margin_left = self
            .state
            .config
            .reserved_bytes
            .saturating_sub(self.margin_held_bytes);
        let usable = free_bytes.saturating_sub(margin_left);
        if usable < need || others + need > self.budget_bytes() {
            let waited = now.since(since);
            if waited < crate::time::ms(self.state.config.stop_timeout_ms) {
                // Not released yet (the driver lags the exit): asked again by the shell.
                self.out.push_back(GpuOutput::CheckVram);
                return;
            }
            let to = t.to.clone();
            // A move up a tier whose room did not come: back to the tier it ran at.
            if let Some(t) = self.transition.as_mut()
                && let Some((tier, bytes)) = t.fallback.take()
            {
                t.tier = tier;
                t.vram_bytes = bytes;
                t.releasing_since = Some(now);
                self.no_move_up.insert(t.to.clone());
                self.out.push_back(GpuOutput::CheckVram);
                return;
            }
            // Something else holds it (another process, a context the driver keeps): the
            // swap gives up rather than wait for good; asked again, it is tried again.
            self.transition = None;
            self.out
                .push_back(GpuOutput::Event(GpuEvent::VramNotReleased {
                    to: to.clone(),
                    free_bytes,
                    waited_ms: waited.as_millis() as u64,
                }));
            self.refuse_waiting(&to, "the VRAM it needs was not released");
            return;
        }
        let (to, tier) = (t.to.clone(), t.tier);
        self.out.push_back(GpuOutput::Event(GpuEvent::VramReleased {
            to: to.clone(),
            free_bytes,
            took_ms: now.since(since).as_millis() as u64,
        }));
        self.start(to, tier, need, now);
    }

    /// Starts `model` at `tier`, committed to the requests that waited for it when its
    /// transition began (those still waiting), or to all waiting now when it needed none.
    fn start(&mut self, model: ModelName, tier: usize, vram_bytes: u64, now: Time) {
        let committed_before = match self.transition.as_ref().filter(|t| t.to == model) {
            Some(t) => t.committed_before,
            None => self.next_order,
        };
        self.state.resident.insert(
            model.clone(),
            Resident {
                phase: Phase::Loading { since: now },
                tier,
                vram_bytes,
                in_flight: BTreeMap::new(),
                in_flight_tokens: 0,
                leased: BTreeMap::new(),
                revoked: false,
                committed_before,
                last_used: now,
            },
        );
        self.out.push_back(GpuOutput::Start {
            model,
            tier,
            vram_bytes,
        });
    }

    /// After every input: route what can go, let the policy begin a transition, stop what
    /// is drained.
    fn step(&mut self, now: Time) {
        self.stepped_at = now;
        self.overdue_loads(now);
        self.route(now);
        self.revoke_for_waiting(now);
        if self.transition.is_none() {
            let view = View {
                s: &self.state,
                now,
            };
            let chosen = self.policy.choose(&view);
            if let Some(to) = chosen
                && !self.state.resident.contains_key(&to)
            {
                self.begin(to, now);
            }
        }
        self.tier_down(now);
        self.move_up(now);
        // A runtime that outlives its stop is told again, louder (the shell kills it).
        let stop_bound = crate::time::ms(self.state.config.stop_timeout_ms);
        for (m, r) in self.state.resident.iter_mut() {
            if let Phase::Stopping { deadline } = r.phase
                && now >= deadline
            {
                r.phase = Phase::Stopping {
                    deadline: now + stop_bound,
                };
                self.out
                    .push_back(GpuOutput::Event(GpuEvent::StopOverdue { model: m.clone() }));
                self.out.push_back(GpuOutput::Stop {
                    model: m.clone(),
                    kill: true,
                });
            }
        }
        let mut drained = Vec::new();
        for (m, r) in &self.state.resident {
            if let Phase::Draining { since, deadline } = r.phase
                && (r.in_flight.is_empty() || now >= deadline)
            {
                drained.push((m.clone(), since, r.in_flight.len()));
            }
        }
        for (m, since, cut) in drained {
            if let Some(r) = self.state.resident.get_mut(&m) {
                r.phase = Phase::Stopping {
                    deadline: now + crate::time::ms(self.state.config.stop_timeout_ms),
                };
                r.in_flight_tokens = 0;
                let leased = std::mem::take(&mut r.leased);
                let revoked = r.revoked;
                for id in std::mem::take(&mut r.in_flight).into_keys() {
                    self.routed.remove(&id);
                    self.out.push_back(GpuOutput::Refuse {
                        id,
                        retry_after_ms: 0,
                        reason: if revoked && leased.contains_key(&id) {
                            "lease revoked: the GPU is taken back for local interactive use"
                        } else {
                            "cut: its runtime was stopped at the drain bound"
                        },
                    });
                }
            }
            self.out.push_back(GpuOutput::Event(GpuEvent::Drained {
                model: m.clone(),
                took_ms: now.since(since).as_millis() as u64,
                cut,
            }));
            // Work still runs on it past its bound: it is not asked, it is ended.
            self.out.push_back(GpuOutput::Stop {
                model: m,
                kill: cut > 0,
            });
        }
        // Routing again: a runtime that was warm before the step may have free slots now.
        self.route(now);
        let wanting = self
            .state
            .queues
            .keys()
            .any(|m| !self.state.resident.contains_key(m));
        self.reconsider_at = (self.transition.is_none() && wanting && self.policy.moved_by_time())
            .then(|| now + crate::time::ms(RECONSIDER_MS));
        self.durable_stasis(now);
    }

    fn begin(&mut self, to: ModelName, now: Time) {
        self.begin_within(to, now, self.state.config.drain_timeout_ms);
    }

    /// Begins the transition to `to`, draining what must go within `drain_ms`.
    fn begin_within(&mut self, to: ModelName, now: Time, drain_ms: u64) {
        if let Some(fit) = self.state.fit_for(&to) {
            self.begin_at(to, fit, now, drain_ms);
        }
    }

    /// Routes waiting requests to serving runtimes with free slots, as the policy allows.
    fn route(&mut self, now: Time) {
        loop {
            let mut routed_any = false;
            let serving: Vec<ModelName> = self
                .state
                .resident
                .iter()
                .filter(|(_, r)| r.phase == Phase::Warm)
                .map(|(m, _)| m.clone())
                .collect();
            for m in serving {
                let slots = self
                    .state
                    .profiles
                    .get(&m)
                    .map_or(1, |p| p.discipline.slots()) as usize;
                while let Some(r) = self.state.resident.get(&m) {
                    if r.in_flight.len() >= slots {
                        break;
                    }
                    let Some(q) = self.state.queues.get(&m) else {
                        break;
                    };
                    let next = if self.policy.arrival_order() {
                        q.oldest_index()
                    } else {
                        q.next_index(now)
                    };
                    let Some(i) = next else {
                        break;
                    };
                    let head = &q.by_class[i][0];
                    if !self.policy.may_route(
                        &View {
                            s: &self.state,
                            now,
                        },
                        head,
                    ) {
                        break;
                    }
                    let Some(w) = self.state.queues.get_mut(&m).and_then(|q| q.pop(i)) else {
                        break;
                    };
                    self.waiting -= 1;
                    let r = self.state.resident.get_mut(&m).expect("checked above");
                    r.in_flight.insert(w.request.id, w.request.context_tokens);
                    if let Some(holder) = &w.request.lease {
                        r.leased.insert(w.request.id, holder.clone());
                    }
                    r.in_flight_tokens += u64::from(w.request.context_tokens);
                    r.last_used = now;
                    self.routed.insert(w.request.id, m.clone());
                    self.out.push_back(GpuOutput::Route {
                        id: w.request.id,
                        model: m.clone(),
                    });
                    routed_any = true;
                }
            }
            // FIFO: routing one model's head may make another's the global head.
            if !routed_any {
                break;
            }
        }
        self.state.queues.retain(|_, q| q.len() > 0);
    }
}
