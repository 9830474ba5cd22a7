//! Authenticated envelopes: sealing what a node sends and deciding whether what it receives is
//! genuine, fresh and new.
//!
//! Each node holds an Ed25519 key pair (and an ML-KEM-768 key derived from the same
//! secret). The fleet's registry holds each node's certificate, signed by the fleet
//! authority ([`crate::trust`]), and the shell hands them to the [`Keyring`], which keeps a
//! peer only under a valid one: unexpired, unrevoked, of this fleet. A single lab machine may
//! instead trust the first key registered under a name (trust on first use, no anchor).
//!
//! A broadcast (a heartbeat) is signed with Ed25519 and stays readable. A directed message is
//! encrypted with ChaCha20-Poly1305 under a short-lived session key of its (sender, receiver)
//! pair from a hybrid X25519 + ML-KEM-768 agreement (`session.rs`). Where encryption is off,
//! or the peer has no ML-KEM key (trust on first use), it is sealed with HMAC-SHA-256 under
//! the pair's static key, derived without a handshake from the two Ed25519 keys (each turned
//! into its X25519 form, as libsodium's `crypto_sign_ed25519_pk_to_curve25519` does, then a
//! static Diffie-Hellman).
//!
//! Under certificates, a message is also refused when its sender's certificate has expired or
//! was revoked, and when it is outside the sender's capabilities (a capacity query from a
//! node that may not steward, an offer from one that may not host).
//!
//! A receiver drops, and counts by reason: frames without a tag, senders it has no key for,
//! bad tags, timestamps further from its clock than `max_clock_skew_ms`, replays (a
//! sequence number seen before, or older than the last [`REPLAY_WINDOW`] of that sender; a
//! sender numbers its messages from a boot epoch its state directory keeps, so a restarted
//! sender's are newer than its last life's whatever its clock did), and messages that verify
//! but break a rule of [`Envelope::validate`] (a heartbeat about another node, a count or
//! number out of bounds).
//!
//! Only the last is the sender's own doing: anyone who can publish can send garbage, unsigned
//! frames or replays *naming* a node, but only the node can sign what it sends. So only a
//! sender with `quarantine_after` invalid authenticated messages within
//! `quarantine_window_ms` is quarantined, for `quarantine_ms`: everything it sends is then
//! dropped unverified, its heartbeats with it, so the fleet stops counting on it. Keeping
//! strangers off the bus is the transport's part (NATS accounts and TLS); what they send
//! there costs a node nothing but the check.

mod certs;
mod receive;
mod reject;
mod replay;
mod session;

pub use certs::{CertificateView, Learned, REVOKED_PREFIX, required_capability};
pub use receive::{open_unauthenticated, unframe};
pub use reject::{AuthCounters, KeyError, Reject, Rejected};

use crate::time::Time;
use crate::trust::{Anchor, Refusal};
use certs::PeerCert;
use ed25519_dalek::{Signer, VerifyingKey};
use hmac::Mac;
use qs_wire::frame::MAC_LEN;
use qs_wire::trust::{Capability, Signed};
use qs_wire::{Frame, FrameKind, NodeId};
use replay::ReplayWindow;
use session::{Drbg, Local};
use std::collections::BTreeMap;

/// Revocations a keyring remembers (each until every certificate it covers has expired).
pub const MAX_REVOCATIONS: usize = 65_536;

/// What a [`Keyring::tag`] covers first: no encoded envelope (a sealed frame's MAC) begins so.
const TAG_DOMAIN: &[u8] = b"quasicrystal tag v1\0";
/// What the signature of a task channel's message ([`Keyring::seal_bus`]) covers first: no
/// envelope's signature is one of the bus's, nor the other way round.
const BUS_DOMAIN: &[u8] = b"quasicrystal bus v1\0";

/// How many of a sender's most recent sequence numbers a receiver remembers.
pub const REPLAY_WINDOW: u64 = 1024;

/// Fewer signatures than this are checked one by one rather than as a batch.
const BATCH_MIN: usize = 4;

/// Tunables of authentication (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AuthConfig {
    /// Drop every frame without a tag (a fleet that crosses processes).
    pub required: bool,
    pub max_clock_skew_ms: u64,
    pub quarantine_after: u32,
    pub quarantine_window_ms: u64,
    pub quarantine_ms: u64,
    /// Encrypt directed messages to peers with an ML-KEM key (otherwise: HMAC-sealed).
    pub encrypt: bool,
    /// A session is replaced after this long, or this many messages.
    pub rekey_after_ms: u64,
    pub rekey_after_messages: u64,
}

impl AuthConfig {
    pub fn from_config(config: &crate::Config, required: bool) -> Self {
        AuthConfig {
            required,
            max_clock_skew_ms: config.max_clock_skew_ms,
            quarantine_after: config.quarantine_after,
            quarantine_window_ms: config.quarantine_window_ms,
            quarantine_ms: config.quarantine_ms,
            encrypt: config.trust.encrypt,
            rekey_after_ms: config.trust.rekey_after_ms,
            rekey_after_messages: config.trust.rekey_after_messages,
        }
    }
}

