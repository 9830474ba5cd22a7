//! A UDP address: each client's datagrams go to one serving instance through a socket of
//! the client's own (a flow), and the instance's answers come back from the address.
//!
//! A flow moves to another instance when its instance left the table, refused (ICMP port
//! unreachable), or left a datagram unanswered for [`UNANSWERED`] while the client sent more;
//! that instance is then set aside by the pool. Flows idle for [`FLOW_IDLE`] are closed, and
//! at most [`MAX_FLOWS`] are open: past that the oldest is closed for the new client.

use super::Pool;
use qs_core::addresses::Backend;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// A datagram unanswered this long, with the client sending again, marks its instance as
/// failing.
pub const UNANSWERED: Duration = Duration::from_millis(500);
/// A flow with no datagram either way for this long is closed.
pub const FLOW_IDLE: Duration = Duration::from_secs(30);
/// Most flows one address keeps.
pub const MAX_FLOWS: usize = 4096;
/// Largest datagram forwarded.
const MAX_DATAGRAM: usize = 65_535;

/// What a flow's reader and the forwarder both see.
#[derive(Default)]
struct FlowState {
    /// The first datagram sent since the last answer, when there is one.
    awaiting_since: Mutex<Option<Instant>>,
    last_active: Mutex<Option<Instant>>,
    /// The instance refused: the next datagram takes another.
    dead: AtomicBool,
}

fn at(m: &Mutex<Option<Instant>>) -> std::sync::MutexGuard<'_, Option<Instant>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Flow {
    upstream: SocketAddr,
    socket: Arc<UdpSocket>,
    state: Arc<FlowState>,
    reader: tokio::task::JoinHandle<()>,
    backend: Backend,
    pool: Arc<Pool>,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.reader.abort();
        self.pool.closed(&self.backend, &self.upstream);
    }
}

/// Forwards `socket`'s datagrams to `backend`'s instances until the task is aborted.
pub(super) async fn forward(socket: UdpSocket, backend: Backend, pool: Arc<Pool>) {
    let socket = Arc::new(socket);
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut sweep = tokio::time::interval(FLOW_IDLE / 4);
    loop {
        tokio::select! {
            got = socket.recv_from(&mut buf) => {
                let Ok((n, client)) = got else { continue };
                let flow = match flow_for(&mut flows, client, &socket, &backend, &pool).await {
                    Some(f) => f,
                    None => continue,
                };
                *at(&flow.state.last_active) = Some(Instant::now());
                at(&flow.state.awaiting_since).get_or_insert_with(Instant::now);
                if flow.socket.send(&buf[..n]).await.is_err() {
                    flow.state.dead.store(true, Ordering::Relaxed);
                }
            }
            _ = sweep.tick() => {
                flows.retain(|_, f| {
                    at(&f.state.last_active).is_some_and(|t| t.elapsed() < FLOW_IDLE)
                });
            }
        }
    }
}

/// The flow of `client`: its own if its instance still serves it, else a new one to the
/// instance the pool picks (none when no instance serves).
async fn flow_for<'a>(
    flows: &'a mut HashMap<SocketAddr, Flow>,
    client: SocketAddr,
    listen: &Arc<UdpSocket>,
    backend: &Backend,
    pool: &Arc<Pool>,
) -> Option<&'a Flow> {
    if let Some(f) = flows.get(&client) {
        let unanswered = at(&f.state.awaiting_since).is_some_and(|t| t.elapsed() >= UNANSWERED);
        let refused = f.state.dead.load(Ordering::Relaxed);
        if unanswered || refused {
            pool.failed(backend, &f.upstream);
        }
        if unanswered || refused || !pool.holds(backend, &f.upstream) {
            flows.remove(&client);
        }
    }
    if !flows.contains_key(&client) {
        if flows.len() >= MAX_FLOWS {
            let oldest = flows
                .iter()
                .min_by_key(|(_, f)| *at(&f.state.last_active))
                .map(|(c, _)| *c);
            if let Some(c) = oldest {
                flows.remove(&c);
            }
        }
        let mut tried = Vec::new();
        let flow = loop {
            let upstream = pool.pick(backend, &tried)?;
            match open(upstream, client, listen.clone(), backend, pool).await {
                Ok(f) => break f,
                Err(e) => {
                    tracing::debug!("udp {upstream}: {e}");
                    pool.closed(backend, &upstream);
                    pool.failed(backend, &upstream);
                    tried.push(upstream);
                    if tried.len() >= super::MAX_TRIES {
                        return None;
                    }
                }
            }
        };
        flows.insert(client, flow);
    }
    flows.get(&client)
}

/// A socket connected to `upstream` for `client`, and the reader that sends its answers back.
async fn open(
    upstream: SocketAddr,
    client: SocketAddr,
    listen: Arc<UdpSocket>,
    backend: &Backend,
    pool: &Arc<Pool>,
) -> std::io::Result<Flow> {
    let any: SocketAddr = if upstream.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = Arc::new(UdpSocket::bind(any).await?);
    socket.connect(upstream).await?;
    let state = Arc::new(FlowState::default());
    let reader = tokio::spawn(answers(
        socket.clone(),
        client,
        listen,
        state.clone(),
        backend.clone(),
        upstream,
        pool.clone(),
    ));
    Ok(Flow {
        upstream,
        socket,
        state,
        reader,
        backend: backend.clone(),
        pool: pool.clone(),
    })
}

/// Sends `upstream`'s answers back to `client` from the address, until it refuses.
async fn answers(
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    listen: Arc<UdpSocket>,
    state: Arc<FlowState>,
    backend: Backend,
    upstream: SocketAddr,
    pool: Arc<Pool>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match socket.recv(&mut buf).await {
            Ok(n) => {
                *at(&state.awaiting_since) = None;
                *at(&state.last_active) = Some(Instant::now());
                pool.answered(&backend, &upstream);
                let _ = listen.send_to(&buf[..n], client).await;
            }
            Err(e) => {
                tracing::debug!("udp {upstream} for {client}: {e}");
                state.dead.store(true, Ordering::Relaxed);
                return;
            }
        }
    }
}
