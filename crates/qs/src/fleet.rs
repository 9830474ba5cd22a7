//! The client commands: they talk to a running agent's API and decode its `v1` answers
//! (`qs up` and `qs agent` themselves are in `up.rs`).

use crate::client::{call, call_as, decode, try_get};
use crate::render::{self, OutputFormat};
use anyhow::{Context, Result, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use qs_agent::v1;
use qs_wire::{Record, parse_spec};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;
pub(crate) fn table(headers: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(headers.to_vec());
    t
}

pub(crate) fn show(
    output: OutputFormat,
    value: &Value,
    text: impl FnOnce(&Value) -> String,
) -> Result<()> {
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(value)?),
        OutputFormat::Text => println!("{}", text(value)),
    }
    Ok(())
}

/// Decodes an API answer as its `v1` type (the one definition of the API's JSON), then shows
/// it: as received for `--output json`, through `text` otherwise.
fn show_as<T: serde::de::DeserializeOwned>(
    output: OutputFormat,
    value: &Value,
    text: impl FnOnce(&T) -> String,
) -> Result<()> {
    let typed: T = decode(value.clone())?;
    show(output, value, |_| text(&typed))
}

/// A wire enum as its JSON name (`replica`, `stateless`); `-` for none.
fn name<T: serde::Serialize>(v: &T) -> String {
    s(&serde_json::to_value(v).unwrap_or(Value::Null))
}

pub(crate) fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub fn apply(api: &str, files: &[PathBuf]) -> Result<()> {
    for file in files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        // Check locally first so the error names the file as the user wrote it.
        parse_spec(&file.display().to_string(), &text)?;
        let name = file.display().to_string();
        let path = format!("/v1/specs?file={}", urlencode(&name));
        let v: v1::Applied = call_as(api, "POST", &path, Some(&text))?;
        let names: Vec<&str> = v.applied.iter().map(|n| n.as_str()).collect();
        println!("{}: applied {}", file.display(), names.join(", "));
    }
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn delete(api: &str, name: &str) -> Result<()> {
    let v: v1::Deleted = call_as(
        api,
        "DELETE",
        &format!("/v1/specs/{}", urlencode(name)),
        None,
    )?;
    println!("deleted {}; its instances are being stopped", v.deleted);
    Ok(())
}

pub fn ps(api: &str, output: OutputFormat) -> Result<()> {
    let v = call(api, "GET", "/v1/instances", None)?;
    show_as(output, &v, |rows: &Vec<v1::Instance>| {
        let mut t = table(&[
            "INSTANCE", "SERVICE", "NODE", "ROLE", "SERVING", "HOT", "PID", "PORT",
        ]);
        for i in rows {
            t.add_row(vec![
                i.instance.to_string(),
                i.service.to_string(),
                i.node.to_string(),
                name(&i.role),
                i.serving.to_string(),
                i.hot.to_string(),
                name(&i.pid),
                name(&i.port),
            ]);
        }
        t.to_string()
    })
}

pub fn addresses(api: &str, output: OutputFormat) -> Result<()> {
    let v = call(api, "GET", "/v1/addresses", None)?;
    show_as(output, &v, |rows: &Vec<v1::AddressView>| {
        let mut t = table(&[
            "PORT",
            "PROTOCOL",
            "SERVICE",
            "REACHES",
            "LISTENING",
            "INSTANCES",
        ]);
        for r in rows {
            let reaches = match (r.primary_only, &r.host, &r.path) {
                (true, _, _) => "primary".to_owned(),
                (false, None, None) => "any".to_owned(),
                (false, h, p) => format!(
                    "{}{}",
                    h.as_deref().unwrap_or(""),
                    p.as_deref().unwrap_or("")
                ),
            };
            let listening = match &r.error {
                Some(e) => format!("no: {e}"),
                None => r.listening.to_string(),
            };
            t.add_row(vec![
                r.port.to_string(),
                r.protocol.clone(),
                r.service.clone(),
                reaches,
                listening,
                r.endpoints.join(" "),
            ]);
        }
        t.to_string()
    })
}

pub fn services(api: &str, output: OutputFormat) -> Result<()> {
    let v = call(api, "GET", "/v1/services", None)?;
    show_as(output, &v, |rows: &Vec<v1::ServiceRow>| {
        let mut t = table(&[
            "NAME", "KIND", "PATTERN", "WANTED", "RUNNING", "SERVING", "DONE", "STEWARD",
        ]);
        for r in rows {
            t.add_row(vec![
                r.name.to_string(),
                r.kind.clone(),
                name(&r.pattern),
                format!("{}..{}", r.wanted, r.max),
                r.running.to_string(),
                r.serving.to_string(),
                r.completed.to_string(),
                name(&r.steward),
            ]);
        }
        t.to_string()
    })
}

