//! The mesh's vocabulary (seed 001, MESH-30K): what hosts, cluster leads, sector
//! coordinators and the root say to one another on the `mesh.*` topics, and what an agent is
//! sent and answers. JSON, like the task channels; every message has one check,
//! [`MeshMessage::check`] (through [`crate::task_bus::decode_bus`]), whatever way it came in.
//!
//! An agent is anything registered with a node through the worker protocol; its id is a
//! stable 64-bit hash of its host and name, chosen by the host.

use crate::ids::NodeId;
use crate::task_bus::BusMessage;
use serde::{Deserialize, Serialize};

mod answers;
mod capabilities;
mod exclusion;
mod requests;
mod summary;
pub use answers::*;
pub use capabilities::*;
pub use exclusion::*;
pub use requests::*;
pub use summary::*;

/// Most children any parent of the hierarchy has (seed §2.1).
pub const MAX_CHILDREN: usize = 100;
/// Most agents under one sector.
pub const MAX_AGENTS_IN_SCOPE: usize = MAX_CHILDREN * MAX_CHILDREN;
/// Largest payload of an envelope.
pub const MAX_PAYLOAD_BYTES: usize = 4096;
/// Longest time to live of an envelope, and the widest arrival window: one hour.
pub const MAX_TTL_MS: u64 = 3_600_000;
/// Most agents one host reports in one beat (one cluster's worth).
pub const MAX_BEAT_AGENTS: usize = MAX_CHILDREN;
/// Most capability names an agent declares, and their longest name.
pub const MAX_CAPABILITIES: usize = 16;
pub const MAX_CAPABILITY_BYTES: usize = 64;
/// Longest reason or detail text.
pub const MAX_TEXT_BYTES: usize = 512;
/// Largest heaviest payload weight (a processing-complexity multiplier, seed §3.1).
pub const MAX_PAYLOAD_WEIGHT: f64 = 100.0;

/// A registered agent's id (a stable hash of `host/name`, see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AgentId(pub u64);

/// A cluster of at most [`MAX_CHILDREN`] agents, numbered from 0.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct ClusterId(pub u32);

/// A sector of at most [`MAX_CHILDREN`] clusters, numbered from 0.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct SectorId(pub u32);

/// One coordinated operation (a broadcast, an ask, a cascade), named by the root that began it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OpId(pub u64);

/// The three-valued answer of seed §1.4: READY (+1), IN TRANSIT (0), CONFLICT (−1). On the
/// wire it is that number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i8", into = "i8")]
pub enum Trinary {
    Conflict,
    Transit,
    Ready,
}

impl From<Trinary> for i8 {
    fn from(t: Trinary) -> i8 {
        match t {
            Trinary::Conflict => -1,
            Trinary::Transit => 0,
            Trinary::Ready => 1,
        }
    }
}

impl TryFrom<i8> for Trinary {
    type Error = String;
    fn try_from(v: i8) -> Result<Trinary, String> {
        match v {
            -1 => Ok(Trinary::Conflict),
            0 => Ok(Trinary::Transit),
            1 => Ok(Trinary::Ready),
            _ => Err(format!("a trinary state is -1, 0 or 1, got {v}")),
        }
    }
}

/// Impedance classes (seed §2.2), measured, never declared: see `qs_core::mesh::impedance`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ImpedanceClass {
    A,
    B,
    C,
    D,
    E,
    F,
}

impl ImpedanceClass {
    pub const ALL: [ImpedanceClass; 6] = [
        ImpedanceClass::A,
        ImpedanceClass::B,
        ImpedanceClass::C,
        ImpedanceClass::D,
        ImpedanceClass::E,
        ImpedanceClass::F,
    ];
    pub fn index(self) -> usize {
        self as usize
    }
    pub fn letter(self) -> char {
        (b'A' + self as u8) as char
    }
}

/// The verb of an envelope (seed §2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verb {
    Observe,
    Orient,
    Decide,
    Act,
    Record,
    Sync,
    /// A readiness probe of an agent that joined lately (seed §10.2, "verify impedance
    /// profiles stabilize"): its cluster lead measures how long it takes to answer; the
    /// agent answers READY as it would any envelope, and does no other work for it.
    Probe,
}

/// How an operation travels the hierarchy (seed §3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CascadeMode {
    /// Root → sectors → clusters → agents, each level confirming to the one above.
    Wave,
    /// Everyone at once: each level forwards without waiting and agents answer the root.
    Parallel,
    /// Class by class, GPUs first (D, C, B, A, E), each its own wave under a number of its
    /// own: all start at once, each class's agents ready no earlier than the class before.
    PriorityFirst,
}

