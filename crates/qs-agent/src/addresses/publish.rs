//! The publishing of a service's serving instances whenever they change (seed 000 §3 step 6):
//! its spec's `publish.file`, rewritten atomically by every agent on its own machine (for a
//! local resolver or balancer), and its `publish.command`, run by the agent of the service's
//! steward only (one update fleet-wide, e.g. a cloud resolver's config).
//!
//! Nothing is published in the first [`SETTLE`] of the agent's life, while its registry fills:
//! an empty list then would be its ignorance, not the fleet's state. A command runs in the
//! sandbox instances run in (the spec's user, a clean environment with `QS_SERVICE`,
//! `QS_ENDPOINTS`, one `host:port` per line, and `QS_PRIMARY`), at most one at a time per
//! service, for at most [`COMMAND_TIMEOUT`]; a change while it runs is run after it, the
//! newest list only.

use super::Snapshot;
use qs_core::addresses::{AddressesConfig, Endpoint};
use qs_wire::{PublishFormat, Role, ServiceName, WorkloadSpec};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a starting agent waits before it publishes.
pub const SETTLE: Duration = Duration::from_secs(2);
/// Longest a publish command may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// What one publication says.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
struct Published {
    service: String,
    endpoints: Vec<PublishedEndpoint>,
    /// The primary's `host:port`, for a stateful-read service that has one serving.
    primary: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
struct PublishedEndpoint {
    node: String,
    instance: String,
    address: String,
    role: Role,
}

impl Published {
    fn of(service: &ServiceName, endpoints: &[Endpoint]) -> Published {
        Published {
            service: service.to_string(),
            endpoints: endpoints
                .iter()
                .map(|e| PublishedEndpoint {
                    node: e.node.to_string(),
                    instance: e.instance.to_string(),
                    address: e.addr.to_string(),
                    role: e.role,
                })
                .collect(),
            primary: endpoints
                .iter()
                .find(|e| e.role == Role::Primary)
                .map(|e| e.addr.to_string()),
        }
    }

    fn lines(&self) -> String {
        self.endpoints
            .iter()
            .map(|e| format!("{}\n", e.address))
            .collect()
    }
}

/// A service's command runner: the newest list waits in the channel.
struct Runner {
    /// What it runs: a spec that changes any of it gets a new runner.
    what: (String, Option<String>, BTreeMap<String, String>),
    latest: watch::Sender<Option<Published>>,
    task: tokio::task::JoinHandle<()>,
}

/// One file to write.
struct FileWrite {
    service: ServiceName,
    path: std::path::PathBuf,
    bytes: Vec<u8>,
    instances: usize,
}

/// Files waiting to be written, one after the other in the order they changed.
const MAX_WRITES_QUEUED: usize = 64;

impl Drop for Runner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// See the module docs.
pub(super) struct Publisher {
    config: AddressesConfig,
    child_users: Vec<String>,
    born: Instant,
    /// The list last written to each service's file.
    written: BTreeMap<ServiceName, Vec<Endpoint>>,
    /// The list last handed to each service's command, while stewarded here.
    commanded: BTreeMap<ServiceName, Vec<Endpoint>>,
    runners: BTreeMap<ServiceName, Runner>,
    writes: tokio::sync::mpsc::Sender<FileWrite>,
    writer: tokio::task::JoinHandle<()>,
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.writer.abort();
    }
}

impl Publisher {
    pub(super) fn new(config: AddressesConfig, child_users: Vec<String>) -> Publisher {
        let (writes, mut queue) = tokio::sync::mpsc::channel::<FileWrite>(MAX_WRITES_QUEUED);
        // One write at a time, in order: an older list never lands after a newer one.
        let writer = tokio::spawn(async move {
            while let Some(w) = queue.recv().await {
                let path = w.path.clone();
                let done = tokio::task::spawn_blocking(move || {
                    qs_store::write_atomic(&path, &w.bytes, Some(0o644))
                })
                .await;
                match done {
                    Ok(Ok(())) => tracing::info!(
                        "service {}: published {} instances to {}",
                        w.service,
                        w.instances,
                        w.path.display()
                    ),
                    Ok(Err(e)) => tracing::warn!("service {}: publishing: {e}", w.service),
                    Err(e) => tracing::warn!("service {}: publishing: {e}", w.service),
                }
            }
        });
        Publisher {
            config,
            child_users,
            born: Instant::now(),
            written: BTreeMap::new(),
            commanded: BTreeMap::new(),
            runners: BTreeMap::new(),
            writes,
            writer,
        }
    }

