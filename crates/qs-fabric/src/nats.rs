//! The NATS backend: the fabric across processes and machines, on a real `nats-server` with
//! JetStream (2.10 or newer).
//!
//! Topic `t` of fleet `f` is the subject `qs.f.t`; KV bucket `b` is the JetStream KV bucket
//! `qs_f_b`; a node's ledger is mirrored into the JetStream stream `qs_f_ledger` under
//! `qs.f.ledger.<node>` ([`NatsLedger`]).

use crate::nats_watch::Reconnects;
use crate::{
    Bytes, Entry, Fabric, FabricError, Incoming, Kv, LedgerSink, SUBSCRIPTION_BUFFER, Subscription,
    Topic, Watch, check_bucket, check_entry, check_key, check_payload, check_publish,
    check_watch_prefix,
};
use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// How long a subscription waits for the server to confirm it.
const BARRIER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// Most copies of a bucket or stream JetStream keeps.
pub const MAX_REPLICAS: usize = 5;

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    /// `qs.<fleet>.`
    prefix: String,
    fleet: String,
    /// Messages the client dropped for a full subscription buffer, counted from its
    /// slow-consumer events: a lower bound, since the client drops its own events past 128
    /// queued.
    dropped: Arc<AtomicU64>,
    /// This connection's reconnections: each KV watch re-creates its consumer after one.
    reconnects: Arc<Reconnects>,
    /// Copies kept of the buckets and streams this fabric creates.
    replicas: usize,
}

/// Counts of what one connection carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Traffic {
    /// What was carried between `earlier` and `self`.
    pub fn since(self, earlier: Traffic) -> Traffic {
        Traffic {
            messages_in: self.messages_in.saturating_sub(earlier.messages_in),
            messages_out: self.messages_out.saturating_sub(earlier.messages_out),
            bytes_in: self.bytes_in.saturating_sub(earlier.bytes_in),
            bytes_out: self.bytes_out.saturating_sub(earlier.bytes_out),
        }
    }
}

/// See the module docs. Cloning shares the connection.
#[derive(Clone)]
pub struct NatsFabric {
    inner: Arc<Inner>,
}

pub use crate::nats_security::{ClientCertificate, NatsSecurity, UserPassword};

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
        Self::connect_secured(urls, fleet, replicas, &NatsSecurity::default()).await
    }

    /// [`NatsFabric::connect_replicated`] with credentials and TLS. A server that refuses
    /// the credentials or the TLS handshake is an error at once (it will not change its
    /// mind); one that cannot be reached is tried again in the background.
    pub async fn connect_secured(
        urls: &str,
        fleet: &str,
        replicas: usize,
        security: &NatsSecurity,
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
        // Each subscription's own buffer holds SUBSCRIPTION_BUFFER messages; past that the
        // client drops them and says so, and they are counted.
        let dropped = Arc::new(AtomicU64::new(0));
        let reconnects = Arc::new(Reconnects::new());
        let options = || -> Result<async_nats::ConnectOptions, FabricError> {
            let (counted, reconnected) = (dropped.clone(), reconnects.clone());
            let options = async_nats::ConnectOptions::new()
                .subscription_capacity(SUBSCRIPTION_BUFFER)
                .event_callback(move |event| {
                    if let async_nats::Event::SlowConsumer(_) = event {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    reconnected.on_event(&event);
                    std::future::ready(())
                });
            security.apply(options)
        };
        use async_nats::ConnectErrorKind as Kind;
        let client = match options()?.connect(servers.clone()).await {
            Ok(client) => client,
            Err(e) if matches!(e.kind(), Kind::Io | Kind::TimedOut | Kind::Dns) => options()?
                .retry_on_initial_connect()
                .connect(servers)
                .await
                .map_err(FabricError::nats("connect"))?,
            Err(e) => {
                return Err(FabricError::Refused {
                    detail: format!("{}: {e}", e.kind()),
                });
            }
        };
        Self::with_client(client, fleet, replicas, dropped, reconnects)
    }

    /// Uses a connection opened as above; what it creates keeps `replicas` copies.
    fn with_client(
        client: async_nats::Client,
        fleet: &str,
        replicas: usize,
        dropped: Arc<AtomicU64>,
        reconnects: Arc<Reconnects>,
    ) -> Result<NatsFabric, FabricError> {
        check_bucket(fleet)?;
        let prefix = format!("qs.{fleet}.");
        Ok(NatsFabric {
            inner: Arc::new(Inner {
                js: jetstream::new(client.clone()),
                client,
                prefix,
                fleet: fleet.to_owned(),
                dropped,
                reconnects,
                replicas,
            }),
        })
    }

    fn subject(&self, topic: &Topic) -> String {
        format!("{}{}", self.inner.prefix, topic.as_str())
    }

    /// How far this machine's clock is from the NATS server's, in milliseconds (positive:
    /// ahead): a key written to the fleet's `clock` bucket carries the server's time.
    pub async fn clock_skew_ms(&self) -> Result<i64, FabricError> {
        let kv = self.kv("clock").await?;
        let before = std::time::SystemTime::now();
        kv.store
            .put("probe", Bytes::from_static(b"1"))
            .await
            .map_err(FabricError::nats("clock probe"))?;
        let after = std::time::SystemTime::now();
        let entry = kv
            .store
            .entry("probe")
            .await
            .map_err(FabricError::nats("clock probe"))?
            .ok_or_else(|| FabricError::Nats {
                op: "clock probe",
                detail: "the probe was not kept".into(),
            })?;
        let ms = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        };
        let server_ms = (entry.created.unix_timestamp_nanos() / 1_000_000) as i64;
        Ok((ms(before) + ms(after)) / 2 - server_ms)
    }

    /// What this connection has carried so far (payloads, without the protocol).
    pub fn traffic(&self) -> Traffic {
        let s = self.inner.client.statistics();
        Traffic {
            messages_in: s.in_messages.load(Ordering::Relaxed),
            messages_out: s.out_messages.load(Ordering::Relaxed),
            bytes_in: s.in_bytes.load(Ordering::Relaxed),
            bytes_out: s.out_bytes.load(Ordering::Relaxed),
        }
    }

    /// Messages dropped because a subscriber's buffer was full (a lower bound: see `Inner::dropped`).
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Waits until everything published so far has been written to the server's socket (not
    /// that the server has processed it: see [`barrier`]).
    pub async fn flush(&self) -> Result<(), FabricError> {
        self.inner
            .client
            .flush()
            .await
            .map_err(FabricError::nats("flush"))
    }
}

