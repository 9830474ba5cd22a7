//! The mesh on this process (seed 001): the core's `MeshNode` for this machine's node, fed
//! from the fabric (`mesh.<node>`, frames this node signs) and a timer, with this node's
//! agents. Every node puts its agents in the `mesh` bucket; every node builds the same
//! hierarchy from that bucket and the fleet's live nodes, and builds it again when either
//! changes. An operator's request goes to the root (through the fabric when the root is
//! another node) and its outcome comes back.
//!
//! The node's agents are [`LocalAgents`]: the built-in ones (`--mesh-agents N`) and the
//! workers of the worker protocol that joined the mesh. When one joins or leaves, the core is
//! told the node's agents again and the node's entry of the bucket is rewritten.

use crate::clock::now;
use crate::identity::Auth;
use crate::mesh_agents::Answered;
pub use crate::mesh_agents::{LocalAgents, MeshOptions};
pub use crate::mesh_status::{ClusterRow, Kpis, MeshStatus, SectorRow};
use crate::mesh_status::{preserve_beside, status};
use qs_core::mesh::degrade::Mode;
use qs_core::mesh::seniority::LEAD_AFTER_MS;
use qs_core::mesh::{
    Hierarchy, Joined, Member, MeshConfig, MeshInput, MeshNode, MeshOutput, OpResult, Seniority,
    Shape, seniorities, seniority_in,
};
use qs_fabric::{Fabric, Kv, KvEvent, Subscription, Topic};
use qs_wire::NodeId;
use qs_wire::mesh::{
    ControlAction, MeshAction, MeshMembers, MeshMessage, MeshOutcome, MeshPacket, MeshRequest,
    wire_name,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// The KV bucket of every node's agents (a record per node, keyed by its id), and of the
/// capability mapping a root stores (`RULES_KEY`: no node id starts with `_`).
pub const BUCKET: &str = "mesh";
pub const RULES_KEY: &str = "_rules";
/// The longest the loop waits for the bucket to take the capability mapping, each try.
const STORE_WAIT: Duration = Duration::from_secs(1);
/// Requests waiting for the mesh task, at most.
const MAX_REQUESTS: usize = 64;
/// How long a request waits for its outcome.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

enum Request {
    Run {
        action: MeshAction,
        reply: oneshot::Sender<Result<serde_json::Value, String>>,
    },
}

/// The API's way to the mesh task.
#[derive(Clone)]
pub struct MeshHandle {
    tx: mpsc::Sender<Request>,
    status: watch::Receiver<Arc<MeshStatus>>,
}

impl MeshHandle {
    /// A handle and the ends the task keeps.
    pub fn new() -> (MeshHandle, MeshEnds) {
        let (tx, rx) = mpsc::channel(MAX_REQUESTS);
        let (status_tx, status) = watch::channel(Arc::new(MeshStatus::default()));
        (MeshHandle { tx, status }, MeshEnds { rx, status_tx })
    }

    pub fn status(&self) -> Arc<MeshStatus> {
        self.status.borrow().clone()
    }

    /// Runs an operator's action and waits for its outcome.
    pub async fn run(&self, action: MeshAction) -> Result<serde_json::Value, String> {
        action.check()?;
        // A delegation waits for its agent: as long as the operation may take, and more.
        let wait = REQUEST_TIMEOUT + Duration::from_millis(action.longest_ms());
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Request::Run { action, reply })
            .map_err(|_| "the mesh is busy or stopped; try again".to_string())?;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the mesh stopped".into()),
            Err(_) => Err(format!("no outcome within {} s", wait.as_secs())),
        }
    }
}

/// The task's ends of a [`MeshHandle`].
pub struct MeshEnds {
    rx: mpsc::Receiver<Request>,
    status_tx: watch::Sender<Arc<MeshStatus>>,
}

mod bucket;
mod commands;
mod waiting;
use commands::{command, conflict_event, operation_event, quarantine_event};
use waiting::{Waiter, Waiting};

