//! The durable tasks' routes: `POST /v1/tasks` (a task as JSON, checked by
//! [`qs_wire::decode_task`]), `GET /v1/tasks`, `GET /v1/tasks/{id}`,
//! `POST /v1/tasks/{id}/cancel`.

use super::{Api, error};
use crate::v1;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use qs_core::tasks::Refusal;
use qs_fabric::Fabric;
use qs_wire::TaskId;
use std::sync::Arc;

/// The status a refusal answers with.
fn refused(r: Refusal) -> Response {
    let status = match r {
        Refusal::Full { .. } => StatusCode::TOO_MANY_REQUESTS,
        Refusal::Unknown(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::CONFLICT,
    };
    error(status, r.to_string())
}

/// The task an id names, or why the id names none.
fn task_id(id: &str) -> Result<TaskId, String> {
    TaskId::new(id).map_err(|e| format!("{id:?} is no task id: {e}"))
}

pub(super) async fn submit<F: Fabric>(State(api): State<Arc<Api<F>>>, body: Bytes) -> Response {
    let spec = match qs_wire::decode_task("POST /v1/tasks", &body) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match api.shared.tasks.submit(spec).await {
        Ok(a) => {
            let status = if a.existing {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            let body = v1::Submitted {
                id: a.id,
                existing: a.existing,
            };
            (status, Json(body)).into_response()
        }
        Err(r) => refused(r),
    }
}

pub(super) async fn list<F: Fabric>(State(api): State<Arc<Api<F>>>) -> Response {
    Json(api.shared.tasks.list().await).into_response()
}

pub(super) async fn show<F: Fabric>(
    State(api): State<Arc<Api<F>>>,
    Path(id): Path<String>,
) -> Response {
    let id = match task_id(&id) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match api.shared.tasks.get(&id).await {
        Some(t) => Json(t).into_response(),
        None => refused(Refusal::Unknown(id)),
    }
}

pub(super) async fn cancel<F: Fabric>(
    State(api): State<Arc<Api<F>>>,
    Path(id): Path<String>,
) -> Response {
    let id = match task_id(&id) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match api.shared.tasks.cancel(&id).await {
        Ok(()) => Json(v1::Cancelled { cancelled: id }).into_response(),
        Err(r) => refused(r),
    }
}
