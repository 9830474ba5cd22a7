//! Tests of the console's plain words: the grammar of intents over the seed's requests, a
//! model's answers checked field by field, and the commands each becomes.

use super::llm::intent_of_answer;
use super::*;

/// The seed's example requests (§7.2) and their kin → the command shown before running.
#[test]
fn the_grammar_reads_the_seeds_requests() {
    let table = [
        ("What's happening in sector 7?", "qs mesh status sector 7"),
        ("status", "qs mesh status"),
        ("show me cluster 12", "qs mesh status cluster 12"),
        (
            "broadcast Context update: Market closed early today",
            "qs mesh broadcast \"Context update: Market closed early today\" --mode wave --priority 2",
        ),
        (
            "urgent broadcast: evacuate",
            "qs mesh broadcast \"evacuate\" --mode parallel --priority 3",
        ),
        (
            "ask 10 agents: What's your current context hash?",
            "qs mesh ask \"What's your current context hash?\" --sample 10",
        ),
        (
            "What's your current context hash?",
            "qs mesh ask \"What's your current context hash?\" --sample 10",
        ),
        (
            "delegate Analyze Q3 financial data to gpu",
            "qs mesh delegate \"Analyze Q3 financial data\" --capability gpu",
        ),
        ("heal SECTOR-12", "qs mesh heal sector 12"),
        (
            "delegate Analyze Q3 financial data to CLASS_D_GPU within 60 seconds",
            "qs mesh delegate \"Analyze Q3 financial data\" --to D --timeout 60",
        ),
        (
            "delegate read the sensors to class E",
            "qs mesh delegate \"read the sensors\" --to E",
        ),
        (
            "Yeah route around, and show me what they're stuck on",
            "qs mesh route-around --slower-than 500 --for 600",
        ),
        (
            "route around agents slower than 800 ms in cluster 4",
            "qs mesh route-around cluster 4 --slower-than 800 --for 600",
        ),
        // Seed §7.2's "reassign the task": the slow agents' own tasks, to other workers; a
        // task named to hand out is a delegation.
        ("reassign the task", "qs mesh reassign --slower-than 500"),
        (
            "reassign their tasks in cluster 4",
            "qs mesh reassign cluster 4 --slower-than 500",
        ),
        (
            "reassign the tasks of agents slower than 800 ms",
            "qs mesh reassign --slower-than 800",
        ),
        ("reassign them", "qs mesh reassign --slower-than 500"),
        (
            "reassign their tasks to other workers",
            "qs mesh reassign --slower-than 500",
        ),
        (
            "reassign the summary job to gpu",
            "qs mesh delegate \"the summary job\" --capability gpu",
        ),
        (
            "reassign the task of summarizing the logs",
            "qs mesh delegate \"the task of summarizing the logs\"",
        ),
        ("freeze", "qs mesh freeze"),
        ("freeze sector 3", "qs mesh freeze sector 3"),
        ("thaw everything", "qs mesh thaw"),
        // A leading verb decides over a keyword later in the request.
        (
            "broadcast we halt trading at 4pm",
            "qs mesh broadcast \"we halt trading at 4pm\" --mode wave --priority 2",
        ),
        (
            "tell everyone to resume work",
            "qs mesh broadcast \"to resume work\" --mode wave --priority 2",
        ),
        (
            "delegate: fix the bug in sector 3",
            "qs mesh delegate \"fix the bug in sector 3\" --scope sector-3",
        ),
        // A sector's number is no sample size, and the scope shows.
        (
            "ask sector 7 agents: what's your context hash?",
            "qs mesh ask \"what's your context hash?\" --sample 10 --scope sector-7",
        ),
        (
            "ask 25 agents in sector 7: are you ready?",
            "qs mesh ask \"are you ready?\" --sample 25 --scope sector-7",
        ),
    ];
    for (text, want) in table {
        let got = parse_intent(text).map(|i| describe_intent(&i));
        assert_eq!(got.as_deref(), Some(want), "{text:?}");
    }
    assert_eq!(parse_intent("make me a sandwich"), None);
    // Seed §7.2's capability mapping, and what is no request of it: a class or capability
    // it cannot read, or one told not to.
    let mapping = [
        (
            "exclude class E agents from llm_inference routing",
            Some("qs mesh exclude --class E --capability llm_inference"),
        ),
        (
            "fix the capability mapping: CLASS_E_LOCAL off 'llm_inference'",
            Some("qs mesh exclude --class E --capability llm_inference"),
        ),
        (
            "include class E in llm_inference routing again",
            Some("qs mesh include --class E --capability llm_inference"),
        ),
        (
            "stop excluding class local from gpu.",
            Some("qs mesh include --class E --capability gpu"),
        ),
        (
            "keep class E out of gpu",
            Some("qs mesh exclude --class E --capability gpu"),
        ),
        (
            "exclude class E for now from all llm_inference routing",
            Some("qs mesh exclude --class E --capability llm_inference"),
        ),
        (
            "exclude class E from the llm_inference routing",
            Some("qs mesh exclude --class E --capability llm_inference"),
        ),
        ("don't exclude class E from gpu", None),
        ("don't include class E in gpu", None),
        ("exclude class Z from gpu", None),
        ("exclude class E", None),
        ("fix the capability mapping", None),
        // A rule holds mesh-wide: one asked of a scope is no request, never widened.
        ("exclude class E agents in sector 3 from gpu", None),
        // Other intents' words are theirs; a question asks for no rule.
        (
            "fix sector 3 including its breakers",
            Some("qs mesh heal sector 3"),
        ),
        (
            "what's happening in sector 7, including cluster 3?",
            Some("qs mesh status sector 7"),
        ),
        ("is class E excluded from gpu?", None),
        (
            "broadcast exclude class E from gpu",
            Some("qs mesh broadcast \"exclude class E from gpu\" --mode wave --priority 2"),
        ),
    ];
    for (text, want) in mapping {
        let got = parse_intent(text).map(|i| describe_intent(&i));
        assert_eq!(got.as_deref(), want, "{text:?}");
    }
    // A class it cannot read is no request (never a guess).
    assert_eq!(parse_intent("delegate t to class Z"), None);
}

