//! What an operator's request becomes in the core ([`command`]), and what the ledger records
//! of the core's outputs: an operation's end ([`operation_event`]), a conflict
//! ([`conflict_event`]), an agent quarantined ([`quarantine_event`]).

use crate::clock::now;
use qs_core::mesh::conflict::Record;
use qs_core::mesh::{CascadeCommand, Command, MeshInput, MeshNode, OpResult, Quarantined};
use qs_wire::mesh::{Exclusion, MeshAction, wire_name};

/// An operator's action as the core's command: its answer comes as the core's output (a
/// cascade's result, a control's report once the nodes in scope confirmed it, a refusal).
pub(super) fn command(node: &mut MeshNode, action: MeshAction, tag: u64) {
    let t = now();
    let command = match action {
        MeshAction::Cascade {
            mode,
            scope,
            verb,
            payload,
            priority,
            sample,
            budget_ms,
            requires,
            approved,
            class,
            window_ms,
        } => {
            let mut envelope = node.envelope(verb, &payload, priority, t);
            envelope.requires = requires;
            Command::Cascade(CascadeCommand {
                mode,
                scope,
                envelope,
                sample,
                budget_ms,
                approved,
                automated: false,
                class,
                window_ms,
            })
        }
        MeshAction::Freeze { scope } => Command::Freeze {
            scope,
            frozen: true,
            approved: false,
        },
        MeshAction::Thaw { scope, approved } => Command::Freeze {
            scope,
            frozen: false,
            approved,
        },
        MeshAction::Heal { scope, approved } => Command::Heal { scope, approved },
        MeshAction::RouteAround {
            scope,
            slower_than_ms,
            for_ms,
            approved,
        } => Command::RouteAround {
            scope,
            slower_than_ms,
            for_ms,
            approved,
        },
        MeshAction::Reassign {
            scope,
            slower_than_ms,
            approved,
        } => Command::Reassign {
            scope,
            slower_than_ms,
            approved,
        },
        MeshAction::Exclude {
            class,
            capability,
            approved,
        } => Command::Exclude {
            rule: Exclusion { class, capability },
            excluded: true,
            approved,
        },
        MeshAction::Include {
            class,
            capability,
            approved,
        } => Command::Exclude {
            rule: Exclusion { class, capability },
            excluded: false,
            approved,
        },
    };
    node.handle(MeshInput::Command { command, tag }, t);
}

/// The ledger's record of an operation's end.
pub(super) fn operation_event(r: &OpResult) -> qs_wire::Event {
    qs_wire::Event::MeshOperation {
        op: r.op.0,
        mode: wire_name(&r.mode),
        scope: r.scope.to_string(),
        status: r.status.to_owned(),
        decision: r.decision.name().to_owned(),
        sent: r.tally.sent,
        ready: r.tally.ready,
        latency_ms: r.latency_ms.max(0.0).round() as u64,
        error: None,
        phases: r
            .phases
            .iter()
            .filter(|p| p.op != r.op)
            .map(|p| p.op.0)
            .collect(),
    }
}

/// The ledger's record of a conflict (the conflict log is the ledger's: append-only).
pub(super) fn conflict_event(c: Record) -> qs_wire::Event {
    qs_wire::Event::MeshConflict {
        seq: c.seq,
        op: c.op.0,
        agent: c.agent.0,
        cluster: c.cluster.0,
        class: format!("{:?}", c.class),
        priority: c.priority,
        strategy: format!("{:?}", c.strategy),
        escalation: format!("{:?}", c.escalation),
        due_ms: c.due_ms,
        escalated_by: c.escalated_by.map(|n| n.to_string()),
        handed_by: c.handed_by.map(|n| n.to_string()),
        detail: serde_json::to_string(&c.detail).unwrap_or_default(),
    }
}

/// The ledger's record of an agent quarantined for byzantine behaviour (for forensics).
pub(super) fn quarantine_event(q: Quarantined) -> qs_wire::Event {
    qs_wire::Event::MeshAgentQuarantined {
        agent: q.agent.0,
        cluster: q.cluster.0,
        host: q.host.to_string(),
        op: q.op.0,
        disagreements: q.disagreements,
        answer: q.answer,
        majority: q.majority,
    }
}
