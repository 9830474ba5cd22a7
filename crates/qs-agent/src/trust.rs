//! The agent's part in fleet trust: getting this node's certificate (from the state
//! directory, from the authority it is, or by joining with a token), renewing it before it
//! expires, and, on a designated authority node, answering the fleet's join requests. Every
//! verdict is the core's (`qs_core::trust`); this moves the documents through the buckets.
//!
//! The buckets: `nodes` holds each node's certificate (key: the node) and each revocation
//! (`revoked.SERIAL`), which every agent follows ([`crate::identity::follow`]); `joins` holds
//! join requests (`request.NODE`), the authority's answers (`answer.NODE`) and the ids of the
//! tokens spent (`used.ID`, written by compare-and-set, so a token brings one node in even
//! with several authority nodes).

use crate::backoff::Backoff;
use crate::identity::Auth;
use crate::names::{JOINS_BUCKET, NODES_BUCKET};
use bytes::Bytes;
use qs_core::auth::REVOKED_PREFIX;
use qs_core::transport::TrustConfig;
use qs_core::trust::{Anchor, Authority, Refusal};
use qs_fabric::{Fabric, FabricError, Kv, KvEvent};
use qs_store::{StateDir, StateFile};
use qs_wire::NodeId;
use qs_wire::identity::hex;
use qs_wire::trust::{Certificate, JoinAnswer, JoinRequest, Signed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long a node waits for the authority's answer to a join request.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How an agent on NATS trusts its peers.
#[derive(Clone)]
pub enum Trust {
    /// The first key registered under a name (one lab machine only).
    FirstUse,
    Certificates(Box<CertTrust>),
}

/// Trust under a fleet authority.
#[derive(Clone)]
pub struct CertTrust {
    pub anchor: Anchor,
    /// A join token, for a node without a valid certificate.
    pub join_token: Option<Signed>,
    /// The authority's key, on a designated authority node.
    pub authority: Option<Arc<Authority>>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trust::FirstUse => write!(f, "FirstUse"),
            Trust::Certificates(c) => write!(
                f,
                "Certificates {{ fleet: {}, authority: {}, token: {}, signs: {} }}",
                c.anchor.fleet,
                c.anchor.fingerprint(),
                c.join_token.is_some(),
                c.authority.is_some()
            ),
        }
    }
}

/// Why a node has no certificate.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(
        "node `{node}` has no valid certificate of fleet {fleet} and no join token: ask the \
         fleet's operator for one (`qs fleet token`) and start it with --join-token"
    )]
    NoToken { node: NodeId, fleet: String },
    #[error("the fleet authority refused node `{node}`: {reason}")]
    Refused { node: NodeId, reason: String },
    #[error(
        "no answer from the fleet authority within {0:?}: is an agent with --authority running?"
    )]
    NoAnswer(Duration),
    #[error("{what}: {detail}")]
    File { what: String, detail: String },
    #[error(transparent)]
    Fabric(#[from] FabricError),
}

fn now_ms() -> u64 {
    crate::clock::now().as_millis()
}

/// The key under which the `nodes` bucket keeps the revocation of `node`.
pub fn revocation_key(node: &NodeId) -> String {
    format!("{REVOKED_PREFIX}{node}")
}

/// Where the authority answers `node`'s request in the `joins` bucket (a key of its own
/// under the prefix the node watches).
fn answer_key(node: &NodeId) -> String {
    format!("answer.{node}.result")
}

/// A random serial (never 0).
fn serial() -> Result<u64, TrustError> {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).map_err(|e| TrustError::File {
        what: "randomness".into(),
        detail: format!("the OS gave none: {e}"),
    })?;
    Ok(u64::from_le_bytes(b) | 1)
}

/// This node's join (or renewal) request, signed by its own key.
fn request(
    auth: &Auth,
    node: &NodeId,
    anchor: &Anchor,
    token: Option<Signed>,
    renews: Option<u64>,
) -> Signed {
    let (public, kem) = auth.own_keys(node).expect("a node of this process");
    auth.sign_document(
        node,
        &JoinRequest {
            fleet: anchor.fleet.clone(),
            node: node.clone(),
            ed25519: hex(&public),
            ml_kem: hex(&kem),
            token,
            renews,
            requested_at_ms: now_ms(),
        },
    )
}

