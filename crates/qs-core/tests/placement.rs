//! The 5 steps driven by hand: one steward, offers and replies written by the test, and the
//! story of the ledger compared with the expected one.

use qs_core::{Config, Input, Node, Output, Registry, Time, composite};
use qs_wire::{
    Capacity, DeclineReason, Demand, Event, LocalVerdict, Message, NodeId, NodeSpec, Offer,
    PlacementId, Resource, Role, parse_spec,
};
use std::collections::BTreeMap;

const GIB: u64 = 1 << 30;
/// Nodes are created at zero and ready (done listening for members) at 1 s.
const START: Time = Time::from_millis(1500);

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn node_spec(name: &str, cpu_millicores: u64) -> NodeSpec {
    NodeSpec {
        id: id(name),
        level: 1,
        labels: BTreeMap::new(),
        capacity: Capacity {
            cpu_millicores,
            memory_bytes: 16 * GIB,
            gpus: vec![],
        },
    }
}

/// Steward `a` (too small to run anything itself) and peers `b`..`e` in its registry, with a
/// service whose steward is `a`.
fn setup() -> (Node, Registry) {
    let config = Config::default();
    let mut reg = Registry::new(&config);
    let mut a = Node::new(&node_spec("a", 1), config.clone(), 1, Time::ZERO);
    reg.observe(a.status(Time::ZERO), Time::ZERO);
    for n in ["b", "c", "d", "e"] {
        let mut peer = Node::new(&node_spec(n, 8000), config.clone(), 2, Time::ZERO);
        reg.observe(peer.status(Time::ZERO), Time::ZERO);
    }
    let spec = (0..500)
        .map(|i| {
            let text =
                format!("[service.web-{i}]\nresources = {{ cpu_cores = 1, memory_mib = 128 }}\n");
            parse_spec("t.toml", &text).unwrap().workloads.remove(0)
        })
        .find(|s| {
            let mut r = reg.clone();
            r.apply_spec(s.clone(), START);
            r.steward(&s.name) == Some(&id("a"))
        })
        .unwrap();
    reg.apply_spec(spec, START);
    (a, reg)
}

/// One line per output: ledger events by kind and node, dispatches by target. Returns the
/// instance of the last dispatch sent, so the test can answer it.
fn drain(node: &mut Node, story: &mut Vec<String>) -> Option<qs_wire::InstanceId> {
    let mut dispatched = None;
    while let Some(out) = node.poll() {
        let line = match out {
            Output::Record(e) => match e {
                Event::Sensed { .. } => "sensed".to_owned(),
                Event::LocalCheck {
                    verdict: LocalVerdict::Refused { reason },
                    ..
                } => format!("local-refused:{reason}"),
                Event::LocalCheck { .. } => "local-ok".to_owned(),
                Event::QuerySent { asked, .. } => format!("query:{asked}"),
                Event::Gathered {
                    offers,
                    declined,
                    silent,
                    ..
                } => {
                    let offers = offers.iter().map(|o| format!("offer:{}", o.from));
                    let declined = declined.iter().map(|d| format!("declined:{}", d.from));
                    let silent = silent.iter().map(|n| format!("silent:{n}"));
                    offers
                        .chain(declined)
                        .chain(silent)
                        .collect::<Vec<_>>()
                        .join(" ")
                }
                Event::GateRefused { from, .. } => format!("gate-refused:{from}"),
                Event::Dispatched { to, .. } => format!("dispatched:{to}"),
                Event::DispatchRefused {
                    to,
                    reason: Some(_),
                    ..
                } => format!("refused:{to}"),
                Event::DispatchRefused {
                    to, reason: None, ..
                } => format!("timeout:{to}"),
                Event::Placed { on, .. } => format!("placed:{on}"),
                Event::Unplaced { retry, .. } => format!("unplaced:retry={retry}"),
                other => format!("{other:?}"),
            },
            Output::Send {
                msg: Message::Dispatch { instance, .. },
                ..
            } => {
                dispatched = Some(instance);
                continue;
            }
            Output::Send {
                msg: Message::CapacityQuery { .. },
                ..
            }
            | Output::Heartbeat(_) => continue,
            other => format!("{other:?}"),
        };
        story.push(line);
    }
    dispatched
}