/// Where an operation or a breaker applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "level", content = "id")]
pub enum Scope {
    Global,
    Sector(SectorId),
    Cluster(ClusterId),
}

/// `global`, `sector N` or `cluster N`, as the command line reads it.
impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Global => f.write_str("global"),
            Scope::Sector(s) => write!(f, "sector {}", s.0),
            Scope::Cluster(c) => write!(f, "cluster {}", c.0),
        }
    }
}

/// An agent's state as its host sees it (seed §2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentState {
    Active,
    Degraded,
    Offline,
    Quarantined,
}

/// What is sent to an agent (seed §2.4 and Appendix B).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshEnvelope {
    pub id: u64,
    /// The operation it belongs to (the seed's correlation id).
    pub op: OpId,
    /// What caused it, if anything.
    #[serde(default)]
    pub causation: Option<u64>,
    pub created_ms: u64,
    /// When the recipients should be READY, Unix milliseconds.
    pub target_arrival_ms: u64,
    /// Dropped, and counted, once `created_ms + ttl_ms` has passed.
    pub ttl_ms: u64,
    /// 0 background … 3 critical.
    pub priority: u8,
    /// Estimated processing complexity (seed §3.1's `payload_weight`).
    pub weight: f64,
    pub verb: Verb,
    pub payload: String,
    /// SHA-256 of the payload, hex (the agent checks it: a mismatch is an integrity conflict).
    pub content_hash: String,
    /// The capability an agent needs to take it, if any.
    #[serde(default)]
    pub requires: Option<String>,
}

impl MeshEnvelope {
    /// Whether `other` is the same message (its id and creation): under another operation,
    /// a retry's, or sent again.
    pub fn same_message(&self, other: &MeshEnvelope) -> bool {
        self.id == other.id && self.created_ms == other.created_ms
    }

    /// Past its time to live at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        now_ms > self.created_ms.saturating_add(self.ttl_ms)
    }

    pub fn check(&self) -> Result<(), String> {
        if self.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(format!(
                "payload: {} bytes; at most {MAX_PAYLOAD_BYTES}",
                self.payload.len()
            ));
        }
        if self.ttl_ms == 0 || self.ttl_ms > MAX_TTL_MS {
            return Err(format!(
                "ttl_ms: {}; must be in 1..={MAX_TTL_MS}",
                self.ttl_ms
            ));
        }
        if self.priority > 3 {
            return Err(format!("priority: {}; must be 0..=3", self.priority));
        }
        if !(0.0..=MAX_PAYLOAD_WEIGHT).contains(&self.weight) {
            return Err(format!(
                "weight: {}; must be in 0..={MAX_PAYLOAD_WEIGHT}",
                self.weight
            ));
        }
        if self.content_hash.len() != 64
            || !self.content_hash.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err("content_hash: must be 64 hex digits (SHA-256)".into());
        }
        unix_ms("created_ms", self.created_ms)?;
        if self.target_arrival_ms > self.created_ms.saturating_add(MAX_TTL_MS) {
            return Err("target_arrival_ms: more than an hour after created_ms".into());
        }
        if let Some(r) = &self.requires {
            check_capability(r).map_err(|e| format!("requires: {e}"))?;
        }
        Ok(())
    }
}

/// A unit variant's name on the wire (`wave`, `route-around`, `observe`).
pub fn wire_name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A capability's name: 1..=[`MAX_CAPABILITY_BYTES`] of letters, digits, `_`, `-`, `.`.
pub fn check_capability(name: &str) -> Result<(), String> {
    token("capability", name, MAX_CAPABILITY_BYTES)
}

/// An agent's capabilities, wherever they come from (a beat, a worker's join): at most
/// [`MAX_CAPABILITIES`], each a good name, none twice (the summaries count agents by
/// capability).
pub fn check_capabilities(names: &[String]) -> Result<(), String> {
    if names.len() > MAX_CAPABILITIES {
        return Err(format!(
            "capabilities: {}; at most {MAX_CAPABILITIES}",
            names.len()
        ));
    }
    for (i, c) in names.iter().enumerate() {
        check_capability(c)?;
        if names[..i].contains(c) {
            return Err(format!("capability {c:?} twice"));
        }
    }
    Ok(())
}

