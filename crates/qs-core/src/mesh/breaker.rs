//! Circuit breakers per cluster, per sector and for the whole mesh (seed §6.2).
//!
//! A cluster's breaker opens on its 6th failure (more than 5), a sector's on its 51st, and
//! the global one while more than 10 sector breakers are open. Each lives where its
//! failures are seen: a cluster's at its lead, a sector's at its coordinator (from the
//! failures its leads summarize), the global one at the root (from the sector summaries). The seed keeps failure
//! counts forever; here they count over the last [`FAILURE_WINDOW_MS`], so a fleet that
//! recovered does not trip on old news. An open breaker is probed after 30 s (by its node:
//! a cluster's lead asks a few of its agents, `node/probe.rs`; while a probe is out, none is
//! due, [`Breakers::probing`]): a good probe
//! makes it half-open (routable, watched), a bad one waits 60 s for the next; half-open
//! (a cluster's or its sector's) lets a tenth of the cluster's agents in scope take each
//! operation (a sector's coordinator says so in the orders it passes on, `Order.limited`),
//! closes after 60 s without a failure and opens again on one.
//!
//! Seed §6.1's CASCADE_FAILURE ("multiple agents failing in sequence, increasing
//! exponentially") opens a sector's breaker before its count does: failures that at least
//! doubled over each of the last three periods of [`CASCADE_PERIOD_MS`], to at least
//! [`CASCADE_FLOOR`] in the last. A step (many agents lost at once) is not a cascade.

use crate::time::Time;
use qs_wire::mesh::{BreakerState, ClusterId, Scope, SectorId};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

pub const CLUSTER_TRIP_AFTER: usize = 5;
pub const SECTOR_TRIP_AFTER: usize = 50;
pub const GLOBAL_TRIP_AFTER_SECTORS: usize = 10;
pub const FIRST_PROBE_MS: u64 = 30_000;
pub const REPROBE_MS: u64 = 60_000;
pub const HALF_OPEN_WATCH_MS: u64 = 60_000;
pub const FAILURE_WINDOW_MS: u64 = 60_000;
/// The share of a half-open cluster's agents an operation reaches (at least one).
pub const HALF_OPEN_SHARE: f64 = 0.1;
/// The periods a sector's failures are compared over, to tell a cascade.
pub const CASCADE_PERIOD_MS: u64 = 1_000;
/// Failures in the last period for a doubling run to be a cascade.
pub const CASCADE_FLOOR: u32 = 8;

#[derive(Clone, Debug)]
struct Breaker {
    state: BreakerState,
    failures: VecDeque<Time>,
    /// Open: when to probe. Half-open: when to close.
    due: Option<Time>,
}

impl Breaker {
    fn new() -> Breaker {
        Breaker {
            state: BreakerState::Closed,
            failures: VecDeque::new(),
            due: None,
        }
    }

    fn count(&mut self, now: Time, limit: usize) -> usize {
        let window = Duration::from_millis(FAILURE_WINDOW_MS);
        while self
            .failures
            .front()
            .is_some_and(|t| now.since(*t) > window)
        {
            self.failures.pop_front();
        }
        self.failures.push_back(now);
        while self.failures.len() > limit + 1 {
            self.failures.pop_front();
        }
        self.failures.len()
    }

    /// Whether the failures kept grow as a cascade does: at least doubling over each of the
    /// last three periods up to `now` (the earliest at least one), the last at least
    /// [`CASCADE_FLOOR`].
    fn cascading(&self, now: Time) -> bool {
        let period = Duration::from_millis(CASCADE_PERIOD_MS);
        let in_period = |back: u32| -> u32 {
            let (near, far) = (period * back, period * (back + 1));
            let n = self.failures.iter().filter(|t| {
                let age = now.since(**t);
                age >= near && age < far
            });
            n.count() as u32
        };
        let (c0, c1, c2) = (in_period(2), in_period(1), in_period(0));
        c0 > 0
            && crate::mesh::degrade::cascading(c0, c1, 1)
            && crate::mesh::degrade::cascading(c1, c2, CASCADE_FLOOR)
    }
}

/// A breaker's change, for the ledger and the `mesh.circuit` topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub scope: Scope,
    pub state: BreakerState,
    pub at: Time,
}

/// Every breaker a node keeps.
#[derive(Clone, Debug, Default)]
pub struct Breakers {
    map: BTreeMap<Scope, Breaker>,
    global_open: bool,
    changes: Vec<Change>,
}

impl Breakers {
    pub fn state(&self, scope: Scope) -> BreakerState {
        if scope == Scope::Global {
            return match self.global_open {
                true => BreakerState::Open,
                false => BreakerState::Closed,
            };
        }
        self.map
            .get(&scope)
            .map_or(BreakerState::Closed, |b| b.state)
    }

