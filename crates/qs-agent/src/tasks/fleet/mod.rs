//! The fleet's copy of this node's tasks (the `tasks` KV bucket; the decisions are the core's,
//! `qs_core::tasks::fleet`): one task per process that
//!
//! - writes every change of a task there, by compare-and-set on the revision it last wrote,
//!   the latest record per task as the queues made them (queued under their lock, so in
//!   order; a worker never waits for it; while the fabric is unreachable the records wait
//!   here, one per task, and go out on return);
//! - seals a claim before the worker hears of it, and a completion before it is committed,
//!   and tells the host when another node took or adopted the task meanwhile (the claim goes
//!   to the next task, the completion is refused: one owner, one completion per task);
//! - never writes over an ended record with an unended one, and writes its own end over
//!   another's unended record (the first end wins); a record it had written that is gone
//!   means the task ended elsewhere;
//! - reconciles, once connected after a start, each unended local task with the fleet's
//!   record (kept, handed over, or completed as the fleet recorded it);
//! - when a node leaves the live set, and once a while after a start, scans the bucket and
//!   adopts the unended tasks of dead nodes that the rendezvous gives this node (not before it
//!   has been connected for [`RECONNECT_GRACE`]: right after an outage every peer looks dead
//!   until its next heartbeat); they resume here from their last checkpoint;
//! - takes the tasks a loaded node offers or a steal names (still inbound and still that
//!   node's: compare-and-set), tells that node, which hands them over (`adopt.rs`).

mod adopt;
mod link;

pub use link::{FleetInbox, FleetLink, Sealed};

use super::TaskHost;
use crate::names::TASKS_BUCKET;
use link::Command;
use qs_core::tasks::Task;
use qs_core::tasks::fleet::{FleetTask, Reconcile, reconcile};
use qs_fabric::{Fabric, FabricError, Kv, Objects};
use qs_wire::{NodeId, TaskId};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// Requests taken in one go.
const BATCH: usize = 1024;
/// KV operations in flight at once.
const CONCURRENCY: usize = 64;
/// How often it retries, looks at the live set and reconciles.
const TICK: Duration = Duration::from_millis(250);
/// After a start, how long until it looks for orphans of nodes dead before it came up.
const ORPHAN_SCAN_AFTER: Duration = Duration::from_secs(15);
/// Connected this long before it believes a death: after an outage, peers' heartbeats
/// take a few periods to come back.
pub const RECONNECT_GRACE: Duration = Duration::from_secs(3);

/// Checkpoints larger than this go to the `checkpoints` object store; the record names them.
pub const INLINE_CHECKPOINT_BYTES: usize = 32 * 1024;
/// The object store of large checkpoints.
const CHECKPOINTS_BUCKET: &str = "checkpoints";

fn artifact_name(id: &TaskId) -> String {
    format!("ckpt.{id}")
}

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

/// How a compare-and-set of a task's record went.
enum Put {
    Written(u64),
    /// Another node owns it.
    Owned(NodeId),
    /// This node had written it, and it is gone: it ended elsewhere.
    Gone,
    /// The fleet holds its end (this result), and this node's record had not ended.
    Ended(String),
}

struct Sync<F: Fabric> {
    fabric: F,
    /// Signs the nudges it sends.
    auth: Arc<crate::identity::Auth>,
    host: Arc<TaskHost>,
    me: NodeId,
    kv: Option<F::Kv>,
    objects: Option<F::Objects>,
    /// The hash of the checkpoint this node last put in the object store, per task (put
    /// again only when it changes; deleted when the task ends).
    artifacts: BTreeMap<TaskId, u64>,
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
    auth: Arc<crate::identity::Auth>,
    host: Arc<TaskHost>,
    inbox: FleetInbox,
    live: impl Fn() -> BTreeSet<NodeId> + Send + 'static,
    mut stop: watch::Receiver<bool>,
) {
    let FleetInbox { mut rx, writes } = inbox;
    let me = host.node().clone();
    let mut s = Sync {
        fabric,
        auth,
        host,
        me,
        kv: None,
        objects: None,
        artifacts: BTreeMap::new(),
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
        let mut commands = Vec::new();
        tokio::select! {
            _ = stop.changed() => return,
            _ = writes.ready.notified() => {}
            first = rx.recv() => {
                let Some(first) = first else { return };
                commands.push(first);
                while commands.len() < BATCH && let Ok(c) = rx.try_recv() {
                    commands.push(c);
                }
            }
            _ = tick.tick() => {
                s.pending.extend(writes.take());
                s.count();
                s.flush().await;
                s.tick(live()).await;
            }
        }
        // Every record made before these requests goes first.
        s.pending.extend(writes.take());
        s.count();
        s.flush().await;
        let mut seals = Vec::new();
        for c in commands {
            match c {
                Command::Seal { task, reply } => seals.push((*task, reply)),
                Command::Offer { to, tasks } => s.offer(to, tasks).await,
                Command::Take { from, tasks, reply } => {
                    let took = s.take(from, tasks).await;
                    if let Some(reply) = reply {
                        let _ = reply.send(took);
                    }
                }
            }
        }
        s.seal(seals).await;
        s.count();
    }
}

