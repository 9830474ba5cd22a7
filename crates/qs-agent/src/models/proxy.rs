//! The node's OpenAI-compatible entry point: `/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings` and `/v1/models`, for every model of the fleet. A request is routed by
//! its `model` to the node the core's routing picks (`route.rs`: warm there, else loading,
//! else where VRAM is free), here or on another node's entry point; here, one for a model
//! that is not warm waits (live stasis) while the scheduler decides, or is refused 429/503
//! with `Retry-After`. A session (`x-session-id`, or the body's `user`) keeps to one warm
//! node. The runtime's answer,
//! streamed or not, is passed through as it comes; its slot is given back when the answer
//! ends or the client goes away. One the scheduler cuts while it runs (its lease holder left
//! the fleet) ends there: a stream with an error event saying why, any other answer broken
//! off, and the runtime's connection closed.
//!
//! The priority class comes from the `x-qs-priority` header (`interactive`, `batch`,
//! `ingestion`); without it, embeddings are ingestion and the rest interactive. Work another
//! node placed here names that node in `x-qs-lease`: it runs under its lease, which a local
//! interactive request revokes.

use super::http::{Target, forward};
use super::keys::Grant;
use super::route::{Choice, FleetRoute, InFlight, MAX_HOPS, ROUTED_BY, SESSION_HEADER, choose};
use super::{Ask, Decision, Endpoint, Finish, ModelView, PRIORITY_HEADER, Registry};
use crate::counters::Counters;
use crate::model_metrics::{Meter, ModelClass};
use axum::Json;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use qs_core::gpu::Class;
use qs_wire::{NodeId, ServiceName};
use serde_json::{Value, json};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::oneshot;

/// The state `/v1/models` shows for a model declared here that no GPU holds.
pub const UNFIT: &str = "unfit";

/// The header of work another node placed here: the node whose lease it runs under.
pub const LEASE_HEADER: &str = "x-qs-lease";
/// Longest `model` name read from a request.
const MAX_MODEL_BYTES: usize = 256;

/// An OpenAI-style error body with `status`.
fn refusal(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    let message = message.into();
    (
        status,
        Json(json!({ "error": { "message": message, "type": kind } })),
    )
        .into_response()
}

/// The request's priority class, or why its header is not one.
fn class(endpoint: Endpoint, headers: &HeaderMap) -> Result<Class, String> {
    let Some(v) = headers.get(PRIORITY_HEADER) else {
        return Ok(match endpoint {
            Endpoint::Embeddings => Class::Ingestion,
            _ => Class::Interactive,
        });
    };
    let v = v.to_str().unwrap_or("");
    Class::named(v)
        .ok_or_else(|| format!("{PRIORITY_HEADER}: {v:?} is not interactive, batch or ingestion"))
}

