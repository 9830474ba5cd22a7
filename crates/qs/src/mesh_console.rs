//! `qs mesh`: the operator's console of seed 001 Part 7, through the agent's API
//! (`GET /v1/mesh`, `POST /v1/mesh/ops`): status, broadcast, ask, delegate, cascade, heal,
//! freeze and thaw; and `qs mesh chat`, which reads requests in plain words through a grammar
//! of intents (or an OpenAI-compatible endpoint, when one is named), shows the command it
//! will run and asks before running it.

use crate::client;
use crate::render::OutputFormat;
use anyhow::{Result, bail};
use clap::Subcommand;
use comfy_table::Table;
use qs_wire::mesh::{CascadeMode, ClusterId, MeshAction, Scope, SectorId, Verb};
use serde_json::Value;
use std::io::{BufRead, Write};

#[derive(Subcommand, Debug)]
pub enum MeshCmd {
    /// The mesh's state: mode, agents, sectors (or one sector, or the clusters this node
    /// leads), breakers, conflicts, KPIs.
    Status {
        /// `sector N` (or `S7`, `SECTOR-7`), `cluster N` (or `C12`); default the whole mesh.
        target: Vec<String>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Send a message to every agent (a wave; `--mode parallel` for urgent ones).
    Broadcast {
        message: String,
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=3))]
        priority: u8,
        #[arg(long, default_value = "wave")]
        mode: String,
        /// Only this sector or cluster.
        #[arg(long)]
        scope: Option<String>,
        /// An operator's approval, which degraded modes ask for.
        #[arg(long)]
        approve: bool,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Ask a sample of agents a question; their answers, counted.
    Ask {
        question: String,
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        sample: u32,
        /// Only agents with this capability.
        #[arg(long)]
        capability: Option<String>,
        #[arg(long)]
        approve: bool,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Hand a task to the best available agent (the lowest impedance, with the capability).
    Delegate {
        task: String,
        #[arg(long)]
        capability: Option<String>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Any cascade: wave, parallel or priority-first.
    Cascade {
        payload: String,
        #[arg(long, default_value = "wave")]
        mode: String,
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=3))]
        priority: u8,
        /// How far ahead the agents are to be ready, milliseconds (default: from impedance).
        #[arg(long)]
        budget_ms: Option<u64>,
        #[arg(long)]
        approve: bool,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Close the breakers of a scope, release its quarantined agents and conflicts, thaw it.
    Heal { target: Vec<String> },
    /// Halt operations in a scope (default the whole mesh).
    Freeze { target: Vec<String> },
    /// Resume operations in a scope.
    Thaw { target: Vec<String> },
    /// Plain-words requests: shows the command each becomes and asks before running it.
    Chat {
        /// An OpenAI-compatible endpoint (e.g. the fleet's own gateway,
        /// http://127.0.0.1:7070/v1) to read requests the grammar does not know.
        #[arg(long)]
        llm: Option<String>,
        /// The model to ask there.
        #[arg(long, default_value = "default")]
        llm_model: String,
        /// Run each command without asking (for scripts).
        #[arg(long)]
        yes: bool,
    },
}

