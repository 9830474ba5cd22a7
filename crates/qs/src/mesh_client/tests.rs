//! `qs mesh`'s sentences and tables, from the JSON the agent answers with.

use super::*;
use qs_wire::mesh::{AgentId, Busy, RoutedAgent};

#[test]
fn scopes_are_read_in_every_spelling() {
    for (text, want) in [
        ("", Scope::Global),
        ("all", Scope::Global),
        ("sector 7", Scope::Sector(SectorId(7))),
        ("S7", Scope::Sector(SectorId(7))),
        ("SECTOR-12", Scope::Sector(SectorId(12))),
        ("cluster 4", Scope::Cluster(ClusterId(4))),
        ("C4", Scope::Cluster(ClusterId(4))),
    ] {
        assert_eq!(scope_of(text).unwrap(), want, "{text:?}");
    }
    assert!(scope_of("galaxy 9").is_err());
    // A heal's `auto` (the seed's default) is the whole mesh; its scopes as any.
    assert_eq!(heal_scope("auto").unwrap(), Scope::Global);
    assert_eq!(
        heal_scope("sector 12").unwrap(),
        scope_of("sector 12").unwrap()
    );
    assert!(heal_scope("galaxy 9").is_err());
}

#[test]
fn delegations_name_a_class_as_the_seed_or_an_operator_would() {
    let table = [
        ("D", Some(ImpedanceClass::D)),
        ("d", Some(ImpedanceClass::D)),
        ("CLASS_D_GPU", Some(ImpedanceClass::D)),
        ("class-a-edge", Some(ImpedanceClass::A)),
        ("gpu", Some(ImpedanceClass::D)),
        ("serverless", Some(ImpedanceClass::B)),
        ("F", Some(ImpedanceClass::F)),
        ("best_available", None),
        ("best", None),
    ];
    for (text, want) in table {
        assert_eq!(class_of(text).unwrap(), want, "{text:?}");
    }
    for bad in ["G", "CLASS_D_EDGE", "fastest", ""] {
        assert!(class_of(bad).is_err(), "{bad:?}");
    }
}

/// The root's named answer, as it serializes one, reads as one line.
#[test]
fn a_named_answer_reads_as_who_answered_what() {
    use qs_wire::mesh::{AgentId, NamedAnswer, Trinary};
    let n = |class, state, answer: &str| {
        serde_json::json!(NamedAnswer {
            agent: AgentId(0xab),
            cluster: ClusterId(7),
            sector: SectorId(3),
            class,
            state,
            answer: answer.into(),
            took_ms: 34_200,
        })
    };
    let table = [
        (
            n(Some(ImpedanceClass::D), Trinary::Ready, "done: 42"),
            "agent 00000000000000ab (class D, sector 3, cluster 7): READY after 34200 ms \
             of work: \"done: 42\"",
        ),
        (
            n(None, Trinary::Conflict, ""),
            "agent 00000000000000ab (sector 3, cluster 7): CONFLICT after 34200 ms of work",
        ),
    ];
    for (v, want) in table {
        assert_eq!(named_line(&v), want, "{v}");
    }
}

