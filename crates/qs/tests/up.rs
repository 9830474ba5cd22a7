//! `qs up` end to end: a real agent process running real child processes on loopback.

mod common;

use common::*;
use std::time::Instant;

/// A fleet running [`WEB`] with its two replicas serving.
fn with_web(dir: &std::path::Path) -> Up {
    let up = Up::start(dir);
    up.apply(WEB);
    up.wait("two serving replicas", |u| u.serving("web").len() == 2);
    up
}

const WEB: &str = r#"
[service.web]
replicas = 2
command = "{qs} model-double --port {port} --model web"
resources = { cpu_cores = 0.5, memory_mib = 128 }
health = { kind = "http", path = "/health", interval_ms = 200 }
"#;

#[test]
fn a_crashed_instance_restarts_in_place_then_moves_and_its_node_remembers() {
    let dir = tempfile::tempdir().unwrap();
    let up = with_web(dir.path());
    let before = up.serving("web");
    assert_ne!(
        before[0].1, before[1].1,
        "stateless replicas go to different nodes"
    );
    assert!(before.iter().all(|i| alive(i.2)));
    let (victim, node, pid, _) = before[0].clone();

    // One crash: the same instance starts again on the same node, after a backoff.
    up.kill(&victim);
    assert!(wait_gone(&[pid]));
    up.wait("the restart in place", |u| {
        u.serving("web")
            .iter()
            .any(|i| i.0 == victim && i.1 == node && i.2 != pid)
    });
    let restarted = up.events().iter().any(|e| {
        e["event"]["event"] == "instance-restarting" && e["event"]["instance"] == victim.as_str()
    });
    assert!(restarted, "the restart is in the ledger");

    // A crash loop: after its restarts the node gives the instance up; another takes over.
    let kills = 1 + up.crash_loop("web", &victim, 2);
    assert_eq!(kills, 3, "two restarts in place, then given up");
    let events = up.events();
    let crashes = events
        .iter()
        .filter(|e| {
            e["event"]["event"] == "instance-exited"
                && e["event"]["instance"] == victim.as_str()
                && e["event"]["outcome"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("signal 9"))
        })
        .count();
    assert_eq!(crashes, 3, "every crash is in the ledger");
    let raised = events
        .iter()
        .filter(|e| e["event"]["event"] == "pressure-raised" && e["node"] == node.as_str())
        .count();
    assert_eq!(
        raised, 3,
        "{node}'s pressure for web rose with each failure"
    );
    let row = up.explain("web", &node);
    // The node may decline now (if it runs the replacement); if it offers, pressure shows.
    if let Some(p) = row["offer"]["composite"]["pressure"].as_f64() {
        assert!(p > 0.3, "{row}");
    }
}

#[test]
fn real_cpu_load_scales_a_service_out() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path());
    up.apply(
        r#"
[service.burner]
replicas = 1
max_replicas = 2
command = "sh -c 'while :; do :; done'"
resources = { cpu_cores = 0.2, memory_mib = 32 }
"#,
    );
    up.wait("a scale-out", |u| u.serving("burner").len() == 2);
    let events = up.events();
    let hot = events.iter().any(|e| e["event"]["event"] == "instance-hot");
    let sensed = events
        .iter()
        .any(|e| e["event"]["event"] == "sensed" && e["event"]["reason"]["reason"] == "hot");
    let queried = events.iter().any(|e| e["event"]["event"] == "query-sent");
    assert!(
        hot && sensed && queried,
        "the 5-step story is in the ledger"
    );
    let (status, _) = up.http("DELETE", "/v1/specs/burner", "");
    assert_eq!(status, 200);
    up.wait("the burners to stop", |u| u.serving("burner").is_empty());
}

#[test]
fn a_command_that_cannot_start_is_a_failure_not_a_crash_of_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path());
    up.apply(
        r#"
[service.broken]
command = "no-such-binary-for-qs-tests --serve"
resources = { cpu_cores = 0.1, memory_mib = 16 }
"#,
    );
    up.wait("a failed start in the ledger", |u| {
        u.events().iter().any(|e| {
            e["event"]["outcome"]["outcome"] == "failed-start"
                && e["event"]["outcome"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("not found"))
        })
    });
    up.wait("pressure for it", |u| {
        u.events()
            .iter()
            .any(|e| e["event"]["event"] == "pressure-raised")
    });
    assert_eq!(up.get("/health")["status"], "ok");
}

