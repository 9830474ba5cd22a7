//! What the host does when an instance ends: its failure memory (pressure raised, kept
//! across restarts), the in-place restart with backoff or giving up, and the release of what
//! the instance held.

use super::*;

impl Host {
    /// Raises this node's pressure for `service` at the load bucket of `cpu_util`, and asks
    /// the shell to keep the failure memory across restarts.
    pub(super) fn remember_failure(
        &mut self,
        service: &ServiceName,
        cpu_util: f64,
        now: Time,
        out: &mut Outbox,
    ) {
        let bucket = load_bucket(cpu_util);
        let pressure = self.failures.record(service, bucket, now);
        out.record(Event::PressureRaised {
            service: service.clone(),
            load_bucket: bucket,
            pressure_permille: (pressure * 1000.0).round() as u32,
        });
        out.emit(Output::SaveFailures(self.failures.snapshot(now)));
    }

    /// Restores failure memory saved before a restart.
    pub(crate) fn restore_failures(&mut self, entries: Vec<FailureEntry>, now: Time) {
        for e in entries {
            self.failures
                .restore(e.service, e.load_bucket, e.count, now);
        }
    }

    /// An instance that went down with this node's previous agent: a crash of its service
    /// here (its steward has placed it again, or will).
    pub(crate) fn on_lost(
        &mut self,
        instance: InstanceId,
        service: ServiceName,
        cpu_util: f64,
        reason: String,
        now: Time,
        out: &mut Outbox,
    ) {
        out.record(Event::InstanceExited {
            instance,
            service: service.clone(),
            outcome: ExitOutcome::Crashed { reason },
        });
        self.remember_failure(&service, cpu_util, now, out);
    }

    /// An instance ended. A failure raises this node's pressure for its service; a failed
    /// instance is restarted in place with backoff up to `max_restarts` times, after which the
    /// node gives it up and its steward places it again (elsewhere, if pressure says so). An
    /// instance whose health check failed exits as a health failure, whatever the process
    /// said.
    pub(crate) fn on_exit(
        &mut self,
        instance: &InstanceId,
        outcome: ExitOutcome,
        now: Time,
        out: &mut Outbox,
    ) {
        let Some(h) = self.hosted.get_mut(instance) else {
            return;
        };
        let outcome = match h.health_failed.take() {
            Some(reason) => ExitOutcome::HealthFailed { reason },
            None => outcome,
        };
        let service = h.service.clone();
        let failed = outcome.is_failure();
        let completed = outcome == ExitOutcome::Completed;
        let restart = failed && !h.stopping && h.restarts < self.config.max_restarts;
        out.record(Event::InstanceExited {
            instance: instance.clone(),
            service: service.clone(),
            outcome,
        });
        if failed {
            self.remember_failure(&service, self.load.cpu_util, now, out);
        }
        if restart {
            let c = &self.config;
            let Some(h) = self.hosted.get_mut(instance) else {
                return;
            };
            h.restarts += 1;
            let delay_ms = c
                .restart_backoff_ms
                .saturating_mul(1 << (h.restarts - 1).min(16))
                .min(c.restart_backoff_max_ms);
            h.restart_at = Some(now + ms(delay_ms));
            h.serving = false;
            h.hot = false;
            let attempt = h.restarts;
            out.record(Event::InstanceRestarting {
                instance: instance.clone(),
                service,
                attempt,
                delay_ms,
            });
            return;
        }
        self.release(instance);
        if completed {
            self.completed.push_back(Completed {
                at: now,
                instance: instance.clone(),
                service,
            });
        }
    }

    /// Forgets an instance and gives back what it held.
    pub(super) fn release(&mut self, instance: &InstanceId) {
        let Some(h) = self.hosted.remove(instance) else {
            return;
        };
        let need = h.demand.need;
        self.committed.cpu_millicores -= need.cpu_millicores;
        self.committed.memory_bytes -= need.memory_bytes;
        if let Some(i) = h.gpu {
            self.committed.gpu_vram_bytes[i as usize] -= need.vram_bytes;
        }
    }

    /// Starts again every failed instance whose backoff has passed.
    pub(crate) fn restart_due(&mut self, now: Time, out: &mut Outbox) {
        let due: Vec<InstanceId> = self
            .hosted
            .iter()
            .filter(|(_, h)| h.restart_at.is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let Some(h) = self.hosted.get_mut(&id) else {
                continue;
            };
            h.restart_at = None;
            h.probed = Probed::started(now);
            let order = StartOrder {
                instance: id,
                service: h.service.clone(),
                role: h.role,
                fencing: h.fencing,
                gpu: h.gpu,
                need: h.demand.need,
            };
            start(order, out);
        }
    }
}