pub fn nodes(api: &str, explain: Option<&str>, output: OutputFormat) -> Result<()> {
    let Some(service) = explain else {
        let v = call(api, "GET", "/v1/nodes", None)?;
        return show_as(output, &v, |nodes: &Vec<qs_wire::NodeStatus>| {
            let mut t = table(&[
                "NODE",
                "LEVEL",
                "WEIGHT",
                "CPU",
                "MEMORY",
                "GPUS",
                "INSTANCES",
            ]);
            for n in nodes {
                let cap_cpu = n.capacity.cpu_millicores as f64 / 1000.0;
                let used = n.committed.cpu_millicores as f64 / 1000.0;
                let util = n.load.cpu_util * 100.0;
                t.add_row(vec![
                    n.node.to_string(),
                    n.level.to_string(),
                    format!("{:.3}", qs_core::level_weight(n.level)),
                    format!("{used:.1}/{cap_cpu:.0} cores, {util:.0} % busy"),
                    format!("{} MiB", n.capacity.memory_bytes >> 20),
                    n.capacity.gpus.len().to_string(),
                    n.instances.len().to_string(),
                ]);
            }
            t.to_string()
        });
    };
    let v = call(
        api,
        "GET",
        &format!("/v1/nodes?explain={}", urlencode(service)),
        None,
    )?;
    show_as(output, &v, |explain: &v1::Explain| {
        let mut t = table(&[
            "NODE",
            "1 - PRESSURE",
            "VRAM FREE",
            "CPU FREE",
            "LEVEL WEIGHT",
            "COMPOSITE",
            "GATE",
        ]);
        for row in &explain.nodes {
            match row {
                v1::ExplainRow::Declines { node, reason, .. } => {
                    let mut cells = vec![node.to_string()];
                    cells.extend(std::iter::repeat_n("-".to_string(), 5));
                    cells.push(format!("declines: {reason}"));
                    t.add_row(cells);
                }
                v1::ExplainRow::Offers {
                    node,
                    offer,
                    passes_gate,
                } => {
                    let c = &offer.composite;
                    t.add_row(vec![
                        node.to_string(),
                        format!("{:.3}", 1.0 - c.pressure),
                        format!("{:.3}", c.vram_free),
                        format!("{:.3}", c.cpu_free),
                        format!("{:.3}", c.level_weight),
                        format!("{:.3}", c.value),
                        if *passes_gate { "passes" } else { "refused" }.into(),
                    ]);
                }
            }
        }
        format!("why each node would or would not take {service}:\n{t}")
    })
}

pub fn status(api: &str, output: OutputFormat) -> Result<()> {
    let health = call(api, "GET", "/health", None)?;
    let services = call(api, "GET", "/v1/services", None)?;
    // An agent too old to serve models, or whose model hosts fail, still shows the rest.
    let models = call(api, "GET", "/v1/models", None).unwrap_or_else(|e| {
        eprintln!("qs: the models were not shown: {e}");
        serde_json::Value::Null
    });
    let h: v1::Health = decode(health.clone())?;
    let rows: Vec<v1::ServiceRow> = decode(services.clone())?;
    let v = serde_json::json!({ "health": health, "services": services, "models": models["data"] });
    show(output, &v, |_| {
        let mut out = format!(
            "agent: {} ({} nodes here), ledger at event {}\n",
            h.status, h.nodes, h.ledger_next_seq
        );
        for r in &rows {
            let job = r.kind == "job";
            let ok = r.serving >= r.wanted as usize || job;
            out.push_str(&format!(
                "  {} {}: {}/{} serving{}\n",
                if ok { "ok  " } else { "WAIT" },
                r.name,
                r.serving,
                r.wanted,
                if job {
                    format!(", {} completed", r.completed)
                } else {
                    String::new()
                }
            ));
        }
        for m in models["data"].as_array().into_iter().flatten() {
            let q = &m["qs"];
            let field = |k: &str| q[k].as_str().unwrap_or("?").to_owned();
            let alert = q["alert"].as_str();
            out.push_str(&format!(
                "  {} model {} on {}: {}, tier {}, {} in flight, {} waiting{}\n",
                if alert.is_some() { "ALERT" } else { "ok  " },
                field("name"),
                field("node"),
                field("state"),
                field("tier"),
                q["in_flight"].as_u64().unwrap_or(0),
                q["waiting"].as_u64().unwrap_or(0),
                alert.map(|a| format!(" ({a})")).unwrap_or_default()
            ));
        }
        out.trim_end().to_owned()
    })
}

