//! The node's durable tasks (seed 002) on this process: the core's [`TaskQueues`] behind a
//! lock, fed by the API (`POST /v1/tasks` and the rest), their deadlines kept by a timer, and
//! every step of every task written to the ledger.
//!
//! The process's first node takes its tasks. Clients submit, list and cancel them over the
//! API; local workers claim, report, checkpoint, complete and fail them over the worker
//! protocol (`worker.rs`, a Unix socket in the state directory). What the core decides (the
//! order of the queues, attempts and their fencing, convergence, one completion per task) is
//! carried out here as it says. Every change is in the task store (`tasks.redb` in the state
//! directory) before its answer goes out, so a restarted agent takes back every task it
//! accepted (what was running waits again, its checkpoint kept); a record there that does not
//! decode or check is left out, and named in the log.

use crate::clock::now;
use crate::journal::Journal;
pub mod bus;
pub mod fleet;
pub mod metrics;
mod persist;
pub mod validate;
pub mod worker;

use qs_core::tasks::{
    Accepted, Claim, Next, QueueCounts, Refusal, Report, Task, TaskLimits, TaskQueues,
};
use qs_wire::event::TaskStep;
use qs_wire::mesh::Busy;
use qs_wire::{Event, NodeId, ServiceName, TaskId, TaskSpec};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// How often deadlines are looked at.
const EXPIRE_EVERY: Duration = Duration::from_millis(250);

/// Per task, whether the ledger holds any of its events (the key) and one of its end.
fn ledgered(
    ledger: &qs_store::Ledger,
) -> Result<std::collections::BTreeMap<TaskId, bool>, qs_store::StoreError> {
    let mut seen = std::collections::BTreeMap::new();
    let mut from = 0;
    loop {
        let page = ledger.read(from, 4096)?;
        let Some(last) = page.last() else {
            return Ok(seen);
        };
        from = last.seq + 1;
        for r in page {
            if let Event::Task { task, step, .. } = r.event {
                *seen.entry(task).or_default() |= qs_core::tasks::is_end(step);
            }
        }
    }
}

/// See the module docs.
pub struct TaskHost {
    node: NodeId,
    /// Held across each change and the queueing of its write, so writes land in order.
    queues: tokio::sync::Mutex<TaskQueues>,
    persist: persist::Persister,
    /// Woken when work may have come in for a waiting claim.
    work: tokio::sync::Notify,
    journal: Journal,
    /// Workers are asked to stop claiming (the agent is stopping).
    soft_stop: AtomicBool,
    /// Workers disconnected for speaking the protocol wrongly.
    pub workers_disconnected: AtomicU64,
    /// The fleet's copy of the tasks, once attached.
    fleet: std::sync::OnceLock<fleet::FleetLink>,
    /// Records written to the fleet, and waiting to be (kept by `fleet.rs`).
    pub fleet_written: AtomicU64,
    pub fleet_pending: AtomicU64,
    store_path: std::path::PathBuf,
    /// Claims waiting for work now: idle workers.
    claims_waiting: AtomicU64,
    /// The task channels and event bus, once attached (`bus.rs`), and what decides their news.
    bus: std::sync::OnceLock<tokio::sync::mpsc::Sender<bus::Outgoing>>,
    signals: std::sync::Mutex<qs_core::tasks::signals::Signals>,
    /// News dropped because the bus was behind.
    pub bus_dropped: AtomicU64,
}

