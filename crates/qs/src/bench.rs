//! `qs bench SUITE`: benchmarks that print one JSON object per line:
//! `{"bench":...,"metric":...,"value":...,"unit":...}`.

use qs_sim::bench::{median, placement};
use serde::Serialize;

#[derive(Serialize)]
struct Line<'a> {
    bench: &'a str,
    metric: String,
    value: f64,
    unit: &'a str,
}

/// `x` rounded to `decimals` places, as the figures are printed.
pub(crate) fn round_to(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

/// `a / b` to two places: the ratios every suite prints.
pub(crate) fn ratio(a: f64, b: f64) -> f64 {
    round_to(a / b, 2)
}

pub(crate) fn emit(bench: &str, metric: String, value: f64, unit: &str) {
    let line = Line {
        bench,
        metric,
        value,
        unit,
    };
    println!(
        "{}",
        serde_json::to_string(&line).expect("bench lines always serialize")
    );
}

/// Core placement decisions per second by fleet size, medians of `repeats` runs, then how the
/// cost of one placement grows from the smallest fleet to the largest.
pub fn placement_suite(sizes: &[usize], placements: usize, repeats: usize, seed: u64) {
    let mut cost_ns = Vec::new();
    for &nodes in sizes {
        let runs: Vec<_> = (0..repeats)
            .map(|r| {
                let start = std::time::Instant::now();
                placement(nodes, placements, seed + r as u64, &|| {
                    start.elapsed().as_secs_f64()
                })
            })
            .collect();
        let rate = median(runs.iter().map(|r| r.per_second()).collect());
        let ns = median(runs.iter().map(|r| r.ns_per_placement()).collect());
        let msgs = median(runs.iter().map(|r| r.messages_per_placement).collect());
        emit(
            "placement",
            format!("placements_per_s.nodes_{nodes}"),
            rate.round(),
            "1/s",
        );
        emit(
            "placement",
            format!("cost_per_placement.nodes_{nodes}"),
            ns.round(),
            "ns",
        );
        emit(
            "placement",
            format!("messages_per_placement.nodes_{nodes}"),
            msgs,
            "messages",
        );
        cost_ns.push((nodes, ns));
    }
    // Growth from the first size to the last, and from whichever size was cheapest, so a slow
    // small fleet cannot flatter the ratio.
    let Some(&last) = cost_ns.last() else { return };
    let first = cost_ns[0];
    let cheapest = cost_ns
        .iter()
        .copied()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or(first);
    if cost_ns.len() > 1 {
        for from in [first, cheapest] {
            let metric = format!("cost_growth.nodes_{}_to_{}", from.0, last.0);
            emit("placement", metric, ratio(last.1, from.1), "x");
        }
    }
}

/// Starts `qs agent` (one real node, host sensing) on a free port, waits until it answers,
/// lets it idle, and reads its resident memory.
pub(crate) fn idle_rss_kib() -> anyhow::Result<u64> {
    use std::time::Duration;
    let dir = std::env::temp_dir().join(format!("qs-bench-rss-{}", std::process::id()));
    let agent = crate::bench_agents::BenchAgent::start("rss", &dir, &[])?;
    let result = (|| {
        crate::bench_agents::wait_until("qs agent to answer", Duration::from_secs(30), || {
            agent.get::<qs_agent::v1::Health>("/health").is_some()
        })?;
        std::thread::sleep(Duration::from_secs(3)); // idle: a few heartbeats and sensor samples
        let pid = agent.child.as_ref().map_or(0, std::process::Child::id);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))
    })();
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A benchmark's embedded fleet: virtual nodes, the no-op executor, no sensing to speak of.
pub(crate) fn bench_fleet(
    state_dir: &std::path::Path,
    nodes: Vec<qs_wire::NodeSpec>,
    config: qs_core::Config,
    authenticate: bool,
) -> qs_agent::fleet::FleetOptions {
    use std::time::Duration;
    qs_agent::fleet::FleetOptions {
        state_dir: state_dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("a valid address"),
        nodes,
        config,
        sense_every: Duration::from_secs(3600),
        stop_grace: Duration::from_secs(1),
        seed: 1,
        host: false,
        noop_executor: true,
        mode: "embedded",
        authenticate,
        rekey: false,
        trust: qs_agent::trust::Trust::FirstUse,
        api_hosts: vec![],
        tls: None,
        mesh: Default::default(),
    }
}

/// How the runtime of [`through_runtime`] trusts its senders: what the `nodes` KV holds
/// before it starts, and what its state directory holds.
struct RuntimeTrust {
    /// Entries of the `nodes` KV: the senders' keys or certificates.
    nodes: Vec<(qs_wire::NodeId, Vec<u8>)>,
    trust: qs_agent::trust::Trust,
    /// The receiver's own certificate, kept in its state directory (under certificates).
    certificate: Option<qs_wire::trust::Signed>,
}

