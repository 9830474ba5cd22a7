//! A seeded chaos test of durable tasks, after Jepsen's checks: 200 tasks of four
//! checkpointed iterations each run over three `qs agent`s on one real nats-server, with Python
//! SDK workers, while the test kills workers with SIGKILL, pauses one agent with SIGSTOP past
//! its death, kills another with SIGKILL and restarts it, and restarts nats-server. Then:
//!
//! - every accepted task completed exactly once across the three ledgers;
//! - no acknowledged checkpoint was lost: a claim on a node never resumes from a state older
//!   than the last checkpoint acknowledged there for that task, while it stayed there;
//! - every task's side effect, run through the SDK's idempotent helper, was applied once.
//!
//! The seed is printed; `QS_CHAOS_SEED=N` replays the same schedule.

mod common;

use common::*;
use qs_fabric::nats_server::NatsServer;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CONFIG: &str = "[thresholds]\ncpu_sensed = false\nmemory = 1.0\n";
const TASKS: usize = 200;
const ITERATIONS: u32 = 4;
const NODES: [&str; 3] = ["n0", "n1", "n2"];

/// A worker: one claimed iteration at a time (25 ms of work), a checkpoint after each, the
/// task's side effect through `Worker.effect` before completing it, and a line in the shared
/// log for each claim, acknowledged checkpoint, effect run and completion.
const WORKER: &str = r#"
import os, sys, time
sys.path.insert(0, sys.argv[1])
from qs_worker import Worker, Refused
sock, node, log, effects = sys.argv[2:6]

