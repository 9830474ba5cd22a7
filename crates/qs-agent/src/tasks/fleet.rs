//! The fleet's copy of this node's tasks (the `tasks` KV bucket; the decisions are the core's,
//! `qs_core::tasks::fleet`): one task per process that
//!
//! - writes every change of a task there after it is on this node's disk, by compare-and-set
//!   on the revision it last wrote, latest record per task (a worker never waits for it; while
//!   the fabric is unreachable the records wait here, one per task, and go out on return);
//! - seals a claim before the worker hears of it, and a completion before it is committed,
//!   and tells the host when another node took or adopted the task meanwhile (the claim goes
//!   to the next task, the completion is refused: one owner, one completion per task);
//! - reconciles, once connected after a start, each unended local task with the fleet's
//!   record (kept, handed over, or completed as the fleet recorded it);
//! - when a node leaves the live set, and once a while after a start, scans the bucket and
//!   adopts the unended tasks of dead nodes that the rendezvous gives this node; they resume
//!   here from their last checkpoint;
//! - takes the tasks a loaded node offers or a steal names (still inbound and still that
//!   node's: compare-and-set), and tells that node, which hands them over.

use super::TaskHost;
use crate::names::TASKS_BUCKET;
use qs_core::tasks::fleet::{FleetTask, Reconcile, adopts, reconcile};
use qs_core::tasks::{Phase, Task};
use qs_fabric::{Fabric, FabricError, Kv, KvEvent};
use qs_wire::{NodeId, TaskId};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Commands waiting for the fleet task, at most.
const MAX_COMMANDS: usize = 8192;
/// Commands taken in one go.
const BATCH: usize = 1024;
/// KV operations in flight at once.
const CONCURRENCY: usize = 64;
/// How often it retries, looks at the live set and reconciles.
const TICK: Duration = Duration::from_millis(250);
/// After a start, how long until it looks for orphans of nodes dead before it came up.
const ORPHAN_SCAN_AFTER: Duration = Duration::from_secs(15);
/// Most records one scan reads.
const MAX_SCAN: usize = 1_000_000;

/// What the host asks of the fleet task.
enum Command {
    /// The task's latest record (`None`: forgotten here).
    Write { id: TaskId, record: Option<Task> },
    /// Seal this record (a claim's, a completion's) before anyone hears of it.
    Seal {
        task: Task,
        reply: oneshot::Sender<Sealed>,
    },
    /// Offer these of this node's tasks to `to` once their records are written.
    Offer { to: NodeId, tasks: Vec<TaskId> },
    /// Look at these tasks in the bucket: take those `from` still owns and has not started
    /// (answering how many), hand over those of this node that another owns now.
    Take {
        from: NodeId,
        tasks: Vec<TaskId>,
        reply: Option<oneshot::Sender<usize>>,
    },
}

/// How a seal went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sealed {
    /// The fleet holds the completion: commit it.
    Sealed,
    /// The fleet cannot be reached: commit it here (autonomous); it is written on return.
    Offline,
    /// Another node owns the task now: do not complete it.
    Moved(NodeId),
}

/// The host's handle on the fleet task.
#[derive(Clone)]
pub struct FleetLink {
    tx: mpsc::Sender<Command>,
}

impl FleetLink {
    /// The channel to the fleet task (started with [`run`]).
    pub fn new() -> (FleetLink, FleetInbox) {
        let (tx, rx) = mpsc::channel(MAX_COMMANDS);
        (FleetLink { tx }, FleetInbox(rx))
    }

    pub async fn write(&self, id: TaskId, record: Option<Task>) {
        let _ = self.tx.send(Command::Write { id, record }).await;
    }

    /// Takes what of `tasks` `from` still owns and has not started; how many it took.
    pub async fn take(&self, from: NodeId, tasks: Vec<TaskId>) -> usize {
        let (reply, took) = oneshot::channel();
        let sent = self.tx.send(Command::Take {
            from,
            tasks,
            reply: Some(reply),
        });
        if sent.await.is_err() {
            return 0;
        }
        took.await.unwrap_or(0)
    }

    /// Offers `tasks` to `to` (after their records are in the bucket, so it can take them).
    pub async fn offer(&self, to: NodeId, tasks: Vec<TaskId>) {
        let _ = self.tx.send(Command::Offer { to, tasks }).await;
    }

    /// `from` says it took some of `tasks` (or offers them): look at them in the bucket.
    pub async fn look(&self, from: NodeId, tasks: Vec<TaskId>) {
        let _ = self
            .tx
            .send(Command::Take {
                from,
                tasks,
                reply: None,
            })
            .await;
    }

    pub async fn seal(&self, task: Task) -> Sealed {
        let (reply, sealed) = oneshot::channel();
        if self.tx.send(Command::Seal { task, reply }).await.is_err() {
            return Sealed::Offline;
        }
        sealed.await.unwrap_or(Sealed::Offline)
    }
}