/// Waits until the server has processed everything `client` sent before: a round trip. A
/// server reads each connection in order, so when a request nobody answers comes back as
/// "no responders", every subscription sent before it is in place for every publisher.
/// (async-nats's `flush` only writes the socket: a publisher on another connection could
/// still beat a subscription to the server.)
pub async fn barrier(client: &async_nats::Client) -> Result<(), FabricError> {
    let subject = format!("_qs_barrier.{}", client.new_inbox().replace('.', "_"));
    match client.request(subject, Bytes::new()).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => Ok(()),
        Err(e) => Err(FabricError::nats("barrier")(e)),
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
    type Objects = NatsObjects;

    async fn publish(&self, topic: &Topic, payload: Bytes) -> Result<(), FabricError> {
        check_publish(topic, &payload)?;
        let subject = self.subject(topic);
        let sent = self.inner.client.publish(subject, payload).await;
        sent.map_err(FabricError::nats("publish"))
    }

    async fn subscribe(&self, topic: &Topic) -> Result<Subscription, FabricError> {
        let sub = self
            .inner
            .client
            .subscribe(self.subject(topic))
            .await
            .map_err(FabricError::nats("subscribe"))?;
        // The server has the interest before this returns, so nothing published after, from
        // any connection, is missed; while disconnected the client subscribes again when it
        // reconnects.
        if self.connected() {
            let _ = tokio::time::timeout(BARRIER_TIMEOUT, barrier(&self.inner.client)).await;
        }
        // Read straight from the client's bounded buffer: no task between it and the reader.
        let prefix = self.inner.prefix.clone();
        let stream = sub.filter_map(move |m| std::future::ready(incoming(&prefix, m)));
        Ok(Subscription::from_stream(stream, Box::new(())))
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
                .map_err(FabricError::nats("open KV bucket"))?,
        };
        Ok(NatsKv {
            store,
            reconnects: self.inner.reconnects.clone(),
        })
    }

    async fn objects(&self, bucket: &str) -> Result<NatsObjects, FabricError> {
        check_bucket(bucket)?;
        let name = format!("qs_{}_{bucket}", self.inner.fleet);
        let store = match self.inner.js.get_object_store(&name).await {
            Ok(s) => s,
            Err(_) => self
                .inner
                .js
                .create_object_store(async_nats::jetstream::object_store::Config {
                    bucket: name.clone(),
                    num_replicas: self.inner.replicas,
                    ..Default::default()
                })
                .await
                .map_err(FabricError::nats("open object store"))?,
        };
        Ok(NatsObjects { store })
    }
}

/// One JetStream object store bucket.
#[derive(Clone)]
pub struct NatsObjects {
    store: async_nats::jetstream::object_store::ObjectStore,
}

