//! `qs task submit|ls|show|cancel` and `qs queues`: the client of the durable tasks' routes
//! and of `/queue_stats`.

use crate::client::{call, call_as};
use crate::fleet::{s, show, table};
use crate::render::OutputFormat;
use anyhow::{Context, Result};
use qs_agent::v1;
use serde_json::Value;
use std::path::Path;

/// Submits the task a file describes (checked here first, so an error names the file).
pub fn submit(api: &str, file: &Path, output: OutputFormat) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let spec = qs_wire::parse_task(&file.display().to_string(), &text)?;
    let body = serde_json::to_string(&spec)?;
    let v = call(api, "POST", "/v1/tasks", Some(&body))?;
    show(output, &v, |v| {
        let done: v1::Submitted = serde_json::from_value(v.clone()).unwrap_or(v1::Submitted {
            id: qs_wire::TaskId::new("unknown").expect("a valid name"),
            existing: false,
        });
        if done.existing {
            format!("{} (its idempotency key named it already)", done.id)
        } else {
            format!("{} submitted", done.id)
        }
    })
}

/// The phase of a task as the API shows it.
fn phase(t: &Value) -> String {
    let p = &t["phase"];
    match (
        p["phase"].as_str(),
        p["worker"].as_str(),
        p["reason"].as_str(),
    ) {
        (Some(name), Some(w), _) => format!("{name} ({w})"),
        (Some(name), _, Some(r)) => format!("{name}: {r}"),
        (Some(name), _, _) => name.to_owned(),
        _ => "-".into(),
    }
}

pub fn ls(api: &str, output: OutputFormat) -> Result<()> {
    let v = call(api, "GET", "/v1/tasks", None)?;
    show(output, &v, |v| {
        let mut t = table(&[
            "TASK",
            "CLASS",
            "PRIORITY",
            "MODEL",
            "PHASE",
            "ITERATION",
            "ATTEMPT",
        ]);
        for task in v.as_array().into_iter().flatten() {
            let spec = &task["spec"];
            t.add_row(vec![
                s(&task["id"]),
                s(&spec["class"]),
                s(&spec["priority"]),
                s(&spec["model"]),
                phase(task),
                s(&task["iteration"]),
                s(&task["attempt"]),
            ]);
        }
        t.to_string()
    })
}

pub fn show_one(api: &str, id: &str, output: OutputFormat) -> Result<()> {
    let v = call(api, "GET", &format!("/v1/tasks/{id}"), None)?;
    show(output, &v, |t| {
        let mut out = format!(
            "{}: {}, iteration {} of at most {}, attempt {}\nkey {}\nresult {}",
            s(&t["id"]),
            phase(t),
            s(&t["iteration"]),
            s(&t["spec"]["max_iterations"]),
            s(&t["attempt"]),
            s(&t["spec"]["idempotency_key"]),
            s(&t["result"]),
        );
        if let Some(p) = t.get("progress").filter(|p| !p.is_null()) {
            let pct = p["fraction"].as_f64().unwrap_or(0.0) * 100.0;
            out.push_str(&format!("\nprogress {pct:.0}% {}", s(&p["note"])));
        }
        if let Some(c) = t.get("checkpoint").filter(|c| !c.is_null()) {
            out.push_str(&format!(
                "\ncheckpoint at iteration {} by attempt {}",
                s(&c["iteration"]),
                s(&c["attempt"])
            ));
        }
        out
    })
}

pub fn cancel(api: &str, id: &str) -> Result<()> {
    let v: v1::Cancelled = call_as(api, "POST", &format!("/v1/tasks/{id}/cancel"), None)?;
    println!("{} cancelled", v.cancelled);
    Ok(())
}

pub fn queues(api: &str, output: OutputFormat) -> Result<()> {
    let v = call(api, "GET", "/queue_stats", None)?;
    let stats: v1::QueueStats = serde_json::from_value(v.clone())?;
    show(output, &v, |_| {
        let mut nodes = table(&["NODE", "PLACEMENTS IN FLIGHT", "INSTANCES", "STEWARDS"]);
        for (node, q) in &stats.nodes {
            nodes.add_row(vec![
                node.to_string(),
                q.placements_in_flight.to_string(),
                q.instances.to_string(),
                q.stewarded_services.to_string(),
            ]);
        }
        let t = &stats.tasks;
        let mut tasks = table(&[
            "INBOUND",
            "RUNNING",
            "REFINEMENT",
            "OUTBOUND",
            "COMPLETED",
            "FAILED",
            "CANCELLED",
            "CONCURRENCY",
        ]);
        tasks.add_row(
            [
                t.inbound,
                t.running,
                t.refinement,
                t.outbound,
                t.completed,
                t.failed,
                t.cancelled,
                t.concurrency,
            ]
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        );
        format!(
            "{nodes}\ntasks:\n{tasks}\ntask workers disconnected for misuse: {}",
            stats.workers_disconnected
        )
    })
}
