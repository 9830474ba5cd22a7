//! The conformance suite every fabric backend must pass.
//!
//! Each case is an async function over any [`Fabric`]. [`conformance_tests!`](crate::conformance_tests)
//! turns them all into `#[tokio::test]`s for one backend, each bounded by [`CASE_TIMEOUT`]:
//!
//! ```ignore
//! qs_fabric::conformance_tests!(|| async { (qs_fabric::memory::MemoryFabric::new(), ()) });
//! ```

use crate::{Bytes, Fabric, FabricError, Kv, KvEvent, MAX_PAYLOAD_BYTES, Objects, Topic};
use qs_wire::NodeId;
use std::time::Duration;

/// No case may take longer than this.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for something that must not arrive.
const QUIET: Duration = Duration::from_millis(200);

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn topic(s: &str) -> Topic {
    Topic::parse(s).expect("test topics are valid")
}

async fn recv(sub: &mut crate::Subscription) -> crate::Incoming {
    tokio::time::timeout(CASE_TIMEOUT, sub.next())
        .await
        .expect("a message arrives")
        .expect("the subscription is open")
}

async fn nothing_more(sub: &mut crate::Subscription) {
    if let Ok(Some(m)) = tokio::time::timeout(QUIET, sub.next()).await {
        panic!("unexpected message on {}: {:?}", m.topic, m.payload);
    }
}

/// Objects larger than a KV entry are written whole, read whole, replaced and deleted; a
/// missing one is `None`; a bad name or an oversized object is refused.
pub async fn objects_put_get_delete<F: Fabric>(f: F) {
    let o = f.objects("conformance").await.unwrap();
    let big = Bytes::from(vec![7u8; MAX_PAYLOAD_BYTES + 1]);
    o.put("t1.ckpt", big.clone()).await.unwrap();
    assert_eq!(o.get("t1.ckpt").await.unwrap(), Some(big));
    o.put("t1.ckpt", b("small")).await.unwrap();
    assert_eq!(o.get("t1.ckpt").await.unwrap(), Some(b("small")));
    assert_eq!(o.get("absent").await.unwrap(), None);
    o.delete("t1.ckpt").await.unwrap();
    assert_eq!(o.get("t1.ckpt").await.unwrap(), None);
    o.delete("t1.ckpt").await.unwrap();
    assert!(o.put("bad name", b("x")).await.is_err());
    let huge = Bytes::from(vec![0u8; crate::MAX_OBJECT_BYTES + 1]);
    assert!(matches!(
        o.put("huge", huge).await,
        Err(FabricError::PayloadTooLarge { .. })
    ));
}

/// Exact and wildcard subscribers get what matches, in publish order, and nothing else.
pub async fn publish_reaches_matching_subscribers<F: Fabric>(f: F) {
    let mut exact = f.subscribe(&topic("hb.forge")).await.unwrap();
    let mut any = f.subscribe(&topic("hb.*")).await.unwrap();
    let mut tail = f.subscribe(&topic("node.>")).await.unwrap();
    for i in 0..5 {
        f.publish(&topic("hb.forge"), b(&format!("f{i}")))
            .await
            .unwrap();
    }
    f.publish(&topic("hb.yone"), b("y")).await.unwrap();
    f.publish(&topic("node.forge.dispatch"), b("d"))
        .await
        .unwrap();
    f.publish(&topic("query.capacity"), b("q")).await.unwrap();
    for i in 0..5 {
        assert_eq!(recv(&mut exact).await.payload, b(&format!("f{i}")));
        assert_eq!(recv(&mut any).await.payload, b(&format!("f{i}")));
    }
    let y = recv(&mut any).await;
    assert_eq!((y.topic, y.payload), (topic("hb.yone"), b("y")));
    assert_eq!(recv(&mut tail).await.payload, b("d"));
    nothing_more(&mut exact).await;
    nothing_more(&mut any).await;
    nothing_more(&mut tail).await;
}

/// Publishing with no subscriber is not an error; a dropped subscription gets nothing more.
pub async fn publish_without_subscribers_and_unsubscribe<F: Fabric>(f: F) {
    f.publish(&topic("events"), b("x")).await.unwrap();
    let sub = f.subscribe(&topic("events")).await.unwrap();
    drop(sub);
    f.publish(&topic("events"), b("y")).await.unwrap();
    let mut fresh = f.subscribe(&topic("events")).await.unwrap();
    f.publish(&topic("events"), b("z")).await.unwrap();
    assert_eq!(recv(&mut fresh).await.payload, b("z"));
}