#[test]
fn bad_input_gets_a_4xx_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path());
    let check = |method: &str, path: &str, body: &str, want_status: u16, want: &str| {
        let (status, v) = up.http(method, path, body);
        assert_eq!(status, want_status, "{method} {path}: {v}");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains(want), "{method} {path}: {msg}");
    };
    check(
        "POST",
        "/v1/specs?file=bad.toml",
        "[service.x]\nresources = { cpu_cores = 0, memory_mib = 8 }\n",
        400,
        "bad.toml:2:27: service.x.resources.cpu_cores: must be more than 0",
    );
    check(
        "POST",
        "/v1/specs?file=empty.toml",
        "",
        400,
        "declares no service, job or model",
    );
    check(
        "POST",
        "/v1/specs",
        "this is not toml [",
        400,
        "spec.toml:1:",
    );
    check(
        "DELETE",
        "/v1/specs/nothing-here",
        "",
        404,
        "no service, job or model named nothing-here",
    );
    check(
        "DELETE",
        "/v1/specs/Not_A_Name",
        "",
        400,
        "not a valid service name",
    );
    check(
        "POST",
        "/v1/chaos/kill/ghost-1",
        "",
        404,
        "no instance or node ghost-1",
    );
    check(
        "GET",
        "/v1/nodes?explain=nope",
        "",
        404,
        "no service or job named nope",
    );
    let (status, _) = up.http("GET", "/v1/events?from=abc", "");
    assert_eq!(status, 400);
    assert_eq!(up.get("/health")["status"], "ok");
}

#[test]
fn sigterm_stops_every_instance() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = with_web(dir.path());
    let pids: Vec<u32> = up.serving("web").iter().map(|i| i.2).collect();
    let status = up.signal(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
    assert!(wait_gone(&pids), "no instance outlives the agent");
}

#[test]
fn after_kill_9_a_restart_reaps_the_orphans_counts_them_as_failures_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = with_web(dir.path());
    let orphans: Vec<u32> = up.serving("web").iter().map(|i| i.2).collect();
    up.signal(libc::SIGKILL);
    assert!(
        orphans.iter().all(|&p| alive(p)),
        "kill -9 leaves the instances running"
    );
    drop(up);
    let up = Up::start(dir.path());
    assert!(
        wait_gone(&orphans),
        "the restarted agent reaped its predecessor's processes"
    );
    // The desired state survived in the state directory: it runs again without re-applying.
    up.wait("two serving replicas again", |u| {
        u.serving("web").len() == 2
    });
    assert!(up.serving("web").iter().all(|i| !orphans.contains(&i.2)));
    // What went down with the agent failed on its node: its pressure for web rose.
    let ledger = up.events();
    assert!(ledger.iter().any(|e| {
        e["event"]["outcome"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("outlived its killed agent"))
    }));
    assert!(
        ledger.iter().any(|e| {
            e["event"]["event"] == "pressure-raised" && e["event"]["service"] == "web"
        })
    );
}

/// A panic in a node's runtime ends the whole process (not the runtime alone, which left the
/// agent up with `/health` ok, no heartbeats and its children running); the restart reaps
/// what ran and recovers.
#[test]
fn a_panic_ends_the_agent_and_the_restart_leaves_no_orphan() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = with_web(dir.path());
    let (_, node, _, _) = up.serving("web")[0].clone();
    let orphans: Vec<u32> = up.serving("web").iter().map(|i| i.2).collect();
    let (status, answer) = up.http("POST", &format!("/v1/chaos/panic/{node}"), "");
    assert_eq!(status, 200, "{answer}");
    let exit = up.wait_exit();
    assert_eq!(exit.code(), Some(70), "{exit:?}; log:\n{}", up.log());
    assert!(
        up.log().contains("a panic injected into node"),
        "{}",
        up.log()
    );
    drop(up);
    let up = Up::start(dir.path());
    assert!(wait_gone(&orphans), "the restart reaped what ran");
    up.wait("two serving replicas again", |u| {
        u.serving("web").len() == 2
    });
}

