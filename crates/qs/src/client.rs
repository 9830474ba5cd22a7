//! A small blocking HTTP/1.1 client for talking to an agent's API on loopback.

use anyhow::{Context, Result, bail};
use qs_agent::v1;
use serde::de::DeserializeOwned;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Where an agent's API listens unless `--api` or `QS_API` says otherwise.
pub const DEFAULT_API: &str = "http://127.0.0.1:7070";

/// One request; returns the status code and the body.
pub fn request(
    api: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String)> {
    let hostport = api
        .strip_prefix("http://")
        .with_context(|| format!("--api {api}: only http:// addresses are supported"))?
        .trim_end_matches('/');
    let mut s = TcpStream::connect(hostport).with_context(|| {
        format!("cannot reach the agent at {api} (is `qs up` or `qs agent` running?)")
    })?;
    s.set_read_timeout(Some(timeout))?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("reading the answer of {method} {path}"))?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("{method} {path}: not an HTTP answer");
    };
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("{method} {path}: no status code"))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

/// GET or POST that must succeed with 2xx; the error names the API's message (its
/// [`v1::ErrorBody`]). The answer as JSON, for `--output json` to show as received.
pub fn call(api: &str, method: &str, path: &str, body: Option<&str>) -> Result<serde_json::Value> {
    let (status, text) = request(api, method, path, body, Duration::from_secs(60))?;
    if !(200..300).contains(&status) {
        let msg = serde_json::from_str::<v1::ErrorBody>(&text).map_or(text, |e| e.error);
        bail!("{msg}");
    }
    serde_json::from_str(&text).with_context(|| format!("{method} {path}: the answer is not JSON"))
}

/// [`call`], its answer decoded as its `v1` type (the one definition of the API's JSON).
pub fn call_as<T: DeserializeOwned>(
    api: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<T> {
    decode(call(api, method, path, body)?)
}

/// A `GET` that may fail: its answer as its `v1` type, or `None` while the agent does not
/// answer (within 2 s), answers an error, or answers what this qs does not read.
pub fn try_get<T: DeserializeOwned>(api: &str, path: &str) -> Option<T> {
    let (status, text) = request(api, "GET", path, None, Duration::from_secs(2)).ok()?;
    (status == 200).then(|| serde_json::from_str(&text).ok())?
}

/// An answer of the API as its `v1` type.
pub fn decode<T: DeserializeOwned>(value: serde_json::Value) -> Result<T> {
    serde_json::from_value(value)
        .context("the agent answered JSON this qs does not read (another version?)")
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}