/// A peer: its key, what it has sent, and its standing.
struct Peer {
    key: VerifyingKey,
    /// Under certificates: what it was granted.
    cert: Option<PeerCert>,
    window: ReplayWindow,
    strikes: u32,
    strikes_since: Time,
    quarantined_until: Option<Time>,
}

/// The keys of this process's nodes and of its peers, and the receiving side's memory.
pub struct Keyring {
    config: AuthConfig,
    /// Under certificates: the fleet's authority. `None`: trust on first use.
    anchor: Option<Anchor>,
    local: BTreeMap<NodeId, Local>,
    peers: BTreeMap<NodeId, Peer>,
    /// Revoked nodes, with when: every certificate of theirs issued up to then is revoked.
    revoked: BTreeMap<NodeId, u64>,
    rng: Drbg,
    counters: AuthCounters,
}

impl Keyring {
    /// A keyring that trusts the keys its shell hands it ([`Keyring::learn`]): trust on
    /// first use, for one lab machine.
    pub fn new(config: AuthConfig) -> Self {
        Keyring {
            config,
            anchor: None,
            local: BTreeMap::new(),
            peers: BTreeMap::new(),
            revoked: BTreeMap::new(),
            rng: Drbg::new(),
            counters: AuthCounters::default(),
        }
    }

    /// A keyring that keeps a peer only under a certificate `anchor`'s authority signed.
    pub fn with_anchor(config: AuthConfig, anchor: Anchor) -> Self {
        Keyring {
            anchor: Some(anchor),
            ..Keyring::new(config)
        }
    }

    pub fn anchor(&self) -> Option<&Anchor> {
        self.anchor.as_ref()
    }

    /// Mixes randomness from the OS into what session keys are drawn from (the shell calls
    /// it once at start, before anything is sent).
    pub fn reseed(&mut self, entropy: &[u8]) {
        self.rng.reseed(entropy);
    }

    /// Adds a node of this process, with the 32 secret bytes of its key (the shell keeps them
    /// on disk); returns its public key. It is also a peer: nodes of one process talk too.
    pub fn add_local(&mut self, node: NodeId, secret: [u8; 32]) -> [u8; 32] {
        let local = Local::new(secret);
        let public = local.signing.verifying_key().to_bytes();
        self.rng.reseed(&secret);
        self.local.insert(node.clone(), local);
        // The key of one of our own nodes is valid by construction.
        let key = VerifyingKey::from_bytes(&public).expect("an Ed25519 key's own public half");
        self.insert_peer(node, key, None);
        public
    }

    /// The ML-KEM-768 key of a node of this process, for its certificate.
    pub fn kem_public(&self, node: &NodeId) -> Option<Vec<u8>> {
        self.local.get(node).map(Local::kem_public)
    }

    /// The Ed25519 public key of a node of this process.
    pub fn public_key(&self, node: &NodeId) -> Option<[u8; 32]> {
        self.local
            .get(node)
            .map(|l| l.signing.verifying_key().to_bytes())
    }

    /// A trust document signed by a node of this process (its join request).
    pub fn sign_document<T: qs_wire::trust::Document>(
        &self,
        node: &NodeId,
        doc: &T,
    ) -> Option<Signed> {
        self.local
            .get(node)
            .map(|l| crate::trust::sign(&l.signing, doc))
    }

    /// Counts a refusal the shell made on the core's word (a join request refused).
    pub fn count_refusal(&mut self, reason: Refusal) {
        self.counters.refused[reason as usize] += 1;
    }

    /// Trust on first use: learns (or relearns) a peer's public key from the registry. Under
    /// certificates a bare key is refused: only [`Keyring::learn_certificate`] teaches one.
    pub fn learn(&mut self, node: NodeId, public: [u8; 32]) -> Result<(), KeyError> {
        if self.anchor.is_some() {
            return Err(KeyError {
                node,
                reason: "a bare key, where the fleet requires certificates",
            });
        }
        let key = VerifyingKey::from_bytes(&public).map_err(|_| KeyError {
            node: node.clone(),
            reason: "not a valid Ed25519 key",
        })?;
        self.insert_peer(node, key, None);
        Ok(())
    }

    /// Puts a peer's key (and certificate); a changed key drops what the pair had derived.
    fn insert_peer(&mut self, node: NodeId, key: VerifyingKey, cert: Option<PeerCert>) {
        if let Some(peer) = self.peers.get_mut(&node) {
            if cert.is_some() {
                peer.cert = cert;
            }
            if peer.key == key {
                return;
            }
            peer.key = key;
        } else {
            self.peers.insert(
                node.clone(),
                Peer {
                    key,
                    cert,
                    window: ReplayWindow::default(),
                    strikes: 0,
                    strikes_since: Time::ZERO,
                    quarantined_until: None,
                },
            );
        }
        for local in self.local.values_mut() {
            local.pairs.remove(&node);
        }
    }

