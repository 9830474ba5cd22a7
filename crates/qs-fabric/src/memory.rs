//! The in-memory fabric: the embedded default, one process, no network.
//!
//! It keeps the semantics of the NATS backend: bytes in, bytes out; slow subscribers lose
//! messages instead of blocking publishers; KV revisions grow per bucket; watches replay the
//! current state first.

use crate::{
    Entry, Fabric, FabricError, Incoming, Kv, KvEvent, LedgerSink, SUBSCRIPTION_BUFFER,
    Subscription, Topic, WATCH_BUFFER, Watch, check_bucket, check_entry, check_key, check_publish,
    check_watch_prefix,
};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use tokio::sync::mpsc;

struct Sub {
    pattern: Topic,
    tx: mpsc::Sender<Incoming>,
}

#[derive(Default)]
struct Inner {
    subs: BTreeMap<u64, Sub>,
    /// Subscriptions to exact topics, by topic: a publish finds them without a scan.
    exact: HashMap<Topic, BTreeSet<u64>>,
    /// Subscriptions with wildcards, by their first token (`*` and `>` when that is the
    /// wildcard): a publish matches only those that can match it.
    patterns: BTreeMap<String, BTreeSet<u64>>,
    next_id: u64,
    buckets: BTreeMap<String, Arc<Mutex<Bucket>>>,
    objects: BTreeMap<String, Arc<Mutex<BTreeMap<String, Bytes>>>>,
    /// Each node's mirrored ledger.
    ledgers: BTreeMap<qs_wire::NodeId, Arc<Mutex<BTreeMap<u64, Bytes>>>>,
}

/// See the module docs. Cloning shares the same fabric.
#[derive(Clone, Default)]
pub struct MemoryFabric {
    inner: Arc<Mutex<Inner>>,
    dropped: Arc<AtomicU64>,
}

fn first_token(topic: &Topic) -> &str {
    topic.as_str().split('.').next().unwrap_or("")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these maps half-updated in a way that
    // matters more than losing the fabric, so keep serving.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Unsubscribes when dropped.
struct SubGuard {
    inner: Weak<Mutex<Inner>>,
    id: u64,
}

impl Drop for SubGuard {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            let mut inner = lock(&inner);
            if let Some(sub) = inner.subs.remove(&self.id) {
                let head = first_token(&sub.pattern).to_owned();
                if let Some(ids) = inner.patterns.get_mut(&head) {
                    ids.remove(&self.id);
                    if ids.is_empty() {
                        inner.patterns.remove(&head);
                    }
                }
                if let Some(ids) = inner.exact.get_mut(&sub.pattern) {
                    ids.remove(&self.id);
                    if ids.is_empty() {
                        inner.exact.remove(&sub.pattern);
                    }
                }
            }
        }
    }
}

impl MemoryFabric {
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages lost because a subscriber's buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn deliver(&self, topic: &Topic, payload: Bytes) -> Result<(), FabricError> {
        check_publish(topic, &payload)?;
        let inner = lock(&self.inner);
        let exact = inner.exact.get(topic).into_iter().flatten().copied();
        let head = first_token(topic);
        let mut wild = [head, "*", ">"]
            .into_iter()
            .filter_map(|h| inner.patterns.get(h))
            .flatten()
            .copied()
            .filter(|id| inner.subs.get(id).is_some_and(|s| s.pattern.matches(topic)))
            .peekable();
        let send = |id: u64| {
            let Some(sub) = inner.subs.get(&id) else {
                return;
            };
            let msg = Incoming {
                topic: topic.clone(),
                payload: payload.clone(),
            };
            if sub.tx.try_send(msg).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        };
        // Delivery order does not depend on how a subscriber subscribed: by subscription id.
        // Most topics have exact subscribers only, already in order.
        if wild.peek().is_none() {
            exact.for_each(send);
        } else {
            let mut ids: Vec<u64> = exact.chain(wild).collect();
            ids.sort_unstable();
            ids.into_iter().for_each(send);
        }
        Ok(())
    }

    fn subscribe_now(&self, topic: &Topic) -> Subscription {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        let mut inner = lock(&self.inner);
        let id = inner.next_id;
        inner.next_id += 1;
        if topic.is_pattern() {
            let head = first_token(topic).to_owned();
            inner.patterns.entry(head).or_default().insert(id);
        } else {
            inner.exact.entry(topic.clone()).or_default().insert(id);
        }
        inner.subs.insert(
            id,
            Sub {
                pattern: topic.clone(),
                tx,
            },
        );
        let guard = SubGuard {
            inner: Arc::downgrade(&self.inner),
            id,
        };
        Subscription::new(rx, Box::new(guard))
    }
}

