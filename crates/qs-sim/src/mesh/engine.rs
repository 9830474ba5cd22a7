//! The mesh simulator's event loop: one [`MeshNode`] per host, messages delayed by the WAN
//! model, agents that take their class's time to answer, all on a virtual clock and seeded.

use super::latency::Wan;
use super::{MeshReport, MeshSimConfig};
use qs_core::hash::{StableHasher, mix, of_str};
use qs_core::mesh::{
    CascadeCommand, Command, Hierarchy, Joined, Member, MeshConfig, MeshInput, MeshNode,
    MeshOutput, OpResult, Seniority, Shape, seniorities, seniority_in,
};
use qs_core::{Rng, Time};
use qs_wire::NodeId;
use qs_wire::mesh::{
    Ack, AgentBeat, AgentId, AgentState, ConflictDetail, Dispatch, ImpedanceClass, MeshMessage,
    OpId, Scope, Trinary, Verb,
};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::hash::Hasher;
use std::sync::Arc;
use std::time::Duration;

mod agents;
mod membership;
mod report;
mod restart;
use agents::{KINDS, processing};

/// A simulated agent: how it really behaves (the lead only measures it).
#[derive(Clone, Debug)]
pub struct SimAgent {
    pub id: AgentId,
    pub host: usize,
    /// Its kind, as the seed counts them (the class it is built as; its measured class may
    /// differ with its network).
    pub kind: ImpedanceClass,
    pub median_ms: f64,
    pub sigma: f64,
    pub down: bool,
    /// Its last processing time, as its host measured it (0: none yet).
    pub last_ms: f64,
    /// Dispatches it was handed.
    pub delivered: u32,
    /// What it answers an ask (its context hash).
    pub context: &'static str,
    /// When it registered with its host (0: before the run).
    pub joined_ms: u64,
}

/// Calibration broadcasts, from when, and when the scenario's own cascades may start.
pub const CALIBRATIONS: u64 = 6;
pub const CALIBRATE_FROM_MS: u64 = 2_000;
pub const READY_AT_MS: u64 = CALIBRATE_FROM_MS + CALIBRATIONS * 300 + 1_200;
/// How long a host that joins the running mesh is new, and leads only where no seasoned
/// host can ([`Seniority`]); shorter than a real agent's (the runs are seconds long), and
/// shorter than [`READY_AT_MS`], so a scale-out's hosts are not founders.
pub const LEAD_AFTER_MS: u64 = 3_000;

#[derive(Clone, Debug)]
enum Event {
    Deliver {
        to: usize,
        from: usize,
        msg: MeshMessage,
    },
    Wake(usize),
    Done {
        host: usize,
        ack: Ack,
        reply_to: NodeId,
    },
    Start(usize),
    Down,
    Kill(usize),
    Elect,
    /// A scale-out's hosts start.
    Join,
    /// Which of a scale-out's agents are in the routing pool.
    Sample,
    /// A crashed agent is up again (its host restarted it).
    Restart(usize),
    /// The durable store's watch: every live node reads the capability mapping a root
    /// stored.
    Rules(Vec<qs_wire::mesh::Exclusion>),
}

/// How long a write to the simulated durable store takes to reach every node's watch.
const STORE_MS: u64 = 5;

/// An event in the queue, ordered by time and then by the order it was pushed (so the run
/// is deterministic), boxed so the heap moves 24 bytes, not a message.
struct Queued {
    key: Reverse<(Time, u64)>,
    event: Box<Event>,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        self.key == o.key
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.key.cmp(&o.key)
    }
}

