//! Durable tasks across a fleet on real processes: three `qs agent`s on one real nats-server.
//! Tasks accepted by a node that dies (kill -9) are adopted by the survivors, resume there
//! from their last checkpoint (a large one through the checkpoints object store) and
//! complete once; the dead node, restarted, hands its copies over instead of running them
//! again. A node without workers has its tasks taken by idle ones; results and a security
//! flag are heard on the bus. (A node paused past its death is `tests/task_chaos.rs`'s.)

mod common;

use common::*;
use qs_fabric::nats_server::NatsServer;
use qs_worker::{Claimed, Worker};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// The nodes share this machine's CPU: its load must not make them refuse work.
const CONFIG: &str = "[thresholds]\ncpu_sensed = false\nmemory = 1.0\n";

fn submit(up: &Up, key: &str) -> String {
    submit_task(up, key, key, 3)
}

fn tasks(up: &Up) -> Vec<Value> {
    up.get("/v1/tasks").as_array().cloned().unwrap_or_default()
}

fn phase_of(up: &Up, id: &str) -> Option<String> {
    tasks(up)
        .into_iter()
        .find(|t| t["id"] == id)
        .map(|t| t["phase"]["phase"].as_str().unwrap_or("").to_owned())
}

/// How many times each task completed in `up`'s ledger.
fn completions(up: &Up) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for e in up.events() {
        if e["event"]["event"] == "task" && e["event"]["step"] == "completed" {
            *n.entry(e["event"]["task"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    n
}

fn socket(dir: &std::path::Path, node: &str) -> std::path::PathBuf {
    dir.join(node).join("tasks.sock")
}

/// Works every task `node`'s agent gives until `stop` says so: each claim resumes from its
/// checkpoint's state, checkpoints once more and completes with the state it reached.
fn work(sock: std::path::PathBuf, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let mut w = Worker::connect(&sock, "steady", &[]).unwrap();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let Ok(Claimed::Task(t)) = w.claim(Duration::from_millis(200)) else {
            continue;
        };
        let state = t.state.as_deref().and_then(|s| s.split(':').next());
        let done: u32 = state.and_then(|s| s.parse().ok()).unwrap_or(0) + 1;
        let _ = w.checkpoint(&t, t.iteration + 1, &done.to_string());
        let _ = w.complete(&t, &format!("{} after {done}", t.payload));
    }
}

#[test]
fn a_dead_nodes_tasks_are_adopted_resume_from_their_checkpoints_and_complete_once() {
    let server = NatsServer::start().expect("nats-server 2.10+ (scripts/test installs it)");
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let mut n0 = agent_configured(dir.path(), &url, "n0", &[], &[], CONFIG);
    let others: Vec<Up> = ["n1", "n2"]
        .iter()
        .map(|n| agent_configured(dir.path(), &url, n, &[], &[], CONFIG))
        .collect();
    for up in others.iter().chain([&n0]) {
        up.wait("three live nodes", |u| {
            u.get("/v1/nodes").as_array().map_or(0, |a| a.len()) == 3
        });
    }
    // Six tasks on n0 (which may offer some to the others at once); a worker there takes one
    // and checkpoints it.
    let ids: Vec<String> = (0..6).map(|i| submit(&n0, &format!("job-{i}"))).collect();
    n0.wait("the workers' socket", |_| socket(dir.path(), "n0").exists());
    let mut w = Worker::connect(socket(dir.path(), "n0"), "doomed", &[]).unwrap();
    let Claimed::Task(held) = w.claim(Duration::from_secs(5)).unwrap() else {
        panic!("a task")
    };
    // 100 KiB: too large to ride in the record, it goes to the checkpoints object store.
    let big = format!("1:{}", "x".repeat(100 * 1024));
    w.checkpoint(&held, 1, &big).unwrap();
    n0.wait("every record in the fleet", |u| {
        let t = &u.get("/checkpoint_state")["tasks"];
        t["fleet_pending"] == 0 && t["fleet_written"].as_u64().unwrap_or(0) >= 2
    });

    n0.signal(libc::SIGKILL);
    drop(w);
    // The survivors hold all six between them: offered to them at submission, or adopted.
    others[0].wait("all six on the survivors", |_| {
        ids.iter().all(|id| {
            others
                .iter()
                .any(|u| phase_of(u, id).is_some_and(|p| p != "completed"))
        })
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = ["n1", "n2"]
        .iter()
        .map(|n| {
            let (sock, stop) = (socket(dir.path(), n), stop.clone());
            std::thread::spawn(move || work(sock, stop))
        })
        .collect();
    others[0].wait("all six completed on the survivors", |_| {
        ids.iter().all(|id| {
            others
                .iter()
                .any(|u| phase_of(u, id).as_deref() == Some("completed"))
        })
    });
    // The one n0's worker held resumed from its checkpoint (state 1, so it ended at 2),
    // read back from the object store.
    let resumed = others
        .iter()
        .flat_map(tasks)
        .find(|t| t["id"] == held.task.as_str())
        .unwrap();
    assert_eq!(
        resumed["result"],
        format!("{} after 2", held.payload),
        "{resumed}"
    );

    // n0 comes back: the fleet owns its copies elsewhere, so it hands them over.
    drop(n0);
    let n0 = agent_configured(dir.path(), &url, "n0", &[], &[], CONFIG);
    n0.wait("its copies handed over", |u| {
        ids.iter().all(|id| phase_of(u, id).is_none())
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let total = |ups: &[&Up]| {
        let mut total: BTreeMap<String, usize> = BTreeMap::new();
        for up in ups {
            for (id, n) in completions(up) {
                *total.entry(id).or_default() += n;
            }
        }
        total
    };
    let ups = [&others[0], &others[1], &n0];
    n0.wait("every completion in a ledger", |_| {
        let t = total(&ups);
        ids.iter().all(|id| t.contains_key(id))
    });
    let total = total(&ups);
    for id in &ids {
        assert_eq!(total.get(id), Some(&1), "{id} completed once: {total:?}");
    }
    let moved = n0
        .events()
        .iter()
        .filter(|e| e["event"]["step"] == "moved" && e["event"]["task"] == held.task.as_str())
        .count();
    assert_eq!(moved, 1, "n0 handed the task its worker held over");
}

/// Self-balancing and the channels: twenty tasks accepted by n0, which has no worker, are
/// taken by n1 and n2, whose workers idle (they steal what n0 offers, and n0 pushes its
/// surplus to them); each completes once, its result announced on `tasks.results.<node>`;
/// n0 handed every one over. A worker's misuse on n1 is a security flag on `events.alerts`.
#[test]
fn idle_nodes_take_a_loaded_nodes_inbound_tasks_and_results_go_out_on_the_bus() {
    use qs_fabric::Fabric;
    let server = NatsServer::start().expect("nats-server 2.10+ (scripts/test installs it)");
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let ups: Vec<Up> = ["n0", "n1", "n2"]
        .iter()
        .map(|n| agent_configured(dir.path(), &url, n, &[], &[], CONFIG))
        .collect();
    for up in &ups {
        up.wait("three live nodes", |u| {
            u.get("/v1/nodes").as_array().map_or(0, |a| a.len()) == 3
        });
    }
    // A client of the bus: every result and every alert.
    let (rt, bus) = bus_client(&url);
    let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, Value)>::new()));
    for topic in ["tasks.results.*", "events.alerts"] {
        let mut sub = rt
            .block_on(bus.subscribe(&qs_fabric::Topic::parse(topic).unwrap()))
            .unwrap();
        let heard = heard.clone();
        rt.spawn(async move {
            while let Some(m) = sub.next().await {
                let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
                heard.lock().unwrap().push((m.topic.to_string(), v));
            }
        });
    }

    let ids: Vec<String> = (0..20)
        .map(|i| submit(&ups[0], &format!("b-{i}")))
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = ["n1", "n1", "n2", "n2"]
        .iter()
        .map(|n| {
            let (sock, stop) = (socket(dir.path(), n), stop.clone());
            ups[1].wait("the workers' socket", |_| sock.exists());
            std::thread::spawn(move || work(sock, stop))
        })
        .collect();
    ups[1].wait_within(
        "all twenty completed on n1 and n2",
        Duration::from_secs(60),
        |_| {
            ids.iter().all(|id| {
                ups[1..]
                    .iter()
                    .any(|u| phase_of(u, id).as_deref() == Some("completed"))
            })
        },
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    ups[0].wait("n0 handed all twenty over", |u| {
        ids.iter().all(|id| phase_of(u, id).is_none())
    });
    let mut total: BTreeMap<String, usize> = BTreeMap::new();
    for up in &ups {
        for (id, n) in completions(up) {
            *total.entry(id).or_default() += n;
        }
    }
    for id in &ids {
        assert_eq!(total.get(id), Some(&1), "{id} completed once: {total:?}");
    }
    ups[1].wait("every result on the bus", |_| {
        let heard = heard.lock().unwrap();
        ids.iter().all(|id| {
            heard
                .iter()
                .any(|(t, v)| t.starts_with("tasks.results.") && v["task"] == id.as_str())
        })
    });

    // A misuse on n1: refused, counted, and a security flag for the fleet.
    let mut raw = std::os::unix::net::UnixStream::connect(socket(dir.path(), "n1")).unwrap();
    std::io::Write::write_all(&mut raw, &u32::MAX.to_be_bytes()).unwrap();
    ups[1].wait("a security flag on events.alerts", |_| {
        heard
            .lock()
            .unwrap()
            .iter()
            .any(|(t, v)| t == "events.alerts" && v["kind"] == "security-flag" && v["node"] == "n1")
    });
    drop(rt);
}
