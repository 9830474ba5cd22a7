//! An operator's command at the root: a cascade judged by the mode's rules and started,
//! queued or refused; a control (freeze, thaw, heal, route-around, reassignment, the
//! capability mapping) judged by the same rules (seed §6.3: in DEGRADED_SEVERE a mesh-wide
//! one needs a human's approval, in EMERGENCY any but a freeze) and sent down the tree.

use super::*;

/// An operator's (or the API's) command to the root.
#[derive(Clone, Debug)]
pub enum Command {
    Cascade(CascadeCommand),
    /// A freeze (`frozen`) or a thaw.
    Freeze {
        scope: Scope,
        frozen: bool,
        /// An operator approved it (`--approve`), for the mode's rules (seed §6.3: a freeze
        /// needs none).
        approved: bool,
    },
    Heal {
        scope: Scope,
        approved: bool,
    },
    /// Hold the agents in scope slower than `slower_than_ms` out of the pool for `for_ms`.
    RouteAround {
        scope: Scope,
        slower_than_ms: u64,
        for_ms: u64,
        approved: bool,
    },
    /// Take the task each worker agent in scope slower than `slower_than_ms` holds from it,
    /// for another worker.
    Reassign {
        scope: Scope,
        slower_than_ms: u64,
        approved: bool,
    },
    /// Keep a class out of a capability's routing, mesh-wide (not `excluded`: let it back).
    Exclude {
        rule: qs_wire::mesh::Exclusion,
        excluded: bool,
        approved: bool,
    },
}

/// A cascade asked of the root: a broadcast, an ask (a sample), a delegation.
#[derive(Clone, Debug)]
pub struct CascadeCommand {
    pub mode: CascadeMode,
    pub scope: Scope,
    pub envelope: MeshEnvelope,
    /// Reach about this many agents in all (an ask's sample).
    pub sample: Option<u32>,
    /// How far ahead of now the agents are to be ready, milliseconds; `None`: the
    /// percentile of the predicted leads in scope its phases need (the 95th; the 90th for
    /// the urgent mode), at most `max_budget_ms`.
    pub budget_ms: Option<u64>,
    pub approved: bool,
    pub automated: bool,
    /// Only agents of this class (a delegation's `--to`).
    pub class: Option<ImpedanceClass>,
    /// How long answers are gathered past the agents' arrival, milliseconds (a
    /// delegation's timeout); `None`: the mode's window.
    pub window_ms: Option<u64>,
}

impl CascadeCommand {
    /// `envelope` to `scope` in `mode`: everything else as an operator leaves it (no
    /// sample, budget, class or window of its own; not approved; not automated).
    pub fn new(mode: CascadeMode, scope: Scope, envelope: MeshEnvelope) -> CascadeCommand {
        CascadeCommand {
            mode,
            scope,
            envelope,
            sample: None,
            budget_ms: None,
            approved: false,
            automated: false,
            class: None,
            window_ms: None,
        }
    }
}

/// Why the root refused a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
pub enum CommandError {
    #[error("this node is not the mesh's root (the root is {root:?})")]
    NotRoot { root: Option<String> },
    #[error(transparent)]
    Mode(#[from] degrade::Refused),
    #[error("the mesh is frozen in {0:?}: thaw it first")]
    Frozen(Scope),
    #[error("no agents in scope {0:?}")]
    NoAgents(Scope),
    #[error("{0}")]
    Invalid(String),
    #[error("the root holds {0} operations, the most it may: try again when some have ended")]
    Busy(usize),
    #[error(
        "DEGRADED_MODERATE queues non-urgent operations and its queue is full ({0}): send \
         with priority 2 or more, or wait for the mesh to recover"
    )]
    QueueFull(usize),
    #[error(
        "operation {} waited {waited_ms} ms in the queue and the mesh did not recover: it \
         did not run", op.0
    )]
    Expired { op: OpId, waited_ms: u64 },
}

