//! The harness of the end-to-end tests: a real `qs` process (`qs up` or `qs agent`) on a free
//! loopback port, driven through its HTTP API, waited on with bounds, and stopped on drop.
// Each test binary uses part of it.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub const LIMIT: Duration = Duration::from_secs(30);

/// A mesh node's config: no CPU sensing (many agents on one machine), all its memory.
pub const MESH_CONFIG: &str = "[thresholds]\ncpu_sensed = false\nmemory = 1.0\n";

/// Whether one of `nodes` is the mesh's root and its `GET /v1/mesh` satisfies `holds`.
pub fn root_status(nodes: &[&Up], holds: impl Fn(&Value) -> bool) -> bool {
    nodes.iter().any(|u| {
        let s = u.get("/v1/mesh");
        s["is_root"] == true && holds(&s)
    })
}

pub const FLEET: &str = r#"
[node.alpha]
level = 0
cpu_cores = 4
memory_mib = 4096

[node.beta]
level = 1
cpu_cores = 4
memory_mib = 4096

[node.gamma]
level = 1
cpu_cores = 4
memory_mib = 4096
"#;

pub fn qs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qs"))
}

/// Runs `qs ARGS`, which must succeed; returns what it printed.
pub fn cli(args: &[&str]) -> String {
    let out = qs().args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "qs {}: {text}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// A path of the repository (where `scripts/` lives), from the crate's manifest.
pub fn repo(path: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
        .display()
        .to_string()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `qs up`; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Up {
    pub child: Option<Child>,
    pub api: String,
    pub dir: PathBuf,
    /// The API token, read from the file `/health` names once the agent answers.
    pub token: std::sync::OnceLock<String>,
}

impl Up {
    /// `qs up` of [`FLEET`] with its state in `dir`.
    pub fn start(dir: &std::path::Path) -> Up {
        std::fs::write(dir.join("fleet.toml"), FLEET).unwrap();
        let fleet = dir.join("fleet.toml");
        let state = dir.join("state");
        Up::spawn(
            dir,
            &[
                "up",
                "--fleet",
                fleet.to_str().unwrap(),
                "--state-dir",
                state.to_str().unwrap(),
            ],
        )
    }

    /// [`Up::start`] with `config` as its `--config` file.
    pub fn start_with_config(dir: &std::path::Path, config: &str) -> Up {
        Up::start_fleet(dir, FLEET, config)
    }

    /// `qs up` of `fleet` with `config` as its `--config` file and its state in `dir`.
    pub fn start_fleet(dir: &std::path::Path, fleet: &str, config: &str) -> Up {
        Up::start_fleet_with_env(dir, fleet, config, &[])
    }

    /// [`Up::start_fleet`] with environment variables set for the process.
    pub fn start_fleet_with_env(
        dir: &std::path::Path,
        fleet: &str,
        config: &str,
        env: &[(&str, &str)],
    ) -> Up {
        std::fs::write(dir.join("fleet.toml"), fleet).unwrap();
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let arg = |f: &str| dir.join(f).display().to_string();
        Up::spawn_with_env(
            dir,
            &[
                "up",
                "--fleet",
                &arg("fleet.toml"),
                "--state-dir",
                &arg("state"),
                "--config",
                &arg("config.toml"),
            ],
            env,
        )
    }

    /// `qs ARGS --listen 127.0.0.1:PORT` on a free port, logging into `dir`; returns once its
    /// API answers.
    pub fn spawn(dir: &std::path::Path, args: &[&str]) -> Up {
        Up::spawn_with_env(dir, args, &[])
    }

    /// [`Up::spawn`] with environment variables set for the process.
    pub fn spawn_with_env(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Up {
        let port = free_port();
        let up = Up::launch(
            dir,
            args,
            env,
            &format!("127.0.0.1:{port}"),
            format!("http://127.0.0.1:{port}"),
        );
        up.wait("the API", |up| up.http("GET", "/health", "").0 == 200);
        up
    }

    /// `qs ARGS --listen LISTEN`, logging into `dir`, its API at `api`; returns at once.
    pub fn launch(
        dir: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
        listen: &str,
        api: String,
    ) -> Up {
        let port = listen.rsplit_once(':').map_or("", |(_, p)| p);
        let log = std::fs::File::create(dir.join(format!("qs-up-{port}.log"))).unwrap();
        let child = qs()
            .args(args)
            .envs(env.iter().copied())
            .args(["--listen", listen])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Up {
            child: Some(child),
            api,
            dir: dir.to_path_buf(),
            token: Default::default(),
        }
    }

    /// One counter or gauge of the agent's `/metrics` (its name with labels), 0 when absent.
    pub fn metric(&self, name: &str) -> f64 {
        let (status, text) = self.http("GET", "/metrics", "");
        assert_eq!(status, 200);
        let text = text.as_str().unwrap_or_default().to_owned();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Messages the agent dropped for `reason`.
    pub fn rejected(&self, reason: &str) -> f64 {
        self.metric(&format!(
            "qs_messages_rejected_total{{reason=\"{reason}\"}}"
        ))
    }

    /// The agent's API token, as its state directory holds it (the file `/health` names).
    pub fn token(&self) -> Option<&str> {
        if self.token.get().is_none() {
            let (status, health) = self.http_raw("GET", "/health", "", "");
            let file = health["token_file"].as_str().filter(|_| status == 200)?;
            let text = std::fs::read_to_string(file).ok()?;
            let _ = self.token.set(text.trim().to_owned());
        }
        self.token.get().map(String::as_str)
    }

    /// Raw HTTP, so the API itself is what is tested, as the CLI sends it: with the token,
    /// and the content type the endpoint takes on a changing request.
    pub fn http(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let mut headers = String::new();
        if let Some(t) = self.token() {
            headers.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if method != "GET" {
            let kind = if path.starts_with("/v1/specs?") || path == "/v1/specs" {
                "application/toml"
            } else {
                "application/json"
            };
            headers.push_str(&format!("Content-Type: {kind}\r\n"));
        }
        let addr = self.api.trim_start_matches("http://");
        self.http_raw(method, path, &format!("Host: {addr}\r\n{headers}"), body)
    }

    /// Raw HTTP with exactly the headers given (each ending in CRLF; none added but
    /// `Connection` and `Content-Length`): for what a client other than the CLI sends.
    pub fn http_raw(&self, method: &str, path: &str, headers: &str, body: &str) -> (u16, Value) {
        let addr = self.api.trim_start_matches("http://");
        let Ok(mut s) = TcpStream::connect(addr) else {
            return (0, Value::Null);
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let headers = if headers.is_empty() {
            format!("Host: {addr}\r\n")
        } else {
            headers.to_owned()
        };
        let req = format!(
            "{method} {path} HTTP/1.1\r\n{headers}Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut raw = String::new();
        let _ = s.read_to_string(&mut raw);
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or(("", ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (
            status,
            serde_json::from_str(body).unwrap_or(Value::String(body.into())),
        )
    }

    pub fn get(&self, path: &str) -> Value {
        let (status, v) = self.http("GET", path, "");
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    pub fn apply(&self, spec: &str) {
        let (status, v) = self.http("POST", "/v1/specs?file=test.toml", spec);
        assert_eq!(status, 200, "{v}");
    }

    /// Waits (bounded by [`LIMIT`]) for a condition on the running agent.
    pub fn wait(&self, what: &str, done: impl FnMut(&Up) -> bool) {
        self.wait_within(what, LIMIT, done);
    }

    /// Waits, at most `limit`, for a condition on the running agent.
    pub fn wait_within(&self, what: &str, limit: Duration, mut done: impl FnMut(&Up) -> bool) {
        let start = Instant::now();
        while !done(self) {
            if start.elapsed() > limit {
                // The last 60 events only: a whole ledger may not come back in time.
                let (_, health) = self.http("GET", "/health", "");
                let from = health["ledger_next_seq"]
                    .as_u64()
                    .unwrap_or(0)
                    .saturating_sub(60);
                let (_, events) = self.http("GET", &format!("/v1/events?from={from}&limit=60"), "");
                let tail: Vec<String> = match events.as_array() {
                    Some(a) => a.iter().map(|e| e.to_string()).collect(),
                    None => vec![format!("(no events: {events})")],
                };
                panic!(
                    "timed out waiting for {what}; log:\n{}\nlast events:\n{}",
                    self.log(),
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Shown with a failing test's output: which step took the time.
        eprintln!("waited {:.1?} for {what}", start.elapsed());
    }

    pub fn log(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(&self.dir).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with("qs-up-") {
                out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        out
    }

    /// Serving instances of a service: (instance, node, pid, port).
    pub fn serving(&self, service: &str) -> Vec<(String, String, u32, u16)> {
        let all = self.get("/v1/instances");
        all.as_array()
            .unwrap()
            .iter()
            .filter(|i| {
                i["service"] == service && i["serving"] == true && i["pid"].as_u64().is_some()
            })
            .map(|i| {
                (
                    i["instance"].as_str().unwrap().to_owned(),
                    i["node"].as_str().unwrap().to_owned(),
                    i["pid"].as_u64().unwrap() as u32,
                    i["port"].as_u64().unwrap() as u16,
                )
            })
            .collect()
    }

    pub fn kill(&self, instance: &str) {
        let (status, v) = self.http("POST", &format!("/v1/chaos/kill/{instance}"), "");
        assert_eq!(status, 200, "{v}");
    }

    /// Kills `victim` each time it serves again (a crash loop) until its node gives it up and
    /// `want` other instances serve. Returns how many kills that took.
    pub fn crash_loop(&self, service: &str, victim: &str, want: usize) -> usize {
        let mut kills = 0;
        let mut killed_pid = None;
        // The victim serves again: in a new process (the API may show the killed one for a
        // moment after it died).
        loop {
            let again = |i: &(String, String, u32, u16)| i.0 == victim && Some(i.2) != killed_pid;
            self.wait("the victim to serve again or be replaced", |u| {
                let s = u.serving(service);
                s.iter().any(&again) || (s.len() == want && s.iter().all(|i| i.0 != victim))
            });
            let Some(running) = self.serving(service).into_iter().find(|i| again(i)) else {
                return kills;
            };
            assert!(kills < 10, "{victim} was never given up");
            self.kill(victim);
            assert!(wait_gone(&[running.2]));
            killed_pid = Some(running.2);
            kills += 1;
        }
    }

    /// This node's row of `/v1/nodes?explain=SERVICE`.
    pub fn explain(&self, service: &str, node: &str) -> Value {
        let explain = self.get(&format!("/v1/nodes?explain={service}"));
        explain["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["node"] == node)
            .unwrap_or_else(|| panic!("{node} is not in {explain}"))
            .clone()
    }

    pub fn events(&self) -> Vec<Value> {
        self.get("/v1/events?from=0&limit=10000")
            .as_array()
            .unwrap()
            .clone()
    }

    /// A mesh operation through `POST /v1/mesh/ops`, which must succeed.
    pub fn mesh_op(&self, body: &str) -> Value {
        let (status, v) = self.http("POST", "/v1/mesh/ops", body);
        assert_eq!(status, 200, "POST /v1/mesh/ops {body}: {v}");
        v
    }

    /// Its ledger's events of kind `kind` (`mesh-conflict`, ...).
    pub fn events_of(&self, kind: &str) -> usize {
        let events = self.events();
        events
            .iter()
            .filter(|e| e["event"]["event"] == kind)
            .count()
    }

    pub fn signal(&mut self, signal: i32) -> std::process::ExitStatus {
        let child = self.child.as_ref().unwrap();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        self.wait_exit()
    }

    /// Waits (bounded by [`LIMIT`], then kills it) for the process to end by itself.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > LIMIT {
                let _ = child.kill();
                return child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal(libc::SIGTERM);
        }
    }
}

/// Running or sleeping (a zombie left to PID 1 runs nothing).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.trim().to_owned()))
        .is_some_and(|r| !r.starts_with('Z') && !r.starts_with('X'))
}

pub fn wait_gone(pids: &[u32]) -> bool {
    let start = Instant::now();
    while pids.iter().any(|&p| alive(p)) {
        if start.elapsed() > LIMIT {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// A DNS query for `name` (type A); returns the first answer's IPv4 address.
pub fn resolve(port: u16, name: &str) -> Option<[u8; 4]> {
    resolve_at(([127, 0, 0, 1], port).into(), name, Duration::from_secs(2))
}

/// [`resolve`] through the server at `server`, waiting at most `timeout` for its answer.
pub fn resolve_at(server: std::net::SocketAddr, name: &str, timeout: Duration) -> Option<[u8; 4]> {
    let sock = UdpSocket::bind("127.0.0.1:0").ok()?;
    sock.set_read_timeout(Some(timeout)).ok()?;
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    sock.send_to(&q, server).ok()?;
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).ok()?;
    let answers = u16::from_be_bytes([buf[6], buf[7]]);
    (answers > 0).then(|| [buf[n - 4], buf[n - 3], buf[n - 2], buf[n - 1]])
}

/// Fails the test, saying how to get it, when dnsmasq is missing.
pub fn require_dnsmasq() {
    let installed = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq"]
        .iter()
        .any(|p| std::path::Path::new(p).exists());
    assert!(
        installed,
        "dnsmasq is required (Debian package dnsmasq-base; ./scripts/test installs it when run as root)"
    );
}

/// `qs agent` named `node` in fleet `t` of the NATS servers `urls` (trusting on first use
/// unless `extra` names an authority or a join token), with `config` as its
/// `--config` file (its own, `NODE.toml`, so agents started one after the other each read
/// theirs), state and log in `dir`.
pub fn agent_configured(
    dir: &std::path::Path,
    urls: &str,
    node: &str,
    extra: &[&str],
    env: &[(&str, &str)],
    config: &str,
) -> Up {
    let text = config;
    let config = dir.join(format!("{node}.toml"));
    std::fs::write(&config, text).unwrap();
    let state = dir.join(node);
    // Agents trust on first use unless the test gives them a fleet authority.
    let certified = extra
        .iter()
        .any(|a| *a == "--authority" || *a == "--join-token");
    Up::spawn_with_env(
        dir,
        &[
            "agent",
            "--nats",
            urls,
            "--fleet",
            "t",
            "--node",
            node,
            "--config",
            config.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .chain((!certified).then_some("--trust-on-first-use"))
        .collect::<Vec<_>>(),
        env,
    )
}

/// A client of fleet `t` at `url` that is no agent (an attacker, a writer of the KV, a
/// listener on the bus), with the runtime it runs on: multi-threaded, since the client
/// flushes what it publishes from a task of its own.
pub fn bus_client(url: &str) -> (tokio::runtime::Runtime, qs_fabric::nats::NatsFabric) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let bus = rt
        .block_on(qs_fabric::nats::NatsFabric::connect(url, "t"))
        .unwrap();
    (rt, bus)
}

/// Submits a batch task of `max_iterations` to `up` (a deadline of ten minutes); its id.
pub fn submit_task(up: &Up, key: &str, payload: &str, max_iterations: u32) -> String {
    let body = serde_json::json!({
        "class": "batch", "idempotency_key": key, "payload": payload,
        "max_iterations": max_iterations, "deadline_ms": 600000,
    });
    let (status, v) = up.http("POST", "/v1/tasks", &body.to_string());
    assert_eq!(status, 201, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

pub mod models;
pub mod systemd;
