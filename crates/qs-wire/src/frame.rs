//! The frame around an encoded envelope: one kind byte, the authentication tag its kind calls
//! for, then the envelope's bytes. The tag covers exactly those bytes, so a receiver verifies
//! what it received and never re-encodes anything.
//!
//! An encrypted frame is the exception: its envelope is a ChaCha20-Poly1305 ciphertext, and
//! what precedes it is a header ([`EncryptedHeader`]) in the clear, which the cipher
//! authenticates as associated data.

use serde::{Deserialize, Serialize};

/// Ed25519 signature length.
pub const SIGNATURE_LEN: usize = 64;
/// HMAC-SHA-256 tag length.
pub const MAC_LEN: usize = 32;
/// Largest frame a receiver reads (a heartbeat listing the most instances a node may have
/// fits well inside).
pub const MAX_FRAME_BYTES: usize = 4 << 20;

/// How a frame is authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameKind {
    /// No tag: between nodes of one process, on the in-memory fabric.
    Open,
    /// Ed25519 signature by the sender's key: broadcasts (heartbeats), and directed messages
    /// to a node whose public key the sender does not know yet.
    Signed,
    /// HMAC-SHA-256 under the static key of the (sender, receiver) pair: directed messages
    /// where encryption is off, or the peer has no encryption key (trust on first use).
    Sealed,
    /// ChaCha20-Poly1305 under a short-lived session key of the (sender, receiver) pair:
    /// directed messages.
    Encrypted,
}

impl FrameKind {
    const fn byte(self) -> u8 {
        match self {
            FrameKind::Open => b'O',
            FrameKind::Signed => b'S',
            FrameKind::Sealed => b'M',
            FrameKind::Encrypted => b'E',
        }
    }

    const fn tag_len(self) -> usize {
        match self {
            FrameKind::Open => 0,
            FrameKind::Signed => SIGNATURE_LEN,
            FrameKind::Sealed => MAC_LEN,
            // Its header's length is read from the header (see `EncryptedHeader`).
            FrameKind::Encrypted => 0,
        }
    }
}

/// The ML-KEM-768 ciphertext's length.
pub const KEM_CIPHERTEXT_LEN: usize = 1088;
/// An X25519 public key's length.
pub const X25519_LEN: usize = 32;
/// The AEAD's tag length.
pub const AEAD_TAG_LEN: usize = 16;

/// What opens a new session: the sender's ephemeral X25519 key and the ML-KEM ciphertext
/// encapsulated to the receiver's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake<'a> {
    pub ephemeral: &'a [u8; X25519_LEN],
    pub ciphertext: &'a [u8; KEM_CIPHERTEXT_LEN],
}

/// The clear header of an encrypted frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncryptedHeader<'a> {
    /// The sender's node name, as bytes (checked as a node id by the receiver).
    pub sender: &'a [u8],
    /// Which of the sender's sessions with the receiver.
    pub session: u64,
    /// The message's number in the session: the cipher's nonce.
    pub counter: u64,
    /// The session of the receiver's (to the sender) that the sender holds, 0 for none: the
    /// receiver then knows it need not open that session again.
    pub ack: u64,
    /// Present while the receiver may not hold the session yet.
    pub handshake: Option<Handshake<'a>>,
}

impl<'a> EncryptedHeader<'a> {
    const FIXED: usize = 1 + 8 + 8 + 8 + 1;

    /// Splits an encrypted frame's bytes after its kind byte into header and ciphertext.
    fn split(rest: &'a [u8]) -> Option<(EncryptedHeader<'a>, usize)> {
        let (&sender_len, after) = rest.split_first()?;
        let sender = after.get(..usize::from(sender_len))?;
        let fixed = after.get(usize::from(sender_len)..usize::from(sender_len) + 25)?;
        let u64_at = |i: usize| u64::from_le_bytes(fixed[i..i + 8].try_into().expect("8 bytes"));
        let mut len = Self::FIXED + usize::from(sender_len);
        let handshake = match fixed[24] {
            0 => None,
            1 => {
                let hs = rest.get(len..len + X25519_LEN + KEM_CIPHERTEXT_LEN)?;
                len += hs.len();
                let (e, c) = hs.split_at(X25519_LEN);
                Some(Handshake {
                    ephemeral: e.try_into().expect("32 bytes"),
                    ciphertext: c.try_into().expect("1088 bytes"),
                })
            }
            _ => return None,
        };
        let header = EncryptedHeader {
            sender,
            session: u64_at(0),
            counter: u64_at(8),
            ack: u64_at(16),
            handshake,
        };
        Some((header, len))
    }

    /// Parses the header a frame's `tag` holds (an encrypted frame's).
    pub fn parse(tag: &'a [u8]) -> Option<EncryptedHeader<'a>> {
        Self::split(tag)
            .filter(|(_, len)| *len == tag.len())
            .map(|(h, _)| h)
    }

    /// The header's bytes.
    pub fn write(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(Self::FIXED + self.sender.len() + X25519_LEN + KEM_CIPHERTEXT_LEN);
        out.push(u8::try_from(self.sender.len()).expect("node names are at most 63 bytes"));
        out.extend_from_slice(self.sender);
        out.extend_from_slice(&self.session.to_le_bytes());
        out.extend_from_slice(&self.counter.to_le_bytes());
        out.extend_from_slice(&self.ack.to_le_bytes());
        match &self.handshake {
            None => out.push(0),
            Some(hs) => {
                out.push(1);
                out.extend_from_slice(hs.ephemeral);
                out.extend_from_slice(hs.ciphertext);
            }
        }
        out
    }
}

/// A parsed frame, borrowing the received bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub kind: FrameKind,
    /// Empty for [`FrameKind::Open`].
    pub tag: &'a [u8],
    /// The encoded envelope the tag covers.
    pub body: &'a [u8],
}

