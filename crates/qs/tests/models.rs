//! Model runtimes end to end (seed 003): `qs up` with `qs model-double` runtimes on one
//! simulated 24 GB GPU (the double for a GPU; the runtimes are real processes that claim
//! their VRAM and fail "out of memory" when it is not free), reached through the agent's
//! OpenAI-compatible entry point.

mod common;

use common::models::*;
use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::mpsc;

/// A model that takes 3 s to load.
const SLOW: &str = r#"
[model.slow]
load_ms = 3000
[[model.slow.tier]]
name = "1g"
vram_mib = 1024
command = "{qs} model-double --port {port} --model slow --vram-mib 1024 --load-ms 3000"
"#;

#[test]
fn a_swap_lets_streams_finish_waits_for_the_vram_and_loses_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let up = pair_with_code_warm(dir.path());

    // Three streams for code in flight (60 tokens at 50/s: about 1.2 s each) ...
    let (first_tx, first_rx) = mpsc::channel();
    let streams: Vec<_> = (0..3)
        .map(|_| {
            let tx = first_tx.clone();
            let c = client(&up);
            std::thread::spawn(move || {
                post(
                    &c,
                    "/v1/chat/completions",
                    &chat("code", 60, true),
                    Some(tx),
                )
            })
        })
        .collect();
    for _ in 0..3 {
        first_rx.recv_timeout(LIMIT).expect("a stream began");
    }
    // The resident model answers all along, swap or not.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let resident = {
        let (c, done) = (client(&up), done.clone());
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                statuses.push(post(&c, "/v1/chat/completions", &chat("tiny", 2, false), None).0);
            }
            statuses
        })
    };
    // ... then requests for conv, which cannot sit beside code.
    let convs: Vec<_> = (0..2)
        .map(|_| {
            let c = client(&up);
            std::thread::spawn(move || {
                post(&c, "/v1/chat/completions", &chat("conv", 4, false), None)
            })
        })
        .collect();
    for s in streams {
        let (status, _, text) = s.join().unwrap();
        assert_eq!(status, 200, "{text}");
        let chunks = text.matches("data: {").count();
        assert_eq!(chunks, 60, "every token of the stream came: {text}");
        assert!(text.contains("data: [DONE]"), "{text}");
    }
    for c in convs {
        let (status, _, text) = c.join().unwrap();
        assert_eq!(status, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["model"], "conv");
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = resident.join().unwrap();
    assert!(
        !statuses.is_empty() && statuses.iter().all(|s| *s == 200),
        "the resident model was served through the swap: {statuses:?}"
    );
    assert_eq!(model_state(&up, "tiny"), "warm");

    let steps = steps(&up);
    let begun = position(&steps, "conv", "swap-begun");
    let drained = position(&steps, "code", "drained");
    let stopped = position(&steps, "code", "stopped");
    let released = position(&steps, "conv", "vram-released");
    let started = position(&steps, "conv", "started");
    let loaded = position(&steps, "conv", "loaded");
    assert!(
        begun < drained && drained < stopped && stopped < released && released < started,
        "drain, stop, VRAM released, then start: {steps:?}"
    );
    assert!(started < loaded);
    assert!(
        !steps.iter().any(|(_, s)| s == "load-failed"),
        "no runtime ran out of memory: {steps:?}"
    );
    let drained_event = up
        .events()
        .into_iter()
        .find(|e| e["event"]["step"] == "drained")
        .unwrap();
    assert_eq!(
        drained_event["event"]["detail"], "0 request(s) cut",
        "no generation was cut"
    );
    assert_eq!(model_state(&up, "conv"), "warm");
    assert_eq!(model_state(&up, "code"), "absent");

    // The entry point's figures, per model and class.
    let (_, metrics) = up.http("GET", "/metrics", "");
    let metrics = metrics.as_str().unwrap_or("").to_owned();
    let figure = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let code = "{model=\"code\",class=\"interactive\"}";
    // One request before the streams, three streams.
    assert_eq!(
        figure(&format!("qs_model_queue_wait_seconds_count{code}")),
        4.0,
        "{metrics}"
    );
    assert_eq!(
        figure(&format!("qs_model_time_to_first_token_seconds_count{code}")),
        4.0
    );
    assert_eq!(
        figure(&format!("qs_model_tokens_per_second_count{code}")),
        3.0,
        "the streams"
    );
    let rate = figure(&format!("qs_model_tokens_per_second_sum{code}")) / 3.0;
    assert!(
        rate > 10.0 && rate < 200.0,
        "the double decodes at 50/s: {rate}"
    );
    let ok = "qs_model_requests_total{model=\"conv\",class=\"interactive\",outcome=\"ok\"}";
    assert_eq!(figure(ok), 2.0, "{metrics}");
}

