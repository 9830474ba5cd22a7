//! An ask of a sample reaches no more agents than the sample: the root splits it over the
//! sectors it picks, as evenly as it goes, so the shares add up to the sample (each
//! coordinator splits its share over its clusters the same way; the real 1,000-agent run
//! checks the whole way down), and none to a sector the order would not reach; a sample's
//! time is not the cascade latency's.

mod common;

use common::*;
use qs_core::Time;
use qs_core::mesh::hierarchy::{Hierarchy, Member, Shape};
use qs_core::mesh::seniority::Seniority;
use qs_core::mesh::{CascadeCommand, Command, MeshConfig, MeshInput, MeshOutput};
use qs_wire::NodeId;
use qs_wire::mesh::{AgentId, CascadeMode, MeshMessage, Order, Scope, SectorId, Verb};
use std::sync::Arc;
use std::time::Duration;

/// The orders `out` sends, however batched.
fn orders(out: &[MeshOutput]) -> Vec<Order> {
    out.iter()
        .flat_map(|o| match o {
            MeshOutput::Send {
                msg: MeshMessage::Order(o),
                ..
            } => vec![(**o).clone()],
            MeshOutput::Send {
                msg: MeshMessage::Orders(b),
                ..
            } => b.orders.clone(),
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn a_samples_shares_add_up_to_the_sample() {
    // 12 sectors of 10 clusters of 30 agents, a host for each cluster.
    let members: Vec<Member> = (0..3_600u64)
        .map(|a| Member {
            agent: AgentId(a),
            host: NodeId::new(&format!("h{}", a / 30)).unwrap(),
            zone: String::new(),
        })
        .collect();
    let mut tree = Hierarchy::build(&members, Shape::default(), |_| Seniority::Seasoned).unwrap();
    assert_eq!(tree.sectors.len(), 12);
    // A root that coordinates no sector and leads no cluster: every order it sends is a
    // sector's.
    let me = NodeId::new("root").unwrap();
    tree.root = Some(me.clone());
    let tree = Arc::new(tree);
    let start = Time::from_millis(1_000_000);
    let mut root = node_in(&me, MeshConfig::default(), &tree, start);
    let now = start + Duration::from_millis(300);
    for (i, s) in tree.sectors.iter().enumerate() {
        let from = s.coordinator.clone().unwrap();
        let mut summary = sector_summary(i as u32, &from, 300, 300, now);
        summary.cluster_count = 10;
        let msg = MeshMessage::Sector(Box::new(summary));
        root.handle(MeshInput::Heard { from, msg }, now);
    }
    root.handle(MeshInput::Tick, now);
    drain(&mut root);
    // (sample, sectors asked, the most one is asked for)
    for (n, asked, most) in [(50, 12, 5), (12, 12, 1), (5, 5, 1), (1, 1, 1), (100, 12, 9)] {
        let envelope = root.envelope(Verb::Observe, "which model?", 2, now);
        let mut ask = CascadeCommand::new(CascadeMode::Wave, Scope::Global, envelope);
        ask.sample = Some(n);
        let command = Command::Cascade(ask);
        root.handle(MeshInput::Command { command, tag: 1 }, now);
        let sent = orders(&drain(&mut root));
        let shares: Vec<u32> = sent.iter().filter_map(|o| o.sample_per_cluster).collect();
        assert_eq!(shares.len(), asked, "{n}: {shares:?}");
        assert_eq!(shares.iter().sum::<u32>(), n, "{n}: {shares:?}");
        assert_eq!(shares.iter().max(), Some(&most), "{n}: {shares:?}");
    }
    // A sector whose breaker is open gets no share: the others' add up to the sample.
    let from = tree.sectors[0].coordinator.clone().unwrap();
    let mut open = sector_summary(0, &from, 300, 300, now);
    (open.cluster_count, open.breaker_open) = (10, true);
    let msg = MeshMessage::Sector(Box::new(open));
    root.handle(MeshInput::Heard { from, msg }, now);
    let envelope = root.envelope(Verb::Observe, "which model?", 2, now);
    let mut ask = CascadeCommand::new(CascadeMode::Wave, Scope::Global, envelope);
    ask.sample = Some(50);
    let command = Command::Cascade(ask);
    root.handle(MeshInput::Command { command, tag: 2 }, now);
    let sent = orders(&drain(&mut root));
    assert!(sent.iter().all(|o| o.scope != Scope::Sector(SectorId(0))));
    let shares: Vec<u32> = sent.iter().filter_map(|o| o.sample_per_cluster).collect();
    assert_eq!(
        (shares.len(), shares.iter().sum::<u32>()),
        (11, 50),
        "{shares:?}"
    );
    // Their ends (no report came: at their deadlines) count as operations, and their
    // latencies are not the cascade latency's (seed Part 11: mesh-wide cascades).
    let later = now + Duration::from_secs(10);
    root.handle(MeshInput::Tick, later);
    drain(&mut root);
    assert_eq!(root.kpis().operations, 6);
    assert!(root.kpis().cascade_latencies_ms.is_empty());
}

/// No sector in reach (every breaker open, so the global one too): the sample is counted
/// unreachable, up to its size, so its result says why nothing was sent.
#[test]
fn a_sample_with_no_sector_in_reach_is_counted_unreachable() {
    let members: Vec<Member> = (0..3_600u64)
        .map(|a| Member {
            agent: AgentId(a),
            host: NodeId::new(&format!("h{}", a / 30)).unwrap(),
            zone: String::new(),
        })
        .collect();
    let mut tree = Hierarchy::build(&members, Shape::default(), |_| Seniority::Seasoned).unwrap();
    let me = NodeId::new("root").unwrap();
    tree.root = Some(me.clone());
    let tree = Arc::new(tree);
    let start = Time::from_millis(1_000_000);
    let mut root = node_in(&me, MeshConfig::default(), &tree, start);
    let now = start + Duration::from_millis(300);
    for (i, s) in tree.sectors.iter().enumerate() {
        let from = s.coordinator.clone().unwrap();
        let mut summary = sector_summary(i as u32, &from, 300, 300, now);
        (summary.cluster_count, summary.breaker_open) = (10, true);
        let msg = MeshMessage::Sector(Box::new(summary));
        root.handle(MeshInput::Heard { from, msg }, now);
    }
    root.handle(MeshInput::Tick, now);
    drain(&mut root);
    let envelope = root.envelope(Verb::Observe, "which model?", 3, now);
    let mut ask = CascadeCommand::new(CascadeMode::Wave, Scope::Global, envelope);
    ask.sample = Some(50);
    let command = Command::Cascade(ask);
    root.handle(MeshInput::Command { command, tag: 1 }, now);
    let mut out = drain(&mut root);
    assert!(orders(&out).is_empty(), "{out:?}");
    root.handle(MeshInput::Tick, now + Duration::from_secs(10));
    out.extend(drain(&mut root));
    let result = out
        .iter()
        .find_map(|o| match o {
            MeshOutput::Finished(r) => Some(r.clone()),
            _ => None,
        })
        .expect("the sample's result");
    let t = result.tally;
    assert_eq!((t.targeted, t.unreachable, t.sent), (50, 50, 0), "{t:?}");
}