/// The fleet task's end of the channel.
pub struct FleetInbox(mpsc::Receiver<Command>);

/// What an ended task keeps in the fleet: enough to reconcile (its phase, its result).
fn compact(mut t: Task) -> Task {
    if t.phase.ended() {
        t.spec.payload.clear();
        t.checkpoint = None;
        t.history.clear();
        t.judging = Default::default();
    }
    t
}

struct Sync<F: Fabric> {
    fabric: F,
    host: Arc<TaskHost>,
    me: NodeId,
    kv: Option<F::Kv>,
    /// The revision this node last wrote of each task.
    revisions: BTreeMap<TaskId, u64>,
    /// Records not yet written, the latest per task.
    pending: BTreeMap<TaskId, Option<Task>>,
    reconciled: bool,
    live: BTreeSet<NodeId>,
    connected_at: Option<tokio::time::Instant>,
    orphans_scanned: bool,
}

/// Runs the fleet task until `stop` turns true; `live` reads the live nodes.
pub async fn run<F: Fabric>(
    fabric: F,
    host: Arc<TaskHost>,
    FleetInbox(mut rx): FleetInbox,
    live: impl Fn() -> BTreeSet<NodeId> + Send + 'static,
    mut stop: watch::Receiver<bool>,
) {
    let me = host.node().clone();
    let mut s = Sync {
        fabric,
        host,
        me,
        kv: None,
        revisions: BTreeMap::new(),
        pending: BTreeMap::new(),
        reconciled: false,
        live: BTreeSet::new(),
        connected_at: None,
        orphans_scanned: false,
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut seals = Vec::new();
        let mut takes = Vec::new();
        let mut offers = Vec::new();
        tokio::select! {
            _ = stop.changed() => return,
            first = rx.recv() => {
                let Some(first) = first else { return };
                let mut next = Some(first);
                let mut taken = 0;
                while let Some(c) = next.take() {
                    match c {
                        Command::Write { id, record } => {
                            s.pending.insert(id, record);
                        }
                        Command::Seal { task, reply } => seals.push((task, reply)),
                        Command::Take { from, tasks, reply } => takes.push((from, tasks, reply)),
                        Command::Offer { to, tasks } => offers.push((to, tasks)),
                    }
                    taken += 1;
                    if taken < BATCH {
                        next = rx.try_recv().ok();
                    }
                }
            }
            _ = tick.tick() => {
                s.tick(live()).await;
            }
        }
        s.flush().await;
        s.seal(seals).await;
        for (to, tasks) in offers {
            s.offer(to, tasks).await;
        }
        for (from, tasks, reply) in takes {
            let took = s.take(from, tasks).await;
            if let Some(reply) = reply {
                let _ = reply.send(took);
            }
        }
        let pending = s.pending.len() as u64;
        s.host.fleet_pending.store(pending, Ordering::Relaxed);
    }
}

impl<F: Fabric> Sync<F> {
    /// The bucket, opened once the fabric answers.
    async fn kv(&mut self) -> Option<F::Kv> {
        if !self.fabric.connected() {
            return None;
        }
        if self.kv.is_none() {
            match self.fabric.kv(TASKS_BUCKET).await {
                Ok(kv) => self.kv = Some(kv),
                Err(e) => tracing::debug!("the fleet's tasks bucket: {e}"),
            }
        }
        self.kv.clone()
    }

    fn record(&self, t: Task) -> bytes::Bytes {
        let r = FleetTask {
            owner: self.me.clone(),
            task: compact(t),
        };
        serde_json::to_vec(&r).unwrap_or_default().into()
    }

    /// The fleet's record of `id`, checked; `Err` when the fabric failed.
    async fn read(kv: &F::Kv, id: &TaskId) -> Result<Option<(FleetTask, u64)>, FabricError> {
        let Some(e) = kv.get(id.as_str()).await? else {
            return Ok(None);
        };
        match FleetTask::decode(id.as_str(), &e.value) {
            Ok(r) => Ok(Some((r, e.revision))),
            Err(bad) => {
                tracing::warn!("{bad}; overwritten");
                Ok(None)
            }
        }
    }

    /// Writes `t` over the revision this node last wrote; `Ok(None)` when it did, `Ok(Some)`
    /// naming the node that owns the task now.
    async fn put(
        kv: &F::Kv,
        me: &NodeId,
        id: &TaskId,
        value: bytes::Bytes,
        expected: Option<u64>,
    ) -> Result<(u64, Option<NodeId>), FabricError> {
        match kv.cas(id.as_str(), value.clone(), expected).await {
            Ok(rev) => Ok((rev, None)),
            Err(FabricError::Conflict { .. }) => match Self::read(kv, id).await? {
                Some((r, _)) if &r.owner != me => Ok((0, Some(r.owner))),
                // This node's own record at a revision it did not know (it restarted), or
                // one that did not check: written over that revision.
                Some((_, rev)) => kv
                    .cas(id.as_str(), value, Some(rev))
                    .await
                    .map(|r| (r, None)),
                None => kv.cas(id.as_str(), value, None).await.map(|r| (r, None)),
            },
            Err(e) => Err(e),
        }
    }

