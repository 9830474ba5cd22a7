//! The desired-state cache: the specs and models KVs as this process last saw them, kept in
//! the state directory, so what was applied rules after a restart until the KV answers.

use crate::backoff::Backoff;
use crate::names::{MODELS_BUCKET, SPECS_BUCKET};
use crate::specs::watch_bucket;
use qs_fabric::{Bytes, Fabric, KvEvent};
use qs_store::{StateDir, StateFile, StoreError};
use qs_wire::{ModelSpec, SpecDocument, WorkloadSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::sync::watch;

/// How long changes are gathered before the file is rewritten: applying a document of two
/// thousand services writes it once, not two thousand times.
const GATHER: Duration = Duration::from_millis(100);

/// Reads the cache; a missing file is an empty desired state, a damaged one an error that
/// names it with line and column (nothing is applied from it, and the agent does not start:
/// the operator removes or repairs the file).
pub fn load(state: &StateDir) -> Result<SpecDocument, StoreError> {
    let mut workloads: Vec<WorkloadSpec> =
        state.read_json(StateFile::SpecsCache)?.unwrap_or_default();
    // Only checked specs are cached; one that breaks a rule now (edited by hand, or a rule
    // this version added) is left out and logged, and the KV's copy rules once it is read.
    workloads.retain(|w| match w.validate() {
        Ok(()) => true,
        Err(f) => {
            tracing::error!(
                file = %state.path(StateFile::SpecsCache).display(),
                "desired-state cache: left out {}: {}: {}",
                w.name,
                f.field,
                f.reason
            );
            false
        }
    });
    let mut models: Vec<ModelSpec> = state.read_json(StateFile::ModelsCache)?.unwrap_or_default();
    models.retain(|m| match m.validate() {
        Ok(()) => true,
        Err(f) => {
            tracing::error!(
                file = %state.path(StateFile::ModelsCache).display(),
                "desired-state cache: left out {}: {}: {}",
                m.name,
                f.field,
                f.reason
            );
            false
        }
    });
    Ok(SpecDocument {
        workloads,
        models,
        ..SpecDocument::default()
    })
}

/// One bucket the cache mirrors: where it is kept, and how a value is checked and encoded.
#[derive(Clone, Copy)]
struct Mirrored {
    bucket: &'static str,
    file: StateFile<'static>,
    encoded: fn(&str, &[u8]) -> Result<Bytes, qs_wire::SpecError>,
}

const MIRRORED: [Mirrored; 2] = [
    Mirrored {
        bucket: SPECS_BUCKET,
        file: StateFile::SpecsCache,
        encoded,
    },
    Mirrored {
        bucket: MODELS_BUCKET,
        file: StateFile::ModelsCache,
        encoded: encoded_model,
    },
];

/// Mirrors the specs and the models KVs into their cache files until `stop`.
pub async fn keep<F: Fabric>(fabric: F, state: StateDir, stop: watch::Receiver<bool>) {
    let [specs, models] = MIRRORED;
    tokio::join!(
        keep_one(fabric.clone(), state.clone(), specs, stop.clone()),
        keep_one(fabric, state, models, stop),
    );
}

/// Mirrors every change of one KV into its cache file. Each spec is kept encoded (once,
/// when it changes), so a rewrite copies them into one JSON array rather than encoding every
/// spec again; the file is written on a blocking thread, never on the
/// runtime's workers (a fleet of twenty thousand services is megabytes, fsynced). Each
/// replay (the first, and that of a watch made again after one ended: it fell behind) is
/// the bucket as it is now: what it does not show is gone from the file.
async fn keep_one<F: Fabric>(
    fabric: F,
    state: StateDir,
    m: Mirrored,
    mut stop: watch::Receiver<bool>,
) {
    // The KV may not answer yet (an agent started while NATS is down): try again.
    let mut backoff = Backoff::new(GATHER, Duration::from_secs(5));
    let mut specs: BTreeMap<String, Bytes> = BTreeMap::new();
    let mut due: Option<tokio::time::Instant> = None;
    // While a watch replays: the keys it has shown so far.
    let mut replayed: Option<BTreeSet<String>> = None;
    let mut watch: Option<qs_fabric::Watch> = None;
    loop {
        let Some(w) = watch.as_mut() else {
            match watch_bucket(&fabric, m.bucket).await {
                Ok(w) => {
                    watch = Some(w);
                    replayed = Some(BTreeSet::new());
                }
                Err(e) => {
                    tracing::warn!("desired-state cache: {e}; retrying");
                    if backoff.wait(&mut stop).await {
                        break;
                    }
                }
            }
            continue;
        };
        // Only waited on while a write is due.
        let write_at = due.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep_until(write_at), if due.is_some() => {
                due = None;
                write(&state, m.file, &specs).await;
                continue;
            }
            e = w.next() => match e {
                // A spec that breaks a rule is not cached: the last good one stays.
                Some(Ok(KvEvent::Put(e))) => {
                    backoff.reset();
                    if let Some(seen) = replayed.as_mut() {
                        seen.insert(e.key.clone());
                    }
                    match (m.encoded)(&e.key, &e.value) {
                        Ok(json) => {
                            specs.insert(e.key, json);
                        }
                        Err(err) => tracing::warn!("desired-state cache: refused a spec: {err}"),
                    }
                }
                Some(Ok(KvEvent::Delete { key, .. })) => {
                    specs.remove(&key);
                }
                // The end of a replay: the file is written as the bucket is, even when
                // nothing came (what was removed while this agent was down goes too).
                Some(Ok(KvEvent::Synced)) => {
                    let Some(seen) = replayed.take() else { continue };
                    specs.retain(|k, _| seen.contains(k));
                }
                Some(Err(e)) => {
                    tracing::warn!("desired-state cache: {e}; watching again");
                    watch = None;
                    continue;
                }
                None => {
                    watch = None;
                    continue;
                }
            },
        }
        // The first change after a quiet spell starts the gathering now, not when the loop
        // last went round.
        due.get_or_insert_with(|| tokio::time::Instant::now() + GATHER);
    }
    // What changed since the last write is not lost at shutdown.
    if due.is_some() {
        write(&state, m.file, &specs).await;
    }
}