/// A root agent never lends its identity: an instance runs as `nobody` (or the user its spec
/// names), without the right to read the agent's API token, and in a clean environment.
#[test]
fn instances_of_a_root_agent_run_as_an_unprivileged_user() {
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the agent must run as root to switch users");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Root only where the config names it.
    let up = Up::start_with_config(dir.path(), "child_users = [\"nobody\", \"root\"]\n");
    let token = dir.path().join("state/api.token");
    let probe = |user: &str| {
        format!(
            "[job.who-{user}]\ncommand = \"sh -c 'echo uid=$(id -u) home=$HOME; cat {} >/dev/null 2>&1 && echo token=read || echo token=denied'\"\nuser = \"{user}\"\nresources = {{ cpu_cores = 0.1, memory_mib = 16 }}\n",
            token.display()
        )
    };
    up.apply(&probe("nobody").replace("user = \"nobody\"\n", ""));
    up.apply(&probe("root"));
    // A user the config does not name: its instance does not start.
    up.apply(&probe("daemon"));
    let logs = || {
        let mut out = String::new();
        for node in ["alpha", "beta", "gamma"] {
            let d = dir.path().join("state/nodes").join(node).join("logs");
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("who-") && name.ends_with(".stdout.log") {
                    out.push_str(&format!(
                        "{name}: {}",
                        std::fs::read_to_string(e.path()).unwrap_or_default()
                    ));
                }
            }
        }
        out
    };
    up.wait("both jobs reported", |_| {
        logs().matches("token=").count() == 2
    });
    let text = logs();
    assert!(
        text.contains("who-nobody") && text.contains("uid=65534") && text.contains("token=denied"),
        "{text}"
    );
    assert!(
        text.contains("uid=0") && text.contains("token=read"),
        "{text}"
    );
    assert!(!text.contains("who-daemon"), "{text}");
    up.wait("the refused user's start failed", |u| {
        u.events().iter().any(|e| {
            e["event"]["service"] == "who-daemon"
                && e["event"]["outcome"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("child_users"))
        })
    });
}

/// A tmpfs mounted for one test, unmounted (lazily) when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts one of `size` at `at`; `None` where that cannot be done (not root, or no
    /// right to mount), which the caller reports.
    fn mount(at: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A full disk degrades the agent instead of breaking it: `/health` says `degraded` with the
/// reason while the ledger cannot write, events wait, and once there is room again the
/// ledger is reopened, `/health` is ok, every event committed before is still there, and
/// those of the outage follow them. Needs root (a tmpfs is mounted and filled up).
#[test]
fn a_full_disk_degrades_and_recovers_with_no_committed_event_lost() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&dir.path().join("disk"), "16m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    std::fs::write(dir.path().join("fleet.toml"), FLEET).unwrap();
    let fleet = dir.path().join("fleet.toml");
    let state = disk.0.join("state");
    let up = Up::spawn(
        dir.path(),
        &[
            "up",
            "--fleet",
            fleet.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
    );
    up.apply(WEB);
    up.wait("two serving replicas", |u| u.serving("web").len() == 2);
    let before = up.events();
    // Fill the disk to the last byte.
    let filler = disk.0.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.write_all(&[0u8; 512]);
        let _ = f.sync_all();
    }
    // Work that the ledger must record: a burst of short jobs.
    up.apply(
        "[job.burst]\nparallelism = 40\ncommand = \"true\"\nresources = { cpu_cores = 0.05, memory_mib = 16 }\n",
    );
    up.wait("the agent degraded by the full disk", |u| {
        let h = u.get("/health");
        h["status"] == "degraded" && h["reason"].as_str().is_some_and(|r| r.contains("ledger"))
    });
    assert_eq!(
        up.get("/v1/services").as_array().unwrap().len(),
        2,
        "it still answers"
    );
    std::fs::remove_file(&filler).unwrap();
    up.wait("the ledger back", |u| u.get("/health")["status"] == "ok");
    up.wait("the outage's events recorded", |u| {
        u.events().iter().any(|e| e["event"]["service"] == "burst")
    });
    let after = up.events();
    assert!(after.len() > before.len());
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "every committed event is still there"
    );
}

