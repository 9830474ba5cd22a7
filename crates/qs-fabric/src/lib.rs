//! The fabric: how nodes talk and share state, as one small trait with interchangeable
//! backends.
//!
//! Publish, subscribe, directed send, a KV with get / put / compare-and-set on revision /
//! watch, and a sink for each node's ledger.
//! [`memory::MemoryFabric`] is the embedded default (one process); the NATS JetStream backend
//! implements the same trait for real fleets. Both must pass [`conformance`], the one suite
//! that defines what a backend is.
//!
//! Payloads are bytes: callers encode with `qs-wire`, so every backend, the in-memory one
//! included, carries exactly what would cross a network.

#[cfg(feature = "testing")]
pub mod conformance;
pub mod memory;
pub mod nats;
mod nats_security;
#[cfg(feature = "testing")]
pub mod nats_server;
mod nats_watch;
#[cfg(feature = "testing")]
pub mod query_rounds;
mod topic;

pub use bytes::Bytes;
pub use topic::Topic;

use qs_wire::NodeId;
use std::future::Future;

/// Largest payload a backend accepts (NATS' default `max_payload`).
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Messages buffered per subscription; past this a slow subscriber loses messages (counted),
/// as a NATS slow consumer does.
pub const SUBSCRIPTION_BUFFER: usize = 4096;
/// Events buffered per KV watch; past this the watch ends with [`FabricError::Lagged`] and the
/// caller starts a new one, which replays the current state.
pub const WATCH_BUFFER: usize = 4096;

