//! A singleton that runs twice (a frozen node came back after the fleet replaced it) keeps
//! the copy with the newest fencing token, whatever the instance ids say.

use qs_core::{Config, Input, Node, Output, Registry, Time};
use qs_wire::{
    Capacity, GpuCapacity, InstanceId, InstanceSummary, Message, NodeId, NodeSpec, Role, parse_spec,
};
use std::collections::BTreeMap;

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn spec(name: &str) -> NodeSpec {
    NodeSpec {
        id: id(name),
        level: 0,
        labels: BTreeMap::new(),
        capacity: Capacity {
            cpu_millicores: 8000,
            memory_bytes: 16 << 30,
            gpus: vec![GpuCapacity {
                vram_bytes: 24 << 30,
            }],
        },
    }
}

/// The instance ids to give the copies with fencing tokens 1 and 2; returns what the
/// steward stops.
fn stopped(old_id: &str, new_id: &str) -> Vec<String> {
    let config = Config::default();
    let mut reg = Registry::new(&config);
    let text = "[service.train]\npattern = \"gpu-singleton\"\nreplicas = 1\n\
                resources = { cpu_cores = 1, memory_mib = 64, vram_mib = 1024 }\n";
    let train = parse_spec("t.toml", text).unwrap().workloads.remove(0);
    let copy = |node: &str, instance: &str, fencing: u64, at: Time| {
        let mut status = Node::new(&spec(node), config.clone(), 1, Time::ZERO).status(at);
        status.instances.push(InstanceSummary {
            instance: InstanceId::new(instance).unwrap(),
            service: train.name.clone(),
            role: Role::Replica,
            fencing,
            hot: false,
            serving: true,
        });
        status
    };
    let mut at = Time::from_millis(10_000);
    for n in ["a", "c"] {
        reg.observe(
            Node::new(&spec(n), config.clone(), 1, Time::ZERO).status(at),
            at,
        );
    }
    reg.observe(copy("b", old_id, 1, at), at);
    reg.apply_spec(train.clone(), Time::ZERO);
    let name = reg.steward(&train.name).unwrap().clone();
    let mut steward = Node::new(&spec(name.as_str()), config.clone(), 1, Time::ZERO);
    // The steward knows the one copy; then the replacement shows up beside it.
    steward.handle(Input::Reconcile, at, &reg);
    while steward.poll().is_some() {}
    at = at + std::time::Duration::from_millis(100);
    reg.observe(copy("c", new_id, 2, at), at);
    steward.handle(Input::Reconcile, at, &reg);
    std::iter::from_fn(|| steward.poll())
        .filter_map(|o| match o {
            Output::Send {
                msg: Message::Stop { instance, .. },
                ..
            }
            | Output::Stop { instance, .. } => Some(instance.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn the_newest_fencing_token_stays_whatever_the_ids() {
    assert_eq!(stopped("train-1", "train-2"), ["train-1"]);
    assert_eq!(stopped("train-2", "train-1"), ["train-2"]);
}
