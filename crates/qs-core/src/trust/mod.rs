//! The fleet authority's decisions, sans-IO: signing tokens, certificates and revocations
//! with the authority's key, and judging them with its public half (the [`Anchor`] every node
//! holds). The shell stores and carries the documents (`qs fleet`, the agent's join service);
//! every verdict on one is made here, with the time as an argument.
//!
//! A certificate binds a node's name to its Ed25519 key (which signs and authenticates what
//! it sends) and its ML-KEM-768 key (which peers encapsulate session keys to), with a level,
//! capabilities and a validity window, under a serial. Peers take a node's messages only
//! under such a certificate, unexpired and unrevoked ([`crate::auth::Keyring`]).

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use ml_dsa::MlDsa65;
use qs_wire::NodeId;
use qs_wire::identity::hex;
use qs_wire::trust::{
    Capability, Certificate, DocError, Document, JoinRequest, JoinToken, Revocation, Signed,
    revokes,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

/// How far a certificate's start may lie in the future of the checking node's clock (the
/// authority's clock may run ahead of it).
pub const NOT_BEFORE_SLACK_MS: u64 = 60_000;
/// How old a join request may be when the authority reads it.
pub const MAX_REQUEST_AGE_MS: u64 = 10 * 60 * 1000;

/// Why a trust document, or a message under one, was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// Not a document, or one that breaks a rule of its kind.
    Malformed,
    /// The signature is not the authority's (or, for a join request, the node's own).
    Forged,
    /// Signed by this authority for another fleet.
    OtherFleet,
    /// Past its `not_after`.
    Expired,
    /// Before its `not_before`.
    NotYetValid,
    /// Its serial was revoked.
    Revoked,
    /// A join token that already brought a node in.
    TokenUsed,
    /// A join token past its expiry.
    TokenExpired,
    /// A renewal for a certificate this node does not hold, or with other keys.
    NotRenewable,
    /// A join token named for another node.
    OtherNode,
    /// A token join for a name another node holds a good certificate of, under other keys.
    NameTaken,
    /// A join request made too long ago (or in the future): a replay of an old one.
    Stale,
}

impl Refusal {
    pub const ALL: [Refusal; 12] = [
        Refusal::Malformed,
        Refusal::Forged,
        Refusal::OtherFleet,
        Refusal::Expired,
        Refusal::NotYetValid,
        Refusal::Revoked,
        Refusal::TokenUsed,
        Refusal::TokenExpired,
        Refusal::NotRenewable,
        Refusal::OtherNode,
        Refusal::NameTaken,
        Refusal::Stale,
    ];

    /// The label in metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::Forged => "forged",
            Refusal::OtherFleet => "other_fleet",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::Revoked => "revoked",
            Refusal::TokenUsed => "token_used",
            Refusal::TokenExpired => "token_expired",
            Refusal::NotRenewable => "not_renewable",
            Refusal::OtherNode => "other_node",
            Refusal::NameTaken => "name_taken",
            Refusal::Stale => "stale",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<DocError> for Refusal {
    fn from(_: DocError) -> Self {
        Refusal::Malformed
    }
}

/// The context string of every ML-DSA signature of the fleet's (FIPS 204 §5.2).
const ML_DSA_CONTEXT: &[u8] = b"quasicrystal fleet authority";

/// A hybrid authority's ML-DSA-65 verifying key, decoded once, with its encoding.
#[derive(Clone)]
pub struct MlDsaKey {
    encoded: Vec<u8>,
    key: Box<ml_dsa::VerifyingKey<MlDsa65>>,
}

impl PartialEq for MlDsaKey {
    fn eq(&self, other: &Self) -> bool {
        self.encoded == other.encoded
    }
}
impl Eq for MlDsaKey {}

impl std::fmt::Debug for MlDsaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MlDsaKey({}…)", hex(&self.encoded[..8]))
    }
}

