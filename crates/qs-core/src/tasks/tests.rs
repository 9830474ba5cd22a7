//! The task queues' rules, one scenario each.

use super::*;
use qs_wire::parse_task;

/// A batch task of 5 iterations and a minute, `extra` (TOML lines) changing any of that.
fn spec(key: &str, extra: &str) -> TaskSpec {
    let mut text = format!("[task]\nidempotency_key = \"{key}\"\n{extra}\n");
    for (field, value) in [
        ("class", "\"batch\""),
        ("max_iterations", "5"),
        ("deadline_ms", "60000"),
    ] {
        if !extra.contains(&format!("{field} =")) {
            text.push_str(&format!("{field} = {value}\n"));
        }
    }
    parse_task("t.toml", &text).unwrap()
}

fn queues() -> TaskQueues {
    TaskQueues::new(NodeId::new("n1").unwrap(), TaskLimits::default(), 1)
}

fn steps(q: &mut TaskQueues) -> Vec<String> {
    std::iter::from_fn(|| q.poll())
        .map(|e| match e {
            Event::Task { task, step, .. } => format!("{task} {step:?}"),
            other => format!("{other:?}"),
        })
        .collect()
}

const T0: Time = Time::from_millis(1_000);
const NO_MODELS: BTreeSet<ServiceName> = BTreeSet::new();

#[test]
fn inbound_order_is_class_then_priority_then_warmth_then_difficulty_then_arrival() {
    let mut q = queues();
    let submitted: Vec<TaskId> = [
        ("late-batch", "priority = 1"),
        ("ingest", "class = \"ingestion\"\npriority = 9"),
        ("easy", "priority = 5\ndifficulty = 0.1"),
        ("hard", "priority = 5\ndifficulty = 0.9"),
        ("warm", "priority = 1\nmodel = \"code\""),
        ("warm-but-low", "priority = 0\nmodel = \"code\""),
    ]
    .iter()
    .map(|(key, extra)| q.submit(spec(key, extra), T0).unwrap().id)
    .collect();
    let warm: BTreeSet<ServiceName> = [ServiceName::new("code").unwrap()].into();
    let order: Vec<TaskId> = std::iter::from_fn(|| q.claim("w", &warm).map(|c| c.id)).collect();
    let name = |i: usize| submitted[i].clone();
    // Among equal class and priority, the warm one first; never above a higher priority.
    assert_eq!(
        order,
        [name(2), name(3), name(4), name(0), name(5), name(1)]
    );
}

#[test]
fn an_idempotency_key_names_one_task_and_a_full_queue_refuses() {
    let mut q = TaskQueues::new(
        NodeId::new("n1").unwrap(),
        TaskLimits {
            inbound: 2,
            ..TaskLimits::default()
        },
        1,
    );
    let a = q.submit(spec("k1", ""), T0).unwrap();
    let again = q.submit(spec("k1", "priority = 7"), T0).unwrap();
    assert_eq!((again.id.clone(), again.existing), (a.id.clone(), true));
    q.submit(spec("k2", ""), T0).unwrap();
    assert_eq!(
        q.submit(spec("k3", ""), T0),
        Err(Refusal::Full {
            queue: "inbound",
            limit: 2
        })
    );
    assert_eq!(q.counts().inbound, 2);
}

#[test]
fn a_task_refines_until_it_converges_then_completes_exactly_once() {
    let mut q = queues();
    let id = q.submit(spec("k", ""), T0).unwrap().id;
    let c = q.claim("w1", &NO_MODELS).unwrap();
    let r = |score, result_hash| Report { score, result_hash };
    assert_eq!(q.report(&id, c.attempt, r(0.2, 1)), Ok(Next::Continue));
    assert_eq!(q.counts().refinement, 1);
    // The next iteration goes to whoever claims first, before new work.
    q.submit(spec("other", ""), T0).unwrap();
    let c2 = q.claim("w2", &NO_MODELS).unwrap();
    assert_eq!((c2.id.clone(), c2.iteration), (id.clone(), 1));
    // The first worker's attempt is superseded.
    assert!(matches!(
        q.report(&id, c.attempt, r(0.9, 2)),
        Err(Refusal::Superseded { .. })
    ));
    assert_eq!(q.report(&id, c2.attempt, r(0.9, 2)), Ok(Next::Continue));
    let c3 = q.claim("w2", &NO_MODELS).unwrap();
    assert_eq!(c3.id, id);
    // The same result again: consistent, refining is over.
    assert_eq!(q.report(&id, c3.attempt, r(0.95, 2)), Ok(Next::Finish));
    assert_eq!(
        q.complete(&id, c2.attempt, "late".into()),
        Err(Refusal::Superseded {
            task: id.clone(),
            got: c2.attempt,
            now: c3.attempt
        })
    );
    q.complete(&id, c3.attempt, "42".into()).unwrap();
    assert_eq!(q.get(&id).unwrap().phase, Phase::Completed);
    assert_eq!(
        q.complete(&id, c3.attempt, "43".into()),
        Err(Refusal::Ended(id.clone()))
    );
    assert_eq!(q.cancel(&id), Err(Refusal::Ended(id.clone())));
    let completed = steps(&mut q)
        .iter()
        .filter(|s| s.ends_with("Completed"))
        .count();
    assert_eq!(completed, 1, "one completion in the ledger");
}