impl TaskHost {
    /// The tasks of `node`, with those its store kept from a previous life.
    pub fn new(
        node: NodeId,
        journal: Journal,
        state: &qs_store::StateDir,
        ledger: &qs_store::Ledger,
    ) -> Result<TaskHost, qs_store::StoreError> {
        let store = qs_store::TaskStore::open(state.path(qs_store::StateFile::Tasks))?;
        // Numbered from the wall clock at start: a restart names no task twice.
        let first_seq = now().as_micros();
        let mut queues = TaskQueues::new(node.clone(), TaskLimits::default(), first_seq);
        let mut kept = Vec::new();
        for (id, record) in store.all()? {
            match serde_json::from_slice::<Task>(&record) {
                Ok(t) if t.id.as_str() == id && t.spec.validate().is_ok() => kept.push(t),
                Ok(_) => {
                    tracing::warn!("task store: the record of {id:?} does not check; left out")
                }
                Err(e) => tracing::warn!(
                    "task store: the record of {id:?} does not decode: {e}; left out"
                ),
            }
        }
        let count = kept.len();
        let ended = kept.iter().any(|t| t.phase.ended());
        for id in queues.restore(kept) {
            tracing::warn!("task store: {id} is past the queues' bounds; left out");
        }
        if ended {
            queues.record_lost_ends(&ledgered(ledger)?);
        }
        if count > 0 {
            tracing::info!("{count} tasks taken back from the task store");
        }
        Ok(TaskHost {
            queues: tokio::sync::Mutex::new(queues),
            persist: persist::Persister::start(Arc::new(store)),
            work: tokio::sync::Notify::new(),
            node,
            journal,
            soft_stop: AtomicBool::new(false),
            workers_disconnected: AtomicU64::new(0),
            fleet: std::sync::OnceLock::new(),
            fleet_written: AtomicU64::new(0),
            fleet_pending: AtomicU64::new(0),
            store_path: state.path(qs_store::StateFile::Tasks),
            claims_waiting: AtomicU64::new(0),
            bus: std::sync::OnceLock::new(),
            signals: Default::default(),
            bus_dropped: AtomicU64::new(0),
        })
    }

    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// Completions and news go out on the task channels and the event bus from now on.
    pub fn attach_bus(&self, tx: tokio::sync::mpsc::Sender<bus::Outgoing>) {
        let _ = self.bus.set(tx);
    }

    fn announce(&self, news: bus::Outgoing) {
        if let Some(tx) = self.bus.get()
            && tx.try_send(news).is_err()
        {
            self.bus_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A security flag for the fleet: a worker spoke the protocol wrongly.
    pub fn flag(&self, detail: String) {
        self.announce(bus::Outgoing::Flag { detail });
    }

    /// Every change from now on goes to the fleet too (`fleet.rs`), and completions are
    /// sealed there first.
    pub fn attach_fleet(&self, link: fleet::FleetLink) {
        let _ = self.fleet.set(link);
    }

    /// Whether workers should stop claiming.
    pub fn soft_stopping(&self) -> bool {
        self.soft_stop.load(Ordering::Relaxed)
    }

    /// The next iteration for `worker`, waiting up to `wait` for one to come in.
    pub async fn claim(
        &self,
        worker: &str,
        warm: &BTreeSet<ServiceName>,
        wait: Duration,
    ) -> Option<Claim> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            // Registered before looking, so work that comes in between is not missed.
            let notified = self.work.notified();
            if let Some(c) = self.with(|q| q.claim(worker, warm)).await {
                if self.confirmed(&c.id).await {
                    return Some(c);
                }
                // Another node took it meanwhile (handed over): the next one.
                continue;
            }
            if self.soft_stopping() || tokio::time::Instant::now() >= until {
                return None;
            }
            self.claims_waiting.fetch_add(1, Ordering::Relaxed);
            let woken = tokio::time::timeout_at(until, notified).await;
            self.claims_waiting.fetch_sub(1, Ordering::Relaxed);
            if woken.is_err() {
                return None;
            }
        }
    }

    pub async fn report(&self, id: &TaskId, attempt: u64, r: Report) -> Result<Next, Refusal> {
        self.with(|q| q.report(id, attempt, r)).await
    }

    pub async fn checkpoint(
        &self,
        id: &TaskId,
        attempt: u64,
        iteration: u32,
        state: String,
    ) -> Result<(), Refusal> {
        self.with(|q| q.checkpoint(id, attempt, iteration, state))
            .await
    }

