//! This node's mesh agents (seed 001): the built-in ones (`--mesh-agents N`), and the workers
//! of the worker protocol that joined the mesh (`mesh-join`, with their capabilities).
//!
//! A worker agent's id is a stable hash of `node/worker/NAME`, so a worker that reconnects
//! under its name keeps its place in the hierarchy; two connections may not join under one
//! name at once. What the cluster lead dispatches to a worker agent waits in its mailbox (at
//! most [`MAX_MAILBOX`]; past that it is dropped and counted, and the lead sees silence)
//! until the worker asks for it (`mesh-poll`); an envelope past its time to live is dropped
//! there and counted. The worker answers each operation once (`mesh-answer`: READY, or
//! CONFLICT with what conflicts), and its answer goes to whom the dispatch names, like a
//! built-in agent's. Joining and leaving bump a version the mesh task watches: it tells the
//! core the node's agents again and rewrites the node's entry of the `mesh` bucket.

use crate::clock::now;
use qs_core::hash::of_str;
use qs_core::mesh::content_hash;
use qs_wire::mesh::{
    Ack, AgentBeat, AgentId, AgentState, Busy, ConflictDetail, Dispatch, MeshEnvelope, OpId,
    Trinary, Verb, check_capabilities, wire_name,
};
use qs_wire::{NodeId, TaskId};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};

/// Workers joined to the mesh on one node, at most (as many as the worker protocol serves).
pub const MAX_WORKER_AGENTS: usize = 1_024;
/// Built-in agents on one node, at most (`qs agent --mesh-agents`): with its workers, no
/// more than a node's record in the `mesh` bucket holds.
pub const MAX_BUILTIN_AGENTS: usize = 2_048;
const _: () = assert!(MAX_BUILTIN_AGENTS + MAX_WORKER_AGENTS <= qs_wire::mesh::MAX_NODE_AGENTS);
/// Dispatches waiting for one worker agent, at most.
pub const MAX_MAILBOX: usize = 256;
/// Operations a worker agent has taken and not answered, at most (the oldest is forgotten).
const MAX_UNANSWERED: usize = 1_024;
/// Answers of local agents waiting for the mesh task, at most.
const MAX_ANSWERS: usize = 65_536;
/// A worker agent that has not asked for work this long, is not waiting for some, and works
/// on no operation still live (one it took whose envelope has not expired: a long task is
/// work, not silence) is beaten as offline: its lead routes around it.
pub const SILENT_AFTER_MS: u64 = 5_000;

/// The built-in agents of this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshOptions {
    pub agents: u32,
    pub processing_ms: u64,
    /// What each answers an ask with.
    pub context: String,
    /// How long an agent that joined lately settles before this node, as its lead, routes
    /// to it (seed §10.2).
    pub settle_ms: u64,
    /// This node's zone (checked by `qs_wire::mesh::check_zone`): the hierarchy keeps
    /// clusters and sectors within one. Empty: none.
    pub zone: String,
    /// How long this node is in the mesh before it may lead a cluster (seed §10.2: nodes
    /// join the routing pool gradually), unless it founded the mesh.
    pub lead_after_ms: u64,
}

impl Default for MeshOptions {
    fn default() -> Self {
        MeshOptions {
            agents: 0,
            processing_ms: 5,
            context: "a1b2c3d4".into(),
            settle_ms: qs_core::mesh::integration::IntegrationConfig::default().settle_ms,
            zone: String::new(),
            lead_after_ms: qs_core::mesh::seniority::LEAD_AFTER_MS,
        }
    }
}

/// A built-in agent's id: a stable hash of its host and name.
pub fn agent_id(node: &NodeId, index: u32) -> AgentId {
    AgentId(of_str(&format!("{node}/agent-{index}")))
}

/// A worker agent's id: a stable hash of its host and the name it joined under.
pub fn worker_agent_id(node: &NodeId, name: &str) -> AgentId {
    AgentId(of_str(&format!("{node}/worker/{name}")))
}

/// An answer of a local agent, for the mesh task to send on.
pub struct Answered {
    pub ack: Ack,
    pub reply_to: NodeId,
}

