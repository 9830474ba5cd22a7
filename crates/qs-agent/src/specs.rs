//! Desired state in the fleet's specs KV: storing a document's workloads, and watching them.

use crate::error::AgentError;
use crate::names::{MODELS_BUCKET, SPECS_BUCKET};
use qs_fabric::{Bytes, Fabric, Kv};
use qs_wire::ServiceName;
use std::time::Duration;

/// How long one try to watch the specs KV may take: a JetStream cluster electing its leaders
/// under load answers slowly, and a try cut short would only start over.
const WATCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Stores every workload of a document as desired state (the KV every node watches), and
/// every model runtime in the models KV (which every model host watches). Validation
/// happened when the document was parsed; this is all or nothing per workload or model.
pub async fn put_specs<F: Fabric>(
    fabric: &F,
    doc: &qs_wire::SpecDocument,
) -> Result<Vec<ServiceName>, qs_fabric::FabricError> {
    let mut applied = Vec::new();
    if !doc.workloads.is_empty() {
        let kv = fabric.kv(SPECS_BUCKET).await?;
        for w in &doc.workloads {
            let bytes = Bytes::from(serde_json::to_vec(w).expect("specs serialize"));
            kv.put(w.name.as_str(), bytes).await?;
            applied.push(w.name.clone());
        }
    }
    if !doc.models.is_empty() {
        let kv = fabric.kv(MODELS_BUCKET).await?;
        for m in &doc.models {
            let bytes = Bytes::from(serde_json::to_vec(m).expect("models serialize"));
            kv.put(m.name.as_str(), bytes).await?;
            applied.push(m.name.clone());
        }
    }
    Ok(applied)
}

/// Watches the specs KV, giving up after a while when the fabric cannot serve it (its server
/// is unreachable).
pub async fn watch_specs<F: Fabric>(fabric: &F) -> Result<qs_fabric::Watch, AgentError> {
    watch_bucket(fabric, SPECS_BUCKET).await
}

/// Watches a bucket of desired state (`specs`, `models`), bounded like [`watch_specs`].
pub async fn watch_bucket<F: Fabric>(
    fabric: &F,
    bucket: &'static str,
) -> Result<qs_fabric::Watch, AgentError> {
    let watch = async { fabric.kv(bucket).await?.watch("").await };
    tokio::time::timeout(WATCH_TIMEOUT, watch)
        .await
        .map_err(|_| AgentError::Timeout {
            what: "watching a desired-state KV",
            after: WATCH_TIMEOUT,
        })?
        .map_err(AgentError::from)
}
