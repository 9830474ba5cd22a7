//! Operators' requests and what carries every mesh message between processes: the
//! `MeshPacket` a sender signs, an operator's `MeshAction` with its one check, the root's
//! `MeshOutcome`, and a node's agents in the `mesh` bucket (`MeshMembers`).

use super::*;
/// A mesh message as it travels between processes: who sends it (the frame's signer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshPacket {
    pub from: NodeId,
    pub message: MeshMessage,
}

impl BusMessage for MeshPacket {
    fn check(&self) -> Result<(), String> {
        self.message.check()
    }
}

/// What an operator asks of the mesh (`qs mesh …`, `POST /v1/mesh/ops`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "action")]
pub enum MeshAction {
    /// A broadcast (verb sync), an ask (verb observe, a sample) or any cascade.
    Cascade {
        mode: CascadeMode,
        #[serde(default = "global")]
        scope: Scope,
        verb: Verb,
        payload: String,
        #[serde(default = "two")]
        priority: u8,
        #[serde(default)]
        sample: Option<u32>,
        #[serde(default)]
        budget_ms: Option<u64>,
        #[serde(default)]
        requires: Option<String>,
        #[serde(default)]
        approved: bool,
        /// Only agents of this impedance class (`qs mesh delegate --to D`); not for a
        /// priority-first cascade, which takes its classes in turn.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        class: Option<ImpedanceClass>,
        /// How long the agents' answers are gathered past their arrival, milliseconds (a
        /// delegation's timeout); default the mode's window.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window_ms: Option<u64>,
    },
    Freeze {
        scope: Scope,
    },
    Thaw {
        scope: Scope,
        /// An operator approved it (`--approve`): in DEGRADED_SEVERE a mesh-wide control
        /// needs that, in EMERGENCY any but a freeze (seed §6.3). Left out when false.
        #[serde(default, skip_serializing_if = "crate::bounds::is_zero")]
        approved: bool,
    },
    Heal {
        scope: Scope,
        #[serde(default, skip_serializing_if = "crate::bounds::is_zero")]
        approved: bool,
    },
    /// Hold the agents in scope whose impedance is over `slower_than_ms` out of the routing
    /// pool for `for_ms` (seed §7.2: "route around them for now"); a heal takes them back.
    RouteAround {
        scope: Scope,
        slower_than_ms: u64,
        for_ms: u64,
        #[serde(default, skip_serializing_if = "crate::bounds::is_zero")]
        approved: bool,
    },
    /// Take the task each worker agent in scope whose impedance is over `slower_than_ms`
    /// holds from it: back to its node's queue, for another worker (seed §7.2: "reassign the
    /// task").
    Reassign {
        scope: Scope,
        slower_than_ms: u64,
        #[serde(default, skip_serializing_if = "crate::bounds::is_zero")]
        approved: bool,
    },
    /// Route operations that require `capability` to no agent of `class`, mesh-wide (seed
    /// §7.2: "CLASS_E_LOCAL agents now excluded from 'llm_inference' routing").
    Exclude {
        class: ImpedanceClass,
        capability: String,
        #[serde(default, skip_serializing_if = "crate::bounds::is_zero")]
        approved: bool,
    },
    /// Lift that rule.
    Include {
        class: ImpedanceClass,
        capability: String,
        #[serde(default, skip_serializing_if = "crate::bounds::is_zero")]
        approved: bool,
    },
}

impl MeshAction {
    /// Marks it approved by an operator (`--approve`, which degraded modes ask for): true
    /// if it was not and can be (a freeze needs no approval).
    pub fn approve(&mut self) -> bool {
        let approved = match self {
            MeshAction::Freeze { .. } => return false,
            MeshAction::Cascade { approved, .. }
            | MeshAction::Thaw { approved, .. }
            | MeshAction::Heal { approved, .. }
            | MeshAction::RouteAround { approved, .. }
            | MeshAction::Reassign { approved, .. }
            | MeshAction::Exclude { approved, .. }
            | MeshAction::Include { approved, .. } => approved,
        };
        !std::mem::replace(approved, true)
    }

    /// Whether an operator approved it.
    pub fn approved(&self) -> bool {
        match self {
            MeshAction::Freeze { .. } => false,
            MeshAction::Cascade { approved, .. }
            | MeshAction::Thaw { approved, .. }
            | MeshAction::Heal { approved, .. }
            | MeshAction::RouteAround { approved, .. }
            | MeshAction::Reassign { approved, .. }
            | MeshAction::Exclude { approved, .. }
            | MeshAction::Include { approved, .. } => *approved,
        }
    }
}

