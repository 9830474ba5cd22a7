//! `qs mesh chat`: requests in plain words read through a grammar of intents (the seed's
//! example requests of §7.2 and their kin), or by an OpenAI-compatible endpoint when one is
//! named; each shows the command it becomes and runs only when the operator says yes.

use crate::client;
use crate::mesh_client::{control, op, scope_of, status};
use crate::render::OutputFormat;
use anyhow::{Result, bail};
use qs_wire::mesh::{CascadeMode, ClusterId, ImpedanceClass, MeshAction, Scope, SectorId, Verb};
use serde_json::Value;
use std::io::{BufRead, Write};

/// What the console understood a request as.
#[derive(Clone, Debug, PartialEq)]
pub enum Intent {
    Status(Scope),
    Act(MeshAction),
    /// Controls run one after another (seed §7.2: "reassign the task and fix the
    /// capability mapping"), the first error ending them.
    Acts(Vec<MeshAction>),
}

/// A broadcast of `message` (urgent: the parallel mode, priority 3).
fn broadcast(scope: Scope, message: String, urgent: bool) -> Intent {
    Intent::Act(MeshAction::Cascade {
        mode: match urgent {
            true => CascadeMode::Parallel,
            false => CascadeMode::Wave,
        },
        scope,
        verb: Verb::Sync,
        payload: message,
        priority: if urgent { 3 } else { 2 },
        sample: None,
        budget_ms: None,
        requires: None,
        approved: false,
        class: None,
        window_ms: None,
    })
}

/// A question to a sample of `sample` agents.
fn ask(scope: Scope, question: String, sample: u32) -> Intent {
    Intent::Act(MeshAction::Cascade {
        mode: CascadeMode::Wave,
        scope,
        verb: Verb::Observe,
        payload: question,
        priority: 2,
        sample: Some(sample),
        budget_ms: None,
        requires: None,
        approved: false,
        class: None,
        window_ms: None,
    })
}

/// A task for the one best agent (with `capability`, of `class`, if named), its answer
/// awaited `timeout_s`.
fn delegate(
    scope: Scope,
    task: String,
    capability: Option<String>,
    class: Option<ImpedanceClass>,
    timeout_s: u64,
) -> Intent {
    Intent::Act(delegation(scope, task, capability, class, timeout_s))
}

/// How long a delegation waits for its agent's answer by default (the seed's
/// `timeout_seconds=300`).
pub(crate) const DELEGATE_TIMEOUT_S: u64 = 300;

/// Slow, for a route-around: the seed's "agents with impedance > 500ms".
pub(crate) const SLOW_MS: u64 = 500;
/// How long a route-around holds agents out by default: ten minutes ("for now").
pub(crate) const ROUTE_AROUND_S: u64 = 600;

/// The agents of `scope` slower than `slower_than_ms`, out of the routing pool for `for_s`.
pub(crate) fn route_around(scope: Scope, slower_than_ms: u64, for_s: u64) -> MeshAction {
    MeshAction::RouteAround {
        scope,
        slower_than_ms,
        for_ms: for_s.saturating_mul(1_000),
        approved: false,
    }
}

/// A task for one agent, the best available where it looks (a sector and a cluster with
/// agents of `class` if named, chosen by the operation's hash; there the lowest lead with
/// `capability`, if named), its answer awaited `timeout_s` past its arrival.
pub(crate) fn delegation(
    scope: Scope,
    task: String,
    capability: Option<String>,
    class: Option<ImpedanceClass>,
    timeout_s: u64,
) -> MeshAction {
    MeshAction::Cascade {
        mode: CascadeMode::Wave,
        scope,
        verb: Verb::Act,
        payload: task,
        priority: 2,
        sample: Some(1),
        budget_ms: None,
        requires: capability,
        approved: false,
        class,
        window_ms: Some(timeout_s.saturating_mul(1_000)),
    }
}

/// The verbs a request may open with: the first word decides before any keyword found
/// later ("broadcast we halt trading at 4pm" is a broadcast, not a freeze).
const LEADING: [&str; 15] = [
    "status",
    "broadcast",
    "tell",
    "ask",
    "delegate",
    "reassign",
    "give",
    "heal",
    "restore",
    "freeze",
    "thaw",
    "unfreeze",
    "route",
    "exclude",
    "include",
];

