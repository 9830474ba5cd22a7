//! Seed §5.2's RETRY carried out: a wave whose quorum says RETRY at its end (too few READY,
//! few in transit, few conflicts) and could reach it, were all it sends again READY, is
//! retried once, under a number of its own, with the same message: the lead counts its agents READY before as sent and READY without sending them
//! it again, and those it still awaits as in transit; the others are sent it again. The
//! result is the retry's, the first attempt's in its phase's `earlier`.
//!
//! A root (also the sector's coordinator) and one cluster's lead of 20 agents (10 its own,
//! 10 on another host), driven through `MeshNode::handle` on a virtual clock.

mod common;

use common::*;
use qs_core::mesh::{CascadeCommand, Command, MeshInput, MeshNode, MeshOutput, OpResult};
use qs_wire::mesh::{AgentId, CascadeMode, Dispatch, MeshMessage, OpId, Scope, Verb};
use std::collections::BTreeMap;

/// What an agent does with the message, in one attempt.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Does {
    Ready,
    Conflict,
    /// Answers READY this long after it got it (past the first window: late there).
    ReadyAfter(u64),
    Never,
}

struct Row {
    name: &'static str,
    mode: CascadeMode,
    /// Of the 20 agents (by index), what each does in the first attempt and in a retry
    /// (the rest: READY at once in both).
    first: &'static [(usize, Does)],
    again: &'static [(usize, Does)],
    /// The result: its decision, the attempts before it, its READY and carried.
    decision: &'static str,
    earlier: usize,
    ready: u32,
    carried: u32,
    /// Agents sent the message twice.
    twice: usize,
}

const TABLE: &[Row] = &[
    Row {
        name: "a quorum: no retry",
        mode: CascadeMode::Wave,
        first: &[(0, Does::Conflict)],
        again: &[],
        decision: "PROCEED",
        earlier: 0,
        ready: 19,
        carried: 0,
        twice: 0,
    },
    Row {
        name: "RETRY: the agent in conflict is sent it again and agrees; the silent one not",
        mode: CascadeMode::Wave,
        first: &[(0, Does::Conflict), (2, Does::Never)],
        again: &[],
        decision: "PROCEED",
        earlier: 1,
        ready: 19,
        carried: 18,
        twice: 1,
    },
    Row {
        name: "RETRY again: retried once only",
        mode: CascadeMode::Wave,
        first: &[(0, Does::Conflict), (2, Does::Never)],
        again: &[(0, Does::Conflict)],
        decision: "RETRY",
        earlier: 1,
        ready: 18,
        carried: 18,
        twice: 1,
    },
    Row {
        name: "the silent one answers late while the retry gathers: READY there too",
        mode: CascadeMode::Wave,
        first: &[(0, Does::Conflict), (1, Does::ReadyAfter(400))],
        again: &[(0, Does::Conflict)],
        decision: "PROCEED",
        earlier: 1,
        ready: 19,
        carried: 18,
        twice: 1,
    },
    Row {
        name: "RETRY with those short all still awaited: nothing to send again, no retry",
        mode: CascadeMode::Wave,
        first: &[(0, Does::Never), (1, Does::Never)],
        again: &[],
        decision: "RETRY",
        earlier: 0,
        ready: 18,
        carried: 0,
        twice: 0,
    },
    Row {
        name: "the urgent mode is not retried",
        mode: CascadeMode::Parallel,
        first: &[(0, Does::Conflict), (1, Does::Never), (2, Does::Never)],
        again: &[],
        decision: "RETRY",
        earlier: 0,
        ready: 17,
        carried: 0,
        twice: 0,
    },
];

#[test]
fn a_phase_whose_quorum_says_retry_is_retried_once_to_those_not_ready() {
    for row in TABLE {
        let (result, sent) = run(row);
        let phase = &result.phases[0];
        let t = result.tally;
        assert_eq!(
            (
                result.decision.name(),
                phase.earlier.len(),
                t.ready,
                t.carried
            ),
            (row.decision, row.earlier, row.ready, row.carried),
            "{}: {t:?}",
            row.name
        );
        if let Some(first) = phase.earlier.first() {
            assert_eq!(first.decision, "RETRY", "{}", row.name);
            // The same message, under a number of its own.
            assert_ne!(first.op, phase.op, "{}", row.name);
            // Started at the first attempt's end, with no shorter a budget (an operator's is
            // kept; the window grows).
            let own_ms = phase.target_after_ms - first.latency_ms;
            assert!(
                own_ms >= first.target_after_ms - 1.0,
                "{}: {own_ms} ms after its start, the first {} ms",
                row.name,
                first.target_after_ms
            );
            // The operation's result, under the number its asker was told.
            assert_eq!(result.op, first.op, "{}", row.name);
        }
        let twice = sent.values().filter(|n| **n > 1).count();
        assert_eq!(twice, row.twice, "{}: sent {sent:?}", row.name);
        assert!(sent.values().all(|n| *n <= 2), "{}: {sent:?}", row.name);
    }
}

