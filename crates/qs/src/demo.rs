//! `qs up --demo`: seed 000's story played on real processes and printed as it happens.
//! Real CPU load on the DNS service crosses its threshold; the steward cannot replicate
//! locally, queries the fleet, gates the offers and dispatches to the best node. Then an
//! instance is killed: it comes back elsewhere, and the node that lost it remembers.

use crate::render;
use qs_agent::control::{Control, Shared};
use qs_fabric::memory::MemoryFabric;
use qs_wire::{InstanceId, NodeId, ServiceName, parse_spec};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::UdpSocket;

const DNS: &str = include_str!("../../../examples/dns.toml");
const WEB: &str = include_str!("../../../examples/web.toml");
const BATCH: &str = include_str!("../../../examples/batch.toml");
const LLM: &str = include_str!("../../../examples/llm.toml");
const TRAIN: &str = include_str!("../../../examples/train.toml");

fn say(s: &str) {
    println!("\n==> {s}");
}

fn on_path(binary: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(binary).is_file()))
        || std::path::Path::new("/usr/sbin").join(binary).is_file()
}

/// Where each instance of `service` runs now: (instance, node, port, serving).
fn instances(shared: &Shared, service: &str) -> Vec<(InstanceId, NodeId, u16, bool)> {
    let views = shared.views.read().map(|v| v.clone()).unwrap_or_default();
    views
        .values()
        .flat_map(|v| v.instances.iter())
        .filter(|i| i.service.as_str() == service)
        .map(|i| {
            (
                i.instance.clone(),
                i.node.clone(),
                i.port.unwrap_or(0),
                i.serving,
            )
        })
        .collect()
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    say(&format!(
        "gave up waiting for {what} after {} s",
        limit.as_secs()
    ));
    false
}

/// Prints every ledger event from `from` on, as it is written.
async fn print_ledger(shared: Arc<Shared>, from: u64) {
    let mut at = from;
    loop {
        let ledger = shared.ledger.clone();
        let read = tokio::task::spawn_blocking(move || {
            ledger.follow(at, 1000, Duration::from_millis(500))
        })
        .await;
        let Ok(Ok(records)) = read else { return };
        for r in records {
            at = r.seq + 1;
            println!("{}", render::line(&r));
        }
    }
}

/// A DNS query for `ns.fleet.local`, type A.
fn dns_query(id: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in ["ns", "fleet", "local"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Real load: a DNS query flood (UDP) or an HTTP request flood (TCP) on one port, until
/// `stop` is set.
async fn flood(port: u16, dns: bool, stop: Arc<AtomicBool>) {
    let mut tasks = Vec::new();
    for worker in 0..3u16 {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut n: u16 = worker;
            while !stop.load(Ordering::Relaxed) {
                if dns {
                    let Ok(sock) = UdpSocket::bind("127.0.0.1:0").await else {
                        return;
                    };
                    for _ in 0..64 {
                        n = n.wrapping_add(3);
                        let _ = sock.send_to(&dns_query(n), ("127.0.0.1", port)).await;
                    }
                    let mut buf = [0u8; 512];
                    for _ in 0..64 {
                        if tokio::time::timeout(Duration::from_millis(20), sock.recv(&mut buf))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                } else {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                        let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
                        let mut sink = Vec::new();
                        let _ = s.read_to_end(&mut sink).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Resolves `ns.fleet.local` through a dnsmasq instance: the answer's IPv4 address.
pub async fn resolve(port: u16) -> Option<[u8; 4]> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.ok()?;
    sock.send_to(&dns_query(0x5153), ("127.0.0.1", port))
        .await
        .ok()?;
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    let answers = u16::from_be_bytes([buf[6], buf[7]]);
    (answers > 0 && n >= 4).then(|| [buf[n - 4], buf[n - 3], buf[n - 2], buf[n - 1]])
}

pub async fn play(addr: SocketAddr, shared: Arc<Shared>, fabric: MemoryFabric) {
    let from = shared.ledger.next_seq();
    tokio::spawn(print_ledger(shared.clone(), from));
    let dns = on_path("dnsmasq");
    let (service, text) = if dns {
        ("fleet-dns", DNS)
    } else {
        ("web", WEB)
    };
    if !dns {
        say(
            "dnsmasq is not installed here (apt-get install dnsmasq); the story uses the web service instead",
        );
    }
    say(&format!(
        "applying the example specs through the API at http://{addr}"
    ));
    for (file, text) in [
        (format!("examples/{service}.toml"), text),
        ("examples/batch.toml".into(), BATCH),
        ("examples/llm.toml".into(), LLM),
        ("examples/train.toml".into(), TRAIN),
    ] {
        match parse_spec(&file, text) {
            Ok(doc) => {
                if let Err(e) = qs_agent::specs::put_specs(&fabric, &doc).await {
                    say(&format!("could not apply {file}: {e}"));
                }
            }
            Err(e) => say(&format!("{e}")),
        }
    }
    if !wait_until(
        &format!("{service} to serve"),
        Duration::from_secs(30),
        || instances(&shared, service).iter().any(|i| i.3),
    )
    .await
    {
        return;
    }
    let (first, host, port, _) = instances(&shared, service)[0].clone();
    if dns {
        match resolve(port).await {
            Some(ip) => say(&format!(
                "ns.fleet.local resolves to {}.{}.{}.{} through {first} on {host}:{port}",
                ip[0], ip[1], ip[2], ip[3]
            )),
            None => say("dnsmasq did not answer"),
        }
    }
    say(&format!(
        "step 1, sense: real load on {first} ({host}, port {port}) until it crosses its CPU threshold"
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(flood(port, dns, stop.clone()));
    let scaled = wait_until("a scale-out", Duration::from_secs(60), || {
        instances(&shared, service).len() >= 2
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let _ = load.await;
    if scaled {
        say(&format!(
            "{service} scaled out through the five steps; the story is in the ledger above"
        ));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = instances(&shared, service);
    let Some((victim, node, _, _)) = before.first().cloned() else {
        return;
    };
    let want = before.len();
    say(&format!(
        "chaos: {victim} on {node} crashes each time it starts (kill -9); {node} restarts it in place with backoff, then gives it up"
    ));
    for round in 1..=6 {
        let back = wait_until(
            "the instance to serve again or move",
            Duration::from_secs(30),
            || {
                let now = instances(&shared, service);
                now.iter().any(|i| i.0 == victim && i.3)
                    || (now.len() >= want && now.iter().all(|i| i.0 != victim && i.3))
            },
        )
        .await;
        if !back || !instances(&shared, service).iter().any(|i| i.0 == victim) {
            break;
        }
        say(&format!(
            "chaos: kill -9 {victim} on {node} (crash {round})"
        ));
        let tx = shared
            .controls
            .read()
            .ok()
            .and_then(|c| c.get(&node).cloned());
        if let Some(tx) = tx {
            let (reply, _rx) = tokio::sync::oneshot::channel();
            let _ = tx
                .send(Control::Kill {
                    instance: victim.clone(),
                    reply,
                })
                .await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let hosts: Vec<String> = instances(&shared, service)
        .iter()
        .map(|i| format!("{} on {}", i.0, i.1))
        .collect();
    let svc = ServiceName::new(service).expect("a valid name");
    say(&format!(
        "{service} serves again from {}; {node} remembers its failures (qs nodes --explain {svc})",
        hosts.join(", ")
    ));
    say(
        "the fleet keeps running: try `qs ps`, `qs services`, `qs events --follow`; Ctrl-C stops everything",
    );
}