/// The simulator of one mesh.
pub struct MeshSim {
    pub nodes: Vec<MeshNode>,
    index: BTreeMap<NodeId, usize>,
    /// Each host's region.
    pub region: Vec<usize>,
    dead: Vec<bool>,
    /// When each host joined the mesh (0: before the run), for its [`Seniority`].
    since_ms: Vec<u64>,
    pub agents: Vec<SimAgent>,
    by_agent: BTreeMap<AgentId, usize>,
    host_agents: Vec<Vec<usize>>,
    members: Vec<Member>,
    wan: Wan,
    rng: Rng,
    now: Time,
    queue: BinaryHeap<Queued>,
    seq: u64,
    wake_at: Vec<Option<Time>>,
    woken_at: Vec<Option<Time>>,
    spins: Vec<u32>,
    trace: StableHasher,
    pub events: u64,
    pub messages: u64,
    pub lost: u64,
    pub beats: u64,
    received: Vec<u64>,
    killed_at: BTreeMap<usize, Time>,
    pub detection_ms: Vec<f64>,
    pub results: Vec<OpResult>,
    /// When each agent sent an operation was ready, milliseconds after the operation
    /// started at the root, by the number its envelope carried.
    pub ready_after_ms: BTreeMap<OpId, Vec<f64>>,
    pub refused: Vec<String>,
    pub queued: Vec<u64>,
    pub routed_around: u64,
    pub crashed: u64,
    pub mode_changes: Vec<super::ModeChange>,
    cascades: Vec<super::Cascade>,
    down_fraction: f64,
    restarts: restart::Restarts,
    pub tree: Arc<Hierarchy>,
    scale_out: Option<super::scale_out::Tracker>,
    /// The capability mapping a root stored (the durable store): a host that starts later
    /// reads it too, as a bucket's watch replays it.
    stored_rules: Option<Vec<qs_wire::mesh::Exclusion>>,
}

