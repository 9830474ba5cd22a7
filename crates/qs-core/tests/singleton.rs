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
            port: 0,
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

/// Runs `node` as the steward of `reg` until it emits something `pick` wants (bounded).
fn run_until<T>(
    node: &mut Node,
    reg: &Registry,
    at: &mut Time,
    mut pick: impl FnMut(&Output) -> Option<T>,
) -> (T, Vec<Output>) {
    let mut seen = Vec::new();
    node.handle(Input::Reconcile, *at, reg);
    for _ in 0..200 {
        while let Some(o) = node.poll() {
            if let Some(t) = pick(&o) {
                return (t, seen);
            }
            seen.push(o);
        }
        *at = *at + std::time::Duration::from_millis(50);
        node.handle(Input::Tick, *at, reg);
    }
    panic!("nothing wanted came out: {seen:?}");
}

/// Two nodes with different views (each sees only itself, as during a partition or a join)
/// both steward the same singleton and place it at once with the same fencing token. The
/// claim on the `instances` record settles it: one starts it, the other starts nothing and
/// claims above the holder's token next time.
#[test]
fn two_stewards_placing_one_singleton_at_once_start_it_once() {
    let config = Config::default();
    let text = "[service.train]\npattern = \"gpu-singleton\"\nreplicas = 1\n\
                resources = { cpu_cores = 1, memory_mib = 64, vram_mib = 1024 }\n";
    let train = parse_spec("t.toml", text).unwrap().workloads.remove(0);
    let mut at = Time::from_millis(10_000);
    let mut sides: Vec<(Node, Registry)> = ["a", "b"]
        .iter()
        .map(|n| {
            let mut node = Node::new(&spec(n), config.clone(), 1, Time::ZERO);
            let mut reg = Registry::new(&config);
            reg.observe(node.status(at), at);
            reg.apply_spec(train.clone(), Time::ZERO);
            assert_eq!(
                reg.steward(&train.name),
                Some(&id(n)),
                "each stewards in its view"
            );
            (node, reg)
        })
        .collect();
    let claim_of = |o: &Output| match o {
        Output::Claim { claim, .. } => Some(claim.clone()),
        _ => None,
    };
    let mut claims = Vec::new();
    for (node, reg) in &mut sides {
        let mut t = at;
        claims.push(run_until(node, reg, &mut t, claim_of).0);
    }
    assert_eq!(claims[0].fencing, claims[1].fencing, "both picked token 1");
    // The KV applies a's claim first; b's is refused with a's record.
    let mut record: Option<qs_wire::SingletonClaim> = None;
    let mut starts = 0;
    let mut refused = 0;
    for ((node, reg), claim) in sides.iter_mut().zip(&claims) {
        let result = qs_core::judge_claim(record.as_ref(), claim);
        if result.is_ok() {
            record = Some(claim.clone());
        }
        at = at + std::time::Duration::from_millis(5);
        node.handle(
            Input::Claimed {
                service: train.name.clone(),
                instance: claim.instance.clone(),
                result,
            },
            at,
            reg,
        );
        for o in std::iter::from_fn(|| node.poll()) {
            match o {
                Output::Start(order) => {
                    assert_eq!(order.fencing, claim.fencing);
                    starts += 1;
                }
                Output::Record(qs_wire::Event::ClaimRefused { fencing, .. }) => {
                    assert_eq!(fencing, claims[0].fencing);
                    refused += 1;
                }
                _ => {}
            }
        }
    }
    assert_eq!(
        (starts, refused),
        (1, 1),
        "one copy starts, the other placement ends"
    );
    // The refused steward's next placement claims above the token it saw held.
    let (node, reg) = &mut sides[1];
    let (next, _) = run_until(node, reg, &mut at, claim_of);
    assert_eq!(next.fencing, claims[0].fencing + 1);
    assert!(
        qs_core::judge_claim(Some(&next), &claims[0]).is_err(),
        "tokens only grow"
    );
}