#[test]
fn a_runtime_that_fails_three_starts_is_reset_and_alerted() {
    let dir = tempfile::tempdir().unwrap();
    let up = start(dir.path(), "");
    declare(
        &up,
        r#"
[model.broken]
load_ms = 100
[[model.broken.tier]]
name = "1g"
vram_mib = 1024
command = "sh -c 'echo no weights >&2; exit 3' {port}"
"#,
        "broken",
    );
    let (status, retry, text) = post(&up, "/v1/chat/completions", &chat("broken", 2, false), None);
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("failed to start"), "{text}");
    assert!(retry.is_some(), "a 503 says when to try again");
    up.wait("the watchdog's reset in the ledger", |u| {
        steps(u).iter().any(|(_, s)| s == "watchdog-reset")
    });
    let steps = steps(&up);
    let failed = steps
        .iter()
        .filter(|(m, s)| m == "broken" && s == "load-failed")
        .count();
    assert_eq!(failed, 3, "{steps:?}");
    let reasons: Vec<Value> = up
        .events()
        .into_iter()
        .filter(|e| e["event"]["step"] == "load-failed")
        .map(|e| e["event"]["detail"].clone())
        .collect();
    assert!(
        reasons.iter().all(|r| r.as_str().unwrap().contains("exit")),
        "each failed start says why: {reasons:?}"
    );
    let (_, metrics) = up.http("GET", "/metrics", "");
    let metrics = metrics.as_str().unwrap_or("").to_owned();
    assert!(
        metrics.contains("qs_model_watchdog_resets_total 1"),
        "{metrics}"
    );
    // `qs status` shows the alert.
    let status = cli(&["--api", &up.api, "status"]);
    assert!(
        status
            .lines()
            .any(|l| l.contains("ALERT model broken") && l.contains("3 failed starts")),
        "{status}"
    );
}

#[test]
fn a_shared_runtime_is_routed_to_and_never_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut runtime = Killed(
        qs().args([
            "model-double",
            "--port",
            &port.to_string(),
            "--model",
            "ext",
        ])
        .spawn()
        .unwrap(),
    );
    let up = start(dir.path(), "");
    let spec = format!(
        "[model.ext]\nauthority = \"shared\"\nurl = \"http://127.0.0.1:{port}\"\n[[model.ext.tier]]\nname = \"any\"\nvram_mib = 4096\n"
    );
    declare(&up, &spec, "ext");
    let (status, _, text) = post(&up, "/v1/chat/completions", &chat("ext", 3, false), None);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"model\":\"ext\""), "{text}");
    // Withdrawn: routed to no more, and still running: not ours to stop.
    let (status, v) = up.http("DELETE", "/v1/specs/ext", "");
    assert_eq!(status, 200, "{v}");
    up.wait("the model withdrawn", |u| model_state(u, "ext").is_empty());
    assert!(
        runtime.0.try_wait().unwrap().is_none(),
        "the shared runtime runs on"
    );
}

/// A child process killed when dropped, test failed or not.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_full_stasis_answers_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let up = start(dir.path(), "[models]\nmax_waiting = 1\n");
    declare(&up, SLOW, "slow");
    let c = client(&up);
    let first =
        std::thread::spawn(move || post(&c, "/v1/chat/completions", &chat("slow", 2, false), None));
    up.wait("the first request waits for the load", |u| {
        model_state(u, "slow") == "loading"
    });
    let (status, retry, text) = post(&up, "/v1/chat/completions", &chat("slow", 2, false), None);
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("too many requests waiting"), "{text}");
    let secs: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!(secs >= 1, "{secs}");
    let (status, _, text) = first.join().unwrap();
    assert_eq!(status, 200, "the waiting one is served: {text}");
}

