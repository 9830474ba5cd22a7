//! Desired state in the fleet's specs KV: storing a document's workloads, and watching them.

use crate::error::AgentError;
use crate::names::SPECS_BUCKET;
use qs_fabric::{Bytes, Fabric, Kv};
use qs_wire::ServiceName;
use std::time::Duration;

/// How long one try to watch the specs KV may take: a JetStream cluster electing its leaders
/// under load answers slowly, and a try cut short would only start over.
const WATCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Stores every workload of a document as desired state (the KV every node watches).
/// Validation happened when the document was parsed; this is all or nothing per workload.
pub async fn put_specs<F: Fabric>(
    fabric: &F,
    doc: &qs_wire::SpecDocument,
) -> Result<Vec<ServiceName>, qs_fabric::FabricError> {
    let kv = fabric.kv(SPECS_BUCKET).await?;
    let mut applied = Vec::new();
    for w in &doc.workloads {
        let bytes = Bytes::from(serde_json::to_vec(w).expect("specs serialize"));
        kv.put(w.name.as_str(), bytes).await?;
        applied.push(w.name.clone());
    }
    Ok(applied)
}

/// Why `doc` cannot be applied yet, if it declares model runtimes: they are parsed and
/// checked (`qs check`), but this agent does not run them yet, and applying them would
/// change nothing.
pub fn unsupported(file: &str, doc: &qs_wire::SpecDocument) -> Option<String> {
    let first = doc.models.first()?;
    Some(format!(
        "{file}: model.{}: model runtimes are checked but not yet run by this qs; apply \
         services and jobs only",
        first.name
    ))
}

/// Watches the specs KV, giving up after a while when the fabric cannot serve it (its server
/// is unreachable).
pub async fn watch_specs<F: Fabric>(fabric: &F) -> Result<qs_fabric::Watch, AgentError> {
    let watch = async { fabric.kv(SPECS_BUCKET).await?.watch("").await };
    tokio::time::timeout(WATCH_TIMEOUT, watch)
        .await
        .map_err(|_| AgentError::Timeout {
            what: "watching the specs KV",
            after: WATCH_TIMEOUT,
        })?
        .map_err(AgentError::from)
}
