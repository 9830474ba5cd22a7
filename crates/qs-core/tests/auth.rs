//! Authenticated envelopes: a table of frames a receiver is handed and what it must make of
//! each, then quarantine and batch verification.

use qs_core::auth::{AuthConfig, Keyring, REPLAY_WINDOW, Reject};
use qs_core::{Config, Time};
use qs_wire::{Envelope, Frame, FrameKind, Message, MessageId, NodeId};

const NOW_US: u64 = 1_700_000_000_000_000;

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn config() -> AuthConfig {
    AuthConfig::from_config(&Config::default(), true)
}

/// Secret key bytes for a name (tests only: real keys come from the OS).
fn secret(name: &str, generation: u8) -> [u8; 32] {
    let mut s = [generation; 32];
    s[..name.len()].copy_from_slice(name.as_bytes());
    s
}

/// Sender `a`, receiver `b` and bystander `c`, each in its own process, knowing each other.
struct Fleet {
    a: Keyring,
    b: Keyring,
    c: Keyring,
}

fn fleet() -> Fleet {
    let mut rings: Vec<(Keyring, [u8; 32])> = ["a", "b", "c"]
        .iter()
        .map(|n| {
            let mut k = Keyring::new(config());
            let public = k.add_local(id(n), secret(n, 0));
            (k, public)
        })
        .collect();
    let publics: Vec<(NodeId, [u8; 32])> = ["a", "b", "c"]
        .iter()
        .zip(&rings)
        .map(|(n, (_, p))| (id(n), *p))
        .collect();
    for (ring, _) in &mut rings {
        for (n, p) in &publics {
            ring.learn(n.clone(), *p).unwrap();
        }
    }
    let mut it = rings.into_iter().map(|(k, _)| k);
    Fleet {
        a: it.next().unwrap(),
        b: it.next().unwrap(),
        c: it.next().unwrap(),
    }
}

fn body(sender: &str, seq: u64, sent_at_us: u64) -> Vec<u8> {
    let msg = Message::Stop {
        instance: qs_wire::InstanceId::new("web-1").unwrap(),
        reason: "test".into(),
    };
    Envelope::new(id(sender), seq, sent_at_us, MessageId(seq), msg).encode()
}

/// Changes the stop reason `test` into `tesu`: the envelope still decodes, its tag no longer fits.
fn tamper(frame: &mut [u8]) {
    let at = frame
        .windows(4)
        .position(|w| w == b"test")
        .expect("a reason")
        + 3;
    frame[at] = b'u';
}

/// What a receiver must make of a frame.
#[derive(Debug, PartialEq)]
enum Expect {
    Accept,
    Drop(Reject),
}

/// Hands `frame` to `b` (as a directed message when `directed`) and compares.
fn check(b: &mut Keyring, name: &str, directed: bool, frame: &[u8], now_us: u64, want: Expect) {
    let to = id("b");
    let got = match b.open(directed.then_some(&to), frame, Time::from_micros(now_us)) {
        Ok(_) => Expect::Accept,
        Err(r) => Expect::Drop(r.reason),
    };
    assert_eq!(got, want, "case `{name}`");
}