def say(*parts):
    line = " ".join(str(p) for p in (time.time_ns() // 1000,) + parts) + "\n"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, line.encode())
    os.close(fd)

def apply(token):
    # The outside system: applies each token once, whoever asks again.
    say("effect-ran", node, token)
    try:
        fd = os.open(os.path.join(effects, token.replace("/", "_")), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.close(fd)
    except FileExistsError:
        pass

try:
    w = Worker(sock, "chaos-" + node)
    while True:
        c = w.claim(0.5)
        if c == "soft-stop":
            break
        if c is None:
            continue
        state = int(c.get("state") or 0)
        say("claim", node, c["task"], c["attempt"], state)
        try:
            time.sleep(0.025)
            state += 1
            w.checkpoint(c, state, str(state))
            say("ack", node, c["task"], c["attempt"], state)
            if w.report(c, float(state), "pass %d" % state):
                w.effect(c, "notify", apply)
                w.complete(c, "done at %d" % state)
                say("complete", node, c["task"], c["attempt"], state)
        except Refused as e:
            say("refused", node, c["task"], c["attempt"], str(e).replace(" ", "_"))
except (ConnectionError, OSError):
    pass
"#;

/// SplitMix64: the schedule's randomness, from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One fault of the schedule, at its time from the start.
#[derive(Clone, Debug)]
enum Fault {
    KillWorker { worker: usize },
    Pause { node: usize },
    Resume { node: usize },
    KillAgent { node: usize },
    RestartAgent { node: usize },
    StopNats,
    StartNats,
}

fn schedule(rng: &mut Rng) -> Vec<(Duration, Fault)> {
    let jitter = |rng: &mut Rng, ms: u64| Duration::from_millis(ms + rng.below(400));
    let paused = rng.below(3) as usize;
    let killed = (paused + 1 + rng.below(2) as usize) % 3;
    let mut s = vec![
        (
            jitter(rng, 800),
            Fault::KillWorker {
                worker: rng.below(6) as usize,
            },
        ),
        (jitter(rng, 1_800), Fault::Pause { node: paused }),
        (
            jitter(rng, 2_800),
            Fault::KillWorker {
                worker: rng.below(6) as usize,
            },
        ),
        (jitter(rng, 6_200), Fault::Resume { node: paused }),
        (jitter(rng, 7_000), Fault::KillAgent { node: killed }),
        (jitter(rng, 9_500), Fault::RestartAgent { node: killed }),
        (jitter(rng, 11_000), Fault::StopNats),
        (jitter(rng, 12_600), Fault::StartNats),
        (
            jitter(rng, 13_500),
            Fault::KillWorker {
                worker: rng.below(6) as usize,
            },
        ),
    ];
    s.sort_by_key(|(at, _)| *at);
    s
}

struct Chaos {
    dir: tempfile::TempDir,
    url: String,
    agents: Vec<Option<Up>>,
    paused: Vec<bool>,
    /// Two per node: (node, process).
    workers: Vec<(usize, Option<Child>)>,
    script: std::path::PathBuf,
}

impl Chaos {
    fn log(&self) -> std::path::PathBuf {
        self.dir.path().join("worker.log")
    }
    fn effects(&self) -> std::path::PathBuf {
        self.dir.path().join("effects")
    }

    fn start_agent(&mut self, node: usize) {
        let up = agent_configured(self.dir.path(), &self.url, NODES[node], &[], &[], CONFIG);
        let sock = self.dir.path().join(NODES[node]).join("tasks.sock");
        up.wait("the workers' socket", |_| sock.exists());
        self.agents[node] = Some(up);
    }

    fn spawn_worker(&mut self, w: usize) {
        let node = self.workers[w].0;
        let sock = self.dir.path().join(NODES[node]).join("tasks.sock");
        let child = Command::new("python3")
            .arg(&self.script)
            .arg(repo("sdk/python"))
            .arg(sock)
            .arg(NODES[node])
            .arg(self.log())
            .arg(self.effects())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.workers[w].1 = Some(child);
    }

    /// Workers that ended (their agent died) start again where their agent runs.
    fn revive_workers(&mut self) {
        for w in 0..self.workers.len() {
            let node = self.workers[w].0;
            let ended = match &mut self.workers[w].1 {
                Some(c) => c.try_wait().unwrap().is_some(),
                None => true,
            };
            if ended && self.agents[node].is_some() && !self.paused[node] {
                self.spawn_worker(w);
            }
        }
    }

    fn signal_agent(&self, node: usize, signal: i32) {
        let pid = self.agents[node]
            .as_ref()
            .unwrap()
            .child
            .as_ref()
            .unwrap()
            .id();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, signal) };
    }
}

impl Drop for Chaos {
    fn drop(&mut self) {
        for node in 0..NODES.len() {
            if self.paused[node] && self.agents[node].is_some() {
                self.signal_agent(node, libc::SIGCONT);
            }
        }
        for (_, c) in &mut self.workers {
            if let Some(c) = c {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Submits the next task to `node`; its id joins `accepted`.
fn submit(c: &Chaos, node: usize, accepted: &mut Vec<String>) {
    let key = format!("chaos-{}", accepted.len());
    let up = c.agents[node].as_ref().unwrap();
    accepted.push(submit_task(up, &key, &key, ITERATIONS));
}

/// Tasks sent to a node just before it is paused or killed: it holds work when it goes.
const BURST: usize = 8;

#[test]
fn tasks_complete_exactly_once_through_kills_a_pause_and_a_nats_restart() {
    let seed: u64 = std::env::var("QS_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261206);
    eprintln!("chaos seed: {seed} (QS_CHAOS_SEED={seed} replays this schedule)");
    let mut rng = Rng(seed);
    let plan = schedule(&mut rng);
    eprintln!("schedule: {plan:?}");

    let store = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut nats = Some(NatsServer::start_at(port, store.path()).expect("nats-server 2.10+"));
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("chaos_worker.py");
    std::fs::write(&script, WORKER).unwrap();
    std::fs::create_dir_all(dir.path().join("effects")).unwrap();
    let mut c = Chaos {
        url: nats.as_ref().unwrap().url(),
        dir,
        agents: vec![None, None, None],
        paused: vec![false; 3],
        workers: (0..6).map(|w| (w / 2, None)).collect(),
        script,
    };
    for node in 0..NODES.len() {
        c.start_agent(node);
    }
    for up in c.agents.iter().flatten() {
        up.wait("three live nodes", |u| {
            u.get("/v1/nodes").as_array().map_or(0, |a| a.len()) == 3
        });
    }
    for w in 0..6 {
        c.spawn_worker(w);
    }

    // Submissions every 50 ms to the nodes that answer, round robin; faults on time.
    let start = Instant::now();
    let mut accepted: Vec<String> = Vec::new();
    let mut faults = plan.into_iter().peekable();
    let mut next_node = 0;
    while accepted.len() < TASKS || faults.peek().is_some() {
        while let Some((at, _)) = faults.peek()
            && start.elapsed() >= *at
        {
            let (_, fault) = faults.next().unwrap();
            eprintln!("{:?}: {fault:?}", start.elapsed());
            match fault {
                Fault::KillWorker { worker } => {
                    if let Some(child) = &mut c.workers[worker].1 {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                }
                Fault::Pause { node } => {
                    for _ in 0..BURST {
                        submit(&c, node, &mut accepted);
                    }
                    c.signal_agent(node, libc::SIGSTOP);
                    c.paused[node] = true;
                }
                Fault::Resume { node } => {
                    c.signal_agent(node, libc::SIGCONT);
                    c.paused[node] = false;
                }
                Fault::KillAgent { node } => {
                    for _ in 0..BURST {
                        submit(&c, node, &mut accepted);
                    }
                    if let Some(mut up) = c.agents[node].take() {
                        up.signal(libc::SIGKILL);
                    }
                }
                Fault::RestartAgent { node } => c.start_agent(node),
                Fault::StopNats => {
                    if let Some(n) = &mut nats {
                        n.kill();
                    }
                }
                Fault::StartNats => {
                    nats = Some(NatsServer::start_at(port, store.path()).expect("restarted"));
                }
            }
        }
        c.revive_workers();
        if accepted.len() < TASKS {
            let open: Vec<usize> = (0..NODES.len())
                .filter(|&n| c.agents[n].is_some() && !c.paused[n])
                .collect();
            let node = open[next_node % open.len()];
            next_node += 1;
            submit(&c, node, &mut accepted);
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // Everything completes; then the checkers.
    let completions = |c: &Chaos| {
        let mut n: BTreeMap<String, usize> = BTreeMap::new();
        for up in c.agents.iter().flatten() {
            for e in up.events() {
                if e["event"]["event"] == "task" && e["event"]["step"] == "completed" {
                    *n.entry(e["event"]["task"].as_str().unwrap().to_owned())
                        .or_default() += 1;
                }
            }
        }
        n
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        c.revive_workers();
        let done = completions(&c);
        if accepted.iter().all(|id| done.contains_key(id)) {
            break;
        }
        let missing: Vec<&String> = accepted
            .iter()
            .filter(|id| !done.contains_key(*id))
            .collect();
        assert!(
            Instant::now() < deadline,
            "not completed (seed {seed}): {missing:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Once more after a moment: a late second completion would show now.
    std::thread::sleep(Duration::from_millis(1_500));
    let done = completions(&c);
    for id in &accepted {
        assert_eq!(done.get(id), Some(&1), "{id} completed once (seed {seed})");
    }

    // No acknowledged checkpoint lost while the task stayed on its node.
    let log = std::fs::read_to_string(c.log()).unwrap();
    let mut lines: Vec<Vec<&str>> = log.lines().map(|l| l.split(' ').collect()).collect();
    lines.sort_by_key(|l| l[0].parse::<u64>().unwrap());
    // Per task: the node of its last claim, and the last state acknowledged there since.
    let mut at: BTreeMap<&str, (&str, u32)> = BTreeMap::new();
    let mut checked = 0;
    for l in &lines {
        match l[1] {
            "claim" => {
                let (node, task, state) = (l[2], l[3], l[5].parse::<u32>().unwrap());
                if let Some((last_node, acked)) = at.get(task)
                    && *last_node == node
                {
                    assert!(
                        state >= *acked,
                        "{task} resumed on {node} from {state}, below its acknowledged {acked} (seed {seed})"
                    );
                    checked += 1;
                }
                let acked = match at.get(task) {
                    Some((n, a)) if *n == node => *a,
                    _ => state,
                };
                at.insert(task, (node, acked.max(state)));
            }
            "ack" => {
                let (node, task, state) = (l[2], l[3], l[5].parse::<u32>().unwrap());
                if let Some((n, acked)) = at.get_mut(task)
                    && *n == node
                {
                    *acked = (*acked).max(state);
                }
            }
            _ => {}
        }
    }
    let tasks = accepted.len();
    assert!(
        checked > tasks,
        "claims after a checkpoint were checked: {checked}"
    );

    // Each task's effect applied once (the receiver keeps one file per token).
    let applied: Vec<String> = std::fs::read_dir(c.effects())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(applied.len(), tasks, "one effect per task (seed {seed})");
    for id in &accepted {
        assert!(
            applied.contains(&format!("{id}_notify")),
            "{id}'s effect (seed {seed})"
        );
    }
    let ran = lines.iter().filter(|l| l[1] == "effect-ran").count();
    let refused = lines.iter().filter(|l| l[1] == "refused").count();
    // The faults did bite: tasks of the paused or killed node were adopted elsewhere.
    let steps = |step: &str| {
        c.agents
            .iter()
            .flatten()
            .flat_map(|u| u.events())
            .filter(|e| e["event"]["event"] == "task" && e["event"]["step"] == step)
            .count()
    };
    let (adopted, moved) = (steps("adopted"), steps("moved"));
    assert!(
        adopted > 0,
        "no task was adopted: the faults missed (seed {seed})"
    );
    eprintln!(
        "{tasks} tasks completed once each; {checked} resumptions checked; {adopted} adopted, \
         {moved} handed over, {refused} requests of superseded attempts refused; effects run \
         {ran} times, applied {}",
        applied.len()
    );
}
