//! Durable tasks through a real `qs up` and the `qs task` client: submission from a file and
//! over the API (an idempotency key names one task), the queues in `/queue_stats`, bad tasks
//! refused with their place and field, cancelling, deadlines, and every step in the ledger.

mod common;

use common::*;
use serde_json::{Value, json};

fn task_file(dir: &std::path::Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

const TASK: &str = r#"
[task]
class = "batch"
priority = 4
difficulty = 0.3
idempotency_key = "eval-17"
payload = '{"question": "why is the sky blue?"}'
max_iterations = 8
deadline_ms = 600000
"#;

fn task_steps(up: &Up, id: &str) -> Vec<String> {
    up.events()
        .iter()
        .filter(|e| e["event"]["event"] == "task" && e["event"]["task"] == id)
        .map(|e| e["event"]["step"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn tasks_are_submitted_once_queued_listed_cancelled_and_expired() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path());
    let file = task_file(dir.path(), "eval.toml", TASK);
    let said = cli(&[
        "--api", &up.api, "task", "submit", "-f", &file, "--output", "json",
    ]);
    let first: Value = serde_json::from_str(&said).unwrap();
    let id = first["id"].as_str().unwrap().to_owned();
    assert_eq!(first["existing"], false);
    // The same key again, by file or over the API, names the same task.
    let again = cli(&["--api", &up.api, "task", "submit", "-f", &file]);
    assert!(
        again.contains(&id) && again.contains("named it already"),
        "{again}"
    );
    let mut spec: Value = serde_json::to_value(qs_wire::parse_task("t", TASK).unwrap()).unwrap();
    let (status, body) = up.http("POST", "/v1/tasks", &spec.to_string());
    assert_eq!((status, body["id"].as_str()), (200, Some(id.as_str())));
    spec["idempotency_key"] = json!("eval-18");
    let (status, second) = up.http("POST", "/v1/tasks", &spec.to_string());
    assert_eq!(status, 201, "{second}");

    let stats = up.get("/queue_stats");
    assert_eq!(stats["tasks"]["inbound"], 2, "{stats}");
    let (_, metrics) = up.http("GET", "/metrics", "");
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(
        metrics.contains("qs_tasks{queue=\"inbound\"} 2"),
        "{metrics}"
    );
    let queues = cli(&["--api", &up.api, "queues"]);
    assert!(
        queues.contains("INBOUND") && queues.contains("REFINEMENT"),
        "{queues}"
    );
    let listed = cli(&["--api", &up.api, "task", "ls"]);
    assert!(
        listed.contains(&id) && listed.contains("inbound"),
        "{listed}"
    );
    let shown = up.get(&format!("/v1/tasks/{id}"));
    assert_eq!(
        shown["spec"]["payload"],
        "{\"question\": \"why is the sky blue?\"}"
    );

    // Bad tasks are refused with their place and field, and nothing is queued.
    let bad = task_file(
        dir.path(),
        "bad.toml",
        &TASK.replace("priority = 4", "priority = 12"),
    );
    let out = qs()
        .args(["--api", &up.api, "task", "submit", "-f", &bad])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad.toml:2:1: task.priority: must be in 0..=9"),
        "{err}"
    );
    spec["idempotency_key"] = json!("eval-19");
    spec["payload"] = json!("x".repeat(64 * 1024 + 1));
    let (status, body) = up.http("POST", "/v1/tasks", &spec.to_string());
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("payload"),
        "{body}"
    );
    let (status, body) = up.http("POST", "/v1/tasks", "{\"class\": \"urgent\"}");
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("unknown variant"),
        "{body}"
    );
    assert_eq!(up.get("/queue_stats")["tasks"]["inbound"], 2);

    // Cancelled, a task ends once; a short deadline fails one.
    let cancelled = cli(&["--api", &up.api, "task", "cancel", &id]);
    assert!(cancelled.contains("cancelled"), "{cancelled}");
    let (status, _) = up.http("POST", &format!("/v1/tasks/{id}/cancel"), "");
    assert_eq!(status, 409, "an ended task stays as it ended");
    spec["payload"] = json!("");
    spec["idempotency_key"] = json!("soon");
    spec["deadline_ms"] = json!(300);
    let (status, soon) = up.http("POST", "/v1/tasks", &spec.to_string());
    assert_eq!(status, 201, "{soon}");
    let soon = soon["id"].as_str().unwrap().to_owned();
    up.wait("the short deadline passed", |u| {
        u.get(&format!("/v1/tasks/{soon}"))["phase"]["phase"] == "failed"
    });
    let stats = up.get("/queue_stats")["tasks"].clone();
    assert_eq!(
        (&stats["inbound"], &stats["cancelled"], &stats["failed"]),
        (&json!(1), &json!(1), &json!(1))
    );
    up.wait("the steps in the ledger", |u| {
        task_steps(u, &id) == ["submitted", "cancelled"]
            && task_steps(u, &soon) == ["submitted", "failed"]
    });
}

/// Every task an agent accepted is taken back after a kill -9: waiting ones wait again, ended
/// ones stay as they ended, and their idempotency keys still name them.
#[test]
fn accepted_tasks_survive_a_kill_9_of_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = Up::start(dir.path());
    let body = |key: &str| {
        json!({
            "class": "interactive", "idempotency_key": key, "payload": "p",
            "max_iterations": 3, "deadline_ms": 600000,
        })
        .to_string()
    };
    let (_, a) = up.http("POST", "/v1/tasks", &body("a"));
    let (_, b) = up.http("POST", "/v1/tasks", &body("b"));
    let (a, b) = (
        a["id"].as_str().unwrap().to_owned(),
        b["id"].as_str().unwrap().to_owned(),
    );
    let (status, _) = up.http("POST", &format!("/v1/tasks/{b}/cancel"), "");
    assert_eq!(status, 200);
    up.signal(libc::SIGKILL);
    drop(up);

    let up = Up::start(dir.path());
    assert_eq!(
        up.get(&format!("/v1/tasks/{a}"))["phase"]["phase"],
        "inbound"
    );
    assert_eq!(
        up.get(&format!("/v1/tasks/{b}"))["phase"]["phase"],
        "cancelled"
    );
    let (status, again) = up.http("POST", "/v1/tasks", &body("a"));
    assert_eq!((status, again["id"].as_str()), (200, Some(a.as_str())));
    assert_eq!(up.get("/queue_stats")["tasks"]["inbound"], 1);
}
