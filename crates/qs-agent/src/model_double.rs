//! `qs model-double`: a small OpenAI-compatible server, a test double standing in for a real
//! model runtime (vLLM, SGLang, llama.cpp server, Ollama) on machines without GPUs or weights.
//! It answers `/health`, `/v1/models` and `/v1/chat/completions` by echoing the last message.

use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;

pub fn router(model: String) -> Router {
    let model = Arc::new(model);
    let m1 = model.clone();
    let m2 = model.clone();
    Router::new()
        .route("/health", get(|| async { Json(json!({ "status": "ok" })) }))
        .route(
            "/v1/models",
            get(move || async move { Json(json!({ "object": "list", "data": [{ "id": *m1, "object": "model" }] })) }),
        )
        .route(
            "/v1/chat/completions",
            post(move |Json(body): Json<Value>| async move {
                let last = body["messages"]
                    .as_array()
                    .and_then(|m| m.last())
                    .and_then(|m| m["content"].as_str())
                    .unwrap_or("")
                    .to_owned();
                let prompt_tokens = last.split_whitespace().count();
                Json(json!({
                    "object": "chat.completion",
                    "model": *m2,
                    "choices": [{ "index": 0, "finish_reason": "stop",
                                  "message": { "role": "assistant", "content": format!("echo: {last}") } }],
                    "usage": { "prompt_tokens": prompt_tokens, "completion_tokens": prompt_tokens + 1,
                               "total_tokens": 2 * prompt_tokens + 1 },
                }))
            }),
        )
}

/// Serves until the process is stopped.
pub async fn serve(port: u16, model: String) -> std::io::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router(model)).await
}
