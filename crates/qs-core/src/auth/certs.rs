//! A keyring under certificates: learning peers' certificates and the authority's
//! revocations, each peer's standing, and what a message asks of its sender's capabilities.

use super::session::EncapsulationKey;
use super::{Keyring, MAX_REVOCATIONS, Peer, Reject};
use crate::time::Time;
use crate::trust::Refusal;
use ed25519_dalek::VerifyingKey;
use qs_wire::trust::{Capability, Signed};
use qs_wire::{Message, NodeId};
use std::collections::BTreeSet;

/// What a peer's certificate says, as the keyring needs it.
pub(super) struct PeerCert {
    pub(super) serial: u64,
    pub(super) not_before_ms: u64,
    pub(super) not_after: Time,
    pub(super) capabilities: BTreeSet<Capability>,
    pub(super) kem: Box<EncapsulationKey>,
    pub(super) revoked: bool,
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

impl Keyring {
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

    /// Under certificates, why a peer's messages are refused whatever they say: no
    /// certificate, a revoked one, an expired one.
    pub(super) fn standing(&self, peer: &Peer, now: Time) -> Option<Reject> {
        self.anchor.as_ref()?;
        match &peer.cert {
            None => Some(Reject::UnknownSender),
            Some(c) if c.revoked => Some(Reject::Revoked),
            Some(c) if now >= c.not_after => Some(Reject::Expired),
            Some(_) => None,
        }
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