    pub async fn progress(
        &self,
        id: &TaskId,
        attempt: u64,
        fraction: f64,
        note: String,
    ) -> Result<(), Refusal> {
        let mut q = self.queues.lock().await;
        q.progress(id, attempt, fraction, note)
    }

    pub async fn effect_done(&self, id: &TaskId, attempt: u64, key: &str) -> Result<bool, Refusal> {
        self.queues.lock().await.effect_done(id, attempt, key)
    }

    pub async fn record_effect(&self, id: &TaskId, attempt: u64, key: &str) -> Result<(), Refusal> {
        self.with(|q| q.record_effect(id, attempt, key)).await
    }

    /// A worker's completion; one that would end the task is sealed in the fleet first, and
    /// refused if another node owns the task now.
    pub async fn complete(&self, id: &TaskId, attempt: u64, result: String) -> Result<(), Refusal> {
        if let Some(link) = self.fleet.get() {
            let done = self.queues.lock().await.sealing(id, attempt, &result)?;
            if let Some(done) = done
                && self.moved(id, link.seal(done).await).await
            {
                return Err(Refusal::Ended(id.clone()));
            }
        }
        self.with(|q| q.complete(id, attempt, result)).await
    }

    /// What `/checkpoint_state` shows of the tasks.
    pub async fn checkpoints(&self) -> crate::v1::TaskCheckpoints {
        let q = self.queues.lock().await;
        let with: Vec<&Task> = q.tasks().filter(|t| t.checkpoint.is_some()).collect();
        let latest = with
            .iter()
            .filter(|t| !t.phase.ended())
            .filter_map(|t| {
                let c = t.checkpoint.as_ref()?;
                Some(crate::v1::TaskCheckpoint {
                    task: t.id.clone(),
                    iteration: c.iteration,
                    attempt: c.attempt,
                    bytes: c.state.len(),
                    model: c.model.clone(),
                    hash: c.hash,
                })
            })
            .take(crate::v1::MAX_LISTED)
            .collect();
        crate::v1::TaskCheckpoints {
            store: self.store_path.display().to_string(),
            checkpoints: with.len(),
            latest,
            fleet_written: self.fleet_written.load(Ordering::Relaxed),
            fleet_pending: self.fleet_pending.load(Ordering::Relaxed)
                + self.fleet.get().map_or(0, |l| l.queued() as u64),
        }
    }

    /// Whether the fleet agrees `id` is this node's to run (sealed there as running), or
    /// cannot say (unreachable: autonomous); a task another node took is handed over.
    async fn confirmed(&self, id: &TaskId) -> bool {
        let Some(link) = self.fleet.get() else {
            return true;
        };
        let Some(record) = self.queues.lock().await.get(id).cloned() else {
            return false;
        };
        !self.moved(id, link.seal(record).await).await
    }

    /// Carries out what a seal says of `id`: whether the task is no longer this node's to run.
    async fn moved(&self, id: &TaskId, sealed: fleet::Sealed) -> bool {
        match sealed {
            fleet::Sealed::Sealed | fleet::Sealed::Offline => false,
            fleet::Sealed::Moved(to) => {
                self.hand_over(id, Some(&to)).await;
                true
            }
            fleet::Sealed::Gone => {
                self.hand_over(id, None).await;
                true
            }
            fleet::Sealed::Ended(result) => {
                self.complete_recorded(id, result).await;
                true
            }
        }
    }

    /// The tasks that have not ended.
    pub async fn unended(&self) -> Vec<Task> {
        let q = self.queues.lock().await;
        q.tasks().filter(|t| !t.phase.ended()).cloned().collect()
    }

    /// Another node owns `id` now (`None`: the fleet no longer holds it; it ended elsewhere).
    pub async fn hand_over(&self, id: &TaskId, to: Option<&NodeId>) {
        self.with(|q| q.hand_over(id, to)).await;
    }

    /// The fleet recorded `id`'s completion before this node went down.
    pub async fn complete_recorded(&self, id: &TaskId, result: String) {
        self.with(|q| q.complete_recorded(id, result)).await;
    }

