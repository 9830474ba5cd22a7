//! The versioned envelope every fleet message travels in, and its encoding. Its signature or
//! session tag travels beside it, in the [`Frame`](crate::frame::Frame).
//!
//! The encoding is postcard: compact and binary, decoded in one pass without field names,
//! which every node pays for on every heartbeat and query. The version comes first, as a
//! varint: bytes that do not decode are reported by the version they begin with when that is
//! not this one (garbage too reads as some version). Version 1 was JSON, told by its `{`.

use crate::ids::NodeId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Version of the envelope and everything inside it. A receiver refuses other versions.
pub const WIRE_VERSION: u16 = 3;

/// Unique per sender; receivers use (sender, id) to drop replays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MessageId(pub u64);

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A message with its provenance (DESIGN.md, "Identity").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope<P> {
    /// Wire version; always [`WIRE_VERSION`] when sent.
    pub v: u16,
    pub sender: NodeId,
    /// Monotonic per sender.
    pub seq: u64,
    /// Sender's clock, microseconds since the Unix epoch.
    pub sent_at_us: u64,
    pub id: MessageId,
    /// The message this one answers or was caused by.
    pub causation: Option<MessageId>,
    pub payload: P,
}

/// Why bytes could not be decoded into an envelope.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("wire version {got} is not supported (this build speaks {want})")]
    Version { got: u16, want: u16 },
    #[error("malformed envelope: {0}")]
    Malformed(#[from] postcard::Error),
    #[error("malformed envelope: {bytes} bytes after its end")]
    Trailing { bytes: usize },
    /// A record of the fleet's KV (JSON, read by operators too) that does not decode.
    #[error("malformed record: {0}")]
    Record(#[from] serde_json::Error),
}

impl<P: Serialize + DeserializeOwned> Envelope<P> {
    pub fn new(sender: NodeId, seq: u64, sent_at_us: u64, id: MessageId, payload: P) -> Self {
        Envelope {
            v: WIRE_VERSION,
            sender,
            seq,
            sent_at_us,
            id,
            causation: None,
            payload,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("envelopes of wire types always serialize")
    }

    /// Decodes in one pass, the whole of `bytes`; bytes that fail to decode are probed for
    /// their version, so a message from another version is reported as such rather than as
    /// malformed.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let version = |v: u16| match v {
            WIRE_VERSION => Ok(()),
            got => Err(WireError::Version {
                got,
                want: WIRE_VERSION,
            }),
        };
        match postcard::take_from_bytes::<Self>(bytes) {
            Ok((env, [])) => version(env.v).map(|()| env),
            Ok((env, rest)) => {
                version(env.v)?;
                Err(WireError::Trailing { bytes: rest.len() })
            }
            Err(e) => {
                // Version 1 was a JSON object.
                if bytes.first() == Some(&b'{') {
                    version(1)?;
                }
                if let Ok((v, _)) = postcard::take_from_bytes::<u16>(bytes) {
                    version(v)?;
                }
                Err(e.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{DeclineReason, Message};
    use crate::{PlacementId, Resource};

    fn sample() -> Envelope<Message> {
        let node = NodeId::new("forge").unwrap();
        let payload = Message::Decline {
            placement: PlacementId {
                steward: node.clone(),
                seq: 7,
            },
            reason: DeclineReason::NoFit {
                resource: Resource::Vram,
            },
        };
        Envelope::new(node, 1, 1_700_000_000_000_000, MessageId(42), payload)
    }

    #[test]
    fn envelopes_round_trip() {
        let e = sample();
        assert_eq!(Envelope::<Message>::decode(&e.encode()).unwrap(), e);
    }

    #[test]
    fn the_encoding_is_stable() {
        let hex: String = sample()
            .encode()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        insta::assert_snapshot!(hex);
    }

    #[test]
    fn other_versions_and_garbage_are_refused() {
        let mut e = sample();
        e.v = 99;
        let err = Envelope::<Message>::decode(&e.encode()).unwrap_err();
        assert!(matches!(err, WireError::Version { got: 99, .. }), "{err}");
        // A version-1 node speaks JSON.
        let err = Envelope::<Message>::decode(b"{\"v\":1,\"sender\":\"x\"}").unwrap_err();
        assert!(matches!(err, WireError::Version { got: 1, .. }), "{err}");
        let cut = &sample().encode()[..10];
        let err = Envelope::<Message>::decode(cut).unwrap_err();
        assert!(matches!(err, WireError::Malformed(_)), "{err}");
        let mut longer = sample().encode();
        longer.push(0);
        let err = Envelope::<Message>::decode(&longer).unwrap_err();
        assert!(matches!(err, WireError::Trailing { bytes: 1 }), "{err}");
        assert!(Envelope::<Message>::decode(b"\xff\x00").is_err());
    }
}
