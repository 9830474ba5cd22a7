//! The systemd executor of model runtimes (seed 003's host-native authority). With
//! `[models] executor = "systemd"` the agent forks no runtime itself: it writes the runtime's
//! unit (its command with the port it chose, its environment, `Conflicts=` with every
//! runtime that cannot share its GPU) into systemd's runtime unit directory, reloads systemd,
//! and `systemctl start`s it; it stops it with `systemctl stop` (SIGTERM, then SIGKILL past
//! the unit's `TimeoutStopSec`) or `systemctl kill --signal=SIGKILL`, and learns of its end
//! by watching the unit's state. Exits reach the host as the process executor's do, so the
//! core's decisions do not depend on which executor carries them out; systemd only holds
//! them to `Conflicts=` as well. `systemctl --user` (`[models] systemd_user = true`) drives a
//! user manager instead of the system's.

use super::systemd::{UnitText, render};
use crate::exec::{ExecError, Exit, Launch, Running, free_port};
use qs_wire::{ExitOutcome, InstanceId};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// How often a started unit's state is read.
const WATCH_EVERY: Duration = Duration::from_millis(200);
/// Reads of a unit's state that may fail in a row (systemd gone) before it counts as ended.
const MAX_WATCH_ERRORS: u32 = 25;
/// How long one `systemctl` call may take (a blocking stop waits for `TimeoutStopSec`).
const CALL_LIMIT: Duration = Duration::from_secs(40);

/// What a runtime's unit is, besides its command.
#[derive(Clone, Debug)]
pub struct UnitPlan {
    /// `qs-model-NODE.MODEL.TIER.service`.
    pub name: String,
    pub model: String,
    pub tier: String,
    pub gpu: u32,
    /// The units it cannot run beside.
    pub conflicts: Vec<String>,
    pub load_ms: u64,
    pub resident: bool,
}

/// A unit this executor started and has not seen end.
struct Started {
    unit: String,
    running: Running,
    stop_reason: Option<String>,
    /// A kill was asked for (perhaps before the unit had started).
    killed: bool,
}

