//! Starting and stopping a model runtime's process: the exclusivity check before a start,
//! the command with its port and GPU, the warm check that tells the scheduler it loaded (or
//! that the load outlasted its bound), and the file that lets a restart after a kill -9 end
//! the runtimes its predecessor left.

use super::{Host, Process, Warmed};
use crate::clock::now;
use crate::exec::{ExecError, Executor, Launch, Running};
use crate::models::http::{Target, get_status};
use crate::models::systemctl::{Systemctl, UnitPlan};
use crate::models::systemd::{Runtime, agent_unit_name, agent_unit_patterns, conflicts_of};
use crate::orphans::InstanceFile;
use qs_core::gpu::GpuInput;
use qs_fabric::Fabric;
use qs_wire::{InstanceId, ModelSpec, ModelStep, ServiceName};
use std::collections::BTreeMap;
use std::time::Duration;

/// How often a starting runtime's health and warm checks are tried.
const WARM_POLL: Duration = Duration::from_millis(100);
/// How long the warm check of a scheduled runtime polls at most: the core fails its load
/// far sooner; this only bounds the task.
const WARM_CHECK_LIMIT: Duration = Duration::from_secs(3600);

/// Who carries out a runtime's start and stop: the agent's own process executor, or
/// systemd (`[models] executor`). Exits come back the same way from either.
pub(super) enum Runner {
    Process(Executor),
    Systemd(Systemctl),
}

impl Runner {
    /// systemd's (`systemd_user`: `Some(user)`) where the config asks for it and the
    /// fleet checked its unit directory; otherwise the agent's own executor.
    pub(super) fn new(
        systemd_user: Option<bool>,
        log_dir: std::path::PathBuf,
        stop_grace: Duration,
        exits: tokio::sync::mpsc::Sender<crate::exec::Exit>,
    ) -> Runner {
        let systemd = systemd_user.and_then(|user| {
            Systemctl::new(user, exits.clone())
                .map_err(|e| tracing::error!("the systemd executor: {e}; forking runtimes"))
                .ok()
        });
        match systemd {
            Some(s) => Runner::Systemd(s),
            None => Runner::Process(Executor::new(log_dir, stop_grace, exits)),
        }
    }

    fn start(&self, launch: Launch, plan: impl FnOnce() -> UnitPlan) -> Result<Running, ExecError> {
        match self {
            Runner::Process(e) => e.start(launch),
            Runner::Systemd(s) => s.start(launch, &plan()),
        }
    }

    pub(super) fn stop(&self, instance: &InstanceId, reason: &str) -> bool {
        match self {
            Runner::Process(e) => e.stop(instance, reason),
            Runner::Systemd(s) => s.stop(instance, reason),
        }
    }

    pub(super) fn kill(&self, instance: &InstanceId) -> bool {
        match self {
            Runner::Process(e) => e.kill(instance),
            Runner::Systemd(s) => s.kill(instance),
        }
    }

    pub(super) fn pid_of(&self, instance: &InstanceId) -> Option<u32> {
        match self {
            Runner::Process(e) => e.pid_of(instance),
            Runner::Systemd(s) => s.pid_of(instance),
        }
    }

    fn running(&self) -> BTreeMap<InstanceId, Running> {
        match self {
            Runner::Process(e) => e.running(),
            Runner::Systemd(s) => s.running(),
        }
    }

    pub(super) async fn shutdown(&self, reason: &str) {
        match self {
            Runner::Process(e) => e.shutdown(reason).await,
            Runner::Systemd(s) => s.shutdown(reason).await,
        }
    }
}

impl<F: Fabric> Host<F> {
    /// Ends the runtimes a killed agent left running (they hold VRAM a new start needs): the
    /// process groups it recorded, and under systemd the units of this node still loaded.
    pub(super) async fn reap_orphans(&mut self) {
        if let Runner::Systemd(s) = &self.exec {
            let patterns = agent_unit_patterns(self.node.as_str());
            if let Err(e) = s.stop_leftovers(&patterns).await {
                tracing::warn!(node = %self.node, "stopping leftover runtime units: {e}");
            }
        }
        let file = InstanceFile::model_runtimes(self.state.clone(), self.node.clone());
        let (state, node, grace) = (self.state.clone(), self.node.clone(), self.stop_grace);
        let reaped = tokio::task::spawn_blocking(move || {
            state.prepare(qs_store::StateFile::ModelRuntimes(&node))?;
            file.reap_orphans(grace)
        })
        .await;
        match reaped {
            Ok(Ok(orphans)) => {
                for o in orphans.iter().filter(|o| o.was_running) {
                    tracing::warn!(
                        node = %self.node,
                        "ended model runtime {} (pid {}): it outlived its killed agent",
                        o.instance,
                        o.pid
                    );
                }
            }
            Ok(Err(e)) => tracing::error!(node = %self.node, "model runtimes not reaped: {e}"),
            Err(e) => tracing::error!(node = %self.node, "model runtimes not reaped: {e}"),
        }
    }