/// The slowest an operator's route-around may name, milliseconds (an hour).
pub const MAX_SLOWER_THAN_MS: u64 = 3_600_000;

/// Checks a reassignment's threshold, wherever it comes from (the API, a control on the
/// bus).
pub fn check_slower_than(slower_than_ms: u64) -> Result<(), String> {
    if slower_than_ms > MAX_SLOWER_THAN_MS {
        return Err(format!(
            "slower_than_ms: {slower_than_ms}; at most {MAX_SLOWER_THAN_MS}"
        ));
    }
    Ok(())
}

/// Checks a route-around's numbers, wherever they come from (the API, a control on the bus).
pub fn check_route_around(slower_than_ms: u64, for_ms: u64) -> Result<(), String> {
    check_slower_than(slower_than_ms)?;
    if !(1_000..=MAX_HELD_MS).contains(&for_ms) {
        return Err(format!("for_ms: {for_ms}; must be in 1000..={MAX_HELD_MS}"));
    }
    Ok(())
}

fn global() -> Scope {
    Scope::Global
}

fn two() -> u8 {
    2
}

impl MeshAction {
    /// The longest the root may take over it, milliseconds: its budget (or the most the
    /// mesh compensates, a second) and window (a priority-first cascade's phases run at
    /// once, their targets no later than the latest of their budgets).
    pub fn longest_ms(&self) -> u64 {
        match self {
            MeshAction::Cascade {
                budget_ms,
                window_ms,
                ..
            } => budget_ms
                .unwrap_or(1_000)
                .saturating_add(window_ms.unwrap_or(1_000)),
            _ => 0,
        }
    }

    pub fn check(&self) -> Result<(), String> {
        match self {
            MeshAction::Cascade {
                mode,
                verb,
                payload,
                priority,
                sample,
                budget_ms,
                requires,
                class,
                window_ms,
                ..
            } => {
                if *verb == Verb::Probe {
                    return Err("verb: probe is the cluster leads' own (readiness probes)".into());
                }
                if payload.len() > MAX_PAYLOAD_BYTES {
                    return Err(format!("payload: at most {MAX_PAYLOAD_BYTES} bytes"));
                }
                if *priority > 3 {
                    return Err(format!("priority: {priority}; must be 0..=3"));
                }
                if sample.is_some_and(|n| n == 0 || n as usize > MAX_AGENTS_IN_SCOPE * MAX_CHILDREN)
                {
                    return Err("sample: must be in 1..=1000000".into());
                }
                // A sample is a wave's (an ask, a delegation): the urgent mode's root counts
                // every cluster of a sector, and each priority-first phase would take one.
                if sample.is_some() && *mode != CascadeMode::Wave {
                    return Err(format!("sample: only for a wave, not {}", wire_name(mode)));
                }
                if budget_ms.is_some_and(|b| b == 0 || b > MAX_TTL_MS) {
                    return Err(format!("budget_ms: must be in 1..={MAX_TTL_MS}"));
                }
                if let Some(r) = requires {
                    check_capability(r).map_err(|e| format!("requires: {e}"))?;
                }
                if class.is_some() && *mode == CascadeMode::PriorityFirst {
                    return Err("class: a priority-first cascade takes its classes in turn".into());
                }
                if window_ms.is_some_and(|w| w == 0 || w > MAX_WINDOW_MS) {
                    return Err(format!("window_ms: must be in 1..={MAX_WINDOW_MS}"));
                }
                Ok(())
            }
            MeshAction::RouteAround {
                slower_than_ms,
                for_ms,
                ..
            } => check_route_around(*slower_than_ms, *for_ms),
            MeshAction::Reassign { slower_than_ms, .. } => check_slower_than(*slower_than_ms),
            MeshAction::Exclude { capability, .. } | MeshAction::Include { capability, .. } => {
                check_capability(capability)
            }
            _ => Ok(()),
        }
    }
}

/// The longest an operation gathers answers past their arrival: ten minutes.
pub const MAX_WINDOW_MS: u64 = 600_000;

/// A request for the root, with where to answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshRequest {
    pub id: u64,
    pub action: MeshAction,
}

/// The root's answer: `ok` with the outcome as JSON, or the refusal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshOutcome {
    pub id: u64,
    pub ok: bool,
    pub body: String,
}

/// Largest outcome body.
pub const MAX_OUTCOME_BYTES: usize = 32 * 1024;
/// Most agents one node registers in the mesh: its record in the `mesh` bucket, each id
/// up to 20 digits, fits a bus message ([`crate::task_bus::MAX_BUS_BYTES`]).
pub const MAX_NODE_AGENTS: usize = 3_072;

