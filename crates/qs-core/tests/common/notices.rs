//! The root's mode notices in the tests: those a node sent, one heard, and a root's beat
//! (after a sector's summary) that may send them.

use super::*;
use qs_wire::mesh::ModeNotice;

/// The notices `out` sends, to whom.
pub fn notices(out: &[MeshOutput]) -> Vec<(NodeId, ModeNotice)> {
    out.iter()
        .filter_map(|o| match o {
            MeshOutput::Send {
                to,
                msg: MeshMessage::Mode(n),
            } => Some((to.clone(), n.clone())),
            _ => None,
        })
        .collect()
}

/// `node` hears `notice` from `from`: what it put out.
pub fn hear_notice(
    node: &mut MeshNode,
    from: &NodeId,
    notice: &ModeNotice,
    now: Time,
) -> Vec<MeshOutput> {
    let msg = MeshMessage::Mode(notice.clone());
    node.handle(
        MeshInput::Heard {
            from: from.clone(),
            msg,
        },
        now,
    );
    drain(node)
}

/// The root hears sector 0's summary from `coordinator` (`active` of 20) and beats; what it
/// put out.
pub fn root_beat(
    root: &mut MeshNode,
    coordinator: &NodeId,
    active: u32,
    now: Time,
) -> Vec<MeshOutput> {
    let msg = MeshMessage::Sector(Box::new(sector_summary(0, coordinator, 20, active, now)));
    root.handle(
        MeshInput::Heard {
            from: coordinator.clone(),
            msg,
        },
        now,
    );
    root.handle(MeshInput::Tick, now);
    drain(root)
}
