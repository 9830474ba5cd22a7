//! The one check of a [`WorkloadSpec`] (and the decoding of a [`ModelSpec`], whose check is
//! its own module's), whatever way it came in: parsed from a spec file or
//! the API (after [`parse_spec`](super::parse_spec) has located its TOML), or read from the
//! fleet's `specs` KV bucket, where any node with write access (or a bug) may have put it.
//! Every count, size and duration is bounded, so no steward allocates, spins or underflows
//! on what another wrote.

use super::{
    HaPattern, HealthCheck, MAX_CPU_CORES, MAX_MEMORY_MIB, MAX_REPLICAS, MIB, ModelSpec, Probe,
    SpecError, WorkloadKind, WorkloadSpec, line_column,
};

/// Largest command line (a workload's, or an exec probe's).
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Most labels a workload may require.
pub const MAX_LABELS: usize = 64;
/// Longest label key or value.
pub const MAX_LABEL_BYTES: usize = 253;
/// Longest HTTP probe path.
pub const MAX_PROBE_PATH_BYTES: usize = 2048;
/// Longest health-check period, timeout or grace (1 h).
pub const MAX_PROBE_MS: u64 = 3_600_000;
/// Most environment variables a workload may set, and the longest value.
pub const MAX_ENV_VARS: usize = 64;
pub const MAX_ENV_VALUE_BYTES: usize = 4096;
/// Largest spec value read from the KV.
pub const MAX_SPEC_BYTES: usize = 1024 * 1024;

/// A field of a spec that breaks a rule: its path below the workload, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidField {
    /// E.g. `max_replicas`, `health.interval_ms`.
    pub field: String,
    pub reason: String,
}

pub(super) fn bad(field: &str, reason: impl Into<String>) -> Result<(), InvalidField> {
    Err(InvalidField {
        field: field.to_owned(),
        reason: reason.into(),
    })
}

pub(super) fn within(field: &str, v: u64, min: u64, max: u64) -> Result<(), InvalidField> {
    if (min..=max).contains(&v) {
        Ok(())
    } else {
        bad(field, format!("must be in {min}..={max}, got {v}"))
    }
}

/// The rule for labels wherever they appear (a workload's, a node's, a heartbeat's, a
/// demand's): at most [`MAX_LABELS`], each key 1..=[`MAX_LABEL_BYTES`] bytes, each value at
/// most that.
pub fn check_labels(
    field: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<(), InvalidField> {
    if labels.len() > MAX_LABELS {
        return bad(
            field,
            format!("{} labels; at most {MAX_LABELS}", labels.len()),
        );
    }
    for (k, v) in labels {
        if k.is_empty() || k.len() > MAX_LABEL_BYTES || v.len() > MAX_LABEL_BYTES {
            return bad(
                field,
                format!(
                    "a label key of 1..={MAX_LABEL_BYTES} bytes and a value of at most {MAX_LABEL_BYTES}"
                ),
            );
        }
    }
    Ok(())
}

pub(crate) fn command(field: &str, c: &str) -> Result<(), InvalidField> {
    if c.trim().is_empty() {
        return bad(field, "must not be empty");
    }
    if c.len() > MAX_COMMAND_BYTES {
        return bad(
            field,
            format!("{} bytes; at most {MAX_COMMAND_BYTES}", c.len()),
        );
    }
    if c.contains('\0') {
        return bad(field, "must not contain a NUL byte");
    }
    Ok(())
}

pub(super) fn health(h: &HealthCheck) -> Result<(), InvalidField> {
    match &h.probe {
        Probe::Tcp => {}
        Probe::Http { path } => {
            if !path.starts_with('/') || path.len() > MAX_PROBE_PATH_BYTES {
                return bad(
                    "health.path",
                    format!(
                        "an http check needs a path starting with '/' of at most {MAX_PROBE_PATH_BYTES} bytes"
                    ),
                );
            }
            if path.chars().any(|c| c.is_control() || c == ' ') {
                return bad(
                    "health.path",
                    "must not contain spaces or control characters",
                );
            }
        }
        Probe::Exec { command: c } => command("health.command", c)?,
    }
    within("health.interval_ms", h.interval_ms, 1, MAX_PROBE_MS)?;
    within("health.timeout_ms", h.timeout_ms, 1, MAX_PROBE_MS)?;
    within("health.start_period_ms", h.start_period_ms, 1, MAX_PROBE_MS)?;
    within("health.failures", h.failures.into(), 1, MAX_REPLICAS as u64)
}

impl WorkloadSpec {
    /// Every rule a workload must keep (see the module docs).
    pub fn validate(&self) -> Result<(), InvalidField> {
        let max = MAX_REPLICAS as u64;
        let singleton = self.pattern.is_singleton();
        match self.kind {
            WorkloadKind::Service {
                replicas,
                max_replicas,
                auto_promote,
            } => {
                within("replicas", replicas.into(), 0, max)?;
                within("max_replicas", max_replicas.into(), 0, max)?;
                if max_replicas < replicas {
                    return bad(
                        "max_replicas",
                        format!("must be at least replicas ({replicas}), got {max_replicas}"),
                    );
                }
                if singleton && (replicas != 1 || max_replicas != 1) {
                    return bad("replicas", "a gpu-singleton runs exactly one instance");
                }
                if auto_promote && self.pattern != HaPattern::StatefulRead {
                    return bad(
                        "auto_promote",
                        "only stateful-read services have a primary to promote",
                    );
                }
            }
            WorkloadKind::Job { parallelism } => {
                within("parallelism", parallelism.into(), 1, max)?;
                if singleton && parallelism != 1 {
                    return bad("parallelism", "a gpu-singleton runs exactly one instance");
                }
            }
        }
        within("max_per_node", self.max_per_node.into(), 1, max)?;
        if self.max_per_node != 1 && self.pattern != HaPattern::Stateless {
            return bad(
                "max_per_node",
                format!(
                    "only stateless workloads may run more than one instance per node ({} runs one)",
                    self.pattern
                ),
            );
        }
        let r = &self.resources;
        let max_bytes = MAX_MEMORY_MIB as u64 * MIB;
        within(
            "resources.cpu_cores",
            r.cpu_millicores,
            1,
            MAX_CPU_CORES as u64 * 1000,
        )?;
        within("resources.memory_mib", r.memory_bytes, 1, max_bytes)?;
        within("resources.vram_mib", r.vram_bytes, 0, max_bytes)?;
        let needs_gpu = matches!(
            self.pattern,
            HaPattern::GpuInference | HaPattern::GpuSingleton
        );
        if needs_gpu && !r.needs_gpu() {
            return bad(
                "resources.vram_mib",
                format!("a {} workload must declare the VRAM it needs", self.pattern),
            );
        }
        check_labels("labels", &self.labels)?;
        if let Some(c) = &self.command {
            command("command", c)?;
        }
        if self.env.len() > MAX_ENV_VARS {
            return bad(
                "env",
                format!("{} variables; at most {MAX_ENV_VARS}", self.env.len()),
            );
        }
        for (k, v) in &self.env {
            let name_ok = k.len() <= MAX_LABEL_BYTES
                && k.bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !name_ok {
                return bad(
                    "env",
                    format!("{k:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"),
                );
            }
            if k.starts_with("QS_") {
                return bad("env", format!("{k}: names starting QS_ are the agent's"));
            }
            if v.len() > MAX_ENV_VALUE_BYTES || v.contains('\0') {
                return bad(
                    "env",
                    format!("{k}: a value of at most {MAX_ENV_VALUE_BYTES} bytes, no NUL"),
                );
            }
        }
        if let Some(u) = &self.user {
            let ok = (1..=32).contains(&u.len())
                && u.bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
                && u.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                });
            if !ok {
                return bad(
                    "user",
                    format!("{u:?} is not a user name ([a-z_][a-z0-9_-]*, at most 32)"),
                );
            }
        }
        if let Some(h) = &self.health {
            health(h)?;
        }
        super::address::check(self)
    }
}