pub fn run(api: &str, cmd: MeshCmd) -> Result<()> {
    match cmd {
        MeshCmd::Status { target, output } => status(api, &scope_of(&target.join(" "))?, output),
        MeshCmd::Broadcast {
            message,
            priority,
            mode,
            scope,
            approve,
            output,
        } => {
            let scope = scope_of(scope.as_deref().unwrap_or(""))?;
            let action = cascade(
                &mode,
                scope,
                Verb::Sync,
                message,
                priority,
                None,
                None,
                approve,
            )?;
            op(api, &action, output)
        }
        MeshCmd::Ask {
            question,
            sample,
            capability,
            approve,
            output,
        } => {
            let mut action = cascade(
                "wave",
                Scope::Global,
                Verb::Observe,
                question,
                2,
                Some(sample),
                None,
                approve,
            )?;
            set_requires(&mut action, capability);
            op(api, &action, output)
        }
        MeshCmd::Delegate {
            task,
            capability,
            output,
        } => {
            let mut action = cascade(
                "wave",
                Scope::Global,
                Verb::Act,
                task,
                2,
                Some(1),
                None,
                false,
            )?;
            set_requires(&mut action, capability);
            op(api, &action, output)
        }
        MeshCmd::Cascade {
            payload,
            mode,
            priority,
            budget_ms,
            approve,
            output,
        } => {
            let action = cascade(
                &mode,
                Scope::Global,
                Verb::Sync,
                payload,
                priority,
                None,
                budget_ms,
                approve,
            )?;
            op(api, &action, output)
        }
        MeshCmd::Heal { target } => control(
            api,
            MeshAction::Heal {
                scope: scope_of(&target.join(" "))?,
            },
        ),
        MeshCmd::Freeze { target } => control(
            api,
            MeshAction::Freeze {
                scope: scope_of(&target.join(" "))?,
            },
        ),
        MeshCmd::Thaw { target } => control(
            api,
            MeshAction::Thaw {
                scope: scope_of(&target.join(" "))?,
            },
        ),
        MeshCmd::Chat {
            llm,
            llm_model,
            yes,
        } => chat(api, llm.as_deref(), &llm_model, yes),
    }
}

#[allow(clippy::too_many_arguments)]
fn cascade(
    mode: &str,
    scope: Scope,
    verb: Verb,
    payload: String,
    priority: u8,
    sample: Option<u32>,
    budget_ms: Option<u64>,
    approved: bool,
) -> Result<MeshAction> {
    let Some(mode) = qs_sim::mesh::parse_mode(mode) else {
        bail!("--mode {mode:?}: wave, parallel or priority-first");
    };
    Ok(MeshAction::Cascade {
        mode,
        scope,
        verb,
        payload,
        priority,
        sample,
        budget_ms,
        requires: None,
        approved,
    })
}

fn set_requires(action: &mut MeshAction, capability: Option<String>) {
    if let MeshAction::Cascade { requires, .. } = action {
        *requires = capability;
    }
}

/// `sector 7`, `S7`, `SECTOR-7`, `cluster 12`, `C12`; empty, `all`, `mesh`: the whole mesh.
pub fn scope_of(text: &str) -> Result<Scope> {
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

fn op(api: &str, action: &MeshAction, output: OutputFormat) -> Result<()> {
    let body = serde_json::to_string(action)?;
    let v = client::call(api, "POST", "/v1/mesh/ops", Some(&body))?;
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        OutputFormat::Text => print_outcome(&v),
    }
    Ok(())
}

fn control(api: &str, action: MeshAction) -> Result<()> {
    let body = serde_json::to_string(&action)?;
    client::call(api, "POST", "/v1/mesh/ops", Some(&body))?;
    println!("done: {}", describe(&action));
    Ok(())
}

fn print_outcome(v: &Value) {
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
    if let Some(answers) = v["answers"].as_array().filter(|a| !a.is_empty()) {
        println!("  answers:");
        for a in answers {
            println!(
                "    {:>6}  {}",
                a["count"].as_u64().unwrap_or(0),
                a["answer"].as_str().unwrap_or("")
            );
        }
    }
}

