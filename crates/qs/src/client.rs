//! A small blocking HTTP/1.1 client for talking to an agent's API on loopback, with its
//! bearer token: the one given (`--token`, `QS_TOKEN`), or else the one the agent keeps in
//! its state directory, which `/health` names to a client on loopback and which this
//! process must have the right to read.

use anyhow::{Context, Result, bail};
use qs_agent::api::ApiToken;
use qs_agent::v1;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::Duration;

/// The token given on the command line, or found per API address (`None`: none found).
static TOKENS: Mutex<BTreeMap<String, Option<ApiToken>>> = Mutex::new(BTreeMap::new());
/// The key under which a given token stands for every address.
const GIVEN: &str = "";

/// Uses `token` for every request of this process.
pub fn use_token(token: &str) -> Result<()> {
    let t = ApiToken::parse(token)
        .context("--token / QS_TOKEN: not a qs API token (64 hex characters)")?;
    TOKENS
        .lock()
        .map_err(|_| anyhow::anyhow!("token cache poisoned"))?
        .insert(GIVEN.into(), Some(t));
    Ok(())
}

/// The token for `api`: the given one, or the one its agent keeps (read again when
/// `fresh`, after the agent refused the one read before).
fn token_for(api: &str, hostport: &str, fresh: bool) -> Option<ApiToken> {
    let mut tokens = TOKENS.lock().ok()?;
    if let Some(t) = tokens.get(GIVEN) {
        return t.clone();
    }
    if let Some(Some(t)) = tokens.get(api).filter(|_| !fresh) {
        return Some(t.clone());
    }
    let found = discover(hostport);
    tokens.insert(api.to_owned(), found.clone());
    found
}

/// Asks the agent where its token file is (it tells only a loopback client) and reads it,
/// if it is safe to: the file must be named `api.token`, readable by its owner only, and
/// owned by the user whose process listens on the API's port. So a process of another user
/// that took the port (while the agent was down, say) cannot make this client read the
/// agent's token and hand it over.
fn discover(hostport: &str) -> Option<ApiToken> {
    use std::os::unix::fs::MetadataExt;
    let (status, body) = send(hostport, "GET", "/health", "", None, Duration::from_secs(2)).ok()?;
    let health: v1::Health = (status == 200).then(|| serde_json::from_str(&body).ok())??;
    let path = std::path::PathBuf::from(health.token_file?);
    if path.file_name()? != "api.token" {
        return None;
    }
    let port: u16 = hostport.rsplit_once(':')?.1.parse().ok()?;
    let meta = std::fs::metadata(&path).ok()?;
    let private = meta.mode() & 0o077 == 0;
    if !private || listener_uid(port) != Some(meta.uid()) {
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    ApiToken::parse(&text)
}

/// The owner of the socket listening on TCP `port` of this machine (from /proc/net/tcp and
/// tcp6: `local_address` is `ADDR:PORT` in hex, `st` 0A is LISTEN, the uid is column 8).
fn listener_uid(port: u16) -> Option<u32> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            text.lines().skip(1).find_map(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                let local_port = cols.get(1)?.rsplit_once(':')?.1;
                let listening = cols.get(3) == Some(&"0A");
                (listening && u16::from_str_radix(local_port, 16).ok() == Some(port))
                    .then(|| cols.get(7)?.parse().ok())?
            })
        })
}

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
    let body = body.unwrap_or("");
    let token = token_for(api, hostport, false);
    let answer = send(hostport, method, path, body, token.as_ref(), timeout)?;
    if answer.0 != 401 {
        return Ok(answer);
    }
    // Another agent may answer on this address now, with a token of its own.
    let again = token_for(api, hostport, true);
    if again.is_none() || again == token {
        return Ok(answer);
    }
    send(hostport, method, path, body, again.as_ref(), timeout)
}

/// One request to `hostport`; the status code and the body.
fn send(
    hostport: &str,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&ApiToken>,
    timeout: Duration,
) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(hostport).with_context(|| {
        format!("cannot reach the agent at {hostport} (is `qs up` or `qs agent` running?)")
    })?;
    s.set_read_timeout(Some(timeout))?;
    let auth = token.map_or(String::new(), |t| {
        format!("Authorization: Bearer {}\r\n", t.as_str())
    });
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n{auth}Content-Type: {}\r\nContent-Length: {}\r\n\r\n{body}",
        qs_agent::api::declared_content_type(path.split('?').next().unwrap_or(path)),
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
