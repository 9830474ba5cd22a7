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

mod replay;
mod session;

use crate::time::Time;
use crate::trust::{Anchor, Refusal};
use ed25519_dalek::{Signature, Signer, Verifier, VerifyingKey};
use hmac::Mac;
use qs_wire::frame::{EncryptedHeader, MAC_LEN, SIGNATURE_LEN};
use qs_wire::trust::{Capability, Signed};
use qs_wire::{Envelope, Frame, FrameKind, Message, NodeId};
use replay::ReplayWindow;
use session::{Drbg, EncapsulationKey, Local, OpenError};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Revocations a keyring remembers (each until the certificate it revokes would expire).
pub const MAX_REVOCATIONS: usize = 65_536;

/// What a [`Keyring::tag`] covers first: no encoded envelope (a sealed frame's MAC) begins so.
const TAG_DOMAIN: &[u8] = b"quasicrystal tag v1\0";

/// How many of a sender's most recent sequence numbers a receiver remembers.
pub const REPLAY_WINDOW: u64 = 1024;

/// Fewer signatures than this are checked one by one rather than as a batch.
const BATCH_MIN: usize = 4;

/// Why a received message was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reject {
    /// Not a frame, or no envelope inside.
    Malformed,
    /// A frame without a tag where tags are required.
    Unsigned,
    /// No public key for the claimed sender.
    UnknownSender,
    /// The tag does not match the sender's key (forged or altered).
    BadSignature,
    /// Sent further in the past or future than the clock skew allows.
    Stale,
    /// A sequence number seen before, or too old to tell.
    Replay,
    /// The sender is quarantined.
    Quarantined,
    /// Authenticated, but it breaks a rule of the message (see [`Envelope::validate`]).
    Invalid,
    /// The sender's certificate has expired.
    Expired,
    /// The sender's certificate was revoked.
    Revoked,
    /// Outside what the sender's certificate lets it do.
    Capability,
    /// Encrypted under a session the receiver does not hold, without the handshake to open it.
    NoSession,
}

impl Reject {
    pub const ALL: [Reject; 12] = [
        Reject::Malformed,
        Reject::Unsigned,
        Reject::UnknownSender,
        Reject::BadSignature,
        Reject::Stale,
        Reject::Replay,
        Reject::Quarantined,
        Reject::Invalid,
        Reject::Expired,
        Reject::Revoked,
        Reject::Capability,
        Reject::NoSession,
    ];

    /// The label in metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reject::Malformed => "malformed",
            Reject::Unsigned => "unsigned",
            Reject::UnknownSender => "unknown_sender",
            Reject::BadSignature => "bad_signature",
            Reject::Stale => "stale",
            Reject::Replay => "replay",
            Reject::Quarantined => "quarantined",
            Reject::Invalid => "invalid",
            Reject::Expired => "expired",
            Reject::Revoked => "revoked",
            Reject::Capability => "capability",
            Reject::NoSession => "no_session",
        }
    }

    /// Whether it counts towards the sender's quarantine: only what the sender itself
    /// signed can (see the module docs).
    const fn strikes(self) -> bool {
        matches!(self, Reject::Invalid | Reject::Capability)
    }
}

/// A dropped message: why, from whom it claimed to be, and whether it began a quarantine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub reason: Reject,
    pub sender: Option<NodeId>,
    /// Set when this rejection quarantined the sender, until then.
    pub quarantined_until: Option<Time>,
    /// What was wrong with a malformed message.
    pub detail: Option<String>,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.reason.as_str())?;
        if let Some(s) = &self.sender {
            write!(f, " from {s}")?;
        }
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        if self.quarantined_until.is_some() {
            write!(f, " (sender quarantined)")?;
        }
        Ok(())
    }
}

/// A public key that is not a valid Ed25519 point.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("key of {node}: {reason}")]
pub struct KeyError {
    pub node: NodeId,
    pub reason: &'static str,
}

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

/// What a keyring has accepted and dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthCounters {
    pub accepted: u64,
    /// Per [`Reject::ALL`] index.
    pub rejected: [u64; Reject::ALL.len()],
    pub quarantines: u64,
    /// Certificates and revocations refused, per [`Refusal::ALL`] index.
    pub refused: [u64; Refusal::ALL.len()],
}

impl AuthCounters {
    pub fn rejected(&self, reason: Reject) -> u64 {
        self.rejected[reason as usize]
    }

