//! Task workers on real processes: the Python SDK's example worker (`sdk/python`) claims,
//! refines, checkpoints and completes tasks through `qs up`'s worker socket; a worker killed
//! after its checkpoint hands its task to the next, which resumes there; a worker that speaks
//! the protocol wrongly is refused, disconnected and counted.

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

fn submit(up: &Up, key: &str, payload: &str) -> String {
    submit_task(up, key, payload, 10)
}

fn worker(socket: &std::path::Path, name: &str, extra: &[&str]) -> Command {
    let mut c = Command::new("python3");
    c.arg(repo("sdk/python/example_worker.py"))
        .arg(socket)
        .arg(name)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn task(up: &Up, id: &str) -> Value {
    up.get(&format!("/v1/tasks/{id}"))
}

fn completions(up: &Up, id: &str) -> usize {
    up.events()
        .iter()
        .filter(|e| e["event"]["task"] == id && e["event"]["step"] == "completed")
        .count()
}

#[test]
fn workers_refine_checkpoint_and_complete_tasks_and_a_crash_resumes_from_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path());
    let socket = dir.path().join("state").join("tasks.sock");
    up.wait("the workers' socket", |_| socket.exists());

    // A worker that dies after its first checkpoint.
    let crashing = submit(&up, "first", "q0");
    let out = worker(&socket, "crasher", &["--die-after-checkpoint"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("checkpointed {crashing}")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    up.wait(
        "its attempt failed and the task is back in the inbound queue",
        |u| task(u, &crashing)["phase"]["phase"] == "inbound",
    );
    assert_eq!(task(&up, &crashing)["checkpoint"]["state"], "1");
    // The checkpoint carries the hash of what was saved; /checkpoint_state lists it.
    let saved = task(&up, &crashing)["checkpoint"]["hash"].clone();
    assert!(saved.as_u64().is_some_and(|h| h != 0), "{saved}");
    let listed = up.get("/checkpoint_state")["tasks"]["latest"].clone();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["task"] == crashing.as_str() && c["hash"] == saved),
        "{listed}"
    );

    // More work, and a worker that stays until it is idle.
    let ids: Vec<String> = (1..=4)
        .map(|i| submit(&up, &format!("k{i}"), &format!("q{i}")))
        .collect();
    let mut w = worker(&socket, "steady", &["--stop-after-idle-s", "2"])
        .spawn()
        .unwrap();
    for id in ids.iter().chain([&crashing]) {
        up.wait("the task completed", |u| {
            task(u, id)["phase"]["phase"] == "completed"
        });
        let t = task(&up, id);
        assert!(
            t["result"].as_str().unwrap().starts_with("answer to q"),
            "{t}"
        );
    }
    // The crashed task resumed from its checkpoint: iteration 1 was not done again, so it
    // reported one iteration fewer than a task the steady worker ran from the start.
    let resumed = task(&up, &crashing);
    assert_eq!(resumed["failures"], 1, "{resumed}");
    assert_eq!(resumed["result"], "answer to q0");
    let iterated = |u: &Up, id: &str| {
        u.events()
            .iter()
            .filter(|e| e["event"]["task"] == id && e["event"]["step"] == "iterated")
            .count()
    };
    up.wait("every iteration in the ledger", |u| {
        completions(u, &crashing) == 1 && completions(u, &ids[0]) == 1
    });
    assert_eq!(iterated(&up, &crashing) + 1, iterated(&up, &ids[0]));
    let status = w.wait().unwrap();
    assert!(status.success(), "the worker ended when idle");
    up.wait("one completion each in the ledger", |u| {
        ids.iter()
            .chain([&crashing])
            .all(|id| completions(u, id) == 1)
    });
    let stats = up.get("/queue_stats")["tasks"].clone();
    assert_eq!(
        (stats["completed"].clone(), stats["inbound"].clone()),
        (json!(5), json!(0))
    );

    // A frame that is not the protocol's is refused with the reason, and the worker is cut.
    let mut raw = UnixStream::connect(&socket).unwrap();
    raw.set_read_timeout(Some(LIMIT)).unwrap();
    let junk = b"{\"op\": \"steal-everything\"}";
    raw.write_all(&(junk.len() as u32).to_be_bytes()).unwrap();
    raw.write_all(junk).unwrap();
    let mut len = [0u8; 4];
    raw.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    raw.read_exact(&mut body).unwrap();
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["op"], "refused");
    assert!(
        answer["reason"]
            .as_str()
            .unwrap()
            .contains("steal-everything"),
        "{answer}"
    );
    let mut rest = Vec::new();
    assert_eq!(raw.read_to_end(&mut rest).unwrap(), 0, "disconnected");
    // A claim before registering, and an oversized frame, are refused alike.
    let mut raw = UnixStream::connect(&socket).unwrap();
    raw.write_all(&(u32::MAX).to_be_bytes()).unwrap();
    let mut rest = Vec::new();
    let _ = raw.read_to_end(&mut rest);
    assert!(
        String::from_utf8_lossy(&rest).contains("a frame of"),
        "{rest:?}"
    );
    up.wait("both counted", |u| {
        u.get("/queue_stats")["workers_disconnected"] == 2
    });
}

