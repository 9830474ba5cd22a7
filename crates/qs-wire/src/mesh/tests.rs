//! Tests of the mesh vocabulary: envelopes, messages' bounds and their round trips.

use super::*;
use crate::task_bus::decode_bus;

pub(super) fn envelope() -> MeshEnvelope {
    MeshEnvelope {
        id: 1,
        op: OpId(7),
        causation: None,
        created_ms: 1_000,
        target_arrival_ms: 1_300,
        ttl_ms: 5_000,
        priority: 2,
        weight: 1.0,
        verb: Verb::Sync,
        payload: "hello".into(),
        content_hash: "0".repeat(64),
        requires: None,
    }
}

#[test]
fn trinary_is_a_number_on_the_wire() {
    assert_eq!(serde_json::to_string(&Trinary::Conflict).unwrap(), "-1");
    assert_eq!(
        serde_json::from_str::<Trinary>("1").unwrap(),
        Trinary::Ready
    );
    assert!(serde_json::from_str::<Trinary>("2").is_err());
}

#[test]
fn envelopes_out_of_bounds_are_refused_by_field() {
    type Spoil = Box<dyn Fn(&mut MeshEnvelope)>;
    let cases: Vec<(&str, Spoil)> = vec![
        (
            "payload",
            Box::new(|e| e.payload = "x".repeat(MAX_PAYLOAD_BYTES + 1)),
        ),
        ("ttl_ms", Box::new(|e| e.ttl_ms = 0)),
        ("priority", Box::new(|e| e.priority = 4)),
        ("weight", Box::new(|e| e.weight = f64::NAN)),
        ("content_hash", Box::new(|e| e.content_hash = "zz".into())),
        ("requires", Box::new(|e| e.requires = Some("a b".into()))),
    ];
    assert!(envelope().check().is_ok());
    for (field, spoil) in cases {
        let mut e = envelope();
        spoil(&mut e);
        let err = e.check().unwrap_err();
        assert!(err.starts_with(field), "{field}: {err}");
    }
    assert!(envelope().expired(6_001));
    assert!(!envelope().expired(6_000));
}

/// An active agent's beat, working on `busy`.
fn agent_beat(busy: Option<Busy>) -> AgentBeat {
    AgentBeat {
        agent: AgentId(1),
        state: AgentState::Active,
        processing_ms: 1.0,
        queue_depth: 0,
        capabilities: vec![],
        joined_ms: 0,
        busy,
    }
}

/// Host n1's beat of `agents` to cluster 0's lead.
fn beat_of(agents: Vec<AgentBeat>) -> MeshMessage {
    MeshMessage::Beat(HostBeat {
        host: NodeId::new("n1").unwrap(),
        cluster: ClusterId(0),
        sent_ms: 0,
        agents,
    })
}

fn order_of(op: u64, window_ms: u64) -> Order {
    Order {
        op: OpId(op),
        mode: CascadeMode::Wave,
        root: NodeId::new("n1").unwrap(),
        report_to: NodeId::new("n1").unwrap(),
        scope: Scope::Sector(SectorId(3)),
        class: Some(ImpedanceClass::D),
        sample_per_cluster: None,
        window_ms,
        envelope: envelope(),
        limited: false,
        retry_of: None,
    }
}

/// Orders that go together (a priority-first operation's phases): 2 to 8 in a message,
/// each checked as one alone, refused by its index.
#[test]
fn orders_that_go_together_are_bounded_and_each_checked() {
    let batch = |orders: Vec<Order>| MeshMessage::Orders(Box::new(Orders { orders }));
    let orders = |n: usize| batch((0..n as u64).map(|i| order_of(i, 500)).collect());
    let mut bad = (0..3).map(|i| order_of(i, 500)).collect::<Vec<_>>();
    bad[2].window_ms = 0;
    let table = [
        (orders(2), None),
        (orders(MAX_ORDERS_BATCHED), None),
        (orders(1), Some("orders: 1; must be in 2..=8")),
        (
            orders(MAX_ORDERS_BATCHED + 1),
            Some("orders: 9; must be in 2..=8"),
        ),
        (batch(bad), Some("orders[2]: window_ms: 0")),
    ];
    decodes_as(table);
}