/// Serves one request to `endpoint`: here, or with `fleet` on the node the core's routing
/// picks.
pub async fn serve(
    registry: &Registry,
    fleet: Option<&FleetRoute>,
    counters: &Counters,
    endpoint: Endpoint,
    grant: Option<&Grant>,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = Instant::now();
    let invalid = |m: String| refusal(StatusCode::BAD_REQUEST, "invalid_request_error", m);
    let class = match class(endpoint, headers) {
        // A key's requests get its class at most.
        Ok(c) => grant.map_or(c, |g| g.class_for(c)),
        Err(e) => return invalid(e),
    };
    // A request another node routed here came in without a token: its tag is checked
    // before anything else is read of it.
    let routed_here = headers.contains_key(ROUTED_BY);
    if routed_here {
        let verified = match fleet {
            Some(f) => f.verify(headers, endpoint, class, &body),
            None => Err("this agent takes no routed requests".to_owned()),
        };
        if let Err(e) = verified {
            counters.model_requests_refused.inc();
            return refusal(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                format!("a routed request refused: {e}"),
            );
        }
        if headers.contains_key(LEASE_HEADER) {
            return invalid(format!("a routed request runs under no {LEASE_HEADER}"));
        }
    }
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return invalid(format!("the body is not JSON: {e}")),
    };
    let Some(model) = parsed.get("model").and_then(Value::as_str) else {
        return invalid("the body names no `model`".to_owned());
    };
    if model.len() > MAX_MODEL_BYTES {
        return invalid(format!("`model` is longer than {MAX_MODEL_BYTES} bytes"));
    }
    let Ok(name) = ServiceName::new(model) else {
        return not_found(registry, fleet, grant, model);
    };
    if let Some(g) = grant
        && !g.may_use(&name)
    {
        return refusal(
            StatusCode::FORBIDDEN,
            "permission_error",
            format!("the key {} may not use model {name}", g.name),
        );
    }
    let lease = match headers.get(LEASE_HEADER).map(|v| v.to_str().unwrap_or("")) {
        None => None,
        Some(holder) => match NodeId::new(holder) {
            Ok(n) => Some(n),
            Err(e) => return invalid(format!("{LEASE_HEADER}: {holder:?}: {e}")),
        },
    };
    let session = headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .or_else(|| parsed.get("user").and_then(Value::as_str))
        .map(str::to_owned);
    let mut tried: Vec<NodeId> = Vec::new();
    let (handle, view) = loop {
        match choose(
            registry,
            fleet,
            &name,
            session.as_deref(),
            routed_here,
            &tried,
        ) {
            Choice::Local(handle, view) => break (handle, view),
            Choice::Remote(node) => {
                let Some(f) = fleet else {
                    return not_found(registry, fleet, grant, model);
                };
                let in_flight = f.in_flight(&node);
                match f.forward(&node, endpoint, class, body.clone()).await {
                    Ok(resp) => {
                        counters
                            .models
                            .outcome(name.as_str(), class.name(), "routed");
                        return relay(resp, in_flight);
                    }
                    // It never reached the node: another may take it.
                    Err(e) if !e.reached => {
                        tracing::info!("model {name}: {}; trying another node", e.reason);
                        tried.push(node);
                        if tried.len() >= MAX_HOPS {
                            counters.model_requests_refused.inc();
                            return busy(
                                1000,
                                format!("no node holding {name} answered: {}", e.reason),
                            );
                        }
                    }
                    // It may have run there: sending it again could run it twice.
                    Err(e) => {
                        counters.model_requests_refused.inc();
                        return refusal(StatusCode::BAD_GATEWAY, "runtime_error", e.reason);
                    }
                }
            }
            Choice::Unfit { need_bytes } => {
                counters.model_requests_refused.inc();
                return refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "model_unfit",
                    format!(
                        "model {name} needs {} MiB of VRAM for its smallest tier; no GPU of the fleet has that much",
                        need_bytes >> 20
                    ),
                );
            }
            // Every node that holds it was tried and could not be reached.
            Choice::Unknown if !tried.is_empty() => {
                counters.model_requests_refused.inc();
                return busy(1000, format!("no node holding {name} could be reached"));
            }
            Choice::Unknown => return not_found(registry, fleet, grant, model),
        }
    };
    // From here on the model is one a host has: its figures may be counted.
    let labels = ModelClass {
        model: name.to_string(),
        class: class.name().to_owned(),
    };
    let figures = &counters.models;
    let meter = || Meter::new(figures.clone(), labels.clone(), arrived);
    if view.state == UNFIT {
        figures.outcome(&labels.model, &labels.class, "unavailable");
        // Declared, but no GPU here holds even its smallest tier: the reason says its need.
        counters.model_requests_refused.inc();
        let why = view.alert.clone().unwrap_or_default();
        return refusal(StatusCode::SERVICE_UNAVAILABLE, "model_unfit", why);
    }
    if let Some(url) = &view.url {
        // A shared runtime: someone else runs it; pass the request on.
        return match Target::from_url(url) {
            Ok(target) => pass(&target, endpoint, body, None, None, meter()).await,
            Err(e) => refusal(StatusCode::BAD_GATEWAY, "runtime_error", e),
        };
    }
    // Prompt tokens, roughly: what a cut-off request would have to process again.
    let context_tokens = (body.len() / 4).min(u32::MAX as usize) as u32;
    let (reply, answer) = oneshot::channel();
    let ask = Ask::Request {
        model: name.clone(),
        class,
        context_tokens,
        lease,
        reply,
    };
    if handle.tx.try_send(ask).is_err() {
        counters.model_requests_refused.inc();
        return busy(1000, "the model host is busy".to_owned());
    }
    let answered = answer.await;
    figures
        .queue_wait_s
        .get_or_create(&labels)
        .observe(arrived.elapsed().as_secs_f64());
    match answered {
        Ok(Decision::Route { port, finish, cut }) => {
            pass(
                &Target::loopback(port),
                endpoint,
                body,
                finish,
                cut,
                meter(),
            )
            .await
        }
        Ok(Decision::Refuse {
            too_many,
            retry_after_ms,
            reason,
        }) => {
            counters.model_requests_refused.inc();
            let outcome = if too_many { "too_many" } else { "unavailable" };
            figures.outcome(&labels.model, &labels.class, outcome);
            if too_many {
                let mut r = refusal(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", reason);
                retry_after(&mut r, retry_after_ms);
                r
            } else {
                busy(retry_after_ms, reason)
            }
        }
        Err(_) => busy(1000, "the model host stopped".to_owned()),
    }
}

