//! The fleet's trust documents: what a fleet authority signs (join tokens, node certificates,
//! revocations), what a joining node asks (a join request), and the one signed wrapper they
//! all travel in. Each arrives from a KV bucket, a command line or a file, so each has one
//! check here, whatever way it came: bounded sizes, a known fleet name, keys of the right
//! length, a validity window that makes sense.
//!
//! A [`Signed`] document carries its body as the exact JSON text that was signed, so a
//! receiver checks the signature over the bytes it received and never re-encodes anything
//! (as frames do). Whether the signature is good is the core's business (`qs_core::trust`).

use crate::identity::{hex, unhex};
use crate::ids::NodeId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Largest signed document (a certificate with its ML-KEM key and both signatures is about
/// 10 KiB; a hybrid join token, with the authority's ML-DSA key, about 11 KiB).
pub const MAX_SIGNED_BYTES: usize = 16 * 1024;
/// ML-DSA-65 signature length.
pub const ML_DSA_SIGNATURE_LEN: usize = 3309;
/// ML-DSA-65 verifying key length.
pub const ML_DSA_KEY_LEN: usize = 1952;
/// ML-KEM-768 encapsulation key length.
pub const ML_KEM_KEY_LEN: usize = 1184;
/// The longest a certificate or token may be valid: one year.
pub const MAX_VALIDITY_MS: u64 = 366 * 24 * 3600 * 1000;
/// Longest revocation reason kept.
pub const MAX_REASON_CHARS: usize = 256;

/// What a certificate lets a node do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// Host workloads: offer capacity, accept dispatches.
    Host,
    /// Steward services: ask for capacity, dispatch, stop and promote instances.
    Steward,
    /// Run GPU model runtimes.
    Gpu,
    /// Serve the API, and vouch for requests it forwards to other nodes.
    Api,
    /// Answer join requests and sign certificates (holds the authority's key).
    Authority,
}

impl Capability {
    pub const ALL: [Capability; 5] = [
        Capability::Host,
        Capability::Steward,
        Capability::Gpu,
        Capability::Api,
        Capability::Authority,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Capability::Host => "host",
            Capability::Steward => "steward",
            Capability::Gpu => "gpu",
            Capability::Api => "api",
            Capability::Authority => "authority",
        }
    }

    /// Parses a comma-separated list (`host,steward`); `all` is every capability but
    /// `authority`, which is only ever named.
    pub fn parse_list(text: &str) -> Result<BTreeSet<Capability>, String> {
        let mut out = BTreeSet::new();
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            if word == "all" {
                out.extend(
                    Self::ALL
                        .into_iter()
                        .filter(|c| *c != Capability::Authority),
                );
                continue;
            }
            let c = Self::ALL
                .into_iter()
                .find(|c| c.as_str() == word)
                .ok_or_else(|| {
                    format!("unknown capability {word:?}; one of host, steward, gpu, api, authority, all")
                })?;
            out.insert(c);
        }
        Ok(out)
    }

    /// Every capability a plain member has: all but `authority`.
    pub fn member() -> BTreeSet<Capability> {
        Self::parse_list("all").expect("`all` parses")
    }
}

/// A set of capabilities in one byte, as a heartbeat carries it (a list of names on the
/// wire, like a certificate's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "BTreeSet<Capability>", from = "BTreeSet<Capability>")]
pub struct CapabilitySet(u8);

impl CapabilitySet {
    const fn bit(c: Capability) -> u8 {
        1 << (c as u8)
    }

    pub fn contains(self, c: Capability) -> bool {
        self.0 & Self::bit(c) != 0
    }
}

impl From<BTreeSet<Capability>> for CapabilitySet {
    fn from(set: BTreeSet<Capability>) -> Self {
        CapabilitySet(set.into_iter().fold(0, |b, c| b | Self::bit(c)))
    }
}

impl From<CapabilitySet> for BTreeSet<Capability> {
    fn from(set: CapabilitySet) -> Self {
        Capability::ALL
            .into_iter()
            .filter(|c| set.contains(*c))
            .collect()
    }
}

/// A document and its signature by the fleet authority (or, for a join request, by the
/// joining node's own key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    /// The JSON text that was signed.
    pub body: String,
    /// Ed25519 signature over `body`'s bytes, 128 hex digits.
    pub signature: String,
    /// A hybrid authority's ML-DSA-65 signature over the same bytes, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ml_dsa: Option<String>,
}

