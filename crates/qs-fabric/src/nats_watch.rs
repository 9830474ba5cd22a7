//! A KV watch on NATS that outlives the loss of its JetStream consumer.
//!
//! A watch is an ephemeral ordered consumer on the bucket's stream, kept on one server. When
//! that server goes, or this client's connection moves to another, async-nats re-creates the
//! consumer under a name of its own choosing, retrying forever and silently. A try that times
//! out on the client but succeeded on the server (a JetStream cluster electing its leaders
//! answers late) leaves that name taken, and every later try fails on it until the orphan
//! expires: the watch delivers nothing for tens of seconds, with no error to say so.
//!
//! So this watch re-creates the consumer itself: on a reconnection, and on any error of the
//! consumer (a missed idle heartbeat), it drops the old one and asks for a new one, named by
//! the server, from the revision after the last it delivered. The fabric's buckets keep one
//! revision per key, so nothing is lost and nothing is delivered twice; the caller sees one
//! watch that goes on. What this does not cover: async-nats also re-creates the consumer,
//! under its own name, on a gap in the consumer's sequence (messages its subscription
//! dropped) or a heartbeat that says one was missed, and says nothing while it tries; such a
//! watch may stall until that name is free again.
//!
//! For tens of seconds after a server is killed (a probe here still saw timeouts 47 s after
//! the kill), the cluster still counts it among the
//! stream's peers and places some new consumers on it: their creation times out. So a
//! consumer is asked for again, beside the first request, when that one has not answered
//! within [`HEDGE_AFTER`] (at most [`HEDGE_MAX`] requests in all); the first made is kept.
//! A healthy cluster answers the first at once, and nothing more is asked. What is dropped
//! (the lost consumer, the hedges that lost) is left to the server, which removes a consumer
//! nobody listens to after its inactive threshold (30 s).
//!
//! Before the consumer, the watch learns whether its replay will bring anything (else no
//! entry would come to end it): the whole bucket's message count, or for a prefix the
//! stream's first message under it, a request to the stream's leader that makes no consumer
//! (one that could be placed on a lost server, unhedged). A deleted key's marker is replayed
//! by the consumer but not forwarded: the watcher never saw the key.

use crate::{Entry, FabricError, KvEvent, WATCH_BUFFER, Watch};
use async_nats::jetstream::kv;
use async_nats::jetstream::stream::RawMessageErrorKind;
use futures_util::StreamExt;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// First wait before another try to re-create a lost consumer; it doubles up to
/// [`RESUME_MAX`].
const RESUME_MIN: Duration = Duration::from_millis(100);
const RESUME_MAX: Duration = Duration::from_secs(5);
/// How long one try to create a consumer (its hedged requests together) may take.
const CREATE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request for a consumer goes unanswered before another is sent beside it.
const HEDGE_AFTER: Duration = Duration::from_secs(1);
/// Most requests sent for one consumer (a failed one is replaced, and counts).
const HEDGE_MAX: usize = 4;

/// Counts this client's reconnections (a connection that came back after it was lost), so
/// that every watch re-creates its consumer after one.
pub(crate) struct Reconnects {
    count: watch::Sender<u64>,
    lost: std::sync::atomic::AtomicBool,
}

