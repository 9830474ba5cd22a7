//! Authenticated envelopes: sealing what a node sends and deciding whether what it receives is
//! genuine, fresh and new.
//!
//! Each node holds an Ed25519 key pair; the fleet's registry holds the public keys, and the
//! shell teaches them to the [`Keyring`]. A broadcast (a heartbeat) is signed with Ed25519. A
//! directed message is sealed with HMAC-SHA-256 under the session key of its (sender,
//! receiver) pair, derived without a handshake from the two Ed25519 keys (each turned into
//! its X25519 form, as libsodium's `crypto_sign_ed25519_pk_to_curve25519` does, then a
//! static Diffie-Hellman): a MAC costs a microsecond where a signature check costs tens, and
//! only the pair can compute it.
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

use crate::time::Time;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use hmac::{Hmac, Mac};
use qs_wire::frame::{MAC_LEN, SIGNATURE_LEN};
use qs_wire::{Envelope, Frame, FrameKind, Message, NodeId};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

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
}

impl Reject {
    pub const ALL: [Reject; 8] = [
        Reject::Malformed,
        Reject::Unsigned,
        Reject::UnknownSender,
        Reject::BadSignature,
        Reject::Stale,
        Reject::Replay,
        Reject::Quarantined,
        Reject::Invalid,
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
        }
    }

    /// Whether it counts towards the sender's quarantine: only what the sender itself
    /// signed can (see the module docs).
    const fn strikes(self) -> bool {
        matches!(self, Reject::Invalid)
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
#[error("public key of {node} is not a valid Ed25519 key")]
pub struct KeyError {
    pub node: NodeId,
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
}

impl AuthConfig {
    pub fn from_config(config: &crate::Config, required: bool) -> Self {
        AuthConfig {
            required,
            max_clock_skew_ms: config.max_clock_skew_ms,
            quarantine_after: config.quarantine_after,
            quarantine_window_ms: config.quarantine_window_ms,
            quarantine_ms: config.quarantine_ms,
        }
    }
}

/// What a keyring has accepted and dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthCounters {
    pub accepted: u64,
    /// Per [`Reject::ALL`] index.
    pub rejected: [u64; 8],
    pub quarantines: u64,
}

impl AuthCounters {
    pub fn rejected(&self, reason: Reject) -> u64 {
        self.rejected[reason as usize]
    }
}

/// A node of this process: its signing key and the session keys it has derived.
struct Local {
    signing: SigningKey,
    /// Session MACs, keyed, per peer (cloning a keyed HMAC skips the key schedule).
    sessions: BTreeMap<NodeId, HmacSha256>,
}

/// Which recent sequence numbers of a sender were seen: a ring of [`REPLAY_WINDOW`] bits
/// ending at the highest.
#[derive(Clone, Debug, Default)]
struct ReplayWindow {
    highest: Option<u64>,
    bits: [u64; (REPLAY_WINDOW / 64) as usize],
}

impl ReplayWindow {
    fn bit(seq: u64) -> (usize, u64) {
        let i = seq % REPLAY_WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    /// Whether `seq` is new; if so it is remembered.
    fn admit(&mut self, seq: u64) -> bool {
        let Some(highest) = self.highest else {
            self.highest = Some(seq);
            let (w, b) = Self::bit(seq);
            self.bits[w] |= b;
            return true;
        };
        if seq > highest {
            if seq - highest >= REPLAY_WINDOW {
                self.bits = Default::default();
            } else {
                for s in highest + 1..seq {
                    let (w, b) = Self::bit(s);
                    self.bits[w] &= !b;
                }
            }
            self.highest = Some(seq);
            let (w, b) = Self::bit(seq);
            self.bits[w] |= b;
            return true;
        }
        if highest - seq >= REPLAY_WINDOW {
            return false;
        }
        let (w, b) = Self::bit(seq);
        let new = self.bits[w] & b == 0;
        self.bits[w] |= b;
        new
    }
}

/// A peer: its key, what it has sent, and its standing.
struct Peer {
    key: VerifyingKey,
    window: ReplayWindow,
    strikes: u32,
    strikes_since: Time,
    quarantined_until: Option<Time>,
}

/// A message that passed every check but its signature.
struct Pending<'a> {
    env: Envelope<Message>,
    frame: Frame<'a>,
    /// The local receiver of a sealed message.
    to: Option<&'a NodeId>,
}

/// The keys of this process's nodes and of its peers, and the receiving side's memory.
pub struct Keyring {
    config: AuthConfig,
    local: BTreeMap<NodeId, Local>,
    peers: BTreeMap<NodeId, Peer>,
    counters: AuthCounters,
}

