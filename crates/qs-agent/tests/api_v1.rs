//! The HTTP API's JSON, pinned: one insta snapshot per endpoint of a representative response,
//! and each response decodes back to what was encoded (the CLI decodes these types).

use qs_agent::v1::{
    Applied, Approved, CheckpointState, Deleted, DesiredState, Drain, ErrorBody, Explain,
    ExplainRow, Health, Instance, Killed, LedgerState, NodeQueue, Panicked, Paused, QueueStats,
    ServiceRow,
};
use qs_wire::{
    Composite, DeclineReason, HaPattern, InstanceId, NodeId, Offer, Resource, Role, ServiceName,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt::Debug;

fn node(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn service(s: &str) -> ServiceName {
    ServiceName::new(s).unwrap()
}

/// Pretty JSON of `value`, checked to decode back to it.
fn json<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) -> String {
    let text = serde_json::to_string_pretty(value).unwrap();
    let back: T = serde_json::from_str(&text).unwrap();
    assert_eq!(&back, value, "{text}");
    text
}

#[test]
fn get_health() {
    insta::assert_snapshot!(json(&Health {
        status: "degraded".into(),
        reason: Some("the ledger takes no writes: No space left on device".into()),
        mode: "nats".into(),
        nodes: 1,
        ledger_next_seq: 42,
        token_file: Some("/var/lib/qs/api.token".into()),
    }));
}

#[test]
fn get_queue_stats() {
    let queue = NodeQueue {
        placements_in_flight: 2,
        instances: 3,
        stewarded_services: 1,
    };
    insta::assert_snapshot!(json(&QueueStats {
        nodes: BTreeMap::from([(node("forge"), queue)]),
        tasks: qs_core::tasks::QueueCounts {
            concurrency: 16,
            inbound: 4,
            running: 2,
            refinement: 1,
            outbound: 1,
            completed: 9,
            failed: 1,
            cancelled: 0,
        },
        workers_disconnected: 1,
    }));
}

#[test]
fn get_checkpoint_state() {
    insta::assert_snapshot!(json(&CheckpointState {
        state_dir: "/var/lib/qs".into(),
        ledger: LedgerState {
            path: "/var/lib/qs/ledger.redb".into(),
            next_seq: 7,
            bytes: 4096,
            compacted: qs_store::Snapshot {
                through_seq: 2,
                removed: 1,
                removed_by_event: [("placed".to_owned(), 1)].into(),
                first_at_us: Some(10),
                last_at_us: Some(10),
                carried: 1,
                compactions: 1,
            },
        },
        desired_state: DesiredState { specs: 3 },
        tasks: qs_agent::v1::TaskCheckpoints {
            store: "/var/lib/qs/tasks.redb".into(),
            checkpoints: 1,
            latest: vec![qs_agent::v1::TaskCheckpoint {
                task: qs_wire::TaskId::new("forge-t17").unwrap(),
                iteration: 3,
                attempt: 4,
                bytes: 120,
                model: Some(qs_wire::ServiceName::new("small").unwrap()),
                hash: 0x5eed,
            }],
            fleet_written: 9,
            fleet_pending: 0,
        },
    }));
}

#[test]
fn get_v1_nodes_explain() {
    let offer = Offer {
        composite: Composite {
            pressure: 0.0,
            vram_free: 1.0,
            cpu_free: 0.75,
            level_weight: 1.0,
            value: 0.75,
        },
        gpu: None,
        vram_free_bytes: 0,
    };
    insta::assert_snapshot!(json(&Explain {
        service: service("fleet-dns"),
        nodes: vec![
            ExplainRow::Offers {
                node: node("forge"),
                offer,
                passes_gate: true,
            },
            ExplainRow::Declines {
                node: node("msclo"),
                declines: DeclineReason::OverThreshold {
                    resource: Resource::Cpu,
                },
                reason: DeclineReason::OverThreshold {
                    resource: Resource::Cpu,
                }
                .to_string(),
            },
        ],
    }));
}

#[test]
fn get_v1_services() {
    insta::assert_snapshot!(json(&vec![ServiceRow {
        name: service("fleet-dns"),
        kind: "service".into(),
        pattern: HaPattern::Stateless,
        wanted: 1,
        max: 3,
        running: 2,
        serving: 2,
        completed: 0,
        steward: Some(node("msi01")),
    }]));
}

#[test]
fn get_v1_instances() {
    insta::assert_snapshot!(json(&vec![Instance {
        instance: InstanceId::new("fleet-dns-0000002a").unwrap(),
        service: service("fleet-dns"),
        node: node("forge"),
        role: Role::Replica,
        serving: true,
        hot: false,
        fencing: 0,
        pid: Some(4242),
        port: Some(5353),
    }]));
}

#[test]
fn post_v1_specs() {
    insta::assert_snapshot!(json(&Applied {
        applied: vec![service("fleet-dns"), service("web")],
    }));
}

#[test]
fn delete_v1_specs() {
    insta::assert_snapshot!(json(&Deleted {
        deleted: service("web"),
    }));
}

#[test]
fn post_v1_chaos_kill() {
    insta::assert_snapshot!(json(&vec![
        Killed::Agent {
            killed_agent: node("forge"),
            pid: 100,
        },
        Killed::Node {
            killed_node: node("lilo"),
        },
        Killed::Instance {
            killed: InstanceId::new("web-00000001").unwrap(),
            node: node("yone"),
        },
    ]));
}

#[test]
fn post_v1_chaos_pause() {
    insta::assert_snapshot!(json(&vec![
        Paused::Agent {
            paused_agent: node("forge"),
            pid: 100,
            ms: 3000,
        },
        Paused::Node {
            paused_node: node("lilo"),
            ms: 3000,
        },
    ]));
}

#[test]
fn post_v1_chaos_panic() {
    insta::assert_snapshot!(json(&Panicked {
        panicking: node("forge"),
        pid: 100,
    }));
}

#[test]
fn post_v1_nodes_drain() {
    insta::assert_snapshot!(json(&Drain {
        node: node("forge"),
        draining: true,
    }));
}

#[test]
fn post_v1_services_approve() {
    insta::assert_snapshot!(json(&Approved {
        approved: service("db"),
        steward: node("msi01"),
    }));
}

#[test]
fn any_error() {
    insta::assert_snapshot!(json(&ErrorBody {
        error: "no service or job named web".into(),
    }));
}
