//! Tests of the counts and times other nodes send: a report's tally, a summary's class
//! counts, an answer's times and text, each refused by field past its bounds.

use super::tests::decodes_as;
use super::*;
use crate::task_bus::decode_bus;

fn report(scope: Scope, tally: Tally, answer: &str) -> MeshMessage {
    late_or_not(scope, tally, answer, false)
}

fn late_or_not(scope: Scope, tally: Tally, answer: &str, late: bool) -> MeshMessage {
    MeshMessage::Report(Box::new(Report {
        op: OpId(1),
        scope,
        from: NodeId::new("n1").unwrap(),
        tally,
        answers: vec![AnswerCount {
            answer: answer.into(),
            count: 1,
        }],
        escalated: Vec::new(),
        escalated_more: 0,
        late,
        named: Vec::new(),
    }))
}

fn tally(sent: u32, ready: u32, late: u32, window_hits: u32) -> Tally {
    Tally {
        targeted: sent,
        sent,
        ready,
        late,
        window_hits,
        ..Tally::default()
    }
}

/// A report's counts: no more sent than its scope holds, no more heard than sent, no more
/// on time than counted; an answer a terminal would not show as itself is refused.
#[test]
fn a_reports_counts_are_bounded_by_its_scope_and_each_other() {
    let cluster = Scope::Cluster(ClusterId(3));
    let sector = Scope::Sector(SectorId(1));
    decodes_as([
        (report(cluster, tally(30, 29, 1, 29), "ok"), None),
        (report(sector, tally(10_000, 10_000, 0, 0), "ok"), None),
        (
            report(cluster, tally(101, 0, 0, 0), "ok"),
            Some("tally.sent: 101; at most 100"),
        ),
        (
            report(sector, tally(u32::MAX, u32::MAX, 0, 0), "ok"),
            Some("tally.targeted: 4294967295; at most 20000"),
        ),
        (report(cluster, tally(30, 30, 1, 0), "ok"), Some("31 heard")),
        // A cluster waits once at most; a sector's clusters, each once.
        (
            report(
                cluster,
                Tally {
                    waited: 2,
                    ..tally(30, 29, 0, 29)
                },
                "ok",
            ),
            Some("tally.waited: 2; at most 1"),
        ),
        (
            report(
                sector,
                Tally {
                    waited: 100,
                    ..tally(3_000, 2_900, 0, 2_900)
                },
                "ok",
            ),
            None,
        ),
        // A late report (conflicts after the subtree reported) counts its late answers; an
        // extension's, at most its cluster's agents.
        (late_or_not(cluster, tally(0, 0, 1, 0), "ok", true), None),
        (
            late_or_not(
                cluster,
                Tally {
                    waited: 1,
                    ..tally(0, 101, 0, 0)
                },
                "ok",
                true,
            ),
            Some("tally: 101 heard; at most 100"),
        ),
        (
            report(cluster, tally(30, 20, 0, 21), "ok"),
            Some("tally.window_hits: 21 of 20"),
        ),
        // A retry's carried agents are READY ones of its scope.
        (
            report(
                cluster,
                Tally {
                    carried: 20,
                    ..tally(30, 20, 0, 20)
                },
                "ok",
            ),
            None,
        ),
        (
            report(
                cluster,
                Tally {
                    carried: 21,
                    ..tally(30, 20, 0, 20)
                },
                "ok",
            ),
            Some("tally.carried: 21 of 20 READY"),
        ),
        (
            report(
                cluster,
                Tally {
                    carried: 101,
                    ..tally(30, 20, 0, 20)
                },
                "ok",
            ),
            Some("tally.carried: 101; at most 100"),
        ),
        (
            report(cluster, tally(30, 20, 0, 20), "ok\u{1b}[2J"),
            Some("answer: control or invisible character"),
        ),
        (
            report(cluster, tally(30, 20, 0, 20), "two\nlines\tand a tab"),
            None,
        ),
        (
            report(cluster, tally(30, 20, 0, 20), "\u{645}\u{200C}\u{6CC}"),
            None,
        ),
        (
            report(cluster, tally(30, 20, 0, 20), "zero\u{200B}width"),
            Some("answer: control or invisible character"),
        ),
    ]);
}

fn cluster(agents: u32, classes: ClassCounts, anomalies: u32) -> MeshMessage {
    MeshMessage::Cluster(Box::new(ClusterSummary {
        cluster: ClusterId(0),
        sector: SectorId(0),
        lead: NodeId::new("n1").unwrap(),
        sent_ms: 0,
        agent_count: agents,
        active_count: agents,
        joining_count: 0,
        mean_impedance_ms: 1.0,
        p95_impedance_ms: 2.0,
        leads: LeadHistogram::default(),
        classes,
        anomalies,
        failures: 0,
        breaker_open: false,
        conflicts: ConflictCounts::default(),
        capabilities: Vec::new(),
        capabilities_more: false,
    }))
}

