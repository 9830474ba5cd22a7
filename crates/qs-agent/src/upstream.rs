//! The process's one HTTP client of what it forwards to (model runtimes, the instances behind
//! an HTTP address): HTTP/1.1, connections kept alive and reused, a bounded number idle per
//! upstream; an answer dropped before its end closes its connection.

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::sync::OnceLock;
use std::time::Duration;

/// Longest a connection to an upstream may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept per upstream, and how long.
const MAX_IDLE_PER_UPSTREAM: usize = 64;
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

type UpstreamClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> &'static UpstreamClient {
    static CLIENT: OnceLock<UpstreamClient> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(MAX_IDLE_PER_UPSTREAM)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .build(http)
    })
}

/// Sends `req` (its URI absolute: `http://host:port/path`); the answer's body comes unread.
pub(crate) async fn send(
    req: Request<Full<Bytes>>,
) -> Result<hyper::Response<Incoming>, hyper_util::client::legacy::Error> {
    client().request(req).await
}