/// Runs the mesh for `me` until `stop` turns true; `live` reads the live nodes.
#[allow(clippy::too_many_arguments)]
pub async fn run<F: Fabric>(
    fabric: F,
    auth: Arc<Auth>,
    journal: crate::journal::Journal,
    state_dir: qs_store::StateDir,
    me: NodeId,
    agents: Arc<LocalAgents>,
    mut answers: mpsc::Receiver<Answered>,
    ends: MeshEnds,
    live: impl Fn() -> BTreeSet<NodeId> + Send + 'static,
    mut stop: watch::Receiver<bool>,
) {
    let MeshEnds {
        rx: mut requests,
        status_tx,
    } = ends;
    let mut cfg = MeshConfig::default();
    cfg.integration.settle_ms = agents.options().settle_ms;
    let mut node = MeshNode::new(me.clone(), cfg, now());
    let mut versions = agents.versions();
    versions.mark_changed();
    // The node's entry of the bucket is written again after each join or leave.
    let mut entry_written = false;
    let mut members: BTreeMap<NodeId, MeshMembers> = BTreeMap::new();
    // When this node joined the mesh (first wrote its record), on its clock: its record
    // says it, so every node elects it as a lead only once it has been in the mesh a while.
    let mut since_ms: Option<u64> = None;
    let mut built: Option<(BTreeMap<NodeId, Seniority>, u64)> = None;
    // The nodes still new in the tree built last, as the status lists them.
    let mut new_nodes: Vec<String> = Vec::new();
    let mut members_version = 0u64;
    // The tree is built once the bucket's records were all read: a node that starts reads
    // the older nodes' before it counts itself among the founders.
    let mut members_read = false;
    let mut kv = None;
    let mut watch = None;
    // The capability mapping the root asked to store, until the bucket took it.
    let mut rules_to_store: Option<bytes::Bytes> = None;
    let mut bucket = bucket::Bucket::default();
    let mut sub: Option<Subscription> = None;
    let mut waiting = Waiting::default();
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let due = node.poll_timeout();
        let sleep = Duration::from_micros(due.as_micros().saturating_sub(now().as_micros()));
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(sleep) => node.handle(MeshInput::Tick, now()),
            m = crate::tasks::bus::next(&mut sub) => match m {
                Some(m) => match auth.open_bus(m.topic.as_str(), &m.payload, |p: &MeshPacket| &p.from) {
                    Ok(p) => match p.message {
                        MeshMessage::Request(r) => {
                            let wait = REQUEST_TIMEOUT + Duration::from_millis(r.action.longest_ms());
                            let waiter = Waiter::Remote { node: p.from.clone(), id: r.id };
                            match waiting.wait(waiter, wait, Instant::now()) {
                                Some(tag) => command(&mut node, r.action, tag),
                                None => {
                                    let body = format!("{me} has too many requests in flight; try again");
                                    let o = MeshOutcome { id: r.id, ok: false, body };
                                    send(&fabric, &auth, &me, &p.from, MeshMessage::Outcome(Box::new(o))).await;
                                }
                            }
                        }
                        MeshMessage::Outcome(o) => {
                            if let Some(reply) = waiting.outcome_from(&p.from, o.id) {
                                let _ = reply.send(match o.ok {
                                    true => serde_json::from_str(&o.body).map_err(|e| e.to_string()),
                                    false => Err(o.body),
                                });
                            }
                        }
                        other => node.handle(MeshInput::Heard { from: p.from, msg: other }, now()),
                    },
                    Err(e) => tracing::debug!("{e}"),
                },
                None => sub = None,
            },
            a = answers.recv() => {
                let Some(Answered { ack, reply_to }) = a else { return };
                node.handle(MeshInput::AgentDone { ack, reply_to }, now());
            }
            v = versions.changed() => {
                if v.is_err() {
                    return;
                }
                versions.borrow_and_update();
                node.handle(MeshInput::Agents(agents.beats()), now());
                entry_written = false;
            }
            r = requests.recv() => {
                let Some(Request::Run { action, reply }) = r else { return };
                if !waiting.has_room() {
                    let _ = reply.send(Err("too many requests in flight".into()));
                    continue;
                }
                let wait = REQUEST_TIMEOUT + Duration::from_millis(action.longest_ms());
                match (node_is_root(&node), node.tree().root.clone()) {
                    (true, _) => {
                        let waiter = Waiter::Local { reply, sent_to: None };
                        if let Some(tag) = waiting.wait(waiter, wait, Instant::now()) {
                            command(&mut node, action, tag);
                        }
                    }
                    (false, Some(root)) => {
                        let waiter = Waiter::Local { reply, sent_to: Some(root.clone()) };
                        if let Some(tag) = waiting.wait(waiter, wait, Instant::now()) {
                            let req = MeshMessage::Request(Box::new(MeshRequest { id: tag, action }));
                            send(&fabric, &auth, &me, &root, req).await;
                        }
                    }
                    (false, None) => {
                        let _ = reply.send(Err("the mesh has no root yet: no agents registered, or the fleet is starting".into()));
                    }
                }
            }
            e = next_kv(&mut watch) => match e {
                Some(Ok(KvEvent::Synced)) => members_read = true,
                Some(Ok(event)) => {
                    if let Some(r) = bucket.take(&auth, event) {
                        r.apply(&mut members, &mut members_version, &mut node);
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!("mesh bucket: {e}");
                    watch = None;
                }
                None => watch = None,
            },
            _ = tick.tick() => {
                // A request past its time: its asker here is told (one from another node
                // has timed out there by now).
                for w in waiting.expired(Instant::now()) {
                    if let Waiter::Local { reply, sent_to } = w {
                        let from = sent_to.map_or("this node".to_string(), |n| format!("the root {n}"));
                        let _ = reply.send(Err(format!("no outcome from {from} in time")));
                    }
                }
                if !fabric.connected() {
                    continue;
                }
                if sub.is_none() {
                    sub = fabric.subscribe(&Topic::mesh(&me)).await.ok();
                }
                if kv.is_none() {
                    kv = fabric.kv(BUCKET).await.ok();
                }
                if !entry_written && let Some(kv) = &kv {
                    let mine = MeshMembers {
                        node: me.clone(),
                        agents: agents.ids(),
                        zone: agents.options().zone.clone(),
                        since_ms: *since_ms.get_or_insert_with(|| now().as_millis()),
                        lead_after_ms: Some(agents.options().lead_after_ms),
                    };
                    if let Some(bytes) = bucket::seal_members(&auth, &mine) {
                        entry_written = kv.put(me.as_str(), bytes).await.is_ok();
                    }
                }
                // Records whose writers' keys came since they were read.
                for r in bucket.retry(&auth) {
                    r.apply(&mut members, &mut members_version, &mut node);
                }
                if watch.is_none() && let Some(kv) = &kv {
                    watch = kv.watch("").await.ok();
                }
                // The capability mapping the root asked to store: at the next tick while
                // connected, a short wait each (the loop beats on), retried until taken; a
                // node no longer the root writes nothing (its set may be stale by now).
                if !node_is_root(&node) {
                    rules_to_store = None;
                } else if rules_to_store.is_none()
                    && let Some(set) = bucket.sign_again(&me, node.excluded())
                {
                    rules_to_store = bucket::seal_rules(&auth, &me, set);
                }
                if let (Some(bytes), Some(kv)) = (&rules_to_store, &kv) {
                    let put = kv.put(RULES_KEY, bytes.clone());
                    if let Ok(Ok(_)) = tokio::time::timeout(STORE_WAIT, put).await {
                        rules_to_store = None;
                    }
                }
                let live = live();
                let seniorities = seniorities(
                    members
                        .iter()
                        .filter(|(n, _)| live.contains(*n))
                        .map(|(n, m)| (n, Joined {
                            since_ms: m.since_ms,
                            lead_after_ms: m.lead_after_ms.unwrap_or(LEAD_AFTER_MS),
                        })),
                    now().as_millis(),
                );
                let changed = built
                    .as_ref()
                    .is_none_or(|(s, v)| *s != seniorities || *v != members_version);
                if members_read && changed {
                    let list: Vec<Member> = members
                        .iter()
                        .filter(|(n, _)| seniorities.contains_key(*n))
                        .flat_map(|(n, m)| {
                            m.agents.iter().map(|a| Member {
                                agent: *a,
                                host: n.clone(),
                                zone: m.zone.clone(),
                            })
                        })
                        .collect();
                    match Hierarchy::build(&list, Shape::default(), seniority_in(&seniorities)) {
                        Ok(tree) => node.handle(MeshInput::Tree(Arc::new(tree)), now()),
                        Err(e) => tracing::warn!("mesh: {e}"),
                    }
                    let new = seniorities.iter().filter(|(_, s)| **s == Seniority::New);
                    new_nodes = new.map(|(n, _)| n.to_string()).collect();
                    built = Some((seniorities, members_version));
                }
                // Worker agents' liveness and queues move between joins: the core takes the
                // beats again (and ignores them when nothing changed). Built-in agents' never
                // move.
                if agents.has_workers() {
                    node.handle(MeshInput::Agents(agents.beats()), now());
                }
                let _ = status_tx.send(Arc::new(status(&mut node, &agents, new_nodes.clone())));
            }
        }
        while let Some(out) = node.poll() {
            match out {
                MeshOutput::Send { to, msg } => send(&fabric, &auth, &me, &to, msg).await,
                MeshOutput::Deliver(d) => agents.deliver(d),
                MeshOutput::Finished(r) => {
                    // Every operation's end goes to the ledger: a queued one's asker has
                    // had its answer long before.
                    let event = operation_event(&r);
                    journal.append(&me, now().as_micros(), vec![event]).await;
                    finish(&fabric, &auth, &me, &mut waiting, r.tag, Ok(r)).await
                }
                MeshOutput::Queued(q) => {
                    tracing::info!(
                        "mesh: operation {} queued ({}): it starts at {} or better",
                        q.op.0,
                        q.mode,
                        q.waits_for
                    );
                    let body = serde_json::json!({ "queued": q });
                    answer(&fabric, &auth, &me, &mut waiting, q.tag, Ok(body)).await
                }
                MeshOutput::Refused { tag, op, error } => {
                    if let Some(op) = op {
                        tracing::warn!("mesh: queued operation {} did not run: {error}", op.0);
                        let event = qs_wire::Event::mesh_operation_not_run(op.0, error.to_string());
                        journal.append(&me, now().as_micros(), vec![event]).await;
                    }
                    let body = Err(error.to_string());
                    answer(&fabric, &auth, &me, &mut waiting, tag, body).await
                }
                MeshOutput::Conflict(c) => {
                    // The conflict log is the ledger's: append-only, kept with every event.
                    journal
                        .append(&me, now().as_micros(), vec![conflict_event(c)])
                        .await;
                }
                MeshOutput::Quarantined(q) => {
                    // Seed §6.1: "Immediate - potential security issue".
                    tracing::error!(
                        "ALERT: mesh agent {:016x} of cluster {} on {} quarantined: it \
                         disagreed with a clear majority {} times more than it agreed (last \
                         {:?} where the majority answered {:?}); a potential security issue, \
                         investigate (qs events)",
                        q.agent.0,
                        q.cluster.0,
                        q.host,
                        q.disagreements,
                        q.answer,
                        q.majority
                    );
                    journal
                        .append(&me, now().as_micros(), vec![quarantine_event(q)])
                        .await;
                }
                MeshOutput::ConflictResolved(r) => {
                    let event = qs_wire::Event::MeshConflictResolved {
                        seq: r.seq,
                        agent: r.agent.0,
                        cluster: r.cluster.0,
                        how: r.how.as_str().to_owned(),
                    };
                    journal.append(&me, now().as_micros(), vec![event]).await;
                }
                MeshOutput::Breaker(b) => {
                    tracing::info!("mesh breaker {:?} is {:?}", b.scope, b.state)
                }
                MeshOutput::ModeChanged {
                    from,
                    to,
                    active_agents,
                    total_agents,
                } => {
                    // Seed §6.3: operators are told (the log, the ledger, `qs mesh status`).
                    tracing::warn!(
                        "mesh mode {} -> {}: {active_agents} of {total_agents} agents active",
                        from.name(),
                        to.name()
                    );
                    let event = qs_wire::Event::MeshMode {
                        from: from.name().to_owned(),
                        to: to.name().to_owned(),
                        active_agents,
                        total_agents,
                    };
                    journal.append(&me, now().as_micros(), vec![event]).await;
                    if to == Mode::Emergency {
                        // Seed §6.3: alert the operators, preserve the state.
                        tracing::error!(
                            "ALERT: the mesh is in EMERGENCY ({active_agents} of \
                             {total_agents} agents active): automated operations are halted \
                             and any operation needs an operator's approval (--approve); \
                             investigate the root cause"
                        );
                        // Written beside the loop, which beats on meanwhile.
                        let snapshot = status(&mut node, &agents, new_nodes.clone());
                        let kind = qs_store::MeshSnapshotKind::Emergency;
                        preserve_beside(state_dir.clone(), snapshot, kind, now().as_millis());
                    }
                }
                MeshOutput::RoutedAround(r) => tracing::warn!(
                    "mesh: agent {:016x} of cluster {} missed {} operations in a row: out of \
                     the routing pool for {} ms, then tried again",
                    r.agent.0,
                    r.cluster.0,
                    r.missed,
                    r.back_in_ms
                ),
                MeshOutput::HostLost { scope, host } => {
                    tracing::info!("mesh: {host} lost ({scope:?})")
                }
                MeshOutput::AgentCrashed(c) => {
                    if c.escalated {
                        tracing::error!(
                            "mesh: agent {:016x} of cluster {} on {} crashed again soon after \
                             it came back (offline {} ms): its replacement fails too; \
                             investigate",
                            c.agent.0,
                            c.cluster.0,
                            c.host,
                            c.offline_ms
                        );
                    } else {
                        tracing::warn!(
                            "mesh: agent {:016x} of cluster {} on {} taken for crashed \
                             (offline {} ms): its node is asked to restart it",
                            c.agent.0,
                            c.cluster.0,
                            c.host,
                            c.offline_ms
                        );
                    }
                    let event = qs_wire::Event::MeshAgentCrashed {
                        agent: c.agent.0,
                        cluster: c.cluster.0,
                        host: c.host.to_string(),
                        offline_ms: c.offline_ms,
                        escalated: c.escalated,
                    };
                    journal.append(&me, now().as_micros(), vec![event]).await;
                }
                MeshOutput::Restart(r) => {
                    if agents.evict(r.agent, r.joined_ms) {
                        tracing::warn!(
                            "mesh: agent {:016x} taken for crashed by its lead: its worker is \
                             disconnected, to be started again",
                            r.agent.0
                        );
                    }
                }
                MeshOutput::Reassign(r) => {
                    let told = r
                        .task
                        .is_some_and(|task| agents.reassign(r.agent, r.joined_ms, task));
                    if told {
                        tracing::warn!(
                            "mesh: an operator takes agent {:016x}'s task from it, for another \
                             worker",
                            r.agent.0
                        );
                    }
                }
                MeshOutput::ControlDone(r) => {
                    // An operator's control goes to the ledger with what it did.
                    let event = qs_wire::Event::MeshControl {
                        action: wire_name(&r.action),
                        scope: r.scope.to_string(),
                        nodes: r.nodes,
                        confirmed: r.confirmed,
                        agents_released: r.agents_released,
                        breakers_closed: r.breakers_closed,
                        conflicts_released: r.conflicts_released,
                        agents_routed_around: r.agents_routed_around,
                        agents_reassigned: r.agents_reassigned,
                    };
                    journal.append(&me, now().as_micros(), vec![event]).await;
                    let mut body = serde_json::to_value(&r).map_err(|e| e.to_string());
                    // Seed Part 7's freeze: "State preserved to …", this root's view, written
                    // beside the loop (which beats on), its file named at once.
                    if r.action == ControlAction::Freeze
                        && let Ok(v) = &mut body
                    {
                        let snapshot = status(&mut node, &agents, new_nodes.clone());
                        let kind = qs_store::MeshSnapshotKind::Frozen;
                        let path =
                            preserve_beside(state_dir.clone(), snapshot, kind, now().as_millis());
                        v["preserved"] = path.display().to_string().into();
                    }
                    answer(&fabric, &auth, &me, &mut waiting, r.tag, body).await
                }
                MeshOutput::Rules(excluded) => {
                    rules_to_store = bucket::seal_rules(&auth, &me, excluded);
                }
            }
        }
    }
}

