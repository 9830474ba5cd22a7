//! The registry's unit tests, and the heartbeats other tests of the crate build on.

use super::*;
use qs_wire::{Capacity, Committed, GpuCapacity};

/// A heartbeat of an idle node.
pub(crate) fn status(name: &str, level: u8, gpus: usize) -> NodeStatus {
    NodeStatus {
        capacity: Capacity {
            cpu_millicores: 8000,
            memory_bytes: 1 << 34,
            gpus: vec![
                GpuCapacity {
                    vram_bytes: 1 << 34
                };
                gpus
            ],
        },
        committed: Committed {
            gpu_vram_bytes: vec![0; gpus],
            ..Committed::default()
        },
        ..NodeStatus::idle(NodeId::new(name).unwrap(), level)
    }
}

fn spec(name: &str) -> WorkloadSpec {
    let text = format!("[service.{name}]\nresources = {{ cpu_cores = 1, memory_mib = 64 }}\n");
    qs_wire::parse_spec("t.toml", &text)
        .unwrap()
        .workloads
        .remove(0)
}

/// The steward is the same whichever order nodes joined in, and moves only off dead nodes.
#[test]
fn stewards_follow_rendezvous_hashing() {
    let names: Vec<String> = (0..20).map(|i| format!("n{i}")).collect();
    let svcs: Vec<WorkloadSpec> = (0..30).map(|i| spec(&format!("s{i}"))).collect();
    let build = |order: Vec<&String>| {
        let mut r = Registry::new(&Config::default());
        for s in &svcs[..15] {
            r.apply_spec(s.clone(), Time::ZERO);
        }
        for n in order {
            r.observe(status(n, 0, 0), Time::ZERO);
        }
        for s in &svcs[15..] {
            r.apply_spec(s.clone(), Time::ZERO);
        }
        r
    };
    let a = build(names.iter().collect());
    let b = build(names.iter().rev().collect());
    for s in &svcs {
        assert_eq!(a.steward(&s.name), b.steward(&s.name));
    }
    let mut a = a;
    let victim = a.steward(&svcs[0].name).unwrap().clone();
    let before: BTreeMap<_, _> = svcs
        .iter()
        .map(|s| (s.name.clone(), a.steward(&s.name).cloned()))
        .collect();
    assert!(a.remove(&victim));
    for s in &svcs {
        let now = a.steward(&s.name).cloned();
        if before[&s.name].as_ref() == Some(&victim) {
            assert_ne!(now.as_ref(), Some(&victim));
        } else {
            assert_eq!(now, before[&s.name], "{} moved off a live node", s.name);
        }
    }
    let owned: usize = a
        .live_nodes()
        .map(|n| a.stewarded_by(&n.node).count())
        .sum();
    assert_eq!(owned, svcs.len());
}

/// Incremental elections (joins, deaths, returns) agree with electing from scratch.
#[test]
fn incremental_stewards_match_a_fresh_election() {
    let svcs: Vec<WorkloadSpec> = (0..200).map(|i| spec(&format!("s{i}"))).collect();
    let mut r = Registry::new(&Config::default());
    for s in &svcs {
        r.apply_spec(s.clone(), Time::ZERO);
    }
    let mut rng = Rng::seeded(9);
    let mut live = BTreeSet::new();
    for step in 0..2000u64 {
        let n = format!("n{}", rng.below(600));
        if live.contains(&n) && rng.below(3) == 0 {
            r.remove(&NodeId::new(&n).unwrap());
            live.remove(&n);
        } else {
            r.observe(status(&n, 0, 0), Time::from_millis(step));
            live.insert(n);
        }
    }
    let mut fresh = Registry::new(&Config::default());
    for n in &live {
        fresh.observe(status(n, 0, 0), Time::ZERO);
    }
    for s in &svcs {
        fresh.apply_spec(s.clone(), Time::ZERO);
    }
    for s in &svcs {
        assert_eq!(r.steward(&s.name), fresh.steward(&s.name), "{}", s.name);
    }
}

#[test]
fn silent_nodes_expire_in_order() {
    let mut r = Registry::new(&Config::default());
    r.observe(status("a", 0, 0), Time::from_millis(0));
    r.observe(status("b", 0, 0), Time::from_millis(500));
    assert!(r.expire(Time::from_millis(999)).is_empty());
    let dead: Vec<NodeId> = r
        .expire(Time::from_millis(1000))
        .into_iter()
        .map(|s| s.node)
        .collect();
    assert_eq!(dead, vec![NodeId::new("a").unwrap()]);
    assert_eq!(r.live_count(), 1);
    assert!(matches!(
        r.observe(status("a", 0, 0), Time::from_millis(1200)),
        Some(Membership::Joined(_))
    ));
    assert_eq!(r.live_count(), 2);
}

