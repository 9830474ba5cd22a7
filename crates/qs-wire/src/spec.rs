//! Operator specs in TOML: workloads (services and jobs) and nodes, with located errors.
//!
//! A spec document holds any mix of `[service.NAME]`, `[job.NAME]`, `[model.NAME]` and
//! `[node.NAME]` tables.
//! [`parse_spec`] either returns every spec of the document or one [`SpecError`] naming the
//! file, line, column and field; nothing is half-applied.

use crate::ids::{NodeId, ServiceName};
use crate::resources::{Capacity, GpuCapacity, Resources};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use toml::Spanned;

mod address;
mod locate;
mod model;
mod validate;
pub use address::{
    MAX_ADDRESS_PATH_BYTES, MAX_PUBLISH_FILE_BYTES, Protocol, Publish, PublishFormat,
    ServiceAddress,
};
pub(crate) use locate::Locator;
pub use locate::line_column;
pub use model::{
    Authority, MAX_CONCURRENCY, MAX_MODEL_MS, MAX_TIERS, ModelDiscipline, ModelSpec, ModelTier,
};
pub(crate) use validate::command as check_command;
pub use validate::{
    InvalidField, MAX_COMMAND_BYTES, MAX_LABEL_BYTES, MAX_LABELS, MAX_PROBE_MS, MAX_SPEC_BYTES,
    check_labels, decode_model, decode_workload,
};

/// Highest (least authoritative) node level; level 0 is the highest authority.
pub const MAX_LEVEL: u8 = 7;
const MIB: u64 = 1024 * 1024;
const MAX_CPU_CORES: f64 = 4096.0;
const MAX_MEMORY_MIB: i64 = 64 * 1024 * 1024; // 64 TiB
/// Most GPUs one node may have.
pub const MAX_GPUS: usize = 64;
/// Most replicas, job instances, failures or instances per node any count may name.
pub const MAX_REPLICAS: i64 = 100_000;

/// How a workload is replicated and placed (seed 000 §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HaPattern {
    /// Replicas anywhere, by default at most one per node.
    Stateless,
    /// One primary takes writes; read replicas anywhere; moving the primary needs approval
    /// unless the spec sets `auto_promote`.
    StatefulRead,
    /// Goes to the node with the most free VRAM; stateless per request.
    GpuInference,
    /// Exactly one instance fleet-wide, never split, fenced by a growing token.
    GpuSingleton,
}

impl HaPattern {
    pub fn is_singleton(self) -> bool {
        self == HaPattern::GpuSingleton
    }
}

impl fmt::Display for HaPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HaPattern::Stateless => "stateless",
            HaPattern::StatefulRead => "stateful-read",
            HaPattern::GpuInference => "gpu-inference",
            HaPattern::GpuSingleton => "gpu-singleton",
        })
    }
}

/// Service (kept running) or job (runs to completion).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum WorkloadKind {
    Service {
        /// Replicas kept at all times.
        replicas: u32,
        /// Ceiling for scale-out under load; equal to `replicas` when not autoscaled.
        max_replicas: u32,
        /// stateful-read only: promote a replica without operator approval.
        auto_promote: bool,
    },
    Job {
        /// Instances that must each complete once.
        parallelism: u32,
    },
}

/// How the agent decides an instance is serving.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Probe {
    /// A TCP connection to the instance's port succeeds.
    Tcp,
    /// `GET path` on the instance's port answers 2xx or 3xx.
    Http { path: String },
    /// The command exits 0 (`{port}` is replaced by the instance's port).
    Exec { command: String },
}

/// A health check and its timing.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HealthCheck {
    pub probe: Probe,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Failures during this period after start do not count.
    pub start_period_ms: u64,
    /// Consecutive failures that mark the instance failed.
    pub failures: u32,
}

/// One service or job as the operator declared it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WorkloadSpec {
    pub name: ServiceName,
    pub kind: WorkloadKind,
    pub pattern: HaPattern,
    pub resources: Resources,
    /// Labels a node must carry (all of them, equal values) to host an instance.
    pub labels: BTreeMap<String, String>,
    /// Command line run by the process executor; `{port}` is replaced by a free port.
    pub command: Option<String>,
    /// Environment variables the command (and its exec probe) gets, beyond the agent's
    /// short allow-list (`PATH`, `HOME`, `LANG`, ...) and `QS_PORT`, `QS_INSTANCE`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The user its processes run as when the agent is root (default: `nobody`); an agent
    /// that is not root runs them as itself and refuses another user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Most instances of this workload on one node.
    pub max_per_node: u32,
    /// When absent, a running process counts as serving.
    pub health: Option<HealthCheck>,
    /// The port every agent forwards to its serving instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<ServiceAddress>,
    /// Where the set of its serving instances is published when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Publish>,
}

