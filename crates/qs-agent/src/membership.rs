//! The process's one registry: fed once by heartbeats, the specs KV and expiry, and read by
//! every node runtime of the process. Each change that calls for a decision is announced to
//! the runtimes as the core decides ([`qs_core::caused_by`]), in each runtime's coalescing
//! [`Notice`]: this module applies changes and delivers, and decides nothing.
//!
//! A registry is a replica of what the fleet publishes, so every node of one process would
//! hold the same copy; keeping one (as the simulator does) spares decoding every heartbeat
//! once per virtual node.

use crate::backoff::Backoff;
use crate::clock::now;
use crate::counters::Counters;
use crate::error::AgentError;
use crate::names::SPECS_BUCKET;
use crate::specs::watch_specs;
use qs_core::{Config, FleetChange, Notice, Recipients, Registry};
use qs_fabric::{Fabric, FabricError, KvEvent, Topic};
use qs_wire::{Event, Message, NodeId, ServiceName, WorkloadSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// How often silent nodes are looked for.
const EXPIRE_EVERY: Duration = Duration::from_millis(100);
/// The most heartbeats applied under one write of the registry.
const BEAT_BATCH: usize = 256;
/// The longest wait between tries to watch the specs KV.
const WATCH_RETRY_MAX: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Inbox {
    pending: Mutex<Notice>,
    ready: Notify,
    /// Frozen by chaos: it neither vouches for itself nor counts as local.
    paused: std::sync::atomic::AtomicBool,
}

impl Inbox {
    fn post(&self, notice: Notice) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .merge(notice);
        self.ready.notify_one();
    }
}

/// One node runtime's notices.
pub struct Notices {
    node: NodeId,
    inbox: Arc<Inbox>,
    inboxes: Arc<RwLock<BTreeMap<NodeId, Arc<Inbox>>>>,
}

impl Notices {
    /// Waits for something to reconcile and takes all of it.
    pub async fn next(&self) -> Notice {
        loop {
            self.inbox.ready.notified().await;
            let taken =
                std::mem::take(&mut *self.inbox.pending.lock().unwrap_or_else(|p| p.into_inner()));
            if !taken.is_empty() {
                return taken;
            }
        }
    }
}

impl Drop for Notices {
    fn drop(&mut self) {
        let mut inboxes = self.inboxes.write().unwrap_or_else(|p| p.into_inner());
        if inboxes
            .get(&self.node)
            .is_some_and(|i| Arc::ptr_eq(i, &self.inbox))
        {
            inboxes.remove(&self.node);
        }
    }
}

/// The shared registry and the inboxes of the node runtimes that read it.
#[derive(Clone)]
pub struct Membership {
    registry: Arc<RwLock<Registry>>,
    inboxes: Arc<RwLock<BTreeMap<NodeId, Arc<Inbox>>>>,
}

/// What feeds a [`Membership`]: heartbeats, the specs KV watch and expiry.
pub struct Feed<F: Fabric> {
    membership: Membership,
    fabric: F,
    /// While a watch replays: the specs it has shown so far.
    replayed: Option<BTreeSet<ServiceName>>,
    beats: qs_fabric::Subscription,
    /// Opens the heartbeats (checks their signatures where the fleet requires them).
    auth: Arc<crate::identity::Auth>,
    /// Where a refused spec is recorded: the ledger, under this process's first node.
    journal: crate::journal::Journal,
    recorder: NodeId,
}