#[test]
fn max_iterations_end_refining() {
    let mut q = queues();
    let id = q.submit(spec("k", "max_iterations = 2"), T0).unwrap().id;
    let r = |h| Report {
        score: h as f64,
        result_hash: h,
    };
    let c = q.claim("w", &NO_MODELS).unwrap();
    assert_eq!(q.report(&id, c.attempt, r(1)), Ok(Next::Continue));
    let c = q.claim("w", &NO_MODELS).unwrap();
    assert_eq!(q.report(&id, c.attempt, r(2)), Ok(Next::Finish));
}

const CHECKED: &str = "validation = { kind = \"command\", command = \"true\", on_failure = \"POLICY\" }\nescalate = [\"big\"]\nmodel = \"small\"";

/// Claims `id` as `worker` (the claim must be that task) and finishes it with `result`.
fn pass(q: &mut TaskQueues, id: &TaskId, worker: &str, result: &str) -> Claim {
    let c = q.claim(worker, &NO_MODELS).expect("a claim");
    assert_eq!(&c.id, id);
    q.complete(id, c.attempt, result.into()).unwrap();
    c
}

#[test]
fn a_result_to_validate_waits_outbound_and_a_refused_one_goes_where_its_policy_says() {
    // (on_failure, who may take the next pass, the model it needs)
    let table = [
        ("retry", "w#1", Some("small")),
        ("reroute", "v#2", Some("small")),
        ("diversify", "w#3", Some("big")),
        ("vote", "v#4", Some("small")),
    ];
    for (policy, next, model) in table {
        let mut q = queues();
        let extra = CHECKED.replace("POLICY", policy);
        let id = q.submit(spec("k", &extra), T0).unwrap().id;
        pass(&mut q, &id, "w#0", "a");
        assert_eq!(q.counts().outbound, 1);
        let judging = BTreeSet::new();
        assert_eq!(q.to_validate(&judging, 4)[0].result, "a");
        q.validated(&id, false).unwrap();
        assert_eq!(q.get(&id).unwrap().phase, Phase::Inbound, "{policy}");
        if next.starts_with('v') {
            assert_eq!(q.claim("w#9", &NO_MODELS), None, "{policy}: not w again");
        }
        let c = q.claim(next, &NO_MODELS).expect(policy);
        assert_eq!(c.model.as_ref().map(|m| m.as_str()), model, "{policy}");
        assert_eq!((c.iteration, c.state), (0, None), "{policy}: a fresh pass");
        q.complete(&id, c.attempt, "b".into()).unwrap();
        if policy == "vote" {
            // Now a vote of 2 of 3: "b", then another worker's "b" agrees.
            assert_eq!(q.get(&id).unwrap().phase, Phase::Inbound);
            pass(&mut q, &id, "u#5", "b");
        } else {
            q.validated(&id, true).unwrap();
        }
        let t = q.get(&id).unwrap();
        assert_eq!(
            (&t.phase, t.result.as_deref()),
            (&Phase::Completed, Some("b")),
            "{policy}"
        );
    }
}

#[test]
fn a_validator_that_refuses_every_result_fails_the_task_after_its_attempts() {
    let mut q = queues();
    let id = q
        .submit(spec("k", &CHECKED.replace("POLICY", "retry")), T0)
        .unwrap()
        .id;
    for _ in 0..3 {
        pass(&mut q, &id, "w#0", "wrong");
        q.validated(&id, false).unwrap();
    }
    assert!(matches!(q.get(&id).unwrap().phase, Phase::Failed { .. }));
    assert!(steps(&mut q).last().unwrap().ends_with("Failed"));
}

