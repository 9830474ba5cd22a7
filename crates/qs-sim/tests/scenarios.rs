//! Scenario tests: seed 000's stories played on the simulator, asserted through the ledger.

use qs_core::{Config, Time, composite};
use qs_sim::{Action, Network, Sim};
use qs_wire::{
    DeclineReason, Event, HaPattern, LocalVerdict, NodeId, NodeSpec, OfferFrom, PlacementId,
    Resource, Role, SenseReason, ServiceName, WorkloadSpec, parse_spec,
};

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn seed_fleet() -> Vec<NodeSpec> {
    let text = include_str!("../../../examples/seed-fleet.toml");
    parse_spec("examples/seed-fleet.toml", text).unwrap().nodes
}

/// The seed fleet once every node is ready (it has listened for one failure-detection
/// period), with invariant checks on.
fn seed_sim(seed: u64) -> Sim {
    let config = Config::default();
    let ready = Time::from_millis(config.join_settle_ms + 100);
    let mut sim = Sim::new(&seed_fleet(), 3, config, Network::lan_and_vpn(), seed);
    sim.keep_records(true);
    sim.check_invariants(true);
    sim.run_until(ready);
    sim
}

fn spec(toml: &str) -> WorkloadSpec {
    parse_spec("test.toml", toml).unwrap().workloads.remove(0)
}

/// A name for `template` (with `NAME` in it) whose steward is `node`, so stories are fixed.
fn stewarded_by(sim: &Sim, template: &str, node: &str) -> WorkloadSpec {
    (0..1000)
        .map(|i| spec(&template.replace("NAME", &format!("svc-{i}"))))
        .find(|s| {
            let mut reg = sim.registry().clone();
            reg.apply_spec(s.clone(), sim.now());
            reg.steward(&s.name) == Some(&id(node))
        })
        .expect("some name hashes to every node")
}

fn after(sim: &Sim, ms: u64) -> Time {
    Time::from_micros(sim.now().as_micros() + ms * 1000)
}

/// Seed 000's loads: forge at 30 % CPU, msclo over the threshold, the others busy or idle.
fn seed_loads(sim: &mut Sim) {
    let loads = [
        ("msclo", 0.85),
        ("yone", 0.5),
        ("lilo", 0.5),
        ("forge", 0.3),
    ];
    for (node, cpu_util) in loads {
        sim.schedule(
            sim.now(),
            Action::Background {
                node: id(node),
                cpu_util,
            },
        );
    }
    // Let the sensors sample it and a heartbeat carry it.
    sim.run_until(after(sim, 300));
}

fn story<'a>(sim: &'a Sim, p: &PlacementId) -> Vec<&'a Event> {
    sim.records()
        .iter()
        .map(|r| &r.event)
        .filter(|e| placement_of(e) == Some(p))
        .collect()
}

/// Every offer the events tell of, in order.
fn offers_in<'a>(events: impl Iterator<Item = &'a Event>) -> impl Iterator<Item = &'a OfferFrom> {
    events.flat_map(|e| match e {
        Event::Gathered { offers, .. } => offers.as_slice(),
        _ => &[],
    })
}

fn placement_of(e: &Event) -> Option<&PlacementId> {
    match e {
        Event::Sensed { placement, .. }
        | Event::LocalCheck { placement, .. }
        | Event::QuerySent { placement, .. }
        | Event::Gathered { placement, .. }
        | Event::GateRefused { placement, .. }
        | Event::Dispatched { placement, .. }
        | Event::DispatchRefused { placement, .. }
        | Event::Placed { placement, .. }
        | Event::Unplaced { placement, .. } => Some(placement),
        _ => None,
    }
}

fn placed_on(sim: &Sim, service: &ServiceName) -> Vec<NodeId> {
    sim.registry()
        .instances_of(service)
        .map(|(_, r)| r.node.clone())
        .collect()
}

const DNS: &str = r#"
[service.NAME]
pattern = "stateless"
replicas = 1
max_replicas = 2
resources = { cpu_cores = 0.5, memory_mib = 64 }
"#;