/// Why a trust document cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct DocError {
    pub what: &'static str,
    pub reason: String,
}

fn doc_err(what: &'static str, reason: impl Into<String>) -> DocError {
    DocError {
        what,
        reason: reason.into(),
    }
}

impl Signed {
    pub fn new(body: String, signature: [u8; 64]) -> Self {
        Signed {
            body,
            signature: hex(&signature),
            ml_dsa: None,
        }
    }

    /// Decodes a signed document (untrusted: a KV value, a token on a command line): at most
    /// [`MAX_SIGNED_BYTES`], a signature of 128 hex digits.
    pub fn decode(bytes: &[u8]) -> Result<Signed, DocError> {
        if bytes.len() > MAX_SIGNED_BYTES {
            return Err(doc_err(
                "signed document",
                format!("{} bytes; at most {MAX_SIGNED_BYTES}", bytes.len()),
            ));
        }
        let s: Signed =
            serde_json::from_slice(bytes).map_err(|e| doc_err("signed document", e.to_string()))?;
        s.signature_bytes()?;
        s.ml_dsa_bytes()?;
        Ok(s)
    }

    /// The ML-DSA-65 signature's bytes, if it has one.
    pub fn ml_dsa_bytes(&self) -> Result<Option<Vec<u8>>, DocError> {
        self.ml_dsa
            .as_deref()
            .map(|h| unhex_len(h, ML_DSA_SIGNATURE_LEN).map_err(|r| doc_err("ml_dsa", r)))
            .transpose()
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("signed documents serialize")
    }

    pub fn signature_bytes(&self) -> Result<[u8; 64], DocError> {
        let v = unhex_len(&self.signature, 64).map_err(|r| doc_err("signature", r))?;
        Ok(v.try_into().expect("64 bytes"))
    }

    /// The body, decoded as `T` and checked by `T`'s rules.
    pub fn open<T: Document>(&self) -> Result<T, DocError> {
        let t: T = serde_json::from_str(&self.body).map_err(|e| doc_err(T::WHAT, e.to_string()))?;
        t.check()?;
        Ok(t)
    }

    /// A token's text form for a command line: `qst1.` and the hex of the encoded document.
    pub fn to_token_text(&self) -> String {
        format!("qst1.{}", hex(&self.encode()))
    }

    /// Reads [`Signed::to_token_text`]'s form back.
    pub fn from_token_text(text: &str) -> Result<Signed, DocError> {
        let digits = text
            .trim()
            .strip_prefix("qst1.")
            .ok_or_else(|| doc_err("join token", "does not begin with qst1."))?;
        if digits.len() > 2 * MAX_SIGNED_BYTES {
            return Err(doc_err("join token", "too long"));
        }
        let bytes = unhex_len(digits, digits.len() / 2).map_err(|r| doc_err("join token", r))?;
        Signed::decode(&bytes)
    }
}

/// A body a [`Signed`] carries, with its checks.
pub trait Document: Serialize + DeserializeOwned {
    const WHAT: &'static str;
    fn check(&self) -> Result<(), DocError>;

    /// The JSON text to sign.
    fn body(&self) -> String {
        serde_json::to_string(self).expect("documents serialize")
    }
}

/// A node certificate: who the node is, its keys, and what it may do, for how long.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub fleet: String,
    pub serial: u64,
    pub node: NodeId,
    /// Ed25519 public key, 64 hex digits.
    pub ed25519: String,
    /// ML-KEM-768 encapsulation key, hex.
    pub ml_kem: String,
    pub level: u8,
    pub capabilities: BTreeSet<Capability>,
    pub not_before_ms: u64,
    pub not_after_ms: u64,
}

/// A single-use invitation to join: signed by the authority, spent by the first certificate
/// issued under it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinToken {
    pub fleet: String,
    /// The authority's Ed25519 public key, 64 hex digits: what a joining node, which knows
    /// no authority yet, pins as its anchor (the token came to it out of band).
    pub authority: String,
    /// A hybrid authority's ML-DSA-65 verifying key, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority_ml_dsa: Option<String>,
    /// 32 hex digits, random: what makes it single-use.
    pub id: String,
    pub level: u8,
    pub capabilities: BTreeSet<Capability>,
    pub not_after_ms: u64,
    /// The only node name it may bring in, when the operator named one.
    pub node: Option<NodeId>,
}

