//! The validator hook: results in the outbound queue whose task names a command are judged by
//! running it (`sh -c`, the result on its standard input, the task's id and payload in
//! `QS_TASK_ID` and `QS_TASK_PAYLOAD`); exit status 0 accepts the result, anything else (a
//! command that cannot start, or runs past [`VALIDATOR_TIMEOUT`], included) refuses it.
//! What a refusal leads to is the core's to decide (`qs_core::tasks::TaskQueues::validated`).
//! At most [`MAX_VALIDATORS`] run at once.

use super::TaskHost;
use qs_core::tasks::ToValidate;
use qs_wire::TaskId;
use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

/// Validators running at once, at most.
pub const MAX_VALIDATORS: usize = 4;
/// A validator running longer is killed, and the result refused.
pub const VALIDATOR_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the outbound queue is looked at.
const EVERY: Duration = Duration::from_millis(50);

/// Judges outbound results until `stop` turns true.
pub async fn judge(host: Arc<TaskHost>, mut stop: watch::Receiver<bool>) {
    let judging = Arc::new(std::sync::Mutex::new(BTreeSet::<TaskId>::new()));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_VALIDATORS));
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let free = slots.available_permits();
        if free == 0 {
            continue;
        }
        let busy = judging.lock().map(|j| j.clone()).unwrap_or_default();
        for v in host.to_validate(&busy, free).await {
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                break;
            };
            if let Ok(mut j) = judging.lock() {
                j.insert(v.id.clone());
            }
            let (host, judging) = (host.clone(), judging.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let accepted = run(&v).await;
                if let Err(e) = host.validated(&v.id, accepted).await {
                    tracing::warn!("the validation of {}: {e}", v.id);
                }
                if let Ok(mut j) = judging.lock() {
                    j.remove(&v.id);
                }
            });
        }
    }
}

/// Runs `v`'s command on its result: whether it accepted it.
async fn run(v: &ToValidate) -> bool {
    let child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(&v.command)
        .env("QS_TASK_ID", v.id.as_str())
        .env("QS_TASK_PAYLOAD", &v.payload)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("the validator of {} cannot start: {e}", v.id);
            return false;
        }
    };
    let stdin = child.stdin.take();
    let judged = async {
        if let Some(mut stdin) = stdin {
            // One that does not read its input is judged by its exit status all the same;
            // closing it (the drop) is its end of input.
            let _ = stdin.write_all(v.result.as_bytes()).await;
        }
        child.wait().await
    };
    match tokio::time::timeout(VALIDATOR_TIMEOUT, judged).await {
        Ok(Ok(status)) => status.success(),
        Ok(Err(e)) => {
            tracing::warn!("the validator of {}: {e}", v.id);
            false
        }
        Err(_) => {
            tracing::warn!("the validator of {} ran past {VALIDATOR_TIMEOUT:?}", v.id);
            false
        }
    }
}
