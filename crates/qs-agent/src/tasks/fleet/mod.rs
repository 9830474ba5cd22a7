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
use qs_fabric::{Fabric, FabricError, Kv};
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
    inbox: FleetInbox,
    live: impl Fn() -> BTreeSet<NodeId> + Send + 'static,
    mut stop: watch::Receiver<bool>,
) {
    let FleetInbox { mut rx, writes } = inbox;
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
                s.flush().await;
                s.tick(live()).await;
            }
        }
        // Every record made before these requests goes first.
        s.pending.extend(writes.take());
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
        for chunk in batch.chunks(CONCURRENCY) {
            let writes = chunk.iter().map(|(id, record)| {
                let kv = kv.clone();
                let expected = self.revisions.get(id).copied();
                let value = record.clone().map(|t| (t.phase.ended(), self.record(t)));
                let me = self.me.clone();
                async move {
                    let out = match value {
                        Some((ended, v)) => Self::put(&kv, &me, id, (v, ended), expected)
                            .await
                            .map(Some),
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
        let puts = seals.iter().map(|(t, _)| {
            let kv = kv.clone();
            let expected = self.revisions.get(&t.id).copied();
            let value = (self.record(t.clone()), t.phase.ended());
            let me = self.me.clone();
            async move { Self::put(&kv, &me, &t.id, value, expected).await }
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
