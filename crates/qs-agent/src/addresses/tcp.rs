//! A TCP address: each connection goes to one serving instance, bytes copied both ways until
//! either side closes.
//!
//! An instance that refuses or does not accept within [`CONNECT_TIMEOUT`] is set aside and the
//! next is tried, up to [`super::MAX_TRIES`]; with none left the client's connection is closed.
//! At most [`MAX_CONNECTIONS`] are forwarded at once; past that new ones wait in the kernel's
//! backlog. A connection whose instance leaves the address (it stops serving; a primary port's
//! primary is replaced) is closed, so the client's next one reaches the one that stands there.

use super::Pool;
use qs_core::addresses::Backend;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// Longest an instance may take to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Most connections one address forwards at once.
pub const MAX_CONNECTIONS: usize = 4096;
/// How often a connection asks whether its instance still stands behind the address.
const HOLD_CHECK: Duration = Duration::from_millis(500);
/// The pause after a failed accept.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// Forwards `listener`'s connections to `backend`'s instances until the task is aborted.
pub(super) async fn forward(listener: TcpListener, backend: Backend, pool: Arc<Pool>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (client, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, say: a pause, not a spin.
                tracing::warn!("accepting on a TCP address: {e}");
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let (backend, pool) = (backend.clone(), pool.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Some((upstream, addr)) = connect(&backend, &pool).await {
                splice(client, upstream, &backend, addr, &pool).await;
                pool.closed(&backend, &addr);
            }
        });
    }
}

/// A connection to one instance of `backend` (the pool counts it open until
/// [`Pool::closed`]), trying the next when one fails.
pub(crate) async fn connect(backend: &Backend, pool: &Pool) -> Option<(TcpStream, SocketAddr)> {
    let mut tried = Vec::new();
    while tried.len() < super::MAX_TRIES {
        let addr = pool.pick(backend, &tried)?;
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                pool.answered(backend, &addr);
                return Some((stream, addr));
            }
            Ok(Err(e)) => tracing::debug!("tcp {addr} for {}: {e}", backend.service),
            Err(_) => tracing::debug!("tcp {addr} for {}: no answer", backend.service),
        }
        pool.closed(backend, &addr);
        pool.failed(backend, &addr);
        tried.push(addr);
    }
    None
}

/// Copies bytes both ways until both sides are done, or the instance no longer stands
/// behind the address (it stopped serving, or a primary port's primary was replaced by a
/// promotion): then the connection is closed, and the client's next one reaches who does.
async fn splice(
    mut client: TcpStream,
    mut upstream: TcpStream,
    backend: &Backend,
    addr: SocketAddr,
    pool: &Pool,
) {
    let gone = async {
        loop {
            tokio::time::sleep(HOLD_CHECK).await;
            if !pool.holds(backend, &addr) {
                return;
            }
        }
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        () = gone => {}
    }
}
