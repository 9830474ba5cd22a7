//! The mesh through the agent's API, for `qs mesh` and `qs mesh chat`: an action posted to
//! `POST /v1/mesh/ops` and its outcome printed, `GET /v1/mesh` as tables, and scopes read
//! from the operator's words.

use crate::client;
use crate::render::OutputFormat;
use anyhow::{Result, bail};
use comfy_table::Table;
use qs_wire::mesh::{ClusterId, ImpedanceClass, MeshAction, Scope, SectorId};
use serde_json::Value;
use std::time::Duration;

/// `sector 7`, `S7`, `SECTOR-7`, `cluster 12`, `C12`; empty, `all`, `mesh`: the whole mesh.
pub(crate) fn scope_of(text: &str) -> Result<Scope> {
    let t = text.trim().to_ascii_lowercase().replace(['-', '_'], " ");
    if t.is_empty() || ["all", "mesh", "global", "everything", "everyone"].contains(&t.as_str()) {
        return Ok(Scope::Global);
    }
    let (word, num): (String, String) = {
        let w: String = t.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
        let n: String = t[w.len()..]
            .trim()
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        (w, n)
    };
    let Ok(n) = num.parse::<u32>() else {
        bail!("{text:?}: a scope is `sector N`, `cluster N` or `all`");
    };
    match word.as_str() {
        "s" | "sector" => Ok(Scope::Sector(SectorId(n))),
        "c" | "cluster" => Ok(Scope::Cluster(ClusterId(n))),
        _ => bail!("{text:?}: a scope is `sector N`, `cluster N` or `all`"),
    }
}

/// A heal's target: a scope, or `auto` (the seed's default, `heal(target='auto')`) for the
/// whole mesh, where a heal changes only what is broken.
pub(crate) fn heal_scope(text: &str) -> Result<Scope> {
    match text.trim().eq_ignore_ascii_case("auto") {
        true => Ok(Scope::Global),
        false => scope_of(text),
    }
}

pub(crate) fn op(api: &str, action: &MeshAction, output: OutputFormat) -> Result<()> {
    action.check().map_err(anyhow::Error::msg)?;
    let body = serde_json::to_string(action)?;
    // The agent waits for the outcome as long as the operation may take, and some more.
    let wait = Duration::from_millis(action.longest_ms()) + Duration::from_secs(60);
    let v = client::call_within(api, "POST", "/v1/mesh/ops", Some(&body), wait)?;
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        OutputFormat::Text => print_outcome(&v),
    }
    Ok(())
}

/// Runs control `action` through the API and prints its report; the report.
pub(crate) fn control(api: &str, action: MeshAction, output: OutputFormat) -> Result<Value> {
    let body = serde_json::to_string(&action)?;
    let v = client::call(api, "POST", "/v1/mesh/ops", Some(&body))?;
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        OutputFormat::Text => println!("{}", control_outcome(&v)),
    }
    Ok(v)
}

/// A led cluster's counts: its agents by state and class, and its mean impedance.
fn cluster_table(row: &Value) -> Table {
    let mut table = Table::new();
    table.set_header([
        "cluster",
        "agents",
        "active",
        "joining",
        "held out",
        "quarantined",
        "spiking",
        "A",
        "B",
        "C",
        "D",
        "E",
        "F",
        "mean ms",
    ]);
    let mut cells: Vec<String> = [
        "cluster",
        "agents",
        "active",
        "joining",
        "held",
        "quarantined",
        "spiking",
    ]
    .iter()
    .map(|k| row[*k].as_u64().unwrap_or(0).to_string())
    .collect();
    let classes = row["classes"].as_array().cloned().unwrap_or_default();
    cells.extend(classes.iter().map(Value::to_string));
    cells.push(format!(
        "{:.0}",
        row["mean_score_ms"].as_f64().unwrap_or(0.0)
    ));
    table.add_row(cells);
    table
}

