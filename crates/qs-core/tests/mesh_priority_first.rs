//! A priority-first cascade's phases (D, C, B, A, E) are operations of their own numbers,
//! each envelope naming the operation it is a phase of as its causation (seed Appendix B),
//! so an agent and the ledger can relate them; a wave's names none.

mod common;

use common::*;
use qs_core::Time;
use qs_core::mesh::{CascadeCommand, Command, MeshConfig, MeshInput};
use qs_wire::NodeId;
use qs_wire::mesh::{CascadeMode, Scope, Verb};
use std::collections::BTreeSet;
use std::time::Duration;

#[test]
fn a_priority_first_phase_names_its_operation_as_its_cause() {
    // 3 sectors of 10 clusters of 30 agents; a root that coordinates none.
    let me = NodeId::new("root").unwrap();
    let tree = sectors_tree(900, Some(&me));
    let start = Time::from_millis(1_000_000);
    let mut root = node_in(&me, MeshConfig::default(), &tree, start);
    let now = start + Duration::from_millis(300);
    hear_sectors(&mut root, &tree, now, |s| s.classes = [60; 6]);
    root.handle(MeshInput::Tick, now);
    drain(&mut root);
    let cascade = |root: &mut qs_core::mesh::MeshNode, mode| {
        let envelope = root.envelope(Verb::Sync, "rebalance", 2, now);
        let command = Command::Cascade(CascadeCommand::new(mode, Scope::Global, envelope));
        root.handle(MeshInput::Command { command, tag: 1 }, now);
        orders(&drain(root))
    };
    let sent = cascade(&mut root, CascadeMode::PriorityFirst);
    let phases: BTreeSet<u64> = sent.iter().map(|o| o.op.0).collect();
    let causes: BTreeSet<Option<u64>> = sent.iter().map(|o| o.envelope.causation).collect();
    assert_eq!(phases.len(), 5, "D, C, B, A, E: {phases:?}");
    assert_eq!(causes.len(), 1, "{causes:?}");
    let family = causes.into_iter().next().unwrap().expect("a cause");
    assert!(!phases.contains(&family));
    assert!(sent.iter().all(|o| o.envelope.op == o.op));
    let wave = cascade(&mut root, CascadeMode::Wave);
    assert!(!wave.is_empty() && wave.iter().all(|o| o.envelope.causation.is_none()));
}
