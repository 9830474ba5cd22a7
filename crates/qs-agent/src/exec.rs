//! The process executor: real child processes, each in its own process group, with a free
//! port, rotated log files, graceful stop (SIGTERM, then SIGKILL after a grace period) and an
//! exit report for every start.

use qs_wire::{ExitOutcome, InstanceId, InstanceLoad};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::mpsc;

/// An exit shorter than this after start counts as a failed start.
pub const FAILED_START_WITHIN: Duration = Duration::from_millis(500);
/// Bytes one log file holds before it is rotated.
pub const LOG_ROTATE_BYTES: u64 = 8 * 1024 * 1024;
/// Rotated generations kept per stream (`.1` … `.N`).
pub const LOG_GENERATIONS: u32 = 3;

/// What to run.
#[derive(Clone, Debug)]
pub struct Launch {
    pub instance: InstanceId,
    /// A shell command line; `{port}` is replaced by the instance's port and `{qs}` by the
    /// path of the running `qs` executable.
    pub command: String,
    /// Jobs exit 0 when done; services never should.
    pub is_job: bool,
    /// What the spec adds to the child's environment.
    pub env: BTreeMap<String, String>,
    /// Another user to run it as (a root agent's children); `None`: the agent's own.
    pub run_as: Option<crate::run_as::RunAs>,
}

/// An instance's process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub instance: InstanceId,
    pub outcome: ExitOutcome,
}

/// A running instance as the executor knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    pub pid: u32,
    pub port: u16,
    pub command: String,
}

struct Child {
    running: Running,
    stop_reason: Arc<Mutex<Option<String>>>,
}

/// What the no-op executor double's instances do, as a test or a benchmark scripts it: its
/// starts fail (a broken binary) while `broken` is set, and its instances are sensed at the
/// loads set here. One per node; the fleet hands it out ([`crate::fleet::EmbeddedFleet`]).
#[derive(Debug, Default)]
pub struct NoopScript {
    broken: std::sync::atomic::AtomicBool,
    loads: Mutex<BTreeMap<InstanceId, InstanceLoad>>,
}

impl NoopScript {
    /// From now on every start fails at once (`true`), or starts work again.
    pub fn break_starts(&self, broken: bool) {
        self.broken
            .store(broken, std::sync::atomic::Ordering::Relaxed);
    }

    /// The instance is sensed at `load` from now on.
    pub fn set_load(&self, instance: &InstanceId, load: InstanceLoad) {
        lock(&self.loads).insert(instance.clone(), load);
    }

    /// What the instance is sensed at (nothing unless set).
    pub fn load(&self, instance: &InstanceId) -> InstanceLoad {
        lock(&self.loads).get(instance).copied().unwrap_or_default()
    }
}

/// See the module docs. Cloning shares the same executor.
#[derive(Clone)]
pub struct Executor {
    /// Test double for benchmarks and parity tests: starts nothing, reports stops at once,
    /// does what its script says.
    noop: Option<Arc<NoopScript>>,
    log_dir: PathBuf,
    grace: Duration,
    children: Arc<Mutex<BTreeMap<InstanceId, Child>>>,
    exits: mpsc::Sender<Exit>,
}

/// Why an instance could not be started at all.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{instance}: no free port: {source}")]
    Port {
        instance: InstanceId,
        source: std::io::Error,
    },
    #[error("{instance}: log files under {dir}: {source}")]
    Logs {
        instance: InstanceId,
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{instance}: already running")]
    AlreadyRunning { instance: InstanceId },
    #[error("{instance}: its systemd unit: {reason}")]
    Unit {
        instance: InstanceId,
        reason: String,
    },
}

/// A free TCP port on loopback (the kernel's choice; released before the child binds it).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends `signal` to the whole process group led by `pid` (never to group 0, which would be
/// our own).
fn kill_group(pid: u32, signal: libc::c_int) {
    if pid == 0 {
        return;
    }
    // SAFETY: kill(2) with a negative pid signals a process group; it has no memory effects.
    unsafe {
        libc::kill(-(pid as libc::pid_t), signal);
    }
}

impl Executor {
    /// An executor writing logs under `log_dir`; exits are reported on `exits`.
    pub fn new(log_dir: impl Into<PathBuf>, grace: Duration, exits: mpsc::Sender<Exit>) -> Self {
        Executor {
            noop: None,
            log_dir: log_dir.into(),
            grace,
            children: Arc::default(),
            exits,
        }
    }

    /// A no-op executor (a double for benchmarks of the decision path and for parity tests
    /// with the simulator): `start` runs nothing and succeeds unless `script` breaks it,
    /// `stop` and `kill` report the exit at once.
    pub fn noop(exits: mpsc::Sender<Exit>, script: Arc<NoopScript>) -> Self {
        Executor {
            noop: Some(script),
            ..Executor::new(PathBuf::new(), Duration::ZERO, exits)
        }
    }

