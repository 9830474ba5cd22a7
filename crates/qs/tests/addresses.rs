//! The fleet's stable service addresses on real processes: three `qs agent`s on one real
//! nats-server, each listening on its own loopback address (127.0.0.1, .2 and .3, as three
//! machines would on theirs), forwarding UDP, TCP and HTTP to instances wherever they run, the
//! primary's own port following a promotion, and the serving set published to a file and a
//! command.

mod common;

use common::*;
use qs_fabric::nats_server::NatsServer;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Agent `i` listens for addresses on 127.0.0.(i + 1) and may publish below `dir`. The nodes
/// share this machine's CPU, so its load must not make them refuse work.
fn config(i: usize, dir: &std::path::Path) -> String {
    format!(
        "[thresholds]\ncpu_sensed = false\nmemory = 1.0\n[addresses]\nlisten = \"127.0.0.{}\"\npublish_dirs = [\"{}\"]\n",
        i + 1,
        dir.display()
    )
}

const NAMES: [&str; 3] = ["alpha", "beta", "gamma"];

fn agents(dir: &std::path::Path, server: &NatsServer) -> Vec<Up> {
    let agents: Vec<Up> = (0..3)
        .map(|i| agent_configured(dir, &server.url(), NAMES[i], &[], &[], &config(i, dir)))
        .collect();
    agents[0].wait("three nodes in alpha's registry", |u| {
        u.get("/v1/nodes").as_array().map_or(0, Vec::len) == 3
    });
    agents
}

/// Where agent `i` listens on `port`.
fn at(i: usize, port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, i as u8 + 1], port))
}

/// This agent's rows of `/v1/addresses` for `service` on `port`.
fn address_rows(up: &Up, service: &str, port: u16) -> Vec<Value> {
    up.get("/v1/addresses")
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["service"] == service && r["port"] == port)
        .cloned()
        .collect()
}

