//! The event loop: nodes, a shared registry, a simulated network and executor, a fault
//! schedule, the trace hash and the invariant checks.

mod faults;
mod invariants;
mod observe;
mod outputs;

use crate::net::Network;
use hdrhistogram::Histogram;
use qs_core::hash::{StableHasher, mix, of_str};
use qs_core::{
    Config, Detector, DetectorInput, DetectorOutput, FleetChange, Input, Node, Notice, Output,
    Recipients, Registry, Rng, Time,
};
use qs_wire::{
    ExitOutcome, InstanceId, Message, NodeId, NodeSpec, Record, Resources, ServiceName,
    WorkloadKind, WorkloadSpec,
};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::hash::Hasher;

/// How often the simulated registry looks for silent nodes.
const EXPIRE_EVERY_US: u64 = 50_000;
/// The simulated sensor's delay after a change on its node.
const SENSE_DELAY_US: u64 = 10_000;
/// The simulated executor: graceful stop time, and time until a failing start is noticed.
const STOP_GRACE_US: u64 = 20_000;
const START_FAIL_US: u64 = 5_000;
/// Violations kept in full; later ones are only counted.
const MAX_VIOLATIONS_KEPT: usize = 16;

/// Something the scenario does at a given time. Scheduled once each, then boxed in the
/// queue, so a large spec costs nothing per event.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Action {
    /// The operator applies a spec.
    Apply(WorkloadSpec),
    /// The operator deletes a spec.
    Remove(ServiceName),
    /// One instance of the service burns `util` of its requested CPU for `for_ms`.
    Spike {
        service: ServiceName,
        util: f64,
        for_ms: u64,
    },
    /// Load from outside our instances on a node.
    Background { node: NodeId, cpu_util: f64 },
    /// The node dies at once (power cut, kill -9 of everything).
    Kill(NodeId),
    /// One instance of the service crashes.
    Crash(ServiceName),
    /// Every `start` on this node fails from now on (a broken binary, a bad driver).
    BreakStarts(NodeId),
    /// The operator approves a primary move.
    ApprovePromotion(ServiceName),
    /// The operator drains a node: it takes no new work and its instances move away.
    Drain(NodeId),
}

/// A broken invariant: what, when, and where.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("at {at_us} us: {what}")]
pub struct Violation {
    pub at_us: u64,
    pub what: String,
}

/// Running totals of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub events: u64,
    pub messages: u64,
    pub placed: u64,
    pub placed_locally: u64,
    pub gave_up: u64,
    pub dispatch_refused: u64,
    pub starts: u64,
    pub failures: u64,
    pub kills: u64,
    /// Every invariant violation, including those past the kept few.
    pub violations: u64,
}

/// Queued events stay small (payloads boxed) so the heap moves little memory.
enum Ev {
    Wake(usize),
    Deliver {
        to: usize,
        from: NodeId,
        msg: Box<Message>,
    },
    Local {
        to: usize,
        input: Box<Input>,
    },
    Observe(Box<qs_wire::NodeStatus>),
    Exit {
        node: usize,
        instance: InstanceId,
        outcome: ExitOutcome,
    },
    Sense(usize),
    Calm {
        node: usize,
        instance: InstanceId,
    },
    Expire,
    Act(Box<Action>),
    /// A node takes what its notice gathered (as the agent's runtimes take their inboxes).
    Notice(usize),
    /// Every live node takes the notice posted to every node.
    NoticeEvery,
}