/// The Rust SDK (`crates/qs-worker`) on the real agent: a claim that waits is woken by a
/// submission; a side effect run by an attempt that then died is not run by the next attempt;
/// a superseded attempt's completion is refused; the task completes once.
#[test]
fn the_rust_sdk_waits_for_work_and_runs_a_side_effect_once_across_a_crashed_attempt() {
    use qs_worker::{Claimed, Worker, WorkerError};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path());
    let socket = dir.path().join("state").join("tasks.sock");
    up.wait("the workers' socket", |_| socket.exists());

    // A claim waiting on an empty queue is answered when the task comes in.
    let waiting = {
        let socket = socket.clone();
        std::thread::spawn(move || {
            let mut w = Worker::connect(&socket, "first", &[]).unwrap();
            let t0 = Instant::now();
            let got = w.claim(Duration::from_secs(30)).unwrap();
            (w, got, t0.elapsed())
        })
    };
    up.wait("the claim waits", |u| {
        u.get("/queue_stats")["tasks"]["inbound"] == 0
    });
    let id = submit(&up, "effects", "q");
    let (mut first, got, waited) = waiting.join().unwrap();
    let Claimed::Task(t1) = got else {
        panic!("{got:?}")
    };
    assert_eq!(t1.task, id);
    assert!(waited < Duration::from_secs(30), "woken, not timed out");

    // The first attempt runs its effect, then dies (its connection drops).
    let mut effects = Vec::new();
    assert!(
        first
            .effect(&t1, "notify", |tok| {
                effects.push(tok.to_owned());
                Ok::<(), ()>(())
            })
            .unwrap()
            .unwrap()
    );
    drop(first);
    up.wait("the attempt failed; the task waits again", |u| {
        task(u, &id)["phase"]["phase"] == "inbound"
    });

    let mut second = Worker::connect(&socket, "second", &[]).unwrap();
    let Claimed::Task(t2) = second.claim(Duration::from_secs(10)).unwrap() else {
        panic!("the task again")
    };
    assert!(t2.attempt > t1.attempt);
    let ran = second
        .effect(&t2, "notify", |tok| {
            effects.push(tok.to_owned());
            Ok::<(), ()>(())
        })
        .unwrap()
        .unwrap();
    assert!(!ran, "the effect is not run twice");
    assert_eq!(effects, [format!("{id}/notify")]);
    // The dead attempt's word no longer counts.
    match second.complete(&t1, "stale") {
        Err(WorkerError::Refused(why)) => assert!(why.contains("superseded"), "{why}"),
        other => panic!("{other:?}"),
    }
    second.complete(&t2, "done").unwrap();
    assert_eq!(task(&up, &id)["result"], "done");
    up.wait("one completion in the ledger", |u| completions(u, &id) == 1);
}