impl crate::Objects for NatsObjects {
    async fn put(&self, name: &str, value: Bytes) -> Result<(), FabricError> {
        crate::check_object(name, &value)?;
        let mut reader: &[u8] = &value;
        self.store
            .put(name, &mut reader)
            .await
            .map(drop)
            .map_err(FabricError::nats("put object"))
    }

    async fn get(&self, name: &str) -> Result<Option<Bytes>, FabricError> {
        use async_nats::jetstream::object_store::GetErrorKind;
        use tokio::io::AsyncReadExt;
        crate::check_key(name)?;
        let mut object = match self.store.get(name).await {
            Ok(o) => o,
            Err(e) if e.kind() == GetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(FabricError::nats("get object")(e)),
        };
        // Read whole, but never past the bound, whatever the object says of its size.
        let mut out = Vec::new();
        let mut bounded = (&mut object).take(crate::MAX_OBJECT_BYTES as u64 + 1);
        bounded
            .read_to_end(&mut out)
            .await
            .map_err(FabricError::nats("read object"))?;
        if out.len() > crate::MAX_OBJECT_BYTES {
            return Err(FabricError::PayloadTooLarge {
                size: out.len(),
                max: crate::MAX_OBJECT_BYTES,
            });
        }
        Ok(Some(Bytes::from(out)))
    }

    async fn delete(&self, name: &str) -> Result<(), FabricError> {
        use async_nats::jetstream::object_store::DeleteErrorKind;
        crate::check_key(name)?;
        match self.store.delete(name).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == DeleteErrorKind::NotFound => Ok(()),
            Err(e) => Err(FabricError::nats("delete object")(e)),
        }
    }
}

/// One JetStream KV bucket.
#[derive(Clone)]
pub struct NatsKv {
    store: kv::Store,
    reconnects: Arc<Reconnects>,
}

impl NatsKv {
    async fn revision(&self, key: &str) -> Option<u64> {
        self.get(key).await.ok().flatten().map(|e| e.revision)
    }
}

impl Kv for NatsKv {
    async fn get(&self, key: &str) -> Result<Option<Entry>, FabricError> {
        check_key(key)?;
        let entry = self
            .store
            .entry(key)
            .await
            .map_err(FabricError::nats("KV get"))?;
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
        self.store
            .put(key, value)
            .await
            .map_err(FabricError::nats("KV put"))
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
                Err(e) => Err(FabricError::nats("KV compare-and-set")(e)),
            },
            Some(rev) => match self.store.update(key, value, rev).await {
                Ok(r) => Ok(r),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    Err(conflict(self.revision(key).await))
                }
                Err(e) => Err(FabricError::nats("KV compare-and-set")(e)),
            },
        }
    }

    async fn delete(&self, key: &str) -> Result<(), FabricError> {
        check_key(key)?;
        self.store
            .delete(key)
            .await
            .map_err(FabricError::nats("KV delete"))
    }

    async fn watch(&self, prefix: &str) -> Result<Watch, FabricError> {
        check_watch_prefix(prefix)?;
        crate::nats_watch::watch(self.store.clone(), &self.reconnects, prefix).await
    }
}

/// How long the fleet's ledger stream keeps a record, and how many bytes it keeps in all:
/// the oldest go first, so the stream never grows without bound.
pub const LEDGER_STREAM_MAX_AGE: std::time::Duration =
    std::time::Duration::from_secs(7 * 24 * 3600);
pub const LEDGER_STREAM_MAX_BYTES: i64 = 1 << 30;

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
        // Created, or brought to these limits if an older agent made it without them.
        self.inner
            .js
            .create_or_update_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![format!("{}ledger.>", self.inner.prefix)],
                num_replicas: self.inner.replicas,
                max_age: LEDGER_STREAM_MAX_AGE,
                max_bytes: LEDGER_STREAM_MAX_BYTES,
                ..Default::default()
            })
            .await
            .map_err(FabricError::nats("create ledger stream"))?;
        let stream = self
            .inner
            .js
            .get_stream(&name)
            .await
            .map_err(FabricError::nats("open ledger stream"))?;
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
                .and_then(|seq| seq.checked_add(1))
                .ok_or_else(|| FabricError::Nats {
                    op: "read ledger stream",
                    detail: format!("the last message of {} lacks {SEQ_HEADER}", self.subject),
                }),
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(0)
            }
            Err(e) => Err(FabricError::nats("read ledger stream")(e)),
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
            .map_err(FabricError::nats("append to ledger stream"))?
            .await
            .map_err(FabricError::nats("append to ledger stream"))?;
        Ok(!ack.duplicate)
    }
}
