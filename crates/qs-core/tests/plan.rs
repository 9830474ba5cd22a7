//! The reconcile planning function, case by case: a spec, what the steward remembers, what
//! the fleet shows, and the plan in one line. Each row is a rule of the steward.

use qs_core::Config;
use qs_core::Time;
use qs_core::node::plan::{Approval, Facts, Plan, Promoting, Running, Tenure, plan};
use qs_wire::{InstanceId, NodeId, Role, SenseReason, WorkloadSpec, parse_spec};

const NOW: Time = Time::from_millis(100_000);

fn spec(body: &str) -> WorkloadSpec {
    let resources = if body.contains("resources") {
        ""
    } else {
        "\nresources = { cpu_cores = 1, memory_mib = 128 }"
    };
    let text = format!("[{body}{resources}\n");
    parse_spec("t.toml", &text).unwrap().workloads.remove(0)
}

/// `"web-1@a"`, with optional `:primary`, `:hot`, `:fN` (fencing token).
fn running(s: &str) -> Running {
    let mut parts = s.split(':');
    let (instance, node) = parts.next().unwrap().split_once('@').unwrap();
    let mut r = Running {
        instance: InstanceId::new(instance).unwrap(),
        node: NodeId::new(node).unwrap(),
        role: Role::Replica,
        fencing: 0,
        hot: false,
    };
    for flag in parts {
        match flag {
            "primary" => r.role = Role::Primary,
            "hot" => r.hot = true,
            f => r.fencing = f.trim_start_matches('f').parse().unwrap(),
        }
    }
    r
}

fn render(p: &Plan) -> String {
    let mut out = Vec::new();
    for reason in &p.place {
        out.push(match reason {
            SenseReason::Missing { have, want } => format!("place missing {have}/{want}"),
            SenseReason::Hot { instance, on } => format!("place hot {instance}@{on}"),
        });
    }
    for s in &p.stop {
        out.push(format!("stop {}@{} ({})", s.instance, s.node, s.reason));
    }
    if let Some(pr) = &p.promote {
        out.push(format!("promote {}@{}", pr.instance, pr.node));
    }
    if p.ask_approval {
        out.push("ask approval".into());
    }
    out.push(format!("extra {}", p.tenure.extra));
    out.join("; ")
}

struct Case {
    name: &'static str,
    spec: &'static str,
    running: &'static [&'static str],
    /// Adjusts the facts and the tenure before planning.
    setup: fn(&mut Facts, &mut Tenure),
    expect: &'static str,
}

fn none(_: &mut Facts, _: &mut Tenure) {}