impl Fabric for MemoryFabric {
    type Kv = MemoryKv;
    type Ledger = MemoryLedger;
    type Objects = MemoryObjects;

    async fn publish(&self, topic: &Topic, payload: Bytes) -> Result<(), FabricError> {
        self.deliver(topic, payload)
    }

    async fn subscribe(&self, topic: &Topic) -> Result<Subscription, FabricError> {
        Ok(self.subscribe_now(topic))
    }

    async fn kv(&self, bucket: &str) -> Result<MemoryKv, FabricError> {
        check_bucket(bucket)?;
        let mut inner = lock(&self.inner);
        let b = inner.buckets.entry(bucket.to_owned()).or_default().clone();
        Ok(MemoryKv { bucket: b })
    }

    async fn objects(&self, bucket: &str) -> Result<MemoryObjects, FabricError> {
        check_bucket(bucket)?;
        let mut inner = lock(&self.inner);
        let objects = inner.objects.entry(bucket.to_owned()).or_default().clone();
        Ok(MemoryObjects { objects })
    }

    async fn ledger(&self, node: &qs_wire::NodeId) -> Result<MemoryLedger, FabricError> {
        let mut inner = lock(&self.inner);
        let records = inner.ledgers.entry(node.clone()).or_default().clone();
        Ok(MemoryLedger { records })
    }
}

/// Most objects one bucket of the in-memory fabric holds.
pub const MAX_OBJECTS: usize = 100_000;

/// An object store bucket of the in-memory fabric.
#[derive(Clone)]
pub struct MemoryObjects {
    objects: Arc<Mutex<BTreeMap<String, Bytes>>>,
}

impl crate::Objects for MemoryObjects {
    async fn put(&self, name: &str, value: Bytes) -> Result<(), FabricError> {
        crate::check_object(name, &value)?;
        let mut objects = lock(&self.objects);
        if objects.len() >= MAX_OBJECTS && !objects.contains_key(name) {
            return Err(FabricError::Full {
                what: "an object bucket",
                max: MAX_OBJECTS,
            });
        }
        objects.insert(name.to_owned(), value);
        Ok(())
    }

    async fn get(&self, name: &str) -> Result<Option<Bytes>, FabricError> {
        crate::check_key(name)?;
        Ok(lock(&self.objects).get(name).cloned())
    }

    async fn delete(&self, name: &str) -> Result<(), FabricError> {
        crate::check_key(name)?;
        lock(&self.objects).remove(name);
        Ok(())
    }
}

/// Most records one node's ledger keeps in the in-memory fabric.
pub const MAX_LEDGER_RECORDS: usize = 1 << 20;

/// One node's ledger as the in-memory fabric keeps it (for a fleet in one process, and for
/// tests of the mirror).
#[derive(Clone)]
pub struct MemoryLedger {
    records: Arc<Mutex<BTreeMap<u64, Bytes>>>,
}

impl LedgerSink for MemoryLedger {
    async fn resume_from(&self) -> Result<u64, FabricError> {
        Ok(lock(&self.records)
            .last_key_value()
            .map_or(0, |(seq, _)| seq + 1))
    }