    pub fn refused(&self, reason: Refusal) -> u64 {
        self.refused[reason as usize]
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

/// What a peer's certificate says, as the keyring needs it.
struct PeerCert {
    serial: u64,
    not_before_ms: u64,
    not_after: Time,
    capabilities: BTreeSet<Capability>,
    kem: Box<EncapsulationKey>,
    revoked: bool,
}

/// A message that passed every check but its signature.
struct Pending<'a> {
    env: Envelope<Message>,
    frame: Frame<'a>,
    /// The local receiver of a sealed message.
    to: Option<&'a NodeId>,
    /// An encrypted frame that opened (its tag is the cipher's).
    decrypted: bool,
}

/// A peer's certificate as the registry lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateView {
    pub node: NodeId,
    pub serial: u64,
    pub not_after: Time,
    pub capabilities: BTreeSet<Capability>,
    pub revoked: bool,
}

/// The keys of this process's nodes and of its peers, and the receiving side's memory.
pub struct Keyring {
    config: AuthConfig,
    /// Under certificates: the fleet's authority. `None`: trust on first use.
    anchor: Option<Anchor>,
    local: BTreeMap<NodeId, Local>,
    peers: BTreeMap<NodeId, Peer>,
    /// Revoked serials, with when the certificate they revoke would have expired.
    revoked: BTreeMap<u64, Time>,
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

    /// Learns a peer's certificate from the registry: kept when the authority signed it for
    /// this fleet, it is valid at `now`, its serial is not revoked and it is no older than
    /// the one held. Refusals are counted.
    pub fn learn_certificate(&mut self, signed: &Signed, now: Time) -> Result<NodeId, Refusal> {
        let r = self.check_certificate(signed, now);
        if let Err(reason) = r {
            self.counters.refused[reason as usize] += 1;
        }
        let (cert, kem) = r?;
        let key = VerifyingKey::from_bytes(&cert.ed25519_key()).map_err(|_| Refusal::Malformed)?;
        let node = cert.node.clone();
        if let Some(held) = self.peers.get(&node).and_then(|p| p.cert.as_ref())
            && held.not_before_ms > cert.not_before_ms
        {
            // An older certificate written over a newer one changes nothing.
            return Ok(node);
        }
        self.insert_peer(
            node.clone(),
            key,
            Some(PeerCert {
                serial: cert.serial,
                not_before_ms: cert.not_before_ms,
                not_after: Time::from_millis(cert.not_after_ms),
                capabilities: cert.capabilities,
                kem: Box::new(kem),
                revoked: false,
            }),
        );
        Ok(node)
    }

    fn check_certificate(
        &self,
        signed: &Signed,
        now: Time,
    ) -> Result<(qs_wire::trust::Certificate, EncapsulationKey), Refusal> {
        let anchor = self.anchor.as_ref().ok_or(Refusal::Malformed)?;
        let cert = anchor.certificate(signed, now.as_millis())?;
        if self.revoked.contains_key(&cert.serial) {
            return Err(Refusal::Revoked);
        }
        let kem_bytes = cert.ml_kem_key();
        let kem_key = ml_kem::Key::<EncapsulationKey>::try_from(kem_bytes.as_slice())
            .map_err(|_| Refusal::Malformed)?;
        let kem = EncapsulationKey::new(&kem_key).map_err(|_| Refusal::Malformed)?;
        Ok((cert, kem))
    }

    /// Applies a revocation from the registry: signed by the authority for this fleet. The
    /// revoked node's messages are refused from now on, and so is its certificate.
    pub fn revoke(&mut self, signed: &Signed, now: Time) -> Result<NodeId, Refusal> {
        let r = self
            .anchor
            .as_ref()
            .ok_or(Refusal::Malformed)
            .and_then(|a| a.revocation(signed));
        let r = match r {
            Ok(r) => r,
            Err(reason) => {
                self.counters.refused[reason as usize] += 1;
                return Err(reason);
            }
        };
        self.revoked
            .retain(|_, until| until.as_millis() > now.as_millis());
        if self.revoked.len() < MAX_REVOCATIONS {
            self.revoked
                .insert(r.serial, Time::from_millis(r.not_after_ms));
        }
        if let Some(cert) = self
            .peers
            .get_mut(&r.node)
            .and_then(|p| p.cert.as_mut())
            .filter(|c| c.serial == r.serial)
        {
            cert.revoked = true;
        }
        Ok(r.node)
    }