/// A name of 1..=`max` ASCII letters, digits, `_`, `-` and `.` (capabilities, zones).
pub(crate) fn token(what: &str, name: &str, max: usize) -> Result<(), String> {
    if name.is_empty() || name.len() > max {
        return Err(format!("{what} {name:?}: {} bytes; 1..={max}", name.len()));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        Some(c) => Err(format!(
            "{what} {name:?}: {c:?} is not an ASCII letter, digit, '_', '-' or '.'"
        )),
        None => Ok(()),
    }
}

/// Text an operator's terminal shows (an answer, a conflict's detail): at most
/// [`MAX_TEXT_BYTES`], and no character a terminal would not show as itself (an escape
/// sequence, a reordering mark, a zero-width space) but line breaks and tabs (an answer of
/// several lines) and the zero-width joiners some scripts need, which the console shows
/// escaped.
fn text(what: &str, s: &str) -> Result<(), String> {
    if s.len() > MAX_TEXT_BYTES {
        return Err(format!(
            "{what}: {} bytes; at most {MAX_TEXT_BYTES}",
            s.len()
        ));
    }
    match s.chars().find(|c| not_text(*c)) {
        Some(c) => Err(format!("{what}: control or invisible character {c:?}")),
        None => Ok(()),
    }
}

/// A character [`text`] refuses.
fn not_text(c: char) -> bool {
    summary::hidden(c) && !matches!(c, '\n' | '\t' | '\u{200C}' | '\u{200D}')
}

/// `s` made text a node sends as it (an agent's answer, a conflict's detail from a
/// payload or a context): each character [`text`] refuses a space, cut to
/// [`MAX_TEXT_BYTES`] at a character.
pub fn as_text(s: &str) -> String {
    let mut t: String = s
        .chars()
        .map(|c| if not_text(c) { ' ' } else { c })
        .collect();
    crate::bounds::clip(&mut t, MAX_TEXT_BYTES);
    t
}

/// The latest time taken, Unix milliseconds (the year 2500): a larger one is no time.
pub const MAX_UNIX_MS: u64 = 16_725_225_600_000;

/// A time from another node, Unix milliseconds: at most [`MAX_UNIX_MS`].
pub(crate) fn unix_ms(what: &str, ms: u64) -> Result<(), String> {
    match ms > MAX_UNIX_MS {
        true => Err(format!(
            "{what} {ms}: not a time (at most {MAX_UNIX_MS}, the year 2500)"
        )),
        false => Ok(()),
    }
}

/// `n` things of a list, at most `max`.
fn at_most(what: &str, n: usize, max: usize) -> Result<(), String> {
    match n > max {
        true => Err(format!("{n} {what}; at most {max}")),
        false => Ok(()),
    }
}

fn finite(what: &str, v: f64, max: f64) -> Result<(), String> {
    match v.is_finite() && (0.0..=max).contains(&v) {
        true => Ok(()),
        false => Err(format!("{what}: {v}; must be in 0..={max}")),
    }
}

/// An operation going down the hierarchy (seed Appendix B's COORDINATE, for a level).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Order {
    pub op: OpId,
    pub mode: CascadeMode,
    /// Who answers for it: the root.
    pub root: NodeId,
    /// Whom the receiver reports to: the root, or the coordinator that passed it on.
    pub report_to: NodeId,
    pub scope: Scope,
    /// Only agents of this class (a priority-first phase), if set.
    #[serde(default)]
    pub class: Option<ImpedanceClass>,
    /// Reach at most this many agents of each cluster (an ask's sample), if set.
    #[serde(default)]
    pub sample_per_cluster: Option<u32>,
    /// How long after the target arrival answers count.
    pub window_ms: u64,
    pub envelope: MeshEnvelope,
    /// A half-open breaker above the cluster (its sector's, kept by the coordinator that
    /// passed the order on): the lead sends to a tenth of its agents in scope (seed §6.2's
    /// limited traffic). Left out when false.
    #[serde(default, skip_serializing_if = "crate::bounds::is_zero")]
    pub limited: bool,
    /// The operation this one retries (seed §5.2's RETRY), the same message again: a lead
    /// sends it to none of its agents READY for that one, nor to those it still awaits
    /// there. Left out when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<OpId>,
}

/// Orders one message carries at most ([`MeshMessage::Orders`]).
pub const MAX_ORDERS_BATCHED: usize = 8;

/// Orders to one node that go together ([`MeshMessage::Orders`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Orders {
    pub orders: Vec<Order>,
}

