//! What the model-runtime tests share: a node with one simulated 24 GB GPU (and a peer
//! without one), OpenAI clients of the agent's entry point, and readings of the ledger's
//! model-runtime steps and of `/v1/models`.

use super::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;

pub const GPU_FLEET: &str = r#"
[node.gpu-box]
level = 0
cpu_cores = 4
memory_mib = 8192
gpus = [{ vram_mib = 24576 }]

# A node without GPUs, whose work placed on gpu-box runs under its lease.
[node.peer-a]
level = 1
cpu_cores = 2
memory_mib = 2048
"#;

pub fn start(dir: &std::path::Path, config: &str) -> Up {
    Up::start_fleet(dir, GPU_FLEET, config)
}

/// `qs up` with seed 003's exclusive pair declared, the resident model loaded and `code`
/// warm (one request served).
pub fn pair_with_code_warm(dir: &std::path::Path) -> Up {
    let up = start(dir, "");
    declare(&up, PAIR, "code");
    declare(&up, PAIR, "conv");
    up.wait("the resident model loaded", |u| {
        model_state(u, "tiny") == "warm"
    });
    let (status, _, body) = post(&up, "/v1/chat/completions", &chat("code", 2, false), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(model_state(&up, "code"), "warm");
    up
}

/// Applies `spec` and waits until the host shows `model`.
pub fn declare(up: &Up, spec: &str, model: &str) {
    up.apply(spec);
    up.wait("the model declared", |u| !model_state(u, model).is_empty());
}

/// A completion request as an OpenAI client sends it, read to its end: the status, the
/// `Retry-After` header, the body. `first` hears when the first bytes of the body came.
pub fn post(
    up: &Up,
    path: &str,
    body: &Value,
    first: Option<mpsc::Sender<()>>,
) -> (u16, Option<String>, String) {
    post_with(up, path, "", body, first)
}

/// A raw body (not necessarily JSON) to `path`: the status, the `Retry-After`, the body.
pub fn post_raw(up: &Up, path: &str, body: &str) -> (u16, Option<String>, String) {
    let token = up.token().unwrap().to_owned();
    send(up, "POST", path, &token, "", body, None)
}

/// [`post`] with more headers (each ending in CRLF).
pub fn post_with(
    up: &Up,
    path: &str,
    headers: &str,
    body: &Value,
    first: Option<mpsc::Sender<()>>,
) -> (u16, Option<String>, String) {
    let token = up.token().unwrap().to_owned();
    send(up, "POST", path, &token, headers, &body.to_string(), first)
}

/// A request as a client holding `key` (an API key, not the agent's token) sends it.
pub fn request_as(
    up: &Up,
    key: &str,
    method: &str,
    path: &str,
    body: &Value,
) -> (u16, Option<String>, String) {
    let body = if method == "GET" {
        String::new()
    } else {
        body.to_string()
    };
    send(up, method, path, key, "", &body, None)
}

fn send(
    up: &Up,
    method: &str,
    path: &str,
    bearer: &str,
    headers: &str,
    body: &str,
    first: Option<mpsc::Sender<()>>,
) -> (u16, Option<String>, String) {
    let addr = up.api.trim_start_matches("http://").to_owned();
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {bearer}\r\nContent-Type: application/json\r\n{headers}Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut status_line = String::new();
    r.read_line(&mut status_line).unwrap();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut retry_after = None;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("retry-after")
        {
            retry_after = Some(v.trim().to_owned());
        }
    }
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = r.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        if let Some(tx) = &first {
            let _ = tx.send(());
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    (status, retry_after, text)
}

/// A handle on the same agent for another thread (it owns no process).
pub fn client(up: &Up) -> Up {
    Up {
        child: None,
        api: up.api.clone(),
        dir: up.dir.clone(),
        token: up.token().unwrap().to_owned().into(),
    }
}

pub fn chat(model: &str, max_tokens: u32, stream: bool) -> Value {
    serde_json::json!({
        "model": model,
        "messages": [{ "role": "user", "content": "count the stars" }],
        "max_tokens": max_tokens,
        "stream": stream,
    })
}

/// The model-runtime events of the ledger: (model, step), in order.
pub fn steps(up: &Up) -> Vec<(String, String)> {
    up.events()
        .iter()
        .filter(|e| e["event"]["event"] == "model-runtime")
        .map(|e| {
            (
                e["event"]["model"].as_str().unwrap_or("").to_owned(),
                e["event"]["step"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// The pids of `model`'s runtime starts, from the ledger, in order.
pub fn started_pids(up: &Up, model: &str) -> Vec<u32> {
    up.events()
        .iter()
        .filter(|e| e["event"]["model"] == model && e["event"]["step"] == "started")
        .filter_map(|e| {
            let d = e["event"]["detail"].as_str()?;
            d.split("(pid ").nth(1)?.split(',').next()?.parse().ok()
        })
        .collect()
}

pub fn position(steps: &[(String, String)], model: &str, step: &str) -> usize {
    steps
        .iter()
        .position(|(m, s)| m == model && s == step)
        .unwrap_or_else(|| panic!("no {step} of {model} in {steps:?}"))
}

/// What `/v1/models` shows of `model` in its `qs` part (null when it shows no such model).
pub fn model_qs(up: &Up, model: &str) -> Value {
    up.get("/v1/models")["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == model)
        .map(|m| m["qs"].clone())
        .unwrap_or_default()
}

/// A text `/v1/models` shows of `model` (state, tier, ...), empty when absent.
pub fn model_field(up: &Up, model: &str, field: &str) -> String {
    model_qs(up, model)[field].as_str().unwrap_or("").to_owned()
}

/// A number `/v1/models` shows of `model` (`in_flight`, `waiting`), 0 when absent.
pub fn model_field_number(up: &Up, model: &str, field: &str) -> u64 {
    model_qs(up, model)[field].as_u64().unwrap_or(0)
}

pub fn model_state(up: &Up, model: &str) -> String {
    model_field(up, model, "state")
}

/// The exclusive pair of seed 003's benchmark: about 19 GB and 8.5 GB, never together on
/// 24 GB less the 1.5 GB margin; and a small resident model in the margin.
pub const PAIR: &str = r#"
[model.code]
max_concurrency = 4
load_ms = 300
[[model.code.tier]]
name = "19g"
vram_mib = 19456
command = "{qs} model-double --port {port} --model code --vram-mib 19456 --load-ms 300 --decode-tps 50"

[model.conv]
max_concurrency = 4
load_ms = 300
[[model.conv.tier]]
name = "8g"
vram_mib = 8704
command = "{qs} model-double --port {port} --model conv --vram-mib 8704 --load-ms 300 --decode-tps 200"

[model.tiny]
resident = true
[[model.tiny.tier]]
name = "1g"
vram_mib = 1024
command = "{qs} model-double --port {port} --model tiny --vram-mib 1024 --load-ms 100 --decode-tps 500"
"#;

/// The double's `/stats` on `port`.
pub fn double_stats(port: u16) -> Value {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(b"GET /stats HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut s, &mut text).unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_default()
}

/// The port `model`'s runtime was started on, from `up`'s ledger.
pub fn runtime_port(up: &Up, model: &str) -> u16 {
    up.events()
        .iter()
        .find(|e| e["event"]["model"] == model && e["event"]["step"] == "started")
        .and_then(|e| {
            let d = e["event"]["detail"].as_str()?;
            d.split("port ").nth(1)?.split(')').next()?.parse().ok()
        })
        .expect("the runtime's port in the ledger")
}

/// A streamed request to `up`'s chat completions, read up to its first event; dropping what
/// it returns is the client going away.
pub fn first_event(up: &Up, body: &Value) -> BufReader<TcpStream> {
    let addr = up.api.trim_start_matches("http://").to_owned();
    let body = body.to_string();
    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(LIMIT)).unwrap();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        up.token().unwrap(),
        body.len()
    );
    conn.write_all(req.as_bytes()).unwrap();
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    while !line.starts_with("data: ") {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    reader
}