/// A node's agents, as it puts them in the `mesh` bucket (key: the node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshMembers {
    pub node: NodeId,
    pub agents: Vec<AgentId>,
    /// The node's zone (`qs agent --mesh-zone`): the hierarchy keeps clusters and sectors
    /// within one. Empty: none named.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
    /// When the node joined the mesh, milliseconds since 1970 on its clock: a node new to a
    /// running mesh leads only once it has been in it a while (seed §10.2). 0: long ago.
    #[serde(default, skip_serializing_if = "crate::bounds::is_zero")]
    pub since_ms: u64,
    /// How long after `since_ms` it may lead a cluster (`None`: the mesh's default). Every
    /// node reads it here, so all agree on when it may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lead_after_ms: Option<u64>,
}

/// The longest a node may wait before it leads: an hour.
pub const MAX_LEAD_AFTER_MS: u64 = 3_600_000;

/// Longest zone name.
pub const MAX_ZONE_BYTES: usize = 63;

/// Checks a zone name, wherever it comes from (a flag, the `mesh` bucket): empty, or 1 to
/// 63 ASCII letters, digits, `-`, `_` and `.` (`us-east-1a`, `eu-west.b`).
pub fn check_zone(zone: &str) -> Result<(), String> {
    match zone.is_empty() {
        true => Ok(()),
        false => super::token("zone", zone, MAX_ZONE_BYTES),
    }
}

impl BusMessage for MeshMembers {
    fn check(&self) -> Result<(), String> {
        if self.agents.len() > MAX_NODE_AGENTS {
            return Err(format!(
                "{} agents; at most {MAX_NODE_AGENTS}",
                self.agents.len()
            ));
        }
        super::unix_ms("since_ms", self.since_ms)?;
        if let Some(ms) = self.lead_after_ms
            && ms > MAX_LEAD_AFTER_MS
        {
            return Err(format!(
                "lead_after_ms {ms}: at most {MAX_LEAD_AFTER_MS} (an hour)"
            ));
        }
        check_zone(&self.zone)
    }
}

/// An operator's order for a scope, from the root to its coordinators, who relay it to their
/// cluster leads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    pub action: ControlAction,
    pub scope: Scope,
    /// Already passed on by a coordinator: not to be passed on again.
    pub relayed: bool,
    /// The root's number for it: each node that carries it out says so to the root with a
    /// [`ControlDone`] of this id (0: from a root that asks for none).
    #[serde(default)]
    pub id: u64,
    /// A route-around's: the agents over this impedance are held out of the pool, for
    /// `for_ms` (0 for the other actions).
    #[serde(default, skip_serializing_if = "crate::bounds::is_zero")]
    pub slower_than_ms: u64,
    #[serde(default, skip_serializing_if = "crate::bounds::is_zero")]
    pub for_ms: u64,
    /// An exclusion's or an inclusion's rule (none for the other actions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<Exclusion>,
    /// The root that sent it, whom each node confirms it to (if that node is the root of
    /// its tree or the tree before: a root that moved meanwhile is still answered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<NodeId>,
}

impl Control {
    /// A control of `action` over `scope` (a route-around's numbers 0), not yet relayed.
    pub fn new(action: ControlAction, scope: Scope) -> Control {
        Control {
            action,
            scope,
            relayed: false,
            id: 0,
            slower_than_ms: 0,
            for_ms: 0,
            rule: None,
            root: None,
        }
    }

    pub fn check(&self) -> Result<(), String> {
        let ruled = matches!(self.action, ControlAction::Exclude | ControlAction::Include);
        match &self.rule {
            Some(_) if !ruled => return Err(format!("rule: not for {:?}", self.action)),
            Some(_) if self.scope != Scope::Global => {
                return Err(format!("scope: {}; a rule holds mesh-wide", self.scope));
            }
            None if ruled => return Err(format!("rule: {:?} names none", self.action)),
            Some(rule) => rule.check().map_err(|e| format!("rule: {e}"))?,
            None => {}
        }
        match self.action {
            ControlAction::RouteAround => check_route_around(self.slower_than_ms, self.for_ms),
            ControlAction::Reassign => check_slower_than(self.slower_than_ms),
            _ => Ok(()),
        }
    }
}

/// The most a node says it did of one control (agents released, breakers closed,
/// conflicts released): far more than a node leads.
pub const MAX_CONTROL_COUNT: u32 = 1_000_000;