impl MlDsaKey {
    pub fn decode(bytes: &[u8]) -> Result<MlDsaKey, DocError> {
        let encoded =
            ml_dsa::EncodedVerifyingKey::<MlDsa65>::try_from(bytes).map_err(|_| DocError {
                what: "authority ML-DSA key",
                reason: "not an ML-DSA-65 key".into(),
            })?;
        Ok(MlDsaKey {
            encoded: bytes.to_vec(),
            key: Box::new(ml_dsa::VerifyingKey::decode(&encoded)),
        })
    }

    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }
}

/// What every node of a fleet trusts: the authority's public key (or keys, for a hybrid
/// authority: Ed25519 and ML-DSA-65, both of whose signatures must hold) and the fleet's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    pub fleet: String,
    key: VerifyingKey,
    ml_dsa: Option<MlDsaKey>,
}

impl Anchor {
    pub fn new(fleet: &str, public: [u8; 32]) -> Result<Anchor, DocError> {
        qs_wire::trust::check_fleet(fleet)?;
        let key = VerifyingKey::from_bytes(&public).map_err(|_| DocError {
            what: "authority key",
            reason: "not a valid Ed25519 key".into(),
        })?;
        Ok(Anchor {
            fleet: fleet.into(),
            key,
            ml_dsa: None,
        })
    }

    /// A hybrid authority's anchor: documents need its ML-DSA-65 signature too.
    pub fn with_ml_dsa(self, key: MlDsaKey) -> Anchor {
        Anchor {
            ml_dsa: Some(key),
            ..self
        }
    }

    pub fn ml_dsa(&self) -> Option<&MlDsaKey> {
        self.ml_dsa.as_ref()
    }

    pub fn public(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The first 16 hex digits of the authority's key.
    pub fn fingerprint(&self) -> String {
        hex(&self.key.to_bytes()[..8])
    }

    /// Checks the authority's signature (both, for a hybrid one), then decodes the body.
    fn open<T: Document>(&self, signed: &Signed) -> Result<T, Refusal> {
        verify(&self.key, signed)?;
        if let Some(k) = &self.ml_dsa {
            let bytes = signed.ml_dsa_bytes()?.ok_or(Refusal::Forged)?;
            let encoded = ml_dsa::EncodedSignature::<MlDsa65>::try_from(bytes.as_slice())
                .map_err(|_| Refusal::Malformed)?;
            let sig = ml_dsa::Signature::decode(&encoded).ok_or(Refusal::Forged)?;
            if !k
                .key
                .verify_with_context(signed.body.as_bytes(), ML_DSA_CONTEXT, &sig)
            {
                return Err(Refusal::Forged);
            }
        }
        Ok(signed.open::<T>()?)
    }

    /// A certificate of this fleet, signed by its authority, valid at `now_ms`.
    pub fn certificate(&self, signed: &Signed, now_ms: u64) -> Result<Certificate, Refusal> {
        let cert: Certificate = self.open(signed)?;
        if cert.fleet != self.fleet {
            return Err(Refusal::OtherFleet);
        }
        if now_ms >= cert.not_after_ms {
            return Err(Refusal::Expired);
        }
        if now_ms + NOT_BEFORE_SLACK_MS < cert.not_before_ms {
            return Err(Refusal::NotYetValid);
        }
        Ok(cert)
    }

    /// A revocation of this fleet, signed by its authority.
    pub fn revocation(&self, signed: &Signed) -> Result<Revocation, Refusal> {
        let r: Revocation = self.open(signed)?;
        if r.fleet != self.fleet {
            return Err(Refusal::OtherFleet);
        }
        Ok(r)
    }

    /// A join token of this fleet, signed by its authority, unexpired at `now_ms` (whether
    /// it was used is the issuer's record).
    pub fn token(&self, signed: &Signed, now_ms: u64) -> Result<JoinToken, Refusal> {
        let t: JoinToken = self.open(signed)?;
        if t.fleet != self.fleet {
            return Err(Refusal::OtherFleet);
        }
        if now_ms >= t.not_after_ms {
            return Err(Refusal::TokenExpired);
        }
        Ok(t)
    }
}

/// Checks an Ed25519 signature over a document's body as received.
fn verify(key: &VerifyingKey, signed: &Signed) -> Result<(), Refusal> {
    let sig = Signature::from_bytes(&signed.signature_bytes()?);
    key.verify(signed.body.as_bytes(), &sig)
        .map_err(|_| Refusal::Forged)
}

/// Signs a document's body with `key`.
pub fn sign<T: Document>(key: &SigningKey, doc: &T) -> Signed {
    let body = doc.body();
    let sig = key.sign(body.as_bytes()).to_bytes();
    Signed::new(body, sig)
}

/// What a join token grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenGrant {
    pub level: u8,
    pub capabilities: BTreeSet<Capability>,
    /// The only node it may bring in.
    pub node: Option<NodeId>,
}

