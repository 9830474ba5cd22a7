//! The instance file: which processes a node started, so that an agent restarted after a
//! kill -9 finds the process groups its predecessor left behind and ends them. A pid is
//! matched together with its start time, so a recycled pid is never killed. Each entry also
//! names the instance's service and the node's CPU use when it was written, so the new agent
//! can count what went down with the old one as failures of those services at that load.

use crate::exec::Running;
use qs_wire::{InstanceId, ServiceName};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Serialize, Deserialize)]
struct Entry {
    instance: InstanceId,
    pid: u32,
    start_ticks: u64,
    /// Absent in files written before it was recorded.
    #[serde(default)]
    service: Option<ServiceName>,
    #[serde(default)]
    cpu_util: f64,
}

/// An instance a previous agent ran, found by its successor.
#[derive(Clone, Debug, PartialEq)]
pub struct Orphan {
    pub instance: InstanceId,
    pub service: Option<ServiceName>,
    pub pid: u32,
    /// The node's CPU use when the previous agent last wrote the file.
    pub cpu_util: f64,
    /// Its process group still ran (and was ended); otherwise it had already gone.
    pub was_running: bool,
}

/// See the module docs.
pub struct InstanceFile {
    path: PathBuf,
}

/// The process's start time in clock ticks since boot (field 22 of /proc/PID/stat).
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = stat.rsplit(')').next()?;
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

fn signal_group(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on a process group; no memory effects.
    unsafe {
        libc::kill(-(pid as libc::pid_t), signal);
    }
}

impl InstanceFile {
    pub fn new(path: PathBuf) -> Self {
        InstanceFile { path }
    }

    /// Records what runs now, with each instance's service and the node's CPU use
    /// (written to a temporary file, then renamed into place).
    pub fn save(
        &self,
        running: &BTreeMap<InstanceId, Running>,
        service_of: impl Fn(&InstanceId) -> Option<ServiceName>,
        cpu_util: f64,
    ) {
        let entries: Vec<Entry> = running
            .iter()
            .filter_map(|(instance, r)| {
                Some(Entry {
                    instance: instance.clone(),
                    pid: r.pid,
                    start_ticks: start_ticks(r.pid)?,
                    service: service_of(instance),
                    cpu_util,
                })
            })
            .collect();
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(&entries).expect("instance entries serialize");
        if std::fs::write(&tmp, body).is_ok() {
            let _ = std::fs::rename(&tmp, &self.path);
        }
    }

    /// Ends every process group a previous agent recorded that still runs (SIGTERM, then
    /// SIGKILL after `grace`). Returns every instance the file named, ended or already gone.
    pub fn reap_orphans(&self, grace: Duration) -> Vec<Orphan> {
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return Vec::new();
        };
        let entries: Vec<Entry> = serde_json::from_str(&text).unwrap_or_default();
        let (alive, gone): (Vec<Entry>, Vec<Entry>) = entries
            .into_iter()
            .partition(|e| start_ticks(e.pid) == Some(e.start_ticks));
        for e in &alive {
            signal_group(e.pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && alive.iter().any(|e| start_ticks(e.pid).is_some()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        for e in &alive {
            signal_group(e.pid, libc::SIGKILL);
        }
        let _ = std::fs::remove_file(&self.path);
        let orphan = |e: Entry, was_running| Orphan {
            instance: e.instance,
            service: e.service,
            pid: e.pid,
            cpu_util: e.cpu_util,
            was_running,
        };
        let alive = alive.into_iter().map(|e| orphan(e, true));
        alive
            .chain(gone.into_iter().map(|e| orphan(e, false)))
            .collect()
    }
}
