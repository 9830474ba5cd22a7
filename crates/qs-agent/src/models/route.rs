//! The fleet-wide side of the entry point: a request for a model this node does not have warm
//! goes where the core's [`qs_core::routing::route`] says, which may be another node's entry
//! point, reached over HTTP at the address and port its heartbeat says.
//!
//! A request routed to another node carries who routed it, to whom and when
//! (`x-qs-routed-by`, `x-qs-routed-to`, `x-qs-routed-at`) and a tag over those, its endpoint,
//! its class and its body under the two nodes' session key (`x-qs-route-tag`, the keyring's
//! [`qs_core::Keyring::tag`]). The receiving node serves it itself, never routing it on, once
//! [`FleetRoute::verify`] has checked the tag, its age ([`qs_core::Config::max_clock_skew_ms`])
//! and that it was not seen before. A node that cannot be reached is passed over for the next.

use super::{Endpoint, Handle, ModelView, PRIORITY_HEADER, Registry};
use crate::identity::Auth;
use crate::membership::Membership;
use bytes::Bytes;
use http_body_util::Full;
use qs_core::gpu::Class;
use qs_core::routing::{self, Holder, Route};
use qs_wire::{ModelState, ModelSummary, NodeId, ServiceName};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

pub const ROUTED_BY: &str = "x-qs-routed-by";
pub const ROUTED_TO: &str = "x-qs-routed-to";
pub const ROUTED_AT: &str = "x-qs-routed-at";
pub const ROUTE_TAG: &str = "x-qs-route-tag";
/// The header that names a conversation, for session affinity (else the body's `user`).
pub const SESSION_HEADER: &str = "x-session-id";
/// Nodes tried for one request before it is refused.
pub const MAX_HOPS: usize = 3;
/// Routed requests remembered against a replay; past that, the oldest are forgotten early.
const MAX_SEEN: usize = 65_536;

/// What the entry point knows of the fleet beyond this process.
pub struct FleetRoute {
    pub membership: Membership,
    pub auth: Arc<Auth>,
    /// The node this process routes as.
    pub origin: NodeId,
    /// The nodes of this process (their hosts are reached without a hop).
    locals: std::collections::BTreeSet<NodeId>,
    pub max_skew_ms: u64,
    /// Tags of routed requests taken, with when they were made.
    seen: Mutex<BTreeMap<(u64, [u8; 32]), ()>>,
    /// Requests this node sent to each other node and whose answers have not ended: what
    /// their heartbeats cannot say yet.
    forwarded: Arc<Mutex<BTreeMap<NodeId, u32>>>,
}

/// One request sent on to another node, counted until its answer ends or is dropped.
pub(crate) struct InFlight {
    node: NodeId,
    forwarded: Arc<Mutex<BTreeMap<NodeId, u32>>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut f = self.forwarded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = f.get_mut(&self.node) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                f.remove(&self.node);
            }
        }
    }
}

/// Why a request sent on to another node got no answer from it.
#[derive(Debug)]
pub(crate) struct ForwardError {
    pub reason: String,
    /// The request may have reached the node (the connection broke after it was sent): it
    /// must not be sent again elsewhere.
    pub reached: bool,
}

impl ForwardError {
    fn before(reason: String) -> ForwardError {
        ForwardError {
            reason,
            reached: false,
        }
    }
}

/// Where one request goes.
pub(crate) enum Choice {
    /// A host of this process.
    Local(Handle, ModelView),
    /// Another node's entry point.
    Remote(NodeId),
    /// No GPU of the fleet fits the model's smallest tier.
    Unfit { need_bytes: u64 },
    /// No node of the fleet holds the model.
    Unknown,
}

/// What one node's host shows of a model, as the router weighs it.
/// What a host of this process shows of a model, as the router weighs it: its node's free
/// VRAM and level as its heartbeat says, where the process has a fleet to weigh it against.
fn holder(view: &ModelView, membership: Option<&Membership>) -> Holder {
    let (free_vram_bytes, level) = membership.map_or((0, 0), |m| {
        let reg = m.read();
        let status = reg.status(&view.node);
        (
            status.map_or(0, routing::free_vram_bytes),
            status.map_or(u8::MAX, |s| s.level),
        )
    });
    Holder {
        node: view.node.clone(),
        local: true,
        state: ModelState::named(view.state).unwrap_or(ModelState::Failed),
        outstanding: (view.in_flight + view.waiting).min(u32::MAX as usize) as u32,
        free_vram_bytes,
        level,
        vram_bytes: view.vram_bytes,
    }
}