#[test]
fn a_name_resolves_through_dnsmasq_before_and_after_its_instance_moves() {
    require_dnsmasq();
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path());
    let spec = include_str!("../../../examples/dns.toml");
    up.apply(spec);
    up.wait("a serving DNS replica", |u| {
        u.serving("fleet-dns").len() == 1
    });
    let (first, node, _, port) = up.serving("fleet-dns")[0].clone();
    assert_eq!(resolve(port, "ns.fleet.local"), Some([127, 0, 0, 53]));
    let kills = up.crash_loop("fleet-dns", &first, 1);
    assert!(kills >= 3, "{kills}");
    assert_eq!(
        resolve(port, "ns.fleet.local"),
        None,
        "the old instance is gone"
    );
    let (_, new_node, _, new_port) = up.serving("fleet-dns")[0].clone();
    assert_ne!(
        new_node, node,
        "with its pressure, {node} lost to another node"
    );
    let start = Instant::now();
    let mut answer = None;
    while answer.is_none() && start.elapsed() < LIMIT {
        answer = resolve(new_port, "forge.fleet.local");
    }
    assert_eq!(answer, Some([127, 0, 0, 12]));
}

#[test]
fn draining_a_node_moves_its_instances_away() {
    let dir = tempfile::tempdir().unwrap();
    let up = with_web(dir.path());
    let node = up.serving("web")[0].1.clone();
    let text = cli(&["--api", &up.api, "drain", &node, "--timeout-s", "30"]);
    assert!(text.contains(&format!("{node} is drained")), "{text}");
    up.wait("two serving replicas elsewhere", |u| {
        let now = u.serving("web");
        now.len() == 2 && now.iter().all(|i| i.1 != node)
    });
    let row = up.explain("web", &node);
    assert_eq!(row["declines"], "draining", "{row}");
    let pressure = up
        .events()
        .iter()
        .any(|e| e["event"]["event"] == "pressure-raised");
    assert!(!pressure, "a drain is not a failure");
    let (status, _) = up.http("POST", "/v1/nodes/nowhere/drain", "");
    assert_eq!(status, 404);
}

#[test]
fn a_damaged_desired_state_cache_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fleet.toml"), FLEET).unwrap();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    std::fs::write(dir.path().join("state/specs.json"), "[{ not json").unwrap();
    let port = free_port();
    let out = qs()
        .args(["up", "--fleet"])
        .arg(dir.path().join("fleet.toml"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("specs.json") && err.contains("desired-state cache"),
        "{err}"
    );
}

#[test]
fn a_dead_node_loses_its_instances_to_the_survivors() {
    let dir = tempfile::tempdir().unwrap();
    let up = with_web(dir.path());
    let (_, node, pid, _) = up.serving("web")[0].clone();
    let (status, v) = up.http("POST", &format!("/v1/chaos/kill/{node}"), "");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["killed_node"], node.as_str());
    assert!(wait_gone(&[pid]), "the dead node's processes died with it");
    up.wait("two serving replicas on the survivors", |u| {
        let now = u.serving("web");
        now.len() == 2 && now.iter().all(|i| i.1 != node)
    });
    let nodes = up.get("/v1/nodes");
    assert!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["node"] != node.as_str()),
        "{node} expired"
    );
}

