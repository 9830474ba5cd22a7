//! A keyring under certificates: learning peers' certificates and the authority's
//! revocations, each peer's standing, and what a message asks of its sender's capabilities.

use super::session::EncapsulationKey;
use super::{Keyring, MAX_REVOCATIONS, Peer, Reject};
use crate::time::Time;
use crate::trust::Refusal;
use ed25519_dalek::VerifyingKey;
use qs_wire::trust::{Capability, MAX_VALIDITY_MS, Signed, revokes};
use qs_wire::{Envelope, Message, NodeId};
use std::collections::BTreeSet;

/// What a peer's certificate says, as the keyring needs it.
pub(super) struct PeerCert {
    pub(super) serial: u64,
    pub(super) not_before_ms: u64,
    pub(super) not_after: Time,
    pub(super) level: u8,
    pub(super) capabilities: BTreeSet<Capability>,
    pub(super) kem: Box<EncapsulationKey>,
    /// The certificate as signed (the authority's own view of who holds a name).
    pub(super) signed: Signed,
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

/// Where the registry keeps a node's revocation: `revoked.NODE`.
pub const REVOKED_PREFIX: &str = "revoked.";

/// What an entry of the registry taught a keyring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Learned {
    Certificate(NodeId),
    Revocation(NodeId),
}

impl Keyring {
    /// Learns an entry of the registry (the `nodes` KV): a revocation under `revoked.NODE`,
    /// a certificate under the node's name. Refusals are counted, an entry that does not
    /// decode with the rest.
    pub fn learn_entry(&mut self, key: &str, value: &[u8], now: Time) -> Result<Learned, Refusal> {
        let Ok(signed) = Signed::decode(value) else {
            self.counters.refused[Refusal::Malformed as usize] += 1;
            return Err(Refusal::Malformed);
        };
        if key.starts_with(REVOKED_PREFIX) {
            self.revoke(&signed, now).map(Learned::Revocation)
        } else {
            self.learn_certificate(&signed, now)
                .map(Learned::Certificate)
        }
    }

    /// Learns a peer's certificate from the registry: kept when the authority signed it for
    /// this fleet, it is valid at `now`, its node's revocation (if any) is older than it,
    /// and it is no older than the one held. Refusals are counted.
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
                level: cert.level,
                capabilities: cert.capabilities,
                kem: Box::new(kem),
                signed: signed.clone(),
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
        if self.is_revoked(&cert.node, cert.not_before_ms) {
            return Err(Refusal::Revoked);
        }
        let kem_bytes = cert.ml_kem_key();
        let kem_key = ml_kem::Key::<EncapsulationKey>::try_from(kem_bytes.as_slice())
            .map_err(|_| Refusal::Malformed)?;
        let kem = EncapsulationKey::new(&kem_key).map_err(|_| Refusal::Malformed)?;
        Ok((cert, kem))
    }

    /// The newest certificate held of `node`, as signed (deletions and older certificates
    /// written over it in the registry change nothing here).
    pub fn held(&self, node: &NodeId) -> Option<&Signed> {
        self.peers.get(node)?.cert.as_ref().map(|c| &c.signed)
    }

    /// When `node` was revoked, if it was.
    pub fn revoked_at(&self, node: &NodeId) -> Option<u64> {
        self.revoked.get(node).copied()
    }

    /// Whether a certificate of `node` issued at `not_before_ms` was revoked.
    fn is_revoked(&self, node: &NodeId, not_before_ms: u64) -> bool {
        self.revoked
            .get(node)
            .is_some_and(|&revoked_at_ms| revokes(revoked_at_ms, not_before_ms))
    }

    /// Applies a revocation from the registry: signed by the authority for this fleet. The
    /// node's messages under any certificate issued up to it are refused from now on, and so
    /// are those certificates. Revocations are forgotten once every certificate they cover
    /// has expired; past [`MAX_REVOCATIONS`], the oldest first.
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
        let now_ms = now.as_millis();
        self.revoked
            .retain(|_, at| at.saturating_add(MAX_VALIDITY_MS) > now_ms);
        if self.revoked.len() >= MAX_REVOCATIONS
            && !self.revoked.contains_key(&r.node)
            && let Some(oldest) = self
                .revoked
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(n, _)| n.clone())
        {
            self.revoked.remove(&oldest);
        }
        let at = self.revoked.entry(r.node.clone()).or_insert(0);
        *at = (*at).max(r.revoked_at_ms);
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
                    revoked: self.is_revoked(n, c.not_before_ms),
                })
            })
            .collect()
    }

    /// Under certificates, why a peer's messages are refused whatever they say: no
    /// certificate, a revoked one, an expired one.
    pub(super) fn standing(&self, node: &NodeId, peer: &Peer, now: Time) -> Option<Reject> {
        self.anchor.as_ref()?;
        match &peer.cert {
            None => Some(Reject::UnknownSender),
            Some(c) if self.is_revoked(node, c.not_before_ms) => Some(Reject::Revoked),
            Some(c) if now >= c.not_after => Some(Reject::Expired),
            Some(_) => None,
        }
    }

    /// What an envelope claims beyond its sender's certificate, if anything: a message its
    /// capabilities do not allow, a heartbeat at another level than the one granted.
    pub(super) fn beyond_certificate(&self, env: &Envelope<Message>) -> Option<String> {
        let peer = self.peers.get(&env.sender)?;
        if let Some(capability) = required_capability(&env.payload)
            && !self.may(peer, capability)
        {
            return Some(format!(
                "a {} needs the {} capability",
                env.payload.kind(),
                capability.as_str()
            ));
        }
        if let (Message::Heartbeat(status), Some(cert)) = (&env.payload, &peer.cert) {
            if status.level != cert.level {
                return Some(format!(
                    "a heartbeat at level {}, where its certificate grants level {}",
                    status.level, cert.level
                ));
            }
            // It may claim less than it was granted, never more (no claim: everything).
            if let Some(more) = Capability::ALL
                .into_iter()
                .find(|c| status.may(*c) && !cert.capabilities.contains(c))
            {
                return Some(format!(
                    "a heartbeat claiming the {} capability, which its certificate does not grant",
                    more.as_str()
                ));
            }
        }
        None
    }

    /// Whether a peer may do what `capability` allows: always under trust on first use.
    pub(super) fn may(&self, peer: &Peer, capability: Capability) -> bool {
        self.anchor.is_none()
            || peer
                .cert
                .as_ref()
                .is_some_and(|c| c.capabilities.contains(&capability))
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