#[test]
fn bad_requests_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let up = start(dir.path(), "");
    declare(&up, PAIR, "code");
    // A model no GPU here holds (40 GiB on a 24 GiB GPU).
    declare(
        &up,
        r#"
[model.huge]
[[model.huge.tier]]
name = "40g"
vram_mib = 40960
command = "{qs} model-double --port {port} --model huge --vram-mib 40960"
"#,
        "huge",
    );
    let cases: [(&str, Value, u16, &str); 4] = [
        (
            "/v1/chat/completions",
            chat("nope", 1, false),
            404,
            "no model \"nope\" in the fleet; the models are: [code, conv, huge, tiny]",
        ),
        (
            "/v1/completions",
            serde_json::json!({ "prompt": "x" }),
            400,
            "names no `model`",
        ),
        (
            "/v1/embeddings",
            serde_json::json!({ "model": "x".repeat(300), "input": "x" }),
            400,
            "longer than",
        ),
        (
            "/v1/chat/completions",
            chat("huge", 1, false),
            503,
            "model huge needs 40960 MiB at its smallest tier (40g); the GPUs of node gpu-box \
             hold at most 23040 MiB",
        ),
    ];
    for (path, body, want, says) in cases {
        let (status, _, text) = post(&up, path, &body, None);
        assert_eq!(status, want, "{path}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{path}: {message}");
    }
    let (status, _, text) = post_raw(&up, "/v1/chat/completions", "{\"model\": \"code\", }");
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("the body is not JSON") && text.contains("line 1"),
        "{text}"
    );
    // A body over the 2 MiB a request may have: 413, whatever the rest of it would say.
    let addr = up.api.trim_start_matches("http://").to_owned();
    let conn = TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(LIMIT)).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        up.token().unwrap(),
        3 << 20
    );
    let mut writer = conn.try_clone().unwrap();
    // Written from another thread: the agent answers before it has read it all.
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(head.as_bytes());
        let _ = writer.write_all(&vec![b' '; 3 << 20]);
    });
    let mut status_line = String::new();
    BufReader::new(conn).read_line(&mut status_line).unwrap();
    assert!(status_line.contains(" 413 "), "{status_line}");
    sender.join().unwrap();
    // None of them reached a runtime: nothing was started.
    assert!(started_pids(&up, "code").is_empty() && started_pids(&up, "huge").is_empty());
}

#[test]
fn a_crashed_resident_model_starts_again() {
    let dir = tempfile::tempdir().unwrap();
    let up = start(dir.path(), "");
    declare(&up, PAIR, "tiny");
    up.wait("the resident model loaded", |u| {
        model_state(u, "tiny") == "warm"
    });
    let pids = |u: &Up| started_pids(u, "tiny");
    let first = pids(&up)[0];
    // SAFETY: a signal to the runtime process this test's agent started.
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    up.wait("a second start, warm", |u| {
        pids(u).len() == 2 && model_state(u, "tiny") == "warm"
    });
    let (status, _, text) = post(&up, "/v1/chat/completions", &chat("tiny", 2, false), None);
    assert_eq!(status, 200, "{text}");
    assert!(steps(&up).contains(&("tiny".to_owned(), "load-failed".to_owned())));
}

#[test]
fn a_runtime_over_its_vram_quota_is_reset_and_alerted() {
    let dir = tempfile::tempdir().unwrap();
    let up = start(dir.path(), "");
    declare(&up, PAIR, "conv");
    let (status, _, text) = post(&up, "/v1/chat/completions", &chat("conv", 2, false), None);
    assert_eq!(status, 200, "{text}");
    let pid = started_pids(&up, "conv")[0];
    // The runtime grows past its tier's 8704 MiB: the simulated driver now says 12 GiB.
    let claim = dir.path().join(format!("state/gpus/gpu-box/0/claim-{pid}"));
    assert!(claim.exists(), "the double claimed its VRAM");
    std::fs::write(&claim, (12u64 << 30).to_string()).unwrap();
    up.wait("the watchdog's reset", |u| {
        u.events().iter().any(|e| {
            e["event"]["step"] == "watchdog-reset"
                && e["event"]["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("over its VRAM quota"))
        })
    });
    assert!(wait_gone(&[pid]), "killed");
    // Asked again, it starts afresh within its quota.
    let (status, _, text) = post(&up, "/v1/chat/completions", &chat("conv", 2, false), None);
    assert_eq!(status, 200, "{text}");
    assert_eq!(started_pids(&up, "conv").len(), 2);
}

#[test]
fn after_kill_9_a_restarted_agent_ends_the_runtime_its_predecessor_left() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = start(dir.path(), "");
    declare(&up, PAIR, "code");
    let (status, _, text) = post(&up, "/v1/chat/completions", &chat("code", 2, false), None);
    assert_eq!(status, 200, "{text}");
    let pid = started_pids(&up, "code")[0];
    up.signal(libc::SIGKILL);
    assert!(alive(pid), "a runtime outlives its agent's kill -9");
    // Its 19 GiB would leave no room for a new code runtime: the restart ends it first.
    let up = start(dir.path(), "");
    assert!(wait_gone(&[pid]), "the orphan was ended");
    up.wait("the models from the KV", |u| {
        !model_state(u, "code").is_empty()
    });
    let (status, _, text) = post(&up, "/v1/chat/completions", &chat("code", 2, false), None);
    assert_eq!(status, 200, "{text}");
    assert!(
        !steps(&up).iter().any(|(_, s)| s == "load-failed"),
        "no start ran out of memory: {:?}",
        steps(&up)
    );
}

