//! One node's decisions, as a sans-IO state machine.
//!
//! A node plays two parts. As a *host* ([`host`]) it senses its load, answers capacity queries
//! with offers, and accepts or refuses dispatches (late binding). As a *steward*
//! ([`steward`]) it reconciles the services it stewards through the 5 placement steps.
//! The shell feeds [`Input`]s with the current time and its [`Registry`], then drains
//! [`Output`]s with [`Node::poll`] and sleeps until [`Node::poll_timeout`].

mod host;
mod steward;

use crate::config::Config;
use crate::failure::FailureMemory;
use crate::registry::Registry;
use crate::rng::Rng;
use crate::time::{Time, ms};
use crate::weight::Gate;
use qs_wire::{
    Capacity, Committed, Event, ExitOutcome, InstanceId, InstanceLoad, Load, Message, NodeId,
    NodeSpec, NodeStatus, Resources, Role, ServiceName, SingletonClaim,
};
use std::collections::{BTreeMap, VecDeque};

pub use host::Hosted;

/// TCP's round-trip estimator (RFC 6298): the deadline is `srtt + 4 rttvar`, and the maximum
/// until the first sample arrives, so a slow first link is not cut off.
#[derive(Clone, Copy, Debug, Default)]
struct RttEstimator {
    srtt_us: Option<f64>,
    rttvar_us: f64,
}

impl RttEstimator {
    fn sample(&mut self, rtt_us: f64) {
        match self.srtt_us {
            None => {
                self.srtt_us = Some(rtt_us);
                self.rttvar_us = rtt_us / 2.0;
            }
            Some(srtt) => {
                self.rttvar_us += ((srtt - rtt_us).abs() - self.rttvar_us) / 4.0;
                self.srtt_us = Some(srtt + (rtt_us - srtt) / 8.0);
            }
        }
    }

    fn timeout(&self, min: std::time::Duration, max: std::time::Duration) -> std::time::Duration {
        match self.srtt_us {
            None => max,
            Some(srtt) => {
                let us = (srtt + 4.0 * self.rttvar_us) as u64;
                std::time::Duration::from_micros(us).clamp(min, max)
            }
        }
    }
}

/// Everything that can happen to a node.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// Time passed; the node acts on whatever deadline is due.
    Tick,
    /// A sensor sample of the node and of each instance's process tree.
    Sensed {
        load: Load,
        instances: BTreeMap<InstanceId, InstanceLoad>,
    },
    /// A message from another node.
    Message { from: NodeId, msg: Message },
    /// The executor reports that an instance ended.
    Exited {
        instance: InstanceId,
        outcome: ExitOutcome,
    },
    /// Membership or the set of specs changed: stop what is no longer wanted here and
    /// reconcile every stewarded service now.
    Reconcile,
    /// One service's spec or instances changed: reconcile it now, if stewarded here.
    ReconcileService(ServiceName),
    /// The operator approves moving the primary of a stateful-read service.
    ApprovePromotion { service: ServiceName },
    /// Drain this node (`true`): decline all new work and stop every instance so its
    /// stewards place it elsewhere; `false` takes work again.
    Drain(bool),
    /// A health check passed (`serving`) or an instance without one is up; or it stopped
    /// passing.
    Health { instance: InstanceId, serving: bool },
    /// The answer to [`Output::Claim`]: `Ok` when the record is ours, else the record that
    /// holds the service.
    Claimed {
        service: ServiceName,
        instance: InstanceId,
        result: Result<(), SingletonClaim>,
    },
    /// An instance this node ran before its agent was killed, found at restart (still running
    /// and ended by the shell, or gone): it failed with the node, at the node's CPU use of
    /// then, and counts as a failure of its service here.
    Lost {
        instance: InstanceId,
        service: ServiceName,
        cpu_util: f64,
        reason: String,
    },
}

/// The order to start one instance on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartOrder {
    pub instance: InstanceId,
    pub service: ServiceName,
    pub role: Role,
    pub fencing: u64,
    pub gpu: Option<u32>,
    pub need: Resources,
}

/// Everything a node asks its shell to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// A directed message to another node.
    Send { to: NodeId, msg: Message },
    /// Publish this node's heartbeat (to the registry of every node, this one included).
    Heartbeat(NodeStatus),
    /// Start an instance (the executor reports its end with [`Input::Exited`]).
    Start(StartOrder),
    /// Stop an instance gracefully (the executor reports its end with [`Input::Exited`]).
    Stop {
        instance: InstanceId,
        reason: String,
    },
    /// Append an event to the ledger.
    Record(Event),
    /// `target` answered a probe of this process's failure detector
    /// ([`crate::DetectorInput::Ack`]).
    Ack { target: NodeId, nonce: u64 },
    /// Claim a singleton's record in the fleet's `instances` KV: write `claim` under the
    /// service's key by compare-and-set if [`judge_claim`] admits it over what is there; the
    /// answer comes back as [`Input::Claimed`].
    Claim {
        service: ServiceName,
        claim: SingletonClaim,
    },
}