impl Order {
    pub fn check(&self) -> Result<(), String> {
        if self.window_ms == 0 || self.window_ms > MAX_TTL_MS {
            return Err(format!(
                "window_ms: {}; must be in 1..={MAX_TTL_MS}",
                self.window_ms
            ));
        }
        if self.retry_of == Some(self.op) {
            return Err(format!(
                "retry_of: {}; an operation retries another",
                self.op.0
            ));
        }
        self.envelope.check()
    }
}

/// A cluster lead's send to one agent, through its host, at the agent's scheduled time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dispatch {
    pub agent: AgentId,
    pub cluster: ClusterId,
    /// Who hears the answer: the cluster lead (a wave) or the root (parallel).
    pub reply_to: NodeId,
    pub envelope: MeshEnvelope,
}

/// A breaker changed (seed Appendix B's CIRCUIT).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Circuit {
    pub scope: Scope,
    pub state: BreakerState,
    pub reason: String,
}

/// A circuit breaker's state (seed §6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// Everything on the `mesh.*` topics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "type")]
pub enum MeshMessage {
    Beat(HostBeat),
    // The large ones are boxed, so the frequent small ones stay small to move.
    Cluster(Box<ClusterSummary>),
    Sector(Box<SectorSummary>),
    Alive(Alive),
    Order(Box<Order>),
    /// Orders to one node that go together (a priority-first operation's phases, which
    /// start at once): 2 to [`MAX_ORDERS_BATCHED`], each taken as if it came alone.
    Orders(Box<Orders>),
    Dispatch(Box<Dispatch>),
    Ack(Box<Ack>),
    Report(Box<Report>),
    Circuit(Circuit),
    Control(Control),
    /// What a node did of a control, to the root.
    ControlDone(Box<ControlDone>),
    /// An operator's request, from the node whose API took it to the root.
    Request(Box<MeshRequest>),
    /// The root's answer to a request: its outcome as JSON.
    Outcome(Box<MeshOutcome>),
    /// A former lead's views of agents another node leads now.
    Handover(Box<Handover>),
    /// From the root to a lead: its agents that contradicted their cluster in an urgent
    /// operation.
    Contradicted(Box<Contradicted>),
    /// The mesh's mode, from the root down the tree.
    Mode(ModeNotice),
    /// From a lead to a host: restart a crashed agent.
    Restart(AgentOrder),
    /// From a lead to a host: take the task this worker agent holds from it.
    Reassign(AgentOrder),
}

/// Failures a summary counts per agent of its scope, at most (an agent may fail, restart
/// and fail again within a period).
pub const MAX_FAILURES_PER_AGENT: u32 = 100;

/// A summary's counts of its agents: by class, anomalous, failed since the last (at most
/// [`MAX_FAILURES_PER_AGENT`] each).
fn class_counts(
    classes: &ClassCounts,
    anomalies: u32,
    failures: u32,
    agents: u32,
) -> Result<(), String> {
    let classed: u64 = classes.iter().map(|n| u64::from(*n)).sum();
    let agents = u64::from(agents);
    if classed > agents
        || u64::from(anomalies) > agents
        || u64::from(failures) > u64::from(MAX_FAILURES_PER_AGENT) * agents
    {
        return Err(format!(
            "classes: {classed} counted, anomalies {anomalies}, failures {failures}, of {agents} agents"
        ));
    }
    Ok(())
}

fn summary_numbers(mean: f64, p95: f64, leads: &LeadHistogram, agents: u32) -> Result<(), String> {
    finite("mean_impedance_ms", mean, 1e9)?;
    finite("p95_impedance_ms", p95, 1e9)?;
    let counted: u64 = leads.0.iter().flatten().map(|n| u64::from(*n)).sum();
    if counted > u64::from(agents) {
        return Err(format!("leads: {counted} counted of {agents} agents"));
    }
    Ok(())
}

