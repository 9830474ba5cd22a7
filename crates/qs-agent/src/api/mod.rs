//! The agent's HTTP API (loopback by default): health, Prometheus metrics, queue and durable
//! state, and the `/v1` resources the CLI reads and writes. Every request passes the
//! [`guard`] first: the `Host` allow-list, the bearer token, the declared content type.

use crate::control::{Control, Shared};
use crate::names::{MODELS_BUCKET, SPECS_BUCKET};
use crate::v1::{self, RegistryView};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as Metrics;
use qs_fabric::{Fabric, Kv};
use qs_wire::{NodeId, ServiceName};
use serde::Deserialize;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

mod chaos;
mod guard;
mod mesh;
mod openai;
mod orders;
mod tasks;
pub mod tls;
mod token;
use chaos::{chaos_kill, chaos_panic, chaos_pause};
pub use guard::{Access, MAX_API_HOSTS, declared_content_type};
use openai::{chat, completions, embeddings, models};
use orders::{approve, drain, undrain};
pub use token::ApiToken;

/// Longest a follow request waits for new events.
const MAX_WAIT_MS: u64 = 30_000;

/// Most requests waiting for events at once (long polls, `qs events --follow`); one more is
/// answered 429 at once instead of holding a connection and a blocking thread.
pub const MAX_LONG_POLLS: usize = 32;

/// State behind the routes.
pub struct Api<F: Fabric> {
    shared: Arc<Shared>,
    fabric: F,
    mode: &'static str,
    access: Arc<Access>,
    long_polls: Arc<tokio::sync::Semaphore>,
    metrics: Metrics,
    nodes_live: Gauge,
    instances: Gauge,
    in_flight: Gauge,
    quarantined: Gauge,
    revoked: Gauge,
    ledger_dropped: Gauge,
    ledger_bytes: Gauge,
    task_metrics: crate::tasks::metrics::TaskMetrics,
    mesh_metrics: crate::mesh_metrics::MeshMetrics,
}