    /// Records the runtimes running now (after each start and exit).
    pub(super) fn save_runtimes(&self) {
        let saved = self.runtime_file.save(
            &self.exec.running(),
            |i| self.processes.get(i).map(|p| p.model.clone()),
            0.0,
        );
        if let Err(e) = saved {
            tracing::error!(node = %self.node, "saving the model runtime file: {e}");
        }
    }

    /// Starts `model`'s runtime at the scheduler's `tier` (counted from the tier the model
    /// was placed at), after checking again that no other exclusive runtime holds the GPU
    /// beyond what the scheduler allows.
    pub(super) fn start(&mut self, gpu: usize, model: &ServiceName, tier: usize) {
        let Some(a) = self.models.get(model) else {
            // Withdrawn since: the scheduler hears of a failed start.
            return self.start_failed(gpu, model, None);
        };
        let Some((tier_index, spec_tier)) = a.spec_tier(tier) else {
            let why = format!("no tier {tier} below the placed one");
            return self.start_failed(gpu, model, Some(why));
        };
        let need = spec_tier.vram_bytes;
        // What the other scheduled runtimes hold (a resident one's is the margin's).
        let held: u64 = self
            .processes
            .values()
            .filter(|p| p.gpu == gpu && &p.model != model && !p.resident)
            .map(|p| p.vram_bytes)
            .sum();
        // A resident runtime of the same name on its way out (the model turned scheduled)
        // is not a second copy: it holds only the margin.
        let twice = self
            .processes
            .values()
            .any(|p| &p.model == model && !(p.resident && p.stopping));
        let blocked = twice || held + need > self.gpus[gpu].scheduler.budget_bytes();
        // What blocks it is on its way out (killed, its exit not yet seen: an executor
        // may learn of an exit after the GPU shows its memory free): the start waits for
        // that exit rather than count as failed.
        let leaving = self
            .processes
            .values()
            .any(|p| p.gpu == gpu && !p.resident && (p.stopping || p.failed));
        if blocked && leaving {
            self.deferred.insert(model.clone(), (gpu, tier));
            return;
        }
        if blocked {
            let why = if twice {
                "exclusivity: a runtime of it still runs".to_owned()
            } else {
                format!(
                    "exclusivity: {held} bytes still held by runtimes on the GPU; {need} wanted"
                )
            };
            return self.start_failed(gpu, model, Some(why));
        }
        let spec = a.spec.clone();
        if let Err(why) = self.spawn(gpu, &spec, tier_index, false) {
            self.start_failed(gpu, model, Some(why));
        }
    }

    /// A start the scheduler asked for did not happen: it hears of a failed start, `why`
    /// the reason its event gives.
    fn start_failed(&mut self, gpu: usize, model: &ServiceName, why: Option<String>) {
        if let Some(why) = why {
            self.failures.insert(model.clone(), why);
        }
        self.gpus[gpu].scheduler.handle(
            GpuInput::LoadFailed {
                model: model.clone(),
            },
            now(),
        );
    }

    /// Starts again what waited for a runtime of GPU `gpu` to exit.
    pub(super) fn start_deferred(&mut self, gpu: usize) {
        let due: Vec<(ServiceName, usize)> = self
            .deferred
            .iter()
            .filter(|(_, (g, _))| *g == gpu)
            .map(|(m, (_, tier))| (m.clone(), *tier))
            .collect();
        for (model, tier) in due {
            self.deferred.remove(&model);
            self.start(gpu, &model, tier);
        }
    }

    /// Starts a runtime of `spec` at `tier` on GPU `gpu`: its command with `{port}` and
    /// `{gpu}`, the GPU in its environment, and a warm check bounded by its load time. A
    /// `resident` one is kept loaded in the margin, outside the scheduler.
    pub(super) fn spawn(
        &mut self,
        gpu: usize,
        spec: &ModelSpec,
        tier: usize,
        resident: bool,
    ) -> Result<InstanceId, String> {
        let model = &spec.name;
        let tier_index = tier;
        let tier = &spec.tiers[tier];
        let (tier_name, vram_bytes) = (tier.name.clone(), tier.vram_bytes);
        let g = &self.gpus[gpu];
        let n = self.next_start;
        self.next_start += 1;
        let instance = instance_id(model, n);
        let command = tier
            .command
            .clone()
            .unwrap_or_default()
            .replace("{gpu}", &g.index.to_string());
        let mut env = BTreeMap::new();
        env.insert("CUDA_VISIBLE_DEVICES".to_owned(), g.index.to_string());
        if let Some((k, v)) = g.reader.env() {
            env.insert(k, v);
        }
        let launch = Launch {
            instance: instance.clone(),
            command,
            is_job: false,
            env,
            run_as: None,
        };
        let plan = || self.unit_plan(gpu, spec, tier_index, resident);
        let running = self.exec.start(launch, plan).map_err(|e| e.to_string())?;
        let health = match spec.health.as_ref().map(|h| &h.probe) {
            Some(qs_wire::Probe::Http { path }) => path.clone(),
            _ => "/health".to_owned(),
        };
        let warm_path = spec.warm_path.clone();
        let bound = if resident {
            // Outside the scheduler, held to the same rule as the scheduled runtimes.
            Duration::from_millis(self.gpus[gpu].scheduler.load_bound_ms(spec.load_ms))
        } else {
            WARM_CHECK_LIMIT
        };
        let detail = format!(
            "tier {} (pid {}, port {}){}",
            tier.name,
            running.pid,
            running.port,
            if resident { ", resident" } else { "" }
        );
        let index = g.index;
        self.record(index, model, ModelStep::Started, detail);
        self.processes.insert(
            instance.clone(),
            Process {
                model: model.clone(),
                gpu,
                tier_name,
                vram_bytes,
                port: running.port,
                warm: false,
                stopping: false,
                resident,
                failed: false,
            },
        );
        self.save_runtimes();
        let tx = self.warm_tx.clone();
        let target = Target::loopback(running.port);
        let id = instance.clone();
        tokio::spawn(async move {
            let result = warm_check(&target, &health, warm_path.as_deref(), bound).await;
            let _ = tx
                .send(Warmed {
                    instance: id,
                    result,
                })
                .await;
        });
        Ok(instance)
    }