/// One cascade of `row`'s mode over the cluster, each agent doing what `row` says: the
/// operation's result, and how many times each agent was sent the message.
fn run(row: &Row) -> (OpResult, BTreeMap<AgentId, u32>) {
    let (mut root, mut lead) = mesh();
    let agents: Vec<AgentId> = lead.node.tree().clusters[0].agents.clone();
    let mut envelope = root.envelope(Verb::Sync, "a fact", 2, lead.now);
    envelope.ttl_ms = 10_000;
    let command = Command::Cascade(CascadeCommand {
        budget_ms: Some(300),
        ..CascadeCommand::new(row.mode, Scope::Global, envelope)
    });
    root.handle(MeshInput::Command { command, tag: 7 }, lead.now);
    let mut attempts: Vec<OpId> = Vec::new();
    let mut sent: BTreeMap<AgentId, u32> = BTreeMap::new();
    let mut held: Vec<(u64, Dispatch)> = Vec::new();
    for _ in 0..400 {
        let out = step(&mut root, &mut lead);
        let now = lead.now.as_millis();
        for o in &out {
            if let MeshOutput::Finished(r) = o {
                return (r.clone(), sent);
            }
        }
        let mut due: Vec<Dispatch> = held
            .iter()
            .filter(|(at, _)| *at <= now)
            .map(|(_, d)| d.clone())
            .collect();
        held.retain(|(at, _)| *at > now);
        for d in handed(out) {
            if !attempts.contains(&d.envelope.op) {
                attempts.push(d.envelope.op);
            }
            *sent.entry(d.agent).or_default() += 1;
            let i = agents
                .iter()
                .position(|a| *a == d.agent)
                .expect("its agent");
            let plan = match attempts.iter().position(|o| *o == d.envelope.op) {
                Some(0) => row.first,
                _ => row.again,
            };
            let does = plan
                .iter()
                .find(|(k, _)| *k == i)
                .map_or(Does::Ready, |(_, d)| *d);
            match does {
                Does::Ready => due.push(d),
                Does::ReadyAfter(ms) => held.push((now + ms, d)),
                Does::Conflict => answer(&mut root, &mut lead, &d, true),
                Does::Never => {}
            }
        }
        for d in due {
            answer(&mut root, &mut lead, &d, false);
        }
    }
    panic!("{}: no result within 4 s", row.name)
}

/// The dispatches in `out`: to the other host's agents, or the lead's own.
fn handed(out: Vec<MeshOutput>) -> Vec<Dispatch> {
    out.into_iter()
        .filter_map(|o| match o {
            MeshOutput::Send {
                msg: MeshMessage::Dispatch(d),
                ..
            } => Some(*d),
            MeshOutput::Deliver(d) => Some(d),
            _ => None,
        })
        .collect()
}

/// `d`'s agent answers, READY or with a conflict, through its host, to whom `d` says (the
/// lead, or in the urgent mode the root).
fn answer(root: &mut MeshNode, lead: &mut Lead, d: &Dispatch, conflict: bool) {
    let host = lead.node.tree().host_of(d.agent).cloned();
    let from = host.filter(|h| h != lead.node.id());
    let conflict = conflict.then(contradiction);
    let to = match (&from, d.reply_to == *root.id()) {
        (Some(_), true) => root,
        _ => &mut lead.node,
    };
    answer_dispatch(to, d, from.as_ref(), 2, conflict, lead.now);
}

/// 10 ms of the lead's beats and ticks, and the root's, their messages passed: what else
/// they put out.
fn step(root: &mut MeshNode, lead: &mut Lead) -> Vec<MeshOutput> {
    let out = lead.run(10);
    let now = lead.now;
    let me = lead.node.id().clone();
    let mut other = Vec::new();
    for o in out {
        match o {
            MeshOutput::Send { to, msg } if to == *root.id() => {
                let from = me.clone();
                root.handle(MeshInput::Heard { from, msg }, now);
            }
            MeshOutput::Send { to, msg } if to == me => {
                let from = me.clone();
                lead.node.handle(MeshInput::Heard { from, msg }, now);
            }
            o => other.push(o),
        }
    }
    root.handle(MeshInput::Tick, now);
    other.extend(exchange(root, lead, None));
    other
}