/// What the root serializes of a queued operation reads as a sentence, and the status's
/// queue as one line (none when empty).
#[test]
fn queued_operations_are_said_as_the_root_serializes_them() {
    use qs_core::mesh::{QueuedOp, QueuedView};
    use qs_wire::mesh::{CascadeMode, OpId, Verb};
    let q = QueuedOp {
        op: OpId(12),
        tag: 0,
        position: 2,
        mode: "DEGRADED_MODERATE",
        waits_for: "DEGRADED_LIGHT",
        max_wait_ms: 600_000,
    };
    assert_eq!(
        queued_outcome(&serde_json::json!(q)),
        "queued as operation 12 (DEGRADED_MODERATE queues non-urgent operations; 2 in the \
         queue): it starts when the mesh is DEGRADED_LIGHT or better, or is dropped after \
         10m; its result goes to the ledger (qs events)"
    );
    let view = |op: u64, scope: Scope, waited_ms: u64| QueuedView {
        op: OpId(op),
        mode: CascadeMode::Wave,
        scope,
        priority: 1,
        verb: Verb::Sync,
        waited_ms,
    };
    let table = [
        (vec![], None),
        (
            vec![view(12, Scope::Sector(SectorId(3)), 63_000)],
            Some(
                "1 operation queued until DEGRADED_LIGHT or better: 12 (wave sync sector 3, \
                 priority 1, waiting 1m)",
            ),
        ),
        (
            vec![
                view(12, Scope::Global, 63_000),
                view(14, Scope::Cluster(ClusterId(9)), 2_000),
            ],
            Some(
                "2 operations queued until DEGRADED_LIGHT or better: 12 (wave sync global, \
                 priority 1, waiting 1m), 14 (wave sync cluster 9, priority 1, waiting 2s)",
            ),
        ),
    ];
    for (queued, want) in table {
        let status = serde_json::json!({ "queued": queued });
        assert_eq!(queued_line(&status).as_deref(), want, "{status}");
    }
}

#[test]
fn spans_read_as_the_seeds_status_box_says_them() {
    for (ms, want) in [
        (0, "0s"),
        (59_999, "59s"),
        (60_000, "1m"),
        (12_487_000, "3h 28m"),
        (3_600_000, "1h 0m"),
        (190_800_000, "2d 5h"),
    ] {
        assert_eq!(ago(ms), want, "{ms}");
    }
}

/// The health line counts the sectors at least 95 % active, of those summarized.
#[test]
fn the_health_line_counts_healthy_sectors() {
    let sector = |agents: u32, active: u32| serde_json::json!({"agents": agents, "active": active});
    let table = [
        (
            serde_json::json!({"agents": 0, "active": 0}),
            "100.0 % active",
        ),
        (
            serde_json::json!({"agents": 300, "active": 270,
                "sectors": [sector(100, 100), sector(100, 94), sector(100, 76), sector(0, 0)]}),
            "90.0 % active, 2 of 4 sectors healthy",
        ),
    ];
    for (v, want) in table {
        assert_eq!(health_line(&v), want, "{v}");
    }
}

/// The conflicts line says what was dropped and taken late only when there was some.
#[test]
fn the_conflicts_line_names_drops_and_late_answers_when_there_are_any() {
    let counts = serde_json::json!({"open": 2, "critical": 1, "overdue": 0});
    let status = |dropped: u64, late: u64| {
        serde_json::json!({
            "conflicts": 5,
            "conflicts_unresolved": counts,
            "conflicts_resolved": 3,
            "conflicts_escalated_here": 0,
            "conflicts_dropped": dropped,
            "late_answers": late,
        })
    };
    let quiet = "here 5 heard, 2 unresolved (1 critical, 0 past their time), 3 resolved, \
                 0 escalated here";
    for (dropped, late, want) in [
        (0, 0, quiet.to_string()),
        (0, 4, format!("{quiet}; 4 answers taken late")),
        (
            7,
            0,
            format!("{quiet}; 7 dropped from a full quarantine (in the ledger)"),
        ),
    ] {
        assert_eq!(conflicts_line(&status(dropped, late)), want);
    }
}