impl MeshNode {
    pub(crate) fn command(&mut self, c: Command, tag: u64, now: Time) {
        if !self.is_root {
            let root = self.tree.root.as_ref().map(|r| r.to_string());
            self.out.push_back(MeshOutput::Refused {
                tag,
                op: None,
                error: CommandError::NotRoot { root },
            });
            return;
        }
        if let Err(error) = self.permit_control(&c) {
            self.out.push_back(MeshOutput::Refused {
                tag,
                op: None,
                error,
            });
            return;
        }
        match c {
            Command::Cascade(c) => {
                if let Err(error) = self.start(c, tag, now) {
                    self.out.push_back(MeshOutput::Refused {
                        tag,
                        op: None,
                        error,
                    });
                }
            }
            Command::Freeze { scope, frozen, .. } => {
                if frozen && !self.may_freeze(scope) {
                    let why = format!(
                        "{} scopes are frozen already, the most at once: thaw one first",
                        qs_wire::mesh::MAX_FROZEN_SCOPES
                    );
                    self.out.push_back(MeshOutput::Refused {
                        tag,
                        op: None,
                        error: CommandError::Invalid(why),
                    });
                    return;
                }
                let action = match frozen {
                    true => ControlAction::Freeze,
                    false => ControlAction::Thaw,
                };
                self.fan_control(Control::new(action, scope), tag, now);
            }
            Command::Heal { scope, .. } => {
                self.fan_control(Control::new(ControlAction::Heal, scope), tag, now)
            }
            Command::RouteAround {
                scope,
                slower_than_ms,
                for_ms,
                ..
            } => {
                let c = Control {
                    slower_than_ms,
                    for_ms,
                    ..Control::new(ControlAction::RouteAround, scope)
                };
                self.checked_control(c, tag, now)
            }
            Command::Reassign {
                scope,
                slower_than_ms,
                ..
            } => {
                let c = Control {
                    slower_than_ms,
                    ..Control::new(ControlAction::Reassign, scope)
                };
                self.checked_control(c, tag, now)
            }
            Command::Exclude { rule, excluded, .. } => self.command_rule(rule, excluded, tag, now),
        }
    }

    /// Sends control `c` if its numbers hold, else refuses it.
    pub(in crate::mesh::node) fn checked_control(&mut self, c: Control, tag: u64, now: Time) {
        match c.check() {
            Ok(()) => self.fan_control(c, tag, now),
            Err(e) => self.out.push_back(MeshOutput::Refused {
                tag,
                op: None,
                error: CommandError::Invalid(e),
            }),
        }
    }

    /// Starts an operator's cascade now, or queues it (DEGRADED_MODERATE's non-urgent ones).
    fn start(&mut self, c: CascadeCommand, tag: u64, now: Time) -> Result<(), CommandError> {
        let admit = self.admit(&c)?;
        let op = OpId(self.next_id());
        match admit {
            degrade::Admit::Now => {
                self.launch(op, c, tag, now);
                Ok(())
            }
            degrade::Admit::Queue => queue::push(self, op, c, tag, now),
        }
    }

    /// The mode's rules for an operator's control (seed §6.3), as for a critical operation
    /// that reaches no agent: in DEGRADED_SEVERE a mesh-wide one needs a human's approval,
    /// in EMERGENCY any does ("investigate the root cause before any action"). A freeze
    /// needs none: it stops things. (A cascade is judged when it starts.)
    fn permit_control(&self, c: &Command) -> Result<(), CommandError> {
        let (scope, approved) = match c {
            Command::Cascade(_) | Command::Freeze { frozen: true, .. } => return Ok(()),
            Command::Freeze {
                scope, approved, ..
            }
            | Command::Heal { scope, approved }
            | Command::RouteAround {
                scope, approved, ..
            }
            | Command::Reassign {
                scope, approved, ..
            } => (*scope, *approved),
            Command::Exclude { approved, .. } => (Scope::Global, *approved),
        };
        let (total_agents, active_agents) = self.global_counts();
        let ask = degrade::Ask {
            priority: 3,
            agents: 0,
            mesh_wide: scope == Scope::Global,
            approved,
            automated: false,
            total_agents,
            active_agents,
        };
        degrade::permit(self.mode, &ask)?;
        Ok(())
    }

