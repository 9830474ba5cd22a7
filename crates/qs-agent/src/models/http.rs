//! The HTTP client side of the model host: warm checks of a starting runtime, and requests
//! passed on to a runtime with its answer streamed back, through the process's one client
//! (`upstream.rs`: connections kept alive and reused); an answer dropped before its end
//! closes its connection, which is how a client's disconnect cancels the generation.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};

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
    crate::upstream::send(req)
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
