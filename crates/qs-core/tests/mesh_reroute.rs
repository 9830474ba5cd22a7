//! Seed §5.1's REROUTE at one cluster lead, driven through `MeshNode::handle` on a virtual
//! clock: an agent that answers that it lacks the capability an ask requires loses it in the
//! lead's map, and the ask goes to another agent of the cluster that has it.

use qs_core::Time;
use qs_core::mesh::{Hierarchy, Member, MeshConfig, MeshInput, MeshNode, MeshOutput, Shape};
use qs_wire::NodeId;
use qs_wire::mesh::{
    Ack, AgentBeat, AgentId, AgentState, CascadeMode, ClusterId, ConflictDetail, Dispatch,
    HostBeat, MeshMessage, OpId, Order, Report, Scope, Trinary, Verb,
};
use std::sync::Arc;

const TPU: &str = "tpu";

fn beat(agent: AgentId, tpu: bool) -> AgentBeat {
    AgentBeat {
        agent,
        state: AgentState::Active,
        processing_ms: 5.0,
        queue_depth: 0,
        capabilities: match tpu {
            true => vec![TPU.to_string()],
            false => Vec::new(),
        },
        joined_ms: 0,
    }
}

struct Lead {
    node: MeshNode,
    other: NodeId,
    theirs: Vec<AgentId>,
    now: Time,
}

impl Lead {
    /// Runs `ms` of beats from the other host; what the lead sent meanwhile.
    fn run(&mut self, ms: u64) -> Vec<MeshOutput> {
        let mut out = Vec::new();
        let end = self.now.as_millis() + ms;
        while self.now.as_millis() < end {
            self.now = Time::from_millis(self.now.as_millis() + 10);
            if self.now.as_millis() % 300 == 0 {
                let b = HostBeat {
                    host: self.other.clone(),
                    cluster: ClusterId(0),
                    sent_ms: self.now.as_millis(),
                    agents: self.theirs.iter().map(|a| beat(*a, true)).collect(),
                };
                self.node
                    .handle(MeshInput::Heard(MeshMessage::Beat(b)), self.now);
            }
            self.node.handle(MeshInput::Tick, self.now);
            out.extend(std::iter::from_fn(|| self.node.poll()));
        }
        out
    }

    fn order(&mut self, op: u64, sample: u32) {
        let mut envelope = self.node.envelope(Verb::Observe, "ready?", 2, self.now);
        envelope.op = OpId(op);
        envelope.requires = Some(TPU.into());
        envelope.target_arrival_ms = self.now.as_millis() + 200;
        let order = Order {
            op: OpId(op),
            mode: CascadeMode::Wave,
            root: NodeId::new("root").unwrap(),
            report_to: NodeId::new("root").unwrap(),
            scope: Scope::Cluster(ClusterId(0)),
            class: None,
            sample_per_cluster: Some(sample),
            window_ms: 150,
            envelope,
        };
        self.node.handle(
            MeshInput::Heard(MeshMessage::Order(Box::new(order))),
            self.now,
        );
    }

    fn answer(&mut self, d: &Dispatch, conflict: Option<ConflictDetail>) {
        let ack = Ack {
            op: d.envelope.op,
            agent: d.agent,
            cluster: d.cluster,
            state: match conflict {
                Some(_) => Trinary::Conflict,
                None => Trinary::Ready,
            },
            arrived_ms: self.now.as_millis(),
            ready_ms: self.now.as_millis(),
            answer: String::new(),
            conflict,
        };
        self.node
            .handle(MeshInput::Heard(MeshMessage::Ack(Box::new(ack))), self.now);
    }
}

fn dispatches(out: &[MeshOutput]) -> Vec<Dispatch> {
    out.iter()
        .filter_map(|o| match o {
            MeshOutput::Send {
                msg: MeshMessage::Dispatch(d),
                ..
            } => Some((**d).clone()),
            _ => None,
        })
        .collect()
}

fn report(out: &[MeshOutput]) -> Option<Report> {
    out.iter().find_map(|o| match o {
        MeshOutput::Send {
            msg: MeshMessage::Report(r),
            ..
        } => Some((**r).clone()),
        _ => None,
    })
}

#[test]
fn an_agent_lacking_a_capability_loses_it_and_the_ask_goes_to_one_that_has_it() {
    let hosts = [NodeId::new("h1").unwrap(), NodeId::new("h2").unwrap()];
    let members: Vec<Member> = (0..4u64)
        .map(|i| Member {
            agent: AgentId(200 + i),
            host: hosts[(i % 2) as usize].clone(),
        })
        .collect();
    let tree = Arc::new(Hierarchy::build(&members, Shape::default(), |_| true).unwrap());
    let lead_id = tree.cluster(ClusterId(0)).unwrap().lead.clone().unwrap();
    let other = hosts.iter().find(|h| **h != lead_id).unwrap().clone();
    let theirs: Vec<AgentId> = members
        .iter()
        .filter(|m| m.host == other)
        .map(|m| m.agent)
        .collect();
    let now = Time::from_millis(3_000_000);
    let mut node = MeshNode::new(lead_id.clone(), MeshConfig::default(), now);
    node.handle(MeshInput::Tree(tree.clone()), now);
    let mine = members.iter().filter(|m| m.host == lead_id);
    node.handle(
        MeshInput::Agents(mine.map(|m| beat(m.agent, false)).collect()),
        now,
    );
    let mut lead = Lead {
        node,
        other,
        theirs: theirs.clone(),
        now,
    };
    lead.run(1_200);

    // One agent of the two with the capability is asked; it says it lacks it.
    lead.order(1, 1);
    let out = lead.run(250);
    let sent = dispatches(&out);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let lacking = sent[0].clone();
    lead.answer(
        &lacking,
        Some(ConflictDetail::CapabilityMismatch {
            missing: TPU.into(),
        }),
    );
    // The ask goes on to the other one, which answers.
    let out: Vec<MeshOutput> = std::iter::from_fn(|| lead.node.poll()).collect();
    let again = dispatches(&out);
    assert_eq!(again.len(), 1, "{out:?}");
    assert_ne!(again[0].agent, lacking.agent);
    assert!(theirs.contains(&again[0].agent));
    lead.answer(&again[0], None);
    let out: Vec<MeshOutput> = std::iter::from_fn(|| lead.node.poll()).collect();
    let r = report(&out).expect("the cluster reported");
    assert_eq!(
        (
            r.tally.sent,
            r.tally.ready,
            r.tally.conflict,
            r.tally.rerouted
        ),
        (2, 1, 1, 1),
        "{:?}",
        r.tally
    );

    // The map is fixed: the next ask needing it, even of both, reaches only the other one,
    // though its host still says both have it.
    lead.run(600);
    lead.order(2, 2);
    let out = lead.run(400);
    let sent = dispatches(&out);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].agent, again[0].agent);
}