    /// The systemd unit of `spec` at `tier` on GPU `gpu`: `Conflicts=` with every other
    /// tier of it and every runtime of another model there that does not fit beside it (the
    /// tiers each scheduled model may run, and the resident models, which conflict with none).
    fn unit_plan(&self, gpu: usize, spec: &ModelSpec, tier: usize, resident: bool) -> UnitPlan {
        let node = self.node.as_str();
        let mut runtimes: Vec<Runtime> = Vec::new();
        for (name, a) in self.models.iter().filter(|(_, a)| a.gpu == gpu) {
            for t in &a.spec.tiers[a.tier..] {
                runtimes.push(Runtime {
                    unit: agent_unit_name(node, name.as_str(), &t.name, false),
                    model: name.to_string(),
                    gpu,
                    vram_bytes: t.vram_bytes,
                    resident: false,
                });
            }
        }
        let t = &spec.tiers[tier];
        let me = Runtime {
            unit: agent_unit_name(node, spec.name.as_str(), &t.name, resident),
            model: spec.name.to_string(),
            gpu,
            vram_bytes: t.vram_bytes,
            resident,
        };
        let i = match runtimes.iter().position(|r| r.unit == me.unit) {
            Some(i) => i,
            None => {
                runtimes.push(me.clone());
                runtimes.len() - 1
            }
        };
        let budget = self.gpus[gpu].scheduler.budget_bytes();
        UnitPlan {
            name: me.unit,
            model: me.model,
            tier: t.name.clone(),
            gpu: self.gpus[gpu].index,
            conflicts: conflicts_of(&runtimes, i, budget),
            load_ms: spec.load_ms,
            resident,
        }
    }

    /// Stops `model`'s runtime: SIGTERM (in-flight work was drained first), or SIGKILL when
    /// the scheduler says `kill` (its drain bound cut work still on it, or it outlived its
    /// stop).
    pub(super) fn stop(&mut self, model: &ServiceName, kill: bool) {
        let Some((instance, p)) = self
            .processes
            .iter_mut()
            .find(|(_, p)| &p.model == model && !p.resident)
        else {
            // A start still waiting for another runtime's exit never ran: it is stopped.
            if let Some((gpu, _)) = self.deferred.remove(model) {
                self.gpus[gpu].scheduler.handle(
                    GpuInput::Stopped {
                        model: model.clone(),
                    },
                    now(),
                );
            }
            return;
        };
        p.stopping = true;
        if kill {
            self.exec.kill(instance);
        } else {
            self.exec.stop(instance, "swapped out");
        }
    }
}

/// A runtime start's instance name: `m<n>-<model>`, cut to a name's length.
fn instance_id(model: &ServiceName, n: u64) -> InstanceId {
    let mut s = format!("m{n}-{model}");
    s.truncate(63);
    let s = s.trim_end_matches('-');
    InstanceId::new(s).unwrap_or_else(|_| InstanceId::new(&format!("m{n}")).expect("valid"))
}

/// Polls until the runtime answers 200 on its health path and then its warm path, within
/// `bound`.
async fn warm_check(
    target: &Target,
    health: &str,
    warm_path: Option<&str>,
    bound: Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + bound;
    let mut last;
    for path in std::iter::once(health).chain(warm_path) {
        loop {
            match get_status(target, path).await {
                Ok(200) => break,
                Ok(s) => last = format!("{path} answered {s}"),
                Err(e) => last = e,
            }
            if tokio::time::Instant::now() + WARM_POLL > deadline {
                return Err(format!(
                    "the load outlasted its bound of {} ms ({last})",
                    bound.as_millis()
                ));
            }
            tokio::time::sleep(WARM_POLL).await;
        }
    }
    Ok(())
}
