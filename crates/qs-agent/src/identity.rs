//! Node identities: each node's Ed25519 key in the state directory; in the fleet's `nodes` KV
//! bucket, each node's certificate from the fleet authority and the authority's revocations
//! (or, trusting on first use, each node's bare public key); and the process's keyring
//! ([`Auth`]), which learns every peer from that bucket and seals and opens every envelope
//! the process sends and receives.
//!
//! Between the nodes of one process (`qs up` on the in-memory fabric) frames go open: nothing
//! crosses a process boundary there. An agent on NATS requires a tag on everything it hears.

use crate::backoff::Backoff;
use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use qs_core::Time;
use qs_core::auth::{AuthConfig, CertificateView, Keyring, Learned, Reject, Rejected};
use qs_core::trust::{Anchor, Refusal};
use qs_fabric::{Fabric, FabricError, Kv, KvEvent};
use qs_store::{StateDir, StateFile};
use qs_wire::{Envelope, Event, Frame, FrameKind, Message, NodeId, NodeRecord};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

use crate::names::NODES_BUCKET;

/// How long the first registration may take before the agent goes on without it (and keeps
/// trying in the background).
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Why a node's identity could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("key file {path}: {message}")]
    KeyFile { path: PathBuf, message: String },
    #[error(
        "node `{node}` is registered in the fleet with another key (fingerprint {registered}); \
         this agent's key is {ours} ({path}). Another machine may use this name; if this one \
         was reinstalled and lost its key, start it once with --rekey"
    )]
    KeyConflict {
        node: NodeId,
        registered: String,
        ours: String,
        path: PathBuf,
    },
    #[error("the fleet's registry entry for `{node}` is unreadable: {message}")]
    BadRecord { node: NodeId, message: String },
    #[error(transparent)]
    Fabric(#[from] FabricError),
}

/// The node's 32 secret bytes: read from its key file, or drawn from the OS and written
/// there (mode 0600, through the state directory's atomic write) on first start.
pub fn load_or_create_secret(state: &StateDir, node: &NodeId) -> Result<[u8; 32], IdentityError> {
    let file = StateFile::Key(node);
    let path = state.path(file);
    let err = |message: String| IdentityError::KeyFile {
        path: path.clone(),
        message,
    };
    if let Some(bytes) = state.read(file).map_err(|e| err(e.to_string()))? {
        let text = String::from_utf8_lossy(&bytes);
        return qs_wire::identity::unhex(&text).map_err(|e| err(e.to_string()));
    }
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret)
        .map_err(|e| err(format!("no randomness from the OS: {e}")))?;
    state
        .write(
            file,
            qs_wire::identity::hex(&secret).as_bytes(),
            Some(0o600),
        )
        .map_err(|e| err(e.to_string()))?;
    Ok(secret)
}

