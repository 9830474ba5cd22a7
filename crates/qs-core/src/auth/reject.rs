//! Why a keyring dropped a message or refused a document, and what it counts.

use crate::time::Time;
use crate::trust::Refusal;
use qs_wire::NodeId;
use std::fmt;

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
    pub(super) const fn strikes(self) -> bool {
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
