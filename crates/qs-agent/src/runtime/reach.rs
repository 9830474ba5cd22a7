//! Where other machines reach what this node runs, said in its heartbeat: the node's address,
//! each instance's port, its entry point's port and the models its host holds. The core says
//! what runs; the executor picked the ports, the model host keeps the models.

use super::Runtime;
use qs_fabric::Fabric;
use qs_wire::NodeStatus;

impl<F: Fabric> Runtime<F> {
    /// Fills in `status`'s address and its instances' ports before it is published.
    pub(super) fn stamp_reach(&self, status: &mut NodeStatus) {
        // None where nothing said it: other nodes then send this node's instances nothing.
        status.address = self.node.config().addresses.advertise;
        let running = self.exec.running();
        for i in &mut status.instances {
            i.port = running.get(&i.instance).map_or(0, |r| r.port);
        }
        let views = self.shared.models.views_of(&self.id);
        status.models = crate::models::route::summaries(&views);
        status.entry_port = self
            .shared
            .entry_port
            .load(std::sync::atomic::Ordering::Relaxed);
    }
}