    /// The double's script, when this is the no-op executor.
    pub fn script(&self) -> Option<&NoopScript> {
        self.noop.as_deref()
    }

    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Starts an instance. A command that cannot be spawned (missing binary) or exits at once
    /// is reported as an [`ExitOutcome::FailedStart`] exit, not an error: the caller learns of
    /// it like of any other exit.
    pub fn start(&self, launch: Launch) -> Result<Running, ExecError> {
        let instance = launch.instance.clone();
        if lock(&self.children).contains_key(&instance) {
            return Err(ExecError::AlreadyRunning { instance });
        }
        if let Some(script) = &self.noop {
            let running = Running {
                pid: 0,
                port: 0,
                command: launch.command,
            };
            let child = Child {
                running: running.clone(),
                stop_reason: Arc::default(),
            };
            lock(&self.children).insert(instance.clone(), child);
            if script.broken.load(std::sync::atomic::Ordering::Relaxed) {
                let outcome = ExitOutcome::FailedStart {
                    reason: "the start failed (no-op executor, broken by its script)".into(),
                };
                self.end_noop(&instance, outcome);
            }
            return Ok(running);
        }
        let port = free_port().map_err(|source| ExecError::Port {
            instance: instance.clone(),
            source,
        })?;
        let qs = crate::sandbox::qs_exe(launch.run_as.as_ref());
        let command = launch
            .command
            .replace("{port}", &port.to_string())
            .replace("{qs}", &qs);
        std::fs::create_dir_all(&self.log_dir).map_err(|source| ExecError::Logs {
            instance: instance.clone(),
            dir: self.log_dir.clone(),
            source,
        })?;
        let env = crate::sandbox::environment(
            std::env::vars(),
            &launch.env,
            &[
                ("QS_PORT", port.to_string()),
                ("QS_INSTANCE", instance.to_string()),
            ],
        );
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(format!("exec {command}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        crate::sandbox::confine(&mut cmd, &env, launch.run_as.as_ref());
        let started = Instant::now();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                self.report(Exit {
                    instance,
                    outcome: ExitOutcome::FailedStart {
                        reason: format!("cannot spawn `{command}`: {e}"),
                    },
                });
                return Ok(Running {
                    pid: 0,
                    port,
                    command,
                });
            }
        };
        let pid = child.id().unwrap_or(0);
        let mut copiers = Vec::new();
        for (stream, name) in [
            (
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn AsyncRead + Unpin + Send>),
                "stdout",
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn AsyncRead + Unpin + Send>),
                "stderr",
            ),
        ] {
            if let Some(stream) = stream {
                let path = self.log_dir.join(format!("{instance}.{name}.log"));
                copiers.push(tokio::spawn(copy_rotating(stream, path)));
            }
        }
        let running = Running { pid, port, command };
        let stop_reason = Arc::new(Mutex::new(None));
        lock(&self.children).insert(
            instance.clone(),
            Child {
                running: running.clone(),
                stop_reason: stop_reason.clone(),
            },
        );
        let this = self.clone();
        let is_job = launch.is_job;
        tokio::spawn(async move {
            let status = child.wait().await;
            // The pipes close with the process: let the copiers write the last lines (which
            // the exit reason quotes), bounded in case a grandchild holds a pipe open.
            for c in copiers {
                let _ = tokio::time::timeout(Duration::from_secs(1), c).await;
            }
            lock(&this.children).remove(&instance);
            let stopped = lock(&stop_reason).take();
            let outcome = classify(
                status,
                stopped,
                is_job,
                started.elapsed(),
                &this.log_dir,
                &instance,
            );
            // The process is gone; make sure nothing it started lives on.
            kill_group(pid, libc::SIGKILL);
            this.report(Exit { instance, outcome });
        });
        Ok(running)
    }

    fn report(&self, exit: Exit) {
        let exits = self.exits.clone();
        tokio::spawn(async move {
            let _ = exits.send(exit).await;
        });
    }

    /// Stops an instance: SIGTERM to its process group, SIGKILL after the grace period.
    /// The exit is reported with [`ExitOutcome::Stopped`] and `reason`.
    pub fn stop(&self, instance: &InstanceId, reason: &str) -> bool {
        if self.noop.is_some() {
            return self.end_noop(
                instance,
                ExitOutcome::Stopped {
                    reason: reason.to_owned(),
                },
            );
        }
        let pid = {
            let children = lock(&self.children);
            let Some(child) = children.get(instance) else {
                return false;
            };
            *lock(&child.stop_reason) = Some(reason.to_owned());
            child.running.pid
        };
        kill_group(pid, libc::SIGTERM);
        let children = self.children.clone();
        let (instance, grace) = (instance.clone(), self.grace);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if lock(&children)
                .get(&instance)
                .is_some_and(|c| c.running.pid == pid)
            {
                kill_group(pid, libc::SIGKILL);
            }
        });
        true
    }

    /// Kills an instance's process group at once (SIGKILL), as a crash would: the exit is
    /// reported as a crash, not a stop.
    pub fn kill(&self, instance: &InstanceId) -> bool {
        if self.noop.is_some() {
            let outcome = ExitOutcome::Crashed {
                reason: "killed (no-op executor)".into(),
            };
            return self.end_noop(instance, outcome);
        }
        let pid = lock(&self.children).get(instance).map(|c| c.running.pid);
        match pid {
            Some(pid) => {
                kill_group(pid, libc::SIGKILL);
                true
            }
            None => false,
        }
    }

    fn end_noop(&self, instance: &InstanceId, outcome: ExitOutcome) -> bool {
        if lock(&self.children).remove(instance).is_none() {
            return false;
        }
        self.report(Exit {
            instance: instance.clone(),
            outcome,
        });
        true
    }

    /// Where exits are reported (for exits the caller synthesizes).
    pub fn exits(&self) -> mpsc::Sender<Exit> {
        self.exits.clone()
    }

    /// Stops everything and waits (bounded by the grace period plus a second) until every
    /// process is gone.
    pub async fn shutdown(&self, reason: &str) {
        let all: Vec<InstanceId> = lock(&self.children).keys().cloned().collect();
        for id in &all {
            self.stop(id, reason);
        }
        let deadline = Instant::now() + self.grace + Duration::from_secs(1);
        while !lock(&self.children).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for c in lock(&self.children).values() {
            kill_group(c.running.pid, libc::SIGKILL);
        }
    }

    /// One instance's process, if it runs.
    pub fn running_one(&self, instance: &InstanceId) -> Option<Running> {
        lock(&self.children)
            .get(instance)
            .map(|c| c.running.clone())
    }

    /// The pid of one instance's process, if it runs.
    pub fn pid_of(&self, instance: &InstanceId) -> Option<u32> {
        lock(&self.children).get(instance).map(|c| c.running.pid)
    }

    /// What runs now, by instance.
    /// Removes the logs of instances that no longer run here and were last written more
    /// than `retention` ago (a new instance id per placement would otherwise leave logs
    /// forever). Returns how many files went. Blocking: call it off the runtime.
    pub fn sweep_logs(&self, retention: Duration) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.log_dir) else {
            return 0;
        };
        let running: Vec<String> = lock(&self.children).keys().map(|i| i.to_string()).collect();
        let mut removed = 0;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // `INSTANCE.stdout.log[.N]`: instance ids hold no dot.
            let Some((instance, rest)) = name.split_once('.') else {
                continue;
            };
            if !rest.starts_with("stdout.log") && !rest.starts_with("stderr.log") {
                continue;
            }
            if running.iter().any(|r| r == instance) {
                continue;
            }
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= retention);
            if old && std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    pub fn running(&self) -> BTreeMap<InstanceId, Running> {
        lock(&self.children)
            .iter()
            .map(|(k, c)| (k.clone(), c.running.clone()))
            .collect()
    }
}