/// A led cluster's agents, one row each: state, class, impedance, place in the routing
/// pool (in it, joining, held out for a while after missed operations or a conflict, or out
/// while not active), and what it works on.
pub(crate) fn agents_table(v: &Value, cluster: u32) -> Table {
    let mut table = Table::new();
    table.set_header([
        "agent",
        "state",
        "class",
        "score ms",
        "lead ms",
        "drift",
        "pool",
        "missed",
        "spiking",
        "busy with",
    ]);
    let agents = v["led_agents"].as_array().into_iter().flatten();
    for a in agents.filter(|a| a["cluster"].as_u64() == Some(u64::from(cluster))) {
        let held_ms = a["held_ms"].as_u64().unwrap_or(0);
        let active = a["state"] == "active";
        let pool = match (a["admitted"].as_bool() == Some(true), active, held_ms) {
            (_, false, _) => "out".to_string(),
            (true, _, _) => "in".to_string(),
            (false, true, 0) => "joining".to_string(),
            (false, true, ms) => format!("held out {}", ms_text(ms)),
        };
        let f = |k: &str| format!("{:.0}", a[k].as_f64().unwrap_or(0.0));
        table.add_row([
            format!("{:016x}", a["agent"].as_u64().unwrap_or(0)),
            a["state"].as_str().unwrap_or("?").to_string(),
            a["class"].as_str().unwrap_or("?").to_string(),
            f("score_ms"),
            f("lead_ms"),
            format!("{:+.2}", a["drift"].as_f64().unwrap_or(0.0)),
            pool,
            a["missed"].as_u64().unwrap_or(0).to_string(),
            match a["spiking"].as_bool() {
                Some(true) => "yes",
                _ => "",
            }
            .to_string(),
            busy_text(a),
        ]);
    }
    table
}

/// What an agent (a led agent's or a routed-around one's JSON) works on, and for how long:
/// `task 7: summarize the logs, for 4m (waiting on GPU memory)`; empty if nothing.
fn busy_text(a: &Value) -> String {
    let Some(with) = a["busy"]["with"].as_str() else {
        return String::new();
    };
    let mut text = format!(
        "{with}, for {}",
        ago(a["busy_for_ms"].as_u64().unwrap_or(0))
    );
    if let Some(note) = a["busy"]["note"].as_str().filter(|n| !n.is_empty()) {
        text.push_str(&format!(" ({note})"));
    }
    text
}

/// Milliseconds as the CLI says them: `40 ms`, `1.2 s`.
fn ms_text(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        _ => format!("{:.1} s", ms as f64 / 1000.0),
    }
}

/// A span as the seed's status box says it: `42s`, `12m`, `3h 27m`, `2d 5h`.
pub(crate) fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3_600 => format!("{}m", s / 60),
        3_600..86_400 => format!("{}h {}m", s / 3_600, s % 3_600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3_600),
    }
}

/// The share of agents active, and the sectors at least 95 % active (seed §6.3's healthy
/// ones) of those the root has summaries of, from `/v1/mesh`'s JSON.
pub(crate) fn health_line(v: &Value) -> String {
    let (agents, active) = (v["agents"].as_f64().unwrap_or(0.0), v["active"].as_f64());
    let share = match agents {
        0.0 => 100.0,
        n => 100.0 * active.unwrap_or(0.0) / n,
    };
    let sectors = v["sectors"].as_array().cloned().unwrap_or_default();
    let healthy = sectors
        .iter()
        .filter(|s| {
            let (n, a) = (s["agents"].as_f64(), s["active"].as_f64());
            n.zip(a).is_some_and(|(n, a)| n == 0.0 || a >= 0.95 * n)
        })
        .count();
    match sectors.len() {
        0 => format!("{share:.1} % active"),
        n => format!("{share:.1} % active, {healthy} of {n} sectors healthy"),
    }
}

