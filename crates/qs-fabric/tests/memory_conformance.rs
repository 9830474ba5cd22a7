//! The in-memory backend passes the fabric conformance suite.

qs_fabric::conformance_tests!(|| async { (qs_fabric::memory::MemoryFabric::new(), ()) });

use qs_fabric::{Fabric, Topic};

/// A subscriber that never reads loses messages past its buffer; publishers never block.
#[tokio::test]
async fn slow_subscribers_lose_messages_instead_of_blocking() {
    let f = qs_fabric::memory::MemoryFabric::new();
    let _slow = f
        .subscribe(&Topic::parse("slow.test").unwrap())
        .await
        .unwrap();
    let extra = 10;
    for _ in 0..qs_fabric::SUBSCRIPTION_BUFFER + extra {
        f.publish(
            &Topic::parse("slow.test").unwrap(),
            qs_fabric::Bytes::from_static(b"x"),
        )
        .await
        .unwrap();
    }
    assert_eq!(f.dropped(), extra as u64);
}
