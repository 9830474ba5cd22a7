//! What a node runtime shows the API: its own view (status, instances with their processes,
//! what it stewards) and its registry's view of the fleet.

use super::Runtime;
use crate::clock::now;
use crate::v1::{InstanceRow, LocalInstance, NodeView, RegistryView};
use qs_fabric::Fabric;
use qs_wire::WorkloadSpec;
use std::collections::BTreeMap;

impl<F: Fabric> Runtime<F> {
    pub(super) fn registry_view(&self) -> RegistryView {
        let reg = self.reg.read();
        let specs: Vec<WorkloadSpec> = reg.specs().cloned().collect();
        let mut instances = Vec::new();
        let mut stewards = BTreeMap::new();
        let mut completed = BTreeMap::new();
        for s in &specs {
            for (id, r) in reg.instances_of(&s.name) {
                instances.push((s.name.clone(), id.clone(), InstanceRow::from(r)));
            }
            if let Some(st) = reg.steward(&s.name) {
                stewards.insert(s.name.clone(), st.clone());
            }
            if s.is_job() {
                completed.insert(s.name.clone(), reg.completed(&s.name));
            }
        }
        RegistryView {
            nodes: reg.live_nodes().cloned().collect(),
            specs,
            instances,
            stewards,
            completed,
        }
    }

    pub(super) fn publish_view(&mut self) {
        self.view_due = None;
        let status = self.node.status(now());
        let instances = self
            .node
            .hosted()
            .iter()
            .map(|(id, h)| {
                let r = self.exec.running_one(id);
                LocalInstance {
                    instance: id.clone(),
                    service: h.service.clone(),
                    node: self.id.clone(),
                    role: h.role,
                    serving: h.serving,
                    hot: h.hot,
                    pid: r.as_ref().map(|r| r.pid),
                    port: r.as_ref().map(|r| r.port),
                    command: r.map(|r| r.command).unwrap_or_default(),
                }
            })
            .collect();
        let reg = self.reg.read();
        let view = NodeView {
            status,
            instances,
            stewards: reg.stewarded_by(&self.id).cloned().collect(),
            placements_in_flight: self.node.placements_in_flight(),
            gpu_source: self.gpus.describe(),
            live_peers: reg.live_count(),
        };
        self.shared
            .views
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.id.clone(), view);
    }
}