/// `signed`, if it is a valid certificate of `anchor`'s for `node` and its keys.
fn ours(auth: &Auth, signed: &Signed, node: &NodeId, anchor: &Anchor) -> Option<Certificate> {
    let cert = anchor.certificate(signed, now_ms()).ok()?;
    let (public, kem) = auth.own_keys(node)?;
    (cert.node == *node && cert.ed25519 == hex(&public) && cert.ml_kem == hex(&kem)).then_some(cert)
}

/// The certificate kept in the state directory, if it is still ours ([`ours`]).
fn stored(auth: &Auth, state: &StateDir, node: &NodeId, anchor: &Anchor) -> Option<Signed> {
    let bytes = state.read(StateFile::Certificate(node)).ok()??;
    let signed = Signed::decode(&bytes).ok()?;
    ours(auth, &signed, node, anchor).map(|_| signed)
}

fn keep(state: &StateDir, node: &NodeId, cert: &Signed) -> Result<(), TrustError> {
    state
        .write(StateFile::Certificate(node), &cert.encode(), Some(0o600))
        .map_err(|e| TrustError::File {
            what: "certificate".into(),
            detail: e.to_string(),
        })
}

/// This node's certificate at start: the one kept, if still good; one it issues itself, on
/// an authority node; or one the authority answers a join request with (and has put in the
/// `nodes` bucket, where peers learn it). It is kept in the state directory, then put in the
/// bucket (again, for one kept: peers may have lost it).
pub async fn obtain<F: Fabric>(
    fabric: &F,
    auth: &Auth,
    trust: &CertTrust,
    state: &StateDir,
    node: &NodeId,
    level: u8,
    config: &TrustConfig,
) -> Result<Signed, TrustError> {
    if let Some(signed) = stored(auth, state, node, &trust.anchor) {
        // Put again where peers learn it (they may have lost the bucket); a fabric that does
        // not answer now leaves that to the first renewal.
        let put = async {
            let nodes = fabric.kv(NODES_BUCKET).await?;
            nodes.put(node.as_str(), Bytes::from(signed.encode())).await
        };
        if let Ok(Err(e)) | Err(e) = tokio::time::timeout(Duration::from_secs(10), put)
            .await
            .map_err(|_| FabricError::Closed)
        {
            tracing::warn!("node {node}: certificate not published now: {e}");
        }
        return Ok(signed);
    }
    if let Some(authority) = &trust.authority {
        let (public, kem) = auth.own_keys(node).expect("a node of this process");
        let mut capabilities = qs_wire::trust::Capability::member();
        capabilities.insert(qs_wire::trust::Capability::Authority);
        let granted = qs_core::trust::Granted {
            node: node.clone(),
            ed25519: hex(&public),
            ml_kem: hex(&kem),
            level,
            capabilities,
            token_id: None,
        };
        let signed = authority.certify(
            &granted,
            serial()?,
            now_ms(),
            config.certificate_lifetime_ms,
        );
        keep(state, node, &signed)?;
        let nodes = fabric.kv(NODES_BUCKET).await?;
        nodes
            .put(node.as_str(), Bytes::from(signed.encode()))
            .await?;
        return Ok(signed);
    }
    let Some(token) = trust.join_token.clone() else {
        return Err(TrustError::NoToken {
            node: node.clone(),
            fleet: trust.anchor.fleet.clone(),
        });
    };
    let request = request(auth, node, &trust.anchor, Some(token), None);
    let signed = ask(fabric, auth, node, &trust.anchor, request).await?;
    keep(state, node, &signed)?;
    Ok(signed)
}

/// Puts a join request and waits for the authority's answer: a certificate that `anchor`'s
/// authority signed for this node and its keys (anything else in the answer's place, which
/// any writer of the bucket could put there, is skipped), or a refusal.
async fn ask<F: Fabric>(
    fabric: &F,
    auth: &Auth,
    node: &NodeId,
    anchor: &Anchor,
    request: Signed,
) -> Result<Signed, TrustError> {
    let joins = fabric.kv(JOINS_BUCKET).await?;
    let answer_key = answer_key(node);
    // An answer left from an earlier request is not this one's.
    joins.delete(&answer_key).await?;
    let mut watch = joins.watch(&format!("answer.{node}.")).await?;
    joins
        .put(&format!("request.{node}"), Bytes::from(request.encode()))
        .await?;
    let wait = async {
        while let Some(event) = watch.next().await {
            let Ok(KvEvent::Put(entry)) = event else {
                continue;
            };
            if entry.key != answer_key {
                continue;
            }
            let Ok(answer) = serde_json::from_slice::<JoinAnswer>(&entry.value) else {
                continue;
            };
            return match (answer.certificate, answer.refused) {
                (Some(cert), _) if ours(auth, &cert, node, anchor).is_some() => Ok(cert),
                (Some(_), _) => {
                    tracing::warn!("node {node}: ignored a join answer that is not ours");
                    continue;
                }
                (None, reason) => Err(TrustError::Refused {
                    node: node.clone(),
                    reason: reason.unwrap_or_else(|| "no reason given".into()),
                }),
            };
        }
        Err(TrustError::NoAnswer(JOIN_TIMEOUT))
    };
    tokio::time::timeout(JOIN_TIMEOUT, wait)
        .await
        .map_err(|_| TrustError::NoAnswer(JOIN_TIMEOUT))?
}