    /// Another node's task, taken over here (`why`: its node died, or it offered it).
    pub async fn adopt(&self, task: Task, why: String) -> Result<(), Refusal> {
        self.with(|q| q.adopt(task, why)).await
    }

    /// Whether `id` is here and has not ended.
    pub async fn holds(&self, id: &TaskId) -> bool {
        self.queues
            .lock()
            .await
            .get(id)
            .is_some_and(|t| !t.phase.ended())
    }

    /// This node's load report (`offer`: how many of its newest inbound tasks it offers;
    /// `warm`: the models warm here).
    pub async fn load(&self, offer: usize, warm: Vec<ServiceName>) -> qs_wire::task_bus::TaskLoad {
        let idle = self.claims_waiting.load(Ordering::Relaxed) as u32;
        self.queues.lock().await.load(idle, offer, warm)
    }

    pub async fn fail(&self, id: &TaskId, attempt: u64, reason: &str) -> Result<(), Refusal> {
        self.with(|q| q.fail(id, attempt, reason)).await
    }

    /// Whether `worker` holds an attempt of a task now.
    pub async fn holds_work(&self, worker: &str) -> bool {
        self.queues.lock().await.holds_work(worker)
    }

    /// What `worker` works on now, as the mesh shows it: a task it holds (its id and
    /// content) and what it last said of it, since `since_ms` if that is the task it held
    /// before, else since now.
    pub async fn busy_of(&self, worker: &str, before: Option<&Busy>) -> Option<Busy> {
        let q = self.queues.lock().await;
        let t = q.held_by(worker)?;
        let note = t.progress.as_ref().map_or("", |p| p.note.as_str());
        let fresh = Busy::task(
            t.id.as_str(),
            &t.spec.payload,
            note,
            crate::clock::now().as_millis(),
        );
        Some(match before {
            Some(b) if b.with == fresh.with => Busy {
                since_ms: b.since_ms,
                ..fresh
            },
            _ => fresh,
        })
    }

    /// An operator takes task `task` from `worker`, if it holds it, for another worker;
    /// whether it was taken.
    pub async fn reassign(&self, worker: &str, task: &TaskId) -> bool {
        self.with(|q| q.reassign(worker, task)).await
    }

    /// A worker went away: the attempts it held fail.
    pub async fn abandon(&self, worker: &str) {
        self.with(|q| q.abandon(worker)).await;
    }

    /// Runs `f` on the queues and queues what it changed for the store, then waits until that
    /// is on disk (before anyone hears of it), then writes its steps to the ledger.
    async fn with<T>(&self, f: impl FnOnce(&mut TaskQueues) -> T) -> T {
        let mut q = self.queues.lock().await;
        let inbound_before = q.waiting();
        let out = f(&mut q);
        let events: Vec<Event> = std::iter::from_fn(|| q.poll()).collect();
        let mut changed: BTreeSet<TaskId> = events
            .iter()
            .filter_map(|e| match e {
                Event::Task { task, .. } => Some(task.clone()),
                _ => None,
            })
            .collect();
        let news: Vec<qs_core::tasks::signals::Signal> = match self.bus.get() {
            None => Vec::new(),
            Some(_) => {
                let now_ms = now().as_micros() / 1000;
                let mut signals = self.signals.lock().unwrap_or_else(|p| p.into_inner());
                events
                    .iter()
                    .flat_map(|e| {
                        let task = match e {
                            Event::Task { task, .. } => q.get(task),
                            _ => None,
                        };
                        signals.classify(e, task, now_ms)
                    })
                    .collect()
            }
        };
        let fleet = self.fleet.get();
        let mut writes: Vec<qs_store::TaskWrite> = Vec::new();
        for id in q.take_forgotten() {
            changed.remove(&id);
            writes.push(qs_store::TaskWrite::Delete { id: id.to_string() });
            if let Some(link) = fleet {
                link.write(id, None);
            }
        }
        for id in changed {
            if let Some(t) = q.get(&id)
                && let Ok(record) = serde_json::to_vec(t)
            {
                writes.push(qs_store::TaskWrite::Put {
                    id: id.to_string(),
                    record,
                });
                if let Some(link) = fleet {
                    link.write(id, Some(t.clone()));
                }
            }
        }
        // Work came in, or an attempt ended (room under the concurrency limit).
        let more_work = q.waiting() > inbound_before
            || events.iter().any(|e| {
                matches!(
                    e,
                    Event::Task {
                        step: TaskStep::Completed
                            | TaskStep::Outbound
                            | TaskStep::Retried
                            | TaskStep::Failed
                            | TaskStep::Voted,
                        ..
                    }
                )
            });
        let durable = if writes.is_empty() {
            None
        } else {
            Some(self.persist.queue(writes).await)
        };
        drop(q);
        if let Some(d) = durable {
            d.wait().await;
        }
        if more_work {
            self.work.notify_waiters();
        }
        for n in news {
            self.announce(bus::Outgoing::Signal(n));
        }
        if !events.is_empty() {
            self.journal
                .append(&self.node, now().as_micros(), events)
                .await;
        }
        out
    }