#[test]
fn each_frame_gets_its_verdict() {
    use Expect::*;
    let Fleet {
        mut a,
        mut b,
        mut c,
    } = fleet();
    let (to_b, to_c) = (id("b"), id("c"));
    let signed = a.seal(&id("a"), None, &body("a", 10, NOW_US));
    let sealed = a.seal(&id("a"), Some(&to_b), &body("a", 11, NOW_US));
    let mut tampered = a.seal(&id("a"), None, &body("a", 12, NOW_US));
    tamper(&mut tampered);
    let mut impostor = Keyring::new(config());
    impostor.add_local(id("a"), secret("x", 9));
    let forged = impostor.seal(&id("a"), None, &body("a", 13, NOW_US));
    let mut no_b = Keyring::new(config());
    no_b.add_local(id("a"), secret("a", 0));
    let signed_direct = no_b.seal(&id("a"), Some(&to_b), &body("a", 14, NOW_US));
    let for_c = a.seal(&id("a"), Some(&to_c), &body("a", 15, NOW_US));
    let open = Frame::write(FrameKind::Open, &[], &body("a", 16, NOW_US));
    let mut z = Keyring::new(config());
    z.add_local(id("z"), secret("z", 0));
    let stranger = z.seal(&id("z"), None, &body("z", 1, NOW_US));
    let skew_us = Config::default().max_clock_skew_ms * 1000;
    let old = a.seal(&id("a"), None, &body("a", 17, NOW_US - skew_us - 1));
    let future = a.seal(&id("a"), None, &body("a", 18, NOW_US + skew_us + 1));
    let edge = a.seal(&id("a"), None, &body("a", 19, NOW_US - skew_us));
    let ahead = a.seal(
        &id("a"),
        Some(&to_b),
        &body("a", 20 + REPLAY_WINDOW, NOW_US),
    );
    let late_in_window = a.seal(&id("a"), Some(&to_b), &body("a", 25, NOW_US));
    let below_window = a.seal(&id("a"), Some(&to_b), &body("a", 20, NOW_US));
    // c's copy of a sealed message for b: only a and b hold that session key.
    let c_to_b_as_a = c.seal(
        &id("c"),
        Some(&to_b),
        &body("a", 21 + REPLAY_WINDOW, NOW_US),
    );

    let cases: Vec<(&str, bool, &[u8], Expect)> = vec![
        ("signed broadcast", false, &signed, Accept),
        ("sealed for b", true, &sealed, Accept),
        (
            "the same sealed frame again",
            true,
            &sealed,
            Drop(Reject::Replay),
        ),
        (
            "the same signed frame again",
            false,
            &signed,
            Drop(Reject::Replay),
        ),
        (
            "a byte flipped after signing",
            false,
            &tampered,
            Drop(Reject::BadSignature),
        ),
        (
            "signed with another key",
            false,
            &forged,
            Drop(Reject::BadSignature),
        ),
        (
            "signed, directed, from a sender without b's key",
            true,
            &signed_direct,
            Accept,
        ),
        (
            "sealed for c, delivered to b",
            true,
            &for_c,
            Drop(Reject::BadSignature),
        ),
        (
            "sealed, received as a broadcast",
            false,
            &sealed,
            Drop(Reject::BadSignature),
        ),
        ("no tag", false, &open, Drop(Reject::Unsigned)),
        (
            "a sender the registry lacks",
            false,
            &stranger,
            Drop(Reject::UnknownSender),
        ),
        ("older than the skew", false, &old, Drop(Reject::Stale)),
        ("newer than the skew", false, &future, Drop(Reject::Stale)),
        ("exactly the skew", false, &edge, Accept),
        ("far ahead", true, &ahead, Accept),
        ("late, inside the window", true, &late_in_window, Accept),
        (
            "late, below the window",
            true,
            &below_window,
            Drop(Reject::Replay),
        ),
        (
            "MAC of another pair",
            true,
            &c_to_b_as_a,
            Drop(Reject::BadSignature),
        ),
        ("not a frame", false, b"{\"v\":1}", Drop(Reject::Malformed)),
        (
            "a frame of garbage",
            false,
            b"Mxyz",
            Drop(Reject::Malformed),
        ),
        ("empty", false, b"", Drop(Reject::Malformed)),
    ];
    for (name, directed, frame, want) in cases {
        check(&mut b, name, directed, frame, NOW_US, want);
    }
    let counters = b.counters();
    assert_eq!(counters.accepted, 6);
    assert_eq!(counters.rejected(Reject::BadSignature), 5);
    assert_eq!(counters.rejected(Reject::Replay), 3);
    assert_eq!(counters.rejected(Reject::Malformed), 3);
    assert_eq!(counters.quarantines, 0);
}

#[test]
fn a_restarted_sender_numbers_its_messages_after_its_last_life() {
    let Fleet { mut a, mut b, .. } = fleet();
    // A sender numbers from its wall clock at start: a second life starts above the first.
    let first = a.seal(&id("a"), None, &body("a", NOW_US, NOW_US));
    check(&mut b, "first life", false, &first, NOW_US, Expect::Accept);
    let later = NOW_US + 5_000_000;
    let second = a.seal(&id("a"), None, &body("a", later, later));
    check(&mut b, "second life", false, &second, later, Expect::Accept);
}

