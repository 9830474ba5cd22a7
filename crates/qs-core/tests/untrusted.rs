//! What the fuzz targets (`fuzz/`, cargo-fuzz on nightly) check, as proptest properties on
//! stable: no input from the bus, the KV or a file panics the code that reads it, and a spec
//! that parses is the spec the KV way in reads back.

use proptest::prelude::*;
use qs_core::auth::{AuthConfig, Keyring};
use qs_core::{Config, Input, Node, Registry, Time};
use qs_wire::{Capacity, Envelope, Message, NodeId, NodeSpec, NodeStatus};
use std::collections::BTreeMap;

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn node(name: &str) -> Node {
    let spec = NodeSpec {
        id: id(name),
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

/// A registry with a few nodes and a spec, for messages to be judged against.
fn registry() -> Registry {
    let config = Config::default();
    let mut reg = Registry::new(&config);
    for n in ["a", "b", "c"] {
        reg.observe(node(n).status(Time::ZERO), Time::ZERO);
    }
    let doc = qs_wire::parse_spec(
        "t.toml",
        "[service.web]\nreplicas = 2\nresources = { cpu_cores = 1, memory_mib = 64 }\n",
    )
    .unwrap();
    reg.apply_spec(doc.workloads[0].clone(), Time::ZERO);
    reg
}

/// One encoded envelope of each kind a node acts on.
fn samples() -> Vec<Vec<u8>> {
    use qs_wire::{Demand, HaPattern, InstanceId, PlacementId, Resources, Role, ServiceName};
    let web = ServiceName::new("web").unwrap();
    let placement = PlacementId {
        steward: id("b"),
        seq: 1,
    };
    let demand = Demand {
        service: web,
        pattern: HaPattern::Stateless,
        need: Resources {
            cpu_millicores: 1000,
            memory_bytes: 64 << 20,
            vram_bytes: 0,
        },
        labels: BTreeMap::new(),
        max_per_node: 1,
    };
    let instance = InstanceId::new("web-1").unwrap();
    let messages = [
        Message::Heartbeat(node("b").status(Time::ZERO)),
        Message::CapacityQuery {
            placement: placement.clone(),
            demand: demand.clone(),
        },
        Message::Dispatch {
            placement,
            instance: instance.clone(),
            demand,
            role: Role::Replica,
            fencing: 0,
        },
        Message::Stop {
            instance: instance.clone(),
            reason: "scale-in".into(),
        },
        Message::Promote { instance },
        Message::Ping {
            nonce: 7,
            origin: id("b"),
            via: Some(id("c")),
        },
    ];
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| Envelope::new(id("b"), i as u64, 0, qs_wire::MessageId(i as u64), m).encode())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, rng_seed: proptest::test_runner::RngSeed::Fixed(11), ..ProptestConfig::default() })]

    /// Frames of any bytes, with or without authentication required, get a verdict each.
    #[test]
    fn any_frames_get_a_verdict(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..256), 0..8), required: bool) {
        let mut ring = Keyring::new(AuthConfig::from_config(&Config::default(), required));
        ring.add_local(id("a"), [1; 32]);
        let verdicts = ring.open_many(Some(&id("a")), frames.iter().map(Vec::as_slice), Time::from_millis(1));
        prop_assert_eq!(verdicts.len(), frames.len());
    }

    /// Whatever a decodable envelope carries, from whichever sender, a node handles it: each
    /// kind of message, encoded, with bytes of it overwritten at random.
    #[test]
    fn any_message_from_any_sender_is_handled(
        base in 0usize..6,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        sender in "[a-d]",
    ) {
        let reg = registry();
        let mut n = node("a");
        let mut bytes = samples()[base].clone();
        for (at, byte) in edits {
            let len = bytes.len();
            bytes[at % len] = byte;
        }
        if let Ok(env) = Envelope::<Message>::decode(&bytes)
            && env.validate().is_ok()
        {
            n.handle(Input::Message { from: id(&sender), msg: env.payload }, Time::from_millis(5), &reg);
            while n.poll().is_some() {}
        }
    }

    /// Heartbeats and specs as JSON of any shape go through their checks into a registry.
    #[test]
    fn any_json_heartbeat_or_spec_is_checked(text in "\\PC{0,300}") {
        let mut reg = registry();
        if let Ok(status) = serde_json::from_str::<NodeStatus>(&text) {
            let env = Envelope::new(status.node.clone(), 1, 0, qs_wire::MessageId(1), Message::Heartbeat(status.clone()));
            if env.validate().is_ok() {
                reg.observe(status, Time::from_millis(1));
            }
        }
        if let Ok(spec) = qs_wire::decode_workload("kv specs/x", "x", text.as_bytes()) {
            reg.apply_spec(spec, Time::from_millis(2));
        }
        let _ = reg.expire(Time::from_millis(60_000));
    }

    /// A task body of any shape is decoded and checked, and one that passes goes into the
    /// queues; a task built of any numbers is refused or queued, never more.
    #[test]
    fn any_task_body_is_checked_then_queued(
        text in "\\PC{0,300}",
        priority in 0u8..20,
        difficulty in -1.0f64..2.0,
        iterations in 0u32..20_000,
        deadline in 0u64..(8 * 24 * 3_600_000),
    ) {
        let mut q = qs_core::tasks::TaskQueues::new(id("a"), Default::default(), 1);
        if let Ok(spec) = qs_wire::decode_task("api", text.as_bytes()) {
            let _ = q.submit(spec, Time::from_millis(1));
        }
        let body = serde_json::json!({
            "class": "batch", "priority": priority, "difficulty": difficulty,
            "idempotency_key": "k", "max_iterations": iterations, "deadline_ms": deadline,
        });
        if let Ok(spec) = qs_wire::decode_task("api", body.to_string().as_bytes()) {
            prop_assert!(spec.priority <= 9 && (0.0..=1.0).contains(&spec.difficulty));
            prop_assert!(q.submit(spec, Time::from_millis(1)).is_ok());
        }
        q.expire(Time::from_millis(u64::MAX / 2000));
        prop_assert_eq!(q.counts().inbound, 0);
    }

    /// A spec that parses is read back unchanged the KV's way (its JSON, decoded and checked).
    #[test]
    fn a_parsed_spec_reads_back_the_same(replicas in 0i64..5, max in 0i64..8, cpu in 1u32..64, per_node in 1i64..3, interval in 0i64..5000) {
        let text = format!(
            "[service.web]\nreplicas = {replicas}\nmax_replicas = {max}\nmax_per_node = {per_node}\n\
             command = \"run {{port}}\"\nresources = {{ cpu_cores = {cpu}, memory_mib = 64 }}\n\
             health = {{ kind = \"tcp\", interval_ms = {interval} }}\n"
        );
        if let Ok(doc) = qs_wire::parse_spec("t.toml", &text) {
            let spec = &doc.workloads[0];
            let json = serde_json::to_vec(spec).unwrap();
            let back = qs_wire::decode_workload("kv specs/web", "web", &json);
            prop_assert_eq!(back.as_ref(), Ok(spec));
        } else {
            // Refused by the parser: the same values must not pass the KV way in either.
            let bad = max < replicas || interval == 0;
            prop_assert!(bad, "{text}");
        }
    }
}