/// What went wrong, and with what.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FabricError {
    #[error("invalid topic {topic:?}: {why}")]
    InvalidTopic { topic: String, why: &'static str },
    #[error("invalid KV key {key:?}: {why}")]
    InvalidKey { key: String, why: &'static str },
    #[error("invalid KV bucket {bucket:?}: {why}")]
    InvalidBucket { bucket: String, why: &'static str },
    #[error("payload of {size} bytes exceeds the limit of {max}")]
    PayloadTooLarge { size: usize, max: usize },
    /// Compare-and-set lost: the key is not at the expected revision.
    #[error("conflict on {key:?}: expected revision {expected:?}, found {current:?}")]
    Conflict {
        key: String,
        expected: Option<u64>,
        current: Option<u64>,
    },
    #[error("the watch fell {WATCH_BUFFER} events behind and was closed; watch again")]
    Lagged,
    #[error("the fabric is closed")]
    Closed,
    /// A NATS operation failed (the server is unreachable, slow, or refused it).
    #[error("NATS {op}: {detail}")]
    Nats { op: &'static str, detail: String },
    /// The server refused this client: its credentials, or the TLS handshake.
    #[error("the NATS server refused this client ({detail}); check [nats] in the config")]
    Refused { detail: String },
    /// A setting of the backend is invalid (a URL, a replica count).
    #[error("invalid {what}: {detail}")]
    Setting { what: &'static str, detail: String },
    /// A bounded store of the in-memory backend is full.
    #[error("{what} is full ({max} entries)")]
    Full { what: &'static str, max: usize },
}

impl FabricError {
    /// A failed NATS operation, named: `map_err(FabricError::nats("KV put"))`.
    pub(crate) fn nats<E: std::fmt::Display>(op: &'static str) -> impl Fn(E) -> FabricError {
        move |e| FabricError::Nats {
            op,
            detail: e.to_string(),
        }
    }
}

/// A message as a subscriber receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    pub topic: Topic,
    pub payload: Bytes,
}

/// A KV entry at one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Bytes,
    /// Grows with every change in the bucket.
    pub revision: u64,
}

/// One change seen by a KV watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvEvent {
    Put(Entry),
    Delete {
        key: String,
        revision: u64,
    },
    /// Every entry that existed when the watch began has been delivered; what follows are
    /// changes. A watcher that starts over after a lag drops what it did not see again here.
    Synced,
}

/// A stream of messages for one subscription; dropping it unsubscribes.
pub struct Subscription {
    source: Source,
    _guard: Box<dyn Send + Sync>,
}

/// Where a subscription's messages come from: a bounded channel a backend fills, or the
/// backend's own bounded stream, read directly (no task in between).
enum Source {
    Channel(tokio::sync::mpsc::Receiver<Incoming>),
    Stream(std::pin::Pin<Box<dyn futures_util::Stream<Item = Incoming> + Send>>),
}

impl Subscription {
    pub fn new(rx: tokio::sync::mpsc::Receiver<Incoming>, guard: Box<dyn Send + Sync>) -> Self {
        Subscription {
            source: Source::Channel(rx),
            _guard: guard,
        }
    }

    /// A subscription read straight from a backend's stream, which must be bounded itself.
    pub fn from_stream(
        stream: impl futures_util::Stream<Item = Incoming> + Send + 'static,
        guard: Box<dyn Send + Sync>,
    ) -> Self {
        Subscription {
            source: Source::Stream(Box::pin(stream)),
            _guard: guard,
        }
    }

    /// The next message; `None` once the fabric is gone.
    pub async fn next(&mut self) -> Option<Incoming> {
        match &mut self.source {
            Source::Channel(rx) => rx.recv().await,
            Source::Stream(s) => futures_util::StreamExt::next(s).await,
        }
    }

    /// A message already delivered and queued, without waiting.
    pub fn try_next(&mut self) -> Option<Incoming> {
        match &mut self.source {
            Source::Channel(rx) => rx.try_recv().ok(),
            // Outside tokio's cooperative budget: a task that spent it would otherwise see
            // an empty buffer while messages wait (as `try_recv` never does).
            Source::Stream(s) => futures_util::FutureExt::now_or_never(tokio::task::unconstrained(
                futures_util::StreamExt::next(s),
            ))
            .flatten(),
        }
    }
}

/// A stream of KV changes: first every matching entry as it is now, then
/// [`KvEvent::Synced`], then each change.
pub struct Watch {
    /// The entries as they were when the watch began (as large as the bucket, which the
    /// change buffer need not be), then the `Synced` marker.
    snapshot: std::collections::VecDeque<KvEvent>,
    rx: tokio::sync::mpsc::Receiver<Result<KvEvent, FabricError>>,
    _guard: Box<dyn Send + Sync>,
}

impl Watch {
    /// A watch whose backend sends the current entries and `Synced` through `rx` itself.
    pub fn new(
        rx: tokio::sync::mpsc::Receiver<Result<KvEvent, FabricError>>,
        guard: Box<dyn Send + Sync>,
    ) -> Self {
        Watch {
            snapshot: Default::default(),
            rx,
            _guard: guard,
        }
    }

    /// A watch that yields `current`, then `Synced`, then what arrives on `rx`.
    pub fn with_snapshot(
        current: Vec<Entry>,
        rx: tokio::sync::mpsc::Receiver<Result<KvEvent, FabricError>>,
        guard: Box<dyn Send + Sync>,
    ) -> Self {
        let mut snapshot: std::collections::VecDeque<KvEvent> =
            current.into_iter().map(KvEvent::Put).collect();
        snapshot.push_back(KvEvent::Synced);
        Watch {
            snapshot,
            rx,
            _guard: guard,
        }
    }

    /// The next event; `None` once the fabric is gone.
    pub async fn next(&mut self) -> Option<Result<KvEvent, FabricError>> {
        if let Some(e) = self.snapshot.pop_front() {
            return Some(Ok(e));
        }
        self.rx.recv().await
    }
}

/// Messaging between nodes.
pub trait Fabric: Clone + Send + Sync + 'static {
    type Kv: Kv;
    type Ledger: LedgerSink;
    type Objects: Objects;

    /// Sends to every current subscriber of a matching topic.
    fn publish(
        &self,
        topic: &Topic,
        payload: Bytes,
    ) -> impl Future<Output = Result<(), FabricError>> + Send;

    /// Receives everything published to topics matching `topic` (`*` matches one token,
    /// `>` the rest) from now on.
    fn subscribe(
        &self,
        topic: &Topic,
    ) -> impl Future<Output = Result<Subscription, FabricError>> + Send;

    /// Opens (creating if needed) a KV bucket.
    fn kv(&self, bucket: &str) -> impl Future<Output = Result<Self::Kv, FabricError>> + Send;

    /// Opens (creating if needed) an object store bucket: values too large for a KV entry.
    fn objects(
        &self,
        bucket: &str,
    ) -> impl Future<Output = Result<Self::Objects, FabricError>> + Send;

    /// Opens (creating if needed) the fleet's copy of `node`'s ledger.
    fn ledger(
        &self,
        node: &NodeId,
    ) -> impl Future<Output = Result<Self::Ledger, FabricError>> + Send;

    /// Whether this node reaches the rest of the fleet now. In-process backends always do;
    /// a networked one does not while its server is unreachable (the node is then
    /// autonomous: it keeps its instances and declares no peer dead).
    fn connected(&self) -> bool {
        true
    }

    /// Directed send to one node's inbox.
    fn send(
        &self,
        node: &NodeId,
        payload: Bytes,
    ) -> impl Future<Output = Result<(), FabricError>> + Send {
        async move { self.publish(&Topic::node_rpc(node), payload).await }
    }
}

/// A node's ledger as the fleet keeps it, outside the node: records appended in order, each
/// once, so the fleet's history outlives any one machine.
pub trait LedgerSink: Send + Sync + 'static {
    /// The first sequence number the sink does not hold yet (0 when empty).
    fn resume_from(&self) -> impl Future<Output = Result<u64, FabricError>> + Send;

    /// Appends record `seq` (its encoding); `false` when the sink held it already.
    fn append(
        &self,
        seq: u64,
        record: Bytes,
    ) -> impl Future<Output = Result<bool, FabricError>> + Send;
}