impl<F: Fabric> Api<F> {
    pub fn new(shared: Arc<Shared>, fabric: F, mode: &'static str, access: Access) -> Arc<Self> {
        let mut metrics = Metrics::with_prefix("qs");
        let c = &shared.counters;
        let counters = [
            ("messages_sent", "Fleet messages sent", &c.messages_sent),
            (
                "messages_received",
                "Fleet messages received",
                &c.messages_received,
            ),
            (
                "ledger_events",
                "Events appended to the ledger",
                &c.ledger_events,
            ),
            (
                "placements",
                "Placements completed by stewards here",
                &c.placements,
            ),
            ("instance_starts", "Instances started", &c.instance_starts),
            (
                "instance_failures",
                "Instances that crashed, failed to start or failed health checks",
                &c.instance_failures,
            ),
            (
                "nodes_declared_dead",
                "Peers declared dead after missing heartbeats",
                &c.nodes_declared_dead,
            ),
            (
                "specs_refused",
                "Specs read from the fleet's KV that broke a rule (the last good one stays)",
                &c.specs_refused,
            ),
            (
                "model_swaps",
                "Model runtime swaps begun (runtimes drained to make room for another)",
                &c.model_swaps,
            ),
            (
                "model_tier_changes",
                "Model runtimes started at a smaller tier to fit beside busy ones, or moved back up",
                &c.model_tier_changes,
            ),
            (
                "model_loads",
                "Model runtimes loaded and warm",
                &c.model_loads,
            ),
            (
                "model_watchdog_resets",
                "Model runtimes reset by the watchdog after repeated failed starts (alerts)",
                &c.model_watchdog_resets,
            ),
            (
                "model_requests_refused",
                "Model requests refused (429: too many waiting; 503: runtime failed or gone)",
                &c.model_requests_refused,
            ),
        ];
        for (name, help, counter) in counters {
            metrics.register(name, help, counter.clone());
        }
        c.models.register(&mut metrics);
        metrics.register(
            "orders_refused",
            "Dispatches, stops and promotions not obeyed, by reason: not_steward (the sender \
             does not steward the service as this node sees the fleet), unknown_service",
            c.orders_refused.clone(),
        );
        metrics.register(
            "messages_rejected",
            "Messages dropped, by reason: malformed, unsigned, unknown_sender, bad_signature, \
             stale, replay, quarantined, invalid (authenticated but breaking a rule), expired \
             and revoked (the sender's certificate), capability (outside the sender's \
             certificate), no_session (encrypted under a session this node does not hold); \
             invalid and capability count towards a quarantine",
            shared.auth.rejected.clone(),
        );
        metrics.register(
            "trust_refused",
            "Certificates, revocations and join requests refused, by reason: malformed, \
             forged, other_fleet, expired, not_yet_valid, revoked, token_used, token_expired, \
             not_renewable",
            shared.auth.refused.clone(),
        );
        let revoked = Gauge::default();
        let (nodes_live, instances, in_flight, quarantined, ledger_dropped, ledger_bytes) = (
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
        );
        let gauges = [
            (
                "nodes_live",
                "Live nodes in this agent's registry",
                &nodes_live,
            ),
            (
                "instances_running",
                "Instances running on this agent's nodes",
                &instances,
            ),
            (
                "placements_in_flight",
                "Placements being driven here",
                &in_flight,
            ),
            (
                "peers_quarantined",
                "Peers whose messages are dropped unread for sending invalid ones",
                &quarantined,
            ),
            (
                "peers_revoked",
                "Peers whose certificate this agent holds as revoked: nothing they send is heard",
                &revoked,
            ),
            (
                "ledger_events_dropped",
                "Events dropped since start because the queue to a failing ledger was full",
                &ledger_dropped,
            ),
            (
                "ledger_bytes",
                "Bytes of records in the ledger (kept within ledger_max_bytes by compaction)",
                &ledger_bytes,
            ),
        ];
        for (name, help, gauge) in gauges {
            metrics.register(name, help, gauge.clone());
        }
        let task_metrics = crate::tasks::metrics::TaskMetrics::default();
        task_metrics.register(&mut metrics);
        let mesh_metrics = crate::mesh_metrics::MeshMetrics::default();
        mesh_metrics.register(&mut metrics);
        Arc::new(Api {
            shared,
            fabric,
            mode,
            access: Arc::new(access),
            long_polls: Arc::new(tokio::sync::Semaphore::new(MAX_LONG_POLLS)),
            metrics,
            nodes_live,
            instances,
            in_flight,
            quarantined,
            revoked,
            ledger_dropped,
            ledger_bytes,
            task_metrics,
            mesh_metrics,
        })
    }

    fn first_node(&self) -> Option<NodeId> {
        self.shared.controls.read().ok()?.keys().next().cloned()
    }

    /// The control channel of a node of this process.
    fn control(&self, node: &NodeId) -> Option<mpsc::Sender<Control>> {
        self.shared.controls.read().ok()?.get(node).cloned()
    }

    /// A node of this process named in a path, with its control channel; or the answer
    /// that says why not (400 for a bad name, 404 for one not here).
    fn local_node(&self, name: &str) -> Result<(NodeId, mpsc::Sender<Control>), Refusal> {
        let Ok(node) = NodeId::new(name) else {
            return Err(Refusal {
                status: StatusCode::BAD_REQUEST,
                message: format!("{name:?} is not a valid node name"),
            });
        };
        match self.control(&node) {
            Some(tx) => Ok((node, tx)),
            None => Err(Refusal {
                status: StatusCode::NOT_FOUND,
                message: format!("node {node} does not run on this agent"),
            }),
        }
    }

    async fn ask<T>(
        &self,
        node: &NodeId,
        make: impl FnOnce(oneshot::Sender<T>) -> Control,
    ) -> Option<T> {
        let tx = self.control(node)?;
        let (reply, rx) = oneshot::channel();
        tx.send(make(reply)).await.ok()?;
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .ok()?
            .ok()
    }

    async fn registry(&self) -> Option<RegistryView> {
        let node = self.first_node()?;
        self.ask(&node, |reply| Control::Registry { reply }).await
    }
}