/// Seed 000 §3: CPU over 80 % on msi01's DNS; msi01 cannot self-replicate; the capacity
/// query goes to all six others; msclo declines (over threshold); forge answers with the best
/// composite (CPU 30 %, level 1); the dispatch goes to forge; every step is in the ledger.
#[test]
fn seed_000_coredns_story() {
    let mut sim = seed_sim(1);
    seed_loads(&mut sim);
    let dns = stewarded_by(&sim, DNS, "msi01");
    let svc = dns.name.clone();
    sim.schedule(sim.now(), Action::Apply(dns));
    sim.run_until(after(&sim, 500));
    assert_eq!(
        placed_on(&sim, &svc),
        vec![id("msi01")],
        "first replica starts where its steward is"
    );

    sim.schedule(
        sim.now(),
        Action::Spike {
            service: svc.clone(),
            util: 0.95,
            for_ms: 10_000,
        },
    );
    let until = after(&sim, 3000);
    assert!(sim.run_while_not(until, |s| s.registry().instances_of(&svc).count() == 2));

    let hot = sim
        .records()
        .iter()
        .find_map(|r| match &r.event {
            Event::Sensed {
                placement,
                reason: SenseReason::Hot { on, .. },
                ..
            } => {
                assert_eq!(on, &id("msi01"));
                Some(placement.clone())
            }
            _ => None,
        })
        .expect("the hot instance was sensed");
    let events = story(&sim, &hot);
    let kinds: Vec<String> = events
        .iter()
        .map(|e| {
            serde_json::to_value(e).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(kinds[..3], ["sensed", "local-check", "query-sent"]);
    assert_eq!(kinds[kinds.len() - 2..], ["dispatched", "placed"]);
    assert!(matches!(
        events[1],
        Event::LocalCheck {
            verdict: LocalVerdict::Refused {
                reason: DeclineReason::AlreadyRunning
            },
            ..
        }
    ));
    assert!(matches!(
        events[2],
        Event::QuerySent {
            asked: 6,
            live: 7,
            sampled: false,
            ..
        }
    ));
    assert!(events.iter().any(|e| matches!(e,
        Event::Gathered { declined, .. } if declined.iter().any(|d| d.from == id("msclo")
            && d.reason == DeclineReason::OverThreshold { resource: Resource::Cpu }))));
    let offers: Vec<(&NodeId, f64)> = offers_in(events.iter().copied())
        .map(|o| (&o.from, o.composite.value))
        .collect();
    let forge = offers
        .iter()
        .find(|o| o.0 == &id("forge"))
        .expect("forge offered");
    assert_eq!(
        forge.1,
        composite(0.0, None, 0.7, 1).value,
        "forge: CPU 30 %, level 1, no pressure"
    );
    let best = offers.iter().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
    assert_eq!(best.0, &id("forge"));
    assert!(matches!(events[kinds.len() - 1], Event::Placed { on, .. } if on == &id("forge")));
    let mut hosts = placed_on(&sim, &svc);
    hosts.sort();
    assert_eq!(hosts, vec![id("forge"), id("msi01")]);
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
}

/// Seed 000 §6: a node that fails a service gets a higher pressure for it, and its composite
/// for that service drops at the next placement, so the work goes elsewhere.
#[test]
fn a_failure_raises_pressure_and_the_next_placement_avoids_the_node() {
    let mut sim = seed_sim(2);
    seed_loads(&mut sim);
    sim.schedule(sim.now(), Action::BreakStarts(id("forge")));
    let dns = stewarded_by(
        &sim,
        &DNS.replace("replicas = 1\nmax_replicas = 2", "replicas = 2"),
        "msi01",
    );
    let svc = dns.name.clone();
    sim.schedule(sim.now(), Action::Apply(dns));
    let until = after(&sim, 10_000);
    let serving = |s: &Sim| {
        s.registry()
            .instances_of(&svc)
            .filter(|(_, r)| r.serving)
            .count()
    };
    assert!(sim.run_while_not(until, |s| serving(s) == 2));

    let restarts = sim
        .records()
        .iter()
        .filter(|r| r.node == id("forge") && matches!(r.event, Event::InstanceRestarting { .. }))
        .count();
    assert_eq!(
        restarts, 2,
        "forge restarted it in place, with backoff, twice"
    );
    let raised = sim.records().iter().find(|r| {
        r.node == id("forge")
            && matches!(&r.event, Event::PressureRaised { service, .. } if service == &svc)
    });
    assert!(raised.is_some(), "forge's failed start raised its pressure");
    let forge_offers: Vec<f64> = offers_in(sim.records().iter().map(|r| &r.event))
        .filter(|o| o.from == id("forge"))
        .map(|o| o.composite.pressure)
        .collect();
    assert!(
        forge_offers.len() >= 2,
        "forge offered before and after failing: {forge_offers:?}"
    );
    assert_eq!(forge_offers[0], 0.0);
    assert!(forge_offers[forge_offers.len() - 1] > 0.0);
    let hosts = placed_on(&sim, &svc);
    assert!(!hosts.contains(&id("forge")), "{hosts:?}");
    let explain = sim.node(&id("forge")).unwrap().pressure(&svc, sim.now());
    assert!(explain > 0.0 && explain < 0.9);
}

/// gpu-inference goes to the most free VRAM (pcdev, 32 GB, level 2) even though forge
/// (24 GB, level 1) has the higher composite.
#[test]
fn gpu_inference_goes_to_the_most_free_vram() {
    let mut sim = seed_sim(3);
    let llm = stewarded_by(
        &sim,
        "[service.NAME]\npattern = \"gpu-inference\"\nresources = { cpu_cores = 2, memory_mib = 8192, vram_mib = 8192 }\n",
        "msi01",
    );
    let svc = llm.name.clone();
    sim.schedule(sim.now(), Action::Apply(llm));
    sim.run_until(after(&sim, 1000));
    assert_eq!(placed_on(&sim, &svc), vec![id("pcdev")]);
    let offers: Vec<(NodeId, f64)> = offers_in(sim.records().iter().map(|r| &r.event))
        .map(|o| (o.from.clone(), o.composite.value))
        .collect();
    let value = |n: &str| offers.iter().find(|o| o.0 == id(n)).unwrap().1;
    assert!(value("forge") > value("pcdev"), "{offers:?}");
    assert_eq!(
        offers.len(),
        2,
        "only GPU nodes big enough are asked: {offers:?}"
    );
}

/// A gpu-singleton exists once; when its node dies it comes back elsewhere with a higher
/// fencing token, and never runs twice (the invariant check runs after every event).
#[test]
fn a_singleton_moves_once_with_a_higher_fencing_token() {
    let mut sim = seed_sim(4);
    let train = stewarded_by(
        &sim,
        "[service.NAME]\npattern = \"gpu-singleton\"\nresources = { cpu_cores = 4, memory_mib = 16384, vram_mib = 20000 }\n",
        "msi01",
    );
    let svc = train.name.clone();
    sim.schedule(sim.now(), Action::Apply(train));
    sim.run_until(after(&sim, 3000));
    let first = placed_on(&sim, &svc);
    assert_eq!(first.len(), 1);
    let (_, r) = sim.registry().instances_of(&svc).next().unwrap();
    assert_eq!(r.fencing, 1);
    sim.schedule(sim.now(), Action::Kill(first[0].clone()));
    let until = after(&sim, 6000);
    assert!(sim.run_while_not(until, |s| {
        s.registry()
            .instances_of(&svc)
            .any(|(_, r)| r.node != first[0])
    }));
    let (_, r) = sim.registry().instances_of(&svc).next().unwrap();
    assert_eq!(r.fencing, 2);
    sim.run_until(after(&sim, 3000));
    assert_eq!(sim.registry().instances_of(&svc).count(), 1);
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
}

const DB: &str = r#"
[service.NAME]
pattern = "stateful-read"
replicas = 2
AUTO
resources = { cpu_cores = 1, memory_mib = 1024 }
"#;

fn primary_of(sim: &Sim, svc: &ServiceName) -> Option<NodeId> {
    sim.registry()
        .instances_of(svc)
        .find(|(_, r)| r.role == Role::Primary)
        .map(|(_, r)| r.node.clone())
}

/// stateful-read: one primary; when it is lost, a replica is promoted only after the operator
/// approves, unless the spec allows automatic promotion.
#[test]
fn moving_a_primary_needs_approval_unless_auto_promote() {
    for auto in [false, true] {
        let mut sim = seed_sim(5);
        let line = if auto { "auto_promote = true" } else { "" };
        let db = stewarded_by(&sim, &DB.replace("AUTO", line), "msi01");
        let svc = db.name.clone();
        sim.schedule(sim.now(), Action::Apply(db));
        sim.run_until(after(&sim, 2000));
        let primary = primary_of(&sim, &svc).expect("a primary was placed");
        assert_eq!(sim.registry().instances_of(&svc).count(), 2);
        assert_eq!(
            primary,
            id("msi01"),
            "the first instance starts on its steward"
        );
        // Kill the primary's node: its steward moves too, to the next node by rendezvous.
        sim.schedule(sim.now(), Action::Kill(primary.clone()));
        sim.run_until(after(&sim, 3000));
        let asked = sim.records().iter().any(|r| {
            matches!(&r.event,
            Event::PromotionNeedsApproval { service } if service == &svc)
        });
        if auto {
            assert!(!asked);
            assert!(primary_of(&sim, &svc).is_some_and(|p| p != primary));
        } else {
            assert!(asked, "the steward asked the operator");
            assert_eq!(primary_of(&sim, &svc), None, "no primary until approved");
            sim.schedule(sim.now(), Action::ApprovePromotion(svc.clone()));
            sim.run_until(after(&sim, 1000));
            assert!(primary_of(&sim, &svc).is_some());
        }
        assert_eq!(
            sim.registry().instances_of(&svc).count(),
            2,
            "the lost replica was replaced"
        );
        assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    }
}

/// A job's instances each complete once and are not started again.
#[test]
fn job_instances_complete_once() {
    let mut sim = seed_sim(6);
    let job =
        spec("[job.index]\nparallelism = 3\nresources = { cpu_cores = 1, memory_mib = 512 }\n");
    let svc = job.name.clone();
    sim.set_job_duration(svc.clone(), 400);
    sim.schedule(sim.now(), Action::Apply(job));
    sim.run_until(after(&sim, 5000));
    assert_eq!(sim.registry().completed(&svc), 3);
    assert_eq!(sim.registry().instances_of(&svc).count(), 0);
    let starts = sim
        .records()
        .iter()
        .filter(|r| matches!(&r.event, Event::InstanceStarted { service, .. } if service == &svc))
        .count();
    assert_eq!(starts, 3);
}

/// Deleting a spec stops its instances; lowering nothing else.
#[test]
fn deleting_a_spec_stops_its_instances() {
    let mut sim = seed_sim(7);
    let web =
        spec("[service.web]\nreplicas = 3\nresources = { cpu_cores = 1, memory_mib = 256 }\n");
    assert_eq!(web.pattern, HaPattern::Stateless);
    sim.schedule(sim.now(), Action::Apply(web));
    sim.run_until(after(&sim, 2000));
    let svc = ServiceName::new("web").unwrap();
    assert_eq!(sim.registry().instances_of(&svc).count(), 3);
    sim.schedule(sim.now(), Action::Remove(svc.clone()));
    sim.run_until(after(&sim, 1000));
    assert_eq!(sim.registry().instances_of(&svc).count(), 0);
    assert!(sim.nodes().all(|n| n.committed().cpu_millicores == 0));
}
