//! A mesh of many sectors for the root's tests: its tree (sectors of 10 clusters of 30
//! agents, a host per cluster), every sector's summary heard by the root, and the orders
//! the root sends.

use super::*;

/// The tree of `agents` agents in clusters of 30 (a host each: `h0`, `h1` …), sectors of
/// 10 clusters; rooted at `root` if named (a node that coordinates no sector and leads no
/// cluster: every order it sends is a sector's), else where the tree elects.
pub fn sectors_tree(agents: u64, root: Option<&NodeId>) -> Arc<Hierarchy> {
    let members: Vec<Member> = (0..agents)
        .map(|a| Member {
            agent: AgentId(a),
            host: NodeId::new(&format!("h{}", a / 30)).unwrap(),
            zone: String::new(),
        })
        .collect();
    let mut tree = Hierarchy::build(&members, Shape::default(), |_| Seniority::Seasoned).unwrap();
    if let Some(root) = root {
        tree.root = Some(root.clone());
    }
    Arc::new(tree)
}

/// `root` hears every sector's summary at `now`, from its coordinator: 300 agents, all
/// active, in 10 clusters, as `edit` leaves it.
pub fn hear_sectors(
    root: &mut MeshNode,
    tree: &Hierarchy,
    now: Time,
    edit: impl Fn(&mut SectorSummary),
) {
    for (i, s) in tree.sectors.iter().enumerate() {
        let from = s.coordinator.clone().unwrap();
        let mut summary = sector_summary(i as u32, &from, 300, 300, now);
        summary.cluster_count = 10;
        edit(&mut summary);
        let msg = MeshMessage::Sector(Box::new(summary));
        root.handle(MeshInput::Heard { from, msg }, now);
    }
}

/// The orders `out` sends, however batched.
pub fn orders(out: &[MeshOutput]) -> Vec<Order> {
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