    /// The outbound results that wait for a validator, but those being judged.
    pub async fn to_validate(
        &self,
        judging: &BTreeSet<TaskId>,
        max: usize,
    ) -> Vec<qs_core::tasks::ToValidate> {
        self.queues.lock().await.to_validate(judging, max)
    }

    /// A validator judged `id`'s result; an accepted one is sealed in the fleet first.
    pub async fn validated(&self, id: &TaskId, accepted: bool) -> Result<(), Refusal> {
        if accepted && let Some(link) = self.fleet.get() {
            let done = self.queues.lock().await.sealing_validated(id);
            if let Some(done) = done
                && self.moved(id, link.seal(done).await).await
            {
                return Err(Refusal::Ended(id.clone()));
            }
        }
        self.with(|q| q.validated(id, accepted)).await
    }

    /// Takes a task (its spec checked by [`qs_wire::decode_task`]); a new one is assigned
    /// across the fleet once it is on disk here (`bus.rs`).
    pub async fn submit(&self, spec: TaskSpec) -> Result<Accepted, Refusal> {
        let model = spec.model.clone();
        let accepted = self.with(|q| q.submit(spec, now())).await?;
        if !accepted.existing {
            self.announce(bus::Outgoing::Assign {
                task: accepted.id.clone(),
                model,
            });
        }
        Ok(accepted)
    }

    /// The client gives `id` up; sealed in the fleet first, so a task that ended or moved
    /// elsewhere is not cancelled here behind its owner's back.
    pub async fn cancel(&self, id: &TaskId) -> Result<(), Refusal> {
        if let Some(link) = self.fleet.get() {
            let done = self.queues.lock().await.sealing_cancel(id)?;
            if self.moved(id, link.seal(done).await).await {
                return Err(Refusal::Ended(id.clone()));
            }
        }
        self.with(|q| q.cancel(id)).await
    }

    pub async fn get(&self, id: &TaskId) -> Option<Task> {
        self.queues.lock().await.get(id).cloned()
    }

    /// Every task remembered, by id.
    pub async fn list(&self) -> Vec<Task> {
        self.queues.lock().await.tasks().cloned().collect()
    }

    pub async fn counts(&self) -> QueueCounts {
        self.queues.lock().await.counts()
    }

    /// Fails the tasks past their deadlines until `stop` turns true.
    pub async fn keep_deadlines(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(EXPIRE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => {
                    self.soft_stop.store(true, Ordering::Relaxed);
                    self.work.notify_waiters();
                    return;
                }
                _ = tick.tick() => {}
            }
            let due = self
                .queues
                .lock()
                .await
                .next_deadline()
                .is_some_and(|t| t <= now());
            if due {
                self.with(|q| q.expire(now())).await;
            }
        }
    }
}