#[test]
fn messages_round_trip_and_are_checked() {
    let order = MeshMessage::Order(Box::new(order_of(7, 500)));
    let bytes = serde_json::to_vec(&order).unwrap();
    assert_eq!(decode_bus::<MeshMessage>("mesh.x", &bytes).unwrap(), order);
    let big = beat_of(vec![agent_beat(None); MAX_BEAT_AGENTS + 1]);
    let bytes = serde_json::to_vec(&big).unwrap();
    let err = decode_bus::<MeshMessage>("mesh.x", &bytes).unwrap_err();
    assert!(err.why.contains("agents in a beat"), "{}", err.why);
    // More joining than active: refused, by field.
    let alive = MeshMessage::Alive(Alive {
        scope: Scope::Cluster(ClusterId(0)),
        from: NodeId::new("n1").unwrap(),
        sent_ms: 0,
        agents: 10,
        active: 5,
        joining: 6,
        failures: 0,
        breaker_open: false,
    });
    let bytes = serde_json::to_vec(&alive).unwrap();
    let err = decode_bus::<MeshMessage>("mesh.x", &bytes).unwrap_err();
    assert!(err.why.contains("joining 6"), "{}", err.why);
}

/// Each message of `table` reads back as itself (`None`) or is refused with an error that
/// names the field (`Some`).
pub(super) fn decodes_as<const N: usize>(table: [(MeshMessage, Option<&str>); N]) {
    for (msg, error) in table {
        let bytes = serde_json::to_vec(&msg).unwrap();
        match (decode_bus::<MeshMessage>("mesh.x", &bytes), error) {
            (Ok(back), None) => assert_eq!(back, msg),
            (Err(e), Some(want)) => assert!(e.why.contains(want), "{}", e.why),
            (got, want) => panic!("{msg:?}: {got:?}, expected {want:?}"),
        }
    }
}

/// What an agent works on, in a beat: text only and short, refused by field otherwise; a
/// host's text is made so (control and invisible characters spaces, cut at a character).
#[test]
fn what_an_agent_works_on_is_short_text() {
    let beat = |busy: Busy| beat_of(vec![agent_beat(Some(busy))]);
    let raw = |with: &str, note: &str| Busy {
        with: with.into(),
        note: note.into(),
        since_ms: 5,
    };
    let table = [
        (
            beat(raw("task t-1: summarize", "waiting on GPU memory")),
            None,
        ),
        (beat(raw("", "")), Some("busy.with: 0 bytes; 1..=128")),
        (
            beat(raw("task \u{1b}[31mred", "")),
            Some("busy.with: control or invisible character '\\u{1b}'"),
        ),
        (
            beat(raw("task \u{202e}der", "")),
            Some("busy.with: control or invisible character '\\u{202e}'"),
        ),
        (
            beat(raw("task", "note\u{e0041}")),
            Some("busy.note: control or invisible character '\\u{e0041}'"),
        ),
        (beat(raw("task é 任务 ✓", "")), None),
        (
            beat(raw("task", &"n".repeat(MAX_BUSY_NOTE_BYTES + 1))),
            Some("busy.note: 201 bytes; 0..=200"),
        ),
    ];
    decodes_as(table);
    // What a host says: its control characters spaces, each text cut to its bound.
    let said = Busy::new("act:\nline\u{200b}two", &"é".repeat(MAX_BUSY_NOTE_BYTES), 5);
    assert_eq!(said.with, "act: line two");
    assert_eq!(said.note.len(), MAX_BUSY_NOTE_BYTES);
    assert_eq!(said.check(), Ok(()));
    let long = Busy::new(&"w".repeat(MAX_BUSY_WITH_BYTES + 9), "", 5);
    assert_eq!(long.with.len(), MAX_BUSY_WITH_BYTES);
}