/// The README's run command stops cleanly on SIGTERM while its story is under way.
#[test]
fn the_demo_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("qs-up-demo.log")).unwrap();
    let child = qs()
        .args(["up", "--demo", "--state-dir"])
        .arg(dir.path().join("state"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut up = Up {
        child: Some(child),
        api: format!("http://127.0.0.1:{port}"),
        dir: dir.path().to_path_buf(),
        token: Default::default(),
    };
    up.wait("the demo's services", |u| {
        let (status, v) = u.http("GET", "/v1/services", "");
        status == 200 && v.as_array().is_some_and(|a| a.len() >= 4)
    });
    let status = up.signal(libc::SIGTERM);
    assert!(status.success(), "{status:?}; log:\n{}", up.log());
    assert!(up.log().contains("qs up: stopped"), "{}", up.log());
}

/// `qs chaos pause` on a virtual node: frozen, it is judged by its silence, its instance
/// serves again elsewhere, and after the pause it rejoins; the fleet ends with the wanted
/// count and the command reports the recovery.
#[test]
fn a_paused_node_is_replaced_and_rejoins() {
    let dir = tempfile::tempdir().unwrap();
    let up = with_web(dir.path());
    let (_, node, _, _) = up.serving("web")[0].clone();
    let text = cli(&[
        "chaos",
        "pause",
        &node,
        "--for-ms",
        "2500",
        "--timeout-s",
        "25",
        "--api",
        &up.api,
    ]);
    assert!(text.contains(&format!("paused node {node}")), "{text}");
    assert!(
        text.contains("disrupted") && text.contains("recovery time"),
        "{text}"
    );
    assert!(text.contains("placed web"), "{text}");
    up.wait("every node back and web at its wanted count", |u| {
        u.get("/v1/nodes").as_array().map_or(0, Vec::len) == 3 && u.serving("web").len() == 2
    });
}

/// The API is the operator's: a page in a browser (cross-origin, `text/plain`, a rebound
/// `Host`), a client without the token, or one with the wrong content type changes nothing,
/// and nothing it asked for runs; what the operator's CLI sends does.
#[test]
fn the_api_answers_only_its_operator() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path());
    let addr = up.api.trim_start_matches("http://").to_owned();
    let marker = dir.path().join("pwned");
    let evil = format!(
        "[service.evil]\ncommand = \"touch {}; sleep 60\"\nresources = {{ cpu_cores = 0.1, memory_mib = 16 }}\n",
        marker.display()
    );
    let token = up.token().expect("the token file /health names").to_owned();
    let auth = format!("Authorization: Bearer {token}\r\n");
    let cases = [
        // A browser's simple request from another site, its DNS name rebound to loopback.
        (
            "Host: evil.example:80\r\nOrigin: http://evil.example\r\nContent-Type: text/plain\r\n"
                .to_owned(),
            421,
        ),
        // The right Host, from another site, no token.
        (
            format!("Host: {addr}\r\nOrigin: http://evil.example\r\nContent-Type: text/plain\r\n"),
            401,
        ),
        // The token, but not the content type the endpoint declares.
        (
            format!("Host: {addr}\r\n{auth}Content-Type: text/plain\r\n"),
            415,
        ),
        (format!("Host: {addr}\r\n{auth}"), 415),
        // A wrong token.
        (
            format!(
                "Host: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/toml\r\n",
                "0".repeat(64)
            ),
            401,
        ),
    ];
    for (headers, want) in &cases {
        let (status, body) = up.http_raw("POST", "/v1/specs?file=evil.toml", headers, &evil);
        assert_eq!(status, *want, "{headers:?}: {body}");
    }
    // Reading needs the token too (a rebound page could otherwise read the fleet).
    let host = format!("Host: {addr}\r\n");
    assert_eq!(up.http_raw("GET", "/v1/nodes", &host, "").0, 401);
    assert_eq!(up.http_raw("GET", "/v1/events?from=0", &host, "").0, 401);
    assert_eq!(
        up.http_raw("GET", "/v1/nodes", "Host: evil.example\r\n", "")
            .0,
        421
    );
    assert_eq!(up.http_raw("GET", "/health", &host, "").0, 200);
    assert_eq!(up.http_raw("GET", "/metrics", &host, "").0, 200);
    // The operator's CLI finds the token by itself; a wrong one given is refused.
    let out = qs()
        .args(["--api", &up.api, "--token", &"1".repeat(64), "services"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Authorization: Bearer"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spec = dir.path().join("web.toml");
    std::fs::write(&spec, WEB).unwrap();
    cli(&["--api", &up.api, "apply", "-f", spec.to_str().unwrap()]);
    up.wait("web serving", |u| u.serving("web").len() == 2);
    let services = up.get("/v1/services");
    assert!(
        services
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["name"] != "evil"),
        "{services}"
    );
    assert!(!marker.exists(), "a refused request's command ran");
}

