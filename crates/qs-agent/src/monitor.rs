//! The health monitor of one process of an instance: it probes on the check's schedule and
//! reports every result to its node, whose core judges them ([`qs_core::health::judge`]):
//! serving, not serving, failed, and the stop that a failure calls for. Nothing is decided
//! here.

use crate::control::Control;
use crate::exec::Executor;
use crate::health;
use qs_core::health::{UP_WITHOUT_CHECK_MS, probe_pause_ms};
use qs_wire::{HealthCheck, InstanceId};
use std::time::Duration;
use tokio::sync::mpsc;

/// Probes one process of `instance` until that process is gone (a restart gets its own
/// monitor) or its node stops listening. Without a check, one `Ok` is reported once the
/// process stayed up [`UP_WITHOUT_CHECK_MS`].
pub(crate) async fn monitor(
    exec: Executor,
    instance: InstanceId,
    pid: u32,
    port: u16,
    check: Option<HealthCheck>,
    setting: crate::sandbox::ChildSetting,
    control: mpsc::Sender<Control>,
) {
    let running = |exec: &Executor| exec.pid_of(&instance) == Some(pid);
    let report = |result: Result<(), String>| {
        Control::Core(Box::new(qs_core::Input::Probe {
            instance: instance.clone(),
            result,
        }))
    };
    let Some(check) = check else {
        tokio::time::sleep(Duration::from_millis(UP_WITHOUT_CHECK_MS)).await;
        if running(&exec) {
            let _ = control.send(report(Ok(()))).await;
        }
        return;
    };
    let timeout = Duration::from_millis(check.timeout_ms);
    // Only the pace of probing follows what was seen; the verdict is the core's.
    let mut passed = false;
    loop {
        tokio::time::sleep(Duration::from_millis(probe_pause_ms(&check, passed))).await;
        if !running(&exec) {
            return;
        }
        let result = health::probe(
            &check.probe,
            port,
            &setting.env,
            setting.run_as.as_ref(),
            timeout,
        )
        .await;
        passed = result.is_ok();
        if control.send(report(result)).await.is_err() {
            return;
        }
    }
}
