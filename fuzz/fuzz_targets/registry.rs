//! The registry fed raw JSON: a heartbeat (checked as a message from the node it names) and a
//! spec (checked as the KV way in does), then expiry, elections and sampling.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qs_core::{Config, Registry, Time};
use qs_wire::{Envelope, Message, MessageId, NodeStatus};

fuzz_target!(|data: &[u8]| {
    let mut reg = Registry::new(&Config::default());
    for (i, part) in data.split(|b| *b == 0).take(16).enumerate() {
        let now = Time::from_millis(i as u64 * 100);
        if let Ok(status) = serde_json::from_slice::<NodeStatus>(part) {
            let env = Envelope::new(status.node.clone(), 1, 0, MessageId(1), Message::Heartbeat(status.clone()));
            if env.validate().is_ok() {
                reg.observe(status, now);
            }
        }
        if let Ok(spec) = qs_wire::decode_workload("kv specs/x", "x", part) {
            let name = spec.name.clone();
            reg.apply_spec(spec, now);
            let _ = reg.steward(&name);
        }
    }
    let _ = reg.expire(Time::from_millis(60_000));
});
