//! `qs mesh chat`: requests in plain words read through a grammar of intents (the seed's
//! example requests of §7.2 and their kin), or by an OpenAI-compatible endpoint when one is
//! named; each shows the command it becomes and runs only when the operator says yes.

use crate::client;
use crate::mesh_client::{control, op, scope_of, status};
use crate::render::OutputFormat;
use anyhow::{Result, bail};
use qs_wire::mesh::{CascadeMode, ClusterId, MeshAction, Scope, SectorId, Verb};
use serde_json::Value;
use std::io::{BufRead, Write};

/// What the console understood a request as.
#[derive(Clone, Debug, PartialEq)]
pub enum Intent {
    Status(Scope),
    Act(MeshAction),
}

/// The grammar of intents: the seed's example requests and their kin.
pub(crate) fn parse_intent(text: &str) -> Option<Intent> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let scope = find_scope(&words);
    let has = |w: &str| words.contains(&w);
    let after = |marker: &str| -> Option<String> {
        let i = lower.find(marker)?;
        let rest = t[i + marker.len()..]
            .trim()
            .trim_start_matches([':', ','])
            .trim();
        (!rest.is_empty()).then(|| rest.trim_matches('"').to_string())
    };
    if has("freeze") || has("halt") || (has("stop") && has("everything")) {
        return Some(Intent::Act(MeshAction::Freeze { scope }));
    }
    if has("thaw") || has("resume") || has("unfreeze") {
        return Some(Intent::Act(MeshAction::Thaw { scope }));
    }
    if has("heal") || has("restore") || has("fix") && scope != Scope::Global {
        return Some(Intent::Act(MeshAction::Heal { scope }));
    }
    if has("broadcast") || lower.starts_with("tell everyone") || lower.starts_with("tell all") {
        let message = after("broadcast")
            .or_else(|| after("everyone"))
            .or_else(|| after("all agents"))?;
        return Some(Intent::Act(MeshAction::Cascade {
            mode: if has("urgent") || has("urgently") {
                CascadeMode::Parallel
            } else {
                CascadeMode::Wave
            },
            scope,
            verb: Verb::Sync,
            payload: message,
            priority: if has("urgent") { 3 } else { 2 },
            sample: None,
            budget_ms: None,
            requires: None,
            approved: false,
        }));
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
        return Some(Intent::Act(MeshAction::Cascade {
            mode: CascadeMode::Wave,
            scope,
            verb: Verb::Act,
            payload: task,
            priority: 2,
            sample: Some(1),
            budget_ms: None,
            requires: capability,
            approved: false,
        }));
    }
    if has("ask") || lower.starts_with("what's your") || lower.starts_with("what is your") {
        let sample = words
            .iter()
            .find_map(|w| w.parse::<u32>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(10);
        let question = after("ask").map(|q| {
            // "ask 10 agents: …" / "ask 10 agents what …"
            let q = q.trim_start_matches(|c: char| c.is_ascii_digit()).trim();
            q.strip_prefix("agents")
                .map(str::trim)
                .unwrap_or(q)
                .trim_start_matches(':')
                .trim()
                .to_string()
        });
        return Some(Intent::Act(MeshAction::Cascade {
            mode: CascadeMode::Wave,
            scope,
            verb: Verb::Observe,
            payload: question
                .filter(|q| !q.is_empty())
                .unwrap_or_else(|| t.to_string()),
            priority: 2,
            sample: Some(sample),
            budget_ms: None,
            requires: None,
            approved: false,
        }));
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
            ..
        } => {
            format!("qs mesh ask {payload:?} --sample {}", sample.unwrap_or(100))
        }
        MeshAction::Cascade {
            verb: Verb::Act,
            payload,
            requires,
            ..
        } => match requires {
            Some(c) => format!("qs mesh delegate {payload:?} --capability {c}"),
            None => format!("qs mesh delegate {payload:?}"),
        },
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
            let scope = match scope {
                Scope::Global => String::new(),
                s => format!(
                    " --scope{}",
                    scope_words(s).replace(' ', "-").replacen('-', " ", 1)
                ),
            };
            format!("qs mesh broadcast {payload:?} --mode {mode} --priority {priority}{scope}")
        }
    }
}

