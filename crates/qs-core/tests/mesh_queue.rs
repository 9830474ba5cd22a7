//! Seed §6.3's DEGRADED_MODERATE queues non-urgent operations: the root answers that it
//! queued one, holds it (bounded, oldest first) while the mode lasts, starts it once the
//! mode is DEGRADED_LIGHT or better, and refuses it when it waited too long or its scope
//! was frozen meanwhile. Urgent operations go at once.

mod common;

use common::*;
use qs_core::Time;
use qs_core::mesh::degrade::Mode;
use qs_core::mesh::{
    CascadeCommand, Command, CommandError, MAX_QUEUE_WAIT_MS, MAX_QUEUED, MeshConfig, MeshInput,
    MeshNode, MeshOutput,
};
use qs_wire::NodeId;
use qs_wire::mesh::{CascadeMode, MeshMessage, OpId, Scope, Verb};
use std::time::Duration;

/// The root (p1) of a mesh of one sector coordinated by p2, which says `active` of its 20
/// agents are active; after a beat, so its mode is known.
struct Root {
    node: MeshNode,
    p2: NodeId,
    now: Time,
}

impl Root {
    fn new(active: u32) -> Root {
        let pair = pair();
        let tree = pair.roles(&pair.p2, &pair.p2, &pair.p1);
        let now = Time::from_millis(1_000);
        let node = node_in(&pair.p1, MeshConfig::default(), &tree, now);
        let mut root = Root {
            node,
            p2: pair.p2.clone(),
            now,
        };
        root.beat(active);
        root
    }

    /// A beat later: p2's summary heard, the root's beat; what it put out.
    fn beat(&mut self, active: u32) -> Vec<MeshOutput> {
        self.now = self.now + Duration::from_millis(MeshConfig::default().beat_ms);
        self.at(self.now, active)
    }

    /// At `now`: p2's summary heard, the root's beat; what it put out.
    fn at(&mut self, now: Time, active: u32) -> Vec<MeshOutput> {
        self.now = now;
        let summary = sector_summary(0, &self.p2, 20, active, now);
        self.node.handle(
            MeshInput::Heard {
                from: self.p2.clone(),
                msg: MeshMessage::Sector(Box::new(summary)),
            },
            now,
        );
        self.node.handle(MeshInput::Tick, now);
        drain(&mut self.node)
    }

    /// A wave over the sector at `priority`, tagged `tag`; what the root put out.
    fn ask(&mut self, priority: u8, tag: u64) -> Vec<MeshOutput> {
        let envelope = self
            .node
            .envelope(Verb::Observe, "ready?", priority, self.now);
        let scope = Scope::Sector(qs_wire::mesh::SectorId(0));
        let command = Command::Cascade(CascadeCommand {
            budget_ms: Some(100),
            ..CascadeCommand::new(CascadeMode::Wave, scope, envelope)
        });
        self.node
            .handle(MeshInput::Command { command, tag }, self.now);
        drain(&mut self.node)
    }
}

/// The operations ordered in `out` (to p2, the sector's coordinator).
fn ordered(out: &[MeshOutput]) -> Vec<OpId> {
    out.iter()
        .filter_map(|o| match o {
            MeshOutput::Send {
                msg: MeshMessage::Order(order),
                ..
            } => Some(order.op),
            _ => None,
        })
        .collect()
}

fn queued(out: &[MeshOutput]) -> Vec<(u64, OpId, u32)> {
    out.iter()
        .filter_map(|o| match o {
            MeshOutput::Queued(q) => Some((q.tag, q.op, q.position)),
            _ => None,
        })
        .collect()
}

