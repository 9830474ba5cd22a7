//! The fleet's stable service addresses on this machine: every port the core's
//! [`qs_core::addresses::plan`] names is listened on here and forwarded to the service's
//! serving instances wherever they run (`udp.rs`, `tcp.rs`, `http.rs`), and the set of each
//! service's serving instances is published where its spec says (`publish.rs`).
//!
//! One task per process refreshes the table every [`REFRESH`] from the registry: which
//! instances serve (the core's [`endpoints`]), which ports to open or close. The forwarders
//! read it through the [`Pool`], whose balancers (the core's [`Balancer`]) pick an instance per
//! connection, flow or request and set aside one that failed.

mod http;
mod publish;
mod tcp;
mod udp;

use crate::clock::now;
use crate::membership::Membership;
use crate::v1::AddressView;
use qs_core::addresses::{
    AddressesConfig, Backend, Balancer, Endpoint, Listener, Port, Transport, endpoints, plan,
};
use qs_wire::{ServiceName, WorkloadSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// How often the table is read again from the registry.
pub const REFRESH: Duration = Duration::from_millis(100);
/// How long a port that could not be bound waits before the next try.
const BIND_RETRY: Duration = Duration::from_secs(5);
/// Warnings remembered so each is logged once (then forgotten all at once).
const MAX_TOLD: usize = 1024;
/// Instances one forwarder tries for one connection or request before giving up.
pub(crate) const MAX_TRIES: usize = 3;

/// The endpoints of every service with an address or a publish, and a balancer per backend.
#[derive(Default)]
pub struct Pool {
    inner: Mutex<PoolState>,
}

#[derive(Default)]
struct PoolState {
    table: BTreeMap<ServiceName, Vec<Endpoint>>,
    balancers: BTreeMap<Backend, Balancer>,
}

fn lock(pool: &Pool) -> std::sync::MutexGuard<'_, PoolState> {
    pool.inner.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    /// The table now: every balancer follows its service's endpoints of its reach.
    fn update(&self, table: BTreeMap<ServiceName, Vec<Endpoint>>) {
        let mut s = lock(self);
        let PoolState {
            table: t,
            balancers,
        } = &mut *s;
        *t = table;
        balancers.retain(|b, _| t.contains_key(&b.service));
        for (b, bal) in balancers.iter_mut() {
            bal.set(addrs_of(t, b));
        }
    }

    /// The instance for the next connection, flow or request to `backend`, not one of
    /// `excluding`.
    pub(crate) fn pick(&self, backend: &Backend, excluding: &[SocketAddr]) -> Option<SocketAddr> {
        let mut s = lock(self);
        let PoolState { table, balancers } = &mut *s;
        let bal = balancers.entry(backend.clone()).or_insert_with(|| {
            let mut b = Balancer::new();
            b.set(addrs_of(table, backend));
            b
        });
        let picked = bal.pick(now(), excluding)?;
        bal.opened(&picked);
        Some(picked)
    }

    /// Whether `addr` still stands behind `backend`.
    pub(crate) fn holds(&self, backend: &Backend, addr: &SocketAddr) -> bool {
        lock(self)
            .balancers
            .get(backend)
            .is_some_and(|b| b.contains(addr))
    }

    /// What became of a pick: it ended (`closed`), failed or answered.
    pub(crate) fn closed(&self, backend: &Backend, addr: &SocketAddr) {
        if let Some(b) = lock(self).balancers.get_mut(backend) {
            b.closed(addr);
        }
    }
    pub(crate) fn failed(&self, backend: &Backend, addr: &SocketAddr) {
        if let Some(b) = lock(self).balancers.get_mut(backend) {
            b.failed(addr, now());
        }
    }
    pub(crate) fn answered(&self, backend: &Backend, addr: &SocketAddr) {
        if let Some(b) = lock(self).balancers.get_mut(backend) {
            b.answered(addr);
        }
    }
}

