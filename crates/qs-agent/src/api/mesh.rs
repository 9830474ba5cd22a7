//! The mesh's routes: `GET /v1/mesh` (the status: mode, sectors, led clusters, breakers,
//! conflicts, KPIs) and `POST /v1/mesh/ops` (an operator's action as JSON, checked by
//! `MeshAction::check`; it runs at the root and its outcome comes back).

use super::{Api, error};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use qs_fabric::Fabric;
use qs_wire::mesh::MeshAction;
use std::sync::Arc;

/// Largest request body.
const MAX_BODY_BYTES: usize = 16 * 1024;

pub(super) async fn status<F: Fabric>(State(api): State<Arc<Api<F>>>) -> Response {
    Json(api.shared.mesh.status().as_ref().clone()).into_response()
}

pub(super) async fn run<F: Fabric>(State(api): State<Arc<Api<F>>>, body: Bytes) -> Response {
    if body.len() > MAX_BODY_BYTES {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("POST /v1/mesh/ops: at most {MAX_BODY_BYTES} bytes"),
        );
    }
    let action: MeshAction = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("POST /v1/mesh/ops: {e}")),
    };
    if let Err(e) = action.check() {
        return error(StatusCode::BAD_REQUEST, format!("POST /v1/mesh/ops: {e}"));
    }
    match api.shared.mesh.run(action).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(StatusCode::CONFLICT, e),
    }
}
