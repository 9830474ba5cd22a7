//! Keyrings under certificates: a peer is heard only under a certificate of this fleet's
//! authority, unexpired and unrevoked, and only within its capabilities; directed messages
//! are encrypted under sessions that open, re-key and recover from a receiver's restart.

use qs_core::auth::{AuthConfig, Keyring, Reject};
use qs_core::trust::{Authority, Granted, Refusal};
use qs_core::{Config, Time};
use qs_wire::identity::hex;
use qs_wire::trust::{Capability, Signed};
use qs_wire::{Envelope, FrameKind, Message, MessageId, NodeId};
use std::collections::BTreeSet;

const NOW_MS: u64 = 1_700_000_000_000;
const HOUR_MS: u64 = 3_600_000;

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn now() -> Time {
    Time::from_millis(NOW_MS)
}

fn config() -> AuthConfig {
    AuthConfig::from_config(&Config::default(), true)
}

fn secret(name: &str) -> [u8; 32] {
    let mut s = [7; 32];
    s[..name.len()].copy_from_slice(name.as_bytes());
    s
}

/// A keyring for `name` under `authority`, and the certificate the authority gives it.
fn member(
    authority: &Authority,
    name: &str,
    capabilities: &str,
    serial: u64,
    issued_ms: u64,
) -> (Keyring, Signed) {
    let mut k = Keyring::with_anchor(config(), authority.anchor().clone());
    k.reseed(name.as_bytes());
    let public = k.add_local(id(name), secret(name));
    let granted = Granted {
        node: id(name),
        ed25519: hex(&public),
        ml_kem: hex(&k.kem_public(&id(name)).unwrap()),
        level: 0,
        capabilities: Capability::parse_list(capabilities).unwrap(),
        token_id: None,
    };
    let cert = authority.certify(&granted, serial, issued_ms, HOUR_MS);
    (k, cert)
}

fn stop(sender: &str, seq: u64) -> Vec<u8> {
    let msg = Message::Stop {
        instance: qs_wire::InstanceId::new("web-1").unwrap(),
        reason: "test".into(),
    };
    Envelope::new(id(sender), seq, NOW_MS * 1000, MessageId(seq), msg).encode()
}

fn offer_decline(sender: &str, seq: u64) -> Vec<u8> {
    let msg = Message::Decline {
        placement: qs_wire::PlacementId {
            steward: id("b"),
            seq: 1,
        },
        reason: qs_wire::DeclineReason::Draining,
    };
    Envelope::new(id(sender), seq, NOW_MS * 1000, MessageId(seq), msg).encode()
}

fn verdict(k: &mut Keyring, to: Option<&str>, frame: &[u8], at: Time) -> Result<(), Reject> {
    let to = to.map(id);
    k.open(to.as_ref(), frame, at)
        .map(|_| ())
        .map_err(|r| r.reason)
}

/// `b` sends `a` a directed message over its own session, naming (acknowledging) the session
/// of `a`'s it holds; `a` opens it.
fn b_answers_a(a: &mut Keyring, b: &mut Keyring) {
    let answer = b.seal_at(
        &id("b"),
        Some(&id("a")),
        &offer_decline("b", 1),
        Some(now()),
    );
    verdict(a, Some("a"), &answer, now()).unwrap();
}

/// `a` (steward only) and `b` (all but authority), each knowing both certificates.
fn pair() -> (Authority, Keyring, Keyring, Signed, Signed) {
    let authority = Authority::new("lab", [42; 32]).unwrap();
    let (mut a, ca) = member(&authority, "a", "steward", 1, NOW_MS);
    let (mut b, cb) = member(&authority, "b", "all", 2, NOW_MS);
    for k in [&mut a, &mut b] {
        k.learn_certificate(&ca, now()).unwrap();
        k.learn_certificate(&cb, now()).unwrap();
    }
    (authority, a, b, ca, cb)
}

