//! The root's queue of non-urgent operations (seed §6.3, DEGRADED_MODERATE: "Queue
//! non-urgent operations"). An operation the mode queues waits here, in the order it came,
//! at most `MAX_QUEUED` of them; at each beat after the mode is DEGRADED_LIGHT or better
//! they start, oldest first, each checked again as a new command is (a scope frozen
//! meanwhile refuses it). One that waits `MAX_QUEUE_WAIT_MS` ends refused, and so does
//! every one at a node that is no longer the root.

use super::*;
use crate::mesh::degrade::Mode;
use qs_wire::mesh::Verb;

/// Most operations the root queues.
pub const MAX_QUEUED: usize = 64;
/// Longest an operation waits in the queue, milliseconds.
pub const MAX_QUEUE_WAIT_MS: u64 = 600_000;

/// One operation waiting.
#[derive(Clone, Debug)]
pub(crate) struct Queued {
    op: OpId,
    command: CascadeCommand,
    tag: u64,
    queued_at: Time,
}

/// What the root tells the shell of an operation it queued (the shell answers its asker
/// with it: the operation runs later, and its result goes to the ledger).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QueuedOp {
    pub op: OpId,
    #[serde(skip)]
    pub tag: u64,
    /// Its place in the queue, 1 the next to start.
    pub position: u32,
    /// The mode that queued it.
    pub mode: &'static str,
    /// What it waits for.
    pub waits_for: &'static str,
    pub max_wait_ms: u64,
}

/// A queued operation, as the status shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QueuedView {
    pub op: OpId,
    pub mode: CascadeMode,
    pub scope: Scope,
    pub priority: u8,
    pub verb: Verb,
    pub waited_ms: u64,
}

/// Queues `command` as operation `op`, or refuses it when the queue is full.
pub(super) fn push(
    node: &mut MeshNode,
    op: OpId,
    command: CascadeCommand,
    tag: u64,
    now: Time,
) -> Result<(), CommandError> {
    if node.ops.queued.len() >= MAX_QUEUED {
        return Err(CommandError::QueueFull(MAX_QUEUED));
    }
    node.ops.queued.push_back(Queued {
        op,
        command,
        tag,
        queued_at: now,
    });
    node.out.push_back(MeshOutput::Queued(QueuedOp {
        op,
        tag,
        position: node.ops.queued.len() as u32,
        mode: node.mode.name(),
        waits_for: Mode::DegradedLight.name(),
        max_wait_ms: MAX_QUEUE_WAIT_MS,
    }));
    Ok(())
}

/// At a beat: ends what waited too long (or everything, off the root), then starts what
/// the mode now lets start.
pub(crate) fn drain(node: &mut MeshNode, now: Time) {
    let max_wait = Duration::from_millis(MAX_QUEUE_WAIT_MS);
    let mut kept = std::collections::VecDeque::with_capacity(node.ops.queued.len());
    for q in std::mem::take(&mut node.ops.queued) {
        let waited = now.since(q.queued_at);
        let error = match node.is_root {
            false => CommandError::NotRoot {
                root: node.tree.root.as_ref().map(|r| r.to_string()),
            },
            true if waited >= max_wait => CommandError::Expired {
                op: q.op,
                waited_ms: waited.as_millis() as u64,
            },
            true => {
                kept.push_back(q);
                continue;
            }
        };
        node.out.push_back(MeshOutput::Refused {
            tag: q.tag,
            op: Some(q.op),
            error,
        });
    }
    node.ops.queued = kept;
    while node.mode <= Mode::DegradedLight
        && let Some(q) = node.ops.queued.pop_front()
    {
        match node.admit(&q.command) {
            Ok(degrade::Admit::Now) => node.launch(q.op, q.command, q.tag, now),
            Ok(degrade::Admit::Queue) | Err(CommandError::Busy(_)) => {
                // Full of operations (or queued again): it keeps its place for the next
                // beat.
                node.ops.queued.push_front(q);
                break;
            }
            Err(error) => node.out.push_back(MeshOutput::Refused {
                tag: q.tag,
                op: Some(q.op),
                error,
            }),
        }
    }
}

/// The queue, oldest first.
pub(crate) fn view(ops: &Ops, now: Time) -> Vec<QueuedView> {
    ops.queued
        .iter()
        .map(|q| QueuedView {
            op: q.op,
            mode: q.command.mode,
            scope: q.command.scope,
            priority: q.command.envelope.priority,
            verb: q.command.envelope.verb,
            waited_ms: now.since(q.queued_at).as_millis() as u64,
        })
        .collect()
}