impl Keyring {
    pub fn new(config: AuthConfig) -> Self {
        Keyring {
            config,
            local: BTreeMap::new(),
            peers: BTreeMap::new(),
            counters: AuthCounters::default(),
        }
    }

    /// Adds a node of this process, with the 32 secret bytes of its key (the shell keeps them
    /// on disk); returns its public key. It is also a peer: nodes of one process talk too.
    pub fn add_local(&mut self, node: NodeId, secret: [u8; 32]) -> [u8; 32] {
        let signing = SigningKey::from_bytes(&secret);
        let public = signing.verifying_key().to_bytes();
        self.local.insert(
            node.clone(),
            Local {
                signing,
                sessions: BTreeMap::new(),
            },
        );
        // The key of one of our own nodes is valid by construction.
        let _ = self.learn(node, public);
        public
    }

    /// Learns (or relearns) a peer's public key from the registry.
    pub fn learn(&mut self, node: NodeId, public: [u8; 32]) -> Result<(), KeyError> {
        let key = VerifyingKey::from_bytes(&public).map_err(|_| KeyError { node: node.clone() })?;
        if let Some(peer) = self.peers.get_mut(&node) {
            if peer.key == key {
                return Ok(());
            }
            peer.key = key;
        } else {
            self.peers.insert(
                node.clone(),
                Peer {
                    key,
                    window: ReplayWindow::default(),
                    strikes: 0,
                    strikes_since: Time::ZERO,
                    quarantined_until: None,
                },
            );
        }
        for local in self.local.values_mut() {
            local.sessions.remove(&node);
        }
        Ok(())
    }

    /// Forgets a peer whose registry entry was removed.
    pub fn forget(&mut self, node: &NodeId) {
        if !self.local.contains_key(node) {
            self.peers.remove(node);
        }
        for local in self.local.values_mut() {
            local.sessions.remove(node);
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
        let Some(local) = self.local.get_mut(from).filter(|_| self.config.required) else {
            return Frame::write(FrameKind::Open, &[], body);
        };
        if let Some(peer) = to.and_then(|to| self.peers.get(to).map(|p| (to, p))) {
            let mac = session(local, peer.0, &peer.1.key);
            let mut mac = mac.clone();
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
        let mut mac = session(local, to, &key).clone();
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
        let key = peer.key;
        let Some(local) = self.local.get_mut(to) else {
            return false;
        };
        let mut mac = session(local, from, &key).clone();
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
        let (frame, env) =
            unframe(bytes).map_err(|e| self.reject(Reject::Malformed, None, now, Some(e)))?;
        if !self.config.required {
            return Ok(Pending { env, frame, to });
        }
        let Some(peer) = self.peers.get(&env.sender) else {
            return Err(self.reject(Reject::UnknownSender, Some(env.sender), now, None));
        };
        if peer.quarantined_until.is_some_and(|t| t > now) {
            return Err(self.reject(Reject::Quarantined, Some(env.sender), now, None));
        }
        if frame.kind == FrameKind::Open {
            return Err(self.reject(Reject::Unsigned, Some(env.sender), now, None));
        }
        Ok(Pending { env, frame, to })
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
        self.counters.accepted += 1;
        Ok(p.env)
    }

    fn check_mac(&mut self, to: Option<&NodeId>, sender: &NodeId, tag: &[u8], body: &[u8]) -> bool {
        let (Some(to), Some(peer)) = (to, self.peers.get(sender)) else {
            return false;
        };
        let Some(local) = self.local.get_mut(to) else {
            return false;
        };
        let mut mac = session(local, sender, &peer.key).clone();
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

/// The keyed MAC of the pair (local node, peer), derived on first use: SHA-256 over a label,
/// the X25519 shared secret and both public keys in order.
fn session<'a>(local: &'a mut Local, peer: &NodeId, peer_key: &VerifyingKey) -> &'a HmacSha256 {
    local.sessions.entry(peer.clone()).or_insert_with(|| {
        let shared = peer_key
            .to_montgomery()
            .mul_clamped(local.signing.to_scalar_bytes());
        let mut h = Sha256::new();
        h.update(b"quasicrystal session v1\0");
        h.update(shared.as_bytes());
        let mine = local.signing.verifying_key().to_bytes();
        let theirs = peer_key.to_bytes();
        let (a, b) = if mine <= theirs {
            (mine, theirs)
        } else {
            (theirs, mine)
        };
        h.update(a);
        h.update(b);
        let key = h.finalize();
        HmacSha256::new_from_slice(&key).expect("HMAC takes keys of any length")
    })
}
