//! The operator's orders to nodes: `POST /v1/services/{name}/approve` (a promotion of a
//! stateful-read service's replica) and `POST`/`DELETE /v1/nodes/{node}/drain`.

use super::{Api, error};
use crate::control::Control;
use crate::v1;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use qs_fabric::Fabric;
use qs_wire::ServiceName;
use std::sync::Arc;

pub(super) async fn approve<F: Fabric>(
    State(api): State<Arc<Api<F>>>,
    Path(name): Path<String>,
) -> Response {
    let Ok(service) = ServiceName::new(&name) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{name:?} is not a valid service name"),
        );
    };
    let Some(reg) = api.registry().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no node is running");
    };
    let Some(steward) = reg.stewards.get(&service) else {
        return error(StatusCode::NOT_FOUND, format!("no service named {service}"));
    };
    let tx = api
        .shared
        .controls
        .read()
        .ok()
        .and_then(|c| c.get(steward).cloned());
    match tx {
        Some(tx)
            if tx
                .send(Control::ApprovePromotion(service.clone()))
                .await
                .is_ok() =>
        {
            Json(v1::Approved {
                approved: service.clone(),
                steward: steward.clone(),
            })
            .into_response()
        }
        _ => error(
            StatusCode::CONFLICT,
            format!("the steward of {service} ({steward}) is not on this agent"),
        ),
    }
}

async fn set_drain<F: Fabric>(api: &Api<F>, name: &str, on: bool) -> Response {
    let (node, tx) = match api.local_node(name) {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    match tx.send(Control::Drain(on)).await {
        Ok(()) => Json(v1::Drain { node, draining: on }).into_response(),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("node {node} is stopping"),
        ),
    }
}

/// Drains a node: it takes no new work and its instances move elsewhere.
pub(super) async fn drain<F: Fabric>(
    State(api): State<Arc<Api<F>>>,
    Path(node): Path<String>,
) -> Response {
    set_drain(&api, &node, true).await
}

/// Ends a drain.
pub(super) async fn undrain<F: Fabric>(
    State(api): State<Arc<Api<F>>>,
    Path(node): Path<String>,
) -> Response {
    set_drain(&api, &node, false).await
}