#[test]
fn a_vouched_node_lives_without_heartbeats_and_a_dead_one_stays_dead() {
    let mut r = Registry::new(&Config::default());
    let a = NodeId::new("a").unwrap();
    r.observe(status("a", 0, 0), Time::from_millis(0));
    r.observe(status("b", 0, 0), Time::from_millis(0));
    r.vouch(&a, Time::from_millis(900));
    let dead: Vec<NodeId> = r
        .expire(Time::from_millis(1000))
        .into_iter()
        .map(|s| s.node)
        .collect();
    assert_eq!(dead, vec![NodeId::new("b").unwrap()], "only b went silent");
    // Vouching never brings back a dead node: only its heartbeat does.
    r.vouch(&NodeId::new("b").unwrap(), Time::from_millis(1000));
    assert_eq!(r.live_count(), 1);
    assert_eq!(r.expire(Time::from_millis(1899)).len(), 0);
    assert_eq!(
        r.expire(Time::from_millis(1900)).len(),
        1,
        "a, once unvouched"
    );
}

#[test]
fn gpu_samples_only_reach_gpu_nodes() {
    let mut r = Registry::new(&Config::default());
    for i in 0..100 {
        r.observe(
            status(&format!("n{i}"), 1, usize::from(i % 10 == 0)),
            Time::ZERO,
        );
    }
    let mut rng = Rng::seeded(3);
    let me = NodeId::new("n1").unwrap();
    let picked = r.sample(&mut rng, true, 8, &me, |_| true);
    assert!(!picked.is_empty());
    for p in picked {
        assert!(!r.status(&p).unwrap().capacity.gpus.is_empty(), "{p}");
    }
}

