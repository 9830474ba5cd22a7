//! The receiving side of a keyring: a frame parsed, decrypted or its tag checked (Ed25519
//! signatures in batches), its timestamp, replay window, rules and sender's capabilities
//! checked, and every drop counted.

use super::session::{self, OpenError};
use super::{BATCH_MIN, BUS_DOMAIN, Keyring, Reject, Rejected};
use crate::time::Time;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use hmac::Mac;
use qs_wire::frame::{EncryptedHeader, MAC_LEN, SIGNATURE_LEN};
use qs_wire::{Envelope, Frame, FrameKind, Message, NodeId};
use std::collections::BTreeMap;

/// A message that passed every check but its signature.
struct Pending<'a> {
    env: Envelope<Message>,
    frame: Frame<'a>,
    /// The local receiver of a sealed message.
    to: Option<&'a NodeId>,
    /// An encrypted frame that opened (its tag is the cipher's), and what it would change
    /// once accepted.
    opened: Option<session::Opened>,
}

impl Keyring {
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
            opened: None,
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
        let (plain, opened) = match session::decrypt(local, &sender, to, &key, &header, &frame) {
            Ok(opened) => opened,
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
            opened: Some(opened),
        })
    }

    /// Checks a frame that carries no envelope (a message of the task channels, or a record
    /// of a bucket, whose body names its sender): signed by `sender`, a peer in good
    /// standing or a node of this process (a record it wrote, read back). Without required
    /// authentication (one process) any frame passes. Drops are counted as envelopes' are.
    pub fn check_bus(
        &mut self,
        sender: &NodeId,
        frame: &Frame<'_>,
        now: Time,
    ) -> Result<(), Rejected> {
        if !self.config.required {
            return Ok(());
        }
        let key = match self.local.get(sender) {
            Some(own) => own.signing.verifying_key(),
            None => {
                self.check_sender(sender, now)?;
                match self.peers.get(sender) {
                    Some(peer) => peer.key,
                    None => {
                        return Err(self.reject(
                            Reject::UnknownSender,
                            Some(sender.clone()),
                            now,
                            None,
                        ));
                    }
                }
            }
        };
        let verified = frame.kind == FrameKind::Signed
            && <&[u8; SIGNATURE_LEN]>::try_from(frame.tag).is_ok_and(|tag| {
                let signed = [BUS_DOMAIN, frame.body].concat();
                key.verify(&signed, &Signature::from_bytes(tag)).is_ok()
            });
        if !verified {
            let reason = if frame.kind == FrameKind::Open {
                Reject::Unsigned
            } else {
                Reject::BadSignature
            };
            return Err(self.reject(reason, Some(sender.clone()), now, None));
        }
        self.counters.accepted += 1;
        Ok(())
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
        if let Some(reason) = self.standing(sender, peer, now) {
            return Err(self.reject(reason, Some(sender.clone()), now, None));
        }
        Ok(())
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
                FrameKind::Encrypted => p.opened.is_some(),
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
            // Genuine and new: what its encryption opened is kept.
            if let Some(opened) = p.opened
                && let Some(key) = self.peers.get(&opened.sender).map(|peer| peer.key)
                && let Some(local) = self.local.get_mut(&opened.to)
            {
                session::commit(local, &key, opened);
            }
        }
        if let Err(detail) = checked(&p.env) {
            return Err(self.reject(Reject::Invalid, Some(p.env.sender), now, Some(detail)));
        }
        if self.config.required
            && let Some(detail) = self.beyond_certificate(&p.env)
        {
            return Err(self.reject(Reject::Capability, Some(p.env.sender), now, Some(detail)));
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