    /// Whether the root takes `c` now: thawed scope, the mode's rules, room for it.
    pub(super) fn admit(&self, c: &CascadeCommand) -> Result<degrade::Admit, CommandError> {
        if let Some(f) = self.frozen_over(c.scope) {
            return Err(CommandError::Frozen(f));
        }
        let in_scope: u32 = sectors_in(self, c.scope)
            .iter()
            .filter_map(|s| self.sector_summaries.get(s))
            .map(|s| s.total_agents)
            .fold(0u32, u32::saturating_add);
        let agents = c.sample.map_or(in_scope, |n| n.min(in_scope));
        let (total_agents, active_agents) = self.global_counts();
        let admit = degrade::permit(
            self.mode,
            &degrade::Ask {
                priority: c.envelope.priority,
                agents,
                mesh_wide: c.scope == Scope::Global,
                approved: c.approved,
                automated: c.automated,
                total_agents,
                active_agents,
            },
        )?;
        let phases = match c.mode {
            CascadeMode::PriorityFirst => family::PHASES.len(),
            _ => 1,
        };
        if admit == degrade::Admit::Now && self.ops.root.len() + phases > MAX_OPS {
            return Err(CommandError::Busy(MAX_OPS));
        }
        Ok(admit)
    }

    /// Starts operation `op`: its orders go out (a priority-first operation's, for each of
    /// its phases).
    pub(super) fn launch(&mut self, op: OpId, c: CascadeCommand, tag: u64, now: Time) {
        let CascadeCommand {
            mode,
            scope,
            mut envelope,
            sample,
            budget_ms,
            class,
            window_ms,
            ..
        } = c;
        envelope.created_ms = now.as_millis();
        let degradation = self.mode.name();
        let root_op = |op: OpId, class, min_rate, part_of: Option<family::Part>| {
            let mut envelope = envelope.clone();
            envelope.op = op;
            // A priority-first phase's envelopes name the operation they are a phase of.
            envelope.causation = part_of.map(|p| p.family.0).or(envelope.causation);
            RootOp {
                mode,
                scope,
                envelope,
                sample,
                budget_ms: budget_ms.map(|b| b.min(qs_wire::mesh::MAX_TTL_MS)),
                class,
                min_rate,
                part_of,
                started: now,
                target: now,
                target_checked: false,
                window: Duration::ZERO,
                expect: BTreeSet::new(),
                expected_first: 0,
                tally: Tally::default(),
                answers: BTreeMap::new(),
                acks: BTreeSet::new(),
                votes: BTreeMap::new(),
                deadline: now,
                extended: false,
                extensions: BTreeSet::new(),
                window_ms: window_ms.map(|w| w.min(qs_wire::mesh::MAX_WINDOW_MS)),
                retry_of: None,
                earlier: Vec::new(),
                named: Vec::new(),
                root_messages: 0,
                degradation,
                tag,
            }
        };
        let mut ops = std::mem::take(&mut self.ops);
        if mode == CascadeMode::PriorityFirst {
            let phases: Vec<RootOp> = family::PHASES
                .iter()
                .enumerate()
                .map(|(index, (class, min_rate))| {
                    let part = family::Part { family: op, index };
                    root_op(OpId(self.next_id()), Some(*class), *min_rate, Some(part))
                })
                .collect();
            family::launch(&mut ops, self, op, phases, now);
        } else {
            let r = root_op(op, class, MeshNode::cascade_mode_window(mode).1, None);
            ops.root.insert(op, r);
            start_phase(&mut ops, self, op, now, now);
        }
        self.ops = ops;
    }
}