fn sector(clusters: u32, agents: u32, classes: ClassCounts, open_breakers: u32) -> MeshMessage {
    MeshMessage::Sector(Box::new(SectorSummary {
        sector: SectorId(0),
        coordinator: NodeId::new("n1").unwrap(),
        sent_ms: 0,
        cluster_count: clusters,
        total_agents: agents,
        active_agents: agents,
        joining_agents: 0,
        mean_impedance_ms: 1.0,
        p95_impedance_ms: 2.0,
        leads: LeadHistogram::default(),
        hop_ms: 1.0,
        classes,
        anomalies: 0,
        open_breakers,
        breaker_open: false,
        conflicts: ConflictCounts::default(),
        escalated: Vec::new(),
        capabilities: Vec::new(),
        capabilities_more: false,
    }))
}

/// Text made to pass: refused characters spaces, cut at a character; what passes as it is.
#[test]
fn text_is_made_to_pass() {
    assert_eq!(as_text("v1\u{1b}[2J\u{200B}v2"), "v1 [2J v2");
    assert_eq!(as_text("two\nlines"), "two\nlines");
    let long = as_text(&"é".repeat(MAX_TEXT_BYTES));
    assert!(long.len() <= MAX_TEXT_BYTES && long.chars().all(|c| c == 'é'));
}

/// A summary counts no more agents by class, anomalous, or in its clusters than it has.
#[test]
fn a_summarys_counts_are_bounded_by_its_agents() {
    decodes_as([
        (cluster(30, [10, 10, 10, 0, 0, 0], 2), None),
        (
            cluster(30, [10, 10, 11, 0, 0, 0], 0),
            Some("classes: 31 counted"),
        ),
        (cluster(30, [0; 6], 31), Some("anomalies 31")),
        (sector(10, 1_000, [1_000, 0, 0, 0, 0, 0], 10), None),
        (
            sector(1, 1_000_000, [0; 6], 0),
            Some("total_agents 1000000, open_breakers 0 of 1 clusters"),
        ),
        (
            sector(2, 10, [0; 6], 3),
            Some("open_breakers 3 of 2 clusters"),
        ),
        (
            sector(1, 10, [0, 0, 0, 0, 0, u32::MAX], 0),
            Some("classes: 4294967295 counted"),
        ),
    ]);
}

/// Times from other nodes are times (at most the year 2500), by field.
#[test]
fn times_from_other_nodes_are_bounded_by_field() {
    let ack = |arrived_ms: u64, ready_ms: u64| {
        MeshMessage::Ack(Box::new(Ack {
            op: OpId(1),
            agent: AgentId(2),
            cluster: ClusterId(0),
            state: Trinary::Ready,
            arrived_ms,
            ready_ms,
            answer: String::new(),
            conflict: None,
            expired: false,
        }))
    };
    decodes_as([
        (ack(1_000, MAX_UNIX_MS), None),
        (
            ack(u64::MAX, 1_000),
            Some("arrived_ms 18446744073709551615: not a time"),
        ),
        (ack(1_000, MAX_UNIX_MS + 1), Some("ready_ms")),
    ]);
    let mut e = super::tests::envelope();
    e.created_ms = u64::MAX - 1;
    e.target_arrival_ms = u64::MAX;
    assert!(e.check().unwrap_err().starts_with("created_ms"));
}

/// A node's record of the most agents it may register, each id as long as one can be,
/// in the longest zone, fits a bus message: every node reads it back.
#[test]
fn the_largest_members_record_fits_a_bus_message() {
    let m = MeshMembers {
        node: NodeId::new(&"n".repeat(63)).unwrap(),
        agents: vec![AgentId(u64::MAX); MAX_NODE_AGENTS],
        zone: "z".repeat(MAX_ZONE_BYTES),
        since_ms: MAX_UNIX_MS,
        lead_after_ms: Some(MAX_LEAD_AFTER_MS),
    };
    let bytes = serde_json::to_vec(&m).unwrap();
    assert!(
        bytes.len() <= crate::task_bus::MAX_BUS_BYTES,
        "{}",
        bytes.len()
    );
    assert_eq!(decode_bus::<MeshMembers>("kv mesh", &bytes).unwrap(), m);
}

/// A sample (an ask's, a delegation's) is a wave's: the urgent mode and priority-first
/// refuse one, by field.
#[test]
fn a_sample_is_a_waves() {
    let ask = |mode| MeshAction::Cascade {
        mode,
        scope: Scope::Global,
        verb: Verb::Observe,
        payload: "which model?".into(),
        priority: 2,
        sample: Some(50),
        budget_ms: None,
        requires: None,
        approved: false,
        class: None,
        window_ms: None,
    };
    assert!(ask(CascadeMode::Wave).check().is_ok());
    for mode in [CascadeMode::Parallel, CascadeMode::PriorityFirst] {
        let err = ask(mode).check().unwrap_err();
        assert!(err.starts_with("sample: only for a wave"), "{err}");
    }
}