/// Agents a node names of those it routed around, at most (the slowest).
pub const MAX_ROUTED_NAMED: usize = 8;
/// Capabilities a routed agent's entry lists, at most: a report names 16 agents, and its
/// outcome must stay within [`MAX_OUTCOME_BYTES`].
pub const MAX_ROUTED_CAPABILITIES: usize = 4;

/// An agent a route-around held out of the routing pool (seed §7.2: "Traffic now avoiding:
/// … AGENT-12 (impedance 847ms)"), and what it works on ("Both agents stuck on: …").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutedAgent {
    pub agent: AgentId,
    pub cluster: ClusterId,
    /// Its impedance score when it was held out, milliseconds.
    pub impedance_ms: f64,
    /// What its host last said it works on, and for how long then (its lead's reckoning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy: Option<Busy>,
    #[serde(default, skip_serializing_if = "crate::bounds::is_zero")]
    pub busy_for_ms: u64,
    /// Its impedance class then, and the capabilities its host says it has, the first
    /// [`MAX_ROUTED_CAPABILITIES`] (seed §7.2:
    /// "These are CLASS_E_LOCAL agents incorrectly assigned a CLASS_D_GPU task", which the
    /// console offers to fix in the capability mapping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<ImpedanceClass>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
}

impl RoutedAgent {
    pub fn check(&self) -> Result<(), String> {
        super::finite("impedance_ms", self.impedance_ms, 1e9)?;
        super::at_most(
            "capabilities",
            self.capabilities.len(),
            MAX_ROUTED_CAPABILITIES,
        )?;
        check_capabilities(&self.capabilities)?;
        self.busy.as_ref().map_or(Ok(()), Busy::check)
    }
}

/// What one node did of a control, to the root that sent it (seed §7.1's heal report:
/// "3 agents restarted … circuit breaker reset").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlDone {
    /// The control's [`Control::id`].
    pub id: u64,
    /// Who carried it out (the packet's sender).
    pub from: NodeId,
    /// The coordinator that passed it on to `from` (none: from the root itself). A lead
    /// under two coordinators hears it from each, for their own clusters, and confirms each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<NodeId>,
    pub action: ControlAction,
    /// Quarantined agents released (back in the pool at their host's next beat).
    pub agents_released: u32,
    /// Breakers that were open or half-open, closed.
    pub breakers_closed: u32,
    /// Conflicts of the log released (an operator's review).
    pub conflicts_released: u32,
    /// Agents a route-around held out of the routing pool.
    #[serde(default)]
    pub agents_routed_around: u32,
    /// Agents on tasks whose hosts a reassignment asked to take the tasks from them.
    #[serde(default, skip_serializing_if = "crate::bounds::is_zero")]
    pub agents_reassigned: u32,
    /// Agents an exclusion keeps out of its capability's routing (an inclusion: lets back).
    #[serde(default, skip_serializing_if = "crate::bounds::is_zero")]
    pub agents_excluded: u32,
    /// Whether its scope was frozen here before (a thaw or a heal thawed it).
    pub was_frozen: bool,
    /// A route-around's or a reassignment's: the slowest of the agents it held out or took
    /// a task from, at most [`MAX_ROUTED_NAMED`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routed: Vec<RoutedAgent>,
}

impl ControlDone {
    /// `from`'s confirmation of control `id` (of `action`, passed on `via` a coordinator, if
    /// one), nothing done yet.
    pub fn new(id: u64, from: NodeId, via: Option<NodeId>, action: ControlAction) -> ControlDone {
        ControlDone {
            id,
            from,
            via,
            action,
            agents_released: 0,
            breakers_closed: 0,
            conflicts_released: 0,
            agents_routed_around: 0,
            agents_reassigned: 0,
            agents_excluded: 0,
            was_frozen: false,
            routed: Vec::new(),
        }
    }

    pub fn check(&self) -> Result<(), String> {
        for (field, n) in [
            ("agents_released", self.agents_released),
            ("breakers_closed", self.breakers_closed),
            ("conflicts_released", self.conflicts_released),
            ("agents_routed_around", self.agents_routed_around),
            ("agents_reassigned", self.agents_reassigned),
            ("agents_excluded", self.agents_excluded),
        ] {
            if n > MAX_CONTROL_COUNT {
                return Err(format!("{field}: {n}; at most {MAX_CONTROL_COUNT}"));
            }
        }
        super::at_most("routed agents named", self.routed.len(), MAX_ROUTED_NAMED)?;
        self.routed.iter().try_for_each(RoutedAgent::check)
    }
}