/// Waiting requests are bounded: past the limit one is answered 429 at once.
#[test]
fn long_polls_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let up = std::sync::Arc::new(Up::start(dir.path()));
    up.token().expect("token");
    let waiting: Vec<_> = (0..40)
        .map(|_| {
            let up = up.clone();
            std::thread::spawn(move || {
                up.http("GET", "/v1/events?from=1000000000&wait_ms=4000", "")
                    .0
            })
        })
        .collect();
    let statuses: Vec<u16> = waiting.into_iter().map(|t| t.join().unwrap()).collect();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    let answered = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!((answered, refused), (32, 8), "{statuses:?}");
}

/// A self-signed certificate for 127.0.0.1 and localhost, and its key, as PEM files in `dir`.
fn self_signed(dir: &std::path::Path, name: &str) -> (String, String) {
    let made =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (
        cert.to_str().unwrap().to_owned(),
        key.to_str().unwrap().to_owned(),
    )
}

/// A non-loopback API with --tls-cert and --tls-key starts without --insecure-listen and
/// speaks only TLS: the CLI reaches it with the certificate it trusts (finding the token by
/// itself), a plain HTTP request gets no answer, and a certificate it does not trust is
/// refused before any request is sent.
#[test]
fn a_non_loopback_api_is_served_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "api");
    let (other, _) = self_signed(dir.path(), "other");
    let state = dir.path().join("state");
    let port = free_port();
    let args = ["up", "--state-dir", state.to_str().unwrap()];
    let tls = ["--tls-cert", &cert, "--tls-key", &key];
    let up = Up::launch(
        dir.path(),
        &[&args[..], &tls[..]].concat(),
        &[],
        &format!("0.0.0.0:{port}"),
        format!("https://127.0.0.1:{port}"),
    );
    let status = |ca: &str| {
        qs().args(["--api", &up.api, "--tls-ca", ca, "status"])
            .output()
            .unwrap()
    };
    up.wait("the API over TLS", |_| status(&cert).status.success());
    let shown = String::from_utf8_lossy(&status(&cert).stdout).into_owned();
    assert!(shown.contains("agent: ok"), "{shown}");

    // Plain HTTP on the same port: the TLS server reads it as a bad handshake.
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    plain
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    use std::io::{Read, Write};
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/1.1 200"),
        "plain HTTP got an answer"
    );

    let refused = status(&other);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(err.contains("invalid peer certificate"), "{err}");
}

/// A ledger past `ledger_max_bytes` is compacted while the agent runs: it comes back under
/// the bound, the snapshot counts what went, and the start of every running instance is
/// carried, so the ledger still tells what runs where.
#[test]
fn the_ledger_is_compacted_past_its_size_bound_and_keeps_what_runs() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start_with_config(dir.path(), "ledger_max_bytes = 65536\n");
    up.apply(
        r#"
[service.many]
replicas = 45
max_per_node = 15
command = "sleep 600"
resources = { cpu_cores = 0.05, memory_mib = 8 }
"#,
    );
    up.wait("45 replicas", |u| u.serving("many").len() == 45);
    let state = |u: &Up| u.get("/checkpoint_state")["ledger"].clone();
    up.wait("a compaction", |u| {
        state(u)["compacted"]["compactions"].as_u64() >= Some(1)
    });
    let ledger = state(&up);
    let compacted = &ledger["compacted"];
    assert!(compacted["removed"].as_u64() > Some(0), "{ledger}");
    // Within the bound, or past it by less than what starts the next compaction.
    assert!(
        ledger["bytes"].as_u64() <= Some(65_536 + 65_536 / 8),
        "{ledger}"
    );
    let events = up.events();
    assert_ne!(
        events[0]["seq"], 0,
        "the first placement's story went: {ledger}"
    );
    let running: std::collections::BTreeSet<String> =
        up.serving("many").into_iter().map(|i| i.0).collect();
    let told: std::collections::BTreeSet<String> = events
        .iter()
        .filter(|e| e["event"]["event"] == "instance-started")
        .filter_map(|e| e["event"]["instance"].as_str().map(str::to_owned))
        .collect();
    assert!(
        running.is_subset(&told),
        "every running instance's start is still in the ledger: {:?}",
        running.difference(&told).collect::<Vec<_>>()
    );
    let (status, _) = up.http("DELETE", "/v1/specs/many", "");
    assert_eq!(status, 200);
    up.wait("the replicas to stop", |u| u.serving("many").is_empty());
}