/// A replicated key-value bucket with revisions.
pub trait Kv: Clone + Send + Sync + 'static {
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Entry>, FabricError>> + Send;

    /// Writes unconditionally; returns the new revision.
    fn put(&self, key: &str, value: Bytes)
    -> impl Future<Output = Result<u64, FabricError>> + Send;

    /// Writes only if the key is at `expected` (`None`: only if absent); returns the new
    /// revision, or [`FabricError::Conflict`].
    fn cas(
        &self,
        key: &str,
        value: Bytes,
        expected: Option<u64>,
    ) -> impl Future<Output = Result<u64, FabricError>> + Send;

    fn delete(&self, key: &str) -> impl Future<Output = Result<(), FabricError>> + Send;

    /// Every key under `prefix` (`""` for all), as it is now, then every change.
    fn watch(&self, prefix: &str) -> impl Future<Output = Result<Watch, FabricError>> + Send;
}

/// Largest object an object store bucket takes.
pub const MAX_OBJECT_BYTES: usize = 16 * 1024 * 1024;

/// A bucket of named objects, each written whole and read whole.
pub trait Objects: Clone + Send + Sync + 'static {
    /// Writes `name` (replacing what it held); at most [`MAX_OBJECT_BYTES`].
    fn put(&self, name: &str, value: Bytes)
    -> impl Future<Output = Result<(), FabricError>> + Send;

    /// `name`'s bytes; `None` when there is no such object.
    fn get(&self, name: &str) -> impl Future<Output = Result<Option<Bytes>, FabricError>> + Send;

    fn delete(&self, name: &str) -> impl Future<Output = Result<(), FabricError>> + Send;
}

/// Checks an object against [`MAX_OBJECT_BYTES`] and its name against the KV key rule.
pub fn check_object(name: &str, value: &Bytes) -> Result<(), FabricError> {
    check_key(name)?;
    if value.len() > MAX_OBJECT_BYTES {
        return Err(FabricError::PayloadTooLarge {
            size: value.len(),
            max: MAX_OBJECT_BYTES,
        });
    }
    Ok(())
}

/// Checks a payload against [`MAX_PAYLOAD_BYTES`].
pub fn check_payload(payload: &Bytes) -> Result<(), FabricError> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(FabricError::PayloadTooLarge {
            size: payload.len(),
            max: MAX_PAYLOAD_BYTES,
        });
    }
    Ok(())
}

/// Checks a KV key: NATS' rule, `[-/_=.a-zA-Z0-9]+`, not starting or ending with `.`.
pub fn check_key(key: &str) -> Result<(), FabricError> {
    let refuse = |why| {
        Err(FabricError::InvalidKey {
            key: key.to_owned(),
            why,
        })
    };
    if key.is_empty() {
        return refuse("empty");
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
    {
        return refuse("only letters, digits and - / _ = . are allowed");
    }
    if key.starts_with('.') || key.ends_with('.') {
        return refuse("must not start or end with '.'");
    }
    Ok(())
}

/// Checks what is published: a concrete topic (no wildcard) and a payload within the limit.
pub(crate) fn check_publish(topic: &Topic, payload: &Bytes) -> Result<(), FabricError> {
    if topic.is_pattern() {
        return Err(FabricError::InvalidTopic {
            topic: topic.to_string(),
            why: "wildcards are for subscriptions, not for publishing",
        });
    }
    check_payload(payload)
}

/// Checks what is written to a KV: a valid key and a payload within the limit.
pub(crate) fn check_entry(key: &str, value: &Bytes) -> Result<(), FabricError> {
    check_key(key)?;
    check_payload(value)
}

/// Checks a watch prefix: empty (the whole bucket) or whole key tokens ending with '.'
/// (NATS filters by token, so `svc.` can be watched and `sv` cannot).
pub fn check_watch_prefix(prefix: &str) -> Result<(), FabricError> {
    if prefix.is_empty() {
        return Ok(());
    }
    check_key(prefix.trim_end_matches('.'))?;
    if !prefix.ends_with('.') {
        return Err(FabricError::InvalidKey {
            key: prefix.to_owned(),
            why: "a watch prefix is empty or ends with '.'",
        });
    }
    Ok(())
}

/// Checks a bucket name: `[-_a-zA-Z0-9]+`.
pub fn check_bucket(bucket: &str) -> Result<(), FabricError> {
    if bucket.is_empty()
        || !bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
    {
        return Err(FabricError::InvalidBucket {
            bucket: bucket.to_owned(),
            why: "must be non-empty letters, digits, - and _",
        });
    }
    Ok(())
}
