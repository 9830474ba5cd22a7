//! Conflicts at a cluster lead (seed §5.1), driven through `MeshNode::handle` on a virtual
//! clock: the lead escalates those of priority 3 and 4 with its report, the most urgent
//! first; a READY to the same content later resolves a value mismatch, a READY to other
//! content does not; an integrity failure quarantines its agent and stays unresolved.

mod common;

use common::*;
use qs_core::Time;
use qs_core::mesh::conflict::Resolution;
use qs_wire::mesh::{AgentId, ConflictDetail, Verb};

#[test]
fn a_lead_escalates_critical_conflicts_and_the_same_content_accepted_resolves_a_mismatch() {
    let c = one_cluster(6, 300);
    let mut lead = Lead::new(c, Time::from_millis(3_000_000));
    lead.run(1_200);

    // An ask of the three agents with the capability: one integrity failure (priority 4),
    // one value mismatch affecting 101 agents (3), one affecting one (2).
    lead.order(1, None);
    let sent = dispatches(&lead.run(250));
    assert_eq!(sent.len(), 3, "{sent:?}");
    let s = |x: &str| x.to_string();
    let details = [
        ConflictDetail::DataContradiction {
            expected: s("1"),
            received: s("2"),
            affects_agents: 1,
        },
        ConflictDetail::DataContradiction {
            expected: s("1"),
            received: s("2"),
            affects_agents: 101,
        },
        ConflictDetail::HashMismatch {
            expected: s("a"),
            received: s("b"),
        },
    ];
    for (d, detail) in sent.iter().zip(details.iter()) {
        lead.answer(d, Some(detail.clone()));
    }
    let (out, counts) = drained_counts(&mut lead);
    assert_eq!(counts, [3, 0, 3, 0], "sent, ready, conflict, rerouted");
    let rep = report(&out).unwrap();
    let escalated: Vec<(AgentId, &ConflictDetail)> =
        rep.escalated.iter().map(|e| (e.agent, &e.detail)).collect();
    assert_eq!(
        escalated,
        [(sent[2].agent, &details[2]), (sent[1].agent, &details[1])],
        "priority 4, then 3; not 2"
    );
    assert_eq!(rep.escalated_more, 0);
    let open = |lead: &Lead| lead.node.conflicts().counts(lead.now, |_| true);
    assert_eq!((open(&lead).open, open(&lead).critical), (3, 2));

    // An ask of other content: READY from the two still in the pool resolves nothing.
    lead.run(600);
    let mut other = lead
        .node
        .envelope(Verb::Observe, "something else", 2, lead.now);
    other.op = qs_wire::mesh::OpId(2);
    other.requires = Some(TPU.into());
    other.target_arrival_ms = lead.now.as_millis() + 200;
    lead.order_of(other, None);
    let sent2 = dispatches(&lead.run(250));
    assert!(
        !sent2.iter().any(|d| d.agent == sent[2].agent),
        "the agent whose content was corrupt is quarantined"
    );
    assert_eq!(sent2.len(), 2, "{sent2:?}");
    for d in &sent2 {
        lead.answer(d, None);
    }
    let (out, _) = drained_counts(&mut lead);
    assert_eq!(resolved(&out), []);

    // The same content again, accepted: both mismatches are resolved (the weaker source
    // was updated); the integrity failure waits for an operator.
    lead.run(600);
    lead.order(3, None);
    let sent3 = dispatches(&lead.run(250));
    assert_eq!(sent3.len(), 2, "{sent3:?}");
    for d in &sent3 {
        lead.answer(d, None);
    }
    let (out, _) = drained_counts(&mut lead);
    let mut got = resolved(&out);
    got.sort_by_key(|(a, _)| *a);
    let mut want = vec![
        (sent[0].agent, Resolution::Agreed),
        (sent[1].agent, Resolution::Agreed),
    ];
    want.sort_by_key(|(a, _)| *a);
    assert_eq!(got, want);
    assert_eq!((open(&lead).open, open(&lead).critical), (1, 1));
    // Past its time (priority 4: at once), it counts as overdue in the summary.
    lead.run(1_000);
    assert_eq!(open(&lead).overdue, 1);
}