    /// Writes the pending records, many at once; what fails waits for the next try.
    async fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let Some(kv) = self.kv().await else {
            return;
        };
        let batch: Vec<(TaskId, Option<Task>)> =
            std::mem::take(&mut self.pending).into_iter().collect();
        for chunk in batch.chunks(CONCURRENCY) {
            let writes = chunk.iter().map(|(id, record)| {
                let kv = kv.clone();
                let expected = self.revisions.get(id).copied();
                let value = record.clone().map(|t| self.record(t));
                let me = self.me.clone();
                async move {
                    let out = match value {
                        Some(v) => Self::put(&kv, &me, id, v, expected).await.map(Some),
                        // Forgotten here: the record goes only where it is still this node's.
                        None => match Self::read(&kv, id).await {
                            Ok(Some((r, _))) if r.owner == me => {
                                kv.delete(id.as_str()).await.map(|()| None)
                            }
                            Ok(_) => Ok(None),
                            Err(e) => Err(e),
                        },
                    };
                    (id.clone(), record.clone(), out)
                }
            });
            for (id, record, out) in futures_util::future::join_all(writes).await {
                match out {
                    Ok(Some((_, Some(owner)))) => {
                        self.revisions.remove(&id);
                        self.host.hand_over(&id, &owner).await;
                    }
                    Ok(Some((rev, None))) => {
                        self.revisions.insert(id, rev);
                        self.host.fleet_written.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(None) => {
                        self.revisions.remove(&id);
                    }
                    Err(FabricError::PayloadTooLarge { size, max }) => {
                        tracing::warn!(
                            "task {id}: a record of {size} bytes (at most {max}) is kept on this node only"
                        );
                    }
                    Err(e) => {
                        tracing::debug!("the fleet's record of {id}: {e}; tried again");
                        // A newer record queued meanwhile wins.
                        self.pending.entry(id).or_insert(record);
                    }
                }
            }
        }
    }

    /// Seals each completed record; answers each.
    async fn seal(&mut self, seals: Vec<(Task, oneshot::Sender<Sealed>)>) {
        if seals.is_empty() {
            return;
        }
        let Some(kv) = self.kv().await else {
            for (_, reply) in seals {
                let _ = reply.send(Sealed::Offline);
            }
            return;
        };
        let puts = seals.iter().map(|(t, _)| {
            let kv = kv.clone();
            let expected = self.revisions.get(&t.id).copied();
            let value = self.record(t.clone());
            let me = self.me.clone();
            async move { Self::put(&kv, &me, &t.id, value, expected).await }
        });
        let outs = futures_util::future::join_all(puts).await;
        for ((t, reply), out) in seals.into_iter().zip(outs) {
            let sealed = match out {
                Ok((rev, None)) => {
                    self.revisions.insert(t.id.clone(), rev);
                    Sealed::Sealed
                }
                Ok((_, Some(owner))) => {
                    self.revisions.remove(&t.id);
                    Sealed::Moved(owner)
                }
                Err(e) => {
                    tracing::debug!("sealing {}: {e}; completed here, written on return", t.id);
                    self.pending.insert(t.id.clone(), Some(t));
                    Sealed::Offline
                }
            };
            let _ = reply.send(sealed);
        }
    }

    async fn tick(&mut self, live: BTreeSet<NodeId>) {
        let Some(kv) = self.kv().await else {
            self.connected_at = None;
            return;
        };
        let since = *self
            .connected_at
            .get_or_insert_with(tokio::time::Instant::now);
        if !self.reconciled {
            self.reconciled = self.reconcile(&kv).await.is_ok();
        }
        let someone_died = self.live.difference(&live).any(|n| n != &self.me);
        let orphans_due = !self.orphans_scanned && since.elapsed() >= ORPHAN_SCAN_AFTER;
        let known = !live.is_empty();
        self.live = live;
        if known && (someone_died || orphans_due) {
            match self.adopt(&kv).await {
                Ok(()) => self.orphans_scanned |= orphans_due,
                Err(e) => tracing::debug!("looking for orphaned tasks: {e}"),
            }
        }
    }