impl WorkloadSpec {
    /// Instances wanted when nothing is hot and nothing has completed.
    pub fn base_count(&self) -> u32 {
        match self.kind {
            WorkloadKind::Service { replicas, .. } => replicas,
            WorkloadKind::Job { parallelism } => parallelism,
        }
    }
    pub fn max_count(&self) -> u32 {
        match self.kind {
            WorkloadKind::Service { max_replicas, .. } => max_replicas,
            WorkloadKind::Job { parallelism } => parallelism,
        }
    }
    pub fn is_job(&self) -> bool {
        matches!(self.kind, WorkloadKind::Job { .. })
    }
}

/// A node as declared in a fleet file (the embedded fleet and the simulator use these).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeSpec {
    pub id: NodeId,
    pub level: u8,
    pub labels: BTreeMap<String, String>,
    pub capacity: Capacity,
}

/// Everything one spec file declared.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecDocument {
    pub workloads: Vec<WorkloadSpec>,
    /// Model runtimes (`[model.NAME]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelSpec>,
    pub nodes: Vec<NodeSpec>,
}

/// A refused spec: where, which field, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct SpecError {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// Dotted path of the offending field, e.g. `service.dns.resources.cpu_cores`; empty for
    /// syntax errors.
    pub field: String,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDoc {
    #[serde(default)]
    service: BTreeMap<String, Spanned<RawWorkload>>,
    #[serde(default)]
    job: BTreeMap<String, Spanned<RawWorkload>>,
    #[serde(default)]
    model: BTreeMap<String, Spanned<model::RawModel>>,
    #[serde(default)]
    node: BTreeMap<String, Spanned<RawNode>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    pattern: Option<HaPattern>,
    replicas: Option<Spanned<i64>>,
    max_replicas: Option<Spanned<i64>>,
    parallelism: Option<Spanned<i64>>,
    max_per_node: Option<Spanned<i64>>,
    auto_promote: Option<Spanned<bool>>,
    resources: RawResources,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    command: Option<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    user: Option<String>,
    health: Option<Spanned<RawHealth>>,
    address: Option<ServiceAddress>,
    publish: Option<Publish>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    kind: Spanned<String>,
    path: Option<String>,
    command: Option<String>,
    interval_ms: Option<Spanned<i64>>,
    timeout_ms: Option<Spanned<i64>>,
    start_period_ms: Option<Spanned<i64>>,
    failures: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResources {
    cpu_cores: Spanned<f64>,
    memory_mib: Spanned<i64>,
    vram_mib: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    level: Spanned<i64>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    cpu_cores: Spanned<f64>,
    memory_mib: Spanned<i64>,
    #[serde(default)]
    gpus: Vec<RawGpu>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGpu {
    vram_mib: Spanned<i64>,
}

/// Parses and validates one spec document. `file` only labels errors.
pub fn parse_spec(file: &str, text: &str) -> Result<SpecDocument, SpecError> {
    let at = Locator { file, text };
    let raw: RawDoc = toml::from_str(text).map_err(|e| at.serde_error(&e))?;
    let mut doc = SpecDocument::default();
    let mut seen: BTreeMap<String, &'static str> = BTreeMap::new();
    for (table, entries) in [("service", &raw.service), ("job", &raw.job)] {
        for (name, w) in entries {
            let path = format!("{table}.{name}");
            if let Some(other) = seen.insert(name.clone(), table) {
                return Err(at.error(
                    w.span(),
                    &path,
                    format!("name already used by {other}.{name}; services and jobs share names"),
                ));
            }
            doc.workloads
                .push(workload(&at, &path, name, table == "job", w)?);
        }
    }
    for (name, m) in &raw.model {
        let path = format!("model.{name}");
        if let Some(other) = seen.insert(name.clone(), "model") {
            return Err(at.error(
                m.span(),
                &path,
                format!(
                    "name already used by {other}.{name}; models, services and jobs share names"
                ),
            ));
        }
        doc.models.push(model::model(&at, &path, name, m)?);
    }
    for (name, n) in &raw.node {
        doc.nodes.push(node(&at, &format!("node.{name}"), name, n)?);
    }
    Ok(doc)
}

fn workload(
    at: &Locator<'_>,
    path: &str,
    name: &str,
    is_job: bool,
    raw: &Spanned<RawWorkload>,
) -> Result<WorkloadSpec, SpecError> {
    let name = ServiceName::new(name).map_err(|e| at.error(raw.span(), path, e.to_string()))?;
    let w = raw.get_ref();
    let pattern = w.pattern.unwrap_or(HaPattern::Stateless);
    let field = |f: &str| format!("{path}.{f}");
    let only = |v: &Option<Spanned<i64>>, f: &str, owner: &str| match v {
        Some(v) => Err(at.error(v.span(), &field(f), format!("only {owner} have `{f}`"))),
        None => Ok(()),
    };
    let kind = if is_job {
        only(&w.replicas, "replicas", "services")?;
        only(&w.max_replicas, "max_replicas", "services")?;
        if let Some(a) = &w.auto_promote {
            return Err(at.error(
                a.span(),
                &field("auto_promote"),
                "only services have `auto_promote`",
            ));
        }
        let parallelism = count(at, &field("parallelism"), w.parallelism.as_ref(), 1, 1)?;
        if pattern.is_singleton() && parallelism != 1 {
            let span = w.parallelism.as_ref().map_or(raw.span(), |p| p.span());
            return Err(at.error(
                span,
                &field("parallelism"),
                "a gpu-singleton runs exactly one instance",
            ));
        }
        WorkloadKind::Job { parallelism }
    } else {
        only(&w.parallelism, "parallelism", "jobs")?;
        let replicas = count(at, &field("replicas"), w.replicas.as_ref(), 0, 1)?;
        let max_replicas = count(
            at,
            &field("max_replicas"),
            w.max_replicas.as_ref(),
            0,
            replicas,
        )?;
        if max_replicas < replicas {
            let span = w.max_replicas.as_ref().map_or(raw.span(), |m| m.span());
            return Err(at.error(
                span,
                &field("max_replicas"),
                format!("must be at least replicas ({replicas}), got {max_replicas}"),
            ));
        }
        if pattern.is_singleton() && (replicas != 1 || max_replicas != 1) {
            let span = w.replicas.as_ref().map_or(raw.span(), |r| r.span());
            return Err(at.error(
                span,
                &field("replicas"),
                "a gpu-singleton runs exactly one instance",
            ));
        }
        let auto_promote = match &w.auto_promote {
            Some(a) if pattern != HaPattern::StatefulRead => {
                return Err(at.error(
                    a.span(),
                    &field("auto_promote"),
                    "only stateful-read services have a primary to promote",
                ));
            }
            Some(a) => *a.get_ref(),
            None => false,
        };
        WorkloadKind::Service {
            replicas,
            max_replicas,
            auto_promote,
        }
    };
    let max_per_node = count(at, &field("max_per_node"), w.max_per_node.as_ref(), 1, 1)?;
    if max_per_node != 1 && pattern != HaPattern::Stateless {
        let span = w.max_per_node.as_ref().map_or(raw.span(), |m| m.span());
        return Err(at.error(
            span,
            &field("max_per_node"),
            format!("only stateless workloads may run more than one instance per node ({pattern} runs one)"),
        ));
    }
    let resources = resources(at, &field("resources"), &w.resources)?;
    let needs_gpu = matches!(pattern, HaPattern::GpuInference | HaPattern::GpuSingleton);
    if needs_gpu && !resources.needs_gpu() {
        return Err(at.error(
            raw.span(),
            &field("resources.vram_mib"),
            format!("a {pattern} workload must declare the VRAM it needs"),
        ));
    }
    if let Some(c) = &w.command
        && c.get_ref().trim().is_empty()
    {
        return Err(at.error(c.span(), &field("command"), "must not be empty"));
    }
    let health = match &w.health {
        Some(h) => Some(health(at, &field("health"), h)?),
        None => None,
    };
    let spec = WorkloadSpec {
        name,
        kind,
        pattern,
        resources,
        labels: w.labels.clone(),
        command: w.command.as_ref().map(|c| c.get_ref().clone()),
        env: w.env.clone(),
        user: w.user.clone(),
        max_per_node,
        health,
        address: w.address.clone(),
        publish: w.publish.clone(),
    };
    // The rules every way in shares; the checks above only locate the common mistakes
    // more precisely.
    spec.validate()
        .map_err(|f| at.error(raw.span(), &field(&f.field), f.reason))?;
    Ok(spec)
}

fn health(
    at: &Locator<'_>,
    path: &str,
    raw: &Spanned<RawHealth>,
) -> Result<HealthCheck, SpecError> {
    let h = raw.get_ref();
    let field = |f: &str| format!("{path}.{f}");
    let probe = match (h.kind.get_ref().as_str(), &h.path, &h.command) {
        ("tcp", None, None) => Probe::Tcp,
        ("http", Some(p), None) if p.starts_with('/') => Probe::Http { path: p.clone() },
        ("http", _, None) => {
            return Err(at.error(
                raw.span(),
                &field("path"),
                "an http check needs a path starting with '/'",
            ));
        }
        ("exec", None, Some(c)) if !c.trim().is_empty() => Probe::Exec { command: c.clone() },
        ("exec", None, _) => {
            return Err(at.error(
                raw.span(),
                &field("command"),
                "an exec check needs a command",
            ));
        }
        ("tcp" | "http" | "exec", _, _) => {
            return Err(at.error(
                raw.span(),
                path,
                "`path` goes with kind = \"http\" and `command` with kind = \"exec\"",
            ));
        }
        (other, _, _) => {
            return Err(at.error(
                h.kind.span(),
                &field("kind"),
                format!("unknown check kind `{other}`, expected one of `tcp`, `http`, `exec`"),
            ));
        }
    };
    let ms = |v: &Option<Spanned<i64>>, f: &str, default: u64| -> Result<u64, SpecError> {
        match v {
            None => Ok(default),
            Some(v) if (1..=MAX_PROBE_MS as i64).contains(v.get_ref()) => Ok(*v.get_ref() as u64),
            Some(v) => Err(at.error(
                v.span(),
                &field(f),
                format!("must be in 1..={MAX_PROBE_MS} ms, got {}", v.get_ref()),
            )),
        }
    };
    Ok(HealthCheck {
        probe,
        interval_ms: ms(&h.interval_ms, "interval_ms", 1000)?,
        timeout_ms: ms(&h.timeout_ms, "timeout_ms", 1000)?,
        start_period_ms: ms(&h.start_period_ms, "start_period_ms", 10_000)?,
        failures: count(at, &field("failures"), h.failures.as_ref(), 1, 3)?,
    })
}

fn resources(at: &Locator<'_>, path: &str, r: &RawResources) -> Result<Resources, SpecError> {
    Ok(Resources {
        cpu_millicores: cpu(at, &format!("{path}.cpu_cores"), &r.cpu_cores)?,
        memory_bytes: mib(at, &format!("{path}.memory_mib"), &r.memory_mib)?,
        vram_bytes: match &r.vram_mib {
            Some(v) => mib(at, &format!("{path}.vram_mib"), v)?,
            None => 0,
        },
    })
}

fn node(
    at: &Locator<'_>,
    path: &str,
    name: &str,
    raw: &Spanned<RawNode>,
) -> Result<NodeSpec, SpecError> {
    let id = NodeId::new(name).map_err(|e| at.error(raw.span(), path, e.to_string()))?;
    let n = raw.get_ref();
    let level = *n.level.get_ref();
    if !(0..=i64::from(MAX_LEVEL)).contains(&level) {
        return Err(at.error(
            n.level.span(),
            &format!("{path}.level"),
            format!("level must be in 0..={MAX_LEVEL} (0 is the highest authority), got {level}"),
        ));
    }
    let mut gpus = Vec::with_capacity(n.gpus.len());
    for (i, g) in n.gpus.iter().enumerate() {
        gpus.push(GpuCapacity {
            vram_bytes: mib(at, &format!("{path}.gpus[{i}].vram_mib"), &g.vram_mib)?,
        });
    }
    let spec = NodeSpec {
        id,
        level: level as u8,
        labels: n.labels.clone(),
        capacity: Capacity {
            cpu_millicores: cpu(at, &format!("{path}.cpu_cores"), &n.cpu_cores)?,
            memory_bytes: mib(at, &format!("{path}.memory_mib"), &n.memory_mib)?,
            gpus,
        },
    };
    spec.validate()
        .map_err(|f| at.error(raw.span(), &format!("{path}.{}", f.field), f.reason))?;
    Ok(spec)
}

fn cpu(at: &Locator<'_>, path: &str, v: &Spanned<f64>) -> Result<u64, SpecError> {
    let cores = *v.get_ref();
    if !cores.is_finite() || cores <= 0.0 || cores > MAX_CPU_CORES {
        return Err(at.error(
            v.span(),
            path,
            format!("must be more than 0 and at most {MAX_CPU_CORES} cores, got {cores}"),
        ));
    }
    let millis = (cores * 1000.0).round() as u64;
    if millis == 0 {
        return Err(at.error(
            v.span(),
            path,
            format!("{cores} cores rounds to zero millicores"),
        ));
    }
    Ok(millis)
}

fn mib(at: &Locator<'_>, path: &str, v: &Spanned<i64>) -> Result<u64, SpecError> {
    let m = *v.get_ref();
    if m <= 0 || m > MAX_MEMORY_MIB {
        return Err(at.error(
            v.span(),
            path,
            format!("must be more than 0 and at most {MAX_MEMORY_MIB} MiB, got {m}"),
        ));
    }
    Ok(m as u64 * MIB)
}

fn count(
    at: &Locator<'_>,
    path: &str,
    v: Option<&Spanned<i64>>,
    min: i64,
    default: u32,
) -> Result<u32, SpecError> {
    let Some(v) = v else { return Ok(default) };
    let n = *v.get_ref();
    if n < min || n > MAX_REPLICAS {
        return Err(at.error(
            v.span(),
            path,
            format!("must be in {min}..={MAX_REPLICAS}, got {n}"),
        ));
    }
    Ok(n as u32)
}

#[cfg(test)]
mod tests;