#[test]
fn directed_messages_are_encrypted_and_the_handshake_stops_once_acknowledged() {
    let (_, mut a, mut b, ..) = pair();
    let first = a.seal_at(&id("a"), Some(&id("b")), &stop("a", 1), Some(now()));
    assert_eq!(first[0], b'E', "an encrypted frame");
    assert!(
        !first.windows(4).any(|w| w == b"test"),
        "the payload does not travel in clear"
    );
    assert!(first.len() > 1100, "the first frame carries the handshake");
    verdict(&mut b, Some("b"), &first, now()).unwrap();
    // b answers a over its own session, naming a's, which it now holds.
    b_answers_a(&mut a, &mut b);
    let second = a.seal_at(&id("a"), Some(&id("b")), &stop("a", 2), Some(now()));
    assert!(
        second.len() < 400,
        "acknowledged: no handshake ({} bytes)",
        second.len()
    );
    verdict(&mut b, Some("b"), &second, now()).unwrap();
    // A replay of it is still a replay; an altered copy does not open.
    assert_eq!(
        verdict(&mut b, Some("b"), &second, now()),
        Err(Reject::Replay)
    );
    let mut altered = a.seal_at(&id("a"), Some(&id("b")), &stop("a", 3), Some(now()));
    let last = altered.len() - 1;
    altered[last] ^= 1;
    assert_eq!(
        verdict(&mut b, Some("b"), &altered, now()),
        Err(Reject::BadSignature)
    );
    // Heartbeats stay signed and readable.
    let broadcast = a.seal_at(&id("a"), None, &stop("a", 4), Some(now()));
    assert_eq!(broadcast[0], b'S');
}

#[test]
fn sessions_rekey_and_a_restarted_receiver_hears_again_within_a_second() {
    let authority = Authority::new("lab", [42; 32]).unwrap();
    let mut cfg = config();
    cfg.rekey_after_messages = 3;
    let (a0, ca) = member(&authority, "a", "all", 1, NOW_MS);
    let (_, cb) = member(&authority, "b", "all", 2, NOW_MS);
    drop(a0);
    let ring = |name: &str| {
        let mut k = Keyring::with_anchor(cfg, authority.anchor().clone());
        k.reseed(name.as_bytes());
        k.add_local(id(name), secret(name));
        k.learn_certificate(&ca, now()).unwrap();
        k.learn_certificate(&cb, now()).unwrap();
        k
    };
    let (mut a, mut b) = (ring("a"), ring("b"));
    let session_of = |f: &[u8]| {
        let frame = qs_wire::Frame::parse(f).unwrap();
        qs_wire::frame::EncryptedHeader::parse(frame.tag)
            .unwrap()
            .session
    };
    let frames: Vec<Vec<u8>> = (1..=4)
        .map(|seq| a.seal_at(&id("a"), Some(&id("b")), &stop("a", seq), Some(now())))
        .collect();
    assert_eq!(session_of(&frames[0]), session_of(&frames[2]));
    assert_ne!(session_of(&frames[2]), session_of(&frames[3]), "re-keyed");
    // The old session's last frame arrives after the new session's first, and still opens.
    for i in [0, 1, 3, 2] {
        verdict(&mut b, Some("b"), &frames[i], now()).unwrap();
    }
    // b restarts and forgets every session: a's next frame (acknowledged, inside the
    // second) cannot open; one a second later carries the handshake again.
    b_answers_a(&mut a, &mut b);
    let mut b = ring("b");
    let quiet = a.seal_at(&id("a"), Some(&id("b")), &stop("a", 5), Some(now()));
    assert_eq!(
        verdict(&mut b, Some("b"), &quiet, now()),
        Err(Reject::NoSession)
    );
    let later = Time::from_millis(NOW_MS + 1000);
    let refreshed = a.seal_at(&id("a"), Some(&id("b")), &stop("a", 6), Some(later));
    verdict(&mut b, Some("b"), &refreshed, later).unwrap();
}