#[test]
fn a_vote_completes_on_k_agreeing_results_from_distinct_workers_or_fails_after_n() {
    let vote = "validation = { kind = \"vote\", k = 2, n = 3 }";
    let mut q = queues();
    let id = q.submit(spec("k", vote), T0).unwrap().id;
    pass(&mut q, &id, "a#1", "x");
    // The same worker (another connection) may not vote twice.
    assert_eq!(q.claim("a#2", &NO_MODELS), None);
    pass(&mut q, &id, "b#3", "y");
    pass(&mut q, &id, "c#4", "x");
    let t = q.get(&id).unwrap();
    assert_eq!(
        (&t.phase, t.result.as_deref()),
        (&Phase::Completed, Some("x"))
    );
    let steps = steps(&mut q);
    assert_eq!(steps.iter().filter(|s| s.ends_with("Voted")).count(), 2);
    assert_eq!(steps.iter().filter(|s| s.ends_with("Completed")).count(), 1);

    let split = q.submit(spec("split", vote), T0).unwrap().id;
    for (w, r) in [("a#5", "1"), ("b#6", "2"), ("c#7", "3")] {
        pass(&mut q, &split, w, r);
    }
    assert!(matches!(q.get(&split).unwrap().phase, Phase::Failed { .. }));
}

#[test]
fn a_task_without_progress_escalates_through_its_models_then_to_another_worker() {
    let mut q = queues();
    let extra =
        "max_iterations = 50\nmodel = \"small\"\nescalate = [\"big\"]\nstall_iterations = 2";
    let id = q.submit(spec("k", extra), T0).unwrap().id;
    // Scores that never improve, with results that never repeat (nothing converges).
    let mut models = Vec::new();
    for i in 0..6u64 {
        let c = q
            .claim("w#1", &NO_MODELS)
            .or_else(|| q.claim("z#2", &NO_MODELS))
            .unwrap();
        models.push(c.model.map(|m| m.to_string()).unwrap_or_default());
        let report = Report {
            score: 1.0 - i as f64 * 0.1,
            result_hash: i * 7919,
        };
        assert_eq!(q.report(&id, c.attempt, report), Ok(Next::Continue));
    }
    let escalations: Vec<String> = std::iter::from_fn(|| q.poll())
        .filter_map(|e| match e {
            Event::Task {
                step: TaskStep::Escalated,
                detail,
                ..
            } => Some(detail),
            _ => None,
        })
        .collect();
    assert_eq!(escalations.len(), 2, "{escalations:?}");
    assert!(
        escalations[0].ends_with("escalated to big"),
        "{escalations:?}"
    );
    assert!(escalations[1].contains("another worker"), "{escalations:?}");
    assert_eq!(models[..3], ["small", "small", "small"]);
    assert_eq!(models[3], "big");
    assert_eq!(
        q.claim("w#1", &NO_MODELS),
        None,
        "its next pass is another worker's"
    );
    assert_eq!(q.claim("z#2", &NO_MODELS).unwrap().id, id);
}

#[test]
fn failed_attempts_retry_then_fail_and_deadlines_and_cancels_end_tasks() {
    let mut q = queues();
    let id = q.submit(spec("k", ""), T0).unwrap().id;
    for n in 1..=3 {
        let c = q.claim("w", &NO_MODELS).unwrap();
        q.fail(&id, c.attempt, "worker crashed").unwrap();
        let failed = matches!(q.get(&id).unwrap().phase, Phase::Failed { .. });
        assert_eq!(failed, n == 3, "attempt {n}");
    }
    let late = q.submit(spec("late", "deadline_ms = 500"), T0).unwrap().id;
    let gone = q.submit(spec("gone", ""), T0).unwrap().id;
    q.cancel(&gone).unwrap();
    assert_eq!(q.next_deadline(), Some(Time::from_millis(1_500)));
    q.expire(Time::from_millis(1_499));
    assert_eq!(q.get(&late).unwrap().phase, Phase::Inbound);
    q.expire(Time::from_millis(1_500));
    assert!(matches!(q.get(&late).unwrap().phase, Phase::Failed { .. }));
    let c = q.counts();
    assert_eq!((c.inbound, c.failed, c.cancelled), (0, 2, 1));
    assert_eq!(q.claim("w", &NO_MODELS), None);
}

#[test]
fn a_checkpoint_is_given_to_the_next_claim_and_a_gone_worker_gives_its_tasks_back() {
    let mut q = queues();
    let id = q.submit(spec("k", ""), T0).unwrap().id;
    let c = q.claim("w1", &NO_MODELS).unwrap();
    assert_eq!(c.state, None);
    q.checkpoint(&id, c.attempt, 1, "half done".into()).unwrap();
    let big = "x".repeat(MAX_CHECKPOINT_BYTES + 1);
    assert_eq!(
        q.checkpoint(&id, c.attempt, 1, big),
        Err(Refusal::TooLarge {
            got: MAX_CHECKPOINT_BYTES + 1
        })
    );
    q.abandon("w1");
    assert_eq!(q.get(&id).unwrap().phase, Phase::Inbound);
    assert_eq!(q.get(&id).unwrap().failures, 1);
    let again = q.claim("w2", &NO_MODELS).unwrap();
    assert_eq!(again.state.as_deref(), Some("half done"));
    assert!(matches!(
        q.checkpoint(&id, c.attempt, 2, "stale".into()),
        Err(Refusal::Superseded { .. })
    ));
    q.abandon("w1");
    assert!(
        matches!(q.get(&id).unwrap().phase, Phase::Running { .. }),
        "w2's attempt stands"
    );
}

