//! What travels up the mesh: a host's beat of its agents, the lead-time histogram, cluster
//! and sector summaries, and the `Alive` beats between them.

use super::*;
/// One agent in its host's beat: liveness and what the host measured of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentBeat {
    pub agent: AgentId,
    pub state: AgentState,
    /// Median processing time of its recent work, milliseconds (0: none yet).
    pub processing_ms: f64,
    pub queue_depth: u32,
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// When it registered with its host, Unix milliseconds (0: long ago). A lead adds an
    /// agent that joined lately to the routing pool only once it has settled (seed §10.2).
    #[serde(default)]
    pub joined_ms: u64,
    /// What it works on now, if anything (seed §7.2: "show me what they're stuck on").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy: Option<Busy>,
}

/// Longest [`Busy::with`].
pub const MAX_BUSY_WITH_BYTES: usize = 128;
/// Longest [`Busy::note`].
pub const MAX_BUSY_NOTE_BYTES: usize = 200;

/// A character an operator's terminal would not show as itself: a control character, a
/// line or paragraph separator, or an invisible one that reorders or hides text
/// (bidirectional marks, overrides and isolates, zero-width and filler characters, a soft
/// hyphen, tag characters).
pub(crate) fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{E0000}'..='\u{E007F}'
        )
}

/// How a durable task's work starts ([`Busy::task`]).
const TASK_KIND: &str = "task ";

/// What an agent works on, as its host says it: shown to operators, so text only (no
/// control or invisible characters) and short.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Busy {
    /// The work: a task's id and kind, an operation's verb and content (1 to
    /// [`MAX_BUSY_WITH_BYTES`] bytes).
    pub with: String,
    /// What the agent last said of it (a task's progress note), at most
    /// [`MAX_BUSY_NOTE_BYTES`] bytes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
    /// Since when, Unix milliseconds: on its host's clock in a beat, on its lead's after.
    pub since_ms: u64,
}

impl Busy {
    /// What a host says of work it names `with` (noted `note`), since `since_ms`: each
    /// text cut to its bound at a character, control and invisible characters made spaces.
    pub fn new(with: &str, note: &str, since_ms: u64) -> Busy {
        let shown = |s: &str, max: usize| {
            let mut s: String = s.chars().map(|c| if hidden(c) { ' ' } else { c }).collect();
            crate::bounds::clip(&mut s, max);
            s
        };
        Busy {
            with: shown(with, MAX_BUSY_WITH_BYTES),
            note: shown(note, MAX_BUSY_NOTE_BYTES),
            since_ms,
        }
    }

    /// Work of a kind (`act`, `task 7`) with some content, as [`Busy::new`] says it:
    /// `kind: content`, only the content's start read (a payload may be long).
    pub fn of(kind: &str, content: &str, note: &str, since_ms: u64) -> Busy {
        let start: String = content.chars().take(MAX_BUSY_WITH_BYTES).collect();
        Busy::new(&format!("{kind}: {start}"), note, since_ms)
    }

    /// A durable task, `id`, as a worker holds it.
    pub fn task(id: &str, payload: &str, note: &str, since_ms: u64) -> Busy {
        Busy::of(&format!("{TASK_KIND}{id}"), payload, note, since_ms)
    }

    /// The durable task the work is, if it is one (one a reassignment can take from its
    /// worker): the id [`Busy::task`] put first.
    pub fn task_id(&self) -> Option<crate::TaskId> {
        let rest = self.with.strip_prefix(TASK_KIND)?;
        let id = rest.split_once(':').map_or(rest, |(id, _)| id);
        crate::TaskId::new(id).ok()
    }

    pub fn check(&self) -> Result<(), String> {
        for (field, s, max, min) in [
            ("busy.with", &self.with, MAX_BUSY_WITH_BYTES, 1),
            ("busy.note", &self.note, MAX_BUSY_NOTE_BYTES, 0),
        ] {
            if s.len() < min || s.len() > max {
                return Err(format!("{field}: {} bytes; {min}..={max}", s.len()));
            }
            if let Some(c) = s.chars().find(|c| hidden(*c)) {
                return Err(format!("{field}: control or invisible character {c:?}"));
            }
        }
        Ok(())
    }
}

/// A host's beat to one cluster lead: its agents of that cluster (every `beat_ms`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostBeat {
    pub host: NodeId,
    pub cluster: ClusterId,
    /// When it was sent, Unix milliseconds: the lead measures the one-way delay from it.
    pub sent_ms: u64,
    /// Its agents of the cluster; empty when nothing changed since the last beat that
    /// listed them (one does at least every [`FULL_BEAT_EVERY`] beats, and after any change
    /// of the hierarchy).
    pub agents: Vec<AgentBeat>,
}