/// The instances behind `service`'s address on `port` as `up` sees them, when it listens.
fn behind(up: &Up, service: &str, port: u16) -> Option<Vec<String>> {
    let rows = address_rows(up, service, port);
    let row = rows.first()?;
    (row["listening"] == true).then(|| {
        row["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().to_owned())
            .collect()
    })
}

/// Serving instances of `service` over every agent: (agent index, (instance, node, pid, port)).
fn serving(agents: &[Up], service: &str) -> Vec<(usize, (String, String, u32, u16))> {
    agents
        .iter()
        .enumerate()
        .flat_map(|(i, a)| a.serving(service).into_iter().map(move |s| (i, s)))
        .collect()
}

/// Kills agent `i` and the instances it runs, as the machine dying would.
fn machine_dies(agents: &mut [Up], i: usize, pids: &[u32]) {
    agents[i].signal(libc::SIGKILL);
    for &pid in pids {
        // SAFETY: signals a process group this test's agent started.
        unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
    }
    assert!(wait_gone(pids), "the dead machine's instances are gone");
}

/// `dig @server -p port name +short`, as a plain client asks: its answer.
fn dig(server: SocketAddr, name: &str) -> String {
    let out = std::process::Command::new("dig")
        .args([
            &format!("@{}", server.ip()),
            "-p",
            &server.port().to_string(),
            name,
            "+short",
            "+time=2",
            "+tries=1",
        ])
        .output()
        .expect("dig is required (Debian package bind9-dnsutils; ./scripts/test installs it when run as root)");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn dns_spec(port: u16, out: &std::path::Path) -> String {
    format!(
        r#"
[service.fleet-dns]
replicas = 1
command = "dnsmasq --keep-in-foreground --conf-file=/dev/null --pid-file= --no-resolv --no-hosts --bind-interfaces --listen-address=127.0.0.1 --port={{port}} --host-record=ns.fleet.local,127.0.0.53"
resources = {{ cpu_cores = 0.1, memory_mib = 32 }}
health = {{ kind = "tcp", interval_ms = 200, start_period_ms = 5000 }}
address = {{ port = {port}, protocol = "udp" }}
publish = {{ file = "{out}/dns.lines", format = "lines", command = "printf '%s' \"$QS_ENDPOINTS\" > {out}/dns.command" }}
"#,
        out = out.display()
    )
}

/// Seed 000's DNS story through one address: `dig @<any agent> -p PORT ns.fleet.local` is
/// answered by dnsmasq wherever it runs; when the machine serving it dies, the fleet places
/// it again and the same address answers again. Every change is published.
#[test]
fn a_udp_address_answers_through_every_agent_and_follows_its_instance_across_a_machine_death() {
    require_dnsmasq();
    let dir = tempfile::tempdir().unwrap();
    // The publish command runs as the instances' user (nobody, under a root agent).
    let out = dir.path().join("published");
    std::fs::create_dir(&out).unwrap();
    std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let server = NatsServer::start().expect("nats-server 2.10+ (scripts/test installs it)");
    let mut agents = agents(dir.path(), &server);
    let port = free_port();
    agents[0].apply(&dns_spec(port, &out));
    agents[0].wait("dnsmasq serving", |_| {
        serving(&agents, "fleet-dns").len() == 1
    });
    let (host, (_, _, pid, instance_port)) = serving(&agents, "fleet-dns").remove(0);
    let endpoint = format!("127.0.0.1:{instance_port}");
    for (i, a) in agents.iter().enumerate() {
        a.wait("every agent forwards the address to it", |u| {
            behind(u, "fleet-dns", port).is_some_and(|e| e == [endpoint.clone()])
        });
        let answer = resolve_at(at(i, port), "ns.fleet.local", Duration::from_secs(2));
        assert_eq!(answer, Some([127, 0, 0, 53]), "through agent {i}");
        assert_eq!(
            dig(at(i, port), "ns.fleet.local"),
            "127.0.0.53",
            "dig through agent {i}"
        );
    }
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap_or_default();
    agents[0].wait("the instance published to the file", |_| {
        read("dns.lines") == format!("{endpoint}\n")
    });
    agents[0].wait("and to the steward's command", |_| {
        read("dns.command") == format!("{endpoint}\n")
    });

    // The machine serving it dies; a survivor's address keeps being asked.
    let survivor = (host + 1) % 3;
    let through = at(survivor, port);
    machine_dies(&mut agents, host, &[pid]);
    let died = Instant::now();
    let mut silent_since: Option<Instant> = None;
    // Answers before the first silence came from the dead instance's last moments.
    let gap = loop {
        assert!(died.elapsed() < LIMIT, "the address never answered again");
        let asked = Instant::now();
        match resolve_at(through, "ns.fleet.local", Duration::from_millis(200)) {
            Some(ip) => {
                assert_eq!(ip, [127, 0, 0, 53]);
                if let Some(since) = silent_since {
                    break asked - since;
                }
            }
            None => {
                silent_since.get_or_insert(asked);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("the address went unanswered for {gap:?} after the machine died");
    let alive: Vec<Up> = agents
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != host)
        .map(|(_, a)| a)
        .collect();
    let now = serving(&alive, "fleet-dns");
    assert_eq!(now.len(), 1, "placed again once: {now:?}");
    let moved = format!("127.0.0.1:{}", now[0].1.3);
    assert_ne!(moved, endpoint);
    assert_eq!(
        dig(through, "ns.fleet.local"),
        "127.0.0.53",
        "a plain client's view"
    );
    alive[0].wait("the new instance published to the file", |_| {
        read("dns.lines") == format!("{moved}\n")
    });
    alive[0].wait("and to the command of its steward", |_| {
        read("dns.command") == format!("{moved}\n")
    });
}

/// An instance that answers each HTTP request with its instance id.
// One line: a TOML basic string has its newlines escaped.
const WHO: &str = r#"python3 -c 'import http.server as h, os, sys\nclass H(h.BaseHTTPRequestHandler):\n    def do_GET(s):\n        b = os.environ[\"QS_INSTANCE\"].encode()\n        s.send_response(200)\n        s.send_header(\"Content-Length\", str(len(b)))\n        s.end_headers()\n        s.wfile.write(b)\n    def log_message(s, *a):\n        pass\nh.ThreadingHTTPServer((\"127.0.0.1\", int(sys.argv[1])), H).serve_forever()' {port}"#;

/// `GET /` through `addr` with `host` as its `Host`: the status and the body.
fn get(addr: SocketAddr, host: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// An HTTP address told apart by `Host` spreads requests over the replicas anywhere; its
/// primary port reaches only the primary, and follows the promotion when the primary's
/// machine dies; a TCP address carries connections to an instance on another node.
#[test]
fn http_tcp_and_primary_addresses_reach_instances_anywhere_and_follow_a_promotion() {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start().expect("nats-server 2.10+ (scripts/test installs it)");
    let mut agents = agents(dir.path(), &server);
    let (reads, writes, raw) = (free_port(), free_port(), free_port());
    let spec = format!(
        r#"
[service.kv]
pattern = "stateful-read"
replicas = 2
auto_promote = true
command = "{WHO}"
resources = {{ cpu_cores = 0.1, memory_mib = 32 }}
health = {{ kind = "http", path = "/", interval_ms = 200, start_period_ms = 10000 }}
address = {{ port = {reads}, protocol = "http", host = "kv.fleet.local", primary_port = {writes} }}

[service.plain]
replicas = 1
command = "{WHO}"
resources = {{ cpu_cores = 0.1, memory_mib = 32 }}
health = {{ kind = "http", path = "/", interval_ms = 200, start_period_ms = 10000 }}
address = {{ port = {raw}, protocol = "tcp" }}
"#
    );
    agents[0].apply(&spec);
    agents[0].wait("two kv instances and one plain serving", |_| {
        serving(&agents, "kv").len() == 2 && serving(&agents, "plain").len() == 1
    });
    let instances = agents[0].get("/v1/instances");
    let role_of = |id: &str| -> String {
        instances
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["instance"] == id)
            .map(|i| i["role"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let kv = serving(&agents, "kv");
    let primary = kv
        .iter()
        .find(|(_, s)| role_of(&s.0) == "primary")
        .expect("a primary")
        .clone();
    for a in &agents {
        a.wait("every agent forwards both kv ports and plain's", |u| {
            behind(u, "kv", reads).is_some_and(|e| e.len() == 2)
                && behind(u, "kv", writes).is_some_and(|e| e.len() == 1)
                && behind(u, "plain", raw).is_some_and(|e| e.len() == 1)
        });
    }
    // Reads spread over both replicas, through any agent.
    let mut seen = std::collections::BTreeSet::new();
    for n in 0..12 {
        let (status, body) = get(at(n % 3, reads), "kv.fleet.local");
        assert_eq!(status, 200, "{body}");
        seen.insert(body);
    }
    let both: std::collections::BTreeSet<String> = kv.iter().map(|(_, s)| s.0.clone()).collect();
    assert_eq!(seen, both, "reads reach every replica");
    let (status, body) = get(at(1, reads), "other.fleet.local");
    assert_eq!(
        status, 404,
        "no service of the address has that host: {body}"
    );
    // Writes reach the primary only.
    for n in 0..6 {
        assert_eq!(
            get(at(n % 3, writes), "kv.fleet.local"),
            (200, primary.1.0.clone())
        );
    }
    // A TCP address carries a connection to plain's one instance, from every agent.
    let plain = serving(&agents, "plain").remove(0).1.0;
    for i in 0..3 {
        assert_eq!(
            get(at(i, raw), "anything"),
            (200, plain.clone()),
            "through agent {i}"
        );
    }

    // The primary's machine dies: the replica is promoted and the write port follows it.
    let (host, (_, _, pid, _)) = primary.clone();
    let plain_pid: Vec<u32> = agents[host]
        .serving("plain")
        .into_iter()
        .map(|s| s.2)
        .collect();
    let pids: Vec<u32> = [pid].into_iter().chain(plain_pid).collect();
    machine_dies(&mut agents, host, &pids);
    let survivor = (host + 1) % 3;
    let other = kv
        .iter()
        .find(|(_, s)| s.0 != primary.1.0)
        .unwrap()
        .1
        .0
        .clone();
    agents[survivor].wait("the write port reaches the promoted replica", |_| {
        std::net::TcpStream::connect_timeout(&at(survivor, writes), Duration::from_secs(1)).is_ok()
            && get(at(survivor, writes), "kv.fleet.local") == (200, other.clone())
    });
}
