//! The OpenAI-compatible entry point of the API: `/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings` and `/v1/models`, served by this process's model hosts
//! ([`crate::models::proxy`]). Behind the same guard as every route: an OpenAI client's
//! `Authorization: Bearer` carries the API token, or one of the keys of the keys file, whose
//! [`Grant`] caps the class and names the models.

use super::Api;
use crate::models::Endpoint;
use crate::models::keys::Grant;
use axum::Extension;
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
    grant: Option<&Grant>,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let s = &api.shared;
    let fleet = s.route.as_deref();
    crate::models::proxy::serve(
        &s.models,
        fleet,
        &s.counters,
        endpoint,
        grant,
        headers,
        body,
    )
    .await
}

pub(super) async fn chat<F: Fabric>(
    State(api): State<Arc<Api<F>>>,
    grant: Option<Extension<Grant>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let grant = grant.as_ref().map(|Extension(g)| g);
    openai(&api, Endpoint::Chat, grant, &headers, body).await
}

pub(super) async fn completions<F: Fabric>(
    State(api): State<Arc<Api<F>>>,
    grant: Option<Extension<Grant>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let grant = grant.as_ref().map(|Extension(g)| g);
    openai(&api, Endpoint::Completions, grant, &headers, body).await
}

pub(super) async fn embeddings<F: Fabric>(
    State(api): State<Arc<Api<F>>>,
    grant: Option<Extension<Grant>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let grant = grant.as_ref().map(|Extension(g)| g);
    openai(&api, Endpoint::Embeddings, grant, &headers, body).await
}

pub(super) async fn models<F: Fabric>(
    State(api): State<Arc<Api<F>>>,
    grant: Option<Extension<Grant>>,
) -> Response {
    let grant = grant.as_ref().map(|Extension(g)| g);
    crate::models::proxy::list(&api.shared.models, api.shared.route.as_deref(), grant)
}