    async fn append(&self, seq: u64, record: Bytes) -> Result<bool, FabricError> {
        crate::check_payload(&record)?;
        let mut records = lock(&self.records);
        if records.contains_key(&seq) {
            return Ok(false);
        }
        if records.len() >= MAX_LEDGER_RECORDS {
            return Err(FabricError::Full {
                what: "the in-memory ledger stream",
                max: MAX_LEDGER_RECORDS,
            });
        }
        records.insert(seq, record);
        Ok(true)
    }
}

struct Watcher {
    prefix: String,
    tx: mpsc::Sender<Result<KvEvent, FabricError>>,
}

#[derive(Default)]
struct Bucket {
    entries: BTreeMap<String, Entry>,
    revision: u64,
    watchers: BTreeMap<u64, Watcher>,
    next_watcher: u64,
}

impl Bucket {
    fn notify(&mut self, key: &str, event: KvEvent) {
        self.watchers.retain(|_, w| {
            if !key.starts_with(&w.prefix) {
                return true;
            }
            match w.tx.try_send(Ok(event.clone())) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // Too far behind: end this watch loudly rather than skip a change.
                    let _ = w.tx.try_send(Err(FabricError::Lagged));
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }
}

/// One in-memory KV bucket.
#[derive(Clone)]
pub struct MemoryKv {
    bucket: Arc<Mutex<Bucket>>,
}

/// Removes a watcher when its [`Watch`] is dropped.
struct WatchGuard {
    bucket: Weak<Mutex<Bucket>>,
    id: u64,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        if let Some(b) = self.bucket.upgrade() {
            lock(&b).watchers.remove(&self.id);
        }
    }
}

impl Kv for MemoryKv {
    async fn get(&self, key: &str) -> Result<Option<Entry>, FabricError> {
        check_key(key)?;
        Ok(lock(&self.bucket).entries.get(key).cloned())
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<u64, FabricError> {
        check_entry(key, &value)?;
        let mut b = lock(&self.bucket);
        Ok(write(&mut b, key, value))
    }

    async fn cas(
        &self,
        key: &str,
        value: Bytes,
        expected: Option<u64>,
    ) -> Result<u64, FabricError> {
        check_entry(key, &value)?;
        let mut b = lock(&self.bucket);
        let current = b.entries.get(key).map(|e| e.revision);
        if current != expected {
            return Err(FabricError::Conflict {
                key: key.to_owned(),
                expected,
                current,
            });
        }
        Ok(write(&mut b, key, value))
    }

    async fn delete(&self, key: &str) -> Result<(), FabricError> {
        check_key(key)?;
        let mut b = lock(&self.bucket);
        if b.entries.remove(key).is_some() {
            b.revision += 1;
            let revision = b.revision;
            b.notify(
                key,
                KvEvent::Delete {
                    key: key.to_owned(),
                    revision,
                },
            );
        }
        Ok(())
    }

    async fn watch(&self, prefix: &str) -> Result<Watch, FabricError> {
        check_watch_prefix(prefix)?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let mut b = lock(&self.bucket);
        let current: Vec<Entry> = b
            .entries
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e.clone())
            .collect();
        let id = b.next_watcher;
        b.next_watcher += 1;
        b.watchers.insert(
            id,
            Watcher {
                prefix: prefix.to_owned(),
                tx,
            },
        );
        let guard = WatchGuard {
            bucket: Arc::downgrade(&self.bucket),
            id,
        };
        Ok(Watch::with_snapshot(current, rx, Box::new(guard)))
    }
}

fn write(b: &mut Bucket, key: &str, value: Bytes) -> u64 {
    b.revision += 1;
    let entry = Entry {
        key: key.to_owned(),
        value,
        revision: b.revision,
    };
    b.entries.insert(key.to_owned(), entry.clone());
    b.notify(key, KvEvent::Put(entry));
    b.revision
}