/// A stop whose reason is longer than any message may carry: authenticated, and invalid.
fn invalid_body(sender: &str, seq: u64, sent_at_us: u64) -> Vec<u8> {
    let msg = Message::Stop {
        instance: qs_wire::InstanceId::new("web-1").unwrap(),
        reason: "x".repeat(qs_wire::bounds::MAX_REASON_BYTES + 1),
    };
    Envelope::new(id(sender), seq, sent_at_us, MessageId(seq), msg).encode()
}

#[test]
fn a_node_that_keeps_sending_invalid_messages_is_quarantined_then_forgiven() {
    let Fleet { mut a, mut b, .. } = fleet();
    let cfg = Config::default();
    let to_b = id("b");
    let t0 = NOW_US;
    let mut began = None;
    for i in 0..cfg.quarantine_after {
        let seq = u64::from(i) + 1;
        let bad = a.seal(&id("a"), Some(&to_b), &invalid_body("a", seq, t0));
        let r = b
            .open(Some(&to_b), &bad, Time::from_micros(t0 + u64::from(i)))
            .unwrap_err();
        assert_eq!(r.reason, Reject::Invalid);
        if r.quarantined_until.is_some() {
            assert_eq!(i + 1, cfg.quarantine_after, "quarantined at the threshold");
            began = r.quarantined_until;
        }
    }
    let until = began.expect("the sender was quarantined");
    assert_eq!(
        b.quarantined(Time::from_micros(t0)).collect::<Vec<_>>(),
        [&id("a")]
    );
    // Even a genuine message is dropped now, unread.
    let genuine = a.seal(&id("a"), Some(&to_b), &body("a", 100, t0 + 1000));
    check(
        &mut b,
        "quarantined",
        true,
        &genuine,
        t0 + 1000,
        Expect::Drop(Reject::Quarantined),
    );
    assert_eq!(b.counters().quarantines, 1);
    // After the quarantine it is heard again.
    let after = until.as_micros() + 1;
    let again = a.seal(&id("a"), Some(&to_b), &body("a", 101, after));
    check(&mut b, "forgiven", true, &again, after, Expect::Accept);
    assert_eq!(b.quarantined(Time::from_micros(after)).count(), 0);
}

/// Whoever can publish can name a node in what they send, but cannot sign for it: replays,
/// unsigned frames, forged tags and stale copies naming `a`, many times the threshold, are
/// dropped and counted, and `a` is still heard.
#[test]
fn frames_a_node_did_not_sign_never_quarantine_it() {
    let Fleet {
        mut a,
        mut b,
        mut c,
    } = fleet();
    let cfg = Config::default();
    let to_b = id("b");
    let genuine = a.seal(&id("a"), Some(&to_b), &body("a", 1, NOW_US));
    check(&mut b, "genuine", true, &genuine, NOW_US, Expect::Accept);
    let flood = u64::from(cfg.quarantine_after) * 4;
    for i in 0..flood {
        let now = Time::from_micros(NOW_US + i);
        let seq = 1000 + i;
        let unsigned = Frame::write(FrameKind::Open, &[], &body("a", seq, NOW_US));
        let forged = c.seal(&id("c"), Some(&to_b), &body("a", seq, NOW_US));
        let mut tampered = a.seal(&id("a"), Some(&to_b), &body("a", seq, NOW_US));
        tamper(&mut tampered);
        let stale = a.seal(&id("a"), Some(&to_b), &body("a", seq, 1));
        for frame in [&unsigned, &forged, &tampered, &stale, &genuine] {
            let r = b.open(Some(&to_b), frame, now).unwrap_err();
            assert!(r.quarantined_until.is_none(), "{r}");
        }
    }
    assert_eq!(b.counters().quarantines, 0);
    assert_eq!(b.quarantined(Time::from_micros(NOW_US)).count(), 0);
    let later = a.seal(&id("a"), Some(&to_b), &body("a", 99_999, NOW_US));
    check(
        &mut b,
        "still heard",
        true,
        &later,
        NOW_US + flood,
        Expect::Accept,
    );
}

/// A heartbeat speaks for its sender only: `a` signing one about `c` is invalid.
#[test]
fn a_heartbeat_about_another_node_is_refused() {
    let Fleet { mut a, mut b, .. } = fleet();
    let status = |node: &str| qs_wire::NodeStatus::idle(id(node), 1);
    let mut about = |node: &str, seq: u64| {
        let env = Envelope::new(
            id("a"),
            seq,
            NOW_US,
            MessageId(seq),
            Message::Heartbeat(status(node)),
        );
        a.seal(&id("a"), None, &env.encode())
    };
    let own = about("a", 1);
    check(&mut b, "own", false, &own, NOW_US, Expect::Accept);
    let other = about("c", 2);
    check(
        &mut b,
        "about c",
        false,
        &other,
        NOW_US,
        Expect::Drop(Reject::Invalid),
    );
}

