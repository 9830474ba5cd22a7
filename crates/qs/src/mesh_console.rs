//! `qs mesh`: the operator's console of seed 001 Part 7, through the agent's API
//! (`GET /v1/mesh`, `POST /v1/mesh/ops`): status, broadcast, ask, delegate, cascade, heal,
//! freeze and thaw, route-around, reassign, and the capability mapping (exclude, include);
//! and `qs mesh chat`, which reads requests in plain words through a grammar
//! of intents (or an OpenAI-compatible endpoint, when one is named), shows the command it
//! will run and asks before running it.

use crate::mesh_chat::delegation;
use crate::mesh_client::{class_of, control, heal_scope, op, scope_of, status};
use crate::render::OutputFormat;
use anyhow::{Result, bail};
use clap::Subcommand;
use qs_wire::mesh::{MeshAction, Scope, Verb};

/// A rule of the capability mapping, as `exclude` and `include` name it.
#[derive(clap::Args, Debug)]
pub struct RuleArgs {
    /// A class: A to F (or CLASS_E_LOCAL, local).
    #[arg(long)]
    class: String,
    #[arg(long)]
    capability: String,
    /// An operator's approval, which degraded modes ask for (seed §6.3).
    #[arg(long)]
    approve: bool,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
}

#[derive(Subcommand, Debug)]
pub enum MeshCmd {
    /// The mesh's state: mode, agents, sectors (or one sector, or the clusters this node
    /// leads), breakers, conflicts, KPIs.
    Status {
        /// `sector N` (or `S7`, `SECTOR-7`), `cluster N` (or `C12`); default the whole mesh.
        target: Vec<String>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Send a message to every agent (a wave; `--mode parallel` for urgent ones).
    Broadcast {
        message: String,
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=3))]
        priority: u8,
        #[arg(long, default_value = "wave")]
        mode: String,
        /// Only this sector or cluster.
        #[arg(long)]
        scope: Option<String>,
        /// An operator's approval, which degraded modes ask for.
        #[arg(long)]
        approve: bool,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Ask a sample of agents a question; their answers, counted.
    Ask {
        question: String,
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        sample: u32,
        /// Only agents with this capability.
        #[arg(long)]
        capability: Option<String>,
        /// Only this sector or cluster.
        #[arg(long)]
        scope: Option<String>,
        /// 0 background … 3 critical (degraded modes take only critical operations).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=3))]
        priority: u8,
        #[arg(long)]
        approve: bool,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Hand a task to the best available agent (the lowest impedance, with the capability
    /// and of the class if named); its answer, and who gave it.
    Delegate {
        task: String,
        #[arg(long)]
        capability: Option<String>,
        /// A class: A to F (or CLASS_D_GPU, gpu), or best_available.
        #[arg(long, default_value = "best_available")]
        to: String,
        /// How long to wait for the agent's answer, seconds (if it has not answered then, its
        /// lead waits once more, at most a second: seed §5.2's WAIT).
        #[arg(long, default_value_t = crate::mesh_chat::DELEGATE_TIMEOUT_S,
              value_parser = clap::value_parser!(u64).range(1..=qs_wire::mesh::MAX_WINDOW_MS / 1_000))]
        timeout: u64,
        /// Only this sector or cluster.
        #[arg(long)]
        scope: Option<String>,
        /// 0 background … 3 critical (degraded modes take only critical operations).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=3))]
        priority: u8,
        /// An operator's approval, which degraded modes ask for (seed §6.3).
        #[arg(long)]
        approve: bool,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Any cascade: wave, parallel or priority-first.
    Cascade {
        payload: String,
        #[arg(long, default_value = "wave")]
        mode: String,
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=3))]
        priority: u8,
        /// How far ahead the agents are to be ready, milliseconds (default: from impedance).
        #[arg(long)]
        budget_ms: Option<u64>,
        #[arg(long)]
        approve: bool,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Close the breakers of a scope, release its quarantined and held-out agents and its
    /// conflicts, ask its crashed agents' restarts, thaw it (`auto`, the seed's default, or
    /// none: the whole mesh; a heal changes only what is broken).
    Heal {
        target: Vec<String>,
        /// An operator's approval, which degraded modes ask for (seed §6.3).
        #[arg(long)]
        approve: bool,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Halt operations in a scope (default the whole mesh).
    Freeze {
        target: Vec<String>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Resume operations in a scope.
    Thaw {
        target: Vec<String>,
        /// An operator's approval, which degraded modes ask for (seed §6.3).
        #[arg(long)]
        approve: bool,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Hold the agents of a scope slower than a threshold out of the routing pool for a
    /// while (a heal takes them back at once).
    RouteAround {
        target: Vec<String>,
        /// Agents whose impedance is over this, milliseconds.
        #[arg(long, default_value_t = crate::mesh_chat::SLOW_MS,
              value_parser = clap::value_parser!(u64).range(0..=qs_wire::mesh::MAX_SLOWER_THAN_MS))]
        slower_than: u64,
        /// For how long, seconds.
        #[arg(long = "for", default_value_t = crate::mesh_chat::ROUTE_AROUND_S,
              value_parser = clap::value_parser!(u64).range(1..=qs_wire::mesh::MAX_HELD_MS / 1_000))]
        for_s: u64,
        /// An operator's approval, which degraded modes ask for (seed §6.3).
        #[arg(long)]
        approve: bool,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Take the tasks the worker agents of a scope slower than a threshold hold from them:
    /// back in their nodes' queues, for other workers (seed §7.2's "reassign the task").
    Reassign {
        target: Vec<String>,
        /// Agents whose impedance is over this, milliseconds.
        #[arg(long, default_value_t = crate::mesh_chat::SLOW_MS,
              value_parser = clap::value_parser!(u64).range(0..=qs_wire::mesh::MAX_SLOWER_THAN_MS))]
        slower_than: u64,
        /// An operator's approval, which degraded modes ask for (seed §6.3).
        #[arg(long)]
        approve: bool,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Keep the agents of an impedance class out of the routing of every operation that
    /// requires a capability, mesh-wide (seed §7.2's "fix the capability mapping"); `qs mesh
    /// status` lists the rules held.
    Exclude(RuleArgs),
    /// Lift an exclusion: the class's agents with the capability are routed to again.
    Include(RuleArgs),
    /// Plain-words requests: shows the command each becomes and asks before running it.
    Chat {
        /// An OpenAI-compatible endpoint (e.g. the fleet's own gateway,
        /// http://127.0.0.1:7070/v1) to read requests the grammar does not know.
        #[arg(long)]
        llm: Option<String>,
        /// The model to ask there.
        #[arg(long, default_value = "default")]
        llm_model: String,
        /// The endpoint's key, sent as its bearer token (the qs API's token never is).
        #[arg(long, env = "QS_LLM_KEY", hide_env_values = true)]
        llm_key: Option<String>,
        /// Run each command without asking (for scripts).
        #[arg(long)]
        yes: bool,
    },
}

