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

/// A task for the one best agent (with `capability`, if named).
fn delegate(scope: Scope, task: String, capability: Option<String>) -> Intent {
    Intent::Act(delegation(
        scope,
        task,
        capability,
        None,
        DELEGATE_TIMEOUT_S,
    ))
}

/// How long a delegation waits for its agent's answer by default (the seed's
/// `timeout_seconds=300`).
pub(crate) const DELEGATE_TIMEOUT_S: u64 = 300;

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
const LEADING: [&str; 12] = [
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
];

/// The grammar of intents: the seed's example requests and their kin.
pub(crate) fn parse_intent(text: &str) -> Option<Intent> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
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
    if has("thaw") || has("unfreeze") || (lead.is_none() && has("resume")) {
        return Some(Intent::Act(MeshAction::Thaw { scope }));
    }
    if has("heal") || has("restore") || (lead.is_none() && has("fix") && scope != Scope::Global) {
        return Some(Intent::Act(MeshAction::Heal { scope }));
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
        // "… to gpu" names who takes the task, not part of it.
        let task = match &capability {
            Some(c) => {
                let tail = format!(" to {c}");
                match task.to_ascii_lowercase().ends_with(&tail) {
                    true => task[..task.len() - tail.len()].trim_end().to_string(),
                    false => task,
                }
            }
            None => task,
        };
        return Some(delegate(scope, task, capability));
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

pub(crate) fn scope_words(s: &Scope) -> String {
    match s {
        Scope::Global => String::new(),
        Scope::Sector(x) => format!(" sector {}", x.0),
        Scope::Cluster(x) => format!(" cluster {}", x.0),
    }
}

/// The command line an intent is.
pub(crate) fn describe_intent(i: &Intent) -> String {
    match i {
        Intent::Status(s) => format!("qs mesh status{}", scope_words(s)),
        Intent::Act(a) => describe(a),
    }
}

pub(crate) fn describe(a: &MeshAction) -> String {
    match a {
        MeshAction::Freeze { scope } => format!("qs mesh freeze{}", scope_words(scope)),
        MeshAction::Thaw { scope } => format!("qs mesh thaw{}", scope_words(scope)),
        MeshAction::Heal { scope } => format!("qs mesh heal{}", scope_words(scope)),
        MeshAction::Cascade {
            verb: Verb::Observe,
            payload,
            sample,
            scope,
            ..
        } => format!(
            "qs mesh ask {payload:?} --sample {}{}",
            sample.unwrap_or(100),
            scope_flag(scope)
        ),
        MeshAction::Cascade {
            verb: Verb::Act,
            payload,
            requires,
            scope,
            class,
            window_ms,
            ..
        } => {
            let capability = requires
                .as_ref()
                .map_or(String::new(), |c| format!(" --capability {c}"));
            let to = class.map_or(String::new(), |k| format!(" --to {}", k.letter()));
            let timeout = match window_ms.map(|w| w / 1_000) {
                Some(DELEGATE_TIMEOUT_S) | None => String::new(),
                Some(s) => format!(" --timeout {s}"),
            };
            format!(
                "qs mesh delegate {payload:?}{capability}{to}{timeout}{}",
                scope_flag(scope)
            )
        }
        MeshAction::Cascade {
            mode,
            payload,
            priority,
            scope,
            ..
        } => {
            let mode = match mode {
                CascadeMode::Wave => "wave",
                CascadeMode::Parallel => "parallel",
                CascadeMode::PriorityFirst => "priority-first",
            };
            let scope = scope_flag(scope);
            format!("qs mesh broadcast {payload:?} --mode {mode} --priority {priority}{scope}")
        }
    }
}

/// A scope as the `--scope` flag writes it (nothing for the whole mesh).
fn scope_flag(scope: &Scope) -> String {
    match scope {
        Scope::Global => String::new(),
        s => format!(
            " --scope{}",
            scope_words(s).replace(' ', "-").replacen('-', " ", 1)
        ),
    }
}

/// How long the model may take to answer, in all.
const LLM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Asks an OpenAI-compatible endpoint to turn free text into an intent, as JSON; with `key`
/// as its bearer key if given (never the qs API's token).
pub(crate) fn ask_llm(url: &str, model: &str, key: Option<&str>, text: &str) -> Result<Intent> {
    let system = "Turn the operator's request into one JSON object and nothing else: \
        {\"intent\":\"status\"|\"broadcast\"|\"ask\"|\"delegate\"|\"heal\"|\"freeze\"|\"thaw\", \
        \"scope\":\"all\"|\"sector N\"|\"cluster N\", \"text\":\"the message, question or task\", \
        \"sample\":N, \"urgent\":true|false, \"capability\":\"a capability the task needs\"}";
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}],
        "temperature": 0,
    });
    let base = url.trim_end_matches('/');
    let (api, path) = match base.find("/v1") {
        Some(i) => (&base[..i], format!("{}/chat/completions", &base[i..])),
        None => (base, "/v1/chat/completions".to_string()),
    };
    let v = client::post_external(api, &path, &body.to_string(), key, LLM_TIMEOUT)?;
    let content = v["choices"][0]["message"]["content"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("the model's answer has no choices[0].message.content"))?;
    intent_of_answer(content)
}