/// A host's agents go in beats of at most a hundred, and of at most `MAX_BEAT_BYTES`
/// encoded, whatever they work on (the bound holds for text that escapes the most); each
/// beat reads back.
#[test]
fn a_hosts_agents_are_split_into_beats_that_fit() {
    let quotes = |n: usize| "\"".repeat(n);
    let wordy = Busy::new(
        &quotes(MAX_BUSY_WITH_BYTES),
        &quotes(MAX_BUSY_NOTE_BYTES),
        1,
    );
    let caps: Vec<String> = (0..MAX_CAPABILITIES).map(|i| format!("{i:0>64}")).collect();
    let table: [(Vec<AgentBeat>, Vec<usize>); 3] = [
        (vec![agent_beat(None); 250], vec![100, 100, 50]),
        (vec![agent_beat(None); 1], vec![1]),
        (
            vec![
                AgentBeat {
                    capabilities: caps,
                    ..agent_beat(Some(wordy))
                };
                100
            ],
            vec![16, 16, 16, 16, 16, 16, 4],
        ),
    ];
    for (agents, want) in table {
        let lists = beat_lists(&agents);
        let sizes: Vec<usize> = lists.iter().map(|l| l.len()).collect();
        assert_eq!(sizes, want);
        for list in lists {
            let beat = beat_of(list.to_vec());
            let bytes = serde_json::to_vec(&beat).unwrap();
            assert!(bytes.len() <= MAX_BEAT_BYTES + 200, "{} bytes", bytes.len());
            assert_eq!(decode_bus::<MeshMessage>("mesh.x", &bytes).unwrap(), beat);
        }
    }
}

/// A mode notice: a level past EMERGENCY, more active agents than agents, more frozen scopes
/// than a root holds, or the whole mesh among them, more capability rules than a root holds,
/// a rule twice or one of a bad capability, is refused by field; a good one reads back.
#[test]
fn mode_notices_are_checked() {
    let notice = |level: u8, active_agents: u32, total_agents: u32| ModeNotice {
        level,
        active_agents,
        total_agents,
        sent_ms: 1,
        frozen: false,
        frozen_scopes: Vec::new(),
        excluded: Vec::new(),
        last_control: 0,
        root: None,
    };
    let rule = |class: ImpedanceClass, capability: &str| Exclusion {
        class,
        capability: capability.to_string(),
    };
    let excluded = |excluded: Vec<Exclusion>| {
        MeshMessage::Mode(ModeNotice {
            excluded,
            ..notice(0, 10, 10)
        })
    };
    let rules = |n: usize| -> Vec<Exclusion> {
        (0..n)
            .map(|i| rule(ImpedanceClass::ALL[i % 6], &format!("c{}", i / 6)))
            .collect()
    };
    let frozen = |frozen_scopes: Vec<Scope>| {
        MeshMessage::Mode(ModeNotice {
            frozen: true,
            frozen_scopes,
            last_control: 7,
            ..notice(0, 10, 10)
        })
    };
    let most: Vec<Scope> = (0..MAX_FROZEN_SCOPES as u32)
        .map(|c| Scope::Cluster(ClusterId(c)))
        .collect();
    let one_more: Vec<Scope> = most
        .iter()
        .copied()
        .chain([Scope::Sector(SectorId(1))])
        .collect();
    let table = [
        (MeshMessage::Mode(notice(4, 100, 1_000)), None),
        (MeshMessage::Mode(notice(5, 100, 1_000)), Some("level: 5")),
        (
            MeshMessage::Mode(notice(1, 1_001, 1_000)),
            Some("active_agents 1001"),
        ),
        (
            MeshMessage::Mode(notice(1, 0, u32::MAX)),
            Some("total_agents 4294967295"),
        ),
        (frozen(vec![Scope::Sector(SectorId(3))]), None),
        (frozen(most), None),
        (frozen(one_more), Some("frozen_scopes: 257; at most 256")),
        (
            frozen(vec![Scope::Global]),
            Some("frozen_scopes: names the whole mesh"),
        ),
        (excluded(rules(MAX_EXCLUSIONS)), None),
        (
            excluded(rules(MAX_EXCLUSIONS + 1)),
            Some("excluded: 65 rules; at most 64"),
        ),
        (
            excluded(vec![
                rule(ImpedanceClass::E, "llm_inference"),
                rule(ImpedanceClass::E, "llm_inference"),
            ]),
            Some("excluded[1]: class E off \"llm_inference\" twice"),
        ),
        (
            excluded(vec![rule(ImpedanceClass::E, "llm inference")]),
            Some("excluded[0]: capability \"llm inference\""),
        ),
    ];
    decodes_as(table);
}

