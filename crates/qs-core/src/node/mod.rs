//! One node's decisions, as a sans-IO state machine.
//!
//! A node plays two parts, each owning its state in its own file. As a [`Host`] it is what
//! runs here: it senses its load, answers capacity queries with offers, accepts or refuses
//! dispatches (late binding), judges its instances' health and restarts them. As a
//! [`Steward`] it reconciles the services it stewards: a pure planning pass ([`plan`]) per
//! service, then placements through the 5 steps ([`placement`]). [`Node`] composes the two
//! and routes each input. The shell feeds [`Input`]s with the current time and its
//! [`Registry`], then drains [`Output`]s with [`Node::poll`] and sleeps until
//! [`Node::poll_timeout`].

mod host;
mod inflight;
mod placement;
pub mod plan;
mod rtt;
mod steward;

use crate::config::Config;
use crate::failure::{FailureEntry, FailureMemory};
use crate::registry::Registry;
use crate::rng::Rng;
use crate::time::{Time, ms};
use qs_wire::{
    Capacity, Committed, DeclineReason, Event, ExitOutcome, InstanceId, InstanceLoad, Load,
    Message, NodeId, NodeSpec, NodeStatus, Resources, Role, ServiceName, SingletonClaim,
};
use std::collections::{BTreeMap, VecDeque};

pub use host::{Host, Hosted};
pub use steward::Steward;

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
    /// A probe of an instance's health came back (`Err`: why it failed); for an instance
    /// without a check, `Ok` once its process stayed up briefly. The host's verdict
    /// ([`crate::health::judge`]) decides what it means.
    Probe {
        instance: InstanceId,
        result: Result<(), String>,
    },
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
    /// service's key by compare-and-set if [`crate::claim::judge_record`] admits it; the
    /// answer comes back as [`Input::Claimed`].
    Claim {
        service: ServiceName,
        claim: SingletonClaim,
    },
    /// Keep this failure memory across restarts (it changed); give it back with
    /// [`Node::restore_failures`].
    SaveFailures(Vec<FailureEntry>),
}

/// Where a node's host and steward put their outputs, in order.
#[derive(Debug, Default)]
pub(crate) struct Outbox(VecDeque<Output>);

impl Outbox {
    pub(crate) fn emit(&mut self, o: Output) {
        self.0.push_back(o);
    }
    pub(crate) fn record(&mut self, e: Event) {
        self.0.push_back(Output::Record(e));
    }
}

/// What the steward's work needs of the rest of the node for one input: the host (for the
/// local check, a dispatch to itself and its own orders), the outbox, the registry and the
/// time.
pub(crate) struct Cx<'a> {
    pub host: &'a mut Host,
    pub out: &'a mut Outbox,
    pub reg: &'a Registry,
    pub now: Time,
}

/// See the module docs.
#[derive(Debug)]
pub struct Node {
    host: Host,
    steward: Steward,
    out: Outbox,
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
        Node {
            host: Host::new(spec, config.clone(), first_beat),
            steward: Steward::new(spec.id.clone(), config, rng, first_beat, now),
            out: Outbox::default(),
        }
    }

    /// Feeds one input. Outputs queue up for [`Node::poll`].
    pub fn handle(&mut self, input: Input, now: Time, reg: &Registry) {
        let Node { host, steward, out } = self;
        let cx = &mut Cx {
            host,
            out,
            reg,
            now,
        };
        match input {
            Input::Tick => {
                cx.host.on_tick(now, cx.out);
                if steward.reconcile_due(now) {
                    cx.host.stop_unwanted(reg, cx.out);
                    steward.reconcile(cx);
                }
                cx.host.restart_due(now, cx.out);
                steward.on_deadlines(cx);
            }
            Input::Sensed { load, instances } => cx.host.on_sensed(load, &instances, cx.out),
            Input::Message { from, msg } => on_message(steward, cx, from, msg),
            Input::Exited { instance, outcome } => cx.host.on_exit(&instance, outcome, now, cx.out),
            Input::Claimed {
                service,
                instance,
                result,
            } => steward.on_claimed(&service, &instance, result, cx),
            Input::Lost {
                instance,
                service,
                cpu_util,
                reason,
            } => cx
                .host
                .on_lost(instance, service, cpu_util, reason, now, cx.out),
            Input::Reconcile => {
                cx.host.stop_unwanted(reg, cx.out);
                steward.reconcile(cx);
            }
            Input::ReconcileService(service) => steward.reconcile_service(&service, cx),
            Input::ApprovePromotion { service } => steward.approve_promotion(&service, cx),
            Input::Drain(on) => cx.host.drain(on, cx.out),
            Input::Probe { instance, result } => {
                cx.host.on_probe(&instance, result, now, reg, cx.out)
            }
        }
        steward.reconcile_pending(cx);
    }

    /// The next output, if any. Call until `None` after every [`Node::handle`].
    pub fn poll(&mut self) -> Option<Output> {
        self.out.0.pop_front()
    }

    /// When the node next needs a [`Input::Tick`].
    pub fn poll_timeout(&self) -> Option<Time> {
        Some(self.host.deadline().min(self.steward.deadline()))
    }

    // ---- read access for shells and tests ------------------------------------------------------

    pub fn id(&self) -> &NodeId {
        self.host.id()
    }
    pub fn level(&self) -> u8 {
        self.host.level()
    }
    pub fn capacity(&self) -> &Capacity {
        self.host.capacity()
    }
    pub fn committed(&self) -> &Committed {
        self.host.committed()
    }
    pub fn config(&self) -> &Config {
        &self.steward.config
    }
    /// Instances this node hosts, by id.
    pub fn hosted(&self) -> &BTreeMap<InstanceId, Hosted> {
        self.host.hosted()
    }
    /// This node's failure memory.
    pub fn failures(&self) -> &FailureMemory {
        self.host.failures()
    }
    /// Takes what this node's certificate grants (see [`Host::grant`]).
    pub fn grant(&mut self, capabilities: std::collections::BTreeSet<qs_wire::trust::Capability>) {
        self.host.grant(capabilities);
    }
    /// Restores failure memory saved before a restart ([`Output::SaveFailures`]).
    pub fn restore_failures(&mut self, entries: Vec<FailureEntry>, now: Time) {
        self.host.restore_failures(entries, now);
    }
    pub fn is_draining(&self) -> bool {
        self.host.is_draining()
    }
    /// The last sensor sample.
    pub fn load(&self) -> &Load {
        self.host.load()
    }
    /// This node's failure pressure for a service at its current load.
    pub fn pressure(&self, service: &ServiceName, now: Time) -> f64 {
        self.host.pressure(service, now)
    }
    /// The heartbeat: this node as others should see it.
    pub fn status(&mut self, now: Time) -> NodeStatus {
        self.host.status(now)
    }
    /// What this node would offer for `demand` now, or why it would decline (for
    /// `qs nodes --explain`).
    pub fn offer_for(
        &self,
        demand: &qs_wire::Demand,
        now: Time,
        reg: &Registry,
    ) -> Result<qs_wire::Offer, qs_wire::DeclineReason> {
        self.host.evaluate(demand, None, now, reg)
    }
    /// Placements this node is driving as a steward.
    pub fn placements_in_flight(&self) -> usize {
        self.steward.placements_in_flight()
    }
}

