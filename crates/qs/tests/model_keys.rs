//! API keys of the OpenAI-compatible entry point, end to end: a secret keys file named by
//! the config gives each client its models and class; an unknown key gets 401; a key opens
//! the entry point and nothing else; a keys file others may read stops the agent.

mod common;

use common::models::*;
use common::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;

const ALICE: &str = "sk-alice-0123456789abcdef0123456789abcdef";
const BOB: &str = "sk-bob-0123456789abcdef0123456789abcdef00";

const CODE: &str = r#"
[model.code]
max_concurrency = 4
load_ms = 300
[[model.code.tier]]
name = "2g"
vram_mib = 2048
command = "{qs} model-double --port {port} --model code --vram-mib 2048 --load-ms 300"

[model.conv]
max_concurrency = 4
load_ms = 300
[[model.conv.tier]]
name = "2g"
vram_mib = 2048
command = "{qs} model-double --port {port} --model conv --vram-mib 2048 --load-ms 300"
"#;

fn keys_file(dir: &std::path::Path, mode: u32) -> std::path::PathBuf {
    let path = dir.join("keys.toml");
    std::fs::write(
        &path,
        format!(
            "[key.alice]\nsecret = \"{ALICE}\"\nclass = \"batch\"\nmodels = [\"code\"]\n\n\
             [key.bob]\nsecret = \"{BOB}\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn message(text: &str) -> String {
    let v: Value = serde_json::from_str(text).unwrap_or_default();
    v["error"]["message"]
        .as_str()
        .or(v["error"].as_str())
        .unwrap_or(text)
        .to_owned()
}

#[test]
fn api_keys_open_the_entry_point_to_their_models_and_unknown_keys_get_401() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys_file(dir.path(), 0o600);
    let up = start(
        dir.path(),
        &format!("[models]\nkeys_file = \"{}\"\n", keys.display()),
    );
    declare(&up, CODE, "code");
    declare(&up, CODE, "conv");

    let (status, _, text) = request_as(
        &up,
        ALICE,
        "POST",
        "/v1/chat/completions",
        &chat("code", 2, false),
    );
    assert_eq!(status, 200, "{text}");
    let (status, _, text) = request_as(
        &up,
        ALICE,
        "POST",
        "/v1/chat/completions",
        &chat("conv", 2, false),
    );
    assert_eq!(status, 403, "{text}");
    assert_eq!(message(&text), "the key alice may not use model conv");
    // Its model list shows what it may use.
    let (status, _, text) = request_as(&up, ALICE, "GET", "/v1/models", &Value::Null);
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["code"]);
    // Bob may use every model.
    let (status, _, text) = request_as(
        &up,
        BOB,
        "POST",
        "/v1/chat/completions",
        &chat("conv", 2, false),
    );
    assert_eq!(status, 200, "{text}");
    // An unknown key: 401, whatever the model.
    let wrong = "sk-mallory-0123456789abcdef0123456789abcdef";
    let (status, _, text) = request_as(
        &up,
        wrong,
        "POST",
        "/v1/chat/completions",
        &chat("code", 2, false),
    );
    assert_eq!(status, 401, "{text}");
    assert!(message(&text).starts_with("unknown API key"), "{text}");
    // A key opens the entry point only: the operator's API stays the token's.
    let (status, _, text) = request_as(&up, BOB, "GET", "/v1/services", &Value::Null);
    assert_eq!(status, 401, "{text}");
    // The agent's own token still serves every model.
    let (status, _, text) = post(&up, "/v1/chat/completions", &chat("conv", 2, false), None);
    assert_eq!(status, 200, "{text}");
}

#[test]
fn a_keys_file_others_may_read_stops_the_agent_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys_file(dir.path(), 0o644);
    std::fs::write(dir.path().join("fleet.toml"), GPU_FLEET).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!("[models]\nkeys_file = \"{}\"\n", keys.display()),
    )
    .unwrap();
    let out = qs()
        .args(["up", "--fleet"])
        .arg(dir.path().join("fleet.toml"))
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("keys.toml: a secret file that others may read (mode 644): chmod 600 it"),
        "{err}"
    );
}