fn addrs_of(table: &BTreeMap<ServiceName, Vec<Endpoint>>, backend: &Backend) -> Vec<SocketAddr> {
    table
        .get(&backend.service)
        .into_iter()
        .flatten()
        .filter(|e| backend.reach.admits(e.role))
        .map(|e| e.addr)
        .collect()
}

/// What the addresses' task needs.
pub struct AddressSetup {
    pub membership: Membership,
    pub config: AddressesConfig,
    /// Where `/v1/addresses` reads what is listened on.
    pub view: Arc<RwLock<Vec<AddressView>>>,
    /// The users a root agent may run a spec's publish command as (the config's).
    pub child_users: Vec<String>,
}

/// A port listened on, and the task forwarding it.
struct Open {
    listener: Listener,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What one read of the registry gives.
struct Snapshot {
    specs: Vec<WorkloadSpec>,
    table: BTreeMap<ServiceName, Vec<Endpoint>>,
    /// Services whose steward runs in this process.
    stewarded_here: BTreeSet<ServiceName>,
}

fn snapshot(membership: &Membership) -> Snapshot {
    let (specs, table, stewards) = {
        let reg = membership.read();
        let specs: Vec<WorkloadSpec> = reg
            .specs()
            .filter(|s| s.address.is_some() || s.publish.is_some())
            .cloned()
            .collect();
        let table = specs
            .iter()
            .map(|s| (s.name.clone(), endpoints(&reg, &s.name)))
            .collect();
        let stewards: Vec<(ServiceName, qs_wire::NodeId)> = specs
            .iter()
            .filter_map(|s| Some((s.name.clone(), reg.steward(&s.name)?.clone())))
            .collect();
        (specs, table, stewards)
    };
    let stewarded_here = stewards
        .into_iter()
        .filter(|(_, n)| membership.is_local(n))
        .map(|(s, _)| s)
        .collect();
    Snapshot {
        specs,
        table,
        stewarded_here,
    }
}

/// Listens on every address's port and publishes every change of the serving instances
/// until `stop` turns true.
pub async fn serve(setup: AddressSetup, mut stop: watch::Receiver<bool>) {
    let pool = Arc::new(Pool::default());
    let mut open: BTreeMap<Port, Open> = BTreeMap::new();
    let mut unbound: BTreeMap<Port, (tokio::time::Instant, String)> = BTreeMap::new();
    let mut told: BTreeSet<String> = BTreeSet::new();
    let mut last_table: Option<BTreeMap<ServiceName, Vec<Endpoint>>> = None;
    let mut publisher = publish::Publisher::new(setup.config.clone(), setup.child_users.clone());
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {}
        }
        let snap = snapshot(&setup.membership);
        let planned = plan(&snap.specs);
        if told.len() > MAX_TOLD {
            // Said long ago; saying it again is no harm.
            told.clear();
        }
        for c in &planned.conflicts {
            let line = format!(
                "service {}: no address on port {} ({:?}): {} (held by {})",
                c.service, c.port, c.transport, c.reason, c.with
            );
            if told.insert(line.clone()) {
                tracing::warn!("{line}");
            }
        }
        // The balancers follow the table when it changes, not on every read.
        if last_table.as_ref() != Some(&snap.table) {
            pool.update(snap.table.clone());
            last_table = Some(snap.table.clone());
        }
        // A port whose listener changed is closed, and its socket gone, before it is bound
        // again.
        let stale: Vec<Port> = open
            .iter()
            .filter(|(port, o)| planned.listeners.get(port) != Some(&o.listener))
            .map(|(port, _)| *port)
            .collect();
        for port in stale {
            if let Some(mut o) = open.remove(&port) {
                o.task.abort();
                let _ = (&mut o.task).await;
            }
        }
        unbound.retain(|port, _| planned.listeners.contains_key(port));
        for (port, listener) in &planned.listeners {
            if open.contains_key(port)
                || unbound
                    .get(port)
                    .is_some_and(|(at, _)| *at > tokio::time::Instant::now())
            {
                continue;
            }
            let bind_at = SocketAddr::new(setup.config.listen, port.port);
            match listen(bind_at, port.transport, listener.clone(), pool.clone()).await {
                Ok(task) => {
                    tracing::info!(
                        "listening on {bind_at} ({:?}) for {:?}",
                        port.transport,
                        listener.backends()
                    );
                    unbound.remove(port);
                    open.insert(
                        *port,
                        Open {
                            listener: listener.clone(),
                            task,
                        },
                    );
                }
                Err(e) => {
                    let why = format!("cannot listen on {bind_at}: {e}");
                    if told.insert(why.clone()) {
                        tracing::warn!("{why}");
                    }
                    unbound.insert(*port, (tokio::time::Instant::now() + BIND_RETRY, why));
                }
            }
        }
        publisher.publish(&snap);
        let view = views(&planned, &open, &unbound, &snap.table);
        *setup.view.write().unwrap_or_else(|p| p.into_inner()) = view;
    }
}