/// The most a beat's list of agents takes encoded (a host splits its list to stay under it,
/// well within what a bus message may be).
pub const MAX_BEAT_BYTES: usize = 32 * 1024;

impl AgentBeat {
    /// At most how many bytes it takes in JSON: its numbers and names, and each text's
    /// characters at most two bytes each (a quote or a backslash escaped; a control
    /// character is no text of it).
    pub fn encoded_bytes_at_most(&self) -> usize {
        let capabilities: usize = self.capabilities.iter().map(|c| c.len() + 3).sum();
        let busy = self
            .busy
            .as_ref()
            .map_or(0, |b| 64 + 2 * (b.with.len() + b.note.len()));
        256 + capabilities + busy
    }
}

/// `agents` in lists of a beat each: at most [`MAX_BEAT_AGENTS`], and [`MAX_BEAT_BYTES`]
/// encoded (one agent alone always fits).
pub fn beat_lists(agents: &[AgentBeat]) -> Vec<&[AgentBeat]> {
    let mut lists = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, a) in agents.iter().enumerate() {
        let b = a.encoded_bytes_at_most();
        if i > start && (i - start == MAX_BEAT_AGENTS || bytes + b > MAX_BEAT_BYTES) {
            lists.push(&agents[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += b;
    }
    if start < agents.len() {
        lists.push(&agents[start..]);
    }
    lists
}

/// A beat lists its agents at least this often (16 beats of 300 ms: about the seed's 5 s
/// heartbeat with impedance, §4.1); a change is sent at the next beat.
pub const FULL_BEAT_EVERY: u64 = 16;

/// Counts per impedance class, A to F.
pub type ClassCounts = [u32; 6];

/// Upper edges of the lead-time buckets, milliseconds (the last is open).
pub const LEAD_BUCKETS_MS: [f64; LEAD_BUCKETS] = [
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    75.0,
    90.0,
    100.0,
    125.0,
    150.0,
    175.0,
    200.0,
    250.0,
    300.0,
    350.0,
    400.0,
    500.0,
    750.0,
    1_000.0,
    2_000.0,
    f64::INFINITY,
];

/// How many lead-time buckets there are.
pub const LEAD_BUCKETS: usize = 24;

/// Predicted lead times counted per class (A to F) and bucket ([`LEAD_BUCKETS_MS`]): it adds
/// up exactly from clusters to sectors to the root, so the root reads quantiles over the
/// whole mesh from at most 100 summaries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeadHistogram(pub [[u32; LEAD_BUCKETS]; 6]);

impl LeadHistogram {
    pub fn record(&mut self, class: ImpedanceClass, lead_ms: f64) {
        let b = LEAD_BUCKETS_MS
            .iter()
            .position(|edge| lead_ms <= *edge)
            .unwrap_or(LEAD_BUCKETS - 1);
        self.0[class.index()][b] = self.0[class.index()][b].saturating_add(1);
    }

    pub fn add(&mut self, other: &LeadHistogram) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            for (x, y) in a.iter_mut().zip(b.iter()) {
                *x = x.saturating_add(*y);
            }
        }
    }

    /// The `q` quantile of the classes `classes`, read within the bucket that holds it as if
    /// its counts were spread evenly between its edges (as Prometheus reads a histogram), or
    /// `None` with nothing counted. Leads over `within_ms` (beyond any compensation) are left
    /// out: those agents are known too late whatever the budget.
    pub fn quantile_ms(&self, classes: &[ImpedanceClass], q: f64, within_ms: f64) -> Option<f64> {
        let mut buckets = [0u64; LEAD_BUCKETS];
        for c in classes {
            for (b, n) in self.0[c.index()].iter().enumerate() {
                if LEAD_BUCKETS_MS[b] <= within_ms {
                    buckets[b] += u64::from(*n);
                }
            }
        }
        let total: u64 = buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let want = (q * total as f64).ceil().max(1.0);
        let mut seen = 0u64;
        for (b, n) in buckets.iter().enumerate() {
            let before = seen;
            seen += n;
            if seen as f64 >= want {
                let upper = LEAD_BUCKETS_MS[b];
                if !upper.is_finite() {
                    return Some(3_600_000.0);
                }
                let lower = if b == 0 { 0.0 } else { LEAD_BUCKETS_MS[b - 1] };
                let share = (want - before as f64) / *n as f64;
                return Some(lower + (upper - lower) * share);
            }
        }
        None
    }
}