/// What a worker agent answers for one operation.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerAnswer {
    pub op: OpId,
    pub state: Trinary,
    pub answer: String,
    pub conflict: Option<ConflictDetail>,
}

/// This node's agents: the built-in ones and the workers that joined.
pub struct LocalAgents {
    node: NodeId,
    builtin: MeshOptions,
    /// The built-in agents, and what their beats say (all of it fixed at start).
    builtin_ids: BTreeSet<AgentId>,
    builtin_beats: Vec<AgentBeat>,
    workers: Mutex<BTreeMap<AgentId, WorkerAgent>>,
    version: watch::Sender<u64>,
    answers: mpsc::Sender<Answered>,
    /// Dispatches dropped: a full mailbox, or expired before the worker took them.
    pub dropped: AtomicU64,
    pub expired: AtomicU64,
}

/// What the mesh may tell a worker agent's connection while it waits for the worker's next
/// frame.
#[derive(Clone, Debug)]
pub struct Told {
    /// Its lead took it for crashed: its connection is closed, for its supervisor to start
    /// it again.
    pub evict: Arc<Notify>,
    /// An operator took its task from it (seed §7.2's "reassign the task"): the task goes
    /// back to the queue, for another worker.
    pub reassign: Arc<Notify>,
}

struct WorkerAgent {
    capabilities: Vec<String>,
    mailbox: VecDeque<Dispatch>,
    notify: Arc<Notify>,
    told: Told,
    /// Taken and not yet answered, by operation.
    taken: BTreeMap<OpId, Taken>,
    /// The mean of its processing times so far (the beat's hint; the lead measures its own).
    processing_ms: f64,
    answered: u64,
    /// When it joined, Unix milliseconds.
    joined_ms: u64,
    /// When it last asked for work or answered, and whether it waits for work now.
    seen_ms: u64,
    polling: bool,
    /// The task of the task protocol it holds, if any, as its beats say it.
    task: Option<Busy>,
    /// The task an operator's reassignment asked back, until its connection takes it.
    give_back: Option<TaskId>,
}

impl WorkerAgent {
    /// Whether it serves at `now_ms`: it waits for work, was seen lately, or works on an
    /// operation still live (else its beats say offline).
    fn serving(&self, now_ms: u64) -> bool {
        let working = self
            .taken
            .values()
            .any(|t| !t.dispatch.envelope.expired(now_ms));
        self.polling || working || now_ms.saturating_sub(self.seen_ms) <= SILENT_AFTER_MS
    }

    /// What it works on at `now_ms`: the task it holds, else the operation it took first and
    /// has not answered, while that lives (a readiness probe is no work).
    fn busy(&self, now_ms: u64) -> Option<Busy> {
        if let Some(task) = &self.task {
            return Some(task.clone());
        }
        let work = self.taken.values().filter(|t| {
            let e = &t.dispatch.envelope;
            e.verb != Verb::Probe && !e.expired(now_ms)
        });
        let first = work.min_by_key(|t| t.arrived_ms)?;
        let envelope = &first.dispatch.envelope;
        let verb = wire_name(&envelope.verb);
        Some(Busy::of(&verb, &envelope.payload, "", first.arrived_ms))
    }
}

struct Taken {
    dispatch: Dispatch,
    arrived_ms: u64,
}

impl LocalAgents {
    /// The node's agents, and the end the mesh task reads their answers from.
    pub fn new(node: NodeId, builtin: MeshOptions) -> (Arc<LocalAgents>, mpsc::Receiver<Answered>) {
        let (answers, rx) = mpsc::channel(MAX_ANSWERS);
        // The built-in agents registered when this process started.
        let started_ms = now().as_millis();
        let builtin_beats: Vec<AgentBeat> = (0..builtin.agents)
            .map(|i| AgentBeat {
                agent: agent_id(&node, i),
                state: AgentState::Active,
                processing_ms: builtin.processing_ms as f64,
                queue_depth: 0,
                capabilities: Vec::new(),
                joined_ms: started_ms,
                busy: None,
            })
            .collect();
        let agents = LocalAgents {
            node,
            builtin,
            builtin_ids: builtin_beats.iter().map(|b| b.agent).collect(),
            builtin_beats,
            workers: Mutex::new(BTreeMap::new()),
            version: watch::channel(0).0,
            answers,
            dropped: AtomicU64::new(0),
            expired: AtomicU64::new(0),
        };
        (Arc::new(agents), rx)
    }