/// 404 for a model no node holds, with the models there are (that the key may use).
fn not_found(
    registry: &Registry,
    fleet: Option<&FleetRoute>,
    grant: Option<&Grant>,
    model: &str,
) -> Response {
    let peers = fleet.map(FleetRoute::models).unwrap_or_default();
    let mut names: Vec<String> = registry
        .views()
        .into_iter()
        .map(|v| v.name)
        .chain(peers.into_iter().map(|(_, m)| m.model))
        .filter(|n| grant.is_none_or(|g| g.may_use(n)))
        .map(|n| n.to_string())
        .collect();
    names.sort();
    names.dedup();
    let mut shown = model.to_owned();
    shown.truncate(MAX_MODEL_BYTES);
    refusal(
        StatusCode::NOT_FOUND,
        "model_not_found",
        format!(
            "no model {shown:?} in the fleet; the models are: [{}]",
            names.join(", ")
        ),
    )
}

/// 503 with `Retry-After`.
fn busy(retry_after_ms: u64, reason: String) -> Response {
    let mut r = refusal(StatusCode::SERVICE_UNAVAILABLE, "unavailable", reason);
    retry_after(&mut r, retry_after_ms.max(1000));
    r
}

fn retry_after(r: &mut Response, ms: u64) {
    let secs = ms.div_ceil(1000).max(1);
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
}