/// What a join request, checked, asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Granted {
    pub node: NodeId,
    pub ed25519: String,
    pub ml_kem: String,
    pub level: u8,
    pub capabilities: BTreeSet<Capability>,
    /// The token spent by a first certificate (its id), which the issuer records as used.
    pub token_id: Option<String>,
}

/// The authority: its signing key (keys, hybrid) and its fleet.
pub struct Authority {
    key: SigningKey,
    ml_dsa: Option<Box<ml_dsa::SigningKey<MlDsa65>>>,
    anchor: Anchor,
}

impl Authority {
    pub fn new(fleet: &str, secret: [u8; 32]) -> Result<Authority, DocError> {
        let key = SigningKey::from_bytes(&secret);
        let anchor = Anchor::new(fleet, key.verifying_key().to_bytes())?;
        Ok(Authority {
            key,
            ml_dsa: None,
            anchor,
        })
    }

    /// A hybrid authority: Ed25519 and ML-DSA-65, the latter's seed derived from the same
    /// secret (one secret to keep offline).
    pub fn hybrid(fleet: &str, secret: [u8; 32]) -> Result<Authority, DocError> {
        let plain = Authority::new(fleet, secret)?;
        let mut h = Sha256::new();
        h.update(b"quasicrystal ml-dsa-65 seed\0");
        h.update(secret);
        let seed: [u8; 32] = h.finalize().into();
        let ml_dsa = ml_dsa::SigningKey::<MlDsa65>::from_seed(&seed.into());
        let public = MlDsaKey::decode(ml_dsa.expanded_key().verifying_key().encode().as_slice())?;
        Ok(Authority {
            anchor: plain.anchor.with_ml_dsa(public),
            ml_dsa: Some(Box::new(ml_dsa)),
            key: plain.key,
        })
    }

    pub fn anchor(&self) -> &Anchor {
        &self.anchor
    }

    /// Signs a document: Ed25519, and ML-DSA-65 for a hybrid authority.
    pub fn sign<T: Document>(&self, doc: &T) -> Signed {
        let mut signed = sign(&self.key, doc);
        if let Some(k) = &self.ml_dsa {
            let sig = k
                .expanded_key()
                .sign_deterministic(signed.body.as_bytes(), ML_DSA_CONTEXT)
                .expect("a context under 256 bytes");
            signed.ml_dsa = Some(hex(sig.encode().as_slice()));
        }
        signed
    }

    /// A single-use join token with id `id`, valid until `not_after_ms`, for `node` alone
    /// when it names one.
    pub fn token(&self, id: [u8; 16], grant: TokenGrant, not_after_ms: u64) -> Signed {
        self.sign(&JoinToken {
            fleet: self.anchor.fleet.clone(),
            authority: hex(&self.anchor.public()),
            authority_ml_dsa: self.anchor.ml_dsa().map(|k| hex(k.encoded())),
            id: hex(&id),
            level: grant.level,
            capabilities: grant.capabilities,
            not_after_ms,
            node: grant.node,
        })
    }