    /// Publishes every list that changed since it was last published.
    pub(super) fn publish(&mut self, snap: &Snapshot) {
        if self.born.elapsed() < SETTLE {
            return;
        }
        let publishing: BTreeMap<&ServiceName, &WorkloadSpec> = snap
            .specs
            .iter()
            .filter(|s| s.publish.is_some())
            .map(|s| (&s.name, s))
            .collect();
        self.written.retain(|s, _| publishing.contains_key(s));
        self.commanded
            .retain(|s, _| snap.stewarded_here.contains(s) && publishing.contains_key(s));
        self.runners.retain(|s, _| publishing.contains_key(s));
        for (name, spec) in publishing {
            let Some(p) = &spec.publish else { continue };
            let now: &[Endpoint] = snap.table.get(name).map_or(&[], Vec::as_slice);
            if let Some(file) = &p.file
                && self.written.get(name).map(Vec::as_slice) != Some(now)
                && self.write(name, file, p.format, Published::of(name, now))
            {
                self.written.insert(name.clone(), now.to_vec());
            }
            if let Some(command) = &p.command
                && snap.stewarded_here.contains(name)
                && self.commanded.get(name).map(Vec::as_slice) != Some(now)
            {
                self.commanded.insert(name.clone(), now.to_vec());
                let what = (command.clone(), spec.user.clone(), spec.env.clone());
                if self.runners.get(name).is_none_or(|r| r.what != what) {
                    let r = runner(spec, command, &self.child_users);
                    self.runners.insert(name.clone(), r);
                }
                if let Some(r) = self.runners.get(name) {
                    r.latest.send_replace(Some(Published::of(name, now)));
                }
            }
        }
    }

    /// Queues `list` for `file`; whether it was taken (a file outside `publish_dirs` is
    /// taken and never written; a full queue takes nothing, so the next refresh tries again).
    fn write(
        &self,
        service: &ServiceName,
        file: &str,
        format: PublishFormat,
        list: Published,
    ) -> bool {
        if !self.config.may_publish_at(file) {
            tracing::warn!(
                "service {service}: publish.file {file} is outside [addresses] publish_dirs {:?}; not written",
                self.config.publish_dirs
            );
            return true;
        }
        let bytes = match format {
            PublishFormat::Json => {
                let mut b = serde_json::to_vec_pretty(&list).unwrap_or_default();
                b.push(b'\n');
                b
            }
            PublishFormat::Lines => list.lines().into_bytes(),
        };
        let w = FileWrite {
            service: service.clone(),
            path: std::path::PathBuf::from(file),
            bytes,
            instances: list.endpoints.len(),
        };
        self.writes.try_send(w).is_ok()
    }
}

/// The task that runs `command` with each newest list.
fn runner(spec: &WorkloadSpec, command: &str, child_users: &[String]) -> Runner {
    let (latest, mut rx) = watch::channel::<Option<Published>>(None);
    let run_as = crate::run_as::for_spec(spec.user.as_deref(), child_users);
    let (command, env, service) = (command.to_owned(), spec.env.clone(), spec.name.clone());
    let what = (command.to_owned(), spec.user.clone(), spec.env.clone());
    let task = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let Some(list) = rx.borrow_and_update().clone() else {
                continue;
            };
            let result = match &run_as {
                Ok(who) => run(&command, &env, who.as_ref(), &list).await,
                Err(e) => Err(e.clone()),
            };
            match result {
                Ok(()) => tracing::info!(
                    "service {service}: publish command ran with {} instances",
                    list.endpoints.len()
                ),
                Err(e) => tracing::warn!("service {service}: publish command: {e}"),
            }
        }
    });
    Runner { what, latest, task }
}

async fn run(
    command: &str,
    spec_env: &BTreeMap<String, String>,
    who: Option<&crate::run_as::RunAs>,
    list: &Published,
) -> Result<(), String> {
    let env = crate::sandbox::environment(
        std::env::vars(),
        spec_env,
        &[
            ("QS_SERVICE", list.service.clone()),
            ("QS_ENDPOINTS", list.lines()),
            ("QS_PRIMARY", list.primary.clone().unwrap_or_default()),
        ],
    );
    // One that overruns its time takes what it started with it.
    tokio::time::timeout(COMMAND_TIMEOUT, crate::sandbox::run_sh(command, &env, who))
        .await
        .map_err(|_| format!("`{command}` ran past {COMMAND_TIMEOUT:?}"))?
}