/// A node's certificate and where it is kept.
pub struct Held {
    pub state: StateDir,
    pub node: NodeId,
    pub certificate: Signed,
}

/// Renews this node's certificate each time `renew_at_percent` of its lifetime has passed,
/// until `stop`; a failed renewal is tried again with backoff, and refusals are logged.
pub async fn renew<F: Fabric>(
    fabric: F,
    auth: Arc<Auth>,
    trust: CertTrust,
    held: Held,
    config: TrustConfig,
    mut stop: watch::Receiver<bool>,
) {
    let Held {
        state,
        node,
        certificate: mut current,
    } = held;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        let Ok(cert) = trust.anchor.certificate(&current, now_ms()) else {
            tracing::error!("node {node}: its certificate is no longer valid; renewal stops");
            return;
        };
        let at = config.renew_at_ms(cert.not_before_ms, cert.not_after_ms);
        let wait = Duration::from_millis(at.saturating_sub(now_ms()));
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let renewed = if let Some(authority) = &trust.authority {
            let granted = qs_core::trust::Granted {
                node: node.clone(),
                ed25519: cert.ed25519.clone(),
                ml_kem: cert.ml_kem.clone(),
                level: cert.level,
                capabilities: cert.capabilities.clone(),
                token_id: None,
            };
            let put = async {
                let signed = authority.certify(
                    &granted,
                    serial()?,
                    now_ms(),
                    config.certificate_lifetime_ms,
                );
                let nodes = fabric.kv(NODES_BUCKET).await?;
                nodes
                    .put(node.as_str(), Bytes::from(signed.encode()))
                    .await?;
                Ok::<_, TrustError>(signed)
            };
            put.await
        } else {
            let req = request(&auth, &node, &trust.anchor, None, Some(cert.serial));
            ask(&fabric, &auth, &node, &trust.anchor, req).await
        };
        match renewed {
            Ok(signed) => {
                if let Err(e) = keep(&state, &node, &signed) {
                    tracing::warn!("node {node}: renewed certificate not kept: {e}");
                }
                tracing::info!("node {node}: certificate renewed");
                current = signed;
                backoff.reset();
            }
            Err(e) => {
                tracing::warn!("node {node}: certificate renewal: {e}; retrying");
                if backoff.wait(&mut stop).await {
                    return;
                }
            }
        }
    }
}