/// The instance index after a sequence of heartbeats is the one a fresh registry builds from
/// the last of them, whether each heartbeat adds, removes or changes instances, arrives out of
/// order or repeats an id; an instance another node took over is not removed by the first.
#[test]
fn incremental_instance_index_matches_a_fresh_one() {
    let summary = |id: &str, svc: &str, role: Role, serving: bool| InstanceSummary {
        instance: InstanceId::new(id).unwrap(),
        service: ServiceName::new(svc).unwrap(),
        role,
        fencing: 0,
        hot: false,
        serving,
        port: 0,
    };
    let (p, r) = (Role::Primary, Role::Replica);
    let steps: Vec<Vec<InstanceSummary>> = vec![
        vec![summary("a-1", "a", p, false)],
        vec![summary("a-1", "a", p, true), summary("b-1", "b", r, false)],
        vec![summary("a-1", "a", p, true), summary("b-1", "b", r, false)],
        vec![summary("a-0", "a", r, true), summary("b-1", "b", p, true)],
        vec![summary("c-1", "c", r, true), summary("a-0", "a", r, true)],
        vec![summary("a-0", "a", r, true), summary("a-0", "a", p, true)],
        vec![summary("d-1", "d", r, true)],
        vec![],
        vec![summary("a-0", "a", r, false), summary("e-1", "e", p, true)],
    ];
    let index = |reg: &Registry| -> Vec<(String, String, String, bool, bool)> {
        ["a", "b", "c", "d", "e"]
            .iter()
            .flat_map(|s| {
                reg.instances_of(&ServiceName::new(s).unwrap())
                    .map(|(id, r)| {
                        let role = format!("{:?}", r.role);
                        (s.to_string(), id.to_string(), role, r.serving, r.hot)
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let mut incremental = Registry::new(&Config::default());
    for (n, instances) in steps.iter().enumerate() {
        let mut st = status("n1", 0, 0);
        st.instances = instances.clone();
        incremental.observe(st.clone(), Time::from_millis(n as u64));
        let mut fresh = Registry::new(&Config::default());
        fresh.observe(st, Time::ZERO);
        assert_eq!(index(&incremental), index(&fresh), "after step {n}");
    }
    // e-1 moves to n2; n1's next heartbeat without it leaves n2's entry alone.
    let mut other = status("n2", 0, 0);
    other.instances = vec![summary("e-1", "e", p, true)];
    let mut st = status("n1", 0, 0);
    st.instances = steps.last().unwrap().clone();
    incremental.observe(other, Time::from_millis(100));
    st.instances.retain(|i| i.instance.as_str() != "e-1");
    incremental.observe(st, Time::from_millis(101));
    let e: Vec<_> = incremental
        .instances_of(&ServiceName::new("e").unwrap())
        .map(|(_, r)| r.node.to_string())
        .collect();
    assert_eq!(e, ["n2"]);
}

/// Two nodes report one instance (a dispatch that timed out was sent on): when the one that
/// reported it last drops it, the other's next changed heartbeat claims it back.
#[test]
fn an_instance_two_nodes_report_is_not_lost_when_one_drops_it() {
    let summary = |id: &str| InstanceSummary {
        instance: InstanceId::new(id).unwrap(),
        service: ServiceName::new("a").unwrap(),
        role: Role::Replica,
        fencing: 0,
        hot: false,
        serving: true,
        port: 0,
    };
    let beat = |node: &str, ids: &[&str]| {
        let mut st = status(node, 0, 0);
        st.instances = ids.iter().map(|i| summary(i)).collect();
        st
    };
    let holder = |reg: &Registry| -> Option<String> {
        reg.instance(
            &ServiceName::new("a").unwrap(),
            &InstanceId::new("a-1").unwrap(),
        )
        .map(|r| r.node.to_string())
    };
    let mut reg = Registry::new(&Config::default());
    reg.observe(beat("na", &["a-1"]), Time::from_millis(1));
    reg.observe(beat("nb", &["a-1"]), Time::from_millis(2));
    assert_eq!(holder(&reg).as_deref(), Some("nb"));
    reg.observe(beat("nb", &[]), Time::from_millis(3));
    assert_eq!(holder(&reg), None, "nb dropped it; na has not spoken since");
    reg.observe(beat("na", &["a-1", "a-2"]), Time::from_millis(4));
    assert_eq!(holder(&reg).as_deref(), Some("na"));
}

/// Names that come and go (a churning fleet, or names invented by a publisher) do not grow
/// the registry: a node dead for `forget_dead_after_ms` is forgotten and its slot reused, and
/// one that returns after that joins as new.
#[test]
fn nodes_dead_long_enough_are_forgotten_and_their_slots_reused() {
    let config = Config::default();
    let mut reg = Registry::new(&config);
    let forget = Duration::from_millis(config.forget_dead_after_ms);
    let dead = Duration::from_millis(config.dead_after_ms);
    let mut t = Time::ZERO;
    reg.observe(status("keeper", 1, 0), t);
    for round in 0..50 {
        let name = format!("passer-{round}");
        reg.observe(status(&name, 1, 0), t);
        reg.vouch(&NodeId::new("keeper").unwrap(), t + dead);
        t = t + dead + Duration::from_millis(1);
        let gone = reg.expire(t);
        assert_eq!(gone.len(), 1, "round {round}");
        t = t + forget;
        reg.vouch(&NodeId::new("keeper").unwrap(), t);
        reg.expire(t);
        assert!(
            reg.known_count() <= 2,
            "round {round}: {}",
            reg.known_count()
        );
    }
    assert!(
        reg.slots.len() <= 3,
        "{} slots for 51 names",
        reg.slots.len()
    );
    let back = reg.observe(status("passer-0", 1, 0), t);
    assert_eq!(
        back,
        Some(Membership::Joined(NodeId::new("passer-0").unwrap()))
    );
    assert_eq!(reg.live_count(), 2);
}

/// Only nodes whose certificate lets them steward are elected, and losing (or gaining) the
/// capability moves stewardship as a death (or a join) would; a node that may not host
/// weighs nothing, so no weighted sample asks it.
#[test]
fn stewards_and_hosts_are_only_nodes_granted_it() {
    let with = |name: &str, caps: &str| NodeStatus {
        capabilities: Some(Capability::parse_list(caps).unwrap().into()),
        ..status(name, 0, 0)
    };
    let svcs: Vec<WorkloadSpec> = (0..30).map(|i| spec(&format!("s{i}"))).collect();
    let mut r = Registry::new(&Config::default());
    for s in &svcs {
        r.apply_spec(s.clone(), Time::ZERO);
    }
    let names: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        let caps = if i % 2 == 0 { "host" } else { "all" };
        r.observe(with(n, caps), Time::ZERO);
    }
    let stewards = |r: &Registry| -> BTreeSet<NodeId> {
        svcs.iter()
            .filter_map(|s| r.steward(&s.name).cloned())
            .collect()
    };
    let even = |n: &NodeId| n.as_str()[1..].parse::<usize>().unwrap() % 2 == 0;
    assert_eq!(
        svcs.iter().filter(|s| r.steward(&s.name).is_some()).count(),
        30
    );
    assert!(stewards(&r).iter().all(|n| !even(n)), "{:?}", stewards(&r));
    // n1 loses the capability: its services go to others that have it.
    let n1 = NodeId::new("n1").unwrap();
    let had: Vec<&ServiceName> = svcs
        .iter()
        .map(|s| &s.name)
        .filter(|s| r.steward(s) == Some(&n1))
        .collect();
    assert!(!had.is_empty(), "n1 stewards something in this draw");
    r.observe(with("n1", "host"), Time::ZERO);
    assert!(!stewards(&r).contains(&n1));
    assert!(stewards(&r).iter().all(|n| !even(n)));
    // Back again: it wins what rendezvous gives it, as on a join.
    r.observe(with("n1", "all"), Time::ZERO);
    for s in had {
        assert_eq!(r.steward(s), Some(&n1));
    }
    // Stewards only: never sampled as hosts.
    let mut rng = Rng::seeded(7);
    r.observe(with("n2", "steward"), Time::ZERO);
    let me = NodeId::new("n9").unwrap();
    for _ in 0..50 {
        let asked = r.sample(&mut rng, false, 5, &me, |_| true);
        assert!(!asked.iter().any(|n| n.as_str() == "n2"), "{asked:?}");
    }
}
