//! Seed §7.2's replies to slow agents, driven through `MeshNode::handle` on a virtual
//! clock: a route-around holds the agents over a threshold out of the routing pool for a
//! while, and a reassignment asks the hosts of those on tasks to take the tasks from them;
//! the root reports how many and names the slowest, with what each works on.

mod common;

use common::*;
use qs_core::mesh::{Command, MeshOutput};
use qs_wire::NodeId;
use qs_wire::mesh::{AgentId, Busy, ControlAction, MAX_ROUTED_NAMED, MeshMessage, Scope};
use std::collections::BTreeSet;

/// Seed §7.2's "route around them for now": the agents in scope in the routing pool whose
/// impedance is over the threshold are held out of it for a while (none when none is over
/// it), come back by themselves after it, and a heal takes them back at once.
#[test]
fn a_route_around_holds_slow_agents_out_until_its_time_or_a_heal() {
    let (mut root, mut lead) = mesh();
    let everyone: BTreeSet<AgentId> = pool(&lead.node);
    assert_eq!(everyone.len(), 20);
    let around = |slower_than_ms, for_ms| Command::RouteAround {
        scope: Scope::Global,
        slower_than_ms,
        for_ms,
        approved: false,
    };
    // Nobody is slower than an hour.
    command(&mut root, around(3_600_000, 60_000), 1, lead.now);
    let r = reports(&exchange(&mut root, &mut lead, None));
    assert_eq!((r[0].agents_routed_around, r[0].confirmed), (0, 2));
    // Everyone is slower than 0 ms: all held out for 2 s, then back. The report names the
    // slowest eight (a node names no more), slowest first, with what each works on as its
    // host says it (seed §7.2: "show me what they're stuck on"), for how long by then.
    let since_ms = lead.now.as_millis() - 5_000;
    lead.busy = Some(Busy::new(
        "task t-1: summarize",
        "waiting on GPU memory",
        since_ms,
    ));
    lead.run(600);
    command(&mut root, around(0, 2_000), 2, lead.now);
    let r = reports(&exchange(&mut root, &mut lead, None));
    assert_eq!(r[0].agents_routed_around, 20, "{r:?}");
    assert_eq!((r[0].slower_than_ms, r[0].for_ms), (0, 2_000));
    assert_eq!(r[0].routed.len(), MAX_ROUTED_NAMED, "{r:?}");
    let impedances: Vec<f64> = r[0].routed.iter().map(|a| a.impedance_ms).collect();
    assert!(impedances.is_sorted_by(|a, b| a >= b), "{impedances:?}");
    for a in &r[0].routed {
        match lead.theirs.contains(&a.agent) {
            true => {
                let busy = a.busy.as_ref().expect("busy, as its host said");
                assert_eq!(busy.with, "task t-1: summarize");
                assert_eq!(busy.note, "waiting on GPU memory");
                assert!((5_600..6_000).contains(&a.busy_for_ms), "{a:?}");
            }
            false => assert_eq!((&a.busy, a.busy_for_ms), (&None, 0), "{a:?}"),
        }
    }
    assert!(r[0].routed.iter().any(|a| a.busy.is_some()), "{r:?}");
    lead.busy = None;
    assert!(pool(&lead.node).is_empty());
    lead.run(1_500);
    assert!(pool(&lead.node).is_empty(), "held for 2 s");
    lead.run(1_000);
    assert_eq!(pool(&lead.node), everyone, "back after");
    // Held for ten minutes, then healed: back at the next beat.
    command(&mut root, around(0, 600_000), 3, lead.now);
    exchange(&mut root, &mut lead, None);
    assert!(pool(&lead.node).is_empty());
    command(
        &mut root,
        Command::Heal {
            scope: Scope::Global,
            approved: false,
        },
        4,
        lead.now,
    );
    let r = reports(&exchange(&mut root, &mut lead, None));
    assert_eq!(r[0].agents_released, 20, "{r:?}");
    lead.run(400);
    assert_eq!(pool(&lead.node), everyone);
    // A route-around's numbers are checked where the command is taken.
    command(&mut root, around(0, 10), 5, lead.now);
    let refused = drain(&mut root).into_iter().any(|o| {
        matches!(o, MeshOutput::Refused { tag: 5, error, .. } if error.to_string().contains("for_ms"))
    });
    assert!(refused);
}

/// Seed §7.2's "reassign the task": the lead asks the host of each agent in scope whose
/// impedance is over the threshold and that works on a task (as its host says) to take the
/// task from it; agents on other work, or on none, are left alone. The root reports how many
/// and names the slowest, with what each was on.
#[test]
fn a_reassignment_asks_the_hosts_of_slow_agents_on_tasks_for_their_tasks() {
    let (mut root, mut lead) = mesh();
    let reassign = |slower_than_ms| Command::Reassign {
        scope: Scope::Global,
        slower_than_ms,
        approved: false,
    };
    let asked = |out: &[MeshOutput]| -> Vec<(NodeId, AgentId)> {
        out.iter()
            .filter_map(|o| match o {
                MeshOutput::Send {
                    to,
                    msg: MeshMessage::Reassign(r),
                } => {
                    let task = r.task.as_ref().map(|t| t.as_str());
                    assert_eq!(task, Some("t-1"), "the task the lead saw: {r:?}");
                    Some((to.clone(), r.agent))
                }
                _ => None,
            })
            .collect()
    };
    // On an operation, not a task: nothing to take.
    let since_ms = lead.now.as_millis() - 5_000;
    lead.busy = Some(Busy::new("act: deploy", "", since_ms));
    lead.run(600);
    command(&mut root, reassign(0), 1, lead.now);
    let out = exchange(&mut root, &mut lead, None);
    assert_eq!(asked(&out), []);
    assert_eq!(reports(&out)[0].agents_reassigned, 0);
    // On a task: each of the other host's agents, asked of that host.
    lead.busy = Some(Busy::task(
        "t-1",
        "summarize",
        "waiting on GPU memory",
        since_ms,
    ));
    lead.run(600);
    command(&mut root, reassign(0), 2, lead.now);
    let out = exchange(&mut root, &mut lead, None);
    let mut expected: Vec<(NodeId, AgentId)> = lead
        .theirs
        .iter()
        .map(|a| (lead.other.clone(), *a))
        .collect();
    let mut got = asked(&out);
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    let r = reports(&out);
    assert_eq!(
        (r[0].action, r[0].agents_reassigned),
        (ControlAction::Reassign, 10)
    );
    assert_eq!(r[0].routed.len(), MAX_ROUTED_NAMED, "{r:?}");
    assert!(
        r[0].routed
            .iter()
            .all(|a| a.busy.as_ref().and_then(Busy::task_id).is_some())
    );
    // None slower than an hour; the threshold is checked where the command is taken.
    command(&mut root, reassign(3_600_000), 3, lead.now);
    assert_eq!(asked(&exchange(&mut root, &mut lead, None)), []);
    command(&mut root, reassign(3_600_001), 4, lead.now);
    let refused = drain(&mut root).into_iter().any(|o| {
        matches!(o, MeshOutput::Refused { tag: 4, error, .. } if error.to_string().contains("slower_than_ms"))
    });
    assert!(refused);
}
