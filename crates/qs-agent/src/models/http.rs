//! The HTTP client side of the model host: warm checks of a starting runtime, and requests
//! passed on to a runtime with its answer streamed back. HTTP/1.1 with connections kept
//! alive and reused (a bounded number idle per runtime); an answer dropped before its end
//! closes its connection, which is how a client's disconnect cancels the generation.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::sync::OnceLock;
use std::time::Duration;

/// Longest a connection to a runtime may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept per runtime, and how long.
const MAX_IDLE_PER_RUNTIME: usize = 64;
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

type RuntimeClient = Client<HttpConnector, Full<Bytes>>;

/// The process's one client of runtimes.
fn client() -> &'static RuntimeClient {
    static CLIENT: OnceLock<RuntimeClient> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(MAX_IDLE_PER_RUNTIME)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .build(http)
    })
}

/// Where a runtime listens: `host:port`, from a shared runtime's `http://` url, or loopback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub authority: String,
}

impl Target {
    pub fn loopback(port: u16) -> Target {
        Target {
            authority: format!("127.0.0.1:{port}"),
        }
    }

    /// A shared runtime's url: `http://host[:port][/...]` (its path is dropped).
    pub fn from_url(url: &str) -> Result<Target, String> {
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(format!(
                "{url}: only http:// runtimes can be reached from here"
            ));
        };
        let host = rest.split('/').next().unwrap_or("");
        if host.is_empty() {
            return Err(format!("{url}: no host"));
        }
        let authority = if host.contains(':') {
            host.to_owned()
        } else {
            format!("{host}:80")
        };
        Ok(Target { authority })
    }
}

async fn send(target: &Target, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, String> {
    client()
        .request(req)
        .await
        .map_err(|e| format!("{}: {e}", target.authority))
}

/// `GET path`: the status, the body read and dropped.
pub(crate) async fn get_status(target: &Target, path: &str) -> Result<u16, String> {
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("http://{}{path}", target.authority))
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = send(target, req).await?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Ok(status)
}

/// Passes a request on: same method, path and JSON body; the answer comes back unread.
pub(crate) async fn forward(
    target: &Target,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<Response<Incoming>, String> {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", target.authority))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::ACCEPT, "application/json, text/event-stream")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    send(target, req).await
}