/// The models of one node's host, for its heartbeat.
pub fn summaries(views: &[ModelView]) -> Vec<ModelSummary> {
    views
        .iter()
        .take(qs_wire::bounds::MAX_MODELS_PER_NODE)
        .map(|v| ModelSummary {
            model: v.name.clone(),
            state: ModelState::named(v.state).unwrap_or(ModelState::Failed),
            in_flight: v.in_flight.min(u32::MAX as usize) as u32,
            waiting: v.waiting.min(u32::MAX as usize) as u32,
            vram_bytes: v.vram_bytes,
        })
        .collect()
}

/// Where a request for `model` goes: this process's hosts, and with `fleet` the other nodes,
/// `excluding` those already tried. One routed here is served here.
pub(crate) fn choose(
    registry: &Registry,
    fleet: Option<&FleetRoute>,
    model: &ServiceName,
    session: Option<&str>,
    routed_here: bool,
    excluding: &[NodeId],
) -> Choice {
    let local = registry.find_all(model);
    // Within one process (no fleet beyond it), one warm here, or a runtime someone else
    // manages that this node reaches, needs no weighing.
    if (fleet.is_none() || routed_here)
        && session.is_none()
        && let Some((h, v)) = local
            .iter()
            .find(|(_, v)| v.state == "warm" || v.url.is_some())
    {
        return Choice::Local(h.clone(), v.clone());
    }
    let membership = fleet.map(|f| &f.membership);
    let mut holders: Vec<Holder> = local.iter().map(|(_, v)| holder(v, membership)).collect();
    if let Some(f) = fleet
        && !routed_here
    {
        let mut peers = {
            let reg = f.membership.read();
            routing::peers(&reg, model, |n| f.locals.contains(n))
        };
        let forwarded = f.forwarded.lock().unwrap_or_else(|p| p.into_inner());
        for p in &mut peers {
            let ours = forwarded.get(&p.node).copied().unwrap_or(0);
            p.outstanding = p.outstanding.saturating_add(ours);
        }
        holders.extend(peers);
    }
    match routing::route(&holders, session, excluding) {
        Route::To(node) => match local.into_iter().find(|(_, v)| v.node == node) {
            Some((h, v)) => Choice::Local(h, v),
            None => Choice::Remote(node),
        },
        // Only this process's GPUs were weighed: its host names them in its refusal.
        Route::Unfit { .. } if fleet.is_none() || routed_here => match local.into_iter().next() {
            Some((h, v)) => Choice::Local(h, v),
            None => Choice::Unknown,
        },
        Route::Unfit { need_bytes } => Choice::Unfit { need_bytes },
        Route::Unknown => match local.into_iter().next() {
            // Held here, in no state a request can wait for (a failed resident one): the
            // host says why.
            Some((h, v)) => Choice::Local(h, v),
            None => Choice::Unknown,
        },
    }
}

impl FleetRoute {
    pub fn new(
        membership: Membership,
        auth: Arc<Auth>,
        locals: std::collections::BTreeSet<NodeId>,
        origin: NodeId,
        max_skew_ms: u64,
    ) -> FleetRoute {
        FleetRoute {
            membership,
            auth,
            origin,
            locals,
            max_skew_ms,
            seen: Mutex::new(BTreeMap::new()),
            forwarded: Arc::default(),
        }
    }

    /// Counts a request sent on to `node` until what this returns is dropped.
    pub(crate) fn in_flight(&self, node: &NodeId) -> InFlight {
        let mut f = self.forwarded.lock().unwrap_or_else(|p| p.into_inner());
        *f.entry(node.clone()).or_insert(0) += 1;
        InFlight {
            node: node.clone(),
            forwarded: self.forwarded.clone(),
        }
    }

    /// Every model some other live node holds (for a 404's list and `/v1/models`).
    pub fn models(&self) -> Vec<(NodeId, ModelSummary)> {
        let reg = self.membership.read();
        reg.live_nodes()
            .filter(|s| !self.locals.contains(&s.node))
            .flat_map(|s| s.models.iter().map(|m| (s.node.clone(), m.clone())))
            .collect()
    }

