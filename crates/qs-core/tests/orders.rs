//! Who may order a node around: a dispatch, a stop or a promotion is obeyed only from the node
//! the receiver believes stewards the service (or did, within `steward_grace_ms` of a
//! change), and a dispatch runs the demand of the spec the receiver holds, not the message's.

use qs_core::{Config, Input, Node, Output, Registry, Time};
use qs_wire::{
    Capacity, Demand, Event, InstanceId, Message, NodeId, NodeSpec, PlacementId, Resources, Role,
    ServiceName, WorkloadSpec, parse_spec,
};
use std::collections::BTreeMap;

const GIB: u64 = 1 << 30;
const T: Time = Time::from_millis(1500);

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn node_spec(name: &str) -> NodeSpec {
    NodeSpec {
        id: id(name),
        level: 1,
        labels: BTreeMap::new(),
        capacity: Capacity {
            cpu_millicores: 8000,
            memory_bytes: 16 * GIB,
            gpus: vec![],
        },
    }
}

/// Host `h`, and peers `s1`..`s4` in its registry; a service `web` whose steward is not `h`.
fn setup() -> (Node, Registry, WorkloadSpec, NodeId, NodeId) {
    let config = Config::default();
    let mut reg = Registry::new(&config);
    let mut h = Node::new(&node_spec("h"), config.clone(), 1, Time::ZERO);
    reg.observe(h.status(Time::ZERO), Time::ZERO);
    for n in ["s1", "s2", "s3", "s4"] {
        let mut peer = Node::new(&node_spec(n), config.clone(), 2, Time::ZERO);
        reg.observe(peer.status(Time::ZERO), Time::ZERO);
    }
    let spec = (0..500)
        .map(|i| {
            let text = format!(
                "[service.web-{i}]\nreplicas = 3\nresources = {{ cpu_cores = 1, memory_mib = 128 }}\n"
            );
            parse_spec("t.toml", &text).unwrap().workloads.remove(0)
        })
        .find(|s| {
            let mut r = reg.clone();
            r.apply_spec(s.clone(), T);
            r.steward(&s.name).is_some_and(|n| n != &id("h"))
        })
        .unwrap();
    reg.apply_spec(spec.clone(), T);
    // Everyone was heard from just now.
    for n in ["h", "s1", "s2", "s3", "s4"] {
        reg.vouch(&id(n), T);
    }
    let steward = reg.steward(&spec.name).unwrap().clone();
    let stranger = ["s1", "s2", "s3", "s4"]
        .into_iter()
        .map(id)
        .find(|n| n != &steward)
        .unwrap();
    (h, reg, spec, steward, stranger)
}

fn dispatch(service: &ServiceName, seq: u64, need: Resources, max_per_node: u32) -> Message {
    Message::Dispatch {
        placement: PlacementId {
            steward: id("s1"),
            seq,
        },
        instance: InstanceId::new(&format!("{service}-{seq}")).unwrap(),
        demand: Demand {
            service: service.clone(),
            pattern: qs_wire::HaPattern::Stateless,
            need,
            labels: BTreeMap::new(),
            max_per_node,
        },
        role: Role::Replica,
        fencing: 0,
    }
}

/// What the node did: starts (with the CPU they commit), replies, refusals recorded.
fn outputs(node: &mut Node) -> Vec<String> {
    let mut seen = Vec::new();
    while let Some(out) = node.poll() {
        match out {
            Output::Start(s) => seen.push(format!("start:{}m", s.need.cpu_millicores)),
            Output::Stop { instance, .. } => seen.push(format!("stop:{instance}")),
            Output::Send {
                msg: Message::DispatchReply { refused, .. },
                ..
            } => seen.push(format!("reply:{refused:?}")),
            Output::Record(Event::OrderRefused {
                from,
                order,
                reason,
                ..
            }) => seen.push(format!("refused:{order}:{from}:{reason:?}")),
            _ => {}
        }
    }
    seen
}

#[test]
fn a_dispatch_is_obeyed_only_from_the_steward_and_with_the_spec_held_here() {
    let (mut h, reg, spec, steward, stranger) = setup();
    // A stranger's dispatch, however large its demand, starts nothing.
    let greedy = Resources {
        cpu_millicores: 1,
        memory_bytes: 1,
        vram_bytes: 0,
    };
    h.handle(
        Input::Message {
            from: stranger.clone(),
            msg: dispatch(&spec.name, 1, greedy, 10_000),
        },
        T,
        &reg,
    );
    assert_eq!(
        outputs(&mut h),
        [
            format!("refused:dispatch:{stranger}:NotSteward"),
            "reply:Some(NotSteward)".to_owned()
        ]
    );
    // The steward's dispatch runs, with the spec's demand (1000 m), not the message's (1 m),
    // and the spec's max_per_node (1), not the message's.
    for seq in [2, 3] {
        h.handle(
            Input::Message {
                from: steward.clone(),
                msg: dispatch(&spec.name, seq, greedy, 10_000),
            },
            T,
            &reg,
        );
    }
    assert_eq!(
        outputs(&mut h),
        [
            "start:1000m".to_owned(),
            "reply:None".to_owned(),
            "reply:Some(AlreadyRunning)".to_owned()
        ]
    );
    // A dispatch for a service with no spec here is refused too.
    let unknown = ServiceName::new("nobody-declared-this").unwrap();
    h.handle(
        Input::Message {
            from: steward.clone(),
            msg: dispatch(&unknown, 4, greedy, 1),
        },
        T,
        &reg,
    );
    assert_eq!(
        outputs(&mut h),
        [
            format!("refused:dispatch:{steward}:UnknownService"),
            "reply:Some(UnknownService)".to_owned()
        ]
    );
    // Stop and promote, likewise: a stranger's are refused, the steward's obeyed.
    let running = InstanceId::new(&format!("{}-2", spec.name)).unwrap();
    for from in [&stranger, &steward] {
        h.handle(
            Input::Message {
                from: from.clone(),
                msg: Message::Stop {
                    instance: running.clone(),
                    reason: "scale-in".into(),
                },
            },
            T,
            &reg,
        );
    }
    assert_eq!(
        outputs(&mut h),
        [
            format!("refused:stop:{stranger}:NotSteward"),
            format!("stop:{running}")
        ]
    );
}

