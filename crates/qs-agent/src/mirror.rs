//! Mirrors this agent's ledger into the fleet's JetStream stream, so the fleet's history
//! outlives any one machine. Records go in order, each once (see
//! [`qs_fabric::nats::LedgerMirror`]); while NATS is unreachable the mirror waits and then
//! catches up from where the stream left off.

use qs_fabric::Bytes;
use qs_fabric::nats::NatsFabric;
use qs_store::Ledger;
use qs_wire::NodeId;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Records read from the ledger per round at most.
const BATCH: usize = 256;
/// How long one read waits for new records.
const FOLLOW: Duration = Duration::from_millis(500);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Runs until `stop` turns true.
pub async fn run(
    fabric: NatsFabric,
    node: NodeId,
    ledger: Arc<Ledger>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_MIN;
    let wait = async |stop: &mut watch::Receiver<bool>, backoff: &mut Duration| {
        let stopped = tokio::select! {
            _ = stop.changed() => true,
            _ = tokio::time::sleep(*backoff) => false,
        };
        *backoff = (*backoff * 2).min(BACKOFF_MAX);
        stopped || *stop.borrow()
    };
    let mirror = loop {
        match tokio::time::timeout(BACKOFF_MAX, fabric.ledger_mirror(&node)).await {
            Ok(Ok(m)) => break m,
            Ok(Err(e)) => tracing::warn!("ledger mirror: {e}; retrying"),
            Err(_) => tracing::warn!("ledger mirror: JetStream did not answer; retrying"),
        }
        if wait(&mut stop, &mut backoff).await {
            return;
        }
    };
    'resume: loop {
        let mut from = match mirror.resume_from().await {
            Ok(from) => from,
            Err(e) => {
                tracing::warn!("ledger mirror: {e}; retrying");
                if wait(&mut stop, &mut backoff).await {
                    return;
                }
                continue;
            }
        };
        loop {
            if *stop.borrow() {
                return;
            }
            let l = ledger.clone();
            let records =
                match tokio::task::spawn_blocking(move || l.follow(from, BATCH, FOLLOW)).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => {
                        tracing::error!("ledger mirror: reading the ledger: {e}");
                        return;
                    }
                    Err(_) => return,
                };
            for r in records {
                let bytes = Bytes::from(serde_json::to_vec(&r).expect("records serialize"));
                if let Err(e) = mirror.append(r.seq, bytes).await {
                    tracing::warn!("ledger mirror: {e}; retrying");
                    if wait(&mut stop, &mut backoff).await {
                        return;
                    }
                    continue 'resume;
                }
                backoff = BACKOFF_MIN;
                from = r.seq + 1;
            }
        }
    }
}