impl<F: Fabric> Feed<F> {
    /// Applies heartbeats, spec changes and expiry until `stop` turns true. The specs KV is
    /// watched once the fabric can serve it (retried with backoff; the specs known locally
    /// rule until then). While the fabric is disconnected nobody is declared dead: the node
    /// hears nobody, itself included, and keeps the membership it last knew rather than
    /// emptying its registry.
    pub async fn run(mut self, counters: Counters, mut stop: watch::Receiver<bool>) {
        let m = self.membership.clone();
        let mut expire = tokio::time::interval(EXPIRE_EVERY);
        let mut specs: Option<qs_fabric::Watch> = None;
        // A try to watch runs beside the loop, which keeps applying heartbeats meanwhile.
        let mut starting: Option<tokio::task::JoinHandle<Result<qs_fabric::Watch, AgentError>>> =
            None;
        let mut retry_at = tokio::time::Instant::now();
        let mut backoff = Backoff::new(EXPIRE_EVERY, WATCH_RETRY_MAX);
        loop {
            let idle = specs.is_none() && starting.is_none();
            let next_spec = async {
                match specs.as_mut() {
                    Some(w) => w.next().await,
                    None => std::future::pending().await,
                }
            };
            let started = async {
                match starting.as_mut() {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.changed() => break,
                Some(b) = self.beats.next() => self.on_heartbeats(b),
                e = next_spec => match e {
                    Some(Ok(e)) => {
                        backoff.reset();
                        if let Some(refused) = self.on_spec(e) {
                            counters.specs_refused.inc();
                            let at_us = crate::clock::now().as_micros();
                            self.journal.append(&self.recorder, at_us, vec![refused]).await;
                        }
                    }
                    // A watch that failed (its consumer lost with a NATS server, say) may not
                    // come back by itself: watch again, a replay that loses nothing.
                    Some(Err(e)) => {
                        let wait = backoff.next();
                        tracing::warn!("spec watch: {e}; watching again in {wait:?}");
                        specs = None;
                        retry_at = tokio::time::Instant::now() + wait;
                    }
                    // The watch fell behind or its backend ended it: watch again.
                    None => specs = None,
                },
                _ = tokio::time::sleep_until(retry_at), if idle => {
                    let fabric = self.fabric.clone();
                    starting = Some(tokio::spawn(async move { watch_specs(&fabric).await }));
                }
                r = started => {
                    starting = None;
                    match r.unwrap_or_else(|e| Err(AgentError::Task(e.to_string()))) {
                        // The backoff ends with the first event: a watch that opens and fails
                        // at once keeps backing off.
                        Ok(w) => {
                            specs = Some(w);
                            self.replayed = Some(BTreeSet::new());
                        }
                        Err(e) => {
                            let wait = backoff.next();
                            tracing::warn!("spec watch: {e}; retrying in {wait:?}");
                            retry_at = tokio::time::Instant::now() + wait;
                        }
                    }
                }
                _ = expire.tick() => {
                    if self.fabric.connected() {
                        // Silent means nothing from the node is waiting here either: a feed
                        // that fell behind a burst must not take its backlog for deaths.
                        while let Some(b) = self.beats.try_next() {
                            self.on_heartbeats(b);
                        }
                        m.on_expire(&counters);
                    }
                }
            }
            if *stop.borrow() {
                break;
            }
        }
        if let Some(task) = starting {
            task.abort();
        }
    }

    /// Applies one heartbeat and those queued behind it (up to [`BEAT_BATCH`]), decoded
    /// outside the registry's lock and applied under one write.
    fn on_heartbeats(&mut self, first: qs_fabric::Incoming) {
        let mut frames = Vec::with_capacity(BEAT_BATCH);
        frames.push(first.payload);
        while frames.len() < BEAT_BATCH
            && let Some(b) = self.beats.try_next()
        {
            frames.push(b.payload);
        }
        // Verified as one batch; what is dropped is counted by the keyring.
        let beats: Vec<_> = self
            .auth
            .open_many(None, frames.iter().map(|f| &f[..]))
            .into_iter()
            .filter_map(|env| match env?.payload {
                Message::Heartbeat(status) => Some(status),
                _ => None,
            })
            .collect();
        let now = now();
        let m = &self.membership;
        let joined = m.update(|r| {
            let mut joined = Vec::new();
            for status in beats {
                let node = status.node.clone();
                if r.observe(status, now).is_some() {
                    joined.push(node);
                }
            }
            joined
        });
        m.changed_all(joined.into_iter().map(FleetChange::Joined));
    }

    /// Applies a change of the specs KV; a spec that breaks a rule is not applied (the one
    /// in force stays) and comes back as the event that says so.
    fn on_spec(&mut self, event: KvEvent) -> Option<Event> {
        let m = &self.membership;
        match event {
            KvEvent::Put(entry) => {
                let source = format!("kv {SPECS_BUCKET}/{}", entry.key);
                match qs_wire::decode_workload(&source, &entry.key, &entry.value) {
                    Ok(spec) => {
                        let name = spec.name.clone();
                        if let Some(seen) = &mut self.replayed {
                            seen.insert(name.clone());
                        }
                        let now = now();
                        m.update(|r| r.apply_spec(spec, now));
                        m.changed(FleetChange::SpecChanged(name));
                        None
                    }
                    Err(e) => {
                        // Not gone either: a replay must not take it for a deletion.
                        if let (Some(seen), Ok(name)) =
                            (&mut self.replayed, ServiceName::new(&entry.key))
                        {
                            seen.insert(name);
                        }
                        tracing::warn!("refused a spec: {e}");
                        let mut key = entry.key.clone();
                        key.truncate(qs_wire::spec::MAX_LABEL_BYTES);
                        Some(Event::SpecRefused {
                            key,
                            field: e.field,
                            reason: e.message,
                        })
                    }
                }
            }
            KvEvent::Delete { key, .. } => {
                if let Ok(name) = ServiceName::new(&key)
                    && m.update(|r| r.remove_spec(&name)).is_some()
                {
                    m.changed(FleetChange::SpecRemoved(name));
                }
                None
            }
            // A replay is complete: a spec it did not show was deleted while we were not
            // watching.
            KvEvent::Synced => {
                let seen = self.replayed.take()?;
                let gone = m.update(|r| {
                    let gone: Vec<ServiceName> = r
                        .specs()
                        .map(|s| s.name.clone())
                        .filter(|n| !seen.contains(n))
                        .collect();
                    for name in &gone {
                        r.remove_spec(name);
                    }
                    gone
                });
                for name in gone {
                    m.changed(FleetChange::SpecRemoved(name));
                }
                None
            }
        }
    }
}

impl Membership {
    pub fn new(config: &Config) -> Self {
        Membership {
            registry: Arc::new(RwLock::new(Registry::new(config))),
            inboxes: Arc::default(),
        }
    }