/// A delegation shows the class and timeout it was given (the default timeout not).
#[test]
fn a_delegation_shows_its_class_and_timeout() {
    let table = [
        (None, DELEGATE_TIMEOUT_S, "qs mesh delegate \"t\""),
        (
            Some(ImpedanceClass::D),
            60,
            "qs mesh delegate \"t\" --to D --timeout 60",
        ),
    ];
    for (class, timeout_s, want) in table {
        let a = delegation(Scope::Global, "t".into(), None, class, timeout_s);
        assert!(a.check().is_ok());
        assert_eq!(describe(&a), want);
    }
}

/// An action the operator approved (the console asks when the mesh's mode wants a human's
/// approval) is shown with `--approve`, as the command line that would run it; a freeze
/// takes none.
#[test]
fn an_approved_action_shows_its_approval() {
    let mut heal = MeshAction::Heal {
        scope: Scope::Sector(qs_wire::mesh::SectorId(3)),
        approved: false,
    };
    assert_eq!(describe(&heal), "qs mesh heal sector 3");
    assert!(heal.approve() && !heal.approve());
    assert_eq!(describe(&heal), "qs mesh heal sector 3 --approve");
    let mut delegate = delegation(Scope::Global, "t".into(), None, None, DELEGATE_TIMEOUT_S);
    assert!(delegate.approve());
    assert_eq!(describe(&delegate), "qs mesh delegate \"t\" --approve");
    let mut freeze = MeshAction::Freeze {
        scope: Scope::Global,
    };
    assert!(!freeze.approve() && !freeze.approved());
    assert_eq!(describe(&freeze), "qs mesh freeze");
    // On the API: left out when not approved, read back when it is.
    let plain = serde_json::to_value(MeshAction::Thaw {
        scope: Scope::Global,
        approved: false,
    })
    .unwrap();
    assert!(plain.get("approved").is_none(), "{plain}");
    let mut json = serde_json::to_value(MeshAction::Heal {
        scope: Scope::Global,
        approved: false,
    })
    .unwrap();
    json["approved"] = true.into();
    let approved: MeshAction = serde_json::from_value(json).unwrap();
    assert!(approved.approved());
}