fn classify(
    status: std::io::Result<std::process::ExitStatus>,
    stopped: Option<String>,
    is_job: bool,
    ran: Duration,
    log_dir: &Path,
    instance: &InstanceId,
) -> ExitOutcome {
    use std::os::unix::process::ExitStatusExt;
    if let Some(reason) = stopped {
        return ExitOutcome::Stopped { reason };
    }
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            return ExitOutcome::Crashed {
                reason: format!("lost the process: {e}"),
            };
        }
    };
    if is_job && status.success() {
        return ExitOutcome::Completed;
    }
    let how = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "ended".to_owned(),
    };
    let tail = last_line(&log_dir.join(format!("{instance}.stderr.log")));
    let reason = match tail {
        Some(t) => format!("{how}: {t}"),
        None => how,
    };
    if ran < FAILED_START_WITHIN {
        ExitOutcome::FailedStart { reason }
    } else {
        ExitOutcome::Crashed { reason }
    }
}

/// The last non-empty line of a log file, shortened, for error reports.
fn last_line(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    Some(line.chars().take(200).collect())
}

/// Copies a child's stream into `path`, rotating at [`LOG_ROTATE_BYTES`].
async fn copy_rotating(mut from: Box<dyn AsyncRead + Unpin + Send>, path: PathBuf) {
    let Ok(mut file) = open_append(&path).await else {
        return;
    };
    let mut written = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if file.write_all(&buf[..n]).await.is_err() {
            break;
        }
        written += n as u64;
        if written >= LOG_ROTATE_BYTES {
            let _ = file.flush().await;
            for g in (1..LOG_GENERATIONS).rev() {
                let _ = tokio::fs::rename(rotated(&path, g), rotated(&path, g + 1)).await;
            }
            let _ = tokio::fs::rename(&path, rotated(&path, 1)).await;
            match open_append(&path).await {
                Ok(f) => file = f,
                Err(_) => break,
            }
            written = 0;
        }
    }
    let _ = file.flush().await;
}

async fn open_append(path: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
}

fn rotated(path: &Path, generation: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{generation}"));
    PathBuf::from(s)
}