/// A spec from the KV as the cache keeps it: decoded and checked, then encoded again as the
/// spec it decoded to, so nothing it did not know about (unknown fields, stray bytes) reaches
/// the file.
fn encoded(key: &str, kv_value: &[u8]) -> Result<Bytes, qs_wire::SpecError> {
    let spec = qs_wire::decode_workload(&format!("kv {SPECS_BUCKET}/{key}"), key, kv_value)?;
    Ok(Bytes::from(
        serde_json::to_vec(&spec).expect("specs serialize"),
    ))
}

/// A model from the KV as the cache keeps it: checked, and encoded as what it decoded to.
fn encoded_model(key: &str, kv_value: &[u8]) -> Result<Bytes, qs_wire::SpecError> {
    let spec = qs_wire::decode_model(&format!("kv {MODELS_BUCKET}/{key}"), key, kv_value)?;
    Ok(Bytes::from(
        serde_json::to_vec(&spec).expect("models serialize"),
    ))
}

/// Writes `specs` (each one spec's JSON) as `file`'s array, on a blocking thread.
async fn write(state: &StateDir, file: StateFile<'static>, specs: &BTreeMap<String, Bytes>) {
    let (state, specs): (StateDir, Vec<Bytes>) = (state.clone(), specs.values().cloned().collect());
    let written =
        tokio::task::spawn_blocking(move || state.write(file, &json_array(&specs), None)).await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!("desired-state cache: {e}"),
        Err(e) => tracing::error!("desired-state cache: the writer failed: {e}"),
    }
}