    /// The certificates held, by node.
    pub fn certificates(&self) -> Vec<CertificateView> {
        self.peers
            .iter()
            .filter_map(|(n, p)| {
                let c = p.cert.as_ref()?;
                Some(CertificateView {
                    node: n.clone(),
                    serial: c.serial,
                    not_after: c.not_after,
                    capabilities: c.capabilities.clone(),
                    revoked: c.revoked,
                })
            })
            .collect()
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
        if self.standing(peer, now).is_some() || !self.may(peer, Capability::Api) {
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

    /// Opens one frame received by `to` (a node of this process; `None` for a broadcast).
    pub fn open(
        &mut self,
        to: Option<&NodeId>,
        bytes: &[u8],
        now: Time,
    ) -> Result<Envelope<Message>, Rejected> {
        self.open_many(to, std::iter::once(bytes), now)
            .pop()
            .expect("one verdict per frame")
    }

    /// Opens a batch of frames received by `to`, in order; their Ed25519 signatures are
    /// checked as one batch, which costs about half as much per signature.
    pub fn open_many<'a>(
        &mut self,
        to: Option<&'a NodeId>,
        frames: impl IntoIterator<Item = &'a [u8]>,
        now: Time,
    ) -> Vec<Result<Envelope<Message>, Rejected>> {
        let screened: Vec<Result<Pending<'a>, Rejected>> = frames
            .into_iter()
            .map(|bytes| self.screen(to, bytes, now))
            .collect();
        let signed_ok = self.check_signatures(&screened);
        screened
            .into_iter()
            .enumerate()
            .map(|(i, r)| self.admit(r?, signed_ok.get(&i).copied(), now))
            .collect()
    }

    /// Parses a frame and decodes its envelope; drops what needs no key to drop.
    fn screen<'a>(
        &mut self,
        to: Option<&'a NodeId>,
        bytes: &'a [u8],
        now: Time,
    ) -> Result<Pending<'a>, Rejected> {
        let frame = Frame::parse(bytes)
            .map_err(|e| self.reject(Reject::Malformed, None, now, Some(e.to_string())))?;
        if frame.kind == FrameKind::Encrypted && self.config.required {
            return self.screen_encrypted(to, frame, now);
        }
        let env = Envelope::decode(frame.body)
            .map_err(|e| self.reject(Reject::Malformed, None, now, Some(e.to_string())))?;
        let pending = Pending {
            env,
            frame,
            to,
            decrypted: false,
        };
        if !self.config.required {
            return Ok(pending);
        }
        self.check_sender(&pending.env.sender, now)?;
        if frame.kind == FrameKind::Open {
            return Err(self.reject(Reject::Unsigned, Some(pending.env.sender), now, None));
        }
        Ok(pending)
    }

    /// Decrypts an encrypted frame, then decodes the envelope inside, which must be its
    /// sender's.
    fn screen_encrypted<'a>(
        &mut self,
        to: Option<&'a NodeId>,
        frame: Frame<'a>,
        now: Time,
    ) -> Result<Pending<'a>, Rejected> {
        let header = EncryptedHeader::parse(frame.tag);
        let sender = header
            .and_then(|h| std::str::from_utf8(h.sender).ok())
            .and_then(|s| NodeId::new(s).ok());
        let (Some(header), Some(sender)) = (header, sender) else {
            let detail = Some("encrypted frame's header".to_string());
            return Err(self.reject(Reject::Malformed, None, now, detail));
        };
        self.check_sender(&sender, now)?;
        let key = self.peers.get(&sender).map(|p| p.key);
        let (Some(to), Some(key)) = (to, key) else {
            return Err(self.reject(Reject::BadSignature, Some(sender), now, None));
        };
        let Some(local) = self.local.get_mut(to) else {
            return Err(self.reject(Reject::BadSignature, Some(sender), now, None));
        };
        let plain = match session::decrypt(local, &sender, to, &key, &header, &frame) {
            Ok(plain) => plain,
            Err(OpenError::NoSession) => {
                return Err(self.reject(Reject::NoSession, Some(sender), now, None));
            }
            Err(OpenError::Refused) => {
                return Err(self.reject(Reject::BadSignature, Some(sender), now, None));
            }
        };
        let env = Envelope::decode(&plain)
            .map_err(|e| self.reject(Reject::Malformed, None, now, Some(e.to_string())))?;
        if env.sender != sender {
            return Err(self.reject(Reject::BadSignature, Some(sender), now, None));
        }
        Ok(Pending {
            env,
            frame,
            to: Some(to),
            decrypted: true,
        })
    }

    /// Drops what comes from a sender the keyring does not know, has quarantined, or holds
    /// no good certificate of.
    fn check_sender(&mut self, sender: &NodeId, now: Time) -> Result<(), Rejected> {
        let Some(peer) = self.peers.get(sender) else {
            return Err(self.reject(Reject::UnknownSender, Some(sender.clone()), now, None));
        };
        if peer.quarantined_until.is_some_and(|t| t > now) {
            return Err(self.reject(Reject::Quarantined, Some(sender.clone()), now, None));
        }
        if let Some(reason) = self.standing(peer, now) {
            return Err(self.reject(reason, Some(sender.clone()), now, None));
        }
        Ok(())
    }

    /// Under certificates, why a peer's messages are refused whatever they say: no
    /// certificate, a revoked one, an expired one.
    fn standing(&self, peer: &Peer, now: Time) -> Option<Reject> {
        self.anchor.as_ref()?;
        match &peer.cert {
            None => Some(Reject::UnknownSender),
            Some(c) if c.revoked => Some(Reject::Revoked),
            Some(c) if now >= c.not_after => Some(Reject::Expired),
            Some(_) => None,
        }
    }

    /// Whether a peer may do what `capability` allows: always under trust on first use.
    fn may(&self, peer: &Peer, capability: Capability) -> bool {
        self.anchor.is_none()
            || peer
                .cert
                .as_ref()
                .is_some_and(|c| c.capabilities.contains(&capability))
    }

    /// Checks every Ed25519 signature among `pending`: as one batch when there are enough,
    /// one by one when there are few or the batch fails (to find the bad ones). Indexed by
    /// position in `pending`.
    fn check_signatures(&self, pending: &[Result<Pending<'_>, Rejected>]) -> BTreeMap<usize, bool> {
        let signed: Vec<(usize, &[u8], Signature, VerifyingKey)> = pending
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let p = p.as_ref().ok()?;
                if p.frame.kind != FrameKind::Signed || !self.config.required {
                    return None;
                }
                let tag: &[u8; SIGNATURE_LEN] = p.frame.tag.try_into().ok()?;
                let key = self.peers.get(&p.env.sender)?.key;
                Some((i, p.frame.body, Signature::from_bytes(tag), key))
            })
            .collect();
        if signed.len() >= BATCH_MIN {
            let messages: Vec<&[u8]> = signed.iter().map(|s| s.1).collect();
            let signatures: Vec<Signature> = signed.iter().map(|s| s.2).collect();
            let keys: Vec<VerifyingKey> = signed.iter().map(|s| s.3).collect();
            if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
                return signed.iter().map(|s| (s.0, true)).collect();
            }
        }
        signed
            .iter()
            .map(|(i, body, sig, key)| (*i, key.verify(body, sig).is_ok()))
            .collect()
    }

    /// The checks after parsing: the tag, the timestamp, then the replay window.
    fn admit(
        &mut self,
        p: Pending<'_>,
        signature_ok: Option<bool>,
        now: Time,
    ) -> Result<Envelope<Message>, Rejected> {
        if self.config.required {
            let sender = &p.env.sender;
            let tag_ok = match p.frame.kind {
                FrameKind::Signed => signature_ok.unwrap_or(false),
                FrameKind::Sealed => self.check_mac(p.to, sender, p.frame.tag, p.frame.body),
                FrameKind::Encrypted => p.decrypted,
                FrameKind::Open => false,
            };
            if !tag_ok {
                return Err(self.reject(Reject::BadSignature, Some(p.env.sender), now, None));
            }
            let skew_us = self.config.max_clock_skew_ms.saturating_mul(1000);
            if now.as_micros().abs_diff(p.env.sent_at_us) > skew_us {
                return Err(self.reject(Reject::Stale, Some(p.env.sender), now, None));
            }
            let fresh = self
                .peers
                .get_mut(sender)
                .is_some_and(|peer| peer.window.admit(p.env.seq));
            if !fresh {
                return Err(self.reject(Reject::Replay, Some(p.env.sender), now, None));
            }
        }
        if let Err(detail) = checked(&p.env) {
            return Err(self.reject(Reject::Invalid, Some(p.env.sender), now, Some(detail)));
        }
        if let Some(capability) = required_capability(&p.env.payload)
            && self.config.required
            && !self
                .peers
                .get(&p.env.sender)
                .is_some_and(|peer| self.may(peer, capability))
        {
            let detail = Some(format!(
                "a {} needs the {} capability",
                p.env.payload.kind(),
                capability.as_str()
            ));
            return Err(self.reject(Reject::Capability, Some(p.env.sender), now, detail));
        }
        self.counters.accepted += 1;
        Ok(p.env)
    }

    fn check_mac(&mut self, to: Option<&NodeId>, sender: &NodeId, tag: &[u8], body: &[u8]) -> bool {
        let (Some(to), Some(peer)) = (to, self.peers.get(sender)) else {
            return false;
        };
        let key = peer.key;
        let Some(local) = self.local.get_mut(to) else {
            return false;
        };
        let mut mac = local.pair(sender, &key).mac.clone();
        mac.update(body);
        tag.len() == MAC_LEN && mac.verify_slice(tag).is_ok()
    }

    /// Counts a rejection, and strikes the sender when it should.
    fn reject(
        &mut self,
        reason: Reject,
        sender: Option<NodeId>,
        now: Time,
        detail: Option<String>,
    ) -> Rejected {
        self.counters.rejected[reason as usize] += 1;
        let mut quarantined_until = None;
        if let Some(peer) = sender
            .as_ref()
            .filter(|_| reason.strikes())
            .and_then(|s| self.peers.get_mut(s))
        {
            let window_us = self.config.quarantine_window_ms.saturating_mul(1000);
            if now
                .as_micros()
                .saturating_sub(peer.strikes_since.as_micros())
                > window_us
            {
                peer.strikes = 0;
                peer.strikes_since = now;
            }
            peer.strikes += 1;
            if peer.strikes >= self.config.quarantine_after {
                let until = Time::from_micros(
                    now.as_micros() + self.config.quarantine_ms.saturating_mul(1000),
                );
                peer.quarantined_until = Some(until);
                peer.strikes = 0;
                self.counters.quarantines += 1;
                quarantined_until = Some(until);
            }
        }
        Rejected {
            reason,
            sender,
            quarantined_until,
            detail,
        }
    }
}