fn ended(out: Vec<MeshOutput>) -> Vec<qs_core::mesh::OpResult> {
    out.into_iter()
        .filter_map(|o| match o {
            MeshOutput::Finished(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn refused(out: &[MeshOutput]) -> Vec<(u64, Option<OpId>, CommandError)> {
    out.iter()
        .filter_map(|o| match o {
            MeshOutput::Refused { tag, op, error } => Some((*tag, *op, error.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_non_urgent_operation_waits_for_the_mesh_to_recover() {
    // 14 of 20 active: DEGRADED_MODERATE.
    let mut root = Root::new(14);
    assert_eq!(root.node.mode(), Mode::DegradedModerate);
    let out = root.ask(1, 7);
    let q = queued(&out);
    assert_eq!(q.len(), 1, "{out:?}");
    let (tag, op, position) = q[0];
    assert_eq!((tag, position), (7, 1));
    assert!(ordered(&out).is_empty(), "a queued operation sends nothing");
    match &out[..] {
        [MeshOutput::Queued(q)] => {
            assert_eq!(q.mode, "DEGRADED_MODERATE");
            assert_eq!(q.waits_for, "DEGRADED_LIGHT");
            assert_eq!(q.max_wait_ms, MAX_QUEUE_WAIT_MS);
        }
        other => panic!("{other:?}"),
    }
    let view = root.node.queued(root.now);
    assert_eq!(view.len(), 1);
    assert_eq!((view[0].op, view[0].priority), (op, 1));
    // Urgent work starts at once (the sector, too unhealthy for this mode's traffic, is
    // counted unreachable: nothing is ordered).
    let urgent = root.ask(2, 8);
    assert!(queued(&urgent).is_empty(), "{urgent:?}");
    assert!(refused(&urgent).is_empty(), "{urgent:?}");
    // While the mode lasts, the queued one waits.
    let mut finished = Vec::new();
    for _ in 0..5 {
        let out = root.beat(14);
        assert!(!ordered(&out).contains(&op), "{out:?}");
        finished.extend(ended(out));
    }
    assert_eq!(root.node.queued(root.now).len(), 1);
    // 17 of 20: DEGRADED_LIGHT; it starts at that beat, and ends with its tag.
    let out = root.beat(17);
    assert_eq!(root.node.mode(), Mode::DegradedLight);
    assert_eq!(ordered(&out), vec![op], "{out:?}");
    assert!(root.node.queued(root.now).is_empty());
    for _ in 0..20 {
        finished.extend(ended(root.beat(17)));
    }
    let tags: Vec<u64> = finished.iter().map(|r| r.tag).collect();
    assert_eq!(tags, vec![8, 7], "the urgent one ends first");
    assert_eq!(finished[0].tally.unreachable, 20);
    assert_eq!(finished[1].op, op);
    assert_eq!(finished[1].tally.unreachable, 0);
}

#[test]
fn the_queue_is_bounded_and_a_queued_operation_that_waits_too_long_is_dropped() {
    let mut root = Root::new(14);
    for tag in 0..MAX_QUEUED as u64 {
        assert_eq!(queued(&root.ask(1, tag)).len(), 1);
    }
    let out = root.ask(1, 1_000);
    assert_eq!(
        refused(&out),
        vec![(1_000, None, CommandError::QueueFull(MAX_QUEUED))]
    );
    let first = root.node.queued(root.now)[0].op;
    // Still DEGRADED_MODERATE when their time is up: every one is refused, by its tag.
    let late = root.now + Duration::from_millis(MAX_QUEUE_WAIT_MS);
    let out = root.at(late, 14);
    let r = refused(&out);
    assert_eq!(r.len(), MAX_QUEUED, "{out:?}");
    assert_eq!(r[0].0, 0);
    assert_eq!(r[0].1, Some(first));
    assert!(
        matches!(r[0].2, CommandError::Expired { op, waited_ms } if op == first && waited_ms >= MAX_QUEUE_WAIT_MS),
        "{:?}",
        r[0].2
    );
    assert!(root.node.queued(root.now).is_empty());
    assert!(ordered(&out).is_empty());
}

#[test]
fn a_queued_operation_whose_scope_was_frozen_meanwhile_is_refused_when_it_would_start() {
    let mut root = Root::new(14);
    let op = queued(&root.ask(1, 3))[0].1;
    root.node.handle(
        MeshInput::Command {
            command: Command::Freeze {
                scope: Scope::Global,
                frozen: true,
                approved: false,
            },
            tag: 4,
        },
        root.now,
    );
    drain(&mut root.node);
    let out = root.beat(20);
    assert_eq!(
        refused(&out),
        vec![(3, Some(op), CommandError::Frozen(Scope::Global))]
    );
    assert!(ordered(&out).is_empty());
}

#[test]
fn queued_operations_are_refused_at_a_node_no_longer_the_root() {
    let mut root = Root::new(14);
    let op = queued(&root.ask(1, 5))[0].1;
    // The tree moves the root to p2.
    let pair = pair();
    let tree = pair.roles(&pair.p2, &pair.p2, &pair.p2);
    root.node.handle(MeshInput::Tree(tree), root.now);
    drain(&mut root.node);
    root.now = root.now + Duration::from_millis(MeshConfig::default().beat_ms);
    root.node.handle(MeshInput::Tick, root.now);
    let r = refused(&drain(&mut root.node));
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!((r[0].0, r[0].1), (5, Some(op)));
    assert!(matches!(r[0].2, CommandError::NotRoot { ref root } if root.as_deref() == Some("p2")));
    assert!(root.node.queued(root.now).is_empty());
}