/// The systemd executor. Cheap to clone; its clones share the units.
#[derive(Clone)]
pub struct Systemctl {
    user: bool,
    unit_dir: PathBuf,
    units: Arc<Mutex<BTreeMap<InstanceId, Started>>>,
    exits: mpsc::Sender<Exit>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Systemctl {
    /// The executor of the system manager (units in `/run/systemd/system`), or with `user`
    /// of the user manager of `$XDG_RUNTIME_DIR` (units in `$XDG_RUNTIME_DIR/systemd/user`).
    pub fn new(user: bool, exits: mpsc::Sender<Exit>) -> Result<Systemctl, String> {
        Ok(Systemctl {
            user,
            unit_dir: Self::unit_dir(user)?,
            units: Arc::default(),
            exits,
        })
    }

    /// Where the runtime units go: systemd's runtime unit directory of the system, or of the
    /// user manager of `$XDG_RUNTIME_DIR`.
    pub fn unit_dir(user: bool) -> Result<PathBuf, String> {
        if !user {
            return Ok(PathBuf::from("/run/systemd/system"));
        }
        let runtime = std::env::var_os("XDG_RUNTIME_DIR")
            .ok_or("[models] systemd_user needs XDG_RUNTIME_DIR (the user manager's directory)")?;
        Ok(PathBuf::from(runtime).join("systemd/user"))
    }

    /// `systemctl [--user] ARGS`: its standard output, or why it failed.
    async fn call(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = tokio::process::Command::new("systemctl");
        if self.user {
            cmd.arg("--user");
        }
        cmd.args(args).kill_on_drop(true);
        let shown = format!("systemctl {}", args.join(" "));
        let out = tokio::time::timeout(CALL_LIMIT, cmd.output())
            .await
            .map_err(|_| format!("`{shown}` took over {} s", CALL_LIMIT.as_secs()))?
            .map_err(|e| format!("`{shown}`: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            Err(format!("`{shown}` failed ({}): {}", out.status, err.trim()))
        }
    }

    /// Writes the unit of `launch` (its command with a free port for `{port}`), then reloads
    /// systemd and starts it, on a task of its own: a unit that cannot be started is an
    /// [`ExitOutcome::FailedStart`] exit, as with the process executor.
    pub fn start(&self, launch: Launch, plan: &UnitPlan) -> Result<Running, ExecError> {
        let instance = launch.instance.clone();
        if lock(&self.units).contains_key(&instance) {
            return Err(ExecError::AlreadyRunning { instance });
        }
        let port = free_port().map_err(|source| ExecError::Port {
            instance: instance.clone(),
            source,
        })?;
        let command = launch
            .command
            .replace("{port}", &port.to_string())
            .replace("{qs}", &crate::sandbox::qs_exe(None));
        let mut env = launch.env.clone();
        env.insert("QS_PORT".into(), port.to_string());
        env.insert("QS_INSTANCE".into(), instance.to_string());
        let text = render(&UnitText {
            model: &plan.model,
            tier: &plan.tier,
            gpu: plan.gpu,
            command: &command,
            env: &env,
            conflicts: &plan.conflicts,
            load_ms: plan.load_ms,
            resident: plan.resident,
            // The core's keeper decides restarts, not systemd.
            restart_on_failure: false,
        });
        let path = self.unit_dir.join(&plan.name);
        qs_store::write_atomic(&path, text.as_bytes(), None).map_err(|e| ExecError::Unit {
            instance: instance.clone(),
            reason: e.to_string(),
        })?;
        let running = Running {
            pid: 0,
            port,
            command,
        };
        lock(&self.units).insert(
            instance.clone(),
            Started {
                unit: plan.name.clone(),
                running: running.clone(),
                stop_reason: None,
                killed: false,
            },
        );
        let this = self.clone();
        let unit = plan.name.clone();
        tokio::spawn(async move {
            let outcome = this.run_unit(&instance, &unit).await;
            lock(&this.units).remove(&instance);
            let _ = this.call(&["reset-failed", &unit]).await;
            let _ = this.exits.send(Exit { instance, outcome }).await;
        });
        Ok(running)
    }

    /// Starts `unit` and watches it until it ends: how it ended.
    async fn run_unit(&self, instance: &InstanceId, unit: &str) -> ExitOutcome {
        let started = async {
            self.call(&["daemon-reload"]).await?;
            // A unit that failed before stays failed until reset; a start clears it anyway.
            let _ = self.call(&["reset-failed", unit]).await;
            self.call(&["start", unit]).await
        };
        if let Err(reason) = started.await {
            return ExitOutcome::FailedStart { reason };
        }
        // A stop or a kill asked for while it was starting may have run before the start:
        // it is carried out now.
        let (stop, kill) = lock(&self.units)
            .get(instance)
            .map_or((false, false), |s| (s.stop_reason.is_some(), s.killed));
        if kill {
            let _ = self.call(&["kill", "--signal=SIGKILL", unit]).await;
        } else if stop {
            let _ = self.call(&["stop", "--no-block", unit]).await;
        }
        let mut errors = 0;
        loop {
            tokio::time::sleep(WATCH_EVERY).await;
            let shown = self
                .call(&[
                    "show",
                    "-p",
                    "ActiveState",
                    "-p",
                    "Result",
                    "-p",
                    "ExecMainStatus",
                    "-p",
                    "MainPID",
                    unit,
                ])
                .await;
            let props = match shown {
                Ok(text) => {
                    errors = 0;
                    properties(&text)
                }
                Err(e) => {
                    errors += 1;
                    if errors >= MAX_WATCH_ERRORS {
                        // Its VRAM will be counted free: make sure it is.
                        let _ = self.call(&["kill", "--signal=SIGKILL", unit]).await;
                        return ExitOutcome::Crashed {
                            reason: format!("systemd stopped answering about {unit}: {e}"),
                        };
                    }
                    continue;
                }
            };
            let get = |k: &str| props.get(k).map_or("", String::as_str);
            if let Ok(pid) = get("MainPID").parse::<u32>()
                && pid != 0
                && let Some(s) = lock(&self.units).get_mut(instance)
            {
                s.running.pid = pid;
            }
            if matches!(get("ActiveState"), "inactive" | "failed") {
                let asked = lock(&self.units)
                    .get_mut(instance)
                    .and_then(|s| s.stop_reason.take());
                return match asked {
                    Some(reason) => ExitOutcome::Stopped { reason },
                    None => ExitOutcome::Crashed {
                        reason: format!(
                            "its unit {unit} ended: {}, exit status {}",
                            get("Result"),
                            get("ExecMainStatus")
                        ),
                    },
                };
            }
        }
    }

    /// Stops a runtime's unit (`systemctl stop`: SIGTERM to its control group, SIGKILL past
    /// its `TimeoutStopSec`); its exit is reported with `reason`.
    pub fn stop(&self, instance: &InstanceId, reason: &str) -> bool {
        self.signal(instance, Some(reason), &["stop", "--no-block"])
    }

    /// Kills a runtime's unit at once (`systemctl kill --signal=SIGKILL`).
    pub fn kill(&self, instance: &InstanceId) -> bool {
        self.signal(instance, None, &["kill", "--signal=SIGKILL"])
    }

    fn signal(&self, instance: &InstanceId, reason: Option<&str>, verb: &[&str]) -> bool {
        let unit = {
            let mut units = lock(&self.units);
            let Some(s) = units.get_mut(instance) else {
                return false;
            };
            match reason {
                Some(r) => s.stop_reason = Some(r.to_owned()),
                None => s.killed = true,
            }
            s.unit.clone()
        };
        let this = self.clone();
        let mut args: Vec<String> = verb.iter().map(|s| (*s).to_owned()).collect();
        args.push(unit);
        tokio::spawn(async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            if let Err(e) = this.call(&args).await {
                tracing::warn!("{e}");
            }
        });
        true
    }

    /// The main pid of a runtime's unit, once systemd has said it.
    pub fn pid_of(&self, instance: &InstanceId) -> Option<u32> {
        lock(&self.units)
            .get(instance)
            .map(|s| s.running.pid)
            .filter(|p| *p != 0)
    }

    /// The units running now whose main pid is known, by instance.
    pub fn running(&self) -> BTreeMap<InstanceId, Running> {
        lock(&self.units)
            .iter()
            .filter(|(_, s)| s.running.pid != 0)
            .map(|(i, s)| (i.clone(), s.running.clone()))
            .collect()
    }

    /// Stops the units matching `patterns` left by an earlier life of the agent
    /// (`systemctl stop` with patterns: loaded units only).
    pub async fn stop_leftovers(&self, patterns: &[String]) -> Result<(), String> {
        let mut args = vec!["stop"];
        args.extend(patterns.iter().map(String::as_str));
        self.call(&args).await.map(|_| ())
    }

    /// Stops every unit it started and waits (bounded) until each has ended.
    pub async fn shutdown(&self, reason: &str) {
        let all: Vec<InstanceId> = lock(&self.units).keys().cloned().collect();
        for id in &all {
            self.stop(id, reason);
        }
        let deadline = tokio::time::Instant::now() + CALL_LIMIT;
        while !lock(&self.units).is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `Key=Value` lines as a map.
fn properties(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}
