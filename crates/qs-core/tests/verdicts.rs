//! The core's verdicts that the shells once made themselves: the health verdict over a run
//! of probes, the singleton record check, and who hears of a change of the registry.

use qs_core::health::{Probed, Verdict, judge};
use qs_core::{
    Config, FleetChange, Input, Notice, Recipients, RecordVerdict, Registry, Time, caused_by,
    judge_record,
};
use qs_wire::{
    HealthCheck, InstanceId, NodeId, NodeStatus, Probe, ServiceName, SingletonClaim, parse_spec,
};
use std::collections::BTreeSet;

fn check(failures: u32, start_period_ms: u64) -> HealthCheck {
    HealthCheck {
        probe: Probe::Tcp,
        interval_ms: 1000,
        timeout_ms: 500,
        start_period_ms,
        failures,
    }
}

/// A run of probe results at the given milliseconds after start, and the verdict of each.
#[test]
fn the_health_verdict_over_a_run_of_probes() {
    let bad = || Err("refused".to_string());
    type Run = &'static [(u64, bool)];
    let cases: &[(&str, Option<HealthCheck>, Run, &[&str])] = &[
        (
            "serves on the first pass",
            Some(check(3, 0)),
            &[(100, true), (1100, true)],
            &["serving", "-"],
        ),
        (
            "fails after `failures` in a row once serving",
            Some(check(3, 0)),
            &[(100, true), (1100, false), (2100, false), (3100, false)],
            &["serving", "not serving", "-", "failed: refused"],
        ),
        (
            "a pass resets the count",
            Some(check(2, 0)),
            &[(100, true), (1100, false), (2100, true), (3100, false)],
            &["serving", "not serving", "serving", "not serving"],
        ),
        (
            "failures in the start period do not count",
            Some(check(1, 5000)),
            &[(100, false), (2000, false), (4900, false), (5100, false)],
            &["-", "-", "-", "failed: refused"],
        ),
        (
            "without a check, up is serving and an error only leaves service",
            None,
            &[(200, true), (1200, false)],
            &["serving", "not serving"],
        ),
    ];
    for (name, check, run, want) in cases {
        let mut state = Probed::started(Time::ZERO);
        let got: Vec<String> = run
            .iter()
            .map(|(at, ok)| {
                let result = if *ok { Ok(()) } else { bad() };
                match judge(check.as_ref(), &mut state, result, Time::from_millis(*at)) {
                    Verdict::Unchanged => "-".into(),
                    Verdict::Serving => "serving".into(),
                    Verdict::NotServing => "not serving".into(),
                    Verdict::Failed { reason } => format!("failed: {reason}"),
                }
            })
            .collect();
        assert_eq!(&got, want, "{name}");
    }
}

fn claim(instance: &str, fencing: u64) -> SingletonClaim {
    SingletonClaim {
        instance: InstanceId::new(instance).unwrap(),
        fencing,
        steward: NodeId::new("a").unwrap(),
    }
}

#[test]
fn the_singleton_record_check() {
    let mine = claim("lock-2", 2);
    let cases: &[(&str, Option<Vec<u8>>, RecordVerdict)] = &[
        ("absent", None, RecordVerdict::Write),
        (
            "older token",
            Some(claim("lock-1", 1).encode()),
            RecordVerdict::Write,
        ),
        (
            "our own token again",
            Some(mine.encode()),
            RecordVerdict::Write,
        ),
        (
            "same token, another instance",
            Some(claim("lock-9", 2).encode()),
            RecordVerdict::Refused(claim("lock-9", 2)),
        ),
        (
            "newer token",
            Some(claim("lock-3", 3).encode()),
            RecordVerdict::Refused(claim("lock-3", 3)),
        ),
    ];
    for (name, record, want) in cases {
        assert_eq!(&judge_record(record.as_deref(), &mine), want, "{name}");
    }
    // Unreadable counts as absent, and says why.
    match judge_record(Some(b"{\"instance\": 7}"), &mine) {
        RecordVerdict::Replace { why } => assert!(why.contains("unreadable"), "{why}"),
        other => panic!("an unreadable record gave {other:?}"),
    }
    // A token beyond any a claim reaches (u64::MAX once wrapped the next one to 0, and any
    // larger one stopped the genuine singleton) holds nothing.
    for fencing in [u64::MAX, qs_wire::bounds::MAX_FENCING + 1] {
        match judge_record(Some(&claim("lock-x", fencing).encode()), &mine) {
            RecordVerdict::Replace { why } => assert!(why.contains("beyond"), "{why}"),
            other => panic!("fencing {fencing} gave {other:?}"),
        }
    }
}

#[test]
fn who_hears_of_a_change_of_the_registry() {
    let config = Config::default();
    let mut reg = Registry::new(&config);
    let mut a = qs_core::Node::new(
        &qs_wire::NodeSpec {
            id: NodeId::new("a").unwrap(),
            level: 0,
            labels: Default::default(),
            capacity: Default::default(),
        },
        config.clone(),
        1,
        Time::ZERO,
    );
    let status: NodeStatus = a.status(Time::ZERO);
    reg.observe(status, Time::ZERO);
    let web = ServiceName::new("web").unwrap();
    let spec = parse_spec(
        "t.toml",
        "[service.web]\nresources = { cpu_cores = 1, memory_mib = 64 }\n",
    )
    .unwrap()
    .workloads
    .remove(0);
    reg.apply_spec(spec, Time::ZERO);
    let node = NodeId::new("b").unwrap();
    let every = qs_core::Caused {
        to: Recipients::Every,
        notice: Notice {
            all: true,
            services: BTreeSet::new(),
        },
    };
    for change in [
        FleetChange::Joined(node.clone()),
        FleetChange::Died(node.clone()),
        FleetChange::Quarantined(node.clone()),
        FleetChange::SpecRemoved(web.clone()),
    ] {
        assert_eq!(
            caused_by(&change, &reg).as_ref(),
            Some(&every),
            "{change:?}"
        );
    }
    let to_steward = caused_by(&FleetChange::SpecChanged(web.clone()), &reg).unwrap();
    assert_eq!(to_steward.to, Recipients::Node(NodeId::new("a").unwrap()));
    assert_eq!(
        to_steward.notice.clone().into_inputs(),
        vec![Input::ReconcileService(web.clone())]
    );
    // Notices coalesce: a full reconcile covers every named service.
    let mut n = to_steward.notice;
    n.merge(every.notice);
    assert_eq!(n.into_inputs(), vec![Input::Reconcile]);
    // Nobody alive: nobody stewards the spec, nobody hears of it.
    let empty = Registry::new(&config);
    assert_eq!(caused_by(&FleetChange::SpecChanged(web), &empty), None);
}
