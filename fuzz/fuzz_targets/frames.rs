//! Frames from the bus: any bytes, split into frames at 0xFF, opened by a keyring that
//! requires authentication and knows two peers. Each frame gets a verdict; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qs_core::auth::{AuthConfig, Keyring};
use qs_core::{Config, Time};
use qs_wire::NodeId;

fuzz_target!(|data: &[u8]| {
    let config = AuthConfig::from_config(&Config::default(), true);
    let mut ring = Keyring::new(config);
    let a = NodeId::new("a").unwrap();
    ring.add_local(a.clone(), [1; 32]);
    let mut peer = Keyring::new(config);
    let public = peer.add_local(NodeId::new("b").unwrap(), [2; 32]);
    let _ = ring.learn(NodeId::new("b").unwrap(), public);
    let frames: Vec<&[u8]> = data.split(|b| *b == 0xFF).take(64).collect();
    let verdicts = ring.open_many(Some(&a), frames.iter().copied(), Time::from_millis(1));
    assert_eq!(verdicts.len(), frames.len());
});