fn status(api: &str, scope: &Scope, output: OutputFormat) -> Result<()> {
    let v = client::call(api, "GET", "/v1/mesh", None)?;
    if matches!(output, OutputFormat::Json) {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let k = &v["kpis"];
    println!(
        "mesh: {} of {} agents active, mode {}, root {}{}",
        v["active"],
        v["agents"],
        v["mode"].as_str().unwrap_or("?"),
        v["root"].as_str().unwrap_or("(none)"),
        if v["is_root"].as_bool() == Some(true) {
            " (this node)"
        } else {
            ""
        }
    );
    println!(
        "  operations {}, quorum {:.1} %, window hits {:.1} %, within 50 ms {:.1} %, conflicts {:.2} %, cascade p95 {:.0} ms",
        k["operations"],
        100.0 * k["coordination_success_rate"].as_f64().unwrap_or(0.0),
        100.0 * k["arrival_window_hit_rate"].as_f64().unwrap_or(0.0),
        100.0 * k["prediction_accuracy"].as_f64().unwrap_or(0.0),
        100.0 * k["conflict_rate"].as_f64().unwrap_or(0.0),
        k["cascade_latency_p95_ms"].as_f64().unwrap_or(0.0)
    );
    for key in ["breakers", "frozen"] {
        if let Some(list) = v[key].as_array().filter(|l| !l.is_empty()) {
            println!(
                "  {key}: {}",
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
            table.set_header([
                "cluster", "agents", "active", "A", "B", "C", "D", "E", "F", "mean ms",
            ]);
            for row in v["clusters"].as_array().into_iter().flatten() {
                if row["cluster"].as_u64() == Some(u64::from(c.0)) {
                    let classes = row["classes"].as_array().cloned().unwrap_or_default();
                    let mut cells = vec![
                        row["cluster"].to_string(),
                        row["agents"].to_string(),
                        row["active"].to_string(),
                    ];
                    cells.extend(classes.iter().map(Value::to_string));
                    cells.push(format!(
                        "{:.0}",
                        row["mean_score_ms"].as_f64().unwrap_or(0.0)
                    ));
                    table.add_row(cells);
                }
            }
            if table.row_count() == 0 {
                println!(
                    "  cluster {} is not led by this node; ask its lead's API",
                    c.0
                );
                return Ok(());
            }
        }
        _ => {
            table.set_header([
                "sector",
                "coordinator",
                "clusters",
                "agents",
                "active",
                "mean ms",
                "p95 ms",
                "anomalies",
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
                    format!("{:.0}", row["mean_impedance_ms"].as_f64().unwrap_or(0.0)),
                    format!("{:.0}", row["p95_impedance_ms"].as_f64().unwrap_or(0.0)),
                    row["anomalies"].to_string(),
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
                return Ok(());
            }
        }
    }
    println!("{table}");
    Ok(())
}

/// What the console understood a request as.
#[derive(Clone, Debug, PartialEq)]
pub enum Intent {
    Status(Scope),
    Act(MeshAction),
}

/// The grammar of intents: the seed's example requests and their kin.
pub fn parse_intent(text: &str) -> Option<Intent> {
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

fn find_scope(words: &[&str]) -> Scope {
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

fn scope_words(s: &Scope) -> String {
    match s {
        Scope::Global => String::new(),
        Scope::Sector(x) => format!(" sector {}", x.0),
        Scope::Cluster(x) => format!(" cluster {}", x.0),
    }
}

/// The command line an intent is.
pub fn describe_intent(i: &Intent) -> String {
    match i {
        Intent::Status(s) => format!("qs mesh status{}", scope_words(s)),
        Intent::Act(a) => describe(a),
    }
}

fn describe(a: &MeshAction) -> String {
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
fn ask_llm(url: &str, model: &str, text: &str) -> Result<Intent> {
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

fn chat(api: &str, llm: Option<&str>, model: &str, yes: bool) -> Result<()> {
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

    #[test]
    fn scopes_are_read_in_every_spelling() {
        for (text, want) in [
            ("", Scope::Global),
            ("all", Scope::Global),
            ("sector 7", Scope::Sector(SectorId(7))),
            ("S7", Scope::Sector(SectorId(7))),
            ("SECTOR-12", Scope::Sector(SectorId(12))),
            ("cluster 4", Scope::Cluster(ClusterId(4))),
            ("C4", Scope::Cluster(ClusterId(4))),
        ] {
            assert_eq!(scope_of(text).unwrap(), want, "{text:?}");
        }
        assert!(scope_of("galaxy 9").is_err());
    }
}