/// Whether `from` may order `order` for `instance` of `service`: only the node this one
/// believes stewards the service (or did, within the grace window), and only for a service
/// whose spec is here. Its demand, from that spec; a refusal is recorded.
fn authorize(
    cx: &mut Cx<'_>,
    from: &NodeId,
    order: &str,
    instance: &InstanceId,
    service: Option<&ServiceName>,
) -> Result<qs_wire::Demand, DeclineReason> {
    let spec = service.and_then(|s| cx.reg.spec(s));
    let verdict = match (spec, service) {
        (Some(spec), Some(s)) if cx.reg.may_steward(s, from, cx.now) => {
            return Ok(qs_wire::Demand::of(spec));
        }
        (Some(_), _) => DeclineReason::NotSteward,
        (None, _) => DeclineReason::UnknownService,
    };
    cx.out.record(Event::OrderRefused {
        from: from.clone(),
        order: order.to_owned(),
        instance: instance.clone(),
        service: service.cloned(),
        reason: verdict.clone(),
    });
    Err(verdict)
}

/// Routes a message from another node: the host answers queries, dispatches and orders, the
/// steward takes answers to its own placements, and failure-detection pings are relayed.
fn on_message(steward: &mut Steward, cx: &mut Cx<'_>, from: NodeId, msg: Message) {
    let (now, reg) = (cx.now, cx.reg);
    let id = cx.host.id().clone();
    match msg {
        // Heartbeats go to the registry, which the shell owns.
        Message::Heartbeat(_) => {}
        Message::CapacityQuery { placement, demand } => {
            let reply = match cx.host.evaluate(&demand, None, now, reg) {
                Ok(offer) => Message::Offer { placement, offer },
                Err(reason) => Message::Decline { placement, reason },
            };
            cx.out.emit(Output::Send {
                to: from,
                msg: reply,
            });
        }
        Message::Offer { placement, offer } => steward.on_answer(placement, from, Ok(offer), cx),
        Message::Decline { placement, reason } => {
            steward.on_answer(placement, from, Err(reason), cx)
        }
        Message::Dispatch {
            placement,
            instance,
            demand,
            role,
            fencing,
        } => {
            // What runs is what the spec held here says, never what the message carries.
            let refused = match authorize(cx, &from, "dispatch", &instance, Some(&demand.service)) {
                Ok(spec) => cx
                    .host
                    .accept_dispatch(&instance, &spec, role, fencing, now, reg, cx.out)
                    .err(),
                Err(reason) => Some(reason),
            };
            let msg = Message::DispatchReply {
                placement,
                instance,
                refused,
            };
            cx.out.emit(Output::Send { to: from, msg });
        }
        Message::DispatchReply {
            placement,
            instance,
            refused,
        } => steward.on_dispatch_reply(placement, from, &instance, refused, cx),
        order @ (Message::Stop { .. } | Message::Promote { .. }) => {
            let instance = match &order {
                Message::Stop { instance, .. } | Message::Promote { instance } => instance.clone(),
                _ => return,
            };
            // An instance not hosted here needs no order: stopping it is done already.
            let Some(service) = cx.host.service_of(&instance).cloned() else {
                return;
            };
            if authorize(cx, &from, order.kind(), &instance, Some(&service)).is_ok() {
                cx.host.obey(order, cx.out);
            }
        }
        // Failure detection: answer the way the ping came; relay for others.
        Message::Ping { nonce, origin, via } => {
            let to = via.clone().unwrap_or_else(|| origin.clone());
            let msg = Message::Ack {
                nonce,
                target: id,
                origin,
            };
            cx.out.emit(Output::Send { to, msg });
        }
        Message::PingReq { target, nonce } => {
            let msg = Message::Ping {
                nonce,
                origin: from,
                via: Some(id),
            };
            cx.out.emit(Output::Send { to: target, msg });
        }
        Message::Ack {
            nonce,
            target,
            origin,
        } => {
            if origin == id {
                cx.out.emit(Output::Ack { target, nonce });
            } else {
                let msg = Message::Ack {
                    nonce,
                    target,
                    origin: origin.clone(),
                };
                cx.out.emit(Output::Send { to: origin, msg });
            }
        }
    }
}