/// Asks an OpenAI-compatible endpoint to turn free text into an intent, as JSON.
pub(crate) fn ask_llm(url: &str, model: &str, text: &str) -> Result<Intent> {
    let system = "Turn the operator's request into one JSON object and nothing else: \
        {\"intent\":\"status\"|\"broadcast\"|\"ask\"|\"delegate\"|\"heal\"|\"freeze\"|\"thaw\", \
        \"scope\":\"all\"|\"sector N\"|\"cluster N\", \"text\":\"the message, question or task\", \
        \"sample\":N}";
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
    let v = client::call(api, "POST", &path, Some(&body.to_string()))?;
    let content = v["choices"][0]["message"]["content"].as_str().unwrap_or("");
    let start = content.find('{').unwrap_or(0);
    let end = content.rfind('}').map_or(content.len(), |e| e + 1);
    let j: Value = serde_json::from_str(&content[start..end])?;
    let scope = scope_of(j["scope"].as_str().unwrap_or("all"))?;
    let text = j["text"].as_str().unwrap_or("").to_string();
    let line = match j["intent"].as_str().unwrap_or("") {
        "status" => return Ok(Intent::Status(scope)),
        "broadcast" => format!("broadcast {text}{}", scope_words(&scope)),
        "ask" => format!("ask {} agents: {text}", j["sample"].as_u64().unwrap_or(10)),
        "delegate" => format!("delegate {text}"),
        "heal" => format!("heal{}", scope_words(&scope)),
        "freeze" => format!("freeze{}", scope_words(&scope)),
        "thaw" => format!("thaw{}", scope_words(&scope)),
        other => bail!("the model answered an intent the console does not know: {other:?}"),
    };
    parse_intent(&line).ok_or_else(|| anyhow::anyhow!("the model's answer made no command"))
}

pub(crate) fn chat(api: &str, llm: Option<&str>, model: &str, yes: bool) -> Result<()> {
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
        let intent = match (parse_intent(text), llm) {
            (Some(i), _) => i,
            (None, Some(url)) => match ask_llm(url, model, text) {
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
            ) => control(api, a),
            Intent::Act(a) => op(api, &a, OutputFormat::Text),
        };
        if let Err(e) = result {
            println!("error: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's example requests (§7.2) and their kin → the command shown before running.
    #[test]
    fn the_grammar_reads_the_seeds_requests() {
        let table = [
            ("What's happening in sector 7?", "qs mesh status sector 7"),
            ("status", "qs mesh status"),
            ("show me cluster 12", "qs mesh status cluster 12"),
            (
                "broadcast Context update: Market closed early today",
                "qs mesh broadcast \"Context update: Market closed early today\" --mode wave --priority 2",
            ),
            (
                "urgent broadcast: evacuate",
                "qs mesh broadcast \"evacuate\" --mode parallel --priority 3",
            ),
            (
                "ask 10 agents: What's your current context hash?",
                "qs mesh ask \"What's your current context hash?\" --sample 10",
            ),
            (
                "What's your current context hash?",
                "qs mesh ask \"What's your current context hash?\" --sample 10",
            ),
            (
                "delegate Analyze Q3 financial data to gpu",
                "qs mesh delegate \"Analyze Q3 financial data to gpu\" --capability gpu",
            ),
            ("heal SECTOR-12", "qs mesh heal sector 12"),
            ("freeze", "qs mesh freeze"),
            ("freeze sector 3", "qs mesh freeze sector 3"),
            ("thaw everything", "qs mesh thaw"),
        ];
        for (text, want) in table {
            let got = parse_intent(text).map(|i| describe_intent(&i));
            assert_eq!(got.as_deref(), Some(want), "{text:?}");
        }
        assert_eq!(parse_intent("make me a sandwich"), None);
    }
}
