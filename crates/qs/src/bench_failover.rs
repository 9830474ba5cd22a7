//! `qs bench failover`: three `qs agent` processes on one real nats-server, the agent running
//! a one-replica service killed with SIGKILL together with its instance (a machine dying),
//! `trials` times: how long until the survivors see it dead, until the service serves again,
//! and with `--address` how long a client asking through the service's stable address on a
//! survivor goes unanswered.

use crate::bench::emit;
use crate::bench_agents::{BenchAgent, wait_until};
use std::time::{Duration, Instant};

/// The service of the plain suite: python3's http.server, checked over HTTP.
const ECHO: &str = "[service.echo]\nreplicas = 1\ncommand = \"python3 -m http.server {port} --bind 127.0.0.1\"\nresources = { cpu_cores = 0.1, memory_mib = 32 }\nhealth = { kind = \"http\", path = \"/\", interval_ms = 100, start_period_ms = 10000 }\n";

/// The service of `--address`: dnsmasq behind a UDP address on `port`.
fn dns(port: u16) -> String {
    format!(
        "[service.fleet-dns]\nreplicas = 1\ncommand = \"dnsmasq --keep-in-foreground --conf-file=/dev/null --pid-file= --no-resolv --no-hosts --bind-interfaces --listen-address=127.0.0.1 --port={{port}} --host-record=ns.fleet.local,127.0.0.53\"\nresources = {{ cpu_cores = 0.1, memory_mib = 32 }}\nhealth = {{ kind = \"tcp\", interval_ms = 100, start_period_ms = 5000 }}\naddress = {{ port = {port}, protocol = \"udp\" }}\n"
    )
}

/// Where agent `i` listens for addresses: 127.0.0.(i + 1), as three machines would each on
/// its own.
fn listen_ip(i: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(127, 0, 0, i as u8 + 1)
}

/// One DNS query for `ns.fleet.local` through `server`: whether an answer came within
/// `timeout`.
fn answered(sock: &std::net::UdpSocket, server: std::net::SocketAddr, id: u16) -> bool {
    let mut q = vec![(id >> 8) as u8, id as u8, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["ns", "fleet", "local"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    if sock.send_to(&q, server).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + QUERY_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            // An answer to this query (not a late one to an earlier), with a record.
            if n > 12 && buf[..2] == q[..2] && u16::from_be_bytes([buf[6], buf[7]]) > 0 {
                return true;
            }
        }
    }
    false
}

/// How long one query waits for its answer, and the pause between queries.
const QUERY_TIMEOUT: Duration = Duration::from_millis(50);
const QUERY_EVERY: Duration = Duration::from_millis(10);

/// A client asking through an address over and over from a thread: the longest time it went
/// unanswered (from the first query left unanswered to the next one answered), once it has
/// been answered again after a silence.
struct Asker {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    gap: std::sync::Arc<std::sync::Mutex<Option<Duration>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Asker {
    fn start(server: std::net::SocketAddr) -> anyhow::Result<Asker> {
        use std::sync::atomic::Ordering;
        let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
        sock.set_read_timeout(Some(Duration::from_millis(5)))?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let gap = std::sync::Arc::new(std::sync::Mutex::new(None));
        let (s, g) = (stop.clone(), gap.clone());
        let thread = std::thread::spawn(move || {
            let mut silent_since: Option<Instant> = None;
            let mut id: u16 = 0;
            while !s.load(Ordering::Relaxed) {
                id = id.wrapping_add(1);
                let asked = Instant::now();
                if answered(&sock, server, id) {
                    if let Some(since) = silent_since.take() {
                        *g.lock().unwrap_or_else(|p| p.into_inner()) = Some(asked - since);
                    }
                } else {
                    silent_since.get_or_insert(asked);
                }
                std::thread::sleep(QUERY_EVERY);
            }
        });
        Ok(Asker {
            stop,
            gap,
            thread: Some(thread),
        })
    }

