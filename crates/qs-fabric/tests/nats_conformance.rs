//! The conformance suite against a real nats-server with JetStream: each case starts its own
//! server (free loopback port, temporary store), which stops when the case ends.

use qs_fabric::nats::NatsFabric;
use qs_fabric::nats_server::NatsServer;
use qs_fabric::{Fabric as _, LedgerSink as _};

async fn fabric() -> (NatsFabric, NatsServer) {
    let server = tokio::task::spawn_blocking(NatsServer::start)
        .await
        .expect("the start task ran")
        .expect("nats-server 2.10+ starts (scripts/test installs it)");
    let fabric = NatsFabric::connect(&server.url(), "conformance")
        .await
        .expect("the fabric connects");
    (fabric, server)
}

qs_fabric::conformance_tests!(fabric);

/// A KV watch and a subscription go on after the server restarts (same port, same store):
/// the client reconnects and the watch's consumer is re-created where it left off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_and_subscriptions_resume_after_a_server_restart() {
    use qs_fabric::{Bytes, Fabric, Kv, KvEvent, Topic};
    use std::time::Duration;
    let limit = Duration::from_secs(60);
    let (fabric, mut server) = fabric().await;
    let kv = fabric.kv("specs").await.unwrap();
    kv.put("before", Bytes::from_static(b"1")).await.unwrap();
    let mut watch = kv.watch("").await.unwrap();
    let mut next = async || {
        tokio::time::timeout(limit, watch.next())
            .await
            .expect("a KV event arrives")
            .expect("the watch is open")
    };
    assert!(matches!(next().await, Ok(KvEvent::Put(e)) if e.key == "before"));
    assert_eq!(next().await, Ok(KvEvent::Synced));
    let hb = Topic::parse("hb.a").unwrap();
    let mut sub = fabric.subscribe(&hb).await.unwrap();

    let (port, store) = (server.port(), server.store().to_path_buf());
    server.kill();
    let _restarted = tokio::task::spawn_blocking(move || {
        qs_fabric::nats_server::NatsServer::start_at(port, &store)
    })
    .await
    .unwrap()
    .expect("the server starts again");
    // Writes retry until the client has reconnected.
    let started = tokio::time::Instant::now();
    while kv.put("after", Bytes::from_static(b"2")).await.is_err() {
        assert!(started.elapsed() < limit, "the KV never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The watch goes on from where it was: no error, no replay of what it had delivered.
    assert!(
        matches!(next().await, Ok(KvEvent::Put(e)) if e.key == "after"),
        "the change after the restart comes next"
    );
    // Interest is restored on reconnect: a publish reaches the old subscription.
    let started = tokio::time::Instant::now();
    loop {
        fabric
            .publish(&hb, Bytes::from_static(b"beat"))
            .await
            .unwrap();
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            assert_eq!(&m.payload[..], b"beat");
            break;
        }
        assert!(
            started.elapsed() < limit,
            "the subscription never came back"
        );
    }
}

/// A node's ledger goes into the stream once: a mirror resumes after what the stream holds,
/// and a record sent again is recognised as a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_mirror_resumes_and_drops_duplicates() {
    use qs_fabric::Bytes;
    let (fabric, server) = fabric().await;
    let node = qs_wire::NodeId::new("forge").unwrap();
    let mirror = fabric.ledger(&node).await.unwrap();
    assert_eq!(mirror.resume_from().await.unwrap(), 0);
    // The stream is bounded in age and size: the fleet's ledger never grows without end.
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let mut stream = js.get_stream("qs_conformance_ledger").await.unwrap();
    let config = &stream.info().await.unwrap().config;
    assert_eq!(config.max_age, qs_fabric::nats::LEDGER_STREAM_MAX_AGE);
    assert_eq!(config.max_bytes, qs_fabric::nats::LEDGER_STREAM_MAX_BYTES);
    for seq in 0..3 {
        assert!(
            mirror
                .append(seq, Bytes::from(format!("r{seq}")))
                .await
                .unwrap()
        );
    }
    // A restarted mirror (a fresh handle) resumes after the last one.
    let again = fabric.ledger(&node).await.unwrap();
    assert_eq!(again.resume_from().await.unwrap(), 3);
    assert!(
        !again.append(2, Bytes::from("r2")).await.unwrap(),
        "a duplicate"
    );
    assert_eq!(again.resume_from().await.unwrap(), 3);
    // Another node's records are its own.
    let other = fabric
        .ledger(&qs_wire::NodeId::new("pcdev").unwrap())
        .await
        .unwrap();
    assert_eq!(other.resume_from().await.unwrap(), 0);
}

