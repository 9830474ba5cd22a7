//! Agents of the worker protocol in the mesh, on real processes: two `qs agent`s on a real
//! nats-server, one with built-in agents, and the Python SDK's example mesh agent
//! (`sdk/python/example_mesh_agent.py`) joined to each with its capabilities. An ask that
//! requires a capability reaches only the agents that have it and gathers their answers; a
//! fact one of them contradicts comes back as its CONFLICT, and takes that newcomer out of the
//! routing pool for a while (seed §10.2, conflicts watched during integration); a worker that
//! joins later settles before its lead adds it to the pool; a worker that goes away leaves the
//! mesh (at once, even in the middle of a wait for work), one that stops asking for work is
//! beaten as offline, and once offline 30 s is taken for crashed and disconnected (seed
//! §6.1's AGENT_CRASH); a name joined twice, and a poll before joining, are refused; a
//! worker agent holding a task shows it, and what it said of it, at its lead (seed §7.2).

mod common;

use common::*;
use qs_fabric::nats_server::NatsServer;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BUILT_IN: u32 = 20;
/// How long an agent that joined settles before its lead routes to it: long enough for the
/// test to see a late one settling.
const SETTLE: &str = "6000";

/// A Python mesh agent, killed when dropped.
struct MeshAgent(Child);

impl Drop for MeshAgent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mesh_agent(socket: &Path, name: &str, context: &str, capabilities: &[&str]) -> MeshAgent {
    let mut child = Command::new("python3")
        .arg(repo("sdk/python/example_mesh_agent.py"))
        .arg(socket)
        .arg(name)
        .arg(context)
        .args(capabilities)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    // It says "joined" once the node took it, or exits with the reason.
    let mut first = String::new();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout);
    lines.read_line(&mut first).unwrap();
    if first.trim() != "joined" {
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        panic!("{name} did not join: {first}{err}");
    }
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.lines() {});
    MeshAgent(child)
}

