//! The authority's decisions: joins, renewals, certificates, hybrid signatures.

use super::*;
use qs_wire::trust::ML_KEM_KEY_LEN;

const HOUR_MS: u64 = 3_600_000;
const T0: u64 = 10 * HOUR_MS;

fn node_key(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i; 32])
}

/// `key`'s request for node `forge` of `fleet`, made at `at_ms`.
fn request(
    key: &SigningKey,
    fleet: &str,
    token: Option<Signed>,
    renews: Option<u64>,
    at_ms: u64,
) -> Signed {
    sign(
        key,
        &JoinRequest {
            fleet: fleet.into(),
            node: NodeId::new("forge").unwrap(),
            ed25519: hex(&key.verifying_key().to_bytes()),
            ml_kem: hex(&[5; ML_KEM_KEY_LEN]),
            token,
            renews,
            requested_at_ms: at_ms,
        },
    )
}

fn token(a: &Authority, node: Option<&str>, not_after_ms: u64) -> Signed {
    let grant = TokenGrant {
        level: 2,
        capabilities: Capability::member(),
        node: node.map(|n| NodeId::new(n).unwrap()),
    };
    a.token([1; 16], grant, not_after_ms)
}

fn joined(a: &Authority, key: &SigningKey, serial: u64) -> Certificate {
    let req = request(key, "lab", Some(token(a, None, T0 + HOUR_MS)), None, T0);
    let g = a.judge(&req, None, None, T0).unwrap();
    a.anchor()
        .certificate(&a.certify(&g, serial, T0, HOUR_MS), T0)
        .unwrap()
}

#[test]
fn a_token_brings_a_node_in_and_its_certificate_renews() {
    let a = Authority::new("lab", [9; 32]).unwrap();
    let k = node_key(1);
    let req = request(
        &k,
        "lab",
        Some(token(&a, Some("forge"), T0 + HOUR_MS)),
        None,
        T0,
    );
    let g = a.judge(&req, None, None, T0).unwrap();
    assert_eq!((g.level, g.token_id.as_deref()), (2, Some(&*hex(&[1; 16]))));
    let c = joined(&a, &k, 7);
    assert_eq!((c.serial, c.level), (7, 2));
    let renew = request(&k, "lab", None, Some(7), T0 + 1000);
    assert!(a.judge(&renew, Some(&c), None, T0 + 1000).is_ok());
    // The same node joining again with the same keys (a token, its state kept) is fine.
    assert!(a.judge(&req, Some(&c), None, T0).is_ok());
}

#[test]
fn each_bad_request_is_refused_with_its_reason() {
    let a = Authority::new("lab", [9; 32]).unwrap();
    let other = Authority::new("lab", [8; 32]).unwrap();
    let (k, thief) = (node_key(1), node_key(2));
    let held = joined(&a, &k, 7);
    let tok = || Some(token(&a, None, T0 + HOUR_MS));
    let mut stolen = request(&k, "lab", tok(), None, T0);
    stolen.signature = hex(&thief.sign(stolen.body.as_bytes()).to_bytes());
    /// A request, what the bucket holds of its node (certificate, revocation), the verdict.
    type Case<'a> = (
        &'a str,
        Signed,
        Option<&'a Certificate>,
        Option<u64>,
        Refusal,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "expired token",
            request(&k, "lab", Some(token(&a, None, T0)), None, T0),
            None,
            None,
            Refusal::TokenExpired,
        ),
        (
            "another authority's token",
            request(&k, "lab", Some(token(&other, None, T0 + HOUR_MS)), None, T0),
            None,
            None,
            Refusal::Forged,
        ),
        // A request signed by another key than the one it names proves nothing.
        ("signed by another key", stolen, None, None, Refusal::Forged),
        (
            "another fleet",
            request(&k, "lab2", tok(), None, T0),
            None,
            None,
            Refusal::OtherFleet,
        ),
        (
            "a token for another node",
            request(
                &k,
                "lab",
                Some(token(&a, Some("other"), T0 + HOUR_MS)),
                None,
                T0,
            ),
            None,
            None,
            Refusal::OtherNode,
        ),
        (
            "a name held under other keys",
            request(&thief, "lab", tok(), None, T0),
            Some(&held),
            None,
            Refusal::NameTaken,
        ),
        (
            "an old request",
            request(&k, "lab", tok(), None, T0 - MAX_REQUEST_AGE_MS - 1),
            None,
            None,
            Refusal::Stale,
        ),
        (
            "a renewal of nothing",
            request(&k, "lab", None, Some(7), T0),
            None,
            None,
            Refusal::NotRenewable,
        ),
        (
            "a renewal of another serial",
            request(&k, "lab", None, Some(8), T0),
            Some(&held),
            None,
            Refusal::NotRenewable,
        ),
        (
            "a renewal of a revoked certificate",
            request(&k, "lab", None, Some(7), T0),
            Some(&held),
            Some(T0),
            Refusal::Revoked,
        ),
        (
            "a token join under a revocation dated ahead of now",
            request(&thief, "lab", tok(), None, T0),
            Some(&held),
            Some(T0 + NOT_BEFORE_SLACK_MS),
            Refusal::Revoked,
        ),
    ];
    for (name, req, current, revoked_at, want) in cases {
        assert_eq!(a.judge(&req, current, revoked_at, T0), Err(want), "{name}");
    }
    // Once the name's holder is revoked, a token brings the name in under new keys (its
    // certificate starts after the revocation).
    let req = request(&thief, "lab", tok(), None, T0);
    assert!(a.judge(&req, Some(&held), Some(T0), T0 + 1).is_ok());
}

