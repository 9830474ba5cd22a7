//! TLS for the operator API (rustls, with ring): the certificate chain and key are read from
//! PEM files at start, and a listener hands axum connections whose handshake is done.
//!
//! Handshakes run on tasks of their own, so a client that opens a connection and says
//! nothing holds only itself up: each has [`HANDSHAKE_TIMEOUT`], at most
//! [`MAX_HANDSHAKES`] run at once and at most [`MAX_HANDSHAKES_PER_PEER`] from one address
//! (a connection past either is closed at once), so one host cannot shut the operator out.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

/// Longest a client may take to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most handshakes under way at once.
pub const MAX_HANDSHAKES: usize = 64;
/// Most handshakes under way at once from one IP address.
pub const MAX_HANDSHAKES_PER_PEER: usize = 8;
/// Most certificates a chain file may hold.
const MAX_CHAIN: usize = 16;

/// Where the API's certificate chain and private key are (PEM files).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why the API's TLS could not be set up; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("{cert} and {key}: {detail}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        detail: String,
    },
}

/// A loaded server configuration, ready for [`TlsListener::new`].
#[derive(Clone)]
pub struct ApiTls {
    config: Arc<ServerConfig>,
}

impl fmt::Debug for ApiTls {
    // The key is in there: only say that there is one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiTls(..)")
    }
}

impl ApiTls {
    /// Reads the chain and the key, and checks that they belong together.
    pub fn load(files: &TlsFiles) -> Result<ApiTls, TlsError> {
        let file_err = |path: &Path, detail: String| TlsError::File {
            path: path.to_path_buf(),
            detail,
        };
        let chain = read_chain(&files.cert)?;
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
            file_err(
                &files.key,
                format!("not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
            .map_err(|e| TlsError::Pair {
                cert: files.cert.clone(),
                key: files.key.clone(),
                detail: e.to_string(),
            })?;
        Ok(ApiTls {
            config: Arc::new(config),
        })
    }
}

/// The certificates of a PEM file, in order (the server's first); at least one.
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_err = |detail: String| TlsError::File {
        path: path.to_path_buf(),
        detail,
    };
    let mut chain = Vec::new();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| file_err(e.to_string()))? {
        chain.push(cert.map_err(|e| file_err(format!("not a PEM certificate: {e}")))?);
        if chain.len() > MAX_CHAIN {
            return Err(file_err(format!("more than {MAX_CHAIN} certificates")));
        }
    }
    if chain.is_empty() {
        return Err(file_err("holds no PEM certificate".into()));
    }
    Ok(chain)
}

/// A TCP listener whose connections come out with their TLS handshake done.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    /// Starts accepting on `tcp`; the acceptor ends when this listener is dropped.
    pub fn new(tcp: TcpListener, tls: &ApiTls) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        tokio::spawn(accept_loop(tcp, TlsAcceptor::from(tls.config.clone()), tx));
        Ok(TlsListener { local, ready })
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let per_peer: Arc<Mutex<BTreeMap<IpAddr, usize>>> = Arc::default();
    loop {
        let accepted = tokio::select! {
            a = tcp.accept() => a,
            () = tx.closed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, say: it passes, as in axum's own listener.
                tracing::warn!("API accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "API: {MAX_HANDSHAKES} TLS handshakes under way; connection closed");
            continue;
        };
        let Some(slot) = PeerSlot::take(&per_peer, peer.ip()) else {
            tracing::warn!(%peer, "API: {MAX_HANDSHAKES_PER_PEER} TLS handshakes under way from this address; connection closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            let _held = (permit, slot);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, "API TLS handshake: {e}"),
                Err(_) => tracing::debug!(%peer, "API TLS handshake timed out"),
            }
        });
    }
}

