//! The OpenAI-compatible entry point of the API: `/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings` and `/v1/models`, served by this process's model hosts
//! ([`crate::models::proxy`]). Behind the same guard as every route: an OpenAI client's
//! `Authorization: Bearer` carries the API token.

use super::Api;
use crate::models::proxy::Endpoint;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use qs_fabric::Fabric;
use std::sync::Arc;

/// The OpenAI-compatible entry point: routed to this process's model hosts.
async fn openai<F: Fabric>(
    api: &Api<F>,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let s = &api.shared;
    crate::models::proxy::serve(&s.models, &s.counters, endpoint, headers, body).await
}

pub(super) async fn chat<F: Fabric>(
    State(api): State<Arc<Api<F>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    openai(&api, Endpoint::Chat, &headers, body).await
}

pub(super) async fn completions<F: Fabric>(
    State(api): State<Arc<Api<F>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    openai(&api, Endpoint::Completions, &headers, body).await
}

pub(super) async fn embeddings<F: Fabric>(
    State(api): State<Arc<Api<F>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    openai(&api, Endpoint::Embeddings, &headers, body).await
}

pub(super) async fn models<F: Fabric>(State(api): State<Arc<Api<F>>>) -> Response {
    crate::models::proxy::list(&api.shared.models)
}