impl<F: Fabric> Sync<F> {
    /// Shows how many records wait here (or are being written) in `/checkpoint_state`.
    fn count(&self) {
        let n = self.pending.len() as u64;
        self.host.fleet_pending.store(n, Ordering::Relaxed);
    }

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

    /// The object store of large checkpoints, opened once the fabric answers.
    async fn objects(&mut self) -> Result<F::Objects, FabricError> {
        if let Some(o) = &self.objects {
            return Ok(o.clone());
        }
        let o = self.fabric.objects(CHECKPOINTS_BUCKET).await?;
        self.objects = Some(o.clone());
        Ok(o)
    }

    /// The fleet's record of `t`: a large checkpoint is put in the object store first, and
    /// the record names it; an ended task keeps its phase and result only (and its object
    /// goes).
    async fn record(&mut self, t: Task) -> Result<bytes::Bytes, FabricError> {
        let mut t = compact(t);
        if t.phase.ended() && self.artifacts.remove(&t.id).is_some() {
            let objects = self.objects().await?;
            if let Err(e) = objects.delete(&artifact_name(&t.id)).await {
                tracing::debug!("the checkpoint object of {}: {e}", t.id);
            }
        }
        if let Some(c) = &mut t.checkpoint
            && c.state.len() > INLINE_CHECKPOINT_BYTES
        {
            let name = artifact_name(&t.id);
            let state = std::mem::take(&mut c.state);
            if self.artifacts.get(&t.id) != Some(&c.hash) {
                self.objects().await?.put(&name, state.into()).await?;
                self.artifacts.insert(t.id.clone(), c.hash);
            }
            c.artifact = Some(name);
        }
        let r = FleetTask {
            owner: self.me.clone(),
            task: t,
        };
        Ok(serde_json::to_vec(&r).unwrap_or_default().into())
    }

    /// `t` as the fleet keeps it, its checkpoint's object read back (and checked against
    /// the checkpoint's hash); `None` when the object cannot be read yet.
    async fn unpack(&mut self, mut t: Task) -> Option<Task> {
        let Some(c) = &mut t.checkpoint else {
            return Some(t);
        };
        let Some(name) = c.artifact.take() else {
            return Some(t);
        };
        let objects = self.objects().await.ok()?;
        let bytes = objects.get(&name).await.ok()??;
        let state = String::from_utf8(bytes.to_vec()).ok()?;
        if qs_core::hash::of_str(&state) != c.hash {
            // A newer checkpoint's object, its record not written yet: later.
            return None;
        }
        c.state = state;
        Some(t)
    }

    /// The fleet's record of `id` and its revision; the record `None` when it does not
    /// check (it is then written over); `Err` when the fabric failed.
    async fn read(
        kv: &F::Kv,
        id: &TaskId,
    ) -> Result<Option<(Option<FleetTask>, u64)>, FabricError> {
        let Some(e) = kv.get(id.as_str()).await? else {
            return Ok(None);
        };
        match FleetTask::decode(id.as_str(), &e.value) {
            Ok(r) => Ok(Some((Some(r), e.revision))),
            Err(bad) => {
                tracing::warn!("{bad}; written over");
                Ok(Some((None, e.revision)))
            }
        }
    }

    /// Writes `t` (`ended`: whether it has ended) over the revision this node last wrote,
    /// or says why not.
    async fn put(
        kv: &F::Kv,
        me: &NodeId,
        id: &TaskId,
        (value, ended): (bytes::Bytes, bool),
        expected: Option<u64>,
    ) -> Result<Put, FabricError> {
        let conflict = match kv.cas(id.as_str(), value.clone(), expected).await {
            Ok(rev) => return Ok(Put::Written(rev)),
            Err(FabricError::Conflict { .. }) => Self::read(kv, id).await?,
            Err(e) => return Err(e),
        };
        let over = |rev| kv.cas(id.as_str(), value.clone(), rev);
        match conflict {
            // Deleted after this node wrote it: the task ended elsewhere and was forgotten.
            None if expected.is_some() => Ok(Put::Gone),
            None => over(None).await.map(Put::Written),
            Some((Some(r), rev)) if &r.owner != me => {
                if ended && !r.task.phase.ended() {
                    // This node's end came first (made while it was cut off): it stands.
                    over(Some(rev)).await.map(Put::Written)
                } else {
                    Ok(Put::Owned(r.owner))
                }
            }
            Some((Some(r), _)) if r.task.phase.ended() && !ended => {
                Ok(Put::Ended(r.task.result.unwrap_or_default()))
            }
            // This node's own record at a revision it did not know (it restarted), or one
            // that did not check: written over that revision.
            Some((_, rev)) => over(Some(rev)).await.map(Put::Written),
        }
    }