/// The other way round: the steward has gone silent here (not yet declared dead), and the
/// node that succeeds it, whose view moved first, is obeyed; a stranger still is not.
#[test]
fn a_successor_is_obeyed_while_the_steward_is_silent() {
    let (mut h, mut reg, spec, steward, _) = setup();
    let config = Config::default();
    let mut without = reg.clone();
    assert!(without.remove(&steward));
    let successor = without.steward(&spec.name).unwrap().clone();
    let stranger = ["s1", "s2", "s3", "s4"]
        .into_iter()
        .map(id)
        .find(|n| n != &steward && n != &successor)
        .unwrap();
    // Everyone but the steward speaks on.
    let later = Time::from_millis(1500 + config.dead_after_ms * 3 / 4);
    for n in ["h", "s1", "s2", "s3", "s4"].map(id) {
        if n != steward {
            reg.vouch(&n, later);
        }
    }
    let need = Resources::default();
    h.handle(
        Input::Message {
            from: stranger.clone(),
            msg: dispatch(&spec.name, 1, need, 1),
        },
        later,
        &reg,
    );
    assert_eq!(
        outputs(&mut h)[0],
        format!("refused:dispatch:{stranger}:NotSteward")
    );
    h.handle(
        Input::Message {
            from: successor.clone(),
            msg: dispatch(&spec.name, 2, need, 1),
        },
        later,
        &reg,
    );
    assert_eq!(outputs(&mut h), ["start:1000m", "reply:None"]);
}

#[test]
fn the_previous_steward_is_obeyed_for_a_grace_window_after_a_change() {
    let (mut h, mut reg, spec, steward, _) = setup();
    let config = Config::default();
    // The steward dies here; its successor is elected, and its orders still count a while.
    assert!(reg.remove(&steward));
    let successor = reg.steward(&spec.name).unwrap().clone();
    assert_ne!(successor, steward);
    let need = Resources::default();
    let within = Time::from_millis(2000 + config.steward_grace_ms / 2);
    h.handle(
        Input::Message {
            from: steward.clone(),
            msg: dispatch(&spec.name, 1, need, 1),
        },
        within,
        &reg,
    );
    assert_eq!(outputs(&mut h), ["start:1000m", "reply:None"]);
    let after = Time::from_millis(1500 + config.steward_grace_ms + 1000);
    h.handle(
        Input::Message {
            from: steward.clone(),
            msg: dispatch(&spec.name, 2, need, 1),
        },
        after,
        &reg,
    );
    assert_eq!(
        outputs(&mut h)[0],
        format!("refused:dispatch:{steward}:NotSteward")
    );
}

/// An instance that starts or stops taking traffic is told to the fleet at once, in a
/// heartbeat that does not wait for its period: the stable addresses forward by it.
#[test]
fn a_change_of_serving_is_heartbeaten_at_once() {
    let (mut h, reg, spec, steward, _) = setup();
    let need = spec.resources;
    h.handle(
        Input::Message {
            from: steward,
            msg: dispatch(&spec.name, 1, need, 1),
        },
        T,
        &reg,
    );
    assert!(outputs(&mut h).contains(&"start:1000m".to_string()));
    let instance = InstanceId::new(&format!("{}-1", spec.name)).unwrap();
    // Ticks until the periodic heartbeat is past, so the next one is a period away.
    let mut now = T;
    let due = |h: &Node| h.poll_timeout().expect("a host always has a heartbeat due");
    while due(&h) <= now {
        h.handle(Input::Tick, now, &reg);
        while h.poll().is_some() {}
        now = now + std::time::Duration::from_millis(1);
    }
    assert!(due(&h) > now, "the next heartbeat is a period away");
    h.handle(
        Input::Probe {
            instance: instance.clone(),
            result: Ok(()),
        },
        now,
        &reg,
    );
    assert!(due(&h) <= now, "a heartbeat is due at once");
    h.handle(Input::Tick, now, &reg);
    let beat = std::iter::from_fn(|| h.poll())
        .find_map(|o| match o {
            Output::Heartbeat(s) => Some(s),
            _ => None,
        })
        .expect("a heartbeat");
    assert!(
        beat.instances
            .iter()
            .any(|i| i.instance == instance && i.serving)
    );
}