/// On an authority node: answers join requests until `stop` (the core's [`Authority::judge`]
/// decides). A token brings in one node: its id is recorded by compare-and-set with the
/// node and key it brought in, so a repeat of the same request (another authority node, a
/// retry after a failed write) is answered again and any other is refused. Refusals are
/// answered with their reason and counted.
pub async fn serve_joins<F: Fabric>(
    fabric: F,
    authority: Arc<Authority>,
    auth: Arc<Auth>,
    lifetime_ms: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let watched = async {
            let joins = fabric.kv(JOINS_BUCKET).await?;
            let nodes = fabric.kv(NODES_BUCKET).await?;
            let watch = joins.watch("request.").await?;
            Ok::<_, FabricError>((joins, nodes, watch))
        };
        let (joins, nodes, mut watch) = match watched.await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("join service: {e}; retrying");
                if backoff.wait(&mut stop).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        loop {
            let event = tokio::select! {
                _ = stop.changed() => return,
                e = watch.next() => e,
            };
            let entry = match event {
                Some(Ok(KvEvent::Put(e))) => e,
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    tracing::warn!("join service watch: {e}");
                    continue;
                }
                None => break,
            };
            let Some(node) = entry.key.strip_prefix("request.") else {
                continue;
            };
            let Ok(node) = NodeId::new(node) else {
                continue;
            };
            let verdict = answer(
                &authority,
                &auth,
                &joins,
                &nodes,
                &entry.value,
                &node,
                lifetime_ms,
            )
            .await;
            let reply = match verdict {
                Ok(Ok(cert)) => {
                    tracing::info!("join service: certificate issued to {node}");
                    JoinAnswer {
                        certificate: Some(cert),
                        refused: None,
                    }
                }
                Ok(Err(reason)) => {
                    tracing::warn!("join service: refused {node}: {reason}");
                    auth.count_refusal(reason);
                    JoinAnswer {
                        certificate: None,
                        refused: Some(reason.as_str().into()),
                    }
                }
                Err(e) => {
                    tracing::warn!("join service: {node}: {e}");
                    continue;
                }
            };
            let bytes = Bytes::from(serde_json::to_vec(&reply).expect("answers serialize"));
            let done = async {
                joins.put(&answer_key(&node), bytes).await?;
                joins.delete(&entry.key).await
            };
            if let Err(e) = done.await {
                tracing::warn!("join service: answering {node}: {e}");
            }
        }
    }
}

/// The authority's answer to one request: a certificate, or why not. Who holds the name,
/// and its revocation, are the stricter of the registry and this node's keyring (which any
/// writer of the bucket cannot make forget a certificate or a revocation).
async fn answer<K: Kv>(
    authority: &Authority,
    auth: &Auth,
    joins: &K,
    nodes: &K,
    value: &[u8],
    node: &NodeId,
    lifetime_ms: u64,
) -> Result<Result<Signed, Refusal>, TrustError> {
    let Ok(request) = Signed::decode(value) else {
        return Ok(Err(Refusal::Malformed));
    };
    let now = now_ms();
    let anchor = authority.anchor();
    let (held, held_revoked_at) = auth.held(node);
    let valid = |s: &Signed| anchor.certificate(s, now).ok();
    let in_bucket = nodes
        .get(node.as_str())
        .await?
        .and_then(|e| Signed::decode(&e.value).ok())
        .and_then(|s| valid(&s));
    let current = match (held.as_ref().and_then(valid), in_bucket) {
        (Some(h), Some(b)) => Some(if b.not_before_ms > h.not_before_ms {
            b
        } else {
            h
        }),
        (h, b) => h.or(b),
    };
    let bucket_revoked_at = nodes
        .get(&revocation_key(node))
        .await?
        .and_then(|e| Signed::decode(&e.value).ok())
        .and_then(|s| anchor.revocation(&s).ok())
        .filter(|r| r.node == *node)
        .map(|r| r.revoked_at_ms);
    let revoked_at_ms = held_revoked_at.max(bucket_revoked_at);
    let granted = match authority.judge(&request, current.as_ref(), revoked_at_ms, now) {
        Ok(g) => g,
        Err(r) => return Ok(Err(r)),
    };
    if granted.node != *node {
        return Ok(Err(Refusal::Malformed));
    }
    if let Some(id) = &granted.token_id {
        // The token's spending: which node and key, when. A repeat of the same request (another
        // authority node, a retry) is answered again, unless the node was revoked since.
        let key = format!("used.{id}");
        let spent = format!("{node} {} {now}", granted.ed25519);
        match joins.cas(&key, Bytes::from(spent), None).await {
            Ok(_) => {}
            Err(FabricError::Conflict { .. }) => {
                let prior = joins.get(&key).await?;
                let prior = prior
                    .as_ref()
                    .and_then(|e| std::str::from_utf8(&e.value).ok())
                    .unwrap_or("");
                let mut words = prior.split(' ');
                let same = words.next() == Some(node.as_str())
                    && words.next() == Some(granted.ed25519.as_str());
                let spent_at_ms = words.next().and_then(|w| w.parse::<u64>().ok());
                let revoked_since = revoked_at_ms
                    .zip(spent_at_ms)
                    .is_some_and(|(t, at)| qs_wire::trust::revokes(t, at));
                if !same || revoked_since {
                    return Ok(Err(Refusal::TokenUsed));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    let cert = authority.certify(&granted, serial()?, now, lifetime_ms);
    nodes.put(node.as_str(), Bytes::from(cert.encode())).await?;
    Ok(Ok(cert))
}