    /// Forgets a peer whose registry entry was removed.
    pub fn forget(&mut self, node: &NodeId) {
        if !self.local.contains_key(node) {
            self.peers.remove(node);
        }
        for local in self.local.values_mut() {
            local.pairs.remove(node);
        }
    }

    pub fn knows(&self, node: &NodeId) -> bool {
        self.peers.contains_key(node)
    }

    /// Whether a frame `node` signed can be checked here: a peer's, or a node of this
    /// process's ([`Keyring::check_bus`]).
    pub fn can_verify(&self, node: &NodeId) -> bool {
        self.peers.contains_key(node) || self.local.contains_key(node)
    }

    pub fn counters(&self) -> &AuthCounters {
        &self.counters
    }

    /// Peers quarantined at `now`.
    pub fn quarantined(&self, now: Time) -> impl Iterator<Item = &NodeId> {
        self.peers
            .iter()
            .filter(move |(_, p)| p.quarantined_until.is_some_and(|t| t > now))
            .map(|(n, _)| n)
    }

    /// Frames an encoded envelope from `from` (a node of this process): sealed for `to` when
    /// its key is known, signed otherwise (and for broadcasts); open when authentication is
    /// off or `from` has no key here.
    pub fn seal(&mut self, from: &NodeId, to: Option<&NodeId>, body: &[u8]) -> Vec<u8> {
        self.seal_at(from, to, body, None)
    }

    /// Frames a message of the task channels (not an envelope) from `from`: signed, over a
    /// domain of its own, where authentication is on; open otherwise.
    pub fn seal_bus(&mut self, from: &NodeId, body: &[u8]) -> Vec<u8> {
        let Some(local) = self.local.get(from).filter(|_| self.config.required) else {
            return Frame::write(FrameKind::Open, &[], body);
        };
        let signature = local.signing.sign(&[BUS_DOMAIN, body].concat()).to_bytes();
        Frame::write(FrameKind::Signed, &signature, body)
    }

    /// [`Keyring::seal`], encrypting a directed message when encryption is on and the
    /// receiver has an ML-KEM key, under a session that `now` may find due for a rekey.
    pub fn seal_at(
        &mut self,
        from: &NodeId,
        to: Option<&NodeId>,
        body: &[u8],
        now: Option<Time>,
    ) -> Vec<u8> {
        let Some(local) = self.local.get_mut(from).filter(|_| self.config.required) else {
            return Frame::write(FrameKind::Open, &[], body);
        };
        if let Some((to, peer)) = to.and_then(|to| self.peers.get(to).map(|p| (to, p))) {
            let kem = peer.cert.as_ref().map(|c| &c.kem);
            if let (Some(kem), Some(now), true) = (kem, now, self.config.encrypt) {
                let pair = local.pair(to, &peer.key);
                return session::encrypt(
                    pair,
                    from,
                    to,
                    &peer.key,
                    kem,
                    &mut self.rng,
                    &self.config,
                    body,
                    now,
                );
            }
            let mut mac = local.pair(to, &peer.key).mac.clone();
            mac.update(body);
            let tag = mac.finalize().into_bytes();
            return Frame::write(FrameKind::Sealed, &tag, body);
        }
        let signature = local.signing.sign(body).to_bytes();
        Frame::write(FrameKind::Signed, &signature, body)
    }

    /// `from` (a node of this process) vouches for `bytes` to the peer `to`, outside the bus
    /// (an entry point's request routed to another node's): their session key's tag, over a
    /// domain of its own, so a tag is never a sealed frame's. `None` when authentication is
    /// off or either key is unknown here.
    pub fn tag(&mut self, from: &NodeId, to: &NodeId, bytes: &[u8]) -> Option<[u8; MAC_LEN]> {
        if !self.config.required {
            return None;
        }
        let key = self.peers.get(to)?.key;
        let local = self.local.get_mut(from)?;
        let mut mac = local.pair(to, &key).mac.clone();
        mac.update(TAG_DOMAIN);
        mac.update(bytes);
        Some(mac.finalize().into_bytes().into())
    }

    /// Whether `tag` is the peer `from`'s [`Keyring::tag`] of `bytes` for `to` (a node of this
    /// process); never for an unknown or quarantined peer.
    pub fn check_tag(
        &mut self,
        from: &NodeId,
        to: &NodeId,
        bytes: &[u8],
        tag: &[u8],
        now: Time,
    ) -> bool {
        let Some(peer) = self.peers.get(from) else {
            return false;
        };
        if peer.quarantined_until.is_some_and(|t| t > now) || tag.len() != MAC_LEN {
            return false;
        }
        if self.standing(from, peer, now).is_some() || !self.may(peer, Capability::Api) {
            return false;
        }
        let key = peer.key;
        let Some(local) = self.local.get_mut(to) else {
            return false;
        };
        let mut mac = local.pair(from, &key).mac.clone();
        mac.update(TAG_DOMAIN);
        mac.update(bytes);
        mac.verify_slice(tag).is_ok()
    }
}