    /// Sends a request on to `to`'s entry point, tagged; its answer comes back unread.
    pub(crate) async fn forward(
        &self,
        to: &NodeId,
        endpoint: Endpoint,
        class: Class,
        body: Bytes,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ForwardError> {
        let addr = {
            let reg = self.membership.read();
            let s = reg
                .status(to)
                .ok_or_else(|| ForwardError::before(format!("{to} is not in the fleet")))?;
            let ip = s
                .address
                .ok_or_else(|| ForwardError::before(format!("{to} says no address")))?;
            std::net::SocketAddr::new(ip, s.entry_port)
        };
        let at_ms = crate::clock::now().as_micros() / 1000;
        let payload = payload(&self.origin, to, at_ms, endpoint, class, &body);
        let tag = self
            .auth
            .tag(&self.origin, to, &payload)
            .ok_or_else(|| ForwardError::before(format!("no session key with {to}")))?;
        let req = hyper::Request::builder()
            .method(hyper::Method::POST)
            .uri(format!("http://{addr}{}", endpoint.path()))
            .header(hyper::header::HOST, addr.ip().to_string())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::ACCEPT, "application/json, text/event-stream")
            .header(PRIORITY_HEADER, class.name())
            .header(ROUTED_BY, self.origin.as_str())
            .header(ROUTED_TO, to.as_str())
            .header(ROUTED_AT, at_ms.to_string())
            .header(ROUTE_TAG, hex(&tag))
            .body(Full::new(body))
            .map_err(|e| ForwardError::before(e.to_string()))?;
        crate::upstream::send(req).await.map_err(|e| ForwardError {
            reached: !e.is_connect(),
            reason: format!("{to} at {addr}: {e}"),
        })
    }

    /// Checks a request another node routed here: its tag, its age, that it is new.
    pub(crate) fn verify(
        &self,
        headers: &axum::http::HeaderMap,
        endpoint: Endpoint,
        class: Class,
        body: &[u8],
    ) -> Result<NodeId, String> {
        let get = |h: &str| {
            headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| format!("a routed request needs {h}"))
        };
        let from = NodeId::new(get(ROUTED_BY)?).map_err(|e| format!("{ROUTED_BY}: {e}"))?;
        let to = NodeId::new(get(ROUTED_TO)?).map_err(|e| format!("{ROUTED_TO}: {e}"))?;
        if !self.locals.contains(&to) {
            return Err(format!("{ROUTED_TO}: {to} is not a node of this agent"));
        }
        let at_ms: u64 = get(ROUTED_AT)?
            .parse()
            .map_err(|_| format!("{ROUTED_AT}: not a time in milliseconds"))?;
        let tag = unhex(get(ROUTE_TAG)?).ok_or_else(|| format!("{ROUTE_TAG}: not a tag"))?;
        let now_ms = crate::clock::now().as_micros() / 1000;
        if now_ms.abs_diff(at_ms) > self.max_skew_ms {
            return Err(format!(
                "routed {} ms from now; at most {} ms",
                now_ms.abs_diff(at_ms),
                self.max_skew_ms
            ));
        }
        let payload = payload(&from, &to, at_ms, endpoint, class, body);
        if !self.auth.check_tag(&from, &to, &payload, &tag) {
            return Err(format!("the tag is not {from}'s"));
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = now_ms.saturating_sub(self.max_skew_ms);
        while seen
            .first_key_value()
            .is_some_and(|((t, _), _)| *t < oldest)
            || seen.len() >= MAX_SEEN
        {
            seen.pop_first();
        }
        if seen.insert((at_ms, tag), ()).is_some() {
            return Err("a routed request seen before".into());
        }
        Ok(from)
    }
}

/// What a routed request's tag covers.
fn payload(
    from: &NodeId,
    to: &NodeId,
    at_ms: u64,
    endpoint: Endpoint,
    class: Class,
    body: &[u8],
) -> Vec<u8> {
    let mut p = format!(
        "{from}\n{to}\n{at_ms}\n{}\n{}\n",
        endpoint.path(),
        class.name()
    )
    .into_bytes();
    p.extend_from_slice(body);
    p
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