/// The grammar of intents: the seed's example requests and their kin.
pub(crate) fn parse_intent(text: &str) -> Option<Intent> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let words = words_of(&lower);
    let scope = find_scope(&words);
    let lead = words.first().copied().filter(|w| LEADING.contains(w));
    // With a leading verb, only that verb's intent; else any keyword, in this order.
    let has = |w: &str| match lead {
        Some(first) => first == w,
        None => words.contains(&w),
    };
    let after = |marker: &str| -> Option<String> {
        let i = lower.find(marker)?;
        let rest = t[i + marker.len()..]
            .trim()
            .trim_start_matches([':', ','])
            .trim();
        (!rest.is_empty()).then(|| rest.trim_matches('"').to_string())
    };
    let everyone = lower.starts_with("tell everyone") || lower.starts_with("tell all");
    if (lead.is_none() && has("halt")) || has("freeze") || (has("stop") && has("everything")) {
        return Some(Intent::Act(MeshAction::Freeze { scope }));
    }
    // "route around them", "route around slow agents in sector 7", "route around agents
    // slower than 800 ms".
    if has("route") && words.contains(&"around") {
        return Some(Intent::Act(route_around(
            scope,
            slower_than_ms(&lower)?,
            ROUTE_AROUND_S,
        )));
    }
    // "reassign the task", "reassign their tasks", "reassign the tasks of agents slower than
    // 800 ms in cluster 4" (seed §7.2): the slow agents' own tasks, to other workers. What
    // names a task of its own ("reassign the summary job to gpu") is a delegation, below.
    // (Not when told not to: "don't reassign the task" is no request.)
    let negated = |verb: &str| {
        let at = words.iter().position(|w| *w == verb).unwrap_or(0);
        negates(&words[..at])
    };
    if has("reassign") && negated("reassign") {
        return None;
    }
    if has("reassign") && takes_their_tasks(after("reassign").as_deref()) {
        return Some(Intent::Act(MeshAction::Reassign {
            scope,
            slower_than_ms: slower_than_ms(&lower)?,
            approved: false,
        }));
    }
    let opened = lead.is_some_and(|l| l == "exclude" || l == "include");
    if (lead.is_none() || opened)
        && let Some(rule) = mapping::parse_mapping(t, &words, opened)
    {
        return rule.map(Intent::Act);
    }
    if has("thaw") || has("unfreeze") || (lead.is_none() && has("resume")) {
        return Some(Intent::Act(MeshAction::Thaw {
            scope,
            approved: false,
        }));
    }
    if has("heal") || has("restore") || (lead.is_none() && has("fix") && scope != Scope::Global) {
        return Some(Intent::Act(MeshAction::Heal {
            scope,
            approved: false,
        }));
    }
    if has("broadcast") || everyone {
        let message = after("broadcast")
            .or_else(|| after("everyone"))
            .or_else(|| after("all agents"))?;
        let urgent = words.contains(&"urgent") || words.contains(&"urgently");
        return Some(broadcast(scope, message, urgent));
    }
    if has("delegate") || has("reassign") || lower.starts_with("give ") {
        let task = after("delegate")
            .or_else(|| after("reassign"))
            .or_else(|| after("give"))?;
        let capability = words
            .iter()
            .position(|w| *w == "to")
            .and_then(|i| words.get(i + 1))
            .filter(|w| ["gpu", "edge", "llm_inference", "inference"].contains(w))
            .map(|w| w.to_string());
        // "… to CLASS_D_GPU", "… to class D": the class that takes it (seed §7.1's
        // `to='CLASS_D_GPU'`); a class it cannot read is no request.
        let class = match words.iter().position(|w| *w == "to") {
            Some(i) if words.get(i + 1) == Some(&"class") => {
                let named = words.get(i + 2)?;
                Some(crate::mesh_client::class_of(named).ok()??)
            }
            _ => None,
        };
        // "… within 60 seconds", "… timeout 60": how long its answer is awaited.
        let timeout_s = ["within", "timeout"]
            .iter()
            .find_map(|m| {
                let i = lower.rfind(&format!(" {m} "))?;
                let ms = duration_ms(&format!("{} s", lower[i + m.len() + 2..].trim()))?;
                Some((ms / 1_000).clamp(1, qs_wire::mesh::MAX_WINDOW_MS / 1_000))
            })
            .unwrap_or(DELEGATE_TIMEOUT_S);
        // "… to gpu", "… to class D", "… within 60 seconds" name who takes the task and how
        // long it has, not part of it.
        let lower_task = task.to_ascii_lowercase();
        let cut = [
            capability.as_ref().map(|c| format!(" to {c}")),
            class.map(|_| " to class".to_string()),
            Some(" within ".to_string()),
            Some(" timeout ".to_string()),
        ]
        .into_iter()
        .flatten()
        .filter_map(|tail| lower_task.rfind(&tail))
        .min();
        let task = match cut {
            Some(i) => task[..i].trim_end().to_string(),
            None => task,
        };
        return Some(delegate(scope, task, capability, class, timeout_s));
    }
    if has("ask") || lower.starts_with("what's your") || lower.starts_with("what is your") {
        // The sample: a number right after "ask" or right before "agents", never a
        // sector's or cluster's number.
        let counted = |i: usize| -> Option<u32> {
            let of_scope = i > 0 && matches!(words[i - 1], "sector" | "cluster");
            words.get(i)?.parse::<u32>().ok().filter(|_| !of_scope)
        };
        let sample = (0..words.len())
            .find_map(|i| {
                let marks = words.get(i + 1) == Some(&"agents") || (i > 0 && words[i - 1] == "ask");
                marks.then(|| counted(i)).flatten()
            })
            .filter(|n| *n > 0)
            .unwrap_or(10);
        let question = after("ask").map(|q| {
            // "ask sector 7 agents: …": the question is what follows the colon.
            if let Some((_, rest)) = q.split_once(':') {
                return rest.trim().to_string();
            }
            // "ask 10 agents what …"
            let q = q.trim_start_matches(|c: char| c.is_ascii_digit()).trim();
            q.strip_prefix("agents")
                .map(str::trim)
                .unwrap_or(q)
                .trim_start_matches(':')
                .trim()
                .to_string()
        });
        let question = question
            .filter(|q| !q.is_empty())
            .unwrap_or_else(|| t.to_string());
        return Some(ask(scope, question, sample));
    }
    if has("status") || has("happening") || has("how") || has("show") || lower.starts_with("what") {
        return Some(Intent::Status(scope));
    }
    None
}

