//! The instance file: which processes a node started, so that an agent restarted after a
//! kill -9 finds the process groups its predecessor left behind and ends them. A pid is
//! matched together with its start time, so a recycled pid is never killed. Each entry also
//! names the instance's service and the node's CPU use when it was written, so the new agent
//! can count what went down with the old one as failures of those services at that load.
//!
//! The file is written through the [`StateDir`]. A file that cannot be read is not taken for
//! an empty one: [`InstanceFile::reap_orphans`] moves it aside (`instances.json.corrupt`,
//! kept for the operator) and returns the error naming it, which the agent logs; the
//! processes it named cannot be reaped.

use crate::exec::Running;
use qs_store::{StateDir, StateFile, StoreError};
use qs_wire::NodeId;
use qs_wire::{InstanceId, ServiceName};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
    state: StateDir,
    node: NodeId,
    /// The model host's file rather than the node's instances'.
    models: bool,
}

/// The process's start time in clock ticks since boot (field 22 of /proc/PID/stat).
fn start_ticks(pid: u32) -> Option<u64> {
    stat_fields(pid, [19]).map(|[t]| t)
}

/// Fields of /proc/PID/stat, counted from the one after the command name (0: state), read
/// in one go.
fn stat_fields<const N: usize>(pid: u32, indexes: [usize; N]) -> Option<[u64; N]> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let mut out = [0; N];
    for (o, i) in out.iter_mut().zip(indexes) {
        *o = fields.get(i)?.parse().ok()?;
    }
    Some(out)
}

/// Whether an entry names a process group this node started and that still runs: not pid 0
/// or 1 (whose "group" would be ours, or every process), not this agent, a group leader (each
/// instance leads its own), started when the entry says. Anything else in the file (edited,
/// or a pid recycled since) is left alone.
fn still_ours(e: &Entry) -> bool {
    // Field 2 is the process group, 19 the start time.
    e.pid > 1
        && e.pid != std::process::id()
        && stat_fields(e.pid, [2, 19]) == Some([u64::from(e.pid), e.start_ticks])
}

fn signal_group(pid: u32, signal: libc::c_int) {
    if pid <= 1 {
        return;
    }
    // SAFETY: kill(2) on a process group; no memory effects.
    unsafe {
        libc::kill(-(pid as libc::pid_t), signal);
    }
}

impl InstanceFile {
    pub fn new(state: StateDir, node: NodeId) -> Self {
        InstanceFile {
            state,
            node,
            models: false,
        }
    }

    /// The file of the model runtimes `node`'s model host starts: the same rules, its own
    /// file.
    pub fn model_runtimes(state: StateDir, node: NodeId) -> Self {
        InstanceFile {
            state,
            node,
            models: true,
        }
    }

    fn file(&self) -> StateFile<'_> {
        if self.models {
            StateFile::ModelRuntimes(&self.node)
        } else {
            StateFile::Instances(&self.node)
        }
    }

    /// Records what runs now, with each instance's service and the node's CPU use.
    pub fn save(
        &self,
        running: &BTreeMap<InstanceId, Running>,
        service_of: impl Fn(&InstanceId) -> Option<ServiceName>,
        cpu_util: f64,
    ) -> Result<(), StoreError> {
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
        self.state.write_json(self.file(), &entries)
    }

    /// Ends every process group a previous agent recorded that still runs (SIGTERM, then
    /// SIGKILL after `grace`). Returns every instance the file named, ended or already gone;
    /// an unreadable file is moved aside and named in the error (see the module docs).
    pub fn reap_orphans(&self, grace: Duration) -> Result<Vec<Orphan>, StoreError> {
        let entries: Vec<Entry> = match self.state.read_json(self.file()) {
            Ok(entries) => entries.unwrap_or_default(),
            Err(e) => {
                if let Err(aside) = self.state.set_aside(self.file()) {
                    tracing::error!("{aside}");
                }
                return Err(e);
            }
        };
        let (alive, gone): (Vec<Entry>, Vec<Entry>) = entries
            .into_iter()
            .take(qs_wire::bounds::MAX_INSTANCES_PER_NODE)
            .partition(still_ours);
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
        if let Err(e) = self.state.remove(self.file()) {
            tracing::error!("{e}");
        }
        let orphan = |e: Entry, was_running| Orphan {
            instance: e.instance,
            service: e.service,
            pid: e.pid,
            cpu_util: e.cpu_util,
            was_running,
        };
        let alive = alive.into_iter().map(|e| orphan(e, true));
        Ok(alive
            .chain(gone.into_iter().map(|e| orphan(e, false)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_instance_file_is_an_error_naming_it_and_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let node = NodeId::new("forge").unwrap();
        let path = state.prepare(StateFile::Instances(&node)).unwrap();
        std::fs::write(&path, "[{\"instance\": ").unwrap();
        let file = InstanceFile::new(state, node);
        let err = file.reap_orphans(Duration::ZERO).unwrap_err().to_string();
        assert!(err.contains("instances.json"), "{err}");
        assert!(!path.exists());
        assert!(path.with_extension("json.corrupt").exists());
    }

    /// Only a group leader started when the file says is signalled: pid 1, this agent and a
    /// process in someone else's group are left alone, whatever the file claims.
    #[test]
    fn only_process_groups_this_node_started_are_reaped() {
        use std::os::unix::process::{CommandExt, ExitStatusExt};
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let node = NodeId::new("forge").unwrap();
        let spawn = |leader: bool| {
            let mut c = std::process::Command::new("sleep");
            c.arg("30");
            if leader {
                c.process_group(0);
            }
            c.spawn().unwrap()
        };
        let (mut ours, mut other) = (spawn(true), spawn(false));
        let entry = |name: &str, pid: u32| Entry {
            instance: InstanceId::new(name).unwrap(),
            pid,
            start_ticks: start_ticks(pid).unwrap(),
            service: None,
            cpu_util: 0.0,
        };
        let entries = vec![
            entry("init-1", 1),
            entry("agent-1", std::process::id()),
            entry("other-1", other.id()),
            entry("ours-1", ours.id()),
        ];
        state
            .write_json(StateFile::Instances(&node), &entries)
            .unwrap();
        let reaped = InstanceFile::new(state, node)
            .reap_orphans(Duration::from_secs(5))
            .unwrap();
        let running: Vec<&str> = reaped
            .iter()
            .filter(|o| o.was_running)
            .map(|o| o.instance.as_str())
            .collect();
        assert_eq!(running, ["ours-1"]);
        assert!(ours.wait().unwrap().signal().is_some());
        assert!(other.try_wait().unwrap().is_none(), "not ours: still runs");
        other.kill().unwrap();
        other.wait().unwrap();
    }
}
