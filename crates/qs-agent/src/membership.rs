//! The process's one registry: fed once by heartbeats, the specs KV and expiry, and read by
//! every node runtime of the process. Each change that calls for a decision is announced to
//! the runtimes as a [`Notice`].
//!
//! A registry is a replica of what the fleet publishes, so every node of one process would
//! hold the same copy; keeping one (as the simulator does) spares decoding every heartbeat
//! once per virtual node.

use crate::runtime::{Counters, SPECS_BUCKET};
use qs_core::{Config, Registry};
use qs_fabric::{Fabric, FabricError, Kv, KvEvent, Topic};
use qs_wire::{Envelope, Message, NodeId, ServiceName, WorkloadSpec};
use std::collections::{BTreeMap, BTreeSet};

use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// How often silent nodes are looked for.
const EXPIRE_EVERY: Duration = Duration::from_millis(100);

/// What a node runtime must reconcile, coalesced until it looks: a burst of a thousand joins
/// is one full reconcile, and a queue cannot grow past the number of specs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Notice {
    /// Membership changed (a node joined or died) or a spec was removed: stop what is
    /// unwanted and reconcile every stewarded service.
    pub all: bool,
    /// Services whose spec arrived or changed.
    pub services: BTreeSet<ServiceName>,
}

#[derive(Default)]
struct Inbox {
    pending: Mutex<Notice>,
    ready: Notify,
}

impl Inbox {
    fn post(&self, f: impl FnOnce(&mut Notice)) {
        f(&mut self.pending.lock().unwrap_or_else(|p| p.into_inner()));
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
            if taken != Notice::default() {
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

/// The subscriptions that feed a [`Membership`].
pub struct Feed<K: Kv> {
    membership: Membership,
    /// While a watch replays: the specs it has shown so far.
    replayed: Option<BTreeSet<ServiceName>>,
    beats: qs_fabric::Subscription,
    kv: K,
    specs: qs_fabric::Watch,
}

impl<K: Kv> Feed<K> {
    /// Applies heartbeats, spec changes and expiry until `stop` turns true.
    pub async fn run(mut self, counters: Counters, mut stop: watch::Receiver<bool>) {
        let m = self.membership.clone();
        let mut expire = tokio::time::interval(EXPIRE_EVERY);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                Some(b) = self.beats.next() => m.on_heartbeat(&b.payload, &counters),
                e = self.specs.next() => match e {
                    Some(e) => self.on_spec(e),
                    // The watch fell behind and ended: watch again (it replays every spec).
                    None => match self.kv.watch("").await {
                        Ok(w) => {
                            self.specs = w;
                            self.replayed = Some(BTreeSet::new());
                        }
                        Err(e) => {
                            tracing::error!("spec watch: {e}; retrying");
                            tokio::time::sleep(EXPIRE_EVERY).await;
                        }
                    },
                },
                _ = expire.tick() => m.on_expire(),
            }
            if *stop.borrow() {
                return;
            }
        }
    }
}

impl<K: Kv> Feed<K> {
    fn on_spec(&mut self, event: Result<KvEvent, FabricError>) {
        let m = &self.membership;
        match event {
            Ok(KvEvent::Put(entry)) => match serde_json::from_slice::<WorkloadSpec>(&entry.value) {
                Ok(spec) => {
                    let name = spec.name.clone();
                    if let Some(seen) = &mut self.replayed {
                        seen.insert(name.clone());
                    }
                    let now = crate::runtime::now();
                    m.update(|r| r.apply_spec(spec, now));
                    m.reconcile(name);
                }
                Err(e) => tracing::warn!(key = entry.key, "ignored an unreadable spec: {e}"),
            },
            Ok(KvEvent::Delete { key, .. }) => {
                if let Ok(name) = ServiceName::new(&key)
                    && m.update(|r| r.remove_spec(&name)).is_some()
                {
                    m.reconcile_all();
                }
            }
            // A replay is complete: a spec it did not show was deleted while we were not
            // watching.
            Ok(KvEvent::Synced) => {
                let Some(seen) = self.replayed.take() else {
                    return;
                };
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
                if !gone.is_empty() {
                    m.reconcile_all();
                }
            }
            Err(e) => tracing::warn!("spec watch: {e}"),
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

    fn update<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> T {
        f(&mut self.registry.write().unwrap_or_else(|p| p.into_inner()))
    }

    /// Every local node reconciles everything.
    fn reconcile_all(&self) {
        for inbox in self
            .inboxes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            inbox.post(|n| n.all = true);
        }
    }

    /// The service's steward reconciles it, if that node runs in this process; only the
    /// steward acts on one service.
    fn reconcile(&self, service: ServiceName) {
        let Some(steward) = self.read().steward(&service).cloned() else {
            return;
        };
        if let Some(inbox) = self
            .inboxes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&steward)
        {
            inbox.post(|n| {
                n.services.insert(service);
            });
        }
    }

    /// Subscribes to what feeds the registry; [`Feed::run`] then applies it. Subscribe before
    /// starting the nodes, so no early heartbeat is missed.
    pub async fn feed<F: Fabric>(&self, fabric: &F) -> Result<Feed<F::Kv>, FabricError> {
        let kv = fabric.kv(SPECS_BUCKET).await?;
        Ok(Feed {
            membership: self.clone(),
            beats: fabric.subscribe(&Topic::heartbeats()).await?,
            specs: kv.watch("").await?,
            kv,
            replayed: Some(BTreeSet::new()),
        })
    }

    fn on_heartbeat(&self, payload: &[u8], counters: &Counters) {
        match Envelope::<Message>::decode(payload) {
            Ok(Envelope {
                payload: Message::Heartbeat(status),
                ..
            }) => {
                let now = crate::runtime::now();
                if self.update(|r| r.observe(status, now)).is_some() {
                    self.reconcile_all();
                }
            }
            Ok(_) => {}
            Err(e) => {
                counters.messages_malformed.inc();
                tracing::warn!("dropped a malformed heartbeat: {e}");
            }
        }
    }

    fn on_expire(&self) {
        // A death is a membership change: reconciling everything covers the services
        // that lost instances with the dead node.
        if !self.update(|r| r.expire(crate::runtime::now())).is_empty() {
            self.reconcile_all();
        }
    }
}