/// A subscriber that never reads loses messages past its buffer, counted; publishers never
/// block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscribers_lose_messages_instead_of_blocking() {
    use qs_fabric::{Bytes, Fabric, Topic};
    let (fabric, _server) = fabric().await;
    let _slow = fabric
        .subscribe(&Topic::parse("slow.test").unwrap())
        .await
        .unwrap();
    let extra = 10;
    for _ in 0..qs_fabric::SUBSCRIPTION_BUFFER + extra {
        fabric
            .publish(
                &Topic::parse("slow.test").unwrap(),
                Bytes::from_static(b"x"),
            )
            .await
            .unwrap();
    }
    fabric.flush().await.unwrap();
    // Delivery to the subscriber's buffer runs on its own task: wait for it to settle.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while fabric.dropped() < extra as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dropped {} of {extra}",
            fabric.dropped()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(fabric.dropped(), extra as u64);
}

/// A subscription is in place when `subscribe` returns, for publishers on other connections
/// too: the server has processed it (a round trip), not merely been sent it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_hears_other_connections_as_soon_as_it_returns() {
    use qs_fabric::{Bytes, Fabric, Topic};
    use std::time::Duration;
    let (listener, server) = fabric().await;
    let speaker = NatsFabric::connect(&server.url(), "conformance")
        .await
        .expect("a second connection");
    let connected = tokio::time::Instant::now() + Duration::from_secs(10);
    while !speaker.connected() {
        assert!(
            tokio::time::Instant::now() < connected,
            "the second connection connects"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut subs = Vec::new();
    for i in 0..300 {
        let topic = Topic::parse(&format!("sync.t{i}")).unwrap();
        let sub = listener.subscribe(&topic).await.unwrap();
        speaker
            .publish(&topic, Bytes::from_static(b"x"))
            .await
            .unwrap();
        subs.push(sub);
    }
    speaker.flush().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut missed = Vec::new();
    for (i, sub) in subs.iter_mut().enumerate() {
        if !matches!(
            tokio::time::timeout_at(deadline, sub.next()).await,
            Ok(Some(_))
        ) {
            missed.push(i);
        }
    }
    assert!(
        missed.is_empty(),
        "published right after subscribe returned, missed: {missed:?}"
    );
}

/// A watch whose consumer is lost (its server went) goes on even when the name async-nats
/// would re-create it under is taken, as a create that timed out on the client but was
/// carried out by a JetStream cluster electing its leaders leaves it: the fabric asks for a
/// consumer the server names. Before, such a watch delivered nothing, without an error,
/// until the orphan expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_goes_on_when_its_consumer_is_lost_and_its_next_name_is_taken() {
    use async_nats::jetstream::consumer::pull;
    use futures_util::StreamExt as _;
    use qs_fabric::{Bytes, Entry, Fabric, Kv, KvEvent};
    use std::time::Duration;
    let (fabric, server) = fabric().await;
    let kv = fabric.kv("specs").await.unwrap();
    kv.put("before", Bytes::from_static(b"1")).await.unwrap();
    let mut watch = kv.watch("").await.unwrap();
    let mut next = async || {
        // The consumer's loss shows as missed idle heartbeats, 10 s after the last.
        tokio::time::timeout(Duration::from_secs(40), watch.next())
            .await
            .expect("a KV event arrives")
            .expect("the watch is open")
    };
    assert!(matches!(next().await, Ok(KvEvent::Put(e)) if e.key == "before"));
    assert_eq!(next().await, Ok(KvEvent::Synced));

    // From another connection: the watch's consumer goes, and its successor's name is taken.
    let side = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(side);
    let stream = js.get_stream("KV_qs_conformance_specs").await.unwrap();
    let names: Vec<String> = stream
        .consumer_names()
        .map(|n| n.expect("a consumer name"))
        .collect()
        .await;
    // The watch's (and any other the bucket's opening left, which goes when idle).
    assert!(!names.is_empty(), "the watch has a consumer");
    for name in names {
        stream.delete_consumer(&name).await.unwrap();
        let squatter = pull::Config {
            durable_name: Some(format!("{name}_1")),
            ..Default::default()
        };
        stream.create_consumer(squatter).await.unwrap();
    }

    let revision = kv.put("after", Bytes::from_static(b"2")).await.unwrap();
    let expected = Entry {
        key: "after".into(),
        value: Bytes::from_static(b"2"),
        revision,
    };
    assert_eq!(next().await, Ok(KvEvent::Put(expected)));
}
