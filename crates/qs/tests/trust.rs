//! Fleet trust on real processes: a nats-server with TLS and an authorization block, a fleet
//! authority from `qs fleet init`, three agents brought in by an authority node and join
//! tokens; each refusal the issue lists; a revocation heard within a heartbeat interval; a
//! certificate renewed under the running fleet without a failover.

mod common;

use common::{Up, agent_configured, cli};
use qs_core::trust::Authority;
use qs_fabric::nats::{NatsFabric, NatsSecurity, UserPassword};
use qs_fabric::nats_server::NatsServer;
use qs_fabric::{Fabric, Kv};
use qs_wire::NodeId;
use qs_wire::identity::hex;
use qs_wire::trust::{Capability, Signed};
use std::path::Path;
use std::time::{Duration, Instant};

const HEARTBEAT_MS: u64 = 500;

/// The server's certificate (self-signed, for 127.0.0.1) and key, as PEM files.
fn server_certificate(dir: &Path) -> (String, String) {
    let made =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (cert, key) = (dir.join("nats.crt"), dir.join("nats.key"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (
        cert.to_str().unwrap().to_owned(),
        key.to_str().unwrap().to_owned(),
    )
}

fn refused(up: &Up, reason: &str) -> f64 {
    up.metric(&format!("qs_trust_refused_total{{reason=\"{reason}\"}}"))
}

fn live(up: &Up) -> Vec<String> {
    up.get("/v1/nodes")
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["node"].as_str().or(n["id"].as_str()).map(str::to_owned))
        .collect()
}

/// A `qs` command's status and everything it printed.
fn run(args: &[&str]) -> (bool, String) {
    let out = common::qs().args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `qs agent NODE` joining fleet `t` at `url` with `token` and the config file `config`,
/// which must fail: everything it printed.
fn joining_fails(dir: &Path, url: &str, node: &str, config: &Path, token: &str) -> String {
    let state = dir.join(node);
    let (ok, text) = run(&[
        "agent",
        "--nats",
        url,
        "--fleet",
        "t",
        "--node",
        node,
        "--config",
        config.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--join-token",
        token,
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!ok, "{node} joined: {text}");
    text
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn a_certified_fleet_on_tls_nats_refuses_what_it_should_revokes_and_renews() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = server_certificate(dir.path());
    let server = NatsServer::start_with_config(&format!(
        "tls {{ cert_file: \"{cert}\", key_file: \"{key}\" }}\n\
         authorization {{ users = [ {{ user: \"fleet\", password: \"s3cret\" }} ] }}\n"
    ))
    .unwrap();
    let url = server.url();
    let password = dir.path().join("nats.password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let config = |pass: &str| {
        format!(
            "heartbeat_ms = {HEARTBEAT_MS}\n[thresholds]\ncpu = 1.0\nmemory = 1.0\n\
             [trust]\ncertificate_lifetime_ms = 8000\n\
             [nats]\nuser = \"fleet\"\npassword_file = \"{pass}\"\ntls_ca = \"{cert}\"\n"
        )
    };
    let good = config(password.to_str().unwrap());
    let authority_dir = dir.path().join("authority");
    let auth_dir = authority_dir.to_str().unwrap();
    let init = cli(&[
        "fleet", "init", "--fleet", "t", "--dir", auth_dir, "--hybrid",
    ]);
    assert!(init.contains("secret key"), "{init}");
    let token = |extra: &[&str]| -> String {
        let mut args = vec!["fleet", "token", "--dir", auth_dir];
        args.extend_from_slice(extra);
        cli(&args).trim().to_owned()
    };

    // Wrong NATS credentials: refused by the server, and the agent says so.
    let wrong = dir.path().join("wrong.password");
    std::fs::write(&wrong, "guess\n").unwrap();
    std::fs::write(
        dir.path().join("wrong.toml"),
        config(wrong.to_str().unwrap()),
    )
    .unwrap();
    let t0 = token(&[]);
    let text = joining_fails(
        dir.path(),
        &url,
        "intruder",
        &dir.path().join("wrong.toml"),
        &t0,
    );
    assert!(
        text.contains("the NATS server refused this client"),
        "{text}"
    );

    // The fleet: alpha is the authority node, beta and gamma join with tokens.
    let alpha = agent_configured(
        dir.path(),
        &url,
        "alpha",
        &["--authority", auth_dir],
        &[],
        &good,
    );
    let beta_token = token(&[]);
    let beta = agent_configured(
        dir.path(),
        &url,
        "beta",
        &["--join-token", &beta_token],
        &[],
        &good,
    );
    let gamma_token = token(&["--capabilities", "host,api"]);
    let gamma = agent_configured(
        dir.path(),
        &url,
        "gamma",
        &["--join-token", &gamma_token],
        &[],
        &good,
    );
    for up in [&alpha, &beta, &gamma] {
        up.wait("three certified nodes", |u| live(u).len() == 3);
    }

    // The authority's key, as a test that holds it signs with it.
    let secret = qs_wire::identity::unhex(
        &std::fs::read_to_string(authority_dir.join("authority.key")).unwrap(),
    )
    .unwrap();
    // A hybrid authority: Ed25519 and ML-DSA-65.
    let real = Authority::hybrid("t", secret).unwrap();

    // gamma's certificate grants hosting and the API, not stewarding: its heartbeats say so
    // (and are heard), and of twenty services it stewards none.
    let gamma_row = |up: &Up| {
        up.get("/v1/nodes")
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == "gamma")
            .cloned()
            .unwrap()
    };
    assert_eq!(
        gamma_row(&alpha)["capabilities"],
        serde_json::json!(["host", "api"])
    );
    let specs: String = (0..20)
        .map(|i| {
            format!(
                "[service.s{i}]\nreplicas = 0\ncommand = \"sleep 60\"\n\
                 resources = {{ cpu_cores = 0.01, memory_mib = 8 }}\n"
            )
        })
        .collect();
    alpha.apply(&specs);
    alpha.wait("every service stewarded", |u| {
        let services = u.get("/v1/services");
        let rows = services.as_array().unwrap();
        rows.len() == 20 && rows.iter().all(|r| r["steward"].is_string())
    });
    for up in [&alpha, &beta, &gamma] {
        let services = up.get("/v1/services");
        for row in services.as_array().unwrap() {
            assert_ne!(row["steward"], "gamma", "{row}");
        }
    }

    // A token used twice, and one past its expiry: refused by the authority.
    let text = joining_fails(
        dir.path(),
        &url,
        "delta",
        &dir.path().join("beta.toml"),
        &beta_token,
    );
    assert!(text.contains("token_used"), "{text}");
    let grant = qs_core::trust::TokenGrant {
        level: 0,
        capabilities: Capability::member(),
        node: None,
    };
    let short = real.token([7; 16], grant, now_ms() - 1000).to_token_text();
    let text = joining_fails(
        dir.path(),
        &url,
        "epsilon",
        &dir.path().join("beta.toml"),
        &short,
    );
    assert!(text.contains("token_expired"), "{text}");
    assert!(refused(&alpha, "token_used") >= 1.0 && refused(&alpha, "token_expired") >= 1.0);

    // Certificates written straight into the bucket by someone who can write it: forged
    // (another authority), for another fleet, expired. Each is refused and counted by every
    // peer, and none of those nodes is ever heard.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let security = NatsSecurity {
        user: Some(UserPassword {
            user: "fleet".into(),
            password: "s3cret".into(),
        }),
        tls_ca: Some(cert.clone().into()),
        ..Default::default()
    };
    let bus: NatsFabric = rt
        .block_on(NatsFabric::connect_secured(&url, "t", 1, &security))
        .unwrap();
    let mut mallory_ring = qs_core::auth::Keyring::with_anchor(
        qs_core::auth::AuthConfig::from_config(&qs_core::Config::default(), true),
        real.anchor().clone(),
    );
    let mallory = NodeId::new("mallory").unwrap();
    let public = mallory_ring.add_local(mallory.clone(), [9; 32]);
    let mallory_kem = mallory_ring.kem_public(&mallory).unwrap();
    let granted = |capabilities: &str| qs_core::trust::Granted {
        node: mallory.clone(),
        ed25519: hex(&public),
        ml_kem: hex(&mallory_kem),
        level: 0,
        capabilities: Capability::parse_list(capabilities).unwrap(),
        token_id: None,
    };
    let now = now_ms();
    let bad = [
        (
            "forged",
            Authority::hybrid("t", [3; 32])
                .unwrap()
                .certify(&granted("all"), 11, now, 60_000),
        ),
        // The authority's own Ed25519 key without its ML-DSA signature: not enough.
        (
            "forged",
            Authority::new("t", secret)
                .unwrap()
                .certify(&granted("all"), 15, now, 60_000),
        ),
        (
            "other_fleet",
            Authority::hybrid("elsewhere", secret).unwrap().certify(
                &granted("all"),
                12,
                now,
                60_000,
            ),
        ),
        (
            "expired",
            real.certify(&granted("all"), 13, now - 600_000, 60_000),
        ),
    ];
    let nodes = rt.block_on(bus.kv("nodes")).unwrap();
    for (reason, cert) in &bad {
        let before: Vec<f64> = [&alpha, &beta, &gamma].map(|u| refused(u, reason)).to_vec();
        rt.block_on(nodes.put("mallory", cert.encode().into()))
            .unwrap();
        for (up, before) in [&alpha, &beta, &gamma].into_iter().zip(before) {
            up.wait(&format!("a {reason} certificate refused"), |u| {
                refused(u, reason) > before
            });
        }
    }
    // Mallory's heartbeat under no valid certificate: dropped, and it is no node.
    let status = |seq: u64| {
        let env = qs_wire::Envelope::new(
            mallory.clone(),
            seq,
            now_ms() * 1000,
            qs_wire::MessageId(seq),
            qs_wire::Message::Ping {
                nonce: seq,
                origin: mallory.clone(),
                via: None,
            },
        );
        env.encode()
    };
    let beta_id = NodeId::new("beta").unwrap();
    let frame = mallory_ring.seal(&mallory, None, &status(1));
    rt.block_on(bus.send(&beta_id, frame.into())).unwrap();
    beta.wait("mallory's message dropped", |u| {
        u.rejected("unknown_sender") >= 1.0
    });

    // Under a real certificate that grants only hosting, a stop order (a steward's) is
    // refused as outside its capabilities; it travels encrypted to beta, as any directed
    // message does. Sent again until beta has learned the certificate (unknown before).
    let host_only = real.certify(&granted("host"), 14, now_ms(), 60_000);
    rt.block_on(nodes.put("mallory", host_only.encode().into()))
        .unwrap();
    let beta_cert =
        Signed::decode(&rt.block_on(nodes.get("beta")).unwrap().unwrap().value).unwrap();
    mallory_ring
        .learn_certificate(&beta_cert, qs_core::Time::from_millis(now_ms()))
        .unwrap();
    let mut seq = 10;
    beta.wait("a stop order outside the sender's capabilities", |u| {
        seq += 1;
        let order = qs_wire::Envelope::new(
            mallory.clone(),
            seq,
            now_ms() * 1000,
            qs_wire::MessageId(seq),
            qs_wire::Message::Stop {
                instance: qs_wire::InstanceId::new("web-1").unwrap(),
                reason: "mallory says".into(),
            },
        )
        .encode();
        let sealed = mallory_ring.seal_at(
            &mallory,
            Some(&beta_id),
            &order,
            Some(qs_core::Time::from_millis(now_ms())),
        );
        assert_eq!(sealed[0], b'E', "directed messages are encrypted");
        rt.block_on(bus.send(&beta_id, sealed.into())).unwrap();
        u.rejected("capability") >= 1.0
    });

    // The task channels: a nudge in clear, and one mallory signs in alpha's name, are dropped
    // and counted.
    let inbound = qs_fabric::Topic::task_inbound(&beta_id);
    let nudge = br#"{"from":"alpha","tasks":[]}"#;
    let before = (beta.rejected("unsigned"), beta.rejected("bad_signature"));
    let open = qs_wire::Frame::write(qs_wire::FrameKind::Open, &[], nudge);
    rt.block_on(bus.publish(&inbound, open.into())).unwrap();
    let signed = mallory_ring.seal_bus(&mallory, nudge);
    rt.block_on(bus.publish(&inbound, signed.into())).unwrap();
    beta.wait("both nudges dropped", |u| {
        u.rejected("unsigned") > before.0 && u.rejected("bad_signature") > before.1
    });

    // Renewal: every certificate lives 8 s and renews at two thirds of it. Once beta's has
    // been renewed and the first ones have expired, all three still hear each other: nobody
    // was declared dead and no message was refused under an expired certificate.
    let beta_cert = |node: &str| {
        let e = rt.block_on(nodes.get(node)).unwrap().unwrap();
        Signed::decode(&e.value)
            .unwrap()
            .open::<qs_wire::trust::Certificate>()
            .unwrap()
    };
    let first = beta_cert("beta");
    let deaths = |up: &Up| up.metric("qs_nodes_declared_dead_total");
    let deaths_before: Vec<f64> = [&alpha, &beta, &gamma].map(deaths).to_vec();
    beta.wait("beta's certificate renewed", |_| {
        beta_cert("beta").serial != first.serial
    });
    beta.wait("beta's first certificate expired", |_| {
        now_ms() > first.not_after_ms
    });
    for (up, before) in [&alpha, &beta, &gamma].into_iter().zip(deaths_before) {
        assert_eq!(live(up).len(), 3, "no failover while certificates renew");
        assert_eq!(deaths(up), before, "nobody declared dead");
        assert_eq!(
            up.rejected("expired"),
            0.0,
            "no message under an expired certificate"
        );
    }

    // Revocation: gamma is revoked, both peers hold it revoked within a heartbeat interval,
    // and refuse what it sends.
    let cfg = dir.path().join("alpha.toml");
    let out = cli(&[
        "fleet",
        "revoke",
        "gamma",
        "--dir",
        auth_dir,
        "--nats",
        &url,
        "--fleet",
        "t",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(out.contains("revoked every certificate of gamma"), "{out}");
    let revoked_at = Instant::now();
    for up in [&alpha, &beta] {
        up.wait("gamma held revoked", |u| {
            u.metric("qs_peers_revoked") >= 1.0
        });
    }
    let applied_within = revoked_at.elapsed();
    assert!(
        applied_within < Duration::from_millis(HEARTBEAT_MS),
        "revocation applied in {applied_within:?}"
    );
    for up in [&alpha, &beta] {
        up.wait("gamma refused as revoked", |u| u.rejected("revoked") >= 1.0);
    }
    for up in [&alpha, &beta] {
        up.wait("gamma gone from the live nodes", |u| {
            !live(u).contains(&"gamma".to_string())
        });
    }
    // gamma again, with its own keys and its first token, its certificate gone: refused.
    drop(gamma);
    std::fs::remove_file(dir.path().join("gamma/keys/gamma.cert.json")).unwrap();
    let text = joining_fails(
        dir.path(),
        &url,
        "gamma",
        &dir.path().join("gamma.toml"),
        &gamma_token,
    );
    assert!(text.contains("revoked"), "{text}");
    let status = cli(&[
        "fleet",
        "status",
        "--dir",
        auth_dir,
        "--nats",
        &url,
        "--fleet",
        "t",
        "--config",
        cfg.to_str().unwrap(),
        "--output",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let gamma_row = v["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["node"] == "gamma")
        .unwrap()
        .clone();
    assert!(
        gamma_row["state"].as_str().unwrap().starts_with("revoked"),
        "{status}"
    );

    // `qs doctor` on alpha's state: authority pinned, certificate valid, TLS and credentials.
    let (ok, text) = run(&[
        "doctor",
        "--config",
        cfg.to_str().unwrap(),
        "--state-dir",
        dir.path().join("alpha").to_str().unwrap(),
        "--nats",
        &url,
        "--fleet",
        "t",
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("NATS over TLS") && text.contains("certificate of alpha"),
        "{text}"
    );
    drop((alpha, beta));
}