impl BusMessage for MeshMessage {
    fn check(&self) -> Result<(), String> {
        match self {
            MeshMessage::Beat(b) => {
                at_most("agents in a beat", b.agents.len(), MAX_BEAT_AGENTS)?;
                for a in &b.agents {
                    finite("processing_ms", a.processing_ms, 1e9)?;
                    check_capabilities(&a.capabilities)?;
                    a.busy.as_ref().map_or(Ok(()), Busy::check)?;
                }
                Ok(())
            }
            MeshMessage::Cluster(c) => {
                if c.active_count > c.agent_count
                    || c.joining_count > c.active_count
                    || c.agent_count as usize > MAX_CHILDREN
                {
                    return Err(format!(
                        "active_count {}, joining_count {} of agent_count {} (at most {MAX_CHILDREN})",
                        c.active_count, c.joining_count, c.agent_count
                    ));
                }
                c.conflicts.check(1)?;
                class_counts(&c.classes, c.anomalies, c.failures, c.agent_count)?;
                check_capability_counts(&c.capabilities, c.agent_count)?;
                summary_numbers(
                    c.mean_impedance_ms,
                    c.p95_impedance_ms,
                    &c.leads,
                    c.agent_count,
                )
            }
            MeshMessage::Sector(s) => {
                if s.active_agents > s.total_agents
                    || s.joining_agents > s.active_agents
                    || s.cluster_count as usize > MAX_CHILDREN
                    || s.total_agents as usize > s.cluster_count as usize * MAX_CHILDREN
                    || s.open_breakers > s.cluster_count
                {
                    return Err(format!(
                        "active_agents {}, joining_agents {} of total_agents {}, open_breakers {} of {} clusters (at most {MAX_CHILDREN}, of {MAX_CHILDREN} agents each)",
                        s.active_agents,
                        s.joining_agents,
                        s.total_agents,
                        s.open_breakers,
                        s.cluster_count
                    ));
                }
                s.conflicts.check(s.cluster_count)?;
                class_counts(&s.classes, s.anomalies, 0, s.total_agents)?;
                check_capability_counts(&s.capabilities, s.total_agents)?;
                answers::check_escalated(s.escalated.iter().map(|l| &l.conflict))?;
                summary_numbers(
                    s.mean_impedance_ms,
                    s.p95_impedance_ms,
                    &s.leads,
                    s.total_agents,
                )?;
                finite("hop_ms", s.hop_ms, 1e9)
            }
            MeshMessage::Order(o) => o.check(),
            MeshMessage::Orders(b) => {
                let v = &b.orders;
                if !(2..=MAX_ORDERS_BATCHED).contains(&v.len()) {
                    return Err(format!(
                        "orders: {}; must be in 2..={MAX_ORDERS_BATCHED}",
                        v.len()
                    ));
                }
                v.iter()
                    .enumerate()
                    .try_for_each(|(i, o)| o.check().map_err(|e| format!("orders[{i}]: {e}")))
            }
            MeshMessage::Dispatch(d) => d.envelope.check(),
            MeshMessage::Ack(a) => a.check(),
            MeshMessage::Report(r) => r.check(),
            MeshMessage::Circuit(c) => text("reason", &c.reason),
            MeshMessage::Control(c) => c.check(),
            MeshMessage::ControlDone(d) => d.check(),
            MeshMessage::Restart(_) | MeshMessage::Reassign(_) => Ok(()),
            MeshMessage::Mode(m) => m.check(),
            MeshMessage::Request(r) => r.action.check(),
            MeshMessage::Contradicted(c) => at_most("agents", c.agents.len(), MAX_CHILDREN),
            MeshMessage::Handover(h) => {
                at_most("agents handed over", h.agents.len(), MAX_CHILDREN)?;
                for a in &h.agents {
                    finite("processing_ms", a.processing_ms, 3_600_000.0)?;
                    if a.held_ms > MAX_HELD_MS {
                        return Err(format!("held_ms: {}; at most {MAX_HELD_MS}", a.held_ms));
                    }
                }
                at_most(
                    "conflicts handed over",
                    h.conflicts.len(),
                    MAX_HANDED_CONFLICTS,
                )?;
                for (i, c) in h.conflicts.iter().enumerate() {
                    text("content_hash", &c.content_hash)
                        .and_then(|_| c.detail.check())
                        .map_err(|e| format!("conflicts[{i}]: {e}"))?;
                }
                Ok(())
            }
            MeshMessage::Outcome(o) => match o.body.len() > MAX_OUTCOME_BYTES {
                true => Err(format!("outcome: at most {MAX_OUTCOME_BYTES} bytes")),
                false => Ok(()),
            },
            MeshMessage::Alive(a) => {
                match a.active > a.agents
                    || a.joining > a.active
                    || a.agents as usize > MAX_AGENTS_IN_SCOPE
                {
                    true => Err(format!(
                        "active {} and joining {} of {} agents",
                        a.active, a.joining, a.agents
                    )),
                    false => Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_counts;