/// One JSON array of already encoded values.
fn json_array(values: &[Bytes]) -> Vec<u8> {
    let len = values.iter().map(|v| v.len() + 2).sum::<usize>() + 2;
    let mut body = Vec::with_capacity(len);
    body.push(b'[');
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            body.extend_from_slice(b",\n");
        }
        body.extend_from_slice(v);
    }
    body.extend_from_slice(b"]\n");
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_cache_reads_back_the_specs_the_kv_held() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let state = StateDir::open(dir.path()).expect("a state directory");
        let doc = qs_wire::parse_spec(
            "cache.toml",
            "[service.web]\nreplicas = 2\ncommand = \"no-op\"\n\
             resources = { cpu_cores = 0.5, memory_mib = 64 }\n\
             [service.dns]\nreplicas = 1\ncommand = \"no-op\"\n\
             resources = { cpu_cores = 0.1, memory_mib = 16 }\n",
        )
        .expect("a valid spec");
        // As `keep` holds them: each KV value (here with a field no spec has) through
        // `encoded`.
        let specs: BTreeMap<String, Bytes> = doc
            .workloads
            .iter()
            .map(|s| {
                let mut kv = serde_json::to_value(s).expect("specs serialize");
                kv["not_a_spec_field"] = serde_json::json!(1);
                let kv = serde_json::to_vec(&kv).expect("values serialize");
                let json = encoded(s.name.as_str(), &kv).expect("a valid spec");
                assert!(!String::from_utf8_lossy(&json).contains("not_a_spec_field"));
                (s.name.to_string(), json)
            })
            .collect();
        write(&state, StateFile::SpecsCache, &specs).await;
        let mut back = load(&state).expect("the cache reads back").workloads;
        back.sort_by(|a, b| a.name.cmp(&b.name));
        let mut want = doc.workloads;
        want.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(back, want);
        // Nothing kept: an empty array, not a damaged file.
        write(&state, StateFile::SpecsCache, &BTreeMap::new()).await;
        assert!(load(&state).expect("an empty cache").workloads.is_empty());
    }

    /// One small service, `web`.
    fn web() -> WorkloadSpec {
        let doc = qs_wire::parse_spec(
            "cache.toml",
            "[service.web]\nreplicas = 1\ncommand = \"no-op\"\n\
             resources = { cpu_cores = 0.1, memory_mib = 16 }\n",
        )
        .expect("a valid spec");
        doc.workloads.into_iter().next().expect("one service")
    }

    /// Waits (at most 20 s) until the cache file holds `n` specs.
    async fn cached(state: &StateDir, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while load(state).map(|d| d.workloads.len()).ok() != Some(n) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} specs never cached"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A spec removed from the KV while the agent was down leaves the cache at the end of the
    /// first replay, even when the bucket is now empty (nothing else would rewrite the file).
    #[tokio::test]
    async fn the_cache_forgets_what_the_bucket_no_longer_holds() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let state = StateDir::open(dir.path()).expect("a state directory");
        let json = serde_json::to_vec(&web()).expect("specs serialize");
        let stale = BTreeMap::from([("web".to_owned(), Bytes::from(json))]);
        write(&state, StateFile::SpecsCache, &stale).await;
        cached(&state, 1).await;
        let fabric = qs_fabric::memory::MemoryFabric::new();
        let (stop_tx, stop) = watch::channel(false);
        let kept = tokio::spawn(keep_one(fabric, state.clone(), MIRRORED[0], stop));
        cached(&state, 0).await;
        stop_tx.send(true).expect("the cache listens");
        kept.await.expect("the cache stops");
    }

    /// A burst of changes past the watch's buffer ends the watch: the cache watches again and
    /// goes on mirroring, where it used to stop for good at the first lag.
    #[tokio::test]
    async fn the_cache_goes_on_after_its_watch_fell_behind() {
        use qs_fabric::Kv as _;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let state = StateDir::open(dir.path()).expect("a state directory");
        let fabric = qs_fabric::memory::MemoryFabric::new();
        let kv = fabric.kv(SPECS_BUCKET).await.expect("the specs bucket");
        let template = serde_json::to_value(web()).expect("specs serialize");
        let value = |name: &str| {
            let mut spec = template.clone();
            spec["name"] = serde_json::json!(name);
            Bytes::from(serde_json::to_vec(&spec).expect("values serialize"))
        };
        let (stop_tx, stop) = watch::channel(false);
        let kept = tokio::spawn(keep_one(fabric, state.clone(), MIRRORED[0], stop));
        kv.put("first", value("first")).await.expect("a put");
        cached(&state, 1).await;
        // Without a yield: the watch's buffer fills and the watch ends.
        let burst = qs_fabric::WATCH_BUFFER + 100;
        for i in 0..burst {
            let name = format!("burst-{i}");
            kv.put(&name, value(&name)).await.expect("a put");
        }
        kv.delete("first").await.expect("a delete");
        cached(&state, burst).await;
        stop_tx.send(true).expect("the cache listens");
        kept.await.expect("the cache stops");
    }
}