/// A control's confirmation: each count bounded, by field, and the agents a route-around
/// names (at most eight, each checked); a control from a root before confirmations existed
/// (no id) still reads, as one that asks for none.
#[test]
fn control_confirmations_are_checked() {
    let done = |agents_released: u32, conflicts_released: u32| {
        let mut d = ControlDone::new(9, NodeId::new("n1").unwrap(), None, ControlAction::Heal);
        (d.agents_released, d.conflicts_released) = (agents_released, conflicts_released);
        (d.breakers_closed, d.was_frozen) = (2, true);
        MeshMessage::ControlDone(Box::new(d))
    };
    // A route-around's numbers: an hour at most each, held a second at least.
    let around = |slower_than_ms: u64, for_ms: u64| {
        MeshMessage::Control(Control {
            slower_than_ms,
            for_ms,
            ..Control::new(ControlAction::RouteAround, Scope::Global)
        })
    };
    let routed_with = |n: usize, impedance_ms: f64, with: &str, capabilities: Vec<String>| {
        let mut d = ControlDone::new(9, NodeId::new("n1").unwrap(), None, ControlAction::Heal);
        (d.action, d.agents_routed_around) = (ControlAction::RouteAround, n as u32);
        let busy = Some(Busy {
            with: with.into(),
            note: String::new(),
            since_ms: 1,
        });
        let agent = |i: usize| RoutedAgent {
            agent: AgentId(i as u64),
            cluster: ClusterId(0),
            impedance_ms,
            busy: busy.clone(),
            busy_for_ms: 1_000,
            class: Some(ImpedanceClass::E),
            capabilities: capabilities.clone(),
        };
        d.routed = (0..n).map(agent).collect();
        MeshMessage::ControlDone(Box::new(d))
    };
    let routed = |n: usize, impedance_ms: f64, with: &str| {
        routed_with(n, impedance_ms, with, vec!["llm_inference".into()])
    };
    let caps = |n: usize| (0..n).map(|i| format!("cap{i}")).collect::<Vec<_>>();
    let table = [
        (routed(MAX_ROUTED_NAMED, 847.0, "task t-1"), None),
        (
            routed(MAX_ROUTED_NAMED + 1, 847.0, "task t-1"),
            Some("9 routed agents named; at most 8"),
        ),
        (routed(1, -1.0, "task t-1"), Some("impedance_ms: -1")),
        (
            routed_with(1, 847.0, "task t-1", caps(MAX_ROUTED_CAPABILITIES)),
            None,
        ),
        (
            routed_with(1, 847.0, "task t-1", caps(MAX_ROUTED_CAPABILITIES + 1)),
            Some("5 capabilities; at most 4"),
        ),
        (
            routed_with(1, 847.0, "task t-1", vec!["a b".into()]),
            Some("capability \"a b\""),
        ),
        (
            routed(1, 847.0, "a\u{7}"),
            Some("busy.with: control or invisible character"),
        ),
        (done(3, 1), None),
        (done(MAX_CONTROL_COUNT, 0), None),
        (done(MAX_CONTROL_COUNT + 1, 0), Some("agents_released")),
        (done(0, u32::MAX), Some("conflicts_released")),
        (around(500, 600_000), None),
        (around(0, 1_000), None),
        (
            around(MAX_SLOWER_THAN_MS + 1, 1_000),
            Some("slower_than_ms"),
        ),
        (around(500, 999), Some("for_ms")),
        (around(500, MAX_HELD_MS + 1), Some("for_ms")),
    ];
    decodes_as(table);
    let old = br#"{"type":"control","action":"heal","scope":{"level":"global"},"relayed":false}"#;
    match decode_bus::<MeshMessage>("mesh.x", old).unwrap() {
        MeshMessage::Control(c) => assert_eq!((c.action, c.id), (ControlAction::Heal, 0)),
        other => panic!("{other:?}"),
    }
}