pub fn router<F: Fabric>(api: Arc<Api<F>>) -> Router {
    let access = api.access.clone();
    Router::new()
        .route("/health", get(health::<F>))
        .route("/metrics", get(metrics::<F>))
        .route("/queue_stats", get(queue_stats::<F>))
        .route("/checkpoint_state", get(checkpoint_state::<F>))
        .route("/v1/nodes", get(nodes::<F>))
        .route("/v1/services", get(services::<F>))
        .route("/v1/instances", get(instances::<F>))
        .route("/v1/addresses", get(addresses::<F>))
        .route("/v1/tasks", post(tasks::submit::<F>).get(tasks::list::<F>))
        .route("/v1/mesh", get(mesh::status::<F>))
        .route("/v1/mesh/ops", post(mesh::run::<F>))
        .route("/v1/tasks/{id}", get(tasks::show::<F>))
        .route("/v1/tasks/{id}/cancel", post(tasks::cancel::<F>))
        .route("/v1/events", get(events::<F>))
        .route("/v1/specs", post(apply::<F>))
        .route("/v1/specs/{name}", delete(delete_spec::<F>))
        .route("/v1/chaos/kill/{target}", post(chaos_kill::<F>))
        .route("/v1/chaos/pause/{node}", post(chaos_pause::<F>))
        .route("/v1/chaos/panic/{node}", post(chaos_panic::<F>))
        .route(
            "/v1/nodes/{node}/drain",
            post(drain::<F>).delete(undrain::<F>),
        )
        .route("/v1/services/{name}/approve", post(approve::<F>))
        .route("/v1/chat/completions", post(chat::<F>))
        .route("/v1/completions", post(completions::<F>))
        .route("/v1/embeddings", post(embeddings::<F>))
        .route("/v1/models", get(models::<F>))
        .with_state(api)
        .layer(axum::middleware::from_fn_with_state(access, guard::guard))
}

/// A request refused before its handler did anything: the status and the message.
struct Refusal {
    status: StatusCode,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.status, self.message)
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = v1::ErrorBody {
        error: message.into(),
    };
    (status, Json(body)).into_response()
}

async fn health<F: Fabric>(
    State(api): State<Arc<Api<F>>>,
    req: axum::extract::Request,
) -> Response {
    let views = api.shared.views.read().map(|v| v.len()).unwrap_or(0);
    // Autonomous: the fleet is out of reach; this node keeps its instances and its ledger
    // and catches up when the fabric is back.
    let mode = if api.fabric.connected() {
        api.mode
    } else {
        "autonomous"
    };
    let degraded = api.shared.journal.health().degraded();
    Json(v1::Health {
        status: if degraded.is_some() { "degraded" } else { "ok" }.into(),
        reason: degraded.map(|r| format!("the ledger takes no writes: {r}")),
        mode: mode.into(),
        nodes: views,
        ledger_next_seq: api.shared.ledger.next_seq(),
        // Only a client on this machine is told where the token is: it still needs the
        // right to read the file.
        token_file: guard::peer_is_loopback(&req).then(|| {
            let path = api.shared.state_dir.path(qs_store::StateFile::ApiToken);
            std::path::absolute(&path)
                .unwrap_or(path)
                .display()
                .to_string()
        }),
    })
    .into_response()
}

