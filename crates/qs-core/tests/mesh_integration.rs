//! Scale-out at one cluster lead (seed §10.2), driven through `MeshNode::handle` on a virtual
//! clock: agents of another host settle before they enter the routing pool, their age is read
//! on their host's clock (a host whose clock runs a minute behind does not make its new agents
//! look established), and the lead's own long-standing agents are in the pool at once.

use qs_core::Time;
use qs_core::mesh::{Hierarchy, Member, MeshConfig, MeshInput, MeshNode, Shape};
use qs_wire::NodeId;
use qs_wire::mesh::{AgentBeat, AgentId, AgentState, ClusterId, HostBeat, MeshMessage};
use std::collections::BTreeSet;
use std::sync::Arc;

fn beat(agent: AgentId, joined_ms: u64) -> AgentBeat {
    AgentBeat {
        agent,
        state: AgentState::Active,
        processing_ms: 5.0,
        queue_depth: 0,
        capabilities: Vec::new(),
        joined_ms,
    }
}

#[test]
fn newcomers_settle_on_their_hosts_clock_and_members_are_in_the_pool_at_once() {
    let hosts = [NodeId::new("h1").unwrap(), NodeId::new("h2").unwrap()];
    let members: Vec<Member> = (0..6u64)
        .map(|i| Member {
            agent: AgentId(100 + i),
            host: hosts[(i % 2) as usize].clone(),
        })
        .collect();
    let tree = Arc::new(Hierarchy::build(&members, Shape::default(), |_| true).unwrap());
    let c = ClusterId(0);
    let lead = tree.cluster(c).unwrap().lead.clone().expect("a lead");
    let other = hosts.iter().find(|h| **h != lead).unwrap().clone();
    let mine: Vec<AgentId> = members
        .iter()
        .filter(|m| m.host == lead)
        .map(|m| m.agent)
        .collect();
    let theirs: Vec<AgentId> = members
        .iter()
        .filter(|m| m.host == other)
        .map(|m| m.agent)
        .collect();

    let start = Time::from_millis(1_000_000);
    let mut node = MeshNode::new(lead.clone(), MeshConfig::default(), start);
    node.handle(MeshInput::Tree(tree), start);
    // The lead's own agents have been there all along (0: long ago).
    node.handle(
        MeshInput::Agents(mine.iter().map(|a| beat(*a, 0)).collect()),
        start,
    );
    // The other host's clock is a minute behind; its agents joined a second ago on it.
    let skew_ms = 60_000;
    let joined_on_host = start.as_millis() - skew_ms - 1_000;
    let pool = |n: &MeshNode| -> BTreeSet<AgentId> { n.pool().map(|(_, a)| a).collect() };
    let mut admitted_at = None;
    for k in 0..40u64 {
        let now = Time::from_millis(start.as_millis() + k * 300);
        let b = HostBeat {
            host: other.clone(),
            cluster: c,
            sent_ms: now.as_millis() - skew_ms,
            agents: theirs.iter().map(|a| beat(*a, joined_on_host)).collect(),
        };
        node.handle(MeshInput::Heard(MeshMessage::Beat(b)), now);
        node.handle(MeshInput::Tick, now);
        while node.poll().is_some() {}
        let p = pool(&node);
        if k >= 1 {
            assert!(mine.iter().all(|a| p.contains(a)), "members at {k}: {p:?}");
        }
        let in_pool = theirs.iter().filter(|a| p.contains(a)).count();
        if in_pool > 0 && admitted_at.is_none() {
            admitted_at = Some(k * 300);
        }
    }
    // Settled for 3 s (2 s more from the first beat here), then in the pool: not taken for
    // established by a minute of skew.
    let after_ms = admitted_at.expect("the newcomers joined the pool");
    assert!((1_800..=3_600).contains(&after_ms), "{after_ms}");
    assert!(theirs.iter().all(|a| pool(&node).contains(a)));
}
