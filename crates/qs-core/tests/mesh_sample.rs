//! An ask of a sample reaches no more agents than the sample: the root splits it over the
//! sectors it picks, as evenly as it goes, so the shares add up to the sample (each
//! coordinator splits its share over its clusters the same way; the real 1,000-agent run
//! checks the whole way down), and none to a sector the order would not reach; a sample's
//! time is not the cascade latency's.

mod common;

use common::*;
use qs_core::Time;
use qs_core::mesh::{CascadeCommand, Command, MeshConfig, MeshInput, MeshNode, MeshOutput};
use qs_wire::NodeId;
use qs_wire::mesh::{CascadeMode, Scope, SectorId, Verb};
use std::time::Duration;

/// A root outside a tree of 12 sectors (of 10 clusters of 30 agents), which heard every
/// sector's summary as `edit` leaves it; and the time it did.
fn root_of_twelve(edit: impl Fn(&mut qs_wire::mesh::SectorSummary)) -> (MeshNode, Time) {
    let me = NodeId::new("root").unwrap();
    let tree = sectors_tree(3_600, Some(&me));
    assert_eq!(tree.sectors.len(), 12);
    let start = Time::from_millis(1_000_000);
    let mut root = node_in(&me, MeshConfig::default(), &tree, start);
    let now = start + Duration::from_millis(300);
    hear_sectors(&mut root, &tree, now, edit);
    root.handle(MeshInput::Tick, now);
    drain(&mut root);
    (root, now)
}

/// An ask of a sample of `n` at priority `priority`, tagged `tag`: what the root put out.
fn ask(root: &mut MeshNode, n: u32, priority: u8, tag: u64, now: Time) -> Vec<MeshOutput> {
    let envelope = root.envelope(Verb::Observe, "which model?", priority, now);
    let mut ask = CascadeCommand::new(CascadeMode::Wave, Scope::Global, envelope);
    ask.sample = Some(n);
    let command = Command::Cascade(ask);
    root.handle(MeshInput::Command { command, tag }, now);
    drain(root)
}

#[test]
fn a_samples_shares_add_up_to_the_sample() {
    let (mut root, now) = root_of_twelve(|_| {});
    // (sample, sectors asked, the most one is asked for)
    for (n, asked, most) in [(50, 12, 5), (12, 12, 1), (5, 5, 1), (1, 1, 1), (100, 12, 9)] {
        let sent = orders(&ask(&mut root, n, 2, 1, now));
        let shares: Vec<u32> = sent.iter().filter_map(|o| o.sample_per_cluster).collect();
        assert_eq!(shares.len(), asked, "{n}: {shares:?}");
        assert_eq!(shares.iter().sum::<u32>(), n, "{n}: {shares:?}");
        assert_eq!(shares.iter().max(), Some(&most), "{n}: {shares:?}");
    }
    // A sector whose breaker is open gets no share: the others' add up to the sample.
    let tree = root.tree().clone();
    let from = tree.sectors[0].coordinator.clone().unwrap();
    let mut open = sector_summary(0, &from, 300, 300, now);
    (open.cluster_count, open.breaker_open) = (10, true);
    let msg = qs_wire::mesh::MeshMessage::Sector(Box::new(open));
    root.handle(MeshInput::Heard { from, msg }, now);
    let sent = orders(&ask(&mut root, 50, 2, 2, now));
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
    let (mut root, now) = root_of_twelve(|s| s.breaker_open = true);
    let mut out = ask(&mut root, 50, 3, 1, now);
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