/// Why bytes are not a frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("empty frame")]
    Empty,
    #[error("unknown frame kind byte 0x{0:02x}")]
    Kind(u8),
    #[error("{kind:?} frame of {len} bytes is shorter than its tag")]
    Short { kind: FrameKind, len: usize },
    #[error("frame of {0} bytes is larger than the {MAX_FRAME_BYTES} a frame may have")]
    TooLarge(usize),
}

impl<'a> Frame<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FrameError> {
        if bytes.len() > MAX_FRAME_BYTES {
            return Err(FrameError::TooLarge(bytes.len()));
        }
        let (&first, rest) = bytes.split_first().ok_or(FrameError::Empty)?;
        let kind = [
            FrameKind::Open,
            FrameKind::Signed,
            FrameKind::Sealed,
            FrameKind::Encrypted,
        ]
        .into_iter()
        .find(|k| k.byte() == first)
        .ok_or(FrameError::Kind(first))?;
        if kind == FrameKind::Encrypted {
            let short = FrameError::Short {
                kind,
                len: bytes.len(),
            };
            let (_, len) = EncryptedHeader::split(rest).ok_or(short.clone())?;
            if rest.len() < len + AEAD_TAG_LEN {
                return Err(short);
            }
            let (tag, body) = rest.split_at(len);
            return Ok(Frame { kind, tag, body });
        }
        if rest.len() < kind.tag_len() {
            return Err(FrameError::Short {
                kind,
                len: bytes.len(),
            });
        }
        let (tag, body) = rest.split_at(kind.tag_len());
        Ok(Frame { kind, tag, body })
    }

    /// Writes a frame; `tag` must have the kind's length (an encrypted frame's header).
    pub fn write(kind: FrameKind, tag: &[u8], body: &[u8]) -> Vec<u8> {
        assert!(
            kind == FrameKind::Encrypted || tag.len() == kind.tag_len(),
            "a {kind:?} tag has a fixed length"
        );
        let mut out = Vec::with_capacity(1 + tag.len() + body.len());
        out.push(kind.byte());
        out.extend_from_slice(tag);
        out.extend_from_slice(body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_per_kind() {
        for (kind, tag) in [
            (FrameKind::Open, vec![]),
            (FrameKind::Signed, vec![7; SIGNATURE_LEN]),
            (FrameKind::Sealed, vec![9; MAC_LEN]),
        ] {
            let bytes = Frame::write(kind, &tag, b"{}");
            let frame = Frame::parse(&bytes).unwrap();
            assert_eq!(
                (frame.kind, frame.tag, frame.body),
                (kind, &tag[..], &b"{}"[..])
            );
        }
    }

    #[test]
    fn encrypted_headers_round_trip_with_and_without_a_handshake() {
        let (eph, ct) = ([3u8; X25519_LEN], [4u8; KEM_CIPHERTEXT_LEN]);
        for handshake in [
            None,
            Some(Handshake {
                ephemeral: &eph,
                ciphertext: &ct,
            }),
        ] {
            let header = EncryptedHeader {
                sender: b"forge",
                session: 9,
                counter: 2,
                ack: 5,
                handshake,
            };
            let bytes = Frame::write(FrameKind::Encrypted, &header.write(), &[1; 40]);
            let frame = Frame::parse(&bytes).unwrap();
            assert_eq!(frame.body, &[1; 40]);
            assert_eq!(EncryptedHeader::parse(frame.tag), Some(header));
        }
        // Cut inside the handshake, or before the cipher's tag: short.
        let header = EncryptedHeader {
            sender: b"forge",
            session: 1,
            counter: 0,
            ack: 0,
            handshake: Some(Handshake {
                ephemeral: &eph,
                ciphertext: &ct,
            }),
        };
        let bytes = Frame::write(FrameKind::Encrypted, &header.write(), &[1; 15]);
        assert!(matches!(
            Frame::parse(&bytes),
            Err(FrameError::Short { .. })
        ));
        assert!(matches!(
            Frame::parse(&bytes[..100]),
            Err(FrameError::Short { .. })
        ));
    }

    #[test]
    fn bad_frames_name_what_is_wrong() {
        let check = |bytes: &[u8], want: FrameError| assert_eq!(Frame::parse(bytes), Err(want));
        check(b"", FrameError::Empty);
        check(b"{\"v\":1}", FrameError::Kind(b'{'));
        check(
            b"Sshort",
            FrameError::Short {
                kind: FrameKind::Signed,
                len: 6,
            },
        );
        check(
            &[b'M'; 32],
            FrameError::Short {
                kind: FrameKind::Sealed,
                len: 32,
            },
        );
        check(
            &vec![b'O'; MAX_FRAME_BYTES + 1],
            FrameError::TooLarge(MAX_FRAME_BYTES + 1),
        );
    }
}
