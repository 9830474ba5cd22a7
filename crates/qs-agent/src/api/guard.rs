//! Who may use the API: every request passes here before its handler.
//!
//! In order: the `Host` header must name this agent (loopback names, the address it listens
//! on, and the names the operator configured), so a page that rebinds its DNS name to
//! 127.0.0.1 reads nothing; every endpoint but `/health` (and `/metrics` from loopback) needs
//! `Authorization: Bearer TOKEN`; a request that changes something must declare the content
//! type its endpoint takes (`application/toml` for specs, `application/json` otherwise), which
//! no browser sends cross-origin without a preflight this API never answers. The
//! OpenAI-compatible entry point also takes the API keys of the config's keys file
//! ([`crate::models::keys`]): the request then carries the key's [`Grant`] to its handler.
//! A request another node routed to the entry point passes on to its handler, which checks
//! its tag before anything else.

use super::error;
use super::token::ApiToken;
use crate::models::keys::{ApiKeys, Grant};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Names every agent answers to, whatever it was configured with.
const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Most names an operator may add to the `Host` allow-list.
pub const MAX_API_HOSTS: usize = 64;

/// What the guard checks against.
#[derive(Debug)]
pub struct Access {
    token: ApiToken,
    hosts: Vec<String>,
    /// The API keys of the entry point, when the config names a keys file.
    keys: Option<Arc<ApiKeys>>,
}

impl Access {
    /// The token, and the names (beyond loopback's) the `Host` header may carry: `extra`
    /// plus the address the API listens on when that is one address (not 0.0.0.0 or ::).
    pub fn new(token: ApiToken, listen: SocketAddr, extra: &[String]) -> Access {
        let mut hosts: Vec<String> = LOOPBACK_NAMES.iter().map(|h| h.to_string()).collect();
        if !listen.ip().is_unspecified() {
            hosts.push(listen.ip().to_string());
        }
        hosts.extend(extra.iter().take(MAX_API_HOSTS).map(|h| normalize(h)));
        hosts.sort();
        hosts.dedup();
        Access {
            token,
            hosts,
            keys: None,
        }
    }

    /// With the API keys of the entry point.
    pub fn with_keys(mut self, keys: ApiKeys) -> Access {
        self.keys = Some(Arc::new(keys));
        self
    }

    pub fn token(&self) -> &ApiToken {
        &self.token
    }

    /// Whether a `Host` header's value names this agent.
    fn allows_host(&self, value: &str) -> bool {
        let host = normalize(strip_port(value));
        self.hosts.contains(&host)
    }
}

/// A host name as compared: lowercase, without a trailing dot or IPv6 brackets.
fn normalize(host: &str) -> String {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// `name:port`, `[v6]:port`, `name` or `[v6]`, without the port.
fn strip_port(value: &str) -> &str {
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match value.rsplit_once(':') {
        // A bare IPv6 address has more than one colon and no port.
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => value,
    }
}

/// The content type a changing request to `path` must declare (the CLI sends the same).
pub fn declared_content_type(path: &str) -> &'static str {
    if path == "/v1/specs" {
        "application/toml"
    } else {
        "application/json"
    }
}

fn essence(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(v.split(';').next()?.trim().to_ascii_lowercase())
}

/// Whether the request came over a loopback connection.
pub(super) fn peer_is_loopback(req: &Request) -> bool {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|ConnectInfo(a)| match a.ip() {
            IpAddr::V4(ip) => ip.is_loopback(),
            IpAddr::V6(ip) => {
                ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            }
        })
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The middleware: refuses, or hands the request on.
/// The routes of the OpenAI-compatible entry point, which API keys may use.
fn is_entry_point(path: &str) -> bool {
    matches!(
        path,
        "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings" | "/v1/models"
    )
}

pub async fn guard(State(access): State<Arc<Access>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    // A request another node of the fleet routed to the entry point: it carries no token
    // (that node has none of ours) but a tag the handler checks over its body
    // ([`crate::models::route::FleetRoute::verify`]) before anything else; no page can forge one.
    let routed = is_entry_point(&path)
        && path != "/v1/models"
        && req.headers().contains_key(crate::models::route::ROUTED_BY);
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !routed && !access.allows_host(host) {
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "Host {host:?} is not a name this agent answers to; add it with --api-host \
                 (allowed: {})",
                access.hosts.join(", ")
            ),
        );
    }
    let path = path.as_str();
    let open = routed || path == "/health" || (path == "/metrics" && peer_is_loopback(&req));
    let presented = bearer(req.headers());
    let operator = presented.is_some_and(|t| access.token.matches(t));
    let grant: Option<Grant> = match (&access.keys, presented) {
        (Some(keys), Some(p)) if !operator && is_entry_point(path) => keys.find(p).cloned(),
        _ => None,
    };
    if !open && !operator && grant.is_none() {
        let message = if access.keys.is_some() && is_entry_point(path) {
            "unknown API key: the entry point takes a key of the keys file, or the agent's token"
        } else {
            "this API needs `Authorization: Bearer TOKEN`: the token is in the agent's state \
             directory (api.token), which qs reads by itself on the same machine, or give \
             --token / QS_TOKEN"
        };
        let mut r = error(StatusCode::UNAUTHORIZED, message);
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let want = declared_content_type(path);
        let got = essence(req.headers());
        if got.as_deref() != Some(want) {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "{} {path} takes Content-Type: {want}, not {}",
                    req.method(),
                    got.as_deref().unwrap_or("none")
                ),
            );
        }
    }
    if let Some(g) = grant {
        req.extensions_mut().insert(g);
    }
    next.run(req).await.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_compared_without_port_case_or_brackets() {
        let token = ApiToken::parse(&"ab".repeat(32)).unwrap();
        let listen: SocketAddr = "10.0.0.5:7070".parse().unwrap();
        let a = Access::new(token, listen, &["QS.Example.org.".into()]);
        for ok in [
            "127.0.0.1:7070",
            "localhost",
            "LOCALHOST:1",
            "[::1]:7070",
            "::1",
            "10.0.0.5:7070",
            "qs.example.org",
            "qs.example.org.:7070",
        ] {
            assert!(a.allows_host(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example",
            "127.0.0.1.evil.example:7070",
            "10.0.0.6",
        ] {
            assert!(!a.allows_host(bad), "{bad}");
        }
        let any: SocketAddr = "0.0.0.0:7070".parse().unwrap();
        let b = Access::new(ApiToken::parse(&"ab".repeat(32)).unwrap(), any, &[]);
        assert!(!b.allows_host("0.0.0.0:7070"));
    }
}