fn offer(value_per_level_weight: f64) -> Offer {
    Offer {
        composite: composite(0.0, None, value_per_level_weight, 1),
        gpu: None,
        vram_free_bytes: 0,
    }
}

/// Each answer: (node, cpu_free of its offer or None to decline). Each reply to a dispatch:
/// (node, refuse?). Then the story expected, as one string.
fn check(answers: &[(&str, Option<f64>)], replies: &[(&str, bool)], expect: &str) {
    let (mut a, reg) = setup();
    let mut story = Vec::new();
    let t = |ms: u64| Time::from_micros(START.as_micros() + ms * 1000);
    a.handle(Input::Reconcile, t(1), &reg);
    drain(&mut a, &mut story);
    let pid = PlacementId {
        steward: id("a"),
        seq: 0,
    };
    let mut dispatched = None;
    for (n, answer) in answers {
        let msg = match answer {
            Some(cpu_free) => Message::Offer {
                placement: pid.clone(),
                offer: offer(*cpu_free),
            },
            None => Message::Decline {
                placement: pid.clone(),
                reason: DeclineReason::NoFit {
                    resource: Resource::Memory,
                },
            },
        };
        a.handle(Input::Message { from: id(n), msg }, t(2), &reg);
        dispatched = drain(&mut a, &mut story).or(dispatched);
    }
    for (n, refuse) in replies {
        let msg = Message::DispatchReply {
            placement: pid.clone(),
            instance: dispatched.clone().expect("a dispatch is out"),
            refused: refuse.then_some(DeclineReason::NoFit {
                resource: Resource::Cpu,
            }),
        };
        a.handle(Input::Message { from: id(n), msg }, t(3), &reg);
        dispatched = drain(&mut a, &mut story).or(dispatched);
    }
    if replies.is_empty() && !answers.is_empty() && answers.len() < 4 {
        // Not everyone answered: the gathering deadline closes the round.
        a.handle(Input::Tick, t(600), &reg);
        drain(&mut a, &mut story);
    }
    assert_eq!(story.join(" "), expect);
}

#[test]
fn the_five_steps_by_hand() {
    let head = "sensed local-refused:not enough free cpu query:4";
    // The best composite wins; offers at or under the gate are refused.
    check(
        &[
            ("b", Some(0.5)),
            ("c", Some(0.9)),
            ("d", Some(0.01)),
            ("e", None),
        ],
        &[("c", false)],
        &format!("{head} offer:b offer:c offer:d declined:e gate-refused:d dispatched:c placed:c"),
    );
    // Late binding: the best target refuses, the next offer gets the dispatch.
    check(
        &[
            ("b", Some(0.5)),
            ("c", Some(0.9)),
            ("d", Some(0.3)),
            ("e", None),
        ],
        &[("c", true), ("b", false)],
        &format!(
            "{head} offer:b offer:c offer:d declined:e dispatched:c refused:c dispatched:b placed:b"
        ),
    );
    // Every target refuses: the round ends and the placement backs off to retry.
    check(
        &[("b", Some(0.5)), ("c", None), ("d", None), ("e", None)],
        &[("b", true)],
        &format!(
            "{head} offer:b declined:c declined:d declined:e dispatched:b refused:b unplaced:retry=true"
        ),
    );
    // Nobody passes the gate: no dispatch at all.
    check(
        &[("b", Some(0.02)), ("c", None), ("d", None), ("e", None)],
        &[],
        &format!(
            "{head} offer:b declined:c declined:d declined:e gate-refused:b unplaced:retry=true"
        ),
    );
    // Two never answer: the gathering deadline closes the round with what came back.
    check(
        &[("b", Some(0.5)), ("c", None)],
        &[],
        &format!("{head} offer:b declined:c silent:d silent:e dispatched:b"),
    );
}

