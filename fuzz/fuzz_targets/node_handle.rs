//! `Node::handle` with any message from any sender: the first byte picks the sender, the
//! rest is an envelope as the wire carries it; what decodes and passes its checks is handled
//! against a registry with nodes and a spec, and every output is drained.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qs_core::{Config, Input, Node, Registry, Time};
use qs_wire::{Capacity, Envelope, Message, NodeId, NodeSpec};
use std::collections::BTreeMap;

fn node(name: &str) -> Node {
    let spec = NodeSpec {
        id: NodeId::new(name).unwrap(),
        level: 1,
        labels: BTreeMap::new(),
        capacity: Capacity {
            cpu_millicores: 8000,
            memory_bytes: 16 << 30,
            gpus: vec![],
        },
    };
    Node::new(&spec, Config::default(), 1, Time::ZERO)
}

fuzz_target!(|data: &[u8]| {
    let Some((&who, bytes)) = data.split_first() else {
        return;
    };
    let mut reg = Registry::new(&Config::default());
    for n in ["a", "b", "c"] {
        reg.observe(node(n).status(Time::ZERO), Time::ZERO);
    }
    let doc = qs_wire::parse_spec(
        "t.toml",
        "[service.web]\nreplicas = 2\nresources = { cpu_cores = 1, memory_mib = 64 }\n",
    )
    .unwrap();
    reg.apply_spec(doc.workloads[0].clone(), Time::ZERO);
    let sender = NodeId::new(["a", "b", "c", "d"][usize::from(who % 4)]).unwrap();
    let mut a = node("a");
    if let Ok(env) = Envelope::<Message>::decode(bytes)
        && env.validate().is_ok()
    {
        a.handle(Input::Message { from: sender, msg: env.payload }, Time::from_millis(5), &reg);
        a.handle(Input::Tick, Time::from_millis(10_000), &reg);
        while a.poll().is_some() {}
    }
});