#[test]
fn each_bad_certificate_and_sender_is_refused_with_its_reason() {
    let (authority, mut a, mut b, ca, _) = pair();
    let stranger = Authority::new("lab", [43; 32]).unwrap();
    let foreign_fleet = Authority::new("other", [42; 32]).unwrap();
    let (_, forged) = member(&stranger, "z", "all", 9, NOW_MS);
    let (_, elsewhere) = member(&foreign_fleet, "y", "all", 10, NOW_MS);
    let (_, expired) = member(&authority, "x", "all", 11, NOW_MS - 2 * HOUR_MS);
    let cases: Vec<(&Signed, Refusal)> = vec![
        (&forged, Refusal::Forged),
        (&elsewhere, Refusal::OtherFleet),
        (&expired, Refusal::Expired),
    ];
    for (cert, want) in cases {
        assert_eq!(b.learn_certificate(cert, now()), Err(want));
        assert_eq!(b.counters().refused(want), 1);
    }
    // A bare key, as trust on first use would take it, teaches nothing here.
    assert!(b.learn(id("z"), [1; 32]).is_err());

    // Outside its capabilities: a steward-only node may not answer as a host.
    let decline = a.seal_at(
        &id("a"),
        Some(&id("b")),
        &offer_decline("a", 1),
        Some(now()),
    );
    assert_eq!(
        verdict(&mut b, Some("b"), &decline, now()),
        Err(Reject::Capability)
    );
    let order = a.seal_at(&id("a"), Some(&id("b")), &stop("a", 2), Some(now()));
    verdict(&mut b, Some("b"), &order, now()).unwrap();

    // Its certificate expires: nothing it sends is heard.
    let after = Time::from_millis(NOW_MS + 2 * HOUR_MS);
    let late = a.seal_at(&id("a"), None, &stop("a", 3), Some(after));
    assert_eq!(verdict(&mut b, None, &late, after), Err(Reject::Expired));

    // Revoked: refused from then on, and its certificate with it.
    // Dated a minute ahead of the operator's clock (see Authority::revoke): made a minute
    // before now, it covers a's certificate, issued now.
    let revocation = authority.revoke(&id("a"), NOW_MS - 60_000, "test");
    let forged_revocation = stranger.revoke(&id("b"), NOW_MS, "test");
    assert_eq!(b.revoke(&forged_revocation, now()), Err(Refusal::Forged));
    assert_eq!(b.revoke(&revocation, now()), Ok(id("a")));
    let after_revoke = a.seal_at(&id("a"), None, &stop("a", 4), Some(now()));
    assert_eq!(
        verdict(&mut b, None, &after_revoke, now()),
        Err(Reject::Revoked)
    );
    // Its certificate, or an older one, put back: still revoked.
    assert_eq!(b.learn_certificate(&ca, now()), Err(Refusal::Revoked));
    let (_, older) = member(&authority, "a", "steward", 2, NOW_MS - 30_000);
    assert_eq!(b.learn_certificate(&older, now()), Err(Refusal::Revoked));
    let views = b.certificates();
    let view = views.iter().find(|v| v.node == id("a")).unwrap();
    assert!(view.revoked);
    assert_eq!(
        views
            .iter()
            .find(|v| v.node == id("b"))
            .unwrap()
            .capabilities,
        Capability::member()
    );
    // Let in again: a certificate issued after the revocation (a new token) is heard.
    let (_, again) = member(&authority, "a", "steward", 3, NOW_MS + 1000);
    assert_eq!(b.learn_certificate(&again, now()), Ok(id("a")));
    let back = a.seal_at(&id("a"), None, &stop("a", 5), Some(now()));
    verdict(&mut b, None, &back, now()).unwrap();
}

