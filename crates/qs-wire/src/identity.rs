//! A node's entry in the fleet's registry of identities (the `nodes` KV bucket): the public
//! half of its Ed25519 key, which receivers check its messages against.

use serde::{Deserialize, Serialize};

/// Largest record the registry may hold for one node.
pub const MAX_RECORD_BYTES: usize = 1024;

/// What the registry holds per node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    /// Ed25519 public key, 64 hex digits.
    pub public_key: String,
    pub level: u8,
    /// When this key was registered, milliseconds since the Unix epoch.
    pub registered_at_ms: u64,
}

/// Why a registry entry cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("public_key: {0}")]
pub struct KeyFormatError(&'static str);

impl NodeRecord {
    pub fn new(public_key: [u8; 32], level: u8, registered_at_ms: u64) -> Self {
        NodeRecord {
            public_key: hex(&public_key),
            level,
            registered_at_ms,
        }
    }

    /// The key's 32 bytes.
    pub fn key(&self) -> Result<[u8; 32], KeyFormatError> {
        unhex(&self.public_key)
    }

    /// Decodes a record read from the `nodes` KV (untrusted: any writer of the bucket), and
    /// checks it: at most [`MAX_RECORD_BYTES`], a level the fleet knows, a key of 64 hex
    /// digits. What is wrong, if not.
    pub fn decode(bytes: &[u8]) -> Result<NodeRecord, String> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(format!(
                "{} bytes; a record has at most {MAX_RECORD_BYTES}",
                bytes.len()
            ));
        }
        let record: NodeRecord = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if record.level > crate::spec::MAX_LEVEL {
            return Err(format!(
                "level {} is more than {}",
                record.level,
                crate::spec::MAX_LEVEL
            ));
        }
        record.key().map_err(|e| e.to_string())?;
        Ok(record)
    }

    /// A short form for people: the first 16 hex digits.
    pub fn fingerprint(&self) -> &str {
        self.public_key.get(..16).unwrap_or(&self.public_key)
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// 32 bytes from 64 hex digits (surrounding whitespace ignored: a key file's newline).
pub fn unhex(text: &str) -> Result<[u8; 32], KeyFormatError> {
    let mut out = [0u8; 32];
    unhex_into(text.trim(), &mut out).map_err(KeyFormatError)?;
    Ok(out)
}

/// Fills `out` from exactly `2 * out.len()` hex digits; what is wrong, if not.
pub fn unhex_into(text: &str, out: &mut [u8]) -> Result<(), &'static str> {
    let text = text.as_bytes();
    if text.len() != 2 * out.len() {
        return Err(if out.len() == 32 {
            "must be 64 hex digits"
        } else {
            "has the wrong number of hex digits"
        });
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err("has a character that is not a hex digit"),
    };
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *o = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_hex() {
        let key: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
        let record = NodeRecord::new(key, 1, 5);
        assert_eq!(record.key(), Ok(key));
        assert_eq!(record.fingerprint().len(), 16);
    }

    #[test]
    fn bad_keys_say_what_is_wrong() {
        assert_eq!(unhex("ab"), Err(KeyFormatError("must be 64 hex digits")));
        let bad = "zz".repeat(32);
        assert!(
            unhex(&bad)
                .unwrap_err()
                .to_string()
                .contains("not a hex digit")
        );
    }
}
