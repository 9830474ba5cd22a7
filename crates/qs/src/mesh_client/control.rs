//! A control's report as the operator reads it (seed §7.1: "Healing SECTOR-12: 3 agents
//! restarted …"; §7.2: "Traffic now avoiding: …", what they are stuck on, whose tasks were
//! taken; "Capability mapping updated: …").

use super::{ago, busy_text, ms_text, scope_text};
use serde_json::Value;

/// A route-around's agents held out, or a reassignment's agents whose tasks were taken, one
/// line each (seed §7.2: "Traffic now avoiding: … (impedance 847ms)", and "stuck on: …").
fn routed_lines(v: &Value) -> String {
    let (doing, count) = match v["done"].as_str() {
        Some("reassign") => ("taking the task of", "agents_reassigned"),
        _ => ("avoiding", "agents_routed_around"),
    };
    let mut lines = String::new();
    for a in v["routed"].as_array().into_iter().flatten() {
        lines.push_str(&format!(
            "\n  {doing} agent {:016x} of cluster {} (impedance {:.0} ms)",
            a["agent"].as_u64().unwrap_or(0),
            a["cluster"].as_u64().unwrap_or(0),
            a["impedance_ms"].as_f64().unwrap_or(0.0)
        ));
        match busy_text(a).as_str() {
            "" => lines.push_str(": no work under way that its host knows of"),
            busy => lines.push_str(&format!(": busy with {busy}")),
        }
    }
    let more = v[count].as_u64().unwrap_or(0) as usize;
    let named = v["routed"].as_array().map_or(0, Vec::len);
    if named > 0 && more > named {
        lines.push_str(&format!("\n  and {} more", more - named));
    }
    lines
}

/// A control's report as a sentence (seed §7.1: "Healing SECTOR-12: 3 agents restarted …"):
/// what it did, how many nodes in scope confirmed it, and who did not.
pub(crate) fn control_outcome(v: &Value) -> String {
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let plural = |n: u64, one: &str, many: &str| match n {
        1 => format!("1 {one}"),
        n => format!("{n} {many}"),
    };
    let scope = match scope_text(&v["scope"]).as_str() {
        "global" => "the whole mesh".to_string(),
        s => s.to_string(),
    };
    let frozen_on = n("was_frozen_on");
    let did = match v["done"].as_str().unwrap_or("?") {
        "heal" => format!(
            "healed {scope}: {} released (from quarantine or held out of routing), {} \
             closed, {} released{}",
            plural(n("agents_released"), "agent", "agents"),
            plural(n("breakers_closed"), "breaker", "breakers"),
            plural(n("conflicts_released"), "conflict", "conflicts"),
            match frozen_on {
                0 => String::new(),
                k => format!(", thawed on {}", plural(k, "node", "nodes")),
            }
        ),
        "freeze" => format!(
            "froze {scope}: operations in it are refused until a thaw{}",
            match v["preserved"].as_str() {
                Some(path) => format!("; state preserved to {path}"),
                None => String::new(),
            }
        ),
        "route-around" => format!(
            "routed around {} slower than {} ms in {scope} for {}: out of the routing pool \
             until then, or a heal",
            plural(n("agents_routed_around"), "agent", "agents"),
            n("slower_than_ms"),
            ago(n("for_ms"))
        ),
        "reassign" => format!(
            "asked the nodes of {} slower than {} ms in {scope} on tasks to take their tasks \
             from them: each one still held goes back to its node's queue, for another worker \
             (`qs task show ID` follows it)",
            plural(n("agents_reassigned"), "agent", "agents"),
            n("slower_than_ms"),
        ),
        action @ ("exclude" | "include") => {
            let rule = &v["rule"];
            let class = rule["class"].as_str().unwrap_or("?");
            let capability = rule["capability"].as_str().unwrap_or("?");
            let agents = plural(n("agents_excluded"), "agent", "agents");
            match action {
                "exclude" => format!(
                    "capability mapping updated: class {class} agents now excluded from \
                     '{capability}' routing ({agents} with it now)"
                ),
                _ => format!(
                    "capability mapping updated: class {class} agents back in '{capability}' \
                     routing ({agents} with it now)"
                ),
            }
        }
        "thaw" => match frozen_on {
            0 => format!("thawed {scope} (it was not frozen)"),
            k => format!("thawed {scope} (frozen on {})", plural(k, "node", "nodes")),
        },
        other => format!("{other} {scope}"),
    };
    let mut line = format!(
        "{did}; confirmed by {} of {} in {}",
        n("confirmed"),
        plural(n("nodes"), "node", "nodes"),
        ms_text(n("waited_ms"))
    );
    let missing: Vec<&str> = v["unconfirmed"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !missing.is_empty() {
        let more = n("nodes").saturating_sub(n("confirmed")) as usize;
        let more = more.saturating_sub(missing.len());
        line.push_str(&format!(
            "; not confirmed by {}{} (down, partitioned, or on another tree: run it again when \
             they are back)",
            missing.join(", "),
            match more {
                0 => String::new(),
                m => format!(" and {m} more"),
            }
        ));
    }
    line + &routed_lines(v)
}