    fn gap(&self) -> Option<Duration> {
        *self.gap.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Asker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// See the module docs.
pub fn failover_suite(trials: usize, address: bool) -> anyhow::Result<()> {
    if address {
        let found = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq"]
            .iter()
            .any(|p| std::path::Path::new(p).exists());
        anyhow::ensure!(
            found,
            "qs bench failover --address needs dnsmasq (Debian: dnsmasq-base)"
        );
    }
    let server = qs_fabric::nats_server::NatsServer::start()?;
    let dir = std::env::temp_dir().join(format!("qs-bench-failover-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut agents = Vec::new();
    for i in 0..3 {
        // The three nodes share this machine's CPU: only the service's own demand decides.
        let config = dir.join(format!("n{i}.toml"));
        std::fs::write(
            &config,
            format!(
                "[thresholds]\ncpu = 1.0\nmemory = 1.0\n[addresses]\nlisten = \"{}\"\n",
                listen_ip(i)
            ),
        )?;
        let extra: Vec<std::ffi::OsString> = vec![
            "--nats".into(),
            server.url().into(),
            "--trust-on-first-use".into(),
            "--fleet".into(),
            "bench".into(),
            "--config".into(),
            config.into(),
        ];
        agents.push(BenchAgent::start(&format!("n{i}"), &dir, &extra)?);
    }
    let limit = Duration::from_secs(30);
    wait_until("three nodes", limit, || {
        agents.iter().all(|a| a.live().len() == 3)
    })?;
    let port = qs_agent::exec::free_port()?;
    let (service, spec) = if address {
        ("fleet-dns", dns(port))
    } else {
        ("echo", ECHO.to_owned())
    };
    let (status, body) = crate::client::request(
        &agents[0].api,
        "POST",
        "/v1/specs?file=bench.toml",
        Some(&spec),
        Duration::from_secs(5),
    )?;
    anyhow::ensure!(status == 200, "applying the bench service: {body}");
    let (mut detect_ms, mut serve_ms, mut unanswered_ms) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..trials {
        let mut host = None;
        wait_until("the service serving", limit, || {
            host = agents.iter().position(|a| !a.serving(service).is_empty());
            host.is_some()
        })?;
        let host = host.expect("found above");
        let (_, pid) = agents[host].serving(service)[0].clone();
        // A client of the address on a survivor, answered before the machine dies.
        let through = std::net::SocketAddr::from((listen_ip((host + 1) % 3), port));
        let asker = if address {
            let probe = std::net::UdpSocket::bind("127.0.0.1:0")?;
            probe.set_read_timeout(Some(Duration::from_millis(5)))?;
            wait_until("an answer through the address", limit, || {
                answered(&probe, through, 1)
            })?;
            Some(Asker::start(through)?)
        } else {
            None
        };
        let t0 = Instant::now();
        agents[host].kill9();
        // SAFETY: kill(2) on the process group of an instance this bench started.
        unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
        let victim = agents[host].node.clone();
        let (mut detected, mut served) = (None, None);
        wait_until("failover", limit, || {
            let survivors = agents.iter().enumerate().filter(|(i, _)| *i != host);
            for (_, a) in survivors {
                if detected.is_none() && !a.live().contains(&victim) {
                    detected = Some(t0.elapsed());
                }
                if served.is_none() && !a.serving(service).is_empty() {
                    served = Some(t0.elapsed());
                }
            }
            detected.is_some()
                && served.is_some()
                && asker.as_ref().is_none_or(|a| a.gap().is_some())
        })?;
        detect_ms.push(detected.expect("waited for").as_secs_f64() * 1e3);
        serve_ms.push(served.expect("waited for").as_secs_f64() * 1e3);
        if let Some(a) = asker {
            unanswered_ms.push(a.gap().expect("waited for").as_secs_f64() * 1e3);
        }
        agents[host].spawn()?;
        wait_until("the restarted node to rejoin", limit, || {
            agents.iter().all(|a| a.live().len() == 3)
        })?;
    }
    drop(agents);
    let _ = std::fs::remove_dir_all(&dir);
    let bench = if address {
        "failover_address"
    } else {
        "failover"
    };
    for (metric, mut v) in [
        ("detection", detect_ms),
        ("serving_again", serve_ms),
        ("address_unanswered", unanswered_ms),
    ] {
        if v.is_empty() {
            continue;
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        for (name, x) in [("p50", at(0.5)), ("p99", at(0.99)), ("max", at(1.0))] {
            emit(bench, format!("{metric}.{name}"), x.round(), "ms");
        }
    }
    if address {
        emit(bench, "address_unanswered.target_p99".into(), 2000.0, "ms");
    }
    emit(bench, "trials".into(), trials as f64, "kills");
    Ok(())
}