/// One handshake under way from an address; given back when dropped.
struct PeerSlot {
    counts: Arc<Mutex<BTreeMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PeerSlot {
    fn take(counts: &Arc<Mutex<BTreeMap<IpAddr, usize>>>, ip: IpAddr) -> Option<PeerSlot> {
        let mut map = counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_default();
        if *n >= MAX_HANDSHAKES_PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The acceptor ends only once this listener is gone, so this never comes; if it
            // did, no connection ever would again.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// The TCP stream under a connection of the API, plain or TLS.
pub trait HasTcp {
    fn tcp(&self) -> &TcpStream;
}

impl HasTcp for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl HasTcp for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A self-signed certificate for 127.0.0.1, written as PEM files into `dir`.
    fn self_signed(dir: &Path, name: &str) -> TlsFiles {
        let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let files = TlsFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, made.cert.pem()).unwrap();
        std::fs::write(&files.key, made.signing_key.serialize_pem()).unwrap();
        files
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let a = self_signed(dir.path(), "a");
        let b = self_signed(dir.path(), "b");
        let empty = dir.path().join("empty.crt");
        std::fs::write(&empty, "not a certificate\n").unwrap();

        let no_cert = TlsFiles {
            cert: empty.clone(),
            key: a.key.clone(),
        };
        let e = ApiTls::load(&no_cert).unwrap_err().to_string();
        assert!(
            e.contains("empty.crt") && e.contains("no PEM certificate"),
            "{e}"
        );

        let missing = TlsFiles {
            cert: dir.path().join("missing.crt"),
            key: a.key.clone(),
        };
        let e = ApiTls::load(&missing).unwrap_err().to_string();
        assert!(e.contains("missing.crt"), "{e}");

        let no_key = TlsFiles {
            cert: a.cert.clone(),
            key: empty,
        };
        let e = ApiTls::load(&no_key).unwrap_err().to_string();
        assert!(e.contains("empty.crt") && e.contains("private key"), "{e}");

        let mismatched = TlsFiles {
            cert: a.cert.clone(),
            key: b.key.clone(),
        };
        let e = ApiTls::load(&mismatched).unwrap_err().to_string();
        assert!(e.contains("a.crt") && e.contains("b.key"), "{e}");

        assert!(ApiTls::load(&a).is_ok());
    }

    /// Connections that never start their handshake hold up nobody else's: past
    /// [`MAX_HANDSHAKES_PER_PEER`] from one address the next is closed at once, and a client
    /// from another address still gets through.
    #[tokio::test]
    async fn silent_connections_from_one_address_hold_up_nobody_else() {
        let dir = tempfile::tempdir().unwrap();
        let files = self_signed(dir.path(), "api");
        let tls = ApiTls::load(&files).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut listener = TlsListener::new(tcp, &tls).unwrap();
        let addr = axum::serve::Listener::local_addr(&listener).unwrap();

        let mut silent = Vec::new();
        for _ in 0..MAX_HANDSHAKES_PER_PEER {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        // The acceptor takes connections in order: this one finds the eight holding slots.
        let mut one_more = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(2), one_more.read(&mut buf))
            .await
            .expect("closed at once, not left to time out");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");

        // Another loopback address: another peer.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let connected = socket.connect(addr);
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_chain(&files.cert).unwrap() {
            roots.add(cert).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let client = tokio::spawn(async move {
            let tcp = connected.await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let mut tls = connector.connect(name, tcp).await.unwrap();
            tls.write_all(b"ping").await.unwrap();
            let mut back = [0u8; 4];
            tls.read_exact(&mut back).await.unwrap();
            back
        });
        let served = tokio::time::timeout(Duration::from_secs(5), async {
            let (mut conn, _) = axum::serve::Listener::accept(&mut listener).await;
            let mut got = [0u8; 4];
            conn.read_exact(&mut got).await.unwrap();
            conn.write_all(b"pong").await.unwrap();
            conn.flush().await.unwrap();
            got
        })
        .await
        .expect("the handshake was not held up by the silent connections");
        assert_eq!(&served, b"ping");
        assert_eq!(&client.await.unwrap(), b"pong");
    }
}