#[test]
fn a_restart_takes_back_every_task_where_its_phase_says() {
    let mut q = queues();
    // a runs with a checkpoint, b completes, c runs.
    let waiting = q.submit(spec("a", ""), T0).unwrap().id;
    let done = q.submit(spec("b", ""), T0).unwrap().id;
    q.submit(spec("c", ""), T0).unwrap();
    let c = q.claim("w", &NO_MODELS).unwrap();
    assert_eq!(c.id, waiting);
    q.checkpoint(&waiting, c.attempt, 1, "s".into()).unwrap();
    let c2 = q.claim("w", &NO_MODELS).unwrap();
    assert_eq!(c2.id, done);
    q.complete(&c2.id, c2.attempt, "r".into()).unwrap();
    let c3 = q.claim("w", &NO_MODELS).unwrap();
    let kept: Vec<Task> = q.tasks().cloned().collect();
    let mut after = TaskQueues::new(NodeId::new("n1").unwrap(), TaskLimits::default(), 100);
    assert_eq!(after.restore(kept.clone()), Vec::<TaskId>::new());
    // What ran died with the last life: both wait again, with their checkpoints.
    let c = after.counts();
    assert_eq!((c.inbound, c.running, c.completed), (2, 0, 1));
    assert_eq!(
        after
            .get(&waiting)
            .unwrap()
            .checkpoint
            .as_ref()
            .unwrap()
            .state,
        "s"
    );
    // The keys still name their tasks; a new claim's attempt is above every old one.
    assert!(after.submit(spec("a", ""), T0).unwrap().existing);
    let next = after.claim("w", &NO_MODELS).unwrap();
    assert!(next.attempt > c3.attempt);
    // The same tasks again are refused, not doubled.
    assert_eq!(after.restore(kept).len(), 3);
}

#[test]
fn an_end_the_ledger_lost_is_recorded_again_and_a_compacted_one_is_not() {
    let mut q = queues();
    let mut ended = Vec::new();
    for key in ["lost", "kept", "compacted"] {
        let id = q.submit(spec(key, ""), T0).unwrap().id;
        let c = q.claim("w#1", &NO_MODELS).unwrap();
        q.complete(&id, c.attempt, "r".into()).unwrap();
        ended.push(id);
    }
    steps(&mut q);
    // The ledger holds some events of "lost" but not its end, all of "kept", none of
    // "compacted".
    let seen: BTreeMap<TaskId, bool> = [(ended[0].clone(), false), (ended[1].clone(), true)].into();
    q.record_lost_ends(&seen);
    assert_eq!(steps(&mut q), [format!("{} Completed", ended[0])]);
}

#[test]
fn an_operator_takes_a_task_from_its_worker_for_another_with_no_failure() {
    let mut q = queues();
    let id = q.submit(spec("k", ""), T0).unwrap().id;
    let other = q.submit(spec("other", ""), T0).unwrap().id;
    let c = q.claim("w#1", &NO_MODELS).unwrap();
    assert_eq!(c.id, id);
    q.progress(&id, c.attempt, 0.1, "waiting on GPU memory".into())
        .unwrap();
    steps(&mut q);
    // Only the task named, and only from the connection that holds it.
    assert!(!q.reassign("w#1", &other), "not the task it holds");
    assert!(!q.reassign("w#2", &id), "not the connection that holds it");
    assert!(q.reassign("w#1", &id));
    assert!(!q.reassign("w#1", &id), "it holds nothing now");
    let t = q.get(&id).unwrap();
    assert_eq!((&t.phase, t.failures), (&Phase::Inbound, 0));
    assert_eq!(t.progress, None);
    assert_eq!(steps(&mut q), [format!("{id} Retried")]);
    // What that connection says of the attempt after is refused; it is not given the task
    // again (it takes the next one), another connection is, one of the same name too.
    assert!(q.complete(&id, c.attempt, "late".into()).is_err());
    assert_eq!(q.claim("w#1", &NO_MODELS).map(|c| c.id), Some(other));
    let again = q.claim("w#2", &NO_MODELS).unwrap();
    assert_eq!(again.id, id);
    assert!(again.attempt > c.attempt);
    q.complete(&id, again.attempt, "done".into()).unwrap();
}
