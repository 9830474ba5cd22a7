//! `qs mesh chat`'s optional model: free text sent to an OpenAI-compatible endpoint (with
//! its own key, never the qs API's token), its answer's one JSON object checked field by
//! field and mapped to an intent directly (its text a message, never read again as a
//! request).

use super::*;

/// How long the model may take to answer, in all.
const LLM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Asks an OpenAI-compatible endpoint to turn free text into an intent, as JSON; with `key`
/// as its bearer key if given (never the qs API's token).
pub(crate) fn ask_llm(url: &str, model: &str, key: Option<&str>, text: &str) -> Result<Intent> {
    let system = "Turn the operator's request into one JSON object and nothing else: \
        {\"intent\":\"status\"|\"broadcast\"|\"ask\"|\"delegate\"|\"heal\"|\"freeze\"|\"thaw\", \
        \"scope\":\"all\"|\"sector N\"|\"cluster N\", \"text\":\"the message, question or task\", \
        \"sample\":N, \"urgent\":true|false, \"capability\":\"a capability the task needs\", \"class\":\"A\"…\"F\" (who takes a \
        delegated task)} \
        or, to hold slow agents out of routing, {\"intent\":\"route-around\",\"scope\":…, \
        \"slower_than_ms\":N}, or, to give the tasks slow agents hold to other workers, \
        {\"intent\":\"reassign\",\"scope\":…,\"slower_than_ms\":N}, or, to keep a class of \
        agents out of (or let it back into) the routing of a capability, mesh-wide, \
        {\"intent\":\"exclude\"|\"include\",\"class\":\"A\"…\"F\",\"capability\":\"…\"}";
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
    let named = field("intent").and_then(Value::as_str).unwrap_or("");
    let intent = match named {
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
            let class = match field("class") {
                None => None,
                Some(v) => {
                    let named = v
                        .as_str()
                        .ok_or_else(|| anyhow::anyhow!("class: not a string"))?;
                    crate::mesh_client::class_of(named)
                        .map_err(|e| anyhow::anyhow!("class: {e}"))?
                }
            };
            delegate(scope, text()?, capability, class, DELEGATE_TIMEOUT_S)
        }
        "exclude" | "include" => {
            if scope != Scope::Global {
                bail!("scope: {scope}; a rule holds mesh-wide");
            }
            let capability = field("capability")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow::anyhow!("capability: missing"))?
                .to_string();
            let class_name = field("class")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow::anyhow!("class: missing"))?;
            let class = crate::mesh_client::class_of(class_name)
                .ok()
                .flatten()
                .ok_or_else(|| anyhow::anyhow!("class: {class_name:?}: a class A to F"))?;
            Intent::Act(match named == "exclude" {
                true => MeshAction::Exclude {
                    class,
                    capability,
                    approved: false,
                },
                false => MeshAction::Include {
                    class,
                    capability,
                    approved: false,
                },
            })
        }
        "heal" => Intent::Act(MeshAction::Heal {
            scope,
            approved: false,
        }),
        "freeze" => Intent::Act(MeshAction::Freeze { scope }),
        "thaw" => Intent::Act(MeshAction::Thaw {
            scope,
            approved: false,
        }),
        "route-around" | "reassign" => {
            let slower_than_ms = match field("slower_than_ms") {
                None => SLOW_MS,
                Some(v) => v
                    .as_u64()
                    .ok_or_else(|| anyhow::anyhow!("slower_than_ms: not a count"))?,
            };
            match named {
                "reassign" => Intent::Act(MeshAction::Reassign {
                    scope,
                    slower_than_ms,
                    approved: false,
                }),
                _ => Intent::Act(route_around(scope, slower_than_ms, ROUTE_AROUND_S)),
            }
        }
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