impl Reconnects {
    pub(crate) fn new() -> Reconnects {
        Reconnects {
            count: watch::Sender::new(0),
            lost: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Takes the client's connection events: a `Connected` counts once a `Disconnected` came
    /// before it (the first connection is not a reconnection).
    pub(crate) fn on_event(&self, event: &async_nats::Event) {
        use std::sync::atomic::Ordering::Relaxed;
        match event {
            async_nats::Event::Disconnected => self.lost.store(true, Relaxed),
            async_nats::Event::Connected if self.lost.swap(false, Relaxed) => {
                self.count.send_modify(|n| *n += 1)
            }
            _ => {}
        }
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.count.subscribe()
    }
}

/// Watches the keys of `store` under `prefix` (checked by the caller): the entries as they
/// are, `Synced`, then every change, across losses of the consumer.
pub(crate) async fn watch(
    store: kv::Store,
    reconnects: &Reconnects,
    prefix: &str,
) -> Result<Watch, FabricError> {
    let filter = format!("{prefix}>");
    // Taken before the consumer is made: a reconnection from here on re-creates it.
    let reconnected = reconnects.subscribe();
    // Entries past the bucket's last revision as the watch begins are changes, not the
    // replay (the consumer's pending count alone would count them into the replay).
    let mut stream = store.stream.clone();
    let state = &stream
        .info()
        .await
        .map_err(FabricError::nats("stream info"))?
        .state;
    let start = state.last_sequence;
    // With nothing under the prefix no entry comes to say the replay is over. For the whole
    // bucket its count of messages says so (a deleted key's marker is replayed too); for a
    // part of it, the stream's first message under the prefix, asked of the stream's leader
    // (a marker counts here too; no consumer is made for it).
    let any = if prefix.is_empty() {
        state.messages > 0
    } else {
        let subject = format!("{}{filter}", store.prefix);
        match stream.get_first_raw_message_by_subject(&subject, 1).await {
            Ok(_) => true,
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => false,
            Err(e) => return Err(FabricError::nats("KV watch, first entry")(e)),
        }
    };
    let first = tokio::time::timeout(CREATE_TIMEOUT, create(&store, &filter, None))
        .await
        .map_err(|_| FabricError::Nats {
            op: "KV watch",
            detail: format!("no consumer within {CREATE_TIMEOUT:?}"),
        })?
        .map_err(FabricError::nats("KV watch"))?;
    let (tx, rx) = mpsc::channel(WATCH_BUFFER);
    let follower = Follower {
        store,
        filter,
        reconnected,
        tx,
        start,
        synced: !any,
        delivered: None,
        resumed_at: None,
        progressed: false,
        pause: RESUME_MIN,
    };
    let task = tokio::spawn(follower.run(first));
    Ok(Watch::new(rx, Box::new(AbortOnDrop(task))))
}

/// The task behind one watch: forwards the consumer's entries and re-creates it when lost.
struct Follower {
    store: kv::Store,
    filter: String,
    reconnected: watch::Receiver<u64>,
    tx: mpsc::Sender<Result<KvEvent, FabricError>>,
    /// The stream's last revision when the watch began: past it, entries are changes.
    start: u64,
    synced: bool,
    /// The last revision forwarded: a re-created consumer starts after it.
    delivered: Option<u64>,
    /// When the consumer was last re-created, and whether an entry came since: a consumer
    /// that fails again at once (a message it cannot read, say) is re-created after a pause
    /// that doubles, not in a loop.
    resumed_at: Option<tokio::time::Instant>,
    progressed: bool,
    pause: Duration,
}

impl Follower {
    async fn run(mut self, mut consumer: kv::Watch) {
        // The replay is delivered whole (it waits for room); a live change that finds the
        // buffer full ends the watch with `Lagged`.
        if self.synced && self.tx.send(Ok(KvEvent::Synced)).await.is_err() {
            return;
        }
        loop {
            let lost = tokio::select! {
                changed = self.reconnected.changed() => match changed {
                    Ok(()) => "the connection to NATS came back".to_owned(),
                    Err(_) => return,
                },
                e = consumer.next() => match e {
                    // The client is closed.
                    None => return,
                    Some(Err(e)) => e.to_string(),
                    Some(Ok(e)) => {
                        if !self.forward(e).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            drop(consumer);
            consumer = match self.resume(&lost).await {
                Some(c) => c,
                None => return,
            };
        }
    }

    /// Forwards one entry (and `Synced` where the replay ends); false when the watch is over.
    async fn forward(&mut self, e: kv::Entry) -> bool {
        let revision = e.revision;
        let sent = if !self.synced && revision > self.start {
            self.synced = true;
            self.tx.send(Ok(KvEvent::Synced)).await.is_ok()
                && self.tx.send(Ok(kv_event(e))).await.is_ok()
        } else if !self.synced {
            self.synced = e.delta == 0;
            // A deleted key's marker in the replay is no entry: the watcher never saw the
            // key (the in-memory backend replays none either).
            let entry = e.operation == kv::Operation::Put;
            (!entry || self.tx.send(Ok(kv_event(e))).await.is_ok())
                && (!self.synced || self.tx.send(Ok(KvEvent::Synced)).await.is_ok())
        } else {
            match self.tx.try_send(Ok(kv_event(e))) {
                Ok(()) => true,
                Err(_) => {
                    if !self.tx.is_closed() {
                        let _ = self.tx.send(Err(FabricError::Lagged)).await;
                    }
                    false
                }
            }
        };
        self.delivered = Some(revision);
        self.progressed = true;
        sent
    }

    /// A new consumer from the revision after the last delivered (the whole replay again if
    /// none was), tried until one is made; `None` once the watch was dropped.
    async fn resume(&mut self, why: &str) -> Option<kv::Watch> {
        let bucket = &self.store.name;
        let from = self.delivered.map(|r| r + 1);
        match from {
            Some(r) => tracing::warn!("KV watch of {bucket}: {why}; resuming from revision {r}"),
            None => tracing::warn!("KV watch of {bucket}: {why}; starting its replay again"),
        }
        let again_at_once =
            !self.progressed && self.resumed_at.is_some_and(|t| t.elapsed() < RESUME_MAX);
        if again_at_once {
            tokio::select! {
                _ = self.tx.closed() => return None,
                _ = tokio::time::sleep(self.pause) => {}
            }
            self.pause = (self.pause * 2).min(RESUME_MAX);
        } else {
            self.pause = RESUME_MIN;
        }
        self.resumed_at = Some(tokio::time::Instant::now());
        self.progressed = false;
        let mut wait = RESUME_MIN;
        loop {
            // Reconnections while trying are this try's business.
            self.reconnected.borrow_and_update();
            let made = create(&self.store, &self.filter, from);
            if let Ok(Ok(consumer)) = tokio::time::timeout(CREATE_TIMEOUT, made).await {
                return Some(consumer);
            }
            tokio::select! {
                _ = self.tx.closed() => return None,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(RESUME_MAX);
        }
    }
}

/// A consumer of `store`'s keys matching `filter`: from revision `from`, or each key's last
/// change. Hedged (see the module docs): the first request that succeeds wins; the error of
/// the last is returned when all [`HEDGE_MAX`] failed.
async fn create(
    store: &kv::Store,
    filter: &str,
    from: Option<u64>,
) -> Result<kv::Watch, kv::WatchError> {
    let one = || async move {
        match from {
            Some(revision) => store.watch_from_revision(filter, revision).await,
            None => store.watch_with_history(filter).await,
        }
    };
    let mut tries = futures_util::stream::FuturesUnordered::new();
    tries.push(one());
    let mut sent = 1;
    let mut hedge_at = tokio::time::Instant::now() + HEDGE_AFTER;
    loop {
        tokio::select! {
            Some(done) = tries.next(), if !tries.is_empty() => match done {
                Ok(consumer) => return Ok(consumer),
                Err(e) if tries.is_empty() && sent >= HEDGE_MAX => return Err(e),
                // Another request goes now, in place of the one that failed.
                Err(_) => hedge_at = tokio::time::Instant::now(),
            },
            _ = tokio::time::sleep_until(hedge_at), if sent < HEDGE_MAX => {
                tries.push(one());
                sent += 1;
                hedge_at = tokio::time::Instant::now() + HEDGE_AFTER;
            }
        }
    }
}

/// Aborts a watch's task when the watch is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A KV change as the fabric's event.
pub(crate) fn kv_event(e: kv::Entry) -> KvEvent {
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