pub fn chaos_kill(api: &str, target: &str, watch: Option<Recovery<'_>>) -> Result<()> {
    let before = watch.as_ref().map(Recovery::before).transpose()?;
    let killed: v1::Killed = call_as(
        api,
        "POST",
        &format!("/v1/chaos/kill/{}", urlencode(target)),
        None,
    )?;
    match killed {
        v1::Killed::Agent { killed_agent, pid } => println!(
            "killed the agent of {killed_agent} (kill -9 of pid {pid}; its instances run on)"
        ),
        v1::Killed::Node { killed_node } => println!(
            "node {killed_node} died (its instances got SIGKILL; the fleet notices from its silence)"
        ),
        v1::Killed::Instance { killed, node } => {
            println!("killed {killed} on {node} (kill -9 of its process group)")
        }
    }
    match (watch, before) {
        (Some(w), Some(b)) => w.report(b, None),
        _ => Ok(()),
    }
}

pub fn chaos_pause(api: &str, node: &str, ms: u64, watch: Option<Recovery<'_>>) -> Result<()> {
    let before = watch.as_ref().map(Recovery::before).transpose()?;
    let paused: v1::Paused = call_as(
        api,
        "POST",
        &format!("/v1/chaos/pause/{}?ms={ms}", urlencode(node)),
        None,
    )?;
    match paused {
        v1::Paused::Agent { pid, ms, .. } => println!(
            "paused the agent of {node} for {ms} ms (SIGSTOP of pid {pid}; SIGCONT follows)"
        ),
        v1::Paused::Node { ms, .. } => println!("paused node {node} for {ms} ms"),
    }
    match (watch, before) {
        (Some(w), Some(b)) => w.report(b, Some((node, Duration::from_millis(ms)))),
        _ => Ok(()),
    }
}

/// Watches the fleet recover from a chaos action through one agent (the observer).
pub struct Recovery<'a> {
    pub observer: &'a str,
    pub timeout: Duration,
}

/// Where the observer stood just before the action.
pub struct Before {
    at: std::time::Instant,
    at_us: u64,
    seq: u64,
}

/// How often the observer is asked.
const RECOVERY_POLL: Duration = Duration::from_millis(50);
/// How long a disruption has to show before the fleet is taken as undisturbed.
const DISRUPTION_WAIT: Duration = Duration::from_secs(10);

