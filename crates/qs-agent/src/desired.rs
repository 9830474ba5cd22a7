//! The desired-state cache: the specs KV as this process last saw it, kept in the state
//! directory, so what was applied rules after a restart until the KV answers.

use crate::backoff::Backoff;
use crate::specs::watch_specs;
use qs_fabric::{Fabric, KvEvent};
use qs_store::{StateDir, StateFile, StoreError};
use qs_wire::{SpecDocument, WorkloadSpec};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::watch;

/// How long changes are gathered before the file is rewritten: applying a document of two
/// thousand services writes it once, not two thousand times.
const GATHER: Duration = Duration::from_millis(100);

/// Reads the cache; a missing file is an empty desired state, a damaged one an error that
/// names it with line and column (nothing is applied from it, and the agent does not start:
/// the operator removes or repairs the file).
pub fn load(state: &StateDir) -> Result<SpecDocument, StoreError> {
    let workloads: Vec<WorkloadSpec> = state.read_json(StateFile::SpecsCache)?.unwrap_or_default();
    Ok(SpecDocument {
        workloads,
        nodes: vec![],
    })
}

/// Mirrors every change of the specs KV into the cache file.
pub async fn keep<F: Fabric>(fabric: F, state: StateDir, mut stop: watch::Receiver<bool>) {
    // The KV may not answer yet (an agent started while NATS is down): try again.
    let mut backoff = Backoff::new(GATHER, Duration::from_secs(5));
    let mut watch = loop {
        match watch_specs(&fabric).await {
            Ok(w) => break w,
            Err(e) => tracing::warn!("desired-state cache: {e}; retrying"),
        }
        if backoff.wait(&mut stop).await {
            return;
        }
    };
    let mut specs: BTreeMap<String, WorkloadSpec> = BTreeMap::new();
    let mut due: Option<tokio::time::Instant> = None;
    loop {
        let write_at = due.unwrap_or_else(|| tokio::time::Instant::now() + GATHER);
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep_until(write_at), if due.is_some() => {
                due = None;
                write(&state, &specs);
                continue;
            }
            e = watch.next() => match e {
                Some(Ok(KvEvent::Put(e))) => {
                    match serde_json::from_slice::<WorkloadSpec>(&e.value) {
                        Ok(spec) => {
                            specs.insert(e.key, spec);
                        }
                        Err(err) => tracing::warn!(key = e.key, "desired-state cache: unreadable spec: {err}"),
                    }
                }
                Some(Ok(KvEvent::Delete { key, .. })) => {
                    specs.remove(&key);
                }
                Some(Ok(KvEvent::Synced)) => continue,
                Some(Err(e)) => tracing::warn!("desired-state cache: {e}"),
                None => break,
            },
        }
        due.get_or_insert(write_at);
    }
    // What changed since the last write is not lost at shutdown.
    if due.is_some() {
        write(&state, &specs);
    }
}

fn write(state: &StateDir, specs: &BTreeMap<String, WorkloadSpec>) {
    let all: Vec<&WorkloadSpec> = specs.values().collect();
    if let Err(e) = state.write_json(StateFile::SpecsCache, &all) {
        tracing::error!("desired-state cache: {e}");
    }
}