/// A control's report, as the root serializes it, reads as one sentence.
#[test]
fn control_reports_read_as_what_was_done_and_who_confirmed() {
    use qs_core::mesh::ControlReport;
    use qs_wire::mesh::ControlAction;
    let report =
        |action, scope, confirmed: u32, unconfirmed: &[&str], frozen_on: u32| ControlReport {
            tag: 0,
            action,
            scope,
            nodes: 5,
            confirmed,
            unconfirmed: unconfirmed.iter().map(|s| s.to_string()).collect(),
            agents_released: 3,
            breakers_closed: 1,
            conflicts_released: 2,
            agents_routed_around: 0,
            agents_reassigned: 0,
            rule: None,
            agents_excluded: None,
            routed: Vec::new(),
            slower_than_ms: 0,
            for_ms: 0,
            was_frozen_on: frozen_on,
            waited_ms: 40,
        };
    let table = [
        (
            report(ControlAction::Heal, Scope::Sector(SectorId(12)), 5, &[], 0),
            "healed sector 12: 3 agents released (from quarantine or held out of routing), 1 \
             breaker closed, 2 conflicts released; confirmed by 5 of 5 nodes in 40 ms",
        ),
        (
            report(ControlAction::Heal, Scope::Global, 3, &["n4"], 2),
            "healed the whole mesh: 3 agents released (from quarantine or held out of \
             routing), 1 breaker closed, 2 conflicts released, thawed on 2 nodes; confirmed by 3 of 5 nodes in 40 ms; not \
             confirmed by n4 and 1 more (down, partitioned, or on another tree: run it again \
             when they are back)",
        ),
        (
            report(
                ControlAction::Freeze,
                Scope::Cluster(ClusterId(9)),
                5,
                &[],
                0,
            ),
            "froze cluster 9: operations in it are refused until a thaw; confirmed by 5 of 5 \
             nodes in 40 ms",
        ),
        (
            report(ControlAction::Thaw, Scope::Global, 5, &[], 1),
            "thawed the whole mesh (frozen on 1 node); confirmed by 5 of 5 nodes in 40 ms",
        ),
    ];
    for (r, want) in table {
        assert_eq!(control_outcome(&serde_json::json!(r)), want);
    }
    let mut around = report(
        ControlAction::RouteAround,
        Scope::Sector(SectorId(7)),
        5,
        &[],
        0,
    );
    (
        around.agents_routed_around,
        around.slower_than_ms,
        around.for_ms,
    ) = (2, 500, 600_000);
    assert_eq!(
        control_outcome(&serde_json::json!(around)),
        "routed around 2 agents slower than 500 ms in sector 7 for 10m: out of the routing \
         pool until then, or a heal; confirmed by 5 of 5 nodes in 40 ms"
    );
    // Seed §7.2: "Traffic now avoiding: … (impedance 847ms)", and what they are stuck on.
    let routed =
        |agent: u64, impedance_ms: f64, busy: Option<Busy>, busy_for_ms: u64| RoutedAgent {
            agent: AgentId(agent),
            cluster: ClusterId(4),
            impedance_ms,
            busy,
            busy_for_ms,
            class: None,
            capabilities: Vec::new(),
        };
    let stuck = Busy::new(
        "task t-12: Process large language model inference request",
        "waiting on GPU memory allocation",
        0,
    );
    (around.agents_routed_around, around.routed) = (
        3,
        vec![
            routed(0x12, 847.2, Some(stuck), 263_000),
            routed(0x19, 612.0, None, 0),
        ],
    );
    assert_eq!(
        control_outcome(&serde_json::json!(around)),
        "routed around 3 agents slower than 500 ms in sector 7 for 10m: out of the routing \
         pool until then, or a heal; confirmed by 5 of 5 nodes in 40 ms\n  \
         avoiding agent 0000000000000012 of cluster 4 (impedance 847 ms): busy with task \
         t-12: Process large language model inference request, for 4m (waiting on GPU \
         memory allocation)\n  \
         avoiding agent 0000000000000019 of cluster 4 (impedance 612 ms): no work under way \
         that its host knows of\n  \
         and 1 more"
    );
    // Seed §7.2's "reassign the task": whose tasks were taken, and what they were.
    let mut taken = around.clone();
    taken.action = ControlAction::Reassign;
    (
        taken.agents_routed_around,
        taken.agents_reassigned,
        taken.for_ms,
    ) = (0, 1, 0);
    taken.routed.truncate(1);
    assert_eq!(
        control_outcome(&serde_json::json!(taken)),
        "asked the nodes of 1 agent slower than 500 ms in sector 7 on tasks to take their \
         tasks from them: each one still held goes back to its node's queue, for another \
         worker (`qs task show ID` follows it); confirmed by 5 of 5 nodes in 40 ms\n  \
         taking the task of agent 0000000000000012 of cluster 4 (impedance 847 ms): busy with \
         task t-12: Process large language model inference request, for 4m (waiting on GPU \
         memory allocation)"
    );
    // Seed §7.2's "fix the capability mapping": "Capability mapping updated: CLASS_E_LOCAL
    // agents now excluded from 'llm_inference' routing".
    let mut rule = report(ControlAction::Exclude, Scope::Global, 5, &[], 0);
    rule.rule = Some(qs_wire::mesh::Exclusion {
        class: qs_wire::mesh::ImpedanceClass::E,
        capability: "llm_inference".into(),
    });
    rule.agents_excluded = Some(2);
    assert_eq!(
        control_outcome(&serde_json::json!(rule)),
        "capability mapping updated: class E agents now excluded from 'llm_inference' routing \
         (2 agents with it now); confirmed by 5 of 5 nodes in 40 ms"
    );
    rule.action = ControlAction::Include;
    assert_eq!(
        control_outcome(&serde_json::json!(rule)),
        "capability mapping updated: class E agents back in 'llm_inference' routing (2 agents \
         with it now); confirmed by 5 of 5 nodes in 40 ms"
    );
}