/// Binds one port and starts its forwarder.
async fn listen(
    at: SocketAddr,
    transport: Transport,
    listener: Listener,
    pool: Arc<Pool>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    Ok(match (transport, listener) {
        (Transport::Udp, Listener::Udp(backend)) => {
            let socket = tokio::net::UdpSocket::bind(at).await?;
            tokio::spawn(udp::forward(socket, backend, pool))
        }
        (Transport::Tcp, Listener::Tcp(backend)) => {
            let socket = tokio::net::TcpListener::bind(at).await?;
            tokio::spawn(tcp::forward(socket, backend, pool))
        }
        (Transport::Tcp, Listener::Http(routes)) => {
            let socket = tokio::net::TcpListener::bind(at).await?;
            tokio::spawn(http::forward(socket, routes, pool))
        }
        (t, l) => {
            return Err(std::io::Error::other(format!(
                "{l:?} cannot listen on {t:?}"
            )));
        }
    })
}

/// What `/v1/addresses` shows: each port, what it forwards to, and the instances behind it.
fn views(
    planned: &qs_core::addresses::Plan,
    open: &BTreeMap<Port, Open>,
    unbound: &BTreeMap<Port, (tokio::time::Instant, String)>,
    table: &BTreeMap<ServiceName, Vec<Endpoint>>,
) -> Vec<AddressView> {
    let mut out = Vec::new();
    for (port, listener) in &planned.listeners {
        let protocol = match (port.transport, listener) {
            (_, Listener::Http(_)) => "http",
            (Transport::Udp, _) => "udp",
            (Transport::Tcp, _) => "tcp",
        };
        let routes: Vec<(&Backend, Option<&String>, Option<&String>)> = match listener {
            Listener::Http(rs) => rs
                .iter()
                .map(|r| (&r.backend, r.host.as_ref(), r.path.as_ref()))
                .collect(),
            Listener::Tcp(b) | Listener::Udp(b) => vec![(b, None, None)],
        };
        for (backend, host, path) in routes {
            out.push(AddressView {
                port: port.port,
                protocol: protocol.into(),
                service: backend.service.to_string(),
                primary_only: backend.reach == qs_core::addresses::Reach::Primary,
                host: host.cloned(),
                path: path.cloned(),
                listening: open.contains_key(port),
                error: unbound.get(port).map(|(_, why)| why.clone()),
                endpoints: addrs_of(table, backend)
                    .iter()
                    .map(SocketAddr::to_string)
                    .collect(),
            });
        }
    }
    for c in &planned.conflicts {
        out.push(AddressView {
            port: c.port,
            protocol: format!("{:?}", c.transport).to_lowercase(),
            service: c.service.to_string(),
            primary_only: false,
            host: None,
            path: None,
            listening: false,
            error: Some(format!("{} (held by {})", c.reason, c.with)),
            endpoints: vec![],
        });
    }
    out
}