/// The intent a model's answer names: the JSON object in it, each field checked, mapped to
/// the intent directly (its text is a message, never read again as a request).
pub(crate) fn intent_of_answer(content: &str) -> Result<Intent> {
    let (Some(start), Some(end)) = (content.find('{'), content.rfind('}')) else {
        bail!("the model's answer holds no JSON object");
    };
    if end < start {
        bail!("the model's answer holds no JSON object");
    }
    let j: Value = serde_json::from_str(&content[start..=end])
        .map_err(|e| anyhow::anyhow!("the model's answer is not one JSON object: {e}"))?;
    let field = |name: &str| j.get(name).filter(|v| !v.is_null());
    let scope = match field("scope") {
        None => Scope::Global,
        Some(v) => {
            let s = v
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("scope: not a string"))?;
            scope_of(s).map_err(|e| anyhow::anyhow!("scope: {e}"))?
        }
    };
    let text = || -> Result<String> {
        let t = field("text")
            .and_then(Value::as_str)
            .map(str::trim)
            .unwrap_or("");
        if t.is_empty() {
            bail!("text: missing");
        }
        Ok(t.to_string())
    };
    let intent = match field("intent").and_then(Value::as_str).unwrap_or("") {
        "status" => Intent::Status(scope),
        "broadcast" => {
            let urgent = field("urgent").and_then(Value::as_bool).unwrap_or(false);
            broadcast(scope, text()?, urgent)
        }
        "ask" => {
            let sample = match field("sample") {
                None => 10,
                Some(v) => v
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| anyhow::anyhow!("sample: not a count"))?,
            };
            ask(scope, text()?, sample)
        }
        "delegate" => {
            let capability = match field("capability") {
                None => None,
                Some(v) => Some(
                    v.as_str()
                        .ok_or_else(|| anyhow::anyhow!("capability: not a string"))?
                        .to_string(),
                ),
            };
            delegate(scope, text()?, capability)
        }
        "heal" => Intent::Act(MeshAction::Heal { scope }),
        "freeze" => Intent::Act(MeshAction::Freeze { scope }),
        "thaw" => Intent::Act(MeshAction::Thaw { scope }),
        other => bail!("the model answered an intent the console does not know: {other:?}"),
    };
    if let Intent::Act(a) = &intent {
        a.check()
            .map_err(|e| anyhow::anyhow!("the model's answer: {e}"))?;
    }
    Ok(intent)
}

/// Where the console may send what its grammar does not read: an OpenAI-compatible
/// endpoint, its model, and its key.
pub(crate) struct Llm<'a> {
    pub url: &'a str,
    pub model: &'a str,
    pub key: Option<&'a str>,
}

pub(crate) fn chat(api: &str, llm: Option<Llm>, yes: bool) -> Result<()> {
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
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
        let intent = match (parse_intent(text), llm.as_ref()) {
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
        let result = match intent {
            Intent::Status(scope) => status(api, &scope, OutputFormat::Text),
            Intent::Act(
                a @ (MeshAction::Freeze { .. } | MeshAction::Thaw { .. } | MeshAction::Heal { .. }),
            ) => control(api, a, OutputFormat::Text),
            Intent::Act(a) => op(api, &a, OutputFormat::Text),
        };
        if let Err(e) = result {
            println!("error: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests;