#[test]
fn each_bad_certificate_is_refused_with_its_reason() {
    let a = Authority::new("lab", [9; 32]).unwrap();
    let other = Authority::new("lab", [8; 32]).unwrap();
    let k = node_key(1);
    let req = request(&k, "lab", Some(token(&a, None, T0 + HOUR_MS)), None, T0);
    let g = a.judge(&req, None, None, T0).unwrap();
    let cert = a.certify(&g, 1, T0, HOUR_MS);
    let anchor = a.anchor();
    let cases: Vec<(Result<Certificate, Refusal>, Refusal)> = vec![
        (
            anchor.certificate(&other.certify(&g, 1, T0, HOUR_MS), T0),
            Refusal::Forged,
        ),
        (anchor.certificate(&cert, T0 + HOUR_MS), Refusal::Expired),
        (
            anchor.certificate(&cert, T0 - NOT_BEFORE_SLACK_MS - 1),
            Refusal::NotYetValid,
        ),
        (
            Anchor::new("other", anchor.public())
                .unwrap()
                .certificate(&cert, T0),
            Refusal::OtherFleet,
        ),
        (
            anchor.certificate(
                &Signed {
                    body: cert.body.replace("\"level\":2", "\"level\":0"),
                    ..cert.clone()
                },
                T0,
            ),
            Refusal::Forged,
        ),
    ];
    for (got, want) in cases {
        assert_eq!(got, Err(want));
    }
    assert!(anchor.certificate(&cert, T0 - NOT_BEFORE_SLACK_MS).is_ok());
}

#[test]
fn a_hybrid_authority_needs_both_signatures() {
    let hybrid = Authority::hybrid("lab", [9; 32]).unwrap();
    let classical = Authority::new("lab", [9; 32]).unwrap();
    let k = node_key(1);
    let req = request(
        &k,
        "lab",
        Some(token(&hybrid, None, T0 + HOUR_MS)),
        None,
        T0,
    );
    let g = hybrid.judge(&req, None, None, T0).unwrap();
    let cert = hybrid.certify(&g, 1, T0, HOUR_MS);
    assert!(hybrid.anchor().certificate(&cert, T0).is_ok());
    // The Ed25519 anchor alone (same key) takes it too: the ML-DSA signature is extra.
    assert!(classical.anchor().certificate(&cert, T0).is_ok());
    // Ed25519 alone, or an ML-DSA signature over something else, is not enough.
    let unhybrid = classical.certify(&g, 1, T0, HOUR_MS);
    assert_eq!(
        hybrid.anchor().certificate(&unhybrid, T0),
        Err(Refusal::Forged)
    );
    let other = hybrid.certify(&g, 2, T0, HOUR_MS);
    let swapped = Signed {
        ml_dsa: other.ml_dsa.clone(),
        ..cert.clone()
    };
    assert_eq!(
        hybrid.anchor().certificate(&swapped, T0),
        Err(Refusal::Forged)
    );
    // A hybrid token names the ML-DSA key a joining node pins.
    let t: JoinToken = token(&hybrid, None, T0 + HOUR_MS).open().unwrap();
    assert_eq!(
        t.authority_ml_dsa.as_deref(),
        Some(&*hex(hybrid.anchor().ml_dsa().unwrap().encoded()))
    );
}