    /// May traffic go to an agent of this cluster and sector, as far as this node's
    /// breakers know (half-open may)?
    pub fn routable(&self, cluster: ClusterId, sector: SectorId) -> bool {
        !self.global_open
            && self.state(Scope::Sector(sector)) != BreakerState::Open
            && self.state(Scope::Cluster(cluster)) != BreakerState::Open
    }

    /// Whether a breaker over this cluster is half-open: traffic may go, but only a share of
    /// it ([`HALF_OPEN_SHARE`], seed §6.2's "allow limited traffic").
    pub fn limited(&self, cluster: ClusterId, sector: SectorId) -> bool {
        self.state(Scope::Sector(sector)) == BreakerState::HalfOpen
            || self.state(Scope::Cluster(cluster)) == BreakerState::HalfOpen
    }

    /// One failure of an agent of `cluster` (at its lead).
    pub fn cluster_failure(&mut self, cluster: ClusterId, now: Time) {
        self.fail(Scope::Cluster(cluster), CLUSTER_TRIP_AFTER, now);
    }

    /// `n` failures in `sector`, as its leads summarized them (at its coordinator).
    pub fn sector_failures(&mut self, sector: SectorId, n: u32, now: Time) {
        for _ in 0..n.min(SECTOR_TRIP_AFTER as u32 + 1) {
            self.fail(Scope::Sector(sector), SECTOR_TRIP_AFTER, now);
        }
    }

    /// How many sector breakers are open (at the root, from the sector summaries).
    pub fn open_sectors(&mut self, open: usize, now: Time) {
        let global = open > GLOBAL_TRIP_AFTER_SECTORS;
        if global != self.global_open {
            self.global_open = global;
            self.changes.push(Change {
                scope: Scope::Global,
                state: match global {
                    true => BreakerState::Open,
                    false => BreakerState::Closed,
                },
                at: now,
            });
        }
    }

    fn fail(&mut self, scope: Scope, limit: usize, now: Time) {
        let b = self.map.entry(scope).or_insert_with(Breaker::new);
        let n = b.count(now, limit);
        let cascade = matches!(scope, Scope::Sector(_)) && b.cascading(now);
        let trip = match b.state {
            BreakerState::Closed => n > limit || cascade,
            BreakerState::HalfOpen => true,
            BreakerState::Open => false,
        };
        if trip {
            b.state = BreakerState::Open;
            b.due = Some(now + Duration::from_millis(FIRST_PROBE_MS));
            self.changes.push(Change {
                scope,
                state: BreakerState::Open,
                at: now,
            });
        }
    }

    /// Breakers whose probe is due at `now`.
    pub fn probes_due(&self, now: Time) -> Vec<Scope> {
        self.map
            .iter()
            .filter(|(_, b)| b.state == BreakerState::Open && b.due.is_some_and(|d| d <= now))
            .map(|(s, _)| *s)
            .collect()
    }

    /// A probe of an open breaker is out until `until`: none is due before (then its
    /// result, or `probed(.., false, ..)` if none came).
    pub fn probing(&mut self, scope: Scope, until: Time) {
        if let Some(b) = self.map.get_mut(&scope)
            && b.state == BreakerState::Open
        {
            b.due = Some(until);
        }
    }

    /// A probe's result.
    pub fn probed(&mut self, scope: Scope, ok: bool, now: Time) {
        let Some(b) = self.map.get_mut(&scope) else {
            return;
        };
        if b.state != BreakerState::Open {
            return;
        }
        if ok {
            b.state = BreakerState::HalfOpen;
            b.failures.clear();
            b.due = Some(now + Duration::from_millis(HALF_OPEN_WATCH_MS));
            self.changes.push(Change {
                scope,
                state: BreakerState::HalfOpen,
                at: now,
            });
        } else {
            b.due = Some(now + Duration::from_millis(REPROBE_MS));
        }
    }

    /// Half-open breakers watched long enough close.
    pub fn tick(&mut self, now: Time) {
        let mut closed = Vec::new();
        for (scope, b) in &mut self.map {
            if b.state == BreakerState::HalfOpen && b.due.is_some_and(|d| d <= now) {
                b.state = BreakerState::Closed;
                b.due = None;
                closed.push(*scope);
            }
        }
        for scope in closed {
            self.changes.push(Change {
                scope,
                state: BreakerState::Closed,
                at: now,
            });
        }
    }

    /// An operator's reset (`qs mesh heal`): closed, counts cleared. Whether it was open or
    /// half-open.
    pub fn reset(&mut self, scope: Scope, now: Time) -> bool {
        if scope == Scope::Global {
            let was_open = self.global_open;
            self.open_sectors(0, now);
            return was_open;
        }
        if let Some(b) = self.map.get_mut(&scope)
            && b.state != BreakerState::Closed
        {
            *b = Breaker::new();
            self.changes.push(Change {
                scope,
                state: BreakerState::Closed,
                at: now,
            });
            return true;
        }
        false
    }

