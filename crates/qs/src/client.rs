//! A small blocking HTTP/1.1 client for talking to an agent's API, over plain TCP on
//! loopback or over TLS (`https://`, trusting `--tls-ca` or the system's roots), with its
//! bearer token: the one given (`--token`, `QS_TOKEN`), or else the one the agent keeps in
//! its state directory, which `/health` names to a client on loopback and which this
//! process must have the right to read. Another service (an OpenAI-compatible endpoint) is
//! asked with its own key, never with the qs token. Every request is bounded: connecting
//! within its timeout, then the whole exchange within its timeout again; an answer's size.

use anyhow::{Context, Result, bail};
use qs_agent::api::ApiToken;
use qs_agent::v1;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The token given on the command line, or found per API address (`None`: none found).
static TOKENS: Mutex<BTreeMap<String, Option<ApiToken>>> = Mutex::new(BTreeMap::new());
/// The key under which a given token stands for every address.
const GIVEN: &str = "";

/// The certificates `--tls-ca` names, once read; the system's roots where unset.
static TRUSTED: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();

/// Trusts the certificates of `ca` (PEM) for every https:// request of this process,
/// instead of the system's roots.
pub fn trust(ca: &Path) -> Result<()> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in qs_agent::api::tls::read_chain(ca).context("--tls-ca / QS_TLS_CA")? {
        roots
            .add(cert)
            .with_context(|| format!("--tls-ca {}: not a usable certificate", ca.display()))?;
    }
    TRUSTED
        .set(client_config(roots)?)
        .map_err(|_| anyhow::anyhow!("--tls-ca given twice"))
}