impl MeshSim {
    /// Builds the mesh of `cfg` (checked by the caller).
    pub fn new(cfg: &MeshSimConfig) -> MeshSim {
        let mut rng = Rng::seeded(cfg.seed);
        let base_hosts = cfg.hosts();
        // A scale-out's agents come on hosts of their own, as many per host as the rest.
        let extra_agents = cfg.scale_out.map_or(0, |s| s.agents);
        let extra_hosts = match extra_agents {
            0 => 0,
            n => n.div_ceil(cfg.agents.div_ceil(base_hosts)),
        };
        let hosts = base_hosts + extra_hosts;
        let width = hosts.saturating_sub(1).to_string().len().max(2);
        let ids: Vec<NodeId> = (0..hosts)
            .map(|i| NodeId::new(&format!("h{i:0width$}")).expect("generated names are valid"))
            .collect();
        let region: Vec<usize> = (0..hosts).map(|_| cfg.wan.pick_region(&mut rng)).collect();
        let zone = |host: usize| match cfg.zones {
            true => cfg.wan.region_name(region[host]),
            false => String::new(),
        };
        let total: u64 = KINDS.iter().map(|k| k.1).sum();
        let kind_of_host: Vec<ImpedanceClass> = (0..hosts)
            .map(|_| {
                let mut x = rng.below(total);
                for (k, w) in KINDS {
                    if x < w {
                        return k;
                    }
                    x -= w;
                }
                ImpedanceClass::A
            })
            .collect();
        let mut agents = Vec::with_capacity(cfg.agents + extra_agents);
        let mut host_agents = vec![Vec::new(); hosts];
        let mut members = Vec::with_capacity(cfg.agents + extra_agents);
        for i in 0..cfg.agents + extra_agents {
            let host = match i < cfg.agents {
                true => i % base_hosts,
                false => base_hosts + (i - cfg.agents) % extra_hosts,
            };
            let kind = kind_of_host[host];
            let (median_ms, sigma) = processing(kind);
            let id = AgentId(mix(cfg.seed ^ (i as u64).wrapping_mul(0x9e37_79b9)));
            let context = match rng.below(100) {
                0..=89 => "a1b2c3d4",
                90..=97 => "e5f6g7h8",
                _ => "0badc0de",
            };
            host_agents[host].push(agents.len());
            members.push(Member {
                agent: id,
                host: ids[host].clone(),
                zone: zone(host),
            });
            agents.push(SimAgent {
                id,
                host,
                kind,
                median_ms: median_ms * (0.8 + 0.4 * rng.unit()),
                sigma,
                down: false,
                last_ms: 0.0,
                delivered: 0,
                context,
                joined_ms: 0,
            });
        }
        // The scale-out's hosts are not up yet.
        let dead: Vec<bool> = (0..hosts).map(|h| h >= base_hosts).collect();
        let tree = Arc::new(
            Hierarchy::build(&members[..cfg.agents], Shape::default(), |_| {
                Seniority::Seasoned
            })
            .expect("validated: at most a million agents"),
        );
        let cfg_mesh = MeshConfig::default();
        let mut nodes = Vec::with_capacity(hosts);
        let mut index = BTreeMap::new();
        for (i, id) in ids.iter().enumerate() {
            // Hosts start over the first beat interval, not in lockstep.
            let start = Time::from_micros(rng.below(cfg_mesh.beat_ms * 1000));
            let mut n = MeshNode::new(id.clone(), cfg_mesh, start);
            n.handle(MeshInput::Tree(tree.clone()), start);
            index.insert(id.clone(), i);
            nodes.push(n);
        }
        let by_agent = agents.iter().enumerate().map(|(i, a)| (a.id, i)).collect();
        let mut sim = MeshSim {
            nodes,
            index,
            region,
            dead,
            since_ms: vec![0; hosts],
            agents,
            by_agent,
            host_agents,
            members,
            wan: cfg.wan.clone(),
            rng,
            now: Time::ZERO,
            queue: BinaryHeap::new(),
            seq: 0,
            wake_at: vec![None; hosts],
            woken_at: vec![None; hosts],
            spins: vec![0; hosts],
            trace: StableHasher::default(),
            events: 0,
            messages: 0,
            lost: 0,
            beats: 0,
            received: vec![0; hosts],
            killed_at: BTreeMap::new(),
            detection_ms: Vec::new(),
            results: Vec::new(),
            ready_after_ms: BTreeMap::new(),
            refused: Vec::new(),
            queued: Vec::new(),
            routed_around: 0,
            stored_rules: None,
            crashed: 0,
            mode_changes: Vec::new(),
            cascades: cfg.cascades.clone(),
            down_fraction: cfg.down_fraction,
            restarts: restart::Restarts::new(cfg.restart_ms),
            tree,
            scale_out: None,
        };
        if let Some(so) = cfg.scale_out {
            let new_hosts: Vec<usize> = (base_hosts..hosts).collect();
            let new_agents = sim.agents[cfg.agents..].iter().map(|a| a.id).collect();
            sim.scale_out = Some(super::scale_out::Tracker::new(
                so.at_ms, new_hosts, new_agents,
            ));
            sim.push(Time::from_millis(so.at_ms), Event::Join);
        }
        for i in 0..base_hosts {
            let beats = sim.beats_of(i);
            sim.nodes[i].handle(MeshInput::Agents(beats), Time::ZERO);
            sim.schedule_wake(i);
        }
        if cfg.calibrate {
            // Calibration: broadcasts with a generous budget, so every lead has measured
            // its agents before the first cascade (seed §10.2: profiles stabilize first).
            for k in 0..CALIBRATIONS {
                sim.cascades.push(super::Cascade {
                    at_ms: CALIBRATE_FROM_MS + k * 300,
                    mode: qs_wire::mesh::CascadeMode::Wave,
                    budget_ms: Some(1_000),
                    delegate: None,
                });
            }
        }
        for (i, c) in sim.cascades.clone().iter().enumerate() {
            sim.push(Time::from_millis(c.at_ms), Event::Start(i));
        }
        if cfg.down_fraction > 0.0 {
            sim.push(Time::from_millis(cfg.down_at_ms), Event::Down);
        }
        for k in &cfg.kill_hosts {
            if k.host < hosts {
                sim.push(Time::from_millis(k.at_ms), Event::Kill(k.host));
            }
        }
        sim
    }