    /// The options of the built-in agents and of this node's mesh.
    pub fn options(&self) -> &MeshOptions {
        &self.builtin
    }

    /// Bumped whenever an agent joins or leaves.
    pub fn versions(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn workers(&self) -> std::sync::MutexGuard<'_, BTreeMap<AgentId, WorkerAgent>> {
        self.workers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every agent here, built-in ones first.
    pub fn ids(&self) -> Vec<AgentId> {
        let mut ids: Vec<AgentId> = self.builtin_beats.iter().map(|b| b.agent).collect();
        ids.extend(self.workers().keys());
        ids
    }

    pub fn count(&self) -> u32 {
        (self.builtin_beats.len() + self.workers().len()) as u32
    }

    /// Whether a worker is joined: only then do beats change between joins.
    pub fn has_workers(&self) -> bool {
        !self.workers().is_empty()
    }

    /// What the core is told of this node's agents.
    pub fn beats(&self) -> Vec<AgentBeat> {
        self.beats_at(now().as_millis())
    }

    /// What the core is told of this node's agents at `now_ms`.
    fn beats_at(&self, now_ms: u64) -> Vec<AgentBeat> {
        let mut beats = self.builtin_beats.clone();
        beats.extend(self.workers().iter().map(|(a, w)| AgentBeat {
            agent: *a,
            state: match w.serving(now_ms) {
                true => AgentState::Active,
                false => AgentState::Offline,
            },
            processing_ms: w.processing_ms,
            queue_depth: (w.mailbox.len() + w.taken.len()) as u32,
            capabilities: w.capabilities.clone(),
            joined_ms: w.joined_ms,
            busy: w.busy(now_ms),
        }));
        beats
    }

    /// A worker joins the mesh under `name` with `capabilities`.
    pub fn join(&self, name: &str, capabilities: Vec<String>) -> Result<AgentId, String> {
        check_capabilities(&capabilities)?;
        let id = worker_agent_id(&self.node, name);
        {
            let mut workers = self.workers();
            if workers.contains_key(&id) || self.builtin_ids.contains(&id) {
                return Err(format!(
                    "a mesh agent named {name:?} is already joined on this node"
                ));
            }
            if workers.len() >= MAX_WORKER_AGENTS {
                return Err(format!(
                    "this node has {MAX_WORKER_AGENTS} mesh agents already"
                ));
            }
            workers.insert(
                id,
                WorkerAgent {
                    capabilities,
                    mailbox: VecDeque::new(),
                    notify: Arc::new(Notify::new()),
                    told: Told {
                        evict: Arc::new(Notify::new()),
                        reassign: Arc::new(Notify::new()),
                    },
                    taken: BTreeMap::new(),
                    processing_ms: 0.0,
                    answered: 0,
                    joined_ms: now().as_millis(),
                    seen_ms: now().as_millis(),
                    polling: false,
                    task: None,
                    give_back: None,
                },
            );
        }
        self.version.send_modify(|v| *v += 1);
        Ok(id)
    }

    /// What a worker agent's connection waits on: told when its lead takes the agent for
    /// crashed (seed §6.1's AGENT_CRASH), or an operator takes its task from it.
    pub fn told(&self, agent: AgentId) -> Option<Told> {
        self.workers().get(&agent).map(|w| w.told.clone())
    }

    /// An operator's reassignment came for `agent` (from its lead): its worker's connection
    /// is told to give `task` back (if it still holds it), if it is the registration of
    /// `joined_ms` (0: any). Whether one was told.
    pub fn reassign(&self, agent: AgentId, joined_ms: u64, task: TaskId) -> bool {
        match self.workers().get_mut(&agent) {
            Some(w) if joined_ms == 0 || w.joined_ms == joined_ms => {
                w.give_back = Some(task);
                w.told.reassign.notify_one();
                true
            }
            _ => false,
        }
    }

    /// The task an operator asked `agent`'s worker to give back, taken (once).
    pub fn take_give_back(&self, agent: AgentId) -> Option<TaskId> {
        self.workers().get_mut(&agent)?.give_back.take()
    }

    /// Its lead took `agent` for crashed and asks this node to restart it: a worker agent's
    /// connection is told (it closes it unless the worker holds a task of the task protocol;
    /// its supervisor starts it again and it joins anew), if it is the registration of
    /// `joined_ms` (0: any) and still offline as its beats say; a built-in agent never goes
    /// offline, so is never asked for. Whether one was told.
    pub fn evict(&self, agent: AgentId, joined_ms: u64) -> bool {
        self.evict_at(agent, joined_ms, now().as_millis())
    }

    fn evict_at(&self, agent: AgentId, joined_ms: u64, now_ms: u64) -> bool {
        match self.workers().get(&agent) {
            Some(w) if (joined_ms == 0 || w.joined_ms == joined_ms) && !w.serving(now_ms) => {
                // A permit, kept until the connection next waits.
                w.told.evict.notify_one();
                true
            }
            _ => false,
        }
    }

    /// A frame from worker agent `agent` (any request of the protocol): it is there.
    pub fn seen(&self, agent: AgentId) {
        if let Some(w) = self.workers().get_mut(&agent) {
            w.seen_ms = now().as_millis();
        }
    }

    /// A worker left (it disconnected): what waited for it is dropped.
    pub fn leave(&self, agent: AgentId) {
        if self.workers().remove(&agent).is_some() {
            self.version.send_modify(|v| *v += 1);
        }
    }

    fn mark(&self, agent: AgentId, polling: bool) {
        if let Some(w) = self.workers().get_mut(&agent) {
            w.polling = polling;
            w.seen_ms = now().as_millis();
        }
    }

    /// The task worker agent `agent` works on, as its beats say it.
    pub fn task_of(&self, agent: AgentId) -> Option<Busy> {
        self.workers().get(&agent)?.task.clone()
    }

    /// Worker agent `agent` works on `task` now (none: on no task).
    pub fn working_on(&self, agent: AgentId, task: Option<Busy>) {
        if let Some(w) = self.workers().get_mut(&agent) {
            w.task = task;
        }
    }

    /// The core hands `d` to one of this node's agents.
    pub fn deliver(&self, d: Dispatch) {
        if self.builtin_ids.contains(&d.agent) {
            builtin_work(&self.builtin, d, &self.answers);
            return;
        }
        let mut workers = self.workers();
        let Some(w) = workers.get_mut(&d.agent) else {
            // Left since the core's last look: the lead hears nothing, as from any agent gone.
            return;
        };
        if w.mailbox.len() >= MAX_MAILBOX {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        w.mailbox.push_back(d);
        w.notify.notify_one();
    }

    /// The next envelope for worker agent `agent`, waiting up to `wait` for one.
    pub async fn poll(&self, agent: AgentId, wait: Duration) -> Option<MeshEnvelope> {
        let deadline = tokio::time::Instant::now() + wait;
        let _polling = Polling::start(self, agent);
        loop {
            let notify = {
                let mut workers = self.workers();
                let w = workers.get_mut(&agent)?;
                let now_ms = now().as_millis();
                while let Some(d) = w.mailbox.pop_front() {
                    if d.envelope.expired(now_ms) {
                        self.expired.fetch_add(1, Ordering::Relaxed);
                        // Said to whom hears the answer, so the operation counts it.
                        let answered = Answered {
                            ack: Ack::expired(&d, now_ms),
                            reply_to: d.reply_to,
                        };
                        let _ = self.answers.try_send(answered);
                        continue;
                    }
                    if w.taken.len() >= MAX_UNANSWERED {
                        // The one taken longest ago is forgotten.
                        let oldest = w.taken.iter().min_by_key(|(_, t)| t.arrived_ms);
                        if let Some(op) = oldest.map(|(op, _)| *op) {
                            w.taken.remove(&op);
                        }
                    }
                    let envelope = d.envelope.clone();
                    w.taken.insert(
                        envelope.op,
                        Taken {
                            dispatch: d,
                            arrived_ms: now_ms,
                        },
                    );
                    return Some(envelope);
                }
                w.notify.clone()
            };
            if tokio::time::timeout_at(deadline, notify.notified())
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    /// Worker agent `agent` answers an operation it took.
    pub fn answer(&self, agent: AgentId, a: WorkerAnswer) -> Result<(), String> {
        // Whether a conflict goes with it is `Ack::check`'s, as for any answer.
        if a.state == Trinary::Transit {
            return Err("answer READY (1) or CONFLICT (-1) once the work is done".into());
        }
        let mut workers = self.workers();
        let w = workers.get_mut(&agent).ok_or("not joined to the mesh")?;
        let taken = w.taken.get(&a.op).ok_or_else(|| {
            format!(
                "operation {} was not taken by this agent, or is answered already",
                a.op.0
            )
        })?;
        let ready_ms = now().as_millis();
        w.seen_ms = ready_ms;
        let ack = Ack {
            op: a.op,
            agent,
            cluster: taken.dispatch.cluster,
            state: a.state,
            arrived_ms: taken.arrived_ms,
            ready_ms,
            answer: a.answer,
            conflict: a.conflict,
            expired: false,
        };
        // Checked and handed on before the operation is forgotten: a refused answer may be
        // given again.
        ack.check()?;
        let took_ms = ready_ms.saturating_sub(taken.arrived_ms) as f64;
        // A readiness probe is no work: its time says nothing of the worker's processing.
        let work = taken.dispatch.envelope.verb != Verb::Probe;
        let answered = Answered {
            ack,
            reply_to: taken.dispatch.reply_to.clone(),
        };
        self.answers
            .try_send(answered)
            .map_err(|_| "the mesh is busy; answer again".to_string())?;
        w.taken.remove(&a.op);
        if work {
            w.answered += 1;
            w.processing_ms += (took_ms - w.processing_ms) / w.answered as f64;
        }
        Ok(())
    }
}

/// A worker agent waiting for work: it counts as serving while it waits, and is seen when
/// it stops waiting.
struct Polling<'a> {
    agents: &'a LocalAgents,
    agent: AgentId,
}

impl<'a> Polling<'a> {
    fn start(agents: &'a LocalAgents, agent: AgentId) -> Polling<'a> {
        agents.mark(agent, true);
        Polling { agents, agent }
    }
}

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        self.agents.mark(self.agent, false);
    }
}

/// A built-in agent's work: after its processing time, READY with its context, or CONFLICT:
/// an integrity failure when the payload does not match its hash, a value mismatch when the
/// payload `expect:VALUE` names another context than its own (affecting every built-in
/// agent of the node).
fn builtin_work(opts: &MeshOptions, d: Dispatch, answers: &mpsc::Sender<Answered>) {
    let arrived_ms = now().as_millis();
    let delay = Duration::from_millis(opts.processing_ms);
    let context = opts.context.clone();
    let holding = opts.agents;
    let answers = answers.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let actual = content_hash(&d.envelope.payload);
        let intact = actual == d.envelope.content_hash;
        let contradicted = d
            .envelope
            .payload
            .strip_prefix("expect:")
            .filter(|want| *want != context)
            .map(str::to_owned);
        let conflict = match (&contradicted, intact) {
            (_, false) => Some(ConflictDetail::HashMismatch {
                expected: d.envelope.content_hash.clone(),
                received: actual,
            }),
            // The built-in agents of a node hold one context: a value it contradicts
            // affects them all.
            // (Payload and context are an operator's text: sent as text.)
            (Some(want), true) => Some(ConflictDetail::DataContradiction {
                expected: qs_wire::mesh::as_text(want),
                received: qs_wire::mesh::as_text(&context),
                affects_agents: holding,
            }),
            (None, true) => None,
        };
        let ack = Ack {
            op: d.envelope.op,
            agent: d.agent,
            cluster: d.cluster,
            state: match conflict {
                None => Trinary::Ready,
                Some(_) => Trinary::Conflict,
            },
            arrived_ms,
            ready_ms: now().as_millis(),
            answer: match d.envelope.verb {
                Verb::Observe => context,
                _ => String::new(),
            },
            conflict,
            expired: false,
        };
        let _ = answers.try_send(Answered {
            ack,
            reply_to: d.reply_to,
        });
    });
}

#[cfg(test)]
mod tests;
