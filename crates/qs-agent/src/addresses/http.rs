//! An HTTP address: each request goes to one serving instance of the service its `Host` and
//! path name (the core's [`route_http`]), its answer streamed back.
//!
//! The body is read first (at most [`MAX_BODY_BYTES`], else 413; at most [`MAX_REQUESTS`] at
//! once, else 503), so a request that never reached an instance (it refused the connection)
//! is sent to the next one, up to [`super::MAX_TRIES`]; one that may have reached it is not. No route is a 404;
//! no serving instance a 503 with `Retry-After`. Hop-by-hop headers stay on their hop;
//! `X-Forwarded-For` names the client.

use super::Pool;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use qs_core::addresses::{HttpRoute, route_http};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Largest request body forwarded.
pub const MAX_BODY_BYTES: usize = 8 << 20;
/// Most requests one HTTP address forwards at once (each may hold a body); past that, 503.
pub const MAX_REQUESTS: usize = 512;

/// Headers that belong to one hop (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

#[derive(Clone)]
struct Routes {
    routes: Arc<Vec<HttpRoute>>,
    pool: Arc<Pool>,
    slots: Arc<tokio::sync::Semaphore>,
}

/// Serves `listener`'s requests until the task is aborted.
pub(super) async fn forward(listener: TcpListener, routes: Vec<HttpRoute>, pool: Arc<Pool>) {
    let app = axum::Router::new().fallback(handle).with_state(Routes {
        routes: Arc::new(routes),
        pool,
        slots: Arc::new(tokio::sync::Semaphore::new(MAX_REQUESTS)),
    });
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("an HTTP address stopped: {e}");
    }
}

fn answer(status: StatusCode, text: String) -> Response<Body> {
    let mut r = Response::new(Body::from(text + "\n"));
    *r.status_mut() = status;
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

async fn handle(
    State(s): State<Routes>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response<Body> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let path = req.uri().path().to_owned();
    let Some(route) = route_http(&s.routes, host.as_deref(), &path) else {
        return answer(
            StatusCode::NOT_FOUND,
            format!("no service of this address serves host {host:?}, path {path}"),
        );
    };
    let backend = route.backend.clone();
    let Ok(_slot) = s.slots.clone().try_acquire_owned() else {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_REQUESTS} requests of this address are in flight"),
        );
    };
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a body of at most {MAX_BODY_BYTES} bytes"),
            );
        }
    };
    let headers = pass_on(&parts.headers, client);
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut tried = Vec::new();
    while tried.len() < super::MAX_TRIES {
        let Some(addr) = s.pool.pick(&backend, &tried) else {
            break;
        };
        // The pick stays open until the answer's body ends or is dropped, or the client
        // leaves while it is sent.
        let guard = Closing {
            pool: s.pool.clone(),
            backend: backend.clone(),
            addr,
        };
        let sent = send(&parts.method, addr, &target, &headers, body.clone()).await;
        match sent {
            Ok(resp) => {
                s.pool.answered(&backend, &addr);
                let (mut head, incoming) = resp.into_parts();
                strip(&mut head.headers);
                let body = Body::new(incoming.map_err(axum::Error::new));
                let body = Guarded {
                    body,
                    _guard: guard,
                };
                return Response::from_parts(head, Body::new(body));
            }
            Err(e) => {
                tracing::debug!("http {addr} for {}: {e}", backend.service);
                s.pool.failed(&backend, &addr);
                // One that may have reached the instance is not sent again.
                if !e.is_connect() {
                    return answer(
                        StatusCode::BAD_GATEWAY,
                        format!("{} at {addr}: {e}", backend.service),
                    );
                }
                tried.push(addr);
            }
        }
    }
    answer(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("no serving instance of {} answered", backend.service),
    )
}

async fn send(
    method: &axum::http::Method,
    addr: SocketAddr,
    target: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<hyper::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
    let mut req = hyper::Request::new(Full::new(body));
    *req.method_mut() = method.clone();
    // The address is an IP and a port, the target the path and query the server parsed:
    // the URI is valid; were it not, the request would go to a port nothing listens on.
    *req.uri_mut() = format!("http://{addr}{target}")
        .parse()
        .unwrap_or_else(|_| hyper::Uri::from_static("http://127.0.0.1:0/"));
    *req.headers_mut() = headers.clone();
    crate::upstream::send(req).await
}

/// The client's headers for the instance: its hop's own left out, the client named.
fn pass_on(headers: &HeaderMap, client: SocketAddr) -> HeaderMap {
    let mut out = headers.clone();
    strip(&mut out);
    let forwarded = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(before) => format!("{before}, {}", client.ip()),
        None => client.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        out.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    out
}

fn strip(headers: &mut HeaderMap) {
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
}

/// Gives a pick back to the pool when the answer it carried ends.
struct Closing {
    pool: Arc<Pool>,
    backend: qs_core::addresses::Backend,
    addr: SocketAddr,
}

impl Drop for Closing {
    fn drop(&mut self) {
        self.pool.closed(&self.backend, &self.addr);
    }
}

/// A body that holds its pick until it ends.
struct Guarded {
    body: Body,
    _guard: Closing,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