/// A report's escalated conflicts: bounded, each detail checked by its index; a
/// report from before they existed still reads.
#[test]
fn escalated_conflicts_in_reports_are_bounded_and_checked() {
    let e = Escalated {
        agent: AgentId(1),
        cluster: ClusterId(0),
        at_ms: 5,
        detail: ConflictDetail::HashMismatch {
            expected: "a".into(),
            received: "b".into(),
        },
    };
    let report = |escalated: Vec<Escalated>| {
        MeshMessage::Report(Box::new(Report {
            op: OpId(1),
            scope: Scope::Cluster(ClusterId(0)),
            from: NodeId::new("n1").unwrap(),
            tally: Tally::default(),
            answers: Vec::new(),
            escalated,
            escalated_more: 0,
            late: false,
            named: Vec::new(),
        }))
    };
    let decode =
        |m: &MeshMessage| decode_bus::<MeshMessage>("mesh.x", &serde_json::to_vec(m).unwrap());
    let ok = report(vec![e.clone(); MAX_ESCALATED]);
    assert_eq!(decode(&ok).unwrap(), ok);
    let err = decode(&report(vec![e.clone(); MAX_ESCALATED + 1])).unwrap_err();
    assert!(err.why.contains("escalated"), "{}", err.why);
    let mut long = e.clone();
    long.detail = ConflictDetail::HashMismatch {
        expected: "x".repeat(MAX_TEXT_BYTES + 1),
        received: "b".into(),
    };
    let err = decode(&report(vec![e.clone(), long.clone()])).unwrap_err();
    assert!(err.why.contains("escalated[1].detail"), "{}", err.why);
    // Nothing escalated: the fields are left out, as a node from before sends it.
    let plain = serde_json::to_value(report(Vec::new())).unwrap();
    assert!(
        plain.get("escalated").is_none()
            && plain.get("escalated_more").is_none()
            && plain.get("late").is_none()
            && plain.get("named").is_none()
    );
    let plain = serde_json::to_vec(&plain).unwrap();
    assert_eq!(
        decode_bus::<MeshMessage>("mesh.x", &plain).unwrap(),
        report(Vec::new())
    );
    // A handover's conflicts: bounded, each checked by its index.
    let handed = |n: usize, hash: String| {
        MeshMessage::Handover(Box::new(Handover {
            cluster: ClusterId(0),
            agents: Vec::new(),
            conflicts: vec![
                HandedConflict {
                    agent: AgentId(1),
                    op: OpId(1),
                    at_ms: 5,
                    content_hash: hash,
                    detail: ConflictDetail::TemporalParadox { detail: "x".into() },
                };
                n
            ],
        }))
    };
    let ok = handed(MAX_HANDED_CONFLICTS, "h".into());
    assert_eq!(decode(&ok).unwrap(), ok);
    let err = decode(&handed(MAX_HANDED_CONFLICTS + 1, "h".into())).unwrap_err();
    assert!(err.why.contains("conflicts handed over"), "{}", err.why);
    let err = decode(&handed(1, "h".repeat(MAX_TEXT_BYTES + 1))).unwrap_err();
    assert!(
        err.why.contains("conflicts[0]: content_hash"),
        "{}",
        err.why
    );
    // A handed agent's hold: bounded; none left out, as a node from before sends it.
    let agent = |held_ms: u64| {
        MeshMessage::Handover(Box::new(Handover {
            cluster: ClusterId(0),
            agents: vec![HandedAgent {
                agent: AgentId(1),
                admitted: false,
                processing_ms: 5.0,
                samples: 1,
                held_ms,
                missed: 3,
            }],
            conflicts: Vec::new(),
        }))
    };
    let ok = agent(MAX_HELD_MS);
    assert_eq!(decode(&ok).unwrap(), ok);
    let err = decode(&agent(MAX_HELD_MS + 1)).unwrap_err();
    assert!(err.why.contains("held_ms"), "{}", err.why);
    let plain = serde_json::to_value(agent(0)).unwrap();
    assert!(plain["agents"][0].get("held_ms").is_none(), "{plain}");
    // Unresolved counts: no more critical or overdue than open.
    let c = |open, critical, overdue| ConflictCounts {
        open,
        critical,
        overdue,
    };
    assert!(c(3, 3, 1).check(1).is_ok());
    assert!(c(3, 4, 0).check(1).unwrap_err().contains("4 critical"));
    assert!(c(3, 0, 4).check(1).unwrap_err().contains("4 overdue"));
    // No more open than the leads of the clusters can hold.
    assert!(c(MAX_OPEN_CONFLICTS, 0, 0).check(1).is_ok());
    let over = c(MAX_OPEN_CONFLICTS + 1, 0, 0);
    assert!(over.check(1).unwrap_err().contains("open (at most"));
    assert!(over.check(2).is_ok());
    // A sector summary's late conflicts for the root: bounded, each detail checked; a
    // summary without them leaves the field out.
    let summary = |escalated: Vec<LateEscalated>| {
        MeshMessage::Sector(Box::new(SectorSummary {
            sector: SectorId(0),
            coordinator: NodeId::new("n1").unwrap(),
            sent_ms: 0,
            cluster_count: 1,
            total_agents: 10,
            active_agents: 10,
            joining_agents: 0,
            mean_impedance_ms: 1.0,
            p95_impedance_ms: 2.0,
            leads: LeadHistogram::default(),
            hop_ms: 1.0,
            classes: [0; 6],
            anomalies: 0,
            open_breakers: 0,
            breaker_open: false,
            conflicts: ConflictCounts::default(),
            escalated,
            capabilities: Vec::new(),
            capabilities_more: false,
        }))
    };
    let late = |conflict: Escalated| LateEscalated {
        op: OpId(1),
        conflict,
    };
    let ok = summary(vec![late(e.clone()); MAX_ESCALATED]);
    assert_eq!(decode(&ok).unwrap(), ok);
    let err = decode(&summary(vec![late(e.clone()); MAX_ESCALATED + 1])).unwrap_err();
    assert!(err.why.contains("escalated"), "{}", err.why);
    let err = decode(&summary(vec![late(e.clone()), late(long)])).unwrap_err();
    assert!(err.why.contains("escalated[1].detail"), "{}", err.why);
    let plain = serde_json::to_value(summary(Vec::new())).unwrap();
    assert_eq!(plain["type"], "sector", "{plain}");
    assert!(plain.get("escalated").is_none(), "{plain}");
}