/// What a node asks the authority: a certificate for these keys, under a token (joining) or
/// under its current certificate (renewing). Signed by the node's own Ed25519 key, which
/// proves it holds the key it asks a certificate for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub fleet: String,
    pub node: NodeId,
    pub ed25519: String,
    pub ml_kem: String,
    /// The join token, for a first certificate.
    pub token: Option<Signed>,
    /// The serial of the certificate this one renews.
    pub renews: Option<u64>,
    pub requested_at_ms: u64,
}

/// The authority's word that a node's certificates are no longer good: every one issued
/// to it up to `revoked_at_ms` (so an older certificate put back changes nothing); one issued
/// after, with a new token, lets it in again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    pub fleet: String,
    pub node: NodeId,
    pub revoked_at_ms: u64,
    pub reason: String,
}

/// The public half of a fleet authority, as `qs fleet init` writes it and a state directory
/// pins it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityRecord {
    pub fleet: String,
    /// Ed25519, 64 hex digits.
    pub public_key: String,
    /// A hybrid authority's ML-DSA-65 verifying key, hex: its documents carry both
    /// signatures, and both must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ml_dsa: Option<String>,
}

impl AuthorityRecord {
    /// Decodes and checks one (a file).
    pub fn decode(bytes: &[u8]) -> Result<AuthorityRecord, DocError> {
        if bytes.len() > 8 * 1024 {
            return Err(doc_err("authority", "longer than 8 KiB"));
        }
        let r: AuthorityRecord =
            serde_json::from_slice(bytes).map_err(|e| doc_err("authority", e.to_string()))?;
        check_fleet(&r.fleet)?;
        unhex(&r.public_key).map_err(|e| doc_err("public_key", e.to_string()))?;
        check_ml_dsa_key(r.ml_dsa.as_deref(), "ml_dsa")?;
        Ok(r)
    }

    pub fn key(&self) -> [u8; 32] {
        unhex(&self.public_key).expect("checked when decoded")
    }
}

/// Whether a revocation made at `revoked_at_ms` covers a certificate that starts at
/// `not_before_ms`: every certificate issued until the revocation is revoked.
pub fn revokes(revoked_at_ms: u64, not_before_ms: u64) -> bool {
    not_before_ms <= revoked_at_ms
}

impl Revocation {
    /// Whether it revokes `cert`.
    pub fn covers(&self, cert: &Certificate) -> bool {
        cert.node == self.node && revokes(self.revoked_at_ms, cert.not_before_ms)
    }
}

/// The authority's answer to a join request, under `answer.<node>` in the joins bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinAnswer {
    /// The certificate issued, or why none was.
    pub certificate: Option<Signed>,
    pub refused: Option<String>,
}

/// A fleet's name: a DNS label, as the NATS prefix requires.
pub fn check_fleet(fleet: &str) -> Result<(), DocError> {
    let ok = !fleet.is_empty()
        && fleet.len() <= 63
        && fleet
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(doc_err("fleet", format!("{fleet:?} is not a DNS label")))
    }
}

fn check_ml_dsa_key(key: Option<&str>, what: &'static str) -> Result<(), DocError> {
    if let Some(k) = key {
        unhex_len(k, ML_DSA_KEY_LEN).map_err(|r| doc_err(what, r))?;
    }
    Ok(())
}

fn check_level(level: u8) -> Result<(), DocError> {
    if level > crate::spec::MAX_LEVEL {
        return Err(doc_err(
            "level",
            format!("{level} is more than {}", crate::spec::MAX_LEVEL),
        ));
    }
    Ok(())
}

fn check_keys(ed25519: &str, ml_kem: &str) -> Result<(), DocError> {
    unhex(ed25519).map_err(|e| doc_err("ed25519", e.to_string()))?;
    unhex_len(ml_kem, ML_KEM_KEY_LEN).map_err(|r| doc_err("ml_kem", r))?;
    Ok(())
}

impl Document for Certificate {
    const WHAT: &'static str = "certificate";
    fn check(&self) -> Result<(), DocError> {
        check_fleet(&self.fleet)?;
        check_level(self.level)?;
        check_keys(&self.ed25519, &self.ml_kem)?;
        if self.not_after_ms <= self.not_before_ms
            || self.not_after_ms - self.not_before_ms > MAX_VALIDITY_MS
        {
            return Err(doc_err(
                "not_after_ms",
                "must be after not_before_ms, by at most a year",
            ));
        }
        Ok(())
    }
}

impl Certificate {
    /// The Ed25519 key's 32 bytes (checked when decoded).
    pub fn ed25519_key(&self) -> [u8; 32] {
        unhex(&self.ed25519).expect("checked when decoded")
    }