/// What a model answers is untrusted: each answer → the command it becomes, or the
/// start of the error that refuses it (never a panic, never its text read as a request).
#[test]
fn a_models_answer_is_checked_field_by_field() {
    let long = format!(r#"{{"intent":"broadcast","text":"{}"}}"#, "x".repeat(5_000));
    let table: [(&str, Result<&str, &str>); 22] = [
        (
            r#"Sure: {"intent":"freeze","scope":"all"}"#,
            Ok("qs mesh freeze"),
        ),
        (
            r#"{"intent":"broadcast","text":"freeze now"}"#,
            Ok("qs mesh broadcast \"freeze now\" --mode wave --priority 2"),
        ),
        (
            r#"{"intent":"broadcast","text":"go","urgent":true,"scope":"sector 4"}"#,
            Ok("qs mesh broadcast \"go\" --mode parallel --priority 3 --scope sector-4"),
        ),
        (
            r#"{"intent":"delegate","text":"t","capability":"gpu","scope":"cluster 2"}"#,
            Ok("qs mesh delegate \"t\" --capability gpu --scope cluster-2"),
        ),
        (
            r#"{"intent":"ask","text":"q?"}"#,
            Ok("qs mesh ask \"q?\" --sample 10"),
        ),
        (
            "\"} nothing {\"",
            Err("the model's answer holds no JSON object"),
        ),
        (
            r#"{"intent": } {"#,
            Err("the model's answer is not one JSON object"),
        ),
        (
            "no json at all",
            Err("the model's answer holds no JSON object"),
        ),
        (
            r#"{"intent":"ask","text":"q","sample":-1}"#,
            Err("sample: not a count"),
        ),
        (
            r#"{"intent":"ask","text":"q","sample":0}"#,
            Err("the model's answer: sample"),
        ),
        (r#"{"intent":"broadcast"}"#, Err("text: missing")),
        (
            r#"{"intent":"delegate","text":"t","class":"CLASS_D_GPU"}"#,
            Ok("qs mesh delegate \"t\" --to D"),
        ),
        (
            r#"{"intent":"delegate","text":"t","class":"Z"}"#,
            Err("class: --to \"Z\""),
        ),
        (
            r#"{"intent":"route-around","scope":"sector 7"}"#,
            Ok("qs mesh route-around sector 7 --slower-than 500 --for 600"),
        ),
        (
            r#"{"intent":"route-around","slower_than_ms":99999999}"#,
            Err("the model's answer: slower_than_ms"),
        ),
        (
            r#"{"intent":"reassign","scope":"cluster 4","slower_than_ms":800}"#,
            Ok("qs mesh reassign cluster 4 --slower-than 800"),
        ),
        (
            r#"{"intent":"reassign","slower_than_ms":99999999}"#,
            Err("the model's answer: slower_than_ms"),
        ),
        (r#"{"intent":"status","scope":"galaxy 9"}"#, Err("scope: ")),
        (
            r#"{"intent":"exclude","class":"CLASS_E_LOCAL","capability":"llm_inference"}"#,
            Ok("qs mesh exclude --class E --capability llm_inference"),
        ),
        (
            r#"{"intent":"include","class":"E","capability":"llm inference"}"#,
            Err("the model's answer: capability \"llm inference\""),
        ),
        (
            r#"{"intent":"exclude","class":"E"}"#,
            Err("capability: missing"),
        ),
        (
            r#"{"intent":"exclude","class":"E","capability":"gpu","scope":"sector 3"}"#,
            Err("scope: sector 3; a rule holds mesh-wide"),
        ),
    ];
    for (answer, want) in table {
        let got = intent_of_answer(answer)
            .map(|i| describe_intent(&i))
            .map_err(|e| e.to_string());
        match (&got, want) {
            (Ok(cmd), Ok(w)) => assert_eq!(cmd, w, "{answer}"),
            (Err(e), Err(w)) => assert!(e.starts_with(w), "{answer}: {e}"),
            _ => panic!("{answer}: {got:?}, want {want:?}"),
        }
    }
    let e = intent_of_answer(&long).unwrap_err().to_string();
    assert!(e.contains("payload"), "{e}");
    let e = intent_of_answer(r#"{"intent":"rm -rf"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not know"), "{e}");
}

/// Seed §7.2's conversation: after a status, the console offers to route around the slow
/// agents it shows (a led cluster's one by one, a sector's by its 95th percentile), and
/// offers nothing where none is slow.
#[test]
fn a_status_with_slow_agents_offers_to_route_around_them() {
    let agent = |id: u64, cluster: u32, score_ms: f64| {
        serde_json::json!({"agent": id, "cluster": cluster, "state": "active",
            "admitted": true, "score_ms": score_ms})
    };
    let status = serde_json::json!({
        "led_agents": [agent(12, 4, 847.0), agent(19, 4, 612.0), agent(20, 4, 40.0),
            agent(21, 5, 900.0)],
        "sectors": [{"sector": 7, "p95_impedance_ms": 812.0},
            {"sector": 8, "p95_impedance_ms": 120.0}],
    });
    let table = [
        (
            Scope::Cluster(ClusterId(4)),
            Some((
                "Cluster 4 has 2 agents with impedance over 500 ms: 000000000000000c (847 ms), \
                 0000000000000013 (612 ms). Shall I route around the agents slower than 500 ms \
                 for now? (yes / no)",
                "qs mesh route-around cluster 4 --slower-than 500 --for 600",
            )),
        ),
        (
            Scope::Sector(SectorId(7)),
            Some((
                "Slow agents (impedance over 500 ms) in sector 7 (p95 812 ms). Shall I route \
                 around the agents slower than 500 ms for now? (yes / no)",
                "qs mesh route-around sector 7 --slower-than 500 --for 600",
            )),
        ),
        (Scope::Sector(SectorId(8)), None),
        (Scope::Cluster(ClusterId(9)), None),
    ];
    for (scope, want) in table {
        let got = suggestion(&status, &scope);
        let got = got.as_ref().map(|(l, i)| (l.as_str(), describe_intent(i)));
        let want = want.map(|(l, c)| (l, c.to_string()));
        assert_eq!(got, want, "{scope:?}");
    }
    for yes in ["yes", "Yeah", "do it", "ok."] {
        assert!(offer::takes_offer(yes), "{yes}");
    }
    for no in ["no", "yes please route everything", ""] {
        assert!(!offer::takes_offer(no), "{no}");
    }
    // The reply to the offer: a yes takes it; "route around them" goes where it said; a
    // "no" or another request is read afresh.
    let (_, offer) = suggestion(&status, &Scope::Sector(SectorId(7))).unwrap();
    let said = |text: &str| reply(Some(offer.clone()), text).map(|i| describe_intent(&i));
    let here = "qs mesh route-around sector 7 --slower-than 500 --for 600";
    assert_eq!(said("yes").as_deref(), Some(here));
    assert_eq!(said("Yeah route around them").as_deref(), Some(here));
    assert_eq!(said("no"), None);
    assert_eq!(said("freeze").as_deref(), Some("qs mesh freeze"));
    assert_eq!(reply(None, "yes"), None);
}

/// A route-around's threshold in words: its unit read (milliseconds when none is said); one
/// it cannot read is no request.
#[test]
fn thresholds_are_read_with_their_units() {
    let table = [
        ("800", Some(800)),
        ("800ms", Some(800)),
        ("800 ms in sector 7", Some(800)),
        ("1.5 s", Some(1_500)),
        ("2 seconds", Some(2_000)),
        ("five hundred", None),
        ("2 hours", None),
        ("", None),
    ];
    for (text, want) in table {
        assert_eq!(duration_ms(text), want, "{text:?}");
    }
    let around = |text: &str| parse_intent(text).map(|i| describe_intent(&i));
    assert_eq!(
        around("route around agents slower than 1.5 s").as_deref(),
        Some("qs mesh route-around --slower-than 1500 --for 600")
    );
    assert_eq!(around("route around agents slower than a snail"), None);
    // "than" only as a word.
    assert_eq!(
        around("route around them, thank you").as_deref(),
        Some("qs mesh route-around --slower-than 500 --for 600")
    );
}

/// Seed §7.2 goes on: after a route-around whose agents are stuck on tasks, the console
/// offers to reassign those tasks ("Shall I reassign the task?"), where it routed around,
/// and a "do it" runs that; a route-around of agents on no task offers nothing.
#[test]
fn a_route_around_of_agents_on_tasks_offers_to_reassign_them() {
    let action = route_around(Scope::Cluster(ClusterId(4)), 500, ROUTE_AROUND_S);
    let report = |with: &str| {
        serde_json::json!({"done": "route-around", "routed": [
            {"agent": 12, "cluster": 4, "impedance_ms": 847.0,
             "busy": {"with": with, "since_ms": 1}},
            {"agent": 19, "cluster": 4, "impedance_ms": 612.0}]})
    };
    let (line, offer) =
        after_route_around(&action, &report("task t-1: Process large language model"))
            .expect("an offer");
    assert_eq!(
        line,
        "1 of them is on a task. Shall I reassign the tasks of the agents slower than 500 ms \
         to other workers? (yes / no)"
    );
    let said = |text: &str| reply(Some(offer.clone()), text).map(|i| describe_intent(&i));
    for yes in ["Do it", "reassign them", "yes, reassign their tasks"] {
        assert_eq!(
            said(yes).as_deref(),
            Some("qs mesh reassign cluster 4 --slower-than 500"),
            "{yes}"
        );
    }
    assert_eq!(said("don't reassign the task"), None);
    assert_eq!(after_route_around(&action, &report("act: deploy")), None);
    let heal = MeshAction::Heal {
        scope: Scope::Global,
        approved: false,
    };
    assert_eq!(after_route_around(&heal, &report("task t-1: x")), None);
}

/// Seed §7.2's "Shall I reassign the task and fix the capability mapping?" … "Do it": after
/// a route-around whose agents on tasks are all of one class with one capability in common,
/// the offer is both (the reassignment, then the rule), and the replies take both or a part;
/// with several capabilities in common, the console names them and offers the reassignment
/// alone; agents of several classes get no rule offered.
#[test]
fn a_route_around_of_one_class_on_tasks_offers_to_fix_the_capability_mapping() {
    let action = route_around(Scope::Cluster(ClusterId(4)), 500, ROUTE_AROUND_S);
    let agent = |id: u64, class: &str, capabilities: &[&str]| {
        serde_json::json!({"agent": id, "cluster": 4, "impedance_ms": 847.0,
            "busy": {"with": "task t-1: Process large language model", "since_ms": 1},
            "class": class, "capabilities": capabilities})
    };
    let report = |agents: Vec<Value>| serde_json::json!({"done": "route-around", "routed": agents});
    let (line, offer) = after_route_around(
        &action,
        &report(vec![
            agent(12, "E", &["llm_inference", "sensors"]),
            agent(19, "E", &["llm_inference"]),
        ]),
    )
    .expect("an offer");
    assert_eq!(
        line,
        "2 of them are on a task. Shall I reassign the tasks of the agents slower than 500 ms \
         to other workers, and fix the capability mapping (these are class E agents: class E \
         out of 'llm_inference' routing)? (yes / no)"
    );
    let both = "qs mesh reassign cluster 4 --slower-than 500, then qs mesh exclude --class E \
                --capability llm_inference";
    let said = |text: &str| reply(Some(offer.clone()), text).map(|i| describe_intent(&i));
    for (text, want) in [
        ("Do it", Some(both)),
        (
            "reassign the task and fix the capability mapping",
            Some(both),
        ),
        (
            "just reassign them",
            Some("qs mesh reassign cluster 4 --slower-than 500"),
        ),
        (
            "only fix the capability mapping",
            Some("qs mesh exclude --class E --capability llm_inference"),
        ),
        (
            "fix the capability mapping: class D off gpu",
            Some("qs mesh exclude --class D --capability gpu"),
        ),
        (
            "don't reassign, just fix the mapping",
            Some("qs mesh exclude --class E --capability llm_inference"),
        ),
        (
            "fix the capability mapping: stop excluding class E from gpu",
            Some("qs mesh include --class E --capability gpu"),
        ),
        (
            "reassign them and exclude class D from gpu",
            Some(
                "qs mesh reassign cluster 4 --slower-than 500, then qs mesh exclude --class D --capability gpu",
            ),
        ),
        ("no", None),
    ] {
        assert_eq!(said(text).as_deref(), want, "{text:?}");
    }
    // Several in common: named, for the operator to choose; the reassignment offered alone.
    let (line, offer) = after_route_around(
        &action,
        &report(vec![agent(12, "E", &["llm_inference", "gpu"])]),
    )
    .unwrap();
    assert!(
        line.ends_with("say 'exclude class E from CAPABILITY' (they have gpu, llm_inference)."),
        "{line}"
    );
    assert!(matches!(offer, Intent::Act(MeshAction::Reassign { .. })));
    // Two classes: no rule offered.
    let (line, _) = after_route_around(
        &action,
        &report(vec![
            agent(12, "E", &["llm_inference"]),
            agent(19, "D", &["llm_inference"]),
        ]),
    )
    .unwrap();
    assert!(line.ends_with("to other workers? (yes / no)"), "{line}");
}