/// A cluster lead's summary to its sector coordinator (seed §4.2, with the sector and the
/// lead's breaker).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSummary {
    pub cluster: ClusterId,
    pub sector: SectorId,
    pub lead: NodeId,
    /// When it was sent, Unix milliseconds (the coordinator measures the hop from it).
    pub sent_ms: u64,
    pub agent_count: u32,
    pub active_count: u32,
    /// Active agents not yet in the routing pool (joined lately, still settling).
    #[serde(default)]
    pub joining_count: u32,
    pub mean_impedance_ms: f64,
    pub p95_impedance_ms: f64,
    /// Its active agents' predicted lead times, counted per class and bucket: how early
    /// an operation must start to reach a share of them.
    pub leads: LeadHistogram,
    pub classes: ClassCounts,
    pub anomalies: u32,
    /// Agent failures since the last summary (for the sector's breaker).
    pub failures: u32,
    pub breaker_open: bool,
    /// Its agents' conflicts still unresolved at the lead.
    #[serde(default, skip_serializing_if = "crate::bounds::is_zero")]
    pub conflicts: ConflictCounts,
    /// Its active agents by capability, the most common first (at most
    /// [`MAX_SUMMARY_CAPABILITIES`]): where an operation that requires one can find it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<CapabilityCount>,
    /// Its agents have capabilities past those listed.
    #[serde(default, skip_serializing_if = "crate::bounds::is_zero")]
    pub capabilities_more: bool,
}

/// A lead's beat to its coordinator, or a coordinator's to the root, between full summaries
/// (every `beat_ms`): alive, and the counts that move fast.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alive {
    /// The cluster or sector it speaks for.
    pub scope: Scope,
    pub from: NodeId,
    pub sent_ms: u64,
    pub agents: u32,
    pub active: u32,
    /// Of the active, those not yet in the routing pool.
    #[serde(default)]
    pub joining: u32,
    /// Agent failures since the last beat (a cluster's, for its sector's breaker).
    pub failures: u32,
    pub breaker_open: bool,
}

/// A sector coordinator's summary to the root (seed §4.3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SectorSummary {
    pub sector: SectorId,
    pub coordinator: NodeId,
    pub sent_ms: u64,
    pub cluster_count: u32,
    pub total_agents: u32,
    pub active_agents: u32,
    /// Active agents not yet in the routing pool.
    #[serde(default)]
    pub joining_agents: u32,
    pub mean_impedance_ms: f64,
    pub p95_impedance_ms: f64,
    /// Its clusters' lead histograms added up.
    pub leads: LeadHistogram,
    /// The longest hop from it to one of its cluster leads, milliseconds.
    pub hop_ms: f64,
    pub classes: ClassCounts,
    pub anomalies: u32,
    /// Open cluster breakers in it, and its own breaker.
    pub open_breakers: u32,
    pub breaker_open: bool,
    /// Its clusters' unresolved conflicts added up.
    #[serde(default, skip_serializing_if = "crate::bounds::is_zero")]
    pub conflicts: ConflictCounts,
    /// Conflicts of priority 4 from reports that reached the coordinator after their
    /// operation settled there (their report up had gone), passed on to the root here, at
    /// most [`MAX_ESCALATED`]; left out when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub escalated: Vec<LateEscalated>,
    /// Its clusters' capability counts added up, the most common first (at most
    /// [`MAX_SUMMARY_CAPABILITIES`]), and whether there are more (here or in a cluster's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<CapabilityCount>,
    #[serde(default, skip_serializing_if = "crate::bounds::is_zero")]
    pub capabilities_more: bool,
}

/// A conflict escalated in a late report, and the operation it was heard in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LateEscalated {
    pub op: OpId,
    pub conflict: Escalated,
}

/// What a cluster's lead knew of agents that another node leads now (a newly seasoned node
/// won their cluster, seed §10.2), sent to that node at its next three beats: an agent in the
/// routing pool stays in it, measured as it was, instead of settling again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handover {
    /// Their cluster in the hierarchy both nodes now hold.
    pub cluster: ClusterId,
    pub agents: Vec<HandedAgent>,
    /// Their conflicts still unresolved at the former lead, at most [`MAX_HANDED_CONFLICTS`]
    /// (the most urgent); left out when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<HandedConflict>,
}

/// Most conflicts one handover carries.
pub const MAX_HANDED_CONFLICTS: usize = 100;

/// One unresolved conflict handed over with its agent: what the new lead needs to resolve
/// it as the former would have (it classifies it again from the detail).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandedConflict {
    pub agent: AgentId,
    pub op: OpId,
    /// When the former lead heard it, Unix milliseconds.
    pub at_ms: u64,
    /// The content the agent contradicted (its envelope's hash).
    pub content_hash: String,
    pub detail: ConflictDetail,
}