    /// The ML-KEM key's bytes (checked when decoded).
    pub fn ml_kem_key(&self) -> Vec<u8> {
        unhex_len(&self.ml_kem, ML_KEM_KEY_LEN).expect("checked when decoded")
    }
}

impl Document for JoinToken {
    const WHAT: &'static str = "join token";
    fn check(&self) -> Result<(), DocError> {
        check_fleet(&self.fleet)?;
        check_level(self.level)?;
        unhex(&self.authority).map_err(|e| doc_err("authority", e.to_string()))?;
        check_ml_dsa_key(self.authority_ml_dsa.as_deref(), "authority_ml_dsa")?;
        unhex_len(&self.id, 16).map_err(|r| doc_err("id", r))?;
        Ok(())
    }
}

impl Document for JoinRequest {
    const WHAT: &'static str = "join request";
    fn check(&self) -> Result<(), DocError> {
        check_fleet(&self.fleet)?;
        check_keys(&self.ed25519, &self.ml_kem)?;
        if self.token.is_some() == self.renews.is_some() {
            return Err(doc_err(
                "token",
                "a join request carries a token or renews a certificate, one of the two",
            ));
        }
        Ok(())
    }
}

impl Document for Revocation {
    const WHAT: &'static str = "revocation";
    fn check(&self) -> Result<(), DocError> {
        check_fleet(&self.fleet)?;
        if self.reason.chars().count() > MAX_REASON_CHARS {
            return Err(doc_err(
                "reason",
                format!("longer than {MAX_REASON_CHARS} characters"),
            ));
        }
        Ok(())
    }
}

/// `len` bytes from `2 * len` hex digits.
pub fn unhex_len(text: &str, len: usize) -> Result<Vec<u8>, String> {
    let mut out = vec![0u8; len];
    crate::identity::unhex_into(text, &mut out)
        .map_err(|e| format!("{e} (it must be {} of them)", 2 * len))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert() -> Certificate {
        Certificate {
            fleet: "lab".into(),
            serial: 1,
            node: NodeId::new("forge").unwrap(),
            ed25519: hex(&[1; 32]),
            ml_kem: hex(&[2; ML_KEM_KEY_LEN]),
            level: 0,
            capabilities: Capability::member(),
            not_before_ms: 10,
            not_after_ms: 20,
        }
    }

    #[test]
    fn documents_round_trip_through_signed_and_token_text() {
        let c = cert();
        let s = Signed::new(c.body(), [7; 64]);
        let back = Signed::decode(&s.encode()).unwrap();
        assert_eq!(back.open::<Certificate>().unwrap(), c);
        let text = s.to_token_text();
        assert_eq!(Signed::from_token_text(&text).unwrap(), s);
    }

    #[test]
    fn bad_documents_name_what_is_wrong() {
        let cases: Vec<(Certificate, &str)> = vec![
            (
                Certificate {
                    fleet: "Lab!".into(),
                    ..cert()
                },
                "fleet",
            ),
            (Certificate { level: 9, ..cert() }, "level"),
            (
                Certificate {
                    ed25519: "ab".into(),
                    ..cert()
                },
                "ed25519",
            ),
            (
                Certificate {
                    ml_kem: hex(&[1; 10]),
                    ..cert()
                },
                "ml_kem",
            ),
            (
                Certificate {
                    not_after_ms: 5,
                    ..cert()
                },
                "not_after_ms",
            ),
        ];
        for (c, field) in cases {
            let e = Signed::new(c.body(), [0; 64])
                .open::<Certificate>()
                .unwrap_err();
            assert_eq!(e.what, field, "{e}");
        }
        let big = vec![b' '; MAX_SIGNED_BYTES + 1];
        assert!(Signed::decode(&big).unwrap_err().reason.contains("at most"));
        let bad_sig = br#"{"body":"{}","signature":"zz"}"#;
        assert_eq!(Signed::decode(bad_sig).unwrap_err().what, "signature");
        assert!(Signed::from_token_text("nope").is_err());
    }

    #[test]
    fn capability_lists_parse() {
        let all = Capability::parse_list("all").unwrap();
        assert!(!all.contains(&Capability::Authority) && all.len() == 4);
        let two = Capability::parse_list("host, steward").unwrap();
        assert_eq!(two.len(), 2);
        assert!(Capability::parse_list("root").unwrap_err().contains("root"));
    }
}