/// One frame of the worker protocol.
fn send(stream: &mut UnixStream, request: &str) {
    let mut frame = (request.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(request.as_bytes());
    stream.write_all(&frame).unwrap();
}

/// A worker on a raw socket, registered and joined to the mesh under `name`.
fn raw_agent(socket: &Path, name: &str) -> UnixStream {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let register = format!(r#"{{"op":"register","worker":"{name}"}}"#);
    assert_eq!(call(&mut s, &register)["op"], "registered");
    assert_eq!(call(&mut s, r#"{"op":"mesh-join"}"#)["op"], "mesh-joined");
    s
}

/// One frame of the worker protocol, and the answer.
fn call(stream: &mut UnixStream, request: &str) -> Value {
    send(stream, request);
    recv(stream)
}

/// The next frame the agent sends.
fn recv(stream: &mut UnixStream) -> Value {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

#[test]
fn workers_join_the_mesh_with_capabilities_answer_and_leave() {
    let server = NatsServer::start().expect("nats-server 2.10+ (scripts/test installs it)");
    let dir = tempfile::tempdir().unwrap();
    let w1 = agent_configured(
        dir.path(),
        &server.url(),
        "w1",
        &[
            "--mesh-agents",
            &BUILT_IN.to_string(),
            "--mesh-settle-ms",
            SETTLE,
        ],
        &[],
        MESH_CONFIG,
    );
    let w2 = agent_configured(
        dir.path(),
        &server.url(),
        "w2",
        &["--mesh-settle-ms", SETTLE],
        &[],
        MESH_CONFIG,
    );
    let socket = |n: &str| dir.path().join(n).join("tasks.sock");
    for (up, n) in [(&w1, "w1"), (&w2, "w2")] {
        up.wait("the workers' socket", |_| socket(n).exists());
    }
    let gpu_a = mesh_agent(&socket("w1"), "gpu-a", "a1b2c3d4", &["gpu", "vision"]);
    let _gpu_b = mesh_agent(&socket("w2"), "gpu-b", "a1b2c3d4", &["gpu"]);
    let cpu_c = mesh_agent(&socket("w2"), "cpu-c", "e5f6g7h8", &[]);
    let all = BUILT_IN + 3;
    let (n1, n2) = (&w1, &w2);
    let root_seeing = |want: u32| {
        move |_: &Up| {
            root_status(&[n1, n2], |s| {
                s["agents"] == want && s["active"] == want && s["joining"] == 0
            })
        }
    };
    w1.wait_within(
        "the root to see the built-in and the worker agents",
        Duration::from_secs(60),
        root_seeing(all),
    );
    assert_eq!(w2.get("/v1/mesh")["local_agents"], 2);

    // An ask that requires a capability: only the two GPU workers are asked, and answer.
    let ask = w2.mesh_op(
        r#"{"action":"cascade","mode":"wave","verb":"observe","payload":"What's your current context hash?","requires":"gpu"}"#,
    );
    assert_eq!(ask["tally"]["targeted"], 2, "{ask}");
    assert_eq!(ask["tally"]["ready"], 2, "{ask}");
    assert_eq!(
        ask["answers"],
        serde_json::json!([{"answer": "a1b2c3d4", "count": 2}]),
        "{ask}"
    );
    assert_eq!(ask["decision"]["decision"], "proceed", "{ask}");

    // Seed §7.2's "fix the capability mapping": the classes the agents are in now kept out
    // of the capability's routing (through the CLI), every node holds the rules (from the
    // control, and the root's notices), and an ask that requires it targets nobody.
    // Included again, the ask targets both.
    let classes: std::collections::BTreeSet<String> = [&w1, &w2]
        .iter()
        .flat_map(|a| {
            let rows = a.get("/v1/mesh")["led_agents"].as_array().cloned();
            rows.unwrap_or_default()
        })
        .filter_map(|r| r["class"].as_str().map(str::to_owned))
        .collect();
    assert!(!classes.is_empty());
    let rule = |verb: &str, class: &str| -> Value {
        let token = w1.token().unwrap_or_default().to_owned();
        let out = cli(&[
            "--api",
            &w1.api,
            "--token",
            &token,
            "mesh",
            verb,
            "--class",
            class,
            "--capability",
            "gpu",
            "--output",
            "json",
        ]);
        serde_json::from_str(&out).unwrap()
    };
    for k in &classes {
        let done = rule("exclude", k);
        assert_eq!(done["done"], "exclude", "{done}");
        assert_eq!(done["confirmed"], done["nodes"], "{done}");
    }
    let listed: Vec<Value> = classes
        .iter()
        .map(|k| Value::from(format!("class {k} off \"gpu\"")))
        .collect();
    for a in [&w1, &w2] {
        a.wait_within("the rules at every node", Duration::from_secs(10), |a| {
            a.get("/v1/mesh")["excluded"] == Value::from(listed.clone())
        });
    }
    let gpu_ask = r#"{"action":"cascade","mode":"wave","verb":"observe","payload":"What's your current context hash?","requires":"gpu"}"#;
    let kept_out = w2.mesh_op(gpu_ask);
    assert_eq!(kept_out["tally"]["targeted"], 0, "{kept_out}");
    assert_eq!(kept_out["tally"]["ready"], 0, "{kept_out}");
    for k in &classes {
        let done = rule("include", k);
        assert_eq!(done["done"], "include", "{done}");
    }
    for a in [&w1, &w2] {
        a.wait_within("no rule at any node", Duration::from_secs(10), |a| {
            a.get("/v1/mesh")["excluded"] == serde_json::json!([])
        });
    }
    // (Both in the capability's routing again: whether each is reachable this moment, its
    // lead's judgement on a loaded machine, is another matter.)
    let back = w2.mesh_op(gpu_ask);
    assert_eq!(back["tally"]["targeted"], 2, "{back}");

    // A fact every agent should hold: the worker holding another context contradicts it.
    let fact = w1
        .mesh_op(r#"{"action":"cascade","mode":"wave","verb":"sync","payload":"expect:a1b2c3d4"}"#);
    assert_eq!(fact["tally"]["targeted"], all, "{fact}");
    assert_eq!(fact["tally"]["conflict"], 1, "{fact}");
    assert_eq!(fact["tally"]["ready"], all - 1, "{fact}");
    // 22 READY against one CONFLICT: §5.2's quorum proceeds; the conflict is logged.
    assert_eq!(fact["decision"]["decision"], "proceed", "{fact}");
    let logged = || -> usize {
        [&w1, &w2]
            .iter()
            .map(|a| a.events_of("mesh-conflict"))
            .sum()
    };
    w1.wait_within("the conflict record", Duration::from_secs(10), |_| {
        logged() >= 1
    });
    assert_eq!(logged(), 1, "conflict records in the ledgers");
    // cpu-c joined moments ago and contradicted what its cluster clearly holds: seed §10.2
    // takes it out of the routing pool while it integrates, and holds it there a while.
    let joining = |want: u32| move |_: &Up| root_status(&[n1, n2], |s| s["joining"] == want);
    w1.wait_within(
        "the contradicting newcomer out of the pool",
        Duration::from_secs(5),
        joining(1),
    );
    let observe = r#"{"action":"cascade","mode":"wave","verb":"observe","payload":"What's your current context hash?"}"#;
    let held = w1.mesh_op(observe);
    assert_eq!(held["tally"]["joining"], 1, "{held}");
    assert_eq!(held["tally"]["targeted"], all - 1, "{held}");
    assert_eq!(held["tally"]["conflict"], 0, "{held}");

    // A worker that joins later: its lead leaves it out of operations until it settled,
    // then adds it to the routing pool.
    let _tpu = mesh_agent(&socket("w1"), "tpu-d", "a1b2c3d4", &["tpu"]);
    let tpu_ask = r#"{"action":"cascade","mode":"wave","verb":"observe","payload":"ready?","requires":"tpu"}"#;
    w1.wait_within(
        "the root to count the late worker",
        Duration::from_secs(5),
        |_| root_status(&[&w1, &w2], |s| s["agents"] == all + 1),
    );
    let settling = w1.mesh_op(tpu_ask);
    assert_eq!(settling["tally"]["joining"], 1, "{settling}");
    assert_eq!(settling["tally"]["targeted"], 0, "{settling}");
    // Settled, both are in the pool.
    w1.wait_within(
        "the late worker and the held one in the routing pool",
        Duration::from_secs(30),
        root_seeing(all + 1),
    );
    let joined = w1.mesh_op(tpu_ask);
    assert_eq!(joined["tally"]["joining"], 0, "{joined}");
    assert_eq!(joined["tally"]["ready"], 1, "{joined}");

    // A name already joined on a node is refused; so is a poll before joining.
    let mut raw = UnixStream::connect(socket("w1")).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(
        call(&mut raw, r#"{"op":"register","worker":"gpu-a"}"#)["op"],
        "registered"
    );
    let twice = call(&mut raw, r#"{"op":"mesh-join","capabilities":["gpu"]}"#);
    assert_eq!(twice["op"], "refused", "{twice}");
    assert!(
        twice["reason"].as_str().unwrap().contains("already joined"),
        "{twice}"
    );
    let early = call(&mut raw, r#"{"op":"mesh-poll","wait_ms":10}"#);
    assert!(
        early["reason"].as_str().unwrap().contains("mesh-join"),
        "{early}"
    );
    // Workers that go away leave the mesh: the root counts them out.
    drop(cpu_c);
    drop(gpu_a);
    w1.wait_within(
        "the root to count the workers that left out",
        Duration::from_secs(30),
        root_seeing(all - 1),
    );
    let after = w1.mesh_op(observe);
    assert_eq!(after["tally"]["targeted"], all - 1, "{after}");
    assert_eq!(after["tally"]["ready"], all - 1, "{after}");
    assert_eq!(after["decision"]["decision"], "proceed", "{after}");

    // A worker that joined and stopped asking for work is beaten as offline: its lead routes
    // around it.
    let root_counts = |agents: u32, active: u32| {
        move |_: &Up| {
            root_status(&[n1, n2], |s| {
                s["agents"] == agents && s["active"] == active
            })
        }
    };
    let mut idle = raw_agent(&socket("w2"), "idle-e");
    w1.wait_within(
        "the idle worker counted, then offline",
        Duration::from_secs(30),
        root_counts(all, all - 1),
    );
    // One that goes away in the middle of a long wait for work leaves at once, not when
    // its wait would have ended.
    let mut waiting = raw_agent(&socket("w2"), "waiting-f");
    send(&mut waiting, r#"{"op":"mesh-poll","wait_ms":60000}"#);
    w1.wait_within(
        "the waiting worker counted",
        Duration::from_secs(10),
        root_counts(all + 1, all),
    );
    drop(waiting);
    w1.wait_within(
        "the waiting worker gone",
        Duration::from_secs(10),
        root_counts(all, all - 1),
    );
    // Going away is no misuse of the protocol: w2's workers (cpu-c, killed, and this one,
    // each while it waited for work) were not counted as disconnected.
    assert_eq!(w2.get("/queue_stats")["workers_disconnected"], 0);

    // The idle one, offline 30 s while its node lives, is taken for crashed by its lead
    // (seed §6.1's AGENT_CRASH): its node closes its connection, saying why, for its
    // supervisor to start it again; it leaves the mesh, and the crash is in the lead's ledger.
    idle.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let told = recv(&mut idle);
    assert_eq!(told["op"], "refused", "{told}");
    assert!(
        told["reason"].as_str().unwrap().contains("crashed"),
        "{told}"
    );
    assert_eq!(idle.read(&mut [0u8; 4]).unwrap(), 0, "closed");
    w1.wait_within(
        "the crashed worker out of the mesh",
        Duration::from_secs(10),
        root_counts(all - 1, all - 1),
    );
    let crashed = |a: &Up| a.events_of("mesh-agent-crashed");
    w1.wait_within("the crash recorded", Duration::from_secs(10), |_| {
        crashed(&w1) + crashed(&w2) == 1
    });

    // Seed §7.2's "show me what they're stuck on": a worker agent that holds a task says so
    // in its beats, with what it last said of it, and its lead shows it, in `qs mesh status
    // cluster N` too.
    let mut busy = raw_agent(&socket("w2"), "busy-g");
    send(&mut busy, r#"{"op":"claim","wait_ms":20000}"#);
    let (status, posted) = w2.http(
        "POST",
        "/v1/tasks",
        r#"{"class":"batch","idempotency_key":"stuck","payload":"Process large language model inference request","max_iterations":1,"deadline_ms":120000}"#,
    );
    assert_eq!(status, 201, "{posted}");
    let claimed = recv(&mut busy);
    assert_eq!(claimed["op"], "task", "{claimed}");
    let progress = serde_json::json!({
        "op": "progress",
        "task": claimed["task"],
        "attempt": claimed["attempt"],
        "fraction": 0.1,
        "note": "waiting on GPU memory allocation",
    });
    assert_eq!(call(&mut busy, &progress.to_string())["op"], "ok");
    let stuck = |a: &Up| {
        let status = a.get("/v1/mesh");
        let led = status["led_agents"].as_array().cloned().unwrap_or_default();
        led.into_iter()
            .find(|x| x["busy"]["note"] == "waiting on GPU memory allocation")
    };
    w1.wait_within(
        "the lead to show what the worker is on",
        Duration::from_secs(15),
        |_| stuck(&w1).or_else(|| stuck(&w2)).is_some(),
    );
    let (lead, row) = match stuck(&w1) {
        Some(row) => (&w1, row),
        None => (&w2, stuck(&w2).unwrap()),
    };
    let with = format!(
        "task {}: Process large language model inference request",
        claimed["task"].as_str().unwrap()
    );
    assert_eq!(row["busy"]["with"], with.as_str(), "{row}");
    let cluster = row["cluster"].as_u64().unwrap().to_string();
    let table = cli(&["--api", &lead.api, "mesh", "status", "cluster", &cluster]);
    assert!(
        table.contains("waiting on GPU memory allocation"),
        "{table}"
    );
    // As JSON: that cluster's row and agents alone.
    let args = ["--api", &lead.api, "mesh", "status", "cluster", &cluster];
    let json: Value = serde_json::from_str(&cli(&[&args[..], &["--output", "json"]].concat()))
        .expect("the status as JSON");
    let clusters = json["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), 1, "{json}");
    assert_eq!(clusters[0]["cluster"], row["cluster"], "{json}");
    let led = json["led_agents"].as_array().unwrap();
    assert!(led.iter().all(|a| a["cluster"] == row["cluster"]), "{json}");
    assert!(led.iter().any(|a| a["agent"] == row["agent"]), "{json}");
    // Cancelled meanwhile, the task is no longer what it works on: its next frame (a
    // heartbeat) says so, and its lead shows nothing.
    let id = claimed["task"].as_str().unwrap();
    let (status, v) = w2.http("POST", &format!("/v1/tasks/{id}/cancel"), "");
    assert_eq!(status, 200, "{v}");
    assert_eq!(call(&mut busy, r#"{"op":"heartbeat"}"#)["op"], "ok");
    let agent = row["agent"].clone();
    let on_nothing = |a: &Up| {
        let status = a.get("/v1/mesh");
        let led = status["led_agents"].as_array().cloned().unwrap_or_default();
        led.iter()
            .any(|x| x["agent"] == agent && x["busy"].is_null())
    };
    lead.wait_within(
        "the lead to show the worker on nothing",
        Duration::from_secs(15),
        on_nothing,
    );

    // Seed §7.2's "reassign the task": stuck on a second task, the worker has it taken from
    // it by `qs mesh reassign` (its lead asks its node), and another worker (of the task
    // protocol alone) takes it; what the stuck one says of it after is refused, and its lead
    // shows it on nothing again.
    let mut spare = UnixStream::connect(socket("w2")).unwrap();
    spare
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let register = r#"{"op":"register","worker":"spare-g"}"#;
    assert_eq!(call(&mut spare, register)["op"], "registered");
    send(&mut busy, r#"{"op":"claim","wait_ms":20000}"#);
    let (status, posted) = w2.http(
        "POST",
        "/v1/tasks",
        r#"{"class":"batch","idempotency_key":"stuck-again","payload":"Process large language model inference request","max_iterations":1,"deadline_ms":120000}"#,
    );
    assert_eq!(status, 201, "{posted}");
    let second = recv(&mut busy);
    assert_eq!(second["op"], "task", "{second}");
    send(&mut spare, r#"{"op":"claim","wait_ms":30000}"#);
    let progress = serde_json::json!({
        "op": "progress",
        "task": second["task"],
        "attempt": second["attempt"],
        "fraction": 0.1,
        "note": "waiting on GPU memory allocation",
    });
    assert_eq!(call(&mut busy, &progress.to_string())["op"], "ok");
    lead.wait_within(
        "the lead to show the worker on its second task",
        Duration::from_secs(15),
        |_| stuck(lead).is_some(),
    );
    let row = stuck(lead).unwrap();
    let score_ms = row["score_ms"].as_f64().unwrap();
    assert!(score_ms >= 1.0, "{row}");
    let slower_than = (score_ms as u64 - 1).to_string();
    let args = [
        "--api",
        &lead.api,
        "mesh",
        "reassign",
        "cluster",
        &cluster,
        "--slower-than",
        &slower_than,
    ];
    let said = cli(&args);
    assert!(said.contains("to take their tasks"), "{said}");
    assert!(
        said.contains("busy with task") && said.contains("waiting on GPU memory allocation"),
        "{said}"
    );
    let taken = recv(&mut spare);
    assert_eq!(taken["op"], "task", "{taken}");
    assert_eq!(taken["task"], second["task"], "{taken}");
    assert_ne!(taken["attempt"], second["attempt"], "{taken}");
    let late = call(&mut busy, &progress.to_string());
    assert_eq!(late["op"], "refused", "{late}");
    lead.wait_within(
        "the lead to show the stuck worker on nothing",
        Duration::from_secs(15),
        on_nothing,
    );
    let complete = serde_json::json!({
        "op": "complete",
        "task": taken["task"],
        "attempt": taken["attempt"],
        "result": "done by the spare",
    });
    assert_eq!(call(&mut spare, &complete.to_string())["op"], "ok");
    let id = second["task"].as_str().unwrap();
    let (status, task) = w2.http("GET", &format!("/v1/tasks/{id}"), "");
    assert_eq!(status, 200, "{task}");
    assert!(task.to_string().contains("done by the spare"), "{task}");
}

/// The capability mapping outlives every node (seed §7.2's "fix the capability mapping" is
/// a lasting fix, not a node's memory): a rule set on a running two-node mesh is stored in
/// the `mesh` bucket by the root; both nodes stopped and started again on the same
/// nats-server, every node routes by it again; lifted, no node holds it, and it stays
/// lifted across the next restart.
#[test]
fn the_capability_mapping_outlives_a_restart_of_every_node() {
    let server = NatsServer::start().expect("nats-server 2.10+ (scripts/test installs it)");
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        ["w1", "w2"].map(|n| {
            let extra = ["--mesh-agents", "10", "--mesh-settle-ms", SETTLE];
            agent_configured(dir.path(), &server.url(), n, &extra, &[], MESH_CONFIG)
        })
    };
    let listed = |nodes: &[Up; 2], want: Value| {
        for a in nodes {
            a.wait_within("every node's rules", Duration::from_secs(60), |a| {
                a.get("/v1/mesh")["excluded"] == want
            });
        }
    };
    let rule = r#"{"class":"E","capability":"llm_inference"}"#;
    let control = |a: &Up, action: &str| -> Value {
        let body = format!(r#"{{"action":"{action}",{}"#, &rule[1..]);
        let done = a.mesh_op(&body);
        assert_eq!(done["done"], action, "{done}");
        done
    };
    let one = serde_json::json!(["class E off \"llm_inference\""]);

    let nodes = start();
    nodes[0].wait_within("a root", Duration::from_secs(60), |_| {
        root_status(&[&nodes[0], &nodes[1]], |s| s["agents"] == 20)
    });
    let done = control(&nodes[1], "exclude");
    assert_eq!(done["rule"]["class"], "E", "{done}");
    listed(&nodes, one.clone());
    drop(nodes);

    let nodes = start();
    listed(&nodes, one);
    // The console's status says it.
    let token = nodes[0].token().unwrap_or_default().to_owned();
    let status = cli(&["--api", &nodes[0].api, "--token", &token, "mesh", "status"]);
    assert!(
        status.contains("excluded from routing: class E off \"llm_inference\""),
        "{status}"
    );
    // And `qs doctor`, with the rest of the mesh's state.
    let doctor = qs()
        .args([
            "--api",
            &nodes[0].api,
            "--token",
            &token,
            "doctor",
            "--state-dir",
        ])
        .arg(dir.path().join("w1"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        said.contains("capability mapping: class E off \"llm_inference\""),
        "{said}"
    );
    control(&nodes[0], "include");
    listed(&nodes, serde_json::json!([]));
    drop(nodes);

    // (A root reads the bucket before it builds its first tree: had the lift not been
    // stored, the root would hold the rule from the store by now.)
    let nodes = start();
    nodes[0].wait_within("a root again", Duration::from_secs(60), |_| {
        root_status(&[&nodes[0], &nodes[1]], |s| {
            s["agents"] == 20 && s["excluded"] == serde_json::json!([])
        })
    });
}