#[test]
fn a_renewed_certificate_keeps_the_sessions_and_an_older_one_changes_nothing() {
    let (authority, mut a, mut b, ..) = pair();
    let first = a.seal_at(&id("a"), Some(&id("b")), &stop("a", 1), Some(now()));
    verdict(&mut b, Some("b"), &first, now()).unwrap();
    b_answers_a(&mut a, &mut b);
    let g = Granted {
        node: id("a"),
        ed25519: hex(&ed25519_dalek::SigningKey::from_bytes(&secret("a"))
            .verifying_key()
            .to_bytes()),
        ml_kem: hex(&a.kem_public(&id("a")).unwrap()),
        level: 0,
        capabilities: BTreeSet::from([Capability::Steward]),
        token_id: None,
    };
    let renewed = authority.certify(&g, 5, NOW_MS + 1000, HOUR_MS);
    b.learn_certificate(&renewed, now()).unwrap();
    let older = authority.certify(&g, 4, NOW_MS - 1000, HOUR_MS);
    b.learn_certificate(&older, now()).unwrap();
    let serial = |k: &Keyring| {
        k.certificates()
            .into_iter()
            .find(|v| v.node == id("a"))
            .unwrap()
            .serial
    };
    assert_eq!(serial(&b), 5);
    // Acknowledged: the next frame carries no handshake, so it opens only if b kept the
    // session across the renewal.
    let second = a.seal_at(&id("a"), Some(&id("b")), &stop("a", 2), Some(now()));
    assert!(second.len() < 400, "no handshake ({} bytes)", second.len());
    verdict(&mut b, Some("b"), &second, now()).unwrap();
    assert_eq!(
        qs_wire::Frame::parse(&second).unwrap().kind,
        FrameKind::Encrypted
    );
}

#[test]
fn a_replayed_frame_changes_no_session_state() {
    let (_, mut a, mut b, ..) = pair();
    // b's first answer, sent before it holds any session of a's: it acknowledges none.
    let stale_ack = b.seal_at(
        &id("b"),
        Some(&id("a")),
        &offer_decline("b", 1),
        Some(now()),
    );
    verdict(&mut a, Some("a"), &stale_ack, now()).unwrap();
    let first = a.seal_at(&id("a"), Some(&id("b")), &stop("a", 1), Some(now()));
    verdict(&mut b, Some("b"), &first, now()).unwrap();
    let answer = b.seal_at(
        &id("b"),
        Some(&id("a")),
        &offer_decline("b", 2),
        Some(now()),
    );
    verdict(&mut a, Some("a"), &answer, now()).unwrap();
    // The old answer again: a replay, and its stale acknowledgement is not taken, so a's next
    // frame (inside the session's first second, before any refresh) needs no handshake.
    assert_eq!(
        verdict(&mut a, Some("a"), &stale_ack, now()),
        Err(Reject::Replay)
    );
    let soon = Time::from_millis(NOW_MS + 500);
    let next = a.seal_at(&id("a"), Some(&id("b")), &stop("a", 2), Some(soon));
    assert!(next.len() < 400, "no handshake ({} bytes)", next.len());
    verdict(&mut b, Some("b"), &next, soon).unwrap();
}

#[test]
fn a_heartbeat_beyond_its_certificate_is_refused() {
    let (_, mut a, mut b, ..) = pair();
    // `capabilities`: what the heartbeat claims (`None`: everything).
    let mut heartbeat = |level: u8, capabilities: Option<&str>, seq: u64| {
        let status = qs_wire::NodeStatus {
            capabilities: capabilities.map(|c| Capability::parse_list(c).unwrap().into()),
            ..qs_wire::NodeStatus::idle(id("a"), level)
        };
        let env = Envelope::new(
            id("a"),
            seq,
            NOW_MS * 1000,
            MessageId(seq),
            Message::Heartbeat(status),
        );
        a.seal_at(&id("a"), None, &env.encode(), Some(now()))
    };
    // a's certificate grants level 0 and stewarding only.
    let granted = heartbeat(0, Some("steward"), 1);
    verdict(&mut b, None, &granted, now()).unwrap();
    let other_level = heartbeat(1, Some("steward"), 2);
    assert_eq!(
        verdict(&mut b, None, &other_level, now()),
        Err(Reject::Capability)
    );
    let more = heartbeat(0, Some("steward,host"), 3);
    assert_eq!(verdict(&mut b, None, &more, now()), Err(Reject::Capability));
    let everything = heartbeat(0, None, 4);
    assert_eq!(
        verdict(&mut b, None, &everything, now()),
        Err(Reject::Capability)
    );
}
