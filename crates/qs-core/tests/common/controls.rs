//! Controls between a root and one cluster's lead: their messages passed until both are
//! quiet, the root's reports, a command to the root.

use super::*;
use qs_core::mesh::ControlReport;

/// The root and the lead pass their messages to each other until both are quiet (those to
/// `lost` are lost); what else they put out.
pub fn exchange(root: &mut MeshNode, lead: &mut Lead, lost: Option<&NodeId>) -> Vec<MeshOutput> {
    let mut other = Vec::new();
    for _ in 0..16 {
        let sent = [
            (root.id().clone(), drain(root)),
            (lead.node.id().clone(), drain(&mut lead.node)),
        ];
        let mut moved = false;
        for (from, out) in sent {
            for o in out {
                let MeshOutput::Send { to, msg } = o else {
                    other.push(o);
                    continue;
                };
                let target = match to {
                    _ if lost == Some(&to) => continue,
                    _ if to == *root.id() => &mut *root,
                    _ if to == *lead.node.id() => &mut lead.node,
                    // To another node (an agent's host): put out with the rest.
                    _ => {
                        other.push(MeshOutput::Send { to, msg });
                        continue;
                    }
                };
                let from = from.clone();
                target.handle(MeshInput::Heard { from, msg }, lead.now);
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    other
}

pub fn reports(out: &[MeshOutput]) -> Vec<ControlReport> {
    out.iter()
        .filter_map(|o| match o {
            MeshOutput::ControlDone(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

pub fn command(root: &mut MeshNode, command: Command, tag: u64, now: Time) {
    root.handle(MeshInput::Command { command, tag }, now);
}

/// A lead of 20 agents (the other host's 10 with the capability), its root (also its
/// sector's coordinator), and the lead's view settled.
pub fn mesh() -> (MeshNode, Lead) {
    let mut lead = Lead::new(one_cluster(20, 0), Time::from_millis(3_000_000));
    lead.run(1_200);
    let tree = lead.node.tree().clone();
    let root = node_in(&lead.root, MeshConfig::default(), &tree, lead.now);
    (root, lead)
}