fn node_is_root(node: &MeshNode) -> bool {
    node.tree().root.as_ref() == Some(node.id())
}

async fn finish<F: Fabric>(
    fabric: &F,
    auth: &Auth,
    me: &NodeId,
    waiting: &mut Waiting,
    tag: u64,
    outcome: Result<OpResult, String>,
) {
    let body = outcome.and_then(|r| serde_json::to_value(&r).map_err(|e| e.to_string()));
    answer(fabric, auth, me, waiting, tag, body).await;
}

/// Answers whoever waits for `tag`: the API here, or the node that asked.
async fn answer<F: Fabric>(
    fabric: &F,
    auth: &Auth,
    me: &NodeId,
    waiting: &mut Waiting,
    tag: u64,
    body: Result<serde_json::Value, String>,
) {
    let Some(w) = waiting.take(tag) else {
        return;
    };
    match w {
        Waiter::Local { reply, .. } => {
            let _ = reply.send(body);
        }
        Waiter::Remote { node, id } => {
            let (ok, body) = match body {
                Ok(v) => (true, v.to_string()),
                Err(e) => (false, e),
            };
            let body = match body.len() > qs_wire::mesh::MAX_OUTCOME_BYTES {
                true => "the outcome was too large to send".to_string(),
                false => body,
            };
            let o = MeshMessage::Outcome(Box::new(MeshOutcome { id, ok, body }));
            send(fabric, auth, me, &node, o).await;
        }
    }
}

async fn send<F: Fabric>(fabric: &F, auth: &Auth, me: &NodeId, to: &NodeId, msg: MeshMessage) {
    let packet = MeshPacket {
        from: me.clone(),
        message: msg,
    };
    crate::tasks::bus::publish_signed(fabric, auth, me, &Topic::mesh(to), &packet).await;
}

async fn next_kv(
    w: &mut Option<qs_fabric::Watch>,
) -> Option<Result<KvEvent, qs_fabric::FabricError>> {
    match w {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}
