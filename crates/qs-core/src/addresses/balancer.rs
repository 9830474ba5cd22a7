//! `Balancer`: which endpoint of a service takes the next connection, datagram flow or
//! request.
//!
//! The one with the fewest open, among those not set aside; ties go round in turn. An
//! endpoint that refused or did not answer is set aside for [`SET_ASIDE_MS`], doubling with
//! each failure in a row up to [`SET_ASIDE_MAX_MS`], until it answers again: a forwarder routes
//! around a dead instance at once, before the fleet has declared its node dead. When every
//! endpoint is set aside, the one whose pause ends first is tried rather than none.

use crate::time::{Time, ms};
use core::net::SocketAddr;
use std::collections::BTreeMap;

/// How long an endpoint that failed is passed over, at first.
pub const SET_ASIDE_MS: u64 = 1_000;
/// The longest it is passed over, however often it failed.
pub const SET_ASIDE_MAX_MS: u64 = 30_000;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Upstream {
    /// Connections, flows or requests it holds now.
    open: u32,
    /// Failures since it last answered.
    failures: u32,
    /// Passed over until then.
    aside_until: Option<Time>,
}

/// See the module docs.
#[derive(Clone, Debug, Default)]
pub struct Balancer {
    upstreams: BTreeMap<SocketAddr, Upstream>,
    /// Turns taken, for breaking ties in turn.
    turn: u64,
}

impl Balancer {
    pub fn new() -> Balancer {
        Balancer::default()
    }

    /// The endpoints now: new ones start fresh, gone ones are forgotten, the rest keep their
    /// counts and pauses.
    pub fn set(&mut self, addrs: impl IntoIterator<Item = SocketAddr>) {
        let mut next = BTreeMap::new();
        for a in addrs {
            let kept = self.upstreams.remove(&a).unwrap_or_default();
            next.insert(a, kept);
        }
        self.upstreams = next;
    }

    /// Whether `addr` is among the endpoints now.
    pub fn contains(&self, addr: &SocketAddr) -> bool {
        self.upstreams.contains_key(addr)
    }

    /// The endpoint for the next connection, flow or request, `excluding` those already
    /// tried for it; `None` when no other is left.
    pub fn pick(&mut self, now: Time, excluding: &[SocketAddr]) -> Option<SocketAddr> {
        let candidates: Vec<(&SocketAddr, &Upstream)> = self
            .upstreams
            .iter()
            .filter(|(a, _)| !excluding.contains(a))
            .collect();
        let ready = |u: &Upstream| u.aside_until.is_none_or(|t| t <= now);
        let pool: Vec<&(&SocketAddr, &Upstream)> = if candidates.iter().any(|(_, u)| ready(u)) {
            candidates.iter().filter(|(_, u)| ready(u)).collect()
        } else {
            let first_back = candidates.iter().filter_map(|(_, u)| u.aside_until).min()?;
            candidates
                .iter()
                .filter(|(_, u)| u.aside_until == Some(first_back))
                .collect()
        };
        let fewest = pool.iter().map(|(_, u)| u.open).min()?;
        let tied: Vec<SocketAddr> = pool
            .iter()
            .filter(|(_, u)| u.open == fewest)
            .map(|(a, _)| **a)
            .collect();
        let chosen = tied[(self.turn % tied.len() as u64) as usize];
        self.turn = self.turn.wrapping_add(1);
        Some(chosen)
    }

    /// `addr` took a connection, flow or request.
    pub fn opened(&mut self, addr: &SocketAddr) {
        if let Some(u) = self.upstreams.get_mut(addr) {
            u.open = u.open.saturating_add(1);
        }
    }

    /// A connection, flow or request `addr` held ended.
    pub fn closed(&mut self, addr: &SocketAddr) {
        if let Some(u) = self.upstreams.get_mut(addr) {
            u.open = u.open.saturating_sub(1);
        }
    }

    /// `addr` refused, reset or did not answer: it is passed over for a while.
    pub fn failed(&mut self, addr: &SocketAddr, now: Time) {
        if let Some(u) = self.upstreams.get_mut(addr) {
            let pause_ms = SET_ASIDE_MS
                .saturating_mul(1 << u.failures.min(5))
                .min(SET_ASIDE_MAX_MS);
            u.failures = u.failures.saturating_add(1);
            u.aside_until = Some(now + ms(pause_ms));
        }
    }

    /// `addr` answered: it takes traffic again at once.
    pub fn answered(&mut self, addr: &SocketAddr) {
        if let Some(u) = self.upstreams.get_mut(addr) {
            u.failures = 0;
            u.aside_until = None;
        }
    }
}
