//! Tasks changing nodes through the bucket: offering this node's tasks, taking those another
//! node offers or a steal names, and adopting a dead node's. Each move is a compare-and-set of
//! the record's owner; a move the host then cannot take in (its queue is full, the key is
//! already used here) is written back, so no record names a node that does not hold it.

use super::Sync;
use qs_core::tasks::fleet::{FleetTask, adopts};
use qs_core::tasks::{Phase, Task};
use qs_fabric::{Fabric, FabricError, Kv, KvEvent};
use qs_wire::task_bus::TaskNudge;
use qs_wire::{NodeId, TaskId};
use std::time::Duration;

/// Most records one scan reads.
const MAX_SCAN: usize = 1_000_000;
/// Most records one nudge or steal makes this node read.
const MAX_LOOK: usize = qs_core::tasks::balance::MAX_MOVE;

impl<F: Fabric> Sync<F> {
    /// Names `tasks` to `to` on its `tasks.inbound` channel.
    async fn nudge(&self, to: &NodeId, tasks: Vec<TaskId>) {
        let nudge = TaskNudge {
            from: self.me.clone(),
            tasks,
        };
        let topic = qs_fabric::Topic::task_inbound(to);
        super::super::bus::publish_signed(&self.fabric, &self.auth, &self.me, &topic, &nudge).await;
    }

    /// Tells `to` it may take `tasks`, once they are written (still pending: not yet).
    pub(super) async fn offer(&mut self, to: NodeId, tasks: Vec<TaskId>) {
        let written: Vec<TaskId> = tasks
            .into_iter()
            .filter(|id| !self.pending.contains_key(id))
            .collect();
        if written.is_empty() || self.kv().await.is_none() {
            return;
        }
        self.nudge(&to, written).await;
    }

    /// Moves `task` (the fleet's record `was` at `rev`) to this node: the record first, then
    /// the host; if the host cannot take it in, the record goes back.
    async fn move_here(
        &mut self,
        kv: &F::Kv,
        task: Task,
        was: bytes::Bytes,
        rev: u64,
        why: String,
    ) -> Result<bool, FabricError> {
        let id = task.id.clone();
        // Its checkpoint read back from the object store first: a task is never taken
        // without the state it resumes from.
        let Some(task) = self.unpack(task).await else {
            return Ok(false);
        };
        let value = self.record(task.clone()).await?;
        let new = match kv.cas(id.as_str(), value, Some(rev)).await {
            Ok(new) => new,
            // Another node took it, or its owner wrote it: not this node's.
            Err(FabricError::Conflict { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        self.revisions.insert(id.clone(), new);
        if let Err(e) = self.host.adopt(task, why).await {
            tracing::warn!("taking {id} in: {e}; its record goes back");
            self.revisions.remove(&id);
            kv.cas(id.as_str(), was, Some(new)).await?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Takes each of `ids` that `from` owns and has not started (by compare-and-set), hands
    /// over each this node holds that another owns now; tells `from` what it took.
    pub(super) async fn take(&mut self, from: NodeId, ids: Vec<TaskId>) -> usize {
        let Some(kv) = self.kv().await else {
            return 0;
        };
        let mut took = Vec::new();
        for id in ids.into_iter().take(MAX_LOOK) {
            let Ok(Some(entry)) = kv.get(id.as_str()).await else {
                continue;
            };
            let Ok(r) = FleetTask::decode(id.as_str(), &entry.value) else {
                continue;
            };
            if self.host.holds(&id).await {
                if r.owner != self.me {
                    self.revisions.remove(&id);
                    self.host.hand_over(&id, Some(&r.owner)).await;
                }
                continue;
            }
            if r.owner != from || from == self.me || r.task.phase != Phase::Inbound {
                continue;
            }
            let why = format!("taken from {from}, which had more than it could run");
            if let Ok(true) = self
                .move_here(&kv, r.task, entry.value, entry.revision, why)
                .await
            {
                took.push(id);
            }
        }
        let n = took.len();
        if n > 0 {
            self.nudge(&from, took).await;
        }
        n
    }

    /// Scans the bucket and adopts what the rendezvous gives this node of dead nodes' tasks.
    pub(super) async fn adopt(&mut self, kv: &F::Kv) -> Result<(), FabricError> {
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
                Ok(r) if adopts(&r, &self.me, &live) => mine.push((r, entry)),
                Ok(_) => {}
                Err(bad) => tracing::warn!("{bad}"),
            }
        }
        drop(watch);
        for (r, entry) in mine {
            let from = r.owner.clone();
            let mut task = r.task;
            if let Phase::Running { .. } = task.phase {
                task.phase = Phase::Inbound;
            }
            let why = format!("from {from}, whose node is dead");
            self.move_here(kv, task, entry.value, entry.revision, why)
                .await?;
        }
        Ok(())
    }
}
