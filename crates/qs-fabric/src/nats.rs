//! The NATS backend: the fabric across processes and machines, on a real `nats-server` with
//! JetStream (2.10 or newer).
//!
//! Topic `t` of fleet `f` is the subject `qs.f.t`; KV bucket `b` is the JetStream KV bucket
//! `qs_f_b`; a node's ledger is mirrored into the JetStream stream `qs_f_ledger` under
//! `qs.f.ledger.<node>` ([`NatsLedger`]).

use crate::{
    Bytes, Entry, Fabric, FabricError, Incoming, Kv, KvEvent, LedgerSink, SUBSCRIPTION_BUFFER,
    Subscription, Topic, WATCH_BUFFER, Watch, check_bucket, check_entry, check_key, check_payload,
    check_publish, check_watch_prefix,
};
use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long a subscription waits for the server to confirm it.
const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// Most copies of a bucket or stream JetStream keeps.
pub const MAX_REPLICAS: usize = 5;

/// A failed NATS operation, named.
fn nats<E: std::fmt::Display>(op: &'static str) -> impl Fn(E) -> FabricError {
    move |e| FabricError::Nats {
        op,
        detail: e.to_string(),
    }
}

/// Aborts a forwarding task when its stream is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    /// `qs.<fleet>.`
    prefix: String,
    fleet: String,
    dropped: AtomicU64,
    /// Copies kept of the buckets and streams this fabric creates.
    replicas: usize,
}

/// See the module docs. Cloning shares the connection.
#[derive(Clone)]
pub struct NatsFabric {
    inner: Arc<Inner>,
}

impl NatsFabric {
    /// Connects to `url` as a member of `fleet` (a DNS-label name); buckets and streams it
    /// creates keep one copy.
    pub async fn connect(url: &str, fleet: &str) -> Result<NatsFabric, FabricError> {
        Self::connect_replicated(url, fleet, 1).await
    }

    /// Connects to any of `urls` (comma-separated servers of one cluster; the client moves
    /// to another when its server goes) as a member of `fleet`. Buckets and streams it
    /// creates keep `replicas` copies (1 to 5, at most the cluster's size), so they outlive
    /// the loss of a server.
    pub async fn connect_replicated(
        urls: &str,
        fleet: &str,
        replicas: usize,
    ) -> Result<NatsFabric, FabricError> {
        if !(1..=MAX_REPLICAS).contains(&replicas) {
            return Err(FabricError::Setting {
                what: "replicas",
                detail: format!("must be 1 to {MAX_REPLICAS}, got {replicas}"),
            });
        }
        let servers: Vec<async_nats::ServerAddr> = urls
            .split(',')
            .map(|u| u.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(|e| FabricError::Setting {
                what: "NATS URL",
                detail: format!("{urls:?}: {e}"),
            })?;
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(servers)
            .await
            .map_err(nats("connect"))?;
        Self::with_client(client, fleet, replicas).await
    }

    /// Uses an existing connection; what it creates keeps `replicas` copies.
    pub async fn with_client(
        client: async_nats::Client,
        fleet: &str,
        replicas: usize,
    ) -> Result<NatsFabric, FabricError> {
        check_bucket(fleet)?;
        let prefix = format!("qs.{fleet}.");
        Ok(NatsFabric {
            inner: Arc::new(Inner {
                js: jetstream::new(client.clone()),
                client,
                prefix,
                fleet: fleet.to_owned(),
                dropped: AtomicU64::new(0),
                replicas,
            }),
        })
    }

    fn subject(&self, topic: &Topic) -> String {
        format!("{}{}", self.inner.prefix, topic.as_str())
    }

    /// Messages dropped because a subscriber's buffer was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Waits until everything published so far has reached the server.
    pub async fn flush(&self) -> Result<(), FabricError> {
        self.inner.client.flush().await.map_err(nats("flush"))
    }
}

/// A NATS message as an [`Incoming`] of this fleet (`None` for subjects outside it).
fn incoming(prefix: &str, m: async_nats::Message) -> Option<Incoming> {
    let topic = Topic::parse(m.subject.strip_prefix(prefix)?).ok()?;
    Some(Incoming {
        topic,
        payload: m.payload,
    })
}

impl Fabric for NatsFabric {
    type Kv = NatsKv;
    type Ledger = NatsLedger;