/// The roots this process trusts: those of [`trust`], or else the system's.
fn trusted() -> Result<Arc<rustls::ClientConfig>> {
    if let Some(config) = TRUSTED.get() {
        return Ok(config.clone());
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let config = client_config(roots)?;
    Ok(TRUSTED.get_or_init(|| config).clone())
}

fn client_config(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Where an agent's API is: `host:port`, and whether it speaks TLS.
struct Target<'a> {
    hostport: &'a str,
    tls: bool,
}

impl<'a> Target<'a> {
    fn parse(api: &'a str) -> Result<Target<'a>> {
        let (rest, tls) = if let Some(rest) = api.strip_prefix("http://") {
            (rest, false)
        } else if let Some(rest) = api.strip_prefix("https://") {
            (rest, true)
        } else {
            bail!("--api {api}: an http:// or https:// address, such as {DEFAULT_API}");
        };
        Ok(Target {
            hostport: rest.trim_end_matches('/'),
            tls,
        })
    }

    /// The host part, as a certificate names it (an IPv6 address without its brackets).
    fn host(&self) -> &'a str {
        let host = self
            .hostport
            .rsplit_once(':')
            .map_or(self.hostport, |(h, _)| h);
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

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
fn token_for(api: &str, target: &Target, fresh: bool) -> Option<ApiToken> {
    let mut tokens = TOKENS.lock().ok()?;
    if let Some(t) = tokens.get(GIVEN) {
        return t.clone();
    }
    if let Some(Some(t)) = tokens.get(api).filter(|_| !fresh) {
        return Some(t.clone());
    }
    let found = discover(target);
    tokens.insert(api.to_owned(), found.clone());
    found
}

/// Asks the agent where its token file is (it tells only a loopback client) and reads it,
/// if it is safe to: the file must be named `api.token`, readable by its owner only, and
/// owned by the user whose process listens on the API's port. So a process of another user
/// that took the port (while the agent was down, say) cannot make this client read the
/// agent's token and hand it over.
fn discover(target: &Target) -> Option<ApiToken> {
    use std::os::unix::fs::MetadataExt;
    let limits = Limits {
        timeout: Duration::from_secs(2),
        max_bytes: MAX_EXTERNAL_ANSWER_BYTES,
    };
    let (status, body) = send(target, "GET", "/health", "", None, limits).ok()?;
    let health: v1::Health = (status == 200).then(|| serde_json::from_str(&body).ok())??;
    let path = std::path::PathBuf::from(health.token_file?);
    if path.file_name()? != "api.token" {
        return None;
    }
    let port: u16 = target.hostport.rsplit_once(':')?.1.parse().ok()?;
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
    let target = Target::parse(api)?;
    let body = body.unwrap_or("");
    let token = token_for(api, &target, false);
    let limits = Limits {
        timeout,
        max_bytes: MAX_ANSWER_BYTES,
    };
    let bearer = token.as_ref().map(ApiToken::as_str);
    let answer = send(&target, method, path, body, bearer, limits)?;
    if answer.0 != 401 {
        return Ok(answer);
    }
    // Another agent may answer on this address now, with a token of its own.
    let again = token_for(api, &target, true);
    if again.is_none() || again == token {
        return Ok(answer);
    }
    let bearer = again.as_ref().map(ApiToken::as_str);
    send(&target, method, path, body, bearer, limits)
}

/// Most bytes an agent's answer may have (a whole fleet's events, say).
const MAX_ANSWER_BYTES: usize = 256 << 20;
/// Most bytes another service's answer may have (an OpenAI-compatible endpoint's).
const MAX_EXTERNAL_ANSWER_BYTES: usize = 1 << 20;

/// How long a request may take (to connect, then again to send and read the whole answer),
/// and how large its answer may be.
#[derive(Clone, Copy, Debug)]
struct Limits {
    timeout: Duration,
    max_bytes: usize,
}

/// POSTs `body` (JSON) to another service than an agent (an OpenAI-compatible endpoint, say)
/// at `url` + `path`: with `bearer` as its key if given, never with this process's qs token;
/// within `timeout` (see [`Limits`]), its answer at most a MiB. The answer as JSON, if 2xx.
pub fn post_external(
    url: &str,
    path: &str,
    body: &str,
    bearer: Option<&str>,
    timeout: Duration,
) -> Result<serde_json::Value> {
    let target = Target::parse(url)?;
    let limits = Limits {
        timeout,
        max_bytes: MAX_EXTERNAL_ANSWER_BYTES,
    };
    let (status, text) = send(&target, "POST", path, body, bearer, limits)?;
    if !(200..300).contains(&status) {
        let mut text = text;
        text.truncate(text.floor_char_boundary(200));
        bail!("POST {path}: status {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("POST {path}: the answer is not JSON"))
}

/// Connects to `hostport` within `timeout` (each of its addresses in turn).
fn connect(hostport: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    use std::net::ToSocketAddrs;
    let mut last = None;
    for addr in hostport.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other(format!("{hostport}: no address"))))
}

/// One request to `target`, with `bearer` as its `Authorization`; the status code and the
/// body.
fn send(
    target: &Target,
    method: &str,
    path: &str,
    body: &str,
    bearer: Option<&str>,
    limits: Limits,
) -> Result<(u16, String)> {
    let hostport = target.hostport;
    let timeout = limits.timeout;
    let tcp = connect(hostport, timeout).with_context(|| {
        format!("cannot reach {hostport} (for an agent: is `qs up` or `qs agent` running?)")
    })?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let deadline = std::time::Instant::now() + timeout;
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n{auth}Content-Type: {}\r\nContent-Length: {}\r\n\r\n{body}",
        qs_agent::api::declared_content_type(path.split('?').next().unwrap_or(path)),
        body.len()
    );
    let raw = if target.tls {
        let name = rustls::pki_types::ServerName::try_from(target.host().to_owned())
            .with_context(|| format!("--api: {:?} is not a host name or address", target.host()))?;
        let conn = rustls::ClientConnection::new(trusted()?, name)?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        exchange(&mut tls, &req, deadline, limits.max_bytes).with_context(|| {
            format!("{method} {path} over TLS to {hostport} (is its certificate trusted? --tls-ca)")
        })?
    } else {
        let mut tcp = tcp;
        exchange(&mut tcp, &req, deadline, limits.max_bytes)
            .with_context(|| format!("{method} {path} to {hostport}"))?
    };
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

/// Writes the request and reads the whole answer, until the peer closes the connection:
/// by `deadline`, at most `max_bytes` (a peer that trickles or floods is cut off).
fn exchange(
    s: &mut (impl Read + Write),
    req: &str,
    deadline: std::time::Instant,
    max_bytes: usize,
) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind};
    s.write_all(req.as_bytes())?;
    s.flush()?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if std::time::Instant::now() > deadline {
            return Err(Error::new(ErrorKind::TimedOut, "the answer took too long"));
        }
        match s.read(&mut buf) {
            Ok(0) => return Ok(raw),
            Ok(n) => {
                if raw.len() + n > max_bytes {
                    return Err(Error::other(format!("an answer over {max_bytes} bytes")));
                }
                raw.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A TLS peer that closes without its close_notify: taken only after a whole
            // answer (close_notify is what tells a cut-short one apart).
            Err(e) if e.kind() == ErrorKind::UnexpectedEof && complete(&raw) => return Ok(raw),
            Err(e) => return Err(e),
        }
    }
}

/// Whether `raw` holds a whole HTTP answer: as long as its `Content-Length`, or ending in
/// the last chunk.
fn complete(raw: &[u8]) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let body = &raw[end + 4..];
    let length = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    match length {
        Some(n) => body.len() >= n,
        None => head.contains("transfer-encoding: chunked") && body.ends_with(b"0\r\n\r\n"),
    }
}

/// GET or POST that must succeed with 2xx; the error names the API's message (its
/// [`v1::ErrorBody`]). The answer as JSON, for `--output json` to show as received.
pub fn call(api: &str, method: &str, path: &str, body: Option<&str>) -> Result<serde_json::Value> {
    call_within(api, method, path, body, Duration::from_secs(60))
}

/// [`call`], the exchange allowed `timeout` (a delegation waits for its agent).
pub fn call_within(
    api: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<serde_json::Value> {
    let (status, text) = request(api, method, path, body, timeout)?;
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