/// What a [`Control`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ControlAction {
    /// Halt operations (seed Appendix B's FREEZE).
    Freeze,
    /// Resume them.
    Thaw,
    /// Close breakers, release quarantined and held agents and conflicts, thaw (seed §7.1's
    /// heal).
    Heal,
    /// Hold slow agents out of the routing pool for a while (seed §7.2's "route around").
    RouteAround,
    /// Take slow worker agents' tasks from them, for other workers (seed §7.2's "reassign
    /// the task").
    Reassign,
    /// Keep an impedance class out of a capability's routing (seed §7.2's "fix the
    /// capability mapping"): [`Control::rule`].
    Exclude,
    /// Lift such a rule.
    Include,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_are_checked_wherever_they_come_from() {
        let table = [
            ("", true),
            ("us-east-1a", true),
            ("eu_west.b", true),
            (&"z".repeat(MAX_ZONE_BYTES), true),
            (&"z".repeat(MAX_ZONE_BYTES + 1), false),
            ("eu west", false),
            ("zone/1", false),
            ("zoné", false),
        ];
        for (zone, ok) in table {
            assert_eq!(check_zone(zone).is_ok(), ok, "{zone:?}");
        }
        let bad = r#"{"node":"n1","agents":[],"zone":"a b"}"#;
        let m: MeshMembers = serde_json::from_str(bad).unwrap();
        assert!(m.check().unwrap_err().contains("\"a b\""));
        // A node that names no zone writes the record as before.
        let m = MeshMembers {
            node: NodeId::new("n1").unwrap(),
            agents: Vec::new(),
            zone: String::new(),
            since_ms: 0,
            lead_after_ms: None,
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"node":"n1","agents":[]}"#
        );
    }

    #[test]
    fn an_operators_cascade_is_checked() {
        let cascade = |extra: &str| {
            let json = format!(
                r#"{{"action":"cascade","mode":"wave","verb":"sync","payload":"x"{extra}}}"#
            );
            serde_json::from_str::<MeshAction>(&json)
                .map_err(|e| e.to_string())?
                .check()
        };
        let table = [
            ("", Ok(())),
            (r#","priority":3"#, Ok(())),
            (r#","priority":4"#, Err("priority: 4")),
            (r#","sample":0"#, Err("sample:")),
            (r#","budget_ms":0"#, Err("budget_ms:")),
            (r#","requires":"a b""#, Err("requires:")),
            (r#","class":"D","window_ms":600000"#, Ok(())),
            (r#","window_ms":0"#, Err("window_ms:")),
            (r#","window_ms":600001"#, Err("window_ms:")),
            (r#","class":"G""#, Err("unknown variant")),
        ];
        for (extra, want) in table {
            match (cascade(extra), want) {
                (Ok(()), Ok(())) => {}
                (Err(e), Err(start)) => assert!(e.starts_with(start), "{extra}: {e}"),
                (got, want) => panic!("{extra}: {got:?}, wanted {want:?}"),
            }
        }
        // A priority-first cascade takes its classes in turn: none is named.
        let json = r#"{"action":"cascade","mode":"priority-first","verb":"sync","payload":"x","class":"D"}"#;
        let e = serde_json::from_str::<MeshAction>(json).unwrap().check();
        assert!(e.unwrap_err().starts_with("class:"));
        // Readiness probes are the cluster leads' own.
        let probe = r#"{"action":"cascade","mode":"wave","verb":"probe","payload":""}"#;
        let e = serde_json::from_str::<MeshAction>(probe).unwrap().check();
        assert!(e.unwrap_err().starts_with("verb: probe"));
    }

    #[test]
    fn a_members_record_says_when_its_node_joined_as_a_time() {
        let table = [
            (r#"{"node":"n1","agents":[]}"#, Ok(0)),
            (
                r#"{"node":"n1","agents":[],"since_ms":1796601600000}"#,
                Ok(1_796_601_600_000),
            ),
            (
                r#"{"node":"n1","agents":[],"since_ms":16725225600001}"#,
                Err("since_ms 16725225600001: not a time"),
            ),
            (
                r#"{"node":"n1","agents":[],"lead_after_ms":3600000}"#,
                Ok(0),
            ),
            (
                r#"{"node":"n1","agents":[],"lead_after_ms":3600001}"#,
                Err("lead_after_ms 3600001: at most"),
            ),
        ];
        for (json, want) in table {
            let m: MeshMembers = serde_json::from_str(json).unwrap();
            match (m.check(), want) {
                (Ok(()), Ok(since)) => assert_eq!(m.since_ms, since, "{json}"),
                (Err(e), Err(start)) => assert!(e.starts_with(start), "{json}: {e}"),
                (got, want) => panic!("{json}: {got:?}, wanted {want:?}"),
            }
        }
    }
}