/// Parses a frame and decodes the envelope inside; what is wrong, if not.
pub fn unframe(bytes: &[u8]) -> Result<(Frame<'_>, Envelope<Message>), String> {
    let frame = Frame::parse(bytes).map_err(|e| e.to_string())?;
    let env = Envelope::decode(frame.body).map_err(|e| e.to_string())?;
    Ok((frame, env))
}

/// [`Envelope::validate`], its failure as the detail of a rejection.
fn checked(env: &Envelope<Message>) -> Result<(), String> {
    env.validate()
        .map_err(|f| format!("{}: {}", f.field, f.reason))
}

/// Opens a frame where no authentication is required (between the nodes of one process):
/// it must parse and its message keep every rule; nothing else is checked, and nobody is
/// struck (no keyring is involved).
pub fn open_unauthenticated(bytes: &[u8]) -> Result<Envelope<Message>, Rejected> {
    let rejected = |reason, sender, detail| Rejected {
        reason,
        sender,
        quarantined_until: None,
        detail: Some(detail),
    };
    let (_, env) = unframe(bytes).map_err(|e| rejected(Reject::Malformed, None, e))?;
    match checked(&env) {
        Ok(()) => Ok(env),
        Err(e) => Err(rejected(Reject::Invalid, Some(env.sender), e)),
    }
}

/// What a message asks of its sender's certificate: stewarding for what a steward sends,
/// hosting for what a host answers; nothing for heartbeats and failure detection, which
/// every member takes part in.
pub fn required_capability(message: &Message) -> Option<Capability> {
    match message {
        Message::CapacityQuery { .. }
        | Message::Dispatch { .. }
        | Message::Stop { .. }
        | Message::Promote { .. } => Some(Capability::Steward),
        Message::Offer { .. } | Message::Decline { .. } | Message::DispatchReply { .. } => {
            Some(Capability::Host)
        }
        Message::Heartbeat(_)
        | Message::Ping { .. }
        | Message::PingReq { .. }
        | Message::Ack { .. } => None,
    }
}
