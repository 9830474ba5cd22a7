//! Mirrors this agent's ledger into the fleet's copy of it ([`qs_fabric::LedgerSink`]: on
//! NATS, the fleet's JetStream stream), so the fleet's history outlives any one machine.
//! Records go in order, each once; while the fabric is unreachable the mirror waits and then
//! catches up from where the sink left off.

use crate::backoff::Backoff;
use qs_fabric::{Bytes, Fabric, FabricError, LedgerSink};
use qs_store::Ledger;
use qs_wire::{NodeId, Record};
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
pub async fn run<F: Fabric>(
    fabric: F,
    node: NodeId,
    ledger: Arc<Ledger>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    let mirror = loop {
        match tokio::time::timeout(BACKOFF_MAX, fabric.ledger(&node)).await {
            Ok(Ok(m)) => break m,
            Ok(Err(e)) => tracing::warn!("ledger mirror: {e}; retrying"),
            Err(_) => tracing::warn!("ledger mirror: JetStream did not answer; retrying"),
        }
        if backoff.wait(&mut stop).await {
            return;
        }
    };
    // The next record to send; None: ask the stream where it stands (at start, and after a
    // failure, since an append may have landed although its acknowledgement was lost).
    let mut from: Option<u64> = None;
    while !*stop.borrow() {
        let next = match from {
            // The stream's word (a header anyone who can publish could have forged) is taken
            // only up to what this ledger holds: beyond it, mirroring resumes from here.
            None => mirror.resume_from().await.map(|resume| {
                let held = ledger.next_seq();
                if resume > held {
                    tracing::warn!(
                        "ledger mirror: the stream claims records up to {resume}, this ledger \
                         holds {held}; mirroring from {held}"
                    );
                }
                resume.min(held)
            }),
            Some(from) => {
                let l = ledger.clone();
                let records = match tokio::task::spawn_blocking(move || {
                    l.follow(from, BATCH, FOLLOW)
                })
                .await
                {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => {
                        tracing::error!("ledger mirror: reading the ledger: {e}");
                        return;
                    }
                    Err(_) => return,
                };
                append_all(&mirror, records, from).await
            }
        };
        match next {
            Ok(next) => {
                backoff.reset();
                from = Some(next);
            }
            Err(e) => {
                tracing::warn!("ledger mirror: {e}; retrying");
                from = None;
                if backoff.wait(&mut stop).await {
                    return;
                }
            }
        }
    }
}

/// Appends `records` in order; returns the sequence number after the last one.
async fn append_all<S: LedgerSink>(
    mirror: &S,
    records: Vec<Record>,
    mut from: u64,
) -> Result<u64, FabricError> {
    for r in records {
        let bytes = Bytes::from(serde_json::to_vec(&r).expect("records serialize"));
        mirror.append(r.seq, bytes).await?;
        from = r.seq + 1;
    }
    Ok(from)
}
