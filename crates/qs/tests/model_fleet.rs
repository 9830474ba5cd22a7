//! The fleet-wide gateway on real processes: three `qs agent`s on one real nats-server, alpha
//! without a GPU, beta and gamma each with a simulated 24 GB GPU (the double for a GPU; the
//! runtimes are real `qs model-double` processes). Any agent's entry point serves every model
//! of the fleet: a request goes where its model is warm, or raises its load where VRAM is
//! free, streams pass through, a node that cannot be reached is passed over, and what no GPU
//! of the fleet fits is refused with its need.

mod common;

use common::models::*;
use common::*;
use qs_fabric::nats_server::NatsServer;
use serde_json::Value;

/// The nodes share this machine's CPU: its load must not make them refuse work.
const CONFIG: &str = "[thresholds]\ncpu_sensed = false\nmemory = 1.0\n";

const MODELS: &str = r#"
[model.small]
load_ms = 300
[[model.small.tier]]
name = "1g"
vram_mib = 1024
command = "{qs} model-double --port {port} --model small --vram-mib 1024 --load-ms 300"

[model.huge]
load_ms = 300
[[model.huge.tier]]
name = "100g"
vram_mib = 102400
command = "{qs} model-double --port {port} --model huge --vram-mib 102400 --load-ms 300"
"#;

/// What `up`'s `/v1/models` shows of `model` on `node` (null when nothing).
fn on(up: &Up, model: &str, node: &str) -> Value {
    up.get("/v1/models")["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == model && m["qs"]["node"] == node)
        .map(|m| m["qs"].clone())
        .unwrap_or_default()
}

/// A chat completion of `max_tokens` for `model` through `up`'s entry point: the status and
/// the body.
fn ask(up: &Up, model: &str, max_tokens: u32, stream: bool) -> (u16, String) {
    let (status, _, body) = post(
        up,
        "/v1/chat/completions",
        &chat(model, max_tokens, stream),
        None,
    );
    (status, body)
}

fn state_on(up: &Up, model: &str, node: &str) -> String {
    on(up, model, node)["state"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

#[test]
fn any_agent_serves_every_model_of_the_fleet_where_it_is_warm_or_where_vram_is_free() {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start().expect("nats-server 2.10+ (scripts/test installs it)");
    let url = server.url();
    let gpu = ["--simulated-gpu-mib", "24576"];
    let alpha = agent_configured(dir.path(), &url, "alpha", &[], &[], CONFIG);
    let names = ["beta", "gamma"];
    let mut gpus: Vec<Up> = names
        .iter()
        .map(|n| agent_configured(dir.path(), &url, n, &gpu, &[], CONFIG))
        .collect();
    alpha.apply(MODELS);
    alpha.wait("alpha sees small on beta and gamma", |u| {
        names.iter().all(|n| state_on(u, "small", n) == "absent")
    });

    // Alpha has no GPU: its request loads small where VRAM is free, and is answered.
    let (status, body) = ask(&alpha, "small", 3, false);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("chat.completion"), "{body}");
    let warm: Vec<usize> = (0..2)
        .filter(|&i| model_state(&gpus[i], "small") == "warm")
        .collect();
    assert_eq!(warm.len(), 1, "loaded on one node only");
    let (hot, cold) = (warm[0], 1 - warm[0]);
    alpha.wait("alpha hears small is warm there", |u| {
        state_on(u, "small", names[hot]) == "warm"
    });

    // A request at the other GPU node goes to the warm runtime rather than loading another.
    let (status, body) = ask(&gpus[cold], "small", 3, false);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        model_state(&gpus[cold], "small"),
        "absent",
        "nothing loaded at {}",
        names[cold]
    );
    assert!(started_pids(&gpus[cold], "small").is_empty());

    // A stream through alpha passes through event by event.
    let (status, body) = ask(&alpha, "small", 5, true);
    assert_eq!(status, 200, "{body}");
    assert!(body.matches("data: ").count() >= 5, "{body}");
    assert!(body.contains("[DONE]"), "{body}");

    // A client of alpha that goes away cancels the generation on the warm node.
    let port = runtime_port(&gpus[hot], "small");
    let completed = double_stats(port)["streams_completed"].clone();
    let reader = first_event(&alpha, &chat("small", 500, true));
    assert_eq!(double_stats(port)["streams_active"], 1);
    drop(reader);
    alpha.wait("the runtime on the warm node cancelled the stream", |_| {
        double_stats(port)["streams_cancelled"] == 1
    });
    assert_eq!(double_stats(port)["streams_completed"], completed);

    // Bad input is answered at alpha, naming what the fleet has and what a model needs.
    let (status, body) = ask(&alpha, "nope", 3, false);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("huge") && body.contains("small"), "{body}");
    let (status, body) = ask(&alpha, "huge", 3, false);
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("huge") && body.contains("102400 MiB"),
        "{body}"
    );

    // A routed request whose tag is not its sender's is refused before any runtime.
    let forged = format!(
        "x-qs-routed-by: alpha\r\nx-qs-routed-to: {}\r\nx-qs-routed-at: 1\r\nx-qs-route-tag: 00\r\n",
        names[0]
    );
    let (status, _, body) = post_with(
        &gpus[0],
        "/v1/chat/completions",
        &forged,
        &chat("small", 3, false),
        None,
    );
    assert_eq!(status, 401, "{body}");

    // The warm node's machine dies: alpha passes it over and loads small on the other.
    let victim_pids = started_pids(&gpus[hot], "small");
    gpus[hot].signal(libc::SIGKILL);
    for pid in &victim_pids {
        // SAFETY: the runtime's process group, started by the agent this test killed.
        unsafe { libc::kill(-(*pid as i32), libc::SIGKILL) };
    }
    let (status, body) = ask(&alpha, "small", 3, false);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        model_state(&gpus[cold], "small"),
        "warm",
        "loaded on the survivor"
    );
}