pub fn run(api: &str, cmd: MeshCmd) -> Result<()> {
    match cmd {
        MeshCmd::Status { target, output } => {
            status(api, &scope_of(&target.join(" "))?, output).map(|_| ())
        }
        MeshCmd::Broadcast {
            message,
            priority,
            mode,
            scope,
            approve,
            output,
        } => {
            let scope = scope_of(scope.as_deref().unwrap_or(""))?;
            let action = cascade(
                &mode,
                scope,
                Verb::Sync,
                message,
                priority,
                None,
                None,
                approve,
            )?;
            op(api, &action, output)
        }
        MeshCmd::Ask {
            question,
            sample,
            capability,
            scope,
            priority,
            approve,
            output,
        } => {
            let mut action = cascade(
                "wave",
                scope_of(scope.as_deref().unwrap_or(""))?,
                Verb::Observe,
                question,
                priority,
                Some(sample),
                None,
                approve,
            )?;
            set_requires(&mut action, capability);
            op(api, &action, output)
        }
        MeshCmd::Delegate {
            task,
            capability,
            to,
            timeout,
            scope,
            priority,
            approve,
            output,
        } => {
            let scope = scope_of(scope.as_deref().unwrap_or(""))?;
            let mut action = delegation(scope, task, capability, class_of(&to)?, timeout);
            if let MeshAction::Cascade { priority: p, .. } = &mut action {
                *p = priority;
            }
            if approve {
                action.approve();
            }
            op(api, &action, output)
        }
        MeshCmd::Cascade {
            payload,
            mode,
            priority,
            budget_ms,
            approve,
            output,
        } => {
            let action = cascade(
                &mode,
                Scope::Global,
                Verb::Sync,
                payload,
                priority,
                None,
                budget_ms,
                approve,
            )?;
            op(api, &action, output)
        }
        MeshCmd::Heal {
            target,
            approve,
            output,
        } => {
            let scope = heal_scope(&target.join(" "))?;
            let action = MeshAction::Heal {
                scope,
                approved: approve,
            };
            control(api, action, output).map(drop)
        }
        MeshCmd::Freeze { target, output } => {
            let scope = scope_of(&target.join(" "))?;
            control(api, MeshAction::Freeze { scope }, output).map(drop)
        }
        MeshCmd::Thaw {
            target,
            approve,
            output,
        } => {
            let scope = scope_of(&target.join(" "))?;
            let action = MeshAction::Thaw {
                scope,
                approved: approve,
            };
            control(api, action, output).map(drop)
        }
        MeshCmd::RouteAround {
            target,
            slower_than,
            for_s,
            approve,
            output,
        } => {
            let scope = scope_of(&target.join(" "))?;
            let mut action = crate::mesh_chat::route_around(scope, slower_than, for_s);
            if approve {
                action.approve();
            }
            control(api, action, output).map(drop)
        }
        MeshCmd::Reassign {
            target,
            slower_than,
            approve,
            output,
        } => {
            let scope = scope_of(&target.join(" "))?;
            let action = MeshAction::Reassign {
                scope,
                slower_than_ms: slower_than,
                approved: approve,
            };
            control(api, action, output).map(drop)
        }
        MeshCmd::Exclude(r) => rule(api, r, true),
        MeshCmd::Include(r) => rule(api, r, false),
        MeshCmd::Chat {
            llm,
            llm_model,
            llm_key,
            yes,
        } => {
            let llm = llm.as_deref().map(|url| crate::mesh_chat::Llm {
                url,
                model: &llm_model,
                key: llm_key.as_deref(),
            });
            crate::mesh_chat::chat(api, llm, yes)
        }
    }
}