    async fn publish(&self, topic: &Topic, payload: Bytes) -> Result<(), FabricError> {
        check_publish(topic, &payload)?;
        let subject = self.subject(topic);
        let sent = self.inner.client.publish(subject, payload).await;
        sent.map_err(nats("publish"))
    }

    async fn subscribe(&self, topic: &Topic) -> Result<Subscription, FabricError> {
        let mut sub = self
            .inner
            .client
            .subscribe(self.subject(topic))
            .await
            .map_err(nats("subscribe"))?;
        // The server has the interest before this returns, so nothing published after is
        // missed; while disconnected the client subscribes again when it reconnects.
        if self.connected() {
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, self.inner.client.flush()).await;
        }
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if let Some(i) = incoming(&inner.prefix, m)
                    && tx.try_send(i).is_err()
                {
                    if tx.is_closed() {
                        return;
                    }
                    inner.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(Subscription::new(rx, Box::new(AbortOnDrop(task))))
    }

    async fn ledger(&self, node: &qs_wire::NodeId) -> Result<NatsLedger, FabricError> {
        self.open_ledger(node).await
    }

    fn connected(&self) -> bool {
        self.inner.client.connection_state() == async_nats::connection::State::Connected
    }

    async fn kv(&self, bucket: &str) -> Result<NatsKv, FabricError> {
        check_bucket(bucket)?;
        let name = format!("qs_{}_{bucket}", self.inner.fleet);
        let store = match self.inner.js.get_key_value(&name).await {
            Ok(s) => s,
            Err(_) => self
                .inner
                .js
                .create_or_update_key_value(kv::Config {
                    bucket: name.clone(),
                    history: 1,
                    num_replicas: self.inner.replicas,
                    ..Default::default()
                })
                .await
                .map_err(nats("open KV bucket"))?,
        };
        Ok(NatsKv { store })
    }
}

/// One JetStream KV bucket.
#[derive(Clone)]
pub struct NatsKv {
    store: kv::Store,
}

impl NatsKv {
    async fn revision(&self, key: &str) -> Option<u64> {
        self.get(key).await.ok().flatten().map(|e| e.revision)
    }
}

impl Kv for NatsKv {
    async fn get(&self, key: &str) -> Result<Option<Entry>, FabricError> {
        check_key(key)?;
        let entry = self.store.entry(key).await.map_err(nats("KV get"))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| Entry {
                key: e.key,
                value: e.value,
                revision: e.revision,
            }))
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<u64, FabricError> {
        check_entry(key, &value)?;
        self.store.put(key, value).await.map_err(nats("KV put"))
    }

    async fn cas(
        &self,
        key: &str,
        value: Bytes,
        expected: Option<u64>,
    ) -> Result<u64, FabricError> {
        check_entry(key, &value)?;
        let conflict = |current| FabricError::Conflict {
            key: key.to_owned(),
            expected,
            current,
        };
        match expected {
            None => match self.store.create(key, value).await {
                Ok(r) => Ok(r),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    Err(conflict(self.revision(key).await))
                }
                Err(e) => Err(nats("KV compare-and-set")(e)),
            },
            Some(rev) => match self.store.update(key, value, rev).await {
                Ok(r) => Ok(r),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    Err(conflict(self.revision(key).await))
                }
                Err(e) => Err(nats("KV compare-and-set")(e)),
            },
        }
    }

    async fn delete(&self, key: &str) -> Result<(), FabricError> {
        check_key(key)?;
        self.store.delete(key).await.map_err(nats("KV delete"))
    }

    async fn watch(&self, prefix: &str) -> Result<Watch, FabricError> {
        check_watch_prefix(prefix)?;
        let filter = format!("{prefix}>");
        // With nothing under the prefix no entry comes to say the replay is over.
        let mut keys = self.store.keys().await.map_err(nats("KV keys"))?;
        let mut any = false;
        while let Some(k) = keys.next().await {
            if k.map_err(nats("KV keys"))?.starts_with(prefix) {
                any = true;
                break;
            }
        }
        // Entries past the bucket's last revision as the watch begins are changes, not the
        // replay (the consumer's pending count alone would count them into the replay).
        let mut stream = self.store.stream.clone();
        let start = stream
            .info()
            .await
            .map_err(nats("stream info"))?
            .state
            .last_sequence;
        let mut watch = self
            .store
            .watch_with_history(filter)
            .await
            .map_err(nats("KV watch"))?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let task = tokio::spawn(async move {
            // The replay is delivered whole (it waits for room); a live change that finds the
            // buffer full ends the watch with `Lagged`.
            let mut synced = !any;
            if synced && tx.send(Ok(KvEvent::Synced)).await.is_err() {
                return;
            }
            while let Some(e) = watch.next().await {
                let sent = match e {
                    Err(e) => tx.send(Err(nats("KV watch")(e))).await.is_ok(),
                    Ok(e) if !synced && e.revision > start => {
                        synced = true;
                        tx.send(Ok(KvEvent::Synced)).await.is_ok()
                            && tx.send(Ok(kv_event(e))).await.is_ok()
                    }
                    Ok(e) if !synced => {
                        synced = e.delta == 0;
                        tx.send(Ok(kv_event(e))).await.is_ok()
                            && (!synced || tx.send(Ok(KvEvent::Synced)).await.is_ok())
                    }
                    Ok(e) => match tx.try_send(Ok(kv_event(e))) {
                        Ok(()) => true,
                        Err(_) => {
                            if !tx.is_closed() {
                                let _ = tx.send(Err(FabricError::Lagged)).await;
                            }
                            false
                        }
                    },
                };
                if !sent {
                    return;
                }
            }
        });
        Ok(Watch::new(rx, Box::new(AbortOnDrop(task))))
    }
}