    /// Carries out what a refused write says of `id`.
    async fn refused(&mut self, id: &TaskId, put: &Put) {
        self.revisions.remove(id);
        match put {
            Put::Owned(owner) => self.host.hand_over(id, Some(owner)).await,
            Put::Gone => self.host.hand_over(id, None).await,
            Put::Ended(result) => self.host.complete_recorded(id, result.clone()).await,
            Put::Written(_) => {}
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
        let writing = batch.len() as u64;
        self.host.fleet_pending.store(writing, Ordering::Relaxed);
        for chunk in batch.chunks(CONCURRENCY) {
            let mut values = Vec::with_capacity(chunk.len());
            for (_, record) in chunk {
                let value = match record.clone() {
                    Some(t) => {
                        let ended = t.phase.ended();
                        Some(self.record(t).await.map(|v| (v, ended)))
                    }
                    None => None,
                };
                values.push(value);
            }
            let writes = chunk.iter().zip(values).map(|((id, record), value)| {
                let kv = kv.clone();
                let expected = self.revisions.get(id).copied();
                let me = self.me.clone();
                async move {
                    let out = match value {
                        Some(Ok(v)) => Self::put(&kv, &me, id, v, expected).await.map(Some),
                        Some(Err(e)) => Err(e),
                        // Forgotten here: the record goes only where it is still this
                        // node's.
                        None => match Self::read(&kv, id).await {
                            Ok(Some((Some(r), _))) if r.owner != me => Ok(None),
                            Ok(Some(_)) => kv.delete(id.as_str()).await.map(|()| None),
                            Ok(None) => Ok(None),
                            Err(e) => Err(e),
                        },
                    };
                    (id.clone(), record.clone(), out)
                }
            });
            for (id, record, out) in futures_util::future::join_all(writes).await {
                match out {
                    Ok(Some(Put::Written(rev))) => {
                        self.revisions.insert(id, rev);
                        self.host.fleet_written.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Some(put)) => self.refused(&id, &put).await,
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

    /// Seals each record; answers each.
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
        let mut values = Vec::with_capacity(seals.len());
        for (t, _) in &seals {
            values.push(self.record(t.clone()).await.map(|v| (v, t.phase.ended())));
        }
        let puts = seals.iter().zip(values).map(|((t, _), value)| {
            let kv = kv.clone();
            let expected = self.revisions.get(&t.id).copied();
            let me = self.me.clone();
            async move { Self::put(&kv, &me, &t.id, value?, expected).await }
        });
        let outs = futures_util::future::join_all(puts).await;
        for ((t, reply), out) in seals.into_iter().zip(outs) {
            let sealed = match out {
                Ok(Put::Written(rev)) => {
                    self.revisions.insert(t.id.clone(), rev);
                    // What waited to be written is older than what was just sealed.
                    self.pending.remove(&t.id);
                    Sealed::Sealed
                }
                Ok(Put::Owned(owner)) => {
                    self.revisions.remove(&t.id);
                    Sealed::Moved(owner)
                }
                Ok(Put::Gone) => {
                    self.revisions.remove(&t.id);
                    Sealed::Gone
                }
                Ok(Put::Ended(result)) => Sealed::Ended(result),
                Err(e) => {
                    tracing::debug!("sealing {}: {e}; done here, written on return", t.id);
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
        if since.elapsed() < RECONNECT_GRACE {
            // The live set from before the outage stands until peers had time to speak.
            return;
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
            let fleet = record.as_ref().and_then(|(r, _)| r.as_ref());
            match reconcile(&self.me, fleet) {
                Reconcile::Keep => {
                    if let Some((_, rev)) = record {
                        self.revisions.insert(t.id.clone(), rev);
                    }
                    self.pending.entry(t.id.clone()).or_insert(Some(t));
                }
                Reconcile::HandOver(owner) => self.host.hand_over(&t.id, Some(&owner)).await,
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
}