/// The threshold a request names ("slower than 800 ms"), or [`SLOW_MS`] if it names none;
/// `None` if it names one that cannot be read (no request, never a guess).
fn slower_than_ms(lower: &str) -> Option<u64> {
    let than = lower.match_indices("than").find(|(i, _)| {
        let before = lower[..*i].chars().next_back();
        let after = lower[i + 4..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric())
            && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    });
    match than {
        None => Some(SLOW_MS),
        Some((i, _)) => duration_ms(&lower[i + 4..]),
    }
}

/// The words a request to reassign the slow agents' own tasks is made of ("the task",
/// "their tasks to other workers", "the tasks of agents slower than 800 ms in cluster 4",
/// "them"): any other word names a task of its own to hand out (a delegation).
const THEIR_TASKS: [&str; 33] = [
    "the",
    "their",
    "its",
    "those",
    "these",
    "task",
    "tasks",
    "work",
    "them",
    "it",
    "of",
    "slow",
    "slower",
    "than",
    "agents",
    "agent",
    "in",
    "on",
    "cluster",
    "sector",
    "ms",
    "s",
    "seconds",
    "milliseconds",
    "to",
    "other",
    "another",
    "workers",
    "worker",
    "all",
    "now",
    "please",
    "stuck",
];

/// Whether what follows "reassign" names the slow agents' own tasks rather than a task of
/// its own to hand out (a delegation): only [`THEIR_TASKS`] and numbers.
fn takes_their_tasks(rest: Option<&str>) -> bool {
    let rest = rest.unwrap_or("").to_ascii_lowercase();
    words_of(&rest)
        .into_iter()
        .all(|w| THEIR_TASKS.contains(&w) || w.chars().all(|c| c.is_ascii_digit()))
}

/// A request's words (of its lower-cased text): its runs of ASCII letters and digits.
pub(crate) fn words_of(lower: &str) -> Vec<&str> {
    lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect()
}

/// Whether `words` say not to ("don't", "never", "no"), as before a verb.
pub(crate) fn negates(words: &[&str]) -> bool {
    words
        .iter()
        .any(|w| ["not", "don", "dont", "never", "no"].contains(w))
}