/// A led cluster's agents, as the agent serializes them: one row each, its place in the
/// routing pool said in words (in it, joining, held out for how long, out); another cluster's
/// agents are not listed.
#[test]
fn a_clusters_agents_are_listed_with_their_place_in_the_pool() {
    use qs_core::mesh::LedAgent;
    use qs_wire::mesh::{AgentId, AgentState, ImpedanceClass};
    let agent = |id: u64, cluster: u32, state, admitted, held_ms, missed| LedAgent {
        cluster: ClusterId(cluster),
        agent: AgentId(id),
        state,
        class: ImpedanceClass::B,
        score_ms: 41.6,
        lead_ms: 45.2,
        drift: -0.031,
        processing_ms: Some(40.0),
        link_p50_ms: 1.0,
        admitted,
        held_ms,
        missed,
        spiking: missed == 0 && !admitted,
        busy: None,
        busy_for_ms: 0,
    };
    let status = serde_json::json!({ "led_agents": [
        agent(0xa1, 3, AgentState::Active, true, 0, 0),
        agent(0xa2, 3, AgentState::Active, false, 1_500, 3),
        agent(0xa3, 3, AgentState::Quarantined, false, 0, 0),
        agent(0xb1, 4, AgentState::Active, true, 0, 0),
        LedAgent {
            busy: Some(Busy::new("observe: ready?", "", 0)),
            busy_for_ms: 42_000,
            ..agent(0xa4, 3, AgentState::Active, true, 0, 0)
        },
    ]});
    let text = agents_table(&status, 3).to_string();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| l.contains("00000000000000"))
        .map(|l| {
            l.split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(
        rows,
        [
            vec![
                "00000000000000a1",
                "active",
                "B",
                "42",
                "45",
                "-0.03",
                "in",
                "0"
            ],
            vec![
                "00000000000000a2",
                "active",
                "B",
                "42",
                "45",
                "-0.03",
                "held out 1.5 s",
                "3"
            ],
            vec![
                "00000000000000a3",
                "quarantined",
                "B",
                "42",
                "45",
                "-0.03",
                "out",
                "0",
                "yes"
            ],
            vec![
                "00000000000000a4",
                "active",
                "B",
                "42",
                "45",
                "-0.03",
                "in",
                "0",
                "observe: ready?, for 42s"
            ],
        ],
        "{text}"
    );
}
