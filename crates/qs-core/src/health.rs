//! The health verdict: what a run of probe results means for one instance (serving, not
//! serving, failed), under the spec's check (consecutive failures, start period). The shell
//! only probes and reports each result; the host ([`crate::node`]) keeps a [`Probed`] per
//! instance, asks [`judge`], and decides the stop that a failure calls for.

use crate::time::{Time, ms};
use qs_wire::HealthCheck;

/// Fastest and slowest pause between probes while an instance has not served yet.
const FIRST_PROBE_MIN_MS: u64 = 50;
const FIRST_PROBE_MAX_MS: u64 = 250;
/// An instance without a check counts as serving once its process has stayed up this long.
pub const UP_WITHOUT_CHECK_MS: u64 = 200;

/// What the probes of one process of an instance have shown so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probed {
    /// When the process started (the start period runs from here).
    pub started_at: Time,
    /// The last verdict was serving.
    pub serving: bool,
    /// Consecutive failed probes.
    pub failures: u32,
}

impl Probed {
    /// A process started at `now`: not serving yet, no failures.
    pub fn started(now: Time) -> Probed {
        Probed {
            started_at: now,
            serving: false,
            failures: 0,
        }
    }
}

/// What one probe result changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing: still serving, still starting, or a failure below the threshold while not
    /// serving.
    Unchanged,
    /// It serves now: it may receive traffic.
    Serving,
    /// It stopped serving, not (yet) failed.
    NotServing,
    /// It failed its check `failures` times in a row: stop it; its exit counts as a health
    /// failure.
    Failed { reason: String },
}

/// Judges one probe result (`Err` carries why the probe failed). Without a check the shell
/// reports `Ok` once the process stayed up [`UP_WITHOUT_CHECK_MS`]; an error then only
/// takes the instance out of service.
pub fn judge(
    check: Option<&HealthCheck>,
    state: &mut Probed,
    result: Result<(), String>,
    now: Time,
) -> Verdict {
    match result {
        Ok(()) => {
            state.failures = 0;
            if state.serving {
                Verdict::Unchanged
            } else {
                state.serving = true;
                Verdict::Serving
            }
        }
        Err(why) => {
            let Some(check) = check else {
                let was = std::mem::replace(&mut state.serving, false);
                return if was {
                    Verdict::NotServing
                } else {
                    Verdict::Unchanged
                };
            };
            if !state.serving && now.since(state.started_at) < ms(check.start_period_ms) {
                return Verdict::Unchanged;
            }
            state.failures = state.failures.saturating_add(1);
            if state.failures >= check.failures.max(1) {
                state.serving = false;
                return Verdict::Failed { reason: why };
            }
            if std::mem::replace(&mut state.serving, false) {
                Verdict::NotServing
            } else {
                Verdict::Unchanged
            }
        }
    }
}

/// How long the shell waits before the next probe: quickly until the instance first serves,
/// then at the check's interval.
pub fn probe_pause_ms(check: &HealthCheck, serving: bool) -> u64 {
    if serving {
        check.interval_ms
    } else {
        check
            .interval_ms
            .clamp(FIRST_PROBE_MIN_MS, FIRST_PROBE_MAX_MS)
    }
}