async fn metrics<F: Fabric>(State(api): State<Arc<Api<F>>>) -> Response {
    api.quarantined
        .set(api.shared.auth.quarantined().len() as i64);
    let revoked = api
        .shared
        .auth
        .certificates()
        .iter()
        .filter(|c| c.revoked)
        .count();
    api.revoked.set(revoked as i64);
    api.ledger_dropped
        .set(api.shared.journal.health().dropped() as i64);
    api.ledger_bytes.set(api.shared.ledger.bytes() as i64);
    if let Ok(views) = api.shared.views.read() {
        let live = views.values().map(|v| v.live_peers).max().unwrap_or(0);
        api.nodes_live.set(live as i64);
        api.instances
            .set(views.values().map(|v| v.instances.len()).sum::<usize>() as i64);
        api.in_flight.set(
            views
                .values()
                .map(|v| v.placements_in_flight)
                .sum::<usize>() as i64,
        );
    }
    let tasks = &api.shared.tasks;
    let disconnected = tasks.workers_disconnected.load(Ordering::Relaxed);
    let dropped = tasks.bus_dropped.load(Ordering::Relaxed);
    api.task_metrics
        .set(tasks.counts().await, disconnected, dropped);
    api.mesh_metrics.set(&api.shared.mesh.status());
    let mut body = String::new();
    if encode(&mut body, &api.metrics).is_err() {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed");
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn queue_stats<F: Fabric>(State(api): State<Arc<Api<F>>>) -> Response {
    let views = match api.shared.views.read() {
        Ok(v) => v.clone(),
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "views unavailable"),
    };
    let nodes = views
        .iter()
        .map(|(id, v)| {
            let queue = v1::NodeQueue {
                placements_in_flight: v.placements_in_flight,
                instances: v.instances.len(),
                stewarded_services: v.stewards.len(),
            };
            (id.clone(), queue)
        })
        .collect();
    let tasks = api.shared.tasks.counts().await;
    let workers_disconnected = api
        .shared
        .tasks
        .workers_disconnected
        .load(Ordering::Relaxed);
    Json(v1::QueueStats {
        nodes,
        tasks,
        workers_disconnected,
    })
    .into_response()
}

/// The durable state this agent keeps: the ledger, the desired-state cache, the instance files.
async fn checkpoint_state<F: Fabric>(State(api): State<Arc<Api<F>>>) -> Response {
    let specs = api.registry().await.map_or(0, |r| r.specs.len());
    Json(v1::CheckpointState {
        state_dir: api.shared.state_dir.root().display().to_string(),
        ledger: v1::LedgerState {
            path: api.shared.ledger.path().display().to_string(),
            next_seq: api.shared.ledger.next_seq(),
            bytes: api.shared.ledger.bytes(),
            compacted: api.shared.ledger.snapshot(),
        },
        desired_state: v1::DesiredState { specs },
        tasks: api.shared.tasks.checkpoints().await,
    })
    .into_response()
}

#[derive(Deserialize)]
struct NodesQuery {
    explain: Option<String>,
}

async fn nodes<F: Fabric>(State(api): State<Arc<Api<F>>>, Query(q): Query<NodesQuery>) -> Response {
    let Some(reg) = api.registry().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no node is running");
    };
    let Some(service) = q.explain else {
        return Json(reg.nodes).into_response();
    };
    let Ok(service) = ServiceName::new(&service) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{service:?} is not a valid service name"),
        );
    };
    if !reg.specs.iter().any(|s| s.name == service) {
        return error(
            StatusCode::NOT_FOUND,
            format!("no service or job named {service}"),
        );
    }
    let local: Vec<NodeId> = api
        .shared
        .controls
        .read()
        .map(|c| c.keys().cloned().collect())
        .unwrap_or_default();
    let mut rows = Vec::new();
    for node in local {
        let s = service.clone();
        if let Some(Some(answer)) = api
            .ask(&node, |reply| Control::Explain { service: s, reply })
            .await
        {
            rows.push(match answer {
                Ok(e) => v1::ExplainRow::Offers {
                    node,
                    offer: e.offer,
                    passes_gate: e.passes_gate,
                },
                Err(reason) => v1::ExplainRow::Declines {
                    node,
                    reason: reason.to_string(),
                    declines: reason,
                },
            });
        }
    }
    Json(v1::Explain {
        service,
        nodes: rows,
    })
    .into_response()
}

async fn services<F: Fabric>(State(api): State<Arc<Api<F>>>) -> Response {
    let Some(reg) = api.registry().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no node is running");
    };
    let rows: Vec<v1::ServiceRow> = reg
        .specs
        .iter()
        .map(|s| {
            let mine: Vec<_> = reg.instances.iter().filter(|i| i.0 == s.name).collect();
            v1::ServiceRow {
                name: s.name.clone(),
                kind: if s.is_job() { "job" } else { "service" }.into(),
                pattern: s.pattern,
                wanted: s.base_count(),
                max: s.max_count(),
                running: mine.len(),
                serving: mine.iter().filter(|i| i.2.serving).count(),
                completed: reg.completed.get(&s.name).copied().unwrap_or(0),
                steward: reg.stewards.get(&s.name).cloned(),
            }
        })
        .collect();
    Json(rows).into_response()
}