/// A node's ledger sink takes records in order, each once, and says where to resume.
pub async fn ledger_sink_takes_each_record_once<F: Fabric>(f: F) {
    use crate::LedgerSink;
    let node = qs_wire::NodeId::new("sink-node").unwrap();
    let sink = f.ledger(&node).await.unwrap();
    assert_eq!(sink.resume_from().await.unwrap(), 0);
    assert!(sink.append(0, b("r0")).await.unwrap());
    assert!(sink.append(1, b("r1")).await.unwrap());
    assert!(
        !sink.append(1, b("r1")).await.unwrap(),
        "a repeat is not new"
    );
    assert_eq!(sink.resume_from().await.unwrap(), 2);
    // Another handle on the same node's ledger sees the same records.
    let again = f.ledger(&node).await.unwrap();
    assert_eq!(again.resume_from().await.unwrap(), 2);
    let other = f
        .ledger(&qs_wire::NodeId::new("other-node").unwrap())
        .await
        .unwrap();
    assert_eq!(other.resume_from().await.unwrap(), 0);
}

/// A directed send reaches that node's inbox and no other.
pub async fn directed_send_reaches_one_node<F: Fabric>(f: F) {
    let forge = NodeId::new("forge").unwrap();
    let yone = NodeId::new("yone").unwrap();
    let mut at_forge = f.subscribe(&Topic::node_rpc(&forge)).await.unwrap();
    let mut at_yone = f.subscribe(&Topic::node_rpc(&yone)).await.unwrap();
    f.send(&forge, b("for forge")).await.unwrap();
    assert_eq!(recv(&mut at_forge).await.payload, b("for forge"));
    nothing_more(&mut at_yone).await;
}

/// put, get and revisions that only grow.
pub async fn kv_put_get<F: Fabric>(f: F) {
    let kv = f.kv("specs").await.unwrap();
    assert_eq!(kv.get("svc.dns").await.unwrap(), None);
    let r1 = kv.put("svc.dns", b("v1")).await.unwrap();
    let r2 = kv.put("svc.web", b("w1")).await.unwrap();
    let r3 = kv.put("svc.dns", b("v2")).await.unwrap();
    assert!(r1 < r2 && r2 < r3, "{r1} {r2} {r3}");
    let e = kv.get("svc.dns").await.unwrap().unwrap();
    assert_eq!(
        (e.key.as_str(), e.value, e.revision),
        ("svc.dns", b("v2"), r3)
    );
    kv.delete("svc.dns").await.unwrap();
    assert_eq!(kv.get("svc.dns").await.unwrap(), None);
    // Buckets are separate.
    let other = f.kv("nodes").await.unwrap();
    assert_eq!(other.get("svc.web").await.unwrap(), None);
}

/// Compare-and-set: create only if absent, update only at the expected revision.
pub async fn kv_compare_and_set<F: Fabric>(f: F) {
    let kv = f.kv("instances").await.unwrap();
    let r1 = kv.cas("lease.train", b("a"), None).await.unwrap();
    let again = kv.cas("lease.train", b("b"), None).await.unwrap_err();
    assert!(
        matches!(&again, FabricError::Conflict { expected: None, current: Some(c), .. } if *c == r1),
        "{again}"
    );
    let r2 = kv.cas("lease.train", b("b"), Some(r1)).await.unwrap();
    assert!(r2 > r1);
    let stale = kv.cas("lease.train", b("c"), Some(r1)).await.unwrap_err();
    assert!(
        matches!(stale, FabricError::Conflict { current: Some(c), .. } if c == r2),
        "{stale}"
    );
    assert_eq!(kv.get("lease.train").await.unwrap().unwrap().value, b("b"));
}

/// A watch replays what exists under its prefix, marks the end of that, then follows every
/// change, in order.
pub async fn kv_watch_replays_then_follows<F: Fabric>(f: F) {
    let kv = f.kv("watched").await.unwrap();
    kv.put("svc.a", b("1")).await.unwrap();
    kv.put("other.x", b("x")).await.unwrap();
    let mut w = kv.watch("svc.").await.unwrap();
    kv.put("svc.b", b("2")).await.unwrap();
    kv.put("other.y", b("y")).await.unwrap();
    kv.put("svc.a", b("3")).await.unwrap();
    kv.delete("svc.b").await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let event = tokio::time::timeout(CASE_TIMEOUT, w.next())
            .await
            .expect("a change arrives")
            .expect("the watch is open")
            .expect("no lag");
        seen.push(match event {
            KvEvent::Put(e) => format!("put {}={}", e.key, String::from_utf8_lossy(&e.value)),
            KvEvent::Delete { key, .. } => format!("del {key}"),
            KvEvent::Synced => "synced".into(),
        });
    }
    assert_eq!(
        seen,
        [
            "put svc.a=1",
            "synced",
            "put svc.b=2",
            "put svc.a=3",
            "del svc.b"
        ]
    );
}