/// The capability mapping's rule of `--class` (one class, never "best available") and
/// `capability`, excluded or (not `excluded`) included again.
fn rule(api: &str, r: RuleArgs, excluded: bool) -> Result<()> {
    let RuleArgs {
        class,
        capability,
        approve,
        output,
    } = r;
    let Ok(Some(class)) = class_of(&class) else {
        bail!("--class {class:?}: a class A to F (or CLASS_E_LOCAL, local)");
    };
    let action = match excluded {
        true => MeshAction::Exclude {
            class,
            capability,
            approved: approve,
        },
        false => MeshAction::Include {
            class,
            capability,
            approved: approve,
        },
    };
    control(api, action, output).map(drop)
}

#[allow(clippy::too_many_arguments)]
fn cascade(
    mode: &str,
    scope: Scope,
    verb: Verb,
    payload: String,
    priority: u8,
    sample: Option<u32>,
    budget_ms: Option<u64>,
    approved: bool,
) -> Result<MeshAction> {
    let Some(mode) = qs_sim::mesh::parse_mode(mode) else {
        bail!("--mode {mode:?}: wave, parallel or priority-first");
    };
    Ok(MeshAction::Cascade {
        mode,
        scope,
        verb,
        payload,
        priority,
        sample,
        budget_ms,
        requires: None,
        approved,
        class: None,
        window_ms: None,
    })
}

fn set_requires(action: &mut MeshAction, capability: Option<String>) {
    if let MeshAction::Cascade { requires, .. } = action {
        *requires = capability;
    }
}
