//! How a node answers failure-detection probes: each case is one message in and the outputs
//! it causes, written out.

use qs_core::{Config, Input, Node, Output, Registry, Time};
use qs_wire::{Capacity, Message, NodeId, NodeSpec};
use std::collections::BTreeMap;

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

/// Node `t` receives `msg` from `from`; returns every output.
fn answer(from: &str, msg: Message) -> Vec<Output> {
    let spec = NodeSpec {
        id: id("t"),
        level: 0,
        labels: BTreeMap::new(),
        capacity: Capacity::default(),
    };
    let config = Config::default();
    let mut node = Node::new(&spec, config.clone(), 1, Time::ZERO);
    let reg = Registry::new(&config);
    let input = Input::Message {
        from: id(from),
        msg,
    };
    node.handle(input, Time::from_millis(10), &reg);
    std::iter::from_fn(|| node.poll()).collect()
}

fn send(to: &str, msg: Message) -> Output {
    Output::Send { to: id(to), msg }
}

fn check(from: &str, msg: Message, expect: &[Output]) {
    let got = answer(from, msg.clone());
    assert_eq!(
        format!("{got:?}"),
        format!("{expect:?}"),
        "{msg:?} from {from}"
    );
}

#[test]
fn probes_are_answered_the_way_they_came() {
    let ack = |origin: &str| Message::Ack {
        nonce: 5,
        target: id("t"),
        origin: id(origin),
    };
    let ping = |origin: &str, via: Option<&str>| Message::Ping {
        nonce: 5,
        origin: id(origin),
        via: via.map(id),
    };
    // A direct ping: the ack goes straight back.
    check("a", ping("a", None), &[send("a", ack("a"))]);
    // A ping relayed by r for a: the ack goes back through r.
    check("r", ping("a", Some("r")), &[send("r", ack("a"))]);
    // Asked to relay: t pings the target for a, as the relay.
    check(
        "a",
        Message::PingReq {
            target: id("x"),
            nonce: 5,
        },
        &[send(
            "x",
            Message::Ping {
                nonce: 5,
                origin: id("a"),
                via: Some(id("t")),
            },
        )],
    );
    // An ack for someone else is forwarded to its origin; one for t goes to its detector.
    let ack_of_x = |origin: &str| Message::Ack {
        nonce: 5,
        target: id("x"),
        origin: id(origin),
    };
    check("x", ack_of_x("a"), &[send("a", ack_of_x("a"))]);
    check(
        "r",
        ack_of_x("t"),
        &[Output::Ack {
            target: id("x"),
            nonce: 5,
        }],
    );
}
