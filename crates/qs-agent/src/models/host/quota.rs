//! The watchdog's VRAM quota: every runtime's memory on its GPU (its claim on the simulated
//! GPU, or its process group's on NVML) read once a second; one over its tier's VRAM, as
//! the core's `over_quota` judges, is reset hard (SIGKILL) with an alert, before it starves
//! the runtimes beside it. Its exit then takes the usual way (a failed start or a stop).

use super::{Host, VramReader};
use qs_core::gpu::over_quota;
use qs_fabric::Fabric;
use qs_wire::{InstanceId, ModelStep};
use std::time::Duration;

/// How often the quotas are read.
pub(super) const QUOTA_EVERY: Duration = Duration::from_secs(1);

impl VramReader {
    /// What the runtime of process group `pid` holds on this GPU, if known.
    fn process_bytes(&self, pid: u32) -> Option<u64> {
        match self {
            VramReader::Simulated(g) => g.claim_of(pid),
            VramReader::Nvml(n, i) => n.group_vram_bytes(*i, pid),
        }
    }
}

impl<F: Fabric> Host<F> {
    pub(super) fn check_quotas(&mut self) {
        let mut over: Vec<(InstanceId, String, u32, qs_wire::ServiceName)> = Vec::new();
        for (instance, p) in &self.processes {
            if p.stopping {
                continue;
            }
            let quota = p.vram_bytes;
            let Some(pid) = self.exec.pid_of(instance) else {
                continue;
            };
            let g = &self.gpus[p.gpu];
            if let Some(used) = g.reader.process_bytes(pid)
                && over_quota(used, quota)
            {
                let why = format!("over its VRAM quota: {used} bytes held, {quota} declared");
                over.push((instance.clone(), why, g.index, p.model.clone()));
            }
        }
        for (instance, why, gpu, model) in over {
            self.counters.model_watchdog_resets.inc();
            tracing::error!("ALERT: GPU {gpu}: {model} {why}; reset");
            self.record(
                gpu,
                &model,
                ModelStep::WatchdogReset,
                format!("alert: {why}; killed"),
            );
            self.failures.insert(model, why);
            self.exec.kill(&instance);
        }
    }
}