async fn addresses<F: Fabric>(State(api): State<Arc<Api<F>>>) -> Response {
    let rows = api
        .shared
        .addresses
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Json(rows).into_response()
}

async fn instances<F: Fabric>(State(api): State<Arc<Api<F>>>) -> Response {
    let Some(reg) = api.registry().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no node is running");
    };
    let local: Vec<_> = api
        .shared
        .views
        .read()
        .map(|v| v.values().flat_map(|v| v.instances.clone()).collect())
        .unwrap_or_default();
    let rows: Vec<v1::Instance> = reg
        .instances
        .iter()
        .map(|(service, id, row)| {
            let here = local.iter().find(|l| &l.instance == id);
            v1::Instance {
                instance: id.clone(),
                service: service.clone(),
                node: row.node.clone(),
                role: row.role,
                // What this agent sees of its own instances is current; heartbeats lag.
                serving: here.map_or(row.serving, |l| l.serving),
                hot: here.map_or(row.hot, |l| l.hot),
                fencing: row.fencing,
                pid: here.and_then(|l| l.pid),
                port: here.and_then(|l| l.port),
            }
        })
        .collect();
    Json(rows).into_response()
}

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default)]
    from: u64,
    #[serde(default = "default_limit")]
    limit: usize,
    /// Wait up to this long for an event at `from` if there is none yet.
    #[serde(default)]
    wait_ms: u64,
}

fn default_limit() -> usize {
    1000
}

async fn events<F: Fabric>(
    State(api): State<Arc<Api<F>>>,
    Query(q): Query<EventsQuery>,
) -> Response {
    let ledger = api.shared.ledger.clone();
    let wait = Duration::from_millis(q.wait_ms.min(MAX_WAIT_MS));
    let permit = if wait.is_zero() {
        None
    } else {
        match api.long_polls.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                return error(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("{MAX_LONG_POLLS} requests already wait for events here; retry"),
                );
            }
        }
    };
    let limit = q.limit.clamp(1, qs_store::MAX_READ);
    // The permit goes with the blocking wait: a client that hangs up does not free it
    // while the thread still waits.
    let read = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        ledger.follow(q.from, limit, wait)
    })
    .await;
    match read {
        Ok(Ok(records)) => Json(records).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Deserialize)]
struct ApplyQuery {
    /// Names the document in errors.
    #[serde(default = "default_file")]
    file: String,
}

fn default_file() -> String {
    "spec.toml".into()
}

/// Applies a TOML spec document: every workload or none.
async fn apply<F: Fabric>(
    State(api): State<Arc<Api<F>>>,
    Query(q): Query<ApplyQuery>,
    body: String,
) -> Response {
    let doc = match qs_wire::parse_spec(&q.file, &body) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    if doc.workloads.is_empty() && doc.models.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{}: declares no service, job or model", q.file),
        );
    }
    match crate::specs::put_specs(&api.fabric, &doc).await {
        Ok(applied) => Json(v1::Applied { applied }).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn delete_spec<F: Fabric>(
    State(api): State<Arc<Api<F>>>,
    Path(name): Path<String>,
) -> Response {
    let Ok(service) = ServiceName::new(&name) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{name:?} is not a valid service name"),
        );
    };
    // A service or job, or a model: they share one namespace.
    for bucket in [SPECS_BUCKET, MODELS_BUCKET] {
        let kv = match api.fabric.kv(bucket).await {
            Ok(kv) => kv,
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        };
        match kv.get(service.as_str()).await {
            Ok(Some(_)) => {}
            Ok(None) => continue,
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
        return match kv.delete(service.as_str()).await {
            Ok(()) => Json(v1::Deleted { deleted: service }).into_response(),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        };
    }
    error(
        StatusCode::NOT_FOUND,
        format!("no service, job or model named {service}"),
    )
}
