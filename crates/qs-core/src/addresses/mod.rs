//! Where the fleet's stable service addresses send their traffic.
//!
//! Every agent listens on each service's address and forwards to its serving instances,
//! wherever they run. This module decides what that means, for every agent alike:
//! - [`endpoints`]: which instances of a service can take traffic (serving, on a live node that
//!   says where it is reached, with a port), the primary among them marked;
//! - [`plan`]: which ports every agent listens on and what each forwards to (a TCP or UDP
//!   port to one service, its reads or only its primary; an HTTP port to several services told
//!   apart by `Host` and path), and which addresses conflict, the first service by name
//!   keeping its port;
//! - [`route_http`]: which service one HTTP request goes to;
//! - [`Balancer`] (`balancer.rs`): which endpoint takes one connection, datagram flow or request.

mod balancer;

use crate::registry::Registry;
use core::net::SocketAddr;
use qs_wire::{InstanceId, NodeId, Protocol, Role, ServiceName, WorkloadSpec};
use std::collections::BTreeMap;

pub use balancer::{Balancer, SET_ASIDE_MAX_MS, SET_ASIDE_MS};

pub use crate::config::AddressesConfig;

/// One instance that can take a service's traffic.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub node: NodeId,
    pub instance: InstanceId,
    pub addr: SocketAddr,
    pub role: Role,
}

/// The instances of `service` that can take traffic now, by node then instance: serving
/// (health passed), on a live node that is not draining and says its address, with a port.
pub fn endpoints(registry: &Registry, service: &ServiceName) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = registry
        .instances_of(service)
        .filter(|(_, r)| r.serving && r.port != 0)
        .filter_map(|(id, r)| {
            let status = registry.status(&r.node)?;
            if !registry.is_live(&r.node) || status.draining {
                return None;
            }
            Some(Endpoint {
                node: r.node.clone(),
                instance: id.clone(),
                addr: SocketAddr::new(status.address?, r.port),
                role: r.role,
            })
        })
        .collect();
    out.sort();
    out
}

/// Which of a service's endpoints an address reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reach {
    /// Any serving instance (reads, for a stateful-read service).
    Any,
    /// Only the primary (writes).
    Primary,
}

impl Reach {
    /// Whether an endpoint of this role takes this address's traffic.
    pub fn admits(self, role: Role) -> bool {
        self == Reach::Any || role == Role::Primary
    }
}

/// A service behind a port, and which of its endpoints the port reaches.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub service: ServiceName,
    pub reach: Reach,
}

/// One service on a shared HTTP port, told apart by `Host` and path prefix.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HttpRoute {
    pub backend: Backend,
    pub host: Option<String>,
    pub path: Option<String>,
}

/// The transport a port listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    Tcp,
    Udp,
}

/// A port every agent listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port {
    pub port: u16,
    pub transport: Transport,
}

/// What one port forwards to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Listener {
    /// Each connection to one endpoint.
    Tcp(Backend),
    /// Each client's datagrams to one endpoint.
    Udp(Backend),
    /// Each request to one endpoint of the service [`route_http`] picks.
    Http(Vec<HttpRoute>),
}

impl Listener {
    /// The services it forwards to.
    pub fn backends(&self) -> Vec<&Backend> {
        match self {
            Listener::Tcp(b) | Listener::Udp(b) => vec![b],
            Listener::Http(routes) => routes.iter().map(|r| &r.backend).collect(),
        }
    }
}

/// An address no agent listens on, because another service holds its port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Conflict {
    pub service: ServiceName,
    pub port: u16,
    pub transport: Transport,
    /// The service that keeps the port.
    pub with: ServiceName,
    pub reason: String,
}

/// Every port the fleet's addresses need, and the addresses that could not have theirs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub listeners: BTreeMap<Port, Listener>,
    pub conflicts: Vec<Conflict>,
}

/// The ports of every service's address (`specs` in any order; decided by name, so every
/// agent decides alike). A port goes to the first service (by name) that asks for it; a later
/// one that cannot share it (two TCP or UDP services; TCP and HTTP on one port; two HTTP
/// services that no `Host` or path tells apart) is a [`Conflict`].
pub fn plan<'a>(specs: impl IntoIterator<Item = &'a WorkloadSpec>) -> Plan {
    let mut by_name: Vec<&WorkloadSpec> =
        specs.into_iter().filter(|s| s.address.is_some()).collect();
    by_name.sort_by(|a, b| a.name.cmp(&b.name));
    let mut plan = Plan::default();
    for spec in by_name {
        let Some(a) = &spec.address else { continue };
        let mut ports = vec![(a.port, Reach::Any)];
        ports.extend(a.primary_port.map(|p| (p, Reach::Primary)));
        for (port, reach) in ports {
            let backend = Backend {
                service: spec.name.clone(),
                reach,
            };
            let (key, listener) = match a.protocol {
                Protocol::Tcp => (Transport::Tcp, Listener::Tcp(backend)),
                Protocol::Udp => (Transport::Udp, Listener::Udp(backend)),
                Protocol::Http => (
                    Transport::Tcp,
                    Listener::Http(vec![HttpRoute {
                        backend,
                        host: a.host.clone(),
                        path: a.path.clone(),
                    }]),
                ),
            };
            let at = Port {
                port,
                transport: key,
            };
            match plan.listeners.get_mut(&at) {
                None => {
                    plan.listeners.insert(at, listener);
                }
                Some(held) => {
                    if let Err((with, reason)) = share(held, listener) {
                        plan.conflicts.push(Conflict {
                            service: spec.name.clone(),
                            port,
                            transport: key,
                            with,
                            reason,
                        });
                    }
                }
            }
        }
    }
    plan
}

/// Adds `new` to the listener that holds its port, when they can share it.
fn share(held: &mut Listener, new: Listener) -> Result<(), (ServiceName, String)> {
    let first = held.backends()[0].service.clone();
    match (held, new) {
        (Listener::Http(routes), Listener::Http(mut more)) => {
            let r = more.remove(0);
            if let Some(same) = routes.iter().find(|o| o.host == r.host && o.path == r.path) {
                return Err((
                    same.backend.service.clone(),
                    "an HTTP port shared by services needs a different host or path for each"
                        .into(),
                ));
            }
            routes.push(r);
            Ok(())
        }
        (Listener::Http(_), _) | (_, Listener::Http(_)) => Err((
            first,
            "the port is HTTP for one service and plain TCP for another".into(),
        )),
        _ => Err((first, "the port is taken by another service".into())),
    }
}

/// The route one HTTP request takes: among those whose `Host` (if they name one) is the
/// request's (without its port) and whose path prefix (if any) starts the request's path at
/// a segment boundary, one naming a host before one that does not, then the longest path.
pub fn route_http<'a>(
    routes: &'a [HttpRoute],
    host: Option<&str>,
    path: &str,
) -> Option<&'a HttpRoute> {
    let host = host.map(|h| {
        let bare = h.rsplit_once(':').map_or(h, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                h
            }
        });
        bare.to_ascii_lowercase()
    });
    routes
        .iter()
        .filter(|r| match &r.host {
            Some(want) => host.as_deref() == Some(want.as_str()),
            None => true,
        })
        .filter(|r| match &r.path {
            Some(prefix) => under(path, prefix),
            None => true,
        })
        .max_by_key(|r| (r.host.is_some(), r.path.as_ref().map_or(0, String::len)))
}

/// Whether `path` is `prefix` or lies below it (`/api` holds `/api/x`, not `/apix`).
fn under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
        None => false,
    }
}

#[cfg(test)]
mod tests;
