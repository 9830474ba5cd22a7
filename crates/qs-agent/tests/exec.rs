//! The executor on real processes.

use qs_agent::exec::{Executor, Exit, Launch};
use qs_wire::{ExitOutcome, InstanceId};
use std::time::Duration;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(20);

fn id(s: &str) -> InstanceId {
    InstanceId::new(s).unwrap()
}

fn setup(grace_ms: u64) -> (tempfile::TempDir, Executor, mpsc::Receiver<Exit>) {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = mpsc::channel(16);
    let exec = Executor::new(dir.path().join("logs"), Duration::from_millis(grace_ms), tx);
    (dir, exec, rx)
}

fn launch(name: &str, command: &str, is_job: bool) -> Launch {
    Launch {
        instance: id(name),
        command: command.into(),
        is_job,
        env: Default::default(),
        run_as: None,
    }
}

async fn next_exit(rx: &mut mpsc::Receiver<Exit>) -> Exit {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("an exit is reported")
        .unwrap()
}

/// Running or sleeping: present in /proc and not a zombie (an orphan may stay a zombie
/// until PID 1 reaps it, but it runs nothing).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|rest| rest.trim().to_owned()))
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

/// Waits (bounded) until `pid` no longer runs.
async fn gone(pid: u32) -> bool {
    tokio::time::timeout(WAIT, async {
        while alive(pid) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .is_ok()
}

/// Waits until a file contains `needle` (the child writes it at its own pace).
async fn wait_for_log(path: &std::path::Path, needle: &str) -> String {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(text) = std::fs::read_to_string(path)
                && text.contains(needle)
            {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the log line appears")
}

#[tokio::test]
async fn stop_ends_the_whole_process_group() {
    let (dir, exec, mut rx) = setup(2000);
    let r = exec
        .start(launch(
            "web-1",
            "sh -c 'sleep 30 & echo child=$!; wait'",
            false,
        ))
        .unwrap();
    let log = dir.path().join("logs/web-1.stdout.log");
    let text = wait_for_log(&log, "child=").await;
    let grandchild: u32 = text.trim().trim_start_matches("child=").parse().unwrap();
    assert!(alive(r.pid) && alive(grandchild));
    assert!(exec.stop(&id("web-1"), "scale in"));
    let exit = next_exit(&mut rx).await;
    assert_eq!(
        exit.outcome,
        ExitOutcome::Stopped {
            reason: "scale in".into()
        }
    );
    assert!(gone(grandchild).await, "the grandchild died with its group");
    assert!(exec.running().is_empty());
}

/// A child sees the allow-list, what its spec sets and the agent's QS_PORT/QS_INSTANCE, and
/// nothing else of the agent's environment (here cargo's CARGO_MANIFEST_DIR, which this test
/// process has).
#[tokio::test]
async fn a_child_gets_a_clean_environment() {
    assert!(std::env::var("CARGO_MANIFEST_DIR").is_ok());
    let (dir, exec, mut rx) = setup(2000);
    let mut l = launch(
        "env-1",
        "sh -c 'echo manifest=${CARGO_MANIFEST_DIR:-none} model=$MODEL port=$QS_PORT path=${PATH:+set}'",
        true,
    );
    l.env.insert("MODEL".into(), "llama".into());
    let r = exec.start(l).unwrap();
    let exit = next_exit(&mut rx).await;
    assert_eq!(exit.outcome, ExitOutcome::Completed);
    let log = wait_for_log(&dir.path().join("logs/env-1.stdout.log"), "manifest=").await;
    assert_eq!(
        log.trim(),
        format!("manifest=none model=llama port={} path=set", r.port)
    );
}

/// The logs of an instance that ended go with the sweep once older than the retention; those
/// of a running instance stay, however old.
#[tokio::test]
async fn logs_of_ended_instances_are_swept() {
    let (dir, exec, mut rx) = setup(2000);
    exec.start(launch("done-1", "sh -c 'echo finished'", true))
        .unwrap();
    assert_eq!(next_exit(&mut rx).await.outcome, ExitOutcome::Completed);
    let done = dir.path().join("logs/done-1.stdout.log");
    wait_for_log(&done, "finished").await;
    exec.start(launch("live-1", "sh -c 'echo up; sleep 30'", false))
        .unwrap();
    let live = dir.path().join("logs/live-1.stdout.log");
    wait_for_log(&live, "up").await;
    assert_eq!(exec.sweep_logs(Duration::from_secs(3600)), 0, "too young");
    assert!(exec.sweep_logs(Duration::ZERO) >= 1);
    assert!(!done.exists(), "the ended instance's logs went");
    assert!(live.exists(), "the running instance's stayed");
    exec.stop(&id("live-1"), "test");
    next_exit(&mut rx).await;
}

#[tokio::test]
async fn a_child_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let (dir, exec, mut rx) = setup(300);
    exec.start(launch(
        "stubborn",
        "sh -c 'trap \"\" TERM; echo ready; while true; do sleep 0.1; done'",
        false,
    ))
    .unwrap();
    wait_for_log(&dir.path().join("logs/stubborn.stdout.log"), "ready").await;
    exec.stop(&id("stubborn"), "drain");
    let exit = next_exit(&mut rx).await;
    assert_eq!(
        exit.outcome,
        ExitOutcome::Stopped {
            reason: "drain".into()
        }
    );
}

/// (command, is a job, expected outcome kind, text the reason must contain)
#[tokio::test]
async fn exits_are_classified() {
    let cases = [
        (
            "no-such-binary-qs --flag",
            false,
            "failed-start",
            "not found",
        ),
        (
            "sh -c 'echo boom >&2; exit 3'",
            false,
            "failed-start",
            "exited with code 3: boom",
        ),
        ("sh -c 'sleep 0.7; exit 0'", true, "completed", ""),
        (
            "sh -c 'sleep 0.7; exit 0'",
            false,
            "crashed",
            "exited with code 0",
        ),
        (
            "sh -c 'sleep 0.7; kill -9 $$'",
            false,
            "crashed",
            "killed by signal 9",
        ),
    ];
    for (i, (command, is_job, kind, reason)) in cases.into_iter().enumerate() {
        let (_dir, exec, mut rx) = setup(500);
        exec.start(launch(&format!("case-{i}"), command, is_job))
            .unwrap();
        let exit = next_exit(&mut rx).await;
        let json = serde_json::to_value(&exit.outcome).unwrap();
        assert_eq!(json["outcome"], kind, "{command}: {exit:?}");
        let shown = json["reason"].as_str().unwrap_or("");
        assert!(shown.contains(reason), "{command}: {shown}");
    }
}

#[tokio::test]
async fn port_is_substituted_and_exported() {
    let (dir, exec, mut rx) = setup(500);
    let r = exec
        .start(launch(
            "portly",
            "sh -c 'echo arg={port} env=$QS_PORT id=$QS_INSTANCE; sleep 30'",
            false,
        ))
        .unwrap();
    let text = wait_for_log(&dir.path().join("logs/portly.stdout.log"), "id=").await;
    assert_eq!(text.trim(), format!("arg={0} env={0} id=portly", r.port));
    exec.shutdown("test over").await;
    assert!(matches!(
        next_exit(&mut rx).await.outcome,
        ExitOutcome::Stopped { .. }
    ));
}

#[tokio::test]
async fn logs_rotate() {
    let (dir, exec, mut rx) = setup(500);
    let big = qs_agent::exec::LOG_ROTATE_BYTES + 1000;
    exec.start(launch(
        "chatty",
        &format!("sh -c 'head -c {big} /dev/zero; sleep 0.6'"),
        true,
    ))
    .unwrap();
    assert_eq!(next_exit(&mut rx).await.outcome, ExitOutcome::Completed);
    let logs = dir.path().join("logs");
    tokio::time::timeout(WAIT, async {
        while !logs.join("chatty.stdout.log.1").exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the first generation was rotated out");
    let rotated = std::fs::metadata(logs.join("chatty.stdout.log.1"))
        .unwrap()
        .len();
    assert!(rotated >= qs_agent::exec::LOG_ROTATE_BYTES);
}