    /// The revocation of every certificate of `node` issued up to `now_ms`.
    /// (Dated [`NOT_BEFORE_SLACK_MS`] ahead, so a certificate the authority issued just
    /// before, its clock ahead of the operator's, is covered too; a node let back in with a
    /// new token is certified after that.)
    pub fn revoke(&self, node: &NodeId, now_ms: u64, reason: &str) -> Signed {
        let reason: String = reason
            .chars()
            .take(qs_wire::trust::MAX_REASON_CHARS)
            .collect();
        self.sign(&Revocation {
            fleet: self.anchor.fleet.clone(),
            node: node.clone(),
            revoked_at_ms: now_ms.saturating_add(NOT_BEFORE_SLACK_MS),
            reason,
        })
    }

    /// Judges a join request (signed by the joining node's key) at `now_ms`. A first one
    /// needs a token of this fleet, unexpired, for this node if it names one, and a name no
    /// other key holds a good certificate of; whether the token was spent is the issuer's
    /// compare-and-set. A renewal needs `current`, the node's valid certificate, unrevoked
    /// (`revoked_at_ms`: the node's revocation, if any), for the same keys.
    pub fn judge(
        &self,
        request: &Signed,
        current: Option<&Certificate>,
        revoked_at_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<Granted, Refusal> {
        let req: JoinRequest = request.open()?;
        let node_key = VerifyingKey::from_bytes(
            &qs_wire::identity::unhex(&req.ed25519).map_err(|_| Refusal::Malformed)?,
        )
        .map_err(|_| Refusal::Malformed)?;
        // The request is signed by the key it asks a certificate for.
        verify(&node_key, request)?;
        if req.fleet != self.anchor.fleet {
            return Err(Refusal::OtherFleet);
        }
        if now_ms.abs_diff(req.requested_at_ms) > MAX_REQUEST_AGE_MS {
            return Err(Refusal::Stale);
        }
        let revoked = |c: &Certificate| revoked_at_ms.is_some_and(|t| revokes(t, c.not_before_ms));
        let granted = |level, capabilities, token_id| Granted {
            node: req.node.clone(),
            ed25519: req.ed25519.clone(),
            ml_kem: req.ml_kem.clone(),
            level,
            capabilities,
            token_id,
        };
        if let Some(token) = &req.token {
            let t = self.anchor.token(token, now_ms)?;
            if t.node.as_ref().is_some_and(|n| *n != req.node) {
                return Err(Refusal::OtherNode);
            }
            // A certificate issued now would fall under a revocation dated ahead of it.
            if revoked_at_ms.is_some_and(|t| revokes(t, now_ms)) {
                return Err(Refusal::Revoked);
            }
            if let Some(cur) = current
                && !revoked(cur)
                && (cur.ed25519 != req.ed25519 || cur.ml_kem != req.ml_kem)
            {
                return Err(Refusal::NameTaken);
            }
            return Ok(granted(t.level, t.capabilities, Some(t.id)));
        }
        let Some(cur) = current else {
            return Err(Refusal::NotRenewable);
        };
        if revoked(cur) {
            return Err(Refusal::Revoked);
        }
        if Some(cur.serial) != req.renews
            || cur.node != req.node
            || cur.ed25519 != req.ed25519
            || cur.ml_kem != req.ml_kem
        {
            return Err(Refusal::NotRenewable);
        }
        if now_ms >= cur.not_after_ms {
            return Err(Refusal::Expired);
        }
        Ok(granted(cur.level, cur.capabilities.clone(), None))
    }

    /// The certificate for what was granted: valid from `now_ms` for `lifetime_ms` (a node
    /// whose clock is behind the authority's by up to [`NOT_BEFORE_SLACK_MS`] takes it).
    pub fn certify(&self, g: &Granted, serial: u64, now_ms: u64, lifetime_ms: u64) -> Signed {
        self.sign(&Certificate {
            fleet: self.anchor.fleet.clone(),
            serial,
            node: g.node.clone(),
            ed25519: g.ed25519.clone(),
            ml_kem: g.ml_kem.clone(),
            level: g.level,
            capabilities: g.capabilities.clone(),
            not_before_ms: now_ms,
            not_after_ms: now_ms.saturating_add(lifetime_ms),
        })
    }
}

#[cfg(test)]
mod tests;