    fn push(&mut self, at: Time, e: Event) {
        self.seq += 1;
        self.queue.push(Queued {
            key: Reverse((at, self.seq)),
            event: Box::new(e),
        });
    }

    fn schedule_wake(&mut self, i: usize) {
        if self.dead[i] {
            return;
        }
        let due = self.nodes[i].poll_timeout();
        // A node due again at the instant it just handled is a core bug (a deadline it
        // never clears); the run stops rather than spin.
        if due <= self.now && self.woken_at[i] == Some(self.now) {
            self.spins[i] += 1;
            assert!(
                self.spins[i] < 10_000,
                "node {i} is due again and again at {:?}: a deadline the core never clears",
                self.now
            );
        } else {
            self.spins[i] = 0;
        }
        let t = due.max(self.now);
        if self.wake_at[i].is_none_or(|w| t < w) {
            self.wake_at[i] = Some(t);
            self.push(t, Event::Wake(i));
        }
    }

    /// The nodes up now.
    pub fn live_nodes(&self) -> impl Iterator<Item = &MeshNode> {
        self.nodes
            .iter()
            .zip(&self.dead)
            .filter(|(_, d)| !**d)
            .map(|(n, _)| n)
    }

    /// The live nodes by the mode each holds (the root's own, the others' as its notices
    /// say).
    pub fn modes(&self) -> BTreeMap<&'static str, usize> {
        let mut by = BTreeMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if !self.dead[i] {
                *by.entry(n.mode().name()).or_insert(0) += 1;
            }
        }
        by
    }

    pub fn root(&self) -> Option<usize> {
        self.tree
            .root
            .as_ref()
            .and_then(|r| self.index.get(r).copied())
    }

    /// Runs until `until`.
    pub fn run_until(&mut self, until: Time) {
        while let Some(q) = self.queue.peek() {
            let Reverse((at, _)) = q.key;
            if at > until {
                break;
            }
            let q = self.queue.pop().expect("peeked");
            self.now = at;
            self.events += 1;
            self.step(*q.event);
        }
        self.now = until;
    }

    fn step(&mut self, e: Event) {
        let now = self.now;
        match e {
            Event::Wake(i) => {
                if self.wake_at[i] != Some(now) || self.dead[i] {
                    return;
                }
                self.wake_at[i] = None;
                self.woken_at[i] = Some(now);
                self.trace.write_u64(now.as_micros() ^ i as u64);
                self.nodes[i].handle(MeshInput::Tick, now);
                self.drain(i);
            }
            Event::Deliver { to, from, msg } => {
                if self.dead[to] {
                    return;
                }
                self.received[to] += 1;
                self.trace.write_u64(now.as_micros() ^ (to as u64) << 1);
                let from = self.nodes[from].id().clone();
                self.nodes[to].handle(MeshInput::Heard { from, msg }, now);
                self.drain(to);
            }
            Event::Done {
                host,
                ack,
                reply_to,
            } => {
                if self.dead[host] {
                    return;
                }
                self.trace.write_u64(ack.agent.0 ^ now.as_micros());
                self.nodes[host].handle(MeshInput::AgentDone { ack, reply_to }, now);
                self.drain(host);
            }
            Event::Start(k) => {
                let c = self.cascades[k];
                let Some(root) = self.root() else {
                    self.refused.push("no root".into());
                    return;
                };
                let (verb, payload) = match c.delegate {
                    Some(_) => (Verb::Act, "delegated task"),
                    None => (Verb::Sync, "context update"),
                };
                let mut env = self.nodes[root].envelope(verb, payload, 2, now);
                env.ttl_ms = 10_000;
                self.nodes[root].handle(
                    MeshInput::Command {
                        command: Command::Cascade(CascadeCommand {
                            sample: c.delegate.map(|_| 1),
                            budget_ms: c.budget_ms,
                            approved: true,
                            class: c.delegate.and_then(|d| d.class),
                            window_ms: c.delegate.map(|d| d.window_ms),
                            ..CascadeCommand::new(c.mode, Scope::Global, env)
                        }),
                        tag: k as u64,
                    },
                    now,
                );
                self.drain(root);
            }
            Event::Down => self.agents_down(),
            Event::Kill(h) => self.kill(h),
            Event::Join => self.join(),
            Event::Restart(a) => self.restart(a),
            Event::Sample => self.sample(),
            Event::Elect => self.elect(),
            Event::Rules(rules) => {
                for h in 0..self.nodes.len() {
                    if self.dead[h] {
                        continue;
                    }
                    self.nodes[h].handle(MeshInput::Rules(rules.clone()), now);
                    self.drain(h);
                }
            }
        }
    }

    fn drain(&mut self, i: usize) {
        let now = self.now;
        while let Some(out) = self.nodes[i].poll() {
            match out {
                MeshOutput::Send { to, msg } => {
                    let Some(&j) = self.index.get(&to) else {
                        continue;
                    };
                    self.messages += 1;
                    if matches!(msg, MeshMessage::Beat(_)) {
                        self.beats += 1;
                    }
                    let (a, b) = (self.region[i], self.region[j]);
                    match self.wan.one_way_ms(a, b, &mut self.rng) {
                        None => self.lost += 1,
                        Some(ms) => {
                            let at = now + Duration::from_micros((ms * 1000.0) as u64);
                            self.push(
                                at,
                                Event::Deliver {
                                    to: j,
                                    from: i,
                                    msg,
                                },
                            );
                        }
                    }
                }
                MeshOutput::Deliver(d) => self.agent_work(i, d),
                MeshOutput::Finished(r) => self.results.push(r),
                MeshOutput::Refused { error, .. } => self.refused.push(error.to_string()),
                MeshOutput::Queued(q) => self.queued.push(q.op.0),
                MeshOutput::RoutedAround(_) => self.routed_around += 1,
                MeshOutput::AgentCrashed(_) => self.crashed += 1,
                MeshOutput::Restart(r) => self.ask_restart(i, r),
                MeshOutput::HostLost { host, .. } => {
                    if let Some(&h) = self.index.get(&host)
                        && let Some(t) = self.killed_at.remove(&h)
                    {
                        self.detection_ms.push(now.since(t).as_secs_f64() * 1000.0);
                        // The mesh's verdict is the membership's: elect again now.
                        self.push(now, Event::Elect);
                    }
                }
                // The root's changes: every other node follows them (or lapses to FULL).
                MeshOutput::ModeChanged { from, to, .. } if Some(i) == self.root() => {
                    self.mode_changes.push(super::ModeChange {
                        at_ms: now.as_millis(),
                        from: from.name(),
                        to: to.name(),
                    });
                }
                MeshOutput::ModeChanged { .. }
                | MeshOutput::Quarantined(_)
                | MeshOutput::Conflict(_)
                | MeshOutput::ConflictResolved(_)
                | MeshOutput::ControlDone(_)
                | MeshOutput::Breaker(_) => {}
                // The simulated agents hold no durable tasks: none is said busy with one, so
                // no lead asks for one back.
                MeshOutput::Reassign(_) => {}
                // Stored (as in a KV bucket, a write's round trip later), then read back by
                // every node's watch.
                MeshOutput::Rules(rules) => {
                    self.stored_rules = Some(rules.clone());
                    self.push(now + Duration::from_millis(STORE_MS), Event::Rules(rules))
                }
            }
        }
        self.schedule_wake(i);
    }
}

/// Runs the scenario of `cfg`.
pub fn run(
    cfg: &MeshSimConfig,
    clock: crate::WallClock<'_>,
) -> Result<MeshReport, crate::SimConfigError> {
    cfg.validate()?;
    let t0 = clock();
    let mut sim = MeshSim::new(cfg);
    sim.run_until(Time::from_millis(cfg.duration_ms));
    let wall = clock() - t0;
    let mut report = sim.report(cfg, wall);
    report.ready_after_ms = std::mem::take(&mut sim.ready_after_ms);
    Ok(report)
}
