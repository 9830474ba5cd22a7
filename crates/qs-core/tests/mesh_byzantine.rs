//! Seed §6.1's BYZANTINE_BEHAVIOR at a cluster lead: an agent that answers other than a
//! clear majority of its cluster, more often than it agrees, is quarantined (out of the
//! routing pool) and the lead says so at once, with what it answered and what the majority
//! did (for forensics); an agent that agrees between its disagreements is not.

mod common;

use common::*;
use qs_core::Time;
use qs_core::mesh::degrade::BYZANTINE_AFTER;
use qs_core::mesh::{MeshInput, MeshOutput, Quarantined};
use qs_wire::mesh::{AgentId, AgentState, MeshMessage};

/// One operation of the lead's cluster: every agent sent to answers READY at once with
/// "a1b2", but those `odd` says answer "e5f6"; who was sent to, and the lead's outputs.
fn round(
    lead: &mut Lead,
    op: u64,
    odd: impl Fn(AgentId) -> bool,
) -> (Vec<AgentId>, Vec<MeshOutput>) {
    lead.order(op, None);
    let mut sent = Vec::new();
    let mut out = Vec::new();
    for _ in 0..65 {
        let step = lead.run(10);
        for d in dispatches(&step) {
            let MeshMessage::Ack(mut ack) = ready(&d, lead.now.as_millis(), 2) else {
                unreachable!()
            };
            ack.answer = if odd(d.agent) { "e5f6" } else { "a1b2" }.into();
            let from = lead.other.clone();
            let msg = MeshMessage::Ack(ack);
            lead.node.handle(MeshInput::Heard { from, msg }, lead.now);
            sent.push(d.agent);
        }
        out.extend(step);
    }
    (sent, out)
}

fn quarantined(out: &[MeshOutput]) -> Vec<Quarantined> {
    out.iter()
        .filter_map(|o| match o {
            MeshOutput::Quarantined(q) => Some(q.clone()),
            _ => None,
        })
        .collect()
}

fn state(lead: &mut Lead, agent: AgentId) -> AgentState {
    let agents = lead.node.led_agents(lead.now);
    agents.iter().find(|a| a.agent == agent).unwrap().state
}

#[test]
fn an_agent_that_keeps_contradicting_its_cluster_is_quarantined_and_told() {
    let mut lead = Lead::new(one_cluster(20, 0), Time::from_millis(3_000_000));
    lead.run(1_200);
    let liar = lead.theirs[0];
    for op in 1..u64::from(BYZANTINE_AFTER) {
        let (sent, out) = round(&mut lead, op, |a| a == liar);
        assert_eq!(sent.len(), 10, "{sent:?}");
        assert!(quarantined(&out).is_empty());
        assert_eq!(state(&mut lead, liar), AgentState::Active);
    }
    let (_, out) = round(&mut lead, 99, |a| a == liar);
    let told = quarantined(&out);
    assert_eq!(told.len(), 1, "{out:?}");
    let q = &told[0];
    assert_eq!(
        (q.agent, q.op.0, q.disagreements),
        (liar, 99, BYZANTINE_AFTER)
    );
    assert_eq!((q.answer.as_str(), q.majority.as_str()), ("e5f6", "a1b2"));
    assert_eq!(q.host, lead.other);
    assert_eq!(state(&mut lead, liar), AgentState::Quarantined);
    assert!(!pool(&lead.node).contains(&liar));
    // Told once: out of the pool, it is sent nothing more.
    let (sent, out) = round(&mut lead, 100, |_| false);
    assert!(!sent.is_empty() && !sent.contains(&liar), "{sent:?}");
    assert!(quarantined(&out).is_empty());
}

#[test]
fn an_agent_that_agrees_between_its_disagreements_stays() {
    let mut lead = Lead::new(one_cluster(20, 0), Time::from_millis(3_000_000));
    lead.run(1_200);
    let stale = lead.theirs[1];
    // Disagrees, agrees, disagrees, agrees …: never more disagreements than agreements.
    for op in 1..=(4 * u64::from(BYZANTINE_AFTER)) {
        let (sent, out) = round(&mut lead, op, |a| a == stale && op % 2 == 1);
        assert!(sent.contains(&stale), "operation {op}: {sent:?}");
        assert!(quarantined(&out).is_empty(), "operation {op}");
    }
    assert_eq!(state(&mut lead, stale), AgentState::Active);
}