    /// Each unended local task against the fleet's record.
    async fn reconcile(&mut self, kv: &F::Kv) -> Result<(), FabricError> {
        for t in self.host.unended().await {
            let record = Self::read(kv, &t.id).await?;
            match reconcile(&self.me, record.as_ref().map(|(r, _)| r)) {
                Reconcile::Keep => {
                    if let Some((_, rev)) = record {
                        self.revisions.insert(t.id.clone(), rev);
                    }
                    self.pending.entry(t.id.clone()).or_insert(Some(t));
                }
                Reconcile::HandOver(owner) => self.host.hand_over(&t.id, &owner).await,
                Reconcile::Complete(result) => {
                    if let Some((_, rev)) = record {
                        self.revisions.insert(t.id.clone(), rev);
                    }
                    self.host.complete_recorded(&t.id, result).await;
                }
            }
        }
        Ok(())
    }

    /// Tells `to` it may take `tasks`, once they are written (still pending: not yet).
    async fn offer(&mut self, to: NodeId, tasks: Vec<TaskId>) {
        let written: Vec<TaskId> = tasks
            .into_iter()
            .filter(|id| !self.pending.contains_key(id))
            .collect();
        if written.is_empty() || self.kv().await.is_none() {
            return;
        }
        let nudge = qs_wire::task_bus::TaskNudge {
            from: self.me.clone(),
            tasks: written,
        };
        if let Ok(body) = serde_json::to_vec(&nudge) {
            let topic = qs_fabric::Topic::task_inbound(&to);
            if let Err(e) = self.fabric.publish(&topic, body.into()).await {
                tracing::debug!("offering tasks to {to}: {e}");
            }
        }
    }

    /// Takes each of `ids` that `from` owns and has not started (by compare-and-set), hands
    /// over each this node holds that another owns now; tells `from` what it took.
    async fn take(&mut self, from: NodeId, ids: Vec<TaskId>) -> usize {
        let Some(kv) = self.kv().await else {
            return 0;
        };
        let mut took = Vec::new();
        for id in ids.into_iter().take(qs_wire::task_bus::MAX_BUS_TASKS) {
            let Ok(Some((r, rev))) = Self::read(&kv, &id).await else {
                continue;
            };
            if self.host.holds(&id).await {
                if r.owner != self.me {
                    self.revisions.remove(&id);
                    self.host.hand_over(&id, &r.owner).await;
                }
                continue;
            }
            if r.owner != from || from == self.me || r.task.phase != Phase::Inbound {
                continue;
            }
            let value = self.record(r.task.clone());
            if let Ok(new) = kv.cas(id.as_str(), value, Some(rev)).await {
                self.revisions.insert(id.clone(), new);
                let why = format!("taken from {from}, which had more than it could run");
                match self.host.adopt(r.task, why).await {
                    Ok(()) => took.push(id),
                    Err(e) => tracing::warn!("taking {id} from {from}: {e}"),
                }
            }
        }
        if !took.is_empty() {
            let nudge = qs_wire::task_bus::TaskNudge {
                from: self.me.clone(),
                tasks: took.clone(),
            };
            if let Ok(body) = serde_json::to_vec(&nudge) {
                let topic = qs_fabric::Topic::task_inbound(&from);
                if let Err(e) = self.fabric.publish(&topic, body.into()).await {
                    tracing::debug!("telling {from} what was taken: {e}");
                }
            }
        }
        took.len()
    }

    /// Scans the bucket and adopts what the rendezvous gives this node of dead nodes' tasks.
    async fn adopt(&mut self, kv: &F::Kv) -> Result<(), FabricError> {
        let mut live = self.live.clone();
        live.insert(self.me.clone());
        let mut watch = kv.watch("").await?;
        let mut mine = Vec::new();
        let mut read = 0;
        while let Some(event) = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .map_err(|_| FabricError::Nats {
                op: "scan tasks",
                detail: "timed out".into(),
            })?
        {
            let entry = match event? {
                KvEvent::Put(e) => e,
                KvEvent::Delete { .. } => continue,
                KvEvent::Synced => break,
            };
            read += 1;
            if read > MAX_SCAN {
                break;
            }
            match FleetTask::decode(&entry.key, &entry.value) {
                Ok(r) if adopts(&r, &self.me, &live) => mine.push((r, entry.revision)),
                Ok(_) => {}
                Err(bad) => tracing::warn!("{bad}"),
            }
        }
        drop(watch);
        for (r, rev) in mine {
            let id = r.task.id.clone();
            let from = r.owner.clone();
            let mut task = r.task;
            if let Phase::Running { .. } = task.phase {
                task.phase = Phase::Inbound;
            }
            let value = self.record(task.clone());
            match kv.cas(id.as_str(), value, Some(rev)).await {
                Ok(new) => {
                    self.revisions.insert(id.clone(), new);
                    let why = format!("from {from}, whose node is dead");
                    if let Err(e) = self.host.adopt(task, why).await {
                        tracing::warn!("adopting {id} from {from}: {e}");
                    }
                }
                // Another node took it, or its owner wrote it: not this node's.
                Err(FabricError::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