/// A JetStream KV entry as the fabric's event.
fn kv_event(e: kv::Entry) -> KvEvent {
    match e.operation {
        kv::Operation::Put => KvEvent::Put(Entry {
            key: e.key,
            value: e.value,
            revision: e.revision,
        }),
        kv::Operation::Delete | kv::Operation::Purge => KvEvent::Delete {
            key: e.key,
            revision: e.revision,
        },
    }
}

/// Header carrying the local ledger sequence number of a mirrored record.
const SEQ_HEADER: &str = "Qs-Ledger-Seq";

/// One node's ledger mirrored into the fleet's JetStream stream `qs_<fleet>_ledger`, subject
/// `qs.<fleet>.ledger.<node>`. Each record goes once: its message id is `<node>:<seq>` (the
/// server drops a repeat within its duplicate window), and a restarted mirror resumes after the
/// last sequence number the stream holds for the node.
pub struct NatsLedger {
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    subject: String,
    node: String,
}

impl NatsFabric {
    /// The mirror of `node`'s ledger (the stream is created when missing).
    async fn open_ledger(&self, node: &qs_wire::NodeId) -> Result<NatsLedger, FabricError> {
        let name = format!("qs_{}_ledger", self.inner.fleet);
        let stream = self
            .inner
            .js
            .get_or_create_stream(jetstream::stream::Config {
                name,
                subjects: vec![format!("{}ledger.>", self.inner.prefix)],
                num_replicas: self.inner.replicas,
                ..Default::default()
            })
            .await
            .map_err(nats("create ledger stream"))?;
        Ok(NatsLedger {
            js: self.inner.js.clone(),
            stream,
            subject: format!("{}ledger.{node}", self.inner.prefix),
            node: node.to_string(),
        })
    }
}

impl LedgerSink for NatsLedger {
    /// The first local sequence number the stream does not hold yet.
    async fn resume_from(&self) -> Result<u64, FabricError> {
        match self
            .stream
            .get_last_raw_message_by_subject(&self.subject)
            .await
        {
            Ok(m) => m
                .headers
                .get(SEQ_HEADER)
                .and_then(|v| v.as_str().parse::<u64>().ok())
                .map(|seq| seq + 1)
                .ok_or_else(|| FabricError::Nats {
                    op: "read ledger stream",
                    detail: format!("the last message of {} lacks {SEQ_HEADER}", self.subject),
                }),
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(0)
            }
            Err(e) => Err(nats("read ledger stream")(e)),
        }
    }

    /// Appends one record (its encoding) and waits for the stream's acknowledgement. Returns
    /// whether the stream took it as new (false: a duplicate it already held).
    async fn append(&self, seq: u64, record: Bytes) -> Result<bool, FabricError> {
        check_payload(&record)?;
        let publish = jetstream::message::PublishMessage::build()
            .payload(record)
            .message_id(format!("{}:{seq}", self.node))
            .header(SEQ_HEADER, seq.to_string().as_str());
        let ack = self
            .js
            .send_publish(self.subject.clone(), publish)
            .await
            .map_err(nats("append to ledger stream"))?
            .await
            .map_err(nats("append to ledger stream"))?;
        Ok(!ack.duplicate)
    }
}