/// Puts this node's record in the registry, unless it is there already with the same key.
/// Another key there is a conflict, unless `rekey` replaces it.
pub async fn register<K: Kv>(
    kv: &K,
    node: &NodeId,
    record: &NodeRecord,
    rekey: bool,
    key_file: &Path,
) -> Result<(), IdentityError> {
    let value = Bytes::from(serde_json::to_vec(record).expect("records serialize"));
    loop {
        let expected = match kv.get(node.as_str()).await? {
            None => None,
            Some(entry) => {
                let theirs = NodeRecord::decode(&entry.value).map_err(|message| {
                    IdentityError::BadRecord {
                        node: node.clone(),
                        message,
                    }
                })?;
                if theirs.public_key == record.public_key {
                    return Ok(());
                }
                if !rekey {
                    return Err(IdentityError::KeyConflict {
                        node: node.clone(),
                        registered: theirs.fingerprint().to_string(),
                        ours: record.fingerprint().to_string(),
                        path: key_file.to_path_buf(),
                    });
                }
                Some(entry.revision)
            }
        };
        match kv.cas(node.as_str(), value.clone(), expected).await {
            Ok(_) => return Ok(()),
            // Someone wrote it meanwhile: look again.
            Err(FabricError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// One of this process's nodes, for registration.
#[derive(Clone, Debug)]
pub struct Own {
    pub node: NodeId,
    pub record: NodeRecord,
    pub key_file: PathBuf,
}

/// Registers each of `own`; a fabric error stops it (to be tried again), what is wrong with
/// one node's registration (another key holds its name) is returned and the others go on.
async fn register_all<F: Fabric>(
    fabric: &F,
    own: &[Own],
    rekey: bool,
) -> Result<Vec<IdentityError>, FabricError> {
    let kv = fabric.kv(NODES_BUCKET).await?;
    let mut refused = Vec::new();
    for o in own {
        match register(&kv, &o.node, &o.record, rekey, &o.key_file).await {
            Ok(()) => {}
            Err(IdentityError::Fabric(e)) => return Err(e),
            Err(e) => refused.push(e),
        }
    }
    Ok(refused)
}

/// Registers this process's nodes at start, briefly: a name held by another key is an error
/// (the agent stops while it can still say so); a fabric that does not answer in time is left
/// to [`follow`], which keeps trying.
pub async fn register_at_start<F: Fabric>(
    fabric: &F,
    own: &[Own],
    rekey: bool,
) -> Result<(), IdentityError> {
    match tokio::time::timeout(REGISTER_TIMEOUT, register_all(fabric, own, rekey)).await {
        Ok(Ok(refused)) => refused.into_iter().next().map_or(Ok(()), Err),
        Ok(Err(e)) => {
            tracing::warn!("node registry: {e}; retrying in the background");
            Ok(())
        }
        Err(_) => Ok(()),
    }
}

/// The process's keyring and what it counts; shared by the runtimes, the heartbeat feed and
/// the API.
pub struct Auth {
    required: bool,
    keyring: Mutex<Keyring>,
    /// Messages dropped, by reason.
    pub rejected: Family<Vec<(String, String)>, Counter>,
    /// Certificates, revocations and join requests refused, by reason.
    pub refused: Family<Vec<(String, String)>, Counter>,
    /// Quarantines begun, waiting for a runtime to record them in the ledger.
    quarantines: Mutex<Vec<Event>>,
    /// Whether `quarantines` has any: every received message asks, so it asks no lock.
    quarantines_pending: AtomicBool,
}

impl Auth {
    /// A keyring under `anchor`'s certificates, or trusting on first use without one; its
    /// session keys draw on randomness from the OS, without which it is not made.
    pub fn new(config: AuthConfig, anchor: Option<Anchor>) -> Result<Self, IdentityError> {
        let rejected = Family::default();
        for reason in Reject::ALL {
            // Every reason shows in /metrics from the start, at 0.
            let _ = rejected.get_or_create(&vec![("reason".into(), reason.as_str().into())]);
        }
        let refused = Family::default();
        for reason in Refusal::ALL {
            let _ = refused.get_or_create(&vec![("reason".into(), reason.as_str().into())]);
        }
        let mut keyring = match anchor {
            Some(anchor) => Keyring::with_anchor(config, anchor),
            None => Keyring::new(config),
        };
        let mut entropy = [0u8; 32];
        getrandom::getrandom(&mut entropy).map_err(|e| IdentityError::KeyFile {
            path: PathBuf::from("(the OS's randomness)"),
            message: format!("none for session keys: {e}"),
        })?;
        keyring.reseed(&entropy);
        Ok(Auth {
            required: config.required,
            keyring: Mutex::new(keyring),
            rejected,
            refused,
            quarantines: Mutex::default(),
            quarantines_pending: AtomicBool::new(false),
        })
    }

    fn keyring(&self) -> std::sync::MutexGuard<'_, Keyring> {
        self.keyring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a node of this process; returns its public key.
    pub fn add_local(&self, node: NodeId, secret: [u8; 32]) -> [u8; 32] {
        self.keyring().add_local(node, secret)
    }

    /// Frames an encoded envelope from a node of this process, to `to` or to all.
    pub fn seal(&self, from: &NodeId, to: Option<&NodeId>, body: &[u8]) -> Bytes {
        if !self.required {
            return Bytes::from(Frame::write(FrameKind::Open, &[], body));
        }
        let now = crate::clock::now();
        Bytes::from(self.keyring().seal_at(from, to, body, Some(now)))
    }

    /// Frames a message of the task channels from a node of this process
    /// ([`Keyring::seal_bus`]).
    pub fn seal_bus(&self, from: &NodeId, body: &[u8]) -> Bytes {
        Bytes::from(self.keyring().seal_bus(from, body))
    }

    /// Opens a message of the task channels received on `topic`: its body decoded and
    /// checked (`decode_bus`), then its frame checked against the sender the body names
    /// (`sender`): signed by it, a peer in good standing. What is dropped is counted.
    pub fn open_bus<T: qs_wire::task_bus::BusMessage>(
        &self,
        topic: &str,
        bytes: &[u8],
        sender: impl Fn(&T) -> &NodeId,
    ) -> Result<T, String> {
        let now = crate::clock::now();
        let malformed = |detail: String| {
            let r = Rejected {
                reason: Reject::Malformed,
                sender: None,
                quarantined_until: None,
                detail: Some(detail.clone()),
            };
            self.count(r, now);
            detail
        };
        let frame = Frame::parse(bytes).map_err(|e| malformed(format!("{topic}: {e}")))?;
        let message = qs_wire::task_bus::decode_bus::<T>(topic, frame.body)
            .map_err(|e| malformed(e.to_string()))?;
        self.check_signed(topic, &frame, sender(&message))
            .map(|()| message)
    }

    /// Checks that `sender` signed `frame` (a peer in good standing, or a node of this
    /// process), received on `topic`; a drop is counted.
    pub fn check_signed(
        &self,
        topic: &str,
        frame: &Frame<'_>,
        sender: &NodeId,
    ) -> Result<(), String> {
        let now = crate::clock::now();
        let checked = self.keyring().check_bus(sender, frame, now);
        checked.map_err(|r| {
            let why = format!("{topic}: {r}");
            self.count(r, now);
            why
        })
    }

    /// A node of this process's public keys: Ed25519 and ML-KEM-768.
    pub fn own_keys(&self, node: &NodeId) -> Option<([u8; 32], Vec<u8>)> {
        let k = self.keyring();
        Some((k.public_key(node)?, k.kem_public(node)?))
    }

    /// A trust document signed by a node of this process.
    pub fn sign_document<T: qs_wire::trust::Document>(
        &self,
        node: &NodeId,
        doc: &T,
    ) -> qs_wire::trust::Signed {
        self.keyring()
            .sign_document(node, doc)
            .expect("a node of this process")
    }

    /// Counts a refusal of the join service.
    pub fn count_refusal(&self, reason: Refusal) {
        self.keyring().count_refusal(reason);
        self.refused
            .get_or_create(&vec![("reason".into(), reason.as_str().into())])
            .inc();
    }

    /// The certificates held, by node (empty when trusting on first use).
    pub fn certificates(&self) -> Vec<CertificateView> {
        self.keyring().certificates()
    }

    /// The newest certificate this keyring holds of `node`, and when `node` was revoked:
    /// what the registry said, less what was deleted or written back over it since.
    pub fn held(&self, node: &NodeId) -> (Option<qs_wire::trust::Signed>, Option<u64>) {
        let k = self.keyring();
        (k.held(node).cloned(), k.revoked_at(node))
    }

    /// Under certificates: the fleet's anchor.
    pub fn anchor(&self) -> Option<Anchor> {
        self.keyring().anchor().cloned()
    }

    /// Opens frames received by `to` (`None`: broadcasts); what is dropped is counted and
    /// logged, and a quarantine it begins is queued for the ledger.
    pub fn open_many<'a>(
        &self,
        to: Option<&'a NodeId>,
        frames: impl IntoIterator<Item = &'a [u8]>,
    ) -> Vec<Option<Envelope<Message>>> {
        let now = crate::clock::now();
        if !self.required {
            // Nothing to check between the nodes of one process but the bytes themselves.
            return frames
                .into_iter()
                .map(|bytes| {
                    qs_core::auth::open_unauthenticated(bytes)
                        .map_err(|e| self.count(e, now))
                        .ok()
                })
                .collect();
        }
        let opened = self.keyring().open_many(to, frames, now);
        opened
            .into_iter()
            .map(|r| r.map_err(|e| self.count(e, now)).ok())
            .collect()
    }

    /// Opens one frame received by `to`.
    pub fn open(&self, to: Option<&NodeId>, bytes: &[u8]) -> Option<Envelope<Message>> {
        self.open_many(to, [bytes]).pop().flatten()
    }

    fn count(&self, r: Rejected, now: Time) {
        self.rejected
            .get_or_create(&vec![("reason".into(), r.reason.as_str().into())])
            .inc();
        match r.reason {
            Reject::Quarantined => {}
            Reject::UnknownSender => tracing::debug!("dropped a message: {r}"),
            _ => tracing::warn!("dropped a message: {r}"),
        }
        if let (Some(until), Some(peer)) = (r.quarantined_until, r.sender) {
            let for_ms = until.as_micros().saturating_sub(now.as_micros()) / 1000;
            tracing::warn!("quarantined {peer} for {for_ms} ms");
            self.quarantines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Event::PeerQuarantined {
                    peer,
                    reason: r.reason.as_str().into(),
                    for_ms,
                });
            self.quarantines_pending.store(true, Ordering::Release);
        }
    }

    /// Quarantines begun since the last call, as ledger events.
    pub fn take_quarantines(&self) -> Vec<Event> {
        if !self.quarantines_pending.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        std::mem::take(&mut self.quarantines.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Peers quarantined now.
    pub fn quarantined(&self) -> Vec<NodeId> {
        let now = crate::clock::now();
        self.keyring().quarantined(now).cloned().collect()
    }

    /// `from` (a node of this process) vouches for `bytes` to `to` ([`Keyring::tag`]).
    pub fn tag(&self, from: &NodeId, to: &NodeId, bytes: &[u8]) -> Option<[u8; 32]> {
        self.keyring().tag(from, to, bytes)
    }

    /// Whether `tag` is `from`'s for `to` over `bytes` ([`Keyring::check_tag`]).
    pub fn check_tag(&self, from: &NodeId, to: &NodeId, bytes: &[u8], tag: &[u8]) -> bool {
        self.required
            && self
                .keyring()
                .check_tag(from, to, bytes, tag, crate::clock::now())
    }

    /// Whether messages must be signed by nodes the keyring knows (a fleet of more than one
    /// process).
    pub fn requires_keys(&self) -> bool {
        self.required
    }

    /// Whether a record `node` signed can be checked here (a peer's, or this process's).
    pub fn can_verify(&self, node: &NodeId) -> bool {
        self.keyring().can_verify(node)
    }

    /// Whether the keyring holds `node`'s public key.
    pub fn knows(&self, node: &NodeId) -> bool {
        self.keyring().knows(node)
    }

    /// Learns a `nodes` entry: a revocation (`revoked.SERIAL`), a certificate, or (trusting
    /// on first use) a bare key.
    fn learn(&self, key: &str, value: &[u8]) {
        if self.keyring().anchor().is_some() {
            return self.learn_signed(key, value);
        }
        self.learn_key(key, value);
    }

    fn learn_signed(&self, key: &str, value: &[u8]) {
        let learned = self.keyring().learn_entry(key, value, crate::clock::now());
        match learned {
            Ok(Learned::Revocation(node)) => {
                tracing::warn!("node {node}'s certificate was revoked: nothing it sends is heard");
            }
            Ok(Learned::Certificate(_)) => {}
            Err(reason) => {
                self.refused
                    .get_or_create(&vec![("reason".into(), reason.as_str().into())])
                    .inc();
                tracing::warn!(key, "ignored a registry entry: {reason}");
            }
        }
    }

    fn learn_key(&self, node: &str, value: &[u8]) {
        let Ok(id) = NodeId::new(node) else {
            return tracing::warn!(key = node, "ignored a registry entry: not a node id");
        };
        let key = NodeRecord::decode(value).and_then(|r| r.key().map_err(|e| e.to_string()));
        match key {
            Ok(key) => {
                if let Err(e) = self.keyring().learn(id, key) {
                    tracing::warn!("ignored a registry entry: {e}");
                }
            }
            Err(e) => tracing::warn!(node, "ignored an unreadable registry entry: {e}"),
        }
    }

    /// Forgets a node whose entry was deleted: trusting on first use only. Under
    /// certificates a node leaves by expiry or revocation; a deletion (which any writer of
    /// the bucket can make) would silence it.
    fn forget(&self, node: &str) {
        if self.keyring().anchor().is_some() {
            return tracing::warn!(key = node, "ignored the deletion of a registry entry");
        }
        if let Ok(id) = NodeId::new(node) {
            self.keyring().forget(&id);
        }
    }
}

/// Registers this process's nodes (tries again with backoff while the fabric cannot; a
/// conflict is logged and given up), then follows the registry, teaching `auth` every key,
/// until `stop`.
pub async fn follow<F: Fabric>(
    fabric: F,
    auth: std::sync::Arc<Auth>,
    own: Vec<Own>,
    rekey: bool,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
    let mut registered = false;
    loop {
        let attempt = async {
            if !registered {
                for e in register_all(&fabric, &own, rekey).await? {
                    tracing::error!("{e}; its messages will be dropped by the fleet");
                }
                registered = true;
            }
            fabric.kv(NODES_BUCKET).await?.watch("").await
        };
        let tried = tokio::select! {
            _ = stop.changed() => return,
            r = tokio::time::timeout(REGISTER_TIMEOUT, attempt) => r,
        };
        let mut watch = match tried {
            Ok(Ok(watch)) => {
                backoff.reset();
                watch
            }
            Ok(Err(e)) => {
                tracing::warn!("node registry: {e}; retrying");
                if backoff.wait(&mut stop).await {
                    return;
                }
                continue;
            }
            Err(_) => {
                tracing::warn!("node registry: no answer; retrying");
                if backoff.wait(&mut stop).await {
                    return;
                }
                continue;
            }
        };
        loop {
            let event = tokio::select! {
                _ = stop.changed() => return,
                e = watch.next() => e,
            };
            match event {
                Some(Ok(KvEvent::Put(e))) => auth.learn(&e.key, &e.value),
                Some(Ok(KvEvent::Delete { key, .. })) => auth.forget(&key),
                Some(Ok(KvEvent::Synced)) => {}
                Some(Err(e)) => tracing::warn!("node registry watch: {e}"),
                // The watch fell behind or its server went away: watch again.
                None => break,
            }
        }
        if backoff.wait(&mut stop).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qs_fabric::memory::MemoryFabric;

    #[test]
    fn a_key_is_created_once_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let node = NodeId::new("forge").unwrap();
        let first = load_or_create_secret(&state, &node).unwrap();
        assert_eq!(load_or_create_secret(&state, &node).unwrap(), first);
        use std::os::unix::fs::PermissionsExt;
        let key_path = state.path(StateFile::Key(&node));
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&key_path, "not hex").unwrap();
        let err = load_or_create_secret(&state, &node)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("forge.ed25519") && err.contains("64 hex digits"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_name_registered_with_another_key_is_refused_unless_rekeyed() {
        let fabric = MemoryFabric::new();
        let kv = fabric.kv(NODES_BUCKET).await.unwrap();
        let node = NodeId::new("forge").unwrap();
        let path = Path::new("keys/forge.ed25519");
        let first = NodeRecord::new([1; 32], 1, 0);
        let second = NodeRecord::new([2; 32], 1, 0);
        register(&kv, &node, &first, false, path).await.unwrap();
        register(&kv, &node, &first, false, path).await.unwrap();
        let err = register(&kv, &node, &second, false, path)
            .await
            .unwrap_err();
        assert!(matches!(err, IdentityError::KeyConflict { .. }), "{err}");
        assert!(err.to_string().contains("--rekey"), "{err}");
        register(&kv, &node, &second, true, path).await.unwrap();
        let stored: NodeRecord =
            serde_json::from_slice(&kv.get("forge").await.unwrap().unwrap().value).unwrap();
        assert_eq!(stored, second);
    }
}