struct Scheduled {
    at: Time,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

struct Proc {
    need: Resources,
    gpu: Option<u32>,
    util: f64,
}

struct SimNode {
    core: Node,
    alive: bool,
    wake: Option<Time>,
    site: u64,
    background: f64,
    broken_starts: bool,
    /// A sensor sample is already scheduled (samples coalesce, like a periodic sensor).
    sense_pending: bool,
    /// What the node must reconcile, coalesced until it takes it.
    notice: Notice,
    procs: BTreeMap<InstanceId, Proc>,
}

/// See the module docs.
pub struct Sim {
    now: Time,
    nodes: Vec<SimNode>,
    index: BTreeMap<NodeId, usize>,
    registry: Registry,
    /// The failure detector, run by one live node (the registry is one shared replica, so
    /// one detector stands for the fleet's), and that node's index.
    detector: Option<(usize, Detector)>,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    rng: Rng,
    net: Network,
    config: Config,
    trace: StableHasher,
    record_seq: u64,
    keep_records: bool,
    records: Vec<Record>,
    check: bool,
    violations: Vec<Violation>,
    latency_us: Histogram<u64>,
    counters: Counters,
    /// How long a job instance runs, per job.
    job_ms: BTreeMap<ServiceName, u64>,
    /// The `instances` KV's singleton records (compare-and-set is atomic in one process).
    claims: BTreeMap<ServiceName, qs_wire::SingletonClaim>,
    /// What every node must reconcile, gathered until it is delivered.
    notice_every: Option<Notice>,
}

impl Sim {
    /// A fleet of `nodes` spread over `sites`, all started at time zero.
    pub fn new(nodes: &[NodeSpec], sites: u64, config: Config, net: Network, seed: u64) -> Sim {
        let mut rng = Rng::seeded(seed);
        let mut sim_nodes = Vec::with_capacity(nodes.len());
        let mut index = BTreeMap::new();
        for (i, spec) in nodes.iter().enumerate() {
            index.insert(spec.id.clone(), i);
            sim_nodes.push(SimNode {
                core: Node::new(spec, config.clone(), rng.next_u64(), Time::ZERO),
                alive: true,
                wake: None,
                site: mix(of_str(spec.id.as_str())) % sites.max(1),
                background: 0.0,
                broken_starts: false,
                sense_pending: false,
                notice: Notice::default(),
                procs: BTreeMap::new(),
            });
        }
        let mut sim = Sim {
            now: Time::ZERO,
            nodes: sim_nodes,
            index,
            registry: Registry::new(&config),
            detector: None,
            queue: BinaryHeap::new(),
            seq: 0,
            rng,
            net,
            config,
            trace: StableHasher::default(),
            record_seq: 0,
            keep_records: false,
            records: Vec::new(),
            check: false,
            violations: Vec::new(),
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("one hour in microseconds at 3 significant figures is a valid range"),
            counters: Counters::default(),
            job_ms: BTreeMap::new(),
            claims: BTreeMap::new(),
            notice_every: None,
        };
        for i in 0..sim.nodes.len() {
            sim.reschedule(i);
        }
        sim.push(Time::from_micros(EXPIRE_EVERY_US), Ev::Expire);
        sim
    }

    /// Keep every ledger record in memory (tests; large runs only hash them).
    pub fn keep_records(&mut self, on: bool) {
        self.keep_records = on;
    }

    /// Check the invariants after every event (costs O(nodes) per event: small fleets).
    pub fn check_invariants(&mut self, on: bool) {
        self.check = on;
    }

    /// Jobs of this name run this long once started.
    pub fn set_job_duration(&mut self, job: ServiceName, ms: u64) {
        self.job_ms.insert(job, ms);
    }

    pub fn schedule(&mut self, at: Time, action: Action) {
        self.push(at, Ev::Act(Box::new(action)));
    }