/// The Python SDK's own unit tests (`sdk/python/test_qs_worker.py`), run here so the test
/// command runs them.
#[test]
fn the_python_sdk_unit_tests_pass() {
    let out = Command::new("python3")
        .args(["-m", "unittest", "-v", "test_qs_worker"])
        .current_dir(repo("sdk/python"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Validation on the real agent: a command judges each result (its standard input); one it
/// refuses goes, by the task's policy, to another worker; a vote completes when two distinct
/// workers agree.
#[test]
fn a_validator_command_judges_results_and_a_vote_needs_distinct_workers_to_agree() {
    use qs_worker::{Claimed, Worker};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path());
    let socket = dir.path().join("state").join("tasks.sock");
    up.wait("the workers' socket", |_| socket.exists());
    let post = |body: Value| {
        let (status, v) = up.http("POST", "/v1/tasks", &body.to_string());
        assert_eq!(status, 201, "{v}");
        v["id"].as_str().unwrap().to_owned()
    };
    let checked = post(json!({
        "class": "batch", "idempotency_key": "checked", "payload": "q",
        "max_iterations": 1, "deadline_ms": 120000,
        "validation": {"kind": "command", "command": "grep -q good", "on_failure": "reroute"},
    }));
    let mut a = Worker::connect(&socket, "a", &[]).unwrap();
    let mut b = Worker::connect(&socket, "b", &[]).unwrap();
    let claim = |w: &mut Worker| match w.claim(Duration::from_millis(300)).unwrap() {
        Claimed::Task(t) => Some(t),
        _ => None,
    };
    let t = claim(&mut a).expect("the task");
    a.complete(&t, "bad answer").unwrap();
    up.wait("refused, back in the inbound queue", |u| {
        task(u, &checked)["phase"]["phase"] == "inbound"
    });
    assert!(claim(&mut a).is_none(), "rerouted: not to a again");
    let t = claim(&mut b).expect("b takes it");
    b.complete(&t, "a good answer").unwrap();
    up.wait("accepted", |u| {
        task(u, &checked)["phase"]["phase"] == "completed"
    });
    assert_eq!(task(&up, &checked)["result"], "a good answer");

    let voted = post(json!({
        "class": "batch", "idempotency_key": "voted", "payload": "q",
        "max_iterations": 1, "deadline_ms": 120000,
        "validation": {"kind": "vote", "k": 2, "n": 3},
    }));
    let t = claim(&mut a).expect("a votes");
    a.complete(&t, "42").unwrap();
    assert!(claim(&mut a).is_none(), "a votes once");
    let t = claim(&mut b).expect("b votes");
    b.complete(&t, "42").unwrap();
    let v = task(&up, &voted);
    assert_eq!(
        (v["phase"]["phase"].clone(), v["result"].clone()),
        (json!("completed"), json!("42")),
        "{v}"
    );
    up.wait("both completions in the ledger", |u| {
        completions(u, &voted) == 1 && completions(u, &checked) == 1
    });
    let steps: Vec<Value> = up
        .events()
        .into_iter()
        .filter(|e| e["event"]["task"] == voted.as_str())
        .map(|e| e["event"]["step"].clone())
        .collect();
    assert_eq!(
        steps.iter().filter(|s| **s == "voted").count(),
        1,
        "{steps:?}"
    );
    assert_eq!(completions(&up, &voted), 1);
    assert_eq!(completions(&up, &checked), 1);
}

/// A worker's progress shows on its task; one that promised a heartbeat and goes silent
/// while holding a task is taken for hung: disconnected, counted, its attempt failed.
#[test]
fn progress_shows_and_a_silent_worker_past_its_heartbeat_loses_its_task() {
    use qs_worker::{Claimed, Worker};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path());
    let socket = dir.path().join("state").join("tasks.sock");
    up.wait("the workers' socket", |_| socket.exists());
    let id = submit(&up, "hung", "q");
    let mut w =
        Worker::connect_with_heartbeat(&socket, "sleepy", &[], Some(Duration::from_millis(200)))
            .unwrap();
    let Claimed::Task(t) = w.claim(Duration::from_secs(5)).unwrap() else {
        panic!("the task")
    };
    w.progress(&t, 0.5, "half way").unwrap();
    let shown = task(&up, &id);
    assert_eq!(shown["progress"]["note"], "half way", "{shown}");
    let silent = Instant::now();
    up.wait("taken for hung: the attempt failed", |u| {
        task(u, &id)["phase"]["phase"] == "inbound"
    });
    assert!(
        silent.elapsed() >= Duration::from_millis(600),
        "three heartbeats of silence"
    );
    assert_eq!(task(&up, &id)["failures"], 1);
    assert!(w.heartbeat().is_err(), "disconnected");
    up.wait("counted", |u| {
        u.get("/queue_stats")["workers_disconnected"] == 1
    });
}