/// Whether an operation's result is a retry's (a phase with attempts before it).
fn retried(v: &Value) -> bool {
    v["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p["earlier"].as_array().is_some_and(|e| !e.is_empty()))
}

pub(crate) fn print_outcome(v: &Value) {
    if v["queued"].is_object() {
        println!("{}", queued_outcome(&v["queued"]));
        return;
    }
    let t = &v["tally"];
    let n = |k: &str| t[k].as_u64().unwrap_or(0);
    println!(
        "{} ({}), {} in {:.0} ms; mode {}",
        v["status"].as_str().unwrap_or("?"),
        v["decision"]["decision"].as_str().unwrap_or("?"),
        v["mode"].as_str().unwrap_or("?"),
        v["latency_ms"].as_f64().unwrap_or(0.0),
        v["degradation"].as_str().unwrap_or("?"),
    );
    // Seed §5.2: what the quorum recommends, and how to do it here.
    let d = &v["decision"];
    if let (Some(reason), Some(what)) = (d["reason"].as_str(), d["recommendation"].as_str()) {
        let how = match d["decision"].as_str() {
            Some("wait") => {
                " (each cluster in doubt extended its window once already; for longer: a delegation's --timeout, the API's window_ms)"
            }
            Some("resolve-conflicts") => " (qs mesh status, qs events; qs mesh heal once reviewed)",
            Some("retry") if retried(v) => {
                " (retried once already, to those not READY, with a longer budget and window; the leads measured both: run it again)"
            }
            Some("retry") => {
                " (not retried by itself: an ask, a delegation, the urgent mode, or nothing to send again that could reach the quorum; the leads measured this run: run it again)"
            }
            _ => "",
        };
        println!("  {reason}: {what}{how}");
    }
    println!(
        "  {} targeted, {} sent, {} ready, {} conflict, {} late (quarantined), {} skipped (too late to send), {} unreachable",
        n("targeted"),
        n("sent"),
        n("ready"),
        n("conflict"),
        n("late"),
        n("skipped"),
        n("unreachable")
    );
    if n("waited") > 0 {
        println!(
            "  {} clusters extended their window once (their quorum said WAIT)",
            n("waited")
        );
    }
    if retried(v) {
        println!(
            "  retried once (its first attempt's quorum said RETRY): {} READY before were not sent it again",
            n("carried")
        );
    }
    for n in v["named"].as_array().into_iter().flatten() {
        println!("  {}", named_line(n));
    }
    if let Some(answers) = v["answers"].as_array().filter(|a| !a.is_empty()) {
        println!("  answers:");
        for a in answers {
            // (Line breaks and tabs, which an answer may hold, shown escaped.)
            println!(
                "    {:>6}  {}",
                a["count"].as_u64().unwrap_or(0),
                a["answer"].as_str().unwrap_or("").escape_debug()
            );
        }
    }
}

/// Who answered what, as the root names it: `agent 00000000000000ab (class D, sector 3,
/// cluster 7): READY after 34 ms of work: "…"`.
pub(crate) fn named_line(n: &Value) -> String {
    let class = n["class"]
        .as_str()
        .map_or(String::new(), |k| format!("class {k}, "));
    let answer = match n["answer"].as_str().filter(|a| !a.is_empty()) {
        Some(a) => format!(": {a:?}"),
        None => String::new(),
    };
    format!(
        "agent {:016x} ({class}sector {}, cluster {}): {} after {} ms of work{answer}",
        n["agent"].as_u64().unwrap_or(0),
        n["sector"],
        n["cluster"],
        match n["state"].as_i64() {
            Some(1) => "READY",
            Some(0) => "IN TRANSIT",
            Some(-1) => "CONFLICT",
            _ => "?",
        },
        n["took_ms"],
    )
}

/// `--to`: a class by its letter (`D`), the seed's name (`CLASS_D_GPU`) or its kind
/// (`gpu`); `best_available` (or `best`, `any`): none.
pub(crate) fn class_of(text: &str) -> Result<Option<ImpedanceClass>> {
    let t = text.trim().to_ascii_lowercase().replace('-', "_");
    let t = t.strip_prefix("class_").unwrap_or(&t);
    let kinds = [
        ("edge", ImpedanceClass::A),
        ("serverless", ImpedanceClass::B),
        ("persistent", ImpedanceClass::C),
        ("gpu", ImpedanceClass::D),
        ("local", ImpedanceClass::E),
        ("human", ImpedanceClass::F),
    ];
    if ["best_available", "best", "any"].contains(&t) {
        return Ok(None);
    }
    for (kind, class) in kinds {
        let letter = class.letter().to_ascii_lowercase().to_string();
        let named = t == letter || t == kind || t == format!("{letter}_{kind}");
        if named {
            return Ok(Some(class));
        }
    }
    bail!("--to {text:?}: a class A to F (or CLASS_D_GPU, gpu), or best_available")
}

/// What the root said of an operation it queued.
pub(crate) fn queued_outcome(q: &Value) -> String {
    format!(
        "queued as operation {} ({} queues non-urgent operations; {} in the queue): it starts \
         when the mesh is {} or better, or is dropped after {}; its result goes to the ledger \
         (qs events)",
        q["op"],
        q["mode"].as_str().unwrap_or("?"),
        q["position"],
        q["waits_for"].as_str().unwrap_or("?"),
        ago(q["max_wait_ms"].as_u64().unwrap_or(0)),
    )
}

/// The operations queued at the root, if any: oldest first.
pub(crate) fn queued_line(v: &Value) -> Option<String> {
    let list = v["queued"].as_array().filter(|l| !l.is_empty())?;
    let ops: Vec<String> = list
        .iter()
        .map(|q| {
            format!(
                "{} ({} {} {}, priority {}, waiting {})",
                q["op"],
                q["mode"].as_str().unwrap_or("?"),
                q["verb"].as_str().unwrap_or("?"),
                scope_text(&q["scope"]),
                q["priority"],
                ago(q["waited_ms"].as_u64().unwrap_or(0)),
            )
        })
        .collect();
    let n = match list.len() {
        1 => "1 operation".to_string(),
        n => format!("{n} operations"),
    };
    Some(format!(
        "{n} queued until DEGRADED_LIGHT or better: {}",
        ops.join(", ")
    ))
}

/// A scope as the API writes it (`{"level": "sector", "id": 3}`), as the command line does.
fn scope_text(v: &Value) -> String {
    serde_json::from_value::<Scope>(v.clone()).map_or_else(|_| v.to_string(), |s| s.to_string())
}

/// The conflicts a node's status reports: the mesh's unresolved (at the root), its own,
/// and those escalated to it.
pub(crate) fn conflicts_line(v: &Value) -> String {
    let counts = |c: &Value| {
        format!(
            "{} unresolved ({} critical, {} past their time)",
            c["open"], c["critical"], c["overdue"]
        )
    };
    let mut parts = Vec::new();
    if v["mesh_conflicts"].is_object() {
        parts.push(format!("mesh-wide {}", counts(&v["mesh_conflicts"])));
    }
    parts.push(format!(
        "here {} heard, {}, {} resolved, {} escalated here",
        v["conflicts"],
        counts(&v["conflicts_unresolved"]),
        v["conflicts_resolved"],
        v["conflicts_escalated_here"]
    ));
    if v["conflicts_dropped"].as_u64().is_some_and(|n| n > 0) {
        parts.push(format!(
            "{} dropped from a full quarantine (in the ledger)",
            v["conflicts_dropped"]
        ));
    }
    if v["late_answers"].as_u64().is_some_and(|n| n > 0) {
        parts.push(format!("{} answers taken late", v["late_answers"]));
    }
    parts.join("; ")
}

/// `GET /v1/mesh` printed for `scope`; the view printed.
/// A node's status as JSON for `scope`: a sector's row alone (of the sectors the root
/// summarizes), or a cluster's row and agents (of those this node leads); the mesh-wide
/// fields as they are.
fn scoped(mut v: Value, scope: &Scope) -> Result<Value> {
    let keep = |v: &mut Value, key: &str, field: &str, id: u32| {
        if let Some(rows) = v[key].as_array_mut() {
            rows.retain(|r| r[field].as_u64() == Some(u64::from(id)));
        }
        v[key].as_array().is_some_and(|r| !r.is_empty())
    };
    match scope {
        Scope::Global => {}
        Scope::Sector(s) => {
            if !keep(&mut v, "sectors", "sector", s.0) {
                bail!(
                    "sector {} is not among the sectors this node knows of (ask the root's API)",
                    s.0
                );
            }
        }
        Scope::Cluster(c) => {
            if !keep(&mut v, "clusters", "cluster", c.0) {
                bail!(
                    "cluster {} is not led by this node; ask its lead's API",
                    c.0
                );
            }
            keep(&mut v, "led_agents", "cluster", c.0);
            if let Some(s) = v["clusters"][0]["sector"].as_u64() {
                keep(&mut v, "sectors", "sector", s as u32);
            }
        }
    }
    Ok(v)
}

pub(crate) fn status(api: &str, scope: &Scope, output: OutputFormat) -> Result<Value> {
    let v = client::call(api, "GET", "/v1/mesh", None)?;
    if matches!(output, OutputFormat::Json) {
        let v = scoped(v, scope)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(v);
    }
    let k = &v["kpis"];
    println!(
        "mesh: {} of {} agents active ({}; {} joining the routing pool), mode {}, root {}{}",
        v["active"],
        v["agents"],
        health_line(&v),
        v["joining"],
        v["mode"].as_str().unwrap_or("?"),
        v["root"].as_str().unwrap_or("(none)"),
        if v["is_root"].as_bool() == Some(true) {
            " (this node)"
        } else {
            ""
        }
    );
    println!(
        "  operations {} ({}), quorum {:.1} %, window hits {:.1} %, within 50 ms {:.1} %, conflicts {:.2} %, cascade p95 {:.0} ms",
        k["operations"],
        match k["last_operation_ago_ms"].as_u64() {
            Some(ms) => format!("the last {} ago", ago(ms)),
            None => "none yet".to_string(),
        },
        100.0 * k["coordination_success_rate"].as_f64().unwrap_or(0.0),
        100.0 * k["arrival_window_hit_rate"].as_f64().unwrap_or(0.0),
        100.0 * k["prediction_accuracy"].as_f64().unwrap_or(0.0),
        100.0 * k["conflict_rate"].as_f64().unwrap_or(0.0),
        k["cascade_latency_p95_ms"].as_f64().unwrap_or(0.0)
    );
    println!("  conflicts: {}", conflicts_line(&v));
    if let Some(line) = queued_line(&v) {
        println!("  {line}");
    }
    for (key, label) in [
        ("breakers", "breakers"),
        ("frozen", "frozen"),
        ("excluded", "excluded from routing"),
        (
            "new_nodes",
            "new nodes (leading only where no seasoned node can)",
        ),
    ] {
        if let Some(list) = v[key].as_array().filter(|l| !l.is_empty()) {
            println!(
                "  {label}: {}",
                list.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let mut table = Table::new();
    match scope {
        Scope::Cluster(c) => {
            let Some(row) = v["clusters"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|row| row["cluster"].as_u64() == Some(u64::from(c.0)))
            else {
                println!(
                    "  cluster {} is not led by this node; ask its lead's API",
                    c.0
                );
                return Ok(v);
            };
            println!("{}", cluster_table(row));
            table = agents_table(&v, c.0);
        }
        _ => {
            table.set_header([
                "sector",
                "coordinator",
                "clusters",
                "agents",
                "active",
                "joining",
                "mean ms",
                "p95 ms",
                "anomalies",
                "conflicts open",
                "breaker",
            ]);
            for row in v["sectors"].as_array().into_iter().flatten() {
                if let Scope::Sector(s) = scope
                    && row["sector"].as_u64() != Some(u64::from(s.0))
                {
                    continue;
                }
                table.add_row([
                    row["sector"].to_string(),
                    row["coordinator"].as_str().unwrap_or("").to_string(),
                    row["clusters"].to_string(),
                    row["agents"].to_string(),
                    row["active"].to_string(),
                    row["joining"].to_string(),
                    format!("{:.0}", row["mean_impedance_ms"].as_f64().unwrap_or(0.0)),
                    format!("{:.0}", row["p95_impedance_ms"].as_f64().unwrap_or(0.0)),
                    row["anomalies"].to_string(),
                    format!(
                        "{} ({} critical)",
                        row["conflicts"]["open"], row["conflicts"]["critical"]
                    ),
                    if row["breaker_open"].as_bool() == Some(true) {
                        "OPEN"
                    } else {
                        "closed"
                    }
                    .to_string(),
                ]);
            }
            if table.row_count() == 0 {
                println!(
                    "  no sector summaries here: ask the root ({})",
                    v["root"].as_str().unwrap_or("none yet")
                );
                return Ok(v);
            }
        }
    }
    println!("{table}");
    Ok(v)
}

mod control;
pub(crate) use control::control_outcome;

#[cfg(test)]
mod tests;