    /// Reads the registry. Hold the guard briefly: the feed waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The notices for one local node, from now until the returned value is dropped.
    pub fn subscribe(&self, node: &NodeId) -> Notices {
        let inbox = Arc::new(Inbox::default());
        self.inboxes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.clone(), inbox.clone());
        Notices {
            node: node.clone(),
            inbox,
            inboxes: self.inboxes.clone(),
        }
    }

    /// Whether `node` runs in this process (and is not frozen by chaos).
    pub fn is_local(&self, node: &NodeId) -> bool {
        self.inboxes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .is_some_and(|i| !i.paused.load(Ordering::Relaxed))
    }

    /// Chaos: a frozen node is judged by its silence like any other.
    pub fn set_paused(&self, node: &NodeId, paused: bool) {
        if let Some(inbox) = self
            .inboxes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
        {
            inbox.paused.store(paused, Ordering::Relaxed);
        }
    }

    /// A probe answered for `node`: it counts as heard from now.
    pub fn vouch(&self, node: &NodeId) {
        let now = now();
        self.update(|r| r.vouch(node, now));
    }

    /// The failure detector confirmed `node` dead.
    pub fn declare_dead(&self, node: &NodeId, counters: &Counters) {
        if self.update(|r| r.remove(node)) {
            counters.nodes_declared_dead.inc();
            self.changed(FleetChange::Died(node.clone()));
        }
    }

    /// The keyring quarantined `node`: it leaves the membership at once (its heartbeats are
    /// dropped from now on, so it would only be declared dead later).
    pub fn quarantined(&self, node: &NodeId) {
        if self.update(|r| r.remove(node)) {
            self.changed(FleetChange::Quarantined(node.clone()));
        }
    }

    fn update<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> T {
        f(&mut self.registry.write().unwrap_or_else(|p| p.into_inner()))
    }

    /// A change applied to the registry: the core says which nodes must reconcile what,
    /// and each of this process's recipients gets it in its notice.
    fn changed(&self, change: FleetChange) {
        self.changed_all([change]);
    }

    /// Announces a batch of changes: what each causes is merged first, so every inbox is
    /// posted to once (a burst of a thousand joins is one post per local node, not a
    /// thousand).
    fn changed_all(&self, changes: impl IntoIterator<Item = FleetChange>) {
        let mut every = Notice::default();
        let mut one: BTreeMap<NodeId, Notice> = BTreeMap::new();
        {
            let reg = self.read();
            for change in changes {
                let Some(caused) = qs_core::caused_by(&change, &reg) else {
                    continue;
                };
                match caused.to {
                    Recipients::Every => every.merge(caused.notice),
                    Recipients::Node(node) => one.entry(node).or_default().merge(caused.notice),
                }
            }
        }
        let inboxes = self.inboxes.read().unwrap_or_else(|p| p.into_inner());
        // Nothing for everyone (most heartbeat batches): only the named recipients' inboxes
        // are visited, none at all when the batch changed nothing.
        if every.is_empty() {
            for (node, notice) in one {
                if let Some(inbox) = inboxes.get(&node)
                    && !notice.is_empty()
                {
                    inbox.post(notice);
                }
            }
            return;
        }
        for (node, inbox) in inboxes.iter() {
            let mut notice = one.remove(node).unwrap_or_default();
            notice.merge(every.clone());
            if !notice.is_empty() {
                inbox.post(notice);
            }
        }
    }

    /// Subscribes to heartbeats; [`Feed::run`] then applies what comes. Subscribe before
    /// starting the nodes, so no early heartbeat is missed. `known` are the specs this
    /// process knew when it last ran (its desired-state cache): they rule until the specs KV
    /// answers, whose replay then replaces them.
    pub async fn feed<F: Fabric>(
        &self,
        fabric: &F,
        known: Vec<WorkloadSpec>,
        auth: Arc<crate::identity::Auth>,
        journal: crate::journal::Journal,
        recorder: NodeId,
    ) -> Result<Feed<F>, FabricError> {
        let now = now();
        self.update(|r| {
            for spec in known {
                r.apply_spec(spec, now);
            }
        });
        Ok(Feed {
            membership: self.clone(),
            fabric: fabric.clone(),
            beats: fabric.subscribe(&Topic::heartbeats()).await?,
            replayed: None,
            auth,
            journal,
            recorder,
        })
    }

    fn on_expire(&self, counters: &Counters) {
        // The nodes this process runs are alive while their runtimes are: they vouch for
        // themselves, so a busy process does not take its own late heartbeats for deaths.
        let local: Vec<NodeId> = self
            .inboxes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, i)| !i.paused.load(Ordering::Relaxed))
            .map(|(n, _)| n.clone())
            .collect();
        let now = now();
        let dead = self.update(|r| {
            for node in &local {
                r.vouch(node, now);
            }
            r.expire(now)
        });
        counters.nodes_declared_dead.inc_by(dead.len() as u64);
        self.changed_all(dead.into_iter().map(|s| FleetChange::Died(s.node)));
    }
}