    /// The earliest time something is due.
    pub fn next_due(&self) -> Option<Time> {
        self.map.values().filter_map(|b| b.due).min()
    }

    pub fn open_count(&self, sectors: bool) -> usize {
        self.map
            .iter()
            .filter(|(s, b)| {
                b.state == BreakerState::Open && matches!(s, Scope::Sector(_)) == sectors
            })
            .count()
    }

    /// Every breaker not closed.
    pub fn not_closed(&self) -> Vec<(Scope, BreakerState)> {
        let mut v: Vec<(Scope, BreakerState)> = self
            .map
            .iter()
            .filter(|(_, b)| b.state != BreakerState::Closed)
            .map(|(s, b)| (*s, b.state))
            .collect();
        if self.global_open {
            v.push((Scope::Global, BreakerState::Open));
        }
        v
    }

    pub fn drain_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Time {
        Time::from_millis(ms)
    }
    const C: ClusterId = ClusterId(1);
    const S: SectorId = SectorId(0);

    /// Steps and the cluster breaker's state after each.
    #[test]
    fn cluster_breaker_transitions() {
        enum Step {
            Fail(u64),
            Probe(u64, bool),
            Tick(u64),
        }
        use BreakerState::*;
        use Step::*;
        let steps = [
            (Fail(0), Closed),
            (Fail(1), Closed),
            (Fail(2), Closed),
            (Fail(3), Closed),
            (Fail(4), Closed),
            (Fail(5), Open),
            (Probe(30_005, false), Open),
            (Tick(40_000), Open),
            (Probe(90_005, true), HalfOpen),
            (Tick(120_000), HalfOpen),
            (Tick(150_005), Closed),
            (Fail(151_000), Closed),
        ];
        let mut b = Breakers::default();
        for (i, (step, want)) in steps.into_iter().enumerate() {
            match step {
                Fail(ms) => b.cluster_failure(C, t(ms)),
                Probe(ms, ok) => {
                    assert_eq!(b.probes_due(t(ms)), vec![Scope::Cluster(C)], "step {i}");
                    b.probed(Scope::Cluster(C), ok, t(ms));
                }
                Tick(ms) => b.tick(t(ms)),
            }
            assert_eq!(b.state(Scope::Cluster(C)), want, "step {i}");
        }
    }

    #[test]
    fn half_open_fails_back_open_and_old_failures_expire() {
        let mut b = Breakers::default();
        for i in 0..6 {
            b.cluster_failure(C, t(i));
        }
        b.probed(Scope::Cluster(C), true, t(30_000));
        assert!(b.routable(C, S));
        b.cluster_failure(C, t(31_000));
        assert_eq!(b.state(Scope::Cluster(C)), BreakerState::Open);
        assert!(!b.routable(C, S));
        // Five failures a minute apart never trip.
        let mut b = Breakers::default();
        for i in 0..20 {
            b.cluster_failure(C, t(i * 61_000));
        }
        assert_eq!(b.state(Scope::Cluster(C)), BreakerState::Closed);
    }

    #[test]
    fn sectors_trip_at_51_and_global_past_ten_sectors() {
        let mut b = Breakers::default();
        b.sector_failures(S, 50, t(0));
        assert_eq!(b.state(Scope::Sector(S)), BreakerState::Closed);
        b.sector_failures(S, 1, t(1));
        assert_eq!(b.state(Scope::Sector(S)), BreakerState::Open);
        assert!(!b.routable(C, S));
        let mut root = Breakers::default();
        root.open_sectors(10, t(0));
        assert_eq!(root.state(Scope::Global), BreakerState::Closed);
        root.open_sectors(11, t(1));
        assert_eq!(root.state(Scope::Global), BreakerState::Open);
        assert!(!root.routable(ClusterId(9), SectorId(50)));
        root.reset(Scope::Global, t(2));
        assert_eq!(root.state(Scope::Global), BreakerState::Closed);
    }

    /// (failures per second, in order → the sector's breaker open after them): a doubling
    /// run to 8 or more a second is a cascade, well before 51; a step or a steady rate is
    /// not.
    #[test]
    fn a_sector_breaker_opens_on_a_cascade_of_failures() {
        let table: [(&[u32], bool); 6] = [
            (&[1, 2, 4, 8], true),
            (&[2, 4, 9], true),
            (&[1, 2, 4], false),
            (&[0, 0, 40], false),
            (&[10, 10, 10, 10], false),
            (&[3, 6, 11], false),
        ];
        for (per_second, open) in table {
            let mut b = Breakers::default();
            for (i, n) in per_second.iter().enumerate() {
                b.sector_failures(S, *n, t(i as u64 * CASCADE_PERIOD_MS + 100));
            }
            let state = b.state(Scope::Sector(S));
            assert_eq!(state == BreakerState::Open, open, "{per_second:?}");
        }
    }
}