/// Whether `mine` may replace the singleton record `current` (tokens only grow, and a
/// placement may claim its own token again); if not, the record that holds the service, as
/// [`Input::Claimed`] reports it.
pub fn judge_claim(
    current: Option<&SingletonClaim>,
    mine: &SingletonClaim,
) -> Result<(), SingletonClaim> {
    match current {
        Some(c)
            if c.fencing > mine.fencing
                || (c.fencing == mine.fencing && c.instance != mine.instance) =>
        {
            Err(c.clone())
        }
        _ => Ok(()),
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct Node {
    id: NodeId,
    level: u8,
    labels: BTreeMap<String, String>,
    capacity: Capacity,
    config: Config,
    gate: Gate,
    committed: Committed,
    load: Load,
    hosted: BTreeMap<InstanceId, Hosted>,
    /// Draining: no new work; instances are being moved away.
    draining: bool,
    /// Recently completed job instances, reported in heartbeats until the linger passes.
    completed: VecDeque<(Time, InstanceId, ServiceName)>,
    failures: FailureMemory,
    rng: Rng,
    placements: BTreeMap<u64, steward::Placement>,
    /// Services whose placement just ended: reconcile them before the input returns, so a
    /// steward with a backlog keeps its pipeline full instead of waiting for the next tick.
    reconcile_soon: std::collections::BTreeSet<ServiceName>,
    services: BTreeMap<ServiceName, steward::Stewardship>,
    next_seq: u64,
    /// Round trips of capacity queries, for the adaptive gathering deadline.
    rtt: RttEstimator,
    next_heartbeat: Time,
    next_reconcile: Time,
    /// No steward work before this: a node first listens for `join_settle_ms`, so its view
    /// of who is alive (and so of who stewards what) is complete.
    ready_at: Time,
    out: VecDeque<Output>,
}

impl Node {
    /// A node as declared, with its own seeded randomness. The first heartbeat is jittered
    /// within one interval so a fleet started together does not beat in step.
    ///
    /// The stream is the seed's mixed with the node's name: nodes started with the same seed
    /// (every `qs agent` of a fleet) still draw different instance ids.
    pub fn new(spec: &NodeSpec, config: Config, seed: u64, now: Time) -> Node {
        let mut rng = Rng::seeded(seed ^ crate::hash::of_str(spec.id.as_str()));
        // Announce soon after start (jittered, so a fleet started together does not beat in
        // step), whatever the heartbeat period.
        let first_beat = now + ms(rng.below(config.heartbeat_ms.clamp(1, 250)));
        let ready_at = now + ms(config.join_settle_ms);
        Node {
            id: spec.id.clone(),
            level: spec.level,
            labels: spec.labels.clone(),
            committed: Committed {
                gpu_vram_bytes: vec![0; spec.capacity.gpus.len()],
                ..Committed::default()
            },
            load: Load {
                gpus: vec![Default::default(); spec.capacity.gpus.len()],
                ..Load::default()
            },
            capacity: spec.capacity.clone(),
            gate: Gate {
                min: config.gate_min,
            },
            failures: FailureMemory::new(ms(config.failure_half_life_ms), config.pressure_cap),
            rtt: RttEstimator::default(),
            config,
            hosted: BTreeMap::new(),
            draining: false,
            completed: VecDeque::new(),
            rng,
            placements: BTreeMap::new(),
            reconcile_soon: Default::default(),
            services: BTreeMap::new(),
            next_seq: 0,
            next_heartbeat: first_beat,
            next_reconcile: first_beat,
            ready_at,
            out: VecDeque::new(),
        }
    }

    /// Feeds one input. Outputs queue up for [`Node::poll`].
    pub fn handle(&mut self, input: Input, now: Time, reg: &Registry) {
        match input {
            Input::Tick => self.on_tick(now, reg),
            Input::Sensed { load, instances } => self.on_sensed(load, &instances),
            Input::Message { from, msg } => self.on_message(from, msg, now, reg),
            Input::Exited { instance, outcome } => self.on_exit(&instance, outcome, now),
            Input::Claimed {
                service,
                instance,
                result,
            } => self.on_claimed(&service, &instance, result, now, reg),
            Input::Lost {
                instance,
                service,
                cpu_util,
                reason,
            } => self.on_lost(instance, service, cpu_util, reason, now),
            Input::Reconcile => {
                self.next_reconcile = now + ms(self.config.heartbeat_ms);
                self.stop_unwanted(reg);
                self.reconcile(now, reg);
            }
            Input::ReconcileService(service) => self.reconcile_service(&service, now, reg),
            Input::ApprovePromotion { service } => self.approve_promotion(&service, now, reg),
            Input::Drain(on) => self.drain(on),
            Input::Health { instance, serving } => {
                // A report about a process that has since failed is stale.
                if let Some(h) = self.hosted.get_mut(&instance)
                    && h.restart_at.is_none()
                {
                    h.serving = serving;
                }
            }
        }
        self.reconcile_pending(now, reg);
    }

    /// Reconciles the services whose placements ended during this input.
    fn reconcile_pending(&mut self, now: Time, reg: &Registry) {
        while let Some(service) = self.reconcile_soon.pop_first() {
            self.reconcile_service(&service, now, reg);
        }
    }

    /// The next output, if any. Call until `None` after every [`Node::handle`].
    pub fn poll(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When the node next needs a [`Input::Tick`].
    pub fn poll_timeout(&self) -> Option<Time> {
        let placements = self.placements.values().map(steward::Placement::deadline);
        placements
            .chain([self.next_heartbeat, self.next_reconcile])
            .chain(self.next_restart())
            .min()
    }

    fn on_tick(&mut self, now: Time, reg: &Registry) {
        if now >= self.next_heartbeat {
            let beat = self.status(now);
            self.emit(Output::Heartbeat(beat));
            self.next_heartbeat = now + ms(self.config.heartbeat_ms);
        }
        if now >= self.next_reconcile {
            // Set first: reconciling may ask for an earlier wake-up (a cooldown ending).
            self.next_reconcile = now + ms(self.config.heartbeat_ms);
            self.stop_unwanted(reg);
            self.reconcile(now, reg);
        }
        self.restart_due(now);
        self.on_deadlines(now, reg);
    }

    fn on_message(&mut self, from: NodeId, msg: Message, now: Time, reg: &Registry) {
        match msg {
            // Heartbeats go to the registry, which the shell owns.
            Message::Heartbeat(_) => {}
            Message::CapacityQuery { placement, demand } => {
                let reply = match self.evaluate(&demand, None, now, reg) {
                    Ok(offer) => Message::Offer { placement, offer },
                    Err(reason) => Message::Decline { placement, reason },
                };
                self.emit(Output::Send {
                    to: from,
                    msg: reply,
                });
            }
            Message::Offer { placement, offer } => {
                self.on_answer(placement, from, Ok(offer), now, reg)
            }
            Message::Decline { placement, reason } => {
                self.on_answer(placement, from, Err(reason), now, reg)
            }
            Message::Dispatch {
                placement,
                instance,
                demand,
                role,
                fencing,
            } => {
                let refused = self
                    .accept_dispatch(&instance, &demand, role, fencing, now, reg)
                    .err();
                let msg = Message::DispatchReply {
                    placement,
                    instance,
                    refused,
                };
                self.emit(Output::Send { to: from, msg });
            }
            Message::DispatchReply {
                placement,
                instance,
                refused,
            } => self.on_dispatch_reply(placement, from, &instance, refused, now, reg),
            Message::Stop { instance, reason } => self.stop(&instance, reason),
            Message::Promote { instance } => self.promote(&instance),
            // Failure detection: answer the way the ping came; relay for others.
            Message::Ping { nonce, origin, via } => {
                let to = via.clone().unwrap_or_else(|| origin.clone());
                let target = self.id.clone();
                let msg = Message::Ack {
                    nonce,
                    target,
                    origin,
                };
                self.emit(Output::Send { to, msg });
            }
            Message::PingReq { target, nonce } => {
                let msg = Message::Ping {
                    nonce,
                    origin: from,
                    via: Some(self.id.clone()),
                };
                self.emit(Output::Send { to: target, msg });
            }
            Message::Ack {
                nonce,
                target,
                origin,
            } => {
                if origin == self.id {
                    self.emit(Output::Ack { target, nonce });
                } else {
                    let msg = Message::Ack {
                        nonce,
                        target,
                        origin: origin.clone(),
                    };
                    self.emit(Output::Send { to: origin, msg });
                }
            }
        }
    }

    fn emit(&mut self, o: Output) {
        self.out.push_back(o);
    }

    fn record(&mut self, e: Event) {
        self.out.push_back(Output::Record(e));
    }

    // ---- read access for shells and tests ------------------------------------------------------

    pub fn id(&self) -> &NodeId {
        &self.id
    }
    pub fn level(&self) -> u8 {
        self.level
    }
    pub fn capacity(&self) -> &Capacity {
        &self.capacity
    }
    pub fn committed(&self) -> &Committed {
        &self.committed
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// Instances this node hosts, by id.
    pub fn hosted(&self) -> &BTreeMap<InstanceId, Hosted> {
        &self.hosted
    }
    /// This node's failure memory.
    pub fn failures(&self) -> &FailureMemory {
        &self.failures
    }
    /// Restores failure memory saved before a restart: (service, load bucket, count).
    pub fn restore_failures(&mut self, entries: Vec<(ServiceName, u8, f64)>, now: Time) {
        for (service, bucket, count) in entries {
            self.failures.restore(service, bucket, count, now);
        }
    }
    pub fn is_draining(&self) -> bool {
        self.draining
    }
    /// The last sensor sample.
    pub fn load(&self) -> &Load {
        &self.load
    }
    /// What this node would offer for `demand` now, or why it would decline (for
    /// `qs nodes --explain`).
    pub fn offer_for(
        &self,
        demand: &qs_wire::Demand,
        now: Time,
        reg: &Registry,
    ) -> Result<qs_wire::Offer, qs_wire::DeclineReason> {
        self.evaluate(demand, None, now, reg)
    }
    /// Placements this node is driving as a steward.
    pub fn placements_in_flight(&self) -> usize {
        self.placements.len()
    }
}