/// A watch of a prefix with nothing under it, or only keys since deleted, says at once that
/// its replay is over (a deleted key is not replayed), then follows.
pub async fn kv_watch_of_an_empty_prefix_is_synced_at_once<F: Fabric>(f: F) {
    let kv = f.kv("sparse").await.unwrap();
    kv.put("gone.a", b("1")).await.unwrap();
    kv.delete("gone.a").await.unwrap();
    kv.put("other.x", b("x")).await.unwrap();
    for prefix in ["none.", "gone."] {
        let mut w = kv.watch(prefix).await.unwrap();
        let mut next = async || {
            tokio::time::timeout(CASE_TIMEOUT, w.next())
                .await
                .expect("an event arrives")
                .expect("the watch is open")
                .expect("no lag")
        };
        assert_eq!(next().await, KvEvent::Synced, "{prefix}");
        kv.put(&format!("{prefix}b"), b("2")).await.unwrap();
        match next().await {
            KvEvent::Put(e) => assert_eq!(e.key, format!("{prefix}b")),
            other => panic!("{prefix}: {other:?}"),
        }
    }
}

/// A watch replays a bucket larger than its change buffer whole: the replay is not a burst
/// of changes that could lag.
pub async fn kv_watch_replays_more_than_its_buffer<F: Fabric>(f: F) {
    let kv = f.kv("large").await.unwrap();
    let n = crate::WATCH_BUFFER + 10;
    for i in 0..n {
        kv.put(&format!("k{i}"), b("v")).await.unwrap();
    }
    let mut w = kv.watch("").await.unwrap();
    let mut puts = 0;
    loop {
        let event = tokio::time::timeout(CASE_TIMEOUT, w.next())
            .await
            .expect("the replay arrives")
            .expect("the watch is open")
            .expect("no lag");
        match event {
            KvEvent::Put(_) => puts += 1,
            KvEvent::Synced => break,
            KvEvent::Delete { key, .. } => panic!("nothing was deleted, yet {key} was"),
        }
    }
    assert_eq!(puts, n);
}

/// Bad topics, keys, buckets and payloads are refused by name; nothing is sent or stored.
pub async fn bad_input_is_refused<F: Fabric>(f: F) {
    assert!(matches!(
        Topic::parse("a..b"),
        Err(FabricError::InvalidTopic { .. })
    ));
    let wild = f.publish(&topic("hb.*"), b("x")).await.unwrap_err();
    assert!(matches!(wild, FabricError::InvalidTopic { .. }), "{wild}");
    let big = Bytes::from(vec![0u8; MAX_PAYLOAD_BYTES + 1]);
    let err = f.publish(&topic("events"), big.clone()).await.unwrap_err();
    assert!(matches!(err, FabricError::PayloadTooLarge { .. }), "{err}");
    assert!(matches!(
        f.kv("bad bucket").await,
        Err(FabricError::InvalidBucket { .. })
    ));
    let kv = f.kv("checked").await.unwrap();
    let err = kv
        .watch("half-a-tok")
        .await
        .err()
        .expect("a prefix ends at a '.'");
    assert!(matches!(err, FabricError::InvalidKey { .. }), "{err}");
    let err = kv.put("bad key", b("x")).await.unwrap_err();
    assert!(err.to_string().contains("\"bad key\""), "{err}");
    assert!(matches!(
        kv.put("ok", big).await,
        Err(FabricError::PayloadTooLarge { .. })
    ));
    assert_eq!(kv.get("ok").await.unwrap(), None);
}

/// Instantiates every conformance case as a bounded `#[tokio::test]` for one backend.
/// `$make` is a closure returning a future of a fresh fabric and whatever must outlive it (a
/// server process, say).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            publish_reaches_matching_subscribers,
            publish_without_subscribers_and_unsubscribe,
            ledger_sink_takes_each_record_once,
            directed_send_reaches_one_node,
            kv_put_get,
            kv_compare_and_set,
            kv_watch_replays_then_follows,
            kv_watch_replays_more_than_its_buffer,
            kv_watch_of_an_empty_prefix_is_synced_at_once,
            bad_input_is_refused,
            objects_put_get_delete,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (fabric, _keep) = ($make)().await;
                tokio::time::timeout(
                    $crate::conformance::CASE_TIMEOUT,
                    $crate::conformance::$case(fabric),
                )
                .await
                .expect(concat!(stringify!($case), " finished in time"));
            }
        )*
    };
}