/// A lead histogram's quantile is read within its bucket, as if the bucket's counts were
/// spread evenly between its edges; leads beyond the compensation are left out; the last,
/// open bucket reads as an hour.
#[test]
fn lead_quantiles_are_read_within_their_bucket() {
    use ImpedanceClass::{A, D, F};
    let mut h = LeadHistogram::default();
    // Ten A agents at 5 ms (the first bucket, 0–5), ten D at 450 (the 400–500 bucket).
    for _ in 0..10 {
        h.record(A, 5.0);
        h.record(D, 450.0);
    }
    h.record(F, 5_000.0);
    // (classes, q, within, quantile)
    let table: [(&[ImpedanceClass], f64, f64, Option<f64>); 7] = [
        (&[A, D], 0.5, 1_000.0, Some(5.0)),
        (&[A], 0.5, 1_000.0, Some(2.5)),
        (&[A, D], 0.95, 1_000.0, Some(490.0)),
        (&[A, D], 0.75, 1_000.0, Some(450.0)),
        (&[A, D], 1.0, 1_000.0, Some(500.0)),
        (&[F], 0.5, 1_000.0, None),
        (&[F], 0.5, f64::INFINITY, Some(3_600_000.0)),
    ];
    for (classes, q, within, want) in table {
        assert_eq!(h.quantile_ms(classes, q, within), want, "{classes:?} q {q}");
    }
}