impl super::NodeSpec {
    /// The rules a node's declaration keeps, so that its heartbeats pass every receiver's
    /// checks (the bounds of a heartbeat).
    pub fn validate(&self) -> Result<(), InvalidField> {
        check_labels("labels", &self.labels)?;
        if self.level > super::MAX_LEVEL {
            return bad("level", format!("must be in 0..={}", super::MAX_LEVEL));
        }
        if self.capacity.gpus.len() > super::MAX_GPUS {
            return bad(
                "gpus",
                format!(
                    "{} GPUs; at most {}",
                    self.capacity.gpus.len(),
                    super::MAX_GPUS
                ),
            );
        }
        Ok(())
    }
}

/// A workload as the `specs` KV holds it under `key` (JSON): decoded, checked, and its name
/// equal to its key. `source` names it in the error, e.g. `kv specs/web`.
pub fn decode_workload(source: &str, key: &str, json: &[u8]) -> Result<WorkloadSpec, SpecError> {
    let spec: WorkloadSpec = decode_json(source, json)?;
    named(source, key, spec.name.as_str())?;
    spec.validate()
        .map_err(|f| located(source, 1, 1, &f.field, f.reason))?;
    Ok(spec)
}

/// A model runtime as the `models` KV holds it under `key` (JSON): decoded, checked, and its
/// name equal to its key. `source` names it in the error, e.g. `kv models/llama`.
pub fn decode_model(source: &str, key: &str, json: &[u8]) -> Result<ModelSpec, SpecError> {
    let spec: ModelSpec = decode_json(source, json)?;
    named(source, key, spec.name.as_str())?;
    spec.validate()
        .map_err(|f| located(source, 1, 1, &f.field, f.reason))?;
    Ok(spec)
}

fn located(source: &str, line: usize, column: usize, field: &str, message: String) -> SpecError {
    SpecError {
        file: source.to_owned(),
        line,
        column,
        field: field.to_owned(),
        message,
    }
}

fn named(source: &str, key: &str, name: &str) -> Result<(), SpecError> {
    if name == key {
        return Ok(());
    }
    Err(located(
        source,
        1,
        1,
        "name",
        format!("the spec is named {name:?} but stored under key {key:?}"),
    ))
}

/// JSON read from a KV bucket, bounded in size, its errors located by line and column.
fn decode_json<T: serde::de::DeserializeOwned>(source: &str, json: &[u8]) -> Result<T, SpecError> {
    if json.len() > MAX_SPEC_BYTES {
        return Err(located(
            source,
            1,
            1,
            "",
            format!("{} bytes; a spec has at most {MAX_SPEC_BYTES}", json.len()),
        ));
    }
    serde_json::from_slice(json).map_err(|e| {
        let text = String::from_utf8_lossy(json);
        let (line, column) = if e.line() == 0 {
            (1, 1)
        } else {
            // serde_json counts lines and columns itself; columns in bytes.
            let offset: usize = text
                .split_inclusive('\n')
                .take(e.line() - 1)
                .map(str::len)
                .sum::<usize>()
                + e.column().saturating_sub(1);
            line_column(&text, offset.min(text.len()))
        };
        located(source, line, column, "", e.to_string())
    })
}
