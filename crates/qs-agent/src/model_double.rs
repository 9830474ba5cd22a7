//! `qs model-double`: a small OpenAI-compatible server, a test double standing in for a real
//! model runtime (vLLM, SGLang, llama.cpp's server, Ollama) on machines without GPUs or
//! weights. It behaves like one where the scheduler can tell: it takes its declared VRAM on
//! the simulated GPU when it starts (and fails "out of memory" as a real one would when the
//! memory is not free), answers `/health` 503 until its load time has passed, prefills at
//! `prefill_tokens_per_s` and decodes at `decode_tokens_per_s`, and streams completions as
//! server-sent events. On SIGTERM it finishes what is in flight, then exits.

use crate::simgpu::{ClaimError, SimGpu};
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Most tokens one request may ask for.
const MAX_TOKENS: u64 = 4096;
/// Tokens generated when a request names no `max_tokens`.
const DEFAULT_TOKENS: u64 = 16;
/// Numbers in an embedding.
const EMBEDDING_DIMS: usize = 8;

/// How the double behaves.
#[derive(Clone, Debug)]
pub struct DoubleOptions {
    pub port: u16,
    pub model: String,
    /// VRAM it takes on the simulated GPU (0: none).
    pub vram_bytes: u64,
    /// The simulated GPU's directory; `None`: [`crate::simgpu::ENV_DIR`] from the
    /// environment, as the agent hands it.
    pub gpu_dir: Option<PathBuf>,
    /// How long it loads before `/health` answers 200.
    pub load_ms: u64,
    pub prefill_tokens_per_s: u64,
    pub decode_tokens_per_s: u64,
}

impl DoubleOptions {
    pub fn new(port: u16, model: impl Into<String>) -> Self {
        DoubleOptions {
            port,
            model: model.into(),
            vram_bytes: 0,
            gpu_dir: None,
            load_ms: 0,
            prefill_tokens_per_s: 5_000,
            decode_tokens_per_s: 1_000,
        }
    }
}

/// Why the double could not serve.
#[derive(Debug, thiserror::Error)]
pub enum DoubleError {
    #[error(transparent)]
    Claim(#[from] ClaimError),
    #[error("serving on 127.0.0.1:{port}: {source}")]
    Serve { port: u16, source: std::io::Error },
}

struct Double {
    opts: DoubleOptions,
    warm_at: Instant,
    /// Streams: generating now, generated to their end, and given up because the client
    /// went away (`GET /stats`, for tests that a disconnect cancels upstream).
    streams_active: AtomicU64,
    streams_completed: AtomicU64,
    streams_cancelled: AtomicU64,
}

impl Double {
    fn warm(&self) -> bool {
        Instant::now() >= self.warm_at
    }

    fn prefill(&self, tokens: u64) -> Duration {
        Duration::from_micros(tokens * 1_000_000 / self.opts.prefill_tokens_per_s.max(1))
    }

    fn per_token(&self) -> Duration {
        Duration::from_micros(1_000_000 / self.opts.decode_tokens_per_s.max(1))
    }
}

pub fn router(opts: DoubleOptions) -> Router {
    let warm_at = Instant::now() + Duration::from_millis(opts.load_ms);
    let double = Arc::new(Double {
        opts,
        warm_at,
        streams_active: AtomicU64::new(0),
        streams_completed: AtomicU64::new(0),
        streams_cancelled: AtomicU64::new(0),
    });
    Router::new()
        .route("/health", get(health))
        .route("/stats", get(stats))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completion))
        .route("/v1/embeddings", post(embeddings))
        .with_state(double)
}

/// Serves until SIGTERM or SIGINT; in-flight requests finish first. Its VRAM is claimed
/// before it listens and released when it exits.
pub async fn serve(opts: DoubleOptions) -> Result<(), DoubleError> {
    let port = opts.port;
    let gpu = opts
        .gpu_dir
        .clone()
        .or_else(|| std::env::var_os(crate::simgpu::ENV_DIR).map(PathBuf::from))
        .filter(|_| opts.vram_bytes > 0)
        .map(SimGpu::open);
    if let Some(g) = &gpu {
        g.claim(std::process::id(), opts.vram_bytes)?;
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let served = async {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        axum::serve(listener, router(opts))
            .with_graceful_shutdown(terminated())
            .await
    }
    .await;
    if let Some(g) = &gpu {
        g.release(std::process::id());
    }
    served.map_err(|source| DoubleError::Serve { port, source })
}

async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

fn loading() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "status": "loading" })),
    )
        .into_response()
}

async fn health(State(d): State<Arc<Double>>) -> Response {
    if !d.warm() {
        return loading();
    }
    Json(json!({ "status": "ok" })).into_response()
}

async fn models(State(d): State<Arc<Double>>) -> Response {
    if !d.warm() {
        return loading();
    }
    Json(json!({ "object": "list", "data": [{ "id": d.opts.model, "object": "model" }] }))
        .into_response()
}

/// What a completion request asks for.
struct Ask {
    prompt: String,
    max_tokens: u64,
    stream: bool,
}