#[test]
fn a_durable_stasis_is_resumed_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[models]\ndurable_after_ms = 200\n";
    let mut up = start(dir.path(), config);
    declare(&up, SLOW, "slow");
    let c = client(&up);
    let waiting =
        std::thread::spawn(move || post(&c, "/v1/chat/completions", &chat("slow", 2, false), None));
    up.wait("the long wait written down", |u| {
        steps(u).contains(&("slow".to_owned(), "stasis".to_owned()))
    });
    // A restart before the model is warm: the client's request is answered (the agent is
    // going), and the wait it stood for is not forgotten.
    up.signal(libc::SIGTERM);
    let (status, _, _) = waiting.join().unwrap();
    assert_ne!(status, 200);
    let up = start(dir.path(), config);
    up.wait("the model brought in with no new request", |u| {
        model_state(u, "slow") == "warm"
    });
    let resumed = up.events().into_iter().any(|e| {
        e["event"]["step"] == "stasis"
            && e["event"]["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("interactive: resumed after a restart"))
    });
    assert!(resumed, "{:?}", steps(&up));
    up.wait("the stasis ended", |u| {
        steps(u).contains(&("slow".to_owned(), "stasis-ended".to_owned()))
    });
}

#[test]
fn a_local_interactive_request_revokes_a_lease_within_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let up = start(dir.path(), "");
    declare(&up, PAIR, "code");
    declare(&up, PAIR, "conv");
    // Work another node placed here, under its lease: a stream of 500 tokens (10 s).
    let (first_tx, first_rx) = mpsc::channel();
    let c = client(&up);
    let leased = std::thread::spawn(move || {
        post_with(
            &c,
            "/v1/chat/completions",
            "x-qs-lease: peer-a\r\nx-qs-priority: batch\r\n",
            &chat("code", 500, true),
            Some(first_tx),
        )
    });
    first_rx
        .recv_timeout(LIMIT)
        .expect("the leased stream began");
    // A local interactive request for the other model takes the GPU back.
    let (status, _, text) = post(&up, "/v1/chat/completions", &chat("conv", 2, false), None);
    assert_eq!(status, 200, "{text}");
    let (_, _, stream) = leased.join().unwrap();
    assert!(
        !stream.contains("[DONE]") && stream.matches("data: {").count() < 500,
        "the leased stream was cut"
    );
    let events = up.events();
    let step = |model: &str, step: &str| {
        events
            .iter()
            .find(|e| e["event"]["model"] == model && e["event"]["step"] == step)
            .unwrap_or_else(|| panic!("no {step} of {model}: {:?}", steps(&up)))
            .clone()
    };
    step("code", "lease-revoked");
    let drained = step("code", "drained");
    assert_eq!(drained["event"]["detail"], "1 request(s) cut");
    // The bound is 1 s; a loaded machine's timers may add to it, never the 10 s the stream
    // would have run.
    let took_ms = drained["event"]["took_ms"].as_u64().unwrap();
    assert!(took_ms < 3_000, "revoked after {took_ms} ms");
    step("conv", "loaded");
}

#[test]
fn leased_work_of_a_node_that_left_the_fleet_is_swept() {
    let dir = tempfile::tempdir().unwrap();
    let up = start(dir.path(), "");
    let glacial = SLOW.replace("3000", "20000");
    declare(&up, &glacial, "slow");
    let c = client(&up);
    let leased = std::thread::spawn(move || {
        post_with(
            &c,
            "/v1/chat/completions",
            "x-qs-lease: peer-a\r\n",
            &chat("slow", 2, false),
            None,
        )
    });
    up.wait("the leased request waits for the load", |u| {
        model_state(u, "slow") == "loading"
    });
    let (status, v) = up.http("POST", "/v1/chaos/kill/peer-a", "");
    assert_eq!(status, 200, "{v}");
    let (status, _, text) = leased.join().unwrap();
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("its lease holder left the fleet"), "{text}");
}
