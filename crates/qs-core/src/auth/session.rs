//! The keys a node of this process holds towards each peer: the static pair key (an HMAC,
//! for sealed frames and for vouching outside the bus) and the short-lived session keys
//! that encrypt directed messages.
//!
//! A session runs one way, from its sender to its receiver. The sender opens it alone, with
//! a hybrid key agreement: an ephemeral X25519 key against the receiver's static one, the
//! static pair secret (which only the two nodes can compute, so the session is the sender's
//! and no one else's), and an ML-KEM-768 encapsulation to the receiver's certified key (so a
//! recording is safe from a quantum computer as long as ML-KEM holds). The session key is
//! SHA-256 over all three secrets, both names, the session id and the handshake. Each message
//! is ChaCha20-Poly1305 with its number in the session as the nonce, the clear header as
//! associated data.
//!
//! The handshake (1,120 bytes) rides along on a session's first 16 messages until the
//! receiver shows it holds the session (its own encrypted frames to the sender name the
//! session it holds: `ack`); and, so that a receiver that restarted or missed it is not left
//! out for long, once a second after that.
//! A session is replaced after `rekey_after_ms` or `rekey_after_messages`; the receiver keeps
//! the last two of each sender, so messages in flight across a rekey still open.

use super::AuthConfig;
use crate::time::Time;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce};
use ed25519_dalek::{SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use ml_kem::{Decapsulate, KeyExport, MlKem768};
use qs_wire::frame::{EncryptedHeader, Handshake, KEM_CIPHERTEXT_LEN, X25519_LEN};
use qs_wire::{Frame, FrameKind, NodeId};
use sha2::{Digest, Sha256, Sha512};
use std::collections::BTreeMap;

pub(super) type HmacSha256 = Hmac<Sha256>;
type DecapsulationKey = ml_kem::DecapsulationKey<MlKem768>;
pub(super) type EncapsulationKey = ml_kem::EncapsulationKey<MlKem768>;

/// How often, at least, a sender repeats the handshake of an acknowledged session.
const HANDSHAKE_REFRESH_US: u64 = 1_000_000;
/// How many of a session's first messages carry its handshake until it is acknowledged.
const HANDSHAKE_UNACKNOWLEDGED: u64 = 16;
/// Sessions a receiver keeps per sender.
const INBOUND_KEPT: usize = 2;

/// A deterministic random bit generator: SHA-256 over a state the shell seeds from the OS
/// (and the node keys), and a counter. The core draws no randomness of its own.
pub(super) struct Drbg {
    state: [u8; 32],
    counter: u64,
}

impl Drbg {
    pub(super) fn new() -> Drbg {
        Drbg {
            state: [0; 32],
            counter: 0,
        }
    }

    /// Mixes `entropy` into the state.
    pub(super) fn reseed(&mut self, entropy: &[u8]) {
        let mut h = Sha256::new();
        h.update(b"quasicrystal drbg reseed\0");
        h.update(self.state);
        h.update(entropy);
        self.state = h.finalize().into();
    }

    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(32) {
            self.counter += 1;
            let mut h = Sha256::new();
            h.update(b"quasicrystal drbg\0");
            h.update(self.state);
            h.update(self.counter.to_le_bytes());
            let block: [u8; 32] = h.finalize().into();
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
    }

    fn bytes32(&mut self) -> [u8; 32] {
        let mut b = [0; 32];
        self.fill(&mut b);
        b
    }
}

/// A node of this process: its keys and what it holds towards each peer.
pub(super) struct Local {
    pub(super) signing: SigningKey,
    x25519: x25519_dalek::StaticSecret,
    kem: Box<DecapsulationKey>,
    pub(super) pairs: BTreeMap<NodeId, Pair>,
}

/// What a node of this process holds towards one peer.
pub(super) struct Pair {
    /// The static pair key's HMAC, keyed (cloning it skips the key schedule).
    pub(super) mac: HmacSha256,
    static_shared: [u8; 32],
    out: Option<Outbound>,
    inbound: Vec<Inbound>,
}

struct Outbound {
    id: u64,
    cipher: ChaCha20Poly1305,
    counter: u64,
    opened: Time,
    ephemeral: [u8; X25519_LEN],
    ciphertext: Box<[u8; KEM_CIPHERTEXT_LEN]>,
    acked: bool,
    handshake_sent: Option<Time>,
}

struct Inbound {
    id: u64,
    cipher: ChaCha20Poly1305,
}

/// Why an encrypted frame did not open.
pub(super) enum OpenError {
    /// No such session, and no handshake to open it.
    NoSession,
    /// The cipher refused it (forged, altered, or a handshake that is not the sender's).
    Refused,
}

impl Local {
    pub(super) fn new(secret: [u8; 32]) -> Local {
        let signing = SigningKey::from_bytes(&secret);
        let x25519 = x25519_dalek::StaticSecret::from(signing.to_scalar_bytes());
        // The ML-KEM key is derived from the node's one secret: nothing more to keep on disk.
        let mut h = Sha512::new();
        h.update(b"quasicrystal ml-kem-768 seed\0");
        h.update(secret);
        let seed: [u8; 64] = h.finalize().into();
        let kem = Box::new(DecapsulationKey::from_seed(seed.into()));
        Local {
            signing,
            x25519,
            kem,
            pairs: BTreeMap::new(),
        }
    }

    /// The ML-KEM-768 encapsulation key peers encapsulate to (for its certificate).
    pub(super) fn kem_public(&self) -> Vec<u8> {
        self.kem.encapsulation_key().to_bytes().to_vec()
    }

    /// The pair with `peer`, set up on first use.
    pub(super) fn pair(&mut self, peer: &NodeId, peer_key: &VerifyingKey) -> &mut Pair {
        let signing = &self.signing;
        self.pairs.entry(peer.clone()).or_insert_with(|| {
            let shared = peer_key
                .to_montgomery()
                .mul_clamped(signing.to_scalar_bytes())
                .to_bytes();
            let mut h = Sha256::new();
            h.update(b"quasicrystal session v1\0");
            h.update(shared);
            let mine = signing.verifying_key().to_bytes();
            let theirs = peer_key.to_bytes();
            let (a, b) = if mine <= theirs {
                (mine, theirs)
            } else {
                (theirs, mine)
            };
            h.update(a);
            h.update(b);
            let key = h.finalize();
            Pair {
                mac: <HmacSha256 as Mac>::new_from_slice(&key)
                    .expect("HMAC takes keys of any length"),
                static_shared: shared,
                out: None,
                inbound: Vec::new(),
            }
        })
    }
}

/// The session key: SHA-256 over the three secrets, the names in order of sending, the
/// session id and the handshake.
#[allow(clippy::too_many_arguments)]
fn session_key(
    ephemeral_shared: &[u8; 32],
    static_shared: &[u8; 32],
    kem_shared: &[u8],
    sender: &[u8],
    receiver: &[u8],
    id: u64,
    ephemeral: &[u8; X25519_LEN],
    ciphertext: &[u8; KEM_CIPHERTEXT_LEN],
) -> ChaCha20Poly1305 {
    let mut h = Sha256::new();
    h.update(b"quasicrystal session v2\0");
    h.update(ephemeral_shared);
    h.update(static_shared);
    h.update(kem_shared);
    h.update(sender);
    h.update([0]);
    h.update(receiver);
    h.update([0]);
    h.update(id.to_le_bytes());
    h.update(ephemeral);
    h.update(ciphertext.as_slice());
    ChaCha20Poly1305::new(&h.finalize())
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n.into()
}

/// Encrypts `body` from `from` to `to`, opening a session first when there is none or the
/// current one is due for a rekey.
#[allow(clippy::too_many_arguments)]
pub(super) fn encrypt(
    pair: &mut Pair,
    from: &NodeId,
    to: &NodeId,
    peer_key: &VerifyingKey,
    peer_kem: &EncapsulationKey,
    rng: &mut Drbg,
    config: &AuthConfig,
    body: &[u8],
    now: Time,
) -> Vec<u8> {
    let due = pair.out.as_ref().is_none_or(|o| {
        o.counter >= config.rekey_after_messages
            || now.as_micros().saturating_sub(o.opened.as_micros())
                >= config.rekey_after_ms.saturating_mul(1000)
    });
    if due {
        let secret = x25519_dalek::StaticSecret::from(rng.bytes32());
        let ephemeral = x25519_dalek::PublicKey::from(&secret).to_bytes();
        let theirs = x25519_dalek::PublicKey::from(peer_key.to_montgomery().to_bytes());
        let ephemeral_shared = secret.diffie_hellman(&theirs).to_bytes();
        let (ct, kem_shared) = peer_kem.encapsulate_deterministic(&rng.bytes32().into());
        let ciphertext: Box<[u8; KEM_CIPHERTEXT_LEN]> = Box::new(
            ct.as_slice()
                .try_into()
                .expect("ML-KEM-768 ciphertexts are 1088 bytes"),
        );
        let id = u64::from_le_bytes(rng.bytes32()[..8].try_into().expect("8 bytes")) | 1;
        let cipher = session_key(
            &ephemeral_shared,
            &pair.static_shared,
            kem_shared.as_slice(),
            from.as_str().as_bytes(),
            to.as_str().as_bytes(),
            id,
            &ephemeral,
            &ciphertext,
        );
        pair.out = Some(Outbound {
            id,
            cipher,
            counter: 0,
            opened: now,
            ephemeral,
            ciphertext,
            acked: false,
            handshake_sent: None,
        });
    }
    let ack = pair.inbound.last().map_or(0, |s| s.id);
    let out = pair.out.as_mut().expect("opened above");
    let refresh = out
        .handshake_sent
        .is_none_or(|t| now.as_micros().saturating_sub(t.as_micros()) >= HANDSHAKE_REFRESH_US);
    // Unacknowledged, it rides along on the session's first messages (one-way traffic gets
    // no acknowledgement, and pays for it only that long), then once a second.
    let early = !out.acked && out.counter < HANDSHAKE_UNACKNOWLEDGED;
    let handshake = (early || refresh).then_some(Handshake {
        ephemeral: &out.ephemeral,
        ciphertext: &out.ciphertext,
    });
    if handshake.is_some() {
        out.handshake_sent = Some(now);
    }
    let header = EncryptedHeader {
        sender: from.as_str().as_bytes(),
        session: out.id,
        counter: out.counter,
        ack,
        handshake,
    }
    .write();
    let aad = [&[b'E'][..], &header].concat();
    let sealed = out
        .cipher
        .encrypt(
            &nonce(out.counter),
            Payload {
                msg: body,
                aad: &aad,
            },
        )
        .expect("ChaCha20-Poly1305 encrypts any message under 256 GiB");
    out.counter += 1;
    Frame::write(FrameKind::Encrypted, &header, &sealed)
}

/// What opening an encrypted frame would change: a session its handshake opened, and the
/// acknowledgement it carries. Kept only once the message inside passed every check
/// ([`commit`]), so a replayed or stale frame changes nothing.
pub(super) struct Opened {
    pub(super) sender: NodeId,
    pub(super) to: NodeId,
    new_session: Option<Inbound>,
    ack: u64,
}

/// Decrypts an encrypted frame `frame` sent by `sender` to `to` (a node of this process):
/// under a session the pair holds, or one its handshake opens (its ML-KEM decapsulation
/// done only then).
pub(super) fn decrypt(
    local: &mut Local,
    sender: &NodeId,
    to: &NodeId,
    peer_key: &VerifyingKey,
    header: &EncryptedHeader<'_>,
    frame: &Frame<'_>,
) -> Result<(Vec<u8>, Opened), OpenError> {
    let aad = [&[b'E'][..], frame.tag].concat();
    let payload = Payload {
        msg: frame.body,
        aad: &aad,
    };
    let held = local
        .pairs
        .get(sender)
        .and_then(|p| p.inbound.iter().find(|s| s.id == header.session));
    let (plain, new_session) = if let Some(s) = held {
        let plain = s
            .cipher
            .decrypt(&nonce(header.counter), payload)
            .map_err(|_| OpenError::Refused)?;
        (plain, None)
    } else {
        let Some(hs) = header.handshake else {
            return Err(OpenError::NoSession);
        };
        let kem_shared = local
            .kem
            .decapsulate_slice(hs.ciphertext)
            .map_err(|_| OpenError::Refused)?;
        let shared = local
            .x25519
            .diffie_hellman(&x25519_dalek::PublicKey::from(*hs.ephemeral));
        if !shared.was_contributory() {
            return Err(OpenError::Refused);
        }
        let pair = local.pair(sender, peer_key);
        let cipher = session_key(
            &shared.to_bytes(),
            &pair.static_shared,
            kem_shared.as_slice(),
            sender.as_str().as_bytes(),
            to.as_str().as_bytes(),
            header.session,
            hs.ephemeral,
            hs.ciphertext,
        );
        let plain = cipher
            .decrypt(&nonce(header.counter), payload)
            .map_err(|_| OpenError::Refused)?;
        let inbound = Inbound {
            id: header.session,
            cipher,
        };
        (plain, Some(inbound))
    };
    let opened = Opened {
        sender: sender.clone(),
        to: to.clone(),
        new_session,
        ack: header.ack,
    };
    Ok((plain, opened))
}

/// Keeps what an encrypted frame that was accepted opened: its new session (the oldest of
/// the sender's dropped past [`INBOUND_KEPT`]), and its acknowledgement: while the sender
/// names our current session, the handshake need not ride along.
pub(super) fn commit(local: &mut Local, peer_key: &VerifyingKey, opened: Opened) {
    let pair = local.pair(&opened.sender, peer_key);
    if let Some(inbound) = opened.new_session
        && !pair.inbound.iter().any(|s| s.id == inbound.id)
    {
        if pair.inbound.len() >= INBOUND_KEPT {
            pair.inbound.remove(0);
        }
        pair.inbound.push(inbound);
    }
    if let Some(out) = pair.out.as_mut() {
        out.acked = opened.ack == out.id;
    }
}