/// A duration at the start of `text`: `800`, `800ms`, `800 ms`, `1.5 s`, `2 seconds`
/// (milliseconds when no unit is said), in milliseconds; `None` when it reads none.
pub(crate) fn duration_ms(text: &str) -> Option<u64> {
    let t = text.trim_start();
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let n: f64 = t[..end].parse().ok().filter(|n: &f64| n.is_finite())?;
    let unit: String = t[end..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .collect();
    let scale = match unit.as_str() {
        "" | "ms" | "millisecond" | "milliseconds" => 1.0,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000.0,
        // Another word after the number ("800 in sector 7"): milliseconds.
        _ if ![
            "m", "min", "mins", "minute", "minutes", "h", "hour", "hours",
        ]
        .contains(&unit.as_str()) =>
        {
            1.0
        }
        _ => return None,
    };
    let ms = n * scale;
    (ms <= qs_wire::mesh::MAX_SLOWER_THAN_MS as f64).then_some(ms.round() as u64)
}

pub(crate) fn find_scope(words: &[&str]) -> Scope {
    for (i, w) in words.iter().enumerate() {
        let next = words.get(i + 1).and_then(|n| n.parse::<u32>().ok());
        let joined = |p: &str| w.strip_prefix(p).and_then(|n| n.parse::<u32>().ok());
        match (*w, next) {
            ("sector", Some(n)) => return Scope::Sector(SectorId(n)),
            ("cluster", Some(n)) => return Scope::Cluster(ClusterId(n)),
            _ => {}
        }
        if let Some(n) = joined("sector").or_else(|| joined("s").filter(|_| w.len() > 1)) {
            return Scope::Sector(SectorId(n));
        }
        if let Some(n) = joined("cluster").or_else(|| joined("c").filter(|_| w.len() > 1)) {
            return Scope::Cluster(ClusterId(n));
        }
    }
    Scope::Global
}

pub(crate) fn chat(api: &str, llm: Option<Llm>, yes: bool) -> Result<()> {
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    // What the console offered after its last answer, for a "yes" (or a "route around
    // them") to take.
    let mut offered: Option<Intent> = None;
    loop {
        print!("mesh> ");
        std::io::stdout().flush()?;
        let Some(line) = lines.next() else {
            return Ok(());
        };
        let line = line?;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        if ["quit", "exit", "bye"].contains(&text) {
            return Ok(());
        }
        let parsed = reply(offered.take(), text);
        let intent = match (parsed, llm.as_ref()) {
            (Some(i), _) => i,
            (None, Some(l)) => match ask_llm(l.url, l.model, l.key, text) {
                Ok(i) => i,
                Err(e) => {
                    println!(
                        "I could not read that ({e}). Try: status of sector 7, broadcast <message>, ask 10 agents <question>, delegate <task>, heal sector 12, freeze, thaw."
                    );
                    continue;
                }
            },
            (None, None) => {
                println!(
                    "I did not understand. Try: what's happening in sector 7?, broadcast <message>, ask 10 agents <question>, delegate <task> to gpu, heal sector 12, freeze, thaw."
                );
                continue;
            }
        };
        println!("I will run: {}", describe_intent(&intent));
        if !yes {
            print!("Go ahead? [y/N] ");
            std::io::stdout().flush()?;
            let answer = lines.next().transpose()?.unwrap_or_default();
            if !matches!(
                answer.trim().to_ascii_lowercase().as_str(),
                "y" | "yes" | "do it"
            ) {
                println!("Not run.");
                continue;
            }
        }
        let actions = match intent {
            Intent::Status(scope) => {
                match status(api, &scope, OutputFormat::Text) {
                    // The offer is made from the view printed.
                    Ok(view) => offered = suggestion(&view, &scope).map(say),
                    Err(e) => println!("error: {e:#}"),
                }
                continue;
            }
            Intent::Act(a) => vec![a],
            Intent::Acts(all) => all,
        };
        'actions: for mut a in actions {
            loop {
                match run(api, a.clone()) {
                    Ok(offer) => {
                        offered = offer.map(say).or(offered);
                        break;
                    }
                    // The mesh's mode asks for a human's approval (seed §6.3): the operator
                    // here is asked, with the command it would run.
                    Err(e) if !yes && format!("{e:#}").contains("--approve") && a.approve() => {
                        println!("error: {e:#}");
                        print!("Run it approved ({})? [y/N] ", describe(&a));
                        std::io::stdout().flush()?;
                        let answer = lines.next().transpose()?.unwrap_or_default();
                        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
                            println!("Not run.");
                            break 'actions;
                        }
                    }
                    Err(e) => {
                        println!("error: {e:#}");
                        break 'actions;
                    }
                }
            }
        }
    }
}

/// Prints an offer's line; the intent a "yes" takes.
fn say((line, intent): (String, Intent)) -> Intent {
    println!("{line}");
    intent
}

/// Runs one action, printing its outcome; what the console offers after it, if anything.
fn run(api: &str, a: MeshAction) -> Result<Option<(String, Intent)>> {
    match a {
        MeshAction::Cascade { .. } => op(api, &a, OutputFormat::Text).map(|()| None),
        a => {
            let report = control(api, a.clone(), OutputFormat::Text)?;
            Ok(after_route_around(&a, &report))
        }
    }
}

mod describe;
mod llm;
mod mapping;
mod offer;
pub(crate) use describe::{describe, describe_intent};
pub(crate) use llm::{Llm, ask_llm};
pub(crate) use offer::{after_route_around, reply, suggestion};

#[cfg(test)]
mod tests;
