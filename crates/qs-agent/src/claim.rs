//! Carries out a singleton's claim on the `instances` KV: read the record, let the core
//! judge it ([`qs_core::judge_record`]), compare-and-set; the answer goes back to the node
//! through its control channel.

use crate::control::Control;
use crate::error::AgentError;
use crate::names::INSTANCES_BUCKET;
use qs_core::RecordVerdict;
use qs_fabric::{Bytes, Fabric, FabricError, Kv};
use qs_wire::{ServiceName, SingletonClaim};
use tokio::sync::mpsc;

/// Compare-and-set tries of one claim before it gives up (each lost try means another
/// writer got in between; the core's claim timeout covers the rest).
const CLAIM_TRIES: usize = 8;

/// Claims `claim` for `service` and reports the outcome to the core (`Input::Claimed`). A fabric
/// that does not answer gets no reply: the placement's claim timeout ends it.
pub(crate) async fn claim_record<F: Fabric>(
    fabric: F,
    service: ServiceName,
    claim: SingletonClaim,
    reply: mpsc::Sender<Control>,
) {
    match try_claim(&fabric, &service, &claim).await {
        Ok(result) => {
            let instance = claim.instance;
            let _ = reply
                .send(Control::Core(Box::new(qs_core::Input::Claimed {
                    service,
                    instance,
                    result,
                })))
                .await;
        }
        Err(e) => tracing::warn!(%service, "claiming the singleton record: {e}"),
    }
}

async fn try_claim<F: Fabric>(
    fabric: &F,
    service: &ServiceName,
    claim: &SingletonClaim,
) -> Result<Result<(), SingletonClaim>, AgentError> {
    let kv = fabric.kv(INSTANCES_BUCKET).await?;
    let value = Bytes::from(claim.encode());
    for _ in 0..CLAIM_TRIES {
        let entry = kv.get(service.as_str()).await?;
        match qs_core::judge_record(entry.as_ref().map(|e| &e.value[..]), claim) {
            RecordVerdict::Refused(holder) => return Ok(Err(holder)),
            RecordVerdict::Replace { why } => {
                tracing::warn!(%service, "replacing the singleton record: {why}");
            }
            RecordVerdict::Write => {}
        }
        let expected = entry.map(|e| e.revision);
        match kv.cas(service.as_str(), value.clone(), expected).await {
            Ok(_) => return Ok(Ok(())),
            Err(FabricError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(AgentError::Contended {
        what: format!("the singleton record of {service}"),
        tries: CLAIM_TRIES,
    })
}
