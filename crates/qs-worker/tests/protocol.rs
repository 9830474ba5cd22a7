//! The SDK against a scripted agent on a real Unix socket (a double of the agent's side: the
//! real agent is driven by `crates/qs/tests/task_workers.rs`): the frames it sends, how it
//! reads answers and refusals, and that an effect already recorded is not run again.

use qs_worker::{Claimed, Next, Worker, WorkerError, result_hash};
use serde_json::{Value, json};
use sha2::Digest;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::Duration;

/// Serves one connection: for each frame read, answers the next of `answers`; returns the
/// requests it read.
fn agent(answers: Vec<Value>) -> (tempfile::TempDir, std::thread::JoinHandle<Vec<Value>>) {
    let dir = tempfile::tempdir().unwrap();
    let listener = UnixListener::bind(dir.path().join("tasks.sock")).unwrap();
    let serving = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut seen = Vec::new();
        for answer in answers {
            let mut len = [0u8; 4];
            if s.read_exact(&mut len).is_err() {
                break;
            }
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            s.read_exact(&mut body).unwrap();
            seen.push(serde_json::from_slice(&body).unwrap());
            let out = serde_json::to_vec(&answer).unwrap();
            s.write_all(&(out.len() as u32).to_be_bytes()).unwrap();
            s.write_all(&out).unwrap();
        }
        seen
    });
    (dir, serving)
}

fn task() -> Value {
    json!({"op": "task", "task": "n1-t1", "attempt": 7, "iteration": 2,
           "payload": "p", "model": null, "state": "2"})
}

#[test]
fn a_worker_registers_claims_reports_checkpoints_and_completes_under_its_attempt() {
    let (dir, serving) = agent(vec![
        json!({"op": "registered", "node": "n1"}),
        task(),
        json!({"op": "ok"}),
        json!({"op": "next", "next": "finish"}),
        json!({"op": "ok"}),
    ]);
    let mut w = Worker::connect(dir.path().join("tasks.sock"), "w", &["m"]).unwrap();
    assert_eq!(w.node(), "n1");
    let Claimed::Task(t) = w.claim(Duration::from_millis(250)).unwrap() else {
        panic!("a task")
    };
    assert_eq!(
        (t.attempt, t.iteration, t.state.as_deref()),
        (7, 2, Some("2"))
    );
    w.checkpoint(&t, 3, "3").unwrap();
    assert_eq!(w.report(&t, 0.5, "r").unwrap(), Next::Finish);
    w.complete(&t, "r").unwrap();
    drop(w);
    let seen = serving.join().unwrap();
    let ops: Vec<&str> = seen.iter().map(|v| v["op"].as_str().unwrap()).collect();
    assert_eq!(
        ops,
        ["register", "claim", "checkpoint", "report", "complete"]
    );
    assert_eq!(seen[0]["models"], json!(["m"]));
    assert_eq!(seen[1]["wait_ms"], 250);
    assert!(
        seen[2..]
            .iter()
            .all(|v| v["attempt"] == 7 && v["task"] == "n1-t1")
    );
    assert_eq!(seen[3]["result_hash"], result_hash("r"));
}

#[test]
fn refusals_are_errors_with_the_agents_reason_and_soft_stop_is_its_own_answer() {
    let (dir, serving) = agent(vec![
        json!({"op": "registered", "node": "n1"}),
        json!({"op": "none"}),
        json!({"op": "soft-stop"}),
        json!({"op": "refused", "reason": "attempt 7 of task n1-t1 was superseded by attempt 9"}),
    ]);
    let mut w = Worker::connect(dir.path().join("tasks.sock"), "w", &[]).unwrap();
    assert_eq!(w.claim(Duration::ZERO).unwrap(), Claimed::Nothing);
    assert_eq!(w.claim(Duration::ZERO).unwrap(), Claimed::SoftStop);
    let t = serde_json::from_value(task()).unwrap();
    match w.complete(&t, "late") {
        Err(WorkerError::Refused(why)) => assert!(why.contains("superseded"), "{why}"),
        other => panic!("{other:?}"),
    }
    drop(w);
    serving.join().unwrap();
}

