//! The chaos routes of the API: kill an instance, a node or this whole agent, pause a node,
//! and make a node's runtime panic, as the failure tests and `qs chaos` do.

use super::{Api, error};
use crate::control::Control;
use crate::v1;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use qs_fabric::Fabric;
use qs_wire::{InstanceId, NodeId};
use serde::Deserialize;
use std::os::unix::process::CommandExt;
use std::sync::Arc;
use std::time::Duration;

/// Kills an instance (kill -9 of its process group) or makes a node of this agent die.
pub(super) async fn chaos_kill<F: Fabric>(
    State(api): State<Arc<Api<F>>>,
    Path(target): Path<String>,
) -> Response {
    let Ok(instance) = InstanceId::new(&target) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{target:?} is not a valid instance or node name"),
        );
    };
    if let Ok(node) = NodeId::new(&target)
        && let Some(tx) = api.control(&node)
    {
        if api.mode == "nats" {
            // The node is this whole process: kill -9 it, as a machine failing would. Its
            // instances run on in their own process groups until a restart reaps them.
            let pid = std::process::id();
            after_reply(move || {
                // SAFETY: signals this very process.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            });
            return Json(v1::Killed::Agent {
                killed_agent: node,
                pid,
            })
            .into_response();
        }
        return match tx.send(Control::Die).await {
            Ok(()) => Json(v1::Killed::Node { killed_node: node }).into_response(),
            Err(_) => error(
                StatusCode::NOT_FOUND,
                format!("node {node} is already gone"),
            ),
        };
    }
    let host = api.shared.views.read().ok().and_then(|v| {
        v.iter()
            .find(|(_, view)| view.instances.iter().any(|i| i.instance == instance))
            .map(|(id, _)| id.clone())
    });
    let Some(node) = host else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no instance or node {instance} on this agent"),
        );
    };
    let i = instance.clone();
    match api
        .ask(&node, |reply| Control::Kill { instance: i, reply })
        .await
    {
        Some(true) => Json(v1::Killed::Instance {
            killed: instance,
            node,
        })
        .into_response(),
        _ => error(StatusCode::NOT_FOUND, format!("{instance} is not running")),
    }
}

#[derive(Deserialize)]
pub(super) struct PauseQuery {
    ms: u64,
}

/// Longest chaos pause.
const MAX_PAUSE_MS: u64 = 600_000;

/// Freezes a node for `ms`: this whole process with SIGSTOP when the node is all it runs
/// (`qs agent`), which a helper process ends with SIGCONT; otherwise that node's runtime.
pub(super) async fn chaos_pause<F: Fabric>(
    State(api): State<Arc<Api<F>>>,
    Path(name): Path<String>,
    Query(q): Query<PauseQuery>,
) -> Response {
    if !(1..=MAX_PAUSE_MS).contains(&q.ms) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("ms must be 1 to {MAX_PAUSE_MS}, got {}", q.ms),
        );
    }
    let (node, tx) = match api.local_node(&name) {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    let pause = Duration::from_millis(q.ms);
    if api.mode == "nats" {
        let pid = std::process::id();
        // The resumer must outlive our stop: a background shell whose parent exits at once,
        // so nothing is left for us to reap.
        let script = format!(
            "(sleep {:.3}; kill -CONT {pid}) >/dev/null 2>&1 &",
            pause.as_secs_f64() + 0.05
        );
        let started = tokio::task::spawn_blocking(move || {
            std::process::Command::new("sh")
                .args(["-c", &script])
                .process_group(0)
                .stdin(std::process::Stdio::null())
                .status()
        })
        .await;
        if !matches!(started, Ok(Ok(status)) if status.success()) {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot start the process that would resume us: {started:?}"),
            );
        }
        after_reply(move || {
            // SAFETY: signals this very process; the helper sends SIGCONT.
            unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        });
        return Json(v1::Paused::Agent {
            paused_agent: node,
            pid,
            ms: q.ms,
        })
        .into_response();
    }
    match tx.send(Control::Pause(pause)).await {
        Ok(()) => Json(v1::Paused::Node {
            paused_node: node,
            ms: q.ms,
        })
        .into_response(),
        Err(_) => error(
            StatusCode::NOT_FOUND,
            format!("node {node} is already gone"),
        ),
    }
}

/// Makes a node's runtime panic (after answering): a fault injection for the supervision
/// of the agent (`qs` exits on any panic; what restarts it reaps what ran).
pub(super) async fn chaos_panic<F: Fabric>(
    State(api): State<Arc<Api<F>>>,
    Path(name): Path<String>,
) -> Response {
    let (node, tx) = match api.local_node(&name) {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    let panicking = node.clone();
    after_reply(move || {
        let _ = tx.try_send(Control::Panic);
    });
    Json(v1::Panicked {
        panicking,
        pid: std::process::id(),
    })
    .into_response()
}

/// Runs `f` shortly after the current response has gone out.
fn after_reply(f: impl FnOnce() + Send + 'static) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        f();
    });
}