/// Target side: a dispatch that no longer fits is refused (late binding), and a repeated
/// dispatch of an accepted instance is accepted again without running it twice.
#[test]
fn targets_recheck_fit_at_dispatch() {
    let config = Config::default();
    // Node a, alone in b's view, stewards what b holds the specs of.
    let mut reg = Registry::new(&config);
    let mut a = Node::new(&node_spec("a", 1), config.clone(), 1, Time::ZERO);
    reg.observe(a.status(Time::ZERO), Time::ZERO);
    for svc in ["one", "two"] {
        let text =
            format!("[service.{svc}]\nresources = {{ cpu_cores = 1.5, memory_mib = 1024 }}\n");
        reg.apply_spec(
            parse_spec("t.toml", &text).unwrap().workloads.remove(0),
            Time::ZERO,
        );
    }
    let mut b = Node::new(&node_spec("b", 2000), config, 3, Time::ZERO);
    let demand = |svc: &str| Demand {
        service: qs_wire::ServiceName::new(svc).unwrap(),
        pattern: qs_wire::HaPattern::Stateless,
        need: qs_wire::Resources {
            cpu_millicores: 1500,
            memory_bytes: GIB,
            vram_bytes: 0,
        },
        labels: BTreeMap::new(),
        max_per_node: 1,
    };
    let pid = PlacementId {
        steward: id("a"),
        seq: 0,
    };
    let mut replies = Vec::new();
    for (svc, inst) in [("one", "one-1"), ("one", "one-1"), ("two", "two-1")] {
        let msg = Message::Dispatch {
            placement: pid.clone(),
            instance: qs_wire::InstanceId::new(inst).unwrap(),
            demand: demand(svc),
            role: Role::Replica,
            fencing: 0,
        };
        b.handle(
            Input::Message { from: id("a"), msg },
            Time::from_millis(1),
            &reg,
        );
        while let Some(out) = b.poll() {
            if let Output::Send {
                msg: Message::DispatchReply { refused, .. },
                ..
            } = out
            {
                replies.push(refused);
            }
        }
    }
    assert_eq!(
        replies,
        vec![
            None,
            None,
            Some(DeclineReason::NoFit {
                resource: Resource::Cpu
            })
        ]
    );
    assert_eq!(b.hosted().len(), 1);
    assert_eq!(b.committed().cpu_millicores, 1500);
}

/// A node whose host CPU is saturated: with the sensed CPU counting (the default) it
/// declines or offers nothing the gate passes, whatever `thresholds.cpu` allows; with
/// `cpu_sensed = false` (agents sharing one host) only what its instances were committed
/// counts, so it offers the room it has.
#[test]
fn a_saturated_host_offers_only_when_its_sensed_cpu_does_not_count() {
    let demand = Demand {
        service: qs_wire::ServiceName::new("web").unwrap(),
        pattern: qs_wire::HaPattern::Stateless,
        need: qs_wire::Resources {
            cpu_millicores: 100,
            memory_bytes: GIB / 32,
            vram_bytes: 0,
        },
        labels: BTreeMap::new(),
        max_per_node: 1,
    };
    // (thresholds.cpu, cpu_sensed, declines, passes the gate)
    let cases = [
        (0.8, true, true, false),
        (1.0, true, false, false),
        (1.0, false, false, true),
        (0.8, false, false, true),
    ];
    for (cpu, cpu_sensed, declines, passes) in cases {
        let mut config = Config::default();
        config.thresholds.cpu = cpu;
        config.thresholds.cpu_sensed = cpu_sensed;
        let reg = Registry::new(&config);
        let mut b = Node::new(&node_spec("b", 2000), config.clone(), 1, Time::ZERO);
        let load = qs_wire::Load {
            cpu_util: 1.0,
            memory_used_bytes: GIB,
            gpus: vec![],
        };
        let instances = BTreeMap::new();
        b.handle(Input::Sensed { load, instances }, Time::ZERO, &reg);
        let case = format!("thresholds.cpu {cpu}, cpu_sensed {cpu_sensed}");
        match b.offer_for(&demand, START, &reg) {
            Err(reason) => {
                assert!(declines, "{case}: declined ({reason:?})");
                assert_eq!(
                    reason,
                    DeclineReason::OverThreshold {
                        resource: Resource::Cpu
                    }
                );
            }
            Ok(offer) => {
                assert!(!declines, "{case}: offered {offer:?}");
                assert_eq!(offer.composite.value > config.gate_min, passes, "{case}");
            }
        }
    }
}