#[test]
fn an_effect_runs_once_and_is_skipped_when_an_earlier_attempt_ran_it() {
    let (dir, serving) = agent(vec![
        json!({"op": "registered", "node": "n1"}),
        json!({"op": "effect", "done": false}),
        json!({"op": "ok"}),
        json!({"op": "effect", "done": true}),
    ]);
    let mut w = Worker::connect(dir.path().join("tasks.sock"), "w", &[]).unwrap();
    let t = serde_json::from_value(task()).unwrap();
    let mut tokens = Vec::new();
    let ran = w.effect(&t, "email", |tok| {
        tokens.push(tok.to_owned());
        Ok::<(), ()>(())
    });
    assert!(ran.unwrap().unwrap());
    let again = w.effect(&t, "email", |tok| {
        tokens.push(tok.to_owned());
        Ok::<(), ()>(())
    });
    assert!(!again.unwrap().unwrap());
    assert_eq!(tokens, ["n1-t1/email"]);
    drop(w);
    let seen = serving.join().unwrap();
    assert_eq!(seen[2]["op"], "effect-done");
}

#[test]
fn an_oversized_answer_is_an_error_not_an_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let listener = UnixListener::bind(dir.path().join("tasks.sock")).unwrap();
    let serving = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf);
        s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    });
    match Worker::connect(dir.path().join("tasks.sock"), "w", &[]) {
        Err(WorkerError::TooLarge(n)) => assert_eq!(n, u32::MAX as usize),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("connected"),
    }
    serving.join().unwrap();
}

#[test]
fn a_mesh_agent_joins_polls_checks_the_hash_and_answers_ready_or_conflict() {
    let hex = |p: &str| -> String {
        sha2::Sha256::digest(p.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let envelope = |op: u64, payload: &str, hash: String| {
        json!({"op": "mesh", "envelope": {"id": 1, "op": op, "created_ms": 1,
            "target_arrival_ms": 9, "ttl_ms": 60000, "priority": 2, "weight": 1.0,
            "verb": "observe", "payload": payload, "content_hash": hash, "requires": "gpu"}})
    };
    let (dir, serving) = agent(vec![
        json!({"op": "registered", "node": "n1"}),
        json!({"op": "mesh-joined", "agent": 42}),
        envelope(7, "status", hex("status")),
        json!({"op": "ok"}),
        envelope(8, "tampered", hex("other")),
        json!({"op": "ok"}),
        json!({"op": "none"}),
    ]);
    let mut w = Worker::connect(dir.path().join("tasks.sock"), "w", &[]).unwrap();
    assert_eq!(w.mesh_join(&["gpu"]).unwrap(), 42);
    let first = w.mesh_poll(Duration::from_millis(100)).unwrap().unwrap();
    assert!(first.intact());
    assert_eq!(first.requires.as_deref(), Some("gpu"));
    w.mesh_answer(&first, "a1b2c3d4", None).unwrap();
    let second = w.mesh_poll(Duration::from_millis(100)).unwrap().unwrap();
    assert!(!second.intact());
    let conflict =
        json!({"type": "hash-mismatch", "expected": second.content_hash, "received": "x"});
    w.mesh_answer(&second, "", Some(conflict)).unwrap();
    assert_eq!(w.mesh_poll(Duration::from_millis(100)).unwrap(), None);
    drop(w);
    let seen = serving.join().unwrap();
    assert_eq!(seen[1], json!({"op": "mesh-join", "capabilities": ["gpu"]}));
    assert_eq!(
        seen[3],
        json!({"op": "mesh-answer", "operation": 7, "state": 1, "answer": "a1b2c3d4"})
    );
    assert_eq!(
        (seen[5]["operation"].as_u64(), seen[5]["state"].as_i64()),
        (Some(8), Some(-1))
    );
    assert_eq!(seen[5]["conflict"]["type"], "hash-mismatch");
}