const CASES: &[Case] = &[
    Case {
        name: "a new service places every replica",
        spec: "service.web]\nreplicas = 3",
        running: &[],
        setup: none,
        expect: "place missing 0/3; place missing 0/3; place missing 0/3; extra 0",
    },
    Case {
        name: "placements in flight and accepted instances count as had",
        spec: "service.web]\nreplicas = 3",
        running: &["web-1@a"],
        setup: |f, _| {
            f.in_flight = 1;
            f.pending = 1;
        },
        expect: "extra 0",
    },
    Case {
        name: "a hot instance scales out once, within max_replicas",
        spec: "service.web]\nreplicas = 2\nmax_replicas = 4",
        running: &["web-1@a:hot", "web-2@b"],
        setup: none,
        expect: "place hot web-1@a; extra 1",
    },
    Case {
        name: "no second hot scale-out while one is in flight",
        spec: "service.web]\nreplicas = 2\nmax_replicas = 4",
        running: &["web-1@a:hot", "web-2@b"],
        setup: |f, _| f.hot_in_flight = true,
        expect: "extra 0",
    },
    Case {
        name: "no hot scale-out during the cooldown",
        spec: "service.web]\nreplicas = 2\nmax_replicas = 4",
        running: &["web-1@a:hot", "web-2@b"],
        setup: |_, t| {
            t.primed = true;
            t.last_scale_out = Some(Time::from_millis(99_000));
        },
        expect: "extra 0",
    },
    Case {
        name: "no hot scale-out past max_replicas",
        spec: "service.web]\nreplicas = 2\nmax_replicas = 2",
        running: &["web-1@a:hot", "web-2@b"],
        setup: none,
        expect: "extra 0",
    },
    Case {
        name: "a calm service past scale_in_after gives back one extra, newest id first",
        spec: "service.web]\nreplicas = 1\nmax_replicas = 3",
        running: &["web-1@a", "web-2@b", "web-3@c"],
        setup: |_, t| {
            t.primed = true;
            t.extra = 2;
            t.calm_since = Time::ZERO;
        },
        expect: "stop web-3@c (scale in); extra 1",
    },
    Case {
        name: "an inherited tenure adopts what runs above base as extra",
        spec: "service.web]\nreplicas = 1\nmax_replicas = 3",
        running: &["web-1@a", "web-2@b"],
        setup: |_, t| t.calm_since = NOW,
        expect: "extra 1",
    },
    Case {
        name: "scale in never stops the primary",
        spec: "service.db]\npattern = \"stateful-read\"\nreplicas = 1",
        running: &["db-9@a:primary", "db-1@b"],
        setup: |_, t| t.primed = true,
        expect: "stop db-1@b (scale in); extra 0",
    },
    Case {
        name: "a job wants its parallelism less what completed",
        spec: "job.batch]\nparallelism = 3",
        running: &["batch-1@a"],
        setup: |f, _| f.completed = 1,
        expect: "place missing 1/2; extra 0",
    },
    Case {
        name: "a job is never scaled out or in",
        spec: "job.batch]\nparallelism = 1",
        running: &["batch-1@a:hot", "batch-2@b"],
        setup: none,
        expect: "extra 0",
    },
    Case {
        name: "a singleton keeps the newest fencing token and stops the other copy",
        spec: "service.lock]\npattern = \"gpu-singleton\"\nresources = { cpu_cores = 1, memory_mib = 128, vram_mib = 1024 }",
        running: &["lock-1@a:f3", "lock-2@b:f2"],
        setup: none,
        expect: "stop lock-2@b (superseded singleton); extra 0",
    },
    Case {
        name: "a singleton is not placed while one is pending",
        spec: "service.lock]\npattern = \"gpu-singleton\"\nresources = { cpu_cores = 1, memory_mib = 128, vram_mib = 1024 }",
        running: &[],
        setup: |f, _| f.pending = 1,
        expect: "extra 0",
    },
    Case {
        name: "stateful-read without a primary asks the operator",
        spec: "service.db]\npattern = \"stateful-read\"\nreplicas = 2",
        running: &["db-1@a", "db-2@b"],
        setup: none,
        expect: "ask approval; extra 0",
    },
    Case {
        name: "stateful-read asks once",
        spec: "service.db]\npattern = \"stateful-read\"\nreplicas = 2",
        running: &["db-1@a", "db-2@b"],
        setup: |_, t| t.approval = Approval::Requested,
        expect: "extra 0",
    },
    Case {
        name: "an approved promotion promotes the first replica",
        spec: "service.db]\npattern = \"stateful-read\"\nreplicas = 2",
        running: &["db-1@a", "db-2@b"],
        setup: |_, t| t.approval = Approval::Granted,
        expect: "promote db-1@a; extra 0",
    },
    Case {
        name: "auto_promote promotes without asking",
        spec: "service.db]\npattern = \"stateful-read\"\nreplicas = 2\nauto_promote = true",
        running: &["db-1@a", "db-2@b"],
        setup: none,
        expect: "promote db-1@a; extra 0",
    },
    Case {
        name: "a promotion under way is not ordered again",
        spec: "service.db]\npattern = \"stateful-read\"\nreplicas = 2\nauto_promote = true",
        running: &["db-1@a", "db-2@b"],
        setup: |_, t| {
            t.promoting = Some(Promoting {
                instance: InstanceId::new("db-1").unwrap(),
                until: Time::from_millis(200_000),
            })
        },
        expect: "extra 0",
    },
    Case {
        name: "no promotion while a primary is being placed",
        spec: "service.db]\npattern = \"stateful-read\"\nreplicas = 2",
        running: &["db-1@a"],
        setup: |f, _| {
            f.in_flight = 1;
            f.placing_primary = true;
        },
        expect: "extra 0",
    },
];

#[test]
fn every_rule_of_the_steward() {
    let config = Config::default();
    let mut failures = Vec::new();
    for case in CASES {
        let spec = spec(case.spec);
        let mut facts = Facts {
            running: case.running.iter().map(|r| running(r)).collect(),
            ..Facts::default()
        };
        let mut tenure = Tenure::new(NOW);
        (case.setup)(&mut facts, &mut tenure);
        let got = render(&plan(&spec, &tenure, &facts, NOW, &config));
        if got != case.expect {
            failures.push(format!(
                "{}:\n  want {}\n  got  {got}",
                case.name, case.expect
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