impl Recovery<'_> {
    fn before(&self) -> Result<Before> {
        let health: v1::Health = call_as(self.observer, "GET", "/health", None)
            .with_context(|| format!("the observer {} does not answer", self.observer))?;
        Ok(Before {
            at: std::time::Instant::now(),
            at_us: qs_agent::clock::now().as_micros(),
            seq: health.ledger_next_seq,
        })
    }

    /// What is wrong with the fleet now, as the observer sees it; `None` when every service
    /// serves its wanted count, none runs past its maximum, and a paused node is back.
    fn trouble(&self, paused: Option<&str>) -> Option<String> {
        let Some(services) = try_get::<Vec<v1::ServiceRow>>(self.observer, "/v1/services") else {
            return Some("the observer does not answer".into());
        };
        for svc in services.iter().filter(|v| v.kind == "service") {
            let (serving, running) = (svc.serving, svc.running);
            let (wanted, max) = (svc.wanted as usize, svc.max as usize);
            if serving < wanted {
                return Some(format!("{} serves {serving} of {wanted}", svc.name));
            }
            if running > max {
                return Some(format!("{} runs {running}, more than {max}", svc.name));
            }
        }
        if let Some(node) = paused {
            let live = try_get::<Vec<qs_wire::NodeStatus>>(self.observer, "/v1/nodes")
                .is_some_and(|nodes| nodes.iter().any(|n| n.node.as_str() == node));
            if !live {
                return Some(format!("{node} is not back"));
            }
        }
        None
    }

    /// Waits for the disruption to show and to end, then tells the story from the ledger.
    fn report(self, before: Before, paused: Option<(&str, Duration)>) -> Result<()> {
        let node = paused.map(|(n, _)| n);
        let since = |t: std::time::Instant| t.duration_since(before.at).as_millis();
        let mut disrupted = None;
        let deadline = before.at + self.timeout;
        let recovered = loop {
            let now = std::time::Instant::now();
            match self.trouble(node) {
                Some(why) if disrupted.is_none() => {
                    println!("  +{:>6} ms  disrupted: {why}", since(now));
                    disrupted = Some(now);
                }
                Some(_) => {}
                // A pause is over when its node is back: not before it ended.
                None if paused.is_some_and(|(_, d)| now < before.at + d) => {}
                None if disrupted.is_some() => break now,
                None if now >= before.at + DISRUPTION_WAIT => {
                    println!("  no disruption showed within {DISRUPTION_WAIT:?}");
                    return Ok(());
                }
                None => {}
            }
            if now >= deadline {
                bail!(
                    "the fleet did not recover within {:?}: {}",
                    self.timeout,
                    self.trouble(node).unwrap_or_default()
                );
            }
            std::thread::sleep(RECOVERY_POLL);
        };
        println!("  +{:>6} ms  recovered", since(recovered));
        // The ledger's side of the story: what the fleet did, stamped by those who did it.
        let records: Vec<Record> = call_as(
            self.observer,
            "GET",
            &format!("/v1/events?from={}&limit=1000", before.seq),
            None,
        )?;
        let placed: Vec<&Record> = records
            .iter()
            .filter(|r| matches!(r.event, qs_wire::Event::Placed { .. }))
            .collect();
        let after_ms = |r: &Record| r.at_us.saturating_sub(before.at_us) / 1000;
        println!(
            "ledger ({}): {} events since, {} placements",
            self.observer,
            records.len(),
            placed.len()
        );
        for r in &placed {
            println!("  +{:>6} ms  {}", after_ms(r), render::describe(&r.event));
        }
        println!(
            "recovery time: {} ms (from the action to every service serving again{})",
            since(recovered),
            if paused.is_some() {
                " and the node back"
            } else {
                ""
            }
        );
        Ok(())
    }
}

pub fn approve(api: &str, service: &str) -> Result<()> {
    let v: v1::Approved = call_as(
        api,
        "POST",
        &format!("/v1/services/{}/approve", urlencode(service)),
        None,
    )?;
    println!(
        "approved promoting a replica of {} (steward {})",
        v.approved, v.steward
    );
    Ok(())
}

/// Prints ledger events from a running agent; with `follow`, keeps waiting for new ones.
pub fn events_from_api(
    api: &str,
    from: u64,
    limit: usize,
    follow: bool,
    output: OutputFormat,
    keep: impl Fn(&Record) -> bool,
) -> Result<()> {
    let mut at = from;
    let mut shown = 0;
    loop {
        let wait = if follow { 10_000 } else { 0 };
        let records: Vec<Record> = call_as(
            api,
            "GET",
            &format!("/v1/events?from={at}&limit=1000&wait_ms={wait}"),
            None,
        )?;
        if records.is_empty() && !follow {
            return Ok(());
        }
        for r in &records {
            at = r.seq + 1;
            if !keep(r) {
                continue;
            }
            match output {
                OutputFormat::Json => println!("{}", serde_json::to_string(r)?),
                OutputFormat::Text => println!("{}", render::line(r)),
            }
            shown += 1;
            if !follow && shown >= limit {
                return Ok(());
            }
        }
    }
}

/// Drains a node and shows its instances leaving until none is left.
pub fn drain(api: &str, node: &str, undo: bool, timeout: Duration) -> Result<()> {
    let path = format!("/v1/nodes/{}/drain", urlencode(node));
    if undo {
        let _: v1::Drain = call_as(api, "DELETE", &path, None)?;
        println!("{node} takes work again");
        return Ok(());
    }
    let _: v1::Drain = call_as(api, "POST", &path, None)?;
    println!("draining {node}: it declines new work; its instances move elsewhere");
    let start = std::time::Instant::now();
    let mut last = usize::MAX;
    loop {
        let rows: Vec<v1::Instance> = call_as(api, "GET", "/v1/instances", None)?;
        let left: Vec<String> = rows
            .iter()
            .filter(|i| i.node.as_str() == node)
            .map(|i| i.instance.to_string())
            .collect();
        if left.len() != last {
            println!(
                "  {} instance(s) left on {node}{}",
                left.len(),
                if left.is_empty() {
                    String::new()
                } else {
                    format!(": {}", left.join(", "))
                }
            );
            last = left.len();
        }
        if left.is_empty() {
            println!("{node} is drained");
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!(
                "{node} still runs {} instance(s) after {} s",
                left.len(),
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