impl Ask {
    fn read(body: &Value, prompt: String) -> Ask {
        Ask {
            prompt,
            max_tokens: body["max_tokens"]
                .as_u64()
                .unwrap_or(DEFAULT_TOKENS)
                .clamp(1, MAX_TOKENS),
            stream: body["stream"].as_bool().unwrap_or(false),
        }
    }

    fn prompt_tokens(&self) -> u64 {
        self.prompt.split_whitespace().count().max(1) as u64
    }

    /// The `i`th generated token: the prompt's words, echoed round.
    fn token(&self, i: u64) -> String {
        let words: Vec<&str> = self.prompt.split_whitespace().collect();
        if i == 0 || words.is_empty() {
            return "echo:".to_owned();
        }
        format!(" {}", words[(i as usize - 1) % words.len()])
    }
}

async fn chat(State(d): State<Arc<Double>>, Json(body): Json<Value>) -> Response {
    let prompt = body["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|m| m["content"].as_str())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    generate(d, Ask::read(&body, prompt), true).await
}

async fn completion(State(d): State<Arc<Double>>, Json(body): Json<Value>) -> Response {
    let prompt = body["prompt"].as_str().unwrap_or("").to_owned();
    generate(d, Ask::read(&body, prompt), false).await
}

async fn generate(d: Arc<Double>, ask: Ask, chat: bool) -> Response {
    if !d.warm() {
        return loading();
    }
    tokio::time::sleep(d.prefill(ask.prompt_tokens())).await;
    let model = d.opts.model.clone();
    let (object, chunk_object) = if chat {
        ("chat.completion", "chat.completion.chunk")
    } else {
        ("text_completion", "text_completion")
    };
    let usage = json!({
        "prompt_tokens": ask.prompt_tokens(),
        "completion_tokens": ask.max_tokens,
        "total_tokens": ask.prompt_tokens() + ask.max_tokens,
    });
    if !ask.stream {
        tokio::time::sleep(d.per_token() * ask.max_tokens as u32).await;
        let text: String = (0..ask.max_tokens).map(|i| ask.token(i)).collect();
        let choice = if chat {
            json!({ "index": 0, "finish_reason": "length",
                    "message": { "role": "assistant", "content": text } })
        } else {
            json!({ "index": 0, "finish_reason": "length", "text": text })
        };
        return Json(
            json!({ "object": object, "model": model, "choices": [choice], "usage": usage }),
        )
        .into_response();
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(4);
    d.streams_active.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        let outcome = stream_tokens(&d, &ask, chat, &model, chunk_object, &usage, &tx).await;
        d.streams_active.fetch_sub(1, Ordering::Relaxed);
        let counter = if outcome {
            &d.streams_completed
        } else {
            &d.streams_cancelled
        };
        counter.fetch_add(1, Ordering::Relaxed);
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Sends a stream's tokens at the decode rate: whether it reached its end (not: the client
/// went away, and generation stopped there).
async fn stream_tokens(
    d: &Double,
    ask: &Ask,
    chat: bool,
    model: &str,
    chunk_object: &str,
    usage: &Value,
    tx: &tokio::sync::mpsc::Sender<Result<String, std::io::Error>>,
) -> bool {
    {
        let mut next = Instant::now();
        for i in 0..ask.max_tokens {
            next += d.per_token();
            tokio::time::sleep_until(next).await;
            let last = i + 1 == ask.max_tokens;
            let piece = ask.token(i);
            let choice = if chat {
                json!({ "index": 0, "delta": { "content": piece },
                        "finish_reason": if last { Value::from("length") } else { Value::Null } })
            } else {
                json!({ "index": 0, "text": piece,
                        "finish_reason": if last { Value::from("length") } else { Value::Null } })
            };
            let mut chunk = json!({ "object": chunk_object, "model": model, "choices": [choice] });
            if last {
                chunk["usage"] = usage.clone();
            }
            if tx.send(Ok(format!("data: {chunk}\n\n"))).await.is_err() {
                return false; // the client went away
            }
        }
        tx.send(Ok("data: [DONE]\n\n".to_owned())).await.is_ok()
    }
}

/// `GET /stats`: the streams generating, completed and cancelled.
async fn stats(State(d): State<Arc<Double>>) -> Response {
    Json(json!({
        "streams_active": d.streams_active.load(Ordering::Relaxed),
        "streams_completed": d.streams_completed.load(Ordering::Relaxed),
        "streams_cancelled": d.streams_cancelled.load(Ordering::Relaxed),
    }))
    .into_response()
}

async fn embeddings(State(d): State<Arc<Double>>, Json(body): Json<Value>) -> Response {
    if !d.warm() {
        return loading();
    }
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let tokens: u64 = inputs
        .iter()
        .map(|s| s.split_whitespace().count().max(1) as u64)
        .sum();
    tokio::time::sleep(d.prefill(tokens)).await;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let h = s
                .bytes()
                .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
            let v: Vec<f64> = (0..EMBEDDING_DIMS)
                .map(|k| ((h >> (k * 8)) & 0xff) as f64 / 255.0)
                .collect();
            json!({ "object": "embedding", "index": i, "embedding": v })
        })
        .collect();
    Json(
        json!({ "object": "list", "model": d.opts.model, "data": data,
                 "usage": { "prompt_tokens": tokens, "total_tokens": tokens } }),
    )
    .into_response()
}