#[test]
fn strikes_spread_wider_than_the_window_never_quarantine() {
    let Fleet { mut a, mut b, .. } = fleet();
    let cfg = Config::default();
    let signed = a.seal(&id("a"), None, &body("a", 1, NOW_US));
    check(&mut b, "first", false, &signed, NOW_US, Expect::Accept);
    let spacing_us = cfg.quarantine_window_ms * 1000 / u64::from(cfg.quarantine_after - 1) + 1;
    for i in 0..u64::from(cfg.quarantine_after) * 2 {
        let now = NOW_US + i * spacing_us;
        let stale_copy = b.open(None, &signed, Time::from_micros(now)).unwrap_err();
        assert!(stale_copy.quarantined_until.is_none(), "strike {i}");
    }
    assert_eq!(b.counters().quarantines, 0);
}

#[test]
fn a_batch_finds_the_one_bad_signature_among_good_ones() {
    let Fleet { mut a, mut b, .. } = fleet();
    let mut frames: Vec<Vec<u8>> = (0..12)
        .map(|seq| a.seal(&id("a"), None, &body("a", seq, NOW_US)))
        .collect();
    tamper(&mut frames[5]);
    frames.push(frames[0].clone()); // and a replay within the batch
    let verdicts: Vec<Option<Reject>> = b
        .open_many(
            None,
            frames.iter().map(Vec::as_slice),
            Time::from_micros(NOW_US),
        )
        .into_iter()
        .map(|r| r.err().map(|r| r.reason))
        .collect();
    let mut want = vec![None; 12];
    want[5] = Some(Reject::BadSignature);
    want.push(Some(Reject::Replay));
    assert_eq!(verdicts, want);
}

#[test]
fn without_authentication_open_frames_pass_and_nothing_is_signed() {
    let mut k = Keyring::new(AuthConfig::from_config(&Config::default(), false));
    k.add_local(id("a"), secret("a", 0));
    let frame = k.seal(&id("a"), None, &body("a", 1, NOW_US));
    assert_eq!(Frame::parse(&frame).unwrap().kind, FrameKind::Open);
    assert!(k.open(None, &frame, Time::from_micros(NOW_US)).is_ok());
}

/// A node's tag on what it sends a peer outside the bus (a routed model request) checks only
/// for that pair, those bytes and that sender, and is never a sealed frame's MAC.
#[test]
fn a_tag_vouches_for_one_sender_to_one_receiver_over_its_bytes() {
    let mut f = fleet();
    let now = Time::from_millis(1);
    let bytes = b"POST /v1/chat/completions\nbody";
    let tag = f.a.tag(&id("a"), &id("b"), bytes).expect("a knows b");
    assert!(f.b.check_tag(&id("a"), &id("b"), bytes, &tag, now));
    assert!(!f.b.check_tag(
        &id("a"),
        &id("b"),
        b"POST /v1/chat/completions\nbodx",
        &tag,
        now
    ));
    assert!(
        !f.b.check_tag(&id("c"), &id("b"), bytes, &tag, now),
        "not c's"
    );
    assert!(
        !f.c.check_tag(&id("a"), &id("c"), bytes, &tag, now),
        "not for c"
    );
    assert!(!f.b.check_tag(&id("a"), &id("b"), bytes, &tag[..31], now));
    assert!(
        !f.b.check_tag(&id("x"), &id("b"), bytes, &tag, now),
        "an unknown sender"
    );
    // The same bytes sealed as a frame carry another MAC.
    let sealed = f.a.seal(&id("a"), Some(&id("b")), bytes);
    assert!(!sealed.windows(tag.len()).any(|w| w == tag));
    // Without authentication, nobody vouches.
    let mut open = Keyring::new(AuthConfig::from_config(&Config::default(), false));
    open.add_local(id("a"), secret("a", 0));
    assert_eq!(open.tag(&id("a"), &id("a"), bytes), None);
}
