//! `qs bench tasks`: durable tasks through a real `qs agent`, embedded (no NATS) and on a real
//! nats-server, side by side in one run with Celery on a Redis broker (`acks_late`, the same
//! no-op task, as many worker processes as we have workers) where Celery and redis-server are
//! installed.
//!
//! Each of our columns: `clients` threads submit `tasks` no-op tasks over the API (one
//! iteration each); `workers` Rust SDK workers (threads of this process, each its own socket
//! connection) claim and complete them. Completions per second run from the first
//! submission to the last completion; submit-to-complete latency runs from a task's
//! submission to its completion's acknowledgement. Then every worker holds a long task and
//! checkpoints it `checkpoints` times: the round trip of each checkpoint (on the agent's disk
//! before it is answered) is the overhead of an iteration boundary.

use crate::bench::{emit, ratio, round_to};
use crate::bench_agents::{BenchAgent, wait_until};
use anyhow::{Context, Result, bail};
use qs_worker::{Claimed, Worker};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What the suite is asked to do.
pub struct TasksBench {
    pub tasks: usize,
    pub workers: usize,
    pub clients: usize,
    pub checkpoints: usize,
    pub celery: bool,
}

/// One column's figures.
struct Column {
    completions_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// The Celery side: a Python driver written to a temporary directory and run there.
const CELERY_DRIVER: &str = include_str!("../../../scripts/bench_celery.py");

const LIMIT: Duration = Duration::from_secs(120);
/// The Celery driver's whole run, at most.
const CELERY_LIMIT: Duration = Duration::from_secs(600);

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn submit(api: &str, key: &str, payload: &str, iterations: u32) -> Result<()> {
    let body = serde_json::json!({
        "class": "batch", "idempotency_key": key, "payload": payload,
        "max_iterations": iterations, "deadline_ms": 3_600_000,
    });
    let (status, answer) = crate::client::request(
        api,
        "POST",
        "/v1/tasks",
        Some(&body.to_string()),
        Duration::from_secs(30),
    )?;
    if status != 201 && status != 200 {
        bail!("submitting {key}: {status} {answer}");
    }
    Ok(())
}

/// Submits and completes `b.tasks` no-op tasks; then the checkpoints' round trips.
fn column(agent: &BenchAgent, socket: &Path, b: &TasksBench, name: &str) -> Result<Column> {
    wait_until("the workers' socket", LIMIT, || socket.exists())?;
    let n = b.tasks;
    let t0 = Instant::now();
    let submitted_us: Arc<Vec<std::sync::atomic::AtomicU64>> =
        Arc::new((0..n).map(|_| Default::default()).collect());
    let completed_us: Arc<Vec<std::sync::atomic::AtomicU64>> =
        Arc::new((0..n).map(|_| Default::default()).collect());
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..b.workers {
        let mut worker = Worker::connect(socket, &format!("bench-{w}"), &[])?;
        let (completed_us, done) = (completed_us.clone(), done.clone());
        workers.push(std::thread::spawn(move || -> Result<()> {
            while done.load(Ordering::Relaxed) < n {
                let Claimed::Task(t) = worker.claim(Duration::from_millis(200))? else {
                    continue;
                };
                let i: usize = t.payload.parse().context("a bench task's payload")?;
                worker.complete(&t, "")?;
                completed_us[i].store(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..b.clients {
        let (api, next, submitted_us) = (agent.api.clone(), next.clone(), submitted_us.clone());
        let run = format!("{name}-{}", std::process::id());
        clients.push(std::thread::spawn(move || -> Result<()> {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok(());
                }
                submitted_us[i].store(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
                submit(&api, &format!("{run}-{i}"), &i.to_string(), 1)?;
            }
        }));
    }
    for c in clients {
        c.join()
            .map_err(|_| anyhow::anyhow!("a client panicked"))??;
    }
    wait_until("every task completed", LIMIT, || {
        done.load(Ordering::Relaxed) >= n
    })?;
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("a worker panicked"))??;
    }
    let last_us = completed_us
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .max()
        .unwrap_or(1);
    let mut latency_ms: Vec<f64> = (0..n)
        .map(|i| {
            let (s, c) = (
                submitted_us[i].load(Ordering::Relaxed),
                completed_us[i].load(Ordering::Relaxed),
            );
            c.saturating_sub(s) as f64 / 1000.0
        })
        .collect();
    latency_ms.sort_by(f64::total_cmp);
    Ok(Column {
        completions_per_s: n as f64 / (last_us.max(1) as f64 / 1e6),
        p50_ms: percentile(&latency_ms, 0.5),
        p99_ms: percentile(&latency_ms, 0.99),
    })
}

/// Each worker checkpoints one long task `checkpoints` times (1 KiB of state each); the
/// round trips, sorted, in milliseconds.
fn checkpoints(agent: &BenchAgent, socket: &Path, b: &TasksBench, name: &str) -> Result<Vec<f64>> {
    let run = format!("{name}-cp-{}", std::process::id());
    for w in 0..b.workers {
        submit(&agent.api, &format!("{run}-{w}"), "long", 10_000)?;
    }
    let state = "x".repeat(1024);
    let mut threads = Vec::new();
    for w in 0..b.workers {
        let mut worker = Worker::connect(socket, &format!("bench-cp-{w}"), &[])?;
        let (state, count) = (state.clone(), b.checkpoints);
        threads.push(std::thread::spawn(move || -> Result<Vec<f64>> {
            let start = Instant::now();
            let t = loop {
                if let Claimed::Task(t) = worker.claim(Duration::from_millis(200))? {
                    break t;
                }
                anyhow::ensure!(start.elapsed() < LIMIT, "no long task to claim");
            };
            let mut ms = Vec::with_capacity(count);
            for i in 0..count {
                let s = Instant::now();
                worker.checkpoint(&t, i as u32 + 1, &state)?;
                ms.push(s.elapsed().as_secs_f64() * 1000.0);
            }
            worker.complete(&t, "")?;
            Ok(ms)
        }));
    }
    let mut all = Vec::new();
    for t in threads {
        all.extend(
            t.join()
                .map_err(|_| anyhow::anyhow!("a worker panicked"))??,
        );
    }
    all.sort_by(f64::total_cmp);
    Ok(all)
}

fn ours(b: &TasksBench, name: &str, nats: Option<&str>) -> Result<Column> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("qs-bench-tasks-{name}-"))
        .tempdir()?;
    let mut extra: Vec<std::ffi::OsString> = Vec::new();
    if let Some(url) = nats {
        extra.extend([
            "--nats".into(),
            url.into(),
            "--trust-on-first-use".into(),
            "--fleet".into(),
            "bench".into(),
        ]);
    }
    let agent = BenchAgent::start("n0", dir.path(), &extra)?;
    let socket = dir.path().join("n0").join("tasks.sock");
    let col = column(&agent, &socket, b, name)?;
    emit(
        "tasks",
        format!("{name}.completions_per_s"),
        round_to(col.completions_per_s, 0),
        "1/s",
    );
    emit(
        "tasks",
        format!("{name}.submit_to_complete_p50_ms"),
        round_to(col.p50_ms, 2),
        "ms",
    );
    emit(
        "tasks",
        format!("{name}.submit_to_complete_p99_ms"),
        round_to(col.p99_ms, 2),
        "ms",
    );
    let cp = checkpoints(&agent, &socket, b, name)?;
    emit(
        "tasks",
        format!("{name}.checkpoint_p50_ms"),
        round_to(percentile(&cp, 0.5), 2),
        "ms",
    );
    emit(
        "tasks",
        format!("{name}.checkpoint_p99_ms"),
        round_to(percentile(&cp, 0.99), 2),
        "ms",
    );
    Ok(col)
}

/// Celery with a Redis broker through `scripts/bench_celery.py`; `None` when either is
/// missing (said on stderr).
fn celery(b: &TasksBench) -> Result<Option<Column>> {
    let dir = tempfile::Builder::new()
        .prefix("qs-bench-celery-")
        .tempdir()?;
    let driver = dir.path().join("bench_celery.py");
    std::fs::write(&driver, CELERY_DRIVER)?;
    let child = std::process::Command::new("python3")
        .arg(&driver)
        .args(["--tasks", &b.tasks.to_string()])
        .args(["--workers", &b.workers.to_string()])
        .args(["--clients", &b.clients.to_string()])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running python3")?;
    let pid = child.id();
    let (ended, ends) = std::sync::mpsc::sync_channel::<()>(1);
    let watchdog = std::thread::spawn(move || {
        // Bounded: past CELERY_LIMIT the driver (and its broker and workers, which it ends
        // on SIGTERM) is stopped. Its end is heard on the channel, never guessed from its
        // pid, which may belong to another process once it is reaped.
        if ends.recv_timeout(CELERY_LIMIT) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            // SAFETY: signalling our own child, not yet reaped (its wait has not returned).
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    });
    let out = child.wait_with_output();
    let _ = ended.send(());
    let _ = watchdog.join();
    let out = out?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.code() == Some(3) {
        eprintln!("qs bench tasks: no Celery column: {}", stdout.trim());
        return Ok(None);
    }
    if !out.status.success() {
        bail!(
            "the Celery driver failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .with_context(|| format!("the Celery driver's answer: {stdout}"))?;
    let f = |k: &str| v[k].as_f64().with_context(|| format!("{k} in {v}"));
    Ok(Some(Column {
        completions_per_s: f("completions_per_s")?,
        p50_ms: f("p50_ms")?,
        p99_ms: f("p99_ms")?,
    }))
}

pub fn tasks_suite(b: &TasksBench) -> Result<()> {
    emit("tasks", "workers".into(), b.workers as f64, "count");
    emit("tasks", "tasks".into(), b.tasks as f64, "count");
    let embedded = ours(b, "embedded", None)?;
    let server = qs_fabric::nats_server::NatsServer::start()?;
    let nats = ours(b, "nats", Some(&server.url()))?;
    drop(server);
    let celery = if b.celery { celery(b)? } else { None };
    if let Some(c) = &celery {
        emit(
            "tasks",
            "celery.completions_per_s".into(),
            round_to(c.completions_per_s, 0),
            "1/s",
        );
        emit(
            "tasks",
            "celery.submit_to_complete_p50_ms".into(),
            round_to(c.p50_ms, 2),
            "ms",
        );
        emit(
            "tasks",
            "celery.submit_to_complete_p99_ms".into(),
            round_to(c.p99_ms, 2),
            "ms",
        );
        for (name, col) in [("embedded", &embedded), ("nats", &nats)] {
            emit(
                "tasks",
                format!("{name}.completions_vs_celery"),
                ratio(col.completions_per_s, c.completions_per_s),
                "x",
            );
        }
    }
    Ok(())
}
