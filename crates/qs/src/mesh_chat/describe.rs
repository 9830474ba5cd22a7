//! The command line each intent is, as the console shows it before running it: `qs mesh
//! …` with its scope and flags, so the operator reads what will run.

use super::{DELEGATE_TIMEOUT_S, Intent};
use qs_wire::mesh::{CascadeMode, MeshAction, Scope, Verb};

fn scope_words(s: &Scope) -> String {
    match s {
        Scope::Global => String::new(),
        Scope::Sector(x) => format!(" sector {}", x.0),
        Scope::Cluster(x) => format!(" cluster {}", x.0),
    }
}

/// The command line an intent is.
pub(crate) fn describe_intent(i: &Intent) -> String {
    match i {
        Intent::Status(s) => format!("qs mesh status{}", scope_words(s)),
        Intent::Act(a) => describe(a),
        Intent::Acts(all) => all.iter().map(describe).collect::<Vec<_>>().join(", then "),
    }
}

/// The command line an action is, with `--approve` when the operator approved it.
pub(crate) fn describe(a: &MeshAction) -> String {
    match a.approved() {
        true => format!("{} --approve", command_line(a)),
        false => command_line(a),
    }
}

fn command_line(a: &MeshAction) -> String {
    match a {
        MeshAction::Freeze { scope } => format!("qs mesh freeze{}", scope_words(scope)),
        MeshAction::Thaw { scope, .. } => format!("qs mesh thaw{}", scope_words(scope)),
        MeshAction::Heal { scope, .. } => format!("qs mesh heal{}", scope_words(scope)),
        MeshAction::RouteAround {
            scope,
            slower_than_ms,
            for_ms,
            ..
        } => format!(
            "qs mesh route-around{} --slower-than {slower_than_ms} --for {}",
            scope_words(scope),
            for_ms / 1_000
        ),
        MeshAction::Reassign {
            scope,
            slower_than_ms,
            ..
        } => format!(
            "qs mesh reassign{} --slower-than {slower_than_ms}",
            scope_words(scope)
        ),
        MeshAction::Exclude {
            class, capability, ..
        } => format!(
            "qs mesh exclude --class {} --capability {capability}",
            class.letter()
        ),
        MeshAction::Include {
            class, capability, ..
        } => format!(
            "qs mesh include --class {} --capability {capability}",
            class.letter()
        ),
        MeshAction::Cascade {
            verb: Verb::Observe,
            payload,
            sample,
            scope,
            ..
        } => format!(
            "qs mesh ask {payload:?} --sample {}{}",
            sample.unwrap_or(100),
            scope_flag(scope)
        ),
        MeshAction::Cascade {
            verb: Verb::Act,
            payload,
            requires,
            scope,
            class,
            window_ms,
            ..
        } => {
            let capability = requires
                .as_ref()
                .map_or(String::new(), |c| format!(" --capability {c}"));
            let to = class.map_or(String::new(), |k| format!(" --to {}", k.letter()));
            let timeout = match window_ms.map(|w| w / 1_000) {
                Some(DELEGATE_TIMEOUT_S) | None => String::new(),
                Some(s) => format!(" --timeout {s}"),
            };
            format!(
                "qs mesh delegate {payload:?}{capability}{to}{timeout}{}",
                scope_flag(scope)
            )
        }
        MeshAction::Cascade {
            mode,
            payload,
            priority,
            scope,
            ..
        } => {
            let mode = match mode {
                CascadeMode::Wave => "wave",
                CascadeMode::Parallel => "parallel",
                CascadeMode::PriorityFirst => "priority-first",
            };
            let scope = scope_flag(scope);
            format!("qs mesh broadcast {payload:?} --mode {mode} --priority {priority}{scope}")
        }
    }
}

/// A scope as the `--scope` flag writes it (nothing for the whole mesh).
fn scope_flag(scope: &Scope) -> String {
    match scope {
        Scope::Global => String::new(),
        s => format!(
            " --scope{}",
            scope_words(s).replace(' ', "-").replacen('-', " ", 1)
        ),
    }
}