/// The same frames through a whole agent runtime: published on the in-memory fabric to one
/// node of a fleet that requires authentication (its keyring learns the senders' keys or
/// certificates from the `nodes` KV, as on NATS), opened and handed to its core (offers for
/// placements it does not know: read and dropped). Sent in chunks the node's inbox holds,
/// each waited for. Messages per second.
fn through_runtime(
    receiver: &qs_wire::NodeId,
    receiver_secret: [u8; 32],
    setup: RuntimeTrust,
    frames: &[Vec<u8>],
) -> anyhow::Result<f64> {
    use qs_agent::fleet::EmbeddedFleet;
    use qs_agent::names::NODES_BUCKET;
    use qs_fabric::{Fabric, Kv};
    use qs_store::{StateDir, StateFile};
    use std::time::{Duration, Instant};
    const CHUNK: usize = 2_000;
    let state_dir = std::env::temp_dir().join(format!("qs-bench-messages-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state_dir);
    let state = StateDir::open(&state_dir)?;
    let secret = qs_wire::identity::hex(&receiver_secret);
    state.write(StateFile::Key(receiver), secret.as_bytes(), Some(0o600))?;
    if let Some(cert) = &setup.certificate {
        state.write(
            StateFile::Certificate(receiver),
            &cert.encode(),
            Some(0o600),
        )?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let frames: Vec<qs_fabric::Bytes> = frames
        .iter()
        .map(|f| qs_fabric::Bytes::from(f.clone()))
        .collect();
    let result = rt.block_on(async {
        let fabric = qs_fabric::memory::MemoryFabric::new();
        let nodes = fabric.kv(NODES_BUCKET).await?;
        for (id, value) in &setup.nodes {
            nodes.put(id.as_str(), value.clone().into()).await?;
        }
        let node = qs_wire::NodeSpec {
            id: receiver.clone(),
            level: 0,
            labels: Default::default(),
            capacity: Default::default(),
        };
        let options = qs_agent::fleet::FleetOptions {
            trust: setup.trust,
            ..bench_fleet(&state_dir, vec![node], qs_core::Config::default(), true)
        };
        let fleet = EmbeddedFleet::start_on(options, fabric.clone()).await?;
        let waited = Instant::now();
        while !setup
            .nodes
            .iter()
            .all(|(id, _)| fleet.shared.auth.knows(id))
        {
            anyhow::ensure!(
                waited.elapsed() < Duration::from_secs(30),
                "keys not learned"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let received = || fleet.shared.counters.messages_received.get() as usize;
        let base = received();
        let t0 = Instant::now();
        let mut sent = 0;
        for chunk in frames.chunks(CHUNK) {
            for f in chunk {
                fabric.send(receiver, f.clone()).await?;
            }
            sent += chunk.len();
            let waited = Instant::now();
            while received() - base < sent {
                anyhow::ensure!(
                    waited.elapsed() < Duration::from_secs(30),
                    "{} of {sent} messages accepted",
                    received() - base
                );
                tokio::task::yield_now().await;
            }
        }
        let rate = frames.len() as f64 / t0.elapsed().as_secs_f64();
        fleet.shutdown().await;
        Ok::<_, anyhow::Error>(rate)
    });
    let _ = std::fs::remove_dir_all(&state_dir);
    result
}

/// Directed messages encrypted under certificates (ChaCha20-Poly1305 under hybrid X25519 +
/// ML-KEM-768 session keys): through a whole agent runtime, then through a fresh receiver's
/// keyring alone each run, each sender's session opened (decapsulated) inside the clock.
fn encrypted(
    bodies: &[(usize, Vec<u8>)],
    receiver: &qs_wire::NodeId,
    receiver_secret: [u8; 32],
    peers: usize,
    repeats: usize,
    clock: qs_core::Time,
) -> anyhow::Result<()> {
    use qs_core::auth::{AuthConfig, Keyring};
    use qs_core::trust::{Authority, Granted};
    use qs_wire::identity::hex;
    use std::time::Instant;
    let auth = AuthConfig::from_config(&qs_core::Config::default(), true);
    let authority = Authority::new("bench", [77; 32])?;
    let ring = |node: &qs_wire::NodeId, secret: [u8; 32]| {
        let mut k = Keyring::with_anchor(auth, authority.anchor().clone());
        k.reseed(node.as_str().as_bytes());
        let public = k.add_local(node.clone(), secret);
        let cert = authority.certify(
            &Granted {
                node: node.clone(),
                ed25519: hex(&public),
                ml_kem: hex(&k.kem_public(node).expect("a local node")),
                level: 0,
                capabilities: qs_wire::trust::Capability::member(),
                token_id: None,
            },
            1,
            clock.as_millis(),
            3_600_000,
        );
        (k, cert)
    };
    let (_, receiver_cert) = ring(receiver, receiver_secret);
    let mut senders: Vec<(qs_wire::NodeId, Keyring, qs_wire::trust::Signed)> = (0..peers)
        .map(|i| {
            let id = qs_wire::NodeId::new(&format!("peer{i}")).expect("generated names are valid");
            let mut s = [0u8; 32];
            s[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            let (mut k, cert) = ring(&id, s);
            k.learn_certificate(&receiver_cert, clock)
                .expect("the bench's own certificate");
            (id, k, cert)
        })
        .collect();
    // Sealed 10 µs apart, as a busy sender would: the handshake rides along on each
    // session's first messages, then once a second.
    let frames: Vec<Vec<u8>> = bodies
        .iter()
        .enumerate()
        .map(|(m, (i, body))| {
            let (id, k, _) = &mut senders[*i];
            let at = qs_core::Time::from_micros(clock.as_micros() + 10 * m as u64);
            k.seal_at(&id.clone(), Some(receiver), body, Some(at))
        })
        .collect();
    let (_, own) = ring(receiver, receiver_secret);
    let setup = RuntimeTrust {
        nodes: senders
            .iter()
            .map(|(id, _, cert)| (id.clone(), cert.encode()))
            .collect(),
        trust: qs_agent::trust::Trust::Certificates(Box::new(qs_agent::trust::CertTrust {
            anchor: authority.anchor().clone(),
            join_token: None,
            authority: None,
        })),
        certificate: Some(own),
    };
    let rate = through_runtime(receiver, receiver_secret, setup, &frames)?;
    emit(
        "messages",
        "through_runtime_encrypted_per_s".into(),
        rate.round(),
        "1/s",
    );
    let mut rates = Vec::new();
    for _ in 0..repeats {
        let (mut k, _) = ring(receiver, receiver_secret);
        for (_, _, cert) in &senders {
            k.learn_certificate(cert, clock)
                .expect("the bench's own certificate");
        }
        let t0 = Instant::now();
        let accepted = frames
            .iter()
            .filter(|f| k.open(Some(receiver), f, clock).is_ok())
            .count();
        let elapsed = t0.elapsed().as_secs_f64();
        anyhow::ensure!(
            accepted == frames.len(),
            "encrypted: {accepted} of {} messages accepted",
            frames.len()
        );
        rates.push(frames.len() as f64 / elapsed);
    }
    emit(
        "messages",
        "directed_encrypted_per_s".into(),
        median(rates).round(),
        "1/s",
    );
    let mean = frames.iter().map(Vec::len).sum::<usize>() as f64 / frames.len() as f64;
    emit(
        "messages",
        "directed_encrypted_frame_size".into(),
        mean.round(),
        "bytes",
    );
    Ok(())
}

/// `qs bench messages`: authenticated messages per second through one node's receive path:
/// the frame parsed, the envelope decoded, the tag checked (a session MAC for directed
/// messages, an Ed25519 signature for heartbeats, one by one and in batches as the heartbeat
/// feed checks them), the timestamp and the replay window, on one core. `peers` senders
/// each send their share of `messages`; the median of `repeats` runs, each with a fresh
/// receiver (so every session key is derived inside the clock).
pub fn messages_suite(messages: usize, peers: usize, repeats: usize) -> anyhow::Result<()> {
    use qs_core::auth::{AuthConfig, Keyring};
    use qs_wire::{
        Composite, Envelope, InstanceId, InstanceSummary, Message, MessageId, NodeId, NodeStatus,
        Offer, PlacementId, Role, ServiceName,
    };
    use std::time::Instant;
    let auth = AuthConfig::from_config(&qs_core::Config::default(), true);
    let node = |i: usize| NodeId::new(&format!("peer{i}")).expect("generated names are valid");
    let receiver = NodeId::new("receiver")?;
    // Secrets derived from the index: a benchmark's keys need not be secret, only distinct.
    let secret = |i: usize| {
        let mut s = [0u8; 32];
        s[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        s
    };
    let mut senders: Vec<(NodeId, Keyring, [u8; 32])> = (0..peers)
        .map(|i| {
            let mut k = Keyring::new(auth);
            let public = k.add_local(node(i), secret(i));
            (node(i), k, public)
        })
        .collect();
    let receiver_secret = secret(peers);
    let receiver_public = Keyring::new(auth).add_local(receiver.clone(), receiver_secret);
    for (_, k, _) in &mut senders {
        k.learn(receiver.clone(), receiver_public)?;
    }
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_micros() as u64;
    let web = ServiceName::new("web")?;
    let offer = |seq: u64| Message::Offer {
        placement: PlacementId {
            steward: receiver.clone(),
            seq,
        },
        offer: Offer {
            composite: Composite {
                pressure: 0.1,
                vram_free: 1.0,
                cpu_free: 0.62,
                level_weight: 1.0,
                value: 0.558,
            },
            gpu: None,
            vram_free_bytes: 0,
        },
    };
    let heartbeat = |from: &NodeId| -> anyhow::Result<Message> {
        let instances = (0..4)
            .map(|i| {
                Ok(InstanceSummary {
                    instance: InstanceId::new(&format!("web-{from}-{i}"))?,
                    service: web.clone(),
                    role: Role::Replica,
                    fencing: 0,
                    hot: false,
                    serving: true,
                    port: 8000 + i,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Message::Heartbeat(NodeStatus {
            node: from.clone(),
            level: 1,
            labels: [("site".to_string(), "lab".to_string())].into(),
            capacity: Default::default(),
            committed: Default::default(),
            load: Default::default(),
            instances,
            completed: vec![],
            draining: false,
            address: Some(std::net::Ipv4Addr::new(10, 0, 0, 7).into()),
            models: vec![],
            entry_port: 0,
            capabilities: None,
        }))
    };
    let mut directed = Vec::with_capacity(messages);
    let mut directed_bodies = Vec::with_capacity(messages);
    let mut signed = Vec::with_capacity(messages);
    for m in 0..messages {
        let (from, keyring, _) = &mut senders[m % peers];
        let seq = (m / peers) as u64 * 2;
        let body = Envelope::new(from.clone(), seq, now_us, MessageId(seq), offer(seq));
        directed.push(keyring.seal(&from.clone(), Some(&receiver), &body.encode()));
        directed_bodies.push((m % peers, body.encode()));
        let body = Envelope::new(
            from.clone(),
            seq + 1,
            now_us,
            MessageId(seq),
            heartbeat(from)?,
        );
        signed.push(keyring.seal(&from.clone(), None, &body.encode()));
    }
    let fresh_receiver = || {
        let mut k = Keyring::new(auth);
        k.add_local(receiver.clone(), receiver_secret);
        for (id, _, public) in &senders {
            k.learn(id.clone(), *public)
                .expect("generated keys are valid");
        }
        k
    };
    let clock = qs_core::Time::from_micros(now_us);
    let run = |name: &str, batch: usize, directed_frames: bool| -> anyhow::Result<()> {
        let frames = if directed_frames { &directed } else { &signed };
        let to = directed_frames.then_some(&receiver);
        let mut rates = Vec::new();
        for _ in 0..repeats {
            let mut k = fresh_receiver();
            let t0 = Instant::now();
            let mut accepted = 0usize;
            for chunk in frames.chunks(batch) {
                let opened = k.open_many(to, chunk.iter().map(Vec::as_slice), clock);
                accepted += opened.iter().filter(|r| r.is_ok()).count();
            }
            let elapsed = t0.elapsed().as_secs_f64();
            anyhow::ensure!(
                accepted == frames.len(),
                "{name}: {accepted} of {} messages accepted",
                frames.len()
            );
            rates.push(frames.len() as f64 / elapsed);
        }
        emit(
            "messages",
            format!("{name}_per_s"),
            median(rates).round(),
            "1/s",
        );
        Ok(())
    };
    let setup = RuntimeTrust {
        nodes: senders
            .iter()
            .map(|(id, _, public)| {
                let record = qs_wire::NodeRecord::new(*public, 1, 0);
                (
                    id.clone(),
                    serde_json::to_vec(&record).expect("records serialize"),
                )
            })
            .collect(),
        trust: qs_agent::trust::Trust::FirstUse,
        certificate: None,
    };
    let rate = through_runtime(&receiver, receiver_secret, setup, &directed)?;
    emit(
        "messages",
        "through_runtime_session_mac_per_s".into(),
        rate.round(),
        "1/s",
    );
    run("directed_session_mac", 1, true)?;
    encrypted(
        &directed_bodies,
        &receiver,
        receiver_secret,
        peers,
        repeats,
        clock,
    )?;
    run("heartbeat_ed25519", 1, false)?;
    run("heartbeat_ed25519_batch_256", 256, false)?;
    let mean = |v: &[Vec<u8>]| v.iter().map(Vec::len).sum::<usize>() as f64 / v.len() as f64;
    emit(
        "messages",
        "directed_frame_size".into(),
        mean(&directed).round(),
        "bytes",
    );
    emit(
        "messages",
        "heartbeat_frame_size".into(),
        mean(&signed).round(),
        "bytes",
    );
    Ok(())
}
