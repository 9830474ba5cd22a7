//! The frame around an encoded envelope: one kind byte, the authentication tag its kind calls
//! for, then the envelope's bytes. The tag covers exactly those bytes, so a receiver verifies
//! what it received and never re-encodes anything.

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
    /// HMAC-SHA-256 under the session key of the (sender, receiver) pair: directed messages.
    Sealed,
}

impl FrameKind {
    const fn byte(self) -> u8 {
        match self {
            FrameKind::Open => b'O',
            FrameKind::Signed => b'S',
            FrameKind::Sealed => b'M',
        }
    }

    const fn tag_len(self) -> usize {
        match self {
            FrameKind::Open => 0,
            FrameKind::Signed => SIGNATURE_LEN,
            FrameKind::Sealed => MAC_LEN,
        }
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
        let kind = [FrameKind::Open, FrameKind::Signed, FrameKind::Sealed]
            .into_iter()
            .find(|k| k.byte() == first)
            .ok_or(FrameError::Kind(first))?;
        if rest.len() < kind.tag_len() {
            return Err(FrameError::Short {
                kind,
                len: bytes.len(),
            });
        }
        let (tag, body) = rest.split_at(kind.tag_len());
        Ok(Frame { kind, tag, body })
    }

    /// Writes a frame; `tag` must have the kind's length.
    pub fn write(kind: FrameKind, tag: &[u8], body: &[u8]) -> Vec<u8> {
        assert_eq!(
            tag.len(),
            kind.tag_len(),
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