    fn push(&mut self, at: Time, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at: at.max(self.now),
            seq: self.seq,
            ev,
        }));
    }

    /// Runs every event up to and including `until`.
    pub fn run_until(&mut self, until: Time) {
        while self.queue.peek().is_some_and(|Reverse(s)| s.at <= until) {
            self.step();
        }
        self.now = self.now.max(until);
    }

    /// Runs until `done` holds (checked after each event) or `until`; true if `done` held.
    pub fn run_while_not(&mut self, until: Time, mut done: impl FnMut(&Sim) -> bool) -> bool {
        while !done(self) {
            if self.queue.peek().is_none_or(|Reverse(s)| s.at > until) {
                return false;
            }
            self.step();
        }
        true
    }

    fn step(&mut self) {
        let Some(Reverse(s)) = self.queue.pop() else {
            return;
        };
        self.now = s.at;
        self.counters.events += 1;
        let touched = self.dispatch(s.ev);
        if let Some(i) = touched {
            self.drain(i);
            self.reschedule(i);
        }
        if self.check {
            self.check_all();
        }
    }

    /// Handles one event; returns the node whose outputs must be drained.
    fn dispatch(&mut self, ev: Ev) -> Option<usize> {
        let now = self.now;
        match ev {
            Ev::Wake(i) => {
                let n = &mut self.nodes[i];
                if !n.alive || n.wake != Some(now) {
                    return None; // stale or dead
                }
                n.wake = None;
                n.core.handle(Input::Tick, now, &self.registry);
                Some(i)
            }
            Ev::Deliver { to, from, msg } => self.input(to, Input::Message { from, msg: *msg }),
            Ev::Local { to, input } => self.input(to, *input),
            Ev::Observe(status) => {
                if self
                    .index
                    .get(&status.node)
                    .is_some_and(|&i| self.nodes[i].alive)
                {
                    let node = status.node.clone();
                    if self.registry.observe(*status, now).is_some() {
                        self.changed(FleetChange::Joined(node));
                    }
                }
                None
            }
            Ev::Exit {
                node,
                instance,
                outcome,
            } => {
                if !self.nodes[node].alive || self.nodes[node].procs.remove(&instance).is_none() {
                    return None;
                }
                if outcome.is_failure() {
                    self.counters.failures += 1;
                }
                self.sense_soon(node);
                self.input(node, Input::Exited { instance, outcome })
            }
            Ev::Sense(i) => {
                self.nodes[i].sense_pending = false;
                if !self.nodes[i].alive {
                    return None;
                }
                let (load, instances) = self.sense(i);
                self.input(i, Input::Sensed { load, instances })
            }
            Ev::Calm { node, instance } => {
                if let Some(p) = self.nodes[node].procs.get_mut(&instance) {
                    p.util = 0.4;
                    self.sense_soon(node);
                }
                None
            }
            Ev::Expire => {
                for dead in self.registry.expire(now) {
                    self.changed(FleetChange::Died(dead.node));
                }
                self.detect(DetectorInput::Tick);
                self.push(now + micros(EXPIRE_EVERY_US), Ev::Expire);
                None
            }
            Ev::Act(action) => {
                self.act(*action);
                None
            }
            Ev::NoticeEvery => {
                let notice = self.notice_every.take()?;
                for i in 0..self.nodes.len() {
                    if !self.nodes[i].alive {
                        continue;
                    }
                    for input in notice.clone().into_inputs() {
                        self.nodes[i].core.handle(input, now, &self.registry);
                    }
                    self.drain(i);
                    self.reschedule(i);
                }
                None
            }
            Ev::Notice(i) => {
                let notice = std::mem::take(&mut self.nodes[i].notice);
                if !self.nodes[i].alive || notice.is_empty() {
                    return None;
                }
                let reg = &self.registry;
                let core = &mut self.nodes[i].core;
                for input in notice.into_inputs() {
                    core.handle(input, now, reg);
                }
                Some(i)
            }
        }
    }

    fn input(&mut self, i: usize, input: Input) -> Option<usize> {
        let n = &mut self.nodes[i];
        if !n.alive {
            return None;
        }
        n.core.handle(input, self.now, &self.registry);
        Some(i)
    }

    /// One running instance of a service (the first by id), with the node that runs it.
    fn running_instance_of(&self, service: &ServiceName) -> Option<(usize, InstanceId)> {
        self.registry.instances_of(service).find_map(|(id, r)| {
            let i = *self.index.get(&r.node)?;
            self.nodes[i]
                .procs
                .contains_key(id)
                .then(|| (i, id.clone()))
        })
    }

    /// Schedules a sensor sample of node `i` unless one is already on its way.
    fn sense_soon(&mut self, i: usize) {
        if !self.nodes[i].sense_pending {
            self.nodes[i].sense_pending = true;
            self.push(self.now + micros(SENSE_DELAY_US), Ev::Sense(i));
        }
    }

    /// A change of the registry (already applied): the core says who must reconcile what,
    /// and each recipient's notice gathers it until the node takes it, a KV delay later.
    fn changed(&mut self, change: FleetChange) {
        let Some(caused) = qs_core::caused_by(&change, &self.registry) else {
            return;
        };
        match caused.to {
            // One delivery for the whole fleet: posting to 30,000 notices per join would cost
            // more than the joins.
            Recipients::Every => match &mut self.notice_every {
                Some(pending) => pending.merge(caused.notice),
                None => {
                    self.notice_every = Some(caused.notice);
                    self.push(self.now + micros(self.net.kv_us), Ev::NoticeEvery);
                }
            },
            Recipients::Node(node) => {
                if let Some(&i) = self.index.get(&node) {
                    self.post(i, caused.notice);
                }
            }
        }
    }

    fn post(&mut self, i: usize, notice: Notice) {
        if !self.nodes[i].alive {
            return;
        }
        let first = self.nodes[i].notice.is_empty();
        self.nodes[i].notice.merge(notice);
        if first {
            self.push(self.now + micros(self.net.kv_us), Ev::Notice(i));
        }
    }

    /// Feeds the failure detector (moving it to a live node if its own died) and carries out
    /// what it asks.
    fn detect(&mut self, input: DetectorInput) {
        let now = self.now;
        if self
            .detector
            .as_ref()
            .is_none_or(|(i, _)| !self.nodes[*i].alive)
        {
            let Some(i) = self.nodes.iter().position(|n| n.alive) else {
                self.detector = None;
                return;
            };
            let me = self.nodes[i].core.id().clone();
            self.detector = Some((i, Detector::new(me, &self.config, self.rng.next_u64())));
        }
        let Some((me, mut detector)) = self.detector.take() else {
            return;
        };
        detector.handle(input, now, &self.registry, |_| false);
        while let Some(out) = detector.poll() {
            match out {
                DetectorOutput::Send { to, msg } => self.send(me, to, *msg),
                DetectorOutput::Alive(node) => self.registry.vouch(&node, now),
                DetectorOutput::Dead(node) => {
                    if self.registry.remove(&node) {
                        self.changed(FleetChange::Died(node));
                    }
                }
            }
        }
        self.detector = Some((me, detector));
    }

    /// A message from node `i` on its way through the simulated network.
    fn send(&mut self, i: usize, to: NodeId, msg: Message) {
        let Some(&j) = self.index.get(&to) else {
            return;
        };
        self.counters.messages += 1;
        let (a, b) = (self.nodes[i].site, self.nodes[j].site);
        let link = mix(of_str(self.nodes[i].core.id().as_str()) ^ of_str(to.as_str()));
        let lat = self.net.latency_us(link, a == b, &mut self.rng);
        let from = self.nodes[i].core.id().clone();
        let msg = Box::new(msg);
        self.push(self.now + micros(lat), Ev::Deliver { to: j, from, msg });
    }

    fn reschedule(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if !n.alive {
            return;
        }
        let Some(t) = n.core.poll_timeout() else {
            return;
        };
        let t = t.max(self.now);
        if n.wake.is_some_and(|w| w <= t) {
            return; // an earlier wake is already queued; it will reschedule
        }
        n.wake = Some(t);
        self.push(t, Ev::Wake(i));
    }

    fn violate(&mut self, what: String) {
        self.counters.violations += 1;
        if self.violations.len() >= MAX_VIOLATIONS_KEPT {
            return;
        }
        self.violations.push(Violation {
            at_us: self.now.as_micros(),
            what,
        });
    }

    // ---- results -----------------------------------------------------------------------------

    pub fn now(&self) -> Time {
        self.now
    }
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
    pub fn node(&self, id: &NodeId) -> Option<&Node> {
        self.index.get(id).map(|&i| &self.nodes[i].core)
    }
    pub fn is_alive(&self, id: &NodeId) -> bool {
        self.index.get(id).is_some_and(|&i| self.nodes[i].alive)
    }
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().map(|n| &n.core)
    }
    pub fn records(&self) -> &[Record] {
        &self.records
    }
    /// Takes the records kept so far (to stream them out in slices).
    pub fn take_records(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.records)
    }
    /// The first few violations (all of them are counted in [`Counters::violations`]).
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
    /// Placement latency (sense to placed), microseconds.
    pub fn latency(&self) -> &Histogram<u64> {
        &self.latency_us
    }
    /// Hash of every ledger record so far, in order: equal hashes, equal runs.
    pub fn trace_hash(&self) -> u64 {
        self.trace.finish()
    }
}

fn micros(us: u64) -> std::time::Duration {
    std::time::Duration::from_micros(us)
}