/// Passes the request to `target`; the answer's body streams back, and `finish` is said
/// when it ends or is dropped. A `cut` ends it early: a stream with an error event, any
/// other answer broken off; either way the runtime's connection closes, which cancels the
/// generation there.
async fn pass(
    target: &Target,
    endpoint: Endpoint,
    body: Bytes,
    finish: Option<Finish>,
    cut: Option<oneshot::Receiver<String>>,
    mut meter: Meter,
) -> Response {
    // A cut can come before the runtime's answer begins (an answer that is not streamed
    // begins only when it is done): the request is dropped there, closing the runtime's
    // connection, and the client told why.
    let forwarded = forward(target, Method::POST, endpoint.path(), body);
    tokio::pin!(forwarded);
    let mut cut = cut;
    let answered = loop {
        let Some(rx) = cut.as_mut() else {
            break forwarded.await;
        };
        tokio::select! {
            r = &mut forwarded => break r,
            said = rx => {
                cut = None;
                if let Ok(reason) = said {
                    meter.end("cut");
                    return refusal(StatusCode::SERVICE_UNAVAILABLE, "cut", format!("cut: {reason}"));
                }
            }
        }
    };
    let resp = match answered {
        Ok(r) => r,
        Err(e) => {
            meter.end("runtime_error");
            return refusal(StatusCode::BAD_GATEWAY, "runtime_error", e);
        }
    };
    let (parts, incoming) = resp.into_parts();
    let streamed = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut out = Response::builder().status(parts.status);
    for name in [header::CONTENT_TYPE, header::CACHE_CONTROL] {
        if let Some(v) = parts.headers.get(&name) {
            out = out.header(name, v);
        }
    }
    out.body(Body::new(Guarded {
        inner: Some(incoming),
        _finish: finish,
        cut,
        streamed,
        meter,
    }))
    .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

/// A runtime's answer body, holding its request's slot until it ends, and ending it early
/// when the scheduler cuts it.
struct Guarded {
    /// `None` once cut: the runtime's connection is closed.
    inner: Option<hyper::body::Incoming>,
    _finish: Option<Finish>,
    cut: Option<oneshot::Receiver<String>>,
    /// Server-sent events: a cut ends with an error event rather than a broken answer.
    streamed: bool,
    /// Its figures, recorded as it goes and when it ends.
    meter: Meter,
}

/// Why an answer was broken off.
#[derive(Debug, thiserror::Error)]
enum PassError {
    #[error(transparent)]
    Runtime(#[from] hyper::Error),
    #[error("cut: {0}")]
    Cut(String),
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = PassError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, PassError>>> {
        let this = self.get_mut();
        if let Some(rx) = this.cut.as_mut()
            && let Poll::Ready(said) = Pin::new(rx).poll(cx)
        {
            this.cut = None;
            // A dropped sender is no cut: the host let the request be.
            if let Ok(reason) = said {
                this.inner = None;
                this.meter.end("cut");
                if this.streamed {
                    let event = json!({ "error": { "message": reason, "type": "cut" } });
                    let frame = Bytes::from(format!("data: {event}\n\n"));
                    return Poll::Ready(Some(Ok(http_body::Frame::data(frame))));
                }
                return Poll::Ready(Some(Err(PassError::Cut(reason))));
            }
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *inner)
            .poll_frame(cx)
            .map_err(PassError::from);
        let m = &mut this.meter;
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let events = match frame.data_ref() {
                    Some(d) if this.streamed => events_in(d),
                    _ => 0,
                };
                m.frame(events);
                // An answer of known length is not polled past its last frame.
                if inner.is_end_stream() {
                    m.end("ok");
                }
            }
            Poll::Ready(Some(Err(_))) => m.end("runtime_error"),
            Poll::Ready(None) => m.end("ok"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|i| i.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner
            .as_ref()
            .map_or_else(http_body::SizeHint::default, |i| i.size_hint())
    }
}

/// The server-sent events that begin in `data` (a frame may hold several, or part of one).
fn events_in(data: &Bytes) -> u64 {
    let count = |pattern: &[u8]| {
        data.windows(pattern.len())
            .filter(|w| *w == pattern)
            .count()
    };
    // The closing `[DONE]` carries no token.
    (count(b"data: ") - count(b"data: [DONE]")) as u64
}

/// Another node's answer, passed through as it comes (its status, type and `Retry-After`),
/// counted in flight there until it ends.
fn relay(resp: hyper::Response<hyper::body::Incoming>, in_flight: InFlight) -> Response {
    let (parts, incoming) = resp.into_parts();
    let mut out = Response::builder().status(parts.status);
    for name in [
        header::CONTENT_TYPE,
        header::CACHE_CONTROL,
        header::RETRY_AFTER,
    ] {
        if let Some(v) = parts.headers.get(&name) {
            out = out.header(name, v);
        }
    }
    out.body(Body::new(Relayed {
        inner: incoming,
        _in_flight: in_flight,
    }))
    .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

/// Another node's answer body, holding its count in flight until it ends.
struct Relayed {
    inner: hyper::body::Incoming,
    _in_flight: InFlight,
}

impl http_body::Body for Relayed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `/v1/models`: every model of this process's hosts and, with `fleet`, of the other nodes
/// (those a key may use), OpenAI's shape with ours beside.
pub fn list(registry: &Registry, fleet: Option<&FleetRoute>, grant: Option<&Grant>) -> Response {
    let peers = fleet.map(FleetRoute::models).unwrap_or_default();
    let data: Vec<Value> = registry
        .views()
        .into_iter()
        .chain(peers.into_iter().map(|(node, m)| ModelView {
            name: m.model,
            node,
            gpu: None,
            tier: String::new(),
            vram_bytes: m.vram_bytes,
            state: m.state.name(),
            url: None,
            resident: false,
            in_flight: m.in_flight as usize,
            waiting: m.waiting as usize,
            alert: None,
        }))
        .filter(|v| grant.is_none_or(|g| g.may_use(&v.name)))
        .map(|v| {
            json!({
                "id": v.name,
                "object": "model",
                "owned_by": "quasicrystal",
                "qs": v,
            })
        })
        .collect();
    Json(json!({ "object": "list", "data": data })).into_response()
}