/// One agent handed over.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandedAgent {
    pub agent: AgentId,
    /// In the routing pool.
    pub admitted: bool,
    /// Its processing time as measured, milliseconds, and from how many answers.
    pub processing_ms: f64,
    pub samples: u32,
    /// Held out of the pool this much longer, milliseconds (after operations it missed in a
    /// row, or a conflict while integrating), and the operations it missed in a row. Left
    /// out when 0.
    #[serde(default, skip_serializing_if = "crate::bounds::is_zero")]
    pub held_ms: u64,
    #[serde(default, skip_serializing_if = "crate::bounds::is_zero")]
    pub missed: u8,
}

/// The longest hold a handover carries: an hour.
pub const MAX_HELD_MS: u64 = 3_600_000;

/// Agents that answered an urgent operation CONFLICT where their cluster clearly (four in
/// five) answered READY: the root, which gathered the answers, tells their lead, which
/// holds back those still integrating (seed §10.2, "monitor for conflicts during
/// integration").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contradicted {
    pub op: OpId,
    pub cluster: ClusterId,
    pub agents: Vec<AgentId>,
}

/// From a cluster lead to an agent's host, for one of its agents: restart it
/// (`MeshMessage::Restart`: offline past seed §6.1's AGENT_CRASH threshold while its host
/// lives, a worker agent is disconnected, for its supervisor to start it again, and joins
/// anew), or take the task it holds from it (`MeshMessage::Reassign`, an operator's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentOrder {
    pub agent: AgentId,
    pub cluster: ClusterId,
    /// When the agent registered, on its host's clock, as its lead knows it: a host acts on
    /// only that registration (not one that came back since). 0: any.
    #[serde(default)]
    pub joined_ms: u64,
    /// A reassignment's: the task its lead saw the agent on; only that one is taken (not one
    /// the worker took since).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<crate::TaskId>,
}

/// The mesh's mode as its root decided it (seed §6.3), and what it holds frozen, passed down
/// the tree so every node knows them, not the root alone: the root sends it to its
/// coordinators at each change and, while the mesh is not FULL or anything is frozen, every
/// summary period; each coordinator passes it to its leads, each lead to the hosts of its
/// agents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModeNotice {
    /// 0 FULL, 1 DEGRADED_LIGHT, 2 DEGRADED_MODERATE, 3 DEGRADED_SEVERE, 4 EMERGENCY.
    pub level: u8,
    pub active_agents: u32,
    pub total_agents: u32,
    /// The root's clock when it sent it, milliseconds: each node passes each notice on once.
    pub sent_ms: u64,
    /// The root holds the whole mesh frozen: a node that becomes the root keeps it so (a
    /// freeze outlives its root).
    #[serde(default, skip_serializing_if = "crate::bounds::is_zero")]
    pub frozen: bool,
    /// The sectors and clusters the root holds frozen (the whole mesh aside), at most
    /// [`MAX_FROZEN_SCOPES`]: each node takes them for its own, so a coordinator or lead new
    /// to a frozen scope holds it frozen too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frozen_scopes: Vec<Scope>,
    /// The capability mapping's rules the root holds (at most [`MAX_EXCLUSIONS`]): each
    /// node takes them for its own, as it takes the freezes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<Exclusion>,
    /// The id of the last control the root sent before this notice (0: none): a node that
    /// carried out a later one keeps what that one did over this notice's freezes.
    #[serde(default, skip_serializing_if = "crate::bounds::is_zero")]
    pub last_control: u64,
    /// The root that sent it: a node whose tree names another root takes nothing from it
    /// (a slower copy from the root before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<NodeId>,
}

/// The highest [`ModeNotice::level`]: EMERGENCY.
pub const MAX_MODE_LEVEL: u8 = 4;

/// Sectors and clusters frozen at once, at most: a root refuses a freeze past it.
pub const MAX_FROZEN_SCOPES: usize = 256;

impl ModeNotice {
    pub fn check(&self) -> Result<(), String> {
        super::unix_ms("sent_ms", self.sent_ms)?;
        if self.level > MAX_MODE_LEVEL {
            return Err(format!("level: {}; at most {MAX_MODE_LEVEL}", self.level));
        }
        let most = super::MAX_AGENTS_IN_SCOPE * super::MAX_CHILDREN;
        if self.active_agents > self.total_agents || self.total_agents as usize > most {
            return Err(format!(
                "active_agents {} of total_agents {} (at most {most})",
                self.active_agents, self.total_agents
            ));
        }
        if self.frozen_scopes.len() > MAX_FROZEN_SCOPES {
            return Err(format!(
                "frozen_scopes: {}; at most {MAX_FROZEN_SCOPES}",
                self.frozen_scopes.len()
            ));
        }
        if self.frozen_scopes.contains(&Scope::Global) {
            return Err("frozen_scopes: names the whole mesh (that is `frozen`)".into());
        }
        check_exclusions(&self.excluded)
    }
}
